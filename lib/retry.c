/* Retrying sink: retries failed writes on a uv_timer_t, never blocking.
 *
 * go-events sleeps in the writer's goroutine during a backoff. On a loop
 * nothing may sleep, so the retrying sink takes the event instead (one
 * reference), returns 0, and says UVQ_EAGAIN to every write until that
 * event is delivered or dropped; then it calls uvq_sink_ready() so the
 * upstream resumes. At most one event is in flight, so order is kept and
 * the strategy's state is only ever touched from the loop thread, one event
 * at a time (go-events shares it between goroutines unserialised).
 *
 *          write(ev)                           timer / dst ready
 *   idle ------------> proceed? -- wait --> [pending ev] -------> attempt
 *     ^                   | 0                  ^     |
 *     |                   v                    |     | failed, retry:
 *     +---- taken ---- attempt ---- failed ----+     | proceed -> timer
 *     |  (or dropped)                  retry         |
 *     +------------- delivered or dropped: unref, uvq_sink_ready ------+
 *
 * proceed() decides each wait: it is called before an event's first
 * attempt and right after each failure that is retried (not before an
 * attempt that follows dst's ready or the end of a wait). A retry always
 * goes through the timer, a 0 wait as 1 ms (see uvq__retry_arm), so a
 * strategy that never waits cannot spin the loop.
 *
 * Close may be requested from inside the wrapped sink's write; it then only
 * sets a flag and runs when that write returned. The close stops the timer,
 * releases the pending event, closes dst and uv_close()s the timer; it
 * completes when both closes did (always on a later loop iteration, since
 * uv_close's callback is deferred). */
#include <limits.h>
#include <string.h>

#include "internal.h"

enum {
  UVQ__R_IN_ATTEMPT = 1, /* inside dst's write */
  UVQ__R_WAIT_DST = 2,   /* the pending event waits for dst's ready */
  UVQ__R_CLOSING = 4,
  UVQ__R_SAID_AGAIN = 8, /* the upstream got UVQ_EAGAIN, awaits our ready */
  UVQ__R_DST_GONE = 16   /* dst answered UVQ_ECLOSED: never again */
};

static int uvq__retry_write(uvq_sink_t* sink, uvq_event_t* ev);
static void uvq__retry_close(uvq_sink_t* sink);

static const uvq_sink_vtable_t uvq__retry_vt = {
  uvq__retry_write,
  uvq__retry_close
};

static void uvq__retry_on_dst_ready(uvq_sink_t* dst, void* arg);

static void uvq__retry_ready(uvq_retry_t* r) {
  r->flags_ &= ~UVQ__R_SAID_AGAIN;
  uvq_sink_ready(&r->sink); /* the upstream may write again here */
}

static void uvq__retry_detach(uvq_retry_t* r) {
  uvq_sink_t* dst = r->dst_;
  if (dst->ready_cb_ == uvq__retry_on_dst_ready && dst->ready_arg_ == r)
    uvq_sink_set_ready_cb(dst, NULL, NULL);
}

static uint64_t uvq__retry_proceed(uvq_retry_t* r, const uvq_event_t* ev) {
  if (r->strategy_.proceed == NULL)
    return 0;
  return r->strategy_.proceed(r->strategy_.state, ev);
}

static int uvq__retry_drop(uvq_retry_t* r, const uvq_event_t* ev, int err) {
  if (r->strategy_.failure == NULL)
    return 0;
  return r->strategy_.failure(r->strategy_.state, ev, err) != 0;
}

static void uvq__retry_success(uvq_retry_t* r, const uvq_event_t* ev) {
  r->stats_.delivered++;
  if (r->strategy_.success != NULL)
    r->strategy_.success(r->strategy_.state, ev);
}

static int uvq__retry_attempt(uvq_retry_t* r, uvq_event_t* ev) {
  int err;
  r->flags_ |= UVQ__R_IN_ATTEMPT;
  r->stats_.attempts++;
  err = uvq_sink_write(r->dst_, ev);
  r->flags_ &= ~UVQ__R_IN_ATTEMPT;
  if (err == UVQ_ECLOSED)
    r->flags_ |= UVQ__R_DST_GONE; /* a channel sink's closed channel, say */
  return err;
}

