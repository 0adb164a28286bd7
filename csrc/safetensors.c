/* safetensors.c — validated reading and atomic writing of safetensors files.
 *
 * Reading happens in two steps shared by files and memory buffers: parse_header checks the whole
 * header against the size of the data buffer and lays the tensors out (each on its own 64-byte
 * boundary in one fn_alloc'd block), then the caller copies every tensor's bytes into place. Only
 * after the header has been found consistent with the file size is anything allocated for data,
 * so a hostile file cannot make the reader allocate more than it is large.
 */
#include "internal.h"

#include "json.h"
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* Tensor bytes go to and from files as they are in memory; the format is little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c copies tensors in host byte order, which must be little-endian"
#endif

#define ST_DATA_ALIGNMENT 64 /* each tensor's data starts on a cache line, like fn_alloc's */
#define ST_METADATA_KEY "__metadata__"
#define ST_NAME_LIMIT "200" /* names longer than this are cut short in messages */

/* ---------------------------------------------------------------- dtypes */

static const struct {
    fn_st_dtype dtype;
    const char *name;
    size_t size;
} st_dtypes[] = {
    {FN_ST_F32, "F32", 4},       {FN_ST_F64, "F64", 8},         {FN_ST_I64, "I64", 8},
    {FN_ST_I32, "I32", 4},       {FN_ST_U8, "U8", 1},           {FN_ST_U64, "U64", 8},
    {FN_ST_I8, "I8", 1},         {FN_ST_I16, "I16", 2},         {FN_ST_U16, "U16", 2},
    {FN_ST_U32, "U32", 4},       {FN_ST_F16, "F16", 2},         {FN_ST_BF16, "BF16", 2},
    {FN_ST_BOOL, "BOOL", 1},     {FN_ST_F8_E4M3, "F8_E4M3", 1}, {FN_ST_F8_E5M2, "F8_E5M2", 1},
};
#define ST_DTYPE_COUNT (sizeof st_dtypes / sizeof st_dtypes[0])

size_t fn_st_dtype_size(fn_st_dtype d) {
    for (size_t i = 0; i < ST_DTYPE_COUNT; i++)
        if (st_dtypes[i].dtype == d) return st_dtypes[i].size;
    return 0;
}

const char *fn_st_dtype_name(fn_st_dtype d) {
    for (size_t i = 0; i < ST_DTYPE_COUNT; i++)
        if (st_dtypes[i].dtype == d) return st_dtypes[i].name;
    return "unknown";
}

bool fn_st_dtype_from_name(const char *name, fn_st_dtype *out) {
    if (!name) return false;
    for (size_t i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(st_dtypes[i].name, name) == 0) {
            *out = st_dtypes[i].dtype;
            return true;
        }
    }
    return false;
}

bool fn_st_tensor_nbytes(const fn_st_tensor *t, size_t *out) {
    if (!t || t->ndim < 0 || t->ndim > FN_ST_MAX_DIMS) return false;
    size_t bytes = fn_st_dtype_size(t->dtype);
    if (bytes == 0) return false;
    bool overflow = false, empty = false;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0) return false;
        if (t->shape[d] == 0) empty = true;
        /* A huge dimension next to a zero one still makes an empty tensor. */
        if ((uint64_t)t->shape[d] > SIZE_MAX || !fn_mul_size(bytes, (size_t)t->shape[d], &bytes))
            overflow = true;
    }
    if (empty) {
        *out = 0;
        return true;
    }
    if (overflow) return false;
    *out = bytes;
    return true;
}

/* ---------------------------------------------------------------- the parsed file */

struct fn_safetensors {
    size_t count;
    fn_st_tensor *tensors;           /* in the order of their data */
    const fn_st_tensor **by_name;    /* the same, sorted by name, for fn_safetensors_find */
    size_t meta_count;
    const char **meta_keys, **meta_values;
    char *strings;                   /* one block holding every name, key and value */
    void *data;                      /* fn_alloc'd; tensor i at a multiple of ST_DATA_ALIGNMENT */
};

void fn_safetensors_free(fn_safetensors *f) {
    if (!f) return;
    free(f->tensors);
    free(f->by_name);
    free(f->meta_keys);
    free(f->meta_values);
    free(f->strings);
    fn_free(f->data);
    free(f);
}

size_t fn_safetensors_count(const fn_safetensors *f) { return f ? f->count : 0; }

const fn_st_tensor *fn_safetensors_tensor(const fn_safetensors *f, size_t i) {
    if (!f || i >= f->count) return NULL;
    return &f->tensors[i];
}

