// The contract between the scheduler and the model runner for one engine step, as in
// vLLM v1 (SchedulerOutput / ModelRunnerOutput):
//
//   StepPlan plan = scheduler.Schedule();       // policy only; no model in sight
//   StepOutput out = runner.Execute(plan);      // forward pass and sampling
//   scheduler.Apply(plan, out);                 // tokens, usage, stops, events
//
// A plan borrows the scheduler's per-sequence data (token history, block table, budget,
// sampling options) instead of copying it. It stays valid until the Apply that consumes
// it; the scheduler changes none of that data in between, and Schedule must not be
// called again before that Apply.
#ifndef SLUICE_ENGINE_SCHEDULER_STEP_PLAN_H_
#define SLUICE_ENGINE_SCHEDULER_STEP_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/model/forward_batch.h"  // SequenceBudget, SequenceCost
#include "engine/request.h"

namespace sluice::engine {

// One sequence's share of a step: a decode token or a chunk of its prompt.
struct ScheduledSequence {
  // Unique for the scheduler's lifetime and kept across preemption; the runner keys its
  // per-sequence state (samplers) by it.
  uint64_t id = 0;
  // The whole sequence so far (prompt, then generated tokens). This step runs
  // tokens[num_computed, num_computed + num_tokens), at those positions.
  absl::Span<const int32_t> tokens;
  int32_t num_computed = 0;  // tokens whose K/V (and state) are cached before this step
  int32_t num_tokens = 0;
  // Blocks covering every position up to context_len(), allocated while planning.
  absl::Span<const int32_t> block_table;
  int32_t state_slot = -1;                 // recurrent-state slot; -1 when the model has none
  bool state_fresh = false;                // first step of the sequence (or of its recompute)
  bool decode = false;                     // exactly one token was left to compute
  // Prefix caching (engine/cache/prefix_cache.h). restore_slot >= 0: this is the first
  // step after a hit, and the runner copies recurrent-state slot restore_slot (a
  // snapshot) into state_slot before the forward pass; the hit's tokens are already in
  // num_computed. checkpoint_slot >= 0: the step also writes the state as it stands
  // after the first checkpoint_len of its tokens into that slot (a new snapshot; the
  // Gated DeltaNet ops' checkpoint, kernels/gated_delta_net.h).
  int32_t restore_slot = -1;
  int32_t checkpoint_slot = -1;
  int32_t checkpoint_len = 0;
  const SequenceBudget* budget = nullptr;  // null: dense

  // Sampling. When `sample` is set the chunk reaches the end of the sequence, so its last
  // row's logits are sampled into the sequence's next token.
  bool sample = false;
  int32_t num_generated = 0;    // the sampler's step index and penalty split
  std::vector<int32_t> banned;  // EOS and stop ids while below min_tokens
  const SamplingOptions* sampling = nullptr;
  int32_t logprobs_top_n = -1;  // < 0: no logprobs

  int32_t context_len() const { return num_computed + num_tokens; }
  absl::Span<const int32_t> step_tokens() const { return tokens.subspan(num_computed, num_tokens); }
};

struct StepPlan {
  // Batch order: every decode first, then prompt chunks, fewest remaining tokens first.
  std::vector<ScheduledSequence> sequences;
  // Sequences that left the scheduler since the previous plan (finished, cancelled,
  // expired, aborted): the runner drops whatever it keeps for them.
  std::vector<uint64_t> released;
  // Sequences preempted by recompute while forming this plan (blocks and state slot
  // freed, back in the queue). None of them is in `sequences`.
  std::vector<uint64_t> preempted;

  int32_t block_size = 0;  // KV slot of position p: block_table[p / bs] * bs + p % bs
  int32_t num_tokens = 0;  // Σ num_tokens
  int32_t decodes = 0;
  int32_t prompt_tokens = 0;
  int32_t token_budget = 0;  // max_num_batched_tokens
  // The prompt-token cap beside decodes in force while planning (ITL controller), and
  // whether this step holds prompts to the floor to time the decodes.
  int32_t prefill_cap = 0;
  bool probe = false;

  bool empty() const { return sequences.empty(); }
};

// What one sequence's rows produced.
struct SequenceOutput {
  int32_t token = -1;    // the sampled token when the plan's entry samples
  TokenLogprob logprob;  // filled when the entry asked for logprobs
  // What the rows actually ran (budgets); has_cost is false when the model reported
  // nothing for this sequence, and Apply then counts it as dense.
  SequenceCost cost;
  bool has_cost = false;
};

struct StepOutput {
  // The forward pass's status. When it is not OK no sequence has a token, and Apply ends
  // every scheduled sequence with the error.
  absl::Status status;
  std::vector<SequenceOutput> sequences;          // parallel to StepPlan::sequences
  absl::Time start = absl::InfinitePast();        // when the step began executing
  absl::Duration forward = absl::ZeroDuration();  // the forward pass alone (ITL controller)
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_SCHEDULER_STEP_PLAN_H_
