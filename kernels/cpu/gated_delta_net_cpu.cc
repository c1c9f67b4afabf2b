// Reference CPU bodies of the Gated DeltaNet ops. Plain loops over contiguous memory that
// the compiler vectorises, parallelised with OpenMP over (sequence, head) or
// (sequence, channel block). Equations: /work/shared/notes/architectures.md, "Gated
// DeltaNet", and transformers' qwen3_next module (the functions named below).
//
// Every reduction here splits its terms over a fixed set of lanes (Dot, MatMulAcc), so a
// sequence's result never depends on where its buffers happen to be aligned, i.e. on the
// other sequences of the batch.
#include "kernels/cpu/gated_delta_net_cpu.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/op_bodies.h"
#include "kernels/status_macros.h"

namespace sluice::kernels::cpu {
namespace {

constexpr int64_t kChunk = kGatedDeltaRuleChunk;
// transformers' l2norm eps (matches the FLA library).
constexpr float kL2NormEps = 1e-6f;

// e^x for SiLU, written so loops that call it vectorise: std::exp does not without
// -fno-math-errno, nor does a float→int conversion under the default -ftrapping-math.
// Cephes' expf: x = n·ln2 + r with |r| ≤ ln2/2, a degree-7 polynomial for e^r, and 2^n
// built in the exponent bits. n is rounded by adding 1.5·2²³, which leaves it in the low
// mantissa bits. Relative error below 1e-7 over the clamped range, where e^x is a normal
// float.
inline float VectorExp(float x) {
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 · 2²³
  x = std::min(std::max(x, -87.3f), 88.0f);
  const float shifted = x * 1.44269504088896341f + kRoundMagic;
  const float n = shifted - kRoundMagic;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 split in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  const int32_t n_int = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kRoundMagic);
  return er * std::bit_cast<float>((n_int + 127) << 23);
}

inline float Silu(float x) { return x / (1.0f + VectorExp(-x)); }

// Σ a[i]·b[i] over 16 fixed lanes, then a fixed tree.
inline float Dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += a[i] * b[i];
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0] + tail;
}

// y += a·x
inline void Axpy(float a, const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// out = l2norm(x) · scale, with transformers' l2norm(x) = x · rsqrt(Σx² + 1e-6).
inline void L2Normalize(const float* __restrict x, int64_t n, float scale, float* __restrict out) {
  const float inv = 1.0f / std::sqrt(Dot(x, x, n) + kL2NormEps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * inv) * scale;
}

// C[r, :n] += alpha · Σ_p A[r, p] · B[p, :n] for kRows rows. The 64-column accumulator
// block is a compile-time size, so it lives in vector registers.
template <int kRows>
inline void MatMulAccRows(const float* __restrict a, int64_t lda, const float* __restrict b,
                          int64_t ldb, float* __restrict c, int64_t ldc, int64_t depth, int64_t n,
                          float alpha) {
  constexpr int64_t kCols = 64;
  int64_t j0 = 0;
  for (; j0 + kCols <= n; j0 += kCols) {
    float acc[kRows][kCols] = {};
    for (int64_t p = 0; p < depth; ++p) {
      const float* bp = b + p * ldb + j0;
      for (int r = 0; r < kRows; ++r) {
        const float ar = a[r * lda + p];
        for (int64_t l = 0; l < kCols; ++l) acc[r][l] += ar * bp[l];
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int64_t l = 0; l < kCols; ++l) c[r * ldc + j0 + l] += alpha * acc[r][l];
    }
  }
  if (j0 < n) {
    const int64_t width = n - j0;
    float acc[kRows][kCols] = {};
    for (int64_t p = 0; p < depth; ++p) {
      const float* bp = b + p * ldb + j0;
      for (int r = 0; r < kRows; ++r) {
        const float ar = a[r * lda + p];
        for (int64_t l = 0; l < width; ++l) acc[r][l] += ar * bp[l];
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int64_t l = 0; l < width; ++l) c[r * ldc + j0 + l] += alpha * acc[r][l];
    }
  }
}

// C[m, n] += alpha · A[m, depth] · B[depth, n], all row-major with leading dimensions.
// The chunk's matrices are at most 64 × 128 × 128, so a register-blocked loop nest is
// all it takes; there is no packing.
void MatMulAcc(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t m, int64_t depth, int64_t n, float alpha) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4)
    MatMulAccRows<4>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, depth, n, alpha);
  for (; i < m; ++i) MatMulAccRows<1>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, depth, n, alpha);
}

