// Device-neutral half of every op: argument checks, then dispatch on the device.
#include "kernels/ops.h"

#include <omp.h>

#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/gemm_bf16_cpu.h"
#include "kernels/cpu/ops_cpu.h"
#include "kernels/device_memory.h"
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

absl::StatusOr<std::unique_ptr<Linear>> Linear::Create(const Tensor& weight, Device device) {
  if (!weight.defined() || weight.rank() != 2) {
    return absl::InvalidArgumentError("Linear: weight must be a 2-D [out, in] tensor");
  }
  if (device != Device::kCpu) {
    return absl::UnimplementedError(absl::StrCat("Linear has no ", DeviceName(device), " kernel yet"));
  }
  if (weight.device() != Device::kCpu) {
    return absl::UnimplementedError("Linear: packing a weight from a GPU tensor to the CPU");
  }
  if (weight.dtype() == DType::kI32 || weight.dtype() == DType::kI64) return absl::InvalidArgumentError("Linear: integer weight");
  return cpu::CreateLinear(weight);
}

absl::Status Linear::Forward(const Tensor& x, Tensor* y) {
  if (x.dtype() != DType::kF32 || y->dtype() != DType::kF32 || x.rank() != 2 || y->rank() != 2 ||
      x.dim(1) != in_features_ || y->dim(1) != out_features_ || x.dim(0) != y->dim(0) ||
      x.device() != y->device()) {
    return absl::InvalidArgumentError(absl::StrCat("Linear[", in_features_, "->", out_features_,
                                                   "]: got x ", x.DebugString(), ", y ",
                                                   y->DebugString()));
  }
  if (x.dim(0) == 0) return absl::OkStatus();
  return Run(x, y);
}

absl::StatusOr<Tensor> ToF32(const Tensor& t, Device device) {
  if (t.device() != Device::kCpu || device != Device::kCpu) {
    return absl::UnimplementedError("ToF32 off the CPU");
  }
  auto out = Tensor::Empty(t.shape(), DType::kF32, device);
  if (!out.ok()) return out.status();
  float* dst = out->data<float>();
  int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::kF32:
      std::memcpy(dst, t.raw(), n * 4);
      break;
    case DType::kBF16: {
      const uint16_t* src = t.data<uint16_t>();
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(src[i]);
      break;
    }
    case DType::kF16: {
      const uint16_t* src = t.data<uint16_t>();
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(src[i]);
      break;
    }
    case DType::kI32:
    case DType::kI64:
      return absl::InvalidArgumentError("ToF32: integer tensor");
  }
  return out;
}

absl::StatusOr<Tensor> ConcatRows(absl::Span<const Tensor> parts) {
  if (parts.empty()) return absl::InvalidArgumentError("ConcatRows: no parts");
  int64_t cols = parts[0].dim(1);
  int64_t rows = 0;
  bool all_bf16 = true;
  for (const Tensor& p : parts) {
    if (p.rank() != 2 || p.dim(1) != cols) {
      return absl::InvalidArgumentError("ConcatRows: parts must be 2-D with equal columns");
    }
    if (p.device() != Device::kCpu) return absl::UnimplementedError("ConcatRows off the CPU");
    rows += p.dim(0);
    all_bf16 = all_bf16 && p.dtype() == DType::kBF16;
  }
  DType dtype = all_bf16 ? DType::kBF16 : DType::kF32;
  auto out = Tensor::Empty({rows, cols}, dtype, Device::kCpu);
  if (!out.ok()) return out.status();
  char* dst = static_cast<char*>(out->raw());
  for (const Tensor& p : parts) {
    if (p.dtype() == dtype) {
      std::memcpy(dst, p.raw(), p.bytes());
    } else {
      auto f = ToF32(p, Device::kCpu);
      if (!f.ok()) return f.status();
      std::memcpy(dst, f->raw(), f->bytes());
    }
    dst += p.numel() * DTypeSize(dtype);
  }
  return out;
}

