// What the scheduler needs from a model: its config, one forward pass over a ragged
// batch, and the dense cost of tokens. CausalLm implements it; scheduler tests use a
// fake with no math.
#ifndef SLUICE_ENGINE_MODEL_LANGUAGE_MODEL_H_
#define SLUICE_ENGINE_MODEL_LANGUAGE_MODEL_H_

#include <vector>

#include "absl/status/status.h"
#include "engine/cache/kv_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/config/model_config.h"
#include "engine/model/forward_batch.h"

namespace sluice::engine {

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual const ModelConfig& config() const = 0;
  // Where the model computes; the runner uploads each step's metadata there.
  virtual kernels::Device device() const { return kernels::Device::kCpu; }
  // Runs one ragged batch; writes f32 logits [batch.logit_rows.size(), vocab] to host
  // memory in `logits`.
  virtual absl::Status Forward(const ForwardBatch& batch, PagedKvCache* kv_cache,
                               RecurrentStateCache* state_cache, std::vector<float>* logits) = 0;
  // The same, also filling `costs` (resized to batch.sequences.size()) with what each
  // sequence with a non-empty budget actually ran. A model without budget support runs
  // dense and reports nothing saved.
  virtual absl::Status ForwardWithCosts(const ForwardBatch& batch, PagedKvCache* kv_cache,
                                        RecurrentStateCache* state_cache, std::vector<float>* logits,
                                        std::vector<SequenceCost>* costs) {
    costs->assign(batch.sequences.size(), SequenceCost{});
    return Forward(batch, kv_cache, state_cache, logits);
  }
  // FLOPs of `tokens` new tokens of one sequence whose context grows from `past`.
  virtual double DenseFlops(int64_t past, int64_t tokens) const = 0;
  // Weight bytes one step reads (each weight once per step; k experts per MoE layer).
  virtual uint64_t WeightBytesPerStep() const { return 0; }
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_LANGUAGE_MODEL_H_
