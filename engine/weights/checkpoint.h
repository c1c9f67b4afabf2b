// A Hugging Face checkpoint directory: config.json plus one or many *.safetensors files
// (with model.safetensors.index.json when sharded). Tensors are looked up by name.
//
// Pre-quantized checkpoints (config.json's quantization_config, engine/config/
// model_config.h QuantizationConfig) are read by the logical names a bf16 checkpoint would
// have: Get("<module>.weight") of an FP8 module (float8_e4m3 weight + weight_scale_inv) or
// a GPTQ one (qweight, qzeros, scales, g_idx) answers a kWeightRowRefs [N, K] tensor
// (kernels/prequantized_weight.h) that Linear::Create packs from the mapped tensors. A
// plain 2-D weight whose sibling projections (same parent module) are pre-quantized is
// handed out in the same form, so fused projections can stack it with them; every other
// tensor is returned as stored. Contains() knows the logical names too. The checkpoint
// keeps the referenced weights alive while it is open.
// Refused with an error naming the tensor: quantized tensors under a checkpoint that
// declares no quantization (or the other method), a declared method with no tensor in
// its format, an FP8 weight without its scales, and pre-quantized fused 3-D experts
// (experts.gate_up_proj with _scale_inv). Per-expert routed weights (experts.N.*_proj)
// are handed out like any projection; GroupedExperts runs them through their Linears.
#ifndef SLUICE_ENGINE_WEIGHTS_CHECKPOINT_H_
#define SLUICE_ENGINE_WEIGHTS_CHECKPOINT_H_

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config/model_config.h"
#include "engine/weights/safetensors.h"
#include "kernels/prequantized_weight.h"
#include "kernels/tensor.h"

namespace sluice::engine {

class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // A stored tensor, or the logical <module>.weight of a GPTQ module.
  bool Contains(const std::string& name) const;
  // config.json's quantization_config (kNone without one, or without config.json).
  const QuantizationConfig& quantization() const { return quantization_; }
  // The tensor, after checking its shape. The error names the tensor and both shapes.
  absl::StatusOr<kernels::Tensor> Get(const std::string& name,
                                      const std::vector<int64_t>& expected_shape) const;
  absl::StatusOr<kernels::Tensor> Get(const std::string& name) const;
  std::vector<std::string> TensorNames() const;
  // Total bytes of all tensors.
  uint64_t TotalBytes() const;

 private:
  // The stored tensor, as mapped.
  absl::StatusOr<kernels::Tensor> GetStored(const std::string& name) const;
  bool Stored(const std::string& name) const { return index_.count(name) > 0; }
  // Get for a pre-quantized checkpoint.
  absl::StatusOr<kernels::Tensor> GetQuantized(const std::string& name) const;
  absl::StatusOr<std::shared_ptr<kernels::PrequantizedWeight>> LoadFp8(
      const std::string& module) const;
  absl::StatusOr<std::shared_ptr<kernels::PrequantizedWeight>> LoadGptq(
      const std::string& module) const;
  absl::Status CheckQuantizedTensors() const;

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> index_;
  QuantizationConfig quantization_;
  // Parent modules with a pre-quantized direct child ("model.layers.0.self_attn").
  std::set<std::string> quantized_parents_;
  // The row references handed out, by logical name, and the weights they refer to.
  mutable std::mutex mu_;
  mutable std::map<std::string, kernels::Tensor> refs_;
  mutable std::vector<std::shared_ptr<const kernels::PrequantizedWeight>> weights_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_WEIGHTS_CHECKPOINT_H_
