// sluice: command-line client for sluiced. `sluice --help` is its manual.
#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "clients/common/health_check.h"
#include "sluice/v1/generation.grpc.pb.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "sluiced address");
ABSL_FLAG(std::string, api_key, "", "API key sent as 'authorization: Bearer KEY' (default: $SLUICE_API_KEY)");
ABSL_FLAG(bool, tls, false, "Connect over TLS, verifying the server against the system's CA certificates");
ABSL_FLAG(std::string, tls_ca, "", "Connect over TLS, verifying the server against this PEM CA bundle");
ABSL_FLAG(double, timeout_s, 300, "RPC deadline in seconds");
ABSL_FLAG(bool, json, false, "Print results as JSON (stream: one JSON object per message)");
ABSL_FLAG(std::string, tokens, "", "Comma-separated prompt token ids (instead of text)");
ABSL_FLAG(uint32_t, max_tokens, 32, "Tokens to generate at most");
ABSL_FLAG(uint32_t, min_tokens, 0, "Tokens to generate at least");
ABSL_FLAG(float, temperature, 0.f, "0: greedy");
ABSL_FLAG(int32_t, top_k, 0, "0: off");
ABSL_FLAG(float, top_p, 1.f, "Nucleus mass in (0, 1]");
ABSL_FLAG(float, min_p, 0.f, "In [0, 1)");
ABSL_FLAG(float, repetition_penalty, 1.f, "> 0; 1: off");
ABSL_FLAG(float, presence_penalty, 0.f, "0: off");
ABSL_FLAG(float, frequency_penalty, 0.f, "0: off");
ABSL_FLAG(int64_t, seed, -1, "Sampling seed (-1: server picks)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Stop strings");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past EOS");
ABSL_FLAG(bool, add_special_tokens, false, "Add the tokenizer's BOS to text input");
ABSL_FLAG(int32_t, priority, 0, "Higher runs first");
ABSL_FLAG(int32_t, logprobs, -1, "Return logprobs with this many alternatives (0-20; -1: off)");
ABSL_FLAG(std::string, budget, "", "Compute budget: skip=R,experts=K,floor=F,layers=A-B (see --help)");

namespace {

namespace v1 = sluice::v1;

constexpr char kHelp[] = R"(sluice: a command-line client for sluiced, the serving daemon.

Usage: sluice [flags] COMMAND [TEXT]

Commands:
  generate [TEXT]   run one request to completion; print the text, the token ids and usage
  stream [TEXT]     the same, printing text as it arrives
  tokenize [TEXT]   text to token ids with the model's tokenizer
  detokenize        --tokens ids to text
  info              what the server has loaded (architecture, shapes, limits, budget controls)
  stats             the engine's live state (queue, running, free cache blocks and state slots)
  health            SERVING or NOT_SERVING (needs no API key)
The prompt is TEXT, or --tokens 1,2,3, or standard input when neither is given.

Connection:
  --server HOST:PORT      sluiced address (default 127.0.0.1:50051)
  --api_key KEY           send 'authorization: Bearer KEY' (default: $SLUICE_API_KEY)
  --tls                   TLS, verifying the server with the system's CA certificates
  --tls_ca FILE           TLS, verifying the server with this PEM CA bundle
  --timeout_s S           deadline of each call (default 300)
  --json                  JSON output (stream: one object per line)

Sampling and stopping (generate, stream):
  --max_tokens N (32)  --min_tokens N  --temperature T (0: greedy)  --top_k K  --top_p P
  --min_p P  --repetition_penalty R  --presence_penalty P  --frequency_penalty F
  --seed S (same seed, same tokens, whatever else the server runs)  --stop a,b  --ignore_eos
  --logprobs N (0-20)  --priority N (higher first)  --add_special_tokens

Compute budget (generate, stream): --budget with comma-separated controls
  skip=R        GateSkip: skip about a fraction R of residual branches (models with gates)
  experts=K     run K experts per token instead of the model's k (MoE models)
  floor=F       skip attention heads whose output gate is below F (gated attention)
  layers=A-B    skip layers A..B (repeat for more spans; layers=7 skips one)
  e.g. --budget skip=0.3,experts=2,floor=0.2,layers=8-15
  `sluice info` lists the controls a model supports; usage reports the compute executed.

Exit codes:
  0 success   1 usage error   2 invalid request (INVALID_ARGUMENT, FAILED_PRECONDITION,
  OUT_OF_RANGE, UNIMPLEMENTED, NOT_FOUND)   3 unavailable, draining, overloaded or not
  serving (UNAVAILABLE, RESOURCE_EXHAUSTED; retry later)   4 authentication
  (UNAUTHENTICATED, PERMISSION_DENIED)   5 deadline exceeded or cancelled   6 server error

Examples:
  sluice generate "The sluice gate" --max_tokens 16
  echo "text from stdin" | sluice stream --temperature 0.7 --seed 1
  sluice --server 10.0.0.5:50051 --api_key "$KEY" --tls_ca ca.pem info
  sluice generate "Hello" --budget experts=2 --json
)";

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP_TOKEN: return "stop_token";
    case v1::FINISH_REASON_STOP_STRING: return "stop_string";
    default: return "unspecified";
  }
}

