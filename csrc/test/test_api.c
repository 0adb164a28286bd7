/* test_api.c — the public C API end to end, as a C program uses it: only include/fastnet.h.
 *
 * Models are created from spec strings, trained, asked for predictions, read and written tensor
 * by tensor, saved and loaded; learning-rate schedules are checked against their formulas and
 * against the updates they drive; two models are trained at once from two threads. Then every
 * error path: each refused call must return its status and leave a message (checked for a word
 * that only that failure's message has, so a stale message from an earlier failure cannot pass).
 *
 * Prints one line per failure and finally "N passed, M failed"; exits nonzero on failure. Run
 * under AddressSanitizer (make sanitize), it also checks that no path leaks or overruns.
 */
#define _POSIX_C_SOURCE 200809L
#include "include/fastnet.h"
#include "test/check.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------- fixtures */

#define FEATURES 16
#define HIDDEN 32
#define CLASSES 4

static const char *const MLP_SPEC =
    "{\"format\": \"fastnet.model\", \"version\": 1, \"dtype\": \"float32\", \"seed\": 7,"
    " \"input_shape\": [16],"
    " \"nodes\": [{\"name\": \"0\", \"op\": \"linear\", \"in_features\": 16, \"out_features\": 32},"
    "           {\"name\": \"1\", \"op\": \"relu\"},"
    "           {\"name\": \"2\", \"op\": \"linear\", \"in_features\": 32, \"out_features\": 4}]}";

static const char *const MLP64_SPEC =
    "{\"format\": \"fastnet.model\", \"version\": 1, \"dtype\": \"float64\", \"seed\": 7,"
    " \"input_shape\": [16],"
    " \"nodes\": [{\"name\": \"0\", \"op\": \"linear\", \"in_features\": 16, \"out_features\": 32},"
    "           {\"name\": \"1\", \"op\": \"tanh\"},"
    "           {\"name\": \"2\", \"op\": \"linear\", \"in_features\": 32, \"out_features\": 4}]}";

/* Batch norm and dropout: the two ops whose train and eval modes differ. */
static const char *const NORM_SPEC =
    "{\"format\": \"fastnet.model\", \"version\": 1, \"dtype\": \"float32\", \"seed\": 3,"
    " \"input_shape\": [16],"
    " \"nodes\": [{\"name\": \"0\", \"op\": \"linear\", \"in_features\": 16, \"out_features\": 32},"
    "           {\"name\": \"1\", \"op\": \"batch_norm\", \"num_features\": 32},"
    "           {\"name\": \"2\", \"op\": \"relu\"},"
    "           {\"name\": \"3\", \"op\": \"dropout\", \"p\": 0.5},"
    "           {\"name\": \"4\", \"op\": \"linear\", \"in_features\": 32, \"out_features\": 4}]}";

/* Convolutions large enough that their gradient sums over images are split between threads. */
static const char *const CONV_SPEC =
    "{\"format\": \"fastnet.model\", \"version\": 1, \"dtype\": \"float32\", \"seed\": 5,"
    " \"input_shape\": [1, 4, 4],"
    " \"nodes\": [{\"name\": \"0\", \"op\": \"conv2d\", \"in_channels\": 1, \"out_channels\": 32,"
    "            \"kernel_size\": [3, 3], \"padding\": [1, 1]},"
    "           {\"name\": \"1\", \"op\": \"batch_norm\", \"num_features\": 32},"
    "           {\"name\": \"2\", \"op\": \"relu\"},"
    "           {\"name\": \"3\", \"op\": \"conv2d\", \"in_channels\": 32, \"out_channels\": 32,"
    "            \"kernel_size\": [3, 3], \"padding\": [1, 1]},"
    "           {\"name\": \"4\", \"op\": \"max_pool2d\", \"kernel_size\": 2},"
    "           {\"name\": \"5\", \"op\": \"flatten\"},"
    "           {\"name\": \"6\", \"op\": \"linear\", \"in_features\": 128, \"out_features\": 4}]}";

/* A 3x3 convolution of 16 channels on 8 x 8 images (the first one pads the 4 x 4 input by 3),
 * which runs by Winograd four images at a call, its batch norm deriving the output gradient of
 * each image of a group into the group's buffer. */
static const char *const WINOGRAD_GROUPS_SPEC =
    "{\"format\": \"fastnet.model\", \"version\": 1, \"dtype\": \"float32\", \"seed\": 6,"
    " \"input_shape\": [1, 4, 4],"
    " \"nodes\": [{\"name\": \"0\", \"op\": \"conv2d\", \"in_channels\": 1, \"out_channels\": 16,"
    "            \"kernel_size\": [3, 3], \"padding\": [3, 3]},"
    "           {\"name\": \"1\", \"op\": \"relu\"},"
    "           {\"name\": \"2\", \"op\": \"conv2d\", \"in_channels\": 16, \"out_channels\": 16,"
    "            \"kernel_size\": [3, 3], \"padding\": [1, 1]},"
    "           {\"name\": \"3\", \"op\": \"batch_norm\", \"num_features\": 16},"
    "           {\"name\": \"4\", \"op\": \"relu\"},"
    "           {\"name\": \"5\", \"op\": \"max_pool2d\", \"kernel_size\": 2},"
    "           {\"name\": \"6\", \"op\": \"flatten\"},"
    "           {\"name\": \"7\", \"op\": \"linear\", \"in_features\": 256, \"out_features\": 4}]}";

static fn_model *create(const char *spec) {
    fn_model *m = NULL;
    if (!CHECK(fn_model_create(spec, &m) == FN_OK && m != NULL)) exit(1);
    return m;
}

/* splitmix64, so that the data is the same everywhere. */
static double random_uniform(uint64_t *state) { /* [0, 1) */
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

/* n samples of CLASSES separable clusters: x (n, FEATURES) around a center per class. */
typedef struct {
    int64_t n;
    float *x;
    double *x64;
    int32_t *y;
} dataset;

static dataset make_data(int64_t n, uint64_t seed) {
    dataset d = {n, malloc((size_t)n * FEATURES * sizeof(float)),
                 malloc((size_t)n * FEATURES * sizeof(double)), malloc((size_t)n * sizeof(int32_t))};
    if (!d.x || !d.x64 || !d.y) exit(1);
    uint64_t center_state = 12345; /* the same centers for every seed */
    double centers[CLASSES][FEATURES];
    for (int c = 0; c < CLASSES; c++)
        for (int f = 0; f < FEATURES; f++) centers[c][f] = 2 * random_uniform(&center_state) - 1;
    uint64_t state = seed;
    for (int64_t i = 0; i < n; i++) {
        int32_t label = (int32_t)(random_uniform(&state) * CLASSES);
        d.y[i] = label;
        for (int f = 0; f < FEATURES; f++) {
            double v = centers[label][f] + 0.4 * (random_uniform(&state) - 0.5);
            d.x[i * FEATURES + f] = (float)v;
            d.x64[i * FEATURES + f] = v;
        }
    }
    return d;
}

static void free_data(dataset *d) {
    free(d->x);
    free(d->x64);
    free(d->y);
}

static void set_sgd(fn_model *m, double lr, double momentum) {
    fn_optimizer sgd = {.kind = FN_OPT_SGD, .lr = lr, .momentum = momentum};
    CHECK(fn_model_set_optimizer(m, &sgd) == FN_OK);
}

/* `steps` fused steps over consecutive batches of `batch`; the mean loss of the last step. */
static double train(fn_model *m, const dataset *d, int steps, int64_t batch) {
    fn_loss loss = {FN_LOSS_CROSS_ENTROPY};
    double value = NAN;
    size_t elem = fn_model_dtype(m) == FN_FLOAT64 ? sizeof(double) : sizeof(float);
    const char *x = fn_model_dtype(m) == FN_FLOAT64 ? (const char *)d->x64 : (const char *)d->x;
    for (int s = 0; s < steps; s++) {
        int64_t start = (s * batch) % (d->n - batch + 1);
        if (fn_model_train_step(m, x + (size_t)(start * FEATURES) * elem, d->y + start,
                                FN_LABEL_I32, batch, &loss, &value) != FN_OK) {
            CHECK(!"train_step failed");
            return NAN;
        }
    }
    return value;
}

static int argmax(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

/* A copy of the parameter arena (to compare weights bit for bit). */
static void *copy_params(fn_model *m) {
    size_t bytes = (size_t)fn_model_param_total(m) *
                   (fn_model_dtype(m) == FN_FLOAT64 ? sizeof(double) : sizeof(float));
    void *copy = malloc(bytes);
    if (!copy) exit(1);
    memcpy(copy, fn_model_params(m), bytes);
    return copy;
}

static bool same_params(fn_model *m, const void *copy) {
    size_t bytes = (size_t)fn_model_param_total(m) *
                   (fn_model_dtype(m) == FN_FLOAT64 ? sizeof(double) : sizeof(float));
    return memcmp(fn_model_params(m), copy, bytes) == 0;
}

static char temp_dir[64];

static const char *temp_path(const char *name) {
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", temp_dir, name);
    return path;
}

static bool write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(bytes, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *bytes = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size > 0 && fseek(f, 0, SEEK_SET) == 0 && (bytes = malloc((size_t)size)) &&
            fread(bytes, 1, (size_t)size, f) != (size_t)size) {
            free(bytes);
            bytes = NULL;
        }
        *n = size > 0 ? (size_t)size : 0;
    }
    fclose(f);
    return bytes;
}

