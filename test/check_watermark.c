/* Watermarks: watermark(q, 1) once the depth reaches high_water, then
 * watermark(q, 0) once it falls to low_water, alternately, on the loop
 * thread; also while the queue waits for its sink's ready (the producer
 * that reaches high_water wakes the loop); never after a stop request;
 * and impossible settings refused. */
#include <string.h>

#include "helpers.h"

typedef struct {
  uvq_event_t ev;
  unsigned producer;
  unsigned seq;
} item_t;

#define ITEM(e) ((item_t*) ((char*) (e) - offsetof(item_t, ev)))

static uv_loop_t loop;
static uv_thread_t loop_tid;
static unsigned delivered;
static unsigned order_errors;
static unsigned next_seq[8];
static unsigned closed;

/* What the watermark callback saw, in order. */
enum { LOG_MAX = 4096 };
static char marks[LOG_MAX + 1]; /* '1' above, '0' below */
static uint64_t mark_depth[LOG_MAX];
static unsigned nmarks;
static unsigned marks_off_loop;
static unsigned marks_after_stop;
static int stopped; /* we asked for the stop */
static int stop_on_above; /* the callback stops the queue (discard) */

static void on_mark(uvq_queue_t* q, int above) {
  uvq_queue_stats_t st;
  uv_thread_t self = uv_thread_self();
  if (!uv_thread_equal(&self, &loop_tid))
    marks_off_loop++;
  if (stopped)
    marks_after_stop++;
  ck_assert_int_eq(uvq_queue_stats(q, &st), 0);
  if (nmarks < LOG_MAX) {
    marks[nmarks] = above ? '1' : '0';
    mark_depth[nmarks] = st.depth;
  }
  nmarks++;
  if (above && stop_on_above) {
    stopped = 1;
    ck_assert_int_eq(uvq_queue_stop(q, UVQ_STOP_DISCARD, NULL), 0);
  }
}

static void count_release(uvq_event_t* ev) {
  (void) ev;
}

static void process(uvq_queue_t* q, uvq_event_t* ev) {
  item_t* it = ITEM(ev);
  (void) q;
  if (it->seq != next_seq[it->producer])
    order_errors++;
  next_seq[it->producer] = it->seq + 1;
  delivered++;
}

static void on_closed(uvq_queue_t* q) {
  (void) q;
  closed++;
}

static void reset(void) {
  loop_tid = uv_thread_self();
  delivered = order_errors = closed = 0;
  memset(next_seq, 0, sizeof(next_seq));
  memset(marks, 0, sizeof(marks));
  nmarks = marks_off_loop = marks_after_stop = 0;
  stopped = stop_on_above = 0;
}

static void setup(void) {
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  reset();
}

static void teardown(void) {}

static item_t* items_new(unsigned n, unsigned producer) {
  item_t* it = calloc(n, sizeof(*it));
  unsigned i;
  ck_assert_ptr_nonnull(it);
  for (i = 0; i < n; i++) {
    uvq_event_init(&it[i].ev, count_release);
    it[i].producer = producer;
    it[i].seq = i;
  }
  return it;
}

static uvq_queue_options_t* marks_opts(uvq_queue_options_t* o, size_t cap,
                                       size_t high, size_t low) {
  memset(o, 0, sizeof(*o));
  o->capacity = cap;
  o->high_water = high;
  o->low_water = low;
  o->watermark = on_mark;
  return o;
}

