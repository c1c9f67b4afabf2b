// The Gated DeltaNet kernels (kernels/gated_delta_net.h): the chunked and recurrent
// delta-rule paths against each other and against a double-precision reference, ragged
// batches against single-sequence runs, state carry-over across calls, the causal conv
// and the gated RMSNorm against naive references, and everything against transformers'
// qwen3_next functions through tests/data/kernels/gated_delta_net.safetensors (made by
// tests/fixtures/make_gdn_kernel_fixture.py).
#include "kernels/gated_delta_net.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

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
