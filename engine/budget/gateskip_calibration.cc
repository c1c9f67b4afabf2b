#include "engine/budget/gateskip_calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace sluice::engine {

GateSkipCalibrationSet MakeGateSkipCalibrationSet(std::vector<int32_t> ids, int64_t vocab_size,
                                                  const std::string& ids_source) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size) {
      ids.clear();
      break;
    }
  }
  GateSkipCalibrationSet set;
  const size_t want = static_cast<size_t>(kGateSkipCalibrationSequences) * kGateSkipCalibrationLength;
  if (!ids.empty()) {
    set.source = absl::StrCat(ids_source, ", ", std::min(ids.size(), want), " tokens");
  } else {
    uint64_t state = 6;
    for (size_t i = 0; i < want; ++i) {
      // SplitMix64.
      uint64_t z = (state += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      ids.push_back(static_cast<int32_t>(z % static_cast<uint64_t>(vocab_size)));
    }
    set.source = absl::StrCat("fixed pseudo-random ids (no tokenizer.json), ", want, " tokens");
  }
  if (ids.size() > want) ids.resize(want);
  for (size_t i = 0; i < ids.size(); i += kGateSkipCalibrationLength) {
    const size_t end = std::min(ids.size(), i + kGateSkipCalibrationLength);
    set.sequences.emplace_back(ids.begin() + i, ids.begin() + end);
  }
  return set;
}

GateSkipThresholds::GateSkipThresholds(Importances seen) : sorted_(std::move(seen)) {
  for (auto& layer : sorted_) {
    for (auto& v : layer) std::sort(v.begin(), v.end());
  }
}

float GateSkipThresholds::DecodeThreshold(int64_t layer, int branch, float skip_ratio) const {
  if (sorted_.empty()) return 0.f;  // never skip
  const std::vector<float>& sorted = sorted_[layer][branch];
  if (sorted.empty() || skip_ratio <= 0.f) return 0.f;
  const size_t idx = static_cast<size_t>(std::floor(static_cast<double>(skip_ratio) * sorted.size()));
  if (idx >= sorted.size()) return std::numeric_limits<float>::infinity();
  return sorted[idx];
}

}  // namespace sluice::engine
