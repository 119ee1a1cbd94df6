/* The queue: any thread enqueues, the loop thread drains.
 *
 *   producers (any thread)                      loop thread
 *   ----------------------                      -----------
 *   state += ONE  (one atomic add: closed?      async_cb: pop up to `batch`
 *                  capacity? count, wake?)        events from head_, deliver,
 *   tail_ = xchg(tail_, ev); prev->next_ = ev    publish removed_; then sleep
 *   if the loop sleeps: uvq__async_send          (set ASLEEP) or re-arm.
 *
 * The list is Dmitry Vyukov's intrusive MPSC queue: the link lives in the
 * event, a push is one exchange plus one store, a pop touches only the
 * consumer's end. A stub node inside the queue lets the last event leave.
 *
 * One 64-bit state word carries, for the cost of a single atomic add per
 * enqueue, everything a producer must agree on with the others and with the
 * loop:
 *   bits 3..63  accepted: how many enqueues took effect (FIFO tickets);
 *   bit 2       INITED: set by init, never cleared (a zeroed queue lacks it);
 *   bit 1       ASLEEP: the loop drained everything and waits for a wakeup;
 *   bit 0       CLOSED: stop was requested; an add that sees it is refused.
 * Because the loop knows how many events were accepted, it can tell "empty"
 * (accepted == removed) from "a producer is between its add and its link"
 * (accepted > removed, nothing visible). In the second case it must not
 * sleep: that producer will not wake it. It re-arms itself instead; the
 * window is a few instructions unless the producer is preempted.
 *
 * Invariants:
 *   - removed_ <= accepted; depth = accepted - removed_.
 *   - Exactly one producer clears ASLEEP (of those whose ticket saw it) and
 *     sends. A producer that does not wake links last: the link is its last
 *     write to the list (an unbounded one may still count a yield after
 *     it, see uvq__look, but touches nothing the close destroys; the
 *     queue's memory is the user's to keep until every enqueue returned,
 *     see uvq_queue_stop). One that wakes (for ASLEEP, or for a watermark)
 *     counts itself in inside_ before it links and sends after, so once the
 *     loop has seen every accepted event and no thread is inside
 *     (inside_ == 0), nothing that the close destroys can be touched any
 *     more and it may close.
 *   - After stop, stop_count_ is the number of accepted events; the close
 *     begins only when removed_ == stop_count_ and inside_ == 0.
 *
 * Bounded queues replace the add by a compare-and-swap loop that also checks
 * the capacity (lock-free: a preempted producer holds nobody up). Producers
 * that must wait sleep on a condition variable; the loop broadcasts after it
 * frees space, once per pass, and only when someone waits. UVQ_DROP_OLDEST
 * must take events from the consumer's end, so in that mode both sides take
 * the mutex around list operations.
 */
#include <limits.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define UVQ__FLAG_LOCKED 1 /* UVQ_DROP_OLDEST: list ops under lock_ */
#define UVQ__FULL_SPINS 16     /* a full producer looks again this often, */
#define UVQ__BACKOFF_MAX 6     /* waiting 1, 2, 4 .. 64 pauses between, */
#define UVQ__FULL_YIELDS 4     /* then yields this often, then sleeps */
#define UVQ__STALL_LOOKS 6     /* (a lone one yields after this many
                                * looks if nothing was freed) */
#define UVQ__SPIN_NS 200000u   /* or spins up to this long, see uvq__full */
#define UVQ__PUBLISH_MAX 64u  /* bounded: the loop publishes room this often */
#define UVQ__SMALL_PASS 4u    /* a pass that took at most this many events */
#define UVQ__SMALL_STREAK 8u  /* this many times in a row: yield (where the
                               * waker's CPU is unknown), see uvq__drain */
#define UVQ__BEHIND_DEPTH 4096u /* unbounded: a producer this far ahead */
#define UVQ__BEHIND_EVERY 1024u  /* looks once per this many tickets */
#define UVQ__NEVER UINT64_MAX /* look_at_, high_at_: no state word is */

_Thread_local char uvq__thread_marker UVQ__TLS_INITIAL_EXEC;

static void uvq__async_cb(uv_async_t* handle);
static void uvq__drain(uvq_queue_t* q);
static void uvq__dst_ready(uvq_sink_t* dst, void* arg);

/* The wait before the look-th look (from 0) at a word another core writes:
 * 1, 2, 4 .. 64 pauses. Each look can take that word's line away from the
 * core that writes it; doubling keeps the first looks quick and the later
 * ones rare. */
static inline void uvq__backoff(int look) {
  int n = look < UVQ__BACKOFF_MAX ? look : UVQ__BACKOFF_MAX;
  int k;
  for (k = 0; k < (1 << n); k++)
    uvq__cpu_relax();
}

/* The CPU this thread runs on (-1: unknown), where the system can tell. A
 * hint: the thread may have moved by the time anyone reads it. */
#if defined(__linux__)
# define UVQ__KNOWS_CPU 1
#else
# define UVQ__KNOWS_CPU 0
#endif
static inline int uvq__cpu(void) {
#if UVQ__KNOWS_CPU
  return sched_getcpu();
#else
  return -1;
#endif
}

/* -- the list ------------------------------------------------------------ */

static UVQ__INLINE void uvq__push(uvq_queue_t* q, uvq_event_t* ev) {
  uvq_event_t* prev;
  UVQ__STORE(&ev->next_, NULL, relaxed);
  prev = atomic_exchange_explicit(&q->tail_, ev, memory_order_acq_rel);
  UVQ__STORE(&prev->next_, ev, release);
}

/* Pop the oldest linked event, or NULL when none is visible (empty, or the
 * next producer has not linked yet). Consumer only (or under lock_). */
static UVQ__INLINE uvq_event_t* uvq__pop(uvq_queue_t* q) {
  uvq_event_t* head = q->head_;
  uvq_event_t* next = UVQ__LOAD(&head->next_, acquire);
  uvq_event_t* tail;

  if (head == &q->stub_) {
    if (next == NULL)
      return NULL;
    q->head_ = next;
    head = next;
    next = UVQ__LOAD(&next->next_, acquire);
  }
  if (next != NULL) {
    q->head_ = next;
    return head;
  }
  tail = UVQ__LOAD(&q->tail_, acquire);
  if (tail != head)
    return NULL; /* a producer swapped the tail but has not linked yet */
  uvq__push(q, &q->stub_);
  next = UVQ__LOAD(&head->next_, acquire);
  if (next != NULL) {
    q->head_ = next;
    return head;
  }
  return NULL;
}

/* -- producers ----------------------------------------------------------- */

/* The loop sleeps: link, then wake it. The link is then not our last touch
 * of the queue, so we count ourselves in inside_ first: the loop cannot
 * close while we are inside, and it cannot see our event before our
 * increment (the release store of the link orders them). Linking first
 * matters for latency: a loop woken before the link would find the event
 * missing, and a producer preempted by the very wakeup it sent (the kernel
 * often runs the woken thread at once) would keep it spinning. */
static UVQ__NOINLINE UVQ__HOT int uvq__push_and_wake(uvq_queue_t* q,
                                                    uvq_event_t* ev) {
  uint64_t old;
  atomic_fetch_add(&q->inside_, 1);
  uvq__push(q, ev);
  old = atomic_fetch_and(&q->state_, ~UVQ__ASLEEP);
  if (old & UVQ__ASLEEP) {
    atomic_fetch_add_explicit(&q->wakeups_, 1, memory_order_relaxed);
    UVQ__STORE(&q->waker_cpu_, uvq__cpu(), relaxed); /* see uvq__drain */
    uvq__async_send(&q->async_);
  }
  atomic_fetch_sub(&q->inside_, 1);
  return 0; /* the enqueue's result: callers reach us by a tail call */
}

/* ticket (a count) as a state word; UVQ__NEVER past what counts reach. */
static inline uint64_t uvq__word(uint64_t ticket) {
  return ticket <= UVQ__COUNT(UVQ__NEVER) ? ticket * UVQ__ONE : UVQ__NEVER;
}

