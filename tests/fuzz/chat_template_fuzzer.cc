// Fuzz target: the chat template engine (engine/chat_template) on arbitrary template
// source, rendered over a few fixed conversations (plain, tools and tool calls,
// reasoning, enable_thinking on and off).
//
// Properties:
//  - ChatTemplate::FromSource returns a status for any bytes: it never crashes,
//    throws, overflows the stack or hits undefined behaviour; a rejection is
//    INVALID_ARGUMENT, UNIMPLEMENTED or RESOURCE_EXHAUSTED with a message;
//  - Render of what parses returns OK or one of INVALID_ARGUMENT, UNIMPLEMENTED,
//    RESOURCE_EXHAUSTED (the limits below: bounded work, output and nesting, so a
//    hostile template fails cleanly and quickly), with a message;
//  - what renders is valid UTF-8 within the output limit, and rendering is
//    deterministic: the same inputs give the same bytes (strftime_now aside);
//  - a positioned error names a line inside the source.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/chat_template/chat_template.h"
#include "engine/chat_template/chat_template_impl.h"
#include "tests/fuzz/fuzz_util.h"

using sluice::chat::ChatTemplate;
using sluice::chat::ChatTemplateInputs;
using nlohmann::ordered_json;

namespace {

constexpr int64_t kMaxOutput = 1 << 20;

bool ValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<uint8_t>(s[i]);
    size_t len = b < 0x80 ? 1 : b >= 0xC2 && b < 0xE0 ? 2 : b >= 0xE0 && b < 0xF0 ? 3 : b >= 0xF0 && b < 0xF5 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<uint8_t>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

const std::vector<ChatTemplateInputs>& Conversations() {
  static const auto* convs = [] {
    auto* v = new std::vector<ChatTemplateInputs>();
    ChatTemplateInputs plain;
    plain.messages = ordered_json::parse(R"([{"role":"system","content":"Be brief."},
      {"role":"user","content":"Hi ünïcode 🙂"},{"role":"assistant","content":"Hello!"},
      {"role":"user","content":"  tell me\n"}])");
    v->push_back(plain);
    ChatTemplateInputs tools;
    tools.messages = ordered_json::parse(R"([{"role":"user","content":"Weather?"},
      {"role":"assistant","content":"","reasoning_content":"use the tool",
       "tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris","n":2.5}}},
                     {"id":"c2","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Rome\"}"}}]},
      {"role":"tool","content":"21C","tool_call_id":"c1"},{"role":"tool","content":null}])");
    tools.tools = ordered_json::parse(R"([{"type":"function","function":{"name":"get_weather","description":"d",
      "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}])");
    tools.extra = ordered_json::parse(R"({"enable_thinking": false})");
    v->push_back(tools);
    ChatTemplateInputs thinking;
    thinking.messages = ordered_json::parse(R"([{"role":"user","content":"<tool_response>x</tool_response>"},
      {"role":"assistant","content":"<think>\nhm\n</think>\n\nok"},{"role":"user","content":""}])");
    thinking.add_generation_prompt = false;
    thinking.extra = ordered_json::parse(R"({"enable_thinking": true, "custom": [1, {"k": null}]})");
    v->push_back(thinking);
    return v;
  }();
  return *convs;
}

bool AllowedFailure(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnimplemented ||
         code == absl::StatusCode::kResourceExhausted;
}

// "chat template line L:C: ..." names a line of the source.
void CheckPosition(const absl::Status& s, int64_t lines) {
  const std::string msg(s.message());
  const std::string prefix = "chat template line ";
  if (msg.rfind(prefix, 0) != 0) return;
  const int64_t line = std::atoll(msg.c_str() + prefix.size());
  SLUICE_FUZZ_CHECK(line >= 1 && line <= lines);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  int64_t lines = 1;
  for (char c : source) lines += c == '\n' || c == '\r';
  auto tmpl = ChatTemplate::FromSource(source, "<s>", "</s>");
  if (!tmpl.ok()) {
    SLUICE_FUZZ_CHECK(AllowedFailure(tmpl.status().code()));
    SLUICE_FUZZ_CHECK(!tmpl.status().message().empty());
    CheckPosition(tmpl.status(), lines);
    return 0;
  }
  auto* impl = static_cast<sluice::chat::internal::ChatTemplateImpl*>(tmpl->get());
  sluice::chat::internal::Limits limits;
  limits.max_steps = 200'000;
  limits.max_output_bytes = kMaxOutput;
  impl->set_limits(limits);
  const bool clock = source.find("strftime_now") != std::string::npos;
  for (const ChatTemplateInputs& in : Conversations()) {
    absl::StatusOr<std::string> a = impl->Render(in);
    if (!a.ok()) {
      SLUICE_FUZZ_CHECK(AllowedFailure(a.status().code()));
      SLUICE_FUZZ_CHECK(!a.status().message().empty());
      // (raise_exception's message is the template's own text, so it is not checked.)
      if (a.status().code() != absl::StatusCode::kResourceExhausted &&
          source.find("raise_exception") == std::string::npos) {
        CheckPosition(a.status(), lines);
      }
      continue;
    }
    SLUICE_FUZZ_CHECK(static_cast<int64_t>(a->size()) <= kMaxOutput);
    SLUICE_FUZZ_CHECK(ValidUtf8(*a));
    if (!clock) {
      absl::StatusOr<std::string> b = impl->Render(in);
      SLUICE_FUZZ_CHECK(b.ok() && *b == *a);
    }
  }
  return 0;
}
