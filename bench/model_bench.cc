// Model forward speed through the engine library (no gRPC): prefill tokens/s for one
// prompt, decode tokens/s at a batch size and context, bytes read per decode step, and
// the fraction of the machine's measured read bandwidth that decode reaches. A MoE step
// is charged every distinct expert its batch routes to (read from the per-layer expert
// token counters between steps), not k experts per layer.
//   sluice-bench-model --model DIR [--batch 1] [--context 512] [--decode_tokens 32]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <random>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/bandwidth.h"
#include "engine/cache/kv_cache.h"
#include "engine/model/causal_lm.h"
#include "engine/serving_model.h"
#include "kernels/ops.h"

ABSL_FLAG(std::string, model, "", "Checkpoint directory");
ABSL_FLAG(int32_t, batch, 1, "Sequences decoding together");
ABSL_FLAG(int32_t, context, 512, "Prompt length before decoding (also the prefill figure)");
ABSL_FLAG(int32_t, decode_tokens, 32, "Decode steps to time");
ABSL_FLAG(int32_t, threads, 0, "Threads (0: all cores)");
ABSL_FLAG(std::string, matmul_precision, "f32", "f32 or bf16 (see kernels/ops.h)");
ABSL_FLAG(std::string, quantization, "none", "Weights quantized at load: none, int8 or int4 (as sluiced)");
ABSL_FLAG(int32_t, int4_group_size, 128, "With --quantization int4: inputs per group (32, 64 or 128)");
ABSL_FLAG(std::string, int4_int8_parts, "", "With --quantization int4: projections kept at int8 (lm_head, delta_net_in, attention_in; as sluiced)");
ABSL_FLAG(bool, quantize_embeddings, true, "With --quantization: the embedding and LM head too");
ABSL_FLAG(std::string, kv_cache_dtype, "f32", "KV cache dtype: f32, bf16 or fp8 (sluiced serves bf16)");

