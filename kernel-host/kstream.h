/* Output streams of the native kernel: the bytes user code (and every process it starts)
 * writes to fd 1 and fd 2 arrive on pipes; this buffer turns them into the text of iopub
 * `stream` messages. Pure (no I/O, no clock), so the coalescing and UTF-8 rules are unit
 * tested (tests/unit/test_kernel_stream.c).
 *
 * Rules:
 *   - bounded: at most `cap` bytes are held; the caller reads from the pipe only as much as
 *     kstream_space() allows, so a flood blocks the writer (pipe backpressure), never memory;
 *   - a message's text is valid UTF-8 (JSON strings must be): invalid bytes become U+FFFD,
 *     and a multi-byte sequence cut at the end of a read is held back until it completes
 *     (at most 3 bytes), unless the caller forces it out. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kstream kstream_t;

/* cap: the most bytes held (>= 4). NULL on ENOMEM or a cap below 4 (errno EINVAL). */
kstream_t *kstream_new(size_t cap);
void kstream_destroy(kstream_t **self_p);

/* Free room, and a pointer to it: read(2) straight into it, then kstream_commit(). */
size_t kstream_space(const kstream_t *self);
uint8_t *kstream_tail(kstream_t *self);
void kstream_commit(kstream_t *self, size_t n);
/* Copy in up to kstream_space() bytes; returns how many were taken. */
size_t kstream_append(kstream_t *self, const void *data, size_t len);

/* Bytes held (including a held-back partial character). */
size_t kstream_len(const kstream_t *self);

/* Takes what can be published now as a new NUL-terminated string (caller frees) of
 * *ret_len bytes: everything held, sanitized, except a trailing incomplete UTF-8 sequence
 * (kept for the next read) unless `force`. 0 and *ret = NULL when there is nothing to
 * publish; -ENOMEM. */
int kstream_take(kstream_t *self, bool force, char **ret, size_t *ret_len);

/* Length of the longest prefix of buf[0..len) that does not end inside a multi-byte UTF-8
 * sequence which could still be completed by more bytes. */
size_t kutf8_complete_prefix(const uint8_t *buf, size_t len);

/* A sanitized copy of buf: valid UTF-8, each maximal invalid subsequence replaced by U+FFFD
 * (the WHATWG/Unicode "substitution of maximal subparts" rule). NUL-terminated; NULL on
 * ENOMEM. Strict as jansson is: no surrogates, no overlongs, nothing above U+10FFFF. */
char *kutf8_sanitize(const uint8_t *buf, size_t len, size_t *ret_len);
