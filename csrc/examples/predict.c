/* predict.c — loads a model file (written by Python's fastnet.save or by fn_model_save) and
 * prints its predictions for inputs read from a raw float32 file.
 *
 *   build/examples/predict MODEL INPUT
 *
 * INPUT holds n samples of the model's input size as float32 values in the machine's byte order,
 * one sample after another (numpy's x.astype(np.float32).tofile(path)); n is the file's size
 * divided by the size of one sample. For each sample a line is printed: the predicted class (the
 * index of the largest output, the first one on ties, as numpy's argmax), then every output
 * value, with enough digits to read back the exact value (9 significant digits for float32, 17
 * for float64), so that the output can be compared with Python's bit for bit.
 */
#include <fastnet.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what) {
    fprintf(stderr, "predict: %s: %s\n", what, fn_last_error());
    return EXIT_FAILURE;
}

/* Reads a whole file; returns its bytes (malloc'd) and size, or NULL after printing why. */
static unsigned char *read_file(const char *path, size_t *size) {
    FILE *file = fopen(path, "rb");
    if (!file) {
        perror(path);
        return NULL;
    }
    size_t capacity = 1 << 16, used = 0, got;
    unsigned char *bytes = malloc(capacity);
    while (bytes && (got = fread(bytes + used, 1, capacity - used, file)) > 0) {
        used += got;
        if (used < capacity) continue;
        unsigned char *grown = realloc(bytes, capacity * 2);
        if (!grown) free(bytes);
        bytes = grown;
        capacity *= 2;
    }
    if (!bytes) {
        fprintf(stderr, "%s: out of memory\n", path);
    } else if (ferror(file)) {
        perror(path);
        free(bytes);
        bytes = NULL;
    }
    fclose(file);
    *size = used;
    return bytes;
}

static double value_at(const void *values, int is_double, size_t i) {
    return is_double ? ((const double *)values)[i] : ((const float *)values)[i];
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL INPUT\n", argv[0]);
        return EXIT_FAILURE;
    }
    fn_model *model = NULL;
    if (fn_model_load(argv[1], &model) != FN_OK) return fail("loading the model");
    int exit_code = EXIT_FAILURE;
    int64_t input_size = fn_model_input_size(model), output_size = fn_model_output_size(model);
    int is_double = fn_model_dtype(model) == FN_FLOAT64;
    size_t element = is_double ? sizeof(double) : sizeof(float);
    size_t size = 0, sample_bytes = (size_t)input_size * sizeof(float);
    void *inputs = NULL, *outputs = NULL;
    unsigned char *file = read_file(argv[2], &size);
    if (!file) goto done;
    if (size == 0 || size % sample_bytes != 0) {
        fprintf(stderr, "predict: %s: %zu bytes is not a whole number of samples of %lld float32 "
                        "values\n", argv[2], size, (long long)input_size);
        goto done;
    }
    size_t n = size / sample_bytes, values = n * (size_t)input_size;
    inputs = malloc(values * element);
    outputs = malloc(n * (size_t)output_size * element);
    if (!inputs || !outputs) {
        fprintf(stderr, "predict: out of memory\n");
        goto done;
    }
    /* The file's floats become the model's dtype (exactly: every float is a double). */
    for (size_t i = 0; i < values; i++) {
        float v;
        memcpy(&v, file + i * sizeof v, sizeof v);
        if (is_double) ((double *)inputs)[i] = v;
        else ((float *)inputs)[i] = v;
    }
    if (fn_model_predict(model, inputs, (int64_t)n, outputs) != FN_OK) {
        fail("predicting");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        size_t row = i * (size_t)output_size;
        int64_t best = 0;
        for (int64_t c = 1; c < output_size; c++)
            if (value_at(outputs, is_double, row + (size_t)c) >
                value_at(outputs, is_double, row + (size_t)best))
                best = c;
        printf("%lld", (long long)best);
        for (int64_t c = 0; c < output_size; c++)
            printf(is_double ? " %.17g" : " %.9g", value_at(outputs, is_double, row + (size_t)c));
        printf("\n");
    }
    exit_code = EXIT_SUCCESS;
done:
    free(file);
    free(inputs);
    free(outputs);
    fn_model_free(model);
    return exit_code;
}
