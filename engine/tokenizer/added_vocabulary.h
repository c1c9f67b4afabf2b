// Added (and special) tokens, matched before pre-tokenization like
// `tokenizers`' AddedVocabulary (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_ADDED_VOCABULARY_H_
#define SLUICE_ENGINE_TOKENIZER_ADDED_VOCABULARY_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "engine/tokenizer/normalizers.h"
#include "engine/tokenizer/pre_tokenizers.h"

namespace sluice::tokenizer::internal {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// Leftmost-longest exact string matcher over a set of patterns (the semantics
// of aho_corasick's MatchKind::LeftmostLongest, which `tokenizers` uses). A
// byte trie is enough: added-token sets are small and a first-byte filter
// skips almost every position of ordinary text.
class LeftmostLongestMatcher {
 public:
  void Add(std::string_view pattern, int32_t value);
  struct Match {
    size_t begin, end;
    int32_t value;
  };
  // Successive non-overlapping matches.
  std::vector<Match> FindAll(std::string_view text) const;
  bool empty() const { return nodes_.size() <= 1; }

 private:
  struct Node {
    int32_t value = -1;
  };
  static uint64_t EdgeKey(int32_t node, uint8_t byte) {
    return (static_cast<uint64_t>(node) << 8) | byte;
  }
  std::vector<Node> nodes_{Node{}};
  absl::flat_hash_map<uint64_t, int32_t> edges_;
  std::array<bool, 256> first_byte_{};
};

// One split of the input after added-token extraction: either an added
// token, or normalized text for the pre-tokenizer and model.
struct AddedSplit {
  int32_t added_id = -1;  // -1: text
  Piece text;
};

class AddedVocabulary {
 public:
  // `normalizer` (may be null) is applied to tokens with normalized=true so
  // they match the normalized text, as `tokenizers` does.
  absl::Status Build(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Step 1 matches non-normalized tokens on the raw text; step 2 normalizes
  // each remaining piece and matches normalized tokens in it.
  absl::Status ExtractAndNormalize(std::string_view text, const Normalizer* normalizer,
                                   std::vector<AddedSplit>* out) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  struct Span {
    size_t begin, end;
    int32_t token_index;  // -1: text
  };
  // find_matches: applies single_word / lstrip / rstrip to the raw matches.
  std::vector<Span> FindMatches(std::string_view sentence,
                                const LeftmostLongestMatcher& matcher) const;

  std::vector<AddedToken> tokens_;
  LeftmostLongestMatcher raw_matcher_;         // normalized == false
  LeftmostLongestMatcher normalized_matcher_;  // normalized == true
};

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_ADDED_VOCABULARY_H_
