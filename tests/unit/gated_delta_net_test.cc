// The Gated DeltaNet kernels (kernels/gated_delta_net.h): the chunked and recurrent
// delta-rule paths against each other and against a double-precision reference, ragged
// batches against single-sequence runs, state carry-over across calls, the causal conv
// and the gated RMSNorm against naive references, checkpoints taken inside a segment and
// slot copies (bit for bit against shorter and resumed calls), and everything against
// transformers' qwen3_next functions through tests/data/kernels/gated_delta_net.safetensors (made by
// tests/fixtures/make_gdn_kernel_fixture.py).
#include "kernels/gated_delta_net.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/cache/state_cache.h"
#include "engine/model/device_batch.h"
#include "engine/model/forward_batch.h"
#include "engine/weights/safetensors.h"
#include "gtest/gtest.h"
#include "tests/unit/tensor_test_util.h"

namespace sluice::kernels {
namespace {

using Mode = GatedDeltaRuleMode;
using Seq = LinearAttentionSequence;

using testing::Make;
using testing::Randn;

Tensor Zeros(std::vector<int64_t> shape) { return *Tensor::Zeros(std::move(shape), DType::kF32); }

// A writable copy (safetensors tensors are views of a read-only mapping).
Tensor Copy(const Tensor& t) {
  Tensor c = *Tensor::Empty(t.shape(), t.dtype());
  std::memcpy(c.raw(), t.raw(), t.bytes());
  return c;
}

float MaxAbsDiff(const float* a, const float* b, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}
float MaxAbsDiff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  return MaxAbsDiff(a.data<float>(), b.data<float>(), std::min(a.numel(), b.numel()));
}
float MaxAbs(const Tensor& a) {
  float m = 0.f;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(a.data<float>()[i]));
  return m;
}

// ---------------------------------------------------------------------------------------
// Gated delta rule
// ---------------------------------------------------------------------------------------

struct DeltaRuleInputs {
  int64_t tokens = 0, key_heads = 0, value_heads = 0, dk = 0, dv = 0;
  Tensor q, k, v, g, beta;
};

// Inputs with the magnitudes of a real layer: q, k, v as after the conv; per value head
// g = −A · softplus(a + dt_bias) with A spread over [0.01, 16] log-uniformly (some heads
// nearly forget nothing, some forget fast) and β = sigmoid(b).
DeltaRuleInputs RandomDeltaRuleInputs(int64_t tokens, int64_t key_heads, int64_t value_heads,
                                      int64_t dk, int64_t dv, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  auto randn = [&](int64_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
  };
  DeltaRuleInputs in;
  in.tokens = tokens;
  in.key_heads = key_heads;
  in.value_heads = value_heads;
  in.dk = dk;
  in.dv = dv;
  in.q = Make(randn(tokens * key_heads * dk), {tokens, key_heads, dk});
  in.k = Make(randn(tokens * key_heads * dk), {tokens, key_heads, dk});
  in.v = Make(randn(tokens * value_heads * dv), {tokens, value_heads, dv});
  std::vector<float> a_coef(value_heads), dt_bias(value_heads);
  for (int64_t h = 0; h < value_heads; ++h) {
    a_coef[h] = std::exp(std::log(0.01f) + uniform(rng) * (std::log(16.f) - std::log(0.01f)));
    dt_bias[h] = -4.f + 5.f * uniform(rng);
  }
  std::vector<float> g(tokens * value_heads), beta(tokens * value_heads);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < value_heads; ++h) {
      const float a = normal(rng) + dt_bias[h];
      const float softplus = a > 20.f ? a : std::log1p(std::exp(a));
      g[t * value_heads + h] = -a_coef[h] * softplus;
      beta[t * value_heads + h] = 1.f / (1.f + std::exp(-normal(rng)));
    }
  }
  in.g = Make(g, {tokens, value_heads});
  in.beta = Make(beta, {tokens, value_heads});
  return in;
}

Tensor RandomState(int64_t slots, int64_t heads, int64_t dk, int64_t dv, uint32_t seed,
                   float scale = 0.5f) {
  return Make(Randn(slots * heads * dk * dv, seed, scale), {slots, heads, dk, dv});
}

// Rows [start, start + count) of every input.
DeltaRuleInputs Slice(const DeltaRuleInputs& in, int64_t start, int64_t count) {
  DeltaRuleInputs s = in;
  s.tokens = count;
  s.q = in.q.Rows(start, count);
  s.k = in.k.Rows(start, count);
  s.v = in.v.Rows(start, count);
  s.g = in.g.Rows(start, count);
  s.beta = in.beta.Rows(start, count);
  return s;
}

Tensor RunDeltaRule(const DeltaRuleInputs& in, absl::Span<const Seq> seqs, Tensor* state,
                    Mode mode) {
  Tensor out = Zeros({in.tokens, in.value_heads, in.dv});
  absl::Status st = GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, seqs, state, &out, mode);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// The recurrence of the notes in double precision, one sequence in slot 0:
//   q ← l2norm(q)/√d_k, k ← l2norm(k); S ← e^g S; δ = β(v − Sᵀk); S ← S + kδᵀ; o = Sᵀq.
Tensor ReferenceDeltaRule(const DeltaRuleInputs& in, Tensor* state) {
  const int64_t hk = in.key_heads, hv = in.value_heads, dk = in.dk, dv = in.dv;
  Tensor out = Zeros({in.tokens, hv, dv});
  for (int64_t h = 0; h < hv; ++h) {
    const int64_t kh = h / (hv / hk);
    std::vector<double> s(state->data<float>() + h * dk * dv,
                          state->data<float>() + (h + 1) * dk * dv);
    for (int64_t t = 0; t < in.tokens; ++t) {
      std::vector<double> q(dk), k(dk), delta(dv);
      double qq = 0, kk = 0;
      for (int64_t i = 0; i < dk; ++i) {
        q[i] = in.q.data<float>()[(t * hk + kh) * dk + i];
        k[i] = in.k.data<float>()[(t * hk + kh) * dk + i];
        qq += q[i] * q[i];
        kk += k[i] * k[i];
      }
      for (int64_t i = 0; i < dk; ++i) {
        q[i] /= std::sqrt(qq + 1e-6) * std::sqrt(static_cast<double>(dk));
        k[i] /= std::sqrt(kk + 1e-6);
      }
      const double decay = std::exp(static_cast<double>(in.g.data<float>()[t * hv + h]));
      const double beta = in.beta.data<float>()[t * hv + h];
      for (double& x : s) x *= decay;
      for (int64_t c = 0; c < dv; ++c) {
        double sk = 0;
        for (int64_t i = 0; i < dk; ++i) sk += s[i * dv + c] * k[i];
        delta[c] = beta * (in.v.data<float>()[(t * hv + h) * dv + c] - sk);
      }
      for (int64_t i = 0; i < dk; ++i) {
        for (int64_t c = 0; c < dv; ++c) s[i * dv + c] += k[i] * delta[c];
      }
      for (int64_t c = 0; c < dv; ++c) {
        double o = 0;
        for (int64_t i = 0; i < dk; ++i) o += s[i * dv + c] * q[i];
        out.data<float>()[(t * hv + h) * dv + c] = static_cast<float>(o);
      }
    }
    for (int64_t i = 0; i < dk * dv; ++i) state->data<float>()[h * dk * dv + i] = s[i];
  }
  return out;
}

struct HeadShape {
  int64_t key_heads, value_heads, dk, dv;
};

class DeltaRuleShapeTest : public ::testing::TestWithParam<HeadShape> {};

