/* Faults: memory and resources that run out, and user code that misbehaves.
 *
 * Resource failures come from test/fault.c, which stands in for malloc and
 * pthread_{mutex,cond}_init in this binary: a call that may fail is run
 * with its 1st, 2nd, 3rd... fallible step failing, until it succeeds; each
 * failing run must return the documented error and leave nothing behind (no
 * block, mutex or condition variable live, no handle on the loop). The hot
 * path is checked to allocate nothing at all. Builds whose runtime owns
 * malloc (sanitizers, valgrind) cannot inject some failures: the suite says
 * which tests it left out and why when it is created.
 *
 * Misbehaving user code: sinks that return garbage codes, close themselves
 * or stop their queue from inside write, say "again" and "ready" in one
 * breath; process callbacks that stop the loop or their own queue.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "fault.h"
#include "helpers.h"

typedef struct {
  uvq_event_t ev;
  unsigned id;
  unsigned delivered;
  unsigned released;
} fitem_t;

#define FITEM(e) ((fitem_t*) ((char*) (e) - offsetof(fitem_t, ev)))

static uv_loop_t loop;
static unsigned closed;
static unsigned delivered;

static void setup(void) {
  closed = delivered = 0;
}

static void teardown(void) {}

static void item_release(uvq_event_t* ev) {
  FITEM(ev)->released++;
}

static void items_init(fitem_t* items, unsigned n) {
  unsigned i;
  memset(items, 0, n * sizeof(*items));
  for (i = 0; i < n; i++) {
    items[i].id = i;
    ck_assert_int_eq(uvq_event_init(&items[i].ev, item_release), 0);
  }
}

static void on_close(uvq_queue_t* q) {
  (void) q;
  closed++;
}

static void process_unref(uvq_queue_t* q, uvq_event_t* ev) {
  (void) q;
  FITEM(ev)->delivered++;
  delivered++;
  uvq_event_unref(ev);
}

/* A sink that takes everything. */
typedef struct {
  uvq_sink_t sink;
  unsigned taken;
} plain_sink_t;

static int plain_write(uvq_sink_t* s, uvq_event_t* ev) {
  (void) ev;
  ((plain_sink_t*) s)->taken++;
  return 0;
}

static const uvq_sink_vtable_t plain_vt = {plain_write, NULL};

static void live_eq(const uvq_live_t* a, const uvq_live_t* b,
                    const char* what, unsigned n) {
  ck_assert_msg(a->blocks == b->blocks,
                "%s, failure %u: %ld blocks leaked", what, n,
                b->blocks - a->blocks);
  ck_assert_msg(a->mutexes == b->mutexes,
                "%s, failure %u: %ld mutexes left", what, n,
                b->mutexes - a->mutexes);
  ck_assert_msg(a->conds == b->conds,
                "%s, failure %u: %ld condition variables left", what, n,
                b->conds - a->conds);
}

/* -- init under every failure -------------------------------------------- */

typedef struct {
  const char* what;
  int sink;        /* uvq_queue_init_sink instead of uvq_queue_init */
  size_t capacity;
  uvq_overflow_t overflow;
} init_case_t;

static const init_case_t init_cases[] = {
  {"uvq_queue_init unbounded", 0, 0, UVQ_BLOCK},
  {"uvq_queue_init bounded drop-oldest", 0, 4, UVQ_DROP_OLDEST},
  {"uvq_queue_init_sink bounded block", 1, 4, UVQ_BLOCK},
};

static void other_ready(uvq_sink_t* s, void* arg) {
  (void) s;
  (void) arg;
}

