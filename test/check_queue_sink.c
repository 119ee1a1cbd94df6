/* A queue feeding a sink, and the queue seen as a sink: flow control
 * ("again" pauses without loss or reordering), failures counted, the stop
 * that flushes then closes the sink, and the stuck sink that a discard stop
 * overrides. */
#include <string.h>

#include "helpers.h"

typedef struct {
  uvq_event_t ev;
  unsigned producer;
  unsigned seq;
} item_t;

#define ITEM(e) ((item_t*) ((char*) (e) - offsetof(item_t, ev)))

static uv_loop_t loop;
static unsigned released;
static unsigned queue_closed;
static unsigned sink_closed;
static unsigned error_calls;
static int last_error;

static void count_release(uvq_event_t* ev) {
  (void) ev;
  released++;
}

static void on_queue_closed(uvq_queue_t* q) {
  (void) q;
  /* The sink we fed closed first. */
  ck_assert_uint_eq(sink_closed, 1);
  queue_closed++;
}

static void on_error(uvq_queue_t* q, uvq_event_t* ev, int err) {
  (void) q;
  (void) ev;
  error_calls++;
  last_error = err;
}

/* -- a test sink: records what it takes, can refuse, fail or stall -------- */

typedef struct {
  uvq_sink_t sink;
  uv_timer_t timer; /* makes it slow: one event per tick */
  int slow;         /* take one event, then "again" until the timer fires */
  int busy;
  int stuck;        /* "again" forever */
  int fail_every;   /* fail every n-th write (0: never) */
  int said_again;   /* returned "again", no ready since */
  unsigned early;   /* writes while said_again: the contract forbids them */
  unsigned writes;
  unsigned taken;
  unsigned next_seq[128];
  unsigned order_errors;
} test_sink_t;

static void test_sink_tick(uv_timer_t* t) {
  test_sink_t* ts = t->data;
  ts->busy = 0;
  ts->said_again = 0;
  uvq_sink_ready(&ts->sink);
}

static int test_sink_write(uvq_sink_t* sink, uvq_event_t* ev) {
  test_sink_t* ts = (test_sink_t*) sink;
  item_t* it = ITEM(ev);
  ts->writes++;
  if (ts->said_again)
    ts->early++;
  if (ts->stuck || ts->busy) {
    ts->said_again = 1;
    return UVQ_EAGAIN;
  }
  if (ts->fail_every != 0 && ts->writes % ts->fail_every == 0)
    return UV_EIO;
  if (it->seq != ts->next_seq[it->producer])
    ts->order_errors++;
  ts->next_seq[it->producer] = it->seq + 1;
  ts->taken++;
  if (ts->slow) {
    ts->busy = 1;
    uv_timer_start(&ts->timer, test_sink_tick, 1, 0);
  }
  return 0;
}

static void test_sink_timer_closed(uv_handle_t* h) {
  test_sink_t* ts = h->data;
  sink_closed++;
  uvq_sink_closed(&ts->sink);
}

static void test_sink_close(uvq_sink_t* sink) {
  test_sink_t* ts = (test_sink_t*) sink;
  uv_close((uv_handle_t*) &ts->timer, test_sink_timer_closed);
}

static const uvq_sink_vtable_t test_sink_vt = {test_sink_write,
                                               test_sink_close};

static void test_sink_init(test_sink_t* ts) {
  memset(ts, 0, sizeof(*ts));
  ck_assert_int_eq(uvq_sink_init(&ts->sink, &test_sink_vt), 0);
  ck_assert_int_eq(uv_timer_init(&loop, &ts->timer), 0);
  ts->timer.data = ts;
}

static void setup(void) {
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  released = queue_closed = sink_closed = error_calls = 0;
  last_error = 0;
}

static void teardown(void) {}

static item_t* make_items(unsigned n, unsigned producer) {
  item_t* items = calloc(n, sizeof(item_t));
  unsigned i;
  ck_assert_ptr_nonnull(items);
  for (i = 0; i < n; i++) {
    uvq_event_init(&items[i].ev, count_release);
    items[i].producer = producer;
    items[i].seq = i;
  }
  return items;
}