namespace {

using sluice::engine::CausalLm;
using sluice::engine::ForwardBatch;
using sluice::engine::PagedKvCache;

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_threads) > 0) sluice::kernels::SetNumThreads(absl::GetFlag(FLAGS_threads));
  const int threads = sluice::kernels::NumThreads();
  if (auto s = sluice::kernels::SetMatmulPrecision(absl::GetFlag(FLAGS_matmul_precision) == "bf16"
                                                      ? sluice::kernels::MatmulPrecision::kBf16
                                                      : sluice::kernels::MatmulPrecision::kF32);
      !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  const int32_t batch = absl::GetFlag(FLAGS_batch);
  const int32_t context = absl::GetFlag(FLAGS_context);
  const int32_t steps = absl::GetFlag(FLAGS_decode_tokens);

  const auto load_start = std::chrono::steady_clock::now();
  sluice::engine::ModelLoadOptions load_options;
  auto quantization = sluice::kernels::ParseWeightQuantization(absl::GetFlag(FLAGS_quantization));
  if (!quantization.ok()) {
    std::cerr << "--quantization: " << quantization.status() << "\n";
    return 1;
  }
  load_options.quantization = *quantization;
  load_options.quantize_embeddings = absl::GetFlag(FLAGS_quantize_embeddings);
  {
    auto parts = sluice::kernels::ParseLinearParts(absl::GetFlag(FLAGS_int4_int8_parts));
    if (!parts.ok()) {
      std::cerr << "--int4_int8_parts: " << parts.status() << "\n";
      return 1;
    }
    load_options.int4_int8_parts = *parts;
  }
  load_options.int4_group_size = absl::GetFlag(FLAGS_int4_group_size);
  auto model = sluice::engine::LoadServingModel(absl::GetFlag(FLAGS_model), sluice::kernels::Device::kCpu, load_options);
  if (!model.ok()) {
    std::cerr << "cannot load: " << model.status() << "\n";
    return 1;
  }
  const double load_s = Seconds(load_start);
  const auto& c = (*model)->config();
  constexpr int32_t kBlock = 16;
  auto shape = (*model)->KvShape(kBlock);
  auto kv_dtype = sluice::engine::ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype));
  if (!kv_dtype.ok()) {
    std::cerr << "--kv_cache_dtype: " << kv_dtype.status() << "\n";
    return 1;
  }
  shape.dtype = *kv_dtype;
  const int32_t blocks_per_seq = (context + steps + kBlock) / kBlock;
  shape.num_blocks = blocks_per_seq * batch;
  auto cache = PagedKvCache::Create(shape, sluice::kernels::Device::kCpu);
  if (!cache.ok()) {
    std::cerr << cache.status() << "\n";
    return 1;
  }
  auto state_shape = (*model)->StateShape();
  state_shape.num_slots = batch;
  auto state = sluice::engine::RecurrentStateCache::Create(state_shape, sluice::kernels::Device::kCpu);
  if (!state.ok()) {
    std::cerr << state.status() << "\n";
    return 1;
  }
  std::vector<std::vector<int32_t>> tables(batch);
  for (int32_t s = 0; s < batch; ++s)
    for (int32_t b = 0; b < blocks_per_seq; ++b) tables[s].push_back(s * blocks_per_seq + b);

  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(c.vocab_size) - 1);
  std::vector<float> logits;
  auto add_tokens = [&](ForwardBatch& fb, int32_t s, int32_t past, int32_t n) {
    const int32_t start = fb.num_tokens();
    for (int32_t i = 0; i < n; ++i) {
      const int32_t pos = past + i;
      fb.token_ids.push_back(token(rng));
      fb.positions.push_back(pos);
      fb.slot_mapping.push_back(tables[s][pos / kBlock] * kBlock + pos % kBlock);
    }
    fb.sequences.push_back({start, n, past + n, tables[s].data()});
    fb.state_slots.push_back(s);
    fb.state_fresh.push_back(past == 0 ? 1 : 0);
    fb.logit_rows.push_back(start + n - 1);
  };

  const double bandwidth_before = sluice::bench::MeasureReadBandwidth(threads);
  // Prefill: each sequence's prompt, one sequence per forward (the prefill figure is
  // for a single prompt of `context` tokens).
  double prefill_s = 0;
  for (int32_t s = 0; s < batch; ++s) {
    ForwardBatch fb;
    add_tokens(fb, s, 0, context);
    const auto t0 = std::chrono::steady_clock::now();
    if (auto st = (*model)->Forward(fb, &*cache, &*state, &logits); !st.ok()) {
      std::cerr << st << "\n";
      return 1;
    }
    if (s == 0) prefill_s = Seconds(t0);
  }
  // Decode: all sequences one token per step. Between steps (off the clock) the
  // per-layer expert token counters tell which experts each step routed to: a decode step
  // reads every distinct expert its batch routes to, once, not k per layer.
  auto expert_counts = (*model)->ExpertTokenCounts();
  double distinct_experts = 0;  // summed over steps and MoE layers
  double decode_s = 0;
  std::vector<double> step_times;  // the machine may be shared: min and median say more than the mean
  for (int32_t step = 0; step < steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    ForwardBatch fb;
    for (int32_t s = 0; s < batch; ++s) add_tokens(fb, s, context + step, 1);
    if (auto st = (*model)->Forward(fb, &*cache, &*state, &logits); !st.ok()) {
      std::cerr << st << "\n";
      return 1;
    }
    step_times.push_back(Seconds(t0));
    decode_s += step_times.back();
    auto counts = (*model)->ExpertTokenCounts();
    for (size_t l = 0; l < counts.size(); ++l) {
      for (size_t e = 0; e < counts[l].second.size(); ++e) {
        distinct_experts += counts[l].second[e] != expert_counts[l].second[e] ? 1 : 0;
      }
    }
    expert_counts = std::move(counts);
  }
  const double step_s = decode_s / steps;
  const double decode_tps = batch * steps / decode_s;
  // Bytes one decode step reads: the weights once, plus each sequence's KV (K and V in
  // the cache's dtype over its context, every attention layer).
  const double kv_bytes = static_cast<double>(batch) * (context + steps / 2.0) *
                          static_cast<double>(shape.BytesPerBlock()) / kBlock;
  // Recurrent state of the linear-attention layers: read and written once per step.
  const double state_bytes = 2.0 * batch * static_cast<double>((*model)->StateShape().BytesPerSlot());
  // WeightBytesPerToken counts k experts per MoE layer (one token's read); replace those
  // with the distinct experts the steps actually routed to, at their packed size (bf16,
  // f32, or the --quantization width).
  const int64_t moe_layers = static_cast<int64_t>(expert_counts.size());
  const double expert_bytes = static_cast<double>((*model)->ExpertWeightBytes());
  const double per_token_weights = static_cast<double>((*model)->WeightBytesPerToken());
  const double distinct_per_layer = moe_layers > 0 ? distinct_experts / steps / moe_layers : 0;
  const double weight_bytes = per_token_weights - moe_layers * c.moe.experts_per_token * expert_bytes +
                              moe_layers * distinct_per_layer * expert_bytes;
  const double step_bytes = weight_bytes + kv_bytes + state_bytes;
  // The ceiling is measured three times in this run (the machine's bandwidth drifts
  // with its neighbours) and the median is used.
  std::vector<double> samples = {bandwidth_before, sluice::bench::MeasureReadBandwidth(threads),
                                 sluice::bench::MeasureReadBandwidth(threads)};
  std::sort(samples.begin(), samples.end());
  const double bandwidth = samples[1];
  std::printf("model            %s (%s), %.3f B params, weights %s\n", absl::GetFlag(FLAGS_model).c_str(),
              c.model_type.c_str(), c.TotalParameters() / 1e9, c.weight_dtype.c_str());
  std::printf("weight format    %s\n", (*model)->weight_format().c_str());
  std::printf("threads          %d, matmul precision %s, KV cache %s\n", threads,
              absl::GetFlag(FLAGS_matmul_precision).c_str(),
              std::string(sluice::engine::KvCacheDtypeName(shape.dtype)).c_str());
  std::printf("load             %.2f s\n", load_s);
  std::printf("prefill          %d tokens in %.3f s = %.1f tokens/s\n", context, prefill_s, context / prefill_s);
  std::printf("decode           batch %d, context %d: %.2f ms/step, %.1f tokens/s\n", batch, context,
              step_s * 1e3, decode_tps);
  std::sort(step_times.begin(), step_times.end());
  if (!step_times.empty()) std::printf("step times       min %.2f ms, median %.2f ms, max %.2f ms (min: %.1f %% of the ceiling)\n",
              step_times.front() * 1e3, step_times[step_times.size() / 2] * 1e3, step_times.back() * 1e3,
              100.0 * step_bytes / step_times.front() / bandwidth);
  std::printf("bytes/step       %.1f MB (weights %.1f MB + KV %.1f MB + state %.1f MB)\n", step_bytes / 1e6,
              weight_bytes / 1e6, kv_bytes / 1e6, state_bytes / 1e6);
  if (moe_layers > 0) {
    std::printf("experts/step     %.1f distinct of %lld per MoE layer (k = %lld), %.2f MB each; "
                "k-per-token weights would be %.1f MB\n",
                distinct_per_layer, static_cast<long long>(c.moe.num_experts),
                static_cast<long long>(c.moe.experts_per_token), expert_bytes / 1e6, per_token_weights / 1e6);
  }
  std::printf("read bandwidth   %.1f GB/s (median of %.1f / %.1f / %.1f, %d threads)\n", bandwidth / 1e9,
              samples[0] / 1e9, samples[1] / 1e9, samples[2] / 1e9, threads);
  std::printf("bandwidth frac   %.1f %% of the ceiling\n", 100.0 * step_bytes / step_s / bandwidth);
  return 0;
}