START_TEST(faults_queue_init_fails_cleanly_at_every_step) {
  const init_case_t* c = &init_cases[_i];
  uvq_queue_options_t o;
  unsigned n, injected = 0;
  int mask = UVQ_FAULT_MUTEX | UVQ_FAULT_COND;

  if (uvq_fault_available(UVQ_FAULT_ALL, NULL))
    mask = UVQ_FAULT_ALL;
  memset(&o, 0, sizeof(o));
  o.capacity = c->capacity;
  o.overflow = c->overflow;

  for (n = 1; n < 100; n++) {
    uvq_live_t before, after;
    uvq_queue_t q;
    plain_sink_t ps;
    unsigned fired;
    int r;

    uvq_live(&before);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    memset(&ps, 0, sizeof(ps));
    ck_assert_int_eq(uvq_sink_init(&ps.sink, &plain_vt), 0);
    uvq_fault_arm(n, mask, 0);
    if (c->sink)
      r = uvq_queue_init_sink(&loop, &q, &ps.sink, &o);
    else
      r = uvq_queue_init(&loop, &q, process_unref, &o);
    fired = uvq_fault_disarm();
    if (fired == 0) {
      /* Every step succeeded: the call must have too. Clean up and stop. */
      ck_assert_msg(r == 0, "%s: %d with nothing injected", c->what, r);
      ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_close), 0);
      ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
      ck_assert_uint_eq(closed, 1);
      ck_assert_int_eq(uv_loop_close(&loop), 0);
      uvq_live(&after);
      live_eq(&before, &after, c->what, n);
      break;
    }
    injected++;
    ck_assert_msg(r == UVQ_ENOMEM, "%s, failure %u (kind %d): returned %d",
                  c->what, n, uvq_fault_first_kind(), r);
    if (c->sink) {
      /* The sink is as it was: open, and free for another upstream. */
      ck_assert_int_eq(uvq_sink_is_closed(&ps.sink), 0);
      ck_assert_int_eq(uvq_sink_set_ready_cb(&ps.sink, other_ready, NULL), 0);
    }
    ck_assert_int_eq(uv_run(&loop, UV_RUN_NOWAIT), 0); /* no handle left */
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    uvq_live(&after);
    live_eq(&before, &after, c->what, n);
  }
  ck_assert_msg(n < 100, "%s never succeeded", c->what);
  ck_assert_msg(injected >= 2, "%s: only %u failures injected", c->what,
                injected); /* at least the mutex and the condition */
}
END_TEST

/* -- the queue's sink face allocates a carrier per write ----------------- */

START_TEST(faults_queue_sink_write_without_memory_returns_enomem) {
  uvq_queue_t q;
  plain_sink_t ps;
  fitem_t items[3];
  uvq_queue_stats_t st;
  uvq_live_t before, after;
  uvq_sink_t* face;
  unsigned i;

  items_init(items, 3);
  uvq_live(&before);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&ps, 0, sizeof(ps));
  ck_assert_int_eq(uvq_sink_init(&ps.sink, &plain_vt), 0);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ps.sink, NULL), 0);
  face = uvq_queue_sink(&q);

  for (i = 0; i < 3; i++) {
    unsigned fired;
    int r;
    /* Every allocation fails. No ck_assert while armed: Check allocates. */
    uvq_fault_arm(1, UVQ_FAULT_ALLOC, 1);
    r = uvq_sink_write(face, &items[i].ev);
    fired = uvq_fault_disarm();
    ck_assert_int_eq(r, UVQ_ENOMEM);
    ck_assert_uint_ge(fired, 1);
    /* Not taken: the writer's reference is the only one, nothing queued. */
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 1);
    ck_assert_int_eq(uvq_queue_stats(&q, &st), 0);
    ck_assert_uint_eq(st.enqueued, i);
    /* With memory back, the same write goes through. */
    ck_assert_int_eq(uvq_sink_write(face, &items[i].ev), 0);
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 2);
  }
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_close), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(closed, 1);
  ck_assert_uint_eq(ps.taken, 3);
  for (i = 0; i < 3; i++) {
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 1);
    uvq_event_unref(&items[i].ev);
    ck_assert_uint_eq(items[i].released, 1);
  }
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvq_live(&after);
  live_eq(&before, &after, "uvq_queue_sink write", 0);
}
END_TEST

/* -- the channel's ring, mutex and conditions -------------------------- */

