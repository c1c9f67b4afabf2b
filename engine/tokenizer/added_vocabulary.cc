#include "engine/tokenizer/added_vocabulary.h"

#include <algorithm>
#include <utility>

#include "engine/tokenizer/unicode.h"

namespace sluice::tokenizer::internal {
namespace {

char32_t FirstChar(std::string_view s) {
  char32_t cp;
  DecodeUtf8(s, 0, &cp);
  return cp;
}

char32_t LastChar(std::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  char32_t cp;
  DecodeUtf8(s, start, &cp);
  return cp;
}

// Start of the run of whitespace that ends s (`\s*$`).
size_t TrailingSpaceStart(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
    char32_t cp;
    DecodeUtf8(s, start, &cp);
    if (!IsWhitespace(cp)) break;
    end = start;
  }
  return end;
}

// Length of the run of whitespace that starts s (`^\s*`).
size_t LeadingSpaceLength(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    char32_t cp;
    const size_t len = DecodeUtf8(s, i, &cp);
    if (!IsWhitespace(cp)) break;
    i += len;
  }
  return i;
}

}  // namespace

void LeftmostLongestMatcher::Add(std::string_view pattern, int32_t value) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (unsigned char c : pattern) {
    auto [it, inserted] = edges_.try_emplace(EdgeKey(node, c), static_cast<int32_t>(nodes_.size()));
    if (inserted) nodes_.push_back(Node{});
    node = it->second;
  }
  // The first pattern added wins for duplicates, like aho_corasick.
  if (nodes_[node].value < 0) nodes_[node].value = value;
  first_byte_[static_cast<unsigned char>(pattern[0])] = true;
}

std::vector<LeftmostLongestMatcher::Match> LeftmostLongestMatcher::FindAll(
    std::string_view text) const {
  std::vector<Match> matches;
  if (empty()) return matches;
  size_t i = 0;
  while (i < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    int32_t node = 0;
    int32_t best_value = -1;
    size_t best_end = 0;
    for (size_t j = i; j < text.size(); ++j) {
      auto it = edges_.find(EdgeKey(node, static_cast<unsigned char>(text[j])));
      if (it == edges_.end()) break;
      node = it->second;
      if (nodes_[node].value >= 0) {
        best_value = nodes_[node].value;
        best_end = j + 1;
      }
    }
    if (best_value >= 0) {
      matches.push_back(Match{i, best_end, best_value});
      i = best_end;
    } else {
      ++i;
    }
  }
  return matches;
}

absl::Status AddedVocabulary::Build(std::vector<AddedToken> tokens, const Normalizer* normalizer) {
  tokens_ = std::move(tokens);
  // `tokenizers` lists special tokens before the others when it builds its
  // automata; order only matters for identical contents.
  std::vector<int32_t> order(tokens_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_partition(order.begin(), order.end(),
                        [this](int32_t i) { return tokens_[i].special; });
  for (int32_t index : order) {
    const AddedToken& token = tokens_[index];
    if (token.content.empty()) continue;
    if (!token.normalized) {
      raw_matcher_.Add(token.content, index);
      continue;
    }
    std::string normalized = token.content;
    if (normalizer != nullptr) {
      if (absl::Status s = normalizer->Normalize(&normalized); !s.ok()) return s;
    }
    normalized_matcher_.Add(normalized, index);
  }
  return absl::OkStatus();
}

std::vector<AddedVocabulary::Span> AddedVocabulary::FindMatches(
    std::string_view sentence, const LeftmostLongestMatcher& matcher) const {
  std::vector<Span> splits;
  size_t start_offset = 0;
  for (const auto& match : matcher.FindAll(sentence)) {
    size_t start = match.begin;
    size_t stop = match.end;
    const AddedToken& token = tokens_[match.value];
    if (token.single_word) {
      const bool start_space = start == 0 || !IsWordChar(LastChar(sentence.substr(0, start)));
      const bool stop_space =
          stop == sentence.size() || !IsWordChar(FirstChar(sentence.substr(stop)));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      // Whitespace an earlier match already consumed stays with it.
      start = std::max(TrailingSpaceStart(sentence.substr(0, start)), start_offset);
    }
    if (token.rstrip) stop += LeadingSpaceLength(sentence.substr(stop));
    if (start_offset < start) splits.push_back(Span{start_offset, start, -1});
    splits.push_back(Span{start, stop, match.value});
    start_offset = stop;
  }
  if (start_offset != sentence.size()) splits.push_back(Span{start_offset, sentence.size(), -1});
  return splits;
}

absl::Status AddedVocabulary::ExtractAndNormalize(std::string_view text,
                                                  const Normalizer* normalizer,
                                                  std::vector<AddedSplit>* out) const {
  out->clear();
  for (const Span& raw : FindMatches(text, raw_matcher_)) {
    if (raw.end <= raw.begin) continue;
    if (raw.token_index >= 0) {
      out->push_back(AddedSplit{tokens_[raw.token_index].id, Piece{}});
      continue;
    }
    std::string piece(text.substr(raw.begin, raw.end - raw.begin));
    if (normalizer != nullptr) {
      if (absl::Status s = normalizer->Normalize(&piece); !s.ok()) return s;
    }
    const bool at_origin = raw.begin == 0;
    if (normalized_matcher_.empty()) {
      if (!piece.empty()) out->push_back(AddedSplit{-1, Piece{std::move(piece), at_origin}});
      continue;
    }
    for (const Span& span : FindMatches(piece, normalized_matcher_)) {
      if (span.end <= span.begin) continue;
      if (span.token_index >= 0) {
        out->push_back(AddedSplit{tokens_[span.token_index].id, Piece{}});
      } else {
        out->push_back(AddedSplit{-1, Piece{piece.substr(span.begin, span.end - span.begin),
                                            at_origin && span.begin == 0}});
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace sluice::tokenizer::internal
