// Scheduler policy at the plan level, with no model: each step is Schedule(), then a
// hand-built StepOutput (the "model" emits token (last input token + 1) % vocab and takes
// a simulated time per token), then Apply(), as vLLM v1's scheduler tests do. Covers
// admission order, chunked prefill under the token budget, preemption order,
// cancellation at every stage, deadlines, queue limits, the accounting invariant (every
// request ends exactly once; blocks and slots all return) over 10,000 random operations,
// what a plan contains, and prefix caching (shared blocks, snapshots, their invariants
// under 64 streams of random traffic, checked against a shadow of the caches' contents).
#include "engine/scheduler/scheduler.h"

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "engine/cache/prefix_cache.h"
#include "engine/model/language_model.h"
#include "engine/scheduler/step_plan.h"
#include "gtest/gtest.h"

namespace sluice::engine {
namespace {

constexpr int64_t kVocab = 32;

// The scheduler reads a model's config and cost model only; running it is a failure.
class FakeModel : public LanguageModel {
 public:
  FakeModel() {
    config_.model_type = "fake";
    config_.vocab_size = kVocab;
    config_.num_layers = 1;
    config_.eos_token_ids = {};
  }
  const ModelConfig& config() const override { return config_; }
  absl::Status Forward(const ForwardBatch&, PagedKvCache*, RecurrentStateCache*,
                       std::vector<float>*) override {
    ADD_FAILURE() << "the scheduler ran the model";
    return absl::InternalError("not a model");
  }
  double DenseFlops(int64_t past, int64_t tokens) const override {
    return static_cast<double>(tokens);
  }

 private:
  ModelConfig config_;
};

// What one plan ran, in the shape of the ragged batch the runner would pack from it.
struct Batch {
  struct Rows {
    int32_t query_start = 0;
    int32_t query_len = 0;
  };
  std::vector<int32_t> token_ids;
  std::vector<int32_t> positions;
  std::vector<Rows> sequences;
  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
};

Batch Record(const StepPlan& plan) {
  Batch b;
  for (const ScheduledSequence& s : plan.sequences) {
    b.sequences.push_back({b.num_tokens(), s.num_tokens});
    for (int32_t j = 0; j < s.num_tokens; ++j) {
      b.token_ids.push_back(s.tokens[s.num_computed + j]);
      b.positions.push_back(s.num_computed + j);
    }
  }
  return b;
}

// The output a model would give for `plan`: token (last input token + 1) % vocab for
// every sampled sequence, and `per_token` of simulated forward time per batch token.
StepOutput FakeOutput(const StepPlan& plan, absl::Duration per_token) {
  StepOutput out;
  out.start = absl::Now();
  out.forward = per_token * plan.num_tokens;
  for (const ScheduledSequence& s : plan.sequences) {
    SequenceOutput& o = out.sequences.emplace_back();
    if (s.sample) o.token = (s.step_tokens().back() + 1) % kVocab;
  }
  return out;
}

struct Harness {
  explicit Harness(SchedulerOptions options, int32_t num_blocks = 64, int32_t block_size = 4,
                   int32_t slots = 8, int32_t state_layers = 1) {
    KvCacheShape kv;
    kv.num_layers = 0;  // no model reads it; only the accounting matters
    kv.num_blocks = num_blocks;
    kv.block_size = block_size;
    StateCacheShape st;
    st.num_layers = state_layers;
    st.num_slots = slots + (options.enable_prefix_caching ? options.state_snapshots : 0);
    st.conv_dim = 1;
    st.conv_tail = 1;
    st.num_value_heads = 1;
    st.key_head_dim = 1;
    st.value_head_dim = 1;
    options.block_size = block_size;
    if (options.max_model_len == 0) options.max_model_len = 1 << 20;
    scheduler = std::make_unique<Scheduler>(options, &model, kv, st);
  }

  std::shared_ptr<RequestChannel> Submit(std::vector<int32_t> prompt, int32_t max_tokens,
                                         int32_t priority = 0,
                                         absl::Time deadline = absl::InfiniteFuture(),
                                         absl::Status* status = nullptr) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.stopping.max_tokens = max_tokens;
    r.priority = priority;
    r.deadline = deadline;
    return Submit(std::move(r), status);
  }
  std::shared_ptr<RequestChannel> Submit(GenerationRequest r, absl::Status* status = nullptr) {
    auto ch = std::make_shared<RequestChannel>();
    absl::Status s = scheduler->Enqueue(std::move(r), ch);
    if (status != nullptr) *status = s;
    return s.ok() ? ch : nullptr;
  }

  // One engine step: plan, the hand-built output, apply.
  void Step() {
    const StepPlan plan = scheduler->Schedule();
    if (!plan.empty()) batches.push_back(Record(plan));
    scheduler->Apply(plan, FakeOutput(plan, per_token_delay));
  }

  void RunToIdle(int max_steps = 10000) {
    for (int i = 0; i < max_steps && scheduler->HasWork(); ++i) Step();
    ASSERT_FALSE(scheduler->HasWork()) << "scheduler did not drain";
  }

  FakeModel model;
  std::unique_ptr<Scheduler> scheduler;
  absl::Duration per_token_delay = absl::ZeroDuration();  // simulated cost of a step
  std::vector<Batch> batches;                              // every non-empty plan, recorded
};

struct Result {
  std::vector<int32_t> tokens;
  int finals = 0;
  absl::Status status;
  UsageStats usage;
};

Result Read(RequestChannel& ch) {
  Result r;
  RequestEvent e;
  while (ch.TryPop(&e)) {
    r.tokens.insert(r.tokens.end(), e.tokens.begin(), e.tokens.end());
    if (e.final) {
      ++r.finals;
      r.status = e.status;
      r.usage = e.usage;
    }
  }
  return r;
}

// The first prompt token of each sequence a batch prefilled from position 0.
std::vector<int32_t> FirstPrefills(const Harness& m) {
  std::vector<int32_t> order;
  for (const auto& b : m.batches) {
    for (const auto& s : b.sequences) {
      if (b.positions[s.query_start] == 0) order.push_back(b.token_ids[s.query_start]);
    }
  }
  return order;
}

TEST(SchedulerTest, AdmitsByPriorityThenArrival) {
  SchedulerOptions o;
  o.max_num_seqs = 1;
  o.max_num_batched_tokens = 64;
  Harness h(o);
  auto a = h.Submit({1, 1}, 2, /*priority=*/0);
  auto b = h.Submit({2, 2}, 2, /*priority=*/5);
  auto c = h.Submit({3, 3}, 2, /*priority=*/5);
  h.RunToIdle();
  EXPECT_EQ(FirstPrefills(h), (std::vector<int32_t>{2, 3, 1}));
  for (auto* ch : {a.get(), b.get(), c.get()}) EXPECT_EQ(Read(*ch).finals, 1);
}

TEST(SchedulerTest, ChunkedPrefillKeepsDecodesFlowingUnderTheTokenBudget) {
  SchedulerOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 8;
  Harness h(o);
  auto decoder = h.Submit({5}, 20);
  h.Step();  // prefill of the short prompt; it decodes from now on
  auto longer = h.Submit(std::vector<int32_t>(20, 7), 1);
  std::vector<int32_t> prompt_chunks;
  for (int i = 0; i < 5; ++i) {
    const size_t before = h.batches.size();
    h.Step();
    ASSERT_EQ(h.batches.size(), before + 1);
    const Batch& b = h.batches.back();
    EXPECT_LE(b.num_tokens(), o.max_num_batched_tokens);
    ASSERT_GE(b.sequences.size(), 1u);
    EXPECT_EQ(b.sequences[0].query_len, 1) << "the decode goes first every step";
    if (b.sequences.size() > 1) prompt_chunks.push_back(b.sequences[1].query_len);
  }
  EXPECT_EQ(prompt_chunks, (std::vector<int32_t>{7, 7, 6}));  // one prompt: no reservation
  h.RunToIdle();
  Result r = Read(*longer);
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{8}));
  EXPECT_EQ(Read(*decoder).tokens.size(), 20u);
}

