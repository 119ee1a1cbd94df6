/* uvq-bench: how fast uvq hands events over, next to the bridges people
 * write by hand, measured in the same run.
 *
 * Run `uvq-bench --help` for the options; bench/README.md says what every
 * column means and how `make bench` runs it. In short:
 *
 *   queue      P producers (1, 2, 4, 8) push N events to the loop thread,
 *              which checks and counts them. Five patterns (uvq unbounded,
 *              uvq bounded blocking, uvq bounded dropping, and two
 *              hand-written references) run round-robin within each
 *              repetition, so every ratio compares runs made under the same
 *              conditions. Each case also runs at a paced offered load, for
 *              latency on a quiet queue.
 *   channel    P sender threads, C receiver threads, uvq's channel against a
 *              mutex + condition variable bounded buffer, round-robin too.
 *   broadcast  a broadcaster fans events out to 1, 10 and 100 counting
 *              sinks, written to by the loop thread itself or by one
 *              producer thread through a queue.
 *
 * Every run checks exactly-once delivery and each producer's order; any
 * violation is printed and makes the program exit with status 1. The
 * targets of issue 4 are printed as MET / NOT MET with the figures; they do
 * not change the exit status (a noisy machine is not a bug).
 *
 * `uvq-bench --callgrind PATTERN` runs one pattern with one producer and a
 * minimal consumer, for instruction counts (bench/callgrind.sh).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

#define MAX_LIST 16

/* -- options --------------------------------------------------------------- */

typedef struct {
  uint64_t events;
  unsigned runs;
  unsigned producers[MAX_LIST];
  unsigned nproducers;
  int patterns[PAT_COUNT]; /* which queue patterns run */
  size_t capacity;
  double rate;
  uint64_t paced_events;
  unsigned paced_runs;
  unsigned long timer_slack;
  unsigned poll_us;
  unsigned sample_every;
  uint64_t channel_events;
  size_t channel_capacity;
  unsigned chan_p[MAX_LIST];
  unsigned chan_c[MAX_LIST];
  unsigned nchan;
  uint64_t broadcast_deliveries;
  unsigned sinks[MAX_LIST];
  unsigned nsinks;
  int do_queue, do_channel, do_broadcast;
  int quick;
  double stall_seconds;
  const char* json;
  const char* dat;
  const char* callgrind;
} opts_t;

static void usage(FILE* f) {
  fputs(
"usage: uvq-bench [options]\n"
"  --events N          queue events per run, in total (default 2000000)\n"
"  --runs R            repetitions of every case, at least 1 (default 5)\n"
"  --producers LIST    producer counts (default 1,2,4,8)\n"
"  --patterns LIST     queue patterns (default all): uvq-unbounded,\n"
"                      uvq-block, uvq-drop, uvq-poll, ref-malloc, ref-ring\n"
"  --capacity C        bounded queue capacity (default 1024)\n"
"  --rate R            paced offered load, events/s in total (default 200000)\n"
"  --paced-events N    events per paced run (default 50000; 0: no paced runs)\n"
"  --paced-runs R      paced repetitions (default 5)\n"
"  --timer-slack NS    paced producers' timer slack in ns (Linux; default:\n"
"                      the system's, 50000 unless changed)\n"
"  --poll-us US        uvq-poll's poll window (default 1000)\n"
"  --sample-every K    at saturation, stamp every K-th event for latency\n"
"                      (a power of two, default 64; 0: none)\n"
"  --channel-events N  channel events per run (default: --events)\n"
"  --channel LIST      sender x receiver pairs (default 1x1,2x1,4x1,2x2,4x4)\n"
"  --deliveries N      broadcaster events x sinks per run (default 10000000)\n"
"  --sinks LIST        broadcaster sink counts (default 1,10,100)\n"
"  --only LIST         any of queue,channel,broadcast (default all)\n"
"  --quick             small runs for a smoke test (200000 events, 3 runs)\n"
"  --json FILE         also write every figure as JSON\n"
"  --dat FILE          write the chart's data (events/s by producers)\n"
"  --callgrind PATTERN one producer, minimal consumer, --events events\n"
"                      (default 200000), for bench/callgrind.sh; PATTERN\n"
"                      broadcast-S: one producer thread feeds a queue\n"
"                      whose sink is a broadcaster with S counting sinks\n"
"  --help\n", f);
}

/* "broadcast-S" (S from 1 to 1000) as a --callgrind pattern: S, else 0. */
static unsigned callgrind_sinks(const char* name) {
  const char* p = "broadcast-";
  char* end;
  unsigned long v;
  if (strncmp(name, p, strlen(p)) != 0)
    return 0;
  name += strlen(p);
  if (*name < '1' || *name > '9')
    return 0;
  v = strtoul(name, &end, 10);
  return *end == '\0' && v <= 1000 ? (unsigned) v : 0;
}

static int parse_u64(const char* s, uint64_t* out) {
  char* end;
  unsigned long long v;
  if (s == NULL || *s == '\0' || *s == '-')
    return -1;
  v = strtoull(s, &end, 10);
  if (*end != '\0')
    return -1;
  *out = v;
  return 0;
}

static int parse_list(const char* s, unsigned* out, unsigned* n) {
  char buf[256];
  char* tok;
  char* save = NULL;
  *n = 0;
  if (s == NULL || strlen(s) >= sizeof(buf))
    return -1;
  strcpy(buf, s);
  for (tok = strtok_r(buf, ",", &save); tok != NULL;
       tok = strtok_r(NULL, ",", &save)) {
    uint64_t v;
    if (*n == MAX_LIST || parse_u64(tok, &v) != 0 || v == 0 || v > 1024)
      return -1;
    out[(*n)++] = (unsigned) v;
  }
  return *n ? 0 : -1;
}

static int parse_pairs(const char* s, opts_t* o) {
  char buf[256];
  char* tok;
  char* save = NULL;
  o->nchan = 0;
  if (s == NULL || strlen(s) >= sizeof(buf))
    return -1;
  strcpy(buf, s);
  for (tok = strtok_r(buf, ",", &save); tok != NULL;
       tok = strtok_r(NULL, ",", &save)) {
    unsigned p, c;
    char extra;
    if (o->nchan == MAX_LIST ||
        sscanf(tok, "%ux%u%c", &p, &c, &extra) != 2 || p == 0 || c == 0 ||
        p > 1024 || c > 1024)
      return -1;
    o->chan_p[o->nchan] = p;
    o->chan_c[o->nchan++] = c;
  }
  return o->nchan ? 0 : -1;
}

