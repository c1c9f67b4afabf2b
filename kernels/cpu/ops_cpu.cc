// Reference CPU bodies. Plain loops the compiler vectorises, parallelised with OpenMP
// (the same runtime oneDNN uses here, so the two never oversubscribe the cores).
#include "kernels/cpu/ops_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/fp8.h"
#include "kernels/op_bodies.h"
#include "kernels/status_macros.h"

namespace sluice::kernels::cpu {

void EmbeddingLookup(const Tensor& table, const Tensor& ids, Tensor* out) {
  const int64_t n = ids.numel();
  const int64_t h = table.dim(1);
  const int32_t* id = ids.data<int32_t>();
  float* dst = out->data<float>();
  if (table.dtype() == DType::kF32) {
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(dst + i * h, table.data<float>() + static_cast<int64_t>(id[i]) * h, h * 4);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t* row = table.data<uint16_t>() + static_cast<int64_t>(id[i]) * h;
      for (int64_t j = 0; j < h; ++j) dst[i * h + j] = Bf16ToF32(row[j]);
    }
  }
}

void RmsNorm(const Tensor& x, const Tensor& weight, float eps, float weight_offset, Tensor* out) {
  const int64_t d = x.dim(-1);
  const int64_t rows = x.numel() / d;
  const float* src = x.data<float>();
  const float* w = weight.data<float>();
  float* dst = out->data<float>();
#pragma omp parallel for if (rows > 16)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = src + r * d;
    float* yr = dst + r * d;
    float sum = 0.f;
    for (int64_t j = 0; j < d; ++j) sum += xr[j] * xr[j];
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(d) + eps);
    for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * inv * (weight_offset + w[j]);
  }
}

void ApplyRotaryEmbedding(const Tensor& positions, const Tensor& cos_sin, int64_t rotary_dim,
                          Tensor* x) {
  const int64_t tokens = x->dim(0);
  const int64_t heads = x->dim(1);
  const int64_t d = x->dim(2);
  const int64_t half = rotary_dim / 2;
  const int32_t* pos = positions.data<int32_t>();
  float* data = x->data<float>();
#pragma omp parallel for if (tokens > 16)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* cs = cos_sin.data<float>() + static_cast<int64_t>(pos[t]) * rotary_dim;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = data + (t * heads + h) * d;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i];
        const float b = v[i + half];
        v[i] = a * cs[i] - b * cs[half + i];
        v[i + half] = b * cs[i] + a * cs[half + i];
      }
    }
  }
}

void SiluMul(const Tensor& gate_up, Tensor* out) {
  const int64_t rows = gate_up.dim(0);
  const int64_t inter = out->dim(1);
  const float* src = gate_up.data<float>();
  float* dst = out->data<float>();
#pragma omp parallel for if (rows > 4)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = src + r * 2 * inter;
    const float* u = g + inter;
    float* y = dst + r * inter;
    for (int64_t j = 0; j < inter; ++j) y[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
  }
}

void CopyColumns(const Tensor& src, int64_t col_start, Tensor* dst) {
  const int64_t rows = src.dim(0);
  const int64_t src_width = src.dim(1);
  const int64_t width = dst->dim(1);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst->data<float>() + r * width, src.data<float>() + r * src_width + col_start,
                width * sizeof(float));
  }
}

void SigmoidGateInPlace(const Tensor& gate, Tensor* x) {
  const int64_t rows = x->dim(0);
  const int64_t width = x->dim(1);
  const int64_t groups = gate.dim(1);
  const int64_t r = width / groups;
  const float* g = gate.data<float>();
  float* d = x->data<float>();
#pragma omp parallel for if (rows > 16)
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t i = 0; i < width; ++i) {
      d[t * width + i] *= 1.0f / (1.0f + std::exp(-g[t * groups + i / r]));
    }
  }
}

