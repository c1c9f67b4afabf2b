// Shared setup for the fuzz targets (tests/fuzz and tests/tokenizer/fuzz).
#ifndef SLUICE_TESTS_FUZZ_FUZZ_UTIL_H_
#define SLUICE_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstdio>
#include <cstdlib>

// Fuzz targets report a violated property by crashing, which both libFuzzer
// and the standalone driver turn into a failure with the input saved/printed.
#define SLUICE_FUZZ_CHECK(cond)                                                          \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

#endif  // SLUICE_TESTS_FUZZ_FUZZ_UTIL_H_
