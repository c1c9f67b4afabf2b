// Iteration-level continuous batching. Each engine step takes every running sequence
// one chunk further (a decode token, or a chunk of its prompt) in a single ragged batch,
// so the weights are read once for all of them. The step is in three parts, as in vLLM
// v1's engine core: Schedule() forms the plan (policy below; the scheduler never calls
// the model), the ModelRunner (engine/runner/) executes it, and Apply() takes the
// output: it appends tokens, accounts usage, checks stops and emits events.
//
// Policy, per step:
//  1. Drop cancelled and expired sequences (queued ones are never started).
//  2. Admit queued requests, highest priority first, then oldest, while the running
//     set is below max_num_seqs and KV blocks for their prompt are free.
//  3. Decode-first: every running decode gets its token before any prompt chunk, then
//     prompts fill the rest of max_num_batched_tokens, fewest remaining tokens first, so
//     short requests are not held behind a long prefill. A prompt that does not fit is
//     chunked, so long prompts never stall decodes (fairness rule: one token of every
//     step is reserved for the oldest admitted prompt, so it always advances).
//     Prompt tokens beside decodes are further capped by a limit that adapts (AIMD) to
//     the measured step time, trading time-to-first-token of long prompts for the
//     inter-token latency of running streams. The step-time target is --itl_target_ms,
//     or by default --itl_target_factor times the measured time of a decode step. The
//     cap never drops below one prompt token per four decodes plus one per prompt in
//     prefill, so under saturation and in bursts admission keeps flowing instead of
//     queueing streams in prefill, while a lone long prompt stays throttled.
//  4. When a sequence needs a KV block and none is free, the lowest-priority, newest
//     running sequence is preempted by recompute: its blocks are freed and it goes back
//     to the queue with its generated tokens, to be prefilled again later.
#ifndef SLUICE_ENGINE_SCHEDULER_SCHEDULER_H_
#define SLUICE_ENGINE_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/cache/kv_cache.h"
#include "engine/cache/prefix_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/request.h"

