/* sparse_gemm.c — C (m, n) = op(A) (m, k) @ op(B) (k, n) + beta * C skipping the multiply-adds
 * of an operand's exact zeros: a ReLU's output, or a gradient masked by one.
 *
 * About half of a ReLU layer's outputs are zero, and so are the gradients its backward passes
 * on: the products that read them (a linear layer's forward after a ReLU, its weight and input
 * gradients) do that share of their multiply-adds on zeros. The dense kernels cannot skip them: a
 * tile of A's rows has a zero column only when all of its rows are zero there. Here each row of
 * op(A) is taken alone, as a 64-bit mask of its nonzeros per 64 steps of k (a mask word), and for
 * each nonzero a(r, i) the row i of B is multiply-added into C's row r, i in increasing order
 * into two sums taken in turns (one chain of multiply-adds would wait on their latency), so that
 * every element of C is computed by one thread in one order: the bits do not depend on the
 * thread count.
 *
 * Each multiply-add loads its element of B (no row of B is shared by two rows of A in registers,
 * as the dense kernels share them), so it runs at 70-80% of the dense kernel's rate per
 * multiply-add: it pays below about 60% nonzeros (SPARSE_MAX_DENSITY), counted first. A product
 * that does not pay, or is too small to, is fn_gemm_ordered's. Where B may be the sparser
 * operand (sparse_b: a weight gradient, grad_y^T @ x, whose x is a ReLU's output), its zeros are
 * counted too, and if B has fewer, C^T = op(B)^T @ op(A)^T is computed the same way and written
 * transposed.
 *
 * Blocking: B is packed by blocks of SPARSE_NB columns and SPARSE_KC steps of k (a 256 KB panel
 * with AVX-512, 128 KB with AVX2, in L2), the last block zero-padded, so that B's rows are
 * contiguous (rows of B a multiple of 4 KB apart in memory share an L1 set and evict each other).
 * Within a panel, 32 rows of C go through it a mask word (16 KB of a float panel with AVX-512,
 * 8 KB with AVX2, in L1) at a time, each row's part held in
 * registers through the word and the 32 rows' parts in L1 from one word to the next. A transposed
 * A, or one whose rows are a multiple of 4 KB apart, is copied into rows first.
 *
 * The element B(i, j) multiplied by a zero of A is not read at all: a NaN or infinity there does
 * not reach C, where the dense product would have made a NaN of 0 * inf. A NaN in A is nonzero
 * and reaches C as it would.
 */
#ifndef FN_TEMPLATE_PASS
#include "internal.h"
#include "kernels.h"

#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* The largest fraction of nonzeros in op(A) at which skipping the zeros pays (measured on a Zen 4
 * core, 128 x 1024 x 1024: 50% nonzeros took 0.68 of the dense product's time, so the two meet
 * near 70%; 60% keeps a margin for the packing and masks). Without AVX-512 (AMD Zen 3, AVX2, one
 * and two threads, medians of 9 alternations) they meet near 40%: 30% nonzeros 0.80-0.90, 40%
 * 0.95-1.01, 50% 1.07-1.10; 35% keeps the margin. */
#if defined(__AVX512F__)
#define SPARSE_MAX_DENSITY 0.6
#else
#define SPARSE_MAX_DENSITY 0.35
#endif
/* Products of fewer multiply-adds go to fn_gemm_ordered: the masks and the copies are not paid
 * back; so do products of few rows, where packing B costs more than the rows' multiply-adds
 * (batch-1 inference streams B through dot products). */
#define SPARSE_MIN_WORK ((double)(1 << 20))
#define SPARSE_MIN_ROWS 16
/* At most this many threads count the nonzeros (their counts sit in the job). */
#define SPARSE_MAX_PARTS 64
/* An operand of SPARSE_SAMPLE_MIN_ROWS stored rows or more is first counted on one row in
 * SPARSE_SAMPLE_STEP; where that sample puts the product's cost past SPARSE_SAMPLE_MARGIN times
 * the dense product's, it is dense without the whole count (an MLP's activations, 70% nonzeros,
 * were counted whole by every product that reads them: 0.6% of `mlp_mnist_b128`'s step). Nearer
 * the limit, and below it, the whole count decides, as it did. */
