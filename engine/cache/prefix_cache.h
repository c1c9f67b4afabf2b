// Prefix caching: KV blocks shared by content, and recurrent-state snapshots for the
// linear-attention layers of hybrid models, keyed by the same block hashes.
//
// A full KV block is named by a 128-bit hash of its tokens chained to the previous
// block's hash; the first block chains to a root that encodes whatever else changes
// the K/V (the compute budget). Two sequences whose first n blocks hold the same tokens
// under the same budget have the same n hashes, so the second can take the first's
// blocks instead of recomputing them. A match also compares the block's stored tokens
// and parent hash, so a hash collision can only cost a miss, never a wrong block.
//
// Blocks are reference-counted. A block nobody references but that holds a hash stays
// cached (findable) in an LRU list, and is evicted, oldest first, only when an
// allocation finds no never-used block. A referenced block is never evicted, and only
// full blocks are shared: a sequence writes K/V only at positions past its shared
// blocks, so nothing shared is ever overwritten.
//
// A hybrid model's hit also needs the recurrent state at the end of the shared chain.
// StateSnapshotPool keeps that bookkeeping (which snapshot holds which chain hash, LRU,
// pins); the snapshots themselves are extra slots of the RecurrentStateCache, written
// by the Gated DeltaNet ops' checkpoints and copied into a sequence's slot on a hit.
#ifndef SLUICE_ENGINE_CACHE_PREFIX_CACHE_H_
#define SLUICE_ENGINE_CACHE_PREFIX_CACHE_H_

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"

namespace sluice::engine {

struct SequenceBudget;  // engine/budget/budget.h

struct BlockHash {
  uint64_t hi = 0;
  uint64_t lo = 0;
  bool operator==(const BlockHash& o) const { return hi == o.hi && lo == o.lo; }
  bool operator!=(const BlockHash& o) const { return !(*this == o); }
  template <typename H>
  friend H AbslHashValue(H h, const BlockHash& b) {
    return H::combine(std::move(h), b.hi, b.lo);
  }
};

// The root of a sequence's chain: the same for every request whose budget leaves the
// K/V and state as a dense pass computes them (an empty budget), and distinct for each
// budget that changes them (skip_layers, skip_ratio, experts_per_token,
// attention_gate_floor), so those share blocks only with the same budget.
BlockHash RootBlockHash(const SequenceBudget* budget);
// The hash of a full block of `tokens` whose predecessor's hash is `parent`.
BlockHash ChainBlockHash(const BlockHash& parent, absl::Span<const int32_t> tokens);

class KvBlockPool {
 public:
  // With caching off, freed blocks go straight back to the free list and nothing is
  // ever found: a plain free-list allocator.
  KvBlockPool(int32_t num_blocks, int32_t block_size, bool caching);

  int32_t num_blocks() const { return num_blocks_; }
  bool caching() const { return caching_; }
  // Blocks an allocation can take: never used, or cached with no reference.
  int32_t num_available() const { return static_cast<int32_t>(free_.size() + lru_.size()); }
  // Blocks that hold a hash (referenced or not).
  int32_t num_cached() const { return static_cast<int32_t>(by_hash_.size()); }
  uint64_t evictions() const { return evictions_; }
  int32_t refcount(int32_t block) const { return blocks_[block].refs; }

  // Appends `count` new blocks (one reference each) to `table`, evicting the least
  // recently freed cached blocks when the free list runs out; false, and no change,
  // when fewer than `count` are available.
  bool Allocate(int32_t count, std::vector<int32_t>* table);
  // Drops one reference on every block of `table` and clears it. A block left with no
  // reference is cached if it holds a hash, free otherwise.
  void Free(std::vector<int32_t>* table);

  // The longest run of cached blocks that `hashes` names from the start, at most
  // `max_blocks` of them, whose stored tokens (tokens[i·bs, (i+1)·bs)) and parents
  // also match. Takes no reference.
  std::vector<int32_t> Match(absl::Span<const BlockHash> hashes, absl::Span<const int32_t> tokens,
                             int32_t max_blocks) const;
  // Takes a reference on a block that Match returned.
  void Acquire(int32_t block);
  // Makes a full block with a reference findable under `hash`: its tokens and parent
  // (the previous block's hash, or the root) are stored for Match to compare. No change
  // when caching is off or another block already holds `hash`.
  void Register(int32_t block, const BlockHash& hash, const BlockHash& parent,
                absl::Span<const int32_t> block_tokens);

  // Empty when consistent; otherwise what is wrong (tests): every block is exactly one
  // of free, cached-unreferenced (in the LRU) or referenced; the hash index points at
  // blocks that hold those hashes.
  std::string CheckInvariants() const;

 private:
  struct Block {
    int32_t refs = 0;
    bool hashed = false;
    bool in_lru = false;
    BlockHash hash;
    BlockHash parent;
    std::list<int32_t>::iterator lru;
  };
  void Unhash(int32_t block);

  int32_t num_blocks_;
  int32_t block_size_;
  bool caching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> tokens_;  // [num_blocks, block_size]: the tokens of hashed blocks
  std::vector<int32_t> free_;    // never used, or unhashed and unreferenced
  std::list<int32_t> lru_;       // hashed and unreferenced, least recently freed first
  absl::flat_hash_map<BlockHash, int32_t> by_hash_;
  uint64_t evictions_ = 0;
};

// Bookkeeping of the recurrent-state snapshots. A snapshot id is either free, being
// written (allocated, not yet published: owned by the sequence that writes it), or
// published under the chain hash of the position it was taken at. Published snapshots
// are evicted least recently used first, except while pinned (a restore in flight).
class StateSnapshotPool {
 public:
  explicit StateSnapshotPool(int32_t num_snapshots);

  int32_t num_snapshots() const { return static_cast<int32_t>(entries_.size()); }
  int32_t num_published() const { return static_cast<int32_t>(by_hash_.size()); }
  uint64_t evictions() const { return evictions_; }

  std::optional<int32_t> Find(const BlockHash& hash) const;
  // Marks a published snapshot most recently used.
  void Touch(int32_t id);
  // A pinned snapshot is not evicted; pins nest.
  void Pin(int32_t id);
  void Unpin(int32_t id);
  // An id to write a new snapshot into: a free one, else the least recently used
  // unpinned published one (evicted). nullopt when every id is written or pinned.
  std::optional<int32_t> Allocate();
  // Publishes an id being written under `hash`. When `hash` is already published (two
  // sequences took the same snapshot), the id is freed instead.
  void Publish(int32_t id, const BlockHash& hash);
  // Frees an id being written (its snapshot is not wanted).
  void Release(int32_t id);

  std::string CheckInvariants() const;

 private:
  enum class State { kFree, kWriting, kPublished };
  struct Entry {
    State state = State::kFree;
    int32_t pins = 0;
    BlockHash hash;
    std::list<int32_t>::iterator lru;
  };
  std::vector<Entry> entries_;
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  // published, least recently used first
  absl::flat_hash_map<BlockHash, int32_t> by_hash_;
  uint64_t evictions_ = 0;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_CACHE_PREFIX_CACHE_H_
