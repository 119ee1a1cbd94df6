/* uvq: event queues for libuv.
 *
 * The only public header. Read docs/ for the manual; this file states the
 * contract of every function next to its declaration:
 *   - which thread may call it ("any thread" or "loop thread"),
 *   - who owns each pointer before and after the call,
 *   - every error it returns.
 *
 * Threads: the loop thread is the room where sinks, broadcasters, filters and
 * retrying sinks live; nothing there takes a lock. Exactly two objects are
 * doors between threads: the queue (any thread in, loop thread out) and the
 * channel (any thread in, any thread out).
 *
 * Lifetime (like uv_async_t): the caller allocates every object, *_init binds
 * it to a loop, the object must not move, and its memory may be freed only in
 * or after the close callback.
 */
#ifndef UVQ_H
#define UVQ_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(BUILDING_UVQ) && defined(__GNUC__)
# define UVQ_EXTERN __attribute__((visibility("default")))
#else
# define UVQ_EXTERN /* nothing */
#endif

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Private fields are atomics in C11; C++ sees an object of the same size. */
#ifdef __cplusplus
# define UVQ__ATOMIC(t) t
# define UVQ__ALIGNAS(n) alignas(n)
#else
# define UVQ__ATOMIC(t) _Atomic(t)
# define UVQ__ALIGNAS(n) _Alignas(n)
#endif
#define UVQ__CACHELINE 64

#define UVQ_VERSION_MAJOR 0
#define UVQ_VERSION_MINOR 1
#define UVQ_VERSION_PATCH 0

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* Every function returns 0 or one of these negative codes. Codes that mean
 * the same as a libuv code are that code; the others live far below libuv's
 * range. uvq_strerror() and uvq_err_name() also accept any libuv code. */
#define UVQ__ECLOSED  (-30001)
#define UVQ__EDEADLK  (-30002)
#define UVQ__ETHREAD  (-30003)
#define UVQ__EFULL    (-30004)

#define UVQ_ERRNO_MAP(XX)                                                    \
  XX(EINVAL, UV_EINVAL, "invalid argument")                                  \
  XX(ENOMEM, UV_ENOMEM, "not enough memory")                                 \
  XX(EAGAIN, UV_EAGAIN, "not now: the sink will signal when ready")          \
  XX(ETIMEDOUT, UV_ETIMEDOUT, "timed out")                                   \
  XX(EBUSY, UV_EBUSY, "resource busy")                                       \
  XX(EEXIST, UV_EEXIST, "already present")                                   \
  XX(ENOENT, UV_ENOENT, "not found")                                         \
  XX(ECLOSED, UVQ__ECLOSED, "closed: stopped or closing, never again")      \
  XX(EDEADLK, UVQ__EDEADLK, "would block the loop thread forever")          \
  XX(ETHREAD, UVQ__ETHREAD, "called from a thread that is not allowed")     \
  XX(EFULL, UVQ__EFULL, "queue is full")                                     \

typedef enum {
#define XX(name, value, _) UVQ_##name = value,
  UVQ_ERRNO_MAP(XX)
#undef XX
  UVQ_ERRNO_MAX_ = -1
} uvq_errno_t;

/* A static message for err (uvq or libuv code); "unknown error" otherwise.
 * Any thread. Never NULL. */
UVQ_EXTERN const char* uvq_strerror(int err);
/* The code's name ("UVQ_EFULL", or libuv's name such as "EINVAL" for libuv
 * codes); "UNKNOWN" otherwise. Any thread. Never NULL. */
UVQ_EXTERN const char* uvq_err_name(int err);

/* ------------------------------------------------------------------------ */
/* Events                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct uvq_event_s uvq_event_t;
typedef struct uvq_queue_s uvq_queue_t;
typedef struct uvq_sink_s uvq_sink_t;

/* Called when the last reference to an event goes away. */
typedef void (*uvq_event_release_cb)(uvq_event_t* ev);

