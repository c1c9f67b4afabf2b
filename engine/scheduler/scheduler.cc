#include "engine/scheduler/scheduler.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/model/language_model.h"
#include "engine/scheduler/step_plan.h"
#include "kernels/gated_delta_net.h"  // kGatedDeltaRuleChunk: the snapshot grid

namespace sluice::engine {

struct Scheduler::Sequence {
  GenerationRequest request;
  std::shared_ptr<RequestChannel> channel;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int32_t prompt_len = 0;
  int32_t num_generated = 0;
  int32_t num_computed = 0;     // tokens whose K/V are in the cache
  std::vector<int32_t> block_table;
  int32_t state_slot = -1;  // recurrent-state slot while running (hybrid models)
  uint64_t arrival = 0;     // also the sequence's id in plans
  UsageStats usage;
  int32_t max_tokens = 0;
  SequenceBudget budget;  // resolved from request.budget at Enqueue
  absl::Time enqueued;
  absl::Time first_scheduled = absl::InfinitePast();  // InfinitePast: not yet
  absl::Time first_token = absl::InfinitePast();
  absl::Time last_token = absl::InfinitePast();

  // Prefix caching (engine/cache/prefix_cache.h).
  BlockHash root;                 // the chain's root: the budget
  std::vector<BlockHash> hashes;  // of the full blocks of `tokens`, in order
  int32_t registered = 0;         // blocks of block_table made findable so far
  int32_t prefill_end = 0;        // tokens.size() when last admitted
  // A cached chain reached this position, but no snapshot did: the prefill takes one
  // here, so the next request that shares the chain hits (0: none).
  int32_t branch_point = 0;
  bool on_grid = true;            // every prompt chunk so far kept to the snapshot grid
  int32_t restore = -1;           // snapshot to restore before the next step (pinned)
  int32_t writing = -1;           // snapshot the planned step writes, published by Apply
  int32_t writing_pos = 0;
  int32_t trailing = -1;          // snapshot taken while decoding, published at the end
  int32_t trailing_pos = 0;
  int32_t trailing_planned = 0;   // position the planned step's trailing checkpoint is at
};

Scheduler::Scheduler(const SchedulerOptions& options, const LanguageModel* model,
                     const KvCacheShape& kv_shape, const StateCacheShape& state_shape)
    : options_(options),
      model_(model),
      kv_shape_(kv_shape),
      allocator_(kv_shape.num_blocks, kv_shape.block_size, options.enable_prefix_caching),
      state_shape_(state_shape),
      state_slots_(state_shape.num_layers > 0
                       ? state_shape.num_slots - (options.enable_prefix_caching ? options.state_snapshots : 0)
                       : 0),
      uses_state_(state_shape.num_layers > 0),
      snapshots_(state_shape.num_layers > 0 && options.enable_prefix_caching ? options.state_snapshots : 0),
      eos_ids_(model->config().eos_token_ids),
      prefill_cap_(options.max_num_batched_tokens) {
  snapshot_base_ = state_slots_.num_slots();
  snapshot_grid_ = std::lcm(kv_shape.block_size, kernels::kGatedDeltaRuleChunk);
  snapshot_interval_ = options.state_snapshot_interval > 0
                           ? (options.state_snapshot_interval + snapshot_grid_ - 1) / snapshot_grid_ * snapshot_grid_
                           : 0;
  PublishCounters();
}

int32_t Scheduler::BlocksFor(int64_t tokens) const {
  return static_cast<int32_t>((tokens + kv_shape_.block_size - 1) / kv_shape_.block_size);
}

void Scheduler::ReleaseResources(Sequence* seq, bool keep_state) {
  if (seq->restore >= 0) snapshots_.Unpin(seq->restore);
  if (seq->writing >= 0) snapshots_.Release(seq->writing);
  if (seq->trailing >= 0) {
    --trailing_in_use_;
    // The state as it stood at trailing_pos, whose blocks are all registered: the next
    // turn of a conversation re-sends exactly this prefix.
    if (keep_state && seq->trailing_pos > 0) {
      snapshots_.Publish(seq->trailing, seq->hashes[seq->trailing_pos / kv_shape_.block_size - 1]);
    } else {
      snapshots_.Release(seq->trailing);
    }
  }
  seq->restore = seq->writing = seq->trailing = -1;
  seq->trailing_pos = seq->trailing_planned = 0;
  seq->registered = 0;
  allocator_.Free(&seq->block_table);
  if (seq->state_slot >= 0) {
    state_slots_.Free(seq->state_slot);
    seq->state_slot = -1;
  }
}

Scheduler::~Scheduler() { AbortAll(absl::UnavailableError("engine shut down")); }

absl::Status Scheduler::Enqueue(GenerationRequest request, std::shared_ptr<RequestChannel> channel) {
  auto seq = std::make_unique<Sequence>();
  seq->prompt_len = static_cast<int32_t>(request.prompt.size());
  seq->tokens = request.prompt;
  seq->max_tokens = request.stopping.max_tokens > 0
                        ? request.stopping.max_tokens
                        : static_cast<int32_t>(options_.max_model_len - seq->prompt_len);
  seq->usage.prompt_tokens = seq->prompt_len;
  seq->budget = ResolveBudget(request.budget, model_->config().num_layers);
  seq->root = RootBlockHash(&seq->budget);
  seq->usage.layers_skipped = seq->budget.num_skipped_layers;
  seq->request = std::move(request);
  seq->channel = std::move(channel);
  seq->enqueued = absl::Now();
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return absl::UnavailableError("server is draining; not accepting new requests");
  if (queued_count_ >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat("request queue is full (max_queue=",
                                                     options_.max_queue, ")"));
  }
  seq->arrival = next_arrival_++;
  ++queued_count_;
  inbox_.push_back(std::move(seq));
  return absl::OkStatus();
}

