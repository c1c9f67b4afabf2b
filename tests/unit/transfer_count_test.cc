// Counts the host <-> device transfers of forward passes (issue 10: no host round trip
// inside a forward pass). On the CPU every counted CopyToHost / CopyFromHost is a
// memcpy, but its call site is where a GPU would synchronise (device to host) or upload
// (host to device), so the numbers asserted here are the GPU's synchronisation points.
//
// A step may copy to the host only: the logits its sampler reads (once per forward),
// and, where a budget makes a shape data-dependent, one small copy per branch that
// needs it: the GateSkip importances of each gated branch (they decide which rows run
// the rest of the branch), and the attention-gate floor's head-skip masks, all layers
// in one copy after the pass, for the accounting.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/cache/kv_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/model/causal_lm.h"
#include "kernels/tensor.h"
#include "tests/golden/fixture.h"

namespace sluice::engine {
namespace {

struct Counts {
  uint64_t to_host = 0;
  uint64_t to_device = 0;
};

class TransferCountTest : public ::testing::Test {
 protected:
  void Load(const std::string& name) {
    auto model = CausalLm::Load(testing::ModelFixtureDir(name), kernels::Device::kCpu);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    auto shape = model_->KvShape(kBlock);
    shape.num_blocks = 2 * kBlocksPerSeq;
    auto cache = PagedKvCache::Create(shape, kernels::Device::kCpu);
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::make_unique<PagedKvCache>(*std::move(cache));
    auto state_shape = model_->StateShape();
    state_shape.num_slots = 2;
    auto state = RecurrentStateCache::Create(state_shape, kernels::Device::kCpu);
    ASSERT_TRUE(state.ok()) << state.status();
    state_ = std::make_unique<RecurrentStateCache>(*std::move(state));
    for (int s = 0; s < 2; ++s)
      for (int b = 0; b < kBlocksPerSeq; ++b) tables_[s].push_back(s * kBlocksPerSeq + b);
  }

  // Adds `n` tokens of sequence s (context so far: done_[s]) to the batch.
  void Add(ForwardBatch* fb, int s, int n, const SequenceBudget* budget) {
    const int32_t start = fb->num_tokens();
    for (int i = 0; i < n; ++i) {
      const int32_t pos = done_[s] + i;
      fb->token_ids.push_back((7 * pos + 3 * s + 1) % static_cast<int32_t>(model_->config().vocab_size));
      fb->positions.push_back(pos);
      fb->slot_mapping.push_back(tables_[s][pos / kBlock] * kBlock + pos % kBlock);
    }
    fb->sequences.push_back({start, n, done_[s] + n, tables_[s].data()});
    fb->state_slots.push_back(s);
    fb->state_fresh.push_back(done_[s] == 0 ? 1 : 0);
    fb->logit_rows.push_back(start + n - 1);
    fb->budgets.push_back(budget);
    done_[s] += n;
  }

  // Transfers of one forward pass over the batch, with costs asked for (as the runner does).
  Counts Forward(const ForwardBatch& fb) {
    std::vector<float> logits;
    std::vector<SequenceCost> costs;
    kernels::ResetTransferCounts();
    absl::Status st = model_->ForwardWithCosts(fb, cache_.get(), state_.get(), &logits, &costs);
    const kernels::TransferCounts c = kernels::GetTransferCounts();
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(logits.size(), fb.logit_rows.size() * model_->config().vocab_size);
    return {c.device_to_host, c.host_to_device};
  }

  // A prefill of both sequences (lengths 9 and 5) and then one decode step of both, with
  // `budget` for both; returns the decode step's transfers (and the prefill's in *prefill).
  Counts PrefillThenDecode(const ComputeBudget& budget, Counts* prefill = nullptr) {
    done_[0] = done_[1] = 0;
    resolved_ = ResolveBudget(budget, model_->config().num_layers);
    ForwardBatch first;
    Add(&first, 0, 9, &resolved_);
    Add(&first, 1, 5, &resolved_);
    const Counts p = Forward(first);
    if (prefill != nullptr) *prefill = p;
    ForwardBatch decode;
    Add(&decode, 0, 1, &resolved_);
    Add(&decode, 1, 1, &resolved_);
    return Forward(decode);
  }

  static constexpr int32_t kBlock = 16;
  static constexpr int32_t kBlocksPerSeq = 2;
  std::unique_ptr<CausalLm> model_;
  std::unique_ptr<PagedKvCache> cache_;
  std::unique_ptr<RecurrentStateCache> state_;
  std::vector<int32_t> tables_[2];
  int32_t done_[2] = {0, 0};
  SequenceBudget resolved_;
};

// Qwen3-Next: Gated DeltaNet and gated attention layers, MoE FFNs with a shared expert.
TEST_F(TransferCountTest, DenseHybridMoeStepsCopyOnlyTheLogits) {
  Load("qwen3_next_f32");
  Counts prefill;
  const Counts decode = PrefillThenDecode({}, &prefill);
  // One upload of the packed step metadata, one copy of the logits: the MoE routing,
  // the grouping of rows by expert and the expert GEMMs stay on the device.
  EXPECT_EQ(prefill.to_host, 1u);
  EXPECT_EQ(prefill.to_device, 1u);
  EXPECT_EQ(decode.to_host, 1u) << "a decode step without a budget must be free of host synchronisation";
  EXPECT_EQ(decode.to_device, 1u);
}

TEST_F(TransferCountTest, ExpertsPerTokenAddsNoDeviceToHostCopy) {
  Load("qwen3_next_f32");
  ComputeBudget budget;
  budget.experts_per_token = 1;
  EXPECT_EQ(PrefillThenDecode(budget).to_host, 1u);
}

TEST_F(TransferCountTest, SkipLayersAddsNoDeviceToHostCopy) {
  Load("qwen3_next_f32");
  ComputeBudget budget;
  budget.skip_layers.push_back({1, 2});
  EXPECT_EQ(PrefillThenDecode(budget).to_host, 1u);
}

TEST_F(TransferCountTest, AttentionGateFloorCopiesAllMasksOnce) {
  Load("qwen3_next_f32");
  ComputeBudget budget;
  budget.attention_gate_floor = 0.45f;
  // The logits, and one copy of every attention layer's head-skip mask for the costs.
  Counts prefill;
  EXPECT_EQ(PrefillThenDecode(budget, &prefill).to_host, 2u);
  EXPECT_EQ(prefill.to_host, 2u);
}

TEST_F(TransferCountTest, SkipRatioCopiesOneImportanceVectorPerGatedBranch) {
  // Every branch of this fixture carries a residual gate (make_gateskip_fixtures.py).
  Load("qwen3_next_gateskip_f32");
  const uint64_t gated_branches = 2 * static_cast<uint64_t>(model_->config().num_layers);
  ComputeBudget none;
  // Gates without a skip budget are the model's math, and need no decision on the host.
  EXPECT_EQ(PrefillThenDecode(none).to_host, 1u);
  ComputeBudget budget;
  budget.skip_ratio = 0.5f;
  EXPECT_EQ(PrefillThenDecode(budget).to_host, 1u + gated_branches);
}

}  // namespace
}  // namespace sluice::engine
