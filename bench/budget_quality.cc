// What each compute budget costs a trained model in quality, and what it buys in compute
// and speed, through the engine library (no gRPC). Held-out text is tokenized with the
// model's own tokenizer and cut into windows; for every budget setting:
//   - held-out perplexity (teacher-forced next-token NLL over every position but each
//     window's last), mean KL(dense || budgeted) of the next-token distribution, and
//     top-1 agreement with the dense model;
//   - executed/dense FLOPs (CausalLm::DenseFlops minus SequenceCost::saved_flops);
//   - prefill tokens/s of one --context prompt and decode tokens/s at batch 1 after it,
//     best of --repeats interleaved rounds.
// Quality is measured with each window as one prefill ("prefill" rows). GateSkip decides
// differently in decode (per-layer thresholds calibrated at load instead of exactly
// floor(r·n) per prefill), so skip_ratio settings also get "decode" rows: the same windows
// fed one token at a time after the first, the way generation meets them.
//   sluice-bench-budget-quality --model DIR --text FILE [--json OUT]
//     [--skip_ratios 0.25,0.5,0.75] [--experts k,k/2,1 by default] [--floors ...]
//     [--windows 24] [--window 256] [--decode_windows 6] [--context 512]
//     [--decode_tokens 32] [--repeats 3] [--threads 2]
// The model is loaded as sluiced loads it (LoadServingModel: GateSkip calibration on the
// shipped text through the model's tokenizer).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/cache/kv_cache.h"
#include "engine/model/causal_lm.h"
#include "engine/serving_model.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/ops.h"

ABSL_FLAG(std::string, model, "", "Checkpoint directory (with tokenizer.json)");
ABSL_FLAG(std::string, text, "", "Held-out text file (UTF-8)");
ABSL_FLAG(std::string, json, "", "Write the results here as JSON (for bench/plot_budget_quality.py)");
ABSL_FLAG(std::string, skip_ratios, "0.25,0.5,0.75", "GateSkip ratios (model with residual gates)");
ABSL_FLAG(std::string, experts, "", "experts_per_token values (default: k, k/2, 1 of a MoE model)");
ABSL_FLAG(std::string, floors, "0.1,0.2,0.3,0.4,0.5,0.6", "attention_gate_floor values (gated attention)");
ABSL_FLAG(bool, skip_middle_third, true, "Also run skip_layers over the middle third of the layers");
ABSL_FLAG(int32_t, windows, 24, "Held-out windows for the prefill quality figures");
ABSL_FLAG(int32_t, window, 256, "Tokens per window");
ABSL_FLAG(int32_t, decode_windows, 6, "Windows fed token by token for the skip_ratio decode rows");
ABSL_FLAG(int32_t, context, 512, "Prompt length of the prefill timing and the decode context");
ABSL_FLAG(int32_t, decode_tokens, 32, "Decode steps to time");
ABSL_FLAG(int32_t, repeats, 3, "Timed rounds over all settings (each setting's best is reported)");
ABSL_FLAG(int32_t, threads, 2, "Threads (0: all cores)");
ABSL_FLAG(std::string, quantization, "none",
          "Weights quantized at load (none, int8, int4, as sluiced): every row is then scored "
          "against the logits of a second, unquantized load of the same checkpoint");
ABSL_FLAG(int32_t, int4_group_size, 128, "With --quantization int4: inputs per group (32, 64 or 128)");
ABSL_FLAG(std::string, int4_int8_parts, "", "With --quantization int4: projections kept at int8 (lm_head, delta_net_in, attention_in; as sluiced)");
ABSL_FLAG(bool, quantize_embeddings, true, "With --quantization: the embedding and LM head too");

namespace {

using sluice::engine::CausalLm;
using sluice::engine::ComputeBudget;
using sluice::engine::ForwardBatch;
using sluice::engine::PagedKvCache;
using sluice::engine::RecurrentStateCache;
using sluice::engine::SequenceBudget;
using sluice::engine::SequenceCost;
constexpr int32_t kBlock = 16;

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
}

struct Caches {
  PagedKvCache kv;
  RecurrentStateCache state;
  std::vector<int32_t> table;
};

Caches MakeCaches(const CausalLm& model, int32_t tokens) {
  auto shape = model.KvShape(kBlock);
  shape.num_blocks = (tokens + kBlock - 1) / kBlock + 1;
  auto kv = PagedKvCache::Create(shape, sluice::kernels::Device::kCpu);
  auto state_shape = model.StateShape();
  state_shape.num_slots = 1;
  auto state = RecurrentStateCache::Create(state_shape, sluice::kernels::Device::kCpu);
  Check(kv.status());
  Check(state.status());
  std::vector<int32_t> table;
  for (int32_t b = 0; b < shape.num_blocks; ++b) table.push_back(b);
  return {*std::move(kv), *std::move(state), std::move(table)};
}

