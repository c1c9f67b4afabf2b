#include "bench/bandwidth.h"

#include <omp.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace sluice::bench {

double MeasureReadBandwidth(int threads, size_t bytes) {
  const size_t n = bytes / sizeof(float);
  float* data = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < n; ++i) data[i] = static_cast<float>(i & 1023);
  double best = 0;
  volatile float sink = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
#if defined(__AVX512F__)
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
#pragma omp for schedule(static)
      for (size_t i = 0; i < n; i += 32) {
        acc0 = _mm512_add_ps(acc0, _mm512_load_ps(data + i));
        acc1 = _mm512_add_ps(acc1, _mm512_load_ps(data + i + 16));
      }
      total += _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#else
#pragma omp for schedule(static)
      for (size_t i = 0; i < n; ++i) total += data[i];
#endif
    }
    sink = sink + total;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double rate = static_cast<double>(n * sizeof(float)) / seconds;
    if (rate > best) best = rate;
  }
  std::free(data);
  return best;
}

}  // namespace sluice::bench
