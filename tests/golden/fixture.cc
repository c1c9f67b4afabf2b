#include "tests/golden/fixture.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/weights/safetensors.h"
#include "kernels/status_macros.h"

namespace sluice::testing {

std::string ModelFixtureDir(const std::string& name) {
  return absl::StrCat(SLUICE_TEST_DATA_DIR, "/models/", name);
}

absl::StatusOr<GoldenFixture> LoadGoldenFixture(const std::string& name) {
  GoldenFixture f;
  f.dir = ModelFixtureDir(name);
  std::ifstream in(f.dir + "/golden.json");
  if (!in) return absl::NotFoundError(absl::StrCat("no golden.json in ", f.dir));
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = nlohmann::json::parse(ss.str());
  SLUICE_ASSIGN_OR_RETURN(auto logits_file, engine::SafetensorsFile::Open(f.dir + "/golden_logits.safetensors"));
  int i = 0;
  for (const auto& p : j["prompts"]) {
    GoldenPrompt prompt;
    prompt.ids = p["ids"].get<std::vector<int32_t>>();
    prompt.greedy = p["greedy"].get<std::vector<int32_t>>();
    SLUICE_ASSIGN_OR_RETURN(auto t, logits_file->Get(absl::StrCat("logits.", i++)));
    f.vocab_size = t.dim(1);
    prompt.logits.assign(t.data<float>(), t.data<float>() + t.numel());
    f.prompts.push_back(std::move(prompt));
  }
  return f;
}

absl::StatusOr<std::vector<float>> FeedInPieces(engine::CausalLm& model, const std::vector<int32_t>& ids,
                                                const std::vector<int32_t>& cuts,
                                                const engine::SequenceBudget* budget) {
  constexpr int32_t kBlock = 8;
  const int32_t n = static_cast<int32_t>(ids.size());
  auto shape = model.KvShape(kBlock);
  shape.num_blocks = (n + kBlock - 1) / kBlock + 1;
  SLUICE_ASSIGN_OR_RETURN(auto cache, engine::PagedKvCache::Create(shape, kernels::Device::kCpu));
  auto state_shape = model.StateShape();
  state_shape.num_slots = 2;  // slot 0 left unused
  SLUICE_ASSIGN_OR_RETURN(auto state, engine::RecurrentStateCache::Create(state_shape, kernels::Device::kCpu));
  std::vector<int32_t> table;
  for (int32_t b = 0; b < shape.num_blocks; ++b) table.push_back(shape.num_blocks - 1 - b);
  std::vector<float> all;
  int32_t done = 0;
  while (done < n) {
    int32_t upto = done + 1;  // one token at a time after the last cut
    for (int32_t c : cuts) {
      if (c > done) {
        upto = std::min(c, n);
        break;
      }
    }
    engine::ForwardBatch batch;
    for (int32_t i = done; i < upto; ++i) {
      batch.token_ids.push_back(ids[i]);
      batch.positions.push_back(i);
      batch.slot_mapping.push_back(table[i / kBlock] * kBlock + i % kBlock);
      batch.logit_rows.push_back(i - done);
    }
    batch.sequences.push_back({0, upto - done, upto, table.data()});
    batch.state_slots.push_back(1);
    batch.state_fresh.push_back(done == 0 ? 1 : 0);
    if (budget != nullptr) batch.budgets.push_back(budget);
    std::vector<float> logits;
    SLUICE_RETURN_IF_ERROR(model.Forward(batch, &cache, &state, &logits));
    all.insert(all.end(), logits.begin(), logits.end());
    done = upto;
  }
  return all;
}

PrefillResult PrefillBatch(engine::CausalLm& model,
                           const std::vector<const std::vector<int32_t>*>& prompts,
                           const std::vector<const engine::SequenceBudget*>& budgets) {
  PrefillResult out;
  constexpr int32_t kBlock = 4;
  auto shape = model.KvShape(kBlock);
  shape.num_blocks = 256;
  auto cache = engine::PagedKvCache::Create(shape, kernels::Device::kCpu);
  auto state_shape = model.StateShape();
  state_shape.num_slots = static_cast<int32_t>(prompts.size()) + 1;  // slot 0 left unused
  auto state = engine::RecurrentStateCache::Create(state_shape, kernels::Device::kCpu);
  if (!cache.ok() || !state.ok()) {
    out.status = absl::InternalError("cannot allocate the caches");
    return out;
  }
  engine::ForwardBatch batch;
  std::vector<std::vector<int32_t>> tables(prompts.size());
  int32_t next_block = shape.num_blocks - 1;
  for (size_t s = 0; s < prompts.size(); ++s) {
    const auto& ids = *prompts[s];
    const int32_t start = batch.num_tokens();
    for (int32_t b = 0; b < (static_cast<int32_t>(ids.size()) + kBlock - 1) / kBlock; ++b) {
      tables[s].push_back(next_block--);
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      batch.token_ids.push_back(ids[i]);
      batch.positions.push_back(static_cast<int32_t>(i));
      batch.slot_mapping.push_back(tables[s][i / kBlock] * kBlock + static_cast<int32_t>(i % kBlock));
      batch.logit_rows.push_back(start + static_cast<int32_t>(i));
    }
    batch.sequences.push_back({start, static_cast<int32_t>(ids.size()),
                               static_cast<int32_t>(ids.size()), tables[s].data()});
    batch.state_slots.push_back(static_cast<int32_t>(s) + 1);
    batch.state_fresh.push_back(1);
  }
  batch.budgets = budgets;
  out.status = model.ForwardWithCosts(batch, &*cache, &*state, &out.logits, &out.costs);
  return out;
}

}  // namespace sluice::testing
