/* Channel races that need a thread stopped at one exact place: a copy of
 * lib/channel.c, built into this file with a pause between a sender's claim
 * of a slot and its publish (UVQ__CH_AFTER_CLAIM, empty in the library).
 * Its public functions are renamed race_channel_* so that they do not meet
 * the library's; everything else (events, sinks) is the library's own. */
#include <stdatomic.h>

#define uvq_channel_init race_channel_init
#define uvq_channel_close race_channel_close
#define uvq_channel_destroy race_channel_destroy
#define uvq_channel_send race_channel_send
#define uvq_channel_try_send race_channel_try_send
#define uvq_channel_send_timeout race_channel_send_timeout
#define uvq_channel_recv race_channel_recv
#define uvq_channel_try_recv race_channel_try_recv
#define uvq_channel_recv_timeout race_channel_recv_timeout
#define uvq_channel_sink_init race_channel_sink_init

static void race_after_claim(void);
#define UVQ__CH_AFTER_CLAIM() race_after_claim()
static void race_after_close_bit(void);
#define UVQ__CH_AFTER_CLOSE_BIT() race_after_close_bit()

#include "../lib/channel.c"

#include "helpers.h"

/* libuvq.so keeps its thread marker hidden; this copy needs its own. */
_Thread_local char uvq__thread_marker UVQ__TLS_INITIAL_EXEC;

/* The sender that sets pause_here stops after its claim until resumed. */
static _Thread_local int pause_here;
static uv_sem_t claimed;
static uv_sem_t resumed;

static void race_after_claim(void) {
  if (!pause_here)
    return;
  pause_here = 0;
  uv_sem_post(&claimed);
  uv_sem_wait(&resumed);
}

static uvq_channel_t rch;
static uvq_event_t the_event;
static int send_result;

typedef struct {
  uv_thread_t tid;
  int result;
  uvq_event_t* got;
  atomic_int done;
} receiver_t;

static void receiver_main(void* arg) {
  receiver_t* rx = arg;
  rx->result = race_channel_recv(&rch, &rx->got);
  atomic_store(&rx->done, 1);
}

static void paused_sender_main(void* arg) {
  (void) arg;
  pause_here = 1;
  send_result = race_channel_send(&rch, &the_event);
}

/* Two receivers sleep on an empty channel. A sender claims a slot and is
 * held before it publishes; the channel is closed: both receivers wake,
 * find the slot claimed but empty (not drained: an event is coming), and
 * sleep again. The sender publishes and wakes one receiver, which takes the
 * event. The other must then learn UVQ_ECLOSED, not sleep forever. */
START_TEST(channel_close_with_a_send_in_flight_ends_every_blocked_receiver) {
  receiver_t rx[2];
  uv_thread_t tx;
  uint64_t t0;
  unsigned i;

  memset(rx, 0, sizeof(rx));
  uvq_event_init(&the_event, NULL);
  ck_assert_int_eq(uv_sem_init(&claimed, 0), 0);
  ck_assert_int_eq(uv_sem_init(&resumed, 0), 0);
  ck_assert_int_eq(race_channel_init(&rch, 4), 0);
  for (i = 0; i < 2; i++)
    ck_assert_int_eq(uv_thread_create(&rx[i].tid, receiver_main, &rx[i]), 0);
  /* Both registered; once we get the lock, both sleep on the condition. */
  while (atomic_load(&rch.recv_waiters_) < 2 * UVQ__CH_WAITER)
    uvq_test_yield();
  uv_mutex_lock(&rch.lock_);
  uv_mutex_unlock(&rch.lock_);

  ck_assert_int_eq(uv_thread_create(&tx, paused_sender_main, NULL), 0);
  uv_sem_wait(&claimed);
  ck_assert_int_eq(race_channel_close(&rch), 0);
  /* Let both take the close broadcast and go back to sleep (if they have
   * not yet when the sender goes on, they simply find the event or the
   * close then). */
  uv_sleep(50);
  ck_assert_int_eq(atomic_load(&rx[0].done) + atomic_load(&rx[1].done), 0);
  uv_sem_post(&resumed);
  ck_assert_int_eq(uv_thread_join(&tx), 0);
  ck_assert_int_eq(send_result, 0);

  t0 = uv_hrtime();
  while (atomic_load(&rx[0].done) + atomic_load(&rx[1].done) < 2 &&
         uv_hrtime() - t0 < uvq_test_hang_ns(10))
    uv_sleep(1);
  ck_assert_msg(atomic_load(&rx[0].done) + atomic_load(&rx[1].done) == 2,
                "a receiver still sleeps on the closed, drained channel");
  for (i = 0; i < 2; i++)
    ck_assert_int_eq(uv_thread_join(&rx[i].tid), 0);
  /* One took the event, the other learned of the close. */
  ck_assert_int_eq(rx[0].result + rx[1].result, UVQ_ECLOSED);
  ck_assert_ptr_eq(rx[0].result == 0 ? rx[0].got : rx[1].got, &the_event);
  ck_assert_int_eq(race_channel_destroy(&rch), 0);
  uv_sem_destroy(&claimed);
  uv_sem_destroy(&resumed);
}
END_TEST

/* A receiver that finds the channel closed may destroy it at once. When
 * the channel sink's close is what closes the channel, it must be done with
 * ch by then: here the closer stops just after setting the closed bit
 * while a worker sees the close and calls destroy; destroy must not return
 * before the closer lets go (it used to: the sink detached first, set the
 * bit, and only then took lock_ to wake the sleepers, so destroy could
 * free the lock it was about to take). */
static int close_bit_pause;
static atomic_int destroyer_done;
static int destroyer_recv, destroyer_destroy;
static int done_during_close = -1;

static void destroyer_main(void* arg) {
  uvq_event_t* got = NULL;
  (void) arg;
  do
    destroyer_recv = race_channel_try_recv(&rch, &got);
  while (destroyer_recv == UVQ_EAGAIN);
  destroyer_destroy = race_channel_destroy(&rch);
  atomic_store(&destroyer_done, 1);
}

static uv_thread_t destroyer;

static void race_after_close_bit(void) {
  if (!close_bit_pause)
    return;
  close_bit_pause = 0;
  ck_assert_int_eq(uv_thread_create(&destroyer, destroyer_main, NULL), 0);
  uv_sleep(50); /* long enough for the worker to see the bit and go on */
  done_during_close = atomic_load(&destroyer_done);
}

START_TEST(channel_sink_close_is_done_with_ch_before_destroy_can_return) {
  uv_loop_t loop;
  uvq_channel_sink_t cs;

  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(race_channel_init(&rch, 4), 0);
  ck_assert_int_eq(race_channel_sink_init(&loop, &cs, &rch, 0), 0);
  atomic_store(&destroyer_done, 0);
  close_bit_pause = 1;
  ck_assert_int_eq(uvq_sink_close(&cs.sink, NULL), 0);
  ck_assert_int_eq(done_during_close, 0);
  ck_assert_int_eq(uv_thread_join(&destroyer), 0);
  ck_assert_int_eq(destroyer_recv, UVQ_ECLOSED);
  ck_assert_int_eq(destroyer_destroy, 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

Suite* channel_race_suite(void) {
  Suite* s = suite_create("channel_race");
  TCase* tc = tcase_create("channel_race");
  tcase_set_timeout(tc, 60);
  tcase_add_test(
      tc, channel_close_with_a_send_in_flight_ends_every_blocked_receiver);
  tcase_add_test(
      tc, channel_sink_close_is_done_with_ch_before_destroy_can_return);
  suite_add_tcase(s, tc);
  return s;
}
