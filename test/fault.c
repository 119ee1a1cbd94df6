/* Fault injection and allocation accounting: see fault.h.
 *
 * The wrappers forward to glibc's own entry points (__libc_malloc and
 * friends, which glibc exports for exactly this purpose) and to the next
 * definition of the pthread functions (dlsym RTLD_NEXT). They
 * must not allocate themselves: the per-thread arming state is initial-exec
 * TLS of the executable, which needs no allocation, and the counters are
 * plain atomics. Under valgrind, __libc_malloc is valgrind's own, so leak
 * checking still sees every block.
 */
#include <dlfcn.h>
#include <link.h>
#include <sched.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "fault.h"

static atomic_int counting;
static atomic_uint_fast64_t counted;
static atomic_long live_blocks;
#if !UVQ_TEST_SANITIZED
static atomic_long live_mutexes;
static atomic_long live_conds;
#endif

/* Per thread: which call from the arm fails, and what happened since. */
static __thread unsigned arm_n;
static __thread unsigned arm_calls;
static __thread int arm_mask;
static __thread int arm_sticky;
static __thread unsigned arm_fired;
static __thread int arm_first_kind;

void uvq_fault_arm(unsigned n, int mask, int sticky) {
  arm_calls = 0;
  arm_fired = 0;
  arm_first_kind = 0;
  arm_mask = mask;
  arm_sticky = sticky;
  arm_n = n;
}

unsigned uvq_fault_disarm(void) {
  arm_n = 0;
  return arm_fired;
}

int uvq_fault_first_kind(void) {
  return arm_first_kind;
}

void uvq_alloc_count_start(void) {
  atomic_store(&counted, 0);
  atomic_store(&counting, 1);
}

uint64_t uvq_alloc_count_stop(void) {
  atomic_store(&counting, 0);
  return atomic_load(&counted);
}

static void uvq__count_alloc(void) {
  if (atomic_load_explicit(&counting, memory_order_relaxed))
    atomic_fetch_add(&counted, 1);
}

#if UVQ_TEST_SANITIZED

/* The sanitizer owns malloc: count through its hooks, inject nothing. */
int __sanitizer_install_malloc_and_free_hooks(
    void (*malloc_hook)(const volatile void*, size_t),
    void (*free_hook)(const volatile void*));

static void uvq__malloc_hook(const volatile void* p, size_t n) {
  (void) p;
  (void) n;
  uvq__count_alloc();
  atomic_fetch_add(&live_blocks, 1);
}

