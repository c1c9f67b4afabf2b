// Tokenizer for the Jinja subset, following jinja2's lexer rule by rule with the
// environment transformers uses (trim_blocks=True, lstrip_blocks=True, default
// delimiters, keep_trailing_newline=False): newlines normalized to "\n", the final
// newline dropped, `{%-`/`-%}` stripping, `+` opting out, trim_blocks eating the
// newline after a block or comment tag, lstrip_blocks eating the indentation
// before one, `{% raw %}`, comments dropped.
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_LEXER_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_LEXER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/chat_template/errors.h"

namespace sluice::chat::internal {

enum class TokenType : uint8_t {
  kData,        // template text
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,
  kInteger,
  kFloat,
  kOperator,
  kEof,
};

struct Token {
  TokenType type;
  std::string text;  // data, name, operator, or the decoded string literal
  int64_t int_value = 0;
  double float_value = 0;
  SourcePos pos;
};

// Throws TemplateError (INVALID_ARGUMENT) on malformed input: invalid UTF-8, an
// unterminated comment or raw block, an unexpected character, unbalanced brackets.
std::vector<Token> Tokenize(std::string_view source);

const char* TokenTypeName(TokenType type);

}  // namespace sluice::chat::internal

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_LEXER_H_