#define SPARSE_SAMPLE_MIN_ROWS 64
#define SPARSE_SAMPLE_STEP 8
#define SPARSE_SAMPLE_MARGIN 1.1

/* Bit j set where p[j] != 0 (NaN included), for the floats or doubles of a vector. */
#if defined(__AVX512F__)
#define SPARSE_VECTOR_NONZEROS 1
static inline uint64_t sparse_vector_nonzeros_f32(const float *p) {
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(p), _mm512_setzero_ps(), _CMP_NEQ_UQ);
}
static inline uint64_t sparse_vector_nonzeros_f64(const double *p) {
    return _mm512_cmp_pd_mask(_mm512_loadu_pd(p), _mm512_setzero_pd(), _CMP_NEQ_UQ);
}
#elif defined(__AVX2__)
#define SPARSE_VECTOR_NONZEROS 1
static inline uint64_t sparse_vector_nonzeros_f32(const float *p) {
    return (uint64_t)(uint32_t)_mm256_movemask_ps(
        _mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), _CMP_NEQ_UQ));
}
static inline uint64_t sparse_vector_nonzeros_f64(const double *p) {
    return (uint64_t)(uint32_t)_mm256_movemask_pd(
        _mm256_cmp_pd(_mm256_loadu_pd(p), _mm256_setzero_pd(), _CMP_NEQ_UQ));
}
#endif

/* The width of the vectors that hold a row's sums: the machine's (AVX2: 32 bytes, so that a
 * row's eight sums take 8 of its 16 registers, as they take 8 of AVX-512's 32). */
#if defined(__AVX512F__)
#define SPARSE_VECTOR_BYTES 64
#else
#define SPARSE_VECTOR_BYTES 32
#endif

double fn_sparse_max_density(void) { return SPARSE_MAX_DENSITY; }

#define FN_TEMPLATE_FILE "sparse_gemm.c"
#include "template.h"

#else /* templated half */

/* Four vectors of C's row per block, 64 floats or 32 doubles with AVX-512 (two sums each, eight
 * in all, cover the multiply-add's latency); more would not fit the panel's mask word in L1. */
#define SPARSE_VECTORS 4
#define SPARSE_LANES (SPARSE_VECTOR_BYTES / (int64_t)sizeof(real))
#define SPARSE_NB (SPARSE_VECTORS * SPARSE_LANES)
/* Steps of k per panel (a whole number of mask words): 256 KB of float panel with AVX-512, 128 KB
 * with AVX2, in L2. */
#define SPARSE_KC ((int64_t)1024)
/* Rows of C taken through a panel together (their parts of C, 8 KB of floats, stay in L1). */
#define SPARSE_ROWS 32

/* Naturally aligned, though loaded and stored only through memcpy: GCC 12 kept the sums of a
 * vector type aligned to its element on the stack, and each multiply-add then waited on a store
 * and a load (128x1024x1024 with 50% zeros ran 11-20x slower than the dense product on AMD Zen
 * 3, AVX2; 0.7x once in registers). */
typedef real FN_T(sparse_vector) __attribute__((vector_size(SPARSE_VECTOR_BYTES)));

/* Bit j set where p[j] != 0 (NaN included), for j < count <= 64. */
static inline uint64_t FN_T(sparse_nonzero_bits)(const real *p, int64_t count) {
    uint64_t bits = 0;
    int64_t j = 0;
#ifdef SPARSE_VECTOR_NONZEROS
    for (; j + SPARSE_LANES <= count; j += SPARSE_LANES)
        bits |= FN_T(sparse_vector_nonzeros)(p + j) << j;
#endif
    for (; j < count; j++) bits |= (uint64_t)(p[j] != 0) << j;
    return bits;
}