void ClampInPlace(float limit, Tensor* x) {
  float* d = x->data<float>();
  for (int64_t i = 0; i < x->numel(); ++i) d[i] = std::min(limit, std::max(-limit, d[i]));
}

void RouteTopK(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts, Tensor* weights,
               absl::Span<const int32_t> row_k) {
  const int64_t tokens = logits.dim(0);
  const int64_t num_experts = logits.dim(1);
  std::vector<float> probs(num_experts);
  std::vector<int32_t> order(num_experts);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* l = logits.data<float>() + t * num_experts;
    const float max_l = *std::max_element(l, l + num_experts);
    float sum = 0.f;
    for (int64_t e = 0; e < num_experts; ++e) sum += probs[e] = std::exp(l[e] - max_l);
    for (int64_t e = 0; e < num_experts; ++e) {
      probs[e] /= sum;
      order[e] = static_cast<int32_t>(e);
    }
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return probs[a] != probs[b] ? probs[a] > probs[b] : a < b;
    });
    // A row's own k keeps its largest row_k[t]; with row_k[t] == k this is the dense path.
    const int64_t kk = row_k.empty() ? k : row_k[t];
    float kept = 0.f;
    for (int64_t i = 0; i < kk; ++i) kept += probs[order[i]];
    for (int64_t i = 0; i < k; ++i) {
      if (i >= kk) {
        experts->data<int32_t>()[t * k + i] = -1;
        weights->data<float>()[t * k + i] = 0.f;
        continue;
      }
      experts->data<int32_t>()[t * k + i] = order[i];
      weights->data<float>()[t * k + i] = renormalize ? probs[order[i]] / kept : probs[order[i]];
    }
  }
}

void SigmoidGroupMean(const Tensor& x, Tensor* out) {
  const int64_t rows = x.dim(0);
  const int64_t width = x.dim(1);
  const int64_t groups = out->dim(1);
  const int64_t size = width / groups;
  const float* src = x.data<float>();
  float* dst = out->data<float>();
#pragma omp parallel for if (rows > 64)
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* v = src + t * width + g * size;
      float sum = 0.f;
      for (int64_t j = 0; j < size; ++j) sum += 1.0f / (1.0f + std::exp(-v[j]));
      dst[t * groups + g] = sum / static_cast<float>(size);
    }
  }
}

void AddBiasInPlace(const Tensor& bias, Tensor* x) {
  const int64_t rows = x->dim(0);
  const int64_t width = x->dim(1);
  const float* b = bias.data<float>();
  float* d = x->data<float>();
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < width; ++j) d[t * width + j] += b[j];
  }
}

void ScaledScatterAdd(const Tensor& y, const Tensor& rows, const Tensor& scale, Tensor* out) {
  const int64_t width = y.dim(1);
  const int32_t* r = rows.data<int32_t>();
  const float* s = scale.data<float>();
  for (int64_t i = 0; i < y.dim(0); ++i) {
    const float* src = y.data<float>() + i * width;
    float* dst = out->data<float>() + static_cast<int64_t>(r[i]) * width;
    for (int64_t j = 0; j < width; ++j) dst[j] += s[i] * src[j];
  }
}

void DeltaRuleGates(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias,
                    Tensor* g, Tensor* beta) {
  const int64_t tokens = a.dim(0);
  const int64_t heads = a.dim(1);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t i = t * heads + h;
      const float x = a.data<float>()[i] + dt_bias.data<float>()[h];
      const float softplus = x > 20.f ? x : std::log1p(std::exp(x));
      g->data<float>()[i] = -std::exp(a_log.data<float>()[h]) * softplus;
      beta->data<float>()[i] = 1.f / (1.f + std::exp(-b.data<float>()[i]));
    }
  }
}