absl::Status EmbeddingLookup(const Tensor& table, const Tensor& ids, Tensor* out) {
  SLUICE_RETURN_IF_ERROR(SameDevice("EmbeddingLookup", {&table, &ids, out}));
  SLUICE_RETURN_IF_ERROR(Expect(table.rank() == 2 && ids.dtype() == DType::kI32 &&
                                    out->dtype() == DType::kF32 && out->rank() == 2 &&
                                    out->dim(0) == ids.numel() && out->dim(1) == table.dim(1),
                                "EmbeddingLookup", "shape mismatch"));
  SLUICE_RETURN_IF_ERROR(Expect(table.dtype() == DType::kF32 || table.dtype() == DType::kBF16,
                                "EmbeddingLookup", "table must be f32 or bf16"));
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    if (id[i] < 0 || id[i] >= table.dim(0)) {
      return absl::OutOfRangeError(absl::StrCat("EmbeddingLookup: token id ", id[i],
                                                " outside [0, ", table.dim(0), ")"));
    }
  }
  cpu::EmbeddingLookup(table, ids, out);
  return absl::OkStatus();
}

absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, float weight_offset,
                     Tensor* out) {
  SLUICE_RETURN_IF_ERROR(SameDevice("RmsNorm", {&x, &weight, out}));
  SLUICE_RETURN_IF_ERROR(Expect(x.dtype() == DType::kF32 && weight.dtype() == DType::kF32 &&
                                    out->shape() == x.shape() && weight.numel() == x.dim(-1),
                                "RmsNorm", "shape or dtype mismatch"));
  cpu::RmsNorm(x, weight, eps, weight_offset, out);
  return absl::OkStatus();
}

absl::Status ApplyRotaryEmbedding(const Tensor& positions, const Tensor& cos_sin,
                                  int64_t rotary_dim, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(SameDevice("ApplyRotaryEmbedding", {&positions, &cos_sin, x}));
  SLUICE_RETURN_IF_ERROR(Expect(x->rank() == 3 && positions.numel() == x->dim(0) &&
                                    rotary_dim % 2 == 0 && rotary_dim <= x->dim(2) &&
                                    cos_sin.rank() == 2 && cos_sin.dim(1) == rotary_dim,
                                "ApplyRotaryEmbedding", "shape mismatch"));
  const int32_t* pos = positions.data<int32_t>();
  for (int64_t i = 0; i < positions.numel(); ++i) {
    if (pos[i] < 0 || pos[i] >= cos_sin.dim(0)) {
      return absl::OutOfRangeError(absl::StrCat("ApplyRotaryEmbedding: position ", pos[i],
                                                " outside the table of ", cos_sin.dim(0)));
    }
  }
  cpu::ApplyRotaryEmbedding(positions, cos_sin, rotary_dim, x);
  return absl::OkStatus();
}

absl::Status SiluMul(const Tensor& gate_up, Tensor* out) {
  SLUICE_RETURN_IF_ERROR(SameDevice("SiluMul", {&gate_up, out}));
  SLUICE_RETURN_IF_ERROR(Expect(gate_up.rank() == 2 && out->rank() == 2 &&
                                    gate_up.dim(0) == out->dim(0) &&
                                    gate_up.dim(1) == 2 * out->dim(1),
                                "SiluMul", "shape mismatch"));
  cpu::SiluMul(gate_up, out);
  return absl::OkStatus();
}

absl::Status CopyColumns(const Tensor& src, int64_t col_start, Tensor* dst) {
  SLUICE_RETURN_IF_ERROR(SameDevice("CopyColumns", {&src, dst}));
  SLUICE_RETURN_IF_ERROR(Expect(src.rank() == 2 && dst->rank() == 2 && src.dim(0) == dst->dim(0) &&
                                    src.dtype() == DType::kF32 && dst->dtype() == DType::kF32 &&
                                    col_start >= 0 && col_start + dst->dim(1) <= src.dim(1),
                                "CopyColumns", "shape mismatch"));
  cpu::CopyColumns(src, col_start, dst);
  return absl::OkStatus();
}

absl::Status SigmoidGateInPlace(const Tensor& gate, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(SameDevice("SigmoidGateInPlace", {&gate, x}));
  SLUICE_RETURN_IF_ERROR(Expect(gate.rank() == 2 && x->rank() == 2 && gate.dim(0) == x->dim(0) &&
                                    gate.dim(1) > 0 && x->dim(1) % gate.dim(1) == 0,
                                "SigmoidGateInPlace", "shape mismatch"));
  cpu::SigmoidGateInPlace(gate, x);
  return absl::OkStatus();
}

