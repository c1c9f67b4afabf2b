// CPU bodies of the mixture-of-experts ops (kernels/moe.h).
//
// GroupedExperts over bf16 weights runs a whole MoE layer in one OpenMP region with four
// work-shared loops: gather the routed rows; gate-up + SwiGLU over (expert, row tile,
// 32-column block) items; down over (expert, run of panels) items; then the weighted
// scatter over 32-column blocks of the output. At batch 1 both cores get a share of
// every active expert's weights, each item streaming one contiguous stretch of them. The
// per-expert loop this replaces ran each small GEMM as its own parallel region, with
// gathers, uploads and allocations in between: a fixed cost per layer that kept a MoE
// decode well below the memory bandwidth.
//
// Bit identity with that loop: every GEMM output is GemmF32Bf16's own chain over K (the
// panel kernel does not depend on the rows it shares), SwiGLU and the scatter are the
// same expressions as cpu::SiluMul and cpu::ScaledScatterAdd, and each output element
// still receives its experts' contributions in ascending expert order, because one item
// owns the element for all experts.
//
// Experts quantized at load (int8, int4) run the same four loops over the int8 and int4
// GEMMs' panel kernels (QuantizedGroupedExperts), bit for bit the per-expert loop over
// quantized Linears.
//
// f32 experts and a pre-quantized checkpoint's FP8 / GPTQ experts (LinearGroupedExperts)
// run the per-expert loop over their own Linears inside the op.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/gemm_bf16_cpu.h"
#include "kernels/cpu/gemm_int4_cpu.h"
#include "kernels/cpu/gemm_int8_cpu.h"
#include "kernels/cpu/moe_cpu.h"
#include "kernels/ops.h"

namespace sluice::kernels {
namespace cpu {
namespace {

constexpr int64_t kBlock = PackedBf16Weight::kPanelCols;

// cpu::SiluMul's expression (ops_cpu.cc), element by element.
inline float SiluTimes(float g, float u) { return g / (1.0f + std::exp(-g)) * u; }

// cpu::ScaledScatterAdd's loop over one row segment (ops_cpu.cc): same expression, so the
// compiler contracts it (or not) the same way.
inline void ScaleAdd(float s, const float* src, float* dst, int64_t width) {
  for (int64_t j = 0; j < width; ++j) dst[j] += s * src[j];
}

// Offsets must be a non-decreasing prefix sum starting at 0 and ending within the
// sorted entries, and every used entry's row a row of x.
absl::Status CheckGroupingContents(const Tensor& offsets, const Tensor& rows, int64_t tokens) {
  const int32_t* off = offsets.data<int32_t>();
  const int64_t experts = offsets.numel() - 1;
  if (off[0] != 0) return absl::InvalidArgumentError("GroupedExperts: expert_offsets[0] must be 0");
  for (int64_t e = 0; e < experts; ++e) {
    if (off[e + 1] < off[e]) return absl::InvalidArgumentError("GroupedExperts: expert_offsets decrease");
  }
  if (off[experts] > rows.numel()) {
    return absl::InvalidArgumentError("GroupedExperts: expert_offsets run past sorted_rows");
  }
  const int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0; i < off[experts]; ++i) {
    if (r[i] < 0 || r[i] >= tokens) return absl::OutOfRangeError("GroupedExperts: a sorted row is not a row of x");
  }
  return absl::OkStatus();
}

template <typename T>
T* Grow(std::vector<T>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  return v.data();
}

struct UpItem {
  int64_t expert, block, row0, rows;
};
struct DownItem {
  int64_t expert, panel0, panel1;
};
struct Workspace {
  std::vector<float> x_rows, gate_up_out, act, down_out;
  std::vector<uint32_t> x_pairs, act_pairs;
  std::vector<int32_t> active;
  std::vector<UpItem> up_items;
  std::vector<DownItem> down_items;
};

// bf16 experts through the hand GEMM's panel kernel, all in one parallel region.
class PackedGroupedExperts final : public GroupedExperts {
 public:
  PackedGroupedExperts(absl::Span<const Tensor> gate_up, absl::Span<const Tensor> down, bool bf16_compute)
      : GroupedExperts(static_cast<int64_t>(gate_up.size()), gate_up[0].dim(1), gate_up[0].dim(0) / 2,
                       Device::kCpu, 3 * static_cast<size_t>(gate_up[0].dim(1)) * (gate_up[0].dim(0) / 2) * 2),
        blocks_((intermediate() + kBlock - 1) / kBlock),
        bf16_compute_(bf16_compute) {
    const int64_t h = hidden(), inter = intermediate();
    // gate_up is repacked with its rows interleaved by 32-column block (gate block q,
    // then up block q; a short last block zero-padded), so that one work item reads the
    // gate and up panels of a block as one sequential stream and applies SwiGLU to them.
    std::vector<uint16_t> interleaved(static_cast<size_t>(2 * blocks_ * kBlock * h));
    for (size_t e = 0; e < gate_up.size(); ++e) {
      std::fill(interleaved.begin(), interleaved.end(), 0);
      const uint16_t* w = gate_up[e].data<uint16_t>();
      for (int64_t col = 0; col < inter; ++col) {
        const int64_t q = col / kBlock, c = col % kBlock;
        std::memcpy(&interleaved[((2 * q) * kBlock + c) * h], w + col * h, h * 2);
        std::memcpy(&interleaved[((2 * q + 1) * kBlock + c) * h], w + (inter + col) * h, h * 2);
      }
      gate_up_.emplace_back(interleaved.data(), 2 * blocks_ * kBlock, h, bf16_compute);
      down_.emplace_back(down[e].data<uint16_t>(), h, inter, bf16_compute);
    }
  }

