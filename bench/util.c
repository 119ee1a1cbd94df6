/* util.c: clocks, pacing, percentiles, memory and small statistics for
 * uvq-bench. Nothing in here is timed: these run between measurements, or
 * (bench_sleep_until) while a paced producer waits for its next slot.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__linux__)
# include <pthread.h>
# include <sched.h>
# include <stdatomic.h>
# include <sys/prctl.h>
#endif
#include <math.h>
#if defined(__GLIBC__)
# include <malloc.h>
#endif

#include "bench.h"

void bench_violation(uint64_t* count, char* what, size_t size,
                     const char* fmt, ...) {
  va_list ap;
  if ((*count)++ != 0)
    return;
  va_start(ap, fmt);
  vsnprintf(what, size, fmt, ap);
  va_end(ap);
}

/* uv_hrtime() reads CLOCK_MONOTONIC on Linux, so an absolute sleep on that
 * clock lands where the producer's schedule (in uv_hrtime units) says. */
void bench_sleep_until(uint64_t t) {
#if defined(CLOCK_MONOTONIC) && defined(TIMER_ABSTIME) && defined(__linux__)
  struct timespec ts;
  ts.tv_sec = (time_t) (t / 1000000000u);
  ts.tv_nsec = (long) (t % 1000000000u);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
#else
  uint64_t now = uv_hrtime();
  if (now < t)
    uv_sleep((unsigned) ((t - now + 999999) / 1000000));
#endif
}

/* Linux lets a sleep end up to the thread's timer slack late (50 us unless
 * changed), so that wakeups coalesce. Paced producers keep that default, as
 * real programs do: their sleeps end in bursts of a few events per slack.
 * Asking for 1 ns instead (what this did until 2026-12-01) makes every 5 us
 * slot a timer interrupt of its own; under this machine's hypervisor that
 * kept both cores busy in the kernel, and the loop thread waited
 * milliseconds for a core whatever the transport. */
int bench_set_timer_slack(unsigned long ns) {
#if defined(__linux__) && defined(PR_SET_TIMERSLACK)
  if (ns == 0)
    return 0;
  return prctl(PR_SET_TIMERSLACK, ns, 0UL, 0UL, 0UL) == 0 ? 0 : -1;
#else
  return ns == 0 ? 0 : -1;
#endif
}

int bench_timer_slack_ok(unsigned long ns) {
#if defined(__linux__) && defined(PR_SET_TIMERSLACK) && \
    defined(PR_GET_TIMERSLACK)
  int was = prctl(PR_GET_TIMERSLACK, 0UL, 0UL, 0UL, 0UL);
  if (was <= 0 || prctl(PR_SET_TIMERSLACK, ns, 0UL, 0UL, 0UL) != 0)
    return 0;
  (void) prctl(PR_SET_TIMERSLACK, (unsigned long) was, 0UL, 0UL, 0UL);
  return 1;
#else
  return ns == 0;
#endif
}

#if defined(__linux__)
/* The value of a "Name:   1234 kB" line of /proc/self/status, in bytes. */
static int64_t status_kb(const char* name) {
  char line[256];
  size_t len = strlen(name);
  int64_t v = -1;
  FILE* f = fopen("/proc/self/status", "r");
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, name, len) == 0 && line[len] == ':') {
      v = strtoll(line + len + 1, NULL, 10) * 1024;
      break;
    }
  }
  fclose(f);
  return v;
}
#endif

void bench_malloc_keep(void) {
#if defined(__GLIBC__)
  (void) mallopt(M_TRIM_THRESHOLD, 1 << 30);
  (void) mallopt(M_MMAP_THRESHOLD, 32 << 20); /* glibc's largest */
#endif
}

int64_t bench_mem_mark(void) {
#if defined(__linux__)
  FILE* f;
# if defined(__GLIBC__)
  /* Memory freed by an earlier run stays in malloc's arenas and would be
   * reused without raising the peak: hand it back first. */
  malloc_trim(0);
# endif
  /* "5" resets VmHWM to the current RSS (Linux >= 4.0). */
  f = fopen("/proc/self/clear_refs", "w");
  if (f == NULL)
    return -1;
  if (fputs("5", f) == EOF) {
    fclose(f);
    return -1;
  }
  if (fclose(f) != 0)
    return -1;
  return status_kb("VmRSS");
#else
  return -1;
#endif
}

int64_t bench_mem_peak(void) {
#if defined(__linux__)
  return status_kb("VmHWM");
#else
  return -1;
#endif
}

int bench_host_ticks(uint64_t* steal, uint64_t* total) {
#if defined(__linux__)
  /* The first line of /proc/stat sums every CPU, in USER_HZ ticks: user
   * nice system idle iowait irq softirq steal, then guest and guest_nice,
   * which user and nice already include. */
  unsigned long long v[8];
  uint64_t sum = 0;
  int i, n;
  FILE* f = fopen("/proc/stat", "r");
  if (f == NULL)
    return -1;
  n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
             &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
  fclose(f);
  if (n != 8)
    return -1;
  for (i = 0; i < 8; i++)
    sum += v[i];
  *steal = v[7];
  *total = sum;
  return 0;
#else
  (void) steal;
  (void) total;
  return -1;
#endif
}

#if defined(__linux__)
/* Two threads, one per CPU, pass a counter back and forth on one cache
 * line: each hand-over moves the line from one core's cache to the
 * other's, so a round trip is two transfers. No pause in the spins: it
 * would add its own latency, and the probe lasts milliseconds. */
