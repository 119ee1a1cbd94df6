/* tcp-broadcast: a line chat on loopback; every client is a sink behind its
 * own bounded queue, so a slow client cannot slow the others.
 *
 *                                           +-> queue 1 -> sink 1 -> tcp 1
 *   tcp k -> line -> inbox -> broadcaster --+-> queue 2 -> sink 2 -> tcp 2
 *   (split on '\n')                         +-> queue 3 -> sink 3 -> tcp 3
 *
 * What it shows:
 *   - A sink of your own: each client's sink writes to its uv_tcp_t with
 *     uv_write, and answers UVQ_EAGAIN while libuv holds more than 64 KiB
 *     it could not send yet; when the write queue drained below 16 KiB its
 *     write callback calls uvq_sink_ready() and the client's queue resumes.
 *   - One event, many clients, no copy: a line is read into one
 *     reference-counted event (uvq_event_init); the broadcaster hands it to
 *     every client's queue through uvq_queue_sink(), each pending uv_write
 *     holds a reference, and the line is freed when the last one is done.
 *   - Drop by policy: each client's queue is bounded (-c, default 256) with
 *     UVQ_DROP_NEW. A client that does not read fills its socket, then its
 *     queue, and from then on the lines it cannot take are dropped and
 *     counted for that client alone; the others go on at full speed. With
 *     -d N the server disconnects a client once it dropped more than N.
 *   - Pacing, so that only slow clients drop: one read can hold thousands
 *     of lines, but each client's queue drains once per loop iteration. So
 *     lines do not go to the broadcaster straight from the read callback:
 *     they go through an inbox (a queue with a process callback) whose
 *     batch is a quarter of a client queue's capacity, so a client that
 *     keeps up does not find its queue full. When the inbox holds too many
 *     lines (its high watermark) the server stops reading from every
 *     client until it drained to its low watermark: a client that floods
 *     is slowed down by TCP, not by dropping. The summary says how often.
 *   - Clean teardown: a client that leaves is removed from the broadcaster
 *     and its queue is stopped in discard mode; the queue then closes the
 *     sink, which closes the socket, and the client's memory is freed in the
 *     queue's close callback (the last one to run). On SIGINT or SIGTERM the
 *     server stops listening and reading, broadcasts what the inbox still
 *     holds (drain stop), then stops every client's queue in drain mode (the
 *     sink half-closes the socket with uv_shutdown once everything was
 *     written); after -x N lines it does the same but discards lines read
 *     after the N-th. It forces what is still stuck after two seconds,
 *     prints its counters and checks that uv_loop_close() returns 0.
 *
 * Protocol: every line a client sends (bytes up to '\n'; lines longer than
 * 4096 bytes are cut into 4096-byte pieces) is sent to every connected
 * client, the sender included, in the order the server read them. A client
 * that closes its side (EOF) or fails counts as gone: what was still queued
 * for it is discarded.
 *
 * Output on stdout, one line at a time (so a program can follow it): first
 * `listening on 127.0.0.1:PORT`, then `client N connected ...` once client N
 * receives broadcasts, `client N left ...` with its counters, and a summary.
 *
 * Run:  ./samples/tcp-broadcast 7000         (0 or nothing: any free port)
 *       nc 127.0.0.1 7000                    (in two or more terminals)
 *       Ctrl-C the server to stop it.
 * Options: -c N queue capacity per client (default 256), -m N at most N
 * clients at once (default 64; more are refused), -d N disconnect a client
 * after more than N dropped lines (default 0: never), -x N exit after N
 * lines were broadcast (default 0: run until a signal), -h.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "uvq.h"

#define CONTAINER_OF(ptr, type, field)                                       \
  ((type*) ((char*) (ptr) - offsetof(type, field)))

#define MAX_LINE 4096           /* longer lines are cut into pieces */
#define WRITE_HIGH (64 * 1024)  /* unsent bytes: above this, say "again" */
#define WRITE_LOW (16 * 1024)   /* ... and below this, ready again */
#define GRACE_MS 2000           /* how long shutdown waits for slow clients */
#define INBOX_HIGH 4096         /* lines waiting: stop reading from clients */
#define INBOX_LOW 1024          /* ... and read again */

/* One line, shared by every client it goes to. The event is reference
 * counted: the inbox's, one per client queue it sits in (the queue's
 * carrier), one per uv_write in flight. */
