// sluice-loadgen: load generator for sluiced over the public gRPC API (GenerateStream).
// `sluice-loadgen --help` is its manual (kUsage below). One process, gRPC's callback API:
// a dispatcher thread starts requests, gRPC's threads read the streams, so the generator
// takes little CPU from the daemon it measures.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "clients/loadgen/summary.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "sluice/v1/generation.grpc.pb.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "sluiced address");
ABSL_FLAG(std::string, api_key, "", "API key sent as 'authorization: Bearer KEY' (default: $SLUICE_API_KEY)");
ABSL_FLAG(bool, tls, false, "Connect over TLS, verifying the server against the system's CA certificates");
ABSL_FLAG(std::string, tls_ca, "", "Connect over TLS, verifying the server against this PEM CA bundle");
ABSL_FLAG(std::string, mode, "closed", "closed (--streams concurrent clients) or poisson (--rates open-loop arrivals)");
ABSL_FLAG(std::string, streams, "1,4,16,64", "Closed mode: concurrency levels, comma-separated");
ABSL_FLAG(std::string, rates, "0.5,1,2,4", "Poisson mode: arrival rates in requests/s, comma-separated");
ABSL_FLAG(double, seconds, 20, "Measured seconds per level");
ABSL_FLAG(double, warmup_seconds, 0,
          "Seconds of load before each measuring window; requests started in them are not measured");
ABSL_FLAG(double, drain_seconds, 0,
          "After the window, how long requests started in it may still finish before they are cancelled");
ABSL_FLAG(std::string, prompt_tokens, "64", "Prompt length distribution: N, uniform:A:B, normal:MEAN:SD, lognormal:MU:SIGMA");
ABSL_FLAG(std::string, max_tokens, "64", "Output length distribution (max_tokens, EOS ignored), same forms");
ABSL_FLAG(std::string, budget_mix, "", "Compute budgets by weight, e.g. 0.7:dense,0.3:skip_ratio=0.5 (empty: dense)");
ABSL_FLAG(std::string, goodput, "", "Latency targets in seconds, e.g. ttft=0.5,itl=0.1,e2e=10");
ABSL_FLAG(int32_t, long_prompt_tokens, 0, "If > 0, one extra unmeasured client keeps sending prompts this long");
ABSL_FLAG(int32_t, vocab, 0, "Token ids are drawn from [0, vocab); 0: the model's vocab_size");
ABSL_FLAG(uint64_t, seed, 1, "Seed of arrivals, lengths, budgets and prompt tokens");
ABSL_FLAG(int64_t, max_requests, 0, "Per level: start at most this many in the window, which ends when they have (0: no cap)");
ABSL_FLAG(int32_t, max_in_flight, 4096, "Poisson mode: arrivals while this many are in flight are dropped, counted");
ABSL_FLAG(double, timeout_s, 600, "Deadline of each request");
ABSL_FLAG(std::string, json, "", "Write all levels and figures to this JSON file");
ABSL_FLAG(bool, progress, false, "Progress bar on stderr even when stderr is not a terminal");
ABSL_FLAG(bool, quiet, false, "No progress bar, no warnings");

namespace {

constexpr char kUsage[] = R"(load generator for sluiced (streaming requests over gRPC).

  sluice-loadgen --server HOST:PORT [--mode closed --streams 1,4,16,64 | --mode poisson --rates 0.5,1,2,4]
                 [--seconds 20 --warmup_seconds 5 --drain_seconds 0] [--prompt_tokens D --max_tokens D]
                 [--budget_mix MIX] [--goodput TARGETS] [--json out.json] [--api_key KEY --tls_ca ca.pem]

Modes (one level after another, each with its own warm-up, window and drain):
  closed   N clients, each sending its next request when the previous one ends.
  poisson  open loop: arrivals at RATE requests/s with exponential gaps, independent of
           completions; at most --max_in_flight in flight (arrivals beyond are dropped and
           counted).
  Each level is bounded in time (the window) and, with --max_requests N, in count: after N
  requests started in the window nothing more starts, and the window ends when they have.
  Requests still running at the window end are cancelled (with --drain_seconds, requests
  started in the window get that long to finish first); they count as `unfinished`.

Distributions (--prompt_tokens, --max_tokens), rounded and clipped to >= 1:
  64  uniform:32:256 (integers, inclusive)  normal:128:32  lognormal:MU:SIGMA (of ln tokens)

Budget mix: comma-separated WEIGHT:SPEC; SPEC is `dense` or controls joined by `+`:
  skip_ratio=R  experts_per_token=K  attention_gate_floor=F  skip_layers=A-B (repeatable)
  e.g. 0.7:dense,0.3:skip_ratio=0.5   0.5:dense,0.5:skip_layers=1-2+experts_per_token=1
  Weights are normalized. Each request draws one; figures are reported per budget too.

Goodput: ttft=S,itl=S,e2e=S (seconds, any subset). A request started in the window is good
  when it completed and meets every target (itl: its mean gap between tokens).

What is measured (the window is [warm-up end, warm-up end + seconds]):
  requests, errors by status code, ttft, e2e, goodput: requests started in the window.
  itl and output tokens/s: every token that arrives in the window, whatever request.
  completed/s: every request that completes OK in the window.
  Percentiles are nearest-rank (p99 of 50 samples is the largest). A figure with no
  sample is left out (JSON: only "count": 0; table: -), never NaN.

Output: a table on stdout (ttft and itl in ms, e2e in s), a progress bar on stderr when it
  is a terminal (--progress forces it, --quiet turns it off), and --json PATH with every
  figure of every level (clients/loadgen/plot_loadgen.py draws it).
Exit codes: 0 ran (request errors are figures, not failures), 1 usage, 2 no model info
  (give --vocab to run anyway), 3 requests did not end after cancellation.
)";

using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;
namespace v1 = sluice::v1;

constexpr int32_t kMaxLength = 1 << 24;

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                 "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c <= 16 ? kNames[c] : "UNKNOWN_CODE";
}

