// Parser for the Jinja subset, following jinja2's grammar (parser.py): operator
// precedence, filters and tests binding tighter than arithmetic, `a if b else c`,
// implicit tuples, slices, keyword arguments, and the statements listed in
// README.md. Tags outside the subset (extends, include, import, block, ...) fail
// with UNIMPLEMENTED naming the tag and its position.
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_PARSER_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_PARSER_H_

#include <memory>
#include <string_view>

#include "engine/chat_template/ast.h"

namespace sluice::chat::internal {

// Throws TemplateError.
std::unique_ptr<Template> ParseTemplate(std::string_view source);

}  // namespace sluice::chat::internal

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_PARSER_H_
