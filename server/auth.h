// API keys and TLS for the gRPC port.
//
// The key check runs in gRPC core's auth filter, before any service sees the call, so
// it gates every method of every service the server hosts (reflection included, and any
// service added later) with one mechanism; only grpc.health.v1.Health is exempt, so that
// load balancers and kubelets can probe without a key. gRPC C++ offers no hook for this on
// plaintext ports (server interceptors cannot reject, and its AuthMetadataProcessor is
// TLS-only), so the credentials are built from the core C API, where the processor
// works on insecure credentials too.
#ifndef SLUICE_SERVER_AUTH_H_
#define SLUICE_SERVER_AUTH_H_

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/metrics.h"

namespace sluice::server {

// The keys of --api_keys_file: one per line; blank lines and lines starting with '#'
// are ignored; surrounding whitespace is trimmed. Keys are never logged.
class ApiKeys {
 public:
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const std::string& path);
  // Re-reads the file (SIGHUP). On any error the keys in force stay, and the error says why.
  absl::Status Reload();
  // True when `authorization` is "Bearer <key>" for one of the keys. Compares against
  // every key in time that depends only on the lengths, never on where bytes differ.
  bool Accepts(absl::string_view authorization) const;
  size_t size() const;
  const std::string& path() const { return path_; }

 private:
  explicit ApiKeys(std::string path) : path_(std::move(path)) {}
  static absl::StatusOr<std::vector<std::string>> Read(const std::string& path);

  std::string path_;
  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<std::string>> keys_;
};

struct TlsFiles {
  std::string cert;       // --tls_cert
  std::string key;        // --tls_key
  std::string client_ca;  // --tls_client_ca: require and verify client certificates
  bool enabled() const { return !cert.empty(); }
};

// The credentials of the gRPC listening port: plaintext or TLS, and with `keys` every
// RPC but health needs `authorization: Bearer <key>`, else UNAUTHENTICATED (counted in
// sluice_request_rejected_total{reason="unauthenticated"}). `keys` and `metrics` must
// outlive the server. Unreadable or inconsistent TLS files are an error naming the flag.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& tls,
                                                                              const ApiKeys* keys,
                                                                              Metrics* metrics);

// True for addresses that only this machine reaches (127.0.0.0/8, [::1], localhost).
bool IsLoopbackAddress(absl::string_view host_port);

}  // namespace sluice::server

#endif  // SLUICE_SERVER_AUTH_H_
