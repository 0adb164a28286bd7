/* test_gemm.c — checks fn_gemm_builtin and fn_gemm against a plain triple loop in double.
 *
 * Every case builds op(A) (m, k) and op(B) (k, n) once, as values exactly representable in the
 * dtype, and stores them transposed or not with row strides larger than needed; C carries a
 * sentinel in the padding of its rows that must survive. The BLAS path is checked with a
 * column-major reference gemm defined here and installed through fn_set_blas, which also checks
 * the Fortran argument rules and that fastnet keeps the BLAS single-threaded inside its own threads.
 *
 * Prints one line per failure, timings, and finally "N passed, M failed"; exits nonzero on failure.
 */
#define _POSIX_C_SOURCE 200809L
#include "include/fastnet.h"
#include "kernels.h"
#include "test/check.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void check(bool ok, const char *what) {
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL: %s\n", what);
    }
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* xorshift64*: reproducible inputs without depending on the C library's rand(). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static double random_uniform(void) { /* in [-1, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t bits = rng_state * 0x2545f4914f6cdd1dULL;
    return (double)(bits >> 11) * 0x1.0p-52 - 1.0;
}

/* ---------------------------------------------------------------- dtype-agnostic element access */

static size_t element_size(fn_dtype dtype) { return dtype == FN_FLOAT64 ? 8 : 4; }

static double element_get(fn_dtype dtype, const void *p, size_t i) {
    return dtype == FN_FLOAT64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

static void element_set(fn_dtype dtype, void *p, size_t i, double v) {
    if (dtype == FN_FLOAT64) {
        ((double *)p)[i] = v;
    } else {
        ((float *)p)[i] = (float)v;
    }
}

/* Rounds v to the dtype, so that the reference multiplies exactly what the kernel sees. */
static double representable(fn_dtype dtype, double v) {
    return dtype == FN_FLOAT64 ? v : (double)(float)v;
}

static void *checked_malloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) {
        printf("FAIL: out of memory allocating %zu bytes\n", bytes);
        printf("%d passed, %d failed\n", passed, failed + 1);
        exit(1);
    }
    return p;
}

/* ---------------------------------------------------------------- a reference column-major BLAS
 *
 * Stands in for sgemm_/dgemm_: Fortran ABI, column-major, BLAS semantics (beta == 0 overwrites C).
 * It counts calls, calls whose arguments a real BLAS would reject, and calls made while the
 * "BLAS thread count" was not 1. */
static atomic_int blas_calls, blas_bad_arguments, blas_called_multithreaded;
static _Thread_local int blas_threads = 4; /* what a BLAS would use if left alone */

static int fake_set_threads_local(int threads) {
    int previous = blas_threads;
    blas_threads = threads;
    return previous;
}

static bool fortran_arguments_ok(char ta, char tb, int m, int n, int k, int lda, int ldb,
                                 int ldc) {
    bool ok = (ta == 'N' || ta == 'T') && (tb == 'N' || tb == 'T') && m >= 0 && n >= 0 && k >= 0;
    int rows_a = ta == 'N' ? m : k, rows_b = tb == 'N' ? k : n;
    return ok && lda >= (rows_a > 1 ? rows_a : 1) && ldb >= (rows_b > 1 ? rows_b : 1) &&
           ldc >= (m > 1 ? m : 1);
}

#define DEFINE_REFERENCE_GEMM(name, real)                                                         \
    static void name(const char *transa, const char *transb, const int *m, const int *n,        \
                     const int *k, const real *alpha, const real *a, const int *lda,            \
                     const real *b, const int *ldb, const real *beta, real *c, const int *ldc) { \
        atomic_fetch_add(&blas_calls, 1);                                                        \
        if (blas_threads != 1) atomic_fetch_add(&blas_called_multithreaded, 1);                  \
        if (!fortran_arguments_ok(*transa, *transb, *m, *n, *k, *lda, *ldb, *ldc)) {             \
            atomic_fetch_add(&blas_bad_arguments, 1);                                            \
            return;                                                                              \
        }                                                                                        \
        bool ta = *transa == 'T', tb = *transb == 'T';                                           \
        for (int j = 0; j < *n; j++) {                                                           \
            for (int i = 0; i < *m; i++) {                                                       \
                double sum = 0;                                                                  \
                for (int p = 0; p < *k; p++) {                                                   \
                    double av = ta ? a[p + (size_t)i * *lda] : a[i + (size_t)p * *lda];          \
                    double bv = tb ? b[j + (size_t)p * *ldb] : b[p + (size_t)j * *ldb];          \
                    sum += av * bv;                                                              \
                }                                                                                \
                real *cij = &c[i + (size_t)j * *ldc];                                            \
                *cij = (real)(*alpha * sum + (*beta == 0 ? 0 : *beta * *cij));                   \
            }                                                                                    \
        }                                                                                        \
    }
DEFINE_REFERENCE_GEMM(reference_sgemm, float)
DEFINE_REFERENCE_GEMM(reference_dgemm, double)

/* ---------------------------------------------------------------- one shape, every variant */

typedef fn_status (*gemm_entry)(fn_dtype, int, int, int64_t, int64_t, int64_t, double,
                                const void *, int64_t, const void *, int64_t, double, void *,
                                int64_t, int);

/* Logical operands of one shape and their exact product, computed once. */
typedef struct {
    fn_dtype dtype;
    int64_t m, n, k;
    double *a, *b, *c0;    /* op(A) (m, k), op(B) (k, n), initial C (m, n) */
    double *ab, *ab_abs;   /* op(A) @ op(B) and |op(A)| @ |op(B)| (m, n), for the error bound */
} gemm_case;