void AddInPlace(const Tensor& y, Tensor* x) {
  const int64_t n = x->numel();
  const float* src = y.data<float>();
  float* dst = x->data<float>();
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

void GatherRows(const Tensor& x, const Tensor& rows, Tensor* out) {
  const int64_t width = x.dim(1);
  const size_t row_bytes = width * DTypeSize(x.dtype());
  const int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    std::memcpy(static_cast<char*>(out->raw()) + i * row_bytes,
                static_cast<const char*>(x.raw()) + r[i] * row_bytes, row_bytes);
  }
}

void WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor* k_cache,
                  Tensor* v_cache, Tensor* k_scale, Tensor* v_scale) {
  const int64_t heads = k.dim(1);
  const int64_t d = k.dim(2);
  const int64_t row = heads * d;
  const int32_t* slot = slot_mapping.data<int32_t>();
  switch (k_cache->dtype()) {
    case DType::kBF16:
      for (int64_t t = 0; t < k.dim(0); ++t) {
        const int64_t at = static_cast<int64_t>(slot[t]) * row;
        const float* ks = k.data<float>() + t * row;
        const float* vs = v.data<float>() + t * row;
        uint16_t* kd = k_cache->data<uint16_t>() + at;
        uint16_t* vd = v_cache->data<uint16_t>() + at;
        for (int64_t c = 0; c < row; ++c) kd[c] = F32ToBf16(ks[c]);
        for (int64_t c = 0; c < row; ++c) vd[c] = F32ToBf16(vs[c]);
      }
      return;
    case DType::kF8E4M3: {
      // One power-of-two scale per (token, head) row (kernels/fp8.h), so a row's codes
      // depend on that row alone.
      auto quantize = [&](const float* src, uint8_t* dst, float* row_scale) {
        float amax = 0.f;
        for (int64_t c = 0; c < d; ++c) amax = std::max(amax, std::abs(src[c]));
        const float s = Fp8E4M3RowScale(amax);
        const float inv = 1.f / s;  // exact: s is a power of two
        for (int64_t c = 0; c < d; ++c) dst[c] = F32ToFp8E4M3(src[c] * inv);
        *row_scale = s;
      };
      for (int64_t t = 0; t < k.dim(0); ++t) {
        const int64_t at = static_cast<int64_t>(slot[t]);
        for (int64_t h = 0; h < heads; ++h) {
          quantize(k.data<float>() + t * row + h * d, k_cache->data<uint8_t>() + at * row + h * d,
                   k_scale->data<float>() + at * heads + h);
          quantize(v.data<float>() + t * row + h * d, v_cache->data<uint8_t>() + at * row + h * d,
                   v_scale->data<float>() + at * heads + h);
        }
      }
      return;
    }
    default:
      for (int64_t t = 0; t < k.dim(0); ++t) {
        std::memcpy(k_cache->data<float>() + static_cast<int64_t>(slot[t]) * row,
                    k.data<float>() + t * row, row * 4);
        std::memcpy(v_cache->data<float>() + static_cast<int64_t>(slot[t]) * row,
                    v.data<float>() + t * row, row * 4);
      }
      return;
  }
}

namespace {

// How the attention loop reads one cached element as f32: f32 as is (the f32 cache
// keeps its bits), bf16 widened exactly, fp8 widened (Fp8E4M3Widen: arithmetic, not a
// table, so that the loop stays vector code) and multiplied by its row's power-of-two
// scale (exact). Element by element, inside the loop.
template <typename T>
struct KvElement;
template <>
struct KvElement<float> {
  static float Load(const float* p, int64_t c, float /*scale*/) { return p[c]; }
};
template <>
struct KvElement<uint16_t> {
  static float Load(const uint16_t* p, int64_t c, float /*scale*/) {
    return Bf16ToF32(p[c]);
  }
};
template <>
struct KvElement<uint8_t> {
  static float Load(const uint8_t* p, int64_t c, float scale) {
    return Fp8E4M3Widen(p[c]) * scale;
  }
};

// Skip: the element type of the head_skip flags (uint8_t from the host form, int32_t from
// the tensor form); nullptr skips nothing. T: the cache's element (float, bf16 bits as
// uint16_t, fp8 codes as uint8_t); k_scales/v_scales: fp8 only, one f32 per (slot, head).
constexpr int64_t kMaxRunHeads = 64;  // query heads per KV head the loop shares reads across
// Cached rows are 1 KB apart or more and the block table scatters them, so the loop asks
// for the row kPrefetchRows tokens ahead itself (a hint: no effect on the results).
constexpr int64_t kPrefetchRows = 6;
template <typename T>
inline void Prefetch(const T* row, int64_t d) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < d * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b);
}

