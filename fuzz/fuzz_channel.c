/* libFuzzer harness: one channel (and at times a channel sink in front of
 * it), driven by the input, checked against a model.
 *
 * The input is a program. Its first byte chooses the capacity (1..16);
 * every later byte is one operation, some of which read an argument byte:
 *
 *   try_send, send_timeout(0), send (or send_timeout(1 ms) where send would
 *   wait), try_recv, recv_timeout(0), recv (or recv_timeout(1 ms) where recv
 *   would wait), close, destroy (and init again when it succeeded), attach a
 *   channel sink (with or without UVQ_CHANNEL_SINK_KEEP_OPEN), write through
 *   the sink, close the sink, and uv_run(NOWAIT).
 *
 * Everything runs on one thread, the sink's loop thread, so the model is
 * exact: a FIFO with the channel's rules. It predicts every return code
 * (UVQ_EFULL, UVQ_EAGAIN, UVQ_ECLOSED, UVQ_EBUSY, UVQ_ETIMEDOUT, UVQ_EINVAL
 * after destroy, UVQ_EDEADLK for blocking calls on the sink's loop thread),
 * which event each receive returns (the oldest, holding exactly one
 * reference whichever way it was sent), when the sink's upstream is told
 * "ready" (once a receive freed room or the channel closed after the sink
 * said UVQ_EAGAIN, on the next loop iteration, unless the sink closed
 * first), and when the sink's close completes. At the end the channel is
 * closed, drained and destroyed: every event was received and released, or
 * refused and still the caller's, exactly once, and uv_loop_close() returns
 * 0. Any disagreement aborts with a message.
 *
 * Threads are not modelled here: the channel's races are covered by
 * test/check_channel.c and test/check_stress.c under the sanitizers.
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

enum { E_CALLER = 0, E_INSIDE, E_RELEASED };

typedef struct {
  uvq_event_t ev;
  unsigned id;
  int state;
  int releases;
} fev_t;

#define FEV(e) ((fev_t*) ((char*) (e) - offsetof(fev_t, ev)))
#define MAX_TIMED_WAITS 4 /* 1 ms each, per input */

static struct {
  uv_loop_t loop;
  uvq_channel_t ch;
  uvq_channel_sink_t cs;
  size_t cap;
  fev_t* evs;
  unsigned nevs, next_ev;
  /* the model */
  unsigned* fifo;
  unsigned head, tail;
  int closed;
  int destroyed;
  int sink_on;        /* attached: its writes reach the channel */
  int sink_keep_open; /* UVQ_CHANNEL_SINK_KEEP_OPEN */
  int sink_closing;   /* uvq_sink_close called, callback not yet run */
  int sink_wants;     /* said UVQ_EAGAIN; not yet notified */
  int ready_pending;  /* notified: ready comes on the next iteration */
  int upstream_waits; /* got UVQ_EAGAIN and no ready since: the sink's
                       * close sends one (sinks.md) */
  unsigned ready_calls, ready_expected;
  unsigned timed_waits;
  size_t op;
} m;

#define CHECK(c) MODEL_CHECK(c, m.op)

#define CHECK_RC(got, want)                                                  \
  do {                                                                       \
    int got_ = (got), want_ = (want);                                        \
    if (got_ != want_) {                                                     \
      fprintf(stderr, "model mismatch at op %zu (line %d): %s returned %s, " \
              "the model says %s\n", m.op, __LINE__, #got,                   \
              uvq_err_name(got_), uvq_err_name(want_));                      \
      abort();                                                               \
    }                                                                        \
  } while (0)

static unsigned depth(void) {
  return m.tail - m.head;
}

static void ev_release(uvq_event_t* ev) {
  fev_t* e = FEV(ev);
  e->releases++;
  e->state = E_RELEASED;
}

static fev_t* new_event(void) {
  fev_t* e;
  if (m.next_ev == m.nevs)
    return NULL;
  e = &m.evs[m.next_ev++];
  CHECK_RC(uvq_event_init(&e->ev, ev_release), 0);
  return e;
}