START_TEST(faults_channel_init_fails_cleanly_at_every_step) {
  unsigned n, injected = 0;
  int mask = UVQ_FAULT_MUTEX | UVQ_FAULT_COND;

  if (uvq_fault_available(UVQ_FAULT_ALL, NULL))
    mask = UVQ_FAULT_ALL;
  for (n = 1; n < 100; n++) {
    uvq_live_t before, after;
    uvq_channel_t ch;
    unsigned fired;
    int r;

    memset(&ch, 0, sizeof(ch));
    uvq_live(&before);
    uvq_fault_arm(n, mask, 0);
    r = uvq_channel_init(&ch, 8);
    fired = uvq_fault_disarm();
    if (fired == 0) {
      ck_assert_int_eq(r, 0);
      ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
      uvq_live(&after);
      live_eq(&before, &after, "uvq_channel_init", n);
      break;
    }
    injected++;
    ck_assert_msg(r == UVQ_ENOMEM, "uvq_channel_init, failure %u (kind %d): "
                  "returned %d", n, uvq_fault_first_kind(), r);
    uvq_live(&after);
    live_eq(&before, &after, "uvq_channel_init", n);
    /* "ch must not be used": but it must not look initialised either. */
    ck_assert_int_eq(uvq_channel_close(&ch), UVQ_EINVAL);
  }
  ck_assert_msg(n < 100, "uvq_channel_init never succeeded");
  ck_assert_uint_ge(injected, 3); /* mutex and two conditions at least */
}
END_TEST

/* -- the broadcaster's list grows with realloc --------------------------- */

enum { BC_SINKS = 40 };

