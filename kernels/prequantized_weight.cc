#include "kernels/prequantized_weight.h"

#include <cstring>
#include <mutex>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace sluice::kernels {

namespace {

// The reference at the start of each row.
struct RowRef {
  uint32_t magic;
  uint32_t row;
  uint64_t id;
};
static_assert(sizeof(RowRef) == 16);
constexpr uint32_t kMagic = 0x52574c53u;  // "SLWR"

struct Registry {
  std::mutex mu;
  uint64_t next_id = 1;
  size_t sweep_at = 64;
  std::unordered_map<uint64_t, std::weak_ptr<const PrequantizedWeight>> weights;
};

Registry& GetRegistry() {
  static Registry* registry = new Registry();
  return *registry;
}

absl::Status Expect(bool ok, const PrequantizedWeight& w, absl::string_view what) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("pre-quantized weight ", w.name, ": ", what));
}

bool OnCpu(const Tensor& t) { return t.defined() && t.device() == Device::kCpu; }

}  // namespace

absl::Status PrequantizedWeight::Validate() const {
  SLUICE_RETURN_IF_ERROR(Expect(rows > 0 && cols > 0, *this, "empty shape"));
  switch (format) {
    case Format::kDense:
      SLUICE_RETURN_IF_ERROR(
          Expect(OnCpu(dense) && dense.shape() == std::vector<int64_t>{rows, cols} &&
                     (dense.dtype() == DType::kF32 || dense.dtype() == DType::kBF16 ||
                      dense.dtype() == DType::kF16),
                 *this, "a dense part must be an f32, bf16 or f16 [N, K] CPU tensor"));
      return absl::OkStatus();
    case Format::kFp8Block: {
      SLUICE_RETURN_IF_ERROR(
          Expect(block_rows > 0 && block_cols > 0, *this, "fp8 block sizes must be positive"));
      SLUICE_RETURN_IF_ERROR(Expect(OnCpu(codes) && codes.dtype() == DType::kF8E4M3 &&
                                        codes.shape() == std::vector<int64_t>{rows, cols},
                                    *this,
                                    absl::StrCat("weight must be float8_e4m3 [", rows, ", ", cols,
                                                 "], got ", codes.DebugString())));
      const std::vector<int64_t> grid = {(rows + block_rows - 1) / block_rows,
                                         (cols + block_cols - 1) / block_cols};
      SLUICE_RETURN_IF_ERROR(Expect(
          OnCpu(block_scales) &&
              (block_scales.dtype() == DType::kF32 || block_scales.dtype() == DType::kBF16) &&
              block_scales.shape() == grid,
          *this,
          absl::StrCat("weight_scale_inv must be float32 or bfloat16 ", ShapeString(grid),
                       " (one per ", block_rows, "x", block_cols, " block), got ",
                       block_scales.DebugString())));
      return absl::OkStatus();
    }
    case Format::kGptqInt4: {
      SLUICE_RETURN_IF_ERROR(
          Expect(cols % 8 == 0 && rows % 8 == 0, *this,
                 absl::StrCat("gptq int4 needs in and out features that are multiples of 8, got [",
                              rows, ", ", cols, "]")));
      SLUICE_RETURN_IF_ERROR(Expect(group_size >= 0 && zero_offset >= 0 && zero_offset <= 1, *this,
                                    "gptq group size or zero offset out of range"));
      const int64_t gs = group_size == 0 ? cols : group_size;
      const int64_t groups = (cols + gs - 1) / gs;
      SLUICE_RETURN_IF_ERROR(
          Expect(OnCpu(qweight) && qweight.dtype() == DType::kI32 &&
                     qweight.shape() == std::vector<int64_t>{cols / 8, rows},
                 *this,
                 absl::StrCat("qweight must be int32 [", cols / 8, ", ", rows,
                              "] (4-bit codes, 8 per word), got ", qweight.DebugString())));
      SLUICE_RETURN_IF_ERROR(
          Expect(OnCpu(qzeros) && qzeros.dtype() == DType::kI32 &&
                     qzeros.shape() == std::vector<int64_t>{groups, rows / 8},
                 *this,
                 absl::StrCat("qzeros must be int32 [", groups, ", ", rows / 8, "] for group size ",
                              gs, ", got ", qzeros.DebugString())));
      SLUICE_RETURN_IF_ERROR(Expect(OnCpu(scales) && scales.dtype() == DType::kF16 &&
                                        scales.shape() == std::vector<int64_t>{groups, rows},
                                    *this,
                                    absl::StrCat("scales must be float16 [", groups, ", ", rows,
                                                 "], got ", scales.DebugString())));
      if (g_idx.defined()) {
        SLUICE_RETURN_IF_ERROR(Expect(
            OnCpu(g_idx) && g_idx.dtype() == DType::kI32 &&
                g_idx.shape() == std::vector<int64_t>{cols},
            *this, absl::StrCat("g_idx must be int32 [", cols, "], got ", g_idx.DebugString())));
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError("pre-quantized weight: unknown format");
}

uint64_t PrequantizedWeight::StoredBytes() const {
  switch (format) {
    case Format::kDense:
      return dense.bytes();
    case Format::kFp8Block:
      return codes.bytes() + block_scales.bytes();
    case Format::kGptqInt4:
      return qweight.bytes() + qzeros.bytes() + scales.bytes() +
             (g_idx.defined() ? g_idx.bytes() : 0);
  }
  return 0;
}

absl::StatusOr<Tensor> MakeWeightRowRefs(std::shared_ptr<const PrequantizedWeight> weight) {
  if (weight == nullptr) return absl::InvalidArgumentError("MakeWeightRowRefs: no weight");
  SLUICE_RETURN_IF_ERROR(weight->Validate());
  if (weight->cols < static_cast<int64_t>(sizeof(RowRef))) {
    return absl::UnimplementedError(absl::StrCat(
        "pre-quantized weight ", weight->name, ": fewer than ", sizeof(RowRef), " inputs per row"));
  }
  if (weight->rows > INT32_MAX)
    return absl::InvalidArgumentError("pre-quantized weight: too many rows");
  Registry& registry = GetRegistry();
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(registry.mu);
    id = registry.next_id++;
    registry.weights[id] = weight;
    if (registry.weights.size() >= registry.sweep_at) {  // drop released weights, amortised
      for (auto it = registry.weights.begin(); it != registry.weights.end();) {
        it = it->second.expired() ? registry.weights.erase(it) : std::next(it);
      }
      registry.sweep_at = 2 * registry.weights.size() + 64;
    }
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor refs,
                          Tensor::Zeros({weight->rows, weight->cols}, DType::kWeightRowRefs));
  char* base = static_cast<char*>(refs.raw());
  for (int64_t r = 0; r < weight->rows; ++r) {
    const RowRef ref{kMagic, static_cast<uint32_t>(r), id};
    std::memcpy(base + r * weight->cols, &ref, sizeof(ref));
  }
  return refs;
}

absl::StatusOr<std::vector<WeightRowRef>> ResolveWeightRowRefs(const Tensor& refs) {
  if (!refs.defined() || refs.dtype() != DType::kWeightRowRefs || refs.rank() != 2 ||
      refs.device() != Device::kCpu || refs.dim(1) < static_cast<int64_t>(sizeof(RowRef))) {
    return absl::InvalidArgumentError("ResolveWeightRowRefs: not a 2-D CPU weight_row_refs tensor");
  }
  const int64_t n = refs.dim(0), k = refs.dim(1);
  std::vector<WeightRowRef> out(static_cast<size_t>(n));
  Registry& registry = GetRegistry();
  std::lock_guard<std::mutex> lock(registry.mu);
  uint64_t last_id = 0;
  std::shared_ptr<const PrequantizedWeight> last;
  const char* base = static_cast<const char*>(refs.raw());
  for (int64_t r = 0; r < n; ++r) {
    RowRef ref;
    std::memcpy(&ref, base + r * k, sizeof(ref));
    if (ref.magic != kMagic) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight_row_refs: row ", r, " is not a weight reference"));
    }
    if (ref.id != last_id || last == nullptr) {
      auto it = registry.weights.find(ref.id);
      last = it == registry.weights.end() ? nullptr : it->second.lock();
      last_id = ref.id;
      if (last == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "weight_row_refs: row ", r,
            " refers to a pre-quantized weight that was released (its checkpoint closed)"));
      }
    }
    if (static_cast<int64_t>(ref.row) >= last->rows || last->cols != k) {
      return absl::InvalidArgumentError(absl::StrCat("weight_row_refs: row ", r, " refers outside ",
                                                     last->name,
                                                     " or to a weight of another width"));
    }
    out[r] = WeightRowRef{last, static_cast<int64_t>(ref.row)};
  }
  return out;
}

}  // namespace sluice::kernels
