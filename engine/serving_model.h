// Loads a model the way the engine serves it. The model itself never tokenizes; here
// the engine tokenizes the shipped GateSkip calibration text with the model's own
// tokenizer.json and hands the ids to CausalLm::Load (see GATESKIP.md).
#ifndef SLUICE_ENGINE_SERVING_MODEL_H_
#define SLUICE_ENGINE_SERVING_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/causal_lm.h"

namespace sluice::engine {

// Plain prose on varied topics, written for this repository (no third-party text).
extern const char kGateSkipCalibrationText[];

// CausalLm::Load with GateSkip calibrated on kGateSkipCalibrationText tokenized by the
// model directory's tokenizer.json (fixed pseudo-random ids when it has none). The
// other fields of `options` (quantization) are passed through.
absl::StatusOr<std::unique_ptr<CausalLm>> LoadServingModel(const std::string& model_dir,
                                                            kernels::Device device,
                                                            const ModelLoadOptions& options = {});

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_SERVING_MODEL_H_
