// Every compute op sluice runs, declared once. ops.cc checks shapes, dtypes and
// devices (never tensor contents) and dispatches on the device (kernels/dispatch.h);
// cpu/*_cpu.cc hold the reference bodies, cuda/ the GPU ones. A device without a body
// for an op answers UNIMPLEMENTED "<op> has no <device> kernel yet". Checks that read
// tensor contents (ids, positions, slots, rows, block ids in range) are the bodies'.
// Ops know nothing of requests or models: they see tensors and ragged-batch metadata.
#ifndef SLUICE_KERNELS_OPS_H_
#define SLUICE_KERNELS_OPS_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

// Threads used by CPU kernels (OpenMP, shared with oneDNN).
void SetNumThreads(int n);
int NumThreads();

// Arithmetic of matmuls over bf16 weights, chosen once before loading a model:
//  kF32:  activations stay f32, weights are widened (exact f32 math on the stored
//         weights; what the golden tests check against transformers);
//  kBf16: activations are rounded to bf16 and multiplied in pairs (AVX512-BF16), twice
//         the arithmetic rate for prefill and large decode batches.
// Both keep every row's result independent of the batch it shares.
enum class MatmulPrecision { kF32, kBf16 };
absl::Status SetMatmulPrecision(MatmulPrecision precision);
MatmulPrecision GetMatmulPrecision();

// y[M, N] = x[M, K] · Wᵀ for a weight stored as Hugging Face does, [N, K]. The weight
// is converted once at creation into whatever layout the device's GEMM reads fastest.
class Linear {
 public:
  // weight: [N, K] in f32, bf16 or f16 (f16 is widened to f32). Any device the weight
  // is on is accepted; the packed copy lives on `device`.
  static absl::StatusOr<std::unique_ptr<Linear>> Create(const Tensor& weight, Device device);
  virtual ~Linear() = default;
  // x: f32 [M, K]; y: f32 [M, N], preallocated on the same device. M may be 0.
  // Checks the shapes here, once for every backend, then runs the backend's body.
  absl::Status Forward(const Tensor& x, Tensor* y);

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  DType weight_dtype() const { return weight_dtype_; }
  // The device whose GEMM runs Forward (where the packed weight lives).
  Device device() const { return device_; }
  // Bytes of packed weight one forward pass reads.
  size_t weight_bytes() const { return static_cast<size_t>(in_features_) * out_features_ * DTypeSize(weight_dtype_); }

 protected:
  Linear(int64_t in, int64_t out, DType dtype, Device device = Device::kCpu)
      : in_features_(in), out_features_(out), weight_dtype_(dtype), device_(device) {}
  // The backend's GEMM, called with shapes and devices already checked and M > 0.
  // Create dispatches on the device once; the object it returns is that device's body.
  virtual absl::Status Run(const Tensor& x, Tensor* y) = 0;
  int64_t in_features_;
  int64_t out_features_;
  DType weight_dtype_;
  Device device_;
};

// Stacks several [N_i, K] weights into one [ΣN_i, K] weight (e.g. q|k|v or gate|up),
// so one GEMM reads the input once. Result is f32 unless every part is bf16.
absl::StatusOr<Tensor> ConcatRows(absl::Span<const Tensor> parts);
// Converts a weight of any supported dtype to f32 on `device` (small vectors: norms).
absl::StatusOr<Tensor> ToF32(const Tensor& t, Device device);

// out[i, :] = table[ids[i], :]; table [V, H] f32|bf16, ids i32 [T], out f32 [T, H].
absl::Status EmbeddingLookup(const Tensor& table, const Tensor& ids, Tensor* out);

// Root-mean-square norm over the last dimension D, in f32:
//   y = x · rsqrt(mean(x²) + eps) · (weight_offset + w)
// weight_offset is 0 for the plain norm and 1 for the zero-centred one. In place is fine.
absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, float weight_offset,
                     Tensor* out);

// Rotary embedding, rotate-half (NeoX) pairing, on the first rotary_dim dims of each
// head. x: f32 [T, H, d]; positions: i32 [T]; cos_sin: f32 [max_pos, rotary_dim]
// holding cos for the first rotary_dim/2 columns and sin for the rest.
absl::Status ApplyRotaryEmbedding(const Tensor& positions, const Tensor& cos_sin,
                                  int64_t rotary_dim, Tensor* x);

// out[T, I] = silu(gate_up[:, :I]) ⊙ gate_up[:, I:]  (SwiGLU).
absl::Status SiluMul(const Tensor& gate_up, Tensor* out);

// dst[r, :] = src[r, col_start : col_start + dst.cols] for 2-D f32 tensors, e.g. to
// split a fused q|k|v projection into contiguous parts.
absl::Status CopyColumns(const Tensor& src, int64_t col_start, Tensor* dst);

// x[t, i] *= sigmoid(gate[t, i / r]) with r = x.cols / gate.cols: an elementwise
// output gate (r = 1) or one gate per row (gate [T, 1]).
absl::Status SigmoidGateInPlace(const Tensor& gate, Tensor* x);

// x = clamp(x, -limit, limit), elementwise.
absl::Status ClampInPlace(float limit, Tensor* x);