static int parse_opts(int argc, char** argv, opts_t* o) {
  int i;
  int have_events = 0, have_runs = 0, have_paced = 0, have_paced_runs = 0;
  int have_deliveries = 0, have_chan_events = 0;
  uint64_t v;

  memset(o, 0, sizeof(*o));
  o->events = 2000000;
  o->runs = 5;
  o->producers[0] = 1;
  o->producers[1] = 2;
  o->producers[2] = 4;
  o->producers[3] = 8;
  o->nproducers = 4;
  for (i = 0; i < PAT_COUNT; i++)
    o->patterns[i] = 1;
  o->capacity = 1024;
  o->rate = 200000;
  o->poll_us = 1000;
  o->paced_events = 50000;
  o->paced_runs = 5;
  o->sample_every = 64;
  o->channel_capacity = 1024;
  parse_pairs("1x1,2x1,4x1,2x2,4x4", o);
  o->broadcast_deliveries = 10000000;
  o->sinks[0] = 1;
  o->sinks[1] = 10;
  o->sinks[2] = 100;
  o->nsinks = 3;
  o->do_queue = o->do_channel = o->do_broadcast = 1;
  o->stall_seconds = 20;

  for (i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* val = NULL;
    char name[64];
    const char* eq = strchr(a, '=');
    if (strncmp(a, "--", 2) != 0)
      goto bad;
    if (eq != NULL) {
      if ((size_t) (eq - a) >= sizeof(name))
        goto bad;
      memcpy(name, a, (size_t) (eq - a));
      name[eq - a] = '\0';
      val = eq + 1;
    } else {
      snprintf(name, sizeof(name), "%s", a);
    }
#define NEED_VAL()                                                           \
    do {                                                                     \
      if (val == NULL) {                                                     \
        if (i + 1 >= argc)                                                   \
          goto bad;                                                          \
        val = argv[++i];                                                     \
      }                                                                      \
    } while (0)
    if (strcmp(name, "--help") == 0) {
      usage(stdout);
      exit(0);
    } else if (strcmp(name, "--quick") == 0) {
      o->quick = 1;
    } else if (strcmp(name, "--events") == 0) {
      NEED_VAL();
      if (parse_u64(val, &o->events) || o->events == 0 ||
          o->events > UINT32_MAX)
        goto bad;
      have_events = 1;
    } else if (strcmp(name, "--runs") == 0) {
      NEED_VAL();
      if (parse_u64(val, &v) || v == 0 || v > 1000)
        goto bad;
      o->runs = (unsigned) v;
      have_runs = 1;
    } else if (strcmp(name, "--producers") == 0) {
      NEED_VAL();
      if (parse_list(val, o->producers, &o->nproducers))
        goto bad;
    } else if (strcmp(name, "--patterns") == 0) {
      char buf[256];
      char* tok;
      char* save = NULL;
      NEED_VAL();
      if (strlen(val) >= sizeof(buf))
        goto bad;
      strcpy(buf, val);
      memset(o->patterns, 0, sizeof(o->patterns));
      for (tok = strtok_r(buf, ",", &save); tok != NULL;
           tok = strtok_r(NULL, ",", &save)) {
        int p = bench_pattern_parse(tok);
        if (p < 0)
          goto bad;
        o->patterns[p] = 1;
      }
    } else if (strcmp(name, "--capacity") == 0) {
      NEED_VAL();
      if (parse_u64(val, &v) || v == 0 || v > (1u << 30))
        goto bad;
      o->capacity = (size_t) v;
      o->channel_capacity = (size_t) v;
    } else if (strcmp(name, "--rate") == 0) {
      NEED_VAL();
      if (parse_u64(val, &v) || v == 0 || v > 1000000000)
        goto bad;
      o->rate = (double) v;
    } else if (strcmp(name, "--paced-events") == 0) {
      NEED_VAL();
      if (parse_u64(val, &o->paced_events) || o->paced_events > UINT32_MAX)
        goto bad;
      have_paced = 1;
    } else if (strcmp(name, "--paced-runs") == 0) {
      NEED_VAL();
      if (parse_u64(val, &v) || v == 0 || v > 1000)
        goto bad;
      o->paced_runs = (unsigned) v;
      have_paced_runs = 1;
    } else if (strcmp(name, "--timer-slack") == 0) {
      NEED_VAL();
      if (parse_u64(val, &v) || v == 0 || v > 1000000000)
        goto bad;
      if (!bench_timer_slack_ok((unsigned long) v)) {
        fprintf(stderr, "uvq-bench: --timer-slack: cannot set it here\n");
        exit(2);
      }
      o->timer_slack = (unsigned long) v;
    } else if (strcmp(name, "--poll-us") == 0) {
      NEED_VAL();
      if (parse_u64(val, &v) || v == 0 || v > UVQ_MAX_POLL_US)
        goto bad;
      o->poll_us = (unsigned) v;
    } else if (strcmp(name, "--sample-every") == 0) {
      NEED_VAL();
      if (parse_u64(val, &v) || v > (1u << 30) || (v & (v - 1)) != 0)
        goto bad;
      o->sample_every = (unsigned) v;
    } else if (strcmp(name, "--channel-events") == 0) {
      NEED_VAL();
      if (parse_u64(val, &o->channel_events) || o->channel_events == 0 ||
          o->channel_events > UINT32_MAX)
        goto bad;
      have_chan_events = 1;
    } else if (strcmp(name, "--channel") == 0) {
      NEED_VAL();
      if (parse_pairs(val, o))
        goto bad;
    } else if (strcmp(name, "--deliveries") == 0) {
      NEED_VAL();
      if (parse_u64(val, &o->broadcast_deliveries) ||
          o->broadcast_deliveries == 0)
        goto bad;
      have_deliveries = 1;
    } else if (strcmp(name, "--sinks") == 0) {
      NEED_VAL();
      if (parse_list(val, o->sinks, &o->nsinks))
        goto bad;
    } else if (strcmp(name, "--only") == 0) {
      NEED_VAL();
      o->do_queue = strstr(val, "queue") != NULL;
      o->do_channel = strstr(val, "channel") != NULL;
      o->do_broadcast = strstr(val, "broadcast") != NULL;
      if (!o->do_queue && !o->do_channel && !o->do_broadcast)
        goto bad;
    } else if (strcmp(name, "--json") == 0) {
      NEED_VAL();
      o->json = val;
    } else if (strcmp(name, "--dat") == 0) {
      NEED_VAL();
      o->dat = val;
    } else if (strcmp(name, "--callgrind") == 0) {
      NEED_VAL();
      if (bench_pattern_parse(val) < 0 && callgrind_sinks(val) == 0)
        goto bad;
      o->callgrind = val;
    } else {
      goto bad;
    }
#undef NEED_VAL
    continue;
  bad:
    fprintf(stderr, "uvq-bench: bad option or value: %s\n", a);
    usage(stderr);
    return -1;
  }

  if (o->quick) {
    if (!have_events)
      o->events = 200000;
    if (!have_runs)
      o->runs = 3;
    if (!have_paced)
      o->paced_events = 10000;
    if (!have_paced_runs)
      o->paced_runs = 1;
    if (!have_deliveries)
      o->broadcast_deliveries = 1000000;
  }
  if (o->callgrind != NULL && !have_events)
    o->events = 200000;
  if (!have_chan_events)
    o->channel_events = o->events;
  return 0;
}

/* -- results --------------------------------------------------------------- */

typedef struct {
  double med, min, max;
} spread_t;

typedef struct {
  pattern_t pat;
  unsigned producers;
  int ran;
  unsigned nruns;
  double* rate;      /* events/s of each repetition (0: not run) */
  double* wake;      /* wakeups per event */
  double* pass;      /* drain passes per event */
  double* kept;      /* delivered / events */
  int64_t peak_mem;  /* from the memory run; -1 unknown */
  uint64_t max_depth;
  uint64_t violations;
  uint64_t* sat;     /* pooled saturated latency samples (ns) */
  size_t nsat;
  uint64_t* paced;   /* pooled paced latency samples (ns) */
  size_t npaced;
  uint64_t* paced_slot; /* the same from each event's slot (ns) */
  size_t npaced_slot;
  double* rep_p50;   /* each paced repetition's own p50 and p99 (us) */
  double* rep_p99;
  double paced_secs; /* summed duration of the paced runs */
  double paced_cpu;  /* and the process's CPU time during them */
  uint64_t paced_evs;
  uint64_t paced_steal; /* ticks of /proc/stat during the paced runs: */
  uint64_t paced_ticks; /* stolen by the hypervisor, and all of them */
  double* rep_steal;    /* each paced repetition's stolen share (NAN: unknown) */
  double* rtt;          /* the cross-CPU round trip (ns) just before each
                         * saturated repetition (NAN: unknown) */
  /* derived */
  spread_t r;
  double wake_med, pass_med, kept_med;
  double sat_q[3], paced_q[3], paced_slot_q[3];
  spread_t ratio[2]; /* vs ref-malloc, vs ref-ring (per repetition) */
  spread_t lat_ratio[2]; /* paced p50, p99 against the better reference of
                          * the same repetition */
  int have_lat_ratio;
  int have_ratio[2];
} qcase_t;

typedef struct {
  cpattern_t pat;
  unsigned senders, receivers;
  unsigned nruns;
  double* rate;
  uint64_t violations;
  spread_t r;
  spread_t ratio; /* uvq channel / condvar reference, per repetition */
  int have_ratio;
} ccase_t;

typedef struct {
  unsigned sinks;
  int queued;   /* the writer: 0 the loop thread, 1 a thread via a queue */
  uint64_t events;
  unsigned nruns;
  double* rate; /* events x sinks per second */
  uint64_t violations;
  spread_t r;
} bcase_t;

typedef struct {
  char name[96];
  int met;
  char figure[400];
} target_t;

static uint64_t g_violations;
/* The cross-CPU probe before each saturated queue repetition: round trips
 * per probe (a few milliseconds at most here), and the two CPUs it used. */
#define RTT_ROUNDS 4000u
static int g_rtt_cpu[2] = {-1, -1};

static spread_t spread(const double* v, unsigned n) {
  spread_t s;
  double* tmp = malloc((n ? n : 1) * sizeof(*tmp));
  unsigned i, k = 0;
  for (i = 0; i < n; i++)
    if (v[i] > 0)
      tmp[k++] = v[i];
  s.med = bench_median(tmp, k);
  bench_minmax(tmp, k, &s.min, &s.max);
  free(tmp);
  return s;
}

/* Every saturated queue repetition's cross-CPU round trip, pooled; *n how
 * many were measured (0: none, the figures are then 0). */
static spread_t pooled_rtt(const opts_t* o, const qcase_t* cases,
                           unsigned* n) {
  unsigned total = o->nproducers * PAT_COUNT * o->runs;
  double* all = malloc((total ? total : 1) * sizeof(*all));
  unsigned i, rep, k = 0;
  spread_t s;
  if (all == NULL)
    exit(2);
  for (i = 0; i < o->nproducers * PAT_COUNT; i++)
    for (rep = 0; cases[i].ran && rep < o->runs; rep++)
      if (cases[i].rtt[rep] > 0)
        all[k++] = cases[i].rtt[rep];
  s = spread(all, k);
  free(all);
  *n = k;
  return s;
}

static void append(uint64_t** dst, size_t* n, const uint64_t* src, size_t k) {
  uint64_t* p;
  if (k == 0)
    return;
  p = realloc(*dst, (*n + k) * sizeof(*p));
  if (p == NULL) {
    fprintf(stderr, "uvq-bench: out of memory for latency samples\n");
    exit(2);
  }
  memcpy(p + *n, src, k * sizeof(*p));
  *dst = p;
  *n += k;
}

