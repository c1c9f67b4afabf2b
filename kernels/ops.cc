// Device-neutral half of every op: shape, dtype and device checks (never tensor
// contents), then dispatch on the device (dispatch.h) to that device's body.
#include "kernels/ops.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/cpu/gemm_bf16_cpu.h"
#include "kernels/cpu/gemm_int8_cpu.h"
#include "kernels/cpu/ops_cpu.h"
#include "kernels/device_memory.h"
#include "kernels/dispatch.h"
#include "kernels/op_bodies.h"
#include "kernels/op_checks.h"
#include "kernels/status_macros.h"

namespace sluice::kernels {

namespace {
std::atomic<MatmulPrecision> g_matmul_precision{MatmulPrecision::kF32};
}  // namespace

absl::Status SetMatmulPrecision(MatmulPrecision precision) {
  if (precision == MatmulPrecision::kBf16 && !cpu::Bf16ComputeAvailable()) {
    return absl::FailedPreconditionError(
        "bf16 matmul precision needs a CPU with AVX512-BF16 and a build that targets it");
  }
  g_matmul_precision.store(precision);
  return absl::OkStatus();
}

MatmulPrecision GetMatmulPrecision() { return g_matmul_precision.load(); }

void SetNumThreads(int n) {
  if (n > 0) omp_set_num_threads(n);
}
int NumThreads() { return omp_get_max_threads(); }

namespace {
thread_local LinearOptions t_default_linear_options;
}  // namespace

absl::string_view WeightQuantizationName(WeightQuantization q) {
  switch (q) {
    case WeightQuantization::kInt8:
      return "int8";
    case WeightQuantization::kInt4:
      return "int4";
    case WeightQuantization::kNone:
    default:
      return "none";
  }
}

absl::StatusOr<WeightQuantization> ParseWeightQuantization(absl::string_view name) {
  if (name == "none") return WeightQuantization::kNone;
  if (name == "int8") return WeightQuantization::kInt8;
  if (name == "int4") return WeightQuantization::kInt4;
  return absl::InvalidArgumentError(
      absl::StrCat("quantization \"", name, "\": must be none, int8 or int4"));
}

namespace {
constexpr std::pair<LinearPart, absl::string_view> kLinearPartNames[] = {
    {kLinearPartLmHead, "lm_head"},
    {kLinearPartDeltaNetInput, "delta_net_in"},
    {kLinearPartAttentionInput, "attention_in"},
};
}  // namespace

absl::StatusOr<uint32_t> ParseLinearParts(absl::string_view names) {
  uint32_t parts = 0;
  for (absl::string_view name : absl::StrSplit(names, ',', absl::SkipWhitespace())) {
    name = absl::StripAsciiWhitespace(name);
    bool known = false;
    for (const auto& [part, part_name] : kLinearPartNames) {
      if (name == part_name) {
        parts |= part;
        known = true;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "projection part \"", name, "\": must be one of lm_head, delta_net_in, attention_in"));
    }
  }
  return parts;
}

std::string LinearPartNames(uint32_t parts) {
  std::vector<absl::string_view> names;
  for (const auto& [part, part_name] : kLinearPartNames) {
    if (parts & part) names.push_back(part_name);
  }
  return absl::StrJoin(names, ",");
}

LinearOptions OptionsForPart(const LinearOptions& options, LinearPart part) {
  LinearOptions o = options;
  if (o.quantization == WeightQuantization::kInt4 && (o.int4_int8_parts & part)) {
    o.quantization = WeightQuantization::kInt8;
  }
  return o;
}

ScopedLinearOptions::ScopedLinearOptions(const LinearOptions& options)
    : previous_(t_default_linear_options) {
  t_default_linear_options = options;
}
ScopedLinearOptions::~ScopedLinearOptions() { t_default_linear_options = previous_; }
const LinearOptions& DefaultLinearOptions() { return t_default_linear_options; }

absl::StatusOr<std::unique_ptr<Linear>> Linear::Create(const Tensor& weight, Device device) {
  return Create(weight, device, t_default_linear_options);
}

