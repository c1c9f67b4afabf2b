// The engine as a library: load a model, then submit requests from any thread and read
// their results from per-request channels. One engine thread owns the model and runs
// the steps: the scheduler plans each, the model runner executes it, the scheduler
// applies the output. server/ is one user of this; tests and benchmarks are others.
#ifndef SLUICE_ENGINE_ENGINE_H_
#define SLUICE_ENGINE_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "engine/model/causal_lm.h"
#include "engine/request.h"
#include "engine/scheduler/scheduler.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace sluice::engine {

class ModelRunner;  // engine/runner/model_runner.h

struct EngineOptions {
  std::string model_dir;
  kernels::Device device = kernels::Device::kCpu;
  int32_t threads = 0;  // 0: OpenMP's default
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 2048;
  int32_t max_queue = 1024;
  int64_t max_model_len = 0;  // 0: the model's max_position_embeddings
  int64_t kv_cache_memory = 512ll << 20;
  // What the KV cache stores K and V as: f32, bf16 or f8_e4m3 (engine/cache/kv_cache.h).
  // f32 here, the library default (exact against transformers); sluiced serves bf16.
  kernels::DType kv_cache_dtype = kernels::DType::kF32;
  // Arithmetic of bf16-weight matmuls (kernels/ops.h): exact f32 or faster bf16.
  kernels::MatmulPrecision matmul_precision = kernels::MatmulPrecision::kF32;
  // Load-time weight quantization (ModelLoadOptions, engine/model/causal_lm.h).
  kernels::WeightQuantization quantization = kernels::WeightQuantization::kNone;
  int64_t int4_group_size = 128;
  uint32_t int4_int8_parts = 0;  // kernels::LinearPart bits an int4 load keeps at int8
  bool quantize_embeddings = true;  // with a quantization: the embedding and LM head too
  int32_t block_size = 16;
  // Prefix caching (engine/cache/prefix_cache.h, SchedulerOptions): full KV blocks shared
  // by content, and on hybrid models recurrent-state snapshots in a pool of their own of
  // prefix_state_memory bytes (beside kv_cache_memory), one every
  // state_snapshot_interval prompt tokens besides those taken at prefill ends, branch
  // points and sequence ends.
  bool enable_prefix_caching = true;
  int64_t prefix_state_memory = 256ll << 20;
  int32_t state_snapshot_interval = 256;
  double itl_target_ms = 0;        // see SchedulerOptions::itl_target_ms
  double itl_target_factor = 1.3;  // see SchedulerOptions::itl_target_factor
  StepObserver on_step;            // see SchedulerOptions::on_step
};

struct ModelSummary {
  const ModelConfig* config;
  int64_t max_model_len;
  uint64_t total_parameters;
  uint64_t active_parameters;
};

class Engine {
 public:
  // Loads the model, sizes the KV cache and starts the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  ~Engine();

  // Validates and queues a request. On error nothing was queued. On success every
  // request gets exactly one final event on its channel.
  absl::Status Submit(GenerationRequest request, std::shared_ptr<RequestChannel> channel);
  // What Submit checks before queueing: ids in the vocabulary, the context limit,
  // stopping, sampling, logprobs and the budget against this model; the deadline.
  absl::Status Validate(const GenerationRequest& request) const;

  // Stop taking new requests; running and queued ones finish.
  void StartDrain();
  // Waits until nothing is queued or running, or the timeout passes. True when idle.
  bool WaitIdle(absl::Duration timeout);
  // Stops the engine thread; any request still pending ends with UNAVAILABLE.
  void Shutdown();

  const CausalLm& model() const { return *model_; }
  int64_t max_model_len() const { return max_model_len_; }
  // The KV cache as sized from kv_cache_memory: dtype, blocks, bytes per block.
  const KvCacheShape& kv_cache_shape() const { return kv_cache_shape_; }
  // The recurrent-state cache (sequences' slots and prefix-cache snapshots).
  const StateCacheShape& state_cache_shape() const { return state_cache_shape_; }
  bool prefix_caching() const { return options_.enable_prefix_caching; }
  SchedulerStats Stats() const { return scheduler_->Stats(); }

 private:
  Engine() = default;
  void Loop();

  EngineOptions options_;
  std::unique_ptr<CausalLm> model_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ModelRunner> runner_;  // engine thread only
  int64_t max_model_len_ = 0;
  KvCacheShape kv_cache_shape_;
  StateCacheShape state_cache_shape_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_ENGINE_H_
