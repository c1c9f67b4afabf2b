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
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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

// How a Linear stores its weight (chosen at load: --quantization).
//  kNone: as the checkpoint has it (bf16 stays bf16, f32/f16 become f32);
//  kInt8: symmetric int8, one f32 scale per output channel (cpu/gemm_int8_cpu.h);
//  kInt4: 4-bit, one scale per group of group_size inputs (cpu/gemm_int4_cpu.h).
// int8 keeps activations and accumulation in f32; int4 quantizes the activations to int8
// per 32 inputs and sums the products as integers (cpu/gemm_int4_cpu.h).
enum class WeightQuantization { kNone, kInt8, kInt4 };
absl::string_view WeightQuantizationName(WeightQuantization q);  // "none", "int8", "int4"
// "none" | "int8" | "int4"; anything else is INVALID_ARGUMENT naming the choices.
absl::StatusOr<WeightQuantization> ParseWeightQuantization(absl::string_view name);

// Projections that `--quantization int4` can keep at int8 instead (--int4_int8_parts),
// as llama.cpp's Q4_K_M keeps its output tensor and some attention tensors at 6–8 bits.
// What each costs and gains on the trained demo model: README "Quantized weights".
enum LinearPart : uint32_t {
  kLinearPartLmHead = 1u << 0,            // "lm_head"
  kLinearPartDeltaNetInput = 1u << 1,     // "delta_net_in": the Gated DeltaNet's fused in_proj
  kLinearPartAttentionInput = 1u << 2,    // "attention_in": attention's fused q|k|v(|gate)
};
// "lm_head,delta_net_in,..." (any order, "" for none) → the bits; an unknown name is
// INVALID_ARGUMENT listing the names.
absl::StatusOr<uint32_t> ParseLinearParts(absl::string_view names);
std::string LinearPartNames(uint32_t parts);  // the names, comma-separated, in bit order

struct LinearOptions {
  WeightQuantization quantization = WeightQuantization::kNone;
  int64_t group_size = 128;  // inputs per scale for kInt4
  uint32_t int4_int8_parts = 0;  // LinearPart bits kept at int8 under kInt4
};
// The options a projection of `part` is created with: `options`, at int8 when it is int4
// and options.int4_int8_parts names the part.
LinearOptions OptionsForPart(const LinearOptions& options, LinearPart part);

// y[M, N] = x[M, K] · Wᵀ for a weight stored as Hugging Face does, [N, K]. The weight
// is converted once at creation into whatever layout the device's GEMM reads fastest.
class Linear {
 public:
  // weight: [N, K] in f32, bf16 or f16 (f16 is widened to f32). Any device the weight
  // is on is accepted; the packed copy lives on `device`. A kWeightRowRefs weight (a
  // pre-quantized checkpoint's FP8 or GPTQ rows, prequantized_weight.h) is packed as
  // stored, and only with options.quantization kNone (else FAILED_PRECONDITION).
  static absl::StatusOr<std::unique_ptr<Linear>> Create(const Tensor& weight, Device device,
                                                        const LinearOptions& options);
  // The same with the calling thread's default options: those of the innermost open
  // ScopedLinearOptions, else LinearOptions{} (the checkpoint's own format). Model
  // loading opens one scope so that every projection built with this form is quantized;
  // a weight that must keep its precision (see causal_lm.cc) passes its options explicitly.
  static absl::StatusOr<std::unique_ptr<Linear>> Create(const Tensor& weight, Device device);
  virtual ~Linear() = default;
  // x: f32 [M, K]; y: f32 [M, N], preallocated on the same device. M may be 0.
  // Checks the shapes here, once for every backend, then runs the backend's body.
  absl::Status Forward(const Tensor& x, Tensor* y);

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  // The stored element type: kBF16/kF32 for kNone, kI8 for kInt8.
  DType weight_dtype() const { return weight_dtype_; }
  WeightQuantization quantization() const { return quantization_; }
  // The device whose GEMM runs Forward (where the packed weight lives).
  Device device() const { return device_; }
  // Bytes of packed weight one forward pass reads (quantized formats: values and scales).
  virtual size_t weight_bytes() const {
    return static_cast<size_t>(in_features_) * out_features_ * DTypeSize(weight_dtype_);
  }

 protected:
  Linear(int64_t in, int64_t out, DType dtype, Device device = Device::kCpu,
         WeightQuantization quantization = WeightQuantization::kNone)
      : in_features_(in), out_features_(out), weight_dtype_(dtype), device_(device),
        quantization_(quantization) {}
  // The backend's GEMM, called with shapes and devices already checked and M > 0.
  // Create dispatches on the device once; the object it returns is that device's body.
  virtual absl::Status Run(const Tensor& x, Tensor* y) = 0;
  int64_t in_features_;
  int64_t out_features_;
  DType weight_dtype_;
  Device device_;
  WeightQuantization quantization_;
};