static void stop_and_run(uvq_queue_t* q) {
  stopped = 1;
  ck_assert_int_eq(uvq_queue_stop(q, UVQ_STOP_DRAIN, on_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(closed, 1);
}

/* -- one crossing each way, at the depths they name ---------------------- */

START_TEST(watermark_reports_high_then_low_once_each) {
  uvq_queue_options_t o;
  uvq_queue_t q;
  item_t* it = items_new(40, 0);
  unsigned i;

  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, 10, 2)), 0);
  /* 9 queued: below high_water, nothing to say. */
  for (i = 0; i < 9; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
  ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_uint_eq(delivered, 9);
  ck_assert_uint_eq(nmarks, 0);
  /* 15 queued before the loop looks: above (at 15), delivered, below (0). */
  for (i = 9; i < 24; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
  ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_uint_eq(delivered, 24);
  ck_assert_uint_eq(nmarks, 2);
  ck_assert_str_eq(marks, "10");
  ck_assert_uint_eq(mark_depth[0], 15);
  ck_assert_uint_eq(mark_depth[1], 0);
  /* And again, from the start: the watermark was armed again. */
  for (i = 24; i < 40; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
  ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_str_eq(marks, "1010");
  ck_assert_uint_eq(mark_depth[2], 16);
  stop_and_run(&q);
  ck_assert_uint_eq(delivered, 40);
  ck_assert_uint_eq(order_errors, 0);
  ck_assert_uint_eq(marks_off_loop, 0);
  free(it);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- a loop busy in one long pass: "below" waits until the depth is down to
 * low_water, not merely under high_water. -------------------------------- */

START_TEST(watermark_low_comes_only_at_low_water) {
  uvq_queue_options_t o;
  uvq_queue_t q;
  item_t* it = items_new(20, 0);
  unsigned i;

  marks_opts(&o, 0, 8, 3);
  o.batch = 4; /* four events a pass: the depth falls 20, 16, 12 ... */
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process, &o), 0);
  for (i = 0; i < 20; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
  while (delivered < 20)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  ck_assert_str_eq(marks, "10");
  ck_assert_uint_eq(mark_depth[0], 20);
  /* The pass that left 0 (the one before left 4, above low_water 3). */
  ck_assert_uint_eq(mark_depth[1], 0);
  stop_and_run(&q);
  free(it);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- the use case: a sink in its backoff says "again", the loop's own
 * source keeps enqueueing, and the queue says "above" while it still waits
 * for the sink (no pass would otherwise run); "below" once the sink took
 * the backlog. ------------------------------------------------------------ */

typedef struct {
  uvq_sink_t sink;
  int busy;
  int said_again;
  unsigned writes;
  unsigned early; /* writes while it waited to say ready */
  unsigned taken;
  /* On its first write, enqueue nfeed of feed_items into feed. */
  uvq_queue_t* feed;
  item_t* feed_items;
  unsigned nfeed;
} wait_sink_t;

static int wait_sink_write(uvq_sink_t* s, uvq_event_t* ev) {
  wait_sink_t* ws = (wait_sink_t*) s;
  (void) ev;
  unsigned i;
  ws->writes++;
  if (ws->writes == 1)
    for (i = 0; i < ws->nfeed; i++)
      ck_assert_int_eq(uvq_queue_try_enqueue(ws->feed, &ws->feed_items[i].ev),
                       0);
  if (ws->said_again)
    ws->early++;
  if (ws->busy) {
    ws->said_again = 1;
    return UVQ_EAGAIN;
  }
  ws->taken++;
  return 0;
}

static const uvq_sink_vtable_t wait_sink_vt = {wait_sink_write, NULL};

/* Make the sink say "again" to it[0] (the queue then holds it and waits
 * for the sink's ready), then enqueue it[1] to it[n - 1] behind it. */
static void stall_sink_then_enqueue(wait_sink_t* ws, uvq_queue_t* q,
                                    item_t* it, unsigned n) {
  unsigned i;
  ws->busy = 1;
  ck_assert_int_eq(uvq_queue_try_enqueue(q, &it[0].ev), 0);
  while (!ws->said_again)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  for (i = 1; i < n; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(q, &it[i].ev), 0);
}

START_TEST(watermark_high_is_reported_while_the_sink_waits) {
  uvq_queue_options_t o;
  uvq_queue_t q;
  wait_sink_t ws;
  item_t* it = items_new(64, 0);
  item_t* more = items_new(33, 1);
  unsigned i;

  memset(&ws, 0, sizeof(ws));
  ck_assert_int_eq(uvq_sink_init(&ws.sink, &wait_sink_vt), 0);
  ws.busy = 1;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ws.sink,
                                       marks_opts(&o, 0, 32, 4)), 0);
  ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[0].ev), 0);
  while (ws.writes < 1)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  /* The queue waits for the sink; the loop is awake, so enqueues send no
   * wakeups, and no pass runs... (the depth, as uvq_queue_stats counts it,
   * leaves out the event the sink holds up) */
  for (i = 1; i < 32; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
  for (i = 0; i < 5; i++)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_uint_eq(nmarks, 0); /* 31 < 32 */
  /* ...until the enqueue that brings the depth to 32. */
  ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[32].ev), 0);
  for (i = 0; i < 5 && nmarks == 0; i++)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_str_eq(marks, "1");
  ck_assert_uint_eq(mark_depth[0], 32);
  ck_assert_uint_eq(ws.writes, 1); /* the sink was not asked again */
  ck_assert_uint_eq(ws.early, 0);
  /* More while above: said once only. */
  for (i = 33; i < 64; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
  for (i = 0; i < 5; i++)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_str_eq(marks, "1");
  /* The sink is ready: the backlog goes, and the depth passes low_water. */
  ws.busy = 0;
  ws.said_again = 0;
  uvq_sink_ready(&ws.sink);
  while (ws.taken < 64)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  ck_assert_str_eq(marks, "10");
  ck_assert_uint_le(mark_depth[1], 4);
  /* Armed again: the sink stalls once more, and the same happens. */
  stall_sink_then_enqueue(&ws, &q, more, 33);
  for (i = 0; i < 10 && nmarks < 3; i++)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_str_eq(marks, "101");
  ck_assert_uint_eq(mark_depth[2], 32);
  ck_assert_uint_eq(ws.early, 0);
  ws.busy = 0;
  ws.said_again = 0;
  uvq_sink_ready(&ws.sink);
  stop_and_run(&q);
  ck_assert_uint_eq(ws.taken, 64 + 33);
  ck_assert_str_eq(marks, "101");
  ck_assert_uint_eq(marks_after_stop, 0);
  free(more);
  free(it);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- reached inside a pass and gone by its end: the producer that saw it
 * (here the sink's write itself) counted what the pass had delivered but
 * not yet published, and disarmed the watermark. The loop reads the depth
 * when the pass ends, says nothing of a depth that is gone, and arms the
 * watermark again: while the queue then waits for its sink, the producer
 * that brings the depth to high_water wakes the loop as usual. (A pass
 * delivers only what was accepted when it began: 9 events here, the 10th,
 * enqueued by the sink during the pass, waits for the next one.) ------ */

START_TEST(watermark_crossed_only_inside_a_pass_is_silent) {
  uvq_queue_options_t o;
  uvq_queue_stats_t st;
  uvq_queue_t q;
  wait_sink_t ws;
  item_t* first = items_new(9, 0);
  item_t* inner = items_new(1, 1);
  item_t* later = items_new(11, 2);
  unsigned i;

  memset(&ws, 0, sizeof(ws));
  ck_assert_int_eq(uvq_sink_init(&ws.sink, &wait_sink_vt), 0);
  ws.feed = &q;
  ws.feed_items = inner;
  ws.nfeed = 1;
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &q, &ws.sink,
                                       marks_opts(&o, 0, 10, 0)), 0);
  for (i = 0; i < 9; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &first[i].ev), 0);
  ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_uint_eq(ws.taken, 9); /* the pass took what it found */
  ck_assert_uint_eq(nmarks, 0);   /* depth 1 at its end */
  /* The disarming producer's wakeup runs one more pass: still nothing. */
  for (i = 0; i < 3; i++)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_uint_eq(ws.taken, 10);
  ck_assert_uint_eq(nmarks, 0);
  ck_assert_int_eq(uvq_queue_stats(&q, &st), 0);
  ck_assert_uint_eq(st.depth, 0);
  /* Armed again: the sink stalls, and only a producer's look can tell the
   * loop that the depth reached high_water (the event held for the sink
   * is not in the depth). */
  stall_sink_then_enqueue(&ws, &q, later, 11);
  for (i = 0; i < 10 && nmarks == 0; i++)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_str_eq(marks, "1");
  ck_assert_uint_eq(mark_depth[0], 10);
  ws.busy = 0;
  ws.said_again = 0;
  uvq_sink_ready(&ws.sink);
  while (ws.taken < 21)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  ck_assert_str_eq(marks, "10");
  ck_assert_uint_eq(ws.early, 0);
  stop_and_run(&q);
  free(later);
  free(inner);
  free(first);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- producer threads against a slow loop, unbounded and bounded: the
 * callbacks alternate, start with "above", run on the loop thread, and
 * end with "below" once the queue is empty. ------------------------------ */