/* The value that arms high_at_ for ticket: never UVQ__NEVER, which means
 * disarmed (a high_water beyond what counts reach saturates one below). */
static inline uint64_t uvq__arm(uint64_t ticket) {
  uint64_t w = uvq__word(ticket);
  return w != UVQ__NEVER ? w : UVQ__NEVER - 1;
}

/* test/check_queue_race.c stops a thread at these places (a producer in
 * uvq__look_high 1 to 5, a stop 6, the loop in uvq__watch 7, a stats
 * reader between its two loads 8); nothing in the library. */
#ifndef UVQ__TEST_HOOK
# define UVQ__TEST_HOOK(where) ((void) 0)
#endif

/* The depth as one moment saw it: removed_, the count, removed_ again,
 * until both reads of removed_ agree (removed_ only grows, so the count was
 * read while it held that value). A count read after a publish of the loop
 * against a removed_ from before it would be too large, and disarm on a
 * depth the queue never had. The loop publishes once per pass (a bounded
 * queue every few events): a retry is rare and waits for nobody. */
static uint64_t uvq__high_depth(uvq_queue_t* q, uint64_t* removed) {
  uint64_t r = atomic_load(&q->removed_);
  for (;;) {
    uint64_t count;
    uint64_t again;
    UVQ__TEST_HOOK(5);
    count = UVQ__COUNT(atomic_load(&q->state_));
    again = atomic_load(&q->removed_);
    if (again == r) {
      *removed = r;
      return count - r;
    }
    r = again;
  }
}

/* Watermarks, for a producer that looks: publish the next look_at_, and
 * disarm high_at_ (returns 1: wake the loop) if the depth reached
 * high_water. Every decision is on a depth read after high_at_, and every
 * store of look_at_ (also the disarming producer's) is followed by a read
 * of high_at_ and of the depth: a ticket taken after our store compares
 * with what we stored, one taken before it is in the count we read after
 * it. So a stale look_at_ that another producer stored meanwhile (computed
 * while disarmed, or from an older removed_) cannot hide the ticket that
 * reaches high_water, and nobody disarms on a depth read before the loop
 * armed again. */
static UVQ__NOINLINE int uvq__look_high(uvq_queue_t* q, uint64_t behind) {
  uint64_t high_at = atomic_load(&q->high_at_);
  uint64_t removed;
  int wake = 0;
  for (;;) {
    uint64_t next = behind;
    uint64_t now;
    UVQ__TEST_HOOK(1);
    if (high_at != UVQ__NEVER) {
      if (uvq__high_depth(q, &removed) >= q->high_water_) {
        if (!atomic_compare_exchange_strong(&q->high_at_, &high_at,
                                            UVQ__NEVER))
          continue; /* the loop moved it: high_at is fresh */
        wake = 1;
        high_at = UVQ__NEVER;
        UVQ__TEST_HOOK(4);
      } else {
        /* the ticket that makes it high_water */
        now = uvq__word(removed + q->high_water_ - 1);
        next = now < next ? now : next;
      }
    }
    UVQ__TEST_HOOK(2);
    atomic_store(&q->look_at_, next);
    UVQ__TEST_HOOK(3);
    now = atomic_load(&q->high_at_);
    if (now != high_at) {
      high_at = now; /* armed or disarmed meanwhile: again */
      continue;
    }
    if (high_at == UVQ__NEVER ||
        uvq__high_depth(q, &removed) < q->high_water_)
      return wake;
    /* a ticket from before our store reached it: disarm, above */
  }
}

/* A producer whose ticket reached look_at_: look at the depth, then link.
 * look_at_ is the next state word worth a look: unbounded, one ticket in
 * UVQ__BEHIND_EVERY (is the loop far behind?); with watermarks, also the
 * ticket that brings the depth to high_water (see uvq__look_high). Returns
 * 0 (the enqueue's result) so that the hot path reaches it by a tail
 * call. */
static UVQ__NOINLINE int uvq__look(uvq_queue_t* q, uvq_event_t* ev,
                                   uint64_t old) {
  uint64_t t = UVQ__COUNT(old);
  uint64_t removed = atomic_load(&q->removed_);
  /* Events ahead of ours. removed_ can pass our ticket: producers with
   * later tickets may link before us, and the loop deliver their events. */
  uint64_t ahead = removed < t ? t - removed : 0;
  uint64_t behind = q->capacity_ == 0
      ? uvq__word((t / UVQ__BEHIND_EVERY + 1) * UVQ__BEHIND_EVERY)
      : UVQ__NEVER;
  int wake = 0;

  if (q->watermark_ != NULL)
    wake = uvq__look_high(q, behind);
  else
    atomic_store(&q->look_at_, behind);

  if (wake) {
    /* As uvq__push_and_wake: after our link we still touch the queue. */
    atomic_fetch_add(&q->inside_, 1);
    uvq__push(q, ev);
    /* A wake (uvq__async_send, like uv_async_send) begins with a plain
     * read of the handle's pending flag, which the loop clears before the
     * pass that reads high_at_: without a full fence a weakly ordered core
     * may read the flag before our disarm is visible, see it still set and
     * skip the send (store buffering). The ASLEEP wake needs none: it
     * acquired the loop's ASLEEP store, made after the flag was cleared. */
    atomic_thread_fence(memory_order_seq_cst);
    uvq__async_send(&q->async_);
    atomic_fetch_sub(&q->inside_, 1);
    return 0;
  }
  uvq__push(q, ev);
  /* Unbounded means nobody waits for room, not that producers may take
   * every core from the loop: with more producers than cores, a loop that
   * falls behind otherwise drains alone after they are done. So a producer
   * that finds it far behind gives this CPU away once; where the loop has a
   * core of its own, sched_yield() finds nobody else to run and returns at
   * once. Never on the loop thread, which would only be yielding to the
   * producers that flood it. Only on the ticket of the UVQ__BEHIND_EVERY
   * that look_at_ named: producers whose tickets passed it before it moved
   * looked too, and must not yield as well. (At most once per 1,024: if a
   * producer with a later ticket looks first, none of the window does.) */
  if (q->capacity_ == 0 && t % UVQ__BEHIND_EVERY == 0 &&
      ahead > UVQ__BEHIND_DEPTH && q->loop_thread_ != uvq__thread_id()) {
    atomic_fetch_add_explicit(&q->yields_, 1, memory_order_relaxed);
    sched_yield();
  }
  return 0;
}

/* Link ev; `old` is the state word our ticket replaced. Every producer that
 * saw ASLEEP there tries to clear it; the one that does sends. */
static UVQ__INLINE int uvq__commit(uvq_queue_t* q, uvq_event_t* ev,
                                   uint64_t old) {
  if (UVQ__UNLIKELY(old & UVQ__ASLEEP))
    return uvq__push_and_wake(q, ev);
  /* seq_cst, for uvq__look_high and uvq__watch (store look_at_, then read
   * the count; a producer adds to the count, then reads look_at_): on x86
   * the same mov as a relaxed load. */
  if (UVQ__UNLIKELY(old >= atomic_load(&q->look_at_)))
    return uvq__look(q, ev, old);
  uvq__push(q, ev);
  return 0;
}

/* A carrier: what uvq_queue_sink() enqueues for an event it was lent. */
typedef struct {
  uvq_event_t ev;
  uvq_event_t* inner; /* holds one reference */
} uvq__carrier_t;

static void uvq__carrier_release(uvq_event_t* ev) {
  uvq__carrier_t* c = UVQ__CONTAINER_OF(ev, uvq__carrier_t, ev);
  uvq_event_unref(c->inner);
  free(c);
}

/* Hand over the carrier's reference to the inner event and free the
 * carrier. */
static uvq_event_t* uvq__unwrap(uvq_event_t* ev) {
  uvq__carrier_t* c = UVQ__CONTAINER_OF(ev, uvq__carrier_t, ev);
  uvq_event_t* inner = c->inner;
  free(c);
  return inner;
}