Clock::duration Seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}
double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// ---------------------------------------------------------------------------------------
// Flag values.

struct Dist {
  enum class Kind { kConst, kUniform, kNormal, kLognormal };
  Kind kind = Kind::kConst;
  double a = 64, b = 0;
  std::string text;

  int32_t Sample(std::mt19937_64& rng) const {
    double v = a;
    switch (kind) {
      case Kind::kConst: break;
      case Kind::kUniform:
        v = static_cast<double>(std::uniform_int_distribution<int64_t>(std::llround(a), std::llround(b))(rng));
        break;
      case Kind::kNormal: v = std::normal_distribution<double>(a, b)(rng); break;
      case Kind::kLognormal: v = std::lognormal_distribution<double>(a, b)(rng); break;
    }
    if (!std::isfinite(v)) v = 1;
    return static_cast<int32_t>(std::clamp(std::round(v), 1.0, static_cast<double>(kMaxLength)));
  }
};

// An empty string on success, else what is wrong.
std::string ParseDist(const std::string& text, Dist* d) {
  d->text = text;
  const std::vector<std::string> parts = absl::StrSplit(text, ':');
  auto number = [](const std::string& s, double* out) { return absl::SimpleAtod(s, out) && std::isfinite(*out); };
  if (parts.size() == 1) {
    int32_t n;
    if (!absl::SimpleAtoi(parts[0], &n) || n < 1 || n > kMaxLength) return "a constant length must be an integer >= 1";
    d->kind = Dist::Kind::kConst;
    d->a = n;
    return "";
  }
  if (parts.size() != 3 || !number(parts[1], &d->a) || !number(parts[2], &d->b)) {
    return "want N, uniform:A:B, normal:MEAN:SD or lognormal:MU:SIGMA";
  }
  if (parts[0] == "uniform") {
    d->kind = Dist::Kind::kUniform;
    if (d->a < 1 || d->b < d->a || d->b > kMaxLength || d->a != std::round(d->a) || d->b != std::round(d->b)) {
      return "uniform:A:B wants integers 1 <= A <= B";
    }
  } else if (parts[0] == "normal") {
    d->kind = Dist::Kind::kNormal;
    if (d->b < 0) return "normal:MEAN:SD wants SD >= 0";
  } else if (parts[0] == "lognormal") {
    d->kind = Dist::Kind::kLognormal;
    if (d->b < 0 || d->a > 20) return "lognormal:MU:SIGMA wants SIGMA >= 0 and MU <= 20";
  } else {
    return "unknown distribution '" + parts[0] + "' (uniform, normal, lognormal)";
  }
  return "";
}

struct BudgetClass {
  double weight = 1;
  std::string name = "dense";
  v1::ComputeBudget budget;
  std::vector<std::string> controls;  // ComputeBudget field names it sets
};

std::string ParseControl(absl::string_view item, BudgetClass* c) {
  const std::vector<std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
  if (kv.size() != 2) return absl::StrCat("'", item, "' is not KEY=VALUE");
  const std::string& key = kv[0];
  const std::string& value = kv[1];
  float f;
  uint32_t n;
  if (key == "skip_ratio" && absl::SimpleAtof(value, &f) && std::isfinite(f)) {
    c->budget.set_skip_ratio(f);
  } else if (key == "experts_per_token" && absl::SimpleAtoi(value, &n)) {
    c->budget.set_experts_per_token(n);
  } else if (key == "attention_gate_floor" && absl::SimpleAtof(value, &f) && std::isfinite(f)) {
    c->budget.set_attention_gate_floor(f);
  } else if (key == "skip_layers") {
    const std::vector<std::string> ends = absl::StrSplit(value, absl::MaxSplits('-', 1));
    uint32_t first, last;
    if (!absl::SimpleAtoi(ends[0], &first) || !absl::SimpleAtoi(ends.size() > 1 ? ends[1] : ends[0], &last)) {
      return absl::StrCat("skip_layers wants A-B or A, got '", value, "'");
    }
    auto* span = c->budget.add_skip_layers();
    span->set_first(first);
    span->set_last(last);
  } else {
    return absl::StrCat("cannot read '", item,
                        "' (skip_ratio=R, experts_per_token=K, attention_gate_floor=F, skip_layers=A-B)");
  }
  if (std::find(c->controls.begin(), c->controls.end(), key) == c->controls.end()) c->controls.push_back(key);
  return "";
}

std::string ParseBudgetMix(const std::string& text, std::vector<BudgetClass>* out) {
  out->clear();
  for (absl::string_view element : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::vector<std::string> ws = absl::StrSplit(element, absl::MaxSplits(':', 1));
    BudgetClass c;
    if (ws.size() != 2 || !absl::SimpleAtod(ws[0], &c.weight) || !std::isfinite(c.weight) || c.weight <= 0) {
      return absl::StrCat("'", element, "' is not WEIGHT:SPEC with a weight > 0");
    }
    c.name = ws[1];
    if (c.name != "dense") {
      for (absl::string_view item : absl::StrSplit(c.name, absl::ByAnyChar("+;"), absl::SkipEmpty())) {
        if (std::string err = ParseControl(item, &c); !err.empty()) return err;
      }
      if (c.controls.empty()) return absl::StrCat("'", element, "' names no control");
    }
    for (const BudgetClass& other : *out) {
      if (other.name == c.name) return absl::StrCat("'", c.name, "' appears twice");
    }
    out->push_back(std::move(c));
  }
  if (out->empty()) out->push_back(BudgetClass());
  double sum = 0;
  for (const BudgetClass& c : *out) sum += c.weight;
  for (BudgetClass& c : *out) c.weight = std::round(c.weight / sum * 1e9) / 1e9;
  return "";
}

struct Targets {
  std::optional<double> ttft_s, itl_s, e2e_s;
  bool any() const { return ttft_s || itl_s || e2e_s; }
};

