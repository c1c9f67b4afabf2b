#include "engine/tokenizer/pre_tokenizers.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/tokenizer/json_util.h"
#include "engine/tokenizer/regex.h"
#include "engine/tokenizer/unicode.h"

namespace sluice::tokenizer::internal {
namespace {

using Range = std::pair<size_t, size_t>;

// `tokenizers`' SplitDelimiterBehavior.
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<Behavior> ParseBehavior(const std::string& name) {
  if (name == "Removed") return Behavior::kRemoved;
  if (name == "Isolated") return Behavior::kIsolated;
  if (name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (name == "Contiguous") return Behavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat("unknown split behavior \"", name, "\""));
}

struct Segment {
  size_t begin, end;
  bool is_match;
};

// Port of NormalizedString::split: turns the matches into segments covering
// the whole text, applies the behavior and appends the non-empty results.
void SplitByMatches(const Piece& piece, const std::vector<Range>& matches, bool invert,
                    Behavior behavior, std::vector<Piece>* out) {
  const std::string& text = piece.text;
  std::vector<Segment> segments;
  segments.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev != b) segments.push_back({prev, b, invert});
    segments.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != text.size()) segments.push_back({prev, text.size(), invert});

  // (range, remove) pairs, as in the Rust code.
  std::vector<std::pair<Range, bool>> splits;
  splits.reserve(segments.size());
  switch (behavior) {
    case Behavior::kIsolated:
      for (const Segment& s : segments) splits.push_back({{s.begin, s.end}, false});
      break;
    case Behavior::kRemoved:
      for (const Segment& s : segments) splits.push_back({{s.begin, s.end}, s.is_match});
      break;
    case Behavior::kContiguous: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match == previous_match && !splits.empty()) {
          splits.back().first.second = s.end;
        } else {
          splits.push_back({{s.begin, s.end}, false});
        }
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && !splits.empty()) {
          splits.back().first.second = s.end;
        } else {
          splits.push_back({{s.begin, s.end}, false});
        }
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_match && !previous_match && !splits.empty()) {
          splits.back().first.first = it->begin;
        } else {
          splits.push_back({{it->begin, it->end}, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  for (const auto& [range, remove] : splits) {
    if (remove || range.first == range.second) continue;
    out->push_back(Piece{text.substr(range.first, range.second - range.first),
                         piece.at_origin && range.first == 0});
  }
}

// Every character satisfying pred is its own match (Rust's `Fn(char) -> bool`
// pattern).
template <typename Pred>
void CharMatches(const std::string& text, Pred pred, std::vector<Range>* matches) {
  matches->clear();
  for (size_t i = 0; i < text.size();) {
    char32_t cp;
    const size_t len = DecodeUtf8(text, i, &cp);
    if (pred(cp)) matches->emplace_back(i, i + len);
    i += len;
  }
}

// Applies fn(piece, &out) to each piece and swaps in the result.
template <typename Fn>
absl::Status ForEachPiece(std::vector<Piece>* pieces, Fn fn) {
  std::vector<Piece> out;
  out.reserve(pieces->size() * 2);
  for (const Piece& piece : *pieces) {
    if (absl::Status s = fn(piece, &out); !s.ok()) return s;
  }
  pieces->swap(out);
  return absl::OkStatus();
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::string literal, std::unique_ptr<Regex> regex, Behavior behavior,
                    bool invert)
      : literal_(std::move(literal)),
        regex_(std::move(regex)),
        behavior_(behavior),
        invert_(invert) {}

  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Range> matches;
    return ForEachPiece(pieces, [&](const Piece& piece, std::vector<Piece>* out) {
      if (regex_ != nullptr) {
        if (absl::Status s = regex_->FindAll(piece.text, &matches); !s.ok()) return s;
      } else {
        matches.clear();
        if (!literal_.empty()) {
          for (size_t pos = piece.text.find(literal_); pos != std::string::npos;
               pos = piece.text.find(literal_, pos + literal_.size())) {
            matches.emplace_back(pos, pos + literal_.size());
          }
        }
      }
      SplitByMatches(piece, matches, invert_, behavior_, out);
      return absl::OkStatus();
    });
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenization regex, used when ByteLevel has use_regex=true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    if (add_prefix_space_ || regex_ != nullptr) {
      std::vector<Range> matches;
      absl::Status status = ForEachPiece(pieces, [&](const Piece& piece, std::vector<Piece>* out) {
        const bool prepend = add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ');
        Piece prefixed{prepend ? absl::StrCat(" ", piece.text) : piece.text, piece.at_origin};
        if (regex_ == nullptr) {
          out->push_back(std::move(prefixed));
          return absl::OkStatus();
        }
        if (absl::Status s = regex_->FindAll(prefixed.text, &matches); !s.ok()) return s;
        SplitByMatches(prefixed, matches, /*invert=*/false, Behavior::kIsolated, out);
        return absl::OkStatus();
      });
      if (!status.ok()) return status;
    }
    // Map every byte to its printable stand-in so that BPE sees only
    // vocabulary characters.
    std::string mapped;
    for (Piece& piece : *pieces) {
      mapped.clear();
      mapped.reserve(piece.text.size() * 2);
      for (unsigned char c : piece.text) mapped.append(ByteToUnicodeUtf8(c));
      piece.text.swap(mapped);
    }
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

enum class PrependScheme { kFirst, kAlways, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(replacement), scheme_(scheme), split_(split) {
    AppendUtf8(replacement, &replacement_utf8_);
  }

  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Range> matches;
    return ForEachPiece(pieces, [&](const Piece& piece, std::vector<Piece>* out) {
      Piece p{absl::StrReplaceAll(piece.text, {{" ", replacement_utf8_}}), piece.at_origin};
      const bool starts_with_replacement = p.text.rfind(replacement_utf8_, 0) == 0;
      if (!starts_with_replacement && (scheme_ == PrependScheme::kAlways ||
                                       (scheme_ == PrependScheme::kFirst && piece.at_origin))) {
        p.text.insert(0, replacement_utf8_);
      }
      if (!split_) {
        if (!p.text.empty()) out->push_back(std::move(p));
        return absl::OkStatus();
      }
      CharMatches(
          p.text, [this](char32_t cp) { return cp == replacement_; }, &matches);
      SplitByMatches(p, matches, /*invert=*/false, Behavior::kMergedWithNext, out);
      return absl::OkStatus();
    });
  }

 private:
  char32_t replacement_;
  std::string replacement_utf8_;
  PrependScheme scheme_;
  bool split_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Range> matches;
    return ForEachPiece(pieces, [&](const Piece& piece, std::vector<Piece>* out) {
      CharMatches(piece.text, IsNumeric, &matches);
      SplitByMatches(piece, matches, /*invert=*/false,
                     individual_ ? Behavior::kIsolated : Behavior::kContiguous, out);
      return absl::OkStatus();
    });
  }

 private:
  bool individual_;
};