struct line {
  uvq_event_t ev;
  size_t len;
  char data[]; /* the line with its '\n' */
};

struct write_req {
  uv_write_t req;
  struct line* line; /* one reference, until the write completed */
};

struct server;

struct client {
  uvq_sink_t sink;   /* writes to tcp; fed by queue */
  uvq_queue_t queue; /* bounded; the broadcaster writes into its face */
  uv_tcp_t tcp;
  uv_shutdown_t shutdown;
  struct server* s;
  struct client* prev;
  struct client* next;
  unsigned id;
  int port;
  const char* why; /* why it left */
  char* partial;   /* the line being read, MAX_LINE bytes */
  size_t partial_len;
  int waiting;      /* the sink said UVQ_EAGAIN and owes a ready */
  int leaving;      /* its queue was asked to stop */
  int graceful;     /* flush everything, then uv_shutdown, then close */
  int sink_closing; /* the queue closed the sink: tcp close is ours */
  uint64_t lines_in;    /* lines it sent */
  uint64_t delivered;   /* lines written to its socket */
  uint64_t cancelled;   /* writes cancelled by a forced close */
  uint64_t write_errors;
};

struct server {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  uv_timer_t grace;
  uvq_queue_t inbox; /* lines read, on their way to the broadcaster */
  uvq_broadcast_t b;
  struct client* clients;
  unsigned online;
  unsigned served;
  unsigned refused;
  unsigned kicked;
  unsigned next_id;
  int shutting_down;
  int reading_paused;     /* the inbox is too full: nobody is read */
  unsigned pauses;        /* times the inbox reached INBOX_HIGH */
  int inbox_closed;       /* shutdown, second half: clients are leaving */
  uv_tcp_t reject;        /* no memory for a client: accepted, closed */
  int reject_closing;
  int reject_pending;     /* another connection waits for reject */
  /* options */
  size_t capacity;
  unsigned max_clients;
  uint64_t max_drops;
  uint64_t exit_after;
  /* totals */
  uint64_t lines;      /* lines the broadcaster took */
  uint64_t lost;       /* lines read but not broadcast (no memory, limit) */
  uint64_t deliveries; /* line writes that reached a client's socket */
  uint64_t drops;      /* lines dropped because a client's queue was full */
  uint64_t discarded;  /* lines still queued when a client left */
  uint64_t failed;     /* lines written to no socket: write failed or was
                          cancelled by a close, or the queue failed it */
  char readbuf[64 * 1024];
};

static void client_leave(struct client* c, const char* why,
                         uvq_stop_mode_t mode);
static void server_shutdown(struct server* s, const char* why,
                            uvq_stop_mode_t inbox_mode);
static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);

/* -- lines --------------------------------------------------------------- */

static void line_release(uvq_event_t* ev) {
  free(CONTAINER_OF(ev, struct line, ev));
}

/* -- the client's sink: uv_write with flow control ------------------------ */

static void on_client_write(uv_write_t* req, int status) {
  struct write_req* w = CONTAINER_OF(req, struct write_req, req);
  struct client* c = req->handle->data;

  if (status == 0)
    c->delivered++;
  else if (status == UV_ECANCELED)
    c->cancelled++; /* a forced close: the client is going anyway */
  else
    c->write_errors++;
  uvq_event_unref(&w->line->ev);
  free(w);
  if (status != 0 && status != UV_ECANCELED)
    client_leave(c, "write failed", UVQ_STOP_DISCARD);
  /* The sink told its queue "again": now it can take lines again. The
   * queue's ready callback only schedules a drain, so this cannot re-enter
   * client_sink_write from here. */
  if (c->waiting && !c->sink_closing &&
      uv_stream_get_write_queue_size((uv_stream_t*) &c->tcp) <= WRITE_LOW) {
    c->waiting = 0;
    uvq_sink_ready(&c->sink);
  }
}