template <typename T, typename Skip>
void PagedAttentionImpl(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                        absl::Span<const AttentionSequence> sequences, float scale, Tensor* out,
                        const Skip* head_skip, const float* k_scales, const float* v_scales) {
  const int64_t q_heads = q.dim(1);
  const int64_t d = q.dim(2);
  const int64_t block_size = k_cache.dim(1);
  const int64_t kv_heads = k_cache.dim(2);
  const int64_t group = q_heads / kv_heads;
  const int64_t kv_row = kv_heads * d;
  const T* k_base = k_cache.data<T>();
  const T* v_base = v_cache.data<T>();

  // One work item per (query token, KV head, run of that KV head's query heads) of the
  // whole ragged batch. The query heads sharing a KV head read each cached K and V row
  // once for all of them (a decode step's attention is a stream over the cache, and
  // re-reading it per query head made it 4x the traffic on a 4:1 GQA model). Each query
  // head still runs exactly its own sequence of operations, so its result is the same
  // bit for bit whatever run it shares. The runs are as long as the thread count allows:
  // every KV head's query heads in one item when there are enough items to go round.
  std::vector<std::pair<int32_t, int32_t>> items;  // (sequence index, query row)
  for (size_t s = 0; s < sequences.size(); ++s) {
    for (int32_t i = 0; i < sequences[s].query_len; ++i) {
      items.emplace_back(static_cast<int32_t>(s), sequences[s].query_start + i);
    }
  }
  const int64_t threads = omp_get_max_threads();
  int64_t run = group;  // query heads per item: a divisor of group
  while (run > kMaxRunHeads ||
         (run > 1 && static_cast<int64_t>(items.size()) * kv_heads * (group / run) < 2 * threads)) {
    int64_t next = run - 1;
    while (group % next != 0) --next;
    run = next;
  }
  const int64_t runs_per_group = group / run;
  const int64_t runs = kv_heads * runs_per_group;
  const int64_t work = static_cast<int64_t>(items.size()) * runs;

#pragma omp parallel
  {
    std::vector<float> scores;  // [run][visible]
    std::vector<float> acc(run * d);
    std::vector<float> max_score(run), denom(run);
    std::vector<int64_t> slots;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < work; ++w) {
      const auto [s, row] = items[w / runs];
      const int64_t g = (w % runs) / runs_per_group;
      const int64_t h0 = g * group + (w % runs_per_group) * run;
      const AttentionSequence& seq = sequences[s];
      // This query is token (context_len - query_len + i) of its sequence and sees every
      // token up to and including itself.
      const int64_t i = row - seq.query_start;
      const int64_t visible = seq.context_len - seq.query_len + i + 1;
      bool skip[kMaxRunHeads];
      bool any = false;
      for (int64_t r = 0; r < run; ++r) {
        skip[r] = head_skip != nullptr && head_skip[static_cast<int64_t>(row) * q_heads + h0 + r] != 0;
        any = any || !skip[r];
      }
      if (any) {
        slots.resize(visible);
        for (int64_t j = 0; j < visible; ++j) {
          slots[j] = static_cast<int64_t>(seq.block_table[j / block_size]) * block_size + j % block_size;
        }
        scores.resize(run * visible);
        std::fill(max_score.begin(), max_score.end(), -INFINITY);
        for (int64_t j = 0; j < visible; ++j) {
          const int64_t slot = slots[j];
          const T* kv = k_base + slot * kv_row + g * d;
          if (j + kPrefetchRows < visible) Prefetch(k_base + slots[j + kPrefetchRows] * kv_row + g * d, d);
          const float ks = k_scales != nullptr ? k_scales[slot * kv_heads + g] : 1.f;
          for (int64_t r = 0; r < run; ++r) {
            if (skip[r]) continue;
            const float* qv = q.data<float>() + (static_cast<int64_t>(row) * q_heads + h0 + r) * d;
            // A SIMD reduction: a fixed lane order (the same for every batch), which the
            // compiler may not pick by itself without -ffast-math.
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < d; ++c) dot += qv[c] * KvElement<T>::Load(kv, c, ks);
            scores[r * visible + j] = dot * scale;
            max_score[r] = std::max(max_score[r], scores[r * visible + j]);
          }
        }
        for (int64_t r = 0; r < run; ++r) {
          if (skip[r]) continue;
          float sum = 0.f;
          float* sc = scores.data() + r * visible;
          for (int64_t j = 0; j < visible; ++j) {
            sc[j] = std::exp(sc[j] - max_score[r]);
            sum += sc[j];
          }
          denom[r] = sum;
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t j = 0; j < visible; ++j) {
          const int64_t slot = slots[j];
          const T* vv = v_base + slot * kv_row + g * d;
          if (j + kPrefetchRows < visible) Prefetch(v_base + slots[j + kPrefetchRows] * kv_row + g * d, d);
          const float vs = v_scales != nullptr ? v_scales[slot * kv_heads + g] : 1.f;
          for (int64_t r = 0; r < run; ++r) {
            if (skip[r]) continue;
            const float p = scores[r * visible + j];
            float* a = acc.data() + r * d;
            for (int64_t c = 0; c < d; ++c) a[c] += p * KvElement<T>::Load(vv, c, vs);
          }
        }
      }
      for (int64_t r = 0; r < run; ++r) {
        float* o = out->data<float>() + (static_cast<int64_t>(row) * q_heads + h0 + r) * d;
        if (skip[r]) {
          std::fill(o, o + d, 0.f);
          continue;
        }
        const float inv = 1.0f / denom[r];
        const float* a = acc.data() + r * d;
        for (int64_t c = 0; c < d; ++c) o[c] = a[c] * inv;
      }
    }
  }
}

