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
 *   stats, and "in the next process callback do X" (enqueue, stop, unref,
 *   and, for the face below, write, forward, close).
 *
 * The queue's sink face (uvq_queue_sink) takes the bytes of the two stop
 * opcodes whose top bit is clear (no-ops before it was modelled; bits 4..6,
 * plus 8 for the discard stop's, choose one of 16): a writer writes its
 * current event (a new one, or the same again: one event may sit in the
 * queue several times, also written from inside a process callback, which
 * may forward the event it was given) and drops its reference when it
 * likes; registers a ready callback (one that does nothing, or one that
 * offers the current event again; another upstream gets UVQ_EBUSY) or
 * detaches it; and closes the face. Every event is reference-counted
 * (uvq_event_init with a release function); for those written through the
 * face the model counts the references: the writer's, one per carrier
 * queued, and the process callback's (it gets the event itself, with the
 * carrier's reference, and drops it). It predicts uvq_event_refs after
 * every step and the moment the release function runs: at the writer's
 * unref, at the callback's, or inside the enqueue whose UVQ_DROP_OLDEST
 * victim was the last carrier. A discarded carrier goes without a
 * callback of ours unless it held the last reference: the model takes
 * such discards off its FIFO in order when a later release shows them,
 * otherwise by the queue's discarded counter after the pass. A face write
 * returns what try_enqueue would, but UVQ_EAGAIN for a full UVQ_BLOCK
 * queue, and UVQ_ECLOSED once the face or the queue closed (a UVQ_DROP_NEW
 * drop is a 0). The ready callback runs only after UVQ_EAGAIN, never
 * inside a write, at the end of a pass that took events off the queue
 * since (or the pass whose process callback heard UVQ_EAGAIN), or from the
 * face's close, whichever comes first; such a pass or close must call it
 * (nobody is told when no callback is registered). Closing
 * the face stops the queue in drain mode, as a first stop without a close
 * callback (a later stop's callback is ignored); the face's close callback
 * runs once, inside the queue's close and just before the queue's own
 * callback if it has one, and that of a second close never.
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
 * the last one said "below" and the depth did not reach high_water since
 * (as the loop sees it: between runs, and what a run leaves; a callback
 * that writes twice can take it higher inside a pass, unreported).
 * At the end the writer lets go, the queue is stopped and the loop run to
 * completion: every event was refused (still the caller's), delivered or
 * released, exactly once, every event written through the face released
 * with no reference left, and uv_loop_close() returns 0. Any disagreement
 * aborts with a message.
 *
 * Two rules of docs/sinks.md the face broke until the model found them: a
 * face closed after its queue closed runs its close callback at once (the
 * queue's close had marked it done, and the callback never ran), and a
 * face closed while its writer waits after UVQ_EAGAIN calls ready from its
 * close, once (it waited for the next pass that took events off).
 *
 * Not modelled: sink-fed queues (uvq_queue_init_sink) and UVQ_ENOMEM from
 * the face (covered by test/check_faults.c). The channel and the
 * broadcaster have harnesses of their own (fuzz_channel.c,
 * fuzz_broadcast.c).
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
  /* written through the face: the model's count of its references */
  int face;
  unsigned refs;   /* what uvq_event_refs must say */
  unsigned queued; /* carriers of it in the FIFO */
  int writer;      /* the writer holds one */
  int due;         /* its last reference goes in the call being made */
} fev_t;

enum { POLICY_BLOCK, POLICY_FAIL, POLICY_DROP_NEW, POLICY_DROP_OLDEST };
enum { CB_NONE, CB_ENQUEUE, CB_STOP_DRAIN, CB_STOP_DISCARD, CB_UNREF,
       CB_FACE_WRITE, CB_FACE_FORWARD, CB_FACE_CLOSE };
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
  unsigned* fifo; /* event ids; a face event once per carrier */
  unsigned fifo_cap;
  unsigned head, tail; /* fifo[head..tail) are queued, oldest first */
  uint64_t accepted, delivered, dropped_new, dropped_oldest, discarded;
  uint64_t max_depth_seen;
  int stopped, discard, closed, refd;
  int qcb;     /* the first stop gave the queue's close callback */
  int qcb_due; /* the face's close callback ran: the queue's is next */
  int cb_action;
  int expect_release;  /* what a release callback may be now */
  unsigned expect_new; /* REL_NEW: which event */
  int released_now;
  size_t op;
  /* watermarks */
  int wm;
  size_t high, low;
  int above;     /* the last callback said "above" */
  uint64_t peak; /* the highest depth the loop saw since the last one */
  /* The depth a producer or uvq_queue_stats sees counts what the loop
   * removed up to its last publish: inside a pass it may still count
   * events the pass delivered, at most those of the current uv_run. */
  uint64_t run_delivered;
  uint64_t peak_seen; /* the highest such depth since the last callback */
  /* the face */
  fev_t* cur;        /* the writer's current event (it holds a reference) */
  void* ready_arg;   /* the registered ready callback's (NULL: none) */
  int ready_tags[2]; /* its args: [0] does nothing, [1] writes cur again */
  int waiting;       /* a write got UVQ_EAGAIN, no ready since */
  int wait_in_pass;  /* ... inside a process callback of the current pass */
  uint64_t wait_removed; /* events taken off the queue since */
  int ready_in_close;    /* the face's close says ready */
  int face_closing, face_closed, face_close_now;
  int in_process, in_write, in_run;
} m;

#define CHECK(c) MODEL_CHECK(c, m.op)

static unsigned depth(void) {
  return m.tail - m.head;
}

static void note_depth(void) {
  if (depth() > m.max_depth_seen)
    m.max_depth_seen = depth();
  /* Inside a run, callbacks that write twice can take the depth above
   * what the pass began with, and the pass may take it down again before
   * the loop looks: only what a run leaves behind must be reported. */
  if (!m.in_run && depth() > m.peak)
    m.peak = depth();
  if (depth() + m.run_delivered > m.peak_seen)
    m.peak_seen = depth() + m.run_delivered;
}

static void fifo_push(unsigned id) {
  if (m.tail == m.fifo_cap) {
    m.fifo_cap *= 2;
    m.fifo = realloc(m.fifo, m.fifo_cap * sizeof(*m.fifo));
    CHECK(m.fifo != NULL);
  }
  m.fifo[m.tail++] = id;
}

static fev_t* fifo_head(void) {
  return &m.evs[m.fifo[m.head]];
}

/* The harness's event an event pointer from the library is, or abort. */
static fev_t* lookup(uvq_event_t* ev) {
  uintptr_t p = (uintptr_t) ev;
  uintptr_t base = (uintptr_t) &m.evs[0].ev;
  CHECK(p >= base && (p - base) % sizeof(fev_t) == 0 &&
        (p - base) / sizeof(fev_t) < m.next_ev);
  return &m.evs[(p - base) / sizeof(fev_t)];
}

/* An event left the queue (delivered or discarded): room, for the face. */
static void removed_one(void) {
  m.wait_removed++;
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

/* A discard the library made without a callback of ours: the carrier at
 * the head of the FIFO went, and its reference with it. */
static fev_t* discard_carrier(void) {
  fev_t* c;
  CHECK(m.discard && depth() > 0);
  c = fifo_head();
  CHECK(c->face); /* a plain event is discarded with a release callback */
  CHECK(c->queued > 0 && c->refs > 0);
  m.head++;
  m.discarded++;
  c->queued--;
  c->refs--;
  removed_one();
  return c;
}

/* The counts of the events whose carriers the model just took off. */
static void check_refs_since(unsigned from) {
  for (; from < m.head; from++) {
    fev_t* c = &m.evs[m.fifo[from]];
    CHECK(uvq_event_refs(&c->ev) == c->refs);
  }
}

/* After a pass: the discarded counter tells how many carriers went that
 * nothing showed us. None of them took its event's last reference (that
 * release would have shown it). */
static void reconcile(void) {
  uvq_queue_stats_t st;
  unsigned from = m.head;
  CHECK(uvq_queue_stats(&m.q, &st) == 0);
  CHECK(st.discarded >= m.discarded);
  while (st.discarded > m.discarded) {
    fev_t* c = discard_carrier();
    CHECK(c->refs > 0 && c->state != E_RELEASED);
  }
  check_refs_since(from);
}

/* Every release of a plain event, whichever path it took. */
static void on_release(fev_t* e, int by_unref) {
  unsigned from;
  CHECK(!e->face);
  /* uvq_event_unref took the count to 0; opts.release leaves it alone */
  CHECK(uvq_event_refs(&e->ev) == (by_unref ? 0u : 1u));
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
    /* carriers ahead of it went first, without a word */
    from = m.head;
    while (m.discard && depth() > 0 && fifo_head()->face) {
      fev_t* c = discard_carrier();
      CHECK(c->refs > 0); /* else its release would have come first */
    }
    check_refs_since(from);
    CHECK(m.discard && depth() > 0 && m.fifo[m.head] == e->id);
    m.head++;
    m.discarded++;
    removed_one();
    break;
  default:
    CHECK(!"a release nobody expected");
  }
  e->state = E_RELEASED;
  m.released_now++;
}

/* The release function of a face event: its last reference went. */
static void on_face_release(fev_t* e) {
  CHECK(e->state != E_RELEASED);
  CHECK(uvq_event_refs(&e->ev) == 0);
  if (e->due) {
    e->due = 0; /* the model said so for this very call */
  } else {
    /* A discard pass: its carriers went, and those ahead of them. */
    unsigned from = m.head;
    CHECK(m.expect_release == REL_DISCARD && m.discard && !e->writer);
    while (e->refs > 0) {
      fev_t* c = discard_carrier();
      CHECK(c == e || c->refs > 0); /* else that release came first */
    }
    check_refs_since(from);
  }
  CHECK(e->refs == 0 && e->queued == 0 && !e->writer);
  e->state = E_RELEASED;
}

static void ev_release_cb(uvq_event_t* ev) {
  fev_t* e = lookup(ev);
  if (e->face)
    on_face_release(e);
  else
    on_release(e, 1);
}

static void q_release_cb(uvq_queue_t* q, uvq_event_t* ev) {
  CHECK(q == &m.q);
  on_release(lookup(ev), 0); /* never a face event: carriers are unref'd */
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

/* UVQ_DROP_OLDEST makes room by releasing the head. A plain event comes
 * back through a release callback (REL_HEAD); a carrier goes without one,
 * and its reference with it: the model takes it off here (*victim), its
 * event's release due in the call if that was the last reference. Returns
 * the release a callback may bring during the call. */
static int take_victim(int drop, fev_t** victim) {
  fev_t* c;
  *victim = NULL;
  if (drop != REL_HEAD || !fifo_head()->face)
    return drop;
  c = fifo_head();
  m.head++;
  m.dropped_oldest++;
  c->queued--;
  c->refs--;
  c->due = c->refs == 0;
  *victim = c;
  return REL_NONE;
}

static void check_victim(fev_t* c) {
  if (c == NULL)
    return;
  CHECK(!c->due); /* its release ran in the call, if it was due */
  CHECK(uvq_event_refs(&c->ev) == c->refs);
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
  fev_t* victim = NULL;
  int drop, want, rc;
  int outer_release = m.expect_release; /* we may be inside a run */
  unsigned outer_new = m.expect_new;
  int outer_released = m.released_now;
  if (e == NULL)
    return;
  want = expected_rc(kind, &drop);
  m.expect_release = want == 0 ? take_victim(drop, &victim) : drop;
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
  CHECK(m.released_now == (drop != REL_NONE && victim == NULL));
  m.released_now = outer_released;
  check_victim(victim);
  if (rc != 0)
    return; /* refused: still the caller's, nothing happened */
  if (drop == REL_NEW)
    return; /* released inside the call, counted in dropped_new */
  fifo_push(e->id);
  e->state = E_QUEUED;
  m.accepted++;
  note_depth();
}

/* -- the face: writes, the writer's reference, ready, close --------------- */

static uvq_sink_t* face(void) {
  uvq_sink_t* s = uvq_queue_sink(&m.q);
  CHECK(s != NULL && s == uvq_queue_sink(&m.q));
  return s;
}

/* The writer's current event; a new one when it has none (NULL when the
 * input's events are used up). */
static fev_t* writer_event(void) {
  fev_t* e;
  if (m.cur != NULL)
    return m.cur;
  e = new_event();
  if (e == NULL)
    return NULL;
  e->face = 1;
  e->refs = 1;
  e->writer = 1;
  m.cur = e;
  return e;
}

/* The writer lets go of its reference: the release runs now, and only
 * now, if that was the last. */
static void writer_drop(void) {
  fev_t* e = m.cur;
  if (e == NULL)
    return;
  m.cur = NULL;
  CHECK(e->writer && uvq_event_refs(&e->ev) == e->refs);
  e->writer = 0;
  e->refs--;
  e->due = e->refs == 0;
  uvq_event_unref(&e->ev);
  CHECK(!e->due); /* the last reference: released in the call */
  CHECK(e->refs == 0 || e->state != E_RELEASED);
  CHECK(uvq_event_refs(&e->ev) == e->refs);
}

/* uvq_sink_write(uvq_queue_sink(q), e): e is borrowed (its holder, the
 * writer or the process callback, keeps its reference); the queue takes
 * one more in a carrier, which it gives back on any refusal. */
static void face_write(fev_t* e) {
  fev_t* victim = NULL;
  int drop = REL_NONE, want, rc;
  int outer_release = m.expect_release;
  int outer_released = m.released_now;
  int outer_write = m.in_write;
  if (e == NULL)
    return;
  CHECK(e->face && e->refs > 0 && e->state != E_RELEASED);
  if (m.face_closing || m.closed) {
    want = UVQ_ECLOSED;
  } else {
    want = expected_rc(K_TRY, &drop);
    if (want == UVQ_EFULL && m.policy == POLICY_BLOCK)
      want = UVQ_EAGAIN;
  }
  if (want == 0 && drop != REL_NEW)
    e->refs++; /* the carrier's, taken before a victim goes */
  m.expect_release = want == 0 ? take_victim(drop, &victim) : REL_NONE;
  m.released_now = 0;
  m.in_write = 1;
  rc = uvq_sink_write(face(), &e->ev);
  m.in_write = outer_write;
  m.expect_release = outer_release;
  if (rc != want)
    fprintf(stderr, "face write: got %d (%s), model %d (%s)\n", rc,
            uvq_err_name(rc), want, uvq_err_name(want));
  CHECK(rc == want);
  CHECK(m.released_now == (drop == REL_HEAD && victim == NULL));
  m.released_now = outer_released;
  check_victim(victim);
  CHECK(uvq_event_refs(&e->ev) == e->refs);
  if (rc == UVQ_EAGAIN) {
    if (!m.waiting) { /* the first "again" since the last ready */
      m.waiting = 1;
      m.wait_in_pass = 0;
      m.wait_removed = 0;
    }
    if (m.in_process)
      m.wait_in_pass = 1; /* this pass took one: ready at its end */
    return;
  }
  if (rc != 0)
    return; /* refused, nothing taken */
  if (drop == REL_NEW) {
    m.dropped_new++; /* the carrier went in the call, its reference too */
    return;
  }
  fifo_push(e->id);
  e->queued++;
  m.accepted++;
  note_depth();
}

static void on_ready(uvq_sink_t* s, void* arg) {
  CHECK(s == face());
  CHECK(arg != NULL && arg == m.ready_arg);
  CHECK(!m.in_write); /* never inside the write that said "again" */
  CHECK(m.waiting);   /* only after UVQ_EAGAIN */
  if (m.ready_in_close) {
    m.ready_in_close = 0;
  } else {
    /* at the end of a pass that took events off the queue since (or the
     * pass whose process callback heard "again") */
    reconcile();
    CHECK(!m.in_process && (m.wait_in_pass || m.wait_removed > 0));
  }
  m.waiting = 0;
  if (arg == &m.ready_tags[1] && m.cur != NULL)
    face_write(m.cur); /* offer it again */
}

static void do_set_ready(void* arg) {
  int want = arg != NULL && m.ready_arg != NULL && m.ready_arg != arg
      ? UVQ_EBUSY : 0; /* one upstream */
  CHECK(uvq_sink_set_ready_cb(face(), arg != NULL ? on_ready : NULL, arg) ==
        want);
  if (want == 0)
    m.ready_arg = arg;
}

static void on_face_close(uvq_sink_t* s) {
  CHECK(s == face());
  CHECK(m.face_closing && !m.face_closed);
  m.face_closed = 1;
  if (m.face_close_now)
    return; /* the queue had closed: at once */
  /* Inside the queue's close, just before its callback (if it has one). */
  CHECK(m.stopped && !m.closed);
  CHECK(uvq_queue_ref(&m.q) == UVQ_ECLOSED);
  reconcile();
  CHECK(depth() == 0);
  m.closed = 1;
  m.qcb_due = m.qcb;
}

static void on_face_close_again(uvq_sink_t* s) {
  (void) s;
  CHECK(!"the close callback of a second uvq_sink_close");
}

static void do_face_close(void) {
  CHECK(uvq_sink_is_closed(face()) == m.face_closing);
  if (m.face_closing) { /* a second close does nothing */
    CHECK(uvq_sink_close(face(), on_face_close_again) == 0);
    return;
  }
  if (m.closed) {
    m.face_closing = 1;
    m.face_close_now = 1;
    CHECK(uvq_sink_close(face(), on_face_close) == 0);
    m.face_close_now = 0;
    CHECK(m.face_closed); /* "cb runs once when complete": at once */
    return;
  }
  m.face_closing = 1;
  if (!m.stopped)
    m.qcb = 0; /* a stop without a close callback */
  m.stopped = 1; /* drain; a discard asked before stays */
  m.refd = 1;
  m.ready_in_close = m.waiting && m.ready_arg != NULL;
  CHECK(uvq_sink_close(face(), on_face_close) == 0);
  CHECK(!m.ready_in_close); /* sinks.md: ready once from its close */
  m.waiting = 0; /* said, to nobody if no one is registered */
  CHECK(!m.face_closed);    /* it completes with the queue's close */
  CHECK(uvq_sink_is_closed(face()) == 1);
}

/* -- callbacks ------------------------------------------------------------ */

static void do_stop(int discard);

static void on_close(uvq_queue_t* q) {
  CHECK(q == &m.q);
  CHECK(m.qcb); /* the first stop's callback; none when the face's */
  reconcile();
  CHECK(m.stopped && depth() == 0);
  if (m.face_closing)
    CHECK(m.face_closed && m.qcb_due && m.closed); /* just before us */
  else
    CHECK(!m.closed);
  m.qcb = 0; /* once */
  m.qcb_due = 0;
  m.closed = 1;
}

static void on_process(uvq_queue_t* q, uvq_event_t* ev) {
  fev_t* e = lookup(ev);
  int action = m.cb_action;
  CHECK(q == &m.q);
  CHECK(!m.closed);
  CHECK(!m.discard); /* once discard is asked, nothing more is delivered */
  CHECK(depth() > 0 && m.fifo[m.head] == e->id);
  if (e->face) {
    /* the event itself, not its carrier, with the carrier's reference */
    CHECK(e->queued > 0 && uvq_event_refs(ev) == e->refs);
    e->queued--;
  } else {
    CHECK(e->state == E_QUEUED && uvq_event_refs(ev) == 1);
    e->state = E_DELIVERED;
  }
  m.head++;
  m.delivered++;
  m.run_delivered++;
  removed_one();
  m.cb_action = CB_NONE;
  m.in_process = 1;
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
    if (m.stopped) { /* a drain stop's delivery: the stop keeps its ref */
      CHECK(uvq_queue_unref(q) == UVQ_ECLOSED);
    } else {
      CHECK(uvq_queue_unref(q) == 0);
      m.refd = 0;
    }
    break;
  case CB_FACE_WRITE: /* twice: the second may hear "again" */
    face_write(writer_event());
    face_write(writer_event());
    break;
  case CB_FACE_FORWARD:
    /* the event we were given, through the face again (while we hold it) */
    face_write(e->face ? e : writer_event());
    break;
  case CB_FACE_CLOSE:
    do_face_close();
    break;
  default:
    break;
  }
  m.in_process = 0;
  if (e->face) { /* the callback drops its reference */
    e->refs--;
    e->due = e->refs == 0;
    uvq_event_unref(ev);
    CHECK(!e->due);
    CHECK(e->refs == 0 || e->state != E_RELEASED);
    CHECK(uvq_event_refs(ev) == e->refs);
  }
}

/* -- other operations ----------------------------------------------------- */

static void do_stop(int discard) {
  CHECK(uvq_queue_stop(&m.q, discard ? UVQ_STOP_DISCARD : UVQ_STOP_DRAIN,
                       on_close) == 0);
  if (m.closed)
    return; /* harmless, changes nothing */
  if (!m.stopped)
    m.qcb = 1; /* a later stop's callback is ignored */
  m.stopped = 1;
  if (discard)
    m.discard = 1;
}

static void idle_cb(uv_idle_t* h) {
  (void) h;
}

/* After a uv_run: discards nothing showed, and a ready that must have
 * come. */
static void after_run(void) {
  m.in_run = 0;
  if (depth() > m.peak)
    m.peak = depth(); /* what the last pass left, seen at its end */
  reconcile();
  CHECK(!m.qcb_due); /* the queue's callback follows the face's */
  if (m.waiting && (m.wait_in_pass || m.wait_removed > 0)) {
    /* a pass took events off since "again": it said ready at its end */
    CHECK(m.ready_arg == NULL);
    m.waiting = 0; /* to nobody */
  }
}

static void run_nowait(void) {
  m.run_delivered = 0;
  m.expect_release = REL_DISCARD;
  m.in_run = 1;
  CHECK(uv_run(&m.loop, UV_RUN_NOWAIT) >= 0);
  m.expect_release = REL_NONE;
  after_run();
}

static void run_awake(void) {
  uv_idle_start(&m.idle, idle_cb);
  run_nowait();
  uv_idle_stop(&m.idle);
}

/* Run until the model says the queue is empty (and closed if stopped). A
 * pass takes at most batch events; a few more turns than that is plenty
 * (one more per event accepted meanwhile, by the callbacks). */
static void do_drain(void) {
  uint64_t accepted = m.accepted;
  unsigned turns = depth() / m.batch + 3, i;
  for (i = 0; i < turns + (m.accepted - accepted); i++) {
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
  /* Stopped counts as closing: the stop's reference stays to the end. */
  CHECK(rc == (m.closed || m.stopped ? UVQ_ECLOSED : 0));
  if (rc == 0)
    m.refd = ref;
}

/* The face's operations: the stop opcodes' bytes with the top bit clear,
 * k = 0..15 (bits 4..6, and 8 for the discard stop's). */
static void do_face(unsigned k) {
  unsigned j;
  switch (k) {
  case 0:
  case 12:
    writer_drop(); /* a new event: the writer lets go of the last one */
    face_write(writer_event());
    break;
  case 1:
  case 11:
  case 13:
    face_write(writer_event()); /* the same again (new if none) */
    break;
  case 2:
  case 14:
    writer_drop();
    break;
  case 3:
    do_set_ready(&m.ready_tags[0]);
    break;
  case 4:
    do_set_ready(&m.ready_tags[1]); /* writes the current event again */
    break;
  case 5:
    do_set_ready(NULL);
    break;
  case 6:
    do_face_close();
    break;
  case 7:
    m.cb_action = CB_FACE_FORWARD;
    break;
  case 8:
    m.cb_action = CB_FACE_WRITE;
    break;
  case 9:
    m.cb_action = CB_FACE_CLOSE;
    break;
  case 10:
    for (j = 0; j < 3; j++)
      face_write(writer_event());
    break;
  default:
    face_write(writer_event()); /* write, then let go: the usual writer */
    writer_drop();
    break;
  }
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
  m.fifo_cap = (unsigned) size;
  m.evs = calloc(m.nevs, sizeof(*m.evs));
  m.fifo = calloc(m.fifo_cap, sizeof(*m.fifo));
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
      run_nowait();
      break;
    case 8:
      do_drain();
      break;
    case 9:
      if (b & 0x80) /* rarer than enqueues */
        do_stop(0);
      else
        do_face(b >> 4);
      break;
    case 10:
      if (b & 0x80)
        do_stop(1);
      else
        do_face(8 + (b >> 4));
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

  /* The end: the writer lets go, stop, reference the queue so the loop
   * runs until it closed. */
  m.op = size;
  writer_drop();
  do_stats();
  do_stop((data[3] >> 1) & 1);
  if (!m.closed)
    do_ref(1);
  m.cb_action = CB_NONE;
  m.expect_release = REL_DISCARD;
  uv_close((uv_handle_t*) &m.idle, NULL);
  m.in_run = 1;
  CHECK(uv_run(&m.loop, UV_RUN_DEFAULT) == 0);
  m.expect_release = REL_NONE;
  after_run();
  CHECK(m.closed);
  CHECK(depth() == 0);
  CHECK(!m.waiting); /* "again" was followed by room, and ready */
  CHECK(!m.face_closing || m.face_closed);
  for (j = 0; j < m.next_ev; j++) {
    fev_t* e = &m.evs[j];
    if (e->face)
      CHECK(e->state == E_RELEASED && e->refs == 0 &&
            uvq_event_refs(&e->ev) == 0);
    else
      CHECK(e->state != E_QUEUED);
  }
  CHECK(m.accepted == m.delivered + m.dropped_oldest + m.discarded);
  CHECK(uv_loop_close(&m.loop) == 0);
  free(m.evs);
  free(m.fifo);
  return 0;
}
