/* seed-example: the seed text's example, in uvq.
 *
 * The seed (go-events' README example, which the project started from)
 * creates a queue with a buffer of 10, starts a
 * goroutine that processes events, enqueues two events and stops the queue.
 * Here the loop thread plays the processing goroutine: the queue has a
 * capacity of 10 and blocks producers when full, the process callback runs
 * on the loop for each event, and a drain stop delivers both events before
 * the queue closes and uv_run returns.
 *
 * Run: ./samples/seed-example
 */
#include <stdio.h>
#include <stdlib.h>

#include "uvq.h"

struct event {
  uvq_event_t link; /* the queue's link: enqueueing allocates nothing */
  const char* name;
};

static void process(uvq_queue_t* q, uvq_event_t* ev) {
  struct event* e = (struct event*) ev; /* link is the first member */
  (void) q;
  printf("processed %s\n", e->name);
}

static void closed(uvq_queue_t* q) {
  uvq_queue_stats_t st;
  uvq_queue_stats(q, &st);
  printf("queue stopped: %llu enqueued, %llu processed\n",
         (unsigned long long) st.enqueued, (unsigned long long) st.delivered);
}

int main(void) {
  uv_loop_t* loop = uv_default_loop();
  uvq_queue_options_t opts = {.capacity = 10, .overflow = UVQ_BLOCK};
  uvq_queue_t queue;
  struct event event1 = {.name = "event1"};
  struct event event2 = {.name = "event2"};
  int r;

  /* opts.release is NULL: an event the queue lets go of undelivered (a
   * discard stop, a drop policy) is unreffed, so each one is initialised
   * with a count of one. Delivered ones are the process callback's. */
  uvq_event_init(&event1.link, NULL);
  uvq_event_init(&event2.link, NULL);
  if ((r = uvq_queue_init(loop, &queue, process, &opts)) != 0) {
    fprintf(stderr, "uvq_queue_init: %s\n", uvq_strerror(r));
    return EXIT_FAILURE;
  }
  /* Enqueue some events. try_enqueue: this is the loop thread, which must
   * never block on its own queue (uvq_queue_enqueue says UVQ_EDEADLK). */
  if ((r = uvq_queue_try_enqueue(&queue, &event1.link)) != 0 ||
      (r = uvq_queue_try_enqueue(&queue, &event2.link)) != 0)
    fprintf(stderr, "enqueue: %s\n", uvq_strerror(r));
  /* Stop the queue: drain mode delivers what was accepted, then closes. */
  uvq_queue_stop(&queue, UVQ_STOP_DRAIN, closed);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) == 0 && r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
