// sluiced: the serving daemon. Starts the gRPC server first (health NOT_SERVING), loads
// the model, then flips health to SERVING. SIGTERM or SIGINT drains: health goes
// NOT_SERVING, new requests get UNAVAILABLE, in-flight ones finish (up to
// --drain_timeout), then the process exits 0.
#include <signal.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "server/generation_service.h"
#include "server/interceptors.h"
#include "server/metrics.h"

#ifndef SLUICE_DEFAULT_MODEL_DIR
#define SLUICE_DEFAULT_MODEL_DIR "deploy/models/sluice-tiny"
#endif

ABSL_FLAG(std::string, model, SLUICE_DEFAULT_MODEL_DIR,
          "Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json). "
          "Defaults to the embedded random-weight demo model.");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC listen address (HOST:PORT; port 0 picks one)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464", "Prometheus /metrics address; empty disables");
ABSL_FLAG(int32_t, threads, 0, "Compute threads (0: all cores)");
ABSL_FLAG(int32_t, max_num_seqs, 64, "Most sequences running in one step");
ABSL_FLAG(int32_t, max_num_batched_tokens, 2048, "Most tokens in one step (prompt chunks + decodes)");
ABSL_FLAG(int32_t, max_queue, 1024, "Most queued requests; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(double, itl_target_ms, 0,
          "Inter-token latency target in ms: prompt chunks that share a step with running "
          "decodes shrink or grow so steps stay near it (0: --itl_target_factor decides)");
ABSL_FLAG(double, itl_target_factor, 1.3,
          "With no --itl_target_ms, the target is this factor times the measured decode-step "
          "time (0: no target, prompt chunks only bounded by --max_num_batched_tokens)");
ABSL_FLAG(int64_t, max_model_len, 0, "Context limit in tokens (0: the model's)");
ABSL_FLAG(int64_t, kv_cache_memory, 512ll << 20, "Bytes for the KV cache");
ABSL_FLAG(std::string, matmul_precision, "f32",
          "bf16-weight matmuls: f32 (exact, activations stay f32) or bf16 (AVX512-BF16 "
          "dot products on bf16-rounded activations, ~2x the arithmetic rate)");
ABSL_FLAG(int32_t, max_message_bytes, 4 << 20, "Largest gRPC request accepted");
ABSL_FLAG(int32_t, drain_timeout_s, 30, "Seconds in-flight requests get to finish on SIGTERM");
ABSL_FLAG(std::string, port_file, "", "If set, write the bound gRPC port here once listening (tests)");

namespace {

int Run() {
  using sluice::server::GenerationService;
  using sluice::server::Metrics;
  using sluice::server::ServingModel;

  // Block the shutdown signals in every thread; this thread takes them with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Metrics metrics;
  if (auto s = metrics.Serve(absl::GetFlag(FLAGS_metrics_listen)); !s.ok()) {
    std::cerr << "sluiced: " << s.message() << "\n";
    return 1;
  }

  GenerationService service(&metrics);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.RegisterService(&service);
  builder.experimental().SetInterceptorCreators(sluice::server::MakeInterceptorFactories(&metrics));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "sluiced: cannot listen on " << absl::GetFlag(FLAGS_listen) << "\n";
    return 1;
  }
  auto* health = server->GetHealthCheckService();
  health->SetServingStatus(false);
  std::cerr << "sluiced: listening on port " << port << "\n";
  if (const std::string pf = absl::GetFlag(FLAGS_port_file); !pf.empty()) {
    const std::string tmp = pf + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (f != nullptr) {
      std::fprintf(f, "%d\n", port);
      std::fclose(f);
      std::rename(tmp.c_str(), pf.c_str());
    }
  }

  ServingModel model;
  model.model_dir = absl::GetFlag(FLAGS_model);
  sluice::engine::EngineOptions options;
  options.model_dir = model.model_dir;
  options.threads = absl::GetFlag(FLAGS_threads);
  options.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  options.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  options.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  options.kv_cache_memory = absl::GetFlag(FLAGS_kv_cache_memory);
  options.itl_target_ms = absl::GetFlag(FLAGS_itl_target_ms);
  options.itl_target_factor = absl::GetFlag(FLAGS_itl_target_factor);
  const std::string precision = absl::GetFlag(FLAGS_matmul_precision);
  if (precision != "f32" && precision != "bf16") {
    std::cerr << "sluiced: --matmul_precision must be f32 or bf16, got '" << precision << "'\n";
    server->Shutdown();
    return 1;
  }
  options.matmul_precision = precision == "bf16" ? sluice::kernels::MatmulPrecision::kBf16
                                                 : sluice::kernels::MatmulPrecision::kF32;
  const absl::Time load_start = absl::Now();
  auto engine = sluice::engine::Engine::Create(options);
  if (!engine.ok()) {
    std::cerr << "sluiced: cannot load model from " << model.model_dir << ": " << engine.status() << "\n";
    server->Shutdown();
    return 1;
  }
  model.engine = *std::move(engine);
  if (std::filesystem::exists(std::filesystem::path(model.model_dir) / "tokenizer.json")) {
    auto tok = sluice::tokenizer::Tokenizer::LoadFromDirectory(model.model_dir);
    if (!tok.ok()) {
      std::cerr << "sluiced: cannot load the tokenizer: " << tok.status() << "\n";
      server->Shutdown();
      return 1;
    }
    model.tokenizer = *std::move(tok);
  }
  const auto& config = model.engine->model().config();
  std::cerr << "sluiced: loaded " << config.model_type << " (" << config.num_layers << " layers, "
            << config.TotalParameters() << " parameters) from " << model.model_dir << " in "
            << absl::ToDoubleMilliseconds(absl::Now() - load_start) << " ms\n";
  service.SetModel(&model);
  health->SetServingStatus(true);

  // Publish engine gauges while waiting for a shutdown signal.
  std::atomic<bool> stop_gauges{false};
  std::thread gauges([&] {
    while (!stop_gauges.load()) {
      auto s = model.engine->Stats();
      metrics.SetEngineGauges(s.running, s.waiting,
                              s.total_blocks ? 1.0 - double(s.free_blocks) / s.total_blocks : 0.0);
      absl::SleepFor(absl::Milliseconds(500));
    }
  });
  int sig = 0;
  sigwait(&signals, &sig);
  std::cerr << "sluiced: signal " << sig << ", draining\n";
  health->SetServingStatus(false);
  model.engine->StartDrain();
  const absl::Duration drain = absl::Seconds(absl::GetFlag(FLAGS_drain_timeout_s));
  // Shutdown waits for in-flight RPCs until the deadline, then cancels the rest.
  server->Shutdown(absl::ToChronoTime(absl::Now() + drain));
  model.engine->Shutdown();
  stop_gauges.store(true);
  gauges.join();
  service.SetModel(nullptr);
  std::cerr << "sluiced: stopped\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("sluiced --model DIR [--listen HOST:PORT] [--metrics_listen HOST:PORT]");
  absl::ParseCommandLine(argc, argv);
  return Run();
}
