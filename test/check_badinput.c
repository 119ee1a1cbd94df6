/* Bad input for every public function, from one table.
 *
 * Each row names a function, the bad input it gets, and the result the
 * header documents for it; its case function makes the call in a fresh
 * fixture and returns what the call returned. The table is also the source
 * of docs/errors.md: a test regenerates the page's text from the table and
 * requires the committed file to be identical, so the page cannot drift
 * from what the library does. After changing the table, rewrite the page
 * from a build directory with
 *
 *   UVQ_WRITE_ERRORS_MD=1 CK_RUN_SUITE=badinput ./test/check_uvq
 *
 * A second test reads include/uvq.h and fails when a public function has no
 * row, so a new function cannot land without its bad-input cases.
 *
 * Fixture: a loop; q, an open unbounded queue; qb, a bounded UVQ_BLOCK queue
 * of capacity 1 that is full; ps, an open sink with no upstream; ev, an
 * event with one reference that no bad call may take, keep or release
 * (checked after every row). Other objects are made on demand and closed in
 * the teardown. Rows that need another thread run their call there.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "fault.h"
#include "helpers.h"

#ifndef UVQ_SRCDIR
# define UVQ_SRCDIR "."
#endif

/* -- fixture --------------------------------------------------------------- */

static uv_loop_t loop;
static uvq_queue_t q, qb, qx, qc;
static uvq_event_t ev, fill, scratch;
static unsigned ev_released;

typedef struct {
  uvq_sink_t sink;
  unsigned taken;
} psink_t;

static psink_t ps, ps2;

static uvq_broadcast_t bc;
static uvq_filter_t flt;
static uvq_retry_t rty;
static uvq_channel_t ch, chz;
static uvq_channel_sink_t chs, chs2;
static int have_bc, have_flt, have_rty, have_ch, have_chs, have_chs2;
static uvq_event_t* got;

static void ev_release(uvq_event_t* e) {
  if (e == &ev)
    ev_released++;
}

static void process_nop(uvq_queue_t* qq, uvq_event_t* e) {
  (void) qq;
  (void) e;
}

static void release_nop(uvq_queue_t* qq, uvq_event_t* e) {
  (void) qq;
  (void) e;
}

static int psink_write(uvq_sink_t* s, uvq_event_t* e) {
  (void) e;
  ((psink_t*) s)->taken++;
  return 0;
}

static const uvq_sink_vtable_t psink_vt = {psink_write, NULL};
static const uvq_sink_vtable_t no_write_vt = {NULL, NULL};

static void setup(void) {
  uvq_queue_options_t o;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&o, 0, sizeof(o));
  o.release = release_nop;
  ck_assert_int_eq(uvq_queue_init(&loop, &q, process_nop, &o), 0);
  o.capacity = 1;
  o.overflow = UVQ_BLOCK;
  ck_assert_int_eq(uvq_queue_init(&loop, &qb, process_nop, &o), 0);
  ck_assert_int_eq(uvq_event_init(&fill, NULL), 0);
  ck_assert_int_eq(uvq_queue_try_enqueue(&qb, &fill), 0);
  ck_assert_int_eq(uvq_sink_init(&ps.sink, &psink_vt), 0);
  ck_assert_int_eq(uvq_event_init(&ev, ev_release), 0);
  ck_assert_int_eq(uvq_event_init(&scratch, NULL), 0);
  ev_released = 0;
  have_bc = have_flt = have_rty = have_ch = have_chs = have_chs2 = 0;
  memset(&chz, 0, sizeof(chz));
  got = NULL;
}

static void teardown(void) {
  /* Close everything the row made, then check nothing took ev. */
  if (have_chs)
    uvq_sink_close(&chs.sink, NULL);
  if (have_chs2)
    uvq_sink_close(&chs2.sink, NULL);
  if (have_rty)
    uvq_sink_close(&rty.sink, NULL);
  if (have_flt)
    uvq_sink_close(&flt.sink, NULL);
  if (have_bc)
    uvq_sink_close(&bc.sink, NULL);
  uvq_sink_close(&ps.sink, NULL);
  uvq_queue_stop(&q, UVQ_STOP_DISCARD, NULL);
  uvq_queue_stop(&qb, UVQ_STOP_DISCARD, NULL);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  if (have_ch) {
    uvq_event_t* e;
    uvq_channel_close(&ch);
    while (uvq_channel_try_recv(&ch, &e) == 0)
      ck_assert_msg(e != &ev, "the channel kept the event of a bad call");
    ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  }
  ck_assert_msg(uvq_event_refs(&ev) == 1 && ev_released == 0,
                "a bad call took or released the event (refs %u)",
                uvq_event_refs(&ev));
  uvq_test_loop_done(&loop);
}

/* Objects made on demand. */
static uvq_broadcast_t* get_bc(void) {
  if (!have_bc) {
    ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
    have_bc = 1;
  }
  return &bc;
}

static uvq_channel_t* get_ch(void) {
  if (!have_ch) {
    ck_assert_int_eq(uvq_channel_init(&ch, 1), 0);
    have_ch = 1;
  }
  return &ch;
}

static uvq_channel_t* full_ch(void) {
  get_ch();
  ck_assert_int_eq(uvq_channel_try_send(&ch, &scratch), 0);
  return &ch;
}

static uvq_channel_sink_t* get_chs(void) {
  if (!have_chs) {
    ck_assert_int_eq(uvq_channel_sink_init(&loop, &chs, get_ch(), 0), 0);
    have_chs = 1;
  }
  return &chs;
}

/* ps after its close completed (its memory stays valid). */
static uvq_sink_t* closed_sink(void) {
  ck_assert_int_eq(uvq_sink_init(&ps2.sink, &psink_vt), 0);
  ck_assert_int_eq(uvq_sink_close(&ps2.sink, NULL), 0);
  return &ps2.sink;
}

/* ps, now with an upstream (a filter that is not closed afterwards except by
 * the teardown). */
static int match_all(const uvq_event_t* e, void* arg) {
  (void) e;
  (void) arg;
  return 1;
}

static uvq_sink_t* owned_sink(void) {
  ck_assert_int_eq(uvq_filter_init(&flt, &ps.sink, match_all, NULL), 0);
  have_flt = 1;
  return &ps.sink;
}

static unsigned qc_closed;
static void qc_on_close(uvq_queue_t* qq) {
  (void) qq;
  qc_closed++;
}

/* A queue whose close callback has run (memory still valid). */
static uvq_queue_t* closed_queue(void) {
  qc_closed = 0;
  ck_assert_int_eq(uvq_queue_init(&loop, &qc, process_nop, NULL), 0);
  ck_assert_int_eq(uvq_queue_stop(&qc, UVQ_STOP_DRAIN, qc_on_close), 0);
  while (qc_closed == 0)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  return &qc;
}

static uvq_queue_t* stopped_queue(void) {
  ck_assert_int_eq(uvq_queue_stop(&q, UVQ_STOP_DRAIN, NULL), 0);
  return &q;
}

static uvq_broadcast_t* closed_bc(void) {
  get_bc();
  ck_assert_int_eq(uvq_sink_close(&bc.sink, NULL), 0);
  ck_assert_int_ge(uv_run(&loop, UV_RUN_NOWAIT), 0);
  return &bc;
}

/* Run fn on a thread of its own; returns what it returned. */
typedef struct {
  int (*fn)(void);
  int rc;
} other_t;

static void other_main(void* arg) {
  other_t* o = arg;
  o->rc = o->fn();
}

