/* bench_gemm.c — times the built-in GEMM against a BLAS over the GEMM shapes of the benchmark
 * networks, the measurement behind fn_gemm_prefers_builtin in gemm.c. Not a test (make test does not
 * build it):
 *
 *   make -C csrc build/libfastnet.a
 *   cc -O2 -std=gnu11 -march=native -fopenmp -Icsrc csrc/test/bench_gemm.c \
 *      csrc/build/libfastnet.a -ldl -lm -pthread -o bench_gemm
 *   ./bench_gemm path/to/libopenblas.so      (SciPy's: scipy.libs/libscipy_openblas-*.so)
 *
 * Each line: the shape (m x n x k of C = op(A) op(B), T marking a transposed operand), the best
 * of 7 timings of one single-threaded call straight into the BLAS and into fn_gemm_builtin, their
 * ratio (above 1: the built-in kernel is faster), and which one fn_gemm picks. A layer that
 * fn_gemm splits over two threads makes two calls of half its columns: those are listed. */
#define _GNU_SOURCE
#include "internal.h"
#include "kernels.h"

#include <dlfcn.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct {
    const char *what;
    bool ta, tb;
    int64_t m, n, k;
} shape;

static fn_blas table;

/* Seconds per call, best of 7 runs of about 0.1 GFLOP each. */
static double time_calls(const shape *s, bool builtin, const float *a, const float *b, float *c) {
    int lda = (int)(s->ta ? s->m : s->k), ldb = (int)(s->tb ? s->k : s->n), ldc = (int)s->n;
    int m = (int)s->m, n = (int)s->n, k = (int)s->k;
    char op_a = s->ta ? 'T' : 'N', op_b = s->tb ? 'T' : 'N';
    float one = 1, zero = 0;
    double flop = 2.0 * (double)s->m * (double)s->n * (double)s->k, best = 1e30;
    int64_t calls = (int64_t)(1e8 / flop) + 3;
    for (int run = 0; run < 7; run++) {
        double t0 = now();
        for (int64_t i = 0; i < calls; i++) {
            if (builtin)
                fn_gemm_builtin_f32(s->ta, s->tb, s->m, s->n, s->k, 1, a, lda, b, ldb, 0, c, ldc,
                                    1);
            else /* row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T */
                table.sgemm(&op_b, &op_a, &n, &m, &k, &one, b, &ldb, a, &lda, &zero, c, &ldc);
        }
        double t = (now() - t0) / (double)calls;
        if (t < best) best = t;
    }
    return best;
}

/* Finds a symbol under its plain name or SciPy's prefixed one. */
static void *blas_symbol(void *lib, const char *name) {
    char prefixed[64];
    snprintf(prefixed, sizeof prefixed, "scipy_%s", name);
    void *p = dlsym(lib, prefixed);
    return p ? p : dlsym(lib, name);
}

int main(int argc, char **argv) {
    void *lib = dlopen(argc > 1 ? argv[1] : "libopenblas.so.0", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    table = (fn_blas){blas_symbol(lib, "sgemm_"), blas_symbol(lib, "dgemm_"),
                      blas_symbol(lib, "openblas_set_num_threads_local")};
    if (!table.sgemm) {
        fprintf(stderr, "no sgemm_ in %s\n", argc > 1 ? argv[1] : "libopenblas.so.0");
        return 1;
    }
    /* The forward, weight-gradient and input-gradient products of each network's layers. */
    static const shape shapes[] = {
        {"mlp_small fc1", 0, 1, 32, 128, 64},     {"mlp_small fc2", 0, 1, 32, 128, 128},
        {"mlp_small fc3", 0, 1, 32, 10, 128},     {"mlp_small fc2 dW", 1, 0, 128, 128, 32},
        {"mlp_small fc2 dx", 0, 0, 32, 128, 128}, {"mlp_small fc3 dW", 1, 0, 10, 128, 32},
        {"mlp_mnist fc2 (1/2)", 0, 1, 128, 512, 1024}, {"mlp_mnist fc3 (1/2)", 0, 1, 128, 5, 1024},
        {"mlp_mnist fc2 dW (1/2)", 1, 0, 1024, 512, 128},
        {"mlp_mnist fc3 dW (1/2)", 1, 0, 10, 512, 128},
        {"mlp_mnist fc2 dx (1/2)", 0, 0, 128, 512, 1024},
        {"mlp_mnist fc3 dx (1/2)", 0, 0, 128, 512, 10},
        {"cnn fc1 (1/2)", 0, 1, 64, 64, 9216},         {"cnn fc1 dW (1/2)", 1, 0, 128, 4608, 64},
        {"cnn fc1 dx (1/2)", 0, 0, 64, 4608, 128},      {"cnn conv1", 0, 0, 32, 676, 9},
        {"cnn conv1 dW", 0, 1, 32, 9, 676},       {"cnn conv2", 0, 0, 64, 576, 288},
        {"cnn conv2 dW", 0, 1, 64, 288, 576},     {"cnn conv2 dcol", 1, 0, 288, 576, 64},
        {"resnet stem", 0, 0, 16, 1024, 27},      {"resnet stem dW", 0, 1, 16, 27, 1024},
        {"resnet 16ch", 0, 0, 16, 1024, 144},     {"resnet 16ch dW", 0, 1, 16, 144, 1024},
        {"resnet 16ch dcol", 1, 0, 144, 1024, 16}, {"resnet 32ch", 0, 0, 32, 256, 288},
        {"resnet 32ch dW", 0, 1, 32, 288, 256},   {"resnet 32ch dcol", 1, 0, 288, 256, 32},
        {"resnet 64ch", 0, 0, 64, 64, 576},       {"resnet 64ch dW", 0, 1, 64, 576, 64},
        {"resnet 64ch dcol", 1, 0, 576, 64, 64},  {"resnet 1x1", 0, 0, 32, 256, 16},
        {"resnet 1x1 dx", 1, 0, 16, 256, 32},     {"resnet fc", 0, 1, 128, 10, 64},
        {"resnet fc dW", 1, 0, 10, 64, 128},      {"cnn fc2", 0, 1, 64, 10, 128},
        {"cnn fc2 dW", 1, 0, 10, 128, 64},        {"mlp_small fc3 dx", 0, 0, 32, 128, 10},
    };
    size_t elements = (size_t)1 << 22;
    float *a = fn_alloc(elements * sizeof(float)), *b = fn_alloc(elements * sizeof(float));
    float *c = fn_alloc(elements * sizeof(float));
    for (size_t i = 0; i < elements; i++) {
        a[i] = (float)(i * 7 % 13) / 13.0f;
        b[i] = (float)(i * 5 % 11) / 11.0f;
    }
    fn_set_blas(&table);
    if (table.set_threads_local) table.set_threads_local(1);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const shape *s = &shapes[i];
        double t_blas = time_calls(s, false, a, b, c), t_builtin = time_calls(s, true, a, b, c);
        char dims[64];
        snprintf(dims, sizeof dims, "%lld%s x %lld x %lld%s", (long long)s->m, s->ta ? "T" : "",
                 (long long)s->n, (long long)s->k, s->tb ? " (B^T)" : "");
        printf("%-24s %-24s BLAS %9.2f us  built-in %9.2f us  %5.2f  fn_gemm: %s\n", s->what,
               dims, t_blas * 1e6, t_builtin * 1e6, t_blas / t_builtin,
               fn_gemm_prefers_builtin(s->tb, s->m, s->n, s->k) ? "built-in" : "BLAS");
    }
    fn_free(a);
    fn_free(b);
    fn_free(c);
    return 0;
}
