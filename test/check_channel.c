/* The channel's contracts: any thread sends and receives (blocking, try,
 * timed), exactly once and in each sender's order, close wins over every
 * later send and wakes every blocked thread, receivers drain before they
 * learn of the close; and the channel sink: the loop writes without
 * blocking, hears "again" when full and "ready" when a receiver frees room.
 *
 * Worker threads never call ck_assert (a failed assertion must happen on the
 * test's thread): they record what they saw, and the test asserts after
 * joining them. No assertion depends on speed: where a test sleeps, it is to
 * make a race likely (threads blocked before a close), and the assertion
 * holds whether or not the race happened.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "helpers.h"

#define MAX_SENDERS 128

/* Sanitizers abort on a huge allocation by design, so the ENOMEM test only
 * runs without them. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
# define SANITIZED 1
#elif defined(__has_feature)
# if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
     __has_feature(memory_sanitizer)
#  define SANITIZED 1
# endif
#endif

typedef struct {
  uvq_event_t ev;
  unsigned sender;
  unsigned seq;
  atomic_uint received; /* times a receiver got it */
  atomic_uint released; /* times its release callback ran */
} item_t;

#define ITEM(e) ((item_t*) ((char*) (e) - offsetof(item_t, ev)))

static uv_loop_t loop;
static uv_thread_t loop_thread;
static uvq_channel_t ch;
static atomic_uint releases;

static void setup(void) {
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  loop_thread = uv_thread_self();
  memset(&ch, 0, sizeof(ch));
  atomic_store(&releases, 0);
}

static void teardown(void) {}

static int on_loop_thread(void) {
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, &loop_thread);
}

static void item_release(uvq_event_t* ev) {
  atomic_fetch_add(&ITEM(ev)->released, 1);
  atomic_fetch_add(&releases, 1);
}

static void items_init(item_t* it, unsigned n, unsigned sender) {
  unsigned i;
  for (i = 0; i < n; i++) {
    memset(&it[i], 0, sizeof(it[i]));
    ck_assert_int_eq(uvq_event_init(&it[i].ev, item_release), 0);
    it[i].sender = sender;
    it[i].seq = i;
    atomic_init(&it[i].received, 0);
    atomic_init(&it[i].released, 0);
  }
}

static item_t* items_new(unsigned n, unsigned sender) {
  item_t* it = calloc(n, sizeof(*it));
  ck_assert_ptr_nonnull(it);
  items_init(it, n, sender);
  return it;
}

/* Drain what is left after a close, so that destroy succeeds. */
static unsigned drain_closed(uvq_channel_t* c) {
  uvq_event_t* ev;
  unsigned n = 0;
  int r;
  while ((r = uvq_channel_try_recv(c, &ev)) == 0)
    n++;
  ck_assert_int_eq(r, UVQ_ECLOSED);
  return n;
}

/* -- sender and receiver threads ------------------------------------------ */

enum { VIA_BLOCK, VIA_TRY, VIA_TIMEOUT };

typedef struct {
  uv_thread_t tid;
  unsigned id;
  unsigned count;
  item_t* items;
  int via;
  unsigned ok;
  unsigned closed;
  unsigned other;
  int other_err;
} sender_t;

static int send_via(int via, uvq_event_t* ev) {
  switch (via) {
    case VIA_TRY:
      return uvq_channel_try_send(&ch, ev);
    case VIA_TIMEOUT:
      return uvq_channel_send_timeout(&ch, ev, 60000);
    default:
      return uvq_channel_send(&ch, ev);
  }
}

static void sender_main(void* arg) {
  sender_t* s = arg;
  unsigned i;
  for (i = 0; i < s->count; i++) {
    int r;
    /* VIA_TRY: retry until room, giving the core to the receivers. */
    while ((r = send_via(s->via, &s->items[i].ev)) == UVQ_EFULL)
      sched_yield();
    if (r == 0) {
      s->ok++;
    } else if (r == UVQ_ECLOSED) {
      s->closed++;
    } else {
      s->other++;
      s->other_err = r;
    }
  }
}

static void senders_start(sender_t* s, unsigned n, unsigned count, int via) {
  unsigned i;
  ck_assert_uint_le(n, MAX_SENDERS);
  for (i = 0; i < n; i++) {
    memset(&s[i], 0, sizeof(s[i]));
    s[i].id = i;
    s[i].count = count;
    s[i].via = via;
    s[i].items = items_new(count, i);
  }
  for (i = 0; i < n; i++)
    ck_assert_int_eq(uv_thread_create(&s[i].tid, sender_main, &s[i]), 0);
}

static void senders_join(sender_t* s, unsigned n) {
  unsigned i;
  for (i = 0; i < n; i++)
    ck_assert_int_eq(uv_thread_join(&s[i].tid), 0);
}

static void senders_free(sender_t* s, unsigned n) {
  unsigned i;
  for (i = 0; i < n; i++)
    free(s[i].items);
}

/* Every event received exactly once, and never released by the channel
 * (plain sends hand ownership over; nothing takes or drops a reference). */
static unsigned exactly_once_errors(sender_t* s, unsigned n) {
  unsigned errors = 0;
  unsigned i;
  unsigned j;
  for (i = 0; i < n; i++)
    for (j = 0; j < s[i].count; j++)
      if (atomic_load(&s[i].items[j].received) != 1 ||
          atomic_load(&s[i].items[j].released) != 0)
        errors++;
  return errors;
}

typedef struct {
  uv_thread_t tid;
  int via;
  unsigned got;
  unsigned order_errors;
  int last[MAX_SENDERS]; /* last seq seen per sender, -1: none */
  int end;               /* what ended the loop */
  unsigned limit;        /* stop after this many (0: until an error) */
} receiver_t;

static int recv_via(int via, uvq_event_t** ev) {
  int r;
  switch (via) {
    case VIA_TRY:
      while ((r = uvq_channel_try_recv(&ch, ev)) == UVQ_EAGAIN)
        sched_yield();
      return r;
    case VIA_TIMEOUT:
      return uvq_channel_recv_timeout(&ch, ev, 60000);
    default:
      return uvq_channel_recv(&ch, ev);
  }
}

static void receiver_main(void* arg) {
  receiver_t* rc = arg;
  for (;;) {
    uvq_event_t* ev;
    item_t* it;
    int r;
    if (rc->limit != 0 && rc->got == rc->limit) {
      rc->end = 0;
      return;
    }
    r = recv_via(rc->via, &ev);
    if (r != 0) {
      rc->end = r;
      return;
    }
    it = ITEM(ev);
    atomic_fetch_add(&it->received, 1);
    /* Each receiver sees each sender's events in that sender's order. */
    if ((int) it->seq <= rc->last[it->sender])
      rc->order_errors++;
    rc->last[it->sender] = (int) it->seq;
    rc->got++;
  }
}

