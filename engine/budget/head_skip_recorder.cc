#include "engine/budget/head_skip_recorder.h"

#include "kernels/device_memory.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

absl::StatusOr<HeadSkipRecorder> HeadSkipRecorder::Create(int64_t layers, int64_t tokens, int64_t heads,
                                                          kernels::Device device) {
  HeadSkipRecorder r;
  r.tokens_ = tokens;
  r.heads_ = heads;
  SLUICE_ASSIGN_OR_RETURN(r.buffer_, kernels::Tensor::Empty({layers, tokens, heads}, kernels::DType::kI32, device));
  return r;
}

absl::StatusOr<kernels::Tensor> HeadSkipRecorder::NextMask(const std::vector<int32_t>& row_sequence,
                                                           std::vector<double> attended) {
  const int64_t slice = static_cast<int64_t>(entries_.size());
  const int64_t rows = static_cast<int64_t>(row_sequence.size());
  if (slice >= buffer_.dim(0) || rows > tokens_ || static_cast<int64_t>(attended.size()) != rows) {
    return absl::InternalError("HeadSkipRecorder: more masks or rows than it was made for");
  }
  entries_.push_back({slice, row_sequence, std::move(attended)});
  SLUICE_ASSIGN_OR_RETURN(kernels::Tensor layer, buffer_.Rows(slice, 1).Reshape({tokens_, heads_}));
  return layer.Rows(0, rows);
}

absl::Status HeadSkipRecorder::AddTo(std::vector<SequenceCost>* costs) const {
  if (entries_.empty()) return absl::OkStatus();
  std::vector<int32_t> host(static_cast<size_t>(entries_.size() * tokens_ * heads_));
  SLUICE_ASSIGN_OR_RETURN(kernels::Tensor used, buffer_.Rows(0, static_cast<int64_t>(entries_.size())).Reshape({static_cast<int64_t>(host.size())}));
  SLUICE_RETURN_IF_ERROR(kernels::CopyToHost(used, host.data()));
  for (const Entry& e : entries_) {
    const int32_t* mask = host.data() + e.slice * tokens_ * heads_;
    for (size_t t = 0; t < e.row_sequence.size(); ++t) {
      SequenceCost& c = (*costs)[e.row_sequence[t]];
      for (int64_t h = 0; h < heads_; ++h) {
        if (mask[t * heads_ + h] == 0) continue;
        ++c.heads_skipped;
        c.saved_flops += e.attended[t];
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace sluice::engine
