#include "engine/cache/prefix_cache.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/budget/budget.h"

namespace sluice::engine {
namespace {

// splitmix64's finaliser: a bijection with full avalanche.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Two independently seeded 64-bit lanes over the same words.
struct Hasher {
  uint64_t hi, lo;
  Hasher(const BlockHash& seed) : hi(seed.hi ^ 0x243f6a8885a308d3ull), lo(seed.lo ^ 0x13198a2e03707344ull) {}
  void Add(uint64_t word) {
    hi = Mix(hi ^ Mix(word));
    lo = Mix(lo + Mix(word ^ 0xa4093822299f31d0ull) * 0x9e3779b97f4a7c15ull);
  }
  BlockHash Done(uint64_t length) {
    Add(length);
    return {Mix(hi ^ 0x082efa98ec4e6c89ull), Mix(lo ^ 0x452821e638d01377ull)};
  }
};

uint64_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

}  // namespace

BlockHash RootBlockHash(const SequenceBudget* budget) {
  Hasher h(BlockHash{0x736c75696365ull, 0x707265666978ull});  // "sluice", "prefix"
  if (budget == nullptr || budget->empty()) return h.Done(0);
  h.Add(FloatBits(budget->skip_ratio));
  h.Add(static_cast<uint64_t>(budget->experts_per_token));
  h.Add(FloatBits(budget->attention_gate_floor));
  for (uint8_t s : budget->skip_layer) h.Add(s);
  return h.Done(1 + budget->skip_layer.size());
}

BlockHash ChainBlockHash(const BlockHash& parent, absl::Span<const int32_t> tokens) {
  Hasher h(parent);
  for (int32_t t : tokens) h.Add(static_cast<uint32_t>(t));
  return h.Done(tokens.size());
}

// ---- KvBlockPool ----------------------------------------------------------------------

KvBlockPool::KvBlockPool(int32_t num_blocks, int32_t block_size, bool caching)
    : num_blocks_(num_blocks), block_size_(block_size), caching_(caching), blocks_(num_blocks) {
  if (caching_) tokens_.assign(static_cast<size_t>(num_blocks) * block_size, 0);
  free_.reserve(num_blocks);
  // Hand out low ids first (pop from the back).
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

void KvBlockPool::Unhash(int32_t b) {
  Block& block = blocks_[b];
  by_hash_.erase(block.hash);
  block.hashed = false;
}

bool KvBlockPool::Allocate(int32_t count, std::vector<int32_t>* table) {
  if (count < 0 || count > num_available()) return false;
  for (int32_t i = 0; i < count; ++i) {
    int32_t b;
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    } else {
      b = lru_.front();  // the least recently freed cached block
      lru_.pop_front();
      blocks_[b].in_lru = false;
      Unhash(b);
      ++evictions_;
    }
    blocks_[b].refs = 1;
    table->push_back(b);
  }
  return true;
}

void KvBlockPool::Free(std::vector<int32_t>* table) {
  for (int32_t b : *table) {
    if (b < 0 || b >= num_blocks_ || blocks_[b].refs <= 0) std::abort();  // programmer error
    Block& block = blocks_[b];
    if (--block.refs > 0) continue;
    if (block.hashed) {
      block.lru = lru_.insert(lru_.end(), b);
      block.in_lru = true;
    } else {
      free_.push_back(b);
    }
  }
  table->clear();
}

std::vector<int32_t> KvBlockPool::Match(absl::Span<const BlockHash> hashes,
                                        absl::Span<const int32_t> tokens, int32_t max_blocks) const {
  std::vector<int32_t> out;
  if (!caching_) return out;
  const size_t n = std::min<size_t>(hashes.size(), std::max(max_blocks, 0));
  for (size_t i = 0; i < n; ++i) {
    auto it = by_hash_.find(hashes[i]);
    if (it == by_hash_.end()) break;
    const Block& block = blocks_[it->second];
    if (i > 0 && block.parent != hashes[i - 1]) break;
    if (tokens.size() < (i + 1) * block_size_ ||
        !std::equal(tokens.begin() + i * block_size_, tokens.begin() + (i + 1) * block_size_,
                    tokens_.begin() + static_cast<size_t>(it->second) * block_size_)) {
      break;
    }
    out.push_back(it->second);
  }
  return out;
}

void KvBlockPool::Acquire(int32_t b) {
  Block& block = blocks_[b];
  if (!block.hashed) std::abort();  // only cached blocks are shared
  if (block.refs++ == 0 && block.in_lru) {
    lru_.erase(block.lru);
    block.in_lru = false;
  }
}

void KvBlockPool::Register(int32_t b, const BlockHash& hash, const BlockHash& parent,
                           absl::Span<const int32_t> block_tokens) {
  if (!caching_) return;
  Block& block = blocks_[b];
  if (block.refs <= 0 || static_cast<int32_t>(block_tokens.size()) != block_size_) std::abort();
  if (block.hashed || by_hash_.contains(hash)) return;
  block.hashed = true;
  block.hash = hash;
  block.parent = parent;
  std::copy(block_tokens.begin(), block_tokens.end(),
            tokens_.begin() + static_cast<size_t>(b) * block_size_);
  by_hash_[hash] = b;
}

std::string KvBlockPool::CheckInvariants() const {
  std::vector<int> seen(num_blocks_, 0);
  for (int32_t b : free_) {
    if (blocks_[b].refs != 0 || blocks_[b].hashed) return absl::StrCat("free block ", b, " is referenced or hashed");
    ++seen[b];
  }
  for (int32_t b : lru_) {
    if (blocks_[b].refs != 0 || !blocks_[b].hashed || !blocks_[b].in_lru) {
      return absl::StrCat("cached block ", b, " is referenced, unhashed or not marked");
    }
    ++seen[b];
  }
  for (int32_t b = 0; b < num_blocks_; ++b) {
    if (blocks_[b].refs < 0) return absl::StrCat("block ", b, " has a negative refcount");
    if (blocks_[b].refs > 0) ++seen[b];
    if (seen[b] != 1) return absl::StrCat("block ", b, " is in ", seen[b], " of free/cached/referenced");
    if (blocks_[b].hashed) {
      auto it = by_hash_.find(blocks_[b].hash);
      if (it == by_hash_.end() || it->second != b) return absl::StrCat("hashed block ", b, " is not indexed");
    }
  }
  for (const auto& [hash, b] : by_hash_) {
    if (!blocks_[b].hashed || blocks_[b].hash != hash) return absl::StrCat("index points at block ", b, " wrongly");
  }
  return "";
}

// ---- StateSnapshotPool ----------------------------------------------------------------

StateSnapshotPool::StateSnapshotPool(int32_t num_snapshots) : entries_(std::max(num_snapshots, 0)) {
  for (int32_t i = num_snapshots - 1; i >= 0; --i) free_.push_back(i);
}

std::optional<int32_t> StateSnapshotPool::Find(const BlockHash& hash) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return std::nullopt;
  return it->second;
}

