// The assembled pipeline behind Tokenizer (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_TOKENIZER_IMPL_H_
#define SLUICE_ENGINE_TOKENIZER_TOKENIZER_IMPL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer/added_vocabulary.h"
#include "engine/tokenizer/bpe_model.h"
#include "engine/tokenizer/decoders.h"
#include "engine/tokenizer/normalizers.h"
#include "engine/tokenizer/post_processors.h"
#include "engine/tokenizer/pre_tokenizers.h"
#include "engine/tokenizer/tokenizer.h"

namespace sluice::tokenizer {

class TokenizerImpl {
 public:
  static absl::StatusOr<std::unique_ptr<TokenizerImpl>> Create(
      std::string_view tokenizer_json, std::string_view tokenizer_config_json,
      const TokenizerOptions& options);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens) const;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  int32_t vocab_size() const { return vocab_size_; }
  std::optional<int32_t> bos_token_id() const { return bos_id_; }
  std::optional<int32_t> eos_token_id() const { return eos_id_; }
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when id names no token.
  const std::string* IdToToken(int32_t id) const;
  // True for <0xXX> tokens when the decoder contains ByteFallback. Such a
  // token's text depends on the whole run of byte tokens it belongs to (an
  // invalid run decodes to one U+FFFD per byte), so streaming must wait for
  // the run to end.
  bool IsByteFallbackToken(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < is_byte_fallback_token_.size() &&
           is_byte_fallback_token_[static_cast<size_t>(id)];
  }
  // See internal::DecoderSupportsSlidingWindow.
  bool streaming_window_safe() const { return streaming_window_safe_; }
  bool IsSpecial(int32_t id) const {
    return id >= 0 && id < vocab_size_ && is_special_[static_cast<size_t>(id)];
  }

 private:
  TokenizerImpl() = default;
  absl::Status LoadConfig(std::string_view config_json, const TokenizerOptions& options);

  std::unique_ptr<internal::Normalizer> normalizer_;
  std::unique_ptr<internal::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<internal::BpeModel> model_;
  std::unique_ptr<internal::PostProcessor> post_processor_;
  std::unique_ptr<internal::Decoder> decoder_;
  internal::AddedVocabulary added_vocabulary_;

  absl::flat_hash_map<std::string, int32_t> added_token_to_id_;
  absl::flat_hash_map<int32_t, std::string> added_id_to_token_;
  std::vector<bool> is_special_;  // indexed by id
  std::vector<bool> is_byte_fallback_token_;
  bool streaming_window_safe_ = true;  // indexed by id; empty if unused
  int32_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
};

}  // namespace sluice::tokenizer

#endif  // SLUICE_ENGINE_TOKENIZER_TOKENIZER_IMPL_H_