/* ---------------------------------------------------------------- versions and BLAS */

static void test_version_and_blas(void) {
    CHECK(strcmp(fn_version(), FN_VERSION_STRING) == 0);
    CHECK(fn_version_number() == FN_VERSION_NUMBER);
    CHECK(FN_VERSION_NUMBER == FN_VERSION_MAJOR * 10000 + FN_VERSION_MINOR * 100 + FN_VERSION_PATCH);
    char expected[32];
    snprintf(expected, sizeof expected, "%d.%d.%d", FN_VERSION_MAJOR, FN_VERSION_MINOR,
             FN_VERSION_PATCH);
    CHECK(strcmp(expected, FN_VERSION_STRING) == 0);
#ifdef FN_WITH_LINKED_BLAS
    /* Installed before anything was called, and again by fn_use_linked_blas after a reset. */
    CHECK(fn_blas_installed(FN_FLOAT32) && fn_blas_installed(FN_FLOAT64));
    fn_set_blas(NULL);
    CHECK(!fn_blas_installed(FN_FLOAT32));
    CHECK(fn_use_linked_blas() == 1);
    CHECK(fn_blas_installed(FN_FLOAT32) && fn_blas_installed(FN_FLOAT64));
    printf("GEMM: the linked BLAS\n");
#else
    CHECK(!fn_blas_installed(FN_FLOAT32) && !fn_blas_installed(FN_FLOAT64));
    CHECK(fn_use_linked_blas() == 0);
    CHECK(!fn_blas_installed(FN_FLOAT32) && !fn_blas_installed(FN_FLOAT64));
    printf("GEMM: the built-in kernel\n");
#endif
}

/* ---------------------------------------------------------------- create, train, predict */

static void test_create_and_train(void) {
    fn_model *m = create(MLP_SPEC);
    CHECK(fn_model_dtype(m) == FN_FLOAT32);
    CHECK(fn_model_input_size(m) == FEATURES && fn_model_output_size(m) == CLASSES);
    CHECK(fn_model_tensor_count(m) == 4);
    /* Tensors start at aligned offsets: the arena holds at least their elements. */
    int64_t elements = 0;
    for (int i = 0; i < fn_model_tensor_count(m); i++) {
        fn_tensor_info info;
        CHECK(fn_model_tensor_info(m, i, &info) == FN_OK);
        elements += info.count;
    }
    CHECK(elements == FEATURES * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES);
    CHECK(fn_model_param_total(m) >= elements);
    CHECK(fn_model_training(m) == 1);
    CHECK(strcmp(fn_model_spec(m), MLP_SPEC) == 0);
    CHECK(fn_model_current_lr(m) == 0); /* no optimizer yet */

    dataset d = make_data(512, 1);
    set_sgd(m, 0.05, 0.9);
    fn_loss loss = {FN_LOSS_CROSS_ENTROPY};
    double first = 0;
    CHECK(fn_model_train_step(m, d.x, d.y, FN_LABEL_I32, 64, &loss, &first) == FN_OK);
    double last = train(m, &d, 100, 64);
    printf("training: loss %.4f after one step, %.4f after 101\n", first, last);
    CHECK(isfinite(first) && first > 0.5);
    CHECK(last < 0.2 * first);
    CHECK(fn_model_optimizer_steps(m) == 101);

    /* Predictions on fresh samples of the same clusters. */
    dataset test = make_data(200, 99);
    float *y = malloc(200 * CLASSES * sizeof(float));
    CHECK(fn_model_predict(m, test.x, 200, y) == FN_OK);
    int correct = 0;
    for (int i = 0; i < 200; i++) correct += argmax(y + i * CLASSES, CLASSES) == test.y[i];
    printf("training: accuracy %.3f on 200 new samples\n", correct / 200.0);
    CHECK(correct >= 190);
    free(y);
    free_data(&test);
    free_data(&d);
    fn_model_free(m);
}

static void test_predict(void) {
    fn_model *m = create(NORM_SPEC);
    dataset d = make_data(2500, 2);
    set_sgd(m, 0.05, 0.9);
    train(m, &d, 20, 32); /* running statistics move away from their initial values */

    enum { N = 50 };
    float predicted[N * CLASSES], eval[N * CLASSES], train_mode[N * CLASSES];
    uint64_t rng_step = fn_model_rng_step(m);
    CHECK(fn_model_predict(m, d.x, N, predicted) == FN_OK);
    CHECK(fn_model_training(m) == 1);            /* the mode is restored */
    CHECK(fn_model_rng_step(m) == rng_step);     /* no dropout masks drawn */
    fn_model_set_training(m, 0);
    CHECK(fn_model_forward(m, d.x, N, eval, 0) == FN_OK);
    CHECK(memcmp(predicted, eval, sizeof eval) == 0);
    CHECK(fn_model_predict(m, d.x, N, predicted) == FN_OK);
    CHECK(fn_model_training(m) == 0);            /* eval stays eval */
    CHECK(memcmp(predicted, eval, sizeof eval) == 0);
    fn_model_set_training(m, 1);
    CHECK(fn_model_forward(m, d.x, N, train_mode, 0) == FN_OK);
    CHECK(memcmp(predicted, train_mode, sizeof eval) != 0); /* batch statistics, dropout */

    /* Node outputs: the last node's is the forward's output; a prediction replaces them. */
    const void *out = NULL;
    int64_t rows = 0;
    CHECK(fn_model_node_output(m, 4, &out, &rows) == FN_OK && rows == N);
    CHECK(out && memcmp(out, train_mode, sizeof train_mode) == 0);

    /* Prediction keeps no activations: a backward needs a new keeping forward. */
    CHECK(fn_model_forward(m, d.x, N, NULL, 1) == FN_OK);
    CHECK(fn_model_predict(m, d.x, N, predicted) == FN_OK);
    float grad[N * CLASSES] = {0};
    EXPECT_ERROR(fn_model_backward(m, grad, N, NULL), FN_ESTATE, "backward");
    EXPECT_ERROR(fn_model_node_output(m, 0, &out, &rows), FN_ESTATE, "prediction");
    CHECK(out == NULL && rows == 0);
    EXPECT_ERROR(fn_model_node_output(m, 5, &out, &rows), FN_EINVAL, "out of range");

    /* More samples than one chunk: the same values as one eval forward over all of them. */
    float *all = malloc(2500 * CLASSES * sizeof(float)), *whole = malloc(2500 * CLASSES * sizeof(float));
    CHECK(fn_model_predict(m, d.x, 2500, all) == FN_OK);
    fn_model_set_training(m, 0);
    CHECK(fn_model_forward(m, d.x, 2500, whole, 0) == FN_OK);
    fn_model_set_training(m, 1);
    if (fn_blas_installed(FN_FLOAT32)) {
        /* A BLAS may pick other kernels for other numbers of rows: equal up to round-off. */
        float worst = 0;
        for (int i = 0; i < 2500 * CLASSES; i++) {
            float error = fabsf(all[i] - whole[i]) / (1 + fabsf(whole[i]));
            if (error > worst) worst = error;
        }
        CHECK(worst <= 1e-5f);
    } else {
        /* The built-in kernel sums each element in the same order whatever the rows: exact. */
        CHECK(memcmp(all, whole, 2500 * CLASSES * sizeof(float)) == 0);
    }

    /* A bad sample in the last chunk: refused before anything is written. */
    for (int i = 0; i < 2500 * CLASSES; i++) all[i] = -7.0f;
    d.x[2400 * FEATURES + 5] = NAN;
    EXPECT_ERROR(fn_model_predict(m, d.x, 2500, all), FN_EINVAL, "sample 2400, feature 5");
    bool untouched = true;
    for (int i = 0; i < 2500 * CLASSES; i++) untouched &= all[i] == -7.0f;
    CHECK(untouched);
    d.x[2400 * FEATURES + 5] = INFINITY;
    EXPECT_ERROR(fn_model_predict(m, d.x, 2500, all), FN_EINVAL, "NaN or Inf");
    EXPECT_ERROR(fn_model_predict(NULL, d.x, 1, all), FN_EINVAL, "model is NULL");
    EXPECT_ERROR(fn_model_predict(m, NULL, 1, all), FN_EINVAL, "input is NULL");
    EXPECT_ERROR(fn_model_predict(m, d.x, 1, NULL), FN_EINVAL, "output buffer is NULL");
    EXPECT_ERROR(fn_model_predict(m, d.x, 0, all), FN_EINVAL, "batch size");
    EXPECT_ERROR(fn_model_predict(m, d.x, -3, all), FN_EINVAL, "batch size");
    free(all);
    free(whole);
    free_data(&d);
    fn_model_free(m);
}

