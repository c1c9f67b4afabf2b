#include "engine/weights/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = dir;

  std::vector<std::string> files;
  std::map<std::string, std::string> weight_map;  // from the index, when sharded
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    auto index = nlohmann::json::parse(ss.str(), nullptr, false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": not a JSON object with a weight_map"));
    }
    std::set<std::string> unique;
    for (auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map['", name, "'] is not a file name"));
      }
      std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": shard name '", f, "' leaves the directory"));
      }
      weight_map[name] = f;
      unique.insert(f);
    }
    files.assign(unique.begin(), unique.end());
  } else {
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (entry.path().extension() == ".safetensors" &&
          entry.path().filename().string().rfind("golden", 0) != 0) {
        files.push_back(entry.path().filename().string());
      }
    }
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat("no *.safetensors files in ", dir));
  }
  for (const std::string& f : files) {
    SLUICE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((fs::path(dir) / f).string()));
    for (const auto& [name, entry] : file->entries()) {
      auto [it, inserted] = ckpt->index_.emplace(name, file.get());
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' appears in both ",
                                                       it->second->path(), " and ", file->path()));
      }
    }
    ckpt->files_.push_back(std::move(file));
  }
  for (const auto& [name, file] : weight_map) {
    auto it = ckpt->index_.find(name);
    if (it == ckpt->index_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("index lists tensor '", name, "' in ", file,
                                                     " but that file does not hold it"));
    }
  }
  return ckpt;
}

absl::StatusOr<kernels::Tensor> Checkpoint::Get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, " has no tensor '", name, "'"));
  }
  return it->second->Get(name);
}

absl::StatusOr<kernels::Tensor> Checkpoint::Get(const std::string& name,
                                                const std::vector<int64_t>& expected) const {
  SLUICE_ASSIGN_OR_RETURN(kernels::Tensor t, Get(name));
  if (t.shape() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ",
                                                   kernels::ShapeString(t.shape()),
                                                   " but the config implies ",
                                                   kernels::ShapeString(expected)));
  }
  return t;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  for (const auto& [name, f] : index_) names.push_back(name);
  return names;
}

uint64_t Checkpoint::TotalBytes() const {
  uint64_t total = 0;
  for (const auto& f : files_) {
    for (const auto& [n, e] : f->entries()) total += e.end - e.begin;
  }
  return total;
}

}  // namespace sluice::engine
