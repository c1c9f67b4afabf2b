#include "engine/tokenizer/normalizers.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

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

enum class UnicodeForm { kNfc, kNfkc, kNfd, kNfkd };

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(const icu::Normalizer2* normalizer) : normalizer_(normalizer) {}
  absl::Status Normalize(std::string* text) const override {
    UErrorCode status = U_ZERO_ERROR;
    // Most text is already normalized; checking first avoids a copy.
    if (normalizer_->isNormalizedUTF8(*text, status) && U_SUCCESS(status)) {
      return absl::OkStatus();
    }
    status = U_ZERO_ERROR;
    std::string out;
    out.reserve(text->size() + 8);
    icu::StringByteSink<std::string> sink(&out);
    normalizer_->normalizeUTF8(0, *text, sink, nullptr, status);
    if (U_FAILURE(status)) {
      return absl::InternalError(absl::StrCat("ICU normalization failed: ", u_errorName(status)));
    }
    *text = std::move(out);
    return absl::OkStatus();
  }

 private:
  const icu::Normalizer2* normalizer_;  // ICU-owned singleton
};

absl::StatusOr<std::unique_ptr<Normalizer>> MakeUnicodeNormalizer(UnicodeForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case UnicodeForm::kNfc:
      n = icu::Normalizer2::getNFCInstance(status);
      break;
    case UnicodeForm::kNfkc:
      n = icu::Normalizer2::getNFKCInstance(status);
      break;
    case UnicodeForm::kNfd:
      n = icu::Normalizer2::getNFDInstance(status);
      break;
    case UnicodeForm::kNfkd:
      n = icu::Normalizer2::getNFKDInstance(status);
      break;
  }
  if (U_FAILURE(status) || n == nullptr) {
    return absl::InternalError(absl::StrCat("ICU normalizer unavailable: ", u_errorName(status)));
  }
  return std::make_unique<UnicodeNormalizer>(n);
}

// Rust's char::to_lowercase applied per character: ICU's simple mapping plus
// the one unconditional multi-character mapping (U+0130). Unlike
// str::to_lowercase it has no final-sigma context, like `tokenizers`.
class LowercaseNormalizer final : public Normalizer {
 public:
  absl::Status Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    for (size_t i = 0; i < text->size();) {
      char32_t cp;
      i += DecodeUtf8(*text, i, &cp);
      if (cp == 0x130) {
        AppendUtf8(U'i', &out);
        AppendUtf8(0x307, &out);
      } else {
        AppendUtf8(static_cast<char32_t>(u_tolower(static_cast<UChar32>(cp))), &out);
      }
    }
    *text = std::move(out);
    return absl::OkStatus();
  }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::Status Normalize(std::string* text) const override {
    size_t begin = 0;
    size_t end = text->size();
    if (left_) {
      while (begin < end) {
        char32_t cp;
        const size_t len = DecodeUtf8(*text, begin, &cp);
        if (!IsWhitespace(cp)) break;
        begin += len;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<uint8_t>((*text)[start]) & 0xC0) == 0x80) --start;
        char32_t cp;
        DecodeUtf8(*text, start, &cp);
        if (!IsWhitespace(cp)) break;
        end = start;
      }
    }
    *text = text->substr(begin, end - begin);
    return absl::OkStatus();
  }

 private:
  bool left_, right_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::Status Normalize(std::string* text) const override {
    // `tokenizers` only prepends to non-empty pieces.
    if (!text->empty()) text->insert(0, prefix_);
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : replacement_(std::move(literal), std::move(regex), std::move(content)) {}
  absl::Status Normalize(std::string* text) const override { return replacement_.Apply(text); }

 private:
  Replacement replacement_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  absl::Status Normalize(std::string* text) const override {
    for (const auto& part : parts_) {
      if (absl::Status s = part->Normalize(text); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const nlohmann::json& json) {
  if (json.is_null()) return std::unique_ptr<Normalizer>();
  absl::StatusOr<std::string> type = GetString(json, "type");
  if (!type.ok())
    return absl::InvalidArgumentError(absl::StrCat("normalizer: ", type.status().message()));
  if (*type == "NFC") return MakeUnicodeNormalizer(UnicodeForm::kNfc);
  if (*type == "NFKC") return MakeUnicodeNormalizer(UnicodeForm::kNfkc);
  if (*type == "NFD") return MakeUnicodeNormalizer(UnicodeForm::kNfd);
  if (*type == "NFKD") return MakeUnicodeNormalizer(UnicodeForm::kNfkd);
  if (*type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (*type == "Strip") {
    return std::make_unique<StripNormalizer>(GetBoolOr(json, "strip_left", true),
                                             GetBoolOr(json, "strip_right", true));
  }
  if (*type == "Prepend") {
    absl::StatusOr<std::string> prepend = GetString(json, "prepend");
    if (!prepend.ok()) return prepend.status();
    return std::make_unique<PrependNormalizer>(*std::move(prepend));
  }
  if (*type == "Replace") {
    absl::StatusOr<PatternSpec> pattern = GetPattern(json);
    if (!pattern.ok()) return pattern.status();
    absl::StatusOr<std::string> content = GetString(json, "content");
    if (!content.ok()) return content.status();
    std::unique_ptr<Regex> regex;
    if (pattern->is_regex) {
      absl::StatusOr<std::unique_ptr<Regex>> compiled = Regex::Compile(pattern->text);
      if (!compiled.ok()) return compiled.status();
      regex = *std::move(compiled);
    }
    return std::make_unique<ReplaceNormalizer>(pattern->text, std::move(regex),
                                               *std::move(content));
  }
  if (*type == "Sequence") {
    auto parts = ParseSequenceParts<Normalizer>(json, "normalizers", "normalizer", [](const nlohmann::json& item) { return NormalizerFromJson(item); });
    if (!parts.ok()) return parts.status();
    return std::make_unique<SequenceNormalizer>(*std::move(parts));
  }
  return absl::UnimplementedError(absl::StrCat("normalizer type \"", *type, "\" is not supported"));
}

}  // namespace sluice::tokenizer::internal
