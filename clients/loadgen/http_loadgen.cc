// sluice-http-loadgen: the closed-loop streaming load of sluice-loadgen, over the
// OpenAI-compatible HTTP API instead of gRPC, so that the two front doors can be compared
// on the same load (bench/http_vs_grpc.sh). Each of --streams clients is one thread with
// one keep-alive connection (cpp-httplib's client) that sends POST /v1/completions with a
// prompt of random token ids, max_tokens and ignore_eos, streamed; the next request starts
// when one ends. Requests and figures are defined as sluice-loadgen defines them:
//   ttft: request start to the first chunk that carries tokens (requests started in the
//         window); itl: each gap between chunks, shared equally among the tokens a chunk
//         carries (every gap that ends in the window); percentiles nearest-rank.
// Tokens per chunk come from stream_options.continuous_usage_stats (the running
// completion_tokens in each chunk), so text held back by detokenization does not blur them.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "clients/loadgen/summary.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

ABSL_FLAG(std::string, server, "127.0.0.1:8000", "sluiced HTTP address (--http_listen)");
ABSL_FLAG(std::string, api_key, "", "API key sent as 'Authorization: Bearer KEY'");
ABSL_FLAG(std::string, streams, "16,64", "Concurrency levels, comma-separated");
ABSL_FLAG(double, seconds, 20, "Measured seconds per level");
ABSL_FLAG(double, warmup_seconds, 0, "Unmeasured seconds of the same load before each window");
ABSL_FLAG(int32_t, prompt_tokens, 64, "Prompt length in tokens");
ABSL_FLAG(int32_t, max_tokens, 64, "Output length (max_tokens, EOS ignored)");
ABSL_FLAG(int32_t, vocab, 512, "Prompt token ids are drawn from [0, vocab)");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the prompt tokens");
ABSL_FLAG(std::string, json, "", "Write every level's figures to this JSON file");

namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

using sluice::loadgen::Summarize;
using sluice::loadgen::Summary;

Json SummaryJson(const std::vector<double>& v) {
  Json j = {{"count", v.size()}};
  if (auto s = Summarize(v)) {
    j["mean"] = s->mean;
    j["p50"] = s->p50;
    j["p90"] = s->p90;
    j["p99"] = s->p99;
    j["max"] = s->max;
  }
  return j;
}

struct Figures {
  std::mutex mu;
  std::vector<double> ttft_ms, itl_ms, e2e_ms;
  int64_t issued = 0, completed = 0, errors = 0, window_tokens = 0, window_completions = 0;
  std::string error_example;
};

struct Level {
  Clock::time_point window_start, window_end;
  bool InWindow(Clock::time_point t) const { return t >= window_start && t <= window_end; }
};