static void quantiles(uint64_t* v, size_t n, double out[3]) {
  bench_sort_u64(v, n);
  out[0] = (double) bench_quantile_sorted(v, n, 0.50) / 1e3;
  out[1] = (double) bench_quantile_sorted(v, n, 0.99) / 1e3;
  out[2] = (double) bench_quantile_sorted(v, n, 0.999) / 1e3;
}

static void report_violation(const char* what, const char* detail) {
  fprintf(stderr, "\nuvq-bench: VIOLATION in %s: %s\n", what, detail);
}

/* -- the queue cases ------------------------------------------------------- */

static bench_ev_t* alloc_events(uint64_t n) {
  bench_ev_t* evs = calloc(n, sizeof(*evs));
  if (evs == NULL) {
    fprintf(stderr, "uvq-bench: cannot allocate %llu events\n",
            (unsigned long long) n);
    exit(2);
  }
  return evs;
}

/* The order of the patterns in repetition rep: a shuffle, the same in every
 * run of the program. Rotating one fixed order let every pattern follow
 * the same neighbour each time (ref-ring after ref-malloc, uvq after
 * ref-ring), so whatever a run leaves behind (allocator state, caches, the
 * host's view of the vCPUs) always fell on the same pattern. */
static void shuffled(int* out, const int* pats, unsigned npat, unsigned rep,
                     unsigned producers) {
  uint32_t x = (rep + 1) * 2654435761u ^ (producers + 1) * 40503u;
  unsigned k;
  memcpy(out, pats, npat * sizeof(*out));
  for (k = npat; k > 1; k--) {
    unsigned j;
    int t;
    x ^= x << 13; /* xorshift32 */
    x ^= x >> 17;
    x ^= x << 5;
    j = x % k;
    t = out[k - 1];
    out[k - 1] = out[j];
    out[j] = t;
  }
}

/* A saturated run of pattern pat with P producers, as the options say. */
static void saturated_cfg(const opts_t* o, int pat, unsigned P,
                          qrun_cfg_t* cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->pattern = (pattern_t) pat;
  cfg->producers = P;
  cfg->events = o->events;
  cfg->capacity = o->capacity;
  cfg->poll_us = o->poll_us;
  cfg->sample_every = o->sample_every;
  cfg->stall_seconds = o->stall_seconds;
}

/* One untimed run of pattern pat: with measure_mem, the case's peak memory;
 * without, a warm-up. Violations count as in a timed run. */
static void untimed_run(const opts_t* o, qcase_t* c, int pat, unsigned P,
                        bench_ev_t* evs, int measure_mem) {
  qrun_cfg_t cfg;
  qrun_res_t res;
  saturated_cfg(o, pat, P, &cfg);
  if (measure_mem)
    cfg.sample_every = 0;
  cfg.measure_mem = measure_mem;
  if (bench_queue_run(&cfg, evs, &res) != 0)
    exit(2);
  if (measure_mem)
    c->peak_mem = res.peak_mem;
  free(res.lat);
  free(res.lat_sched);
  if (res.violations != 0) {
    char where[80];
    snprintf(where, sizeof(where), "%s, %u producers, %s run",
             bench_pattern_names[pat], P, measure_mem ? "memory" : "warm-up");
    report_violation(where, res.what);
    c->violations += res.violations;
    g_violations += res.violations;
  }
}

static void run_queue(const opts_t* o, qcase_t* cases) {
  uint64_t maxev = o->events > o->paced_events ? o->events : o->paced_events;
  bench_ev_t* evs = alloc_events(maxev);
  int pats[PAT_COUNT];
  unsigned npat = 0, pi, rep, k;

  for (k = 0; k < PAT_COUNT; k++)
    if (o->patterns[k])
      pats[npat++] = (int) k;

  for (pi = 0; pi < o->nproducers; pi++) {
    unsigned P = o->producers[pi];
    fprintf(stderr, "queue, %u producer%s: mem", P, P == 1 ? "" : "s");
    /* One untimed run per pattern measures peak memory (after giving free
     * heap back, so nothing earlier is reused); then one more warms up
     * what the timed runs reuse (malloc's arenas, which the memory run
     * trimmed, thread stacks, ref-ring's grown array), as in a process
     * that has been running for a while. */
    for (k = 0; k < npat; k++)
      untimed_run(o, &cases[pi * PAT_COUNT + pats[k]], pats[k], P, evs, 1);
    fprintf(stderr, " warm");
    for (k = 0; k < npat; k++)
      untimed_run(o, &cases[pi * PAT_COUNT + pats[k]], pats[k], P, evs, 0);
    for (rep = 0; rep < o->runs; rep++) {
      int order[PAT_COUNT];
      shuffled(order, pats, npat, rep, P);
      for (k = 0; k < npat; k++) {
        int pat = order[k];
        qcase_t* c = &cases[pi * PAT_COUNT + pat];
        qrun_cfg_t cfg;
        qrun_res_t res;
        saturated_cfg(o, pat, P, &cfg);
        c->rtt[rep] = bench_cross_cpu_rtt_ns(RTT_ROUNDS, &g_rtt_cpu[0],
                                             &g_rtt_cpu[1]);
        if (bench_queue_run(&cfg, evs, &res) != 0)
          exit(2);
        c->ran = 1;
        c->rate[rep] = (double) o->events / res.seconds;
        c->wake[rep] = (double) res.wakeups / (double) o->events;
        c->pass[rep] = (double) res.passes / (double) o->events;
        c->kept[rep] = (double) res.delivered / (double) o->events;
        if (res.max_depth > c->max_depth)
          c->max_depth = res.max_depth;
        append(&c->sat, &c->nsat, res.lat, res.nlat);
        free(res.lat);
        if (res.violations != 0) {
          char where[64];
          snprintf(where, sizeof(where), "%s, %u producers, run %u",
                   bench_pattern_names[pat], P, rep + 1);
          report_violation(where, res.what);
          c->violations += res.violations;
          g_violations += res.violations;
        }
      }
      fprintf(stderr, " %u", rep + 1);
    }
    for (rep = 0; o->paced_events != 0 && rep < o->paced_runs; rep++) {
      int order[PAT_COUNT];
      shuffled(order, pats, npat, rep + 1000, P);
      for (k = 0; k < npat; k++) {
        int pat = order[k];
        qcase_t* c = &cases[pi * PAT_COUNT + pat];
        qrun_cfg_t cfg;
        qrun_res_t res;
        uint64_t steal0 = 0, ticks0 = 0, steal1, ticks1;
        int have_ticks;
        saturated_cfg(o, pat, P, &cfg);
        cfg.events = o->paced_events;
        cfg.sample_every = 0; /* paced runs stamp every event */
        cfg.rate = o->rate;
        cfg.timer_slack = o->timer_slack;
        have_ticks = bench_host_ticks(&steal0, &ticks0) == 0;
        if (bench_queue_run(&cfg, evs, &res) != 0)
          exit(2);
        c->rep_steal[rep] = NAN;
        if (have_ticks && bench_host_ticks(&steal1, &ticks1) == 0 &&
            ticks1 > ticks0) {
          c->paced_steal += steal1 - steal0;
          c->paced_ticks += ticks1 - ticks0;
          c->rep_steal[rep] =
              (double) (steal1 - steal0) / (double) (ticks1 - ticks0);
        }
        if (res.nlat != 0) {
          double q[3];
          quantiles(res.lat, res.nlat, q);
          c->rep_p50[rep] = q[0];
          c->rep_p99[rep] = q[1];
        }
        append(&c->paced, &c->npaced, res.lat, res.nlat);
        if (res.lat_sched != NULL)
          append(&c->paced_slot, &c->npaced_slot, res.lat_sched, res.nlat);
        free(res.lat);
        free(res.lat_sched);
        c->paced_secs += res.seconds;
        c->paced_cpu += res.cpu_seconds;
        c->paced_evs += o->paced_events;
        if (res.violations != 0) {
          char where[80];
          snprintf(where, sizeof(where), "%s, %u producers, paced run %u",
                   bench_pattern_names[pat], P, rep + 1);
          report_violation(where, res.what);
          c->violations += res.violations;
          g_violations += res.violations;
        }
      }
      fprintf(stderr, " p%u", rep + 1);
    }
    fprintf(stderr, "\n");
  }
  free(evs);

  /* Derived figures. */
  for (pi = 0; pi < o->nproducers; pi++) {
    for (k = 0; k < PAT_COUNT; k++) {
      qcase_t* c = &cases[pi * PAT_COUNT + k];
      unsigned ref;
      if (!c->ran)
        continue;
      c->r = spread(c->rate, o->runs);
      c->wake_med = spread(c->wake, o->runs).med;
      c->pass_med = spread(c->pass, o->runs).med;
      c->kept_med = spread(c->kept, o->runs).med;
      quantiles(c->sat, c->nsat, c->sat_q);
      quantiles(c->paced, c->npaced, c->paced_q);
      quantiles(c->paced_slot, c->npaced_slot, c->paced_slot_q);
      for (ref = 0; ref < 2; ref++) {
        qcase_t* rc = &cases[pi * PAT_COUNT + PAT_REF_MALLOC + ref];
        double ratio[1000];
        if (k == PAT_REF_MALLOC + ref || !rc->ran)
          continue;
        for (rep = 0; rep < o->runs; rep++)
          ratio[rep] = rc->rate[rep] > 0 ? c->rate[rep] / rc->rate[rep] : 0;
        c->ratio[ref] = spread(ratio, o->runs);
        c->have_ratio[ref] = 1;
      }
    }
    /* Paced latency of each repetition against the better reference of the
     * same repetition, as the throughput ratios: a repetition that the
     * machine disturbed counts once, not through its share of the pool. */
    for (k = 0; o->paced_events != 0 && k < PAT_REF_MALLOC; k++) {
      qcase_t* c = &cases[pi * PAT_COUNT + k];
      qcase_t* a = &cases[pi * PAT_COUNT + PAT_REF_MALLOC];
      qcase_t* b = &cases[pi * PAT_COUNT + PAT_REF_RING];
      double r50[1000], r99[1000];
      unsigned n = 0;
      if (!c->ran || (!a->ran && !b->ran))
        continue;
      for (rep = 0; rep < o->paced_runs; rep++) {
        double m50 = !a->ran ? b->rep_p50[rep]
                     : !b->ran ? a->rep_p50[rep]
                     : fmin(a->rep_p50[rep], b->rep_p50[rep]);
        double m99 = !a->ran ? b->rep_p99[rep]
                     : !b->ran ? a->rep_p99[rep]
                     : fmin(a->rep_p99[rep], b->rep_p99[rep]);
        if (!(m50 > 0 && m99 > 0 && c->rep_p50[rep] > 0))
          continue;
        r50[n] = c->rep_p50[rep] / m50;
        r99[n] = c->rep_p99[rep] / m99;
        n++;
      }
      if (n == 0)
        continue;
      c->lat_ratio[0] = spread(r50, n);
      c->lat_ratio[1] = spread(r99, n);
      c->have_lat_ratio = 1;
    }
  }
}

