/* Broadcaster, filter and retrying sink: go-events' own scenarios, the flaws
 * listed in go-events-semantics.md shown absent, flow control, re-entrancy
 * and close. Everything runs on the test's loop thread except the two
 * "wrong thread" checks.
 *
 * Every event is an item_t whose release callback counts, per item, how
 * often it was released: each test ends by requiring exactly once for every
 * item it used. The test sink (tsink_t) records, per item id, how often it
 * took the event, so a skip (0) or a duplicate (2) is seen directly. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fault.h"
#include "helpers.h"

#define MAX_ITEMS 1100
#define MAX_SINKS 40

/* -- events ---------------------------------------------------------------- */

typedef struct {
  uvq_event_t ev;
  unsigned id;
  unsigned releases;
} item_t;

#define ITEM(e) ((item_t*) ((char*) (e) - offsetof(item_t, ev)))

static uv_loop_t loop;
static item_t items[MAX_ITEMS];
static unsigned released;

static void item_release(uvq_event_t* ev) {
  ITEM(ev)->releases++;
  released++;
}

static void items_init(unsigned n) {
  unsigned i;
  for (i = 0; i < n; i++) {
    items[i].id = i;
    items[i].releases = 0;
    ck_assert_int_eq(uvq_event_init(&items[i].ev, item_release), 0);
  }
}

/* Every item in [0, n) was released exactly once. */
static void items_released_once(unsigned n) {
  unsigned i;
  for (i = 0; i < n; i++) {
    ck_assert_msg(items[i].releases == 1, "item %u released %u times", i,
                  items[i].releases);
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 0);
  }
}

/* -- the test sink -------------------------------------------------------- */

#define TS_TAKE 1 /* a hook's "take it as usual" */

typedef struct tsink_s tsink_t;
typedef int (*tsink_hook)(tsink_t* t, uvq_event_t* ev);

struct tsink_s {
  uvq_sink_t sink;
  tsink_hook hook;    /* NULL: take everything */
  void* arg;          /* for the hook */
  int async_close;    /* close completes on a later loop iteration */
  uv_timer_t close_timer;
  unsigned char seen[MAX_ITEMS];
  unsigned got;       /* events taken */
  unsigned calls;     /* writes seen, taken or not */
  unsigned out_of_order;
  int last_id;
  int in_write;
  unsigned closes;          /* close operations run */
  unsigned closed_in_write; /* close ran while its own write was running */
  unsigned close_cbs;       /* user close callbacks (tsink_close_cb) */
  uint64_t rng;             /* for flaky hooks */
};

static tsink_t sinks[MAX_SINKS];

static int tsink_write(uvq_sink_t* sink, uvq_event_t* ev) {
  tsink_t* t = (tsink_t*) sink; /* sink is the first member */
  unsigned id = ITEM(ev)->id;
  int r = TS_TAKE;
  t->calls++;
  if (t->hook != NULL) {
    t->in_write++;
    r = t->hook(t, ev);
    t->in_write--;
  }
  if (r != TS_TAKE)
    return r;
  if ((int) id <= t->last_id)
    t->out_of_order++;
  t->last_id = (int) id;
  t->seen[id]++;
  t->got++;
  return 0;
}

static void tsink_timer_closed(uv_handle_t* h) {
  tsink_t* t = h->data;
  uvq_sink_closed(&t->sink);
}

static void tsink_close_later(uv_timer_t* timer) {
  uv_close((uv_handle_t*) timer, tsink_timer_closed);
}

static void tsink_close(uvq_sink_t* sink) {
  tsink_t* t = (tsink_t*) sink;
  t->closes++;
  if (t->in_write)
    t->closed_in_write++;
  if (!t->async_close) {
    uvq_sink_closed(sink);
    return;
  }
  ck_assert_int_eq(uv_timer_init(&loop, &t->close_timer), 0);
  t->close_timer.data = t;
  ck_assert_int_eq(uv_timer_start(&t->close_timer, tsink_close_later, 0, 0),
                   0);
}

static const uvq_sink_vtable_t tsink_vt = { tsink_write, tsink_close };

static void tsink_init(tsink_t* t, tsink_hook hook, int async_close) {
  memset(t, 0, sizeof(*t));
  t->hook = hook;
  t->async_close = async_close;
  t->last_id = -1;
  ck_assert_int_eq(uvq_sink_init(&t->sink, &tsink_vt), 0);
}

static void tsink_close_cb(uvq_sink_t* sink) {
  ((tsink_t*) sink)->close_cbs++;
}

/* -- a writer that honours flow control ------------------------------------ */

/* Writes items [0, n) in order; on UVQ_EAGAIN it stops and waits for the
 * target's ready callback; after each write it drops its own reference
 * (whatever the result: the write only borrowed the event). */
typedef struct {
  uvq_sink_t* target;
  unsigned n;
  unsigned next;
  unsigned again;    /* UVQ_EAGAIN answers */
  unsigned errors;   /* any other error */
  int last_error;
  unsigned readies;  /* ready callbacks */
  int waiting;
  int pumping;
} writer_t;

static void writer_pump(writer_t* w) {
  int r;
  w->pumping = 1;
  while (w->next < w->n) {
    r = uvq_sink_write(w->target, &items[w->next].ev);
    if (r == UVQ_EAGAIN) {
      w->again++;
      w->waiting = 1;
      break;
    }
    if (r != 0) {
      w->errors++;
      w->last_error = r;
    }
    uvq_event_unref(&items[w->next].ev);
    w->next++;
  }
  w->pumping = 0;
}

static void writer_on_ready(uvq_sink_t* sink, void* arg) {
  writer_t* w = arg;
  (void) sink;
  w->readies++;
  if (w->waiting && !w->pumping) {
    w->waiting = 0;
    writer_pump(w);
  }
}

static void writer_start(writer_t* w, uvq_sink_t* target, unsigned n) {
  memset(w, 0, sizeof(*w));
  w->target = target;
  w->n = n;
  ck_assert_int_eq(uvq_sink_set_ready_cb(target, writer_on_ready, w), 0);
  writer_pump(w);
}

/* -- fixture --------------------------------------------------------------- */

static unsigned closed_cbs;

static void count_close(uvq_sink_t* sink) {
  (void) sink;
  closed_cbs++;
}

/* Given to a second close: it must never run (the first close's does). */
static unsigned second_close_cbs;

static void second_close(uvq_sink_t* sink) {
  (void) sink;
  second_close_cbs++;
}

static void setup(void) {
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  released = 0;
  closed_cbs = 0;
  memset(sinks, 0, sizeof(sinks));
}

static void teardown(void) {}

/* Run the loop until nothing is left, then require a clean loop close. */
static void finish_loop(void) {
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}

/* ========================================================================= */
/* Broadcaster                                                                */
/* ========================================================================= */

static uvq_broadcast_t bc;

START_TEST(broadcast_ten_sinks_added_twice_get_every_event_once) {
  enum { S = 10, N = 1000 };
  uvq_broadcast_stats_t st;
  unsigned i;
  unsigned j;

  items_init(N + 1);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  for (i = 0; i < S; i++) {
    tsink_init(&sinks[i], NULL, i % 2); /* half close asynchronously */
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0); /* no-op */
  }
  for (i = 0; i < N; i++) {
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[i].ev), 0);
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 1); /* nobody kept it */
    uvq_event_unref(&items[i].ev);
  }
  for (i = 0; i < S; i++) {
    ck_assert_uint_eq(sinks[i].got, N);
    ck_assert_uint_eq(sinks[i].out_of_order, 0);
    for (j = 0; j < N; j++)
      ck_assert_uint_eq(sinks[i].seen[j], 1);
  }
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.written, N);
  ck_assert_uint_eq(st.deliveries, S * N);
  ck_assert_uint_eq(st.failures, 0);
  ck_assert_uint_eq(st.sinks, S);

  /* After removing every sink, one more write succeeds and reaches nobody. */
  for (i = 0; i < S; i++)
    ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[i].sink), 0);
  ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[0].sink), UVQ_ENOENT);
  ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[N].ev), 0);
  uvq_event_unref(&items[N].ev);
  for (i = 0; i < S; i++)
    ck_assert_uint_eq(sinks[i].got, N);

  /* Add them back: close closes them all, and waits for the slow ones. */
  for (i = 0; i < S; i++)
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 0); /* the asynchronous half is pending */
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  for (i = 0; i < S; i++)
    ck_assert_uint_eq(sinks[i].closes, 1);
  items_released_once(N + 1);
}
END_TEST

START_TEST(broadcast_close_twice_then_every_write_fails) {
  uvq_broadcast_stats_t st;
  int i;
  items_init(1);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  tsink_init(&sinks[0], NULL, 0);
  tsink_init(&sinks[1], NULL, 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 1); /* the second cb is never called */
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[0].ev), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[1].sink), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[0].sink), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_sink_is_closed(&bc.sink), 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(sinks[0].got, 0);
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.written, 0);
  ck_assert_uint_eq(st.sinks, 0);
  uvq_event_unref(&items[0].ev);
  items_released_once(1);
  finish_loop();
}
END_TEST

/* go-events' flaw: removing a sink while an event is fanned out skips the
 * next sink for that event and gives another a duplicate. Here sink 1
 * removes, at different events, the sink after it, itself, and the sink
 * before it. */
static int remove_others_hook(tsink_t* t, uvq_event_t* ev) {
  unsigned id = ITEM(ev)->id;
  (void) t;
  if (id == 10)
    ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[2].sink), 0);
  if (id == 20)
    ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[0].sink), 0);
  if (id == 30)
    ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[1].sink), 0);
  return TS_TAKE;
}