// ---------------------------------------------------------------------------------------
// Gated delta rule
// ---------------------------------------------------------------------------------------

// One (sequence, value head): its inputs from the segment's first token on, with the
// distance in floats between consecutive tokens of each tensor.
struct HeadProblem {
  const float* q;  // this head's key head (GVA), [length, qk_stride]
  const float* k;
  const float* v;
  const float* g;
  const float* beta;
  float* out;
  int64_t qk_stride;
  int64_t v_stride;  // also out's
  int64_t gate_stride;
  int64_t length;
  int64_t dk;
  int64_t dv;
};

// Scratch of one thread. thread_local so decode steps do not allocate; a chunk needs
// about 200 KB at d_k = d_v = 128.
struct Workspace {
  int64_t dk = 0, dv = 0;
  std::vector<float> q, k, w, kd_t;              // [kChunk, dk] (kd_t: [dk, kChunk])
  std::vector<float> u;                          // [kChunk, dv]
  std::vector<float> a, p;                       // [kChunk, kChunk]
  std::vector<float> cum_g, beta, decay_to_end;  // [kChunk]
  std::vector<float> vec;                        // recurrent: qn, kn [dk], sk, sq, delta [dv]

  void Ensure(int64_t new_dk, int64_t new_dv) {
    if (new_dk == dk && new_dv == dv) return;
    dk = new_dk;
    dv = new_dv;
    q.assign(kChunk * dk, 0.f);
    k.assign(kChunk * dk, 0.f);
    w.assign(kChunk * dk, 0.f);
    kd_t.assign(dk * kChunk, 0.f);
    u.assign(kChunk * dv, 0.f);
    a.assign(kChunk * kChunk, 0.f);
    p.assign(kChunk * kChunk, 0.f);
    cum_g.assign(kChunk, 0.f);
    beta.assign(kChunk, 0.f);
    decay_to_end.assign(kChunk, 0.f);
    vec.assign(2 * dk + 3 * dv, 0.f);
  }
};

// Token by token (transformers' torch_recurrent_gated_delta_rule), per the notes:
//   S' = e^g S + k δᵀ,  δ = β (v − (e^g S)ᵀ k),  o = S'ᵀ q.
// Expanding o = e^g Sᵀq + (k·q) δ lets one pass over S produce both Sᵀk and Sᵀq; the
// second pass writes S'. S (64 KB at 128 × 128) stays in cache between the two, so decode
// reads and writes the state in memory once.
// checkpoint: null, or where to copy S after the first checkpoint_len tokens.
void RecurrentHead(const HeadProblem& hp, float* __restrict state, Workspace& ws,
                   float* __restrict checkpoint, int64_t checkpoint_len) {
  const int64_t dk = hp.dk, dv = hp.dv;
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  float* qn = ws.vec.data();
  float* kn = qn + dk;
  float* sk = kn + dk;
  float* sq = sk + dv;
  float* delta = sq + dv;
  for (int64_t t = 0; t < hp.length; ++t) {
    L2Normalize(hp.q + t * hp.qk_stride, dk, q_scale, qn);
    L2Normalize(hp.k + t * hp.qk_stride, dk, 1.0f, kn);
    const float decay = std::exp(hp.g[t * hp.gate_stride]);
    const float beta = hp.beta[t * hp.gate_stride];
    std::fill(sk, sk + dv, 0.f);
    std::fill(sq, sq + dv, 0.f);
    for (int64_t i = 0; i < dk; ++i) {
      const float* row = state + i * dv;
      const float ki = kn[i], qi = qn[i];
      for (int64_t c = 0; c < dv; ++c) {
        sk[c] += ki * row[c];
        sq[c] += qi * row[c];
      }
    }
    const float kq = Dot(kn, qn, dk);
    const float* vt = hp.v + t * hp.v_stride;
    float* ot = hp.out + t * hp.v_stride;
    for (int64_t c = 0; c < dv; ++c) {
      delta[c] = beta * (vt[c] - decay * sk[c]);
      ot[c] = decay * sq[c] + kq * delta[c];
    }
    for (int64_t i = 0; i < dk; ++i) {
      float* row = state + i * dv;
      const float ki = kn[i];
      for (int64_t c = 0; c < dv; ++c) row[c] = decay * row[c] + ki * delta[c];
    }
    if (checkpoint != nullptr && t + 1 == checkpoint_len) {
      std::memcpy(checkpoint, state, dk * dv * sizeof(float));
    }
  }
}

