/* gemm.c — general matrix multiply: the process-wide BLAS table, fastnet's built-in packed kernel,
 * and the public fn_gemm / fn_gemm_builtin.
 *
 * Everything is row-major: C (m, n) = alpha * op(A) (m, k) @ op(B) (k, n) + beta * C, with row
 * strides lda/ldb/ldc. Work is shared between threads by contiguous blocks of columns of C, so that
 * each thread writes its own part of every row and no two threads ever touch the same element.
 */
#ifndef FN_TEMPLATE_PASS
#include "internal.h"
#include "kernels.h"

#include <limits.h>
#include <string.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------- the BLAS table
 *
 * One table for the whole process, meant to be installed at start-up, before GEMMs run on other
 * threads. Each GEMM reads a copy of it once, so the gemm and set_threads_local it calls always come
 * from the same table.
 *
 * A library built with FN_WITH_LINKED_BLAS (make FN_BLAS=openblas) is linked against a BLAS and
 * starts with its table: the table's initial value is the linked functions' addresses, which the
 * loader fills in, so it is in place before any code of the library runs, in a shared or a static
 * build, without a constructor or a once-flag on the GEMM path. */
#ifdef FN_WITH_LINKED_BLAS
/* The Fortran ABI of every BLAS (the hidden lengths of the character arguments are ignored by
 * C implementations such as OpenBLAS, and are not passed here, as fn_sgemm_fn says). */
void sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
            const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
            const float *beta, float *c, const int *ldc);
void dgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
            const double *alpha, const double *a, const int *lda, const double *b, const int *ldb,
            const double *beta, double *c, const int *ldc);
/* Weak: OpenBLAS has it from 0.3.27 on; with an older OpenBLAS, or another BLAS, its address is
 * NULL and the BLAS keeps its own threading. */
int openblas_set_num_threads_local(int num_threads) __attribute__((weak));
#define GEMM_LINKED_BLAS {sgemm_, dgemm_, openblas_set_num_threads_local}
static fn_blas gemm_blas_table = GEMM_LINKED_BLAS;

int fn_use_linked_blas(void) {
    gemm_blas_table = (fn_blas)GEMM_LINKED_BLAS;
    return 1;
}
#else
static fn_blas gemm_blas_table;

int fn_use_linked_blas(void) { return 0; }
#endif

void fn_set_blas(const fn_blas *table) {
    if (table) {
        gemm_blas_table = *table;
    } else {
        memset(&gemm_blas_table, 0, sizeof gemm_blas_table);
    }
}

int fn_blas_installed(fn_dtype dtype) {
    if (dtype == FN_FLOAT64) return gemm_blas_table.dgemm != NULL;
    return gemm_blas_table.sgemm != NULL;
}

/* The BLAS entry point of each dtype, so that templated code can pick the right one by FN_T(). */
typedef fn_sgemm_fn gemm_blas_fn_f32;
typedef fn_dgemm_fn gemm_blas_fn_f64;
static gemm_blas_fn_f32 gemm_blas_get_f32(const fn_blas *table) { return table->sgemm; }
static gemm_blas_fn_f64 gemm_blas_get_f64(const fn_blas *table) { return table->dgemm; }

/* ---------------------------------------------------------------- threading
 *
 * Below this many multiply-adds per thread, waking and joining a thread (a few microseconds) and
 * the BLAS's lower efficiency on half-width blocks cost about as much as the share of work the
 * second thread takes over. Measured on mlp_small_b32 (2 threads), whose largest GEMMs are
 * 32x128x128 (2^19 multiply-adds): training steps of 95 us with them split, 52 us whole. The
 * 128x1024x784 GEMMs of mlp_mnist_b128 still split. */
#define GEMM_MIN_WORK_PER_THREAD ((double)(1 << 19))

/* The threads for a product whose blocks are `blocks` (of columns, or of rows) at the most. */
static int gemm_thread_count(int64_t m, int64_t n, int64_t k, int64_t blocks, int threads) {
    if (threads < 2) return 1;
    /* In double: m*n*k may not fit in int64 for absurd (but valid) sizes. A product of few rows
     * (batch-1 inference) reads all of B for little arithmetic: its time is B's memory traffic,
     * about what 16 rows' multiply-adds take, and two cores stream B faster than one. */
    double work = (double)(m < 16 ? 16 : m) * (double)n * (double)k;
    double by_work = work / GEMM_MIN_WORK_PER_THREAD;
    int64_t t = threads;
    if (by_work < (double)t) t = by_work < 1.0 ? 1 : (int64_t)by_work;
    if (blocks < t) t = blocks;
    return t < 1 ? 1 : (int)t;
}

/* ---------------------------------------------------------------- blocking
 *
 * The built-in kernel is the classic packed scheme. For each block of NC columns and KC steps of k,
 * op(B) (KC, NC) is copied into a contiguous panel of NR-column slivers; then for each MR rows,
 * op(A) (MR, KC) is copied into a small sliver, and a register-blocked micro-kernel computes one
 * (MR, NR) tile of C per NR-sliver of the B panel, keeping the whole tile in registers for all KC
 * steps. Packed operands are read strictly in order, whatever the transposes and strides.
 *
 * The micro-kernel's vectors run along the columns of C (contiguous in row-major) and it broadcasts
 * elements of A: per step of k a tile reads NR values of B and MR of A. Sizes, for a core with a
 * 48 KB L1d and a 2 MB L2:
 *   - the A sliver is packed right before the row of tiles that uses it and is read again by every
 *     tile of that row, so it must survive in L1 while one B sliver after another streams past it:
 *     (MR + NR) * KC * sizeof(real) <= 48 KB;
 *   - the B panel is read once for every MR rows of C, so it should stay in L2, with room left for
 *     the rows of C and A passing through: KC * NC * sizeof(real) = 1 MB, half of L2;
 *   - within those limits KC should be large, since each tile loads and stores its part of C once
 *     per KC steps.
 * So KC * sizeof(real) = 1 KB (KC = 256 floats, 128 doubles) and NC = 1024: the widest tile, 12 x 32
 * floats, keeps (12 + 32) KB in L1. Measured on a Sapphire Rapids core, doubling KC for doubles
 * (56 KB, past L1) lost 10-15%, and NC = 512 or 2048 changed little. Blocks are balanced (k = 300
 * with KC = 256 becomes two blocks of 150, not 256 + 44) so that no block is a sliver.
 */
#define GEMM_KC_f32 256
#define GEMM_KC_f64 128
#define GEMM_NC_f32 1024
#define GEMM_NC_f64 1024

#if defined(__AVX512F__)
/* 32 zmm registers: 12 x 2 accumulators, 2 for B, 1 for the broadcast A. AVX-512 doubles the
 * width of AVX2 and measured 1.6x its speed here (155 against 95 GFLOP/s in float32 on one core). */
#define GEMM_MR_f32 12
#define GEMM_NR_f32 32
#define GEMM_MR_f64 12
#define GEMM_NR_f64 16
#elif defined(__AVX2__) && defined(__FMA__)
/* 16 ymm registers: 6 x 2 accumulators, 2 for B, 1 for the broadcast A. Such a build's BLAS runs
 * without AVX-512 too, and the choices between the two that depend on it test GEMM_AVX2_ONLY. */
#define GEMM_AVX2_ONLY 1
#define GEMM_MR_f32 6
#define GEMM_NR_f32 16
#define GEMM_MR_f64 6
#define GEMM_NR_f64 8
#else
/* Plain C: a tile small enough that a compiler targeting 16 SSE registers keeps it in registers. */
#define GEMM_MR_f32 4
#define GEMM_NR_f32 8
#define GEMM_MR_f64 4
#define GEMM_NR_f64 4
#define GEMM_PLAIN_MICRO_KERNEL 1
#endif

/* The rows of A a micro-kernel reads for a sliver of `rows` rows: the micro-kernels below run the
 * tile of this height (a third, two thirds, five sixths or all of MR), and pack_a zeroes the
 * rows past `rows` up to it (the same for both dtypes, whose MR are equal). */
static inline int gemm_tile_height(int rows) {
#if defined(__AVX512F__)
    /* 10: the weight gradient of a layer with 10 outputs (10 x n x batch), 1.2x less work than
     * a 12-row tile. */
    return rows > 10 ? 12 : rows > 8 ? 10 : rows > 4 ? 8 : 4;
#elif defined(__AVX2__) && defined(__FMA__)
    return rows > 4 ? 6 : rows > 2 ? 4 : 2;
#else
    (void)rows;
    return GEMM_MR_f32;
#endif
}

/* Whether rows `row_bytes` apart all fall into the same set of L1 (a multiple of 4 KB: 64 sets of
 * 64-byte lines on the x86 cores measured). A micro-kernel reading MR = 12 such rows in place
 * then cycles 12 lines through a set of 8 ways and misses L1 at every broadcast: 128 x 1024 x
 * 1024 as C^T tiles (gemm_swapped) ran at 67-98 GFLOP/s on one core, varying with the arrays'
 * placement, against 98-104 at k = 1032; rows 2 KB apart (two sets) ran at full speed. Such
 * rows are packed instead, into the same sums in the same order: 98-106 GFLOP/s there; an
 * untransposed A read by gemm_serial, 64x128x9216 88-95 -> 98-106 and 48x96x4096 91 -> 105,
 * 64x32x9216 no slower (AMD Zen 4, one thread, from Python). */
static inline bool gemm_rows_share_l1_set(int64_t row_bytes) { return row_bytes % 4096 == 0; }

/* Splits `total` into near-equal blocks of at most `max_block` (rounded up to `multiple`). */
static int64_t gemm_block_size(int64_t total, int64_t max_block, int64_t multiple) {
    int64_t blocks = (total + max_block - 1) / max_block;
    int64_t size = (total + blocks - 1) / blocks;
    return (size + multiple - 1) / multiple * multiple;
}

/* ---------------------------------------------------------------- SIMD micro-kernels
 *
 * gemm_micro(rows, kc, a, b, b_stride, c, ldc, alpha_beta) computes one tile: a (kc, MR)
 * packed A sliver and b (kc, NR) B sliver, whose rows are b_stride apart (NR when packed, ldb
 * when read in place) -> the first `rows` rows of c (MR, NR), row stride ldc:
 * c = alpha * a^T @ b + beta * c with {alpha, beta, relu} in alpha_beta, where beta == 0
 * overwrites c without reading it (so NaN left in C does not survive, as in BLAS), and relu
 * other than 0 applies FN_RELU to the result before it is stored.
 *
 * The last rows of a matrix seldom fill a whole MR-row tile. Rather than multiplying the zero
 * padding, a short tile runs a kernel for fewer rows (a third or two thirds of MR, and with
 * AVX-512 10 rows): batch sizes that are multiples of 4 then waste nothing. Each such kernel is
 * the same inline function with a constant row count, which the compiler unrolls into its own
 * register allocation.
 *
 * gemm_tile(tile_rows, rows, kc, a, a_row, a_step, ...) is that function: A's element for
 * row i at step p is a[i * a_row + p * a_step], which is a packed sliver with (1, MR) and MR rows
 * of A where they lie with (lda, 1) (gemm_micro_rows). Both are constants or loop invariants at
 * each call, so the packed kernel's code is what it was. */
/* x * y + z in one rounding where the build has FMA instructions, as the SIMD micro-kernels
 * compute beta * C + alpha * (A @ B); otherwise as the plain micro-kernel writes it. */
#if defined(__FMA__) && defined(__GNUC__)
#define GEMM_FMA(x, y, z)                                                                         \
    _Generic((x), float: __builtin_fmaf, default: __builtin_fma)((x), (y), (z))
#else
#define GEMM_FMA(x, y, z) ((x) * (y) + (z))
#endif

/* Hides what x holds from the optimiser. The micro-kernels read alpha and beta after their loop,
 * when the sums no longer need every register; given a constant beta = 0, GCC rescheduled the
 * tile and spilled a vector of B, reloaded in every multiply-add (128 x 512 x 1024: 1.5x
 * slower). */
#if defined(__GNUC__)
#define GEMM_OPAQUE(x) __asm__("" : "+m"(x))
#else
#define GEMM_OPAQUE(x) ((void)0)
#endif

#if defined(__GNUC__)
#define GEMM_INLINE static inline __attribute__((always_inline))
#define GEMM_NOINLINE static __attribute__((noinline))
#else
#define GEMM_INLINE static inline
#define GEMM_NOINLINE static
#endif

/* The vector operations of the SIMD micro-kernel (the templated half's gemm_tile), per dtype: a
 * vector is GEMM_NR / 2 elements, two of them a row of the tile. */
#if defined(__AVX512F__)
typedef __m512 gemm_vector_f32;
typedef __m512d gemm_vector_f64;
#define GEMM_VZERO_f32 _mm512_setzero_ps
#define GEMM_VZERO_f64 _mm512_setzero_pd
#define GEMM_VLOAD_f32 _mm512_loadu_ps
#define GEMM_VLOAD_f64 _mm512_loadu_pd
#define GEMM_VSTORE_f32 _mm512_storeu_ps
#define GEMM_VSTORE_f64 _mm512_storeu_pd
#define GEMM_VSET1_f32 _mm512_set1_ps
#define GEMM_VSET1_f64 _mm512_set1_pd
#define GEMM_VBROADCAST_f32(p) _mm512_set1_ps(*(p))
#define GEMM_VBROADCAST_f64(p) _mm512_set1_pd(*(p))
#define GEMM_VMUL_f32 _mm512_mul_ps
#define GEMM_VMUL_f64 _mm512_mul_pd
#define GEMM_VFMADD_f32 _mm512_fmadd_ps
#define GEMM_VFMADD_f64 _mm512_fmadd_pd
/* FN_RELU on a vector: v where !(v <= 0) (NaN included), else +0 (max would keep -0) */
#define GEMM_VRELU_f32(v)                                                                         \
    _mm512_maskz_mov_ps(_mm512_cmp_ps_mask((v), _mm512_setzero_ps(), _CMP_NLE_UQ), (v))