class WhitespaceSplitPreTokenizer final : public PreTokenizer {
 public:
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Range> matches;
    return ForEachPiece(pieces, [&](const Piece& piece, std::vector<Piece>* out) {
      CharMatches(piece.text, IsWhitespace, &matches);
      SplitByMatches(piece, matches, /*invert=*/false, Behavior::kRemoved, out);
      return absl::OkStatus();
    });
  }
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    for (const auto& part : parts_) {
      if (absl::Status s = part->PreTokenize(pieces); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

absl::StatusOr<char32_t> SingleChar(const std::string& s, std::string_view what) {
  if (s.empty() || !IsValidUtf8(s)) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), " must be one character"));
  }
  char32_t cp;
  if (DecodeUtf8(s, 0, &cp) != s.size()) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), " must be one character"));
  }
  return cp;
}

}  // namespace

absl::StatusOr<char32_t> ParseSingleChar(const std::string& s, std::string_view what) {
  return SingleChar(s, what);
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const nlohmann::json& json) {
  if (json.is_null()) return std::unique_ptr<PreTokenizer>();
  absl::StatusOr<std::string> type = GetString(json, "type");
  if (!type.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("pre_tokenizer: ", type.status().message()));
  }
  if (*type == "Split") {
    absl::StatusOr<PatternSpec> pattern = GetPattern(json);
    if (!pattern.ok()) return pattern.status();
    absl::StatusOr<Behavior> behavior = ParseBehavior(GetStringOr(json, "behavior", ""));
    if (!behavior.ok()) return behavior.status();
    std::unique_ptr<Regex> regex;
    if (pattern->is_regex) {
      absl::StatusOr<std::unique_ptr<Regex>> compiled = Regex::Compile(pattern->text);
      if (!compiled.ok()) return compiled.status();
      regex = *std::move(compiled);
    }
    return std::make_unique<SplitPreTokenizer>(pattern->text, std::move(regex), *behavior,
                                               GetBoolOr(json, "invert", false));
  }
  if (*type == "ByteLevel") {
    std::unique_ptr<Regex> regex;
    if (GetBoolOr(json, "use_regex", true)) {
      absl::StatusOr<std::unique_ptr<Regex>> compiled = Regex::Compile(kGpt2Pattern);
      if (!compiled.ok()) return compiled.status();
      regex = *std::move(compiled);
    }
    return std::make_unique<ByteLevelPreTokenizer>(GetBoolOr(json, "add_prefix_space", true),
                                                   std::move(regex));
  }
  if (*type == "Metaspace") {
    absl::StatusOr<char32_t> replacement =
        SingleChar(GetStringOr(json, "replacement", "\u2581"), "Metaspace replacement");
    if (!replacement.ok()) return replacement.status();
    PrependScheme scheme;
    if (json.contains("prepend_scheme")) {
      const std::string name = GetStringOr(json, "prepend_scheme", "");
      if (name == "first") {
        scheme = PrependScheme::kFirst;
      } else if (name == "always") {
        scheme = PrependScheme::kAlways;
      } else if (name == "never") {
        scheme = PrependScheme::kNever;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown prepend_scheme \"", name, "\""));
      }
    } else {
      // Files written before prepend_scheme existed used add_prefix_space.
      scheme = GetBoolOr(json, "add_prefix_space", true) ? PrependScheme::kAlways
                                                         : PrependScheme::kNever;
    }
    return std::make_unique<MetaspacePreTokenizer>(*replacement, scheme,
                                                   GetBoolOr(json, "split", true));
  }
  if (*type == "Digits") {
    return std::make_unique<DigitsPreTokenizer>(GetBoolOr(json, "individual_digits", false));
  }
  if (*type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPreTokenizer>();
  if (*type == "Whitespace") {
    // `tokenizers` runs \w+|[^\w\s]+ through the Rust regex crate here, not
    // Oniguruma: its \w adds Join_Control (ZWJ/ZWNJ) and lacks Oniguruma's
    // Latin-1 extras, so spell the classes out.
    absl::StatusOr<std::unique_ptr<Regex>> compiled =
        Regex::Compile(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]+)"
                       R"(|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}\p{White_Space}]+)");
    if (!compiled.ok()) return compiled.status();
    // `tokenizers` splits with Invert(pattern) + Removed: keep only matches.
    return std::make_unique<SplitPreTokenizer>("", *std::move(compiled), Behavior::kRemoved,
                                               /*invert=*/true);
  }
  if (*type == "Sequence") {
    auto parts = ParseSequenceParts<PreTokenizer>(json, "pretokenizers", "pre_tokenizer", [](const nlohmann::json& item) { return PreTokenizerFromJson(item); });
    if (!parts.ok()) return parts.status();
    return std::make_unique<SequencePreTokenizer>(*std::move(parts));
  }
  return absl::UnimplementedError(
      absl::StrCat("pre_tokenizer type \"", *type, "\" is not supported"));
}

}  // namespace sluice::tokenizer::internal
