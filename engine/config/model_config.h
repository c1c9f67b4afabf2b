// The parts of a Hugging Face config.json that shape the graph. Parsing validates every
// field the graph relies on and names the field in its error.
#ifndef SLUICE_ENGINE_CONFIG_MODEL_CONFIG_H_
#define SLUICE_ENGINE_CONFIG_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sluice::engine {

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3
  double theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  double partial_rotary_factor = 1.0;
};

enum class ModelFamily { kLlama, kQwen3 };

struct ModelConfig {
  std::string model_type;
  std::string architecture;
  ModelFamily family = ModelFamily::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qk_norm = false;  // Qwen3: RMSNorm over head_dim on q and k before RoPE
  RopeConfig rope;
  std::string weight_dtype;  // config's "dtype"/"torch_dtype", informational
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  std::vector<std::string> layer_types;  // one per layer, e.g. "full_attention"

  static absl::StatusOr<ModelConfig> FromJson(const std::string& json_text);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);

  int64_t rotary_dim() const;
  // Parameters of the checkpoint, and those one token's forward pass reads.
  uint64_t TotalParameters() const;
  uint64_t ActiveParameters() const;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_CONFIG_MODEL_CONFIG_H_
