// CPU bodies of the ops in kernels/gated_delta_net.h. The dispatched bodies are the kCpu
// specialisations in kernels/op_bodies.h; the *Checked functions check the sequences
// (segments, slots) and run the plain bodies, which assume every check has passed. The
// host-metadata and the tensor forms of an op share them, so they give the same bits.
#ifndef SLUICE_KERNELS_CPU_GATED_DELTA_NET_CPU_H_
#define SLUICE_KERNELS_CPU_GATED_DELTA_NET_CPU_H_

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/gated_delta_net.h"
#include "kernels/tensor.h"

namespace sluice::kernels::cpu {

void CausalConv1dSilu(const Tensor& x, const Tensor& weight,
                      absl::Span<const LinearAttentionSequence> sequences, Tensor* conv_state,
                      Tensor* y);
void GatedDeltaRule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                    const Tensor& beta, absl::Span<const LinearAttentionSequence> sequences,
                    Tensor* state, Tensor* out, GatedDeltaRuleMode mode);
absl::Status CausalConv1dSiluChecked(const Tensor& x, const Tensor& weight,
                                     absl::Span<const LinearAttentionSequence> sequences,
                                     Tensor* conv_state, Tensor* y);
absl::Status GatedDeltaRuleChecked(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& g, const Tensor& beta,
                                   absl::Span<const LinearAttentionSequence> sequences,
                                   Tensor* state, Tensor* out, GatedDeltaRuleMode mode);
// Row src of dim 0 to row dst, per copy (any dtype); Checked first checks the slots as
// CopyStateSlots (gated_delta_net.h) documents.
void CopyStateSlots(absl::Span<const SlotCopy> copies, Tensor* state);
absl::Status CopyStateSlotsChecked(absl::Span<const SlotCopy> copies, Tensor* state);
void GatedRmsNorm(const Tensor& x, const Tensor& z, const Tensor& weight, float eps, Tensor* out);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GATED_DELTA_NET_CPU_H_
