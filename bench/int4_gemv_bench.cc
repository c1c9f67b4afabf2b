// GEMV/GEMM micro-benchmark of the 4-bit group-wise kernel (kernels/cpu/gemm_int4_cpu.h)
// against the bf16 kernel (gemm_bf16_cpu.h, f32 compute) on the same shapes. It prints,
// per shape, kernel, group size and row count M: the median time per call and the GB/s
// of packed bytes read, next to this run's streaming-read bandwidth.
//
// "cold" rotates through enough copies of the weight to overflow the caches (what a
// decode step sees); "hot" repeats one copy (cache-resident where it fits). --rows=64,512
// gives prefill-like shapes; --int4_body forces one int4 body (default: the fastest the
// CPU runs; all give the same bits).
//   sluice-bench-int4-gemv [--threads=2] [--reps=30] [--rows=1,4,12] [--no_lm_head]
//                          [--int4_body=vnni|bw|scalar]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/bandwidth.h"
#include "bench/call_timing.h"
#include "kernels/cpu/gemm_bf16_cpu.h"
#include "kernels/cpu/gemm_int4_cpu.h"
#include "kernels/tensor.h"

namespace {

using sluice::kernels::Bf16ToF32;
using sluice::kernels::DType;
using sluice::kernels::F32ToBf16;
using sluice::kernels::cpu::GemmF32Bf16;
using sluice::kernels::cpu::GemmF32Int4;
using sluice::kernels::cpu::Int4Kernel;
using sluice::kernels::cpu::PackedBf16Weight;
using sluice::kernels::cpu::PackedInt4Weight;

using sluice::bench::TimeCalls;
using sluice::bench::Timing;

void Report(const char* shape, const char* mode, const std::string& kernel, int64_t m, size_t bytes,
            Timing t, Timing bf16) {
  std::printf(
      "%-12s %-4s %-9s M=%-2lld best %8.1f us %6.1f GB/s  median %8.1f us %6.1f GB/s  %6.2f MB  "
      "x%.2f (best) x%.2f (median) vs bf16\n",
      shape, mode, kernel.c_str(), static_cast<long long>(m), t.best * 1e6, bytes / t.best / 1e9,
      t.median * 1e6, bytes / t.median / 1e9, bytes / 1e6, bf16.best / t.best,
      bf16.median / t.median);
}

void RunShape(const char* name, int64_t n, int64_t k, int reps,
              const std::vector<int64_t>& row_counts, Int4Kernel body) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 0.02f);
  std::vector<uint16_t> w(static_cast<size_t>(n * k));
  for (auto& v : w) v = F32ToBf16(normal(rng));
  const int64_t max_m = *std::max_element(row_counts.begin(), row_counts.end());
  std::vector<float> x(static_cast<size_t>(max_m * k));
  for (auto& v : x) v = normal(rng) * 50;
  std::vector<float> y(static_cast<size_t>(max_m * n));
  constexpr size_t kColdBytes = size_t{320} << 20;  // far past the L3

  const PackedBf16Weight bf16(w.data(), n, k, /*bf16_compute=*/false);
  const size_t bf16_bytes = static_cast<size_t>(n * k * 2);
  std::vector<PackedInt4Weight> int4;
  for (int64_t g : {32, 64, 128}) int4.emplace_back(w.data(), DType::kBF16, n, k, g);

  for (const char* mode : {"cold", "hot"}) {
    const bool cold = std::strcmp(mode, "cold") == 0;
    for (int64_t m : row_counts) {
      const int bf16_copies =
          cold ? static_cast<int>((kColdBytes + bf16_bytes - 1) / bf16_bytes) : 1;
      std::vector<PackedBf16Weight> bc(static_cast<size_t>(bf16_copies - 1), bf16);
      auto bf16_weight = [&](int i) -> const PackedBf16Weight& {
        return i == 0 ? bf16 : bc[i - 1];
      };
      const Timing tb = TimeCalls(
          reps, bf16_copies, [&](int i) { GemmF32Bf16(x.data(), m, bf16_weight(i), y.data(), n); });
      bc.clear();
      Report(name, mode, "bf16", m, bf16_bytes, tb, tb);
      for (const PackedInt4Weight& q : int4) {
        const int copies = cold ? static_cast<int>((kColdBytes + q.bytes() - 1) / q.bytes()) : 1;
        std::vector<PackedInt4Weight> qc(static_cast<size_t>(copies - 1), q);
        auto weight = [&](int i) -> const PackedInt4Weight& { return i == 0 ? q : qc[i - 1]; };
        const Timing t = TimeCalls(
            reps, copies, [&](int i) { GemmF32Int4(x.data(), m, weight(i), y.data(), n, body); });
        Report(name, mode, "int4 g" + std::to_string(q.group_size()), m, q.bytes(), t, tb);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 30;
  std::vector<int64_t> rows = {1, 4, 12};
  bool lm_head = true;
  Int4Kernel body = Int4Kernel::kAuto;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rows=", 7) == 0) {  // comma-separated row counts M
      rows.clear();
      for (const char* c = argv[i] + 7; *c;) {
        rows.push_back(std::atoll(c));
        while (*c && *c != ',') ++c;
        if (*c == ',') ++c;
      }
    }
    if (std::strcmp(argv[i], "--no_lm_head") == 0) lm_head = false;
    if (std::strcmp(argv[i], "--int4_body=vnni") == 0) body = Int4Kernel::kVnni;
    if (std::strcmp(argv[i], "--int4_body=bw") == 0) body = Int4Kernel::kAvx512Bw;
    if (std::strcmp(argv[i], "--int4_body=scalar") == 0) body = Int4Kernel::kScalar;
    if (std::strncmp(argv[i], "--threads=", 10) == 0) threads = std::atoi(argv[i] + 10);
    if (std::strncmp(argv[i], "--reps=", 7) == 0) reps = std::atoi(argv[i] + 7);
  }
  omp_set_num_threads(threads);
  std::printf("threads %d, reps %d, int4 body: %s\n", threads, reps,
              sluice::kernels::cpu::Int4KernelName(sluice::kernels::cpu::Int4SelectedKernel(body)));
  std::printf("streaming read bandwidth: %.1f GB/s\n",
              sluice::bench::MeasureReadBandwidth(threads) / 1e9);
  RunShape("4096x1024", 4096, 1024, reps, rows, body);  // N×K: an up/gate projection, 1024 wide
  RunShape("1024x4096", 1024, 4096, reps, rows, body);  // its down projection
  if (lm_head)
    RunShape("151936x1024", 151936, 1024, std::max(5, reps / 3),
             rows, body);  // a Qwen-vocabulary LM head
  std::printf("streaming read bandwidth: %.1f GB/s\n",
              sluice::bench::MeasureReadBandwidth(threads) / 1e9);
  return 0;
}
