// Measures this machine's sustained memory read bandwidth, the ceiling decode speed is
// compared against. Measured in the benchmark's own run because machines differ.
#ifndef SLUICE_BENCH_BANDWIDTH_H_
#define SLUICE_BENCH_BANDWIDTH_H_

#include <cstddef>

namespace sluice::bench {

// Bytes per second of a multi-threaded streaming read over a buffer far larger than the
// caches (best of several passes).
double MeasureReadBandwidth(int threads, size_t bytes = size_t{1} << 30);

}  // namespace sluice::bench

#endif  // SLUICE_BENCH_BANDWIDTH_H_
