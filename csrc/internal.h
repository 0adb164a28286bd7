/* internal.h — private helpers shared by the C core: errors, threads, dtypes, tensors.
 *
 * Nothing here is part of the public API (csrc/include/fastnet.h). Every file in csrc/ includes it.
 */
#ifndef FASTNET_INTERNAL_H
#define FASTNET_INTERNAL_H

/* POSIX (posix_memalign, fsync, rename) under -std=c11; must precede every system header. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "include/fastnet.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------- errors */

/* Sets the calling thread's error message (printf-style) and returns `code`, so that a failing
 * check reads `return fn_error(FN_EINVAL, "Linear(%d, %d): ...", ...);`. */
fn_status fn_error(fn_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Propagates a failing status from a call whose message is already set. */
#define FN_TRY(expr)                                                                              \
    do {                                                                                          \
        fn_status fn_try_status_ = (expr);                                                        \
        if (fn_try_status_ != FN_OK) return fn_try_status_;                                      \
    } while (0)

/* ---------------------------------------------------------------- memory */

/* 64-byte aligned allocation (a cache line, and a whole AVX-512 register): kernels load aligned
 * rows. Returns NULL on failure, or for size 0 a valid pointer that fn_free accepts. */
void *fn_alloc(size_t bytes);
void *fn_calloc(size_t bytes);
void fn_free(void *p);

/* Asks for the cache line at p ahead of its use (a hint: never faults, whatever p). */
#if defined(__GNUC__)
#define FN_PREFETCH(p) __builtin_prefetch(p)
#else
#define FN_PREFETCH(p) ((void)(p))
#endif

/* One core's L2 cache in bytes, as the C library reports it (glibc reads CPUID), or 1 MB where
 * it does not say: the GEMM keeps the blocks of B it reads in place within a fraction of it. */
int64_t fn_l2_bytes(void);

/* The calling thread's scratch buffers, one per use: the GEMM's packed panels, a block of C
 * that the GEMM computes apart from C (gemm_block), and a sparse A's masks and copy with the
 * panels of B of every thread of its product (sparse_gemm.c). */
typedef enum {
    FN_BUFFER_PANELS,
    FN_BUFFER_C_BLOCK,
    FN_BUFFER_SPARSE_A,
    FN_THREAD_BUFFERS
} fn_thread_buffer_use;

/* The calling thread's scratch buffer for `use`, of at least `bytes` (64-byte aligned), kept from
 * one call to the next and grown when asked for more, or NULL when it cannot be grown. Its
 * contents are not kept across a growth. Only for kernels that do not call each other while they
 * hold it: every caller with the same use gets the same buffer. Freed at thread exit or by
 * fn_release_thread_buffers. */
void *fn_thread_buffer(fn_thread_buffer_use use, size_t bytes);

/* gemm.c: whether fn_gemm runs a single-threaded product of these sizes (C (m, n), inner size k,
 * op(B) transposed or not) on the built-in kernel although a BLAS is installed, because the
 * built-in kernel measured faster there. */
bool fn_gemm_prefers_builtin(bool trans_b, int64_t m, int64_t n, int64_t k);

/* Multiplies sizes, failing (returning false) on overflow: every size read from a file or a spec
 * goes through this before it reaches an allocator. */
bool fn_mul_size(size_t a, size_t b, size_t *out);

/* Index of the first NaN or Inf among `count` elements, or -1 if all are finite. */
int64_t fn_first_nonfinite(fn_dtype dtype, const void *data, int64_t count);

/* ---------------------------------------------------------------- threads */

/* The OpenMP team size fastnet uses; 1 without OpenMP. Kernels take it as an explicit argument
 * (never read a global inside a parallel region) so that a caller can run a kernel on one thread. */
int fn_threads_get(void);

/* Number of threads worth using for `work` units of roughly equal cost: work below
 * FN_PARALLEL_GRAIN per thread is not worth waking a thread for. */
#define FN_PARALLEL_GRAIN 32768
static inline int fn_threads_for(int64_t work, int max_threads) {
    int64_t t = work / FN_PARALLEL_GRAIN;
    if (t < 1) t = 1;
    if (t > max_threads) t = max_threads;
    return (int)t;
}

/* Parallel loops. FN_PARALLEL_LOOP(t, i, n, body...) runs body for i in [0, n), split statically
 * over t threads when t > 1 and as a plain loop otherwise: even with a false if-clause, entering
 * an OpenMP region allocates a team, which a small kernel called every step must not pay. Without
 * OpenMP it is always the plain loop (and no unknown-pragma warnings). */
#ifdef _OPENMP
#define FN_PRAGMA(text) _Pragma(#text)
#define FN_PARALLEL_LOOP(t, i, n, ...)                                                            \
    do {                                                                                          \
        if ((t) > 1) {                                                                            \
            FN_PRAGMA(omp parallel for num_threads(t) schedule(static))                           \
            for (int64_t i = 0; i < (n); i++) __VA_ARGS__                                         \
        } else {                                                                                  \
            for (int64_t i = 0; i < (n); i++) __VA_ARGS__                                         \
        }                                                                                         \
    } while (0)
#else
#define FN_PARALLEL_LOOP(t, i, n, ...)                                                            \
    do {                                                                                          \
        (void)(t);                                                                                \
        for (int64_t i = 0; i < (n); i++) __VA_ARGS__                                             \
    } while (0)
#endif

/* Runs fn(id, parts, arg) for id in [0, parts) on `parts` threads, or directly when parts == 1
 * (no OpenMP region, for the reason above). */
typedef void (*fn_team_fn)(int id, int parts, void *arg);
void fn_run_team(int parts, fn_team_fn fn, void *arg);
/* Inside fn_run_team's fn: waits until every thread of the team has reached it. Only where the
 * parts run at the same time (an OpenMP build; fn_run_team otherwise runs them one after
 * another, and a part that waits for the others would read what they have not written). */
void fn_team_barrier(void);

/* Splits [0, n) into `parts` near-equal contiguous ranges; returns range `i` in [*begin, *end). */
static inline void fn_partition(int64_t n, int parts, int i, int64_t *begin, int64_t *end) {
    int64_t base = n / parts, extra = n % parts;
    *begin = i * base + (i < extra ? i : extra);
    *end = *begin + base + (i < extra ? 1 : 0);
}

/* ---------------------------------------------------------------- deterministic reductions
 *
 * A reduction that gives each thread a partial sum rounds differently with another thread count.
 * In deterministic mode (fn_set_deterministic) every such reduction splits its work into parts
 * whose number depends on the problem size only, at most FN_DETERMINISTIC_PARTS, sums each part
 * in order and adds the parts in order; the threads take whole parts. The result is then the
 * same, bit for bit, for any thread count (reductions run on at most this many threads). Off, a
 * reduction has one part per thread, as many as are worth waking. */
#define FN_DETERMINISTIC_PARTS 8

/* The mode, read once by each kernel before its parallel region (fn_get_deterministic). */
bool fn_deterministic(void);

/* The number of parts a reduction over `work` units of roughly equal cost is split into. */
static inline int fn_reduction_parts(int64_t work, int threads) {
    return fn_threads_for(work, fn_deterministic() ? FN_DETERMINISTIC_PARTS : threads);
}

/* Runs fn(part, parts, arg) for every part in [0, parts) on at most `threads` threads, each thread
 * taking a contiguous range of parts in increasing order (fn_run_team when parts <= threads). A
 * part function must therefore not rely on the parts running at the same time. */
void fn_run_parts(int parts, int threads, fn_team_fn fn, void *arg);

/* ---------------------------------------------------------------- dtypes */

static inline size_t fn_dtype_size(fn_dtype d) { return d == FN_FLOAT64 ? 8 : 4; }
const char *fn_dtype_name(fn_dtype d);

/* Integer label arrays of any integer type arrive as (pointer, fn_label_type); reading one label
 * through a switch costs nothing next to the row of logits it indexes. */
static inline int64_t fn_label_at(const void *labels, fn_label_type t, int64_t i) {
    switch (t) {
    case FN_LABEL_I8: return ((const int8_t *)labels)[i];
    case FN_LABEL_U8: return ((const uint8_t *)labels)[i];
    case FN_LABEL_I16: return ((const int16_t *)labels)[i];
    case FN_LABEL_U16: return ((const uint16_t *)labels)[i];
    case FN_LABEL_I32: return ((const int32_t *)labels)[i];
    case FN_LABEL_U32: return ((const uint32_t *)labels)[i];
    case FN_LABEL_I64: return ((const int64_t *)labels)[i];
    case FN_LABEL_U64: {
        uint64_t v = ((const uint64_t *)labels)[i];
        return v > (uint64_t)INT64_MAX ? -1 : (int64_t)v; /* out of range either way */
    }
    }
    return -1;
}

/* ---------------------------------------------------------------- dtype templates
 *
 * A kernel is written once, with `real` for its element type and FN_T(name) for every name that
 * differs between dtypes, and compiled twice. A file that holds templated code starts with
 *
 *     #ifndef FN_TEMPLATE_PASS
 *     #include "internal.h"
 *     #define FN_TEMPLATE_FILE "linear.c"
 *     #include "template.h"
 *     ... dtype-independent code (op tables that point at both instantiations) ...
 *     #else
 *     ... templated code ...
 *     #endif
 *
 * template.h includes FN_TEMPLATE_FILE once with real=float, FN_T(x)=x##_f32, and once with
 * real=double, FN_T(x)=x##_f64. Math goes through <tgmath.h>, so exp(), sqrt(), tanh() pick the
 * float or double function from the argument type.
 */
#include <tgmath.h>
#include <float.h>

/* Prototypes of templated functions are declared for both dtypes by the FN_KERNELS(real, S)
 * list in kernels.h. */

/* ---------------------------------------------------------------- RNG
 *
 * Counter-based: a value is a pure function of (seed, stream, counter), so masks, initial weights
 * and shuffles do not depend on the thread count or the order in which elements are visited. */
static inline uint64_t fn_mix64(uint64_t z) { /* splitmix64 finaliser */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline uint64_t fn_rng_bits(uint64_t seed, uint64_t stream, uint64_t counter) {
    return fn_mix64(fn_mix64(seed ^ fn_mix64(stream + 0x9e3779b97f4a7c15ULL)) + counter);
}
/* Uniform double in [0, 1) with 53 random bits. */
static inline double fn_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
    return (double)(fn_rng_bits(seed, stream, counter) >> 11) * 0x1.0p-53;
}
/* Standard normal double: Box-Muller on the uniforms at counters 2i and 2i + 1, keeping the cosine
 * branch only, so that value i is still a pure function of (seed, stream, i). 1 - u lies in
 * (0, 1], so the logarithm is finite; the tails reach about 8.6 standard deviations. */
static inline double fn_rng_normal(uint64_t seed, uint64_t stream, uint64_t i) {
    double u1 = fn_rng_uniform(seed, stream, 2 * i), u2 = fn_rng_uniform(seed, stream, 2 * i + 1);
    return sqrt(-2 * log(1 - u1)) * cos(6.283185307179586476925286766559 * u2);
}

#endif /* FASTNET_INTERNAL_H */
