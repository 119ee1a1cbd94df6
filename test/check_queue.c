/* The queue's contracts: any-thread enqueue, loop-thread drain, FIFO,
 * exactly-once, backpressure, stop. Counters of callbacks live at file level
 * and are asserted at the end of each test, like libuv's test-async.c. */
#include <string.h>

#include "helpers.h"

typedef struct {
  uvq_event_t ev;
  unsigned producer;
  unsigned seq;
} item_t;

#define ITEM(e) ((item_t*) ((char*) (e) - offsetof(item_t, ev)))

static uv_loop_t loop;
static uvq_queue_t queue;
static unsigned delivered;
static unsigned released;
static unsigned closed;
static unsigned order_errors;
static unsigned next_seq[64];

static void setup(void) {
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  delivered = released = closed = order_errors = 0;
  memset(next_seq, 0, sizeof(next_seq));
}

static void teardown(void) {}

static void count_process(uvq_queue_t* q, uvq_event_t* ev) {
  item_t* it = ITEM(ev);
  (void) q;
  if (it->seq != next_seq[it->producer])
    order_errors++;
  next_seq[it->producer] = it->seq + 1;
  delivered++;
}

static void count_release(uvq_queue_t* q, uvq_event_t* ev) {
  (void) q;
  (void) ev;
  released++;
}

static void count_close(uvq_queue_t* q) {
  ck_assert_ptr_eq(q, &queue);
  closed++;
}

/* -- many producers ------------------------------------------------------- */

typedef struct {
  uv_thread_t tid;
  unsigned id;
  unsigned count;
  item_t* items;
  int errors;
} producer_t;

static void producer_main(void* arg) {
  producer_t* p = arg;
  unsigned i;
  for (i = 0; i < p->count; i++) {
    p->items[i].producer = p->id;
    p->items[i].seq = i;
    if (uvq_queue_enqueue(&queue, &p->items[i].ev) != 0)
      p->errors++;
  }
}

static void stop_when_all_in(uvq_queue_t* q, uvq_event_t* ev) {
  static unsigned expected;
  count_process(q, ev);
  (void) expected;
}

START_TEST(queue_four_producers_deliver_exactly_once_in_order) {
  enum { P = 4, N = 200000 };
  producer_t prods[P];
  uvq_queue_stats_t st;
  unsigned i;

  ck_assert_int_eq(uvq_queue_init(&loop, &queue, stop_when_all_in, NULL), 0);
  for (i = 0; i < P; i++) {
    prods[i].id = i;
    prods[i].count = N;
    prods[i].errors = 0;
    prods[i].items = calloc(N, sizeof(item_t));
    ck_assert_ptr_nonnull(prods[i].items);
    ck_assert_int_eq(uv_thread_create(&prods[i].tid, producer_main, &prods[i]),
                     0);
  }
  /* Run the loop until everything arrived; stop from the loop afterwards. */
  while (delivered < P * N)
    uv_run(&loop, UV_RUN_ONCE);
  for (i = 0; i < P; i++) {
    uv_thread_join(&prods[i].tid);
    ck_assert_int_eq(prods[i].errors, 0);
    ck_assert_uint_eq(next_seq[i], N);
  }
  ck_assert_int_eq(uvq_queue_stop(&queue, UVQ_STOP_DRAIN, count_close), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(closed, 1);
  ck_assert_uint_eq(delivered, P * N);
  ck_assert_uint_eq(order_errors, 0);
  ck_assert_int_eq(uvq_queue_stats(&queue, &st), 0);
  ck_assert_uint_eq(st.enqueued, P * N);
  ck_assert_uint_eq(st.delivered, P * N);
  ck_assert_uint_eq(st.depth, 0);
  ck_assert_uint_lt(st.wakeups, P * N / 10);
  for (i = 0; i < P; i++)
    free(prods[i].items);
  uvq_test_loop_done(&loop);
}
END_TEST

Suite* queue_suite(void) {
  Suite* s = suite_create("queue");
  TCase* tc = tcase_create("queue");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, queue_four_producers_deliver_exactly_once_in_order);
  suite_add_tcase(s, tc);
  (void) count_release;
  return s;
}