typedef struct {
    bool trans_a, trans_b;
    bool trans_c; /* C stored transposed: element (i, j) at c[j * ldc + i] */
    int64_t m, n, k, lda, ldb, ldc;
    const real *a, *b;
    real beta;
    real *c;
    const real *col_bias; /* (n) added to every row of C, or NULL */
    bool relu;            /* C = ReLU(C) at the end */
    /* op(A)'s rows: a itself, or its copy (transposed if A is) */
    const real *rows;
    int64_t row_stride;
    real *copy;
    uint64_t *masks; /* (m, words) */
    int64_t words;
    real *panels; /* one (SPARSE_KC, SPARSE_NB) panel per part of the product */
    int64_t panel_elements;
    bool split_rows; /* the threads take rows of C (else blocks of columns) */
    int64_t column_blocks;
} FN_T(sparse_job);

/* Counting the nonzeros of a stored matrix, by parts of its rows. */
typedef struct {
    const real *p;
    int64_t rows, columns, ld;
    int64_t nonzeros[SPARSE_MAX_PARTS];
} FN_T(sparse_count_job);

static void FN_T(sparse_count_part)(int id, int parts, void *arg) {
    FN_T(sparse_count_job) *job = arg;
    int64_t r0, r1, nonzeros = 0;
    fn_partition(job->rows, parts, id, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t j = 0; j < job->columns; j += 64) {
            int64_t count = job->columns - j < 64 ? job->columns - j : 64;
            nonzeros += __builtin_popcountll(FN_T(sparse_nonzero_bits)(job->p + r * job->ld + j,
                                                                       count));
        }
    job->nonzeros[id] = nonzeros;
}

/* The nonzeros of p (rows, columns), row stride ld: whether skipping them pays is known before
 * anything is copied. */
static int64_t FN_T(sparse_count)(const real *p, int64_t rows, int64_t columns, int64_t ld,
                                  int threads) {
    FN_T(sparse_count_job) job = {.p = p, .rows = rows, .columns = columns, .ld = ld};
    int parts = fn_threads_for(rows * columns,
                               threads < SPARSE_MAX_PARTS ? threads : SPARSE_MAX_PARTS);
    fn_run_team(parts, FN_T(sparse_count_part), &job);
    int64_t nonzeros = 0;
    for (int i = 0; i < parts; i++) nonzeros += job.nonzeros[i];
    return nonzeros;
}

/* The nonzeros of p (rows, columns), row stride ld; or -1 where a sample of its rows puts the
 * cost of skipping its zeros, nonzeros x `width` multiply-adds, past SPARSE_SAMPLE_MARGIN x
 * `dense`: too dense to pay, known without reading the rest. */
static int64_t FN_T(sparse_count_unless_dense)(const real *p, int64_t rows, int64_t columns,
                                               int64_t ld, double width, double dense,
                                               int threads) {
    if (rows >= SPARSE_SAMPLE_MIN_ROWS) {
        int64_t sampled = (rows + SPARSE_SAMPLE_STEP - 1) / SPARSE_SAMPLE_STEP;
        int64_t in_sample = FN_T(sparse_count)(p, sampled, columns, ld * SPARSE_SAMPLE_STEP,
                                               threads);
        double estimate = (double)in_sample * (double)rows / (double)sampled;
        if (estimate * width > SPARSE_SAMPLE_MARGIN * dense) return -1;
    }
    return FN_T(sparse_count)(p, rows, columns, ld, threads);
}

/* Rows [r0, r1) of op(A): their copy if A is copied (transposed if A is), and their masks. */
static void FN_T(sparse_build_part)(int id, int parts, void *arg) {
    FN_T(sparse_job) *job = arg;
    int64_t r0, r1, k = job->k, stride = job->row_stride;
    fn_partition(job->m, parts, id, &r0, &r1);
    if (job->copy && job->trans_a) /* op(A)(r, i) = a[i][r]: the dense kernel's transposition */
        FN_T(fn_gemm_pack_rows)(job->a + r0, job->lda, k, r1 - r0, job->copy + r0 * stride,
                                stride);
    else if (job->copy)
        for (int64_t r = r0; r < r1; r++)
            memcpy(job->copy + r * stride, job->a + r * job->lda, (size_t)k * sizeof(real));
    for (int64_t r = r0; r < r1; r++) {
        const real *row = job->rows + r * stride;
        uint64_t *mask = job->masks + r * job->words;
        for (int64_t w = 0; w < job->words; w++) {
            int64_t count = k - 64 * w < 64 ? k - 64 * w : 64;
            mask[w] = FN_T(sparse_nonzero_bits)(row + 64 * w, count);
        }
    }
}