#define GEMM_VRELU_f64(v)                                                                         \
    _mm512_maskz_mov_pd(_mm512_cmp_pd_mask((v), _mm512_setzero_pd(), _CMP_NLE_UQ), (v))
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 gemm_vector_f32;
typedef __m256d gemm_vector_f64;
#define GEMM_VZERO_f32 _mm256_setzero_ps
#define GEMM_VZERO_f64 _mm256_setzero_pd
#define GEMM_VLOAD_f32 _mm256_loadu_ps
#define GEMM_VLOAD_f64 _mm256_loadu_pd
#define GEMM_VSTORE_f32 _mm256_storeu_ps
#define GEMM_VSTORE_f64 _mm256_storeu_pd
#define GEMM_VSET1_f32 _mm256_set1_ps
#define GEMM_VSET1_f64 _mm256_set1_pd
#define GEMM_VBROADCAST_f32 _mm256_broadcast_ss /* from memory: no register to fill first */
#define GEMM_VBROADCAST_f64 _mm256_broadcast_sd
#define GEMM_VMUL_f32 _mm256_mul_ps
#define GEMM_VMUL_f64 _mm256_mul_pd
#define GEMM_VFMADD_f32 _mm256_fmadd_ps
#define GEMM_VFMADD_f64 _mm256_fmadd_pd
/* FN_RELU on a vector: v where !(v <= 0) (NaN included), else +0 (max would keep -0) */
#define GEMM_VRELU_f32(v)                                                                         \
    _mm256_and_ps(_mm256_cmp_ps((v), _mm256_setzero_ps(), _CMP_NLE_UQ), (v))
#define GEMM_VRELU_f64(v)                                                                         \
    _mm256_and_pd(_mm256_cmp_pd((v), _mm256_setzero_pd(), _CMP_NLE_UQ), (v))
#endif

/* ---------------------------------------------------------------- transposed packing
 *
 * gemm_transpose_fXX(src, ld, dst, dst_stride): dst[q * dst_stride + r] = src[r * ld + q] for a
 * square block of GEMM_TB_fXX, in registers. Packing a transposed operand is a transposition, and
 * element by element it cost more than the product for the products that need it most (a
 * convolution's weight gradient dY @ columns^T: 16 x 144 x 1024 spent two thirds of its time
 * packing the columns). 0: no such block (plain C), element by element. */
#if defined(__AVX__)
#define GEMM_TB_f32 8
#define GEMM_TB_f64 4

GEMM_INLINE void gemm_transpose_f32(const float *src, int64_t ld, float *dst,
                                    int64_t dst_stride) {
    __m256 r[8], t[8], s[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ld);
    for (int i = 0; i < 8; i += 2) { /* pairs of rows interleaved: columns {0,1,4,5}, {2,3,6,7} */
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) { /* four rows of columns q and q + 4 in each vector */
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int q = 0; q < 4; q++) { /* rows 0-3 and 4-7 of column q, then of column q + 4 */
        _mm256_storeu_ps(dst + q * dst_stride, _mm256_permute2f128_ps(s[q], s[q + 4], 0x20));
        _mm256_storeu_ps(dst + (q + 4) * dst_stride,
                         _mm256_permute2f128_ps(s[q], s[q + 4], 0x31));
    }
}

GEMM_INLINE void gemm_transpose_f64(const double *src, int64_t ld, double *dst,
                                    int64_t dst_stride) {
    __m256d r[4], t[4];
    for (int i = 0; i < 4; i++) r[i] = _mm256_loadu_pd(src + i * ld);
    t[0] = _mm256_unpacklo_pd(r[0], r[1]); /* columns 0 and 2 of rows 0, 1 */
    t[1] = _mm256_unpackhi_pd(r[0], r[1]); /* columns 1 and 3 */
    t[2] = _mm256_unpacklo_pd(r[2], r[3]);
    t[3] = _mm256_unpackhi_pd(r[2], r[3]);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t[0], t[2], 0x20));
    _mm256_storeu_pd(dst + dst_stride, _mm256_permute2f128_pd(t[1], t[3], 0x20));
    _mm256_storeu_pd(dst + 2 * dst_stride, _mm256_permute2f128_pd(t[0], t[2], 0x31));
    _mm256_storeu_pd(dst + 3 * dst_stride, _mm256_permute2f128_pd(t[1], t[3], 0x31));
}

/* The same for 4 rows by 8 columns of floats: dst[q * dst_stride + r] = src[r * ld + q] for
 * r < 4, q < 8. A's last rows in a short sliver (MR = 12 leaves 4 rows after an 8 x 8 block for a
 * 16-row A, a 16-channel convolution's) would otherwise be copied element by element. */
#define GEMM_TB4_f32 1
#define GEMM_TB4_f64 0
GEMM_INLINE void gemm_transpose4_f32(const float *src, int64_t ld, float *dst,
                                     int64_t dst_stride) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld);
    __m256 r2 = _mm256_loadu_ps(src + 2 * ld), r3 = _mm256_loadu_ps(src + 3 * ld);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    /* Columns q and q + 4 of the four rows in each vector, q = 0..3. */
    __m256 s[4] = {_mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),
                   _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                   _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                   _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};
    for (int q = 0; q < 4; q++) {
        _mm_storeu_ps(dst + q * dst_stride, _mm256_castps256_ps128(s[q]));
        _mm_storeu_ps(dst + (q + 4) * dst_stride, _mm256_extractf128_ps(s[q], 1));
    }
}
#else
#define GEMM_TB_f32 0
#define GEMM_TB_f64 0
#define GEMM_TB4_f32 0
#define GEMM_TB4_f64 0
#endif

#if defined(__AVX512F__)
/* 16 rows by 16 columns of floats in 512-bit registers: half the shuffles per element of the 8 x 8
 * transposition, whose shuffles bound the packing of a transposed B (a convolution's columns,
 * 16 rows at a time into a 32-column sliver). Interleaving pairs of rows, then pairs of pairs,
 * leaves in 128-bit lane L of u[4k + c] column 4L + c of rows 4k..4k+3; two rounds of lane
 * shuffles gather each column's four lanes. */
#define GEMM_TB16_f32 1
#define GEMM_TB16_f64 0
GEMM_INLINE void gemm_transpose16_f32(const float *src, int64_t ld, float *dst,
                                      int64_t dst_stride) {
    __m512 r[16], t[16], u[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * ld);
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) {
        __m512d lo = _mm512_castps_pd(t[4 * k]), lo2 = _mm512_castps_pd(t[4 * k + 2]);
        __m512d hi = _mm512_castps_pd(t[4 * k + 1]), hi2 = _mm512_castps_pd(t[4 * k + 3]);
        u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, lo2));
        u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, lo2));
        u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi, hi2));
        u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi, hi2));
    }
    for (int c = 0; c < 4; c++) {
        __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88); /* lanes 0, 2 */
        __m512 v2 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd); /* lanes 1, 3 */
        __m512 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 w2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        _mm512_storeu_ps(dst + c * dst_stride, _mm512_shuffle_f32x4(v1, w1, 0x88));
        _mm512_storeu_ps(dst + (4 + c) * dst_stride, _mm512_shuffle_f32x4(v2, w2, 0x88));
        _mm512_storeu_ps(dst + (8 + c) * dst_stride, _mm512_shuffle_f32x4(v1, w1, 0xdd));
        _mm512_storeu_ps(dst + (12 + c) * dst_stride, _mm512_shuffle_f32x4(v2, w2, 0xdd));
    }
}
#else
#define GEMM_TB16_f32 0
#define GEMM_TB16_f64 0
#endif

/* GEMM_MASKED_LOAD_fXX(src, count): a vector of GEMM_NR / 2 elements (the dot products' width),
 * the first `count` from src and zeros after them; the masked-off elements are not read, so they
 * may lie past the end of a buffer. */
#if defined(__AVX512F__)
typedef __m512 gemm_masked_vector_f32;
typedef __m512d gemm_masked_vector_f64;
#define GEMM_MASKED_LOAD_f32(src, count)                                                          \
    _mm512_maskz_loadu_ps((__mmask16)((1u << (count)) - 1), (src))
#define GEMM_MASKED_LOAD_f64(src, count)                                                          \
    _mm512_maskz_loadu_pd((__mmask8)((1u << (count)) - 1), (src))
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 gemm_masked_vector_f32;
typedef __m256d gemm_masked_vector_f64;
#define GEMM_MASKED_LOAD_f32(src, count)                                                          \
    _mm256_maskload_ps((src), _mm256_cmpgt_epi32(_mm256_set1_epi32(count),                        \
                                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)))
#define GEMM_MASKED_LOAD_f64(src, count)                                                          \
    _mm256_maskload_pd((src), _mm256_cmpgt_epi64(_mm256_set1_epi64x(count),                      \
                                                  _mm256_setr_epi64x(0, 1, 2, 3)))
#endif

/* ---------------------------------------------------------------- argument checks */

/* Checks one operand: `rows` rows of `row_length` elements, `ld` apart. */
static fn_status gemm_check_operand(const char *fn, const char *name, const char *ld_name,
                                    const void *data, int64_t rows, int64_t row_length,
                                    int64_t ld) {
    if (ld < row_length) {
        return fn_error(FN_EINVAL, "%s: %s = %lld is smaller than the %lld elements of a row of %s",
                        fn, ld_name, (long long)ld, (long long)row_length, name);
    }
    if (rows > 0 && row_length > 0) {
        if (data == NULL) {
            return fn_error(FN_EINVAL, "%s: %s is NULL but has %lld x %lld elements", fn, name,
                            (long long)rows, (long long)row_length);
        }
        /* Every element offset must fit in int64 and every byte offset in size_t. */
        if (ld > (INT64_MAX / 8) / rows) {
            return fn_error(FN_EINVAL, "%s: %s spans %lld rows of stride %lld: too large", fn,
                            name, (long long)rows, (long long)ld);
        }
    }
    return FN_OK;
}

static fn_status gemm_check(const char *fn, fn_dtype dtype, int trans_a, int trans_b, int64_t m,
                            int64_t n, int64_t k, const void *a, int64_t lda, const void *b,
                            int64_t ldb, const void *c, int64_t ldc) {
    if (dtype != FN_FLOAT32 && dtype != FN_FLOAT64) {
        return fn_error(FN_EINVAL, "%s: unknown dtype %d", fn, (int)dtype);
    }
    if (m < 0 || n < 0 || k < 0) {
        return fn_error(FN_EINVAL, "%s: negative size m = %lld, n = %lld, k = %lld", fn,
                        (long long)m, (long long)n, (long long)k);
    }
    /* Stored A is (m, k), or (k, m) when transposed; likewise B (k, n) or (n, k). */
    FN_TRY(gemm_check_operand(fn, "A", "lda", a, trans_a ? k : m, trans_a ? m : k, lda));
    FN_TRY(gemm_check_operand(fn, "B", "ldb", b, trans_b ? n : k, trans_b ? k : n, ldb));
    FN_TRY(gemm_check_operand(fn, "C", "ldc", c, m, n, ldc));
    return FN_OK;
}

/* ---------------------------------------------------------------- public entry points */

/* The three entry points differ only in which implementation runs the product (each as
 * fn_gemm_fXX, fn_gemm_builtin_fXX and fn_gemm_blas_fXX below); argument checks and the
 * dispatch on dtype are shared. */
typedef enum { GEMM_AS_TRAINING_RUNS, GEMM_BUILTIN_ONLY, GEMM_BLAS_ONLY } gemm_kernel;

typedef void (*gemm_f32_fn)(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                            const float *, int64_t, float, float *, int64_t, int);
typedef void (*gemm_f64_fn)(bool, bool, int64_t, int64_t, int64_t, double, const double *,
                            int64_t, const double *, int64_t, double, double *, int64_t, int);
static const gemm_f32_fn gemm_entry_f32[] = {fn_gemm_f32, fn_gemm_builtin_f32, fn_gemm_blas_f32};
static const gemm_f64_fn gemm_entry_f64[] = {fn_gemm_f64, fn_gemm_builtin_f64, fn_gemm_blas_f64};

static fn_status gemm_entry(const char *fn, gemm_kernel kernel, fn_dtype dtype, int trans_a,
                            int trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                            const void *a, int64_t lda, const void *b, int64_t ldb, double beta,
                            void *c, int64_t ldc, int threads) {
    FN_TRY(gemm_check(fn, dtype, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc));
    if (kernel == GEMM_BLAS_ONLY && !fn_blas_installed(dtype)) {
        return fn_error(FN_ESTATE, "%s: no BLAS is installed for %s", fn,
                        dtype == FN_FLOAT64 ? "float64" : "float32");
    }
    if (kernel == GEMM_BLAS_ONLY && (m > INT_MAX || n > INT_MAX || k > INT_MAX ||
                                     lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX)) {
        return fn_error(FN_EINVAL, "%s: a size or stride exceeds the BLAS's int", fn);
    }
    if (threads < 1) threads = 1;
    if (dtype == FN_FLOAT64) {
        gemm_entry_f64[kernel](trans_a != 0, trans_b != 0, m, n, k, alpha, a, lda, b, ldb, beta,
                               c, ldc, threads);
    } else {
        gemm_entry_f32[kernel](trans_a != 0, trans_b != 0, m, n, k, (float)alpha, a, lda, b, ldb,
                               (float)beta, c, ldc, threads);
    }
    return FN_OK;
}

fn_status fn_gemm(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                  double alpha, const void *a, int64_t lda, const void *b, int64_t ldb,
                  double beta, void *c, int64_t ldc, int threads) {
    return gemm_entry("fn_gemm", GEMM_AS_TRAINING_RUNS, dtype, trans_a, trans_b, m, n, k, alpha,
                      a, lda, b, ldb, beta, c, ldc, threads);
}

