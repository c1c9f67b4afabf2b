// Per-request token sampling. Each request's random stream depends only on its seed and
// the step index, never on what else shares the batch, so a seeded request reproduces
// its tokens whether it runs alone or with 63 others.
#ifndef SLUICE_ENGINE_SAMPLING_SAMPLER_H_
#define SLUICE_ENGINE_SAMPLING_SAMPLER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/request.h"

namespace sluice::engine {

// Checks every field and names the bad one (INVALID_ARGUMENT).
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

// Uniform double in [0, 1) from (seed, step): a counter-based hash (SplitMix64 rounds),
// so no generator state has to travel with the sequence.
double SeededUniform(uint64_t seed, uint64_t step);

class Sampler {
 public:
  Sampler(const SamplingOptions& options, int32_t logprobs_top_n);

  // Picks the next token from `logits` (modified in place). `history` is the prompt plus
  // the tokens generated so far; `num_generated` of them are generated. `banned` tokens
  // (EOS and stop ids before min_tokens) get probability 0.
  int32_t Sample(absl::Span<float> logits, absl::Span<const int32_t> history,
                 int32_t num_generated, absl::Span<const int32_t> banned, uint64_t step,
                 TokenLogprob* logprob);

 private:
  void ApplyPenalties(absl::Span<float> logits, absl::Span<const int32_t> history,
                      int32_t num_generated);
  SamplingOptions options_;
  int32_t logprobs_top_n_;
  std::vector<std::pair<float, int32_t>> scratch_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_SAMPLING_SAMPLER_H_