/* -- go-events: 1000 events from many threads into a queue before a slow
 * sink; after the stop every one arrived and the sink is closed. ---------- */

enum { GO_THREADS = 100, GO_PER_THREAD = 10 };
static uvq_queue_t go_queue;
static item_t* go_items[GO_THREADS];

static void go_producer(void* arg) {
  uintptr_t id = (uintptr_t) arg;
  unsigned i;
  for (i = 0; i < GO_PER_THREAD; i++)
    ck_assert_int_eq(uvq_queue_enqueue(&go_queue, &go_items[id][i].ev), 0);
}

typedef struct {
  uv_thread_t threads[GO_THREADS];
} go_threads_t;

static void stop_after_join(void* arg) {
  go_threads_t* t = arg;
  unsigned i;
  for (i = 0; i < GO_THREADS; i++)
    uv_thread_join(&t->threads[i]);
  ck_assert_int_eq(uvq_queue_stop(&go_queue, UVQ_STOP_DRAIN, on_queue_closed),
                   0);
}

START_TEST(queue_to_slow_sink_delivers_every_event_then_closes_it) {
  test_sink_t ts;
  go_threads_t t;
  uv_thread_t joiner;
  uvq_queue_stats_t st;
  uintptr_t i;

  test_sink_init(&ts);
  ts.slow = 1;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &go_queue, &ts.sink, NULL), 0);
  for (i = 0; i < GO_THREADS; i++) {
    go_items[i] = make_items(GO_PER_THREAD, (unsigned) i);
    ck_assert_int_eq(uv_thread_create(&t.threads[i], go_producer, (void*) i),
                     0);
  }
  /* The stop comes from another thread, once every producer returned. */
  ck_assert_int_eq(uv_thread_create(&joiner, stop_after_join, &t), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  uv_thread_join(&joiner);

  ck_assert_uint_eq(queue_closed, 1);
  ck_assert_uint_eq(sink_closed, 1);
  ck_assert_uint_eq(ts.taken, GO_THREADS * GO_PER_THREAD);
  ck_assert_uint_eq(ts.order_errors, 0);
  ck_assert_uint_eq(released, GO_THREADS * GO_PER_THREAD);
  ck_assert_int_eq(uvq_queue_stats(&go_queue, &st), 0);
  ck_assert_uint_eq(st.delivered, GO_THREADS * GO_PER_THREAD);
  ck_assert_uint_eq(st.failed, 0);
  ck_assert_uint_eq(st.depth, 0);
  /* A slow sink made the queue hold events back: "again" happened. */
  ck_assert_uint_gt(ts.writes, ts.taken);
  for (i = 0; i < GO_THREADS; i++)
    free(go_items[i]);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- backpressure: a bounded queue before a slow sink blocks producers,
 * and still nothing is lost or reordered. -------------------------------- */

static uvq_queue_t bp_queue;

static void bp_producer(void* arg) {
  item_t* items = arg;
  unsigned i;
  for (i = 0; i < 200; i++)
    ck_assert_int_eq(uvq_queue_enqueue(&bp_queue, &items[i].ev), 0);
  ck_assert_int_eq(uvq_queue_stop(&bp_queue, UVQ_STOP_DRAIN, on_queue_closed),
                   0);
}

START_TEST(queue_to_sink_again_pushes_back_on_bounded_producers) {
  uvq_queue_options_t o = {.capacity = 4, .overflow = UVQ_BLOCK};
  test_sink_t ts;
  uvq_queue_stats_t st;
  uv_thread_t tid;
  item_t* items = make_items(200, 0);

  test_sink_init(&ts);
  ts.slow = 1;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &bp_queue, &ts.sink, &o), 0);
  ck_assert_int_eq(uv_thread_create(&tid, bp_producer, items), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  uv_thread_join(&tid);
  ck_assert_uint_eq(ts.taken, 200);
  ck_assert_uint_eq(ts.order_errors, 0);
  ck_assert_uint_eq(released, 200);
  ck_assert_int_eq(uvq_queue_stats(&bp_queue, &st), 0);
  ck_assert_uint_le(st.max_depth, 4);
  ck_assert_uint_eq(st.delivered, 200);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- failures are counted, reported and released, never silently lost. --- */

/* After the close: `failed` writes failed with err (each reported to the
 * error callback), `delivered` succeeded, and every event was released. */
static void check_write_counts(uvq_queue_t* q, unsigned failed,
                               unsigned delivered, int err) {
  uvq_queue_stats_t st;
  ck_assert_int_eq(uvq_queue_stats(q, &st), 0);
  ck_assert_uint_eq(st.failed, failed);
  ck_assert_uint_eq(st.delivered, delivered);
  ck_assert_uint_eq(error_calls, failed);
  ck_assert_int_eq(last_error, err);
  ck_assert_uint_eq(released, failed + delivered);
}

START_TEST(queue_to_sink_counts_and_reports_failed_writes) {
  uvq_queue_options_t o = {.error = on_error};
  uvq_queue_t q;
  test_sink_t ts;
  item_t* items = make_items(30, 0);
  unsigned i;

  test_sink_init(&ts);
  ts.fail_every = 3;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ts.sink, &o), 0);
  for (i = 0; i < 30; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &items[i].ev), 0);
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_queue_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  check_write_counts(&q, 10, 20, UV_EIO);
  ck_assert_uint_eq(queue_closed, 1);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- the loop run by another thread than the one that made the sink: every
 * write fails with UVQ_ETHREAD, nothing is delivered, the stop closes the
 * queue (no hang) and leaves the sink open for its own thread. ------------ */

