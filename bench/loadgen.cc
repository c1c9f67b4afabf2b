// Load generator over the real gRPC API (loopback). For each concurrency level it runs
// that many closed-loop streaming clients for a while and reports aggregate decode
// tokens/s, time-to-first-token and inter-token latency percentiles. With
// --long_prompt_tokens it also keeps a client sending long prompts, to show what
// chunked prefill does to running decodes.
//   sluice-loadgen --server 127.0.0.1:50051 --streams 1,4,16,64 --seconds 20
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "sluice/v1/generation.grpc.pb.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "sluiced address");
ABSL_FLAG(std::string, streams, "1,4,16,64", "Concurrency levels");
ABSL_FLAG(double, seconds, 20, "Measured seconds per level");
ABSL_FLAG(int32_t, prompt_tokens, 64, "Prompt length of the decode clients");
ABSL_FLAG(int32_t, max_tokens, 64, "Tokens per request");
ABSL_FLAG(int32_t, long_prompt_tokens, 0, "If > 0, one extra client keeps sending prompts this long");
ABSL_FLAG(int32_t, vocab, 1000, "Token ids are drawn from [0, vocab)");
ABSL_FLAG(double, warmup_seconds, 0,
          "Seconds of load before the measuring window at each level: requests started in "
          "them are not sampled and their tokens are not counted, so the figures describe "
          "steady state rather than the start-up burst of prefills");

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = sluice::v1;

struct Samples {
  std::mutex mu;
  std::vector<double> ttft_ms;
  std::vector<double> itl_ms;
  int64_t tokens = 0;
  int64_t errors = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return std::nan("");  // printed as nan: no sample in the window
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * v.size()));
  return v[i];
}

v1::GenerateRequest MakeRequest(std::mt19937& rng, int32_t prompt_tokens, int32_t max_tokens) {
  v1::GenerateRequest req;
  for (int32_t i = 0; i < prompt_tokens; ++i) {
    req.mutable_tokens()->add_ids(static_cast<int32_t>(rng() % absl::GetFlag(FLAGS_vocab)));
  }
  req.mutable_stopping()->set_max_tokens(max_tokens);
  req.mutable_stopping()->set_ignore_eos(true);
  return req;
}

// One streaming request. Inside the measuring window it records the time to the first
// token, the gaps between token-bearing messages (per token), and counts the tokens.
void RunOne(v1::Generation::Stub* stub, const v1::GenerateRequest& req, Samples* s,
            Clock::time_point window_start, Clock::time_point window_end, bool record) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  const auto start = Clock::now();
  auto reader = stub->GenerateStream(&ctx, req);
  v1::GenerateStreamResponse msg;
  auto last = start;
  bool first = true;
  std::vector<double> ttft, itl;
  int64_t tokens = 0;
  while (reader->Read(&msg)) {
    const auto now = Clock::now();
    const int n = msg.token_ids_size();
    if (n == 0) continue;
    const bool in_window = now >= window_start && now <= window_end;
    const double ms = std::chrono::duration<double, std::milli>(now - last).count();
    if (first) {
      if (in_window) ttft.push_back(ms);
      first = false;
    } else if (in_window) {
      for (int i = 0; i < n; ++i) itl.push_back(ms / n);
    }
    last = now;
    if (in_window) tokens += n;
    if (now > window_end) {  // nothing more to measure: stop rather than wait it out
      ctx.TryCancel();
      break;
    }
  }
  const grpc::Status status = reader->Finish();
  const bool ok = status.ok() || (status.error_code() == grpc::StatusCode::CANCELLED && Clock::now() > window_end);
  std::lock_guard<std::mutex> lock(s->mu);
  if (!ok) ++s->errors;
  s->tokens += tokens;
  if (record) {
    s->ttft_ms.insert(s->ttft_ms.end(), ttft.begin(), ttft.end());
    s->itl_ms.insert(s->itl_ms.end(), itl.begin(), itl.end());
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  std::vector<int> levels;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_streams), ',', absl::SkipEmpty())) {
    int n;
    if (absl::SimpleAtoi(part, &n) && n > 0) levels.push_back(n);
  }
  const int32_t long_prompt = absl::GetFlag(FLAGS_long_prompt_tokens);
  std::printf("%8s %12s %10s %10s %10s %10s %10s %8s\n", "streams", "decode tok/s", "ttft p50", "ttft p99",
              "ttft max", "itl p50", "itl p99", "errors");
  for (int level : levels) {
    Samples samples;
    const auto start = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(absl::GetFlag(FLAGS_warmup_seconds)));
    const auto window_end = start + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(absl::GetFlag(FLAGS_seconds)));
    std::vector<std::thread> clients;
    for (int c = 0; c < level; ++c) {
      clients.emplace_back([&, c] {
        std::mt19937 rng(1000 * level + c);
        while (Clock::now() < window_end) {
          RunOne(stub.get(), MakeRequest(rng, absl::GetFlag(FLAGS_prompt_tokens), absl::GetFlag(FLAGS_max_tokens)),
                 &samples, start, window_end, /*record=*/true);
        }
      });
    }
    Samples long_samples;
    if (long_prompt > 0) {
      clients.emplace_back([&] {
        std::mt19937 rng(7);
        while (Clock::now() < window_end) {
          RunOne(stub.get(), MakeRequest(rng, long_prompt, 1), &long_samples, start, window_end,
                 /*record=*/false);
        }
      });
    }
    for (auto& t : clients) t.join();
    const double elapsed = std::chrono::duration<double>(std::min(Clock::now(), window_end) - start).count();
    std::printf("%8d %12.1f %9.1fms %9.1fms %9.1fms %9.1fms %9.1fms %8lld\n", level, samples.tokens / elapsed,
                Percentile(samples.ttft_ms, 50), Percentile(samples.ttft_ms, 99), Percentile(samples.ttft_ms, 100),
                Percentile(samples.itl_ms, 50), Percentile(samples.itl_ms, 99),
                static_cast<long long>(samples.errors + long_samples.errors));
    std::fflush(stdout);
  }
  return 0;
}
