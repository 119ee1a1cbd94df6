/* queue-cases.c: uvq's queue against the bridges people write by hand.
 *
 *   P producer threads                         the loop thread
 *   ------------------                         ---------------
 *   wait at the gate                            (main, in uv_run)
 *   for each of its events:
 *     [paced: sleep until its slot; stamp]
 *     [saturated: stamp every k-th event]
 *     hand the event over ------------------->  consume(): check the
 *   the last one to finish: uvq stop (drain)     producer's order, mark the
 *                                                event done, take latency
 *
 * Five patterns share this frame and the same consumer, so that only the
 * hand-over differs:
 *   uvq-unbounded  uvq_queue_enqueue on an unbounded queue;
 *   uvq-block      the same on a bounded queue (UVQ_BLOCK);
 *   uvq-drop       the same on a bounded queue (UVQ_DROP_NEW): the release
 *                  callback counts what was dropped;
 *   ref-malloc     the usual hand-written bridge, also the shape of Node's
 *                  thread-safe functions: malloc a list node, append it under
 *                  a mutex, uv_async_send for every event; the loop detaches
 *                  the whole list under the mutex and frees the nodes;
 *   ref-ring       the better hand-written bridge: a growable array ring
 *                  under a mutex, uv_async_send only when the ring goes from
 *                  empty to non-empty; the loop copies out chunks under the
 *                  mutex and processes them with the mutex released.
 * The references are written the way a careful person would write them
 * (sends outside the lock, batch detach, no per-event lock on the consumer
 * side): they are baselines, not strawmen.
 *
 * Checks, in every run: each producer's events arrive in its order (strictly
 * increasing in drop mode, consecutive otherwise), every event is delivered
 * or dropped exactly once (a per-event counter scanned after the run), the
 * totals add up, and uvq's own counters agree with what the consumer saw.
 *
 * End of a run: the time from the start signal until the last event is
 * accounted for on the loop (the consumer delivers the last one; in drop
 * mode, where the consumer cannot know which is last, the queue's close
 * callback after the drain stop that the last producer requested).
 * Producers are joined before any handle is closed: a reference producer
 * may still be inside uv_async_send after its last event was consumed.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#if defined(__GNUC__)
# define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
# define UNLIKELY(x) (x)
#endif

#define RING_CHUNK 256       /* ref-ring: events copied out per lock */
#define RING_INITIAL 1024    /* ref-ring: first size (grows by doubling) */
#define WATCHDOG_MS 500

const char* const bench_pattern_names[PAT_COUNT] = {
  "uvq-unbounded", "uvq-block", "uvq-drop", "uvq-poll", "ref-malloc",
  "ref-ring"
};

int bench_pattern_parse(const char* name) {
  int i;
  if (strcmp(name, "uvq-bounded") == 0)
    return PAT_UVQ_BLOCK;
  for (i = 0; i < PAT_COUNT; i++)
    if (strcmp(name, bench_pattern_names[i]) == 0)
      return i;
  return -1;
}

typedef struct qrun_s qrun_t;

typedef struct node_s {
  struct node_s* next;
  bench_ev_t* ev;
} node_t;

/* One per producer thread, each on its own cache lines. */
typedef struct {
  _Alignas(64) qrun_t* run;
  bench_ev_t* evs;
  uint32_t count;
  unsigned id;
  uint64_t sends;   /* references: uv_async_send calls */
  uint64_t dropped; /* uvq-drop: released on this thread */
  uint64_t errors;
  int first_err;
  uv_thread_t tid;
  uint64_t* late; /* paced: how late each event was stamped after its slot */
} producer_t;

struct qrun_s {
  const qrun_cfg_t* cfg;
  pattern_t pat;
  unsigned nprod;
  int stamp;           /* producers stamp events (paced or sampled) */
  int paced;
  uint32_t sample_mask;
  double ns_per_slot;  /* paced: ns between two events of the whole run */
  int minimal;
  int gaps;            /* drop mode: a producer's sequence may skip */
  uv_loop_t loop;
  uv_thread_t loop_tid;
  uv_timer_t watchdog;
  producer_t* prod;