// Chunks of 64 tokens in the WY/UT form (transformers' torch_chunk_gated_delta_rule). Per
// chunk, with G the cumulative sum of g inside the chunk and L_ij = e^{G_i − G_j}:
//   A = β K Kᵀ ⊙ L, strictly lower;  U = (I + A)⁻¹ (β V);  W = (I + A)⁻¹ (β K ⊙ e^G)
//   v_new = U − W S
//   o     = (Q ⊙ e^G) S + (Q Kᵀ ⊙ L, lower incl. the diagonal) v_new
//   S    ← e^{G_last} S + (K ⊙ e^{G_last − G})ᵀ v_new
// (I + A)⁻¹ is applied by forward substitution on the right-hand sides, as
// solve_triangular(unitriangular=True) does in transformers; the notes write the same
// matrix as T = (I − A')⁻¹ with A' = −A. transformers pads the last chunk with zero
// tokens (k = v = 0, g = β = 0), which neither decay nor write the state, so a short
// last chunk is simply processed at its own length.
// checkpoint: null, or where to copy S after the chunk that ends at checkpoint_len (a
// chunk end: a multiple of kChunk or the length, which CheckSequences enforces).
void ChunkedHead(const HeadProblem& hp, float* __restrict state, Workspace& ws,
                 float* __restrict checkpoint, int64_t checkpoint_len) {
  const int64_t dk = hp.dk, dv = hp.dv;
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  float* qc = ws.q.data();
  float* kc = ws.k.data();
  float* wc = ws.w.data();
  float* kd_t = ws.kd_t.data();
  float* uc = ws.u.data();
  float* ac = ws.a.data();
  float* pc = ws.p.data();
  float* cum_g = ws.cum_g.data();
  float* bc = ws.beta.data();
  float* decay_to_end = ws.decay_to_end.data();

  for (int64_t c0 = 0; c0 < hp.length; c0 += kChunk) {
    const int64_t n = std::min(kChunk, hp.length - c0);

    // Normalised q (with the 1/√d_k scale) and k; G = cumsum(g); β.
    float running = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = c0 + i;
      L2Normalize(hp.q + t * hp.qk_stride, dk, q_scale, qc + i * dk);
      L2Normalize(hp.k + t * hp.qk_stride, dk, 1.0f, kc + i * dk);
      running += hp.g[t * hp.gate_stride];
      cum_g[i] = running;
      bc[i] = hp.beta[t * hp.gate_stride];
    }

    // A_ij = β_i (k_i·k_j) L_ij for j < i and P_ij = (q_i·k_j) L_ij for j ≤ i. The
    // exponent G_i − G_j ≤ 0 never overflows; P is zero above the diagonal because the
    // product with v_new below runs over full rows.
    for (int64_t i = 0; i < n; ++i) {
      const float* ki = kc + i * dk;
      const float* qi = qc + i * dk;
      for (int64_t j = 0; j <= i; ++j) {
        const float* kj = kc + j * dk;
        const float decay = std::exp(cum_g[i] - cum_g[j]);
        pc[i * kChunk + j] = Dot(qi, kj, dk) * decay;
        if (j < i) ac[i * kChunk + j] = bc[i] * Dot(ki, kj, dk) * decay;
      }
      std::fill(pc + i * kChunk + i + 1, pc + i * kChunk + n, 0.f);
    }

    // Forward substitution: X_i = B_i − Σ_{j<i} A_ij X_j for the right-hand sides
    // B = β v (→ U) and B = β k e^G (→ W).
    for (int64_t i = 0; i < n; ++i) {
      float* ui = uc + i * dv;
      float* wi = wc + i * dk;
      const float* vi = hp.v + (c0 + i) * hp.v_stride;
      const float* ki = kc + i * dk;
      const float b = bc[i];
      const float bg = b * std::exp(cum_g[i]);
      for (int64_t c = 0; c < dv; ++c) ui[c] = b * vi[c];
      for (int64_t c = 0; c < dk; ++c) wi[c] = bg * ki[c];
      for (int64_t j = 0; j < i; ++j) {
        const float aij = ac[i * kChunk + j];
        Axpy(-aij, uc + j * dv, ui, dv);
        Axpy(-aij, wc + j * dk, wi, dk);
      }
    }

    // v_new = U − W S, in place of U.
    MatMulAcc(wc, dk, state, dv, uc, dv, n, dk, dv, -1.0f);

    // o = (Q ⊙ e^G) S + P v_new. Q is not needed after P, so it is decayed in place.
    for (int64_t i = 0; i < n; ++i) {
      const float eg = std::exp(cum_g[i]);
      float* qi = qc + i * dk;
      for (int64_t c = 0; c < dk; ++c) qi[c] *= eg;
      std::fill(hp.out + (c0 + i) * hp.v_stride, hp.out + (c0 + i) * hp.v_stride + dv, 0.f);
    }
    float* out = hp.out + c0 * hp.v_stride;
    MatMulAcc(qc, dk, state, dv, out, hp.v_stride, n, dk, dv, 1.0f);
    MatMulAcc(pc, kChunk, uc, dv, out, hp.v_stride, n, n, dv, 1.0f);

    // S ← e^{G_last} S + (K ⊙ e^{G_last − G})ᵀ v_new, with the decayed keys transposed to
    // [dk, n] so the product reads rows.
    const float g_last = cum_g[n - 1];
    for (int64_t i = 0; i < n; ++i) decay_to_end[i] = std::exp(g_last - cum_g[i]);
    for (int64_t c = 0; c < dk; ++c) {
      for (int64_t i = 0; i < n; ++i) kd_t[c * kChunk + i] = kc[i * dk + c] * decay_to_end[i];
    }
    const float chunk_decay = std::exp(g_last);
    for (int64_t i = 0; i < dk * dv; ++i) state[i] *= chunk_decay;
    MatMulAcc(kd_t, kChunk, uc, dv, state, dv, dk, n, dv, 1.0f);
    if (checkpoint != nullptr && c0 + n == checkpoint_len) {
      std::memcpy(checkpoint, state, dk * dv * sizeof(float));
    }
  }
}

