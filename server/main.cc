// sluiced: the serving daemon.
//
// Life cycle, as load balancers and kubelets see it through grpc.health.v1 (for the
// empty service name and for sluice.v1.Generation alike):
//  1. NOT_SERVING while the model loads and one warm-up request runs, then SERVING.
//  2. SIGTERM (or SIGINT): NOT_SERVING at once, but requests are still accepted for
//     --drain_grace_s so that load balancers notice before anyone is refused; a second
//     signal skips the rest of the grace. Then new requests get UNAVAILABLE, in-flight
//     ones finish for up to --drain_timeout_s (a signal now ends that wait), whatever is
//     left ends with UNAVAILABLE ("the server shut down ..."), and the process exits 0.
//  SIGHUP re-reads --api_keys_file without touching open streams.
// The OpenAI-compatible HTTP server (--http_listen) follows the same life cycle: its
// /health answers 503 while loading and from SIGTERM on, 200 only while SERVING; during
// the grace it still takes requests, then the engine refuses new ones (503), in-flight
// streams finish or end with an error event, and it stops after the engine has.
// Start-up failures exit 1 with one line naming the flag and its value.
#include <signal.h>

#include <filesystem>
#include <fstream>
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
#include "server/auth.h"
#include "server/generation_service.h"
#include "server/http_server.h"
#include "server/interceptors.h"
#include "server/metrics.h"

#ifndef SLUICE_DEFAULT_MODEL_DIR
#define SLUICE_DEFAULT_MODEL_DIR "deploy/models/sluice-demo"
#endif

ABSL_FLAG(std::string, model, SLUICE_DEFAULT_MODEL_DIR,
          "Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json). "
          "Defaults to the embedded demo model (a tiny Qwen3.5-MoE trained on Shakespeare).");
ABSL_FLAG(std::string, served_model_name, "",
          "Model name in metrics (label model_name); default: the --model directory's name");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC listen address (HOST:PORT; port 0 picks one)");
ABSL_FLAG(std::string, http_listen, "127.0.0.1:8000",
          "OpenAI-compatible HTTP address (HOST:PORT; port 0 picks one): /v1/chat/completions, "
          "/v1/completions, /v1/models, /health, /version; empty disables");
ABSL_FLAG(int32_t, http_threads, 0,
          "HTTP connection threads; each open stream holds one (0: max(--max_num_seqs, 8) + 8)");
ABSL_FLAG(int64_t, http_max_body_bytes, 4 << 20, "Largest HTTP request body accepted (413 above)");
ABSL_FLAG(double, http_request_timeout_s, 0,
          "Deadline of an HTTP request that sends no x-request-timeout header, in seconds (0: none)");
ABSL_FLAG(std::string, output_parser, "auto",
          "Reasoning (<think>) and tool-call (<tool_call>) parsing of /v1/chat/completions output: "
          "auto (qwen3 for model_type qwen3*, qwen3_5*, qwen3_next*; else none), qwen3 or none");
ABSL_FLAG(std::string, http_port_file, "", "If set, write the bound HTTP port here once listening (tests)");
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
ABSL_FLAG(int64_t, kv_cache_memory, 512ll << 20, "Bytes for the KV cache and recurrent-state slots");
ABSL_FLAG(bool, enable_prefix_caching, true,
          "Share full KV blocks between requests by content and, on hybrid models, restore "
          "recurrent-state snapshots, so a repeated prefix (system prompt, earlier turns) is "
          "not prefilled again");
ABSL_FLAG(int64_t, prefix_state_memory, 256ll << 20,
          "Hybrid models: bytes for prefix-cache snapshots of the recurrent state (beside "
          "--kv_cache_memory; GetEngineStats reports the bytes of one)");
ABSL_FLAG(int32_t, state_snapshot_interval, 256,
          "Hybrid models: also snapshot the state every this many prompt tokens (rounded up "
          "to 64; 0: only at prefill ends, branch points and the ends of sequences)");
ABSL_FLAG(std::string, kv_cache_dtype, "bf16",
          "What the KV cache stores K and V as: bf16 (half of f32's bytes, ~2x the sequences), "
          "f32 (exact against transformers) or fp8 (e4m3 with a per-row scale, ~4x)");
