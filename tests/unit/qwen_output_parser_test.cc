// The Qwen reasoning / tool-call splitter (engine/chat_template/qwen_output_parser.h):
// every case is fed whole, one byte at a time, and cut in two at every byte position, and
// must come out the same each way, so a tag split across deltas never leaks.
#include "engine/chat_template/qwen_output_parser.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace sluice::chat {
namespace {

using Start = QwenOutputParser::Start;

struct Result {
  std::string reasoning;
  std::string content;
  std::vector<ParsedToolCall> calls;
  int32_t invalid = 0;
  bool unterminated = false;
};

void Collect(const ParsedDelta& d, Result* r) {
  r->reasoning += d.reasoning;
  r->content += d.content;
  r->calls.insert(r->calls.end(), d.tool_calls.begin(), d.tool_calls.end());
}

Result Feed(const std::vector<std::string>& pieces, QwenOutputParser::Options options) {
  QwenOutputParser parser(options);
  Result r;
  for (const auto& p : pieces) Collect(parser.Push(p), &r);
  Collect(parser.Finish(), &r);
  r.invalid = parser.invalid_tool_calls();
  r.unterminated = parser.unterminated_tool_call();
  EXPECT_EQ(parser.tool_calls(), static_cast<int32_t>(r.calls.size()));
  return r;
}

std::string Describe(const Result& r) {
  std::string out = "reasoning=[" + r.reasoning + "] content=[" + r.content + "] calls=";
  for (const auto& c : r.calls) out += std::to_string(c.index) + ":" + c.name + c.arguments + " ";
  return out;
}

bool Same(const Result& a, const Result& b) {
  if (a.reasoning != b.reasoning || a.content != b.content || a.invalid != b.invalid ||
      a.unterminated != b.unterminated || a.calls.size() != b.calls.size()) {
    return false;
  }
  for (size_t i = 0; i < a.calls.size(); ++i) {
    if (a.calls[i].index != b.calls[i].index || a.calls[i].name != b.calls[i].name ||
        a.calls[i].arguments != b.calls[i].arguments) {
      return false;
    }
  }
  return true;
}

// Parses `text` whole and checks that every other way of cutting it gives the same result.
Result ParseEveryWay(const std::string& text, QwenOutputParser::Options options) {
  const Result whole = Feed({text}, options);
  std::vector<std::string> bytes;
  for (char c : text) bytes.emplace_back(1, c);
  const Result one_by_one = Feed(bytes, options);
  EXPECT_TRUE(Same(whole, one_by_one)) << "byte by byte: " << Describe(one_by_one) << "\nwhole: " << Describe(whole);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    const Result two = Feed({text.substr(0, cut), text.substr(cut)}, options);
    EXPECT_TRUE(Same(whole, two)) << "cut at " << cut << ": " << Describe(two) << "\nwhole: " << Describe(whole);
  }
  // Three pieces: every pair of cuts (texts here are short).
  for (size_t a = 0; a <= text.size(); ++a) {
    for (size_t b = a; b <= text.size(); ++b) {
      const Result three = Feed({text.substr(0, a), text.substr(a, b - a), text.substr(b)}, options);
      if (!Same(whole, three)) {
        ADD_FAILURE() << "cuts at " << a << "," << b << ": " << Describe(three) << "\nwhole: " << Describe(whole);
        return whole;
      }
    }
  }
  return whole;
}

QwenOutputParser::Options Opts(Start start, bool tools = false) {
  QwenOutputParser::Options o;
  o.start = start;
  o.tool_calls = tools;
  return o;
}

TEST(QwenOutputParserTest, ReasoningOpenedByThePrompt) {
  const Result r = ParseEveryWay("Let me think.\n</think>\n\nThe answer is 4.", Opts(Start::kReasoning));
  EXPECT_EQ(r.reasoning, "Let me think.\n");
  EXPECT_EQ(r.content, "\n\nThe answer is 4.");
}