static void receivers_start(receiver_t* rc, unsigned n, int via,
                            unsigned limit) {
  unsigned i;
  unsigned j;
  for (i = 0; i < n; i++) {
    memset(&rc[i], 0, sizeof(rc[i]));
    rc[i].via = via;
    rc[i].limit = limit;
    for (j = 0; j < MAX_SENDERS; j++)
      rc[i].last[j] = -1;
  }
  for (i = 0; i < n; i++)
    ck_assert_int_eq(uv_thread_create(&rc[i].tid, receiver_main, &rc[i]), 0);
}

static void receivers_join(receiver_t* rc, unsigned n) {
  unsigned i;
  for (i = 0; i < n; i++)
    ck_assert_int_eq(uv_thread_join(&rc[i].tid), 0);
}

/* -- go-events' scenario -------------------------------------------------- */

/* go-events' TestChannel: 100 concurrent writers, one reader; after close,
 * writes fail with "closed". A capacity of 10 makes writers block. */
START_TEST(channel_hundred_writers_one_reader_all_arrive_then_closed) {
  enum { S = 100, PER = 20 };
  static sender_t snd[S];
  static receiver_t rc;
  item_t late;
  unsigned i;

  ck_assert_int_eq(uvq_channel_init(&ch, 10), 0);
  receivers_start(&rc, 1, VIA_BLOCK, S * PER);
  senders_start(snd, S, PER, VIA_BLOCK);
  senders_join(snd, S);
  receivers_join(&rc, 1);
  ck_assert_int_eq(rc.end, 0);
  ck_assert_uint_eq(rc.got, S * PER);
  ck_assert_uint_eq(rc.order_errors, 0);
  for (i = 0; i < S; i++) {
    ck_assert_uint_eq(snd[i].ok, PER);
    ck_assert_int_eq(rc.last[i], PER - 1); /* one reader: exact order */
  }
  ck_assert_uint_eq(exactly_once_errors(snd, S), 0);

  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  items_init(&late, 1, 0);
  ck_assert_int_eq(uvq_channel_send(&ch, &late.ev), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_channel_try_send(&ch, &late.ev), UVQ_ECLOSED);
  ck_assert_uint_eq(drain_closed(&ch), 0);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  senders_free(snd, S);
  uvq_test_loop_done(&loop);
}
END_TEST

/* go-events' flaw: a write after close succeeded about half the time when
 * the buffer had room. Here closed wins, every time, for every variant. */
START_TEST(channel_send_after_close_fails_every_time_with_room_left) {
  enum { ROUNDS = 10000 };
  item_t it[2];
  uvq_event_t* ev;
  unsigned wrong = 0;
  unsigned i;

  items_init(it, 2, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 16), 0);
  ck_assert_int_eq(uvq_channel_send(&ch, &it[0].ev), 0);
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  for (i = 0; i < ROUNDS; i++) {
    if (uvq_channel_send(&ch, &it[1].ev) != UVQ_ECLOSED)
      wrong++;
    if (uvq_channel_try_send(&ch, &it[1].ev) != UVQ_ECLOSED)
      wrong++;
    if (uvq_channel_send_timeout(&ch, &it[1].ev, 0) != UVQ_ECLOSED)
      wrong++;
    if (uvq_channel_send_timeout(&ch, &it[1].ev, 1000) != UVQ_ECLOSED)
      wrong++;
    if (uvq_channel_close(&ch) != 0) /* closing again is harmless */
      wrong++;
  }
  ck_assert_uint_eq(wrong, 0);
  /* What was sent before the close is still delivered, then "closed". */
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), UVQ_ECLOSED);
  ck_assert_ptr_null(ev);
  ck_assert_int_eq(uvq_channel_recv_timeout(&ch, &ev, 1000), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), UVQ_ECLOSED);
  ck_assert_uint_eq(atomic_load(&releases), 0); /* nobody dropped a ref */
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* Senders racing with a close: each send either succeeded before the close
 * (and its event is received) or failed with "closed"; after the close
 * returned, none succeeds. The senders are all halfway when the close
 * comes, so it lands in the middle of their sends, and each one's last
 * send waits for the close to have returned: at least one attempt per
 * sender is certainly late. */
static atomic_int race_closed;
static atomic_uint race_late_ok;
static atomic_uint race_halfway;
static atomic_int race_go;

static void racer_main(void* arg) {
  sender_t* s = arg;
  unsigned i;
  for (i = 0; i < s->count; i++) {
    int was_closed;
    int r;
    if (i == s->count / 2) {
      atomic_fetch_add(&race_halfway, 1);
      while (!atomic_load(&race_go))
        uvq_test_yield();
    }
    if (i == s->count - 1)
      while (!atomic_load(&race_closed))
        uvq_test_yield();
    was_closed = atomic_load(&race_closed);
    r = uvq_channel_try_send(&ch, &s->items[i].ev);
    if (r == 0) {
      s->ok++;
      if (was_closed)
        atomic_fetch_add(&race_late_ok, 1);
    } else if (r == UVQ_ECLOSED) {
      s->closed++;
    } else if (r != UVQ_EFULL) {
      s->other++;
      s->other_err = r;
    }
  }
}

START_TEST(channel_close_wins_over_concurrent_senders) {
  enum { S = 4, PER = 5000 };
  sender_t snd[S];
  uvq_event_t* ev;
  unsigned got = 0;
  unsigned sent = 0;
  unsigned i;

  atomic_store(&race_closed, 0);
  atomic_store(&race_late_ok, 0);
  atomic_store(&race_halfway, 0);
  atomic_store(&race_go, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, S * PER), 0);
  for (i = 0; i < S; i++) {
    memset(&snd[i], 0, sizeof(snd[i]));
    snd[i].count = PER;
    snd[i].items = items_new(PER, i);
  }
  for (i = 0; i < S; i++)
    ck_assert_int_eq(uv_thread_create(&snd[i].tid, racer_main, &snd[i]), 0);
  while (atomic_load(&race_halfway) < S)
    uvq_test_yield();
  atomic_store(&race_go, 1);
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  atomic_store(&race_closed, 1);
  senders_join(snd, S);
  while (uvq_channel_try_recv(&ch, &ev) == 0) {
    atomic_fetch_add(&ITEM(ev)->received, 1);
    got++;
  }
  for (i = 0; i < S; i++) {
    ck_assert_uint_eq(snd[i].other, 0);
    ck_assert_uint_eq(snd[i].ok + snd[i].closed, PER);
    ck_assert_uint_ge(snd[i].ok, PER / 2); /* all before the close */
    ck_assert_uint_ge(snd[i].closed, 1);   /* the last, at least */
    sent += snd[i].ok;
  }
  ck_assert_uint_eq(atomic_load(&race_late_ok), 0);
  ck_assert_uint_eq(got, sent);
  for (i = 0; i < S; i++) {
    unsigned j;
    for (j = 0; j < PER; j++)
      ck_assert_uint_le(atomic_load(&snd[i].items[j].received), 1);
  }
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  senders_free(snd, S);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- blocking, timeouts --------------------------------------------------- */