void Scheduler::StartDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

bool Scheduler::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return draining_;
}

bool Scheduler::HasWork() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_count_ + running_count_ > 0;
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s;
  s.total_blocks = allocator_.num_blocks();
  s.free_blocks = free_blocks_;
  s.total_state_slots = state_slots_.num_slots();
  s.free_state_slots = free_state_slots_;
  s.running = running_count_;
  s.waiting = queued_count_;
  s.steps = steps_;
  s.preemptions = preemptions_;
  s.finished = finished_;
  s.itl_target_ms = published_itl_target_ms_;
  s.prefill_cap = published_prefill_cap_;
  s.prefix_cache_queries = published_prefix_.prefix_cache_queries;
  s.prefix_cache_hits = published_prefix_.prefix_cache_hits;
  s.cached_blocks = published_prefix_.cached_blocks;
  s.block_evictions = published_prefix_.block_evictions;
  s.state_snapshots = published_prefix_.state_snapshots;
  s.total_state_snapshots = published_prefix_.total_state_snapshots;
  s.snapshot_evictions = published_prefix_.snapshot_evictions;
  return s;
}

bool Scheduler::QueueOrder(const Sequence& a, const Sequence& b) const {
  if (a.request.priority != b.request.priority) return a.request.priority > b.request.priority;
  return a.arrival < b.arrival;
}

void Scheduler::DrainInbox() {
  std::deque<SeqPtr> incoming;
  {
    std::lock_guard<std::mutex> lock(mu_);
    incoming.swap(inbox_);
  }
  for (SeqPtr& seq : incoming) {
    auto pos = std::find_if(waiting_.begin(), waiting_.end(),
                            [&](const SeqPtr& w) { return QueueOrder(*seq, *w); });
    waiting_.insert(pos, std::move(seq));
  }
}

void Scheduler::Finish(SeqPtr seq, absl::Status status, FinishReason reason) {
  // A failed forward pass leaves the state of its sequences untrusted.
  ReleaseResources(seq.get(), status.code() != absl::StatusCode::kInternal);
  released_.push_back(seq->arrival);
  const absl::Time now = absl::Now();
  const bool scheduled = seq->first_scheduled != absl::InfinitePast();
  const bool produced = seq->first_token != absl::InfinitePast();
  seq->usage.queue_seconds = absl::ToDoubleSeconds((scheduled ? seq->first_scheduled : now) - seq->enqueued);
  seq->usage.prefill_seconds = scheduled ? absl::ToDoubleSeconds((produced ? seq->first_token : now) - seq->first_scheduled) : 0;
  seq->usage.decode_seconds = produced ? absl::ToDoubleSeconds(seq->last_token - seq->first_token) : 0;
  RequestEvent event;
  event.final = true;
  event.status = std::move(status);
  event.finish_reason = reason;
  event.usage = seq->usage;
  seq->channel->Push(std::move(event));
  std::lock_guard<std::mutex> lock(mu_);
  ++finished_;
}

void Scheduler::DropCancelledAndExpired() {
  const absl::Time now = absl::Now();
  auto verdict = [&](const Sequence& s) -> absl::Status {
    if (s.channel->cancelled()) return absl::CancelledError("request cancelled by the client");
    if (now >= s.request.deadline) {
      return absl::DeadlineExceededError(s.num_generated == 0 && s.num_computed == 0
                                             ? "deadline passed while queued"
                                             : "deadline passed while running");
    }
    return absl::OkStatus();
  };
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (absl::Status v = verdict(**it); !v.ok()) {
      SeqPtr seq = std::move(*it);
      it = waiting_.erase(it);
      {
        std::lock_guard<std::mutex> lock(mu_);
        --queued_count_;
      }
      Finish(std::move(seq), v, FinishReason::kNone);
    } else {
      ++it;
    }
  }
  for (size_t i = 0; i < running_.size();) {
    if (absl::Status v = verdict(*running_[i]); !v.ok()) {
      SeqPtr seq = std::move(running_[i]);
      running_.erase(running_.begin() + i);
      Finish(std::move(seq), v, FinishReason::kNone);
      PublishCounters();
    } else {
      ++i;
    }
  }
}

