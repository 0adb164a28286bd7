/* json.c — strict JSON reader (RFC 8259) into a tree, typed getters, and a string buffer.
 *
 * The parser is a recursive descent whose depth is bounded by FN_JSON_MAX_DEPTH, so hostile input
 * cannot exhaust the stack. Every allocation is proportional to the bytes it describes: a string
 * gets at most its raw length, a container grows geometrically with its items and is trimmed when
 * it closes. Tree nodes use plain malloc/free: they are small, unaligned and grown with realloc,
 * none of which fn_alloc is for.
 */
#include "internal.h"

#include "json.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- UTF-8 */

static bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

/* Length of the well-formed UTF-8 sequence at s (at most `available` bytes), or 0 if the bytes
 * there are not one: a stray continuation byte, an overlong form, an encoded surrogate, a code
 * point above U+10FFFF, or a sequence cut short. */
static size_t utf8_sequence_length(const unsigned char *s, size_t available) {
    unsigned char lead = s[0];
    if (lead < 0x80) return 1;
    if (lead < 0xC2) return 0; /* continuation byte, or C0/C1 which only start overlong forms */
    if (lead < 0xE0) {
        if (available < 2 || !is_continuation(s[1])) return 0;
        return 2;
    }
    if (lead < 0xF0) {
        if (available < 3 || !is_continuation(s[1]) || !is_continuation(s[2])) return 0;
        if (lead == 0xE0 && s[1] < 0xA0) return 0;  /* overlong: below U+0800 */
        if (lead == 0xED && s[1] >= 0xA0) return 0; /* U+D800..U+DFFF: surrogates */
        return 3;
    }
    if (lead < 0xF5) {
        if (available < 4 || !is_continuation(s[1]) || !is_continuation(s[2]) ||
            !is_continuation(s[3]))
            return 0;
        if (lead == 0xF0 && s[1] < 0x90) return 0;  /* overlong: below U+10000 */
        if (lead == 0xF4 && s[1] >= 0x90) return 0; /* above U+10FFFF */
        return 4;
    }
    return 0; /* F5..FF never appear in UTF-8 */
}

bool fn_utf8_valid(const char *s, size_t length) {
    const unsigned char *bytes = (const unsigned char *)s;
    size_t i = 0;
    while (i < length) {
        size_t n = utf8_sequence_length(bytes + i, length - i);
        if (n == 0) return false;
        i += n;
    }
    return true;
}

/* Writes code point cp (a scalar value, not a surrogate) as UTF-8; returns the bytes written. */
static size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---------------------------------------------------------------- parser */

typedef struct {
    const unsigned char *text;
    size_t length;
    size_t pos;
    int depth; /* containers currently open */
} json_parser;

static fn_status fail_at(size_t at, const char *what) {
    return fn_error(FN_EFORMAT, "JSON: %s at byte %zu", what, at);
}

static fn_status fail_end(const json_parser *p) {
    return fail_at(p->length, "unexpected end of input");
}

/* Reports the byte at p->pos as unexpected, showing it when printable. */
static fn_status fail_unexpected(const json_parser *p, const char *expected) {
    unsigned char c = p->text[p->pos];
    if (c >= 0x20 && c < 0x7F)
        return fn_error(FN_EFORMAT, "JSON: unexpected character '%c'%s%s at byte %zu", c,
                        expected[0] ? ", expected " : "", expected, p->pos);
    return fn_error(FN_EFORMAT, "JSON: unexpected byte 0x%02X%s%s at byte %zu", c,
                    expected[0] ? ", expected " : "", expected, p->pos);
}