// Which path GatedDeltaRule takes for a segment of `length` tokens.
bool UsesRecurrentPath(GatedDeltaRuleMode mode, int64_t length) {
  return mode == GatedDeltaRuleMode::kRecurrent ||
         (mode == GatedDeltaRuleMode::kAuto && length == 1);
}

}  // namespace

void CausalConv1dSilu(const Tensor& x, const Tensor& weight,
                      absl::Span<const LinearAttentionSequence> sequences, Tensor* conv_state,
                      Tensor* y) {
  const int64_t channels = x.dim(1);
  const int64_t kernel = weight.dim(1);
  const int64_t history = kernel - 1;  // rows of state per sequence
  const float* xs = x.data<float>();
  float* ys = y->data<float>();
  float* states = conv_state->data<float>();

  // The weight as [K, C], so the inner loop over channels reads contiguous memory.
  std::vector<float> weight_t(kernel * channels);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t j = 0; j < kernel; ++j) {
      weight_t[j * channels + c] = weight.data<float>()[c * kernel + j];
    }
  }

  constexpr int64_t kBlock = 512;  // channels per task
  const int64_t blocks = (channels + kBlock - 1) / kBlock;
  const int64_t tasks = static_cast<int64_t>(sequences.size()) * blocks;
  int64_t tokens = 0;
  for (const auto& s : sequences) tokens += s.length;