std::string ParseTargets(const std::string& text, Targets* t) {
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::vector<std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    double v;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &v) || !std::isfinite(v) || v <= 0) {
      return absl::StrCat("'", item, "' is not KEY=SECONDS with seconds > 0");
    }
    if (kv[0] == "ttft") {
      t->ttft_s = v;
    } else if (kv[0] == "itl") {
      t->itl_s = v;
    } else if (kv[0] == "e2e") {
      t->e2e_s = v;
    } else {
      return absl::StrCat("unknown target '", kv[0], "' (ttft, itl, e2e)");
    }
  }
  return "";
}

struct Config {
  bool poisson = false;
  std::vector<double> loads;  // streams or rates
  double seconds = 20, warmup = 0, drain = 0;
  Dist prompt, output;
  std::vector<BudgetClass> mix;
  Targets targets;
  int32_t long_prompt = 0;
  int32_t vocab = 0;
  uint64_t seed = 1;
  int64_t max_requests = 0;
  int32_t max_in_flight = 4096;
  double timeout_s = 600;
  std::string api_key;
};

// ---------------------------------------------------------------------------------------
// Figures.

using sluice::loadgen::Summarize;
using sluice::loadgen::Summary;

// Puts `value` only when it is finite: no NaN or infinity ever reaches the JSON.
void Put(Json& j, const char* key, double value) {
  if (std::isfinite(value)) j[key] = value;
}

Json SummaryJson(const std::vector<double>& v) {
  Json j;
  const auto s = Summarize(v);
  j["count"] = s ? s->count : 0;
  if (s) {
    Put(j, "mean", s->mean);
    Put(j, "p50", s->p50);
    Put(j, "p90", s->p90);
    Put(j, "p99", s->p99);
    Put(j, "max", s->max);
  }
  return j;
}

// Request-level figures of one population (requests started in the window, in warm-up, or
// by the long-prompt client).
struct Outcome {
  int64_t issued = 0, completed = 0, errors = 0, unfinished = 0, good = 0;
  int64_t prompt_tokens = 0, completed_output_tokens = 0;
  std::map<std::string, int64_t> errors_by_code;
  std::map<std::string, std::string> error_examples;
  std::vector<double> ttft_ms, e2e_ms;

  void Merge(const Outcome& o) {
    issued += o.issued;
    completed += o.completed;
    errors += o.errors;
    unfinished += o.unfinished;
    good += o.good;
    prompt_tokens += o.prompt_tokens;
    completed_output_tokens += o.completed_output_tokens;
    for (const auto& [k, n] : o.errors_by_code) errors_by_code[k] += n;
    for (const auto& [k, m] : o.error_examples) error_examples.emplace(k, m);
    ttft_ms.insert(ttft_ms.end(), o.ttft_ms.begin(), o.ttft_ms.end());
    e2e_ms.insert(e2e_ms.end(), o.e2e_ms.begin(), o.e2e_ms.end());
  }
};

// Event-time figures: tokens and gaps that arrive in the window, completions in it.
struct Flow {
  int64_t window_tokens = 0, window_completions = 0;
  std::vector<double> itl_ms;

  void Merge(const Flow& f) {
    window_tokens += f.window_tokens;
    window_completions += f.window_completions;
    itl_ms.insert(itl_ms.end(), f.itl_ms.begin(), f.itl_ms.end());
  }
};

struct ClassStats {
  Outcome measured;
  Flow flow;
};

// ---------------------------------------------------------------------------------------
// One level and its requests.

struct Level;

class Call final : public grpc::ClientReadReactor<v1::GenerateStreamResponse> {
 public:
  Call(Level* level, int cls, bool long_prompt, v1::GenerateRequest req)
      : level_(level), cls_(cls), long_prompt_(long_prompt), req_(std::move(req)) {}

  void Go(v1::Generation::Stub* stub, const Config& cfg);
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  // Set and read under Level::mu.
  bool measured = false;
  bool cancelled_by_us = false;
  grpc::ClientContext ctx;

 private:
  friend struct Level;
  Level* level_;
  const int cls_;
  const bool long_prompt_;
  v1::GenerateRequest req_;
  v1::GenerateStreamResponse msg_;
  Clock::time_point start_, first_, last_;
  bool got_first_ = false;
  int64_t tokens_ = 0, window_tokens_ = 0;
  std::vector<double> itl_ms_;  // gaps that ended in the window
};

struct Level {
  Level(const Config& cfg, double load) : cfg(cfg), load(load), classes(cfg.mix.size()) {}

  const Config& cfg;
  const double load;
  Clock::time_point t0, window_start;
  std::atomic<Clock::rep> window_end_rep{0};  // may move earlier (--max_requests)

  std::mutex mu;
  std::condition_variable cv;
  std::vector<ClassStats> classes;
  Outcome warmup, long_prompt;
  std::set<Call*> in_flight;
  int64_t in_flight_measured = 0, max_in_flight_seen = 0, dropped = 0;
  int free_slots = 0, free_long = 0;
  bool stopping = false;
  double max_lag_ms = 0;
  Clock::time_point ended;  // when the dispatcher stopped

  Clock::time_point window_end() const { return Clock::time_point(Clock::duration(window_end_rep.load())); }
  void set_window_end(Clock::time_point t) { window_end_rep.store(t.time_since_epoch().count()); }
  bool InWindow(Clock::time_point t) const { return t >= window_start && t <= window_end(); }

  void Cancel(Call* c) {  // under mu
    c->cancelled_by_us = true;
    c->ctx.TryCancel();
  }

