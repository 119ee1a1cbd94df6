/* The channel: a bounded buffer that any thread sends to and receives from,
 * and the channel sink that lets the loop write into it without blocking.
 *
 *   senders (any thread)                       receivers (any thread)
 *   --------------------                       ----------------------
 *   tail_ = pos << 1 | CLOSED                  head_ = pos
 *   slot[pos % cap].seq == 2pos ?              slot[pos % cap].seq == 2pos+1 ?
 *     CAS tail_ pos -> pos+1, store ev,          CAS head_ pos -> pos+1,
 *     seq = 2pos+1  (published)                  take ev, seq = 2(pos+cap)
 *   receivers asleep? signal one               senders asleep? signal one
 *
 * The ring is Dmitry Vyukov's bounded MPMC queue: each slot carries a
 * sequence number that says whose turn it is (even: free for the sender of
 * position seq/2; odd: holds the event of position seq/2; doubling, rather
 * than Vyukov's pos+1, keeps the two states apart when the capacity is 1),
 * so a sender and a receiver
 * touch the same slot but never the same position counter, and nobody ever
 * waits for another thread of its own side to finish. That is the property
 * that matters on a small, busy machine: a sender preempted between its CAS
 * and its publish holds up only the receiver that wants that very slot (which
 * sleeps until it comes), never the other senders. Rings that commit in
 * ticket order (Concurrency Kit's MPMC) make every producer spin behind a
 * preempted one and stall completely when threads outnumber cores.
 *
 * Close is one bit in the senders' counter. A send commits with a CAS on that
 * word, so a send that starts after uvq_channel_close set the bit cannot
 * succeed: closed always wins, unlike Go's select. Once closed, the counter's
 * position is the number of events ever sent, so a receiver knows the
 * channel is drained for good when head_ reaches it.
 *
 * Waiting. The fast paths take no lock. A thread that must wait spins and
 * yields a little (the other side usually makes room within microseconds),
 * then takes lock_, counts itself in send_waiters_ or recv_waiters_, and
 * sleeps on a condition variable, retrying its operation under the lock each
 * time it wakes. The other side looks at the waiter word after each
 * operation and only takes the lock to signal when someone sleeps and
 * nobody has been signalled yet (UVQ__CH_WAKING); the signalled thread
 * passes the baton when it leaves. Lost wakeups are excluded Dekker-style:
 * the waiter changes the waiter word, then reads the ring; the other side
 * changes the ring, then reads the waiter word; all four are sequentially
 * consistent, so one of the two sees the other, and the waiter holds lock_
 * from its check until it sleeps, so a signal cannot slip in between.
 *
 * The channel sink's wish to be told about room (after it returned
 * UVQ_EAGAIN) is bit 0 of send_waiters_, so receivers check both kinds of
 * waiting sender with the one load they do anyway. Receivers send the
 * sink's uv_async_t only under lock_, and the sink detaches under lock_
 * before it closes that handle: no receiver can touch a closing handle.
 */
#include <stdlib.h>
#ifdef _WIN32
# include <windows.h>
#else
# include <sched.h>
#endif

#include "internal.h"

#define UVQ__CH_CLOSED ((uint64_t) 1)
#define UVQ__CH_POS(t) ((t) >> 1)
/* Waiters words (see "wakeups" below). */
#define UVQ__CH_SINK_WANTS ((uint64_t) 1) /* send_waiters_ only */
#define UVQ__CH_WAKING ((uint64_t) 2)     /* a signalled sleeper is coming */
#define UVQ__CH_WAITER ((uint64_t) 4)     /* one registered sleeper */

/* Before it sleeps, a blocking call retries UVQ__CH_SPIN times with a pause
 * (about 1.5 us here), then UVQ__CH_YIELDS times giving its core away. The
 * yields matter on a small machine: a sleep costs a futex wake and tens of
 * microseconds of wake latency in a VM, during which the buffer runs full
 * or dry; a yield hands the core to the thread that will make room (when
 * threads outnumber cores) or returns at once (when they do not). Measured
 * on 2 cores, this removed nearly every sleep at 1-8 senders. */
#ifndef UVQ__CH_SPIN
# define UVQ__CH_SPIN 64
#endif
#ifndef UVQ__CH_YIELDS
# define UVQ__CH_YIELDS 16
#endif