/* Only queues that were written through their sink face hold carriers; the
 * check keeps plain events (whose release_ field may be unset) unread. */
static inline int uvq__is_carrier(uvq_queue_t* q, uvq_event_t* ev) {
  return (UVQ__LOAD(&q->stop_mode_, relaxed) & UVQ__FACE_USED) &&
         ev->release_ == uvq__carrier_release;
}

static inline void uvq__release(uvq_queue_t* q, uvq_event_t* ev) {
  if (q->release_ != NULL && !uvq__is_carrier(q, ev))
    q->release_(q, ev);
  else
    uvq__event_unref(ev); /* never NULL here */
}

/* One attempt to take a ticket on a bounded queue: 0 when taken (*old is
 * the state before), UVQ_EFULL or UVQ_ECLOSED otherwise.
 *
 * The depth is count - removed, with removed read before the count: it only
 * grows and never passes the count, so a count read after it gives a depth
 * that is never too small (no false room) and never wraps below zero (no
 * false "full" that would wait forever). removed_ lives on the consumer's
 * line, which the loop writes after every event; reading it on every
 * enqueue would move that line across cores once per event. Producers read
 * room_hint_ instead, on their own line: some earlier value of removed_
 * (so at most removed_, and the same argument holds), refreshed from
 * removed_ only when the hint says the queue is full. */
static UVQ__INLINE int uvq__bounded_ticket(uvq_queue_t* q, uint64_t* old) {
  uint64_t removed = UVQ__LOAD(&q->room_hint_, acquire);
  uint64_t s = atomic_load(&q->state_);
  for (;;) {
    if (UVQ__UNLIKELY((s & (UVQ__CLOSED | UVQ__INITED)) != UVQ__INITED))
      return (s & UVQ__INITED) ? UVQ_ECLOSED : UVQ_EINVAL;
    if (UVQ__UNLIKELY(UVQ__COUNT(s) - removed >= q->capacity_)) {
      uint64_t fresh = atomic_load(&q->removed_);
      if (fresh == removed)
        return UVQ_EFULL; /* full even by the count read before this */
      removed = fresh;
      UVQ__STORE(&q->room_hint_, fresh, release);
      s = atomic_load(&q->state_); /* the count after removed, as above */
      continue;
    }
    if (atomic_compare_exchange_weak(&q->state_, &s, s + UVQ__ONE)) {
      *old = s;
      return 0;
    }
  }
}

/* Slow paths announce themselves in inside_ so that the loop neither closes
 * the queue nor destroys its mutex while they run. 0: the close has begun,
 * stay out. The loop publishes CLOSING before it reads inside_, we publish
 * inside_ before we read the phase: one of the two sees the other. */
static inline int uvq__enter(uvq_queue_t* q) {
  atomic_fetch_add(&q->inside_, 1);
  if (atomic_load(&q->phase_) == UVQ__RUNNING)
    return 1;
  atomic_fetch_sub(&q->inside_, 1);
  return 0;
}

static inline void uvq__leave(uvq_queue_t* q) {
  atomic_fetch_sub(&q->inside_, 1);
}

/* UVQ_DROP_OLDEST: everything under the lock, the victim released after.
 * The ticket is taken first, by a compare-and-swap that refuses once CLOSED
 * is set (stop sets it without the lock), so that no event is linked that
 * the stop's count does not include. */
static UVQ__NOINLINE int uvq__enqueue_locked(uvq_queue_t* q,
                                             uvq_event_t* ev) {
  uvq_event_t* victim = NULL;
  uint64_t s;

  if (!uvq__enter(q))
    return UVQ_ECLOSED;
  uv_mutex_lock(&q->lock_);
  s = atomic_load(&q->state_);
  do {
    if (s & UVQ__CLOSED) {
      uv_mutex_unlock(&q->lock_);
      uvq__leave(q);
      return UVQ_ECLOSED;
    }
  } while (!atomic_compare_exchange_weak(&q->state_, &s, s + UVQ__ONE));
  if (UVQ__COUNT(s) - atomic_load(&q->removed_) >= q->capacity_) {
    victim = uvq__pop(q); /* under the lock nobody is half-linked */
    if (victim != NULL) {
      atomic_fetch_add(&q->removed_, 1);
      atomic_fetch_add(&q->dropped_oldest_, 1);
    }
  }
  (void) uvq__commit(q, ev, s);
  uv_mutex_unlock(&q->lock_);
  if (victim != NULL)
    uvq__release(q, victim);
  uvq__leave(q);
  return 0;
}

/* The queue is full: drop ev (UVQ_DROP_NEW), fail, or wait for room until
 * deadline (an absolute uv_hrtime; 0: wait forever). */
static UVQ__NOINLINE UVQ__HOT int uvq__full(uvq_queue_t* q, uvq_event_t* ev,
                                            int may_wait, uint64_t deadline) {
  uint64_t old;
  uint64_t start;
  uint64_t budget;
  uint64_t seen;
  uint64_t now;
  int spins;
  int spinner;
  int slept = 0;
  int r;

  if (q->overflow_ == UVQ_FAIL || (q->overflow_ == UVQ_BLOCK && !may_wait))
    return UVQ_EFULL;

  /* Announce ourselves before looking again: the loop reads inside_ after it
   * frees space (wakeup) and before it closes (lifetime). */
  if (!uvq__enter(q))
    return UVQ_ECLOSED;

  if (q->overflow_ == UVQ_DROP_NEW) {
    r = uvq__bounded_ticket(q, &old);
    if (r == UVQ_EFULL) {
      atomic_fetch_add_explicit(&q->dropped_new_, 1, memory_order_relaxed);
      uvq__release(q, ev);
      r = 0;
    } else if (r == 0) {
      (void) uvq__commit(q, ev, old);
    }
    uvq__leave(q);
    return r;
  }

  /* Room usually comes within microseconds: look again a few times, then
   * give the core away a few times, before paying for a futex sleep and a
   * broadcast. Each look reads removed_, the line the loop writes, and
   * takes it away from the loop's core: the wait between looks doubles
   * (1 .. 64 pauses; about 19 us in all on this machine's 27 ns pause) so
   * that the loop mostly runs undisturbed and frees room in runs. Only one
   * producer at a time spins (spinning_); the others go straight to
   * yielding: with more producers than cores, spinners took the cores the
   * loop needs to free the room they wait for.
   *
   * The spinner then goes on looking, yielding before each look, for as
   * long as spin_ns_ says. A producer that sleeps makes the loop broadcast
   * and then waits for the kernel to run it again, tens of microseconds
   * here; meanwhile the loop empties the queue and goes to sleep too, and
   * the producer must wake it in turn (one producer's runs at 17-25 M
   * events/s slept 170 to 320 times per 2 M events, those at 80-95 M 0 to
   * 3 times). So when a sleep ended soon (the room came within
   * UVQ__SPIN_NS), the next waits spin that long; when it was long (a slow
   * consumer) or timed out, they go back to sleeping early, and a blocked
   * producer burns no CPU. */
  {
    unsigned zero = 0;
    spinner = atomic_compare_exchange_strong(&q->spinning_, &zero, 1);
  }
  start = uv_hrtime();
  budget = spinner ? UVQ__LOAD(&q->spin_ns_, relaxed) : 0;
  seen = UVQ__LOAD(&q->room_hint_, relaxed); /* removed_ as of our look */
  for (spins = spinner ? 0 : UVQ__FULL_SPINS;; spins++) {
    /* The loop is not draining (asleep, preempted, or waiting for this
     * core): yield now, unless other producers wait too, who would take
     * the core rather than the loop (8 producers on 2 cores: 51 -> 42 M
     * events/s when every spinner yielded early). */
    if (spins == UVQ__STALL_LOOKS &&
        UVQ__LOAD(&q->room_hint_, relaxed) == seen &&
        atomic_load(&q->inside_) == 1)
      spins = UVQ__FULL_SPINS;
    if (spins < UVQ__FULL_SPINS) {
      uvq__backoff(spins);
    } else if (spins < UVQ__FULL_SPINS + UVQ__FULL_YIELDS) {
      sched_yield();
    } else if (budget == 0 || uv_hrtime() - start >= budget) {
      break; /* before any deadline: timeouts are whole milliseconds */
    } else {
      sched_yield();
      uvq__backoff(UVQ__BACKOFF_MAX);
    }
    r = uvq__bounded_ticket(q, &old);
    if (r != UVQ_EFULL) {
      if (spinner)
        atomic_store(&q->spinning_, 0);
      goto done;
    }
  }
  if (spinner)
    atomic_store(&q->spinning_, 0);

  uv_mutex_lock(&q->lock_);
  for (;;) {
    r = uvq__bounded_ticket(q, &old);
    if (r != UVQ_EFULL)
      break;
    now = uv_hrtime();
    if (deadline != 0 && now >= deadline) {
      r = UVQ_ETIMEDOUT;
      break;
    }
    slept = 1;
    atomic_fetch_add_explicit(&q->sleeps_, 1, memory_order_relaxed);
    if (deadline == 0)
      uv_cond_wait(&q->cond_, &q->lock_);
    else
      (void) uv_cond_timedwait(&q->cond_, &q->lock_, deadline - now);
  }
  uv_mutex_unlock(&q->lock_);
  /* Was sleeping worth it? A timeout says no as well: it came after at
   * least a millisecond, and a producer retrying timed enqueues against a
   * stalled loop must not spin before every sleep. */
  if ((r == 0 && slept) || r == UVQ_ETIMEDOUT)
    UVQ__STORE(&q->spin_ns_,
               uv_hrtime() - start <= UVQ__SPIN_NS ? UVQ__SPIN_NS : 0,
               relaxed);
done:
  if (r == 0) {
    (void) uvq__commit(q, ev, old);
  }
  uvq__leave(q);
  return r;
}