static atomic_int blocked_result;
static atomic_int blocked_done;

/* Until n threads sleep in a waiters word (a private field: no public call
 * can say "somebody is blocked" without racing; each sleeper counts 4).
 * A sleeper registers under lock_ and holds it until its wait releases it,
 * so once we have taken the lock too, each one is in its wait. */
static void wait_for_sleepers(_Atomic(uint64_t)* word, unsigned n) {
  uint64_t deadline = uv_hrtime() + uvq_test_hang_ns(10);
  while (atomic_load(word) < 4 * (uint64_t) n) {
    ck_assert_msg(uv_hrtime() < deadline, "fewer than %u threads blocked", n);
    uv_sleep(1);
  }
  uv_mutex_lock(&ch.lock_);
  uv_mutex_unlock(&ch.lock_);
}

static void blocked_sender_main(void* arg) {
  atomic_store(&blocked_result, uvq_channel_send(&ch, arg));
  atomic_store(&blocked_done, 1);
}

START_TEST(channel_blocking_send_wakes_when_a_receiver_frees_space) {
  item_t it[2];
  uvq_event_t* ev;
  uv_thread_t tid;

  items_init(it, 2, 0);
  atomic_store(&blocked_result, -1);
  atomic_store(&blocked_done, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 1), 0);
  ck_assert_int_eq(uvq_channel_send(&ch, &it[0].ev), 0);
  ck_assert_int_eq(uv_thread_create(&tid, blocked_sender_main, &it[1].ev), 0);
  wait_for_sleepers(&ch.send_waiters_, 1);
  ck_assert_int_eq(atomic_load(&blocked_done), 0); /* full: it must wait */
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  ck_assert_int_eq(atomic_load(&blocked_result), 0);
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[1].ev);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), UVQ_EAGAIN);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

static void blocked_receiver_main(void* arg) {
  uvq_event_t** out = arg;
  atomic_store(&blocked_result, uvq_channel_recv(&ch, out));
  atomic_store(&blocked_done, 1);
}

START_TEST(channel_blocking_recv_wakes_when_a_sender_sends) {
  item_t it;
  uvq_event_t* got = NULL;
  uv_thread_t tid;

  items_init(&it, 1, 0);
  atomic_store(&blocked_result, -1);
  atomic_store(&blocked_done, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 4), 0);
  ck_assert_int_eq(uv_thread_create(&tid, blocked_receiver_main, &got), 0);
  wait_for_sleepers(&ch.recv_waiters_, 1);
  ck_assert_int_eq(atomic_load(&blocked_done), 0); /* empty: it must wait */
  ck_assert_int_eq(uvq_channel_send(&ch, &it.ev), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  ck_assert_int_eq(atomic_load(&blocked_result), 0);
  ck_assert_ptr_eq(got, &it.ev);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(channel_timed_send_times_out_when_full) {
  item_t it[2];
  uvq_event_t* ev;
  uint64_t t0;

  items_init(it, 2, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 1), 0);
  ck_assert_int_eq(uvq_channel_send_timeout(&ch, &it[0].ev, 20), 0);
  t0 = uv_hrtime();
  ck_assert_int_eq(uvq_channel_send_timeout(&ch, &it[1].ev, 20),
                   UVQ_ETIMEDOUT);
  /* It waited its full timeout (a lower bound, not a speed). */
  ck_assert_uint_ge(uv_hrtime() - t0, 20 * 1000000ull);
  ck_assert_int_eq(uvq_channel_send_timeout(&ch, &it[1].ev, 0), UVQ_EFULL);
  /* The caller kept it[1]: the channel holds only it[0]. */
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), UVQ_EAGAIN);
  ck_assert_uint_eq(uvq_event_refs(&it[1].ev), 1);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(channel_timed_recv_times_out_when_empty) {
  uvq_event_t* ev = (uvq_event_t*) &ev; /* anything but NULL */
  item_t it;
  uint64_t t0;

  items_init(&it, 1, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 3), 0);
  t0 = uv_hrtime();
  ck_assert_int_eq(uvq_channel_recv_timeout(&ch, &ev, 20), UVQ_ETIMEDOUT);
  ck_assert_uint_ge(uv_hrtime() - t0, 20 * 1000000ull);
  ck_assert_ptr_null(ev);
  ck_assert_int_eq(uvq_channel_recv_timeout(&ch, &ev, 0), UVQ_EAGAIN);
  /* With an event inside, a timed receive returns it at once. */
  ck_assert_int_eq(uvq_channel_send(&ch, &it.ev), 0);
  ck_assert_int_eq(uvq_channel_recv_timeout(&ch, &ev, 60000), 0);
  ck_assert_ptr_eq(ev, &it.ev);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

static void timed_receiver_main(void* arg) {
  uvq_event_t** out = arg;
  atomic_store(&blocked_result, uvq_channel_recv_timeout(&ch, out, 60000));
}