/* ---------------------------------------------------------------- tensors by name */

/* Outputs that backward does not read share memory unless kept, with the same results either way.
 * In NORM_SPEC batch norm's output (32 per sample) becomes the ReLU's; the other outputs are read
 * by backward (the linear layers' inputs, the ReLU's output) or are the model's output. */
static void test_keep_outputs(void) {
    fn_model *shared = create(NORM_SPEC), *kept = create(NORM_SPEC);
    fn_model_set_keep_outputs(kept, 1);
    CHECK(fn_model_keep_outputs(kept) == 1 && fn_model_keep_outputs(shared) == 0);
    fn_memory_use use;
    CHECK(fn_model_memory_use(shared, &use) == FN_OK && use.activations == 0);
    EXPECT_ERROR(fn_model_memory_use(shared, NULL), FN_EINVAL, "NULL");
    dataset d = make_data(512, 4);
    set_sgd(shared, 0.05, 0.9);
    set_sgd(kept, 0.05, 0.9);
    double loss_shared = train(shared, &d, 20, 64), loss_kept = train(kept, &d, 20, 64);
    CHECK(loss_shared == loss_kept);
    CHECK(memcmp(fn_model_params(shared), fn_model_params(kept),
                 (size_t)fn_model_param_total(shared) * sizeof(float)) == 0);
    CHECK(memcmp(fn_model_buffers(shared), fn_model_buffers(kept),
                 (size_t)fn_model_buffer_total(shared) * sizeof(float)) == 0);

    fn_memory_use a, b;
    CHECK(fn_model_memory_use(shared, &a) == FN_OK && fn_model_memory_use(kept, &b) == FN_OK);
    CHECK(a.activations == 64 * (32 + 32 + 32 + 4) * sizeof(float));
    CHECK(b.activations == 64 * (32 + 32 + 32 + 32 + 4) * sizeof(float));
    CHECK(a.input == 64 * 16 * sizeof(float) && a.gradients == b.gradients && a.gradients > 0);
    /* batch norm keeps its mean and invstd (double) and FN_BATCH_NORM_COEFS coefficients */
    CHECK(a.saved == 32 * (2 * sizeof(double) + 6 * sizeof(float)) && a.workspace == b.workspace);

    const void *out = NULL, *out_kept = NULL;
    int64_t rows = 0;
    EXPECT_ERROR(fn_model_node_output(shared, 1, &out, &rows), FN_ESTATE, "not kept");
    CHECK(out == NULL && rows == 0);
    CHECK(fn_model_node_output(kept, 1, &out_kept, &rows) == FN_OK && rows == 64);
    for (int i = 0; i < 5; i++) {
        if (i == 1) continue;
        CHECK(fn_model_node_output(shared, i, &out, &rows) == FN_OK && rows == 64);
        CHECK(fn_model_node_output(kept, i, &out_kept, &rows) == FN_OK);
        CHECK(memcmp(out, out_kept, 64 * 32 * sizeof(float) / (i == 4 ? 8 : 1)) == 0);
    }
    /* Switching lays the buffers out again at the next forward: nothing to read until then. */
    fn_model_set_keep_outputs(shared, 1);
    CHECK(fn_model_forward(shared, d.x, 10, NULL, 0) == FN_OK);
    CHECK(fn_model_node_output(shared, 1, &out, &rows) == FN_OK && rows == 10);
    CHECK(fn_model_memory_use(shared, &a) == FN_OK);
    CHECK(a.activations == 10 * (32 + 32 + 32 + 32 + 4) * sizeof(float));
    free_data(&d);
    fn_model_free(shared);
    fn_model_free(kept);
}

