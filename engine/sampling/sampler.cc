#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace sluice::engine {

absl::Status ValidateSamplingOptions(const SamplingOptions& o) {
  auto bad = [](absl::string_view field, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.", field, " ", why));
  };
  for (auto [name, v] : {std::pair<const char*, float>{"temperature", o.temperature},
                         {"top_p", o.top_p},
                         {"min_p", o.min_p},
                         {"repetition_penalty", o.repetition_penalty},
                         {"presence_penalty", o.presence_penalty},
                         {"frequency_penalty", o.frequency_penalty}}) {
    if (!std::isfinite(v)) return bad(name, "must be a finite number");
  }
  if (o.temperature < 0) return bad("temperature", absl::StrCat("must be >= 0, got ", o.temperature));
  if (o.top_k < 0) return bad("top_k", absl::StrCat("must be >= 0, got ", o.top_k));
  if (!(o.top_p > 0 && o.top_p <= 1)) return bad("top_p", absl::StrCat("must be in (0, 1], got ", o.top_p));
  if (!(o.min_p >= 0 && o.min_p < 1)) return bad("min_p", absl::StrCat("must be in [0, 1), got ", o.min_p));
  if (!(o.repetition_penalty > 0)) {
    return bad("repetition_penalty", absl::StrCat("must be > 0, got ", o.repetition_penalty));
  }
  if (std::abs(o.presence_penalty) > 2 || std::abs(o.frequency_penalty) > 2) {
    return bad(std::abs(o.presence_penalty) > 2 ? "presence_penalty" : "frequency_penalty",
               "must be in [-2, 2]");
  }
  return absl::OkStatus();
}

double SeededUniform(uint64_t seed, uint64_t step) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + step + 0x632BE59BD9B4E019ull;
  for (int i = 0; i < 2; ++i) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
  }
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

Sampler::Sampler(const SamplingOptions& options, int32_t logprobs_top_n)
    : options_(options), logprobs_top_n_(logprobs_top_n) {}

void Sampler::ApplyPenalties(absl::Span<float> logits, absl::Span<const int32_t> history,
                             int32_t num_generated) {
  const bool repetition = options_.repetition_penalty != 1.f;
  const bool additive = options_.presence_penalty != 0.f || options_.frequency_penalty != 0.f;
  if (!repetition && !additive) return;
  absl::flat_hash_map<int32_t, int32_t> generated_counts;
  absl::flat_hash_map<int32_t, bool> seen;
  const size_t first_generated = history.size() - num_generated;
  for (size_t i = 0; i < history.size(); ++i) {
    seen[history[i]] = true;
    if (i >= first_generated) ++generated_counts[history[i]];
  }
  if (repetition) {  // CTRL-style: over prompt and output, shrink towards zero
    for (const auto& [id, unused] : seen) {
      float& l = logits[id];
      l = l > 0 ? l / options_.repetition_penalty : l * options_.repetition_penalty;
    }
  }
  if (additive) {  // OpenAI-style: over the output only
    for (const auto& [id, count] : generated_counts) {
      logits[id] -= options_.presence_penalty + options_.frequency_penalty * count;
    }
  }
}

int32_t Sampler::Sample(absl::Span<float> logits, absl::Span<const int32_t> history,
                        int32_t num_generated, absl::Span<const int32_t> banned, uint64_t step,
                        TokenLogprob* logprob) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  // Logprobs describe the model's own distribution, before penalties and temperature.
  std::vector<float> model_logprobs;
  if (logprobs_top_n_ >= 0 && logprob != nullptr) {
    float max_l = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float l : logits) sum += std::exp(static_cast<double>(l - max_l));
    const float log_z = max_l + static_cast<float>(std::log(sum));
    model_logprobs.resize(vocab);
    for (int32_t i = 0; i < vocab; ++i) model_logprobs[i] = logits[i] - log_z;
  }

  ApplyPenalties(logits, history, num_generated);
  for (int32_t id : banned) {
    if (id >= 0 && id < vocab) logits[id] = -std::numeric_limits<float>::infinity();
  }

  int32_t chosen = 0;
  if (options_.temperature == 0.f) {
    chosen = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  } else {
    // Candidates sorted by logit, ties by id, so the order never depends on memory.
    scratch_.clear();
    for (int32_t i = 0; i < vocab; ++i) {
      if (logits[i] != -std::numeric_limits<float>::infinity()) scratch_.emplace_back(logits[i], i);
    }
    auto by_logit = [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    };
    size_t keep = scratch_.size();
    if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < keep) {
      keep = options_.top_k;
      std::partial_sort(scratch_.begin(), scratch_.begin() + keep, scratch_.end(), by_logit);
    } else {
      std::sort(scratch_.begin(), scratch_.end(), by_logit);
    }
    scratch_.resize(keep);
    if (scratch_.empty()) {
      chosen = 0;
    } else {
      std::vector<double> probs(keep);
      const double max_l = scratch_[0].first;
      double sum = 0;
      for (size_t i = 0; i < keep; ++i) {
        probs[i] = std::exp((scratch_[i].first - max_l) / options_.temperature);
        sum += probs[i];
      }
      for (double& p : probs) p /= sum;
      // top-p: the smallest prefix whose mass reaches top_p; min-p: drop tokens below
      // min_p times the best probability.
      size_t cut = keep;
      if (options_.top_p < 1.f) {
        double mass = 0;
        for (size_t i = 0; i < keep; ++i) {
          mass += probs[i];
          if (mass >= options_.top_p) {
            cut = i + 1;
            break;
          }
        }
      }
      if (options_.min_p > 0.f) {
        const double floor = options_.min_p * probs[0];
        size_t i = 1;
        while (i < cut && probs[i] >= floor) ++i;
        cut = i;
      }
      double total = 0;
      for (size_t i = 0; i < cut; ++i) total += probs[i];
      const double target = SeededUniform(options_.seed, step) * total;
      double acc = 0;
      chosen = scratch_[cut - 1].second;
      for (size_t i = 0; i < cut; ++i) {
        acc += probs[i];
        if (target < acc) {
          chosen = scratch_[i].second;
          break;
        }
      }
    }
  }

  if (!model_logprobs.empty()) {
    logprob->token_id = chosen;
    logprob->logprob = model_logprobs[chosen];
    logprob->top.clear();
    if (logprobs_top_n_ > 0) {
      std::vector<int32_t> ids(vocab);
      for (int32_t i = 0; i < vocab; ++i) ids[i] = i;
      const int32_t n = std::min(logprobs_top_n_, vocab);
      std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
        return model_logprobs[a] != model_logprobs[b] ? model_logprobs[a] > model_logprobs[b] : a < b;
      });
      for (int32_t i = 0; i < n; ++i) logprob->top.emplace_back(ids[i], model_logprobs[ids[i]]);
    }
  }
  return chosen;
}

}  // namespace sluice::engine