// Picks the loop for the cache's dtype (checked by ops.cc: f32, bf16, or f8_e4m3 with
// scales).
template <typename Skip>
void PagedAttentionAnyDtype(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            absl::Span<const AttentionSequence> sequences, float scale,
                            Tensor* out, const Skip* head_skip, const Tensor& k_scale,
                            const Tensor& v_scale) {
  switch (k_cache.dtype()) {
    case DType::kBF16:
      return PagedAttentionImpl<uint16_t>(q, k_cache, v_cache, sequences, scale, out, head_skip,
                                          nullptr, nullptr);
    case DType::kF8E4M3:
      return PagedAttentionImpl<uint8_t>(q, k_cache, v_cache, sequences, scale, out, head_skip,
                                         k_scale.data<float>(), v_scale.data<float>());
    default:
      return PagedAttentionImpl<float>(q, k_cache, v_cache, sequences, scale, out, head_skip,
                                       nullptr, nullptr);
  }
}

}  // namespace

void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                    absl::Span<const AttentionSequence> sequences, float scale, Tensor* out,
                    absl::Span<const uint8_t> head_skip, const Tensor& k_scale,
                    const Tensor& v_scale) {
  PagedAttentionAnyDtype(q, k_cache, v_cache, sequences, scale, out,
                         head_skip.empty() ? nullptr : head_skip.data(), k_scale, v_scale);
}

