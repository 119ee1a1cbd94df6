/* broadcast-cases.c: uvq's broadcaster fanning events out to S counting
 * sinks; the figure is deliveries (events x sinks) per second.
 *
 * Two writers:
 *   direct  the loop thread writes each event to the broadcaster itself
 *           (uvq_sink_write): the fan-out alone;
 *   queued  one producer thread enqueues into an unbounded queue whose sink
 *           is the broadcaster (uvq_queue_init_sink): a writer on another
 *           thread, as in go-events, where one goroutine writes and the
 *           broadcaster's goroutine fans out. Issue 4's targets are judged
 *           on this one.
 *
 *   [producer] --enqueue--> queue --drain--> broadcaster --> sink 1..S
 *                                  (loop thread)             count, order
 *
 * Each sink checks that it sees every event once and in order (sequence
 * numbers 0, 1, 2, ...), the totals are checked against the broadcaster's
 * counters, and every event's reference count must come back where it
 * started: 1 (direct: the writer's own) or released exactly once (queued:
 * the queue drops its hold after the fan-out).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

typedef struct {
  uvq_sink_t sink; /* first: the write callback casts back */
  uint64_t count;
  uint32_t next;   /* the sequence number due next */
  uint64_t violations;
  char what[200];
} csink_t;

typedef struct {
  const brun_cfg_t* cfg;
  uv_loop_t loop;
  uvq_broadcast_t b;
  csink_t* sinks;
  uvq_queue_t q;
  bench_ev_t* evs;
  uint64_t released;
  uint64_t t_start;
  uint64_t t_last;
  int b_closed;
  int q_closed;
  uint64_t producer_errors;
  int first_err;
  uvq_broadcast_stats_t bst;
  uvq_queue_stats_t qst;
} brun_t;

/* Release callbacks get no user pointer; runs are one at a time and the
 * release runs on the loop thread. */
static brun_t* current;

static int csink_write(uvq_sink_t* s, uvq_event_t* e) {
  csink_t* c = (csink_t*) s;
  bench_ev_t* ev = (bench_ev_t*) e;
  if (ev->seq != c->next)
    bench_violation(&c->violations, c->what, sizeof(c->what),
                    "a sink got event %u when %u was due", ev->seq,
                    c->next);
  c->next = ev->seq + 1;
  c->count++;
  return 0;
}

static const uvq_sink_vtable_t csink_vt = {csink_write, NULL};

static void on_release(uvq_event_t* e) {
  bench_ev_t* ev = (bench_ev_t*) e;
  brun_t* r = current;
  ev->done++;
  if (++r->released == r->cfg->events)
    r->t_last = uv_hrtime();
}

static void on_b_closed(uvq_sink_t* s) {
  brun_t* r = current;
  (void) s;
  uvq_broadcast_stats(&r->b, &r->bst);
  r->b_closed = 1;
}

static void on_q_closed(uvq_queue_t* q) {
  brun_t* r = current;
  uvq_queue_stats(q, &r->qst);
  r->q_closed = 1;
}

static void producer_main(void* arg) {
  brun_t* r = arg;
  uint64_t i;
  int e;
  for (i = 0; i < r->cfg->events; i++) {
    e = uvq_queue_enqueue(&r->q, &r->evs[i].link);
    if (e != 0 && r->producer_errors++ == 0)
      r->first_err = e;
  }
  e = uvq_queue_stop(&r->q, UVQ_STOP_DRAIN, on_q_closed);
  if (e != 0 && r->producer_errors++ == 0)
    r->first_err = e;
}

