/* The samples, run as real programs: samples/tcp-broadcast with real TCP
 * clients on 127.0.0.1, and samples/retry-pipeline as a smoke test of its
 * own accounting. The binaries are found in the build directory
 * (UVQ_BUILDDIR, set by Makefile.am), so this works out of tree and under
 * distcheck; `make check` builds them first (they are noinst_PROGRAMS).
 *
 * One libuv loop drives everything: the sample is a child process
 * (uv_spawn) whose stdout we read line by line, as a user would watch it:
 * "listening on 127.0.0.1:PORT" gives the port, "client N connected" says
 * that client N now receives broadcasts. Clients connect one after the
 * other, each only once the previous one was announced, so every client is
 * in the broadcaster before anyone sends; then every line sent must reach
 * every reading client exactly once, in its sender's order, with its exact
 * bytes. A watchdog timer bounds the test; it never decides an assertion
 * by timing, it only turns a hang into a failure. */
#include <stdio.h>
#include <string.h>

#include "helpers.h"

#ifndef UVQ_BUILDDIR
# error "UVQ_BUILDDIR must name the build directory (see Makefile.am)"
#endif
#define SAMPLE(name) UVQ_BUILDDIR "/samples/" name

#define MAX_CLIENTS 6
#define LINES_EACH 25
#define SLOW_LINE 1000   /* bytes per line in the slow-client test */
#define SLOW_ROUND 100   /* lines per round */
#define SLOW_CAP 40000   /* give up on the kick after this many lines */
#define FLOOD_LINES 50000 /* client 0's one write in the flood test */
#define WATCHDOG_MS 8000 /* times CK_TIMEOUT_MULTIPLIER */

enum {
  MODE_SIGTERM,    /* everyone talks; SIGTERM once everyone has everything */
  MODE_EXIT_AFTER, /* the server exits by itself after the last line */
  MODE_SLOW,       /* client 0 never reads; client 1 talks until it is
                      disconnected as too slow */
  MODE_FLOOD,      /* as MODE_SIGTERM, but client 0 sends FLOOD_LINES lines
                      in one write, more than the server's inbox lets in */
  MODE_PLAIN       /* just run the program and collect its output */
};

typedef struct harness_s harness_t;

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t conn;
  harness_t* h;
  int index;
  int slow;       /* never reads */
  int open;       /* handle initialised and not closed */
  int eof;
  int read_error;
  size_t sent;    /* lines this client wrote */
  char* rx;
  size_t rx_len;
  size_t rx_cap;
  size_t lines;   /* '\n' received */
} tclient_t;

struct harness_s {
  uv_loop_t loop;
  uv_process_t proc;
  uv_pipe_t out;
  uv_timer_t watchdog;
  int mode;
  int nclients;
  tclient_t c[MAX_CLIENTS];
  char out_buf[64 * 1024];
  size_t out_len;
  size_t out_done; /* start of the first unparsed stdout line */
  int port;
  int announced;
  int next_connect;
  size_t sent_total; /* lines sent by everyone */
  int kicked;        /* slow mode: "client 1 is too slow" seen */
  int wrong_kick;    /* the id of another client said to be too slow */
  int sigterm_sent;
  int exited;
  int64_t exit_status;
  int term_signal;
  int timed_out;
  int io_errors;
};

static harness_t* H;

/* -- lines: what sender j writes as its line i ---------------------------- */

static size_t make_line(char* dst, int mode, int j, size_t i) {
  size_t n = (size_t) sprintf(dst, "c%d l%06zu ", j, i);
  size_t pad = mode == MODE_SLOW ? SLOW_LINE - 1 - n : (i * 7 + j * 13) % 50;
  size_t k;
  for (k = 0; k < pad; k++)
    dst[n++] = (char) ('a' + (i + j + k) % 26);
  dst[n++] = '\n';
  return n;
}

/* NULL when c received, from every sender, every line it sent, exactly
 * once, byte for byte, in the sender's order; otherwise what is wrong. */