  /* uvq */
  uvq_queue_t q;
  uvq_queue_stats_t st;
  int closed;
  uint64_t discarded;  /* released on the loop thread (after a stall) */
  uint64_t t_close;

  /* references */
  uv_async_t async;
  uv_mutex_t lock;
  node_t* head;        /* ref-malloc */
  node_t* tail;
  bench_ev_t** ring;   /* ref-ring */
  size_t ring_cap;
  size_t ring_head;
  size_t ring_count;

  /* the start gate */
  uv_mutex_t gate;
  uv_cond_t gate_cond;
  unsigned ready;
  int go;
  uint64_t t_start;
  atomic_uint finished;

  /* the consumer's (loop thread) */
  _Alignas(64) uint32_t* next_seq;
  uint64_t delivered;
  uint64_t passes;
  uint64_t max_batch;
  uint64_t t_last;
  uint64_t progress_seen;
  unsigned idle_ms;
  uint64_t violations;
  char what[200];
  uint64_t* lat;
  size_t nlat;
  size_t lat_cap;
  uint64_t* lat_sched; /* paced: from the slot's time (lat + lateness) */
};

static int is_uvq(pattern_t p) {
  return p == PAT_UVQ_UNBOUNDED || p == PAT_UVQ_BLOCK || p == PAT_UVQ_DROP ||
         p == PAT_UVQ_POLL;
}

/* -- the consumer, common to every pattern --------------------------------- */

static inline void consume(qrun_t* r, bench_ev_t* ev, int minimal) {
  uint32_t p, want;
  if (minimal) { /* callgrind: count, nothing else (see the end of a pass) */
    r->delivered++;
    return;
  }
  p = ev->producer;
  if (UNLIKELY(p >= r->nprod)) {
    bench_violation(&r->violations, r->what, sizeof(r->what),
                    "an event names producer %u of %u", p, r->nprod);
    return;
  }
  want = r->next_seq[p];
  if (UNLIKELY(ev->seq != want && (ev->seq < want || !r->gaps)))
    bench_violation(&r->violations, r->what, sizeof(r->what),
                    "order: producer %u's event %u arrived when %u was due",
                    p, ev->seq, want);
  r->next_seq[p] = ev->seq + 1;
  ev->done++;
  if (ev->t_enq != 0 && r->nlat < r->lat_cap) {
    uint64_t lat = uv_hrtime() - ev->t_enq;
    if (r->lat_sched != NULL)
      r->lat_sched[r->nlat] = lat + r->prod[p].late[ev->seq];
    r->lat[r->nlat++] = lat;
  }
  if (++r->delivered == r->cfg->events)
    r->t_last = uv_hrtime();
}

/* The end of a reference's drain pass: in minimal mode the last event is
 * noticed here rather than per event. */
static void pass_done(qrun_t* r) {
  if (r->minimal && r->t_last == 0 && r->delivered == r->cfg->events)
    r->t_last = uv_hrtime();
  if (r->t_last != 0)
    uv_stop(&r->loop);
}

/* -- uvq ------------------------------------------------------------------- */

static void uvq_on_event(uvq_queue_t* q, uvq_event_t* e) {
  consume(q->data, (bench_ev_t*) e, 0);
}

/* callgrind: the loop thread only counts; the drain stop ends the run. */
static void uvq_on_event_minimal(uvq_queue_t* q, uvq_event_t* e) {
  (void) e;
  ((qrun_t*) q->data)->delivered++;
}

/* Dropped (on the producer thread that caused it) or discarded (on the loop
 * thread, only after a stall). */
static void uvq_on_release(uvq_queue_t* q, uvq_event_t* e) {
  qrun_t* r = q->data;
  bench_ev_t* ev = (bench_ev_t*) e;
  uv_thread_t self = uv_thread_self();
  ev->done++;
  if (uv_thread_equal(&self, &r->loop_tid))
    r->discarded++;
  else if (ev->producer < r->nprod)
    r->prod[ev->producer].dropped++;
}

static void uvq_on_close(uvq_queue_t* q) {
  qrun_t* r = q->data;
  r->t_close = uv_hrtime();
  uvq_queue_stats(q, &r->st);
  r->closed = 1;
}

