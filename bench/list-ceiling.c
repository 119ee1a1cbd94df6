/* list-ceiling: what one more locked instruction per push costs here.
 *
 * A bare intrusive MPSC list (Vyukov's, as in lib/queue.c) with one
 * producer thread and a consumer thread that spins, no libuv, no wakeups:
 *   mode 0  push = one exchange on the tail (one locked instruction);
 *   mode 1  the same plus an atomic add on a counter (two, as uvq does
 *           today: the add carries the closed flag, the wake flag and the
 *           count that the stop relies on);
 *   mode 2  the same plus a plain load of a flag word (what a design with
 *           the flags outside the count would pay).
 * It prints events per second, best of 5 runs per mode. It is the evidence
 * behind docs/bench.md's "where the time goes"; it is not part of the
 * library.
 *
 * Run: bench/list-ceiling [events]   (default 10000000)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct node {
  _Atomic(struct node*) next;
  long payload[2];
} node_t;

static struct {
  _Alignas(64) _Atomic(node_t*) tail;
  _Alignas(64) _Atomic(uint64_t) state;
  _Alignas(64) node_t* head;
  node_t stub;
} list;

static long count;
static int mode;
static node_t* nodes;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double) t.tv_sec + (double) t.tv_nsec * 1e-9;
}

static void push(node_t* n) {
  node_t* prev;
  atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
  prev = atomic_exchange(&list.tail, n);
  atomic_store_explicit(&prev->next, n, memory_order_release);
}

static node_t* pop(void) {
  node_t* h = list.head;
  node_t* n = atomic_load_explicit(&h->next, memory_order_acquire);
  if (h == &list.stub) {
    if (n == NULL)
      return NULL;
    list.head = n;
    h = n;
    n = atomic_load_explicit(&n->next, memory_order_acquire);
  }
  if (n != NULL) {
    list.head = n;
    return h;
  }
  if (atomic_load(&list.tail) != h)
    return NULL;
  push(&list.stub);
  n = atomic_load_explicit(&h->next, memory_order_acquire);
  if (n != NULL) {
    list.head = n;
    return h;
  }
  return NULL;
}

static void* producer(void* arg) {
  long i;
  (void) arg;
  for (i = 0; i < count; i++) {
    if (mode == 1)
      atomic_fetch_add(&list.state, 8);
    else if (mode == 2 &&
             (atomic_load_explicit(&list.state, memory_order_relaxed) & 1))
      abort();
    push(&nodes[i]);
  }
  return NULL;
}

static double run(void) {
  pthread_t t;
  long got = 0;
  double t0;
  atomic_store(&list.tail, &list.stub);
  atomic_store(&list.stub.next, NULL);
  list.head = &list.stub;
  t0 = now();
  if (pthread_create(&t, NULL, producer, NULL) != 0)
    abort();
  while (got < count)
    if (pop() != NULL)
      got++;
  pthread_join(t, NULL);
  return (double) count / (now() - t0);
}

int main(int argc, char** argv) {
  count = argc > 1 ? atol(argv[1]) : 10000000;
  if (count <= 0)
    return 2;
  nodes = calloc((size_t) count, sizeof(*nodes));
  if (nodes == NULL)
    return 2;
  for (mode = 0; mode < 3; mode++) {
    double best = 0;
    int r;
    for (r = 0; r < 5; r++) {
      double v = run();
      if (v > best)
        best = v;
    }
    printf("mode %d: %6.1f M events/s  (%s)\n", mode, best / 1e6,
           mode == 0   ? "exchange only"
           : mode == 1 ? "exchange + locked add (uvq today)"
                       : "exchange + plain load");
  }
  free(nodes);
  return 0;
}