/* B's columns [n0, n0 + width) of its rows [k0, k0 + steps) packed as (steps, SPARSE_NB) rows,
 * zero past width. */
static void FN_T(sparse_pack_b)(const FN_T(sparse_job) *job, int64_t n0, int64_t width,
                                int64_t k0, int64_t steps, real *restrict panel) {
    if (!job->trans_b) {
        for (int64_t i = 0; i < steps; i++) {
            memcpy(panel + i * SPARSE_NB, job->b + (k0 + i) * job->ldb + n0,
                   (size_t)width * sizeof(real));
            for (int64_t j = width; j < SPARSE_NB; j++) panel[i * SPARSE_NB + j] = 0;
        }
        return;
    }
    /* op(B)(i, j) = b[j][i]: the rows of b transposed as the dense kernel packs them. */
    FN_T(fn_gemm_pack_rows)(job->b + n0 * job->ldb + k0, job->ldb, width, steps, panel,
                            SPARSE_NB);
    for (int64_t i = 0; i < steps; i++)
        for (int64_t j = width; j < SPARSE_NB; j++) panel[i * SPARSE_NB + j] = 0;
}

/* C's row part c[0, width) += sum over the set bits i of `bits` of row[i] * panel row i, the
 * part held in registers; width is SPARSE_NB in all blocks but the last. On the first word of k
 * (first), the sum starts from beta * c, or for beta 0 from bias (the block's part of col_bias
 * padded to SPARSE_NB) or 0 without one (not 0 * C: C may hold NaN). */
static inline __attribute__((always_inline)) void FN_T(sparse_row_word)(
    real *c, int64_t width, uint64_t bits, const real *row, const real *panel, bool first,
    real beta, const real *bias) {
    typedef FN_T(sparse_vector) vector;
    vector sums[SPARSE_VECTORS];
    real part[SPARSE_NB];
    if (first && beta == 0) {
        for (int v = 0; v < SPARSE_VECTORS; v++) {
            sums[v] = (vector){0};
            if (bias) memcpy(&sums[v], bias + v * SPARSE_LANES, SPARSE_VECTOR_BYTES);
        }
    } else {
        const real *src = c;
        if (width < SPARSE_NB) { /* the padding's lanes summed as zeros, and dropped */
            memcpy(part, c, (size_t)width * sizeof(real));
            memset(part + width, 0, (size_t)(SPARSE_NB - width) * sizeof(real));
            src = part;
        }
        for (int v = 0; v < SPARSE_VECTORS; v++) {
            memcpy(&sums[v], src + v * SPARSE_LANES, SPARSE_VECTOR_BYTES);
            if (first && beta != 1) sums[v] *= beta;
        }
    }
    /* Two sums per vector, the nonzeros taken in pairs: one chain of multiply-adds per vector
     * would wait on the multiply-add's latency at every nonzero. */
    vector odd[SPARSE_VECTORS] = {0};
    while (bits) {
        int i = __builtin_ctzll(bits);
        bits &= bits - 1;
        real value = row[i];
        const real *b = panel + i * SPARSE_NB;
        for (int v = 0; v < SPARSE_VECTORS; v++) {
            vector bv;
            memcpy(&bv, b + v * SPARSE_LANES, SPARSE_VECTOR_BYTES);
            sums[v] += value * bv;
        }
        if (!bits) break;
        i = __builtin_ctzll(bits);
        bits &= bits - 1;
        value = row[i];
        b = panel + i * SPARSE_NB;
        for (int v = 0; v < SPARSE_VECTORS; v++) {
            vector bv;
            memcpy(&bv, b + v * SPARSE_LANES, SPARSE_VECTOR_BYTES);
            odd[v] += value * bv;
        }
    }
    for (int v = 0; v < SPARSE_VECTORS; v++) sums[v] += odd[v];
    if (width < SPARSE_NB) {
        for (int v = 0; v < SPARSE_VECTORS; v++)
            memcpy(part + v * SPARSE_LANES, &sums[v], SPARSE_VECTOR_BYTES);
        memcpy(c, part, (size_t)width * sizeof(real));
    } else {
        for (int v = 0; v < SPARSE_VECTORS; v++)
            memcpy(c + v * SPARSE_LANES, &sums[v], SPARSE_VECTOR_BYTES);
    }
}

