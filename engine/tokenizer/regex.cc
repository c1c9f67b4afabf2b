#include "engine/tokenizer/regex.h"

#include "absl/strings/str_replace.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"

namespace sluice::tokenizer::internal {
namespace {

// Per-thread match state. One ovector pair suffices because only the whole
// match is used, and the JIT stack is enlarged because the default 32 KiB can
// run out on long runs of backtracking input such as `\s+(?!\S)` over a
// megabyte of spaces.
struct ThreadMatchState {
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* match_context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  ThreadMatchState() {
    match_data = pcre2_match_data_create(1, nullptr);
    match_context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (match_context != nullptr && jit_stack != nullptr) {
      pcre2_jit_stack_assign(match_context, nullptr, jit_stack);
    }
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(match_context);
    pcre2_match_data_free(match_data);
  }
};

ThreadMatchState& State() {
  thread_local ThreadMatchState state;
  return state;
}

// Oniguruma's Unicode \w and \s differ from PCRE2's UCP ones (PCRE2 10.42:
// \w = L|N|_ , \s includes U+180E). These classes reproduce what
// `tokenizers`' Oniguruma matches; they were derived by probing every code
// point through tokenizers 0.23: \w is Alphabetic|M|Nd|Pc plus six Latin-1
// numbers, \s is exactly the White_Space property.
constexpr char kOnigWordItems[] =
    "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
constexpr char kOnigSpaceItems[] =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

// Rewrites \w \W \s \S into the explicit classes above. Inside a character
// class only the positive forms can be expanded; a negated \W or \S there
// keeps PCRE2's meaning (no known tokenizer uses one).
std::string TranslateOnigPattern(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  size_t class_start = 0;  // index in pattern just after '[' or '[^'
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      const bool word = e == 'w' || e == 'W';
      const bool space = e == 's' || e == 'S';
      if (word || space) {
        const char* items = word ? kOnigWordItems : kOnigSpaceItems;
        const bool negated = e == 'W' || e == 'S';
        if (!in_class) {
          out.append(negated ? "[^" : "[").append(items).append("]");
          ++i;
          continue;
        }
        if (!negated) {
          out.append(items);
          ++i;
          continue;
        }
      }
      out.push_back(c);
      out.push_back(e);
      ++i;
      continue;
    }
    if (!in_class) {
      if (c == '[') {
        in_class = true;
        out.push_back(c);
        if (i + 1 < pattern.size() && pattern[i + 1] == '^') {
          out.push_back('^');
          ++i;
        }
        class_start = i + 1;
        continue;
      }
      out.push_back(c);
      continue;
    }
    if (c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      // POSIX class such as [:alpha:]; copy through its closing ":]".
      const size_t end = pattern.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(pattern.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    // A ']' right after the opening bracket is a literal member.
    if (c == ']' && i != class_start) in_class = false;
    out.push_back(c);
  }
  return out;
}

std::string ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // UCP makes \s, \w, \d and POSIX classes Unicode-aware like Oniguruma's.
  const std::string translated = TranslateOnigPattern(pattern);
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("bad regex \"", AsAbsl(pattern), "\" at offset ",
                                                   error_offset, ": ", ErrorMessage(error_code)));
  }
  std::unique_ptr<Regex> regex(new Regex());
  regex->pattern_ = std::string(pattern);
  regex->code_ = code;
  // JIT is an optimisation only; the interpreter gives the same matches.
  regex->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::FindAll(std::string_view text,
                            std::vector<std::pair<size_t, size_t>>* matches) const {
  matches->clear();
  ThreadMatchState& state = State();
  if (state.match_data == nullptr) return absl::ResourceExhaustedError("pcre2 match data");
  auto* code = static_cast<pcre2_code*>(code_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  while (offset <= text.size()) {
    // The text was validated once up front; rechecking per call would make
    // matching quadratic on long inputs.
    const int rc = jit_ ? pcre2_jit_match(code, subject, text.size(), offset, PCRE2_NO_UTF_CHECK,
                                          state.match_data, state.match_context)
                        : pcre2_match(code, subject, text.size(), offset, PCRE2_NO_UTF_CHECK,
                                      state.match_data, state.match_context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      return absl::ResourceExhaustedError(absl::StrCat("regex match failed: ", ErrorMessage(rc)));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data);
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    matches->emplace_back(begin, end);
    if (end > begin) {
      offset = end;
    } else {
      if (end >= text.size()) break;
      offset = end + Utf8SequenceLength(static_cast<uint8_t>(text[end]));
    }
  }
  return absl::OkStatus();
}

absl::Status Replacement::Apply(std::string* text) const {
  if (regex_ == nullptr) {
    if (!literal_.empty() && text->find(literal_) != std::string::npos) {
      *text = absl::StrReplaceAll(*text, {{literal_, content_}});
    }
    return absl::OkStatus();
  }
  std::vector<std::pair<size_t, size_t>> matches;
  if (absl::Status s = regex_->FindAll(*text, &matches); !s.ok()) return s;
  if (matches.empty()) return absl::OkStatus();
  std::string out;
  size_t last = 0;
  for (const auto& [b, e] : matches) {
    out.append(*text, last, b - last);
    out.append(content_);
    last = e;
  }
  out.append(*text, last, std::string::npos);
  *text = std::move(out);
  return absl::OkStatus();
}

}  // namespace sluice::tokenizer::internal