static void skip_whitespace(json_parser *p) {
    while (p->pos < p->length) {
        unsigned char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Frees what a value owns, leaving the node itself (it lives in its parent's items array). */
static void free_contents(fn_json *v) {
    free(v->string);
    for (size_t i = 0; i < v->count; i++) {
        free_contents(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

/* Reads the four hex digits of a \u escape at `at` into *unit. */
static fn_status read_hex4(const json_parser *p, size_t at, uint32_t *unit) {
    if (p->length - at < 4) return fail_end(p);
    uint32_t value = 0;
    for (size_t i = 0; i < 4; i++) {
        int h = hex_value(p->text[at + i]);
        if (h < 0) return fail_at(at + i, "invalid hex digit in a \\u escape");
        value = value * 16 + (uint32_t)h;
    }
    *unit = value;
    return FN_OK;
}

/* Parses the string literal at p->pos (an opening quote) into a new NUL-terminated buffer. */
static fn_status parse_string(json_parser *p, char **out, size_t *out_length) {
    size_t start = p->pos;
    size_t i = start + 1;

    /* Find the closing quote first: the unescaped string is never longer than its literal, so
     * one allocation of that size holds it. */
    size_t end = i;
    while (end < p->length && p->text[end] != '"') end += p->text[end] == '\\' ? 2 : 1;
    if (end >= p->length) return fail_at(start, "unterminated string");

    char *buffer = malloc(end - i + 1);
    if (!buffer)
        return fn_error(FN_ENOMEM, "JSON: out of memory for a string of %zu bytes", end - i);
    size_t n = 0;
    fn_status status = FN_OK;

    while (i < end) {
        unsigned char c = p->text[i];
        if (c < 0x20) {
            status = fail_at(i, "control character in a string (must be escaped)");
            goto fail;
        }
        if (c == '\\') {
            unsigned char e = p->text[i + 1]; /* i + 1 < end: the scan above skipped it */
            switch (e) {
            case '"': buffer[n++] = '"'; break;
            case '\\': buffer[n++] = '\\'; break;
            case '/': buffer[n++] = '/'; break;
            case 'b': buffer[n++] = '\b'; break;
            case 'f': buffer[n++] = '\f'; break;
            case 'n': buffer[n++] = '\n'; break;
            case 'r': buffer[n++] = '\r'; break;
            case 't': buffer[n++] = '\t'; break;
            case 'u': {
                uint32_t unit;
                status = read_hex4(p, i + 2, &unit);
                if (status != FN_OK) goto fail;
                size_t escape_length = 6;
                if (unit >= 0xDC00 && unit <= 0xDFFF) {
                    status = fail_at(i, "unpaired low surrogate in a \\u escape");
                    goto fail;
                }
                if (unit >= 0xD800 && unit <= 0xDBFF) {
                    /* A high surrogate counts only as the first half of a pair. */
                    uint32_t low;
                    if (i + 12 > end || p->text[i + 6] != '\\' || p->text[i + 7] != 'u') {
                        status = fail_at(i, "unpaired high surrogate in a \\u escape");
                        goto fail;
                    }
                    status = read_hex4(p, i + 8, &low);
                    if (status != FN_OK) goto fail;
                    if (low < 0xDC00 || low > 0xDFFF) {
                        status = fail_at(i, "unpaired high surrogate in a \\u escape");
                        goto fail;
                    }
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    escape_length = 12;
                }
                if (unit == 0) {
                    /* Strings are handed out NUL-terminated; an embedded NUL would silently cut
                     * them short. */
                    status = fail_at(i, "\\u0000 is not supported in strings");
                    goto fail;
                }
                n += utf8_encode(unit, buffer + n);
                i += escape_length;
                continue;
            }
            default:
                status = fail_at(i, "invalid escape sequence");
                goto fail;
            }
            i += 2;
            continue;
        }
        if (c < 0x80) {
            buffer[n++] = (char)c;
            i++;
            continue;
        }
        size_t sequence = utf8_sequence_length(p->text + i, end - i);
        if (sequence == 0) {
            status = fail_at(i, "invalid UTF-8 in a string");
            goto fail;
        }
        memcpy(buffer + n, p->text + i, sequence);
        n += sequence;
        i += sequence;
    }
    buffer[n] = '\0';
    p->pos = end + 1;
    *out = buffer;
    *out_length = n;
    return FN_OK;

fail:
    free(buffer);
    return status;
}

/* Parses the number at p->pos. The grammar is checked here so that strtod, which would accept
 * hex, "inf", "nan" and leading '+', only ever sees a JSON number. */
static fn_status parse_number(json_parser *p, fn_json *out) {
    const unsigned char *t = p->text;
    size_t start = p->pos, i = start;
    bool negative = false;

    if (t[i] == '-') {
        negative = true;
        i++;
        if (i == p->length) return fail_end(p);
    }
    if (t[i] == '0') {
        i++;
        if (i < p->length && is_digit(t[i])) return fail_at(start, "leading zero in a number");
    } else if (is_digit(t[i])) {
        while (i < p->length && is_digit(t[i])) i++;
    } else {
        if (p->length - i >= 8 && memcmp(t + i, "Infinity", 8) == 0)
            return fail_at(start, "Infinity is not a JSON number");
        return fail_at(i, "expected a digit in a number");
    }
    size_t integer_end = i;
    bool integral_literal = true;

    if (i < p->length && t[i] == '.') {
        integral_literal = false;
        i++;
        if (i == p->length) return fail_end(p);
        if (!is_digit(t[i])) return fail_at(i, "expected a digit after the decimal point");
        while (i < p->length && is_digit(t[i])) i++;
    }
    if (i < p->length && (t[i] == 'e' || t[i] == 'E')) {
        integral_literal = false;
        i++;
        if (i < p->length && (t[i] == '+' || t[i] == '-')) i++;
        if (i == p->length) return fail_end(p);
        if (!is_digit(t[i])) return fail_at(i, "expected a digit in the exponent");
        while (i < p->length && is_digit(t[i])) i++;
    }
    size_t literal_length = i - start;

    /* strtod reads the decimal point of the current locale: substitute it for '.' so that a
     * program running under, say, a German LC_NUMERIC still reads 1.5 as 1.5. */
    const char *decimal_point = localeconv()->decimal_point;
    size_t point_length = decimal_point ? strlen(decimal_point) : 0;
    if (point_length == 0) {
        decimal_point = ".";
        point_length = 1;
    }
    char small[64];
    size_t copy_size = literal_length + point_length + 1; /* bounded by the input */
    char *copy = copy_size <= sizeof small ? small : malloc(copy_size);
    if (!copy) return fn_error(FN_ENOMEM, "JSON: out of memory for a number");
    size_t n = 0;
    for (size_t k = start; k < i; k++) {
        if (t[k] == '.') {
            memcpy(copy + n, decimal_point, point_length);
            n += point_length;
        } else {
            copy[n++] = (char)t[k];
        }
    }
    copy[n] = '\0';
    char *parsed_end = NULL;
    double value = strtod(copy, &parsed_end);
    bool complete = parsed_end == copy + n;
    if (copy != small) free(copy);
    if (!complete) return fail_at(start, "number not understood by the C library");
    if (!isfinite(value)) return fail_at(start, "number out of the range of a double");

    out->type = FN_JSON_NUMBER;
    out->number = value;

    if (integral_literal) {
        /* Accumulate the magnitude exactly; int64's negative range is one larger. */
        uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        uint64_t magnitude = 0;
        bool fits = true;
        for (size_t k = start + (negative ? 1 : 0); k < integer_end; k++) {
            uint64_t digit = (uint64_t)(t[k] - '0');
            if (magnitude > (limit - digit) / 10) {
                fits = false;
                break;
            }
            magnitude = magnitude * 10 + digit;
        }
        if (fits) {
            out->has_integer = 1;
            if (!negative)
                out->integer = (int64_t)magnitude;
            else if (magnitude == (uint64_t)INT64_MAX + 1)
                out->integer = INT64_MIN;
            else
                out->integer = -(int64_t)magnitude;
        }
    }
    p->pos = i;
    return FN_OK;
}

/* Matches the literal `word` at p->pos. */
static fn_status parse_literal(json_parser *p, const char *word) {
    size_t n = strlen(word);
    for (size_t k = 0; k < n; k++) {
        if (p->pos + k == p->length) return fail_end(p);
        if (p->text[p->pos + k] != (unsigned char)word[k])
            return fail_at(p->pos, "invalid literal");
    }
    p->pos += n;
    return FN_OK;
}

/* Grows a container's items (and keys, for an object) to hold one more. Containers start small
 * and double, so the total stays within a constant factor of the items parsed. */
static fn_status reserve_item(fn_json *container, size_t *capacity, bool with_keys) {
    if (container->count < *capacity) return FN_OK;
    size_t new_capacity = *capacity ? *capacity * 2 : 4;
    size_t item_bytes, key_bytes;
    if (new_capacity < *capacity || !fn_mul_size(new_capacity, sizeof(fn_json), &item_bytes) ||
        !fn_mul_size(new_capacity, sizeof(char *), &key_bytes))
        return fn_error(FN_ENOMEM, "JSON: container too large");
    fn_json *items = realloc(container->items, item_bytes);
    if (!items) return fn_error(FN_ENOMEM, "JSON: out of memory for %zu items", new_capacity);
    container->items = items;
    if (with_keys) {
        char **keys = realloc(container->keys, key_bytes);
        if (!keys) return fn_error(FN_ENOMEM, "JSON: out of memory for %zu keys", new_capacity);
        container->keys = keys;
    }
    *capacity = new_capacity;
    return FN_OK;
}

/* Trims a closed container's arrays to its item count; a failed shrink keeps the larger block. */
static void shrink_to_fit(fn_json *container) {
    if (container->count == 0) {
        free(container->items);
        free(container->keys);
        container->items = NULL;
        container->keys = NULL;
        return;
    }
    fn_json *items = realloc(container->items, container->count * sizeof(fn_json));
    if (items) container->items = items;
    if (container->keys) {
        char **keys = realloc(container->keys, container->count * sizeof(char *));
        if (keys) container->keys = keys;
    }
}

static int compare_key_pointers(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Rejects an object with a repeated key: which of two values a reader should take is ambiguous,
 * and a file that says two things about one tensor is not to be trusted. Sorting a copy of the
 * key pointers keeps this O(n log n) for objects with many keys. */
static fn_status check_unique_keys(const fn_json *object, size_t object_start) {
    if (object->count < 2) return FN_OK;
    const char **sorted = malloc(object->count * sizeof *sorted);
    if (!sorted) return fn_error(FN_ENOMEM, "JSON: out of memory checking %zu keys", object->count);
    for (size_t i = 0; i < object->count; i++) sorted[i] = object->keys[i];
    qsort(sorted, object->count, sizeof *sorted, compare_key_pointers);
    for (size_t i = 1; i < object->count; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            fn_status status = fn_error(FN_EFORMAT,
                                        "JSON: duplicate key \"%.200s\" in the object at byte %zu",
                                        sorted[i], object_start);
            free(sorted);
            return status;
        }
    }
    free(sorted);
    return FN_OK;
}

static fn_status parse_value(json_parser *p, fn_json *out);

/* Parses the array or object at p->pos into *out (zeroed by the caller). On failure *out holds
 * whatever was built so far, consistently, for the caller to free. */
static fn_status parse_container(json_parser *p, fn_json *out, bool is_object) {
    size_t start = p->pos;
    unsigned char close = is_object ? '}' : ']';
    if (p->depth >= FN_JSON_MAX_DEPTH)
        return fn_error(FN_EFORMAT, "JSON: nesting deeper than %d levels at byte %zu",
                        FN_JSON_MAX_DEPTH, start);
    p->depth++;
    p->pos++;
    out->type = is_object ? FN_JSON_OBJECT : FN_JSON_ARRAY;
    size_t capacity = 0;

    skip_whitespace(p);
    if (p->pos == p->length) return fail_end(p);
    if (p->text[p->pos] == close) {
        p->pos++;
        p->depth--;
        return FN_OK;
    }
    for (;;) {
        FN_TRY(reserve_item(out, &capacity, is_object));
        fn_json *item = &out->items[out->count];
        memset(item, 0, sizeof *item);
        if (is_object) {
            if (p->pos == p->length) return fail_end(p);
            if (p->text[p->pos] != '"') return fail_unexpected(p, "a string key");
            char *key;
            size_t key_length;
            FN_TRY(parse_string(p, &key, &key_length));
            out->keys[out->count] = key;
            out->count++; /* now owned by the container, and freed with it on failure */
            skip_whitespace(p);
            if (p->pos == p->length) return fail_end(p);
            if (p->text[p->pos] != ':') return fail_unexpected(p, "':'");
            p->pos++;
            skip_whitespace(p);
        } else {
            out->count++;
        }
        FN_TRY(parse_value(p, item));

        skip_whitespace(p);
        if (p->pos == p->length) return fail_end(p);
        unsigned char c = p->text[p->pos];
        if (c == close) {
            p->pos++;
            break;
        }
        if (c != ',') return fail_unexpected(p, is_object ? "',' or '}'" : "',' or ']'");
        size_t comma = p->pos++;
        skip_whitespace(p);
        if (p->pos < p->length && p->text[p->pos] == close) return fail_at(comma, "trailing comma");
    }
    shrink_to_fit(out);
    if (is_object) FN_TRY(check_unique_keys(out, start));
    p->depth--;
    return FN_OK;
}

/* Parses one value at p->pos (leading whitespace already skipped) into *out (zeroed). */
static fn_status parse_value(json_parser *p, fn_json *out) {
    if (p->pos == p->length) return fail_end(p);
    unsigned char c = p->text[p->pos];
    switch (c) {
    case '{': return parse_container(p, out, true);
    case '[': return parse_container(p, out, false);
    case '"':
        out->type = FN_JSON_STRING;
        return parse_string(p, &out->string, &out->length);
    case 't':
        out->type = FN_JSON_BOOL;
        out->boolean = 1;
        return parse_literal(p, "true");
    case 'f':
        out->type = FN_JSON_BOOL;
        return parse_literal(p, "false");
    case 'n':
        out->type = FN_JSON_NULL;
        return parse_literal(p, "null");
    case 'N':
        if (p->length - p->pos >= 3 && memcmp(p->text + p->pos, "NaN", 3) == 0)
            return fail_at(p->pos, "NaN is not a JSON number");
        return fail_unexpected(p, "a value");
    case 'I':
        if (p->length - p->pos >= 8 && memcmp(p->text + p->pos, "Infinity", 8) == 0)
            return fail_at(p->pos, "Infinity is not a JSON number");
        return fail_unexpected(p, "a value");
    default:
        if (c == '-' || is_digit(c)) return parse_number(p, out);
        return fail_unexpected(p, "a value");
    }
}

fn_status fn_json_parse(const char *text, size_t length, fn_json **out) {
    if (!out) return fn_error(FN_EINVAL, "JSON: no output pointer");
    if (!text && length > 0) return fn_error(FN_EINVAL, "JSON: NULL text of %zu bytes", length);
    json_parser p = {(const unsigned char *)text, length, 0, 0};
    fn_json *root = calloc(1, sizeof *root);
    if (!root) return fn_error(FN_ENOMEM, "JSON: out of memory");

    skip_whitespace(&p);
    fn_status status = parse_value(&p, root);
    if (status == FN_OK) {
        skip_whitespace(&p);
        if (p.pos != p.length) status = fail_unexpected(&p, "the end of the input");
    }
    if (status != FN_OK) {
        fn_json_free(root);
        return status;
    }
    *out = root;
    return FN_OK;
}

void fn_json_free(fn_json *value) {
    if (!value) return;
    free_contents(value);
    free(value);
}

/* ---------------------------------------------------------------- access */

const fn_json *fn_json_get(const fn_json *object, const char *key) {
    if (!object || object->type != FN_JSON_OBJECT || !key) return NULL;
    for (size_t i = 0; i < object->count; i++)
        if (strcmp(object->keys[i], key) == 0) return &object->items[i];
    return NULL;
}

const char *fn_json_type_name(fn_json_type type) {
    switch (type) {
    case FN_JSON_NULL: return "null";
    case FN_JSON_BOOL: return "a boolean";
    case FN_JSON_NUMBER: return "a number";
    case FN_JSON_STRING: return "a string";
    case FN_JSON_ARRAY: return "an array";
    case FN_JSON_OBJECT: return "an object";
    }
    return "an unknown type";
}

bool fn_json_to_int64(const fn_json *value, int64_t *out) {
    if (!value || value->type != FN_JSON_NUMBER) return false;
    if (value->has_integer) {
        *out = value->integer;
        return true;
    }
    double x = value->number;
    /* -2^63 and 2^63 are exact doubles, so within these bounds the conversion is defined; it
     * truncates, and converting back tells whether anything was cut off. */
    if (!(x >= -9223372036854775808.0 && x < 9223372036854775808.0)) return false;
    int64_t truncated = (int64_t)x;
    if ((double)truncated != x) return false;
    *out = truncated;
    return true;
}

static const char *where_name(const char *where) { return where ? where : "JSON"; }

/* Finds `key` for a getter: *found is NULL when the key is absent or null and not required. */
static fn_status getter_lookup(const fn_json *object, const char *key, int required,
                               const char *where, const fn_json **found) {
    if (!object || object->type != FN_JSON_OBJECT)
        return fn_error(FN_EINVAL, "%s: expected an object", where_name(where));
    if (!key) return fn_error(FN_EINVAL, "%s: no key given", where_name(where));
    const fn_json *value = fn_json_get(object, key);
    if (!value || value->type == FN_JSON_NULL) {
        if (required) return fn_error(FN_EINVAL, "%s: missing \"%s\"", where_name(where), key);
        value = NULL;
    }
    *found = value;
    return FN_OK;
}

static fn_status wrong_type(const char *where, const char *key, const char *expected,
                            const fn_json *value) {
    if (value->type == FN_JSON_NUMBER)
        return fn_error(FN_EINVAL, "%s: \"%s\" must be %s (got %.17g)", where_name(where), key,
                        expected, value->number);
    return fn_error(FN_EINVAL, "%s: \"%s\" must be %s (got %s)", where_name(where), key, expected,
                    fn_json_type_name(value->type));
}

fn_status fn_json_get_int(const fn_json *object, const char *key, int required,
                          int64_t default_value, int64_t *out, const char *where) {
    const fn_json *value;
    FN_TRY(getter_lookup(object, key, required, where, &value));
    if (!value) {
        *out = default_value;
        return FN_OK;
    }
    int64_t integer;
    if (!fn_json_to_int64(value, &integer))
        return wrong_type(where, key, "an integer within the range of int64", value);
    *out = integer;
    return FN_OK;
}

fn_status fn_json_get_number(const fn_json *object, const char *key, int required,
                             double default_value, double *out, const char *where) {
    const fn_json *value;
    FN_TRY(getter_lookup(object, key, required, where, &value));
    if (!value) {
        *out = default_value;
        return FN_OK;
    }
    if (value->type != FN_JSON_NUMBER) return wrong_type(where, key, "a number", value);
    *out = value->number;
    return FN_OK;
}

fn_status fn_json_get_bool(const fn_json *object, const char *key, int required,
                           int default_value, int *out, const char *where) {
    const fn_json *value;
    FN_TRY(getter_lookup(object, key, required, where, &value));
    if (!value) {
        *out = default_value;
        return FN_OK;
    }
    if (value->type != FN_JSON_BOOL) return wrong_type(where, key, "true or false", value);
    *out = value->boolean;
    return FN_OK;
}

fn_status fn_json_get_string(const fn_json *object, const char *key, int required,
                             const char *default_value, const char **out, const char *where) {
    const fn_json *value;
    FN_TRY(getter_lookup(object, key, required, where, &value));
    if (!value) {
        *out = default_value;
        return FN_OK;
    }
    if (value->type != FN_JSON_STRING) return wrong_type(where, key, "a string", value);
    *out = value->string;
    return FN_OK;
}

/* ---------------------------------------------------------------- string buffer */

/* Makes room for `extra` more bytes plus the terminator; false (and `failed`) if it cannot. */
static bool strbuf_reserve(fn_strbuf *b, size_t extra) {
    if (b->failed) return false;
    size_t needed = b->length + extra + 1;
    if (needed < b->length) {
        b->failed = 1;
        return false;
    }
    if (needed <= b->capacity) return true;
    size_t capacity = b->capacity < 64 ? 64 : b->capacity;
    while (capacity < needed) {
        if (capacity > SIZE_MAX / 2) {
            capacity = needed;
            break;
        }
        capacity *= 2;
    }
    char *data = realloc(b->data, capacity);
    if (!data) {
        b->failed = 1;
        return false;
    }
    b->data = data;
    b->capacity = capacity;
    return true;
}

void fn_strbuf_append(fn_strbuf *b, const char *s, size_t n) {
    if (!strbuf_reserve(b, n)) return;
    if (n) memcpy(b->data + b->length, s, n);
    b->length += n;
    b->data[b->length] = '\0';
}

void fn_strbuf_printf(fn_strbuf *b, const char *fmt, ...) {
    if (!strbuf_reserve(b, 0)) return;
    va_list args;
    va_start(args, fmt);
    va_list retry;
    va_copy(retry, args);
    size_t room = b->capacity - b->length;
    int written = vsnprintf(b->data + b->length, room, fmt, args);
    va_end(args);
    if (written < 0) {
        b->failed = 1; /* an encoding error: nothing sensible to append */
        b->data[b->length] = '\0';
    } else if ((size_t)written < room) {
        b->length += (size_t)written;
    } else if (strbuf_reserve(b, (size_t)written)) {
        vsnprintf(b->data + b->length, (size_t)written + 1, fmt, retry);
        b->length += (size_t)written;
    }
    va_end(retry);
}

void fn_strbuf_append_json_string(fn_strbuf *b, const char *s) {
    if (!s) {
        fn_strbuf_append(b, "null", 4);
        return;
    }
    const unsigned char *bytes = (const unsigned char *)s;
    size_t length = strlen(s);
    fn_strbuf_append(b, "\"", 1);
    size_t run_start = 0; /* bytes copied verbatim are appended in runs */
    size_t i = 0;
    while (i < length) {
        unsigned char c = bytes[i];
        const char *escape = NULL;
        char unicode_escape[8];
        size_t skip = 1;
        if (c == '"') escape = "\\\"";
        else if (c == '\\') escape = "\\\\";
        else if (c == '\n') escape = "\\n";
        else if (c == '\r') escape = "\\r";
        else if (c == '\t') escape = "\\t";
        else if (c == '\b') escape = "\\b";
        else if (c == '\f') escape = "\\f";
        else if (c < 0x20) {
            snprintf(unicode_escape, sizeof unicode_escape, "\\u%04x", c);
            escape = unicode_escape;
        } else if (c >= 0x80) {
            skip = utf8_sequence_length(bytes + i, length - i);
            if (skip == 0) {
                escape = "\xEF\xBF\xBD"; /* U+FFFD REPLACEMENT CHARACTER */
                skip = 1;
            }
        }
        if (escape) {
            fn_strbuf_append(b, s + run_start, i - run_start);
            fn_strbuf_append(b, escape, strlen(escape));
            run_start = i + skip;
        }
        i += skip;
    }
    fn_strbuf_append(b, s + run_start, length - run_start);
    fn_strbuf_append(b, "\"", 1);
}

void fn_strbuf_free(fn_strbuf *b) {
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->length = b->capacity = 0;
    b->failed = 0;
}