absl::StatusOr<std::unique_ptr<Linear>> Linear::Create(const Tensor& weight, Device device,
                                                       const LinearOptions& options) {
  if (!weight.defined() || weight.rank() != 2) {
    return absl::InvalidArgumentError("Linear: weight must be a 2-D [out, in] tensor");
  }
  if (weight.dtype() == DType::kWeightRowRefs) {
    // A pre-quantized checkpoint's weight (prequantized_weight.h): packed as it is stored.
    if (options.quantization != WeightQuantization::kNone) {
      return absl::FailedPreconditionError(
          absl::StrCat("Linear: the weight is already quantized by its checkpoint; --quantization ",
                       WeightQuantizationName(options.quantization),
                       " cannot quantize it again (load without it)"));
    }
    if (weight.device() != Device::kCpu) {
      return absl::InvalidArgumentError("Linear: weight references live on the CPU");
    }
    return SLUICE_DEVICE_DISPATCH(device, CreatePrequantizedLinearBody<D>(weight));
  }
  if (weight.dtype() != DType::kF32 && weight.dtype() != DType::kBF16 &&
      weight.dtype() != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("Linear: weight must be f32, bf16 or f16, not ", DTypeName(weight.dtype())));
  }
  if (options.quantization == WeightQuantization::kNone) {
    return SLUICE_DEVICE_DISPATCH(device, CreateLinearBody<D>(weight));
  }
  if (options.quantization == WeightQuantization::kInt4 && options.group_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Linear: int4 group size ", options.group_size, " must be positive"));
  }
  return SLUICE_DEVICE_DISPATCH(device, CreateQuantizedLinearBody<D>(weight, options));
}

absl::Status Linear::Forward(const Tensor& x, Tensor* y) {
  if (x.dtype() != DType::kF32 || y->dtype() != DType::kF32 || x.rank() != 2 || y->rank() != 2 ||
      x.dim(1) != in_features_ || y->dim(1) != out_features_ || x.dim(0) != y->dim(0) ||
      x.device() != y->device() || x.device() != device_) {
    return absl::InvalidArgumentError(absl::StrCat("Linear[", in_features_, "->", out_features_,
                                                   "]@", DeviceName(device_), ": got x ",
                                                   x.DebugString(), ", y ", y->DebugString()));
  }
  if (x.dim(0) == 0) return absl::OkStatus();
  return Run(x, y);
}

absl::StatusOr<Tensor> ToF32(const Tensor& t, Device device) {
  if (!t.defined()) return absl::InvalidArgumentError("ToF32: undefined tensor");
  if (t.dtype() == DType::kI32 || t.dtype() == DType::kI64) {
    return absl::InvalidArgumentError("ToF32: integer tensor");
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor converted, SLUICE_DEVICE_DISPATCH(t.device(), ToF32Body<D>(t)));
  if (device == t.device()) return converted;
  // A load-time move between devices (weights): raw bytes, not a step transfer.
  SLUICE_ASSIGN_OR_RETURN(Tensor moved, Tensor::Empty(t.shape(), DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(
      CopyBytes(moved.raw(), device, converted.raw(), converted.device(), converted.bytes()));
  return moved;
}

absl::StatusOr<Tensor> ConcatRows(absl::Span<const Tensor> parts) {
  if (parts.empty()) return absl::InvalidArgumentError("ConcatRows: no parts");
  const int64_t cols = parts[0].rank() == 2 ? parts[0].dim(1) : -1;
  for (const Tensor& p : parts) {
    if (!p.defined() || p.rank() != 2 || p.dim(1) != cols) {
      return absl::InvalidArgumentError("ConcatRows: parts must be 2-D with equal columns");
    }
    if (p.device() != parts[0].device()) {
      return absl::InvalidArgumentError("ConcatRows: parts on different devices");
    }
  }
  size_t refs = 0;
  for (const Tensor& p : parts) refs += p.dtype() == DType::kWeightRowRefs ? 1 : 0;
  if (refs > 0) {
    // Row references to pre-quantized weights stack as bytes (they live on the CPU).
    if (refs != parts.size() || parts[0].device() != Device::kCpu) {
      return absl::InvalidArgumentError(
          "ConcatRows: a pre-quantized weight stacks only with other checkpoint weight references");
    }
    int64_t rows = 0;
    for (const Tensor& p : parts) rows += p.dim(0);
    SLUICE_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty({rows, cols}, DType::kWeightRowRefs));
    char* dst = static_cast<char*>(out.raw());
    for (const Tensor& p : parts) {
      if (p.bytes() > 0) std::memcpy(dst, p.raw(), p.bytes());
      dst += p.bytes();
    }
    return out;
  }
  return SLUICE_DEVICE_DISPATCH(parts[0].device(), ConcatRowsBody<D>(parts));
}

absl::Status EmbeddingLookup(const Tensor& table, const Tensor& ids, Tensor* out) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("EmbeddingLookup", {&table, &ids, out}));
  SLUICE_RETURN_IF_ERROR(Expect(table.rank() == 2 && ids.dtype() == DType::kI32 &&
                                    out->dtype() == DType::kF32 && out->rank() == 2 &&
                                    out->dim(0) == ids.numel() && out->dim(1) == table.dim(1),
                                "EmbeddingLookup", "shape mismatch"));
  SLUICE_RETURN_IF_ERROR(Expect(table.dtype() == DType::kF32 || table.dtype() == DType::kBF16,
                                "EmbeddingLookup", "table must be f32 or bf16"));
  return SLUICE_DEVICE_DISPATCH(out->device(), EmbeddingLookupBody<D>(table, ids, out));
}

