/* Queue races that need a thread stopped at one exact place: a copy of
 * lib/queue.c, built into this file with a pause in uvq_queue_stats between
 * its read of removed_ and its read of the count (UVQ__STATS_BETWEEN, empty
 * in the library). Its public functions are renamed race_queue_* so that
 * they do not meet the library's; events and sinks are the library's own.
 * test/check_queue.c parks a reader with a signal wherever it happens to be;
 * this one parks it at the one place the order of the loads matters. */
#include <stdatomic.h>

#define uvq_queue_init race_queue_init
#define uvq_queue_init_sink race_queue_init_sink
#define uvq_queue_enqueue race_queue_enqueue
#define uvq_queue_try_enqueue race_queue_try_enqueue
#define uvq_queue_enqueue_timeout race_queue_enqueue_timeout
#define uvq_queue_stop race_queue_stop
#define uvq_queue_ref race_queue_ref
#define uvq_queue_unref race_queue_unref
#define uvq_queue_stats race_queue_stats
#define uvq_queue_sink race_queue_sink
/* queue.c defines the thread marker; check_channel_race.c has one too. */
#define uvq__thread_marker race_queue_thread_marker

static void race_stats_between(void);
#define UVQ__STATS_BETWEEN() race_stats_between()

#include "../lib/queue.c"

#include "helpers.h"

/* The reader that sets pause_here stops between the loads until resumed. */
static _Thread_local int pause_here;
static uv_sem_t between;
static uv_sem_t resumed;

static void race_stats_between(void) {
  if (!pause_here)
    return;
  pause_here = 0;
  uv_sem_post(&between);
  uv_sem_wait(&resumed);
}

static uv_loop_t loop;
static uvq_queue_t rq;
static unsigned delivered;
static uvq_queue_stats_t read_st;
static int read_rc;

static void process(uvq_queue_t* q, uvq_event_t* ev) {
  (void) q;
  (void) ev;
  delivered++;
}

static void reader_main(void* arg) {
  (void) arg;
  pause_here = 1;
  read_rc = race_queue_stats(&rq, &read_st);
}

static void noop_release(uvq_event_t* ev) {
  (void) ev;
}

/* With `queued` events in the queue (none delivered), a reader stops after
 * its read of removed_; the loop delivers them all and `more` are queued;
 * the reader goes on. Returns its depth. */
static uint64_t depth_across_a_pass(size_t cap, unsigned queued,
                                    unsigned more) {
  uvq_queue_options_t o;
  uvq_event_t evs[64];
  uv_thread_t reader;
  unsigned i;

  ck_assert_uint_le(queued + more, 64);
  for (i = 0; i < queued + more; i++)
    ck_assert_int_eq(uvq_event_init(&evs[i], noop_release), 0);
  memset(&o, 0, sizeof(o));
  o.capacity = cap;
  o.overflow = UVQ_FAIL;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  delivered = 0;
  ck_assert_int_eq(race_queue_init(&loop, &rq, process, &o), 0);
  for (i = 0; i < queued; i++)
    ck_assert_int_eq(race_queue_try_enqueue(&rq, &evs[i]), 0);
  ck_assert_int_eq(uv_thread_create(&reader, reader_main, NULL), 0);
  uv_sem_wait(&between); /* it read removed_ == 0 */
  while (delivered < queued)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  for (i = queued; i < queued + more; i++)
    ck_assert_int_eq(race_queue_try_enqueue(&rq, &evs[i]), 0);
  uv_sem_post(&resumed);
  ck_assert_int_eq(uv_thread_join(&reader), 0);
  ck_assert_int_eq(read_rc, 0);
  ck_assert_uint_eq(read_st.enqueued, queued + more);
  ck_assert_int_eq(race_queue_stop(&rq, UVQ_STOP_DRAIN, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(delivered, queued + more);
  uvq_test_loop_done(&loop);
  return read_st.depth;
}

START_TEST(queue_stats_reader_stopped_between_its_loads) {
  ck_assert_int_eq(uv_sem_init(&between, 0), 0);
  ck_assert_int_eq(uv_sem_init(&resumed, 0), 0);
  /* Unbounded: 3 queued now, the reader's removed_ is 5 behind: it says 8,
   * too many (stats' documented error), never too few and never a wrapped
   * "negative" count (what reading the count first would give: 5 - 5 = 0
   * here, and below zero had the pass delivered the 3 too). */
  ck_assert_uint_eq(depth_across_a_pass(0, 5, 3), 8);
  /* Bounded, 4 of 4 then 4 of 4 again: 8 by the same reading, which no
   * queue of capacity 4 ever holds; stats says 4. */
  ck_assert_uint_eq(depth_across_a_pass(4, 4, 4), 4);
  uv_sem_destroy(&between);
  uv_sem_destroy(&resumed);
}
END_TEST

Suite* queue_race_suite(void) {
  Suite* s = suite_create("queue_race");
  TCase* tc = tcase_create("queue_race");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, queue_stats_reader_stopped_between_its_loads);
  suite_add_tcase(s, tc);
  return s;
}
