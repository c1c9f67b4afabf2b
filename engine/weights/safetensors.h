// Reads the safetensors format (https://github.com/huggingface/safetensors):
//   u64 little-endian header length N | N bytes of JSON header | tensor bytes.
// The file is memory-mapped; tensors are zero-copy views that keep the mapping alive.
// Every defect of the header gets its own error; nothing here aborts on bad input.
#ifndef SLUICE_ENGINE_WEIGHTS_SAFETENSORS_H_
#define SLUICE_ENGINE_WEIGHTS_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace sluice::engine {

// The largest header we accept, as the reference implementation does (100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsEntry {
  std::string dtype_name;  // as written in the header, e.g. "BF16"
  kernels::DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data section
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors name the file and the defect.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates an in-memory image (used by Open and by tests/fuzzers).
  static absl::StatusOr<std::map<std::string, SafetensorsEntry>> ParseHeader(
      const uint8_t* data, uint64_t size, uint64_t* data_start);

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool Contains(const std::string& name) const { return entries_.count(name) > 0; }
  // A zero-copy CPU tensor over the mapped bytes.
  absl::StatusOr<kernels::Tensor> Get(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<const void> mapping_;  // munmaps on last release
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_WEIGHTS_SAFETENSORS_H_
