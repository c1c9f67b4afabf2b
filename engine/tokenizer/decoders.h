// Decoders of the `tokenizers` pipeline (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_DECODERS_H_
#define SLUICE_ENGINE_TOKENIZER_DECODERS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace sluice::tokenizer::internal {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // `tokenizers`' decode_chain: token strings in, token strings out; the
  // final text is the concatenation of the output.
  virtual absl::Status DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// Whether the decoder (or a Sequence inside it) has a ByteFallback step.
bool DecoderHasByteFallback(const nlohmann::json& json);

// Whether streaming may decode a sliding window of recent ids instead of the
// whole sequence (see IncrementalDetokenizer). True unless the chain has a
// Strip that removes trailing characters or more than one leading one: those
// make a window's text depend on where the window starts or ends in ways the
// window's own prefix does not cancel.
bool DecoderSupportsSlidingWindow(const nlohmann::json& json);

// A JSON null yields nullptr (tokens are then joined with spaces).
absl::StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const nlohmann::json& json);

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_DECODERS_H_