/* The hot path: unbounded, one atomic add, one exchange, one store. */
static UVQ__INLINE int uvq__enqueue_unbounded(uvq_queue_t* q,
                                             uvq_event_t* ev) {
  uint64_t old = atomic_fetch_add(&q->state_, UVQ__ONE);
  /* One test for both refusals; the add itself is harmless in either case
   * (after a stop the count is no longer read, see stop_count_). */
  if (UVQ__UNLIKELY((old & (UVQ__CLOSED | UVQ__INITED)) != UVQ__INITED))
    return (old & UVQ__INITED) ? UVQ_ECLOSED : UVQ_EINVAL;
  /* Both slow paths are tail calls (no stack frame on the fast one). A
   * sleeping loop is not behind. */
  return uvq__commit(q, ev, old);
}

/* Bounded (lock-free unless UVQ_DROP_OLDEST): one compare-and-swap that
 * checks closed and capacity and takes the ticket, then the same link. */
static UVQ__INLINE int uvq__enqueue_bounded(uvq_queue_t* q, uvq_event_t* ev,
                                           int may_wait, uint64_t deadline) {
  uint64_t old;
  int r;

  if (UVQ__UNLIKELY(q->flags_ & UVQ__FLAG_LOCKED))
    return uvq__enqueue_locked(q, ev);
  /* A blocking call on the loop thread would wait for itself: refuse it
   * every time, not only when the queue happens to be full. */
  if (may_wait && q->overflow_ == UVQ_BLOCK &&
      UVQ__UNLIKELY(q->loop_thread_ == uvq__thread_id()))
    return UVQ_EDEADLK;
  r = uvq__bounded_ticket(q, &old);
  if (UVQ__UNLIKELY(r == UVQ_EFULL))
    return uvq__full(q, ev, may_wait, deadline);
  if (r != 0)
    return r;
  return uvq__commit(q, ev, old);
}

UVQ__HOT int uvq_queue_enqueue(uvq_queue_t* q, uvq_event_t* ev) {
  if (UVQ__UNLIKELY(q == NULL || ev == NULL))
    return UVQ_EINVAL;
  if (UVQ__LIKELY(q->capacity_ == 0))
    return uvq__enqueue_unbounded(q, ev);
  return uvq__enqueue_bounded(q, ev, 1, 0);
}

UVQ__HOT int uvq_queue_try_enqueue(uvq_queue_t* q, uvq_event_t* ev) {
  if (UVQ__UNLIKELY(q == NULL || ev == NULL))
    return UVQ_EINVAL;
  if (UVQ__LIKELY(q->capacity_ == 0))
    return uvq__enqueue_unbounded(q, ev);
  return uvq__enqueue_bounded(q, ev, 0, 0);
}

int uvq_queue_enqueue_timeout(uvq_queue_t* q, uvq_event_t* ev,
                              int64_t timeout_ms) {
  uint64_t deadline;
  if (q == NULL || ev == NULL || timeout_ms < 0)
    return UVQ_EINVAL;
  if (timeout_ms == 0 || q->capacity_ == 0)
    return uvq_queue_try_enqueue(q, ev);
  if ((uint64_t) timeout_ms > (UINT64_MAX - uv_hrtime()) / 1000000)
    deadline = 0; /* beyond the end of time: wait forever */
  else
    deadline = uv_hrtime() + (uint64_t) timeout_ms * 1000000;
  return uvq__enqueue_bounded(q, ev, 1, deadline);
}

/* -- stop ----------------------------------------------------------------- */

int uvq_queue_stop(uvq_queue_t* q, uvq_stop_mode_t mode,
                   uvq_queue_close_cb cb) {
  uint64_t s;
  int bits;

  if (q == NULL || (mode != UVQ_STOP_DRAIN && mode != UVQ_STOP_DISCARD) ||
      !(atomic_load(&q->state_) & UVQ__INITED))
    return UVQ_EINVAL;
  bits = UVQ__STOP_REQUESTED | (mode == UVQ_STOP_DISCARD ? UVQ__STOP_DISCARD
                                                         : 0);
  if (!uvq__enter(q)) /* the loop must not close under us */
    return 0;         /* a later stop while closing: nothing left to do */
  s = atomic_fetch_or(&q->state_, UVQ__CLOSED);
  UVQ__TEST_HOOK(6);
  if (!(s & UVQ__CLOSED)) {
    q->close_cb_ = cb; /* published by the release store below */
    atomic_fetch_or(&q->stop_mode_, bits);
    UVQ__STORE(&q->stop_count_, UVQ__COUNT(s), release);
  } else {
    atomic_fetch_or(&q->stop_mode_, bits);
  }
  /* A stop promises the close callback, like uv_close, even to a queue that
   * was unreferenced; uv_ref is for the loop thread only. */
  if (q->loop_thread_ == uvq__thread_id())
    uv_ref((uv_handle_t*) &q->async_);
  /* Producers waiting for room must learn about the stop now. */
  uv_mutex_lock(&q->lock_);
  uv_cond_broadcast(&q->cond_);
  uv_mutex_unlock(&q->lock_);
  atomic_thread_fence(memory_order_seq_cst); /* see uvq__look's wake */
  uvq__async_send(&q->async_);
  uvq__leave(q);
  return 0;
}

/* -- the loop side --------------------------------------------------------- */

/* Both handles' close callbacks come here (handle->data is q); the last
 * one finishes the close. */
static void uvq__on_close(uv_handle_t* handle) {
  uvq_queue_t* q = handle->data;
  uvq_queue_close_cb cb = q->close_cb_;
  if (--q->open_handles_ != 0)
    return;
  UVQ__STORE(&q->phase_, UVQ__CLOSED_PHASE, release);
  uv_cond_destroy(&q->cond_);
  uv_mutex_destroy(&q->lock_);
  /* A face being closed completes with us; one never closed stays open,
   * and a later close completes at once (uvq__face_close). */
  if (q->face_.state_ == UVQ__SINK_CLOSING)
    uvq_sink_closed(&q->face_);
  if (cb != NULL)
    cb(q); /* last: the user may free q here */
}

