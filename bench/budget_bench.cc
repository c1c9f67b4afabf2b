// Compute-budget speed and quality through the engine library (no gRPC). For each budget
// setting: prefill tokens/s of one prompt, decode tokens/s at batch 1 after that prompt,
// the executed/dense FLOPs ratio, and the mean KL divergence of the next-token
// distribution from the dense one over a fixed prompt set (every position).
//   sluice-bench-budget --model DIR [--skip_ratios 0,0.25,0.5] [--experts 4,2,1]
//                       [--context 512] [--decode_tokens 16] [--threads 2]
// Weights of the synthetic checkpoints are random, so the KL figures describe a random
// model, not a trained one; the program says so when the directory name says synthetic.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/cache/kv_cache.h"
#include "engine/model/causal_lm.h"
#include "engine/serving_model.h"
#include "kernels/ops.h"

ABSL_FLAG(std::string, model, "", "Checkpoint directory");
ABSL_FLAG(std::string, skip_ratios, "", "Comma-separated GateSkip ratios to run (model with gates)");
ABSL_FLAG(std::string, experts, "", "Comma-separated experts_per_token values (MoE model)");
ABSL_FLAG(int32_t, context, 512, "Prompt length (the prefill figure and the decode context)");
ABSL_FLAG(int32_t, decode_tokens, 16, "Decode steps to time");
ABSL_FLAG(int32_t, repeats, 3, "Timed rounds over all settings (each setting's best is reported)");
ABSL_FLAG(int32_t, kl_prompts, 4, "Prompts in the KL set");
ABSL_FLAG(int32_t, kl_length, 64, "Tokens per KL prompt");
ABSL_FLAG(int32_t, threads, 0, "Threads (0: all cores)");
ABSL_FLAG(std::string, quantization, "none", "Weights quantized at load: none, int8 or int4 (as sluiced)");

