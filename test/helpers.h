/* Shared by the Check suites: each check_<component>.c exports one Suite*. */
#ifndef UVQ_TEST_HELPERS_H
#define UVQ_TEST_HELPERS_H

#include <check.h>
#ifndef _WIN32
# include <sched.h>
#endif
#include <stdlib.h>
#include <uv.h>

#include "uvq.h"

/* Check's ck_assert_msg() calls _mark_point() on every assertion that
 * passes: a write() to Check's pipe or temporary file, so that a test that
 * crashes later can report the last line it passed. The suites assert inside
 * process callbacks and worker threads that run hundreds of thousands of
 * times, where that write is a system call per event: it dominates the run,
 * and under valgrind (which runs one thread at a time and hands the CPU to
 * another runnable thread at every system call) a spinning thread beside it
 * stretched one test past CI's 20-minute limit. A failing assertion still
 * fails the test exactly as before; only the breadcrumb is gone (sanitizer
 * and valgrind reports give a full stack instead). */
#undef ck_assert_msg
#define ck_assert_msg(expr, ...)                                              \
  ((expr) ? (void) 0                                                          \
          : _ck_assert_failed(__FILE__, __LINE__,                             \
                              "Assertion '" #expr "' failed", ##__VA_ARGS__))

Suite* errors_suite(void);
Suite* queue_suite(void);
Suite* queue_sink_suite(void);
Suite* stress_suite(void);
Suite* faults_suite(void);
Suite* badinput_suite(void);
Suite* sinks_suite(void);
Suite* channel_suite(void);
Suite* channel_race_suite(void);
Suite* queue_race_suite(void);
Suite* samples_suite(void);
Suite* watermark_suite(void);

/* libuv's MAKE_VALGRIND_HAPPY: close every handle left, run the loop once
 * more so their close callbacks run, and require uv_loop_close() to succeed. */
static inline void uvq_test_close_walk_cb(uv_handle_t* h, void* arg) {
  (void) arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static inline void uvq_test_loop_done(uv_loop_t* loop) {
  uv_walk(loop, uvq_test_close_walk_cb, NULL);
  ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

/* For spin-waits in tests: give the CPU away. On two cores it hardly
 * matters; under valgrind, which runs one thread at a time, a spin without
 * a system call holds the CPU for a whole time slice and a wait of a few
 * microseconds becomes one of seconds. sched_yield() rather than a zero
 * sleep: ThreadSanitizer intercepts nanosleep() (not sched_yield()) and runs
 * a signal that arrives inside an intercepted call in the middle of it; the
 * test that parks its reader with a signal hung once in CI (240 s timeout)
 * after the reader began to sleep(0), never before, so the reader's loop
 * stays free of intercepted calls, as it was. */
static inline void uvq_test_yield(void) {
#ifdef _WIN32
  uv_sleep(0);
#else
  sched_yield();
#endif
}

/* A wall-clock bound for waits that only a hang would exceed, in ns:
 * base_s seconds times CK_TIMEOUT_MULTIPLIER, as Check scales its own
 * timeouts, so that a slow checker (valgrind, sanitizers) raising that
 * does not meet a watchdog meant for hangs first. */
static inline uint64_t uvq_test_hang_ns(unsigned base_s) {
  const char* m = getenv("CK_TIMEOUT_MULTIPLIER");
  long k = m != NULL ? strtol(m, NULL, 10) : 1;
  return (uint64_t) base_s * 1000000000u * (uint64_t) (k > 1 ? k : 1);
}

/* Scale for stress-sized loops: STRESS_SCALE=10 runs ten times as long. */
static inline unsigned uvq_test_scale(void) {
  const char* s = getenv("STRESS_SCALE");
  long v = s != NULL ? strtol(s, NULL, 10) : 1;
  return v > 0 ? (unsigned) v : 1;
}

#endif