absl::Status ClampInPlace(float limit, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(SameDevice("ClampInPlace", {x}));
  SLUICE_RETURN_IF_ERROR(Expect(x->dtype() == DType::kF32 && limit >= 0, "ClampInPlace", "bad arguments"));
  cpu::ClampInPlace(limit, x);
  return absl::OkStatus();
}

absl::Status RouteTopK(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts,
                       Tensor* weights, absl::Span<const int32_t> row_k) {
  SLUICE_RETURN_IF_ERROR(SameDevice("RouteTopK", {&logits, experts, weights}));
  SLUICE_RETURN_IF_ERROR(Expect(logits.rank() == 2 && k >= 1 && k <= logits.dim(1) &&
                                    experts->dtype() == DType::kI32 && weights->dtype() == DType::kF32 &&
                                    experts->numel() == logits.dim(0) * k &&
                                    weights->numel() == logits.dim(0) * k,
                                "RouteTopK", "shape mismatch"));
  SLUICE_RETURN_IF_ERROR(Expect(row_k.empty() || static_cast<int64_t>(row_k.size()) == logits.dim(0),
                                "RouteTopK", "row_k must hold one k per row"));
  for (int32_t rk : row_k) {
    if (rk < 1 || rk > k) return absl::InvalidArgumentError("RouteTopK: a row's k is outside [1, k]");
  }
  cpu::RouteTopK(logits, k, renormalize, experts, weights, row_k);
  return absl::OkStatus();
}

absl::Status ScaledScatterAdd(const Tensor& y, const Tensor& rows, const Tensor& scale,
                              Tensor* out) {
  SLUICE_RETURN_IF_ERROR(SameDevice("ScaledScatterAdd", {&y, &rows, &scale, out}));
  SLUICE_RETURN_IF_ERROR(Expect(y.rank() == 2 && out->rank() == 2 && y.dim(1) == out->dim(1) &&
                                    rows.numel() == y.dim(0) && scale.numel() == y.dim(0),
                                "ScaledScatterAdd", "shape mismatch"));
  const int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    if (r[i] < 0 || r[i] >= out->dim(0)) return absl::OutOfRangeError("ScaledScatterAdd: row out of range");
  }
  cpu::ScaledScatterAdd(y, rows, scale, out);
  return absl::OkStatus();
}

absl::Status DeltaRuleGates(const Tensor& a, const Tensor& b, const Tensor& a_log,
                            const Tensor& dt_bias, Tensor* g, Tensor* beta) {
  SLUICE_RETURN_IF_ERROR(SameDevice("DeltaRuleGates", {&a, &b, &a_log, &dt_bias, g, beta}));
  SLUICE_RETURN_IF_ERROR(Expect(a.rank() == 2 && a.shape() == b.shape() && g->shape() == a.shape() &&
                                    beta->shape() == a.shape() && a_log.numel() == a.dim(1) &&
                                    dt_bias.numel() == a.dim(1),
                                "DeltaRuleGates", "shape mismatch"));
  cpu::DeltaRuleGates(a, b, a_log, dt_bias, g, beta);
  return absl::OkStatus();
}

absl::Status SigmoidGroupMean(const Tensor& x, Tensor* out) {
  SLUICE_RETURN_IF_ERROR(SameDevice("SigmoidGroupMean", {&x, out}));
  SLUICE_RETURN_IF_ERROR(Expect(x.rank() == 2 && out->rank() == 2 && x.dim(0) == out->dim(0) &&
                                    x.dtype() == DType::kF32 && out->dtype() == DType::kF32 &&
                                    out->dim(1) > 0 && x.dim(1) % out->dim(1) == 0,
                                "SigmoidGroupMean", "shape mismatch"));
  cpu::SigmoidGroupMean(x, out);
  return absl::OkStatus();
}