static gemm_case case_make(fn_dtype dtype, int64_t m, int64_t n, int64_t k) {
    gemm_case g = {dtype, m, n, k, NULL, NULL, NULL, NULL, NULL};
    g.a = checked_malloc((size_t)(m * k) * sizeof(double));
    g.b = checked_malloc((size_t)(k * n) * sizeof(double));
    g.c0 = checked_malloc((size_t)(m * n) * sizeof(double));
    g.ab = checked_malloc((size_t)(m * n) * sizeof(double));
    g.ab_abs = checked_malloc((size_t)(m * n) * sizeof(double));
    for (int64_t i = 0; i < m * k; i++) g.a[i] = representable(dtype, random_uniform());
    for (int64_t i = 0; i < k * n; i++) g.b[i] = representable(dtype, random_uniform());
    for (int64_t i = 0; i < m * n; i++) g.c0[i] = representable(dtype, random_uniform());
    /* The naive triple loop, in i-p-j order so that 1024^3 takes about a second. */
    for (int64_t i = 0; i < m; i++) {
        double *row = g.ab + i * n, *row_abs = g.ab_abs + i * n;
        for (int64_t j = 0; j < n; j++) row[j] = row_abs[j] = 0;
        for (int64_t p = 0; p < k; p++) {
            double aip = g.a[i * k + p];
            const double *b_row = g.b + p * n;
            for (int64_t j = 0; j < n; j++) {
                row[j] += aip * b_row[j];
                row_abs[j] += fabs(aip) * fabs(b_row[j]);
            }
        }
    }
    return g;
}

static void case_free(gemm_case *g) {
    free(g->a);
    free(g->b);
    free(g->c0);
    free(g->ab);
    free(g->ab_abs);
}

/* Stores the logical (rows, cols) matrix x, transposed or not, with row stride *ld. */
static void *store(fn_dtype dtype, const double *x, int64_t rows, int64_t cols, bool transpose,
                   int64_t padding, int64_t *ld) {
    int64_t stored_rows = transpose ? cols : rows, stored_cols = transpose ? rows : cols;
    *ld = stored_cols + padding;
    void *p = checked_malloc((size_t)(stored_rows * *ld) * element_size(dtype));
    for (int64_t r = 0; r < stored_rows; r++) {
        for (int64_t s = 0; s < *ld; s++) {
            double v = s < stored_cols ? (transpose ? x[s * cols + r] : x[r * cols + s]) : NAN;
            element_set(dtype, p, (size_t)(r * *ld + s), v);
        }
    }
    return p;
}

#define C_PADDING 7
#define C_SENTINEL 12345.0

/* Runs one variant and checks every element of C and its padding. */
static void run_variant(const gemm_case *g, const char *entry_name, gemm_entry entry, bool ta,
                        bool tb, const void *a, int64_t lda, const void *b, int64_t ldb,
                        double alpha, double beta, int threads) {
    fn_dtype dtype = g->dtype;
    int64_t m = g->m, n = g->n, k = g->k, ldc = n + C_PADDING;
    void *c = checked_malloc((size_t)(m * ldc) * element_size(dtype));
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < ldc; j++) {
            /* With beta == 0, C's old values must be ignored: NaN there must not survive. */
            double v = j >= n ? C_SENTINEL : beta == 0 ? NAN : g->c0[i * n + j];
            element_set(dtype, c, (size_t)(i * ldc + j), v);
        }
    }
    fn_status status = entry(dtype, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);

    double eps = dtype == FN_FLOAT64 ? DBL_EPSILON : FLT_EPSILON;
    int64_t bad = 0, bad_padding = 0;
    double worst_error = 0, worst_bound = 0;
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            double old = beta == 0 ? 0 : g->c0[i * n + j];
            double expected = alpha * g->ab[i * n + j] + beta * old;
            /* Summation error grows like k * eps * sum |a||b|; the rest is a few roundings. */
            double bound = 2.0 * (double)(k + 4) * eps *
                               (fabs(alpha) * g->ab_abs[i * n + j] + fabs(beta * old)) +
                           1e-300;
            double got = element_get(dtype, c, (size_t)(i * ldc + j));
            double error = fabs(got - expected);
            if (!(error <= bound)) {
                if (bad == 0 || error / bound > worst_error / worst_bound) {
                    worst_error = error;
                    worst_bound = bound;
                }
                bad++;
            }
        }
        for (int64_t j = n; j < ldc; j++) {
            if (element_get(dtype, c, (size_t)(i * ldc + j)) != C_SENTINEL) bad_padding++;
        }
    }
    char what[512];
    snprintf(what, sizeof what,
             "%s %s m=%lld n=%lld k=%lld trans_a=%d trans_b=%d alpha=%g beta=%g threads=%d: "
             "status %d, %lld wrong (worst error %.3g, bound %.3g), %lld padding overwritten",
             entry_name, dtype == FN_FLOAT64 ? "float64" : "float32", (long long)m, (long long)n,
             (long long)k, ta, tb, alpha, beta, threads, (int)status, (long long)bad, worst_error,
             worst_bound, (long long)bad_padding);
    check(status == FN_OK && bad == 0 && bad_padding == 0, what);
    free(c);
}

/* Every transpose combination, alpha/beta pair, thread count and entry point on one shape. */
static void run_shape(fn_dtype dtype, int64_t m, int64_t n, int64_t k, bool with_blas_entry) {
    static const double alpha_beta[][2] = {{1, 0}, {0.5, 2}};
    static const int thread_counts[] = {1, 2};
    gemm_case g = case_make(dtype, m, n, k);
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            int64_t lda, ldb;
            void *a = store(dtype, g.a, m, k, ta, 3, &lda);
            void *b = store(dtype, g.b, k, n, tb, 5, &ldb);
            for (size_t s = 0; s < sizeof alpha_beta / sizeof alpha_beta[0]; s++) {
                for (size_t t = 0; t < sizeof thread_counts / sizeof thread_counts[0]; t++) {
                    double alpha = alpha_beta[s][0], beta = alpha_beta[s][1];
                    int threads = thread_counts[t];
                    run_variant(&g, "fn_gemm_builtin", fn_gemm_builtin, ta, tb, a, lda, b, ldb,
                                alpha, beta, threads);
                    if (with_blas_entry) {
                        run_variant(&g, "fn_gemm", fn_gemm, ta, tb, a, lda, b, ldb, alpha, beta,
                                    threads);
                    }
                    /* The BLAS alone too: with AVX2 and no AVX-512, fn_gemm calls it for no
                     * product. */
                    if (with_blas_entry && fn_blas_installed(dtype)) {
                        run_variant(&g, "fn_gemm_blas", fn_gemm_blas, ta, tb, a, lda, b, ldb,
                                    alpha, beta, threads);
                    }
                }
            }
            free(a);
            free(b);
        }
    }
    case_free(&g);
}

/* ---------------------------------------------------------------- special cases */