/* Rows [r0, r1) of C's column block `block`, by chunks of SPARSE_KC steps of k, whose panel
 * stays in L2, and within a chunk SPARSE_ROWS rows at a time through its words: their
 * part of C (8 KB of floats) stays in L1 from one word to the next and goes to memory once per
 * chunk, which matters where C is large and k short (a weight gradient: C (out, in), k the
 * batch). */
static void FN_T(sparse_block)(const FN_T(sparse_job) *job, int64_t block, int64_t r0,
                               int64_t r1, real *panel) {
    int64_t n0 = block * SPARSE_NB;
    int64_t width = job->n - n0 < SPARSE_NB ? job->n - n0 : SPARSE_NB;
    real beta = job->beta;
    real bias_part[SPARSE_NB], *bias = NULL;
    if (job->col_bias) {
        bias = bias_part;
        for (int64_t j = 0; j < SPARSE_NB; j++) bias[j] = j < width ? job->col_bias[n0 + j] : 0;
    }
    for (int64_t k0 = 0; k0 < job->k; k0 += SPARSE_KC) {
        int64_t steps = job->k - k0 < SPARSE_KC ? job->k - k0 : SPARSE_KC;
        int64_t w0 = k0 / 64, w1 = (k0 + steps + 63) / 64;
        FN_T(sparse_pack_b)(job, n0, width, k0, steps, panel);
        for (int64_t rows = r0; rows < r1; rows += SPARSE_ROWS) {
            int64_t rows_end = r1 - rows < SPARSE_ROWS ? r1 : rows + SPARSE_ROWS;
            for (int64_t w = w0; w < w1; w++) {
                const real *panel_word = panel + 64 * (w - w0) * SPARSE_NB;
                bool first = w == 0;
                for (int64_t r = rows; r < rows_end; r++) {
                    uint64_t bits = job->masks[r * job->words + w];
                    if (!bits && !(first && (beta != 1 || bias))) continue;
                    real *c = job->c + r * job->ldc + n0;
                    const real *row = job->rows + r * job->row_stride + 64 * w;
                    if (width == SPARSE_NB)
                        FN_T(sparse_row_word)(c, SPARSE_NB, bits, row, panel_word, first, beta,
                                              bias);
                    else
                        FN_T(sparse_row_word)(c, width, bits, row, panel_word, first, beta,
                                              bias);
                }
            }
        }
    }
    if (job->relu)
        for (int64_t r = r0; r < r1; r++) {
            real *c = job->c + r * job->ldc + n0;
            for (int64_t j = 0; j < width; j++) c[j] = FN_RELU(c[j]);
        }
}

/* sparse_block for a C stored transposed (the product of a weight gradient whose sparse
 * operand is the layer's input: C^T = x^T @ grad_y, k the batch, at most SPARSE_KC): each block
 * of SPARSE_ROWS x SPARSE_NB is summed in a tile on the stack, read and written transposed by
 * the dense kernel's 16 x 16 transpositions. */