typedef struct {
  _Atomic(uint64_t) seq;
  uvq_event_t* ev; /* ordered by seq: written before, read after */
} uvq__slot_t;

static inline uvq__slot_t* uvq__slot(const uvq_channel_t* ch, uint64_t pos) {
  uvq__slot_t* slots = ch->slots_;
  /* Positions never wrap in practice (2^62 operations); a power-of-two
   * capacity avoids the division. */
  if (UVQ__LIKELY(ch->pow2_))
    return &slots[pos & ch->mask_];
  return &slots[pos % ch->capacity_];
}

/* -- the ring ------------------------------------------------------------- */

/* test/check_channel_race.c builds a copy of this file with a pause in
 * uvq__put, between a sender's claim of a slot and its publish, which no
 * test could otherwise schedule. Nothing in the library's own build. */
#ifndef UVQ__CH_AFTER_CLAIM
# define UVQ__CH_AFTER_CLAIM() ((void) 0)
#endif
/* And one in a close, after the closed bit is set (lock_ held). */
#ifndef UVQ__CH_AFTER_CLOSE_BIT
# define UVQ__CH_AFTER_CLOSE_BIT() ((void) 0)
#endif

/* One attempt to send: 0, UVQ_EFULL or UVQ_ECLOSED. Does not wake anybody. */
static inline int uvq__put(uvq_channel_t* ch, uvq_event_t* ev) {
  uint64_t t = atomic_load(&ch->tail_);
  uvq__slot_t* s;
  uint64_t pos;

  for (;;) {
    int64_t dif;
    if (UVQ__UNLIKELY(t & UVQ__CH_CLOSED))
      return UVQ_ECLOSED;
    pos = UVQ__CH_POS(t);
    s = uvq__slot(ch, pos);
    dif = (int64_t) (atomic_load(&s->seq) - 2 * pos);
    if (dif == 0) {
      /* Fails, and reloads t, if another sender took pos or close set the
       * bit meanwhile. */
      if (atomic_compare_exchange_weak(&ch->tail_, &t, t + 2))
        break;
    } else if (dif < 0) {
      /* The slot still holds the event from one lap ago: full, unless t is
       * stale. */
      uint64_t t2 = atomic_load(&ch->tail_);
      if (t2 == t)
        return UVQ_EFULL;
      t = t2;
    } else {
      t = atomic_load(&ch->tail_); /* another sender was faster */
    }
  }
  UVQ__CH_AFTER_CLAIM();
  s->ev = ev;
  atomic_store(&s->seq, 2 * pos + 1); /* seq_cst: see "Waiting" above */
  return 0;
}

/* One attempt to receive: 0, UVQ_EAGAIN (nothing to take now) or
 * UVQ_ECLOSED (closed and drained). Does not wake anybody. */
static inline int uvq__get(uvq_channel_t* ch, uvq_event_t** out) {
  uint64_t h = atomic_load(&ch->head_);
  uvq__slot_t* s;

  for (;;) {
    int64_t dif;
    s = uvq__slot(ch, h);
    dif = (int64_t) (atomic_load(&s->seq) - (2 * h + 1));
    if (dif == 0) {
      if (atomic_compare_exchange_weak(&ch->head_, &h, h + 1))
        break;
    } else if (dif < 0) {
      /* Not published: empty, or its sender is between CAS and publish. */
      uint64_t t = atomic_load(&ch->tail_);
      uint64_t h2 = atomic_load(&ch->head_);
      if (h2 != h) {
        h = h2;
        continue;
      }
      /* Closed and every position below the final count taken: no event
       * can ever come again. */
      if ((t & UVQ__CH_CLOSED) && UVQ__CH_POS(t) == h)
        return UVQ_ECLOSED;
      return UVQ_EAGAIN;
    } else {
      h = atomic_load(&ch->head_); /* another receiver was faster */
    }
  }
  *out = s->ev;
  atomic_store(&s->seq, 2 * (h + ch->capacity_)); /* free, next lap */
  return 0;
}

/* -- wakeups -------------------------------------------------------------- */

/* A waiters word (send_waiters_, recv_waiters_) holds the number of
 * registered sleepers times UVQ__CH_WAITER, UVQ__CH_WAKING while one of them
 * has been signalled and has not run yet, and (senders only) the sink's
 * UVQ__CH_SINK_WANTS. With WAKING set the other side does not signal again:
 * the thread on its way will, once it runs, take as much as it can, and
 * pass the baton to the next sleeper if there is still work for it (at
 * the end of uvq__send_slow and uvq__recv_slow). One futex wake then
 * serves a burst of events instead of one event, which is what keeps a busy
 * channel fast when threads outnumber cores. */