  void Finish(Call* c, const grpc::Status& status) {
    const auto now = Clock::now();
    std::lock_guard<std::mutex> lock(mu);
    in_flight.erase(c);
    if (c->measured) --in_flight_measured;
    Outcome* o = &long_prompt;
    if (!c->long_prompt_) {
      ClassStats& cs = classes[c->cls_];
      cs.flow.window_tokens += c->window_tokens_;
      cs.flow.itl_ms.insert(cs.flow.itl_ms.end(), c->itl_ms_.begin(), c->itl_ms_.end());
      if (status.ok() && InWindow(now)) ++cs.flow.window_completions;
      o = c->measured ? &cs.measured : &warmup;
    }
    const double ttft_ms = c->got_first_ ? Ms(c->first_ - c->start_) : 0;
    const double e2e_ms = Ms(now - c->start_);
    if (c->measured && c->got_first_) o->ttft_ms.push_back(ttft_ms);
    if (status.ok()) {
      ++o->completed;
      o->completed_output_tokens += c->tokens_;
      if (c->measured) {
        o->e2e_ms.push_back(e2e_ms);
        const Targets& t = cfg.targets;
        const double mean_itl_ms = c->tokens_ > 1 ? Ms(c->last_ - c->first_) / static_cast<double>(c->tokens_ - 1) : 0;
        const bool good = t.any() && (!t.ttft_s || (c->got_first_ && ttft_ms <= *t.ttft_s * 1e3)) &&
                          (!t.itl_s || mean_itl_ms <= *t.itl_s * 1e3) && (!t.e2e_s || e2e_ms <= *t.e2e_s * 1e3);
        if (good) ++o->good;
      }
    } else if (status.error_code() == grpc::StatusCode::CANCELLED && c->cancelled_by_us) {
      ++o->unfinished;
    } else {
      ++o->errors;
      const char* name = CodeName(status.error_code());
      ++o->errors_by_code[name];
      o->error_examples.emplace(name, status.error_message().substr(0, 300));
    }
    if (!stopping && now < window_end()) {
      if (c->long_prompt_) {
        ++free_long;
      } else if (!cfg.poisson) {
        ++free_slots;
      }
    }
    cv.notify_all();
  }
};

void Call::Go(v1::Generation::Stub* stub, const Config& cfg) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(cfg.timeout_s * 1000)));
  if (!cfg.api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + cfg.api_key);
  start_ = last_ = Clock::now();
  stub->async()->GenerateStream(&ctx, &req_, this);
  StartRead(&msg_);
  StartCall();
}

void Call::OnReadDone(bool ok) {
  if (!ok) return;  // the stream ended; OnDone follows
  const auto now = Clock::now();
  const int n = msg_.token_ids_size();
  if (n > 0) {
    const bool in_window = level_->InWindow(now);
    if (!got_first_) {
      got_first_ = true;
      first_ = now;
    } else if (in_window) {
      const double gap = Ms(now - last_) / n;  // a message with n tokens: n gaps of equal share
      for (int i = 0; i < n; ++i) itl_ms_.push_back(gap);
    }
    if (in_window) window_tokens_ += n;
    tokens_ += n;
    last_ = now;
  }
  StartRead(&msg_);
}

void Call::OnDone(const grpc::Status& status) {
  level_->Finish(this, status);
  delete this;
}

// ---------------------------------------------------------------------------------------
// Progress bar (stderr).

class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled), tty_(isatty(STDERR_FILENO) == 1) {}

  bool enabled() const { return enabled_; }

  void Start(Level* level, std::string label) {
    if (!enabled_) return;
    std::lock_guard<std::mutex> lock(mu_);
    level_ = level;
    label_ = std::move(label);
    done_ = false;
    thread_ = std::thread([this] { Loop(); });
  }

  // Stops the bar and wipes its line, so that the table row can be printed.
  void Stop() {
    if (!enabled_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (tty_) std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_) {
      Draw();
      cv_.wait_for(lock, tty_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(1000),
                   [&] { return done_; });
    }
  }

  void Draw() {
    Level& l = *level_;
    const Config& cfg = l.cfg;
    const auto now = Clock::now();
    int64_t issued = 0, ok = 0, errors = 0, in_flight = 0;
    {
      std::lock_guard<std::mutex> lock(l.mu);
      for (const ClassStats& c : l.classes) {
        issued += c.measured.issued;
        ok += c.measured.completed;
        errors += c.measured.errors;
      }
      in_flight = static_cast<int64_t>(l.in_flight.size());
    }
    const double total = cfg.warmup + cfg.seconds + cfg.drain;
    const double t = std::chrono::duration<double>(now - l.t0).count();
    const char* phase = now < l.window_start ? "warm-up" : now <= l.window_end() ? "measure" : "drain";
    constexpr int kWidth = 30;
    const int filled = total > 0 ? std::clamp(static_cast<int>(kWidth * t / total), 0, kWidth) : kWidth;
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
    std::fprintf(stderr, "%s%s [%s] %-7s %5.1f/%.1fs  issued %lld ok %lld err %lld in flight %lld%s",
                 tty_ ? "\r\033[K" : "", label_.c_str(), bar.c_str(), phase, std::min(t, total), total,
                 static_cast<long long>(issued), static_cast<long long>(ok), static_cast<long long>(errors),
                 static_cast<long long>(in_flight), tty_ ? "" : "\n");
    std::fflush(stderr);
  }

  const bool enabled_, tty_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
  Level* level_ = nullptr;
  std::string label_;
  bool done_ = false;
};

// ---------------------------------------------------------------------------------------
// Running the levels.

class Runner {
 public:
  Runner(const Config& cfg, v1::Generation::Stub* stub, Progress* progress)
      : cfg_(cfg), stub_(stub), progress_(progress) {}