static int client_sink_write(uvq_sink_t* sink, uvq_event_t* ev) {
  struct client* c = CONTAINER_OF(sink, struct client, sink);
  struct line* l = CONTAINER_OF(ev, struct line, ev);
  struct write_req* w;
  uv_buf_t buf;
  int r;

  if (uv_is_closing((uv_handle_t*) &c->tcp))
    return UVQ_ECLOSED; /* forced close under way */
  /* Bytes libuv holds because the socket is full: the client reads slower
   * than we write. Stop here; on_client_write says when to go on. While
   * this is true a write is in flight, so its callback will come. */
  if (uv_stream_get_write_queue_size((uv_stream_t*) &c->tcp) > WRITE_HIGH) {
    c->waiting = 1;
    return UVQ_EAGAIN;
  }
  w = malloc(sizeof(*w));
  if (w == NULL)
    return UVQ_ENOMEM;
  w->line = l;
  uvq_event_ref(ev); /* the write borrows ev; uv_write needs it longer */
  buf = uv_buf_init(l->data, (unsigned) l->len);
  r = uv_write(&w->req, (uv_stream_t*) &c->tcp, &buf, 1, on_client_write);
  if (r != 0) {
    uvq_event_unref(ev);
    free(w);
    return r; /* the queue counts it in failed and calls on_queue_error */
  }
  return 0;
}

static void on_client_tcp_closed(uv_handle_t* h) {
  struct client* c = h->data;
  /* The socket is closed only after the sink's close began (see
   * client_sink_close and force_client): complete it. The queue then closes
   * its own handle and calls on_client_queue_closed. */
  uvq_sink_closed(&c->sink);
}

static void on_client_shutdown(uv_shutdown_t* req, int status) {
  struct client* c = req->handle->data;
  (void) status; /* UV_ECANCELED when force_client closed the socket */
  if (!uv_is_closing((uv_handle_t*) &c->tcp))
    uv_close((uv_handle_t*) &c->tcp, on_client_tcp_closed);
}

/* Called by the client's queue once it wrote (drain) or released (discard)
 * everything: the socket goes now. */
static void client_sink_close(uvq_sink_t* sink) {
  struct client* c = CONTAINER_OF(sink, struct client, sink);
  c->sink_closing = 1;
  if (c->waiting) {
    /* The sink contract: an upstream waiting for our ready gets it from
     * the close, so that its retry learns UVQ_ECLOSED. */
    c->waiting = 0;
    uvq_sink_ready(sink);
  }
  if (uv_is_closing((uv_handle_t*) &c->tcp))
    return;
  /* Graceful: uv_shutdown waits until every queued write went out. */
  if (c->graceful && uv_shutdown(&c->shutdown, (uv_stream_t*) &c->tcp,
                                 on_client_shutdown) == 0)
    return;
  uv_close((uv_handle_t*) &c->tcp, on_client_tcp_closed);
}

static const uvq_sink_vtable_t client_sink_vt = {
  client_sink_write,
  client_sink_close
};

/* -- clients ------------------------------------------------------------- */

static void on_client_queue_closed(uvq_queue_t* q) {
  struct client* c = q->data;
  struct server* s = c->s;
  uvq_queue_stats_t st;

  /* The last callback of a client: its sink and socket closed before the
   * queue did, every write callback has run. */
  uvq_queue_stats(q, &st);
  printf("client %u left (%s): sent %" PRIu64 " lines, received %" PRIu64
         ", dropped %" PRIu64 " (queue full), discarded %" PRIu64
         ", unsent %" PRIu64 "\n",
         c->id, c->why, c->lines_in, c->delivered, st.dropped_new,
         st.discarded, st.failed + c->write_errors + c->cancelled);
  s->deliveries += c->delivered;
  s->drops += st.dropped_new;
  s->discarded += st.discarded;
  s->failed += st.failed + c->write_errors + c->cancelled;

  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    s->clients = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  s->online--;
  free(c->partial);
  free(c);

  /* The last client of a shutdown: nothing left for the grace timer. */
  if (s->inbox_closed && s->clients == NULL &&
      !uv_is_closing((uv_handle_t*) &s->grace))
    uv_close((uv_handle_t*) &s->grace, NULL);
}

/* A write to the client failed (not "again"): it is broken, let it go. */
static void on_queue_error(uvq_queue_t* q, uvq_event_t* ev, int err) {
  (void) ev;
  (void) err;
  client_leave(q->data, "write failed", UVQ_STOP_DISCARD);
}

