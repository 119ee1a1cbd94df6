/* Filter: a matcher in front of a sink.
 *
 * The filter holds no event and no state between writes, so flow control is
 * simply dst's: a matching event is written to dst and dst's answer is
 * returned unchanged (UVQ_EAGAIN included), and dst's readiness is forwarded
 * to the filter's upstream. An event the matcher refuses is "taken": the
 * write borrowed it, so there is nothing to release; the writer drops its
 * own reference as after any successful write.
 *
 * Close closes dst. The filter's close completes from dst's close callback,
 * which carries no argument: the filter finds itself through dst's ready
 * argument, since it stays dst's upstream until then.
 *
 * Loop thread only; no locks. */
#include <string.h>

#include "internal.h"

static int uvq__filter_write(uvq_sink_t* sink, uvq_event_t* ev);
static void uvq__filter_close(uvq_sink_t* sink);

static const uvq_sink_vtable_t uvq__filter_vt = {
  uvq__filter_write,
  uvq__filter_close
};

enum { UVQ__F_SAID_AGAIN = 1 /* the upstream got dst's UVQ_EAGAIN */ };

static void uvq__filter_on_ready(uvq_sink_t* dst, void* arg) {
  uvq_filter_t* f = arg;
  (void) dst;
  if (uvq_sink_is_closed(&f->sink) == 0) {
    f->flags_ &= ~UVQ__F_SAID_AGAIN;
    uvq_sink_ready(&f->sink);
  }
}

static void uvq__filter_detach(uvq_filter_t* f) {
  uvq_sink_t* dst = f->dst_;
  if (dst->ready_cb_ == uvq__filter_on_ready && dst->ready_arg_ == f)
    uvq_sink_set_ready_cb(dst, NULL, NULL);
}

static int uvq__filter_write(uvq_sink_t* sink, uvq_event_t* ev) {
  uvq_filter_t* f = UVQ__CONTAINER_OF(sink, uvq_filter_t, sink);
  int closed_here = 0;
  int* prev;
  int err;
  if (!f->match_(ev, f->arg_)) {
    f->stats_.unmatched++;
    return 0;
  }
  f->stats_.matched++;
  /* dst's write may close the filter, whose close callback may free it:
   * the close raises closed_here (on our stack), and then f is not touched
   * again. Nested writes chain their flags through prev. */
  prev = f->guard_;
  f->guard_ = &closed_here;
  err = uvq_sink_write(f->dst_, ev);
  if (closed_here) {
    if (prev != NULL)
      *prev = 1;
    /* Closed under the write: "again" would promise a ready that never
     * comes; the truth is that it will never take the event. */
    return err == UVQ_EAGAIN ? UVQ_ECLOSED : err;
  }
  f->guard_ = prev;
  if (err == UVQ_EAGAIN)
    f->flags_ |= UVQ__F_SAID_AGAIN;
  return err;
}

static void uvq__filter_on_dst_closed(uvq_sink_t* dst) {
  uvq_filter_t* f;
  if (dst->ready_cb_ != uvq__filter_on_ready)
    return;
  f = dst->ready_arg_;
  uvq_sink_set_ready_cb(dst, NULL, NULL);
  uvq_sink_closed(&f->sink); /* last: the user may free f here */
}

static void uvq__filter_close(uvq_sink_t* sink) {
  uvq_filter_t* f = UVQ__CONTAINER_OF(sink, uvq_filter_t, sink);
  if (f->guard_ != NULL) {
    *f->guard_ = 1; /* closed from inside dst's write: see the write */
    f->guard_ = NULL;
  }
  if (f->flags_ & UVQ__F_SAID_AGAIN) {
    /* dst said "again" to our upstream, and closing dst means its ready
     * may never come: send one now, so the upstream offers its event again
     * and learns UVQ_ECLOSED instead of waiting forever. */
    f->flags_ &= ~UVQ__F_SAID_AGAIN;
    uvq_sink_ready(sink);
  }
  if (uvq_sink_is_closed(f->dst_) == 1 ||
      uvq_sink_close(f->dst_, uvq__filter_on_dst_closed) != 0) {
    /* Already closing under someone else, who gets its own callback. */
    uvq__filter_detach(f);
    uvq_sink_closed(&f->sink);
  }
}

int uvq_filter_init(uvq_filter_t* f, uvq_sink_t* dst, uvq_match_cb match,
                    void* arg) {
  if (f == NULL || dst == NULL || match == NULL || dst == &f->sink)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(dst))
    return UVQ_ETHREAD;
  if (uvq_sink_is_closed(dst) == 1)
    return UVQ_ECLOSED;
  if (dst->ready_cb_ != NULL)
    return UVQ_EBUSY;
  uvq_sink_init(&f->sink, &uvq__filter_vt);
  f->sink.data = f;
  f->dst_ = dst;
  f->match_ = match;
  f->arg_ = arg;
  f->flags_ = 0;
  f->guard_ = NULL;
  memset(&f->stats_, 0, sizeof(f->stats_));
  uvq_sink_set_ready_cb(dst, uvq__filter_on_ready, f);
  return 0;
}

int uvq_filter_stats(const uvq_filter_t* f, uvq_filter_stats_t* out) {
  if (f == NULL || out == NULL)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(&f->sink))
    return UVQ_ETHREAD;
  *out = f->stats_;
  return 0;
}