#pragma omp parallel if (tasks > 1 && tokens * channels * kernel > (1 << 15))
  {
    // old: the previous K-1 inputs; next: the last K-1 rows of xpad; snap: the K-1 rows
    // of xpad before the checkpoint. All [K-1, kBlock].
    std::vector<float> scratch(3 * history * kBlock);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const LinearAttentionSequence& s = sequences[task / blocks];
      const int64_t c0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, channels - c0);
      const int64_t length = s.length;
      float* state = states + static_cast<int64_t>(s.state_slot) * channels * history;
      float* old = scratch.data();
      float* next = old + history * kBlock;
      float* snap = next + history * kBlock;
      float* checkpoint =
          s.checkpoint_slot >= 0
              ? states + static_cast<int64_t>(s.checkpoint_slot) * channels * history
              : nullptr;

      for (int64_t i = 0; i < history; ++i) {
        for (int64_t c = 0; c < width; ++c) {
          old[i * kBlock + c] = s.zero_initial_state ? 0.f : state[(c0 + c) * history + i];
        }
      }
      // Row r of xpad = [old state; x of this segment], restricted to this channel block.
      auto xpad_row = [&](int64_t r) -> const float* {
        return r < history ? old + r * kBlock : xs + (s.start + r - history) * channels + c0;
      };
      // The new state (and the checkpoint's, what the state would be had the segment
      // ended after checkpoint_len tokens) is taken before any output is written, since y
      // may be x.
      for (int64_t i = 0; i < history; ++i) {
        std::memcpy(next + i * kBlock, xpad_row(length + i), width * sizeof(float));
        if (checkpoint != nullptr) {
          std::memcpy(snap + i * kBlock, xpad_row(s.checkpoint_len + i), width * sizeof(float));
        }
      }
      // y[t] = silu(Σ_j w[:, j] · xpad[t + j]). Last token first: token t reads inputs
      // t−K+1 … t, none of which a later-written (earlier) token's output overwrites.
      float acc[kBlock];
      for (int64_t t = length - 1; t >= 0; --t) {
        std::fill(acc, acc + width, 0.f);
        for (int64_t j = 0; j < kernel; ++j) {
          const float* src = xpad_row(t + j);
          const float* wj = weight_t.data() + j * channels + c0;
          for (int64_t c = 0; c < width; ++c) acc[c] += wj[c] * src[c];
        }
        float* dst = ys + (s.start + t) * channels + c0;
        for (int64_t c = 0; c < width; ++c) dst[c] = Silu(acc[c]);
      }
      for (int64_t c = 0; c < width; ++c) {
        for (int64_t i = 0; i < history; ++i) {
          state[(c0 + c) * history + i] = next[i * kBlock + c];
        }
      }
      if (checkpoint != nullptr) {
        for (int64_t c = 0; c < width; ++c) {
          for (int64_t i = 0; i < history; ++i) {
            checkpoint[(c0 + c) * history + i] = snap[i * kBlock + c];
          }
        }
      }
    }
  }
}