/* Past the drain: discard what is queued and close the socket now. */
static void force_client(struct client* c) {
  c->graceful = 0;
  uvq_queue_stop(&c->queue, UVQ_STOP_DISCARD, NULL); /* overrides a drain */
  if (c->sink_closing && !uv_is_closing((uv_handle_t*) &c->tcp))
    uv_close((uv_handle_t*) &c->tcp, on_client_tcp_closed);
}

static void client_leave(struct client* c, const char* why,
                         uvq_stop_mode_t mode) {
  if (c->leaving) {
    if (mode == UVQ_STOP_DISCARD && c->graceful) {
      c->why = why;
      force_client(c);
    }
    return;
  }
  c->leaving = 1;
  c->why = why;
  c->graceful = mode == UVQ_STOP_DRAIN;
  /* UVQ_ECLOSED while the broadcaster closes: nothing to remove then. */
  uvq_broadcast_remove(&c->s->b, uvq_queue_sink(&c->queue));
  uv_read_stop((uv_stream_t*) &c->tcp);
  /* The queue writes (drain) or releases (discard) what it holds, closes
   * the sink, then itself: on_client_queue_closed frees the client. */
  uvq_queue_stop(&c->queue, mode, on_client_queue_closed);
}

/* Disconnect every client that dropped more than the limit. */
static void kick_slow_clients(struct server* s) {
  struct client* c;
  uvq_queue_stats_t st;
  for (c = s->clients; c != NULL; c = c->next) {
    if (c->leaving)
      continue;
    uvq_queue_stats(&c->queue, &st);
    if (st.dropped_new > s->max_drops) {
      s->kicked++;
      printf("client %u is too slow: %" PRIu64 " lines dropped, "
             "disconnecting it\n", c->id, st.dropped_new);
      client_leave(c, "too slow", UVQ_STOP_DISCARD);
    }
  }
}

static void set_reading(struct server* s, int on) {
  struct client* c;
  s->reading_paused = !on;
  for (c = s->clients; c != NULL; c = c->next) {
    if (c->leaving)
      continue;
    if (on)
      uv_read_start((uv_stream_t*) &c->tcp, on_alloc, on_read);
    else
      uv_read_stop((uv_stream_t*) &c->tcp);
  }
}

/* The inbox's process callback: one line to every client. The batch of
 * the inbox bounds how many lines reach the client queues per loop
 * iteration. We own ev (the inbox's reference). */
static void on_inbox(uvq_queue_t* q, uvq_event_t* ev) {
  struct server* s = q->data;
  int r;

  /* Each client's queue takes its own reference (or drops the line when
   * full: the broadcaster still sees 0, the queue counts it). */
  r = uvq_sink_write(&s->b.sink, ev);
  uvq_event_unref(ev);
  if (r != 0) {
    s->lost++;
    fprintf(stderr, "tcp-broadcast: broadcast: %s\n", uvq_strerror(r));
  } else {
    s->lines++;
  }
  if (s->max_drops != 0)
    kick_slow_clients(s);
  if (s->exit_after != 0 && s->lines >= s->exit_after)
    server_shutdown(s, "line limit reached", UVQ_STOP_DISCARD);
}

/* The inbox's watermarks: at INBOX_HIGH lines nobody is read, at INBOX_LOW
 * everyone is again. Never after the inbox's stop (the shutdown). */
static void on_inbox_mark(uvq_queue_t* q, int above) {
  struct server* s = q->data;
  if (above)
    s->pauses++;
  set_reading(s, !above);
}

/* A whole line was read: into the inbox with it. */
static void read_line(struct client* c) {
  struct server* s = c->s;
  struct line* l = malloc(sizeof(*l) + c->partial_len + 1);

  c->lines_in++;
  if (l == NULL) {
    s->lost++;
    c->partial_len = 0;
    return;
  }
  memcpy(l->data, c->partial, c->partial_len);
  l->data[c->partial_len] = '\n';
  l->len = c->partial_len + 1;
  c->partial_len = 0;
  uvq_event_init(&l->ev, line_release);
  /* Unbounded, on the loop thread: this never waits. */
  if (uvq_queue_enqueue(&s->inbox, &l->ev) != 0) {
    s->lost++;
    uvq_event_unref(&l->ev); /* refused: still ours */
  }
}

