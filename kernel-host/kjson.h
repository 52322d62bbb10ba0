/* Compact JSON encoding for the native kernel's send path: a growable byte buffer and an
 * encoder of jansson values whose output is byte for byte json_dumps(v, JSON_COMPACT) (same
 * key order, same escapes, reals formatted by jansson itself), without jansson's per-call
 * string buffer, per-chunk callbacks and cycle-check table. Pure; unit tested against
 * json_dumps in tests/unit/test_kernel_json.c. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} kjbuf_t;

/* 0 or -ENOMEM. */
int kjbuf_append(kjbuf_t *b, const void *p, size_t n);
void kjbuf_free(kjbuf_t *b);

/* A JSON string (quoted, escaped as jansson escapes it) of the UTF-8 text s[0..len). */
int kjson_append_string(kjbuf_t *b, const char *s, size_t len);

/* Appends json_dumps(j, JSON_COMPACT)'s text: 0, -EINVAL if j is not an object (nothing
 * appended), -ENOMEM. */
int kjson_append_object(kjbuf_t *b, const json_t *j);