fn_status fn_gemm_builtin(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n,
                          int64_t k, double alpha, const void *a, int64_t lda, const void *b,
                          int64_t ldb, double beta, void *c, int64_t ldc, int threads) {
    return gemm_entry("fn_gemm_builtin", GEMM_BUILTIN_ONLY, dtype, trans_a, trans_b, m, n, k,
                      alpha, a, lda, b, ldb, beta, c, ldc, threads);
}

fn_status fn_gemm_blas(fn_dtype dtype, int trans_a, int trans_b, int64_t m, int64_t n,
                       int64_t k, double alpha, const void *a, int64_t lda, const void *b,
                       int64_t ldb, double beta, void *c, int64_t ldc, int threads) {
    return gemm_entry("fn_gemm_blas", GEMM_BLAS_ONLY, dtype, trans_a, trans_b, m, n, k, alpha, a,
                      lda, b, ldb, beta, c, ldc, threads);
}

/* Whether a single-threaded product of these sizes runs faster on the built-in kernel than on
 * the installed BLAS (SciPy's OpenBLAS 0.3.30). With AVX-512, measured on Sapphire and Emerald
 * Rapids cores over the GEMMs of the four benchmark networks (`fastnet bench --gemm`,
 * csrc/test/bench_gemm.c):
 *   - op(B) not transposed, at least 16 rows, 64 columns and 2^20 multiply-adds: the built-in
 *     kernel is 1.1-1.9x faster (the 3x3 convolutions' forward and input-gradient products with
 *     16-64 output channels, 1.1-1.9x; the large linear layers' backward products, 1.1-1.8x);
 *   - op(B) transposed (a linear layer's forward, a convolution's weight gradient), at least 16
 *     rows, 64 columns and 2^18 multiply-adds: since its packing transposes blocks in registers,
 *     1.05-1.5x (the 3x3 convolutions' weight gradients 1.2-1.4x, the linear layers' forward
 *     1.0-1.5x);
 *   - fewer columns than two tiles, fewer rows than 16, or a small product: packing a whole B
 *     panel for one or two rows of tiles costs more than OpenBLAS's small-size paths (0.2-0.9x);
 *   - except a single row times a transposed B (a linear layer's batch-1 forward): OpenBLAS packs
 *     all of B for it, the built-in dot products stream it once (784 x 1024: 2-3x faster);
 *   - and a transposed B of few columns once OpenBLAS leaves its small-matrix kernels (below).
 * The choice is a function of the sizes of the call alone, so it is the same in every run, and in
 * deterministic mode (whose blocks come from the sizes) the same for every thread count. */
/* Whether C = A @ B^T with m rows and a long k is faster as dot products along k (gemm_dot) than
 * packed, whatever n: packing transposes all of B for at most m rows of tiles, while the dot
 * products read A and B where they lie and their final sums cost little next to a long loop.
 * Measured with AVX-512 (GFLOP/s, dot products against packed): 16x144x1024 205 / 117,
 * 16x144x256 143 / 113, 32x144x1024 180 / 146; 32x288x256 143 / 166, 64x288x576 184 / 193,
 * 32x128x64 65 / 160. */
bool fn_gemm_dot_pays(int64_t m, int64_t k) {
    return (m <= 16 && k >= 256) || (m <= 32 && k >= 512);
}

bool fn_gemm_prefers_builtin(bool trans_b, int64_t m, int64_t n, int64_t k) {
#ifdef GEMM_AVX2_ONLY
    /* Without AVX-512, OpenBLAS runs its Haswell kernels, which have no small-matrix paths: every
     * product packs both operands. On AMD Zen 3 (one thread) the built-in kernel ran the small
     * products 1.4-5.5x faster (Winograd's 16x256x16 TN 2.2x, 32x64x32 TN 1.6x, 64x64x64 NT
     * 1.4x; 10x512x128 TN 2.3x, 16x256x244 NN 1.7x, 15x256x255 NT 3.1x; 1 and 2 rows 5.2-5.5x,
     * 3x1024x512 NN 2.9x) and the large ones as fast (1024^3 0.8-1.0x, the MLPs' 1.0-1.1x);
     * a transposed B of fewer columns than a sliver runs as dot products (gemm_dot_columns). */
    return true;
#endif
    if (m == 1 && trans_b) return true;
    /* OpenBLAS on 16x27x1024 (the first convolution's weight gradient): 150 GFLOP/s, the dot
     * products 194. */
    if (trans_b && fn_gemm_dot_pays(m, k) && n > 16) return true;
    /* A transposed B of at most 16 columns (a 10-output layer's forward; as many as the dot
     * products take, NR / 2 in float32) past OpenBLAS's small-matrix kernels, which it leaves
     * above m * n = 1200 or m * n * k = 10^6 for this transpose: its general path, packing for so
     * few columns, ran 128x10x1024 at a third of the dot products' speed (47.5 against 15.6 us),
     * 128x10x64 at half, 256x5x128 at a third. Except 16 columns with a short k, where
     * OpenBLAS's general kernel fits (0.6x at k = 64, 1.0x at 128, 1.7x from 512). Below those
     * sizes its small kernels are 1.1-1.5x the dot products. */
    if (trans_b && n <= GEMM_NR_f32 / 2 &&
        ((double)m * (double)n > 1200 || (double)m * (double)n * (double)k > 1e6) &&
        (n < 16 || k >= 256))
        return true;
    /* A transposed B of at least 32 rows and columns and k >= 64, which OpenBLAS (0.3.31, AMD
     * Zen 4) runs on its small-matrix kernel at 74-82 GFLOP/s: the built-in kernel ran the
     * weight gradients of Winograd's convolutions at 1.14-1.26x (64x32x144 97.4 against 77.2,
     * 64x64x64 94.6 / 77.8, 32x32x64 87.7 / 76.8) and of the 1x1 shortcuts at 1.27x (64x32x64). */
    if (trans_b && m >= 32 && n >= 32 && k >= 64) return true;
    double work = (double)m * (double)n * (double)k;
    if (trans_b) return m >= 16 && n >= 64 && work >= (double)(1 << 18);
    /* An untransposed B past 10^6 multiply-adds, where OpenBLAS leaves its small-matrix kernels:
     * one thread, the built-in kernel against it, `10x1024x128` TN (the weight gradient of a
     * layer of 10 outputs) 25 against 81 us, `8x256x512` 18.5 / 60, `12x1024x1024` 234 / 551,
     * `4x512x500` NN 30 / 94, `128x64x125` 19.6 / 25.9; at `10x512x128` (6.6 x 10^5) the two
     * are even. Fewer than 4 rows stay with OpenBLAS. */
    return m >= 4 && n >= 64 && work > 1e6;
}

#define FN_TEMPLATE_FILE "gemm.c"
#include "template.h"

#else /* ============================================================ templated half */

#define GEMM_MR FN_T(GEMM_MR)
#define GEMM_NR FN_T(GEMM_NR)
#define GEMM_KC FN_T(GEMM_KC)
#define GEMM_NC FN_T(GEMM_NC)

/* Whether a transposed B of n columns is few enough for the dot products (gemm_dot), k the
 * length of each: fewer than a sliver, which the packed kernel would pad to NR. With AVX-512, up
 * to NR / 2. With AVX2 alone, where the built-in kernel takes every product
 * (fn_gemm_prefers_builtin), up to NR - 1 from k = 128: on AMD Zen 3 (one thread) 32x10x128 ran
 * 1.38x faster as dot products than OpenBLAS, where packed it ran 0.89x, 96x10x1024 1.44x
 * (packed 0.76x), 128x15x512 2.0x; with k = 64, 128x10x64 0.52-0.69x (packed 1.0x). */
static inline bool FN_T(gemm_dot_columns)(int64_t n, int64_t k) {
#ifdef GEMM_AVX2_ONLY
    if (n < GEMM_NR && k >= 128) return true;
#else
    (void)k;
#endif
    return n <= GEMM_NR / 2;
}

#ifndef GEMM_PLAIN_MICRO_KERNEL
typedef FN_T(gemm_vector) FN_T(gemm_vec);
/* Keeps a loaded vector of B in a register: GCC 12 otherwise folded its load into each of the
 * tile's multiply-adds in some of the tile's instances (the 6-row AVX2 tile: 12 loads of B a
 * step instead of 2, besides the 6 broadcasts). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define GEMM_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define GEMM_IN_REGISTER(v) ((void)0)
#endif
#define GEMM_LANES (GEMM_NR / 2)

/* a (kc, MR) (or its first tile_rows columns), b (kc, NR), c (rows <= tile_rows <= MR, NR): two
 * vectors of accumulators a row of the tile, two vectors of B and one broadcast of A a step. */
GEMM_INLINE void FN_T(gemm_tile)(const int tile_rows, int rows, int64_t kc, const real *restrict a,
                                 const int64_t a_row, const int64_t a_step,
                                 const real *restrict b, int64_t b_stride, real *restrict c,
                                 int64_t ldc, const real *alpha_beta) {
    FN_T(gemm_vec) acc[GEMM_MR][2];
    for (int i = 0; i < tile_rows; i++) {
        acc[i][0] = FN_T(GEMM_VZERO)();
        acc[i][1] = FN_T(GEMM_VZERO)();
        /* The tile is only written after all kc steps: start bringing it in now. */
        if (i < rows) {
            _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + i * ldc + GEMM_LANES), _MM_HINT_T0);
        }
    }
    for (int64_t p = 0; p < kc; p++) {
        FN_T(gemm_vec) b0 = FN_T(GEMM_VLOAD)(b), b1 = FN_T(GEMM_VLOAD)(b + GEMM_LANES);
        GEMM_IN_REGISTER(b0);
        GEMM_IN_REGISTER(b1);
        for (int i = 0; i < tile_rows; i++) {
            FN_T(gemm_vec) ai = FN_T(GEMM_VBROADCAST)(a + i * a_row);
            acc[i][0] = FN_T(GEMM_VFMADD)(ai, b0, acc[i][0]);
            acc[i][1] = FN_T(GEMM_VFMADD)(ai, b1, acc[i][1]);
        }
        a += a_step;
        b += b_stride;
    }
    /* Read only now: kept live through the loop they would cost two of the registers (with
     * AVX2's 16, a spill). */
    real alpha = alpha_beta[0], beta = alpha_beta[1];
    const bool relu = alpha_beta[2] != 0;
    FN_T(gemm_vec) va = FN_T(GEMM_VSET1)(alpha), vb = FN_T(GEMM_VSET1)(beta);
    for (int i = 0; i < tile_rows; i++) {
        if (i >= rows) break;
        real *row = c + i * ldc;
        FN_T(gemm_vec) c0 = FN_T(GEMM_VMUL)(va, acc[i][0]), c1 = FN_T(GEMM_VMUL)(va, acc[i][1]);
        if (beta != 0) {
            c0 = FN_T(GEMM_VFMADD)(vb, FN_T(GEMM_VLOAD)(row), c0);
            c1 = FN_T(GEMM_VFMADD)(vb, FN_T(GEMM_VLOAD)(row + GEMM_LANES), c1);
        }
        if (relu) {
            c0 = FN_T(GEMM_VRELU)(c0);
            c1 = FN_T(GEMM_VRELU)(c1);
        }
        FN_T(GEMM_VSTORE)(row, c0);
        FN_T(GEMM_VSTORE)(row + GEMM_LANES, c1);
    }
}

/* A packed sliver's tile, of the height whose rows pack_a zeroes (gemm_tile_height), each
 * height a constant for the compiler. */
GEMM_INLINE void FN_T(gemm_micro)(int rows, int64_t kc, const real *restrict a,
                                  const real *restrict b, int64_t b_stride, real *restrict c,
                                  int64_t ldc, const real *alpha_beta) {
#define GEMM_TILE_OF(height)                                                                      \
    FN_T(gemm_tile)(height, rows, kc, a, 1, GEMM_MR, b, b_stride, c, ldc, alpha_beta)
    switch (gemm_tile_height(rows)) {
#if defined(__AVX512F__)
    case 12: GEMM_TILE_OF(12); break;
    case 10: GEMM_TILE_OF(10); break;
    case 8: GEMM_TILE_OF(8); break;
    default: GEMM_TILE_OF(4);
#else
    case 6: GEMM_TILE_OF(6); break;
    case 4: GEMM_TILE_OF(4); break;
    default: GEMM_TILE_OF(2);
#endif
    }
#undef GEMM_TILE_OF
}
#undef GEMM_LANES

#else /* GEMM_PLAIN_MICRO_KERNEL */
/* a (kc, MR) packed (a_row 1, a_step MR) or MR rows of A where they lie (a_row lda, a_step 1),
 * b (kc, NR) rows b_stride apart -> the first `rows` rows of c (MR, NR), row stride ldc:
 * c = alpha * a^T @ b + beta * c, then FN_RELU where relu is not 0, {alpha, beta, relu} in
 * alpha_beta, beta == 0 overwriting c without reading it. Plain loops over a fixed-size tile,
 * which compilers unroll and vectorise along NR; a short tile computes the zero rows of its
 * padding too, which is cheap at this tile size. */
GEMM_INLINE void FN_T(gemm_tile)(const int tile_rows, int rows, int64_t kc, const real *restrict a,
                                 const int64_t a_row, const int64_t a_step,
                                 const real *restrict b, int64_t b_stride, real *restrict c,
                                 int64_t ldc, const real *alpha_beta) {
    (void)tile_rows; /* every tile computes all MR rows */
    real acc[GEMM_MR][GEMM_NR];
    for (int i = 0; i < GEMM_MR; i++) {
        for (int j = 0; j < GEMM_NR; j++) acc[i][j] = 0;
    }
    for (int64_t p = 0; p < kc; p++) {
        for (int i = 0; i < GEMM_MR; i++) {
            real ai = a[i * a_row];
            for (int j = 0; j < GEMM_NR; j++) acc[i][j] += ai * b[j];
        }
        a += a_step;
        b += b_stride;
    }
    real alpha = alpha_beta[0], beta = alpha_beta[1];
    const bool relu = alpha_beta[2] != 0;
    for (int i = 0; i < rows; i++) {
        real *row = c + i * ldc;
        if (beta == 0) {
            for (int j = 0; j < GEMM_NR; j++) row[j] = alpha * acc[i][j];
        } else {
            for (int j = 0; j < GEMM_NR; j++) row[j] = alpha * acc[i][j] + beta * row[j];
        }
        if (relu)
            for (int j = 0; j < GEMM_NR; j++) row[j] = FN_RELU(row[j]);
    }
}

