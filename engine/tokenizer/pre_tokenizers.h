// Pre-tokenizers of the `tokenizers` pipeline (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_PRE_TOKENIZERS_H_
#define SLUICE_ENGINE_TOKENIZER_PRE_TOKENIZERS_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace sluice::tokenizer::internal {

// One split of the input on its way to the model.
struct Piece {
  std::string text;
  // Whether the piece starts at byte 0 of the original input. Metaspace's
  // prepend_scheme "first" only prepends to such a piece.
  bool at_origin = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces each piece by its sub-pieces; empty pieces are dropped, as
  // `tokenizers`' PreTokenizedString::split does.
  virtual absl::Status PreTokenize(std::vector<Piece>* pieces) const = 0;
};

// Decodes a string that must hold exactly one character (Metaspace
// replacement, Strip content).
absl::StatusOr<char32_t> ParseSingleChar(const std::string& s, std::string_view what);

// A JSON null yields nullptr (no pre-tokenization).
absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const nlohmann::json& json);

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_PRE_TOKENIZERS_H_
