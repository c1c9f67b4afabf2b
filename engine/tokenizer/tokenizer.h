// A Hugging Face `tokenizers`-exact BPE tokenizer.
//
// The oracle is the Python `tokenizers` library: for a given tokenizer.json,
// `Tokenizer::Encode(text, add_special_tokens)` returns the ids of
// `tokenizers.Tokenizer.from_file(path).encode(text, add_special_tokens=...)`
// and `Decode(ids, skip)` returns `decode(ids, skip_special_tokens=skip)`.
// tests/tokenizer/golden_test.cc checks that on a committed corpus for the
// Qwen3, Llama 3, DeepSeek-V3 and Llama 2 tokenizers.
//
// Known, deliberate differences from `tokenizers`:
//  - Decode rejects ids that are negative, >= vocab_size() or unassigned
//    (OutOfRange / InvalidArgument); `tokenizers` silently drops them. A server
//    should notice a model emitting ids its tokenizer does not know.
//  - Encode rejects invalid UTF-8 (InvalidArgument); Python cannot even pass it.
//  - Only what these four tokenizers (and close relatives) need is supported:
//    BPE models; NFC/NFKC/NFD/NFKD, Lowercase, Strip, Prepend, Replace and
//    Sequence normalizers; Split, ByteLevel, Metaspace, Digits, Whitespace and
//    Sequence pre-tokenizers; ByteLevel, Metaspace, Replace, ByteFallback,
//    Fuse, Strip and Sequence decoders; ByteLevel, TemplateProcessing,
//    BertProcessing, RobertaProcessing and Sequence post-processors. Anything
//    else fails to load with Unimplemented rather than tokenizing wrongly.
//  - Offsets, truncation, padding and pair encodings are not implemented: the
//    server only needs ids.
//
// Thread safety: a loaded Tokenizer is immutable apart from an internal,
// internally synchronised word cache, so all const methods may be called
// concurrently.
#ifndef SLUICE_ENGINE_TOKENIZER_TOKENIZER_H_
#define SLUICE_ENGINE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sluice::tokenizer {

struct TokenizerOptions {
  // transformers 4's LlamaTokenizerFast rebuilt the post-processor from
  // tokenizer_config.json's add_bos_token / add_eos_token, so for example
  // DeepSeek-V3 (whose tokenizer.json adds nothing) got a BOS token there.
  // `tokenizers` and transformers 5 both follow tokenizer.json only, which is
  // the default here. Set this to reproduce the transformers 4 behaviour: when
  // the config has add_bos_token or add_eos_token, add_special_tokens=true
  // yields [bos] + ids + [eos] as configured, replacing tokenizer.json's
  // post-processor.
  bool apply_config_add_bos_eos = false;
  // Upper bound on the number of cached BPE results (pre-tokenized words).
  // 0 disables the cache.
  size_t word_cache_capacity = 1 << 16;
};

class TokenizerImpl;

class Tokenizer {
 public:
  // Loads tokenizer.json and, when present, tokenizer_config.json from dir.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFromDirectory(
      const std::string& dir, const TokenizerOptions& options = {});
  // tokenizer_config_json may be empty (no config).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFromJson(
      std::string_view tokenizer_json, std::string_view tokenizer_config_json,
      const TokenizerOptions& options = {});

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // InvalidArgument on invalid UTF-8 input.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens) const;
  // OutOfRange for ids outside [0, vocab_size()), InvalidArgument for ids in
  // range that name no token.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // One past the largest id, model vocabulary and added tokens included (the
  // size an embedding table needs). For the four reference tokenizers this is
  // also `tokenizers`' get_vocab_size(with_added_tokens=True).
  int32_t vocab_size() const;
  // From tokenizer_config.json's bos_token / eos_token (string or AddedToken
  // object); nullopt when the config names none or names an unknown token.
  std::optional<int32_t> bos_token_id() const;
  std::optional<int32_t> eos_token_id() const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  // True for added tokens marked "special" (the ones skip_special_tokens drops).
  bool IsSpecial(int32_t id) const;

  // For IncrementalDetokenizer and tests: the internal pipeline.
  const TokenizerImpl& impl() const { return *impl_; }

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerImpl> impl);
  std::unique_ptr<TokenizerImpl> impl_;
};

// Streaming detokenizer for one generated sequence.
//
// Every delta is valid UTF-8 (text that ends in an incomplete character is
// held back), and the concatenation of all deltas plus Finish() equals
// Decode(all ids pushed, skip_special_tokens).
//
// It re-decodes only a short window of recent ids per step (the scheme used by
// vLLM and TGI): the text of ids [prefix, read) was already emitted, so the
// delta is Decode(ids[prefix:]) minus Decode(ids[prefix:read]). Decoding both
// from the same window start cancels decoder effects that depend on the first
// token (Llama 2's leading-space Strip, Metaspace's first-token rule). Three
// guards keep this exact:
//  - text is held back while the last visible id is a <0xXX> byte-fallback
//    token, because ByteFallback decodes a whole run of them at once (an
//    invalid run becomes one U+FFFD per byte, even bytes that looked complete);
//  - decoders whose text depends on the window's end (a Strip with stop > 0,
//    or start > 1) never slide the window: each step decodes all ids;
//  - if the window's text ever stops extending what was emitted, it falls
//    back to decoding all ids.
// The corpus tests and the fuzz target check deltas + Finish() == Decode.
//
// Not thread-safe; one per sequence. The Tokenizer must outlive it.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens);

  // Returns the new text delta (may be empty). Errors for ids Decode rejects;
  // the bad id is not kept, so the stream can continue.
  absl::StatusOr<std::string> Push(int32_t id);
  // Returns any text still held back (for example an incomplete UTF-8 tail,
  // decoded as U+FFFD exactly as Decode would). Further Push calls continue.
  std::string Finish();

  // Everything emitted so far.
  const std::string& text() const { return emitted_; }

 private:
  // Emits the text of ids_[prefix_offset_:] beyond prefix_text_, holding
  // back a trailing U+FFFD (an incomplete character) unless final.
  absl::StatusOr<std::string> Advance(bool final);
  absl::StatusOr<std::string> DecodeRange(size_t begin, size_t end) const;

  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // window start
  size_t read_offset_ = 0;    // the text of ids before this has been emitted
  std::string prefix_text_;   // Decode(ids_[prefix_offset_:read_offset_])
  std::string emitted_;
};

}  // namespace sluice::tokenizer

#endif  // SLUICE_ENGINE_TOKENIZER_TOKENIZER_H_