/* -- the channel cases ----------------------------------------------------- */

static void run_channel(const opts_t* o, ccase_t* cases) {
  bench_ev_t* evs = alloc_events(o->channel_events);
  unsigned ci, rep, k;

  for (ci = 0; ci < o->nchan; ci++) {
    fprintf(stderr, "channel, %u sender%s x %u receiver%s:", o->chan_p[ci],
            o->chan_p[ci] == 1 ? "" : "s", o->chan_c[ci],
            o->chan_c[ci] == 1 ? "" : "s");
    for (rep = 0; rep < o->runs; rep++) {
      for (k = 0; k < CPAT_COUNT; k++) {
        cpattern_t pat = (cpattern_t) ((k + rep) % CPAT_COUNT);
        ccase_t* c = &cases[ci * CPAT_COUNT + pat];
        crun_cfg_t cfg;
        crun_res_t res;
        cfg.pattern = pat;
        cfg.senders = o->chan_p[ci];
        cfg.receivers = o->chan_c[ci];
        cfg.events = o->channel_events;
        cfg.capacity = o->channel_capacity;
        if (bench_channel_run(&cfg, evs, &res) != 0)
          exit(2);
        c->rate[rep] = (double) o->channel_events / res.seconds;
        if (res.violations != 0) {
          char where[96];
          snprintf(where, sizeof(where), "%s, %ux%u, run %u",
                   bench_cpattern_names[pat], cfg.senders, cfg.receivers,
                   rep + 1);
          report_violation(where, res.what);
          c->violations += res.violations;
          g_violations += res.violations;
        }
      }
      fprintf(stderr, " %u", rep + 1);
    }
    fprintf(stderr, "\n");
  }
  free(evs);
  for (ci = 0; ci < o->nchan; ci++) {
    ccase_t* u = &cases[ci * CPAT_COUNT + CPAT_UVQ_CHANNEL];
    ccase_t* ref = &cases[ci * CPAT_COUNT + CPAT_REF_CONDVAR];
    double ratio[1000];
    for (k = 0; k < CPAT_COUNT; k++)
      cases[ci * CPAT_COUNT + k].r = spread(cases[ci * CPAT_COUNT + k].rate,
                                            o->runs);
    for (rep = 0; rep < o->runs; rep++)
      ratio[rep] = ref->rate[rep] > 0 ? u->rate[rep] / ref->rate[rep] : 0;
    u->ratio = spread(ratio, o->runs);
    u->have_ratio = 1;
  }
}

/* -- the broadcaster cases ------------------------------------------------- */

/* Cases 0..nsinks-1: the loop thread writes; nsinks..2*nsinks-1: one
 * producer thread writes through a queue. */
static void run_broadcast(const opts_t* o, bcase_t* cases) {
  unsigned nb = 2 * o->nsinks, i, rep;
  uint64_t maxev = 0;
  bench_ev_t* evs;

  for (i = 0; i < nb; i++) {
    uint64_t n = o->broadcast_deliveries / cases[i].sinks;
    cases[i].events = n < 1000 ? 1000 : n;
    if (cases[i].events > maxev)
      maxev = cases[i].events;
  }
  evs = alloc_events(maxev);
  fprintf(stderr, "broadcast:");
  for (rep = 0; rep < o->runs; rep++) {
    for (i = 0; i < nb; i++) {
      bcase_t* c = &cases[(i + rep) % nb];
      brun_cfg_t cfg;
      brun_res_t res;
      cfg.sinks = c->sinks;
      cfg.events = c->events;
      cfg.queued = c->queued;
      if (bench_broadcast_run(&cfg, evs, &res) != 0)
        exit(2);
      c->rate[rep] = (double) res.deliveries / res.seconds;
      if (res.violations != 0) {
        char where[80];
        snprintf(where, sizeof(where), "broadcast, %u sinks, %s, run %u",
                 c->sinks, c->queued ? "queued" : "direct", rep + 1);
        report_violation(where, res.what);
        c->violations += res.violations;
        g_violations += res.violations;
      }
    }
    fprintf(stderr, " %u", rep + 1);
  }
  fprintf(stderr, "\n");
  free(evs);
  for (i = 0; i < nb; i++)
    cases[i].r = spread(cases[i].rate, o->runs);
}

/* -- targets (issue 4) ----------------------------------------------------- */

static qcase_t* qfind(const opts_t* o, qcase_t* cases, int pat, unsigned P) {
  unsigned pi;
  for (pi = 0; pi < o->nproducers; pi++)
    if (o->producers[pi] == P && cases[pi * PAT_COUNT + pat].ran)
      return &cases[pi * PAT_COUNT + pat];
  return NULL;
}

