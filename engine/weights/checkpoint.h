// A Hugging Face checkpoint directory: config.json plus one or many *.safetensors files
// (with model.safetensors.index.json when sharded). Tensors are looked up by name.
#ifndef SLUICE_ENGINE_WEIGHTS_CHECKPOINT_H_
#define SLUICE_ENGINE_WEIGHTS_CHECKPOINT_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/weights/safetensors.h"
#include "kernels/tensor.h"

namespace sluice::engine {

class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool Contains(const std::string& name) const { return index_.count(name) > 0; }
  // The tensor, after checking its shape. The error names the tensor and both shapes.
  absl::StatusOr<kernels::Tensor> Get(const std::string& name,
                                      const std::vector<int64_t>& expected_shape) const;
  absl::StatusOr<kernels::Tensor> Get(const std::string& name) const;
  std::vector<std::string> TensorNames() const;
  // Total bytes of all tensors.
  uint64_t TotalBytes() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> index_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_WEIGHTS_CHECKPOINT_H_