START_TEST(broadcast_remove_during_fanout_neither_skips_nor_duplicates) {
  enum { S = 6, N = 40 };
  uvq_broadcast_stats_t st;
  unsigned i;
  unsigned j;
  unsigned expect;

  items_init(N);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  for (i = 0; i < S; i++) {
    tsink_init(&sinks[i], i == 1 ? remove_others_hook : NULL, 0);
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);
  }
  for (i = 0; i < N; i++) {
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[i].ev), 0);
    uvq_event_unref(&items[i].ev);
  }
  for (i = 0; i < S; i++) {
    for (j = 0; j < N; j++) {
      expect = 1;
      if (i == 2 && j >= 10) /* removed before its turn at event 10 */
        expect = 0;
      if (i == 0 && j > 20) /* removed after it got event 20 */
        expect = 0;
      if (i == 1 && j > 30) /* removed itself while taking event 30 */
        expect = 0;
      ck_assert_msg(sinks[i].seen[j] == expect,
                    "sink %u saw event %u %u times, expected %u", i, j,
                    sinks[i].seen[j], expect);
    }
    ck_assert_uint_eq(sinks[i].out_of_order, 0);
  }
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.sinks, S - 3);
  /* Sink 2 was removed while event 10 was still on its way to it. */
  ck_assert_uint_eq(st.abandoned, 1);
  ck_assert_uint_eq(st.deliveries, 10 + 21 + 31 + 3 * N);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 1);
  /* Removed sinks are the caller's again: not closed by the broadcaster. */
  ck_assert_uint_eq(sinks[0].closes + sinks[1].closes + sinks[2].closes, 0);
  for (i = 3; i < S; i++)
    ck_assert_uint_eq(sinks[i].closes, 1);
  items_released_once(N);
  finish_loop();
}
END_TEST

/* A sink's write adds sinks (enough to force the list to grow under the
 * fan-out), re-adds an existing one, and writes into the broadcaster. */
static int add_many_hook(tsink_t* t, uvq_event_t* ev) {
  unsigned i;
  (void) t;
  if (ITEM(ev)->id == 5) {
    for (i = 3; i < 23; i++)
      ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[2].sink), 0); /* no-op */
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[99].ev), UVQ_EBUSY);
  }
  return TS_TAKE;
}

START_TEST(broadcast_sinks_added_during_fanout_start_with_next_event) {
  enum { N = 10 };
  unsigned i;
  unsigned j;

  items_init(100);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  for (i = 0; i < 23; i++)
    tsink_init(&sinks[i], i == 1 ? add_many_hook : NULL, 0);
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);
  for (i = 0; i < N; i++) {
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[i].ev), 0);
    uvq_event_unref(&items[i].ev);
  }
  for (i = 0; i < 3; i++)
    for (j = 0; j < N; j++)
      ck_assert_uint_eq(sinks[i].seen[j], 1);
  for (i = 3; i < 23; i++) {
    ck_assert_uint_eq(sinks[i].got, N - 6); /* events 6..9, not 5 */
    ck_assert_uint_eq(sinks[i].seen[5], 0);
    ck_assert_uint_eq(sinks[i].seen[6], 1);
  }
  ck_assert_uint_eq(sinks[0].got + sinks[1].got + sinks[2].got, 3 * N);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  for (i = 0; i < 23; i++)
    ck_assert_uint_eq(sinks[i].closes, 1);
  ck_assert_uint_eq(closed_cbs, 1);
  uvq_event_unref(&items[99].ev); /* the one refused with UVQ_EBUSY */
  for (i = N; i < 99; i++)
    uvq_event_unref(&items[i].ev);
  items_released_once(100);
  finish_loop();
}
END_TEST

static int close_broadcaster_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  if (ITEM(ev)->id == 3) {
    ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
    /* Closed at once for writers, even inside the fan-out. */
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[9].ev), UVQ_ECLOSED);
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), UVQ_ECLOSED);
    ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[0].sink), UVQ_ECLOSED);
  }
  return TS_TAKE;
}

START_TEST(broadcast_closed_from_inside_a_write_closes_every_sink_after_it) {
  uvq_broadcast_stats_t st;
  unsigned i;

  items_init(10);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  for (i = 0; i < 3; i++) {
    tsink_init(&sinks[i], i == 1 ? close_broadcaster_hook : NULL, i == 2);
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);
  }
  for (i = 0; i < 3; i++) {
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[i].ev), 0);
    uvq_event_unref(&items[i].ev);
  }
  ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[3].ev), 0);
  uvq_event_unref(&items[3].ev);
  ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[4].ev), UVQ_ECLOSED);
  /* Sinks 0 and 1 got event 3, sink 2 never does; nobody was closed while
   * its own write ran. */
  ck_assert_uint_eq(sinks[0].got, 4);
  ck_assert_uint_eq(sinks[1].got, 4);
  ck_assert_uint_eq(sinks[2].got, 3);
  for (i = 0; i < 3; i++) {
    ck_assert_uint_eq(sinks[i].closes, 1);
    ck_assert_uint_eq(sinks[i].closed_in_write, 0);
  }
  ck_assert_uint_eq(closed_cbs, 0); /* sink 2 closes asynchronously */
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.abandoned, 1);
  ck_assert_uint_eq(st.written, 4);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  for (i = 4; i < 10; i++)
    uvq_event_unref(&items[i].ev);
  items_released_once(10);
}
END_TEST

static int fail_eio_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  return ITEM(ev)->id % 2 == 0 ? UV_EIO : TS_TAKE;
}

START_TEST(broadcast_failures_stay_with_one_sink_and_closed_sinks_leave) {
  enum { N = 10 };
  uvq_broadcast_stats_t st;
  unsigned i;

  items_init(N);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  tsink_init(&sinks[0], NULL, 0);
  tsink_init(&sinks[1], fail_eio_hook, 0);
  tsink_init(&sinks[2], NULL, 0);
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);
  for (i = 0; i < N; i++) {
    if (i == 4) /* closed by its owner, not through the broadcaster */
      ck_assert_int_eq(uvq_sink_close(&sinks[2].sink, tsink_close_cb), 0);
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[i].ev), 0);
    uvq_event_unref(&items[i].ev);
  }
  ck_assert_uint_eq(sinks[0].got, N);
  ck_assert_uint_eq(sinks[1].got, N / 2); /* the odd ones */
  ck_assert_uint_eq(sinks[2].got, 4);
  ck_assert_uint_eq(sinks[2].close_cbs, 1);
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.written, N);
  ck_assert_uint_eq(st.failures, N / 2);
  ck_assert_uint_eq(st.removed, 1);
  ck_assert_uint_eq(st.sinks, 2);
  ck_assert_uint_eq(st.deliveries, N + N / 2 + 4);
  ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[2].sink), UVQ_ENOENT);
  /* The removed sink is free for another upstream. */
  ck_assert_int_eq(uvq_sink_set_ready_cb(&sinks[2].sink, writer_on_ready,
                                         NULL), 0);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[2].closes, 1); /* not closed a second time */
  items_released_once(N);
  finish_loop();
}
END_TEST

/* Says UVQ_EAGAIN to every event the first time it sees it, and becomes
 * ready when the test calls uvq_sink_ready(). */
static int again_once_hook(tsink_t* t, uvq_event_t* ev) {
  unsigned id = ITEM(ev)->id;
  if (t->arg != (void*) (uintptr_t) (id + 1)) {
    t->arg = (void*) (uintptr_t) (id + 1);
    return UVQ_EAGAIN;
  }
  return TS_TAKE;
}

START_TEST(broadcast_again_takes_event_once_and_resumes_when_ready) {
  enum { N = 3 };
  uvq_broadcast_stats_t st;
  writer_t w;
  unsigned i;

  items_init(N);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  tsink_init(&sinks[0], NULL, 0);
  tsink_init(&sinks[1], again_once_hook, 0);
  tsink_init(&sinks[2], NULL, 0);
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);

  writer_start(&w, &bc.sink, N);
  /* Event 0 was taken: sinks 0 and 2 have it, sink 1 said "again"; the
   * broadcaster holds the only reference left, and refuses event 1. */
  ck_assert_uint_eq(w.next, 1);
  ck_assert_uint_eq(w.again, 1);
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1);
  ck_assert_uint_eq(sinks[0].seen[0] + sinks[2].seen[0], 2);
  ck_assert_uint_eq(sinks[1].got, 0);

  /* A sink that is not waiting signalling ready changes nothing. */
  uvq_sink_ready(&sinks[0].sink);
  ck_assert_uint_eq(w.readies, 0);

  /* Sink 1 ready: it gets event 0, the broadcaster lets go of it and calls
   * the writer back, which writes event 1 (sink 1 says again once more). */
  uvq_sink_ready(&sinks[1].sink);
  ck_assert_uint_eq(items[0].releases, 1);
  ck_assert_uint_eq(w.readies, 1);
  ck_assert_uint_eq(w.next, 2);
  uvq_sink_ready(&sinks[1].sink);
  ck_assert_uint_eq(w.next, 3);

  /* Event 2 is waiting for sink 1; removing sink 1 completes it. */
  ck_assert_uint_eq(uvq_event_refs(&items[2].ev), 1);
  ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[1].sink), 0);
  ck_assert_uint_eq(items[2].releases, 1);
  ck_assert_uint_eq(w.readies, 3);

  for (i = 0; i < 3; i++)
    ck_assert_uint_eq(sinks[i].out_of_order, 0);
  ck_assert_uint_eq(sinks[0].got, N);
  ck_assert_uint_eq(sinks[2].got, N);
  ck_assert_uint_eq(sinks[1].got, N - 1);
  for (i = 0; i < N; i++)
    ck_assert_uint_le(sinks[1].seen[i], 1);
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.written, N);
  ck_assert_uint_eq(st.abandoned, 1);
  ck_assert_uint_eq(st.deliveries, 3 * N - 1);
  ck_assert_uint_eq(w.errors, 0);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_int_eq(uvq_sink_close(&sinks[1].sink, NULL), 0);
  items_released_once(N);
  finish_loop();
}
END_TEST

/* A sink without a close operation that said "again" is closed by its
 * owner: it has nowhere to send the ready its upstream waits for, so the
 * base sends it, and the broadcaster learns UVQ_ECLOSED instead of holding
 * the event forever. */
static int again_first_write(uvq_sink_t* sink, uvq_event_t* ev) {
  unsigned* calls = sink->data;
  (void) ev;
  return (*calls)++ == 0 ? UVQ_EAGAIN : 0;
}

static const uvq_sink_vtable_t no_close_vt = {again_first_write, NULL};