/* 1 when there are sleepers and none has been signalled. */
static inline int uvq__should_wake(uint64_t w) {
  return w >= UVQ__CH_WAITER && !(w & UVQ__CH_WAKING);
}

/* Under lock_: signal one sleeper on cond if nobody is on the way. */
static void uvq__wake_one(_Atomic(uint64_t)* word, uv_cond_t* cond) {
  if (uvq__should_wake(atomic_load(word))) {
    atomic_fetch_or(word, UVQ__CH_WAKING);
    uv_cond_signal(cond);
  }
}

/* Under lock_: tell the channel sink, if it waits for room. */
static void uvq__notify_sink(uvq_channel_t* ch) {
  uint64_t w;
  if (!(atomic_load(&ch->send_waiters_) & UVQ__CH_SINK_WANTS))
    return;
  w = atomic_fetch_and(&ch->send_waiters_, ~UVQ__CH_SINK_WANTS);
  if ((w & UVQ__CH_SINK_WANTS) && ch->sink_ != NULL)
    uvq__async_send(&ch->sink_->async_);
}

/* After a send: wake a sleeping receiver, if one should be. */
static inline void uvq__sent(uvq_channel_t* ch, int locked) {
  if (UVQ__LIKELY(!uvq__should_wake(atomic_load(&ch->recv_waiters_))))
    return;
  if (!locked)
    uv_mutex_lock(&ch->lock_);
  uvq__wake_one(&ch->recv_waiters_, &ch->recv_cond_);
  if (!locked)
    uv_mutex_unlock(&ch->lock_);
}

/* After a receive: wake a sleeping sender and the sink, if they wait. */
static inline void uvq__received(uvq_channel_t* ch, int locked) {
  uint64_t w = atomic_load(&ch->send_waiters_);
  if (UVQ__LIKELY(!uvq__should_wake(w) && !(w & UVQ__CH_SINK_WANTS)))
    return;
  if (!locked)
    uv_mutex_lock(&ch->lock_);
  uvq__wake_one(&ch->send_waiters_, &ch->send_cond_);
  uvq__notify_sink(ch);
  if (!locked)
    uv_mutex_unlock(&ch->lock_);
}

/* 1 when a send could succeed now (or tail_ moved: maybe). */
static int uvq__has_room(uvq_channel_t* ch) {
  uint64_t t = atomic_load(&ch->tail_);
  uint64_t pos = UVQ__CH_POS(t);
  if (t & UVQ__CH_CLOSED)
    return 0; /* every sleeper got the close broadcast */
  return (int64_t) (atomic_load(&uvq__slot(ch, pos)->seq) - 2 * pos) >= 0;
}

/* 1 when a receive could succeed now (or head_ moved: maybe). */
static int uvq__has_event(uvq_channel_t* ch) {
  uint64_t h = atomic_load(&ch->head_);
  return (int64_t) (atomic_load(&uvq__slot(ch, h)->seq) - (2 * h + 1)) >= 0;
}

/* -- waiting -------------------------------------------------------------- */

/* The i-th wait of a spinning thread (see UVQ__CH_SPIN). */
static void uvq__backoff(int i) {
  if (i < UVQ__CH_SPIN)
    uvq__cpu_relax();
#ifdef _WIN32
  else
    SwitchToThread();
#else
  else
    sched_yield();
#endif
}

/* Sleep on cond until signalled or deadline (uv_hrtime; 0: no deadline).
 * Returns 0 after a sleep, UVQ_ETIMEDOUT when the deadline has passed
 * (without sleeping). lock_ held. */
static int uvq__wait(uvq_channel_t* ch, uv_cond_t* cond, uint64_t deadline) {
  uint64_t now;
  if (deadline == 0) {
    uv_cond_wait(cond, &ch->lock_);
    return 0;
  }
  now = uv_hrtime();
  if (now >= deadline)
    return UVQ_ETIMEDOUT;
  (void) uv_cond_timedwait(cond, &ch->lock_, deadline - now);
  return 0;
}

