#include "engine/tokenizer/post_processors.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/json_util.h"

namespace sluice::tokenizer::internal {
namespace {

// A processor that adds nothing (ByteLevel only adjusts offsets).
class IdentityPostProcessor final : public PostProcessor {
 public:
  void AddSpecialTokens(std::vector<int32_t>*) const override {}
  void CollectIds(std::vector<int32_t>*) const override {}
};

class SequencePostProcessor final : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void AddSpecialTokens(std::vector<int32_t>* ids) const override {
    for (const auto& part : parts_) part->AddSpecialTokens(ids);
  }
  void CollectIds(std::vector<int32_t>* ids) const override {
    for (const auto& part : parts_) part->CollectIds(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

absl::StatusOr<std::unique_ptr<PostProcessor>> TemplateFromJson(const nlohmann::json& json) {
  auto single = json.find("single");
  if (single == json.end() || !single->is_array()) {
    return absl::InvalidArgumentError("TemplateProcessing needs a \"single\" array");
  }
  auto specials = json.find("special_tokens");
  std::vector<int32_t> prefix, suffix;
  bool seen_sequence = false;
  for (const auto& piece : *single) {
    if (!piece.is_object()) return absl::InvalidArgumentError("bad template piece");
    if (auto seq = piece.find("Sequence"); seq != piece.end()) {
      if (seen_sequence || GetStringOr(*seq, "id", "A") != "A") {
        return absl::UnimplementedError("single template must contain sequence A exactly once");
      }
      seen_sequence = true;
      continue;
    }
    auto special = piece.find("SpecialToken");
    if (special == piece.end()) return absl::InvalidArgumentError("bad template piece");
    absl::StatusOr<std::string> name = GetString(*special, "id");
    if (!name.ok()) return name.status();
    if (specials == json.end() || !specials->is_object() || !specials->contains(*name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("template special token \"", *name, "\" is not defined"));
    }
    const auto& def = (*specials)[*name];
    auto ids = def.find("ids");
    if (ids == def.end() || !ids->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat("special token \"", *name, "\" has no ids"));
    }
    for (const auto& id : *ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(absl::StrCat("bad id for \"", *name, "\""));
      }
      (seen_sequence ? suffix : prefix).push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  }
  if (!seen_sequence) return absl::InvalidArgumentError("single template lacks sequence A");
  return std::make_unique<AffixPostProcessor>(std::move(prefix), std::move(suffix));
}

// Bert/Roberta: {"cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}.
absl::StatusOr<int32_t> PairId(const nlohmann::json& json, const char* key) {
  auto it = json.find(key);
  if (it == json.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("post_processor needs \"", key, "\""));
  }
  return static_cast<int32_t>((*it)[1].get<int64_t>());
}

}  // namespace

void AffixPostProcessor::AddSpecialTokens(std::vector<int32_t>* ids) const {
  if (!prefix_.empty()) ids->insert(ids->begin(), prefix_.begin(), prefix_.end());
  ids->insert(ids->end(), suffix_.begin(), suffix_.end());
}

absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const nlohmann::json& json) {
  if (json.is_null()) return std::unique_ptr<PostProcessor>();
  absl::StatusOr<std::string> type = GetString(json, "type");
  if (!type.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("post_processor: ", type.status().message()));
  }
  if (*type == "ByteLevel") return std::make_unique<IdentityPostProcessor>();
  if (*type == "TemplateProcessing") return TemplateFromJson(json);
  if (*type == "BertProcessing" || *type == "RobertaProcessing") {
    absl::StatusOr<int32_t> cls = PairId(json, "cls");
    if (!cls.ok()) return cls.status();
    absl::StatusOr<int32_t> sep = PairId(json, "sep");
    if (!sep.ok()) return sep.status();
    return std::make_unique<AffixPostProcessor>(std::vector<int32_t>{*cls},
                                                std::vector<int32_t>{*sep});
  }
  if (*type == "Sequence") {
    auto it = json.find("processors");
    if (it == json.end() || !it->is_array()) {
      return absl::InvalidArgumentError("Sequence post_processor needs a \"processors\" array");
    }
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (const auto& item : *it) {
      absl::StatusOr<std::unique_ptr<PostProcessor>> part = PostProcessorFromJson(item);
      if (!part.ok()) return part.status();
      if (*part != nullptr) parts.push_back(*std::move(part));
    }
    return std::make_unique<SequencePostProcessor>(std::move(parts));
  }
  return absl::UnimplementedError(
      absl::StrCat("post_processor type \"", *type, "\" is not supported"));
}

}  // namespace sluice::tokenizer::internal