static void uvq__retry_on_timer(uv_timer_t* timer);

/* Start the timer for the rest of the wait that ends at r->due_ns_. */
static void uvq__retry_wait_rest(uvq_retry_t* r, uint64_t now) {
  uint64_t left = r->due_ns_ - now;
  uint64_t ms = left / 1000000u + (left % 1000000u != 0); /* rounded up */
  /* Cannot fail: the timer is initialised and not closing (close stops
   * and closes it before anything could arm it again). */
  uv_timer_start(&r->timer_, uvq__retry_on_timer, ms, 0);
}

static void uvq__retry_arm(uvq_retry_t* r, uint64_t delay_ms) {
  uint64_t now;
  /* A 0 wait becomes 1 ms: libuv 1.44 (configure's minimum) runs a timer
   * restarted with 0 from its own callback again in the same
   * uv__run_timers() pass, the loop's clock not moving there, so a
   * strategy that never waits would spin in the timer phase forever. */
  if (delay_ms == 0)
    delay_ms = 1;
  /* The wait is kept on the monotonic clock. libuv counts a timeout from
   * the loop's cached time, which is as old as this loop iteration: armed
   * late in a long callback, the timer would fire that much early (as
   * soon as the next poll does not block), and the breaker's "backoff_ms
   * since the last failure" would not hold. So refresh the loop's clock,
   * and remember when the wait really ends: the timer callback starts
   * again for whatever is left (the loop's clock is whole milliseconds of
   * a coarse clock). */
  now = uv_hrtime();
  r->due_ns_ = delay_ms < (UINT64_MAX - now) / 1000000u
                   ? now + delay_ms * 1000000u
                   : UINT64_MAX;
  uv_update_time(r->timer_.loop);
  uvq__retry_wait_rest(r, now);
}

static void uvq__retry_hold(uvq_retry_t* r, uvq_event_t* ev) {
  r->pending_ = uvq_event_ref(ev);
}

static void uvq__retry_release(uvq_retry_t* r) {
  uvq_event_t* ev = r->pending_;
  r->pending_ = NULL;
  r->flags_ &= ~UVQ__R_WAIT_DST;
  uvq_event_unref(ev);
}

static void uvq__retry_close_done(uvq_retry_t* r) {
  if (--r->closes_left_ == 0)
    uvq_sink_closed(&r->sink); /* last: the user may free r here */
}

static void uvq__retry_on_timer_closed(uv_handle_t* handle) {
  uvq__retry_close_done(
      UVQ__CONTAINER_OF((uv_timer_t*) handle, uvq_retry_t, timer_));
}

static void uvq__retry_on_dst_closed(uvq_sink_t* dst) {
  uvq_retry_t* r;
  /* No argument on a close callback: we are still dst's upstream. */
  if (dst->ready_cb_ != uvq__retry_on_dst_ready)
    return;
  r = dst->ready_arg_;
  uvq_sink_set_ready_cb(dst, NULL, NULL);
  uvq__retry_close_done(r);
}

static void uvq__retry_finish_close(uvq_retry_t* r) {
  uv_timer_stop(&r->timer_);
  if (r->pending_ != NULL) {
    r->stats_.dropped++;
    uvq__retry_release(r);
  }
  /* The timer, plus one so that dst closing at once cannot finish early. */
  r->closes_left_ = 2;
  uv_close((uv_handle_t*) &r->timer_, uvq__retry_on_timer_closed);
  if (uvq_sink_is_closed(r->dst_) == 1) {
    uvq__retry_detach(r); /* closing under someone else */
  } else {
    r->closes_left_++;
    if (uvq_sink_close(r->dst_, uvq__retry_on_dst_closed) != 0) {
      uvq__retry_detach(r);
      r->closes_left_--;
    }
  }
  uvq__retry_close_done(r);
}

