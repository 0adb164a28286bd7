/* json.h — a strict JSON (RFC 8259) reader into a tree, typed getters for specs, and a growable
 * string buffer for writing JSON.
 *
 * The reader is meant for hostile input (model files, specs from anywhere): it accepts exactly the
 * RFC grammar, validates UTF-8, bounds nesting at FN_JSON_MAX_DEPTH, rejects duplicate object keys,
 * and allocates memory proportional to the input length only. It never reads past `length`.
 */
#ifndef FASTNET_JSON_H
#define FASTNET_JSON_H

#include "internal.h"

/* Arrays and objects nest at most this deep; one level deeper is a format error. Parsing recurses
 * once per level, so this also bounds the stack the parser uses. */
#define FN_JSON_MAX_DEPTH 64

typedef enum {
    FN_JSON_NULL,
    FN_JSON_BOOL,
    FN_JSON_NUMBER,
    FN_JSON_STRING,
    FN_JSON_ARRAY,
    FN_JSON_OBJECT
} fn_json_type;

typedef struct fn_json fn_json;
struct fn_json {
    fn_json_type type;
    int boolean;   /* FN_JSON_BOOL: 0 or 1 */
    double number; /* FN_JSON_NUMBER: the nearest double (always finite) */
    char *string;  /* FN_JSON_STRING: unescaped UTF-8, NUL-terminated (\u0000 is rejected, so the
                    * terminator is the only NUL) */
    size_t length; /*   its length in bytes */
    size_t count;  /* FN_JSON_ARRAY / FN_JSON_OBJECT: number of items */
    fn_json *items; /* FN_JSON_ARRAY / FN_JSON_OBJECT: the values, in document order */
    char **keys;    /* FN_JSON_OBJECT: the keys (NUL-terminated, unique), in the same order */
    /* FN_JSON_NUMBER written as an integer literal (no fraction, no exponent) that fits int64_t:
     * has_integer is 1 and `integer` holds its exact value, which `number` may only approximate
     * beyond 2^53. */
    int has_integer;
    int64_t integer;
};

/* Parses `length` bytes of `text` (no terminator needed) into a new tree in *out. The whole input
 * must be one value, optionally surrounded by whitespace. Fails with FN_EFORMAT and the message
 * "JSON: <what> at byte N", or FN_ENOMEM. *out is set only on success. */
fn_status fn_json_parse(const char *text, size_t length, fn_json **out);
/* Frees a tree returned by fn_json_parse (NULL is accepted). */
void fn_json_free(fn_json *value);

/* The value under `key`, or NULL when `object` is NULL, not an object, or has no such key. Keys are
 * unique: the parser rejects an object with a duplicate key. */
const fn_json *fn_json_get(const fn_json *object, const char *key);

/* Name of a type for messages: "null", "a boolean", "a number", "a string", "an array",
 * "an object". */
const char *fn_json_type_name(fn_json_type type);

/* The value as an int64_t when it is a number with an integral value inside int64_t's range
 * (1, -3, 1e3, 2.0); returns false otherwise (not a number, a fraction, out of range). */
bool fn_json_to_int64(const fn_json *value, int64_t *out);

/* Typed getters for reading specs. `where` names the object in messages (e.g. a node name); NULL
 * reads as "JSON". Each returns:
 *   FN_OK with the value in *out when the key is present with the right type;
 *   FN_OK with default_value in *out when the key is absent (or null) and required == 0;
 *   FN_EINVAL "<where>: missing \"key\"" when the key is absent (or null) and required != 0;
 *   FN_EINVAL "<where>: \"key\" must be <type> (got <type>)" when the type is wrong;
 *   FN_EINVAL "<where>: expected an object" when `object` is not an object.
 * *out is left untouched on failure. fn_json_get_string's result points into the tree (or is
 * default_value) and lives as long as the tree. */
fn_status fn_json_get_int(const fn_json *object, const char *key, int required,
                          int64_t default_value, int64_t *out, const char *where);
fn_status fn_json_get_number(const fn_json *object, const char *key, int required,
                             double default_value, double *out, const char *where);
fn_status fn_json_get_bool(const fn_json *object, const char *key, int required,
                           int default_value, int *out, const char *where);
fn_status fn_json_get_string(const fn_json *object, const char *key, int required,
                             const char *default_value, const char **out, const char *where);

/* True if the `length` bytes at `s` are well-formed UTF-8 (shortest forms, no surrogates, nothing
 * above U+10FFFF). NUL bytes count as valid here. */
bool fn_utf8_valid(const char *s, size_t length);

/* ---------------------------------------------------------------- string buffer
 *
 * A growable byte buffer for building JSON text. Start from `fn_strbuf b = {0};`. An allocation
 * failure sets `failed` and turns every later append into a no-op, so a writer appends freely
 * and checks `failed` once at the end. While not failed and non-empty, data[length] is a NUL.
 * The memory comes from malloc/realloc; fn_strbuf_free releases it and resets the buffer. */
typedef struct {
    char *data;
    size_t length, capacity;
    int failed; /* set when an allocation failed */
} fn_strbuf;

void fn_strbuf_append(fn_strbuf *b, const char *s, size_t n);
void fn_strbuf_printf(fn_strbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Appends `s` (NUL-terminated UTF-8) as a JSON string literal: quotes, with ", \ and control
 * characters escaped. Bytes that are not valid UTF-8 are written as U+FFFD, so the output is
 * always valid JSON. */
void fn_strbuf_append_json_string(fn_strbuf *b, const char *s);
void fn_strbuf_free(fn_strbuf *b);

#endif /* FASTNET_JSON_H */