TEST_P(DeltaRuleShapeTest, ChunkedMatchesRecurrentAndDoubleReferenceOver1000Tokens) {
  const HeadShape hs = GetParam();
  const int64_t tokens = 1000;
  DeltaRuleInputs in = RandomDeltaRuleInputs(tokens, hs.key_heads, hs.value_heads, hs.dk, hs.dv,
                                             static_cast<uint32_t>(hs.dk * 131 + hs.value_heads));
  for (bool with_initial_state : {false, true}) {
    SCOPED_TRACE(with_initial_state ? "initial state" : "zero state");
    Tensor initial = with_initial_state ? RandomState(1, hs.value_heads, hs.dk, hs.dv, 7)
                                        : Zeros({1, hs.value_heads, hs.dk, hs.dv});
    const Seq seq{0, static_cast<int32_t>(tokens), 0, false};
    Tensor state_chunked = Copy(initial);
    Tensor state_recurrent = Copy(initial);
    Tensor state_reference = Copy(initial);
    Tensor chunked = RunDeltaRule(in, {seq}, &state_chunked, Mode::kChunked);
    Tensor recurrent = RunDeltaRule(in, {seq}, &state_recurrent, Mode::kRecurrent);
    Tensor reference = ReferenceDeltaRule(in, &state_reference);

    // The outputs are O(0.1–1); agreement to 1e-5 is fp32 rounding, not luck.
    ASSERT_GT(MaxAbs(chunked), 0.05f);
    EXPECT_LE(MaxAbsDiff(chunked, recurrent), 1e-5f);
    EXPECT_LE(MaxAbsDiff(state_chunked, state_recurrent), 1e-5f);
    EXPECT_LE(MaxAbsDiff(chunked, reference), 1e-5f);
    EXPECT_LE(MaxAbsDiff(recurrent, reference), 1e-5f);
    EXPECT_LE(MaxAbsDiff(state_chunked, state_reference), 1e-5f);
    EXPECT_LE(MaxAbsDiff(state_recurrent, state_reference), 1e-5f);
    // The state must have moved.
    EXPECT_GT(MaxAbsDiff(state_chunked, initial), 0.05f);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DeltaRuleShapeTest,
    ::testing::Values(HeadShape{2, 2, 32, 32},   // no grouping, square state
                      HeadShape{2, 4, 32, 16},   // H_k < H_v, d_k > d_v
                      HeadShape{1, 3, 24, 40}),  // one key head for three, d_k < d_v, odd dims
    [](const ::testing::TestParamInfo<HeadShape>& info) {
      const HeadShape& s = info.param;
      return "hk" + std::to_string(s.key_heads) + "_hv" + std::to_string(s.value_heads) + "_dk" +
             std::to_string(s.dk) + "_dv" + std::to_string(s.dv);
    });

TEST(GatedDeltaRuleTest, PrefillSplitAcrossCallsEqualsOneCall) {
  const int64_t hk = 2, hv = 4, dk = 32, dv = 24;
  DeltaRuleInputs in = RandomDeltaRuleInputs(137, hk, hv, dk, dv, 11);
  Tensor whole_state = RandomState(1, hv, dk, dv, 3);  // garbage: the sequence is new
  Tensor whole = RunDeltaRule(in, {Seq{0, 137, 0, true}}, &whole_state, Mode::kAuto);

  for (int64_t first : {100, 64, 1, 136}) {
    SCOPED_TRACE("first call " + std::to_string(first) + " tokens");
    Tensor state = RandomState(1, hv, dk, dv, 3);
    Tensor a = RunDeltaRule(Slice(in, 0, first), {Seq{0, static_cast<int32_t>(first), 0, true}},
                            &state, Mode::kAuto);
    const int64_t rest = 137 - first;
    Tensor b = RunDeltaRule(Slice(in, first, rest), {Seq{0, static_cast<int32_t>(rest), 0, false}},
                            &state, Mode::kAuto);
    EXPECT_LE(MaxAbsDiff(a.data<float>(), whole.data<float>(), a.numel()), 1e-5f);
    EXPECT_LE(MaxAbsDiff(b.data<float>(), whole.data<float>() + a.numel(), b.numel()), 1e-5f);
    EXPECT_LE(MaxAbsDiff(state, whole_state), 1e-5f);
  }
}

TEST(GatedDeltaRuleTest, RaggedBatchEqualsEachSequenceAlone) {
  const int64_t hk = 2, hv = 4, dk = 32, dv = 16;
  const std::vector<int32_t> lengths = {1, 7, 64, 65, 130};
  const std::vector<int32_t> slots = {4, 0, 6, 2, 5};  // out of order, with unused slots
  const std::vector<bool> fresh = {false, true, false, true, false};
  int64_t tokens = 0;
  for (int32_t l : lengths) tokens += l;
  DeltaRuleInputs in = RandomDeltaRuleInputs(tokens, hk, hv, dk, dv, 21);
  const Tensor initial = RandomState(7, hv, dk, dv, 5);

  for (Mode mode : {Mode::kAuto, Mode::kChunked, Mode::kRecurrent}) {
    SCOPED_TRACE(static_cast<int>(mode));
    std::vector<Seq> seqs;
    int32_t start = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      seqs.push_back(Seq{start, lengths[i], slots[i], fresh[i]});
      start += lengths[i];
    }
    Tensor batch_state = Copy(initial);
    Tensor batch = RunDeltaRule(in, seqs, &batch_state, mode);

    const int64_t head_state = hv * dk * dv;
    for (size_t i = 0; i < seqs.size(); ++i) {
      SCOPED_TRACE("sequence of length " + std::to_string(lengths[i]));
      Tensor alone_state = Copy(initial);
      Tensor alone = RunDeltaRule(Slice(in, seqs[i].start, lengths[i]),
                                  {Seq{0, lengths[i], slots[i], fresh[i]}}, &alone_state, mode);
      const float* rows = batch.data<float>() + seqs[i].start * hv * dv;
      EXPECT_LE(MaxAbsDiff(alone.data<float>(), rows, alone.numel()), 1e-6f);
      EXPECT_LE(MaxAbsDiff(alone_state.data<float>() + slots[i] * head_state,
                           batch_state.data<float>() + slots[i] * head_state, head_state),
                1e-6f);
    }
    // Slots no sequence uses are untouched.
    for (int32_t unused : {1, 3}) {
      EXPECT_EQ(MaxAbsDiff(initial.data<float>() + unused * head_state,
                           batch_state.data<float>() + unused * head_state, head_state),
                0.f);
    }
  }
}

TEST(GatedDeltaRuleTest, DecodeStepsContinuePrefill) {
  // Prefill 70 tokens chunked, then 5 single-token decode calls with kAuto (recurrent),
  // equals the double reference over all 75.
  const int64_t hk = 1, hv = 2, dk = 64, dv = 32;
  DeltaRuleInputs in = RandomDeltaRuleInputs(75, hk, hv, dk, dv, 31);
  Tensor ref_state = Zeros({1, hv, dk, dv});
  Tensor reference = ReferenceDeltaRule(in, &ref_state);
  Tensor state = RandomState(1, hv, dk, dv, 9);
  Tensor prefill = RunDeltaRule(Slice(in, 0, 70), {Seq{0, 70, 0, true}}, &state, Mode::kAuto);
  EXPECT_LE(MaxAbsDiff(prefill.data<float>(), reference.data<float>(), prefill.numel()), 1e-5f);
  for (int64_t t = 70; t < 75; ++t) {
    Tensor step = RunDeltaRule(Slice(in, t, 1), {Seq{0, 1, 0, false}}, &state, Mode::kAuto);
    EXPECT_LE(MaxAbsDiff(step.data<float>(), reference.data<float>() + t * hv * dv, hv * dv), 1e-5f)
        << "token " << t;
  }
  EXPECT_LE(MaxAbsDiff(state, ref_state), 1e-5f);
}

TEST(GatedDeltaRuleTest, FreshEmptySequenceZeroesItsStateAndOthersAreUntouched) {
  DeltaRuleInputs in = RandomDeltaRuleInputs(3, 1, 1, 16, 16, 41);
  Tensor state = RandomState(2, 1, 16, 16, 1);
  const Tensor before = Copy(state);
  Tensor out = RunDeltaRule(in, {Seq{0, 0, 0, true}, Seq{0, 0, 1, false}}, &state, Mode::kAuto);
  EXPECT_EQ(MaxAbs(Tensor(state.Rows(0, 1))), 0.f);
  EXPECT_EQ(MaxAbsDiff(state.Rows(1, 1), before.Rows(1, 1)), 0.f);
}

