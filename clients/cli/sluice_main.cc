// sluice: command-line client for sluiced.
//   sluice [--server HOST:PORT] generate "text" | --tokens 1,2,3
//   sluice stream "text"            (prompt from the argument, or stdin when absent)
//   sluice info | health | tokenize "text" | detokenize --tokens 1,2,3
#include <grpcpp/grpcpp.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "clients/common/health_check.h"
#include "sluice/v1/generation.grpc.pb.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "sluiced address");
ABSL_FLAG(std::string, tokens, "", "Comma-separated prompt token ids (instead of text)");
ABSL_FLAG(uint32_t, max_tokens, 32, "Tokens to generate at most");
ABSL_FLAG(uint32_t, min_tokens, 0, "Tokens to generate at least");
ABSL_FLAG(float, temperature, 0.f, "0: greedy");
ABSL_FLAG(int32_t, top_k, 0, "0: off");
ABSL_FLAG(float, top_p, 1.f, "Nucleus mass in (0, 1]");
ABSL_FLAG(float, min_p, 0.f, "In [0, 1)");
ABSL_FLAG(int64_t, seed, -1, "Sampling seed (-1: server picks)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Stop strings");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past EOS");
ABSL_FLAG(bool, add_special_tokens, false, "Add the tokenizer's BOS to text input");
ABSL_FLAG(int32_t, priority, 0, "Higher runs first");
ABSL_FLAG(int32_t, logprobs, -1, "Return logprobs with this many alternatives (0-20; -1: off)");
ABSL_FLAG(double, timeout_s, 300, "RPC deadline in seconds");
ABSL_FLAG(std::string, api_key, "", "API key sent as 'authorization: Bearer KEY' (default: $SLUICE_API_KEY)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle: connect over TLS and verify the server against it");

namespace {

namespace v1 = sluice::v1;

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP_TOKEN: return "stop_token";
    case v1::FINISH_REASON_STOP_STRING: return "stop_string";
    default: return "unspecified";
  }
}

int Fail(const grpc::Status& s) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                 "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int c = s.error_code();
  std::cerr << "sluice: error " << (c >= 0 && c <= 16 ? kNames[c] : "?") << ": " << s.error_message() << "\n";
  return 2;
}

bool ParseTokens(std::vector<int32_t>* out) {
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_tokens), ',', absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      std::cerr << "sluice: --tokens: '" << part << "' is not an integer\n";
      return false;
    }
    out->push_back(id);
  }
  return true;
}

// The deadline, and the API key when one is given (flag or SLUICE_API_KEY).
void PrepareContext(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000)));
  std::string key = absl::GetFlag(FLAGS_api_key);
  if (const char* env = std::getenv("SLUICE_API_KEY"); key.empty() && env != nullptr) key = env;
  if (!key.empty()) ctx->AddMetadata("authorization", "Bearer " + key);
}

// Plaintext, or TLS when --tls_ca names the CA bundle that signed the server's certificate.
std::shared_ptr<grpc::ChannelCredentials> Credentials() {
  const std::string ca_path = absl::GetFlag(FLAGS_tls_ca);
  if (ca_path.empty()) return grpc::InsecureChannelCredentials();
  std::ifstream in(ca_path);
  if (!in) {
    std::cerr << "sluice: --tls_ca=" << ca_path << ": cannot read the file\n";
    std::exit(1);
  }
  grpc::SslCredentialsOptions options;
  options.pem_root_certs.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return grpc::SslCredentials(options);
}

