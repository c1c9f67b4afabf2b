// Scheduler policy with a fake model (no math), driven step by step on the test
// thread: admission order, chunked prefill under the token budget, preemption order,
// cancellation at every stage, deadlines, queue limits, and the accounting invariant
// (every request ends exactly once; blocks and slots all return) over 10,000 random
// operations.
#include "engine/scheduler/scheduler.h"

#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace sluice::engine {
namespace {

constexpr int64_t kVocab = 32;

// Emits token (last input token + 1) % vocab and records every batch it sees.
class FakeModel : public LanguageModel {
 public:
  FakeModel() {
    config_.model_type = "fake";
    config_.vocab_size = kVocab;
    config_.num_layers = 1;
    config_.eos_token_ids = {};
  }
  const ModelConfig& config() const override { return config_; }
  absl::Status Forward(const ForwardBatch& batch, PagedKvCache*, RecurrentStateCache*,
                       std::vector<float>* logits) override {
    batches.push_back(batch);
    if (per_token_delay > absl::ZeroDuration()) absl::SleepFor(per_token_delay * batch.num_tokens());
    logits->assign(batch.logit_rows.size() * kVocab, 0.f);
    for (size_t r = 0; r < batch.logit_rows.size(); ++r) {
      const int32_t next = (batch.token_ids[batch.logit_rows[r]] + 1) % kVocab;
      (*logits)[r * kVocab + next] = 10.f;
    }
    return absl::OkStatus();
  }
  double DenseFlops(int64_t past, int64_t tokens) const override { return static_cast<double>(tokens); }
  absl::Duration per_token_delay = absl::ZeroDuration();  // simulated cost of a step

  std::vector<ForwardBatch> batches;

 private:
  ModelConfig config_;
};

struct Harness {
  explicit Harness(SchedulerOptions options, int32_t num_blocks = 64, int32_t block_size = 4,
                   int32_t slots = 8) {
    KvCacheShape kv;
    kv.num_layers = 0;  // the fake model reads nothing; only the accounting matters
    kv.num_blocks = num_blocks;
    kv.block_size = block_size;
    StateCacheShape st;
    st.num_layers = 1;
    st.num_slots = slots;
    st.conv_dim = 1;
    st.conv_tail = 1;
    st.num_value_heads = 1;
    st.key_head_dim = 1;
    st.value_head_dim = 1;
    options.block_size = block_size;
    if (options.max_model_len == 0) options.max_model_len = 1 << 20;
    scheduler = std::make_unique<Scheduler>(options, &model, *PagedKvCache::Create(kv, kernels::Device::kCpu),
                                            *RecurrentStateCache::Create(st, kernels::Device::kCpu));
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
    auto ch = std::make_shared<RequestChannel>();
    absl::Status s = scheduler->Enqueue(std::move(r), ch);
    if (status != nullptr) *status = s;
    return s.ok() ? ch : nullptr;
  }

  void RunToIdle(int max_steps = 10000) {
    for (int i = 0; i < max_steps && scheduler->HasWork(); ++i) scheduler->Step();
    ASSERT_FALSE(scheduler->HasWork()) << "scheduler did not drain";
  }