  // Runs one level; nullptr when its requests did not end (then it is leaked on purpose:
  // gRPC still holds its calls).
  std::unique_ptr<Level> Run(size_t index, const std::string& label) {
    auto level = std::make_unique<Level>(cfg_, cfg_.loads[index]);
    Level& l = *level;
    // One stream per purpose (used by the dispatcher only), so that changing one
    // distribution leaves the others' draws, and the arrival times, as they were.
    std::seed_seq seq{static_cast<uint32_t>(cfg_.seed), static_cast<uint32_t>(cfg_.seed >> 32),
                      static_cast<uint32_t>(index)};
    std::vector<uint64_t> seeds(5);
    seq.generate(seeds.begin(), seeds.end());
    std::mt19937_64 arrivals(seeds[0]), class_rng(seeds[1]), prompt_rng(seeds[2]), output_rng(seeds[3]),
        token_rng(seeds[4]);
    std::discrete_distribution<int> pick_class = [&] {
      std::vector<double> w;
      for (const BudgetClass& c : cfg_.mix) w.push_back(c.weight);
      return std::discrete_distribution<int>(w.begin(), w.end());
    }();
    std::exponential_distribution<double> gap(cfg_.poisson ? l.load : 1.0);

    l.t0 = Clock::now();
    l.window_start = l.t0 + Seconds(cfg_.warmup);
    l.set_window_end(l.window_start + Seconds(cfg_.seconds));
    Clock::time_point next_arrival = l.t0 + Seconds(cfg_.poisson ? gap(arrivals) : 0);
    l.free_slots = cfg_.poisson ? 0 : static_cast<int>(l.load);
    l.free_long = cfg_.long_prompt > 0 ? 1 : 0;
    progress_->Start(&l, label);

    // Starts one request due at `due` (a Poisson arrival's scheduled time, else now): it is
    // measured when `due` is in the window. False when the --max_requests cap is reached.
    auto launch = [&](bool long_prompt, Clock::time_point due) {
      const int cls = long_prompt ? 0 : pick_class(class_rng);
      const int32_t prompt = long_prompt ? cfg_.long_prompt : cfg_.prompt.Sample(prompt_rng);
      const int32_t output = long_prompt ? 1 : cfg_.output.Sample(output_rng);
      v1::GenerateRequest req;
      auto* ids = req.mutable_tokens()->mutable_ids();
      ids->Reserve(prompt);
      for (int32_t i = 0; i < prompt; ++i) ids->Add(static_cast<int32_t>(token_rng() % static_cast<uint64_t>(cfg_.vocab)));
      req.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(output));
      req.mutable_stopping()->set_ignore_eos(true);
      if (!long_prompt && cfg_.mix[cls].name != "dense") *req.mutable_budget() = cfg_.mix[cls].budget;
      auto* call = new Call(&l, cls, long_prompt, std::move(req));
      {
        std::lock_guard<std::mutex> lock(l.mu);
        call->measured = !long_prompt && due >= l.window_start && due < l.window_end();
        Outcome* o = long_prompt ? &l.long_prompt : call->measured ? &l.classes[cls].measured : &l.warmup;
        if (call->measured && cfg_.max_requests > 0) {
          int64_t issued = 0;
          for (const ClassStats& c : l.classes) issued += c.measured.issued;
          if (issued >= cfg_.max_requests) {
            delete call;
            return false;
          }
        }
        ++o->issued;
        o->prompt_tokens += prompt;
        l.in_flight.insert(call);
        if (call->measured) ++l.in_flight_measured;
        l.max_in_flight_seen = std::max<int64_t>(l.max_in_flight_seen, static_cast<int64_t>(l.in_flight.size()));
      }
      call->Go(stub_, cfg_);
      return true;
    };

    while (true) {
      std::unique_lock<std::mutex> lock(l.mu);
      const Clock::time_point wake = cfg_.poisson ? std::min(l.window_end(), next_arrival) : l.window_end();
      l.cv.wait_until(lock, wake, [&] { return l.free_slots > 0 || l.free_long > 0 || Clock::now() >= l.window_end(); });
      const auto now = Clock::now();
      // An arrival due before the window end is started even when the dispatcher is late:
      // the schedule, not the dispatcher's lag, decides what is offered.
      const bool arrival = cfg_.poisson && now >= next_arrival && next_arrival < l.window_end();
      if (now >= l.window_end() && !arrival) break;
      const bool open = now < l.window_end();
      const int n = open ? std::exchange(l.free_slots, 0) : 0;
      const int n_long = open ? std::exchange(l.free_long, 0) : 0;
      const bool full = static_cast<int64_t>(l.in_flight.size()) >= cfg_.max_in_flight;
      if (arrival) {
        l.max_lag_ms = std::max(l.max_lag_ms, Ms(now - next_arrival));
        if (full) ++l.dropped;
      }
      lock.unlock();
      bool capped = false;
      for (int i = 0; i < n && !capped; ++i) capped = !launch(false, now);
      for (int i = 0; i < n_long; ++i) launch(true, now);
      if (arrival) {
        if (!full && !capped) capped = !launch(false, next_arrival);
        next_arrival += Seconds(gap(arrivals));
      }
      if (capped) {
        // --max_requests reached: start nothing more; the window ends when the requests
        // started in it have ended (or at its scheduled end).
        lock.lock();
        l.cv.wait_until(lock, l.window_end(), [&] { return l.in_flight_measured == 0; });
        l.set_window_end(std::min(l.window_end(), Clock::now()));
        break;
      }
    }

    // The window is over: no more requests; cancel what runs, after the drain for
    // requests started in the window.
    std::unique_lock<std::mutex> lock(l.mu);
    l.stopping = true;
    l.ended = Clock::now();
    for (Call* c : l.in_flight) {
      if (!c->measured || cfg_.drain <= 0) l.Cancel(c);
    }
    if (cfg_.drain > 0) {
      l.cv.wait_until(lock, l.ended + Seconds(cfg_.drain), [&] { return l.in_flight_measured == 0; });
      for (Call* c : l.in_flight) l.Cancel(c);
    }
    const bool ended = l.cv.wait_for(lock, std::chrono::seconds(30), [&] { return l.in_flight.empty(); });
    lock.unlock();
    progress_->Stop();
    if (!ended) {
      std::fprintf(stderr, "sluice-loadgen: %zu requests did not end 30 s after cancellation\n", l.in_flight.size());
      (void)level.release();
      return nullptr;
    }
    return level;
  }

 private:
  const Config& cfg_;
  v1::Generation::Stub* stub_;
  Progress* progress_;
};