TEST(GatedDeltaRuleTest, RejectsBadArguments) {
  DeltaRuleInputs in = RandomDeltaRuleInputs(10, 2, 4, 16, 8, 51);
  Tensor state = Zeros({3, 4, 16, 8});
  Tensor out = Zeros({10, 4, 8});
  auto call = [&](const std::vector<Seq>& seqs, Tensor* st, Tensor* o) {
    return GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, seqs, st, o, Mode::kAuto);
  };
  EXPECT_TRUE(call({Seq{0, 10, 0, true}}, &state, &out).ok());
  // Segments and slots.
  EXPECT_EQ(call({Seq{5, 6, 0, true}}, &state, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({Seq{-1, 2, 0, true}}, &state, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({Seq{0, -1, 0, true}}, &state, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({Seq{0, 5, 3, true}}, &state, &out).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(call({Seq{0, 5, 0, true}, Seq{5, 5, 0, true}}, &state, &out).code(),
            absl::StatusCode::kInvalidArgument);  // shared slot
  EXPECT_EQ(call({Seq{0, 6, 0, true}, Seq{5, 5, 1, true}}, &state, &out).code(),
            absl::StatusCode::kInvalidArgument);  // overlapping rows
  // Shapes.
  Tensor bad_state = Zeros({3, 4, 8, 16});
  EXPECT_EQ(call({Seq{0, 10, 0, true}}, &bad_state, &out).code(),
            absl::StatusCode::kInvalidArgument);
  Tensor bad_out = Zeros({10, 4, 16});
  EXPECT_EQ(call({Seq{0, 10, 0, true}}, &state, &bad_out).code(),
            absl::StatusCode::kInvalidArgument);
  DeltaRuleInputs ungrouped = RandomDeltaRuleInputs(10, 3, 4, 16, 8, 52);
  EXPECT_EQ(GatedDeltaRule(ungrouped.q, ungrouped.k, ungrouped.v, ungrouped.g, ungrouped.beta,
                           {Seq{0, 10, 0, true}}, &state, &out)
                .code(),
            absl::StatusCode::kInvalidArgument);
  Tensor bf16 = *Tensor::Zeros({10, 2, 16}, DType::kBF16);
  EXPECT_EQ(
      GatedDeltaRule(bf16, in.k, in.v, in.g, in.beta, {Seq{0, 10, 0, true}}, &state, &out).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, {Seq{0, 10, 0, true}}, &state, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  // The output may not alias an input.
  Tensor v_alias = in.v;
  EXPECT_EQ(call({Seq{0, 10, 0, true}}, &state, &v_alias).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------
// Causal conv1d + SiLU
// ---------------------------------------------------------------------------------------

// y[t, c] = silu(Σ_j w[c, j] · xpad[t + j, c]) with xpad = [state rows (K-1), x rows],
// state given as [C, K-1]; returns y and writes the new state.
std::vector<float> ReferenceConv(const std::vector<float>& x, int64_t tokens, int64_t channels,
                                 const std::vector<float>& w, int64_t kernel,
                                 std::vector<float>* state) {
  const int64_t history = kernel - 1;
  std::vector<double> xpad((history + tokens) * channels);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < history; ++i) xpad[i * channels + c] = (*state)[c * history + i];
  }
  for (int64_t i = 0; i < tokens * channels; ++i) xpad[history * channels + i] = x[i];
  std::vector<float> y(tokens * channels);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < channels; ++c) {
      double acc = 0;
      for (int64_t j = 0; j < kernel; ++j) acc += w[c * kernel + j] * xpad[(t + j) * channels + c];
      y[t * channels + c] = static_cast<float>(acc / (1.0 + std::exp(-acc)));
    }
  }
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < history; ++i) {
      (*state)[c * history + i] = static_cast<float>(xpad[(tokens + i) * channels + c]);
    }
  }
  return y;
}

TEST(CausalConv1dSiluTest, RaggedBatchMatchesReference) {
  // 1100 channels: the CPU body works in blocks of 512, so two full blocks and a partial one.
  const int64_t channels = 1100, kernel = 4, history = kernel - 1, slots = 6;
  const std::vector<int32_t> lengths = {1, 2, 3, 9, 0, 40};
  const std::vector<int32_t> slot_of = {3, 0, 5, 1, 4, 2};
  const std::vector<bool> fresh = {false, false, true, false, true, true};
  int64_t tokens = 0;
  for (int32_t l : lengths) tokens += l;
  const std::vector<float> x = Randn(tokens * channels, 1);
  const std::vector<float> w = Randn(channels * kernel, 2, 0.5f);
  const std::vector<float> state0 = Randn(slots * channels * history, 3);

  Tensor xt = Make(x, {tokens, channels});
  Tensor wt = Make(w, {channels, kernel});
  for (bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "out of place");
    Tensor state = Make(state0, {slots, channels, history});
    Tensor input = Copy(xt);
    Tensor y = in_place ? input : Zeros({tokens, channels});
    std::vector<Seq> seqs;
    int32_t start = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      seqs.push_back(Seq{start, lengths[i], slot_of[i], fresh[i]});
      start += lengths[i];
    }
    ASSERT_TRUE(CausalConv1dSilu(input, wt, seqs, &state, &y).ok());

    for (size_t i = 0; i < seqs.size(); ++i) {
      SCOPED_TRACE("sequence of length " + std::to_string(lengths[i]));
      const int64_t row = seqs[i].start;
      std::vector<float> ref_state(channels * history, 0.f);
      if (!fresh[i]) {
        std::copy(state0.begin() + slot_of[i] * channels * history,
                  state0.begin() + (slot_of[i] + 1) * channels * history, ref_state.begin());
      }
      std::vector<float> xs(x.begin() + row * channels, x.begin() + (row + lengths[i]) * channels);
      std::vector<float> ref = ReferenceConv(xs, lengths[i], channels, w, kernel, &ref_state);
      EXPECT_LE(MaxAbsDiff(ref.data(), y.data<float>() + row * channels, ref.size()), 1e-5f);
      EXPECT_EQ(MaxAbsDiff(ref_state.data(), state.data<float>() + slot_of[i] * channels * history,
                           ref_state.size()),
                0.f);
    }
  }
}