/* An attempt that closed us from inside dst's write: 1 when dst took ev
 * (success told), 0 otherwise; a failure is counted, never retried. */
static int uvq__retry_closed_outcome(uvq_retry_t* r, uvq_event_t* ev,
                                     int err) {
  if (err == 0) {
    uvq__retry_success(r, ev);
    return 1;
  }
  if (err != UVQ_EAGAIN && err != UVQ_ECLOSED)
    r->stats_.failures++;
  return 0;
}

/* Try the pending event again (its backoff ended, or dst became ready). */
static void uvq__retry_again(uvq_retry_t* r) {
  uvq_event_t* ev = r->pending_;
  int err = uvq__retry_attempt(r, ev);

  if (r->flags_ & UVQ__R_CLOSING) {
    if (uvq__retry_closed_outcome(r, ev, err))
      uvq__retry_release(r);
    uvq__retry_finish_close(r); /* drops the event if still pending */
    return;
  }
  if (err == UVQ_EAGAIN) {
    r->flags_ |= UVQ__R_WAIT_DST;
    return;
  }
  if (err == 0) {
    uvq__retry_success(r, ev);
  } else if (err == UVQ_ECLOSED) {
    r->stats_.dropped++; /* terminal: it can never be delivered */
  } else {
    r->stats_.failures++;
    if (!uvq__retry_drop(r, ev, err)) {
      r->stats_.retries++;
      uvq__retry_arm(r, uvq__retry_proceed(r, ev));
      return;
    }
    r->stats_.dropped++;
  }
  uvq__retry_release(r);
  uvq__retry_ready(r); /* last: the upstream may write again here */
}

static void uvq__retry_on_timer(uv_timer_t* timer) {
  uvq_retry_t* r = UVQ__CONTAINER_OF(timer, uvq_retry_t, timer_);
  uint64_t now;
  if (r->pending_ == NULL || (r->flags_ & UVQ__R_CLOSING))
    return;
  now = uv_hrtime();
  if (now < r->due_ns_) {
    uvq__retry_wait_rest(r, now); /* early by the loop's clock: wait on */
    return;
  }
  uvq__retry_again(r);
}

static void uvq__retry_on_dst_ready(uvq_sink_t* dst, void* arg) {
  uvq_retry_t* r = arg;
  (void) dst;
  if (r->flags_ & UVQ__R_CLOSING)
    return;
  if (r->pending_ == NULL) {
    uvq__retry_ready(r); /* our UVQ_EAGAIN was dst's: pass it on */
    return;
  }
  if (!(r->flags_ & UVQ__R_WAIT_DST))
    return; /* in a backoff: the timer retries */
  r->flags_ &= ~UVQ__R_WAIT_DST;
  uvq__retry_again(r);
}

static int uvq__retry_write(uvq_sink_t* sink, uvq_event_t* ev) {
  uvq_retry_t* r = UVQ__CONTAINER_OF(sink, uvq_retry_t, sink);
  uint64_t delay;
  int err;

  if (r->flags_ & UVQ__R_IN_ATTEMPT)
    return UVQ_EBUSY; /* written to from inside dst's write */
  /* dst closed (by its owner), or said UVQ_ECLOSED once, which is final:
   * nothing can go, so say so now. Asking proceed first would take ev into
   * a wait that can only end in a drop (with a strategy that waits before
   * every attempt, or uvq_backoff after a failure, every later write too),
   * and the upstream would count as delivered what was dropped. A pending
   * event is dropped by its retry. */
  if ((r->flags_ & UVQ__R_DST_GONE) || uvq_sink_is_closed(r->dst_) == 1)
    return UVQ_ECLOSED;
  if (r->pending_ != NULL) {
    r->flags_ |= UVQ__R_SAID_AGAIN;
    return UVQ_EAGAIN; /* busy with an earlier event */
  }

  delay = uvq__retry_proceed(r, ev);
  if (delay > 0) {
    uvq__retry_hold(r, ev);
    uvq__retry_arm(r, delay);
    r->stats_.written++;
    return 0;
  }

  err = uvq__retry_attempt(r, ev);
  if (r->flags_ & UVQ__R_CLOSING) {
    /* Closed from inside dst's write. The close completes on a later loop
     * iteration (uv_close), so r stays valid here. */
    if (uvq__retry_closed_outcome(r, ev, err))
      r->stats_.written++;
    uvq__retry_finish_close(r);
    return err == 0 ? 0 : UVQ_ECLOSED;
  }
  if (err == 0) {
    uvq__retry_success(r, ev);
    r->stats_.written++;
    return 0;
  }
  if (err == UVQ_EAGAIN)
    r->flags_ |= UVQ__R_SAID_AGAIN;
  if (err == UVQ_EAGAIN || err == UVQ_ECLOSED)
    return err; /* not taken; dst's ready is forwarded to our upstream */
  r->stats_.failures++;
  r->stats_.written++;
  if (uvq__retry_drop(r, ev, err)) {
    r->stats_.dropped++;
    return 0;
  }
  r->stats_.retries++;
  uvq__retry_hold(r, ev);
  uvq__retry_arm(r, uvq__retry_proceed(r, ev));
  return 0;
}

