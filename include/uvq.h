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
  XX(EAGAIN, UV_EAGAIN, "not now: try again later")                         \
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
/* The code's name: uvq's for uvq codes ("UVQ_EFULL"; also for the codes uvq
 * shares with libuv, so UV_EINVAL gives "UVQ_EINVAL"), libuv's for other
 * libuv codes (UV_EIO gives "EIO"); "UNKNOWN" otherwise. Any thread. Never
 * NULL. */
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
   * called from inside close). NULL: the sink closes at once, and its
   * upstream (if any) is sent one ready first, so that a writer waiting
   * after UVQ_EAGAIN retries and learns UVQ_ECLOSED. */
  void (*close)(uvq_sink_t* sink);
};

struct uvq_sink_s {
  void* data; /* the user's */
  /* private */
  const uvq_sink_vtable_t* vt_;
  const void* thread_; /* identifies the sink's thread */
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
 * UVQ_EINVAL (NULL sink or ev), UVQ_ETHREAD (not the sink's thread,
 * checked before the state), UVQ_ECLOSED (close began: every write after
 * close fails, every time). */
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
/* Called on the loop thread when the queue's depth crosses a watermark
 * (uvq_queue_options_t.high_water, low_water): above is 1 when it reached
 * high_water, 0 when it then fell to low_water. It may call any uvq
 * function, including uvq_queue_stop on this queue. */
typedef void (*uvq_watermark_cb)(uvq_queue_t* q, int above);
/* Called once on the loop thread when the queue is closed: every accepted
 * event was delivered or released, no thread is blocked in the queue, and
 * its libuv handles are closed. The queue's memory may be freed from here
 * on. */
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
   * 0 means UVQ_DEFAULT_BATCH; at most UVQ_MAX_BATCH. A pass never takes
   * more than was accepted when it began: events enqueued during it (also
   * by its own callbacks) wait for the next pass, after the loop's turn. */
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
  /* Poll window in microseconds; 0 (the default) means none, at most
   * UVQ_MAX_POLL_US. After a pass that delivered something and found the
   * queue empty, the loop keeps looking for new events for this long
   * before it sleeps: an idle handle (unreferenced) makes each loop turn
   * poll without blocking, and producers, who see the loop awake, send no
   * wakeup. An event then waits for the loop's next turn (about a
   * microsecond plus the other handles' callbacks) instead of a thread
   * wakeup (20 us or more on the machine of docs/bench.md), at the price of
   * the loop thread's core for the whole window: a steady stream closer
   * than the window keeps the loop thread busy. Other handles still run
   * every turn. Leave it 0 where the loop shares one CPU with the
   * producers: polling keeps them off it (docs/queue.md). */
  unsigned poll_us;
  /* Watermarks, to pause the application's own sources while the queue is
   * deep, like a Node stream's highWaterMark and 'drain'. watermark NULL
   * (the default): none, and both counts must be 0. Otherwise
   * 1 <= high_water <= SIZE_MAX / 4, low_water < high_water, and a bounded
   * queue needs high_water <= capacity. The depth is the one
   * uvq_queue_stats reports. watermark(q, 1) runs once when the loop, at
   * the start or the end of a pass, finds it at high_water or more;
   * watermark(q, 0) runs once when it then finds it at low_water or below;
   * and so on, alternately. Both run on the loop thread, on its next turn:
   * the producer whose enqueue brings the depth to high_water wakes the
   * loop for it, also while the queue waits for its sink's ready; the loop
   * sees the depth fall as it delivers. A depth that reached high_water
   * only during a pass (as stats counts it then: with what the pass
   * delivered so far) and is below it again when the pass ends is not
   * reported. Neither starts once the loop has seen a stop request (one
   * made on another thread may cross a callback under way). */
  size_t high_water;
  size_t low_water;
  uvq_watermark_cb watermark;
} uvq_queue_options_t;

#define UVQ_MAX_POLL_US 1000000u

typedef struct {
  uint64_t enqueued;       /* accepted and linked into the queue */
  uint64_t delivered;      /* handed to the process callback or the sink */
  uint64_t dropped_new;    /* released by UVQ_DROP_NEW */
  uint64_t dropped_oldest; /* released by UVQ_DROP_OLDEST */
  uint64_t discarded;      /* released by a discard stop */
  uint64_t failed;         /* released after the sink's write failed */
  uint64_t depth;          /* queued now (enqueued minus removed; never
                            * above a bounded queue's capacity) */
  uint64_t max_depth;      /* highest depth seen at the start of a pass */
  uint64_t wakeups;        /* wakeups sent to the sleeping loop */
  uint64_t passes;         /* drain callbacks run */
  uint64_t yields;         /* unbounded: a producer gave its CPU away, the
                            * loop being > 4,096 events behind */
  uint64_t sleeps;         /* bounded UVQ_BLOCK: a producer slept on the
                            * condition variable, waiting for room */
} uvq_queue_stats_t;

