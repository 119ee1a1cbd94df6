/* libFuzzer harness: one queue, driven by the input, checked against a model.
 *
 * The input is a program. Its first four bytes choose the queue: capacity
 * 0..8 (0: unbounded), overflow policy, batch 1..4 (and, in the third
 * byte's upper six bits, watermarks: none when they are 0, else high_water
 * 1..8, at most the capacity, and a low_water below it), whether released
 * events go to opts.release or to uvq_event_unref (bit 0 of the fourth),
 * and whether the queue has a poll window (bit 1; 1 to 64 us from the bits
 * above; whether it ends between two operations is left to the clock, and
 * no prediction of the model depends on it). Every later byte is one
 * operation (some read an argument byte):
 *
 *   enqueue, try_enqueue, enqueue_timeout(0), enqueue_timeout(5 ms),
 *   uv_run(NOWAIT) with or without an idle handle keeping the loop awake,
 *   a "drain" (run until the model says nothing is left, which must be
 *   enough: a lost wakeup fails here), stop drain, stop discard, ref, unref,
 *   stats, and "in the next process callback do X" (enqueue, stop, unref).
 *
 * Everything runs on the loop thread, so the model is exact: a FIFO array
 * with the same policy rules. It predicts every return code (including
 * UVQ_EDEADLK for blocking calls on a bounded UVQ_BLOCK queue, UVQ_EFULL,
 * UVQ_ECLOSED), which event each process or release callback must get (the
 * head of the FIFO; for UVQ_DROP_NEW the new event, inside the enqueue
 * call), every counter, and when the close callback may run. Watermark
 * callbacks must alternate, starting with "above"; "above" only after the
 * depth reached high_water since the last one and only while it is there
 * (the loop's look, at the start or the end of a pass: a depth reached
 * only inside a pass and gone by its end is not reported), "below" only at
 * low_water or less, neither after a stop; and after a drain (not stopped)
 * the last one said "below" and the depth did not reach high_water since.
 * At the end the
 * queue is stopped and the loop run to completion: every event was refused
 * (still the caller's), delivered or released, exactly once, and
 * uv_loop_close() returns 0. Any disagreement aborts with a message.
 *
 * Not modelled: the queue's sink face (uvq_queue_sink), whose carriers are
 * covered by test/check_faults.c. The channel and the broadcaster have
 * harnesses of their own (fuzz_channel.c, fuzz_broadcast.c).
 *
 * Build and run: .ci/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uvq.h"
#include "model.h"

enum { E_CALLER = 0, E_QUEUED, E_DELIVERED, E_RELEASED };

typedef struct {
  uvq_event_t ev;
  unsigned id;
  int state;
} fev_t;

#define FEV(e) ((fev_t*) ((char*) (e) - offsetof(fev_t, ev)))

enum { POLICY_BLOCK, POLICY_FAIL, POLICY_DROP_NEW, POLICY_DROP_OLDEST };
enum { CB_NONE, CB_ENQUEUE, CB_STOP_DRAIN, CB_STOP_DISCARD, CB_UNREF };
enum { REL_NONE, REL_NEW, REL_HEAD, REL_DISCARD };

static struct {
  /* the queue under test */
  uv_loop_t loop;
  uvq_queue_t q;
  uv_idle_t idle;
  size_t cap;
  int policy;
  unsigned batch;
  /* events */
  fev_t* evs;
  unsigned nevs, next_ev;
  /* the model */
  unsigned* fifo;
  unsigned head, tail; /* fifo[head..tail) are queued, oldest first */
  uint64_t accepted, delivered, dropped_new, dropped_oldest, discarded;
  uint64_t max_depth_seen;
  int stopped, discard, closed, refd;
  int cb_action;
  int expect_release;  /* what a release callback may be now */
  unsigned expect_new; /* REL_NEW: which event */
  int released_now;
  size_t op;
  /* watermarks */
  int wm;
  size_t high, low;
  int above;     /* the last callback said "above" */
  uint64_t peak; /* the highest depth since the last callback */
  /* The depth a producer or uvq_queue_stats sees counts what the loop
   * removed up to its last publish: inside a pass it may still count
   * events the pass delivered, at most those of the current uv_run. */
  uint64_t run_delivered;
  uint64_t peak_seen; /* the highest such depth since the last callback */
} m;

