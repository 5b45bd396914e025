// FUZZ_CHECK(cond): a property a fuzz target asserts about the code under test. On failure it
// prints the condition and its line, then aborts, which libFuzzer records as a crash (saving
// the input) and which fails the replay ctest.
#ifndef SEMSHARE_TESTS_FUZZ_FUZZ_CHECK_H_
#define SEMSHARE_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                                    \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "%s:%d: fuzz property failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

#endif  // SEMSHARE_TESTS_FUZZ_FUZZ_CHECK_H_