TEST(SchedulerTest, ShortPromptsGoFirstButTheOldestPromptAlwaysAdvances) {
  SchedulerOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 16;
  Harness h(o, /*num_blocks=*/256);
  auto longer = h.Submit(std::vector<int32_t>(100, 3), 1);
  h.Step();  // the long prompt starts: 16 of its 100 tokens
  auto shorter = h.Submit(std::vector<int32_t>(10, 4), 1);
  h.Step();
  const Batch& b = h.batches.back();
  ASSERT_EQ(b.sequences.size(), 2u);
  EXPECT_EQ(b.token_ids[b.sequences[0].query_start], 4) << "the shorter prompt goes first";
  EXPECT_EQ(b.sequences[0].query_len, 10);
  EXPECT_EQ(b.sequences[1].query_len, 6) << "the older prompt still gets the rest";
  // Even when short prompts would fill the whole budget, the oldest one gets a token.
  std::vector<std::shared_ptr<RequestChannel>> many;
  for (int i = 0; i < 3; ++i) many.push_back(h.Submit(std::vector<int32_t>(16, 5), 1));
  h.Step();
  const Batch& c = h.batches.back();
  bool oldest_ran = false;
  for (const auto& s : c.sequences) oldest_ran |= c.token_ids[s.query_start] == 3;
  EXPECT_TRUE(oldest_ran);
  h.RunToIdle();
  EXPECT_EQ(Read(*longer).finals, 1);
  EXPECT_EQ(Read(*shorter).finals, 1);
}

TEST(SchedulerTest, ItlTargetShrinksPromptChunksBesideDecodes) {
  SchedulerOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 64;
  o.itl_target_ms = 12;  // at 1 ms a token, decodes plus ~11 prompt tokens fit
  Harness h(o, /*num_blocks=*/1024);
  h.per_token_delay = absl::Milliseconds(1);
  auto decoder = h.Submit({5}, 60);
  h.Step();
  auto longer = h.Submit(std::vector<int32_t>(1000, 7), 1);
  for (int i = 0; i < 40; ++i) h.Step();
  // After adapting, steps that carry the decode stay near the target.
  int late_steps = 0, over = 0;
  for (size_t b = h.batches.size() - 10; b < h.batches.size(); ++b) {
    const Batch& batch = h.batches[b];
    if (batch.sequences.size() < 2) continue;
    ++late_steps;
    if (batch.num_tokens() > 24) ++over;
    EXPECT_GE(batch.sequences[1].query_len, 1) << "the prompt still advances every step";
  }
  EXPECT_GT(late_steps, 5);
  EXPECT_EQ(over, 0) << "prompt chunks did not shrink toward the 12 ms target";
  h.RunToIdle();
  EXPECT_EQ(Read(*longer).finals, 1);
  EXPECT_EQ(Read(*decoder).tokens.size(), 60u);
}

// The automatic-target tests: nine sequences at most, a simulated 2 ms a token.
struct ItlHarness : Harness {
  static SchedulerOptions Options(double factor) {
    SchedulerOptions o;
    o.max_num_seqs = 9;
    o.max_num_batched_tokens = 64;
    o.itl_target_factor = factor;
    return o;
  }
  explicit ItlHarness(double factor) : Harness(Options(factor), /*num_blocks=*/1024, /*block_size=*/4, /*slots=*/9) {
    per_token_delay = absl::Milliseconds(2);
  }
  std::vector<std::shared_ptr<RequestChannel>> Decoders(int n, int32_t max_tokens) {
    std::vector<std::shared_ptr<RequestChannel>> out;
    for (int i = 0; i < n; ++i) out.push_back(Submit({5}, max_tokens));
    return out;
  }
  // The fewest and most prompt tokens (all but `decodes` of a step) in the last 10 steps.
  std::pair<int, int> RecentPromptTokens(int decodes) const {
    int lo = 1 << 30, hi = 0;
    for (size_t b = batches.size() - 10; b < batches.size(); ++b) {
      const int prompt = batches[b].num_tokens() - decodes;
      lo = std::min(lo, prompt);
      hi = std::max(hi, prompt);
    }
    return {lo, hi};
  }
  void CancelAndDrain(std::vector<std::shared_ptr<RequestChannel>> channels) {
    for (auto& c : channels) c->Cancel();
    RunToIdle();
  }
};

// The automatic target: 1.5 × the measured decode step. Eight decodes at 2 ms a token
// make a 16 ms decode step, so steps carrying prompt chunks settle near 24 ms, i.e. a
// few prompt tokens, where without a target they would take the whole budget.
TEST(SchedulerTest, AutomaticItlTargetFollowsTheDecodeStep) {
  for (const double factor : {0.0, 1.5}) {
    ItlHarness h(factor);
    auto channels = h.Decoders(8, 200);
    for (int i = 0; i < 4; ++i) h.Step();  // decode-only steps: the estimate
    if (factor > 0) {
      EXPECT_GE(h.scheduler->Stats().itl_target_ms, 1.5 * 16);
    } else {
      EXPECT_EQ(h.scheduler->Stats().itl_target_ms, 0);
    }
    channels.push_back(h.Submit(std::vector<int32_t>(2000, 7), 1));
    for (int i = 0; i < 30; ++i) h.Step();
    const auto [min_prompt, max_prompt] = h.RecentPromptTokens(8);
    if (factor > 0) {
      EXPECT_GE(min_prompt, 1) << "the prompt still advances every step";
      EXPECT_LE(max_prompt, 8) << "16 ms of decodes + 2 ms a prompt token, 24 ms target";
    } else {
      EXPECT_EQ(min_prompt, 64 - 8) << "no target: the prompt takes the rest of the budget";
    }
    h.CancelAndDrain(channels);
  }
}

// A target learnt while one stream ran is too low once eight run and a long prompt
// never lets a step go prompt-free: the cap drops to its floor, and those steps re-time
// the decodes, so the target recovers and prompts speed up again.
TEST(SchedulerTest, AutomaticItlTargetRecoversFromAStaleEstimate) {
  ItlHarness h(1.5);
  auto channels = h.Decoders(1, 400);
  for (int i = 0; i < 4; ++i) h.Step();
  EXPECT_LT(h.scheduler->Stats().itl_target_ms, 1.5 * 16) << "learnt on a 1-decode step";
  for (auto& c : h.Decoders(7, 400)) channels.push_back(c);
  channels.push_back(h.Submit(std::vector<int32_t>(4000, 7), 1));
  for (int i = 0; i < 40; ++i) h.Step();
  const SchedulerStats stats = h.scheduler->Stats();
  EXPECT_GE(stats.itl_target_ms, 16) << "re-timed on the eight-decode steps";
  EXPECT_GT(stats.prefill_cap, 1);
  h.CancelAndDrain(channels);
}

