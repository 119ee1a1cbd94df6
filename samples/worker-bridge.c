/* worker-bridge: worker threads do CPU work, the loop collects the results.
 *
 * This is the job uvq's queue exists for. A libuv program keeps its loop
 * thread free for I/O and timers and gives heavy computation to threads of
 * its own; each result must come back to the loop, where the program's state
 * lives, without a lock on that state and without one wakeup per result.
 *
 *   worker 1 ..\                                   loop thread
 *   worker 2 ...+-- uvq_queue_enqueue(result) -->  process(): record, free
 *   worker N ../    any thread; waits while the    uv_timer_t: progress line
 *                   queue holds -c results         uv_queue_work: join the
 *                                                  workers, then drain stop
 *
 * What it shows:
 *   - Ownership: a worker mallocs each result; once uvq_queue_enqueue
 *     returned 0 the queue owns it, and the process callback (loop thread)
 *     takes it over and frees it. The worker must not touch it again.
 *   - Backpressure: the queue is bounded (-c, default 1024) with UVQ_BLOCK,
 *     so workers wait when the loop falls behind instead of piling up memory.
 *   - Coalesced wakeups: the summary prints how often the loop was woken;
 *     under load that is far less than once per result.
 *   - A loop that never blocks: the workers are joined on libuv's thread
 *     pool (uv_queue_work); only when all of them are gone does the loop ask
 *     for a drain stop, which delivers what is still queued and then closes
 *     the queue, so uv_run returns by itself.
 *   - Exactly-once delivery, checked: every chunk has a seen counter; each
 *     worker sums what it sent and the loop sums what it received, and the
 *     totals must match; every 997th chunk is recomputed on the loop. Any
 *     mismatch makes the exit status 1.
 *
 * The work: chunk i is a block of pseudo-random bytes generated from i alone
 * (xorshift64*), hashed with 64-bit FNV-1a. The default workload (200,000
 * chunks of 8 KiB, 1.6 GB hashed) takes a second or two on two cores.
 *
 * Run:  ./samples/worker-bridge
 *       ./samples/worker-bridge -t 8 -n 20000 -k 16 -c 64
 * Options: -t worker threads (default 4), -n chunks (one result each),
 * -k KiB per chunk, -c queue capacity (0: unbounded), -p always show the
 * progress line, -q never (default: only when stderr is a terminal), -h.
 */
#ifndef _GNU_SOURCE
# define _POSIX_C_SOURCE 200809L /* getopt, isatty; <uv.h> needs POSIX too */
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

#define MAX_WORKERS 256
#define SPOT_CHECK_EVERY 997

/* One result. The uvq_event_t is the queue's link, so uvq allocates nothing
 * to queue it (the malloc of the whole result is this program's choice). */
struct result {
  uvq_event_t ev;
  uint64_t chunk;
  uint64_t hash;
};

struct bridge;

struct worker {
  uv_thread_t thread;
  struct bridge* b;
  uint64_t sent; /* results it enqueued */
  uint64_t sum;  /* its total of mix(chunk, hash) over them */
  int error;     /* why it stopped early; 0 if it did not */
};

struct bridge {
  uv_loop_t loop;
  uvq_queue_t queue;
  uv_timer_t progress;
  uv_work_t joiner;

  /* Settings. */
  unsigned nworkers;
  uint64_t nchunks;
  size_t chunk_size;
  size_t capacity;
  int show_progress;

  /* Workers take chunk numbers from here. */
  atomic_uint_fast64_t next_chunk;
  unsigned started; /* worker threads actually created */
  struct worker workers[MAX_WORKERS];

  /* Loop thread only. */
  unsigned char* seen; /* per chunk: how many times it arrived (saturated) */
  unsigned char* scratch;
  uint64_t received;
  uint64_t duplicates;
  uint64_t out_of_range;
  uint64_t sum;
  uint64_t spot_checked;
  uint64_t spot_bad;
  uint64_t released; /* results the queue dropped: never, with UVQ_BLOCK */
  uint64_t start_ns;
  uint64_t end_ns;
  uvq_queue_stats_t final; /* the queue's counters as it closed */
  int closed;
};

/* -- the work ------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15u;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
  return x ^ (x >> 31);
}

/* Chunk i's bytes depend on i only, so the loop can regenerate any chunk. */
static void generate(uint64_t chunk, unsigned char* buf, size_t len) {
  uint64_t s = splitmix64(chunk) | 1;
  size_t i;

  for (i = 0; i + 8 <= len; i += 8) {
    uint64_t v;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    v = s * 0x2545f4914f6cdd1du;
    memcpy(buf + i, &v, sizeof(v));
  }
  for (; i < len; i++)
    buf[i] = (unsigned char) i;
}

