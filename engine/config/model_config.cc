#include "engine/config/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace sluice::engine {
namespace {

using json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", field, " ", what));
}

// Upper bounds far above any real checkpoint. They keep every product of shapes the
// engine forms (heads × head_dim × hidden, experts × width, ...) inside int64 and the
// per-layer work of parsing bounded, whatever the file says.
constexpr int64_t kMaxDim = int64_t{1} << 24;     // sizes, head counts, expert counts
constexpr int64_t kMaxLayers = int64_t{1} << 14;  // num_hidden_layers
constexpr int64_t kMaxPositions = INT32_MAX;      // positions are int32 in a batch

absl::Status GetInt(const json& j, const char* field, int64_t* out, bool required,
                    int64_t min_value = 1, int64_t max_value = kMaxDim) {
  if (!j.contains(field) || j[field].is_null()) {
    return required ? FieldError(field, "is missing") : absl::OkStatus();
  }
  if (!j[field].is_number_integer()) return FieldError(field, "must be an integer");
  if (j[field].is_number_unsigned() && j[field].get<uint64_t>() > static_cast<uint64_t>(max_value)) {
    return FieldError(field, absl::StrCat("must be <= ", max_value, ", got ", j[field].get<uint64_t>()));
  }
  int64_t v = j[field].get<int64_t>();
  if (v < min_value) return FieldError(field, absl::StrCat("must be >= ", min_value, ", got ", v));
  if (v > max_value) return FieldError(field, absl::StrCat("must be <= ", max_value, ", got ", v));
  *out = v;
  return absl::OkStatus();
}

absl::Status GetDouble(const json& j, const char* field, double* out) {
  if (!j.contains(field) || j[field].is_null()) return absl::OkStatus();
  if (!j[field].is_number()) return FieldError(field, "must be a number");
  *out = j[field].get<double>();
  return absl::OkStatus();
}

absl::Status ParseRope(const json& j, RopeConfig* rope) {
  // transformers >= 5 nests everything in rope_parameters; older configs use
  // rope_theta at top level plus an optional rope_scaling dict.
  json params = json::object();
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    params = j["rope_parameters"];
  } else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    params = j["rope_scaling"];
  }
  if (auto s = GetDouble(j, "rope_theta", &rope->theta); !s.ok()) return s;
  if (auto s = GetDouble(params, "rope_theta", &rope->theta); !s.ok()) return s;
  if (auto s = GetDouble(j, "partial_rotary_factor", &rope->partial_rotary_factor); !s.ok()) return s;
  if (auto s = GetDouble(params, "partial_rotary_factor", &rope->partial_rotary_factor); !s.ok()) return s;
  if (!(rope->theta > 0) || !std::isfinite(rope->theta)) return FieldError("rope_theta", "must be a finite number > 0");
  if (!(rope->partial_rotary_factor > 0 && rope->partial_rotary_factor <= 1)) {
    return FieldError("partial_rotary_factor", "must be in (0, 1]");
  }
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (params.contains(key) && params[key].is_string()) type = params[key].get<std::string>();
  }
  rope->type = type;
  if (type == "default") return absl::OkStatus();
  if (type != "linear" && type != "llama3") {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: rope type '", type, "' is not supported yet (supported: default, linear, llama3)"));
  }
  if (auto s = GetDouble(params, "factor", &rope->factor); !s.ok()) return s;
  if (rope->factor <= 0) return FieldError("rope factor", "must be > 0");
  if (type == "llama3") {
    if (auto s = GetDouble(params, "low_freq_factor", &rope->low_freq_factor); !s.ok()) return s;
    if (auto s = GetDouble(params, "high_freq_factor", &rope->high_freq_factor); !s.ok()) return s;
    if (auto s = GetInt(params, "original_max_position_embeddings",
                        &rope->original_max_position_embeddings, true, 1, kMaxPositions);
        !s.ok()) {
      return s;
    }
    if (rope->high_freq_factor <= rope->low_freq_factor) {
      return FieldError("rope high_freq_factor", "must exceed low_freq_factor");
    }
  }
  return absl::OkStatus();
}

absl::Status QuantError(absl::string_view method, absl::string_view what) {
  return absl::UnimplementedError(
      absl::StrCat("config.json: quantization_config with quant_method \"", method, "\": ", what));
}