// The other way round: a target learnt with eight decodes is too high for the one
// left, and a long prompt never lets a step go prompt-free. A probe step (prompts held
// to the floor) re-times the decodes and the chunks shrink.
TEST(SchedulerTest, AutomaticItlTargetProbesWhenTheEstimateIsStaleHigh) {
  ItlHarness h(1.5);
  auto channels = h.Decoders(8, 400);
  for (int i = 0; i < 4; ++i) h.Step();
  EXPECT_GE(h.scheduler->Stats().itl_target_ms, 1.5 * 16);
  for (int i = 1; i < 8; ++i) channels[i]->Cancel();
  channels.push_back(h.Submit(std::vector<int32_t>(3000, 7), 1));
  for (int i = 0; i < 80; ++i) h.Step();
  EXPECT_LT(h.scheduler->Stats().itl_target_ms, 12) << "re-timed on one decode (2 ms + a prompt token)";
  EXPECT_LE(h.RecentPromptTokens(1).second, 4);
  h.CancelAndDrain(channels);
}

// Beside four decodes (8 ms steps, 12 ms target) a long prompt gets a token or two a
// step. A burst of short prompts is not held to that: the cap's floor grows by a token
// per prompt in prefill, so four 8-token prompts (~6 tokens a step) finish within 12.
TEST(SchedulerTest, AutomaticItlTargetLetsABurstOfPromptsIn) {
  ItlHarness h(1.5);
  auto channels = h.Decoders(4, 400);
  for (int i = 0; i < 4; ++i) h.Step();
  channels.push_back(h.Submit(std::vector<int32_t>(3000, 7), 1));
  for (int i = 0; i < 30; ++i) h.Step();
  EXPECT_LE(h.RecentPromptTokens(4).second, 3) << "the long prompt alone is throttled";
  std::vector<std::shared_ptr<RequestChannel>> burst;
  for (int i = 0; i < 4; ++i) burst.push_back(h.Submit(std::vector<int32_t>(8, 3), 1));
  for (int i = 0; i < 12; ++i) h.Step();
  for (auto& b : burst) EXPECT_EQ(Read(*b).finals, 1) << "at 1-3 prompt tokens a step, 32 take 16+ steps";
  h.CancelAndDrain(channels);
}

TEST(SchedulerTest, PreemptsLowestPriorityThenNewestAndRecomputes) {
  SchedulerOptions o;
  o.max_num_seqs = 3;
  o.max_num_batched_tokens = 64;
  // 6 blocks of 4 tokens: three sequences of 4-token prompts fit, but not as they grow.
  Harness h(o, /*num_blocks=*/6, /*block_size=*/4);
  auto high = h.Submit({1, 2, 3, 4}, 8, /*priority=*/1);
  auto old_low = h.Submit({2, 3, 4, 5}, 8, /*priority=*/0);
  auto new_low = h.Submit({3, 4, 5, 6}, 8, /*priority=*/0);
  h.RunToIdle();
  Result rh = Read(*high), ro = Read(*old_low), rn = Read(*new_low);
  EXPECT_EQ(rh.usage.preemptions, 0);
  EXPECT_GE(rn.usage.preemptions, 1) << "the newest low-priority sequence goes first";
  EXPECT_LE(ro.usage.preemptions, rn.usage.preemptions);
  // Recompute loses nothing: each continues its own +1 chain.
  EXPECT_EQ(rh.tokens, (std::vector<int32_t>{5, 6, 7, 8, 9, 10, 11, 12}));
  EXPECT_EQ(rn.tokens, (std::vector<int32_t>{7, 8, 9, 10, 11, 12, 13, 14}));
  EXPECT_GT(h.scheduler->Stats().preemptions, 0u);
  EXPECT_EQ(h.scheduler->Stats().free_blocks, 6);
}

TEST(SchedulerTest, CancelAtEveryStageEndsOnceAndFreesEverything) {
  SchedulerOptions o;
  o.max_num_seqs = 2;
  o.max_num_batched_tokens = 8;
  Harness h(o);
  auto blocker = h.Submit({1}, 50);
  auto other = h.Submit({2}, 50);
  auto queued = h.Submit({3}, 5);                           // waits: max_num_seqs = 2
  h.Step();
  queued->Cancel();
  h.Step();
  EXPECT_EQ(Read(*queued).status.code(), absl::StatusCode::kCancelled);
  // Cancel during a chunked prefill (20 tokens, 8 per step minus the decodes).
  other->Cancel();
  h.Step();
  auto prefill = h.Submit(std::vector<int32_t>(20, 4), 5);
  h.Step();
  prefill->Cancel();
  h.Step();
  Result rp = Read(*prefill);
  EXPECT_EQ(rp.status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(rp.tokens.empty());
  // Cancel before the step that would produce the last token.
  auto last = h.Submit({9}, 2);
  h.Step();  // prefill → first token
  last->Cancel();
  h.Step();
  Result rl = Read(*last);
  EXPECT_EQ(rl.finals, 1);
  EXPECT_EQ(rl.status.code(), absl::StatusCode::kCancelled);
  blocker->Cancel();
  h.RunToIdle();
  for (auto* ch : {blocker.get(), other.get()}) EXPECT_EQ(Read(*ch).finals, 1);
  const auto s = h.scheduler->Stats();
  EXPECT_EQ(s.free_blocks, s.total_blocks);
  EXPECT_EQ(s.free_state_slots, s.total_state_slots);
}

TEST(SchedulerTest, ExpiredRequestsAreNeverStarted) {
  SchedulerOptions o;
  o.max_num_seqs = 1;
  o.max_num_batched_tokens = 16;
  Harness h(o);
  auto running = h.Submit({1}, 3);
  auto expired = h.Submit({31, 31}, 3, 0, absl::Now() - absl::Seconds(1));
  h.RunToIdle();
  Result r = Read(*expired);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded);
  for (const auto& b : h.batches) {
    for (int32_t t : b.token_ids) EXPECT_NE(t, 31) << "an expired request reached the model";
  }
  EXPECT_TRUE(Read(*running).status.ok());
}