static const char* verify_client(const harness_t* h, const tclient_t* c,
                                 char* why, size_t why_len) {
  size_t next[MAX_CLIENTS] = { 0 };
  char expect[SLOW_LINE + 64];
  size_t pos = 0;
  int j;

  while (pos < c->rx_len) {
    const char* line = c->rx + pos;
    const char* nl = memchr(line, '\n', c->rx_len - pos);
    size_t len = nl != NULL ? (size_t) (nl - line) + 1 : c->rx_len - pos;
    char head[32]; /* the line's start, as a string for sscanf */
    size_t i;
    size_t elen;
    size_t hlen = len < sizeof(head) - 1 ? len : sizeof(head) - 1;
    memcpy(head, line, hlen);
    head[hlen] = '\0';
    if (nl == NULL || sscanf(head, "c%d l%zu ", &j, &i) != 2 || j < 0 ||
        j >= h->nclients) {
      snprintf(why, why_len, "client %d: malformed line at byte %zu",
               c->index, pos);
      return why;
    }
    if (i != next[j]) {
      snprintf(why, why_len,
               "client %d: line %zu of sender %d where %zu was due "
               "(duplicate, gap or reorder)", c->index, i, j, next[j]);
      return why;
    }
    elen = make_line(expect, h->mode, j, i);
    if (elen != len || memcmp(expect, line, len) != 0) {
      snprintf(why, why_len, "client %d: line %zu of sender %d corrupted",
               c->index, i, j);
      return why;
    }
    next[j]++;
    pos += len;
  }
  for (j = 0; j < h->nclients; j++)
    if (next[j] != h->c[j].sent) {
      snprintf(why, why_len, "client %d got %zu of the %zu lines of "
               "sender %d", c->index, next[j], h->c[j].sent, j);
      return why;
    }
  return NULL;
}

/* -- plumbing -------------------------------------------------------------- */

static void on_client_closed(uv_handle_t* handle) {
  tclient_t* c = handle->data;
  c->open = 0;
}

static void client_close(tclient_t* c) {
  if (c->open && !uv_is_closing((uv_handle_t*) &c->tcp))
    uv_close((uv_handle_t*) &c->tcp, on_client_closed);
}

typedef struct {
  uv_write_t req;
  char data[];
} twrite_t;

static void on_written(uv_write_t* req, int status) {
  if (status != 0)
    H->io_errors++;
  free(req);
}

static void client_write(tclient_t* c, const char* data, size_t len) {
  twrite_t* w = malloc(sizeof(*w) + len);
  uv_buf_t buf;
  ck_assert_ptr_nonnull(w);
  memcpy(w->data, data, len);
  buf = uv_buf_init(w->data, (unsigned) len);
  ck_assert_int_eq(uv_write(&w->req, (uv_stream_t*) &c->tcp, &buf, 1,
                            on_written), 0);
}

static void send_sigterm(harness_t* h) {
  if (!h->sigterm_sent && !h->exited) {
    h->sigterm_sent = 1;
    ck_assert_int_eq(uv_process_kill(&h->proc, SIGTERM), 0);
  }
}

/* Slow mode: client 1 sends a round of SLOW_ROUND long lines. */
static void send_round(harness_t* h) {
  tclient_t* c = &h->c[1];
  char* buf = malloc((size_t) SLOW_ROUND * SLOW_LINE);
  size_t len = 0;
  int k;
  ck_assert_ptr_nonnull(buf);
  for (k = 0; k < SLOW_ROUND; k++)
    len += make_line(buf + len, h->mode, 1, c->sent++);
  h->sent_total += SLOW_ROUND;
  client_write(c, buf, len);
  free(buf);
}

/* What to do next, called after anything arrived. */
static void progress(harness_t* h) {
  int k;
  if (h->announced < h->nclients || h->sent_total == 0 || h->sigterm_sent)
    return;
  for (k = 0; k < h->nclients; k++)
    if (!h->c[k].slow && h->c[k].lines < h->sent_total)
      return; /* someone still waits for lines */
  if (h->mode == MODE_SIGTERM || h->mode == MODE_FLOOD)
    send_sigterm(h);
  else if (h->mode == MODE_SLOW) {
    /* Every reader has everything: the slow client held nobody up. Go on
     * until the server gives up on it (its stdout line may come after the
     * data: another round is harmless). */
    if (h->kicked || h->sent_total >= SLOW_CAP)
      send_sigterm(h);
    else
      send_round(h);
  }
}

