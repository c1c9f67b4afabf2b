// The CPU Linear over pre-quantized checkpoint weights (kernels/prequantized_weight.h):
// resolves the row references, cuts the rows into runs that one packed weight can hold,
// and packs each run from the checkpoint's tensors:
//  - FP8 rows (any weights, same block width): one PackedFp8Weight (cpu/gemm_fp8_cpu.h);
//  - GPTQ rows whose modules share the group assignment (same g_idx, or none with the
//    same group size): one PackedGptqWeight (cpu/gemm_gptq_cpu.h);
//  - plain rows (a dense weight stacked with quantized ones): the plain CPU Linear of
//    those rows, so they get exactly the numerics they would have alone.
// A run writes its columns of y directly (ldy = N); a plain run goes through a scratch.
// Each run's GEMM keeps its rows batch-invariant, so the whole Linear does.
#include <cstring>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/gemm_fp8_cpu.h"
#include "kernels/cpu/gemm_gptq_cpu.h"
#include "kernels/cpu/ops_cpu.h"
#include "kernels/op_bodies.h"
#include "kernels/prequantized_weight.h"
#include "kernels/status_macros.h"

namespace sluice::kernels::cpu {
namespace {

using Format = PrequantizedWeight::Format;

class PrequantizedLinear final : public Linear {
 public:
  struct Part {
    int64_t row0 = 0, rows = 0;
    Format format = Format::kDense;
    PackedFp8Weight fp8;
    PackedGptqWeight gptq;
    std::unique_ptr<Linear> dense;
  };

  PrequantizedLinear(int64_t in, int64_t out, DType dtype, std::vector<Part> parts)
      : Linear(in, out, dtype), parts_(std::move(parts)) {}

  absl::Status Run(const Tensor& x, Tensor* y) override {
    const int64_t m = x.dim(0);
    for (Part& part : parts_) {
      float* yp = y->data<float>() + part.row0;
      switch (part.format) {
        case Format::kFp8Block:
          GemmF32Fp8(x.data<float>(), m, part.fp8, yp, out_features_);
          break;
        case Format::kGptqInt4:
          GemmF32Gptq(x.data<float>(), m, part.gptq, yp, out_features_);
          break;
        case Format::kDense: {
          if (parts_.size() == 1) return part.dense->Forward(x, y);
          SLUICE_ASSIGN_OR_RETURN(Tensor scratch, Tensor::Empty({m, part.rows}, DType::kF32));
          SLUICE_RETURN_IF_ERROR(part.dense->Forward(x, &scratch));
          for (int64_t r = 0; r < m; ++r) {
            std::memcpy(yp + r * out_features_, scratch.data<float>() + r * part.rows,
                        part.rows * sizeof(float));
          }
          break;
        }
      }
    }
    return absl::OkStatus();
  }

  size_t weight_bytes() const override {
    size_t bytes = 0;
    for (const Part& part : parts_) {
      bytes += part.format == Format::kFp8Block   ? part.fp8.bytes()
               : part.format == Format::kGptqInt4 ? part.gptq.bytes()
                                                  : part.dense->weight_bytes();
    }
    return bytes;
  }