// ---------------------------------------------------------------------------------------
// Reporting.

Json OutcomeJson(const Outcome& o) {
  Json j;
  j["issued"] = o.issued;
  j["completed"] = o.completed;
  j["errors"] = o.errors;
  j["unfinished"] = o.unfinished;
  return j;
}

Json ErrorsJson(const Outcome& o) {
  Json j = Json::object();
  for (const auto& [k, n] : o.errors_by_code) j[k] = n;
  return j;
}

struct LevelFigures {
  Outcome measured;
  Flow flow;
  double window_s = 0;
};

Json FiguresJson(const Config& cfg, const Outcome& o, const Flow& f, double window_s) {
  Json j;
  j["requests"] = OutcomeJson(o);
  j["errors_by_code"] = ErrorsJson(o);
  Json examples = Json::object();
  for (const auto& [k, m] : o.error_examples) examples[k] = m;
  j["error_examples"] = examples;
  Json tp;
  if (window_s > 0) {
    Put(tp, "output_tokens_per_s", static_cast<double>(f.window_tokens) / window_s);
    Put(tp, "completed_per_s", static_cast<double>(f.window_completions) / window_s);
    Put(tp, "started_per_s", static_cast<double>(o.issued) / window_s);
    Put(tp, "prompt_tokens_per_s", static_cast<double>(o.prompt_tokens) / window_s);
  }
  j["throughput"] = tp.is_null() ? Json::object() : tp;
  j["output_tokens"] = {{"in_window", f.window_tokens}, {"of_completed", o.completed_output_tokens}};
  j["prompt_tokens"] = o.prompt_tokens;
  if (cfg.targets.any()) {
    Json g;
    g["good"] = o.good;
    if (o.issued > 0) Put(g, "fraction", static_cast<double>(o.good) / static_cast<double>(o.issued));
    if (window_s > 0) Put(g, "requests_per_s", static_cast<double>(o.good) / window_s);
    j["goodput"] = g;
  }
  j["ttft_ms"] = SummaryJson(o.ttft_ms);
  j["itl_ms"] = SummaryJson(f.itl_ms);
  j["e2e_ms"] = SummaryJson(o.e2e_ms);
  return j;
}

Json LevelJson(const Config& cfg, const Level& l, const LevelFigures& fig) {
  Json j;
  if (cfg.poisson) {
    j["rate_per_s"] = l.load;
  } else {
    j["streams"] = static_cast<int64_t>(l.load);
  }
  j["offered_load"] = l.load;
  j["window_s"] = fig.window_s;
  Json figures = FiguresJson(cfg, fig.measured, fig.flow, fig.window_s);
  for (auto& [k, v] : figures.items()) j[k] = v;
  j["in_flight_max"] = l.max_in_flight_seen;
  if (cfg.poisson) {
    j["dropped_arrivals"] = l.dropped;
    Put(j, "max_dispatch_lag_ms", l.max_lag_ms);
  }
  Json by_budget = Json::array();
  for (size_t i = 0; i < cfg.mix.size(); ++i) {
    Json b;
    b["budget"] = cfg.mix[i].name;
    b["weight"] = cfg.mix[i].weight;
    Json f = FiguresJson(cfg, l.classes[i].measured, l.classes[i].flow, fig.window_s);
    for (auto& [k, v] : f.items()) b[k] = v;
    by_budget.push_back(b);
  }
  j["by_budget"] = by_budget;
  j["warmup"] = {{"requests", OutcomeJson(l.warmup)}, {"errors_by_code", ErrorsJson(l.warmup)}};
  if (cfg.long_prompt > 0) {
    j["long_prompt"] = {{"prompt_tokens", cfg.long_prompt},
                        {"requests", OutcomeJson(l.long_prompt)},
                        {"errors_by_code", ErrorsJson(l.long_prompt)}};
  }
  return j;
}

std::string Fmt(const std::optional<double>& v) {
  if (!v || !std::isfinite(*v)) return "-";
  char buf[32];
  const double x = *v;
  std::snprintf(buf, sizeof buf, x < 1 ? "%.3f" : x < 10 ? "%.2f" : x < 1000 ? "%.1f" : "%.0f", x);
  return buf;
}

struct Pcts {
  std::optional<double> p50, p90, p99;
};
Pcts PctsOf(const std::vector<double>& v, double scale) {
  const auto s = Summarize(v);
  if (!s) return {};
  return {s->p50 * scale, s->p90 * scale, s->p99 * scale};
}

void PrintHeader(const Config& cfg) {
  std::printf("%-18s %7s %7s %6s %6s %8s %9s %8s | %-22s | %-22s | %-22s\n", "", "", "", "", "", "", "", "",
              "ttft (ms)", "itl (ms)", "e2e (s)");
  std::printf("%-18s %7s %7s %6s %6s %8s %9s %8s | %6s %7s %7s | %6s %7s %7s | %6s %7s %7s\n",
              cfg.poisson ? "rate (req/s)" : "streams", "issued", "ok", "err", "unfin", "done/s", "out tok/s", "good/s",
              "p50", "p90", "p99", "p50", "p90", "p99", "p50", "p90", "p99");
}

