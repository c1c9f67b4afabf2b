// The KV cache in bf16 and fp8 (e4m3, one power-of-two scale per (token, KV head) row):
//  - the fp8 conversion against a brute-force nearest-value search;
//  - PagedAttention over a bf16/fp8 cache against f32 PagedAttention over the same K/V
//    rounded the same way (tight), and against the unrounded f32 K/V within a bound
//    derived from the rounding errors themselves (see AttentionErrorBound);
//  - the golden fixtures with bf16 and fp8 caches: logits at every position against
//    transformers' within a stated tolerance, and greedy continuations through the engine;
//  - batch invariance (16 staggered requests vs their solo runs) with bf16 and fp8 caches.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "engine/cache/kv_cache.h"
#include "engine/engine.h"
#include "engine/model/causal_lm.h"
#include "gtest/gtest.h"
#include "kernels/fp8.h"
#include "kernels/ops.h"
#include "tests/golden/fixture.h"
#include "tests/unit/tensor_test_util.h"

namespace sluice {
namespace {

using kernels::AttentionSequence;
using kernels::DType;
using kernels::Tensor;

// ---------------------------------------------------------------------------- fp8 codes

TEST(Fp8E4M3Test, EveryFiniteCodeRoundTripsAndNaNIsKept) {
  int finite = 0;
  for (int c = 0; c < 256; ++c) {
    const float v = kernels::Fp8E4M3ToF32(static_cast<uint8_t>(c));
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    ++finite;
    EXPECT_EQ(kernels::F32ToFp8E4M3(v), c) << "code " << c << " = " << v;
    EXPECT_EQ(kernels::Fp8E4M3Widen(static_cast<uint8_t>(c)), v) << "the kernels' widening, code " << c;
  }
  EXPECT_EQ(finite, 254);
  EXPECT_EQ(kernels::Fp8E4M3ToF32(0x7e), 448.f);
  EXPECT_EQ(kernels::Fp8E4M3ToF32(0x01), std::ldexp(1.f, -9));
  EXPECT_EQ(kernels::F32ToFp8E4M3(1e6f), 0x7e);  // saturates, never NaN
  EXPECT_EQ(kernels::F32ToFp8E4M3(-1e6f), 0xfe);
}

TEST(Fp8E4M3Test, RoundsToTheNearestValueTiesToEven) {
  std::vector<float> values;  // the 127 non-negative finite values, ascending
  for (int c = 0; c < 0x7f; ++c) values.push_back(kernels::Fp8E4M3ToF32(static_cast<uint8_t>(c)));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> exponent(-12.f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    float x = std::exp2(exponent(rng));
    if (i % 7 == 0) {  // an exact midpoint between two neighbours
      const int j = 1 + static_cast<int>(rng() % 125);
      x = 0.5f * (values[j] + values[j + 1]);
    }
    // Brute force: the nearest value, ties to the even code (mantissa bit 0 clear).
    int best = 0;
    for (int c = 1; c < 0x7f; ++c) {
      const float dc = std::abs(values[c] - x), db = std::abs(values[best] - x);
      if (dc < db || (dc == db && (c & 1) == 0)) best = c;
    }
    if (x >= 448.f) best = 0x7e;
    ASSERT_EQ(kernels::F32ToFp8E4M3(x), best) << "x = " << x;
    ASSERT_EQ(kernels::F32ToFp8E4M3(-x), best | 0x80) << "x = " << -x;
  }
}

TEST(Fp8E4M3Test, RowScaleIsThePowerOfTwoThatFitsTheRow) {
  for (float amax : {1e-6f, 0.3f, 1.f, 447.f, 448.f, 449.f, 896.f, 3000.f}) {
    const float s = kernels::Fp8E4M3RowScale(amax);
    int e;
    EXPECT_EQ(std::frexp(s, &e), 0.5f) << "a power of two";
    EXPECT_LE(amax / s, 448.f) << amax;
    EXPECT_GT(amax / s, 224.f) << amax << ": the smallest such power";
  }
  EXPECT_EQ(kernels::Fp8E4M3RowScale(0.f), 1.f);
}

// ------------------------------------------------------------------------ the kernels

struct KvCase {
  DType dtype;
  const char* name;
};

class KvDtypeAttentionTest : public ::testing::TestWithParam<KvCase> {};

// Rows with magnitudes that differ by orders of magnitude (what per-row scales are for)
// and one outlier column per row.
std::vector<float> KvValues(int64_t rows, int64_t d, uint32_t seed) {
  std::vector<float> x = testing::Randn(rows * d, seed);
  std::mt19937 rng(seed + 100);
  for (int64_t r = 0; r < rows; ++r) {
    const float magnitude = std::exp2(static_cast<float>(static_cast<int>(rng() % 7) - 3));
    for (int64_t c = 0; c < d; ++c) x[r * d + c] *= magnitude;
    x[r * d + rng() % d] *= 4.f;
  }
  return x;
}

// The cached values as f32, read back from the cache the kernel reads.
std::vector<float> Dequantized(const Tensor& cache, const Tensor& scale) {
  const int64_t d = cache.dim(3);
  std::vector<float> out(cache.numel());
  for (int64_t i = 0; i < cache.numel(); ++i) {
    switch (cache.dtype()) {
      case DType::kBF16:
        out[i] = kernels::Bf16ToF32(cache.data<uint16_t>()[i]);
        break;
      case DType::kF8E4M3:
        out[i] = kernels::Fp8E4M3ToF32(cache.data<uint8_t>()[i]) * scale.data<float>()[i / d];
        break;
      default:
        out[i] = cache.data<float>()[i];
    }
  }
  return out;
}

TEST_P(KvDtypeAttentionTest, MatchesF32AttentionOverTheRoundedKvAndStaysWithinTheRoundingBound) {
  const DType dtype = GetParam().dtype;
  for (int64_t d : {40, 64}) {  // 40: a vector tail
    const int64_t hq = 8, hkv = 2, block = 4, blocks = 40;
    // Three sequences of a ragged batch: a prefill chunk after a cached prefix, a decode
    // and a fresh prompt; scattered blocks.
    const std::vector<int32_t> ctx = {37, 58, 9}, qlen = {6, 1, 9};
    std::vector<std::vector<int32_t>> tables(3);
    int32_t next = blocks - 1;
    for (int s = 0; s < 3; ++s)
      for (int b = 0; b < (ctx[s] + block - 1) / block; ++b) tables[s].push_back(next--);
    std::vector<int32_t> slots;
    for (int s = 0; s < 3; ++s)
      for (int j = 0; j < ctx[s]; ++j) slots.push_back(tables[s][j / block] * block + j % block);
    const int64_t tokens = static_cast<int64_t>(slots.size());
    const std::vector<float> k = KvValues(tokens * hkv, d, 11), v = KvValues(tokens * hkv, d, 12);
    const Tensor slot_t = testing::MakeI32(slots, {tokens});

    auto cache = [&](DType t) { return *Tensor::Zeros({blocks, block, hkv, d}, t); };
    Tensor kq = cache(dtype), vq = cache(dtype), ks, vs;
    if (dtype == DType::kF8E4M3) {
      ks = *Tensor::Zeros({blocks, block, hkv}, DType::kF32);
      vs = *Tensor::Zeros({blocks, block, hkv}, DType::kF32);
    }
    ASSERT_TRUE(kernels::WriteKvCache(testing::Make(k, {tokens, hkv, d}), testing::Make(v, {tokens, hkv, d}),
                                      slot_t, &kq, &vq, &ks, &vs)
                    .ok());
    // The same K/V rounded the same way, in an f32 cache; and the unrounded K/V.
    Tensor kr = testing::Make(Dequantized(kq, ks), {blocks, block, hkv, d});
    Tensor vr = testing::Make(Dequantized(vq, vs), {blocks, block, hkv, d});
    Tensor kf = cache(DType::kF32), vf = cache(DType::kF32);
    ASSERT_TRUE(kernels::WriteKvCache(testing::Make(k, {tokens, hkv, d}), testing::Make(v, {tokens, hkv, d}),
                                      slot_t, &kf, &vf)
                    .ok());

    std::vector<AttentionSequence> seqs;
    int32_t rows = 0;
    for (int s = 0; s < 3; ++s) {
      seqs.push_back({rows, qlen[s], ctx[s], tables[s].data()});
      rows += qlen[s];
    }
    const Tensor q = testing::Make(testing::Randn(rows * hq * d, 13), {rows, hq, d});
    const float scale = 1 / std::sqrt(static_cast<float>(d));
    Tensor out_q = *Tensor::Empty({rows, hq, d}, DType::kF32);
    Tensor out_r = *Tensor::Empty({rows, hq, d}, DType::kF32);
    Tensor out_f = *Tensor::Empty({rows, hq, d}, DType::kF32);
    ASSERT_TRUE(kernels::PagedAttention(q, kq, vq, seqs, scale, &out_q, {}, ks, vs).ok());
    ASSERT_TRUE(kernels::PagedAttention(q, kr, vr, seqs, scale, &out_r).ok());
    ASSERT_TRUE(kernels::PagedAttention(q, kf, vf, seqs, scale, &out_f).ok());

    const std::vector<float> kd = Dequantized(kq, ks), vd = Dequantized(vq, vs);
    double worst_tight = 0, worst_vs_f32 = 0, worst_bound_use = 0;
    for (int s = 0; s < 3; ++s) {
      for (int i = 0; i < qlen[s]; ++i) {
        const int64_t row = seqs[s].query_start + i;
        const int visible = ctx[s] - qlen[s] + i + 1;
        for (int64_t h = 0; h < hq; ++h) {
          const int64_t g = h / (hq / hkv);
          const float* qv = q.data<float>() + (row * hq + h) * d;
          // The rounding bound: scores move by at most delta (|q| · |Δk| summed), so each
          // softmax weight by a factor within e^{±2·delta}, which moves the average by at
          // most (e^{2·delta} − 1) · max|v|; the values themselves move by max|Δv|.
          double delta = 0, dv = 0, vmax = 0;
          for (int j = 0; j < visible; ++j) {
            const int64_t slot = static_cast<int64_t>(tables[s][j / block]) * block + j % block;
            const int64_t at = (slot * hkv + g) * d;
            double ds = 0;
            for (int64_t c = 0; c < d; ++c) {
              ds += std::abs(qv[c]) * std::abs(kd[at + c] - kf.data<float>()[at + c]);
              dv = std::max<double>(dv, std::abs(vd[at + c] - vf.data<float>()[at + c]));
              vmax = std::max<double>(vmax, std::abs(vf.data<float>()[at + c]));
            }
            delta = std::max(delta, ds * scale);
          }
          const double bound = dv + std::expm1(2 * delta) * vmax + 1e-5 * (1 + vmax);
          for (int64_t c = 0; c < d; ++c) {
            const int64_t at = (row * hq + h) * d + c;
            const double tight = std::abs(out_q.data<float>()[at] - out_r.data<float>()[at]);
            const double err = std::abs(out_q.data<float>()[at] - out_f.data<float>()[at]);
            worst_tight = std::max(worst_tight, tight / (1 + vmax));
            worst_vs_f32 = std::max(worst_vs_f32, err);
            worst_bound_use = std::max(worst_bound_use, err / bound);
            ASSERT_LE(tight, 1e-6 * (1 + vmax)) << GetParam().name << " d=" << d << " row " << row << " head " << h;
            ASSERT_LE(err, bound) << GetParam().name << " d=" << d << " row " << row << " head " << h;
          }
        }
      }
    }
    std::cout << GetParam().name << " d=" << d << ": vs the rounded K/V in f32 max |Δ|/(1+max|v|) "
              << worst_tight << "; vs f32 K/V max |Δ| " << worst_vs_f32 << " (" << 100 * worst_bound_use
              << " % of the rounding bound)\n";
    EXPECT_GT(worst_vs_f32, 0) << "the rounding must show (else the cache is not " << GetParam().name << ")";
  }
}

TEST_P(KvDtypeAttentionTest, WrongScalesAreRejected) {
  const DType dtype = GetParam().dtype;
  Tensor kc = *Tensor::Zeros({2, 4, 1, 8}, dtype), vc = *Tensor::Zeros({2, 4, 1, 8}, dtype);
  Tensor kv = testing::Make(testing::Randn(8, 1), {1, 1, 8});
  Tensor slots = testing::MakeI32({3}, {1});
  Tensor wrong = *Tensor::Zeros({2, 4, 2}, DType::kF32);
  Tensor right = *Tensor::Zeros({2, 4, 1}, DType::kF32);
  if (dtype == DType::kF8E4M3) {
    EXPECT_EQ(kernels::WriteKvCache(kv, kv, slots, &kc, &vc).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(kernels::WriteKvCache(kv, kv, slots, &kc, &vc, &wrong, &wrong).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(kernels::WriteKvCache(kv, kv, slots, &kc, &vc, &right, &right).ok());
  } else {
    EXPECT_EQ(kernels::WriteKvCache(kv, kv, slots, &kc, &vc, &right, &right).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(kernels::WriteKvCache(kv, kv, slots, &kc, &vc).ok());
  }
  Tensor f32 = *Tensor::Zeros({2, 4, 1, 8}, DType::kF32);
  Tensor out = *Tensor::Empty({1, 1, 8}, DType::kF32);
  std::vector<int32_t> table = {0};
  EXPECT_EQ(kernels::PagedAttention(kv, kc, f32, {AttentionSequence{0, 1, 1, table.data()}}, 1.f, &out).code(),
            absl::StatusCode::kInvalidArgument)
      << "K and V caches of different dtypes";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, KvDtypeAttentionTest,
                         ::testing::Values(KvCase{DType::kBF16, "bf16"}, KvCase{DType::kF8E4M3, "fp8"}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(KvCacheShapeTest, BytesPerBlockFollowTheDtype) {
  engine::KvCacheShape s;
  s.num_layers = 6;
  s.block_size = 16;
  s.num_kv_heads = 2;
  s.head_dim = 256;
  const size_t f32 = s.BytesPerBlock();
  EXPECT_EQ(f32, 6u * 2 * 16 * 2 * 256 * 4);
  s.dtype = DType::kBF16;
  EXPECT_EQ(s.BytesPerBlock(), f32 / 2);
  s.dtype = DType::kF8E4M3;
  EXPECT_EQ(s.BytesPerBlock(), f32 / 4 + 6u * 2 * 16 * 2 * 4);  // + one f32 scale per row
  s.num_blocks = 3;
  auto cache = engine::PagedKvCache::Create(s, kernels::Device::kCpu);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->key(0).dtype(), DType::kF8E4M3);
  EXPECT_EQ(cache->key_scale(5).shape(), (std::vector<int64_t>{3, 16, 2}));
  EXPECT_EQ(engine::ParseKvCacheDtype("fp8").value(), DType::kF8E4M3);
  EXPECT_EQ(engine::ParseKvCacheDtype("bf16").value(), DType::kBF16);
  EXPECT_EQ(engine::ParseKvCacheDtype("f32").value(), DType::kF32);
  EXPECT_FALSE(engine::ParseKvCacheDtype("f16").ok());
}

// ---------------------------------------------------------------- golden fixtures

// Logits at every position of one prompt, prefilled in one forward on a fresh cache of
// `dtype` (the prompt's own K/V are written to the cache and read back from it).
absl::StatusOr<std::vector<float>> PrefillLogits(engine::CausalLm& model, const std::vector<int32_t>& ids,
                                                 DType dtype) {
  constexpr int32_t kBlock = 4;
  auto shape = model.KvShape(kBlock);
  shape.dtype = dtype;
  shape.num_blocks = static_cast<int32_t>(ids.size()) / kBlock + 2;
  auto cache = engine::PagedKvCache::Create(shape, kernels::Device::kCpu);
  if (!cache.ok()) return cache.status();
  auto state_shape = model.StateShape();
  state_shape.num_slots = 2;
  auto state = engine::RecurrentStateCache::Create(state_shape, kernels::Device::kCpu);
  if (!state.ok()) return state.status();
  std::vector<int32_t> table;
  for (int32_t b = shape.num_blocks - 1; b >= 0; --b) table.push_back(b);
  engine::ForwardBatch batch;
  for (size_t i = 0; i < ids.size(); ++i) {
    batch.token_ids.push_back(ids[i]);
    batch.positions.push_back(static_cast<int32_t>(i));
    batch.slot_mapping.push_back(table[i / kBlock] * kBlock + static_cast<int32_t>(i % kBlock));
    batch.logit_rows.push_back(static_cast<int32_t>(i));
  }
  batch.sequences.push_back({0, static_cast<int32_t>(ids.size()), static_cast<int32_t>(ids.size()), table.data()});
  batch.state_slots.push_back(1);
  batch.state_fresh.push_back(1);
  std::vector<float> logits;
  if (auto s = model.Forward(batch, &*cache, &*state, &logits); !s.ok()) return s;
  return logits;
}

std::vector<int32_t> Collect(engine::RequestChannel& channel, absl::Status* status) {
  std::vector<int32_t> tokens;
  engine::RequestEvent event;
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

struct GoldenCase {
  const char* fixture;
  DType dtype;
  // Largest |Δ| of a logit from sluice's own f32-cache logits, teacher-forced over the
  // prompt and transformers' greedy continuation. Rounding K and V to bf16 is a relative
  // error of at most 2^-9 per element, the rounding the bf16-weight fixtures apply to
  // every weight (tolerance 2e-2 there); measured here 6e-3 to 2.4e-2 on the fixtures
  // without routing: 5e-2. fp8 keeps 3 mantissa bits (2^-4, 32x bf16's error): 0.5,
  // measured up to 0.26.
  float logit_tolerance;
  // MoE fixtures: a tiny perturbation can flip a top-k routing choice, a discontinuous
  // jump (measured up to 1.5 on mixtral with bf16); the tolerance then holds for all but
  // this fraction of positions (measured 0.7 % to 11 %).
  double routed_fraction;
};

std::string DtypeName(DType d) { return std::string(engine::KvCacheDtypeName(d)); }

class KvDtypeGoldenTest : public ::testing::TestWithParam<GoldenCase> {};

// The greedy check: the engine (paged cache, decode steps) with this cache dtype must give
// transformers' greedy tokens at least up to the first position that is a near-tie (the
// f32 top-1 leads the runner-up by less than 2 x the logit tolerance) or a routing flip
// (the teacher-forced logits there are off by more than the tolerance). Random tiny
// models have near-ties; a real rounding bug breaks the agreement long before one.
TEST_P(KvDtypeGoldenTest, LogitsStayNearTheF32CacheAndGreedyTokensAgree) {
  const GoldenCase& gc = GetParam();
  auto fixture = testing::LoadGoldenFixture(gc.fixture);
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto model = engine::CausalLm::Load(fixture->dir, kernels::Device::kCpu);
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t vocab = fixture->vocab_size;
  float worst = 0, worst_vs_transformers = 0;
  size_t positions = 0, over = 0;
  std::vector<size_t> required;  // per prompt: greedy tokens that must agree
  for (const auto& p : fixture->prompts) {
    std::vector<int32_t> ids = p.ids;  // teacher-forced: the prompt and the greedy tokens
    ids.insert(ids.end(), p.greedy.begin(), p.greedy.end() - 1);
    auto exact = PrefillLogits(**model, ids, DType::kF32);
    auto rounded = PrefillLogits(**model, ids, gc.dtype);
    ASSERT_TRUE(exact.ok() && rounded.ok()) << exact.status() << rounded.status();
    size_t must = p.greedy.size();
    for (size_t t = 0; t < ids.size(); ++t) {
      const float* x = exact->data() + t * vocab;
      const float* r = rounded->data() + t * vocab;
      float e = 0;
      for (int64_t v = 0; v < vocab; ++v) e = std::max(e, std::abs(r[v] - x[v]));
      worst = std::max(worst, e);
      over += e > gc.logit_tolerance ? 1 : 0;
      ++positions;
      if (t < p.ids.size()) {
        for (int64_t v = 0; v < vocab; ++v) {
          worst_vs_transformers = std::max(worst_vs_transformers, std::abs(r[v] - p.logits[t * vocab + v]));
        }
      }
      if (t + 1 >= p.ids.size() && must == p.greedy.size()) {
        const size_t j = t + 1 - p.ids.size();  // this row predicts greedy[j]
        const int32_t want = p.greedy[j];
        float runner_up = -INFINITY;
        for (int64_t v = 0; v < vocab; ++v) {
          if (v != want) runner_up = std::max(runner_up, x[v]);
        }
        if (x[want] - runner_up < 2 * gc.logit_tolerance || e > gc.logit_tolerance) must = j;
      }
    }
    required.push_back(must);
  }
  std::cout << gc.fixture << ", " << DtypeName(gc.dtype) << " KV cache: max |Δlogit| " << worst
            << " vs the f32 cache (" << over << " of " << positions << " positions above " << gc.logit_tolerance
            << "), " << worst_vs_transformers << " vs transformers on the prompts\n";
  EXPECT_LE(static_cast<double>(over), gc.routed_fraction * positions)
      << over << " positions off by more than " << gc.logit_tolerance << "; max " << worst;

  engine::EngineOptions options;
  options.model_dir = fixture->dir;
  options.kv_cache_memory = 8 << 20;
  options.block_size = 8;
  options.kv_cache_dtype = gc.dtype;
  auto engine = engine::Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->kv_cache_shape().dtype, gc.dtype);
  std::string firsts;
  for (size_t i = 0; i < fixture->prompts.size(); ++i) {
    const auto& p = fixture->prompts[i];
    engine::GenerationRequest r;
    r.prompt = p.ids;
    r.stopping.max_tokens = static_cast<int32_t>(p.greedy.size());
    r.stopping.ignore_eos = true;
    auto channel = std::make_shared<engine::RequestChannel>();
    ASSERT_TRUE((*engine)->Submit(r, channel).ok());
    absl::Status status;
    const std::vector<int32_t> got = Collect(*channel, &status);
    ASSERT_TRUE(status.ok()) << status;
    ASSERT_EQ(got.size(), p.greedy.size());
    size_t n = 0;
    while (n < got.size() && got[n] == p.greedy[n]) ++n;
    firsts += " " + std::to_string(n) + "/" + std::to_string(got.size()) + " (>= " + std::to_string(required[i]) + ")";
    EXPECT_GE(n, required[i]) << "prompt length " << p.ids.size();
  }
  std::cout << gc.fixture << ", " << DtypeName(gc.dtype)
            << " KV cache: greedy tokens equal to transformers' before the first difference, per prompt"
               " (and the agreement required):"
            << firsts << "\n";
}

constexpr DType kBf16 = DType::kBF16;
constexpr DType kFp8 = DType::kF8E4M3;
INSTANTIATE_TEST_SUITE_P(
    Fixtures, KvDtypeGoldenTest,
    ::testing::Values(GoldenCase{"llama_f32", kBf16, 5e-2f, 0}, GoldenCase{"qwen3_f32", kBf16, 5e-2f, 0},
                      GoldenCase{"qwen3_5_f32", kBf16, 5e-2f, 0}, GoldenCase{"qwen3_next_f32", kBf16, 5e-2f, 0.15},
                      GoldenCase{"qwen3_moe_f32", kBf16, 5e-2f, 0.15}, GoldenCase{"mixtral_f32", kBf16, 5e-2f, 0.15},
                      GoldenCase{"olmoe_f32", kBf16, 5e-2f, 0.15}, GoldenCase{"qwen3_5_moe_f32", kBf16, 5e-2f, 0.15},
                      GoldenCase{"llama_f32", kFp8, 0.5f, 0}, GoldenCase{"qwen3_f32", kFp8, 0.5f, 0},
                      GoldenCase{"qwen3_5_f32", kFp8, 0.5f, 0}, GoldenCase{"qwen3_next_f32", kFp8, 0.5f, 0.15}),
    [](const auto& info) { return std::string(info.param.fixture) + "_" + DtypeName(info.param.dtype); });

// ------------------------------------------------------------------ batch invariance

class KvDtypeBatchInvarianceTest : public ::testing::TestWithParam<DType> {};

// As batch_invariance_test, with the cache in bf16 / fp8: conversion is per row (bf16 per
// element, fp8 per (token, head) with its own scale), so a token's cached bytes, and
// every row's attention, do not depend on the batch.
TEST_P(KvDtypeBatchInvarianceTest, SixteenConcurrentRequestsMatchTheirSoloRuns) {
  engine::EngineOptions options;
  options.model_dir = testing::ModelFixtureDir("qwen3_next_f32");
  options.kv_cache_memory = 64 << 20;
  options.max_num_seqs = 16;
  options.max_num_batched_tokens = 96;  // chunked prefills share steps with decodes
  options.block_size = 8;
  options.kv_cache_dtype = GetParam();
  auto engine = engine::Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int64_t vocab = (*engine)->model().config().vocab_size;
  std::mt19937 rng(7);
  std::vector<engine::GenerationRequest> requests;
  const int lengths[] = {1, 3, 7, 12, 20, 33, 50, 63, 64, 65, 80, 100, 130, 5, 17, 41};
  for (int i = 0; i < 16; ++i) {
    engine::GenerationRequest r;
    for (int j = 0; j < lengths[i]; ++j) r.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    r.stopping.max_tokens = 12 + i % 5;
    r.stopping.ignore_eos = true;
    if (i % 2 == 1) {
      r.sampling.temperature = 0.9f;
      r.sampling.top_p = 0.95f;
      r.sampling.top_k = 40;
      r.sampling.seed = 1000 + i;
    }
    requests.push_back(r);
  }
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : requests) {
    auto ch = std::make_shared<engine::RequestChannel>();
    ASSERT_TRUE((*engine)->Submit(r, ch).ok());
    absl::Status s;
    alone.push_back(Collect(*ch, &s));
    ASSERT_TRUE(s.ok()) << s;
  }
  std::vector<std::shared_ptr<engine::RequestChannel>> channels;
  for (size_t i = 0; i < requests.size(); ++i) {
    channels.push_back(std::make_shared<engine::RequestChannel>());
    ASSERT_TRUE((*engine)->Submit(requests[i], channels.back()).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 4));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::Status s;
    EXPECT_EQ(Collect(*channels[i], &s), alone[i]) << "request " << i;
    EXPECT_TRUE(s.ok()) << s;
  }
  ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
  const auto stats = (*engine)->Stats();
  EXPECT_EQ(stats.free_blocks, stats.total_blocks);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, KvDtypeBatchInvarianceTest, ::testing::Values(DType::kBF16, DType::kF8E4M3),
                         [](const auto& info) { return DtypeName(info.param); });

// ------------------------------------------------------------------- sizing

// The same kv_cache_memory holds about twice the blocks in bf16 and ~4x in fp8.
TEST(KvCacheSizingTest, SameMemoryHoldsMoreBlocksInNarrowerDtypes) {
  int32_t blocks[3];
  int i = 0;
  for (DType d : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    engine::EngineOptions options;
    options.model_dir = testing::ModelFixtureDir("qwen3_f32");
    options.kv_cache_memory = 8 << 20;
    options.kv_cache_dtype = d;
    auto engine = engine::Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    blocks[i++] = (*engine)->Stats().total_blocks;
    EXPECT_EQ((*engine)->kv_cache_shape().num_blocks, (*engine)->Stats().total_blocks);
  }
  EXPECT_GE(blocks[1], 2 * blocks[0] - 1);
  EXPECT_LE(blocks[1], 2 * blocks[0] + 1);
  EXPECT_GT(blocks[2], 3 * blocks[0]);
  std::cout << "8 MiB of qwen3_f32 KV: " << blocks[0] << " f32 blocks, " << blocks[1] << " bf16, " << blocks[2]
            << " fp8\n";
}

}  // namespace
}  // namespace sluice