static void test_empty_and_degenerate(void) {
    for (int d = 0; d < 2; d++) {
        fn_dtype dtype = (fn_dtype)d;
        /* Sizes of zero: pointers to nothing may be NULL (the other operand still has
         * elements and must be given). */
        double some[16] = {0};
        check(fn_gemm(dtype, 0, 0, 0, 5, 3, 1, NULL, 3, some, 5, 0, NULL, 5, 2) == FN_OK,
              "m = 0 with NULL A and C");
        check(fn_gemm_builtin(dtype, 1, 1, 4, 0, 3, 1, some, 4, NULL, 3, 0, NULL, 0, 1) == FN_OK,
              "n = 0 with NULL B and C");
        check(fn_gemm(dtype, 0, 0, 0, 0, 0, 1, NULL, 0, NULL, 0, 1, NULL, 0, 1) == FN_OK,
              "0 x 0 x 0");

        /* k == 0: C = beta * C; beta == 0 writes zeros over NaN. */
        for (int which = 0; which < 2; which++) {
            double c[2 * 3] = {1, 2, 3, 4, 5, 6}, c_nan[2 * 3];
            for (int i = 0; i < 6; i++) c_nan[i] = NAN;
            float cf[2 * 3] = {1, 2, 3, 4, 5, 6}, cf_nan[2 * 3];
            for (int i = 0; i < 6; i++) cf_nan[i] = NAN;
            void *c_scaled = dtype == FN_FLOAT64 ? (void *)c : (void *)cf;
            void *c_zeroed = dtype == FN_FLOAT64 ? (void *)c_nan : (void *)cf_nan;
            gemm_entry entry = which ? fn_gemm : fn_gemm_builtin;
            fn_status s1 = entry(dtype, 0, 0, 2, 3, 0, 1, NULL, 0, NULL, 3, 2, c_scaled, 3, 2);
            fn_status s2 = entry(dtype, 1, 0, 2, 3, 0, 1, NULL, 2, NULL, 3, 0, c_zeroed, 3, 2);
            bool ok = s1 == FN_OK && s2 == FN_OK;
            for (int i = 0; i < 6; i++) {
                ok = ok && element_get(dtype, c_scaled, (size_t)i) == 2.0 * (i + 1);
                ok = ok && element_get(dtype, c_zeroed, (size_t)i) == 0.0;
            }
            char what[128];
            snprintf(what, sizeof what, "%s %s k = 0: C = beta * C, beta = 0 clears NaN",
                     which ? "fn_gemm" : "fn_gemm_builtin", dtype ? "float64" : "float32");
            check(ok, what);
        }

        /* alpha == 0: A and B are not read (NaN there does not reach C), as in BLAS. */
        {
            int64_t m = 5, n = 9, k = 4;
            size_t es = element_size(dtype);
            void *a = checked_malloc((size_t)(m * k) * es), *b = checked_malloc((size_t)(k * n) * es);
            void *c = checked_malloc((size_t)(m * n) * es);
            for (int64_t i = 0; i < m * k; i++) element_set(dtype, a, (size_t)i, NAN);
            for (int64_t i = 0; i < k * n; i++) element_set(dtype, b, (size_t)i, NAN);
            for (int64_t i = 0; i < m * n; i++) element_set(dtype, c, (size_t)i, (double)i);
            fn_status s = fn_gemm(dtype, 0, 0, m, n, k, 0, a, k, b, n, 0.5, c, n, 2);
            bool ok = s == FN_OK;
            for (int64_t i = 0; i < m * n; i++) {
                ok = ok && element_get(dtype, c, (size_t)i) == 0.5 * (double)i;
            }
            check(ok, "alpha = 0 ignores NaN in A and B");
            free(a);
            free(b);
            free(c);
        }

        /* More threads than columns, and thread counts below 1. */
        {
            double a[2 * 3] = {1, 2, 3, 4, 5, 6}, b[3 * 1] = {1, 1, 1}, c[2] = {0, 0};
            float af[6] = {1, 2, 3, 4, 5, 6}, bf[3] = {1, 1, 1}, cf[2] = {0, 0};
            bool f64 = dtype == FN_FLOAT64;
            bool ok = true;
            int thread_counts[] = {64, 0, -3};
            for (int t = 0; t < 3; t++) {
                fn_status s = fn_gemm(dtype, 0, 0, 2, 1, 3, 1, f64 ? (void *)a : (void *)af, 3,
                                      f64 ? (void *)b : (void *)bf, 1, 0,
                                      f64 ? (void *)c : (void *)cf, 1, thread_counts[t]);
                ok = ok && s == FN_OK;
                ok = ok && element_get(dtype, f64 ? (void *)c : (void *)cf, 0) == 6;
                ok = ok && element_get(dtype, f64 ? (void *)c : (void *)cf, 1) == 15;
            }
            check(ok, "threads = 64, 0, -3 on a 2 x 1 x 3 product");
        }
    }
}

