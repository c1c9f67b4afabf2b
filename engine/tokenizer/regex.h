// PCRE2 (UTF + UCP + JIT) wrapper standing in for the Oniguruma regexes that
// `tokenizers` uses for Split pre-tokenizers and Replace patterns (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_REGEX_H_
#define SLUICE_ENGINE_TOKENIZER_REGEX_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sluice::tokenizer::internal {

class Regex {
 public:
  // Compiles a pattern; InvalidArgument with PCRE2's message on syntax errors.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Replaces *matches with the [begin, end) byte ranges of all successive
  // non-overlapping matches in text, which must be valid UTF-8. An empty match
  // is reported and the search resumes one character later, as Oniguruma's
  // find_iter does. Thread-safe.
  absl::Status FindAll(std::string_view text,
                       std::vector<std::pair<size_t, size_t>>* matches) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*, kept opaque so pcre2.h stays private
  bool jit_ = false;
};

// The Replace component of tokenizer.json (normalizer and decoder alike): every match
// of a literal string or of a regex is replaced by `content`.
class Replacement {
 public:
  // Exactly one of `literal` (non-empty) or `regex` is used; regex wins when set.
  Replacement(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}
  absl::Status Apply(std::string* text) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_REGEX_H_
