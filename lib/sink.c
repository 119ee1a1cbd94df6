/* The sink base: a vtable, a close state machine, and one upstream to tell
 * when a sink that said "again" is ready. Everything here runs on the loop
 * thread and takes no lock. Built-in sinks (queue, broadcaster, filter,
 * retrying sink, channel sink) are written against exactly the same base a
 * user's own sink uses. */
#include "internal.h"

int uvq_sink_init(uvq_sink_t* sink, const uvq_sink_vtable_t* vt) {
  if (sink == NULL || vt == NULL || vt->write == NULL)
    return UVQ_EINVAL;
  sink->vt_ = vt;
  sink->thread_ = uvq__thread_id();
  sink->ready_cb_ = NULL;
  sink->ready_arg_ = NULL;
  sink->close_cb_ = NULL;
  sink->state_ = UVQ__SINK_OPEN;
  return 0;
}

int uvq_sink_write(uvq_sink_t* sink, uvq_event_t* ev) {
  if (UVQ__UNLIKELY(sink == NULL || ev == NULL))
    return UVQ_EINVAL;
  /* The thread first: state_ is the sink thread's to read, thread_ never
   * changes after init. */
  if (UVQ__UNLIKELY(!uvq__sink_on_thread(sink)))
    return UVQ_ETHREAD;
  if (UVQ__UNLIKELY(sink->state_ != UVQ__SINK_OPEN))
    return UVQ_ECLOSED;
  return sink->vt_->write(sink, ev);
}

int uvq_sink_close(uvq_sink_t* sink, uvq_sink_close_cb cb) {
  if (sink == NULL)
    return UVQ_EINVAL;
  if (!uvq__sink_on_thread(sink))
    return UVQ_ETHREAD;
  if (sink->state_ != UVQ__SINK_OPEN)
    return 0;
  sink->state_ = UVQ__SINK_CLOSING;
  sink->close_cb_ = cb;
  if (sink->vt_->close != NULL) {
    sink->vt_->close(sink); /* calls uvq_sink_closed(), now or later */
  } else {
    /* What a close operation must do (sinks.md, "Closing"), done for a
     * sink that has none: an upstream still waiting after its UVQ_EAGAIN
     * retries now and learns UVQ_ECLOSED instead of waiting forever (a
     * ready nobody waits for is harmless). Before the close callback,
     * which may free the sink. */
    uvq_sink_ready(sink);
    uvq_sink_closed(sink);
  }
  return 0;
}

int uvq_sink_is_closed(const uvq_sink_t* sink) {
  if (sink == NULL)
    return UVQ_EINVAL;
  return sink->state_ != UVQ__SINK_OPEN;
}

void uvq_sink_ready(uvq_sink_t* sink) {
  if (sink != NULL && sink->ready_cb_ != NULL)
    sink->ready_cb_(sink, sink->ready_arg_);
}

void uvq_sink_closed(uvq_sink_t* sink) {
  uvq_sink_close_cb cb;
  if (sink == NULL || sink->state_ == UVQ__SINK_DONE)
    return;
  sink->state_ = UVQ__SINK_DONE;
  cb = sink->close_cb_;
  sink->close_cb_ = NULL;
  if (cb != NULL)
    cb(sink); /* last: the user may free the sink here */
}

int uvq_sink_set_ready_cb(uvq_sink_t* sink, uvq_sink_ready_cb cb, void* arg) {
  if (sink == NULL)
    return UVQ_EINVAL;
  if (cb != NULL && sink->ready_cb_ != NULL &&
      (sink->ready_cb_ != cb || sink->ready_arg_ != arg))
    return UVQ_EBUSY;
  sink->ready_cb_ = cb;
  sink->ready_arg_ = cb != NULL ? arg : NULL;
  return 0;
}