/* The event header. Embed it in your own struct (anywhere; recover the outer
 * struct with offsetof) so that queueing it allocates nothing: the queue's
 * link lives here. An event is in at most one queue or channel at a time.
 *
 *   struct job { uvq_event_t ev; int id; char payload[64]; };
 *
 * Plain queues (uvq_queue_init with a process callback) only use the link;
 * they never read the reference count. Sinks share one event between several
 * holders (a broadcaster hands it to every sink), so everything that passes
 * through a sink must be set up with uvq_event_init() and is released with
 * uvq_event_unref(). */
struct uvq_event_s {
  /* private */
  UVQ__ATOMIC(uvq_event_t*) next_;
  UVQ__ATOMIC(unsigned) refs_;
  uvq_event_release_cb release_;
};

/* Set the reference count to 1 and remember release (may be NULL: nothing is
 * called when the count reaches 0). Any thread, before the event is shared.
 * Returns 0, or UVQ_EINVAL when ev is NULL. */
UVQ_EXTERN int uvq_event_init(uvq_event_t* ev, uvq_event_release_cb release);
/* Take one more reference (atomic). Any thread, while holding a reference.
 * Returns ev (NULL when ev is NULL). */
UVQ_EXTERN uvq_event_t* uvq_event_ref(uvq_event_t* ev);
/* Drop one reference; the last one calls the release callback on this
 * thread. Any thread. NULL is ignored. After the call the caller must not
 * touch ev unless it holds another reference. */
UVQ_EXTERN void uvq_event_unref(uvq_event_t* ev);
/* The current reference count (a snapshot). Any thread. 0 for NULL. */
UVQ_EXTERN unsigned uvq_event_refs(const uvq_event_t* ev);

/* ------------------------------------------------------------------------ */
/* Sinks (loop thread only)                                                 */
/* ------------------------------------------------------------------------ */

/* Thread contract of this section and of every sink below it, once: a sink
 * lives on the loop thread of the code that created it. Every function here
 * is "loop thread" and every callback runs there; nothing takes a lock.
 * uvq_sink_write and uvq_sink_close from another thread return UVQ_ETHREAD.
 *
 * Ownership on write: the event is borrowed. The writer keeps its reference;
 * a sink that needs the event after write returns takes its own with
 * uvq_event_ref() and drops it with uvq_event_unref(). This is what lets a
 * broadcaster hand one event to many sinks without copying it: the event is
 * released when the last holder lets go. Every event that passes through a
 * sink must have been set up with uvq_event_init().
 *
 * Flow control: write returns
 *   0            taken;
 *   UVQ_ECLOSED  never again (terminal: the sink closed);
 *   UVQ_EAGAIN   not now, and not taken: the sink will call uvq_sink_ready()
 *                when it can take events again, and the writer retries the
 *                same event then (it keeps it at its head, nothing reorders);
 *   other < 0    this write failed; the writer decides (retry, drop, count).
 *
 * Writing your own sink: fill a uvq_sink_vtable_t, embed a uvq_sink_t in
 * your struct, call uvq_sink_init(), and from your close operation call
 * uvq_sink_closed() once the close is complete (possibly at once). */

typedef struct uvq_sink_vtable_s uvq_sink_vtable_t;

/* Called once on the loop thread when the sink's close completed. The sink's
 * memory may be freed from here on. It may run before uvq_sink_close()
 * returns (a sink with nothing to flush closes at once). */
typedef void (*uvq_sink_close_cb)(uvq_sink_t* sink);
/* Called on the loop thread when a sink that returned UVQ_EAGAIN can take
 * events again. arg is what the upstream registered. */
typedef void (*uvq_sink_ready_cb)(uvq_sink_t* sink, void* arg);

struct uvq_sink_vtable_s {
  /* Required. See "Flow control" above. Never called after close began. */
  int (*write)(uvq_sink_t* sink, uvq_event_t* ev);
  /* Optional. Start closing; call uvq_sink_closed(sink) when done (it may be
   * called from inside close). NULL: the sink closes at once. */
  void (*close)(uvq_sink_t* sink);
};

struct uvq_sink_s {
  void* data; /* the user's */
  /* private */
  const uvq_sink_vtable_t* vt_;
  uv_thread_t thread_;
  uvq_sink_ready_cb ready_cb_;
  void* ready_arg_;
  uvq_sink_close_cb close_cb_;
  int state_;
};