static int uvq__send_slow(uvq_channel_t* ch, uvq_event_t* ev,
                          uint64_t deadline) {
  int r;
  int i;

  for (i = 0; i < UVQ__CH_SPIN + UVQ__CH_YIELDS; i++) {
    if (i >= UVQ__CH_SPIN && deadline != 0 && uv_hrtime() >= deadline)
      break;
    uvq__backoff(i);
    r = uvq__put(ch, ev);
    if (r != UVQ_EFULL) {
      if (r == 0)
        uvq__sent(ch, 0);
      return r;
    }
  }

  uv_mutex_lock(&ch->lock_);
  atomic_fetch_add(&ch->send_waiters_, UVQ__CH_WAITER);
  for (;;) {
    /* Retried after a timeout too: a wakeup that raced with the deadline
     * must not strand the room it announced. */
    r = uvq__put(ch, ev);
    if (r != UVQ_EFULL)
      break;
    r = uvq__wait(ch, &ch->send_cond_, deadline);
    if (r != 0)
      break;
    /* Whoever was signalled (maybe us) is awake now. */
    atomic_fetch_and(&ch->send_waiters_, ~UVQ__CH_WAKING);
  }
  if (r == 0)
    uvq__sent(ch, 1);
  /* Pass the baton: whoever made room while we were on our way saw WAKING
   * and did not signal. Count down, then look at the ring: the mirror of
   * the other side's "change the ring, then look at the count", so one of
   * the two signals. */
  atomic_fetch_sub(&ch->send_waiters_, UVQ__CH_WAITER);
  if (uvq__should_wake(atomic_load(&ch->send_waiters_)) && uvq__has_room(ch))
    uvq__wake_one(&ch->send_waiters_, &ch->send_cond_);
  uv_mutex_unlock(&ch->lock_); /* last touch of ch */
  return r;
}

static int uvq__recv_slow(uvq_channel_t* ch, uvq_event_t** out,
                          uint64_t deadline) {
  int r;
  int i;

  for (i = 0; i < UVQ__CH_SPIN + UVQ__CH_YIELDS; i++) {
    if (i >= UVQ__CH_SPIN && deadline != 0 && uv_hrtime() >= deadline)
      break;
    uvq__backoff(i);
    r = uvq__get(ch, out);
    if (r != UVQ_EAGAIN) {
      if (r == 0)
        uvq__received(ch, 0);
      return r;
    }
  }

  uv_mutex_lock(&ch->lock_);
  atomic_fetch_add(&ch->recv_waiters_, UVQ__CH_WAITER);
  for (;;) {
    r = uvq__get(ch, out);
    if (r != UVQ_EAGAIN)
      break;
    r = uvq__wait(ch, &ch->recv_cond_, deadline);
    if (r != 0)
      break;
    atomic_fetch_and(&ch->recv_waiters_, ~UVQ__CH_WAKING);
  }
  if (r == 0)
    uvq__received(ch, 1);
  /* Pass the baton (as in uvq__send_slow). Once closed, pass it on even
   * with nothing to take: a receiver that got the close broadcast while a
   * sender sat between its claim and its publish went back to sleep, and
   * that sender's one wakeup reached only one of them; each must wake the
   * next, to take what is left or learn UVQ_ECLOSED. */
  atomic_fetch_sub(&ch->recv_waiters_, UVQ__CH_WAITER);
  if (uvq__should_wake(atomic_load(&ch->recv_waiters_)) &&
      (uvq__has_event(ch) || (atomic_load(&ch->tail_) & UVQ__CH_CLOSED)))
    uvq__wake_one(&ch->recv_waiters_, &ch->recv_cond_);
  uv_mutex_unlock(&ch->lock_); /* last touch of ch */
  return r;
}

/* An absolute deadline timeout_ms from now; 0 (none) beyond the end of
 * time. */
static uint64_t uvq__deadline(int64_t timeout_ms) {
  uint64_t now = uv_hrtime();
  if ((uint64_t) timeout_ms > (UINT64_MAX - now) / 1000000)
    return 0;
  return now + (uint64_t) timeout_ms * 1000000;
}

/* 1 when the caller is the loop thread of the attached channel sink: a
 * blocking call there could wait for the loop it stops. */
static inline int uvq__on_sink_loop(uvq_channel_t* ch) {
  uv_thread_t t;
  if (UVQ__LIKELY(UVQ__LOAD(&ch->has_sink_, acquire) == 0))
    return 0;
  t = UVQ__LOAD(&ch->sink_thread_, relaxed);
  return uvq__on_thread(t);
}