static void test_tensors(void) {
    fn_model *m = create(NORM_SPEC);
    fn_tensor_info info;
    CHECK(fn_model_find_tensor(m, "0.weight", &info) == FN_OK);
    CHECK(info.ndim == 2 && info.shape[0] == HIDDEN && info.shape[1] == FEATURES &&
          info.count == HIDDEN * FEATURES && !info.is_buffer && strcmp(info.name, "0.weight") == 0);

    /* Reading gives the arena's values; writing changes the model and reads back. */
    float weight[HIDDEN * FEATURES], again[HIDDEN * FEATURES];
    CHECK(fn_model_get_tensor(m, "0.weight", weight, HIDDEN * FEATURES) == FN_OK);
    CHECK(memcmp(weight, (float *)fn_model_params(m) + info.offset, sizeof weight) == 0);
    dataset d = make_data(8, 3);
    float before[8 * CLASSES], after[8 * CLASSES];
    CHECK(fn_model_predict(m, d.x, 8, before) == FN_OK);
    for (int i = 0; i < HIDDEN * FEATURES; i++) weight[i] = 0.01f * (float)(i % 13) - 0.05f;
    CHECK(fn_model_set_tensor(m, "0.weight", weight, HIDDEN * FEATURES) == FN_OK);
    CHECK(fn_model_get_tensor(m, "0.weight", again, HIDDEN * FEATURES) == FN_OK);
    CHECK(memcmp(weight, again, sizeof weight) == 0);
    CHECK(fn_model_predict(m, d.x, 8, after) == FN_OK);
    CHECK(memcmp(before, after, sizeof after) != 0);

    /* Buffers: running statistics, and a count kept in a real. */
    float mean[HIDDEN], var[HIDDEN];
    CHECK(fn_model_find_tensor(m, "1.running_var", &info) == FN_OK && info.is_buffer);
    CHECK(fn_model_get_tensor(m, "1.running_var", var, HIDDEN) == FN_OK && var[0] == 1.0f);
    for (int i = 0; i < HIDDEN; i++) mean[i] = 0.5f * (float)i;
    CHECK(fn_model_set_tensor(m, "1.running_mean", mean, HIDDEN) == FN_OK);
    float mean_back[HIDDEN];
    CHECK(fn_model_get_tensor(m, "1.running_mean", mean_back, HIDDEN) == FN_OK);
    CHECK(memcmp(mean, mean_back, sizeof mean) == 0);
    float count = 3, bad_count = -1, fraction = 1.5f;
    CHECK(fn_model_find_tensor(m, "1.num_batches_tracked", &info) == FN_OK && info.is_integer);
    CHECK(fn_model_set_tensor(m, "1.num_batches_tracked", &count, 1) == FN_OK);
    EXPECT_ERROR(fn_model_set_tensor(m, "1.num_batches_tracked", &bad_count, 1), FN_EINVAL,
                 "whole number");
    EXPECT_ERROR(fn_model_set_tensor(m, "1.num_batches_tracked", &fraction, 1), FN_EINVAL,
                 "num_batches_tracked");
    float count_back = 0;
    CHECK(fn_model_get_tensor(m, "1.num_batches_tracked", &count_back, 1) == FN_OK &&
          count_back == 3);

    /* Refused writes change nothing. */
    float poisoned[HIDDEN * FEATURES];
    memcpy(poisoned, weight, sizeof poisoned);
    poisoned[100] = NAN;
    EXPECT_ERROR(fn_model_set_tensor(m, "0.weight", poisoned, HIDDEN * FEATURES), FN_EINVAL,
                 "'0.weight': element 100 is NaN or Inf");
    poisoned[100] = -INFINITY;
    EXPECT_ERROR(fn_model_set_tensor(m, "0.weight", poisoned, HIDDEN * FEATURES), FN_EINVAL,
                 "NaN or Inf");
    CHECK(fn_model_get_tensor(m, "0.weight", again, HIDDEN * FEATURES) == FN_OK);
    CHECK(memcmp(weight, again, sizeof weight) == 0);

    EXPECT_ERROR(fn_model_get_tensor(m, "0.weights", weight, HIDDEN * FEATURES), FN_EINVAL,
                 "no tensor named '0.weights'");
    EXPECT_ERROR(fn_model_set_tensor(m, "fc1.weight", weight, HIDDEN * FEATURES), FN_EINVAL,
                 "it has: 0.weight, 0.bias");
    EXPECT_ERROR(fn_model_find_tensor(m, "", &info), FN_EINVAL, "no tensor named ''");
    EXPECT_ERROR(fn_model_get_tensor(m, "0.weight", weight, HIDDEN * FEATURES - 1), FN_EINVAL,
                 "'0.weight' has 512 elements (shape (32, 16)), got a count of 511");
    EXPECT_ERROR(fn_model_set_tensor(m, "0.bias", weight, HIDDEN * FEATURES), FN_EINVAL,
                 "'0.bias' has 32 elements");
    EXPECT_ERROR(fn_model_set_tensor(m, "0.bias", weight, -1), FN_EINVAL, "count of -1");
    EXPECT_ERROR(fn_model_get_tensor(NULL, "0.bias", weight, HIDDEN), FN_EINVAL, "model is NULL");
    EXPECT_ERROR(fn_model_get_tensor(m, NULL, weight, HIDDEN), FN_EINVAL, "name is NULL");
    EXPECT_ERROR(fn_model_get_tensor(m, "0.bias", NULL, HIDDEN), FN_EINVAL, "'0.bias' is NULL");
    EXPECT_ERROR(fn_model_set_tensor(m, "0.bias", NULL, HIDDEN), FN_EINVAL, "'0.bias' is NULL");
    EXPECT_ERROR(fn_model_find_tensor(m, "0.bias", NULL), FN_EINVAL, "info is NULL");
    EXPECT_ERROR(fn_model_tensor_info(m, 99, &info), FN_EINVAL, "out of range");
    fn_node_info node;
    EXPECT_ERROR(fn_model_node_info(m, -1, &node), FN_EINVAL, "out of range");

    /* A float64 model reads and writes doubles. */
    fn_model *m64 = create(MLP64_SPEC);
    double bias[CLASSES] = {0.25, -0.5, 1e-300, 3};
    double bias_back[CLASSES];
    CHECK(fn_model_set_tensor(m64, "2.bias", bias, CLASSES) == FN_OK);
    CHECK(fn_model_get_tensor(m64, "2.bias", bias_back, CLASSES) == FN_OK);
    CHECK(memcmp(bias, bias_back, sizeof bias) == 0);
    fn_model_free(m64);
    free_data(&d);
    fn_model_free(m);
}

/* ---------------------------------------------------------------- files */

static void check_round_trip(const char *spec, const char *name) {
    fn_model *m = create(spec);
    dataset d = make_data(64, 4);
    set_sgd(m, 0.05, 0.9);
    train(m, &d, 10, 32);
    const char *path = temp_path(name);
    CHECK(fn_model_save(m, path) == FN_OK);
    fn_model *loaded = NULL;
    if (!CHECK(fn_model_load(path, &loaded) == FN_OK && loaded)) {
        fn_model_free(m);
        free_data(&d);
        return;
    }
    CHECK(strcmp(fn_model_spec(loaded), fn_model_spec(m)) == 0);
    CHECK(fn_model_dtype(loaded) == fn_model_dtype(m));
    CHECK(fn_model_training(loaded) == 1);
    /* Every tensor, parameters and buffers, bit for bit. */
    size_t elem = fn_model_dtype(m) == FN_FLOAT64 ? sizeof(double) : sizeof(float);
    for (int i = 0; i < fn_model_tensor_count(m); i++) {
        fn_tensor_info info;
        CHECK(fn_model_tensor_info(m, i, &info) == FN_OK);
        void *a = malloc((size_t)info.count * elem), *b = malloc((size_t)info.count * elem);
        CHECK(fn_model_get_tensor(m, info.name, a, info.count) == FN_OK);
        CHECK(fn_model_get_tensor(loaded, info.name, b, info.count) == FN_OK);
        CHECK(memcmp(a, b, (size_t)info.count * elem) == 0);
        free(a);
        free(b);
    }
    /* Predictions bit for bit. */
    void *y1 = malloc(64 * CLASSES * elem), *y2 = malloc(64 * CLASSES * elem);
    const void *x = elem == sizeof(double) ? (const void *)d.x64 : (const void *)d.x;
    CHECK(fn_model_predict(m, x, 64, y1) == FN_OK);
    CHECK(fn_model_predict(loaded, x, 64, y2) == FN_OK);
    CHECK(memcmp(y1, y2, 64 * CLASSES * elem) == 0);
    free(y1);
    free(y2);
    fn_model_free(loaded);
    fn_model_free(m);
    free_data(&d);
}

static void test_files(void) {
    check_round_trip(MLP_SPEC, "mlp.safetensors");
    check_round_trip(MLP64_SPEC, "mlp64.safetensors");
    check_round_trip(NORM_SPEC, "norm.safetensors");

    fn_model *m = create(MLP_SPEC), *loaded = (fn_model *)&loaded; /* must be reset to NULL */
    char good[128];
    snprintf(good, sizeof good, "%s", temp_path("good.safetensors"));
    CHECK(fn_model_save(m, good) == FN_OK);
    size_t size = 0;
    unsigned char *bytes = read_bytes(good, &size);
    if (!CHECK(bytes && size > 100)) return;

    EXPECT_ERROR(fn_model_load(temp_path("missing.safetensors"), &loaded), FN_EIO,
                 "missing.safetensors");
    CHECK(loaded == NULL);
    EXPECT_ERROR(fn_model_load(temp_dir, &loaded), FN_EIO, "not a regular file");
    CHECK(write_bytes(temp_path("empty"), "", 0));
    EXPECT_ERROR(fn_model_load(temp_path("empty"), &loaded), FN_EFORMAT, "0 bytes, shorter");
    /* Truncated: in the length field, in the header, in the data. */
    const size_t cuts[] = {4, 20, size / 2, size - 1};
    const char *cut_words[] = {"shorter than the 8-byte header length", "runs past the end",
                               "past the end of the", "past the end of the"};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CHECK(write_bytes(temp_path("truncated"), bytes, cuts[i]));
        EXPECT_ERROR(fn_model_load(temp_path("truncated"), &loaded), FN_EFORMAT, cut_words[i]);
        CHECK(loaded == NULL);
    }
    /* Not a safetensors file at all. */
    char garbage[300];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (char)(i * 37 + 11);
    CHECK(write_bytes(temp_path("garbage"), garbage, sizeof garbage));
    EXPECT_ERROR(fn_model_load(temp_path("garbage"), &loaded), FN_EFORMAT, "header length");
    /* A corrupted header: its first byte is no longer '{'. */
    unsigned char *corrupt = malloc(size);
    memcpy(corrupt, bytes, size);
    corrupt[8] = 'X';
    CHECK(write_bytes(temp_path("corrupt"), corrupt, size));
    EXPECT_ERROR(fn_model_load(temp_path("corrupt"), &loaded), FN_EFORMAT, "unexpected character");
    /* A NaN weight: the first value of the data section. */
    memcpy(corrupt, bytes, size);
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; i--) header_length = header_length << 8 | bytes[i];
    const unsigned char nan_bits[4] = {0x00, 0x00, 0xc0, 0x7f}; /* little-endian quiet NaN */
    memcpy(corrupt + 8 + header_length, nan_bits, 4);
    CHECK(write_bytes(temp_path("nan"), corrupt, size));
    EXPECT_ERROR(fn_model_load(temp_path("nan"), &loaded), FN_EFORMAT, "NaN or Inf");
    /* A safetensors file without a model spec. */
    const char plain[] = "{\"__metadata__\": {\"other\": \"x\"}}";
    unsigned char plain_file[8 + sizeof plain - 1] = {sizeof plain - 1};
    memcpy(plain_file + 8, plain, sizeof plain - 1);
    CHECK(write_bytes(temp_path("plain"), plain_file, sizeof plain_file));
    EXPECT_ERROR(fn_model_load(temp_path("plain"), &loaded), FN_EFORMAT, "not a fastnet model");
    CHECK(loaded == NULL);

    EXPECT_ERROR(fn_model_load(NULL, &loaded), FN_EINVAL, "NULL");
    EXPECT_ERROR(fn_model_load(good, NULL), FN_EINVAL, "NULL");
    EXPECT_ERROR(fn_model_save(NULL, good), FN_EINVAL, "NULL");
    EXPECT_ERROR(fn_model_save(m, NULL), FN_EINVAL, "NULL");
    EXPECT_ERROR(fn_model_save(m, temp_path("no-such-dir/m.safetensors")), FN_EIO, "no-such-dir");
    /* A refused save leaves the file that was there. */
    size_t size_after = 0;
    unsigned char *after = read_bytes(good, &size_after);
    CHECK(after && size_after == size && memcmp(after, bytes, size) == 0);
    free(after);
    free(corrupt);
    free(bytes);
    fn_model_free(m);
}

