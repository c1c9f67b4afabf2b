#include "engine/weights/checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

namespace fs = std::filesystem;

namespace {

bool EndsWith(const std::string& s, absl::string_view suffix) { return absl::EndsWith(s, suffix); }
std::string Strip(const std::string& s, absl::string_view suffix) {
  return s.substr(0, s.size() - suffix.size());
}
std::string Parent(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? std::string() : module.substr(0, dot);
}

constexpr absl::string_view kWeight = ".weight";
constexpr absl::string_view kFp8Scale = ".weight_scale_inv";
constexpr absl::string_view kQweight = ".qweight";

// The f16 bits of v when v is exactly an f16 value (GPTQModel may store bf16 or f32
// scales; the GPTQ kernel keeps f16 scales, so only exact ones are accepted).
bool ExactF16(float v, uint16_t* out) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  if ((bits & 0x7fffffffu) == 0) {
    *out = sign;
    return true;
  }
  if (!std::isfinite(v)) return false;
  const int exp = static_cast<int>((bits >> 23) & 0xff) - 127;
  const uint32_t mant = bits & 0x7fffffu;
  if (exp >= -14 && exp <= 15) {
    if ((mant & 0x1fffu) != 0) return false;
    *out = static_cast<uint16_t>(sign | ((exp + 15) << 10) | (mant >> 13));
    return true;
  }
  const float units = std::fabs(v) * 16777216.f;  // f16 subnormals are multiples of 2^-24
  if (units >= 1024.f || units != std::floor(units)) return false;
  *out = static_cast<uint16_t>(sign | static_cast<uint16_t>(units));
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = dir;

  std::vector<std::string> files;
  std::map<std::string, std::string> weight_map;  // from the index, when sharded
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    auto index = nlohmann::json::parse(ss.str(), nullptr, false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": not a JSON object with a weight_map"));
    }
    std::set<std::string> unique;
    for (auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map['", name, "'] is not a file name"));
      }
      std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": shard name '", f, "' leaves the directory"));
      }
      weight_map[name] = f;
      unique.insert(f);
    }
    files.assign(unique.begin(), unique.end());
  } else {
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (entry.path().extension() == ".safetensors" &&
          entry.path().filename().string().rfind("golden", 0) != 0) {
        files.push_back(entry.path().filename().string());
      }
    }
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat("no *.safetensors files in ", dir));
  }
  for (const std::string& f : files) {
    SLUICE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((fs::path(dir) / f).string()));
    for (const auto& [name, entry] : file->entries()) {
      auto [it, inserted] = ckpt->index_.emplace(name, file.get());
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' appears in both ",
                                                       it->second->path(), " and ", file->path()));
      }
    }
    ckpt->files_.push_back(std::move(file));
  }
  for (const auto& [name, file] : weight_map) {
    auto it = ckpt->index_.find(name);
    if (it == ckpt->index_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("index lists tensor '", name, "' in ", file,
                                                     " but that file does not hold it"));
    }
  }
  const fs::path config_path = fs::path(dir) / "config.json";
  if (fs::exists(config_path, ec)) {
    std::ifstream in(config_path);
    std::stringstream ss;
    ss << in.rdbuf();
    SLUICE_ASSIGN_OR_RETURN(ckpt->quantization_, ParseQuantizationConfig(ss.str()));
  }
  SLUICE_RETURN_IF_ERROR(ckpt->CheckQuantizedTensors());
  for (const auto& [name, file] : ckpt->index_) {
    if (EndsWith(name, kFp8Scale)) ckpt->quantized_parents_.insert(Parent(Strip(name, kFp8Scale)));
    if (EndsWith(name, kQweight)) ckpt->quantized_parents_.insert(Parent(Strip(name, kQweight)));
  }
  return ckpt;
}