GEMM_INLINE void FN_T(gemm_micro)(int rows, int64_t kc, const real *restrict a,
                                  const real *restrict b, int64_t b_stride, real *restrict c,
                                  int64_t ldc, const real *alpha_beta) {
    FN_T(gemm_tile)(GEMM_MR, rows, kc, a, 1, GEMM_MR, b, b_stride, c, ldc, alpha_beta);
}
#endif

/* A full tile whose MR rows of A are read where they lie, lda apart (a row of A is a run along
 * k): no packing; otherwise as gemm_micro. */
GEMM_INLINE void FN_T(gemm_micro_rows)(int64_t kc, const real *restrict a, int64_t lda,
                                       const real *restrict b, int64_t b_stride, real *restrict c,
                                       int64_t ldc, const real *alpha_beta) {
    FN_T(gemm_tile)(GEMM_MR, GEMM_MR, kc, a, lda, 1, b, b_stride, c, ldc, alpha_beta);
}

/* c (m, n), row stride ldc: c = beta * c, beta == 0 writing zeros (even over NaN). */
static void FN_T(gemm_scale)(int64_t m, int64_t n, real beta, real *c, int64_t ldc) {
    for (int64_t i = 0; i < m; i++) {
        real *row = c + i * ldc;
        if (beta == 0) {
            for (int64_t j = 0; j < n; j++) row[j] = 0;
        } else if (beta != 1) {
            for (int64_t j = 0; j < n; j++) row[j] *= beta;
        }
    }
}

/* c (m, n) = beta * c, then col_bias (n) added to every row: beta 0 copies the bias in (over
 * NaN too). Where a product is then added to c with beta 1, each element is bias + product in
 * one rounding, as the Cᵀ-tile path adds the bias to its tiles. */
static void FN_T(gemm_seed_bias)(int64_t m, int64_t n, real beta, real *c, int64_t ldc,
                                 const real *col_bias) {
    if (beta == 0) {
        for (int64_t i = 0; i < m; i++) memcpy(c + i * ldc, col_bias, sizeof(real) * (size_t)n);
        return;
    }
    FN_T(gemm_scale)(m, n, beta, c, ldc);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) c[i * ldc + j] += col_bias[j];
}

/* What gemm_serial applies to C once its sums are complete: a bias per row, then a ReLU (a
 * convolution's output, (out_channels, positions)), tile by tile while each is still in L1, where
 * a pass of its own would read C back from L2 (5 us a thread in the CNN's batch-1 second
 * convolution). */
typedef struct {
    const real *row_bias; /* (m) or NULL */
    bool relu;
} FN_T(gemm_epilogue);

/* Rows [0, rows) and columns [0, cols) of C at c, rows first_row.. of the whole C: the
 * epilogue, as the separate pass computed it (v + bias, then ReLU), the same bits. */
static inline __attribute__((always_inline)) void FN_T(gemm_finish)(
    const FN_T(gemm_epilogue) *epilogue, int64_t first_row, int64_t rows, int64_t cols, real *c,
    int64_t ldc) {
    for (int64_t i = 0; i < rows; i++) {
        real *row = c + i * ldc;
        const real bias = epilogue->row_bias ? epilogue->row_bias[first_row + i] : 0;
        if (epilogue->relu) {
            for (int64_t j = 0; j < cols; j++) {
                real v = row[j] + bias;
                row[j] = FN_RELU(v);
            }
        } else {
            for (int64_t j = 0; j < cols; j++) row[j] += bias;
        }
    }
}

/* c (m, n) = ReLU(c), row stride ldc: a linear layer's fused ReLU, on a thread's block of C
 * right after its product, where it is still in cache. */
static void FN_T(gemm_relu)(int64_t m, int64_t n, real *c, int64_t ldc) {
    const FN_T(gemm_epilogue) relu_only = {NULL, true};
    FN_T(gemm_finish)(&relu_only, 0, m, n, c, ldc);
}

/* Rows [i, rows) of fn_gemm_pack_rows below, `height` at a time while whole blocks remain, each
 * block `width_in` columns at a time by `transpose` (a gemm_transpose*: inlined, as its
 * arguments are constants at every call), the last columns element by element. Returns the first
 * row left. */
GEMM_INLINE int64_t FN_T(gemm_pack_row_blocks)(
    const real *src, int64_t ld, int64_t i, int64_t rows, int64_t kc, real *restrict dst,
    int64_t width, const int height, const int width_in,
    void (*transpose)(const real *, int64_t, real *, int64_t)) {
    for (; i + height <= rows; i += height) {
        const real *block = src + i * ld;
        int64_t p = 0;
        for (; p + width_in <= kc; p += width_in)
            transpose(block + p, ld, dst + p * width + i, width);
        for (; p < kc; p++)
            for (int r = 0; r < height; r++) dst[p * width + i + r] = block[r * ld + p];
    }
    return i;
}

/* dst[p * width + i] = src[i * ld + p] for i < rows, p < kc: `rows` rows of src written down the
 * columns of a sliver `width` wide, the transposition at the heart of packing A (untransposed)
 * and B (transposed). Blocks of rows are transposed in registers, the largest first (16 x 16,
 * then TB x TB, then 4 x 8, as the build has them), the rest element by element. */
void FN_T(fn_gemm_pack_rows)(const real *src, int64_t ld, int64_t rows, int64_t kc,
                             real *restrict dst, int64_t width) {
    int64_t i = 0;
#if FN_T(GEMM_TB16) > 0
    i = FN_T(gemm_pack_row_blocks)(src, ld, i, rows, kc, dst, width, 16, 16,
                                   FN_T(gemm_transpose16));
#endif
#if FN_T(GEMM_TB) > 0
    i = FN_T(gemm_pack_row_blocks)(src, ld, i, rows, kc, dst, width, FN_T(GEMM_TB),
                                   FN_T(GEMM_TB), FN_T(gemm_transpose));
#endif
#if FN_T(GEMM_TB4) > 0
    i = FN_T(gemm_pack_row_blocks)(src, ld, i, rows, kc, dst, width, 4, 8,
                                   FN_T(gemm_transpose4));
#endif
    for (; i < rows; i++) {
        const real *row = src + i * ld;
        for (int64_t p = 0; p < kc; p++) dst[p * width + i] = row[p];
    }
}

/* Packs the (kc, nc) block of op(B) whose first element is at b into NR-column slivers:
 * dst (ceil(nc / NR), kc, NR), columns past nc zero so that edge tiles need no special case in
 * the micro-kernel. With trans_b, op(B)[p][j] is b[j * ldb + p]. */
static void FN_T(gemm_pack_b)(bool trans_b, const real *b, int64_t ldb, int64_t kc, int64_t nc,
                              real *restrict dst) {
    for (int64_t j0 = 0; j0 < nc; j0 += GEMM_NR) {
        int64_t cols = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
        if (!trans_b && cols == GEMM_NR) {
            /* A constant-size memcpy becomes a few vector moves, where the equivalent loop would
             * become a call to memmove. */
            for (int64_t p = 0; p < kc; p++) {
                memcpy(dst + p * GEMM_NR, b + p * ldb + j0, sizeof(real) * GEMM_NR);
            }
        } else if (!trans_b) {
            for (int64_t p = 0; p < kc; p++) {
                const real *src = b + p * ldb + j0;
                real *out = dst + p * GEMM_NR;
                for (int64_t j = 0; j < cols; j++) out[j] = src[j];
                for (int64_t j = cols; j < GEMM_NR; j++) out[j] = 0;
            }
        } else {
            /* Column j of op(B) is row j of b. */
            FN_T(fn_gemm_pack_rows)(b + j0 * ldb, ldb, cols, kc, dst, GEMM_NR);
            for (int64_t j = cols; j < GEMM_NR; j++) {
                for (int64_t p = 0; p < kc; p++) dst[p * GEMM_NR + j] = 0;
            }
        }
        dst += kc * GEMM_NR;
    }
}

/* dst[p * MR + i] = src[p * ld + i] for p < kc, i < width: a transposed A's runs, each a copy of
 * constant size (a few vector moves; the element loop had cost as much as a 10 x 64 x 128
 * product's arithmetic). */
GEMM_INLINE void FN_T(gemm_copy_runs)(const int width, const real *src, int64_t ld, int64_t kc,
                                      real *restrict dst) {
    for (int64_t p = 0; p < kc; p++) memcpy(dst + p * GEMM_MR, src + p * ld, sizeof(real) * width);
}

/* Packs the (rows, kc) block of op(A) whose first element is at a (rows <= MR) into one sliver:
 * dst (kc, MR), the rows past `rows` that the micro-kernel reads (gemm_tile_height) zero. With
 * trans_a, op(A)[i][p] is a[p * lda + i]. */
static void FN_T(gemm_pack_a)(bool trans_a, const real *a, int64_t lda, int64_t rows, int64_t kc,
                              real *restrict dst) {
    if (!trans_a) {
        FN_T(fn_gemm_pack_rows)(a, lda, rows, kc, dst, GEMM_MR);
    } else if (rows == GEMM_MR) {
        FN_T(gemm_copy_runs)(GEMM_MR, a, lda, kc, dst);
    } else if (rows == 10) { /* a layer with 10 outputs */
        FN_T(gemm_copy_runs)(10, a, lda, kc, dst);
    } else if (rows == 8) {
        FN_T(gemm_copy_runs)(8, a, lda, kc, dst);
    } else {
        for (int64_t p = 0; p < kc; p++) {
            const real *src = a + p * lda;
            for (int64_t i = 0; i < rows; i++) dst[p * GEMM_MR + i] = src[i];
        }
    }
    for (int64_t i = rows; i < gemm_tile_height((int)rows); i++) {
        for (int64_t p = 0; p < kc; p++) dst[p * GEMM_MR + i] = 0;
    }
}

/* The thread's scratch buffer, kept from call to call: a panel of kc x panel_columns elements
 * (64-byte aligned, so that no vector load of a sliver straddles two cache lines) and after it,
 * in *sliver, kc x MR elements for a sliver that is only read element by element. NULL when it
 * cannot be allocated. */
static real *FN_T(gemm_scratch)(int64_t kc, int64_t panel_columns, real **sliver) {
    size_t panel_elements = (size_t)(kc * panel_columns);
    real *panel = fn_thread_buffer(FN_BUFFER_PANELS,
                                   (panel_elements + (size_t)(kc * GEMM_MR)) * sizeof(real));
    *sliver = panel ? panel + panel_elements : NULL;
    return panel;
}

/* The fallback when the packing buffers cannot be allocated: no extra memory, slow but correct.
 * a, b, c as in gemm_serial below. */
static void FN_T(gemm_unpacked)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                                real alpha, const real *a, int64_t lda, const real *b,
                                int64_t ldb, real beta, real *c, int64_t ldc) {
    FN_T(gemm_scale)(m, n, beta, c, ldc);
    for (int64_t i = 0; i < m; i++) {
        real *row = c + i * ldc;
        for (int64_t p = 0; p < k; p++) {
            real aip = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);
            if (trans_b) {
                for (int64_t j = 0; j < n; j++) row[j] += aip * b[j * ldb + p];
            } else {
                const real *b_row = b + p * ldb;
                for (int64_t j = 0; j < n; j++) row[j] += aip * b_row[j];
            }
        }
    }
}

/* m rounded up to whole NR-wide slivers: the columns of gemm_swapped's A^T panel. */
static int64_t FN_T(gemm_sliver_columns)(int64_t m) {
    return (m + GEMM_NR - 1) / GEMM_NR * GEMM_NR;
}

/* The longest block of k for gemm_swapped: A^T's whole panel in at most 512 KB of L2, and never
 * shorter than the packed kernel's. Each block of k costs every tile of C a transposition into
 * C (and after the first, a pass adding it to C), so the longer the better while the panel stays
 * in L2 (128 x 1024 x 1024: 0.80x of the packed kernel with KC = 256, 1.2x with all of k in one
 * block; 64 x 128 x 9216, whose panel would be 2.4 MB: 0.73x with one block). */
static int64_t FN_T(gemm_swapped_kc)(int64_t m) {
    int64_t m_padded = FN_T(gemm_sliver_columns)(m);
    int64_t kc = (int64_t)(512 * 1024 / sizeof(real)) / m_padded;
    return kc > GEMM_KC ? kc : GEMM_KC;
}

/* Whether gemm_swapped pays for A (m, k) @ B^T, B stored (n, k), decided on the whole product's
 * sizes so that every thread's part of it takes the same path. Per band of MR rows of B the
 * packed kernel transposes MR * k elements of B, this path one tile of C per NR rows of A.
 * Measured against the packed kernel (AVX-512, 1 and 2 threads): the linear layers' forward
 * 128 x 1024 x 784 / 1024 and 64 x 128 x 9216 1.15-1.28x, 32 x 128 x 64 / 128 1.05x / 1.16x,
 * the convolutions' weight gradients 32 x 288 x 256 and 64 x 288 x 576 1.18-1.28x. It needs
 *   - B at least twice as many rows as A, and A's rows filling the NR-wide slivers to within an
 *     eighth (A is the vector operand: 40 rows in two 32-row slivers ran 0.8x);
 *   - with a single sliver of A, k at least 2 m and a B of at most half of L2 (512 KB on AMD
 *     Zen 4): each element of B is then used once, and MR streams of it from beyond L2 ran 0.9x
 *     (32 x 576 x 512);
 *   - with more, at most 4 slivers (256 x 1024 x 1024: 0.86-0.96x, its A^T panel cut into
 *     blocks of k) and k at least 4 m and 256 (64 x 128 x 128 in two slivers: 1.0x, where
 *     32 x 128 x 128 in one is 1.16x). */