  FakeModel model;
  std::unique_ptr<Scheduler> scheduler;
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
std::vector<int32_t> FirstPrefills(const FakeModel& m) {
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
  EXPECT_EQ(FirstPrefills(h.model), (std::vector<int32_t>{2, 3, 1}));
  for (auto* ch : {a.get(), b.get(), c.get()}) EXPECT_EQ(Read(*ch).finals, 1);
}

TEST(SchedulerTest, ChunkedPrefillKeepsDecodesFlowingUnderTheTokenBudget) {
  SchedulerOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 8;
  Harness h(o);
  auto decoder = h.Submit({5}, 20);
  h.scheduler->Step();  // prefill of the short prompt; it decodes from now on
  auto longer = h.Submit(std::vector<int32_t>(20, 7), 1);
  std::vector<int32_t> prompt_chunks;
  for (int i = 0; i < 5; ++i) {
    const size_t before = h.model.batches.size();
    h.scheduler->Step();
    ASSERT_EQ(h.model.batches.size(), before + 1);
    const ForwardBatch& b = h.model.batches.back();
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
  h.scheduler->Step();  // the long prompt starts: 16 of its 100 tokens
  auto shorter = h.Submit(std::vector<int32_t>(10, 4), 1);
  h.scheduler->Step();
  const ForwardBatch& b = h.model.batches.back();
  ASSERT_EQ(b.sequences.size(), 2u);
  EXPECT_EQ(b.token_ids[b.sequences[0].query_start], 4) << "the shorter prompt goes first";
  EXPECT_EQ(b.sequences[0].query_len, 10);
  EXPECT_EQ(b.sequences[1].query_len, 6) << "the older prompt still gets the rest";
  // Even when short prompts would fill the whole budget, the oldest one gets a token.
  std::vector<std::shared_ptr<RequestChannel>> many;
  for (int i = 0; i < 3; ++i) many.push_back(h.Submit(std::vector<int32_t>(16, 5), 1));
  h.scheduler->Step();
  const ForwardBatch& c = h.model.batches.back();
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
  h.model.per_token_delay = absl::Milliseconds(1);
  auto decoder = h.Submit({5}, 60);
  h.scheduler->Step();
  auto longer = h.Submit(std::vector<int32_t>(1000, 7), 1);
  for (int i = 0; i < 40; ++i) h.scheduler->Step();
  // After adapting, steps that carry the decode stay near the target.
  int late_steps = 0, over = 0;
  for (size_t b = h.model.batches.size() - 10; b < h.model.batches.size(); ++b) {
    const ForwardBatch& batch = h.model.batches[b];
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
    model.per_token_delay = absl::Milliseconds(2);
  }
  std::vector<std::shared_ptr<RequestChannel>> Decoders(int n, int32_t max_tokens) {
    std::vector<std::shared_ptr<RequestChannel>> out;
    for (int i = 0; i < n; ++i) out.push_back(Submit({5}, max_tokens));
    return out;
  }
  // The fewest and most prompt tokens (all but `decodes` of a step) in the last 10 steps.
  std::pair<int, int> RecentPromptTokens(int decodes) const {
    int lo = 1 << 30, hi = 0;
    for (size_t b = model.batches.size() - 10; b < model.batches.size(); ++b) {
      const int prompt = model.batches[b].num_tokens() - decodes;
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
    for (int i = 0; i < 4; ++i) h.scheduler->Step();  // decode-only steps: the estimate
    if (factor > 0) {
      EXPECT_GE(h.scheduler->Stats().itl_target_ms, 1.5 * 16);
    } else {
      EXPECT_EQ(h.scheduler->Stats().itl_target_ms, 0);
    }
    channels.push_back(h.Submit(std::vector<int32_t>(2000, 7), 1));
    for (int i = 0; i < 30; ++i) h.scheduler->Step();
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
  for (int i = 0; i < 4; ++i) h.scheduler->Step();
  EXPECT_LT(h.scheduler->Stats().itl_target_ms, 1.5 * 16) << "learnt on a 1-decode step";
  for (auto& c : h.Decoders(7, 400)) channels.push_back(c);
  channels.push_back(h.Submit(std::vector<int32_t>(4000, 7), 1));
  for (int i = 0; i < 40; ++i) h.scheduler->Step();
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
  for (int i = 0; i < 4; ++i) h.scheduler->Step();
  EXPECT_GE(h.scheduler->Stats().itl_target_ms, 1.5 * 16);
  for (int i = 1; i < 8; ++i) channels[i]->Cancel();
  channels.push_back(h.Submit(std::vector<int32_t>(3000, 7), 1));
  for (int i = 0; i < 80; ++i) h.scheduler->Step();
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
  for (int i = 0; i < 4; ++i) h.scheduler->Step();
  channels.push_back(h.Submit(std::vector<int32_t>(3000, 7), 1));
  for (int i = 0; i < 30; ++i) h.scheduler->Step();
  EXPECT_LE(h.RecentPromptTokens(4).second, 3) << "the long prompt alone is throttled";
  std::vector<std::shared_ptr<RequestChannel>> burst;
  for (int i = 0; i < 4; ++i) burst.push_back(h.Submit(std::vector<int32_t>(8, 3), 1));
  for (int i = 0; i < 12; ++i) h.scheduler->Step();
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
  h.scheduler->Step();
  queued->Cancel();
  h.scheduler->Step();
  EXPECT_EQ(Read(*queued).status.code(), absl::StatusCode::kCancelled);
  // Cancel during a chunked prefill (20 tokens, 8 per step minus the decodes).
  other->Cancel();
  h.scheduler->Step();
  auto prefill = h.Submit(std::vector<int32_t>(20, 4), 5);
  h.scheduler->Step();
  prefill->Cancel();
  h.scheduler->Step();
  Result rp = Read(*prefill);
  EXPECT_EQ(rp.status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(rp.tokens.empty());
  // Cancel before the step that would produce the last token.
  auto last = h.Submit({9}, 2);
  h.scheduler->Step();  // prefill → first token
  last->Cancel();
  h.scheduler->Step();
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
  for (const auto& b : h.model.batches) {
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
      h.scheduler->Step();
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

}  // namespace
}  // namespace sluice::engine