/* Initialise a sink with its operations. Loop thread: the calling thread
 * becomes the sink's thread. sink and vt are the caller's and must outlive
 * the sink (vt is typically static const). Returns 0, or UVQ_EINVAL (NULL
 * sink or vt, or vt->write NULL). */
UVQ_EXTERN int uvq_sink_init(uvq_sink_t* sink, const uvq_sink_vtable_t* vt);

/* Offer ev to the sink (borrowed: see Ownership above). Loop thread.
 * Returns what the sink's write returns (0, UVQ_EAGAIN, another error), or:
 * UVQ_EINVAL (NULL sink or ev), UVQ_ETHREAD (not the sink's thread),
 * UVQ_ECLOSED (close began: every write after close fails, every time). */
UVQ_EXTERN int uvq_sink_write(uvq_sink_t* sink, uvq_event_t* ev);

/* Close the sink; cb (may be NULL) runs once when the close is complete,
 * possibly before this returns. Closing twice is harmless: a later call
 * returns 0 and does nothing (its cb is not called). Loop thread.
 * Returns 0, or UVQ_EINVAL (NULL sink), UVQ_ETHREAD. */
UVQ_EXTERN int uvq_sink_close(uvq_sink_t* sink, uvq_sink_close_cb cb);

/* 1 when close began (writes return UVQ_ECLOSED), 0 when open, and
 * UVQ_EINVAL for NULL. Loop thread. */
UVQ_EXTERN int uvq_sink_is_closed(const uvq_sink_t* sink);

/* For sink implementations: the sink can take events again after it
 * returned UVQ_EAGAIN; calls the upstream's ready callback (if any). May be
 * called when nobody waits (harmless). Loop thread. NULL is ignored. */
UVQ_EXTERN void uvq_sink_ready(uvq_sink_t* sink);

/* For sink implementations: the close begun by the close operation is
 * complete. Runs the user's close callback; the sink must not be touched
 * after this call. Loop thread. NULL or a second call is ignored. */
UVQ_EXTERN void uvq_sink_closed(uvq_sink_t* sink);

/* For upstreams (queue, broadcaster, filter, retrying sink, your own): be
 * told through cb when the sink is ready again after UVQ_EAGAIN. A sink has
 * at most one upstream. cb NULL detaches. Loop thread.
 * Returns 0, UVQ_EINVAL (NULL sink), UVQ_EBUSY (another upstream is
 * attached: detach it first). */
UVQ_EXTERN int uvq_sink_set_ready_cb(uvq_sink_t* sink, uvq_sink_ready_cb cb,
                                     void* arg);

/* ------------------------------------------------------------------------ */
/* Queue: any thread enqueues, the loop thread drains                       */
/* ------------------------------------------------------------------------ */

/* Thread contract of this section, once:
 *   - uvq_queue_init, uvq_queue_ref, uvq_queue_unref: the loop thread.
 *   - enqueue (all variants), uvq_queue_stop, uvq_queue_stats: any thread,
 *     any number of threads at once (many producers, one consumer).
 *   - Callbacks (process, release of drained or discarded events, close)
 *     run on the loop thread, except the release of an event dropped by the
 *     overflow policy, which runs on the producer thread that caused the
 *     drop (UVQ_DROP_NEW, UVQ_DROP_OLDEST). A release function must
 *     therefore be safe to call from any thread.
 * Delivery is FIFO in the order enqueues took effect, so each producer's own
 * events arrive in the order it enqueued them. */

typedef enum {
  /* The producer waits for space (uvq_queue_enqueue, _timeout); the
   * non-blocking uvq_queue_try_enqueue returns UVQ_EFULL. */
  UVQ_BLOCK = 0,
  /* Every enqueue returns UVQ_EFULL at once; the caller keeps the event. */
  UVQ_FAIL,
  /* The new event is released (the release function is called on the
   * producer thread), counted in dropped_new, and enqueue returns 0. */
  UVQ_DROP_NEW,
  /* The oldest queued event is released and counted in dropped_oldest to
   * make room; the new one is queued; enqueue returns 0. This policy takes
   * a mutex on both sides (the consumer cannot otherwise be robbed of its
   * head), so it is slower than the others. */
  UVQ_DROP_OLDEST
} uvq_overflow_t;

