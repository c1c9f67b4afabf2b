// The model runner with a fake model (no math): how a plan is packed into the ragged
// batch (tokens, positions, KV slots, block tables, state slots, budgets, logit rows),
// sampling through per-sequence samplers, costs, errors, and the whole step
// (Schedule → Execute → Apply) driven the way the engine thread drives it.
#include "engine/runner/model_runner.h"

#include <memory>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "engine/scheduler/scheduler.h"
#include "gtest/gtest.h"

namespace sluice::engine {
namespace {

constexpr int64_t kVocab = 32;

// Puts a peak on (last input token + 1) % vocab for every logit row, reports a cost of
// one saved FLOP per sequence, and records every batch. Fails on request.
class FakeModel : public LanguageModel {
 public:
  FakeModel() {
    config_.model_type = "fake";
    config_.vocab_size = kVocab;
    config_.num_layers = 1;
  }
  const ModelConfig& config() const override { return config_; }
  absl::Status Forward(const ForwardBatch& batch, PagedKvCache*, RecurrentStateCache*,
                       std::vector<float>* logits) override {
    batches.push_back(batch);
    if (!fail.ok()) return fail;
    logits->assign(batch.logit_rows.size() * kVocab, 0.f);
    if (short_logits) logits->resize(logits->size() - 1);
    for (size_t r = 0; r < batch.logit_rows.size(); ++r) {
      const int32_t next = (batch.token_ids[batch.logit_rows[r]] + 1) % kVocab;
      (*logits)[r * kVocab + next] = 10.f;
    }
    return absl::OkStatus();
  }
  absl::Status ForwardWithCosts(const ForwardBatch& batch, PagedKvCache* kv,
                                RecurrentStateCache* state, std::vector<float>* logits,
                                std::vector<SequenceCost>* costs) override {
    costs->assign(batch.sequences.size(), SequenceCost{});
    for (SequenceCost& c : *costs) c.saved_flops = 1;
    return Forward(batch, kv, state, logits);
  }
  double DenseFlops(int64_t, int64_t tokens) const override { return static_cast<double>(tokens); }

  std::vector<ForwardBatch> batches;
  absl::Status fail;
  bool short_logits = false;

 private:
  ModelConfig config_;
};

KvCacheShape KvShape(int32_t num_blocks, int32_t block_size) {
  KvCacheShape kv;
  kv.num_layers = 0;
  kv.num_blocks = num_blocks;
  kv.block_size = block_size;
  return kv;
}

StateCacheShape StateShape(int32_t slots) {
  StateCacheShape st;
  st.num_layers = 1;
  st.num_slots = slots;
  st.conv_dim = 1;
  st.conv_tail = 1;
  st.num_value_heads = 1;
  st.key_head_dim = 1;
  st.value_head_dim = 1;
  return st;
}

std::unique_ptr<ModelRunner> MakeRunner(FakeModel* model, int32_t num_blocks = 64,
                                        int32_t block_size = 4, int32_t slots = 8) {
  return std::make_unique<ModelRunner>(
      model, *PagedKvCache::Create(KvShape(num_blocks, block_size), kernels::Device::kCpu),
      *RecurrentStateCache::Create(StateShape(slots), kernels::Device::kCpu));
}

// A hand-built two-sequence plan: a decode at position 5 of a sequence whose blocks
// are {7, 2}, and a 3-token prompt chunk starting a fresh sequence with a budget.
struct TwoSequencePlan {
  std::vector<int32_t> decode_tokens{1, 2, 3, 4, 5, 6};
  std::vector<int32_t> decode_blocks{7, 2};
  std::vector<int32_t> prompt_tokens{9, 8, 7, 6, 5};
  std::vector<int32_t> prompt_blocks{4, 5};
  SamplingOptions greedy;
  SequenceBudget budget;
  StepPlan plan;