static void uvq__retry_close(uvq_sink_t* sink) {
  uvq_retry_t* r = UVQ__CONTAINER_OF(sink, uvq_retry_t, sink);
  r->flags_ |= UVQ__R_CLOSING;
  if (r->flags_ & UVQ__R_SAID_AGAIN) {
    /* The upstream waits for a ready that the cancelled retry would have
     * sent: send it now, so it offers its event again and learns
     * UVQ_ECLOSED instead of waiting forever. The close callback cannot
     * run before a later loop iteration, so r stays valid meanwhile. */
    r->flags_ &= ~UVQ__R_SAID_AGAIN;
    uvq_sink_ready(sink);
  }
  if (r->flags_ & UVQ__R_IN_ATTEMPT)
    return; /* finished when dst's write returns */
  uvq__retry_finish_close(r);
}

int uvq_retry_init(uv_loop_t* loop, uvq_retry_t* r, uvq_sink_t* dst,
                   const uvq_retry_strategy_t* strategy) {
  int err;
  if (loop == NULL || r == NULL || dst == NULL || strategy == NULL ||
      dst == &r->sink)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(dst))
    return UVQ_ETHREAD;
  if (uvq_sink_is_closed(dst) == 1)
    return UVQ_ECLOSED;
  if (dst->ready_cb_ != NULL)
    return UVQ_EBUSY; /* checked before the timer exists: nothing to undo */
  err = uv_timer_init(loop, &r->timer_);
  if (err != 0)
    return err;
  uvq_sink_init(&r->sink, &uvq__retry_vt);
  r->sink.data = r;
  r->dst_ = dst;
  r->strategy_ = *strategy;
  r->pending_ = NULL;
  r->due_ns_ = 0;
  r->closes_left_ = 0;
  r->flags_ = 0;
  memset(&r->stats_, 0, sizeof(r->stats_));
  uvq_sink_set_ready_cb(dst, uvq__retry_on_dst_ready, r);
  return 0;
}

int uvq_retry_stats(const uvq_retry_t* r, uvq_retry_stats_t* out) {
  if (r == NULL || out == NULL)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(&r->sink))
    return UVQ_ETHREAD;
  *out = r->stats_;
  return 0;
}

/* -- Breaker -------------------------------------------------------------- */

static uint64_t uvq__breaker_proceed(void* state, const uvq_event_t* ev) {
  uvq_breaker_t* br = state;
  uint64_t deadline;
  uint64_t now;
  (void) ev;
  if (br->recent_ < br->threshold_ || br->recent_ == 0)
    return 0;
  /* Nanoseconds inside, rounded up to whole milliseconds out, so the wait
   * never ends before the backoff did. */
  deadline = br->last_ns_ + br->backoff_ms_ * 1000000u;
  now = uv_hrtime();
  if (deadline <= now)
    return 0;
  return (deadline - now + 999999u) / 1000000u;
}

