// Post-processors: where add_special_tokens=true inserts BOS/EOS/CLS/SEP
// (internal). Only single-sequence encodings are supported.
#ifndef SLUICE_ENGINE_TOKENIZER_POST_PROCESSORS_H_
#define SLUICE_ENGINE_TOKENIZER_POST_PROCESSORS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace sluice::tokenizer::internal {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Called only when add_special_tokens is true: every supported
  // post-processor leaves ids unchanged otherwise.
  virtual void AddSpecialTokens(std::vector<int32_t>* ids) const = 0;
  // Every id this processor may insert, for validation at load time.
  virtual void CollectIds(std::vector<int32_t>* ids) const = 0;
};

// [prefix...] + ids + [suffix...]; covers TemplateProcessing's single
// template as well as Bert/Roberta processing and transformers'
// add_bos_token/add_eos_token.
class AffixPostProcessor final : public PostProcessor {
 public:
  AffixPostProcessor(std::vector<int32_t> prefix, std::vector<int32_t> suffix)
      : prefix_(std::move(prefix)), suffix_(std::move(suffix)) {}
  void AddSpecialTokens(std::vector<int32_t>* ids) const override;
  void CollectIds(std::vector<int32_t>* ids) const override {
    ids->insert(ids->end(), prefix_.begin(), prefix_.end());
    ids->insert(ids->end(), suffix_.begin(), suffix_.end());
  }

 private:
  std::vector<int32_t> prefix_, suffix_;
};

// A JSON null yields nullptr.
absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const nlohmann::json& json);

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_POST_PROCESSORS_H_
