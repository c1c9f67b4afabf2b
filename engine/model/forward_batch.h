// One engine step's ragged batch: the new tokens of every scheduled sequence packed
// back to back, with no padding, plus where their K/V go and which rows need logits.
#ifndef SLUICE_ENGINE_MODEL_FORWARD_BATCH_H_
#define SLUICE_ENGINE_MODEL_FORWARD_BATCH_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/budget/budget.h"
#include "kernels/ops.h"

namespace sluice::engine {

struct DeviceBatch;  // device_batch.h

struct ForwardBatch {
  std::vector<int32_t> token_ids;     // [T]
  std::vector<int32_t> positions;     // [T], position of each token in its sequence
  std::vector<int32_t> slot_mapping;  // [T], KV slot = block * block_size + offset
  // Per sequence: its rows in the batch, its context length after this step, and its
  // block table (which must outlive the forward call).
  std::vector<kernels::AttentionSequence> sequences;
  // Per sequence (parallel to `sequences`): its recurrent-state slot (-1 when the model
  // has no linear-attention layers) and whether this step is its first, so the state
  // starts from zero whatever the slot held before.
  std::vector<int32_t> state_slots;
  std::vector<uint8_t> state_fresh;
  // Per sequence (parallel to `sequences`, or both empty: none): a recurrent-state
  // snapshot to take inside this step's segment, for prefix caching. checkpoint_slots[s]
  // >= 0 has the linear-attention layers also write, into that state slot, the state as
  // it stands after the first checkpoint_lens[s] tokens of the segment (see
  // kernels::LinearAttentionSequence for the rules: a slot no other sequence of the batch
  // uses, 1 <= len <= the segment, and for a segment of more than one token, which takes
  // the chunked path, a multiple of kernels::kGatedDeltaRuleChunk or the whole segment).
  // -1: none for that sequence. Ignored for a model without linear-attention layers.
  std::vector<int32_t> checkpoint_slots;
  std::vector<int32_t> checkpoint_lens;
  // Rows whose logits the caller wants, in output order.
  std::vector<int32_t> logit_rows;
  // Per sequence (parallel to `sequences`, or empty): its compute budget; null or empty
  // means dense. When no sequence has a budget the forward pass is the dense one.
  std::vector<const SequenceBudget*> budgets;
  // This batch's metadata already on the model's device (DeviceBatch::Upload), when the
  // component that owns the step uploaded it (the model runner); null: the model
  // uploads it itself at the start of the forward pass.
  const DeviceBatch* device = nullptr;

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_FORWARD_BATCH_H_
