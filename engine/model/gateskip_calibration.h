// The token set GateSkip decode thresholds are calibrated on at load (see
// CausalLm::CalibrateGateSkip and tests/data/models/GATESKIP.md).
#ifndef SLUICE_ENGINE_MODEL_GATESKIP_CALIBRATION_H_
#define SLUICE_ENGINE_MODEL_GATESKIP_CALIBRATION_H_

#include <cstdint>
#include <string>
#include <vector>

namespace sluice::engine {

// Sequences of at most kGateSkipCalibrationLength tokens, kGateSkipCalibrationSequences
// of them. With a tokenizer.json in model_dir: the shipped English calibration text
// (kGateSkipCalibrationText), tokenized and cut into sequences. Without one: fixed
// pseudo-random ids (SplitMix64, seed 6) in [0, vocab). `source` says which was used.
inline constexpr int kGateSkipCalibrationSequences = 4;
inline constexpr int kGateSkipCalibrationLength = 64;
extern const char kGateSkipCalibrationText[];
std::vector<std::vector<int32_t>> GateSkipCalibrationSequences(const std::string& model_dir,
                                                               int64_t vocab_size,
                                                               std::string* source);

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_GATESKIP_CALIBRATION_H_
