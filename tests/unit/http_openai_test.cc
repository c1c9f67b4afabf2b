// The OpenAI request translation of the HTTP server (server/http_openai.h): what each
// field becomes, which values are refused with which param, and the status mapping.
#include "server/http_openai.h"

#include <string>

#include <gtest/gtest.h>

namespace sluice::server::openai {
namespace {

ParsedRequest Parse(const std::string& body, Endpoint endpoint = Endpoint::kCompletions) {
  ParsedRequest r;
  ApiError e;
  EXPECT_TRUE(ParseRequest(body, endpoint, &r, &e)) << body << ": " << e.message;
  return r;
}

ApiError Refuse(const std::string& body, Endpoint endpoint = Endpoint::kCompletions) {
  ParsedRequest r;
  ApiError e;
  EXPECT_FALSE(ParseRequest(body, endpoint, &r, &e)) << body;
  return e;
}

TEST(HttpOpenAiTest, CompletionFields) {
  const ParsedRequest r = Parse(R"({"model": "m", "prompt": "hi", "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": -1, "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
      "repetition_penalty": 1.2, "seed": -1, "stop": "x", "ignore_eos": true, "min_tokens": 2,
      "stop_token_ids": [3, 4], "logprobs": 3, "stream": true, "stream_options": {"include_usage": true},
      "sluice": {"budget": {"skip_ratio": 0.3, "experts_per_token": 2, "skip_layers": [1, [2, 3], {"first": 5}]},
                 "priority": 4}})");
  const GenerationParams& p = r.params;
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(p.input, GenerationParams::Input::kText);
  EXPECT_EQ(p.text, "hi");
  EXPECT_TRUE(p.add_special_tokens);
  EXPECT_EQ(p.max_tokens, 7u);
  EXPECT_FLOAT_EQ(p.temperature, 0.5f);
  EXPECT_FLOAT_EQ(p.top_p, 0.9f);
  EXPECT_EQ(p.top_k, 0);
  EXPECT_FLOAT_EQ(p.repetition_penalty, 1.2f);
  ASSERT_TRUE(p.seed.has_value());
  EXPECT_EQ(*p.seed, ~uint64_t{0});
  EXPECT_EQ(p.stop, std::vector<std::string>{"x"});
  EXPECT_TRUE(p.ignore_eos);
  EXPECT_EQ(p.min_tokens, 2u);
  EXPECT_EQ(p.stop_token_ids, (std::vector<int32_t>{3, 4}));
  EXPECT_TRUE(r.logprobs);
  ASSERT_TRUE(p.logprobs_top_n.has_value());
  EXPECT_EQ(*p.logprobs_top_n, 3u);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_FLOAT_EQ(p.skip_ratio, 0.3f);
  EXPECT_EQ(p.experts_per_token, 2u);
  ASSERT_EQ(p.skip_layers.size(), 3u);
  EXPECT_EQ(p.skip_layers[0], (std::pair<uint32_t, uint32_t>{1, 1}));
  EXPECT_EQ(p.skip_layers[1], (std::pair<uint32_t, uint32_t>{2, 3}));
  EXPECT_EQ(p.skip_layers[2].first, 5u);
  EXPECT_EQ(p.priority, 4);
  EXPECT_EQ(r.budget["skip_ratio"], 0.3);
}

TEST(HttpOpenAiTest, PromptShapes) {
  EXPECT_EQ(Parse(R"({"prompt": [1, 2, 3]})").params.tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(Parse(R"({"prompt": [[5]]})").params.tokens, (std::vector<int32_t>{5}));
  EXPECT_EQ(Parse(R"({"prompt": ["a"]})").params.text, "a");
  EXPECT_EQ(Refuse(R"({"prompt": ["a", "b"]})").param, "prompt");
  EXPECT_EQ(Refuse(R"({"prompt": [1, "x"]})").param, "prompt");
  EXPECT_EQ(Refuse(R"({"prompt": 3})").param, "prompt");
  EXPECT_EQ(Refuse(R"({})").param, "prompt");
}

TEST(HttpOpenAiTest, ChatFields) {
  const ParsedRequest r = Parse(R"({"messages": [{"role": "system", "content": "s"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "42"}],
      "max_completion_tokens": 9, "max_tokens": 3, "logprobs": true, "top_logprobs": 2,
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
      "chat_template_kwargs": {"enable_thinking": false}})",
                                Endpoint::kChat);
  const GenerationParams& p = r.params;
  EXPECT_EQ(p.input, GenerationParams::Input::kMessages);
  ASSERT_EQ(p.chat.messages.size(), 4u);
  EXPECT_EQ(p.chat.messages[1]["content"], "a\nb");
  EXPECT_EQ(p.chat.messages[2]["tool_calls"][0]["function"]["arguments"]["x"], 1);
  EXPECT_EQ(p.max_tokens, 9u);  // max_completion_tokens wins
  EXPECT_EQ(r.max_tokens_param, "max_completion_tokens");
  EXPECT_EQ(*p.logprobs_top_n, 2u);
  EXPECT_TRUE(r.has_tools);
  EXPECT_TRUE(r.thinking_disabled);
  EXPECT_TRUE(p.chat.add_generation_prompt);
  EXPECT_FALSE(Parse(R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"function": {"name": "f"}}],
                         "tool_choice": "none"})",
                     Endpoint::kChat)
                   .has_tools);
}