static void on_client_alloc(uv_handle_t* handle, size_t size, uv_buf_t* buf) {
  tclient_t* c = handle->data;
  (void) size;
  if (c->rx_cap - c->rx_len < 65536) {
    c->rx_cap = c->rx_cap * 2 + 65536;
    c->rx = realloc(c->rx, c->rx_cap);
    ck_assert_ptr_nonnull(c->rx);
  }
  *buf = uv_buf_init(c->rx + c->rx_len, (unsigned) (c->rx_cap - c->rx_len));
}

static void on_client_read(uv_stream_t* stream, ssize_t nread,
                           const uv_buf_t* buf) {
  tclient_t* c = stream->data;
  ssize_t k;
  if (nread < 0) {
    if (nread == UV_EOF)
      c->eof = 1;
    else
      c->read_error = (int) nread;
    client_close(c);
    return;
  }
  for (k = 0; k < nread; k++)
    c->lines += buf->base[k] == '\n';
  c->rx_len += (size_t) nread;
  progress(c->h);
}

static void on_connect(uv_connect_t* req, int status) {
  tclient_t* c = req->handle->data;
  ck_assert_msg(status == 0, "connect: %s", uv_strerror(status));
  if (!c->slow)
    ck_assert_int_eq(uv_read_start((uv_stream_t*) &c->tcp, on_client_alloc,
                                   on_client_read), 0);
}

static void connect_next(harness_t* h) {
  tclient_t* c = &h->c[h->next_connect];
  struct sockaddr_in addr;
  c->h = h;
  c->index = h->next_connect++;
  c->slow = h->mode == MODE_SLOW && c->index == 0;
  /* init_ex creates the socket now, so the slow client can shrink its
   * receive buffer before the window is agreed: its server side fills
   * quickly. */
  ck_assert_int_eq(uv_tcp_init_ex(&h->loop, &c->tcp, AF_INET), 0);
  c->tcp.data = c;
  c->open = 1;
  if (c->slow) {
    int size = 4096;
    ck_assert_int_eq(uv_recv_buffer_size((uv_handle_t*) &c->tcp, &size), 0);
  }
  ck_assert_int_eq(uv_ip4_addr("127.0.0.1", h->port, &addr), 0);
  ck_assert_int_eq(uv_tcp_connect(&c->conn, &c->tcp,
                                  (const struct sockaddr*) &addr, on_connect),
                   0);
}

/* Everyone is in the broadcaster: start talking. */
static void start_sending(harness_t* h) {
  char* buf;
  int j;
  if (h->mode == MODE_SLOW) {
    send_round(h);
    return;
  }
  buf = malloc((size_t) FLOOD_LINES * 80);
  ck_assert_ptr_nonnull(buf);
  for (j = 0; j < h->nclients; j++) {
    tclient_t* c = &h->c[j];
    size_t len = 0;
    size_t half;
    size_t n = h->mode == MODE_FLOOD && j == 0 ? FLOOD_LINES : LINES_EACH;
    while (c->sent < n)
      len += make_line(buf + len, h->mode, j, c->sent++);
    h->sent_total += c->sent;
    /* Two writes cut in the middle of a line: the server must join it. */
    half = len / 2 + 3;
    client_write(c, buf, half);
    client_write(c, buf + half, len - half);
  }
  free(buf);
}

static void on_out_line(harness_t* h, const char* line) {
  int port;
  int id;
  int end = 0; /* %n: set only when the whole pattern matched */
  if (sscanf(line, "listening on 127.0.0.1:%d", &port) == 1) {
    h->port = port;
    if (h->nclients > 0)
      connect_next(h);
  } else if (strncmp(line, "client ", 7) == 0 &&
             strstr(line, " connected ") != NULL) {
    h->announced++;
    if (h->next_connect < h->nclients)
      connect_next(h);
    else if (h->announced == h->nclients)
      start_sending(h);
  } else if (sscanf(line, "client %d is too slow%n", &id, &end) == 1 &&
             end > 0) {
    /* Client 1 is c[0], the one that never reads. Any other is a reader
     * that lost lines: stop at once, the assertions say which. */
    if (id == 1) {
      h->kicked = 1;
    } else {
      h->wrong_kick = id;
      send_sigterm(h);
    }
  } else if (strncmp(line, "client 1 left (too slow)", 24) == 0) {
    client_close(&h->c[0]);
  }
  progress(h);
}