TEST(SchedulerTest, FullQueueRejectsAtOnceAndDrainingRefuses) {
  SchedulerOptions o;
  o.max_queue = 2;
  o.max_num_batched_tokens = 16;
  Harness h(o);
  absl::Status s;
  h.Submit({1}, 1, 0, absl::InfiniteFuture(), &s);
  EXPECT_TRUE(s.ok());
  h.Submit({1}, 1, 0, absl::InfiniteFuture(), &s);
  EXPECT_TRUE(s.ok());
  h.Submit({1}, 1, 0, absl::InfiniteFuture(), &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("max_queue=2"), absl::string_view::npos);
  h.scheduler->StartDrain();
  h.Submit({1}, 1, 0, absl::InfiniteFuture(), &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  h.RunToIdle();
}

TEST(SchedulerTest, AccountingInvariantOverTenThousandRandomOperations) {
  SchedulerOptions o;
  o.max_num_seqs = 6;
  o.max_num_batched_tokens = 24;
  o.max_queue = 16;
  o.max_model_len = 64;
  Harness h(o, /*num_blocks=*/20, /*block_size=*/4, /*slots=*/6);
  std::mt19937 rng(12345);
  std::vector<std::shared_ptr<RequestChannel>> all;
  std::map<RequestChannel*, int> finals;
  auto collect = [&] {
    for (auto& ch : all) {
      RequestEvent e;
      while (ch->TryPop(&e)) {
        if (e.final) ++finals[ch.get()];
      }
    }
  };
  for (int op = 0; op < 10000; ++op) {
    const int kind = rng() % 10;
    if (kind < 4) {
      std::vector<int32_t> prompt(1 + rng() % 30, static_cast<int32_t>(rng() % kVocab));
      const int32_t max_tokens = 1 + rng() % 20;
      const absl::Time deadline = rng() % 20 == 0 ? absl::Now() - absl::Seconds(1) : absl::InfiniteFuture();
      auto ch = h.Submit(prompt, max_tokens, static_cast<int32_t>(rng() % 3), deadline);
      if (ch) all.push_back(ch);
    } else if (kind < 5 && !all.empty()) {
      all[rng() % all.size()]->Cancel();
    } else {
      h.Step();
      const auto s = h.scheduler->Stats();
      ASSERT_LE(s.free_blocks, s.total_blocks);
      ASSERT_LE(s.free_state_slots, s.total_state_slots);
      ASSERT_LE(s.running, o.max_num_seqs);
      ASSERT_LE(s.total_state_slots - s.free_state_slots, s.running);
    }
    if (op % 100 == 0) collect();
  }
  h.RunToIdle();
  collect();
  for (auto& ch : all) EXPECT_EQ(finals[ch.get()], 1) << "every request ends exactly once";
  const auto s = h.scheduler->Stats();
  EXPECT_EQ(s.free_blocks, s.total_blocks);
  EXPECT_EQ(s.free_state_slots, s.total_state_slots);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_GT(all.size(), 1000u);
}

// ---- What a plan contains -------------------------------------------------------------

std::vector<int32_t> Ids(absl::Span<const int32_t> span) { return {span.begin(), span.end()}; }

TEST(SchedulerPlanTest, PlanCarriesTokensPositionsBlocksAndStateSlots) {
  SchedulerOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 64;
  Harness h(o, /*num_blocks=*/16, /*block_size=*/4, /*slots=*/4);
  auto ch = h.Submit({3, 1, 4, 1, 5, 9}, 4);
  StepPlan plan = h.scheduler->Schedule();
  ASSERT_EQ(plan.sequences.size(), 1u);
  const ScheduledSequence& prefill = plan.sequences[0];
  EXPECT_EQ(plan.block_size, 4);
  EXPECT_EQ(plan.token_budget, 64);
  EXPECT_EQ(plan.num_tokens, 6);
  EXPECT_EQ(plan.decodes, 0);
  EXPECT_EQ(plan.prompt_tokens, 6);
  EXPECT_EQ(prefill.num_computed, 0);
  EXPECT_EQ(prefill.num_tokens, 6);
  EXPECT_EQ(Ids(prefill.step_tokens()), (std::vector<int32_t>{3, 1, 4, 1, 5, 9}));
  EXPECT_EQ(prefill.context_len(), 6);
  EXPECT_EQ(prefill.block_table.size(), 2u) << "blocks for 6 tokens of 4 per block";
  EXPECT_NE(prefill.block_table[0], prefill.block_table[1]);
  EXPECT_GE(prefill.state_slot, 0);
  EXPECT_TRUE(prefill.state_fresh);
  EXPECT_FALSE(prefill.decode);
  EXPECT_TRUE(prefill.sample) << "the chunk reaches the end of the prompt";
  EXPECT_EQ(prefill.num_generated, 0);
  EXPECT_EQ(prefill.budget, nullptr) << "no budget: dense";
  ASSERT_NE(prefill.sampling, nullptr);
  EXPECT_EQ(prefill.logprobs_top_n, -1);
  EXPECT_TRUE(prefill.banned.empty());
  const std::vector<int32_t> table = Ids(prefill.block_table);
  const uint64_t id = prefill.id;
  const int32_t slot = prefill.state_slot;
  StepOutput out = FakeOutput(plan, absl::ZeroDuration());
  out.sequences[0].token = 26;
  h.scheduler->Apply(plan, out);
  EXPECT_EQ(h.scheduler->Stats().free_blocks, 14) << "planning took the prompt's blocks";

  plan = h.scheduler->Schedule();
  ASSERT_EQ(plan.sequences.size(), 1u);
  const ScheduledSequence& decode = plan.sequences[0];
  EXPECT_EQ(decode.id, id);
  EXPECT_TRUE(decode.decode);
  EXPECT_EQ(decode.num_computed, 6);
  EXPECT_EQ(Ids(decode.step_tokens()), (std::vector<int32_t>{26})) << "the sampled token runs next";
  EXPECT_EQ(Ids(decode.tokens), (std::vector<int32_t>{3, 1, 4, 1, 5, 9, 26}));
  EXPECT_EQ(Ids(decode.block_table), table) << "position 6 still fits the second block";
  EXPECT_EQ(decode.state_slot, slot);
  EXPECT_FALSE(decode.state_fresh);
  EXPECT_EQ(decode.num_generated, 1);
  EXPECT_EQ(plan.decodes, 1);
  EXPECT_EQ(plan.prompt_tokens, 0);
  h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
  plan = h.scheduler->Schedule();
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(Ids(plan.sequences[0].block_table), table) << "position 7 ends the second block";
  h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
  plan = h.scheduler->Schedule();
  ASSERT_EQ(plan.sequences.size(), 1u);
  EXPECT_EQ(plan.sequences[0].num_computed, 8);
  EXPECT_EQ(plan.sequences[0].block_table.size(), 3u) << "position 8 opens a third block";
  EXPECT_EQ(Ids(plan.sequences[0].block_table).front(), table.front());
  h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
  Result r = Read(*ch);
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{26, 27, 28, 29}));
  EXPECT_EQ(r.finals, 1);
  EXPECT_EQ(h.scheduler->Stats().free_blocks, 16);
}

TEST(SchedulerPlanTest, DecodesComeFirstAndPromptsAreChunkedInPlanOrder) {
  SchedulerOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 8;
  Harness h(o);
  auto decoder = h.Submit({5}, 20);
  h.Step();
  auto longer = h.Submit(std::vector<int32_t>(20, 7), 1);
  auto shorter = h.Submit(std::vector<int32_t>(3, 2), 1);
  int32_t computed = 0;
  for (int step = 0; step < 3; ++step) {
    const StepPlan plan = h.scheduler->Schedule();
    ASSERT_GE(plan.sequences.size(), 2u);
    EXPECT_LE(plan.num_tokens, o.max_num_batched_tokens);
    EXPECT_TRUE(plan.sequences[0].decode) << "the decode goes first";
    EXPECT_EQ(plan.sequences[0].num_tokens, 1);
    EXPECT_EQ(plan.decodes, 1);
    int32_t sum = 0;
    for (const ScheduledSequence& s : plan.sequences) sum += s.num_tokens;
    EXPECT_EQ(sum, plan.num_tokens);
    EXPECT_EQ(plan.prompt_tokens, plan.num_tokens - 1);
    if (step == 0) {
      ASSERT_EQ(plan.sequences.size(), 3u);
      EXPECT_EQ(plan.sequences[1].num_tokens, 3) << "the shorter prompt first, whole";
      EXPECT_TRUE(plan.sequences[1].sample);
      EXPECT_EQ(plan.sequences[2].num_tokens, 4) << "the long one gets the rest";
      EXPECT_FALSE(plan.sequences[2].sample) << "a chunk short of the prompt's end samples nothing";
    }
    const ScheduledSequence& chunk = plan.sequences.back();
    EXPECT_EQ(chunk.num_computed, computed) << "each chunk continues where the last one ended";
    EXPECT_EQ(chunk.state_fresh, computed == 0);
    EXPECT_EQ(chunk.block_table.size(), static_cast<size_t>((chunk.context_len() + 3) / 4));
    computed += chunk.num_tokens;
    h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
  }
  EXPECT_EQ(computed, 4 + 7 + 7);
  h.RunToIdle();
  EXPECT_EQ(Read(*longer).tokens, (std::vector<int32_t>{8}));
  EXPECT_EQ(Read(*shorter).tokens, (std::vector<int32_t>{3}));
  EXPECT_EQ(Read(*decoder).tokens.size(), 20u);
}

