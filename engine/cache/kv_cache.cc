#include "engine/cache/kv_cache.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

size_t KvCacheShape::BytesPerBlock() const {
  const size_t rows = static_cast<size_t>(num_layers) * 2 * block_size * num_kv_heads;
  const size_t scales = dtype == kernels::DType::kF8E4M3 ? rows * sizeof(float) : 0;
  return rows * head_dim * kernels::DTypeSize(dtype) + scales;
}

absl::StatusOr<kernels::DType> ParseKvCacheDtype(absl::string_view name) {
  if (name == "f32") return kernels::DType::kF32;
  if (name == "bf16") return kernels::DType::kBF16;
  if (name == "fp8") return kernels::DType::kF8E4M3;
  return absl::InvalidArgumentError(
      absl::StrCat("KV cache dtype \"", name, "\": must be f32, bf16 or fp8"));
}

absl::string_view KvCacheDtypeName(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::kBF16:
      return "bf16";
    case kernels::DType::kF8E4M3:
      return "fp8";
    default:
      return "f32";
  }
}

absl::StatusOr<PagedKvCache> PagedKvCache::Create(const KvCacheShape& shape,
                                                  kernels::Device device) {
  if (shape.dtype != kernels::DType::kF32 && shape.dtype != kernels::DType::kBF16 &&
      shape.dtype != kernels::DType::kF8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache dtype ", kernels::DTypeName(shape.dtype),
                                                   ": must be f32, bf16 or f8_e4m3"));
  }
  PagedKvCache cache;
  cache.shape_ = shape;
  for (int32_t l = 0; l < shape.num_layers; ++l) {
    std::vector<int64_t> dims = {shape.num_blocks, shape.block_size, shape.num_kv_heads,
                                 shape.head_dim};
    SLUICE_ASSIGN_OR_RETURN(auto k, kernels::Tensor::Zeros(dims, shape.dtype, device));
    SLUICE_ASSIGN_OR_RETURN(auto v, kernels::Tensor::Zeros(dims, shape.dtype, device));
    cache.keys_.push_back(std::move(k));
    cache.values_.push_back(std::move(v));
    kernels::Tensor ks, vs;
    if (shape.dtype == kernels::DType::kF8E4M3) {
      dims.pop_back();
      SLUICE_ASSIGN_OR_RETURN(ks, kernels::Tensor::Zeros(dims, kernels::DType::kF32, device));
      SLUICE_ASSIGN_OR_RETURN(vs, kernels::Tensor::Zeros(dims, kernels::DType::kF32, device));
    }
    cache.key_scales_.push_back(std::move(ks));
    cache.value_scales_.push_back(std::move(vs));
  }
  return cache;
}

}  // namespace sluice::engine
