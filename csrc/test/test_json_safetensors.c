/* test_json_safetensors.c — checks of the JSON reader, the string buffer and safetensors files.
 *
 * A standalone program: it runs every check, prints each failure and then "N passed, M failed",
 * and exits nonzero if anything failed. Built with the sanitizers (and run under valgrind), the
 * hostile-input cases double as a check that malformed files never crash the reader or leak.
 */
#include "internal.h"

#include "json.h"
#include "safetensors.h"
#include "test/check.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool contains(const char *haystack, const char *needle) {
    return haystack && strstr(haystack, needle) != NULL;
}

/* ---------------------------------------------------------------- JSON helpers */

static fn_json *parse_text(const char *text) {
    fn_json *value = NULL;
    if (fn_json_parse(text, strlen(text), &value) != FN_OK) return NULL;
    return value;
}

/* Parses `length` bytes expecting FN_EFORMAT with `expected` in the message. */
static bool rejects_bytes(const char *text, size_t length, const char *expected) {
    fn_json *value = NULL;
    fn_status status = fn_json_parse(text, length, &value);
    if (status == FN_OK) {
        fn_json_free(value);
        printf("    accepted: %.*s\n", (int)length, text);
        return false;
    }
    if (status != FN_EFORMAT || !contains(fn_last_error(), expected)) {
        printf("    status %d, message \"%s\", expected \"%s\"\n", (int)status, fn_last_error(),
               expected);
        return false;
    }
    return value == NULL;
}

static bool rejects(const char *text, const char *expected) {
    return rejects_bytes(text, strlen(text), expected);
}

/* ---------------------------------------------------------------- JSON tests */

static void test_json_values(void) {
    fn_json *doc = parse_text(" \t\r\n{\"n\": null, \"t\": true, \"f\": false, \"i\": -42, "
                              "\"d\": 1.5e3, \"s\": \"hi\", \"a\": [1, [2, {}], []], "
                              "\"o\": {\"k\": \"v\"}}\n ");
    if (!CHECK(doc != NULL)) return;
    CHECK(doc->type == FN_JSON_OBJECT && doc->count == 8);
    CHECK(strcmp(doc->keys[0], "n") == 0 && strcmp(doc->keys[7], "o") == 0);
    CHECK(fn_json_get(doc, "n")->type == FN_JSON_NULL);
    CHECK(fn_json_get(doc, "t")->type == FN_JSON_BOOL && fn_json_get(doc, "t")->boolean == 1);
    CHECK(fn_json_get(doc, "f")->type == FN_JSON_BOOL && fn_json_get(doc, "f")->boolean == 0);
    const fn_json *i = fn_json_get(doc, "i");
    CHECK(i->type == FN_JSON_NUMBER && i->number == -42.0 && i->has_integer && i->integer == -42);
    const fn_json *d = fn_json_get(doc, "d");
    CHECK(d->type == FN_JSON_NUMBER && d->number == 1500.0 && !d->has_integer);
    const fn_json *s = fn_json_get(doc, "s");
    CHECK(s->type == FN_JSON_STRING && strcmp(s->string, "hi") == 0 && s->length == 2);
    const fn_json *a = fn_json_get(doc, "a");
    CHECK(a->type == FN_JSON_ARRAY && a->count == 3);
    CHECK(a->items[0].number == 1.0);
    CHECK(a->items[1].type == FN_JSON_ARRAY && a->items[1].count == 2);
    CHECK(a->items[1].items[1].type == FN_JSON_OBJECT && a->items[1].items[1].count == 0);
    CHECK(a->items[2].type == FN_JSON_ARRAY && a->items[2].count == 0);
    CHECK(a->keys == NULL);
    const fn_json *o = fn_json_get(doc, "o");
    CHECK(o->type == FN_JSON_OBJECT && strcmp(fn_json_get(o, "k")->string, "v") == 0);
    CHECK(fn_json_get(doc, "missing") == NULL);
    CHECK(fn_json_get(a, "n") == NULL); /* not an object */
    CHECK(fn_json_get(NULL, "n") == NULL);
    fn_json_free(doc);

    /* Scalars at the top level. */
    const char *scalars[] = {"null", "true", "false", "0", "\"\"", " 7 "};
    for (size_t k = 0; k < sizeof scalars / sizeof scalars[0]; k++) {
        fn_json *v = parse_text(scalars[k]);
        CHECK(v != NULL);
        fn_json_free(v);
    }
    fn_json_free(NULL);
}

static void test_json_numbers(void) {
    struct {
        const char *text;
        double value;
    } cases[] = {
        {"0", 0.0},          {"-0", -0.0},        {"1E+2", 100.0},   {"1e-2", 0.01},
        {"-12.25E-2", -0.1225}, {"123.456e-7", 123.456e-7}, {"1e-400", 0.0}, {"0.5", 0.5},
        {"1.7976931348623157e308", 1.7976931348623157e308},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        fn_json *v = parse_text(cases[k].text);
        if (!CHECK(v != NULL && v->type == FN_JSON_NUMBER)) {
            fn_json_free(v);
            continue;
        }
        CHECK(v->number == cases[k].value);
        fn_json_free(v);
    }
    fn_json *neg_zero = parse_text("-0");
    CHECK(neg_zero && signbit(neg_zero->number) && neg_zero->has_integer && neg_zero->integer == 0);
    fn_json_free(neg_zero);

    /* Integers beyond 2^53 keep their exact value. */
    fn_json *big = parse_text("[9007199254740993, -9223372036854775808, 9223372036854775807, "
                              "9223372036854775808, 1e3, 2.5, 1e19, -1.0]");
    if (CHECK(big != NULL && big->count == 8)) {
        int64_t x = 0;
        CHECK(fn_json_to_int64(&big->items[0], &x) && x == 9007199254740993LL);
        CHECK(fn_json_to_int64(&big->items[1], &x) && x == INT64_MIN);
        CHECK(fn_json_to_int64(&big->items[2], &x) && x == INT64_MAX);
        CHECK(!big->items[3].has_integer && !fn_json_to_int64(&big->items[3], &x));
        CHECK(fn_json_to_int64(&big->items[4], &x) && x == 1000);
        CHECK(!fn_json_to_int64(&big->items[5], &x));
        CHECK(!fn_json_to_int64(&big->items[6], &x));
        CHECK(fn_json_to_int64(&big->items[7], &x) && x == -1);
    }
    fn_json_free(big);
}