absl::Status QuantFieldError(absl::string_view method, absl::string_view field,
                             absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      "config.json: quantization_config (quant_method \"", method, "\") field ", field, " ", what));
}

// A string field: its value, `fallback` when absent or null, an error when not a string.
absl::StatusOr<std::string> QuantString(const json& q, const char* field, absl::string_view method,
                                        const std::string& fallback) {
  if (!q.contains(field) || q[field].is_null()) return fallback;
  if (!q[field].is_string()) return QuantFieldError(method, field, "must be a string");
  return q[field].get<std::string>();
}

absl::StatusOr<bool> QuantBool(const json& q, const char* field, absl::string_view method,
                               bool fallback) {
  if (!q.contains(field) || q[field].is_null()) return fallback;
  if (!q[field].is_boolean()) return QuantFieldError(method, field, "must be true or false");
  return q[field].get<bool>();
}

// transformers' FineGrainedFP8Config (integrations/finegrained_fp8.py), as Qwen's -FP8
// checkpoints write it: {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme":
// "dynamic", "weight_block_size": [128, 128]}.
absl::Status ParseFp8(const json& q, QuantizationConfig* out) {
  const std::string m = "fp8";
  SLUICE_ASSIGN_OR_RETURN(const std::string fmt, QuantString(q, "fmt", m, "e4m3"));
  if (fmt != "e4m3")
    return QuantError(m, absl::StrCat("fmt \"", fmt, "\" is not supported (only e4m3)"));
  // "dynamic" quantizes activations per token on GPUs; sluice keeps activations in f32,
  // the math of the dequantized weights. "static" needs per-tensor activation scales.
  SLUICE_ASSIGN_OR_RETURN(const std::string act, QuantString(q, "activation_scheme", m, "dynamic"));
  if (act != "dynamic") {
    return QuantError(
        m, absl::StrCat("activation_scheme \"", act, "\" is not supported (only dynamic)"));
  }
  SLUICE_ASSIGN_OR_RETURN(const std::string scale_fmt, QuantString(q, "scale_fmt", m, "float"));
  if (scale_fmt != "float") {
    return QuantError(
        m, absl::StrCat("scale_fmt \"", scale_fmt, "\" is not supported (only float scales)"));
  }
  SLUICE_ASSIGN_OR_RETURN(const std::string experts, QuantString(q, "expert_dtype", m, "fp8"));
  if (experts != "fp8") {
    return QuantError(m, absl::StrCat("expert_dtype \"", experts, "\" is not supported"));
  }
  if (q.contains("modules_to_convert") && !q["modules_to_convert"].is_null() &&
      !(q["modules_to_convert"].is_array() && q["modules_to_convert"].empty())) {
    return QuantError(m, "modules_to_convert (fp8 embedding tables) is not supported");
  }
  if (!q.contains("weight_block_size") || q["weight_block_size"].is_null()) {
    return QuantError(
        m,
        "weight_block_size is missing: fp8 without block scales (one scale per tensor) is "
        "not supported");
  }
  const json& b = q["weight_block_size"];
  if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
      b[0].get<int64_t>() < 1 || b[1].get<int64_t>() < 1 || b[0].get<int64_t>() > kMaxDim ||
      b[1].get<int64_t>() > kMaxDim) {
    return QuantFieldError(m, "weight_block_size", "must be two positive integers [rows, cols]");
  }
  out->method = QuantizationConfig::Method::kFp8Block;
  out->block_rows = b[0].get<int64_t>();
  out->block_cols = b[1].get<int64_t>();
  return absl::OkStatus();
}