/* Not a test thread: it records what uv_run returned for the test to
 * assert after the join. */
static int loop_thread_rc;
static void run_loop_thread(void* arg) {
  loop_thread_rc = uv_run(arg, UV_RUN_DEFAULT);
}

static void count_sink_closed(uvq_sink_t* s) {
  (void) s;
}

START_TEST(queue_to_sink_drained_on_another_thread_fails_every_write) {
  uvq_queue_options_t o = {.error = on_error};
  uvq_queue_t q;
  test_sink_t ts;
  uv_thread_t other;
  item_t* items = make_items(5, 0);
  unsigned i;

  test_sink_init(&ts);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ts.sink, &o), 0);
  for (i = 0; i < 5; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &items[i].ev), 0);
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, NULL), 0);
  loop_thread_rc = -1;
  ck_assert_int_eq(uv_thread_create(&other, run_loop_thread, &loop), 0);
  ck_assert_int_eq(uv_thread_join(&other), 0);
  ck_assert_int_eq(loop_thread_rc, 0);
  check_write_counts(&q, 5, 0, UVQ_ETHREAD);
  ck_assert_uint_eq(ts.writes, 0);
  ck_assert_int_eq(uvq_sink_is_closed(&ts.sink), 0); /* left open */
  /* Its own thread closes it (its timer needs the loop once more). */
  ck_assert_int_eq(uvq_sink_close(&ts.sink, count_sink_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(sink_closed, 1);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- a stuck sink holds a drain stop; a discard stop overrides it. -------- */

static uvq_queue_t stuck_queue;

static void discard_later(uv_timer_t* t) {
  ck_assert_uint_eq(queue_closed, 0); /* the drain is still waiting */
  ck_assert_int_eq(uvq_queue_stop(&stuck_queue, UVQ_STOP_DISCARD, NULL), 0);
  uv_close((uv_handle_t*) t, NULL);
}

/* -- a poll window restarts when the event held by "again" is delivered:
 * that pass delivers, even if it takes nothing new from the queue. ------- */

START_TEST(queue_to_sink_poll_window_restarts_when_the_held_event_goes) {
  test_sink_t ts;
  uvq_queue_t q;
  uvq_queue_options_t o;
  item_t* items = make_items(1, 0);
  int i;

  test_sink_init(&ts);
  ts.busy = 1; /* "again" until we say ready */
  memset(&o, 0, sizeof(o));
  o.poll_us = UVQ_MAX_POLL_US; /* 1 s, far longer than this test */
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ts.sink, &o), 0);
  ck_assert_int_eq(uvq_queue_enqueue(&q, &items[0].ev), 0);
  while (ts.writes < 1)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_uint_eq(ts.taken, 0); /* held */
  ts.busy = 0;
  uvq_sink_ready(&ts.sink);
  while (ts.taken < 1)
    uv_run(&loop, UV_RUN_NOWAIT);
  for (i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(uv_backend_timeout(&loop), 0); /* still polling */
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_queue_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(queue_closed, 1);
  ck_assert_uint_eq(released, 1);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- after "again" the queue offers the held event only once the sink said
 * ready: a stop, or any other wakeup, while it waits must not write. ----- */

static test_sink_t* wait_sink;

static void ready_later(uv_timer_t* t) {
  ck_assert_uint_eq(queue_closed, 0); /* the drain stop waits for us */
  ck_assert_uint_eq(wait_sink->writes, 1);
  wait_sink->busy = 0;
  wait_sink->said_again = 0;
  uvq_sink_ready(&wait_sink->sink);
  uv_close((uv_handle_t*) t, NULL);
}

START_TEST(queue_to_sink_waits_for_ready_before_it_offers_again) {
  test_sink_t ts;
  uvq_queue_t q;
  uv_timer_t later;
  item_t* items = make_items(3, 0);
  int i;

  test_sink_init(&ts);
  wait_sink = &ts;
  ts.busy = 1; /* "again" until ready_later */
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ts.sink, NULL), 0);
  ck_assert_int_eq(uvq_queue_enqueue(&q, &items[0].ev), 0);
  while (ts.writes < 1)
    uv_run(&loop, UV_RUN_ONCE);
  /* Wakeups that are not the sink's ready: more events (the loop is awake,
   * so these send none by themselves), a stale send, then a drain stop. */
  for (i = 1; i < 3; i++)
    ck_assert_int_eq(uvq_queue_enqueue(&q, &items[i].ev), 0);
  ck_assert_int_eq(uv_async_send(&q.async_), 0);
  for (i = 0; i < 5; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_queue_closed), 0);
  for (i = 0; i < 5; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_uint_eq(ts.early, 0);
  ck_assert_uint_eq(ts.writes, 1);
  ck_assert_int_eq(uv_timer_init(&loop, &later), 0);
  ck_assert_int_eq(uv_timer_start(&later, ready_later, 20, 0), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(queue_closed, 1);
  ck_assert_uint_eq(ts.early, 0);
  ck_assert_uint_eq(ts.taken, 3);
  ck_assert_uint_eq(ts.order_errors, 0);
  ck_assert_uint_eq(released, 3);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- room while the loop feeds a sink: as with a process callback
 * (check_queue.c), a full queue of 64 has room again after every 4
 * deliveries of a pass, not only at its end. The sink's write (the loop
 * thread) tries to enqueue a spare each time. --------------------------- */

typedef struct {
  uvq_sink_t sink;
  uvq_queue_t* q;
  item_t* spares;
  unsigned calls;
  int results[64];
  unsigned taken;
} room_sink_t;

static int room_sink_write(uvq_sink_t* sink, uvq_event_t* ev) {
  room_sink_t* rs = (room_sink_t*) sink;
  rs->taken++;
  if (rs->calls < 64 && ITEM(ev)->producer == 0) {
    rs->results[rs->calls] =
        uvq_queue_try_enqueue(rs->q, &rs->spares[rs->calls].ev);
    rs->calls++;
  }
  return 0;
}

static const uvq_sink_vtable_t room_sink_vt = {room_sink_write, NULL};

static void count_queue_closed(uvq_queue_t* q) {
  (void) q;
  queue_closed++;
}

START_TEST(queue_to_sink_publishes_room_in_runs_during_a_pass) {
  enum { CAP = 64, RUN = 4 };
  uvq_queue_options_t o;
  room_sink_t rs;
  uvq_queue_t q;
  item_t* items = make_items(CAP, 0);
  item_t* spares = make_items(CAP, 1);
  unsigned spares_in = 0;
  unsigned i;

  memset(&rs, 0, sizeof(rs));
  ck_assert_int_eq(uvq_sink_init(&rs.sink, &room_sink_vt), 0);
  rs.q = &q;
  rs.spares = spares;
  memset(&o, 0, sizeof(o));
  o.capacity = CAP;
  o.overflow = UVQ_BLOCK;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &rs.sink, &o), 0);
  for (i = 0; i < CAP; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &items[i].ev), 0);
  while (rs.calls < CAP)
    uv_run(&loop, UV_RUN_ONCE);
  for (i = 0; i < CAP; i++) {
    /* the i+1-th delivery: RUN * floor((i+1) / RUN) removals are
     * published, and spares_in of them were taken by spares */
    int room = (i + 1) / RUN * RUN > spares_in;
    ck_assert_msg(rs.results[i] == (room ? 0 : UVQ_EFULL),
                  "delivery %u: try_enqueue gave %d", i + 1, rs.results[i]);
    if (rs.results[i] == 0)
      spares_in++;
  }
  ck_assert_uint_eq(spares_in, CAP - RUN + 1); /* none before the RUN-th */
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, count_queue_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(queue_closed, 1);
  ck_assert_uint_eq(rs.taken, CAP + spares_in);
  ck_assert_uint_eq(released, CAP + spares_in);
  free(items);
  free(spares);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- the user closes the sink first, and its close takes a while: the
 * queue's close callback still comes after the sink's (the user may free
 * both there). ------------------------------------------------------------ */