START_TEST(broadcast_sink_without_close_op_ends_the_wait_when_closed) {
  uvq_broadcast_stats_t st;
  uvq_sink_t bare;
  unsigned bare_calls = 0;
  writer_t w;

  items_init(2);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  ck_assert_int_eq(uvq_sink_init(&bare, &no_close_vt), 0);
  bare.data = &bare_calls;
  tsink_init(&sinks[0], NULL, 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &bare), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  writer_start(&w, &bc.sink, 2);
  ck_assert_uint_eq(w.next, 1); /* event 0 waits for bare */
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1);
  ck_assert_int_eq(uvq_sink_close(&bare, NULL), 0); /* by its owner */
  ck_assert_uint_eq(bare_calls, 1); /* never written again: closed */
  ck_assert_uint_eq(items[0].releases, 1);
  ck_assert_uint_eq(w.next, 2); /* the writer was told ready, wrote 1 */
  ck_assert_uint_eq(w.errors, 0);
  ck_assert_uint_eq(sinks[0].got, 2);
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.removed, 1);  /* it said UVQ_ECLOSED: removed, */
  ck_assert_uint_eq(st.abandoned, 0); /* as a closed sink always is */
  ck_assert_uint_eq(st.sinks, 1);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  items_released_once(2);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
}
END_TEST

START_TEST(broadcast_close_while_waiting_releases_the_event_once) {
  uvq_broadcast_stats_t st;
  writer_t w;

  items_init(2);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  tsink_init(&sinks[0], again_once_hook, 1);
  tsink_init(&sinks[1], NULL, 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[1].sink), 0);
  writer_start(&w, &bc.sink, 2);
  ck_assert_uint_eq(w.next, 1);
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1); /* the broadcaster's */
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(items[0].releases, 1);
  /* The writer waited on UVQ_EAGAIN: the close tells it, and its retry
   * learns UVQ_ECLOSED instead of waiting forever. */
  ck_assert_uint_eq(w.readies, 1);
  ck_assert_uint_eq(w.next, 2);
  ck_assert_uint_eq(w.errors, 1);
  ck_assert_int_eq(w.last_error, UVQ_ECLOSED);
  /* The waiting sink's later ready goes nowhere. */
  uvq_sink_ready(&sinks[0].sink);
  ck_assert_uint_eq(w.readies, 1);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(sinks[1].closes, 1);
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.abandoned, 1);
  items_released_once(2);
}
END_TEST

START_TEST(broadcast_rejects_bad_input) {
  uvq_broadcast_t other;
  uvq_broadcast_stats_t st;
  items_init(1);
  ck_assert_int_eq(uvq_broadcast_init(NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  ck_assert_int_eq(uvq_broadcast_init(&other), 0);
  tsink_init(&sinks[0], NULL, 0);
  ck_assert_int_eq(uvq_broadcast_add(NULL, &sinks[0].sink), UVQ_EINVAL);
  ck_assert_int_eq(uvq_broadcast_add(&bc, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &bc.sink), UVQ_EINVAL);
  ck_assert_int_eq(uvq_broadcast_remove(NULL, &sinks[0].sink), UVQ_EINVAL);
  ck_assert_int_eq(uvq_broadcast_remove(&bc, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_broadcast_remove(&bc, &sinks[0].sink), UVQ_ENOENT);
  ck_assert_int_eq(uvq_broadcast_stats(NULL, &st), UVQ_EINVAL);
  ck_assert_int_eq(uvq_broadcast_stats(&bc, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_sink_write(&bc.sink, NULL), UVQ_EINVAL);
  /* One upstream per sink. */
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  ck_assert_int_eq(uvq_broadcast_add(&other, &sinks[0].sink), UVQ_EBUSY);
  /* Broadcasters nest; a cycle cannot recurse forever: the inner write
   * into the outer one is refused (UVQ_EBUSY, a failure for that sink). */
  ck_assert_int_eq(uvq_broadcast_add(&bc, &other.sink), 0);
  ck_assert_int_eq(uvq_broadcast_add(&other, &bc.sink), 0);
  ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[0].ev), 0);
  ck_assert_uint_eq(sinks[0].got, 1);
  ck_assert_int_eq(uvq_broadcast_stats(&other, &st), 0);
  ck_assert_uint_eq(st.failures, 1);
  /* A closed sink cannot be added. */
  tsink_init(&sinks[1], NULL, 0);
  ck_assert_int_eq(uvq_sink_close(&sinks[1].sink, NULL), 0);
  ck_assert_int_eq(uvq_broadcast_add(&other, &sinks[1].sink), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_broadcast_remove(&other, &bc.sink), 0);
  /* other first: closing bc would close other (its sink) with bc's own
   * callback, and a second close of other would then not call ours. */
  ck_assert_int_eq(uvq_sink_close(&other.sink, count_close), 0);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 2);
  uvq_event_unref(&items[0].ev);
  items_released_once(1);
  finish_loop();
}
END_TEST

/* Sink 1's write makes sink 0, which said "again" a moment earlier in the
 * same fan-out, ready: the broadcaster must notice and finish at once. */
static int ready_other_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  (void) ev;
  uvq_sink_ready(&sinks[0].sink);
  return TS_TAKE;
}

START_TEST(broadcast_ready_during_fanout_is_not_lost) {
  uvq_broadcast_stats_t st;
  unsigned i;
  items_init(3);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  tsink_init(&sinks[0], again_once_hook, 0);
  tsink_init(&sinks[1], ready_other_hook, 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[1].sink), 0);
  for (i = 0; i < 3; i++) {
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[i].ev), 0);
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 1); /* not held */
    uvq_event_unref(&items[i].ev);
  }
  for (i = 0; i < 3; i++) {
    ck_assert_uint_eq(sinks[0].seen[i], 1);
    ck_assert_uint_eq(sinks[1].seen[i], 1);
  }
  ck_assert_uint_eq(sinks[0].calls, 6); /* each event: again, then taken */
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.deliveries, 6);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 1);
  items_released_once(3);
  finish_loop();
}
END_TEST

/* Sink 1's write removes sink 0, which said "again" a moment earlier in
 * the same fan-out: nobody owes the event any more, so the broadcaster
 * must neither keep it nor refuse the next one. */
static int remove_first_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  if (ITEM(ev)->id == 0 && uvq_broadcast_remove(&bc, &sinks[0].sink) != 0)
    return UV_EIO; /* counted as a failure: the test sees it */
  return TS_TAKE;
}

START_TEST(broadcast_again_then_removed_in_the_same_fanout_holds_nothing) {
  uvq_broadcast_stats_t st;
  unsigned i;
  items_init(3);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  tsink_init(&sinks[0], again_once_hook, 0);
  tsink_init(&sinks[1], remove_first_hook, 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[1].sink), 0);
  ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[0].ev), 0);
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1); /* not held */
  uvq_event_unref(&items[0].ev);
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.sinks, 1);
  ck_assert_uint_eq(st.abandoned, 1); /* sink 0 never got event 0 */
  ck_assert_uint_eq(st.deliveries, 1);
  /* The next events are taken, not refused with UVQ_EAGAIN. */
  for (i = 1; i < 3; i++) {
    ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[i].ev), 0);
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 1);
    uvq_event_unref(&items[i].ev);
  }
  for (i = 0; i < 3; i++) {
    ck_assert_uint_eq(sinks[0].seen[i], 0);
    ck_assert_uint_eq(sinks[1].seen[i], 1);
  }
  ck_assert_uint_eq(sinks[0].calls, 1); /* its "again" for event 0 */
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.failures, 0);
  ck_assert_uint_eq(st.deliveries, 3);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 1);
  items_released_once(3);
  finish_loop();
}
END_TEST

START_TEST(broadcast_add_reports_enomem_and_changes_nothing) {
  uvq_broadcast_stats_t st;
  const char* why = NULL;
  unsigned i;

  if (!uvq_fault_available(UVQ_FAULT_ALLOC, &why)) {
    fprintf(stderr, "skipped %s: %s\n", __func__, why);
    finish_loop();
    return;
  }
  items_init(1);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  for (i = 0; i < 5; i++)
    tsink_init(&sinks[i], NULL, 0);
  for (i = 0; i < 4; i++) /* fills the first allocation */
    ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[i].sink), 0);
  uvq_fault_arm(1, UVQ_FAULT_ALLOC, 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[4].sink), UVQ_ENOMEM);
  ck_assert_uint_eq(uvq_fault_disarm(), 1);
  /* Nothing changed: four sinks, and the fifth has no upstream. */
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &st), 0);
  ck_assert_uint_eq(st.sinks, 4);
  ck_assert_int_eq(uvq_sink_set_ready_cb(&sinks[4].sink, writer_on_ready,
                                         NULL), 0);
  ck_assert_int_eq(uvq_sink_set_ready_cb(&sinks[4].sink, NULL, NULL), 0);
  ck_assert_int_eq(uvq_sink_write(&bc.sink, &items[0].ev), 0);
  uvq_event_unref(&items[0].ev);
  for (i = 0; i < 4; i++)
    ck_assert_uint_eq(sinks[i].got, 1);
  ck_assert_uint_eq(sinks[4].got, 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[4].sink), 0);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  for (i = 0; i < 5; i++)
    ck_assert_uint_eq(sinks[i].closes, 1);
  items_released_once(1);
  finish_loop();
}
END_TEST

/* ========================================================================= */
/* Filter                                                                     */
/* ========================================================================= */

static uvq_filter_t flt;

static int match_even(const uvq_event_t* ev, void* arg) {
  unsigned* calls = arg;
  (*calls)++;
  return ITEM(ev)->id % 2 == 0;
}

START_TEST(filter_passes_exactly_the_even_half) {
  enum { N = 100 };
  uvq_filter_stats_t st;
  unsigned calls = 0;
  unsigned i;

  items_init(N);
  tsink_init(&sinks[0], NULL, 0);
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[0].sink, match_even, &calls),
                   0);
  ck_assert_ptr_eq(flt.sink.data, &flt);
  for (i = 0; i < N; i++) {
    ck_assert_int_eq(uvq_sink_write(&flt.sink, &items[i].ev), 0);
    ck_assert_uint_eq(uvq_event_refs(&items[i].ev), 1); /* borrowed only */
    uvq_event_unref(&items[i].ev);
  }
  ck_assert_uint_eq(calls, N);
  ck_assert_uint_eq(sinks[0].got, N / 2);
  for (i = 0; i < N; i++)
    ck_assert_uint_eq(sinks[0].seen[i], i % 2 == 0);
  ck_assert_int_eq(uvq_filter_stats(&flt, &st), 0);
  ck_assert_uint_eq(st.matched, N / 2);
  ck_assert_uint_eq(st.unmatched, N / 2);
  ck_assert_int_eq(uvq_sink_close(&flt.sink, count_close), 0);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(closed_cbs, 1);
  items_released_once(N);
  finish_loop();
}
END_TEST