struct uvq_queue_s {
  void* data; /* the user's */
  /* private */
  uv_loop_t* loop_;
  uv_async_t async_;
  uv_idle_t idle_; /* poll_us != 0 only */
  const void* loop_thread_;
  uvq_process_cb process_;
  uvq_sink_t* sink_;
  uvq_release_cb release_;
  uvq_queue_close_cb close_cb_;
  uvq_sink_close_cb dst_close_cb_; /* the user's, when they closed sink_ */
  uint64_t capacity_;
  unsigned batch_;
  int overflow_;
  uv_mutex_t lock_;
  uv_cond_t cond_;
  /* Producers' line: state = accepted count << 3 | INITED | ASLEEP | CLOSED. */
  UVQ__ALIGNAS(UVQ__CACHELINE) UVQ__ATOMIC(uint64_t) state_;
  UVQ__ATOMIC(uvq_event_t*) tail_;
  UVQ__ATOMIC(uint64_t) room_hint_; /* bounded: a past value of removed_ */
  UVQ__ATOMIC(uint64_t) look_at_;   /* a state word from which producers
                                     * look at the depth (uvq__look) */
  /* Slow-path line: blocked producers, stop requests, rare counters. */
  UVQ__ALIGNAS(UVQ__CACHELINE) UVQ__ATOMIC(unsigned) inside_;
  UVQ__ATOMIC(unsigned) spinning_; /* producers spinning for room */
  UVQ__ATOMIC(int) waker_cpu_;     /* the CPU of the last ASLEEP wakeup */
  UVQ__ATOMIC(int) stop_mode_;
  UVQ__ATOMIC(uint64_t) stop_count_;
  UVQ__ATOMIC(uint64_t) dropped_new_;
  UVQ__ATOMIC(uint64_t) wakeups_;
  UVQ__ATOMIC(uint64_t) yields_;
  UVQ__ATOMIC(uint64_t) sleeps_;
  UVQ__ATOMIC(uint64_t) spin_ns_; /* bounded: how long a full producer spins */
  UVQ__ATOMIC(uint64_t) high_at_; /* the state word that reaches high_water */
  /* Consumer's line. */
  UVQ__ALIGNAS(UVQ__CACHELINE) uvq_event_t* head_;
  uvq_event_t* held_;
  int held_waits_; /* held_ waits for the sink's ready */
  UVQ__ATOMIC(uint64_t) removed_;
  UVQ__ATOMIC(uint64_t) delivered_;
  UVQ__ATOMIC(uint64_t) dropped_oldest_;
  UVQ__ATOMIC(uint64_t) discarded_;
  UVQ__ATOMIC(uint64_t) failed_;
  UVQ__ATOMIC(uint64_t) max_depth_;
  UVQ__ATOMIC(uint64_t) passes_;
  UVQ__ATOMIC(int) phase_;
  int flags_;
  unsigned small_passes_; /* passes in a row that took a few events (where
                           * the waker's CPU is unknown) */
  unsigned publish_mask_; /* bounded: publish removed_ every mask+1 events */
  int open_handles_;   /* closing: handles whose close callback is due */
  uint64_t poll_ns_;   /* poll window (0: none, idle_ unused) */
  uint64_t poll_end_;  /* uv_hrtime() at which the loop stops polling */
  void (*error_)(uvq_queue_t* q, uvq_event_t* ev, int err);
  uvq_watermark_cb watermark_;
  uint64_t high_water_;
  uint64_t low_water_;
  int above_;             /* watermark(q, 1) ran last */
  uvq_sink_t face_;       /* uvq_queue_sink(): the queue as a sink */
  int face_waiting_;      /* a face write got UVQ_EAGAIN: tell it when room */
  uvq_event_t stub_;
};

/* Initialise q on loop with a process callback. opts may be NULL (unbounded,
 * default batch, release by uvq_event_unref). Loop thread: the calling
 * thread becomes the queue's loop thread.
 * Ownership: q is the caller's memory; it must stay valid and not move until
 * the close callback; opts is read during the call only. q must be aligned
 * as its type (_Alignof(uvq_queue_t), 64: its hot fields sit on cache lines
 * of their own): a static or automatic variable is; heap memory, also a
 * struct that embeds a queue, needs aligned_alloc (malloc gives 16).
 * Returns 0; UVQ_EINVAL for a NULL loop, q or process, a misaligned q, or
 * options out of range (capacity > SIZE_MAX / 4, batch > UVQ_MAX_BATCH,
 * unknown overflow, poll_us > UVQ_MAX_POLL_US, watermarks as described at
 * high_water);
 * a libuv error (UV_ENOMEM, ...) when the async handle, mutex or condition
 * variable cannot be created. On error nothing is left to clean up. */
UVQ_EXTERN int uvq_queue_init(uv_loop_t* loop, uvq_queue_t* q,
                              uvq_process_cb process,
                              const uvq_queue_options_t* opts);

/* Enqueue ev, applying the overflow policy; with UVQ_BLOCK a full queue makes
 * the caller wait until there is room or the queue stops. Any thread, except
 * that with UVQ_BLOCK on a bounded queue the loop thread gets UVQ_EDEADLK
 * (it would wait for itself). Allocates nothing. On an unbounded queue it
 * never waits, but a producer thread that finds the loop more than 4,096
 * events behind gives its CPU away (sched_yield, at most once per 1,024
 * tickets; the
 * yields counter counts it) so that a loop sharing cores with producers can
 * catch up.
 * Ownership: on 0 the queue owns ev until it is delivered or released; ev
 * must not be in another queue or channel. On any error the caller still
 * owns ev and nothing happened to it.
 * Returns 0; UVQ_EINVAL (NULL q or ev, or q never initialised: a
 * zero-filled queue is detected, other garbage cannot be); UVQ_ECLOSED (stop
 * was requested, including while waiting); UVQ_EFULL (UVQ_FAIL policy);
 * UVQ_EDEADLK. */
UVQ_EXTERN int uvq_queue_enqueue(uvq_queue_t* q, uvq_event_t* ev);
/* As uvq_queue_enqueue, but never blocks: a full UVQ_BLOCK queue gives
 * UVQ_EFULL. Any thread, including the loop thread. */