/* -- send ----------------------------------------------------------------- */

static inline int uvq__send(uvq_channel_t* ch, uvq_event_t* ev, int may_wait,
                            uint64_t deadline) {
  int r = uvq__put(ch, ev);
  if (UVQ__LIKELY(r == 0)) {
    uvq__sent(ch, 0);
    return 0;
  }
  if (r != UVQ_EFULL || !may_wait)
    return r;
  return uvq__send_slow(ch, ev, deadline);
}

int uvq_channel_send(uvq_channel_t* ch, uvq_event_t* ev) {
  if (UVQ__UNLIKELY(ch == NULL || ev == NULL || ch->slots_ == NULL))
    return UVQ_EINVAL;
  if (UVQ__UNLIKELY(uvq__on_sink_loop(ch)))
    return UVQ_EDEADLK;
  return uvq__send(ch, ev, 1, 0);
}

int uvq_channel_try_send(uvq_channel_t* ch, uvq_event_t* ev) {
  if (UVQ__UNLIKELY(ch == NULL || ev == NULL || ch->slots_ == NULL))
    return UVQ_EINVAL;
  return uvq__send(ch, ev, 0, 0);
}

int uvq_channel_send_timeout(uvq_channel_t* ch, uvq_event_t* ev,
                             int64_t timeout_ms) {
  if (ch == NULL || ev == NULL || ch->slots_ == NULL || timeout_ms < 0)
    return UVQ_EINVAL;
  if (timeout_ms == 0)
    return uvq__send(ch, ev, 0, 0);
  if (uvq__on_sink_loop(ch))
    return UVQ_EDEADLK;
  return uvq__send(ch, ev, 1, uvq__deadline(timeout_ms));
}

/* -- receive -------------------------------------------------------------- */

static inline int uvq__recv(uvq_channel_t* ch, uvq_event_t** out,
                            int may_wait, uint64_t deadline) {
  int r = uvq__get(ch, out);
  if (UVQ__LIKELY(r == 0)) {
    uvq__received(ch, 0);
    return 0;
  }
  if (r == UVQ_EAGAIN && may_wait)
    r = uvq__recv_slow(ch, out, deadline);
  if (r != 0)
    *out = NULL;
  return r;
}

/* Checks shared by the receive calls; clears *out on error. */
static inline int uvq__recv_args(uvq_channel_t* ch, uvq_event_t** out) {
  if (UVQ__UNLIKELY(out == NULL))
    return UVQ_EINVAL;
  if (UVQ__UNLIKELY(ch == NULL || ch->slots_ == NULL)) {
    *out = NULL;
    return UVQ_EINVAL;
  }
  return 0;
}

int uvq_channel_recv(uvq_channel_t* ch, uvq_event_t** out) {
  int r = uvq__recv_args(ch, out);
  if (UVQ__UNLIKELY(r != 0))
    return r;
  if (UVQ__UNLIKELY(uvq__on_sink_loop(ch))) {
    *out = NULL;
    return UVQ_EDEADLK;
  }
  return uvq__recv(ch, out, 1, 0);
}

int uvq_channel_try_recv(uvq_channel_t* ch, uvq_event_t** out) {
  int r = uvq__recv_args(ch, out);
  if (UVQ__UNLIKELY(r != 0))
    return r;
  return uvq__recv(ch, out, 0, 0);
}

int uvq_channel_recv_timeout(uvq_channel_t* ch, uvq_event_t** out,
                             int64_t timeout_ms) {
  int r = uvq__recv_args(ch, out);
  if (r != 0)
    return r;
  if (timeout_ms < 0) {
    *out = NULL;
    return UVQ_EINVAL;
  }
  if (timeout_ms == 0)
    return uvq__recv(ch, out, 0, 0);
  if (uvq__on_sink_loop(ch)) {
    *out = NULL;
    return UVQ_EDEADLK;
  }
  return uvq__recv(ch, out, 1, uvq__deadline(timeout_ms));
}

/* -- lifetime ------------------------------------------------------------- */