static int other(int (*fn)(void)) {
  other_t o = {fn, 0};
  uv_thread_t tid;
  ck_assert_int_eq(uv_thread_create(&tid, other_main, &o), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  return o.rc;
}

static uvq_queue_options_t opts_of(size_t cap, int overflow, unsigned batch) {
  uvq_queue_options_t o;
  memset(&o, 0, sizeof(o));
  o.capacity = cap;
  o.overflow = (uvq_overflow_t) overflow;
  o.batch = batch;
  return o;
}

/* A sink whose write writes into the broadcaster that feeds it. */
static int loop_back_rc;
static int loop_back_write(uvq_sink_t* s, uvq_event_t* e) {
  (void) s;
  loop_back_rc = uvq_sink_write(&bc.sink, e);
  return 0;
}

static const uvq_sink_vtable_t loop_back_vt = {loop_back_write, NULL};

/* -- the cases ------------------------------------------------------------- */

#define CASE(name, expr)                                                     \
  static int name(void) {                                                    \
    return (expr);                                                           \
  }

/* errors */
CASE(c_strerror_unknown,
     strcmp(uvq_strerror(12345), "unknown error") == 0 ? 0 : -1)
CASE(c_strerror_min,
     strcmp(uvq_strerror(INT_MIN), "unknown error") == 0 ? 0 : -1)
CASE(c_err_name_unknown, strcmp(uvq_err_name(12345), "UNKNOWN") == 0 ? 0 : -1)
CASE(c_err_name_min, strcmp(uvq_err_name(INT_MIN), "UNKNOWN") == 0 ? 0 : -1)

/* events */
CASE(c_event_init_null, uvq_event_init(NULL, NULL))
CASE(c_event_ref_null, uvq_event_ref(NULL) == NULL ? 0 : -1)
static int c_event_unref_null(void) {
  uvq_event_unref(NULL);
  return 0;
}
CASE(c_event_refs_null, (int) uvq_event_refs(NULL))

/* sink base */
CASE(c_sink_init_null_sink, uvq_sink_init(NULL, &psink_vt))
CASE(c_sink_init_null_vt, uvq_sink_init(&ps2.sink, NULL))
CASE(c_sink_init_null_write, uvq_sink_init(&ps2.sink, &no_write_vt))
CASE(c_sink_write_null_sink, uvq_sink_write(NULL, &ev))
CASE(c_sink_write_null_ev, uvq_sink_write(&ps.sink, NULL))
CASE(c_sink_write_thread_body, uvq_sink_write(&ps.sink, &ev))
CASE(c_sink_write_thread, other(c_sink_write_thread_body))
CASE(c_sink_write_closed, uvq_sink_write(closed_sink(), &ev))
CASE(c_sink_close_null, uvq_sink_close(NULL, NULL))
CASE(c_sink_close_thread_body, uvq_sink_close(&ps.sink, NULL))
CASE(c_sink_close_thread, other(c_sink_close_thread_body))
CASE(c_sink_close_twice, uvq_sink_close(closed_sink(), NULL))
CASE(c_sink_is_closed_null, uvq_sink_is_closed(NULL))
CASE(c_sink_set_ready_null, uvq_sink_set_ready_cb(NULL, NULL, NULL))
static void other_ready(uvq_sink_t* s, void* a) {
  (void) s;
  (void) a;
}
CASE(c_sink_set_ready_busy,
     uvq_sink_set_ready_cb(owned_sink(), other_ready, NULL))
static int c_sink_ready_null(void) {
  uvq_sink_ready(NULL);
  return 0;
}
static int c_sink_closed_null(void) {
  uvq_sink_closed(NULL);
  return 0;
}
static unsigned closed_cb_calls;
static void count_closed(uvq_sink_t* s) {
  (void) s;
  closed_cb_calls++;
}
static int c_sink_closed_twice(void) {
  closed_cb_calls = 0;
  ck_assert_int_eq(uvq_sink_init(&ps2.sink, &psink_vt), 0);
  ck_assert_int_eq(uvq_sink_close(&ps2.sink, count_closed), 0);
  uvq_sink_closed(&ps2.sink);
  return closed_cb_calls == 1 ? 0 : -1;
}

/* queue: init */
static uvq_queue_options_t o_tmp;
CASE(c_qinit_null_loop, uvq_queue_init(NULL, &qx, process_nop, NULL))
CASE(c_qinit_null_q, uvq_queue_init(&loop, NULL, process_nop, NULL))
CASE(c_qinit_null_process, uvq_queue_init(&loop, &qx, NULL, NULL))
CASE(c_qinit_capacity, (o_tmp = opts_of(SIZE_MAX / 4 + 1, UVQ_BLOCK, 0),
                        uvq_queue_init(&loop, &qx, process_nop, &o_tmp)))
CASE(c_qinit_capacity_max, (o_tmp = opts_of(SIZE_MAX, UVQ_FAIL, 0),
                            uvq_queue_init(&loop, &qx, process_nop, &o_tmp)))
CASE(c_qinit_batch, (o_tmp = opts_of(0, UVQ_BLOCK, UVQ_MAX_BATCH + 1),
                     uvq_queue_init(&loop, &qx, process_nop, &o_tmp)))
CASE(c_qinit_batch_max, (o_tmp = opts_of(0, UVQ_BLOCK, UINT_MAX),
                         uvq_queue_init(&loop, &qx, process_nop, &o_tmp)))
CASE(c_qinit_overflow, (o_tmp = opts_of(4, UVQ_DROP_OLDEST + 1, 0),
                        uvq_queue_init(&loop, &qx, process_nop, &o_tmp)))
CASE(c_qinit_overflow_neg, (o_tmp = opts_of(4, -1, 0),
                            uvq_queue_init(&loop, &qx, process_nop, &o_tmp)))
CASE(c_qinit_poll, (o_tmp = opts_of(0, UVQ_BLOCK, 0),
                    o_tmp.poll_us = UVQ_MAX_POLL_US + 1,
                    uvq_queue_init(&loop, &qx, process_nop, &o_tmp)))
CASE(c_qinit_poll_max, (o_tmp = opts_of(0, UVQ_BLOCK, 0),
                        o_tmp.poll_us = UINT_MAX,
                        uvq_queue_init(&loop, &qx, process_nop, &o_tmp)))

/* queue: init_sink */
CASE(c_qsink_null_loop, uvq_queue_init_sink(NULL, &qx, &ps.sink, NULL))
CASE(c_qsink_null_q, uvq_queue_init_sink(&loop, NULL, &ps.sink, NULL))
CASE(c_qsink_null_dst, uvq_queue_init_sink(&loop, &qx, NULL, NULL))
CASE(c_qsink_bad_opts, (o_tmp = opts_of(SIZE_MAX, UVQ_BLOCK, 0),
                        uvq_queue_init_sink(&loop, &qx, &ps.sink, &o_tmp)))
CASE(c_qsink_bad_poll, (o_tmp = opts_of(0, UVQ_BLOCK, 0),
                        o_tmp.poll_us = UVQ_MAX_POLL_US + 1,
                        uvq_queue_init_sink(&loop, &qx, &ps.sink, &o_tmp)))
CASE(c_qsink_thread_body, uvq_queue_init_sink(&loop, &qx, &ps.sink, NULL))
CASE(c_qsink_thread, other(c_qsink_thread_body))
CASE(c_qsink_closed, uvq_queue_init_sink(&loop, &qx, closed_sink(), NULL))
CASE(c_qsink_busy, uvq_queue_init_sink(&loop, &qx, owned_sink(), NULL))

/* queue: enqueue */
CASE(c_enq_null_q, uvq_queue_enqueue(NULL, &ev))
CASE(c_enq_null_ev, uvq_queue_enqueue(&q, NULL))
CASE(c_enq_stopped, uvq_queue_enqueue(stopped_queue(), &ev))
CASE(c_enq_closed, uvq_queue_enqueue(closed_queue(), &ev))
CASE(c_enq_deadlk, uvq_queue_enqueue(&qb, &ev))
static int c_enq_deadlk_stopped(void) {
  ck_assert_int_eq(uvq_queue_stop(&qb, UVQ_STOP_DISCARD, NULL), 0);
  return uvq_queue_enqueue(&qb, &ev);
}
static int c_enq_fail_full(void) {
  uvq_queue_options_t o = opts_of(1, UVQ_FAIL, 0);
  int r;
  ck_assert_int_eq(uvq_queue_init(&loop, &qx, process_nop, &o), 0);
  ck_assert_int_eq(uvq_queue_enqueue(&qx, &scratch), 0);
  r = uvq_queue_enqueue(&qx, &ev);
  ck_assert_int_eq(uvq_queue_stop(&qx, UVQ_STOP_DISCARD, NULL), 0);
  return r;
}
CASE(c_try_null_q, uvq_queue_try_enqueue(NULL, &ev))
CASE(c_try_null_ev, uvq_queue_try_enqueue(&q, NULL))
CASE(c_try_full, uvq_queue_try_enqueue(&qb, &ev))
CASE(c_try_stopped, uvq_queue_try_enqueue(stopped_queue(), &ev))
CASE(c_try_closed, uvq_queue_try_enqueue(closed_queue(), &ev))
CASE(c_tmo_null_q, uvq_queue_enqueue_timeout(NULL, &ev, 1))
CASE(c_tmo_null_ev, uvq_queue_enqueue_timeout(&q, NULL, 1))
CASE(c_tmo_negative, uvq_queue_enqueue_timeout(&q, &ev, -1))
CASE(c_tmo_min, uvq_queue_enqueue_timeout(&q, &ev, INT64_MIN))
CASE(c_tmo_deadlk, uvq_queue_enqueue_timeout(&qb, &ev, 5))
CASE(c_tmo_zero_full, uvq_queue_enqueue_timeout(&qb, &ev, 0))
CASE(c_tmo_thread_body, uvq_queue_enqueue_timeout(&qb, &ev, 1))
CASE(c_tmo_thread, other(c_tmo_thread_body))
CASE(c_tmo_stopped, uvq_queue_enqueue_timeout(stopped_queue(), &ev, 1))
static int c_tmo_absurd(void) {
  /* INT64_MAX ms on a queue with room: taken at once, no overflow. */
  int r = uvq_queue_enqueue_timeout(&q, &scratch, INT64_MAX);
  return r;
}

/* queue: stop, ref, stats, sink face */
CASE(c_stop_null, uvq_queue_stop(NULL, UVQ_STOP_DRAIN, NULL))
CASE(c_stop_mode, uvq_queue_stop(&q, (uvq_stop_mode_t) 2, NULL))
CASE(c_stop_mode_neg, uvq_queue_stop(&q, (uvq_stop_mode_t) -1, NULL))
CASE(c_stop_twice, uvq_queue_stop(stopped_queue(), UVQ_STOP_DRAIN, NULL))
CASE(c_stop_closed, uvq_queue_stop(closed_queue(), UVQ_STOP_DISCARD, NULL))
CASE(c_ref_null, uvq_queue_ref(NULL))
CASE(c_unref_null, uvq_queue_unref(NULL))
CASE(c_ref_thread_body, uvq_queue_ref(&q))
CASE(c_ref_thread, other(c_ref_thread_body))
CASE(c_unref_thread_body, uvq_queue_unref(&q))
CASE(c_unref_thread, other(c_unref_thread_body))
CASE(c_ref_stopped, uvq_queue_ref(stopped_queue()))
CASE(c_unref_stopped, uvq_queue_unref(stopped_queue()))
CASE(c_ref_closed, uvq_queue_ref(closed_queue()))
CASE(c_unref_closed, uvq_queue_unref(closed_queue()))
static uvq_queue_stats_t st_tmp;
CASE(c_stats_null_q, uvq_queue_stats(NULL, &st_tmp))
CASE(c_stats_null_out, uvq_queue_stats(&q, NULL))
CASE(c_qsinkface_null, uvq_queue_sink(NULL) == NULL ? 0 : -1)
CASE(c_face_write_stopped, uvq_sink_write(uvq_queue_sink(stopped_queue()),
                                          &ev))
CASE(c_face_write_thread_body, uvq_sink_write(uvq_queue_sink(&q), &ev))
CASE(c_face_write_thread, other(c_face_write_thread_body))

/* broadcaster */
static uvq_broadcast_stats_t bst_tmp;
CASE(c_bc_init_null, uvq_broadcast_init(NULL))
CASE(c_bc_add_null_b, uvq_broadcast_add(NULL, &ps.sink))
CASE(c_bc_add_null_sink, uvq_broadcast_add(get_bc(), NULL))
CASE(c_bc_add_self, uvq_broadcast_add(get_bc(), &get_bc()->sink))
CASE(c_bc_add_thread_body, uvq_broadcast_add(&bc, &ps.sink))
CASE(c_bc_add_thread, (get_bc(), other(c_bc_add_thread_body)))
CASE(c_bc_add_closed_sink, uvq_broadcast_add(get_bc(), closed_sink()))
CASE(c_bc_add_closed_bc, uvq_broadcast_add(closed_bc(), &ps.sink))
CASE(c_bc_add_busy, uvq_broadcast_add(get_bc(), owned_sink()))
CASE(c_bc_add_twice, (uvq_broadcast_add(get_bc(), &ps.sink) != 0
                          ? -1
                          : uvq_broadcast_add(&bc, &ps.sink)))
CASE(c_bc_remove_null_b, uvq_broadcast_remove(NULL, &ps.sink))
CASE(c_bc_remove_null_sink, uvq_broadcast_remove(get_bc(), NULL))
CASE(c_bc_remove_absent, uvq_broadcast_remove(get_bc(), &ps.sink))
CASE(c_bc_remove_closed, uvq_broadcast_remove(closed_bc(), &ps.sink))
CASE(c_bc_remove_thread_body, uvq_broadcast_remove(&bc, &ps.sink))
CASE(c_bc_remove_thread, (get_bc(), other(c_bc_remove_thread_body)))
CASE(c_bc_stats_null_b, uvq_broadcast_stats(NULL, &bst_tmp))
CASE(c_bc_stats_null_out, uvq_broadcast_stats(get_bc(), NULL))
CASE(c_bc_stats_thread_body, uvq_broadcast_stats(&bc, &bst_tmp))
CASE(c_bc_stats_thread, (get_bc(), other(c_bc_stats_thread_body)))
static int c_bc_write_loop_back(void) {
  static psink_t lb;
  ck_assert_int_eq(uvq_sink_init(&lb.sink, &loop_back_vt), 0);
  ck_assert_int_eq(uvq_broadcast_add(get_bc(), &lb.sink), 0);
  loop_back_rc = 1;
  ck_assert_int_eq(uvq_sink_write(&bc.sink, &scratch), 0);
  ck_assert_int_eq(uvq_broadcast_remove(&bc, &lb.sink), 0);
  return loop_back_rc;
}

/* filter */
static uvq_filter_stats_t fst_tmp;
CASE(c_flt_null_f, uvq_filter_init(NULL, &ps.sink, match_all, NULL))
CASE(c_flt_null_dst, uvq_filter_init(&flt, NULL, match_all, NULL))
CASE(c_flt_null_match, uvq_filter_init(&flt, &ps.sink, NULL, NULL))
CASE(c_flt_self, uvq_filter_init(&flt, &flt.sink, match_all, NULL))
CASE(c_flt_thread_body, uvq_filter_init(&flt, &ps.sink, match_all, NULL))
CASE(c_flt_thread, other(c_flt_thread_body))
CASE(c_flt_closed, uvq_filter_init(&flt, closed_sink(), match_all, NULL))
static uvq_filter_t flt2;
CASE(c_flt_busy, uvq_filter_init(&flt2, owned_sink(), match_all, NULL))
CASE(c_flt_stats_null_f, uvq_filter_stats(NULL, &fst_tmp))
CASE(c_flt_stats_null_out, (owned_sink(), uvq_filter_stats(&flt, NULL)))
CASE(c_flt_stats_thread_body, uvq_filter_stats(&flt, &fst_tmp))
CASE(c_flt_stats_thread, (owned_sink(), other(c_flt_stats_thread_body)))

/* retrying sink and strategies */
static uvq_retry_stats_t rst_tmp;
static uvq_retry_strategy_t no_strategy;
CASE(c_rty_null_loop, uvq_retry_init(NULL, &rty, &ps.sink, &no_strategy))
CASE(c_rty_null_r, uvq_retry_init(&loop, NULL, &ps.sink, &no_strategy))
CASE(c_rty_null_dst, uvq_retry_init(&loop, &rty, NULL, &no_strategy))
CASE(c_rty_null_strategy, uvq_retry_init(&loop, &rty, &ps.sink, NULL))
CASE(c_rty_self, uvq_retry_init(&loop, &rty, &rty.sink, &no_strategy))
CASE(c_rty_thread_body, uvq_retry_init(&loop, &rty, &ps.sink, &no_strategy))
CASE(c_rty_thread, other(c_rty_thread_body))
CASE(c_rty_closed, uvq_retry_init(&loop, &rty, closed_sink(), &no_strategy))
CASE(c_rty_busy, uvq_retry_init(&loop, &rty, owned_sink(), &no_strategy))
CASE(c_rty_stats_null_r, uvq_retry_stats(NULL, &rst_tmp))
static int c_rty_stats_null_out(void) {
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &ps.sink, &no_strategy), 0);
  have_rty = 1;
  return uvq_retry_stats(&rty, NULL);
}
CASE(c_rty_stats_thread_body, uvq_retry_stats(&rty, &rst_tmp))
static int c_rty_stats_thread(void) {
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &ps.sink, &no_strategy), 0);
  have_rty = 1;
  return other(c_rty_stats_thread_body);
}
CASE(c_breaker_null, uvq_breaker_init(NULL, 3, 10))
static uvq_backoff_t bo_tmp;
CASE(c_backoff_null, uvq_backoff_init(NULL, 1, 2, 3, 4))
CASE(c_backoff_absurd, uvq_backoff_init(&bo_tmp, UINT64_MAX, UINT64_MAX,
                                        UINT64_MAX, 1))