TEST(HttpOpenAiTest, RefusalsNameTheParam) {
  struct Case {
    const char* body;
    const char* param;
    Endpoint endpoint = Endpoint::kCompletions;
  };
  const Case cases[] = {
      {R"({"prompt": "x", "n": 2})", "n"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "temperature": -1})", "temperature"},
      {R"({"prompt": "x", "top_p": 0})", "top_p"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens"},
      {R"({"prompt": "x", "stop": [1]})", "stop"},
      {R"({"prompt": "x", "logprobs": 21})", "logprobs"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"prompt": "x", "echo": true})", "echo"},
      {R"({"prompt": "x", "logit_bias": {"1": 5}})", "logit_bias"},
      {R"({"prompt": "x", "sluice": {"budget": {"skip_ratio": "a"}}})", "sluice.budget.skip_ratio"},
      {R"({"prompt": "x", "sluice": {"budget": {"skip": 1}}})", "sluice.budget.skip"},
      {R"({"prompt": "x", "sluice": {"budget": {"skip_layers": [-1]}}})", "sluice.budget.skip_layers[0]"},
      {R"({"prompt": "x", "sluice": {"bogus": 1}})", "sluice.bogus"},
      {R"({"prompt": "x", "model": 3})", "model"},
      {R"({"messages": "hi"})", "messages", Endpoint::kChat},
      {R"({"messages": [{"content": "hi"}]})", "messages[0].role", Endpoint::kChat},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", "messages[0].content[0].type",
       Endpoint::kChat},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs", Endpoint::kChat},
      {R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})", "tool_choice",
       Endpoint::kChat},
  };
  for (const Case& c : cases) {
    const ApiError e = Refuse(c.body, c.endpoint);
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message;
    EXPECT_FALSE(e.message.empty());
  }
}

TEST(HttpOpenAiTest, MalformedBodies) {
  for (const char* body : {"", "{", "[1, 2]", "null", "{\"prompt\": \"x\",}", "\xff"}) {
    const ApiError e = Refuse(body);
    EXPECT_EQ(e.http_status, 400) << body;
  }
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  EXPECT_NE(Refuse("{\"prompt\": \"x\", \"user\": " + deep + "}").message.find("nests deeper"), std::string::npos);
}

TEST(HttpOpenAiTest, StatusMapping) {
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kFailedPrecondition), 400);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kOutOfRange), 400);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kUnimplemented), 501);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kInternal), 500);

  ApiError e = ErrorFromStatus(absl::InvalidArgumentError("sampling.temperature must be finite and >= 0"),
                               Endpoint::kChat);
  EXPECT_EQ(e.param, "temperature");
  EXPECT_EQ(e.message, "temperature must be finite and >= 0");
  e = ErrorFromStatus(absl::InvalidArgumentError("logprobs.top_n: 25 is over the limit --max_logprobs=20"),
                      Endpoint::kChat);
  EXPECT_EQ(e.param, "top_logprobs");
  EXPECT_EQ(e.message, "top_logprobs: 25 is over the limit --max_logprobs=20");
  e = ErrorFromStatus(absl::InvalidArgumentError("logprobs.top_n: 25"), Endpoint::kCompletions);
  EXPECT_EQ(e.param, "logprobs");
  e = ErrorFromStatus(absl::InvalidArgumentError("input.messages[2].role: must be a string"), Endpoint::kChat);
  EXPECT_EQ(e.param, "messages[2].role");
  EXPECT_EQ(e.message, "messages[2].role: must be a string");
  e = ErrorFromStatus(absl::InvalidArgumentError("input: the prompt is empty"), Endpoint::kCompletions);
  EXPECT_EQ(e.param, "prompt");
  e = ErrorFromStatus(absl::InvalidArgumentError("stopping.stop_token_ids: 900 is outside the vocabulary"),
                      Endpoint::kCompletions);
  EXPECT_EQ(e.param, "stop_token_ids");
  e = ErrorFromStatus(absl::FailedPreconditionError("budget.skip_ratio needs residual gates"), Endpoint::kChat);
  EXPECT_EQ(e.param, "sluice.budget.skip_ratio");
  e = ErrorFromStatus(absl::ResourceExhaustedError("the queue is full (--max_queue=1)"), Endpoint::kChat);
  EXPECT_EQ(e.http_status, 429);
  EXPECT_EQ(e.type, "rate_limit_error");
  EXPECT_TRUE(e.param.empty());
  e = ErrorFromStatus(absl::DeadlineExceededError("deadline"), Endpoint::kChat);
  EXPECT_EQ(e.http_status, 504);
  const std::string body = ErrorBody(e);
  const Json j = Json::parse(body);
  EXPECT_EQ(j["error"]["code"], "deadline_exceeded");
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_EQ(j["error"]["message"], "deadline");
}

TEST(HttpOpenAiTest, UsageCarriesTheBudget) {
  engine::UsageStats u;
  u.prompt_tokens = 3;
  u.completion_tokens = 4;
  u.dense_flops = 100;
  u.executed_flops = 70;
  u.branches_skipped = 5;
  const Json usage = UsageJson(u, Json{{"skip_ratio", 0.3}});
  EXPECT_EQ(usage["total_tokens"], 7);
  EXPECT_EQ(usage["sluice"]["executed_flops"], 70.0);
  EXPECT_EQ(usage["sluice"]["dense_flops"], 100.0);
  EXPECT_EQ(usage["sluice"]["budget"]["skip_ratio"], 0.3);
  EXPECT_EQ(usage["sluice"]["budget_report"]["branches_skipped"], 5);
}

}  // namespace
}  // namespace sluice::server::openai
