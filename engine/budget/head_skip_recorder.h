// The attention-gate floor's accounting without a host round trip per layer: each
// attention layer writes its head-skip mask (a device tensor PagedAttention consumes)
// into its own slice of one step-wide device buffer, with the host-known facts of its
// rows; after the forward pass one device-to-host copy of the buffer gives every
// sequence's skipped heads and saved FLOPs.
#ifndef SLUICE_ENGINE_BUDGET_HEAD_SKIP_RECORDER_H_
#define SLUICE_ENGINE_BUDGET_HEAD_SKIP_RECORDER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/budget/budget.h"
#include "kernels/tensor.h"

namespace sluice::engine {

class HeadSkipRecorder {
 public:
  // Room for `layers` masks of at most `tokens` rows × `heads` heads on `device`.
  static absl::StatusOr<HeadSkipRecorder> Create(int64_t layers, int64_t tokens, int64_t heads,
                                                 kernels::Device device);
  // The i32 [rows, heads] slice for the next layer's mask. row_sequence[i] is row i's
  // sequence (an index into the costs), attended[i] the FLOPs one of its heads attends
  // with (4 · context · head_dim). The vectors are copied.
  absl::StatusOr<kernels::Tensor> NextMask(const std::vector<int32_t>& row_sequence,
                                           std::vector<double> attended);
  // One copy of every mask written, then heads_skipped and saved_flops per sequence.
  absl::Status AddTo(std::vector<SequenceCost>* costs) const;

 private:
  struct Entry {
    int64_t slice = 0;
    std::vector<int32_t> row_sequence;
    std::vector<double> attended;
  };
  kernels::Tensor buffer_;  // i32 [layers, tokens, heads]
  int64_t tokens_ = 0, heads_ = 0;
  std::vector<Entry> entries_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_BUDGET_HEAD_SKIP_RECORDER_H_
