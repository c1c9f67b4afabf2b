// API contract tests: errors instead of crashes on bad input, the accessors,
// tokenizer_config.json handling and concurrent use. Expected ids come from
// the tokenizer itself or from the HF fixtures, never from literals.
#include "engine/tokenizer/tokenizer.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/tokenizer/test_util.h"

namespace sluice::tokenizer {
namespace {

using testing::ReadCorpus;

TEST(TokenizerLoadTest, MalformedJsonIsAnError) {
  for (const char* json :
       {"", "{", "[]", "null", "{\"model\": 3}", "{\"model\": {\"type\": \"BPE\"}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": [1,2]}}"}) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::LoadFromJson(json, "");
    EXPECT_FALSE(tok.ok()) << json;
  }
}

TEST(TokenizerLoadTest, UnsupportedComponentsAreUnimplemented) {
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0}, "merges": []})";
  for (const std::string& extra :
       {std::string(R"("normalizer": {"type": "Precompiled", "precompiled_charsmap": ""})"),
        std::string(R"("pre_tokenizer": {"type": "BertPreTokenizer"})"),
        std::string(R"("decoder": {"type": "WordPiece"})")}) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
        Tokenizer::LoadFromJson(absl::StrCat("{", model, ",", extra, "}"), "");
    ASSERT_FALSE(tok.ok()) << extra;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented) << tok.status();
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> unigram =
      Tokenizer::LoadFromJson(R"({"model": {"type": "Unigram", "vocab": []}})", "");
  EXPECT_EQ(unigram.status().code(), absl::StatusCode::kUnimplemented);
}

TEST(TokenizerLoadTest, BadMergesAndRegexAreErrors) {
  EXPECT_FALSE(Tokenizer::LoadFromJson(
                   R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "")
                   .ok());
  EXPECT_FALSE(Tokenizer::LoadFromJson(
                   R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})", "")
                   .ok());
  EXPECT_FALSE(Tokenizer::LoadFromJson(
                   R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(["},
                       "behavior": "Isolated", "invert": false},
                       "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
                   "")
                   .ok());
  EXPECT_FALSE(Tokenizer::LoadFromJson(
                   R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})", "{bad")
                   .ok());
}

TEST(TokenizerLoadTest, HostileShapesAreRejected) {
  // Sparse ids would demand huge id tables.
  EXPECT_FALSE(
      Tokenizer::LoadFromJson(
          R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 60000000}, "merges": []}})", "")
          .ok());
  EXPECT_FALSE(Tokenizer::LoadFromJson(
                   R"({"added_tokens": [{"id": 50000000, "content": "x", "special": true}],
                       "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
                   "")
                   .ok());
  // Deep nesting must not recurse the stack away.
  std::string deep = R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                         "normalizer": )";
  constexpr int kDepth = 100000;
  for (int i = 0; i < kDepth; ++i) deep += R"({"type": "Sequence", "normalizers": [)";
  for (int i = 0; i < kDepth; ++i) deep += "]}";
  deep += "}";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::LoadFromJson(deep, "");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("too deep"), std::string::npos) << tok.status();
  // A template that adds an id naming no token.
  EXPECT_FALSE(Tokenizer::LoadFromJson(
                   R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                       "post_processor": {"type": "TemplateProcessing",
                         "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}}],
                         "special_tokens": {"<s>": {"id": "<s>", "ids": [7], "tokens": ["<s>"]}}}})",
                   "")
                   .ok());
}

TEST(TokenizerLoadTest, MissingDirectoryIsNotFound) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      Tokenizer::LoadFromDirectory("/nonexistent/sluice/tokenizer");
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
}

class ReferenceTokenizerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceTokenizerTest, InvalidUtf8IsInvalidArgument) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  for (const std::string& bad :
       {std::string("\xFF"), std::string("abc\xC3"), std::string("\xED\xA0\x80"),  // surrogate
        std::string("\xC0\xAF"), std::string("ok\xF4\x90\x80\x80")}) {
    absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(bad, true);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  }
  // An embedded NUL is valid UTF-8.
  EXPECT_TRUE(tok->Encode(std::string("a\0b", 3), false).ok());
}

TEST_P(ReferenceTokenizerTest, BadIdsAreRejected) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{-1}, false).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{tok->vocab_size()}, false).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(tok->Decode(std::vector<int32_t>{tok->vocab_size() - 1}, false).ok());
  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{}, false), "");
}