START_TEST(faults_broadcast_add_without_memory_changes_nothing) {
  static plain_sink_t sinks[BC_SINKS];
  uvq_broadcast_t b;
  uvq_broadcast_stats_t st;
  uvq_live_t before, after;
  fitem_t item;
  unsigned i, failures = 0;

  uvq_live(&before);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvq_broadcast_init(&b), 0);
  for (i = 0; i < BC_SINKS; i++) {
    unsigned fired;
    int r;
    memset(&sinks[i], 0, sizeof(sinks[i]));
    ck_assert_int_eq(uvq_sink_init(&sinks[i].sink, &plain_vt), 0);
    uvq_fault_arm(1, UVQ_FAULT_ALLOC, 1);
    r = uvq_broadcast_add(&b, &sinks[i].sink);
    fired = uvq_fault_disarm();
    if (fired == 0) {
      ck_assert_int_eq(r, 0); /* room left: no allocation needed */
      continue;
    }
    failures++;
    ck_assert_int_eq(r, UVQ_ENOMEM);
    /* Nothing changed: not attached, not an upstream of the sink. */
    ck_assert_int_eq(uvq_broadcast_stats(&b, &st), 0);
    ck_assert_uint_eq(st.sinks, i);
    ck_assert_int_eq(uvq_sink_set_ready_cb(&sinks[i].sink, other_ready, NULL),
                     0);
    ck_assert_int_eq(uvq_sink_set_ready_cb(&sinks[i].sink, NULL, NULL), 0);
    ck_assert_int_eq(uvq_broadcast_add(&b, &sinks[i].sink), 0);
  }
  ck_assert_uint_ge(failures, 2); /* the list grew at least twice */
  items_init(&item, 1);
  ck_assert_int_eq(uvq_sink_write(&b.sink, &item.ev), 0);
  for (i = 0; i < BC_SINKS; i++)
    ck_assert_uint_eq(sinks[i].taken, 1);
  uvq_event_unref(&item.ev);
  ck_assert_uint_eq(item.released, 1);
  ck_assert_int_eq(uvq_sink_close(&b.sink, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvq_live(&after);
  live_eq(&before, &after, "uvq_broadcast_add", 0);
}
END_TEST

/* -- the hot path allocates nothing --------------------------------------- */

enum { HOT_EVENTS = 100000 };

typedef struct {
  uvq_queue_t q;
  fitem_t* items;
  unsigned seen;
  uv_sem_t ready;
  uv_sem_t go;
  uv_sem_t done;
  uv_thread_t tid;
  int enqueue_errors;
  uint64_t allocs;
} hot_t;

static void hot_process(uvq_queue_t* q, uvq_event_t* ev) {
  hot_t* h = q->data;
  (void) ev;
  if (++h->seen == HOT_EVENTS) {
    h->allocs = uvq_alloc_count_stop();
    uv_sem_post(&h->done);
    ck_assert_int_eq(uvq_queue_stop(q, UVQ_STOP_DRAIN, on_close), 0);
  }
}

static void hot_producer(void* arg) {
  hot_t* h = arg;
  unsigned i;
  /* Thread start-up may allocate (sanitizer runtimes do): only once it is
   * over does the count start. */
  uv_sem_post(&h->ready);
  uv_sem_wait(&h->go);
  for (i = 0; i < HOT_EVENTS; i++)
    if (uvq_queue_enqueue(&h->q, &h->items[i].ev) != 0)
      h->enqueue_errors++;
  uv_sem_wait(&h->done); /* and so may its exit */
}

START_TEST(faults_hot_path_allocates_nothing) {
  static hot_t h;
  uvq_queue_options_t o;

  memset(&h, 0, sizeof(h));
  memset(&o, 0, sizeof(o));
  /* 0: unbounded; 1: bounded, producers block; 2: bounded, drop-oldest */
  if (_i == 1) {
    o.capacity = 256;
    o.overflow = UVQ_BLOCK;
  } else if (_i == 2) {
    o.capacity = 1u << 20; /* the locked path, nothing dropped */
    o.overflow = UVQ_DROP_OLDEST;
  }
  h.items = calloc(HOT_EVENTS, sizeof(*h.items));
  ck_assert_ptr_nonnull(h.items);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvq_queue_init(&loop, &h.q, hot_process, &o), 0);
  h.q.data = &h;
  ck_assert_int_eq(uv_sem_init(&h.ready, 0), 0);
  ck_assert_int_eq(uv_sem_init(&h.go, 0), 0);
  ck_assert_int_eq(uv_sem_init(&h.done, 0), 0);
  ck_assert_int_eq(uv_thread_create(&h.tid, hot_producer, &h), 0);

  uv_sem_wait(&h.ready);
  uvq_alloc_count_start();
  uv_sem_post(&h.go);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_thread_join(&h.tid), 0);

  ck_assert_int_eq(h.enqueue_errors, 0);
  ck_assert_uint_eq(h.seen, HOT_EVENTS);
  ck_assert_uint_eq(closed, 1);
  ck_assert_msg(h.allocs == 0, "%llu allocations in %d enqueues+deliveries",
                (unsigned long long) h.allocs, HOT_EVENTS);
  uv_sem_destroy(&h.ready);
  uv_sem_destroy(&h.go);
  uv_sem_destroy(&h.done);
  free(h.items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* An unbounded queue holding four million events costs the events and the
 * queue struct, nothing else: not one allocation while they go in, sit
 * there (the loop sleeps) and come out. */
enum { MANY_EVENTS = 4000000 };

static unsigned many_seen;
static unsigned many_out_of_order;

static void many_process(uvq_queue_t* q, uvq_event_t* ev) {
  fitem_t* it = FITEM(ev);
  (void) q;
  if (it->id != many_seen)
    many_out_of_order++;
  many_seen++;
}

START_TEST(faults_four_million_queued_events_allocate_nothing) {
  static uvq_queue_t q;
  fitem_t* items = calloc(MANY_EVENTS, sizeof(*items));
  uvq_queue_stats_t st;
  uint64_t allocs;
  unsigned i;
  int errors = 0;

  ck_assert_ptr_nonnull(items);
  for (i = 0; i < MANY_EVENTS; i++)
    items[i].id = i;
  many_seen = 0;
  many_out_of_order = 0;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvq_queue_init(&loop, &q, many_process, NULL), 0);
  uvq_alloc_count_start();
  for (i = 0; i < MANY_EVENTS; i++)
    if (uvq_queue_try_enqueue(&q, &items[i].ev) != 0)
      errors++;
  ck_assert_int_eq(uvq_queue_stats(&q, &st), 0);
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_close), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  allocs = uvq_alloc_count_stop();

  ck_assert_int_eq(errors, 0);
  ck_assert_uint_eq(st.depth, MANY_EVENTS); /* all of them at once */
  ck_assert_uint_eq(many_seen, MANY_EVENTS);
  ck_assert_uint_eq(many_out_of_order, 0);
  ck_assert_uint_eq(closed, 1);
  ck_assert_msg(allocs == 0, "%llu allocations for %d queued events",
                (unsigned long long) allocs, MANY_EVENTS);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- user code that misbehaves -------------------------------------------- */

