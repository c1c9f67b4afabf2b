#include "engine/model/device_batch.h"

#include <algorithm>

#include "kernels/device_memory.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<DeviceBatch> DeviceBatch::Upload(const ForwardBatch& batch, int32_t block_size,
                                                kernels::Device device) {
  const int64_t tokens = batch.num_tokens();
  const int64_t seqs = static_cast<int64_t>(batch.sequences.size());
  if (batch.positions.size() != batch.token_ids.size() || batch.slot_mapping.size() != batch.token_ids.size()) {
    return absl::InvalidArgumentError("ForwardBatch: token, position and slot arrays differ in length");
  }
  if (block_size <= 0) return absl::InvalidArgumentError("DeviceBatch: block size must be positive");
  const bool linear = seqs > 0 && batch.state_slots.size() == batch.sequences.size() &&
                      batch.state_fresh.size() == batch.sequences.size() && batch.state_slots[0] >= 0;
  if (batch.checkpoint_slots.size() != batch.checkpoint_lens.size() ||
      (!batch.checkpoint_slots.empty() && batch.checkpoint_slots.size() != batch.sequences.size())) {
    return absl::InvalidArgumentError("ForwardBatch: checkpoint arrays must be empty or one entry per sequence");
  }
  // Two more rows of linear metadata when the step takes state checkpoints.
  const bool checkpoints = linear && !batch.checkpoint_slots.empty();
  const int64_t linear_fields = checkpoints ? 6 : 4;
  int64_t max_blocks = 1;
  for (const auto& s : batch.sequences) {
    max_blocks = std::max<int64_t>(max_blocks, (std::max(s.context_len, 0) + block_size - 1) / block_size);
  }
  // Layout of the packed buffer, in i32 elements.
  const int64_t rows = static_cast<int64_t>(batch.logit_rows.size());
  const int64_t n_ids = 0, n_pos = n_ids + tokens, n_slot = n_pos + tokens, n_logit = n_slot + tokens;
  const int64_t n_qstart = n_logit + rows, n_ctx = n_qstart + seqs + 1, n_table = n_ctx + seqs;
  const int64_t n_linear = n_table + seqs * max_blocks;
  const int64_t total = n_linear + (linear ? linear_fields * seqs : 0);
  std::vector<int32_t> host(static_cast<size_t>(std::max<int64_t>(total, 1)), -1);
  std::copy(batch.token_ids.begin(), batch.token_ids.end(), host.begin() + n_ids);
  std::copy(batch.positions.begin(), batch.positions.end(), host.begin() + n_pos);
  std::copy(batch.slot_mapping.begin(), batch.slot_mapping.end(), host.begin() + n_slot);
  std::copy(batch.logit_rows.begin(), batch.logit_rows.end(), host.begin() + n_logit);
  for (int64_t s = 0; s < seqs; ++s) {
    const kernels::AttentionSequence& seq = batch.sequences[s];
    // Row offsets: sequence s starts at its query_start; the end offset of the last one
    // closes the list (sequences are packed back to back in the batch).
    host[n_qstart + s] = seq.query_start;
    host[n_ctx + s] = seq.context_len;
    const int64_t used = (std::max(seq.context_len, 0) + block_size - 1) / block_size;
    if (used > 0 && seq.block_table == nullptr) {
      return absl::InvalidArgumentError("ForwardBatch: a sequence with context has no block table");
    }
    std::copy(seq.block_table, seq.block_table + used, host.begin() + n_table + s * max_blocks);
    if (s + 1 < seqs && batch.sequences[s + 1].query_start != seq.query_start + seq.query_len) {
      return absl::InvalidArgumentError("ForwardBatch: sequences must be packed back to back");
    }
    if (linear) {
      host[n_linear + s] = seq.query_start;
      host[n_linear + seqs + s] = seq.query_len;
      host[n_linear + 2 * seqs + s] = batch.state_slots[s];
      host[n_linear + 3 * seqs + s] = batch.state_fresh[s] != 0 ? 1 : 0;
    }
    if (checkpoints) {
      host[n_linear + 4 * seqs + s] = batch.checkpoint_slots[s];
      host[n_linear + 5 * seqs + s] = batch.checkpoint_lens[s];
    }
  }
  host[n_qstart + seqs] = seqs > 0 ? batch.sequences[seqs - 1].query_start + batch.sequences[seqs - 1].query_len : 0;

  SLUICE_ASSIGN_OR_RETURN(Tensor packed, Tensor::Empty({std::max<int64_t>(total, 1)}, DType::kI32, device));
  SLUICE_RETURN_IF_ERROR(kernels::CopyFromHost(host.data(), &packed));
  auto view = [&](int64_t offset, std::vector<int64_t> shape) -> absl::StatusOr<Tensor> {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return packed.Rows(offset, n).Reshape(std::move(shape));
  };
  DeviceBatch out;
  SLUICE_ASSIGN_OR_RETURN(out.token_ids, view(n_ids, {tokens}));
  SLUICE_ASSIGN_OR_RETURN(out.positions, view(n_pos, {tokens}));
  SLUICE_ASSIGN_OR_RETURN(out.slot_mapping, view(n_slot, {tokens}));
  SLUICE_ASSIGN_OR_RETURN(out.logit_rows, view(n_logit, {rows}));
  SLUICE_ASSIGN_OR_RETURN(out.attention.query_start, view(n_qstart, {seqs + 1}));
  SLUICE_ASSIGN_OR_RETURN(out.attention.context_len, view(n_ctx, {seqs}));
  SLUICE_ASSIGN_OR_RETURN(out.attention.block_tables, view(n_table, {seqs, max_blocks}));
  if (linear) {
    SLUICE_ASSIGN_OR_RETURN(out.linear.start, view(n_linear, {seqs}));
    SLUICE_ASSIGN_OR_RETURN(out.linear.length, view(n_linear + seqs, {seqs}));
    SLUICE_ASSIGN_OR_RETURN(out.linear.state_slot, view(n_linear + 2 * seqs, {seqs}));
    SLUICE_ASSIGN_OR_RETURN(out.linear.zero_initial_state, view(n_linear + 3 * seqs, {seqs}));
  }
  if (checkpoints) {
    SLUICE_ASSIGN_OR_RETURN(out.linear.checkpoint_slot, view(n_linear + 4 * seqs, {seqs}));
    SLUICE_ASSIGN_OR_RETURN(out.linear.checkpoint_len, view(n_linear + 5 * seqs, {seqs}));
  }
  return out;
}

}  // namespace sluice::engine
