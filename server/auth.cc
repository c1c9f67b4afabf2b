#include "server/auth.h"

#include <fstream>
#include <sstream>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace sluice::server {
namespace {

constexpr absl::string_view kBearer = "Bearer ";
constexpr absl::string_view kHealthPrefix = "/grpc.health.v1.Health/";

// Equal-length-independent comparison: every byte of the longer string is visited and
// differences are OR-ed together, so the time says nothing about where they differ.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

absl::string_view SliceView(const grpc_slice& s) {
  return {reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)), GRPC_SLICE_LENGTH(s)};
}

struct GateState {
  const ApiKeys* keys;
  Metrics* metrics;
};

// grpc_auth_metadata_processor::process. Runs on a transport thread for each call; it
// answers at once (no I/O), so it calls `cb` synchronously.
void ProcessMetadata(void* state, grpc_auth_context* /*context*/, const grpc_metadata* md, size_t num_md,
                     grpc_process_auth_metadata_done_cb cb, void* user_data) {
  const auto* gate = static_cast<const GateState*>(state);
  absl::string_view path, authorization;
  for (size_t i = 0; i < num_md; ++i) {
    const absl::string_view key = SliceView(md[i].key);
    if (key == ":path") path = SliceView(md[i].value);
    if (key == "authorization") authorization = SliceView(md[i].value);
  }
  if (absl::StartsWith(path, kHealthPrefix) || gate->keys->Accepts(authorization)) {
    cb(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_OK, nullptr);
    return;
  }
  if (gate->metrics != nullptr) gate->metrics->RequestRejected(RejectReason::kUnauthenticated);
  cb(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED,
     authorization.empty() ? "this server requires an API key: send metadata 'authorization: Bearer <key>'"
                           : "invalid API key");
}

// grpc::ServerCredentials over a core credentials object, so that the core auth
// processor above applies to plaintext ports as well as TLS ones.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  CoreServerCredentials(grpc_server_credentials* creds, std::unique_ptr<GateState> gate)
      : creds_(creds), gate_(std::move(gate)) {
    if (gate_ != nullptr) {
      grpc_server_credentials_set_auth_metadata_processor(creds_, {ProcessMetadata, nullptr, gate_.get()});
    }
  }
  ~CoreServerCredentials() override { grpc_server_credentials_release(creds_); }
  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {}

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* creds_;
  std::unique_ptr<GateState> gate_;  // read by the processor for the credentials' lifetime
};

absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view flag) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": cannot read the file"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  if (!absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": not a PEM file"));
  }
  return pem;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ApiKeys::Read(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--api_keys_file=", path, ": cannot read the file"));
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    const absl::string_view key = absl::StripAsciiWhitespace(line);
    if (key.empty() || key.front() == '#') continue;
    keys.emplace_back(key);
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--api_keys_file=", path, ": the file holds no keys"));
  }
  return keys;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& path) {
  std::unique_ptr<ApiKeys> keys(new ApiKeys(path));
  if (absl::Status s = keys->Reload(); !s.ok()) return s;
  return keys;
}

absl::Status ApiKeys::Reload() {
  absl::StatusOr<std::vector<std::string>> keys = Read(path_);
  if (!keys.ok()) return keys.status();
  auto fresh = std::make_shared<const std::vector<std::string>>(*std::move(keys));
  std::lock_guard<std::mutex> lock(mu_);
  keys_ = std::move(fresh);
  return absl::OkStatus();
}

bool ApiKeys::Accepts(absl::string_view authorization) const {
  std::shared_ptr<const std::vector<std::string>> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    keys = keys_;
  }
  if (keys == nullptr || !absl::StartsWith(authorization, kBearer)) return false;
  authorization.remove_prefix(kBearer.size());
  bool match = false;
  for (const std::string& key : *keys) match |= ConstantTimeEquals(authorization, key);
  return match;
}

size_t ApiKeys::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return keys_ == nullptr ? 0 : keys_->size();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& tls,
                                                                              const ApiKeys* keys,
                                                                              Metrics* metrics) {
  if (tls.cert.empty() != tls.key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together: set both or neither");
  }
  if (!tls.client_ca.empty() && !tls.enabled()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  if (!tls.enabled() && keys == nullptr) return grpc::InsecureServerCredentials();
  std::string cert, key, client_ca;
  if (tls.enabled()) {
    absl::StatusOr<std::string> pem = ReadPem(tls.cert, "tls_cert");
    if (!pem.ok()) return pem.status();
    cert = *std::move(pem);
    if (pem = ReadPem(tls.key, "tls_key"); !pem.ok()) return pem.status();
    key = *std::move(pem);
    if (!tls.client_ca.empty()) {
      if (pem = ReadPem(tls.client_ca, "tls_client_ca"); !pem.ok()) return pem.status();
      client_ca = *std::move(pem);
    }
  }
  grpc_init();  // the core API below may run before any C++ gRPC object exists
  grpc_server_credentials* creds = nullptr;
  if (tls.enabled()) {
    grpc_ssl_pem_key_cert_pair pair = {key.c_str(), cert.c_str()};
    creds = grpc_ssl_server_credentials_create_ex(
        client_ca.empty() ? nullptr : client_ca.c_str(), &pair, 1,
        client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
        nullptr);
    if (creds == nullptr) {
      grpc_shutdown();
      return absl::InvalidArgumentError(
          absl::StrCat("--tls_cert=", tls.cert, " / --tls_key=", tls.key, ": gRPC refused the certificate or key"));
    }
  } else {
    creds = grpc_insecure_server_credentials_create();
  }
  std::unique_ptr<GateState> gate;
  if (keys != nullptr) gate = std::make_unique<GateState>(GateState{keys, metrics});
  auto out = std::make_shared<CoreServerCredentials>(creds, std::move(gate));
  grpc_shutdown();  // the credentials object (a GrpcLibrary) holds its own reference
  return std::shared_ptr<grpc::ServerCredentials>(std::move(out));
}

bool IsLoopbackAddress(absl::string_view host_port) {
  absl::string_view host = host_port;
  if (absl::StartsWith(host, "[")) {
    host = host.substr(1, host.find(']') == absl::string_view::npos ? host.size() - 1 : host.find(']') - 1);
  } else if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos) {
    host = host.substr(0, colon);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

}  // namespace sluice::server