static int uvq__breaker_failure(void* state, const uvq_event_t* ev,
                                int err) {
  uvq_breaker_t* br = state;
  (void) ev;
  (void) err;
  if (br->recent_ != UINT_MAX)
    br->recent_++;
  br->last_ns_ = uv_hrtime();
  return 0; /* never drops */
}

static void uvq__breaker_success(void* state, const uvq_event_t* ev) {
  uvq_breaker_t* br = state;
  (void) ev;
  br->recent_ = 0;
  br->last_ns_ = 0;
}

int uvq_breaker_init(uvq_breaker_t* br, unsigned threshold,
                     uint64_t backoff_ms) {
  if (br == NULL)
    return UVQ_EINVAL;
  br->strategy.proceed = uvq__breaker_proceed;
  br->strategy.failure = uvq__breaker_failure;
  br->strategy.success = uvq__breaker_success;
  br->strategy.state = br;
  br->threshold_ = threshold;
  br->recent_ = 0;
  /* Far beyond any useful backoff; keeps the nanosecond sum in range. */
  br->backoff_ms_ = backoff_ms < UINT64_MAX / 4000000u
                        ? backoff_ms
                        : UINT64_MAX / 4000000u;
  br->last_ns_ = 0;
  return 0;
}

/* -- Exponential backoff -------------------------------------------------- */

/* splitmix64 (Steele, Lea, Flood 2014): one 64-bit word of state, good
 * enough for jitter, and every seed (0 included) gives a full period. */
static uint64_t uvq__backoff_next(uvq_backoff_t* bo) {
  uint64_t z = (bo->rng_ += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* min(base + factor * 2^(n-1), max) without overflow. */
static uint64_t uvq__backoff_bound(const uvq_backoff_t* bo) {
  uint64_t shift = bo->failures_ - 1;
  if (shift >= 63 || bo->factor_ms_ > (UINT64_MAX - bo->base_ms_) >> shift)
    return bo->max_ms_;
  if (bo->base_ms_ + (bo->factor_ms_ << shift) > bo->max_ms_)
    return bo->max_ms_;
  return bo->base_ms_ + (bo->factor_ms_ << shift);
}

static uint64_t uvq__backoff_proceed(void* state, const uvq_event_t* ev) {
  uvq_backoff_t* bo = state;
  uint64_t bound;
  (void) ev;
  if (bo->failures_ == 0)
    return 0;
  bound = uvq__backoff_bound(bo);
  if (bound == 0)
    return 0;
  return uvq__backoff_next(bo) % bound; /* [0, bound) */
}

static int uvq__backoff_failure(void* state, const uvq_event_t* ev,
                                int err) {
  uvq_backoff_t* bo = state;
  (void) ev;
  (void) err;
  if (bo->failures_ != UINT64_MAX)
    bo->failures_++;
  return 0; /* never drops */
}

static void uvq__backoff_success(void* state, const uvq_event_t* ev) {
  uvq_backoff_t* bo = state;
  (void) ev;
  bo->failures_ = 0;
}

int uvq_backoff_init(uvq_backoff_t* bo, uint64_t base_ms, uint64_t factor_ms,
                     uint64_t max_ms, uint64_t seed) {
  if (bo == NULL)
    return UVQ_EINVAL;
  bo->strategy.proceed = uvq__backoff_proceed;
  bo->strategy.failure = uvq__backoff_failure;
  bo->strategy.success = uvq__backoff_success;
  bo->strategy.state = bo;
  bo->base_ms_ = base_ms;
  bo->factor_ms_ = factor_ms != 0 ? factor_ms : UVQ_BACKOFF_DEFAULT_FACTOR_MS;
  bo->max_ms_ = max_ms != 0 ? max_ms : UVQ_BACKOFF_DEFAULT_MAX_MS;
  bo->failures_ = 0;
  if (seed == 0)
    seed = uv_hrtime() ^ ((uint64_t) (uintptr_t) bo << 16);
  bo->rng_ = seed;
  return 0;
}