static void figure_cat(char* dst, size_t size, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void figure_cat(char* dst, size_t size, const char* fmt, ...) {
  va_list ap;
  size_t len = strlen(dst);
  if (len >= size)
    return;
  va_start(ap, fmt);
  vsnprintf(dst + len, size - len, fmt, ap);
  va_end(ap);
}

/* "pattern >= factor x ref-malloc at each of these producer counts". */
static int target_ratio(const opts_t* o, qcase_t* cases, target_t* t,
                        int pat, double factor, const unsigned* ps,
                        unsigned nps) {
  unsigned i;
  int any = 0;
  t->met = 1;
  snprintf(t->name, sizeof(t->name), "%s >= %.1fx ref-malloc",
           bench_pattern_names[pat], factor);
  t->figure[0] = '\0';
  for (i = 0; i < nps; i++) {
    qcase_t* c = qfind(o, cases, pat, ps[i]);
    if (c == NULL || !c->have_ratio[0])
      continue;
    any = 1;
    figure_cat(t->figure, sizeof(t->figure), "%sP%u %.2fx", i ? ", " : "",
               ps[i], c->ratio[0].med);
    if (!(c->ratio[0].med >= factor) || c->violations != 0)
      t->met = 0;
  }
  return any;
}

static unsigned make_targets(const opts_t* o, qcase_t* qc, ccase_t* cc,
                             bcase_t* bc, target_t* t) {
  static const unsigned p124[] = {1, 2, 4};
  static const unsigned p8[] = {8};
  unsigned n = 0, pi, k, i;

  if (o->do_queue && o->patterns[PAT_REF_MALLOC]) {
    if (o->patterns[PAT_UVQ_UNBOUNDED] &&
        target_ratio(o, qc, &t[n], PAT_UVQ_UNBOUNDED, 5.0, p124, 3))
      n++;
    if (o->patterns[PAT_UVQ_BLOCK] &&
        target_ratio(o, qc, &t[n], PAT_UVQ_BLOCK, 2.5, p124, 3))
      n++;
    if (o->patterns[PAT_UVQ_BLOCK] &&
        target_ratio(o, qc, &t[n], PAT_UVQ_BLOCK, 2.5, p8, 1)) {
      snprintf(t[n].name, sizeof(t[n].name),
               "uvq-block, P8: completes, >= 2.5x ref-malloc");
      n++;
    }
  }
  if (o->do_queue) {
    for (k = PAT_UVQ_UNBOUNDED; k <= PAT_UVQ_BLOCK; k++) {
      int any = 0;
      if (!o->patterns[k])
        continue;
      snprintf(t[n].name, sizeof(t[n].name),
               "%s wakeups <= 1 per 200 events", bench_pattern_names[k]);
      t[n].met = 1;
      t[n].figure[0] = '\0';
      for (pi = 0; pi < o->nproducers; pi++) {
        qcase_t* c = &qc[pi * PAT_COUNT + k];
        if (!c->ran)
          continue;
        figure_cat(t[n].figure, sizeof(t[n].figure), "%sP%u 1 per %.0f",
                   any ? ", " : "", c->producers,
                   c->wake_med > 0 ? 1 / c->wake_med : INFINITY);
        any = 1;
        if (!(c->wake_med <= 1.0 / 200))
          t[n].met = 0;
      }
      if (any)
        n++;
    }
    /* Latency at the paced load, against the better of the references:
     * the median over the paced repetitions of uvq's percentile divided by
     * the better reference's in the same repetition (the pooled figures,
     * printed beside it, are those of the latency table). */
    for (k = PAT_UVQ_UNBOUNDED; o->paced_events && k <= PAT_UVQ_POLL; k++) {
      for (i = 0; i < 2; i++) {
        int any = 0;
        if (!o->patterns[k] || k == PAT_UVQ_DROP)
          continue;
        if (i == 0)
          snprintf(t[n].name, sizeof(t[n].name),
                   "%s paced p50 <= 1.5x refs'", bench_pattern_names[k]);
        else
          snprintf(t[n].name, sizeof(t[n].name),
                   "%s paced p99 <= refs'", bench_pattern_names[k]);
        t[n].met = 1;
        t[n].figure[0] = '\0';
        for (pi = 0; pi < o->nproducers; pi++) {
          qcase_t* c = &qc[pi * PAT_COUNT + k];
          qcase_t* a = &qc[pi * PAT_COUNT + PAT_REF_MALLOC];
          qcase_t* b = &qc[pi * PAT_COUNT + PAT_REF_RING];
          double ref;
          if (!c->ran || !c->have_lat_ratio || (!a->ran && !b->ran))
            continue;
          if (a->ran && b->ran)
            ref = fmin(a->paced_q[i], b->paced_q[i]);
          else
            ref = a->ran ? a->paced_q[i] : b->paced_q[i];
          figure_cat(t[n].figure, sizeof(t[n].figure),
                     "%sP%u %.2fx (%.0f vs %.0f us)", any ? ", " : "",
                     c->producers, c->lat_ratio[i].med, c->paced_q[i], ref);
          any = 1;
          if (!(c->lat_ratio[i].med <= (i == 0 ? 1.5 : 1.0)))
            t[n].met = 0;
        }
        if (any)
          n++;
      }
    }
  }
  if (o->do_channel) {
    int any = 0;
    snprintf(t[n].name, sizeof(t[n].name),
             "channel >= 20 M/s (1 receiver)");
    t[n].met = 1;
    t[n].figure[0] = '\0';
    for (i = 0; i < o->nchan; i++) {
      ccase_t* c = &cc[i * CPAT_COUNT + CPAT_UVQ_CHANNEL];
      if (c->receivers != 1)
        continue;
      figure_cat(t[n].figure, sizeof(t[n].figure), "%s%ux%u %.1f M/s",
                 any ? ", " : "", c->senders, c->receivers, c->r.med / 1e6);
      any = 1;
      if (!(c->r.med >= 20e6) || c->violations)
        t[n].met = 0;
    }
    if (any)
      n++;
    snprintf(t[n].name, sizeof(t[n].name), "channel ahead of mutex+condvar");
    t[n].met = 1;
    t[n].figure[0] = '\0';
    for (i = 0; i < o->nchan; i++) {
      ccase_t* c = &cc[i * CPAT_COUNT + CPAT_UVQ_CHANNEL];
      figure_cat(t[n].figure, sizeof(t[n].figure), "%s%ux%u %.2fx",
                 i ? ", " : "", c->senders, c->receivers, c->ratio.med);
      if (!(c->ratio.med > 1.0) || c->violations)
        t[n].met = 0;
    }
    if (o->nchan)
      n++;
  }
  if (o->do_broadcast) {
    /* Judged on the queued writer: like go-events, the writer is another
     * thread and every event crosses to the fan-out's thread. */
    for (i = o->nsinks; i < 2 * o->nsinks; i++) {
      double want;
      if (bc[i].sinks == 1)
        want = 27e6; /* 10x go-events' 2.7 M */
      else if (bc[i].sinks == 100)
        want = 2.91e6; /* 3x go-events' 0.97 M */
      else
        continue;
      snprintf(t[n].name, sizeof(t[n].name),
               "broadcast, %u sink%s >= %.2f M ev x sinks/s", bc[i].sinks,
               bc[i].sinks == 1 ? "" : "s", want / 1e6);
      snprintf(t[n].figure, sizeof(t[n].figure), "%.2f M/s",
               bc[i].r.med / 1e6);
      t[n].met = bc[i].r.med >= want && bc[i].violations == 0;
      n++;
    }
  }
  return n;
}

/* -- printing -------------------------------------------------------------- */

static void fmt_rate(char* buf, size_t size, double v) {
  if (v >= 1e6)
    snprintf(buf, size, "%.2f M", v / 1e6);
  else
    snprintf(buf, size, "%.1f k", v / 1e3);
}

static void fmt_mem(char* buf, size_t size, int64_t v) {
  if (v < 0)
    snprintf(buf, size, "n/a");
  else if (v >= 10 * 1024 * 1024)
    snprintf(buf, size, "%.0f MiB", (double) v / (1024 * 1024));
  else
    snprintf(buf, size, "%.0f KiB", (double) v / 1024);
}

static void fmt_ratio(char* buf, size_t size, const qcase_t* c, int i) {
  if (!c->have_ratio[i])
    snprintf(buf, size, "-");
  else
    snprintf(buf, size, "%.2fx (%.2f-%.2f)", c->ratio[i].med,
             c->ratio[i].min, c->ratio[i].max);
}

static void print_header(const opts_t* o) {
  uv_utsname_t u;
  uv_cpu_info_t* cpus;
  int ncpu = 0;
  if (uv_cpu_info(&cpus, &ncpu) == 0)
    uv_free_cpu_info(cpus, ncpu);
  if (uv_os_uname(&u) != 0)
    strcpy(u.sysname, "?"), u.release[0] = u.machine[0] = '\0';
  printf("uvq-bench%s: %d CPUs, %s %s %s, libuv %s, "
#if defined(__VERSION__)
         "compiler %s\n", o->quick ? " (--quick)" : "", ncpu, u.sysname,
         u.release, u.machine, uv_version_string(), __VERSION__);
#else
         "compiler ?\n", o->quick ? " (--quick)" : "", ncpu, u.sysname,
         u.release, u.machine, uv_version_string());
#endif
}

/* One paired comparison of paced percentiles: the median over the
 * repetitions of a's figure over b's, and in how many a was at most b. */
static void paired(const double* a, const double* b, unsigned n, char* buf,
                   size_t size) {
  double r[1000];
  unsigned i, k = 0, wins = 0;
  for (i = 0; i < n; i++) {
    if (!(a[i] > 0 && b[i] > 0))
      continue;
    r[k++] = a[i] / b[i];
    wins += a[i] <= b[i];
  }
  if (k == 0)
    snprintf(buf, size, "%13s", "-");
  else
    snprintf(buf, size, "%5.2fx %3u/%-3u", bench_median(r, k), wins, k);
}

/* The paced percentiles paired by repetition, against each reference on
 * its own; the references against each other show how far two transports
 * that wake the loop the same way differ here by chance. */
static void print_paired(const opts_t* o, qcase_t* cases) {
  unsigned pi, k, ref;
  printf("\nPaced latency paired by repetition: median over the %u "
         "repetitions of\npattern / reference, and in how many repetitions the "
         "pattern was at most\nthe reference\n", o->paced_runs);
  printf("%-3s %-14s | %-29s | %-29s\n", "", "", "vs ref-malloc",
         "vs ref-ring");
  printf("%-3s %-14s | %14s %14s | %14s %14s\n", "P", "pattern", "p50",
         "p99", "p50", "p99");
  for (pi = 0; pi < o->nproducers; pi++) {
    for (k = 0; k < PAT_COUNT; k++) {
      qcase_t* c = &cases[pi * PAT_COUNT + k];
      char cell[4][32];
      int any = 0;
      if (!c->ran || c->npaced == 0 || k == PAT_UVQ_DROP)
        continue;
      for (ref = 0; ref < 2; ref++) {
        qcase_t* rc = &cases[pi * PAT_COUNT + PAT_REF_MALLOC + ref];
        if (k == PAT_REF_MALLOC + ref || !rc->ran || rc->npaced == 0) {
          snprintf(cell[2 * ref], sizeof(cell[0]), "%14s", "-");
          snprintf(cell[2 * ref + 1], sizeof(cell[0]), "%14s", "-");
          continue;
        }
        paired(c->rep_p50, rc->rep_p50, o->paced_runs, cell[2 * ref],
               sizeof(cell[0]));
        paired(c->rep_p99, rc->rep_p99, o->paced_runs, cell[2 * ref + 1],
               sizeof(cell[0]));
        any = 1;
      }
      if (any)
        printf("%-3u %-14s | %14s %14s | %14s %14s\n", c->producers,
               bench_pattern_names[k], cell[0], cell[1], cell[2], cell[3]);
    }
  }
}