// transformers' / optimum's GPTQConfig as AutoGPTQ and GPTQModel write it:
// {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true,
//  "checkpoint_format": "gptq"} (GPTQModel also writes "format").
absl::Status ParseGptq(const json& q, QuantizationConfig* out) {
  const std::string m = "gptq";
  if (!q.contains("bits") || !q["bits"].is_number_integer()) {
    return QuantFieldError(m, "bits", "is missing or not an integer");
  }
  out->bits = q["bits"].get<int64_t>();
  if (out->bits != 4) {
    return QuantError(m, absl::StrCat("bits ", out->bits, " is not supported (only 4-bit GPTQ)"));
  }
  int64_t group_size = 128;
  if (q.contains("group_size") && !q["group_size"].is_null()) {
    if (!q["group_size"].is_number_integer())
      return QuantFieldError(m, "group_size", "must be an integer");
    group_size = q["group_size"].get<int64_t>();
  }
  if (group_size != -1 && (group_size < 1 || group_size > kMaxDim)) {
    return QuantFieldError(m, "group_size",
                           absl::StrCat("must be -1 or a positive integer, got ", group_size));
  }
  out->group_size = group_size == -1 ? 0 : group_size;
  SLUICE_ASSIGN_OR_RETURN(out->desc_act, QuantBool(q, "desc_act", m, false));
  SLUICE_ASSIGN_OR_RETURN(out->sym, QuantBool(q, "sym", m, true));
  // "checkpoint_format" is the older name of "format" (transformers reads both).
  SLUICE_ASSIGN_OR_RETURN(std::string format, QuantString(q, "format", m, "gptq"));
  SLUICE_ASSIGN_OR_RETURN(format, QuantString(q, "checkpoint_format", m, format));
  if (format == "gptq") {
    out->zero_offset = 1;  // v1 stored zero − 1 (AutoGPTQ's pack); every v1 kernel adds 1 back
  } else if (format == "gptq_v2") {
    out->zero_offset = 0;
  } else {
    return QuantError(
        m, absl::StrCat("checkpoint_format \"", format, "\" is not supported (gptq or gptq_v2)"));
  }
  out->checkpoint_format = format;
  SLUICE_ASSIGN_OR_RETURN(const std::string pack, QuantString(q, "pack_dtype", m, "int32"));
  if (pack != "int32" && pack != "torch.int32") {
    return QuantError(m, absl::StrCat("pack_dtype \"", pack, "\" is not supported (only int32)"));
  }
  if (q.contains("dynamic") && !q["dynamic"].is_null() &&
      !(q["dynamic"].is_object() && q["dynamic"].empty())) {
    return QuantError(m, "dynamic (per-module bits or group sizes) is not supported");
  }
  out->method = QuantizationConfig::Method::kGptqInt4;
  return absl::OkStatus();
}

absl::Status ParseQuantization(const json& root, const json& j, QuantizationConfig* out) {
  *out = QuantizationConfig{};
  for (const json* src : std::initializer_list<const json*>{&root, &j}) {
    if (src->contains("compression_config")) {
      // compressed-tensors (llm-compressor) writes its scheme here.
      return absl::UnimplementedError(
          "config.json: compression_config (compressed-tensors) is not supported; load the bf16 or "
          "f32 "
          "checkpoint (sluiced --quantization int8|int4 quantizes it at load)");
    }
  }
  const json* found = nullptr;
  for (const json* src : std::initializer_list<const json*>{&root, &j}) {
    if (src->contains("quantization_config") && !(*src)["quantization_config"].is_null()) {
      found = &(*src)["quantization_config"];
      break;
    }
  }
  if (found == nullptr) return absl::OkStatus();
  const json& q = *found;
  if (!q.is_object())
    return absl::InvalidArgumentError("config.json: quantization_config must be an object");
  if (!q.contains("quant_method") || !q["quant_method"].is_string()) {
    return absl::InvalidArgumentError(
        "config.json: quantization_config has no quant_method string");
  }
  const std::string method = q["quant_method"].get<std::string>();
  out->quant_method = method;
  if (q.contains("modules_to_not_convert") && q["modules_to_not_convert"].is_array()) {
    for (const auto& v : q["modules_to_not_convert"]) {
      if (v.is_string()) out->modules_to_not_convert.push_back(v.get<std::string>());
    }
  }
  if (method == "fp8") return ParseFp8(q, out);
  if (method == "gptq") return ParseGptq(q, out);
  return QuantError(
      method,
      "this pre-quantized format is not supported (supported: fp8 with block scales, 4-bit gptq); "
      "load the bf16 or f32 checkpoint (sluiced --quantization int8|int4 quantizes it at load)");
}

