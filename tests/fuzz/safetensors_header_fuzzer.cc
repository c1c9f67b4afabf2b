// Fuzz target: the safetensors reader (engine/weights/safetensors.cc) on arbitrary bytes
// as a whole .safetensors file.
//
// Properties:
//  - SafetensorsFile::ParseHeader, on a buffer of exactly the input's size (so that
//    ASan sees any read past it), returns a status and never crashes, throws or hits
//    undefined behaviour; errors are INVALID_ARGUMENT with a message;
//  - whatever it accepts is safe to map: the data section starts after the header,
//    every tensor's byte span lies inside the file and equals shape × dtype size, and
//    the spans tile the data section (sorted, no overlap, no gap, no tail);
//  - SafetensorsFile::Open on the same bytes (an in-memory file, no disk) agrees with
//    ParseHeader, and every tensor it hands out is a view of exactly that span.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/weights/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using sluice::engine::SafetensorsEntry;
using sluice::engine::SafetensorsFile;

uint64_t ElementSize(sluice::kernels::DType dtype) {
  switch (dtype) {
    case sluice::kernels::DType::kF32:
    case sluice::kernels::DType::kI32:
      return 4;
    case sluice::kernels::DType::kBF16:
    case sluice::kernels::DType::kF16:
      return 2;
    case sluice::kernels::DType::kI64:
      return 8;
    case sluice::kernels::DType::kF8E4M3:
    case sluice::kernels::DType::kI8:
    case sluice::kernels::DType::kWeightRowRefs:
      return 1;
  }
  SLUICE_FUZZ_CHECK(false && "unknown dtype");
  return 0;
}

// An anonymous in-memory file, reused for every input, that Open reads by path.
const std::string& MemoryFilePath() {
  static const std::string* path = [] {
    const int fd = memfd_create("safetensors_header_fuzz", MFD_CLOEXEC);
    SLUICE_FUZZ_CHECK(fd >= 0);
    return new std::string("/proc/self/fd/" + std::to_string(fd));
  }();
  return *path;
}

void WriteMemoryFile(const uint8_t* data, size_t size) {
  static const int fd = std::stoi(MemoryFilePath().substr(sizeof("/proc/self/fd/") - 1));
  SLUICE_FUZZ_CHECK(ftruncate(fd, 0) == 0);
  SLUICE_FUZZ_CHECK(pwrite(fd, data, size, 0) == static_cast<ssize_t>(size));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An exact-size heap copy: libFuzzer's buffer is one already, the standalone
  // driver's std::string has a terminator and capacity ASan would not flag.
  std::vector<uint8_t> exact(data, data + size);
  uint64_t data_start = 0;
  auto parsed = SafetensorsFile::ParseHeader(exact.empty() ? nullptr : exact.data(), size, &data_start);
  if (!parsed.ok()) {
    SLUICE_FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
    SLUICE_FUZZ_CHECK(!parsed.status().message().empty());
    return 0;
  }
  SLUICE_FUZZ_CHECK(size >= 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  SLUICE_FUZZ_CHECK(data_start == 8 + header_len && data_start <= size);
  const uint64_t data_len = size - data_start;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [name, e] : *parsed) {
    SLUICE_FUZZ_CHECK(name != "__metadata__");
    SLUICE_FUZZ_CHECK(e.begin <= e.end && e.end <= data_len);
    unsigned __int128 bytes = ElementSize(e.dtype);
    for (int64_t d : e.shape) {
      SLUICE_FUZZ_CHECK(d >= 0);
      bytes *= static_cast<uint64_t>(d);
      if (bytes > data_len) break;  // stays exact while it can still match the span
    }
    SLUICE_FUZZ_CHECK(bytes == e.end - e.begin);
    spans.emplace_back(e.begin, e.end);
  }
  std::sort(spans.begin(), spans.end());
  uint64_t expected = 0;
  for (const auto& [begin, end] : spans) {
    SLUICE_FUZZ_CHECK(begin == expected);
    expected = end;
  }
  SLUICE_FUZZ_CHECK(expected == data_len);

  WriteMemoryFile(data, size);
  auto file = SafetensorsFile::Open(MemoryFilePath());
  SLUICE_FUZZ_CHECK(file.ok());
  SLUICE_FUZZ_CHECK((*file)->entries().size() == parsed->size());
  for (const auto& [name, e] : *parsed) {
    SLUICE_FUZZ_CHECK((*file)->Contains(name));
    auto t = (*file)->Get(name);
    SLUICE_FUZZ_CHECK(t.ok());
    SLUICE_FUZZ_CHECK(t->shape() == e.shape && t->dtype() == e.dtype);
    SLUICE_FUZZ_CHECK(t->bytes() == e.end - e.begin);
    if (t->bytes() > 0) {
      // Touch the first and last byte of the view: both must be inside the mapping.
      const auto* p = static_cast<const uint8_t*>(t->raw());
      SLUICE_FUZZ_CHECK(p[0] == data[data_start + e.begin]);
      SLUICE_FUZZ_CHECK(p[t->bytes() - 1] == data[data_start + e.end - 1]);
    }
  }
  return 0;
}