TEST(QwenOutputParserTest, ThinkTagWrittenByTheModelIsDropped) {
  const Result r = ParseEveryWay("<think>\nstep 1\n</think>\n\nok", Opts(Start::kReasoning));
  EXPECT_EQ(r.reasoning, "\nstep 1\n");
  EXPECT_EQ(r.content, "\n\nok");
}

TEST(QwenOutputParserTest, DetectsAThinkBlockAtTheStart) {
  const Result r = ParseEveryWay("\n <think>why</think>because", Opts(Start::kDetect));
  EXPECT_EQ(r.reasoning, "why");
  EXPECT_EQ(r.content, "because");
}

TEST(QwenOutputParserTest, DetectWithoutThinkIsAllContent) {
  const Result r = ParseEveryWay("<thin> is not a tag; 2 < 3 and </think> is literal here", Opts(Start::kDetect));
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "<thin> is not a tag; 2 < 3 and </think> is literal here");
}

TEST(QwenOutputParserTest, DetectOnlyWhitespace) {
  const Result r = ParseEveryWay(" \n ", Opts(Start::kDetect));
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, " \n ");
}

TEST(QwenOutputParserTest, ThinkingOffKeepsTagsAsContent) {
  const Result r = ParseEveryWay("<think>x</think>y", Opts(Start::kContent));
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "<think>x</think>y");
}

TEST(QwenOutputParserTest, TruncatedReasoningIsAllReasoning) {
  // As vLLM: thinking on and no </think> (max_tokens hit): everything is reasoning, the
  // held-back partial tag included.
  const Result r = ParseEveryWay("still thinking </thi", Opts(Start::kReasoning));
  EXPECT_EQ(r.reasoning, "still thinking </thi");
  EXPECT_EQ(r.content, "");
}

TEST(QwenOutputParserTest, LessThanInReasoningIsNotHeldForever) {
  QwenOutputParser parser(Opts(Start::kReasoning));
  EXPECT_EQ(parser.Push("a <").reasoning, "a ");
  EXPECT_EQ(parser.Push("b").reasoning, "<b");  // "<b" cannot start a tag: released
  EXPECT_EQ(parser.Push("</").reasoning, "");
  const ParsedDelta d = parser.Push("think>c");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "c");
}

TEST(QwenOutputParserTest, ToolCall) {
  const Result r = ParseEveryWay(
      "I'll check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n"
      "</tool_call>",
      Opts(Start::kContent, /*tools=*/true));
  EXPECT_EQ(r.content, "I'll check.");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].index, 0);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  EXPECT_EQ(nlohmann::json::parse(r.calls[0].arguments), nlohmann::json::parse(R"({"city": "Paris", "days": 2})"));
  EXPECT_EQ(r.invalid, 0);
}

TEST(QwenOutputParserTest, ReasoningThenTwoToolCalls) {
  const Result r = ParseEveryWay(
      "need two</think>\n\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n"
      "<tool_call>\n{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": [1, 2]}\"}\n</tool_call>\n",
      Opts(Start::kReasoning, /*tools=*/true));
  EXPECT_EQ(r.reasoning, "need two");
  EXPECT_EQ(r.content, "\n\n");  // before the first call; between and after calls is dropped
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "a");
  EXPECT_EQ(r.calls[0].arguments, "{}");
  EXPECT_EQ(r.calls[1].index, 1);
  EXPECT_EQ(r.calls[1].name, "b");
  EXPECT_EQ(r.calls[1].arguments, R"({"x":[1,2]})");  // JSON text in a string: parsed
}

TEST(QwenOutputParserTest, TextAfterAToolCallIsContent) {
  const Result r = ParseEveryWay("<tool_call>{\"name\": \"a\"}</tool_call>\n\nDone.", Opts(Start::kContent, true));
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{}");
  EXPECT_EQ(r.content, "\n\nDone.");
}

TEST(QwenOutputParserTest, InvalidJsonIsContentNeverDropped) {
  const std::string block = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>";
  const Result r = ParseEveryWay("x" + block + "y", Opts(Start::kContent, true));
  EXPECT_EQ(r.content, "x" + block + "y");
  EXPECT_TRUE(r.calls.empty());
  EXPECT_EQ(r.invalid, 1);
  EXPECT_FALSE(r.unterminated);
}