static void print_queue(const opts_t* o, qcase_t* cases) {
  unsigned pi, k;
  char a[32], b[32], c1[32], d[48], e[48];
  uint64_t all_steal = 0, all_ticks = 0;

  printf("\nQueue throughput at saturation: %llu events per run, median of "
         "%u runs [min - max];\nbounded modes: capacity %zu\n",
         (unsigned long long) o->events, o->runs, o->capacity);
  printf("%-3s %-14s %10s %21s %7s %9s %9s %8s %19s %19s\n", "P", "pattern",
         "events/s", "[min - max]", "ns/ev", "wakes/ev", "passes/ev",
         "peak mem", "x ref-malloc", "x ref-ring");
  for (pi = 0; pi < o->nproducers; pi++) {
    for (k = 0; k < PAT_COUNT; k++) {
      qcase_t* c = &cases[pi * PAT_COUNT + k];
      char range[80];
      if (!c->ran)
        continue;
      fmt_rate(a, sizeof(a), c->r.med);
      fmt_rate(b, sizeof(b), c->r.min);
      fmt_rate(c1, sizeof(c1), c->r.max);
      snprintf(range, sizeof(range), "[%s - %s]", b, c1);
      fmt_mem(b, sizeof(b), c->peak_mem);
      fmt_ratio(d, sizeof(d), c, 0);
      fmt_ratio(e, sizeof(e), c, 1);
      printf("%-3u %-14s %10s %21s %7.1f %9.5f %9.5f %8s %19s %19s%s\n",
             c->producers, bench_pattern_names[k], a, range, 1e9 / c->r.med,
             c->wake_med, c->pass_med, b, d, e,
             c->violations ? "  VIOLATIONS" : "");
      if (k == PAT_UVQ_DROP)
        printf("    %-14s delivered %.1f%% of the events, dropped the "
               "rest\n", "", 100 * c->kept_med);
    }
  }
  {
    unsigned n;
    spread_t rtt = pooled_rtt(o, cases, &n);
    if (n == 0)
      printf("cross-CPU round trip: not known here (needs Linux and two "
             "CPUs)\n");
    else
      printf("cross-CPU round trip of one cache line (CPU %d <-> CPU %d, "
             "just before each run):\nmedian %.0f ns [%.0f - %.0f] over %u "
             "runs. Every hand-over moves lines between\nthe cores, so the "
             "events/s follow it; under a hypervisor it is where the host\n"
             "runs the vCPUs at that moment (per run in the JSON).\n",
             g_rtt_cpu[0], g_rtt_cpu[1], rtt.med, rtt.min, rtt.max, n);
  }
  if (o->paced_events == 0 && o->sample_every == 0)
    return;
  printf("\nQueue latency, enqueue -> delivery, microseconds (pooled over "
         "the runs)\n");
  if (o->sample_every != 0)
    printf("%-3s %-14s | saturated, 1 event in %-6u | ", "", "",
           o->sample_every);
  else
    printf("%-3s %-14s | saturated: not sampled      | ", "", "");
  printf("paced, %.0f events/s in total, ", o->rate);
  if (o->timer_slack != 0)
    printf("timer slack %lu ns\n", o->timer_slack);
  else
    printf("default timer slack\n");
  printf("%-3s %-14s | %8s %8s %9s | %8s %8s %9s %8s %6s %6s\n", "P",
         "pattern", "p50", "p99", "p99.9", "p50", "p99", "p99.9", "samples",
         "cores", "steal");
  for (pi = 0; pi < o->nproducers; pi++) {
    for (k = 0; k < PAT_COUNT; k++) {
      qcase_t* c = &cases[pi * PAT_COUNT + k];
      if (!c->ran)
        continue;
      char sat[40], paced[40], cores[16], steal[16];
      if (c->nsat)
        snprintf(sat, sizeof(sat), "%8.1f %8.1f %9.1f", c->sat_q[0],
                 c->sat_q[1], c->sat_q[2]);
      else
        snprintf(sat, sizeof(sat), "%8s %8s %9s", "-", "-", "-");
      if (c->npaced)
        snprintf(paced, sizeof(paced), "%8.1f %8.1f %9.1f", c->paced_q[0],
                 c->paced_q[1], c->paced_q[2]);
      else
        snprintf(paced, sizeof(paced), "%8s %8s %9s", "-", "-", "-");
      if (c->npaced && c->paced_secs > 0)
        snprintf(cores, sizeof(cores), "%6.2f", c->paced_cpu / c->paced_secs);
      else
        snprintf(cores, sizeof(cores), "%6s", "-");
      if (c->npaced && c->paced_ticks > 0)
        snprintf(steal, sizeof(steal), "%5.1f%%",
                 100.0 * (double) c->paced_steal / (double) c->paced_ticks);
      else
        snprintf(steal, sizeof(steal), "%6s", "-");
      printf("%-3u %-14s | %s | %s %8zu %s %s\n", c->producers,
             bench_pattern_names[k], sat, paced, c->npaced, cores, steal);
      all_steal += c->paced_steal;
      all_ticks += c->paced_ticks;
    }
  }
  if (o->paced_events != 0) {
    printf("cores: the process's CPU time over the wall time of the paced "
           "runs (every\nthread). uvq-poll: poll window %u us.\n",
           o->poll_us);
    if (all_ticks > 0)
      printf("steal: the share of the machine's CPU time (every CPU, from "
             "/proc/stat) that\nthe hypervisor gave to others during the "
             "case's paced runs; %.1f%% over all of\nthem. A vCPU taken "
             "away stops whichever thread it runs, so the p99 and p99.9\n"
             "there are the host's as much as the transport's.\n",
             100.0 * (double) all_steal / (double) all_ticks);
    else
      printf("steal: not known on this system (no /proc/stat)\n");
    printf("\nPaced latency from each event's slot (its scheduled time), "
           "microseconds: the\nabove plus how late the producer stamped it "
           "(a sleep that ended late, a\ncore taken by another thread)\n");
    printf("%-3s %-14s | %8s %8s %9s\n", "P", "pattern", "p50", "p99",
           "p99.9");
    for (pi = 0; pi < o->nproducers; pi++) {
      for (k = 0; k < PAT_COUNT; k++) {
        qcase_t* c = &cases[pi * PAT_COUNT + k];
        if (!c->ran || c->npaced_slot == 0)
          continue;
        printf("%-3u %-14s | %8.1f %8.1f %9.1f\n", c->producers,
               bench_pattern_names[k], c->paced_slot_q[0], c->paced_slot_q[1],
               c->paced_slot_q[2]);
      }
    }
    print_paired(o, cases);
  }
}

static void print_channel(const opts_t* o, ccase_t* cases) {
  unsigned ci, k;
  printf("\nChannel: %llu events per run, capacity %zu, median of %u runs\n",
         (unsigned long long) o->channel_events, o->channel_capacity,
         o->runs);
  printf("%-7s %-14s %10s %21s %7s %19s\n", "PxC", "pattern", "events/s",
         "[min - max]", "ns/ev", "x mutex+condvar");
  for (ci = 0; ci < o->nchan; ci++) {
    for (k = 0; k < CPAT_COUNT; k++) {
      ccase_t* c = &cases[ci * CPAT_COUNT + k];
      char a[32], b[32], d[32], range[80], pxc[16], ratio[48];
      fmt_rate(a, sizeof(a), c->r.med);
      fmt_rate(b, sizeof(b), c->r.min);
      fmt_rate(d, sizeof(d), c->r.max);
      snprintf(range, sizeof(range), "[%s - %s]", b, d);
      snprintf(pxc, sizeof(pxc), "%ux%u", c->senders, c->receivers);
      if (c->have_ratio)
        snprintf(ratio, sizeof(ratio), "%.2fx (%.2f-%.2f)", c->ratio.med,
                 c->ratio.min, c->ratio.max);
      else
        snprintf(ratio, sizeof(ratio), "-");
      printf("%-7s %-14s %10s %21s %7.1f %19s%s\n", pxc,
             bench_cpattern_names[k], a, range, 1e9 / c->r.med, ratio,
             c->violations ? "  VIOLATIONS" : "");
    }
  }
}

static void print_broadcast(const opts_t* o, bcase_t* cases) {
  unsigned i;
  printf("\nBroadcaster: counting sinks; events x sinks per second, median "
         "of %u runs.\nwriter: loop = the loop thread writes to the "
         "broadcaster; thread = one producer\nthread enqueues into an "
         "unbounded queue whose sink is the broadcaster\n", o->runs);
  printf("%-6s %-7s %10s %12s %21s %16s\n", "sinks", "writer", "events",
         "ev x sinks/s", "[min - max]", "x go-events");
  for (i = 0; i < 2 * o->nsinks; i++) {
    bcase_t* c = &cases[i];
    char a[32], b[32], d[32], range[80], go[32];
    double ref = c->sinks == 1 ? 2.7e6 : c->sinks == 10 ? 2.1e6
               : c->sinks == 100 ? 0.97e6 : 0;
    fmt_rate(a, sizeof(a), c->r.med);
    fmt_rate(b, sizeof(b), c->r.min);
    fmt_rate(d, sizeof(d), c->r.max);
    snprintf(range, sizeof(range), "[%s - %s]", b, d);
    if (ref > 0)
      snprintf(go, sizeof(go), "%.1fx", c->r.med / ref);
    else
      snprintf(go, sizeof(go), "-");
    printf("%-6u %-7s %10llu %12s %21s %16s%s\n", c->sinks,
           c->queued ? "thread" : "loop", (unsigned long long) c->events, a,
           range, go, c->violations ? "  VIOLATIONS" : "");
  }
  printf("(x go-events: against go-events' Broadcaster figures quoted in "
         "issue 4, 2.7 M,\n2.1 M and 0.97 M for 1, 10 and 100 sinks with "
         "one writer; measured there, not here)\n");
}

