#include "engine/config/model_config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace sluice::engine {
namespace {

using json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", field, " ", what));
}

absl::Status GetInt(const json& j, const char* field, int64_t* out, bool required,
                    int64_t min_value = 1) {
  if (!j.contains(field) || j[field].is_null()) {
    return required ? FieldError(field, "is missing") : absl::OkStatus();
  }
  if (!j[field].is_number_integer()) return FieldError(field, "must be an integer");
  int64_t v = j[field].get<int64_t>();
  if (v < min_value) return FieldError(field, absl::StrCat("must be >= ", min_value, ", got ", v));
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
                        &rope->original_max_position_embeddings, true);
        !s.ok()) {
      return s;
    }
    if (rope->high_freq_factor <= rope->low_freq_factor) {
      return FieldError("rope high_freq_factor", "must exceed low_freq_factor");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("config.json is not a JSON object");
  }
  ModelConfig c;
  if (!j.contains("model_type") || !j["model_type"].is_string()) {
    return FieldError("model_type", "is missing");
  }
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type == "llama") {
    c.family = ModelFamily::kLlama;
  } else if (c.model_type == "qwen3") {
    c.family = ModelFamily::kQwen3;
    c.qk_norm = true;
  } else {
    return absl::UnimplementedError(absl::StrCat("model_type '", c.model_type,
                                                 "' is not supported yet (supported: llama, qwen3)"));
  }
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    c.architecture = j["architectures"][0].get<std::string>();
  }
  for (auto [field, out] : {std::pair{"vocab_size", &c.vocab_size},
                            {"hidden_size", &c.hidden_size},
                            {"intermediate_size", &c.intermediate_size},
                            {"num_hidden_layers", &c.num_layers},
                            {"num_attention_heads", &c.num_attention_heads}}) {
    if (auto s = GetInt(j, field, out, true); !s.ok()) return s;
  }
  c.num_key_value_heads = c.num_attention_heads;
  if (auto s = GetInt(j, "num_key_value_heads", &c.num_key_value_heads, false); !s.ok()) return s;
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return FieldError("num_attention_heads", absl::StrCat("(", c.num_attention_heads,
                                                          ") must be a multiple of num_key_value_heads (",
                                                          c.num_key_value_heads, ")"));
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  if (auto s = GetInt(j, "head_dim", &c.head_dim, false); !s.ok()) return s;
  if (c.head_dim % 2 != 0) return FieldError("head_dim", "must be even for RoPE");
  c.max_position_embeddings = 2048;
  if (auto s = GetInt(j, "max_position_embeddings", &c.max_position_embeddings, false); !s.ok()) return s;
  if (auto s = GetDouble(j, "rms_norm_eps", &c.rms_norm_eps); !s.ok()) return s;
  if (c.rms_norm_eps <= 0) return FieldError("rms_norm_eps", "must be > 0");
  if (j.contains("tie_word_embeddings") && j["tie_word_embeddings"].is_boolean()) {
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  for (const char* field : {"attention_bias", "mlp_bias"}) {
    if (j.contains(field) && j[field].is_boolean() && j[field].get<bool>()) {
      return absl::UnimplementedError(absl::StrCat("config.json: ", field, "=true is not supported yet"));
    }
  }
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    return absl::UnimplementedError("config.json: hidden_act must be silu (SwiGLU)");
  }
  for (const char* field : {"dtype", "torch_dtype"}) {
    if (j.contains(field) && j[field].is_string()) c.weight_dtype = j[field].get<std::string>();
  }
  if (auto s = ParseRope(j, &c.rope); !s.ok()) return s;
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) {
    c.bos_token_id = j["bos_token_id"].get<int32_t>();
  }
  if (j.contains("eos_token_id")) {
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int32_t>());
    if (e.is_array()) {
      for (const auto& v : e) {
        if (v.is_number_integer()) c.eos_token_ids.push_back(v.get<int32_t>());
      }
    }
  }
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    for (const auto& v : j["layer_types"]) {
      if (!v.is_string()) return FieldError("layer_types", "must be strings");
      c.layer_types.push_back(v.get<std::string>());
    }
    if (static_cast<int64_t>(c.layer_types.size()) != c.num_layers) {
      return FieldError("layer_types", absl::StrCat("has ", c.layer_types.size(),
                                                    " entries for ", c.num_layers, " layers"));
    }
    for (const auto& t : c.layer_types) {
      if (t != "full_attention") {
        return absl::UnimplementedError(absl::StrCat("config.json: layer type '", t,
                                                     "' is not supported for ", c.model_type));
      }
    }
  } else {
    c.layer_types.assign(c.num_layers, "full_attention");
  }
  if (j.contains("use_sliding_window") && j["use_sliding_window"].is_boolean() &&
      j["use_sliding_window"].get<bool>()) {
    return absl::UnimplementedError("config.json: sliding-window attention is not supported yet");
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

int64_t ModelConfig::rotary_dim() const {
  int64_t d = static_cast<int64_t>(head_dim * rope.partial_rotary_factor);
  return d - d % 2;
}

uint64_t ModelConfig::TotalParameters() const {
  const uint64_t h = hidden_size;
  const uint64_t attn = h * num_attention_heads * head_dim * 2 +  // q, o
                        h * num_key_value_heads * head_dim * 2 +  // k, v
                        (qk_norm ? 2 * head_dim : 0);
  const uint64_t mlp = 3 * h * intermediate_size;
  const uint64_t per_layer = attn + mlp + 2 * h;
  const uint64_t embed = static_cast<uint64_t>(vocab_size) * h;
  return per_layer * num_layers + embed * (tie_word_embeddings ? 1 : 2) + h;
}

uint64_t ModelConfig::ActiveParameters() const { return TotalParameters(); }

}  // namespace sluice::engine