namespace sluice::engine {

class LanguageModel;
struct StepPlan;    // engine/scheduler/step_plan.h
struct StepOutput;
struct ScheduledSequence;

// Below this, an automatic target is not worth the prefill throughput it costs: nobody
// reading a stream tells 5 ms gaps from 1 ms ones, and tiny models' step times are noise.
inline constexpr double kMinAutoItlTargetMs = 5;

// What one engine step did, for metrics. Reported from the engine thread after the
// step's tokens are appended; the observer must be quick and must not call back in.
struct StepMetrics {
  double seconds = 0;          // the forward pass, sampling and applying the output
  int32_t tokens = 0;          // prompt-chunk tokens + decode tokens in the batch
  int32_t prompt_tokens = 0;
  int32_t decodes = 0;
  int32_t preemptions = 0;     // sequences preempted while forming this step
  double executed_flops = 0;   // the shape-based accounting of Usage, summed over rows
  // Estimated bytes the step reads: the weights once (with the model's k experts per MoE
  // layer), every attended K/V entry, and each recurrent-state slot in use.
  double read_bytes = 0;
};
using StepObserver = std::function<void(const StepMetrics&)>;

struct SchedulerOptions {
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 2048;
  int32_t max_queue = 1024;
  int64_t max_model_len = 0;
  int32_t block_size = 16;
  // Inter-token latency target in ms. When set (> 0), the prompt tokens that share a
  // step with running decodes adapt so steps stay near the target (see OnStepTimed).
  double itl_target_ms = 0;
  // With no explicit target, the target is this factor times the measured time of a
  // decode step (a step with at most a token or so of prompt beside its decodes), and
  // never under kMinAutoItlTargetMs. 0 (here) turns the controller off; the engine's
  // default is 1.3: prompt chunks may add about a quarter of a decode step, which kept
  // p99 ITL at 16 streams beside 2,000-token prompts within 3x the single-stream p99
  // (1.5 did not, once gRPC shared the two cores with the steps).
  double itl_target_factor = 0;
  StepObserver on_step;  // optional
  // Prefix caching (engine/cache/prefix_cache.h): full KV blocks are shared by content
  // and, on hybrid models, recurrent-state snapshots let a sequence start past a shared
  // prefix. Off here (the library default keeps every step's work visible to tests);
  // the engine turns it on.
  bool enable_prefix_caching = false;
  // Hybrid models: the last `state_snapshots` slots of the state shape hold snapshots;
  // the others are the running sequences' slots.
  int32_t state_snapshots = 0;
  // Hybrid models: a snapshot every this many prompt tokens (rounded up to the snapshot
  // grid; 0: only at the end of each prefill, at branch points and at the end of each
  // finished sequence).
  int32_t state_snapshot_interval = 0;
};

struct SchedulerStats {
  int32_t total_blocks = 0;
  int32_t free_blocks = 0;
  int32_t total_state_slots = 0;
  int32_t free_state_slots = 0;
  int32_t running = 0;
  int32_t waiting = 0;
  uint64_t steps = 0;
  uint64_t preemptions = 0;
  uint64_t finished = 0;
  double itl_target_ms = 0;        // the step-time target in force (0: none yet, or off)
  int32_t prefill_cap = 0;         // prompt tokens allowed beside decodes under it
  // Prefix caching, as vLLM's prefix_cache_queries / prefix_cache_hits: tokens looked up
  // at admission (the whole context of each admitted sequence) and tokens found cached.
  uint64_t prefix_cache_queries = 0;
  uint64_t prefix_cache_hits = 0;
  int32_t cached_blocks = 0;       // KV blocks findable by content (referenced or not)
  uint64_t block_evictions = 0;    // cached blocks reused for new allocations
  int32_t state_snapshots = 0;     // published recurrent-state snapshots
  int32_t total_state_snapshots = 0;
  uint64_t snapshot_evictions = 0;
};

class Scheduler {
 public:
  // `model` is read for its config and its cost model (DenseFlops, WeightBytesPerStep)
  // only; it is const so that the scheduler cannot run it. The shapes size the block
  // and state-slot pools; the caches themselves belong to the ModelRunner. A state shape
  // with zero layers (models without linear attention) means sequences take no slot.
  Scheduler(const SchedulerOptions& options, const LanguageModel* model,
            const KvCacheShape& kv_shape, const StateCacheShape& state_shape);
  ~Scheduler();

  // Thread-safe. Takes a validated request; RESOURCE_EXHAUSTED when the queue is full,
  // UNAVAILABLE while draining. On error nothing is queued and the channel is untouched.
  absl::Status Enqueue(GenerationRequest request, std::shared_ptr<RequestChannel> channel);
  // Thread-safe. New requests are refused; queued and running ones still finish.
  void StartDrain();
  bool draining() const;
  // Thread-safe: true when some sequence is queued or running.
  bool HasWork() const;
  SchedulerStats Stats() const;

  // Engine thread only. Drops cancelled and expired sequences, admits queued ones and
  // forms the next step (preempting when blocks run out). An empty plan runs nothing;
  // it may still list released sequences.
  StepPlan Schedule();
  // Engine thread only. Consumes the output of executing `plan`, the last plan Schedule
  // returned: appends the sampled tokens, accounts usage and executed compute, checks
  // stops and max tokens, emits events, finishes sequences, and reports the step to the
  // ITL controller and the StepMetrics observer. A failed forward pass ends every
  // sequence of the plan with INTERNAL.
  void Apply(const StepPlan& plan, const StepOutput& output);
  // Ends every queued and running request with `status` (shutdown).
  void AbortAll(const absl::Status& status);
  // Engine thread only (tests). Empty when the caches' bookkeeping is consistent;
  // otherwise what is wrong: the block pool's and snapshot pool's own invariants, and
  // every block's reference count equal to the running sequences' tables holding it.
  std::string CheckCacheInvariants() const;

 private:
  struct Sequence;  // scheduler.cc
  using SeqPtr = std::unique_ptr<Sequence>;