ABSL_FLAG(std::string, matmul_precision, "f32",
          "bf16-weight matmuls: f32 (exact, activations stay f32) or bf16 (AVX512-BF16 "
          "dot products on bf16-rounded activations, ~2x the arithmetic rate)");
ABSL_FLAG(std::string, quantization, "none",
          "Weights quantized at load: none (as the checkpoint stores them), int8 (symmetric, "
          "per output channel: half of bf16's bytes) or int4 (group-wise 4-bit). See README "
          "\"Quantized weights\" for what stays in higher precision");
ABSL_FLAG(int32_t, int4_group_size, 128,
          "With --quantization int4: inputs per scale and minimum, 32, 64 or 128 (32: 5 bits a "
          "weight and the closest to the stored model; 128: 4.25 bits and the fastest)");
ABSL_FLAG(std::string, int4_int8_parts, "",
          "With --quantization int4: projections kept at int8, comma-separated: lm_head, "
          "delta_net_in (the Gated DeltaNet's fused in_proj), attention_in (q|k|v|gate). More "
          "bytes a step, less error; README \"Quantized weights\" has the measurements");
ABSL_FLAG(bool, quantize_embeddings, true,
          "With --quantization: quantize the embedding table (int8) and the LM head too; "
          "false keeps both as stored");
ABSL_FLAG(int32_t, max_message_bytes, 4 << 20, "Largest gRPC request accepted (RESOURCE_EXHAUSTED above)");
ABSL_FLAG(int64_t, max_prompt_tokens, 0, "Most prompt tokens per request (0: the context)");
ABSL_FLAG(int64_t, max_output_tokens, 0, "Largest stopping.max_tokens accepted (0: the context)");
ABSL_FLAG(int32_t, max_stop_strings, 16, "Most stop strings per request");
ABSL_FLAG(int32_t, max_stop_string_bytes, 1024, "Longest stop string in bytes");
ABSL_FLAG(int32_t, max_logprobs, 20, "Largest logprobs.top_n accepted (at most 20)");
ABSL_FLAG(int32_t, max_streams_per_connection, 100,
          "Concurrent RPCs per client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; more wait)");
ABSL_FLAG(int32_t, drain_grace_s, 5,
          "On SIGTERM, seconds health reports NOT_SERVING while requests are still accepted");
ABSL_FLAG(int32_t, drain_timeout_s, 30, "Seconds in-flight requests then get to finish");
ABSL_FLAG(std::string, api_keys_file, "",
          "File of API keys, one per line; every RPC but health then needs 'authorization: Bearer <key>'. "
          "Re-read on SIGHUP");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (/metrics stays plaintext)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA bundle: require client certificates it signed (mutual TLS)");
ABSL_FLAG(std::string, expert_metrics, "off",
          "Expert-load series sluice_expert_tokens_total: off, all (layers x experts series) or top:N per layer");
ABSL_FLAG(std::string, port_file, "", "If set, write the bound gRPC port here once listening (tests)");

namespace {

using sluice::server::ApiKeys;
using sluice::server::GenerationService;
using sluice::server::Metrics;
using sluice::server::ServingModel;

int Fail(const std::string& line) {
  std::cerr << "sluiced: " << line << "\n";
  return 1;
}

// MemAvailable from /proc/meminfo in bytes, or -1 when unknown.
int64_t AvailableMemory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return -1;
}

void WritePortFile(const std::string& path, int port) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  if (FILE* f = std::fopen(tmp.c_str(), "w"); f != nullptr) {
    std::fprintf(f, "%d\n", port);
    std::fclose(f);
    std::rename(tmp.c_str(), path.c_str());
  }
}

// One short request through the engine before health says SERVING: the first steps
// pay for page faults on the weights and for allocator warm-up, not a user.
absl::Status WarmUp(sluice::engine::Engine* engine) {
  sluice::engine::GenerationRequest request;
  request.prompt = {engine->model().config().bos_token_id.value_or(0)};
  request.stopping.max_tokens = 2;
  request.stopping.ignore_eos = true;
  request.request_id = "warm-up";
  auto channel = std::make_shared<sluice::engine::RequestChannel>();
  if (absl::Status s = engine->Submit(std::move(request), channel); !s.ok()) return s;
  sluice::engine::RequestEvent event;
  while (channel->PopWait(&event, absl::Now() + absl::Seconds(120))) {
    if (event.final) return event.status;
  }
  return absl::DeadlineExceededError("the warm-up request did not finish in 120 s");
}

