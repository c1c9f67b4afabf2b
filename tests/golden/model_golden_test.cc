// sluice against Hugging Face transformers on tiny random-weight checkpoints: logits at
// every position, alone and in one ragged batch, and greedy continuations through the
// whole engine (scheduler, KV cache, sampler).
#include <cmath>
#include <memory>

#include "absl/time/clock.h"
#include "engine/engine.h"
#include "engine/model/causal_lm.h"
#include "gtest/gtest.h"
#include "tests/golden/fixture.h"

namespace sluice {
namespace {

using engine::CausalLm;

struct Case {
  const char* name;
  float tolerance;
};

class ModelGoldenTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    auto fixture = testing::LoadGoldenFixture(GetParam().name);
    ASSERT_TRUE(fixture.ok()) << fixture.status();
    fixture_ = *std::move(fixture);
    auto model = CausalLm::Load(fixture_.dir, kernels::Device::kCpu);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    ASSERT_EQ(model_->config().vocab_size, fixture_.vocab_size);
  }

  // Runs the given prompts as one ragged batch on a fresh cache; returns logits of
  // every position of every prompt, concatenated.
  std::vector<float> RunBatch(const std::vector<const std::vector<int32_t>*>& prompts) {
    testing::PrefillResult result = testing::PrefillBatch(*model_, prompts);
    EXPECT_TRUE(result.status.ok()) << result.status;
    return result.logits;
  }

  void ExpectClose(const float* got, const std::vector<float>& want, const std::string& what) {
    float worst = 0;
    size_t worst_at = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const float d = std::abs(got[i] - want[i]);
      if (!(d <= worst)) {
        worst = d;
        worst_at = i;
      }
    }
    EXPECT_LE(worst, GetParam().tolerance)
        << what << ": worst |Δ| at flat index " << worst_at << " (got " << got[worst_at]
        << ", transformers " << want[worst_at] << ")";
  }

  testing::GoldenFixture fixture_;
  std::unique_ptr<CausalLm> model_;
};

TEST_P(ModelGoldenTest, LogitsAtEveryPositionMatchTransformers) {
  for (const auto& p : fixture_.prompts) {
    std::vector<float> logits = RunBatch({&p.ids});
    ASSERT_EQ(logits.size(), p.logits.size());
    ExpectClose(logits.data(), p.logits, "prompt of length " + std::to_string(p.ids.size()));
  }
}

TEST_P(ModelGoldenTest, RaggedBatchMatchesTransformers) {
  std::vector<const std::vector<int32_t>*> prompts;
  for (auto it = fixture_.prompts.rbegin(); it != fixture_.prompts.rend(); ++it) prompts.push_back(&it->ids);
  std::vector<float> logits = RunBatch(prompts);
  size_t offset = 0;
  for (auto it = fixture_.prompts.rbegin(); it != fixture_.prompts.rend(); ++it) {
    ExpectClose(logits.data() + offset, it->logits, "batched prompt of length " + std::to_string(it->ids.size()));
    offset += it->logits.size();
  }
  EXPECT_EQ(offset, logits.size());
}

// A prompt fed in pieces across several forward calls (chunked prefill, then one-token
// decode steps), carrying the KV cache and recurrent state between calls, must give the
// logits of one full pass: prefill N + decode 1 == prefill N + 1, for every N here.
TEST_P(ModelGoldenTest, ChunkedPrefillAndDecodeMatchOnePass) {
  const testing::GoldenPrompt* longest = &fixture_.prompts[0];
  for (const auto& p : fixture_.prompts) {
    if (p.ids.size() > longest->ids.size()) longest = &p;
  }
  const int32_t n = static_cast<int32_t>(longest->ids.size());
  std::vector<int32_t> cuts = {std::min(n, 50), std::min(n, 120), n};  // then decode to n
  if (n > 8) cuts = {n / 3, n - 5};
  absl::StatusOr<std::vector<float>> pieces = testing::FeedInPieces(*model_, longest->ids, cuts);
  ASSERT_TRUE(pieces.ok()) << pieces.status();
  const std::vector<float>& all = *pieces;
  ASSERT_EQ(all.size(), longest->logits.size());
  ExpectClose(all.data(), longest->logits, "prompt of length " + std::to_string(n) + " fed in pieces");
}

