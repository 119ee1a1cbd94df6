/* async-spin: what libuv 1.44's busy window costs a woken loop.
 *
 * One loop thread with one uv_async_t, one producer thread that sleeps
 * --gap-us, stamps the time and wakes the loop, and waits for nothing
 * else: each wakeup finds the loop asleep. The callback records the
 * latency from the stamp. Two ways to wake, run alternately:
 *   libuv  uv_async_send (busy flag, write, done flag);
 *   uvq    lib/wake.c's uvq__async_send (done flag, then the write), which
 *          is uv_async_send itself on a libuv other than 1.44.
 * Per run it prints p50 / p90 / p99 / p99.9 in microseconds, how often the
 * two threads were on one CPU, and the loop thread's sched_yield calls
 * (libuv's spin yields after 997 tries; nothing else on the loop thread
 * yields here). It is the evidence behind docs/design.md, section 3; it is
 * not part of the library.
 *
 * Run: bench/async-spin [wakeups [rounds [gap-us]]]
 *      (default 100000 wakeups, 3 rounds of each way, 20 us)
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#include <uv.h>

void uvq__async_send(uv_async_t* handle); /* lib/wake.c, built in */
int uvq__direct_wake(void);

static uv_loop_t loop;
static uv_async_t async;
static pid_t loop_tid;
static atomic_long loop_yields;
static _Atomic int64_t stamp;
static atomic_int producer_cpu;
static atomic_long received;
static long wanted, same_cpu, gap_us;
static int64_t* lat;
static int use_uvq;

/* Count the loop thread's yields (libuv calls sched_yield through its
 * PLT, so this definition is the one it reaches), then yield. */
int sched_yield(void) {
  if (syscall(SYS_gettid) == loop_tid)
    atomic_fetch_add(&loop_yields, 1);
  return (int) syscall(SYS_sched_yield);
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t) t.tv_sec * 1000000000 + t.tv_nsec;
}

static void on_async(uv_async_t* h) {
  int64_t s = atomic_exchange(&stamp, 0);
  long n = atomic_load(&received);
  if (s != 0 && n < wanted) {
    lat[n] = now_ns() - s;
    if (sched_getcpu() == atomic_load(&producer_cpu))
      same_cpu++;
    atomic_store(&received, ++n);
  }
  /* The producer may send once more before it sees the count: its write
   * goes to the loop's fd, open until uv_loop_close, after the join. */
  if (n >= wanted && !uv_is_closing((uv_handle_t*) h))
    uv_close((uv_handle_t*) h, NULL);
}

static void* producer(void* arg) {
  struct timespec gap = {0, 0};
  (void) arg;
  gap.tv_nsec = gap_us * 1000;
  while (atomic_load(&received) < wanted) {
    int64_t zero = 0;
    nanosleep(&gap, NULL);
    atomic_store(&producer_cpu, sched_getcpu());
    if (!atomic_compare_exchange_strong(&stamp, &zero, now_ns()))
      continue; /* the last one is not taken yet */
    if (use_uvq)
      uvq__async_send(&async);
    else
      uv_async_send(&async);
  }
  return NULL;
}

static int cmp(const void* a, const void* b) {
  int64_t x = *(const int64_t*) a, y = *(const int64_t*) b;
  return x < y ? -1 : x > y;
}

static void run(int way) {
  pthread_t t;
  long y0;
  use_uvq = way;
  same_cpu = 0;
  atomic_store(&received, 0);
  atomic_store(&stamp, 0);
  if (uv_loop_init(&loop) != 0 || uv_async_init(&loop, &async, on_async)) {
    fprintf(stderr, "async-spin: cannot start a loop\n");
    exit(2);
  }
  y0 = atomic_load(&loop_yields);
  if (pthread_create(&t, NULL, producer, NULL) != 0) {
    fprintf(stderr, "async-spin: cannot start the producer\n");
    exit(2);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  pthread_join(t, NULL);
  uv_loop_close(&loop);
  qsort(lat, (size_t) wanted, sizeof(*lat), cmp);
  printf("%-5s  %8.1f %8.1f %8.1f %8.1f   %5.1f%%   %8ld\n",
         way ? "uvq" : "libuv", lat[wanted / 2] / 1e3,
         lat[wanted * 9 / 10] / 1e3, lat[wanted * 99 / 100] / 1e3,
         lat[wanted * 999 / 1000] / 1e3, 100.0 * same_cpu / wanted,
         atomic_load(&loop_yields) - y0);
}

int main(int argc, char** argv) {
  long rounds, i;
  wanted = argc > 1 ? atol(argv[1]) : 100000;
  rounds = argc > 2 ? atol(argv[2]) : 3;
  gap_us = argc > 3 ? atol(argv[3]) : 20;
  if (wanted < 1000 || rounds < 1 || gap_us < 1 || gap_us > 999999) {
    fprintf(stderr, "usage: async-spin [wakeups >= 1000 [rounds >= 1 "
                    "[gap-us 1..999999]]]\n");
    return 2;
  }
  lat = calloc((size_t) wanted, sizeof(*lat));
  if (lat == NULL)
    return 2;
  loop_tid = (pid_t) syscall(SYS_gettid);
  printf("libuv %s; lib/wake.c's way is %s here; %ld wakeups per run, "
         "one every %ld us\n", uv_version_string(),
         uvq__direct_wake() ? "its own" : "uv_async_send", wanted, gap_us);
  printf("wake   p50 (us)      p90      p99    p99.9   same CPU   loop "
         "yields\n");
  for (i = 0; i < rounds; i++) {
    run(0);
    run(1);
  }
  free(lat);
  return 0;
}