static void on_out_alloc(uv_handle_t* handle, size_t size, uv_buf_t* buf) {
  harness_t* h = handle->data;
  (void) size;
  ck_assert_msg(h->out_len + 1 < sizeof(h->out_buf), "sample output too long");
  *buf = uv_buf_init(h->out_buf + h->out_len,
                     (unsigned) (sizeof(h->out_buf) - 1 - h->out_len));
}

static void on_out_read(uv_stream_t* stream, ssize_t nread,
                        const uv_buf_t* buf) {
  harness_t* h = stream->data;
  char* nl;
  (void) buf;
  if (nread < 0) {
    uv_close((uv_handle_t*) &h->out, NULL);
    return;
  }
  h->out_len += (size_t) nread;
  h->out_buf[h->out_len] = '\0';
  while ((nl = memchr(h->out_buf + h->out_done, '\n',
                      h->out_len - h->out_done)) != NULL) {
    *nl = '\0';
    on_out_line(h, h->out_buf + h->out_done);
    *nl = '\n';
    h->out_done = (size_t) (nl - h->out_buf) + 1;
  }
}

static void on_exit_cb(uv_process_t* proc, int64_t status, int sig) {
  harness_t* h = proc->data;
  int k;
  h->exited = 1;
  h->exit_status = status;
  h->term_signal = sig;
  uv_close((uv_handle_t*) proc, NULL);
  /* A client that does not read never sees the end by itself. The others
   * close on EOF, after the last byte (which may still be on its way). */
  for (k = 0; k < h->next_connect; k++)
    if (h->c[k].slow)
      client_close(&h->c[k]);
}

static void on_watchdog(uv_timer_t* t) {
  harness_t* h = t->data;
  int k;
  h->timed_out = 1;
  if (!h->exited)
    uv_process_kill(&h->proc, SIGKILL);
  for (k = 0; k < h->next_connect; k++)
    client_close(&h->c[k]);
}

/* Run the sample `name` with args (args[0] is filled in) until it exited
 * and every client closed. UVQ_SAMPLE_PREFIX, when set, is a command put in
 * front, split on spaces, e.g. to run the samples under valgrind:
 *   UVQ_SAMPLE_PREFIX="$PWD/libtool --mode=execute valgrind -q
 *   --error-exitcode=1 --leak-check=full" CK_RUN_SUITE=samples
 *   ./test/check_uvq */