engine::GenerationRequest GreedyRequest(const std::vector<int32_t>& ids, int32_t n) {
  engine::GenerationRequest r;
  r.prompt = ids;
  r.stopping.max_tokens = n;
  r.stopping.ignore_eos = true;
  return r;
}

std::vector<int32_t> Collect(engine::RequestChannel& channel, absl::Status* status) {
  std::vector<int32_t> tokens;
  engine::RequestEvent event;
  while (channel.PopWait(&event, absl::Now() + absl::Seconds(60))) {
    tokens.insert(tokens.end(), event.tokens.begin(), event.tokens.end());
    if (event.final) {
      *status = event.status;
      return tokens;
    }
  }
  *status = absl::DeadlineExceededError("no final event within 60 s");
  return tokens;
}

TEST_P(ModelGoldenTest, GreedyContinuationsMatchAloneAndConcurrently) {
  engine::EngineOptions options;
  options.model_dir = fixture_.dir;
  options.kv_cache_memory = 8 << 20;
  options.block_size = 8;
  auto engine = engine::Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  // Alone.
  for (const auto& p : fixture_.prompts) {
    auto channel = std::make_shared<engine::RequestChannel>();
    ASSERT_TRUE((*engine)->Submit(GreedyRequest(p.ids, p.greedy.size()), channel).ok());
    absl::Status status;
    EXPECT_EQ(Collect(*channel, &status), p.greedy) << "prompt length " << p.ids.size();
    EXPECT_TRUE(status.ok()) << status;
  }
  // All at once: one continuous batch.
  std::vector<std::shared_ptr<engine::RequestChannel>> channels;
  for (const auto& p : fixture_.prompts) {
    channels.push_back(std::make_shared<engine::RequestChannel>());
    ASSERT_TRUE((*engine)->Submit(GreedyRequest(p.ids, p.greedy.size()), channels.back()).ok());
  }
  for (size_t i = 0; i < channels.size(); ++i) {
    absl::Status status;
    EXPECT_EQ(Collect(*channels[i], &status), fixture_.prompts[i].greedy)
        << "concurrent prompt length " << fixture_.prompts[i].ids.size();
    EXPECT_TRUE(status.ok()) << status;
  }
  ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
  auto stats = (*engine)->Stats();
  EXPECT_EQ(stats.free_blocks, stats.total_blocks);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelGoldenTest,
                         ::testing::Values(Case{"llama_f32", 1e-4f}, Case{"llama_bf16", 2e-2f},
                                           Case{"llama_sharded_f32", 1e-4f},
                                           Case{"qwen3_f32", 1e-4f}, Case{"qwen3_bf16", 2e-2f},
                                           Case{"qwen3_moe_f32", 1e-4f}, Case{"qwen3_moe_bf16", 2e-2f},
                                           Case{"mixtral_f32", 1e-4f},
                                           Case{"mixtral_fused_experts_f32", 1e-4f},
                                           Case{"olmoe_f32", 1e-4f}, Case{"qwen3_next_f32", 1e-4f},
                                           Case{"qwen3_next_bf16", 2e-2f}, Case{"qwen3_5_f32", 1e-4f},
                                           Case{"qwen3_5_moe_f32", 1e-4f},
                                           Case{"qwen3_5_vl_wrapper_f32", 1e-4f},
                                           // The trained demo model (deploy/models/sluice-demo):
                                           // bf16 weights, golden computed in f32 on them.
                                           Case{"sluice_demo_bf16", 1e-4f},
                                           // Pre-quantized checkpoints (FP8 block scales, GPTQ
                                           // int4): golden computed in f32 on the dequantized
                                           // weights, which sluice multiplies exactly in f32.
                                           Case{"qwen3_fp8", 1e-4f}, Case{"qwen3_5_fp8", 1e-4f},
                                           Case{"qwen3_gptq", 1e-4f},
                                           Case{"qwen3_gptq_act_order", 1e-4f},
                                           // ... with the routed experts pre-quantized too.
                                           Case{"qwen3_moe_fp8", 1e-4f}, Case{"qwen3_moe_gptq", 1e-4f}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace sluice