absl::Status EmbeddingLookup(const Tensor& table, const Tensor& row_scales, const Tensor& ids,
                             Tensor* out) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("EmbeddingLookup", {&table, &row_scales, &ids, out}));
  SLUICE_RETURN_IF_ERROR(Expect(table.rank() == 2 && table.dtype() == DType::kI8 &&
                                    row_scales.dtype() == DType::kF32 &&
                                    row_scales.numel() == table.dim(0) &&
                                    ids.dtype() == DType::kI32 && out->dtype() == DType::kF32 &&
                                    out->rank() == 2 && out->dim(0) == ids.numel() &&
                                    out->dim(1) == table.dim(1),
                                "EmbeddingLookup", "int8 table: shape or dtype mismatch"));
  return SLUICE_DEVICE_DISPATCH(out->device(),
                                EmbeddingLookupInt8Body<D>(table, row_scales, ids, out));
}

absl::StatusOr<QuantizedRows> QuantizeRowsInt8(const Tensor& weight, Device device) {
  if (!weight.defined() || weight.rank() != 2 || weight.device() != Device::kCpu) {
    return absl::InvalidArgumentError("QuantizeRowsInt8: weight must be a 2-D CPU tensor");
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor wf, ToF32(weight, Device::kCpu));
  const int64_t rows = weight.dim(0), cols = weight.dim(1);
  QuantizedRows out;
  SLUICE_ASSIGN_OR_RETURN(Tensor values, Tensor::Empty({rows, cols}, DType::kI8, Device::kCpu));
  SLUICE_ASSIGN_OR_RETURN(Tensor scales, Tensor::Empty({rows}, DType::kF32, Device::kCpu));
  const float* src = wf.data<float>();
  int8_t* q = values.data<int8_t>();
  float* s = scales.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) s[r] = cpu::QuantizeRowInt8(src + r * cols, cols, q + r * cols);
  if (device == Device::kCpu) return QuantizedRows{values, scales};
  // A load-time move between devices (weights): raw bytes, not a step transfer.
  SLUICE_ASSIGN_OR_RETURN(out.values, Tensor::Empty({rows, cols}, DType::kI8, device));
  SLUICE_ASSIGN_OR_RETURN(out.scales, Tensor::Empty({rows}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(CopyBytes(out.values.raw(), device, values.raw(), Device::kCpu, values.bytes()));
  SLUICE_RETURN_IF_ERROR(CopyBytes(out.scales.raw(), device, scales.raw(), Device::kCpu, scales.bytes()));
  return out;
}

absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, float weight_offset,
                     Tensor* out) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("RmsNorm", {&x, &weight, out}));
  SLUICE_RETURN_IF_ERROR(Expect(x.dtype() == DType::kF32 && weight.dtype() == DType::kF32 &&
                                    out->shape() == x.shape() && weight.numel() == x.dim(-1),
                                "RmsNorm", "shape or dtype mismatch"));
  return SLUICE_DEVICE_DISPATCH(out->device(),
                                RmsNormBody<D>(x, weight, eps, weight_offset, out));
}