typedef struct {
  _Alignas(64) atomic_uint ball; /* odd: the echo's turn, even: the timer's */
  _Alignas(64) atomic_int ready; /* the echo is on its CPU */
  atomic_int gave_up;            /* the timer stopped waiting */
  unsigned rounds;
  double ns; /* per round trip; NAN: gave up */
} rtt_probe_t;

/* After this long, the other thread is not running at all: give up rather
 * than spin on (one usable CPU, or a vCPU the host took away). */
# define RTT_PATIENCE_NS 200000000u

static void* rtt_echo(void* arg) {
  rtt_probe_t* t = arg;
  unsigned i;
  atomic_store(&t->ready, 1);
  for (i = 0; i < t->rounds; i++) {
    unsigned spins = 0;
    while (atomic_load_explicit(&t->ball, memory_order_acquire) != 2 * i + 1)
      if (++spins % 4096 == 0 && atomic_load(&t->gave_up))
        return NULL;
    atomic_store_explicit(&t->ball, 2 * i + 2, memory_order_release);
  }
  return NULL;
}

static void* rtt_timer(void* arg) {
  rtt_probe_t* t = arg;
  uint64_t start = uv_hrtime();
  unsigned i;
  while (!atomic_load(&t->ready))
    if (uv_hrtime() - start > RTT_PATIENCE_NS)
      goto give_up;
  start = uv_hrtime();
  for (i = 0; i < t->rounds; i++) {
    unsigned spins = 0;
    atomic_store_explicit(&t->ball, 2 * i + 1, memory_order_release);
    while (atomic_load_explicit(&t->ball, memory_order_acquire) != 2 * i + 2)
      if (++spins % 4096 == 0 && uv_hrtime() - start > RTT_PATIENCE_NS)
        goto give_up;
  }
  t->ns = (double) (uv_hrtime() - start) / t->rounds;
  return NULL;
give_up:
  atomic_store(&t->gave_up, 1);
  return NULL;
}

/* Start fn on cpu (its affinity set before it runs). */
static int rtt_start(pthread_t* th, int cpu, void* (*fn)(void*), void* arg) {
  pthread_attr_t attr;
  cpu_set_t set;
  int e;
  if (pthread_attr_init(&attr) != 0)
    return -1;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  e = pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
  if (e == 0)
    e = pthread_create(th, &attr, fn, arg);
  pthread_attr_destroy(&attr);
  return e == 0 ? 0 : -1;
}
#endif

double bench_cross_cpu_rtt_ns(unsigned rounds, int* cpu_a, int* cpu_b) {
#if defined(__linux__)
  static rtt_probe_t t; /* aligned lines; one probe at a time */
  cpu_set_t mine;
  pthread_t echo, timer;
  int a = -1, b = -1, i;
  if (rounds == 0 || sched_getaffinity(0, sizeof(mine), &mine) != 0)
    return NAN;
  for (i = 0; i < CPU_SETSIZE && b < 0; i++)
    if (CPU_ISSET(i, &mine)) {
      if (a < 0)
        a = i;
      else
        b = i;
    }
  if (b < 0)
    return NAN; /* one CPU: nothing to cross */
  atomic_store(&t.ball, 0);
  atomic_store(&t.ready, 0);
  atomic_store(&t.gave_up, 0);
  t.rounds = rounds;
  t.ns = NAN;
  if (rtt_start(&echo, b, rtt_echo, &t) != 0)
    return NAN;
  if (rtt_start(&timer, a, rtt_timer, &t) != 0) {
    atomic_store(&t.gave_up, 1);
    pthread_join(echo, NULL);
    return NAN;
  }
  pthread_join(timer, NULL);
  pthread_join(echo, NULL);
  if (cpu_a != NULL)
    *cpu_a = a;
  if (cpu_b != NULL)
    *cpu_b = b;
  return t.ns;
#else
  (void) rounds;
  (void) cpu_a;
  (void) cpu_b;
  return NAN;
#endif
}

double bench_cpu_seconds(void) {
  uv_rusage_t ru;
  if (uv_getrusage(&ru) != 0)
    return 0;
  return (double) ru.ru_utime.tv_sec + (double) ru.ru_stime.tv_sec +
         ((double) ru.ru_utime.tv_usec + (double) ru.ru_stime.tv_usec) / 1e6;
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*) a;
  uint64_t y = *(const uint64_t*) b;
  return x < y ? -1 : x > y;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*) a;
  double y = *(const double*) b;
  return x < y ? -1 : x > y;
}

void bench_sort_u64(uint64_t* v, size_t n) {
  if (n > 1)
    qsort(v, n, sizeof(*v), cmp_u64);
}

uint64_t bench_quantile_sorted(const uint64_t* v, size_t n, double q) {
  size_t rank;
  if (n == 0)
    return 0;
  /* Nearest rank: the smallest value with at least q of the samples at or
   * below it. */
  rank = (size_t) (q * (double) n + 0.999999999);
  if (rank < 1)
    rank = 1;
  if (rank > n)
    rank = n;
  return v[rank - 1];
}

double bench_median(double* v, size_t n) {
  if (n == 0)
    return 0;
  qsort(v, n, sizeof(*v), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bench_minmax(const double* v, size_t n, double* min, double* max) {
  size_t i;
  *min = *max = n ? v[0] : 0;
  for (i = 1; i < n; i++) {
    if (v[i] < *min)
      *min = v[i];
    if (v[i] > *max)
      *max = v[i];
  }
}