absl::Status AddBiasInPlace(const Tensor& bias, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(SameDevice("AddBiasInPlace", {&bias, x}));
  SLUICE_RETURN_IF_ERROR(Expect(x->rank() == 2 && bias.numel() == x->dim(1) &&
                                    x->dtype() == DType::kF32 && bias.dtype() == DType::kF32,
                                "AddBiasInPlace", "shape mismatch"));
  cpu::AddBiasInPlace(bias, x);
  return absl::OkStatus();
}

absl::Status AddInPlace(const Tensor& y, Tensor* x) {
  SLUICE_RETURN_IF_ERROR(SameDevice("AddInPlace", {&y, x}));
  SLUICE_RETURN_IF_ERROR(Expect(x->numel() == y.numel(), "AddInPlace", "shape mismatch"));
  cpu::AddInPlace(y, x);
  return absl::OkStatus();
}

absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor* out) {
  SLUICE_RETURN_IF_ERROR(SameDevice("GatherRows", {&x, &rows, out}));
  SLUICE_RETURN_IF_ERROR(Expect(x.rank() == 2 && out->rank() == 2 &&
                                    out->dim(0) == rows.numel() && out->dim(1) == x.dim(1),
                                "GatherRows", "shape mismatch"));
  const int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    if (r[i] < 0 || r[i] >= x.dim(0)) return absl::OutOfRangeError("GatherRows: row out of range");
  }
  cpu::GatherRows(x, rows, out);
  return absl::OkStatus();
}

absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor* k_cache, Tensor* v_cache) {
  SLUICE_RETURN_IF_ERROR(SameDevice("WriteKvCache", {&k, &v, &slot_mapping, k_cache, v_cache}));
  SLUICE_RETURN_IF_ERROR(Expect(k.rank() == 3 && k.shape() == v.shape() &&
                                    k_cache->rank() == 4 && k_cache->shape() == v_cache->shape() &&
                                    k_cache->dim(2) == k.dim(1) && k_cache->dim(3) == k.dim(2) &&
                                    slot_mapping.numel() == k.dim(0),
                                "WriteKvCache", "shape mismatch"));
  int64_t slots = k_cache->dim(0) * k_cache->dim(1);
  const int32_t* s = slot_mapping.data<int32_t>();
  for (int64_t i = 0; i < slot_mapping.numel(); ++i) {
    if (s[i] < 0 || s[i] >= slots) return absl::OutOfRangeError("WriteKvCache: slot out of range");
  }
  cpu::WriteKvCache(k, v, slot_mapping, k_cache, v_cache);
  return absl::OkStatus();
}

absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            absl::Span<const AttentionSequence> sequences, float scale,
                            Tensor* out, absl::Span<const uint8_t> head_skip) {
  SLUICE_RETURN_IF_ERROR(SameDevice("PagedAttention", {&q, &k_cache, &v_cache, out}));
  SLUICE_RETURN_IF_ERROR(Expect(q.rank() == 3 && out->shape() == q.shape() &&
                                    k_cache.rank() == 4 && k_cache.shape() == v_cache.shape() &&
                                    k_cache.dim(3) == q.dim(2) && k_cache.dim(2) > 0 &&
                                    q.dim(1) % k_cache.dim(2) == 0,
                                "PagedAttention", "shape mismatch"));
  SLUICE_RETURN_IF_ERROR(Expect(head_skip.empty() ||
                                    static_cast<int64_t>(head_skip.size()) == q.dim(0) * q.dim(1),
                                "PagedAttention", "head_skip must hold one flag per (token, head)"));
  const int64_t num_blocks = k_cache.dim(0);
  const int64_t block_size = k_cache.dim(1);
  for (const AttentionSequence& s : sequences) {
    if (s.query_start < 0 || s.query_len < 0 || s.query_start + s.query_len > q.dim(0) ||
        s.query_len > s.context_len || (s.context_len > 0 && s.block_table == nullptr)) {
      return absl::InvalidArgumentError("PagedAttention: bad sequence metadata");
    }
    for (int64_t b = 0; b < (s.context_len + block_size - 1) / block_size; ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= num_blocks) {
        return absl::OutOfRangeError("PagedAttention: block id out of range");
      }
    }
  }
  cpu::PagedAttention(q, k_cache, v_cache, sequences, scale, out, head_skip);
  return absl::OkStatus();
}

}  // namespace sluice::kernels