static uint64_t fnv1a64(const unsigned char* p, size_t len) {
  uint64_t h = 0xcbf29ce484222325u;
  size_t i;

  for (i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3u;
  }
  return h;
}

/* Summed over all results, this total ignores the order of arrival but
 * changes (with overwhelming probability) if a result is lost, duplicated
 * or corrupted on the way. */
static uint64_t mix(uint64_t chunk, uint64_t hash) {
  return splitmix64(hash ^ splitmix64(chunk));
}

/* -- worker threads ------------------------------------------------------- */

static void worker_main(void* arg) {
  struct worker* w = arg;
  struct bridge* b = w->b;
  unsigned char* buf = malloc(b->chunk_size);

  if (buf == NULL) {
    w->error = UVQ_ENOMEM;
    return;
  }
  for (;;) {
    uint64_t chunk = atomic_fetch_add(&b->next_chunk, 1);
    uint64_t m;
    struct result* r;
    int err;

    if (chunk >= b->nchunks)
      break;
    r = malloc(sizeof(*r));
    if (r == NULL) {
      w->error = UVQ_ENOMEM;
      break;
    }
    generate(chunk, buf, b->chunk_size);
    r->chunk = chunk;
    r->hash = fnv1a64(buf, b->chunk_size);
    m = mix(r->chunk, r->hash); /* now: after enqueue, r is not ours */

    /* Waits while the queue is full. On 0 the queue owns r (the loop may
     * have freed it before we get the next line); on an error we still do. */
    err = uvq_queue_enqueue(&b->queue, &r->ev);
    if (err != 0) {
      free(r);
      w->error = err;
      break;
    }
    w->sent++;
    w->sum += m;
  }
  free(buf);
}

/* -- the loop thread ------------------------------------------------------ */

static void process(uvq_queue_t* q, uvq_event_t* ev) {
  struct bridge* b = q->data;
  struct result* r = CONTAINER_OF(ev, struct result, ev);

  b->received++;
  if (r->chunk >= b->nchunks) {
    b->out_of_range++;
  } else {
    if (b->seen[r->chunk] != 0)
      b->duplicates++;
    if (b->seen[r->chunk] < 255)
      b->seen[r->chunk]++;
    b->sum += mix(r->chunk, r->hash);
    if (r->chunk % SPOT_CHECK_EVERY == 0) {
      generate(r->chunk, b->scratch, b->chunk_size);
      b->spot_checked++;
      if (fnv1a64(b->scratch, b->chunk_size) != r->hash)
        b->spot_bad++;
    }
  }
  free(r); /* ours since the queue handed it over */
}

/* The queue calls this for results it drops or discards. With UVQ_BLOCK and
 * a drain stop it never should; counted so that the check would notice. */
static void release(uvq_queue_t* q, uvq_event_t* ev) {
  struct bridge* b = q->data;
  b->released++;
  free(CONTAINER_OF(ev, struct result, ev));
}

static void print_progress(struct bridge* b, const uvq_queue_stats_t* st,
                           int last) {
  enum { WIDTH = 30 };
  double frac = (double) b->received / (double) b->nchunks;
  int filled = (int) (frac * WIDTH);
  char bar[WIDTH + 1];

  memset(bar, '#', (size_t) filled);
  memset(bar + filled, '.', (size_t) (WIDTH - filled));
  bar[WIDTH] = '\0';
  fprintf(stderr,
          "\r[%s] %5.1f%%  %" PRIu64 "/%" PRIu64 " results"
          "  queued %-5" PRIu64 "  wakeups %-7" PRIu64 "%s",
          bar, 100.0 * frac, b->received, b->nchunks, st->depth, st->wakeups,
          last ? "\n" : "");
  fflush(stderr);
}

static void on_progress(uv_timer_t* t) {
  struct bridge* b = t->data;
  uvq_queue_stats_t st;

  if (uvq_queue_stats(&b->queue, &st) == 0)
    print_progress(b, &st, 0);
}

static void on_queue_closed(uvq_queue_t* q) {
  struct bridge* b = q->data;

  b->end_ns = uv_hrtime();
  b->closed = 1;
  /* Every result is accounted for: these counters are final. */
  uvq_queue_stats(q, &b->final);
  if (b->show_progress) {
    print_progress(b, &b->final, 1);
    uv_close((uv_handle_t*) &b->progress, NULL);
  }
}