/* A sink whose write answers from a script of codes, garbage included. */
typedef struct {
  uvq_sink_t sink;
  const int* codes;
  unsigned ncodes;
  unsigned writes;
  int ready_inline;  /* on "again", call uvq_sink_ready() before returning */
  int close_at;      /* close itself inside the write number close_at + 1 */
  uvq_queue_t* stop_q;
  int stop_at;       /* stop (discard) stop_q inside write number stop_at + 1 */
  unsigned taken;
  unsigned closed;
} script_sink_t;

static void script_closed(uvq_sink_t* s) {
  ((script_sink_t*) s)->closed++;
}

static int script_write(uvq_sink_t* s, uvq_event_t* ev) {
  script_sink_t* ss = (script_sink_t*) s;
  unsigned w = ss->writes++;
  int r = ss->ncodes != 0 ? ss->codes[w % ss->ncodes] : 0;
  if (ss->close_at >= 0 && w == (unsigned) ss->close_at) {
    ck_assert_int_eq(uvq_sink_close(s, script_closed), 0);
    r = UVQ_ECLOSED;
  }
  if (ss->stop_q != NULL && ss->stop_at >= 0 && w == (unsigned) ss->stop_at)
    ck_assert_int_eq(uvq_queue_stop(ss->stop_q, UVQ_STOP_DISCARD, on_close),
                     0);
  if (r == UVQ_EAGAIN && ss->ready_inline)
    uvq_sink_ready(s);
  if (r == 0) {
    ss->taken++;
    FITEM(ev)->delivered++;
  }
  return r;
}

static const uvq_sink_vtable_t script_vt = {script_write, NULL};

static unsigned error_calls;
static int error_codes[16];

static void on_error(uvq_queue_t* q, uvq_event_t* ev, int err) {
  (void) q;
  (void) ev;
  if (error_calls < 16)
    error_codes[error_calls] = err;
  error_calls++;
}

static void script_init(script_sink_t* ss, const int* codes, unsigned n) {
  memset(ss, 0, sizeof(*ss));
  ss->codes = codes;
  ss->ncodes = n;
  ss->close_at = -1;
  ss->stop_at = -1;
  ck_assert_int_eq(uvq_sink_init(&ss->sink, &script_vt), 0);
}

/* Run `n` events through a queue into the scripted sink; the queue must
 * close, and every event must be released exactly once (the sink borrows,
 * the queue lets go after delivering or failing it, the caller lets go of
 * one it refused). */
static void script_run(script_sink_t* ss, fitem_t* items, unsigned n,
                       uvq_queue_stats_t* st) {
  uvq_queue_options_t o;
  uvq_queue_t q;
  unsigned i, taken = 0;

  memset(&o, 0, sizeof(o));
  o.capacity = 4;
  o.overflow = UVQ_FAIL;
  o.error = on_error;
  error_calls = 0;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ss->sink, &o), 0);
  if (ss->stop_at >= 0)
    ss->stop_q = &q;
  items_init(items, n);
  for (i = 0; i < n; i++) {
    int r;
    while ((r = uvq_queue_try_enqueue(&q, &items[i].ev)) == UVQ_EFULL)
      ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
    if (r == UVQ_ECLOSED) { /* the sink stopped the queue: ours again */
      uvq_event_unref(&items[i].ev);
      continue;
    }
    ck_assert_int_eq(r, 0);
  }
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_close), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(closed, 1);
  ck_assert_int_eq(uvq_queue_stats(&q, st), 0);
  for (i = 0; i < n; i++) {
    ck_assert_msg(items[i].released == 1 && items[i].delivered <= 1,
                  "event %u: delivered %u released %u", i, items[i].delivered,
                  items[i].released);
    taken += items[i].delivered;
  }
  ck_assert_uint_eq(taken, ss->taken);
  uvq_test_loop_done(&loop);
}

