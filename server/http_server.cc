#include "server/http_server.h"

#include <httplib.h>
#include <pthread.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/chat_template/qwen_output_parser.h"
#include "server/http_openai.h"

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "0.0.0"
#endif
#ifndef SLUICE_GIT_COMMIT
#define SLUICE_GIT_COMMIT "unknown"
#endif

namespace sluice::server {
namespace {

using openai::ApiError;
using openai::Endpoint;
using openai::Json;
using openai::ParsedRequest;

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string RandomHex(int digits) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(digits);
  for (int i = 0; i < digits; i += 16) {
    uint64_t bits = rng();
    for (int k = 0; k < 16 && i + k < digits; ++k, bits >>= 4) out.push_back(kHex[bits & 15]);
  }
  return out;
}

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.http_status;
  res.set_content(openai::ErrorBody(e), "application/json");
}

ApiError MakeError(int status, std::string type, std::string message, std::string code = "",
                   std::string param = "") {
  ApiError e;
  e.http_status = status;
  e.type = std::move(type);
  e.message = std::move(message);
  e.code = std::move(code);
  e.param = std::move(param);
  return e;
}

// One generate request over HTTP, from submission to its last byte. Driven by one thread
// at a time (the connection's): the handler, then the streaming provider and releaser.
class HttpGeneration {
 public:
  HttpGeneration(ServingModel* model, Metrics* metrics, const RequestLimits& limits, ParsedRequest request,
                 std::string id, std::string model_name, bool qwen_parser)
      : call_(model, metrics, limits),
        request_(std::move(request)),
        logprobs_(model->tokenizer.get()),
        id_(std::move(id)),
        model_name_(std::move(model_name)),
        created_(absl::ToUnixSeconds(absl::Now())),
        qwen_parser_(qwen_parser) {}

  // Validates, translates and submits; an error here is the response's status.
  absl::Status Start(absl::Time deadline) {
    std::string prompt;
    auto engine_request = call_.Start(request_.params, deadline, &prompt);
    if (!engine_request.ok()) return engine_request.status();
    prompt_tokens_ = static_cast<int64_t>(engine_request->prompt.size());
    if (chat() && qwen_parser_) {
      chat::QwenOutputParser::Options o;
      o.start = chat::QwenOutputParser::StartFor(prompt, request_.thinking_disabled);
      o.tool_calls = request_.has_tools;
      reasoning_ = o.start != chat::QwenOutputParser::Start::kContent;
      parser_.emplace(o);
    }
    return call_.Submit(*std::move(engine_request));
  }

  // Non-streamed: waits for the end and writes the whole response.
  void RunToEnd(httplib::Response& res) {
    Step total;
    while (!total.final) {
      Step step;
      if (Next(absl::InfiniteFuture(), &step)) Merge(std::move(step), &total);
    }
    if (!total.status.ok()) {
      SendError(res, openai::ErrorFromStatus(total.status, request_.endpoint));
      return;
    }
    Json choice;
    if (chat()) {
      Json message = {{"role", "assistant"}};
      // No content beside reasoning or tool calls is null, as OpenAI and vLLM send it.
      const bool blank = total.content.find_first_not_of(" \n\t\r") == std::string::npos;
      const bool other = !total.tool_calls.empty() || !total.reasoning.empty();
      message["content"] = other && blank ? Json(nullptr) : Json(total.content);
      if (reasoning_) message["reasoning_content"] = total.reasoning.empty() ? Json(nullptr) : Json(total.reasoning);
      if (!total.tool_calls.empty()) message["tool_calls"] = ToolCallsJson(total.tool_calls, /*with_index=*/false);
      choice = {{"index", 0},
                {"message", std::move(message)},
                {"logprobs", request_.logprobs ? logprobs_.Chat(total.logprobs) : Json(nullptr)},
                {"finish_reason", FinishReasonOf(total.reason)}};
    } else {
      choice = {{"index", 0},
                {"text", total.content},
                {"logprobs", request_.logprobs ? logprobs_.Completion(total.logprobs) : Json(nullptr)},
                {"finish_reason", FinishReasonOf(total.reason)}};
    }
    Json body = Header(chat() ? "chat.completion" : "text_completion");
    body["choices"] = Json::array({std::move(choice)});
    body["usage"] = openai::UsageJson(total.usage, request_.budget);
    res.status = 200;
    res.set_content(Dump(body), "application/json");
  }