static void print_targets(target_t* t, unsigned n) {
  unsigned i;
  printf("\nTargets (issue 4)\n");
  for (i = 0; i < n; i++)
    printf("  %-8s %-46s %s\n", t[i].met ? "MET" : "NOT MET", t[i].name,
           t[i].figure);
  printf("  (instructions per event: run bench/callgrind.sh)\n");
}

/* -- JSON and chart data --------------------------------------------------- */

static void json_str(FILE* f, const char* s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fprintf(f, "\\%c", *s);
    else if ((unsigned char) *s < 0x20)
      fprintf(f, "\\u%04x", *s);
    else
      fputc(*s, f);
  }
  fputc('"', f);
}

static void json_num(FILE* f, double v) {
  if (isfinite(v))
    fprintf(f, "%.6g", v);
  else
    fputs("null", f);
}

static void json_spread(FILE* f, const char* name, spread_t s) {
  fprintf(f, "\"%s\": {\"median\": ", name);
  json_num(f, s.med);
  fputs(", \"min\": ", f);
  json_num(f, s.min);
  fputs(", \"max\": ", f);
  json_num(f, s.max);
  fputs("}", f);
}

static void json_runs(FILE* f, const double* v, unsigned n) {
  unsigned i;
  fputs("[", f);
  for (i = 0; i < n; i++) {
    if (i)
      fputs(", ", f);
    json_num(f, v[i]);
  }
  fputs("]", f);
}

static void json_lat(FILE* f, const char* name, const double q[3],
                     size_t n) {
  fprintf(f, "\"%s\": {\"p50\": ", name);
  json_num(f, n ? q[0] : NAN);
  fputs(", \"p99\": ", f);
  json_num(f, n ? q[1] : NAN);
  fputs(", \"p99_9\": ", f);
  json_num(f, n ? q[2] : NAN);
  fprintf(f, ", \"samples\": %zu}", n);
}

static int write_json(const opts_t* o, qcase_t* qc, ccase_t* cc, bcase_t* bc,
                      target_t* t, unsigned nt) {
  FILE* f = fopen(o->json, "w");
  unsigned i, k, first;
  uv_utsname_t u;
  time_t now = time(NULL);
  char date[32];

  if (f == NULL) {
    perror(o->json);
    return -1;
  }
  if (uv_os_uname(&u) != 0)
    strcpy(u.sysname, "?"), u.release[0] = u.machine[0] = '\0';
  strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  fprintf(f, "{\n  \"bench\": \"uvq-bench\",\n  \"date\": \"%s\",\n", date);
  fprintf(f, "  \"machine\": {\"sysname\": ");
  json_str(f, u.sysname);
  fputs(", \"release\": ", f);
  json_str(f, u.release);
  fputs(", \"machine\": ", f);
  json_str(f, u.machine);
  fprintf(f, ", \"libuv\": \"%s\"", uv_version_string());
#if defined(__VERSION__)
  fputs(", \"compiler\": ", f);
  json_str(f, __VERSION__);
#endif
  fputs("},\n", f);
  if (o->do_queue) {
    unsigned n;
    spread_t rtt = pooled_rtt(o, qc, &n);
    fprintf(f, "  \"cross_cpu_rtt\": {\"cpus\": [%d, %d], \"runs\": %u, ",
            g_rtt_cpu[0], g_rtt_cpu[1], n);
    json_spread(f, "ns", rtt);
    fputs("},\n", f);
  }
  fprintf(f, "  \"config\": {\"events\": %llu, \"runs\": %u, "
          "\"capacity\": %zu, \"paced_rate\": %.0f, \"paced_events\": %llu, "
          "\"paced_runs\": %u, \"paced_timer_slack_ns\": %lu, "
          "\"poll_us\": %u, "
          "\"sample_every\": %u, \"channel_events\": "
          "%llu, \"broadcast_deliveries\": %llu, \"quick\": %s},\n",
          (unsigned long long) o->events, o->runs, o->capacity, o->rate,
          (unsigned long long) o->paced_events, o->paced_runs,
          o->timer_slack, o->poll_us, o->sample_every,
          (unsigned long long) o->channel_events,
          (unsigned long long) o->broadcast_deliveries,
          o->quick ? "true" : "false");
  fputs("  \"units\": {\"events_per_s\": \"events per second\", "
        "\"latency\": \"microseconds\", \"peak_mem_bytes\": \"growth of the "
        "peak RSS during one untimed run, events excluded\"},"
        "\n", f);

  fputs("  \"queue\": [", f);
  first = 1;
  for (i = 0; o->do_queue && i < o->nproducers; i++) {
    for (k = 0; k < PAT_COUNT; k++) {
      qcase_t* c = &qc[i * PAT_COUNT + k];
      if (!c->ran)
        continue;
      fprintf(f, "%s\n    {\"pattern\": \"%s\", \"producers\": %u, ",
              first ? "" : ",", bench_pattern_names[k], c->producers);
      first = 0;
      json_spread(f, "events_per_s", c->r);
      fputs(", \"runs_events_per_s\": ", f);
      json_runs(f, c->rate, o->runs);
      fputs(", \"runs_cross_cpu_rtt_ns\": ", f);
      json_runs(f, c->rtt, o->runs);
      fputs(", \"ns_per_event\": ", f);
      json_num(f, 1e9 / c->r.med);
      fputs(", \"wakeups_per_event\": ", f);
      json_num(f, c->wake_med);
      fputs(", \"passes_per_event\": ", f);
      json_num(f, c->pass_med);
      fputs(", \"delivered_fraction\": ", f);
      json_num(f, c->kept_med);
      fprintf(f, ", \"max_depth\": %llu, \"peak_mem_bytes\": ",
              (unsigned long long) c->max_depth);
      if (c->peak_mem >= 0)
        fprintf(f, "%lld", (long long) c->peak_mem);
      else
        fputs("null", f);
      fputs(", ", f);
      json_lat(f, "latency_saturated_us", c->sat_q, c->nsat);
      fputs(", ", f);
      json_lat(f, "latency_paced_us", c->paced_q, c->npaced);
      fputs(", ", f);
      json_lat(f, "latency_paced_from_slot_us", c->paced_slot_q,
               c->npaced_slot);
      if (c->npaced != 0) {
        fputs(", \"runs_paced_p50_us\": ", f);
        json_runs(f, c->rep_p50, o->paced_runs);
        fputs(", \"runs_paced_p99_us\": ", f);
        json_runs(f, c->rep_p99, o->paced_runs);
        fputs(", \"paced_cpu_cores\": ", f);
        json_num(f, c->paced_secs > 0 ? c->paced_cpu / c->paced_secs : NAN);
        fputs(", \"paced_host_steal_share\": ", f);
        json_num(f, c->paced_ticks > 0 ? (double) c->paced_steal /
                                             (double) c->paced_ticks
                                       : NAN);
        fputs(", \"runs_paced_host_steal_share\": ", f);
        json_runs(f, c->rep_steal, o->paced_runs);
      }
      if (c->have_lat_ratio) {
        fputs(", \"paced_vs_better_ref\": {", f);
        json_spread(f, "p50", c->lat_ratio[0]);
        fputs(", ", f);
        json_spread(f, "p99", c->lat_ratio[1]);
        fputs("}", f);
      }
      fputs(", \"ratio\": {", f);
      if (c->have_ratio[0])
        json_spread(f, "ref-malloc", c->ratio[0]);
      if (c->have_ratio[1]) {
        fputs(c->have_ratio[0] ? ", " : "", f);
        json_spread(f, "ref-ring", c->ratio[1]);
      }
      fprintf(f, "}, \"violations\": %llu}",
              (unsigned long long) c->violations);
    }
  }
  fputs("\n  ],\n", f);

  fputs("  \"channel\": ", f);
  if (!o->do_channel) {
    fputs("null", f);
  } else {
    fputs("[", f);
    for (i = 0; i < o->nchan * CPAT_COUNT; i++) {
      ccase_t* c = &cc[i];
      fprintf(f, "%s\n    {\"pattern\": \"%s\", \"senders\": %u, "
              "\"receivers\": %u, ", i ? "," : "",
              bench_cpattern_names[c->pat], c->senders, c->receivers);
      json_spread(f, "events_per_s", c->r);
      fputs(", \"runs_events_per_s\": ", f);
      json_runs(f, c->rate, o->runs);
      fputs(", \"ns_per_event\": ", f);
      json_num(f, 1e9 / c->r.med);
      if (c->have_ratio) {
        fputs(", ", f);
        json_spread(f, "ratio_vs_mutex_condvar", c->ratio);
      }
      fprintf(f, ", \"violations\": %llu}",
              (unsigned long long) c->violations);
    }
    fputs("\n  ]", f);
  }
  fputs(",\n  \"broadcast\": ", f);
  if (!o->do_broadcast) {
    fputs("null", f);
  } else {
    fputs("[", f);
    for (i = 0; i < 2 * o->nsinks; i++) {
      bcase_t* c = &bc[i];
      fprintf(f, "%s\n    {\"sinks\": %u, \"writer\": \"%s\", "
              "\"events\": %llu, ", i ? "," : "", c->sinks,
              c->queued ? "thread-via-queue" : "loop-thread",
              (unsigned long long) c->events);
      json_spread(f, "events_x_sinks_per_s", c->r);
      fputs(", \"runs\": ", f);
      json_runs(f, c->rate, o->runs);
      fprintf(f, ", \"violations\": %llu}",
              (unsigned long long) c->violations);
    }
    fputs("\n  ]", f);
  }
  fputs(",\n  \"targets\": [", f);
  for (i = 0; i < nt; i++) {
    fprintf(f, "%s\n    {\"target\": ", i ? "," : "");
    json_str(f, t[i].name);
    fprintf(f, ", \"met\": %s, \"figure\": ", t[i].met ? "true" : "false");
    json_str(f, t[i].figure);
    fputs("}", f);
  }
  fprintf(f, "\n  ],\n  \"violations\": %llu\n}\n",
          (unsigned long long) g_violations);
  if (fclose(f) != 0) {
    perror(o->json);
    return -1;
  }
  return 0;
}