int uvq_channel_init(uvq_channel_t* ch, size_t capacity) {
  uvq__slot_t* slots;
  size_t i;
  int r;

  if (ch == NULL || !UVQ__ALIGNED(ch, uvq_channel_t) || capacity == 0 ||
      capacity > UVQ_CHANNEL_MAX_CAPACITY)
    return UVQ_EINVAL;
  slots = malloc(capacity * sizeof(*slots));
  if (slots == NULL)
    return UVQ_ENOMEM;
  for (i = 0; i < capacity; i++) {
    atomic_init(&slots[i].seq, 2 * (uint64_t) i); /* free for position i */
    slots[i].ev = NULL;
  }
  r = uv_mutex_init(&ch->lock_);
  if (r != 0)
    goto fail_mutex;
  r = uv_cond_init(&ch->send_cond_);
  if (r != 0)
    goto fail_send_cond;
  r = uv_cond_init(&ch->recv_cond_);
  if (r != 0)
    goto fail_recv_cond;

  ch->capacity_ = capacity;
  ch->pow2_ = (capacity & (capacity - 1)) == 0;
  ch->mask_ = capacity - 1;
  ch->sink_ = NULL;
  atomic_init(&ch->has_sink_, 0);
  atomic_init(&ch->sink_thread_, uv_thread_self());
  atomic_init(&ch->send_waiters_, 0);
  atomic_init(&ch->recv_waiters_, 0);
  atomic_init(&ch->tail_, 0);
  atomic_init(&ch->head_, 0);
  /* Last: a non-NULL ring is what marks the channel usable. */
  ch->slots_ = slots;
  return 0;

fail_recv_cond:
  uv_cond_destroy(&ch->send_cond_);
fail_send_cond:
  uv_mutex_destroy(&ch->lock_);
fail_mutex:
  free(slots);
  ch->slots_ = NULL;
  return r;
}

/* Set the closed bit and wake everyone; lock_ held. Waiters check the bit
 * under lock_ before they sleep, so each either saw it or sleeps and gets
 * the broadcast. The bit is set under the lock too: whoever sees it and
 * goes on to uvq_channel_destroy (which takes lock_) cannot get there
 * before the closer has let go of ch. */
static void uvq__close_locked(uvq_channel_t* ch) {
  uint64_t old = atomic_fetch_or(&ch->tail_, UVQ__CH_CLOSED);
  if (old & UVQ__CH_CLOSED)
    return;
  UVQ__CH_AFTER_CLOSE_BIT();
  uv_cond_broadcast(&ch->send_cond_);
  uv_cond_broadcast(&ch->recv_cond_);
  uvq__notify_sink(ch); /* its upstream retries and learns UVQ_ECLOSED */
}

int uvq_channel_close(uvq_channel_t* ch) {
  if (ch == NULL || ch->slots_ == NULL)
    return UVQ_EINVAL;
  if (atomic_load(&ch->tail_) & UVQ__CH_CLOSED)
    return 0;
  uv_mutex_lock(&ch->lock_);
  uvq__close_locked(ch);
  uv_mutex_unlock(&ch->lock_);
  return 0;
}

int uvq_channel_destroy(uvq_channel_t* ch) {
  int busy;

  if (ch == NULL || ch->slots_ == NULL)
    return UVQ_EINVAL;
  uv_mutex_lock(&ch->lock_);
  busy = ch->sink_ != NULL ||
         atomic_load(&ch->send_waiters_) >= UVQ__CH_WAITER ||
         atomic_load(&ch->recv_waiters_) >= UVQ__CH_WAITER ||
         UVQ__CH_POS(atomic_load(&ch->tail_)) != atomic_load(&ch->head_);
  uv_mutex_unlock(&ch->lock_);
  if (busy)
    return UVQ_EBUSY;
  uv_cond_destroy(&ch->recv_cond_);
  uv_cond_destroy(&ch->send_cond_);
  uv_mutex_destroy(&ch->lock_);
  free(ch->slots_);
  ch->slots_ = NULL;
  return 0;
}

/* -- the channel sink (loop thread) --------------------------------------- */

/* In cs->flags_, beside the user's UVQ_CHANNEL_SINK_KEEP_OPEN: our upstream
 * got UVQ_EAGAIN and has had no ready since. */
#define UVQ__CS_SAID_AGAIN 0x100u

