// Latency summaries shared by the gRPC and HTTP load generators.
#ifndef SLUICE_CLIENTS_LOADGEN_SUMMARY_H_
#define SLUICE_CLIENTS_LOADGEN_SUMMARY_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <vector>

namespace sluice::loadgen {

struct Summary {
  size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// Nearest-rank percentiles; nullopt without samples (a figure is absent, never NaN).
inline std::optional<Summary> Summarize(std::vector<double> v) {
  if (v.empty()) return std::nullopt;
  std::sort(v.begin(), v.end());
  auto rank = [&](double p) {
    const size_t k = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
    return v[std::clamp<size_t>(k, 1, v.size()) - 1];
  };
  Summary s;
  s.count = v.size();
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  s.p50 = rank(50);
  s.p90 = rank(90);
  s.p99 = rank(99);
  s.max = v.back();
  return s;
}

}  // namespace sluice::loadgen

#endif  // SLUICE_CLIENTS_LOADGEN_SUMMARY_H_