static int match_all(const uvq_event_t* ev, void* arg) {
  (void) ev;
  (void) arg;
  return 1;
}

START_TEST(filter_close_twice_closes_destination_then_every_write_fails) {
  int i;
  items_init(1);
  tsink_init(&sinks[0], NULL, 1); /* dst closes on a later iteration */
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[0].sink, match_all, NULL), 0);
  second_close_cbs = 0;
  ck_assert_int_eq(uvq_sink_close(&flt.sink, count_close), 0);
  ck_assert_int_eq(uvq_sink_close(&flt.sink, second_close), 0);
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(uvq_sink_write(&flt.sink, &items[0].ev), UVQ_ECLOSED);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(closed_cbs, 0); /* waits for dst */
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(second_close_cbs, 0); /* the first close's cb, once */
  ck_assert_uint_eq(sinks[0].got, 0);
  uvq_event_unref(&items[0].ev);
  items_released_once(1);
}
END_TEST

START_TEST(filter_passes_again_through_and_forwards_ready) {
  writer_t w;
  items_init(3);
  tsink_init(&sinks[0], again_once_hook, 0);
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[0].sink, match_all, NULL), 0);
  writer_start(&w, &flt.sink, 3);
  ck_assert_uint_eq(w.next, 0); /* not taken: the writer keeps event 0 */
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1);
  uvq_sink_ready(&sinks[0].sink);
  ck_assert_uint_eq(w.readies, 1);
  ck_assert_uint_eq(w.next, 1);
  uvq_sink_ready(&sinks[0].sink);
  uvq_sink_ready(&sinks[0].sink);
  ck_assert_uint_eq(w.next, 3);
  ck_assert_uint_eq(sinks[0].got, 3);
  ck_assert_uint_eq(sinks[0].out_of_order, 0);
  ck_assert_int_eq(uvq_sink_close(&flt.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 1);
  /* After close, dst's readiness no longer reaches the filter's upstream. */
  uvq_sink_ready(&sinks[0].sink);
  ck_assert_uint_eq(w.readies, 3);
  items_released_once(3);
  finish_loop();
}
END_TEST

/* dst said "again" to the writer through the filter; then the filter is
 * closed (closing dst). The writer must hear about it. */
START_TEST(filter_close_while_upstream_waits_tells_it) {
  writer_t w;
  items_init(2);
  tsink_init(&sinks[0], again_once_hook, 1);
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[0].sink, match_all, NULL), 0);
  writer_start(&w, &flt.sink, 2);
  ck_assert_uint_eq(w.next, 0);
  ck_assert_int_eq(uvq_sink_close(&flt.sink, count_close), 0);
  ck_assert_uint_eq(w.readies, 1);
  ck_assert_uint_eq(w.next, 2);
  ck_assert_uint_eq(w.errors, 2);
  ck_assert_int_eq(w.last_error, UVQ_ECLOSED);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].got, 0);
  items_released_once(2);
}
END_TEST

/* dst closes the filter from inside its own write and then says "again":
 * the filter answers UVQ_ECLOSED (no ready would ever follow). */
static int close_filter_then_again_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  (void) ev;
  ck_assert_int_eq(uvq_sink_close(&flt.sink, count_close), 0);
  return UVQ_EAGAIN;
}

START_TEST(filter_closed_inside_dst_write_never_answers_again) {
  items_init(1);
  tsink_init(&sinks[0], close_filter_then_again_hook, 1);
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[0].sink, match_all, NULL), 0);
  ck_assert_int_eq(uvq_sink_write(&flt.sink, &items[0].ev), UVQ_ECLOSED);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  uvq_event_unref(&items[0].ev);
  items_released_once(1);
}
END_TEST

START_TEST(filter_rejects_bad_input) {
  uvq_filter_t other;
  tsink_init(&sinks[0], NULL, 0);
  ck_assert_int_eq(uvq_filter_init(NULL, &sinks[0].sink, match_all, NULL),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_filter_init(&flt, NULL, match_all, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[0].sink, NULL, NULL),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_filter_init(&flt, &flt.sink, match_all, NULL),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[0].sink, match_all, NULL), 0);
  ck_assert_int_eq(uvq_filter_init(&other, &sinks[0].sink, match_all, NULL),
                   UVQ_EBUSY);
  ck_assert_int_eq(uvq_filter_stats(&flt, NULL), UVQ_EINVAL);
  tsink_init(&sinks[1], NULL, 0);
  ck_assert_int_eq(uvq_sink_close(&sinks[1].sink, NULL), 0);
  ck_assert_int_eq(uvq_filter_init(&other, &sinks[1].sink, match_all, NULL),
                   UVQ_ECLOSED);
  /* A dst closed by its owner first: the filter's close does not wait. */
  ck_assert_int_eq(uvq_sink_close(&sinks[0].sink, tsink_close_cb), 0);
  ck_assert_int_eq(uvq_sink_close(&flt.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(sinks[0].close_cbs, 1);
  finish_loop();
}
END_TEST

/* ========================================================================= */
/* Retrying sink                                                              */
/* ========================================================================= */

static uvq_retry_t rty;

/* xorshift64: the test's own deterministic coin. */
static uint64_t test_rand(uint64_t* s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* go-events' flaky sink: every write fails for the first 50 calls, then 90%
 * of them fail. */
static int flaky_hook(tsink_t* t, uvq_event_t* ev) {
  (void) ev;
  if (t->calls <= 50)
    return UV_EIO;
  return test_rand(&t->rng) % 10 != 0 ? UV_EIO : TS_TAKE;
}

static void retry_delivers_all(const uvq_retry_strategy_t* strategy) {
  enum { N = 100 };
  uvq_retry_stats_t st;
  writer_t w;
  unsigned i;

  items_init(N);
  tsink_init(&sinks[0], flaky_hook, 0);
  sinks[0].rng = UINT64_C(0x2545F4914F6CDD1D);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, strategy), 0);
  writer_start(&w, &rty.sink, N);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);

  ck_assert_uint_eq(w.next, N);
  ck_assert_uint_eq(w.errors, 0);
  ck_assert_uint_eq(sinks[0].got, N);
  ck_assert_uint_eq(sinks[0].out_of_order, 0);
  for (i = 0; i < N; i++)
    ck_assert_uint_eq(sinks[0].seen[i], 1);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.written, N);
  ck_assert_uint_eq(st.delivered, N);
  ck_assert_uint_eq(st.dropped, 0);
  ck_assert_uint_eq(st.attempts, sinks[0].calls);
  ck_assert_uint_eq(st.failures, sinks[0].calls - N);
  ck_assert_uint_eq(st.retries, st.failures);
  ck_assert_uint_ge(st.failures, 50);
  items_released_once(N);

  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 0); /* the timer closes on the loop */
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].closes, 1); /* go-events forgets this one */
}

START_TEST(retry_breaker_delivers_all_from_a_flaky_sink) {
  uvq_breaker_t br;
  ck_assert_int_eq(uvq_breaker_init(&br, 3, 10), 0);
  retry_delivers_all(&br.strategy);
}
END_TEST

START_TEST(retry_backoff_delivers_all_from_a_flaky_sink) {
  uvq_backoff_t bo;
  ck_assert_int_eq(uvq_backoff_init(&bo, 1, 1, 5, 42), 0);
  retry_delivers_all(&bo.strategy);
}
END_TEST

START_TEST(retry_close_twice_then_every_write_fails) {
  uvq_breaker_t br;
  int i;
  items_init(1);
  tsink_init(&sinks[0], NULL, 0);
  ck_assert_int_eq(uvq_breaker_init(&br, 3, 10), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &br.strategy),
                   0);
  second_close_cbs = 0;
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, second_close), 0);
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(uvq_sink_write(&rty.sink, &items[0].ev), UVQ_ECLOSED);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(second_close_cbs, 0);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(sinks[0].calls, 0);
  uvq_event_unref(&items[0].ev);
  items_released_once(1);
}
END_TEST

static int fail_always_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  (void) ev;
  return UV_EIO;
}

START_TEST(retry_close_during_backoff_cancels_timer_and_releases_once) {
  uvq_breaker_t br;
  uvq_retry_stats_t st;
  writer_t w;

  items_init(2);
  tsink_init(&sinks[0], fail_always_hook, 1);
  /* One failure opens the breaker for a minute: far longer than the test's
   * timeout, so a timer that was not cancelled would fail the test. */
  ck_assert_int_eq(uvq_breaker_init(&br, 1, 60000), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &br.strategy),
                   0);
  writer_start(&w, &rty.sink, 2);
  ck_assert_uint_eq(w.next, 1); /* event 0 taken, event 1 refused: busy */
  ck_assert_uint_eq(w.again, 1);
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1); /* the sink's own */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_NOWAIT), 1); /* the timer runs */

  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  ck_assert_uint_eq(items[0].releases, 1);
  /* The writer waited on UVQ_EAGAIN: the close tells it once, and its
   * retry learns UVQ_ECLOSED. */
  ck_assert_uint_eq(w.readies, 1);
  ck_assert_uint_eq(w.next, 2);
  ck_assert_int_eq(w.last_error, UVQ_ECLOSED);
  ck_assert_int_eq(uvq_sink_write(&rty.sink, &items[0].ev), UVQ_ECLOSED);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(w.readies, 1);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.attempts, 1);
  ck_assert_uint_eq(st.dropped, 1);
  ck_assert_uint_eq(st.delivered, 0);
  items_released_once(2);
}
END_TEST

/* A strategy that never waits and always retries, in front of a sink that
 * always fails: every retry must wait for a later loop iteration, or the
 * loop would never poll for I/O again. (libuv 1.44 runs a timer restarted
 * with 0 from its own callback again in the same pass: a zero wait is
 * rounded up to 1 ms.) A check handle counts the loop's iterations; the
 * sink closes the retrying sink after a few attempts, so that a spin ends
 * and the assertion, not the timeout, reports it. */
