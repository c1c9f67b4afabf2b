// Small helpers for reading tokenizer.json with nlohmann::json without
// letting its exceptions escape (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_JSON_UTIL_H_
#define SLUICE_ENGINE_TOKENIZER_JSON_UTIL_H_

#include <memory>
#include <string>
#include <vector>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"
#include "nlohmann/json.hpp"

namespace sluice::tokenizer::internal {

// Parses the `key` array of a "Sequence" component (normalizer, pre-tokenizer or
// decoder) with `parse_one`, dropping null parts. `what` names the component in errors.
template <typename Part, typename ParseOne>
absl::StatusOr<std::vector<std::unique_ptr<Part>>> ParseSequenceParts(
    const nlohmann::json& json, const char* key, const char* what, ParseOne parse_one) {
  auto it = json.find(key);
  if (it == json.end() || !it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat("Sequence ", what, " needs a \"", key, "\" array"));
  }
  std::vector<std::unique_ptr<Part>> parts;
  for (const auto& item : *it) {
    absl::StatusOr<std::unique_ptr<Part>> part = parse_one(item);
    if (!part.ok()) return part.status();
    if (*part != nullptr) parts.push_back(*std::move(part));
  }
  return parts;
}

inline absl::StatusOr<std::string> GetString(const nlohmann::json& obj, std::string_view key) {
  if (!obj.is_object())
    return absl::InvalidArgumentError(
        absl::StrCat("expected an object around \"", AsAbsl(key), "\""));
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("missing string field \"", AsAbsl(key), "\""));
  }
  return it->get<std::string>();
}

inline std::string GetStringOr(const nlohmann::json& obj, std::string_view key,
                               std::string fallback) {
  if (!obj.is_object()) return fallback;
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) return fallback;
  return it->get<std::string>();
}

inline bool GetBoolOr(const nlohmann::json& obj, std::string_view key, bool fallback) {
  if (!obj.is_object()) return fallback;
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_boolean()) return fallback;
  return it->get<bool>();
}

inline absl::StatusOr<int64_t> GetIntOr(const nlohmann::json& obj, std::string_view key,
                                        int64_t fallback) {
  if (!obj.is_object()) return fallback;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("field \"", AsAbsl(key), "\" must be an integer"));
  }
  return it->get<int64_t>();
}

// A {"String": "..."} or {"Regex": "..."} pattern object.
struct PatternSpec {
  bool is_regex = false;
  std::string text;
};

inline absl::StatusOr<PatternSpec> GetPattern(const nlohmann::json& obj) {
  auto it = obj.is_object() ? obj.find("pattern") : obj.end();
  if (!obj.is_object() || it == obj.end() || !it->is_object()) {
    return absl::InvalidArgumentError("missing \"pattern\" object");
  }
  PatternSpec spec;
  if (auto s = it->find("String"); s != it->end() && s->is_string()) {
    spec.text = s->get<std::string>();
    return spec;
  }
  if (auto r = it->find("Regex"); r != it->end() && r->is_string()) {
    spec.is_regex = true;
    spec.text = r->get<std::string>();
    return spec;
  }
  return absl::InvalidArgumentError("pattern must have a \"String\" or \"Regex\" field");
}

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_JSON_UTIL_H_