// Tokens [begin, end) of ids as one sequence; logits of every row when all_logits, else
// of the last. Adds this step's saved FLOPs to *saved.
void Step(CausalLm& model, Caches& c, const std::vector<int32_t>& ids, int32_t begin, int32_t end,
          const SequenceBudget* budget, bool all_logits, std::vector<float>* logits, double* saved) {
  ForwardBatch batch;
  for (int32_t i = begin; i < end; ++i) {
    batch.token_ids.push_back(ids[i]);
    batch.positions.push_back(i);
    batch.slot_mapping.push_back(c.table[i / kBlock] * kBlock + i % kBlock);
    if (all_logits) batch.logit_rows.push_back(i - begin);
  }
  if (!all_logits) batch.logit_rows.push_back(end - begin - 1);
  batch.sequences.push_back({0, end - begin, end, c.table.data()});
  batch.state_slots.push_back(0);
  batch.state_fresh.push_back(begin == 0 ? 1 : 0);
  batch.budgets.push_back(budget);
  std::vector<SequenceCost> costs;
  Check(model.ForwardWithCosts(batch, &c.kv, &c.state, logits, &costs));
  if (saved != nullptr && !costs.empty()) *saved += costs[0].saved_flops;
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

int64_t ArgMax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (row[i] > row[best]) best = i;
  }
  return best;
}

struct Quality {
  double nll = 0, kl = 0;
  int64_t agree = 0, positions = 0;
  double dense_flops = 0, saved_flops = 0;
  void Add(const float* dense, const float* got, int64_t vocab, int32_t target) {
    auto lp = LogSoftmax(dense, vocab);
    auto lq = LogSoftmax(got, vocab);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(lp[v]) * (lp[v] - lq[v]);
    kl += sum;
    nll -= lq[target];
    agree += ArgMax(dense, vocab) == ArgMax(got, vocab) ? 1 : 0;
    ++positions;
  }
};

struct Setting {
  std::string control;  // curve name in the plot
  std::string label;
  ComputeBudget budget;
  SequenceBudget resolved;
  const SequenceBudget* get() const { return resolved.empty() ? nullptr : &resolved; }
};

