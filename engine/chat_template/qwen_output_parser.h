// Splits the generated text of a Qwen-family chat turn into reasoning, content and tool
// calls, incrementally: text deltas in, {reasoning delta, content delta, completed tool
// calls} out. A suffix that could still be the start of a tag is held back until the
// next delta decides it, so a tag split across tokens never leaks into either field.
//
// The format (Qwen3, Qwen3-MoE, Qwen3-Next, Qwen3.5 chat templates):
//   [<think>] reasoning </think> content <tool_call>{"name": ..., "arguments": {...}}</tool_call> ...
// Reasoning follows vLLM's qwen3 reasoning parser: a <think> the model writes itself is
// dropped; everything before </think> is reasoning, everything after it content; with
// thinking on and no </think> yet (a truncated turn) it is all reasoning. Where the turn
// starts is the caller's call (Start below): inside the think block when the template put
// <think> into the prompt (Qwen3.5, Qwen3-*-Thinking-2507), plain content when thinking is
// off (enable_thinking=false, the prompt ends in an empty think block), and otherwise
// (the original Qwen3 template) reasoning only if the turn opens with <think> — unlike
// vLLM, which would file a whole non-thinking answer (Qwen3-*-Instruct-2507) as reasoning.
//
// Tool calls are Hermes-style JSON blocks, parsed only in content (a <tool_call> inside
// the reasoning is reasoning text). A block is emitted whole once its </tool_call>
// arrives, so its arguments are known to be valid JSON; a block whose body is not a JSON
// object with a string "name" is returned as content, tags included, and counted in
// invalid_tool_calls() — never dropped. So is a block the turn ends inside. Whitespace
// between and after tool calls is not content.
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_QWEN_OUTPUT_PARSER_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_QWEN_OUTPUT_PARSER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::chat {

struct ParsedToolCall {
  int32_t index = 0;      // 0, 1, ... in the order the turn made them
  std::string name;
  std::string arguments;  // JSON text of the arguments (an object, as the model wrote it, re-serialized)
};

struct ParsedDelta {
  std::string reasoning;
  std::string content;
  std::vector<ParsedToolCall> tool_calls;
  bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
};

class QwenOutputParser {
 public:
  enum class Start {
    kReasoning,  // the prompt opened the think block
    kContent,    // thinking is off: no reasoning parsing at all
    kDetect,     // reasoning only if the turn opens with <think> (leading whitespace allowed)
  };
  struct Options {
    Start start = Start::kDetect;
    bool tool_calls = false;  // parse <tool_call> blocks (the request offered tools)
  };

  explicit QwenOutputParser(Options options);

  // Where a turn starts, from the rendered prompt: the template opened <think> (kReasoning),
  // closed an empty one (kContent), or neither (kDetect). `thinking_disabled`: the request
  // said enable_thinking=false.
  static Start StartFor(std::string_view prompt, bool thinking_disabled);

  // Adds generated text; returns what is now decided.
  ParsedDelta Push(std::string_view text);
  // End of the turn: whatever was held back.
  ParsedDelta Finish();

  int32_t tool_calls() const { return next_index_; }
  int32_t invalid_tool_calls() const { return invalid_; }
  // The turn ended inside a <tool_call> block (returned as content, counted as invalid).
  bool unterminated_tool_call() const { return unterminated_; }

 private:
  enum class State { kDetect, kReasoning, kContent, kToolCall };
  void Drain(bool final, ParsedDelta* out);
  void EmitContent(std::string_view text, ParsedDelta* out);
  void CloseToolCall(std::string_view body, ParsedDelta* out);

  Options options_;
  State state_;
  std::string buf_;         // undecided text of the current state
  size_t scan_from_ = 0;    // kToolCall: where the search for </tool_call> resumes
  bool after_tool_call_ = false;
  std::string pending_space_;  // whitespace after a tool call, content only if more follows
  int32_t next_index_ = 0;
  int32_t invalid_ = 0;
  bool unterminated_ = false;
};

}  // namespace sluice::chat

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_QWEN_OUTPUT_PARSER_H_