static unsigned zw_iterations, zw_in_iteration, zw_most_in_one;

static void zw_on_check(uv_check_t* h) {
  (void) h;
  zw_iterations++;
  zw_in_iteration = 0;
}

static int zw_fail_hook(tsink_t* t, uvq_event_t* ev) {
  (void) ev;
  if (++zw_in_iteration > zw_most_in_one)
    zw_most_in_one = zw_in_iteration;
  if (t->calls == 6)
    ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  return UV_EIO;
}

START_TEST(retry_zero_wait_cannot_starve_the_loop) {
  uvq_retry_strategy_t never_wait = {NULL, NULL, NULL, NULL};
  uvq_retry_stats_t st;
  uv_check_t check;

  zw_iterations = zw_in_iteration = zw_most_in_one = 0;
  items_init(1);
  tsink_init(&sinks[0], zw_fail_hook, 0);
  ck_assert_int_eq(uv_check_init(&loop, &check), 0);
  ck_assert_int_eq(uv_check_start(&check, zw_on_check), 0);
  uv_unref((uv_handle_t*) &check);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &never_wait),
                   0);
  ck_assert_int_eq(uvq_sink_write(&rty.sink, &items[0].ev), 0); /* taken */
  uvq_event_unref(&items[0].ev);
  zw_in_iteration = 0; /* that attempt ran outside the loop */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].calls, 6);
  ck_assert_uint_le(zw_most_in_one, 1); /* one attempt per iteration */
  ck_assert_uint_ge(zw_iterations, 5);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.attempts, 6);
  ck_assert_uint_eq(st.failures, 6);
  ck_assert_uint_eq(st.retries, 5);
  ck_assert_uint_eq(st.dropped, 1);
  uv_close((uv_handle_t*) &check, NULL);
  finish_loop();
  items_released_once(1);
}
END_TEST

START_TEST(retry_passes_dst_again_through_and_forwards_ready) {
  uvq_backoff_t bo;
  writer_t w;
  items_init(2);
  tsink_init(&sinks[0], again_once_hook, 0);
  ck_assert_int_eq(uvq_backoff_init(&bo, 1, 1, 5, 7), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &bo.strategy),
                   0);
  writer_start(&w, &rty.sink, 2);
  ck_assert_uint_eq(w.next, 0); /* dst's UVQ_EAGAIN, passed through */
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1);
  uvq_sink_ready(&sinks[0].sink);
  ck_assert_uint_eq(w.readies, 1);
  ck_assert_uint_eq(w.next, 1);
  uvq_sink_ready(&sinks[0].sink);
  ck_assert_uint_eq(w.next, 2);
  ck_assert_uint_eq(sinks[0].got, 2);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  items_released_once(2);
}
END_TEST

/* A user-defined strategy: wait 1 ms before every retry, drop an event
 * after its third failure. Counts its calls. */
typedef struct {
  unsigned proceeds;
  unsigned failures;
  unsigned successes;
  unsigned streak;
} drop3_t;

static uint64_t drop3_proceed(void* state, const uvq_event_t* ev) {
  drop3_t* s = state;
  (void) ev;
  s->proceeds++;
  return s->streak > 0 ? 1 : 0;
}

static int drop3_failure(void* state, const uvq_event_t* ev, int err) {
  drop3_t* s = state;
  (void) ev;
  ck_assert_int_eq(err, UV_EIO);
  s->failures++;
  if (++s->streak < 3)
    return 0;
  s->streak = 0;
  return 1;
}

static void drop3_success(void* state, const uvq_event_t* ev) {
  drop3_t* s = state;
  (void) ev;
  s->successes++;
  s->streak = 0;
}

/* Fails events with an odd id, takes the others. */
static int fail_odd_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  return ITEM(ev)->id % 2 != 0 ? UV_EIO : TS_TAKE;
}

START_TEST(retry_user_strategy_drops_and_counts) {
  enum { N = 6 };
  drop3_t s = { 0, 0, 0, 0 };
  uvq_retry_strategy_t strategy = { drop3_proceed, drop3_failure,
                                    drop3_success, &s };
  uvq_retry_stats_t st;
  writer_t w;

  items_init(N);
  tsink_init(&sinks[0], fail_odd_hook, 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &strategy),
                   0);
  writer_start(&w, &rty.sink, N);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(w.next, N);
  ck_assert_uint_eq(w.errors, 0);
  ck_assert_uint_eq(sinks[0].got, N / 2);
  ck_assert_uint_eq(s.successes, N / 2);
  ck_assert_uint_eq(s.failures, 3 * N / 2);
  /* proceed once per attempt: before each first attempt and each retry. */
  ck_assert_uint_eq(s.proceeds, N + 2 * N / 2);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.written, N);
  ck_assert_uint_eq(st.delivered, N / 2);
  ck_assert_uint_eq(st.dropped, N / 2);
  ck_assert_uint_eq(st.attempts, N / 2 + 3 * N / 2);
  ck_assert_uint_eq(st.retries, 2 * N / 2);
  items_released_once(N);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
}
END_TEST

/* The wrapped sink's write closes the retrying sink, or writes into it. */
static int close_retry_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  ck_assert_int_eq(uvq_sink_write(&rty.sink, &items[9].ev), UVQ_EBUSY);
  if (ITEM(ev)->id == 1) {
    ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
    return UV_EIO; /* the failure comes after the close */
  }
  return TS_TAKE;
}

START_TEST(retry_closed_from_inside_the_wrapped_write) {
  uvq_breaker_t br;
  uvq_retry_stats_t st;
  items_init(10);
  tsink_init(&sinks[0], close_retry_hook, 0);
  ck_assert_int_eq(uvq_breaker_init(&br, 3, 10), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &br.strategy),
                   0);
  ck_assert_int_eq(uvq_sink_write(&rty.sink, &items[0].ev), 0);
  /* Closed during the write: not taken, so the writer keeps event 1. */
  ck_assert_int_eq(uvq_sink_write(&rty.sink, &items[1].ev), UVQ_ECLOSED);
  ck_assert_uint_eq(uvq_event_refs(&items[1].ev), 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(sinks[0].closed_in_write, 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.delivered, 1);
  ck_assert_uint_eq(st.written, 1);
  ck_assert_uint_eq(st.dropped, 0);
  ck_assert_uint_eq(st.attempts, 2);
  ck_assert_uint_eq(st.failures, 1); /* event 1's, after the close */
  ck_assert_uint_eq(st.retries, 0);
  for (unsigned i = 0; i < 10; i++)
    uvq_event_unref(&items[i].ev);
  items_released_once(10);
}
END_TEST

/* Fails the first attempt at event 0; on the retry (from the timer) closes
 * the retrying sink and fails again. */
static int close_on_retry_hook(tsink_t* t, uvq_event_t* ev) {
  (void) ev;
  if (t->calls == 2)
    ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  return UV_EIO;
}

START_TEST(retry_closed_from_inside_a_retry_drops_the_event_once) {
  uvq_breaker_t br;
  uvq_retry_stats_t st;
  items_init(1);
  tsink_init(&sinks[0], close_on_retry_hook, 0);
  ck_assert_int_eq(uvq_breaker_init(&br, 3, 10), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &br.strategy),
                   0);
  ck_assert_int_eq(uvq_sink_write(&rty.sink, &items[0].ev), 0);
  uvq_event_unref(&items[0].ev);
  ck_assert_uint_eq(items[0].releases, 0); /* held for the retry */
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].calls, 2);
  ck_assert_uint_eq(sinks[0].closed_in_write, 0);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.dropped, 1);
  ck_assert_uint_eq(st.attempts, 2);
  ck_assert_uint_eq(st.failures, 2); /* the second one after the close */
  ck_assert_uint_eq(st.retries, 1);
  items_released_once(1);
}
END_TEST

START_TEST(retry_wrapped_sink_closed_is_terminal) {
  uvq_breaker_t br;
  uvq_retry_stats_t st;
  writer_t w;
  items_init(3);
  tsink_init(&sinks[0], fail_always_hook, 0);
  ck_assert_int_eq(uvq_breaker_init(&br, 5, 1), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &br.strategy),
                   0);
  writer_start(&w, &rty.sink, 3);
  ck_assert_uint_eq(w.next, 1); /* event 0 held for a retry */
  /* Its owner closes the wrapped sink: the held event can never go. */
  ck_assert_int_eq(uvq_sink_close(&sinks[0].sink, tsink_close_cb), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(items[0].releases, 1);
  ck_assert_uint_eq(w.next, 3);
  ck_assert_uint_eq(w.errors, 2); /* events 1 and 2: not taken */
  ck_assert_int_eq(w.last_error, UVQ_ECLOSED);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.dropped, 1);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  items_released_once(3);
}
END_TEST

/* The same with a strategy that waits before every attempt (a rate
 * limiter; uvq_backoff after a failure does the same): once dst is closed,
 * a write must say so, not take the event into a wait that can only end in
 * a drop. */
static unsigned wait_always_calls;

static uint64_t wait_always(void* state, const uvq_event_t* ev) {
  (void) state;
  (void) ev;
  wait_always_calls++;
  return 1;
}

/* UVQ_ECLOSED is final even from a dst nobody closed through uvq (a channel
 * sink whose channel another thread closed, a sink whose peer went away):
 * after one, writes are refused at once, whatever the strategy would wait. */
static int eclosed_hook(tsink_t* t, uvq_event_t* ev) {
  (void) t;
  (void) ev;
  return UVQ_ECLOSED;
}

/* Event 0 is taken into its wait; then dst is gone: closed by its owner, or
 * (hook) answering UVQ_ECLOSED to the retry. Every later write is refused. */
