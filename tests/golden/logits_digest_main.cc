// Prints a digest of the exact logits every fixture model produces over a fixed mix of
// ragged prefill and decode steps, with and without each compute-budget control, under
// each matmul precision this CPU supports. Refactors that must leave CPU results
// bit-identical (issue 10) compare the digest before and after:
//   sluice-logits-digest tests/data/models > before.txt   (old build)
//   sluice-logits-digest tests/data/models > after.txt    (new build); diff before.txt after.txt
// tests/golden/logits_digest_test.sh runs it against the committed digest file.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "engine/cache/kv_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/model/causal_lm.h"
#include "engine/model/forward_batch.h"
#include "engine/serving_model.h"
#include "kernels/ops.h"

namespace {

using sluice::engine::CausalLm;
using sluice::engine::ComputeBudget;
using sluice::engine::ForwardBatch;
using sluice::engine::SequenceBudget;
using sluice::engine::SequenceCost;

// FNV-1a over the raw bytes: any change of any bit of any logit changes it.
uint64_t Fnv1a(const void* data, size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

struct Case {
  std::string name;
  ComputeBudget budget;
};

// Three sequences: two prefills of different lengths in one batch (the second chunked
// over two steps), then decodes of all three together.
absl::StatusOr<uint64_t> RunCase(CausalLm* model, const ComputeBudget& budget, double* saved) {
  const auto& c = model->config();
  constexpr int32_t kBlock = 16;
  constexpr int32_t kSeqs = 3;
  const int32_t lens[kSeqs] = {37, 70, 5};
  constexpr int32_t kDecodes = 4;
  auto shape = model->KvShape(kBlock);
  const int32_t blocks_per_seq = (70 + kDecodes + kBlock) / kBlock;
  shape.num_blocks = blocks_per_seq * kSeqs;
  auto cache = sluice::engine::PagedKvCache::Create(shape, sluice::kernels::Device::kCpu);
  if (!cache.ok()) return cache.status();
  auto state_shape = model->StateShape();
  state_shape.num_slots = kSeqs;
  auto state = sluice::engine::RecurrentStateCache::Create(state_shape, sluice::kernels::Device::kCpu);
  if (!state.ok()) return state.status();
  std::vector<std::vector<int32_t>> tables(kSeqs);
  for (int32_t s = 0; s < kSeqs; ++s)
    for (int32_t b = 0; b < blocks_per_seq; ++b) tables[s].push_back(s * blocks_per_seq + b);
  SequenceBudget resolved = sluice::engine::ResolveBudget(budget, c.num_layers);
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  auto next_token = [&]() {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return static_cast<int32_t>(seed % static_cast<uint64_t>(c.vocab_size));
  };
  std::vector<int32_t> done(kSeqs, 0);
  auto add = [&](ForwardBatch& fb, int32_t s, int32_t n) {
    const int32_t start = fb.num_tokens();
    for (int32_t i = 0; i < n; ++i) {
      const int32_t pos = done[s] + i;
      fb.token_ids.push_back(next_token());
      fb.positions.push_back(pos);
      fb.slot_mapping.push_back(tables[s][pos / kBlock] * kBlock + pos % kBlock);
    }
    fb.sequences.push_back({start, n, done[s] + n, tables[s].data()});
    fb.state_slots.push_back(model->StateShape().num_layers > 0 ? s : -1);
    fb.state_fresh.push_back(done[s] == 0 ? 1 : 0);
    fb.logit_rows.push_back(start + n - 1);
    fb.budgets.push_back(&resolved);
    done[s] += n;
  };
  uint64_t h = 1469598103934665603ull;
  std::vector<float> logits;
  std::vector<SequenceCost> costs;
  std::vector<ForwardBatch> steps(2 + kDecodes);
  add(steps[0], 0, lens[0]);
  add(steps[0], 1, 40);
  add(steps[1], 1, lens[1] - 40);
  add(steps[1], 2, lens[2]);
  add(steps[1], 0, 1);
  for (int32_t d = 0; d < kDecodes; ++d)
    for (int32_t s = 0; s < kSeqs; ++s) add(steps[2 + d], s, 1);
  for (ForwardBatch& fb : steps) {
    if (auto st = model->ForwardWithCosts(fb, &*cache, &*state, &logits, &costs); !st.ok()) return st;
    h = Fnv1a(logits.data(), logits.size() * sizeof(float), h);
    for (const SequenceCost& cost : costs) *saved += cost.saved_flops;
  }
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: sluice-logits-digest MODELS_DIR\n";
    return 2;
  }
  std::vector<std::filesystem::path> dirs;
  for (const auto& e : std::filesystem::directory_iterator(argv[1])) {
    if (std::filesystem::exists(e.path() / "config.json")) dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  std::vector<sluice::kernels::MatmulPrecision> precisions = {sluice::kernels::MatmulPrecision::kF32};
  if (sluice::kernels::SetMatmulPrecision(sluice::kernels::MatmulPrecision::kBf16).ok()) {
    precisions.push_back(sluice::kernels::MatmulPrecision::kBf16);
  }
  int failures = 0;
  for (auto precision : precisions) {
    if (!sluice::kernels::SetMatmulPrecision(precision).ok()) return 1;
    const char* pname = precision == sluice::kernels::MatmulPrecision::kF32 ? "f32" : "bf16";
    for (const auto& dir : dirs) {
      // As the engine loads it (GateSkip calibrated on the shipped text where the model has a tokenizer).
      auto model = sluice::engine::LoadServingModel(dir.string(), sluice::kernels::Device::kCpu);
      if (!model.ok()) {
        std::printf("%s %s load-error %s\n", pname, dir.filename().c_str(), std::string(model.status().message()).c_str());
        continue;
      }
      std::vector<Case> cases = {{"dense", {}}};
      const auto controls = (*model)->SupportedBudgetControls();
      auto supports = [&](const char* n) { return std::find(controls.begin(), controls.end(), n) != controls.end(); };
      if (supports("skip_ratio")) {
        cases.push_back({"skip_ratio_0.5", {}});
        cases.back().budget.skip_ratio = 0.5f;
      }
      if (supports("experts_per_token")) {
        cases.push_back({"experts_1", {}});
        cases.back().budget.experts_per_token = 1;
      }
      if (supports("attention_gate_floor")) {
        cases.push_back({"gate_floor_0.45", {}});
        cases.back().budget.attention_gate_floor = 0.45f;
      }
      cases.push_back({"skip_layer_1", {}});
      cases.back().budget.skip_layers.push_back({1, 1});
      if (supports("skip_ratio") && supports("experts_per_token")) {
        cases.push_back({"skip_ratio_0.25_experts_1", {}});
        cases.back().budget.skip_ratio = 0.25f;
        cases.back().budget.experts_per_token = 1;
      }
      for (const Case& cs : cases) {
        double saved = 0;
        auto h = RunCase(model->get(), cs.budget, &saved);
        if (!h.ok()) {
          std::printf("%s %s %s error %s\n", pname, dir.filename().c_str(), cs.name.c_str(),
                      std::string(h.status().message()).c_str());
          ++failures;
          continue;
        }
        std::printf("%s %s %s %016llx saved_flops=%.17g\n", pname, dir.filename().c_str(), cs.name.c_str(),
                    static_cast<unsigned long long>(*h), saved);
      }
    }
  }
  return failures == 0 ? 0 : 1;
}