typedef struct {
  uvq_sink_t sink;
  uv_timer_t timer; /* the close completes when it fires */
  unsigned taken;
  int done;         /* uvq_sink_closed() was called */
} late_sink_t;

static char close_order[8];
static unsigned close_order_n;

static void note_close(char c) {
  if (close_order_n < sizeof(close_order) - 1)
    close_order[close_order_n++] = c;
}

static int late_sink_write(uvq_sink_t* sink, uvq_event_t* ev) {
  (void) ev;
  ((late_sink_t*) sink)->taken++;
  return 0;
}

static void late_sink_timer_closed(uv_handle_t* h) {
  late_sink_t* ls = h->data;
  ls->done = 1;
  uvq_sink_closed(&ls->sink);
}

static void late_sink_fire(uv_timer_t* t) {
  uv_close((uv_handle_t*) t, late_sink_timer_closed);
}

static void late_sink_close(uvq_sink_t* sink) {
  late_sink_t* ls = (late_sink_t*) sink;
  uv_timer_start(&ls->timer, late_sink_fire, 5, 0);
}

static const uvq_sink_vtable_t late_sink_vt = {late_sink_write,
                                               late_sink_close};

static void user_sink_closed(uvq_sink_t* s) {
  ck_assert_int_eq(((late_sink_t*) s)->done, 1);
  note_close('S');
}