/* A save removes the temporaries of its path left by dead writers, and nothing else. */
static void test_stale_temporaries(void) {
    pid_t child = fork();
    if (child == 0) _exit(0);
    if (!CHECK(child > 0)) return;
    waitpid(child, NULL, 0); /* its pid now names no process */
    char dead[64], live[64], dead_other[64], dead_suffix[64], leading_zero[64];
    snprintf(dead, sizeof dead, "stale.safetensors.tmp.%ld", (long)child);
    snprintf(live, sizeof live, "stale.safetensors.tmp.%ld", (long)getppid());
    snprintf(dead_other, sizeof dead_other, "other.safetensors.tmp.%ld", (long)child);
    snprintf(dead_suffix, sizeof dead_suffix, "stale.safetensors.tmp.%ldx", (long)child);
    snprintf(leading_zero, sizeof leading_zero, "stale.safetensors.tmp.0%ld", (long)child);
    const char *kept[] = {live, dead_other, dead_suffix, leading_zero};
    CHECK(write_bytes(temp_path(dead), "partial", 7));
    for (int i = 0; i < 4; i++) CHECK(write_bytes(temp_path(kept[i]), "keep", 4));
    fn_model *m = create(MLP_SPEC);
    CHECK(fn_model_save(m, temp_path("stale.safetensors")) == FN_OK);
    CHECK(access(temp_path(dead), F_OK) != 0);
    for (int i = 0; i < 4; i++) {
        CHECK(access(temp_path(kept[i]), F_OK) == 0);
        remove(temp_path(kept[i]));
    }
    remove(temp_path("stale.safetensors"));
    fn_model_free(m);
}

/* ---------------------------------------------------------------- schedules */

static bool close_to(double a, double b) { return fabs(a - b) <= 1e-12 * fabs(b) + 1e-300; }

/* lr of update t by the formulas of fastnet.h, written out independently here. */
static double expected_lr(const fn_schedule *s, double base, int64_t t) {
    const double pi = 3.14159265358979323846;
    if (t < s->warmup_steps) return base * (double)(t + 1) / (double)s->warmup_steps;
    double since = (double)(t - s->warmup_steps);
    switch (s->kind) {
    case FN_SCHEDULE_CONSTANT: return base;
    case FN_SCHEDULE_STEP: return base * pow(s->gamma, floor(since / (double)s->step_size));
    case FN_SCHEDULE_EXPONENTIAL: return base * pow(s->gamma, since);
    case FN_SCHEDULE_INVERSE_TIME: return base * (1.0 / (1.0 + s->decay * since));
    case FN_SCHEDULE_COSINE: {
        double done = since < (double)s->total_steps ? since : (double)s->total_steps;
        return s->min_lr + (base - s->min_lr) * 0.5 * (1 + cos(pi * done / (double)s->total_steps));
    }
    }
    return NAN;
}

static void test_schedule_formulas(void) {
    const fn_schedule schedules[] = {
        {.kind = FN_SCHEDULE_CONSTANT},
        {.kind = FN_SCHEDULE_CONSTANT, .warmup_steps = 5},
        {.kind = FN_SCHEDULE_STEP, .step_size = 3, .gamma = 0.5},
        {.kind = FN_SCHEDULE_STEP, .step_size = 1, .gamma = 1},
        {.kind = FN_SCHEDULE_EXPONENTIAL, .gamma = 0.9},
        {.kind = FN_SCHEDULE_EXPONENTIAL, .gamma = 0.95, .warmup_steps = 3},
        {.kind = FN_SCHEDULE_INVERSE_TIME, .decay = 0.1},
        {.kind = FN_SCHEDULE_INVERSE_TIME, .decay = 0},
        {.kind = FN_SCHEDULE_COSINE, .total_steps = 10},
        {.kind = FN_SCHEDULE_COSINE, .total_steps = 7, .min_lr = 0.001, .warmup_steps = 4},
    };
    const double base = 0.1;
    for (size_t i = 0; i < sizeof schedules / sizeof schedules[0]; i++) {
        bool all_close = true;
        for (int64_t t = 0; t <= 40; t++) {
            double lr = NAN;
            all_close &= fn_schedule_lr(&schedules[i], base, t, &lr) == FN_OK &&
                         close_to(lr, expected_lr(&schedules[i], base, t));
        }
        if (!all_close) printf("    schedule %zu differs from its formula\n", i);
        CHECK(all_close);
    }
    /* Values that need no formula to see. */
    double lr;
    CHECK(fn_schedule_lr(&schedules[0], base, 1000000, &lr) == FN_OK && lr == base);
    CHECK(fn_schedule_lr(&schedules[2], base, 2, &lr) == FN_OK && lr == base);
    CHECK(fn_schedule_lr(&schedules[2], base, 3, &lr) == FN_OK && lr == base / 2);
    CHECK(fn_schedule_lr(&schedules[2], base, 8, &lr) == FN_OK && lr == base / 4);
    CHECK(fn_schedule_lr(&schedules[1], base, 0, &lr) == FN_OK && close_to(lr, base / 5));
    CHECK(fn_schedule_lr(&schedules[1], base, 4, &lr) == FN_OK && lr == base);
    CHECK(fn_schedule_lr(&schedules[8], base, 0, &lr) == FN_OK && lr == base);
    CHECK(fn_schedule_lr(&schedules[8], base, 5, &lr) == FN_OK && close_to(lr, base / 2));
    CHECK(fn_schedule_lr(&schedules[8], base, 10, &lr) == FN_OK && fabs(lr) < 1e-17);
    CHECK(fn_schedule_lr(&schedules[9], base, 3, &lr) == FN_OK && close_to(lr, base));
    CHECK(fn_schedule_lr(&schedules[9], base, 4 + 7, &lr) == FN_OK && close_to(lr, 0.001));
    CHECK(fn_schedule_lr(&schedules[9], base, 500, &lr) == FN_OK && close_to(lr, 0.001));
    CHECK(fn_schedule_lr(&schedules[6], base, 10, &lr) == FN_OK && close_to(lr, base / 2));
}

