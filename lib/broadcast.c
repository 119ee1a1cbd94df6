/* Broadcaster: one event, every sink, in order, exactly once.
 *
 * The sink list is an array of entries that grows with realloc. A fan-out
 * ("pass") walks it by index, re-reading the array after every sink write,
 * because that write may add (append, maybe realloc) or remove sinks:
 *
 *   entries_: [ A | B | (hole) | D | E' ]      count_ = 5, holes_ = 1
 *                     ^ removed during the pass: sink = NULL
 *                                      ^ added during the pass: no TODO bit
 *
 * Invariants that make "no skip, no duplicate" hold:
 *   - during a pass nothing moves: removal leaves a hole (sink = NULL) and
 *     additions append; holes are compacted only when no pass runs, so
 *     index i names the same slot for the whole pass;
 *   - an entry owes the current event only while its TODO bit is set; the
 *     bit is set for every entry when the event is taken, and cleared just
 *     before the entry's write: an entry is written at most once per event
 *     (a lone entry is written at once, and never gets the bit);
 *   - WAITING marks an entry that said UVQ_EAGAIN: it keeps TODO and is
 *     written again only after its ready callback.
 *
 * Flow control: while any entry still owes the event (a sink said "again"),
 * the broadcaster holds one reference to it and its own writes return
 * UVQ_EAGAIN; the pass that clears the last TODO drops the reference and
 * calls uvq_sink_ready() on the broadcaster. Close requested inside a pass
 * only sets a flag: the pass stops after the current write and the close
 * runs when the stack unwinds, so no sink is closed while its own write is
 * still running and the broadcaster is never freed under the pass.
 *
 * Everything runs on the loop thread; nothing here takes a lock. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct uvq__bentry_s {
  uvq_sink_t* sink; /* NULL: a hole left by a removal during a pass */
  unsigned flags;
};

/* Entry flags. */
enum {
  UVQ__B_TODO = 1,   /* still owes the event being fanned out */
  UVQ__B_WAITING = 2 /* said UVQ_EAGAIN; written again after its ready */
};

/* Broadcaster flags. */
enum {
  UVQ__B_IN_PASS = 1,  /* a pass is on the stack */
  UVQ__B_RERUN = 2,    /* a ready arrived during the pass: walk again */
  UVQ__B_CLOSING = 4,  /* close began */
  UVQ__B_HOLDS_REF = 8, /* the broadcaster holds a reference to ev_ */
  UVQ__B_SAID_AGAIN = 16 /* the upstream got UVQ_EAGAIN, awaits our ready */
};

static int uvq__broadcast_write(uvq_sink_t* sink, uvq_event_t* ev);
static void uvq__broadcast_close(uvq_sink_t* sink);

static const uvq_sink_vtable_t uvq__broadcast_vt = {
  uvq__broadcast_write,
  uvq__broadcast_close
};

static void uvq__broadcast_on_ready(uvq_sink_t* sink, void* arg);

/* Detach only our own ready callback: the user may have attached another
 * upstream after removing the sink. */
static void uvq__broadcast_detach(uvq_broadcast_t* b, uvq_sink_t* sink) {
  if (sink->ready_cb_ == uvq__broadcast_on_ready && sink->ready_arg_ == b)
    uvq_sink_set_ready_cb(sink, NULL, NULL);
}

static size_t uvq__broadcast_find(const uvq_broadcast_t* b,
                                  const uvq_sink_t* sink) {
  size_t i;
  for (i = 0; i < b->count_; i++)
    if (b->entries_[i].sink == sink)
      return i;
  return b->count_;
}

static int uvq__broadcast_pending(const uvq_broadcast_t* b) {
  size_t i;
  for (i = 0; i < b->count_; i++)
    if (b->entries_[i].sink != NULL && (b->entries_[i].flags & UVQ__B_TODO))
      return 1;
  return 0;
}

static UVQ__NOINLINE void uvq__broadcast_compact(uvq_broadcast_t* b) {
  size_t i;
  size_t j;
  for (i = 0, j = 0; i < b->count_; i++)
    if (b->entries_[i].sink != NULL)
      b->entries_[j++] = b->entries_[i];
  b->count_ = j;
  b->holes_ = 0;
}

/* What entry i's write of ev_ to s answered (err), after the write: count
 * it, mark the entry waiting after UVQ_EAGAIN, drop it after UVQ_ECLOSED.
 * Returns 1 when the entry now waits. The write may have added sinks
 * (moving the array) or removed this one (its slot is a hole then). */