/* -- ref-malloc ------------------------------------------------------------ */

static void malloc_on_async(uv_async_t* h) {
  qrun_t* r = h->data;
  node_t* n;
  uint64_t k = 0;
  int minimal = r->minimal;

  r->passes++;
  uv_mutex_lock(&r->lock);
  n = r->head;
  r->head = r->tail = NULL;
  uv_mutex_unlock(&r->lock);
  while (n != NULL) {
    node_t* next = n->next;
    consume(r, n->ev, minimal);
    free(n);
    n = next;
    k++;
  }
  if (k > r->max_batch)
    r->max_batch = k;
  pass_done(r);
}

/* -- ref-ring -------------------------------------------------------------- */

/* The ring a timed run grew, kept for the next one: a long-running program's
 * ring grows once, not in every burst. A memory run starts from
 * RING_INITIAL, to measure that growth. Runs are sequential, on the main
 * thread. */
static bench_ev_t** spare_ring;
static size_t spare_cap;

/* Double the ring (under the lock): unwrap it into the new array. */
static void ring_grow(qrun_t* r) {
  size_t cap = r->ring_cap * 2;
  size_t first = r->ring_cap - r->ring_head;
  bench_ev_t** ring = malloc(cap * sizeof(*ring));
  if (ring == NULL) {
    fprintf(stderr, "uvq-bench: ref-ring: out of memory at %zu slots\n", cap);
    abort();
  }
  if (first > r->ring_count)
    first = r->ring_count;
  memcpy(ring, r->ring + r->ring_head, first * sizeof(*ring));
  memcpy(ring + first, r->ring, (r->ring_count - first) * sizeof(*ring));
  free(r->ring);
  r->ring = ring;
  r->ring_cap = cap;
  r->ring_head = 0;
}

static void ring_on_async(uv_async_t* h) {
  qrun_t* r = h->data;
  bench_ev_t* local[RING_CHUNK];
  int first_take = 1;
  int minimal = r->minimal;

  r->passes++;
  for (;;) {
    size_t n, first, i;
    uv_mutex_lock(&r->lock);
    if (first_take && r->ring_count > r->max_batch)
      r->max_batch = r->ring_count;
    first_take = 0;
    n = r->ring_count < RING_CHUNK ? r->ring_count : RING_CHUNK;
    first = r->ring_cap - r->ring_head;
    if (first > n)
      first = n;
    memcpy(local, r->ring + r->ring_head, first * sizeof(*local));
    memcpy(local + first, r->ring, (n - first) * sizeof(*local));
    r->ring_head = (r->ring_head + n) & (r->ring_cap - 1);
    r->ring_count -= n;
    uv_mutex_unlock(&r->lock);
    if (n == 0)
      break;
    for (i = 0; i < n; i++)
      consume(r, local[i], minimal);
  }
  pass_done(r);
}

/* -- producers ------------------------------------------------------------- */

static void gate_wait(qrun_t* r) {
  uv_mutex_lock(&r->gate);
  r->ready++;
  uv_cond_broadcast(&r->gate_cond);
  while (!r->go)
    uv_cond_wait(&r->gate_cond, &r->gate);
  uv_mutex_unlock(&r->gate);
}

/* Paced: wait for this event's slot (producers interleave their slots so the
 * total is evenly spaced) and stamp every event. Saturated: stamp every k-th
 * event, so that latency costs the throughput run almost nothing. */
static void stamp(producer_t* p, bench_ev_t* ev, uint32_t i) {
  qrun_t* r = p->run;
  if (r->paced) {
    double slot = (double) i * r->nprod + p->id;
    uint64_t due = r->t_start + (uint64_t) (slot * r->ns_per_slot);
    uint64_t now = uv_hrtime();
    if (now < due) {
      bench_sleep_until(due);
      now = uv_hrtime();
    }
    ev->t_enq = now;
    p->late[i] = now - due; /* the sleep ended this late, or we were */
  } else if ((i & r->sample_mask) == 0) {
    ev->t_enq = uv_hrtime();
  }
}

