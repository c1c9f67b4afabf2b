// Device-neutral half of the Gated DeltaNet ops: argument checks, then dispatch on the
// device. Every defect of the input returns a status; nothing here aborts.
#include "kernels/gated_delta_net.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/gated_delta_net_cpu.h"
#include "kernels/op_checks.h"
#include "kernels/status_macros.h"

namespace sluice::kernels {
namespace {

bool Overlap(const Tensor& a, const Tensor& b) {
  if (a.bytes() == 0 || b.bytes() == 0) return false;
  const char* a0 = static_cast<const char*>(a.raw());
  const char* b0 = static_cast<const char*>(b.raw());
  return a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
}

// Segments lie inside [0, tokens), do not overlap, and use distinct slots in
// [0, num_slots): each sequence's state is then read and written by exactly one task.
absl::Status CheckSequences(absl::string_view op,
                            absl::Span<const LinearAttentionSequence> sequences, int64_t tokens,
                            int64_t num_slots) {
  std::vector<std::pair<int64_t, int64_t>> segments;  // (start, end) of non-empty segments
  std::vector<int32_t> slots;
  segments.reserve(sequences.size());
  slots.reserve(sequences.size());
  for (size_t i = 0; i < sequences.size(); ++i) {
    const LinearAttentionSequence& s = sequences[i];
    const int64_t end = static_cast<int64_t>(s.start) + s.length;
    if (s.start < 0 || s.length < 0 || end > tokens) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": sequence ", i, " covers rows [",
                                                     s.start, ", ", end, ") outside [0, ", tokens,
                                                     ")"));
    }
    if (s.state_slot < 0 || s.state_slot >= num_slots) {
      return absl::OutOfRangeError(absl::StrCat(op, ": sequence ", i, " uses state slot ",
                                                s.state_slot, " outside [0, ", num_slots, ")"));
    }
    if (s.length > 0) segments.emplace_back(s.start, end);
    slots.push_back(s.state_slot);
  }
  std::sort(segments.begin(), segments.end());
  for (size_t i = 1; i < segments.size(); ++i) {
    if (segments[i].first < segments[i - 1].second) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": overlapping sequence segments"));
    }
  }
  std::sort(slots.begin(), slots.end());
  if (std::adjacent_find(slots.begin(), slots.end()) != slots.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": two sequences of one batch share a state slot"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CausalConv1dSilu(const Tensor& x, const Tensor& weight,
                              absl::Span<const LinearAttentionSequence> sequences,
                              Tensor* conv_state, Tensor* y) {
  constexpr absl::string_view kOp = "CausalConv1dSilu";
  if (conv_state == nullptr || y == nullptr) return Expect(false, kOp, "null output");
  SLUICE_RETURN_IF_ERROR(SameDeviceF32(kOp, {&x, &weight, conv_state, y}));
  SLUICE_RETURN_IF_ERROR(
      Expect(x.rank() == 2 && y->shape() == x.shape(), kOp, "x and y must be [T, C] of one shape"));
  SLUICE_RETURN_IF_ERROR(
      Expect(weight.rank() == 2 && weight.dim(0) == x.dim(1) && weight.dim(1) >= 1, kOp,
             "weight must be [C, K] with K >= 1"));
  const int64_t channels = x.dim(1);
  const int64_t kernel = weight.dim(1);
  SLUICE_RETURN_IF_ERROR(Expect(
      conv_state->rank() == 3 && conv_state->dim(1) == channels && conv_state->dim(2) == kernel - 1,
      kOp,
      absl::StrCat("conv_state must be [num_slots, C, K-1] = [*, ", channels, ", ", kernel - 1,
                   "], got ", ShapeString(conv_state->shape()))));
  // y may be x itself (the body handles that) but no other overlap.
  const bool in_place = y->raw() == x.raw();
  SLUICE_RETURN_IF_ERROR(Expect((in_place || !Overlap(x, *y)) && !Overlap(*conv_state, x) &&
                                    !Overlap(*conv_state, *y) && !Overlap(weight, *y) &&
                                    !Overlap(weight, *conv_state),
                                kOp, "outputs overlap the inputs (only y == x is allowed)"));
  SLUICE_RETURN_IF_ERROR(CheckSequences(kOp, sequences, x.dim(0), conv_state->dim(0)));
  cpu::CausalConv1dSilu(x, weight, sequences, conv_state, y);
  return absl::OkStatus();
}

absl::Status GatedDeltaRule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                            const Tensor& beta, absl::Span<const LinearAttentionSequence> sequences,
                            Tensor* state, Tensor* out, GatedDeltaRuleMode mode) {
  constexpr absl::string_view kOp = "GatedDeltaRule";
  if (state == nullptr || out == nullptr) return Expect(false, kOp, "null output");
  SLUICE_RETURN_IF_ERROR(SameDeviceF32(kOp, {&q, &k, &v, &g, &beta, state, out}));
  SLUICE_RETURN_IF_ERROR(
      Expect(q.rank() == 3 && k.shape() == q.shape() && v.rank() == 3 && v.dim(0) == q.dim(0), kOp,
             "q, k must be [T, H_k, d_k] and v [T, H_v, d_v]"));
  const int64_t tokens = q.dim(0);
  const int64_t key_heads = q.dim(1);
  const int64_t head_k_dim = q.dim(2);
  const int64_t value_heads = v.dim(1);
  const int64_t head_v_dim = v.dim(2);
  SLUICE_RETURN_IF_ERROR(
      Expect(key_heads > 0 && value_heads % key_heads == 0 && head_k_dim > 0 && head_v_dim > 0, kOp,
             "H_v must be a positive multiple of H_k"));
  SLUICE_RETURN_IF_ERROR(Expect(
      g.rank() == 2 && g.dim(0) == tokens && g.dim(1) == value_heads && beta.shape() == g.shape(),
      kOp, "g and beta must be [T, H_v]"));
  SLUICE_RETURN_IF_ERROR(Expect(out->shape() == v.shape(), kOp, "out must be [T, H_v, d_v]"));
  SLUICE_RETURN_IF_ERROR(
      Expect(state->rank() == 4 && state->dim(1) == value_heads && state->dim(2) == head_k_dim &&
                 state->dim(3) == head_v_dim,
             kOp,
             absl::StrCat("state must be [num_slots, H_v, d_k, d_v] = [*, ", value_heads, ", ",
                          head_k_dim, ", ", head_v_dim, "], got ", ShapeString(state->shape()))));
  for (const Tensor* input : {&q, &k, &v, &g, &beta}) {
    SLUICE_RETURN_IF_ERROR(Expect(!Overlap(*input, *out) && !Overlap(*input, *state), kOp,
                                  "out and state must not overlap the inputs"));
  }
  SLUICE_RETURN_IF_ERROR(
      Expect(!Overlap(*out, *state), kOp, "out and state must not overlap each other"));
  SLUICE_RETURN_IF_ERROR(Expect(mode == GatedDeltaRuleMode::kAuto ||
                                    mode == GatedDeltaRuleMode::kRecurrent ||
                                    mode == GatedDeltaRuleMode::kChunked,
                                kOp, "unknown mode"));
  SLUICE_RETURN_IF_ERROR(CheckSequences(kOp, sequences, tokens, state->dim(0)));
  cpu::GatedDeltaRule(q, k, v, g, beta, sequences, state, out, mode);
  return absl::OkStatus();
}

absl::Status GatedRmsNorm(const Tensor& x, const Tensor& z, const Tensor& weight, float eps,
                          Tensor* out) {
  constexpr absl::string_view kOp = "GatedRmsNorm";
  if (out == nullptr) return Expect(false, kOp, "null output");
  SLUICE_RETURN_IF_ERROR(SameDeviceF32(kOp, {&x, &z, &weight, out}));
  SLUICE_RETURN_IF_ERROR(Expect(x.rank() >= 1 && x.dim(-1) > 0 && z.shape() == x.shape() &&
                                    out->shape() == x.shape() && weight.numel() == x.dim(-1),
                                kOp, "x, z, out must share a shape [..., D] and weight be [D]"));
  SLUICE_RETURN_IF_ERROR(Expect(eps >= 0.f, kOp, "eps must be >= 0"));
  cpu::GatedRmsNorm(x, z, weight, eps, out);
  return absl::OkStatus();
}

}  // namespace sluice::kernels
