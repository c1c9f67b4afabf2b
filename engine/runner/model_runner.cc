#include "engine/runner/model_runner.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/model/device_batch.h"

namespace sluice::engine {

void PackForwardBatch(const StepPlan& plan, ForwardBatch* batch) {
  batch->token_ids.clear();
  batch->positions.clear();
  batch->slot_mapping.clear();
  batch->sequences.clear();
  batch->state_slots.clear();
  batch->state_fresh.clear();
  batch->logit_rows.clear();
  batch->budgets.clear();
  batch->checkpoint_slots.clear();
  batch->checkpoint_lens.clear();
  const bool checkpoints = std::any_of(plan.sequences.begin(), plan.sequences.end(),
                                       [](const ScheduledSequence& s) { return s.checkpoint_slot >= 0; });
  const int32_t block_size = plan.block_size;
  for (const ScheduledSequence& s : plan.sequences) {
    const int32_t start = batch->num_tokens();
    for (int32_t j = 0; j < s.num_tokens; ++j) {
      const int32_t pos = s.num_computed + j;
      batch->token_ids.push_back(s.tokens[pos]);
      batch->positions.push_back(pos);
      batch->slot_mapping.push_back(s.block_table[pos / block_size] * block_size +
                                    pos % block_size);
    }
    kernels::AttentionSequence meta;
    meta.query_start = start;
    meta.query_len = s.num_tokens;
    meta.context_len = s.context_len();
    meta.block_table = s.block_table.data();
    batch->sequences.push_back(meta);
    batch->state_slots.push_back(s.state_slot);
    batch->state_fresh.push_back(s.state_fresh ? 1 : 0);
    batch->budgets.push_back(s.budget);
    if (checkpoints) {
      batch->checkpoint_slots.push_back(s.checkpoint_slot);
      batch->checkpoint_lens.push_back(s.checkpoint_slot >= 0 ? s.checkpoint_len : 0);
    }
    if (s.sample) batch->logit_rows.push_back(start + s.num_tokens - 1);
  }
}

ModelRunner::ModelRunner(LanguageModel* model, PagedKvCache kv_cache,
                         RecurrentStateCache state_cache)
    : model_(model), kv_cache_(std::move(kv_cache)), state_cache_(std::move(state_cache)) {}

Sampler& ModelRunner::SamplerFor(const ScheduledSequence& seq) {
  std::unique_ptr<Sampler>& sampler = samplers_[seq.id];
  if (sampler == nullptr) {
    sampler = std::make_unique<Sampler>(seq.sampling != nullptr ? *seq.sampling : SamplingOptions{},
                                        seq.logprobs_top_n);
  }
  return *sampler;
}

StepOutput ModelRunner::Execute(const StepPlan& plan) {
  for (uint64_t id : plan.released) samplers_.erase(id);
  StepOutput output;
  if (plan.empty()) return output;
  output.start = absl::Now();
  // Prefix-cache hits start from a snapshot of the recurrent state: copy each into its
  // sequence's slot before the forward pass reads the slot.
  restores_.clear();
  for (const ScheduledSequence& s : plan.sequences) {
    if (s.restore_slot >= 0) restores_.push_back({s.restore_slot, s.state_slot});
  }
  if (!restores_.empty()) {
    output.status = state_cache_.CopySlots(restores_);
    if (!output.status.ok()) return output;
  }
  PackForwardBatch(plan, &batch_);
  // The step's metadata goes to the model's device here, in one copy; the forward pass
  // and its ops read it from there.
  absl::StatusOr<DeviceBatch> uploaded = DeviceBatch::Upload(batch_, kv_cache_.shape().block_size, model_->device());
  if (!uploaded.ok()) {
    output.status = uploaded.status();
    return output;
  }
  batch_.device = &*uploaded;
  output.status = model_->ForwardWithCosts(batch_, &kv_cache_, &state_cache_, &logits_, &costs_);
  batch_.device = nullptr;
  output.forward = absl::Now() - output.start;
  if (!output.status.ok()) return output;
  const int64_t vocab = model_->config().vocab_size;
  const size_t rows = batch_.logit_rows.size();
  if (logits_.size() < rows * static_cast<size_t>(vocab)) {
    output.status =
        absl::InternalError(absl::StrCat("the model returned ", logits_.size(), " logits for ",
                                         rows, " rows of a ", vocab, "-token vocabulary"));
    return output;
  }
  output.sequences.resize(plan.sequences.size());
  int64_t logit_index = 0;
  for (size_t i = 0; i < plan.sequences.size(); ++i) {
    const ScheduledSequence& s = plan.sequences[i];
    SequenceOutput& out = output.sequences[i];
    if (i < costs_.size()) {
      out.cost = costs_[i];
      out.has_cost = true;
    }
    if (!s.sample) continue;
    absl::Span<float> row(logits_.data() + logit_index * vocab, static_cast<size_t>(vocab));
    ++logit_index;
    out.token = SamplerFor(s).Sample(row, s.tokens, s.num_generated, s.banned,
                                     static_cast<uint64_t>(s.num_generated), &out.logprob);
  }
  return output;
}

}  // namespace sluice::engine
