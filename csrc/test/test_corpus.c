/* test_corpus.c — replays every file in test/corpus/ through the safetensors reader and the model
 * loader, from the file and from memory.
 *
 * The corpus holds the fuzzer's seeds and every crashing input it has found (tools/fuzz.sh). Each
 * file must either load or fail with a message; under `make sanitize` a crash, a leak or undefined
 * behaviour on any of them fails the run. Both readers must agree on whether a file is valid.
 *
 *   build/test_corpus [DIRECTORY]     (default: the corpus this file was built next to)
 */
#include "internal.h"

#include "model.h"
#include "safetensors.h"
#include "test/check.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FN_CORPUS_DIR
#define FN_CORPUS_DIR "test/corpus"
#endif

/* The whole file in a malloc'd buffer (NULL if it cannot be read). */
static unsigned char *read_file(const char *path, size_t *size) {
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    unsigned char *data = NULL;
    size_t used = 0, capacity = 0;
    for (;;) {
        if (used == capacity) {
            capacity = capacity ? capacity * 2 : 4096;
            unsigned char *grown = realloc(data, capacity);
            if (!grown) {
                free(data);
                fclose(file);
                return NULL;
            }
            data = grown;
        }
        size_t n = fread(data + used, 1, capacity - used, file);
        used += n;
        if (n == 0) break;
    }
    fclose(file);
    *size = used;
    return data;
}

/* A failure must come with a message. */
static bool failed_with_message(fn_status status) {
    const char *message = fn_last_error();
    return status != FN_OK && message && message[0];
}

static void replay(const char *path) {
    size_t size = 0;
    unsigned char *bytes = read_file(path, &size);
    if (!CHECK(bytes != NULL)) {
        printf("    cannot read %s\n", path);
        return;
    }

    fn_safetensors *from_file = NULL, *from_memory = NULL;
    fn_status read_status = fn_safetensors_read(path, &from_file);
    bool read_ok = read_status == FN_OK || failed_with_message(read_status);
    fn_status parse_status = fn_safetensors_parse(bytes, size, &from_memory);
    bool parse_ok = parse_status == FN_OK || failed_with_message(parse_status);
    bool agree = (read_status == FN_OK) == (parse_status == FN_OK);
    if (!CHECK(read_ok && parse_ok && agree)) printf("    safetensors: %s\n", path);
    if (from_file && from_memory) {
        bool same = fn_safetensors_count(from_file) == fn_safetensors_count(from_memory);
        for (size_t i = 0; same && i < fn_safetensors_count(from_file); i++) {
            const fn_st_tensor *a = fn_safetensors_tensor(from_file, i);
            const fn_st_tensor *b = fn_safetensors_tensor(from_memory, i);
            size_t nbytes = 0;
            same = strcmp(a->name, b->name) == 0 && fn_st_tensor_nbytes(a, &nbytes) &&
                   memcmp(a->data, b->data, nbytes) == 0;
        }
        if (!CHECK(same)) printf("    file and memory readers differ: %s\n", path);
    }
    fn_safetensors_free(from_file);
    fn_safetensors_free(from_memory);

    fn_model *loaded = NULL, *loaded_bytes = NULL;
    fn_status load_status = fn_model_load(path, &loaded);
    fn_status bytes_status = fn_model_load_bytes(bytes, size, &loaded_bytes);
    bool load_ok = load_status == FN_OK ? loaded != NULL : failed_with_message(load_status);
    bool bytes_ok =
        bytes_status == FN_OK ? loaded_bytes != NULL : failed_with_message(bytes_status);
    if (!CHECK(load_ok && bytes_ok && load_status == bytes_status))
        printf("    model: %s (status %d from the file, %d from memory)\n", path,
               (int)load_status, (int)bytes_status);
    fn_model_free(loaded);
    fn_model_free(loaded_bytes);
    free(bytes);
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    const char *directory = argc > 1 ? argv[1] : FN_CORPUS_DIR;
    DIR *dir = opendir(directory);
    if (!dir) {
        printf("cannot open the corpus directory %s\n", directory);
        return 1;
    }
    char **names = NULL;
    size_t count = 0;
    for (struct dirent *entry; (entry = readdir(dir)) != NULL;) {
        if (entry->d_name[0] == '.') continue;
        char **grown = realloc(names, (count + 1) * sizeof *names);
        if (!grown) break;
        names = grown;
        names[count] = malloc(strlen(directory) + strlen(entry->d_name) + 2);
        if (!names[count]) break;
        sprintf(names[count], "%s/%s", directory, entry->d_name);
        count++;
    }
    closedir(dir);
    qsort(names, count, sizeof *names, compare_names);
    CHECK(count >= 10); /* the seeds at least: an empty corpus would test nothing */
    for (size_t i = 0; i < count; i++) {
        replay(names[i]);
        free(names[i]);
    }
    free(names);
    printf("replayed %zu corpus files from %s\n", count, directory);
    return check_report();
}