/* On a thread-pool thread: wait for the workers so the loop never does. */
static void join_workers(uv_work_t* req) {
  struct bridge* b = req->data;
  unsigned i;

  for (i = 0; i < b->started; i++)
    uv_thread_join(&b->workers[i].thread);
}

/* Back on the loop thread: no thread can enqueue any more. */
static void workers_joined(uv_work_t* req, int status) {
  struct bridge* b = req->data;
  int err;

  (void) status; /* UV_ECANCELED is impossible: nobody cancels it */
  /* Drain: everything still queued is delivered, then the queue closes. */
  err = uvq_queue_stop(&b->queue, UVQ_STOP_DRAIN, on_queue_closed);
  if (err != 0) {
    fprintf(stderr, "uvq_queue_stop: %s\n", uvq_strerror(err));
    abort(); /* the queue would keep the loop alive forever */
  }
}

/* -- the summary and its check ------------------------------------------- */

static int check_and_report(struct bridge* b) {
  const uvq_queue_stats_t* st = &b->final;
  double secs = (double) (b->end_ns - b->start_ns) / 1e9;
  uint64_t sent = 0;
  uint64_t sent_sum = 0;
  uint64_t missing = 0;
  uint64_t i;
  unsigned w;
  int ok = 1;

  for (w = 0; w < b->started; w++) {
    sent += b->workers[w].sent;
    sent_sum += b->workers[w].sum;
  }
  for (i = 0; i < b->nchunks; i++)
    if (b->seen[i] == 0)
      missing++;

  printf("worker-bridge: %u workers, %" PRIu64 " chunks of %zu KiB,"
         " queue capacity %zu%s\n",
         b->nworkers, b->nchunks, b->chunk_size / 1024, b->capacity,
         b->capacity == 0 ? " (unbounded)" : "");
  printf("  events        %" PRIu64 " delivered (%" PRIu64 " enqueued)\n",
         st->delivered, st->enqueued);
  printf("  elapsed       %.3f s\n", secs);
  printf("  events/s      %.0f\n", secs > 0 ? (double) st->delivered / secs
                                            : 0.0);
  printf("  wakeups       %" PRIu64 " (%" PRIu64 " drain passes)\n",
         st->wakeups, st->passes);
  printf("  events/wakeup %.1f\n",
         st->wakeups ? (double) st->delivered / (double) st->wakeups : 0.0);
  printf("  max depth     %" PRIu64 "\n", st->max_depth);

  for (w = 0; w < b->started; w++) {
    if (b->workers[w].error != 0) {
      printf("FAIL: worker %u stopped early: %s\n", w,
             uvq_strerror(b->workers[w].error));
      ok = 0;
    }
  }
  if (b->started != b->nworkers) {
    printf("FAIL: only %u of %u worker threads started\n", b->started,
           b->nworkers);
    ok = 0;
  }
  if (missing != 0 || b->duplicates != 0 || b->out_of_range != 0) {
    printf("FAIL: %" PRIu64 " chunks missing, %" PRIu64 " duplicated, %"
           PRIu64 " out of range\n", missing, b->duplicates, b->out_of_range);
    ok = 0;
  }
  if (b->received != b->nchunks || sent != b->nchunks ||
      st->delivered != b->received || st->enqueued != sent) {
    printf("FAIL: counts differ: %" PRIu64 " chunks, %" PRIu64 " sent, %"
           PRIu64 " received; queue says %" PRIu64 " enqueued, %" PRIu64
           " delivered\n", b->nchunks, sent, b->received, st->enqueued,
           st->delivered);
    ok = 0;
  }
  if (b->released != 0) {
    printf("FAIL: the queue released %" PRIu64 " results\n", b->released);
    ok = 0;
  }
  if (sent_sum != b->sum) {
    printf("FAIL: checksum total sent %016" PRIx64 " != received %016"
           PRIx64 "\n", sent_sum, b->sum);
    ok = 0;
  }
  if (b->spot_bad != 0) {
    printf("FAIL: %" PRIu64 " of %" PRIu64 " recomputed chunks differ\n",
           b->spot_bad, b->spot_checked);
    ok = 0;
  }
  if (ok)
    printf("check: OK: all %" PRIu64 " results arrived exactly once,"
           " checksum total %016" PRIx64 " matches, %" PRIu64
           " chunks recomputed on the loop\n",
           b->nchunks, b->sum, b->spot_checked);
  else
    printf("check: FAILED\n");
  return ok;
}

/* -- main ----------------------------------------------------------------- */

