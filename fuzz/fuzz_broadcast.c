/* libFuzzer harness: a broadcaster with up to six scripted sinks, checked
 * against the promises of include/uvq.h rather than against a copy of its
 * algorithm.
 *
 * The input is read as one stream of bytes. The top level takes an
 * operation from it (write an event, add, remove, close a sink directly,
 * signal a sink ready, close the broadcaster); each time the broadcaster
 * writes to a sink, that sink takes its answer from the same stream: take
 * the event (0), UVQ_EAGAIN, another error, close itself and return
 * UVQ_ECLOSED, or first do something re-entrant (add or remove a sink,
 * close the broadcaster, write into the broadcaster, signal another sink
 * ready) and then answer. When the stream runs out every sink takes what it
 * is given, waiting sinks are made ready until the last event completes,
 * and the broadcaster is closed.
 *
 * What is checked, after every operation and inside every sink write:
 *   - each sink sees events in the order the broadcaster took them, never
 *     one twice, and only events it owes: it was attached when the event
 *     was taken, has not been removed since, and is not waiting for its
 *     ready after UVQ_EAGAIN;
 *   - no skip: when an operation returns, every attached sink that owes the
 *     event in progress is waiting after UVQ_EAGAIN (the broadcaster is then
 *     busy and its writes return UVQ_EAGAIN), and a new event is taken only
 *     when no attached sink owes the previous one;
 *   - the event is released exactly once: at the writer's unref when every
 *     sink took it at once, when the last waiting sink took it (or was
 *     removed), or at close; the upstream is told ready exactly when a busy
 *     broadcaster completed its event, or at close when it had said
 *     UVQ_EAGAIN;
 *   - every return code of add, remove, write and close, the counters of
 *     uvq_broadcast_stats, and close: its callback runs once, after every
 *     attached sink was closed, and later calls return UVQ_ECLOSED.
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

#define NSINKS 6
#define MAX_EVENTS 512
#define MAX_DEPTH 4 /* re-entrant actions nest at most this deep */

enum { S_NOT_OWED = 0, S_OWED, S_WAITING, S_DONE };

typedef struct {
  uvq_event_t ev;
  int releases;
} fev_t;

typedef struct {
  uvq_sink_t sink;
  unsigned idx;
  int attached;      /* in the broadcaster's list, as far as the model knows */
  unsigned gen;      /* bumped by every add: which entry of the list it is */
  int closed;        /* its close operation ran (whoever closed it) */
  int close_cbs;     /* the close callback of a close we asked for ran */
  int last_seen;     /* id of the last event written to it, -1: none */
  int again;         /* its last answer was UVQ_EAGAIN for last_seen */
} tsink_t;

static struct {
  const uint8_t* data;
  size_t size, pos;
  uvq_broadcast_t b;
  tsink_t sinks[NSINKS];
  fev_t evs[MAX_EVENTS];
  int nevs;
  int cur;            /* event in progress (taken, maybe pending), -1 none */
  int status[NSINKS]; /* of cur, per sink */
  int closing, close_cbs;
  int said_again;
  unsigned ready_calls, ready_expected;
  uvq_broadcast_stats_t want; /* written, deliveries, failures, removed */
  int depth;
  size_t op;
} m;

#define CHECK(c) MODEL_CHECK(c, m.op)

static unsigned next_byte(int* have) {
  if (m.pos >= m.size) {
    *have = 0;
    return 0;
  }
  *have = 1;
  return m.data[m.pos++];
}

static unsigned byte_or_zero(void) {
  int have;
  return next_byte(&have);
}

static int event_id(const uvq_event_t* ev) {
  const fev_t* e = (const fev_t*) ((const char*) ev - offsetof(fev_t, ev));
  CHECK(e >= m.evs && e < m.evs + m.nevs);
  return (int) (e - m.evs);
}

static void ev_release(uvq_event_t* ev) {
  m.evs[event_id(ev)].releases++;
}

static int attached_count(void) {
  int i, n = 0;
  for (i = 0; i < NSINKS; i++)
    n += m.sinks[i].attached;
  return n;
}

