// Shape-only ("meta") loads of real published configs: no weights, just config.json.
// The parameter counts sluice derives must equal what transformers instantiates for the
// same config (tests/data/configs/count_params.py wrote param_counts.json).
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/config/model_config.h"
#include "gtest/gtest.h"

namespace sluice::engine {
namespace {

namespace fs = std::filesystem;
const std::string kConfigs = std::string(SLUICE_TEST_DATA_DIR) + "/configs/";

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

TEST(PublishedConfigsTest, ParameterCountsMatchTransformers) {
  const auto counts = ReadJson(kConfigs + "param_counts.json");
  int checked = 0;
  for (const auto& [name, expected] : counts.items()) {
    std::string path = kConfigs + name + "/config.json";
    if (!fs::exists(path)) path = kConfigs + name + "/config.partial.json";
    auto config = ModelConfig::FromFile(path);
    ASSERT_TRUE(config.ok()) << name << ": " << config.status();
    EXPECT_EQ(config->TotalParameters(), expected["total"].get<uint64_t>()) << name;
    EXPECT_EQ(config->ActiveParameters(), expected["active"].get<uint64_t>()) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

TEST(PublishedConfigsTest, HybridLayoutsAndMoeShapesAreRead) {
  auto next = ModelConfig::FromFile(kConfigs + "qwen3_next_80b_a3b_instruct/config.json");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->family, ModelFamily::kQwen3Next);
  EXPECT_EQ(next->NumAttentionLayers(), 12);  // every 4th of 48
  EXPECT_EQ(next->NumLinearAttentionLayers(), 36);
  EXPECT_TRUE(next->IsLinearAttentionLayer(0));
  EXPECT_FALSE(next->IsLinearAttentionLayer(3));
  EXPECT_EQ(next->moe.num_experts, 512);
  EXPECT_EQ(next->moe.experts_per_token, 10);
  EXPECT_GT(next->moe.shared_expert_intermediate_size, 0);
  EXPECT_EQ(next->rotary_dim(), next->head_dim / 4);  // partial_rotary_factor 0.25
  EXPECT_TRUE(next->attention_output_gate);
  EXPECT_EQ(next->norm_weight_offset, 1.f);
  EXPECT_TRUE(next->linear.fused_projections);

  auto small = ModelConfig::FromFile(kConfigs + "qwen3_5_0_8b/config.json");
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->family, ModelFamily::kQwen35);
  EXPECT_EQ(small->weight_prefix, "model.language_model.");
  ASSERT_FALSE(small->not_served.empty());  // the vision tower
  EXPECT_FALSE(small->linear.fused_projections);

  auto mixtral = ModelConfig::FromFile(kConfigs + "mixtral_8x7b_v0_1/config.json");
  ASSERT_TRUE(mixtral.ok()) << mixtral.status();
  EXPECT_EQ(mixtral->moe.num_experts, 8);
  EXPECT_TRUE(mixtral->moe.norm_topk_prob);
}

}  // namespace
}  // namespace sluice::engine