static void retry_refuses_once_dst_is_gone(tsink_hook hook, int owner_closes) {
  uvq_retry_strategy_t waits = {wait_always, NULL, NULL, NULL};
  uvq_retry_stats_t st;
  writer_t w;
  items_init(4);
  wait_always_calls = 0;
  tsink_init(&sinks[0], hook, 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &waits), 0);
  writer_start(&w, &rty.sink, 3);
  ck_assert_uint_eq(w.next, 1); /* event 0 taken into its wait */
  ck_assert_uint_eq(w.waiting, 1);
  if (owner_closes)
    ck_assert_int_eq(uvq_sink_close(&sinks[0].sink, tsink_close_cb), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uvq_sink_is_closed(&sinks[0].sink), owner_closes);
  ck_assert_uint_eq(sinks[0].calls, owner_closes ? 0 : 1); /* asked once */
  ck_assert_uint_eq(items[0].releases, 1);
  ck_assert_uint_eq(w.next, 3);
  ck_assert_uint_eq(w.errors, 2); /* events 1 and 2: not taken */
  ck_assert_int_eq(w.last_error, UVQ_ECLOSED);
  ck_assert_uint_eq(wait_always_calls, 1); /* never asked for 1 and 2 */
  ck_assert_uint_eq(sinks[0].got, 0);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.written, 1);
  ck_assert_uint_eq(st.dropped, 1);
  ck_assert_uint_eq(st.attempts, 1);
  ck_assert_uint_eq(st.failures, 0);
  /* And at once, with nothing pending, whoever writes next. */
  ck_assert_int_eq(uvq_sink_write(&rty.sink, &items[3].ev), UVQ_ECLOSED);
  ck_assert_uint_eq(items[3].releases, 0); /* not taken: still ours */
  uvq_event_unref(&items[3].ev);
  ck_assert_uint_eq(wait_always_calls, 1);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  items_released_once(4);
}

START_TEST(retry_closed_dst_refuses_writes_a_waiting_strategy_would_take) {
  retry_refuses_once_dst_is_gone(NULL, 1);
}
END_TEST

START_TEST(retry_remembers_that_dst_said_eclosed) {
  retry_refuses_once_dst_is_gone(eclosed_hook, 0);
}
END_TEST

/* The breaker's wait is measured from the failure on the monotonic clock,
 * not from the loop's cached time: a write made late in a long loop
 * iteration must not have its backoff shortened by that iteration's age.
 * (A lower bound only: a busy machine can make the retry later, never
 * earlier.) */
static uint64_t attempt_ns[2];

static int fail_once_timed_hook(tsink_t* t, uvq_event_t* ev) {
  (void) ev;
  if (t->calls <= 2)
    attempt_ns[t->calls - 1] = uv_hrtime();
  return t->calls == 1 ? UV_EIO : TS_TAKE;
}

static writer_t late_writer;

static void write_late(uv_timer_t* timer) {
  uint64_t until = uv_hrtime() + 40 * 1000000u; /* a long callback */
  while (uv_hrtime() < until) {
  }
  writer_start(&late_writer, &rty.sink, 1);
  /* Something that keeps the loop from blocking in its next poll (a
   * closing handle here; I/O or an idle handle do the same): the next
   * iteration then updates the loop's clock and runs every timer whose
   * cached-time deadline has passed. */
  uv_close((uv_handle_t*) timer, NULL);
}

START_TEST(retry_breaker_waits_its_whole_backoff_after_a_long_callback) {
  uvq_breaker_t br;
  uv_timer_t t;
  items_init(1);
  attempt_ns[0] = attempt_ns[1] = 0;
  tsink_init(&sinks[0], fail_once_timed_hook, 0);
  ck_assert_int_eq(uvq_breaker_init(&br, 1, 30), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &br.strategy),
                   0);
  ck_assert_int_eq(uv_timer_init(&loop, &t), 0);
  ck_assert_int_eq(uv_timer_start(&t, write_late, 0, 0), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(sinks[0].calls, 2);
  ck_assert_uint_eq(sinks[0].got, 1);
  ck_assert_msg(attempt_ns[1] - attempt_ns[0] >= 30 * 1000000u,
                "retried %.3f ms after the failure, backoff 30 ms",
                (double) (attempt_ns[1] - attempt_ns[0]) / 1e6);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  items_released_once(1);
}
END_TEST

/* A retry meets dst's own "again": the held event waits for dst's ready,
 * not for a timer. */
static int fail_then_again_hook(tsink_t* t, uvq_event_t* ev) {
  (void) ev;
  if (t->calls == 1)
    return UV_EIO;
  if (t->calls == 2)
    return UVQ_EAGAIN;
  return TS_TAKE;
}

START_TEST(retry_waits_for_dst_ready_during_a_retry) {
  uvq_breaker_t br;
  uvq_retry_stats_t st;
  writer_t w;
  items_init(2);
  tsink_init(&sinks[0], fail_then_again_hook, 0);
  ck_assert_int_eq(uvq_breaker_init(&br, 5, 1), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &br.strategy),
                   0);
  writer_start(&w, &rty.sink, 2);
  ck_assert_uint_eq(w.next, 1); /* event 0 held, event 1 refused */
  while (sinks[0].calls < 2)
    uv_run(&loop, UV_RUN_ONCE);
  /* dst said "again" to the retry: no timer runs, the loop is idle. */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_NOWAIT), 0);
  ck_assert_uint_eq(uvq_event_refs(&items[0].ev), 1);
  ck_assert_uint_eq(w.readies, 0);
  uvq_sink_ready(&sinks[0].sink);
  ck_assert_uint_eq(items[0].releases, 1);
  ck_assert_uint_eq(w.readies, 1);
  ck_assert_uint_eq(w.next, 2);
  ck_assert_uint_eq(sinks[0].got, 2);
  ck_assert_int_eq(uvq_retry_stats(&rty, &st), 0);
  ck_assert_uint_eq(st.attempts, 4);
  ck_assert_uint_eq(st.failures, 1);
  ck_assert_uint_eq(st.delivered, 2);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  items_released_once(2);
}
END_TEST

START_TEST(retry_rejects_bad_input) {
  uvq_breaker_t br;
  uvq_retry_t other;
  ck_assert_int_eq(uvq_breaker_init(NULL, 1, 1), UVQ_EINVAL);
  ck_assert_int_eq(uvq_backoff_init(NULL, 1, 1, 1, 1), UVQ_EINVAL);
  ck_assert_int_eq(uvq_breaker_init(&br, 1, 1), 0);
  tsink_init(&sinks[0], NULL, 0);
  ck_assert_int_eq(uvq_retry_init(NULL, &rty, &sinks[0].sink, &br.strategy),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_retry_init(&loop, NULL, &sinks[0].sink, &br.strategy),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, NULL, &br.strategy),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, NULL),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &rty.sink, &br.strategy),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[0].sink, &br.strategy),
                   0);
  ck_assert_int_eq(uvq_retry_init(&loop, &other, &sinks[0].sink,
                                  &br.strategy), UVQ_EBUSY);
  ck_assert_int_eq(uvq_retry_stats(&rty, NULL), UVQ_EINVAL);
  tsink_init(&sinks[1], NULL, 0);
  ck_assert_int_eq(uvq_sink_close(&sinks[1].sink, NULL), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &other, &sinks[1].sink,
                                  &br.strategy), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  finish_loop(); /* the failed inits left no handle behind */
  ck_assert_uint_eq(closed_cbs, 1);
}
END_TEST

START_TEST(backoff_waits_are_bounded_random_and_reset) {
  uvq_backoff_t bo;
  uvq_backoff_t twin;
  uvq_retry_strategy_t* s = &bo.strategy;
  uint64_t bound;
  uint64_t d;
  unsigned i;
  unsigned k;
  unsigned nonzero = 0;

  ck_assert_int_eq(uvq_backoff_init(&bo, 1, 1, 5, 99), 0);
  ck_assert_int_eq(uvq_backoff_init(&twin, 1, 1, 5, 99), 0);
  ck_assert_uint_eq(s->proceed(s->state, NULL), 0); /* no failure: no wait */
  for (i = 1; i <= 70; i++) {
    ck_assert_int_eq(s->failure(s->state, NULL, UV_EIO), 0); /* never drop */
    twin.strategy.failure(twin.strategy.state, NULL, UV_EIO);
    bound = i < 4 ? 1 + (UINT64_C(1) << (i - 1)) : 5;
    for (k = 0; k < 200; k++) {
      d = s->proceed(s->state, NULL);
      ck_assert_uint_lt(d, bound);
      nonzero += d != 0;
      /* Same seed, same sequence. */
      ck_assert_uint_eq(twin.strategy.proceed(twin.strategy.state, NULL), d);
    }
  }
  ck_assert_uint_gt(nonzero, 0); /* it does wait, at random */
  s->success(s->state, NULL);
  ck_assert_uint_eq(s->proceed(s->state, NULL), 0);

  /* Zero factor and max select go-events' defaults; huge counts saturate. */
  ck_assert_int_eq(uvq_backoff_init(&bo, 0, 0, 0, 1), 0);
  for (i = 0; i < 100; i++)
    s->failure(s->state, NULL, UV_EIO);
  for (k = 0; k < 100; k++)
    ck_assert_uint_lt(s->proceed(s->state, NULL),
                      UVQ_BACKOFF_DEFAULT_MAX_MS);
  /* A zero seed still seeds (from the clock and the address): two such
   * backoffs draw different waits (the same 50 draws from 0..19 by chance:
   * 20^-50). */
  ck_assert_int_eq(uvq_backoff_init(&bo, 10, 10, 100, 0), 0);
  ck_assert_int_eq(uvq_backoff_init(&twin, 10, 10, 100, 0), 0);
  s->failure(s->state, NULL, UV_EIO);
  twin.strategy.failure(twin.strategy.state, NULL, UV_EIO);
  {
    unsigned same = 0;
    for (k = 0; k < 50; k++) {
      d = s->proceed(s->state, NULL);
      ck_assert_uint_lt(d, 20);
      same += d == twin.strategy.proceed(twin.strategy.state, NULL);
    }
    ck_assert_uint_lt(same, 50);
  }
  finish_loop(); /* the fixture's loop, unused here */
}
END_TEST