TEST(SchedulerPlanTest, PreemptionsMadeWhileFormingAppearInThePlan) {
  SchedulerOptions o;
  o.max_num_seqs = 3;
  o.max_num_batched_tokens = 64;
  std::vector<int32_t> step_preemptions;
  o.on_step = [&](const StepMetrics& m) { step_preemptions.push_back(m.preemptions); };
  Harness h(o, /*num_blocks=*/6, /*block_size=*/4);
  auto high = h.Submit({1, 2, 3, 4}, 8, /*priority=*/1);
  auto old_low = h.Submit({2, 3, 4, 5}, 8, /*priority=*/0);
  auto new_low = h.Submit({3, 4, 5, 6}, 8, /*priority=*/0);
  std::vector<uint64_t> ids;  // by arrival: high, old_low, new_low
  bool saw = false;
  uint64_t total = 0;
  for (int step = 0; step < 200 && h.scheduler->HasWork(); ++step) {
    const StepPlan plan = h.scheduler->Schedule();
    if (step == 0) {
      for (const ScheduledSequence& s : plan.sequences) ids.push_back(s.id);
      std::sort(ids.begin(), ids.end());
      ASSERT_EQ(ids.size(), 3u);
    }
    for (uint64_t p : plan.preempted) {
      saw = true;
      for (const ScheduledSequence& s : plan.sequences)
        EXPECT_NE(s.id, p) << "a preempted sequence runs";
      if (total == 0) {
        EXPECT_EQ(p, ids[2]) << "the newest low-priority sequence goes first";
      }
      EXPECT_NE(p, ids[0]) << "the high-priority sequence is never the victim";
    }
    total += plan.preempted.size();
    for (const ScheduledSequence& s : plan.sequences) {
      if (s.num_computed == 0 && step > 0) {
        EXPECT_TRUE(s.state_fresh) << "recompute starts a fresh state";
      }
    }
    h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
  }
  EXPECT_TRUE(saw);
  EXPECT_EQ(h.scheduler->Stats().preemptions, total);
  uint64_t reported = 0;
  for (int32_t p : step_preemptions) reported += p;
  EXPECT_EQ(reported, total) << "StepMetrics counts the plan's preemptions";
  EXPECT_EQ(Read(*high).tokens, (std::vector<int32_t>{5, 6, 7, 8, 9, 10, 11, 12}));
  EXPECT_EQ(Read(*new_low).tokens, (std::vector<int32_t>{7, 8, 9, 10, 11, 12, 13, 14}));
  EXPECT_EQ(Read(*old_low).finals, 1);
  EXPECT_EQ(h.scheduler->Stats().free_blocks, 6);
}

TEST(SchedulerPlanTest, ReleasedListsFinishedAndCancelledSequences) {
  SchedulerOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 16;
  Harness h(o);
  auto one = h.Submit({1}, 1);
  auto keeps = h.Submit({2}, 50);
  StepPlan plan = h.scheduler->Schedule();
  ASSERT_EQ(plan.sequences.size(), 2u);
  EXPECT_TRUE(plan.released.empty());
  const uint64_t one_id = plan.sequences[0].id, keeps_id = plan.sequences[1].id;
  h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));  // `one` finishes
  plan = h.scheduler->Schedule();
  EXPECT_EQ(plan.released, (std::vector<uint64_t>{one_id})) << "finished by the last Apply";
  ASSERT_EQ(plan.sequences.size(), 1u);
  h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
  keeps->Cancel();
  plan = h.scheduler->Schedule();
  EXPECT_EQ(plan.released, (std::vector<uint64_t>{keeps_id})) << "dropped while planning";
  EXPECT_TRUE(plan.empty());
  h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
  EXPECT_EQ(Read(*one).finals, 1);
  EXPECT_EQ(Read(*keeps).status.code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(h.scheduler->HasWork());
  EXPECT_EQ(h.scheduler->Stats().steps, 2u) << "an empty plan is not a step";
}

TEST(SchedulerPlanTest, AFailedForwardEndsEveryScheduledRequestWithTheError) {
  SchedulerOptions o;
  o.max_num_seqs = 2;
  o.max_num_batched_tokens = 16;
  Harness h(o);
  auto a = h.Submit({1, 2}, 5);
  auto b = h.Submit({3}, 5);
  auto queued = h.Submit({4}, 2);  // max_num_seqs = 2: not in the failed step
  const StepPlan plan = h.scheduler->Schedule();
  ASSERT_EQ(plan.sequences.size(), 2u);
  StepOutput out;
  out.start = absl::Now();
  out.status = absl::ResourceExhaustedError("out of device memory");
  h.scheduler->Apply(plan, out);
  for (auto* ch : {a.get(), b.get()}) {
    Result r = Read(*ch);
    EXPECT_EQ(r.finals, 1);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal);
    EXPECT_NE(r.status.message().find("model forward failed: out of device memory"),
              absl::string_view::npos)
        << r.status;
    EXPECT_TRUE(r.tokens.empty());
  }
  h.RunToIdle();
  Result q = Read(*queued);
  EXPECT_TRUE(q.status.ok()) << q.status;
  EXPECT_EQ(q.tokens, (std::vector<int32_t>{5, 6}));
  const auto s = h.scheduler->Stats();
  EXPECT_EQ(s.free_blocks, s.total_blocks);
  EXPECT_EQ(s.free_state_slots, s.total_state_slots);
}

TEST(SchedulerPlanTest, BannedIdsAndSamplingOptionsTravelWithThePlan) {
  SchedulerOptions o;
  o.max_num_batched_tokens = 16;
  Harness h(o);
  GenerationRequest r;
  r.prompt = {1, 2};
  r.stopping.max_tokens = 4;
  r.stopping.min_tokens = 2;
  r.stopping.stop_token_ids = {9};
  r.sampling.temperature = 0.7f;
  r.sampling.seed = 42;
  r.logprobs_top_n = 3;
  auto ch = h.Submit(r);
  std::vector<std::vector<int32_t>> banned;
  for (int step = 0; step < 3; ++step) {
    const StepPlan plan = h.scheduler->Schedule();
    ASSERT_EQ(plan.sequences.size(), 1u);
    const ScheduledSequence& s = plan.sequences[0];
    ASSERT_NE(s.sampling, nullptr);
    EXPECT_EQ(s.sampling->seed, 42u);
    EXPECT_EQ(s.sampling->temperature, 0.7f);
    EXPECT_EQ(s.logprobs_top_n, 3);
    EXPECT_EQ(s.num_generated, step);
    banned.push_back(s.banned);
    StepOutput out = FakeOutput(plan, absl::ZeroDuration());
    out.sequences[0].logprob.token_id = out.sequences[0].token;
    out.sequences[0].logprob.logprob = -0.25f;
    h.scheduler->Apply(plan, out);
  }
  EXPECT_EQ(banned, (std::vector<std::vector<int32_t>>{{9}, {9}, {}}))
      << "stop ids banned below min_tokens";
  RequestEvent e;
  int with_logprobs = 0;
  while (ch->TryPop(&e)) {
    if (e.final) break;
    ASSERT_EQ(e.logprobs.size(), 1u);
    EXPECT_EQ(e.logprobs[0].token_id, e.tokens[0]);
    EXPECT_EQ(e.logprobs[0].logprob, -0.25f);
    ++with_logprobs;
  }
  EXPECT_EQ(with_logprobs, 3);
  h.scheduler->AbortAll(absl::CancelledError("done"));
}

