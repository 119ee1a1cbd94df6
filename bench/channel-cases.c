/* channel-cases.c: uvq's channel against a mutex + condition variable
 * bounded buffer, with S sender threads and R receiver threads.
 *
 *   senders (S threads)                 receivers (R threads)
 *   send each of its events,            receive until "closed"; check that
 *   blocking while full;                each sender's events come in that
 *   the last one out closes             sender's order, mark each event done
 *
 * The reference is the textbook bounded buffer written with care: one mutex,
 * an array ring, a "not full" and a "not empty" condition variable, and a
 * signal only when someone waits on it. Both patterns hand over one event
 * per call, as a Go channel does.
 *
 * Checks: every event received exactly once (a per-event counter scanned
 * after the run), each receiver sees each sender's events in increasing
 * order (what a FIFO channel promises with any number of receivers), and
 * with one receiver nothing is missing from any sender's sequence. The
 * time runs from the start signal to the last receiver seeing "closed".
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

const char* const bench_cpattern_names[CPAT_COUNT] = {
  "uvq-channel", "mutex+condvar"
};

typedef struct crun_s crun_t;

typedef struct {
  _Alignas(64) crun_t* run;
  unsigned id;
  int sender;
  bench_ev_t* evs;     /* sender: its events */
  uint32_t count;
  uint32_t* next_seq;  /* receiver: per sender, the next sequence allowed */
  uint64_t received;
  uint64_t t_done;
  uint64_t errors;
  int first_err;
  uint64_t violations;
  char what[200];
  uv_thread_t tid;
} cthread_t;

struct crun_s {
  const crun_cfg_t* cfg;
  uvq_channel_t ch;
  /* the reference */
  uv_mutex_t lock;
  uv_cond_t not_full;
  uv_cond_t not_empty;
  bench_ev_t** ring;
  size_t cap;
  size_t head;
  size_t count;
  unsigned send_waiting;
  unsigned recv_waiting;
  int closed;
  /* the start gate */
  uv_mutex_t gate;
  uv_cond_t gate_cond;
  unsigned ready;
  int go;
  atomic_uint senders_done;
};

/* -- the reference bounded buffer ------------------------------------------ */

static int ref_send(crun_t* r, bench_ev_t* ev) {
  size_t i;
  uv_mutex_lock(&r->lock);
  while (r->count == r->cap && !r->closed) {
    r->send_waiting++;
    uv_cond_wait(&r->not_full, &r->lock);
    r->send_waiting--;
  }
  if (r->closed) {
    uv_mutex_unlock(&r->lock);
    return UVQ_ECLOSED;
  }
  i = r->head + r->count;
  if (i >= r->cap)
    i -= r->cap;
  r->ring[i] = ev;
  r->count++;
  if (r->recv_waiting != 0)
    uv_cond_signal(&r->not_empty);
  uv_mutex_unlock(&r->lock);
  return 0;
}

static int ref_recv(crun_t* r, bench_ev_t** out) {
  uv_mutex_lock(&r->lock);
  while (r->count == 0 && !r->closed) {
    r->recv_waiting++;
    uv_cond_wait(&r->not_empty, &r->lock);
    r->recv_waiting--;
  }
  if (r->count == 0) {
    uv_mutex_unlock(&r->lock);
    return UVQ_ECLOSED;
  }
  *out = r->ring[r->head];
  if (++r->head == r->cap)
    r->head = 0;
  r->count--;
  if (r->send_waiting != 0)
    uv_cond_signal(&r->not_full);
  uv_mutex_unlock(&r->lock);
  return 0;
}

static void ref_close(crun_t* r) {
  uv_mutex_lock(&r->lock);
  r->closed = 1;
  uv_cond_broadcast(&r->not_full);
  uv_cond_broadcast(&r->not_empty);
  uv_mutex_unlock(&r->lock);
}

/* -- threads --------------------------------------------------------------- */

