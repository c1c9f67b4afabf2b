// Compute ops of the Gated DeltaNet mixer (the linear-attention layers of Qwen3-Next and
// Qwen3.5): the short causal convolution, the gated delta rule (chunked prefill and
// recurrent decode) and the gated RMSNorm on its output.
//
// The math follows /work/shared/notes/architectures.md ("Gated DeltaNet") and Hugging
// Face transformers' qwen3_next module (causal_conv1d_update, torch_chunk_gated_delta_rule,
// torch_recurrent_gated_delta_rule, l2norm, Qwen3NextRMSNormGated), which the tests use as
// the oracle. gated_delta_net.cc checks shapes, dtypes and devices and dispatches on the
// device (kernels/dispatch.h); cpu/gated_delta_net_cpu.cc holds the reference bodies, which
// also check the sequence metadata (segments, slots: contents the neutral half never reads).
//
// Batches are ragged: the tokens of all sequences are packed back to back along dim 0,
// and each sequence owns one slot of the persistent state tensors (the conv tail and the
// recurrent state), picked by LinearAttentionSequence::state_slot.
#ifndef SLUICE_KERNELS_GATED_DELTA_NET_H_
#define SLUICE_KERNELS_GATED_DELTA_NET_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

// One sequence of a ragged linear-attention batch: its tokens this step are rows
// [start, start + length) of the packed inputs and outputs, and its state lives in row
// state_slot of the state tensors. Segments must not overlap and slots must be distinct
// within one call (each sequence's state is read and written once per call).
struct LinearAttentionSequence {
  int32_t start = 0;
  int32_t length = 0;
  int32_t state_slot = 0;
  // True for a new sequence: the op treats the slot's state as zeros (whatever the slot
  // holds) and overwrites it. False continues from the stored state (decode, or the next
  // chunk of a prefill split across engine steps).
  bool zero_initial_state = false;
  // A snapshot of the state inside the segment (prefix caching): when checkpoint_slot >= 0,
  // the op also writes the state as it stands after the first checkpoint_len tokens of
  // the segment (1 <= checkpoint_len <= length) into row checkpoint_slot of the same state
  // tensor, bit-identical to what state_slot would hold had the segment been exactly
  // checkpoint_len tokens long; the outputs and state_slot's final state are the same bits
  // as without a checkpoint. The checkpoint slot must differ from every state_slot and
  // every other checkpoint_slot of the call. GatedDeltaRule's chunked path only stops at
  // its chunk ends: there checkpoint_len must be a multiple of kGatedDeltaRuleChunk or
  // equal to length (so that resuming from the snapshot keeps the chunk grid of the
  // uninterrupted segment); the recurrent path and the conv accept any length.
  int32_t checkpoint_slot = -1;
  int32_t checkpoint_len = 0;
};

// The sequences of a ragged linear-attention batch as tensors on the compute device,
// packed once per step: sequence s is LinearAttentionSequence{start[s], length[s],
// state_slot[s], zero_initial_state[s] != 0}. The same rules hold (segments inside
// [0, T) and disjoint, slots distinct and inside the state tensor); the body checks
// them, since they are tensor contents. checkpoint_slot and checkpoint_len are both
// undefined (no checkpoints in the call) or both i32 [S]; a negative checkpoint_slot[s]
// means none for sequence s.
struct LinearAttentionBatch {
  Tensor start;               // i32 [S]
  Tensor length;              // i32 [S]
  Tensor state_slot;          // i32 [S]
  Tensor zero_initial_state;  // i32 [S], non-zero for a new sequence
  Tensor checkpoint_slot;     // i32 [S] or undefined
  Tensor checkpoint_len;      // i32 [S] or undefined
};

// Depthwise causal conv1d over C channels with kernel size K (no bias), then SiLU:
//   y[t, c] = silu( Σ_{j=0}^{K-1} w[c, j] · xpad[t + j, c] ),  xpad = [state (K-1 rows); x]
// per sequence, which is transformers' causal_conv1d_update (and causal_conv1d_fn with
// zero state). Afterwards each sequence's state holds the last K-1 rows of xpad, so a
// segment shorter than K-1 keeps the newest part of the older state.
//   x:          f32 [T, C]           tokens of all sequences, packed
//   weight:     f32 [C, K]           HF's conv1d.weight [C, 1, K] with the 1 dropped
//   conv_state: f32 [num_slots, C, K-1]   column K-2 is the newest input (HF keeps K
//                                         columns; the oldest one never reaches an output)
//   y:          f32 [T, C]; may be the same tensor as x (in place).
absl::Status CausalConv1dSilu(const Tensor& x, const Tensor& weight,
                              const LinearAttentionBatch& batch, Tensor* conv_state, Tensor* y);