absl::Status ApplyRotaryEmbedding(const Tensor& positions, const Tensor& cos_sin,
                                  int64_t rotary_dim, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("ApplyRotaryEmbedding", {&positions, &cos_sin, x}));
  SLUICE_RETURN_IF_ERROR(Expect(x->rank() == 3 && positions.numel() == x->dim(0) &&
                                    rotary_dim % 2 == 0 && rotary_dim <= x->dim(2) &&
                                    cos_sin.rank() == 2 && cos_sin.dim(1) == rotary_dim,
                                "ApplyRotaryEmbedding", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(x->device(),
                                ApplyRotaryEmbeddingBody<D>(positions, cos_sin, rotary_dim, x));
}

absl::Status SiluMul(const Tensor& gate_up, Tensor* out) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("SiluMul", {&gate_up, out}));
  SLUICE_RETURN_IF_ERROR(Expect(gate_up.rank() == 2 && out->rank() == 2 &&
                                    gate_up.dim(0) == out->dim(0) &&
                                    gate_up.dim(1) == 2 * out->dim(1),
                                "SiluMul", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(out->device(), SiluMulBody<D>(gate_up, out));
}

absl::Status CopyColumns(const Tensor& src, int64_t col_start, Tensor* dst) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("CopyColumns", {&src, dst}));
  SLUICE_RETURN_IF_ERROR(Expect(src.rank() == 2 && dst->rank() == 2 && src.dim(0) == dst->dim(0) &&
                                    src.dtype() == DType::kF32 && dst->dtype() == DType::kF32 &&
                                    col_start >= 0 && col_start + dst->dim(1) <= src.dim(1),
                                "CopyColumns", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(dst->device(), CopyColumnsBody<D>(src, col_start, dst));
}

absl::Status SigmoidGateInPlace(const Tensor& gate, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("SigmoidGateInPlace", {&gate, x}));
  SLUICE_RETURN_IF_ERROR(Expect(gate.rank() == 2 && x->rank() == 2 && gate.dim(0) == x->dim(0) &&
                                    gate.dim(1) > 0 && x->dim(1) % gate.dim(1) == 0,
                                "SigmoidGateInPlace", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(x->device(), SigmoidGateInPlaceBody<D>(gate, x));
}

absl::Status ClampInPlace(float limit, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("ClampInPlace", {x}));
  SLUICE_RETURN_IF_ERROR(Expect(x->dtype() == DType::kF32 && limit >= 0, "ClampInPlace", "bad arguments"));
  return SLUICE_DEVICE_DISPATCH(x->device(), ClampInPlaceBody<D>(limit, x));
}

namespace {

absl::Status CheckRouteTopK(const Tensor& logits, int64_t k, Tensor* experts, Tensor* weights) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("RouteTopK", {&logits, experts, weights}));
  return Expect(logits.rank() == 2 && k >= 1 && k <= logits.dim(1) &&
                    experts->dtype() == DType::kI32 && weights->dtype() == DType::kF32 &&
                    experts->numel() == logits.dim(0) * k && weights->numel() == logits.dim(0) * k,
                "RouteTopK", "shape mismatch");
}

// Host metadata for an op on a device other than the CPU: an i32 tensor on `device`
// (counted as a host-to-device transfer). Only the deprecated span forms use it.
absl::StatusOr<Tensor> UploadI32(absl::string_view op, absl::Span<const int32_t> values,
                                 std::vector<int64_t> shape, Device device) {
  auto t = Tensor::Empty(std::move(shape), DType::kI32, device);
  absl::Status s = t.ok() ? CopyFromHost(values.data(), &*t) : t.status();
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat(op, " on ", DeviceName(device),
                                                ": cannot upload its metadata: ", s.message()));
  }
  return t;
}

}  // namespace

absl::Status RouteTopK(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts,
                       Tensor* weights, const Tensor& row_k) {
  SLUICE_RETURN_IF_ERROR(CheckRouteTopK(logits, k, experts, weights));
  SLUICE_RETURN_IF_ERROR(CheckOptional("RouteTopK", "row_k", row_k, logits.device(), DType::kI32,
                                       logits.dim(0)));
  return SLUICE_DEVICE_DISPATCH(logits.device(), RouteTopKBody<D>(logits, k, renormalize, experts,
                                                                  weights, row_k));
}

absl::Status RouteTopK(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts,
                       Tensor* weights, absl::Span<const int32_t> row_k) {
  SLUICE_RETURN_IF_ERROR(CheckRouteTopK(logits, k, experts, weights));
  SLUICE_RETURN_IF_ERROR(Expect(row_k.empty() || static_cast<int64_t>(row_k.size()) == logits.dim(0),
                                "RouteTopK", "row_k must hold one k per row"));
  if (logits.device() == Device::kCpu) {
    // The CPU body reads host memory as is: no tensor to build.
    return cpu::RouteTopKChecked(logits, k, renormalize, experts, weights, row_k);
  }
  Tensor row_k_tensor;
  if (!row_k.empty()) {
    SLUICE_ASSIGN_OR_RETURN(row_k_tensor, UploadI32("RouteTopK", row_k, {logits.dim(0)}, logits.device()));
  }
  return RouteTopK(logits, k, renormalize, experts, weights, row_k_tensor);
}