  // Streamed: called by the HTTP library until it returns false (the client is gone) or
  // calls sink.done(). Waits at most 100 ms per call, so that a silent client is noticed.
  bool Stream(httplib::DataSink& sink) {
    try {
      if (!opened_) {
        opened_ = true;
        if (chat()) {
          // The first chunk names the role, as OpenAI's does.
          Json chunk = Chunk(Json{{"role", "assistant"}, {"content", ""}}, Json(nullptr), Json(nullptr));
          if (!Write(sink, SseEvent(chunk))) return Disconnected();
        }
      }
      Step step;
      if (!Next(absl::Now() + absl::Milliseconds(100), &step)) {
        return sink.is_writable() ? true : Disconnected();
      }
      if (!Write(sink, StreamText(step))) return Disconnected();
      if (step.final) sink.done();
      return true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sluiced: http stream %s: %s\n", id_.c_str(), e.what());
      return Disconnected();
    }
  }

  // After the response (or its attempt): a request that did not reach its final event is
  // cancelled and waited for, so that its sequence is freed and its end counted.
  void Release() {
    if (!finished_) Disconnected();
  }

 private:
  struct Step {
    std::string reasoning;
    std::string content;
    std::vector<chat::ParsedToolCall> tool_calls;
    std::vector<engine::TokenLogprob> logprobs;
    int64_t tokens = 0;  // generated in this step
    bool final = false;
    absl::Status status;
    engine::FinishReason reason = engine::FinishReason::kNone;
    engine::UsageStats usage;
  };

  bool chat() const { return request_.endpoint == Endpoint::kChat; }

  // Waits until `until` for events and applies every one that has queued (one write for
  // what piled up while the last was in flight). False when nothing arrived.
  bool Next(absl::Time until, Step* step) {
    engine::RequestEvent event;
    if (!call_.channel()->PopWait(&event, until)) return false;
    do {
      Apply(event, step);
    } while (!step->final && call_.channel()->TryPop(&event));
    return true;
  }

  void Apply(const engine::RequestEvent& event, Step* step) {
    if (request_.logprobs) step->logprobs.insert(step->logprobs.end(), event.logprobs.begin(), event.logprobs.end());
    step->tokens += static_cast<int64_t>(event.tokens.size());
    completion_tokens_ += static_cast<int64_t>(event.tokens.size());
    auto delta = call_.Apply(event);
    if (!delta.ok()) {  // undecodable ids: a bug; end the request with it
      call_.channel()->Cancel();
      step->final = true;
      step->status = absl::InternalError(absl::StrCat("detokenization failed: ", delta.status().message()));
      finished_ = true;
      return;
    }
    AddText(*delta, step);
    if (!event.final) return;
    step->status = call_.FinalStatus(event, &step->reason);
    AddText(call_.FinishText(), step);
    if (parser_) Add(parser_->Finish(), step);
    call_.RecordFinish(step->status, step->reason, event.usage);
    step->usage = event.usage;
    step->final = true;
    finished_ = true;
  }

  void AddText(const std::string& text, Step* step) {
    if (text.empty()) return;
    if (parser_) {
      Add(parser_->Push(text), step);
    } else {
      step->content += text;
    }
  }

  void Add(chat::ParsedDelta delta, Step* step) {
    step->reasoning += delta.reasoning;
    step->content += delta.content;
    for (auto& call : delta.tool_calls) {
      tool_call_ids_.push_back(absl::StrCat("call_", RandomHex(24)));
      step->tool_calls.push_back(std::move(call));
    }
  }

  static void Merge(Step step, Step* total) {
    total->reasoning += step.reasoning;
    total->content += step.content;
    for (auto& c : step.tool_calls) total->tool_calls.push_back(std::move(c));
    total->logprobs.insert(total->logprobs.end(), step.logprobs.begin(), step.logprobs.end());
    if (step.final) {
      total->final = true;
      total->status = step.status;
      total->reason = step.reason;
      total->usage = step.usage;
    }
  }