/* channel */
CASE(c_ch_init_null, uvq_channel_init(NULL, 4))
CASE(c_ch_init_zero, uvq_channel_init(&chz, 0))
CASE(c_ch_init_too_big, uvq_channel_init(&chz, UVQ_CHANNEL_MAX_CAPACITY + 1))
CASE(c_ch_init_size_max, uvq_channel_init(&chz, SIZE_MAX))
CASE(c_ch_init_no_memory, uvq_channel_init(&chz, UVQ_CHANNEL_MAX_CAPACITY))
CASE(c_ch_close_null, uvq_channel_close(NULL))
CASE(c_ch_close_uninit, uvq_channel_close(&chz))
CASE(c_ch_close_twice, (uvq_channel_close(get_ch()), uvq_channel_close(&ch)))
CASE(c_ch_destroy_null, uvq_channel_destroy(NULL))
CASE(c_ch_destroy_uninit, uvq_channel_destroy(&chz))
CASE(c_ch_destroy_full, uvq_channel_destroy(full_ch()))
CASE(c_ch_destroy_sink, (get_chs(), uvq_channel_destroy(&ch)))
static int c_ch_destroyed(int which) {
  uvq_channel_t d;
  int r;
  ck_assert_int_eq(uvq_channel_init(&d, 2), 0);
  ck_assert_int_eq(uvq_channel_destroy(&d), 0);
  switch (which) {
  case 0: r = uvq_channel_try_send(&d, &ev); break;
  case 1: r = uvq_channel_try_recv(&d, &got); break;
  case 2: r = uvq_channel_close(&d); break;
  default: r = uvq_channel_destroy(&d); break;
  }
  return r;
}
CASE(c_ch_destroyed_send, c_ch_destroyed(0))
CASE(c_ch_destroyed_recv, c_ch_destroyed(1))
CASE(c_ch_destroyed_close, c_ch_destroyed(2))
CASE(c_ch_destroyed_destroy, c_ch_destroyed(3))
CASE(c_ch_send_null_ch, uvq_channel_send(NULL, &ev))
CASE(c_ch_send_null_ev, uvq_channel_send(get_ch(), NULL))
CASE(c_ch_send_uninit, uvq_channel_send(&chz, &ev))
CASE(c_ch_send_closed, (uvq_channel_close(get_ch()),
                        uvq_channel_send(&ch, &ev)))