TEST(SchedulerPlanTest, ApplyAccountsTheExecutedComputeTheOutputReports) {
  SchedulerOptions o;
  o.max_num_batched_tokens = 16;
  double step_executed = 0;
  o.on_step = [&](const StepMetrics& m) { step_executed += m.executed_flops; };
  Harness h(o);
  GenerationRequest dense;
  dense.prompt = {1, 2, 3, 4};
  dense.stopping.max_tokens = 1;
  GenerationRequest budgeted = dense;
  budgeted.budget.skip_ratio = 0.5f;
  auto dense_ch = h.Submit(dense);
  auto budget_ch = h.Submit(budgeted);
  const StepPlan plan = h.scheduler->Schedule();
  ASSERT_EQ(plan.sequences.size(), 2u);
  EXPECT_EQ(plan.sequences[0].budget, nullptr);
  ASSERT_NE(plan.sequences[1].budget, nullptr);
  EXPECT_EQ(plan.sequences[1].budget->skip_ratio, 0.5f);
  StepOutput out = FakeOutput(plan, absl::ZeroDuration());
  for (SequenceOutput& so : out.sequences) {
    so.has_cost = true;
    so.cost.saved_flops = 1.5;
    so.cost.branches_skipped = 3;
    so.cost.branches_total = 8;
  }
  h.scheduler->Apply(plan, out);
  Result d = Read(*dense_ch), b = Read(*budget_ch);
  // The fake's dense cost is one FLOP a token: 4 prompt tokens.
  EXPECT_EQ(d.usage.dense_flops, 4);
  EXPECT_EQ(d.usage.executed_flops, 4) << "a sequence without a budget counts as dense";
  EXPECT_EQ(d.usage.branches_total, 0u);
  EXPECT_EQ(b.usage.dense_flops, 4);
  EXPECT_EQ(b.usage.executed_flops, 2.5);
  EXPECT_EQ(b.usage.branches_skipped, 3u);
  EXPECT_EQ(b.usage.branches_total, 8u);
  EXPECT_EQ(step_executed, 6.5);
}


// ---- Prefix caching -------------------------------------------------------------------

TEST(KvBlockPoolTest, SharesByContentEvictsOldestUnreferencedAndNeverAReferencedBlock) {
  KvBlockPool pool(/*num_blocks=*/4, /*block_size=*/2, /*caching=*/true);
  const BlockHash root = RootBlockHash(nullptr);
  const std::vector<int32_t> tokens = {1, 2, 3, 4};
  const BlockHash h0 = ChainBlockHash(root, {1, 2});
  const BlockHash h1 = ChainBlockHash(h0, {3, 4});
  std::vector<int32_t> a;
  ASSERT_TRUE(pool.Allocate(2, &a));
  pool.Register(a[0], h0, root, {1, 2});
  pool.Register(a[1], h1, h0, {3, 4});
  EXPECT_EQ(pool.Match(std::vector<BlockHash>{h0, h1}, tokens, 2), a);
  EXPECT_EQ(pool.Match(std::vector<BlockHash>{h0, h1}, tokens, 1).size(), 1u) << "capped";
  EXPECT_TRUE(pool.Match(std::vector<BlockHash>{h0, h1}, std::vector<int32_t>{1, 2, 3, 5}, 2).size() == 1)
      << "the stored tokens are compared, not only the hash";
  EXPECT_NE(ChainBlockHash(root, {1, 2}), ChainBlockHash(root, {2, 1}));
  SequenceBudget budget;
  budget.experts_per_token = 1;
  EXPECT_NE(RootBlockHash(&budget), root) << "a budget that changes the K/V has its own chains";

  // A second holder shares both blocks; freeing one holder keeps them referenced.
  std::vector<int32_t> b = a;
  for (int32_t blk : b) pool.Acquire(blk);
  EXPECT_EQ(pool.refcount(a[0]), 2);
  std::vector<int32_t> a_copy = a;
  pool.Free(&a_copy);
  EXPECT_EQ(pool.refcount(a[0]), 1);
  EXPECT_EQ(pool.num_available(), 2);
  std::vector<int32_t> c;
  EXPECT_FALSE(pool.Allocate(3, &c)) << "referenced blocks are never taken";
  EXPECT_TRUE(c.empty());
  pool.Free(&b);
  EXPECT_EQ(pool.num_available(), 4) << "unreferenced cached blocks are available";
  EXPECT_EQ(pool.num_cached(), 2);
  EXPECT_EQ(pool.CheckInvariants(), "");
  // Never-used blocks go first, then the least recently freed cached one.
  ASSERT_TRUE(pool.Allocate(3, &c));
  EXPECT_EQ(pool.evictions(), 1u);
  EXPECT_EQ(pool.num_cached(), 1);
  EXPECT_TRUE(pool.Match(std::vector<BlockHash>{h0, h1}, tokens, 2).empty()) << "h0's block was evicted";
  EXPECT_EQ(pool.CheckInvariants(), "");
  pool.Free(&c);
  EXPECT_EQ(pool.CheckInvariants(), "");
}

TEST(StateSnapshotPoolTest, PublishesFindsEvictsLeastRecentlyUsedAndKeepsPinned) {
  StateSnapshotPool pool(2);
  const BlockHash x{1, 1}, y{2, 2};
  auto a = pool.Allocate();
  auto b = pool.Allocate();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(pool.Allocate()) << "both are being written";
  pool.Publish(*a, x);
  pool.Publish(*b, y);
  EXPECT_EQ(pool.Find(x), a);
  pool.Touch(*a);  // y is now the least recently used
  pool.Pin(*b);
  auto c = pool.Allocate();
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, *a) << "the pinned snapshot is not evicted, so the other one is";
  EXPECT_FALSE(pool.Find(x));
  pool.Publish(*c, y);  // y is already published: the duplicate is freed
  EXPECT_EQ(pool.num_published(), 1);
  pool.Unpin(*b);
  auto d = pool.Allocate();
  ASSERT_TRUE(d);
  pool.Release(*d);
  EXPECT_EQ(pool.evictions(), 1u);
  EXPECT_EQ(pool.CheckInvariants(), "");
}

// What executing plans would leave in the caches, with token ids standing in for K/V
// and for a recurrent state (the tokens it has consumed). Run() checks that every
// position a sequence treats as computed holds its own token and that its state slot
// holds exactly its computed prefix, then applies the plan's writes.
struct ShadowCaches {
  int32_t block_size = 4;
  std::map<int32_t, int32_t> kv;
  std::map<int32_t, std::vector<int32_t>> state;