static void run_sample(harness_t* h, const char* name, char** args,
                       int mode, int nclients) {
  uv_process_options_t po;
  uv_stdio_container_t stdio[3];
  char path[1024];
  char prefix[1024];
  char* argv[64];
  int argc = 0;
  const char* env = getenv("UVQ_SAMPLE_PREFIX");
  const char* mult = getenv("CK_TIMEOUT_MULTIPLIER");
  uint64_t watchdog = WATCHDOG_MS;
  int r;

  memset(h, 0, sizeof(*h));
  H = h;
  h->mode = mode;
  h->nclients = nclients;
  if (mult != NULL && atoi(mult) > 1)
    watchdog *= (uint64_t) atoi(mult);
  ck_assert_int_eq(uv_loop_init(&h->loop), 0);
  ck_assert_int_eq(uv_pipe_init(&h->loop, &h->out, 0), 0);
  h->out.data = h;
  ck_assert_int_eq(uv_timer_init(&h->loop, &h->watchdog), 0);
  h->watchdog.data = h;
  ck_assert_int_eq(uv_timer_start(&h->watchdog, on_watchdog, watchdog, 0), 0);
  uv_unref((uv_handle_t*) &h->watchdog); /* not a reason to keep running */

  ck_assert_int_lt(snprintf(path, sizeof(path), "%s%s", SAMPLE(""), name),
                   (int) sizeof(path));
  args[0] = path;
  if (env != NULL) {
    char* word;
    ck_assert_uint_lt(strlen(env), sizeof(prefix));
    strcpy(prefix, env);
    for (word = strtok(prefix, " "); word != NULL; word = strtok(NULL, " "))
      argv[argc++] = word;
  }
  for (; *args != NULL; args++) {
    ck_assert_int_lt(argc, 63);
    argv[argc++] = *args;
  }
  argv[argc] = NULL;
  memset(&po, 0, sizeof(po));
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t*) &h->out;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  po.file = argv[0];
  po.args = argv;
  po.exit_cb = on_exit_cb;
  po.stdio = stdio;
  po.stdio_count = 3;
  h->proc.data = h;
  r = uv_spawn(&h->loop, &h->proc, &po);
  ck_assert_msg(r == 0, "cannot run %s: %s", path, uv_strerror(r));
  ck_assert_int_eq(uv_read_start((uv_stream_t*) &h->out, on_out_alloc,
                                 on_out_read), 0);

  uv_run(&h->loop, UV_RUN_DEFAULT);
  uvq_test_loop_done(&h->loop);

  if (h->timed_out) {
    char got[256] = "";
    int k;
    for (k = 0; k < h->next_connect; k++)
      snprintf(got + strlen(got), sizeof(got) - strlen(got), " %zu",
               h->c[k].lines);
    ck_abort_msg("%s did not finish in time; %zu lines sent, the clients "
                 "got%s; output:\n%s", name, h->sent_total, got, h->out_buf);
  }
  ck_assert_int_eq(h->exited, 1);
  ck_assert_msg(h->exit_status == 0 && h->term_signal == 0,
                "%s: exit status %d, signal %d; output:\n%s", name,
                (int) h->exit_status, h->term_signal, h->out_buf);
  ck_assert_int_eq(h->io_errors, 0);
}

static void harness_free(harness_t* h) {
  int k;
  for (k = 0; k < MAX_CLIENTS; k++)
    free(h->c[k].rx);
}

/* Every reading client has every line, exactly once, and saw the server
 * close the connection cleanly. */
static void assert_everyone_got_everything(harness_t* h) {
  char why[256];
  int k;
  for (k = 0; k < h->nclients; k++) {
    tclient_t* c = &h->c[k];
    const char* err;
    if (c->slow)
      continue;
    ck_assert_msg(c->eof && c->read_error == 0,
                  "client %d: eof %d, read error %s", k, c->eof,
                  c->read_error != 0 ? uv_strerror(c->read_error) : "none");
    ck_assert_uint_eq(c->lines, h->sent_total);
    err = verify_client(h, c, why, sizeof(why));
    ck_assert_msg(err == NULL, "%s", err);
  }
}

/* -- tests ----------------------------------------------------------------- */

START_TEST(tcp_broadcast_delivers_every_line_to_every_client_once) {
  static harness_t h;
  char expect[128];
  char* args[] = { NULL, "0", NULL };
  run_sample(&h, "tcp-broadcast", args, MODE_SIGTERM, 4);
  ck_assert_int_eq(h.sigterm_sent, 1);
  assert_everyone_got_everything(&h);
  ck_assert_ptr_nonnull(strstr(h.out_buf, "shutting down: SIGTERM"));
  snprintf(expect, sizeof(expect), "lines %d, deliveries %d, drops 0,",
           4 * LINES_EACH, 4 * 4 * LINES_EACH);
  ck_assert_msg(strstr(h.out_buf, expect) != NULL, "no \"%s\" in:\n%s",
                expect, h.out_buf);
  harness_free(&h);
}
END_TEST

START_TEST(tcp_broadcast_exit_after_flushes_every_line_before_closing) {
  static harness_t h;
  char limit[32];
  char* args[] = { NULL, "--exit-after", limit, "0", NULL };
  snprintf(limit, sizeof(limit), "%d", 5 * LINES_EACH);
  run_sample(&h, "tcp-broadcast", args, MODE_EXIT_AFTER, 5);
  ck_assert_int_eq(h.sigterm_sent, 0);
  /* The server stopped on its own after the last line, and still every
   * client got every line before its connection closed (drain stop, then
   * uv_shutdown). */
  assert_everyone_got_everything(&h);
  ck_assert_ptr_nonnull(strstr(h.out_buf,
                               "shutting down: line limit reached"));
  harness_free(&h);
}
END_TEST

