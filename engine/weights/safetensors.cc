#include "engine/weights/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace sluice::engine {
namespace {

using kernels::DType;

// The dtypes sluice computes with. Other valid safetensors dtypes (F64, I64, F8_E5M2, ...)
// are rejected by name so the user knows the checkpoint needs converting. F8_E4M3
// (float8_e4m3fn) holds the weights of FP8 checkpoints, read only with their scales
// (engine/weights/checkpoint.h).
bool ParseDType(const std::string& name, DType* dtype, size_t* size) {
  if (name == "F32") { *dtype = DType::kF32; *size = 4; return true; }
  if (name == "BF16") { *dtype = DType::kBF16; *size = 2; return true; }
  if (name == "F16") { *dtype = DType::kF16; *size = 2; return true; }
  if (name == "I32") { *dtype = DType::kI32; *size = 4; return true; }
  if (name == "F8_E4M3") { *dtype = DType::kF8E4M3; *size = 1; return true; }
  return false;
}

absl::Status HeaderError(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors header: ", what));
}

}  // namespace

absl::StatusOr<std::map<std::string, SafetensorsEntry>> SafetensorsFile::ParseHeader(
    const uint8_t* data, uint64_t size, uint64_t* data_start) {
  if (size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: truncated file: ", size, " bytes, too short for the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return HeaderError(absl::StrCat("header length ", header_len, " exceeds the limit of ",
                                    kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (header_len > size - 8) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: truncated file: header claims ",
                                                   header_len, " bytes but only ", size - 8,
                                                   " follow"));
  }
  const char* text = reinterpret_cast<const char*>(data + 8);
  if (header_len == 0 || text[0] != '{') {
    return HeaderError("is not a JSON object (must start with '{')");
  }
  nlohmann::json header = nlohmann::json::parse(text, text + header_len, nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded()) return HeaderError("is not valid JSON");
  if (!header.is_object()) return HeaderError("is not a JSON object");

  const uint64_t buffer_len = size - 8 - header_len;
  std::map<std::string, SafetensorsEntry> entries;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) return HeaderError("__metadata__ must be an object of strings");
      for (auto& [k, v] : info.items()) {
        if (!v.is_string()) return HeaderError(absl::StrCat("__metadata__.", k, " is not a string"));
      }
      continue;
    }
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets")) {
      return HeaderError(absl::StrCat("tensor '", name, "' needs dtype, shape and data_offsets"));
    }
    const auto& dtype_json = info["dtype"];
    const auto& shape_json = info["shape"];
    const auto& offsets_json = info["data_offsets"];
    if (!dtype_json.is_string()) return HeaderError(absl::StrCat("tensor '", name, "': dtype is not a string"));
    SafetensorsEntry entry;
    entry.dtype_name = dtype_json.get<std::string>();
    size_t elem_size = 0;
    if (!ParseDType(entry.dtype_name, &entry.dtype, &elem_size)) {
      return HeaderError(absl::StrCat("tensor '", name, "' has unsupported dtype '",
                                      entry.dtype_name, "' (supported: F32, BF16, F16, I32)"));
    }
    if (!shape_json.is_array()) return HeaderError(absl::StrCat("tensor '", name, "': shape is not an array"));
    uint64_t elements = 1;
    for (const auto& d : shape_json) {
      if (!d.is_number_unsigned()) {
        return HeaderError(absl::StrCat("tensor '", name, "': shape entries must be non-negative integers"));
      }
      uint64_t dim = d.get<uint64_t>();
      if (dim > (uint64_t{1} << 62) || (dim != 0 && elements > (uint64_t{1} << 62) / dim)) {
        return HeaderError(absl::StrCat("tensor '", name, "': shape overflows"));
      }
      elements *= dim;
      entry.shape.push_back(static_cast<int64_t>(dim));
    }
    if (!offsets_json.is_array() || offsets_json.size() != 2 ||
        !offsets_json[0].is_number_unsigned() || !offsets_json[1].is_number_unsigned()) {
      return HeaderError(absl::StrCat("tensor '", name, "': data_offsets must be [begin, end]"));
    }
    entry.begin = offsets_json[0].get<uint64_t>();
    entry.end = offsets_json[1].get<uint64_t>();
    if (entry.end < entry.begin) {
      return HeaderError(absl::StrCat("tensor '", name, "': data_offsets end ", entry.end,
                                      " before begin ", entry.begin));
    }
    if (elements > UINT64_MAX / elem_size || elements * elem_size != entry.end - entry.begin) {
      return HeaderError(absl::StrCat("tensor '", name, "': shape × dtype size = ",
                                      elements, " × ", elem_size, " bytes does not match its byte span of ",
                                      entry.end - entry.begin));
    }
    entries.emplace(name, std::move(entry));
  }

  // The byte spans, sorted, must tile the data section exactly: no overlap, no gap, and
  // nothing past its end.
  std::vector<std::pair<uint64_t, const std::string*>> order;
  for (const auto& [name, e] : entries) order.emplace_back(e.begin, &name);
  std::sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return entries.at(*a.second).end < entries.at(*b.second).end;
  });
  uint64_t expected = 0;
  for (const auto& [begin, name] : order) {
    const SafetensorsEntry& e = entries.at(*name);
    if (e.begin < expected) {
      return HeaderError(absl::StrCat("tensor '", *name, "' overlaps the previous tensor (begins at ",
                                      e.begin, ", previous ends at ", expected, ")"));
    }
    if (e.begin > expected) {
      return HeaderError(absl::StrCat("gap in the data section before tensor '", *name,
                                      "' (begins at ", e.begin, ", expected ", expected, ")"));
    }
    expected = e.end;
  }
  if (expected > buffer_len) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: truncated file: tensors need ",
                                                   expected, " data bytes but the file has ",
                                                   buffer_len));
  }
  if (expected < buffer_len) {
    return HeaderError(absl::StrCat("data section has ", buffer_len - expected,
                                    " trailing bytes no tensor covers"));
  }
  *data_start = 8 + header_len;
  return entries;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ > 0) {
    void* addr = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (addr == MAP_FAILED) {
      return absl::InternalError(absl::StrCat("mmap ", path, ": ", std::strerror(errno)));
    }
    const size_t len = file->size_;
    file->mapping_ = std::shared_ptr<const void>(addr, [len](const void* p) {
      ::munmap(const_cast<void*>(p), len);
    });
    file->base_ = static_cast<const uint8_t*>(addr);
  } else {
    ::close(fd);
  }
  auto entries = ParseHeader(file->base_, file->size_, &file->data_start_);
  if (!entries.ok()) {
    return absl::Status(entries.status().code(),
                        absl::StrCat(path, ": ", entries.status().message()));
  }
  file->entries_ = *std::move(entries);
  // Metadata is re-read here rather than threaded out of ParseHeader: it is tiny.
  const char* text = reinterpret_cast<const char*>(file->base_ + 8);
  auto header = nlohmann::json::parse(text, text + (file->data_start_ - 8), nullptr, false);
  if (header.contains("__metadata__")) {
    for (auto& [k, v] : header["__metadata__"].items()) file->metadata_[k] = v.get<std::string>();
  }
  return file;
}

absl::StatusOr<kernels::Tensor> SafetensorsFile::Get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, " has no tensor '", name, "'"));
  }
  const SafetensorsEntry& e = it->second;
  auto buffer = kernels::Buffer::Borrow(
      const_cast<uint8_t*>(base_ + data_start_ + e.begin), e.end - e.begin,
      kernels::Device::kCpu, mapping_);
  return kernels::Tensor::FromBuffer(std::move(buffer), 0, e.shape, e.dtype);
}

}  // namespace sluice::engine