// The model's chat template, for `messages` inputs (gRPC) and /v1/chat/completions. A model
// without one still serves everything else; chat requests then say why they cannot run.
void LoadChatTemplate(ServingModel* model) {
#ifdef SLUICE_HAVE_CHAT_TEMPLATE
  auto loaded = sluice::chat::ChatTemplate::Load(model->model_dir);
  if (loaded.ok()) {
    model->chat_template = *std::move(loaded);
    return;
  }
  model->chat_template_error = std::string(loaded.status().message());
  if (loaded.status().code() != absl::StatusCode::kNotFound) {
    std::cerr << "sluiced: warning: --model=" << model->model_dir
              << ": the chat template does not load, chat requests will fail: " << model->chat_template_error << "\n";
  }
#else
  model->chat_template_error = "this build of sluiced has no chat-template renderer";
#endif
}

void SetServing(grpc::HealthCheckServiceInterface* health, bool serving) {
  health->SetServingStatus(serving);
  health->SetServingStatus("", serving);
  health->SetServingStatus("sluice.v1.Generation", serving);
}

// Waits for the next signal among `signals` until `deadline`; returns it, or 0 on timeout.
int WaitSignal(const sigset_t& signals, absl::Time deadline) {
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return 0;
    const timespec ts = absl::ToTimespec(std::min(left, absl::Seconds(1)));
    const int sig = sigtimedwait(&signals, nullptr, &ts);
    if (sig > 0) return sig;
  }
}