 private:
  std::vector<Part> parts_;
};

// Per-weight data shared by the rows of a run, computed once per weight.
struct WeightInfo {
  std::vector<float> fp8_scales;  // the block grid in f32 (bf16 scales widened exactly)
  std::shared_ptr<const std::vector<int32_t>> group_of;  // GPTQ: the group of each input
  int64_t groups = 0;
};

absl::StatusOr<WeightInfo> Describe(const PrequantizedWeight& w) {
  WeightInfo info;
  if (w.format == Format::kFp8Block) {
    const Tensor& s = w.block_scales;
    info.fp8_scales.resize(static_cast<size_t>(s.numel()));
    for (int64_t i = 0; i < s.numel(); ++i) {
      info.fp8_scales[i] =
          s.dtype() == DType::kBF16 ? Bf16ToF32(s.data<uint16_t>()[i]) : s.data<float>()[i];
    }
  } else if (w.format == Format::kGptqInt4) {
    info.groups = w.scales.dim(0);
    auto group_of = std::make_shared<std::vector<int32_t>>(static_cast<size_t>(w.cols));
    const int64_t gs = w.group_size == 0 ? w.cols : w.group_size;
    for (int64_t k = 0; k < w.cols; ++k) {
      (*group_of)[k] =
          w.g_idx.defined() ? w.g_idx.data<int32_t>()[k] : static_cast<int32_t>(k / gs);
    }
    info.group_of = std::move(group_of);
  }
  return info;
}

// Whether two rows can share one packed weight.
bool SameRun(const PrequantizedWeight& a, const WeightInfo& ia, const PrequantizedWeight& b,
             const WeightInfo& ib) {
  if (a.format != b.format) return false;
  switch (a.format) {
    case Format::kFp8Block:
      return a.block_cols == b.block_cols;
    case Format::kGptqInt4:
      return ia.groups == ib.groups && (ia.group_of == ib.group_of || *ia.group_of == *ib.group_of);
    case Format::kDense:
      return (a.dense.dtype() == DType::kBF16) == (b.dense.dtype() == DType::kBF16);
  }
  return false;
}

absl::StatusOr<PrequantizedLinear::Part> PackRun(
    const std::vector<WeightRowRef>& refs, int64_t begin, int64_t end,
    const std::map<const PrequantizedWeight*, WeightInfo>& infos) {
  PrequantizedLinear::Part part;
  part.row0 = begin;
  part.rows = end - begin;
  const PrequantizedWeight& first = *refs[begin].weight;
  const int64_t k = first.cols;
  part.format = first.format;
  switch (first.format) {
    case Format::kFp8Block: {
      std::vector<PackedFp8Weight::Row> rows;
      rows.reserve(static_cast<size_t>(part.rows));
      for (int64_t r = begin; r < end; ++r) {
        const PrequantizedWeight& w = *refs[r].weight;
        const WeightInfo& info = infos.at(&w);
        const int64_t blocks = (k + w.block_cols - 1) / w.block_cols;
        rows.push_back({w.codes.data<uint8_t>() + refs[r].row * k,
                        info.fp8_scales.data() + (refs[r].row / w.block_rows) * blocks});
      }
      auto packed = PackedFp8Weight::Create(rows, k, first.block_cols);
      if (!packed.ok())
        return absl::InvalidArgumentError(
            absl::StrCat(first.name, ": ", packed.status().message()));
      part.fp8 = *std::move(packed);
      return part;
    }
    case Format::kGptqInt4: {
      std::vector<PackedGptqWeight::Rows> runs;
      for (int64_t r = begin; r < end; ++r) {
        const PrequantizedWeight& w = *refs[r].weight;
        // Extend the last run when this row is the next column of the same module.
        if (!runs.empty() && runs.back().source.qweight == w.qweight.data<int32_t>() &&
            runs.back().source.col0 + runs.back().n == refs[r].row) {
          ++runs.back().n;
          continue;
        }
        PackedGptqWeight::Source source;
        source.qweight = w.qweight.data<int32_t>();
        source.qzeros = w.qzeros.data<int32_t>();
        source.scales = w.scales.data<uint16_t>();
        source.n_total = w.rows;
        source.col0 = refs[r].row;
        source.zero_offset = w.zero_offset;
        runs.push_back({source, 1});
      }
      const WeightInfo& info = infos.at(&first);
      auto packed = PackedGptqWeight::Create(runs, k, info.groups, *info.group_of);
      if (!packed.ok())
        return absl::InvalidArgumentError(
            absl::StrCat(first.name, ": ", packed.status().message()));
      part.gptq = *std::move(packed);
      return part;
    }
    case Format::kDense: {
      const bool bf16 = first.dense.dtype() == DType::kBF16;
      SLUICE_ASSIGN_OR_RETURN(Tensor rows,
                              Tensor::Empty({part.rows, k}, bf16 ? DType::kBF16 : DType::kF32));
      for (int64_t r = begin; r < end; ++r) {
        const Tensor& src = refs[r].weight->dense;
        const int64_t row = refs[r].row;
        if (bf16) {
          std::memcpy(rows.data<uint16_t>() + (r - begin) * k, src.data<uint16_t>() + row * k,
                      k * sizeof(uint16_t));
          continue;
        }
        float* dst = rows.data<float>() + (r - begin) * k;
        for (int64_t i = 0; i < k; ++i) {
          dst[i] = src.dtype() == DType::kF16 ? F16ToF32(src.data<uint16_t>()[row * k + i])
                                              : src.data<float>()[row * k + i];
        }
      }
      SLUICE_ASSIGN_OR_RETURN(part.dense, CreateLinear(rows));
      return part;
    }
  }
  return absl::InternalError("pre-quantized Linear: unknown format");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Linear>> CreatePrequantizedLinear(const Tensor& refs) {
  SLUICE_ASSIGN_OR_RETURN(const std::vector<WeightRowRef> rows, ResolveWeightRowRefs(refs));
  const int64_t n = refs.dim(0), k = refs.dim(1);
  std::map<const PrequantizedWeight*, WeightInfo> infos;
  for (const WeightRowRef& r : rows) {
    if (infos.count(r.weight.get()) > 0) continue;
    SLUICE_ASSIGN_OR_RETURN(WeightInfo info, Describe(*r.weight));
    infos.emplace(r.weight.get(), std::move(info));
  }
  std::vector<PrequantizedLinear::Part> parts;
  int64_t begin = 0;
  for (int64_t r = 1; r <= n; ++r) {
    if (r < n) {
      const PrequantizedWeight& a = *rows[begin].weight;
      const PrequantizedWeight& b = *rows[r].weight;
      if (SameRun(a, infos.at(&a), b, infos.at(&b))) continue;
    }
    SLUICE_ASSIGN_OR_RETURN(PrequantizedLinear::Part part, PackRun(rows, begin, r, infos));
    parts.push_back(std::move(part));
    begin = r;
  }
  const Format first = rows[0].weight->format;
  const DType dtype = first == Format::kFp8Block   ? DType::kF8E4M3
                      : first == Format::kGptqInt4 ? DType::kI32  // the stored words, 8 codes each
                                                   : rows[0].weight->dense.dtype();
  return std::unique_ptr<Linear>(
      std::make_unique<PrequantizedLinear>(k, n, dtype, std::move(parts)));
}

}  // namespace sluice::kernels::cpu

namespace sluice::kernels {

template <>
absl::StatusOr<std::unique_ptr<Linear>> CreatePrequantizedLinearBody<Device::kCpu>(
    const Tensor& refs) {
  return cpu::CreatePrequantizedLinear(refs);
}

}  // namespace sluice::kernels
