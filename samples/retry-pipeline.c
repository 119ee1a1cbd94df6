/* retry-pipeline: worker threads feed a flaky destination through a queue, a
 * filter and a retrying sink, and every event is accounted for.
 *
 *   worker 1 ..\                    loop thread
 *   worker 2 ...+--> queue -----> filter ------> retrying sink --> flaky
 *   worker N ../    bounded,      level >= -l    backoff or        sink:
 *                   UVQ_BLOCK     passes, the    breaker; gives    fails -f%,
 *                                 rest is taken  up after -g       "again" -a%
 *                                 and dropped    failures          (timer)
 *
 * What it shows:
 *   - Backpressure across threads: the queue is bounded (-c, default 32)
 *     with UVQ_BLOCK. While the retrying sink waits out a backoff it answers
 *     UVQ_EAGAIN, the filter passes that on, the queue holds its head event
 *     and pauses, fills up, and the workers block in uvq_queue_enqueue.
 *     Each worker counts how often it found the queue full.
 *   - A sink of your own with flow control: the flaky sink fails a
 *     deterministic pseudo-random share of writes (-f, default 30%) with
 *     UV_EIO, and answers UVQ_EAGAIN to another share (-a, default 5%),
 *     then calls uvq_sink_ready() from a 1-2 ms uv_timer_t.
 *   - A strategy of your own around a built-in one: -s backoff (exponential
 *     backoff with jitter, base 1 ms, factor 1 ms, max 8 ms) or -s breaker
 *     (after 2 failures in a row, wait 5 ms), wrapped in a small strategy
 *     that gives an event up after -g failures in a row (default 4; 0:
 *     never). Given-up events are dropped and counted by the retrying sink.
 *   - Exactly-once release, checked: each event is reference counted and
 *     its release callback ticks a per-event counter. When the last event
 *     was released the pipeline is idle, so the queue is stopped in drain
 *     mode; it closes the filter, which closes the retrying sink, which
 *     closes the flaky sink; every timer closes and uv_run returns.
 *   - The accounting at the end: produced = filtered out + delivered +
 *     dropped (by the strategy) + failed (queue) + refused (enqueue), every
 *     event released exactly once, no event delivered twice or out of its
 *     worker's order, none that the filter should have stopped. The exit
 *     status is 1 if any of that does not hold.
 *
 * Run:  ./samples/retry-pipeline
 *       ./samples/retry-pipeline -w 8 -n 1000 -s breaker -f 50 -g 0
 * Options: -w worker threads (default 4), -n events per worker (default
 * 500), -c queue capacity (default 32), -l lowest level passed by the
 * filter, 0-4 (levels are 0-3, default 1: a quarter is filtered out), -f
 * failure percentage, -a "again" percentage, -s backoff|breaker, -g give
 * up after N failures of one event (0: never), -r seed of the flaky sink
 * and the backoff's jitter (default 1), -h.
 */
#ifndef _GNU_SOURCE
# define _POSIX_C_SOURCE 200809L
#endif
#include <inttypes.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "uvq.h"

#define CONTAINER_OF(ptr, type, field)                                       \
  ((type*) ((char*) (ptr) - offsetof(type, field)))

#define MAX_WORKERS 64
#define MAX_PER_WORKER 1000000u
#define LEVELS 4

struct pipeline;

/* One event. The uvq_event_t is the queue's link and reference count. */
struct item {
  uvq_event_t ev;
  struct pipeline* p;
  uint32_t id; /* worker * per_worker + seq: indexes the check arrays */
  uint32_t worker;
  uint32_t seq; /* the worker's own order */
  int level;    /* 0..3; the filter passes level >= min_level */
};

/* The destination: a sink that fails now and then. */
struct flaky {
  uvq_sink_t sink;
  uv_timer_t timer; /* ends an "again" */
  struct pipeline* p;
  uint64_t rng;
  unsigned fail_pct;
  unsigned again_pct;
  int waiting; /* said UVQ_EAGAIN, owes a ready */
  uint64_t writes;
  uint64_t taken;
  uint64_t failed;
  uint64_t agains;
};

/* A strategy that wraps another and gives an event up after `limit`
 * failures in a row. */
struct give_up {
  uvq_retry_strategy_t strategy; /* what uvq_retry_init gets */
  uvq_retry_strategy_t inner;
  unsigned limit;
  unsigned streak;
  uint64_t gave_up;
};

struct worker {
  uv_thread_t thread;
  struct pipeline* p;
  uint32_t index;
  uint64_t sent;
  uint64_t waited;  /* enqueues that found the queue full and blocked */
  uint64_t refused; /* enqueues that failed: the worker released them */
};