// The decoder's config object: text_config in a multimodal Qwen3.5 wrapper, else the root.
const json& DecoderConfig(const json& root) {
  if (root.contains("model_type") && root["model_type"].is_string()) {
    const std::string type = root["model_type"].get<std::string>();
    if ((type == "qwen3_5" || type == "qwen3_5_moe") && root.contains("text_config") &&
        root["text_config"].is_object()) {
      return root["text_config"];
    }
  }
  return root;
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& text) {
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("config.json is not a JSON object");
  }
  if (!root.contains("model_type") || !root["model_type"].is_string()) {
    return FieldError("model_type", "is missing");
  }
  ModelConfig c;
  const std::string outer_type = root["model_type"].get<std::string>();
  // Multimodal Qwen3.5 checkpoints wrap the text decoder's config in text_config; the
  // decoder's tensors then live under model.language_model.
  const json* jp = &root;
  if ((outer_type == "qwen3_5" || outer_type == "qwen3_5_moe") && root.contains("text_config") &&
      root["text_config"].is_object()) {
    jp = &root["text_config"];
    c.weight_prefix = "model.language_model.";
    if (root.contains("vision_config")) c.not_served.push_back("vision tower (vision_config)");
  }
  const json& j = *jp;
  c.model_type = j.contains("model_type") && j["model_type"].is_string()
                     ? j["model_type"].get<std::string>()
                     : outer_type;
  static const std::map<std::string, ModelFamily> kFamilies = {
      {"llama", ModelFamily::kLlama},         {"qwen3", ModelFamily::kQwen3},
      {"qwen3_moe", ModelFamily::kQwen3Moe},  {"mixtral", ModelFamily::kMixtral},
      {"olmoe", ModelFamily::kOlmoe},         {"qwen3_next", ModelFamily::kQwen3Next},
      {"qwen3_5_text", ModelFamily::kQwen35}, {"qwen3_5_moe_text", ModelFamily::kQwen35Moe},
      {"qwen3_5", ModelFamily::kQwen35},      {"qwen3_5_moe", ModelFamily::kQwen35Moe},
  };
  auto family = kFamilies.find(c.model_type);
  if (family == kFamilies.end()) {
    return absl::UnimplementedError(absl::StrCat(
        "model_type '", c.model_type,
        "' is not supported (supported: llama, qwen3, qwen3_moe, mixtral, olmoe, qwen3_next, "
        "qwen3_5, qwen3_5_moe)"));
  }
  c.family = family->second;
  const bool hybrid = c.family == ModelFamily::kQwen3Next || c.family == ModelFamily::kQwen35 ||
                      c.family == ModelFamily::kQwen35Moe;
  switch (c.family) {
    case ModelFamily::kLlama:
    case ModelFamily::kMixtral:
      break;
    case ModelFamily::kOlmoe:
      c.qk_norm = QkNorm::kWholeProjection;
      break;
    default:
      c.qk_norm = QkNorm::kPerHead;
      break;
  }
  if (hybrid) {
    c.norm_weight_offset = 1.f;
    c.attention_output_gate = true;
    c.rope.partial_rotary_factor = 0.25;  // the family's default when the config omits it
  }

  if (root.contains("architectures") && root["architectures"].is_array() &&
      !root["architectures"].empty() && root["architectures"][0].is_string()) {
    c.architecture = root["architectures"][0].get<std::string>();
  }
  for (auto [field, out] : {std::pair{"vocab_size", &c.vocab_size},
                            {"hidden_size", &c.hidden_size},
                            {"num_attention_heads", &c.num_attention_heads}}) {
    if (auto s = GetInt(j, field, out, true); !s.ok()) return s;
  }
  if (auto s = GetInt(j, "num_hidden_layers", &c.num_layers, true, 1, kMaxLayers); !s.ok()) return s;
  // MoE-only families may omit the dense intermediate size.
  const bool dense_ffn_required = c.family == ModelFamily::kLlama || c.family == ModelFamily::kQwen3 ||
                                  c.family == ModelFamily::kQwen35;
  if (auto s = GetInt(j, "intermediate_size", &c.intermediate_size, dense_ffn_required); !s.ok()) return s;
  c.num_key_value_heads = c.num_attention_heads;
  if (auto s = GetInt(j, "num_key_value_heads", &c.num_key_value_heads, false); !s.ok()) return s;
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return FieldError("num_attention_heads", absl::StrCat("(", c.num_attention_heads,
                                                          ") must be a multiple of num_key_value_heads (",
                                                          c.num_key_value_heads, ")"));
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  if (auto s = GetInt(j, "head_dim", &c.head_dim, false); !s.ok()) return s;
  if (c.head_dim == 0) {
    return FieldError("head_dim", absl::StrCat("is missing, and hidden_size / num_attention_heads (", c.hidden_size,
                                               " / ", c.num_attention_heads, ") is 0"));
  }
  if (c.head_dim % 2 != 0) return FieldError("head_dim", "must be even for RoPE");
  c.max_position_embeddings = 2048;
  if (auto s = GetInt(j, "max_position_embeddings", &c.max_position_embeddings, false, 1, kMaxPositions);
      !s.ok()) {
    return s;
  }
  if (auto s = GetDouble(j, "rms_norm_eps", &c.rms_norm_eps); !s.ok()) return s;
  if (c.rms_norm_eps <= 0) return FieldError("rms_norm_eps", "must be > 0");
  for (const json* src : std::initializer_list<const json*>{&root, &j}) {  // tie_word_embeddings may sit on the wrapper
    if (src->contains("tie_word_embeddings") && (*src)["tie_word_embeddings"].is_boolean()) {
      c.tie_word_embeddings = (*src)["tie_word_embeddings"].get<bool>();
    }
  }
  // A pre-quantized checkpoint stores packed integers and scales under names a bf16
  // load would misread or miss: only the formats ParseQuantization accepts load, and
  // every other method or parameter is refused by name.
  if (auto s = ParseQuantization(root, j, &c.quantization); !s.ok()) return s;
  for (const char* field : {"attention_bias", "mlp_bias"}) {
    if (j.contains(field) && j[field].is_boolean() && j[field].get<bool>()) {
      return absl::UnimplementedError(absl::StrCat("config.json: ", field, "=true is not supported yet"));
    }
  }
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    return absl::UnimplementedError("config.json: hidden_act must be silu (SwiGLU)");
  }
  for (const json* src : std::initializer_list<const json*>{&root, &j}) {
    for (const char* field : {"dtype", "torch_dtype"}) {
      if (src->contains(field) && (*src)[field].is_string()) c.weight_dtype = (*src)[field].get<std::string>();
    }
  }
  if (auto s = ParseRope(j, &c.rope); !s.ok()) return s;
  if (j.contains("clip_qkv") && j["clip_qkv"].is_number()) c.clip_qkv = j["clip_qkv"].get<double>();
  for (const json* src : std::initializer_list<const json*>{&root, &j}) {
    if (src->contains("bos_token_id") && (*src)["bos_token_id"].is_number_integer()) {
      c.bos_token_id = (*src)["bos_token_id"].get<int32_t>();
    }
    if (src->contains("eos_token_id")) {
      const auto& e = (*src)["eos_token_id"];
      std::vector<int32_t> ids;
      if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
      if (e.is_array()) {
        for (const auto& v : e) {
          if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
        }
      }
      if (!ids.empty()) c.eos_token_ids = ids;
    }
  }

  // Layer types: explicit, or every full_attention_interval-th layer is full attention.
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    for (const auto& v : j["layer_types"]) {
      if (!v.is_string()) return FieldError("layer_types", "must be strings");
      c.layer_types.push_back(v.get<std::string>());
    }
    if (static_cast<int64_t>(c.layer_types.size()) != c.num_layers) {
      return FieldError("layer_types", absl::StrCat("has ", c.layer_types.size(),
                                                    " entries for ", c.num_layers, " layers"));
    }
  } else if (hybrid) {
    int64_t interval = 4;
    if (auto s = GetInt(j, "full_attention_interval", &interval, false); !s.ok()) return s;
    for (int64_t i = 0; i < c.num_layers; ++i) {
      c.layer_types.push_back((i + 1) % interval == 0 ? "full_attention" : "linear_attention");
    }
  } else {
    c.layer_types.assign(c.num_layers, "full_attention");
  }
  for (const auto& t : c.layer_types) {
    if (t == "linear_attention" && hybrid) continue;
    if (t == "full_attention") continue;
    return absl::UnimplementedError(absl::StrCat("config.json: layer type '", t,
                                                 "' is not supported for ", c.model_type));
  }
  if (j.contains("use_sliding_window") && j["use_sliding_window"].is_boolean() &&
      j["use_sliding_window"].get<bool>()) {
    return absl::UnimplementedError("config.json: sliding-window attention is not supported yet");
  }
  if (j.contains("sliding_window") && j["sliding_window"].is_number_integer() &&
      c.family == ModelFamily::kMixtral &&
      j["sliding_window"].get<int64_t>() < c.max_position_embeddings) {
    return absl::UnimplementedError("config.json: Mixtral sliding_window shorter than the context is not supported yet");
  }

  if (c.NumLinearAttentionLayers() > 0) {
    LinearAttentionConfig& l = c.linear;
    l.fused_projections = c.family == ModelFamily::kQwen3Next;
    for (auto [field, out] : {std::pair{"linear_num_key_heads", &l.num_key_heads},
                              {"linear_num_value_heads", &l.num_value_heads},
                              {"linear_key_head_dim", &l.key_head_dim},
                              {"linear_value_head_dim", &l.value_head_dim}}) {
      if (auto s = GetInt(j, field, out, true); !s.ok()) return s;
    }
    if (auto s = GetInt(j, "linear_conv_kernel_dim", &l.conv_kernel, false); !s.ok()) return s;
    if (l.num_value_heads % l.num_key_heads != 0) {
      return FieldError("linear_num_value_heads", "must be a multiple of linear_num_key_heads");
    }
  }

  const bool moe_family = c.family == ModelFamily::kQwen3Moe || c.family == ModelFamily::kMixtral ||
                          c.family == ModelFamily::kOlmoe || c.family == ModelFamily::kQwen3Next ||
                          c.family == ModelFamily::kQwen35Moe;
  if (moe_family) {
    MoeConfig& m = c.moe;
    // transformers >= 5 may write either name for any MoE family.
    const char* experts_field = j.contains("num_experts") ? "num_experts" : "num_local_experts";
    if (auto s = GetInt(j, experts_field, &m.num_experts, true, 0); !s.ok()) return s;
    if (auto s = GetInt(j, "num_experts_per_tok", &m.experts_per_token, true); !s.ok()) return s;
    if (m.experts_per_token > m.num_experts && m.num_experts > 0) {
      return FieldError("num_experts_per_tok", "exceeds the number of experts");
    }
    m.expert_intermediate_size = c.intermediate_size;
    if (auto s = GetInt(j, "moe_intermediate_size", &m.expert_intermediate_size,
                        c.family != ModelFamily::kMixtral && c.family != ModelFamily::kOlmoe);
        !s.ok()) {
      return s;
    }
    if (m.num_experts > 0 && m.expert_intermediate_size == 0) {  // Mixtral, OLMoE: the dense size
      return FieldError("intermediate_size", "is missing (the experts' width when moe_intermediate_size is absent)");
    }
    if (auto s = GetInt(j, "shared_expert_intermediate_size", &m.shared_expert_intermediate_size, false, 0);
        !s.ok()) {
      return s;
    }
    // Mixtral always renormalises the top-k (softmax over the chosen logits).
    m.norm_topk_prob = c.family == ModelFamily::kMixtral || c.family == ModelFamily::kQwen3Next ||
                       c.family == ModelFamily::kQwen35Moe;
    if (j.contains("norm_topk_prob") && j["norm_topk_prob"].is_boolean()) {
      m.norm_topk_prob = j["norm_topk_prob"].get<bool>();
    }
    if (auto s = GetInt(j, "decoder_sparse_step", &m.decoder_sparse_step, false); !s.ok()) return s;
    if (j.contains("mlp_only_layers") && j["mlp_only_layers"].is_array()) {
      for (const auto& v : j["mlp_only_layers"]) {
        if (!v.is_number_integer()) return FieldError("mlp_only_layers", "must be integers");
        m.mlp_only_layers.push_back(v.get<int64_t>());
      }
    }
    if (c.intermediate_size == 0) {
      for (int64_t i = 0; i < c.num_layers; ++i) {
        if (!c.IsMoeLayer(i)) return FieldError("intermediate_size", "is needed for dense layers");
      }
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return FromJson(ss.str());
}

absl::StatusOr<QuantizationConfig> ParseQuantizationConfig(const std::string& text) {
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("config.json is not a JSON object");
  }
  QuantizationConfig q;
  SLUICE_RETURN_IF_ERROR(ParseQuantization(root, DecoderConfig(root), &q));
  return q;
}