TEST(QwenOutputParserTest, WrongShapesAreInvalid) {
  for (const std::string body : {"[1, 2]", "{\"arguments\": {}}", "{\"name\": 3}", "{\"name\": \"\"}",
                                 "{\"name\": \"f\", \"arguments\": [1]}", "{\"name\": \"f\", \"arguments\": \"nope\"}"}) {
    const std::string block = "<tool_call>" + body + "</tool_call>";
    const Result r = ParseEveryWay(block, Opts(Start::kContent, true));
    EXPECT_EQ(r.content, block) << body;
    EXPECT_EQ(r.invalid, 1) << body;
  }
}

TEST(QwenOutputParserTest, UnterminatedToolCallIsContent) {
  const Result r = ParseEveryWay("ok <tool_call>{\"name\": \"f\", \"argu", Opts(Start::kContent, true));
  EXPECT_EQ(r.content, "ok <tool_call>{\"name\": \"f\", \"argu");
  EXPECT_TRUE(r.calls.empty());
  EXPECT_TRUE(r.unterminated);
  EXPECT_EQ(r.invalid, 1);
}

TEST(QwenOutputParserTest, ToolCallInsideReasoningIsReasoning) {
  const Result r = ParseEveryWay("maybe <tool_call>{\"name\": \"f\"}</tool_call>?</think>no",
                                 Opts(Start::kReasoning, true));
  EXPECT_EQ(r.reasoning, "maybe <tool_call>{\"name\": \"f\"}</tool_call>?");
  EXPECT_EQ(r.content, "no");
  EXPECT_TRUE(r.calls.empty());
}

TEST(QwenOutputParserTest, WithoutToolsTagsAreContent) {
  const std::string text = "<tool_call>{\"name\": \"f\"}</tool_call>";
  const Result r = ParseEveryWay(text, Opts(Start::kContent, /*tools=*/false));
  EXPECT_EQ(r.content, text);
  EXPECT_TRUE(r.calls.empty());
}

TEST(QwenOutputParserTest, MultibyteTextSurvivesAnyCut) {
  const Result r = ParseEveryWay("思考中…</think>答え: π≈3.14 <tool_call>{\"name\": \"计算\", \"arguments\": {\"x\": \"é\"}}</tool_call>",
                                 Opts(Start::kReasoning, true));
  EXPECT_EQ(r.reasoning, "思考中…");
  EXPECT_EQ(r.content, "答え: π≈3.14 ");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].name, "计算");
  EXPECT_EQ(r.calls[0].arguments, "{\"x\":\"é\"}");
}

TEST(QwenOutputParserTest, NothingIsReleasedThatCouldStartATag) {
  // Fed one byte at a time, no delta may end in a proper prefix of a tag the state looks for.
  const std::string text = "r</think>c<tool_call>{\"name\": \"f\"}</tool_call>d";
  QwenOutputParser parser(Opts(Start::kReasoning, true));
  for (char ch : text) {
    const ParsedDelta d = parser.Push(std::string(1, ch));
    for (const std::string& piece : {d.reasoning, d.content}) {
      EXPECT_EQ(piece.find('<'), std::string::npos) << "released '" << piece << "' after '" << ch << "'";
    }
  }
}

TEST(QwenOutputParserTest, StartFromThePrompt) {
  EXPECT_EQ(QwenOutputParser::StartFor("<|im_start|>assistant\n<think>\n", false), Start::kReasoning);
  EXPECT_EQ(QwenOutputParser::StartFor("<|im_start|>assistant\n<think>\n\n</think>\n\n", false), Start::kContent);
  EXPECT_EQ(QwenOutputParser::StartFor("<|im_start|>assistant\n", false), Start::kDetect);
  EXPECT_EQ(QwenOutputParser::StartFor("<|im_start|>assistant\n<think>\n", true), Start::kContent);
}

}  // namespace
}  // namespace sluice::chat
