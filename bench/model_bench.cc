// Model forward speed through the engine library (no gRPC): prefill tokens/s for one
// prompt, decode tokens/s at a batch size and context, bytes read per decode step, and
// the fraction of the machine's measured read bandwidth that decode reaches.
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
#include "kernels/ops.h"

ABSL_FLAG(std::string, model, "", "Checkpoint directory");
ABSL_FLAG(int32_t, batch, 1, "Sequences decoding together");
ABSL_FLAG(int32_t, context, 512, "Prompt length before decoding (also the prefill figure)");
ABSL_FLAG(int32_t, decode_tokens, 32, "Decode steps to time");
ABSL_FLAG(int32_t, threads, 0, "Threads (0: all cores)");
ABSL_FLAG(std::string, matmul_precision, "f32", "f32 or bf16 (see kernels/ops.h)");

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
  auto model = CausalLm::Load(absl::GetFlag(FLAGS_model), sluice::kernels::Device::kCpu);
  if (!model.ok()) {
    std::cerr << "cannot load: " << model.status() << "\n";
    return 1;
  }
  const double load_s = Seconds(load_start);
  const auto& c = (*model)->config();
  constexpr int32_t kBlock = 16;
  auto shape = (*model)->KvShape(kBlock);
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
  // Decode: all sequences one token per step.
  const auto t0 = std::chrono::steady_clock::now();
  for (int32_t step = 0; step < steps; ++step) {
    ForwardBatch fb;
    for (int32_t s = 0; s < batch; ++s) add_tokens(fb, s, context + step, 1);
    if (auto st = (*model)->Forward(fb, &*cache, &*state, &logits); !st.ok()) {
      std::cerr << st << "\n";
      return 1;
    }
  }
  const double decode_s = Seconds(t0);
  const double step_s = decode_s / steps;
  const double decode_tps = batch * steps / decode_s;
  // Bytes one decode step reads: the weights once, plus each sequence's KV (f32 K and V
  // over its context, every layer).
  const double kv_bytes = static_cast<double>(batch) * (context + steps / 2.0) * 2 * c.num_layers *
                          c.num_key_value_heads * c.head_dim * 4;
  // Recurrent state of the linear-attention layers: read and written once per step.
  const double state_bytes = 2.0 * batch * static_cast<double>((*model)->StateShape().BytesPerSlot());
  const double step_bytes = static_cast<double>((*model)->WeightBytesPerToken()) + kv_bytes + state_bytes;
  // The ceiling is measured three times in this run (the machine's bandwidth drifts
  // with its neighbours) and the median is used.
  std::vector<double> samples = {bandwidth_before, sluice::bench::MeasureReadBandwidth(threads),
                                 sluice::bench::MeasureReadBandwidth(threads)};
  std::sort(samples.begin(), samples.end());
  const double bandwidth = samples[1];
  std::printf("model            %s (%s), %.3f B params, weights %s\n", absl::GetFlag(FLAGS_model).c_str(),
              c.model_type.c_str(), c.TotalParameters() / 1e9, c.weight_dtype.c_str());
  std::printf("threads          %d, matmul precision %s\n", threads, absl::GetFlag(FLAGS_matmul_precision).c_str());
  std::printf("load             %.2f s\n", load_s);
  std::printf("prefill          %d tokens in %.3f s = %.1f tokens/s\n", context, prefill_s, context / prefill_s);
  std::printf("decode           batch %d, context %d: %.2f ms/step, %.1f tokens/s\n", batch, context,
              step_s * 1e3, decode_tps);
  std::printf("bytes/step       %.1f MB (weights %.1f MB + KV %.1f MB + state %.1f MB)\n", step_bytes / 1e6,
              (*model)->WeightBytesPerToken() / 1e6, kv_bytes / 1e6, state_bytes / 1e6);
  std::printf("read bandwidth   %.1f GB/s (median of %.1f / %.1f / %.1f, %d threads)\n", bandwidth / 1e9,
              samples[0] / 1e9, samples[1] / 1e9, samples[2] / 1e9, threads);
  std::printf("bandwidth frac   %.1f %% of the ceiling\n", 100.0 * step_bytes / step_s / bandwidth);
  return 0;
}