absl::Status RouteTopKChecked(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts,
                              Tensor* weights, absl::Span<const int32_t> row_k) {
  for (int32_t rk : row_k) {
    if (rk < 1 || rk > k) return absl::InvalidArgumentError("RouteTopK: a row's k is outside [1, k]");
  }
  cpu::RouteTopK(logits, k, renormalize, experts, weights, row_k);
  return absl::OkStatus();
}

namespace {

absl::Status CheckAttentionSequences(const Tensor& q, const Tensor& k_cache,
                                     absl::Span<const AttentionSequence> sequences) {
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
  return absl::OkStatus();
}

}  // namespace

absl::Status PagedAttentionChecked(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                   absl::Span<const AttentionSequence> sequences, float scale,
                                   Tensor* out, const uint8_t* head_skip,
                                   const Tensor& k_scale, const Tensor& v_scale) {
  SLUICE_RETURN_IF_ERROR(CheckAttentionSequences(q, k_cache, sequences));
  PagedAttentionAnyDtype(q, k_cache, v_cache, sequences, scale, out, head_skip, k_scale, v_scale);
  return absl::OkStatus();
}

absl::Status PagedAttentionChecked(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                   absl::Span<const AttentionSequence> sequences, float scale,
                                   Tensor* out, const int32_t* head_skip,
                                   const Tensor& k_scale, const Tensor& v_scale) {
  SLUICE_RETURN_IF_ERROR(CheckAttentionSequences(q, k_cache, sequences));
  PagedAttentionAnyDtype(q, k_cache, v_cache, sequences, scale, out, head_skip, k_scale, v_scale);
  return absl::OkStatus();
}

}  // namespace sluice::kernels::cpu

// ---------------------------------------------------------------------------------------
// The dispatched CPU bodies (kernels/op_bodies.h): content checks, then the plain bodies.
namespace sluice::kernels {

template <>
absl::StatusOr<Tensor> ToF32Body<Device::kCpu>(const Tensor& t) {
  SLUICE_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(t.shape(), DType::kF32, Device::kCpu));
  float* dst = out.data<float>();
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::kF32:
      if (n > 0) std::memcpy(dst, t.raw(), n * 4);
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
    case DType::kI8:
      return absl::InvalidArgumentError("ToF32: integer tensor");
    case DType::kF8E4M3:
      return absl::InvalidArgumentError("ToF32: an f8_e4m3 tensor needs its scales");
    case DType::kWeightRowRefs:
      return absl::InvalidArgumentError("ToF32: a pre-quantized weight is read only by Linear::Create");
  }
  return out;
}

template <>
absl::StatusOr<Tensor> ConcatRowsBody<Device::kCpu>(absl::Span<const Tensor> parts) {
  const int64_t cols = parts[0].dim(1);
  int64_t rows = 0;
  bool all_bf16 = true;
  for (const Tensor& p : parts) {
    rows += p.dim(0);
    all_bf16 = all_bf16 && p.dtype() == DType::kBF16;
  }
  const DType dtype = all_bf16 ? DType::kBF16 : DType::kF32;
  SLUICE_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty({rows, cols}, dtype, Device::kCpu));
  char* dst = static_cast<char*>(out.raw());
  for (const Tensor& p : parts) {
    if (p.dtype() == dtype) {
      if (p.bytes() > 0) std::memcpy(dst, p.raw(), p.bytes());
    } else {
      SLUICE_ASSIGN_OR_RETURN(Tensor f, ToF32Body<Device::kCpu>(p));
      if (f.bytes() > 0) std::memcpy(dst, f.raw(), f.bytes());
    }
    dst += p.numel() * DTypeSize(dtype);
  }
  return out;
}

