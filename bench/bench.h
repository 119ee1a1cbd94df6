/* bench.h: the pieces shared by the files of uvq-bench.
 *
 * The benchmark is one program (bench/uvq-bench.c drives it and reports);
 * each family of cases lives in its own file:
 *   queue-cases.c      uvq's queue in four modes and the two hand-written
 *                      reference bridges it must beat;
 *   channel-cases.c    uvq's channel and a mutex + condition variable buffer;
 *   broadcast-cases.c  uvq's broadcaster fanning out to counting sinks;
 *   util.c             clocks, pacing, percentiles, memory, statistics.
 *
 * Nothing here is part of uvq's API: the cases use only include/uvq.h.
 */
#ifndef UVQ_BENCH_H
#define UVQ_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "uvq.h"

/* One benchmark event. The references ignore `link`; everything else is what
 * a real application would carry: who sent it, its place in that sender's
 * sequence, and (for latency) when it was enqueued. */
typedef struct {
  uvq_event_t link; /* uvq's intrusive link */
  uint64_t t_enq;   /* uv_hrtime() just before the enqueue; 0: not sampled */
  uint32_t seq;     /* position in its producer's sequence, from 0 */
  uint16_t producer;
  uint16_t done;    /* times delivered or dropped: must end at exactly 1 */
} bench_ev_t;

/* ---- queue cases (queue-cases.c) ---------------------------------------- */

typedef enum {
  PAT_UVQ_UNBOUNDED = 0, /* uvq queue, capacity 0 */
  PAT_UVQ_BLOCK,         /* uvq queue, bounded, UVQ_BLOCK */
  PAT_UVQ_DROP,          /* uvq queue, bounded, UVQ_DROP_NEW */
  PAT_UVQ_POLL,          /* uvq queue, unbounded, with a poll window */
  PAT_REF_MALLOC,        /* mutex + malloc'd node + uv_async_send per event */
  PAT_REF_RING,          /* mutex + array ring, send on empty -> non-empty */
  PAT_COUNT
} pattern_t;

extern const char* const bench_pattern_names[PAT_COUNT];
/* Parse a pattern name; -1 when unknown. "uvq-bounded" is PAT_UVQ_BLOCK. */
int bench_pattern_parse(const char* name);

typedef struct {
  pattern_t pattern;
  unsigned producers;    /* 1..65535 */
  uint64_t events;       /* in total, split evenly across producers */
  size_t capacity;       /* bounded uvq modes */
  double rate;           /* > 0: producers pace themselves to this many
                          * events/s in total and stamp every event */
  unsigned sample_every; /* unpaced: stamp every k-th event (0: none) */
  int minimal;           /* callgrind: the consumer only counts, the events
                          * are left as calloc made them, no final scan */
  double stall_seconds;  /* no progress for this long: give up, report */
  unsigned long timer_slack; /* paced producers' timer slack, ns (0: the
                              * system's default) */
  unsigned poll_us;      /* PAT_UVQ_POLL: the queue's poll window */
  int measure_mem;       /* hand free heap back to the system first and
                          * measure the peak RSS growth (the cold start
                          * this causes makes the run's time meaningless) */
} qrun_cfg_t;

typedef struct {
  double seconds;        /* start signal to the last event accounted for */
  uint64_t delivered;
  uint64_t dropped;
  uint64_t wakeups;      /* uvq: stats.wakeups; refs: uv_async_send calls */
  uint64_t passes;       /* loop callbacks that drained the queue */
  uint64_t max_depth;    /* uvq: stats.max_depth; refs: largest batch */
  int64_t peak_mem;      /* bytes the run added to the peak RSS; -1 not
                          * measured or unknown */
  uint64_t violations;   /* order, exactly-once, counts, unexpected errors */
  char what[200];        /* the first violation, in words */
  double cpu_seconds;    /* the process's CPU time (user + system, every
                          * thread) from the start signal to the end */
  uint64_t* lat;         /* latency samples in ns (malloc'd: caller frees) */
  size_t nlat;
  uint64_t* lat_sched;   /* paced: the same events' latency from their
                          * slot's time, so with the producer's lateness
                          * (nlat of them; malloc'd: caller frees), or NULL */
} qrun_res_t;

/* Run one case on a fresh loop owned by the calling thread. evs holds at
 * least cfg->events events; unless cfg->minimal, they are (re)initialised
 * here. Returns 0, or -1 when the run could not be set up (a message was
 * printed); violations are reported in res, not by the return value. */
int bench_queue_run(const qrun_cfg_t* cfg, bench_ev_t* evs, qrun_res_t* res);

