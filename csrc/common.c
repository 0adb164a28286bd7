/* common.c — errors, aligned memory, the thread count, version: what every other file uses. */
#include "internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- errors */

static _Thread_local char fn_error_message[1024];

fn_status fn_error(fn_status code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(fn_error_message, sizeof fn_error_message, fmt, args);
    va_end(args);
    return code;
}

const char *fn_last_error(void) { return fn_error_message; }

const char *fn_version(void) { return FN_VERSION_STRING; }

int fn_version_number(void) { return FN_VERSION_NUMBER; }

const char *fn_dtype_name(fn_dtype d) { return d == FN_FLOAT64 ? "float64" : "float32"; }

/* ---------------------------------------------------------------- memory */

static _Atomic uint64_t fn_allocation_counter;

uint64_t fn_allocations(void) { return fn_allocation_counter; }

void *fn_alloc(size_t bytes) {
    void *p = NULL;
    fn_allocation_counter++;
    /* Round up: aligned_alloc wants a multiple of the alignment, and kernels may read whole
     * vectors at the tail of a row. */
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) return NULL;
    if (rounded == 0) rounded = 64;
    if (posix_memalign(&p, 64, rounded) != 0) return NULL;
    return p;
}

void *fn_calloc(size_t bytes) {
    void *p = fn_alloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void fn_free(void *p) { free(p); }

/* ---------------------------------------------------------------- per-thread scratch
 *
 * The built-in GEMM packs its operands into a buffer of up to about 1 MB per call. Allocating it on
 * every call cost an allocation per GEMM per thread and broke the rule that a training step
 * allocates nothing; each thread therefore keeps its buffers, each grown when a call needs more
 * and otherwise reused. They belong to the thread, so two models trained from two threads at once
 * never share one, and no lock is needed. A pthread key frees them when the thread exits (Python
 * threads, OpenMP threads of a team that shrinks); fn_release_thread_buffers frees them earlier. */
typedef struct {
    void *data[FN_THREAD_BUFFERS];
    size_t bytes[FN_THREAD_BUFFERS];
} fn_scratch;

static _Thread_local fn_scratch fn_thread_scratch;
static pthread_key_t fn_scratch_key;
static pthread_once_t fn_scratch_key_once = PTHREAD_ONCE_INIT;
static bool fn_scratch_key_ok;

static void fn_scratch_destroy(void *unused) {
    (void)unused;
    for (int i = 0; i < FN_THREAD_BUFFERS; i++) {
        fn_free(fn_thread_scratch.data[i]);
        fn_thread_scratch.data[i] = NULL;
        fn_thread_scratch.bytes[i] = 0;
    }
}

static void fn_scratch_key_create(void) {
    fn_scratch_key_ok = pthread_key_create(&fn_scratch_key, fn_scratch_destroy) == 0;
}

void *fn_thread_buffer(fn_thread_buffer_use use, size_t bytes) {
    fn_scratch *s = &fn_thread_scratch;
    if (s->data[use] != NULL && s->bytes[use] >= bytes) return s->data[use];
    pthread_once(&fn_scratch_key_once, fn_scratch_key_create);
    void *p = fn_alloc(bytes);
    if (p == NULL) return NULL; /* the old buffer stays, still too small */
    fn_free(s->data[use]);
    s->data[use] = p;
    s->bytes[use] = bytes;
    /* A destructor runs only for a non-NULL value: any non-NULL marker will do, the buffers are
     * found through the thread-local record. */
    if (fn_scratch_key_ok) pthread_setspecific(fn_scratch_key, s);
    return p;
}

void fn_release_thread_buffers(void) {
#ifdef _OPENMP
    /* Each thread of the calling thread's team frees its own buffers: the team is the one its
     * kernels ran on, and no other thread's buffer is touched. */
    int threads = fn_get_num_threads();
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        fn_scratch_destroy(NULL);
    }
#endif
    fn_scratch_destroy(NULL);
}

bool fn_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return false;
    *out = a * b;
    return true;
}

/* ---------------------------------------------------------------- threads */

/* 0: not chosen yet, use the processors we may run on. Atomic: models used from several threads
 * at once all read it, and the first read also writes it. */
static _Atomic int fn_thread_count = 0;