const fn_st_tensor *fn_safetensors_find(const fn_safetensors *f, const char *name) {
    if (!f || !name) return NULL;
    size_t low = 0, high = f->count; /* binary search over by_name in [low, high) */
    while (low < high) {
        size_t mid = low + (high - low) / 2;
        int order = strcmp(f->by_name[mid]->name, name);
        if (order == 0) return f->by_name[mid];
        if (order < 0)
            low = mid + 1;
        else
            high = mid;
    }
    return NULL;
}

const char *fn_safetensors_metadata(const fn_safetensors *f, const char *key) {
    if (!f || !key) return NULL;
    for (size_t i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

size_t fn_safetensors_metadata_count(const fn_safetensors *f) { return f ? f->meta_count : 0; }

bool fn_safetensors_metadata_entry(const fn_safetensors *f, size_t i, const char **key,
                                   const char **value) {
    if (!f || i >= f->meta_count) return false;
    if (key) *key = f->meta_keys[i];
    if (value) *value = f->meta_values[i];
    return true;
}

/* ---------------------------------------------------------------- header validation */

/* A tensor entry while the header is checked: where its bytes are in the data buffer. */
typedef struct {
    uint64_t begin, end;
    size_t tensor; /* index of the tensor in header order */
} st_extent;

static int compare_extents(const void *a, const void *b) {
    const st_extent *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int compare_tensor_names(const void *a, const void *b) {
    const fn_st_tensor *x = *(const fn_st_tensor *const *)a;
    const fn_st_tensor *y = *(const fn_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Copies `s` (with its terminator) into the string pool at *cursor. */
static char *pool_copy(char **cursor, const char *s, size_t length) {
    char *copy = *cursor;
    memcpy(copy, s, length + 1);
    *cursor += length + 1;
    return copy;
}

/* Fails with "<source>: tensor \"<name>\": <detail>". */
static fn_status tensor_error(const char *source, const char *name, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static fn_status tensor_error(const char *source, const char *name, const char *fmt, ...) {
    char detail[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(detail, sizeof detail, fmt, args);
    va_end(args);
    return fn_error(FN_EFORMAT, "%s: tensor \"%." ST_NAME_LIMIT "s\": %s", source, name, detail);
}

/* Checks one tensor entry of the header: its dtype, shape and offsets, and that the shape's size
 * matches the bytes the offsets span. */
static fn_status check_tensor_entry(const char *source, const char *name, const fn_json *entry,
                                    uint64_t data_size, fn_st_tensor *tensor, st_extent *extent) {
    if (entry->type != FN_JSON_OBJECT)
        return tensor_error(source, name, "entry must be an object (got %s)",
                            fn_json_type_name(entry->type));

    const fn_json *dtype = fn_json_get(entry, "dtype");
    if (!dtype) return tensor_error(source, name, "missing \"dtype\"");
    if (dtype->type != FN_JSON_STRING)
        return tensor_error(source, name, "\"dtype\" must be a string (got %s)",
                            fn_json_type_name(dtype->type));
    if (!fn_st_dtype_from_name(dtype->string, &tensor->dtype))
        return tensor_error(source, name, "unknown dtype \"%.40s\"", dtype->string);

    const fn_json *shape = fn_json_get(entry, "shape");
    if (!shape) return tensor_error(source, name, "missing \"shape\"");
    if (shape->type != FN_JSON_ARRAY)
        return tensor_error(source, name, "\"shape\" must be an array (got %s)",
                            fn_json_type_name(shape->type));
    if (shape->count > FN_ST_MAX_DIMS)
        return tensor_error(source, name, "%zu dimensions, more than the %d supported",
                            shape->count, FN_ST_MAX_DIMS);
    tensor->ndim = (int)shape->count;
    size_t nbytes = fn_st_dtype_size(tensor->dtype);
    bool overflow = false, empty = false;
    for (size_t d = 0; d < shape->count; d++) {
        int64_t dim;
        if (!fn_json_to_int64(&shape->items[d], &dim) || dim < 0)
            return tensor_error(source, name, "shape[%zu] must be a non-negative integer", d);
        tensor->shape[d] = dim;
        /* An overflow is reported only after every dimension is read: a later zero makes the
         * tensor empty, and a later bad value deserves its own message. */
        if (dim == 0) empty = true;
        if ((uint64_t)dim > SIZE_MAX || !fn_mul_size(nbytes, (size_t)dim, &nbytes)) overflow = true;
    }
    if (empty) {
        nbytes = 0;
        overflow = false;
    }

    const fn_json *offsets = fn_json_get(entry, "data_offsets");
    if (!offsets) return tensor_error(source, name, "missing \"data_offsets\"");
    int64_t begin, end;
    if (offsets->type != FN_JSON_ARRAY || offsets->count != 2 ||
        !fn_json_to_int64(&offsets->items[0], &begin) ||
        !fn_json_to_int64(&offsets->items[1], &end) || begin < 0 || end < 0)
        return tensor_error(source, name,
                            "\"data_offsets\" must be an array of two non-negative integers");
    if (begin > end)
        return tensor_error(source, name, "data_offsets [%lld, %lld] end before they begin",
                            (long long)begin, (long long)end);
    if ((uint64_t)end > data_size)
        return tensor_error(source, name,
                            "data_offsets [%lld, %lld] run past the end of the %llu-byte data "
                            "buffer",
                            (long long)begin, (long long)end, (unsigned long long)data_size);
    if (overflow) return tensor_error(source, name, "shape is too large (its size overflows)");
    if ((uint64_t)nbytes != (uint64_t)(end - begin))
        return tensor_error(source, name,
                            "shape and dtype %s need %zu bytes but data_offsets [%lld, %lld] "
                            "span %lld",
                            fn_st_dtype_name(tensor->dtype), nbytes, (long long)begin,
                            (long long)end, (long long)(end - begin));
    extent->begin = (uint64_t)begin;
    extent->end = (uint64_t)end;
    return FN_OK;
}

/* Checks the metadata object: every value a string. */
static fn_status check_metadata(const char *source, const fn_json *metadata) {
    if (metadata->type != FN_JSON_OBJECT)
        return fn_error(FN_EFORMAT, "%s: \"" ST_METADATA_KEY "\" must be an object (got %s)",
                        source, fn_json_type_name(metadata->type));
    for (size_t i = 0; i < metadata->count; i++)
        if (metadata->items[i].type != FN_JSON_STRING)
            return fn_error(FN_EFORMAT,
                            "%s: " ST_METADATA_KEY " \"%." ST_NAME_LIMIT "s\" must be a string "
                            "(got %s)",
                            source, metadata->keys[i], fn_json_type_name(metadata->items[i].type));
    return FN_OK;
}

/* Checks that the tensors, sorted by offset, cover [0, data_size) exactly once. */
static fn_status check_coverage(const char *source, const fn_st_tensor *tensors,
                                const st_extent *sorted, size_t count, uint64_t data_size) {
    uint64_t covered = 0; /* bytes [0, covered) belong to the tensors seen so far */
    for (size_t i = 0; i < count; i++) {
        const char *name = tensors[sorted[i].tensor].name;
        if (sorted[i].begin > covered)
            return fn_error(FN_EFORMAT,
                            "%s: bytes [%llu, %llu) of the data buffer, before tensor "
                            "\"%." ST_NAME_LIMIT "s\", belong to no tensor",
                            source, (unsigned long long)covered,
                            (unsigned long long)sorted[i].begin, name);
        if (sorted[i].begin < covered)
            return fn_error(FN_EFORMAT,
                            "%s: tensor \"%." ST_NAME_LIMIT "s\" overlaps tensor "
                            "\"%." ST_NAME_LIMIT "s\" in the data buffer",
                            source, name, tensors[sorted[i - 1].tensor].name);
        covered = sorted[i].end;
    }
    if (covered != data_size)
        return fn_error(FN_EFORMAT,
                        "%s: bytes [%llu, %llu) at the end of the data buffer belong to no tensor",
                        source, (unsigned long long)covered, (unsigned long long)data_size);
    return FN_OK;
}

/* Parses and validates `header` against a data buffer of `data_size` bytes. On success *out has
 * every tensor laid out in f->data (allocated, not yet filled) and *extents_out (for the caller to
 * free) gives, for tensor i, where its bytes are in the data buffer. */
static fn_status parse_header(const char *source, const char *header, size_t header_length,
                              uint64_t data_size, fn_safetensors **out, st_extent **extents_out) {
    fn_json *root = NULL;
    fn_safetensors *f = NULL;
    st_extent *extents = NULL;
    fn_st_tensor *in_header_order = NULL;
    const fn_json *metadata = NULL;
    size_t tensor_count = 0, meta_count = 0, pool_bytes = 0;

    fn_status status = fn_json_parse(header, header_length, &root);
    if (status != FN_OK) {
        char reason[512]; /* fn_error overwrites the message it would read from */
        snprintf(reason, sizeof reason, "%s", fn_last_error());
        return fn_error(status, "%s: header: %s", source, reason);
    }
    if (root->type != FN_JSON_OBJECT) {
        status = fn_error(FN_EFORMAT, "%s: header must be a JSON object (got %s)", source,
                          fn_json_type_name(root->type));
        goto done;
    }

    /* First pass: count, validate the metadata, and size the string pool. Every string copied
     * came from the header, so the pool is smaller than the header. */
    for (size_t i = 0; i < root->count; i++) {
        if (strcmp(root->keys[i], ST_METADATA_KEY) == 0) {
            metadata = &root->items[i];
            status = check_metadata(source, metadata);
            if (status != FN_OK) goto done;
            meta_count = metadata->count;
            for (size_t k = 0; k < meta_count; k++)
                pool_bytes += strlen(metadata->keys[k]) + 1 + metadata->items[k].length + 1;
        } else {
            tensor_count++;
            pool_bytes += strlen(root->keys[i]) + 1;
        }
    }

    /* calloc(0) may return NULL: ask for at least one element so that NULL means failure. */
    size_t tensor_slots = tensor_count ? tensor_count : 1, meta_slots = meta_count ? meta_count : 1;
    f = calloc(1, sizeof *f);
    extents = calloc(tensor_slots, sizeof *extents);
    in_header_order = calloc(tensor_slots, sizeof *in_header_order);
    if (f) {
        f->tensors = calloc(tensor_slots, sizeof *f->tensors);
        f->by_name = calloc(tensor_slots, sizeof *f->by_name);
        f->meta_keys = calloc(meta_slots, sizeof *f->meta_keys);
        f->meta_values = calloc(meta_slots, sizeof *f->meta_values);
        f->strings = malloc(pool_bytes ? pool_bytes : 1);
    }
    if (!f || !extents || !in_header_order || !f->tensors || !f->by_name || !f->meta_keys ||
        !f->meta_values || !f->strings) {
        status = fn_error(FN_ENOMEM, "%s: out of memory for %zu tensors", source, tensor_count);
        goto done;
    }

    /* Second pass: validate every tensor entry, in header order. */
    char *cursor = f->strings;
    size_t t = 0;
    for (size_t i = 0; i < root->count; i++) {
        if (&root->items[i] == metadata) continue;
        status = check_tensor_entry(source, root->keys[i], &root->items[i], data_size,
                                    &in_header_order[t], &extents[t]);
        if (status != FN_OK) goto done;
        in_header_order[t].name = pool_copy(&cursor, root->keys[i], strlen(root->keys[i]));
        extents[t].tensor = t;
        t++;
    }

    /* Order tensors by offset; the coverage check then compares neighbours only. */
    qsort(extents, tensor_count, sizeof *extents, compare_extents);
    status = check_coverage(source, in_header_order, extents, tensor_count, data_size);
    if (status != FN_OK) goto done;

    /* Lay the tensors out in data order, each at an aligned offset of one block. The padding adds
     * less than ST_DATA_ALIGNMENT per tensor, and each tensor took dozens of header bytes, so the
     * block stays within the file's size plus a fraction of its header's. */
    size_t layout_bytes = 0;
    for (size_t k = 0; k < tensor_count; k++) {
        size_t aligned = (layout_bytes + ST_DATA_ALIGNMENT - 1) & ~(size_t)(ST_DATA_ALIGNMENT - 1);
        size_t bytes = (size_t)(extents[k].end - extents[k].begin);
        if (aligned < layout_bytes || aligned + bytes < aligned) {
            status = fn_error(FN_ENOMEM, "%s: tensor data too large for this machine", source);
            goto done;
        }
        layout_bytes = aligned + bytes;
    }
    f->data = fn_alloc(layout_bytes);
    if (!f->data) {
        status = fn_error(FN_ENOMEM, "%s: out of memory for %zu bytes of tensor data", source,
                          layout_bytes);
        goto done;
    }
    f->count = tensor_count;
    size_t offset = 0; /* the same walk again, now placing each tensor */
    for (size_t k = 0; k < tensor_count; k++) {
        offset = (offset + ST_DATA_ALIGNMENT - 1) & ~(size_t)(ST_DATA_ALIGNMENT - 1);
        f->tensors[k] = in_header_order[extents[k].tensor];
        f->tensors[k].data = (const char *)f->data + offset;
        f->by_name[k] = &f->tensors[k];
        offset += (size_t)(extents[k].end - extents[k].begin);
    }
    /* Names are unique (the JSON reader rejects duplicate keys), so a binary search finds one. */
    qsort(f->by_name, tensor_count, sizeof *f->by_name, compare_tensor_names);

    f->meta_count = meta_count;
    for (size_t k = 0; k < meta_count; k++) {
        f->meta_keys[k] = pool_copy(&cursor, metadata->keys[k], strlen(metadata->keys[k]));
        f->meta_values[k] =
            pool_copy(&cursor, metadata->items[k].string, metadata->items[k].length);
    }

done:
    fn_json_free(root);
    free(in_header_order);
    if (status != FN_OK) {
        fn_safetensors_free(f);
        free(extents);
        return status;
    }
    *out = f;
    *extents_out = extents;
    return FN_OK;
}

static uint64_t read_le64(const unsigned char *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* Checks the 8-byte header length against the total size; *data_size receives what follows. */
static fn_status check_header_length(const char *source, uint64_t header_length,
                                     uint64_t total_size, uint64_t *data_size) {
    if (header_length > FN_ST_MAX_HEADER_BYTES)
        return fn_error(FN_EFORMAT, "%s: header length %llu exceeds the limit of %u bytes", source,
                        (unsigned long long)header_length, FN_ST_MAX_HEADER_BYTES);
    if (header_length > total_size - 8)
        return fn_error(FN_EFORMAT,
                        "%s: header length %llu runs past the end of the file (%llu bytes)",
                        source, (unsigned long long)header_length, (unsigned long long)total_size);
    *data_size = total_size - 8 - header_length;
    return FN_OK;
}

/* ---------------------------------------------------------------- reading */

fn_status fn_safetensors_parse(const void *bytes, size_t size, fn_safetensors **out) {
    const char *source = "safetensors buffer";
    if (!out) return fn_error(FN_EINVAL, "%s: no output pointer", source);
    if (!bytes && size > 0) return fn_error(FN_EINVAL, "%s: NULL bytes of size %zu", source, size);
    if (size < 8)
        return fn_error(FN_EFORMAT, "%s: %zu bytes, shorter than the 8-byte header length", source,
                        size);
    const unsigned char *b = bytes;
    uint64_t header_length = read_le64(b), data_size = 0;
    FN_TRY(check_header_length(source, header_length, size, &data_size));

    fn_safetensors *f;
    st_extent *extents;
    FN_TRY(parse_header(source, (const char *)b + 8, (size_t)header_length, data_size, &f,
                        &extents));
    const unsigned char *data = b + 8 + header_length;
    for (size_t i = 0; i < f->count; i++)
        memcpy((void *)f->tensors[i].data, data + extents[i].begin,
               (size_t)(extents[i].end - extents[i].begin));
    free(extents);
    *out = f;
    return FN_OK;
}

/* Reads exactly `n` bytes; on failure sets an FN_EIO message naming `path`. */
static fn_status read_exactly(FILE *file, void *buffer, size_t n, const char *path) {
    if (n == 0) return FN_OK;
    if (fread(buffer, 1, n, file) == n) return FN_OK;
    if (ferror(file)) return fn_error(FN_EIO, "cannot read \"%s\": %s", path, strerror(errno));
    return fn_error(FN_EIO,
                    "cannot read \"%s\": the file ended early (was it changed while being read?)",
                    path);
}

fn_status fn_safetensors_read(const char *path, fn_safetensors **out) {
    if (!path) return fn_error(FN_EINVAL, "safetensors: no path");
    if (!out) return fn_error(FN_EINVAL, "%s: no output pointer", path);
    FILE *file = fopen(path, "rb");
    if (!file) return fn_error(FN_EIO, "cannot open \"%s\": %s", path, strerror(errno));

    fn_status status;
    char *header = NULL;
    fn_safetensors *f = NULL;
    st_extent *extents = NULL;
    struct stat info;
    if (fstat(fileno(file), &info) != 0) {
        status = fn_error(FN_EIO, "cannot stat \"%s\": %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(info.st_mode)) {
        status = fn_error(FN_EIO, "cannot read \"%s\": not a regular file", path);
        goto done;
    }
    uint64_t file_size = (uint64_t)info.st_size;
    if (file_size < 8) {
        status = fn_error(FN_EFORMAT, "%s: %llu bytes, shorter than the 8-byte header length",
                          path, (unsigned long long)file_size);
        goto done;
    }
    unsigned char length_bytes[8];
    status = read_exactly(file, length_bytes, 8, path);
    if (status != FN_OK) goto done;
    uint64_t header_length = read_le64(length_bytes), data_size = 0;
    status = check_header_length(path, header_length, file_size, &data_size);
    if (status != FN_OK) goto done;
    if (data_size > SIZE_MAX) {
        status = fn_error(FN_ENOMEM, "%s: %llu bytes of data do not fit in memory", path,
                          (unsigned long long)data_size);
        goto done;
    }

    header = malloc((size_t)header_length + 1);
    if (!header) {
        status = fn_error(FN_ENOMEM, "%s: out of memory for a %llu-byte header", path,
                          (unsigned long long)header_length);
        goto done;
    }
    status = read_exactly(file, header, (size_t)header_length, path);
    if (status != FN_OK) goto done;
    status = parse_header(path, header, (size_t)header_length, data_size, &f, &extents);
    if (status != FN_OK) goto done;

    /* Tensors cover the data buffer in order without gaps, so reading them in data order reads
     * the file sequentially. */
    for (size_t i = 0; i < f->count; i++) {
        status = read_exactly(file, (void *)f->tensors[i].data,
                              (size_t)(extents[i].end - extents[i].begin), path);
        if (status != FN_OK) goto done;
    }

done:
    free(header);
    free(extents);
    fclose(file); /* read-only: nothing to lose if closing fails */
    if (status != FN_OK) {
        fn_safetensors_free(f);
        return status;
    }
    *out = f;
    return FN_OK;
}

/* ---------------------------------------------------------------- writing */

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Rejects a repeated string among `count` (the file could not say which one a reader meant). */
static fn_status check_unique(const char *const *strings, size_t count, const char *what,
                              const char *path) {
    if (count < 2) return FN_OK;
    const char **sorted = malloc(count * sizeof *sorted);
    if (!sorted) return fn_error(FN_ENOMEM, "%s: out of memory", path);
    memcpy(sorted, strings, count * sizeof *sorted);
    qsort(sorted, count, sizeof *sorted, compare_strings);
    fn_status status = FN_OK;
    for (size_t i = 1; i < count; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            status = fn_error(FN_EINVAL, "%s: duplicate %s \"%." ST_NAME_LIMIT "s\"", path, what,
                              sorted[i]);
            break;
        }
    }
    free(sorted);
    return status;
}

/* Checks the writer's arguments and builds the header text, padded to a multiple of 8 bytes. */
static fn_status build_header(const char *path, const fn_st_tensor *tensors, size_t count,
                              const char *const *meta_keys, const char *const *meta_values,
                              size_t meta_count, fn_strbuf *header) {
    if (count > 0 && !tensors) return fn_error(FN_EINVAL, "%s: NULL tensor array", path);
    if (meta_count > 0 && (!meta_keys || !meta_values))
        return fn_error(FN_EINVAL, "%s: NULL metadata arrays", path);

    const char **names = malloc((count ? count : 1) * sizeof *names);
    if (!names) return fn_error(FN_ENOMEM, "%s: out of memory", path);
    fn_status status = FN_OK;
    for (size_t i = 0; i < count && status == FN_OK; i++) {
        const fn_st_tensor *t = &tensors[i];
        size_t nbytes;
        if (!t->name)
            status = fn_error(FN_EINVAL, "%s: tensor %zu has no name", path, i);
        else if (!fn_utf8_valid(t->name, strlen(t->name)))
            status = fn_error(FN_EINVAL, "%s: tensor %zu: name is not valid UTF-8", path, i);
        else if (strcmp(t->name, ST_METADATA_KEY) == 0)
            status = fn_error(FN_EINVAL,
                              "%s: \"" ST_METADATA_KEY "\" is reserved, not a tensor name", path);
        else if (fn_st_dtype_size(t->dtype) == 0)
            status = fn_error(FN_EINVAL, "%s: tensor \"%." ST_NAME_LIMIT "s\": unknown dtype %d",
                              path, t->name, (int)t->dtype);
        else if (!fn_st_tensor_nbytes(t, &nbytes))
            status = fn_error(FN_EINVAL,
                              "%s: tensor \"%." ST_NAME_LIMIT "s\": invalid shape (ndim %d: must "
                              "be 0..%d with non-negative dimensions of a representable size)",
                              path, t->name, t->ndim, FN_ST_MAX_DIMS);
        else if (nbytes > 0 && !t->data)
            status = fn_error(FN_EINVAL, "%s: tensor \"%." ST_NAME_LIMIT "s\": NULL data", path,
                              t->name);
        names[i] = t->name;
    }
    if (status == FN_OK) status = check_unique(names, count, "tensor name", path);
    free(names);
    FN_TRY(status);
    for (size_t i = 0; i < meta_count; i++) {
        if (!meta_keys[i] || !meta_values[i])
            return fn_error(FN_EINVAL, "%s: metadata entry %zu has a NULL key or value", path, i);
        if (!fn_utf8_valid(meta_keys[i], strlen(meta_keys[i])) ||
            !fn_utf8_valid(meta_values[i], strlen(meta_values[i])))
            return fn_error(FN_EINVAL, "%s: metadata entry %zu is not valid UTF-8", path, i);
    }
    FN_TRY(check_unique(meta_keys, meta_count, "metadata key", path));

    fn_strbuf_append(header, "{", 1);
    bool first = true;
    if (meta_count > 0) {
        fn_strbuf_append_json_string(header, ST_METADATA_KEY);
        fn_strbuf_append(header, ":{", 2);
        for (size_t i = 0; i < meta_count; i++) {
            if (i > 0) fn_strbuf_append(header, ",", 1);
            fn_strbuf_append_json_string(header, meta_keys[i]);
            fn_strbuf_append(header, ":", 1);
            fn_strbuf_append_json_string(header, meta_values[i]);
        }
        fn_strbuf_append(header, "}", 1);
        first = false;
    }
    size_t offset = 0;
    for (size_t i = 0; i < count; i++) {
        const fn_st_tensor *t = &tensors[i];
        size_t nbytes;
        fn_st_tensor_nbytes(t, &nbytes); /* checked above */
        if (offset + nbytes < offset)
            return fn_error(FN_EINVAL, "%s: total tensor data overflows size_t", path);
        if (!first) fn_strbuf_append(header, ",", 1);
        first = false;
        fn_strbuf_append_json_string(header, t->name);
        fn_strbuf_printf(header, ":{\"dtype\":\"%s\",\"shape\":[", fn_st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            fn_strbuf_printf(header, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        fn_strbuf_printf(header, "],\"data_offsets\":[%zu,%zu]}", offset, offset + nbytes);
        offset += nbytes;
    }
    fn_strbuf_append(header, "}", 1);
    /* Pad with spaces (JSON whitespace) so that the data buffer starts 8-byte aligned. */
    while (!header->failed && header->length % 8 != 0) fn_strbuf_append(header, " ", 1);
    if (header->failed) return fn_error(FN_ENOMEM, "%s: out of memory for the header", path);
    if (header->length > FN_ST_MAX_HEADER_BYTES)
        return fn_error(FN_EINVAL, "%s: header of %zu bytes exceeds the limit of %u bytes", path,
                        header->length, FN_ST_MAX_HEADER_BYTES);
    return FN_OK;
}

/* Writes all `n` bytes, resuming after partial writes and interruptions. Returns 0 or an errno. */
static int write_all(int fd, const void *buffer, size_t n) {
    const char *p = buffer;
    while (n > 0) {
        /* Some systems reject single writes above 2 GB; chunking costs nothing. */
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        ssize_t written = write(fd, p, chunk);
        if (written < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (written == 0) return EIO;
        p += written;
        n -= (size_t)written;
    }
    return 0;
}

/* The directory holding `path` ("." for a bare name), malloc'd; NULL when out of memory. */
static char *parent_directory(const char *path) {
    const char *slash = strrchr(path, '/');
    char *directory;
    if (!slash) {
        directory = malloc(2);
        if (directory) strcpy(directory, ".");
    } else {
        size_t length = slash == path ? 1 : (size_t)(slash - path); /* "/x" lives in "/" */
        directory = malloc(length + 1);
        if (directory) {
            memcpy(directory, path, length);
            directory[length] = '\0';
        }
    }
    return directory;
}

/* The pid in the name of a temporary of `base` ("<base>.tmp.<pid>", the pid in decimal digits
 * only), or 0 if `name` is not one. */
static pid_t temporary_pid(const char *name, const char *base) {
    size_t length = strlen(base);
    if (strncmp(name, base, length) != 0 || strncmp(name + length, ".tmp.", 5) != 0) return 0;
    const char *digits = name + length + 5;
    long long pid = 0;
    if (*digits < '1' || *digits > '9') return 0; /* written with %ld: no sign, no leading 0 */
    for (const char *c = digits; *c; c++) {
        if (*c < '0' || *c > '9') return 0;
        pid = pid * 10 + (*c - '0');
        if (pid > INT_MAX) return 0;
    }
    return (pid_t)pid;
}

/* Removes the temporaries "<path>.tmp.<pid>" that writers killed while saving left behind
 * (nothing else would ever remove them): those whose pid has no process, kill(pid, 0) failing
 * with ESRCH. A live process's (or another user's, EPERM) stays, and so does this process's own,
 * which the save overwrites. Best effort: what cannot be listed or removed is left as it is. */
static void remove_stale_temporaries(const char *path) {
    char *directory = parent_directory(path);
    if (!directory) return;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    DIR *listing = opendir(directory);
    if (listing) {
        pid_t self = getpid();
        struct dirent *entry;
        while ((entry = readdir(listing)) != NULL) {
            pid_t pid = temporary_pid(entry->d_name, base);
            if (pid <= 0 || pid == self) continue; /* kill(0, ...) would mean our group */
            if (kill(pid, 0) == 0 || errno != ESRCH) continue;
            size_t size = strlen(directory) + strlen(entry->d_name) + 2;
            char *stale = malloc(size);
            if (!stale) break;
            snprintf(stale, size, "%s/%s", directory, entry->d_name);
            struct stat info;
            if (lstat(stale, &info) == 0 && S_ISREG(info.st_mode)) unlink(stale);
            free(stale);
        }
        closedir(listing);
    }
    free(directory);
}

/* Flushes the directory holding `path`, so that the rename survives a crash. Returns 0 or an
 * errno. */
static int sync_parent_directory(const char *path) {
    char *directory = parent_directory(path);
    if (!directory) return ENOMEM;
    int fd = open(directory, O_RDONLY | O_CLOEXEC);
    free(directory);
    if (fd < 0) return errno;
    int error = 0;
    /* Some file systems cannot sync a directory and say so with EINVAL; the data itself has
     * been synced, which is the most they offer. */
    if (fsync(fd) != 0 && errno != EINVAL) error = errno;
    close(fd);
    return error;
}

fn_status fn_safetensors_write(const char *path, const fn_st_tensor *tensors, size_t count,
                               const char *const *meta_keys, const char *const *meta_values,
                               size_t meta_count) {
    if (!path || !path[0]) return fn_error(FN_EINVAL, "safetensors: no path to write to");
    fn_strbuf header = {0};
    fn_status status = build_header(path, tensors, count, meta_keys, meta_values, meta_count,
                                    &header);
    if (status != FN_OK) {
        fn_strbuf_free(&header);
        return status;
    }

    size_t temp_size = strlen(path) + 32;
    char *temp_path = malloc(temp_size);
    if (!temp_path) {
        fn_strbuf_free(&header);
        return fn_error(FN_ENOMEM, "%s: out of memory", path);
    }
    snprintf(temp_path, temp_size, "%s.tmp.%ld", path, (long)getpid());
    remove_stale_temporaries(path);

    /* O_TRUNC rather than O_EXCL: a temp file left by a crashed process that had our pid is
     * garbage to overwrite, not a reason to fail forever. */
    int fd = open(temp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        status = fn_error(FN_EIO, "cannot write \"%s\": creating \"%s\": %s", path, temp_path,
                          strerror(errno));
        goto done;
    }

    unsigned char length_bytes[8];
    for (int i = 0; i < 8; i++)
        length_bytes[i] = (unsigned char)((uint64_t)header.length >> (8 * i));
    int error = write_all(fd, length_bytes, 8);
    if (!error) error = write_all(fd, header.data, header.length);
    for (size_t i = 0; i < count && !error; i++) {
        size_t nbytes;
        fn_st_tensor_nbytes(&tensors[i], &nbytes); /* checked by build_header */
        error = write_all(fd, tensors[i].data, nbytes);
    }
    if (!error && fsync(fd) != 0) error = errno;
    if (close(fd) != 0 && !error) error = errno; /* a delayed write error can surface here */
    if (error) {
        status = fn_error(FN_EIO, "cannot write \"%s\": writing \"%s\": %s", path, temp_path,
                          strerror(error));
        unlink(temp_path);
        goto done;
    }
    if (rename(temp_path, path) != 0) {
        status = fn_error(FN_EIO, "cannot write \"%s\": renaming \"%s\" over it: %s", path,
                          temp_path, strerror(errno));
        unlink(temp_path);
        goto done;
    }
    error = sync_parent_directory(path);
    if (error)
        status = fn_error(FN_EIO, "\"%s\" was written, but syncing its directory failed: %s", path,
                          strerror(error));

done:
    free(temp_path);
    fn_strbuf_free(&header);
    return status;
}