/* The model's side of a send the channel took. */
static void model_push(fev_t* e) {
  m.fifo[m.tail++] = e->id;
  e->state = E_INSIDE;
}

/* A receive freed a slot: a sink waiting for room is told. */
static void model_room(void) {
  if (m.sink_wants && m.sink_on) {
    m.sink_wants = 0;
    m.ready_pending = 1;
  }
}

/* What a send would return without waiting. */
static int send_expect(void) {
  if (m.destroyed)
    return UVQ_EINVAL;
  if (m.closed)
    return UVQ_ECLOSED;
  return depth() == m.cap ? UVQ_EFULL : 0;
}

static int recv_expect(void) {
  if (m.destroyed)
    return UVQ_EINVAL;
  if (depth() > 0)
    return 0;
  return m.closed ? UVQ_ECLOSED : UVQ_EAGAIN;
}

static void check_received(int r, uvq_event_t* got) {
  fev_t* e;
  if (r != 0) {
    CHECK(got == NULL);
    return;
  }
  CHECK(got != NULL);
  e = FEV(got);
  CHECK(e >= m.evs && e < m.evs + m.nevs);
  CHECK(e->state == E_INSIDE && e->id == m.fifo[m.head]);
  /* Sent directly or through the sink: the receiver holds one reference. */
  CHECK(uvq_event_refs(got) == 1);
  m.head++;
  model_room();
  uvq_event_unref(got);
  CHECK(e->state == E_RELEASED && e->releases == 1);
}

static void op_send(int how) {
  fev_t* e = new_event();
  int want;
  int r;
  if (e == NULL)
    return;
  want = send_expect();
  switch (how) {
  case 0:
    r = uvq_channel_try_send(&m.ch, &e->ev);
    break;
  case 1:
    r = uvq_channel_send_timeout(&m.ch, &e->ev, 0);
    break;
  default:
    /* Blocking: refused on the sink's loop thread; where it would wait,
     * wait 1 ms instead (a few times per input at most). */
    if (!m.destroyed && m.sink_on) {
      want = UVQ_EDEADLK;
      r = (how == 2) ? uvq_channel_send(&m.ch, &e->ev)
                     : uvq_channel_send_timeout(&m.ch, &e->ev, 1);
    } else if (want == UVQ_EFULL) {
      if (m.timed_waits++ >= MAX_TIMED_WAITS)
        return; /* the event stays unused */
      want = UVQ_ETIMEDOUT;
      r = uvq_channel_send_timeout(&m.ch, &e->ev, 1);
    } else {
      r = uvq_channel_send(&m.ch, &e->ev);
    }
    break;
  }
  CHECK_RC(r, want);
  if (r == 0)
    model_push(e);
  else
    CHECK(e->state == E_CALLER && uvq_event_refs(&e->ev) == 1);
}

static void op_recv(int how) {
  uvq_event_t* got = (uvq_event_t*) &m; /* must be overwritten */
  int want = recv_expect();
  int r;
  switch (how) {
  case 0:
    r = uvq_channel_try_recv(&m.ch, &got);
    break;
  case 1:
    r = uvq_channel_recv_timeout(&m.ch, &got, 0);
    break;
  default:
    if (!m.destroyed && m.sink_on) {
      want = UVQ_EDEADLK;
      r = (how == 2) ? uvq_channel_recv(&m.ch, &got)
                     : uvq_channel_recv_timeout(&m.ch, &got, 1);
    } else if (want == UVQ_EAGAIN) {
      if (m.timed_waits++ >= MAX_TIMED_WAITS)
        return;
      want = UVQ_ETIMEDOUT;
      r = uvq_channel_recv_timeout(&m.ch, &got, 1);
    } else {
      r = uvq_channel_recv(&m.ch, &got);
    }
    break;
  }
  CHECK_RC(r, want);
  check_received(r, got);
}