/* Does any attached sink still owe cur? */
static int pending(void) {
  int i;
  if (m.cur < 0 || m.closing)
    return 0;
  for (i = 0; i < NSINKS; i++)
    if (m.sinks[i].attached &&
        (m.status[i] == S_OWED || m.status[i] == S_WAITING))
      return 1;
  return 0;
}

static void model_detach(tsink_t* s) {
  s->attached = 0;
  if (m.cur >= 0 && m.status[s->idx] != S_DONE)
    m.status[s->idx] = S_DONE; /* abandoned: never written cur again */
}

/* -- the scripted sinks ---------------------------------------------------- */

static void on_sink_closed(uvq_sink_t* sink) {
  tsink_t* s = (tsink_t*) sink;
  CHECK(s->closed && s->close_cbs == 0);
  s->close_cbs++;
}

static void tsink_close(uvq_sink_t* sink) {
  tsink_t* s = (tsink_t*) sink;
  CHECK(!s->closed); /* closed once, by whoever */
  s->closed = 1;
  uvq_sink_closed(sink); /* at once */
}

static void reentrant(unsigned what);

static int tsink_write(uvq_sink_t* sink, uvq_event_t* ev) {
  tsink_t* s = (tsink_t*) sink;
  int id = event_id(ev);
  unsigned gen = s->gen;
  int same; /* still the entry the broadcaster is writing to */
  unsigned b;
  int r;

  /* Only the event in progress, only if owed, never twice, in order. */
  CHECK(!s->closed);
  CHECK(id == m.cur && !m.closing);
  CHECK(s->attached && m.status[s->idx] == S_OWED);
  /* A later event, or the same one again after UVQ_EAGAIN and ready. */
  CHECK(id > s->last_seen || (id == s->last_seen && s->again));
  CHECK(uvq_event_refs(ev) >= 1);
  s->last_seen = id;
  s->again = 0;
  m.status[s->idx] = S_DONE; /* until told otherwise below */

  b = byte_or_zero();
  if ((b & 7) >= 5 && m.depth < MAX_DEPTH) {
    m.depth++;
    reentrant(b >> 3);
    m.depth--;
    b = byte_or_zero();
  }
  /* Removed (and perhaps added again) by its own re-entrant action: the
   * broadcaster ignores the answer for the old entry. */
  same = s->attached && s->gen == gen;
  switch (b & 7) {
  case 2:
    r = UVQ_EAGAIN;
    break;
  case 3:
    r = UVQ_ENOMEM; /* failed: that sink misses that event */
    break;
  case 4:
    r = UVQ_ECLOSED;
    /* Close for real, unless added again meanwhile: then the new entry
     * would keep a closed sink that the model could not follow. */
    if (!s->closed && (same || !s->attached)) {
      CHECK(uvq_sink_close(&s->sink, on_sink_closed) == 0);
      CHECK(s->closed && s->close_cbs == 1);
    }
    break;
  default:
    r = 0;
    break;
  }
  /* Counted as the broadcaster counts, also when it began to close during
   * this write (it stops the fan-out only after the write returns). */
  if (r == 0) {
    m.want.deliveries++;
  } else if (r == UVQ_EAGAIN) {
    if (same && !m.closing) {
      m.status[s->idx] = S_WAITING;
      s->again = 1;
    }
  } else if (r == UVQ_ECLOSED) {
    if (same) {
      m.want.removed++;
      s->attached = 0;
    }
  } else {
    m.want.failures++;
  }
  return r;
}

static const uvq_sink_vtable_t tsink_vt = {tsink_write, tsink_close};

/* -- operations, top level or from inside a sink's write ------------------- */

static void on_upstream_ready(uvq_sink_t* sink, void* arg) {
  CHECK(sink == &m.b.sink && arg == &m);
  m.ready_calls++;
}

static void on_b_closed(uvq_sink_t* sink) {
  int i;
  CHECK(sink == &m.b.sink && m.closing && m.close_cbs == 0);
  m.close_cbs++;
  /* Every sink it still had was closed before this. */
  for (i = 0; i < NSINKS; i++)
    CHECK(!m.sinks[i].attached || m.sinks[i].closed);
}

