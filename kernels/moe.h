// Mixture-of-experts ops that keep routing on the device: grouping the routed
// (token, expert) pairs by expert, and running every active expert of a layer in one op
// over those groups. Together with RouteTopK (ops.h) a MoE layer needs no host round
// trip: the grouped op reads the per-expert counts from the offsets tensor, as fused-MoE
// kernels do (vLLM's moe_align_block_size + fused_moe, SGLang's grouped GEMM).
#ifndef SLUICE_KERNELS_MOE_H_
#define SLUICE_KERNELS_MOE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

// Groups the routed entries by expert. experts: i32 [T, k] (−1: an unused slot, e.g.
// past a row's own experts_per_token); weights: f32 [T, k]. With E experts
// (expert_offsets holds E + 1 entries):
//   expert_offsets i32 [E + 1]: offsets[e] = Σ_{e' < e} count(e'), offsets[E] = entries used;
//   sorted_rows    i32 [T·k]:   the token of each entry, by expert ascending, then token
//                               ascending; entries past offsets[E] are 0;
//   sorted_weights f32 [T·k]:   the matching routing weights (0 past offsets[E]).
// expert_tokens (optional, i64 [E]): a persistent counter, += count(e) (the expert-load
// metric). On the CPU it is updated with relaxed atomic adds, so another thread may read
// it with relaxed atomic loads (ReadExpertTokenCounter) while a forward pass runs.
// An expert id outside [−1, E) is OUT_OF_RANGE (checked by the device body: the
// device-neutral half never reads tensor contents).
absl::Status AlignRowsByExpert(const Tensor& experts, const Tensor& weights,
                               Tensor* expert_offsets, Tensor* sorted_rows,
                               Tensor* sorted_weights, Tensor* expert_tokens = nullptr);

// A relaxed atomic read of an AlignRowsByExpert counter, safe from any thread.
absl::StatusOr<std::vector<uint64_t>> ReadExpertTokenCounter(const Tensor& expert_tokens);

// The E SwiGLU experts of one MoE layer, run together:
//   out[t] = Σ over the entries i of token t, experts ascending,
//            sorted_weights[i] · down_e(silu(gate_e(x[t])) ⊙ up_e(x[t]))
// computed as out = 0, then for each expert in ascending id out[row] += w · y[row]:
// exactly the per-expert loop of Linear, SiluMul and ScaledScatterAdd, bit for bit.
// Experts with no rows are never read. An object keeps its workspace between calls (no
// allocation in steady state; on the CPU one per thread, shared by all layers), so an
// object runs one Forward at a time, like a model's layers.
//
// Quantized experts (options.quantization int8 or int4) are stored in exactly the format
// a Linear with those options stores each [2I, H] and [H, I] weight (cpu/gemm_int8_cpu.h:
// symmetric per output channel; cpu/gemm_int4_cpu.h: group-wise, group_size 32, 64 or
// 128), and every output is then bit for bit the per-expert loop over those Linears.
// Every row's result is independent of the batch it shares, in every format.
//
// Pre-quantized checkpoint experts (FP8 block-scaled or GPTQ int4: kWeightRowRefs
// weights, prequantized_weight.h) get one Linear per expert gate_up and down, packed as
// stored by Linear::Create with options.quantization kNone, and run one after another
// inside the op: the output is bit for bit the per-expert loop over those Linears.
// Experts may mix formats (some FP8, some plain bf16); an expert whose weight a Linear
// refuses fails Create with the Linear's code and the expert's number. Re-quantizing
// such experts (options int8/int4) is FAILED_PRECONDITION.
class GroupedExperts {
 public:
  // gate_up[e]: [2I, H] (gate rows, then up rows); down[e]: [H, I]; f32, bf16, f16 or
  // kWeightRowRefs, one shape for every expert. The packed copies live on `device`.
  // Quantized with `options` (LinearOptions{}: the checkpoint's own format, as a Linear
  // keeps it).
  static absl::StatusOr<std::unique_ptr<GroupedExperts>> Create(absl::Span<const Tensor> gate_up,
                                                                absl::Span<const Tensor> down, Device device,
                                                                const LinearOptions& options);
  // The same with the calling thread's default options (DefaultLinearOptions(): the
  // innermost ScopedLinearOptions, which model loading opens for --quantization).
  static absl::StatusOr<std::unique_ptr<GroupedExperts>> Create(absl::Span<const Tensor> gate_up,
                                                                absl::Span<const Tensor> down,
                                                                Device device);
  virtual ~GroupedExperts() = default;

  // x: f32 [T, H]; expert_offsets, sorted_rows, sorted_weights as AlignRowsByExpert
  // makes them (sorted_* hold at least offsets[E] entries); out: f32 [T, H]. All on the
  // op's device. Checks shapes here, for every backend, then runs the device's body.
  absl::Status Forward(const Tensor& x, const Tensor& expert_offsets, const Tensor& sorted_rows,
                       const Tensor& sorted_weights, Tensor* out);

  int64_t num_experts() const { return num_experts_; }
  int64_t hidden() const { return hidden_; }
  int64_t intermediate() const { return intermediate_; }
  Device device() const { return device_; }
  // How the experts are stored (kNone: the checkpoint's format, bf16 or f32).
  WeightQuantization quantization() const { return quantization_; }
  // Packed weight bytes of one expert (gate, up and down), what a token routed to it reads
  // (quantized formats: values, scales and panel padding; pre-quantized experts whose
  // formats differ: the mean over the experts).
  size_t ExpertWeightBytes() const { return expert_weight_bytes_; }
  // Multiply-adds ×2 of one expert for one token.
  double ExpertFlopsPerToken() const { return 2.0 * 3.0 * hidden_ * intermediate_; }

 protected:
  GroupedExperts(int64_t experts, int64_t hidden, int64_t intermediate, Device device,
                 size_t expert_weight_bytes, WeightQuantization quantization = WeightQuantization::kNone)
      : num_experts_(experts), hidden_(hidden), intermediate_(intermediate), device_(device),
        expert_weight_bytes_(expert_weight_bytes), quantization_(quantization) {}
  // The device's body, called with shapes, dtypes and devices already checked.
  virtual absl::Status Run(const Tensor& x, const Tensor& expert_offsets, const Tensor& sorted_rows,
                           const Tensor& sorted_weights, Tensor* out) = 0;

 private:
  int64_t num_experts_;
  int64_t hidden_;
  int64_t intermediate_;
  Device device_;
  size_t expert_weight_bytes_;
  WeightQuantization quantization_;
};

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_MOE_H_