enum { WP_PRODUCERS = 4, WP_EVENTS = 20000 };
static uvq_queue_t wp_queue;
static item_t* wp_items[WP_PRODUCERS];

static void wp_main(void* arg) {
  unsigned id = (unsigned) (uintptr_t) arg;
  unsigned i;
  for (i = 0; i < WP_EVENTS; i++)
    ck_assert_int_eq(uvq_queue_enqueue(&wp_queue, &wp_items[id][i].ev), 0);
}

static void slow_process(uvq_queue_t* q, uvq_event_t* ev) {
  process(q, ev);
  if (delivered % 2000 == 0)
    uv_sleep(1); /* the producers get ahead */
}

static void run_producers_against_a_slow_loop(size_t cap) {
  uvq_queue_options_t o;
  uv_thread_t t[WP_PRODUCERS];
  unsigned i;

  reset();
  ck_assert_int_eq(uvq_queue_init(&loop, &wp_queue, slow_process,
                                  marks_opts(&o, cap, 48, 16)), 0);
  for (i = 0; i < WP_PRODUCERS; i++) {
    wp_items[i] = items_new(WP_EVENTS, i);
    ck_assert_int_eq(uv_thread_create(&t[i], wp_main, (void*) (uintptr_t) i),
                     0);
  }
  while (delivered < WP_PRODUCERS * WP_EVENTS)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  for (i = 0; i < WP_PRODUCERS; i++)
    uv_thread_join(&t[i]);
  /* The pass that delivered the last event ended with the depth at 0:
   * it said "below" if "above" was the last word. A producer that saw
   * high_water during that pass (counting what it delivered) got no
   * "above" for it: the depth was gone when the pass ended. */
  ck_assert_uint_ge(nmarks, 2);
  ck_assert_int_eq(marks[nmarks - 1], '0');
  stop_and_run(&wp_queue);
  ck_assert_uint_eq(order_errors, 0);
  ck_assert_uint_eq(marks_off_loop, 0);
  ck_assert_uint_eq(marks_after_stop, 0);
  /* The loop slept 1 ms 40 times while 4 producers ran: it fell behind;
   * the pass that delivered the last event left the queue empty. */
  ck_assert_uint_ge(nmarks, 2);
  ck_assert_uint_le(nmarks, LOG_MAX);
  ck_assert_int_eq(marks[nmarks - 1], '0');
  /* (The depths read in the callback prove nothing here: producers move
   * them between the loop's look and the callback's.) */
  for (i = 0; i < nmarks; i++)
    ck_assert_int_eq(marks[i], i % 2 == 0 ? '1' : '0');
  for (i = 0; i < WP_PRODUCERS; i++)
    free(wp_items[i]);
  uvq_test_loop_done(&loop);
}

