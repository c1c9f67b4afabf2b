// Chat templates against the oracle: transformers' apply_chat_template (jinja2) on the
// real templates in ../shared/tokenizers over tests/data/chat_templates/conversations.json,
// and jinja2 itself on the snippets in snippets.json. Rendered strings must be
// byte-identical, token ids (sluice's tokenizer, add_special_tokens=false as vLLM
// encodes chat prompts) identical; where Python raises, sluice must fail too. Also:
// errors name the construct and its line:col, raise_exception carries its message,
// constructs outside the subset never render, and hostile templates hit limits.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/chat_template/chat_template.h"
#include "engine/chat_template/chat_template_impl.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sluice::chat {
namespace {

using nlohmann::ordered_json;

std::string DataDir() { return std::string(SLUICE_TEST_DATA_DIR) + "/chat_templates"; }

std::string SharedTokenizersDir() {
  if (const char* env = std::getenv("SLUICE_TOKENIZERS_DIR"); env != nullptr && *env != '\0') return env;
  return SLUICE_SHARED_TOKENIZERS_DIR;
}

ordered_json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return ordered_json::parse(in);
}

std::string Escaped(const std::string& s) { return ordered_json(s).dump(); }

ChatTemplateInputs InputsFor(const ordered_json& conv) {
  ChatTemplateInputs in;
  in.messages = conv.at("messages");
  if (conv.contains("tools")) in.tools = conv.at("tools");
  in.add_generation_prompt = conv.value("add_generation_prompt", true);
  if (conv.contains("chat_template_kwargs")) in.extra = conv.at("chat_template_kwargs");
  return in;
}

// ---- the real templates ------------------------------------------------------------------

class ChatTemplateRealTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateRealTest, MatchesTransformers) {
  const std::string name = GetParam();
  const std::string dir = SharedTokenizersDir() + "/" + name;
  if (!std::filesystem::exists(dir + "/tokenizer_config.json")) {
    GTEST_SKIP() << "tokenizer files not found at " << dir
                 << " (CI copies shared/ beside the checkout; set SLUICE_TOKENIZERS_DIR to override)";
  }
  auto tmpl = ChatTemplate::Load(dir);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  auto tok = tokenizer::Tokenizer::LoadFromDirectory(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();

  const ordered_json expected = ReadJson(DataDir() + "/expected_" + name + ".json");
  const ordered_json convs = ReadJson(DataDir() + "/conversations.json");
  ASSERT_EQ(expected.at("cases").size(), convs.size()) << "fixtures out of date: rerun the generator";

  // The special-token variables are transformers' special_tokens_map.
  ordered_json special = ordered_json::object();
  for (const auto& [k, v] : (*tmpl)->special_tokens()) special[k] = v;
  EXPECT_EQ(ordered_json(expected.at("special_tokens")).dump(), special.dump());

  int rendered = 0, refused = 0;
  for (size_t i = 0; i < convs.size(); ++i) {
    const ordered_json& conv = convs[i];
    const ordered_json& want = expected.at("cases")[i];
    ASSERT_EQ(want.at("name"), conv.at("name"));
    SCOPED_TRACE(name + "/" + conv.at("name").get<std::string>());
    absl::StatusOr<std::string> text = (*tmpl)->Render(InputsFor(conv));
    if (want.contains("error")) {
      // Python raised (e.g. an UndefinedError): sluice refuses the same input.
      EXPECT_FALSE(text.ok()) << "rendered " << Escaped(*text) << " where Python raised "
                              << want.at("error").dump();
      if (!text.ok()) {
        EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument) << text.status();
        ++refused;
      }
      continue;
    }
    ASSERT_TRUE(text.ok()) << text.status();
    const std::string want_text = want.at("text").get<std::string>();
    EXPECT_EQ(*text, want_text) << "\n  got  " << Escaped(*text) << "\n  want " << Escaped(want_text);
    auto ids = (*tok)->Encode(*text, /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    const std::vector<int32_t> want_ids = want.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(*ids, want_ids) << "got [" << absl::StrJoin(*ids, ",") << "]";
    if (*text == want_text && *ids == want_ids) ++rendered;
  }
  std::printf("[ %s ] %d conversations byte- and id-identical, %d refused as Python refuses\n", name.c_str(),
              rendered, refused);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, ChatTemplateRealTest, ::testing::Values("qwen3", "llama3", "deepseek_v3"));

TEST(ChatTemplateLoad, ModelWithoutTemplateIsNotFound) {
  const std::string dir = SharedTokenizersDir() + "/llama2";
  if (!std::filesystem::exists(dir + "/tokenizer_config.json")) GTEST_SKIP() << "no " << dir;
  auto tmpl = ChatTemplate::Load(dir);
  EXPECT_EQ(tmpl.status().code(), absl::StatusCode::kNotFound) << tmpl.status();
}

// ---- jinja2 semantics: the snippets --------------------------------------------------------

TEST(ChatTemplateSnippets, MatchJinja2) {
  const ordered_json snippets = ReadJson(DataDir() + "/snippets.json");
  const ordered_json expected = ReadJson(DataDir() + "/expected_snippets.json");
  ASSERT_EQ(snippets.size(), expected.at("snippets").size()) << "fixtures out of date: rerun the generator";
  int matched = 0, refused = 0, unsupported = 0;
  for (size_t i = 0; i < snippets.size(); ++i) {
    const ordered_json& s = snippets[i];
    const ordered_json& want = expected.at("snippets")[i];
    ASSERT_EQ(want.at("name"), s.at("name"));
    const std::string name = s.at("name").get<std::string>();
    SCOPED_TRACE(name + ": " + s.at("template").get<std::string>());
    ChatTemplateInputs in;
    in.messages = s.contains("messages") ? s.at("messages") : ordered_json::parse(R"([{"role":"user","content":"hi"}])");
    in.add_generation_prompt = false;
    if (s.contains("vars")) in.extra = s.at("vars");
    absl::StatusOr<std::string> text;
    auto tmpl = ChatTemplate::FromSource(s.at("template").get<std::string>(), "<s>", "</s>");
    if (tmpl.ok()) {
      text = (*tmpl)->Render(in);
    } else {
      text = tmpl.status();
    }
    if (s.value("unsupported", false)) {
      // Outside the subset: refused with UNIMPLEMENTED, whatever Python does.
      EXPECT_EQ(text.status().code(), absl::StatusCode::kUnimplemented)
          << (text.ok() ? "rendered " + Escaped(*text) : text.status().ToString());
      unsupported += !text.ok() && text.status().code() == absl::StatusCode::kUnimplemented;
      continue;
    }
    if (want.contains("error")) {
      EXPECT_FALSE(text.ok()) << "rendered " << Escaped(*text) << " where jinja2 raised " << want.at("error").dump();
      if (!text.ok()) {
        EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument) << text.status();
        refused += text.status().code() == absl::StatusCode::kInvalidArgument;
      }
      continue;
    }
    if (!text.ok()) {
      ADD_FAILURE() << text.status();
      continue;
    }
    const std::string want_text = want.at("text").get<std::string>();
    EXPECT_EQ(*text, want_text) << "\n  got  " << Escaped(*text) << "\n  want " << Escaped(want_text);
    matched += *text == want_text;
  }
  std::printf("[ snippets ] %d byte-identical, %d refused as jinja2 refuses, %d refused as unsupported (of %zu)\n",
              matched, refused, unsupported, snippets.size());
}

// ---- errors --------------------------------------------------------------------------------

absl::Status RenderError(const std::string& source, ordered_json extra = ordered_json::object()) {
  auto tmpl = ChatTemplate::FromSource(source, "<s>", "</s>");
  if (!tmpl.ok()) return tmpl.status();
  ChatTemplateInputs in;
  in.messages = ordered_json::parse(R"([{"role":"user","content":"hi"}])");
  in.extra = std::move(extra);
  auto text = (*tmpl)->Render(in);
  if (text.ok()) return absl::OkStatus();
  return text.status();
}

