/* Reference-counted event headers. Plain queues never touch the count; it
 * exists so that one event can be shared by several sinks (fan-out) without
 * copying its payload: the last holder to let go releases it. */
#include "internal.h"

int uvq_event_init(uvq_event_t* ev, uvq_event_release_cb release) {
  if (ev == NULL)
    return UVQ_EINVAL;
  UVQ__STORE(&ev->next_, NULL, relaxed);
  UVQ__STORE(&ev->refs_, 1, relaxed);
  ev->release_ = release;
  return 0;
}

uvq_event_t* uvq_event_ref(uvq_event_t* ev) {
  if (ev != NULL)
    atomic_fetch_add_explicit(&ev->refs_, 1, memory_order_relaxed);
  return ev;
}

void uvq_event_unref(uvq_event_t* ev) {
  if (ev != NULL)
    uvq__event_unref(ev);
}

unsigned uvq_event_refs(const uvq_event_t* ev) {
  if (ev == NULL)
    return 0;
  return UVQ__LOAD(&ev->refs_, relaxed);
}