START_TEST(faults_sink_returning_garbage_codes_fails_those_events_only) {
  /* positive, absurd, libuv's and uvq's own codes, all "failed" */
  static const int codes[] = {0, 1, 12345, INT_MIN, INT_MAX, -1, UV_EIO,
                              UVQ_EFULL, 0};
  enum { N = 9 };
  script_sink_t ss;
  fitem_t items[N];
  uvq_queue_stats_t st;
  unsigned i;

  script_init(&ss, codes, N);
  script_run(&ss, items, N, &st);
  ck_assert_uint_eq(ss.taken, 2);
  ck_assert_uint_eq(st.delivered, 2);
  ck_assert_uint_eq(st.failed, N - 2);
  ck_assert_uint_eq(error_calls, N - 2);
  for (i = 0; i < N - 2; i++)
    ck_assert_int_eq(error_codes[i], codes[i + 1]);
  ck_assert_uint_eq(ss.closed, 0); /* closed by the queue, without a cb */
  ck_assert_int_eq(uvq_sink_is_closed(&ss.sink), 1);
}
END_TEST

START_TEST(faults_sink_closing_itself_inside_write_fails_the_rest) {
  enum { N = 10 };
  script_sink_t ss;
  fitem_t items[N];
  uvq_queue_stats_t st;

  script_init(&ss, NULL, 0);
  ss.close_at = 3; /* writes 0..2 taken, write 3 closes and fails */
  script_run(&ss, items, N, &st);
  ck_assert_uint_eq(ss.taken, 3);
  ck_assert_uint_eq(ss.closed, 1);
  ck_assert_uint_eq(st.delivered, 3);
  ck_assert_uint_eq(st.failed, N - 3); /* the sink said "never again" */
  ck_assert_uint_eq(ss.writes, 4);     /* no write after close */
}
END_TEST

START_TEST(faults_sink_stopping_its_queue_inside_write_discards_the_rest) {
  enum { N = 12 };
  script_sink_t ss;
  fitem_t items[N];
  uvq_queue_stats_t st;

  script_init(&ss, NULL, 0);
  ss.stop_at = 2;
  script_run(&ss, items, N, &st);
  ck_assert_uint_eq(ss.taken, 3); /* the stopping write was taken */
  ck_assert_uint_eq(st.delivered, 3);
  ck_assert_uint_eq(st.delivered + st.discarded + st.failed, st.enqueued);
}
END_TEST

START_TEST(faults_sink_saying_again_and_ready_at_once_loses_nothing) {
  static const int codes[] = {UVQ_EAGAIN, 0, 0, UVQ_EAGAIN, UVQ_EAGAIN, 0};
  enum { N = 40 };
  script_sink_t ss;
  fitem_t items[N];
  uvq_queue_stats_t st;

  script_init(&ss, codes, 6);
  ss.ready_inline = 1;
  script_run(&ss, items, N, &st);
  ck_assert_uint_eq(ss.taken, N);
  ck_assert_uint_eq(st.delivered, N);
  ck_assert_uint_eq(st.failed, 0);
}
END_TEST

/* Process callbacks: stop the loop, or stop their own queue. */
static unsigned uv_stop_every;
static unsigned self_stop_at;
static uvq_stop_mode_t self_stop_mode;

static void process_misbehaving(uvq_queue_t* q, uvq_event_t* ev) {
  fitem_t* it = FITEM(ev);
  it->delivered++;
  delivered++;
  if (uv_stop_every != 0 && delivered % uv_stop_every == 0)
    uv_stop(&loop);
  if (self_stop_at != 0 && delivered == self_stop_at)
    ck_assert_int_eq(uvq_queue_stop(q, self_stop_mode, on_close), 0);
  uvq_event_unref(ev);
}

START_TEST(faults_process_cb_stopping_the_loop_or_its_queue) {
  enum { N = 50 };
  uvq_queue_options_t o;
  uvq_queue_t q;
  fitem_t items[N];
  unsigned i, runs = 0;

  /* _i: 0 uv_stop; 1 drain self-stop; 2 discard self-stop; 3 both */
  uv_stop_every = (_i == 0 || _i == 3) ? 3 : 0;
  self_stop_at = _i == 0 ? 0 : 20;
  self_stop_mode = _i == 1 ? UVQ_STOP_DRAIN : UVQ_STOP_DISCARD;
  memset(&o, 0, sizeof(o));
  o.batch = 4;
  items_init(items, N);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process_misbehaving, &o), 0);
  for (i = 0; i < N; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &items[i].ev), 0);
  if (self_stop_at == 0)
    ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_close), 0);
  /* uv_stop makes uv_run return early; running again carries on. */
  while (uv_run(&loop, UV_RUN_DEFAULT) != 0 || closed == 0) {
    ck_assert_uint_lt(++runs, 1000);
  }
  ck_assert_uint_eq(closed, 1);
  /* delivered ones were let go by the callback, the rest discarded */
  for (i = 0; i < N; i++)
    ck_assert_msg(items[i].released == 1 && items[i].delivered <= 1,
                  "event %u: delivered %u released %u", i, items[i].delivered,
                  items[i].released);
  if (self_stop_mode == UVQ_STOP_DISCARD && self_stop_at != 0)
    ck_assert_uint_eq(delivered, self_stop_at);
  else
    ck_assert_uint_eq(delivered, N);
  uvq_test_loop_done(&loop);
}
END_TEST

