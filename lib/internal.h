/* Private helpers shared by the files in lib/. Nothing here is API. */
#ifndef UVQ_INTERNAL_H
#define UVQ_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "uvq.h"

#define UVQ__CONTAINER_OF(ptr, type, field)                                  \
  ((type*) ((char*) (ptr) - offsetof(type, field)))

#if defined(__GNUC__)
# define UVQ__LIKELY(x) __builtin_expect(!!(x), 1)
# define UVQ__UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
# define UVQ__LIKELY(x) (x)
# define UVQ__UNLIKELY(x) (x)
#endif

#define UVQ__LOAD(p, mo) atomic_load_explicit((p), memory_order_##mo)
#define UVQ__STORE(p, v, mo) atomic_store_explicit((p), (v), memory_order_##mo)

/* Queue state word: accepted count in the high bits, two flags below. */
#define UVQ__CLOSED ((uint64_t) 1)
#define UVQ__ASLEEP ((uint64_t) 2)
#define UVQ__ONE ((uint64_t) 4)
#define UVQ__COUNT(s) ((s) >> 2)

/* stop_mode_ bits */
#define UVQ__STOP_REQUESTED 1
#define UVQ__STOP_DISCARD 2

/* stop_count_ before the stopper published it. */
#define UVQ__UNPUBLISHED UINT64_MAX

/* phase_ */
enum {
  UVQ__RUNNING = 0,
  UVQ__CLOSING = 1, /* uv_close called */
  UVQ__CLOSED_PHASE = 2
};

/* 1 when the caller runs on thread t. */
static inline int uvq__on_thread(uv_thread_t t) {
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, &t);
}

/* Add to a counter that only one thread writes (cheaper than fetch_add). */
static inline void uvq__bump(_Atomic(uint64_t)* c, uint64_t n) {
  UVQ__STORE(c, UVQ__LOAD(c, relaxed) + n, relaxed);
}

#endif /* UVQ_INTERNAL_H */
