// CPU bodies of the ops in kernels/ops.h. The dispatched bodies are the kCpu
// specialisations declared in kernels/op_bodies.h (defined in ops_cpu.cc and
// linear_cpu.cc): they check what reads tensor contents, then call the plain functions
// below, which assume every check has passed.
#ifndef SLUICE_KERNELS_CPU_OPS_CPU_H_
#define SLUICE_KERNELS_CPU_OPS_CPU_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/ops.h"

namespace sluice::kernels::cpu {

absl::StatusOr<std::unique_ptr<Linear>> CreateLinear(const Tensor& weight);
void EmbeddingLookup(const Tensor& table, const Tensor& ids, Tensor* out);
void RmsNorm(const Tensor& x, const Tensor& weight, float eps, float weight_offset, Tensor* out);
void ApplyRotaryEmbedding(const Tensor& positions, const Tensor& cos_sin, int64_t rotary_dim,
                          Tensor* x);
void SiluMul(const Tensor& gate_up, Tensor* out);
void CopyColumns(const Tensor& src, int64_t col_start, Tensor* dst);
void SigmoidGateInPlace(const Tensor& gate, Tensor* x);
void ClampInPlace(float limit, Tensor* x);
void RouteTopK(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts, Tensor* weights,
               absl::Span<const int32_t> row_k);
void SigmoidGroupMean(const Tensor& x, Tensor* out);
void AddBiasInPlace(const Tensor& bias, Tensor* x);
void ScaledScatterAdd(const Tensor& y, const Tensor& rows, const Tensor& scale, Tensor* out);
void DeltaRuleGates(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias,
                    Tensor* g, Tensor* beta);
void AddInPlace(const Tensor& y, Tensor* x);
void GatherRows(const Tensor& x, const Tensor& rows, Tensor* out);
// k_scale, v_scale: null (or undefined) unless the cache is f8_e4m3.
void WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor* k_cache,
                  Tensor* v_cache, Tensor* k_scale = nullptr, Tensor* v_scale = nullptr);
void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                    absl::Span<const AttentionSequence> sequences, float scale, Tensor* out,
                    absl::Span<const uint8_t> head_skip, const Tensor& k_scale = Tensor(),
                    const Tensor& v_scale = Tensor());

// The content checks and body shared by the host-metadata and the tensor forms of an op
// (one body, so the two forms give the same bits). Shapes are already checked.
absl::Status RouteTopKChecked(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts,
                              Tensor* weights, absl::Span<const int32_t> row_k);
// head_skip: [T, H_q] flags or nullptr.
absl::Status PagedAttentionChecked(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                   absl::Span<const AttentionSequence> sequences, float scale,
                                   Tensor* out, const uint8_t* head_skip,
                                   const Tensor& k_scale, const Tensor& v_scale);
absl::Status PagedAttentionChecked(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                   absl::Span<const AttentionSequence> sequences, float scale,
                                   Tensor* out, const int32_t* head_skip,
                                   const Tensor& k_scale, const Tensor& v_scale);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_OPS_CPU_H_
