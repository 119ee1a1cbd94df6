/* Waking a loop through its uv_async_t, without libuv 1.44's busy window.
 *
 * libuv 1.44 (Debian bookworm's) marks the handle busy (pending = 1) before
 * it writes the loop's wakeup fd and done (pending = 2) after; the loop
 * thread, in uv__async_io, tries to take a done handle 997 times with a
 * `pause` between tries and then yields, for as long as it finds one busy.
 * The write itself makes the kernel run the woken loop thread, often at
 * once and on the sender's own core: the sender is then stopped between
 * its write and its "done", and the loop spins out its 997 pauses (31 us
 * on the AMD EPYC host of docs/bench.md) before the sender may finish.
 * At a paced load that is a few wakeups in every 100, and it sets the p99
 * of every transport that calls uv_async_send (docs/design.md, section 3).
 * libuv 1.45 (pull request 3879) no longer spins there.
 *
 * So where the libuv we run against is 1.44 (the version whose protocol
 * this was written against and tested with), a wake marks the handle done
 * first and writes after, the same fields and the same write as
 * uv_async_send but in the other order: the loop never sees the handle
 * busy. The loop's side is unchanged (it takes a done handle, runs its
 * callback). After its swap a sender touches the loop's fd, never the
 * handle; but libuv's close of the handle, which waits for a busy flag,
 * no longer waits for it, so callers must keep the loop from closing the
 * handle while they are inside (as uvq's do: inside_ in lib/queue.c, the
 * lock in lib/channel.c). Only uvq's handles wake this way: libuv's own
 * (the threadpool's) and the user's still use uv_async_send and its
 * window. Everywhere else: uv_async_send. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

/* The versions whose protocol this knows: 1.44.0 up to, not including,
 * 1.45.0. The header we build against must be one (it describes their
 * private fields), and so must the library we run against. */
#define UVQ__WAKE_FROM 0x012c00
#define UVQ__WAKE_UPTO 0x012d00
#define UVQ__WAKE_KNOWN(v) ((v) >= UVQ__WAKE_FROM && (v) < UVQ__WAKE_UPTO)

#if defined(__linux__) && UVQ__WAKE_KNOWN(UV_VERSION_HEX)
# define UVQ__DIRECT_WAKE 1
#endif

int uvq__direct_wake(void) {
#ifdef UVQ__DIRECT_WAKE
  return UVQ__WAKE_KNOWN(uv_version());
#else
  return 0;
#endif
}

void uvq__async_send(uv_async_t* handle) {
#ifdef UVQ__DIRECT_WAKE
  if (uvq__direct_wake()) {
    uv_loop_t* loop = handle->loop;
    int idle = 0;
    int fd;
    ssize_t r;

    /* 0: not pending. Anything else: a wake is under way or taken
     * by nobody yet, and its write wakes the loop for us too. */
    if (__atomic_load_n(&handle->pending, __ATOMIC_RELAXED) != 0)
      return;
    if (!__atomic_compare_exchange_n(&handle->pending, &idle, 2, 0,
                                     __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
      return;
    /* From here on the loop may take the handle and run the callback
     * before our write; the write then costs it one empty turn. */
    fd = loop->async_wfd;
    if (fd == -1) {
      static const uint64_t one = 1;
      do
        r = write(loop->async_io_watcher.fd, &one, sizeof(one));
      while (r == -1 && errno == EINTR);
    } else {
      do
        r = write(fd, "", 1);
      while (r == -1 && errno == EINTR);
    }
    /* EAGAIN: the fd is full, so the loop is awake anyway. Any other
     * failure is one uv_async_send aborts on too: the loop is gone. */
    if (r == -1 && errno != EAGAIN && errno != EWOULDBLOCK)
      abort();
    return;
  }
#endif
  uv_async_send(handle);
}