static void uvq__close_handles(uvq_queue_t* q) {
  q->open_handles_ = 1;
  q->async_.data = q;
  if (q->poll_ns_ != 0) { /* polling: idle_ was initialised */
    q->open_handles_ = 2;
    q->idle_.data = q;
    uv_close((uv_handle_t*) &q->idle_, uvq__on_close);
  }
  uv_close((uv_handle_t*) &q->async_, uvq__on_close);
}

static void uvq__on_dst_closed(uvq_sink_t* dst) {
  uvq_queue_t* q = dst->ready_arg_; /* we registered q as the upstream */
  uvq__close_handles(q);
}

/* The completion of a close the user began (we are still dst's upstream):
 * their callback, which may free dst, then our handles. */
static void uvq__on_user_dst_closed(uvq_sink_t* dst) {
  uvq_queue_t* q = dst->ready_arg_;
  uvq_sink_close_cb cb = q->dst_close_cb_;
  q->dst_close_cb_ = NULL;
  uvq_sink_set_ready_cb(dst, NULL, NULL); /* before cb, which may free dst */
  if (cb != NULL)
    cb(dst);
  uvq__close_handles(q);
}

/* Every event is accounted for and nobody is inside: close the sink we feed
 * (if any), then our handle. */
static void uvq__close(uvq_queue_t* q) {
  uvq_sink_t* dst = q->sink_;
  if (dst == NULL) {
    uvq__close_handles(q);
    return;
  }
  if (dst->state_ == UVQ__SINK_CLOSING && dst->ready_cb_ == uvq__dst_ready &&
      dst->ready_arg_ == q) {
    /* The user closed it and the close is still completing: our close
     * callback must still come after it (the user may free both there).
     * Hook its completion; the user's callback runs first. */
    q->dst_close_cb_ = dst->close_cb_;
    dst->close_cb_ = uvq__on_user_dst_closed;
    return;
  }
  if (uvq_sink_is_closed(dst)) {
    /* The user closed it already, and it completed (or it is closing with
     * another upstream than us, whose completion we cannot hook). */
    uvq_sink_set_ready_cb(dst, NULL, NULL);
    uvq__close_handles(q);
    return;
  }
  if (uvq_sink_close(dst, uvq__on_dst_closed) != 0) {
    /* UVQ_ETHREAD: the loop runs on another thread than the one that made
     * dst (every write failed the same way). dst is not ours to close from
     * here: let go of it, open, and close our handle rather than hang. */
    uvq_sink_set_ready_cb(dst, NULL, NULL);
    uvq__close_handles(q);
  }
}

static void uvq__dst_ready(uvq_sink_t* dst, void* arg) {
  uvq_queue_t* q = arg;
  (void) dst;
  q->held_waits_ = 0; /* the sink's loop thread is ours: no race */
  if (UVQ__LOAD(&q->phase_, relaxed) == UVQ__RUNNING)
    uvq__async_send(&q->async_);
}

static UVQ__NOINLINE uvq_event_t* uvq__pop_locked(uvq_queue_t* q) {
  uvq_event_t* ev;
  uv_mutex_lock(&q->lock_);
  ev = uvq__pop(q);
  if (ev != NULL)
    atomic_fetch_add(&q->removed_, 1);
  uv_mutex_unlock(&q->lock_);
  return ev;
}

static UVQ__INLINE uvq_event_t* uvq__pop_any(uvq_queue_t* q) {
  if (UVQ__UNLIKELY(q->flags_ & UVQ__FLAG_LOCKED))
    return uvq__pop_locked(q);
  return uvq__pop(q);
}

/* Nothing visible, but was anything accepted that we have not seen? Then a
 * producer is between its ticket and its link, a window of a few
 * instructions: wait for it briefly rather than pay a trip around the loop
 * (an eventfd write and an epoll_wait). A producer preempted in the window
 * is left to the re-armed pass. */
static UVQ__NOINLINE uvq_event_t* uvq__pop_in_flight(uvq_queue_t* q,
                                                     uint64_t removed) {
  /* After a stop, the stop's count: refused unbounded enqueues still add
   * to the state's (the add is their test) but will never link. */
  uint64_t accepted = UVQ__LOAD(&q->stop_count_, acquire);
  int spins;
  if (accepted == UVQ__UNPUBLISHED)
    accepted = UVQ__COUNT(UVQ__LOAD(&q->state_, relaxed));
  /* Under the lock (UVQ_DROP_OLDEST) nobody is ever half-linked. */
  if ((q->flags_ & UVQ__FLAG_LOCKED) || accepted == removed)
    return NULL;
  /* Wait as long in all as 256 pauses, but look 9 times, each wait twice
   * the last (up to 64): a look can read tail_, the producers' line, and
   * looking after every pause pulled it away from them while they were
   * busy enqueueing (2 producers, interleaved A/B runs: 60.6 -> 71.4 M
   * events/s). */
  for (spins = 0; spins < 9; spins++) {
    uvq_event_t* ev;
    uvq__backoff(spins);
    ev = uvq__pop_any(q);
    if (ev != NULL)
      return ev;
  }
  /* The producer is likely preempted between its ticket and its link, and
   * may be waiting for this very core: give it away once before the pass
   * ends (and re-arms), instead of polling it back through the loop. */
  sched_yield();
  return uvq__pop_any(q);
}

/* The face's writer, told UVQ_EAGAIN, may write again (if it waits). */
static void uvq__face_ready(uvq_queue_t* q) {
  if (!q->face_waiting_)
    return;
  q->face_waiting_ = 0;
  uvq_sink_ready(&q->face_);
}

/* Tell producers blocked for room that there may be some. */
static void uvq__wake_waiters(uvq_queue_t* q) {
  if (atomic_load(&q->inside_) == 0)
    return;
  uv_mutex_lock(&q->lock_);
  uv_cond_broadcast(&q->cond_);
  uv_mutex_unlock(&q->lock_);
}

/* A UVQ_DROP_OLDEST producer takes its ticket before it unlinks its victim,
 * so count - removed may read one above the capacity for a moment although
 * the list never holds more than capacity events. */
static inline uint64_t uvq__depth(const uvq_queue_t* q, uint64_t depth) {
  /* Only there: in the other modes the loop's own reads never give a depth
   * above the capacity, and the tests that check max_depth must be able to
   * see it if they did (uvq_queue_stats clamps its depth, read from another
   * thread, for every bounded queue). */
  if ((q->flags_ & UVQ__FLAG_LOCKED) && depth > q->capacity_)
    return q->capacity_;
  return depth;
}

static inline void uvq__note_depth(uvq_queue_t* q, uint64_t depth) {
  depth = uvq__depth(q, depth);
  if (depth > UVQ__LOAD(&q->max_depth_, relaxed))
    UVQ__STORE(&q->max_depth_, depth, relaxed);
}

/* Arm high_at_ again for a depth at most low_water (or below high_water)
 * that the loop just read with removed, and let the next producer look. A
 * producer whose ticket came between that read and these stores may not
 * have looked: if the depth reached high_water since, do what it would
 * have done. */
static void uvq__rearm(uvq_queue_t* q, uint64_t removed) {
  uint64_t armed = uvq__arm(removed + q->high_water_ - 1);
  uint64_t depth;

  atomic_store(&q->high_at_, armed);
  atomic_store(&q->look_at_, 0); /* the next producer looks, see uvq__look */
  depth = UVQ__COUNT(atomic_load(&q->state_)) - removed;
  if (depth >= q->high_water_ &&
      atomic_compare_exchange_strong(&q->high_at_, &armed, UVQ__NEVER))
    uvq__async_send(&q->async_);
}

/* Watermarks (loop thread, never after a stop request): above once the
 * depth this look reads is at least high_water, then below once it is at
 * most low_water, which arms high_at_ again. A producer that saw high_water
 * disarmed high_at_ and woke the loop; if the depth is below high_water by
 * the time the loop looks, the producer counted what a pass had delivered
 * but not yet published, and the loop arms high_at_ again without a word.
 * removed: what this pass last read of removed_. */