START_TEST(breaker_opens_at_threshold_and_resets_on_success) {
  uvq_breaker_t br;
  uvq_retry_strategy_t* s = &br.strategy;
  uint64_t d;
  ck_assert_int_eq(uvq_breaker_init(&br, 3, 1000), 0);
  ck_assert_uint_eq(s->proceed(s->state, NULL), 0);
  ck_assert_int_eq(s->failure(s->state, NULL, UV_EIO), 0);
  ck_assert_int_eq(s->failure(s->state, NULL, UV_EIO), 0);
  ck_assert_uint_eq(s->proceed(s->state, NULL), 0); /* below threshold */
  ck_assert_int_eq(s->failure(s->state, NULL, UV_EIO), 0);
  d = s->proceed(s->state, NULL);
  ck_assert_uint_gt(d, 0);
  ck_assert_uint_le(d, 1000);
  s->success(s->state, NULL);
  ck_assert_uint_eq(s->proceed(s->state, NULL), 0);
  /* Threshold 0: any failure opens it. */
  ck_assert_int_eq(uvq_breaker_init(&br, 0, 1000), 0);
  ck_assert_uint_eq(s->proceed(s->state, NULL), 0);
  s->failure(s->state, NULL, UV_EIO);
  ck_assert_uint_gt(s->proceed(s->state, NULL), 0);
  finish_loop(); /* the fixture's loop, unused here */
}
END_TEST

/* ========================================================================= */
/* Thread rule                                                                */
/* ========================================================================= */

typedef struct {
  int bc_write;
  int bc_add;
  int bc_remove;
  int bc_stats;
  int flt_write;
  int flt_stats;
  int rty_write;
  int rty_close;
  int rty_stats;
  int closed_write;
} foreign_t;

static void foreign_main(void* arg) {
  foreign_t* f = arg;
  uvq_broadcast_stats_t bs;
  uvq_filter_stats_t fs;
  uvq_retry_stats_t rs;
  f->bc_write = uvq_sink_write(&bc.sink, &items[0].ev);
  f->bc_add = uvq_broadcast_add(&bc, &sinks[3].sink);
  f->bc_remove = uvq_broadcast_remove(&bc, &sinks[0].sink);
  f->bc_stats = uvq_broadcast_stats(&bc, &bs);
  f->flt_write = uvq_sink_write(&flt.sink, &items[0].ev);
  f->flt_stats = uvq_filter_stats(&flt, &fs);
  f->rty_write = uvq_sink_write(&rty.sink, &items[0].ev);
  f->rty_close = uvq_sink_close(&rty.sink, NULL);
  f->rty_stats = uvq_retry_stats(&rty, &rs);
  /* The thread is checked before the state: a closed sink is still not
   * this thread's (and its state is not this thread's to read). */
  f->closed_write = uvq_sink_write(&sinks[5].sink, &items[0].ev);
  /* A sink created here belongs to this thread. */
  tsink_init(&sinks[4], NULL, 0);
}

/* -- reference counts --------------------------------------------------- */

static unsigned counted_releases;

static void count_release(uvq_event_t* ev) {
  (void) ev;
  counted_releases++;
}

START_TEST(event_refs_count_up_and_the_last_unref_releases_once) {
  uvq_event_t ev;
  counted_releases = 0;
  ck_assert_int_eq(uvq_event_init(&ev, count_release), 0);
  ck_assert_uint_eq(uvq_event_refs(&ev), 1);
  ck_assert_ptr_eq(uvq_event_ref(&ev), &ev);
  ck_assert_ptr_eq(uvq_event_ref(&ev), &ev);
  ck_assert_uint_eq(uvq_event_refs(&ev), 3);
  uvq_event_unref(&ev);
  uvq_event_unref(&ev);
  ck_assert_uint_eq(counted_releases, 0);
  ck_assert_uint_eq(uvq_event_refs(&ev), 1);
  uvq_event_unref(&ev); /* the last holder */
  ck_assert_uint_eq(counted_releases, 1);
  ck_assert_uint_eq(uvq_event_refs(&ev), 0);
  /* A NULL release is allowed: the last unref just ends the count. */
  ck_assert_int_eq(uvq_event_init(&ev, NULL), 0);
  uvq_event_unref(&ev);
  ck_assert_uint_eq(uvq_event_refs(&ev), 0);
  ck_assert_uint_eq(counted_releases, 1);
  finish_loop(); /* the fixture's loop: nothing may be left on it */
}
END_TEST

/* Three holders let go at the same moment from three threads, for many
 * events: each event is released exactly once, by whichever holder was
 * last, and the release sees what every holder wrote before its unref (a
 * plain write per holder: ThreadSanitizer reports it if the unref does not
 * order it before the release). The last holder's unref takes a path of its
 * own (a load instead of a locked decrement), so both paths race here. */
enum { RACE_EVENTS = 20000, RACE_HOLDERS = 3 };

typedef struct {
  uvq_event_t ev;
  int marks[RACE_HOLDERS];
  atomic_uint releases;
  unsigned missing_marks;
} race_ev_t;

static race_ev_t* race_evs;
static uv_barrier_t race_start;

static void race_release(uvq_event_t* ev) {
  race_ev_t* r = (race_ev_t*) ev;
  int k;
  for (k = 0; k < RACE_HOLDERS; k++)
    if (r->marks[k] != 1)
      r->missing_marks++;
  atomic_fetch_add(&r->releases, 1);
}

static void race_holder(void* arg) {
  int k = (int) (intptr_t) arg;
  unsigned i;
  uv_barrier_wait(&race_start);
  for (i = 0; i < RACE_EVENTS; i++) {
    /* Holders walk in different directions so that every order of the
     * three unrefs happens somewhere. */
    unsigned j = (k == 1) ? RACE_EVENTS - 1 - i : i;
    race_evs[j].marks[k] = 1;
    uvq_event_unref(&race_evs[j].ev);
  }
}

START_TEST(event_holders_unreffing_at_once_release_exactly_once) {
  uv_thread_t tids[RACE_HOLDERS];
  unsigned i, wrong = 0, missing = 0;
  int k;

  race_evs = calloc(RACE_EVENTS, sizeof(*race_evs));
  ck_assert_ptr_nonnull(race_evs);
  for (i = 0; i < RACE_EVENTS; i++) {
    ck_assert_int_eq(uvq_event_init(&race_evs[i].ev, race_release), 0);
    for (k = 1; k < RACE_HOLDERS; k++)
      uvq_event_ref(&race_evs[i].ev);
  }
  ck_assert_int_eq(uv_barrier_init(&race_start, RACE_HOLDERS), 0);
  for (k = 0; k < RACE_HOLDERS; k++)
    ck_assert_int_eq(uv_thread_create(&tids[k], race_holder,
                                      (void*) (intptr_t) k), 0);
  for (k = 0; k < RACE_HOLDERS; k++)
    ck_assert_int_eq(uv_thread_join(&tids[k]), 0);
  uv_barrier_destroy(&race_start);
  for (i = 0; i < RACE_EVENTS; i++) {
    if (atomic_load(&race_evs[i].releases) != 1)
      wrong++;
    missing += race_evs[i].missing_marks;
  }
  ck_assert_msg(wrong == 0, "%u of %d events not released exactly once",
                wrong, RACE_EVENTS);
  ck_assert_uint_eq(missing, 0);
  free(race_evs);
  finish_loop();
}
END_TEST

START_TEST(sinks_refuse_other_threads) {
  uvq_breaker_t br;
  uv_thread_t tid;
  foreign_t f;

  items_init(1);
  tsink_init(&sinks[0], NULL, 0);
  tsink_init(&sinks[1], NULL, 0);
  tsink_init(&sinks[2], NULL, 0);
  tsink_init(&sinks[3], NULL, 0);
  tsink_init(&sinks[5], NULL, 0);
  ck_assert_int_eq(uvq_sink_close(&sinks[5].sink, NULL), 0);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[1].sink, match_all, NULL), 0);
  ck_assert_int_eq(uvq_breaker_init(&br, 1, 1), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[2].sink, &br.strategy),
                   0);
  memset(&f, 0, sizeof(f));
  ck_assert_int_eq(uv_thread_create(&tid, foreign_main, &f), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  ck_assert_int_eq(f.bc_write, UVQ_ETHREAD);
  ck_assert_int_eq(f.bc_add, UVQ_ETHREAD);
  ck_assert_int_eq(f.bc_remove, UVQ_ETHREAD);
  ck_assert_int_eq(f.bc_stats, UVQ_ETHREAD);
  ck_assert_int_eq(f.flt_write, UVQ_ETHREAD);
  ck_assert_int_eq(f.flt_stats, UVQ_ETHREAD);
  ck_assert_int_eq(f.rty_write, UVQ_ETHREAD);
  ck_assert_int_eq(f.rty_close, UVQ_ETHREAD);
  ck_assert_int_eq(f.rty_stats, UVQ_ETHREAD);
  ck_assert_int_eq(f.closed_write, UVQ_ETHREAD);
  ck_assert_uint_eq(sinks[0].calls + sinks[1].calls + sinks[2].calls, 0);
  /* A sink of another thread cannot be added or wrapped either. */
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[4].sink), UVQ_ETHREAD);
  ck_assert_int_eq(uvq_filter_init(&flt, &sinks[4].sink, match_all, NULL),
                   UVQ_ETHREAD);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[4].sink, &br.strategy),
                   UVQ_ETHREAD);
  ck_assert_int_eq(uvq_sink_close(&bc.sink, NULL), 0);
  ck_assert_int_eq(uvq_sink_close(&flt.sink, NULL), 0);
  ck_assert_int_eq(uvq_sink_close(&rty.sink, count_close), 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  uvq_event_unref(&items[0].ev);
  items_released_once(1);
}
END_TEST

/* ========================================================================= */
/* A pipeline: broadcaster -> filter -> retrying sink -> flaky sink       */
/* ========================================================================= */

START_TEST(pipeline_broadcast_filter_retry_closes_from_the_top) {
  enum { N = 40 };
  uvq_backoff_t bo;
  writer_t w;
  unsigned i;

  items_init(N);
  tsink_init(&sinks[0], NULL, 0);                  /* sees everything */
  tsink_init(&sinks[1], flaky_hook, 1);            /* flaky, slow close */
  sinks[1].rng = 12345;
  ck_assert_int_eq(uvq_backoff_init(&bo, 1, 1, 3, 5), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[1].sink, &bo.strategy),
                   0);
  ck_assert_int_eq(uvq_filter_init(&flt, &rty.sink, match_all, NULL), 0);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &flt.sink), 0);
  writer_start(&w, &bc.sink, N);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(w.next, N);
  ck_assert_uint_eq(w.errors, 0);
  ck_assert_uint_eq(sinks[0].got, N);
  ck_assert_uint_eq(sinks[1].got, N);
  for (i = 0; i < N; i++)
    ck_assert_uint_eq(sinks[1].seen[i], 1);
  ck_assert_uint_eq(sinks[1].out_of_order, 0);
  /* Closing the top closes everything below, and only then completes. */
  ck_assert_int_eq(uvq_sink_close(&bc.sink, count_close), 0);
  ck_assert_uint_eq(closed_cbs, 0);
  finish_loop();
  ck_assert_uint_eq(closed_cbs, 1);
  ck_assert_int_eq(uvq_sink_is_closed(&flt.sink), 1);
  ck_assert_int_eq(uvq_sink_is_closed(&rty.sink), 1);
  ck_assert_uint_eq(sinks[0].closes, 1);
  ck_assert_uint_eq(sinks[1].closes, 1);
  items_released_once(N);
}
END_TEST

