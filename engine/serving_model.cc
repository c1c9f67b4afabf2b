#include "engine/serving_model.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/tokenizer.h"

namespace sluice::engine {

// Plain prose on varied topics, written for this repository (no third-party text).
const char kGateSkipCalibrationText[] =
    "The river rose slowly through the night, and by morning the lower fields were under "
    "a sheet of brown water. Farmers moved their animals to the ridge and waited. Nobody "
    "could remember a spring this wet, although the oldest people in the valley said the "
    "same thing every year.\n"
    "To compute the area of a circle, square the radius and multiply by pi. For a radius "
    "of three centimetres the area is a little more than twenty-eight square centimetres. "
    "The circumference grows only linearly with the radius, which is why large tanks are "
    "cheaper per litre than small ones.\n"
    "def merge(a, b):\n    out = []\n    while a and b:\n        out.append(a.pop(0) if a[0] "
    "< b[0] else b.pop(0))\n    return out + a + b\n"
    "She opened the letter at the kitchen table, read it twice, and then folded it back "
    "into its envelope without a word. Outside, a bus stopped, waited, and drove on.\n"
    "A scheduler that batches requests continuously can keep the accelerator busy while "
    "still answering short requests quickly, provided long prompts are split into chunks "
    "and every running sequence gets its next token before new prompts are admitted.\n"
    "Mix two cups of flour with a teaspoon of salt, add warm water until the dough holds "
    "together, and knead it for ten minutes. Let it rest under a cloth for an hour.\n";

absl::StatusOr<std::unique_ptr<CausalLm>> LoadServingModel(const std::string& model_dir,
                                                            kernels::Device device,
                                                            const ModelLoadOptions& base) {
  ModelLoadOptions options = base;
  options.gateskip_calibration_ids = [model_dir](int64_t vocab_size) {
    std::vector<int32_t> ids;
    if (std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json")) {
      auto tokenizer = tokenizer::Tokenizer::LoadFromDirectory(model_dir);
      if (tokenizer.ok()) {
        auto encoded = (*tokenizer)->Encode(kGateSkipCalibrationText, false);
        if (encoded.ok()) ids = *std::move(encoded);
      }
    }
    return MakeGateSkipCalibrationSet(std::move(ids), vocab_size, "shipped calibration text");
  };
  return CausalLm::Load(model_dir, device, options);
}

}  // namespace sluice::engine