/* The schedule drives the updates: SGD without momentum moves each weight by exactly lr_t * g. */
static void test_schedule_updates(void) {
    fn_model *m = create(MLP64_SPEC);
    CHECK(fn_model_current_lr(m) == 0);
    fn_schedule initial;
    CHECK(fn_model_get_schedule(m, &initial) == FN_OK && initial.kind == FN_SCHEDULE_CONSTANT &&
          initial.warmup_steps == 0);
    set_sgd(m, 0.2, 0);
    CHECK(fn_model_current_lr(m) == 0.2);
    fn_schedule step = {.kind = FN_SCHEDULE_STEP, .step_size = 2, .gamma = 0.5, .warmup_steps = 1};
    CHECK(fn_model_set_schedule(m, &step) == FN_OK);
    int64_t total = fn_model_param_total(m);
    double *params = fn_model_params(m), *grads = fn_model_grads(m);
    bool exact = true;
    for (int64_t t = 0; t < 8; t++) {
        double lr = fn_model_current_lr(m);
        exact &= close_to(lr, expected_lr(&step, 0.2, t));
        for (int64_t i = 0; i < total; i++) grads[i] = 1.0 + (double)(i % 3);
        double *before = copy_params(m);
        CHECK(fn_model_step(m) == FN_OK);
        for (int64_t i = 0; i < total; i++) exact &= params[i] == before[i] - lr * grads[i];
        free(before);
    }
    CHECK(exact);
    CHECK(fn_model_optimizer_steps(m) == 8);
    /* The schedule stays with a new learning rate, follows the step counter, and restarts with
     * a reset optimizer. */
    set_sgd(m, 0.4, 0);
    CHECK(close_to(fn_model_current_lr(m), expected_lr(&step, 0.4, 8)));
    fn_model_set_optimizer_steps(m, 3);
    CHECK(close_to(fn_model_current_lr(m), expected_lr(&step, 0.4, 3)));
    fn_model_reset_optimizer(m);
    CHECK(close_to(fn_model_current_lr(m), expected_lr(&step, 0.4, 0)));
    /* Adam too reads the scheduled rate (the first Adam step moves each weight by about lr). */
    fn_optimizer adam = {.kind = FN_OPT_ADAM, .lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-12};
    CHECK(fn_model_set_optimizer(m, &adam) == FN_OK);
    fn_schedule warm = {.kind = FN_SCHEDULE_CONSTANT, .warmup_steps = 4};
    CHECK(fn_model_set_schedule(m, &warm) == FN_OK);
    for (int64_t i = 0; i < total; i++) grads[i] = 1.0;
    double before = params[0];
    CHECK(fn_model_step(m) == FN_OK);
    CHECK(fabs((before - params[0]) - 0.01 / 4) < 1e-9);

    /* Every field is checked; a refused schedule leaves the previous one. */
    fn_schedule bad[] = {
        {.kind = (fn_schedule_kind)99},
        {.kind = FN_SCHEDULE_STEP, .step_size = 0, .gamma = 0.5},
        {.kind = FN_SCHEDULE_STEP, .step_size = 2, .gamma = 0},
        {.kind = FN_SCHEDULE_STEP, .step_size = 2, .gamma = 1.5},
        {.kind = FN_SCHEDULE_EXPONENTIAL, .gamma = NAN},
        {.kind = FN_SCHEDULE_EXPONENTIAL, .gamma = -0.5},
        {.kind = FN_SCHEDULE_INVERSE_TIME, .decay = -1},
        {.kind = FN_SCHEDULE_INVERSE_TIME, .decay = INFINITY},
        {.kind = FN_SCHEDULE_COSINE, .total_steps = 0},
        {.kind = FN_SCHEDULE_COSINE, .total_steps = 10, .min_lr = -0.1},
        {.kind = FN_SCHEDULE_COSINE, .total_steps = 10, .min_lr = NAN},
        {.kind = FN_SCHEDULE_CONSTANT, .warmup_steps = -1},
        {.kind = FN_SCHEDULE_CONSTANT, .gamma = 0.5},
        {.kind = FN_SCHEDULE_EXPONENTIAL, .gamma = 0.5, .step_size = 3},
        {.kind = FN_SCHEDULE_STEP, .step_size = 3, .gamma = 0.5, .decay = 0.1},
        {.kind = FN_SCHEDULE_INVERSE_TIME, .decay = 0.1, .total_steps = 5},
        {.kind = FN_SCHEDULE_CONSTANT, .min_lr = 0.01},
    };
    const char *words[] = {
        "unknown kind",  "step_size must be >= 1", "gamma must be in (0, 1]", "got 1.5",
        "gamma",         "gamma",                  "decay must be",           "decay",
        "total_steps",   "min_lr must be",         "min_lr",                  "warmup_steps",
        "gamma is not used", "step_size is not used", "decay is not used",
        "total_steps is not used", "min_lr is not used",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        EXPECT_ERROR(fn_model_set_schedule(m, &bad[i]), FN_EINVAL, words[i]);
        double lr;
        EXPECT_ERROR(fn_schedule_lr(&bad[i], 0.1, 0, &lr), FN_EINVAL, words[i]);
    }
    fn_schedule kept;
    CHECK(fn_model_get_schedule(m, &kept) == FN_OK && memcmp(&kept, &warm, sizeof kept) == 0);
    EXPECT_ERROR(fn_model_set_schedule(m, NULL), FN_EINVAL, "schedule: NULL");
    EXPECT_ERROR(fn_model_set_schedule(NULL, &warm), FN_EINVAL, "model is NULL");
    EXPECT_ERROR(fn_model_get_schedule(m, NULL), FN_EINVAL, "NULL");
    double lr;
    EXPECT_ERROR(fn_schedule_lr(&warm, -1, 0, &lr), FN_EINVAL, "base_lr");
    EXPECT_ERROR(fn_schedule_lr(&warm, NAN, 0, &lr), FN_EINVAL, "base_lr");
    EXPECT_ERROR(fn_schedule_lr(&warm, 0.1, -1, &lr), FN_EINVAL, "step must be >= 0");
    EXPECT_ERROR(fn_schedule_lr(&warm, 0.1, 0, NULL), FN_EINVAL, "lr is NULL");
    CHECK(fn_model_current_lr(NULL) == 0);
    fn_model_free(m);
}

/* ---------------------------------------------------------------- two threads */

typedef struct {
    fn_model *model;
    const dataset *data;
    const char *name; /* for the thread-local error check */
    int errors_seen;  /* own messages read back */
} training_job;

#define THREAD_STEPS 60

static void *train_job(void *arg) {
    training_job *job = arg;
    train(job->model, job->data, THREAD_STEPS, 32);
    /* Each thread reads back the message of its own last failure, however the two interleave. */
    for (int i = 0; i < 500; i++) {
        float unused;
        if (fn_model_get_tensor(job->model, job->name, &unused, 1) == FN_EINVAL &&
            strstr(fn_last_error(), job->name))
            job->errors_seen++;
    }
    return NULL;
}

static void test_threads(void) {
    dataset a = make_data(256, 10), b = make_data(256, 20);
    /* One after the other. */
    fn_model *first = create(MLP_SPEC), *second = create(NORM_SPEC);
    set_sgd(first, 0.05, 0.9);
    set_sgd(second, 0.05, 0.9);
    training_job jobs[2] = {{first, &a, "thread-a", 0}, {second, &b, "thread-b", 0}};
    train_job(&jobs[0]);
    train_job(&jobs[1]);
    void *weights_first = copy_params(first), *weights_second = copy_params(second);

    /* At the same time, from two threads. */
    fn_model *concurrent_first = create(MLP_SPEC), *concurrent_second = create(NORM_SPEC);
    set_sgd(concurrent_first, 0.05, 0.9);
    set_sgd(concurrent_second, 0.05, 0.9);
    training_job concurrent[2] = {{concurrent_first, &a, "thread-a", 0},
                                  {concurrent_second, &b, "thread-b", 0}};
    pthread_t threads[2];
    bool started = pthread_create(&threads[0], NULL, train_job, &concurrent[0]) == 0 &&
                   pthread_create(&threads[1], NULL, train_job, &concurrent[1]) == 0;
    if (!CHECK(started)) exit(1);
    pthread_join(threads[0], NULL);
    pthread_join(threads[1], NULL);
    CHECK(same_params(concurrent_first, weights_first));
    CHECK(same_params(concurrent_second, weights_second));
    CHECK(fn_model_optimizer_steps(concurrent_first) == THREAD_STEPS);
    CHECK(concurrent[0].errors_seen == 500 && concurrent[1].errors_seen == 500);
    free(weights_first);
    free(weights_second);
    fn_model_free(first);
    fn_model_free(second);
    fn_model_free(concurrent_first);
    fn_model_free(concurrent_second);
    free_data(&a);
    free_data(&b);
}

