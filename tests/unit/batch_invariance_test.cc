// Batch invariance on a hybrid fixture (Gated DeltaNet + gated attention + MoE): 16
// requests of mixed lengths arriving at different times share continuous batches, and
// each one's greedy and seeded-sampled tokens equal what it produces alone.
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/golden/fixture.h"

namespace sluice::engine {
namespace {

std::vector<int32_t> Collect(RequestChannel& channel, absl::Status* status) {
  std::vector<int32_t> tokens;
  RequestEvent event;
  while (channel.PopWait(&event, absl::Now() + absl::Seconds(120))) {
    tokens.insert(tokens.end(), event.tokens.begin(), event.tokens.end());
    if (event.final) {
      *status = event.status;
      return tokens;
    }
  }
  *status = absl::DeadlineExceededError("no final event");
  return tokens;
}

struct InvarianceCase {
  const char* fixture;
  kernels::MatmulPrecision precision;
};

class BatchInvarianceTest : public ::testing::TestWithParam<InvarianceCase> {};

TEST_P(BatchInvarianceTest, SixteenConcurrentRequestsMatchTheirSoloRuns) {
  EngineOptions options;
  options.model_dir = testing::ModelFixtureDir(GetParam().fixture);
  options.matmul_precision = GetParam().precision;
  if (options.matmul_precision == kernels::MatmulPrecision::kBf16 &&
      !kernels::SetMatmulPrecision(kernels::MatmulPrecision::kBf16).ok()) {
    GTEST_SKIP() << "this CPU or build has no AVX512-BF16";
  }
  options.kv_cache_memory = 64 << 20;
  options.max_num_seqs = 16;
  options.max_num_batched_tokens = 96;  // forces chunked prefills that share steps with decodes
  options.block_size = 8;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int64_t vocab = (*engine)->model().config().vocab_size;

  std::mt19937 rng(7);
  std::vector<GenerationRequest> requests;
  const int lengths[] = {1, 3, 7, 12, 20, 33, 50, 63, 64, 65, 80, 100, 130, 5, 17, 41};
  for (int i = 0; i < 16; ++i) {
    GenerationRequest r;
    for (int j = 0; j < lengths[i]; ++j) r.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    r.stopping.max_tokens = 12 + i % 5;
    r.stopping.ignore_eos = true;
    if (i % 2 == 1) {  // half of them sample with a seed
      r.sampling.temperature = 0.9f;
      r.sampling.top_p = 0.95f;
      r.sampling.top_k = 40;
      r.sampling.seed = 1000 + i;
    }
    requests.push_back(r);
  }
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : requests) {
    auto ch = std::make_shared<RequestChannel>();
    ASSERT_TRUE((*engine)->Submit(r, ch).ok());
    absl::Status s;
    alone.push_back(Collect(*ch, &s));
    ASSERT_TRUE(s.ok()) << s;
  }
  std::vector<std::shared_ptr<RequestChannel>> channels;
  for (size_t i = 0; i < requests.size(); ++i) {
    channels.push_back(std::make_shared<RequestChannel>());
    ASSERT_TRUE((*engine)->Submit(requests[i], channels.back()).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 4));  // staggered arrivals
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::Status s;
    EXPECT_EQ(Collect(*channels[i], &s), alone[i])
        << "request " << i << " (prompt " << requests[i].prompt.size() << " tokens, "
        << (i % 2 ? "seeded sampling" : "greedy") << ")";
    EXPECT_TRUE(s.ok()) << s;
  }
  ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
  const auto stats = (*engine)->Stats();
  EXPECT_EQ(stats.free_blocks, stats.total_blocks);
  EXPECT_EQ(stats.free_state_slots, stats.total_state_slots);
}

// The bf16-compute case covers the serving-throughput kernel (row groups of up to 12
// tokens, so a 16-sequence batch mixes group sizes).
INSTANTIATE_TEST_SUITE_P(HybridFixtures, BatchInvarianceTest,
                         ::testing::Values(InvarianceCase{"qwen3_next_bf16", kernels::MatmulPrecision::kF32},
                                           InvarianceCase{"qwen3_next_f32", kernels::MatmulPrecision::kF32},
                                           InvarianceCase{"qwen3_next_bf16", kernels::MatmulPrecision::kBf16}),
                         [](const ::testing::TestParamInfo<InvarianceCase>& info) {
                           return std::string(info.param.fixture) +
                                  (info.param.precision == kernels::MatmulPrecision::kBf16 ? "_bf16_compute" : "");
                         });

}  // namespace
}  // namespace sluice::engine
