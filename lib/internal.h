/* Private helpers shared by the files in lib/. Nothing here is API. */
#ifndef UVQ_INTERNAL_H
#define UVQ_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#ifndef _WIN32
# include <pthread.h>
#endif

#include "uvq.h"

#define UVQ__CONTAINER_OF(ptr, type, field)                                  \
  ((type*) ((char*) (ptr) - offsetof(type, field)))

/* UVQ__HOT starts a function on a 64-byte line: the enqueue and drain
 * paths. Their loops' placement then no longer moves with unrelated code
 * above them; a 48-byte function added before them once cost the bounded
 * queue a fifth of its speed with one producer, nothing in them changed
 * (see docs/bench.md). */
#if defined(__GNUC__)
# define UVQ__LIKELY(x) __builtin_expect(!!(x), 1)
# define UVQ__UNLIKELY(x) __builtin_expect(!!(x), 0)
# define UVQ__INLINE inline __attribute__((always_inline))
# define UVQ__NOINLINE __attribute__((noinline))
# define UVQ__HOT __attribute__((aligned(64)))
#else
# define UVQ__LIKELY(x) (x)
# define UVQ__UNLIKELY(x) (x)
# define UVQ__INLINE inline
# define UVQ__NOINLINE
# define UVQ__HOT
#endif

#define UVQ__LOAD(p, mo) atomic_load_explicit((p), memory_order_##mo)
#define UVQ__STORE(p, v, mo) atomic_store_explicit((p), (v), memory_order_##mo)

/* Queue state word: accepted count in the high bits, three flags below.
 * INITED is set by init and never cleared, so a zero-filled (never
 * initialised) queue is told apart by the same test that checks CLOSED. */
#define UVQ__CLOSED ((uint64_t) 1)
#define UVQ__ASLEEP ((uint64_t) 2)
#define UVQ__INITED ((uint64_t) 4)
#define UVQ__ONE ((uint64_t) 8)
#define UVQ__COUNT(s) ((s) >> 3)

/* stop_mode_ bits: what the drain loop must look at per event, in one word
 * (the hot path pays one load for all of them). */
#define UVQ__STOP_REQUESTED 1
#define UVQ__STOP_DISCARD 2
#define UVQ__FACE_USED 4 /* carriers may be queued (uvq_queue_sink) */

/* stop_count_ before the stopper published it. */
#define UVQ__UNPUBLISHED UINT64_MAX

/* phase_ */
enum {
  UVQ__RUNNING = 0,
  UVQ__CLOSING = 1, /* uv_close called */
  UVQ__CLOSED_PHASE = 2
};

/* Wake the loop of `handle` (any thread), as uv_async_send, but on libuv
 * 1.44 without the window in which its loop thread spins on a half-sent
 * handle (lib/wake.c). uvq__direct_wake() says whether that path is used. */
void uvq__async_send(uv_async_t* handle);
int uvq__direct_wake(void);

/* 1 when the caller runs on thread t. On Unix uv_thread_t is pthread_t;
 * calling pthread directly saves two calls through libuv on paths that check
 * it per event. */
static inline int uvq__on_thread(uv_thread_t t) {
#ifdef _WIN32
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, &t);
#else
  return pthread_equal(pthread_self(), t);
#endif
}

static inline void uvq__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* One byte per thread whose address identifies the thread: comparing it costs
 * two instructions where pthread_self() + pthread_equal() cost a call. The
 * initial-exec model keeps the access %fs-relative in the shared library
 * instead of a call to __tls_get_addr (11 instructions on every bounded
 * enqueue, measured with callgrind). GCC keeps the model only when the
 * definition carries it too, hence the macro for both. */
#define UVQ__TLS_INITIAL_EXEC __attribute__((tls_model("initial-exec")))
extern _Thread_local char uvq__thread_marker UVQ__TLS_INITIAL_EXEC;

/* 1 when p is aligned as type T wants (the queue and the channel keep
 * their hot fields on cache lines of their own: malloc's 16 bytes are not
 * enough for them). */
#define UVQ__ALIGNED(p, T) (((uintptr_t) (p) % _Alignof(T)) == 0)

static inline const void* uvq__thread_id(void) {
  return &uvq__thread_marker;
}

/* uvq_event_unref for a non-NULL ev, inlined where the library drops an
 * event per delivery (a call through the PLT otherwise).
 * The last holder (the usual case: one queue or sink after another) skips
 * the locked decrement. A count of 1 seen by a holder means nobody else
 * holds the event, and only holders may ref or unref it, so the count
 * cannot change under us; the acquire load pairs with the release half of
 * the other holders' decrements, so their writes happen-before the release
 * callback, as with the decrement below. */
static inline void uvq__event_unref(uvq_event_t* ev) {
  if (UVQ__LOAD(&ev->refs_, acquire) == 1) {
    UVQ__STORE(&ev->refs_, 0, relaxed);
  } else if (atomic_fetch_sub_explicit(&ev->refs_, 1, memory_order_acq_rel) !=
             1) {
    return;
  }
  if (ev->release_ != NULL)
    ev->release_(ev);
}

/* A sink's state_ (sink.c runs the state machine). */
enum { UVQ__SINK_OPEN = 0, UVQ__SINK_CLOSING, UVQ__SINK_DONE };

/* 1 when the caller runs on the sink's thread. */
static inline int uvq__sink_on_thread(const uvq_sink_t* sink) {
  return sink->thread_ == uvq__thread_id();
}

/* uvq_sink_write for a caller that already knows sink and ev are not NULL
 * and that it runs on the sink's thread (a broadcaster's children were
 * checked to share its thread when they were added). */
static inline int uvq__sink_write_checked(uvq_sink_t* sink, uvq_event_t* ev) {
  if (UVQ__UNLIKELY(sink->state_ != UVQ__SINK_OPEN))
    return UVQ_ECLOSED;
  return sink->vt_->write(sink, ev);
}

/* Add to a counter that only one thread writes (cheaper than fetch_add). */
static inline void uvq__bump(_Atomic(uint64_t)* c, uint64_t n) {
  UVQ__STORE(c, UVQ__LOAD(c, relaxed) + n, relaxed);
}

#endif /* UVQ_INTERNAL_H */
