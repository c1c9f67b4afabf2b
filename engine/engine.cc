#include "engine/engine.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/runner/model_runner.h"
#include "engine/sampling/sampler.h"
#include "engine/scheduler/step_plan.h"
#include "engine/serving_model.h"
#include "kernels/ops.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  auto engine = std::unique_ptr<Engine>(new Engine());
  engine->options_ = options;
  if (options.threads > 0) kernels::SetNumThreads(options.threads);
  SLUICE_RETURN_IF_ERROR(kernels::SetMatmulPrecision(options.matmul_precision));
  ModelLoadOptions load;
  load.quantization = options.quantization;
  load.int4_group_size = options.int4_group_size;
  load.int4_int8_parts = options.int4_int8_parts;
  load.quantize_embeddings = options.quantize_embeddings;
  SLUICE_ASSIGN_OR_RETURN(engine->model_, LoadServingModel(options.model_dir, options.device, load));
  const int64_t model_max = engine->model_->max_context();
  int64_t max_len = options.max_model_len > 0 ? options.max_model_len : model_max;
  if (max_len > model_max) {
    return absl::InvalidArgumentError(absl::StrCat("max_model_len ", max_len,
                                                   " exceeds the model's context of ", model_max));
  }
  engine->max_model_len_ = max_len;
  if (options.block_size <= 0 || options.max_num_seqs <= 0 || options.max_num_batched_tokens <= 0 ||
      options.max_queue < 0) {
    return absl::InvalidArgumentError("block_size, max_num_seqs and max_num_batched_tokens must be > 0");
  }
  if (!(options.itl_target_ms >= 0) || !(options.itl_target_factor == 0 || options.itl_target_factor >= 1) ||
      !std::isfinite(options.itl_target_ms) || !std::isfinite(options.itl_target_factor)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "itl_target_ms must be >= 0 (got ", options.itl_target_ms, ") and itl_target_factor 0 or >= 1 (got ",
        options.itl_target_factor, "): a target below a decode step would starve prompts"));
  }
  // The fairness rule (the oldest admitted prompt gets a chunk every step) needs room for
  // every running decode plus one prompt token.
  if (options.max_num_batched_tokens <= options.max_num_seqs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_num_batched_tokens (", options.max_num_batched_tokens, ") must exceed max_num_seqs (",
        options.max_num_seqs, ")"));
  }

  // The memory budget holds one recurrent-state slot per running sequence (hybrid models)
  // and, in what is left, the paged KV cache.
  StateCacheShape state_shape = engine->model_->StateShape();
  state_shape.num_slots = state_shape.num_layers > 0 ? options.max_num_seqs : 0;
  const int64_t state_bytes = static_cast<int64_t>(state_shape.BytesPerSlot()) * state_shape.num_slots;
  if (options.prefix_state_memory < 0 || options.state_snapshot_interval < 0) {
    return absl::InvalidArgumentError("prefix_state_memory and state_snapshot_interval must be >= 0");
  }
  // Prefix-cache snapshots are extra slots of the state cache, after the sequences' own.
  int32_t snapshots = 0;
  if (options.enable_prefix_caching && state_shape.num_layers > 0) {
    snapshots = static_cast<int32_t>(std::min<int64_t>(
        options.prefix_state_memory / static_cast<int64_t>(std::max<size_t>(state_shape.BytesPerSlot(), 1)),
        1 << 20));
    state_shape.num_slots += snapshots;
  }
  if (state_bytes >= options.kv_cache_memory) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "kv_cache_memory of ", options.kv_cache_memory, " bytes cannot hold the recurrent state of ",
        options.max_num_seqs, " sequences (", state_shape.BytesPerSlot(),
        " bytes each); raise --kv_cache_memory or lower --max_num_seqs"));
  }
  KvCacheShape shape = engine->model_->KvShape(options.block_size);
  shape.dtype = options.kv_cache_dtype;
  const size_t per_block = std::max<size_t>(shape.BytesPerBlock(), 1);
  shape.num_blocks = static_cast<int32_t>(
      std::min<int64_t>((options.kv_cache_memory - state_bytes) / per_block, 1 << 30));
  if (shape.num_layers == 0) {  // no attention layers: block tables are bookkeeping only
    shape.num_blocks = static_cast<int32_t>((max_len + options.block_size - 1) / options.block_size *
                                            options.max_num_seqs);
  }
  const int64_t blocks_for_one = (max_len + options.block_size - 1) / options.block_size;
  if (shape.num_blocks < blocks_for_one) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "kv_cache_memory of ", options.kv_cache_memory, " bytes holds ", shape.num_blocks,
        " blocks of ", per_block, " bytes, but one sequence of max_model_len ", max_len, " needs ",
        blocks_for_one, " blocks (", blocks_for_one * per_block,
        " bytes); raise --kv_cache_memory or lower --max_model_len"));
  }
  SLUICE_ASSIGN_OR_RETURN(PagedKvCache cache, PagedKvCache::Create(shape, options.device));
  engine->kv_cache_shape_ = shape;
  engine->state_cache_shape_ = state_shape;
  SLUICE_ASSIGN_OR_RETURN(RecurrentStateCache state, RecurrentStateCache::Create(state_shape, options.device));

  SchedulerOptions so;
  so.max_num_seqs = options.max_num_seqs;
  so.max_num_batched_tokens = options.max_num_batched_tokens;
  so.max_queue = options.max_queue;
  so.max_model_len = max_len;
  so.block_size = options.block_size;
  so.itl_target_ms = options.itl_target_ms;
  so.itl_target_factor = options.itl_target_factor;
  so.on_step = options.on_step;
  so.enable_prefix_caching = options.enable_prefix_caching;
  so.state_snapshots = snapshots;
  so.state_snapshot_interval = options.state_snapshot_interval;
  // The scheduler sees only the caches' shapes (its block and slot pools); the runner owns
  // the caches themselves and is the only one that runs the model.
  engine->scheduler_ =
      std::make_unique<Scheduler>(so, engine->model_.get(), cache.shape(), state.shape());
  engine->runner_ =
      std::make_unique<ModelRunner>(engine->model_.get(), std::move(cache), std::move(state));
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::~Engine() { Shutdown(); }