void GatedDeltaRule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                    const Tensor& beta, absl::Span<const LinearAttentionSequence> sequences,
                    Tensor* state, Tensor* out, GatedDeltaRuleMode mode) {
  const int64_t key_heads = q.dim(1);
  const int64_t dk = q.dim(2);
  const int64_t value_heads = v.dim(1);
  const int64_t dv = v.dim(2);
  const int64_t group = value_heads / key_heads;  // value heads per key head
  const int64_t tasks = static_cast<int64_t>(sequences.size()) * value_heads;

#pragma omp parallel if (tasks > 1)
  {
    static thread_local Workspace ws;
    ws.Ensure(dk, dv);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const LinearAttentionSequence& s = sequences[task / value_heads];
      const int64_t h = task % value_heads;
      const int64_t key_head = h / group;
      float* head_state =
          state->data<float>() + (static_cast<int64_t>(s.state_slot) * value_heads + h) * dk * dv;
      if (s.zero_initial_state) std::fill(head_state, head_state + dk * dv, 0.f);
      if (s.length == 0) continue;

      HeadProblem hp;
      hp.q = q.data<float>() + (s.start * key_heads + key_head) * dk;
      hp.k = k.data<float>() + (s.start * key_heads + key_head) * dk;
      hp.v = v.data<float>() + (s.start * value_heads + h) * dv;
      hp.g = g.data<float>() + s.start * value_heads + h;
      hp.beta = beta.data<float>() + s.start * value_heads + h;
      hp.out = out->data<float>() + (s.start * value_heads + h) * dv;
      hp.qk_stride = key_heads * dk;
      hp.v_stride = value_heads * dv;
      hp.gate_stride = value_heads;
      hp.length = s.length;
      hp.dk = dk;
      hp.dv = dv;

      float* checkpoint =
          s.checkpoint_slot >= 0
              ? state->data<float>() +
                    (static_cast<int64_t>(s.checkpoint_slot) * value_heads + h) * dk * dv
              : nullptr;
      if (UsesRecurrentPath(mode, s.length)) {
        RecurrentHead(hp, head_state, ws, checkpoint, s.checkpoint_len);
      } else {
        ChunkedHead(hp, head_state, ws, checkpoint, s.checkpoint_len);
      }
    }
  }
}

void CopyStateSlots(absl::Span<const SlotCopy> copies, Tensor* state) {
  const size_t row_bytes = state->bytes() / static_cast<size_t>(state->dim(0));
  char* base = static_cast<char*>(state->raw());
  for (const SlotCopy& c : copies) {
    std::memcpy(base + static_cast<size_t>(c.dst) * row_bytes,
                base + static_cast<size_t>(c.src) * row_bytes, row_bytes);
  }
}

void GatedRmsNorm(const Tensor& x, const Tensor& z, const Tensor& weight, float eps, Tensor* out) {
  const int64_t d = x.dim(-1);
  const int64_t rows = x.numel() / d;
  const float* xs = x.data<float>();
  const float* zs = z.data<float>();
  const float* w = weight.data<float>();
  float* ys = out->data<float>();
  // Qwen3NextRMSNormGated: norm first, then the weight (not 1 + w), then the gate.
#pragma omp parallel for if (rows > 64)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xs + r * d;
    const float* zr = zs + r * d;
    float* yr = ys + r * d;
    const float inv = 1.0f / std::sqrt(Dot(xr, xr, d) / static_cast<float>(d) + eps);
    for (int64_t j = 0; j < d; ++j) yr[j] = (w[j] * (xr[j] * inv)) * Silu(zr[j]);
  }
}