absl::Status ScaledScatterAdd(const Tensor& y, const Tensor& rows, const Tensor& scale,
                              Tensor* out) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("ScaledScatterAdd", {&y, &rows, &scale, out}));
  SLUICE_RETURN_IF_ERROR(Expect(y.rank() == 2 && out->rank() == 2 && y.dim(1) == out->dim(1) &&
                                    rows.numel() == y.dim(0) && scale.numel() == y.dim(0),
                                "ScaledScatterAdd", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(out->device(), ScaledScatterAddBody<D>(y, rows, scale, out));
}

absl::Status DeltaRuleGates(const Tensor& a, const Tensor& b, const Tensor& a_log,
                            const Tensor& dt_bias, Tensor* g, Tensor* beta) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("DeltaRuleGates", {&a, &b, &a_log, &dt_bias, g, beta}));
  SLUICE_RETURN_IF_ERROR(Expect(a.rank() == 2 && a.shape() == b.shape() && g->shape() == a.shape() &&
                                    beta->shape() == a.shape() && a_log.numel() == a.dim(1) &&
                                    dt_bias.numel() == a.dim(1),
                                "DeltaRuleGates", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(g->device(), DeltaRuleGatesBody<D>(a, b, a_log, dt_bias, g, beta));
}

absl::Status SigmoidGroupMean(const Tensor& x, Tensor* out) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("SigmoidGroupMean", {&x, out}));
  SLUICE_RETURN_IF_ERROR(Expect(x.rank() == 2 && out->rank() == 2 && x.dim(0) == out->dim(0) &&
                                    x.dtype() == DType::kF32 && out->dtype() == DType::kF32 &&
                                    out->dim(1) > 0 && x.dim(1) % out->dim(1) == 0,
                                "SigmoidGroupMean", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(out->device(), SigmoidGroupMeanBody<D>(x, out));
}

absl::Status AddBiasInPlace(const Tensor& bias, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("AddBiasInPlace", {&bias, x}));
  SLUICE_RETURN_IF_ERROR(Expect(x->rank() == 2 && bias.numel() == x->dim(1) &&
                                    x->dtype() == DType::kF32 && bias.dtype() == DType::kF32,
                                "AddBiasInPlace", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(x->device(), AddBiasInPlaceBody<D>(bias, x));
}

absl::Status AddInPlace(const Tensor& y, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("AddInPlace", {&y, x}));
  SLUICE_RETURN_IF_ERROR(Expect(x->numel() == y.numel(), "AddInPlace", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(x->device(), AddInPlaceBody<D>(y, x));
}

absl::Status FillConstant(float value, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(CheckDevicesF32("FillConstant", {x}));
  return SLUICE_DEVICE_DISPATCH(x->device(), FillConstantBody<D>(value, x));
}

absl::Status HeadSkipMask(const Tensor& head_gate_mean, const Tensor& row_floor, Tensor* mask) {
  SLUICE_RETURN_IF_ERROR(CheckDevicesF32("HeadSkipMask", {&head_gate_mean, &row_floor}));
  SLUICE_RETURN_IF_ERROR(CheckDevices("HeadSkipMask", {&head_gate_mean, &row_floor, mask}));
  SLUICE_RETURN_IF_ERROR(Expect(head_gate_mean.rank() == 2 && row_floor.numel() == head_gate_mean.dim(0) &&
                                    mask->dtype() == DType::kI32 &&
                                    mask->shape() == head_gate_mean.shape(),
                                "HeadSkipMask", "mean [T, H] f32, floor [T] f32, mask [T, H] i32"));
  return SLUICE_DEVICE_DISPATCH(mask->device(), HeadSkipMaskBody<D>(head_gate_mean, row_floor, mask));
}

absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor* out) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("GatherRows", {&x, &rows, out}));
  SLUICE_RETURN_IF_ERROR(Expect(x.rank() == 2 && out->rank() == 2 &&
                                    out->dim(0) == rows.numel() && out->dim(1) == x.dim(1),
                                "GatherRows", "shape mismatch"));
  return SLUICE_DEVICE_DISPATCH(out->device(), GatherRowsBody<D>(x, rows, out));
}