void Scheduler::Admit() {
  while (!waiting_.empty() && static_cast<int32_t>(running_.size()) < options_.max_num_seqs) {
    Sequence& next = *waiting_.front();
    // The longest cached prefix this sequence can start from (none with caching off).
    std::vector<int32_t> hit_blocks;
    int32_t snapshot = -1;
    const int32_t hit = allocator_.caching() ? LookUpPrefix(&next, &hit_blocks, &snapshot) : 0;
    // Admit only when the whole current context fits, so an admitted prompt is not
    // preempted by its own growth on the next step. Hit blocks that nobody references
    // count as available until they are taken here.
    int32_t reclaimed = 0;
    for (int32_t b : hit_blocks) reclaimed += allocator_.refcount(b) == 0 ? 1 : 0;
    const int32_t need = BlocksFor(static_cast<int64_t>(next.tokens.size()) + 1) -
                         static_cast<int32_t>(hit_blocks.size());
    if (need > allocator_.num_available() - reclaimed) break;
    if (uses_state_) {
      std::optional<int32_t> slot = state_slots_.Allocate();
      if (!slot) break;
      next.state_slot = *slot;
    }
    if (allocator_.caching()) {
      prefix_queries_ += next.tokens.size();
      prefix_hits_ += hit;
      for (int32_t b : hit_blocks) allocator_.Acquire(b);
      next.block_table = std::move(hit_blocks);
      next.registered = static_cast<int32_t>(next.block_table.size());
      next.num_computed = hit;
      next.usage.cached_tokens = std::min(hit, next.prompt_len);
      next.prefill_end = static_cast<int32_t>(next.tokens.size());
      next.on_grid = true;
      if (snapshot >= 0) {
        next.restore = snapshot;
        snapshots_.Pin(snapshot);
        snapshots_.Touch(snapshot);
      }
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    std::lock_guard<std::mutex> lock(mu_);
    --queued_count_;
    ++running_count_;
  }
}

double Scheduler::ItlTargetMs() const {
  if (options_.itl_target_ms > 0) return options_.itl_target_ms;
  if (options_.itl_target_factor <= 0 || decode_step_ms_ == 0) return 0;  // off, or none timed yet
  return std::max(kMinAutoItlTargetMs, options_.itl_target_factor * decode_step_ms_);
}

bool Scheduler::AutoItlTarget() const {
  return options_.itl_target_ms <= 0 && options_.itl_target_factor > 0;
}

bool Scheduler::NeedsProbe(int32_t decodes) const {
  // No estimate yet, none for a while (prompts kept every step busy), or one taken at a
  // very different batch size: an estimate learnt at 64 streams stayed in force, far
  // too high, once one stream decoded beside a never-ending run of long prompts.
  return AutoItlTarget() && (decode_step_ms_ == 0 || steps_since_decode_sample_ >= kProbeEvery ||
                             decodes > 2 * sampled_decodes_ || 2 * decodes < sampled_decodes_);
}

void Scheduler::OnStepTimed(absl::Duration step, int32_t decodes, int32_t prompt_tokens, bool probe) {
  const double ms = absl::ToDoubleMilliseconds(step);
  // A step whose prompt share is at most one token, or a quarter of its decodes (the
  // cap's floor), times the decodes themselves, a little high. A probe's sample replaces
  // the average (it exists because the average went stale); others blend in.
  if (AutoItlTarget() && prompt_tokens <= std::max(1, decodes / 4)) {  // at most the floor's first term
    decode_step_ms_ = (decode_step_ms_ == 0 || probe) ? ms : 0.75 * decode_step_ms_ + 0.25 * ms;
    sampled_decodes_ = decodes;
    steps_since_decode_sample_ = 0;
  } else {
    ++steps_since_decode_sample_;
  }
  const double target = ItlTargetMs();
  if (target <= 0 || prompt_tokens == 0) return;
  // AIMD on the prompt tokens allowed beside decodes: halve when a step overshoots the
  // target, grow by a quarter while steps stay under 80% of it. It never drops below one
  // token, so a prompt always advances (the fairness rule), and it only grows when
  // prompts actually used the room it gave.
  if (ms > target) {
    prefill_cap_ = std::max(1, prefill_cap_ / 2);
  } else if (ms < 0.8 * target && prompt_tokens >= prefill_cap_) {
    prefill_cap_ = std::min(options_.max_num_batched_tokens, prefill_cap_ + std::max(1, prefill_cap_ / 4));
  }
}

void Scheduler::PublishCounters() {
  std::lock_guard<std::mutex> lock(mu_);
  running_count_ = static_cast<int32_t>(running_.size());
  free_blocks_ = allocator_.num_available();
  published_prefix_.prefix_cache_queries = prefix_queries_;
  published_prefix_.prefix_cache_hits = prefix_hits_;
  published_prefix_.cached_blocks = allocator_.num_cached();
  published_prefix_.block_evictions = allocator_.evictions();
  published_prefix_.state_snapshots = snapshots_.num_published();
  published_prefix_.total_state_snapshots = snapshots_.num_snapshots();
  published_prefix_.snapshot_evictions = snapshots_.evictions();
  free_state_slots_ = state_slots_.num_free();
  published_itl_target_ms_ = ItlTargetMs();
  published_prefill_cap_ = prefill_cap_;
}

bool Scheduler::EnsureBlocks(Sequence* seq, int32_t total_tokens,
                             const absl::flat_hash_set<const Sequence*>& pinned,
                             std::vector<uint64_t>* preempted) {
  const int32_t need = BlocksFor(total_tokens) - static_cast<int32_t>(seq->block_table.size());
  if (need <= 0) return true;
  while (need > allocator_.num_available()) {
    if (!PreemptOne(seq, pinned, preempted)) return false;
  }
  return allocator_.Allocate(need, &seq->block_table);
}

bool Scheduler::PreemptOne(const Sequence* keep, const absl::flat_hash_set<const Sequence*>& pinned,
                           std::vector<uint64_t>* preempted) {
  // Victim: lowest priority, then newest arrival; never one already in this step's batch.
  int victim = -1;
  for (int i = 0; i < static_cast<int>(running_.size()); ++i) {
    const Sequence& s = *running_[i];
    if (&s == keep || s.block_table.empty() || pinned.contains(&s)) continue;
    if (victim < 0 || !QueueOrder(s, *running_[victim])) victim = i;
  }
  if (victim < 0) return false;
  SeqPtr seq = std::move(running_[victim]);
  running_.erase(running_.begin() + victim);
  ReleaseResources(seq.get());
  preempted->push_back(seq->arrival);
  seq->num_computed = 0;
  ++seq->usage.preemptions;
  auto pos = std::find_if(waiting_.begin(), waiting_.end(),
                          [&](const SeqPtr& w) { return QueueOrder(*seq, *w); });
  waiting_.insert(pos, std::move(seq));
  std::lock_guard<std::mutex> lock(mu_);
  ++queued_count_;
  --running_count_;
  ++preemptions_;
  return true;
}

StepPlan Scheduler::Schedule() {
  StepPlan plan;
  DrainInbox();
  DropCancelledAndExpired();
  Admit();

  // Decode-first ordering: sequences with exactly one token to compute come first, then
  // prompts with the fewest tokens left, so a short request is not held behind a long
  // prompt's prefill. The oldest admitted prompt is kept from starving below.
  std::stable_sort(running_.begin(), running_.end(), [](const SeqPtr& a, const SeqPtr& b) {
    const int64_t ra = static_cast<int64_t>(a->tokens.size()) - a->num_computed;
    const int64_t rb = static_cast<int64_t>(b->tokens.size()) - b->num_computed;
    if ((ra == 1) != (rb == 1)) return ra == 1;
    return ra != 1 && ra < rb;
  });
  const Sequence* oldest_prompt = nullptr;
  int32_t pending_prompts = 0;
  for (const SeqPtr& p : running_) {
    if (p->tokens.size() - p->num_computed <= 1) continue;
    ++pending_prompts;
    if (oldest_prompt == nullptr || p->arrival < oldest_prompt->arrival) oldest_prompt = p.get();
  }

  struct Chosen {
    Sequence* seq;
    int32_t count;
    bool decode;
  };
  std::vector<Chosen> chosen;
  absl::flat_hash_set<const Sequence*> pinned;
  int32_t budget = options_.max_num_batched_tokens;
  std::vector<Sequence*> order;
  for (const SeqPtr& p : running_) order.push_back(p.get());
  // With an inter-token latency target, prompt chunks that share a step with decodes are
  // capped by prefill_cap_, which OnStepTimed adapts to the measured step times.
  const bool limit_prefill = options_.itl_target_ms > 0 || AutoItlTarget();
  bool probe = false;  // this step holds prompts to the floor to time the decodes
  int32_t decodes = 0;
  int32_t prompt_tokens = 0;
  for (Sequence* seq : order) {
    if (budget <= 0) break;
    // A sequence preempted earlier in this loop is back in the queue: skip it.
    if (std::none_of(running_.begin(), running_.end(),
                     [&](const SeqPtr& p) { return p.get() == seq; })) {
      continue;
    }
    const int32_t remaining = static_cast<int32_t>(seq->tokens.size()) - seq->num_computed;
    // Fairness rule: one token of the budget stays reserved for the oldest admitted
    // prompt until it has been scheduled, whatever the shorter prompts take.
    const int32_t reserve = (oldest_prompt != nullptr && seq != oldest_prompt) ? 1 : 0;
    int32_t count = std::min(remaining, budget - (remaining > 1 ? reserve : 0));
    if (remaining > 1 && limit_prefill && decodes > 0) {
      // Floor: a token per four decodes plus one per prompt in prefill. Under load the
      // step-time target alone held prompts to a trickle: streams sat queued in prefill
      // for tens of seconds while fewer and fewer decoded. The first term keeps
      // admission flowing whenever a prompt is at most a quarter of its output; the
      // second lets a burst of requests in (each of them a user waiting too), where one
      // long prompt stays throttled. Spent fewest-remaining-first, it completes prompts.
      // A probe keeps only the first term, so that it times the decodes.
      if (prompt_tokens == 0) probe = NeedsProbe(decodes);  // decodes come first: all counted
      const int32_t min_cap = decodes / 4 + (pending_prompts > 1 && !probe ? pending_prompts : 0);
      const int32_t cap = std::max(probe ? 1 : prefill_cap_, min_cap);
      count = std::min(count, cap - prompt_tokens - reserve);
    }
    if (seq == oldest_prompt) {
      oldest_prompt = nullptr;
      count = std::max(count, std::min(remaining, std::max(budget, 0)) > 0 ? 1 : 0);
    }
    if (count <= 0) continue;
    if (remaining > 1) count = AlignPromptChunk(*seq, count);
    if (!EnsureBlocks(seq, seq->num_computed + count, pinned, &plan.preempted)) continue;
    PlanCheckpoint(seq, &count, remaining == 1);
    pinned.insert(seq);
    budget -= count;
    if (remaining == 1) {
      ++decodes;
    } else {
      prompt_tokens += count;
    }
    chosen.push_back({seq, count, remaining == 1});
  }

  // The plan borrows each chosen sequence's tokens and block table. Chosen sequences are
  // pinned, so no later allocation in the loop above preempted them or changed their table.
  plan.block_size = kv_shape_.block_size;
  plan.token_budget = options_.max_num_batched_tokens;
  plan.prefill_cap = prefill_cap_;
  plan.probe = probe;
  plan.decodes = decodes;
  plan.prompt_tokens = prompt_tokens;
  plan.sequences.reserve(chosen.size());
  for (const Chosen& c : chosen) {
    Sequence* seq = c.seq;
    ScheduledSequence& s = plan.sequences.emplace_back();
    s.id = seq->arrival;
    s.tokens = seq->tokens;
    s.num_computed = seq->num_computed;
    s.num_tokens = c.count;
    s.block_table = seq->block_table;
    s.state_slot = seq->state_slot;
    s.state_fresh = seq->num_computed == 0;
    s.decode = c.decode;
    if (seq->restore >= 0) s.restore_slot = snapshot_base_ + seq->restore;
    if (seq->writing >= 0) {
      s.checkpoint_slot = snapshot_base_ + seq->writing;
      s.checkpoint_len = seq->writing_pos - seq->num_computed;
    } else if (seq->trailing_planned > 0) {
      s.checkpoint_slot = snapshot_base_ + seq->trailing;
      s.checkpoint_len = seq->trailing_planned - seq->num_computed;
    }
    s.budget = seq->budget.empty() ? nullptr : &seq->budget;
    s.sample = seq->num_computed + c.count == static_cast<int32_t>(seq->tokens.size());
    if (s.sample) {
      s.num_generated = seq->num_generated;
      if (seq->num_generated < seq->request.stopping.min_tokens) {
        if (!seq->request.stopping.ignore_eos) s.banned = eos_ids_;
        s.banned.insert(s.banned.end(), seq->request.stopping.stop_token_ids.begin(),
                        seq->request.stopping.stop_token_ids.end());
      }
      s.sampling = &seq->request.sampling;
      s.logprobs_top_n = seq->request.logprobs_top_n;
    }
    plan.num_tokens += c.count;
  }
  // Finished by the last Apply or dropped above (cancelled, expired).
  plan.released.swap(released_);
  if (plan.empty()) PublishCounters();
  return plan;
}

void Scheduler::Apply(const StepPlan& plan, const StepOutput& output) {
  if (plan.empty()) return;
  const absl::Time step_start = output.start;
  // Every sequence of the plan is still running: nothing leaves the running set between
  // Schedule and Apply (cancellation is noticed by the next Schedule).
  std::vector<Sequence*> seqs;
  seqs.reserve(plan.sequences.size());
  for (const ScheduledSequence& s : plan.sequences) {
    auto it = std::find_if(running_.begin(), running_.end(),
                           [&](const SeqPtr& p) { return p->arrival == s.id; });
    seqs.push_back(it == running_.end() ? nullptr : it->get());
  }
  for (Sequence* seq : seqs) {
    if (seq != nullptr && seq->first_scheduled == absl::InfinitePast())
      seq->first_scheduled = step_start;
  }
  const absl::Status& status = output.status;
  const bool outputs_match = output.sequences.size() == plan.sequences.size();
  if (plan.decodes > 0) OnStepTimed(output.forward, plan.decodes, plan.prompt_tokens, plan.probe);
  StepMetrics step_metrics;
  step_metrics.tokens = plan.num_tokens;
  step_metrics.prompt_tokens = plan.prompt_tokens;
  step_metrics.decodes = plan.decodes;
  step_metrics.preemptions = static_cast<int32_t>(plan.preempted.size());
  step_metrics.read_bytes = EstimatedReadBytes(plan);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++steps_;
  }
  std::vector<std::pair<Sequence*, std::pair<absl::Status, FinishReason>>> endings;
  for (size_t si = 0; si < plan.sequences.size(); ++si) {
    const ScheduledSequence& s = plan.sequences[si];
    Sequence* seq = seqs[si];
    if (seq == nullptr) continue;
    if (!status.ok() || !outputs_match) {
      const absl::string_view why =
          !status.ok() ? status.message()
                       : absl::string_view("the step's output does not match its plan");
      endings.push_back({seq, {absl::InternalError(absl::StrCat("model forward failed: ", why)),
                               FinishReason::kNone}});
      continue;
    }
    const SequenceOutput& out = output.sequences[si];
    const int32_t past = seq->num_computed;
    seq->num_computed += s.num_tokens;
    if (allocator_.caching()) ApplyCaching(seq, s);
    const double flops = model_->DenseFlops(past, s.num_tokens);
    seq->usage.dense_flops += flops;
    if (seq->budget.empty() || !out.has_cost) {
      seq->usage.executed_flops += flops;
      step_metrics.executed_flops += flops;
    } else {
      const SequenceCost& c = out.cost;
      seq->usage.executed_flops += flops - c.saved_flops;
      step_metrics.executed_flops += flops - c.saved_flops;
      seq->usage.branches_skipped += c.branches_skipped;
      seq->usage.branches_total += c.branches_total;
      seq->usage.expert_assignments += c.expert_assignments;
      seq->usage.moe_token_layers += c.moe_token_layers;
      seq->usage.attention_heads_skipped += c.heads_skipped;
      seq->usage.attention_heads_total += c.heads_total;
    }
    if (!s.sample) continue;
    const int32_t token = out.token;
    RequestEvent event;
    seq->tokens.push_back(token);
    ++seq->num_generated;
    seq->last_token = absl::Now();
    if (seq->num_generated == 1) seq->first_token = seq->last_token;
    seq->usage.completion_tokens = seq->num_generated;
    event.tokens.push_back(token);
    if (seq->request.logprobs_top_n >= 0) event.logprobs.push_back(out.logprob);
    seq->channel->Push(std::move(event));

    const auto& stop_ids = seq->request.stopping.stop_token_ids;
    const bool is_eos = !seq->request.stopping.ignore_eos &&
                        std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end();
    const bool is_stop = std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
    if (is_eos || is_stop) {
      endings.push_back({seq, {absl::OkStatus(), FinishReason::kStopToken}});
    } else if (seq->num_generated >= seq->max_tokens ||
               static_cast<int64_t>(seq->tokens.size()) >= options_.max_model_len) {
      endings.push_back({seq, {absl::OkStatus(), FinishReason::kLength}});
    }
  }
  for (auto& [seq, ending] : endings) {
    // A named copy: clang before 16 cannot capture a structured binding.
    const Sequence* ended = seq;
    auto it = std::find_if(running_.begin(), running_.end(),
                           [&](const SeqPtr& p) { return p.get() == ended; });
    if (it == running_.end()) continue;
    SeqPtr owned = std::move(*it);
    running_.erase(it);
    Finish(std::move(owned), ending.first, ending.second);
  }
  PublishCounters();
  step_metrics.seconds = absl::ToDoubleSeconds(absl::Now() - step_start);
  if (options_.on_step) options_.on_step(step_metrics);
}