CASE(c_ch_send_deadlk, (get_chs(), uvq_channel_send(&ch, &ev)))
CASE(c_ch_try_send_null, uvq_channel_try_send(NULL, &ev))
CASE(c_ch_try_send_full, uvq_channel_try_send(full_ch(), &ev))
CASE(c_ch_try_send_closed, (uvq_channel_close(get_ch()),
                            uvq_channel_try_send(&ch, &ev)))
CASE(c_ch_stmo_null, uvq_channel_send_timeout(NULL, &ev, 1))
CASE(c_ch_stmo_negative, uvq_channel_send_timeout(get_ch(), &ev, -1))
CASE(c_ch_stmo_zero_full, uvq_channel_send_timeout(full_ch(), &ev, 0))
CASE(c_ch_stmo_thread_body, uvq_channel_send_timeout(&ch, &ev, 1))
CASE(c_ch_stmo_thread, (full_ch(), other(c_ch_stmo_thread_body)))
CASE(c_ch_stmo_deadlk, (get_chs(), uvq_channel_send_timeout(&ch, &ev, 5)))
CASE(c_ch_recv_null_ch, uvq_channel_recv(NULL, &got))
CASE(c_ch_recv_null_out, uvq_channel_recv(get_ch(), NULL))
CASE(c_ch_recv_uninit, uvq_channel_recv(&chz, &got))
CASE(c_ch_recv_closed, (uvq_channel_close(get_ch()),
                        uvq_channel_recv(&ch, &got)))