void StateSnapshotPool::Touch(int32_t id) {
  Entry& e = entries_[id];
  if (e.state != State::kPublished) return;
  lru_.splice(lru_.end(), lru_, e.lru);
}

void StateSnapshotPool::Pin(int32_t id) {
  if (entries_[id].state != State::kPublished) std::abort();
  ++entries_[id].pins;
}

void StateSnapshotPool::Unpin(int32_t id) {
  if (entries_[id].pins <= 0) std::abort();
  --entries_[id].pins;
}

std::optional<int32_t> StateSnapshotPool::Allocate() {
  int32_t id = -1;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    for (auto it = lru_.begin(); it != lru_.end(); ++it) {
      if (entries_[*it].pins > 0) continue;
      id = *it;
      lru_.erase(it);
      by_hash_.erase(entries_[id].hash);
      ++evictions_;
      break;
    }
    if (id < 0) return std::nullopt;
  }
  entries_[id].state = State::kWriting;
  entries_[id].pins = 0;
  return id;
}

void StateSnapshotPool::Publish(int32_t id, const BlockHash& hash) {
  Entry& e = entries_[id];
  if (e.state != State::kWriting) std::abort();
  if (by_hash_.contains(hash)) {
    Release(id);
    return;
  }
  e.state = State::kPublished;
  e.hash = hash;
  e.lru = lru_.insert(lru_.end(), id);
  by_hash_[hash] = id;
}

void StateSnapshotPool::Release(int32_t id) {
  Entry& e = entries_[id];
  if (e.state != State::kWriting) std::abort();
  e.state = State::kFree;
  free_.push_back(id);
}

std::string StateSnapshotPool::CheckInvariants() const {
  size_t published = 0, free_count = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    if (e.pins < 0 || (e.pins > 0 && e.state != State::kPublished)) return absl::StrCat("snapshot ", i, " pinned wrongly");
    if (e.state == State::kPublished) {
      ++published;
      auto it = by_hash_.find(e.hash);
      if (it == by_hash_.end() || it->second != static_cast<int32_t>(i)) return absl::StrCat("snapshot ", i, " not indexed");
    }
    if (e.state == State::kFree) ++free_count;
  }
  if (published != lru_.size() || published != by_hash_.size()) return "published snapshots, LRU and index disagree";
  if (free_count != free_.size()) return "free snapshots and the free list disagree";
  return "";
}

}  // namespace sluice::engine
