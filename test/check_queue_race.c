/* Queue races that need a thread stopped at one exact place: a copy of
 * lib/queue.c, built into this file with pauses (UVQ__TEST_HOOK, empty in
 * the library) in uvq_queue_stats between its read of removed_ and its
 * read of the count, in a producer's watermark look, in a stop and in the
 * loop's look. Its public functions are renamed race_queue_* so that
 * they do not meet the library's; events and sinks are the library's own.
 * A stopped thread stands for one the OS preempted there. */
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

static void race_look_hook(int where);
#define UVQ__TEST_HOOK(where) race_look_hook(where)

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

/* n events that release to nothing. */
static void noop_events(uvq_event_t* e, unsigned n) {
  unsigned i;
  for (i = 0; i < n; i++)
    ck_assert_int_eq(uvq_event_init(&e[i], noop_release), 0);
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
  noop_events(evs, queued + more);
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

/* -- watermarks: producers stopped inside their look ----------------------
 *
 * A producer thread follows a script: the hook places (1 top of a round, 2
 * before its store of look_at_, 3 after it, 4 after it disarmed high_at_,
 * 5 after its first read of removed_ for a depth) where it stops, in
 * order, until the test lets it go on. */

enum { SCRIPT_MAX = 4 };

typedef struct {
  uv_thread_t tid;
  uvq_queue_t* q;
  uvq_event_t* evs;
  unsigned n;
  int script[SCRIPT_MAX];
  unsigned nscript, pos;
  uv_sem_t arrived, go;
} sprod_t;

static _Thread_local sprod_t* me;

/* Run once by the loop thread at hook 7 (uvq__watch, between its loads of
 * the state word and of high_at_), when set. */
static void (*at_watch)(void);

static void race_look_hook(int where) {
  if (where == 8) {
    race_stats_between();
    return;
  }
  if (where == 7 && me == NULL && at_watch != NULL) {
    void (*f)(void) = at_watch;
    at_watch = NULL;
    f();
    return;
  }
  if (me == NULL || me->pos >= me->nscript || me->script[me->pos] != where)
    return;
  me->pos++;
  uv_sem_post(&me->arrived);
  uv_sem_wait(&me->go);
}

static void sprod_main(void* arg) {
  sprod_t* p = arg;
  unsigned i;
  me = p;
  for (i = 0; i < p->n; i++)
    ck_assert_int_eq(race_queue_enqueue(p->q, &p->evs[i]), 0);
}

/* Start a scripted thread running entry(p): sprod_main enqueues evs, a
 * stopper (below) stops q. */
static void sprod_run(sprod_t* p, void (*entry)(void*), uvq_queue_t* q,
                      uvq_event_t* evs, unsigned n, const int* script,
                      unsigned nscript) {
  unsigned i;
  memset(p, 0, sizeof(*p));
  p->q = q;
  p->evs = evs;
  p->n = n;
  for (i = 0; i < nscript; i++)
    p->script[i] = script[i];
  p->nscript = nscript;
  ck_assert_int_eq(uv_sem_init(&p->arrived, 0), 0);
  ck_assert_int_eq(uv_sem_init(&p->go, 0), 0);
  ck_assert_int_eq(uv_thread_create(&p->tid, entry, p), 0);
}

static void sprod_start(sprod_t* p, uvq_queue_t* q, uvq_event_t* evs,
                        unsigned n, const int* script, unsigned nscript) {
  sprod_run(p, sprod_main, q, evs, n, script, nscript);
}

static void sprod_wait(sprod_t* p) {
  uv_sem_wait(&p->arrived);
}

static void sprod_go(sprod_t* p) {
  uv_sem_post(&p->go);
}

static void sprod_join(sprod_t* p) {
  ck_assert_int_eq(uv_thread_join(&p->tid), 0);
  ck_assert_uint_eq(p->pos, p->nscript); /* it stopped where it should */
  uv_sem_destroy(&p->arrived);
  uv_sem_destroy(&p->go);
}

static char marks[16];
static uint64_t mark_depth[16];
static unsigned nmarks;

static void on_mark(uvq_queue_t* q, int above) {
  uvq_queue_stats_t st;
  ck_assert_int_eq(race_queue_stats(q, &st), 0);
  ck_assert_uint_lt(nmarks, sizeof(marks) - 1);
  marks[nmarks] = above ? '1' : '0';
  mark_depth[nmarks++] = st.depth;
}

static void turns(int n) {
  while (n-- > 0)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
}

static void marks_reset(void) {
  memset(marks, 0, sizeof(marks));
  nmarks = 0;
}

static uvq_queue_options_t* wm_opts(uvq_queue_options_t* o) {
  memset(o, 0, sizeof(*o));
  o->high_water = 4;
  o->low_water = 1;
  o->watermark = on_mark;
  return o;
}

/* A fresh loop, marks and count, and rq with wm_opts delivering to
 * process. */
static void wm_queue_start(void) {
  uvq_queue_options_t o;
  marks_reset();
  delivered = 0;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(race_queue_init(&loop, &rq, process, wm_opts(&o)), 0);
}

/* A producer that looked while the watermark was disarmed ("above" being
 * under way) and stopped before its store goes on after the loop said
 * "below" and armed it again: it must not disarm it on what it saw before,
 * so no second "above" at depth 1. */
START_TEST(watermark_stale_producer_does_not_disarm_a_fresh_arm) {
  static const int at_disarm[] = {4}, before_store[] = {2};
  uvq_event_t ea[4], eb[1];
  sprod_t a, b;

  noop_events(ea, 4);
  noop_events(eb, 1);
  wm_queue_start();
  /* a's 4th event disarms; a stops before it moves look_at_ on */
  sprod_start(&a, &rq, ea, 4, at_disarm, 1);
  sprod_wait(&a);
  /* b's ticket 4 still looks, finds it disarmed, stops before its store */
  sprod_start(&b, &rq, eb, 1, before_store, 1);
  sprod_wait(&b);
  sprod_go(&a);
  sprod_join(&a);
  while (delivered < 4)
    turns(1);
  turns(2);
  ck_assert_str_eq(marks, "10"); /* above at 5, below at 1 (b's, unlinked) */
  sprod_go(&b);
  sprod_join(&b);
  turns(5);
  ck_assert_str_eq(marks, "10");
  ck_assert_uint_eq(delivered, 5);
  ck_assert_int_eq(race_queue_stop(&rq, UVQ_STOP_DRAIN, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* A sink that takes `budget` events, then says "again" (-1: all). */
typedef struct {
  uvq_sink_t sink;
  int budget;
  unsigned taken;
} bsink_t;

static int bsink_write(uvq_sink_t* s, uvq_event_t* ev) {
  bsink_t* b = (bsink_t*) s;
  (void) ev;
  if (b->budget == 0)
    return UVQ_EAGAIN;
  if (b->budget > 0)
    b->budget--;
  b->taken++;
  return 0;
}

static const uvq_sink_vtable_t bsink_vt = {bsink_write, NULL};

/* A producer that looked while disarmed publishes its far look_at_ just
 * after the loop armed the watermark again, and stops there; meanwhile
 * another producer's tickets bring the depth to high_water without a look
 * (they compare with the far look_at_). The queue waits for its sink, so
 * no pass will notice: the stopped producer, going on, must. */
START_TEST(watermark_stale_look_at_does_not_hide_high_while_paused) {
  static const int at_disarm[] = {4}, around_store[] = {2, 3};
  static bsink_t bs;
  uvq_queue_options_t o;
  uvq_event_t ea[4], eb[1], ec[4];
  sprod_t a, b, c;
  unsigned i;

  noop_events(ea, 4);
  noop_events(ec, 4);
  noop_events(eb, 1);
  marks_reset();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&bs, 0, sizeof(bs));
  ck_assert_int_eq(uvq_sink_init(&bs.sink, &bsink_vt), 0);
  /* The library's sink_init noted its own (hidden) thread marker; this
   * copy of the queue compares with its own. Same thread, other marker. */
  bs.sink.thread_ = uvq__thread_id();
  bs.budget = 1;
  ck_assert_int_eq(race_queue_init_sink(&loop, &rq, &bs.sink, wm_opts(&o)),
                   0);
  sprod_start(&a, &rq, ea, 4, at_disarm, 1); /* ticket 3 disarms, stops */
  sprod_wait(&a);
  turns(3); /* above; the sink takes 1 and says "again" */
  ck_assert_str_eq(marks, "1");
  sprod_start(&b, &rq, eb, 1, around_store, 2); /* ticket 4: disarmed */
  sprod_wait(&b);
  sprod_go(&a);
  sprod_join(&a);
  bs.budget = 2;
  uvq_sink_ready(&bs.sink);
  turns(3); /* 2 more taken, "again" again: below at 1 (b's), armed */
  ck_assert_str_eq(marks, "10");
  sprod_go(&b);
  sprod_wait(&b); /* b stored its far look_at_, stopped after it */
  sprod_start(&c, &rq, ec, 4, NULL, 0); /* tickets 5 to 8: no look */
  sprod_join(&c);
  sprod_go(&b);
  sprod_join(&b);
  for (i = 0; i < 20 && nmarks < 3; i++) {
    turns(1);
    uv_sleep(1);
  }
  ck_assert_str_eq(marks, "101"); /* said while the sink still waits */
  ck_assert_uint_ge(mark_depth[2], 4);
  bs.budget = -1;
  uvq_sink_ready(&bs.sink);
  ck_assert_int_eq(race_queue_stop(&rq, UVQ_STOP_DRAIN, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(bs.taken, 9);
  uvq_test_loop_done(&loop);
}
END_TEST

/* The producer that disarms is stopped before its store of look_at_ while
 * the loop says "above", delivers, says "below" and arms again; then it
 * stores its far look_at_ over the fresh arm. The queue then waits for its
 * sink, and another producer fills it: the disarming producer, like every
 * other, must look again after its store, or no ticket of the filling
 * producer looks (bounded: ever; unbounded: until ticket 1,024). */
static void run_disarmer_stops_before_its_store(size_t capacity,
                                                unsigned more) {
  static const int at_disarm[] = {4};
  static bsink_t bs;
  static uvq_event_t ea[4], ec[600];
  uvq_queue_options_t o;
  sprod_t a, c;
  unsigned i;

  ck_assert_uint_le(more, 600);
  noop_events(ea, 4);
  noop_events(ec, more);
  marks_reset();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&bs, 0, sizeof(bs));
  ck_assert_int_eq(uvq_sink_init(&bs.sink, &bsink_vt), 0);
  bs.sink.thread_ = uvq__thread_id(); /* see above */
  bs.budget = -1;
  wm_opts(&o);
  o.capacity = capacity;
  o.overflow = UVQ_FAIL;
  ck_assert_int_eq(race_queue_init_sink(&loop, &rq, &bs.sink, &o), 0);
  sprod_start(&a, &rq, ea, 4, at_disarm, 1); /* ticket 3 disarms, stops */
  sprod_wait(&a);
  turns(3); /* above; the sink takes 3; below at 1 (a's, unlinked); armed */
  ck_assert_str_eq(marks, "10");
  bs.budget = 0; /* "again" from now on */
  sprod_go(&a);
  sprod_join(&a);
  turns(3); /* a's event held: the queue waits for the sink */
  ck_assert_ptr_nonnull(rq.held_);
  sprod_start(&c, &rq, ec, more, NULL, 0);
  sprod_join(&c);
  for (i = 0; i < 20 && nmarks < 3; i++) {
    turns(1);
    uv_sleep(1);
  }
  ck_assert_str_eq(marks, "101"); /* while the sink still waits */
  bs.budget = -1;
  uvq_sink_ready(&bs.sink);
  ck_assert_int_eq(race_queue_stop(&rq, UVQ_STOP_DRAIN, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(bs.taken, 4 + more);
  uvq_test_loop_done(&loop);
}

START_TEST(watermark_disarming_producer_looks_again_after_its_store) {
  run_disarmer_stops_before_its_store(64, 40);
  run_disarmer_stops_before_its_store(0, 500);
}
END_TEST

/* A producer reads removed_ for its depth and stops before it reads the
 * count; meanwhile the loop delivers each event as it comes, so the queue
 * never holds more than 2 (its own, unlinked, and one). Going on, a count
 * from now against removed_ from then would say 5: no "above" may come of
 * it. */
START_TEST(watermark_depth_is_read_at_one_moment) {
  static const int before_count[] = {5};
  uvq_event_t e0[3], ep[1], e1[3];
  sprod_t p;
  unsigned i;

  noop_events(e0, 3);
  noop_events(e1, 3);
  noop_events(ep, 1);
  wm_queue_start();
  for (i = 0; i < 2; i++)
    ck_assert_int_eq(race_queue_try_enqueue(&rq, &e0[i]), 0);
  while (delivered < 2)
    turns(1);
  /* The loop sleeps: ticket 2 wakes it (a ticket that saw it asleep does
   * not look), ticket 3, p's, looks. */
  ck_assert_int_eq(race_queue_try_enqueue(&rq, &e0[2]), 0);
  sprod_start(&p, &rq, ep, 1, before_count, 1);
  sprod_wait(&p);
  while (delivered < 3)
    turns(1);
  for (i = 0; i < 3; i++) { /* tickets 4 to 6, each delivered at once */
    ck_assert_int_eq(race_queue_try_enqueue(&rq, &e1[i]), 0);
    while (delivered < 4 + i)
      turns(1);
  }
  sprod_go(&p);
  sprod_join(&p);
  while (delivered < 7)
    turns(1);
  turns(3);
  ck_assert_str_eq(marks, ""); /* the depth was never above 2 */
  ck_assert_int_eq(race_queue_stop(&rq, UVQ_STOP_DRAIN, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* A producer sees high_water on a depth that counts what a pass has
 * delivered but not yet published, disarms high_at_, and stops there
 * (before its store of look_at_ and its wakeup). The pass ends with the
 * depth at 1: the loop says nothing and arms the watermark again. Going
 * on, the producer must not disarm it on what it saw, nor leave a far
 * look_at_ that hides the next crossing. */
static sprod_t sd_prod;
static uvq_event_t sd_ev[8];

static uint64_t rq_high_at(void) {
  return atomic_load(&rq.high_at_);
}

static void process_starting_a_disarmer(uvq_queue_t* q, uvq_event_t* ev) {
  static const int at_disarm[] = {4};
  process(q, ev);
  if (delivered != 1)
    return;
  /* tickets 1 to 3; ticket 3 counts 4 - 0: disarms, stops unlinked */
  sprod_start(&sd_prod, &rq, &sd_ev[1], 3, at_disarm, 1);
  sprod_wait(&sd_prod);
}

START_TEST(watermark_stale_disarm_is_undone_silently_by_the_loop) {
  uvq_queue_options_t o;
  unsigned i;

  noop_events(sd_ev, 8);
  marks_reset();
  delivered = 0;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(race_queue_init(&loop, &rq, process_starting_a_disarmer,
                                   wm_opts(&o)), 0);
  ck_assert_int_eq(race_queue_try_enqueue(&rq, &sd_ev[0]), 0);
  while (delivered < 3)
    turns(1);
  turns(2); /* the pass ended at 3 of 4 removed: depth 1 */
  ck_assert_str_eq(marks, "");
  ck_assert_uint_ne(rq_high_at(), UVQ__NEVER); /* armed */
  sprod_go(&sd_prod); /* it sees the fresh arm, reads depth 1: no disarm */
  sprod_join(&sd_prod);
  while (delivered < 4)
    turns(1);
  turns(2);
  ck_assert_str_eq(marks, "");
  ck_assert_uint_ne(rq_high_at(), UVQ__NEVER);
  /* A crossing outside a pass: tickets 4 to 7 with the loop idle, and
   * ticket 7's look (depth 8 - 4) disarms: nothing hid it. */
  for (i = 4; i < 8; i++)
    ck_assert_int_eq(race_queue_try_enqueue(&rq, &sd_ev[i]), 0);
  ck_assert_uint_eq(rq_high_at(), UVQ__NEVER);
  while (delivered < 8)
    turns(1);
  turns(2);
  ck_assert_str_eq(marks, "10");
  ck_assert_uint_eq(mark_depth[0], 4);
  ck_assert_int_eq(race_queue_stop(&rq, UVQ_STOP_DRAIN, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* A stop from another thread has set CLOSED but not yet published its
 * count, and refused enqueues (an unbounded queue's add is its test) push
 * the count to 8 with one event accepted: the loop's look at the depth in
 * that window must not say "above". */
static void stopper_main(void* arg) {
  sprod_t* p = arg;
  me = p;
  ck_assert_int_eq(race_queue_stop(p->q, UVQ_STOP_DRAIN, NULL), 0);
}

START_TEST(watermark_is_silent_while_a_stop_is_being_published) {
  static const int in_stop[] = {6};
  uvq_event_t e[8];
  sprod_t st;
  unsigned i;

  noop_events(e, 8);
  wm_queue_start();
  ck_assert_int_eq(race_queue_try_enqueue(&rq, &e[0]), 0);
  sprod_run(&st, stopper_main, &rq, NULL, 0, in_stop, 1);
  sprod_wait(&st); /* CLOSED set, the count not yet published */
  for (i = 1; i < 8; i++)
    ck_assert_int_eq(race_queue_try_enqueue(&rq, &e[i]), UVQ_ECLOSED);
  turns(3); /* a pass: delivers the one event */
  ck_assert_uint_eq(delivered, 1);
  sprod_go(&st);
  sprod_join(&st);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_str_eq(marks, "");
  uvq_test_loop_done(&loop);
}
END_TEST

/* A producer accepted before a stop from another thread looks after it,
 * on a count that refused enqueues inflated, and disarms high_at_; the
 * loop, stopped between its read of the state word (no CLOSED yet) and
 * its read of high_at_, must not say "above": 5 were accepted and 3
 * delivered, the depth was never above 2. */
static sprod_t cw_prod, cw_stop;
static uvq_event_t cw_ev[12];

static void closed_window_at_watch(void) {
  static const int in_stop[] = {6};
  unsigned i;
  sprod_run(&cw_stop, stopper_main, &rq, NULL, 0, in_stop, 1);
  sprod_wait(&cw_stop); /* CLOSED set, the count not yet published */
  for (i = 5; i < 12; i++)
    ck_assert_int_eq(race_queue_try_enqueue(&rq, &cw_ev[i]), UVQ_ECLOSED);
  sprod_go(&cw_prod); /* it reads 12 - 3 = 9 and disarms */
  sprod_join(&cw_prod);
}

START_TEST(watermark_is_silent_when_a_stop_crosses_the_loops_look) {
  static const int at_top[] = {1};
  unsigned i;

  noop_events(cw_ev, 12);
  wm_queue_start();
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(race_queue_try_enqueue(&rq, &cw_ev[i]), 0);
  while (delivered < 3)
    turns(1);
  turns(2); /* asleep at depth 0 */
  ck_assert_int_eq(race_queue_try_enqueue(&rq, &cw_ev[3]), 0); /* wakes */
  /* ticket 4 reaches look_at_ (ticket 3's word): stop it in its look */
  sprod_start(&cw_prod, &rq, &cw_ev[4], 1, at_top, 1);
  sprod_wait(&cw_prod);
  at_watch = closed_window_at_watch;
  turns(3);
  ck_assert_ptr_null(at_watch);
  sprod_go(&cw_stop);
  sprod_join(&cw_stop);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(delivered, 5);
  ck_assert_str_eq(marks, "");
  uvq_test_loop_done(&loop);
}
END_TEST

Suite* queue_race_suite(void) {
  Suite* s = suite_create("queue_race");
  TCase* tc = tcase_create("queue_race");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, queue_stats_reader_stopped_between_its_loads);
  tcase_add_test(tc, watermark_stale_producer_does_not_disarm_a_fresh_arm);
  tcase_add_test(tc, watermark_stale_look_at_does_not_hide_high_while_paused);
  tcase_add_test(tc, watermark_disarming_producer_looks_again_after_its_store);
  tcase_add_test(tc, watermark_depth_is_read_at_one_moment);
  tcase_add_test(tc, watermark_stale_disarm_is_undone_silently_by_the_loop);
  tcase_add_test(tc, watermark_is_silent_while_a_stop_is_being_published);
  tcase_add_test(tc, watermark_is_silent_when_a_stop_crosses_the_loops_look);
  suite_add_tcase(s, tc);
  return s;
}
