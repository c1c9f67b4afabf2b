#include "engine/tokenizer/bpe_model.h"

#include <queue>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/tokenizer/json_util.h"
#include "engine/tokenizer/unicode.h"

namespace sluice::tokenizer::internal {
namespace {

// Doubly linked list node of the word being merged (models::bpe::word::Symbol).
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;  // bytes of the word covered; 0 marks a symbol merged away
};

struct Merge {
  int32_t pos;
  int32_t rank;
  int32_t new_id;
};

// Lowest rank first, then leftmost, exactly as `tokenizers`' Merge ordering.
struct MergeAfter {
  bool operator()(const Merge& a, const Merge& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.pos > b.pos;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const nlohmann::json& model,
                                                             size_t cache_capacity) {
  if (!model.is_object()) return absl::InvalidArgumentError("\"model\" must be an object");
  const std::string type = GetStringOr(model, "type", "BPE");
  if (type != "BPE") {
    return absl::UnimplementedError(absl::StrCat("model type \"", type, "\" is not supported"));
  }
  if (auto dropout = model.find("dropout"); dropout != model.end() && !dropout->is_null()) {
    if (!dropout->is_number() || dropout->get<double>() != 0.0) {
      return absl::UnimplementedError("BPE dropout is not supported (inference is deterministic)");
    }
  }
  std::unique_ptr<BpeModel> bpe(new BpeModel());
  bpe->unk_token_ = GetStringOr(model, "unk_token", "");
  bpe->continuing_subword_prefix_ = GetStringOr(model, "continuing_subword_prefix", "");
  bpe->end_of_word_suffix_ = GetStringOr(model, "end_of_word_suffix", "");
  bpe->fuse_unk_ = GetBoolOr(model, "fuse_unk", false);
  bpe->byte_fallback_ = GetBoolOr(model, "byte_fallback", false);
  bpe->ignore_merges_ = GetBoolOr(model, "ignore_merges", false);

  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) {
    return absl::InvalidArgumentError("BPE model needs a \"vocab\" object");
  }
  bpe->vocab_.reserve(vocab->size());
  int64_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it->is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocab id of \"", it.key(), "\" is not an integer"));
    }
    const int64_t id = it->get<int64_t>();
    if (id < 0 || id >= (int64_t{1} << 31) - 1) {
      return absl::InvalidArgumentError(absl::StrCat("vocab id ", id, " out of range"));
    }
    bpe->vocab_[it.key()] = static_cast<int32_t>(id);
    max_id = std::max(max_id, id);
  }
  // Ids index dense tables; real vocabularies are contiguous, so refuse ids
  // so sparse that a tiny hostile file could demand gigabytes.
  if (max_id >= 4 * static_cast<int64_t>(bpe->vocab_.size()) + 1024) {
    return absl::InvalidArgumentError(absl::StrCat("vocab ids are too sparse (max id ", max_id,
                                                   " for ", bpe->vocab_.size(), " tokens)"));
  }
  bpe->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  bpe->id_present_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : bpe->vocab_) {
    bpe->id_to_token_[id] = token;
    bpe->id_present_[id] = true;
  }

  auto merges = model.find("merges");
  if (merges != model.end() && !merges->is_null()) {
    if (!merges->is_array()) return absl::InvalidArgumentError("\"merges\" must be an array");
    bpe->merges_.reserve(merges->size());
    const size_t prefix_len = bpe->continuing_subword_prefix_.size();
    int32_t rank = 0;
    for (const auto& merge : *merges) {
      std::string left, right;
      if (merge.is_string()) {
        const std::string& line = merge.get_ref<const std::string&>();
        const size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("bad merge #", rank + 1, ": \"", line, "\""));
        }
        left = line.substr(0, space);
        right = line.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        return absl::InvalidArgumentError(absl::StrCat("bad merge #", rank + 1));
      }
      auto left_it = bpe->vocab_.find(left);
      auto right_it = bpe->vocab_.find(right);
      if (left_it == bpe->vocab_.end() || right_it == bpe->vocab_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("merge #", rank + 1, " uses a token missing from the vocab"));
      }
      // With a continuing-subword prefix the right part carries the prefix,
      // which the merged token keeps only once.
      std::string merged =
          left + (prefix_len > 0 && right.size() >= prefix_len &&
                          right.compare(0, prefix_len, bpe->continuing_subword_prefix_) == 0
                      ? right.substr(prefix_len)
                      : right);
      auto merged_it = bpe->vocab_.find(merged);
      if (merged_it == bpe->vocab_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("merge #", rank + 1, " produces a token missing from the vocab"));
      }
      // Later duplicates must not override the earlier (lower) rank.
      bpe->merges_.try_emplace(PairKey(left_it->second, right_it->second),
                               MergeTarget{rank, merged_it->second});
      ++rank;
    }
  }

  if (!bpe->unk_token_.empty()) {
    if (auto it = bpe->vocab_.find(bpe->unk_token_); it != bpe->vocab_.end()) {
      bpe->unk_id_ = it->second;
    }
  }
  bpe->has_all_byte_fallback_ids_ = true;
  for (int b = 0; b < 256; ++b) {
    auto it = bpe->vocab_.find(absl::StrFormat("<0x%02X>", b));
    bpe->byte_fallback_ids_[b] = it == bpe->vocab_.end() ? -1 : it->second;
    if (it == bpe->vocab_.end()) bpe->has_all_byte_fallback_ids_ = false;
  }
  bpe->small_char_ids_.assign(0x800, -1);
  std::string ch;
  for (char32_t cp = 0; cp < 0x800; ++cp) {
    ch.clear();
    AppendUtf8(cp, &ch);
    if (auto it = bpe->vocab_.find(ch); it != bpe->vocab_.end()) {
      bpe->small_char_ids_[cp] = it->second;
    }
  }
  bpe->cache_capacity_per_shard_ = (cache_capacity + kCacheShards - 1) / kCacheShards;
  return bpe;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(AsAbsl(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) {
    return nullptr;
  }
  return &id_to_token_[id];
}