  std::string Run(const StepPlan& plan) {
    auto prefix = [](const ScheduledSequence& s, int32_t n) {
      return std::vector<int32_t>(s.tokens.begin(), s.tokens.begin() + n);
    };
    auto slot_of = [&](const ScheduledSequence& s, int32_t p) {
      return s.block_table[p / block_size] * block_size + p % block_size;
    };
    for (const ScheduledSequence& s : plan.sequences) {
      for (int32_t p = 0; p < s.num_computed; ++p) {
        auto it = kv.find(slot_of(s, p));
        if (it == kv.end() || it->second != s.tokens[p]) {
          return absl::StrCat("sequence ", s.id, " reads a wrong K/V at position ", p);
        }
      }
      if (s.state_slot < 0) continue;
      if (s.restore_slot >= 0) state[s.state_slot] = state[s.restore_slot];
      if (s.state_fresh) state[s.state_slot].clear();
      if (state[s.state_slot] != prefix(s, s.num_computed)) {
        return absl::StrCat("sequence ", s.id, " starts from a state that is not its prefix of ",
                            s.num_computed);
      }
    }
    for (const ScheduledSequence& s : plan.sequences) {
      for (int32_t p = s.num_computed; p < s.context_len(); ++p) kv[slot_of(s, p)] = s.tokens[p];
      if (s.state_slot < 0) continue;
      if (s.checkpoint_slot >= 0) {
        if (s.checkpoint_len < 1 || s.checkpoint_len > s.num_tokens) return "checkpoint outside the segment";
        if (s.num_tokens > 1 && s.checkpoint_len % 64 != 0 && s.checkpoint_len != s.num_tokens) {
          return "a chunked checkpoint off the chunk grid";
        }
        state[s.checkpoint_slot] = prefix(s, s.num_computed + s.checkpoint_len);
      }
      state[s.state_slot] = prefix(s, s.context_len());
    }
    return "";
  }
};

SchedulerOptions CachingOptions(int32_t snapshots = 0, int32_t interval = 0) {
  SchedulerOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 512;
  o.enable_prefix_caching = true;
  o.state_snapshots = snapshots;
  o.state_snapshot_interval = interval;
  return o;
}

std::vector<int32_t> RandomTokens(std::mt19937& rng, size_t n) {
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % kVocab);
  return t;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Plans, checks and applies steps until idle; returns every plan.
std::vector<StepPlan> RunShadowed(Harness& h, ShadowCaches& shadow) {
  std::vector<StepPlan> plans;
  for (int i = 0; i < 10000 && h.scheduler->HasWork(); ++i) {
    StepPlan plan = h.scheduler->Schedule();
    EXPECT_EQ(shadow.Run(plan), "");
    h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
    EXPECT_EQ(h.scheduler->CheckCacheInvariants(), "");
    plans.push_back(std::move(plan));
  }
  EXPECT_FALSE(h.scheduler->HasWork());
  return plans;
}

TEST(SchedulerPrefixTest, DenseHitStartsPastTheSharedFullBlocks) {
  Harness h(CachingOptions(), /*num_blocks=*/64, /*block_size=*/4, /*slots=*/4, /*state_layers=*/0);
  ShadowCaches shadow;
  std::mt19937 rng(1);
  const std::vector<int32_t> prompt = RandomTokens(rng, 41);
  auto first = h.Submit(prompt, 5);
  RunShadowed(h, shadow);
  auto again = h.Submit(prompt, 5);
  std::vector<StepPlan> plans = RunShadowed(h, shadow);
  ASSERT_FALSE(plans.empty());
  const ScheduledSequence& s = plans[0].sequences.at(0);
  EXPECT_EQ(s.num_computed, 40) << "ten full blocks are shared; the last token is computed";
  EXPECT_EQ(s.num_tokens, 1);
  EXPECT_EQ(s.restore_slot, -1) << "no recurrent state on a dense model";
  const Result r1 = Read(*first), r2 = Read(*again);
  EXPECT_EQ(r1.tokens, r2.tokens);
  EXPECT_EQ(r1.usage.cached_tokens, 0);
  EXPECT_EQ(r2.usage.cached_tokens, 40);
  SchedulerStats st = h.scheduler->Stats();
  EXPECT_EQ(st.prefix_cache_queries, 82u);
  EXPECT_EQ(st.prefix_cache_hits, 40u);
  EXPECT_GT(st.cached_blocks, 10);
  EXPECT_EQ(st.free_blocks, st.total_blocks) << "cached blocks nobody holds are available";

  // The same tokens under a budget that changes the K/V share nothing.
  GenerationRequest budgeted;
  budgeted.prompt = prompt;
  budgeted.stopping.max_tokens = 2;
  budgeted.budget.experts_per_token = 1;
  auto third = h.Submit(std::move(budgeted));
  plans = RunShadowed(h, shadow);
  EXPECT_EQ(plans.at(0).sequences.at(0).num_computed, 0);
  EXPECT_EQ(Read(*third).usage.cached_tokens, 0);
}

TEST(SchedulerPrefixTest, HybridHitsNeedASnapshotAndBranchPointsGetOne) {
  Harness h(CachingOptions(/*snapshots=*/4), /*num_blocks=*/128, /*block_size=*/4, /*slots=*/4);
  ShadowCaches shadow;
  std::mt19937 rng(2);
  const std::vector<int32_t> system = RandomTokens(rng, 150);
  // The prefill checkpoints its end, rounded down to the grid (lcm(4, 64) = 64): 128.
  h.Submit(system, 2);
  std::vector<StepPlan> plans = RunShadowed(h, shadow);
  const ScheduledSequence& p1 = plans.at(0).sequences.at(0);
  EXPECT_EQ(p1.num_tokens, 150) << "one checkpoint inside the segment splits nothing";
  EXPECT_EQ(p1.checkpoint_len, 128);
  EXPECT_GE(p1.checkpoint_slot, 4) << "snapshots are the slots after the sequences' own";
  EXPECT_EQ(h.scheduler->Stats().state_snapshots, 1);

  // The same prompt again hits at the snapshot and restores it.
  auto again = h.Submit(system, 2);
  plans = RunShadowed(h, shadow);
  const ScheduledSequence& p2 = plans.at(0).sequences.at(0);
  EXPECT_EQ(p2.num_computed, 128);
  EXPECT_EQ(p2.restore_slot, p1.checkpoint_slot);
  EXPECT_FALSE(p2.state_fresh);
  EXPECT_EQ(Read(*again).usage.cached_tokens, 128);

  // Sharing only the first 100 tokens: the chain matches 25 blocks, but the only
  // snapshot is at 128, so nothing hits; the prefill takes one at the branch point (64).
  const std::vector<int32_t> branch = Concat({system.begin(), system.begin() + 100}, RandomTokens(rng, 40));
  h.Submit(branch, 1);
  plans = RunShadowed(h, shadow);
  const ScheduledSequence& p3 = plans.at(0).sequences.at(0);
  EXPECT_EQ(p3.num_computed, 0);
  EXPECT_EQ(p3.checkpoint_len, 64) << "the branch point comes before the prefill end (128)";
  EXPECT_EQ(p3.num_tokens, 64) << "one checkpoint a step: a chunk crossing two wanted points ends at the first";
  const ScheduledSequence& p3b = plans.at(1).sequences.at(0);
  EXPECT_EQ(p3b.num_computed, 64);
  EXPECT_EQ(p3b.num_tokens, 76);
  EXPECT_EQ(p3b.checkpoint_len, 64) << "the prefill end, 128";
  const std::vector<int32_t> branch2 = Concat({system.begin(), system.begin() + 100}, RandomTokens(rng, 40));
  auto fourth = h.Submit(branch2, 1);
  plans = RunShadowed(h, shadow);
  EXPECT_EQ(plans.at(0).sequences.at(0).num_computed, 64);
  EXPECT_EQ(Read(*fourth).usage.cached_tokens, 64);
}