static void do_add(unsigned j) {
  tsink_t* s = &m.sinks[j % NSINKS];
  int want;
  if (m.closing || s->closed)
    want = UVQ_ECLOSED;
  else
    want = 0; /* idempotent when already there */
  CHECK(uvq_broadcast_add(&m.b, &s->sink) == want);
  if (want == 0 && !s->attached) {
    s->attached = 1;
    s->gen++;
    if (m.cur >= 0)
      m.status[s->idx] = S_NOT_OWED; /* starts with the next event */
  }
}

static void do_remove(unsigned j) {
  tsink_t* s = &m.sinks[j % NSINKS];
  int want;
  if (m.closing)
    want = UVQ_ECLOSED;
  else
    want = s->attached ? 0 : UVQ_ENOENT;
  CHECK(uvq_broadcast_remove(&m.b, &s->sink) == want);
  if (want == 0)
    model_detach(s);
}

static void do_close_b(void) {
  if (!m.closing) {
    m.closing = 1;
    if (m.said_again)
      m.ready_expected++; /* the upstream must not wait forever */
    m.said_again = 0;
  }
  /* Closes every sink it has (tsink_close sees it) when no fan-out is on
   * the stack, else after the current write; a second close does nothing. */
  CHECK(uvq_sink_close(&m.b.sink, on_b_closed) == 0);
}

static void do_ready(unsigned j) {
  tsink_t* s = &m.sinks[j % NSINKS];
  if (s->attached && !m.closing && m.cur >= 0 &&
      m.status[s->idx] == S_WAITING)
    m.status[s->idx] = S_OWED; /* may be written again now */
  uvq_sink_ready(&s->sink); /* otherwise spurious: must change nothing */
}

/* Close a sink ourselves, as a careful user does: remove it first (the
 * header's warning), so that the broadcaster neither waits for its ready
 * nor keeps a pointer to it. Sinks that close themselves inside a write
 * (returning UVQ_ECLOSED) exercise the automatic removal. */
static void do_close_sink(unsigned j) {
  tsink_t* s = &m.sinks[j % NSINKS];
  if (s->closed)
    return;
  if (s->attached && !m.closing)
    do_remove(s->idx);
  CHECK(uvq_sink_close(&s->sink, on_sink_closed) == 0);
  CHECK(s->closed && s->close_cbs == 1);
}

static void reentrant(unsigned what) {
  unsigned arg = byte_or_zero();
  switch (what % 5) {
  case 0: do_add(arg); break;
  case 1: do_remove(arg); break;
  case 2: do_close_b(); break;
  case 3: {
    /* A write into the broadcaster from inside its own fan-out. */
    fev_t* e;
    if (m.nevs == MAX_EVENTS)
      break;
    e = &m.evs[m.nevs++];
    CHECK(uvq_event_init(&e->ev, ev_release) == 0);
    CHECK(uvq_sink_write(&m.b.sink, &e->ev) ==
          (m.closing ? UVQ_ECLOSED : UVQ_EBUSY));
    uvq_event_unref(&e->ev);
    CHECK(e->releases == 1);
    break;
  }
  default: do_ready(arg); break;
  }
}

static void do_write(void) {
  fev_t* e;
  int id, want, r, i;
  if (m.nevs == MAX_EVENTS)
    return;
  id = m.nevs++;
  e = &m.evs[id];
  CHECK(uvq_event_init(&e->ev, ev_release) == 0);
  if (m.closing)
    want = UVQ_ECLOSED;
  else if (pending())
    want = UVQ_EAGAIN;
  else
    want = 0;
  if (want == 0) {
    /* Taken: the previous event is finished with. */
    if (m.cur >= 0)
      CHECK(m.evs[m.cur].releases == 1);
    m.cur = id;
    m.want.written++;
    for (i = 0; i < NSINKS; i++)
      m.status[i] = m.sinks[i].attached ? S_OWED : S_NOT_OWED;
  }
  r = uvq_sink_write(&m.b.sink, &e->ev);
  CHECK(r == want);
  if (r == UVQ_EAGAIN)
    m.said_again = 1;
  uvq_event_unref(&e->ev); /* the writer's reference */
  if (r != 0) {
    CHECK(e->releases == 1);
    return;
  }
  /* Still owed to a waiting sink: the broadcaster holds a reference. */
  CHECK(e->releases == (pending() ? 0 : 1));
}

