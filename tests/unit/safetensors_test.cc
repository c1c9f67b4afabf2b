// The safetensors reader against a corpus of malformed files, each with one defect
// (tests/fixtures/make_bad_safetensors.py), and against real checkpoints.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/config/model_config.h"
#include "engine/model/causal_lm.h"
#include "engine/weights/checkpoint.h"
#include "engine/weights/safetensors.h"
#include "gtest/gtest.h"

namespace sluice::engine {
namespace {

const std::string kCorpus = std::string(SLUICE_TEST_DATA_DIR) + "/safetensors/";

TEST(SafetensorsTest, EachMalformedFileGetsItsOwnError) {
  std::ifstream in(kCorpus + "manifest.json");
  ASSERT_TRUE(in) << "missing manifest";
  std::stringstream ss;
  ss << in.rdbuf();
  const auto manifest = nlohmann::json::parse(ss.str());
  int checked = 0;
  for (const auto& [file, expect] : manifest.items()) {
    auto result = SafetensorsFile::Open(kCorpus + file);
    if (expect.is_null()) {
      EXPECT_TRUE(result.ok()) << file << ": " << result.status();
      continue;
    }
    ASSERT_FALSE(result.ok()) << file << " loaded but has a defect";
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << file;
    EXPECT_NE(result.status().message().find(expect.get<std::string>()), absl::string_view::npos)
        << file << ": got '" << result.status().message() << "', want it to mention '"
        << expect.get<std::string>() << "'";
    EXPECT_NE(result.status().message().find(file), absl::string_view::npos)
        << "the error should name the file: " << result.status().message();
    ++checked;
  }
  EXPECT_GE(checked, 12);
}

TEST(SafetensorsTest, ValidFileIsZeroCopyAndTyped) {
  auto file = SafetensorsFile::Open(kCorpus + "valid.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  auto a = (*file)->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a->dtype(), kernels::DType::kF32);
  auto b = (*file)->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dtype(), kernels::DType::kBF16);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->Get("missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, ParseHeaderNeverCrashesOnPrefixes) {
  // Every prefix of a valid file is rejected cleanly (or accepted when whole).
  std::ifstream in(kCorpus + "valid.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t n = 0; n < bytes.size(); ++n) {
    uint64_t start = 0;
    auto r = SafetensorsFile::ParseHeader(reinterpret_cast<const uint8_t*>(bytes.data()), n, &start);
    EXPECT_FALSE(r.ok()) << "prefix of " << n << " bytes";
  }
}

TEST(CheckpointTest, ShardedCheckpointLoadsThroughItsIndex) {
  auto ckpt = Checkpoint::Open(std::string(SLUICE_TEST_DATA_DIR) + "/models/llama_sharded_f32");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->Contains("lm_head.weight"));
  EXPECT_TRUE((*ckpt)->Contains("model.layers.2.mlp.down_proj.weight"));
  auto t = (*ckpt)->Get("model.embed_tokens.weight", {320, 64});
  EXPECT_TRUE(t.ok()) << t.status();
  auto wrong = (*ckpt)->Get("model.embed_tokens.weight", {64, 320});
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("model.embed_tokens.weight"), absl::string_view::npos);
}

TEST(CheckpointTest, MissingDirectoryAndMissingWeightsAreClearErrors) {
  EXPECT_EQ(Checkpoint::Open("/nonexistent/sluice").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Checkpoint::Open(kCorpus + "..").status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelConfigTest, RejectsBadAndUnsupportedConfigs) {
  EXPECT_EQ(ModelConfig::FromJson("not json").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ModelConfig::FromJson(R"({"model_type": "gpt2"})").status().code(), absl::StatusCode::kUnimplemented);
  auto missing = ModelConfig::FromJson(R"({"model_type": "llama", "hidden_size": 64})");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("vocab_size"), absl::string_view::npos);
  auto heads = ModelConfig::FromJson(
      R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3})");
  ASSERT_FALSE(heads.ok());
  EXPECT_NE(heads.status().message().find("num_key_value_heads"), absl::string_view::npos);
  auto yarn = ModelConfig::FromJson(
      R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8,
          "num_hidden_layers": 1, "num_attention_heads": 4, "rope_scaling": {"rope_type": "yarn", "factor": 4}})");
  EXPECT_EQ(yarn.status().code(), absl::StatusCode::kUnimplemented);
}

