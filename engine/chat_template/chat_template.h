// Chat templates: the Jinja `chat_template` a Hugging Face tokenizer ships, rendered as
// transformers' apply_chat_template renders it (jinja2 with trim_blocks, lstrip_blocks,
// loopcontrols, tojson with ensure_ascii=False, raise_exception, strftime_now), so the
// prompt string and its token ids are byte-identical to Python's.
//
// Only the Jinja subset real chat templates use is implemented; anything outside it
// fails to load or render with an error naming the construct and its line and column.
// It never renders wrongly.
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_CHAT_TEMPLATE_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_CHAT_TEMPLATE_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace sluice::chat {

struct ChatTemplateInputs {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();  // OpenAI-style messages
  nlohmann::ordered_json tools;                    // null: no tools; else an array of tool definitions
  bool add_generation_prompt = true;
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // chat_template_kwargs, e.g. enable_thinking
};

class ChatTemplate {
 public:
  // From a model directory: `chat_template.jinja` beside tokenizer_config.json wins, else
  // tokenizer_config.json's "chat_template" (a string, or a list of {name, template}, of
  // which "default" is used, or "tool_use" when the request has tools, as transformers
  // picks). bos_token / eos_token (and unk/sep/pad/cls/mask) come from
  // tokenizer_config.json (or special_tokens_map.json). NOT_FOUND when the model ships
  // no template; a template outside the supported subset fails here when jinja2 would
  // fail to compile it (unknown filter or test), otherwise when the construct is reached.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> Load(const std::string& model_dir);
  // From source text (tests, fuzzing). Parse errors are INVALID_ARGUMENT with position.
  // An empty bos_token / eos_token leaves that variable undefined in the template (as
  // transformers does for a tokenizer without one, e.g. Qwen3's bos_token).
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> FromSource(const std::string& source,
                                                                  const std::string& bos_token,
                                                                  const std::string& eos_token);
  virtual ~ChatTemplate() = default;

  // Renders the prompt. raise_exception in the template is INVALID_ARGUMENT with its
  // message; constructs outside the subset are UNIMPLEMENTED naming them.
  //
  // Other failures: a template that fails in Python too (TypeError, an undefined
  // value used in arithmetic, ...) is INVALID_ARGUMENT with "line L:C"; a render that
  // hits a limit (output over 64 MiB, 20M evaluation steps, macros nested over 64,
  // values nested over 256) is RESOURCE_EXHAUSTED.
  //
  // The inputs are prepared as transformers prepares them: message keys whose value
  // is null are dropped, and a message's reasoning (reasoning_content, thinking or
  // reasoning) is also visible under `thinking` and `reasoning_content`. `extra`
  // (chat_template_kwargs) adds template variables and, as in vLLM, may override
  // add_generation_prompt, tools and documents; it may not set messages,
  // chat_template or tokenize (INVALID_ARGUMENT). The template also sees
  // `documents` (null) and the special tokens (bos_token, eos_token, unk_token,
  // pad_token, ... when set), which `extra` may override.
  //
  // Thread-safe (each call has its own interpreter); needs about 0.5 MiB of stack at
  // the nesting limits, so call it on threads with at least 1 MiB.
  virtual absl::StatusOr<std::string> Render(const ChatTemplateInputs& inputs) const = 0;

  // The special-token variables the template sees, e.g. {"eos_token", "<|im_end|>"}.
  virtual const std::vector<std::pair<std::string, std::string>>& special_tokens() const {
    static const std::vector<std::pair<std::string, std::string>> kNone;
    return kNone;
  }
};

}  // namespace sluice::chat

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_CHAT_TEMPLATE_H_