static void FN_T(sparse_block_transposed)(const FN_T(sparse_job) *job, int64_t block, int64_t r0,
                                          int64_t r1, real *panel) {
    int64_t n0 = block * SPARSE_NB;
    int64_t width = job->n - n0 < SPARSE_NB ? job->n - n0 : SPARSE_NB;
    FN_T(sparse_pack_b)(job, n0, width, 0, job->k, panel);
    for (int64_t rows = r0; rows < r1; rows += SPARSE_ROWS) {
        int64_t count = r1 - rows < SPARSE_ROWS ? r1 - rows : SPARSE_ROWS;
        real tile[SPARSE_ROWS * SPARSE_NB] __attribute__((aligned(64)));
        real *c = job->c + n0 * job->ldc + rows; /* C^T's rows n0.., columns rows.. */
        if (job->beta == 0 || width < SPARSE_NB) /* a last block's padding lanes too */
            memset(tile, 0, sizeof tile);
        if (job->beta != 0) {
            FN_T(fn_gemm_pack_rows)(c, job->ldc, width, count, tile, SPARSE_NB);
            for (int64_t i = 0; i < count * SPARSE_NB; i++) tile[i] *= job->beta;
        }
        for (int64_t w = 0; w < job->words; w++)
            for (int64_t r = 0; r < count; r++) {
                uint64_t bits = job->masks[(rows + r) * job->words + w];
                if (bits)
                    FN_T(sparse_row_word)(tile + r * SPARSE_NB, SPARSE_NB, bits,
                                          job->rows + (rows + r) * job->row_stride + 64 * w,
                                          panel + 64 * w * SPARSE_NB, false, 1, NULL);
            }
        FN_T(fn_gemm_pack_rows)(tile, SPARSE_NB, count, width, c, job->ldc);
    }
}

static void FN_T(sparse_compute_part)(int id, int parts, void *arg) {
    const FN_T(sparse_job) *job = arg;
    real *panel = job->panels + id * job->panel_elements;
    int64_t begin, end, r0 = 0, r1 = job->m;
    if (job->split_rows) {
        fn_partition(job->m, parts, id, &r0, &r1);
        begin = 0;
        end = job->column_blocks;
    } else {
        fn_partition(job->column_blocks, parts, id, &begin, &end);
    }
    for (int64_t block = begin; block < end; block++) {
        if (job->trans_c)
            FN_T(sparse_block_transposed)(job, block, r0, r1, panel);
        else
            FN_T(sparse_block)(job, block, r0, r1, panel);
    }
}

/* The product of job (its operands, sizes and C set) skipping op(A)'s `nonzeros` zeros; false,
 * with nothing written, when the buffer cannot be had. */
static bool FN_T(sparse_product)(FN_T(sparse_job) *job, int64_t nonzeros, int threads) {
    int64_t m = job->m, n = job->n, k = job->k;
    job->words = (k + 63) / 64;
    job->column_blocks = (n + SPARSE_NB - 1) / SPARSE_NB;
    /* Threads by the multiply-adds; by blocks of columns when they divide evenly enough (each
     * thread then packs only its own part of B), else by rows. */
    int parts = fn_threads_for((int64_t)((double)nonzeros * (double)n / 16), threads);
    if (parts > 1) {
        int64_t per_part = (job->column_blocks + parts - 1) / parts;
        job->split_rows = per_part * parts > job->column_blocks * 21 / 20 && m >= 16 * parts;
        if (!job->split_rows && job->column_blocks < parts) parts = (int)job->column_blocks;
    }
    /* One buffer: the masks, the copy of A, every part's panel. A transposed A is copied into
     * rows; so is an A whose rows are a multiple of 4 KB apart: the rows a block of C reads at
     * each word of k would share an L1 set. The copy's rows are 64 bytes longer than a multiple
     * of 64 bytes, for the same reason. */
    bool copy = job->trans_a || (job->lda * (int64_t)sizeof(real)) % 4096 == 0;
    int64_t copy_stride = (k + SPARSE_LANES - 1) / SPARSE_LANES * SPARSE_LANES;
    if ((copy_stride * (int64_t)sizeof(real)) % 4096 == 0) copy_stride += SPARSE_LANES;
    job->panel_elements = (k < SPARSE_KC ? k : SPARSE_KC) * SPARSE_NB;
    size_t mask_bytes = ((size_t)m * (size_t)job->words * sizeof(uint64_t) + 63) / 64 * 64;
    size_t copy_bytes = copy ? (size_t)m * (size_t)copy_stride * sizeof(real) : 0;
    size_t panel_bytes = (size_t)parts * (size_t)job->panel_elements * sizeof(real);
    char *buffer = fn_thread_buffer(FN_BUFFER_SPARSE_A, mask_bytes + copy_bytes + panel_bytes);
    if (!buffer) return false;
    job->masks = (uint64_t *)buffer;
    job->copy = copy ? (real *)(buffer + mask_bytes) : NULL;
    job->rows = copy ? job->copy : job->a;
    job->row_stride = copy ? copy_stride : job->lda;
    job->panels = (real *)(buffer + mask_bytes + copy_bytes);
    int build_parts = fn_threads_for(m * k, threads);
    fn_run_team(build_parts, FN_T(sparse_build_part), job);
    fn_run_team(parts, FN_T(sparse_compute_part), job);
    return true;
}