/* Split what was read into lines; keep the unfinished tail for later. */
static void feed(struct client* c, const char* p, size_t n) {
  while (n > 0 && !c->leaving && !c->s->shutting_down) {
    const char* nl = memchr(p, '\n', n);
    size_t take = nl != NULL ? (size_t) (nl - p) : n;
    size_t room = MAX_LINE - c->partial_len;
    if (take > room)
      take = room;
    memcpy(c->partial + c->partial_len, p, take);
    c->partial_len += take;
    p += take;
    n -= take;
    if (nl != NULL && p == nl) {
      p++;
      n--;
      read_line(c);
    } else if (c->partial_len == MAX_LINE) {
      read_line(c); /* too long: send what we have as a line */
    }
  }
}

static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf) {
  struct client* c = h->data;
  (void) suggested;
  /* One buffer for every client: on_read consumes it before the next
   * allocation. */
  *buf = uv_buf_init(c->s->readbuf, sizeof(c->s->readbuf));
}

static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  struct client* c = stream->data;
  if (nread < 0) {
    client_leave(c, nread == UV_EOF ? "closed by peer" : uv_strerror(nread),
                 UVQ_STOP_DISCARD);
    return;
  }
  feed(c, buf->base, (size_t) nread);
}

/* -- the server ---------------------------------------------------------- */

static void free_raw_client(uv_handle_t* h) {
  struct client* c = h->data;
  free(c->partial);
  free(c);
}

/* No memory for a client: accept the connection into the server's spare
 * handle and close it at once. A connection left unaccepted would not wait
 * in the backlog: libuv has taken it already and stops watching the
 * listener until uv_accept. One at a time; another one waits (in libuv)
 * until the spare's close callback. */
static void refuse_without_memory(struct server* s);

static void on_reject_closed(uv_handle_t* h) {
  struct server* s = h->data;
  s->reject_closing = 0;
  if (s->reject_pending) {
    s->reject_pending = 0;
    refuse_without_memory(s);
  }
}

static void refuse_without_memory(struct server* s) {
  if (s->shutting_down)
    return; /* the listener is closing, and its connection with it */
  if (s->reject_closing) {
    s->reject_pending = 1;
    return;
  }
  s->refused++;
  fprintf(stderr, "tcp-broadcast: out of memory: connection refused\n");
  uv_tcp_init(&s->loop, &s->reject);
  s->reject.data = s;
  (void) uv_accept((uv_stream_t*) &s->listener, (uv_stream_t*) &s->reject);
  s->reject_closing = 1;
  uv_close((uv_handle_t*) &s->reject, on_reject_closed);
}

static void on_connection(uv_stream_t* listener, int status) {
  struct server* s = listener->data;
  uvq_queue_options_t opts;
  struct client* c;
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  int r;

  if (status != 0) {
    fprintf(stderr, "tcp-broadcast: accept: %s\n", uv_strerror(status));
    return;
  }
  /* The queue inside is cache-line aligned (uvq.h): malloc's 16 bytes are
   * not enough. A struct's size is a multiple of its alignment, as
   * aligned_alloc wants. */
  c = aligned_alloc(_Alignof(struct client), sizeof(*c));
  if (c == NULL) {
    refuse_without_memory(s);
    return;
  }
  memset(c, 0, sizeof(*c));
  c->s = s;
  c->partial = malloc(MAX_LINE);
  uv_tcp_init(&s->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(listener, (uv_stream_t*) &c->tcp) != 0 || c->partial == NULL ||
      s->online >= s->max_clients) {
    s->refused++;
    printf("connection refused: %u clients online\n", s->online);
    uv_close((uv_handle_t*) &c->tcp, free_raw_client);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr*) &ss, &len) == 0 &&
      ss.ss_family == AF_INET)
    c->port = ntohs(((struct sockaddr_in*) &ss)->sin_port);

  memset(&opts, 0, sizeof(opts));
  opts.capacity = s->capacity;
  opts.overflow = UVQ_DROP_NEW;
  opts.error = on_queue_error;
  uvq_sink_init(&c->sink, &client_sink_vt);
  r = uvq_queue_init_sink(&s->loop, &c->queue, &c->sink, &opts);
  if (r != 0) {
    fprintf(stderr, "tcp-broadcast: queue: %s\n", uvq_strerror(r));
    uv_close((uv_handle_t*) &c->tcp, free_raw_client);
    return;
  }
  c->queue.data = c;
  c->id = ++s->next_id;
  c->next = s->clients;
  if (s->clients != NULL)
    s->clients->prev = c;
  s->clients = c;
  s->online++;
  s->served++;

  r = uvq_broadcast_add(&s->b, uvq_queue_sink(&c->queue));
  if (r == 0 && !s->reading_paused)
    r = uv_read_start((uv_stream_t*) &c->tcp, on_alloc, on_read);
  if (r != 0) {
    client_leave(c, uvq_strerror(r), UVQ_STOP_DISCARD);
    return;
  }
  printf("client %u connected from 127.0.0.1:%d (%u online)\n", c->id,
         c->port, s->online);
}