struct pipeline {
  uv_loop_t loop;
  uvq_queue_t queue;
  uvq_filter_t filter;
  uvq_retry_t retry;
  struct flaky flaky;
  struct give_up give_up;
  uvq_backoff_t backoff;
  uvq_breaker_t breaker;
  struct worker workers[MAX_WORKERS];
  unsigned nworkers;
  uint32_t per_worker;
  uint64_t total;
  int min_level;
  int closed; /* the queue's close callback ran */
  /* Checks. released is written by whichever thread drops the last
   * reference; the rest only on the loop thread. */
  atomic_uint* released;     /* per id: times its release callback ran */
  atomic_uint_fast64_t released_total;
  unsigned char* delivered;  /* per id: times the flaky sink took it */
  uint32_t* next_seq;        /* per worker: lowest seq it may deliver next */
  uint64_t order_errors;
  uint64_t filter_leaks;     /* delivered, though the filter should drop it */
  uint64_t duplicates;
};

/* splitmix64: small, good enough, and the same sequence on every run. */
static uint64_t next_random(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* -- events -------------------------------------------------------------- */

static void on_queue_closed(uvq_queue_t* q) {
  struct pipeline* p = q->data;
  p->closed = 1;
}

/* The last reference is gone. It may run on the loop thread (delivered,
 * filtered out, dropped by the strategy) or on a worker (its enqueue was
 * refused), hence the atomics. */
static void item_release(uvq_event_t* ev) {
  struct item* it = CONTAINER_OF(ev, struct item, ev);
  struct pipeline* p = it->p;
  atomic_fetch_add(&p->released[it->id], 1);
  free(it);
  /* Every event is released once it is done with, whichever way; so when
   * the last one is, nothing is left in the queue, the filter or the
   * retrying sink, and a drain stop loses nothing. Any thread may stop. */
  if (atomic_fetch_add(&p->released_total, 1) + 1 == p->total)
    uvq_queue_stop(&p->queue, UVQ_STOP_DRAIN, on_queue_closed);
}

/* -- workers ------------------------------------------------------------- */

static void worker_main(void* arg) {
  struct worker* w = arg;
  struct pipeline* p = w->p;
  uint32_t seq;
  for (seq = 0; seq < p->per_worker; seq++) {
    struct item* it = malloc(sizeof(*it));
    uint32_t id = w->index * p->per_worker + seq;
    uint64_t mix = id;
    int r;
    if (it == NULL) {
      /* Never made: count it as refused and tick its release by hand, so
       * that the totals (and the stop) still add up. */
      w->refused++;
      atomic_fetch_add(&p->released[id], 1);
      if (atomic_fetch_add(&p->released_total, 1) + 1 == p->total)
        uvq_queue_stop(&p->queue, UVQ_STOP_DRAIN, on_queue_closed);
      continue;
    }
    uvq_event_init(&it->ev, item_release);
    it->p = p;
    it->id = id;
    it->worker = w->index;
    it->seq = seq;
    it->level = (int) (next_random(&mix) % LEVELS);
    r = uvq_queue_try_enqueue(&p->queue, &it->ev);
    if (r == UVQ_EFULL) {
      w->waited++; /* backpressure: wait for the loop to make room */
      r = uvq_queue_enqueue(&p->queue, &it->ev);
    }
    if (r != 0) {
      w->refused++;
      uvq_event_unref(&it->ev); /* still ours on error */
    } else {
      w->sent++;
    }
  }
}

/* -- the filter's matcher ------------------------------------------------- */

static int match_level(const uvq_event_t* ev, void* arg) {
  const struct item* it = CONTAINER_OF(ev, const struct item, ev);
  return it->level >= *(const int*) arg;
}

/* -- the flaky sink ------------------------------------------------------- */

static void on_flaky_timer(uv_timer_t* t) {
  struct flaky* f = t->data;
  if (f->waiting) {
    f->waiting = 0;
    uvq_sink_ready(&f->sink); /* the retrying sink offers the event again */
  }
}

static int flaky_write(uvq_sink_t* sink, uvq_event_t* ev) {
  struct flaky* f = CONTAINER_OF(sink, struct flaky, sink);
  struct item* it = CONTAINER_OF(ev, struct item, ev);
  struct pipeline* p = f->p;
  unsigned x;

  if (f->waiting)
    return UVQ_EAGAIN; /* the timer's ready is still to come */
  f->writes++;
  x = (unsigned) (next_random(&f->rng) % 100);
  if (x < f->fail_pct) {
    f->failed++;
    return UV_EIO;
  }
  if (x < f->fail_pct + f->again_pct) {
    f->agains++;
    f->waiting = 1;
    uv_timer_start(&f->timer, on_flaky_timer, 1 + x % 2, 0);
    return UVQ_EAGAIN;
  }
  /* Taken: check it on the way. The write only borrows ev. */
  f->taken++;
  if (p->delivered[it->id]++ != 0)
    p->duplicates++;
  if (it->seq < p->next_seq[it->worker])
    p->order_errors++;
  else
    p->next_seq[it->worker] = it->seq + 1;
  if (it->level < p->min_level)
    p->filter_leaks++;
  return 0;
}

static void on_flaky_timer_closed(uv_handle_t* h) {
  struct flaky* f = h->data;
  uvq_sink_closed(&f->sink);
}

static void flaky_close(uvq_sink_t* sink) {
  struct flaky* f = CONTAINER_OF(sink, struct flaky, sink);
  uv_timer_stop(&f->timer);
  if (f->waiting) {
    f->waiting = 0;
    uvq_sink_ready(sink); /* the upstream retries and learns UVQ_ECLOSED */
  }
  uv_close((uv_handle_t*) &f->timer, on_flaky_timer_closed);
}

static const uvq_sink_vtable_t flaky_vt = { flaky_write, flaky_close };

/* -- the give-up strategy ------------------------------------------------- */

static uint64_t give_up_proceed(void* state, const uvq_event_t* ev) {
  struct give_up* g = state;
  return g->inner.proceed != NULL ? g->inner.proceed(g->inner.state, ev) : 0;
}

static int give_up_failure(void* state, const uvq_event_t* ev, int err) {
  struct give_up* g = state;
  int drop = 0;
  if (g->inner.failure != NULL)
    drop = g->inner.failure(g->inner.state, ev, err);
  /* The retrying sink handles one event at a time, so the failures in a
   * row since the last success or drop are this event's. */
  if (!drop && g->limit != 0 && ++g->streak >= g->limit)
    drop = 1;
  if (drop) {
    g->streak = 0;
    g->gave_up++;
    /* The next event starts afresh: the inner strategy forgets this one's
     * failures as it would after a success. */
    if (g->inner.success != NULL)
      g->inner.success(g->inner.state, ev);
  }
  return drop;
}

static void give_up_success(void* state, const uvq_event_t* ev) {
  struct give_up* g = state;
  g->streak = 0;
  if (g->inner.success != NULL)
    g->inner.success(g->inner.state, ev);
}

/* -- main ----------------------------------------------------------------- */

static void usage(FILE* out) {
  fprintf(out,
          "usage: retry-pipeline [-w workers] [-n events-per-worker] "
          "[-c capacity]\n"
          "         [-l min-level] [-f fail-%%] [-a again-%%] "
          "[-s backoff|breaker] [-g give-up] [-r seed]\n");
}

static int parse_num(const char* arg, unsigned long max, unsigned long* out) {
  char* end;
  unsigned long v;
  if (arg[0] < '0' || arg[0] > '9')
    return -1;
  v = strtoul(arg, &end, 10);
  if (*end != '\0' || v > max)
    return -1;
  *out = v;
  return 0;
}

static int check(const char* what, int ok) {
  printf("  %-64s %s\n", what, ok ? "ok" : "FAILED");
  return ok;
}

int main(int argc, char** argv) {
  static struct pipeline pl;
  struct pipeline* p = &pl;
  unsigned long v;
  unsigned long capacity = 32;
  unsigned long give_up = 4;
  unsigned long seed = 1;
  const char* strategy = "backoff";
  uvq_queue_options_t opts;
  uvq_queue_stats_t qs;
  uvq_filter_stats_t fs;
  uvq_retry_stats_t rs;
  uint64_t refused = 0, waited = 0, sent = 0;
  uint64_t released_once = 0, delivered_ids = 0;
  uint64_t t0, i;
  unsigned k;
  int opt, r, ok;

  p->nworkers = 4;
  p->per_worker = 500;
  p->min_level = 1;
  p->flaky.fail_pct = 30;
  p->flaky.again_pct = 5;
  while ((opt = getopt(argc, argv, "w:n:c:l:f:a:s:g:r:h")) != -1) {
    switch (opt) {
    case 'w':
      if (parse_num(optarg, MAX_WORKERS, &v) != 0 || v == 0)
        goto bad;
      p->nworkers = (unsigned) v;
      break;
    case 'n':
      if (parse_num(optarg, MAX_PER_WORKER, &v) != 0 || v == 0)
        goto bad;
      p->per_worker = (uint32_t) v;
      break;
    case 'c':
      if (parse_num(optarg, 1u << 20, &capacity) != 0 || capacity == 0)
        goto bad;
      break;
    case 'l':
      if (parse_num(optarg, LEVELS, &v) != 0)
        goto bad;
      p->min_level = (int) v;
      break;
    case 'f':
      if (parse_num(optarg, 100, &v) != 0)
        goto bad;
      p->flaky.fail_pct = (unsigned) v;
      break;
    case 'a':
      if (parse_num(optarg, 100, &v) != 0)
        goto bad;
      p->flaky.again_pct = (unsigned) v;
      break;
    case 's':
      if (strcmp(optarg, "backoff") != 0 && strcmp(optarg, "breaker") != 0)
        goto bad;
      strategy = optarg;
      break;
    case 'g':
      if (parse_num(optarg, 1000000, &give_up) != 0)
        goto bad;
      break;
    case 'r':
      if (parse_num(optarg, (unsigned long) -1, &seed) != 0)
        goto bad;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      goto bad;
    }
  }
  if (optind != argc || p->flaky.fail_pct + p->flaky.again_pct > 100)
    goto bad;
  /* A sink that never takes an event (fail + again = 100) would be retried
   * forever unless its failures give up: without -g, or when it only ever
   * says "again" (which is no failure), the run would never finish. */
  if (p->flaky.fail_pct + p->flaky.again_pct == 100 &&
      (give_up == 0 || p->flaky.fail_pct == 0)) {
    fprintf(stderr, "retry-pipeline: with -f + -a = 100 no write succeeds: "
                    "it needs -f > 0 and -g > 0 to finish\n");
    return 2;
  }

  p->total = (uint64_t) p->nworkers * p->per_worker;
  p->released = calloc(p->total, sizeof(*p->released));
  p->delivered = calloc(p->total, 1);
  p->next_seq = calloc(p->nworkers, sizeof(*p->next_seq));
  if (p->released == NULL || p->delivered == NULL || p->next_seq == NULL) {
    fprintf(stderr, "retry-pipeline: out of memory\n");
    return 1;
  }
  for (i = 0; i < p->total; i++)
    atomic_init(&p->released[i], 0);
  atomic_init(&p->released_total, 0);

  r = uv_loop_init(&p->loop);
  if (r != 0) {
    fprintf(stderr, "retry-pipeline: loop: %s\n", uv_strerror(r));
    return 1;
  }

  /* Build the pipeline from its end: each stage becomes the upstream of
   * the one after it. */
  p->flaky.p = p;
  p->flaky.rng = seed;
  uv_timer_init(&p->loop, &p->flaky.timer);
  p->flaky.timer.data = &p->flaky;
  uvq_sink_init(&p->flaky.sink, &flaky_vt);

  if (strcmp(strategy, "backoff") == 0) {
    uvq_backoff_init(&p->backoff, 1, 1, 8, seed);
    p->give_up.inner = p->backoff.strategy;
  } else {
    uvq_breaker_init(&p->breaker, 2, 5);
    p->give_up.inner = p->breaker.strategy;
  }
  p->give_up.limit = (unsigned) give_up;
  p->give_up.strategy.proceed = give_up_proceed;
  p->give_up.strategy.failure = give_up_failure;
  p->give_up.strategy.success = give_up_success;
  p->give_up.strategy.state = &p->give_up;

  r = uvq_retry_init(&p->loop, &p->retry, &p->flaky.sink,
                     &p->give_up.strategy);
  if (r == 0)
    r = uvq_filter_init(&p->filter, &p->retry.sink, match_level,
                        &p->min_level);
  if (r != 0) {
    fprintf(stderr, "retry-pipeline: setup: %s\n", uvq_strerror(r));
    return 1;
  }
  memset(&opts, 0, sizeof(opts));
  opts.capacity = capacity;
  opts.overflow = UVQ_BLOCK;
  r = uvq_queue_init_sink(&p->loop, &p->queue, &p->filter.sink, &opts);
  if (r != 0) {
    fprintf(stderr, "retry-pipeline: queue: %s\n", uvq_strerror(r));
    return 1;
  }
  p->queue.data = p;

  printf("retry-pipeline: %u workers x %u events, queue capacity %lu, "
         "filter level >= %d,\n  flaky sink fails %u%% and says again %u%%, "
         "strategy %s, give up after %lu failures%s, seed %lu\n",
         p->nworkers, (unsigned) p->per_worker, capacity, p->min_level,
         p->flaky.fail_pct, p->flaky.again_pct, strategy, give_up,
         give_up == 0 ? " (never)" : "", seed);

  t0 = uv_hrtime();
  for (k = 0; k < p->nworkers; k++) {
    struct worker* w = &p->workers[k];
    w->p = p;
    w->index = k;
    r = uv_thread_create(&w->thread, worker_main, w);
    if (r != 0) {
      fprintf(stderr, "retry-pipeline: thread: %s\n", uv_strerror(r));
      return 1; /* the others are still running: no clean way back */
    }
  }

  /* Returns once the queue, the filter, the retrying sink and the flaky
   * sink all closed: the last release stopped the queue. */
  uv_run(&p->loop, UV_RUN_DEFAULT);

  /* Every event was released, so every worker is past its last enqueue;
   * the queue waited for the last one to leave it before closing. */
  for (k = 0; k < p->nworkers; k++) {
    uv_thread_join(&p->workers[k].thread);
    sent += p->workers[k].sent;
    waited += p->workers[k].waited;
    refused += p->workers[k].refused;
  }

  uvq_queue_stats(&p->queue, &qs);
  uvq_filter_stats(&p->filter, &fs);
  uvq_retry_stats(&p->retry, &rs);
  for (i = 0; i < p->total; i++) {
    released_once += atomic_load(&p->released[i]) == 1;
    delivered_ids += p->delivered[i] != 0;
  }

  printf("done in %.2f s\n", (double) (uv_hrtime() - t0) / 1e9);
  printf("produced   %" PRIu64 " events; workers found the queue full %"
         PRIu64 " times, %" PRIu64 " enqueues refused\n",
         p->total, waited, refused);
  printf("queue      enqueued %" PRIu64 ", delivered %" PRIu64
         ", failed %" PRIu64 ", discarded %" PRIu64 ", highest depth %"
         PRIu64 ", wakeups %" PRIu64 "\n",
         qs.enqueued, qs.delivered, qs.failed, qs.discarded, qs.max_depth,
         qs.wakeups);
  printf("filter     filtered out %" PRIu64 " (passed on %" PRIu64
         " times, retries of an \"again\" included)\n",
         fs.unmatched, fs.matched);
  printf("retry      took %" PRIu64 ", delivered %" PRIu64 ", attempts %"
         PRIu64 ", failures %" PRIu64 ", retries %" PRIu64 ", dropped %"
         PRIu64 " (gave up)\n",
         rs.written, rs.delivered, rs.attempts, rs.failures, rs.retries,
         rs.dropped);
  printf("flaky sink writes %" PRIu64 ", took %" PRIu64 ", failed %" PRIu64
         ", said again %" PRIu64 "\n",
         p->flaky.writes, p->flaky.taken, p->flaky.failed, p->flaky.agains);

  printf("accounting:\n");
  ok = 1;
  ok &= check("the pipeline closed by itself", p->closed);
  ok &= check("produced = filtered out + delivered + dropped + failed "
              "+ refused",
              p->total == fs.unmatched + p->flaky.taken + rs.dropped +
                              qs.failed + qs.discarded + refused);
  ok &= check("queue: enqueued = produced - refused = delivered + failed",
              qs.enqueued == p->total - refused && qs.enqueued == sent &&
                  qs.enqueued == qs.delivered + qs.failed + qs.discarded +
                                     qs.dropped_new + qs.dropped_oldest);
  ok &= check("queue delivered = filtered out + taken by the retrying sink",
              qs.delivered == fs.unmatched + rs.written);
  ok &= check("retrying sink: took = delivered + dropped",
              rs.written == rs.delivered + rs.dropped);
  ok &= check("retrying sink delivered = flaky sink took",
              rs.delivered == p->flaky.taken);
  ok &= check("dropped = given up by the strategy",
              rs.dropped == p->give_up.gave_up);
  ok &= check("every event released exactly once",
              released_once == p->total &&
                  atomic_load(&p->released_total) == p->total);
  ok &= check("no event delivered twice",
              p->duplicates == 0 && delivered_ids == p->flaky.taken);
  ok &= check("each worker's events delivered in its order",
              p->order_errors == 0);
  ok &= check("nothing delivered that the filter should stop",
              p->filter_leaks == 0);

  r = uv_loop_close(&p->loop);
  ok &= check("uv_loop_close() == 0", r == 0);
  free(p->released);
  free(p->delivered);
  free(p->next_seq);
  printf("%s\n", ok ? "all accounted for" : "ACCOUNTING FAILED");
  return ok ? 0 : 1;

bad:
  usage(stderr);
  return 2;
}