void PrintRow(const Config& cfg, const std::string& label, const Outcome& o, const Flow& f, double window_s,
              bool errors) {
  auto rate = [&](double n) { return window_s > 0 ? std::optional<double>(n / window_s) : std::nullopt; };
  const Pcts t = PctsOf(o.ttft_ms, 1), i = PctsOf(f.itl_ms, 1), e = PctsOf(o.e2e_ms, 1e-3);
  std::printf("%-18s %7lld %7lld %6lld %6lld %8s %9s %8s | %6s %7s %7s | %6s %7s %7s | %6s %7s %7s\n", label.c_str(),
              static_cast<long long>(o.issued), static_cast<long long>(o.completed), static_cast<long long>(o.errors),
              static_cast<long long>(o.unfinished), Fmt(rate(static_cast<double>(f.window_completions))).c_str(),
              Fmt(rate(static_cast<double>(f.window_tokens))).c_str(),
              cfg.targets.any() ? Fmt(rate(static_cast<double>(o.good))).c_str() : "-", Fmt(t.p50).c_str(),
              Fmt(t.p90).c_str(), Fmt(t.p99).c_str(), Fmt(i.p50).c_str(), Fmt(i.p90).c_str(), Fmt(i.p99).c_str(),
              Fmt(e.p50).c_str(), Fmt(e.p90).c_str(), Fmt(e.p99).c_str());
  if (errors && !o.errors_by_code.empty()) {
    std::vector<std::string> parts;
    for (const auto& [k, n] : o.errors_by_code) {
      const auto ex = o.error_examples.find(k);
      std::string msg = ex == o.error_examples.end() ? "" : ex->second;
      if (msg.size() > 100) msg = msg.substr(0, 97) + "...";
      parts.push_back(absl::StrCat(k, " ", n, msg.empty() ? "" : absl::StrCat(" (", msg, ")")));
    }
    std::printf("%-18s errors: %s\n", "", absl::StrJoin(parts, "; ").c_str());
  }
}

std::string LoadLabel(const Config& cfg, double load) {
  char buf[64];
  if (cfg.poisson) {
    std::snprintf(buf, sizeof buf, "%g", load);
  } else {
    std::snprintf(buf, sizeof buf, "%d", static_cast<int>(load));
  }
  return buf;
}

// ---------------------------------------------------------------------------------------

int UsageError(const std::string& message) {
  std::fprintf(stderr, "sluice-loadgen: %s (see sluice-loadgen --help)\n", message.c_str());
  return 1;
}

std::shared_ptr<grpc::ChannelCredentials> Credentials(std::string* error) {
  const std::string ca_path = absl::GetFlag(FLAGS_tls_ca);
  if (ca_path.empty()) {
    return absl::GetFlag(FLAGS_tls) ? grpc::SslCredentials(grpc::SslCredentialsOptions())
                                    : grpc::InsecureChannelCredentials();
  }
  std::ifstream in(ca_path);
  if (!in) {
    *error = "--tls_ca=" + ca_path + ": cannot read the file";
    return nullptr;
  }
  grpc::SslCredentialsOptions options;
  options.pem_root_certs.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return grpc::SslCredentials(options);
}

