// sluice-tokenize: encodes or decodes JSON Lines with a tokenizer directory.
//
//   sluice-tokenize --tokenizer DIR [--add_special_tokens] < in.jsonl
//     {"text": "..."}  ->  {"ids": [...]}
//   sluice-tokenize --tokenizer DIR --decode [--skip_special_tokens] < in.jsonl
//     {"ids": [...]}   ->  {"text": "..."}
//
// A malformed line yields {"error": "..."} and processing continues, so one
// bad record never loses the rest of a batch. Exits non-zero only when the
// tokenizer cannot be loaded. Flag names may be spelled with dashes
// (--add-special-tokens) as well as underscores.
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, tokenizer, "", "Directory with tokenizer.json (and tokenizer_config.json).");
ABSL_FLAG(bool, add_special_tokens, false, "Encode: add the post-processor's special tokens.");
ABSL_FLAG(bool, decode, false, "Decode {\"ids\": [...]} lines instead of encoding text.");
ABSL_FLAG(bool, skip_special_tokens, false, "Decode: drop special tokens.");

namespace {

using nlohmann::json;

std::string ErrorLine(std::string_view message) {
  // dump() with the replace handler cannot throw on our own messages.
  return json{{"error", std::string(message)}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ProcessLine(const sluice::tokenizer::Tokenizer& tokenizer, const std::string& line,
                        bool decode, bool add_special_tokens, bool skip_special_tokens) {
  json input;
  try {
    input = json::parse(line);
  } catch (const json::exception& e) {
    return ErrorLine(absl::StrCat("malformed JSON: ", e.what()));
  }
  if (!input.is_object()) return ErrorLine("expected a JSON object");
  if (decode) {
    auto ids_it = input.find("ids");
    if (ids_it == input.end() || !ids_it->is_array()) return ErrorLine("expected \"ids\": [...]");
    std::vector<int32_t> ids;
    ids.reserve(ids_it->size());
    for (const auto& id : *ids_it) {
      if (!id.is_number_integer()) return ErrorLine("ids must be integers");
      const auto value = id.get<int64_t>();
      if (value < INT32_MIN || value > INT32_MAX) return ErrorLine("id out of range");
      ids.push_back(static_cast<int32_t>(value));
    }
    absl::StatusOr<std::string> text = tokenizer.Decode(ids, skip_special_tokens);
    if (!text.ok()) return ErrorLine(text.status().ToString());
    return json{{"text", *text}}.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  auto text_it = input.find("text");
  if (text_it == input.end() || !text_it->is_string())
    return ErrorLine("expected \"text\": \"...\"");
  absl::StatusOr<std::vector<int32_t>> ids =
      tokenizer.Encode(text_it->get_ref<const std::string&>(), add_special_tokens);
  if (!ids.ok()) return ErrorLine(ids.status().ToString());
  return json{{"ids", *ids}}.dump();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Encode {\"text\": ...} or decode (--decode) {\"ids\": [...]} JSON Lines from stdin.");
  // absl flags only know underscores; accept the dashed spelling too.
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> arg_pointers;
  for (std::string& arg : args) {
    if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) {
      const size_t name_end = std::min(arg.find('='), arg.size());
      for (size_t i = 2; i < name_end; ++i) {
        if (arg[i] == '-') arg[i] = '_';
      }
    }
    arg_pointers.push_back(arg.data());
  }
  absl::ParseCommandLine(static_cast<int>(arg_pointers.size()), arg_pointers.data());
  const std::string dir = absl::GetFlag(FLAGS_tokenizer);
  if (dir.empty()) {
    std::cerr << "sluice-tokenize: --tokenizer DIR is required\n";
    return 2;
  }
  absl::StatusOr<std::unique_ptr<sluice::tokenizer::Tokenizer>> tokenizer =
      sluice::tokenizer::Tokenizer::LoadFromDirectory(dir);
  if (!tokenizer.ok()) {
    std::cerr << "sluice-tokenize: " << tokenizer.status() << "\n";
    return 1;
  }
  const bool decode = absl::GetFlag(FLAGS_decode);
  const bool add_special_tokens = absl::GetFlag(FLAGS_add_special_tokens);
  const bool skip_special_tokens = absl::GetFlag(FLAGS_skip_special_tokens);
  std::ios::sync_with_stdio(false);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::cout << ProcessLine(**tokenizer, line, decode, add_special_tokens, skip_special_tokens)
              << '\n';
  }
  std::cout.flush();
  return 0;
}