/* One row per producer count: for each pattern, median, min and max events/s
 * (bench/chart.gp reads the column names from the first row). */
static int write_dat(const opts_t* o, qcase_t* qc) {
  FILE* f = fopen(o->dat, "w");
  unsigned i, k;
  if (f == NULL) {
    perror(o->dat);
    return -1;
  }
  fputs("producers", f);
  for (k = 0; k < PAT_COUNT; k++)
    fprintf(f, " %s %s:min %s:max", bench_pattern_names[k],
            bench_pattern_names[k], bench_pattern_names[k]);
  fputs("\n", f);
  for (i = 0; i < o->nproducers; i++) {
    fprintf(f, "%u", o->producers[i]);
    for (k = 0; k < PAT_COUNT; k++) {
      qcase_t* c = &qc[i * PAT_COUNT + k];
      if (c->ran)
        fprintf(f, " %.6g %.6g %.6g", c->r.med, c->r.min, c->r.max);
      else
        fputs(" NaN NaN NaN", f);
    }
    fputs("\n", f);
  }
  if (fclose(f) != 0) {
    perror(o->dat);
    return -1;
  }
  return 0;
}

/* -- callgrind mode -------------------------------------------------------- */

/* broadcast-S: as the broadcaster cases' "thread" writer, once. */
static int run_callgrind_broadcast(const opts_t* o, unsigned sinks) {
  brun_cfg_t cfg;
  brun_res_t res;
  bench_ev_t* evs = alloc_events(o->events);
  memset(&cfg, 0, sizeof(cfg));
  cfg.sinks = sinks;
  cfg.events = o->events;
  cfg.queued = 1;
  if (bench_broadcast_run(&cfg, evs, &res) != 0)
    return 2;
  printf("%s: %llu events, %llu deliveries\n", o->callgrind,
         (unsigned long long) o->events,
         (unsigned long long) res.deliveries);
  free(evs);
  if (res.violations != 0) {
    report_violation(o->callgrind, res.what);
    return 1;
  }
  return 0;
}

static int run_callgrind(const opts_t* o) {
  qrun_cfg_t cfg;
  qrun_res_t res;
  bench_ev_t* evs;
  if (callgrind_sinks(o->callgrind) != 0)
    return run_callgrind_broadcast(o, callgrind_sinks(o->callgrind));
  evs = alloc_events(o->events);
  memset(&cfg, 0, sizeof(cfg));
  cfg.pattern = (pattern_t) bench_pattern_parse(o->callgrind);
  cfg.producers = 1;
  cfg.events = o->events;
  cfg.capacity = o->capacity;
  cfg.minimal = 1;
  cfg.stall_seconds = 600; /* valgrind is slow */
  if (bench_queue_run(&cfg, evs, &res) != 0)
    return 2;
  printf("%s: %llu events, %llu delivered, %llu wakeups, %llu passes\n",
         bench_pattern_names[cfg.pattern], (unsigned long long) o->events,
         (unsigned long long) res.delivered,
         (unsigned long long) res.wakeups, (unsigned long long) res.passes);
  free(res.lat);
  free(evs);
  if (res.violations != 0) {
    report_violation(o->callgrind, res.what);
    return 1;
  }
  return 0;
}

/* -- main ------------------------------------------------------------------ */

static double* runs_array(unsigned n) {
  double* v = calloc(n, sizeof(*v));
  if (v == NULL)
    exit(2);
  return v;
}

int main(int argc, char** argv) {
  opts_t o;
  qcase_t* qc;
  ccase_t* cc;
  bcase_t* bc;
  target_t targets[64];
  unsigned nt, i, k;
  int status = 0;

  if (parse_opts(argc, argv, &o) != 0)
    return 2;
  if (o.callgrind != NULL)
    return run_callgrind(&o); /* as before: malloc's defaults */
  bench_malloc_keep();

  qc = calloc(o.nproducers * PAT_COUNT, sizeof(*qc));
  cc = calloc(o.nchan * CPAT_COUNT, sizeof(*cc));
  bc = calloc(2 * o.nsinks, sizeof(*bc));
  if (qc == NULL || cc == NULL || bc == NULL)
    return 2;
  for (i = 0; i < o.nproducers; i++) {
    for (k = 0; k < PAT_COUNT; k++) {
      qcase_t* c = &qc[i * PAT_COUNT + k];
      c->pat = (pattern_t) k;
      c->producers = o.producers[i];
      c->rate = runs_array(o.runs);
      c->wake = runs_array(o.runs);
      c->pass = runs_array(o.runs);
      c->kept = runs_array(o.runs);
      c->rep_p50 = runs_array(o.paced_runs);
      c->rep_p99 = runs_array(o.paced_runs);
      c->rep_steal = runs_array(o.paced_runs);
      c->rtt = runs_array(o.runs);
      c->peak_mem = -1;
    }
  }
  for (i = 0; i < o.nchan; i++) {
    for (k = 0; k < CPAT_COUNT; k++) {
      ccase_t* c = &cc[i * CPAT_COUNT + k];
      c->pat = (cpattern_t) k;
      c->senders = o.chan_p[i];
      c->receivers = o.chan_c[i];
      c->rate = runs_array(o.runs);
    }
  }
  for (i = 0; i < 2 * o.nsinks; i++) {
    bc[i].sinks = o.sinks[i % o.nsinks];
    bc[i].queued = i >= o.nsinks;
    bc[i].rate = runs_array(o.runs);
  }

  print_header(&o);
  fflush(stdout);
  if (o.do_queue)
    run_queue(&o, qc);
  if (o.do_channel)
    run_channel(&o, cc);
  if (o.do_broadcast)
    run_broadcast(&o, bc);

  if (o.do_queue)
    print_queue(&o, qc);
  if (o.do_channel)
    print_channel(&o, cc);
  if (o.do_broadcast)
    print_broadcast(&o, bc);
  nt = make_targets(&o, qc, cc, bc, targets);
  print_targets(targets, nt);
  if (o.do_queue)
    printf("\npeak mem: growth of the process's peak RSS during one extra, "
           "untimed run per case\n(VmHWM after the run minus VmRSS at its "
           "start, after malloc_trim and a reset of\nthe peak): what the "
           "transport allocated (nodes, rings, malloc arenas, thread\n"
           "stacks); the events are allocated before the run and not "
           "counted.\n");

  if (o.json != NULL && write_json(&o, qc, cc, bc, targets, nt) != 0)
    status = 2;
  if (o.dat != NULL && o.do_queue && write_dat(&o, qc) != 0)
    status = 2;
  if (g_violations != 0) {
    printf("\n%llu VIOLATIONS of exactly-once or order (see stderr)\n",
           (unsigned long long) g_violations);
    status = 1;
  } else {
    printf("\nexactly-once and per-producer order: checked in every run, "
           "no violation\n");
  }

  for (i = 0; i < o.nproducers * PAT_COUNT; i++) {
    free(qc[i].rate);
    free(qc[i].wake);
    free(qc[i].pass);
    free(qc[i].kept);
    free(qc[i].sat);
    free(qc[i].paced);
    free(qc[i].paced_slot);
    free(qc[i].rep_p50);
    free(qc[i].rep_p99);
    free(qc[i].rep_steal);
    free(qc[i].rtt);
  }
  for (i = 0; i < o.nchan * CPAT_COUNT; i++)
    free(cc[i].rate);
  for (i = 0; i < 2 * o.nsinks; i++)
    free(bc[i].rate);
  free(qc);
  free(cc);
  free(bc);
  return status;
}
