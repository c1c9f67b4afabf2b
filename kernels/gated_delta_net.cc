// Device-neutral half of the Gated DeltaNet ops: shape, dtype, device and aliasing checks
// (never tensor contents), then dispatch on the device (dispatch.h). The sequence
// metadata (segments, slots) is checked by the device bodies, which can read it.
// Every defect of the input returns a status; nothing here aborts.
#include "kernels/gated_delta_net.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/gated_delta_net_cpu.h"
#include "kernels/op_bodies.h"
#include "kernels/op_checks.h"
#include "kernels/status_macros.h"
#include "kernels/tensor.h"

namespace sluice::kernels {
namespace {

bool Overlap(const Tensor& a, const Tensor& b) {
  if (a.bytes() == 0 || b.bytes() == 0) return false;
  const char* a0 = static_cast<const char*>(a.raw());
  const char* b0 = static_cast<const char*>(b.raw());
  return a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
}

// The four i32 [S] tensors of a batch, on `device`, and the two checkpoint tensors,
// both undefined or both like the others.
absl::Status CheckBatch(absl::string_view op, const LinearAttentionBatch& batch, Device device) {
  std::vector<const Tensor*> tensors = {&batch.start, &batch.length, &batch.state_slot,
                                        &batch.zero_initial_state};
  SLUICE_RETURN_IF_ERROR(Expect(batch.checkpoint_slot.defined() == batch.checkpoint_len.defined(),
                                op, "checkpoint_slot and checkpoint_len must both be defined or both not"));
  if (batch.checkpoint_slot.defined()) {
    tensors.push_back(&batch.checkpoint_slot);
    tensors.push_back(&batch.checkpoint_len);
  }
  for (const Tensor* t : tensors) {
    if (!t->defined()) return Expect(false, op, "undefined sequence tensor");
    SLUICE_RETURN_IF_ERROR(Expect(t->device() == device, op, "sequence tensors on another device"));
    SLUICE_RETURN_IF_ERROR(Expect(t->dtype() == DType::kI32 && t->rank() == 1 &&
                                      t->numel() == batch.start.numel(),
                                  op, "sequence tensors must be i32 [S]"));
  }
  return absl::OkStatus();
}

// The host sequences as a LinearAttentionBatch on `device` (counted host-to-device
// transfers). Only the deprecated span forms use it, off the CPU.
absl::StatusOr<LinearAttentionBatch> Upload(absl::string_view op,
                                            absl::Span<const LinearAttentionSequence> sequences,
                                            Device device) {
  const int64_t count = static_cast<int64_t>(sequences.size());
  // Two more rows when some sequence takes a checkpoint.
  const bool checkpoints =
      std::any_of(sequences.begin(), sequences.end(),
                  [](const LinearAttentionSequence& s) { return s.checkpoint_slot >= 0; });
  const int64_t fields = checkpoints ? 6 : 4;
  std::vector<int32_t> host(fields * count);
  for (int64_t i = 0; i < count; ++i) {
    host[i] = sequences[i].start;
    host[count + i] = sequences[i].length;
    host[2 * count + i] = sequences[i].state_slot;
    host[3 * count + i] = sequences[i].zero_initial_state ? 1 : 0;
    if (checkpoints) {
      host[4 * count + i] = sequences[i].checkpoint_slot;
      host[5 * count + i] = sequences[i].checkpoint_len;
    }
  }
  auto allocated = Tensor::Empty({fields, count}, DType::kI32, device);
  absl::Status s = allocated.ok() ? CopyFromHost(host.data(), &*allocated) : allocated.status();
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat(op, " on ", DeviceName(device),
                                                ": cannot upload its metadata: ", s.message()));
  }
  const Tensor& packed = *allocated;
  LinearAttentionBatch batch;
  SLUICE_ASSIGN_OR_RETURN(batch.start, packed.Rows(0, 1).Reshape({count}));
  SLUICE_ASSIGN_OR_RETURN(batch.length, packed.Rows(1, 1).Reshape({count}));
  SLUICE_ASSIGN_OR_RETURN(batch.state_slot, packed.Rows(2, 1).Reshape({count}));
  SLUICE_ASSIGN_OR_RETURN(batch.zero_initial_state, packed.Rows(3, 1).Reshape({count}));
  if (checkpoints) {
    SLUICE_ASSIGN_OR_RETURN(batch.checkpoint_slot, packed.Rows(4, 1).Reshape({count}));
    SLUICE_ASSIGN_OR_RETURN(batch.checkpoint_len, packed.Rows(5, 1).Reshape({count}));
  }
  return batch;
}

constexpr absl::string_view kConv = "CausalConv1dSilu";
constexpr absl::string_view kDeltaRule = "GatedDeltaRule";

absl::Status CheckConv(const Tensor& x, const Tensor& weight, Tensor* conv_state, Tensor* y) {
  constexpr absl::string_view kOp = kConv;
  if (conv_state == nullptr || y == nullptr) return Expect(false, kOp, "null output");
  SLUICE_RETURN_IF_ERROR(CheckDevicesF32(kOp, {&x, &weight, conv_state, y}));
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
  return Expect((in_place || !Overlap(x, *y)) && !Overlap(*conv_state, x) &&
                    !Overlap(*conv_state, *y) && !Overlap(weight, *y) &&
                    !Overlap(weight, *conv_state),
                kOp, "outputs overlap the inputs (only y == x is allowed)");
}