namespace {

using sluice::engine::CausalLm;
using sluice::engine::ComputeBudget;
using sluice::engine::ForwardBatch;
using sluice::engine::PagedKvCache;
using sluice::engine::RecurrentStateCache;
using sluice::engine::SequenceBudget;
using sluice::engine::SequenceCost;

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct Caches {
  PagedKvCache kv;
  RecurrentStateCache state;
};

Caches MakeCaches(const CausalLm& model, int32_t tokens) {
  auto shape = model.KvShape(16);
  shape.num_blocks = (tokens + 15) / 16 + 1;
  auto kv = PagedKvCache::Create(shape, sluice::kernels::Device::kCpu);
  auto state_shape = model.StateShape();
  state_shape.num_slots = 1;
  auto state = RecurrentStateCache::Create(state_shape, sluice::kernels::Device::kCpu);
  if (!kv.ok() || !state.ok()) {
    std::fprintf(stderr, "cache allocation failed\n");
    std::exit(1);
  }
  return {*std::move(kv), *std::move(state)};
}

// One sequence, tokens [begin, end) of ids; logits for every row when all_logits.
absl::Status Step(CausalLm& model, Caches& caches, const std::vector<int32_t>& ids,
                  const std::vector<int32_t>& table, int32_t begin, int32_t end,
                  const SequenceBudget* budget, bool all_logits, std::vector<float>* logits,
                  SequenceCost* cost) {
  ForwardBatch batch;
  for (int32_t i = begin; i < end; ++i) {
    batch.token_ids.push_back(ids[i]);
    batch.positions.push_back(i);
    batch.slot_mapping.push_back(table[i / 16] * 16 + i % 16);
    if (all_logits) batch.logit_rows.push_back(i - begin);
  }
  if (!all_logits) batch.logit_rows.push_back(end - begin - 1);
  batch.sequences.push_back({0, end - begin, end, table.data()});
  batch.state_slots.push_back(0);
  batch.state_fresh.push_back(begin == 0 ? 1 : 0);
  batch.budgets.push_back(budget);
  std::vector<SequenceCost> costs;
  absl::Status s = model.ForwardWithCosts(batch, &caches.kv, &caches.state, logits, &costs);
  if (cost != nullptr && !costs.empty()) *cost = costs[0];
  return s;
}

std::vector<int32_t> RandomIds(int32_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = dist(rng);
  return ids;
}

std::vector<double> LogSoftmax(const float* row, int64_t n) {
  double max = row[0];
  for (int64_t i = 1; i < n; ++i) max = std::max(max, static_cast<double>(row[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(row[i] - max);
  const double log_sum = std::log(sum) + max;
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = row[i] - log_sum;
  return out;
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_threads) > 0) sluice::kernels::SetNumThreads(absl::GetFlag(FLAGS_threads));
  const std::string dir = absl::GetFlag(FLAGS_model);
  const auto load_start = std::chrono::steady_clock::now();
  auto quantization = sluice::kernels::ParseWeightQuantization(absl::GetFlag(FLAGS_quantization));
  Check(quantization.status());
  sluice::engine::ModelLoadOptions load_options;
  load_options.quantization = *quantization;
  auto loaded = sluice::engine::LoadServingModel(dir, sluice::kernels::Device::kCpu, load_options);
  Check(loaded.status());
  CausalLm& model = **loaded;
  const double load_s = Seconds(load_start);
  const int64_t vocab = model.config().vocab_size;
  const int32_t context = absl::GetFlag(FLAGS_context);
  const int32_t decode = absl::GetFlag(FLAGS_decode_tokens);
  std::printf("model %s (%s), %d threads, load %.1f s%s\n", dir.c_str(), model.config().model_type.c_str(),
              sluice::kernels::NumThreads(), load_s,
              model.has_residual_gates() ? (", GateSkip calibration: " + model.calibration_source()).c_str() : "");
  const bool synthetic = dir.find("synthetic") != std::string::npos;

  std::vector<std::pair<std::string, ComputeBudget>> settings;
  for (absl::string_view v : absl::StrSplit(absl::GetFlag(FLAGS_skip_ratios), ',', absl::SkipEmpty())) {
    float r = 0;
    if (!absl::SimpleAtof(v, &r)) return 2;
    ComputeBudget b;
    b.skip_ratio = r;
    settings.push_back({"skip_ratio=" + std::string(v), b});
  }
  for (absl::string_view v : absl::StrSplit(absl::GetFlag(FLAGS_experts), ',', absl::SkipEmpty())) {
    int32_t k = 0;
    if (!absl::SimpleAtoi(v, &k)) return 2;
    ComputeBudget b;
    b.experts_per_token = k;
    settings.push_back({"experts_per_token=" + std::string(v), b});
  }
  if (settings.empty()) settings.push_back({"dense", ComputeBudget{}});

  const std::vector<int32_t> prompt = RandomIds(context + decode, vocab, 1);
  std::vector<int32_t> table;
  for (int32_t b = 0; b < (context + decode + 15) / 16 + 1; ++b) table.push_back(b);
  // KL set: dense reference logits at every position.
  std::vector<std::vector<int32_t>> kl_prompts;
  std::vector<std::vector<float>> dense_logits;
  for (int32_t p = 0; p < absl::GetFlag(FLAGS_kl_prompts); ++p) {
    kl_prompts.push_back(RandomIds(absl::GetFlag(FLAGS_kl_length), vocab, 100 + p));
    Caches c = MakeCaches(model, absl::GetFlag(FLAGS_kl_length));
    std::vector<float> logits;
    Check(Step(model, c, kl_prompts.back(), table, 0, absl::GetFlag(FLAGS_kl_length), nullptr, true, &logits, nullptr));
    dense_logits.push_back(std::move(logits));
  }

  // Timings: the settings take turns, round after round, and each reports its best
  // round, so a burst of load from other processes on a shared machine hits every
  // setting alike instead of one.
  struct Result {
    SequenceBudget resolved;
    double prefill = 1e30, decode = 1e30;
    SequenceCost cost;
  };
  std::vector<Result> results(settings.size());
  for (size_t i = 0; i < settings.size(); ++i) {
    Check(model.ValidateBudget(settings[i].second));
    results[i].resolved = sluice::engine::ResolveBudget(settings[i].second, model.config().num_layers);
  }
  auto budget_of = [&](size_t i) -> const SequenceBudget* {
    return results[i].resolved.empty() ? nullptr : &results[i].resolved;
  };
  for (int32_t round = 0; round < absl::GetFlag(FLAGS_repeats); ++round) {
    for (size_t i = 0; i < settings.size(); ++i) {
      Caches c = MakeCaches(model, context + decode);
      std::vector<float> logits;
      auto start = std::chrono::steady_clock::now();
      Check(Step(model, c, prompt, table, 0, context, budget_of(i), false, &logits, &results[i].cost));
      results[i].prefill = std::min(results[i].prefill, Seconds(start));
      start = std::chrono::steady_clock::now();
      for (int32_t t = context; t < context + decode; ++t) {
        Check(Step(model, c, prompt, table, t, t + 1, budget_of(i), false, &logits, nullptr));
      }
      results[i].decode = std::min(results[i].decode, Seconds(start));
    }
  }
  std::printf("%-22s %12s %12s %10s %12s %s\n", "budget", "prefill t/s", "decode t/s", "exec/dense",
              "branch skip", synthetic ? "KL vs dense (synthetic random-weight model)" : "KL vs dense");
  for (size_t i = 0; i < settings.size(); ++i) {
    double kl = 0;
    int64_t positions = 0;
    for (size_t p = 0; p < kl_prompts.size(); ++p) {
      const int32_t n = static_cast<int32_t>(kl_prompts[p].size());
      Caches c = MakeCaches(model, n);
      std::vector<float> logits;
      Check(Step(model, c, kl_prompts[p], table, 0, n, budget_of(i), true, &logits, nullptr));
      for (int32_t t = 0; t < n; ++t) {
        auto lp = LogSoftmax(dense_logits[p].data() + t * vocab, vocab);
        auto lq = LogSoftmax(logits.data() + t * vocab, vocab);
        double sum = 0;
        for (int64_t v = 0; v < vocab; ++v) sum += std::exp(lp[v]) * (lp[v] - lq[v]);
        kl += sum;
        ++positions;
      }
    }
    const SequenceCost& cost = results[i].cost;
    const double dense = model.DenseFlops(0, context);
    const double skip = cost.branches_total == 0 ? 0.0 : static_cast<double>(cost.branches_skipped) / cost.branches_total;
    std::printf("%-22s %12.1f %12.2f %10.3f %12.3f %.4f nats\n", settings[i].first.c_str(),
                context / results[i].prefill, decode / results[i].decode,
                results[i].resolved.empty() ? 1.0 : (dense - cost.saved_flops) / dense, skip,
                positions ? kl / positions : 0.0);
    std::fflush(stdout);
  }
  return 0;
}