/* The whole chain of flow control: worker thread -> queue -> broadcaster ->
 * (plain sink, retrying sink -> sink failing every third write). While the
 * retrying sink backs off, the broadcaster says "again" and the queue keeps
 * its head and pauses; nothing is lost, duplicated or reordered. */
static uvq_queue_t queue;
static unsigned queue_closed;

static int every_third_fails_hook(tsink_t* t, uvq_event_t* ev) {
  (void) ev;
  return t->calls % 3 == 0 ? UV_EIO : TS_TAKE;
}

static void produce(void* arg) {
  unsigned n = *(unsigned*) arg;
  unsigned i;
  for (i = 0; i < n; i++)
    if (uvq_queue_enqueue(&queue, &items[i].ev) != 0)
      abort(); /* unbounded and running: cannot fail */
}

static void queue_close_cb(uvq_queue_t* q) {
  (void) q;
  queue_closed++;
}

static void chain_start(unsigned* n) {
  static uvq_backoff_t bo;
  uv_thread_t tid;
  queue_closed = 0;
  items_init(*n);
  tsink_init(&sinks[0], NULL, 0);
  tsink_init(&sinks[1], every_third_fails_hook, 1);
  ck_assert_int_eq(uvq_backoff_init(&bo, 1, 1, 2, 3), 0);
  ck_assert_int_eq(uvq_retry_init(&loop, &rty, &sinks[1].sink, &bo.strategy),
                   0);
  ck_assert_int_eq(uvq_broadcast_init(&bc), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &sinks[0].sink), 0);
  ck_assert_int_eq(uvq_broadcast_add(&bc, &rty.sink), 0);
  ck_assert_int_eq(uvq_queue_init_sink(&loop, &queue, &bc.sink, NULL), 0);
  ck_assert_int_eq(uv_thread_create(&tid, produce, n), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
}

START_TEST(queue_feeds_broadcaster_that_waits_on_a_retrying_sink) {
  unsigned n = 200;
  uvq_queue_stats_t qs;
  uvq_retry_stats_t rs;
  unsigned i;

  chain_start(&n);
  /* Stop once the retrying sink holds nothing: see the next test for a
   * stop that comes earlier. */
  while (sinks[1].got < n)
    ck_assert_int_ne(uv_run(&loop, UV_RUN_ONCE), 0);
  ck_assert_int_eq(uvq_queue_stop(&queue, UVQ_STOP_DRAIN, queue_close_cb),
                   0);
  finish_loop();

  ck_assert_uint_eq(queue_closed, 1);
  for (i = 0; i < 2; i++) {
    ck_assert_uint_eq(sinks[i].got, n);
    ck_assert_uint_eq(sinks[i].out_of_order, 0);
    ck_assert_uint_eq(sinks[i].closes, 1);
  }
  ck_assert_int_eq(uvq_queue_stats(&queue, &qs), 0);
  ck_assert_uint_eq(qs.delivered, n);
  ck_assert_uint_eq(qs.failed, 0);
  ck_assert_int_eq(uvq_retry_stats(&rty, &rs), 0);
  ck_assert_uint_eq(rs.delivered, n);
  ck_assert_uint_gt(rs.retries, 0); /* it did back off, so the queue paused */
  ck_assert_int_eq(uvq_sink_is_closed(&bc.sink), 1);
  items_released_once(n);
}
END_TEST

/* A drain stop right away: the queue writes every event into the
 * broadcaster and then closes it, but "taken" is not "delivered": the close
 * ends the fan-out still waiting on the retrying sink (abandoned) and the
 * retrying sink's close drops the event it still retries (dropped). Both
 * are counted, so every event is accounted for, and released once. */
START_TEST(queue_drain_stop_accounts_for_events_still_inside_sinks) {
  unsigned n = 200;
  uvq_broadcast_stats_t bs;
  uvq_queue_stats_t qs;
  uvq_retry_stats_t rs;

  chain_start(&n);
  ck_assert_int_eq(uvq_queue_stop(&queue, UVQ_STOP_DRAIN, queue_close_cb),
                   0);
  finish_loop();
  ck_assert_uint_eq(queue_closed, 1);
  ck_assert_int_eq(uvq_queue_stats(&queue, &qs), 0);
  ck_assert_int_eq(uvq_broadcast_stats(&bc, &bs), 0);
  ck_assert_int_eq(uvq_retry_stats(&rty, &rs), 0);
  ck_assert_uint_eq(qs.delivered, n);
  ck_assert_uint_eq(sinks[0].got, n);
  ck_assert_uint_eq(sinks[1].got, rs.delivered);
  ck_assert_uint_eq(rs.written, rs.delivered + rs.dropped);
  ck_assert_uint_eq(n, bs.abandoned + rs.written);
  ck_assert_uint_eq(sinks[1].out_of_order, 0);
  ck_assert_uint_eq(sinks[0].closes + sinks[1].closes, 2);
  items_released_once(n);
}
END_TEST

Suite* sinks_suite(void) {
  Suite* s = suite_create("sinks");
  TCase* tb = tcase_create("broadcast");
  TCase* tf = tcase_create("filter");
  TCase* tr = tcase_create("retry");
  TCase* tm = tcase_create("misc");

  tcase_add_checked_fixture(tb, setup, teardown);
  tcase_add_test(tb, broadcast_ten_sinks_added_twice_get_every_event_once);
  tcase_add_test(tb, broadcast_close_twice_then_every_write_fails);
  tcase_add_test(tb,
                 broadcast_remove_during_fanout_neither_skips_nor_duplicates);
  tcase_add_test(tb, broadcast_sinks_added_during_fanout_start_with_next_event);
  tcase_add_test(
      tb, broadcast_closed_from_inside_a_write_closes_every_sink_after_it);
  tcase_add_test(tb,
                 broadcast_failures_stay_with_one_sink_and_closed_sinks_leave);
  tcase_add_test(tb, broadcast_again_takes_event_once_and_resumes_when_ready);
  tcase_add_test(tb, broadcast_close_while_waiting_releases_the_event_once);
  tcase_add_test(tb,
                 broadcast_sink_without_close_op_ends_the_wait_when_closed);
  tcase_add_test(tb, broadcast_rejects_bad_input);
  tcase_add_test(tb, broadcast_add_reports_enomem_and_changes_nothing);
  tcase_add_test(tb, broadcast_ready_during_fanout_is_not_lost);
  tcase_add_test(tb,
                 broadcast_again_then_removed_in_the_same_fanout_holds_nothing);
  suite_add_tcase(s, tb);

  tcase_add_checked_fixture(tf, setup, teardown);
  tcase_add_test(tf, filter_passes_exactly_the_even_half);
  tcase_add_test(tf,
                 filter_close_twice_closes_destination_then_every_write_fails);
  tcase_add_test(tf, filter_passes_again_through_and_forwards_ready);
  tcase_add_test(tf, filter_close_while_upstream_waits_tells_it);
  tcase_add_test(tf, filter_closed_inside_dst_write_never_answers_again);
  tcase_add_test(tf, filter_rejects_bad_input);
  suite_add_tcase(s, tf);

  tcase_add_checked_fixture(tr, setup, teardown);
  tcase_set_timeout(tr, 30);
  tcase_add_test(tr, retry_breaker_delivers_all_from_a_flaky_sink);
  tcase_add_test(tr, retry_backoff_delivers_all_from_a_flaky_sink);
  tcase_add_test(tr, retry_close_twice_then_every_write_fails);
  tcase_add_test(tr,
                 retry_close_during_backoff_cancels_timer_and_releases_once);
  tcase_add_test(tr, retry_passes_dst_again_through_and_forwards_ready);
  tcase_add_test(tr, retry_zero_wait_cannot_starve_the_loop);
  tcase_add_test(tr, retry_user_strategy_drops_and_counts);
  tcase_add_test(tr, retry_closed_from_inside_the_wrapped_write);
  tcase_add_test(tr, retry_closed_from_inside_a_retry_drops_the_event_once);
  tcase_add_test(tr, retry_wrapped_sink_closed_is_terminal);
  tcase_add_test(tr,
                 retry_closed_dst_refuses_writes_a_waiting_strategy_would_take);
  tcase_add_test(tr, retry_remembers_that_dst_said_eclosed);
  tcase_add_test(tr,
                 retry_breaker_waits_its_whole_backoff_after_a_long_callback);
  tcase_add_test(tr, retry_waits_for_dst_ready_during_a_retry);
  tcase_add_test(tr, retry_rejects_bad_input);
  tcase_add_test(tr, backoff_waits_are_bounded_random_and_reset);
  tcase_add_test(tr, breaker_opens_at_threshold_and_resets_on_success);
  suite_add_tcase(s, tr);

  tcase_add_checked_fixture(tm, setup, teardown);
  tcase_set_timeout(tm, 30);
  tcase_add_test(tm, event_refs_count_up_and_the_last_unref_releases_once);
  tcase_add_test(tm, event_holders_unreffing_at_once_release_exactly_once);
  tcase_add_test(tm, sinks_refuse_other_threads);
  tcase_add_test(tm, pipeline_broadcast_filter_retry_closes_from_the_top);
  tcase_add_test(tm, queue_feeds_broadcaster_that_waits_on_a_retrying_sink);
  tcase_add_test(tm, queue_drain_stop_accounts_for_events_still_inside_sinks);
  suite_add_tcase(s, tm);
  return s;
}