absl::Status CheckDeltaRule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                            const Tensor& beta, Tensor* state, Tensor* out,
                            GatedDeltaRuleMode mode) {
  constexpr absl::string_view kOp = kDeltaRule;
  if (state == nullptr || out == nullptr) return Expect(false, kOp, "null output");
  SLUICE_RETURN_IF_ERROR(CheckDevicesF32(kOp, {&q, &k, &v, &g, &beta, state, out}));
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
  return Expect(mode == GatedDeltaRuleMode::kAuto || mode == GatedDeltaRuleMode::kRecurrent ||
                    mode == GatedDeltaRuleMode::kChunked,
                kOp, "unknown mode");
}

}  // namespace

absl::Status CausalConv1dSilu(const Tensor& x, const Tensor& weight,
                              const LinearAttentionBatch& batch, Tensor* conv_state, Tensor* y) {
  SLUICE_RETURN_IF_ERROR(CheckConv(x, weight, conv_state, y));
  SLUICE_RETURN_IF_ERROR(CheckBatch(kConv, batch, x.device()));
  return SLUICE_DEVICE_DISPATCH(x.device(),
                                CausalConv1dSiluBody<D>(x, weight, batch, conv_state, y));
}

absl::Status CausalConv1dSilu(const Tensor& x, const Tensor& weight,
                              absl::Span<const LinearAttentionSequence> sequences,
                              Tensor* conv_state, Tensor* y) {
  SLUICE_RETURN_IF_ERROR(CheckConv(x, weight, conv_state, y));
  if (x.device() == Device::kCpu) {
    // The CPU body reads host metadata as is: no tensors to build.
    return cpu::CausalConv1dSiluChecked(x, weight, sequences, conv_state, y);
  }
  SLUICE_ASSIGN_OR_RETURN(LinearAttentionBatch batch, Upload(kConv, sequences, x.device()));
  return CausalConv1dSilu(x, weight, batch, conv_state, y);
}

absl::Status GatedDeltaRule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                            const Tensor& beta, const LinearAttentionBatch& batch, Tensor* state,
                            Tensor* out, GatedDeltaRuleMode mode) {
  SLUICE_RETURN_IF_ERROR(CheckDeltaRule(q, k, v, g, beta, state, out, mode));
  SLUICE_RETURN_IF_ERROR(CheckBatch(kDeltaRule, batch, q.device()));
  return SLUICE_DEVICE_DISPATCH(q.device(),
                                GatedDeltaRuleBody<D>(q, k, v, g, beta, batch, state, out, mode));
}

absl::Status GatedDeltaRule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                            const Tensor& beta, absl::Span<const LinearAttentionSequence> sequences,
                            Tensor* state, Tensor* out, GatedDeltaRuleMode mode) {
  SLUICE_RETURN_IF_ERROR(CheckDeltaRule(q, k, v, g, beta, state, out, mode));
  if (q.device() == Device::kCpu) {
    // The CPU body reads host metadata as is: no tensors to build.
    return cpu::GatedDeltaRuleChecked(q, k, v, g, beta, sequences, state, out, mode);
  }
  SLUICE_ASSIGN_OR_RETURN(LinearAttentionBatch batch, Upload(kDeltaRule, sequences, q.device()));
  return GatedDeltaRule(q, k, v, g, beta, batch, state, out, mode);
}

absl::Status CopyStateSlots(absl::Span<const SlotCopy> copies, Tensor* state) {
  constexpr absl::string_view kOp = "CopyStateSlots";
  if (state == nullptr) return Expect(false, kOp, "null state");
  SLUICE_RETURN_IF_ERROR(CheckDevices(kOp, {state}));
  SLUICE_RETURN_IF_ERROR(Expect(state->rank() >= 1, kOp, "state must have rank >= 1"));
  if (copies.empty()) return absl::OkStatus();
  return SLUICE_DEVICE_DISPATCH(state->device(), CopyStateSlotsBody<D>(copies, state));
}

absl::Status GatedRmsNorm(const Tensor& x, const Tensor& z, const Tensor& weight, float eps,
                          Tensor* out) {
  constexpr absl::string_view kOp = "GatedRmsNorm";
  if (out == nullptr) return Expect(false, kOp, "null output");
  SLUICE_RETURN_IF_ERROR(CheckDevicesF32(kOp, {&x, &z, &weight, out}));
  SLUICE_RETURN_IF_ERROR(Expect(x.rank() >= 1 && x.dim(-1) > 0 && z.shape() == x.shape() &&
                                    out->shape() == x.shape() && weight.numel() == x.dim(-1),
                                kOp, "x, z, out must share a shape [..., D] and weight be [D]"));
  SLUICE_RETURN_IF_ERROR(Expect(eps >= 0.f, kOp, "eps must be >= 0"));
  return SLUICE_DEVICE_DISPATCH(out->device(), GatedRmsNormBody<D>(x, z, weight, eps, out));
}

}  // namespace sluice::kernels