static int uvq__cs_write(uvq_sink_t* sink, uvq_event_t* ev) {
  uvq_channel_sink_t* cs = (uvq_channel_sink_t*) sink;
  uvq_channel_t* ch = cs->ch_;
  int r;

  /* The reference must exist before a receiver can see the event. */
  uvq_event_ref(ev);
  r = uvq__put(ch, ev);
  if (r == UVQ_EFULL) {
    /* Ask receivers for a wakeup, then look once more: room freed between
     * the first attempt and the request would otherwise go unannounced. */
    atomic_fetch_or(&ch->send_waiters_, UVQ__CH_SINK_WANTS);
    r = uvq__put(ch, ev);
    if (r == 0)
      atomic_fetch_and(&ch->send_waiters_, ~UVQ__CH_SINK_WANTS);
    else if (r == UVQ_EFULL)
      r = UVQ_EAGAIN;
  }
  if (r == 0) {
    uvq__sent(ch, 0);
    return 0;
  }
  uvq_event_unref(ev); /* never the last: the writer holds one */
  if (r == UVQ_EAGAIN)
    cs->flags_ |= UVQ__CS_SAID_AGAIN;
  return r;
}

static void uvq__cs_async_cb(uv_async_t* handle) {
  uvq_channel_sink_t* cs = UVQ__CONTAINER_OF(handle, uvq_channel_sink_t,
                                             async_);
  if (uvq_sink_is_closed(&cs->sink) == 0) {
    cs->flags_ &= ~UVQ__CS_SAID_AGAIN;
    uvq_sink_ready(&cs->sink);
  }
}

static void uvq__cs_on_close(uv_handle_t* handle) {
  uvq_channel_sink_t* cs = UVQ__CONTAINER_OF(handle, uvq_channel_sink_t,
                                             async_);
  uvq_sink_closed(&cs->sink); /* last: the user may free cs here */
}

static void uvq__cs_close(uvq_sink_t* sink) {
  uvq_channel_sink_t* cs = (uvq_channel_sink_t*) sink;
  uvq_channel_t* ch = cs->ch_;

  /* After this no receiver can reach our async handle, and we never touch
   * ch again: the detach and the close are one critical section, so a
   * receiver that sees the channel closed and destroys it (destroy takes
   * lock_ and refuses while a sink is attached) waits for our unlock. */
  uv_mutex_lock(&ch->lock_);
  ch->sink_ = NULL;
  UVQ__STORE(&ch->has_sink_, 0, release);
  atomic_fetch_and(&ch->send_waiters_, ~UVQ__CH_SINK_WANTS);
  if (!(cs->flags_ & UVQ_CHANNEL_SINK_KEEP_OPEN))
    uvq__close_locked(ch);
  uv_mutex_unlock(&ch->lock_);
  cs->ch_ = NULL;
  if (cs->flags_ & UVQ__CS_SAID_AGAIN) {
    /* The receivers' wakeup can no longer reach us (detached above), so
     * the ready our upstream waits for would never come: send it now; its
     * retry learns UVQ_ECLOSED (sinks.md). */
    cs->flags_ &= ~UVQ__CS_SAID_AGAIN;
    uvq_sink_ready(sink);
  }
  uv_close((uv_handle_t*) &cs->async_, uvq__cs_on_close);
}

static const uvq_sink_vtable_t uvq__channel_sink_vt = {
  uvq__cs_write,
  uvq__cs_close
};

int uvq_channel_sink_init(uv_loop_t* loop, uvq_channel_sink_t* cs,
                          uvq_channel_t* ch, unsigned flags) {
  int r;

  if (loop == NULL || cs == NULL || ch == NULL || ch->slots_ == NULL ||
      (flags & ~UVQ_CHANNEL_SINK_KEEP_OPEN) != 0)
    return UVQ_EINVAL;
  uv_mutex_lock(&ch->lock_);
  if (ch->sink_ != NULL) {
    uv_mutex_unlock(&ch->lock_);
    return UVQ_EBUSY;
  }
  r = uv_async_init(loop, &cs->async_, uvq__cs_async_cb);
  if (r != 0) {
    uv_mutex_unlock(&ch->lock_);
    return r;
  }
  (void) uvq_sink_init(&cs->sink, &uvq__channel_sink_vt);
  cs->ch_ = ch;
  cs->flags_ = flags;
  ch->sink_ = cs;
  UVQ__STORE(&ch->sink_thread_, uv_thread_self(), relaxed);
  UVQ__STORE(&ch->has_sink_, 1, release);
  uv_mutex_unlock(&ch->lock_);
  return 0;
}