namespace {

// Segments lie inside [0, tokens), do not overlap, and use distinct slots in
// [0, num_slots): each sequence's state is then read and written by exactly one task.
// Checkpoint slots lie in [0, num_slots) too and differ from every other slot of the call
// (state or checkpoint), with 1 <= checkpoint_len <= length; with `delta_rule_mode`
// (GatedDeltaRule), a segment on the chunked path must checkpoint at one of its chunk ends.
absl::Status CheckSequences(absl::string_view op,
                            absl::Span<const LinearAttentionSequence> sequences, int64_t tokens,
                            int64_t num_slots,
                            std::optional<GatedDeltaRuleMode> delta_rule_mode = std::nullopt) {
  std::vector<std::pair<int64_t, int64_t>> segments;  // (start, end) of non-empty segments
  std::vector<int32_t> slots;
  segments.reserve(sequences.size());
  slots.reserve(sequences.size());
  for (size_t i = 0; i < sequences.size(); ++i) {
    const LinearAttentionSequence& s = sequences[i];
    const int64_t end = static_cast<int64_t>(s.start) + s.length;
    if (s.start < 0 || s.length < 0 || end > tokens) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": sequence ", i, " covers rows [",
                                                     s.start, ", ", end, ") outside [0, ", tokens,
                                                     ")"));
    }
    if (s.state_slot < 0 || s.state_slot >= num_slots) {
      return absl::OutOfRangeError(absl::StrCat(op, ": sequence ", i, " uses state slot ",
                                                s.state_slot, " outside [0, ", num_slots, ")"));
    }
    if (s.length > 0) segments.emplace_back(s.start, end);
    slots.push_back(s.state_slot);
    if (s.checkpoint_slot < 0) continue;
    if (s.checkpoint_slot >= num_slots) {
      return absl::OutOfRangeError(absl::StrCat(op, ": sequence ", i, " uses checkpoint slot ",
                                                s.checkpoint_slot, " outside [0, ", num_slots,
                                                ")"));
    }
    if (s.checkpoint_len < 1 || s.checkpoint_len > s.length) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": sequence ", i, " has checkpoint_len ", s.checkpoint_len,
          " outside [1, length = ", s.length, "]"));
    }
    if (delta_rule_mode.has_value() && !UsesRecurrentPath(*delta_rule_mode, s.length) &&
        s.checkpoint_len % kChunk != 0 && s.checkpoint_len != s.length) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": sequence ", i, " has checkpoint_len ", s.checkpoint_len,
          ", not a chunk end of its segment of ", s.length,
          " tokens (the chunked path checkpoints only at a multiple of ", kChunk,
          " or at the segment's length)"));
    }
  }
  std::sort(segments.begin(), segments.end());
  for (size_t i = 1; i < segments.size(); ++i) {
    if (segments[i].first < segments[i - 1].second) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": overlapping sequence segments"));
    }
  }
  std::sort(slots.begin(), slots.end());
  if (std::adjacent_find(slots.begin(), slots.end()) != slots.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": two sequences of one batch share a state slot"));
  }
  // Each checkpoint slot against the state slots (sorted above) and the checkpoint slots
  // before it.
  std::vector<int32_t> checkpoints;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int32_t c = sequences[i].checkpoint_slot;
    if (c < 0) continue;
    if (std::binary_search(slots.begin(), slots.end(), c) ||
        std::find(checkpoints.begin(), checkpoints.end(), c) != checkpoints.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": sequence ", i, "'s checkpoint slot ", c,
          " is also a state slot or another checkpoint slot of the batch"));
    }
    checkpoints.push_back(c);
  }
  return absl::OkStatus();
}

// The slot copies of CopyStateSlots: in [0, num_slots), src != dst, every dst once and
// never a src.
absl::Status CheckSlotCopies(absl::Span<const SlotCopy> copies, int64_t num_slots) {
  constexpr absl::string_view kOp = "CopyStateSlots";
  std::vector<int32_t> srcs, dsts;
  for (size_t i = 0; i < copies.size(); ++i) {
    const SlotCopy& c = copies[i];
    if (c.src < 0 || c.src >= num_slots || c.dst < 0 || c.dst >= num_slots) {
      return absl::InvalidArgumentError(absl::StrCat(kOp, ": copy ", i, " (", c.src, " -> ", c.dst,
                                                     ") has a slot outside [0, ", num_slots, ")"));
    }
    if (c.src == c.dst) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": copy ", i, " copies slot ", c.src, " onto itself"));
    }
    srcs.push_back(c.src);
    dsts.push_back(c.dst);
  }
  std::sort(srcs.begin(), srcs.end());
  std::sort(dsts.begin(), dsts.end());
  if (std::adjacent_find(dsts.begin(), dsts.end()) != dsts.end()) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": two copies write one slot"));
  }
  for (int32_t d : dsts) {
    if (std::binary_search(srcs.begin(), srcs.end(), d)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": slot ", d, " is both the destination and the source of copies"));
    }
  }
  return absl::OkStatus();
}