TEST(SchedulerPrefixTest, ConversationTurnsHitTheSnapshotTakenWhileDecoding) {
  Harness h(CachingOptions(/*snapshots=*/4), /*num_blocks=*/128, /*block_size=*/4, /*slots=*/4);
  ShadowCaches shadow;
  std::mt19937 rng(3);
  const std::vector<int32_t> prompt = RandomTokens(rng, 70);
  auto turn1 = h.Submit(prompt, 70);
  std::vector<StepPlan> plans = RunShadowed(h, shadow);
  bool decode_checkpoint = false;
  for (const StepPlan& plan : plans) {
    for (const ScheduledSequence& s : plan.sequences) {
      if (s.decode && s.checkpoint_slot >= 0) {
        EXPECT_EQ(s.num_computed + 1, 128) << "decode checkpoints end grid cells";
        EXPECT_EQ(s.checkpoint_len, 1);
        decode_checkpoint = true;
      }
    }
  }
  EXPECT_TRUE(decode_checkpoint);
  const Result r1 = Read(*turn1);
  ASSERT_EQ(r1.tokens.size(), 70u);
  // The next turn re-sends prompt + answer + new tokens: it hits where the decode left
  // its snapshot (139 computed tokens, rounded down to 128).
  auto turn2 = h.Submit(Concat(Concat(prompt, r1.tokens), RandomTokens(rng, 10)), 3);
  plans = RunShadowed(h, shadow);
  EXPECT_EQ(plans.at(0).sequences.at(0).num_computed, 128);
  EXPECT_GE(plans.at(0).sequences.at(0).restore_slot, 4);
  EXPECT_EQ(Read(*turn2).usage.cached_tokens, 128);
}

TEST(SchedulerPrefixTest, HybridPromptChunksKeepToTheSnapshotGrid) {
  SchedulerOptions o = CachingOptions(/*snapshots=*/4, /*interval=*/128);
  o.max_num_batched_tokens = 100;
  Harness h(o, /*num_blocks=*/128, /*block_size=*/4, /*slots=*/4);
  ShadowCaches shadow;
  std::mt19937 rng(4);
  h.Submit(RandomTokens(rng, 300), 1);
  std::vector<StepPlan> plans = RunShadowed(h, shadow);
  std::vector<int32_t> ends;
  for (const StepPlan& plan : plans) {
    for (const ScheduledSequence& s : plan.sequences) {
      if (!s.decode) ends.push_back(s.context_len());
    }
  }
  // Chunks of at most 100 tokens, each non-final one ending on a multiple of 64.
  EXPECT_EQ(ends, (std::vector<int32_t>{64, 128, 192, 256, 300}));
  EXPECT_EQ(h.scheduler->Stats().state_snapshots, 2) << "at the interval (128) and the prefill end (256)";
}

TEST(SchedulerPrefixTest, SixtyFourStreamsSharingPromptsKeepEveryInvariant) {
  SchedulerOptions o = CachingOptions(/*snapshots=*/6, /*interval=*/64);
  o.max_num_seqs = 12;
  o.max_num_batched_tokens = 160;
  o.max_queue = 64;
  o.max_model_len = 400;
  Harness h(o, /*num_blocks=*/120, /*block_size=*/4, /*slots=*/12);
  ShadowCaches shadow;
  std::mt19937 rng(14);
  std::vector<std::vector<int32_t>> systems;
  for (int i = 0; i < 4; ++i) systems.push_back(RandomTokens(rng, 60 + 30 * i));
  struct Stream {
    std::shared_ptr<RequestChannel> channel;
    std::vector<int32_t> prompt;
    Result result;
    bool done = false;
  };
  std::vector<Stream> streams;
  std::vector<std::vector<int32_t>> finished_histories;
  int live = 0;
  auto collect = [&] {
    for (Stream& st : streams) {
      if (st.done) continue;
      RequestEvent e;
      while (st.channel->TryPop(&e)) {
        st.result.tokens.insert(st.result.tokens.end(), e.tokens.begin(), e.tokens.end());
        if (e.final) {
          ++st.result.finals;
          st.result.status = e.status;
          st.done = true;
          --live;
          if (e.status.ok()) finished_histories.push_back(Concat(st.prompt, st.result.tokens));
        }
      }
    }
  };
  for (int op = 0; op < 10000; ++op) {
    const int kind = rng() % 10;
    if (kind < 3 && live < 64) {
      std::vector<int32_t> prompt;
      if (!finished_histories.empty() && rng() % 3 == 0) {
        prompt = finished_histories[rng() % finished_histories.size()];  // the next turn
      } else {
        prompt = systems[rng() % systems.size()];
      }
      prompt = Concat(prompt, RandomTokens(rng, 1 + rng() % 30));
      if (prompt.size() > 300) prompt.resize(300);
      GenerationRequest r;
      r.prompt = prompt;
      r.stopping.max_tokens = 1 + rng() % 40;
      r.priority = static_cast<int32_t>(rng() % 3);
      absl::Status status;
      auto ch = h.Submit(std::move(r), &status);
      if (ch) {
        streams.push_back({ch, prompt, {}, false});
        ++live;
      }
    } else if (kind < 4 && !streams.empty()) {
      streams[rng() % streams.size()].channel->Cancel();
    } else {
      StepPlan plan = h.scheduler->Schedule();
      ASSERT_EQ(shadow.Run(plan), "") << "op " << op;
      h.scheduler->Apply(plan, FakeOutput(plan, absl::ZeroDuration()));
      ASSERT_EQ(h.scheduler->CheckCacheInvariants(), "") << "op " << op;
    }
    if (op % 50 == 0) collect();
  }
  RunShadowed(h, shadow);
  collect();
  int ok = 0;
  for (const Stream& st : streams) {
    EXPECT_EQ(st.result.finals, 1) << "every request ends exactly once";
    if (!st.result.status.ok()) continue;
    ++ok;
    // The fake model's token is the last input token + 1: what was cached never shows.
    int32_t expect = st.prompt.back();
    for (int32_t t : st.result.tokens) {
      expect = (expect + 1) % kVocab;
      ASSERT_EQ(t, expect);
    }
  }
  const SchedulerStats s = h.scheduler->Stats();
  EXPECT_EQ(s.free_blocks, s.total_blocks);
  EXPECT_EQ(s.free_state_slots, s.total_state_slots);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_GT(ok, 200);
  EXPECT_GT(s.prefix_cache_hits, s.prefix_cache_queries / 10) << "shared prompts hit";
  EXPECT_GT(s.block_evictions, 0u) << "memory pressure evicted cached blocks";
  EXPECT_GT(s.snapshot_evictions, 0u);
  EXPECT_GT(s.preemptions, 0u);
}

}  // namespace
}  // namespace sluice::engine