UVQ_EXTERN int uvq_queue_try_enqueue(uvq_queue_t* q, uvq_event_t* ev);
/* As uvq_queue_enqueue, but waits at most timeout_ms milliseconds for room
 * (negative: UVQ_EINVAL). Returns UVQ_ETIMEDOUT when no room came in time
 * (the caller keeps ev). 0 behaves exactly as uvq_queue_try_enqueue: a full
 * UVQ_BLOCK queue gives UVQ_EFULL. Any thread; UVQ_EDEADLK on the loop
 * thread of a bounded UVQ_BLOCK queue, whatever the timeout, unless it is 0. */
UVQ_EXTERN int uvq_queue_enqueue_timeout(uvq_queue_t* q, uvq_event_t* ev,
                                         int64_t timeout_ms);

/* Request a stop. Any thread, also from inside the process callback. From
 * the moment this returns, every enqueue returns UVQ_ECLOSED (but the
 * loop thread's blocking ones on a bounded UVQ_BLOCK queue: UVQ_EDEADLK in
 * every state) and producers blocked on a full queue wake with UVQ_ECLOSED.
 * The work happens on the loop thread (the loop must keep running): drain
 * mode delivers every event accepted before the stop, discard mode
 * releases them; then the queue's handles are closed and cb (may be NULL)
 * runs once.
 * A second call is harmless: it returns 0, may turn a drain stop into a
 * discard stop, and its cb is ignored. A stop references the queue again
 * (uv_ref) so that an unreferenced queue still reaches its close callback:
 * at once when called on the loop thread, otherwise at the next drain pass.
 * Warning: after cb has run, the queue's memory may be gone: every thread
 * must be done calling into the queue before the user frees it (join
 * producers first, as with uv_async_send and uv_close).
 * Returns 0, or UVQ_EINVAL (NULL q, unknown mode, q never initialised). */
UVQ_EXTERN int uvq_queue_stop(uvq_queue_t* q, uvq_stop_mode_t mode,
                              uvq_queue_close_cb cb);

/* uv_ref / uv_unref on the queue's handle: an unreferenced queue does not
 * keep uv_run alive, even while events are pending (they are delivered when
 * the loop runs again). Loop thread. Returns 0, or UVQ_EINVAL (NULL or
 * never initialised q), UVQ_ETHREAD (another thread), UVQ_ECLOSED (the
 * queue was stopped: from uvq_queue_stop on, the stop's own reference
 * keeps the loop alive until the close callback, and neither changes it). */
UVQ_EXTERN int uvq_queue_ref(uvq_queue_t* q);
UVQ_EXTERN int uvq_queue_unref(uvq_queue_t* q);