// ---- Prefix caching -------------------------------------------------------------------

bool Scheduler::StateCacheable(const Sequence& seq) {
  // GateSkip leaves a linear layer's skipped rows out of its recurrence, so positions in
  // the segment no longer line up with the state's: no snapshots under a skip_ratio.
  return seq.budget.skip_ratio == 0.f;
}

void Scheduler::HashFullBlocks(Sequence* seq) const {
  const size_t bs = static_cast<size_t>(kv_shape_.block_size);
  while (seq->hashes.size() < seq->tokens.size() / bs) {
    const size_t i = seq->hashes.size();
    const BlockHash parent = i == 0 ? seq->root : seq->hashes.back();
    seq->hashes.push_back(ChainBlockHash(parent, absl::MakeConstSpan(seq->tokens).subspan(i * bs, bs)));
  }
}

int32_t Scheduler::LookUpPrefix(Sequence* seq, std::vector<int32_t>* blocks, int32_t* snapshot) {
  HashFullBlocks(seq);
  const int32_t bs = kv_shape_.block_size;
  // At least the last token is computed: its logits give the next token. On a hybrid
  // model at least two: a one-token segment runs the recurrent form of the Gated
  // DeltaNet, where the uncached prefill's last chunk runs the chunked form, and the two
  // differ in fp32 rounding; two or more keep the cached run bit-identical.
  const int32_t min_left = uses_state_ ? 2 : 1;
  const int32_t max_blocks = (static_cast<int32_t>(seq->tokens.size()) - min_left) / bs;
  *blocks = allocator_.Match(seq->hashes, seq->tokens, max_blocks);
  seq->branch_point = 0;
  if (!uses_state_) return static_cast<int32_t>(blocks->size()) * bs;
  // A hybrid model also needs the recurrent state where the hit ends: the longest
  // matched chain, on the snapshot grid, that has a snapshot.
  const int32_t step = snapshot_grid_ / bs;
  const int32_t on_grid = static_cast<int32_t>(blocks->size()) / step * step;
  int32_t hit = 0;
  if (snapshots_.num_snapshots() > 0 && StateCacheable(*seq)) {
    for (int32_t j = on_grid; j > 0; j -= step) {
      if (std::optional<int32_t> id = snapshots_.Find(seq->hashes[j - 1])) {
        *snapshot = *id;
        hit = j;
        break;
      }
    }
    // The chain goes further than any snapshot: take one there this time.
    if (on_grid > hit) seq->branch_point = on_grid * bs;
  }
  blocks->resize(hit);
  return hit * bs;
}

