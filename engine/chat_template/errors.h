// Errors inside the chat template engine. The lexer, parser and interpreter throw
// TemplateError; ChatTemplate's public functions catch it and return an absl::Status,
// so no exception leaves engine/chat_template.
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_ERRORS_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_ERRORS_H_

#include <string>
#include <utility>

#include "absl/status/status.h"

namespace sluice::chat::internal {

struct SourcePos {
  int line = 0;  // 1-based; 0: unknown
  int col = 0;   // 1-based, in code points
};

struct TemplateError {
  absl::StatusCode code;
  std::string message;
  SourcePos pos;
};

// INVALID_ARGUMENT: the template is malformed, or rendering it fails the way it
// fails in Python (TypeError, UndefinedError, raise_exception).
[[noreturn]] inline void ThrowInvalid(std::string message, SourcePos pos = {}) {
  throw TemplateError{absl::StatusCode::kInvalidArgument, std::move(message), pos};
}
// UNIMPLEMENTED: a construct outside the supported subset.
[[noreturn]] inline void ThrowUnimplemented(std::string message, SourcePos pos = {}) {
  throw TemplateError{absl::StatusCode::kUnimplemented, std::move(message), pos};
}
// RESOURCE_EXHAUSTED: a render limit (depth, output size, work) was reached.
[[noreturn]] inline void ThrowExhausted(std::string message, SourcePos pos = {}) {
  throw TemplateError{absl::StatusCode::kResourceExhausted, std::move(message), pos};
}

}  // namespace sluice::chat::internal

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_ERRORS_H_
