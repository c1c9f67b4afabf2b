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

enum class ModelFamily {
  kLlama,
  kQwen3,
  kQwen3Moe,
  kMixtral,
  kOlmoe,
  kQwen3Next,
  kQwen35,     // Qwen3.5 text decoder, dense FFN
  kQwen35Moe,  // Qwen3.5 text decoder, MoE FFN
};

// How q/k are normalised before RoPE.
enum class QkNorm {
  kNone,
  kPerHead,          // RMSNorm over head_dim (Qwen3, Qwen3-MoE, Qwen3-Next, Qwen3.5)
  kWholeProjection,  // RMSNorm over all heads at once (OLMoE)
};

// Gated DeltaNet (linear-attention) layer shapes.
struct LinearAttentionConfig {
  int64_t num_key_heads = 0;
  int64_t num_value_heads = 0;
  int64_t key_head_dim = 0;
  int64_t value_head_dim = 0;
  int64_t conv_kernel = 4;
  // Qwen3-Next packs q|k|v|z per key head in in_proj_qkvz and b|a in in_proj_ba;
  // Qwen3.5 has contiguous in_proj_qkv plus in_proj_z, in_proj_b, in_proj_a.
  bool fused_projections = false;
  int64_t key_dim() const { return num_key_heads * key_head_dim; }
  int64_t value_dim() const { return num_value_heads * value_head_dim; }
  int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
};

struct MoeConfig {
  int64_t num_experts = 0;  // 0: dense FFN everywhere
  int64_t experts_per_token = 0;
  int64_t expert_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;  // 0: no shared expert
  bool norm_topk_prob = false;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
};

// A pre-quantized checkpoint's quantization_config (config.json), the parts sluice reads.
// Only two published formats load (engine/weights/checkpoint.h says how they are read):
//  kFp8Block: transformers' fine-grained FP8 ("quant_method": "fp8", as Qwen publishes its
//    -FP8 models): <name>.weight in float8_e4m3fn [N, K] plus <name>.weight_scale_inv
//    (f32 or bf16) [ceil(N / block_rows), ceil(K / block_cols)]; w = fp8 · scale_inv of
//    the weight's (row / block_rows, col / block_cols) block;
//  kGptqInt4: GPTQ with 4 bits ("quant_method": "gptq"): <name>.qweight int32 [K/8, N],
//    .qzeros int32 [G, N/8], .scales f16 [G, N], optional .g_idx int32 [K];
//    w[n, k] = scales[g, n] · (q[k, n] − z[g, n]) with g = g_idx[k] (k / group_size
//    without g_idx), and z the stored zero plus zero_offset (1 for checkpoint_format
//    "gptq", the v1 format that stored zero − 1; 0 for "gptq_v2").
// Every other method or parameter fails in ModelConfig::FromJson with an error naming it.
struct QuantizationConfig {
  enum class Method { kNone, kFp8Block, kGptqInt4 };
  Method method = Method::kNone;
  std::string quant_method;  // as written in config.json ("fp8", "gptq"); empty for kNone
  // kFp8Block: weight_block_size = [block_rows (output), block_cols (input)].
  int64_t block_rows = 0;
  int64_t block_cols = 0;
  // kGptqInt4.
  int64_t bits = 0;
  int64_t group_size = 0;  // inputs per group; -1 in config.json (one group per row) reads as 0
  bool desc_act = false;
  bool sym = true;
  std::string checkpoint_format;  // "gptq" (v1) or "gptq_v2"
  int32_t zero_offset = 0;        // added to every stored zero point: 1 for v1, 0 for v2
  std::vector<std::string> modules_to_not_convert;  // informational: what is stored decides

  bool quantized() const { return method != Method::kNone; }
  // A short name for GetModelInfo's weight_format: "fp8_block128" (or
  // "fp8_block128x64" for unequal blocks), "gptq_int4_g128" ("_act_order" with desc_act).
  std::string FormatName() const;
};

// Parses config.json's quantization_config (or compression_config) from the JSON text:
// kNone when there is none. A method or parameter sluice does not load is UNIMPLEMENTED
// (a malformed value INVALID_ARGUMENT), naming it: a pre-quantized checkpoint is never
// read as if it were bf16.
absl::StatusOr<QuantizationConfig> ParseQuantizationConfig(const std::string& config_json_text);

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
  QkNorm qk_norm = QkNorm::kNone;
  // Norm weights are stored around 0 and applied as (1 + w) (Qwen3-Next, Qwen3.5).
  float norm_weight_offset = 0.f;
  // Softmax attention has a sigmoid output gate packed into q_proj (Qwen3-Next, Qwen3.5).
  bool attention_output_gate = false;
  std::optional<double> clip_qkv;  // OLMoE clamps q, k, v
  RopeConfig rope;
  LinearAttentionConfig linear;
  MoeConfig moe;
  // Prefix of the text decoder's tensors: "model." or, in a multimodal checkpoint,
  // "model.language_model.".
  std::string weight_prefix = "model.";
  // Parts of the checkpoint sluice does not serve (e.g. "vision tower").
  std::vector<std::string> not_served;
  std::string weight_dtype;  // config's "dtype"/"torch_dtype", informational
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  std::vector<std::string> layer_types;  // one per layer, e.g. "full_attention"
  QuantizationConfig quantization;       // a pre-quantized checkpoint's format

  static absl::StatusOr<ModelConfig> FromJson(const std::string& json_text);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);

  int64_t rotary_dim() const;
  bool IsLinearAttentionLayer(int64_t layer) const { return layer_types[layer] == "linear_attention"; }
  bool IsMoeLayer(int64_t layer) const;
  int64_t NumAttentionLayers() const;
  int64_t NumLinearAttentionLayers() const;
  // Parameters of the served decoder (embedding and LM head included), and those one
  // token's forward pass touches (non-expert weights + top-k routed experts + shared
  // expert). Counted from the shapes the config implies.
  uint64_t TotalParameters() const;
  uint64_t ActiveParameters() const;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_CONFIG_MODEL_CONFIG_H_