  std::string FinishReasonOf(engine::FinishReason reason) const {
    if (reason == engine::FinishReason::kLength) return "length";
    if (parser_ && parser_->invalid_tool_calls() > 0) return "invalid_tool_call";
    if (parser_ && parser_->tool_calls() > 0) return "tool_calls";
    return "stop";
  }

  Json ToolCallsJson(const std::vector<chat::ParsedToolCall>& calls, bool with_index) const {
    Json out = Json::array();
    for (const auto& c : calls) {
      Json j;
      if (with_index) j["index"] = c.index;
      j["id"] = tool_call_ids_[c.index];
      j["type"] = "function";
      j["function"] = {{"name", c.name}, {"arguments", c.arguments}};
      out.push_back(std::move(j));
    }
    return out;
  }

  Json Header(const char* object) const {
    return Json{{"id", id_}, {"object", object}, {"created", created_}, {"model", model_name_}};
  }

  Json Chunk(Json delta, Json logprobs, Json finish_reason) const {
    Json chunk = Header(chat() ? "chat.completion.chunk" : "text_completion");
    Json choice = {{"index", 0}};
    if (chat()) {
      choice["delta"] = std::move(delta);
    } else {
      choice["text"] = std::move(delta);
    }
    choice["logprobs"] = std::move(logprobs);
    choice["finish_reason"] = std::move(finish_reason);
    chunk["choices"] = Json::array({std::move(choice)});
    if (request_.continuous_usage) {
      chunk["usage"] = {{"prompt_tokens", prompt_tokens_},
                        {"completion_tokens", completion_tokens_},
                        {"total_tokens", prompt_tokens_ + completion_tokens_}};
    } else if (request_.include_usage) {
      chunk["usage"] = nullptr;
    }
    return chunk;
  }

  static std::string SseEvent(const Json& data) { return absl::StrCat("data: ", Dump(data), "\n\n"); }

  // The SSE events of one step: its delta, and at the end the finish reason, the usage
  // chunk (stream_options.include_usage) or an error event, and [DONE].
  std::string StreamText(Step& step) {
    std::string out;
    Json logprobs(nullptr);
    if (request_.logprobs && !step.logprobs.empty()) {
      logprobs = chat() ? logprobs_.Chat(step.logprobs) : logprobs_.Completion(step.logprobs);
    }
    const bool ok_end = step.final && step.status.ok();
    // With continuous usage, a step that generated tokens is reported even without text.
    const bool counted = request_.continuous_usage && step.tokens > 0;
    Json finish = ok_end ? Json(FinishReasonOf(step.reason)) : Json(nullptr);
    if (chat()) {
      Json delta = Json::object();
      if (!step.reasoning.empty()) delta["reasoning_content"] = step.reasoning;
      if (!step.content.empty()) delta["content"] = step.content;
      if (!step.tool_calls.empty()) delta["tool_calls"] = ToolCallsJson(step.tool_calls, /*with_index=*/true);
      if (!delta.empty() || !logprobs.is_null() || ok_end || counted) {
        out += SseEvent(Chunk(std::move(delta), std::move(logprobs), std::move(finish)));
      }
    } else if (!step.content.empty() || !logprobs.is_null() || ok_end || counted) {
      out += SseEvent(Chunk(step.content, std::move(logprobs), std::move(finish)));
    }
    if (!step.final) return out;
    if (!step.status.ok()) {
      // The status line went out with the first byte; an error now is an SSE event, which
      // OpenAI's clients raise as an APIError.
      out += absl::StrCat("data: ", openai::ErrorBody(openai::ErrorFromStatus(step.status, request_.endpoint)), "\n\n");
    } else if (request_.include_usage) {
      Json chunk = Header(chat() ? "chat.completion.chunk" : "text_completion");
      chunk["choices"] = Json::array();
      chunk["usage"] = openai::UsageJson(step.usage, request_.budget);
      out += SseEvent(chunk);
    }
    out += "data: [DONE]\n\n";
    return out;
  }

  static bool Write(httplib::DataSink& sink, const std::string& text) {
    return text.empty() || sink.write(text.data(), text.size());
  }