static bool FN_T(gemm_swap_pays)(int64_t m, int64_t n, int64_t k) {
    int64_t m_padded = FN_T(gemm_sliver_columns)(m);
    if (n < 2 * m || (m_padded - m) * 8 > m_padded) return false;
    if (m_padded == GEMM_NR)
        return k >= 2 * m && (double)n * (double)k * sizeof(real) <= (double)fn_l2_bytes() / 2;
    return m_padded <= 4 * GEMM_NR && k >= 4 * m && k >= 256;
}

/* A (m, k), B stored (n, k), C (m, n): C = alpha * A @ B^T + beta * C on the calling thread,
 * for a B of many more rows than A (a linear layer's forward: A the batch, B the weights). Both
 * operands run along k, so the packed kernel would transpose both, the larger one as well; here
 * the roles swap, C^T = B @ A^T: whole MR-row tiles of B are read where they lie (their elements
 * are the micro-kernel's broadcasts, never a vector), only A is transposed into NR-column
 * slivers, and each tile of C^T is transposed into C from a scratch tile. Each element of C is
 * one dot product in order along k, as in gemm_serial, but in longer blocks of k
 * (gemm_swapped_kc), so its roundings differ from gemm_serial's; gemm_swap_pays decides on the
 * whole product's sizes, so that every thread count gives the same bits. */
static void FN_T(gemm_swapped)(int64_t m, int64_t n, int64_t k, real alpha, const real *a,
                               int64_t lda, const real *b, int64_t ldb, real beta, real *c,
                               int64_t ldc, const real *col_bias, bool relu) {
    int64_t m_padded = FN_T(gemm_sliver_columns)(m);
    int64_t kc_max = gemm_block_size(k, FN_T(gemm_swapped_kc)(m), 1);
    real *b_sliver; /* the last rows of B, fewer than MR */
    real *a_panel = FN_T(gemm_scratch)(kc_max, m_padded, &b_sliver);
    if (a_panel == NULL) { /* C seeded with the bias (beta is 0 with one), as gemm_block does */
        if (col_bias) FN_T(gemm_seed_bias)(m, n, beta, c, ldc, col_bias);
        FN_T(gemm_unpacked)(false, true, m, n, k, alpha, a, lda, b, ldb, col_bias ? 1 : beta, c,
                            ldc);
        if (relu) FN_T(gemm_relu)(m, n, c, ldc);
        return;
    }
    _Alignas(64) real tile[GEMM_MR * GEMM_NR];   /* tile[r][q]: C[ir + q][jr + r] */
    _Alignas(64) real tile_c[GEMM_NR * GEMM_MR]; /* the same, transposed: tile_c[q][r] */
    real scale[3] = {alpha, 0, 0}; /* beta (and the ReLU) applied on the way into C */
    GEMM_OPAQUE(scale);
    const bool rows_share_l1_set = gemm_rows_share_l1_set(ldb * (int64_t)sizeof(real));

    for (int64_t pc = 0; pc < k; pc += kc_max) {
        int64_t kc = k - pc < kc_max ? k - pc : kc_max;
        real beta_block = pc == 0 ? beta : (real)1;
        bool last_block = pc + kc >= k;
        FN_T(gemm_pack_b)(true, a + pc, lda, kc, m, a_panel);
        for (int64_t jr = 0; jr < n; jr += GEMM_MR) {
            int64_t rows = n - jr < GEMM_MR ? n - jr : GEMM_MR;
            const real *b_rows = b + jr * ldb + pc;
            bool in_place = rows == GEMM_MR && !rows_share_l1_set;
            if (!in_place) FN_T(gemm_pack_a)(false, b_rows, ldb, rows, kc, b_sliver);
            for (int64_t ir = 0; ir < m; ir += GEMM_NR) {
                int64_t cols = m - ir < GEMM_NR ? m - ir : GEMM_NR;
                real *c_block = c + ir * ldc + jr;
                if (in_place) {
                    FN_T(gemm_micro_rows)(kc, b_rows, ldb, a_panel + ir * kc, GEMM_NR, tile,
                                          GEMM_NR, scale);
                } else {
                    FN_T(gemm_micro)((int)rows, kc, b_sliver, a_panel + ir * kc, GEMM_NR, tile,
                                     GEMM_NR, scale);
                }
                if (col_bias && pc == 0) /* row r of the tile is column jr + r of C */
                    for (int64_t r = 0; r < rows; r++) {
                        const real bias = col_bias[jr + r];
                        for (int q = 0; q < GEMM_NR; q++) tile[r * GEMM_NR + q] += bias;
                    }
                if (beta_block == 0) {
                    if (relu && last_block) /* on the tile while in L1: no pass over C */
                        for (int64_t e = 0; e < rows * GEMM_NR; e++) tile[e] = FN_RELU(tile[e]);
                    FN_T(fn_gemm_pack_rows)(tile, GEMM_NR, rows, cols, c_block, ldc);
                    continue;
                }
                /* beta * C + alpha * (A @ B^T) in one rounding, as the micro-kernels' FMA does
                 * it; C is read in rows, where gathering it into the tile's columns first was
                 * element by element (128 x 512 x 1024: 5% of the product). */
                FN_T(fn_gemm_pack_rows)(tile, GEMM_NR, rows, cols, tile_c, GEMM_MR);
                for (int64_t q = 0; q < cols; q++) {
                    real *row = c_block + q * ldc;
                    const real *sums = tile_c + q * GEMM_MR;
                    for (int64_t r = 0; r < rows; r++) {
                        real v = GEMM_FMA(beta_block, row[r], sums[r]);
                        row[r] = relu && last_block ? FN_RELU(v) : v;
                    }
                }
            }
        }
    }
}

/* The rows of the next tile when `left` rows of C are left: MR, except that the last MR rows
 * and a shortest tile's (16 with AVX-512: 12 + 4) are taken as two tiles of half as many
 * (8 + 8), each of which reads B once for twice the multiply-adds of the short tile's
 * (16x1024x27, a convolution's forward with 16 output channels: 1.3-1.45x on AMD Zen 4). */
static inline int64_t FN_T(gemm_next_tile_rows)(int64_t left) {
    const int64_t shortest = gemm_tile_height(1), pair = (GEMM_MR + shortest) / 2;
    if (left == GEMM_MR + shortest && shortest < GEMM_MR && gemm_tile_height((int)pair) == pair)
        return pair;
    return left < GEMM_MR ? left : GEMM_MR;
}

/* Whether a block of k of an untransposed B, rows ldb apart, is small enough to stay in L2 as
 * it lies (a quarter of it: 256 KB of AMD Zen 4's 1 MB), so that the packed kernel reads it in
 * place. */
static bool FN_T(gemm_b_block_small)(int64_t k, int64_t ldb) {
    return (double)gemm_block_size(k, GEMM_KC, 1) * (double)ldb * sizeof(real) <=
           (double)fn_l2_bytes() / 4;
}

/* op(A) (m, k), op(B) (k, n), C (m, n): C = alpha * op(A) @ op(B) + beta * C on the calling
 * thread, by the packed kernel; then the epilogue, if any. */
static void FN_T(gemm_serial)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                              real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,
                              real beta, real *c, int64_t ldc,
                              const FN_T(gemm_epilogue) *epilogue) {
    if (m == 0 || n == 0) return;
    if (k == 0 || alpha == 0) { /* A and B are not read, as in BLAS */
        FN_T(gemm_scale)(m, n, beta, c, ldc);
        if (epilogue) FN_T(gemm_finish)(epilogue, 0, m, n, c, ldc);
        return;
    }
    int64_t kc_max = gemm_block_size(k, GEMM_KC, 1);
    int64_t nc_max = gemm_block_size(n, GEMM_NC, GEMM_NR);
    /* Packing B pays when its panel is read by many rows of tiles, or when its rows lie far
     * apart (a new page at every step of k). A B that serves at most two rows of tiles, or whose
     * block of KC rows is small enough to stay in L2 as it is, is read where it lies: its whole
     * slivers straight from B, only the right edge's sliver packed (padded with zeros). So is a
     * B whose block (KC rows by this call's columns, up to NC) fills at most half of L2 and
     * serves at most 256 rows of A, even with its rows a page or more apart: on two threads of
     * AMD Zen 4 (1 MB of L2), the workloads' `64x9216x128` NN (the CNN's input gradient) 1.09x,
     * `128x1024x1024` NN 1.04x, `128x9216x64` TN 1.01-1.07x (each thread's block of 4,608 or 512
     * columns); with 512 or 1024 rows, 0.98-1.01x, and a 1 MB block (`128x2048x2048`) 0.94x. The
     * same 512 KB blocks on AMD Zen 3 (512 KB of L2) ran `64x9216x128` NN at 29-36 GFLOP/s on one
     * thread, packed 69-74, and `128x1024x1024` NN on two threads at 75-98, packed 127-157. Same
     * products, same order of sums: the bits do not change. */
    bool b_in_place = !trans_b && (m <= 2 * GEMM_MR || FN_T(gemm_b_block_small)(k, ldb) ||
                                   (m <= 256 && (double)kc_max * (double)nc_max * sizeof(real) <=
                                                    (double)fn_l2_bytes() / 2));
    /* An untransposed A whose slivers each serve at most 4 tiles is read where it lies, its MR
     * rows the broadcasts' streams (gemm_micro_rows), the same sums in the same order: packing
     * a sliver costs there a good part of its few tiles' products. Measured on one thread with
     * the bias and ReLU: 64x96x288 (a piece of the CNN's second convolution at batch 1) 1.06x,
     * 64x128x576 1.07x, 512x64x4608 1.13x, 64x32x9216 1.25x, 16x64x144 1.7x; with more tiles
     * a sliver it gained nothing (64x288x288, 1024x1024x1024) or lost up to 3% (24x1024x256,
     * 12x2048x64). Rows past the last whole sliver are still packed, and so are rows that
     * would share a set of L1 (gemm_rows_share_l1_set). */
    bool a_in_place = !trans_a && n <= 4 * GEMM_NR &&
                      !gemm_rows_share_l1_set(lda * (int64_t)sizeof(real));

    real *a_sliver;
    real *b_panel = FN_T(gemm_scratch)(kc_max, nc_max, &a_sliver);
    if (b_panel == NULL) {
        FN_T(gemm_unpacked)(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        if (epilogue) FN_T(gemm_finish)(epilogue, 0, m, n, c, ldc);
        return;
    }

    /* A tile cut by the right edge of C is computed whole into this buffer, then its valid
     * columns are copied to C. */
    _Alignas(64) real edge_tile[GEMM_MR * GEMM_NR];

    for (int64_t jc = 0; jc < n; jc += nc_max) {
        int64_t nc = n - jc < nc_max ? n - jc : nc_max;
        for (int64_t pc = 0; pc < k; pc += kc_max) {
            int64_t kc = k - pc < kc_max ? k - pc : kc_max;
            /* The first block of k applies beta; the later ones add to what it left. */
            real beta_block = pc == 0 ? beta : (real)1;
            const FN_T(gemm_epilogue) *finish = pc + kc == k ? epilogue : NULL;
            /* A ReLU alone is applied by the micro-kernel to the sums in its registers, where
             * gemm_finish read each tile back (7% of mlp_small's step, the tiles' stores
             * not yet forwarded to the loads); a bias per row comes first, in gemm_finish. */
            const bool relu_in_tile = finish && finish->relu && !finish->row_bias;
            const FN_T(gemm_epilogue) *finish_tile = relu_in_tile ? NULL : finish;
            const real scale[3] = {alpha, beta_block, relu_in_tile},
                       scale_edge[3] = {alpha, 0, 0};
            const real *b_block = trans_b ? b + jc * ldb + pc : b + pc * ldb + jc;
            int64_t full_cols = nc / GEMM_NR * GEMM_NR;
            if (!b_in_place) {
                FN_T(gemm_pack_b)(trans_b, b_block, ldb, kc, nc, b_panel);
            } else if (full_cols < nc) {
                FN_T(gemm_pack_b)(false, b_block + full_cols, ldb, kc, nc - full_cols,
                                  b_panel + full_cols * kc);
            }
            for (int64_t ir = 0, rows; ir < m; ir += rows) {
                rows = FN_T(gemm_next_tile_rows)(m - ir);
                const real *a_rows = trans_a ? a + pc * lda + ir : a + ir * lda + pc;
                const bool direct = a_in_place && rows == GEMM_MR;
                if (!direct) FN_T(gemm_pack_a)(trans_a, a_rows, lda, rows, kc, a_sliver);
                real *c_rows = c + ir * ldc + jc;
                for (int64_t jr = 0; jr < nc; jr += GEMM_NR) {
                    int64_t cols = nc - jr < GEMM_NR ? nc - jr : GEMM_NR;
                    bool packed = !b_in_place || cols < GEMM_NR;
                    const real *b_sliver = packed ? b_panel + jr * kc : b_block + jr;
                    int64_t b_stride = packed ? GEMM_NR : ldb;
                    if (cols == GEMM_NR) {
                        if (direct)
                            FN_T(gemm_micro_rows)(kc, a_rows, lda, b_sliver, b_stride,
                                                  c_rows + jr, ldc, scale);
                        else
                            FN_T(gemm_micro)((int)rows, kc, a_sliver, b_sliver, b_stride,
                                             c_rows + jr, ldc, scale);
                        if (finish_tile)
                            FN_T(gemm_finish)(finish_tile, ir, rows, GEMM_NR, c_rows + jr, ldc);
                        continue;
                    }
                    if (direct)
                        FN_T(gemm_micro_rows)(kc, a_rows, lda, b_sliver, b_stride, edge_tile,
                                              GEMM_NR, scale_edge);
                    else
                        FN_T(gemm_micro)((int)rows, kc, a_sliver, b_sliver, b_stride, edge_tile,
                                         GEMM_NR, scale_edge);
                    for (int64_t i = 0; i < rows; i++) {
                        real *row = c_rows + i * ldc + jr;
                        const real *tile_row = edge_tile + i * GEMM_NR;
                        if (beta_block == 0) {
                            for (int64_t j = 0; j < cols; j++) row[j] = tile_row[j];
                        } else {
                            for (int64_t j = 0; j < cols; j++) {
                                row[j] = tile_row[j] + beta_block * row[j];
                            }
                        }
                    }
                    if (finish) FN_T(gemm_finish)(finish, ir, rows, cols, c_rows + jr, ldc);
                }
            }
        }
    }
}

/* A (m, k), B stored (n, k), C (m, n): C = alpha * A @ B^T + beta * C as m * n dot products
 * along k, where both operands are contiguous, for the products where packing does not pay:
 *   - at most NR / 2 columns (a layer with 10 outputs, a convolution's weight gradient with 9 or
 *     16 inputs per output channel): a packed panel would be mostly zero padding, and packing A
 *     would cost more than the product;
 *   - a single row (batch-1 inference): the product streams B once, and packing it would double
 *     the memory traffic;
 *   - a few rows and a long k (fn_gemm_dot_pays: a convolution's weight gradient with 16 output
 *     channels sums over 1024 positions): packing would transpose all of B for one or two rows of
 *     tiles.
 * A block of `rows` rows by `cols` columns keeps its sums in rows * cols vector registers (GCC /
 * Clang vector types, as wide as the micro-kernel's vectors): per vector of k it loads
 * rows + cols vectors for rows * cols multiply-adds. The lanes are added in a fixed order at
 * the end (pairwise, on register halves), and the last k % lanes steps go to the first lanes, so
 * the bits depend on the sizes only. */
#define DOT_LANES (GEMM_NR / 2)
#define DOT_MAX 8
typedef real FN_T(dot_vector) __attribute__((vector_size(DOT_LANES * sizeof(real))));
/* A vector loaded from any address, as the intrinsics' unaligned loads are written: through
 * memcpy, GCC 12 tuned for AMD Zen 3 (AVX2) copied each vector in two 16-byte halves to the stack
 * and loaded it back whole, a load that cannot be forwarded from the two stores, and the 4 x 3
 * blocks ran at 7 GFLOP/s (16x144x1024, one thread). */
typedef real FN_T(dot_unaligned)
    __attribute__((vector_size(DOT_LANES * sizeof(real)), aligned(1), may_alias));
GEMM_INLINE FN_T(dot_vector) FN_T(dot_load)(const real *p) {
    return *(const FN_T(dot_unaligned) *)p;
}

/* Keeps a loaded vector in a register: GCC otherwise folds its load into each of the
 * multiply-adds that use it, loading A's vector `cols` times (1.35x slower on a 16x144x1024
 * product on Intel) and B's `rows` times (a 4 x 4 block: 20 loads for 16 multiply-adds, half
 * speed on AMD Zen 4, which loads one 512-bit vector a cycle). One row uses each of B's vectors
 * once, so its loads may stay folded. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define DOT_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define DOT_IN_REGISTER(v) ((void)0)
#endif
typedef real FN_T(dot_v8) __attribute__((vector_size(8 * sizeof(real))));
typedef real FN_T(dot_v4) __attribute__((vector_size(4 * sizeof(real))));
typedef real FN_T(dot_v2) __attribute__((vector_size(2 * sizeof(real))));
/* half = lower half of v + upper half, for compilers without __builtin_shufflevector */
#define DOT_HALVES(half, type, v)                                                                 \
    type half;                                                                                    \
    {                                                                                             \
        type lo_, hi_;                                                                            \
        memcpy(&lo_, &(v), sizeof lo_);                                                           \
        memcpy(&hi_, (const char *)&(v) + sizeof lo_, sizeof hi_);                                \
        half = lo_ + hi_;                                                                         \
    }
/* The sum of a vector's lanes, pairwise: lane l and lane l + h for h = LANES / 2, ..., 1, each
 * round on the vector's halves (a register operation), where a running sum over the lanes waits
 * on every addition's latency: with k = 128, those sums had cost as much as the products. */
GEMM_INLINE real FN_T(dot_total)(FN_T(dot_vector) v) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    /* The halves by shuffles: through memcpy GCC stored the sums and loaded their halves back,
     * between one block's loads and the next's (gemm_dot_row). */
#if DOT_LANES == 16
    FN_T(dot_v8) v8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                      __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#elif DOT_LANES == 8
    FN_T(dot_v8) v8 = v;
#endif
#if DOT_LANES >= 8
    FN_T(dot_v4) v4 = __builtin_shufflevector(v8, v8, 0, 1, 2, 3) +
                      __builtin_shufflevector(v8, v8, 4, 5, 6, 7);
#elif DOT_LANES == 4
    FN_T(dot_v4) v4 = v;
#endif
#if DOT_LANES >= 4
    FN_T(dot_v2) v2 =
        __builtin_shufflevector(v4, v4, 0, 1) + __builtin_shufflevector(v4, v4, 2, 3);
#else
    FN_T(dot_v2) v2 = v;
#endif
    return v2[0] + v2[1];
#elif DOT_LANES == 16
    DOT_HALVES(v8, FN_T(dot_v8), v)
    DOT_HALVES(v4, FN_T(dot_v4), v8)
    DOT_HALVES(v2, FN_T(dot_v2), v4)
#elif DOT_LANES == 8
    DOT_HALVES(v4, FN_T(dot_v4), v)
    DOT_HALVES(v2, FN_T(dot_v2), v4)
#elif DOT_LANES == 4
    DOT_HALVES(v2, FN_T(dot_v2), v)
#else
    FN_T(dot_v2) v2 = v; /* DOT_LANES == 2 */
#endif
    return v2[0] + v2[1];
}
#undef DOT_HALVES