/* Copy the counters into *out: each field is read atomically (the set is not
 * one snapshot while producers run; for the instant between a foreign
 * thread's stop request and its publish of the final count, enqueued and
 * depth of an unbounded queue may include enqueues being refused). Any
 * thread, while q's memory is valid: also in and after the close callback
 * (the final counts), until the user frees or re-initialises it.
 * Returns 0, or UVQ_EINVAL (NULL q or out, q never initialised). */
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
 * completed (also when the user closed dst first: their close callback
 * runs, then the queue's). A drain stop waits for a stalled dst; a later
 * discard stop overrides it (and releases the held event), so a stuck sink
 * can never hold the close forever.
 * Events released by the queue go to opts->release, or uvq_event_unref()
 * when it is NULL (the usual choice with sinks: every event passing through
 * a sink must be set up with uvq_event_init()).
 * Loop thread (the queue's and dst's). If the loop later runs on another
 * thread, every write fails with UVQ_ETHREAD (counted in failed, told to
 * opts->error, the event released) and the stop closes the queue but leaves
 * dst open for its own thread to close. q and dst are the caller's; dst must
 * stay valid until the queue's close callback; the queue becomes dst's
 * upstream (uvq_sink_set_ready_cb).
 * Returns 0; UVQ_EINVAL (NULL loop, q or dst; misaligned q, as in
 * uvq_queue_init; bad options); UVQ_ETHREAD
 * (dst belongs to another thread); UVQ_EBUSY (dst already has an upstream);
 * UVQ_ECLOSED (dst is closing or closed); a libuv error as uvq_queue_init. */
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
 * uvq_sink_ready() at the end of the next pass that takes events off, or
 * from the sink's close, whichever comes first); UVQ_EFULL when a
 * UVQ_FAIL queue is full. Closing the sink is the queue's stop (drain
 * mode, no queue close callback; a later uvq_queue_stop's callback is
 * ignored, as for any second stop), and the sink's close callback runs
 * just before the queue's would; once the queue has closed, closing the
 * sink completes at once (while q's memory is still there).
 * Delivery: a queue feeding a sink writes the original event; a queue with
 * a process callback passes it the original event together with one
 * reference, which the callback owns and drops with uvq_event_unref().
 * Any thread may call this getter; the sink itself is loop thread only.
 * Returns NULL for a NULL or never initialised q. */
UVQ_EXTERN uvq_sink_t* uvq_queue_sink(uvq_queue_t* q);


/* ------------------------------------------------------------------------ */
/* Broadcaster, filter, retrying sink (loop thread only)                    */
/* ------------------------------------------------------------------------ */

/* Each of these IS a sink: its public `sink` member is what you write to,
 * close, attach an upstream to (uvq_sink_set_ready_cb) or add to another
 * broadcaster. Its close callback receives &x->sink; *_init sets
 * x->sink.data to x so the callback can find its object (overwrite it if you
 * prefer). The thread contract of the Sinks section applies: every function
 * and callback here is "loop thread".
 *
 * Downstream sinks: a broadcaster, filter or retrying sink becomes the one
 * upstream of each sink it writes to (it calls uvq_sink_set_ready_cb on it),
 * so a sink that already has another upstream is refused with UVQ_EBUSY.
 * Closing one of these closes its downstream sinks, with close callbacks of
 * its own: its close callback runs once every downstream close completed,
 * and from then on the downstream sinks may be freed too. A downstream sink
 * that was already closing or closed when that close began is not waited
 * for (whoever closed it is told by its own close callback). If the object
 * had answered UVQ_EAGAIN to its upstream and not yet signalled ready, its
 * close calls uvq_sink_ready() on it once, so the upstream offers its event
 * again and learns UVQ_ECLOSED instead of waiting forever.
 *
 * Re-entrancy: a downstream sink's write may call add, remove or close on
 * the object writing to it; those are handled safely (see each one). A write
 * into a broadcaster or retrying sink from inside its own downstream write
 * returns UVQ_EBUSY (taking it would reorder events; a filter just passes
 * it on): do not feed a pipeline from its own tail. */

/* -- Broadcaster ---------------------------------------------------------- */

typedef struct uvq_broadcast_s uvq_broadcast_t;

typedef struct {
  uint64_t written;    /* events the broadcaster took (its write returned 0) */
  uint64_t deliveries; /* sink writes that returned 0 */
  uint64_t failures;   /* sink writes that failed with another error: that
                          sink missed that event; the others did not */
  uint64_t removed;    /* sinks removed automatically after UVQ_ECLOSED */
  uint64_t abandoned;  /* (sink, event) pairs lost because the sink was
                          removed, or the broadcaster closed, while the
                          event was still on its way to it (not yet
                          written, or waiting after UVQ_EAGAIN) */
  uint64_t sinks;      /* sinks attached now (a gauge, not a counter) */
} uvq_broadcast_stats_t;

/* Fan-out: writes each event to every sink, in the order they were added,
 * sharing the one event (never copied).
 *
 * Ownership: the broadcaster borrows the event like any sink. When every
 * sink took it at once, the broadcaster holds no reference after its write
 * returns. When a sink returns UVQ_EAGAIN, the broadcaster takes one
 * reference (uvq_event_ref), still returns 0 (the event is taken: the other
 * sinks already have it, so the writer must not offer it again), and
 * becomes busy: its writes return UVQ_EAGAIN until every waiting sink
 * signalled ready and took the event (or was removed). Then it drops its
 * reference and calls uvq_sink_ready(&b->sink), so an upstream such as a
 * queue resumes. No sink ever gets an event twice, and each sink sees the
 * events in the order the broadcaster took them.
 *
 * Errors from a sink: UVQ_ECLOSED removes that sink (counted in removed);
 * any other error only means that sink missed that event (counted in
 * failures); the broadcaster's write still returns 0.
 *
 * Changes during a fan-out (a sink's write calling add or remove): a sink
 * removed is never written to again, not even for the event in progress; a
 * sink added gets the events written after the one in progress; every other
 * sink gets the event in progress exactly once, in order (no skip, no
 * duplicate). Closing the broadcaster from inside a sink's write ends the
 * fan-out after that write returns (the sinks not yet written to never get
 * that event: counted in abandoned), then closes every sink.
 *
 * Close (uvq_sink_close(&b->sink, cb)) closes every sink and runs cb when
 * the last of those closes completed: before uvq_sink_close returns when
 * they all close at once, and, when requested from inside a sink's write,
 * possibly before the outer uvq_sink_write(&b->sink) returns. A fan-out
 * still waiting after UVQ_EAGAIN ends there (abandoned, reference dropped):
 * "taken" is not "delivered", so let the broadcaster go idle (its ready
 * callback) before closing it if every sink must get every event.
 *
 * Warning: the broadcaster keeps a pointer to each sink until the sink is
 * removed (explicitly, or after it returned UVQ_ECLOSED) or the broadcaster's
 * close completed: remove a sink before you free it. */
struct uvq_broadcast_s {
  void* data; /* the user's */
  uvq_sink_t sink; /* the broadcaster as a sink: write and close this */
  /* private */
  struct uvq__bentry_s* entries_;
  size_t count_; /* slots used, removed ones included until compacted */
  size_t cap_;
  size_t holes_; /* slots removed during a fan-out, compacted after it */
  uvq_event_t* ev_; /* the event being fanned out, NULL when idle */
  unsigned closes_left_;
  unsigned flags_;
  uvq_broadcast_stats_t stats_;
};

/* Initialise an empty broadcaster. Loop thread: the calling thread becomes
 * its thread. b is the caller's memory; it must not move, and may be freed
 * only in or after the close callback of uvq_sink_close(&b->sink, cb), which
 * is also the only thing that frees the sink list.
 * Returns 0, or UVQ_EINVAL (NULL b). Allocates nothing. */
UVQ_EXTERN int uvq_broadcast_init(uvq_broadcast_t* b);

/* Append sink to the broadcaster, which becomes its upstream. Adding a sink
 * that is already there does nothing and returns 0 (idempotent, like
 * go-events). Takes effect from the next event the broadcaster takes (a
 * fan-out in progress or waiting on UVQ_EAGAIN does not reach it). Loop
 * thread. May allocate: the list grows with realloc.
 * Ownership: sink stays the caller's; the broadcaster keeps a pointer to it
 * until it is removed or the broadcaster closed (see the warning above).
 * Returns 0; UVQ_EINVAL (NULL b or sink, or sink is &b->sink); UVQ_ETHREAD
 * (not the loop thread of b or of sink); UVQ_ECLOSED (b is closing or
 * closed, or sink is); UVQ_EBUSY (sink has another upstream); UVQ_ENOMEM
 * (nothing changed). */
UVQ_EXTERN int uvq_broadcast_add(uvq_broadcast_t* b, uvq_sink_t* sink);

/* Remove sink: the broadcaster never touches it again once this returns, and
 * detaches itself as its upstream. The sink is not closed. If the sink was
 * the last one the event in progress waited for, that fan-out completes
 * here: the broadcaster drops its reference and calls
 * uvq_sink_ready(&b->sink) before this returns. Loop thread. Allocates
 * nothing.
 * Returns 0; UVQ_EINVAL (NULL b or sink); UVQ_ETHREAD; UVQ_ECLOSED (b is
 * closing or closed: its close takes care of every sink); UVQ_ENOENT (sink
 * is not in b). */
UVQ_EXTERN int uvq_broadcast_remove(uvq_broadcast_t* b, uvq_sink_t* sink);

/* Copy the counters into *out. Loop thread; valid until b is freed, also
 * after close. Returns 0, or UVQ_EINVAL (NULL b or out), UVQ_ETHREAD. */
UVQ_EXTERN int uvq_broadcast_stats(const uvq_broadcast_t* b,
                                   uvq_broadcast_stats_t* out);

/* -- Filter --------------------------------------------------------------- */

typedef struct uvq_filter_s uvq_filter_t;

/* Return nonzero to pass ev on to the destination, 0 to drop it. Runs on the
 * loop thread, inside the filter's write; ev is borrowed for the call. It
 * must not close the filter. */
typedef int (*uvq_match_cb)(const uvq_event_t* ev, void* arg);

typedef struct {
  uint64_t matched;   /* writes passed on to dst (whatever dst returned:
                       * an event offered again after dst's UVQ_EAGAIN
                       * counts again) */
  uint64_t unmatched; /* events the matcher refused: taken and not passed */
} uvq_filter_stats_t;

/* Passes the events its matcher accepts on to dst and returns dst's result
 * (0, UVQ_EAGAIN, UVQ_ECLOSED or another error), so flow control is exact:
 * dst's readiness is forwarded with uvq_sink_ready(&f->sink). Events the
 * matcher refuses are taken: write returns 0 and counts them; the filter
 * never holds a reference (the writer releases its own as usual). Close
 * closes dst; the filter's close completes when dst's does. If dst's write
 * closes the filter and then answers UVQ_EAGAIN, the filter returns
 * UVQ_ECLOSED instead (no ready would ever follow). */
struct uvq_filter_s {
  void* data; /* the user's */
  uvq_sink_t sink; /* the filter as a sink */
  /* private */
  uvq_sink_t* dst_;
  uvq_match_cb match_;
  void* arg_;
  int* guard_; /* set while dst's write runs */
  unsigned flags_;
  uvq_filter_stats_t stats_;
};

/* Initialise f in front of dst; f becomes dst's upstream. Loop thread: the
 * calling thread becomes f's thread. f is the caller's memory (must not
 * move; free it in or after its close callback); dst stays the caller's
 * and must stay valid until f's close completed; arg is passed to match
 * untouched. Allocates nothing.
 * Returns 0; UVQ_EINVAL (NULL f, dst or match, or dst is &f->sink);
 * UVQ_ETHREAD (dst lives on another thread); UVQ_ECLOSED (dst is closing or
 * closed); UVQ_EBUSY (dst has another upstream). On error f is untouched
 * and dst unchanged. */
UVQ_EXTERN int uvq_filter_init(uvq_filter_t* f, uvq_sink_t* dst,
                               uvq_match_cb match, void* arg);

/* Copy the counters into *out. Loop thread; valid until f is freed.
 * Returns 0, or UVQ_EINVAL (NULL f or out), UVQ_ETHREAD. */
UVQ_EXTERN int uvq_filter_stats(const uvq_filter_t* f,
                                uvq_filter_stats_t* out);

/* -- Retrying sink -------------------------------------------------------- */

typedef struct uvq_retry_s uvq_retry_t;
typedef struct uvq_retry_strategy_s uvq_retry_strategy_t;

/* A retry strategy: three functions and their state, copied by
 * uvq_retry_init (state is not: it must outlive the retrying sink). Each
 * function runs on the loop thread, inside the retrying sink, and must not
 * call into that sink. Any of them may be NULL: no proceed means never wait,
 * no failure means always retry, no success means nothing to do.
 * Because everything runs on one thread, several retrying sinks on the same
 * loop may share one strategy state (they then share its failure count). */
struct uvq_retry_strategy_s {
  /* How long to wait, in milliseconds, before the next attempt to write ev:
   * called before the first attempt and after each failure that is retried.
   * 0 means at once (the first attempt) or after 1 ms, on a later loop
   * iteration (a retry: a strategy that always says 0 cannot starve the
   * loop). */
  uint64_t (*proceed)(void* state, const uvq_event_t* ev);
  /* The wrapped sink's write failed with err (neither UVQ_EAGAIN nor
   * UVQ_ECLOSED). Return nonzero to drop ev, 0 to retry it. */
  int (*failure)(void* state, const uvq_event_t* ev, int err);
  /* The wrapped sink took ev. */
  void (*success)(void* state, const uvq_event_t* ev);
  void* state;
};

/* Breaker (go-events' Breaker): after `threshold` consecutive failures, wait
 * until `backoff_ms` passed since the last failure; a success resets it; it
 * never drops. The clock is uv_hrtime(). */
typedef struct {
  uvq_retry_strategy_t strategy; /* pass &br->strategy to uvq_retry_init */
  /* private */
  unsigned threshold_;
  unsigned recent_;
  uint64_t backoff_ms_;
  uint64_t last_ns_;
} uvq_breaker_t;

/* go-events' defaults for uvq_backoff_init (0 selects them). */
#define UVQ_BACKOFF_DEFAULT_FACTOR_MS 1000u
#define UVQ_BACKOFF_DEFAULT_MAX_MS 20000u

/* Exponential backoff with jitter (go-events' ExponentialBackoff): after n
 * consecutive failures, wait a random time in [0, min(base + factor *
 * 2^(n-1), max)) milliseconds; no failure, no wait; a success resets n; it
 * never drops. The random numbers come from a small PRNG inside the struct
 * (splitmix64), seeded by uvq_backoff_init: no global state, and a fixed
 * seed gives a reproducible sequence of waits. */
typedef struct {
  uvq_retry_strategy_t strategy; /* pass &bo->strategy to uvq_retry_init */
  /* private */
  uint64_t base_ms_;
  uint64_t factor_ms_;
  uint64_t max_ms_;
  uint64_t failures_;
  uint64_t rng_;
} uvq_backoff_t;

typedef struct {
  uint64_t written;   /* events the retrying sink took (write returned 0) */
  uint64_t delivered; /* events the wrapped sink took */
  uint64_t attempts;  /* writes to the wrapped sink */
  uint64_t failures;  /* attempts that failed (not EAGAIN or ECLOSED) */
  uint64_t retries;   /* failures the strategy chose to retry */
  uint64_t dropped;   /* taken events released undelivered: by the strategy,
                         by close during a backoff, or because the wrapped
                         sink closed while an event waited */
} uvq_retry_stats_t;

/* Wraps dst and retries failed writes on a uv_timer_t, never blocking the
 * loop. write(ev):
 *   - dst is closing or closed (its owner closed it), or answered
 *     UVQ_ECLOSED before (final, as for every sink): UVQ_ECLOSED (not
 *     taken; proceed is not asked), also while an earlier event is pending.
 *   - proceed says 0 and dst takes ev: 0.
 *   - dst returns UVQ_EAGAIN or UVQ_ECLOSED: that is returned (not taken);
 *     after UVQ_EAGAIN, dst's readiness is forwarded with
 *     uvq_sink_ready(&r->sink) (a closed dst has none to forward).
 *   - dst fails and failure() says drop: 0 (taken and dropped, counted).
 *   - proceed says wait, or dst fails and failure() says retry: the sink
 *     takes a reference to ev and returns 0, then is busy: its writes return
 *     UVQ_EAGAIN while it retries on its timer (dst's own UVQ_EAGAIN during
 *     a retry waits for dst's ready). When ev is finally delivered or
 *     dropped it drops its reference and calls uvq_sink_ready(&r->sink).
 * So an upstream queue pauses while a backoff runs, and events keep their
 * order. A wait never ends before the milliseconds proceed asked for,
 * counted with uv_hrtime() from when it asked (the sink refreshes the
 * loop's cached clock, uv_update_time, when it arms its timer). Close
 * during a backoff stops the timer, releases the pending event
 * (counted in dropped), closes dst (go-events forgets to) and closes the
 * timer; the close callback runs after both closes completed, on a later
 * loop iteration. Later writes return UVQ_ECLOSED.
 * Warning: the retrying sink's timer is a libuv handle: close the sink
 * before uv_loop_close(), and keep the loop running until its close
 * callback has run. */
struct uvq_retry_s {
  void* data; /* the user's */
  uvq_sink_t sink; /* the retrying sink as a sink */
  /* private */
  uv_timer_t timer_;
  uvq_sink_t* dst_;
  uvq_retry_strategy_t strategy_;
  uvq_event_t* pending_;
  uint64_t due_ns_; /* uv_hrtime() at which the current wait ends */
  unsigned closes_left_;
  unsigned flags_;
  uvq_retry_stats_t stats_;
};

/* Initialise r in front of dst with a copy of *strategy; r becomes dst's
 * upstream and owns a uv_timer_t on loop. Loop thread: the calling thread
 * becomes r's thread and must be loop's thread. r is the caller's memory
 * (must not move; free it in or after its close callback); dst stays the
 * caller's and must stay valid until r's close completed; strategy is read
 * during the call, strategy->state must outlive r. Allocates nothing.
 * Returns 0; UVQ_EINVAL (NULL loop, r, dst or strategy, or dst is
 * &r->sink); UVQ_ETHREAD (dst lives on another thread); UVQ_ECLOSED (dst is
 * closing or closed); UVQ_EBUSY (dst has another upstream); a libuv error
 * if the timer cannot be initialised. On error nothing is left to clean
 * up. */
UVQ_EXTERN int uvq_retry_init(uv_loop_t* loop, uvq_retry_t* r,
                              uvq_sink_t* dst,
                              const uvq_retry_strategy_t* strategy);

/* Copy the counters into *out. Loop thread; valid until r is freed.
 * Returns 0, or UVQ_EINVAL (NULL r or out), UVQ_ETHREAD. */
UVQ_EXTERN int uvq_retry_stats(const uvq_retry_t* r, uvq_retry_stats_t* out);

/* Set up a breaker and its br->strategy. Any thread, before use (the
 * strategy then runs on the retrying sink's loop thread).
 * Returns 0, or UVQ_EINVAL (NULL br). threshold 0 means: wait after any
 * failure. */
UVQ_EXTERN int uvq_breaker_init(uvq_breaker_t* br, unsigned threshold,
                                uint64_t backoff_ms);

/* Set up an exponential backoff and its bo->strategy. factor_ms 0 and
 * max_ms 0 select go-events' defaults (UVQ_BACKOFF_DEFAULT_*); base_ms is
 * taken as given. seed 0 seeds the PRNG from uv_hrtime() and bo's address
 * (different per sink and run); any other value gives a reproducible
 * sequence. Any thread, before use.
 * Returns 0, or UVQ_EINVAL (NULL bo). */
UVQ_EXTERN int uvq_backoff_init(uvq_backoff_t* bo, uint64_t base_ms,
                                uint64_t factor_ms, uint64_t max_ms,
                                uint64_t seed);

/* ------------------------------------------------------------------------ */
/* Channel: any thread sends, any thread receives                           */
/* ------------------------------------------------------------------------ */

/* A bounded buffer of events between threads, like a Go buffered channel,
 * and the bridge from the loop to worker threads (the loop writes through a
 * channel sink, below, and never blocks).
 *
 * Thread contract of this section, once:
 *   - send and receive (every variant) and uvq_channel_close: any thread, any
 *     number of threads at once (many senders, many receivers).
 *   - The blocking variants (uvq_channel_send, uvq_channel_recv, and the
 *     _timeout ones with a timeout > 0) must not be called on a loop thread:
 *     the loop never blocks. A channel belongs to no loop, so it cannot catch
 *     every such call; when a channel sink is attached, blocking calls made on
 *     that sink's loop thread return UVQ_EDEADLK (whether or not they would
 *     have had to wait). On a loop thread use the try variants or the sink.
 *   - uvq_channel_init and uvq_channel_destroy: one thread, while no other
 *     thread can call into the channel.
 *   - The channel sink: its loop thread (see "Sinks").
 * Order: events are received in the order their sends took effect. With one
 * receiver, each sender's events arrive in that sender's order; with several,
 * each receiver still sees each sender's events in that sender's order.
 *
 * Ownership: the channel never reads or writes an event: not its payload,
 * not its link, not its reference count. It stores the pointer in a ring
 * allocated by uvq_channel_init. A successful send hands the sender's
 * ownership to the channel, and a successful receive hands it to the
 * receiver; on any error the caller keeps what it had. Because the link is
 * not used, one reference-counted event may sit in several channels at once
 * (a broadcaster feeding several channel sinks), each holding a reference.
 *
 * Close: after uvq_channel_close returns, every send fails with UVQ_ECLOSED,
 * every time, even when the buffer has room (closed always wins), and
 * senders blocked on a full channel wake with UVQ_ECLOSED. Receivers first
 * get every event sent before the close, then UVQ_ECLOSED.
 *
 * Lifetime: init, use from any threads, close (optional), join every thread
 * that used the channel, take out what is left (uvq_channel_try_recv until
 * UVQ_ECLOSED or UVQ_EAGAIN), destroy. A destroyed channel, or one whose
 * memory was zeroed and never initialised, is "not initialised": every call
 * on it returns UVQ_EINVAL. */

typedef struct uvq_channel_s uvq_channel_t;
typedef struct uvq_channel_sink_s uvq_channel_sink_t;

/* The largest capacity uvq_channel_init accepts (each slot takes 16 bytes). */
#define UVQ_CHANNEL_MAX_CAPACITY (SIZE_MAX / 16)

struct uvq_channel_s {
  void* data; /* the user's */
  /* private */
  void* slots_;
  uint64_t capacity_;
  uint64_t mask_;
  int pow2_;
  UVQ__ATOMIC(int) has_sink_;
  UVQ__ATOMIC(uv_thread_t) sink_thread_;
  uvq_channel_sink_t* sink_;
  uv_mutex_t lock_;
  uv_cond_t send_cond_;
  uv_cond_t recv_cond_;
  /* Read by both sides after every operation, written only on slow paths. */
  UVQ__ALIGNAS(UVQ__CACHELINE) UVQ__ATOMIC(uint64_t) send_waiters_;
  UVQ__ATOMIC(uint64_t) recv_waiters_;
  /* Senders' line: position << 1 | closed. */
  UVQ__ALIGNAS(UVQ__CACHELINE) UVQ__ATOMIC(uint64_t) tail_;
  /* Receivers' line. */
  UVQ__ALIGNAS(UVQ__CACHELINE) UVQ__ATOMIC(uint64_t) head_;
};

/* Initialise ch with room for capacity events. Allocates the ring with
 * malloc (16 bytes per slot), and a mutex and two condition variables for
 * the slow paths; nothing else ever allocates. One thread, before any other
 * uses ch. ch is the caller's memory; it must not move until
 * uvq_channel_destroy, and must be aligned as its type (64, as a queue:
 * see uvq_queue_init). Its data field is left alone.
 * Returns 0; UVQ_EINVAL (NULL or misaligned ch, capacity 0 or above
 * UVQ_CHANNEL_MAX_CAPACITY); UVQ_ENOMEM (the ring could not be allocated);
 * a libuv error when the mutex or a condition variable cannot be created.
 * On error nothing is left allocated and ch must not be used. */
UVQ_EXTERN int uvq_channel_init(uvq_channel_t* ch, size_t capacity);

/* Close the channel. Any thread, any number of times (later calls return 0
 * and do nothing). From the moment it returns, every send returns
 * UVQ_ECLOSED and blocked senders wake with it; receivers drain what is left
 * and then get UVQ_ECLOSED; an attached channel sink's writes return
 * UVQ_ECLOSED (and a sink that said UVQ_EAGAIN is told it is ready, so its
 * upstream retries and learns it). Events still inside stay there, owned by
 * the channel, until received.
 * Returns 0, or UVQ_EINVAL (NULL ch, not initialised or destroyed). */
UVQ_EXTERN int uvq_channel_close(uvq_channel_t* ch);

/* Free what uvq_channel_init allocated. ch may be closed or not. One thread:
 * every thread must have returned from every call on ch (join them), and an
 * attached channel sink must have begun its close. Events still inside and
 * threads asleep in a blocking call are detected and refused; a thread in
 * the middle of any other call cannot be (that includes a blocking call in
 * its first moments, while it spins and yields before it sleeps), so
 * joining is the caller's duty.
 * After 0, ch's memory is the caller's again; calls on it (if the memory is
 * still there) return UVQ_EINVAL.
 * Returns 0; UVQ_EINVAL (NULL ch, not initialised or already destroyed);
 * UVQ_EBUSY (events remain: receive them first; or a thread sleeps in ch;
 * or a channel sink is attached): nothing changed. */
UVQ_EXTERN int uvq_channel_destroy(uvq_channel_t* ch);

/* Send ev, waiting while the channel is full. Any thread except a loop
 * thread (see the contract above). Allocates nothing.
 * Ownership: on 0 the channel owns ev until a receiver takes it; on any
 * error the caller still owns ev and nothing happened to it.
 * Returns 0; UVQ_EINVAL (NULL ch or ev, ch not initialised or destroyed);
 * UVQ_ECLOSED (closed before the call or while waiting); UVQ_EDEADLK (on
 * the loop thread of the attached channel sink). */
UVQ_EXTERN int uvq_channel_send(uvq_channel_t* ch, uvq_event_t* ev);
/* As uvq_channel_send, but never waits: UVQ_EFULL when there is no room.
 * Any thread, including loop threads. */
UVQ_EXTERN int uvq_channel_try_send(uvq_channel_t* ch, uvq_event_t* ev);
/* As uvq_channel_send, but waits at most timeout_ms milliseconds for room:
 * UVQ_ETIMEDOUT when none came in time (the caller keeps ev). A timeout of
 * 0 is uvq_channel_try_send (UVQ_EFULL, any thread); a negative one is
 * UVQ_EINVAL. UVQ_EDEADLK as uvq_channel_send when timeout_ms > 0. */
UVQ_EXTERN int uvq_channel_send_timeout(uvq_channel_t* ch, uvq_event_t* ev,
                                        int64_t timeout_ms);

/* Receive the oldest event into *out, waiting while the channel is empty.
 * Any thread except a loop thread (see the contract above).
 * Ownership: on 0 the caller owns *out (what the sender gave up: with a
 * channel sink, one reference that the receiver must drop with
 * uvq_event_unref). On any error *out is set to NULL (when out is not NULL).
 * Returns 0; UVQ_EINVAL (NULL ch or out, ch not initialised or destroyed);
 * UVQ_ECLOSED (closed and every event received: final); UVQ_EDEADLK (on
 * the loop thread of the attached channel sink). */
UVQ_EXTERN int uvq_channel_recv(uvq_channel_t* ch, uvq_event_t** out);
/* As uvq_channel_recv, but never waits: UVQ_EAGAIN when no event can be
 * taken now (empty, or the next send is still in progress). Any thread,
 * including loop threads. */
UVQ_EXTERN int uvq_channel_try_recv(uvq_channel_t* ch, uvq_event_t** out);
/* As uvq_channel_recv, but waits at most timeout_ms milliseconds:
 * UVQ_ETIMEDOUT when nothing came in time. A timeout of 0 is
 * uvq_channel_try_recv (UVQ_EAGAIN, any thread); a negative one is
 * UVQ_EINVAL. UVQ_EDEADLK as uvq_channel_recv when timeout_ms > 0. */
UVQ_EXTERN int uvq_channel_recv_timeout(uvq_channel_t* ch, uvq_event_t** out,
                                        int64_t timeout_ms);

/* -- Channel sink: the loop writes into a channel without blocking ------- */

/* Do not close the channel when the sink closes (by default closing the
 * sink closes the channel, as go-events' Channel does, so that receivers
 * drain and finish). */
#define UVQ_CHANNEL_SINK_KEEP_OPEN 1u

/* A sink (loop thread) in front of a channel (any thread receives).
 *   write: takes a reference (uvq_event_ref) and puts the event in the
 *     channel: 0. The receiver owns that reference and must drop it with
 *     uvq_event_unref when done. When the channel is full: UVQ_EAGAIN and no
 *     reference is kept; as soon as a receiver frees space, the sink is woken
 *     on its loop thread through its uv_async_t and calls uvq_sink_ready(),
 *     so the upstream retries (nothing lost or reordered). Once the channel
 *     is closed (by anyone): UVQ_ECLOSED, every time.
 *   close: detaches from the channel, closes it (unless
 *     UVQ_CHANNEL_SINK_KEEP_OPEN), and closes the uv_async_t; the close
 *     completes in that handle's close callback, on a later loop iteration.
 *     Events already in the channel stay there for the receivers.
 * Use &cs->sink with every uvq_sink_* function; cs->sink.data is yours. */
struct uvq_channel_sink_s {
  uvq_sink_t sink;
  /* private */
  uvq_channel_t* ch_;
  uv_async_t async_;
  unsigned flags_;
};

/* Initialise cs as the channel sink of ch on loop. Loop thread: the calling
 * thread becomes the sink's thread, and blocking channel calls made on it
 * return UVQ_EDEADLK until the sink closes. A channel has at most one
 * channel sink at a time. cs is the caller's memory and must not move until
 * its close callback; ch must stay initialised until the sink's close has
 * begun (the close detaches it from ch at once, see uvq_channel_destroy).
 * flags: 0 or UVQ_CHANNEL_SINK_KEEP_OPEN. The channel may already be
 * closed (writes then return UVQ_ECLOSED).
 * Returns 0; UVQ_EINVAL (NULL loop, cs or ch, ch not initialised or
 * destroyed, unknown flags); UVQ_EBUSY (ch already has a channel sink whose
 * close has not begun); a libuv error from uv_async_init. On error nothing
 * is left to close. */
UVQ_EXTERN int uvq_channel_sink_init(uv_loop_t* loop, uvq_channel_sink_t* cs,
                                     uvq_channel_t* ch, unsigned flags);

#ifdef __cplusplus
}
#endif
#endif /* UVQ_H */