START_TEST(channel_timed_recv_wakes_early_when_a_sender_sends) {
  item_t it;
  uvq_event_t* got = NULL;
  uv_thread_t tid;

  items_init(&it, 1, 0);
  atomic_store(&blocked_result, -1);
  ck_assert_int_eq(uvq_channel_init(&ch, 2), 0);
  ck_assert_int_eq(uv_thread_create(&tid, timed_receiver_main, &got), 0);
  uv_sleep(20);
  ck_assert_int_eq(uvq_channel_send(&ch, &it.ev), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  ck_assert_int_eq(atomic_load(&blocked_result), 0);
  ck_assert_ptr_eq(got, &it.ev);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- close wakes everybody ------------------------------------------------ */

/* A full channel with senders blocked on four threads (blocking and timed):
 * close wakes each with "closed"; then receivers on three threads drain
 * exactly what was inside and each ends with "closed". */
START_TEST(channel_close_wakes_blocked_senders_then_receivers_drain) {
  enum { CAP = 5, S = 4, R = 3 };
  sender_t snd[S];
  receiver_t rc[R];
  item_t fill[CAP];
  unsigned got = 0;
  unsigned i;

  items_init(fill, CAP, S); /* sender id S: not one of the threads */
  ck_assert_int_eq(uvq_channel_init(&ch, CAP), 0);
  for (i = 0; i < CAP; i++)
    ck_assert_int_eq(uvq_channel_try_send(&ch, &fill[i].ev), 0);
  senders_start(snd, 2, 1, VIA_BLOCK);
  /* Two more with timeouts, started by hand to mix the variants. */
  for (i = 2; i < S; i++) {
    memset(&snd[i], 0, sizeof(snd[i]));
    snd[i].id = i;
    snd[i].count = 1;
    snd[i].via = VIA_TIMEOUT;
    snd[i].items = items_new(1, i);
    ck_assert_int_eq(uv_thread_create(&snd[i].tid, sender_main, &snd[i]), 0);
  }
  wait_for_sleepers(&ch.send_waiters_, S);
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  senders_join(snd, S);
  for (i = 0; i < S; i++) {
    ck_assert_uint_eq(snd[i].closed, 1);
    ck_assert_uint_eq(snd[i].ok, 0);
    ck_assert_uint_eq(snd[i].other, 0);
  }
  receivers_start(rc, R, VIA_BLOCK, 0);
  receivers_join(rc, R);
  for (i = 0; i < R; i++) {
    ck_assert_int_eq(rc[i].end, UVQ_ECLOSED);
    ck_assert_uint_eq(rc[i].order_errors, 0);
    got += rc[i].got;
  }
  ck_assert_uint_eq(got, CAP);
  for (i = 0; i < CAP; i++)
    ck_assert_uint_eq(atomic_load(&fill[i].received), 1);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  senders_free(snd, S);
  uvq_test_loop_done(&loop);
}
END_TEST

/* An empty channel with receivers blocked on four threads (blocking and
 * timed): close wakes each with "closed". */
START_TEST(channel_close_wakes_blocked_receivers_with_eclosed) {
  enum { R = 4 };
  receiver_t rc[R];
  unsigned i;

  ck_assert_int_eq(uvq_channel_init(&ch, 8), 0);
  receivers_start(rc, 2, VIA_BLOCK, 0);
  receivers_start(rc + 2, 2, VIA_TIMEOUT, 0);
  wait_for_sleepers(&ch.recv_waiters_, R);
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  receivers_join(rc, R);
  for (i = 0; i < R; i++) {
    ck_assert_int_eq(rc[i].end, UVQ_ECLOSED);
    ck_assert_uint_eq(rc[i].got, 0);
  }
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* Senders and receivers all running when the close comes: every event
 * accepted before it is received exactly once, receivers end on "closed". */
START_TEST(channel_close_under_load_loses_nothing) {
  enum { S = 4, R = 3, PER = 20000 };
  sender_t snd[S];
  receiver_t rc[R];
  unsigned sent = 0;
  unsigned got = 0;
  unsigned i;
  unsigned j;

  ck_assert_int_eq(uvq_channel_init(&ch, 7), 0);
  receivers_start(rc, R, VIA_BLOCK, 0);
  senders_start(snd, S, PER, VIA_BLOCK);
  uv_sleep(5);
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  senders_join(snd, S);
  receivers_join(rc, R);
  for (i = 0; i < S; i++) {
    ck_assert_uint_eq(snd[i].other, 0);
    ck_assert_uint_eq(snd[i].ok + snd[i].closed, PER);
    sent += snd[i].ok;
    /* A sender's successes are a prefix: once closed, always closed. */
    for (j = 0; j < PER; j++)
      ck_assert_uint_eq(atomic_load(&snd[i].items[j].received),
                        j < snd[i].ok ? 1 : 0);
  }
  for (i = 0; i < R; i++) {
    ck_assert_int_eq(rc[i].end, UVQ_ECLOSED);
    ck_assert_uint_eq(rc[i].order_errors, 0);
    got += rc[i].got;
  }
  ck_assert_uint_eq(got, sent);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  senders_free(snd, S);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- many senders, many receivers ----------------------------------------- */

static void many_to_many(unsigned s_n, unsigned r_n, unsigned per,
                         size_t capacity, int s_via, int r_via) {
  sender_t snd[8];
  receiver_t rc[8];
  unsigned got = 0;
  unsigned i;

  ck_assert_int_eq(uvq_channel_init(&ch, capacity), 0);
  receivers_start(rc, r_n, r_via, 0);
  senders_start(snd, s_n, per, s_via);
  senders_join(snd, s_n);
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  receivers_join(rc, r_n);
  for (i = 0; i < s_n; i++) {
    ck_assert_uint_eq(snd[i].ok, per);
    ck_assert_uint_eq(snd[i].other, 0);
  }
  for (i = 0; i < r_n; i++) {
    ck_assert_int_eq(rc[i].end, UVQ_ECLOSED);
    ck_assert_uint_eq(rc[i].order_errors, 0);
    got += rc[i].got;
  }
  ck_assert_uint_eq(got, s_n * per);
  ck_assert_uint_eq(exactly_once_errors(snd, s_n), 0);
  if (r_n == 1)
    for (i = 0; i < s_n; i++)
      ck_assert_int_eq(rc[0].last[i], (int) per - 1);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  senders_free(snd, s_n);
}

START_TEST(channel_four_senders_three_receivers_exactly_once_in_order) {
  many_to_many(4, 3, 20000 * uvq_test_scale(), 1000, VIA_BLOCK, VIA_BLOCK);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(channel_one_receiver_sees_each_senders_exact_order) {
  many_to_many(4, 1, 20000 * uvq_test_scale(), 64, VIA_BLOCK, VIA_BLOCK);
  uvq_test_loop_done(&loop);
}
END_TEST

/* More threads than cores on a tiny buffer: a sender preempted between
 * taking a slot and filling it must not stall the others for good. */
START_TEST(channel_eight_senders_on_capacity_two_all_finish) {
  many_to_many(8, 2, 5000 * uvq_test_scale(), 2, VIA_BLOCK, VIA_BLOCK);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(channel_timed_and_try_variants_move_every_event) {
  many_to_many(3, 2, 10000 * uvq_test_scale(), 16, VIA_TIMEOUT, VIA_TIMEOUT);
  many_to_many(2, 2, 10000 * uvq_test_scale(), 5, VIA_TRY, VIA_TRY);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- try variants, arguments, lifetime ------------------------------------ */

START_TEST(channel_try_variants_never_wait) {
  enum { CAP = 3 };
  item_t it[CAP + 1];
  uvq_event_t* ev;
  unsigned i;

  items_init(it, CAP + 1, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, CAP), 0);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), UVQ_EAGAIN);
  ck_assert_ptr_null(ev);
  for (i = 0; i < CAP; i++)
    ck_assert_int_eq(uvq_channel_try_send(&ch, &it[i].ev), 0);
  ck_assert_int_eq(uvq_channel_try_send(&ch, &it[CAP].ev), UVQ_EFULL);
  /* FIFO, and the ring wraps around several times. */
  for (i = 0; i < 10; i++) {
    ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
    ck_assert_ptr_eq(ev, &it[i % (CAP + 1)].ev);
    ck_assert_int_eq(
        uvq_channel_try_send(&ch, &it[(i + CAP) % (CAP + 1)].ev), 0);
  }
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  for (i = 10; i < 10 + CAP; i++) {
    ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
    ck_assert_ptr_eq(ev, &it[i % (CAP + 1)].ev);
  }
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(channel_invalid_arguments_return_einval) {
  uvq_channel_t zeroed;
  uvq_channel_sink_t sink;
  item_t it;
  uvq_event_t* ev = (uvq_event_t*) &ev;

  items_init(&it, 1, 0);
  memset(&zeroed, 0, sizeof(zeroed));
  ck_assert_int_eq(uvq_channel_init(NULL, 4), UVQ_EINVAL);
  {
    /* Misaligned (malloc's 16 bytes, say): refused, and left untouched. */
    static _Alignas(64) unsigned char raw[sizeof(uvq_channel_t) + 64];
    unsigned i;
    memset(raw, 0xa5, sizeof(raw));
    for (i = 8; i < 64; i += 8)
      ck_assert_int_eq(
          uvq_channel_init((uvq_channel_t*) (void*) (raw + i), 4),
          UVQ_EINVAL);
    for (i = 0; i < sizeof(raw); i++)
      ck_assert_uint_eq(raw[i], 0xa5);
  }
  ck_assert_int_eq(uvq_channel_init(&ch, 0), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_init(&ch, SIZE_MAX / sizeof(void*) + 1),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_init(&ch, UVQ_CHANNEL_MAX_CAPACITY + 1),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_init(&ch, SIZE_MAX), UVQ_EINVAL);

  /* A zeroed, never initialised channel is refused by everything. */
  ck_assert_int_eq(uvq_channel_send(&zeroed, &it.ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_try_send(&zeroed, &it.ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_send_timeout(&zeroed, &it.ev, 1), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_recv(&zeroed, &ev), UVQ_EINVAL);
  ck_assert_ptr_null(ev);
  ck_assert_int_eq(uvq_channel_try_recv(&zeroed, &ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_recv_timeout(&zeroed, &ev, 1), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_close(&zeroed), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_destroy(&zeroed), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &sink, &zeroed, 0), UVQ_EINVAL);

  ck_assert_int_eq(uvq_channel_init(&ch, 4), 0);
  ck_assert_int_eq(uvq_channel_send(NULL, &it.ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_send(&ch, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_try_send(NULL, &it.ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_try_send(&ch, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_send_timeout(NULL, &it.ev, 1), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_send_timeout(&ch, NULL, 1), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_send_timeout(&ch, &it.ev, -1), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_send_timeout(&ch, &it.ev, INT64_MIN),
                   UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_recv(NULL, &ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_recv(&ch, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_try_recv(NULL, &ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_recv_timeout(NULL, &ev, 1), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_recv_timeout(&ch, NULL, 1), UVQ_EINVAL);
  ev = (uvq_event_t*) &ev;
  ck_assert_int_eq(uvq_channel_recv_timeout(&ch, &ev, -1), UVQ_EINVAL);
  ck_assert_ptr_null(ev);
  ck_assert_int_eq(uvq_channel_close(NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_destroy(NULL), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_sink_init(NULL, &sink, &ch, 0), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, NULL, &ch, 0), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &sink, NULL, 0), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &sink, &ch, 0x80), UVQ_EINVAL);
  /* Nothing above touched the event or left anything inside. */
  ck_assert_uint_eq(uvq_event_refs(&it.ev), 1);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), UVQ_EAGAIN);

  /* A destroyed channel is refused too, and a second destroy. */
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_send(&ch, &it.ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_close(&ch), UVQ_EINVAL);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &sink, &ch, 0), UVQ_EINVAL);
  uvq_test_loop_done(&loop);
}
END_TEST

#ifndef SANITIZED
START_TEST(channel_init_reports_enomem_and_leaves_nothing) {
  ck_assert_int_eq(uvq_channel_init(&ch, UVQ_CHANNEL_MAX_CAPACITY),
                   UVQ_ENOMEM);
  ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EINVAL);
  uvq_test_loop_done(&loop);
}
END_TEST
#endif

START_TEST(channel_destroy_refuses_while_events_remain) {
  item_t it[2];
  uvq_event_t* ev;

  items_init(it, 2, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 4), 0);
  ck_assert_int_eq(uvq_channel_send(&ch, &it[0].ev), 0);
  ck_assert_int_eq(uvq_channel_send(&ch, &it[1].ev), 0);
  ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EBUSY);
  /* Refused means untouched: the events are still there, in order. */
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EBUSY);
  ck_assert_uint_eq(drain_closed(&ch), 1);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

static void blocked_recv_quiet_main(void* arg) {
  uvq_event_t* ev;
  (void) arg;
  atomic_store(&blocked_result, uvq_channel_recv(&ch, &ev));
}

START_TEST(channel_destroy_refuses_while_a_thread_is_blocked_inside) {
  uv_thread_t tid;

  atomic_store(&blocked_result, -1);
  ck_assert_int_eq(uvq_channel_init(&ch, 4), 0);
  ck_assert_int_eq(uv_thread_create(&tid, blocked_recv_quiet_main, NULL), 0);
  /* Destroying before the receiver is inside would be the caller's bug (and
   * would succeed), so wait until it sleeps: the one private field a test
   * reads, because no public call may answer "is somebody blocked" without
   * racing. A sleeper counts 4 in it. */
  while (atomic_load(&ch.recv_waiters_) < 4)
    uv_sleep(1);
  ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EBUSY);
  ck_assert_int_eq(uvq_channel_close(&ch), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  ck_assert_int_eq(atomic_load(&blocked_result), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);

  /* The same with a sender blocked on a full channel. (A blocked sender
   * means events in the channel, which alone make destroy refuse: this
   * checks the refusal, not which of destroy's tests gives it.) */
  {
    item_t it[2];
    uvq_event_t* ev;
    items_init(it, 2, 0);
    atomic_store(&blocked_result, -1);
    atomic_store(&blocked_done, 0);
    ck_assert_int_eq(uvq_channel_init(&ch, 1), 0);
    ck_assert_int_eq(uvq_channel_try_send(&ch, &it[0].ev), 0);
    ck_assert_int_eq(uv_thread_create(&tid, blocked_sender_main, &it[1].ev),
                     0);
    while (atomic_load(&ch.send_waiters_) < 4)
      uv_sleep(1);
    ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EBUSY);
    ck_assert_int_eq(uvq_channel_close(&ch), 0);
    ck_assert_int_eq(uv_thread_join(&tid), 0);
    ck_assert_int_eq(atomic_load(&blocked_result), UVQ_ECLOSED);
    ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EBUSY); /* it[0] */
    ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
    ck_assert_ptr_eq(ev, &it[0].ev);
    ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  }
  uvq_test_loop_done(&loop);
}
END_TEST

/* The channel never reads or writes an event: the same reference-counted
 * event may sit in two channels at once (fan-out to two channel sinks). */
START_TEST(channel_one_event_may_sit_in_two_channels) {
  uvq_channel_t other;
  item_t it;
  uvq_event_t* ev;

  items_init(&it, 1, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 2), 0);
  ck_assert_int_eq(uvq_channel_init(&other, 2), 0);
  uvq_event_ref(&it.ev);
  ck_assert_int_eq(uvq_channel_send(&ch, &it.ev), 0);
  ck_assert_int_eq(uvq_channel_send(&other, &it.ev), 0);
  ck_assert_uint_eq(uvq_event_refs(&it.ev), 2);
  ck_assert_int_eq(uvq_channel_recv(&other, &ev), 0);
  ck_assert_ptr_eq(ev, &it.ev);
  uvq_event_unref(ev);
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it.ev);
  uvq_event_unref(ev);
  ck_assert_uint_eq(atomic_load(&it.released), 1);
  ck_assert_int_eq(uvq_channel_destroy(&other), 0);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* -- the channel sink ----------------------------------------------------- */

static uvq_channel_sink_t cs;
static unsigned sink_closes;
static unsigned ready_calls;
static unsigned ready_off_loop;
static unsigned again_count;
static unsigned pump_next;
static unsigned pump_total;
static item_t* pump_items;
static int pump_error;
static uv_thread_t worker_tid;
static int worker_started;
static receiver_t worker;

static void sink_closed_cb(uvq_sink_t* s) {
  ck_assert_ptr_eq(s, &cs.sink);
  ck_assert(on_loop_thread());
  sink_closes++;
}

/* Given to a second close: never called (sink_closed_cb is, once). */
static void second_sink_closed_cb(uvq_sink_t* s) {
  (void) s;
  sink_closes += 100;
}

/* Unrefs what it receives: the channel sink's receiver owns a reference. */
static void unref_receiver_main(void* arg) {
  receiver_t* rc = arg;
  unsigned i;
  for (i = 0; i < 5; i++)
    uv_sleep(2); /* slow start: the loop fills the channel first */
  for (;;) {
    uvq_event_t* ev;
    item_t* it;
    int r = uvq_channel_recv(&ch, &ev);
    if (r != 0) {
      rc->end = r;
      return;
    }
    it = ITEM(ev);
    atomic_fetch_add(&it->received, 1);
    if ((int) it->seq != rc->last[0] + 1)
      rc->order_errors++;
    rc->last[0] = (int) it->seq;
    rc->got++;
    uvq_event_unref(ev);
  }
}

/* Write until "again" or the end; the writer drops its own reference once
 * the sink took the event (the sink holds its own). */
static void pump(void) {
  while (pump_next < pump_total) {
    item_t* it = &pump_items[pump_next];
    int r = uvq_sink_write(&cs.sink, &it->ev);
    if (r == UVQ_EAGAIN) {
      again_count++;
      if (!worker_started) {
        /* Start receiving only now: the first "again" is certain. */
        memset(&worker, 0, sizeof(worker));
        worker.last[0] = -1;
        ck_assert_int_eq(
            uv_thread_create(&worker_tid, unref_receiver_main, &worker), 0);
        worker_started = 1;
      }
      return;
    }
    if (r != 0) {
      pump_error = r;
      return;
    }
    uvq_event_unref(&it->ev);
    pump_next++;
  }
  ck_assert_int_eq(uvq_sink_close(&cs.sink, sink_closed_cb), 0);
}

static void pump_ready(uvq_sink_t* s, void* arg) {
  ck_assert_ptr_eq(s, &cs.sink);
  ck_assert_ptr_eq(arg, &pump_next);
  if (!on_loop_thread())
    ready_off_loop++;
  ready_calls++;
  if (!uvq_sink_is_closed(s))
    pump();
}

static void sink_reset(void) {
  memset(&cs, 0, sizeof(cs));
  sink_closes = ready_calls = ready_off_loop = again_count = 0;
  pump_next = pump_total = 0;
  pump_items = NULL;
  pump_error = 0;
  worker_started = 0;
}

START_TEST(channel_sink_loop_writes_until_again_and_resumes_when_ready) {
  unsigned n = 3000 * uvq_test_scale();
  unsigned i;

  sink_reset();
  pump_items = items_new(n, 0);
  pump_total = n;
  ck_assert_int_eq(uvq_channel_init(&ch, 8), 0);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &cs, &ch, 0), 0);
  ck_assert_int_eq(uvq_sink_set_ready_cb(&cs.sink, pump_ready, &pump_next),
                   0);
  pump();
  ck_assert_uint_eq(again_count, 1); /* 8 written, then "again" */
  ck_assert_uint_eq(pump_next, 8);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(worker_started, 1);
  ck_assert_int_eq(uv_thread_join(&worker_tid), 0);

  ck_assert_int_eq(pump_error, 0);
  ck_assert_uint_eq(pump_next, n);
  ck_assert_uint_eq(sink_closes, 1);
  ck_assert_uint_ge(ready_calls, 1);
  ck_assert_uint_eq(ready_off_loop, 0);
  /* Closing the sink closed the channel: the worker drained, then ended. */
  ck_assert_int_eq(worker.end, UVQ_ECLOSED);
  ck_assert_uint_eq(worker.got, n);
  ck_assert_uint_eq(worker.order_errors, 0);
  for (i = 0; i < n; i++) {
    ck_assert_uint_eq(atomic_load(&pump_items[i].received), 1);
    ck_assert_uint_eq(atomic_load(&pump_items[i].released), 1);
  }
  ck_assert_uint_eq(atomic_load(&releases), n);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  free(pump_items);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(channel_sink_close_close_then_write_returns_eclosed) {
  item_t it[3];
  uvq_event_t* ev;
  unsigned i;

  sink_reset();
  items_init(it, 3, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 4), 0);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &cs, &ch, 0), 0);
  ck_assert_int_eq(uvq_sink_write(&cs.sink, &it[0].ev), 0);
  ck_assert_uint_eq(uvq_event_refs(&it[0].ev), 2); /* ours + the channel's */
  ck_assert_int_eq(uvq_sink_close(&cs.sink, sink_closed_cb), 0);
  ck_assert_int_eq(uvq_sink_close(&cs.sink, second_sink_closed_cb), 0);
  for (i = 0; i < 10000; i++)
    ck_assert_int_eq(uvq_sink_write(&cs.sink, &it[1].ev), UVQ_ECLOSED);
  ck_assert_uint_eq(uvq_event_refs(&it[1].ev), 1);
  ck_assert_uint_eq(sink_closes, 0); /* completes in the handle's close cb */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(sink_closes, 1);
  /* By default the sink's close closed the channel; what it wrote stays
   * there for the receivers, who own its reference. */
  ck_assert_int_eq(uvq_channel_try_send(&ch, &it[2].ev), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  uvq_event_unref(ev);
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), UVQ_ECLOSED);
  uvq_event_unref(&it[0].ev);
  ck_assert_uint_eq(atomic_load(&it[0].released), 1);
  ck_assert_uint_eq(atomic_load(&releases), 1);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(channel_sink_keep_open_leaves_the_channel_open) {
  uvq_channel_sink_t second;
  item_t it[2];
  uvq_event_t* ev;

  sink_reset();
  items_init(it, 2, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 4), 0);
  ck_assert_int_eq(
      uvq_channel_sink_init(&loop, &cs, &ch, UVQ_CHANNEL_SINK_KEEP_OPEN), 0);
  /* One channel sink per channel. */
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &second, &ch, 0), UVQ_EBUSY);
  ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EBUSY); /* sink attached */
  ck_assert_int_eq(uvq_sink_close(&cs.sink, sink_closed_cb), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(sink_closes, 1);
  ck_assert_int_eq(uvq_channel_try_send(&ch, &it[0].ev), 0);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  /* Once the first sink is closed, another may attach. */
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &second, &ch, 0), 0);
  ck_assert_int_eq(uvq_sink_write(&second.sink, &it[1].ev), 0);
  ck_assert_int_eq(uvq_sink_close(&second.sink, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[1].ev);
  uvq_event_unref(ev);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), UVQ_ECLOSED);
  ck_assert_uint_eq(uvq_event_refs(&it[1].ev), 1);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* The contract: ch may be destroyed once the sink's close has begun, before
 * its close callback; the sink must not touch ch again (ASan/valgrind see
 * it if it does, and the ring's memory is gone). */
START_TEST(channel_destroy_after_the_sink_close_began) {
  item_t it[1];
  uvq_event_t* ev;

  sink_reset();
  items_init(it, 1, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 4), 0);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &cs, &ch, 0), 0);
  ck_assert_int_eq(uvq_sink_write(&cs.sink, &it[0].ev), 0);
  ck_assert_int_eq(uvq_sink_close(&cs.sink, sink_closed_cb), 0);
  ck_assert_uint_eq(sink_closes, 0); /* the callback is still to come */
  ck_assert_int_eq(uvq_channel_destroy(&ch), UVQ_EBUSY); /* one event */
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  uvq_event_unref(ev);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(sink_closes, 1);
  ck_assert_uint_eq(uvq_event_refs(&it[0].ev), 1);
  uvq_test_loop_done(&loop);
}
END_TEST