static UVQ__NOINLINE void uvq__watch(uvq_queue_t* q, uint64_t removed) {
  /* high_at_ before the state word: a producer that disarmed it decided on
   * a state word it read before its compare-and-swap, so if that word had
   * CLOSED (refused unbounded enqueues in its count), ours has it too. */
  uint64_t high_at = atomic_load(&q->high_at_);
  uint64_t s;
  uint64_t depth;

  UVQ__TEST_HOOK(7);
  s = atomic_load(&q->state_);
  depth = uvq__depth(q, UVQ__COUNT(s) - removed);
  /* A stop from another thread sets CLOSED before it publishes
   * stop_count_; refused unbounded enqueues add to the count meanwhile, a
   * depth never accepted. The stop is in the same word: nothing to say. */
  if (s & UVQ__CLOSED)
    return;

  if (!q->above_) {
    if (depth < q->high_water_) {
      if (high_at == UVQ__NEVER)
        uvq__rearm(q, removed); /* disarmed on a depth now gone */
      return;
    }
    q->above_ = 1;
    atomic_store(&q->high_at_, UVQ__NEVER); /* producers: no need to look */
    q->watermark_(q, 1);
    return;
  }
  if (depth > q->low_water_)
    return;
  q->above_ = 0;
  uvq__rearm(q, removed);
  q->watermark_(q, 0);
}

/* Counts of one drain pass, published once at its end. */
typedef struct {
  uint64_t delivered;
  uint64_t discarded;
  uint64_t failed;
  int on_sink_thread; /* the sink's thread runs this pass (it should) */
} uvq__pass_t;

/* Write ev to the sink we feed. 0: done with ev (delivered or failed and
 * released); 1: the sink said "again", ev is held at our head. */
static UVQ__INLINE int uvq__to_sink(uvq_queue_t* q, uvq_event_t* ev,
                                    uvq__pass_t* p) {
  uvq_event_t* inner = ev;
  int r;
  if (uvq__is_carrier(q, ev))
    inner = ((uvq__carrier_t*) ev)->inner;
  /* Set before the write: a sink that (against sinks.md) says ready
   * inside it, before its "again", clears it, and is offered again. */
  q->held_waits_ = 1;
  /* uvq_sink_write's checks, the thread's once per pass (not per event) */
  r = p->on_sink_thread ? uvq__sink_write_checked(q->sink_, inner)
                        : UVQ_ETHREAD;
  if (r == UVQ_EAGAIN) {
    q->held_ = ev; /* offered again after uvq__dst_ready */
    return 1;
  }
  if (r == 0) {
    p->delivered++;
  } else {
    p->failed++;
    if (q->error_ != NULL)
      q->error_(q, inner, r);
  }
  uvq__release(q, ev);
  return 0;
}

/* A pass's deliveries: at most a batch, from removed on; returns how many
 * events it took off the queue (delivered, failed at the sink, discarded
 * by a stop, or the one held after "again", which sets *paused). process
 * NULL: we feed a sink. Always inlined, and called with process a
 * constant NULL or not, so that each caller gets a loop of its own. */
static UVQ__INLINE uint64_t uvq__deliver(uvq_queue_t* q, uint64_t removed,
                                        uint64_t limit, int publish,
                                        uvq_process_cb process,
                                        uvq__pass_t* p, int* paused) {
  uint64_t dropped = 0;
  uint64_t n = 0;
  while (n < limit) {
    uvq_event_t* ev = uvq__pop_any(q);
    if (UVQ__UNLIKELY(ev == NULL)) {
      ev = uvq__pop_in_flight(q, removed + n);
      if (ev == NULL)
        break;
    }
    n++;
    /* Room for producers while we deliver, in runs: a producer that waits
     * for room reads this line, and one store per event made the two
     * cores trade it once per event. */
    if (publish && (n & q->publish_mask_) == 0)
      UVQ__STORE(&q->removed_, removed + n, release);
    /* Checked per event: a discard stop (even one made by the callback
     * just run) must not wait for the end of the batch. */
    if (UVQ__UNLIKELY(UVQ__LOAD(&q->stop_mode_, relaxed) &
                      (UVQ__STOP_DISCARD | UVQ__FACE_USED))) {
      if (UVQ__LOAD(&q->stop_mode_, relaxed) & UVQ__STOP_DISCARD) {
        dropped++;
        uvq__release(q, ev);
        continue;
      }
      if (process != NULL && uvq__is_carrier(q, ev))
        ev = uvq__unwrap(ev); /* the callback gets the carrier's ref */
    }
    if (process != NULL) {
      process(q, ev);
    } else if (uvq__to_sink(q, ev, p)) {
      *paused = 1;
      break;
    }
  }
  p->discarded += dropped;
  if (process != NULL)
    p->delivered = n - dropped;
  return n;
}

/* After a pass that took n events: was it a small one woken by a producer
 * on this very CPU (see uvq__drain)? Consumes the waker's mark, so that a
 * wakeup costs at most one yield. Where the CPU is unknown, the 8th small
 * pass in a row counts instead. */
static int uvq__woken_from_here(uvq_queue_t* q, uint64_t n) {
#if UVQ__KNOWS_CPU
  int waker;
  if (n > UVQ__SMALL_PASS)
    return 0;
  waker = UVQ__LOAD(&q->waker_cpu_, relaxed);
  if (waker < 0 || waker != uvq__cpu())
    return 0;
  UVQ__STORE(&q->waker_cpu_, -1, relaxed);
  return 1;
#else
  if (n > UVQ__SMALL_PASS) {
    q->small_passes_ = 0;
    return 0;
  }
  if (++q->small_passes_ < UVQ__SMALL_STREAK)
    return 0;
  q->small_passes_ = 0;
  return 1;
#endif
}

static UVQ__HOT void uvq__async_cb(uv_async_t* handle) {
  uvq__drain(UVQ__CONTAINER_OF(handle, uvq_queue_t, async_));
}

/* Set ASLEEP if nothing was accepted beyond the removed count: 1 when the
 * loop now sleeps (or already did: woken by a stop request or a stale
 * send), 0 when there is more (events, or a producer between its ticket
 * and its link, which will not wake us). */
static int uvq__sleep(uvq_queue_t* q, uint64_t removed) {
  uint64_t s = atomic_load(&q->state_);
  while (UVQ__COUNT(s) == removed) {
    if ((s & UVQ__ASLEEP) ||
        atomic_compare_exchange_weak(&q->state_, &s, s | UVQ__ASLEEP))
      return 1; /* the next producer wakes us */
  }
  return 0;
}

/* Polling (poll_us): an idle handle runs this every loop turn, so the loop
 * does not block. A pass runs only when there is something to do; after
 * the window the loop goes to sleep as a pass would. */
static void uvq__idle_cb(uv_idle_t* handle) {
  uvq_queue_t* q = UVQ__CONTAINER_OF(handle, uvq_queue_t, idle_);
  uint64_t s = atomic_load(&q->state_);
  uint64_t removed = atomic_load(&q->removed_);

  if (UVQ__COUNT(s) != removed ||
      UVQ__LOAD(&q->stop_count_, relaxed) != UVQ__UNPUBLISHED) {
    uvq__drain(q);
    return;
  }
  if (uv_hrtime() < q->poll_end_)
    return;
  uv_idle_stop(&q->idle_);
  if (!uvq__sleep(q, removed))
    uvq__drain(q); /* an event came as we stopped looking */
}