/* After every top-level operation. */
static void check_state(int was_pending) {
  uvq_broadcast_stats_t st;
  int i;
  int now = pending();

  /* No skip: an attached sink that owes cur is waiting for its ready. */
  if (m.cur >= 0 && !m.closing)
    for (i = 0; i < NSINKS; i++)
      CHECK(!m.sinks[i].attached || m.status[i] != S_OWED);
  /* Completion (or close) lets go of the event. */
  if (m.cur >= 0 && !now)
    CHECK(m.evs[m.cur].releases == 1);
  if (was_pending && !now && !m.closing) {
    m.ready_expected++; /* a busy broadcaster that completed says ready */
    m.said_again = 0;
  }
  CHECK(m.ready_calls == m.ready_expected);
  CHECK(uvq_broadcast_stats(&m.b, &st) == 0);
  CHECK(st.written == m.want.written);
  CHECK(st.deliveries == m.want.deliveries);
  CHECK(st.failures == m.want.failures);
  CHECK(st.removed == m.want.removed);
  if (m.closing) {
    CHECK(m.close_cbs == 1);
    CHECK(st.sinks == 0);
    for (i = 0; i < NSINKS; i++)
      m.sinks[i].attached = 0;
  } else {
    CHECK(st.sinks == (uint64_t) attached_count());
  }
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int i;
  int guard;

  memset(&m, 0, sizeof(m));
  m.data = data;
  m.size = size;
  m.cur = -1;
  CHECK(uvq_broadcast_init(&m.b) == 0);
  CHECK(uvq_sink_set_ready_cb(&m.b.sink, on_upstream_ready, &m) == 0);
  for (i = 0; i < NSINKS; i++) {
    CHECK(uvq_sink_init(&m.sinks[i].sink, &tsink_vt) == 0);
    m.sinks[i].idx = (unsigned) i;
    m.sinks[i].last_seen = -1;
  }

  while (m.pos < m.size) {
    int was_pending = pending();
    unsigned b;
    m.op = m.pos;
    b = byte_or_zero();
    switch (b % 8) {
    case 0: case 1: case 2: do_write(); break;
    case 3: do_add(b >> 3); break;
    case 4: do_remove(b >> 3); break;
    case 5: do_ready(b >> 3); break;
    case 6: do_close_sink(b >> 3); break;
    default:
      /* Rarely: close the broadcaster in the middle of the program. */
      if ((b >> 3) % 4 == 0)
        do_close_b();
      else
        do_write();
      break;
    }
    check_state(was_pending);
  }

  /* The input is used up: every sink now takes what it gets. Let the last
   * event complete, then close. */
  m.op = m.pos;
  for (guard = 0; pending() && guard < NSINKS * 4; guard++) {
    int was_pending = pending();
    for (i = 0; i < NSINKS; i++)
      if (m.sinks[i].attached && m.status[i] == S_WAITING)
        do_ready((unsigned) i);
    check_state(was_pending);
  }
  CHECK(!pending());
  {
    int was_pending = pending();
    do_close_b();
    check_state(was_pending);
  }
  /* Closed for good. */
  CHECK(uvq_broadcast_add(&m.b, &m.sinks[0].sink) == UVQ_ECLOSED);
  CHECK(uvq_broadcast_remove(&m.b, &m.sinks[0].sink) == UVQ_ECLOSED);
  do_write();
  for (i = 0; i < m.nevs; i++)
    CHECK(m.evs[i].releases == 1);
  for (i = 0; i < NSINKS; i++)
    CHECK(m.sinks[i].close_cbs <= 1);
  return 0;
}
