// Byte-pair-encoding model, a port of `tokenizers`' models::bpe (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_BPE_MODEL_H_
#define SLUICE_ENGINE_TOKENIZER_BPE_MODEL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json_fwd.hpp"

namespace sluice::tokenizer::internal {

class BpeModel {
 public:
  // Builds the model from tokenizer.json's "model" object. Merges may be
  // "a b" strings or ["a", "b"] pairs. cache_capacity bounds the word cache
  // (0 disables it).
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model,
                                                            size_t cache_capacity);

  // Appends the ids of one pre-tokenized word. Errors only when the model
  // needs its unk_token and that token is not in the vocabulary (as
  // `tokenizers` does).
  absl::Status Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when the id names no model token.
  const std::string* IdToToken(int32_t id) const;
  // One past the largest model id.
  int32_t id_limit() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  using Ids = absl::InlinedVector<int32_t, 4>;
  struct MergeTarget {
    int32_t rank;
    int32_t new_id;
  };
  struct CacheShard {
    absl::Mutex mutex;
    absl::flat_hash_map<std::string, Ids> map ABSL_GUARDED_BY(mutex);
  };
  static constexpr size_t kCacheShards = 16;
  // Words longer than this are rare and would bloat the cache.
  static constexpr size_t kMaxCachedWordBytes = 256;

  BpeModel() = default;
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // The uncached algorithm: initial symbols (with unk / byte fallback), then
  // lowest-rank-first merging.
  absl::Status MergeWord(std::string_view word, Ids* ids) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_present_;
  absl::flat_hash_map<uint64_t, MergeTarget> merges_;
  // Ids of one-character tokens for code points below 0x800 (-1 if absent),
  // used when no continuing_subword_prefix/end_of_word_suffix applies. Most
  // initial symbols of byte-level models are such characters.
  std::vector<int32_t> small_char_ids_;
  std::array<int32_t, 256> byte_fallback_ids_{};
  bool has_all_byte_fallback_ids_ = false;

  std::string unk_token_;  // empty: none
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;

  size_t cache_capacity_per_shard_ = 0;
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_BPE_MODEL_H_