TEST(ChatTemplateErrors, UnknownFilterNamesItWithPosition) {
  const absl::Status s = RenderError("line one\n  {{ messages|frobnicate }}");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("frobnicate"), std::string::npos) << s;
  EXPECT_NE(s.message().find("line 2:"), std::string::npos) << s;
}

TEST(ChatTemplateErrors, UnknownTestAndTagNameThem) {
  absl::Status s = RenderError("{{ 1 is frobnicated }}");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("frobnicated"), std::string::npos) << s;
  s = RenderError("ok\n\n{% frobnicate %}");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("frobnicate"), std::string::npos) << s;
  EXPECT_NE(s.message().find("line 3:"), std::string::npos) << s;
}

TEST(ChatTemplateErrors, UnsupportedConstructsAreUnimplementedWithPosition) {
  struct Case {
    const char* source;
    const char* names;
  } cases[] = {
      {"{% include 'x.j2' %}", "include"},
      {"{% extends 'x.j2' %}", "extends"},
      {"{% for x in [1] recursive %}{% endfor %}", "recursive"},
      {"a\n{{ 'x'|wordwrap(3) }}", "wordwrap"},
      {"{{ 'x'.zfill(3) }}", "zfill"},
      {"{{ '%s' % 1 }}", "formatting"},
      {"{{ [1]|select }}", "generator"},
      {"{{ range }}", "range"},
  };
  for (const Case& c : cases) {
    const absl::Status s = RenderError(c.source);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << c.source << ": " << s;
    EXPECT_NE(s.message().find(c.names), std::string::npos) << c.source << ": " << s;
    EXPECT_NE(s.message().find("line "), std::string::npos) << c.source << ": " << s;
  }
}

TEST(ChatTemplateErrors, RaiseExceptionCarriesTheMessage) {
  const absl::Status s = RenderError(
      "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
      "{{ raise_exception('Conversation roles must be user or assistant, got ' ~ m.role) }}{% endif %}{% endfor %}",
      {});
  EXPECT_TRUE(s.ok()) << s;
  auto tmpl = ChatTemplate::FromSource("{{ raise_exception('Only user and assistant roles are supported!') }}", "", "");
  ASSERT_TRUE(tmpl.ok());
  ChatTemplateInputs in;
  in.messages = ordered_json::parse(R"([{"role":"robot","content":"x"}])");
  auto text = (*tmpl)->Render(in);
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(text.status().message(), "Only user and assistant roles are supported!");
}

TEST(ChatTemplateErrors, InputsAreValidated) {
  auto tmpl = ChatTemplate::FromSource("{{ messages|length }}", "", "");
  ASSERT_TRUE(tmpl.ok());
  ChatTemplateInputs in;
  EXPECT_EQ((*tmpl)->Render(in).status().code(), absl::StatusCode::kInvalidArgument);  // empty conversation
  in.messages = ordered_json::parse(R"([{"role":"user","content":"hi"}])");
  in.extra = ordered_json::parse(R"({"messages": []})");
  EXPECT_EQ((*tmpl)->Render(in).status().code(), absl::StatusCode::kInvalidArgument);
  in.extra = ordered_json::parse(R"({"add_generation_prompt": false})");
  EXPECT_TRUE((*tmpl)->Render(in).ok());
  in.messages = ordered_json::parse(R"([1])");
  EXPECT_EQ((*tmpl)->Render(in).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateErrors, ChatTemplateKwargsOverrideAddGenerationPrompt) {
  auto tmpl = ChatTemplate::FromSource("{{ add_generation_prompt }}|{{ enable_thinking }}", "", "");
  ASSERT_TRUE(tmpl.ok());
  ChatTemplateInputs in;
  in.messages = ordered_json::parse(R"([{"role":"user","content":"hi"}])");
  in.add_generation_prompt = true;
  in.extra = ordered_json::parse(R"({"add_generation_prompt": false, "enable_thinking": false})");
  auto text = (*tmpl)->Render(in);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "False|False");
}