static void usage(FILE* f) {
  fprintf(f,
          "usage: worker-bridge [-t workers] [-n chunks] [-k KiB]"
          " [-c capacity] [-p|-q]\n"
          "  -t N  worker threads (default 4, at most %d)\n"
          "  -n N  chunks of work, one result event each (default 200000)\n"
          "  -k N  KiB per chunk (default 8, at most 1024)\n"
          "  -c N  queue capacity, 0 for unbounded (default 1024)\n"
          "  -p    always show the progress line; -q never (default: only\n"
          "        when stderr is a terminal)\n",
          MAX_WORKERS);
}

static int parse_u64(const char* s, uint64_t min, uint64_t max,
                     uint64_t* out) {
  unsigned long long v;
  char* end;

  if (s[0] < '0' || s[0] > '9')
    return -1;
  v = strtoull(s, &end, 10);
  if (*end != '\0' || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

int main(int argc, char** argv) {
  static struct bridge bridge; /* big (MAX_WORKERS): not on the stack */
  struct bridge* b = &bridge;
  uvq_queue_options_t opts;
  uint64_t v;
  unsigned i;
  int ok;
  int c;
  int r;

  b->nworkers = 4;
  b->nchunks = 200000;
  b->chunk_size = 8192;
  b->capacity = 1024;
  b->show_progress = isatty(STDERR_FILENO);
  while ((c = getopt(argc, argv, "t:n:k:c:pqh")) != -1) {
    switch (c) {
    case 't':
      if (parse_u64(optarg, 1, MAX_WORKERS, &v) != 0)
        goto bad;
      b->nworkers = (unsigned) v;
      break;
    case 'n':
      if (parse_u64(optarg, 1, UINT64_C(1) << 28, &v) != 0)
        goto bad;
      b->nchunks = v;
      break;
    case 'k':
      if (parse_u64(optarg, 1, 1024, &v) != 0)
        goto bad;
      b->chunk_size = (size_t) v * 1024;
      break;
    case 'c':
      if (parse_u64(optarg, 0, UINT64_C(1) << 28, &v) != 0)
        goto bad;
      b->capacity = (size_t) v;
      break;
    case 'p':
      b->show_progress = 1;
      break;
    case 'q':
      b->show_progress = 0;
      break;
    case 'h':
      usage(stdout);
      return EXIT_SUCCESS;
    default:
      goto bad;
    }
  }
  if (optind != argc)
    goto bad;

  b->seen = calloc((size_t) b->nchunks, 1);
  b->scratch = malloc(b->chunk_size);
  if (b->seen == NULL || b->scratch == NULL) {
    fprintf(stderr, "worker-bridge: out of memory\n");
    return EXIT_FAILURE;
  }
  if ((r = uv_loop_init(&b->loop)) != 0) {
    fprintf(stderr, "uv_loop_init: %s\n", uv_strerror(r));
    return EXIT_FAILURE;
  }

  memset(&opts, 0, sizeof(opts));
  opts.capacity = b->capacity;
  opts.overflow = UVQ_BLOCK; /* workers wait for room: nothing is dropped */
  opts.release = release;    /* needed: results are not uvq_event_init'ed */
  b->queue.data = b;
  if ((r = uvq_queue_init(&b->loop, &b->queue, process, &opts)) != 0) {
    fprintf(stderr, "uvq_queue_init: %s\n", uvq_strerror(r));
    return EXIT_FAILURE;
  }
  if (b->show_progress) {
    uv_timer_init(&b->loop, &b->progress);
    b->progress.data = b;
    uv_timer_start(&b->progress, on_progress, 100, 100);
  }

  b->start_ns = uv_hrtime();
  for (i = 0; i < b->nworkers; i++) {
    b->workers[i].b = b;
    r = uv_thread_create(&b->workers[i].thread, worker_main, &b->workers[i]);
    if (r != 0) {
      /* The threads already running do all the chunks; the check fails. */
      fprintf(stderr, "uv_thread_create: %s\n", uv_strerror(r));
      break;
    }
    b->started++;
  }
  b->joiner.data = b;
  if ((r = uv_queue_work(&b->loop, &b->joiner, join_workers,
                         workers_joined)) != 0) {
    fprintf(stderr, "uv_queue_work: %s\n", uv_strerror(r));
    abort(); /* workers are running and nobody would join them */
  }

  uv_run(&b->loop, UV_RUN_DEFAULT);

  ok = b->closed && check_and_report(b);
  if ((r = uv_loop_close(&b->loop)) != 0) {
    printf("FAIL: uv_loop_close: %s\n", uv_strerror(r));
    ok = 0;
  }
  free(b->seen);
  free(b->scratch);
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;

bad:
  usage(stderr);
  return 2;
}