  TwoSequencePlan() {
    budget.skip_ratio = 0.25f;
    plan.block_size = 4;
    ScheduledSequence& d = plan.sequences.emplace_back();
    d.id = 11;
    d.tokens = decode_tokens;
    d.num_computed = 5;
    d.num_tokens = 1;
    d.block_table = decode_blocks;
    d.state_slot = 3;
    d.decode = true;
    d.sample = true;
    d.num_generated = 2;
    d.sampling = &greedy;
    d.logprobs_top_n = 2;
    ScheduledSequence& p = plan.sequences.emplace_back();
    p.id = 12;
    p.tokens = prompt_tokens;
    p.num_computed = 0;
    p.num_tokens = 3;
    p.block_table = prompt_blocks;
    p.state_slot = 0;
    p.state_fresh = true;
    p.budget = &budget;
    p.sampling = &greedy;
    plan.num_tokens = 4;
    plan.decodes = 1;
    plan.prompt_tokens = 3;
  }
};

TEST(ModelRunnerTest, PacksThePlanIntoTheRaggedBatch) {
  TwoSequencePlan t;
  ForwardBatch batch;
  batch.token_ids = {99};  // stale contents are cleared
  PackForwardBatch(t.plan, &batch);
  EXPECT_EQ(batch.token_ids, (std::vector<int32_t>{6, 9, 8, 7}));
  EXPECT_EQ(batch.positions, (std::vector<int32_t>{5, 0, 1, 2}));
  // Position 5 of blocks {7, 2}: block 2, offset 1; positions 0-2 of block 4.
  EXPECT_EQ(batch.slot_mapping, (std::vector<int32_t>{2 * 4 + 1, 16, 17, 18}));
  ASSERT_EQ(batch.sequences.size(), 2u);
  EXPECT_EQ(batch.sequences[0].query_start, 0);
  EXPECT_EQ(batch.sequences[0].query_len, 1);
  EXPECT_EQ(batch.sequences[0].context_len, 6);
  EXPECT_EQ(batch.sequences[0].block_table, t.decode_blocks.data()) << "borrowed, not copied";
  EXPECT_EQ(batch.sequences[1].query_start, 1);
  EXPECT_EQ(batch.sequences[1].query_len, 3);
  EXPECT_EQ(batch.sequences[1].context_len, 3);
  EXPECT_EQ(batch.state_slots, (std::vector<int32_t>{3, 0}));
  EXPECT_EQ(batch.state_fresh, (std::vector<uint8_t>{0, 1}));
  EXPECT_EQ(batch.budgets, (std::vector<const SequenceBudget*>{nullptr, &t.budget}));
  EXPECT_EQ(batch.logit_rows, (std::vector<int32_t>{0}))
      << "the chunk stops short of its prompt's end";
}

TEST(ModelRunnerTest, ExecutesSamplesAndReportsCosts) {
  FakeModel model;
  auto runner = MakeRunner(&model);
  TwoSequencePlan t;
  t.plan.sequences[1].num_tokens = 5;  // the whole prompt now: it samples too
  t.plan.sequences[1].sample = true;
  t.plan.num_tokens = 6;
  const StepOutput out = runner->Execute(t.plan);
  ASSERT_TRUE(out.status.ok()) << out.status;
  ASSERT_EQ(model.batches.size(), 1u);
  EXPECT_EQ(model.batches[0].logit_rows, (std::vector<int32_t>{0, 5}));
  ASSERT_EQ(out.sequences.size(), 2u);
  EXPECT_EQ(out.sequences[0].token, 7);
  EXPECT_EQ(out.sequences[1].token, 6);
  EXPECT_EQ(out.sequences[0].logprob.token_id, 7);
  EXPECT_EQ(out.sequences[0].logprob.top.size(), 2u) << "top-2 logprobs were asked for";
  EXPECT_LT(out.sequences[0].logprob.logprob, 0.f);
  EXPECT_TRUE(out.sequences[1].logprob.top.empty());
  for (const SequenceOutput& o : out.sequences) {
    EXPECT_TRUE(o.has_cost);
    EXPECT_EQ(o.cost.saved_flops, 1);
  }
  EXPECT_NE(out.start, absl::InfinitePast());
  EXPECT_GE(out.forward, absl::ZeroDuration());
  EXPECT_EQ(runner->num_samplers(), 2u);
  // A sequence's sampler lives until a plan releases it.
  StepPlan release;
  release.released = {11};
  EXPECT_TRUE(runner->Execute(release).sequences.empty());
  EXPECT_EQ(model.batches.size(), 1u) << "an empty plan runs nothing";
  EXPECT_EQ(runner->num_samplers(), 1u);
}

TEST(ModelRunnerTest, ForwardErrorsComeBackAsTheOutputStatus) {
  FakeModel model;
  auto runner = MakeRunner(&model);
  TwoSequencePlan t;
  model.fail = absl::ResourceExhaustedError("out of memory");
  StepOutput out = runner->Execute(t.plan);
  EXPECT_EQ(out.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(out.sequences.empty());
  model.fail = absl::OkStatus();
  model.short_logits = true;
  out = runner->Execute(t.plan);
  EXPECT_EQ(out.status.code(), absl::StatusCode::kInternal) << "a logits buffer short of its rows";
  EXPECT_TRUE(out.sequences.empty());
}

// The engine loop's step with a fake model: plan, execute, apply.
struct Loop {
  Loop(SchedulerOptions o, int32_t num_blocks) {
    o.block_size = 4;
    if (o.max_model_len == 0) o.max_model_len = 1 << 20;
    scheduler = std::make_unique<Scheduler>(o, &model, KvShape(num_blocks, 4), StateShape(8));
    runner = MakeRunner(&model, num_blocks, 4, 8);
  }
  std::shared_ptr<RequestChannel> Submit(std::vector<int32_t> prompt, int32_t max_tokens,
                                         int32_t priority = 0) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.stopping.max_tokens = max_tokens;
    r.priority = priority;
    auto ch = std::make_shared<RequestChannel>();
    EXPECT_TRUE(scheduler->Enqueue(std::move(r), ch).ok());
    return ch;
  }
  void RunToIdle() {
    for (int i = 0; i < 10000 && scheduler->HasWork(); ++i) {
      const StepPlan plan = scheduler->Schedule();
      const StepOutput out = runner->Execute(plan);
      scheduler->Apply(plan, out);
    }
    ASSERT_FALSE(scheduler->HasWork());
  }
  FakeModel model;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<ModelRunner> runner;
};

std::vector<int32_t> Tokens(RequestChannel& ch, absl::Status* status) {
  std::vector<int32_t> tokens;
  RequestEvent e;
  while (ch.TryPop(&e)) {
    tokens.insert(tokens.end(), e.tokens.begin(), e.tokens.end());
    if (e.final) *status = e.status;
  }
  return tokens;
}

TEST(ModelRunnerTest, TheThreePartStepGeneratesThroughPreemption) {
  SchedulerOptions o;
  o.max_num_seqs = 3;
  o.max_num_batched_tokens = 64;
  Loop loop(o, /*num_blocks=*/6);  // too few blocks for all three as they grow
  auto high = loop.Submit({1, 2, 3, 4}, 8, 1);
  auto old_low = loop.Submit({2, 3, 4, 5}, 8);
  auto new_low = loop.Submit({3, 4, 5, 6}, 8);
  loop.RunToIdle();
  absl::Status s;
  EXPECT_EQ(Tokens(*high, &s), (std::vector<int32_t>{5, 6, 7, 8, 9, 10, 11, 12}));
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(Tokens(*old_low, &s), (std::vector<int32_t>{6, 7, 8, 9, 10, 11, 12, 13}));
  EXPECT_EQ(Tokens(*new_low, &s), (std::vector<int32_t>{7, 8, 9, 10, 11, 12, 13, 14}));
  EXPECT_GT(loop.scheduler->Stats().preemptions, 0u);
  EXPECT_EQ(loop.scheduler->Stats().free_blocks, 6);
  // The released sequences' samplers are dropped by the plan that follows their end.
  loop.runner->Execute(loop.scheduler->Schedule());
  EXPECT_EQ(loop.runner->num_samplers(), 0u);
}

TEST(ModelRunnerTest, AForwardErrorEndsTheStepsRequestsAndTheLoopGoesOn) {
  SchedulerOptions o;
  o.max_num_seqs = 2;
  o.max_num_batched_tokens = 64;
  Loop loop(o, 64);
  auto a = loop.Submit({1}, 4);
  auto b = loop.Submit({2}, 4);
  auto later = loop.Submit({3}, 2);
  loop.model.fail = absl::InternalError("kernel blew up");
  {
    const StepPlan plan = loop.scheduler->Schedule();
    loop.scheduler->Apply(plan, loop.runner->Execute(plan));
  }
  loop.model.fail = absl::OkStatus();
  loop.RunToIdle();
  absl::Status s;
  EXPECT_TRUE(Tokens(*a, &s).empty());
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("kernel blew up"), absl::string_view::npos) << s;
  EXPECT_TRUE(Tokens(*b, &s).empty());
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(Tokens(*later, &s), (std::vector<int32_t>{4, 5}));
  EXPECT_TRUE(s.ok()) << s;
  const SchedulerStats stats = loop.scheduler->Stats();
  EXPECT_EQ(stats.free_blocks, stats.total_blocks);
  EXPECT_EQ(stats.free_state_slots, stats.total_state_slots);
}

}  // namespace
}  // namespace sluice::engine