CASE(c_ch_recv_deadlk, (get_chs(), uvq_channel_recv(&ch, &got)))
CASE(c_ch_try_recv_null, uvq_channel_try_recv(NULL, &got))
CASE(c_ch_try_recv_empty, uvq_channel_try_recv(get_ch(), &got))
CASE(c_ch_rtmo_null, uvq_channel_recv_timeout(NULL, &got, 1))
CASE(c_ch_rtmo_negative, uvq_channel_recv_timeout(get_ch(), &got, -1))
CASE(c_ch_rtmo_zero_empty, uvq_channel_recv_timeout(get_ch(), &got, 0))
CASE(c_ch_rtmo_thread_body, uvq_channel_recv_timeout(&ch, &got, 1))
CASE(c_ch_rtmo_thread, (get_ch(), other(c_ch_rtmo_thread_body)))
CASE(c_ch_rtmo_deadlk, (get_chs(), uvq_channel_recv_timeout(&ch, &got, 5)))
CASE(c_chs_null_loop, uvq_channel_sink_init(NULL, &chs2, get_ch(), 0))
CASE(c_chs_null_cs, uvq_channel_sink_init(&loop, NULL, get_ch(), 0))
CASE(c_chs_null_ch, uvq_channel_sink_init(&loop, &chs2, NULL, 0))
CASE(c_chs_uninit, uvq_channel_sink_init(&loop, &chs2, &chz, 0))
CASE(c_chs_flags, uvq_channel_sink_init(&loop, &chs2, get_ch(), 0x80))
CASE(c_chs_second, (get_chs(), uvq_channel_sink_init(&loop, &chs2, &ch, 0)))

/* Use before init: a zero-filled queue (its state word lacks the INITED
 * bit that init sets). Other garbage cannot be told from a queue. */
static uvq_queue_t qz;
CASE(c_qz_enqueue, uvq_queue_enqueue(&qz, &ev))
CASE(c_qz_try, uvq_queue_try_enqueue(&qz, &ev))
CASE(c_qz_timeout, uvq_queue_enqueue_timeout(&qz, &ev, 1))
CASE(c_qz_stop, uvq_queue_stop(&qz, UVQ_STOP_DRAIN, NULL))
CASE(c_qz_ref, uvq_queue_ref(&qz))
CASE(c_qz_stats, uvq_queue_stats(&qz, &st_tmp))

/* -- the table ------------------------------------------------------------- */

enum {
  F_NONE = 0,
  F_UNSANITIZED = 1 /* an absurd allocation: sanitizers abort on it */
};

typedef struct {
  const char* fn;
  const char* input;
  int expect;
  const char* result; /* shown instead of the code's name when set */
  int (*run)(void);
  int flags;
} bad_case_t;

#define ERR(fn, input, code, run) {fn, input, code, NULL, run, F_NONE}
#define RES(fn, input, text, run) {fn, input, 0, text, run, F_NONE}

