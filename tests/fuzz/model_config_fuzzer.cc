// Fuzz target: config.json parsing (engine/config/model_config.cc) on arbitrary bytes.
//
// Properties:
//  - ModelConfig::FromJson returns a status for any input: it never crashes, throws or
//    hits undefined behaviour, and its errors are INVALID_ARGUMENT (a bad field) or
//    UNIMPLEMENTED (a valid but unsupported feature) with a message;
//  - whatever parses satisfies what the graph builder relies on without re-checking:
//    positive shapes, heads that divide, an even head_dim, one known layer type per
//    layer, a rotary width inside the head, MoE top-k inside the expert count;
//  - the derived quantities the server reports (parameter counts, layer counts) are
//    computable without overflow or unbounded work.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/config/model_config.h"
#include "tests/fuzz/fuzz_util.h"

using sluice::engine::ModelConfig;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto parsed = ModelConfig::FromJson(text);
  if (!parsed.ok()) {
    const absl::StatusCode code = parsed.status().code();
    SLUICE_FUZZ_CHECK(code == absl::StatusCode::kInvalidArgument ||
                      code == absl::StatusCode::kUnimplemented);
    SLUICE_FUZZ_CHECK(!parsed.status().message().empty());
    return 0;
  }
  const ModelConfig& c = *parsed;
  SLUICE_FUZZ_CHECK(!c.model_type.empty());
  SLUICE_FUZZ_CHECK(c.vocab_size >= 1 && c.hidden_size >= 1 && c.num_layers >= 1);
  SLUICE_FUZZ_CHECK(c.num_attention_heads >= 1 && c.num_key_value_heads >= 1);
  SLUICE_FUZZ_CHECK(c.num_attention_heads % c.num_key_value_heads == 0);
  SLUICE_FUZZ_CHECK(c.head_dim >= 2 && c.head_dim % 2 == 0);
  SLUICE_FUZZ_CHECK(c.max_position_embeddings >= 1);
  SLUICE_FUZZ_CHECK(c.intermediate_size >= 0);
  SLUICE_FUZZ_CHECK(c.rms_norm_eps > 0 && std::isfinite(c.rms_norm_eps));
  SLUICE_FUZZ_CHECK(static_cast<int64_t>(c.layer_types.size()) == c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    SLUICE_FUZZ_CHECK(c.layer_types[i] == "full_attention" || c.layer_types[i] == "linear_attention");
  }
  const int64_t attention = c.NumAttentionLayers();
  const int64_t linear = c.NumLinearAttentionLayers();
  SLUICE_FUZZ_CHECK(attention >= 0 && linear >= 0 && attention + linear == c.num_layers);
  if (linear > 0) {
    const auto& l = c.linear;
    SLUICE_FUZZ_CHECK(l.num_key_heads >= 1 && l.num_value_heads >= 1 && l.key_head_dim >= 1 &&
                      l.value_head_dim >= 1 && l.conv_kernel >= 1);
    SLUICE_FUZZ_CHECK(l.num_value_heads % l.num_key_heads == 0);
    SLUICE_FUZZ_CHECK(l.key_dim() >= 1 && l.value_dim() >= 1 && l.conv_dim() >= 1);
  }
  // The RoPE table is [max_position_embeddings, rotary_dim]; q/k rotate their first
  // rotary_dim channels.
  const int64_t rotary = c.rotary_dim();
  SLUICE_FUZZ_CHECK(rotary >= 0 && rotary <= c.head_dim && rotary % 2 == 0);
  SLUICE_FUZZ_CHECK(c.rope.type == "default" || c.rope.type == "linear" || c.rope.type == "llama3");
  if (c.rope.type != "default") SLUICE_FUZZ_CHECK(c.rope.factor > 0);
  const auto& m = c.moe;
  SLUICE_FUZZ_CHECK(m.num_experts >= 0 && m.decoder_sparse_step >= 1);
  if (m.num_experts > 0) {
    SLUICE_FUZZ_CHECK(m.experts_per_token >= 1 && m.experts_per_token <= m.num_experts);
    SLUICE_FUZZ_CHECK(m.expert_intermediate_size >= 1);
  }
  int64_t moe_layers = 0;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    if (c.IsMoeLayer(i)) {
      ++moe_layers;
    } else {
      SLUICE_FUZZ_CHECK(c.intermediate_size >= 1);  // a dense FFN needs its size
    }
  }
  SLUICE_FUZZ_CHECK(moe_layers == 0 || m.num_experts > 0);
  // The counts GetModelInfo reports; UBSan flags any signed overflow on the way.
  const uint64_t total = c.TotalParameters();
  const uint64_t active = c.ActiveParameters();
  SLUICE_FUZZ_CHECK(active <= total);
  return 0;
}