 protected:
  absl::Status Run(const Tensor& x, const Tensor& expert_offsets, const Tensor& sorted_rows,
                   const Tensor& sorted_weights, Tensor* out) override {
    const int64_t tokens = x.dim(0);
    if (auto s = CheckGroupingContents(expert_offsets, sorted_rows, tokens); !s.ok()) return s;
    const int64_t h = hidden(), inter = intermediate(), experts = num_experts();
    const int32_t* off = expert_offsets.data<int32_t>();
    const int32_t* rows = sorted_rows.data<int32_t>();
    const float* scale = sorted_weights.data<float>();
    const float* xs = x.data<float>();
    float* o = out->data<float>();
    const int64_t total = off[experts];
    if (total == 0) {
      std::memset(o, 0, out->bytes());
      return absl::OkStatus();
    }
    const int64_t kp_h = (h + 1) / 2, kp_i = (inter + 1) / 2;
    const int64_t ld_gu = 2 * blocks_ * kBlock;
    // Workspace, grown to the largest batch seen and then reused. One per thread and
    // shared by every layer (layers run one after another), as GemmF32Bf16 keeps its
    // bf16 copy of x: a prefill chunk's buffers are held once, not once per MoE layer.
    static thread_local Workspace ws;
    float* xg = bf16_compute_ ? nullptr : Grow(ws.x_rows, total * h);
    uint32_t* xb = bf16_compute_ ? Grow(ws.x_pairs, total * kp_h) : nullptr;
    float* gu = Grow(ws.gate_up_out, total * ld_gu);
    float* act = Grow(ws.act, total * inter);
    uint32_t* actb = bf16_compute_ ? Grow(ws.act_pairs, total * kp_i) : nullptr;
    float* y = Grow(ws.down_out, total * h);
    std::vector<int32_t>& active = ws.active;
    std::vector<UpItem>& up_list = ws.up_items;
    std::vector<DownItem>& down_list = ws.down_items;
    active.clear();
    up_list.clear();
    down_list.clear();
    const int64_t tile = GemmRowTile(bf16_compute_ ? 4 * kp_h : 4 * h);
    for (int64_t e = 0; e < experts; ++e) {
      if (off[e + 1] == off[e]) continue;  // never read
      active.push_back(static_cast<int32_t>(e));
      for (int64_t r0 = off[e]; r0 < off[e + 1]; r0 += tile) {
        const int64_t n = std::min<int64_t>(tile, off[e + 1] - r0);
        for (int64_t q = 0; q < blocks_; ++q) up_list.push_back({e, q, r0, n});
      }
    }
    // Runs of down panels of about 96 KB (24 KB panels at I = 384: four).
    const int64_t down_panels = down_[0].num_panels();
    const int64_t run = std::max<int64_t>(1, (96 * 1024) / (kp_i * 2 * kBlock * 2));
    for (const int32_t e : active) {
      for (int64_t p = 0; p < down_panels; p += run) down_list.push_back({e, p, std::min(down_panels, p + run)});
    }
    const int64_t up_items = static_cast<int64_t>(up_list.size());
    const int64_t down_items = static_cast<int64_t>(down_list.size());
    const int64_t out_blocks = (h + kBlock - 1) / kBlock;

#pragma omp parallel
    {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < total; ++i) {
        const float* src = xs + static_cast<int64_t>(rows[i]) * h;
        if (bf16_compute_) {
          RoundRowsToBf16Pairs(src, 1, h, kp_h, xb + i * kp_h);
        } else {
          std::memcpy(xg + i * h, src, h * sizeof(float));
        }
      }
      // Gate-up and SwiGLU. Guided, as GemmF32Bf16: if the OS takes a core, the other
      // thread picks up the items instead of the layer waiting at the barrier.
#pragma omp for schedule(guided)
      for (int64_t it = 0; it < up_items; ++it) {
        const UpItem& item = up_list[it];
        const PackedBf16Weight& w = gate_up_[item.expert];
        float* g = gu + item.row0 * ld_gu;
        const float* xr = xg != nullptr ? xg + item.row0 * h : nullptr;
        const uint32_t* xbr = xb != nullptr ? xb + item.row0 * kp_h : nullptr;
        GemmF32Bf16Panel(xr, xbr, item.rows, w, 2 * item.block, g, ld_gu);
        GemmF32Bf16Panel(xr, xbr, item.rows, w, 2 * item.block + 1, g, ld_gu);
        const int64_t c0 = item.block * kBlock;
        const int64_t valid = std::min(kBlock, inter - c0);
        for (int64_t r = 0; r < item.rows; ++r) {
          const float* gr = g + r * ld_gu + 2 * c0;
          const float* ur = gr + kBlock;
          float* a = act + (item.row0 + r) * inter + c0;
          for (int64_t c = 0; c < valid; ++c) a[c] = SiluTimes(gr[c], ur[c]);
          // A 32-column block is one chunk of GemmF32Bf16's own row rounding.
          if (actb != nullptr) RoundRowsToBf16Pairs(a, 1, valid, (valid + 1) / 2, actb + (item.row0 + r) * kp_i + c0 / 2);
        }
      }
      // Down: (expert, run of panels) items, so each item streams one contiguous stretch
      // of an expert's weight.
#pragma omp for schedule(guided)
      for (int64_t it = 0; it < down_items; ++it) {
        const DownItem& item = down_list[it];
        const int64_t r0 = off[item.expert], n = off[item.expert + 1] - r0;
        for (int64_t p = item.panel0; p < item.panel1; ++p) {
          GemmF32Bf16Panel(act + r0 * inter, actb != nullptr ? actb + r0 * kp_i : nullptr, n, down_[item.expert],
                           p, y + r0 * h, h);
        }
      }
      // The weighted scatter: one item owns 32 output columns for every expert, so each
      // element adds its experts in ascending id, as the per-expert loop did.
#pragma omp for schedule(static)
      for (int64_t p = 0; p < out_blocks; ++p) {
        const int64_t c0 = p * kBlock;
        const int64_t valid = std::min(kBlock, h - c0);
        for (int64_t t = 0; t < tokens; ++t) std::memset(o + t * h + c0, 0, valid * sizeof(float));
        for (int64_t i = 0; i < total; ++i) {
          ScaleAdd(scale[i], y + i * h + c0, o + static_cast<int64_t>(rows[i]) * h + c0, valid);
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  int64_t blocks_;  // 32-column blocks of the intermediate size
  bool bf16_compute_;
  std::vector<PackedBf16Weight> gate_up_;  // [2·32·blocks, H], interleaved by block
  std::vector<PackedBf16Weight> down_;     // [H, I]
};

// Experts quantized at load (--quantization int8|int4): the same four loops as the bf16
// body, over the int8 and int4 GEMMs' own panel kernels (cpu/gemm_int8_cpu.h,
// cpu/gemm_int4_cpu.h). Each expert's weights are quantized exactly as a Linear with the
// same options quantizes them: int8 per output channel and int4 per (output channel,
// group of K), so interleaving gate_up's rows by block changes no value, and every GEMM
// output is that Linear's own chain over K. The result is therefore the per-expert loop
// over quantized Linears bit for bit, and each row's bits ignore the batch it shares.
//
// int4 needs, per activation row, the row quantized to int8 per 32 K, its block scales
// and its group sums (the int4 GEMM's prologue, Int4QuantizeRow). The gathered rows get
// theirs in the gather loop; the SwiGLU rows in the gate-up item that wrote them, since
// an item there spans whole groups of the down weight's K (group_size / 32 blocks), and
// its 2·group_size/32 consecutive panels let the int4 kernel interleave 4 panels at one
// row. No extra barrier, no extra pass.
class QuantizedGroupedExperts final : public GroupedExperts {
 public:
  static absl::StatusOr<std::unique_ptr<GroupedExperts>> Create(absl::Span<const Tensor> gate_up,
                                                                absl::Span<const Tensor> down,
                                                                const LinearOptions& options) {
    const bool int4 = options.quantization == WeightQuantization::kInt4;
    if (int4 && options.group_size != 32 && options.group_size != 64 && options.group_size != 128) {
      return absl::InvalidArgumentError(
          absl::StrCat("GroupedExperts: int4 group size must be 32, 64 or 128, got ", options.group_size));
    }
    for (size_t e = 0; e < gate_up.size(); ++e) {
      for (const Tensor* t : {&gate_up[e], &down[e]}) {
        if (t->dtype() != DType::kF32 && t->dtype() != DType::kBF16 && t->dtype() != DType::kF16) {
          // E.g. a pre-quantized checkpoint's rows: never re-read as another format.
          return absl::FailedPreconditionError(
              absl::StrCat("GroupedExperts: quantizing experts at load needs f32, bf16 or f16 weights; expert ", e,
                           " is ", DTypeName(t->dtype())));
        }
      }
    }
    const int64_t h = gate_up[0].dim(1), inter = gate_up[0].dim(0) / 2;
    const int64_t blocks = (inter + kBlock - 1) / kBlock;
    std::vector<PackedInt8Weight> gate_up8, down8;
    std::vector<PackedInt4Weight> gate_up4, down4;
    // gate_up is interleaved by 32-column block as in the bf16 body (gate block q, then up
    // block q; a short last block zero-padded), widened to f32 first: exact for bf16 and
    // f16, and what both quantizers read.
    std::vector<float> interleaved(static_cast<size_t>(2 * blocks * kBlock * h));
    std::vector<float> widened(static_cast<size_t>(h * inter));
    for (size_t e = 0; e < gate_up.size(); ++e) {
      std::fill(interleaved.begin(), interleaved.end(), 0.f);
      for (int64_t col = 0; col < inter; ++col) {
        const int64_t qb = col / kBlock, c = col % kBlock;
        Widen(gate_up[e], col * h, h, &interleaved[((2 * qb) * kBlock + c) * h]);
        Widen(gate_up[e], (inter + col) * h, h, &interleaved[((2 * qb + 1) * kBlock + c) * h]);
      }
      Widen(down[e], 0, h * inter, widened.data());
      if (int4) {
        gate_up4.emplace_back(interleaved.data(), DType::kF32, 2 * blocks * kBlock, h, options.group_size);
        down4.emplace_back(widened.data(), DType::kF32, h, inter, options.group_size);
        if (!gate_up4.back().all_finite() || !down4.back().all_finite()) {
          // As the int4 Linear: no scale represents them.
          return absl::InvalidArgumentError(
              absl::StrCat("GroupedExperts: expert ", e, "'s weights hold NaN or infinite values"));
        }
      } else {
        gate_up8.emplace_back(interleaved.data(), 2 * blocks * kBlock, h);
        down8.emplace_back(widened.data(), h, inter);
      }
    }
    const size_t bytes = int4 ? gate_up4[0].bytes() + down4[0].bytes() : gate_up8[0].bytes() + down8[0].bytes();
    return std::unique_ptr<GroupedExperts>(new QuantizedGroupedExperts(
        static_cast<int64_t>(gate_up.size()), h, inter, options.quantization, bytes, blocks,
        int4 ? options.group_size / kBlock : 1, std::move(gate_up8), std::move(down8), std::move(gate_up4),
        std::move(down4)));
  }

 protected:
  absl::Status Run(const Tensor& x, const Tensor& expert_offsets, const Tensor& sorted_rows,
                   const Tensor& sorted_weights, Tensor* out) override {
    const int64_t tokens = x.dim(0);
    if (auto s = CheckGroupingContents(expert_offsets, sorted_rows, tokens); !s.ok()) return s;
    const int64_t h = hidden(), inter = intermediate(), experts = num_experts();
    const int32_t* off = expert_offsets.data<int32_t>();
    const int32_t* rows = sorted_rows.data<int32_t>();
    const float* scale = sorted_weights.data<float>();
    const float* xs = x.data<float>();
    float* o = out->data<float>();
    const int64_t total = off[experts];
    if (total == 0) {
      std::memset(o, 0, out->bytes());
      return absl::OkStatus();
    }
    const bool int4 = quantization() == WeightQuantization::kInt4;
    // Row strides: the int4 kernel reads rows quantized to int8 and padded to 8 K, plus
    // one scale per 32 K and one sum per group.
    const int64_t ld_x = int4 ? gate_up4_[0].padded_k() : h;
    const int64_t groups_h = int4 ? gate_up4_[0].num_groups() : 0;
    const int64_t blocks_h = int4 ? Int4ActivationBlocks(h) : 0;
    const int64_t ld_gu = 2 * blocks_ * kBlock;
    const int64_t ld_act = int4 ? down4_[0].padded_k() : inter;
    const int64_t groups_i = int4 ? down4_[0].num_groups() : 0;
    const int64_t blocks_i = int4 ? Int4ActivationBlocks(inter) : 0;
    const int64_t gs = int4 ? gate_up4_[0].group_size() : 0;
    const Int4Kernel body = Int4SelectedKernel();
    static thread_local QuantizedWorkspace ws;  // as the bf16 body: one per thread, all layers
    float* xg = int4 ? nullptr : Grow(ws.x_rows, total * ld_x);
    int8_t* xq = int4 ? Grow(ws.x_q, total * ld_x) : nullptr;
    float* xd = int4 ? Grow(ws.x_scales, total * blocks_h) : nullptr;
    float* xsum = int4 ? Grow(ws.x_sums, total * groups_h) : nullptr;
    float* gu = Grow(ws.gate_up_out, total * ld_gu);
    float* act = Grow(ws.act, total * ld_act);  // f32 SwiGLU rows (int4: then quantized)
    int8_t* actq = int4 ? Grow(ws.act_q, total * ld_act) : nullptr;
    float* actd = int4 ? Grow(ws.act_scales, total * blocks_i) : nullptr;
    float* asum = int4 ? Grow(ws.act_sums, total * groups_i) : nullptr;
    float* y = Grow(ws.down_out, total * h);
    std::vector<int32_t>& active = ws.active;
    std::vector<UpItem>& up_list = ws.up_items;
    std::vector<DownItem>& down_list = ws.down_items;
    active.clear();
    up_list.clear();
    down_list.clear();
    const int64_t tile = GemmRowTile(4 * ld_x);
    for (int64_t e = 0; e < experts; ++e) {
      if (off[e + 1] == off[e]) continue;  // never read
      active.push_back(static_cast<int32_t>(e));
      for (int64_t r0 = off[e]; r0 < off[e + 1]; r0 += tile) {
        const int64_t n = std::min<int64_t>(tile, off[e + 1] - r0);
        // UpItem.block is the item's first block; it runs up to chunk_blocks_ of them.
        for (int64_t q = 0; q < blocks_; q += chunk_blocks_) up_list.push_back({e, q, r0, n});
      }
    }
    // Down: each expert's panels in near-equal runs of about 96 KB, a multiple of 4
    // panels for int4 (the kernel's 4-panel calls at one row).
    const int64_t down_panels = int4 ? down4_[0].num_panels() : down8_[0].num_panels();
    const int64_t panel_bytes =
        int4 ? down4_[0].panel_words() * static_cast<int64_t>(sizeof(uint32_t)) : kBlock * inter;
    const int64_t longest = std::max<int64_t>(1, (96 * 1024) / panel_bytes);
    const int64_t runs = (down_panels + longest - 1) / longest;
    int64_t run = (down_panels + runs - 1) / runs;
    if (int4) run = (run + 3) / 4 * 4;
    for (const int32_t e : active) {
      for (int64_t p = 0; p < down_panels; p += run) down_list.push_back({e, p, std::min(down_panels, p + run)});
    }
    const int64_t up_items = static_cast<int64_t>(up_list.size());
    const int64_t down_items = static_cast<int64_t>(down_list.size());
    const int64_t out_blocks = (h + kBlock - 1) / kBlock;

#pragma omp parallel
    {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < total; ++i) {
        const float* src = xs + static_cast<int64_t>(rows[i]) * h;
        if (int4) {
          Int4QuantizeRow(src, h, gs, xq + i * ld_x, xd + i * blocks_h, xsum + i * groups_h, body);
        } else {
          std::memcpy(xg + i * ld_x, src, h * sizeof(float));
        }
      }
      // Gate-up, SwiGLU and (int4) the down weight's quantized activations of the columns
      // written.
#pragma omp for schedule(guided)
      for (int64_t it = 0; it < up_items; ++it) {
        const UpItem& item = up_list[it];
        const int64_t q0 = item.block, q1 = std::min(blocks_, q0 + chunk_blocks_);
        float* g = gu + item.row0 * ld_gu;
        if (int4) {
          GemmInt4Panels(xq + item.row0 * ld_x, xd + item.row0 * blocks_h, xsum + item.row0 * groups_h, item.rows,
                         gate_up4_[item.expert], 2 * q0, 2 * q1, g, ld_gu, body);
        } else {
          for (int64_t p = 2 * q0; p < 2 * q1; ++p) {
            GemmF32Int8Panel(xg + item.row0 * ld_x, item.rows, gate_up8_[item.expert], p, g, ld_gu);
          }
        }
        const int64_t c_end = std::min(inter, q1 * kBlock);
        for (int64_t r = 0; r < item.rows; ++r) {
          float* a = act + (item.row0 + r) * ld_act;
          for (int64_t qb = q0; qb < q1; ++qb) {
            const int64_t c0 = qb * kBlock;
            const int64_t valid = std::min(kBlock, inter - c0);
            const float* gr = g + r * ld_gu + 2 * c0;
            const float* ur = gr + kBlock;
            for (int64_t c = 0; c < valid; ++c) a[c0 + c] = SiluTimes(gr[c], ur[c]);
          }
          if (int4) {
            // c0 is a group boundary (chunk_blocks_·32 = group_size); at the row's end the
            // quantized row is zero-padded to ld_act.
            const int64_t c0 = q0 * kBlock, row = item.row0 + r;
            Int4QuantizeRow(a + c0, c_end - c0, gs, actq + row * ld_act + c0,
                            actd + row * blocks_i + Int4ActivationBlocks(c0), asum + row * groups_i + c0 / gs, body);
          }
        }
      }
      // Down: (expert, run of panels) items, each streaming one contiguous stretch.
#pragma omp for schedule(guided)
      for (int64_t it = 0; it < down_items; ++it) {
        const DownItem& item = down_list[it];
        const int64_t r0 = off[item.expert], n = off[item.expert + 1] - r0;
        if (int4) {
          GemmInt4Panels(actq + r0 * ld_act, actd + r0 * blocks_i, asum + r0 * groups_i, n, down4_[item.expert],
                         item.panel0, item.panel1, y + r0 * h, h, body);
        } else {
          for (int64_t p = item.panel0; p < item.panel1; ++p) {
            GemmF32Int8Panel(act + r0 * ld_act, n, down8_[item.expert], p, y + r0 * h, h);
          }
        }
      }
      // The weighted scatter, as the bf16 body: experts in ascending id per element.
#pragma omp for schedule(static)
      for (int64_t p = 0; p < out_blocks; ++p) {
        const int64_t c0 = p * kBlock;
        const int64_t valid = std::min(kBlock, h - c0);
        for (int64_t t = 0; t < tokens; ++t) std::memset(o + t * h + c0, 0, valid * sizeof(float));
        for (int64_t i = 0; i < total; ++i) {
          ScaleAdd(scale[i], y + i * h + c0, o + static_cast<int64_t>(rows[i]) * h + c0, valid);
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  struct QuantizedWorkspace {
    std::vector<float> x_rows, x_sums, gate_up_out, act, act_sums, down_out;
    std::vector<float> x_scales, act_scales;  // int4: per 32 K of x and of the SwiGLU rows
    std::vector<int8_t> x_q, act_q;           // int4: those rows quantized
    std::vector<int32_t> active;
    std::vector<UpItem> up_items;
    std::vector<DownItem> down_items;
  };

  QuantizedGroupedExperts(int64_t experts, int64_t hidden, int64_t inter, WeightQuantization quantization,
                          size_t expert_bytes, int64_t blocks, int64_t chunk_blocks,
                          std::vector<PackedInt8Weight> gate_up8, std::vector<PackedInt8Weight> down8,
                          std::vector<PackedInt4Weight> gate_up4, std::vector<PackedInt4Weight> down4)
      : GroupedExperts(experts, hidden, inter, Device::kCpu, expert_bytes, quantization),
        blocks_(blocks),
        chunk_blocks_(chunk_blocks),
        gate_up8_(std::move(gate_up8)),
        down8_(std::move(down8)),
        gate_up4_(std::move(gate_up4)),
        down4_(std::move(down4)) {}

  // dst[0, n) = t's elements [first, first + n) as f32.
  static void Widen(const Tensor& t, int64_t first, int64_t n, float* dst) {
    switch (t.dtype()) {
      case DType::kBF16:
        for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(t.data<uint16_t>()[first + i]);
        break;
      case DType::kF16:
        for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(t.data<uint16_t>()[first + i]);
        break;
      default:
        std::memcpy(dst, t.data<float>() + first, n * sizeof(float));
    }
  }

  int64_t blocks_;        // 32-column blocks of the intermediate size
  int64_t chunk_blocks_;  // blocks per gate-up item: group_size / 32 for int4, else 1
  std::vector<PackedInt8Weight> gate_up8_, down8_;  // int8: [2·32·blocks, H] interleaved, [H, I]
  std::vector<PackedInt4Weight> gate_up4_, down4_;  // int4: the same shapes
};

// Other weight dtypes (f32 through oneDNN), and pre-quantized checkpoint experts (FP8,
// GPTQ row references: each expert's Linear is the FP8 / GPTQ body, cpu/prequantized_
// linear_cpu.cc, plain bf16 rows of an expert kept out of the conversion included): the
// per-expert loop, with its buffers kept. Experts may differ in format (some FP8, some
// bf16, as modules_to_not_convert can make them); each runs its own Linear.
class LinearGroupedExperts final : public GroupedExperts {
 public:
  LinearGroupedExperts(std::vector<std::unique_ptr<Linear>> gate_up, std::vector<std::unique_ptr<Linear>> down,
                       int64_t hidden, int64_t inter)
      : GroupedExperts(static_cast<int64_t>(gate_up.size()), hidden, inter, Device::kCpu,
                       MeanExpertBytes(gate_up, down)),
        gate_up_(std::move(gate_up)),
        down_(std::move(down)) {}

  // The packed bytes of one expert, averaged over the experts (they are all equal unless
  // the checkpoint mixes formats across experts).
  static size_t MeanExpertBytes(const std::vector<std::unique_ptr<Linear>>& gate_up,
                                const std::vector<std::unique_ptr<Linear>>& down) {
    size_t total = 0;
    for (size_t e = 0; e < gate_up.size(); ++e) total += gate_up[e]->weight_bytes() + down[e]->weight_bytes();
    return (total + gate_up.size() / 2) / gate_up.size();
  }

 protected:
  absl::Status Run(const Tensor& x, const Tensor& expert_offsets, const Tensor& sorted_rows,
                   const Tensor& sorted_weights, Tensor* out) override {
    const int64_t tokens = x.dim(0);
    if (auto s = CheckGroupingContents(expert_offsets, sorted_rows, tokens); !s.ok()) return s;
    const int64_t h = hidden(), inter = intermediate();
    const int32_t* off = expert_offsets.data<int32_t>();
    const int32_t* rows = sorted_rows.data<int32_t>();
    const float* scale = sorted_weights.data<float>();
    float* o = out->data<float>();
    std::memset(o, 0, out->bytes());
    int64_t largest = 0;
    for (int64_t e = 0; e < num_experts(); ++e) largest = std::max<int64_t>(largest, off[e + 1] - off[e]);
    if (largest == 0) return absl::OkStatus();
    if (capacity_ < largest) {
      capacity_ = largest;
      auto xe = Tensor::Empty({capacity_, h}, DType::kF32);
      auto gu = Tensor::Empty({capacity_, 2 * inter}, DType::kF32);
      auto act = Tensor::Empty({capacity_, inter}, DType::kF32);
      auto ye = Tensor::Empty({capacity_, h}, DType::kF32);
      if (!xe.ok() || !gu.ok() || !act.ok() || !ye.ok()) {
        capacity_ = 0;
        return absl::ResourceExhaustedError("GroupedExperts: cannot allocate the workspace");
      }
      xe_ = *std::move(xe);
      gu_ = *std::move(gu);
      act_ = *std::move(act);
      ye_ = *std::move(ye);
    }
    for (int64_t e = 0; e < num_experts(); ++e) {
      const int64_t r0 = off[e], n = off[e + 1] - off[e];
      if (n == 0) continue;
      Tensor xe = xe_.Rows(0, n), gu = gu_.Rows(0, n), act = act_.Rows(0, n), ye = ye_.Rows(0, n);
      for (int64_t i = 0; i < n; ++i) {
        std::memcpy(xe.data<float>() + i * h, x.data<float>() + static_cast<int64_t>(rows[r0 + i]) * h,
                    h * sizeof(float));
      }
      if (auto s = gate_up_[e]->Forward(xe, &gu); !s.ok()) return s;
      for (int64_t i = 0; i < n; ++i) {
        const float* g = gu.data<float>() + i * 2 * inter;
        float* a = act.data<float>() + i * inter;
        for (int64_t j = 0; j < inter; ++j) a[j] = SiluTimes(g[j], g[inter + j]);
      }
      if (auto s = down_[e]->Forward(act, &ye); !s.ok()) return s;
      for (int64_t i = 0; i < n; ++i) {
        ScaleAdd(scale[r0 + i], ye.data<float>() + i * h, o + static_cast<int64_t>(rows[r0 + i]) * h, h);
      }
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Linear>> gate_up_;
  std::vector<std::unique_ptr<Linear>> down_;
  int64_t capacity_ = 0;
  Tensor xe_, gu_, act_, ye_;
};

}  // namespace
}  // namespace cpu

template <>
absl::Status AlignRowsByExpertBody<Device::kCpu>(const Tensor& experts, const Tensor& weights,
                                                 Tensor* expert_offsets, Tensor* sorted_rows,
                                                 Tensor* sorted_weights, Tensor* expert_tokens) {
  const int64_t entries = experts.numel();
  const int64_t k = experts.dim(1);
  const int64_t num_experts = expert_offsets->numel() - 1;
  const int32_t* ex = experts.data<int32_t>();
  const float* w = weights.data<float>();
  for (int64_t i = 0; i < entries; ++i) {
    if (ex[i] < -1 || ex[i] >= num_experts) {
      return absl::OutOfRangeError(absl::StrCat("AlignRowsByExpert: expert id ", ex[i], " outside [-1, ",
                                                num_experts, ")"));
    }
  }
  int32_t* off = expert_offsets->data<int32_t>();
  std::fill(off, off + num_experts + 1, 0);
  for (int64_t i = 0; i < entries; ++i) {
    if (ex[i] >= 0) ++off[ex[i] + 1];
  }
  for (int64_t e = 0; e < num_experts; ++e) off[e + 1] += off[e];
  // Entries go in token order, so each expert's tokens come out ascending.
  static thread_local std::vector<int32_t> cursor;
  cursor.assign(off, off + num_experts);
  int32_t* rows = sorted_rows->data<int32_t>();
  float* sw = sorted_weights->data<float>();
  for (int64_t i = 0; i < entries; ++i) {
    const int32_t e = ex[i];
    if (e < 0) continue;
    const int32_t pos = cursor[e]++;
    rows[pos] = static_cast<int32_t>(i / k);
    sw[pos] = w[i];
  }
  const int64_t used = off[num_experts];
  std::fill(rows + used, rows + entries, 0);
  std::fill(sw + used, sw + entries, 0.f);
  if (expert_tokens != nullptr) {
    int64_t* counter = expert_tokens->data<int64_t>();
    for (int64_t e = 0; e < num_experts; ++e) {
      if (off[e + 1] == off[e]) continue;
      std::atomic_ref<int64_t>(counter[e]).fetch_add(off[e + 1] - off[e], std::memory_order_relaxed);
    }
  }
  return absl::OkStatus();
}

template <>
absl::StatusOr<std::vector<uint64_t>> ReadExpertTokenCounterBody<Device::kCpu>(const Tensor& expert_tokens) {
  std::vector<uint64_t> counts(expert_tokens.numel());
  int64_t* counter = expert_tokens.data<int64_t>();
  for (size_t e = 0; e < counts.size(); ++e) {
    counts[e] = static_cast<uint64_t>(std::atomic_ref<int64_t>(counter[e]).load(std::memory_order_relaxed));
  }
  return counts;
}

namespace {
// A Linear's refusal, with the expert it was for (same code).
absl::Status ExpertError(size_t expert, absl::string_view which, const absl::Status& status) {
  return absl::Status(status.code(),
                      absl::StrCat("GroupedExperts: expert ", expert, " ", which, ": ", status.message()));
}
}  // namespace

template <>
absl::StatusOr<std::unique_ptr<GroupedExperts>> CreateGroupedExpertsBody<Device::kCpu>(
    absl::Span<const Tensor> gate_up, absl::Span<const Tensor> down, const LinearOptions& options) {
  using cpu::LinearGroupedExperts;
  using cpu::PackedGroupedExperts;
  if (options.quantization != WeightQuantization::kNone) {
    return cpu::QuantizedGroupedExperts::Create(gate_up, down, options);
  }
  bool all_bf16 = true;
  for (size_t e = 0; e < gate_up.size(); ++e) {
    all_bf16 = all_bf16 && gate_up[e].dtype() == DType::kBF16 && down[e].dtype() == DType::kBF16;
  }
  if (all_bf16) {
    return std::unique_ptr<GroupedExperts>(std::make_unique<PackedGroupedExperts>(
        gate_up, down, GetMatmulPrecision() == MatmulPrecision::kBf16));
  }
  std::vector<std::unique_ptr<Linear>> gu, dn;
  for (size_t e = 0; e < gate_up.size(); ++e) {
    // Pre-quantized experts (kWeightRowRefs) are packed as stored by the FP8 / GPTQ bodies.
    auto g = Linear::Create(gate_up[e], Device::kCpu, options);
    if (!g.ok()) return ExpertError(e, "gate_up", g.status());
    auto d = Linear::Create(down[e], Device::kCpu, options);
    if (!d.ok()) return ExpertError(e, "down", d.status());
    gu.push_back(*std::move(g));
    dn.push_back(*std::move(d));
  }
  return std::unique_ptr<GroupedExperts>(std::make_unique<LinearGroupedExperts>(
      std::move(gu), std::move(dn), gate_up[0].dim(1), gate_up[0].dim(0) / 2));
}

}  // namespace sluice::kernels