template <>
absl::Status EmbeddingLookupBody<Device::kCpu>(const Tensor& table, const Tensor& ids, Tensor* out) {
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

// Rows of the int8 table dequantized as the int8 Linear's reference does: q · scale, one
// f32 product per element (cpu/gemm_int8_cpu.h).
template <>
absl::Status EmbeddingLookupInt8Body<Device::kCpu>(const Tensor& table, const Tensor& row_scales,
                                                    const Tensor& ids, Tensor* out) {
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    if (id[i] < 0 || id[i] >= table.dim(0)) {
      return absl::OutOfRangeError(absl::StrCat("EmbeddingLookup: token id ", id[i],
                                                " outside [0, ", table.dim(0), ")"));
    }
  }
  const int64_t h = table.dim(1);
  const int8_t* values = table.data<int8_t>();
  const float* scales = row_scales.data<float>();
  float* dst = out->data<float>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int64_t row = id[i];
    const int8_t* q = values + row * h;
    const float scale = scales[row];
    for (int64_t j = 0; j < h; ++j) dst[i * h + j] = static_cast<float>(q[j]) * scale;
  }
  return absl::OkStatus();
}

template <>
absl::Status RmsNormBody<Device::kCpu>(const Tensor& x, const Tensor& weight, float eps,
                                       float weight_offset, Tensor* out) {
  cpu::RmsNorm(x, weight, eps, weight_offset, out);
  return absl::OkStatus();
}

template <>
absl::Status ApplyRotaryEmbeddingBody<Device::kCpu>(const Tensor& positions, const Tensor& cos_sin,
                                                    int64_t rotary_dim, Tensor* x) {
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

template <>
absl::Status SiluMulBody<Device::kCpu>(const Tensor& gate_up, Tensor* out) {
  cpu::SiluMul(gate_up, out);
  return absl::OkStatus();
}

template <>
absl::Status CopyColumnsBody<Device::kCpu>(const Tensor& src, int64_t col_start, Tensor* dst) {
  cpu::CopyColumns(src, col_start, dst);
  return absl::OkStatus();
}

template <>
absl::Status SigmoidGateInPlaceBody<Device::kCpu>(const Tensor& gate, Tensor* x) {
  cpu::SigmoidGateInPlace(gate, x);
  return absl::OkStatus();
}

template <>
absl::Status ClampInPlaceBody<Device::kCpu>(float limit, Tensor* x) {
  cpu::ClampInPlace(limit, x);
  return absl::OkStatus();
}

template <>
absl::Status RouteTopKBody<Device::kCpu>(const Tensor& logits, int64_t k, bool renormalize,
                                         Tensor* experts, Tensor* weights, const Tensor& row_k) {
  absl::Span<const int32_t> host_row_k;
  if (row_k.defined()) host_row_k = absl::MakeConstSpan(row_k.data<int32_t>(), row_k.numel());
  return cpu::RouteTopKChecked(logits, k, renormalize, experts, weights, host_row_k);
}

template <>
absl::Status ScaledScatterAddBody<Device::kCpu>(const Tensor& y, const Tensor& rows,
                                                const Tensor& scale, Tensor* out) {
  const int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    if (r[i] < 0 || r[i] >= out->dim(0)) return absl::OutOfRangeError("ScaledScatterAdd: row out of range");
  }
  cpu::ScaledScatterAdd(y, rows, scale, out);
  return absl::OkStatus();
}

template <>
absl::Status DeltaRuleGatesBody<Device::kCpu>(const Tensor& a, const Tensor& b, const Tensor& a_log,
                                              const Tensor& dt_bias, Tensor* g, Tensor* beta) {
  cpu::DeltaRuleGates(a, b, a_log, dt_bias, g, beta);
  return absl::OkStatus();
}

template <>
absl::Status SigmoidGroupMeanBody<Device::kCpu>(const Tensor& x, Tensor* out) {
  cpu::SigmoidGroupMean(x, out);
  return absl::OkStatus();
}

template <>
absl::Status AddBiasInPlaceBody<Device::kCpu>(const Tensor& bias, Tensor* x) {
  cpu::AddBiasInPlace(bias, x);
  return absl::OkStatus();
}

template <>
absl::Status AddInPlaceBody<Device::kCpu>(const Tensor& y, Tensor* x) {
  cpu::AddInPlace(y, x);
  return absl::OkStatus();
}

