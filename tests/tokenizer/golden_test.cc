// Checks every id and every decoded string against the fixtures that
// tests/fixtures/make_tokenizer_fixtures.py recorded from Hugging Face
// `tokenizers` for the four reference tokenizers.
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/tokenizer/test_util.h"

namespace sluice::tokenizer {
namespace {

using testing::ReadCorpus;
using testing::ReadJsonLines;
using testing::TestDataDir;
using testing::ToIds;

// Reports at most this many mismatches per test so that a systematic bug
// does not drown the log; the total is still counted.
constexpr int kMaxReported = 15;

std::string Escaped(const std::string& text) { return nlohmann::json(text).dump(); }

// Compares Encode with the recorded ids; returns the number of mismatches.
int CountEncodeMismatches(const Tokenizer& tok, const std::vector<std::string>& texts,
                          const std::vector<nlohmann::json>& fixtures) {
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const nlohmann::json& fixture = fixtures[i];
    const std::vector<int32_t> expected = ToIds(fixture.at("ids"));
    const std::vector<int32_t> expected_special =
        fixture.contains("ids_special") ? ToIds(fixture.at("ids_special")) : expected;
    for (bool add_special : {false, true}) {
      absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(texts[i], add_special);
      const std::vector<int32_t>& want = add_special ? expected_special : expected;
      if (!ids.ok()) {
        ADD_FAILURE() << ids.status() << " for line " << i;
        ++mismatches;
      } else if (*ids != want && ++mismatches <= kMaxReported) {
        ADD_FAILURE() << "line " << i << " add_special=" << add_special << " text "
                      << Escaped(texts[i]) << "\n  got  [" << absl::StrJoin(*ids, ",")
                      << "]\n  want [" << absl::StrJoin(want, ",") << "]";
      }
    }
  }
  return mismatches;
}

// Compares Decode with the recorded texts; returns the number of mismatches.
int CountDecodeMismatches(const Tokenizer& tok, const std::vector<std::string>& texts,
                          const std::vector<nlohmann::json>& fixtures) {
  int mismatches = 0;
  auto check = [&](size_t line, const char* what, const std::vector<int32_t>& ids, bool skip,
                   const std::string& want) {
    absl::StatusOr<std::string> text = tok.Decode(ids, skip);
    if (!text.ok()) {
      ADD_FAILURE() << text.status() << " for line " << line;
      ++mismatches;
    } else if (*text != want && ++mismatches <= kMaxReported) {
      ADD_FAILURE() << "line " << line << " " << what << "\n  got  " << Escaped(*text)
                    << "\n  want " << Escaped(want);
    }
  };
  for (size_t i = 0; i < texts.size(); ++i) {
    const nlohmann::json& f = fixtures[i];
    // Omitted fields equal the previous one in the chain (see the generator).
    const std::string decoded = f.value("decoded", texts[i]);
    const std::string decoded_special = f.value("decoded_special", decoded);
    const std::string decoded_skip = f.value("decoded_skip", decoded_special);
    const std::vector<int32_t> ids = ToIds(f.at("ids"));
    const std::vector<int32_t> ids_special =
        f.contains("ids_special") ? ToIds(f.at("ids_special")) : ids;
    check(i, "decode(ids)", ids, false, decoded);
    check(i, "decode(ids_special)", ids_special, false, decoded_special);
    check(i, "decode(ids_special, skip_special_tokens)", ids_special, true, decoded_skip);
  }
  return mismatches;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    corpus_ = ReadCorpus();
    fixtures_ = ReadJsonLines(TestDataDir() + "/" + GetParam() + ".jsonl");
    ASSERT_GE(corpus_.size(), 2000u);
    ASSERT_EQ(corpus_.size(), fixtures_.size()) << "fixtures out of date: rerun the generator";
  }
  std::vector<std::string> corpus_;
  std::vector<nlohmann::json> fixtures_;
};

TEST_P(GoldenTest, EncodeMatchesHuggingFace) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  EXPECT_EQ(CountEncodeMismatches(*tok, corpus_, fixtures_), 0)
      << "encode mismatches out of " << 2 * corpus_.size();
}

TEST_P(GoldenTest, DecodeMatchesHuggingFace) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  EXPECT_EQ(CountDecodeMismatches(*tok, corpus_, fixtures_), 0)
      << "decode mismatches out of " << 3 * corpus_.size();
}

INSTANTIATE_TEST_SUITE_P(ReferenceTokenizers, GoldenTest,
                         ::testing::ValuesIn(testing::ReferenceTokenizerNames()),
                         [](const auto& info) { return info.param; });

// Pipeline variants (see the generator): components the four real files do
// not use, checked against the same oracle.
class VariantGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VariantGoldenTest, MatchesHuggingFace) {
  const std::string dir = TestDataDir() + "/variants/";
  std::ifstream spec_file(dir + GetParam() + ".json");
  ASSERT_TRUE(spec_file.good());
  const nlohmann::json spec = nlohmann::json::parse(spec_file);
  nlohmann::json tokenizer_json;
  if (spec.contains("tokenizer")) {
    tokenizer_json = spec.at("tokenizer");
  } else {
    const std::string base_path = testing::SharedTokenizersDir() + "/" +
                                  spec.at("base").get<std::string>() + "/tokenizer.json";
    std::ifstream base(base_path);
    if (!base.good()) GTEST_SKIP() << "base tokenizer not found at " << base_path;
    tokenizer_json = nlohmann::json::parse(base);
    for (const auto& [key, value] : spec.at("override").items()) tokenizer_json[key] = value;
    if (spec.contains("model_override")) {
      for (const auto& [key, value] : spec.at("model_override").items()) {
        tokenizer_json["model"][key] = value;
      }
    }
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      Tokenizer::LoadFromJson(tokenizer_json.dump(), "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<nlohmann::json> fixtures = ReadJsonLines(dir + GetParam() + ".jsonl");
  std::vector<std::string> texts = ReadCorpus();
  ASSERT_GE(texts.size(), fixtures.size());
  texts.resize(fixtures.size());
  ASSERT_GE(fixtures.size(), 500u);
  EXPECT_EQ(CountEncodeMismatches(**tok, texts, fixtures), 0);
  EXPECT_EQ(CountDecodeMismatches(**tok, texts, fixtures), 0);
}

INSTANTIATE_TEST_SUITE_P(Variants, VariantGoldenTest,
                         ::testing::Values("llama2_metaspace", "qwen3_bytelevel", "tiny_subword"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace sluice::tokenizer
