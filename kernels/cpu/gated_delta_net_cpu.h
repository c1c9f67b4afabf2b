// CPU bodies of the ops in kernels/gated_delta_net.h. Called only from gated_delta_net.cc
// after its checks, so they assume valid shapes, slots and segments.
#ifndef SLUICE_KERNELS_CPU_GATED_DELTA_NET_CPU_H_
#define SLUICE_KERNELS_CPU_GATED_DELTA_NET_CPU_H_

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
void GatedRmsNorm(const Tensor& x, const Tensor& z, const Tensor& weight, float eps, Tensor* out);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GATED_DELTA_NET_CPU_H_