START_TEST(watermark_alternates_under_many_producers) {
  run_producers_against_a_slow_loop(0);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  run_producers_against_a_slow_loop(64);
}
END_TEST

/* -- the callback may stop its queue; nothing is reported after a stop ---- */

START_TEST(watermark_callback_may_stop_the_queue) {
  uvq_queue_options_t o;
  uvq_queue_t q;
  uvq_queue_stats_t st;
  item_t* it = items_new(10, 0);
  unsigned i;

  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, 5, 0)), 0);
  stop_on_above = 1;
  for (i = 0; i < 10; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_str_eq(marks, "1"); /* no "below" after the stop */
  ck_assert_uint_eq(marks_after_stop, 0);
  ck_assert_int_eq(uvq_queue_stats(&q, &st), 0);
  ck_assert_uint_eq(st.delivered + st.discarded, 10);
  ck_assert_uint_eq(st.discarded, 10); /* stopped before the first delivery */
  free(it);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(watermark_after_a_drain_stop_is_silent) {
  uvq_queue_options_t o;
  uvq_queue_t q;
  item_t* it = items_new(10, 0);
  unsigned i;

  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, 5, 0)), 0);
  for (i = 0; i < 10; i++)
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
  stop_and_run(&q); /* 10 queued, above high_water, but stopped first */
  ck_assert_uint_eq(delivered, 10);
  ck_assert_uint_eq(nmarks, 0);
  free(it);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- a high_water beyond what the counts reach never fires (it once read
 * as "disarmed by a producer", and every pass said above, then below) --- */

