// The OpenAI-compatible HTTP front door (--http_listen): POST /v1/chat/completions and
// /v1/completions (streamed as server-sent events or not), GET /v1/models, /health and
// /version. It shares the gRPC server's engine, admission, API keys, limits, deadlines and
// metrics through server/generation_call.h; only this file's .cc sees the HTTP library
// (cpp-httplib), so nothing else pulls its header in.
//
// Threads: cpp-httplib serves each connection on one thread of a fixed pool, and a
// streamed response holds its thread until it ends, so the pool is sized for at least
// --max_num_seqs concurrent streams plus a few for probes and idle keep-alive connections.
// A connection beyond that waits in the accept queue rather than being refused.
//
// Cancellation: a streamed response checks its socket while it waits for tokens (every
// 100 ms) and on every write; a client that went away cancels its engine sequence, whose
// blocks are freed at the next step, as a gRPC cancel is. A non-streamed request cannot see
// its client leave (the library gives a handler no socket) and runs to its end or deadline.
#ifndef SLUICE_SERVER_HTTP_SERVER_H_
#define SLUICE_SERVER_HTTP_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/auth.h"
#include "server/generation_call.h"
#include "server/metrics.h"

namespace sluice::server {

struct HttpServerOptions {
  std::string listen;              // HOST:PORT; port 0 picks one
  std::string served_model_name;   // the id in /v1/models; requests naming another get 404
  int32_t threads = 72;            // connection threads (see above)
  size_t max_body_bytes = 4 << 20; // larger bodies get 413
  int32_t read_timeout_s = 30;     // a client that stalls mid-request this long is dropped
  double default_timeout_s = 0;    // per-request deadline without x-request-timeout; 0: none
  // Reasoning and tool-call parsing of chat output: "qwen3", "none", or "auto" (qwen3 for a
  // model_type starting with qwen3: qwen3, qwen3_moe, qwen3_next, qwen3_5*, decided in SetModel).
  std::string output_parser = "auto";
};

class HttpServer {
 public:
  // Binds and starts serving (health answers 503 until SetServing(true); generation
  // endpoints answer 503 until SetModel). `metrics`, `keys` (null: no keys) and `limits`
  // must outlive the server.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           const RequestLimits& limits, Metrics* metrics,
                                                           const ApiKeys* keys);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  void SetModel(ServingModel* model);
  // /health: 200 only while serving (mirrors grpc.health.v1 SERVING).
  void SetServing(bool serving);
  // Stops accepting connections and waits for every handler to return. Call it after the
  // engine has shut down, so that streams still open have had their final event.
  void Stop();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::server

#endif  // SLUICE_SERVER_HTTP_SERVER_H_