static const bad_case_t cases[] = {
  RES("uvq_strerror", "unknown code 12345", "\"unknown error\"",
      c_strerror_unknown),
  RES("uvq_strerror", "INT_MIN", "\"unknown error\"", c_strerror_min),
  RES("uvq_err_name", "unknown code 12345", "\"UNKNOWN\"",
      c_err_name_unknown),
  RES("uvq_err_name", "INT_MIN", "\"UNKNOWN\"", c_err_name_min),

  ERR("uvq_event_init", "NULL ev", UVQ_EINVAL, c_event_init_null),
  RES("uvq_event_ref", "NULL ev", "NULL", c_event_ref_null),
  RES("uvq_event_unref", "NULL ev", "ignored", c_event_unref_null),
  RES("uvq_event_refs", "NULL ev", "0", c_event_refs_null),

  ERR("uvq_sink_init", "NULL sink", UVQ_EINVAL, c_sink_init_null_sink),
  ERR("uvq_sink_init", "NULL vtable", UVQ_EINVAL, c_sink_init_null_vt),
  ERR("uvq_sink_init", "vtable without write", UVQ_EINVAL,
      c_sink_init_null_write),
  ERR("uvq_sink_write", "NULL sink", UVQ_EINVAL, c_sink_write_null_sink),
  ERR("uvq_sink_write", "NULL ev", UVQ_EINVAL, c_sink_write_null_ev),
  ERR("uvq_sink_write", "from another thread", UVQ_ETHREAD,
      c_sink_write_thread),
  ERR("uvq_sink_write", "after close", UVQ_ECLOSED, c_sink_write_closed),
  ERR("uvq_sink_close", "NULL sink", UVQ_EINVAL, c_sink_close_null),
  ERR("uvq_sink_close", "from another thread", UVQ_ETHREAD,
      c_sink_close_thread),
  RES("uvq_sink_close", "twice", "0 (nothing happens, cb not called)",
      c_sink_close_twice),
  ERR("uvq_sink_is_closed", "NULL sink", UVQ_EINVAL, c_sink_is_closed_null),
  ERR("uvq_sink_set_ready_cb", "NULL sink", UVQ_EINVAL,
      c_sink_set_ready_null),
  ERR("uvq_sink_set_ready_cb", "a second upstream", UVQ_EBUSY,
      c_sink_set_ready_busy),
  RES("uvq_sink_ready", "NULL sink", "ignored", c_sink_ready_null),
  RES("uvq_sink_closed", "NULL sink", "ignored", c_sink_closed_null),
  RES("uvq_sink_closed", "twice", "ignored (close cb runs once)",
      c_sink_closed_twice),

  ERR("uvq_queue_init", "NULL loop", UVQ_EINVAL, c_qinit_null_loop),
  ERR("uvq_queue_init", "NULL q", UVQ_EINVAL, c_qinit_null_q),
  ERR("uvq_queue_init", "NULL process", UVQ_EINVAL, c_qinit_null_process),
  ERR("uvq_queue_init", "capacity SIZE_MAX / 4 + 1", UVQ_EINVAL,
      c_qinit_capacity),
  ERR("uvq_queue_init", "capacity SIZE_MAX", UVQ_EINVAL, c_qinit_capacity_max),
  ERR("uvq_queue_init", "batch UVQ_MAX_BATCH + 1", UVQ_EINVAL, c_qinit_batch),
  ERR("uvq_queue_init", "batch UINT_MAX", UVQ_EINVAL, c_qinit_batch_max),
  ERR("uvq_queue_init", "overflow UVQ_DROP_OLDEST + 1", UVQ_EINVAL,
      c_qinit_overflow),
  ERR("uvq_queue_init", "overflow -1", UVQ_EINVAL, c_qinit_overflow_neg),
  ERR("uvq_queue_init", "poll_us UVQ_MAX_POLL_US + 1", UVQ_EINVAL,
      c_qinit_poll),
  ERR("uvq_queue_init", "poll_us UINT_MAX", UVQ_EINVAL, c_qinit_poll_max),
  ERR("uvq_queue_init_sink", "NULL loop", UVQ_EINVAL, c_qsink_null_loop),
  ERR("uvq_queue_init_sink", "NULL q", UVQ_EINVAL, c_qsink_null_q),
  ERR("uvq_queue_init_sink", "NULL dst", UVQ_EINVAL, c_qsink_null_dst),
  ERR("uvq_queue_init_sink", "capacity SIZE_MAX", UVQ_EINVAL,
      c_qsink_bad_opts),
  ERR("uvq_queue_init_sink", "poll_us UVQ_MAX_POLL_US + 1", UVQ_EINVAL,
      c_qsink_bad_poll),
  ERR("uvq_queue_init_sink", "dst of another thread", UVQ_ETHREAD,
      c_qsink_thread),
  ERR("uvq_queue_init_sink", "dst closed", UVQ_ECLOSED, c_qsink_closed),
  ERR("uvq_queue_init_sink", "dst has an upstream", UVQ_EBUSY, c_qsink_busy),

  ERR("uvq_queue_enqueue", "NULL q", UVQ_EINVAL, c_enq_null_q),
  ERR("uvq_queue_enqueue", "NULL ev", UVQ_EINVAL, c_enq_null_ev),
  ERR("uvq_queue_enqueue", "after stop", UVQ_ECLOSED, c_enq_stopped),
  ERR("uvq_queue_enqueue", "after the close callback", UVQ_ECLOSED,
      c_enq_closed),
  ERR("uvq_queue_enqueue", "loop thread, bounded UVQ_BLOCK", UVQ_EDEADLK,
      c_enq_deadlk),
  ERR("uvq_queue_enqueue", "loop thread, bounded UVQ_BLOCK, after stop",
      UVQ_EDEADLK, c_enq_deadlk_stopped),
  ERR("uvq_queue_enqueue", "full UVQ_FAIL queue", UVQ_EFULL, c_enq_fail_full),
  ERR("uvq_queue_try_enqueue", "NULL q", UVQ_EINVAL, c_try_null_q),
  ERR("uvq_queue_try_enqueue", "NULL ev", UVQ_EINVAL, c_try_null_ev),
  ERR("uvq_queue_try_enqueue", "full UVQ_BLOCK queue", UVQ_EFULL, c_try_full),
  ERR("uvq_queue_try_enqueue", "after stop", UVQ_ECLOSED, c_try_stopped),
  ERR("uvq_queue_try_enqueue", "after the close callback", UVQ_ECLOSED,
      c_try_closed),
  ERR("uvq_queue_enqueue_timeout", "NULL q", UVQ_EINVAL, c_tmo_null_q),
  ERR("uvq_queue_enqueue_timeout", "NULL ev", UVQ_EINVAL, c_tmo_null_ev),
  ERR("uvq_queue_enqueue_timeout", "timeout -1", UVQ_EINVAL, c_tmo_negative),
  ERR("uvq_queue_enqueue_timeout", "timeout INT64_MIN", UVQ_EINVAL,
      c_tmo_min),
  ERR("uvq_queue_enqueue_timeout", "loop thread, bounded UVQ_BLOCK, 5 ms",
      UVQ_EDEADLK, c_tmo_deadlk),
  ERR("uvq_queue_enqueue_timeout", "0 ms, full UVQ_BLOCK queue", UVQ_EFULL,
      c_tmo_zero_full),
  ERR("uvq_queue_enqueue_timeout", "1 ms, full, another thread",
      UVQ_ETIMEDOUT, c_tmo_thread),
  ERR("uvq_queue_enqueue_timeout", "after stop", UVQ_ECLOSED, c_tmo_stopped),
  RES("uvq_queue_enqueue_timeout", "timeout INT64_MAX, room",
      "0 (taken at once)", c_tmo_absurd),
  ERR("uvq_queue_stop", "NULL q", UVQ_EINVAL, c_stop_null),
  ERR("uvq_queue_stop", "mode 2", UVQ_EINVAL, c_stop_mode),
  ERR("uvq_queue_stop", "mode -1", UVQ_EINVAL, c_stop_mode_neg),
  RES("uvq_queue_stop", "twice", "0 (harmless)", c_stop_twice),
  RES("uvq_queue_stop", "after the close callback", "0 (nothing to do)",
      c_stop_closed),
  ERR("uvq_queue_ref", "NULL q", UVQ_EINVAL, c_ref_null),
  ERR("uvq_queue_ref", "from another thread", UVQ_ETHREAD, c_ref_thread),
  ERR("uvq_queue_ref", "after stop", UVQ_ECLOSED, c_ref_stopped),
  ERR("uvq_queue_ref", "after the close callback", UVQ_ECLOSED, c_ref_closed),
  ERR("uvq_queue_unref", "NULL q", UVQ_EINVAL, c_unref_null),
  ERR("uvq_queue_unref", "from another thread", UVQ_ETHREAD, c_unref_thread),
  ERR("uvq_queue_unref", "after stop", UVQ_ECLOSED, c_unref_stopped),
  ERR("uvq_queue_unref", "after the close callback", UVQ_ECLOSED,
      c_unref_closed),
  ERR("uvq_queue_stats", "NULL q", UVQ_EINVAL, c_stats_null_q),
  ERR("uvq_queue_stats", "NULL out", UVQ_EINVAL, c_stats_null_out),
  RES("uvq_queue_sink", "NULL q", "NULL", c_qsinkface_null),
  ERR("uvq_queue_sink", "write after stop", UVQ_ECLOSED, c_face_write_stopped),
  ERR("uvq_queue_sink", "write from another thread", UVQ_ETHREAD,
      c_face_write_thread),

  ERR("uvq_broadcast_init", "NULL b", UVQ_EINVAL, c_bc_init_null),
  ERR("uvq_broadcast_add", "NULL b", UVQ_EINVAL, c_bc_add_null_b),
  ERR("uvq_broadcast_add", "NULL sink", UVQ_EINVAL, c_bc_add_null_sink),
  ERR("uvq_broadcast_add", "its own sink", UVQ_EINVAL, c_bc_add_self),
  ERR("uvq_broadcast_add", "from another thread", UVQ_ETHREAD,
      c_bc_add_thread),
  ERR("uvq_broadcast_add", "closed sink", UVQ_ECLOSED, c_bc_add_closed_sink),
  ERR("uvq_broadcast_add", "after close", UVQ_ECLOSED, c_bc_add_closed_bc),
  ERR("uvq_broadcast_add", "sink has an upstream", UVQ_EBUSY, c_bc_add_busy),
  RES("uvq_broadcast_add", "twice", "0 (idempotent)", c_bc_add_twice),
  ERR("uvq_broadcast_remove", "NULL b", UVQ_EINVAL, c_bc_remove_null_b),
  ERR("uvq_broadcast_remove", "NULL sink", UVQ_EINVAL, c_bc_remove_null_sink),
  ERR("uvq_broadcast_remove", "sink not in b", UVQ_ENOENT,
      c_bc_remove_absent),
  ERR("uvq_broadcast_remove", "after close", UVQ_ECLOSED, c_bc_remove_closed),
  ERR("uvq_broadcast_remove", "from another thread", UVQ_ETHREAD,
      c_bc_remove_thread),
  ERR("uvq_broadcast_stats", "NULL b", UVQ_EINVAL, c_bc_stats_null_b),
  ERR("uvq_broadcast_stats", "NULL out", UVQ_EINVAL, c_bc_stats_null_out),
  ERR("uvq_broadcast_stats", "from another thread", UVQ_ETHREAD,
      c_bc_stats_thread),
  ERR("uvq_sink_write", "broadcaster, from its own sink's write", UVQ_EBUSY,
      c_bc_write_loop_back),

  ERR("uvq_filter_init", "NULL f", UVQ_EINVAL, c_flt_null_f),
  ERR("uvq_filter_init", "NULL dst", UVQ_EINVAL, c_flt_null_dst),
  ERR("uvq_filter_init", "NULL match", UVQ_EINVAL, c_flt_null_match),
  ERR("uvq_filter_init", "dst is its own sink", UVQ_EINVAL, c_flt_self),
  ERR("uvq_filter_init", "dst of another thread", UVQ_ETHREAD, c_flt_thread),
  ERR("uvq_filter_init", "dst closed", UVQ_ECLOSED, c_flt_closed),
  ERR("uvq_filter_init", "dst has an upstream", UVQ_EBUSY, c_flt_busy),
  ERR("uvq_filter_stats", "NULL f", UVQ_EINVAL, c_flt_stats_null_f),
  ERR("uvq_filter_stats", "NULL out", UVQ_EINVAL, c_flt_stats_null_out),
  ERR("uvq_filter_stats", "from another thread", UVQ_ETHREAD,
      c_flt_stats_thread),

  ERR("uvq_retry_init", "NULL loop", UVQ_EINVAL, c_rty_null_loop),
  ERR("uvq_retry_init", "NULL r", UVQ_EINVAL, c_rty_null_r),
  ERR("uvq_retry_init", "NULL dst", UVQ_EINVAL, c_rty_null_dst),
  ERR("uvq_retry_init", "NULL strategy", UVQ_EINVAL, c_rty_null_strategy),
  ERR("uvq_retry_init", "dst is its own sink", UVQ_EINVAL, c_rty_self),
  ERR("uvq_retry_init", "dst of another thread", UVQ_ETHREAD, c_rty_thread),
  ERR("uvq_retry_init", "dst closed", UVQ_ECLOSED, c_rty_closed),
  ERR("uvq_retry_init", "dst has an upstream", UVQ_EBUSY, c_rty_busy),
  ERR("uvq_retry_stats", "NULL r", UVQ_EINVAL, c_rty_stats_null_r),
  ERR("uvq_retry_stats", "NULL out", UVQ_EINVAL, c_rty_stats_null_out),
  ERR("uvq_retry_stats", "from another thread", UVQ_ETHREAD,
      c_rty_stats_thread),
  ERR("uvq_breaker_init", "NULL br", UVQ_EINVAL, c_breaker_null),
  ERR("uvq_backoff_init", "NULL bo", UVQ_EINVAL, c_backoff_null),
  RES("uvq_backoff_init", "every size UINT64_MAX", "0 (waits are capped)",
      c_backoff_absurd),

  ERR("uvq_channel_init", "NULL ch", UVQ_EINVAL, c_ch_init_null),
  ERR("uvq_channel_init", "capacity 0", UVQ_EINVAL, c_ch_init_zero),
  ERR("uvq_channel_init", "capacity UVQ_CHANNEL_MAX_CAPACITY + 1", UVQ_EINVAL,
      c_ch_init_too_big),
  ERR("uvq_channel_init", "capacity SIZE_MAX", UVQ_EINVAL, c_ch_init_size_max),
  {"uvq_channel_init", "capacity UVQ_CHANNEL_MAX_CAPACITY (no such memory)",
   UVQ_ENOMEM, NULL, c_ch_init_no_memory, F_UNSANITIZED},
  ERR("uvq_channel_close", "NULL ch", UVQ_EINVAL, c_ch_close_null),
  ERR("uvq_channel_close", "never initialised (zero-filled)", UVQ_EINVAL,
      c_ch_close_uninit),
  RES("uvq_channel_close", "twice", "0 (harmless)", c_ch_close_twice),
  ERR("uvq_channel_close", "after destroy", UVQ_EINVAL, c_ch_destroyed_close),
  ERR("uvq_channel_destroy", "NULL ch", UVQ_EINVAL, c_ch_destroy_null),
  ERR("uvq_channel_destroy", "never initialised (zero-filled)", UVQ_EINVAL,
      c_ch_destroy_uninit),
  ERR("uvq_channel_destroy", "events still inside", UVQ_EBUSY,
      c_ch_destroy_full),
  ERR("uvq_channel_destroy", "a channel sink attached", UVQ_EBUSY,
      c_ch_destroy_sink),
  ERR("uvq_channel_destroy", "twice", UVQ_EINVAL, c_ch_destroyed_destroy),
  ERR("uvq_channel_send", "NULL ch", UVQ_EINVAL, c_ch_send_null_ch),
  ERR("uvq_channel_send", "NULL ev", UVQ_EINVAL, c_ch_send_null_ev),
  ERR("uvq_channel_send", "never initialised (zero-filled)", UVQ_EINVAL,
      c_ch_send_uninit),
  ERR("uvq_channel_send", "after close", UVQ_ECLOSED, c_ch_send_closed),
  ERR("uvq_channel_send", "on the channel sink's loop thread", UVQ_EDEADLK,
      c_ch_send_deadlk),
  ERR("uvq_channel_try_send", "NULL ch", UVQ_EINVAL, c_ch_try_send_null),
  ERR("uvq_channel_try_send", "full", UVQ_EFULL, c_ch_try_send_full),
  ERR("uvq_channel_try_send", "after close", UVQ_ECLOSED,
      c_ch_try_send_closed),
  ERR("uvq_channel_try_send", "after destroy", UVQ_EINVAL,
      c_ch_destroyed_send),
  ERR("uvq_channel_send_timeout", "NULL ch", UVQ_EINVAL, c_ch_stmo_null),
  ERR("uvq_channel_send_timeout", "timeout -1", UVQ_EINVAL,
      c_ch_stmo_negative),
  ERR("uvq_channel_send_timeout", "0 ms, full", UVQ_EFULL,
      c_ch_stmo_zero_full),
  ERR("uvq_channel_send_timeout", "1 ms, full, another thread", UVQ_ETIMEDOUT,
      c_ch_stmo_thread),
  ERR("uvq_channel_send_timeout", "5 ms on the channel sink's loop thread",
      UVQ_EDEADLK, c_ch_stmo_deadlk),
  ERR("uvq_channel_recv", "NULL ch", UVQ_EINVAL, c_ch_recv_null_ch),
  ERR("uvq_channel_recv", "NULL out", UVQ_EINVAL, c_ch_recv_null_out),
  ERR("uvq_channel_recv", "never initialised (zero-filled)", UVQ_EINVAL,
      c_ch_recv_uninit),
  ERR("uvq_channel_recv", "closed and empty", UVQ_ECLOSED, c_ch_recv_closed),
  ERR("uvq_channel_recv", "on the channel sink's loop thread", UVQ_EDEADLK,
      c_ch_recv_deadlk),
  ERR("uvq_channel_try_recv", "NULL ch", UVQ_EINVAL, c_ch_try_recv_null),
  ERR("uvq_channel_try_recv", "empty", UVQ_EAGAIN, c_ch_try_recv_empty),
  ERR("uvq_channel_try_recv", "after destroy", UVQ_EINVAL,
      c_ch_destroyed_recv),
  ERR("uvq_channel_recv_timeout", "NULL ch", UVQ_EINVAL, c_ch_rtmo_null),
  ERR("uvq_channel_recv_timeout", "timeout -1", UVQ_EINVAL,
      c_ch_rtmo_negative),
  ERR("uvq_channel_recv_timeout", "0 ms, empty", UVQ_EAGAIN,
      c_ch_rtmo_zero_empty),
  ERR("uvq_channel_recv_timeout", "1 ms, empty, another thread",
      UVQ_ETIMEDOUT, c_ch_rtmo_thread),
  ERR("uvq_channel_recv_timeout", "5 ms on the channel sink's loop thread",
      UVQ_EDEADLK, c_ch_rtmo_deadlk),
  ERR("uvq_channel_sink_init", "NULL loop", UVQ_EINVAL, c_chs_null_loop),
  ERR("uvq_channel_sink_init", "NULL cs", UVQ_EINVAL, c_chs_null_cs),
  ERR("uvq_channel_sink_init", "NULL ch", UVQ_EINVAL, c_chs_null_ch),
  ERR("uvq_channel_sink_init", "ch never initialised (zero-filled)",
      UVQ_EINVAL, c_chs_uninit),
  ERR("uvq_channel_sink_init", "unknown flags", UVQ_EINVAL, c_chs_flags),
  ERR("uvq_channel_sink_init", "a second channel sink", UVQ_EBUSY,
      c_chs_second),

  {"uvq_queue_enqueue", "never initialised (zero-filled)", UVQ_EINVAL, NULL,
   c_qz_enqueue, F_NONE},
  {"uvq_queue_try_enqueue", "never initialised (zero-filled)", UVQ_EINVAL,
   NULL, c_qz_try, F_NONE},
  {"uvq_queue_enqueue_timeout", "never initialised (zero-filled)",
   UVQ_EINVAL, NULL, c_qz_timeout, F_NONE},
  {"uvq_queue_stop", "never initialised (zero-filled)", UVQ_EINVAL, NULL,
   c_qz_stop, F_NONE},
  {"uvq_queue_ref", "never initialised (zero-filled)", UVQ_EINVAL, NULL,
   c_qz_ref, F_NONE},
  {"uvq_queue_stats", "never initialised (zero-filled)", UVQ_EINVAL, NULL,
   c_qz_stats, F_NONE},
};