typedef enum {
  /* Deliver everything accepted before the stop, then close. */
  UVQ_STOP_DRAIN = 0,
  /* Release everything pending at once (counted in discarded), then close.
   * A discard stop after a drain stop overrides it. */
  UVQ_STOP_DISCARD = 1
} uvq_stop_mode_t;

/* Called on the loop thread with each event, in FIFO order. The callback
 * owns ev from then on (the queue never touches it again). It may call any
 * uvq function, including uvq_queue_stop on this queue. */
typedef void (*uvq_process_cb)(uvq_queue_t* q, uvq_event_t* ev);
/* Called with each event the queue drops or discards; it owns ev. */
typedef void (*uvq_release_cb)(uvq_queue_t* q, uvq_event_t* ev);
/* Called once on the loop thread when the queue is closed: every accepted
 * event was delivered or released, no thread is blocked in the queue, and
 * the uv_async_t is closed. The queue's memory may be freed from here on. */
typedef void (*uvq_queue_close_cb)(uvq_queue_t* q);

#define UVQ_DEFAULT_BATCH 1024u
#define UVQ_MAX_BATCH (1u << 24)

typedef struct {
  /* Maximum number of queued events; 0 means unbounded (the default).
   * At most SIZE_MAX / 4. */
  size_t capacity;
  /* What happens when a bounded queue is full; ignored when unbounded. */
  uvq_overflow_t overflow;
  /* Maximum events handled per drain pass before yielding to the loop;
   * 0 means UVQ_DEFAULT_BATCH; at most UVQ_MAX_BATCH. */
  unsigned batch;
  /* Receives events the queue drops or discards. NULL means
   * uvq_event_unref(ev): then every event must be set up with
   * uvq_event_init(). */
  uvq_release_cb release;
  /* Queues that feed a sink (uvq_queue_init_sink): called on the loop
   * thread when the sink's write fails with an error other than
   * UVQ_EAGAIN, before the event is released and counted in failed. ev is
   * borrowed for the call. NULL: only the count records it. */
  void (*error)(uvq_queue_t* q, uvq_event_t* ev, int err);
} uvq_queue_options_t;

typedef struct {
  uint64_t enqueued;       /* accepted and linked into the queue */
  uint64_t delivered;      /* handed to the process callback or the sink */
  uint64_t dropped_new;    /* released by UVQ_DROP_NEW */
  uint64_t dropped_oldest; /* released by UVQ_DROP_OLDEST */
  uint64_t discarded;      /* released by a discard stop */
  uint64_t failed;         /* released after the sink's write failed */
  uint64_t depth;          /* queued now (enqueued minus removed) */
  uint64_t max_depth;      /* highest depth seen at the start of a pass */
  uint64_t wakeups;        /* uv_async_send calls that woke a sleeping loop */
  uint64_t passes;         /* drain callbacks run */
} uvq_queue_stats_t;