static void closer_main(void* arg) {
  (void) arg;
  uv_sleep(10);
  uvq_channel_close(&ch);
}

/* The sink said "again" (full); another thread closes the channel: the sink
 * is told it is ready, so its upstream retries and learns "closed". */
START_TEST(channel_sink_waiting_for_room_hears_of_a_close) {
  item_t it[2];
  uv_thread_t tid;
  unsigned i;

  sink_reset();
  items_init(it, 2, 0);
  pump_items = it;
  pump_total = 2;
  worker_started = 1; /* nobody receives */
  ck_assert_int_eq(uvq_channel_init(&ch, 1), 0);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &cs, &ch, 0), 0);
  ck_assert_int_eq(uvq_sink_set_ready_cb(&cs.sink, pump_ready, &pump_next),
                   0);
  pump();
  ck_assert_uint_eq(again_count, 1);
  ck_assert_uint_eq(pump_next, 1);
  ck_assert_uint_eq(uvq_event_refs(&it[1].ev), 1); /* "again": not kept */
  ck_assert_int_eq(uv_thread_create(&tid, closer_main, NULL), 0);
  /* The loop wakes on the close, pump retries and gets "closed". */
  while (pump_error == 0)
    ck_assert_int_ge(uv_run(&loop, UV_RUN_ONCE), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  ck_assert_int_eq(pump_error, UVQ_ECLOSED);
  ck_assert_uint_ge(ready_calls, 1);
  ck_assert_uint_eq(ready_off_loop, 0);
  /* Closed, every time, and no reference leaks on the way. */
  for (i = 0; i < 10000; i++)
    ck_assert_int_eq(uvq_sink_write(&cs.sink, &it[1].ev), UVQ_ECLOSED);
  ck_assert_uint_eq(uvq_event_refs(&it[1].ev), 1);
  ck_assert_int_eq(uvq_sink_close(&cs.sink, sink_closed_cb), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(sink_closes, 1);
  /* pump dropped its own reference to it[0]; the one left is the
   * channel's, which the receiver (here drain_closed) now owns. */
  ck_assert_uint_eq(uvq_event_refs(&it[0].ev), 1);
  ck_assert_uint_eq(atomic_load(&releases), 0);
  ck_assert_uint_eq(drain_closed(&ch), 1);
  uvq_event_unref(&it[0].ev);
  ck_assert_uint_eq(atomic_load(&it[0].released), 1);
  ck_assert_uint_eq(atomic_load(&releases), 1);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

/* The sink said "again" and is then closed by its user: no receiver can
 * wake it any more, so its close sends the ready itself, and the upstream's
 * retry learns "closed" (sinks.md), whether or not the channel stays open. */
static int retry_result;

static void retry_ready(uvq_sink_t* s, void* arg) {
  ck_assert(on_loop_thread());
  ready_calls++;
  retry_result = uvq_sink_write(s, &((item_t*) arg)->ev);
}

static void run_sink_closed_while_upstream_waits(unsigned flags) {
  item_t it[2];
  uvq_event_t* ev;

  sink_reset();
  items_init(it, 2, 0);
  retry_result = 1;
  ck_assert_int_eq(uvq_channel_init(&ch, 1), 0);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &cs, &ch, flags), 0);
  ck_assert_int_eq(uvq_sink_set_ready_cb(&cs.sink, retry_ready, &it[1]), 0);
  ck_assert_int_eq(uvq_sink_write(&cs.sink, &it[0].ev), 0);
  ck_assert_int_eq(uvq_sink_write(&cs.sink, &it[1].ev), UVQ_EAGAIN);
  ck_assert_uint_eq(ready_calls, 0);
  ck_assert_int_eq(uvq_sink_close(&cs.sink, sink_closed_cb), 0);
  ck_assert_uint_eq(ready_calls, 1);
  ck_assert_int_eq(retry_result, UVQ_ECLOSED);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(sink_closes, 1);
  ck_assert_uint_eq(ready_calls, 1); /* once */
  ck_assert_uint_eq(uvq_event_refs(&it[1].ev), 1); /* never kept */
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  uvq_event_unref(ev); /* the channel's reference */
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev),
                   flags & UVQ_CHANNEL_SINK_KEEP_OPEN ? UVQ_EAGAIN
                                                      : UVQ_ECLOSED);
  uvq_event_unref(&it[0].ev);
  uvq_event_unref(&it[1].ev);
  ck_assert_uint_eq(atomic_load(&releases), 2);
  if (flags & UVQ_CHANNEL_SINK_KEEP_OPEN)
    ck_assert_int_eq(uvq_channel_close(&ch), 0);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
}