#define NCASES ((int) (sizeof(cases) / sizeof(cases[0])))

START_TEST(badinput_every_public_function_returns_its_documented_error) {
  const bad_case_t* c = &cases[_i];
  int r;
  if ((c->flags & F_UNSANITIZED) && UVQ_TEST_SANITIZED) {
    fprintf(stderr, "skipped badinput row %d: the sanitizer aborts on its "
                    "absurd allocation on purpose (run in plain builds)\n",
            _i);
    return;
  }
  memset(&qx, 0, sizeof(qx));
  memset(&qz, 0, sizeof(qz));
  r = c->run();
  ck_assert_msg(r == c->expect, "%s, %s: returned %d (%s), documented %s",
                c->fn, c->input, r, uvq_err_name(r),
                c->result != NULL ? c->result : uvq_err_name(c->expect));
}
END_TEST

/* -- docs/errors.md -------------------------------------------------------- */

static const char md_head[] =
    "# Errors on bad input\n"
    "\n"
    "Every public function of `include/uvq.h`, the bad inputs the test suite\n"
    "gives it, and what it returns. Generated from the table in\n"
    "`test/check_badinput.c`, which runs every row; a test fails when this\n"
    "page and the table differ. Do not edit by hand: change the table, then\n"
    "run `UVQ_WRITE_ERRORS_MD=1 CK_RUN_SUITE=badinput ./test/check_uvq` in a\n"
    "build directory.\n"
    "\n"
    "Codes: `UVQ_E*` are the names `uvq_err_name()` gives (see the error map\n"
    "in `uvq.h`). Each call is made with everything else valid: an open\n"
    "unbounded queue, a full bounded `UVQ_BLOCK` queue of capacity 1, an open\n"
    "sink without upstream, and an event that no bad call may take or\n"
    "release (checked after every row). \"Another thread\" is a thread\n"
    "that is not the object's loop thread; \"after the close callback\"\n"
    "means the object's memory is still there.\n"
    "\n"
    "| Function | Bad input | Result |\n"
    "| --- | --- | --- |\n";