static late_sink_t* late_for_queue;

static void late_queue_closed(uvq_queue_t* q) {
  (void) q;
  ck_assert_int_eq(late_for_queue->done, 1);
  note_close('Q');
  queue_closed++;
}

static void run_user_closes_sink_first(int with_cb) {
  late_sink_t ls;
  uvq_queue_t q;
  item_t* items = make_items(3, 0);
  unsigned i;

  memset(&ls, 0, sizeof(ls));
  ck_assert_int_eq(uvq_sink_init(&ls.sink, &late_sink_vt), 0);
  ck_assert_int_eq(uv_timer_init(&loop, &ls.timer), 0);
  ls.timer.data = &ls;
  late_for_queue = &ls;
  close_order_n = 0;
  memset(close_order, 0, sizeof(close_order));
  queue_closed = 0;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ls.sink, NULL), 0);
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(uvq_queue_enqueue(&q, &items[i].ev), 0);
  while (ls.taken < 3)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(uvq_sink_close(&ls.sink, with_cb ? user_sink_closed : NULL),
                   0);
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, late_queue_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(queue_closed, 1);
  ck_assert_str_eq(close_order, with_cb ? "SQ" : "Q");
  ck_assert_int_eq(ls.done, 1);
  free(items);
}

START_TEST(queue_to_sink_closed_by_the_user_first_closes_after_it) {
  run_user_closes_sink_first(1);
  run_user_closes_sink_first(0);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(queue_to_stuck_sink_discard_stop_overrides_drain) {
  test_sink_t ts;
  uv_timer_t t;
  uvq_queue_stats_t st;
  item_t* items = make_items(10, 0);
  unsigned i;

  test_sink_init(&ts);
  ts.stuck = 1;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &stuck_queue, &ts.sink, NULL),
                   0);
  for (i = 0; i < 10; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&stuck_queue, &items[i].ev), 0);
  ck_assert_int_eq(uvq_queue_stop(&stuck_queue, UVQ_STOP_DRAIN,
                                  on_queue_closed), 0);
  ck_assert_int_eq(uv_timer_init(&loop, &t), 0);
  ck_assert_int_eq(uv_timer_start(&t, discard_later, 20, 0), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(queue_closed, 1);
  ck_assert_uint_eq(ts.taken, 0);
  ck_assert_uint_eq(released, 10);
  ck_assert_int_eq(uvq_queue_stats(&stuck_queue, &st), 0);
  ck_assert_uint_eq(st.discarded, 10);
  ck_assert_uint_eq(st.delivered, 0);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- the queue as a sink: one event in several queues at once. ------------ */

START_TEST(queue_as_sink_shares_one_event_between_queues) {
  uvq_queue_t qs[3];
  item_t* items = make_items(5, 0);
  unsigned i, j;

  for (j = 0; j < 3; j++)
    ck_assert_int_eq(uvq_queue_init_sink(&loop, &qs[j], NULL, NULL),
                     UVQ_EINVAL);
  for (j = 0; j < 3; j++) {
    test_sink_t* ts = malloc(sizeof(*ts));
    test_sink_init(ts);
    qs[j].data = ts;
    ck_assert_int_eq(uvq_queue_init_sink(&loop, &qs[j], &ts->sink, NULL), 0);
  }
  for (i = 0; i < 5; i++) {
    for (j = 0; j < 3; j++)
      ck_assert_int_eq(uvq_sink_write(uvq_queue_sink(&qs[j]), &items[i].ev),
                       0);
    /* the writer's own reference plus one per queue */
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 4);
    uvq_event_unref(&items[i].ev); /* the writer lets go */
  }
  ck_assert_uint_eq(released, 0);
  for (j = 0; j < 3; j++)
    ck_assert_int_eq(uvq_sink_close(uvq_queue_sink(&qs[j]), NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  for (j = 0; j < 3; j++) {
    test_sink_t* ts = qs[j].data;
    ck_assert_uint_eq(ts->taken, 5);
    ck_assert_uint_eq(ts->order_errors, 0);
    free(ts);
  }
  ck_assert_uint_eq(released, 5); /* each event exactly once, by the last */
  for (i = 0; i < 5; i++)
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 0);
  ck_assert_int_eq(uvq_sink_write(uvq_queue_sink(&qs[0]), &items[0].ev),
                   UVQ_ECLOSED);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- the face of a full UVQ_BLOCK queue says "again", then "ready". ------- */

static unsigned face_ready_calls;

static void face_ready(uvq_sink_t* s, void* arg) {
  (void) s;
  (void) arg;
  face_ready_calls++;
}

/* A UVQ_BLOCK queue of capacity 2 feeding ts, its face with face_ready
 * registered, written items[0] and [1] (taken) and items[2] (UVQ_EAGAIN,
 * not taken). Returns the face. */
static uvq_sink_t* face_full_with_a_waiting_writer(uvq_queue_t* q,
                                                   test_sink_t* ts,
                                                   item_t* items) {
  uvq_queue_options_t o = {.capacity = 2, .overflow = UVQ_BLOCK};
  uvq_sink_t* face;

  face_ready_calls = 0;
  test_sink_init(ts);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, q, &ts->sink, &o), 0);
  face = uvq_queue_sink(q);
  ck_assert_int_eq(uvq_sink_set_ready_cb(face, face_ready, NULL), 0);
  ck_assert_int_eq(uvq_sink_write(face, &items[0].ev), 0);
  ck_assert_int_eq(uvq_sink_write(face, &items[1].ev), 0);
  ck_assert_int_eq(uvq_sink_write(face, &items[2].ev), UVQ_EAGAIN);
  ck_assert_uint_eq(uvq_event_refs(&items[2].ev), 1); /* not taken */
  return face;
}

