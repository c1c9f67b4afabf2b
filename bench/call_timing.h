// Times one kernel call over many calls, for the GEMV benches (int4_gemv_bench.cc,
// prequant_gemv_bench.cc).
#ifndef SLUICE_BENCH_CALL_TIMING_H_
#define SLUICE_BENCH_CALL_TIMING_H_

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace sluice::bench {

// Seconds of one call of fn(copy) over reps calls, cycling through copies: the best
// call (what the kernel does when no other process takes its cores) and the median.
struct Timing {
  double best, median;
};
inline Timing TimeCalls(int reps, int copies, const std::function<void(int)>& fn) {
  for (int i = 0; i < std::min(copies, 3); ++i) fn(i);  // warm up
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fn(r % copies);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

}  // namespace sluice::bench

#endif  // SLUICE_BENCH_CALL_TIMING_H_
