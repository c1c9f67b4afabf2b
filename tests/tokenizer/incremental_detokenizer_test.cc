// IncrementalDetokenizer: every delta is valid UTF-8 and the deltas add up to
// Tokenizer::Decode of the whole sequence, on the whole corpus for all four
// reference tokenizers, with and without skip_special_tokens.
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "gtest/gtest.h"
#include "tests/tokenizer/test_util.h"

namespace sluice::tokenizer {
namespace {

using internal::IsValidUtf8;

class IncrementalDetokenizerTest : public ::testing::TestWithParam<std::string> {};

// Streams ids one at a time and checks the contract; returns the deltas.
void ExpectStreamsLikeDecode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip,
                             const std::string& context) {
  absl::StatusOr<std::string> full = tok.Decode(ids, skip);
  ASSERT_TRUE(full.ok()) << full.status();
  IncrementalDetokenizer detok(tok, skip);
  std::string streamed;
  for (int32_t id : ids) {
    absl::StatusOr<std::string> delta = detok.Push(id);
    ASSERT_TRUE(delta.ok()) << delta.status();
    ASSERT_TRUE(IsValidUtf8(*delta)) << context << ": partial UTF-8 in delta after id " << id;
    // Whatever was emitted must already be final text.
    ASSERT_EQ(full->compare(0, streamed.size() + delta->size(), streamed + *delta), 0)
        << context << ": emitted text diverges from Decode";
    streamed += *delta;
  }
  const std::string tail = detok.Finish();
  ASSERT_TRUE(IsValidUtf8(tail));
  streamed += tail;
  ASSERT_EQ(streamed, *full) << context << " ids [" << absl::StrJoin(ids, ",") << "]";
  ASSERT_EQ(detok.text(), *full);
}

TEST_P(IncrementalDetokenizerTest, CorpusStreamsExactly) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  const std::vector<std::string> corpus = testing::ReadCorpus();
  ASSERT_FALSE(corpus.empty());
  for (size_t i = 0; i < corpus.size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(corpus[i], /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    for (bool skip : {false, true}) {
      ExpectStreamsLikeDecode(*tok, *ids, skip,
                              "line " + std::to_string(i) + (skip ? " skip" : " keep"));
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

// Generated ids are not always what Encode would produce: stream every
// token id of the corpus in reverse order, which splits multi-byte
// characters across byte-level tokens in odd places.
TEST_P(IncrementalDetokenizerTest, ScrambledIdsStreamExactly) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, GetParam());
  const std::vector<std::string> corpus = testing::ReadCorpus();
  std::vector<int32_t> all;
  for (size_t i = 0; i < corpus.size(); i += 7) {
    absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(corpus[i], true);
    ASSERT_TRUE(ids.ok());
    all.insert(all.end(), ids->rbegin(), ids->rend());
  }
  for (size_t begin = 0; begin < all.size(); begin += 64) {
    std::vector<int32_t> chunk(all.begin() + begin, all.begin() + std::min(all.size(), begin + 64));
    ExpectStreamsLikeDecode(*tok, chunk, false, "chunk " + std::to_string(begin));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(ReferenceTokenizers, IncrementalDetokenizerTest,
                         ::testing::ValuesIn(testing::ReferenceTokenizerNames()),
                         [](const auto& info) { return info.param; });

// Llama 2 spells characters outside its vocabulary as <0xXX> byte tokens; a
// four-byte character must come out whole, after its last byte.
TEST(IncrementalDetokenizerByteFallbackTest, HoldsBackSplitCharacter) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, "llama2");
  const std::string text =
      "a\xF0\x9F\xA6\x99"
      "b";  // a🦙b
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text, false);
  ASSERT_TRUE(ids.ok());
  std::vector<int32_t> byte_ids;
  for (int32_t id : *ids) {
    std::optional<std::string> token = tok->IdToToken(id);
    ASSERT_TRUE(token.has_value());
    if (token->rfind("<0x", 0) == 0) byte_ids.push_back(id);
  }
  ASSERT_EQ(byte_ids.size(), 4u) << "expected 🦙 to use byte fallback";

  IncrementalDetokenizer detok(*tok, false);
  std::vector<std::string> deltas;
  for (int32_t id : *ids) {
    absl::StatusOr<std::string> delta = detok.Push(id);
    ASSERT_TRUE(delta.ok());
    deltas.push_back(*delta);
    if (tok->IdToToken(id)->rfind("<0x", 0) == 0 && id != byte_ids.back()) {
      EXPECT_EQ(delta->find("\xF0"), std::string::npos) << "partial character emitted";
    }
  }
  std::string joined = absl::StrJoin(deltas, "") + detok.Finish();
  EXPECT_EQ(joined, *tok->Decode(*ids, false));
  EXPECT_NE(joined.find("\xF0\x9F\xA6\x99"), std::string::npos);
}

// An incomplete character at the end is flushed by Finish exactly as Decode
// renders it (U+FFFD replacements), and never by Push.
TEST(IncrementalDetokenizerByteFallbackTest, FinishFlushesIncompleteTail) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, "llama2");
  std::optional<int32_t> e4 = tok->TokenToId("<0xE4>");
  std::optional<int32_t> bd = tok->TokenToId("<0xBD>");
  ASSERT_TRUE(e4.has_value() && bd.has_value());
  IncrementalDetokenizer detok(*tok, false);
  EXPECT_EQ(*detok.Push(*e4), "");
  EXPECT_EQ(*detok.Push(*bd), "");
  const std::string tail = detok.Finish();
  EXPECT_EQ(tail, *tok->Decode(std::vector<int32_t>{*e4, *bd}, false));
  EXPECT_TRUE(IsValidUtf8(tail));
}

TEST(IncrementalDetokenizerErrorsTest, BadIdIsRejectedAndStreamContinues) {
  SLUICE_LOAD_REFERENCE_TOKENIZER_OR_SKIP(tok, "qwen3");
  IncrementalDetokenizer detok(*tok, false);
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode("Hello world", false);
  ASSERT_TRUE(ids.ok());
  ASSERT_TRUE(detok.Push((*ids)[0]).ok());
  EXPECT_EQ(detok.Push(-1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(detok.Push(tok->vocab_size()).status().code(), absl::StatusCode::kOutOfRange);
  for (size_t i = 1; i < ids->size(); ++i) ASSERT_TRUE(detok.Push((*ids)[i]).ok());
  detok.Finish();
  EXPECT_EQ(detok.text(), "Hello world");
}

}  // namespace
}  // namespace sluice::tokenizer