/* Each hand-over is an inline function (nonzero: stop early) and each
 * producer loop is written out twice, stamped and plain, so that the plain
 * loop, the one callgrind measures, carries nothing but the loop itself. */
#define PRODUCE_LOOP(p, PUT)                                                 \
  do {                                                                       \
    bench_ev_t* ev_ = (p)->evs;                                              \
    bench_ev_t* end_ = ev_ + (p)->count;                                     \
    uint32_t i_ = 0;                                                         \
    if ((p)->run->stamp) {                                                   \
      for (; ev_ != end_; ev_++, i_++) {                                     \
        stamp((p), ev_, i_);                                                 \
        if (PUT(ev_))                                                        \
          break;                                                             \
      }                                                                      \
    } else {                                                                 \
      for (; ev_ != end_; ev_++)                                             \
        if (PUT(ev_))                                                        \
          break;                                                             \
    }                                                                        \
  } while (0)

static inline int put_uvq(uvq_queue_t* q, producer_t* p, bench_ev_t* ev) {
  int e = uvq_queue_enqueue(q, &ev->link);
  if (UNLIKELY(e != 0)) {
    if (p->errors++ == 0)
      p->first_err = e;
    return e == UVQ_ECLOSED; /* stopped after a stall: nothing more taken */
  }
  return 0;
}

static inline int put_malloc(qrun_t* r, bench_ev_t* ev, uint64_t* sends) {
  node_t* n = malloc(sizeof(*n));
  if (n == NULL) {
    fprintf(stderr, "uvq-bench: ref-malloc: out of memory\n");
    abort();
  }
  n->next = NULL;
  n->ev = ev;
  uv_mutex_lock(&r->lock);
  if (r->tail != NULL)
    r->tail->next = n;
  else
    r->head = n;
  r->tail = n;
  uv_mutex_unlock(&r->lock);
  uv_async_send(&r->async);
  (*sends)++;
  return 0;
}

static inline int put_ring(qrun_t* r, bench_ev_t* ev, uint64_t* sends) {
  int was_empty;
  uv_mutex_lock(&r->lock);
  if (r->ring_count == r->ring_cap)
    ring_grow(r);
  r->ring[(r->ring_head + r->ring_count) & (r->ring_cap - 1)] = ev;
  was_empty = r->ring_count++ == 0;
  uv_mutex_unlock(&r->lock);
  if (was_empty) {
    uv_async_send(&r->async);
    (*sends)++;
  }
  return 0;
}

static void produce_uvq(producer_t* p) {
  uvq_queue_t* q = &p->run->q;
#define PUT(ev) put_uvq(q, p, (ev))
  PRODUCE_LOOP(p, PUT);
#undef PUT
}

static void produce_malloc(producer_t* p) {
  qrun_t* r = p->run;
  uint64_t sends = 0;
#define PUT(ev) put_malloc(r, (ev), &sends)
  PRODUCE_LOOP(p, PUT);
#undef PUT
  p->sends = sends;
}

static void produce_ring(producer_t* p) {
  qrun_t* r = p->run;
  uint64_t sends = 0;
#define PUT(ev) put_ring(r, (ev), &sends)
  PRODUCE_LOOP(p, PUT);
#undef PUT
  p->sends = sends;
}

static void producer_main(void* arg) {
  producer_t* p = arg;
  qrun_t* r = p->run;

  if (r->paced)
    (void) bench_set_timer_slack(r->cfg->timer_slack); /* checked in main */
  gate_wait(r);
  switch (r->pat) {
    case PAT_REF_MALLOC:
      produce_malloc(p);
      break;
    case PAT_REF_RING:
      produce_ring(p);
      break;
    default:
      produce_uvq(p);
      break;
  }
  /* The last producer out stops the queue: a drain stop delivers what was
   * accepted and then closes it, which ends uv_run. */
  if (atomic_fetch_add(&r->finished, 1) + 1 == r->nprod && is_uvq(r->pat)) {
    int e = uvq_queue_stop(&r->q, UVQ_STOP_DRAIN, uvq_on_close);
    if (e != 0 && p->errors++ == 0)
      p->first_err = e;
  }
}