absl::Status Engine::Submit(GenerationRequest request, std::shared_ptr<RequestChannel> channel) {
  SLUICE_RETURN_IF_ERROR(Validate(request));
  SLUICE_RETURN_IF_ERROR(scheduler_->Enqueue(std::move(request), std::move(channel)));
  cv_.notify_one();
  return absl::OkStatus();
}

absl::Status Engine::Validate(const GenerationRequest& request) const {
  const ModelConfig& c = model_->config();
  if (request.prompt.empty()) return absl::InvalidArgumentError("input: the prompt is empty");
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("input.tokens: token id ", id,
                                                     " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  if (prompt_len >= max_model_len_) {
    return absl::InvalidArgumentError(absl::StrCat("input: the prompt has ", prompt_len,
                                                   " tokens but the model's context is ",
                                                   max_model_len_, " tokens"));
  }
  const auto& stopping = request.stopping;
  if (stopping.max_tokens < 0 || stopping.min_tokens < 0) {
    return absl::InvalidArgumentError("stopping: max_tokens and min_tokens must be >= 0");
  }
  if (prompt_len + stopping.max_tokens > max_model_len_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stopping.max_tokens: prompt (", prompt_len, " tokens) + max_tokens (", stopping.max_tokens,
        ") exceeds the model's context of ", max_model_len_, " tokens"));
  }
  if (stopping.max_tokens > 0 && stopping.min_tokens > stopping.max_tokens) {
    return absl::InvalidArgumentError("stopping.min_tokens must not exceed max_tokens");
  }
  for (int32_t id : stopping.stop_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stopping.stop_token_ids: ", id,
                                                     " is outside the vocabulary"));
    }
  }
  SLUICE_RETURN_IF_ERROR(ValidateSamplingOptions(request.sampling));
  if (request.logprobs_top_n > 20) {
    return absl::InvalidArgumentError("logprobs.top_n must be at most 20");
  }
  SLUICE_RETURN_IF_ERROR(model_->ValidateBudget(request.budget));
  if (absl::Now() >= request.deadline) {
    return absl::DeadlineExceededError("deadline passed before the request was queued");
  }
  return absl::OkStatus();
}

void Engine::StartDrain() { scheduler_->StartDrain(); }

bool Engine::WaitIdle(absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (scheduler_->HasWork()) {
    if (absl::Now() >= end) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

void Engine::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (scheduler_) scheduler_->AbortAll(absl::UnavailableError("the server shut down before this request finished"));
}

void Engine::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Wake on new work or shutdown; the timeout bounds how late a queued request's
      // deadline or cancel is noticed if a notify is ever missed.
      cv_.wait_for(lock, std::chrono::milliseconds(50),
                   [&] { return stop_ || scheduler_->HasWork(); });
      if (stop_) return;
    }
    while (scheduler_->HasWork()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) return;
      }
      // One step in three parts (vLLM v1's EngineCore.step). A forward error comes back
      // in the output, and Apply ends that step's requests with it.
      const StepPlan plan = scheduler_->Schedule();
      const StepOutput output = runner_->Execute(plan);
      scheduler_->Apply(plan, output);
    }
  }
}

}  // namespace sluice::engine