TEST(CausalConv1dSiluTest, StateCarriesOverAndShortSegmentsKeepOlderInputs) {
  const int64_t channels = 20, kernel = 4, history = kernel - 1;
  const std::vector<float> x = Randn(6 * channels, 4);
  Tensor xt = Make(x, {6, channels});
  Tensor wt = Make(Randn(channels * kernel, 5, 0.5f), {channels, kernel});

  // One call of 6 tokens.
  Tensor whole_state = Zeros({1, channels, history});
  Tensor whole = Zeros({6, channels});
  ASSERT_TRUE(CausalConv1dSilu(xt, wt, {Seq{0, 6, 0, true}}, &whole_state, &whole).ok());

  // Prefill 5 then decode 1.
  Tensor state = Make(Randn(channels * history, 6), {1, channels, history});  // garbage
  Tensor y5 = Zeros({5, channels});
  ASSERT_TRUE(CausalConv1dSilu(xt.Rows(0, 5), wt, {Seq{0, 5, 0, true}}, &state, &y5).ok());
  Tensor y1 = Zeros({1, channels});
  ASSERT_TRUE(CausalConv1dSilu(xt.Rows(5, 1), wt, {Seq{0, 1, 0, false}}, &state, &y1).ok());
  EXPECT_EQ(MaxAbsDiff(y5.data<float>(), whole.data<float>(), 5 * channels), 0.f);
  EXPECT_EQ(MaxAbsDiff(y1.data<float>(), whole.data<float>() + 5 * channels, channels), 0.f);
  EXPECT_EQ(MaxAbsDiff(state, whole_state), 0.f);

  // Six single-token calls (each shorter than K-1): same outputs, same state.
  Tensor step_state = Zeros({1, channels, history});
  for (int64_t t = 0; t < 6; ++t) {
    Tensor yt = Zeros({1, channels});
    ASSERT_TRUE(CausalConv1dSilu(xt.Rows(t, 1), wt, {Seq{0, 1, 0, t == 0}}, &step_state, &yt).ok());
    EXPECT_EQ(MaxAbsDiff(yt.data<float>(), whole.data<float>() + t * channels, channels), 0.f)
        << "token " << t;
  }
  EXPECT_EQ(MaxAbsDiff(step_state, whole_state), 0.f);

  // After 2 tokens of a fresh sequence the state is [0, x0, x1] per channel.
  Tensor two_state = Make(Randn(channels * history, 7), {1, channels, history});
  Tensor y2 = Zeros({2, channels});
  ASSERT_TRUE(CausalConv1dSilu(xt.Rows(0, 2), wt, {Seq{0, 2, 0, true}}, &two_state, &y2).ok());
  for (int64_t c = 0; c < channels; ++c) {
    EXPECT_EQ(two_state.data<float>()[c * history + 0], 0.f);
    EXPECT_EQ(two_state.data<float>()[c * history + 1], x[0 * channels + c]);
    EXPECT_EQ(two_state.data<float>()[c * history + 2], x[1 * channels + c]);
  }
}