/* -- the watchdog: a run that stops making progress is reported, not waited
 * for forever. Unreferenced: it never keeps the loop alive by itself. ---- */

static void on_watchdog(uv_timer_t* t) {
  qrun_t* r = t->data;
  if (r->delivered != r->progress_seen) {
    r->progress_seen = r->delivered;
    r->idle_ms = 0;
    return;
  }
  r->idle_ms += WATCHDOG_MS;
  if (r->idle_ms < r->cfg->stall_seconds * 1000)
    return;
  bench_violation(&r->violations, r->what, sizeof(r->what),
                  "stalled: nothing delivered for %u ms (%llu of %llu "
                  "delivered)", r->idle_ms,
                  (unsigned long long) r->delivered,
                  (unsigned long long) r->cfg->events);
  uv_timer_stop(t);
  if (is_uvq(r->pat))
    uvq_queue_stop(&r->q, UVQ_STOP_DISCARD, uvq_on_close);
  else
    uv_stop(&r->loop); /* reference producers never block: they finish */
}

/* -- one run --------------------------------------------------------------- */

static void after_checks(qrun_t* r, bench_ev_t* evs, uint64_t dropped) {
  const qrun_cfg_t* c = r->cfg;
  unsigned k;
  uint64_t off = 0;

  if (r->delivered + dropped != c->events)
    bench_violation(&r->violations, r->what, sizeof(r->what),
                    "count: %llu delivered + %llu dropped != %llu events",
                    (unsigned long long) r->delivered,
                    (unsigned long long) dropped,
                    (unsigned long long) c->events);
  if (dropped != 0 && r->pat != PAT_UVQ_DROP)
    bench_violation(&r->violations, r->what, sizeof(r->what),
                    "%llu events dropped in a mode that never drops",
                    (unsigned long long) dropped);
  if (is_uvq(r->pat)) {
    if (!r->closed)
      bench_violation(&r->violations, r->what, sizeof(r->what),
                      "the queue's close callback never ran");
    else if (r->st.delivered != r->delivered ||
             r->st.dropped_new != dropped - r->discarded ||
             r->st.enqueued + r->st.dropped_new != c->events)
      bench_violation(&r->violations, r->what, sizeof(r->what),
                      "uvq_queue_stats disagrees: enqueued %llu delivered "
                      "%llu dropped_new %llu; seen: delivered %llu dropped "
                      "%llu", (unsigned long long) r->st.enqueued,
                      (unsigned long long) r->st.delivered,
                      (unsigned long long) r->st.dropped_new,
                      (unsigned long long) r->delivered,
                      (unsigned long long) dropped);
  }
  if (r->minimal)
    return;
  for (k = 0; k < r->nprod; k++) {
    producer_t* p = &r->prod[k];
    uint32_t i;
    if (p->errors != 0)
      bench_violation(&r->violations, r->what, sizeof(r->what),
                      "producer %u: %llu unexpected errors, first %s", k,
                      (unsigned long long) p->errors,
                      uvq_err_name(p->first_err));
    if (r->pat != PAT_UVQ_DROP && r->next_seq[k] != p->count)
      bench_violation(&r->violations, r->what, sizeof(r->what),
                      "producer %u: last event seen %u, sent %u", k,
                      r->next_seq[k], p->count);
    for (i = 0; i < p->count; i++) {
      if (evs[off + i].done != 1) {
        bench_violation(&r->violations, r->what, sizeof(r->what),
                        "exactly-once: producer %u's event %u was "
                        "delivered or dropped %u times", k, i,
                        evs[off + i].done);
        break;
      }
    }
    off += p->count;
  }
}