absl::Status Checkpoint::CheckQuantizedTensors() const {
  using Method = QuantizationConfig::Method;
  std::string fp8_example, gptq_example;
  for (const auto& [name, file] : index_) {
    if (EndsWith(name, kFp8Scale) && fp8_example.empty()) fp8_example = name;
    if (EndsWith(name, kQweight) && gptq_example.empty()) gptq_example = name;
  }
  const Method method = quantization_.method;
  auto mismatch = [&](const std::string& tensor, absl::string_view format) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", dir_, ": tensor '", tensor, "' is stored in the ", format,
        " format, but config.json ",
        method == Method::kNone
            ? std::string("has no quantization_config")
            : absl::StrCat("declares quant_method \"", quantization_.quant_method, "\""),
        "; it must never be read as another format"));
  };
  if (method != Method::kFp8Block && !fp8_example.empty())
    return mismatch(fp8_example, "fp8 (weight_scale_inv)");
  if (method != Method::kGptqInt4 && !gptq_example.empty())
    return mismatch(gptq_example, "gptq (qweight)");
  if (method == Method::kFp8Block && fp8_example.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", dir_,
                     ": config.json declares quant_method \"fp8\" but no tensor has a "
                     "weight_scale_inv (not an fp8 checkpoint)"));
  }
  if (method == Method::kGptqInt4 && gptq_example.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", dir_,
        ": config.json declares quant_method \"gptq\" but no tensor is a qweight (not a gptq "
        "checkpoint)"));
  }
  return absl::OkStatus();
}

bool Checkpoint::Contains(const std::string& name) const {
  if (Stored(name)) return true;
  return quantization_.method == QuantizationConfig::Method::kGptqInt4 && EndsWith(name, kWeight) &&
         Stored(Strip(name, kWeight) + std::string(kQweight));
}

absl::StatusOr<kernels::Tensor> Checkpoint::Get(const std::string& name) const {
  if (quantization_.quantized()) return GetQuantized(name);
  return GetStored(name);
}

absl::StatusOr<std::shared_ptr<kernels::PrequantizedWeight>> Checkpoint::LoadFp8(
    const std::string& module) const {
  auto w = std::make_shared<kernels::PrequantizedWeight>();
  w->format = kernels::PrequantizedWeight::Format::kFp8Block;
  w->name = module;
  SLUICE_ASSIGN_OR_RETURN(w->codes, GetStored(module + std::string(kWeight)));
  SLUICE_ASSIGN_OR_RETURN(w->block_scales, GetStored(module + std::string(kFp8Scale)));
  if (w->codes.dtype() != kernels::DType::kF8E4M3 || w->codes.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", module, ".weight' has a weight_scale_inv but is ",
                     w->codes.DebugString(), ", not a 2-D float8_e4m3 weight"));
  }
  w->rows = w->codes.dim(0);
  w->cols = w->codes.dim(1);
  w->block_rows = quantization_.block_rows;
  w->block_cols = quantization_.block_cols;
  return w;
}

absl::StatusOr<std::shared_ptr<kernels::PrequantizedWeight>> Checkpoint::LoadGptq(
    const std::string& module) const {
  auto w = std::make_shared<kernels::PrequantizedWeight>();
  w->format = kernels::PrequantizedWeight::Format::kGptqInt4;
  w->name = module;
  for (auto [suffix, out] :
       {std::pair{".qweight", &w->qweight}, {".qzeros", &w->qzeros}, {".scales", &w->scales}}) {
    SLUICE_ASSIGN_OR_RETURN(*out, GetStored(module + suffix));
  }
  if (Stored(module + ".g_idx")) {
    SLUICE_ASSIGN_OR_RETURN(w->g_idx, GetStored(module + ".g_idx"));
  } else if (quantization_.desc_act) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gptq module ", module, ": config.json has desc_act (act-order) but there is no g_idx"));
  }
  if (w->qweight.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", module, ".qweight' must be 2-D, got ", w->qweight.DebugString()));
  }
  w->cols = w->qweight.dim(0) * 8;  // 8 four-bit codes per int32 along the inputs
  w->rows = w->qweight.dim(1);
  w->group_size = quantization_.group_size;
  w->zero_offset = quantization_.zero_offset;
  if (w->scales.dtype() == kernels::DType::kBF16 || w->scales.dtype() == kernels::DType::kF32) {
    // Keep f16 scales exact: accept another float dtype only when every value is an f16.
    const kernels::Tensor& src = w->scales;
    SLUICE_ASSIGN_OR_RETURN(kernels::Tensor f16,
                            kernels::Tensor::Empty(src.shape(), kernels::DType::kF16));
    for (int64_t i = 0; i < src.numel(); ++i) {
      const float v = src.dtype() == kernels::DType::kBF16
                          ? kernels::Bf16ToF32(src.data<uint16_t>()[i])
                          : src.data<float>()[i];
      if (!ExactF16(v, f16.data<uint16_t>() + i)) {
        return absl::InvalidArgumentError(absl::StrCat("gptq module ", module, ": scale ", v, " (",
                                                       kernels::DTypeName(src.dtype()),
                                                       ") is not exactly a float16 value"));
      }
    }
    w->scales = f16;
  }
  return w;
}