int bench_broadcast_run(const brun_cfg_t* c, bench_ev_t* evs,
                        brun_res_t* res) {
  brun_t* r;
  uint64_t i, t_end;
  unsigned k;
  int e;

  memset(res, 0, sizeof(*res));
  if (c->sinks == 0 || c->events == 0 || c->events > UINT32_MAX)
    return -1;
  r = aligned_alloc(64, (sizeof(*r) + 63) / 64 * 64);
  if (r == NULL)
    return -1;
  memset(r, 0, sizeof(*r));
  r->cfg = c;
  r->evs = evs;
  r->sinks = calloc(c->sinks, sizeof(*r->sinks));
  if (r->sinks == NULL)
    return -1;
  current = r;
  for (i = 0; i < c->events; i++) {
    evs[i].seq = (uint32_t) i;
    evs[i].producer = 0;
    evs[i].done = 0;
    evs[i].t_enq = 0;
    uvq_event_init(&evs[i].link, c->queued ? on_release : NULL);
  }

  if ((e = uv_loop_init(&r->loop)) != 0 ||
      (e = uvq_broadcast_init(&r->b)) != 0) {
    fprintf(stderr, "uvq-bench: broadcaster setup: %s\n", uvq_strerror(e));
    return -1;
  }
  for (k = 0; k < c->sinks; k++) {
    if ((e = uvq_sink_init(&r->sinks[k].sink, &csink_vt)) != 0 ||
        (e = uvq_broadcast_add(&r->b, &r->sinks[k].sink)) != 0) {
      fprintf(stderr, "uvq-bench: adding sink %u: %s\n", k, uvq_strerror(e));
      return -1;
    }
  }

  if (!c->queued) {
    r->t_start = uv_hrtime();
    for (i = 0; i < c->events; i++) {
      e = uvq_sink_write(&r->b.sink, &evs[i].link);
      if (e != 0 && r->producer_errors++ == 0)
        r->first_err = e;
    }
    t_end = uv_hrtime();
    uvq_sink_close(&r->b.sink, on_b_closed);
  } else {
    uvq_queue_options_t o;
    uv_thread_t tid;
    memset(&o, 0, sizeof(o)); /* unbounded; release: uvq_event_unref */
    if ((e = uvq_queue_init_sink(&r->loop, &r->q, &r->b.sink, &o)) != 0) {
      fprintf(stderr, "uvq-bench: uvq_queue_init_sink: %s\n",
              uvq_strerror(e));
      return -1;
    }
    r->t_start = uv_hrtime();
    if ((e = uv_thread_create(&tid, producer_main, r)) != 0) {
      fprintf(stderr, "uvq-bench: uv_thread_create: %s\n", uv_strerror(e));
      exit(2);
    }
    /* The producer's drain stop closes the queue, which closes the
     * broadcaster (and it its sinks) after the last event: uv_run ends. */
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_thread_join(&tid);
    t_end = r->t_last != 0 ? r->t_last : uv_hrtime();
    if (!r->b_closed) /* the queue closed it without our callback */
      uvq_broadcast_stats(&r->b, &r->bst);
  }
  uv_run(&r->loop, UV_RUN_DEFAULT);
  if ((e = uv_loop_close(&r->loop)) != 0)
    bench_violation(&res->violations, res->what, sizeof(res->what),
                    "uv_loop_close: %s", uv_err_name(e));

  /* Checks. */
  if (r->producer_errors != 0)
    bench_violation(&res->violations, res->what, sizeof(res->what),
                    "writer: %llu unexpected errors, first %s",
                    (unsigned long long) r->producer_errors,
                    uvq_err_name(r->first_err));
  for (k = 0; k < c->sinks; k++) {
    csink_t* s = &r->sinks[k];
    res->deliveries += s->count;
    if (s->violations != 0) {
      bench_violation(&res->violations, res->what, sizeof(res->what),
                      "sink %u: %s", k, s->what);
      res->violations += s->violations - 1;
    }
    if (s->count != c->events)
      bench_violation(&res->violations, res->what, sizeof(res->what),
                      "sink %u got %llu of %llu events", k,
                      (unsigned long long) s->count,
                      (unsigned long long) c->events);
  }
  if (r->bst.written != c->events ||
      r->bst.deliveries != c->events * c->sinks || r->bst.failures != 0 ||
      r->bst.abandoned != 0)
    bench_violation(&res->violations, res->what, sizeof(res->what),
                    "broadcaster stats: written %llu deliveries %llu "
                    "failures %llu abandoned %llu",
                    (unsigned long long) r->bst.written,
                    (unsigned long long) r->bst.deliveries,
                    (unsigned long long) r->bst.failures,
                    (unsigned long long) r->bst.abandoned);
  if (c->queued && (!r->q_closed || r->qst.delivered != c->events))
    bench_violation(&res->violations, res->what, sizeof(res->what),
                    "queue: closed %d, delivered %llu of %llu", r->q_closed,
                    (unsigned long long) r->qst.delivered,
                    (unsigned long long) c->events);
  for (i = 0; i < c->events; i++) {
    unsigned refs = uvq_event_refs(&evs[i].link);
    if (c->queued ? evs[i].done != 1 || refs != 0 : refs != 1) {
      bench_violation(&res->violations, res->what, sizeof(res->what),
                      "event %llu: %u references left, released %u times",
                      (unsigned long long) i, refs, evs[i].done);
      break;
    }
  }

  res->seconds = (double) (t_end - r->t_start) / 1e9;
  current = NULL;
  free(r->sinks);
  free(r);
  return 0;
}