/* A sink that said "again" to its upstream and is then closed must still
 * let the upstream move on: the upstream retries on ready and learns
 * UVQ_ECLOSED. Otherwise a queue feeding it holds the refused event forever
 * and its drain stop never completes. _i: 0 broadcaster whose only sink is
 * stuck, 1 retrying sink in a long backoff. */
static int stuck_write(uvq_sink_t* s, uvq_event_t* ev) {
  (void) s;
  (void) ev;
  return UVQ_EAGAIN;
}

static int failing_write(uvq_sink_t* s, uvq_event_t* ev) {
  (void) s;
  (void) ev;
  return UV_EIO;
}

static const uvq_sink_vtable_t stuck_vt = {stuck_write, NULL};
static const uvq_sink_vtable_t failing_vt = {failing_write, NULL};

static uint64_t long_wait(void* state, const uvq_event_t* ev) {
  (void) ev;
  return *(int*) state ? 60000 : 0; /* a minute once something failed */
}

static int retry_always(void* state, const uvq_event_t* ev, int err) {
  (void) ev;
  (void) err;
  *(int*) state = 1;
  return 0;
}

static uvq_sink_t* busy_victim;
static unsigned watchdog_fired;

static void close_busy_victim(uv_timer_t* t) {
  ck_assert_int_eq(uvq_sink_close(busy_victim, NULL), 0);
  uv_close((uv_handle_t*) t, NULL);
}

static void watchdog(uv_timer_t* t) {
  /* Say so, then let the loop end: the queue's handle is closed under it
   * (the test has failed already; this only avoids hanging). */
  watchdog_fired++;
  uv_close((uv_handle_t*) t, NULL);
  uv_stop(t->loop);
}

START_TEST(faults_sink_closed_while_upstream_waits_on_again_lets_it_finish) {
  uvq_queue_options_t o;
  uvq_queue_t q;
  uvq_broadcast_t b;
  uvq_retry_t r;
  uvq_retry_strategy_t strat;
  uvq_sink_t down;
  uv_timer_t closer, dog;
  fitem_t items[4];
  int failed_once = 0;
  unsigned i;

  items_init(items, 4);
  watchdog_fired = 0;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  if (_i == 0) {
    ck_assert_int_eq(uvq_sink_init(&down, &stuck_vt), 0);
    ck_assert_int_eq(uvq_broadcast_init(&b), 0);
    ck_assert_int_eq(uvq_broadcast_add(&b, &down), 0);
    busy_victim = &b.sink;
  } else {
    memset(&strat, 0, sizeof(strat));
    strat.proceed = long_wait;
    strat.failure = retry_always;
    strat.state = &failed_once;
    ck_assert_int_eq(uvq_sink_init(&down, &failing_vt), 0);
    ck_assert_int_eq(uvq_retry_init(&loop, &r, &down, &strat), 0);
    busy_victim = &r.sink;
  }
  memset(&o, 0, sizeof(o));
  o.capacity = 8;
  o.overflow = UVQ_FAIL;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, busy_victim, &o), 0);
  for (i = 0; i < 4; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &items[i].ev), 0);
  /* The first event is taken and waits; the second gets "again". */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_NOWAIT), 1);
  ck_assert_int_eq(uv_timer_init(&loop, &closer), 0);
  ck_assert_int_eq(uv_timer_start(&closer, close_busy_victim, 5, 0), 0);
  ck_assert_int_eq(uv_timer_init(&loop, &dog), 0);
  ck_assert_int_eq(uv_timer_start(&dog, watchdog, 3000, 0), 0);
  uv_unref((uv_handle_t*) &dog);
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_close), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_msg(watchdog_fired == 0 && closed == 1,
                "%s closed while its upstream waited on UVQ_EAGAIN: the "
                "queue's drain stop never completed (no uvq_sink_ready after "
                "the close)", _i == 0 ? "broadcaster" : "retrying sink");
  for (i = 0; i < 4; i++)
    ck_assert_uint_eq(items[i].released, 1);
  if (!uv_is_closing((uv_handle_t*) &dog))
    uv_close((uv_handle_t*) &dog, NULL);
  uvq_test_loop_done(&loop);
}
END_TEST