bool WriteJson(const std::string& path, const Json& j) {
  std::ofstream out(path + ".tmp");
  out << j.dump(2) << "\n";
  out.close();
  if (!out || std::rename((path + ".tmp").c_str(), path.c_str()) != 0) {
    std::fprintf(stderr, "sluice-loadgen: cannot write %s\n", path.c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  // --help: the manual above, then this tool's flags (without build paths).
  absl::FlagsUsageConfig usage;
  usage.normalize_filename = [](absl::string_view f) {
    return absl::StrContains(f, "loadgen") ? std::string("sluice-loadgen") : std::string(f);
  };
  usage.contains_help_flags = [](absl::string_view f) { return f == "sluice-loadgen"; };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);

  Config cfg;
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "closed" && mode != "poisson") return UsageError("--mode wants closed or poisson");
  cfg.poisson = mode == "poisson";
  for (absl::string_view part :
       absl::StrSplit(cfg.poisson ? absl::GetFlag(FLAGS_rates) : absl::GetFlag(FLAGS_streams), ',', absl::SkipWhitespace())) {
    double v = 0;
    int n = 0;
    if (cfg.poisson ? !(absl::SimpleAtod(part, &v) && std::isfinite(v) && v > 0)
                    : !(absl::SimpleAtoi(part, &n) && n > 0 && n <= 100000)) {
      return UsageError(absl::StrCat(cfg.poisson ? "--rates" : "--streams", ": '", part, "' is not ",
                                     cfg.poisson ? "a rate > 0" : "a count > 0"));
    }
    cfg.loads.push_back(cfg.poisson ? v : n);
  }
  if (cfg.loads.empty()) return UsageError(cfg.poisson ? "--rates is empty" : "--streams is empty");
  cfg.seconds = absl::GetFlag(FLAGS_seconds);
  cfg.warmup = absl::GetFlag(FLAGS_warmup_seconds);
  cfg.drain = absl::GetFlag(FLAGS_drain_seconds);
  if (!(cfg.seconds > 0) || !(cfg.warmup >= 0) || !(cfg.drain >= 0) || !std::isfinite(cfg.seconds + cfg.warmup + cfg.drain)) {
    return UsageError("--seconds wants > 0, --warmup_seconds and --drain_seconds >= 0");
  }
  if (std::string e = ParseDist(absl::GetFlag(FLAGS_prompt_tokens), &cfg.prompt); !e.empty()) {
    return UsageError("--prompt_tokens: " + e);
  }
  if (std::string e = ParseDist(absl::GetFlag(FLAGS_max_tokens), &cfg.output); !e.empty()) {
    return UsageError("--max_tokens: " + e);
  }
  if (std::string e = ParseBudgetMix(absl::GetFlag(FLAGS_budget_mix), &cfg.mix); !e.empty()) {
    return UsageError("--budget_mix: " + e);
  }
  if (std::string e = ParseTargets(absl::GetFlag(FLAGS_goodput), &cfg.targets); !e.empty()) {
    return UsageError("--goodput: " + e);
  }
  cfg.long_prompt = absl::GetFlag(FLAGS_long_prompt_tokens);
  cfg.vocab = absl::GetFlag(FLAGS_vocab);
  cfg.seed = absl::GetFlag(FLAGS_seed);
  cfg.max_requests = absl::GetFlag(FLAGS_max_requests);
  cfg.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  cfg.timeout_s = absl::GetFlag(FLAGS_timeout_s);
  if (cfg.vocab < 0 || cfg.long_prompt < 0 || cfg.max_requests < 0 || cfg.max_in_flight < 1 || !(cfg.timeout_s > 0)) {
    return UsageError("--vocab, --long_prompt_tokens, --max_requests want >= 0, --max_in_flight >= 1, --timeout_s > 0");
  }
  cfg.api_key = absl::GetFlag(FLAGS_api_key);
  if (const char* env = std::getenv("SLUICE_API_KEY"); cfg.api_key.empty() && env != nullptr) cfg.api_key = env;
  const bool quiet = absl::GetFlag(FLAGS_quiet);

  std::string error;
  auto creds = Credentials(&error);
  if (!creds) return UsageError(error);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server), creds, args);
  auto stub = v1::Generation::NewStub(channel);

  // What is loaded: the vocabulary (unless --vocab), and the budget controls it honours.
  Json model_json;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!cfg.api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + cfg.api_key);
    v1::ModelInfo info;
    const grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    if (s.ok()) {
      if (cfg.vocab == 0) cfg.vocab = static_cast<int32_t>(info.vocab_size());
      model_json = {{"model_type", info.model_type()},
                    {"architecture", info.architecture()},
                    {"vocab_size", info.vocab_size()},
                    {"num_layers", info.num_layers()},
                    {"max_model_len", info.max_model_len()},
                    {"device", info.device()},
                    {"supported_budget_controls", Json::array()}};
      for (const std::string& c : info.supported_budget_controls()) model_json["supported_budget_controls"].push_back(c);
      for (const BudgetClass& bc : cfg.mix) {
        for (const std::string& c : bc.controls) {
          const auto& sup = info.supported_budget_controls();
          if (!quiet && std::find(sup.begin(), sup.end(), c) == sup.end()) {
            std::fprintf(stderr, "sluice-loadgen: warning: budget '%s' uses %s, which this model does not list "
                         "(it honours: %s); expect FAILED_PRECONDITION\n", bc.name.c_str(), c.c_str(),
                         absl::StrJoin(sup, ", ").c_str());
          }
        }
      }
    } else if (cfg.vocab == 0) {
      std::fprintf(stderr, "sluice-loadgen: GetModelInfo on %s failed: %s: %s (give --vocab to run anyway)\n",
                   absl::GetFlag(FLAGS_server).c_str(), CodeName(s.error_code()), s.error_message().c_str());
      return 2;
    } else if (!quiet) {
      std::fprintf(stderr, "sluice-loadgen: warning: GetModelInfo failed: %s: %s\n", CodeName(s.error_code()),
                   s.error_message().c_str());
    }
  }
  if (cfg.vocab <= 0) return UsageError("the vocabulary is empty");

  Json report;
  report["tool"] = "sluice-loadgen";
  report["format"] = 1;
  report["server"] = absl::GetFlag(FLAGS_server);
  report["mode"] = mode;
  Json config;
  config["seconds"] = cfg.seconds;
  config["warmup_seconds"] = cfg.warmup;
  config["drain_seconds"] = cfg.drain;
  config["prompt_tokens"] = cfg.prompt.text;
  config["max_tokens"] = cfg.output.text;
  Json mix = Json::array();
  for (const BudgetClass& c : cfg.mix) mix.push_back({{"weight", c.weight}, {"budget", c.name}});
  config["budget_mix"] = mix;
  Json targets = Json::object();
  if (cfg.targets.ttft_s) targets["ttft"] = *cfg.targets.ttft_s;
  if (cfg.targets.itl_s) targets["itl"] = *cfg.targets.itl_s;
  if (cfg.targets.e2e_s) targets["e2e"] = *cfg.targets.e2e_s;
  config["goodput_targets_s"] = targets;
  config["long_prompt_tokens"] = cfg.long_prompt;
  config["vocab"] = cfg.vocab;
  config["seed"] = cfg.seed;
  config["max_requests"] = cfg.max_requests;
  config["max_in_flight"] = cfg.max_in_flight;
  config["timeout_s"] = cfg.timeout_s;
  report["config"] = config;
  if (!model_json.is_null()) report["model"] = model_json;
  report["levels"] = Json::array();

  Progress progress(!quiet && (absl::GetFlag(FLAGS_progress) || isatty(STDERR_FILENO) == 1));
  Runner runner(cfg, stub.get(), &progress);
  const std::string json_path = absl::GetFlag(FLAGS_json);
  PrintHeader(cfg);
  std::fflush(stdout);
  for (size_t i = 0; i < cfg.loads.size(); ++i) {
    const std::string load = LoadLabel(cfg, cfg.loads[i]);
    const std::string label = absl::StrCat(cfg.poisson ? "rate " : "streams ", load, cfg.poisson ? "/s" : "", " (",
                                           i + 1, "/", cfg.loads.size(), ")");
    std::unique_ptr<Level> level = runner.Run(i, label);
    if (!level) return 3;
    LevelFigures fig;
    for (const ClassStats& c : level->classes) {
      fig.measured.Merge(c.measured);
      fig.flow.Merge(c.flow);
    }
    fig.window_s = std::max(0.0, std::chrono::duration<double>(level->window_end() - level->window_start).count());
    PrintRow(cfg, load, fig.measured, fig.flow, fig.window_s, /*errors=*/true);
    if (cfg.mix.size() > 1) {
      for (size_t c = 0; c < cfg.mix.size(); ++c) {
        PrintRow(cfg, "  " + cfg.mix[c].name, level->classes[c].measured, level->classes[c].flow, fig.window_s,
                 /*errors=*/false);
      }
    }
    if (cfg.long_prompt > 0 && !level->long_prompt.errors_by_code.empty()) {
      PrintRow(cfg, "  long prompts", level->long_prompt, Flow(), fig.window_s, /*errors=*/true);
    }
    std::fflush(stdout);
    report["levels"].push_back(LevelJson(cfg, *level, fig));
    if (!json_path.empty() && !WriteJson(json_path, report)) return 1;  // after each level: partial results survive
  }
  return 0;
}