// Host-metadata form, kept so that existing callers compile; to be removed once the
// engine uploads a LinearAttentionBatch. Same body, same bits.
absl::Status CausalConv1dSilu(const Tensor& x, const Tensor& weight,
                              absl::Span<const LinearAttentionSequence> sequences,
                              Tensor* conv_state, Tensor* y);

// Which algorithm GatedDeltaRule runs per sequence. Both give the same result up to fp32
// rounding; kAuto is the one to use in serving, the explicit ones exist for tests.
enum class GatedDeltaRuleMode {
  kAuto,       // recurrent for length-1 segments (decode), chunked for longer ones
  kRecurrent,  // token by token (torch_recurrent_gated_delta_rule)
  kChunked,    // chunks of kGatedDeltaRuleChunk tokens, WY/UT form (torch_chunk_gated_delta_rule)
};

inline constexpr int kGatedDeltaRuleChunk = 64;

// The gated delta rule with in-kernel q/k L2 normalisation (transformers'
// use_qk_l2norm_in_kernel=True). Per value head h, with key head h / (H_v / H_k) (GVA,
// as repeat_interleave would give) and state S of shape [d_k, d_v] in fp32:
//   q ← l2norm(q) / √d_k,  k ← l2norm(k),  l2norm(x) = x · rsqrt(Σx² + 1e-6)
//   S ← exp(g_t) S;  δ = β_t (v_t − Sᵀ k_t);  S ← S + k_t δᵀ;  o_t = Sᵀ q_t
//   q, k:  f32 [T, H_k, d_k]
//   v:     f32 [T, H_v, d_v]       H_v must be a multiple of H_k
//   g:     f32 [T, H_v]            log decay, ≤ 0
//   beta:  f32 [T, H_v]            in (0, 1)
//   state: f32 [num_slots, H_v, d_k, d_v]   read (unless zero_initial_state) and replaced
//                                            by each sequence's final state
//   out:   f32 [T, H_v, d_v]; must not alias the inputs.
absl::Status GatedDeltaRule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                            const Tensor& beta, const LinearAttentionBatch& batch, Tensor* state,
                            Tensor* out, GatedDeltaRuleMode mode = GatedDeltaRuleMode::kAuto);
// Host-metadata form, kept so that existing callers compile; to be removed once the
// engine uploads a LinearAttentionBatch. Same body, same bits.
absl::Status GatedDeltaRule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                            const Tensor& beta, absl::Span<const LinearAttentionSequence> sequences,
                            Tensor* state, Tensor* out,
                            GatedDeltaRuleMode mode = GatedDeltaRuleMode::kAuto);

// Copies row src of dim 0 of `state` to row dst, for every copy: the slot copies of
// prefix caching (a snapshot into a sequence's slot, a slot into a snapshot). Any dtype,
// rank >= 1. Slots must lie in [0, dim 0), src != dst, and no dst may appear twice or
// also be a src of the same call (INVALID_ARGUMENT otherwise, before anything is copied),
// so the copies are independent of their order. Empty copies do nothing.
struct SlotCopy {
  int32_t src;
  int32_t dst;
};
absl::Status CopyStateSlots(absl::Span<const SlotCopy> copies, Tensor* state);

// The gated RMSNorm on the Gated DeltaNet output (transformers' Qwen3NextRMSNormGated,
// norm before gate, weight applied directly, not 1 + w), over the last dimension D:
//   y = w ⊙ (x · rsqrt(mean(x²) + eps)) ⊙ silu(z)
//   x, z, out: f32 [..., D] of the same shape (typically [T, H_v, d_v]); out may be x.
//   weight:    f32 [D]
absl::Status GatedRmsNorm(const Tensor& x, const Tensor& z, const Tensor& weight, float eps,
                          Tensor* out);

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_GATED_DELTA_NET_H_