#define CHECK(c) MODEL_CHECK(c, m.op)

static unsigned depth(void) {
  return m.tail - m.head;
}

static void note_depth(void) {
  if (depth() > m.max_depth_seen)
    m.max_depth_seen = depth();
  if (depth() > m.peak)
    m.peak = depth();
  if (depth() + m.run_delivered > m.peak_seen)
    m.peak_seen = depth() + m.run_delivered;
}

static void on_mark(uvq_queue_t* q, int above) {
  CHECK(q == &m.q);
  CHECK(m.wm && !m.stopped && !m.closed);
  CHECK(above == !m.above); /* alternately, "above" first */
  if (above) /* the loop's own look, at the start or the end of a pass */
    CHECK(m.peak_seen >= m.high && depth() >= m.high);
  else
    CHECK(depth() <= m.low); /* the loop's own look, after its publish */
  m.above = above;
  m.peak = depth();
  m.peak_seen = depth() + m.run_delivered;
}

/* Every release, whichever path it took. */
static void on_release(fev_t* e) {
  CHECK(e->state == E_QUEUED || m.expect_release == REL_NEW);
  switch (m.expect_release) {
  case REL_NEW:
    CHECK(e->id == m.expect_new && e->state == E_CALLER);
    m.dropped_new++;
    break;
  case REL_HEAD:
    CHECK(depth() > 0 && m.fifo[m.head] == e->id);
    m.head++;
    m.dropped_oldest++;
    break;
  case REL_DISCARD:
    CHECK(m.discard && depth() > 0 && m.fifo[m.head] == e->id);
    m.head++;
    m.discarded++;
    break;
  default:
    CHECK(!"a release nobody expected");
  }
  e->state = E_RELEASED;
  m.released_now++;
}

static void ev_release_cb(uvq_event_t* ev) {
  on_release(FEV(ev));
}

static void q_release_cb(uvq_queue_t* q, uvq_event_t* ev) {
  CHECK(q == &m.q);
  on_release(FEV(ev));
}

static fev_t* new_event(void) {
  fev_t* e;
  if (m.next_ev == m.nevs)
    return NULL;
  e = &m.evs[m.next_ev];
  e->id = m.next_ev++;
  e->state = E_CALLER;
  uvq_event_init(&e->ev, ev_release_cb);
  return e;
}

/* -- enqueue: what the model expects, and the call ------------------------ */

enum { K_ENQUEUE, K_TRY, K_TIMEOUT0, K_TIMEOUT5 };

static int expected_rc(int kind, int* drop) {
  *drop = REL_NONE;
  if (m.cap != 0 && m.policy == POLICY_BLOCK &&
      (kind == K_ENQUEUE || kind == K_TIMEOUT5))
    return UVQ_EDEADLK; /* on the loop thread, full or not */
  if (m.stopped)
    return UVQ_ECLOSED;
  if (m.cap == 0 || depth() < m.cap)
    return 0;
  switch (m.policy) {
  case POLICY_DROP_NEW:
    *drop = REL_NEW;
    return 0;
  case POLICY_DROP_OLDEST:
    *drop = REL_HEAD;
    return 0;
  default:
    return UVQ_EFULL;
  }
}

static void do_enqueue(int kind) {
  fev_t* e = new_event();
  int drop, want, rc;
  int outer_release = m.expect_release; /* we may be inside a run */
  unsigned outer_new = m.expect_new;
  int outer_released = m.released_now;
  if (e == NULL)
    return;
  want = expected_rc(kind, &drop);
  m.expect_release = drop;
  m.expect_new = e->id;
  m.released_now = 0;
  switch (kind) {
  case K_ENQUEUE:
    rc = uvq_queue_enqueue(&m.q, &e->ev);
    break;
  case K_TRY:
    rc = uvq_queue_try_enqueue(&m.q, &e->ev);
    break;
  case K_TIMEOUT0:
    rc = uvq_queue_enqueue_timeout(&m.q, &e->ev, 0);
    break;
  default:
    rc = uvq_queue_enqueue_timeout(&m.q, &e->ev, 5);
    break;
  }
  m.expect_release = outer_release;
  m.expect_new = outer_new;
  if (rc != want)
    fprintf(stderr, "enqueue kind %d: got %d (%s), model %d (%s)\n", kind, rc,
            uvq_err_name(rc), want, uvq_err_name(want));
  CHECK(rc == want);
  CHECK(m.released_now == (drop != REL_NONE));
  m.released_now = outer_released;
  if (rc != 0)
    return; /* refused: still the caller's, nothing happened */
  if (drop == REL_NEW)
    return; /* released inside the call, counted in dropped_new */
  m.fifo[m.tail++] = e->id;
  e->state = E_QUEUED;
  m.accepted++;
  note_depth();
}