std::vector<float> ParseFloats(const std::string& s) {
  std::vector<float> out;
  for (absl::string_view v : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    float f = 0;
    if (!absl::SimpleAtof(v, &f)) {
      std::fprintf(stderr, "bad number %s\n", std::string(v).c_str());
      std::exit(2);
    }
    out.push_back(f);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_threads) > 0) sluice::kernels::SetNumThreads(absl::GetFlag(FLAGS_threads));
  const std::string dir = absl::GetFlag(FLAGS_model);
  auto quantization = sluice::kernels::ParseWeightQuantization(absl::GetFlag(FLAGS_quantization));
  Check(quantization.status());
  sluice::engine::ModelLoadOptions load_options;
  load_options.quantization = *quantization;
  load_options.int4_group_size = absl::GetFlag(FLAGS_int4_group_size);
  load_options.quantize_embeddings = absl::GetFlag(FLAGS_quantize_embeddings);
  {
    auto parts = sluice::kernels::ParseLinearParts(absl::GetFlag(FLAGS_int4_int8_parts));
    if (!parts.ok()) {
      std::cerr << "--int4_int8_parts: " << parts.status() << "\n";
      return 1;
    }
    load_options.int4_int8_parts = *parts;
  }
  auto loaded = sluice::engine::LoadServingModel(dir, sluice::kernels::Device::kCpu, load_options);
  Check(loaded.status());
  CausalLm& model = **loaded;
  // The reference distribution: the same checkpoint as stored (the model itself when it
  // is not quantized).
  std::unique_ptr<CausalLm> unquantized;
  if (*quantization != sluice::kernels::WeightQuantization::kNone) {
    auto ref = sluice::engine::LoadServingModel(dir, sluice::kernels::Device::kCpu);
    Check(ref.status());
    unquantized = *std::move(ref);
  }
  CausalLm& reference = unquantized != nullptr ? *unquantized : model;
  auto tokenizer = sluice::tokenizer::Tokenizer::LoadFromDirectory(dir);
  Check(tokenizer.status());
  std::ifstream in(absl::GetFlag(FLAGS_text));
  if (!in) {
    std::fprintf(stderr, "cannot read --text %s\n", absl::GetFlag(FLAGS_text).c_str());
    return 2;
  }
  std::stringstream text;
  text << in.rdbuf();
  auto encoded = (*tokenizer)->Encode(text.str(), false);
  Check(encoded.status());
  const std::vector<int32_t>& ids = *encoded;
  const int64_t vocab = model.config().vocab_size;
  const int64_t layers = model.config().num_layers;
  const int32_t window = absl::GetFlag(FLAGS_window);
  const int32_t context = absl::GetFlag(FLAGS_context);
  const int32_t decode = absl::GetFlag(FLAGS_decode_tokens);
  const int32_t num_windows =
      std::min<int32_t>(absl::GetFlag(FLAGS_windows), static_cast<int32_t>(ids.size() / window));
  if (num_windows < 1 || static_cast<int32_t>(ids.size()) < context + decode) {
    std::fprintf(stderr, "--text has %zu tokens: too few\n", ids.size());
    return 2;
  }
  std::printf("model %s (%s, %ld layers), %d threads; held-out text %zu tokens, %d windows of %d%s\n",
              dir.c_str(), model.config().model_type.c_str(), static_cast<long>(layers),
              sluice::kernels::NumThreads(), ids.size(), num_windows, window,
              model.has_residual_gates() ? (", GateSkip calibration: " + model.calibration_source()).c_str() : "");
  std::printf("weights: %s%s\n", model.weight_format().c_str(),
              &reference != &model ? " (scored against the unquantized checkpoint)" : "");

  // The settings. Every control the model honours; the dense one first.
  std::vector<Setting> settings;
  settings.push_back({"dense", "dense", {}, {}});
  const auto controls = model.SupportedBudgetControls();
  auto supports = [&](const std::string& c) { return std::find(controls.begin(), controls.end(), c) != controls.end(); };
  if (supports("skip_ratio")) {
    for (float r : ParseFloats(absl::GetFlag(FLAGS_skip_ratios))) {
      Setting s{"skip_ratio", absl::StrCat("skip_ratio=", r), {}, {}};
      s.budget.skip_ratio = r;
      settings.push_back(s);
    }
  }
  const int32_t k = static_cast<int32_t>(model.config().moe.experts_per_token);
  if (supports("experts_per_token") && k > 0) {
    std::vector<float> ks = ParseFloats(absl::GetFlag(FLAGS_experts));
    if (ks.empty()) ks = {static_cast<float>(k), static_cast<float>(k / 2), 1.f};
    std::vector<int32_t> seen;
    for (float kf : ks) {
      const int32_t kk = static_cast<int32_t>(kf);
      if (kk < 1 || std::find(seen.begin(), seen.end(), kk) != seen.end()) continue;  // k/2 may be 1
      seen.push_back(kk);
      Setting s{"experts_per_token", absl::StrCat("experts_per_token=", kk), {}, {}};
      s.budget.experts_per_token = kk;
      settings.push_back(s);
    }
  }
  if (supports("attention_gate_floor")) {
    for (float f : ParseFloats(absl::GetFlag(FLAGS_floors))) {
      Setting s{"attention_gate_floor", absl::StrCat("attention_gate_floor=", f), {}, {}};
      s.budget.attention_gate_floor = f;
      settings.push_back(s);
    }
  }
  if (absl::GetFlag(FLAGS_skip_middle_third) && layers >= 3) {
    const int32_t n = static_cast<int32_t>(layers / 3);
    const int32_t first = static_cast<int32_t>((layers - n) / 2);
    Setting s{"skip_layers", absl::StrCat("skip_layers=", first, "-", first + n - 1), {}, {}};
    s.budget.skip_layers.push_back({first, first + n - 1});
    settings.push_back(s);
  }
  for (Setting& s : settings) {
    Check(model.ValidateBudget(s.budget));
    s.resolved = sluice::engine::ResolveBudget(s.budget, layers);
  }

  // Quality, prefill: every window as one forward, dense first.
  std::vector<std::vector<float>> dense_logits(num_windows);
  std::vector<Quality> quality(settings.size());
  for (int32_t w = 0; w < num_windows; ++w) {
    std::vector<int32_t> win(ids.begin() + w * window, ids.begin() + (w + 1) * window);
    if (&reference != &model) {
      Caches c = MakeCaches(reference, window);
      Step(reference, c, win, 0, window, nullptr, true, &dense_logits[w], nullptr);
    }
    for (size_t i = 0; i < settings.size(); ++i) {
      Caches c = MakeCaches(model, window);
      std::vector<float> logits;
      double saved = 0;
      Step(model, c, win, 0, window, settings[i].get(), true, &logits, &saved);
      if (i == 0 && &reference == &model) dense_logits[w] = logits;
      Quality& q = quality[i];
      q.dense_flops += model.DenseFlops(0, window);
      q.saved_flops += saved;
      for (int32_t t = 0; t + 1 < window; ++t) {
        q.Add(dense_logits[w].data() + t * vocab, logits.data() + t * vocab, vocab, win[t + 1]);
      }
    }
  }
  // Quality, decode: skip_ratio settings (and dense, for the reference), token by token.
  std::vector<int> decode_rows;
  for (size_t i = 0; i < settings.size(); ++i) {
    if (i == 0 || settings[i].control == "skip_ratio") decode_rows.push_back(static_cast<int>(i));
  }
  std::vector<Quality> decode_quality(settings.size());
  const int32_t num_decode_windows = std::min(absl::GetFlag(FLAGS_decode_windows), num_windows);
  if (decode_rows.size() > 1) {
    for (int32_t w = 0; w < num_decode_windows; ++w) {
      std::vector<int32_t> win(ids.begin() + w * window, ids.begin() + (w + 1) * window);
      for (int i : decode_rows) {
        Caches c = MakeCaches(model, window);
        std::vector<float> logits;
        Quality& q = decode_quality[i];
        for (int32_t t = 0; t + 1 < window; ++t) {
          double saved = 0;
          Step(model, c, win, t, t + 1, settings[i].get(), false, &logits, &saved);
          q.dense_flops += model.DenseFlops(t, 1);
          q.saved_flops += saved;
          // Against the dense prefill logits (the dense decode equals them up to rounding).
          q.Add(dense_logits[w].data() + t * vocab, logits.data(), vocab, win[t + 1]);
        }
      }
    }
  }

  // Speed: settings take turns round after round; each keeps its best round.
  std::vector<double> prefill_s(settings.size(), 1e30), decode_s(settings.size(), 1e30);
  std::vector<double> decode_saved(settings.size(), 0), decode_dense(settings.size(), 0);
  for (int32_t round = 0; round < absl::GetFlag(FLAGS_repeats); ++round) {
    for (size_t i = 0; i < settings.size(); ++i) {
      Caches c = MakeCaches(model, context + decode);
      std::vector<float> logits;
      auto start = std::chrono::steady_clock::now();
      Step(model, c, ids, 0, context, settings[i].get(), false, &logits, nullptr);
      prefill_s[i] = std::min(prefill_s[i], Seconds(start));
      double saved = 0, dense = 0;
      start = std::chrono::steady_clock::now();
      for (int32_t t = context; t < context + decode; ++t) {
        Step(model, c, ids, t, t + 1, settings[i].get(), false, &logits, &saved);
      }
      decode_s[i] = std::min(decode_s[i], Seconds(start));
      for (int32_t t = context; t < context + decode; ++t) dense += model.DenseFlops(t, 1);
      decode_saved[i] = saved;
      decode_dense[i] = dense;
    }
  }

  nlohmann::ordered_json out;
  out["model"] = dir;
  out["model_type"] = model.config().model_type;
  out["threads"] = sluice::kernels::NumThreads();
  out["heldout_tokens"] = ids.size();
  out["windows"] = num_windows;
  out["window"] = window;
  out["decode_windows"] = num_decode_windows;
  out["context"] = context;
  out["decode_tokens"] = decode;
  out["rows"] = nlohmann::ordered_json::array();
  std::printf("\n%-26s %-7s %9s %9s %8s %10s %11s %11s %11s\n", "budget", "mode", "ppl", "KL nats",
              "top1", "exec/dense", "prefill t/s", "decode t/s", "dec exec/d");
  auto emit = [&](size_t i, const Quality& q, const char* mode) {
    const double ppl = std::exp(q.nll / q.positions);
    const double kl = q.kl / q.positions;
    const double top1 = static_cast<double>(q.agree) / q.positions;
    const double exec = (q.dense_flops - q.saved_flops) / q.dense_flops;
    const double pre = context / prefill_s[i];
    const double dec = decode / decode_s[i];
    const double dec_exec = (decode_dense[i] - decode_saved[i]) / decode_dense[i];
    std::printf("%-26s %-7s %9.3f %9.4f %8.4f %10.3f %11.1f %11.1f %11.3f\n", settings[i].label.c_str(), mode,
                ppl, kl, top1, exec, pre, dec, dec_exec);
    out["rows"].push_back({{"control", settings[i].control},
                           {"label", settings[i].label},
                           {"mode", mode},
                           {"perplexity", ppl},
                           {"kl", kl},
                           {"top1_agreement", top1},
                           {"positions", q.positions},
                           {"executed_over_dense", exec},
                           {"prefill_tokens_per_s", pre},
                           {"decode_tokens_per_s", dec},
                           {"decode_executed_over_dense", dec_exec}});
  };
  for (size_t i = 0; i < settings.size(); ++i) {
    emit(i, quality[i], "prefill");
    if (decode_quality[i].positions > 0) emit(i, decode_quality[i], "decode");
  }
  std::fflush(stdout);
  if (!absl::GetFlag(FLAGS_json).empty()) {
    std::ofstream f(absl::GetFlag(FLAGS_json));
    f << out.dump(1) << "\n";
  }
  return 0;
}