static void op_close(void) {
  CHECK_RC(uvq_channel_close(&m.ch), m.destroyed ? UVQ_EINVAL : 0);
  if (m.destroyed || m.closed)
    return;
  m.closed = 1;
  /* The sink is told, so that its upstream learns UVQ_ECLOSED. */
  if (m.sink_wants && m.sink_on) {
    m.sink_wants = 0;
    m.ready_pending = 1;
  }
}

static void op_destroy(void) {
  int want;
  if (m.destroyed) {
    CHECK_RC(uvq_channel_destroy(&m.ch), UVQ_EINVAL);
    /* Bring it back for the rest of the program. */
    CHECK_RC(uvq_channel_init(&m.ch, m.cap), 0);
    m.destroyed = 0;
    m.closed = 0;
    m.head = m.tail;
    return;
  }
  want = (depth() > 0 || m.sink_on) ? UVQ_EBUSY : 0;
  CHECK_RC(uvq_channel_destroy(&m.ch), want);
  if (want == 0) {
    fev_t* e = new_event();
    m.destroyed = 1;
    if (e != NULL) /* a destroyed channel refuses everything */
      CHECK_RC(uvq_channel_try_send(&m.ch, &e->ev), UVQ_EINVAL);
  }
}

static void on_ready(uvq_sink_t* sink, void* arg) {
  CHECK(sink == &m.cs.sink && arg == &m);
  m.ready_calls++;
}

static void on_sink_closed(uvq_sink_t* sink) {
  CHECK(sink == &m.cs.sink && m.sink_closing);
  m.sink_closing = 0;
}

static void run_once(void) {
  (void) uv_run(&m.loop, UV_RUN_NOWAIT);
  /* One iteration runs the async callback (ready) and the close callbacks;
   * a sink that closed first never reports ready from there (its close
   * sent one itself if its upstream was waiting: op_sink_close). */
  if (m.ready_pending) {
    m.ready_pending = 0;
    m.ready_expected++;
    m.upstream_waits = 0;
  }
  CHECK(m.ready_calls == m.ready_expected);
  CHECK(!m.sink_closing);
}

static void op_sink_attach(unsigned arg) {
  unsigned flags = (arg & 1) ? UVQ_CHANNEL_SINK_KEEP_OPEN : 0;
  int want;
  if (m.sink_closing)
    run_once(); /* the old close completes; cs may be reused after it */
  if (m.destroyed)
    want = UVQ_EINVAL;
  else if (m.sink_on)
    want = UVQ_EBUSY;
  else
    want = 0;
  if (want == UVQ_EBUSY) {
    uvq_channel_sink_t other;
    CHECK_RC(uvq_channel_sink_init(&m.loop, &other, &m.ch, flags), want);
    return;
  }
  CHECK_RC(uvq_channel_sink_init(&m.loop, &m.cs, &m.ch, flags), want);
  if (want != 0)
    return;
  CHECK_RC(uvq_sink_set_ready_cb(&m.cs.sink, on_ready, &m), 0);
  m.sink_on = 1;
  m.sink_keep_open = (int) (arg & 1);
  m.sink_wants = 0;
  m.upstream_waits = 0;
}

static void op_sink_write(void) {
  fev_t* e;
  int want;
  if (!m.sink_on)
    return;
  e = new_event();
  if (e == NULL)
    return;
  want = send_expect();
  if (want == UVQ_EFULL)
    want = UVQ_EAGAIN;
  CHECK_RC(uvq_sink_write(&m.cs.sink, &e->ev), want);
  if (want == UVQ_EAGAIN)
    m.sink_wants = m.upstream_waits = 1;
  if (want == 0)
    model_push(e); /* the channel holds a reference of its own */
  uvq_event_unref(&e->ev); /* the writer's */
  if (want == 0)
    CHECK(e->state == E_INSIDE && e->releases == 0);
  else
    CHECK(e->state == E_RELEASED && e->releases == 1);
}