static UVQ__INLINE size_t uvq__broadcast_answer(uvq_broadcast_t* b, size_t i,
                                                uvq_sink_t* s, int err) {
  struct uvq__bentry_s* e = &b->entries_[i];
  if (err == 0) {
    b->stats_.deliveries++;
  } else if (err == UVQ_EAGAIN) {
    if (e->sink == s) {
      e->flags |= UVQ__B_TODO | UVQ__B_WAITING;
      return 1;
    }
    b->stats_.abandoned++; /* removed during its own write */
  } else if (err == UVQ_ECLOSED) {
    if (e->sink == s) {
      uvq__broadcast_detach(b, s);
      e->sink = NULL;
      e->flags = 0;
      b->holes_++;
      b->stats_.removed++;
    }
  } else {
    b->stats_.failures++;
  }
  return 0;
}

/* Write ev_ to every entry that owes it and is not waiting. Returns how
 * many writes said UVQ_EAGAIN and left their entry waiting. When none did
 * and no close stopped the pass (write checks that first), the pass that
 * write runs leaves no entry owing the event: every entry was written
 * (whatever the answer) or removed, and additions owe nothing; so write
 * need not look for one. */
static size_t uvq__broadcast_pass(uvq_broadcast_t* b) {
  struct uvq__bentry_s* e;
  uvq_sink_t* s;
  size_t waiting = 0;
  size_t i;

  b->flags_ |= UVQ__B_IN_PASS;
  do {
    b->flags_ &= ~UVQ__B_RERUN;
    /* count_ is re-read each time round: sinks added by a write are
     * appended, and they do not owe this event anyway. */
    for (i = 0; i < b->count_ && !(b->flags_ & UVQ__B_CLOSING); i++) {
      e = &b->entries_[i];
      if (e->sink == NULL ||
          (e->flags & (UVQ__B_TODO | UVQ__B_WAITING)) != UVQ__B_TODO)
        continue;
      s = e->sink;
      /* Cleared before the write: a remove from inside it does not count
       * the event as abandoned, and the entry cannot be written twice. */
      e->flags &= ~UVQ__B_TODO;
      waiting += uvq__broadcast_answer(
          b, i, s, uvq__sink_write_checked(s, b->ev_)); /* same thread */
    }
  } while ((b->flags_ & UVQ__B_RERUN) && !(b->flags_ & UVQ__B_CLOSING));
  b->flags_ &= ~(UVQ__B_IN_PASS | UVQ__B_RERUN);
  return waiting;
}

/* The pass of write when the broadcaster has one sink: the same, without
 * the loops. Nothing can ask for a second round (a ready during the pass
 * reruns it only for an entry that was waiting before it, and the only
 * entry waits on nobody until its write returns; sinks added meanwhile
 * owe nothing), and nothing is closing (write is refused then). */
static UVQ__INLINE size_t uvq__broadcast_one(uvq_broadcast_t* b) {
  uvq_sink_t* s = b->entries_[0].sink; /* no holes outside a pass */
  int err;

  b->entries_[0].flags = 0; /* written now: owes nothing, waits for none */
  b->flags_ |= UVQ__B_IN_PASS;
  err = uvq__sink_write_checked(s, b->ev_); /* same thread: see add */
  b->flags_ &= ~UVQ__B_IN_PASS;
  return uvq__broadcast_answer(b, 0, s, err);
}

static void uvq__broadcast_on_child_closed(uvq_sink_t* sink) {
  uvq_broadcast_t* b;
  /* The close callback carries no argument: we are still the sink's
   * upstream (detached only now), so its ready argument names us. */
  if (sink->ready_cb_ != uvq__broadcast_on_ready)
    return;
  b = sink->ready_arg_;
  uvq_sink_set_ready_cb(sink, NULL, NULL);
  if (--b->closes_left_ == 0)
    uvq_sink_closed(&b->sink); /* last: the user may free b here */
}

/* The close proper, never run from inside a pass. b may be freed when this
 * returns (every sink closed at once and the user's callback freed it). */