absl::StatusOr<kernels::Tensor> Checkpoint::GetQuantized(const std::string& name) const {
  using Method = QuantizationConfig::Method;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = refs_.find(name);
    if (it != refs_.end()) return it->second;
  }
  if (!EndsWith(name, kWeight)) {
    // Fused 3-D experts (transformers >= 5: experts.gate_up_proj) carry <name>_scale_inv.
    if (Stored(name + "_scale_inv")) {
      return absl::UnimplementedError(absl::StrCat(
          "tensor '", name,
          "': pre-quantized fused 3-D experts (experts.gate_up_proj / experts.down_proj with "
          "_scale_inv) are not supported yet; only per-expert tensors "
          "(experts.N.gate_proj/up_proj/down_proj.weight) load pre-quantized"));
    }
    return GetStored(name);
  }
  const std::string module = Strip(name, kWeight);
  const bool fp8 =
      quantization_.method == Method::kFp8Block && Stored(module + std::string(kFp8Scale));
  const bool gptq =
      quantization_.method == Method::kGptqInt4 && Stored(module + std::string(kQweight));
  std::shared_ptr<kernels::PrequantizedWeight> weight;
  if (fp8 || gptq) {
    if (gptq && Stored(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint holds both '", name, "' and '", module,
                       ".qweight': which one is the weight is ambiguous"));
    }
    SLUICE_ASSIGN_OR_RETURN(weight, fp8 ? LoadFp8(module) : LoadGptq(module));
  } else {
    SLUICE_ASSIGN_OR_RETURN(kernels::Tensor t, GetStored(name));
    if (t.dtype() == kernels::DType::kF8E4M3) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' is float8_e4m3 but '", module,
                       ".weight_scale_inv' is missing: fp8 weights need their scales"));
    }
    const bool plain_float = t.dtype() == kernels::DType::kF32 ||
                             t.dtype() == kernels::DType::kBF16 ||
                             t.dtype() == kernels::DType::kF16;
    if (t.rank() != 2 || !plain_float || quantized_parents_.count(Parent(module)) == 0 ||
        t.dim(1) < 16)
      return t;
    // A plain projection next to pre-quantized ones (e.g. in_proj_b/a beside in_proj_qkv):
    // the same row-reference form, so that a fused projection can stack them.
    weight = std::make_shared<kernels::PrequantizedWeight>();
    weight->format = kernels::PrequantizedWeight::Format::kDense;
    weight->name = module;
    weight->rows = t.dim(0);
    weight->cols = t.dim(1);
    weight->dense = t;
  }
  SLUICE_ASSIGN_OR_RETURN(kernels::Tensor refs, kernels::MakeWeightRowRefs(weight));
  std::lock_guard<std::mutex> lock(mu_);
  weights_.push_back(weight);
  refs_.emplace(name, refs);
  return refs;
}

absl::StatusOr<kernels::Tensor> Checkpoint::GetStored(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, " has no tensor '", name, "'"));
  }
  return it->second->Get(name);
}

absl::StatusOr<kernels::Tensor> Checkpoint::Get(const std::string& name,
                                                const std::vector<int64_t>& expected) const {
  SLUICE_ASSIGN_OR_RETURN(kernels::Tensor t, Get(name));
  if (t.shape() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ",
                                                   kernels::ShapeString(t.shape()),
                                                   " but the config implies ",
                                                   kernels::ShapeString(expected)));
  }
  return t;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  for (const auto& [name, f] : index_) names.push_back(name);
  return names;
}

uint64_t Checkpoint::TotalBytes() const {
  uint64_t total = 0;
  for (const auto& f : files_) {
    for (const auto& [n, e] : f->entries()) total += e.end - e.begin;
  }
  return total;
}

}  // namespace sluice::engine
