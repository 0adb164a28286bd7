/* safetensors.h — reading and writing the safetensors format.
 *
 * Layout: an 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON (an object
 * mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
 * "__metadata__" object of string -> string), then the data buffer. Offsets are relative to the
 * start of the data buffer; tensors are little-endian and C-ordered, and together they cover the
 * buffer exactly, without holes or overlaps.
 *
 * Reading treats the file as hostile: every size is checked against the file before anything is
 * allocated from it, and every violation is an FN_EFORMAT naming the file and the tensor.
 */
#ifndef FASTNET_SAFETENSORS_H
#define FASTNET_SAFETENSORS_H

#include "internal.h"

/* Tensors have at most this many dimensions. */
#define FN_ST_MAX_DIMS 8
/* Headers longer than this are rejected before they are read (the reference reader's limit). */
#define FN_ST_MAX_HEADER_BYTES (100u * 1000u * 1000u)

typedef enum {
    FN_ST_F32,
    FN_ST_F64,
    FN_ST_I64,
    FN_ST_I32,
    FN_ST_U8,
    FN_ST_U64,
    FN_ST_I8,
    FN_ST_I16,
    FN_ST_U16,
    FN_ST_U32,
    FN_ST_F16,
    FN_ST_BF16,
    FN_ST_BOOL,    /* one byte per element */
    FN_ST_F8_E4M3, /* one byte per element */
    FN_ST_F8_E5M2, /* one byte per element */
} fn_st_dtype;

/* One tensor. When writing, the caller owns every pointer; a tensor read from a file points into
 * its fn_safetensors. data holds product(shape) * fn_st_dtype_size(dtype) bytes (ndim == 0 is a
 * scalar of one element). */
typedef struct {
    const char *name;
    fn_st_dtype dtype;
    int ndim;
    int64_t shape[FN_ST_MAX_DIMS];
    const void *data;
} fn_st_tensor;

/* Bytes per element (0 for a value outside the enum). */
size_t fn_st_dtype_size(fn_st_dtype d);
/* The format's name of a dtype ("F32", "BF16", ...), or "unknown". */
const char *fn_st_dtype_name(fn_st_dtype d);
/* Looks a dtype up by the format's name; false if it is not one fastnet knows. */
bool fn_st_dtype_from_name(const char *name, fn_st_dtype *out);
/* Bytes of a tensor's data: false when ndim is out of [0, FN_ST_MAX_DIMS], a dimension is
 * negative, the dtype is unknown or the size overflows size_t. */
bool fn_st_tensor_nbytes(const fn_st_tensor *t, size_t *out);

/* Writes `count` tensors (their data laid out in the given order) and optional metadata atomically:
 * a temp file "<path>.tmp.<pid>" in the same directory is written fully, fsynced, renamed over
 * `path`, and the directory is fsynced. On failure the temp file is removed and `path` keeps its
 * old contents: FN_EINVAL for bad arguments (duplicate or reserved names, invalid UTF-8, bad
 * shapes, NULL data), FN_EIO naming the path and the system's reason, FN_ENOMEM. meta_keys and
 * meta_values may be NULL when meta_count is 0. The header is padded with spaces to a multiple of
 * 8 bytes, so the data buffer starts 8-byte aligned in the file.
 *
 * One exception to "untouched": if the rename succeeded but syncing the directory then failed,
 * `path` already holds the new file and FN_EIO says so. */
fn_status fn_safetensors_write(const char *path, const fn_st_tensor *tensors, size_t count,
                               const char *const *meta_keys, const char *const *meta_values,
                               size_t meta_count);

/* A parsed file: owns its tensors' data, names and metadata. */
typedef struct fn_safetensors fn_safetensors;

/* Reads and validates the file at `path`. Fails with FN_EIO (path and system reason) when the
 * file cannot be opened or read, FN_EFORMAT when it is not a valid safetensors file, FN_ENOMEM.
 * The header is parsed by the same code as fn_safetensors_parse; tensor data is then read from
 * the file straight into place, so a file is never held in memory twice. */
fn_status fn_safetensors_read(const char *path, fn_safetensors **out);
/* The same from `size` bytes in memory (copied; the caller keeps its buffer). Messages name the
 * source as "safetensors buffer". */
fn_status fn_safetensors_parse(const void *bytes, size_t size, fn_safetensors **out);

/* Tensors in the order of their data in the file. Each tensor's data starts on a 64-byte
 * boundary, so it is aligned for every dtype and for vector loads. */
size_t fn_safetensors_count(const fn_safetensors *f);
/* NULL if i >= count. */
const fn_st_tensor *fn_safetensors_tensor(const fn_safetensors *f, size_t i);
/* NULL if absent. */
const fn_st_tensor *fn_safetensors_find(const fn_safetensors *f, const char *name);

/* Metadata: the value for `key`, or NULL if absent. Entries in the order of the file. */
const char *fn_safetensors_metadata(const fn_safetensors *f, const char *key);
size_t fn_safetensors_metadata_count(const fn_safetensors *f);
/* Key and value of entry i; false if i >= count. */
bool fn_safetensors_metadata_entry(const fn_safetensors *f, size_t i, const char **key,
                                   const char **value);

void fn_safetensors_free(fn_safetensors *f);

#endif /* FASTNET_SAFETENSORS_H */