int bench_queue_run(const qrun_cfg_t* c, bench_ev_t* evs, qrun_res_t* res) {
  qrun_t* r;
  size_t size = (sizeof(*r) + 63) / 64 * 64;
  uint64_t off = 0, dropped = 0, sends = 0, t_end;
  int64_t mark = -1;
  double cpu0;
  unsigned k;
  int e;

  memset(res, 0, sizeof(*res));
  res->peak_mem = -1;
  if (c->producers == 0 || c->producers > 65535 || c->events == 0 ||
      c->events / c->producers >= UINT32_MAX) {
    fprintf(stderr, "uvq-bench: bad run shape (%u producers, %llu events)\n",
            c->producers, (unsigned long long) c->events);
    return -1;
  }
  r = aligned_alloc(64, size);
  if (r == NULL)
    return -1;
  memset(r, 0, size);
  r->cfg = c;
  r->pat = c->pattern;
  r->nprod = c->producers;
  r->minimal = c->minimal;
  r->gaps = c->pattern == PAT_UVQ_DROP;
  r->paced = c->rate > 0;
  r->ns_per_slot = r->paced ? 1e9 / c->rate : 0;
  r->sample_mask = c->sample_every ? c->sample_every - 1 : 0;
  r->stamp = !c->minimal && (r->paced || c->sample_every != 0);
  r->loop_tid = uv_thread_self();
  atomic_init(&r->finished, 0);

  r->prod = aligned_alloc(64, r->nprod * sizeof(*r->prod));
  r->next_seq = calloc(r->nprod, sizeof(*r->next_seq));
  if (r->stamp)
    r->lat_cap = r->paced ? c->events
                          : c->events / c->sample_every + r->nprod + 1;
  r->lat = r->lat_cap ? malloc(r->lat_cap * sizeof(*r->lat)) : NULL;
  if (r->paced && r->lat_cap) /* every event stamped: both latencies */
    r->lat_sched = malloc(r->lat_cap * sizeof(*r->lat_sched));
  if (r->prod == NULL || r->next_seq == NULL || (r->lat_cap && !r->lat) ||
      (r->paced && r->lat_cap && !r->lat_sched)) {
    fprintf(stderr, "uvq-bench: out of memory\n");
    free(r->prod);
    free(r->next_seq);
    free(r->lat);
    free(r->lat_sched);
    free(r);
    return -1;
  }
  memset(r->prod, 0, r->nprod * sizeof(*r->prod));
  for (k = 0; k < r->nprod; k++) {
    producer_t* p = &r->prod[k];
    p->run = r;
    p->id = k;
    p->count = (uint32_t) (c->events / r->nprod + (k < c->events % r->nprod));
    p->evs = evs + off;
    if (r->lat_sched != NULL) {
      p->late = calloc(p->count, sizeof(*p->late));
      if (p->late == NULL) {
        fprintf(stderr, "uvq-bench: out of memory\n");
        exit(2);
      }
    }
    if (!c->minimal) {
      uint32_t i;
      for (i = 0; i < p->count; i++) {
        p->evs[i].t_enq = 0;
        p->evs[i].seq = i;
        p->evs[i].producer = (uint16_t) k;
        p->evs[i].done = 0;
      }
    }
    off += p->count;
  }

  if ((e = uv_loop_init(&r->loop)) != 0) {
    fprintf(stderr, "uvq-bench: uv_loop_init: %s\n", uv_strerror(e));
    return -1; /* leaks r: the program gives up anyway */
  }
  uv_timer_init(&r->loop, &r->watchdog);
  r->watchdog.data = r;
  uv_timer_start(&r->watchdog, on_watchdog, WATCHDOG_MS, WATCHDOG_MS);
  uv_unref((uv_handle_t*) &r->watchdog);

  if (is_uvq(r->pat)) {
    uvq_queue_options_t o;
    memset(&o, 0, sizeof(o));
    if (r->pat == PAT_UVQ_BLOCK || r->pat == PAT_UVQ_DROP) {
      o.capacity = c->capacity;
      o.overflow = r->pat == PAT_UVQ_BLOCK ? UVQ_BLOCK : UVQ_DROP_NEW;
    }
    if (r->pat == PAT_UVQ_POLL)
      o.poll_us = c->poll_us;
    o.release = uvq_on_release;
    e = uvq_queue_init(&r->loop, &r->q,
                       c->minimal ? uvq_on_event_minimal : uvq_on_event, &o);
    if (e != 0) {
      fprintf(stderr, "uvq-bench: uvq_queue_init: %s\n", uvq_strerror(e));
      return -1;
    }
    r->q.data = r;
  } else {
    uv_mutex_init(&r->lock);
    uv_async_init(&r->loop, &r->async, r->pat == PAT_REF_MALLOC
                                           ? malloc_on_async
                                           : ring_on_async);
    r->async.data = r;
    if (r->pat == PAT_REF_RING && !c->measure_mem && spare_ring != NULL) {
      r->ring = spare_ring;
      r->ring_cap = spare_cap;
      spare_ring = NULL;
      spare_cap = 0;
    } else if (r->pat == PAT_REF_RING) {
      r->ring_cap = RING_INITIAL;
      r->ring = malloc(r->ring_cap * sizeof(*r->ring));
      if (r->ring == NULL)
        return -1;
    }
  }

  uv_mutex_init(&r->gate);
  uv_cond_init(&r->gate_cond);
  for (k = 0; k < r->nprod; k++) {
    if ((e = uv_thread_create(&r->prod[k].tid, producer_main,
                              &r->prod[k])) != 0) {
      fprintf(stderr, "uvq-bench: uv_thread_create: %s\n", uv_strerror(e));
      exit(2); /* earlier producers wait at the gate forever */
    }
  }
  uv_mutex_lock(&r->gate);
  while (r->ready < r->nprod)
    uv_cond_wait(&r->gate_cond, &r->gate);
  if (c->measure_mem)
    mark = bench_mem_mark();
  cpu0 = bench_cpu_seconds();
  r->t_start = uv_hrtime();
  r->go = 1;
  uv_cond_broadcast(&r->gate_cond);
  uv_mutex_unlock(&r->gate);

  uv_run(&r->loop, UV_RUN_DEFAULT);
  for (k = 0; k < r->nprod; k++)
    uv_thread_join(&r->prod[k].tid);
  res->cpu_seconds = bench_cpu_seconds() - cpu0;
  t_end = r->t_last != 0 ? r->t_last : r->t_close;
  if (t_end == 0)
    t_end = uv_hrtime();
  if (mark >= 0) {
    int64_t peak = bench_mem_peak();
    /* The kernel's RSS counters are approximate (per-CPU batches): a run
     * that allocated nothing can read a little below its start. */
    if (peak >= 0)
      res->peak_mem = peak > mark ? peak - mark : 0;
  }

  /* Every producer is gone: nothing can touch the handles any more. */
  if (!is_uvq(r->pat))
    uv_close((uv_handle_t*) &r->async, NULL);
  uv_close((uv_handle_t*) &r->watchdog, NULL);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  if ((e = uv_loop_close(&r->loop)) != 0)
    bench_violation(&r->violations, r->what, sizeof(r->what),
                    "uv_loop_close: %s (a handle was left open)",
                    uv_err_name(e));

  for (k = 0; k < r->nprod; k++) {
    dropped += r->prod[k].dropped;
    sends += r->prod[k].sends;
  }
  dropped += r->discarded;
  after_checks(r, evs, dropped);

  res->seconds = (double) (t_end - r->t_start) / 1e9;
  res->delivered = r->delivered;
  res->dropped = dropped;
  if (is_uvq(r->pat)) {
    res->wakeups = r->st.wakeups;
    res->passes = r->st.passes;
    res->max_depth = r->st.max_depth;
  } else {
    res->wakeups = sends;
    res->passes = r->passes;
    res->max_depth = r->max_batch;
    uv_mutex_destroy(&r->lock);
  }
  res->violations = r->violations;
  memcpy(res->what, r->what, sizeof(res->what));
  res->lat = r->lat;
  res->nlat = r->nlat;
  res->lat_sched = r->lat_sched;
  for (k = 0; k < r->nprod; k++)
    free(r->prod[k].late);

  uv_cond_destroy(&r->gate_cond);
  uv_mutex_destroy(&r->gate);
  if (r->ring != NULL && r->ring_cap > spare_cap) { /* keep the larger */
    free(spare_ring);
    spare_ring = r->ring;
    spare_cap = r->ring_cap;
  } else {
    free(r->ring);
  }
  free(r->next_seq);
  free(r->prod);
  free(r);
  return 0;
}
