// Prefix caching on real models: a request served from the cache gives the same tokens
// and logprobs as the same request with caching off, on every golden fixture family
// (dense, MoE, hybrid Gated DeltaNet + attention), for hits at a block boundary,
// mid-prompt (a branch of a cached prompt), at the full prompt, and on the next turn of
// a finished conversation. Also: eviction under memory pressure changes no output.
//
// Hits that start from state computed in the same way as the uncached run (KV blocks
// and snapshots taken inside a chunked prefill) are compared bit for bit. A next-turn
// hit on a hybrid model starts from a snapshot taken while decoding, where the Gated
// DeltaNet ran token by token; the uncached run recomputes the same tokens with the
// chunked algorithm, which rounds differently in fp32 (kernels/gated_delta_net.h: the
// two modes agree "up to fp32 rounding"). Those compare within kTurnTolerance.
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/golden/fixture.h"

namespace sluice::engine {
namespace {

constexpr float kTurnTolerance = 1e-5f;

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  absl::Status status;
  UsageStats usage;
};

Outcome RunRequest(Engine& engine, const std::vector<int32_t>& prompt, int32_t max_tokens) {
  GenerationRequest r;
  r.prompt = prompt;
  r.stopping.max_tokens = max_tokens;
  r.stopping.ignore_eos = true;
  r.logprobs_top_n = 0;
  auto channel = std::make_shared<RequestChannel>();
  Outcome out;
  out.status = engine.Submit(std::move(r), channel);
  if (!out.status.ok()) return out;
  RequestEvent event;
  while (channel->PopWait(&event, absl::Now() + absl::Seconds(120))) {
    out.tokens.insert(out.tokens.end(), event.tokens.begin(), event.tokens.end());
    for (const TokenLogprob& lp : event.logprobs) out.logprobs.push_back(lp.logprob);
    if (event.final) {
      out.status = event.status;
      out.usage = event.usage;
      return out;
    }
  }
  out.status = absl::DeadlineExceededError("no final event");
  return out;
}

std::vector<int32_t> Tokens(std::mt19937& rng, size_t n, int64_t vocab) {
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class PrefixCacheExactnessTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto f = testing::LoadGoldenFixture(GetParam());
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = *std::move(f);
  }
  std::unique_ptr<Engine> Make(bool caching, int64_t kv_cache_memory = 64ll << 20) {
    EngineOptions o;
    o.model_dir = fixture_.dir;
    o.max_num_seqs = 4;
    o.max_num_batched_tokens = 512;
    o.kv_cache_memory = kv_cache_memory;
    o.enable_prefix_caching = caching;
    o.prefix_state_memory = 64ll << 20;
    auto e = Engine::Create(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }
  // Runs `prompt` on both engines; the cached one must report `cached` tokens served
  // from the cache (-1: any number > 0) and give the same tokens and logprobs, bit for
  // bit when `tolerance` is 0.
  Outcome Compare(Engine& off, Engine& on, const std::vector<int32_t>& prompt, int32_t n,
                  int32_t cached, float tolerance = 0.f, const char* what = "") {
    const Outcome a = RunRequest(off, prompt, n);
    const Outcome b = RunRequest(on, prompt, n);
    EXPECT_TRUE(a.status.ok() && b.status.ok()) << what << ": " << a.status << " / " << b.status;
    if (cached >= 0) {
      EXPECT_EQ(b.usage.cached_tokens, cached) << what;
    } else {
      EXPECT_GT(b.usage.cached_tokens, 0) << what;
    }
    EXPECT_EQ(a.usage.cached_tokens, 0) << what;
    EXPECT_EQ(a.tokens, b.tokens) << what;
    EXPECT_EQ(a.logprobs.size(), b.logprobs.size()) << what;
    float worst = 0;
    for (size_t i = 0; i < std::min(a.logprobs.size(), b.logprobs.size()); ++i) {
      worst = std::max(worst, std::fabs(a.logprobs[i] - b.logprobs[i]));
    }
    if (tolerance == 0.f) {
      EXPECT_EQ(a.logprobs, b.logprobs) << what << ": max |Δ logprob| " << worst;
    } else {
      EXPECT_LE(worst, tolerance) << what;
      std::printf("%s %s: max |Δ logprob| %.3g\n", GetParam().c_str(), what, worst);
    }
    return b;
  }
  bool hybrid(const Engine& e) const { return e.model().StateShape().num_layers > 0; }
  testing::GoldenFixture fixture_;
};

TEST_P(PrefixCacheExactnessTest, CachedRequestsMatchUncachedOnes) {
  auto off = Make(false);
  auto on = Make(true);
  ASSERT_TRUE(off && on);
  const int64_t vocab = off->model().config().vocab_size;
  const bool state = hybrid(*on);
  std::mt19937 rng(7);
  const std::vector<int32_t> system = Tokens(rng, 150, vocab);

  // Cold: nothing cached, and the snapshot the prefill takes changes nothing.
  Compare(*off, *on, system, 8, 0, 0.f, "cold");
  // The same prompt: hits the full blocks (dense: 144 of 150; hybrid: the snapshot the
  // prefill took at its end rounded to the 64-token grid, 128).
  Compare(*off, *on, system, 8, state ? 128 : 144, 0.f, "full prompt");
  // A branch after 100 shared tokens: dense models hit 96; a hybrid has no snapshot
  // there yet and takes one at the branch point (64), so the next branch hits it.
  const std::vector<int32_t> head(system.begin(), system.begin() + 100);
  Compare(*off, *on, Concat(head, Tokens(rng, 50, vocab)), 8, state ? 0 : 96, 0.f, "first branch");
  Compare(*off, *on, Concat(head, Tokens(rng, 50, vocab)), 8, state ? 64 : 96, 0.f, "mid-prompt");
  // Exactly on a block (and grid) boundary: 128 shared tokens, then two new ones (and
  // then one, where a hybrid steps back a grid cell: a one-token segment would run the
  // recurrent form of the Gated DeltaNet, where the uncached chunk runs the chunked one).
  Compare(*off, *on, Concat({system.begin(), system.begin() + 128}, Tokens(rng, 2, vocab)), 8, 128, 0.f,
          "block boundary");
  Compare(*off, *on, Concat({system.begin(), system.begin() + 128}, Tokens(rng, 1, vocab)), 8,
          state ? 64 : 128, 0.f, "block boundary + 1");
  // A conversation: the second turn re-sends the first turn's prompt and answer. Dense
  // models hit every full block the first turn computed (150 + 59 = 209 → 208); a hybrid
  // hits the snapshot its decode took at 192.
  const Outcome turn1 = RunRequest(*on, system, 60);
  ASSERT_TRUE(turn1.status.ok());
  const std::vector<int32_t> turn2 = Concat(Concat(system, turn1.tokens), Tokens(rng, 20, vocab));
  Compare(*off, *on, turn2, 8, state ? 192 : 208, state ? kTurnTolerance : 0.f, "next turn");

  const SchedulerStats s = on->Stats();
  EXPECT_GT(s.prefix_cache_hits, 0u);
  EXPECT_GT(s.cached_blocks, 0);
  EXPECT_EQ(s.state_snapshots > 0, state);
  ASSERT_TRUE(on->WaitIdle(absl::Seconds(10)));
  EXPECT_EQ(on->Stats().free_blocks, on->Stats().total_blocks);
}

TEST_P(PrefixCacheExactnessTest, EvictionUnderMemoryPressureChangesNoOutput) {
  auto off = Make(false);
  // Room for one full-context sequence and a little: new prompts evict cached blocks.
  const int64_t block_bytes = static_cast<int64_t>(off->kv_cache_shape().BytesPerBlock());
  const int64_t state_bytes = static_cast<int64_t>(off->model().StateShape().BytesPerSlot()) * 4;
  auto on = Make(true, state_bytes + block_bytes * (256 / 16 + 4));
  ASSERT_TRUE(off && on);
  const int64_t vocab = off->model().config().vocab_size;
  std::mt19937 rng(11);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 3; ++i) prompts.push_back(Tokens(rng, 140, vocab));
  // The first prompt comes back every other request and stays cached; the others evict
  // each other's blocks.
  for (int round = 0; round < 3; ++round) {
    for (const int i : {0, 1, 0, 2}) {
      const std::vector<int32_t>& p = prompts[i];
      const std::vector<int32_t> prompt = Concat(p, Tokens(rng, 10, vocab));
      const Outcome a = RunRequest(*off, prompt, 6);
      const Outcome b = RunRequest(*on, prompt, 6);
      ASSERT_TRUE(a.status.ok() && b.status.ok());
      EXPECT_EQ(a.tokens, b.tokens);
      EXPECT_EQ(a.logprobs, b.logprobs);
    }
  }
  EXPECT_GT(on->Stats().block_evictions, 0u);
  EXPECT_GT(on->Stats().prefix_cache_hits, 0u) << "some prompts still hit between evictions";
}

INSTANTIATE_TEST_SUITE_P(Families, PrefixCacheExactnessTest,
                         ::testing::Values("llama_f32", "qwen3_f32", "qwen3_moe_f32", "mixtral_f32",
                                           "olmoe_f32", "qwen3_5_f32", "qwen3_5_moe_f32",
                                           "qwen3_next_f32", "sluice_demo_bf16"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace sluice::engine