  // The client went away: cancel the sequence (freed at the engine's next step) and wait
  // for its final event, which counts it as aborted. Returns false for the library.
  bool Disconnected() {
    if (finished_) return false;
    call_.channel()->Cancel();
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (!finished_ && absl::Now() < give_up) {
      Step ignored;
      Next(give_up, &ignored);
    }
    return false;
  }

  GenerationCall call_;
  ParsedRequest request_;
  openai::LogprobsWriter logprobs_;
  const std::string id_;
  const std::string model_name_;
  const int64_t created_;
  const bool qwen_parser_;
  int64_t prompt_tokens_ = 0;
  int64_t completion_tokens_ = 0;
  std::optional<chat::QwenOutputParser> parser_;
  bool reasoning_ = false;  // reasoning parsing is on: reasoning_content is reported
  std::vector<std::string> tool_call_ids_;
  bool opened_ = false;
  bool finished_ = false;
};

// The connection threads: the library's fixed pool, with named threads ("sluice-http"), so
// that top, perf and bench/http_vs_grpc.sh can tell the HTTP layer's CPU from the rest.
class HttpWorkers final : public httplib::TaskQueue {
 public:
  explicit HttpWorkers(size_t n) {
    for (size_t i = 0; i < n; ++i) {
      threads_.emplace_back([this] { Work(); });
      pthread_setname_np(threads_.back().native_handle(), "sluice-http");
    }
  }
  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }
  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      shutdown_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return shutdown_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // shut down, and every accepted connection served
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      fn();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool shutdown_ = false;
};