static void on_grace(uv_timer_t* t) {
  struct server* s = t->data;
  struct client* c;
  struct client* next;
  printf("shutdown: forcing %u slow clients\n", s->online);
  for (c = s->clients; c != NULL; c = next) {
    next = c->next;
    c->why = "server shutting down, flush timed out";
    force_client(c);
  }
}

/* Second half of the shutdown: every line the inbox let through is in the
 * client queues. */
static void on_inbox_closed(uvq_queue_t* q) {
  struct server* s = q->data;
  struct client* c;
  struct client* next;
  uvq_queue_stats_t st;

  s->inbox_closed = 1;
  uvq_queue_stats(q, &st);
  s->lost += st.discarded; /* read after the line limit */
  /* Drain: every line already taken still reaches every client that can
   * read it; each client's socket is then half-closed (uv_shutdown). */
  for (c = s->clients; c != NULL; c = next) {
    next = c->next; /* clients are freed later, in their queue's close cb */
    client_leave(c, "server shutting down", UVQ_STOP_DRAIN);
  }
  /* Every queue was removed from it: the close completes at once. */
  uvq_sink_close(&s->b.sink, NULL);
  if (s->clients != NULL)
    uv_timer_start(&s->grace, on_grace, GRACE_MS, 0);
  else if (!uv_is_closing((uv_handle_t*) &s->grace))
    uv_close((uv_handle_t*) &s->grace, NULL);
}

static void server_shutdown(struct server* s, const char* why,
                            uvq_stop_mode_t inbox_mode) {
  if (s->shutting_down)
    return;
  s->shutting_down = 1;
  printf("shutting down: %s\n", why);
  uv_close((uv_handle_t*) &s->listener, NULL);
  uv_close((uv_handle_t*) &s->sigint, NULL);
  uv_close((uv_handle_t*) &s->sigterm, NULL);
  set_reading(s, 0);
  /* Broadcast (drain) or drop (discard) the lines still in the inbox, then
   * on_inbox_closed lets the clients go. */
  uvq_queue_stop(&s->inbox, inbox_mode, on_inbox_closed);
}

static void on_signal(uv_signal_t* h, int signum) {
  server_shutdown(h->data, signum == SIGINT ? "SIGINT" : "SIGTERM",
                  UVQ_STOP_DRAIN);
}

static void usage(FILE* f) {
  fprintf(f,
          "usage: tcp-broadcast [-c capacity] [-m max-clients] "
          "[-d max-drops] [-x lines] [PORT]\n"
          "  -c, --capacity N     queue capacity per client (default 256)\n"
          "  -m, --max-clients N  clients at once (default 64)\n"
          "  -d, --max-drops N    disconnect a client after more than N\n"
          "                       dropped lines (default 0: never)\n"
          "  -x, --exit-after N   exit after N lines were broadcast\n"
          "  PORT                 port on 127.0.0.1 (default 0: any)\n");
}

static int parse_u64(const char* arg, uint64_t* out) {
  char* end;
  unsigned long long v;
  if (arg[0] < '0' || arg[0] > '9')
    return -1;
  v = strtoull(arg, &end, 10);
  if (*end != '\0')
    return -1;
  *out = v;
  return 0;
}