static void uvq__free_hook(const volatile void* p) {
  (void) p;
  atomic_fetch_sub(&live_blocks, 1);
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;
static int hooks_ok;

static void uvq__install_hooks(void) {
  hooks_ok = __sanitizer_install_malloc_and_free_hooks(uvq__malloc_hook,
                                                        uvq__free_hook) != 0;
}

int uvq_fault_available(int mask, const char** why) {
  (void) mask;
  if (why != NULL)
    *why = "built with a sanitizer that owns malloc and pthread: "
           "failures cannot be injected (they are under plain builds and "
           "valgrind)";
  return 0;
}

int uvq_alloc_count_available(void) {
  pthread_once(&hooks_once, uvq__install_hooks);
  return hooks_ok;
}

void uvq_live(uvq_live_t* out) {
  pthread_once(&hooks_once, uvq__install_hooks);
  out->blocks = hooks_ok ? atomic_load(&live_blocks) : -1;
  out->mutexes = -1;
  out->conds = -1;
}

int uvq_yield_count_available(const char** why) {
  if (why != NULL)
    *why = "built with a sanitizer: sched_yield is not interposed there "
           "(it is under plain builds and valgrind)";
  return 0;
}

unsigned long uvq_yield_count(void) {
  return 0;
}

unsigned long uvq_yield_count_in_libuv(void) {
  return 0;
}

#else /* !UVQ_TEST_SANITIZED: the interposer */

void* __libc_malloc(size_t n);
void* __libc_calloc(size_t n, size_t size);
void* __libc_realloc(void* p, size_t n);
void* __libc_memalign(size_t align, size_t n);
void __libc_free(void* p);

/* Valgrind replaces malloc even in the executable, so our wrappers may be
 * bypassed: ask libc for a block (strdup allocates through the same
 * binding as every other library) and see whether we were asked. */
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int probe_alloc_ok;

static void uvq__probe(void) {
  char* (*volatile dup)(const char*) = strdup;
  unsigned n = arm_n, calls = arm_calls, fired = arm_fired;
  int mask = arm_mask, sticky = arm_sticky, kind = arm_first_kind;
  char* p;
  uvq_fault_arm(1, UVQ_FAULT_ALLOC, 0);
  p = dup("probe");
  probe_alloc_ok = uvq_fault_disarm() == 1 && p == NULL;
  free(p);
  arm_n = n; /* whoever was armed stays armed */
  arm_calls = calls;
  arm_fired = fired;
  arm_mask = mask;
  arm_sticky = sticky;
  arm_first_kind = kind;
}

int uvq_fault_available(int mask, const char** why) {
  int ok;
  pthread_once(&probe_once, uvq__probe);
  ok = probe_alloc_ok || !(mask & UVQ_FAULT_ALLOC);
  if (why != NULL)
    *why = ok ? NULL
              : "malloc is replaced by the runtime (valgrind?): "
                "allocation failures cannot be injected";
  return ok;
}

int uvq_alloc_count_available(void) {
  pthread_once(&probe_once, uvq__probe);
  return probe_alloc_ok;
}

void uvq_live(uvq_live_t* out) {
  pthread_once(&probe_once, uvq__probe);
  out->blocks = probe_alloc_ok ? atomic_load(&live_blocks) : -1;
  out->mutexes = atomic_load(&live_mutexes);
  out->conds = atomic_load(&live_conds);
}

/* 1 when this call must fail. Counts the call when the thread is armed. */
static int uvq__should_fail(int kind) {
  if (arm_n == 0 || !(arm_mask & kind))
    return 0;
  arm_calls++;
  if (arm_calls == arm_n || (arm_sticky && arm_calls > arm_n)) {
    if (arm_fired++ == 0)
      arm_first_kind = kind;
    return 1;
  }
  return 0;
}

void* malloc(size_t n) {
  void* p;
  uvq__count_alloc();
  if (uvq__should_fail(UVQ_FAULT_ALLOC)) {
    errno = ENOMEM;
    return NULL;
  }
  p = __libc_malloc(n);
  if (p != NULL)
    atomic_fetch_add(&live_blocks, 1);
  return p;
}

void* calloc(size_t n, size_t size) {
  void* p;
  uvq__count_alloc();
  if (uvq__should_fail(UVQ_FAULT_ALLOC)) {
    errno = ENOMEM;
    return NULL;
  }
  p = __libc_calloc(n, size);
  if (p != NULL)
    atomic_fetch_add(&live_blocks, 1);
  return p;
}

void* realloc(void* old, size_t n) {
  void* p;
  uvq__count_alloc();
  if (uvq__should_fail(UVQ_FAULT_ALLOC)) {
    errno = ENOMEM;
    return NULL;
  }
  p = __libc_realloc(old, n);
  if (old == NULL && p != NULL)
    atomic_fetch_add(&live_blocks, 1);
  else if (old != NULL && n == 0 && p == NULL)
    atomic_fetch_sub(&live_blocks, 1); /* glibc: realloc(p, 0) frees p */
  return p;
}

void free(void* p) {
  if (p == NULL)
    return;
  atomic_fetch_sub(&live_blocks, 1);
  __libc_free(p);
}

/* glibc's own aligned allocators would otherwise bypass the count (and
 * their blocks would reach our free unannounced). */
static void* uvq__aligned(size_t align, size_t n) {
  void* p;
  uvq__count_alloc();
  if (uvq__should_fail(UVQ_FAULT_ALLOC))
    return NULL;
  p = __libc_memalign(align, n);
  if (p != NULL)
    atomic_fetch_add(&live_blocks, 1);
  return p;
}

void* memalign(size_t align, size_t n) {
  void* p = uvq__aligned(align, n);
  if (p == NULL)
    errno = ENOMEM;
  return p;
}

void* aligned_alloc(size_t align, size_t n) {
  return memalign(align, n);
}

int posix_memalign(void** out, size_t align, size_t n) {
  void* p;
  if (align < sizeof(void*) || (align & (align - 1)) != 0)
    return EINVAL;
  p = uvq__aligned(align, n);
  if (p == NULL)
    return ENOMEM;
  *out = p;
  return 0;
}

void* valloc(size_t n) {
  return memalign(4096, n);
}

void* pvalloc(size_t n) {
  return memalign(4096, (n + 4095) & ~(size_t) 4095);
}

/* pthread: forward to the next definition (libc). dlsym only
 * allocates on an error path, through the wrappers above (no recursion). */
typedef int (*mutex_init_fn)(pthread_mutex_t*, const pthread_mutexattr_t*);
typedef int (*mutex_destroy_fn)(pthread_mutex_t*);
typedef int (*cond_init_fn)(pthread_cond_t*, const pthread_condattr_t*);
typedef int (*cond_destroy_fn)(pthread_cond_t*);

static void* uvq__next(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (f == NULL)
    abort(); /* the test binary cannot work without libc */
  return f;
}

int pthread_mutex_init(pthread_mutex_t* m, const pthread_mutexattr_t* a) {
  static _Atomic(mutex_init_fn) next;
  mutex_init_fn f = atomic_load(&next);
  int r;
  if (f == NULL) {
    f = (mutex_init_fn) uvq__next("pthread_mutex_init");
    atomic_store(&next, f);
  }
  if (uvq__should_fail(UVQ_FAULT_MUTEX))
    return ENOMEM;
  r = f(m, a);
  if (r == 0)
    atomic_fetch_add(&live_mutexes, 1);
  return r;
}

int pthread_mutex_destroy(pthread_mutex_t* m) {
  static _Atomic(mutex_destroy_fn) next;
  mutex_destroy_fn f = atomic_load(&next);
  int r;
  if (f == NULL) {
    f = (mutex_destroy_fn) uvq__next("pthread_mutex_destroy");
    atomic_store(&next, f);
  }
  r = f(m);
  if (r == 0)
    atomic_fetch_sub(&live_mutexes, 1);
  return r;
}

int pthread_cond_init(pthread_cond_t* c, const pthread_condattr_t* a) {
  static _Atomic(cond_init_fn) next;
  cond_init_fn f = atomic_load(&next);
  int r;
  if (f == NULL) {
    f = (cond_init_fn) uvq__next("pthread_cond_init");
    atomic_store(&next, f);
  }
  if (uvq__should_fail(UVQ_FAULT_COND))
    return ENOMEM;
  r = f(c, a);
  if (r == 0)
    atomic_fetch_add(&live_conds, 1);
  return r;
}

int pthread_cond_destroy(pthread_cond_t* c) {
  static _Atomic(cond_destroy_fn) next;
  cond_destroy_fn f = atomic_load(&next);
  int r;
  if (f == NULL) {
    f = (cond_destroy_fn) uvq__next("pthread_cond_destroy");
    atomic_store(&next, f);
  }
  r = f(c);
  if (r == 0)
    atomic_fetch_sub(&live_conds, 1);
  return r;
}

/* sched_yield: counted per thread (and apart, those called from libuv:
 * their caller lies in the object that holds uv_version, whose loaded
 * range is looked up once), then libc's. */
typedef int (*yield_fn)(void);
static _Thread_local unsigned long yields_here;
static _Thread_local unsigned long yields_in_libuv;
static pthread_once_t libuv_once = PTHREAD_ONCE_INIT;
static uintptr_t libuv_lo, libuv_hi;

static int uvq__find_libuv(struct dl_phdr_info* info, size_t size,
                           void* arg) {
  uintptr_t want = (uintptr_t) arg, lo = UINTPTR_MAX, hi = 0;
  int mine = 0;
  ElfW(Half) i;
  (void) size;
  for (i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr)* ph = &info->dlpi_phdr[i];
    uintptr_t a = info->dlpi_addr + ph->p_vaddr;
    if (ph->p_type != PT_LOAD)
      continue;
    if (a < lo)
      lo = a;
    if (a + ph->p_memsz > hi)
      hi = a + ph->p_memsz;
    if (want >= a && want < a + ph->p_memsz)
      mine = 1;
  }
  if (!mine)
    return 0;
  libuv_lo = lo;
  libuv_hi = hi;
  return 1;
}

static void uvq__find_libuv_once(void) {
  dl_iterate_phdr(uvq__find_libuv, (void*) (uintptr_t) &uv_version);
}

int sched_yield(void) {
  static _Atomic(yield_fn) next;
  yield_fn f = atomic_load(&next);
  if (f == NULL) {
    f = (yield_fn) uvq__next("sched_yield");
    atomic_store(&next, f);
  }
  yields_here++;
  pthread_once(&libuv_once, uvq__find_libuv_once);
  if ((uintptr_t) __builtin_return_address(0) - libuv_lo <
      libuv_hi - libuv_lo)
    yields_in_libuv++;
  return f();
}

int uvq_yield_count_available(const char** why) {
  (void) why;
  return 1;
}

unsigned long uvq_yield_count(void) {
  return yields_here;
}

unsigned long uvq_yield_count_in_libuv(void) {
  return yields_in_libuv;
}

#endif