  void DrainInbox();
  void DropCancelledAndExpired();
  void Admit();
  bool EnsureBlocks(Sequence* seq, int32_t total_tokens,
                    const absl::flat_hash_set<const Sequence*>& pinned,
                    std::vector<uint64_t>* preempted);
  bool PreemptOne(const Sequence* keep, const absl::flat_hash_set<const Sequence*>& pinned,
                  std::vector<uint64_t>* preempted);
  void PublishCounters();
  double EstimatedReadBytes(const StepPlan& plan) const;
  void OnStepTimed(absl::Duration step, int32_t decodes, int32_t prompt_tokens, bool probe);
  bool AutoItlTarget() const;                // no explicit target, factor > 0
  bool NeedsProbe(int32_t decodes) const;    // see Schedule
  int32_t BlocksFor(int64_t tokens) const;
  // Returns a sequence's KV blocks and state slot to their pools. `keep_state`: its
  // finished-sequence snapshot is published (false when its state is not trusted).
  void ReleaseResources(Sequence* seq, bool keep_state = true);
  // Prefix caching helpers (scheduler.cc).
  static bool StateCacheable(const Sequence& seq);
  void HashFullBlocks(Sequence* seq) const;
  int32_t LookUpPrefix(Sequence* seq, std::vector<int32_t>* blocks, int32_t* snapshot);
  int32_t AlignPromptChunk(const Sequence& seq, int32_t count) const;
  int32_t NextSnapshotPoint(const Sequence& seq, int32_t after) const;
  void PlanCheckpoint(Sequence* seq, int32_t* count, bool decode);
  void ApplyCaching(Sequence* seq, const ScheduledSequence& s);
  void Finish(SeqPtr seq, absl::Status status, FinishReason reason);
  bool QueueOrder(const Sequence& a, const Sequence& b) const;

  SchedulerOptions options_;
  const LanguageModel* model_;
  KvCacheShape kv_shape_;
  KvBlockPool allocator_;
  StateCacheShape state_shape_;
  StateSlotPool state_slots_;
  bool uses_state_ = false;
  // Prefix caching (see SchedulerOptions): snapshots, the grid every snapshot position
  // and every non-final prompt chunk of a hybrid model keeps to (the lcm of the block
  // size and the Gated DeltaNet chunk, so a resumed prefill keeps the chunk grid of an
  // uninterrupted one), and the interval in tokens (a multiple of the grid, 0: none).
  StateSnapshotPool snapshots_;
  int32_t snapshot_base_ = 0;  // state slot of snapshot 0
  int32_t snapshot_grid_ = 0;
  int32_t snapshot_interval_ = 0;
  uint64_t prefix_queries_ = 0, prefix_hits_ = 0;
  int32_t trailing_in_use_ = 0;  // snapshots held by running sequences' decodes
  std::vector<int32_t> eos_ids_;
  int32_t prefill_cap_;  // prompt tokens allowed in a step with decodes (ITL target)
  double decode_step_ms_ = 0;  // moving average of decode-step times (auto target)
  int32_t steps_since_decode_sample_ = 0;
  int32_t sampled_decodes_ = 0;  // decodes in the step that gave the last sample
  // After this many steps without a decode-time sample, a step holds prompts to the
  // floor to take one (see NeedsProbe).
  static constexpr int32_t kProbeEvery = 32;
  // The target in force: explicit, or the factor times decode_step_ms_ (0: none).
  double ItlTargetMs() const;

  mutable std::mutex mu_;  // guards inbox_, draining_, counters read by Stats()
  std::deque<SeqPtr> inbox_;
  bool draining_ = false;
  uint64_t next_arrival_ = 0;
  int32_t queued_count_ = 0;  // inbox + waiting, for the queue limit
  int32_t running_count_ = 0;
  int32_t free_blocks_ = 0;
  int32_t free_state_slots_ = 0;
  uint64_t steps_ = 0, preemptions_ = 0, finished_ = 0;
  double published_itl_target_ms_ = 0;
  SchedulerStats published_prefix_;  // its prefix-caching fields
  int32_t published_prefill_cap_ = 0;

  // Engine thread only.
  std::list<SeqPtr> waiting_;
  std::vector<SeqPtr> running_;
  // Sequences finished since the last plan (the next plan lists them as released).
  std::vector<uint64_t> released_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_SCHEDULER_SCHEDULER_H_