/* With 16 lanes, the sums of a block of 16 accumulators are taken together: each round adds the
 * two halves of every pair of vectors into one vector holding both (two shuffles and an add for
 * two vectors, where dot_total's extracts and adds cost the same for one), so that the last round
 * leaves the 16 totals in one vector, lane i the total of acc[i]: 45 operations where 16
 * dot_totals take about 130, which with k = 128 cost as much as the products. Lane l and
 * lane l + 8 first, then + 4, + 2, + 1, as dot_total adds them: the same bits. */
#if DOT_LANES == 16 && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define DOT_TOTALS_16 1
GEMM_INLINE FN_T(dot_vector) FN_T(dot_totals16)(const FN_T(dot_vector) *acc) {
    typedef FN_T(dot_vector) vector;
    vector b[8], c[4], d[2];
    for (int i = 0; i < 8; i++) /* lanes l and l + 8 */
        b[i] = __builtin_shufflevector(acc[2 * i], acc[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17,
                                       18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(acc[2 * i], acc[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15,
                                       24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++) /* + 4 */
        c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17,
                                       18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(b[2 * i], b[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                                       22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++) /* + 2 */
        d[i] = __builtin_shufflevector(c[2 * i], c[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17,
                                       20, 21, 24, 25, 28, 29) +
               __builtin_shufflevector(c[2 * i], c[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19,
                                       22, 23, 26, 27, 30, 31);
    return __builtin_shufflevector(d[0], d[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                   28, 30) + /* + 1 */
           __builtin_shufflevector(d[0], d[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                   29, 31);
}
#else
#define DOT_TOTALS_16 0
#endif

/* The first `count` (< DOT_LANES) elements at src, zeros after them; nothing past them is read.
 * A masked load where the build has one: copied through memory, the last steps of k had cost a
 * block as much as 50 steps of its loop (a store of a few elements, then a vector load of the
 * same bytes, which the core cannot forward; 32x9x676 took 7.5 us, 32x9x688 4.3). */
GEMM_INLINE FN_T(dot_vector) FN_T(dot_load_part)(const real *src, int count) {
    FN_T(dot_vector) v;
#ifdef GEMM_MASKED_LOAD_f32
    FN_T(gemm_masked_vector) loaded = FN_T(GEMM_MASKED_LOAD)(src, count);
    memcpy(&v, &loaded, sizeof v);
#else
    v = (FN_T(dot_vector)){0};
    memcpy(&v, src, sizeof(real) * (size_t)count);
#endif
    return v;
}

/* The k products of a dot_block: `segments` runs of `len` elements, run s of A's rows
 * s * a_step and of B's rows s * b_step past their starts (a run of k when segments == 1). */
typedef struct {
    int64_t segments, len, a_step, b_step;
} FN_T(dot_runs);

/* One block: rows a_rows[0 .. rows) by columns b_rows[0 .. cols) of C, whose first element is
 * at c; only the first `store_rows` rows and `store_cols` columns are stored (the others repeat
 * a row or column so that the block has a constant size). */
GEMM_INLINE void FN_T(dot_block)(const int rows, const int cols, int store_rows, int store_cols,
                                 const FN_T(dot_runs) *runs, real alpha,
                                 const real *const *a_rows, const real *const *b_rows, real beta,
                                 real *c, int64_t ldc) {
    typedef FN_T(dot_vector) vector;
    vector acc[DOT_MAX][DOT_MAX];
    for (int r = 0; r < rows; r++) {
        for (int q = 0; q < cols; q++) acc[r][q] = (vector){0};
    }
    const int64_t len = runs->len;
    for (int64_t seg = 0; seg < runs->segments; seg++) {
        const int64_t a_at = seg * runs->a_step, b_at = seg * runs->b_step;
        int64_t p = 0;
        for (; p + DOT_LANES <= len; p += DOT_LANES) {
            /* Unaligned vector loads, whatever the strides. B's vectors first, then A's one at
             * a time, each used at once: fewer registers live than with A's all loaded. */
            vector vb[DOT_MAX];
            for (int q = 0; q < cols; q++) {
                vb[q] = FN_T(dot_load)(b_rows[q] + b_at + p);
                if (rows > 1) DOT_IN_REGISTER(vb[q]);
            }
            for (int r = 0; r < rows; r++) {
                vector va;
                va = FN_T(dot_load)(a_rows[r] + a_at + p);
                DOT_IN_REGISTER(va);
                for (int q = 0; q < cols; q++) acc[r][q] += va * vb[q];
            }
        }
        if (p < len) {
            const int rest = (int)(len - p);
            vector va[DOT_MAX], vb[DOT_MAX];
            for (int r = 0; r < rows; r++) va[r] = FN_T(dot_load_part)(a_rows[r] + a_at + p, rest);
            for (int q = 0; q < cols; q++) vb[q] = FN_T(dot_load_part)(b_rows[q] + b_at + p, rest);
            for (int r = 0; r < rows; r++) {
                for (int q = 0; q < cols; q++) acc[r][q] += va[r] * vb[q];
            }
        }
    }
#if DOT_TOTALS_16
    if (rows * cols == 16 || rows * cols == 24) {
        /* 16 totals at a time; a block of 24 takes its last 8 with 8 zero vectors, whose
         * totals are not read. */
        FN_T(dot_vector) packed[32];
        for (int r = 0; r < rows; r++)
            for (int q = 0; q < cols; q++) packed[r * cols + q] = acc[r][q];
        for (int i = rows * cols; i % 16 != 0; i++) packed[i] = (FN_T(dot_vector)){0};
        real sums[32], scaled[32];
        for (int group = 0; group < rows * cols; group += 16) {
            FN_T(dot_vector) totals = FN_T(dot_totals16)(packed + group);
            memcpy(sums + group, &totals, sizeof totals);
            totals *= alpha; /* each lane as alpha * sum below: the same bits */
            memcpy(scaled + group, &totals, sizeof totals);
        }
        for (int r = 0; r < store_rows; r++) {
            real *row = c + r * ldc;
            if (beta == 0 && store_cols == cols) {
                /* A row's totals lie side by side: one short copy, where element by element
                 * the 16 extracts and stores had cost a quarter of a 4 x 4 block with k = 128. */
                memcpy(row, scaled + r * cols, (size_t)cols * sizeof(real));
                continue;
            }
            for (int q = 0; q < store_cols; q++) {
                const int lane = r * cols + q;
                row[q] = beta == 0 ? scaled[lane] : alpha * sums[lane] + beta * row[q];
            }
        }
        return;
    }
#endif
    for (int r = 0; r < store_rows; r++) {
        real *row = c + r * ldc;
        for (int q = 0; q < store_cols; q++) {
            real sum = FN_T(dot_total)(acc[r][q]);
            row[q] = beta == 0 ? alpha * sum : alpha * sum + beta * row[q];
        }
    }
}

/* C (1, n) = alpha * a @ B^T + beta * C, B's row j at b + j * ldb, k = len: a batch-1
 * inference's linear layer. B's rows `cols` at a time (8, or 4: dot_rows_alias), the blocks from
 * the last with `reversed`; each row's products along k in DOT_LANES lanes, then dot_total: the
 * sums of dot_block's one-row blocks, so the same bits. */
GEMM_INLINE void FN_T(dot_row_blocks)(const int cols, int64_t n, int64_t len, real alpha,
                                      const real *a, const real *b, int64_t ldb, real beta,
                                      real *c, bool reversed) {
    typedef FN_T(dot_vector) vector;
    const int64_t blocks = (n + cols - 1) / cols;
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t j0 = (reversed ? blocks - 1 - block : block) * cols;
        const real *rows[DOT_MAX];
        for (int q = 0; q < cols; q++) /* a short last block repeats its last row */
            rows[q] = b + (j0 + q < n ? j0 + q : n - 1) * ldb;
        vector acc[DOT_MAX];
        for (int q = 0; q < cols; q++) acc[q] = (vector){0};
        int64_t p = 0;
        for (; p + DOT_LANES <= len; p += DOT_LANES) {
            vector va;
            va = FN_T(dot_load)(a + p);
            DOT_IN_REGISTER(va);
            for (int q = 0; q < cols; q++) {
                vector vb;
                vb = FN_T(dot_load)(rows[q] + p);
                acc[q] += va * vb;
            }
        }
        if (p < len) {
            const int rest = (int)(len - p);
            const vector va = FN_T(dot_load_part)(a + p, rest);
            for (int q = 0; q < cols; q++) acc[q] += va * FN_T(dot_load_part)(rows[q] + p, rest);
        }
        /* All `cols` totals first: with the sums indexed up to the stored count, GCC keeps them
         * in memory. */
        real totals[DOT_MAX];
        for (int q = 0; q < cols; q++) totals[q] = FN_T(dot_total)(acc[q]);
        const int store_cols = (int)(n - j0 < cols ? n - j0 : cols);
        real *c_block = c + j0;
        for (int q = 0; q < store_cols; q++)
            c_block[q] = beta == 0 ? alpha * totals[q] : alpha * totals[q] + beta * c_block[q];
    }
}

/* The one-row products of a single run of k, in a function of their own. The weights stream
 * from L3 there, and whatever runs between one block's last loads and the next block's first
 * delays the next loads: as dot_block's blocks inlined into gemm_dot_runs, the rows' pointers
 * and the sums went through the stack between blocks. `1x1024x784` on two threads, from C:
 * 19.8 -> 18.7 us, where the same loop of multiply-adds compiled alone took 18.0. Several runs
 * of k and rows of B by index keep dot_block: this loop extended to them was 1.05x slower, and
 * instantiated for them apart (a constant choosing the runs, a second function) it still left
 * `mlp_mnist`'s batch-1 latency 0.975x (8 alternations), the loop the same but for registers. */
GEMM_NOINLINE void FN_T(gemm_dot_row)(bool four, int64_t n, int64_t len, real alpha, const real *a,
                                      const real *b, int64_t ldb, real beta, real *c,
                                      bool reversed) {
    if (four)
        FN_T(dot_row_blocks)(4, n, len, alpha, a, b, ldb, beta, c, reversed);
    else
        FN_T(dot_row_blocks)(8, n, len, alpha, a, b, ldb, beta, c, reversed);
}

/* Whether gemm_dot_row takes B's rows 4 at a time rather than 8: where they lie a multiple of
 * 4 KB apart and A's row of k elements fits 16 KB, the 8 lines of B at each step would fall into
 * one set of L1, which then holds neither them all nor A's line (AMD Zen 4, 8 ways: a batch-1
 * inference's 1024 x 1024 layer on two threads 32.0 -> 28.6 us from C, `mlp_mnist`'s batch-1
 * latency 1.015-1.04x; with 784 columns the 8-row block is 1.08x faster, and with A's row of
 * 9216 from L2, read twice as often, 4 rows were 0.99x). */
static inline bool FN_T(dot_rows_alias)(int64_t ldb, int64_t k) {
    return gemm_rows_share_l1_set(ldb * (int64_t)sizeof(real)) && k * (int64_t)sizeof(real) <= 16384;
}

/* C (m, n) = alpha * A @ B^T + beta * C, row i of A at a + i * lda, row j of B at
 * b + (b_rows ? b_rows[j] : j * ldb), each read as runs (dot_runs); with `reversed`, each block
 * row of C from its last block of columns to its first (fn_gemm_ordered). */
static void FN_T(gemm_dot_runs)(int64_t m, int64_t n, const FN_T(dot_runs) *runs, real alpha,
                                const real *a, int64_t lda, const real *b, int64_t ldb,
                                const int64_t *b_rows, real beta, real *c, int64_t ldc,
                                bool reversed) {
    /* 4 x 3 blocks (12 sums, 7 loads per vector of k), or with 16 lanes 4 x 4 (16 sums, 8 loads,
     * their totals taken together: dot_totals16), or where they compute fewer sums that are not
     * stored, 8 x 3 (24 sums, 11 loads) or, for a short k, 8 x 2 (16 sums, 10 loads): n = 9
     * (a convolution's weight gradient with one input channel) in 4 x 4 blocks computes 12
     * columns, in 8 x 3 exactly 9 (32x9x676 1.35x, 64x9x576 1.4x faster on AMD Zen 4); n = 10,
     * 8 x 2 exactly 10 (32x10x128 1.45x faster). Only while the block's 11 runs of k fit a 32 KB
     * L1 together: with k = 1024, 8 rows of A from L2 for each block of columns ran 16x27x1024
     * 0.85x, and 8 x 2 blocks 0.6-0.9x. One row (several runs of k, or rows of B by index: a
     * single run goes to gemm_dot_row): 1 x 8 (8 sums, 9 loads). The bits do not depend on the
     * block. */
    int block_rows = m == 1 ? 1 : 4;
    int block_cols = m == 1 ? 8 : DOT_TOTALS_16 ? 4 : 3;
    if (DOT_TOTALS_16 && m > 1) {
        const int64_t k = runs->segments * runs->len;
        int64_t computed = (m + 3) / 4 * 4 * ((n + 3) / 4 * 4); /* sums of 4 x 4 blocks */
        int64_t computed_8x2 = (m + 7) / 8 * 8 * ((n + 1) / 2 * 2);
        int64_t computed_8x3 = (m + 7) / 8 * 8 * ((n + 2) / 3 * 3);
        if (k <= 256 && computed_8x2 < computed)
            block_rows = 8, block_cols = 2, computed = computed_8x2;
        if (11 * k * (int64_t)sizeof(real) <= 32 * 1024 && computed_8x3 < computed)
            block_rows = 8, block_cols = 3;
    }
    for (int64_t i0 = 0; i0 < m; i0 += block_rows) {
        /* Short blocks repeat their last row or column: computed, then not stored. */
        const real *a_block[DOT_MAX], *b_block[DOT_MAX];
        for (int r = 0; r < block_rows; r++) {
            a_block[r] = a + (i0 + r < m ? i0 + r : m - 1) * lda;
        }
        int store_rows = (int)(m - i0 < block_rows ? m - i0 : block_rows);
        const int64_t column_blocks = (n + block_cols - 1) / block_cols;
        for (int64_t block = 0; block < column_blocks; block++) {
            const int64_t j0 = (reversed ? column_blocks - 1 - block : block) * block_cols;
            for (int q = 0; q < block_cols; q++) {
                int64_t j = j0 + q < n ? j0 + q : n - 1;
                b_block[q] = b + (b_rows ? b_rows[j] : j * ldb);
            }
            int store_cols = (int)(n - j0 < block_cols ? n - j0 : block_cols);
            real *c_block = c + i0 * ldc + j0;
            if (m == 1) {
                FN_T(dot_block)(1, 8, store_rows, store_cols, runs, alpha, a_block, b_block, beta,
                                c_block, ldc);
            } else if (DOT_TOTALS_16 && block_cols == 3) {
                FN_T(dot_block)(8, 3, store_rows, store_cols, runs, alpha, a_block, b_block, beta,
                                c_block, ldc);
            } else if (DOT_TOTALS_16 && block_rows == 8) {
                FN_T(dot_block)(8, 2, store_rows, store_cols, runs, alpha, a_block, b_block, beta,
                                c_block, ldc);
            } else if (DOT_TOTALS_16) {
                FN_T(dot_block)(4, 4, store_rows, store_cols, runs, alpha, a_block, b_block, beta,
                                c_block, ldc);
            } else {
                FN_T(dot_block)(4, 3, store_rows, store_cols, runs, alpha, a_block, b_block, beta,
                                c_block, ldc);
            }
        }
    }
}

static void FN_T(gemm_dot)(int64_t m, int64_t n, int64_t k, real alpha, const real *a,
                           int64_t lda, const real *b, int64_t ldb, real beta, real *c,
                           int64_t ldc, bool reversed) {
    /* One row goes to gemm_dot_row from here, not from gemm_dot_runs: with the call inside it,
     * gemm_dot_runs' 8 x 2 blocks ran 1.13-1.27x slower (64x10x128 NT 2.19 -> 2.47-2.69 us,
     * 128x10x64 3.00 -> 3.48-3.81 on one thread); the one-row products run as fast from here. */
    if (m == 1) {
        FN_T(gemm_dot_row)(FN_T(dot_rows_alias)(ldb, k), n, k, alpha, a, b, ldb, beta, c,
                           reversed);
        return;
    }
    const FN_T(dot_runs) runs = {1, k, 0, 0};
    FN_T(gemm_dot_runs)(m, n, &runs, alpha, a, lda, b, ldb, NULL, beta, c, ldc, reversed);
}

/* C (m, n) = alpha * sum over runs s of A_s @ B_s^T + beta * C on the calling thread, where row i
 * of A_s is the `len` elements at a + i * lda + s * a_step and row j of B_s those at
 * b + b_rows[j] + s * b_step: a convolution's weight gradient from the output gradient's rows and
 * the input's windows where they lie (conv2d.c), as the dot products of gemm_dot. */
void FN_T(fn_gemm_dot_runs)(int64_t m, int64_t n, int64_t segments, int64_t len, real alpha,
                            const real *a, int64_t lda, int64_t a_step, const real *b,
                            const int64_t *b_rows, int64_t b_step, real beta, real *c,
                            int64_t ldc) {
    if (m <= 0 || n <= 0) return;
    const FN_T(dot_runs) runs = {segments, len, a_step, b_step};
    FN_T(gemm_dot_runs)(m, n, &runs, alpha, a, lda, b, 0, b_rows, beta, c, ldc, false);
}
#undef DOT_LANES
#undef DOT_TOTALS_16
#undef DOT_MAX

/* One thread's share through the BLAS, (m, n_block) of C: row-major C = op(A) op(B) is
 * column-major C^T = op(B)^T op(A)^T, so the Fortran call swaps the operands and m with n. The
 * caller has checked that every size fits in int. */
static void FN_T(gemm_blas_call)(const fn_blas *table, bool trans_a, bool trans_b, int64_t m,
                                 int64_t n, int64_t k, real alpha, const real *a, int64_t lda,
                                 const real *b, int64_t ldb, real beta, real *c, int64_t ldc) {
    char op_b = trans_b ? 'T' : 'N', op_a = trans_a ? 'T' : 'N';
    /* BLAS rejects a leading dimension of 0 even where nothing is read. */
    int im = (int)m, in = (int)n, ik = (int)k;
    int ilda = lda > 0 ? (int)lda : 1, ildb = ldb > 0 ? (int)ldb : 1, ildc = ldc > 0 ? (int)ldc : 1;
    /* Our threads already split the work: the BLAS must not start threads of its own. */
    int previous_threads = table->set_threads_local ? table->set_threads_local(1) : 0;
    FN_T(gemm_blas_get)(table)(&op_b, &op_a, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c,
                               &ildc);
    if (table->set_threads_local) table->set_threads_local(previous_threads);
}

/* One product, as handed to each thread of gemm_split. */
typedef struct {
    const fn_blas *table; /* NULL: the built-in kernel */
    bool blas_only;       /* with a table: every part through it, whatever the sizes */
    bool trans_a, trans_b;
    int64_t m, n, k;
    real alpha, beta;
    const real *a, *b;
    real *c;
    int64_t lda, ldb, ldc;
    bool reversed;        /* the dot products take each thread's columns last to first */
    const real *col_bias; /* (n) added to every row of C (beta 0), or NULL */
    bool relu;            /* C = ReLU(C) once the product is complete */
} FN_T(gemm_job);

/* Whether gemm_part splits C by rows rather than columns, so that each thread writes one
 * contiguous block of whole rows of C:
 *   - C = A^T @ B, a linear layer's weight gradient (dY^T @ X, k the batch), with at least as
 *     many rows as columns: the thread's rows are the part of the gradient arena that the
 *     gradient norm and the optimizer's contiguous split then read on the same thread, where by
 *     columns each thread had written half of every row (`mlp_mnist_b128`'s step
 *     1.015-1.022x, its 1024 x 784 x 128 product alone 1.03x). Each thread packs all of B, which
 *     is cheap for one block of k: with 1024 steps of k, 1024^3 ran 0.94x;
 *   - C = A @ B with a B small enough to be read in place (gemm_b_block_small), a 10-output
 *     layer's input gradient (dY @ W, 128 x 1024 x 10), whose time is writing C: with the two
 *     threads writing the two halves of every row, the same pages, it ran at times 6.8x slower
 *     on a 2-core AMD Zen 4 host (125-129 us against 18.6 us by rows, in alternation), while
 *     two threads writing one C each, rows as far apart, ran as fast as one. At least 32
 *     rows, so that a thread's block is not a handful of rows;
 *   - C = A @ B^T with few enough columns for the dot products (gemm_dot_columns), a 10-output
 *     layer's forward (128 x 10 x 1024 in `mlp_mnist_b128`): by columns it is one block, so one
 *     thread; by rows each thread takes its rows' dot products (32 -> 17 us alone on two
 *     threads). At least 32 rows, as above.
 * Decided on the whole product's sizes. */
static bool FN_T(gemm_split_rows)(const FN_T(gemm_job) *job) {
    if (job->trans_b)
        return !job->trans_a && FN_T(gemm_dot_columns)(job->n, job->k) && job->m >= 32;
    if (job->trans_a) return job->m >= job->n && job->k <= GEMM_KC;
    return job->m >= 32 && FN_T(gemm_b_block_small)(job->k, job->ldb);
}

/* gemm_serial into a block of columns of C, computed apart in the thread's own buffer and copied
 * into C once complete. A block of columns shares every row's pages with the other threads'
 * blocks, and the packed kernel, with k in several blocks (KC), reads and writes its block of C
 * once per block of k. With two threads doing so on the same pages, `128x1024x1024` NN
 * (`mlp_mnist`'s input gradient) ran bimodal on a 2-core AMD Zen 4 host: 1.33 or 1.55-1.69 ms by
 * the process, where the same two halves of C in arrays of their own took 1.26-1.29 ms in every
 * process, and reversing one thread's order of rows, so that the two rarely wrote the same page
 * at the same time, changed nothing. Apart and copied: 1.27-1.33 ms (medians of 31 windows from
 * C). The same sums into another place: the same bits. Returns false, having done nothing, when
 * the buffer cannot be had. */
static bool FN_T(gemm_serial_apart)(const FN_T(gemm_job) *job, int64_t m, int64_t n,
                                    const real *a_block, const real *b_block, real beta,
                                    real *c_block, const FN_T(gemm_epilogue) *epilogue) {
    real *part = fn_thread_buffer(FN_BUFFER_C_BLOCK, (size_t)m * (size_t)n * sizeof(real));
    if (!part) return false;
    if (beta != 0) /* beta applies to C as it was */
        for (int64_t i = 0; i < m; i++)
            memcpy(part + i * n, c_block + i * job->ldc, (size_t)n * sizeof(real));
    FN_T(gemm_serial)(job->trans_a, job->trans_b, m, n, job->k, job->alpha, a_block, job->lda,
                      b_block, job->ldb, beta, part, n, epilogue);
    for (int64_t i = 0; i < m; i++)
        memcpy(c_block + i * job->ldc, part + i * n, (size_t)n * sizeof(real));
    return true;
}

/* Rows [i0, i1) by columns [j0, j1) of the job's C, through the BLAS or a built-in path. The
 * built-in paths are chosen on the whole product's sizes, so that every block of it takes the
 * same one. */
static void FN_T(gemm_block)(const FN_T(gemm_job) *job, int64_t i0, int64_t i1, int64_t j0,
                             int64_t j1) {
    int64_t m = i1 - i0, n = j1 - j0;
    const real *a_block = job->trans_a ? job->a + i0 : job->a + i0 * job->lda;
    const real *b_block = job->trans_b ? job->b + j0 * job->ldb : job->b + j0;
    real *c_block = job->c + i0 * job->ldc + j0;
    const real *col_bias = job->col_bias ? job->col_bias + j0 : NULL;
    bool a_b_transposed = job->trans_b && !job->trans_a; /* A @ B^T */
    /* A block of rows of A @ B^T (few columns, gemm_split_rows) keeps the whole product's
     * choice: OpenBLAS runs half of 128 x 10 x 1024 at a third of the dot products' speed
     * (fn_gemm_prefers_builtin decides on m * n). */
    int64_t choice_rows = job->trans_b && FN_T(gemm_split_rows)(job) ? job->m : m;
    bool blas = job->table && (job->blas_only ||
                               !fn_gemm_prefers_builtin(job->trans_b, choice_rows, n, job->k));
    bool dot = !blas && a_b_transposed &&
               (FN_T(gemm_dot_columns)(job->n, job->k) || job->m == 1 ||
                fn_gemm_dot_pays(job->m, job->k));
    if (!blas && !dot && a_b_transposed && FN_T(gemm_swap_pays)(job->m, job->n, job->k)) {
        /* The bias added to each tile of C^T before it goes into C */
        FN_T(gemm_swapped)(m, n, job->k, job->alpha, a_block, job->lda, b_block, job->ldb,
                           job->beta, c_block, job->ldc, col_bias, job->relu);
        return;
    }
    real beta = job->beta;
    if (col_bias) { /* C seeded with the bias, the product added to it: the same roundings */
        FN_T(gemm_seed_bias)(m, n, beta, c_block, job->ldc, col_bias);
        beta = 1;
    }
    if (blas) {
        FN_T(gemm_blas_call)(job->table, job->trans_a, job->trans_b, m, n, job->k, job->alpha,
                             a_block, job->lda, b_block, job->ldb, beta, c_block, job->ldc);
    } else if (dot) {
        FN_T(gemm_dot)(m, n, job->k, job->alpha, a_block, job->lda, b_block, job->ldb, beta,
                       c_block, job->ldc, job->reversed);
    } else {
        const FN_T(gemm_epilogue) relu_only = {NULL, true};
        const FN_T(gemm_epilogue) *epilogue = job->relu ? &relu_only : NULL;
        bool apart = n < job->n && job->k > GEMM_KC; /* a block of columns, C read k / KC times */
        if (!apart || !FN_T(gemm_serial_apart)(job, m, n, a_block, b_block, beta, c_block,
                                               epilogue))
            FN_T(gemm_serial)(job->trans_a, job->trans_b, m, n, job->k, job->alpha, a_block,
                              job->lda, b_block, job->ldb, beta, c_block, job->ldc, epilogue);
        return;
    }
    if (job->relu) FN_T(gemm_relu)(m, n, c_block, job->ldc);
}

/* Part `id` of `parts`: a contiguous block of columns of C, in whole NR-slivers so that only the
 * last block has a right edge; or with gemm_split_rows, of rows, in multiples of the shortest
 * tile's height (128 rows: 64 and 64, where whole MR-row tiles gave 72 and 56). */
static void FN_T(gemm_part)(int id, int parts, void *arg) {
    const FN_T(gemm_job) *job = arg;
    int64_t first, last;
    if (parts > 1 && FN_T(gemm_split_rows)(job)) {
        const int64_t unit = gemm_tile_height(1);
        fn_partition((job->m + unit - 1) / unit, parts, id, &first, &last);
        int64_t i0 = first * unit, i1 = last * unit < job->m ? last * unit : job->m;
        if (i1 > i0) FN_T(gemm_block)(job, i0, i1, 0, job->n);
        return;
    }
    fn_partition((job->n + GEMM_NR - 1) / GEMM_NR, parts, id, &first, &last);
    int64_t j0 = first * GEMM_NR, j1 = last * GEMM_NR < job->n ? last * GEMM_NR : job->n;
    if (j1 > j0) FN_T(gemm_block)(job, 0, job->m, j0, j1);
}

/* Runs the product on up to `threads` threads, each on its own block of columns of C (of rows
 * for gemm_split_rows), through the BLAS when `table` is given, else the built-in kernel.
 *
 * No block splits k, so every element of C is one dot product whichever thread computes it. With
 * the built-in kernel its bits do not depend on the block either; a BLAS may compute a column
 * differently in calls of different widths (other kernels at the edges, or for small sizes), so
 * in deterministic mode the blocks come from the sizes alone (at most FN_DETERMINISTIC_PARTS,
 * each one call), and the threads take whole blocks. */
static void FN_T(gemm_split)(const fn_blas *table, bool blas_only, bool trans_a, bool trans_b,
                             int64_t m, int64_t n, int64_t k, real alpha, const real *a,
                             int64_t lda, const real *b, int64_t ldb, real beta, real *c,
                             int64_t ldc, int threads, bool reversed, const real *col_bias,
                             bool relu) {
    FN_T(gemm_job) job = {table, blas_only, trans_a, trans_b, m, n, k, alpha, beta, a, b, c,
                          lda, ldb, ldc, reversed, col_bias, relu};
    /* The most blocks gemm_part can make: of whole NR-slivers of columns, or of rows */
    const int64_t row_unit = gemm_tile_height(1);
    int64_t most = FN_T(gemm_split_rows)(&job) ? (m + row_unit - 1) / row_unit
                                                : (n + GEMM_NR - 1) / GEMM_NR;
    if (fn_deterministic()) {
        /* Even without OpenMP, so that the bits are those of a threaded build. */
        int blocks = gemm_thread_count(m, n, k, most, FN_DETERMINISTIC_PARTS);
        fn_run_parts(blocks, threads, FN_T(gemm_part), &job);
        return;
    }
    int parts = gemm_thread_count(m, n, k, most, threads);
#ifndef _OPENMP
    /* Without threads the parts would run one after another, each packing all of A again. */
    parts = 1;
#endif
    fn_run_team(parts, FN_T(gemm_part), &job);
}

/* op(A) (m, k), op(B) (k, n), C (m, n), row strides lda/ldb/ldc:
 * C = alpha * op(A) @ op(B) + beta * C by the built-in kernel on up to `threads` threads. */
void FN_T(fn_gemm_builtin)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,
                           real beta, real *c, int64_t ldc, int threads) {
    if (m <= 0 || n <= 0) return;
    if (k == 0 || alpha == 0) {
        FN_T(gemm_scale)(m, n, beta, c, ldc);
        return;
    }
    FN_T(gemm_split)(NULL, false, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                     threads, false, NULL, false);
}

/* The same product through the installed BLAS table only, split over threads as fn_gemm splits
 * it but without fn_gemm_prefers_builtin; the caller has checked that there is a table for this
 * dtype and that every size fits in int. */
void FN_T(fn_gemm_blas)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, real alpha,
                        const real *a, int64_t lda, const real *b, int64_t ldb, real beta,
                        real *c, int64_t ldc, int threads) {
    if (m <= 0 || n <= 0) return;
    fn_blas table = gemm_blas_table;
    FN_T(gemm_split)(&table, true, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                     ldc, threads, false, NULL, false);
}

/* fn_gemm_ordered, or with `threads` 0 fn_gemm_unsplit. */
static void FN_T(gemm_dispatch)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                                real alpha, const real *a, int64_t lda, const real *b,
                                int64_t ldb, real beta, real *c, int64_t ldc, int threads,
                                bool reversed, const real *col_bias, bool relu) {
    if (m <= 0 || n <= 0) return;
    fn_blas table = gemm_blas_table; /* one consistent copy for the whole call */
    bool fits_int = m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX &&
                    ldb <= INT_MAX && ldc <= INT_MAX;
    /* The paths take a bias with beta 0 (a linear layer's forward): any other beta is applied
     * with the bias first, and the product added to that. */
    if (col_bias && (beta != 0 || k == 0 || alpha == 0)) {
        FN_T(gemm_seed_bias)(m, n, beta, c, ldc, col_bias);
        col_bias = NULL;
        beta = 1;
    }
    /* k == 0 and alpha == 0 only scale C: not worth a BLAS call, and a BLAS would insist on
     * leading dimensions of at least 1 for operands that have no elements. */
    if (k == 0 || alpha == 0) {
        FN_T(gemm_scale)(m, n, beta, c, ldc);
        if (relu) FN_T(gemm_relu)(m, n, c, ldc);
        return;
    }
    bool blas = FN_T(gemm_blas_get)(&table) != NULL && fits_int;
    if (threads == 0) {
        FN_T(gemm_job) job = {blas ? &table : NULL, false, trans_a, trans_b, m, n, k, alpha, beta,
                              a, b, c, lda, ldb, ldc, reversed, col_bias, relu};
        FN_T(gemm_part)(0, 1, &job);
        return;
    }
    FN_T(gemm_split)(blas ? &table : NULL, false, trans_a, trans_b, m, n, k, alpha, a, lda, b,
                     ldb, beta, c, ldc, threads, reversed, col_bias, relu);
}

/* op(A) (m, k), op(B) (k, n), C (m, n), row strides lda/ldb/ldc:
 * C = alpha * op(A) @ op(B) + beta * C through the installed BLAS when there is one for this
 * dtype and every size fits the Fortran ABI's int, else by the built-in kernel. */
void FN_T(fn_gemm)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, real alpha,
                   const real *a, int64_t lda, const real *b, int64_t ldb, real beta, real *c,
                   int64_t ldc, int threads) {
    FN_T(fn_gemm_ordered)(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                          threads, false, NULL, false);
}

/* fn_gemm for a product that streams B and is made again and again with the same B (a batch-1
 * linear layer's forward through its weights): with `reversed`, the dot products that take such
 * a product (a single row of A, or few columns) compute each thread's share of C's columns from
 * the last to the first, reading B's rows in that order; elsewhere the flag changes nothing. A
 * caller that alternates it reads first, on each core, the rows the previous call read last,
 * those still in that core's cache, where the same order each time would start from the rows
 * longest evicted (the CNN's 9216 x 128 weights, 4.7 MB against 2 MB of L2 a core: 58 -> 40 us
 * from C with 512 KB of other data touched in between). Each column is the same dot product in
 * either order: the same bits. */
void FN_T(fn_gemm_ordered)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,
                           real beta, real *c, int64_t ldc, int threads, bool reversed,
                           const real *col_bias, bool relu) {
    FN_T(gemm_dispatch)(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                        threads > 0 ? threads : 1, reversed, col_bias, relu);
}

/* The same product in one call on the calling thread, never divided into blocks, in either mode:
 * for a caller whose own division of the work (the convolution's images) is the same for every
 * thread count, so that fn_gemm's blocks of deterministic mode would only cost time. */
void FN_T(fn_gemm_unsplit)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           real alpha, const real *a, int64_t lda, const real *b, int64_t ldb,
                           real beta, real *c, int64_t ldc) {
    FN_T(gemm_dispatch)(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, 0, false,
                        NULL, false);
}

void FN_T(fn_bias_relu_rows)(real *c, int64_t rows, int64_t cols, int64_t ldc, const real *bias,
                             bool relu) {
    FN_T(gemm_epilogue) epilogue = {bias, relu};
    FN_T(gemm_finish)(&epilogue, 0, rows, cols, c, ldc);
}

void FN_T(fn_gemm_bias_relu)(int64_t m, int64_t n, int64_t k, const real *a, int64_t lda,
                             const real *b, int64_t ldb, const real *bias, bool relu, real *c,
                             int64_t ldc) {
    FN_T(gemm_epilogue) epilogue = {bias, relu};
    FN_T(gemm_serial)(false, false, m, n, k, 1, a, lda, b, ldb, 0, c, ldc,
                      bias || relu ? &epilogue : NULL);
}

#undef GEMM_MR
#undef GEMM_NR
#undef GEMM_KC
#undef GEMM_NC

#endif /* FN_TEMPLATE_PASS */