/* Batch-1 inference through convolutions and max pools, which 2 and 3 threads run as a band
 * chain (each thread its rows of every node): every image alone gives, to rounding, what it gives
 * in a batch of three (no chain) and what one thread gives; under the sanitizers, every band
 * stays within its buffers. Two networks: the CNN's layers, in float32; odd sizes, padding, no
 * bias and an overlapping pool, in float64. */
static void test_band_chains(void) {
    static const char *const specs[] = {
        "{\"format\":\"fastnet.model\",\"version\":1,\"dtype\":\"float32\",\"seed\":0,"
        "\"input_shape\":[1,28,28],\"nodes\":["
        "{\"name\":\"a\",\"op\":\"conv2d\",\"in_channels\":1,\"out_channels\":32,\"kernel_size\":[3,3]},"
        "{\"name\":\"b\",\"op\":\"relu\"},"
        "{\"name\":\"c\",\"op\":\"conv2d\",\"in_channels\":32,\"out_channels\":64,\"kernel_size\":[3,3]},"
        "{\"name\":\"d\",\"op\":\"relu\"},"
        "{\"name\":\"e\",\"op\":\"max_pool2d\",\"kernel_size\":2},"
        "{\"name\":\"f\",\"op\":\"flatten\"},"
        "{\"name\":\"g\",\"op\":\"linear\",\"in_features\":9216,\"out_features\":10}]}",
        "{\"format\":\"fastnet.model\",\"version\":1,\"dtype\":\"float64\",\"seed\":0,"
        "\"input_shape\":[3,23,29],\"nodes\":["
        "{\"name\":\"a\",\"op\":\"conv2d\",\"in_channels\":3,\"out_channels\":13,\"kernel_size\":[3,3],"
        "\"padding\":[1,1]},"
        "{\"name\":\"b\",\"op\":\"relu\"},"
        "{\"name\":\"c\",\"op\":\"conv2d\",\"in_channels\":13,\"out_channels\":8,\"kernel_size\":[3,3],"
        "\"bias\":false},"
        "{\"name\":\"e\",\"op\":\"max_pool2d\",\"kernel_size\":3,\"stride\":2,\"padding\":1}]}"};
    const int previous = fn_get_num_threads();
    for (int s = 0; s < 2; s++) {
        double *reference = NULL;
        int64_t out = 0;
        for (int threads = 1; threads <= 3; threads++) {
            fn_set_num_threads(threads);
            fn_model *m = create(specs[s]);
            CHECK(fn_model_init_params(m, 7) == FN_OK);
            const int64_t in = fn_model_input_size(m);
            out = fn_model_output_size(m);
            const bool wide = fn_model_dtype(m) == FN_FLOAT64;
            const size_t elem = wide ? 8 : 4;
            char *x = calloc((size_t)(3 * in), elem), *alone = calloc((size_t)(3 * out), elem),
                 *batch = calloc((size_t)(3 * out), elem);
            if (!CHECK(x && alone && batch)) exit(1);
            uint64_t state = 11;
            for (int64_t i = 0; i < 3 * in; i++) {
                double v = 2 * random_uniform(&state) - 1;
                if (wide) ((double *)x)[i] = v;
                else ((float *)x)[i] = (float)v;
            }
            for (int image = 0; image < 3; image++)
                CHECK(fn_model_predict(m, x + (size_t)(image * in) * elem, 1,
                                       alone + (size_t)(image * out) * elem) == FN_OK);
            CHECK(fn_model_predict(m, x, 3, batch) == FN_OK);
            if (!reference) reference = calloc((size_t)(3 * out), sizeof(double));
            if (!CHECK(reference != NULL)) exit(1);
            double worst = 0, scale = 0;
            for (int64_t i = 0; i < 3 * out; i++) {
                double one = wide ? ((double *)alone)[i] : ((float *)alone)[i];
                double three = wide ? ((double *)batch)[i] : ((float *)batch)[i];
                if (threads == 1) reference[i] = one;
                double d = fabs(one - three), r = fabs(one - reference[i]);
                worst = fmax(worst, fmax(d, r));
                scale = fmax(scale, fabs(reference[i]));
            }
            CHECK(scale > 0 && worst <= (wide ? 1e-12 : 1e-4) * scale);
            free(x);
            free(alone);
            free(batch);
            fn_model_free(m);
        }
        free(reference);
    }
    fn_set_num_threads(previous);
}

/* Deterministic mode: the same weights on 1, 2 and 3 threads. */
static void test_deterministic(void) {
    dataset d = make_data(512, 30);
    int threads_before = fn_get_num_threads();
    CHECK(fn_get_deterministic() == 0);
    fn_set_deterministic(1);
    CHECK(fn_get_deterministic() == 1);
    const char *const specs[] = {CONV_SPEC, NORM_SPEC, WINOGRAD_GROUPS_SPEC};
    for (int s = 0; s < 3; s++) {
        void *first = NULL;
        for (int threads = 1; threads <= 3; threads++) {
            fn_set_num_threads(threads);
            fn_model *m = create(specs[s]);
            set_sgd(m, 0.05, 0.9);
            train(m, &d, 12, 64);
            if (!first) first = copy_params(m);
            else CHECK(same_params(m, first));
            fn_model_free(m);
        }
        free(first);
    }
    fn_set_deterministic(0);
    CHECK(fn_get_deterministic() == 0);
    fn_set_num_threads(threads_before);
    free_data(&d);
}

/* ---------------------------------------------------------------- error paths */

static void test_spec_errors(void) {
    fn_model *m = (fn_model *)&m;
    EXPECT_ERROR(fn_model_create(NULL, &m), FN_EINVAL, "spec is NULL");
    CHECK(m == NULL); /* *out is reset on failure */
    EXPECT_ERROR(fn_model_create(MLP_SPEC, NULL), FN_EINVAL, "out is NULL");
    EXPECT_ERROR(fn_model_create("", &m), FN_EINVAL, "JSON");
    EXPECT_ERROR(fn_model_create("{\"format\": \"fastnet.model\",", &m), FN_EINVAL, "JSON");
    EXPECT_ERROR(fn_model_create("not json", &m), FN_EINVAL, "spec: JSON");
    EXPECT_ERROR(fn_model_create("[1, 2]", &m), FN_EINVAL, "must be a JSON object");
    EXPECT_ERROR(fn_model_create("{\"format\": \"onnx\", \"version\": 1}", &m), FN_EINVAL,
                 "fastnet.model");
    EXPECT_ERROR(fn_model_create("{\"format\": \"fastnet.model\", \"version\": 1, \"dtype\": "
                                 "\"float16\", \"input_shape\": [4], \"nodes\": [{\"name\": \"0\","
                                 " \"op\": \"relu\"}]}",
                                 &m),
                 FN_EINVAL, "float16");
    EXPECT_ERROR(fn_model_create("{\"format\": \"fastnet.model\", \"version\": 1, "
                                 "\"input_shape\": [4], \"nodes\": [{\"name\": \"0\", \"op\": "
                                 "\"conv9d\"}]}",
                                 &m),
                 FN_EINVAL, "unknown op 'conv9d'");
    /* Shapes that do not chain: Linear(16, 32) then Linear(31, 4). */
    EXPECT_ERROR(fn_model_create(
                     "{\"format\": \"fastnet.model\", \"version\": 1, \"input_shape\": [16],"
                     " \"nodes\": [{\"name\": \"0\", \"op\": \"linear\", \"in_features\": 16, "
                     "\"out_features\": 32}, {\"name\": \"1\", \"op\": \"linear\", "
                     "\"in_features\": 31, \"out_features\": 4}]}",
                     &m),
                 FN_EINVAL, "expects 31 input features");
    EXPECT_ERROR(fn_model_create(
                     "{\"format\": \"fastnet.model\", \"version\": 1, \"input_shape\": [0],"
                     " \"nodes\": [{\"name\": \"0\", \"op\": \"relu\"}]}",
                     &m),
                 FN_EINVAL, "input_shape");
    CHECK(m == NULL);
}