START_TEST(watermark_out_of_reach_never_fires) {
  uvq_queue_options_t o;
  uvq_queue_t q;
  item_t* it = items_new(3, 0);
  unsigned i;

  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, SIZE_MAX / 4, 0)), 0);
  for (i = 0; i < 3; i++) {
    ck_assert_int_eq(uvq_queue_try_enqueue(&q, &it[i].ev), 0);
    while (delivered < i + 1)
      ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  }
  ck_assert_uint_eq(nmarks, 0);
  stop_and_run(&q);
  free(it);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- impossible settings ------------------------------------------------- */

START_TEST(watermark_impossible_settings_are_refused) {
  uvq_queue_options_t o;
  uvq_queue_t q;

  /* counts without a callback */
  memset(&o, 0, sizeof(o));
  o.high_water = 5;
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process, &o), UVQ_EINVAL);
  memset(&o, 0, sizeof(o));
  o.low_water = 1;
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process, &o), UVQ_EINVAL);
  /* a callback without a high watermark, low not below high, too high */
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, 0, 0)), UVQ_EINVAL);
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, 5, 5)), UVQ_EINVAL);
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, 5, 9)), UVQ_EINVAL);
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, SIZE_MAX / 4 + 1, 0)),
                   UVQ_EINVAL);
  /* beyond a bounded queue's capacity: it could never be reached */
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 64, 65, 0)), UVQ_EINVAL);
  /* the limits themselves are fine */
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 64, 64, 63)), 0);
  stop_and_run(&q);
  closed = 0;
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process,
                                  marks_opts(&o, 0, SIZE_MAX / 4, 0)), 0);
  stop_and_run(&q);
  uvq_test_loop_done(&loop);
}
END_TEST

Suite* watermark_suite(void) {
  Suite* s = suite_create("watermark");
  TCase* tc = tcase_create("watermark");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, watermark_reports_high_then_low_once_each);
  tcase_add_test(tc, watermark_low_comes_only_at_low_water);
  tcase_add_test(tc, watermark_high_is_reported_while_the_sink_waits);
  tcase_add_test(tc, watermark_crossed_only_inside_a_pass_is_silent);
  tcase_add_test(tc, watermark_alternates_under_many_producers);
  tcase_add_test(tc, watermark_callback_may_stop_the_queue);
  tcase_add_test(tc, watermark_after_a_drain_stop_is_silent);
  tcase_add_test(tc, watermark_out_of_reach_never_fires);
  tcase_add_test(tc, watermark_impossible_settings_are_refused);
  suite_add_tcase(s, tc);
  return s;
}