int ExitCode(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return 0;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::NOT_FOUND: return 2;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return 3;
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED: return 4;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED: return 5;
    default: return 6;
  }
}

int Fail(const grpc::Status& s) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                 "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int c = s.error_code();
  std::cerr << "sluice: error " << (c >= 0 && c <= 16 ? kNames[c] : "?") << ": " << s.error_message() << "\n";
  return ExitCode(s.error_code());
}

int UsageError(const std::string& message) {
  std::cerr << "sluice: " << message << " (see sluice --help)\n";
  return 1;
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

// --budget skip=R,experts=K,floor=F,layers=A-B[,layers=...]; false (with a message) on error.
bool ParseBudget(const std::string& text, v1::ComputeBudget* budget) {
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const std::vector<absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    const absl::string_view key = kv[0], value = kv.size() > 1 ? kv[1] : absl::string_view();
    float f = 0;
    uint32_t n = 0;
    if (key == "skip" && absl::SimpleAtof(value, &f)) {
      budget->set_skip_ratio(f);
    } else if (key == "experts" && absl::SimpleAtoi(value, &n)) {
      budget->set_experts_per_token(n);
    } else if (key == "floor" && absl::SimpleAtof(value, &f)) {
      budget->set_attention_gate_floor(f);
    } else if (key == "layers") {
      const std::vector<absl::string_view> ends = absl::StrSplit(value, absl::MaxSplits('-', 1));
      uint32_t first = 0, last = 0;
      if (!absl::SimpleAtoi(ends[0], &first) || !absl::SimpleAtoi(ends.size() > 1 ? ends[1] : ends[0], &last)) {
        std::cerr << "sluice: --budget: layers wants A-B or A, got '" << value << "'\n";
        return false;
      }
      auto* span = budget->add_skip_layers();
      span->set_first(first);
      span->set_last(last);
    } else {
      std::cerr << "sluice: --budget: cannot read '" << item
                << "' (controls: skip=R, experts=K, floor=F, layers=A-B)\n";
      return false;
    }
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

// Plaintext; TLS with the system's roots (--tls) or with a given CA bundle (--tls_ca).
std::shared_ptr<grpc::ChannelCredentials> Credentials() {
  const std::string ca_path = absl::GetFlag(FLAGS_tls_ca);
  if (ca_path.empty()) {
    return absl::GetFlag(FLAGS_tls) ? grpc::SslCredentials(grpc::SslCredentialsOptions())
                                    : grpc::InsecureChannelCredentials();
  }
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
  s->set_repetition_penalty(absl::GetFlag(FLAGS_repetition_penalty));
  s->set_presence_penalty(absl::GetFlag(FLAGS_presence_penalty));
  s->set_frequency_penalty(absl::GetFlag(FLAGS_frequency_penalty));
  if (absl::GetFlag(FLAGS_seed) >= 0) s->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  auto* st = req->mutable_stopping();
  st->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  st->set_min_tokens(absl::GetFlag(FLAGS_min_tokens));
  st->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  for (const auto& stop : absl::GetFlag(FLAGS_stop)) st->add_stop(stop);
  req->set_priority(absl::GetFlag(FLAGS_priority));
  if (absl::GetFlag(FLAGS_logprobs) >= 0) req->mutable_logprobs()->set_top_n(absl::GetFlag(FLAGS_logprobs));
  return ParseBudget(absl::GetFlag(FLAGS_budget), req->mutable_budget());
}

void PrintUsage(const v1::Usage& u, v1::FinishReason reason) {
  std::cerr << "[finish=" << FinishName(reason) << " prompt_tokens=" << u.prompt_tokens()
            << " completion_tokens=" << u.completion_tokens() << " dense_flops=" << u.dense_flops()
            << " executed_flops=" << u.executed_flops() << "]\n";
}

// One protobuf message as a single line of JSON (proto3 JSON mapping, field names as in the .proto).
void PrintJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  std::cout << out << "\n";
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "help")) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || WantsHelp(argc, argv)) {
    std::cout << kHelp;
    return argc < 2 ? 1 : 0;
  }
  absl::SetProgramUsageMessage("sluice [flags] generate|stream|tokenize|detokenize|info|stats|health [TEXT]; "
                               "sluice --help explains every flag");
  // absl's own --helpfull lists flag definitions by source file; keep build paths out of it.
  absl::FlagsUsageConfig usage;
  usage.normalize_filename = [](absl::string_view) { return std::string("sluice"); };
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return UsageError("no command");
  const std::string command = args[1];
  const bool json = absl::GetFlag(FLAGS_json);
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
    if (json) {
      PrintJson(resp);
      return 0;
    }
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
    v1::Usage usage;
    v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
    while (reader->Read(&msg)) {
      if (json) {
        PrintJson(msg);
        std::cout << std::flush;
      } else if (req.has_text()) {
        std::cout << msg.text() << std::flush;  // live, as each step's text arrives
      } else {
        std::cout << absl::StrJoin(msg.token_ids(), " ") << " " << std::flush;
      }
      if (msg.has_usage()) usage = msg.usage();
      if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) reason = msg.finish_reason();
    }
    if (!json) std::cout << "\n";
    grpc::Status s = reader->Finish();
    if (!s.ok()) return Fail(s);
    if (!json) PrintUsage(usage, reason);
    return 0;
  }
  if (command == "info") {
    v1::ModelInfo info;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    if (!s.ok()) return Fail(s);
    if (json) {
      PrintJson(info);
    } else {
      std::cout << info.DebugString();
    }
    return 0;
  }
  if (command == "stats") {
    v1::EngineStats stats;
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status s = stub->GetEngineStats(&ctx, v1::GetEngineStatsRequest(), &stats);
    if (!s.ok()) return Fail(s);
    if (json) {
      PrintJson(stats);
    } else {
      std::cout << stats.DebugString();
    }
    return 0;
  }
  if (command == "health") {
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    grpc::Status status;
    const int value = sluice::clients::CheckHealth(channel, &ctx, &status);
    if (!status.ok()) return Fail(status);
    const char* names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    const char* name = value >= 0 && value <= 3 ? names[value] : "UNKNOWN";
    if (json) {
      std::cout << "{\"status\":\"" << name << "\"}\n";
    } else {
      std::cout << name << "\n";
    }
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
    if (json) {
      PrintJson(resp);
    } else {
      std::cout << absl::StrJoin(resp.ids(), ",") << "\n";
    }
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
    if (json) {
      PrintJson(resp);
    } else {
      std::cout << resp.text() << "\n";
    }
    return 0;
  }
  return UsageError("unknown command '" + command + "'");
}