// What the config.json fuzz target (tests/fuzz/model_config_fuzzer.cc) found: each
// parsed before, into a config the graph cannot use (or after unbounded work).
TEST(ModelConfigTest, FuzzFindingsAreRejectedByName) {
  const std::string llama =
      R"("model_type": "llama", "vocab_size": 16, "intermediate_size": 8, "num_hidden_layers": 1)";
  const std::string hybrid =
      R"("model_type": "qwen3_next", "vocab_size": 16, "hidden_size": 64, "head_dim": 16,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 8,
         "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
         "linear_value_head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
         "moe_intermediate_size": 8)";
  const std::pair<std::string, std::string> cases[] = {
      // hidden_size / num_attention_heads rounds to a head_dim of 0.
      {"{" + llama + R"(, "hidden_size": 2, "num_attention_heads": 4})", "head_dim"},
      // A rotary width of 5 × head_dim, wider than the head it rotates.
      {"{" + llama + R"(, "hidden_size": 64, "num_attention_heads": 4, "partial_rotary_factor": 5})",
       "partial_rotary_factor"},
      {"{" + llama + R"(, "hidden_size": 64, "num_attention_heads": 4,
           "rope_parameters": {"partial_rotary_factor": -0.5}})",
       "partial_rotary_factor"},
      {"{" + llama + R"(, "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 0})", "rope_theta"},
      // 2e10 layers: parsing filled one layer type per layer before anything failed.
      {"{" + hybrid + R"(, "num_hidden_layers": 21474836476, "full_attention_interval": 2})",
       "num_hidden_layers"},
      // Above int64: used to wrap to a negative value.
      {R"({"model_type": "llama", "vocab_size": 18446744073709551615, "hidden_size": 64,
           "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4})",
       "vocab_size"},
      {"{" + llama + R"(, "hidden_size": 16777217, "num_attention_heads": 1})", "hidden_size"},
      // OLMoE (and Mixtral) experts take intermediate_size when moe_intermediate_size is
      // absent; without either the experts had width 0.
      {R"({"model_type": "olmoe", "vocab_size": 16, "hidden_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 4, "num_experts": 4, "num_experts_per_tok": 2})",
       "intermediate_size"},
  };
  for (const auto& [json, field] : cases) {
    auto c = ModelConfig::FromJson(json);
    ASSERT_FALSE(c.ok()) << json;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
    EXPECT_NE(c.status().message().find(field), absl::string_view::npos)
        << "want the error to name " << field << ": " << c.status();
  }
  // The fuzz corpus keeps each finding as tests/fuzz/model_config_seeds/regression_*.json.
  int seeds = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(SLUICE_SOURCE_DIR) + "/tests/fuzz/model_config_seeds")) {
    if (entry.path().filename().string().rfind("regression_", 0) != 0) continue;
    auto c = ModelConfig::FromFile(entry.path().string());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << entry.path() << ": " << c.status();
    ++seeds;
  }
  EXPECT_GE(seeds, 4);
}

TEST(ModelLoadTest, ShapeDisagreeingWithConfigIsNamed) {
  // A config claiming a wider model than the weights: the error names the tensor.
  const std::string dir = ::testing::TempDir() + "/sluice_shape_mismatch";
  std::filesystem::create_directories(dir);
  const std::string src = std::string(SLUICE_TEST_DATA_DIR) + "/models/llama_f32";
  std::filesystem::copy_file(src + "/model.safetensors", dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  std::ifstream in(src + "/config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  auto config = nlohmann::json::parse(ss.str());
  config["intermediate_size"] = 200;
  std::ofstream(dir + "/config.json") << config.dump();
  auto model = CausalLm::Load(dir, kernels::Device::kCpu);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("mlp.gate_proj.weight"), absl::string_view::npos)
      << model.status();
}

}  // namespace
}  // namespace sluice::engine
