// Per-request compute budgets (ComputeBudget): GateSkip against a PyTorch reference,
// experts_per_token against transformers at k = 1, skip_layers and the attention-gate
// floor, mixed budgets in one batch, the accounting, and validation.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/time/clock.h"
#include "engine/engine.h"
#include "engine/model/causal_lm.h"
#include "engine/weights/safetensors.h"
#include "gtest/gtest.h"
#include "tests/golden/fixture.h"

namespace sluice {
namespace {

using engine::CausalLm;
using engine::ComputeBudget;
using engine::SequenceBudget;
using engine::SequenceCost;

std::unique_ptr<CausalLm> LoadModel(const std::string& name) {
  auto model = CausalLm::Load(testing::ModelFixtureDir(name), kernels::Device::kCpu);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

std::vector<float> ReadLogits(const std::string& fixture, const std::string& key) {
  auto file = engine::SafetensorsFile::Open(testing::ModelFixtureDir(fixture) + "/golden_logits.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  auto t = (*file)->Get(key);
  EXPECT_TRUE(t.ok()) << key << ": " << t.status();
  if (!t.ok()) return {};
  return std::vector<float>(t->data<float>(), t->data<float>() + t->numel());
}

SequenceBudget Resolve(const CausalLm& model, const ComputeBudget& b) {
  EXPECT_TRUE(model.ValidateBudget(b).ok()) << model.ValidateBudget(b);
  return engine::ResolveBudget(b, model.config().num_layers);
}

ComputeBudget SkipRatio(float r) {
  ComputeBudget b;
  b.skip_ratio = r;
  return b;
}

using BatchResult = testing::PrefillResult;

BatchResult RunBatch(CausalLm& model, const std::vector<const std::vector<int32_t>*>& prompts,
                     const std::vector<const SequenceBudget*>& budgets = {}) {
  BatchResult out = testing::PrefillBatch(model, prompts, budgets);
  EXPECT_TRUE(out.status.ok()) << out.status;
  return out;
}

float MaxDiff(const float* got, const std::vector<float>& want) {
  float worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  return worst;
}

// Prefill N, then decode token by token to M, each call a separate forward: the logits
// of all positions, concatenated.
std::vector<float> PrefillThenDecode(CausalLm& model, const std::vector<int32_t>& ids, int32_t prefill,
                                     const SequenceBudget* budget) {
  absl::StatusOr<std::vector<float>> all = testing::FeedInPieces(model, ids, {prefill}, budget);
  EXPECT_TRUE(all.ok()) << all.status();
  return all.ok() ? *std::move(all) : std::vector<float>();
}

// ---- GateSkip -------------------------------------------------------------------------

constexpr const char* kGateSkip = "qwen3_next_gateskip_f32";
const std::pair<const char*, float> kRatios[] = {{"r0", 0.f}, {"r25", 0.25f}, {"r50", 0.5f}};

TEST(GateSkipTest, PrefillLogitsMatchThePyTorchReference) {
  auto model = LoadModel(kGateSkip);
  ASSERT_NE(model, nullptr);
  ASSERT_TRUE(model->has_residual_gates());
  auto fixture = testing::LoadGoldenFixture(kGateSkip);
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  for (size_t i = 0; i < fixture->prompts.size(); ++i) {
    const auto& ids = fixture->prompts[i].ids;
    for (const auto& [key, r] : kRatios) {
      SequenceBudget budget = Resolve(*model, SkipRatio(r));
      BatchResult got = RunBatch(*model, {&ids}, {&budget});
      std::vector<float> want = ReadLogits(kGateSkip, std::string("logits_") + key + "." + std::to_string(i));
      ASSERT_EQ(got.logits.size(), want.size());
      EXPECT_LE(MaxDiff(got.logits.data(), want), 1e-4f) << "prompt " << ids.size() << " at r=" << r;
    }
  }
}

TEST(GateSkipTest, ABatchMixingSkipRatiosHonoursEachRow) {
  auto model = LoadModel(kGateSkip);
  ASSERT_NE(model, nullptr);
  auto fixture = testing::LoadGoldenFixture(kGateSkip);
  ASSERT_TRUE(fixture.ok());
  std::vector<const std::vector<int32_t>*> prompts;
  std::vector<SequenceBudget> budgets;
  for (size_t i = 0; i < fixture->prompts.size(); ++i) {
    prompts.push_back(&fixture->prompts[i].ids);
    budgets.push_back(Resolve(*model, SkipRatio(kRatios[(i + 1) % 3].second)));
  }
  std::vector<const SequenceBudget*> ptrs;
  for (auto& b : budgets) ptrs.push_back(b.empty() ? nullptr : &b);
  BatchResult got = RunBatch(*model, prompts, ptrs);
  size_t offset = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto want = ReadLogits(kGateSkip, std::string("logits_") + kRatios[(i + 1) % 3].first + "." + std::to_string(i));
    EXPECT_LE(MaxDiff(got.logits.data() + offset, want), 1e-4f) << "prompt " << i;
    offset += want.size();
  }
  EXPECT_EQ(offset, got.logits.size());
}

TEST(GateSkipTest, ExecutedBranchFlopsFollowTheSkipRatio) {
  auto model = LoadModel(kGateSkip);
  ASSERT_NE(model, nullptr);
  auto fixture = testing::LoadGoldenFixture(kGateSkip);
  ASSERT_TRUE(fixture.ok());
  const auto& ids = fixture->prompts.back().ids;  // 130 tokens
  const int64_t t = static_cast<int64_t>(ids.size());
  const auto& c = model->config();
  const double lm_head = 2.0 * c.hidden_size * c.vocab_size;
  // Branch FLOPs: the mixers and FFNs (f in h + g ⊙ f(x)); the LM head and the gates,
  // which run for every token since they make the decision, are not branch FLOPs.
  const double branch_flops = model->DenseFlops(0, t) - lm_head - t * model->GateFlopsPerToken();
  for (float r : {0.25f, 0.5f}) {
    SequenceBudget budget = Resolve(*model, SkipRatio(r));
    BatchResult got = RunBatch(*model, {&ids}, {&budget});
    const SequenceCost& cost = got.costs[0];
    const int64_t per_branch = static_cast<int64_t>(std::floor(r * t));
    EXPECT_EQ(cost.branches_total, static_cast<uint64_t>(2 * c.num_layers * t));
    EXPECT_EQ(cost.branches_skipped, static_cast<uint64_t>(2 * c.num_layers * per_branch));
    const double executed = (branch_flops - cost.saved_flops) / branch_flops;
    EXPECT_NEAR(executed, 1.0 - r, 0.05) << "r=" << r;
    std::printf("r=%.2f: executed fraction of branch FLOPs %.4f\n", r, executed);
  }
}

TEST(GateSkipTest, DecodeUsesCalibratedThresholds) {
  auto model = LoadModel(kGateSkip);
  ASSERT_NE(model, nullptr);
  EXPECT_NE(model->calibration_source().find("pseudo-random"), std::string::npos) << model->calibration_source();
  // Thresholds grow with the ratio, and r = 0 never skips.
  EXPECT_EQ(model->DecodeThreshold(0, 0, 0.f), 0.f);
  EXPECT_LT(model->DecodeThreshold(0, 0, 0.25f), model->DecodeThreshold(0, 0, 0.5f));
  // Through the engine: prefill, then decode 48 tokens at r = 0.5.
  engine::EngineOptions options;
  options.model_dir = testing::ModelFixtureDir(kGateSkip);
  options.kv_cache_memory = 8 << 20;
  auto engine = engine::Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  engine::GenerationRequest request;
  request.prompt = {5, 9, 17, 33, 65, 129, 257, 3, 7, 11, 13, 19, 23, 29, 31, 37};
  request.stopping.max_tokens = 48;
  request.stopping.ignore_eos = true;
  request.budget.skip_ratio = 0.5f;
  auto channel = std::make_shared<engine::RequestChannel>();
  ASSERT_TRUE((*engine)->Submit(request, channel).ok());
  engine::RequestEvent event;
  engine::UsageStats usage;
  while (channel->PopWait(&event, absl::Now() + absl::Seconds(60))) {
    if (event.final) {
      ASSERT_TRUE(event.status.ok()) << event.status;
      usage = event.usage;
      break;
    }
  }
  // 16 prompt rows (8 skipped per branch) and 47 decode rows.
  const double fraction = static_cast<double>(usage.branches_skipped) / usage.branches_total;
  EXPECT_NEAR(fraction, 0.5, 0.2);
  EXPECT_LT(usage.executed_flops, 0.8 * usage.dense_flops);
  EXPECT_GT(usage.executed_flops, 0.3 * usage.dense_flops);
}

// ---- experts_per_token ----------------------------------------------------------------

class ExpertsPerTokenTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ExpertsPerTokenTest, OneExpertMatchesTransformersWithTopKOne) {
  auto model = LoadModel(GetParam());
  ASSERT_NE(model, nullptr);
  auto fixture = testing::LoadGoldenFixture(GetParam());
  ASSERT_TRUE(fixture.ok());
  ComputeBudget b;
  b.experts_per_token = 1;
  SequenceBudget budget = Resolve(*model, b);
  // Alone, and in one batch where every other prompt runs at the model's k.
  std::vector<const std::vector<int32_t>*> prompts;
  std::vector<const SequenceBudget*> budgets;
  for (size_t i = 0; i < fixture->prompts.size(); ++i) {
    const auto& ids = fixture->prompts[i].ids;
    BatchResult got = RunBatch(*model, {&ids}, {&budget});
    auto want = ReadLogits(GetParam(), "logits_k1." + std::to_string(i));
    ASSERT_EQ(got.logits.size(), want.size());
    EXPECT_LE(MaxDiff(got.logits.data(), want), 1e-4f) << "prompt " << ids.size();
    EXPECT_EQ(got.costs[0].expert_assignments, got.costs[0].moe_token_layers);
    EXPECT_GT(got.costs[0].saved_flops, 0);
    prompts.push_back(&ids);
    budgets.push_back(i % 2 == 0 ? &budget : nullptr);
  }
  BatchResult mixed = RunBatch(*model, prompts, budgets);
  size_t offset = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto want = i % 2 == 0 ? ReadLogits(GetParam(), "logits_k1." + std::to_string(i)) : fixture->prompts[i].logits;
    EXPECT_LE(MaxDiff(mixed.logits.data() + offset, want), 1e-4f) << "mixed batch, prompt " << i;
    offset += want.size();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ExpertsPerTokenTest,
                         ::testing::Values("qwen3_moe_f32", "qwen3_next_f32"),
                         [](const auto& info) { return std::string(info.param); });

// ---- empty budgets, skip_layers, attention-gate floor ---------------------------------

TEST(ComputeBudgetTest, EmptyBudgetIsBitIdenticalToNoBudget) {
  auto model = LoadModel("qwen3_next_f32");
  ASSERT_NE(model, nullptr);
  auto fixture = testing::LoadGoldenFixture("qwen3_next_f32");
  ASSERT_TRUE(fixture.ok());
  const auto& a = fixture->prompts[5].ids;
  const auto& b = fixture->prompts[2].ids;
  SequenceBudget empty = Resolve(*model, ComputeBudget{});
  BatchResult plain = RunBatch(*model, {&a, &b});
  BatchResult with_empty = RunBatch(*model, {&a, &b}, {&empty, &empty});
  ASSERT_EQ(plain.logits.size(), with_empty.logits.size());
  EXPECT_EQ(std::memcmp(plain.logits.data(), with_empty.logits.data(), plain.logits.size() * 4), 0);
  // Next to a budgeted request, an empty-budget request's logits do not change a bit.
  ComputeBudget skip;
  skip.skip_layers.push_back({1, 2});
  skip.experts_per_token = 1;
  skip.attention_gate_floor = 0.5f;
  SequenceBudget budget = Resolve(*model, skip);
  BatchResult mixed = RunBatch(*model, {&a, &b}, {nullptr, &budget});
  EXPECT_EQ(std::memcmp(plain.logits.data(), mixed.logits.data(), a.size() * model->config().vocab_size * 4), 0);
}

TEST(ComputeBudgetTest, SkipLayersIsConsistentAcrossPrefillAndDecode) {
  for (const char* name : {"qwen3_next_f32", "llama_f32"}) {
    auto model = LoadModel(name);
    ASSERT_NE(model, nullptr);
    auto fixture = testing::LoadGoldenFixture(name);
    ASSERT_TRUE(fixture.ok());
    const auto& ids = fixture->prompts.back().ids;
    ComputeBudget b;
    b.skip_layers.push_back({1, 1});
    b.skip_layers.push_back({2, 2});
    SequenceBudget budget = Resolve(*model, b);
    BatchResult one = RunBatch(*model, {&ids}, {&budget});
    std::vector<float> pieces = PrefillThenDecode(*model, ids, static_cast<int32_t>(ids.size()) - 6, &budget);
    ASSERT_EQ(one.logits.size(), pieces.size());
    EXPECT_LE(MaxDiff(pieces.data(), one.logits), 1e-4f) << name;
    EXPECT_GT(MaxDiff(one.logits.data(), fixture->prompts.back().logits), 1e-2f) << name << ": skipping changed nothing";
    EXPECT_EQ(one.costs[0].branches_skipped, 2u * 2 * ids.size());
    // The skipped layers' share of the dense cost is what was saved.
    EXPECT_GT(one.costs[0].saved_flops, 0.2 * model->DenseFlops(0, ids.size()));
  }
}

TEST(ComputeBudgetTest, SkippingEveryLayerLeavesTheEmbedding) {
  // With every layer skipped the logits are lm_head(norm(embedding)): a prompt's logits
  // at a position depend only on the token there.
  auto model = LoadModel("qwen3_next_f32");
  ASSERT_NE(model, nullptr);
  ComputeBudget b;
  b.skip_layers.push_back({0, 3});
  SequenceBudget budget = Resolve(*model, b);
  std::vector<int32_t> ids = {7, 3, 7, 9, 3};
  BatchResult got = RunBatch(*model, {&ids}, {&budget});
  const int64_t v = model->config().vocab_size;
  EXPECT_EQ(std::memcmp(got.logits.data(), got.logits.data() + 2 * v, v * 4), 0);
  EXPECT_EQ(std::memcmp(got.logits.data() + v, got.logits.data() + 4 * v, v * 4), 0);
  EXPECT_NE(std::memcmp(got.logits.data(), got.logits.data() + v, v * 4), 0);
}

TEST(ComputeBudgetTest, AttentionGateFloorSkipsHeads) {
  auto model = LoadModel("qwen3_next_f32");
  ASSERT_NE(model, nullptr);
  auto fixture = testing::LoadGoldenFixture("qwen3_next_f32");
  ASSERT_TRUE(fixture.ok());
  const auto& ids = fixture->prompts.back().ids;
  // A floor no mean gate falls below changes nothing.
  ComputeBudget low;
  low.attention_gate_floor = 1e-6f;
  SequenceBudget low_budget = Resolve(*model, low);
  BatchResult same = RunBatch(*model, {&ids}, {&low_budget});
  EXPECT_LE(MaxDiff(same.logits.data(), fixture->prompts.back().logits), 1e-4f);
  EXPECT_EQ(same.costs[0].heads_skipped, 0u);
  const uint64_t heads = static_cast<uint64_t>(model->config().NumAttentionLayers() *
                                               model->config().num_attention_heads) * ids.size();
  EXPECT_EQ(same.costs[0].heads_total, heads);
  // A floor of 0.5 skips some heads, and the decode path agrees with one prefill.
  ComputeBudget mid;
  mid.attention_gate_floor = 0.5f;
  SequenceBudget mid_budget = Resolve(*model, mid);
  BatchResult got = RunBatch(*model, {&ids}, {&mid_budget});
  EXPECT_GT(got.costs[0].heads_skipped, heads / 10);
  EXPECT_LT(got.costs[0].heads_skipped, heads);
  EXPECT_GT(got.costs[0].saved_flops, 0);
  std::vector<float> pieces = PrefillThenDecode(*model, ids, static_cast<int32_t>(ids.size()) - 6, &mid_budget);
  EXPECT_LE(MaxDiff(pieces.data(), got.logits), 1e-4f);
  // Every head skipped: the attention branch adds o_proj(0) = 0.
  ComputeBudget all;
  all.attention_gate_floor = 0.999f;
  SequenceBudget all_budget = Resolve(*model, all);
  BatchResult none = RunBatch(*model, {&ids}, {&all_budget});
  EXPECT_EQ(none.costs[0].heads_skipped, heads);
}

// ---- validation and usage through the engine -----------------------------------------

TEST(ComputeBudgetTest, ValidationNamesTheFieldAndTheSupportedControls) {
  auto next = LoadModel("qwen3_next_f32");
  auto gated = LoadModel(kGateSkip);
  auto llama = LoadModel("llama_f32");
  ASSERT_TRUE(next && gated && llama);
  EXPECT_EQ(next->SupportedBudgetControls(),
            (std::vector<std::string>{"experts_per_token", "attention_gate_floor", "skip_layers"}));
  EXPECT_EQ(gated->SupportedBudgetControls(),
            (std::vector<std::string>{"skip_ratio", "experts_per_token", "attention_gate_floor", "skip_layers"}));
  EXPECT_EQ(llama->SupportedBudgetControls(), (std::vector<std::string>{"skip_layers"}));
  auto check = [](const CausalLm& m, ComputeBudget b, absl::StatusCode code, const std::string& mentions) {
    absl::Status s = m.ValidateBudget(b);
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(s.message().find(mentions), absl::string_view::npos) << s;
  };
  ComputeBudget b;
  b.skip_ratio = 0.5f;
  check(*next, b, absl::StatusCode::kFailedPrecondition, "experts_per_token, attention_gate_floor, skip_layers");
  b.skip_ratio = 0.95f;
  check(*gated, b, absl::StatusCode::kInvalidArgument, "skip_ratio");
  b.skip_ratio = -0.1f;
  check(*gated, b, absl::StatusCode::kInvalidArgument, "skip_ratio");
  b.skip_ratio = NAN;
  check(*gated, b, absl::StatusCode::kInvalidArgument, "skip_ratio");
  b = {};
  b.experts_per_token = 3;
  check(*next, b, absl::StatusCode::kInvalidArgument, "above the model's k of 2");
  check(*llama, b, absl::StatusCode::kFailedPrecondition, "supports are: skip_layers");
  b = {};
  b.attention_gate_floor = 1.f;
  check(*next, b, absl::StatusCode::kInvalidArgument, "attention_gate_floor");
  b.attention_gate_floor = 0.3f;
  check(*llama, b, absl::StatusCode::kFailedPrecondition, "attention_gate_floor");
  b = {};
  b.skip_layers.push_back({2, 4});
  check(*next, b, absl::StatusCode::kInvalidArgument, "layer 4");
  b.skip_layers = {{3, 1}};
  check(*next, b, absl::StatusCode::kInvalidArgument, "skip_layers");
  b.skip_layers = {{0, 3}};
  EXPECT_TRUE(next->ValidateBudget(b).ok());
}

TEST(ComputeBudgetTest, UsageReportsWhatWasSaved) {
  engine::EngineOptions options;
  options.model_dir = testing::ModelFixtureDir("qwen3_next_f32");
  options.kv_cache_memory = 8 << 20;
  auto engine = engine::Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto run = [&](const ComputeBudget& budget) {
    engine::GenerationRequest request;
    request.prompt = {1, 2, 3, 4, 5, 6, 7, 8};
    request.stopping.max_tokens = 4;
    request.stopping.ignore_eos = true;
    request.budget = budget;
    auto channel = std::make_shared<engine::RequestChannel>();
    EXPECT_TRUE((*engine)->Submit(request, channel).ok());
    engine::RequestEvent event;
    while (channel->PopWait(&event, absl::Now() + absl::Seconds(60))) {
      if (event.final) break;
    }
    return event.usage;
  };
  engine::UsageStats dense = run({});
  EXPECT_EQ(dense.executed_flops, dense.dense_flops);
  EXPECT_EQ(dense.branches_total, 0u);
  ComputeBudget b;
  b.experts_per_token = 1;
  b.skip_layers.push_back({2, 2});
  engine::UsageStats cheap = run(b);
  EXPECT_EQ(cheap.dense_flops, dense.dense_flops);
  EXPECT_LT(cheap.executed_flops, dense.executed_flops);
  EXPECT_EQ(cheap.layers_skipped, 1);
  EXPECT_EQ(cheap.branches_total, 2u * 4 * 11);  // 11 tokens computed (8 + 3 decodes)
  EXPECT_EQ(cheap.branches_skipped, 2u * 11);
  EXPECT_DOUBLE_EQ(cheap.mean_experts_per_token(), 1.0);
}

}  // namespace
}  // namespace sluice