TEST_P(ReferenceTokenizerTest, AccessorsAgree) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  ASSERT_GT(tok->vocab_size(), 1000);
  int specials = 0;
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    std::optional<std::string> token = tok->IdToToken(id);
    ASSERT_TRUE(token.has_value()) << "hole at id " << id;
    ASSERT_EQ(tok->TokenToId(*token), id) << *token;
    specials += tok->IsSpecial(id);
  }
  EXPECT_GT(specials, 0);
  EXPECT_FALSE(tok->IdToToken(-1).has_value());
  EXPECT_FALSE(tok->IdToToken(tok->vocab_size()).has_value());
  EXPECT_FALSE(tok->TokenToId("definitely not a token \x01\x02").has_value());
  // Every reference config names an EOS token, and it is special.
  ASSERT_TRUE(tok->eos_token_id().has_value());
  EXPECT_TRUE(tok->IsSpecial(*tok->eos_token_id()));
  if (tok->bos_token_id().has_value()) {
    EXPECT_TRUE(tok->IsSpecial(*tok->bos_token_id()));
  }
  // Special tokens written in the text are matched as themselves.
  const std::string eos_text = *tok->IdToToken(*tok->eos_token_id());
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode("x" + eos_text + "y", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_NE(std::find(ids->begin(), ids->end(), *tok->eos_token_id()), ids->end());
}

TEST_P(ReferenceTokenizerTest, ConcurrentEncodeDecodeIsConsistent) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  const std::vector<std::string> corpus = ReadCorpus();
  std::vector<std::vector<int32_t>> expected;
  for (size_t i = 0; i < corpus.size(); i += 5) expected.push_back(*tok->Encode(corpus[i], true));
  constexpr int kThreads = 4;
  std::vector<int> failures(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Different starting points so threads race on the shared word cache.
      for (size_t k = 0; k < expected.size(); ++k) {
        const size_t j = (k + t * expected.size() / kThreads) % expected.size();
        absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(corpus[j * 5], true);
        if (!ids.ok() || *ids != expected[j]) ++failures[t];
        absl::StatusOr<std::string> text = tok->Decode(expected[j], false);
        if (!text.ok()) ++failures[t];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

TEST_P(ReferenceTokenizerTest, LongInputsDoNotBreak) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  // Long runs stress the regex JIT stack and the merge queue.
  for (const std::string& text : {std::string(200000, ' '), std::string(100000, 'a'),
                                  std::string(50000, '\n'), std::string(30000, '9')}) {
    absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    absl::StatusOr<std::string> back = tok->Decode(*ids, false);
    ASSERT_TRUE(back.ok());
    // Llama 2 prepends its metaspace, which decodes to a stripped space.
    EXPECT_EQ(*back, text);
  }
}

INSTANTIATE_TEST_SUITE_P(ReferenceTokenizers, ReferenceTokenizerTest,
                         ::testing::ValuesIn(testing::ReferenceTokenizerNames()),
                         [](const auto& info) { return info.param; });

// tokenizer_config.json: DeepSeek-V3 sets add_bos_token=true, which
// transformers 4 honoured and `tokenizers` does not.
TEST(TokenizerConfigTest, ApplyConfigAddBosEosIsOptIn) {
  const std::string dir = testing::SharedTokenizersDir() + "/deepseek_v3";
  auto probe = testing::GetReferenceTokenizer("deepseek_v3");
  if (probe.missing) GTEST_SKIP() << probe.why;
  TokenizerOptions options;
  options.apply_config_add_bos_eos = true;
  absl::StatusOr<std::unique_ptr<Tokenizer>> with_bos = Tokenizer::LoadFromDirectory(dir, options);
  ASSERT_TRUE(with_bos.ok()) << with_bos.status();
  ASSERT_TRUE((*with_bos)->bos_token_id().has_value());
  const std::string text = "Hello DeepSeek";
  std::vector<int32_t> plain = *probe.tokenizer->Encode(text, false);
  EXPECT_EQ(*probe.tokenizer->Encode(text, true), plain);  // tokenizers: nothing added
  std::vector<int32_t> expected = plain;
  expected.insert(expected.begin(), *(*with_bos)->bos_token_id());
  EXPECT_EQ(*(*with_bos)->Encode(text, true), expected);
  EXPECT_EQ(*(*with_bos)->Encode(text, false), plain);
}

TEST(TokenizerConfigTest, ConfigWithoutFileMeansNoBosEos) {
  const std::string path = testing::SharedTokenizersDir() + "/qwen3/tokenizer.json";
  std::ifstream in(path);
  if (!in.good()) GTEST_SKIP() << "missing " << path;
  const std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::LoadFromJson(json, "");
  ASSERT_TRUE(tok.ok());
  EXPECT_FALSE((*tok)->bos_token_id().has_value());
  EXPECT_FALSE((*tok)->eos_token_id().has_value());
  absl::StatusOr<std::unique_ptr<Tokenizer>> with_config =
      Tokenizer::LoadFromJson(json, R"({"eos_token": {"content": "<|im_end|>"}})");
  ASSERT_TRUE(with_config.ok());
  EXPECT_EQ((*with_config)->eos_token_id(), (*with_config)->TokenToId("<|im_end|>"));
}

}  // namespace
}  // namespace sluice::tokenizer