struct uvq_queue_s {
  void* data; /* the user's */
  /* private */
  uv_loop_t* loop_;
  uv_async_t async_;
  const void* loop_thread_;
  uvq_process_cb process_;
  uvq_sink_t* sink_;
  uvq_release_cb release_;
  uvq_queue_close_cb close_cb_;
  uint64_t capacity_;
  unsigned batch_;
  int overflow_;
  uv_mutex_t lock_;
  uv_cond_t cond_;
  /* Producers' line: state = accepted count << 2 | ASLEEP | CLOSED. */
  UVQ__ALIGNAS(UVQ__CACHELINE) UVQ__ATOMIC(uint64_t) state_;
  UVQ__ATOMIC(uvq_event_t*) tail_;
  /* Slow-path line: blocked producers, stop requests, rare counters. */
  UVQ__ALIGNAS(UVQ__CACHELINE) UVQ__ATOMIC(unsigned) inside_;
  UVQ__ATOMIC(int) stop_mode_;
  UVQ__ATOMIC(uint64_t) stop_count_;
  UVQ__ATOMIC(uint64_t) dropped_new_;
  UVQ__ATOMIC(uint64_t) wakeups_;
  /* Consumer's line. */
  UVQ__ALIGNAS(UVQ__CACHELINE) uvq_event_t* head_;
  uvq_event_t* held_;
  UVQ__ATOMIC(uint64_t) removed_;
  UVQ__ATOMIC(uint64_t) delivered_;
  UVQ__ATOMIC(uint64_t) dropped_oldest_;
  UVQ__ATOMIC(uint64_t) discarded_;
  UVQ__ATOMIC(uint64_t) failed_;
  UVQ__ATOMIC(uint64_t) max_depth_;
  UVQ__ATOMIC(uint64_t) passes_;
  UVQ__ATOMIC(int) phase_;
  int flags_;
  void (*error_)(uvq_queue_t* q, uvq_event_t* ev, int err);
  uvq_sink_t face_;       /* uvq_queue_sink(): the queue as a sink */
  int face_waiting_;      /* a face write got UVQ_EAGAIN: tell it when room */
  UVQ__ATOMIC(int) face_used_;
  uvq_event_t stub_;
};

/* Initialise q on loop with a process callback. opts may be NULL (unbounded,
 * default batch, release by uvq_event_unref). Loop thread: the calling
 * thread becomes the queue's loop thread.
 * Ownership: q is the caller's memory; it must stay valid and not move until
 * the close callback; opts is read during the call only.
 * Returns 0; UVQ_EINVAL for a NULL loop, q or process, or options out of
 * range (capacity > SIZE_MAX / 4, batch > UVQ_MAX_BATCH, unknown overflow);
 * a libuv error (UV_ENOMEM, ...) when the async handle, mutex or condition
 * variable cannot be created. On error nothing is left to clean up. */
UVQ_EXTERN int uvq_queue_init(uv_loop_t* loop, uvq_queue_t* q,
                              uvq_process_cb process,
                              const uvq_queue_options_t* opts);

/* Enqueue ev, applying the overflow policy; with UVQ_BLOCK a full queue makes
 * the caller wait until there is room or the queue stops. Any thread, except
 * that with UVQ_BLOCK on a bounded queue the loop thread gets UVQ_EDEADLK
 * (it would wait for itself). Allocates nothing.
 * Ownership: on 0 the queue owns ev until it is delivered or released; ev
 * must not be in another queue or channel. On any error the caller still
 * owns ev and nothing happened to it.
 * Returns 0; UVQ_EINVAL (NULL q or ev); UVQ_ECLOSED (stop was requested,
 * including while waiting); UVQ_EFULL (UVQ_FAIL policy); UVQ_EDEADLK. */
UVQ_EXTERN int uvq_queue_enqueue(uvq_queue_t* q, uvq_event_t* ev);
/* As uvq_queue_enqueue, but never blocks: a full UVQ_BLOCK queue gives
 * UVQ_EFULL. Any thread, including the loop thread. */
UVQ_EXTERN int uvq_queue_try_enqueue(uvq_queue_t* q, uvq_event_t* ev);
/* As uvq_queue_enqueue, but waits at most timeout_ms milliseconds for room
 * (0: do not wait; negative: UVQ_EINVAL). Returns UVQ_ETIMEDOUT when no room
 * came in time (the caller keeps ev). Any thread; UVQ_EDEADLK on the loop
 * thread of a bounded UVQ_BLOCK queue, whatever the timeout, unless it is 0. */
UVQ_EXTERN int uvq_queue_enqueue_timeout(uvq_queue_t* q, uvq_event_t* ev,
                                         int64_t timeout_ms);

/* Request a stop. Any thread, also from inside the process callback. From
 * the moment this returns, every enqueue returns UVQ_ECLOSED and producers
 * blocked on a full queue wake with UVQ_ECLOSED. The work happens on the
 * loop thread (the loop must keep running): drain mode delivers every event
 * accepted before the stop, discard mode releases them; then the async
 * handle is closed and cb (may be NULL) runs once.
 * A second call is harmless: it returns 0, may turn a drain stop into a
 * discard stop, and its cb is ignored.
 * Warning: after cb has run, the queue's memory may be gone: every thread
 * must be done calling into the queue before the user frees it (join
 * producers first, as with uv_async_send and uv_close).
 * Returns 0, or UVQ_EINVAL (NULL q, unknown mode). */