static int fn_default_threads(void) {
#ifdef _OPENMP
    int n = omp_get_num_procs(); /* respects the affinity mask, like os.sched_getaffinity */
    return n > 0 ? n : 1;
#else
    return 1;
#endif
}

void fn_set_num_threads(int n) {
#ifdef _OPENMP
    fn_thread_count = n < 1 ? fn_default_threads() : n;
#else
    (void)n;
    fn_thread_count = 1;
#endif
}

int fn_get_num_threads(void) {
    int n = fn_thread_count;
    if (n < 1) {
        n = fn_default_threads();
        fn_thread_count = n;
    }
    return n;
}

int fn_threads_get(void) { return fn_get_num_threads(); }

/* Atomic for the same reason as the thread count. */
static _Atomic int fn_deterministic_mode = 0;

void fn_set_deterministic(int on) { fn_deterministic_mode = on != 0; }

int fn_get_deterministic(void) { return fn_deterministic_mode; }

bool fn_deterministic(void) { return fn_deterministic_mode != 0; }

void fn_run_team(int parts, fn_team_fn fn, void *arg) {
    if (parts <= 1) {
        fn(0, 1, arg);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(parts)
    fn(omp_get_thread_num(), omp_get_num_threads(), arg);
#else
    for (int id = 0; id < parts; id++) fn(id, parts, arg);
#endif
}

void fn_team_barrier(void) {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

typedef struct {
    int parts;
    fn_team_fn fn;
    void *arg;
} fn_parts_job;

/* Thread `id` of `team`: its contiguous range of the parts, in order. */
static void fn_run_part_range(int id, int team, void *arg) {
    const fn_parts_job *job = arg;
    int64_t begin, end;
    fn_partition(job->parts, team, id, &begin, &end);
    for (int64_t part = begin; part < end; part++) job->fn((int)part, job->parts, job->arg);
}

void fn_run_parts(int parts, int threads, fn_team_fn fn, void *arg) {
    if (parts <= threads) {
        fn_run_team(parts, fn, arg);
        return;
    }
    fn_parts_job job = {parts, fn, arg};
    /* The range is taken from the team's actual size, so every part runs even if OpenMP starts
     * fewer threads than asked for. */
    fn_run_team(threads, fn_run_part_range, &job);
}

int fn_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------- values */

/* NaN and Inf are the values whose exponent bits are all ones. An integer OR-reduction over that
 * test vectorises (a floating-point one would not, without reassociation), so the common
 * all-finite case runs at memory speed; the index is searched for only on failure. The bits are
 * read through memcpy, which compiles to a plain load and respects strict aliasing. */
#define FN_SCAN_NONFINITE(uint_t, exponent)                                                       \
    do {                                                                                          \
        const unsigned char *bytes = data;                                                        \
        uint_t any = 0, bits;                                                                     \
        for (int64_t i = 0; i < count; i++) {                                                     \
            memcpy(&bits, bytes + i * sizeof bits, sizeof bits);                                  \
            any |= (bits & (exponent)) == (exponent);                                             \
        }                                                                                         \
        if (!any) return -1;                                                                      \
        for (int64_t i = 0; i < count; i++) {                                                     \
            memcpy(&bits, bytes + i * sizeof bits, sizeof bits);                                  \
            if ((bits & (exponent)) == (exponent)) return i;                                      \
        }                                                                                         \
    } while (0)

int64_t fn_first_nonfinite(fn_dtype dtype, const void *data, int64_t count) {
    if (dtype == FN_FLOAT64)
        FN_SCAN_NONFINITE(uint64_t, 0x7ff0000000000000ULL);
    else
        FN_SCAN_NONFINITE(uint32_t, 0x7f800000U);
    return -1;
}

int64_t fn_l2_bytes(void) {
    static atomic_llong cached; /* 0 until known; every thread computes the same value */
    long long bytes = atomic_load_explicit(&cached, memory_order_relaxed);
    if (bytes > 0) return bytes;
    bytes = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    /* A size no core has (a VM may report anything) falls back too. */
    if (bytes < 64 * 1024 || bytes > 64 * 1024 * 1024) bytes = 1024 * 1024;
    atomic_store_explicit(&cached, bytes, memory_order_relaxed);
    return bytes;
}
