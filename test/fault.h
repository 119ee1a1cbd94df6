/* Fault injection and allocation accounting for the test binary.
 *
 * test/fault.c defines malloc, calloc, realloc, free (and the aligned
 * variants), pthread_mutex_init and pthread_cond_init (and their destroy
 * functions, to count what is live) and sched_yield (counted) in the test
 * program itself. The dynamic linker binds every call from libuvq.so and
 * libuv.so to those definitions (the executable comes first in the lookup
 * order), so the library is exercised unchanged. Each wrapper can be told to
 * fail, and counts what it does.
 *
 * Sanitizers (ASan, TSan, MSan) own the allocator and intercept the same
 * functions: replacing them there would fight the runtime. In such builds the
 * wrappers are compiled out, failure injection is unavailable (tests that
 * need it say so and pass without running), and allocations are still
 * counted through the sanitizer's own malloc/free hooks.
 */
#ifndef UVQ_TEST_FAULT_H
#define UVQ_TEST_FAULT_H

#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
# define UVQ_TEST_SANITIZED 1
#elif defined(__has_feature)
# if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||  \
     __has_feature(memory_sanitizer)
#  define UVQ_TEST_SANITIZED 1
# endif
#endif
#ifndef UVQ_TEST_SANITIZED
# define UVQ_TEST_SANITIZED 0
#endif

/* What a fallible call is: each of these counts as one call and can fail. */
enum {
  UVQ_FAULT_ALLOC = 1,   /* malloc, calloc, realloc, aligned: NULL/ENOMEM */
  UVQ_FAULT_MUTEX = 2,   /* pthread_mutex_init: ENOMEM */
  UVQ_FAULT_COND = 4,    /* pthread_cond_init: ENOMEM */
  UVQ_FAULT_ALL = 7
};

/* 1 when failures can be injected into every kind in mask; otherwise *why
 * (when not NULL) says why not. Under valgrind, which replaces malloc even
 * in the executable, only the pthread kinds are available. libuv creates a
 * loop's eventfd in uv_loop_init, so uv_async_init cannot fail on a live
 * loop: there is nothing to inject there. */
int uvq_fault_available(int mask, const char** why);

/* Arm the calling thread only: among its fallible calls of the kinds in
 * mask, the nth from now fails (n >= 1); with sticky, the nth and every
 * later one fail. n == 0 disarms. Other threads are never affected. */
void uvq_fault_arm(unsigned n, int mask, int sticky);
/* Disarm the calling thread; returns how many failures were injected since
 * it was armed. */
unsigned uvq_fault_disarm(void);
/* The kind (UVQ_FAULT_*) of the first failure injected since the arm, or 0. */
int uvq_fault_first_kind(void);

/* Allocation counting across every thread: 1 when available. */
int uvq_alloc_count_available(void);
/* Start counting allocation calls (malloc, calloc, realloc, aligned). */
void uvq_alloc_count_start(void);
/* Stop counting; returns how many were made since the start. */
uint64_t uvq_alloc_count_stop(void);

/* sched_yield calls made by the calling thread (libuvq's and libuv's): 1
 * when they are counted; otherwise *why (when not NULL) says why not. */
int uvq_yield_count_available(const char** why);
unsigned long uvq_yield_count(void);
/* Of those, the calls made from libuv's own code (its caller lies in the
 * shared object that defines uv_version), such as libuv 1.44's yield in
 * the loop's spin on a half-sent uv_async_t. */
unsigned long uvq_yield_count_in_libuv(void);

/* Live resources, process wide: blocks allocated and not freed, mutexes and
 * condition variables initialised and not destroyed (-1 each when untracked,
 * in sanitizer builds). Compare before and after a piece of work to find a
 * leak of any of them. */
typedef struct {
  long blocks;
  long mutexes;
  long conds;
} uvq_live_t;
void uvq_live(uvq_live_t* out);

#endif