START_TEST(channel_sink_closed_while_its_upstream_waits_sends_a_ready) {
  run_sink_closed_while_upstream_waits(0);
  atomic_store(&releases, 0);
  run_sink_closed_while_upstream_waits(UVQ_CHANNEL_SINK_KEEP_OPEN);
  uvq_test_loop_done(&loop);
}
END_TEST

START_TEST(channel_blocking_calls_on_sink_loop_return_edeadlk) {
  item_t it[2];
  uvq_event_t* ev;

  sink_reset();
  items_init(it, 2, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 2), 0);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &cs, &ch, 0), 0);
  /* Refused whether or not they would have had to wait. */
  ck_assert_int_eq(uvq_channel_send(&ch, &it[0].ev), UVQ_EDEADLK);
  ck_assert_int_eq(uvq_channel_send_timeout(&ch, &it[0].ev, 5), UVQ_EDEADLK);
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), UVQ_EDEADLK);
  ck_assert_ptr_null(ev);
  ck_assert_int_eq(uvq_channel_recv_timeout(&ch, &ev, 5), UVQ_EDEADLK);
  /* The non-blocking variants are fine on the loop thread. */
  ck_assert_int_eq(uvq_channel_try_send(&ch, &it[0].ev), 0);
  ck_assert_int_eq(uvq_channel_send_timeout(&ch, &it[1].ev, 0), 0);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), 0);
  ck_assert_ptr_eq(ev, &it[0].ev);
  ck_assert_int_eq(uvq_channel_recv_timeout(&ch, &ev, 0), 0);
  ck_assert_ptr_eq(ev, &it[1].ev);
  ck_assert_uint_eq(uvq_event_refs(&it[0].ev), 1);
  ck_assert_int_eq(uvq_sink_close(&cs.sink, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  /* Detached: the channel no longer knows this thread as a loop. */
  ck_assert_int_eq(uvq_channel_recv(&ch, &ev), UVQ_ECLOSED);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

static atomic_int thread_write_result;

static void foreign_writer_main(void* arg) {
  atomic_store(&thread_write_result, uvq_sink_write(&cs.sink, arg));
}

START_TEST(channel_sink_write_from_another_thread_returns_ethread) {
  item_t it;
  uv_thread_t tid;
  uvq_event_t* ev;

  sink_reset();
  items_init(&it, 1, 0);
  ck_assert_int_eq(uvq_channel_init(&ch, 2), 0);
  ck_assert_int_eq(uvq_channel_sink_init(&loop, &cs, &ch, 0), 0);
  ck_assert_int_eq(uv_thread_create(&tid, foreign_writer_main, &it.ev), 0);
  ck_assert_int_eq(uv_thread_join(&tid), 0);
  ck_assert_int_eq(atomic_load(&thread_write_result), UVQ_ETHREAD);
  ck_assert_uint_eq(uvq_event_refs(&it.ev), 1);
  ck_assert_int_eq(uvq_channel_try_recv(&ch, &ev), UVQ_EAGAIN);
  ck_assert_int_eq(uvq_sink_close(&cs.sink, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uvq_channel_destroy(&ch), 0);
  uvq_test_loop_done(&loop);
}
END_TEST

Suite* channel_suite(void) {
  Suite* s = suite_create("channel");
  TCase* tc = tcase_create("channel");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  /* go-events' scenario and its flaw */
  tcase_add_test(tc, channel_hundred_writers_one_reader_all_arrive_then_closed);
  tcase_add_test(tc, channel_send_after_close_fails_every_time_with_room_left);
  tcase_add_test(tc, channel_close_wins_over_concurrent_senders);
  /* blocking and timeouts */
  tcase_add_test(tc, channel_blocking_send_wakes_when_a_receiver_frees_space);
  tcase_add_test(tc, channel_blocking_recv_wakes_when_a_sender_sends);
  tcase_add_test(tc, channel_timed_send_times_out_when_full);
  tcase_add_test(tc, channel_timed_recv_times_out_when_empty);
  tcase_add_test(tc, channel_timed_recv_wakes_early_when_a_sender_sends);
  /* close */
  tcase_add_test(tc, channel_close_wakes_blocked_senders_then_receivers_drain);
  tcase_add_test(tc, channel_close_wakes_blocked_receivers_with_eclosed);
  tcase_add_test(tc, channel_close_under_load_loses_nothing);
  /* many threads */
  tcase_add_test(tc,
                 channel_four_senders_three_receivers_exactly_once_in_order);
  tcase_add_test(tc, channel_one_receiver_sees_each_senders_exact_order);
  tcase_add_test(tc, channel_eight_senders_on_capacity_two_all_finish);
  tcase_add_test(tc, channel_timed_and_try_variants_move_every_event);
  /* try, arguments, lifetime */
  tcase_add_test(tc, channel_try_variants_never_wait);
  tcase_add_test(tc, channel_invalid_arguments_return_einval);
#ifndef SANITIZED
  tcase_add_test(tc, channel_init_reports_enomem_and_leaves_nothing);
#endif
  tcase_add_test(tc, channel_destroy_refuses_while_events_remain);
  tcase_add_test(tc, channel_destroy_refuses_while_a_thread_is_blocked_inside);
  tcase_add_test(tc, channel_destroy_after_the_sink_close_began);
  tcase_add_test(tc, channel_one_event_may_sit_in_two_channels);
  /* the channel sink */
  tcase_add_test(tc,
                 channel_sink_loop_writes_until_again_and_resumes_when_ready);
  tcase_add_test(tc, channel_sink_close_close_then_write_returns_eclosed);
  tcase_add_test(tc, channel_sink_keep_open_leaves_the_channel_open);
  tcase_add_test(tc, channel_sink_waiting_for_room_hears_of_a_close);
  tcase_add_test(tc,
                 channel_sink_closed_while_its_upstream_waits_sends_a_ready);
  tcase_add_test(tc, channel_blocking_calls_on_sink_loop_return_edeadlk);
  tcase_add_test(tc, channel_sink_write_from_another_thread_returns_ethread);
  suite_add_tcase(s, tc);
  return s;
}