int32_t Scheduler::AlignPromptChunk(const Sequence& seq, int32_t count) const {
  if (!allocator_.caching() || !uses_state_) return count;
  const int32_t end = seq.num_computed + count;
  if (end == static_cast<int32_t>(seq.tokens.size())) return count;  // the prompt's last chunk
  const int32_t aligned = end / snapshot_grid_ * snapshot_grid_;
  return aligned > seq.num_computed ? aligned - seq.num_computed : count;  // too short: off grid
}

int32_t Scheduler::NextSnapshotPoint(const Sequence& seq, int32_t after) const {
  // Where a prompt wants snapshots: every interval, at a branch point, and at the end of
  // the prefill, each on the grid. 0: none after `after`.
  const int32_t end = seq.prefill_end / snapshot_grid_ * snapshot_grid_;
  if (end <= after) return 0;
  int32_t best = end;
  if (seq.branch_point > after && seq.branch_point < best) best = seq.branch_point;
  if (snapshot_interval_ > 0) best = std::min(best, (after / snapshot_interval_ + 1) * snapshot_interval_);
  return best;
}

void Scheduler::PlanCheckpoint(Sequence* seq, int32_t* count, bool decode) {
  seq->trailing_planned = 0;
  if (!allocator_.caching() || !uses_state_ || snapshots_.num_snapshots() == 0 || !StateCacheable(*seq)) {
    return;
  }
  const int32_t bs = kv_shape_.block_size;
  const int32_t start = seq->num_computed;
  if (decode) {
    // The token at `start` ends a grid cell: keep the state after it as the sequence's
    // trailing snapshot (one per sequence, overwritten as it goes, published when the
    // sequence ends). Recurrent decode keeps no chunk grid, so any cell end will do.
    if ((start + 1) % snapshot_grid_ != 0) return;
    if (seq->trailing < 0) {
      // Trailing snapshots are held until their sequences end; at most half the pool,
      // so that decoding streams never crowd out the prompts' snapshots.
      if (2 * (trailing_in_use_ + 1) > snapshots_.num_snapshots()) return;
      std::optional<int32_t> id = snapshots_.Allocate();
      if (!id) return;
      seq->trailing = *id;
      ++trailing_in_use_;
    }
    seq->trailing_planned = start + 1;
    return;
  }
  if (!seq->on_grid) return;
  int32_t end = start + *count;
  int32_t point = NextSnapshotPoint(*seq, start);
  while (point > 0 && point <= end && snapshots_.Find(seq->hashes[point / bs - 1])) {
    point = NextSnapshotPoint(*seq, point);  // already cached
  }
  if (point > 0 && point <= end) {
    // One checkpoint per sequence and step: a chunk that would cross a second wanted
    // point ends at the first, and the next step goes on from there.
    const int32_t second = NextSnapshotPoint(*seq, point);
    if (second > 0 && second <= end) {
      *count = point - start;
      end = point;
    }
    if (std::optional<int32_t> id = snapshots_.Allocate()) {
      seq->writing = *id;
      seq->writing_pos = point;
    }
  }
  if (end != static_cast<int32_t>(seq->tokens.size()) && end % snapshot_grid_ != 0) seq->on_grid = false;
}