/* The page's text, in a malloc'd string. */
static char* md_generate(void) {
  size_t cap = 1 << 16, len = 0;
  char* out = malloc(cap);
  int i;
  ck_assert_ptr_nonnull(out);
  len += (size_t) snprintf(out + len, cap - len, "%s", md_head);
  for (i = 0; i < NCASES; i++) {
    const bad_case_t* c = &cases[i];
    if (c->result != NULL)
      len += (size_t) snprintf(out + len, cap - len, "| `%s` | %s | %s |\n",
                               c->fn, c->input, c->result);
    else
      len += (size_t) snprintf(out + len, cap - len, "| `%s` | %s | `%s` |\n",
                               c->fn, c->input, uvq_err_name(c->expect));
    ck_assert_uint_lt(len, cap);
  }
  return out;
}

static char* read_file(const char* path) {
  FILE* f = fopen(path, "rb");
  char* buf;
  long n;
  if (f == NULL)
    return NULL;
  ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
  n = ftell(f);
  ck_assert_int_ge(n, 0);
  rewind(f);
  buf = malloc((size_t) n + 1);
  ck_assert_ptr_nonnull(buf);
  ck_assert_uint_eq(fread(buf, 1, (size_t) n, f), (size_t) n);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

START_TEST(badinput_docs_errors_md_matches_the_table) {
  const char* path = UVQ_SRCDIR "/docs/errors.md";
  char* want = md_generate();
  char* have;
  const char* w = getenv("UVQ_WRITE_ERRORS_MD");

  if (w != NULL && strcmp(w, "1") == 0) {
    FILE* f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert_uint_eq(fwrite(want, 1, strlen(want), f), strlen(want));
    ck_assert_int_eq(fclose(f), 0);
  }
  have = read_file(path);
  ck_assert_msg(have != NULL, "%s is missing: generate it (see the top of "
                "test/check_badinput.c)", path);
  ck_assert_msg(strcmp(have, want) == 0,
                "%s differs from the table in test/check_badinput.c: "
                "regenerate it (see the top of that file)", path);
  free(have);
  free(want);
}
END_TEST

START_TEST(badinput_table_covers_every_public_function) {
  const char* path = UVQ_SRCDIR "/include/uvq.h";
  char* h = read_file(path);
  const char* p;
  unsigned functions = 0;
  ck_assert_msg(h != NULL, "cannot read %s", path);
  /* Each "UVQ_EXTERN <type> [*]uvq_name(" declares one public function. */
  for (p = strstr(h, "\nUVQ_EXTERN "); p != NULL;
       p = strstr(p + 1, "\nUVQ_EXTERN ")) {
    const char* name = strstr(p, "uvq_");
    const char* paren = strchr(p, '(');
    char fn[64];
    size_t n;
    int i, found = 0;
    ck_assert_ptr_nonnull(name);
    ck_assert_ptr_nonnull(paren);
    /* the function's name is the last uvq_ word before the paren */
    while (strstr(name + 1, "uvq_") != NULL &&
           strstr(name + 1, "uvq_") < paren)
      name = strstr(name + 1, "uvq_");
    n = (size_t) (paren - name);
    ck_assert_uint_lt(n, sizeof(fn));
    memcpy(fn, name, n);
    fn[n] = '\0';
    functions++;
    for (i = 0; i < NCASES && !found; i++)
      found = strcmp(cases[i].fn, fn) == 0;
    ck_assert_msg(found, "%s has no bad-input row in test/check_badinput.c",
                  fn);
  }
  ck_assert_uint_ge(functions, 20);
  free(h);
}
END_TEST

Suite* badinput_suite(void) {
  Suite* s = suite_create("badinput");
  TCase* tc = tcase_create("table");
  TCase* td = tcase_create("docs");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_loop_test(
      tc, badinput_every_public_function_returns_its_documented_error, 0,
      NCASES);
  suite_add_tcase(s, tc);
  tcase_add_test(td, badinput_docs_errors_md_matches_the_table);
  tcase_add_test(td, badinput_table_covers_every_public_function);
  suite_add_tcase(s, td);
  return s;
}