static void test_invalid_arguments(void) {
    float a[64], b[64], c[64];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    memset(c, 0, sizeof c);
    struct {
        const char *what;
        fn_status status;
    } cases[] = {
        {"negative m", fn_gemm(FN_FLOAT32, 0, 0, -1, 2, 2, 1, a, 2, b, 2, 0, c, 2, 1)},
        {"negative k",
         fn_gemm_builtin(FN_FLOAT32, 0, 0, 2, 2, -5, 1, a, 2, b, 2, 0, c, 2, 1)},
        {"lda < k",
         fn_gemm(FN_FLOAT32, 0, 0, 3, 2, 4, 1, a, 3, b, 2, 0, c, 2, 1)},
        {"lda < m with trans_a",
         fn_gemm(FN_FLOAT32, 1, 0, 3, 2, 4, 1, a, 2, b, 2, 0, c, 2, 1)},
        {"ldb < n",
         fn_gemm_builtin(FN_FLOAT32, 0, 0, 3, 5, 2, 1, a, 2, b, 4, 0, c, 5, 1)},
        {"ldb < k with trans_b",
         fn_gemm(FN_FLOAT32, 0, 1, 3, 5, 2, 1, a, 2, b, 1, 0, c, 5, 1)},
        {"ldc < n",
         fn_gemm(FN_FLOAT32, 0, 0, 3, 5, 2, 1, a, 2, b, 5, 0, c, 4, 1)},
        {"NULL A",
         fn_gemm(FN_FLOAT32, 0, 0, 3, 5, 2, 1, NULL, 2, b, 5, 0, c, 5, 1)},
        {"NULL B",
         fn_gemm_builtin(FN_FLOAT64, 0, 0, 3, 5, 2, 1, a, 2, NULL, 5, 0, c, 5, 1)},
        {"NULL C",
         fn_gemm(FN_FLOAT64, 0, 0, 3, 5, 2, 1, a, 2, b, 5, 0, NULL, 5, 1)},
        {"unknown dtype",
         fn_gemm(FN_FLOAT64 + 7, 0, 0, 1, 1, 1, 1, a, 1, b, 1, 0, c, 1, 1)},
        {"rows x stride overflow",
         fn_gemm(FN_FLOAT32, 0, 0, INT64_MAX / 2, 1, 1, 1, a, 1, b, 1, 0, c, 1, 1)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[256];
        snprintf(what, sizeof what, "invalid argument rejected: %s", cases[i].what);
        check(cases[i].status == FN_EINVAL, what);
    }
    /* Each failing call sets its own message: check a few right after the call. */
    check(fn_gemm(FN_FLOAT32, 0, 0, 3, 2, 4, 1, a, 3, b, 2, 0, c, 2, 1) == FN_EINVAL &&
              strstr(fn_last_error(), "lda = 3") != NULL,
          "error message names the bad stride");
    check(fn_gemm(FN_FLOAT32, 0, 0, 3, 5, 2, 1, NULL, 2, b, 5, 0, c, 5, 1) == FN_EINVAL &&
              strstr(fn_last_error(), "A is NULL") != NULL,
          "error message names the NULL operand");
    check(c[0] == 0 && c[63] == 0, "rejected calls do not write C");
}

/* ---------------------------------------------------------------- the BLAS path */

static void test_blas_table(void) {
#ifdef FN_WITH_LINKED_BLAS
    /* make FN_BLAS=openblas: the library starts with the linked BLAS, whose results are checked
     * here on the same cases, before the reference gemm below replaces it. */
    printf("system BLAS: linked, checked, then replaced by the reference gemm of this test\n");
    check(fn_blas_installed(FN_FLOAT32) && fn_blas_installed(FN_FLOAT64),
          "the linked BLAS is installed at start");
    int64_t linked_shapes[][3] = {{1, 1, 1}, {3, 7, 5}, {97, 129, 65}, {11, 33, 17}};
    for (int d = 0; d < 2; d++)
        for (size_t s = 0; s < sizeof linked_shapes / sizeof linked_shapes[0]; s++)
            run_shape((fn_dtype)d, linked_shapes[s][0], linked_shapes[s][1], linked_shapes[s][2],
                      true);
    fn_set_blas(NULL);
    check(fn_use_linked_blas() == 1 && fn_blas_installed(FN_FLOAT32),
          "fn_use_linked_blas reinstalls the linked BLAS");
    fn_set_blas(NULL);
#else
    /* No BLAS that uses the 32-bit-int Fortran ABI is linked into this test (make FN_BLAS=openblas
     * links one), so the real-BLAS check is skipped; the reference gemm above exercises the same
     * call path. */
    printf("system BLAS: not linked, using the reference column-major gemm of this test\n");
    check(!fn_blas_installed(FN_FLOAT32) && !fn_blas_installed(FN_FLOAT64),
          "no BLAS installed at start");
    check(fn_use_linked_blas() == 0 && !fn_blas_installed(FN_FLOAT32),
          "fn_use_linked_blas does nothing without a linked BLAS");
#endif

    fn_blas table = {reference_sgemm, reference_dgemm, fake_set_threads_local};
    fn_set_blas(&table);
    check(fn_blas_installed(FN_FLOAT32) && fn_blas_installed(FN_FLOAT64),
          "fn_blas_installed after fn_set_blas");
    atomic_store(&blas_calls, 0);
    /* 97 x 129 x 65 is large enough to be split between two threads; 200 x 97 x 65 with A
     * transposed is split by rows (gemm_split_rows), each block of rows one BLAS call. */
    int64_t shapes[][3] = {{1, 1, 1}, {3, 7, 5}, {97, 129, 65}, {200, 97, 65}, {0, 3, 4},
                           {3, 4, 0}};
    for (int d = 0; d < 2; d++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            run_shape((fn_dtype)d, shapes[s][0], shapes[s][1], shapes[s][2], true);
        }
    }
    check(atomic_load(&blas_calls) > 0, "fn_gemm called the installed BLAS");
    check(atomic_load(&blas_bad_arguments) == 0, "every BLAS call had valid Fortran arguments");
    check(atomic_load(&blas_called_multithreaded) == 0,
          "the BLAS was set to 1 thread around every call");
    check(blas_threads == 4, "the BLAS thread count was restored after the calls");

    /* fn_gemm_builtin never calls the BLAS, and a table without dgemm leaves float64 built in. */
    int calls_before = atomic_load(&blas_calls);
    run_shape(FN_FLOAT32, 9, 17, 11, false);
    check(atomic_load(&blas_calls) == calls_before, "fn_gemm_builtin does not call the BLAS");
    fn_blas only_single = {reference_sgemm, NULL, NULL};
    fn_set_blas(&only_single);
    check(fn_blas_installed(FN_FLOAT32) && !fn_blas_installed(FN_FLOAT64),
          "a table without dgemm");
    calls_before = atomic_load(&blas_calls);
    run_shape(FN_FLOAT64, 9, 17, 11, true);
    check(atomic_load(&blas_calls) == calls_before, "float64 runs built in without dgemm");
    run_shape(FN_FLOAT32, 9, 17, 11, true);
    check(atomic_load(&blas_calls) > calls_before, "sgemm called without set_threads_local");

    fn_set_blas(NULL);
    check(!fn_blas_installed(FN_FLOAT32) && !fn_blas_installed(FN_FLOAT64),
          "fn_set_blas(NULL) clears the table");
}

/* Products that measured faster on the built-in kernel than on OpenBLAS run on it although a
 * BLAS is installed (gemm.c, fn_gemm_prefers_builtin): at least 4 rows, 64 columns and more than
 * 10^6 multiply-adds per single-threaded call (with op(B) transposed: 16 rows and 2^18), or with
 * op(B) transposed
 * more than 16 columns and a long k for few rows (the dot products: up to 16 rows from k = 256,
 * up to 32 from 512), or at least 32 rows and columns and k >= 64. Each call is counted here. */