/* One drain pass, from the async handle or (polling) the idle handle. */
static UVQ__HOT void uvq__drain(uvq_queue_t* q) {
  uint64_t stop_count = UVQ__LOAD(&q->stop_count_, acquire);
  int locked = q->flags_ & UVQ__FLAG_LOCKED;
  int bounded = q->capacity_ != 0;
  uvq_process_cb process = q->process_; /* NULL: we feed a sink */
  uint64_t removed = atomic_load(&q->removed_);
  uint64_t accepted = UVQ__COUNT(atomic_load(&q->state_));
  uvq__pass_t p = {0, 0, 0, 0};
  uint64_t depth;
  uint64_t n = 0;
  int paused = 0;

  if (UVQ__LOAD(&q->phase_, relaxed) != UVQ__RUNNING)
    return;
  uvq__bump(&q->passes_, 1);
  if (process == NULL)
    p.on_sink_thread = uvq__sink_on_thread(q->sink_);
  if (stop_count != UVQ__UNPUBLISHED)
    accepted = stop_count;
  depth = accepted - removed;
  uvq__note_depth(q, depth);
  if (UVQ__UNLIKELY(q->watermark_ != NULL) && stop_count == UVQ__UNPUBLISHED)
    uvq__watch(q, removed);

  /* The event a sink refused with "again" goes first, or nothing does; and
   * not before the sink's ready: a stop or a stale send may run this pass
   * while it waits, and the sink was promised no write until then. */
  if (q->held_ != NULL) {
    uvq_event_t* ev = q->held_;
    if (UVQ__LOAD(&q->stop_mode_, relaxed) & UVQ__STOP_DISCARD) {
      q->held_ = NULL;
      p.discarded++;
      uvq__release(q, ev);
    } else if (q->held_waits_) {
      paused = 1;
    } else {
      q->held_ = NULL;
      paused = uvq__to_sink(q, ev, &p);
    }
  }

  if (!paused) {
    /* At most a batch, and no further than the count read above: events
     * accepted since wait for the next pass, after the loop's turn.
     * Chasing the producers to the tail made the two cores trade the
     * lines of the newest events, whose links the producers were still
     * writing as the loop read them: one producer, 2 cores 67 ns apart,
     * interleaved A/B runs 33.6 -> 65.3 M events/s unbounded and 26.6 ->
     * 51.8 M bounded (docs/bench.md). */
    uint64_t limit = depth < q->batch_ ? depth : q->batch_;
    /* Two copies of one loop: the sink's has uvq__to_sink inlined, the
     * callback's tests nothing per event to tell the two apart. */
    if (UVQ__LIKELY(process != NULL))
      n = uvq__deliver(q, removed, limit, bounded && !locked, process, &p,
                       &paused);
    else
      n = uvq__deliver(q, removed, limit, bounded && !locked, NULL, &p,
                       &paused);
  }
  uvq__bump(&q->delivered_, p.delivered);
  uvq__bump(&q->discarded_, p.discarded);
  uvq__bump(&q->failed_, p.failed);
  if (!locked)
    atomic_store(&q->removed_, removed + n); /* seq_cst: pairs with inside_ */
  if (n != 0 && bounded) {
    uvq__wake_waiters(q);
    uvq__face_ready(q); /* may write into us again: fine */
  }

  /* What next: close, sleep, or run again after the loop had its turn. */
  removed = atomic_load(&q->removed_);
  stop_count = UVQ__LOAD(&q->stop_count_, acquire);
  if (UVQ__UNLIKELY(q->watermark_ != NULL) &&
      stop_count == UVQ__UNPUBLISHED) {
    uvq__watch(q, removed);
    stop_count = UVQ__LOAD(&q->stop_count_, acquire); /* its callback's */
  }
  if (UVQ__UNLIKELY(q->poll_ns_ != 0) &&
      (paused || stop_count != UVQ__UNPUBLISHED))
    uv_idle_stop(&q->idle_); /* the async handle brings us back */
  if (stop_count != UVQ__UNPUBLISHED) {
    uv_ref((uv_handle_t*) &q->async_); /* see uvq_queue_stop */
    if (removed == stop_count && q->held_ == NULL) {
      atomic_store(&q->phase_, UVQ__CLOSING);
      if (atomic_load(&q->inside_) == 0) {
        uvq__close(q);
        return;
      }
      atomic_store(&q->phase_, UVQ__RUNNING); /* someone is still inside */
    }
    if (!paused)
      uvq__async_send(&q->async_);
    return; /* paused: the sink's ready (or a discard stop) wakes us */
  }
  if (paused)
    return; /* the sink's ready callback wakes us; producers need not */
  if (UVQ__UNLIKELY(q->poll_ns_ != 0)) {
    /* Stay awake: the idle handle looks every loop turn, runs the next
     * pass when there is more, and sleeps as below once the window after
     * the last delivery is over. */
    if (n != 0 || p.delivered != 0 || p.failed != 0) /* held_ counts */
      q->poll_end_ = uv_hrtime() + q->poll_ns_;
    uv_idle_start(&q->idle_, uvq__idle_cb); /* no-op when active */
    return;
  }
  /* A producer that shares the loop's CPU, preempted by the very wakeup it
   * sent (the kernel runs the woken loop at once), is back only after the
   * loop sleeps: its next event finds the loop asleep and wakes it again,
   * and the two take turns at one event per wakeup, a few microseconds
   * each. With 8 producers on one CPU (taskset) that held the bounded
   * queue to 3.8 M events/s and the unbounded one to 18 M, and on 2 CPUs
   * it struck whenever the host took one away. So after a small pass woken
   * from this CPU, give the CPU back before sleeping: the producer then
   * fills the queue without waking anyone, and the next pass takes a
   * batch. The event that woke us was delivered first; a producer on
   * another CPU (or one that went to sleep after its wakeup) costs no
   * yield. Where the waker's CPU is unknown, a run of small passes stands
   * in for it. */
  if (uvq__woken_from_here(q, n))
    sched_yield();
  if (uvq__sleep(q, removed))
    return;
  /* More accepted than removed (what a full batch left, or a producer
   * between its ticket and its link): come back after the loop's turn. */
  uvq__async_send(&q->async_);
}

/* -- the queue as a sink --------------------------------------------------- */

static int uvq__face_write(uvq_sink_t* face, uvq_event_t* ev) {
  uvq_queue_t* q = UVQ__CONTAINER_OF(face, uvq_queue_t, face_);
  uvq__carrier_t* c = malloc(sizeof(*c));
  int r;
  if (c == NULL)
    return UVQ_ENOMEM;
  if (!(UVQ__LOAD(&q->stop_mode_, relaxed) & UVQ__FACE_USED))
    atomic_fetch_or(&q->stop_mode_, UVQ__FACE_USED);
  uvq_event_init(&c->ev, uvq__carrier_release);
  c->inner = uvq_event_ref(ev);
  r = uvq_queue_try_enqueue(q, &c->ev);
  if (r == 0)
    return 0;
  uvq_event_unref(&c->ev); /* still ours: drop it and its reference */
  if (r == UVQ_EFULL && q->overflow_ == UVQ_BLOCK) {
    q->face_waiting_ = 1;
    return UVQ_EAGAIN;
  }
  return r;
}

static void uvq__face_close(uvq_sink_t* face) {
  uvq_queue_t* q = UVQ__CONTAINER_OF(face, uvq_queue_t, face_);
  if (UVQ__LOAD(&q->phase_, acquire) == UVQ__CLOSED_PHASE) {
    uvq_sink_closed(face); /* the queue closed before its face did */
    return;
  }
  /* uvq__on_close completes the face's close. */
  uvq_queue_stop(q, UVQ_STOP_DRAIN, NULL);
  /* A writer waiting after "again" hears it now (sinks.md): its retry
   * learns UVQ_ECLOSED at once. */
  uvq__face_ready(q);
}

static const uvq_sink_vtable_t uvq__face_vtable = {
  uvq__face_write,
  uvq__face_close
};

uvq_sink_t* uvq_queue_sink(uvq_queue_t* q) {
  if (q == NULL || !(atomic_load(&q->state_) & UVQ__INITED))
    return NULL;
  return &q->face_;
}

/* -- init, ref, stats ------------------------------------------------------ */