// Mixture-of-experts routing, in f32: p = softmax(logits[t, :]); keep the k largest
// (ties to the lower expert id); renormalise them to sum 1 when asked.
// logits: f32 [T, E]; experts: i32 [T, k]; weights: f32 [T, k].
// row_k (i32 [T] on the logits' device, or undefined): a per-row top-k in [1, k] (a
// request's experts_per_token); row t keeps its row_k[t] largest, renormalised over
// those, and its entries past row_k[t] get expert −1 and weight 0. A row_k outside
// [1, k] is INVALID_ARGUMENT (checked by the body: it reads the contents).
absl::Status RouteTopK(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts,
                       Tensor* weights, const Tensor& row_k);
// Host-span form (empty or [T]), kept so that existing callers compile; to be removed
// once the engine passes row_k as a tensor. Same body, same bits.
absl::Status RouteTopK(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts,
                       Tensor* weights, absl::Span<const int32_t> row_k = {});

// out[rows[i], :] += scale[i] · y[i, :] — the scatter half of grouped expert compute.
absl::Status ScaledScatterAdd(const Tensor& y, const Tensor& rows, const Tensor& scale,
                              Tensor* out);

// Gated DeltaNet gates per token and value head, in f32:
//   beta = sigmoid(b);  g = −exp(A_log) · softplus(a + dt_bias)   (g ≤ 0, a log decay)
// a, b, g, beta: f32 [T, H]; a_log, dt_bias: f32 [H]. softplus has torch's threshold 20.
absl::Status DeltaRuleGates(const Tensor& a, const Tensor& b, const Tensor& a_log,
                            const Tensor& dt_bias, Tensor* g, Tensor* beta);

// out[t, g] = mean over the columns of group g of sigmoid(x[t, :]), groups of
// x.cols / out.cols consecutive columns. x: f32 [T, W]; out: f32 [T, G], W % G == 0.
// GateSkip importance (G = 1) and the per-head mean of an attention output gate.
absl::Status SigmoidGroupMean(const Tensor& x, Tensor* out);

// x[t, :] += bias, for x f32 [T, N] and bias f32 [N].
absl::Status AddBiasInPlace(const Tensor& bias, Tensor* x);

// x += y, elementwise, same shape.
absl::Status AddInPlace(const Tensor& y, Tensor* x);

// Every element of x (f32) set to value: a ones vector, a zero accumulator, on the
// device, instead of building it on the host and uploading it.
absl::Status FillConstant(float value, Tensor* x);

// The attention-gate floor as a device mask:
//   mask[t, h] = 1 if row_floor[t] > 0 and head_gate_mean[t, h] < row_floor[t], else 0.
// head_gate_mean: f32 [T, H] (SigmoidGroupMean of the output gate); row_floor: f32 [T],
// 0 (or less) for rows without a floor; mask: i32 [T, H], the head_skip of
// PagedAttention. An all-zero mask skips nothing, as no mask does.
absl::Status HeadSkipMask(const Tensor& head_gate_mean, const Tensor& row_floor, Tensor* mask);

// Rows of a ragged batch, picked by index: out[i] = x[rows[i]].
absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor* out);

// Paged KV cache: k_cache/v_cache are f32 [num_blocks, block_size, H_kv, d]. Token i of
// the batch is written to slot slot_mapping[i] = block * block_size + offset.
absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor* k_cache, Tensor* v_cache);

// One sequence of a ragged attention batch. Its query rows are
// [query_start, query_start + query_len) of q; they are the last query_len tokens of a
// context of context_len tokens whose K/V are already in the cache, found through
// block_table (host memory, ceil(context_len / block_size) entries).
struct AttentionSequence {
  int32_t query_start = 0;
  int32_t query_len = 0;
  int32_t context_len = 0;
  const int32_t* block_table = nullptr;
};

// The sequences of a ragged attention batch as tensors on the compute device, packed
// once per step. Sequence s has query rows [query_start[s], query_start[s + 1]) of q,
// the last ones of a context of context_len[s] tokens whose K/V are in the cache, found
// through row s of block_tables (ceil(context_len[s] / block_size) leading entries are
// used; the rest of the row is padding, -1 by convention).
struct AttentionBatch {
  Tensor query_start;   // i32 [S + 1], non-decreasing (row offsets, usually from 0)
  Tensor context_len;   // i32 [S]
  Tensor block_tables;  // i32 [S, max_blocks]
};

// Causal softmax attention with GQA over a paged cache:
//   out[t, h] = softmax(scale · q[t, h] · K_{g(h)}ᵀ, causal) · V_{g(h)}
// q, out: f32 [T, H_q, d]; H_q must be a multiple of H_kv.
// head_skip (i32 [T, H_q] on the device, or undefined): a non-zero entry skips that
// (token, head): its output is zero and nothing is read for it, so a KV group whose
// query heads are all skipped for a token is never read for that token (attention-gate
// floor; HeadSkipMask makes it). Bad metadata (rows outside q, a query longer than its
// context, block ids outside the cache or past max_blocks) is reported by the body.
absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const AttentionBatch& batch, float scale, Tensor* out,
                            const Tensor& head_skip = Tensor());
// Host-metadata form (head_skip empty or [T, H_q]), kept so that existing callers
// compile; to be removed once the engine uploads an AttentionBatch. Same body, same bits.
absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            absl::Span<const AttentionSequence> sequences, float scale,
                            Tensor* out, absl::Span<const uint8_t> head_skip = {});

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_OPS_H_
