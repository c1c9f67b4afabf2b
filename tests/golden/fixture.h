// Reads the model fixtures written by tests/fixtures/make_fixtures.py.
#ifndef SLUICE_TESTS_GOLDEN_FIXTURE_H_
#define SLUICE_TESTS_GOLDEN_FIXTURE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/causal_lm.h"
#include "engine/model/forward_batch.h"

namespace sluice::testing {

struct GoldenPrompt {
  std::vector<int32_t> ids;
  std::vector<int32_t> greedy;  // transformers' greedy continuation
  std::vector<float> logits;    // [ids.size(), vocab], every position
};

struct GoldenFixture {
  std::string dir;
  int64_t vocab_size = 0;
  std::vector<GoldenPrompt> prompts;
};

std::string ModelFixtureDir(const std::string& name);

struct PrefillResult {
  std::vector<float> logits;  // every position of every prompt, concatenated
  std::vector<engine::SequenceCost> costs;
  absl::Status status;
};

// Runs the prompts as one ragged prefill batch on a fresh KV cache and state cache, with
// small KV blocks handed out in descending order so block tables are not trivial.
// budgets: empty, or one per prompt (null: none).
PrefillResult PrefillBatch(engine::CausalLm& model,
                           const std::vector<const std::vector<int32_t>*>& prompts,
                           const std::vector<const engine::SequenceBudget*>& budgets = {});
absl::StatusOr<GoldenFixture> LoadGoldenFixture(const std::string& name);

// Feeds one prompt in pieces on one KV cache and state slot: the first piece ends at
// cuts[0], each next one at the next cut, then one token at a time to the end, each piece
// a forward of its own (KV blocks handed out in descending order). Returns the logits of
// every position, concatenated. budget: null for none.
absl::StatusOr<std::vector<float>> FeedInPieces(engine::CausalLm& model, const std::vector<int32_t>& ids,
                                                const std::vector<int32_t>& cuts,
                                                const engine::SequenceBudget* budget = nullptr);

}  // namespace sluice::testing

#endif  // SLUICE_TESTS_GOLDEN_FIXTURE_H_
