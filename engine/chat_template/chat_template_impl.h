// The implementation behind ChatTemplate (internal; tests and the fuzzer use it to
// set render limits).
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_CHAT_TEMPLATE_IMPL_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_CHAT_TEMPLATE_IMPL_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat_template/ast.h"
#include "engine/chat_template/chat_template.h"
#include "engine/chat_template/interpreter.h"

namespace sluice::chat::internal {

class ChatTemplateImpl : public ChatTemplate {
 public:
  struct Named {
    std::string name;  // "default", "tool_use", ...
    std::unique_ptr<Template> tmpl;
  };

  ChatTemplateImpl(std::vector<Named> templates, std::vector<std::pair<std::string, std::string>> special_tokens)
      : templates_(std::move(templates)), special_tokens_(std::move(special_tokens)) {}

  absl::StatusOr<std::string> Render(const ChatTemplateInputs& inputs) const override;
  const std::vector<std::pair<std::string, std::string>>& special_tokens() const override {
    return special_tokens_;
  }

  void set_limits(const Limits& limits) { limits_ = limits; }

 private:
  std::vector<Named> templates_;
  std::vector<std::pair<std::string, std::string>> special_tokens_;
  Limits limits_;
};

// Parses one template source; parse errors become INVALID_ARGUMENT / UNIMPLEMENTED
// statuses with "line L:C" positions.
absl::StatusOr<std::unique_ptr<Template>> ParseToStatus(const std::string& source);

}  // namespace sluice::chat::internal

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_CHAT_TEMPLATE_IMPL_H_