/* A queue written through its sink face hands the process callback the
 * event that was written (the header promises the write "enqueues"), never
 * the library's internal carrier. */
static fitem_t* face_seen;

static void process_face(uvq_queue_t* q, uvq_event_t* ev) {
  (void) q;
  face_seen = FITEM(ev);
  delivered++;
  uvq_event_unref(ev);
}

START_TEST(faults_face_of_plain_queue_delivers_the_written_event) {
  uvq_queue_t q;
  fitem_t item;

  items_init(&item, 1);
  item.id = 4242;
  face_seen = NULL;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process_face, NULL), 0);
  ck_assert_int_eq(uvq_sink_write(uvq_queue_sink(&q), &item.ev), 0);
  uvq_event_unref(&item.ev); /* the writer lets go; the queue holds one */
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_close), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(delivered, 1);
  ck_assert_msg(face_seen == &item,
                "process callback got %p, not the written event %p",
                (void*) face_seen, (void*) &item);
  ck_assert_uint_eq(item.released, 1);
  uvq_test_loop_done(&loop);
}
END_TEST

Suite* faults_suite(void) {
  Suite* s = suite_create("faults");
  TCase* tc = tcase_create("resources");
  TCase* tu = tcase_create("user_code");
  const char* why = NULL;

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  if (uvq_fault_available(UVQ_FAULT_MUTEX | UVQ_FAULT_COND, &why))
    tcase_add_loop_test(tc, faults_queue_init_fails_cleanly_at_every_step, 0,
                        sizeof(init_cases) / sizeof(init_cases[0]));
  else
    fprintf(stderr, "faults: init failure tests left out: %s\n", why);
  if (uvq_fault_available(UVQ_FAULT_MUTEX | UVQ_FAULT_COND, &why))
    tcase_add_test(tc, faults_channel_init_fails_cleanly_at_every_step);
  else
    fprintf(stderr, "faults: channel init failure test left out: %s\n", why);
  if (uvq_fault_available(UVQ_FAULT_ALLOC, &why)) {
    tcase_add_test(tc, faults_queue_sink_write_without_memory_returns_enomem);
    tcase_add_test(tc, faults_broadcast_add_without_memory_changes_nothing);
  }
  else
    fprintf(stderr, "faults: allocation failure tests left out: %s\n", why);
  if (uvq_alloc_count_available()) {
    tcase_add_loop_test(tc, faults_hot_path_allocates_nothing, 0, 3);
    tcase_add_test(tc, faults_four_million_queued_events_allocate_nothing);
  } else
    fprintf(stderr, "faults: hot path allocation count left out: "
                    "allocations cannot be counted in this build\n");
  suite_add_tcase(s, tc);

  tcase_add_checked_fixture(tu, setup, teardown);
  tcase_set_timeout(tu, 30);
  tcase_add_test(tu,
                 faults_sink_returning_garbage_codes_fails_those_events_only);
  tcase_add_test(tu, faults_sink_closing_itself_inside_write_fails_the_rest);
  tcase_add_test(tu,
                 faults_sink_stopping_its_queue_inside_write_discards_the_rest);
  tcase_add_test(tu,
                 faults_sink_saying_again_and_ready_at_once_loses_nothing);
  tcase_add_loop_test(tu, faults_process_cb_stopping_the_loop_or_its_queue, 0,
                      4);
  tcase_add_loop_test(
      tu, faults_sink_closed_while_upstream_waits_on_again_lets_it_finish, 0,
      2);
  tcase_add_test(tu, faults_face_of_plain_queue_delivers_the_written_event);
  suite_add_tcase(s, tu);
  return s;
}