int Run() {
  // Block the life-cycle signals in every thread; this thread takes them with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (!std::filesystem::is_directory(model_dir)) return Fail("--model=" + model_dir + ": not a directory");
  if (!std::filesystem::exists(std::filesystem::path(model_dir) / "config.json")) {
    return Fail("--model=" + model_dir + ": no config.json in the directory");
  }
  const std::string precision = absl::GetFlag(FLAGS_matmul_precision);
  if (precision != "f32" && precision != "bf16") {
    return Fail("--matmul_precision=" + precision + ": must be f32 or bf16");
  }
  const auto kv_cache_dtype = sluice::engine::ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype));
  if (!kv_cache_dtype.ok()) {
    return Fail("--kv_cache_dtype=" + absl::GetFlag(FLAGS_kv_cache_dtype) + ": must be f32, bf16 or fp8");
  }
  const auto quantization = sluice::kernels::ParseWeightQuantization(absl::GetFlag(FLAGS_quantization));
  if (!quantization.ok()) {
    return Fail("--quantization=" + absl::GetFlag(FLAGS_quantization) + ": must be none, int8 or int4");
  }
  const auto int4_int8_parts = sluice::kernels::ParseLinearParts(absl::GetFlag(FLAGS_int4_int8_parts));
  if (!int4_int8_parts.ok()) {
    return Fail("--int4_int8_parts=" + absl::GetFlag(FLAGS_int4_int8_parts) + ": " +
                std::string(int4_int8_parts.status().message()));
  }
  if (const int32_t g = absl::GetFlag(FLAGS_int4_group_size); g != 32 && g != 64 && g != 128) {
    return Fail(absl::StrCat("--int4_group_size=", g, ": must be 32, 64 or 128"));
  }
  if (const int32_t n = absl::GetFlag(FLAGS_max_logprobs); n < 0 || n > 20) {
    return Fail(absl::StrCat("--max_logprobs=", n, ": must be between 0 and 20"));
  }
  if (absl::GetFlag(FLAGS_drain_grace_s) < 0 || absl::GetFlag(FLAGS_drain_timeout_s) < 0) {
    return Fail("--drain_grace_s and --drain_timeout_s must be >= 0");
  }
  const int64_t kv_memory = absl::GetFlag(FLAGS_kv_cache_memory);
  if (kv_memory <= 0) return Fail(absl::StrCat("--kv_cache_memory=", kv_memory, ": must be > 0"));
  if (const int64_t available = AvailableMemory(); available > 0 && kv_memory > available) {
    return Fail(absl::StrCat("--kv_cache_memory=", kv_memory, ": more than the ", available,
                             " bytes of memory available"));
  }
  const std::string output_parser = absl::GetFlag(FLAGS_output_parser);
  if (output_parser != "auto" && output_parser != "qwen3" && output_parser != "none") {
    return Fail("--output_parser=" + output_parser + ": must be auto, qwen3 or none");
  }
  if (absl::GetFlag(FLAGS_http_max_body_bytes) <= 0 || absl::GetFlag(FLAGS_http_threads) < 0 ||
      absl::GetFlag(FLAGS_http_request_timeout_s) < 0) {
    return Fail("--http_max_body_bytes must be > 0, --http_threads and --http_request_timeout_s >= 0");
  }
  auto expert_mode = sluice::server::ExpertMetricsMode::Parse(absl::GetFlag(FLAGS_expert_metrics));
  if (!expert_mode.ok()) return Fail(std::string(expert_mode.status().message()) + ", got '" +
                                     absl::GetFlag(FLAGS_expert_metrics) + "'");

  std::unique_ptr<ApiKeys> keys;
  if (const std::string path = absl::GetFlag(FLAGS_api_keys_file); !path.empty()) {
    auto loaded = ApiKeys::Load(path);
    if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
    keys = *std::move(loaded);
  }
  const sluice::server::TlsFiles tls{absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                                     absl::GetFlag(FLAGS_tls_client_ca)};

  sluice::server::MetricsOptions metrics_options;
  metrics_options.model_name = absl::GetFlag(FLAGS_served_model_name);
  if (metrics_options.model_name.empty()) {
    metrics_options.model_name = std::filesystem::path(model_dir).lexically_normal().filename().string();
    if (metrics_options.model_name.empty()) {
      metrics_options.model_name = std::filesystem::path(model_dir).lexically_normal().parent_path().filename().string();
    }
  }
  metrics_options.expert_metrics = *expert_mode;
  metrics_options.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  Metrics metrics(metrics_options);
  const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (auto s = metrics.Serve(metrics_listen); !s.ok()) {
    return Fail("--metrics_listen=" + metrics_listen + ": " + std::string(s.message()));
  }

  auto credentials = sluice::server::MakeServerCredentials(tls, keys.get(), &metrics);
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  const std::string listen = absl::GetFlag(FLAGS_listen);
  if (!sluice::server::IsLoopbackAddress(listen) && !tls.enabled() && keys == nullptr) {
    std::cerr << "sluiced: warning: --listen=" << listen
              << " is reachable from other machines with neither TLS (--tls_cert) nor API keys "
                 "(--api_keys_file): anyone who reaches the port can use the model\n";
  }
  if (!metrics_listen.empty() && !sluice::server::IsLoopbackAddress(metrics_listen)) {
    std::cerr << "sluiced: warning: --metrics_listen=" << metrics_listen
              << " serves /metrics in plaintext and without API keys beyond this machine; keep it on a "
                 "private network or behind a TLS proxy\n";
  }

  sluice::server::RequestLimits limits;
  limits.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  limits.max_output_tokens = absl::GetFlag(FLAGS_max_output_tokens);
  limits.max_stop_strings = absl::GetFlag(FLAGS_max_stop_strings);
  limits.max_stop_string_bytes = absl::GetFlag(FLAGS_max_stop_string_bytes);
  limits.max_logprobs = absl::GetFlag(FLAGS_max_logprobs);
  GenerationService service(&metrics, limits);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, *credentials, &port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, absl::GetFlag(FLAGS_max_streams_per_connection));
  builder.RegisterService(&service);
  builder.experimental().SetInterceptorCreators(sluice::server::MakeInterceptorFactories(&metrics));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail("--listen=" + listen + ": cannot listen there (address in use, or not an address of this machine)");
  }
  auto* health = server->GetHealthCheckService();
  SetServing(health, false);
  std::cerr << "sluiced: listening on port " << port << (tls.enabled() ? " (TLS" : " (plaintext")
            << (keys ? ", API keys)" : ")") << "\n";

  // The HTTP server shares the limits, keys and metrics; it answers 503 until the model is in.
  std::unique_ptr<sluice::server::HttpServer> http;
  const std::string http_listen = absl::GetFlag(FLAGS_http_listen);
  if (!http_listen.empty()) {
    sluice::server::HttpServerOptions http_options;
    http_options.listen = http_listen;
    http_options.served_model_name = metrics_options.model_name;
    http_options.threads = absl::GetFlag(FLAGS_http_threads);
    if (http_options.threads == 0) http_options.threads = std::max(absl::GetFlag(FLAGS_max_num_seqs), 8) + 8;
    http_options.max_body_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_http_max_body_bytes));
    http_options.default_timeout_s = absl::GetFlag(FLAGS_http_request_timeout_s);
    http_options.output_parser = output_parser;
    auto started = sluice::server::HttpServer::Start(http_options, limits, &metrics, keys.get());
    if (!started.ok()) {
      server->Shutdown();
      return Fail("--http_listen=" + http_listen + ": " + std::string(started.status().message()));
    }
    http = *std::move(started);
    if (!sluice::server::IsLoopbackAddress(http_listen) && keys == nullptr) {
      std::cerr << "sluiced: warning: --http_listen=" << http_listen
                << " is reachable from other machines without API keys (--api_keys_file), and the HTTP "
                   "server is plaintext (put TLS in front of it)\n";
    }
    std::cerr << "sluiced: HTTP (OpenAI-compatible) on port " << http->port() << " with " << http_options.threads
              << " connection threads" << (keys ? " (API keys)" : "") << "\n";
  }
  // The HTTP port first: a test that sees the gRPC port file finds the HTTP one too.
  if (http != nullptr) WritePortFile(absl::GetFlag(FLAGS_http_port_file), http->port());
  WritePortFile(absl::GetFlag(FLAGS_port_file), port);
  // Ends the HTTP server on every early return below (its handlers hold no model yet).
  auto stop_http = [&http] {
    if (http != nullptr) http->Stop();
  };

  ServingModel model;
  model.model_dir = model_dir;
  sluice::engine::EngineOptions options;
  options.model_dir = model.model_dir;
  options.threads = absl::GetFlag(FLAGS_threads);
  options.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  options.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  options.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  options.kv_cache_memory = kv_memory;
  options.kv_cache_dtype = *kv_cache_dtype;
  options.enable_prefix_caching = absl::GetFlag(FLAGS_enable_prefix_caching);
  options.prefix_state_memory = absl::GetFlag(FLAGS_prefix_state_memory);
  options.state_snapshot_interval = absl::GetFlag(FLAGS_state_snapshot_interval);
  options.itl_target_ms = absl::GetFlag(FLAGS_itl_target_ms);
  options.itl_target_factor = absl::GetFlag(FLAGS_itl_target_factor);
  options.matmul_precision = precision == "bf16" ? sluice::kernels::MatmulPrecision::kBf16
                                                 : sluice::kernels::MatmulPrecision::kF32;
  options.quantization = *quantization;
  options.quantize_embeddings = absl::GetFlag(FLAGS_quantize_embeddings);
  options.int4_group_size = absl::GetFlag(FLAGS_int4_group_size);
  options.int4_int8_parts = *int4_int8_parts;
  options.on_step = [&metrics](const sluice::engine::StepMetrics& step) { metrics.StepFinished(step); };
  const absl::Time load_start = absl::Now();
  auto engine = sluice::engine::Engine::Create(options);
  if (!engine.ok()) {
    server->Shutdown();
    stop_http();
    return Fail("--model=" + model.model_dir + ": cannot load: " + std::string(engine.status().message()));
  }
  model.engine = *std::move(engine);
  if (std::filesystem::exists(std::filesystem::path(model.model_dir) / "tokenizer.json")) {
    auto tok = sluice::tokenizer::Tokenizer::LoadFromDirectory(model.model_dir);
    if (!tok.ok()) {
      server->Shutdown();
      stop_http();
      return Fail("--model=" + model.model_dir + ": cannot load the tokenizer: " + std::string(tok.status().message()));
    }
    model.tokenizer = *std::move(tok);
  }
  LoadChatTemplate(&model);
  if (absl::Status s = WarmUp(model.engine.get()); !s.ok()) {
    server->Shutdown();
    stop_http();
    return Fail("--model=" + model.model_dir + ": the warm-up request failed: " + std::string(s.message()));
  }
  const auto& config = model.engine->model().config();
  std::cerr << "sluiced: loaded " << config.model_type << " (" << config.num_layers << " layers, "
            << config.TotalParameters() << " parameters) from " << model.model_dir << " and warmed up in "
            << absl::ToDoubleMilliseconds(absl::Now() - load_start) << " ms\n";
  if (const auto& kv = model.engine->kv_cache_shape(); kv.num_layers > 0) {
    const int64_t per_sequence = (model.engine->max_model_len() + kv.block_size - 1) / kv.block_size;
    std::cerr << "sluiced: KV cache " << sluice::engine::KvCacheDtypeName(kv.dtype) << ": " << kv.num_blocks
              << " blocks of " << kv.block_size << " tokens (" << kv.BytesPerBlock() << " bytes each), "
              << kv.num_blocks / per_sequence << " sequences of max_model_len " << model.engine->max_model_len()
              << " at once\n";
  }
  metrics.SetEngine(model.engine.get());
  service.SetModel(&model);
  if (http != nullptr) {
    http->SetModel(&model);
    http->SetServing(true);
  }
  SetServing(health, true);

  // Serve until SIGTERM/SIGINT; SIGHUP re-reads the API keys.
  int sig = 0;
  for (;;) {
    sigwait(&signals, &sig);
    if (sig != SIGHUP) break;
    if (keys == nullptr) {
      std::cerr << "sluiced: SIGHUP: no --api_keys_file to re-read\n";
    } else if (absl::Status s = keys->Reload(); !s.ok()) {
      std::cerr << "sluiced: SIGHUP: keeping the " << keys->size() << " keys in force: " << s.message() << "\n";
    } else {
      std::cerr << "sluiced: SIGHUP: re-read " << keys->size() << " API keys from " << keys->path() << "\n";
    }
  }
  sigdelset(&signals, SIGHUP);
  SetServing(health, false);
  if (http != nullptr) http->SetServing(false);
  const int grace = absl::GetFlag(FLAGS_drain_grace_s);
  std::cerr << "sluiced: signal " << sig << ": NOT_SERVING; accepting requests for " << grace
            << " s more (a second signal skips this)\n";
  if (WaitSignal(signals, absl::Now() + absl::Seconds(grace)) != 0) {
    std::cerr << "sluiced: second signal: ending the grace period\n";
  }
  model.engine->StartDrain();
  const int timeout = absl::GetFlag(FLAGS_drain_timeout_s);
  std::cerr << "sluiced: draining: new requests get UNAVAILABLE; in-flight ones have " << timeout << " s\n";
  const absl::Time drain_end = absl::Now() + absl::Seconds(timeout);
  while (!model.engine->WaitIdle(absl::Milliseconds(100))) {
    if (absl::Now() >= drain_end) {
      std::cerr << "sluiced: drain timeout: ending what is left with UNAVAILABLE\n";
      break;
    }
    const timespec poll{0, 0};
    if (sigtimedwait(&signals, nullptr, &poll) > 0) {
      std::cerr << "sluiced: another signal: ending what is left with UNAVAILABLE\n";
      break;
    }
  }
  // Ends every request still pending with UNAVAILABLE; their RPCs finish with it.
  model.engine->Shutdown();
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  // After the engine: every open stream has had its final event and is ending.
  stop_http();
  metrics.SetEngine(nullptr);
  service.SetModel(nullptr);
  std::cerr << "sluiced: stopped\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sluiced --model DIR [--listen HOST:PORT] [--metrics_listen HOST:PORT] [--api_keys_file F] "
      "[--tls_cert F --tls_key F]");
  absl::ParseCommandLine(argc, argv);
  return Run();
}