static void op_sink_close(void) {
  if (!m.sink_on)
    return;
  m.sink_on = 0;
  m.sink_closing = 1;
  m.sink_wants = 0;
  m.ready_pending = 0; /* its handle closes before the callback could run */
  CHECK_RC(uvq_sink_close(&m.cs.sink, on_sink_closed), 0);
  CHECK(m.sink_closing); /* completes on a later iteration */
  if (m.upstream_waits) { /* the close itself sent the ready */
    m.upstream_waits = 0;
    m.ready_expected++;
  }
  CHECK(m.ready_calls == m.ready_expected);
  if (!m.sink_keep_open && !m.closed)
    m.closed = 1;
  /* Closed sinks refuse writes at once. */
  {
    fev_t* e = new_event();
    if (e != NULL) {
      CHECK_RC(uvq_sink_write(&m.cs.sink, &e->ev), UVQ_ECLOSED);
      CHECK(uvq_event_refs(&e->ev) == 1);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  size_t i;
  unsigned j;

  if (size < 1)
    return 0;
  memset(&m, 0, sizeof(m));
  m.cap = 1 + data[0] % 16;
  m.nevs = (unsigned) size * 2 + 4;
  m.evs = calloc(m.nevs, sizeof(*m.evs));
  m.fifo = calloc(m.nevs, sizeof(*m.fifo));
  if (m.evs == NULL || m.fifo == NULL)
    abort();
  for (j = 0; j < m.nevs; j++)
    m.evs[j].id = j;
  CHECK_RC(uv_loop_init(&m.loop), 0);
  CHECK_RC(uvq_channel_init(&m.ch, m.cap), 0);

  for (i = 1; i < size; i++) {
    unsigned arg = i + 1 < size ? data[i + 1] : 0;
    m.op = i;
    switch (data[i] % 13) {
    case 0: op_send(0); break;
    case 1: op_send(1); break;
    case 2: op_send(2 + (arg & 1)); i++; break;
    case 3: op_recv(0); break;
    case 4: op_recv(1); break;
    case 5: op_recv(2 + (arg & 1)); i++; break;
    case 6: op_close(); break;
    case 7: op_destroy(); break;
    case 8: op_sink_attach(arg); i++; break;
    case 9: case 10: op_sink_write(); break;
    case 11: op_sink_close(); break;
    default: run_once(); break;
    }
  }

  /* The end: detach the sink, close, drain in order, destroy. */
  m.op = size;
  if (m.destroyed) {
    CHECK_RC(uvq_channel_init(&m.ch, m.cap), 0);
    m.destroyed = 0;
    m.closed = 0;
  }
  op_sink_close();
  run_once();
  op_close();
  while (depth() > 0) {
    uvq_event_t* got = NULL;
    int r = uvq_channel_try_recv(&m.ch, &got);
    CHECK_RC(r, 0);
    check_received(r, got);
  }
  {
    uvq_event_t* got = (uvq_event_t*) &m;
    CHECK_RC(uvq_channel_recv(&m.ch, &got), UVQ_ECLOSED);
    CHECK(got == NULL);
  }
  CHECK_RC(uvq_channel_destroy(&m.ch), 0);
  CHECK(m.ready_calls == m.ready_expected);
  for (j = 0; j < m.next_ev; j++) {
    fev_t* e = &m.evs[j];
    if (e->state == E_CALLER) {
      CHECK(e->releases == 0 && uvq_event_refs(&e->ev) == 1);
      uvq_event_unref(&e->ev); /* refused: still ours */
    }
    CHECK(e->state == E_RELEASED && e->releases == 1);
  }
  CHECK_RC(uv_run(&m.loop, UV_RUN_DEFAULT), 0);
  CHECK_RC(uv_loop_close(&m.loop), 0);
  free(m.evs);
  free(m.fifo);
  return 0;
}