/* The most columns of a transposed B that the built-in kernel takes as dot products (its float32
 * tile's NR / 2; with AVX2 alone, NR - 1 from k = 128, DOT_COLUMNS_LONG_K): a transposed B past
 * OpenBLAS's small-matrix kernels goes to the built-in kernel only up to that many. */
#if defined(__AVX512F__)
#define DOT_COLUMNS 16
#elif defined(__AVX2__) && defined(__FMA__)
#define DOT_COLUMNS 8
#define DOT_COLUMNS_LONG_K 15
#else
#define DOT_COLUMNS 4
#endif

/* With AVX2 and no AVX-512 the BLAS (OpenBLAS's Haswell kernels) has no small-matrix paths, and
 * the built-in kernel takes every product. */
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define AVX2_ONLY 1
#else
#define AVX2_ONLY 0
#endif

static void test_builtin_preferred(void) {
    fn_blas table = {reference_sgemm, reference_dgemm, fake_set_threads_local};
    fn_set_blas(&table);
    /* Correct on both paths, every transpose, alpha and beta, one and two threads. */
    run_shape(FN_FLOAT32, 16, 256, 256, true);
    run_shape(FN_FLOAT64, 33, 130, 300, true);
    size_t bytes = 1024 * 1024 * sizeof(float);
    float *a = checked_malloc(bytes), *b = checked_malloc(bytes), *c = checked_malloc(bytes);
    for (int i = 0; i < 1024 * 1024; i++) a[i] = b[i] = (float)(i % 7);
    static const struct {
        int trans_b;
        int64_t m, n, k;
        int threads;
        bool blas; /* with AVX-512, or without AVX2 (with AVX2 alone: never) */
        const char *what;
    } cases[] = {
        {0, 16, 256, 256, 1, false, "16 x 256 x 256: built in"},
        {0, 16, 512, 256, 2, false,
         "16 x 512 x 256 on two threads (calls of 256 columns): built in"},
        {1, 16, 256, 64, 1, false, "transposed B, 2^18 multiply-adds: built in"},
        {1, 16, 256, 63, 1, true, "transposed B, fewer than 2^18 multiply-adds: BLAS"},
        {1, 64, 63, 512, 1, false, "transposed B, 64 rows, 63 columns, k 512: built in"},
        {1, 32, 32, 64, 1, false, "transposed B, 32 rows, 32 columns, k 64: built in"},
        {1, 32, 31, 64, 1, true, "transposed B, 32 rows, 31 columns, k 64: BLAS"},
        {1, 32, 32, 63, 1, true, "transposed B, 32 rows, 32 columns, k 63: BLAS"},
        {1, 16, 63, 512, 1, false, "transposed B, 16 rows, k 512: built in (dot products)"},
        {1, 15, 256, 512, 1, false, "transposed B, 15 rows, k 512: built in (dot products)"},
        {1, 15, 256, 255, 1, true, "transposed B, 15 rows, k 255: BLAS"},
        {1, 32, 256, 512, 1, false, "transposed B, 32 rows, k 512: built in (dot products)"},
        {1, 33, 31, 600, 1, true, "transposed B, 33 rows, 31 columns, k 600: BLAS"},
        {1, 16, 16, 512, 1, true, "transposed B, 16 columns: BLAS"},
        {1, 128, 10, 1024, 2, 10 > DOT_COLUMNS,
         "transposed B, 10 columns, 128 rows: built in (dot products) with AVX-512"},
        {1, 256, 5, 64, 1, 5 > DOT_COLUMNS,
         "transposed B, 5 columns, 256 rows, k 64: built in with AVX2 or AVX-512"},
        {1, 96, 10, 1024, 1, true, "transposed B, 10 columns, 96 rows, k 1024: BLAS"},
        {1, 64, 16, 1024, 1, 16 > DOT_COLUMNS,
         "transposed B, 16 columns, past 10^6 multiply-adds: built in with AVX-512"},
        {1, 128, 16, 128, 1, true, "transposed B, 16 columns, k 128: BLAS"},
        {0, 15, 256, 512, 1, false, "15 rows past 10^6 multiply-adds: built in"},
        {0, 4, 1024, 256, 1, false, "4 rows past 10^6 multiply-adds: built in"},
        {0, 3, 1024, 512, 1, true, "3 rows: BLAS"},
        {0, 256, 63, 256, 1, true, "63 columns: BLAS"},
        {0, 16, 256, 245, 1, false, "just past 10^6 multiply-adds: built in"},
        {0, 16, 256, 244, 1, true, "at most 10^6 multiply-adds: BLAS"},
        {0, 10, 1024, 128, 2, true,
         "10 x 1024 x 128 on two threads (calls of 512 columns, 6.6 x 10^5): BLAS"},
        {1, 1, 256, 256, 2, false, "one row, transposed B: built in (dot products)"},
        {0, 1, 256, 256, 1, true, "one row, B not transposed: BLAS"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int before = atomic_load(&blas_calls);
        int64_t ldb = cases[i].trans_b ? cases[i].k : cases[i].n;
        fn_status status = fn_gemm(FN_FLOAT32, 0, cases[i].trans_b, cases[i].m, cases[i].n,
                                   cases[i].k, 1, a, cases[i].k, b, ldb, 0, c, cases[i].n,
                                   cases[i].threads);
        bool called = atomic_load(&blas_calls) != before;
        bool expected = !AVX2_ONLY && cases[i].blas;
        check(status == FN_OK && called == expected, cases[i].what);
    }
    free(a);
    free(b);
    free(c);
    fn_set_blas(NULL);
}

/* ---------------------------------------------------------------- timing */

/* Best GFLOP/s of fn_gemm_builtin on one shape, from repeated runs over about 0.3 s. */
static double time_builtin(fn_dtype dtype, int64_t m, int64_t n, int64_t k, bool trans_a,
                           int threads) {
    size_t es = element_size(dtype);
    void *a = checked_malloc((size_t)(m * k) * es), *b = checked_malloc((size_t)(k * n) * es);
    void *c = checked_malloc((size_t)(m * n) * es);
    for (int64_t i = 0; i < m * k; i++) element_set(dtype, a, (size_t)i, random_uniform());
    for (int64_t i = 0; i < k * n; i++) element_set(dtype, b, (size_t)i, random_uniform());
    int64_t lda = trans_a ? m : k;
    fn_gemm_builtin(dtype, trans_a, 0, m, n, k, 1, a, lda, b, n, 0, c, n, threads); /* warm up */
    double best = INFINITY, start = seconds_now();
    while (best == INFINITY || seconds_now() - start < 0.3) {
        double t = seconds_now();
        fn_gemm_builtin(dtype, trans_a, 0, m, n, k, 1, a, lda, b, n, 0, c, n, threads);
        t = seconds_now() - t;
        if (t < best) best = t;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * (double)m * (double)n * (double)k / best * 1e-9;
}

static void report_timings(void) {
    struct {
        int64_t m, n, k;
        bool trans_a;
        bool f32_only;
    } shapes[] = {
        {1024, 1024, 1024, false, true},
        {128, 1024, 784, false, false},
        {128, 1024, 1024, false, false},
        {1024, 784, 128, true, false},
        {32, 128, 64, false, false},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (int d = 0; d < 2; d++) {
            if (d == 1 && shapes[s].f32_only) continue;
            for (int threads = 1; threads <= 2; threads++) {
                double gflops = time_builtin((fn_dtype)d, shapes[s].m, shapes[s].n, shapes[s].k,
                                             shapes[s].trans_a, threads);
                printf("time fn_gemm_builtin %s %lldx%lldx%lld%s threads=%d: %.1f GFLOP/s\n",
                       d ? "float64" : "float32", (long long)shapes[s].m, (long long)shapes[s].n,
                       (long long)shapes[s].k, shapes[s].trans_a ? " (A transposed)" : "",
                       threads, gflops);
            }
        }
    }
}

/* fn_gemm_ordered's col_bias (a linear layer's forward, A @ B^T + bias per column) against C
 * seeded with the bias and the product added with beta 1: the same bits on every path, the Cᵀ
 * tiles (one and two blocks of k, a short last band of B's rows, a part-filled sliver of A), the
 * dot products (a single row, 10 columns), the packed kernel (few rows of B), on 1 and 2 threads;
 * and the bias alone when k is 0. With beta 0.5, the bias is added to beta * C on every path.
 * With relu (a linear layer's fused ReLU, with and without the bias), the same C then ReLU'd. */
static void test_column_bias(void) {
    const int64_t shapes[][3] = {{32, 128, 64}, {32, 70, 300}, {60, 130, 1100}, {128, 260, 1100},
                                 {30, 100, 70},  {1, 1000, 300}, {37, 10, 531},  {40, 48, 16},
                                 {5, 3, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        for (int d = 0; d < 2; d++) {
            const fn_dtype dtype = (fn_dtype)d;
            const size_t e = element_size(dtype);
            void *a = checked_malloc((size_t)(m * k) * e), *b = checked_malloc((size_t)(n * k) * e);
            void *bias = checked_malloc((size_t)n * e);
            void *fused = checked_malloc((size_t)(m * n) * e);
            void *seeded = checked_malloc((size_t)(m * n) * e);
            for (int64_t i = 0; i < m * k; i++) element_set(dtype, a, (size_t)i, random_uniform());
            for (int64_t i = 0; i < n * k; i++) element_set(dtype, b, (size_t)i, random_uniform());
            for (int64_t j = 0; j < n; j++) element_set(dtype, bias, (size_t)j, random_uniform());
            for (int run = 0; run < 12; run++) {
                const int threads = 1 + run % 2;
                const double beta = run % 4 < 2 ? 0 : 0.5;
                const bool relu = run >= 4, with_bias = run < 8;
                for (int64_t i = 0; i < m * n; i++) {
                    /* beta 0 overwrites even a NaN; beta * C + bias rounded as the dtype's ops */
                    double c0 = beta == 0 ? NAN : random_uniform();
                    double seed = representable(dtype, beta == 0 ? 0 : beta * c0);
                    if (with_bias)
                        seed = representable(dtype,
                                             seed + element_get(dtype, bias, (size_t)(i % n)));
                    element_set(dtype, fused, (size_t)i, c0);
                    element_set(dtype, seeded, (size_t)i, seed);
                }
                void *column_bias = with_bias ? bias : NULL;
                if (dtype == FN_FLOAT64) {
                    fn_gemm_ordered_f64(false, true, m, n, k, 1, a, k, b, k, beta, fused, n,
                                        threads, false, column_bias, relu);
                    fn_gemm_ordered_f64(false, true, m, n, k, 1, a, k, b, k, 1, seeded, n,
                                        threads, false, NULL, false);
                } else {
                    fn_gemm_ordered_f32(false, true, m, n, k, 1, a, k, b, k, (float)beta, fused,
                                        n, threads, false, column_bias, relu);
                    fn_gemm_ordered_f32(false, true, m, n, k, 1, a, k, b, k, 1, seeded, n,
                                        threads, false, NULL, false);
                }
                int64_t negative = 0;
                for (int64_t i = 0; relu && i < m * n; i++) {
                    double v = element_get(dtype, seeded, (size_t)i);
                    negative += v < 0;
                    element_set(dtype, seeded, (size_t)i, !(v <= 0) ? v : 0);
                }
                if (relu && k > 0) check(negative > 0, "column bias: the ReLU has work");
                char what[200];
                snprintf(what, sizeof what, "column bias %lldx%lldx%lld %s, beta %g, %d threads%s%s: "
                         "the bits of C seeded with it", (long long)m, (long long)n,
                         (long long)k, d ? "float64" : "float32", beta, threads,
                         with_bias ? "" : ", no bias", relu ? ", ReLU" : "");
                check(memcmp(fused, seeded, (size_t)(m * n) * e) == 0, what);
            }
            free(a), free(b), free(bias), free(fused), free(seeded);
        }
    }
}

/* fn_gemm_sparse (sparse_gemm.c) against a triple loop in double, within k + 3 roundings of the
 * sum of the terms' magnitudes: A sparse (and in "either" mode B sparser than A, its product
 * computed transposed), in both storage orders of each, beta 0 over a C of NaN, beta 1 and
 * -0.5, a linear layer's bias and ReLU with beta 0; shapes with k past one and several 64-step
 * words and a 1024-step panel, n past a 64-column block, rows past a block of 32, and under the
 * limits (too few rows, too little work), which take the dense product. Run under the
 * sanitizers too (make sanitize): the packing, masks and tiles must stay in their buffers. */
static void test_sparse_products(void) {
    const int64_t shapes[][3] = {{128, 200, 300}, {40, 70, 1100}, {33, 65, 640}, {160, 96, 130},
                                 {20, 1000, 100}, {8, 200, 1000}, {40, 30, 20}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        for (int d = 0; d < 2; d++) {
            const fn_dtype dtype = (fn_dtype)d;
            const size_t e = element_size(dtype);
            double *op_a = checked_malloc((size_t)(m * k) * sizeof(double));
            double *op_b = checked_malloc((size_t)(k * n) * sizeof(double));
            double *bias = checked_malloc((size_t)n * sizeof(double));
            double *c0 = checked_malloc((size_t)(m * n) * sizeof(double));
            void *c = checked_malloc((size_t)(m * n) * e);
            void *bias_stored = checked_malloc((size_t)n * e);
            for (int run = 0; run < 32; run++) {
                const bool ta = run & 1, tb = run & 2, either = run & 4;
                const int kind = run >> 3; /* beta 0, beta 1, beta -0.5, bias and ReLU */
                const double beta = kind == 1 ? 1 : kind == 2 ? -0.5 : 0;
                const bool with_bias = kind == 3 && !either;
                /* 45% nonzero in the sparse operand, 90% in the other */
                const double a_keep = either ? 0.9 : 0.45, b_keep = either ? 0.45 : 1.0;
                for (int64_t i = 0; i < m * k; i++)
                    op_a[i] = (random_uniform() + 1) / 2 < a_keep
                                  ? representable(dtype, random_uniform()) : 0;
                for (int64_t i = 0; i < k * n; i++)
                    op_b[i] = (random_uniform() + 1) / 2 < b_keep
                                  ? representable(dtype, random_uniform()) : 0;
                for (int64_t j = 0; j < n; j++) {
                    bias[j] = representable(dtype, random_uniform());
                    element_set(dtype, bias_stored, (size_t)j, bias[j]);
                }
                /* rows padded with NaN, which nothing may read */
                int64_t lda, ldb;
                void *a = store(dtype, op_a, m, k, ta, 3, &lda);
                void *b = store(dtype, op_b, k, n, tb, 5, &ldb);
                for (int64_t i = 0; i < m * n; i++) {
                    c0[i] = beta == 0 ? NAN : representable(dtype, random_uniform());
                    element_set(dtype, c, (size_t)i, c0[i]);
                }
                const int threads = 1 + run % 3;
                if (dtype == FN_FLOAT64)
                    fn_gemm_sparse_f64(ta, tb, m, n, k, a, lda, b, ldb, beta, c, n, threads, false,
                                       with_bias ? bias_stored : NULL, with_bias, either);
                else
                    fn_gemm_sparse_f32(ta, tb, m, n, k, a, lda, b, ldb, (float)beta, c, n, threads,
                                       false, with_bias ? bias_stored : NULL, with_bias, either);
                bool ok = true;
                for (int64_t i = 0; i < m && ok; i++)
                    for (int64_t j = 0; j < n && ok; j++) {
                        double sum = with_bias ? bias[j] : beta == 0 ? 0 : beta * c0[i * n + j];
                        double magnitude = fabs(sum);
                        for (int64_t p = 0; p < k; p++) {
                            sum += op_a[i * k + p] * op_b[p * n + j];
                            magnitude += fabs(op_a[i * k + p] * op_b[p * n + j]);
                        }
                        if (with_bias) sum = sum > 0 ? sum : 0;
                        double eps = dtype == FN_FLOAT64 ? DBL_EPSILON : FLT_EPSILON;
                        double got = element_get(dtype, c, (size_t)(i * n + j));
                        ok = fabs(got - sum) <= (double)(k + 3) * eps * magnitude;
                    }
                char what[200];
                snprintf(what, sizeof what,
                         "sparse %lldx%lldx%lld %s %c%c, %s, beta %g%s, %d threads", (long long)m,
                         (long long)n, (long long)k, d ? "float64" : "float32",
                         ta ? 'T' : 'N', tb ? 'T' : 'N', either ? "either" : "A", beta,
                         with_bias ? ", bias and ReLU" : "", threads);
                check(ok, what);
                free(a), free(b);
            }
            free(op_a), free(op_b), free(bias), free(c0), free(c), free(bias_stored);
        }
    }
}

/* The dot products (A @ B^T with few columns, or few rows and a long k) take blocks of 4 x 4,
 * 8 x 2 or 8 x 3 sums with AVX-512 in float32 (4 x 3 otherwise) by the product's sizes, and a
 * single row 1 x 8 or 1 x 4; whatever the block, each element of C is the same sum in the same
 * order, so each row of C must have the bits of that row computed alone. Shapes that take each
 * block, with short blocks of rows and columns and k past a whole number of vectors (a masked
 * load for its last elements); in each dtype, those that its dot products take (float64's
 * vectors, and so its narrow products, are half as wide). */
static void test_dot_blocks_same_bits(void) {
    const int64_t shapes[][3] = {{21, 14, 300}, {32, 9, 676}, {24, 9, 37}, {13, 10, 100},
                                 {18, 5, 200},  {16, 27, 1024}, {9, 13, 3}, {7, 3, 5}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        for (int d = 0; d < 2; d++) {
            const fn_dtype dtype = (fn_dtype)d;
            int64_t columns = d ? DOT_COLUMNS / 2 : DOT_COLUMNS;
#ifdef DOT_COLUMNS_LONG_K
            if (k >= 128) columns = d ? (DOT_COLUMNS_LONG_K + 1) / 2 - 1 : DOT_COLUMNS_LONG_K;
#endif
            if (n > columns && !fn_gemm_dot_pays(m, k)) continue;
            const size_t e = element_size(dtype);
            /* k elements exactly: a load past a row's end would read the next row, or past the
             * last row, outside the buffer (which AddressSanitizer reports). */
            void *a = checked_malloc((size_t)(m * k) * e), *b = checked_malloc((size_t)(n * k) * e);
            void *whole = checked_malloc((size_t)(m * n) * e);
            void *by_rows = checked_malloc((size_t)(m * n) * e);
            for (int64_t i = 0; i < m * k; i++) element_set(dtype, a, (size_t)i, random_uniform());
            for (int64_t i = 0; i < n * k; i++) element_set(dtype, b, (size_t)i, random_uniform());
            fn_status status =
                fn_gemm_builtin(dtype, 0, 1, m, n, k, 1, a, k, b, k, 0, whole, n, 1);
            for (int64_t i = 0; i < m; i++) {
                const char *row_a = (const char *)a + (size_t)(i * k) * e;
                char *row_c = (char *)by_rows + (size_t)(i * n) * e;
                if (fn_gemm_builtin(dtype, 0, 1, 1, n, k, 1, row_a, k, b, k, 0, row_c, n, 1) !=
                    FN_OK)
                    status = FN_EINVAL;
            }
            char what[160];
            snprintf(what, sizeof what, "dot products %lldx%lldx%lld %s: each row's bits as "
                     "computed alone", (long long)m, (long long)n, (long long)k,
                     d ? "float64" : "float32");
            check(status == FN_OK && memcmp(whole, by_rows, (size_t)(m * n) * e) == 0, what);
            free(a), free(b), free(whole), free(by_rows);
        }
    }
}

/* Rows a multiple of 4 KB apart are packed rather than read in place (gemm_rows_share_l1_set):
 * the same product with every row 8 elements further apart, read in place, must give the same
 * bits. A @ B^T as C^T tiles, B's rows the broadcasts (64 x 200 x k: gemm_swapped), and an
 * untransposed A of few tiles a sliver (24 x 64 x k: gemm_serial), k 4 KB of elements. */
static void test_rows_4kb_apart_same_bits(void) {
    const struct { int64_t m, n; int trans_b; } cases[] = {{64, 200, 1}, {24, 64, 0}};
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++) {
        for (int d = 0; d < 2; d++) {
            const fn_dtype dtype = (fn_dtype)d;
            const size_t e = element_size(dtype);
            const int64_t m = cases[s].m, n = cases[s].n, k = 4096 / (int64_t)e;
            const int trans_b = cases[s].trans_b;
            const int64_t b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
            void *results[2];
            for (int spread = 0; spread < 2; spread++) {
                const int64_t pad = spread ? 8 : 0, lda = k + pad, ldb = b_cols + pad;
                char *a = checked_malloc((size_t)(m * lda) * e);
                char *b = checked_malloc((size_t)(b_rows * ldb) * e);
                results[spread] = checked_malloc((size_t)(m * n) * e);
                rng_state = 42; /* the same values for both spreads */
                for (int64_t i = 0; i < m; i++)
                    for (int64_t p = 0; p < k; p++)
                        element_set(dtype, a, (size_t)(i * lda + p), random_uniform());
                for (int64_t i = 0; i < b_rows; i++)
                    for (int64_t p = 0; p < b_cols; p++)
                        element_set(dtype, b, (size_t)(i * ldb + p), random_uniform());
                fn_status status = fn_gemm_builtin(dtype, 0, trans_b, m, n, k, 1, a, lda, b, ldb,
                                                   0, results[spread], n, 1);
                check(status == FN_OK, "gemm with rows 4 KB apart runs");
                free(a), free(b);
            }
            char what[160];
            snprintf(what, sizeof what, "%lldx%lldx%lld %s %s: rows 4 KB apart (packed) give the "
                     "bits of rows read in place", (long long)m, (long long)n, (long long)k,
                     trans_b ? "NT" : "NN", d ? "float64" : "float32");
            check(memcmp(results[0], results[1], (size_t)(m * n) * e) == 0, what);
            free(results[0]), free(results[1]);
        }
    }
}

int main(void) {
    printf("fastnet %s, OpenMP %s\n", fn_version(), fn_has_openmp() ? "on" : "off");
    test_dot_blocks_same_bits();
    test_rows_4kb_apart_same_bits();
    test_column_bias();
    test_sparse_products();
    test_invalid_arguments();
    test_empty_and_degenerate();
    test_blas_table();
    test_builtin_preferred();

    /* No BLAS installed: fn_gemm runs the built-in kernel too. */
    /* Beyond the required shapes: every kind of short last tile (11, 10 and 2 rows), several
     * blocks of k (531) and of columns (1100), so that blocking and beta are both exercised;
     * B read in place (up to 24 rows, or a small B) and packed (1024^3); the dot products of
     * narrow products with B transposed (16 columns or fewer: short blocks of rows and columns,
     * k shorter than, equal to and past a vector with a remainder; and those of few rows and a
     * long k, whatever the columns: 16x144x1024, a convolution's weight gradient, and short
     * blocks of rows and columns with a remainder of k); transposed packing in square blocks with
     * rows, columns and k left over (20 rows: a tile of 12, then one of 8); 8 x 2 blocks of dot
     * products (10 or 5 columns and a short k, with short blocks of rows and columns); tiles of
     * 10 rows (10 and 22 rows, a transposed A's runs copied whole); with B transposed and many
     * more rows than A, A @ B^T as C^T tiles (gemm_swapped: 32 x 70 x 300 in one block of k,
     * B's last rows a short band; 60 x 130 x 1100, a part-filled sliver of A, in two blocks of k
     * where the float64 panel would pass 512 KB; 128 x 260 x 1100 likewise in float32; 30 x 100
     * x 70, one part-filled sliver and a short k); a weight gradient's A^T @ B split between the
     * threads by rows (1030 x 200 x 128, and 257 x 129 x 65 above). */
    int64_t shapes[][3] = {{1, 1, 1},    {3, 7, 5},     {257, 129, 65}, {0, 7, 5},
                           {6, 0, 5},    {6, 7, 0},     {0, 0, 0},      {11, 33, 17},
                           {10, 65, 531}, {2, 1100, 300}, {37, 10, 531}, {6, 16, 16},
                           {13, 9, 40},  {32, 17, 676}, {1, 1000, 300}, {1, 5, 7},
                           {20, 45, 37}, {16, 144, 1024}, {16, 27, 1024}, {15, 50, 256},
                           {5, 20, 257}, {37, 10, 100}, {21, 5, 128}, {10, 64, 70},
                           {22, 33, 40}, {32, 70, 300}, {60, 130, 1100}, {128, 260, 1100},
                           {30, 100, 70}, {1030, 200, 128}};
    for (int d = 0; d < 2; d++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            run_shape((fn_dtype)d, shapes[s][0], shapes[s][1], shapes[s][2], true);
        }
    }
    run_shape(FN_FLOAT32, 1024, 1024, 1024, true);

    report_timings();
    return check_report();
}