START_TEST(queue_as_sink_full_block_queue_says_again_then_ready) {
  uvq_queue_t q;
  test_sink_t ts;
  item_t* items = make_items(3, 0);
  uvq_sink_t* face = face_full_with_a_waiting_writer(&q, &ts, items);

  ck_assert_uint_eq(face_ready_calls, 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_NOWAIT), 1);
  ck_assert_uint_eq(face_ready_calls, 1);
  ck_assert_int_eq(uvq_sink_write(face, &items[2].ev), 0);
  ck_assert_int_eq(uvq_sink_close(face, NULL), 0);
  ck_assert_int_eq(uvq_sink_close(face, NULL), 0); /* twice: harmless */
  ck_assert_int_eq(uvq_sink_write(face, &items[2].ev), UVQ_ECLOSED);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(ts.taken, 3);
  ck_assert_uint_eq(sink_closed, 1);
  uvq_event_unref(&items[0].ev);
  uvq_event_unref(&items[1].ev);
  uvq_event_unref(&items[2].ev);
  ck_assert_uint_eq(released, 3);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* The same with UVQ_FAIL: a full queue says UVQ_EFULL (it will not call
 * ready: nobody waits), and the event is not taken. */
START_TEST(queue_as_sink_full_fail_queue_returns_efull) {
  uvq_queue_options_t o = {.capacity = 1, .overflow = UVQ_FAIL};
  uvq_queue_t q;
  test_sink_t ts;
  item_t* items = make_items(2, 0);
  uvq_sink_t* face;

  face_ready_calls = 0;
  test_sink_init(&ts);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ts.sink, &o), 0);
  face = uvq_queue_sink(&q);
  ck_assert_int_eq(uvq_sink_set_ready_cb(face, face_ready, NULL), 0);
  ck_assert_int_eq(uvq_sink_write(face, &items[0].ev), 0);
  ck_assert_int_eq(uvq_sink_write(face, &items[1].ev), UVQ_EFULL);
  ck_assert_uint_eq(uvq_event_refs(&items[1].ev), 1); /* not taken */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_NOWAIT), 1);
  ck_assert_uint_eq(ts.taken, 1);
  ck_assert_uint_eq(face_ready_calls, 0); /* EFULL promises no ready */
  ck_assert_int_eq(uvq_sink_write(face, &items[1].ev), 0); /* room now */
  ck_assert_int_eq(uvq_sink_close(face, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(ts.taken, 2);
  ck_assert_uint_eq(sink_closed, 1);
  uvq_event_unref(&items[0].ev);
  uvq_event_unref(&items[1].ev);
  ck_assert_uint_eq(released, 2);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

static unsigned face_closes;

static void face_close_cb(uvq_sink_t* s) {
  (void) s;
  face_closes++;
}

/* The face closed while its writer waits after UVQ_EAGAIN: the close says
 * ready at once (sinks.md), and the retry learns UVQ_ECLOSED; nothing of
 * what was taken is lost. (The ready used to wait for the next pass.) */
START_TEST(queue_as_sink_closed_while_its_writer_waits_says_ready) {
  uvq_queue_t q;
  test_sink_t ts;
  item_t* items = make_items(3, 0);
  uvq_sink_t* face = face_full_with_a_waiting_writer(&q, &ts, items);

  face_closes = 0;
  ck_assert_uint_eq(face_ready_calls, 0);
  ck_assert_int_eq(uvq_sink_close(face, face_close_cb), 0);
  ck_assert_uint_eq(face_ready_calls, 1); /* from the close, not a pass */
  ck_assert_int_eq(uvq_sink_write(face, &items[2].ev), UVQ_ECLOSED);
  ck_assert_uint_eq(face_closes, 0); /* with the queue's close */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(face_ready_calls, 1); /* once */
  ck_assert_uint_eq(face_closes, 1);
  ck_assert_uint_eq(ts.taken, 2);
  ck_assert_uint_eq(sink_closed, 1);
  for (unsigned i = 0; i < 3; i++)
    uvq_event_unref(&items[i].ev);
  ck_assert_uint_eq(released, 3);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

/* The queue closed (stopped and its close callback ran) before anyone
 * closed its face: the face is still open, writes to it return
 * UVQ_ECLOSED, and closing it runs its callback at once. (The queue's
 * close used to mark it done, and the callback never ran.) */
START_TEST(queue_as_sink_closed_after_its_queue_runs_its_callback) {
  uvq_queue_t q;
  test_sink_t ts;
  item_t* items = make_items(1, 0);
  uvq_sink_t* face;

  face_closes = 0;
  test_sink_init(&ts);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ts.sink, NULL), 0);
  face = uvq_queue_sink(&q);
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_queue_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(queue_closed, 1);
  ck_assert_int_eq(uvq_sink_is_closed(face), 0);
  ck_assert_int_eq(uvq_sink_write(face, &items[0].ev), UVQ_ECLOSED);
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1);
  ck_assert_int_eq(uvq_sink_close(face, face_close_cb), 0);
  ck_assert_uint_eq(face_closes, 1); /* at once */
  ck_assert_int_eq(uvq_sink_is_closed(face), 1);
  ck_assert_int_eq(uvq_sink_close(face, face_close_cb), 0);
  ck_assert_uint_eq(face_closes, 1); /* a second close does nothing */
  uvq_event_unref(&items[0].ev);
  ck_assert_uint_eq(released, 1);
  free(items);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(queue_init_sink_rejects_bad_sinks) {
  uvq_queue_t q, q2;
  test_sink_t ts;

  test_sink_init(&ts);
  ck_assert_int_eq(uvq_queue_init_sink(NULL, &q, &ts.sink, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, NULL, &ts.sink, NULL),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ts.sink, NULL), 0);
  /* A sink has one upstream. */
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q2, &ts.sink, NULL), UVQ_EBUSY);
  ck_assert_ptr_null(uvq_queue_sink(NULL));
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, on_queue_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(queue_closed, 1);
  uvq_test_loop_done(&loop);
}
END_TEST