START_TEST(tcp_broadcast_drops_and_disconnects_a_client_that_does_not_read) {
  static harness_t h;
  char* args[] = { NULL, "-c", "32", "-d", "16", "0", NULL };
  run_sample(&h, "tcp-broadcast", args, MODE_SLOW, 3);
  ck_assert_msg(h.wrong_kick == 0, "client %d, which reads, was dropped "
                "as too slow; output:\n%s", h.wrong_kick, h.out_buf);
  ck_assert_msg(h.kicked, "the slow client was never disconnected after "
                "%zu lines; output:\n%s", h.sent_total, h.out_buf);
  /* The two readers got every line although the third never read. */
  assert_everyone_got_everything(&h);
  ck_assert_ptr_nonnull(strstr(h.out_buf, "client 1 left (too slow)"));
  ck_assert_ptr_nonnull(strstr(h.out_buf, "disconnected as too slow 1"));
  harness_free(&h);
}
END_TEST

/* One client floods: the server's inbox passes its high watermark, the
 * server stops reading from everyone until the inbox drained to its low
 * watermark, and TCP holds the rest: nothing is dropped or lost. */
START_TEST(tcp_broadcast_pauses_reading_while_its_inbox_is_deep) {
  static harness_t h;
  char expect[128];
  char* args[] = { NULL, "0", NULL };
  const char* at;
  unsigned pauses = 0;
  run_sample(&h, "tcp-broadcast", args, MODE_FLOOD, 2);
  ck_assert_int_eq(h.sigterm_sent, 1);
  assert_everyone_got_everything(&h);
  snprintf(expect, sizeof(expect), "lines %d, deliveries %d, drops 0,",
           FLOOD_LINES + LINES_EACH, 2 * (FLOOD_LINES + LINES_EACH));
  ck_assert_msg(strstr(h.out_buf, expect) != NULL, "no \"%s\" in:\n%s",
                expect, h.out_buf);
  at = strstr(h.out_buf, "; reading paused ");
  ck_assert_msg(at != NULL && sscanf(at, "; reading paused %u times",
                                     &pauses) == 1,
                "no pause count in:\n%s", h.out_buf);
  ck_assert_msg(pauses >= 1, "%d lines in one write never filled the "
                "inbox; output:\n%s", FLOOD_LINES, h.out_buf);
  harness_free(&h);
}
END_TEST

START_TEST(retry_pipeline_sample_accounts_for_every_event) {
  static harness_t h;
  char* backoff[] = { NULL, "-n", "150", NULL };
  char* breaker[] = { NULL, "-n", "100", "-w", "3", "-s", "breaker", "-c",
                      "1", NULL };
  run_sample(&h, "retry-pipeline", backoff, MODE_PLAIN, 0);
  ck_assert_msg(strstr(h.out_buf, "all accounted for") != NULL, "%s",
                h.out_buf);
  ck_assert_ptr_null(strstr(h.out_buf, "FAILED"));
  run_sample(&h, "retry-pipeline", breaker, MODE_PLAIN, 0);
  ck_assert_msg(strstr(h.out_buf, "all accounted for") != NULL, "%s",
                h.out_buf);
  ck_assert_ptr_null(strstr(h.out_buf, "FAILED"));
}
END_TEST

Suite* samples_suite(void) {
  Suite* s = suite_create("samples");
  TCase* tc = tcase_create("samples");
  /* Each case takes well under a second; the watchdog (8 s) fails first. */
  tcase_set_timeout(tc, 10);
  tcase_add_test(tc, tcp_broadcast_delivers_every_line_to_every_client_once);
  tcase_add_test(tc,
                 tcp_broadcast_exit_after_flushes_every_line_before_closing);
  tcase_add_test(
      tc, tcp_broadcast_drops_and_disconnects_a_client_that_does_not_read);
  tcase_add_test(tc, tcp_broadcast_pauses_reading_while_its_inbox_is_deep);
  tcase_add_test(tc, retry_pipeline_sample_accounts_for_every_event);
  suite_add_tcase(s, tc);
  return s;
}