TEST(CausalConv1dSiluTest, RejectsBadArguments) {
  Tensor x = Zeros({4, 8});
  Tensor w = Zeros({8, 4});
  Tensor state = Zeros({2, 8, 3});
  Tensor y = Zeros({4, 8});
  EXPECT_TRUE(CausalConv1dSilu(x, w, {Seq{0, 4, 1, true}}, &state, &y).ok());
  Tensor bad_state = Zeros({2, 8, 4});
  EXPECT_EQ(CausalConv1dSilu(x, w, {Seq{0, 4, 1, true}}, &bad_state, &y).code(),
            absl::StatusCode::kInvalidArgument);
  Tensor bad_w = Zeros({7, 4});
  EXPECT_EQ(CausalConv1dSilu(x, bad_w, {Seq{0, 4, 1, true}}, &state, &y).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CausalConv1dSilu(x, w, {Seq{0, 4, 2, true}}, &state, &y).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(CausalConv1dSilu(x, w, {Seq{2, 3, 0, true}}, &state, &y).code(),
            absl::StatusCode::kInvalidArgument);
  Tensor shifted = x.Rows(1, 3);  // overlaps x without being x
  Tensor x3 = x.Rows(0, 3);
  EXPECT_EQ(CausalConv1dSilu(x3, w, {Seq{0, 3, 0, true}}, &state, &shifted).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------
// Gated RMSNorm
// ---------------------------------------------------------------------------------------

TEST(GatedRmsNormTest, MatchesReferenceAndWorksInPlace) {
  const int64_t tokens = 37, heads = 3, d = 48;
  const float eps = 1e-6f;
  const std::vector<float> x = Randn(tokens * heads * d, 1, 2.f);
  const std::vector<float> z = Randn(tokens * heads * d, 2);
  const std::vector<float> w = Randn(d, 3);
  std::vector<float> ref(x.size());
  for (int64_t r = 0; r < tokens * heads; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += double(x[r * d + j]) * x[r * d + j];
    const double inv = 1.0 / std::sqrt(ss / d + eps);
    for (int64_t j = 0; j < d; ++j) {
      const double zz = z[r * d + j];
      ref[r * d + j] = static_cast<float>(w[j] * (x[r * d + j] * inv) * zz / (1 + std::exp(-zz)));
    }
  }
  Tensor xt = Make(x, {tokens, heads, d});
  Tensor zt = Make(z, {tokens, heads, d});
  Tensor wt = Make(w, {d});
  Tensor out = Zeros({tokens, heads, d});
  ASSERT_TRUE(GatedRmsNorm(xt, zt, wt, eps, &out).ok());
  EXPECT_LE(MaxAbsDiff(ref.data(), out.data<float>(), ref.size()), 1e-5f);
  ASSERT_TRUE(GatedRmsNorm(xt, zt, wt, eps, &xt).ok());
  EXPECT_EQ(MaxAbsDiff(xt, out), 0.f);

  Tensor bad_w = Zeros({d + 1});
  EXPECT_EQ(GatedRmsNorm(xt, zt, bad_w, eps, &out).code(), absl::StatusCode::kInvalidArgument);
  Tensor bad_z = Zeros({tokens, heads, d - 1});
  EXPECT_EQ(GatedRmsNorm(xt, bad_z, wt, eps, &out).code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------
// Checkpoints inside a segment and slot copies (prefix caching of recurrent state)
// ---------------------------------------------------------------------------------------

using testing::BitEqual;
using testing::MakeI32;

// seq with a checkpoint of its first `len` tokens into `slot`.
Seq WithCheckpoint(Seq seq, int32_t slot, int32_t len) {
  seq.checkpoint_slot = slot;
  seq.checkpoint_len = len;
  return seq;
}

// Row `slot` of a state tensor, as its own tensor (a copy), with the slot dim kept.
Tensor SlotOf(const Tensor& state, int64_t slot) { return Copy(state.Rows(slot, 1)); }

Tensor RunConv(const Tensor& x, const Tensor& w, absl::Span<const Seq> seqs, Tensor* state) {
  Tensor y = Zeros(x.shape());
  absl::Status st = CausalConv1dSilu(x, w, seqs, state, &y);
  EXPECT_TRUE(st.ok()) << st;
  return y;
}

// The sequences as a CPU LinearAttentionBatch with the two checkpoint tensors.
LinearAttentionBatch ToBatchWithCheckpoints(const std::vector<Seq>& seqs) {
  std::vector<int32_t> start, length, slot, zero, ckpt_slot, ckpt_len;
  for (const Seq& s : seqs) {
    start.push_back(s.start);
    length.push_back(s.length);
    slot.push_back(s.state_slot);
    zero.push_back(s.zero_initial_state ? 1 : 0);
    ckpt_slot.push_back(s.checkpoint_slot);
    ckpt_len.push_back(s.checkpoint_len);
  }
  const int64_t n = static_cast<int64_t>(seqs.size());
  return {MakeI32(start, {n}),     MakeI32(length, {n}),    MakeI32(slot, {n}),
          MakeI32(zero, {n}),      MakeI32(ckpt_slot, {n}), MakeI32(ckpt_len, {n})};
}

constexpr int64_t kHk = 2, kHv = 4, kDk = 32, kDv = 16;

TEST(GatedDeltaRuleCheckpointTest, ChunkedCheckpointEqualsTheShorterCallBitForBit) {
  const int32_t tokens = 200;
  DeltaRuleInputs in = RandomDeltaRuleInputs(tokens, kHk, kHv, kDk, kDv, 61);
  // Slot 0: the sequence; slot 2: its checkpoint; slots 1 and 3 hold garbage throughout.
  const Tensor initial = RandomState(4, kHv, kDk, kDv, 62);
  for (bool fresh : {true, false}) {
    for (Mode mode : {Mode::kChunked, Mode::kAuto}) {
      SCOPED_TRACE(std::string(fresh ? "fresh" : "carried state") + " mode " +
                   std::to_string(static_cast<int>(mode)));
      const Seq seq{0, tokens, 0, fresh};
      Tensor plain_state = Copy(initial);
      const Tensor plain = RunDeltaRule(in, {seq}, &plain_state, mode);
      for (int32_t len : {64, 128, 200}) {
        SCOPED_TRACE("checkpoint at " + std::to_string(len));
        Tensor state = Copy(initial);
        const Tensor out = RunDeltaRule(in, {WithCheckpoint(seq, 2, len)}, &state, mode);
        // Outputs and the final state: the same bits as without the checkpoint.
        EXPECT_TRUE(BitEqual(out, plain));
        EXPECT_TRUE(BitEqual(SlotOf(state, 0), SlotOf(plain_state, 0)));
        // The checkpoint: the state a call of only the first `len` tokens leaves.
        Tensor short_state = Copy(initial);
        RunDeltaRule(Slice(in, 0, len), {Seq{0, len, 0, fresh}}, &short_state, mode);
        EXPECT_TRUE(BitEqual(SlotOf(state, 2), SlotOf(short_state, 0)));
        EXPECT_GT(MaxAbs(SlotOf(state, 2)), 0.05f);
        // No other slot moved.
        for (int64_t other : {1, 3}) {
          EXPECT_TRUE(BitEqual(SlotOf(state, other), SlotOf(initial, other))) << other;
        }
      }
    }
  }
}

TEST(GatedDeltaRuleCheckpointTest, ResumingFromACheckpointKeepsTheChunkGrid) {
  const int32_t tokens = 200;
  DeltaRuleInputs in = RandomDeltaRuleInputs(tokens, kHk, kHv, kDk, kDv, 71);
  const Tensor initial = RandomState(4, kHv, kDk, kDv, 72);
  Tensor whole_state = Copy(initial);
  const Tensor whole = RunDeltaRule(in, {Seq{0, tokens, 0, true}}, &whole_state, Mode::kAuto);
  const int64_t row = kHv * kDv;  // floats of output per token
  for (int32_t len : {64, 128}) {
    SCOPED_TRACE("checkpoint at " + std::to_string(len));
    Tensor state = Copy(initial);
    RunDeltaRule(in, {WithCheckpoint(Seq{0, tokens, 0, true}, 2, len)}, &state, Mode::kAuto);
    // Into a fresh slot, as a prefix-cache hit does, then the rest of the prompt.
    ASSERT_TRUE(CopyStateSlots({SlotCopy{2, 3}}, &state).ok());
    EXPECT_TRUE(BitEqual(SlotOf(state, 3), SlotOf(state, 2)));
    const int32_t rest = tokens - len;
    const Tensor tail =
        RunDeltaRule(Slice(in, len, rest), {Seq{0, rest, 3, false}}, &state, Mode::kAuto);
    EXPECT_EQ(std::memcmp(tail.data<float>(), whole.data<float>() + len * row,
                          tail.numel() * sizeof(float)),
              0);
    EXPECT_TRUE(BitEqual(SlotOf(state, 3), SlotOf(whole_state, 0)));
  }
  // The same split off the grid (100 tokens, then 100) is only close: the chunks of the
  // second call start at 100, not 128, so fp32 rounds differently. This is what the
  // checkpoint rule guards against, and shows that the bit comparisons above can fail.
  Tensor state = Copy(initial);
  RunDeltaRule(Slice(in, 0, 100), {Seq{0, 100, 3, true}}, &state, Mode::kAuto);
  const Tensor tail = RunDeltaRule(Slice(in, 100, 100), {Seq{0, 100, 3, false}}, &state, Mode::kAuto);
  const float diff = MaxAbsDiff(tail.data<float>(), whole.data<float>() + 100 * row, tail.numel());
  EXPECT_GT(diff, 0.f);
  EXPECT_LE(diff, 1e-5f);
}

TEST(GatedDeltaRuleCheckpointTest, RecurrentModeCheckpointsAtAnyLength) {
  const int32_t tokens = 23;
  DeltaRuleInputs in = RandomDeltaRuleInputs(tokens, kHk, kHv, kDk, kDv, 81);
  const Tensor initial = RandomState(3, kHv, kDk, kDv, 82);
  Tensor plain_state = Copy(initial);
  const Tensor plain = RunDeltaRule(in, {Seq{0, tokens, 1, false}}, &plain_state, Mode::kRecurrent);
  for (int32_t len : {1, 5, 22, 23}) {
    SCOPED_TRACE("checkpoint at " + std::to_string(len));
    Tensor state = Copy(initial);
    const Tensor out = RunDeltaRule(in, {WithCheckpoint(Seq{0, tokens, 1, false}, 0, len)}, &state,
                                    Mode::kRecurrent);
    EXPECT_TRUE(BitEqual(out, plain));
    EXPECT_TRUE(BitEqual(SlotOf(state, 1), SlotOf(plain_state, 1)));
    Tensor short_state = Copy(initial);
    RunDeltaRule(Slice(in, 0, len), {Seq{0, len, 1, false}}, &short_state, Mode::kRecurrent);
    EXPECT_TRUE(BitEqual(SlotOf(state, 0), SlotOf(short_state, 1)));
  }
  // A decode step (kAuto, one token: the recurrent path) checkpointing its only token.
  Tensor state = Copy(initial);
  RunDeltaRule(Slice(in, 0, 1), {WithCheckpoint(Seq{0, 1, 1, false}, 2, 1)}, &state, Mode::kAuto);
  EXPECT_TRUE(BitEqual(SlotOf(state, 2), SlotOf(state, 1)));
}

TEST(GatedDeltaRuleCheckpointTest, RaggedBatchWithCheckpointsEqualsEachSequenceAlone) {
  const std::vector<int32_t> lengths = {1, 64, 150, 7, 130};
  const std::vector<int32_t> slots = {4, 0, 6, 2, 5};
  const std::vector<bool> fresh = {false, true, false, true, false};
  const std::vector<int32_t> ckpt_slot = {7, -1, 1, 3, 8};
  const std::vector<int32_t> ckpt_len = {1, 0, 128, 7, 64};
  int64_t tokens = 0;
  for (int32_t l : lengths) tokens += l;
  DeltaRuleInputs in = RandomDeltaRuleInputs(tokens, kHk, kHv, kDk, kDv, 91);
  const Tensor initial = RandomState(9, kHv, kDk, kDv, 92);
  std::vector<Seq> seqs;
  int32_t start = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    seqs.push_back(WithCheckpoint(Seq{start, lengths[i], slots[i], fresh[i]}, ckpt_slot[i], ckpt_len[i]));
    start += lengths[i];
  }
  Tensor batch_state = Copy(initial);
  const Tensor batch = RunDeltaRule(in, seqs, &batch_state, Mode::kAuto);
  // The tensor form: the same bits.
  Tensor tensor_state = Copy(initial);
  Tensor tensor_out = Zeros({tokens, kHv, kDv});
  ASSERT_TRUE(GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, ToBatchWithCheckpoints(seqs),
                             &tensor_state, &tensor_out)
                  .ok());
  EXPECT_TRUE(BitEqual(tensor_out, batch) && BitEqual(tensor_state, batch_state));
  for (size_t i = 0; i < seqs.size(); ++i) {
    SCOPED_TRACE("sequence of length " + std::to_string(lengths[i]));
    Tensor alone_state = Copy(initial);
    const Tensor alone = RunDeltaRule(Slice(in, seqs[i].start, lengths[i]),
                                      {Seq{0, lengths[i], slots[i], fresh[i]}}, &alone_state, Mode::kAuto);
    EXPECT_EQ(std::memcmp(alone.data<float>(), batch.data<float>() + seqs[i].start * kHv * kDv,
                          alone.numel() * sizeof(float)),
              0);
    EXPECT_TRUE(BitEqual(SlotOf(batch_state, slots[i]), SlotOf(alone_state, slots[i])));
    if (ckpt_slot[i] < 0) continue;
    Tensor short_state = Copy(initial);
    RunDeltaRule(Slice(in, seqs[i].start, ckpt_len[i]), {Seq{0, ckpt_len[i], slots[i], fresh[i]}},
                 &short_state, Mode::kAuto);
    EXPECT_TRUE(BitEqual(SlotOf(batch_state, ckpt_slot[i]), SlotOf(short_state, slots[i])));
  }
}

TEST(GatedDeltaRuleCheckpointTest, RejectsBadCheckpoints) {
  DeltaRuleInputs in = RandomDeltaRuleInputs(200, 1, 2, 16, 8, 95);
  const Tensor initial = RandomState(4, 2, 16, 8, 96);
  Tensor state = Copy(initial);
  Tensor out = Zeros({200, 2, 8});
  auto call = [&](const std::vector<Seq>& seqs, Mode mode = Mode::kAuto) {
    return GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, seqs, &state, &out, mode);
  };
  const Seq a{0, 150, 0, true}, b{150, 50, 1, false};
  // Not a chunk end of the chunked path, in both chunked modes; named in the message.
  for (Mode mode : {Mode::kAuto, Mode::kChunked}) {
    absl::Status s = call({WithCheckpoint(a, 2, 100)}, mode);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("chunk end"), std::string::npos) << s;
    EXPECT_NE(s.message().find("multiple of 64"), std::string::npos) << s;
  }
  // Lengths outside [1, length].
  EXPECT_EQ(call({WithCheckpoint(a, 2, 0)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(a, 2, 192)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(a, 2, -64)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(Seq{0, 0, 0, true}, 2, 1)}).code(),
            absl::StatusCode::kInvalidArgument);
  // Slots: outside the tensor, its own state slot, another sequence's, another checkpoint's.
  EXPECT_EQ(call({WithCheckpoint(a, 4, 64)}).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(call({WithCheckpoint(a, 0, 64)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(a, 1, 64), b}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({a, WithCheckpoint(b, 0, 50)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(a, 2, 64), WithCheckpoint(b, 2, 50)}).code(),
            absl::StatusCode::kInvalidArgument);
  // None of the refused calls wrote anything.
  EXPECT_TRUE(BitEqual(state, initial));
  // What is allowed: the segment's end, a multiple of 64, any length on the recurrent
  // path, negative slots meaning none.
  EXPECT_TRUE(call({WithCheckpoint(a, 2, 150), WithCheckpoint(b, 3, 50)}).ok());
  EXPECT_TRUE(call({WithCheckpoint(a, 2, 128)}).ok());
  EXPECT_TRUE(call({WithCheckpoint(a, 2, 100)}, Mode::kRecurrent).ok());
  EXPECT_TRUE(call({WithCheckpoint(a, -7, 100)}).ok());
  // The tensor form: both checkpoint tensors or neither.
  LinearAttentionBatch batch = ToBatchWithCheckpoints({WithCheckpoint(a, 2, 64)});
  EXPECT_TRUE(GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, batch, &state, &out).ok());
  LinearAttentionBatch half = batch;
  half.checkpoint_len = Tensor();
  EXPECT_EQ(GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, half, &state, &out).code(),
            absl::StatusCode::kInvalidArgument);
  LinearAttentionBatch bad_dtype = batch;
  bad_dtype.checkpoint_len = Make({64.f}, {1});
  EXPECT_EQ(GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, bad_dtype, &state, &out).code(),
            absl::StatusCode::kInvalidArgument);
  LinearAttentionBatch off_grid = ToBatchWithCheckpoints({WithCheckpoint(a, 2, 65)});
  EXPECT_EQ(GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, off_grid, &state, &out).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CausalConv1dSiluCheckpointTest, CheckpointIsTheShorterCallsTailAndResumeIsExact) {
  // 600 channels: a full 512-channel block and a partial one.
  const int64_t channels = 600, kernel = 4, history = kernel - 1;
  const int32_t tokens = 200;
  const Tensor x = Make(Randn(tokens * channels, 101), {tokens, channels});
  const Tensor w = Make(Randn(channels * kernel, 102, 0.5f), {channels, kernel});
  const Tensor initial = Make(Randn(4 * channels * history, 103), {4, channels, history});
  for (bool fresh : {true, false}) {
    SCOPED_TRACE(fresh ? "fresh" : "carried state");
    const Seq seq{0, tokens, 0, fresh};
    Tensor plain_state = Copy(initial);
    const Tensor plain = RunConv(x, w, {seq}, &plain_state);
    // Shorter than K-1 (the tail still holds older state), chunk ends, odd, the end.
    for (int32_t len : {1, 2, 3, 5, 64, 128, 199, 200}) {
      SCOPED_TRACE("checkpoint at " + std::to_string(len));
      for (bool in_place : {false, true}) {
        Tensor state = Copy(initial);
        Tensor input = Copy(x);
        Tensor y = in_place ? input : Zeros(x.shape());
        ASSERT_TRUE(CausalConv1dSilu(input, w, {WithCheckpoint(seq, 2, len)}, &state, &y).ok());
        EXPECT_TRUE(BitEqual(y, plain)) << in_place;
        EXPECT_TRUE(BitEqual(SlotOf(state, 0), SlotOf(plain_state, 0)));
        Tensor short_state = Copy(initial);
        RunConv(x.Rows(0, len), w, {Seq{0, len, 0, fresh}}, &short_state);
        EXPECT_TRUE(BitEqual(SlotOf(state, 2), SlotOf(short_state, 0))) << in_place;
        for (int64_t other : {1, 3}) EXPECT_TRUE(BitEqual(SlotOf(state, other), SlotOf(initial, other)));
        if (in_place || len == tokens) continue;
        // Resume from the checkpoint in a fresh slot: the rest of the outputs and the
        // final tail, bit for bit.
        ASSERT_TRUE(CopyStateSlots({SlotCopy{2, 3}}, &state).ok());
        const Tensor tail = RunConv(x.Rows(len, tokens - len), w, {Seq{0, tokens - len, 3, false}}, &state);
        EXPECT_EQ(std::memcmp(tail.data<float>(), plain.data<float>() + len * channels,
                              tail.numel() * sizeof(float)),
                  0);
        EXPECT_TRUE(BitEqual(SlotOf(state, 3), SlotOf(plain_state, 0)));
      }
    }
  }
}