std::string PromptText(const std::vector<char*>& args) {
  if (args.size() > 2) return std::string(args[2]);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

bool BuildRequest(const std::vector<char*>& args, v1::GenerateRequest* req) {
  if (!absl::GetFlag(FLAGS_tokens).empty()) {
    std::vector<int32_t> ids;
    if (!ParseTokens(&ids)) return false;
    for (int32_t id : ids) req->mutable_tokens()->add_ids(id);
  } else {
    req->set_text(PromptText(args));
    req->set_add_special_tokens(absl::GetFlag(FLAGS_add_special_tokens));
  }
  auto* s = req->mutable_sampling();
  s->set_temperature(absl::GetFlag(FLAGS_temperature));
  s->set_top_k(absl::GetFlag(FLAGS_top_k));
  s->set_top_p(absl::GetFlag(FLAGS_top_p));
  s->set_min_p(absl::GetFlag(FLAGS_min_p));
  if (absl::GetFlag(FLAGS_seed) >= 0) s->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  auto* st = req->mutable_stopping();
  st->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  st->set_min_tokens(absl::GetFlag(FLAGS_min_tokens));
  st->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  for (const auto& stop : absl::GetFlag(FLAGS_stop)) st->add_stop(stop);
  req->set_priority(absl::GetFlag(FLAGS_priority));
  if (absl::GetFlag(FLAGS_logprobs) >= 0) req->mutable_logprobs()->set_top_n(absl::GetFlag(FLAGS_logprobs));
  return true;
}

void PrintUsage(const v1::Usage& u, v1::FinishReason reason) {
  std::cerr << "[finish=" << FinishName(reason) << " prompt_tokens=" << u.prompt_tokens()
            << " completion_tokens=" << u.completion_tokens() << " dense_flops=" << u.dense_flops()
            << " executed_flops=" << u.executed_flops() << "]\n";
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sluice [--server HOST:PORT] generate|stream|info|stats|health|tokenize|detokenize [TEXT]\n"
      "  generate/stream read the prompt from TEXT, --tokens, or stdin.");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << absl::ProgramUsageMessage() << "\n";
    return 1;
  }
  const std::string command = args[1];
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), Credentials());
  auto stub = v1::Generation::NewStub(channel);

  if (command == "generate") {
    v1::GenerateRequest req;
    if (!BuildRequest(args, &req)) return 1;
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status s = stub->Generate(&ctx, req, &resp);
    if (!s.ok()) return Fail(s);
    if (!resp.text().empty()) std::cout << resp.text() << "\n";
    std::cout << "tokens: " << absl::StrJoin(resp.token_ids(), ",") << "\n";
    PrintUsage(resp.usage(), resp.finish_reason());
    return 0;
  }
  if (command == "stream") {
    v1::GenerateRequest req;
    if (!BuildRequest(args, &req)) return 1;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    auto reader = stub->GenerateStream(&ctx, req);
    v1::GenerateStreamResponse msg;
    std::vector<int32_t> ids;
    v1::Usage usage;
    v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
    while (reader->Read(&msg)) {
      if (req.has_text()) {
        std::cout << msg.text() << std::flush;
      } else {
        std::cout << absl::StrJoin(msg.token_ids(), " ") << " " << std::flush;
      }
      ids.insert(ids.end(), msg.token_ids().begin(), msg.token_ids().end());
      if (msg.has_usage()) usage = msg.usage();
      if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) reason = msg.finish_reason();
    }
    std::cout << "\n";
    grpc::Status s = reader->Finish();
    if (!s.ok()) return Fail(s);
    PrintUsage(usage, reason);
    return 0;
  }
  if (command == "info") {
    v1::ModelInfo info;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    if (!s.ok()) return Fail(s);
    std::cout << info.DebugString();
    return 0;
  }
  if (command == "stats") {
    v1::EngineStats stats;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status s = stub->GetEngineStats(&ctx, v1::GetEngineStatsRequest(), &stats);
    if (!s.ok()) return Fail(s);
    std::cout << stats.DebugString();
    return 0;
  }
  if (command == "health") {
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status status;
    const int value = sluice::clients::CheckHealth(channel, &ctx, &status);
    if (!status.ok()) return Fail(status);
    const char* names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    std::cout << (value >= 0 && value <= 3 ? names[value] : "UNKNOWN") << "\n";
    return value == 1 ? 0 : 3;
  }
  if (command == "tokenize") {
    v1::TokenizeRequest req;
    req.set_text(PromptText(args));
    req.set_add_special_tokens(absl::GetFlag(FLAGS_add_special_tokens));
    v1::TokenizeResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status s = stub->Tokenize(&ctx, req, &resp);
    if (!s.ok()) return Fail(s);
    std::cout << absl::StrJoin(resp.ids(), ",") << "\n";
    return 0;
  }
  if (command == "detokenize") {
    v1::DetokenizeRequest req;
    std::vector<int32_t> ids;
    if (!ParseTokens(&ids)) return 1;
    for (int32_t id : ids) req.add_ids(id);
    v1::DetokenizeResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status s = stub->Detokenize(&ctx, req, &resp);
    if (!s.ok()) return Fail(s);
    std::cout << resp.text() << "\n";
    return 0;
  }
  std::cerr << "sluice: unknown command '" << command << "'\n" << absl::ProgramUsageMessage() << "\n";
  return 1;
}