std::string QuantizationConfig::FormatName() const {
  switch (method) {
    case Method::kFp8Block:
      return block_rows == block_cols ? absl::StrCat("fp8_block", block_rows)
                                      : absl::StrCat("fp8_block", block_rows, "x", block_cols);
    case Method::kGptqInt4:
      return absl::StrCat("gptq_int", bits,
                          group_size > 0 ? absl::StrCat("_g", group_size) : "_per_row",
                          desc_act ? "_act_order" : "");
    case Method::kNone:
    default:
      return "none";
  }
}

int64_t ModelConfig::rotary_dim() const {
  int64_t d = static_cast<int64_t>(head_dim * rope.partial_rotary_factor);
  return d - d % 2;
}

bool ModelConfig::IsMoeLayer(int64_t layer) const {
  if (moe.num_experts == 0) return false;
  for (int64_t l : moe.mlp_only_layers) {
    if (l == layer) return false;
  }
  return (layer + 1) % moe.decoder_sparse_step == 0;
}

int64_t ModelConfig::NumAttentionLayers() const {
  return static_cast<int64_t>(std::count(layer_types.begin(), layer_types.end(), "full_attention"));
}

int64_t ModelConfig::NumLinearAttentionLayers() const {
  return num_layers - NumAttentionLayers();
}