template <>
absl::Status FillConstantBody<Device::kCpu>(float value, Tensor* x) {
  float* d = x->data<float>();
  std::fill(d, d + x->numel(), value);
  return absl::OkStatus();
}

template <>
absl::Status HeadSkipMaskBody<Device::kCpu>(const Tensor& head_gate_mean, const Tensor& row_floor,
                                            Tensor* mask) {
  // The rule engine/model/attention_mixer.cc applied on the host: a row with no floor
  // (floor <= 0) skips nothing; otherwise a head whose mean gate is under the floor is
  // skipped. (NaN compares false both ways, as it did there.)
  const int64_t tokens = head_gate_mean.dim(0);
  const int64_t heads = head_gate_mean.dim(1);
  const float* mean = head_gate_mean.data<float>();
  const float* floor = row_floor.data<float>();
  int32_t* m = mask->data<int32_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    const float f = floor[t];
    const bool has_floor = !(f <= 0.f);
    for (int64_t h = 0; h < heads; ++h) {
      m[t * heads + h] = has_floor && mean[t * heads + h] < f ? 1 : 0;
    }
  }
  return absl::OkStatus();
}

template <>
absl::Status GatherRowsBody<Device::kCpu>(const Tensor& x, const Tensor& rows, Tensor* out) {
  const int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    if (r[i] < 0 || r[i] >= x.dim(0)) return absl::OutOfRangeError("GatherRows: row out of range");
  }
  cpu::GatherRows(x, rows, out);
  return absl::OkStatus();
}

template <>
absl::Status WriteKvCacheBody<Device::kCpu>(const Tensor& k, const Tensor& v,
                                            const Tensor& slot_mapping, Tensor* k_cache,
                                            Tensor* v_cache, Tensor* k_scale, Tensor* v_scale) {
  const int64_t slots = k_cache->dim(0) * k_cache->dim(1);
  const int32_t* s = slot_mapping.data<int32_t>();
  for (int64_t i = 0; i < slot_mapping.numel(); ++i) {
    if (s[i] < 0 || s[i] >= slots) return absl::OutOfRangeError("WriteKvCache: slot out of range");
  }
  cpu::WriteKvCache(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale);
  return absl::OkStatus();
}

template <>
absl::Status PagedAttentionBody<Device::kCpu>(const Tensor& q, const Tensor& k_cache,
                                              const Tensor& v_cache, const AttentionBatch& batch,
                                              float scale, Tensor* out, const Tensor& head_skip,
                                              const Tensor& k_scale, const Tensor& v_scale) {
  const int64_t count = batch.context_len.numel();
  const int64_t max_blocks = batch.block_tables.dim(1);
  const int64_t block_size = k_cache.dim(1);
  const int32_t* query_start = batch.query_start.data<int32_t>();
  const int32_t* context_len = batch.context_len.data<int32_t>();
  const int32_t* tables = batch.block_tables.data<int32_t>();
  std::vector<AttentionSequence> sequences(count);
  for (int64_t s = 0; s < count; ++s) {
    const int64_t rows = static_cast<int64_t>(query_start[s + 1]) - query_start[s];
    if (rows < 0 || context_len[s] < 0 ||
        (static_cast<int64_t>(context_len[s]) + block_size - 1) / block_size > max_blocks) {
      return absl::InvalidArgumentError(
          "PagedAttention: bad sequence metadata (rows, or a context past its block table)");
    }
    sequences[s] = AttentionSequence{query_start[s], static_cast<int32_t>(rows), context_len[s],
                                     tables + s * max_blocks};
  }
  return cpu::PagedAttentionChecked(q, k_cache, v_cache, sequences, scale, out,
                                    head_skip.defined() ? head_skip.data<int32_t>() : nullptr,
                                    k_scale, v_scale);
}

}  // namespace sluice::kernels