/* op(A) (m, k), op(B) (k, n), C (m, n), row strides lda, ldb, ldc: C = op(A) @ op(B) + beta * C
 * (+ col_bias (n) on every row unless NULL, then ReLU'd with relu), A's zeros skipped when that
 * pays, fn_gemm_ordered's product otherwise (see the top of the file). With sparse_b, B's zeros
 * are counted too, and where B has fewer, C^T = op(B)^T @ op(A)^T is computed skipping them
 * (without a bias or ReLU, for k up to SPARSE_KC: a weight gradient, whose input may be the
 * sparser operand). */
void FN_T(fn_gemm_sparse)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                          const real *a, int64_t lda, const real *b, int64_t ldb, real beta,
                          real *c, int64_t ldc, int threads, bool reversed,
                          const real *col_bias, bool relu, bool sparse_b) {
    bool large = (double)m * (double)n * (double)k >= SPARSE_MIN_WORK;
    /* The bias only with beta 0, a linear layer's forward (else the dense product adds it). */
    bool by_a = large && m >= SPARSE_MIN_ROWS && !(col_bias && beta != 0);
    bool by_b = large && sparse_b && n >= SPARSE_MIN_ROWS && !col_bias && !relu &&
                k <= SPARSE_KC;
    /* The nonzeros' multiply-adds, over the output's columns padded to whole blocks, against
     * the dense product's: a product of a few columns (a classifier's ten) would waste most of
     * a block. */
    double dense = SPARSE_MAX_DENSITY * (double)m * (double)n * (double)k;
    double width_a = (double)((n + SPARSE_NB - 1) / SPARSE_NB * SPARSE_NB);
    double width_b = (double)((m + SPARSE_NB - 1) / SPARSE_NB * SPARSE_NB);
    int64_t nonzeros_a = by_a ? FN_T(sparse_count_unless_dense)(a, trans_a ? k : m,
                                                                trans_a ? m : k, lda, width_a,
                                                                dense, threads)
                              : -1;
    int64_t nonzeros_b = by_b ? FN_T(sparse_count_unless_dense)(b, trans_b ? n : k,
                                                                trans_b ? k : n, ldb, width_b,
                                                                dense, threads)
                              : -1;
    double cost_a = (double)nonzeros_a * width_a, cost_b = (double)nonzeros_b * width_b;
    by_a = nonzeros_a >= 0 && cost_a <= dense;
    by_b = nonzeros_b >= 0 && cost_b <= dense && !(by_a && cost_a <= cost_b);
    if (by_b) {
        FN_T(sparse_job) job = {.trans_a = !trans_b, .trans_b = !trans_a, .trans_c = true,
                                .m = n, .n = m, .k = k, .lda = ldb, .ldb = lda, .ldc = ldc,
                                .a = b, .b = a, .beta = beta, .c = c};
        if (FN_T(sparse_product)(&job, nonzeros_b, threads)) return;
    } else if (by_a) {
        FN_T(sparse_job) job = {.trans_a = trans_a, .trans_b = trans_b, .m = m, .n = n, .k = k,
                                .lda = lda, .ldb = ldb, .ldc = ldc, .a = a, .b = b,
                                .beta = beta, .c = c, .col_bias = col_bias, .relu = relu};
        if (FN_T(sparse_product)(&job, nonzeros_a, threads)) return;
    }
    /* small, dense, or no memory for the masks and panels */
    FN_T(fn_gemm_ordered)(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, beta, c, ldc, threads,
                          reversed, col_bias, relu);
}

#undef SPARSE_VECTORS
#undef SPARSE_LANES
#undef SPARSE_NB
#undef SPARSE_KC
#undef SPARSE_ROWS

#endif