static int uvq__init(uv_loop_t* loop, uvq_queue_t* q, uvq_process_cb process,
                     uvq_sink_t* dst, const uvq_queue_options_t* opts) {
  uvq_queue_options_t o;
  int r;

  if (loop == NULL || q == NULL || (process == NULL && dst == NULL) ||
      !UVQ__ALIGNED(q, uvq_queue_t))
    return UVQ_EINVAL;
  if (opts != NULL)
    o = *opts;
  else
    memset(&o, 0, sizeof(o));
  if (o.capacity > SIZE_MAX / 4 || o.batch > UVQ_MAX_BATCH ||
      (unsigned) o.overflow > UVQ_DROP_OLDEST || o.poll_us > UVQ_MAX_POLL_US)
    return UVQ_EINVAL;
  if (o.watermark == NULL ? o.high_water != 0 || o.low_water != 0
                          : o.high_water == 0 || o.high_water > SIZE_MAX / 4 ||
                                o.low_water >= o.high_water ||
                                (o.capacity != 0 && o.high_water > o.capacity))
    return UVQ_EINVAL;

  memset((char*) q + sizeof(q->data), 0, sizeof(*q) - sizeof(q->data));
  q->loop_ = loop;
  q->loop_thread_ = uvq__thread_id();
  q->process_ = process;
  q->sink_ = dst;
  q->release_ = o.release;
  q->error_ = o.error;
  q->capacity_ = o.capacity;
  q->overflow_ = o.overflow;
  q->batch_ = o.batch != 0 ? o.batch : UVQ_DEFAULT_BATCH;
  atomic_init(&q->waker_cpu_, -1);
  if (o.capacity != 0 && o.overflow == UVQ_DROP_OLDEST)
    q->flags_ |= UVQ__FLAG_LOCKED;
  q->poll_ns_ = (uint64_t) o.poll_us * 1000u;
  /* Publish room every capacity/16 events (a power of two, 1 to 64). */
  while (q->publish_mask_ < UVQ__PUBLISH_MAX - 1 &&
         (q->publish_mask_ + 1) * 2 * 16 <= o.capacity)
    q->publish_mask_ = q->publish_mask_ * 2 + 1;
  atomic_init(&q->state_, 0);
  atomic_init(&q->tail_, &q->stub_);
  atomic_init(&q->stop_count_, UVQ__UNPUBLISHED);
  q->watermark_ = o.watermark;
  q->high_water_ = o.high_water;
  q->low_water_ = o.low_water;
  {
    /* The first looks: a ticket in UVQ__BEHIND_EVERY, and the one that
     * brings an empty queue to high_water. */
    uint64_t look = o.capacity == 0 ? uvq__word(UVQ__BEHIND_EVERY)
                                    : UVQ__NEVER;
    uint64_t high_at = o.watermark != NULL ? uvq__arm(o.high_water - 1)
                                           : UVQ__NEVER;
    atomic_init(&q->high_at_, high_at);
    atomic_init(&q->look_at_, high_at < look ? high_at : look);
  }
  atomic_init(&q->stub_.next_, NULL);
  q->head_ = &q->stub_;

  r = uv_mutex_init(&q->lock_);
  if (r != 0)
    return r;
  r = uv_cond_init(&q->cond_);
  if (r != 0) {
    uv_mutex_destroy(&q->lock_);
    return r;
  }
  if (dst != NULL && (r = uvq_sink_set_ready_cb(dst, uvq__dst_ready, q)) != 0)
    goto fail_sink;
  r = uv_async_init(loop, &q->async_, uvq__async_cb);
  if (r != 0)
    goto fail_async;
  if (o.poll_us != 0) {
    /* After the async handle, the step that can fail: uv_idle_init only
     * links the handle into the loop (it returns 0), so nothing after here
     * ever needs undoing, which a handle could not be without the loop. */
    (void) uv_idle_init(loop, &q->idle_);
    uv_unref((uv_handle_t*) &q->idle_); /* polling keeps nothing alive */
  }
  uvq_sink_init(&q->face_, &uvq__face_vtable);
  /* Nothing queued yet: the first producer must wake the loop. */
  atomic_store(&q->state_, UVQ__INITED | UVQ__ASLEEP);
  return 0;

fail_async:
  if (dst != NULL)
    uvq_sink_set_ready_cb(dst, NULL, NULL);
fail_sink:
  uv_cond_destroy(&q->cond_);
  uv_mutex_destroy(&q->lock_);
  return r;
}

int uvq_queue_init(uv_loop_t* loop, uvq_queue_t* q, uvq_process_cb process,
                   const uvq_queue_options_t* opts) {
  if (process == NULL)
    return UVQ_EINVAL;
  return uvq__init(loop, q, process, NULL, opts);
}

int uvq_queue_init_sink(uv_loop_t* loop, uvq_queue_t* q, uvq_sink_t* dst,
                        const uvq_queue_options_t* opts) {
  if (dst == NULL)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(dst))
    return UVQ_ETHREAD;
  if (uvq_sink_is_closed(dst))
    return UVQ_ECLOSED;
  return uvq__init(loop, q, NULL, dst, opts);
}

static int uvq__loop_call(uvq_queue_t* q) {
  if (q == NULL || !(atomic_load(&q->state_) & UVQ__INITED))
    return UVQ_EINVAL;
  if (q->loop_thread_ != uvq__thread_id())
    return UVQ_ETHREAD;
  /* Stopped counts as closing: the stop holds its own reference (see
   * uvq_queue_stop), and an unref after it would let uv_run return before
   * the pass that closes the queue. A stop from another thread that this
   * load misses re-references the queue at its pass. */
  if (UVQ__LOAD(&q->phase_, relaxed) != UVQ__RUNNING ||
      (UVQ__LOAD(&q->stop_mode_, relaxed) & UVQ__STOP_REQUESTED))
    return UVQ_ECLOSED;
  return 0;
}

int uvq_queue_ref(uvq_queue_t* q) {
  int r = uvq__loop_call(q);
  if (r == 0)
    uv_ref((uv_handle_t*) &q->async_);
  return r;
}

int uvq_queue_unref(uvq_queue_t* q) {
  int r = uvq__loop_call(q);
  if (r == 0)
    uv_unref((uv_handle_t*) &q->async_);
  return r;
}

int uvq_queue_stats(const uvq_queue_t* q, uvq_queue_stats_t* out) {
  uvq_queue_t* m = (uvq_queue_t*) q; /* atomics are read-only here */
  uint64_t accepted;
  uint64_t removed;

  if (q == NULL || out == NULL || !(atomic_load(&m->state_) & UVQ__INITED))
    return UVQ_EINVAL;
  /* removed_ first, as in uvq__bounded_ticket: it only grows and never
   * passes the count, so the depth below never wraps. */
  removed = atomic_load(&m->removed_);
  UVQ__TEST_HOOK(8);
  accepted = UVQ__LOAD(&m->stop_count_, acquire);
  if (accepted == UVQ__UNPUBLISHED)
    accepted = UVQ__COUNT(atomic_load(&m->state_));
  out->enqueued = accepted;
  out->delivered = UVQ__LOAD(&m->delivered_, relaxed);
  out->dropped_new = UVQ__LOAD(&m->dropped_new_, relaxed);
  out->dropped_oldest = UVQ__LOAD(&m->dropped_oldest_, relaxed);
  out->discarded = UVQ__LOAD(&m->discarded_, relaxed);
  out->failed = UVQ__LOAD(&m->failed_, relaxed);
  /* A reader delayed between the two loads while the loop delivers and
   * producers refill gets too large a depth, never too small: a bounded
   * queue never holds more than its capacity. */
  out->depth = accepted - removed;
  if (m->capacity_ != 0 && out->depth > m->capacity_)
    out->depth = m->capacity_;
  out->max_depth = UVQ__LOAD(&m->max_depth_, relaxed);
  out->wakeups = UVQ__LOAD(&m->wakeups_, relaxed);
  out->yields = UVQ__LOAD(&m->yields_, relaxed);
  out->sleeps = UVQ__LOAD(&m->sleeps_, relaxed);
  out->passes = UVQ__LOAD(&m->passes_, relaxed);
  return 0;
}