namespace {

// Parameters of one layer; `active` counts only the experts one token uses.
uint64_t LayerParameters(const ModelConfig& c, int64_t layer, bool active) {
  const uint64_t h = c.hidden_size;
  uint64_t n = 2 * h;  // input and post-attention norms
  if (c.IsLinearAttentionLayer(layer)) {
    const LinearAttentionConfig& l = c.linear;
    n += h * (l.conv_dim() + l.value_dim() + 2 * l.num_value_heads);  // qkv, z, b, a projections
    n += static_cast<uint64_t>(l.conv_dim()) * l.conv_kernel;            // depthwise conv
    n += 2 * l.num_value_heads;                                          // A_log, dt_bias
    n += l.value_head_dim;                                               // gated norm
    n += static_cast<uint64_t>(l.value_dim()) * h;                       // out_proj
  } else {
    const uint64_t q_out = c.num_attention_heads * c.head_dim * (c.attention_output_gate ? 2 : 1);
    const uint64_t kv_out = c.num_key_value_heads * c.head_dim;
    n += h * (q_out + 2 * kv_out) + c.num_attention_heads * c.head_dim * h;
    if (c.qk_norm == QkNorm::kPerHead) n += 2 * c.head_dim;
    if (c.qk_norm == QkNorm::kWholeProjection) n += (c.num_attention_heads + c.num_key_value_heads) * c.head_dim;
  }
  if (c.IsMoeLayer(layer)) {
    const MoeConfig& m = c.moe;
    const uint64_t expert = 3 * h * m.expert_intermediate_size;
    n += h * m.num_experts;  // router
    n += expert * (active ? m.experts_per_token : m.num_experts);
    if (m.shared_expert_intermediate_size > 0) n += 3 * h * m.shared_expert_intermediate_size + h;
  } else {
    n += 3 * h * c.intermediate_size;
  }
  return n;
}

}  // namespace

uint64_t ModelConfig::TotalParameters() const {
  uint64_t n = static_cast<uint64_t>(vocab_size) * hidden_size * (tie_word_embeddings ? 1 : 2) + hidden_size;
  for (int64_t i = 0; i < num_layers; ++i) n += LayerParameters(*this, i, false);
  return n;
}

uint64_t ModelConfig::ActiveParameters() const {
  uint64_t n = static_cast<uint64_t>(vocab_size) * hidden_size * (tie_word_embeddings ? 1 : 2) + hidden_size;
  for (int64_t i = 0; i < num_layers; ++i) n += LayerParameters(*this, i, true);
  return n;
}

}  // namespace sluice::engine
