// f32-activation × GPTQ int4 weight GEMM/GEMV, f32 accumulation, for pre-quantized GPTQ
// checkpoints (kernels/prequantized_weight.h has the checkpoint format). The weight is
// repacked at load without loss: the 4-bit codes as stored, each group's f16 scale as
// its f16 bits, each zero point as an integer.
//
// Why not the int4 kernel's packing (cpu/gemm_int4_cpu.h): it keeps a bf16 scale and a
// bf16 minimum per group, and GPTQ's f16 scales (11 significant bits) are not bf16
// values (8), nor is −scale·zero. So this kernel has its own group header: a 32-bit lane
// per column holding the f16 scale s (low half) and c = 8 − z as an int16 (high half);
// s·c is exact in f32 (at most 15 significant bits), so the kernel's m = s·c is the
// exact f32 product. The codes are decoded as q − 8 (a vpermps from the table −8..7),
// so a symmetric group (z = 8, c = 0) needs no correction at all:
//   w = s·(q − z) = s·(q − 8) + s·(8 − z).
//
// Input order: act-order checkpoints (desc_act, g_idx) put input k in group g_idx[k],
// not k / group_size. The packing sorts the inputs by group (stable, k ascending within a
// group), pads each group to a multiple of 8 "slots" with zero activations, and the
// GEMM gathers x into that slot order (exactly: a permutation and zeros). Without g_idx
// and with group_size a multiple of 8 the slots are the inputs themselves: no gather.
//
// Layout: panels of 32 output columns, one sequential stream each: per group, two 64-byte
// lines of headers (columns 0..15, 16..31), then per 8 slots two 64-byte lines whose lane j
// holds the 8 nibbles of column j (nibble i for slot 8b + i), as the int4 kernel's.
//
// Every output is one chain: per group g (ascending), a_g = Σ_{slot∈g} x_slot·(q − 8)
// (one fma chain, slots ascending), then y = fma(s·c, Σ_{slot∈g} x_slot, fma(s, a_g, y)).
// The chain does not depend on the number of rows M, so a row's result never depends on
// the batch it shares; the AVX-512 body and the scalar one (picked at run time) give the
// same bits.
#ifndef SLUICE_KERNELS_CPU_GEMM_GPTQ_CPU_H_
#define SLUICE_KERNELS_CPU_GEMM_GPTQ_CPU_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace sluice::kernels::cpu {

class PackedGptqWeight {
 public:
  static constexpr int64_t kPanelCols = 32;
  static constexpr int64_t kBlockSlots = 8;

  // The checkpoint's tensors for output columns [col0, col0 + n) of one GPTQ module
  // (the layer's full width is n_total; qzeros has n_total / 8 words per group).
  struct Source {
    const int32_t* qweight = nullptr;  // [k / 8, n_total]
    const int32_t* qzeros = nullptr;   // [groups, n_total / 8]
    const uint16_t* scales = nullptr;  // f16 bits [groups, n_total]
    int64_t n_total = 0;
    int64_t col0 = 0;
    int32_t zero_offset = 0;  // added to every stored zero (1 for GPTQ v1)
  };
  // One run of output rows of the packed weight, all sharing the group assignment.
  struct Rows {
    Source source;
    int64_t n = 0;
  };

  PackedGptqWeight() = default;
  // k inputs in `groups` groups; group_of[k] the group of input k (g_idx, or k / group_size).
  // INVALID_ARGUMENT if a group index is out of range, or a scale is not finite.
  static absl::StatusOr<PackedGptqWeight> Create(const std::vector<Rows>& parts, int64_t k,
                                                 int64_t groups,
                                                 const std::vector<int32_t>& group_of);

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  int64_t num_groups() const { return static_cast<int64_t>(group_slots_.size()) - 1; }
  int64_t num_slots() const { return group_slots_.back(); }
  int64_t num_panels() const { return (n_ + kPanelCols - 1) / kPanelCols; }
  int64_t panel_words() const { return panel_words_; }
  const uint32_t* panel(int64_t p) const { return data_.data() + p * panel_words_; }
  // Slots of group g: [group_slots()[g], group_slots()[g + 1]), each a multiple of 8.
  const std::vector<int64_t>& group_slots() const { return group_slots_; }
  // The input behind each slot, -1 for padding; empty when slot s is input s (no gather).
  const std::vector<int32_t>& slot_input() const { return slot_input_; }
  // Bytes one forward pass reads (codes, headers, padding).
  size_t bytes() const {
    return data_.size() * sizeof(uint32_t) + slot_input_.size() * sizeof(int32_t);
  }

  // The dequantized weight s·(q − z) of column c, input kk, as the published formula gives
  // it in f32 (the reference for tests).
  float Dequantized(int64_t c, int64_t kk) const;

 private:
  int64_t n_ = 0, k_ = 0, panel_words_ = 0;
  std::vector<int64_t> group_slots_;  // groups + 1 offsets
  std::vector<int32_t> slot_input_;
  std::vector<int64_t> input_slot_;  // the slot of each input (Dequantized)
  std::vector<int32_t> input_group_;
  std::vector<uint32_t> data_;
};

bool GptqAvx512Available();

// y[r, c] = Σ_k x[r, k] · dequant(w)[c, k], summed as the header says, for r < m, c < n.
// x: f32 [m, w.k()] (row stride w.k()); y: f32 with row stride ldy. Threads over panels.
// portable forces the scalar body (tests compare the two).
void GemmF32Gptq(const float* x, int64_t m, const PackedGptqWeight& w, float* y, int64_t ldy,
                 bool portable = false);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GEMM_GPTQ_CPU_H_