/* -- callbacks ------------------------------------------------------------ */

static void do_stop(int discard);

static void on_close(uvq_queue_t* q) {
  CHECK(q == &m.q);
  CHECK(!m.closed && m.stopped && depth() == 0);
  m.closed = 1;
}

static void on_process(uvq_queue_t* q, uvq_event_t* ev) {
  fev_t* e = FEV(ev);
  int action = m.cb_action;
  CHECK(q == &m.q);
  CHECK(!m.closed);
  CHECK(!m.discard); /* once discard is asked, nothing more is delivered */
  CHECK(e->state == E_QUEUED && depth() > 0 && m.fifo[m.head] == e->id);
  m.head++;
  m.delivered++;
  m.run_delivered++;
  e->state = E_DELIVERED;
  m.cb_action = CB_NONE;
  switch (action) {
  case CB_ENQUEUE:
    do_enqueue(K_TRY);
    break;
  case CB_STOP_DRAIN:
    do_stop(0);
    break;
  case CB_STOP_DISCARD:
    do_stop(1);
    break;
  case CB_UNREF:
    CHECK(uvq_queue_unref(q) == 0);
    m.refd = 0;
    break;
  default:
    break;
  }
}

/* -- other operations ----------------------------------------------------- */

static void do_stop(int discard) {
  CHECK(uvq_queue_stop(&m.q, discard ? UVQ_STOP_DISCARD : UVQ_STOP_DRAIN,
                       on_close) == 0);
  if (m.closed)
    return; /* harmless, changes nothing */
  m.stopped = 1;
  if (discard)
    m.discard = 1;
}

static void idle_cb(uv_idle_t* h) {
  (void) h;
}

static void run_awake(void) {
  uv_idle_start(&m.idle, idle_cb);
  m.run_delivered = 0;
  m.expect_release = REL_DISCARD;
  CHECK(uv_run(&m.loop, UV_RUN_NOWAIT) >= 0);
  m.expect_release = REL_NONE;
  uv_idle_stop(&m.idle);
}

/* Run until the model says the queue is empty (and closed if stopped). A
 * pass takes at most batch events; a few more turns than that is plenty. */
static void do_drain(void) {
  unsigned turns = depth() / m.batch + 3, i;
  for (i = 0; i < turns; i++) {
    /* Done once empty, with "below" said if "above" was: a producer that
     * saw high_water during the pass that emptied the queue (counting
     * what it delivered) gets no "above" for it. */
    if (m.closed || (!m.stopped && depth() == 0 && !m.above))
      break;
    run_awake();
  }
  if (m.stopped) {
    CHECK(m.closed);
  } else {
    CHECK(depth() == 0);
    /* Every crossing was reported, the last one being "below". */
    CHECK(!m.wm || (!m.above && m.peak < m.high));
  }
}

static void do_stats(void) {
  uvq_queue_stats_t st;
  if (m.closed)
    return; /* valid until the close callback only */
  CHECK(uvq_queue_stats(&m.q, &st) == 0);
  CHECK(st.enqueued == m.accepted);
  CHECK(st.delivered == m.delivered);
  CHECK(st.dropped_new == m.dropped_new);
  CHECK(st.dropped_oldest == m.dropped_oldest);
  CHECK(st.discarded == m.discarded);
  CHECK(st.failed == 0);
  CHECK(st.depth == depth());
  CHECK(st.max_depth <= m.max_depth_seen);
  CHECK(m.cap == 0 || st.max_depth <= m.cap);
  CHECK(st.delivered + st.discarded <= st.passes * m.batch);
}

static void do_ref(int ref) {
  int rc = ref ? uvq_queue_ref(&m.q) : uvq_queue_unref(&m.q);
  CHECK(rc == (m.closed ? UVQ_ECLOSED : 0));
  if (rc == 0)
    m.refd = ref;
}

