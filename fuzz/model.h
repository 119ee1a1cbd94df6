/* Shared by the fuzz harnesses (fuzz_*.c): what a disagreement between the
 * library and a harness's model does. It aborts, so that libFuzzer keeps
 * the input, after saying which operation of the input and which check. */
#ifndef UVQ_FUZZ_MODEL_H
#define UVQ_FUZZ_MODEL_H

#include <stdio.h>
#include <stdlib.h>

#define MODEL_CHECK(c, op)                                                   \
  do {                                                                       \
    if (!(c)) {                                                              \
      fprintf(stderr, "model mismatch at op %zu (%s:%d): %s\n",             \
              (size_t) (op), __FILE__, __LINE__, #c);                        \
      abort();                                                               \
    }                                                                        \
  } while (0)

#endif