void Scheduler::ApplyCaching(Sequence* seq, const ScheduledSequence& s) {
  const int32_t bs = kv_shape_.block_size;
  if (s.restore_slot >= 0 && seq->restore >= 0) {
    snapshots_.Unpin(seq->restore);
    seq->restore = -1;
  }
  HashFullBlocks(seq);
  if (seq->writing >= 0) {
    snapshots_.Publish(seq->writing, seq->hashes[seq->writing_pos / bs - 1]);
    seq->writing = -1;
  }
  if (seq->trailing_planned > 0) {
    seq->trailing_pos = seq->trailing_planned;
    seq->trailing_planned = 0;
  }
  // Every block whose tokens are now all computed becomes findable.
  const int32_t full =
      std::min<int32_t>(seq->num_computed / bs, static_cast<int32_t>(seq->block_table.size()));
  for (int32_t i = seq->registered; i < full; ++i) {
    allocator_.Register(seq->block_table[i], seq->hashes[i], i == 0 ? seq->root : seq->hashes[i - 1],
                        absl::MakeConstSpan(seq->tokens).subspan(static_cast<size_t>(i) * bs, bs));
  }
  seq->registered = std::max(seq->registered, full);
}

std::string Scheduler::CheckCacheInvariants() const {
  if (std::string e = allocator_.CheckInvariants(); !e.empty()) return e;
  if (std::string e = snapshots_.CheckInvariants(); !e.empty()) return e;
  std::vector<int32_t> refs(allocator_.num_blocks(), 0);
  for (const SeqPtr& seq : running_) {
    for (int32_t b : seq->block_table) ++refs[b];
  }
  int32_t trailing = 0;
  for (const SeqPtr& seq : running_) trailing += seq->trailing >= 0 ? 1 : 0;
  if (trailing != trailing_in_use_ || 2 * trailing > snapshots_.num_snapshots()) {
    return absl::StrCat(trailing, " trailing snapshots held (counted ", trailing_in_use_, ") of ",
                        snapshots_.num_snapshots());
  }
  for (const SeqPtr& seq : waiting_) {
    if (!seq->block_table.empty() || seq->trailing >= 0 || seq->writing >= 0 || seq->restore >= 0) {
      return "a queued sequence holds blocks or snapshots";
    }
  }
  for (int32_t b = 0; b < allocator_.num_blocks(); ++b) {
    if (refs[b] != allocator_.refcount(b)) {
      return absl::StrCat("block ", b, " is in ", refs[b], " block tables but has ",
                          allocator_.refcount(b), " references");
    }
  }
  return "";
}

double Scheduler::EstimatedReadBytes(const StepPlan& plan) const {
  const double kv_bytes_per_token =
      static_cast<double>(kv_shape_.BytesPerBlock()) / kv_shape_.block_size;
  double bytes = static_cast<double>(model_->WeightBytesPerStep());
  for (const ScheduledSequence& s : plan.sequences) {
    bytes += kv_bytes_per_token * s.context_len();
    if (s.state_slot >= 0) bytes += static_cast<double>(state_shape_.BytesPerSlot());
  }
  return bytes;
}

void Scheduler::AbortAll(const absl::Status& status) {
  DrainInbox();
  while (!waiting_.empty()) {
    SeqPtr seq = std::move(waiting_.front());
    waiting_.pop_front();
    {
      std::lock_guard<std::mutex> lock(mu_);
      --queued_count_;
    }
    Finish(std::move(seq), status, FinishReason::kNone);
  }
  while (!running_.empty()) {
    SeqPtr seq = std::move(running_.back());
    running_.pop_back();
    Finish(std::move(seq), status, FinishReason::kNone);
  }
  PublishCounters();
}

}  // namespace sluice::engine