// HOST:PORT, [V6]:PORT.
bool SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  return absl::SimpleAtoi(address.substr(colon + 1), port) && *port >= 0 && *port <= 65535 && !host->empty();
}

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions options;
  const RequestLimits* limits = nullptr;
  Metrics* metrics = nullptr;
  const ApiKeys* keys = nullptr;
  std::atomic<ServingModel*> model{nullptr};
  std::atomic<bool> qwen_parser{false};  // decided in SetModel, from the flag and model_type
  std::atomic<bool> serving{false};
  int64_t started = absl::ToUnixSeconds(absl::Now());
  httplib::Server server;
  std::thread thread;
  int port = 0;
  int listen_fd = -1;
  bool stopped = false;

  void Count(const httplib::Request& req) {
    if (metrics != nullptr) metrics->RpcStarted(absl::StrCat(req.method, " ", req.path));
  }
  void Reject(RejectReason reason) {
    if (metrics != nullptr) metrics->RequestRejected(reason);
  }

  bool Authorized(const httplib::Request& req, httplib::Response& res) {
    if (keys == nullptr) return true;
    const std::string authorization = req.get_header_value("Authorization");
    if (keys->Accepts(authorization)) return true;
    Reject(RejectReason::kUnauthenticated);
    res.set_header("WWW-Authenticate", "Bearer");
    SendError(res, MakeError(401, "authentication_error",
                             authorization.empty()
                                 ? "this server requires an API key: send the header 'Authorization: Bearer <key>'"
                                 : "invalid API key",
                             "invalid_api_key"));
    return false;
  }

  // Reads the body through our own bound as well (the library's applies only to a
  // Content-Length body, not to a chunked one).
  // 0 when the body was read; else the HTTP status to answer (413 over the limit, 400 for a
  // body that ended early or was malformed on the wire).
  int ReadBody(const httplib::ContentReader& reader, const httplib::Response& res, std::string* body) {
    bool too_big = false;
    const bool ok = reader([&](const char* data, size_t length) {
      if (body->size() + length > options.max_body_bytes) {
        too_big = true;
        return false;
      }
      body->append(data, length);
      return true;
    });
    if (too_big || res.status == 413) return 413;
    return ok ? 0 : 400;
  }

  void Generate(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader,
                Endpoint endpoint) {
    Count(req);
    std::string body;
    if (const int status = ReadBody(reader, res, &body); status != 0) {
      Reject(RejectReason::kInvalid);
      SendError(res, status == 413 ? TooLarge()
                                   : MakeError(400, "invalid_request_error", "the request body could not be read"));
      return;
    }
    if (!Authorized(req, res)) return;
    ServingModel* m = model.load(std::memory_order_acquire);
    if (m == nullptr) {
      Reject(RejectReason::kUnavailable);
      SendError(res, openai::ErrorFromStatus(NotReadyError(), endpoint));
      return;
    }
    ParsedRequest parsed;
    ApiError error;
    if (!openai::ParseRequest(body, endpoint, &parsed, &error)) {
      Reject(RejectReason::kInvalid);
      SendError(res, error);
      return;
    }
    if (!parsed.model.empty() && parsed.model != options.served_model_name) {
      Reject(RejectReason::kInvalid);
      SendError(res, MakeError(404, "invalid_request_error",
                               absl::StrCat("the model '", parsed.model, "' does not exist; this server serves '",
                                            options.served_model_name, "' (GET /v1/models)"),
                               "model_not_found", "model"));
      return;
    }
    absl::Time deadline = absl::InfiniteFuture();
    if (req.has_header("x-request-timeout")) {
      double seconds = 0;
      if (!absl::SimpleAtod(req.get_header_value("x-request-timeout"), &seconds) || !(seconds > 0) ||
          seconds > 1e7) {
        Reject(RejectReason::kInvalid);
        SendError(res, MakeError(400, "invalid_request_error",
                                 "the header x-request-timeout must be a positive number of seconds", "",
                                 "x-request-timeout"));
        return;
      }
      deadline = absl::Now() + absl::Seconds(seconds);
    } else if (options.default_timeout_s > 0) {
      deadline = absl::Now() + absl::Seconds(options.default_timeout_s);
    }
    std::string id = req.get_header_value("x-request-id");
    if (id.empty() || id.size() > 128) id = absl::StrCat(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-", RandomHex(24));
    parsed.params.request_id = id;
    res.set_header("x-request-id", id);
    const bool stream = parsed.stream;
    auto generation = std::make_shared<HttpGeneration>(m, metrics, *limits, std::move(parsed), id,
                                                       options.served_model_name, qwen_parser.load());
    if (absl::Status s = generation->Start(deadline); !s.ok()) {
      SendError(res, openai::ErrorFromStatus(s, endpoint));
      return;
    }
    if (!stream) {
      generation->RunToEnd(res);
      return;
    }
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    // Exactly "text/event-stream": the library compresses other text/* types.
    res.set_chunked_content_provider(
        "text/event-stream", [generation](size_t, httplib::DataSink& sink) { return generation->Stream(sink); },
        [generation](bool) { generation->Release(); });
  }

  ApiError TooLarge() const {
    return MakeError(413, "invalid_request_error",
                     absl::StrCat("the request body is over the limit --http_max_body_bytes=", options.max_body_bytes),
                     "request_too_large");
  }

  void Models(const httplib::Request& req, httplib::Response& res) {
    Count(req);
    if (!Authorized(req, res)) return;
    ServingModel* m = model.load(std::memory_order_acquire);
    if (m == nullptr) {
      SendError(res, openai::ErrorFromStatus(NotReadyError(), Endpoint::kChat));
      return;
    }
    Json entry = {{"id", options.served_model_name},
                  {"object", "model"},
                  {"created", started},
                  {"owned_by", "sluice"},
                  {"root", m->model_dir},
                  {"max_model_len", m->engine->max_model_len()}};
    res.set_content(Dump(Json{{"object", "list"}, {"data", Json::array({std::move(entry)})}}), "application/json");
  }

  void Install() {
    using httplib::ContentReader;
    using httplib::Request;
    using httplib::Response;
    server.Post("/v1/chat/completions", [this](const Request& req, Response& res, const ContentReader& reader) {
      Generate(req, res, reader, Endpoint::kChat);
    });
    server.Post("/v1/completions", [this](const Request& req, Response& res, const ContentReader& reader) {
      Generate(req, res, reader, Endpoint::kCompletions);
    });
    server.Get("/v1/models", [this](const Request& req, Response& res) { Models(req, res); });
    server.Get("/health", [this](const Request& req, Response& res) {
      const bool up = serving.load();
      res.status = up ? 200 : 503;
      res.set_content(Dump(Json{{"status", up ? "SERVING" : "NOT_SERVING"}}), "application/json");
    });
    server.Get("/version", [](const Request&, Response& res) {
      res.set_content(Dump(Json{{"version", SLUICE_VERSION}, {"commit", SLUICE_GIT_COMMIT}, {"api", "sluice.v1"}}),
                      "application/json");
    });
    // Errors the library answers itself (no route, a malformed request line, an oversize
    // Content-Length) get the OpenAI shape too; ours already have a body.
    server.set_error_handler(httplib::Server::HandlerWithResponse([this](const Request& req, Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      ApiError e;
      e.http_status = res.status;
      switch (res.status) {
        case 404:
          e.message = absl::StrCat("no route ", req.method, " ", req.path,
                                   " (served: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, "
                                   "GET /health, GET /version)");
          e.code = "not_found";
          break;
        case 413:  // a body over the limit on a route without a body reader
          Reject(RejectReason::kInvalid);
          e = TooLarge();
          break;
        case 414: e.message = "the request URI is too long"; break;
        case 400: e.message = "malformed HTTP request"; break;
        default: e.message = absl::StrCat("HTTP error ", res.status); break;
      }
      SendError(res, e);
      return httplib::Server::HandlerResponse::Handled;
    }));
    server.set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      SendError(res, MakeError(500, "server_error", absl::StrCat("internal error: ", what), "internal_error"));
    });
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                               const RequestLimits& limits, Metrics* metrics,
                                                               const ApiKeys* keys) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(options.listen, &host, &port)) {
    return absl::InvalidArgumentError("not a HOST:PORT address");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->limits = &limits;
  impl->metrics = metrics;
  impl->keys = keys;
  Impl* self = impl.get();
  httplib::Server& s = impl->server;
  const size_t threads = static_cast<size_t>(std::max(options.threads, 1));
  s.new_task_queue = [threads] { return new HttpWorkers(threads); };
  s.set_payload_max_length(options.max_body_bytes);
  s.set_read_timeout(options.read_timeout_s, 0);
  s.set_write_timeout(30, 0);
  s.set_keep_alive_max_count(1000);
  s.set_keep_alive_timeout(5);
  s.set_tcp_nodelay(true);  // SSE writes are small; Nagle would hold them for the client's ACK
  // The library's default sets SO_REUSEPORT, with which a second daemon on the same port
  // binds without error and steals half the connections: plain SO_REUSEADDR instead.
  s.set_socket_options([self](int fd) {
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    self->listen_fd = fd;
  });
  impl->Install();
  if (port == 0) {
    port = s.bind_to_any_port(host);
    if (port <= 0) return absl::UnavailableError("cannot listen there (not an address of this machine)");
  } else if (!s.bind_to_port(host, port)) {
    return absl::UnavailableError("cannot listen there (address in use, or not an address of this machine)");
  }
  impl->port = port;
  // The library listens with a backlog of 5; a burst of clients (a load balancer's pool,
  // a benchmark's 64 streams) would see SYNs dropped and retried a second later.
  if (self->listen_fd >= 0) ::listen(self->listen_fd, SOMAXCONN);
  impl->thread = std::thread([self] { self->server.listen_after_bind(); });
  pthread_setname_np(impl->thread.native_handle(), "sluice-http-acc");
  for (int i = 0; i < 5000 && !s.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::SetModel(ServingModel* model) {
  bool qwen = impl_->options.output_parser == "qwen3";
  if (impl_->options.output_parser == "auto" && model != nullptr) {
    // Qwen3, Qwen3-MoE, Qwen3-Next and Qwen3.5 (dense and MoE) share the output format.
    qwen = model->engine->model().config().model_type.rfind("qwen3", 0) == 0;
  }
  impl_->qwen_parser.store(qwen);
  impl_->model.store(model, std::memory_order_release);
}

void HttpServer::SetServing(bool serving) { impl_->serving.store(serving); }

void HttpServer::Stop() {
  if (impl_ == nullptr || impl_->stopped) return;
  impl_->stopped = true;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace sluice::server
