// Normalizers of the `tokenizers` pipeline (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_NORMALIZERS_H_
#define SLUICE_ENGINE_TOKENIZER_NORMALIZERS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace sluice::tokenizer::internal {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites *text (valid UTF-8) in place.
  virtual absl::Status Normalize(std::string* text) const = 0;
};

// Builds a normalizer from its tokenizer.json object. A JSON null yields
// nullptr (no normalization). Unknown types are Unimplemented.
absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const nlohmann::json& json);

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_NORMALIZERS_H_
