/* fuzz_safetensors.c — libFuzzer harness for the safetensors reader and the model loader.
 *
 * Arbitrary bytes go to fn_safetensors_parse; a buffer it accepts then goes through the whole
 * model-loading path from memory (fn_model_load_bytes: the "fastnet.spec" metadata, the model it
 * builds, every tensor's dtype, shape and finiteness). Either may fail; neither may crash, leak
 * or hit undefined behaviour. Not part of `make test` (it needs clang); tools/fuzz.sh builds and
 * runs it, and test_corpus replays what it found.
 */
#include "internal.h"

#include "model.h"
#include "safetensors.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fn_safetensors *file = NULL;
    if (fn_safetensors_parse(data, size, &file) != FN_OK) return 0;
    /* Touch what the parse produced, so that a bad layout shows up here. */
    for (size_t i = 0; i < fn_safetensors_count(file); i++) {
        const fn_st_tensor *t = fn_safetensors_tensor(file, i);
        size_t nbytes = 0;
        if (!fn_st_tensor_nbytes(t, &nbytes) || fn_safetensors_find(file, t->name) != t)
            __builtin_trap();
        volatile unsigned char sink = 0;
        for (size_t k = 0; k < nbytes; k++) sink ^= ((const unsigned char *)t->data)[k];
        (void)sink;
    }
    fn_safetensors_free(file);

    fn_model *model = NULL;
    if (fn_model_load_bytes(data, size, &model) == FN_OK) fn_model_free(model);
    return 0;
}
