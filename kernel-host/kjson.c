/* Compact JSON encoding for the native kernel's send path (see kjson.h). */
#include "kjson.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Deeper values (none the kernel builds: py2json stops at 200) go through json_dumps, which
 * also owns the answer for cyclic values. */
#define KJSON_MAX_DEPTH 256

static int reserve(kjbuf_t *b, size_t n) {
    if (b->cap - b->len >= n)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (!d)
        return -ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

int kjbuf_append(kjbuf_t *b, const void *p, size_t n) {
    if (reserve(b, n) < 0)
        return -ENOMEM;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void kjbuf_free(kjbuf_t *b) {
    free(b->data);
    *b = (kjbuf_t){0};
}

/* 0: as is; 1: a two-character escape (in kj_esc2); 2: \u00XX. jansson escapes '"', '\\'
 * and the control characters below 0x20, nothing else (no JSON_ESCAPE_SLASH, no
 * JSON_ENSURE_ASCII), and writes \u escapes with uppercase hex. */
static const unsigned char kj_class[256] = {
    [0x00] = 2, [0x01] = 2, [0x02] = 2, [0x03] = 2, [0x04] = 2, [0x05] = 2, [0x06] = 2,
    [0x07] = 2, ['\b'] = 1, ['\t'] = 1, ['\n'] = 1, [0x0b] = 2, ['\f'] = 1, ['\r'] = 1,
    [0x0e] = 2, [0x0f] = 2, [0x10] = 2, [0x11] = 2, [0x12] = 2, [0x13] = 2, [0x14] = 2,
    [0x15] = 2, [0x16] = 2, [0x17] = 2, [0x18] = 2, [0x19] = 2, [0x1a] = 2, [0x1b] = 2,
    [0x1c] = 2, [0x1d] = 2, [0x1e] = 2, [0x1f] = 2, ['"'] = 1,  ['\\'] = 1,
};

static char kj_esc2(unsigned char c) {
    switch (c) {
    case '\b':
        return 'b';
    case '\f':
        return 'f';
    case '\n':
        return 'n';
    case '\r':
        return 'r';
    case '\t':
        return 't';
    default:
        return (char)c; /* '"' and '\\' */
    }
}

int kjson_append_string(kjbuf_t *b, const char *s, size_t len) {
    /* Worst case: every byte a \u00XX escape, plus the quotes. */
    if (len > (SIZE_MAX - 2) / 6 || reserve(b, len * 6 + 2) < 0)
        return -ENOMEM;
    static const char hex[] = "0123456789ABCDEF";
    char *o = b->data + b->len;
    *o++ = '"';
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && !kj_class[*p])
            p++;
        memcpy(o, run, (size_t)(p - run));
        o += p - run;
        if (p == end)
            break;
        unsigned char c = *p++;
        *o++ = '\\';
        if (kj_class[c] == 1) {
            *o++ = kj_esc2(c);
        } else {
            o[0] = 'u';
            o[1] = '0';
            o[2] = '0';
            o[3] = hex[c >> 4];
            o[4] = hex[c & 15];
            o += 5;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

static int append_value(kjbuf_t *b, const json_t *j, int depth);

static int append_dumped(kjbuf_t *b, const json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        return -ENOMEM;
    int r = kjbuf_append(b, s, strlen(s));
    free(s);
    return r;
}

static int append_value(kjbuf_t *b, const json_t *j, int depth) {
    if (depth > KJSON_MAX_DEPTH)
        return -ELOOP;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (kjbuf_append(b, "{", 1) < 0)
            return -ENOMEM;
        bool first = true;
        /* Insertion order, as json_dumps without JSON_SORT_KEYS. */
        for (void *it = json_object_iter((json_t *)j); it;
             it = json_object_iter_next((json_t *)j, it)) {
            if (!first && kjbuf_append(b, ",", 1) < 0)
                return -ENOMEM;
            first = false;
            int r = kjson_append_string(b, json_object_iter_key(it), json_object_iter_key_len(it));
            if (r < 0 || (r = kjbuf_append(b, ":", 1)) < 0 ||
                (r = append_value(b, json_object_iter_value(it), depth + 1)) < 0)
                return r;
        }
        return kjbuf_append(b, "}", 1);
    }
    case JSON_ARRAY: {
        if (kjbuf_append(b, "[", 1) < 0)
            return -ENOMEM;
        size_t n = json_array_size(j);
        for (size_t i = 0; i < n; i++) {
            int r;
            if ((i && (r = kjbuf_append(b, ",", 1)) < 0) ||
                (r = append_value(b, json_array_get(j, i), depth + 1)) < 0)
                return r;
        }
        return kjbuf_append(b, "]", 1);
    }
    case JSON_STRING:
        return kjson_append_string(b, json_string_value(j), json_string_length(j));
    case JSON_INTEGER: {
        char num[32];
        int n = snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
        return kjbuf_append(b, num, (size_t)n);
    }
    case JSON_TRUE:
        return kjbuf_append(b, "true", 4);
    case JSON_FALSE:
        return kjbuf_append(b, "false", 5);
    case JSON_NULL:
        return kjbuf_append(b, "null", 4);
    case JSON_REAL:
    default:
        return append_dumped(b, j); /* jansson's own number formatting */
    }
}

int kjson_append_object(kjbuf_t *b, const json_t *j) {
    if (!json_is_object(j))
        return -EINVAL;
    size_t start = b->len;
    int r = append_value(b, j, 0);
    if (r == -ELOOP) {
        b->len = start;
        char *s = json_dumps(j, JSON_COMPACT);
        r = s ? kjbuf_append(b, s, strlen(s)) : -ENOMEM;
        free(s);
    }
    if (r < 0)
        b->len = start;
    return r;
}