Suite* queue_sink_suite(void) {
  Suite* s = suite_create("queue_sink");
  TCase* tc = tcase_create("queue_sink");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, queue_to_slow_sink_delivers_every_event_then_closes_it);
  tcase_add_test(tc, queue_to_sink_again_pushes_back_on_bounded_producers);
  tcase_add_test(tc, queue_to_sink_counts_and_reports_failed_writes);
  tcase_add_test(tc,
                 queue_to_sink_drained_on_another_thread_fails_every_write);
  tcase_add_test(tc, queue_to_stuck_sink_discard_stop_overrides_drain);
  tcase_add_test(tc, queue_to_sink_closed_by_the_user_first_closes_after_it);
  tcase_add_test(tc,
                 queue_to_sink_poll_window_restarts_when_the_held_event_goes);
  tcase_add_test(tc, queue_to_sink_waits_for_ready_before_it_offers_again);
  tcase_add_test(tc, queue_to_sink_publishes_room_in_runs_during_a_pass);
  tcase_add_test(tc, queue_as_sink_shares_one_event_between_queues);
  tcase_add_test(tc, queue_as_sink_full_block_queue_says_again_then_ready);
  tcase_add_test(tc, queue_as_sink_full_fail_queue_returns_efull);
  tcase_add_test(tc, queue_as_sink_closed_while_its_writer_waits_says_ready);
  tcase_add_test(tc, queue_as_sink_closed_after_its_queue_runs_its_callback);
  tcase_add_test(tc, queue_init_sink_rejects_bad_sinks);
  suite_add_tcase(s, tc);
  return s;
}
