#include "tests/golden/fixture.h"

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

}  // namespace sluice::testing
