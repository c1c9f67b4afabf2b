// GateSkip decode thresholds (tests/data/models/GATESKIP.md): the token set they are
// calibrated on at load and the sorted importances that give a threshold for any skip
// ratio. The model never tokenizes: the engine hands it the calibration ids
// (engine/serving_model.h); without them it uses fixed pseudo-random ids.
#ifndef SLUICE_ENGINE_BUDGET_GATESKIP_CALIBRATION_H_
#define SLUICE_ENGINE_BUDGET_GATESKIP_CALIBRATION_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace sluice::engine {

// At most kGateSkipCalibrationSequences sequences of kGateSkipCalibrationLength tokens.
inline constexpr int kGateSkipCalibrationSequences = 4;
inline constexpr int kGateSkipCalibrationLength = 64;

struct GateSkipCalibrationSet {
  std::vector<std::vector<int32_t>> sequences;
  std::string source;  // for logs and GetModelInfo
};

// `ids` (every one in [0, vocab)) cut into calibration sequences, or, when `ids` is empty
// or holds an id outside the vocabulary, the fixed pseudo-random set: SplitMix64 with
// seed 6, in [0, vocab).
GateSkipCalibrationSet MakeGateSkipCalibrationSet(std::vector<int32_t> ids, int64_t vocab_size,
                                                  const std::string& ids_source);

// Importances seen per (layer, branch) during the calibration prefill, sorted.
class GateSkipThresholds {
 public:
  using Importances = std::vector<std::array<std::vector<float>, 2>>;
  GateSkipThresholds() = default;
  explicit GateSkipThresholds(Importances seen);
  bool empty() const { return sorted_.empty(); }
  // The importance below which a decode token skips branch `branch` (0 mixer, 1 FFN) of
  // `layer` at skip ratio r: the sorted value at index floor(r · N), so a fraction r of
  // the calibration tokens falls below it (0: never skip).
  float DecodeThreshold(int64_t layer, int branch, float skip_ratio) const;

 private:
  Importances sorted_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_BUDGET_GATESKIP_CALIBRATION_H_