/* ---- channel cases (channel-cases.c) ------------------------------------ */

typedef enum {
  CPAT_UVQ_CHANNEL = 0, /* uvq_channel_t */
  CPAT_REF_CONDVAR,     /* mutex + two condition variables + array ring */
  CPAT_COUNT
} cpattern_t;

extern const char* const bench_cpattern_names[CPAT_COUNT];

typedef struct {
  cpattern_t pattern;
  unsigned senders;
  unsigned receivers;
  uint64_t events;
  size_t capacity;
} crun_cfg_t;

typedef struct {
  double seconds;
  uint64_t received;
  uint64_t violations;
  char what[200];
} crun_res_t;

/* As bench_queue_run, for a channel case (no loop: plain threads). */
int bench_channel_run(const crun_cfg_t* cfg, bench_ev_t* evs, crun_res_t* res);

/* ---- broadcaster cases (broadcast-cases.c) ------------------------------ */

typedef struct {
  unsigned sinks;
  uint64_t events; /* written to the broadcaster (each reaches every sink) */
  int queued;      /* 0: the loop thread writes to the broadcaster itself;
                    * 1: one producer thread enqueues into an unbounded
                    * queue whose sink is the broadcaster */
} brun_cfg_t;

typedef struct {
  double seconds;
  uint64_t deliveries; /* counted by the sinks: events x sinks when right */
  uint64_t violations;
  char what[200];
} brun_res_t;

/* As bench_queue_run, for a broadcaster case. */
int bench_broadcast_run(const brun_cfg_t* cfg, bench_ev_t* evs,
                        brun_res_t* res);

/* ---- utilities (util.c) ------------------------------------------------- */

/* Record a violation: count it, keep the first description. */
void bench_violation(uint64_t* count, char* what, size_t size,
                     const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Sleep until the uv_hrtime() clock reads at least t (ns). */
void bench_sleep_until(uint64_t t);
/* Set the calling thread's Linux timer slack to ns (how late a sleep may
 * end); 0 keeps the default. Returns 0, or -1 when it cannot be set (not
 * Linux, or the kernel refused). */
int bench_set_timer_slack(unsigned long ns);
/* Whether bench_set_timer_slack(ns) works here (tried on the calling
 * thread, whose slack is then put back). */
int bench_timer_slack_ok(unsigned long ns);

/* Keep freed heap in the process (glibc: no automatic trim, big blocks from
 * the heap rather than mmap), so that a timed run reuses what the run
 * before it freed instead of faulting it in again; the memory runs still
 * trim explicitly (bench_mem_mark). No-op elsewhere. */
void bench_malloc_keep(void);
/* Peak memory: bench_mem_mark() returns free heap to the system, resets the
 * process's peak RSS to its current RSS and returns that RSS in bytes;
 * bench_mem_peak() returns the peak RSS since the mark. Both return -1 when
 * the system cannot tell (not Linux, /proc not writable). */
int64_t bench_mem_mark(void);
int64_t bench_mem_peak(void);
/* The process's CPU time so far, user + system, every thread (seconds);
 * 0 when the system cannot tell. */
double bench_cpu_seconds(void);
/* The machine's CPU time so far, every CPU, in ticks of /proc/stat: *total
 * all of it, *steal what the hypervisor gave to other guests while this
 * one had work for the CPU. Returns 0, or -1 when the system cannot tell
 * (not Linux, no /proc). */
int bench_host_ticks(uint64_t* steal, uint64_t* total);
/* How long one cache line takes to go from one CPU to another and back:
 * two threads, pinned to the first two CPUs this process may run on, pass
 * it rounds times; nanoseconds per round trip, and the two CPUs in *cpu_a,
 * *cpu_b (either may be NULL). NAN when the system cannot tell (not
 * Linux, fewer than two CPUs, a thread that cannot be started or pinned,
 * or one that did not run for 200 ms). Under a hypervisor the figure is
 * where the host runs the two vCPUs at that moment, which it may change
 * at any time: on the machine of docs/bench.md it moved between about 75
 * and 800 ns within seconds. */
double bench_cross_cpu_rtt_ns(unsigned rounds, int* cpu_a, int* cpu_b);

/* Sort v (n values) and return the q-quantile (0..1) by nearest rank; 0 for
 * n == 0. */
uint64_t bench_quantile_sorted(const uint64_t* v, size_t n, double q);
void bench_sort_u64(uint64_t* v, size_t n);
double bench_median(double* v, size_t n); /* sorts v */
void bench_minmax(const double* v, size_t n, double* min, double* max);

#endif /* UVQ_BENCH_H */