// A LinearAttentionBatch on the CPU, read back as host sequences.
std::vector<LinearAttentionSequence> HostSequences(const LinearAttentionBatch& batch) {
  const int64_t count = batch.start.numel();
  const bool checkpoints = batch.checkpoint_slot.defined();  // checkpoint_len too (checked)
  std::vector<LinearAttentionSequence> sequences(count);
  for (int64_t i = 0; i < count; ++i) {
    sequences[i] = LinearAttentionSequence{batch.start.data<int32_t>()[i],
                                           batch.length.data<int32_t>()[i],
                                           batch.state_slot.data<int32_t>()[i],
                                           batch.zero_initial_state.data<int32_t>()[i] != 0};
    if (checkpoints) {
      sequences[i].checkpoint_slot = batch.checkpoint_slot.data<int32_t>()[i];
      sequences[i].checkpoint_len = batch.checkpoint_len.data<int32_t>()[i];
    }
  }
  return sequences;
}

}  // namespace

absl::Status CausalConv1dSiluChecked(const Tensor& x, const Tensor& weight,
                                     absl::Span<const LinearAttentionSequence> sequences,
                                     Tensor* conv_state, Tensor* y) {
  SLUICE_RETURN_IF_ERROR(
      CheckSequences("CausalConv1dSilu", sequences, x.dim(0), conv_state->dim(0)));
  cpu::CausalConv1dSilu(x, weight, sequences, conv_state, y);
  return absl::OkStatus();
}

absl::Status GatedDeltaRuleChecked(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& g, const Tensor& beta,
                                   absl::Span<const LinearAttentionSequence> sequences,
                                   Tensor* state, Tensor* out, GatedDeltaRuleMode mode) {
  SLUICE_RETURN_IF_ERROR(
      CheckSequences("GatedDeltaRule", sequences, q.dim(0), state->dim(0), mode));
  cpu::GatedDeltaRule(q, k, v, g, beta, sequences, state, out, mode);
  return absl::OkStatus();
}

absl::Status CopyStateSlotsChecked(absl::Span<const SlotCopy> copies, Tensor* state) {
  SLUICE_RETURN_IF_ERROR(CheckSlotCopies(copies, state->dim(0)));
  cpu::CopyStateSlots(copies, state);
  return absl::OkStatus();
}

}  // namespace sluice::kernels::cpu

// The dispatched CPU bodies (kernels/op_bodies.h).
namespace sluice::kernels {

template <>
absl::Status CausalConv1dSiluBody<Device::kCpu>(const Tensor& x, const Tensor& weight,
                                                const LinearAttentionBatch& batch,
                                                Tensor* conv_state, Tensor* y) {
  return cpu::CausalConv1dSiluChecked(x, weight, cpu::HostSequences(batch), conv_state, y);
}

template <>
absl::Status GatedDeltaRuleBody<Device::kCpu>(const Tensor& q, const Tensor& k, const Tensor& v,
                                              const Tensor& g, const Tensor& beta,
                                              const LinearAttentionBatch& batch, Tensor* state,
                                              Tensor* out, GatedDeltaRuleMode mode) {
  return cpu::GatedDeltaRuleChecked(q, k, v, g, beta, cpu::HostSequences(batch), state, out,
                                    mode);
}

template <>
absl::Status CopyStateSlotsBody<Device::kCpu>(absl::Span<const SlotCopy> copies, Tensor* state) {
  return cpu::CopyStateSlotsChecked(copies, state);
}

template <>
absl::Status GatedRmsNormBody<Device::kCpu>(const Tensor& x, const Tensor& z,
                                            const Tensor& weight, float eps, Tensor* out) {
  cpu::GatedRmsNorm(x, z, weight, eps, out);
  return absl::OkStatus();
}

}  // namespace sluice::kernels
