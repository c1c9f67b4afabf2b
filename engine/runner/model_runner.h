// Executes a StepPlan: packs the plan into the step's ragged batch, runs the model's
// forward pass and the sampler, and returns the step's output (vLLM v1's model runner).
// The scheduler decides; the runner computes. It owns what a step computes with: the KV
// cache and recurrent-state cache, the batch, logits and cost buffers (reused across
// steps, so a steady decode step allocates nothing here), and the per-sequence samplers.
// On a device backend this is where the step's metadata is uploaded once.
#ifndef SLUICE_ENGINE_RUNNER_MODEL_RUNNER_H_
#define SLUICE_ENGINE_RUNNER_MODEL_RUNNER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/cache/kv_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/model/forward_batch.h"
#include "engine/model/language_model.h"
#include "engine/sampling/sampler.h"
#include "engine/scheduler/step_plan.h"

namespace sluice::engine {

// Packs `plan` into `batch` (cleared first, capacity kept): the step tokens of every
// sequence back to back, their positions and KV slots, per-sequence attention metadata
// (the block tables point into the plan's, so the plan must outlive the batch's use),
// state slots, budgets and the rows whose logits are sampled, in plan order.
void PackForwardBatch(const StepPlan& plan, ForwardBatch* batch);

class ModelRunner {
 public:
  ModelRunner(LanguageModel* model, PagedKvCache kv_cache, RecurrentStateCache state_cache);

  // Engine thread only. First drops the state of the plan's released sequences; an empty
  // plan then returns an empty output without running the model. A forward error (or a
  // model that returns the wrong number of logits) comes back as the output's status,
  // with no per-sequence outputs.
  StepOutput Execute(const StepPlan& plan);

  // Samplers currently kept (for tests).
  size_t num_samplers() const { return samplers_.size(); }

 private:
  Sampler& SamplerFor(const ScheduledSequence& seq);

  LanguageModel* model_;
  PagedKvCache kv_cache_;
  RecurrentStateCache state_cache_;
  ForwardBatch batch_;
  std::vector<float> logits_;
  std::vector<SequenceCost> costs_;
  std::vector<kernels::SlotCopy> restores_;  // snapshot → sequence slot, this step
  // Samplers live here, keyed by sequence id, rather than with the scheduler's sequence:
  // sampling is part of the step's compute (on a GPU its scratch, penalty counts and
  // logits stay on the device beside the forward pass), while the scheduler keeps only
  // policy. A sampler is made on the sequence's first sampled step from the plan's
  // options and dropped when a plan lists the sequence as released. It survives a
  // preemption: its randomness is counter-based on (seed, step) and it holds no history,
  // so a recomputed sequence samples exactly as if it had never been preempted.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Sampler>> samplers_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_RUNNER_MODEL_RUNNER_H_