// One streamed request; returns after its last byte (or an error).
void RunOne(httplib::Client& client, const std::string& body, const httplib::Headers& headers, const Level& level,
            Figures* figures) {
  const auto start = Clock::now();
  const bool measured = level.InWindow(start);
  auto last = start;
  bool got_first = false;
  int64_t tokens = 0, window_tokens = 0;
  std::vector<double> itl;
  std::string pending;
  bool done = false;
  std::string error;

  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = headers;
  req.body = body;
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    pending.append(data, len);
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      const std::string data_text = event.substr(6);
      if (data_text == "[DONE]") {
        done = true;
        continue;
      }
      const Json chunk = Json::parse(data_text, nullptr, false);
      if (!chunk.is_object() || chunk.contains("error")) {
        error = chunk.is_object() ? chunk["error"].value("message", "error event") : "malformed chunk";
        continue;
      }
      const auto usage = chunk.find("usage");
      if (usage == chunk.end() || !usage->is_object()) continue;
      const int64_t now_tokens = usage->value("completion_tokens", int64_t{0});
      const int64_t n = now_tokens - tokens;
      if (n <= 0) continue;
      const auto now = Clock::now();
      if (!got_first) {
        got_first = true;
        if (measured) {
          std::lock_guard<std::mutex> lock(figures->mu);
          figures->ttft_ms.push_back(Ms(now - start));
        }
      } else if (level.InWindow(now)) {
        const double gap = Ms(now - last) / static_cast<double>(n);  // n tokens: n equal gaps
        for (int64_t i = 0; i < n; ++i) itl.push_back(gap);
      }
      if (level.InWindow(now)) window_tokens += n;
      tokens = now_tokens;
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = client.send(req, res, err);
  const auto end = Clock::now();
  if (!sent) {
    error = "transport error " + std::to_string(static_cast<int>(err));
  } else if (res.status != 200) {
    error = "HTTP " + std::to_string(res.status);
  } else if (!done && error.empty()) {
    error = "stream ended without [DONE]";
  }
  std::lock_guard<std::mutex> lock(figures->mu);
  figures->itl_ms.insert(figures->itl_ms.end(), itl.begin(), itl.end());
  figures->window_tokens += window_tokens;
  if (measured) ++figures->issued;
  if (!error.empty()) {
    if (measured) ++figures->errors;
    if (figures->error_example.empty()) figures->error_example = error;
    return;
  }
  if (level.InWindow(end)) ++figures->window_completions;
  if (measured) {
    ++figures->completed;
    figures->e2e_ms.push_back(Ms(end - start));
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sluice-http-loadgen --server HOST:PORT [--streams 16,64] [--seconds S] [--warmup_seconds S] "
      "[--prompt_tokens N] [--max_tokens N] [--json FILE]: closed-loop streaming load over /v1/completions");
  absl::ParseCommandLine(argc, argv);
  const std::string server = absl::GetFlag(FLAGS_server);
  const size_t colon = server.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(server.substr(colon + 1), &port)) {
    std::fprintf(stderr, "--server=%s: not HOST:PORT\n", server.c_str());
    return 1;
  }
  const std::string host = server.substr(0, colon);
  std::vector<int> levels;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_streams), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n <= 0) {
      std::fprintf(stderr, "--streams: bad level '%s'\n", std::string(s).c_str());
      return 1;
    }
    levels.push_back(n);
  }
  httplib::Headers headers = {{"Content-Type", "application/json"}};
  if (!absl::GetFlag(FLAGS_api_key).empty()) headers.emplace("Authorization", "Bearer " + absl::GetFlag(FLAGS_api_key));
  const int32_t prompt_tokens = absl::GetFlag(FLAGS_prompt_tokens);
  const int32_t max_tokens = absl::GetFlag(FLAGS_max_tokens);
  const int32_t vocab = absl::GetFlag(FLAGS_vocab);

  Json report = {{"api", "http"}, {"prompt_tokens", prompt_tokens}, {"max_tokens", max_tokens}, {"levels", Json::array()}};
  std::printf("%7s %9s %9s %11s %8s %8s %8s %8s %8s %8s\n", "streams", "requests", "errors", "tok/s", "ttft50",
              "ttft90", "ttft99", "itl50", "itl90", "itl99");
  for (int streams : levels) {
    Level level;
    const auto t0 = Clock::now();
    level.window_start = t0 + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(absl::GetFlag(FLAGS_warmup_seconds)));
    level.window_end = level.window_start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(absl::GetFlag(FLAGS_seconds)));
    Figures figures;
    std::vector<std::thread> threads;
    for (int s = 0; s < streams; ++s) {
      threads.emplace_back([&, s] {
        std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) * 1000003 + static_cast<uint64_t>(s));
        httplib::Client client(host, port);
        client.set_read_timeout(600, 0);
        client.set_keep_alive(true);
        client.set_tcp_nodelay(true);
        while (Clock::now() < level.window_end) {
          Json prompt = Json::array();
          for (int32_t i = 0; i < prompt_tokens; ++i) prompt.push_back(static_cast<int32_t>(rng() % vocab));
          const Json body = {{"prompt", prompt},
                             {"max_tokens", max_tokens},
                             {"ignore_eos", true},
                             {"stream", true},
                             {"stream_options", {{"continuous_usage_stats", true}}}};
          RunOne(client, body.dump(), headers, level, &figures);
        }
      });
    }
    for (auto& t : threads) t.join();
    const double window_s = std::chrono::duration<double>(level.window_end - level.window_start).count();
    Json j = {{"streams", streams},
              {"window_s", window_s},
              {"requests", figures.issued},
              {"completed", figures.completed},
              {"errors", figures.errors},
              {"output_tokens_per_s", static_cast<double>(figures.window_tokens) / window_s},
              {"completed_per_s", static_cast<double>(figures.window_completions) / window_s},
              {"ttft_ms", SummaryJson(figures.ttft_ms)},
              {"itl_ms", SummaryJson(figures.itl_ms)},
              {"e2e_ms", SummaryJson(figures.e2e_ms)}};
    if (!figures.error_example.empty()) j["error_example"] = figures.error_example;
    const auto t = Summarize(figures.ttft_ms).value_or(Summary{});
    const auto i = Summarize(figures.itl_ms).value_or(Summary{});
    std::printf("%7d %9lld %9lld %11.1f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f\n", streams,
                static_cast<long long>(figures.issued), static_cast<long long>(figures.errors),
                static_cast<double>(figures.window_tokens) / window_s, t.p50, t.p90, t.p99, i.p50, i.p90, i.p99);
    if (!figures.error_example.empty()) std::printf("  first error: %s\n", figures.error_example.c_str());
    std::fflush(stdout);
    report["levels"].push_back(std::move(j));
  }
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    std::ofstream(path) << report.dump(2) << "\n";
  }
  return 0;
}