int main(int argc, char** argv) {
  static const struct option longopts[] = {
    { "capacity", required_argument, NULL, 'c' },
    { "max-clients", required_argument, NULL, 'm' },
    { "max-drops", required_argument, NULL, 'd' },
    { "exit-after", required_argument, NULL, 'x' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
  };
  static struct server srv; /* 64 KiB read buffer: not on the stack */
  struct server* s = &srv;
  struct sockaddr_in addr;
  struct sockaddr_storage bound;
  uvq_queue_options_t inbox_opts;
  int len = sizeof(bound);
  uint64_t v;
  uint64_t port = 0;
  int opt;
  int r;

  s->capacity = 256;
  s->max_clients = 64;
  while ((opt = getopt_long(argc, argv, "c:m:d:x:h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'c':
      if (parse_u64(optarg, &v) != 0 || v == 0 || v > SIZE_MAX / 4)
        goto bad;
      s->capacity = (size_t) v;
      break;
    case 'm':
      if (parse_u64(optarg, &v) != 0 || v == 0 || v > 1000000)
        goto bad;
      s->max_clients = (unsigned) v;
      break;
    case 'd':
      if (parse_u64(optarg, &s->max_drops) != 0)
        goto bad;
      break;
    case 'x':
      if (parse_u64(optarg, &s->exit_after) != 0)
        goto bad;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      goto bad;
    }
  }
  if (optind < argc &&
      (parse_u64(argv[optind++], &port) != 0 || port > 65535))
    goto bad;
  if (optind != argc)
    goto bad;

  /* A client that vanishes mid-write must give us EPIPE, not kill us. */
  signal(SIGPIPE, SIG_IGN);
  /* Line-buffered even into a pipe: whoever started us reads the port. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  r = uv_loop_init(&s->loop);
  if (r != 0) {
    fprintf(stderr, "tcp-broadcast: loop: %s\n", uv_strerror(r));
    return 1;
  }
  uvq_broadcast_init(&s->b);

  /* A client queue drains once per loop iteration: give it at most a
   * quarter of its capacity per iteration, so only clients that really
   * cannot keep up (their socket is full) ever drop. */
  memset(&inbox_opts, 0, sizeof(inbox_opts));
  inbox_opts.batch = s->capacity / 4 > 1024   ? 1024
                     : s->capacity / 4 > 0 ? (unsigned) (s->capacity / 4)
                                           : 1;
  inbox_opts.high_water = INBOX_HIGH;
  inbox_opts.low_water = INBOX_LOW;
  inbox_opts.watermark = on_inbox_mark;
  r = uvq_queue_init(&s->loop, &s->inbox, on_inbox, &inbox_opts);
  if (r != 0) {
    fprintf(stderr, "tcp-broadcast: inbox: %s\n", uvq_strerror(r));
    return 1;
  }
  s->inbox.data = s;
  uv_tcp_init(&s->loop, &s->listener);
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  uv_timer_init(&s->loop, &s->grace);
  s->listener.data = s;
  s->sigint.data = s;
  s->sigterm.data = s;
  s->grace.data = s;

  uv_ip4_addr("127.0.0.1", (int) port, &addr);
  r = uv_tcp_bind(&s->listener, (const struct sockaddr*) &addr, 0);
  if (r == 0)
    r = uv_listen((uv_stream_t*) &s->listener, 128, on_connection);
  if (r == 0)
    r = uv_tcp_getsockname(&s->listener, (struct sockaddr*) &bound, &len);
  if (r != 0) {
    fprintf(stderr, "tcp-broadcast: listen on 127.0.0.1:%d: %s\n", (int) port,
            uv_strerror(r));
    server_shutdown(s, "cannot listen", UVQ_STOP_DISCARD);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    return 1;
  }
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  printf("listening on 127.0.0.1:%d\n",
         ntohs(((struct sockaddr_in*) &bound)->sin_port));
  fflush(stdout);

  uv_run(&s->loop, UV_RUN_DEFAULT);

  printf("lines %" PRIu64 ", deliveries %" PRIu64 ", drops %" PRIu64
         ", discarded %" PRIu64 ", unsent %" PRIu64 ", lost %" PRIu64
         "; clients served %u, refused %u, disconnected as too slow %u"
         "; reading paused %u times\n",
         s->lines, s->deliveries, s->drops, s->discarded, s->failed, s->lost,
         s->served, s->refused, s->kicked, s->pauses);
  r = uv_loop_close(&s->loop);
  if (r != 0) {
    fprintf(stderr, "tcp-broadcast: uv_loop_close: %s\n", uv_strerror(r));
    return 1;
  }
  return 0;

bad:
  usage(stderr);
  return 2;
}