namespace {

// The cache's dtype (one for K and V: f32, bf16 or f8_e4m3) and its scales: f32
// [num_blocks, block_size, H_kv] on the cache's device for f8_e4m3, absent otherwise.
absl::Status CheckKvCacheDtype(absl::string_view op, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor* k_scale, const Tensor* v_scale) {
  const DType dtype = k_cache.dtype();
  SLUICE_RETURN_IF_ERROR(Expect(v_cache.dtype() == dtype &&
                                    (dtype == DType::kF32 || dtype == DType::kBF16 ||
                                     dtype == DType::kF8E4M3),
                                op, "the K and V caches must share one dtype: f32, bf16 or f8_e4m3"));
  const bool has_k = k_scale != nullptr && k_scale->defined();
  const bool has_v = v_scale != nullptr && v_scale->defined();
  if (dtype != DType::kF8E4M3) {
    return Expect(!has_k && !has_v, op, "only an f8_e4m3 cache takes scales");
  }
  SLUICE_RETURN_IF_ERROR(Expect(has_k && has_v, op, "an f8_e4m3 cache needs k_scale and v_scale"));
  SLUICE_RETURN_IF_ERROR(CheckDevices(op, {&k_cache, k_scale, v_scale}));
  const std::vector<int64_t> want = {k_cache.dim(0), k_cache.dim(1), k_cache.dim(2)};
  return Expect(k_scale->dtype() == DType::kF32 && v_scale->dtype() == DType::kF32 &&
                    k_scale->shape() == want && v_scale->shape() == want,
                op, "k_scale and v_scale must be f32 [num_blocks, block_size, H_kv]");
}

}  // namespace

absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor* k_cache, Tensor* v_cache, Tensor* k_scale, Tensor* v_scale) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("WriteKvCache", {&k, &v, &slot_mapping, k_cache, v_cache}));
  SLUICE_RETURN_IF_ERROR(Expect(k.rank() == 3 && k.shape() == v.shape() &&
                                    k_cache->rank() == 4 && k_cache->shape() == v_cache->shape() &&
                                    k_cache->dim(2) == k.dim(1) && k_cache->dim(3) == k.dim(2) &&
                                    slot_mapping.numel() == k.dim(0),
                                "WriteKvCache", "shape mismatch"));
  SLUICE_RETURN_IF_ERROR(Expect(k.dtype() == DType::kF32 && v.dtype() == DType::kF32 &&
                                    slot_mapping.dtype() == DType::kI32,
                                "WriteKvCache", "k and v must be f32, slot_mapping i32"));
  SLUICE_RETURN_IF_ERROR(CheckKvCacheDtype("WriteKvCache", *k_cache, *v_cache, k_scale, v_scale));
  return SLUICE_DEVICE_DISPATCH(
      k_cache->device(),
      WriteKvCacheBody<D>(k, v, slot_mapping, k_cache, v_cache,
                          k_cache->dtype() == DType::kF8E4M3 ? k_scale : nullptr,
                          k_cache->dtype() == DType::kF8E4M3 ? v_scale : nullptr));
}

namespace {

absl::Status CheckPagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                 Tensor* out, const Tensor& k_scale, const Tensor& v_scale) {
  SLUICE_RETURN_IF_ERROR(CheckDevices("PagedAttention", {&q, &k_cache, &v_cache, out}));
  SLUICE_RETURN_IF_ERROR(Expect(q.rank() == 3 && out->shape() == q.shape() && k_cache.rank() == 4 &&
                                    k_cache.shape() == v_cache.shape() && k_cache.dim(3) == q.dim(2) &&
                                    k_cache.dim(2) > 0 && q.dim(1) % k_cache.dim(2) == 0,
                                "PagedAttention", "shape mismatch"));
  return CheckKvCacheDtype("PagedAttention", k_cache, v_cache, &k_scale, &v_scale);
}

}  // namespace

absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const AttentionBatch& batch, float scale, Tensor* out,
                            const Tensor& head_skip, const Tensor& k_scale, const Tensor& v_scale) {
  constexpr absl::string_view kOp = "PagedAttention";
  SLUICE_RETURN_IF_ERROR(CheckPagedAttention(q, k_cache, v_cache, out, k_scale, v_scale));
  SLUICE_RETURN_IF_ERROR(
      CheckDevices(kOp, {&q, &batch.query_start, &batch.context_len, &batch.block_tables}));
  const int64_t sequences = batch.context_len.numel();
  SLUICE_RETURN_IF_ERROR(Expect(
      batch.query_start.dtype() == DType::kI32 && batch.context_len.dtype() == DType::kI32 &&
          batch.block_tables.dtype() == DType::kI32 && batch.context_len.rank() == 1 &&
          batch.query_start.rank() == 1 && batch.query_start.numel() == sequences + 1 &&
          batch.block_tables.rank() == 2 && batch.block_tables.dim(0) == sequences,
      kOp, "batch must be i32 query_start [S + 1], context_len [S], block_tables [S, max_blocks]"));
  SLUICE_RETURN_IF_ERROR(
      CheckOptional(kOp, "head_skip", head_skip, q.device(), DType::kI32, q.dim(0) * q.dim(1)));
  return SLUICE_DEVICE_DISPATCH(
      out->device(),
      PagedAttentionBody<D>(q, k_cache, v_cache, batch, scale, out, head_skip, k_scale, v_scale));
}

absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            absl::Span<const AttentionSequence> sequences, float scale,
                            Tensor* out, absl::Span<const uint8_t> head_skip,
                            const Tensor& k_scale, const Tensor& v_scale) {
  SLUICE_RETURN_IF_ERROR(CheckPagedAttention(q, k_cache, v_cache, out, k_scale, v_scale));
  SLUICE_RETURN_IF_ERROR(Expect(head_skip.empty() ||
                                    static_cast<int64_t>(head_skip.size()) == q.dim(0) * q.dim(1),
                                "PagedAttention", "head_skip must hold one flag per (token, head)"));
  if (q.device() == Device::kCpu) {
    // The CPU body reads host metadata as is: no tensors to build.
    return cpu::PagedAttentionChecked(q, k_cache, v_cache, sequences, scale, out,
                                      head_skip.empty() ? nullptr : head_skip.data(), k_scale,
                                      v_scale);
  }
  // Another device: pack the host metadata into an AttentionBatch there.
  const int64_t block_size = k_cache.dim(1);
  const int64_t count = static_cast<int64_t>(sequences.size());
  int64_t max_blocks = 1;
  for (const AttentionSequence& s : sequences) {
    if (s.query_start < 0 || s.query_len < 0 || s.query_len > s.context_len ||
        (s.context_len > 0 && s.block_table == nullptr)) {
      return absl::InvalidArgumentError("PagedAttention: bad sequence metadata");
    }
    max_blocks = std::max<int64_t>(max_blocks, (s.context_len + block_size - 1) / block_size);
  }
  std::vector<int32_t> query_start(count + 1, 0), context_len(count);
  std::vector<int32_t> tables(count * max_blocks, -1);
  for (int64_t i = 0; i < count; ++i) {
    const AttentionSequence& s = sequences[i];
    if (i > 0 && s.query_start != query_start[i]) {
      return absl::InvalidArgumentError(
          "PagedAttention: off the CPU the sequences' query rows must be packed back to back");
    }
    query_start[i] = s.query_start;
    query_start[i + 1] = s.query_start + s.query_len;
    context_len[i] = s.context_len;
    const int64_t blocks = (s.context_len + block_size - 1) / block_size;
    std::copy(s.block_table, s.block_table + blocks, tables.begin() + i * max_blocks);
  }
  AttentionBatch batch;
  SLUICE_ASSIGN_OR_RETURN(batch.query_start, UploadI32("PagedAttention", query_start, {count + 1}, q.device()));
  SLUICE_ASSIGN_OR_RETURN(batch.context_len, UploadI32("PagedAttention", context_len, {count}, q.device()));
  SLUICE_ASSIGN_OR_RETURN(batch.block_tables, UploadI32("PagedAttention", tables, {count, max_blocks}, q.device()));
  Tensor skip;
  if (!head_skip.empty()) {
    std::vector<int32_t> wide(head_skip.begin(), head_skip.end());
    SLUICE_ASSIGN_OR_RETURN(skip, UploadI32("PagedAttention", wide, {q.dim(0), q.dim(1)}, q.device()));
  }
  return PagedAttention(q, k_cache, v_cache, batch, scale, out, skip, k_scale, v_scale);
}

}  // namespace sluice::kernels