// Sets the default LinearOptions of Linear::Create(weight, device) on this thread for
// its lifetime (scopes nest; the previous default comes back on destruction).
class ScopedLinearOptions {
 public:
  explicit ScopedLinearOptions(const LinearOptions& options);
  ~ScopedLinearOptions();
  ScopedLinearOptions(const ScopedLinearOptions&) = delete;
  ScopedLinearOptions& operator=(const ScopedLinearOptions&) = delete;

 private:
  LinearOptions previous_;
};
// The calling thread's default LinearOptions (the innermost open ScopedLinearOptions,
// else LinearOptions{}): what the plain Linear::Create and GroupedExperts::Create use.
const LinearOptions& DefaultLinearOptions();

// Stacks several [N_i, K] weights into one [ΣN_i, K] weight (e.g. q|k|v or gate|up),
// so one GEMM reads the input once. Result is f32 unless every part is bf16 (or every
// part is kWeightRowRefs: the references are stacked as they are).
absl::StatusOr<Tensor> ConcatRows(absl::Span<const Tensor> parts);
// Converts a weight of any supported dtype to f32 on `device` (small vectors: norms).
absl::StatusOr<Tensor> ToF32(const Tensor& t, Device device);

// out[i, :] = table[ids[i], :]; table [V, H] f32|bf16, ids i32 [T], out f32 [T, H].
absl::Status EmbeddingLookup(const Tensor& table, const Tensor& ids, Tensor* out);
// The int8 form: out[i, j] = float(table[ids[i], j]) · row_scales[ids[i]], exactly that
// f32 product. table: i8 [V, H]; row_scales: f32 [V] (QuantizeRowsInt8 makes both).
absl::Status EmbeddingLookup(const Tensor& table, const Tensor& row_scales, const Tensor& ids,
                             Tensor* out);

// A weight [V, H] quantized row by row to symmetric int8 as the int8 Linear does
// (cpu/gemm_int8_cpu.h: QuantizeRowInt8), row-major: the int8 embedding table.
struct QuantizedRows {
  Tensor values;  // i8 [V, H]
  Tensor scales;  // f32 [V]
};
// weight: [V, H] f32|bf16|f16 on the CPU; the result lives on `device`.
absl::StatusOr<QuantizedRows> QuantizeRowsInt8(const Tensor& weight, Device device);

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

// Paged KV cache: k_cache/v_cache are [num_blocks, block_size, H_kv, d] of one dtype:
//  f32;  bf16 (k, v rounded to nearest even, as F32ToBf16);  f8_e4m3 (kernels/fp8.h:
//  each (token, head) row of d values as fp8 codes of x / s with s a power of two, kept
//  in k_scale/v_scale, f32 [num_blocks, block_size, H_kv]; only fp8 caches take scales).
// k, v: f32 [T, H_kv, d]. Token i of the batch is written to slot
// slot_mapping[i] = block * block_size + offset; each row is converted on its own, so a
// token's cache bytes do not depend on the batch it came in.
absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor* k_cache, Tensor* v_cache, Tensor* k_scale = nullptr,
                          Tensor* v_scale = nullptr);

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
// q, out: f32 [T, H_q, d]; H_q must be a multiple of H_kv. The cache may be f32, bf16 or
// f8_e4m3 (with k_scale/v_scale, see WriteKvCache); K and V are widened to f32 element
// by element inside the loop (no f32 copy of the cache), and the math is f32 either way.
// head_skip (i32 [T, H_q] on the device, or undefined): a non-zero entry skips that
// (token, head): its output is zero and nothing is read for it, so a KV group whose
// query heads are all skipped for a token is never read for that token (attention-gate
// floor; HeadSkipMask makes it). Bad metadata (rows outside q, a query longer than its
// context, block ids outside the cache or past max_blocks) is reported by the body.
absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const AttentionBatch& batch, float scale, Tensor* out,
                            const Tensor& head_skip = Tensor(), const Tensor& k_scale = Tensor(),
                            const Tensor& v_scale = Tensor());
// Host-metadata form (head_skip empty or [T, H_q]), kept so that existing callers
// compile; to be removed once the engine uploads an AttentionBatch. Same body, same bits.
absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            absl::Span<const AttentionSequence> sequences, float scale,
                            Tensor* out, absl::Span<const uint8_t> head_skip = {},
                            const Tensor& k_scale = Tensor(), const Tensor& v_scale = Tensor());

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_OPS_H_