// ---- limits: hostile templates fail cleanly and quickly ----------------------------------------

absl::Status RenderWithLimits(const std::string& source) {
  auto tmpl = ChatTemplate::FromSource(source, "", "");
  if (!tmpl.ok()) return tmpl.status();
  ChatTemplateInputs in;
  in.messages = ordered_json::parse(R"([{"role":"user","content":"hi"}])");
  auto text = (*tmpl)->Render(in);
  return text.ok() ? absl::OkStatus() : text.status();
}

TEST(ChatTemplateLimits, HostileTemplatesAreResourceExhausted) {
  const char* hostile[] = {
      "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",                                        // unbounded recursion
      "{% macro f(n) %}{% if n %}{{ f(n - 1) ~ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",  // 2^40 calls
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",       // 1e10 iterations
      "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",  // 2^100 bytes
      "{{ 'x' * 10000000000 }}",                                                                // huge repeat
      "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}",     // deep nesting
      "{% set ns = namespace(l=[0]) %}{% for i in range(100000) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
  };
  for (const char* source : hostile) {
    const auto start = std::chrono::steady_clock::now();
    const absl::Status s = RenderWithLimits(source);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << source << ": " << s;
    EXPECT_LT(seconds, 20.0) << source;
    std::printf("[ limits ] %.2f s: %s -> %s\n", seconds, source, std::string(s.message()).c_str());
  }
}

TEST(ChatTemplateLimits, DeeplyNestedSourceIsRefusedAtParse) {
  // Nesting that real templates stay far below (they nest a few levels) is refused
  // before it can exhaust the stack, in the parser or in the renderer.
  auto refused = [](const std::string& source) {
    const absl::Status s = RenderWithLimits(source);
    EXPECT_TRUE(s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kResourceExhausted)
        << source.substr(0, 60) << ": " << s;
    EXPECT_NE(s.message().find("deep"), std::string::npos) << s;
  };
  refused("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}");
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += " + 1";
  refused(chain + " }}");
  std::string ifs;
  for (int i = 0; i < 2000; ++i) ifs += "{% if true %}";
  for (int i = 0; i < 2000; ++i) ifs += "{% endif %}";
  refused(ifs);
  refused("{{ " + std::string(3000, '[') + std::string(3000, ']') + " }}");
  refused("{{ x" + std::string(3000, '|').replace(0, std::string::npos, [] {
            std::string f;
            for (int i = 0; i < 3000; ++i) f += "|trim";
            return f;
          }()) + " }}");
  // Modest nesting renders.
  EXPECT_TRUE(RenderWithLimits("{{ " + std::string(20, '(') + "1" + std::string(20, ')') + " }}").ok());
}

TEST(ChatTemplateLoad, JinjaFileWinsAndNamedTemplatesAreChosen) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("sluice_ct_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir / "tokenizer_config.json") << R"({
      "bos_token": {"__type": "AddedToken", "content": "<B>"}, "eos_token": "<E>", "unk_token": null,
      "chat_template": [{"name": "default", "template": "D{{ bos_token }}{{ eos_token }}{{ unk_token is defined }}"},
                        {"name": "tool_use", "template": "T{{ tools|length }}"}]})";
  }
  auto tmpl = ChatTemplate::Load(dir.string());
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  ChatTemplateInputs in;
  in.messages = ordered_json::parse(R"([{"role":"user","content":"hi"}])");
  EXPECT_EQ(*(*tmpl)->Render(in), "D<B><E>False");
  in.tools = ordered_json::parse(R"([{"type":"function","function":{"name":"f"}}])");
  EXPECT_EQ(*(*tmpl)->Render(in), "T1");
  { std::ofstream(dir / "chat_template.jinja") << "J{{ messages[0].content }}\n"; }
  tmpl = ChatTemplate::Load(dir.string());
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  EXPECT_EQ(*(*tmpl)->Render(in), "Jhi");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sluice::chat