static void test_run_errors(void) {
    fn_model *m = create(MLP_SPEC);
    dataset d = make_data(64, 5);
    fn_loss loss = {FN_LOSS_CROSS_ENTROPY}, unknown_loss = {.kind = (fn_loss_kind)99};
    double value;
    float y[64 * CLASSES], grad[64 * CLASSES] = {0};

    /* Order of calls. */
    EXPECT_ERROR(fn_model_train_step(m, d.x, d.y, FN_LABEL_I32, 8, &loss, &value), FN_ESTATE,
                 "no optimizer");
    EXPECT_ERROR(fn_model_step(m), FN_ESTATE, "no optimizer");
    EXPECT_ERROR(fn_model_backward(m, grad, 8, NULL), FN_ESTATE, "needs a forward");
    CHECK(fn_model_forward(m, d.x, 8, y, 0) == FN_OK); /* not kept */
    EXPECT_ERROR(fn_model_backward(m, grad, 8, NULL), FN_ESTATE, "needs a forward");
    CHECK(fn_model_forward(m, d.x, 8, y, 1) == FN_OK);
    EXPECT_ERROR(fn_model_backward(m, grad, 4, NULL), FN_ESTATE, "same batch");
    grad[3] = NAN;
    EXPECT_ERROR(fn_model_backward(m, grad, 8, NULL), FN_EINVAL, "grad_out contains NaN");
    grad[3] = 0;
    EXPECT_ERROR(fn_model_backward(m, NULL, 8, NULL), FN_EINVAL, "NULL");
    CHECK(fn_model_backward(m, grad, 8, NULL) == FN_OK);
    EXPECT_ERROR(fn_model_backward(NULL, grad, 8, NULL), FN_EINVAL, "model is NULL");

    /* Optimizers. */
    fn_optimizer bad_lr = {.kind = FN_OPT_SGD, .lr = -0.1};
    fn_optimizer bad_kind = {.kind = (fn_optimizer_kind)9, .lr = 0.1};
    fn_optimizer bad_momentum = {.kind = FN_OPT_SGD, .lr = 0.1, .momentum = -1};
    fn_optimizer bad_betas = {.kind = FN_OPT_ADAM, .lr = 0.1, .beta1 = 1, .beta2 = 0.9};
    EXPECT_ERROR(fn_model_set_optimizer(m, &bad_lr), FN_EINVAL, "lr must be");
    EXPECT_ERROR(fn_model_set_optimizer(m, &bad_kind), FN_EINVAL, "unknown kind");
    EXPECT_ERROR(fn_model_set_optimizer(m, &bad_momentum), FN_EINVAL, "momentum");
    EXPECT_ERROR(fn_model_set_optimizer(m, &bad_betas), FN_EINVAL, "betas");
    EXPECT_ERROR(fn_model_set_optimizer(m, NULL), FN_EINVAL, "NULL");
    EXPECT_ERROR(fn_model_set_optimizer(NULL, &bad_lr), FN_EINVAL, "model is NULL");
    EXPECT_ERROR(fn_model_step(NULL), FN_EINVAL, "model is NULL");
    set_sgd(m, 0.1, 0.9);

    /* Inputs, labels and shapes of a training step. */
    int32_t labels[8] = {0, 1, 2, 3, 0, 1, 2, 3};
    void *before = copy_params(m);
    labels[5] = CLASSES;
    EXPECT_ERROR(fn_model_train_step(m, d.x, labels, FN_LABEL_I32, 8, &loss, &value), FN_EINVAL,
                 "label 4 at index 5 is out of range for 4 classes");
    labels[5] = -1;
    EXPECT_ERROR(fn_model_train_step(m, d.x, labels, FN_LABEL_I32, 8, &loss, &value), FN_EINVAL,
                 "label -1 at index 5");
    labels[5] = 1;
    uint64_t big_labels[2] = {0, UINT64_MAX};
    EXPECT_ERROR(fn_model_train_step(m, d.x, big_labels, FN_LABEL_U64, 2, &loss, &value),
                 FN_EINVAL, "out of range");
    EXPECT_ERROR(fn_model_train_step(m, d.x, labels, (fn_label_type)42, 8, &loss, &value),
                 FN_EINVAL, "unknown label type");
    EXPECT_ERROR(fn_model_train_step(m, d.x, NULL, FN_LABEL_I32, 8, &loss, &value), FN_EINVAL,
                 "labels: NULL");
    EXPECT_ERROR(fn_model_train_step(m, NULL, labels, FN_LABEL_I32, 8, &loss, &value), FN_EINVAL,
                 "input is NULL");
    EXPECT_ERROR(fn_model_train_step(NULL, d.x, labels, FN_LABEL_I32, 8, &loss, &value),
                 FN_EINVAL, "model is NULL");
    EXPECT_ERROR(fn_model_train_step(m, d.x, labels, FN_LABEL_I32, 0, &loss, &value), FN_EINVAL,
                 "batch size");
    EXPECT_ERROR(fn_model_train_step(m, d.x, labels, FN_LABEL_I32, 8, NULL, &value), FN_EINVAL,
                 "unknown loss");
    EXPECT_ERROR(fn_model_train_step(m, d.x, labels, FN_LABEL_I32, 8, &unknown_loss, &value),
                 FN_EINVAL, "unknown loss");
    float saved = d.x[3 * FEATURES + 2];
    d.x[3 * FEATURES + 2] = NAN;
    EXPECT_ERROR(fn_model_train_step(m, d.x, labels, FN_LABEL_I32, 8, &loss, &value), FN_EINVAL,
                 "sample 3, feature 2");
    EXPECT_ERROR(fn_model_forward(m, d.x, 8, y, 1), FN_EINVAL, "NaN or Inf");
    d.x[3 * FEATURES + 2] = INFINITY;
    EXPECT_ERROR(fn_model_forward(m, d.x, 8, y, 0), FN_EINVAL, "sample 3, feature 2");
    d.x[3 * FEATURES + 2] = saved;
    EXPECT_ERROR(fn_model_forward(m, NULL, 8, y, 0), FN_EINVAL, "input is NULL");
    EXPECT_ERROR(fn_model_forward(NULL, d.x, 8, y, 0), FN_EINVAL, "model is NULL");
    CHECK(same_params(m, before)); /* nothing above trained */

    /* A loss that overflows: refused with the weights left as they were. Every weight and input
     * is 1e30, so every hidden unit is +inf after its ReLU and every logit is inf, whatever
     * the kernels' order of summation. */
    float *weights = fn_model_params(m);
    for (int64_t i = 0; i < fn_model_param_total(m); i++) weights[i] = 1e30f;
    void *blown = copy_params(m);
    float large[8 * FEATURES];
    for (int i = 0; i < 8 * FEATURES; i++) large[i] = 1e30f;
    EXPECT_ERROR(fn_model_train_step(m, large, labels, FN_LABEL_I32, 8, &loss, &value),
                 FN_ENUMERIC, "not updated");
    CHECK(same_params(m, blown));
    free(blown);
    free(before);

    EXPECT_ERROR(fn_model_init_params(NULL, 1), FN_EINVAL, "NULL");
    free_data(&d);
    fn_model_free(m);
}

int main(void) {
    printf("fastnet %s, OpenMP %s, %d threads\n", fn_version(), fn_has_openmp() ? "on" : "off",
           fn_get_num_threads());
    snprintf(temp_dir, sizeof temp_dir, "/tmp/fastnet-test-api-XXXXXX");
    if (!mkdtemp(temp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_version_and_blas();
    test_create_and_train();
    test_predict();
    test_keep_outputs();
    test_tensors();
    test_files();
    test_stale_temporaries();
    test_schedule_formulas();
    test_schedule_updates();
    test_threads();
    test_band_chains();
    test_deterministic();
    test_spec_errors();
    test_run_errors();

    const char *names[] = {"mlp.safetensors", "mlp64.safetensors", "norm.safetensors",
                           "good.safetensors", "empty", "truncated", "garbage", "corrupt", "nan",
                           "plain"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) remove(temp_path(names[i]));
    if (rmdir(temp_dir) != 0) printf("note: %s was not removed\n", temp_dir);

    return check_report();
}
