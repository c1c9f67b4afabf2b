// One step's ragged-batch metadata on the compute device: token ids, positions, KV slot
// mapping, the rows that need logits, the attention sequences (row offsets, context
// lengths, block tables) and the linear-attention sequences (segments, state slots,
// fresh flags, and the checkpoint slots and lengths when the step takes state
// snapshots). All of it is packed into one i32 host buffer and uploaded in one copy
// per step (or per GateSkip row subset, whose shape depends on the data); the ops read
// it from device memory, never from host pointers.
#ifndef SLUICE_ENGINE_MODEL_DEVICE_BATCH_H_
#define SLUICE_ENGINE_MODEL_DEVICE_BATCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/forward_batch.h"
#include "kernels/gated_delta_net.h"
#include "kernels/ops.h"

namespace sluice::engine {

struct DeviceBatch {
  kernels::Tensor token_ids;     // i32 [T]
  kernels::Tensor positions;     // i32 [T]
  kernels::Tensor slot_mapping;  // i32 [T]
  kernels::Tensor logit_rows;    // i32 [R]
  kernels::AttentionBatch attention;
  // Defined when every sequence has a state slot (models with linear attention); its
  // checkpoint_slot and checkpoint_len are defined when ForwardBatch::checkpoint_slots is
  // non-empty.
  kernels::LinearAttentionBatch linear;

  // block_size: the KV cache's, to know how many block-table entries each sequence uses.
  // INVALID_ARGUMENT when the batch's arrays disagree in length (checkpoint arrays: both
  // empty or one entry per sequence).
  static absl::StatusOr<DeviceBatch> Upload(const ForwardBatch& batch, int32_t block_size,
                                            kernels::Device device);
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_DEVICE_BATCH_H_