static void test_json_strings(void) {
    fn_json *v = parse_text("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"");
    CHECK(v && v->type == FN_JSON_STRING && strcmp(v->string, "\"\\/\b\f\n\r\t") == 0 &&
          v->length == 8);
    fn_json_free(v);

    v = parse_text("\"caf\\u00e9 \\u20AC \\ud83d\\ude00 \\u0041\"");
    CHECK(v && strcmp(v->string, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 A") == 0 &&
          v->length == strlen("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 A"));
    fn_json_free(v);

    /* Raw UTF-8 of every length passes through unchanged. */
    v = parse_text("\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xef\xbf\xbd\"");
    CHECK(v && strcmp(v->string,
                      "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xef\xbf\xbd") == 0);
    fn_json_free(v);

    /* The highest and lowest surrogate pairs. */
    v = parse_text("[\"\\uD800\\uDC00\", \"\\uDBFF\\uDFFF\"]");
    CHECK(v && strcmp(v->items[0].string, "\xf0\x90\x80\x80") == 0 &&
          strcmp(v->items[1].string, "\xf4\x8f\xbf\xbf") == 0);
    fn_json_free(v);

    /* Keys are unescaped too. */
    v = parse_text("{\"a\\nb\": 1, \"\\u00e9\": 2}");
    CHECK(v && fn_json_get(v, "a\nb") && fn_json_get(v, "\xc3\xa9") &&
          fn_json_get(v, "\xc3\xa9")->number == 2.0);
    fn_json_free(v);
}

static void test_json_depth(void) {
    char text[2 * (FN_JSON_MAX_DEPTH + 1) + 1];
    size_t n = 0;
    for (int k = 0; k < FN_JSON_MAX_DEPTH; k++) text[n++] = '[';
    for (int k = 0; k < FN_JSON_MAX_DEPTH; k++) text[n++] = ']';
    fn_json *v = NULL;
    CHECK(fn_json_parse(text, n, &v) == FN_OK);
    fn_json_free(v);

    n = 0;
    for (int k = 0; k < FN_JSON_MAX_DEPTH + 1; k++) text[n++] = '[';
    for (int k = 0; k < FN_JSON_MAX_DEPTH + 1; k++) text[n++] = ']';
    CHECK(rejects_bytes(text, n, "nesting deeper than 64 levels at byte 64"));

    /* Objects count the same way, mixed with arrays. */
    fn_strbuf b = {0};
    for (int k = 0; k < FN_JSON_MAX_DEPTH; k++)
        fn_strbuf_append(&b, k % 2 ? "[" : "{\"a\":", k % 2 ? 1 : 5);
    fn_strbuf_append(&b, "1", 1);
    for (int k = FN_JSON_MAX_DEPTH - 1; k >= 0; k--) fn_strbuf_append(&b, k % 2 ? "]" : "}", 1);
    CHECK(!b.failed && fn_json_parse(b.data, b.length, &v) == FN_OK);
    fn_json_free(v);
    fn_strbuf_free(&b);
    for (int k = 0; k < FN_JSON_MAX_DEPTH + 1; k++) fn_strbuf_append(&b, "{\"a\":", 5);
    CHECK(rejects_bytes(b.data, b.length, "nesting deeper"));
    fn_strbuf_free(&b);

    /* Very deep input fails at the limit without recursing further. */
    size_t deep = 100000;
    char *brackets = malloc(deep);
    if (CHECK(brackets != NULL)) {
        memset(brackets, '[', deep);
        CHECK(rejects_bytes(brackets, deep, "nesting deeper"));
        free(brackets);
    }
}

static void test_json_malformed(void) {
    struct {
        const char *text;
        const char *expected;
    } cases[] = {
        {"", "unexpected end of input at byte 0"},
        {"   ", "unexpected end of input at byte 3"},
        {"[", "unexpected end of input at byte 1"},
        {"[1", "unexpected end of input"},
        {"[1,", "unexpected end of input"},
        {"{", "unexpected end of input"},
        {"{\"a\"", "unexpected end of input"},
        {"{\"a\":", "unexpected end of input"},
        {"{\"a\":1", "unexpected end of input"},
        {"\"abc", "unterminated string at byte 0"},
        {"\"abc\\", "unterminated string"},
        {"tru", "unexpected end of input"},
        {"nul", "unexpected end of input"},
        {"trUe", "invalid literal at byte 0"},
        {"True", "unexpected character 'T'"},
        {"[1]x", "unexpected character 'x', expected the end of the input at byte 3"},
        {"[1] [2]", "at byte 4"},
        {"1 2", "at byte 2"},
        {"{} {}", "at byte 3"},
        {"[1,]", "JSON: trailing comma at byte 2"},
        {"[1, ]", "trailing comma at byte 2"},
        {"{\"a\":1,}", "trailing comma at byte 6"},
        {"[,1]", "unexpected character ','"},
        {"[1,,2]", "unexpected character ','"},
        {"[1 2]", "expected ',' or ']' at byte 3"},
        {"{,}", "expected a string key"},
        {"{1:2}", "expected a string key"},
        {"{\"a\" 1}", "expected ':'"},
        {"{\"a\":1 \"b\":2}", "expected ',' or '}'"},
        {"{'a':1}", "unexpected character '''"},
        {"'a'", "unexpected character '''"},
        {"01", "leading zero in a number at byte 0"},
        {"-01", "leading zero"},
        {"00", "leading zero"},
        {"[01]", "leading zero in a number at byte 1"},
        {"1.", "unexpected end of input"},
        {"1.e5", "expected a digit after the decimal point"},
        {".5", "unexpected character '.'"},
        {"-", "unexpected end of input"},
        {"-a", "expected a digit in a number"},
        {"+1", "unexpected character '+'"},
        {"1e", "unexpected end of input"},
        {"1e+", "unexpected end of input"},
        {"1ex", "expected a digit in the exponent"},
        {"0x10", "unexpected character 'x'"},
        {"NaN", "NaN is not a JSON number"},
        {"[NaN]", "NaN is not a JSON number at byte 1"},
        {"Infinity", "Infinity is not a JSON number"},
        {"-Infinity", "Infinity is not a JSON number"},
        {"nan", "invalid literal"},
        {"inf", "unexpected character 'i'"},
        {"1e400", "number out of the range of a double"},
        {"-1e400", "out of the range"},
        {"\"\\x\"", "invalid escape sequence at byte 1"},
        {"\"\\U0041\"", "invalid escape sequence"},
        {"\"\\u12G4\"", "invalid hex digit in a \\u escape at byte 5"},
        {"\"\\u123\"", "invalid hex digit"},
        {"\"\\u12", "unterminated string"},
        {"\"a\tb\"", "control character in a string (must be escaped) at byte 2"},
        {"\"a\nb\"", "control character"},
        {"\"\\u0000\"", "\\u0000 is not supported"},
        {"\"\\ud800\"", "unpaired high surrogate in a \\u escape at byte 1"},
        {"\"\\udc00\"", "unpaired low surrogate"},
        {"\"\\udfff\\ud800\"", "unpaired low surrogate"},
        {"\"\\ud800\\u0041\"", "unpaired high surrogate"},
        {"\"\\ud800x\"", "unpaired high surrogate"},
        {"\"\\ud800\\ud800\"", "unpaired high surrogate"},
        {"\"\\ud800\\n\"", "unpaired high surrogate"},
        {"\"\\ud800\\udc0", "unterminated string"},
        {"\"\xff\"", "invalid UTF-8 in a string at byte 1"},
        {"\"\x80\"", "invalid UTF-8"},
        {"\"\xc0\x80\"", "invalid UTF-8"},         /* overlong NUL */
        {"\"\xc1\xbf\"", "invalid UTF-8"},         /* overlong */
        {"\"\xe0\x80\x80\"", "invalid UTF-8"},     /* overlong */
        {"\"\xe0\x9f\xbf\"", "invalid UTF-8"},     /* overlong */
        {"\"\xed\xa0\x80\"", "invalid UTF-8"},     /* encoded surrogate */
        {"\"\xed\xbf\xbf\"", "invalid UTF-8"},     /* encoded surrogate */
        {"\"\xf0\x80\x80\x80\"", "invalid UTF-8"}, /* overlong */
        {"\"\xf4\x90\x80\x80\"", "invalid UTF-8"}, /* above U+10FFFF */
        {"\"\xf5\x80\x80\x80\"", "invalid UTF-8"},
        {"\"\xc3\"", "invalid UTF-8"},             /* cut short by the quote */
        {"\"\xe2\x82\"", "invalid UTF-8"},
        {"\"\xc3x\"", "invalid UTF-8"},
        {"\xef\xbb\xbf{}", "unexpected byte 0xEF"}, /* a byte order mark */
        {"{\"a\":1,\"b\":2,\"a\":3}", "duplicate key \"a\" in the object at byte 0"},
        {"[{\"x\":{},\"x\":[]}]", "duplicate key \"x\" in the object at byte 1"},
        {"\x01", "unexpected byte 0x01"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        if (!CHECK(rejects(cases[k].text, cases[k].expected)))
            printf("    case %zu: %s\n", k, cases[k].text);
    }
    /* NUL bytes inside the given length are never valid. */
    CHECK(rejects_bytes("[1]\0", 4, "unexpected byte 0x00"));
    CHECK(rejects_bytes("\"a\0b\"", 5, "control character"));
    /* The length bounds the input even when the text goes on. */
    CHECK(rejects_bytes("[1, 2]", 4, "unexpected end of input at byte 4"));
    fn_json *v = NULL;
    CHECK(fn_json_parse("[1, 2]garbage", 6, &v) == FN_OK && v && v->count == 2);
    fn_json_free(v);
    v = NULL;
    CHECK(fn_json_parse(NULL, 0, &v) == FN_EFORMAT && v == NULL);
    CHECK(fn_json_parse(NULL, 3, &v) == FN_EINVAL);
    CHECK(fn_json_parse("1", 1, NULL) == FN_EINVAL);
}

static void test_json_getters(void) {
    fn_json *doc = parse_text("{\"i\": 3, \"f\": 2.5, \"b\": true, \"s\": \"str\", \"n\": null, "
                              "\"big\": 1e300, \"a\": [1]}");
    if (!CHECK(doc != NULL)) return;
    int64_t i = -1;
    double x = -1;
    int b = -1;
    const char *s = NULL;

    CHECK(fn_json_get_int(doc, "i", 1, 0, &i, "node1") == FN_OK && i == 3);
    CHECK(fn_json_get_int(doc, "absent", 0, 7, &i, "node1") == FN_OK && i == 7);
    CHECK(fn_json_get_int(doc, "n", 0, 8, &i, "node1") == FN_OK && i == 8);
    i = 99;
    CHECK(fn_json_get_int(doc, "f", 0, 0, &i, "node1") == FN_EINVAL && i == 99);
    CHECK(contains(fn_last_error(), "node1: \"f\" must be an integer") &&
          contains(fn_last_error(), "2.5"));
    CHECK(fn_json_get_int(doc, "s", 0, 0, &i, "node1") == FN_EINVAL &&
          contains(fn_last_error(), "(got a string)"));
    CHECK(fn_json_get_int(doc, "big", 0, 0, &i, "node1") == FN_EINVAL);
    CHECK(fn_json_get_int(doc, "a", 0, 0, &i, "node1") == FN_EINVAL &&
          contains(fn_last_error(), "(got an array)"));
    CHECK(fn_json_get_int(doc, "absent", 1, 0, &i, "node1") == FN_EINVAL &&
          strcmp(fn_last_error(), "node1: missing \"absent\"") == 0);
    CHECK(fn_json_get_int(doc, "n", 1, 0, &i, "node1") == FN_EINVAL &&
          contains(fn_last_error(), "missing \"n\""));

    CHECK(fn_json_get_number(doc, "f", 1, 0, &x, "layer") == FN_OK && x == 2.5);
    CHECK(fn_json_get_number(doc, "i", 1, 0, &x, "layer") == FN_OK && x == 3.0);
    CHECK(fn_json_get_number(doc, "absent", 0, 0.01, &x, "layer") == FN_OK && x == 0.01);
    CHECK(fn_json_get_number(doc, "s", 0, 0, &x, "layer") == FN_EINVAL &&
          contains(fn_last_error(), "layer: \"s\" must be a number (got a string)"));
    CHECK(fn_json_get_number(doc, "b", 0, 0, &x, "layer") == FN_EINVAL &&
          contains(fn_last_error(), "(got a boolean)"));

    CHECK(fn_json_get_bool(doc, "b", 1, 0, &b, "x") == FN_OK && b == 1);
    CHECK(fn_json_get_bool(doc, "absent", 0, 1, &b, "x") == FN_OK && b == 1);
    CHECK(fn_json_get_bool(doc, "i", 0, 0, &b, "x") == FN_EINVAL &&
          contains(fn_last_error(), "x: \"i\" must be true or false (got 3)"));

    CHECK(fn_json_get_string(doc, "s", 1, NULL, &s, "spec") == FN_OK && strcmp(s, "str") == 0);
    const char *fallback = "default";
    CHECK(fn_json_get_string(doc, "absent", 0, fallback, &s, "spec") == FN_OK && s == fallback);
    CHECK(fn_json_get_string(doc, "i", 0, NULL, &s, "spec") == FN_EINVAL &&
          contains(fn_last_error(), "spec: \"i\" must be a string (got 3)"));
    CHECK(fn_json_get_string(doc, "absent", 1, NULL, &s, NULL) == FN_EINVAL &&
          strcmp(fn_last_error(), "JSON: missing \"absent\"") == 0);

    /* Getters on something other than an object. */
    const fn_json *array = fn_json_get(doc, "a");
    CHECK(fn_json_get_int(array, "i", 0, 0, &i, "node2") == FN_EINVAL &&
          contains(fn_last_error(), "node2: expected an object"));
    CHECK(fn_json_get_bool(NULL, "i", 0, 0, &b, "node2") == FN_EINVAL);
    fn_json_free(doc);
}

static void test_strbuf(void) {
    fn_strbuf b = {0};
    fn_strbuf_append_json_string(&b, "a\"b\\c\n\x01\x1f\xc3\xa9/\x7f");
    CHECK(!b.failed && strcmp(b.data, "\"a\\\"b\\\\c\\n\\u0001\\u001f\xc3\xa9/\x7f\"") == 0);
    fn_strbuf_free(&b);
    CHECK(b.data == NULL && b.length == 0);

    /* Invalid UTF-8 becomes U+FFFD, so the output always parses. */
    fn_strbuf_append_json_string(&b, "x\xff\xc3y\xed\xa0\x80");
    CHECK(strcmp(b.data,
                 "\"x\xef\xbf\xbd\xef\xbf\xbdy\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"") == 0);
    fn_strbuf_free(&b);
    fn_strbuf_append_json_string(&b, NULL);
    CHECK(strcmp(b.data, "null") == 0);
    fn_strbuf_free(&b);

    /* Every byte 1..255 survives a write and a read back (invalid ones as U+FFFD). */
    char all[256];
    for (int k = 1; k < 128; k++) all[k - 1] = (char)k;
    all[127] = '\0';
    fn_strbuf_append_json_string(&b, all);
    fn_json *v = NULL;
    CHECK(fn_json_parse(b.data, b.length, &v) == FN_OK && v && strcmp(v->string, all) == 0);
    fn_json_free(v);
    fn_strbuf_free(&b);

    /* printf grows past the first allocation. */
    char long_text[3000];
    memset(long_text, 'z', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    fn_strbuf_printf(&b, "<%d>", 42);
    fn_strbuf_printf(&b, "%s|%s", long_text, long_text);
    fn_strbuf_append(&b, "!", 1);
    CHECK(!b.failed && b.length == 4 + 2 * 2999 + 1 + 1 && strncmp(b.data, "<42>zzz", 7) == 0 &&
          b.data[b.length - 1] == '!' && b.data[4 + 2999] == '|' && b.data[b.length] == '\0');
    fn_strbuf_free(&b);

    CHECK(fn_utf8_valid("abc\xc3\xa9", 5) && !fn_utf8_valid("\xc3", 1) && fn_utf8_valid("", 0));
}

/* Deterministic pseudo-random numbers for the fuzz loops. */
static uint64_t fuzz_state = 12345;
static uint64_t fuzz_next(void) {
    fuzz_state += 0x9e3779b97f4a7c15ULL;
    return fn_mix64(fuzz_state);
}

static void test_json_fuzz(void) {
    const char *doc = "{\"a\": [1, -2.5e-3, true, false, null, \"s\\u00e9\\ud83d\\ude00\\n\"], "
                      "\"b\": {\"c\": {\"d\": [[], {}]}}, \"\xc3\xa9\": 0}";
    size_t length = strlen(doc);
    /* Every proper prefix of an object is incomplete. */
    int prefix_failures = 0;
    for (size_t k = 0; k < length; k++) {
        fn_json *v = NULL;
        if (fn_json_parse(doc, k, &v) == FN_EFORMAT && v == NULL)
            prefix_failures++;
        else
            fn_json_free(v);
    }
    CHECK(prefix_failures == (int)length);

    const char interesting[] = "{}[]\":,\\u0123456789eE+-.tfn \x80\xc3\xed\xf4\xff";
    char *copy = malloc(length);
    if (!CHECK(copy != NULL)) return;
    int crashes_avoided = 0;
    for (int round = 0; round < 20000; round++) {
        memcpy(copy, doc, length);
        int edits = 1 + (int)(fuzz_next() % 3);
        for (int e = 0; e < edits; e++) {
            size_t at = fuzz_next() % length;
            uint64_t r = fuzz_next();
            copy[at] = (r & 1) ? (char)(r >> 8) : interesting[(r >> 8) % (sizeof interesting - 1)];
        }
        size_t used = (fuzz_next() % 4 == 0) ? fuzz_next() % (length + 1) : length;
        fn_json *v = NULL;
        fn_status status = fn_json_parse(copy, used, &v);
        if (status == FN_OK) {
            fn_json_free(v);
        } else if (status == FN_EFORMAT && contains(fn_last_error(), "JSON: ") &&
                   contains(fn_last_error(), " at byte ")) {
            crashes_avoided++;
        } else {
            printf("    unexpected status %d: %s\n", (int)status, fn_last_error());
        }
    }
    CHECK(crashes_avoided > 1000);
    free(copy);
}

/* ---------------------------------------------------------------- safetensors helpers */

static char test_dir[64];

static void path_in_test_dir(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", test_dir, name);
}

static bool file_exists(const char *path) {
    struct stat info;
    return stat(path, &info) == 0;
}

/* Names of temp files ("*.tmp.*") left in the test directory. */
static int count_temp_files(void) {
    DIR *dir = opendir(test_dir);
    if (!dir) return -1;
    int found = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL)
        if (strstr(entry->d_name, ".tmp.")) found++;
    closedir(dir);
    return found;
}

static void remove_test_dir(void) {
    DIR *dir = opendir(test_dir);
    if (!dir) return;
    struct dirent *entry;
    char path[512];
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        path_in_test_dir(path, sizeof path, entry->d_name);
        if (unlink(path) != 0) rmdir(path);
    }
    closedir(dir);
    rmdir(test_dir);
}

static unsigned char *read_whole_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *bytes = malloc(n > 0 ? (size_t)n : 1);
    if (bytes && fread(bytes, 1, (size_t)n, f) != (size_t)n) {
        free(bytes);
        bytes = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return bytes;
}

static bool write_whole_file(const char *path, const void *bytes, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(bytes, 1, size, f) == size;
    return fclose(f) == 0 && ok;
}

/* Builds a safetensors byte image: the length, `header` as given (no padding), then `data`. */
static unsigned char *make_file(const char *header, const void *data, size_t data_size,
                                size_t *size) {
    size_t header_length = strlen(header);
    *size = 8 + header_length + data_size;
    unsigned char *bytes = malloc(*size);
    for (int k = 0; k < 8; k++) bytes[k] = (unsigned char)((uint64_t)header_length >> (8 * k));
    memcpy(bytes + 8, header, header_length);
    if (data_size) memcpy(bytes + 8 + header_length, data, data_size);
    return bytes;
}

/* Parses a built image expecting FN_EFORMAT with `expected` in the message. */
static bool st_rejects(const char *header, size_t data_size, const char *expected) {
    static const unsigned char zeros[256];
    size_t size;
    unsigned char *bytes = make_file(header, zeros, data_size, &size);
    fn_safetensors *f = NULL;
    fn_status status = fn_safetensors_parse(bytes, size, &f);
    free(bytes);
    if (status == FN_OK) {
        fn_safetensors_free(f);
        printf("    accepted header: %s\n", header);
        return false;
    }
    if (status != FN_EFORMAT || !contains(fn_last_error(), expected)) {
        printf("    status %d, message \"%s\", expected \"%s\"\n", (int)status, fn_last_error(),
               expected);
        return false;
    }
    return f == NULL;
}

static bool st_accepts(const char *header, size_t data_size) {
    static const unsigned char zeros[256];
    size_t size;
    unsigned char *bytes = make_file(header, zeros, data_size, &size);
    fn_safetensors *f = NULL;
    fn_status status = fn_safetensors_parse(bytes, size, &f);
    free(bytes);
    fn_safetensors_free(f);
    if (status != FN_OK) printf("    rejected: %s\n", fn_last_error());
    return status == FN_OK;
}

static bool aligned_for(const void *p, size_t alignment) {
    return ((uintptr_t)p % alignment) == 0;
}

/* ---------------------------------------------------------------- safetensors tests */

static void test_dtypes(void) {
    fn_st_dtype all[] = {FN_ST_F32, FN_ST_F64, FN_ST_I64, FN_ST_I32, FN_ST_U8,
                         FN_ST_U64, FN_ST_I8,  FN_ST_I16, FN_ST_U16, FN_ST_U32,
                         FN_ST_F16, FN_ST_BF16, FN_ST_BOOL, FN_ST_F8_E4M3, FN_ST_F8_E5M2};
    size_t sizes[] = {4, 8, 8, 4, 1, 8, 1, 2, 2, 4, 2, 2, 1, 1, 1};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) {
        fn_st_dtype back;
        CHECK(fn_st_dtype_size(all[k]) == sizes[k]);
        CHECK(fn_st_dtype_from_name(fn_st_dtype_name(all[k]), &back) && back == all[k]);
    }
    fn_st_dtype d;
    CHECK(!fn_st_dtype_from_name("f32", &d) && !fn_st_dtype_from_name("", &d));
    CHECK(fn_st_dtype_size((fn_st_dtype)99) == 0 &&
          strcmp(fn_st_dtype_name((fn_st_dtype)99), "unknown") == 0);

    fn_st_tensor t = {"t", FN_ST_F64, 2, {3, 5}, NULL};
    size_t n = 0;
    CHECK(fn_st_tensor_nbytes(&t, &n) && n == 120);
    t.shape[0] = INT64_MAX;
    CHECK(!fn_st_tensor_nbytes(&t, &n));
    t.shape[1] = 0;
    CHECK(fn_st_tensor_nbytes(&t, &n) && n == 0);
    t.shape[1] = -1;
    CHECK(!fn_st_tensor_nbytes(&t, &n));
    t.ndim = 0;
    CHECK(fn_st_tensor_nbytes(&t, &n) && n == 8);
    t.ndim = 9;
    CHECK(!fn_st_tensor_nbytes(&t, &n));
}

/* The round-trip fixture: tensors of several dtypes, a scalar, an empty tensor and a 3-byte
 * tensor that puts the next one at an odd offset in the file. */
static float weight[2][3] = {{1.5f, -2.0f, 3.25f}, {0.0f, -0.0f, 1e-30f}};
static double bias[3] = {0.1, -1e300, 4.0};
static int64_t steps = -1234567890123LL;
static uint8_t flags[3] = {1, 0, 255};
static float after_flags[2] = {7.0f, 8.0f};
static const char *meta_keys[] = {"fastnet.spec", "fastnet.version", "note"};
static const char *meta_values[] = {"{\"layers\": [1, 2]}", "0.1.0", "line\nbreak \"q\" \xc3\xa9"};

static void fixture(fn_st_tensor t[6]) {
    fn_st_tensor tensors[6] = {
        {"0.weight", FN_ST_F32, 2, {2, 3}, weight},
        {"0.bias", FN_ST_F64, 1, {3}, bias},
        {"steps", FN_ST_I64, 0, {0}, &steps},
        {"flags", FN_ST_U8, 1, {3}, flags},
        {"after_flags", FN_ST_F32, 1, {2}, after_flags},
        {"empty", FN_ST_F32, 2, {0, 5}, NULL},
    };
    memcpy(t, tensors, sizeof tensors);
}

static bool same_tensor(const fn_st_tensor *got, const fn_st_tensor *want) {
    if (!got || strcmp(got->name, want->name) != 0 || got->dtype != want->dtype ||
        got->ndim != want->ndim)
        return false;
    for (int d = 0; d < want->ndim; d++)
        if (got->shape[d] != want->shape[d]) return false;
    size_t nbytes;
    if (!fn_st_tensor_nbytes(want, &nbytes)) return false;
    if (!got->data || !aligned_for(got->data, 64)) return false;
    return nbytes == 0 || memcmp(got->data, want->data, nbytes) == 0;
}

static void check_fixture_contents(const fn_safetensors *f) {
    fn_st_tensor want[6];
    fixture(want);
    CHECK(fn_safetensors_count(f) == 6);
    for (size_t k = 0; k < 6; k++) {
        if (!CHECK(same_tensor(fn_safetensors_find(f, want[k].name), &want[k])))
            printf("    tensor %s\n", want[k].name);
        /* The writer lays data out in the given order; the reader lists tensors in data order. */
        CHECK(fn_safetensors_tensor(f, k) &&
              strcmp(fn_safetensors_tensor(f, k)->name, want[k].name) == 0);
    }
    CHECK(fn_safetensors_tensor(f, 6) == NULL);
    CHECK(fn_safetensors_find(f, "absent") == NULL && fn_safetensors_find(f, "") == NULL);
    CHECK(fn_safetensors_metadata_count(f) == 3);
    for (size_t k = 0; k < 3; k++) {
        const char *key = NULL, *value = NULL;
        CHECK(fn_safetensors_metadata(f, meta_keys[k]) &&
              strcmp(fn_safetensors_metadata(f, meta_keys[k]), meta_values[k]) == 0);
        CHECK(fn_safetensors_metadata_entry(f, k, &key, &value) && strcmp(key, meta_keys[k]) == 0 &&
              strcmp(value, meta_values[k]) == 0);
    }
    CHECK(fn_safetensors_metadata(f, "absent") == NULL);
    CHECK(!fn_safetensors_metadata_entry(f, 3, NULL, NULL));
}

static void test_round_trip(void) {
    char path[256];
    path_in_test_dir(path, sizeof path, "model.safetensors");
    fn_st_tensor tensors[6];
    fixture(tensors);
    if (!CHECK(fn_safetensors_write(path, tensors, 6, meta_keys, meta_values, 3) == FN_OK)) return;
    CHECK(count_temp_files() == 0);

    /* The bytes on disk: the length, a space-padded header, the data in the given order. */
    size_t size = 0;
    unsigned char *bytes = read_whole_file(path, &size);
    if (!CHECK(bytes != NULL && size > 8)) {
        free(bytes);
        return;
    }
    uint64_t header_length = 0;
    for (int k = 7; k >= 0; k--) header_length = (header_length << 8) | bytes[k];
    size_t data_size =
        sizeof weight + sizeof bias + sizeof steps + sizeof flags + sizeof after_flags;
    CHECK(header_length % 8 == 0 && 8 + header_length + data_size == size);
    unsigned char last = bytes[8 + header_length - 1];
    CHECK(bytes[8] == '{' && (last == ' ' || last == '}'));
    const unsigned char *data = bytes + 8 + header_length;
    CHECK(memcmp(data, weight, sizeof weight) == 0);
    CHECK(memcmp(data + 24, bias, sizeof bias) == 0);
    CHECK(memcmp(data + 48, &steps, sizeof steps) == 0);
    CHECK(memcmp(data + 56, flags, sizeof flags) == 0);
    CHECK(memcmp(data + 59, after_flags, sizeof after_flags) == 0);
    /* The header parses as JSON and says what was written. */
    fn_json *header = NULL;
    CHECK(fn_json_parse((const char *)bytes + 8, (size_t)header_length, &header) == FN_OK);
    const fn_json *entry = fn_json_get(header, "after_flags");
    CHECK(entry && fn_json_get(entry, "data_offsets") &&
          fn_json_get(entry, "data_offsets")->items[0].integer == 59 &&
          fn_json_get(entry, "data_offsets")->items[1].integer == 67);
    CHECK(fn_json_get(header, "steps") &&
          fn_json_get(fn_json_get(header, "steps"), "shape")->count == 0);
    fn_json_free(header);

    fn_safetensors *f = NULL;
    if (CHECK(fn_safetensors_read(path, &f) == FN_OK)) check_fixture_contents(f);
    fn_safetensors_free(f);
    f = NULL;
    if (CHECK(fn_safetensors_parse(bytes, size, &f) == FN_OK)) check_fixture_contents(f);
    fn_safetensors_free(f);

    /* Every truncation fails cleanly, in memory and on disk. */
    int truncations_rejected = 0, files_rejected = 0;
    char truncated_path[256];
    path_in_test_dir(truncated_path, sizeof truncated_path, "truncated.safetensors");
    for (size_t k = 0; k < size; k++) {
        f = NULL;
        if (fn_safetensors_parse(bytes, k, &f) == FN_EFORMAT && f == NULL)
            truncations_rejected++;
        else
            fn_safetensors_free(f);
        f = NULL;
        if (write_whole_file(truncated_path, bytes, k) &&
            fn_safetensors_read(truncated_path, &f) == FN_EFORMAT && f == NULL &&
            contains(fn_last_error(), truncated_path))
            files_rejected++;
        else
            fn_safetensors_free(f);
    }
    CHECK(truncations_rejected == (int)size);
    CHECK(files_rejected == (int)size);
    unlink(truncated_path);

    /* Random corruption never crashes; whatever is accepted is consistent. */
    unsigned char *copy = malloc(size);
    int accepted = 0, rejected = 0;
    for (int round = 0; round < 5000 && copy; round++) {
        memcpy(copy, bytes, size);
        int edits = 1 + (int)(fuzz_next() % 3);
        for (int e = 0; e < edits; e++) {
            /* Mostly the header: the data bytes are opaque. */
            size_t at = fuzz_next() % (size_t)(8 + header_length);
            copy[at] = (unsigned char)fuzz_next();
        }
        f = NULL;
        fn_status status = fn_safetensors_parse(copy, size, &f);
        if (status == FN_OK) {
            accepted++;
            for (size_t k = 0; k < fn_safetensors_count(f); k++) {
                const fn_st_tensor *t = fn_safetensors_tensor(f, k);
                size_t nbytes;
                if (!fn_st_tensor_nbytes(t, &nbytes) || !aligned_for(t->data, 64))
                    printf("    inconsistent tensor accepted\n");
                else if (nbytes) (void)((volatile const unsigned char *)t->data)[nbytes - 1];
            }
            fn_safetensors_free(f);
        } else {
            rejected++;
        }
    }
    CHECK(rejected > 0 && accepted + rejected == 5000);
    free(copy);

    /* Overwriting replaces the contents atomically. */
    fn_st_tensor small = {"only", FN_ST_I32, 1, {2}, (int32_t[]){5, 6}};
    CHECK(fn_safetensors_write(path, &small, 1, NULL, NULL, 0) == FN_OK);
    f = NULL;
    if (CHECK(fn_safetensors_read(path, &f) == FN_OK)) {
        CHECK(fn_safetensors_count(f) == 1 && fn_safetensors_metadata_count(f) == 0);
        const fn_st_tensor *t = fn_safetensors_find(f, "only");
        CHECK(t && t->dtype == FN_ST_I32 && ((const int32_t *)t->data)[1] == 6);
    }
    fn_safetensors_free(f);

    /* No tensors at all is a valid file ("{}" padded). */
    CHECK(fn_safetensors_write(path, NULL, 0, NULL, NULL, 0) == FN_OK);
    f = NULL;
    CHECK(fn_safetensors_read(path, &f) == FN_OK && fn_safetensors_count(f) == 0);
    fn_safetensors_free(f);
    CHECK(count_temp_files() == 0);
    free(bytes);
}

/* A file laid out the way the Python safetensors package writes one: compact JSON with
 * "__metadata__" first, tensors sorted by dtype size then name (data order), header padded with
 * spaces. Here the header lists "a.weight" before its data-order predecessor on purpose. */
static void test_reference_layout(void) {
    const char *header =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]},"
        "\"a.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"count\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[24,32]},"
        "\"mask\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[32,35]}}";
    size_t header_length = strlen(header), padded = (header_length + 7) / 8 * 8;
    /* Little-endian bytes written out by hand, independent of the host's representation. */
    const unsigned char data[35] = {
        0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0,             /* bias: 1.0, -2.0 */
        0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x80, 0x40,             /* weight: 3.0, 4.0 */
        0x00, 0x00, 0xA0, 0x40, 0x00, 0x00, 0xC0, 0xC0,             /*         5.0, -6.0 */
        0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             /* count: 258 */
        0x01, 0x00, 0x01,                                           /* mask */
    };
    size_t size = 8 + padded + sizeof data;
    unsigned char *bytes = malloc(size);
    if (!CHECK(bytes != NULL)) return;
    for (int k = 0; k < 8; k++) bytes[k] = (unsigned char)((uint64_t)padded >> (8 * k));
    memcpy(bytes + 8, header, header_length);
    memset(bytes + 8 + header_length, ' ', padded - header_length);
    memcpy(bytes + 8 + padded, data, sizeof data);

    char path[256];
    path_in_test_dir(path, sizeof path, "reference.safetensors");
    CHECK(write_whole_file(path, bytes, size));
    fn_safetensors *f = NULL;
    if (CHECK(fn_safetensors_read(path, &f) == FN_OK)) {
        CHECK(fn_safetensors_count(f) == 4);
        CHECK(strcmp(fn_safetensors_tensor(f, 0)->name, "a.bias") == 0);
        CHECK(strcmp(fn_safetensors_tensor(f, 1)->name, "a.weight") == 0);
        const fn_st_tensor *w = fn_safetensors_find(f, "a.weight");
        CHECK(w && w->dtype == FN_ST_F32 && w->ndim == 2 && w->shape[0] == 2 && w->shape[1] == 2);
        if (w) {
            const float *v = w->data;
            CHECK(v[0] == 3.0f && v[1] == 4.0f && v[2] == 5.0f && v[3] == -6.0f);
        }
        const fn_st_tensor *b = fn_safetensors_find(f, "a.bias");
        CHECK(b && ((const float *)b->data)[0] == 1.0f && ((const float *)b->data)[1] == -2.0f);
        const fn_st_tensor *c = fn_safetensors_find(f, "count");
        CHECK(c && c->dtype == FN_ST_I64 && aligned_for(c->data, 8) &&
              ((const int64_t *)c->data)[0] == 258);
        const fn_st_tensor *m = fn_safetensors_find(f, "mask");
        CHECK(m && m->dtype == FN_ST_BOOL && memcmp(m->data, "\x01\x00\x01", 3) == 0);
        CHECK(fn_safetensors_metadata(f, "format") &&
              strcmp(fn_safetensors_metadata(f, "format"), "pt") == 0);
    }
    fn_safetensors_free(f);
    free(bytes);

    /* Whitespace, key order and a tensor at an offset not aligned for its dtype. */
    const unsigned char odd[7] = {9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    size_t odd_size;
    unsigned char *odd_file = make_file(
        " { \"x\" : { \"data_offsets\" : [ 1 , 7 ] , \"shape\" : [ 3 ] , \"dtype\" : \"U16\" } ,"
        "\n\t\"y\": {\"shape\": [], \"dtype\": \"U8\", \"data_offsets\": [0, 1]}}   ",
        odd, sizeof odd, &odd_size);
    f = NULL;
    if (CHECK(fn_safetensors_parse(odd_file, odd_size, &f) == FN_OK)) {
        const fn_st_tensor *x = fn_safetensors_find(f, "x");
        CHECK(x && aligned_for(x->data, 64) && x->ndim == 1 && x->shape[0] == 3);
        const fn_st_tensor *y = fn_safetensors_find(f, "y");
        CHECK(y && y->ndim == 0 && ((const uint8_t *)y->data)[0] == 9);
        CHECK(fn_safetensors_metadata_count(f) == 0 &&
              fn_safetensors_metadata(f, "format") == NULL);
    }
    fn_safetensors_free(f);
    free(odd_file);
}

static void test_hostile_files(void) {
    /* Too short to hold the length. */
    unsigned char tiny[8] = {2, 0, 0, 0, 0, 0, 0, 0};
    for (size_t k = 0; k < 8; k++) {
        fn_safetensors *f = NULL;
        CHECK(fn_safetensors_parse(tiny, k, &f) == FN_EFORMAT && f == NULL &&
              contains(fn_last_error(), "shorter than the 8-byte header length"));
    }
    /* A length past the end, over the limit, or absurd. */
    uint64_t lengths[] = {3, 1000, 200000000ULL, UINT64_MAX, (uint64_t)1 << 63};
    const char *messages[] = {"runs past the end of the file", "runs past the end of the file",
                              "exceeds the limit", "exceeds the limit", "exceeds the limit"};
    for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
        unsigned char bytes[10] = {0, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
        for (int b = 0; b < 8; b++) bytes[b] = (unsigned char)(lengths[k] >> (8 * b));
        fn_safetensors *f = NULL;
        CHECK(fn_safetensors_parse(bytes, sizeof bytes, &f) == FN_EFORMAT &&
              contains(fn_last_error(), messages[k]));
    }

    struct {
        const char *header;
        size_t data_size;
        const char *expected;
    } cases[] = {
        {"", 0, "header: JSON: unexpected end of input"},
        {"{", 0, "header: JSON: unexpected end of input"},
        {"[]", 0, "header must be a JSON object (got an array)"},
        {"\"x\"", 0, "header must be a JSON object (got a string)"},
        {"{\"a\":1}", 0, "tensor \"a\": entry must be an object (got a number)"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor \"a\": missing \"dtype\""},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor \"a\": missing \"shape\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor \"a\": missing \"data_offsets\""},
        {"{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "\"dtype\" must be a string (got a number)"},
        {"{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor \"a\": unknown dtype \"F33\""},
        {"{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype \"f32\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4, "\"shape\" must be an array (got a number)"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape[0] must be a non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,4]}}", 4, "shape[1] must be a non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,4]}}", 4, "shape[0] must be"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", 4, "shape[0] must be"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "9 dimensions, more than the 8 supported"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],\"data_offsets\":[0,4]}}", 4, "shape is too large"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[9223372036854775807],\"data_offsets\":[0,4]}}", 4, "shape is too large"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4, "\"data_offsets\" must be an array of two non-negative integers"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "must be an array of two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4, "must be an array of two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "must be an array of two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.5,4]}}", 4, "must be an array of two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}", 4, "must be an array of two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "data_offsets [8, 4] end before they begin"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 4, "data_offsets [4, 8] run past the end of the 4-byte data buffer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 4, "must be an array of two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "shape and dtype F32 need 8 bytes but data_offsets [0, 4] span 4"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,4]}}", 4, "need 0 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "tensor \"b\" overlaps tensor \"a\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "bytes [4, 8) of the data buffer, before tensor \"b\", belong to no tensor"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "bytes [0, 4) of the data buffer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "bytes [4, 8) at the end of the data buffer belong to no tensor"},
        {"{}", 1, "bytes [0, 1) at the end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate key \"a\""},
        {"{\"__metadata__\":[]}", 0, "\"__metadata__\" must be an object (got an array)"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ \"k\" must be a string (got a number)"},
        {"{\"__metadata__\":{\"k\":null}}", 0, "must be a string (got null)"},
        {"{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, "must be a string (got an object)"},
        {"{\"\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "invalid UTF-8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[NaN],\"data_offsets\":[0,4]}}", 4, "NaN is not a JSON number"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        if (!CHECK(st_rejects(cases[k].header, cases[k].data_size, cases[k].expected)))
            printf("    case %zu: %s\n", k, cases[k].header);
    }
    /* Padding with NUL bytes instead of spaces is not JSON whitespace. */
    {
        unsigned char padded[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0, 0, 0, 0, 0, 0};
        fn_safetensors *f = NULL;
        CHECK(fn_safetensors_parse(padded, sizeof padded, &f) == FN_EFORMAT &&
              contains(fn_last_error(), "header: JSON: unexpected byte 0x00"));
    }
    /* Messages name the source. */
    CHECK(st_rejects("[]", 0, "safetensors buffer: header must be"));

    /* Edge cases that are valid. */
    CHECK(st_accepts("{}", 0));
    CHECK(st_accepts("{\"__metadata__\":{}}", 0));
    CHECK(st_accepts("{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0));
    CHECK(st_accepts("{\"huge_but_empty\":{\"dtype\":\"F64\",\"shape\":[9223372036854775807,0],"
                     "\"data_offsets\":[0,0]},"
                     "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                     2));
    /* Keys other than the three are ignored, as the reference reader does. */
    CHECK(st_accepts("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}",
                     4));
    CHECK(st_accepts("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                     "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 4));

    /* A name far longer than a message is cut short, not overflowed. */
    char long_header[4200];
    char name[4000];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    snprintf(long_header, sizeof long_header,
             "{\"%s\":{\"dtype\":\"Q\",\"shape\":[],\"data_offsets\":[0,0]}}", name);
    CHECK(st_rejects(long_header, 0, "unknown dtype \"Q\""));

    /* Bad arguments. */
    fn_safetensors *f = NULL;
    CHECK(fn_safetensors_parse(NULL, 5, &f) == FN_EINVAL);
    CHECK(fn_safetensors_parse(tiny, 8, NULL) == FN_EINVAL);
    CHECK(fn_safetensors_read(NULL, &f) == FN_EINVAL);
    CHECK(fn_safetensors_count(NULL) == 0 && fn_safetensors_find(NULL, "a") == NULL &&
          fn_safetensors_metadata(NULL, "a") == NULL);
    fn_safetensors_free(NULL);
}

static void test_file_errors(void) {
    char path[256], missing_dir_path[256], temp_path[320];
    fn_st_tensor tensors[6];
    fixture(tensors);

    /* Writing into a directory that does not exist: FN_EIO, nothing left behind. */
    path_in_test_dir(missing_dir_path, sizeof missing_dir_path, "no/such/dir/model.safetensors");
    CHECK(fn_safetensors_write(missing_dir_path, tensors, 6, NULL, NULL, 0) == FN_EIO);
    CHECK(contains(fn_last_error(), missing_dir_path) &&
          contains(fn_last_error(), strerror(ENOENT)));
    snprintf(temp_path, sizeof temp_path, "%s.tmp.%ld", missing_dir_path, (long)getpid());
    CHECK(!file_exists(temp_path) && !file_exists(missing_dir_path));
    path_in_test_dir(path, sizeof path, "no");
    CHECK(!file_exists(path));

    /* Renaming over a directory fails after the temp file was written: it must be removed and
     * the directory left alone. */
    path_in_test_dir(path, sizeof path, "a_directory");
    CHECK(mkdir(path, 0700) == 0);
    CHECK(fn_safetensors_write(path, tensors, 6, NULL, NULL, 0) == FN_EIO &&
          contains(fn_last_error(), path));
    CHECK(count_temp_files() == 0);
    struct stat info;
    CHECK(stat(path, &info) == 0 && S_ISDIR(info.st_mode));

    /* Reading a directory or a missing file is an I/O error naming the path. */
    fn_safetensors *f = NULL;
    CHECK(fn_safetensors_read(path, &f) == FN_EIO && contains(fn_last_error(), path) && f == NULL);
    rmdir(path);
    path_in_test_dir(path, sizeof path, "missing.safetensors");
    CHECK(fn_safetensors_read(path, &f) == FN_EIO && contains(fn_last_error(), path) &&
          contains(fn_last_error(), strerror(ENOENT)));

    /* Bad writer arguments fail before any file is created, and leave an old file intact. */
    path_in_test_dir(path, sizeof path, "kept.safetensors");
    CHECK(fn_safetensors_write(path, tensors, 6, meta_keys, meta_values, 3) == FN_OK);
    size_t before_size = 0;
    unsigned char *before = read_whole_file(path, &before_size);

    fn_st_tensor bad[2];
    const char *dup_keys[] = {"k", "k"};
    const char *values[] = {"v", "w"};
    const char *bad_utf8[] = {"\xff"};
    struct {
        const char *what;
        fn_st_tensor a, b;
        size_t count;
        const char *const *keys;
        const char *const *vals;
        size_t meta_count;
        const char *expected;
    } cases[] = {
        {"duplicate names", {"x", FN_ST_U8, 1, {1}, "a"}, {"x", FN_ST_U8, 1, {1}, "b"}, 2, NULL, NULL, 0, "duplicate tensor name \"x\""},
        {"reserved name", {"__metadata__", FN_ST_U8, 1, {1}, "a"}, {0}, 1, NULL, NULL, 0, "is reserved"},
        {"no name", {NULL, FN_ST_U8, 1, {1}, "a"}, {0}, 1, NULL, NULL, 0, "tensor 0 has no name"},
        {"bad UTF-8 name", {"\xc3", FN_ST_U8, 1, {1}, "a"}, {0}, 1, NULL, NULL, 0, "not valid UTF-8"},
        {"unknown dtype", {"x", (fn_st_dtype)99, 1, {1}, "a"}, {0}, 1, NULL, NULL, 0, "unknown dtype 99"},
        {"too many dims", {"x", FN_ST_U8, 9, {1, 1, 1, 1, 1, 1, 1, 1}, "a"}, {0}, 1, NULL, NULL, 0, "invalid shape"},
        {"negative ndim", {"x", FN_ST_U8, -1, {1}, "a"}, {0}, 1, NULL, NULL, 0, "invalid shape"},
        {"negative dim", {"x", FN_ST_U8, 2, {2, -1}, "a"}, {0}, 1, NULL, NULL, 0, "invalid shape"},
        {"overflowing shape", {"x", FN_ST_F64, 2, {INT64_MAX, 4}, "a"}, {0}, 1, NULL, NULL, 0, "invalid shape"},
        {"NULL data", {"x", FN_ST_U8, 1, {1}, NULL}, {0}, 1, NULL, NULL, 0, "NULL data"},
        {"duplicate metadata", {"x", FN_ST_U8, 1, {1}, "a"}, {0}, 1, dup_keys, values, 2, "duplicate metadata key \"k\""},
        {"NULL metadata", {"x", FN_ST_U8, 1, {1}, "a"}, {0}, 1, NULL, values, 1, "NULL metadata arrays"},
        {"bad UTF-8 metadata", {"x", FN_ST_U8, 1, {1}, "a"}, {0}, 1, values, bad_utf8, 1, "not valid UTF-8"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        bad[0] = cases[k].a;
        bad[1] = cases[k].b;
        fn_status status = fn_safetensors_write(path, bad, cases[k].count, cases[k].keys,
                                                cases[k].vals, cases[k].meta_count);
        if (!CHECK(status == FN_EINVAL && contains(fn_last_error(), cases[k].expected)))
            printf("    case \"%s\": status %d, %s\n", cases[k].what, (int)status, fn_last_error());
    }
    CHECK(fn_safetensors_write(path, NULL, 1, NULL, NULL, 0) == FN_EINVAL);
    CHECK(fn_safetensors_write(NULL, tensors, 1, NULL, NULL, 0) == FN_EINVAL);
    CHECK(fn_safetensors_write("", tensors, 1, NULL, NULL, 0) == FN_EINVAL);
    size_t after_size = 0;
    unsigned char *after = read_whole_file(path, &after_size);
    CHECK(before && after && before_size == after_size && memcmp(before, after, before_size) == 0);
    free(before);
    free(after);
    CHECK(count_temp_files() == 0);

    /* A path with no directory part writes into the current directory. */
    char cwd[512];
    if (CHECK(getcwd(cwd, sizeof cwd) != NULL) && CHECK(chdir(test_dir) == 0)) {
        CHECK(fn_safetensors_write("relative.safetensors", tensors, 6, NULL, NULL, 0) == FN_OK);
        f = NULL;
        CHECK(fn_safetensors_read("relative.safetensors", &f) == FN_OK && fn_safetensors_count(f) == 6);
        fn_safetensors_free(f);
        CHECK(chdir(cwd) == 0);
    }
}

int main(void) {
    snprintf(test_dir, sizeof test_dir, "/tmp/fastnet_test_XXXXXX");
    if (!mkdtemp(test_dir)) {
        printf("cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    test_json_values();
    test_json_numbers();
    test_json_strings();
    test_json_depth();
    test_json_malformed();
    test_json_getters();
    test_strbuf();
    test_json_fuzz();
    test_dtypes();
    test_round_trip();
    test_reference_layout();
    test_hostile_files();
    test_file_errors();
    remove_test_dir();

    return check_report();
}
