// GEMV/GEMM micro-benchmark of the pre-quantized checkpoint kernels: FP8 with 128x128 block
// scales (kernels/cpu/gemm_fp8_cpu.h, AVX-512 and AVX2 bodies) and GPTQ int4 with group
// 128, with and without act-order (kernels/cpu/gemm_gptq_cpu.h), next to the bf16 kernel
// (gemm_bf16_cpu.h, f32 compute) on the same shapes. Per shape, kernel and row count M:
// the best and median time per call and the GB/s of packed bytes read, with this run's
// streaming-read bandwidth. Weights rotate through enough copies to overflow the caches
// (what a decode step sees).
//   sluice-bench-prequant-gemv [--threads=2] [--reps=30] [--rows=1,4,12]
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
#include "kernels/cpu/gemm_fp8_cpu.h"
#include "kernels/cpu/gemm_gptq_cpu.h"
#include "kernels/tensor.h"

namespace {

using namespace sluice::kernels::cpu;  // NOLINT: a benchmark of this namespace's kernels
using sluice::kernels::F32ToBf16;

using sluice::bench::TimeCalls;
using sluice::bench::Timing;

void Report(const char* shape, const std::string& kernel, int64_t m, size_t bytes, Timing t,
            Timing bf16) {
  std::printf(
      "%-10s %-16s M=%-2lld best %8.1f us %6.1f GB/s  median %8.1f us %6.1f GB/s  %6.2f MB  x%.2f "
      "vs bf16 (median)\n",
      shape, kernel.c_str(), static_cast<long long>(m), t.best * 1e6, bytes / t.best / 1e9,
      t.median * 1e6, bytes / t.median / 1e9, bytes / 1e6, bf16.median / t.median);
}

constexpr size_t kColdBytes = size_t{320} << 20;  // far past the L3

template <typename W>
Timing Cold(int reps, const W& w, size_t bytes, const std::function<void(const W&)>& call) {
  const int copies = static_cast<int>((kColdBytes + bytes - 1) / bytes);
  std::vector<W> more(static_cast<size_t>(copies - 1), w);
  return TimeCalls(reps, copies, [&](int i) { call(i == 0 ? w : more[i - 1]); });
}

PackedGptqWeight MakeGptq(int64_t n, int64_t k, bool act_order, std::vector<int32_t>* storage) {
  std::mt19937 rng(3);
  const int64_t groups = k / 128;
  static std::vector<int32_t> qweight, qzeros;
  static std::vector<uint16_t> scales;
  qweight.resize((k / 8) * n);
  for (auto& v : qweight) v = static_cast<int32_t>(rng());
  qzeros.assign(groups * (n / 8), 0x77777777);
  scales.assign(groups * n, 0x2000);  // 2^-7
  storage->resize(k);
  std::vector<int32_t> perm(k);
  for (int64_t i = 0; i < k; ++i) perm[i] = static_cast<int32_t>(i);
  if (act_order) std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t i = 0; i < k; ++i) (*storage)[perm[i]] = static_cast<int32_t>(i / 128);
  PackedGptqWeight::Source src{qweight.data(), qzeros.data(), scales.data(), n, 0, 1};
  return *PackedGptqWeight::Create({{src, n}}, k, groups, *storage);
}

void RunShape(const char* name, int64_t n, int64_t k, int reps, const std::vector<int64_t>& rows) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 0.02f);
  std::vector<uint16_t> w(static_cast<size_t>(n * k));
  for (auto& v : w) v = F32ToBf16(normal(rng));
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  for (auto& c : codes) {
    do c = static_cast<uint8_t>(rng());
    while ((c & 0x7f) == 0x7f);
  }
  std::vector<float> block_scales(((n + 127) / 128) * ((k + 127) / 128), 1e-3f);
  const int64_t max_m = *std::max_element(rows.begin(), rows.end());
  std::vector<float> x(static_cast<size_t>(max_m * k));
  for (auto& v : x) v = normal(rng) * 50;
  std::vector<float> y(static_cast<size_t>(max_m * n));

  const PackedBf16Weight bf16(w.data(), n, k, /*bf16_compute=*/false);
  const PackedFp8Weight fp8 =
      *PackedFp8Weight::FromBlocks(codes.data(), n, k, block_scales.data(), 128, 128);
  std::vector<int32_t> g_plain, g_act;
  const PackedGptqWeight gptq = MakeGptq(n, k, false, &g_plain);
  const PackedGptqWeight gptq_act = MakeGptq(n, k, true, &g_act);
  for (int64_t m : rows) {
    const Timing tb = Cold<PackedBf16Weight>(reps, bf16, n * k * 2, [&](const PackedBf16Weight& q) {
      GemmF32Bf16(x.data(), m, q, y.data(), n);
    });
    Report(name, "bf16", m, n * k * 2, tb, tb);
    for (Fp8Kernel kernel : {Fp8Kernel::kAvx512, Fp8Kernel::kAvx2}) {
      if (kernel == Fp8Kernel::kAvx512 && !Fp8Avx512Available()) continue;
      if (kernel == Fp8Kernel::kAvx2 && !Fp8Avx2Available()) continue;
      const Timing t = Cold<PackedFp8Weight>(reps, fp8, fp8.bytes(), [&](const PackedFp8Weight& q) {
        GemmF32Fp8(x.data(), m, q, y.data(), n, kernel);
      });
      Report(name, kernel == Fp8Kernel::kAvx512 ? "fp8 b128 avx512" : "fp8 b128 avx2", m,
             fp8.bytes(), t, tb);
    }
    for (const PackedGptqWeight* q : {&gptq, &gptq_act}) {
      const Timing t = Cold<PackedGptqWeight>(reps, *q, q->bytes(), [&](const PackedGptqWeight& p) {
        GemmF32Gptq(x.data(), m, p, y.data(), n);
      });
      Report(name, q == &gptq ? "gptq g128" : "gptq g128 act", m, q->bytes(), t, tb);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 30;
  std::vector<int64_t> rows = {1, 4, 12};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rows=", 7) == 0) {
      rows.clear();
      for (const char* c = argv[i] + 7; *c;) {
        rows.push_back(std::atoll(c));
        while (*c && *c != ',') ++c;
        if (*c == ',') ++c;
      }
    }
    if (std::strncmp(argv[i], "--threads=", 10) == 0) threads = std::atoi(argv[i] + 10);
    if (std::strncmp(argv[i], "--reps=", 7) == 0) reps = std::atoi(argv[i] + 7);
  }
  omp_set_num_threads(threads);
  std::printf("threads %d, reps %d, fp8 AVX-512: %s, AVX2: %s, gptq AVX-512: %s\n", threads, reps,
              Fp8Avx512Available() ? "yes" : "no", Fp8Avx2Available() ? "yes" : "no",
              GptqAvx512Available() ? "yes" : "no");
  std::printf("streaming read bandwidth: %.1f GB/s\n",
              sluice::bench::MeasureReadBandwidth(threads) / 1e9);
  RunShape("4096x1024", 4096, 1024, reps, rows);
  RunShape("1024x4096", 1024, 4096, reps, rows);
  std::printf("streaming read bandwidth: %.1f GB/s\n",
              sluice::bench::MeasureReadBandwidth(threads) / 1e9);
  return 0;
}
