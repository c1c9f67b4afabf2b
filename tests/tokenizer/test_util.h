// Shared helpers for the tokenizer tests: where the fixtures and the real
// tokenizer files live, and a per-process cache of loaded tokenizers.
#ifndef SLUICE_TESTS_TOKENIZER_TEST_UTIL_H_
#define SLUICE_TESTS_TOKENIZER_TEST_UTIL_H_

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace sluice::tokenizer::testing {

// The four tokenizers the fixtures cover, in ../shared/tokenizers/<name>/.
inline const std::vector<std::string>& ReferenceTokenizerNames() {
  static const std::vector<std::string> names = {"qwen3", "llama3", "deepseek_v3", "llama2"};
  return names;
}

// SLUICE_TOKENIZERS_DIR overrides the compiled-in ../shared/tokenizers path.
inline std::string SharedTokenizersDir() {
  if (const char* env = std::getenv("SLUICE_TOKENIZERS_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return SLUICE_SHARED_TOKENIZERS_DIR;
}

inline std::string TestDataDir() { return SLUICE_TOKENIZER_TEST_DATA_DIR; }

// Returns nullptr (and sets *why) when the shared tokenizer files are absent,
// so tests can GTEST_SKIP with a reason instead of failing on a dev checkout
// without ../shared. Loading failures are returned as errors in *why too, but
// the caller should treat those as failures (see LoadOrSkip below).
struct LoadResult {
  const Tokenizer* tokenizer = nullptr;
  bool missing = false;
  std::string why;
};

inline LoadResult GetReferenceTokenizer(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<Tokenizer>>* cache =
      new std::map<std::string, std::unique_ptr<Tokenizer>>();
  std::lock_guard<std::mutex> lock(mutex);
  LoadResult result;
  const std::string dir = SharedTokenizersDir() + "/" + name;
  if (!std::filesystem::exists(dir + "/tokenizer.json")) {
    result.missing = true;
    result.why = "tokenizer files not found at " + dir +
                 " (CI copies shared/ beside the checkout; set SLUICE_TOKENIZERS_DIR to override)";
    return result;
  }
  auto it = cache->find(name);
  if (it == cache->end()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::LoadFromDirectory(dir);
    if (!loaded.ok()) {
      result.why = loaded.status().ToString();
      return result;
    }
    it = cache->emplace(name, *std::move(loaded)).first;
  }
  result.tokenizer = it->second.get();
  return result;
}

inline std::vector<nlohmann::json> ReadJsonLines(const std::string& path) {
  std::vector<nlohmann::json> records;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  }
  return records;
}

inline std::vector<std::string> ReadCorpus() {
  std::vector<std::string> texts;
  for (const auto& record : ReadJsonLines(TestDataDir() + "/corpus.jsonl")) {
    texts.push_back(record.at("text").get<std::string>());
  }
  return texts;
}

inline std::vector<int32_t> ToIds(const nlohmann::json& array) {
  return array.get<std::vector<int32_t>>();
}

}  // namespace sluice::tokenizer::testing

// Loads a reference tokenizer into `var`, skipping the test when the shared
// files are absent and failing it when they do not load.
#define SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(var, name)                        \
  const ::sluice::tokenizer::Tokenizer* var = nullptr;                            \
  do {                                                                            \
    auto load_result = ::sluice::tokenizer::testing::GetReferenceTokenizer(name); \
    if (load_result.missing) GTEST_SKIP() << load_result.why;                     \
    ASSERT_NE(load_result.tokenizer, nullptr) << load_result.why;                 \
    var = load_result.tokenizer;                                                  \
  } while (0)

#endif  // SLUICE_TESTS_TOKENIZER_TEST_UTIL_H_