absl::Status BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return absl::OkStatus();
  if (ignore_merges_) {
    if (auto it = vocab_.find(AsAbsl(word)); it != vocab_.end()) {
      ids->push_back(it->second);
      return absl::OkStatus();
    }
  }
  const bool cacheable = cache_capacity_per_shard_ > 0 && word.size() <= kMaxCachedWordBytes;
  CacheShard* shard = nullptr;
  if (cacheable) {
    shard = &cache_[absl::HashOf(AsAbsl(word)) % kCacheShards];
    absl::MutexLock lock(&shard->mutex);
    if (auto it = shard->map.find(AsAbsl(word)); it != shard->map.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return absl::OkStatus();
    }
  }
  Ids result;
  if (absl::Status s = MergeWord(word, &result); !s.ok()) return s;
  ids->insert(ids->end(), result.begin(), result.end());
  if (cacheable) {
    absl::MutexLock lock(&shard->mutex);
    // Crude but bounded: forget everything when full. Pre-tokenized words
    // follow a Zipf law, so the hot ones come straight back.
    if (shard->map.size() >= cache_capacity_per_shard_) shard->map.clear();
    shard->map.emplace(std::string(word), std::move(result));
  }
  return absl::OkStatus();
}

absl::Status BpeModel::MergeWord(std::string_view word, Ids* ids) const {
  absl::InlinedVector<Symbol, 32> symbols;
  const bool plain_chars = continuing_subword_prefix_.empty() && end_of_word_suffix_.empty();
  auto add_symbol = [&symbols](int32_t id, size_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, index - 1, -1, static_cast<uint32_t>(len)});
    if (index > 0) symbols[index - 1].next = index;
  };
  // Pending unknown run (`tokenizers` fuses consecutive unknowns when fuse_unk).
  bool has_unk = false;
  size_t unk_len = 0;
  std::string with_affixes;
  for (size_t i = 0; i < word.size();) {
    char32_t cp;
    const size_t len = DecodeUtf8(word, i, &cp);
    const bool is_first = i == 0;
    const bool is_last = i + len == word.size();
    int32_t id = -1;
    std::string_view piece = word.substr(i, len);
    if (plain_chars && cp < 0x800) {
      id = small_char_ids_[cp];
    } else {
      if (!plain_chars) {
        with_affixes.clear();
        if (!is_first) with_affixes.append(continuing_subword_prefix_);
        with_affixes.append(piece);
        if (is_last) with_affixes.append(end_of_word_suffix_);
        piece = with_affixes;
      }
      if (auto it = vocab_.find(AsAbsl(piece)); it != vocab_.end()) id = it->second;
    }
    i += len;
    if (id >= 0) {
      if (has_unk) {
        add_symbol(*unk_id_, unk_len);
        has_unk = false;
      }
      add_symbol(id, len);
      continue;
    }
    if (byte_fallback_) {
      // All bytes of the (affixed) piece must have a <0xXX> token, otherwise
      // the character counts as unknown.
      bool all = true;
      for (unsigned char b : piece) {
        if (byte_fallback_ids_[b] < 0) {
          all = false;
          break;
        }
      }
      if (all) {
        for (unsigned char b : piece) add_symbol(byte_fallback_ids_[b], 1);
        continue;
      }
    }
    if (!unk_token_.empty()) {
      if (!unk_id_.has_value()) {
        return absl::FailedPreconditionError(
            absl::StrCat("unk_token \"", unk_token_, "\" is not in the vocabulary"));
      }
      if (has_unk && fuse_unk_) {
        unk_len += len;
      } else {
        if (has_unk) add_symbol(*unk_id_, unk_len);
        has_unk = true;
        unk_len = len;
      }
    }
    // Without an unk_token an unknown character is dropped, like `tokenizers`.
  }
  if (has_unk) add_symbol(*unk_id_, unk_len);

  std::priority_queue<Merge, absl::InlinedVector<Merge, 32>, MergeAfter> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    auto it = merges_.find(PairKey(symbols[i].id, symbols[i + 1].id));
    if (it != merges_.end()) {
      queue.push(Merge{static_cast<int32_t>(i), it->second.rank, it->second.new_id});
    }
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.len == 0 || current.next < 0) continue;
    const int32_t next_pos = current.next;
    const Symbol right = symbols[next_pos];
    // Skip entries made stale by earlier merges.
    auto target = merges_.find(PairKey(current.id, right.id));
    if (target == merges_.end() || target->second.new_id != top.new_id) continue;

    current.id = top.new_id;
    current.len += right.len;
    current.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;

    if (current.prev >= 0) {
      auto it = merges_.find(PairKey(symbols[current.prev].id, current.id));
      if (it != merges_.end()) queue.push(Merge{current.prev, it->second.rank, it->second.new_id});
    }
    if (current.next >= 0) {
      auto it = merges_.find(PairKey(current.id, symbols[current.next].id));
      if (it != merges_.end()) queue.push(Merge{top.pos, it->second.rank, it->second.new_id});
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids->push_back(s.id);
  }
  return absl::OkStatus();
}

}  // namespace sluice::tokenizer::internal