/* -- the harness ---------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const uvq_overflow_t policies[] = {UVQ_BLOCK, UVQ_FAIL, UVQ_DROP_NEW,
                                            UVQ_DROP_OLDEST};
  uvq_queue_options_t o;
  size_t i;
  unsigned j;

  if (size < 4 || size > 4096)
    return 0;
  memset(&m, 0, sizeof(m));
  m.cap = data[0] % 9;
  m.policy = data[1] % 4;
  m.batch = 1 + data[2] % 4;
  memset(&o, 0, sizeof(o));
  o.capacity = m.cap;
  o.overflow = policies[m.policy];
  o.batch = m.batch;
  o.release = (data[3] & 1) ? q_release_cb : NULL;
  o.poll_us = (data[3] & 2) ? 1u + (data[3] >> 2) : 0;
  if (data[2] >> 2 != 0) {
    m.wm = 1;
    m.high = 1 + ((data[2] >> 2) & 7);
    if (m.cap != 0 && m.high > m.cap)
      m.high = m.cap;
    m.low = (size_t) (data[2] >> 5) % m.high;
    o.high_water = m.high;
    o.low_water = m.low;
    o.watermark = on_mark;
  }
  m.nevs = (unsigned) size;
  m.evs = calloc(m.nevs, sizeof(*m.evs));
  m.fifo = calloc(m.nevs, sizeof(*m.fifo));
  CHECK(m.evs != NULL && m.fifo != NULL);
  CHECK(uv_loop_init(&m.loop) == 0);
  CHECK(uv_idle_init(&m.loop, &m.idle) == 0);
  CHECK(uvq_queue_init(&m.loop, &m.q, on_process, &o) == 0);
  m.refd = 1;

  for (i = 4; i < size; i++) {
    uint8_t b = data[i];
    m.op = i;
    switch (b % 16) {
    case 0:
    case 1:
      do_enqueue(K_TRY);
      break;
    case 2:
      do_enqueue(K_ENQUEUE);
      break;
    case 3:
      do_enqueue(K_TIMEOUT0);
      break;
    case 4:
      do_enqueue(K_TIMEOUT5);
      break;
    case 5:
    case 6:
      run_awake();
      break;
    case 7:
      /* plain NOWAIT: may do nothing when the queue is unreferenced */
      m.run_delivered = 0;
      m.expect_release = REL_DISCARD;
      CHECK(uv_run(&m.loop, UV_RUN_NOWAIT) >= 0);
      m.expect_release = REL_NONE;
      break;
    case 8:
      do_drain();
      break;
    case 9:
      if (b & 0x80) /* rarer than enqueues */
        do_stop(0);
      break;
    case 10:
      if (b & 0x80)
        do_stop(1);
      break;
    case 11:
      do_ref(1);
      break;
    case 12:
      do_ref(0);
      break;
    case 13:
      do_stats();
      break;
    case 14:
      m.cb_action = 1 + (b >> 4) % 4; /* CB_ENQUEUE .. CB_UNREF */
      break;
    default:
      /* a burst: several enqueues of one kind */
      for (j = 0; j < (unsigned) (b >> 4) + 1; j++)
        do_enqueue(j % 2 ? K_TRY : K_TIMEOUT0);
      break;
    }
  }

  /* The end: stop, reference the queue so the loop runs until it closed. */
  m.op = size;
  do_stats();
  do_stop((data[3] >> 1) & 1);
  if (!m.closed)
    do_ref(1);
  m.cb_action = CB_NONE;
  m.expect_release = REL_DISCARD;
  uv_close((uv_handle_t*) &m.idle, NULL);
  CHECK(uv_run(&m.loop, UV_RUN_DEFAULT) == 0);
  m.expect_release = REL_NONE;
  CHECK(m.closed);
  CHECK(depth() == 0);
  for (j = 0; j < m.next_ev; j++)
    CHECK(m.evs[j].state != E_QUEUED);
  CHECK(m.accepted == m.delivered + m.dropped_oldest + m.discarded);
  CHECK(uv_loop_close(&m.loop) == 0);
  free(m.evs);
  free(m.fifo);
  return 0;
}