UVQ_EXTERN int uvq_queue_stop(uvq_queue_t* q, uvq_stop_mode_t mode,
                              uvq_queue_close_cb cb);

/* uv_ref / uv_unref on the queue's handle: an unreferenced queue does not
 * keep uv_run alive, even while events are pending (they are delivered when
 * the loop runs again). Loop thread. Returns 0, or UVQ_EINVAL (NULL q),
 * UVQ_ETHREAD (another thread), UVQ_ECLOSED (the close already began). */
UVQ_EXTERN int uvq_queue_ref(uvq_queue_t* q);
UVQ_EXTERN int uvq_queue_unref(uvq_queue_t* q);

/* Copy the counters into *out: each field is read atomically (the set is not
 * one snapshot while producers run). Any thread, until the close callback.
 * Returns 0, or UVQ_EINVAL (NULL q or out). */
UVQ_EXTERN int uvq_queue_stats(const uvq_queue_t* q, uvq_queue_stats_t* out);

/* -- Queue and sinks ------------------------------------------------------ */

/* Initialise q like uvq_queue_init, but deliver each event by writing it to
 * dst (go-events' Queue in front of a slow sink) on the loop thread.
 *   - 0: delivered; the queue then releases its hold on the event.
 *   - UVQ_EAGAIN: the queue keeps the event at its head, stops draining,
 *     and resumes when dst calls uvq_sink_ready(): nothing is lost or
 *     reordered, and a bounded queue pushes back on its producers.
 *   - any other error (UVQ_ECLOSED included): opts->error is told, the event
 *     is released and counted in failed. Never silently lost.
 * Stopping the queue (either mode) closes dst after the last event was
 * written or released; the queue's close callback runs after dst's close
 * completed. A drain stop waits for a stalled dst; a later discard stop
 * overrides it (and releases the held event), so a stuck sink can never
 * hold the close forever.
 * Events released by the queue go to opts->release, or uvq_event_unref()
 * when it is NULL (the usual choice with sinks: every event passing through
 * a sink must be set up with uvq_event_init()).
 * Loop thread (the queue's and dst's). q and dst are the caller's; dst must
 * stay valid until the queue's close callback; the queue becomes dst's
 * upstream (uvq_sink_set_ready_cb).
 * Returns 0; UVQ_EINVAL (NULL loop, q or dst; bad options); UVQ_ETHREAD
 * (dst belongs to another thread); UVQ_EBUSY (dst already has an upstream);
 * UVQ_ECLOSED (dst is closed); a libuv error as uvq_queue_init. */
UVQ_EXTERN int uvq_queue_init_sink(uv_loop_t* loop, uvq_queue_t* q,
                                   uvq_sink_t* dst,
                                   const uvq_queue_options_t* opts);

/* The queue seen as a sink, so that loop-thread code (a broadcaster, a
 * filter) can write into it: write enqueues, close stops the queue in drain
 * mode. Because a sink write borrows an event that may sit in several
 * queues at once (fan-out), each write allocates a small carrier (32 bytes)
 * that holds a reference to the event: this is the one enqueue path that
 * allocates. Write returns 0; UVQ_ENOMEM; UVQ_ECLOSED once the queue
 * stops; UVQ_EAGAIN when a UVQ_BLOCK queue is full (it calls
 * uvq_sink_ready() when room frees); UVQ_EFULL when a UVQ_FAIL queue is
 * full. The sink's close callback runs just before the queue's.
 * Any thread may call this getter; the sink itself is loop thread only.
 * Returns NULL for a NULL q. */
UVQ_EXTERN uvq_sink_t* uvq_queue_sink(uvq_queue_t* q);


/* @@UVQ-BROADCAST-FILTER-RETRY@@ broadcaster, filter, retrying sink. */

/* @@UVQ-CHANNEL@@ channel and channel sink. */

#ifdef __cplusplus
}
#endif
#endif /* UVQ_H */