TEST(CausalConv1dSiluCheckpointTest, RaggedBatchAndRejectedCheckpoints) {
  const int64_t channels = 40, kernel = 4, history = kernel - 1;
  const std::vector<int32_t> lengths = {1, 2, 9, 0, 70};
  const std::vector<int32_t> slots = {3, 0, 5, 1, 4};
  const std::vector<int32_t> ckpt_slot = {6, 2, 7, -1, 8};
  const std::vector<int32_t> ckpt_len = {1, 1, 4, 0, 65};  // any length: the conv has no grid
  int64_t tokens = 0;
  for (int32_t l : lengths) tokens += l;
  const Tensor x = Make(Randn(tokens * channels, 111), {tokens, channels});
  const Tensor w = Make(Randn(channels * kernel, 112, 0.5f), {channels, kernel});
  const Tensor initial = Make(Randn(9 * channels * history, 113), {9, channels, history});
  std::vector<Seq> seqs;
  int32_t start = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    seqs.push_back(WithCheckpoint(Seq{start, lengths[i], slots[i], i % 2 == 0}, ckpt_slot[i], ckpt_len[i]));
    start += lengths[i];
  }
  Tensor state = Copy(initial);
  const Tensor y = RunConv(x, w, seqs, &state);
  Tensor tensor_state = Copy(initial);
  Tensor tensor_y = Zeros(x.shape());
  ASSERT_TRUE(CausalConv1dSilu(x, w, ToBatchWithCheckpoints(seqs), &tensor_state, &tensor_y).ok());
  EXPECT_TRUE(BitEqual(tensor_y, y) && BitEqual(tensor_state, state));
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (ckpt_slot[i] < 0) continue;
    SCOPED_TRACE("sequence " + std::to_string(i));
    Tensor short_state = Copy(initial);
    RunConv(x.Rows(seqs[i].start, ckpt_len[i]), w, {Seq{0, ckpt_len[i], slots[i], seqs[i].zero_initial_state}},
            &short_state);
    EXPECT_TRUE(BitEqual(SlotOf(state, ckpt_slot[i]), SlotOf(short_state, slots[i])));
  }

  Tensor fixed = Copy(initial);
  Tensor out = Zeros(x.shape());
  auto call = [&](const std::vector<Seq>& s) { return CausalConv1dSilu(x, w, s, &fixed, &out); };
  const Seq a{0, 10, 0, true}, b{10, 5, 1, false};
  EXPECT_EQ(call({WithCheckpoint(a, 9, 3)}).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(call({WithCheckpoint(a, 0, 3)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(a, 1, 3), b}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(a, 2, 3), WithCheckpoint(b, 2, 3)}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(a, 2, 0)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({WithCheckpoint(a, 2, 11)}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(BitEqual(fixed, initial));
  EXPECT_TRUE(call({WithCheckpoint(a, 2, 7), WithCheckpoint(b, 3, 5)}).ok());
}

TEST(CopyStateSlotsTest, CopiesRowsOfAnyDtypeAndRankAndLeavesTheRestAlone) {
  // f32 [5, 2, 3, 4], i32 [6], bf16 [4, 7].
  const Tensor f = Make(Randn(5 * 24, 121), {5, 2, 3, 4});
  Tensor f_copy = Copy(f);
  ASSERT_TRUE(CopyStateSlots({SlotCopy{1, 3}, SlotCopy{1, 0}, SlotCopy{4, 2}}, &f_copy).ok());
  for (auto [dst, src] : std::vector<std::pair<int, int>>{{0, 1}, {1, 1}, {2, 4}, {3, 1}, {4, 4}}) {
    EXPECT_TRUE(BitEqual(SlotOf(f_copy, dst), SlotOf(f, src))) << dst;
  }
  Tensor i = MakeI32({10, 11, 12, 13, 14, 15}, {6});
  ASSERT_TRUE(CopyStateSlots({SlotCopy{5, 0}, SlotCopy{2, 4}}, &i).ok());
  EXPECT_EQ(std::vector<int32_t>(i.data<int32_t>(), i.data<int32_t>() + 6),
            (std::vector<int32_t>{15, 11, 12, 13, 12, 15}));
  Tensor h = *Tensor::Empty({4, 7}, DType::kBF16);
  for (int64_t e = 0; e < h.numel(); ++e) h.data<uint16_t>()[e] = static_cast<uint16_t>(e * 37);
  const Tensor h0 = Copy(h);
  ASSERT_TRUE(CopyStateSlots({SlotCopy{3, 1}}, &h).ok());
  EXPECT_TRUE(BitEqual(SlotOf(h, 1), SlotOf(h0, 3)));
  EXPECT_TRUE(BitEqual(SlotOf(h, 0), SlotOf(h0, 0)) && BitEqual(SlotOf(h, 2), SlotOf(h0, 2)) &&
              BitEqual(SlotOf(h, 3), SlotOf(h0, 3)));
  // No copies: nothing happens, even on an empty tensor.
  Tensor none = Copy(f);
  EXPECT_TRUE(CopyStateSlots({}, &none).ok());
  EXPECT_TRUE(BitEqual(none, f));
}

TEST(CopyStateSlotsTest, RejectsBadCopiesBeforeCopyingAnything) {
  const Tensor f = Make(Randn(4 * 6, 131), {4, 6});
  Tensor t = Copy(f);
  for (const std::vector<SlotCopy>& bad : std::vector<std::vector<SlotCopy>>{
           {{0, 4}},                  // dst out of range
           {{-1, 2}},                 // src out of range
           {{0, 1}, {2, 2}},          // onto itself
           {{0, 1}, {2, 1}},          // one dst twice
           {{0, 1}, {1, 2}},          // a dst that is also a src (order would matter)
           {{0, 1}, {3, 2}, {2, 0}},  // the same, the other way round
       }) {
    absl::Status s = CopyStateSlots(bad, &t);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("CopyStateSlots"), std::string::npos) << s;
  }
  EXPECT_TRUE(BitEqual(t, f));
  EXPECT_EQ(CopyStateSlots({SlotCopy{0, 1}}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  Tensor undefined;
  EXPECT_EQ(CopyStateSlots({SlotCopy{0, 1}}, &undefined).code(), absl::StatusCode::kInvalidArgument);
  Tensor scalar = *Tensor::Zeros({}, DType::kF32);
  EXPECT_EQ(CopyStateSlots({SlotCopy{0, 1}}, &scalar).code(), absl::StatusCode::kInvalidArgument);
}

TEST(RecurrentStateCacheTest, CopySlotsCopiesConvAndRecurrentStateOfEveryLayer) {
  engine::StateCacheShape shape;
  shape.num_layers = 3;
  shape.num_slots = 4;
  shape.conv_dim = 10;
  shape.conv_tail = 3;
  shape.num_value_heads = 2;
  shape.key_head_dim = 4;
  shape.value_head_dim = 5;
  auto cache = engine::RecurrentStateCache::Create(shape, Device::kCpu);
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::vector<Tensor> before;
  uint32_t seed = 140;
  for (int l = 0; l < shape.num_layers; ++l) {
    for (Tensor* t : {&cache->conv(l), &cache->recurrent(l)}) {
      const std::vector<float> v = Randn(t->numel(), seed++);
      std::copy(v.begin(), v.end(), t->data<float>());
      before.push_back(Copy(*t));
    }
  }
  EXPECT_TRUE(cache->CopySlots({}).ok());
  ASSERT_TRUE(cache->CopySlots({SlotCopy{2, 0}, SlotCopy{2, 3}}).ok());
  for (int l = 0; l < shape.num_layers; ++l) {
    int idx = 2 * l;
    for (Tensor* t : {&cache->conv(l), &cache->recurrent(l)}) {
      SCOPED_TRACE("layer " + std::to_string(l) + " tensor " + std::to_string(idx));
      const Tensor& b = before[idx++];
      EXPECT_TRUE(BitEqual(SlotOf(*t, 0), SlotOf(b, 2)));
      EXPECT_TRUE(BitEqual(SlotOf(*t, 1), SlotOf(b, 1)));
      EXPECT_TRUE(BitEqual(SlotOf(*t, 2), SlotOf(b, 2)));
      EXPECT_TRUE(BitEqual(SlotOf(*t, 3), SlotOf(b, 2)));
    }
  }
  EXPECT_EQ(cache->CopySlots({SlotCopy{1, 4}}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(DeviceBatchTest, PacksCheckpointsIntoTheOneUpload) {
  // Two sequences: a prefill of 130 tokens checkpointing at 128 into slot 5, and a decode.
  engine::ForwardBatch batch;
  const std::vector<int32_t> table_a = {0, 1, 2, 3, 4, 5, 6, 7, 8}, table_b = {9};
  for (int32_t t = 0; t < 131; ++t) {
    batch.token_ids.push_back(t % 50);
    batch.positions.push_back(t < 130 ? t : 3);
    batch.slot_mapping.push_back(t < 130 ? t : 9 * 16 + 3);
  }
  batch.sequences = {AttentionSequence{0, 130, 130, table_a.data()},
                     AttentionSequence{130, 1, 4, table_b.data()}};
  batch.state_slots = {2, 0};
  batch.state_fresh = {1, 0};
  batch.logit_rows = {129, 130};

  // Without checkpoints: no checkpoint tensors.
  ResetTransferCounts();
  auto plain = engine::DeviceBatch::Upload(batch, 16, Device::kCpu);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->linear.checkpoint_slot.defined() || plain->linear.checkpoint_len.defined());
  EXPECT_EQ(GetTransferCounts().host_to_device, 1u);

  batch.checkpoint_slots = {5, -1};
  batch.checkpoint_lens = {128, 0};
  ResetTransferCounts();
  auto meta = engine::DeviceBatch::Upload(batch, 16, Device::kCpu);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(GetTransferCounts().host_to_device, 1u) << "still one upload per step";
  const LinearAttentionBatch& linear = meta->linear;
  ASSERT_TRUE(linear.checkpoint_slot.defined() && linear.checkpoint_len.defined());
  auto values = [](const Tensor& t) {
    return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
  };
  EXPECT_EQ(values(linear.start), (std::vector<int32_t>{0, 130}));
  EXPECT_EQ(values(linear.length), (std::vector<int32_t>{130, 1}));
  EXPECT_EQ(values(linear.state_slot), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(values(linear.zero_initial_state), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(values(linear.checkpoint_slot), (std::vector<int32_t>{5, -1}));
  EXPECT_EQ(values(linear.checkpoint_len), (std::vector<int32_t>{128, 0}));
  // The rest of the metadata is unchanged by the two extra rows.
  EXPECT_EQ(values(meta->token_ids), values(plain->token_ids));
  EXPECT_EQ(values(meta->logit_rows), values(plain->logit_rows));
  EXPECT_EQ(values(meta->attention.block_tables), values(plain->attention.block_tables));

  // The packed tensors drive the ops like the host form.
  DeltaRuleInputs in = RandomDeltaRuleInputs(131, 1, 2, 16, 8, 151);
  const Tensor initial = RandomState(6, 2, 16, 8, 152);
  Tensor a = Copy(initial), b = Copy(initial);
  Tensor oa = Zeros({131, 2, 8}), ob = Zeros({131, 2, 8});
  ASSERT_TRUE(GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, linear, &a, &oa).ok());
  ASSERT_TRUE(GatedDeltaRule(in.q, in.k, in.v, in.g, in.beta,
                             {WithCheckpoint(Seq{0, 130, 2, true}, 5, 128), Seq{130, 1, 0, false}},
                             &b, &ob)
                  .ok());
  EXPECT_TRUE(BitEqual(oa, ob) && BitEqual(a, b));
  EXPECT_FALSE(BitEqual(SlotOf(a, 5), SlotOf(initial, 5)));

  // Mismatched arrays.
  batch.checkpoint_lens = {128};
  EXPECT_EQ(engine::DeviceBatch::Upload(batch, 16, Device::kCpu).status().code(),
            absl::StatusCode::kInvalidArgument);
  batch.checkpoint_slots = {5};
  EXPECT_EQ(engine::DeviceBatch::Upload(batch, 16, Device::kCpu).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------
// Against transformers (tests/fixtures/make_gdn_kernel_fixture.py)
// ---------------------------------------------------------------------------------------

class TransformersFixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto file = engine::SafetensorsFile::Open(std::string(SLUICE_TEST_DATA_DIR) +
                                              "/kernels/gated_delta_net.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file);
  }
  Tensor Get(const std::string& name) {
    auto t = file_->Get(name);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? Copy(*t) : Tensor();
  }
  // [H, ...] → [1, H, ...]
  Tensor AddSlotDim(const Tensor& t) {
    std::vector<int64_t> shape = t.shape();
    shape.insert(shape.begin(), 1);
    return *Copy(t).Reshape(shape);
  }
  std::unique_ptr<engine::SafetensorsFile> file_;
};

TEST_F(TransformersFixtureTest, GatedDeltaRuleMatchesChunkAndRecurrentFunctions) {
  for (const std::string name : {"fresh", "carry"}) {
    SCOPED_TRACE(name);
    DeltaRuleInputs in;
    in.q = Get(name + ".q");
    in.k = Get(name + ".k");
    in.v = Get(name + ".v");
    in.g = Get(name + ".g");
    in.beta = Get(name + ".beta");
    in.tokens = in.q.dim(0);
    in.key_heads = in.q.dim(1);
    in.dk = in.q.dim(2);
    in.value_heads = in.v.dim(1);
    in.dv = in.v.dim(2);
    const bool carry = name == "carry";
    const Tensor initial = carry ? AddSlotDim(Get(name + ".state0"))
                                 : RandomState(1, in.value_heads, in.dk, in.dv, 1);  // ignored
    const Seq seq{0, static_cast<int32_t>(in.tokens), 0, !carry};
    const Tensor out_chunk = Get(name + ".out_chunk");
    const Tensor out_recurrent = Get(name + ".out_recurrent");
    const Tensor state_chunk = AddSlotDim(Get(name + ".state_chunk"));
    const Tensor state_recurrent = AddSlotDim(Get(name + ".state_recurrent"));
    ASSERT_GT(MaxAbs(out_chunk), 0.05f);
    for (Mode mode : {Mode::kAuto, Mode::kChunked, Mode::kRecurrent}) {
      SCOPED_TRACE(static_cast<int>(mode));
      Tensor state = Copy(initial);
      Tensor out = RunDeltaRule(in, {seq}, &state, mode);
      EXPECT_LE(MaxAbsDiff(out, out_chunk), 1e-5f);
      EXPECT_LE(MaxAbsDiff(out, out_recurrent), 1e-5f);
      EXPECT_LE(MaxAbsDiff(state, state_chunk), 1e-5f);
      EXPECT_LE(MaxAbsDiff(state, state_recurrent), 1e-5f);
    }
  }
}

TEST_F(TransformersFixtureTest, ConvMatchesCausalConv1dFunctions) {
  const Tensor w = Get("conv.weight");
  const int64_t channels = w.dim(0), kernel = w.dim(1), history = kernel - 1;
  // transformers' state is [C, K]; sluice keeps its last K-1 columns.
  auto last_columns = [&](const Tensor& hf) {
    Tensor s = Zeros({1, channels, history});
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t i = 0; i < history; ++i) {
        s.data<float>()[c * history + i] = hf.data<float>()[c * kernel + 1 + i];
      }
    }
    return s;
  };
  Tensor state = Make(Randn(channels * history, 1), {1, channels, history});  // ignored: fresh

  Tensor x = Get("conv.x_prefill");
  Tensor y = Zeros(x.shape());
  ASSERT_TRUE(
      CausalConv1dSilu(x, w, {Seq{0, static_cast<int32_t>(x.dim(0)), 0, true}}, &state, &y).ok());
  EXPECT_LE(MaxAbsDiff(y, Get("conv.y_prefill")), 1e-5f);
  EXPECT_EQ(MaxAbsDiff(state, last_columns(Get("conv.state_prefill"))), 0.f);

  x = Get("conv.x_decode");
  y = Zeros(x.shape());
  ASSERT_TRUE(
      CausalConv1dSilu(x, w, {Seq{0, static_cast<int32_t>(x.dim(0)), 0, false}}, &state, &y).ok());
  EXPECT_LE(MaxAbsDiff(y, Get("conv.y_decode")), 1e-5f);
  EXPECT_EQ(MaxAbsDiff(state, last_columns(Get("conv.state_decode"))), 0.f);

  state = last_columns(Get("conv.state0"));
  x = Get("conv.x_cont");
  ASSERT_LT(x.dim(0), history);
  y = Zeros(x.shape());
  ASSERT_TRUE(
      CausalConv1dSilu(x, w, {Seq{0, static_cast<int32_t>(x.dim(0)), 0, false}}, &state, &y).ok());
  EXPECT_LE(MaxAbsDiff(y, Get("conv.y_cont")), 1e-5f);
  EXPECT_EQ(MaxAbsDiff(state, last_columns(Get("conv.state_cont"))), 0.f);
}

TEST_F(TransformersFixtureTest, GatedRmsNormMatchesQwen3NextRMSNormGated) {
  const Tensor x = Get("norm.x");
  Tensor out = Zeros(x.shape());
  const float eps = Get("norm.eps").data<float>()[0];
  ASSERT_TRUE(GatedRmsNorm(x, Get("norm.z"), Get("norm.weight"), eps, &out).ok());
  EXPECT_LE(MaxAbsDiff(out, Get("norm.y")), 1e-5f);
}

}  // namespace
}  // namespace sluice::kernels