static void uvq__broadcast_finish_close(uvq_broadcast_t* b) {
  uvq_event_t* ev;
  uvq_sink_t* s;
  size_t i;

  if (b->ev_ != NULL) {
    for (i = 0; i < b->count_; i++)
      if (b->entries_[i].sink != NULL &&
          (b->entries_[i].flags & UVQ__B_TODO))
        b->stats_.abandoned++;
    ev = b->ev_;
    b->ev_ = NULL;
    if (b->flags_ & UVQ__B_HOLDS_REF) {
      b->flags_ &= ~UVQ__B_HOLDS_REF;
      uvq_event_unref(ev);
    }
  }

  /* One extra count so that sinks closing at once cannot finish the close
   * while this loop still walks the list. add and remove return
   * UVQ_ECLOSED from now on, so the list cannot change under the loop. */
  b->closes_left_ = 1;
  for (i = 0; i < b->count_; i++) {
    s = b->entries_[i].sink;
    if (s == NULL)
      continue;
    b->entries_[i].sink = NULL;
    if (uvq_sink_is_closed(s) == 1) {
      uvq__broadcast_detach(b, s); /* someone else closes it */
      continue;
    }
    b->closes_left_++;
    if (uvq_sink_close(s, uvq__broadcast_on_child_closed) != 0) {
      uvq__broadcast_detach(b, s);
      b->closes_left_--;
    }
  }
  free(b->entries_);
  b->entries_ = NULL;
  b->count_ = 0;
  b->cap_ = 0;
  b->holes_ = 0;
  if (--b->closes_left_ == 0)
    uvq_sink_closed(&b->sink); /* last: the user may free b here */
}

/* After a pass: close if asked to (returns 1: b may be gone), else tidy. */
static int uvq__broadcast_after_pass(uvq_broadcast_t* b) {
  if (b->flags_ & UVQ__B_CLOSING) {
    uvq__broadcast_finish_close(b);
    return 1;
  }
  if (b->holes_ != 0)
    uvq__broadcast_compact(b);
  return 0;
}

/* The event in progress reached every sink that still has it: let go of it
 * and tell the upstream. */
static void uvq__broadcast_complete(uvq_broadcast_t* b) {
  uvq_event_t* ev = b->ev_;
  b->ev_ = NULL;
  if (b->flags_ & UVQ__B_HOLDS_REF) {
    b->flags_ &= ~UVQ__B_HOLDS_REF;
    uvq_event_unref(ev);
  }
  b->flags_ &= ~UVQ__B_SAID_AGAIN;
  uvq_sink_ready(&b->sink); /* last: the upstream may write again here */
}

static int uvq__broadcast_write(uvq_sink_t* sink, uvq_event_t* ev) {
  uvq_broadcast_t* b = UVQ__CONTAINER_OF(sink, uvq_broadcast_t, sink);
  size_t waiting;
  size_t i;

  if (b->flags_ & UVQ__B_IN_PASS)
    return UVQ_EBUSY; /* written to from inside its own fan-out */
  if (b->ev_ != NULL) {
    b->flags_ |= UVQ__B_SAID_AGAIN;
    return UVQ_EAGAIN; /* a sink still owes the previous event */
  }
  b->stats_.written++;
  if (b->count_ == 0)
    return 0;
  b->ev_ = ev;
  if (b->count_ == 1) {
    waiting = uvq__broadcast_one(b);
  } else {
    for (i = 0; i < b->count_; i++)
      b->entries_[i].flags = UVQ__B_TODO; /* no holes outside a pass */
    waiting = uvq__broadcast_pass(b);
  }
  if (uvq__broadcast_after_pass(b))
    return 0; /* closed from inside the pass: b may be gone */
  /* A sink that said "again" may since have been removed (or said ready
   * and taken the event on a second walk): look only if one said it. */
  if (waiting != 0 && uvq__broadcast_pending(b)) {
    /* The writer's reference ends when we return; keep our own. */
    uvq_event_ref(ev);
    b->flags_ |= UVQ__B_HOLDS_REF;
  } else {
    b->ev_ = NULL;
  }
  return 0;
}

static void uvq__broadcast_on_ready(uvq_sink_t* sink, void* arg) {
  uvq_broadcast_t* b = arg;
  size_t i;

  if (b->ev_ == NULL || (b->flags_ & UVQ__B_CLOSING))
    return;
  i = uvq__broadcast_find(b, sink);
  if (i == b->count_ || !(b->entries_[i].flags & UVQ__B_WAITING))
    return;
  b->entries_[i].flags &= ~UVQ__B_WAITING;
  if (b->flags_ & UVQ__B_IN_PASS) {
    b->flags_ |= UVQ__B_RERUN; /* the pass on the stack picks it up */
    return;
  }
  (void) uvq__broadcast_pass(b); /* pending() looks at every entry */
  if (uvq__broadcast_after_pass(b))
    return;
  if (!uvq__broadcast_pending(b))
    uvq__broadcast_complete(b);
}