static void gate_wait(crun_t* r) {
  uv_mutex_lock(&r->gate);
  r->ready++;
  uv_cond_broadcast(&r->gate_cond);
  while (!r->go)
    uv_cond_wait(&r->gate_cond, &r->gate);
  uv_mutex_unlock(&r->gate);
}

static void note_error(cthread_t* t, int e) {
  if (t->errors++ == 0)
    t->first_err = e;
}

static void sender_main(void* arg) {
  cthread_t* t = arg;
  crun_t* r = t->run;
  int uvq = r->cfg->pattern == CPAT_UVQ_CHANNEL;
  uint32_t i;

  gate_wait(r);
  for (i = 0; i < t->count; i++) {
    int e;
    if (uvq)
      e = uvq_channel_send(&r->ch, &t->evs[i].link);
    else
      e = ref_send(r, &t->evs[i]);
    if (e != 0) {
      note_error(t, e);
      break;
    }
  }
  /* The last sender out closes: receivers drain, then see "closed". */
  if (atomic_fetch_add(&r->senders_done, 1) + 1 == r->cfg->senders) {
    if (uvq) {
      int e = uvq_channel_close(&r->ch);
      if (e != 0)
        note_error(t, e);
    } else {
      ref_close(r);
    }
  }
}

static void receiver_main(void* arg) {
  cthread_t* t = arg;
  crun_t* r = t->run;
  int uvq = r->cfg->pattern == CPAT_UVQ_CHANNEL;
  unsigned senders = r->cfg->senders;

  gate_wait(r);
  for (;;) {
    bench_ev_t* ev = NULL;
    uint32_t p;
    int e;
    if (uvq) {
      uvq_event_t* x;
      e = uvq_channel_recv(&r->ch, &x);
      ev = (bench_ev_t*) x;
    } else {
      e = ref_recv(r, &ev);
    }
    if (e == UVQ_ECLOSED)
      break;
    if (e != 0) {
      note_error(t, e);
      break;
    }
    p = ev->producer;
    if (p >= senders) {
      bench_violation(&t->violations, t->what, sizeof(t->what),
                      "an event names sender %u of %u", p, senders);
      continue;
    }
    if (ev->seq < t->next_seq[p])
      bench_violation(&t->violations, t->what, sizeof(t->what),
                      "order: receiver %u got sender %u's event %u after "
                      "event %u", t->id, p, ev->seq, t->next_seq[p] - 1);
    t->next_seq[p] = ev->seq + 1;
    ev->done++;
    t->received++;
  }
  t->t_done = uv_hrtime();
}

/* -- one run --------------------------------------------------------------- */

