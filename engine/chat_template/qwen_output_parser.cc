#include "engine/chat_template/qwen_output_parser.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace sluice::chat {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kToolOpen = "<tool_call>";
constexpr std::string_view kToolClose = "</tool_call>";

bool IsSpace(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

bool AllSpace(std::string_view s) { return std::all_of(s.begin(), s.end(), IsSpace); }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// Length of the longest suffix of `text` that is a proper prefix of `tag`.
size_t PartialTagSuffix(std::string_view text, std::string_view tag) {
  for (size_t len = std::min(tag.size() - 1, text.size()); len > 0; --len) {
    if (text.substr(text.size() - len) == tag.substr(0, len)) return len;
  }
  return 0;
}

}  // namespace

QwenOutputParser::QwenOutputParser(Options options) : options_(options) {
  switch (options.start) {
    case Start::kReasoning: state_ = State::kReasoning; break;
    case Start::kContent: state_ = State::kContent; break;
    case Start::kDetect: state_ = State::kDetect; break;
  }
}

QwenOutputParser::Start QwenOutputParser::StartFor(std::string_view prompt, bool thinking_disabled) {
  if (thinking_disabled) return Start::kContent;
  const std::string_view tail = Trim(prompt);
  auto ends_with = [&](std::string_view tag) {
    return tail.size() >= tag.size() && tail.substr(tail.size() - tag.size()) == tag;
  };
  if (ends_with(kThinkOpen)) return Start::kReasoning;
  if (ends_with(kThinkClose)) return Start::kContent;
  return Start::kDetect;
}

ParsedDelta QwenOutputParser::Push(std::string_view text) {
  ParsedDelta out;
  buf_.append(text);
  Drain(/*final=*/false, &out);
  return out;
}

ParsedDelta QwenOutputParser::Finish() {
  ParsedDelta out;
  Drain(/*final=*/true, &out);
  pending_space_.clear();  // trailing whitespace after the last tool call
  return out;
}

void QwenOutputParser::EmitContent(std::string_view text, ParsedDelta* out) {
  if (text.empty()) return;
  if (after_tool_call_) {
    if (AllSpace(text)) {
      pending_space_.append(text);
      return;
    }
    out->content += pending_space_;
    pending_space_.clear();
    after_tool_call_ = false;
  }
  out->content.append(text);
}

void QwenOutputParser::CloseToolCall(std::string_view body, ParsedDelta* out) {
  auto call = nlohmann::ordered_json::parse(Trim(body), nullptr, /*allow_exceptions=*/false);
  bool valid = call.is_object();
  std::string name;
  std::string arguments = "{}";
  if (valid) {
    auto n = call.find("name");
    valid = n != call.end() && n->is_string() && !n->get_ref<const std::string&>().empty();
    if (valid) name = n->get<std::string>();
    auto a = call.find("arguments");
    if (a == call.end()) a = call.find("parameters");
    if (valid && a != call.end() && !a->is_null()) {
      nlohmann::ordered_json args = *a;
      if (args.is_string()) {
        args = nlohmann::ordered_json::parse(a->get_ref<const std::string&>(), nullptr, /*allow_exceptions=*/false);
      }
      valid = args.is_object();
      if (valid) arguments = args.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    }
  }
  if (!valid) {
    ++invalid_;
    EmitContent(std::string(kToolOpen).append(body).append(kToolClose), out);
    return;
  }
  // Whitespace before the call (e.g. between two calls) is not content.
  if (after_tool_call_) pending_space_.clear();
  out->tool_calls.push_back({next_index_++, std::move(name), std::move(arguments)});
  after_tool_call_ = true;
}

void QwenOutputParser::Drain(bool final, ParsedDelta* out) {
  for (;;) {
    switch (state_) {
      case State::kDetect: {
        const size_t first = buf_.find_first_not_of(" \n\t\r");
        if (first == std::string::npos) {
          if (!final) return;  // only whitespace so far: undecided
          state_ = State::kContent;
          break;
        }
        const std::string_view rest = std::string_view(buf_).substr(first);
        if (rest.substr(0, kThinkOpen.size()) == kThinkOpen) {
          buf_.erase(0, first + kThinkOpen.size());
          state_ = State::kReasoning;
          break;
        }
        if (!final && rest.size() < kThinkOpen.size() && kThinkOpen.substr(0, rest.size()) == rest) return;
        state_ = State::kContent;
        break;
      }
      case State::kReasoning: {
        const size_t open = buf_.find(kThinkOpen);
        const size_t close = buf_.find(kThinkClose);
        if (close != std::string::npos && (open == std::string::npos || close < open)) {
          out->reasoning.append(buf_, 0, close);
          buf_.erase(0, close + kThinkClose.size());
          state_ = State::kContent;
          break;
        }
        if (open != std::string::npos) {  // a <think> the model wrote itself: not text
          out->reasoning.append(buf_, 0, open);
          buf_.erase(0, open + kThinkOpen.size());
          break;
        }
        const size_t hold =
            final ? 0 : std::max(PartialTagSuffix(buf_, kThinkOpen), PartialTagSuffix(buf_, kThinkClose));
        out->reasoning.append(buf_, 0, buf_.size() - hold);
        buf_.erase(0, buf_.size() - hold);
        return;
      }
      case State::kContent: {
        if (options_.tool_calls) {
          const size_t open = buf_.find(kToolOpen);
          if (open != std::string::npos) {
            EmitContent(std::string_view(buf_).substr(0, open), out);
            buf_.erase(0, open + kToolOpen.size());
            scan_from_ = 0;
            state_ = State::kToolCall;
            break;
          }
        }
        const size_t hold = final || !options_.tool_calls ? 0 : PartialTagSuffix(buf_, kToolOpen);
        EmitContent(std::string_view(buf_).substr(0, buf_.size() - hold), out);
        buf_.erase(0, buf_.size() - hold);
        return;
      }
      case State::kToolCall: {
        const size_t close = buf_.find(kToolClose, scan_from_);
        if (close != std::string::npos) {
          const std::string body = buf_.substr(0, close);
          buf_.erase(0, close + kToolClose.size());
          state_ = State::kContent;
          CloseToolCall(body, out);
          break;
        }
        if (final) {  // the turn ended inside the block: it is content
          ++invalid_;
          unterminated_ = true;
          EmitContent(std::string(kToolOpen).append(buf_), out);
          buf_.clear();
          state_ = State::kContent;
          return;
        }
        scan_from_ = buf_.size() >= kToolClose.size() ? buf_.size() - kToolClose.size() + 1 : 0;
        return;
      }
    }
  }
}

}  // namespace sluice::chat