static void uvq__broadcast_close(uvq_sink_t* sink) {
  uvq_broadcast_t* b = UVQ__CONTAINER_OF(sink, uvq_broadcast_t, sink);
  b->flags_ |= UVQ__B_CLOSING;
  if (b->flags_ & UVQ__B_SAID_AGAIN) {
    /* An upstream waits for our ready, which the pending fan-out would have
     * sent: send it now, so it offers its event again and learns
     * UVQ_ECLOSED (the base refuses writes from here on) instead of
     * waiting forever. */
    b->flags_ &= ~UVQ__B_SAID_AGAIN;
    uvq_sink_ready(sink);
  }
  if (b->flags_ & UVQ__B_IN_PASS)
    return; /* the pass stops after the current write and closes then */
  uvq__broadcast_finish_close(b);
}

int uvq_broadcast_init(uvq_broadcast_t* b) {
  if (b == NULL)
    return UVQ_EINVAL;
  uvq_sink_init(&b->sink, &uvq__broadcast_vt);
  b->sink.data = b;
  b->entries_ = NULL;
  b->count_ = 0;
  b->cap_ = 0;
  b->holes_ = 0;
  b->ev_ = NULL;
  b->closes_left_ = 0;
  b->flags_ = 0;
  memset(&b->stats_, 0, sizeof(b->stats_));
  return 0;
}

int uvq_broadcast_add(uvq_broadcast_t* b, uvq_sink_t* sink) {
  struct uvq__bentry_s* grown;
  size_t cap;
  int err;

  if (b == NULL || sink == NULL || sink == &b->sink)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(&b->sink) || !uvq__sink_on_thread(sink))
    return UVQ_ETHREAD;
  if ((b->flags_ & UVQ__B_CLOSING) || uvq_sink_is_closed(sink) == 1)
    return UVQ_ECLOSED;
  if (uvq__broadcast_find(b, sink) != b->count_)
    return 0; /* idempotent, like go-events */
  if (sink->ready_cb_ != NULL)
    return UVQ_EBUSY; /* it has another upstream */
  if (b->count_ == b->cap_) {
    cap = b->cap_ != 0 ? b->cap_ * 2 : 4;
    if (cap < b->cap_ || cap > SIZE_MAX / sizeof(*grown))
      return UVQ_ENOMEM;
    grown = realloc(b->entries_, cap * sizeof(*grown));
    if (grown == NULL)
      return UVQ_ENOMEM; /* the old array is untouched */
    b->entries_ = grown;
    b->cap_ = cap;
  }
  err = uvq_sink_set_ready_cb(sink, uvq__broadcast_on_ready, b);
  if (err != 0)
    return err;
  /* No TODO bit: a sink added now starts with the next event. */
  b->entries_[b->count_].sink = sink;
  b->entries_[b->count_].flags = 0;
  b->count_++;
  return 0;
}

int uvq_broadcast_remove(uvq_broadcast_t* b, uvq_sink_t* sink) {
  struct uvq__bentry_s* e;
  size_t i;

  if (b == NULL || sink == NULL)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(&b->sink))
    return UVQ_ETHREAD;
  if (b->flags_ & UVQ__B_CLOSING)
    return UVQ_ECLOSED;
  i = uvq__broadcast_find(b, sink);
  if (i == b->count_)
    return UVQ_ENOENT;
  e = &b->entries_[i];
  uvq__broadcast_detach(b, sink);
  if (e->flags & UVQ__B_TODO)
    b->stats_.abandoned++;
  if (b->flags_ & UVQ__B_IN_PASS) {
    e->sink = NULL; /* a hole: the pass keeps its indices */
    e->flags = 0;
    b->holes_++;
    return 0;
  }
  memmove(e, e + 1, (b->count_ - i - 1) * sizeof(*e));
  b->count_--;
  if (b->ev_ != NULL && !uvq__broadcast_pending(b))
    uvq__broadcast_complete(b); /* it was the last one the event waited for */
  return 0;
}

int uvq_broadcast_stats(const uvq_broadcast_t* b, uvq_broadcast_stats_t* out) {
  if (b == NULL || out == NULL)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(&b->sink))
    return UVQ_ETHREAD;
  *out = b->stats_;
  out->sinks = b->count_ - b->holes_;
  return 0;
}
