// Reads the model fixtures written by tests/fixtures/make_fixtures.py.
#ifndef SLUICE_TESTS_GOLDEN_FIXTURE_H_
#define SLUICE_TESTS_GOLDEN_FIXTURE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

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
absl::StatusOr<GoldenFixture> LoadGoldenFixture(const std::string& name);

}  // namespace sluice::testing

#endif  // SLUICE_TESTS_GOLDEN_FIXTURE_H_