int bench_channel_run(const crun_cfg_t* c, bench_ev_t* evs, crun_res_t* res) {
  crun_t* r;
  cthread_t* th;
  unsigned n = c->senders + c->receivers, k;
  uint64_t off = 0, t_start, t_end = 0;
  int e;

  memset(res, 0, sizeof(*res));
  if (c->senders == 0 || c->senders > 65535 || c->receivers == 0 ||
      c->events / c->senders >= UINT32_MAX || c->capacity == 0)
    return -1;
  r = aligned_alloc(64, (sizeof(*r) + 63) / 64 * 64);
  th = aligned_alloc(64, n * sizeof(*th));
  if (r == NULL || th == NULL)
    return -1;
  memset(r, 0, sizeof(*r));
  memset(th, 0, n * sizeof(*th));
  r->cfg = c;
  atomic_init(&r->senders_done, 0);

  if (c->pattern == CPAT_UVQ_CHANNEL) {
    if ((e = uvq_channel_init(&r->ch, c->capacity)) != 0) {
      fprintf(stderr, "uvq-bench: uvq_channel_init: %s\n", uvq_strerror(e));
      return -1;
    }
  } else {
    r->cap = c->capacity;
    r->ring = malloc(r->cap * sizeof(*r->ring));
    if (r->ring == NULL)
      return -1;
    uv_mutex_init(&r->lock);
    uv_cond_init(&r->not_full);
    uv_cond_init(&r->not_empty);
  }
  uv_mutex_init(&r->gate);
  uv_cond_init(&r->gate_cond);

  for (k = 0; k < n; k++) {
    cthread_t* t = &th[k];
    t->run = r;
    t->sender = k < c->senders;
    if (t->sender) {
      uint32_t i;
      t->id = k;
      t->count = (uint32_t) (c->events / c->senders +
                             (k < c->events % c->senders));
      t->evs = evs + off;
      off += t->count;
      for (i = 0; i < t->count; i++) {
        t->evs[i].seq = i;
        t->evs[i].producer = (uint16_t) k;
        t->evs[i].done = 0;
        t->evs[i].t_enq = 0;
      }
    } else {
      t->id = k - c->senders;
      t->next_seq = calloc(c->senders, sizeof(*t->next_seq));
      if (t->next_seq == NULL)
        return -1;
    }
  }
  for (k = 0; k < n; k++) {
    e = uv_thread_create(&th[k].tid, th[k].sender ? sender_main
                                                  : receiver_main, &th[k]);
    if (e != 0) {
      fprintf(stderr, "uvq-bench: uv_thread_create: %s\n", uv_strerror(e));
      exit(2);
    }
  }
  uv_mutex_lock(&r->gate);
  while (r->ready < n)
    uv_cond_wait(&r->gate_cond, &r->gate);
  t_start = uv_hrtime();
  r->go = 1;
  uv_cond_broadcast(&r->gate_cond);
  uv_mutex_unlock(&r->gate);
  for (k = 0; k < n; k++)
    uv_thread_join(&th[k].tid);

  /* Checks, then the figures. */
  for (k = 0; k < n; k++) {
    cthread_t* t = &th[k];
    if (t->errors != 0)
      bench_violation(&res->violations, res->what, sizeof(res->what),
                      "%s %u: %llu unexpected errors, first %s",
                      t->sender ? "sender" : "receiver", t->id,
                      (unsigned long long) t->errors,
                      uvq_err_name(t->first_err));
    if (t->violations != 0) {
      bench_violation(&res->violations, res->what, sizeof(res->what), "%s",
                      t->what);
      res->violations += t->violations - 1;
    }
    if (!t->sender) {
      res->received += t->received;
      if (t->t_done > t_end)
        t_end = t->t_done;
    }
  }
  if (res->received != c->events)
    bench_violation(&res->violations, res->what, sizeof(res->what),
                    "count: %llu received of %llu sent",
                    (unsigned long long) res->received,
                    (unsigned long long) c->events);
  for (k = 0; k < c->senders; k++) {
    uint32_t i;
    for (i = 0; i < th[k].count; i++) {
      if (th[k].evs[i].done != 1) {
        bench_violation(&res->violations, res->what, sizeof(res->what),
                        "exactly-once: sender %u's event %u was received %u "
                        "times", k, i, th[k].evs[i].done);
        break;
      }
    }
    if (c->receivers == 1 && th[c->senders].next_seq[k] != th[k].count)
      bench_violation(&res->violations, res->what, sizeof(res->what),
                      "sender %u: last event received %u, sent %u", k,
                      th[c->senders].next_seq[k], th[k].count);
  }
  res->seconds = (double) (t_end - t_start) / 1e9;

  if (c->pattern == CPAT_UVQ_CHANNEL) {
    if ((e = uvq_channel_destroy(&r->ch)) != 0)
      bench_violation(&res->violations, res->what, sizeof(res->what),
                      "uvq_channel_destroy: %s", uvq_err_name(e));
  } else {
    uv_cond_destroy(&r->not_empty);
    uv_cond_destroy(&r->not_full);
    uv_mutex_destroy(&r->lock);
    free(r->ring);
  }
  uv_cond_destroy(&r->gate_cond);
  uv_mutex_destroy(&r->gate);
  for (k = 0; k < n; k++)
    free(th[k].next_seq);
  free(th);
  free(r);
  return 0;
}
