/* Output stream buffer and UTF-8 sanitizer (see kstream.h). */
#include "kstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct kstream {
    size_t cap;
    size_t len;
    uint8_t *buf;
};

kstream_t *kstream_new(size_t cap) {
    if (cap < 4) {
        errno = EINVAL;
        return NULL;
    }
    kstream_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->buf = malloc(cap);
    if (!self->buf) {
        free(self);
        return NULL;
    }
    self->cap = cap;
    return self;
}

void kstream_destroy(kstream_t **self_p) {
    if (!self_p || !*self_p)
        return;
    free((*self_p)->buf);
    free(*self_p);
    *self_p = NULL;
}

size_t kstream_space(const kstream_t *self) {
    return self->cap - self->len;
}

uint8_t *kstream_tail(kstream_t *self) {
    return self->buf + self->len;
}

void kstream_commit(kstream_t *self, size_t n) {
    if (n > kstream_space(self))
        n = kstream_space(self);
    self->len += n;
}

size_t kstream_append(kstream_t *self, const void *data, size_t len) {
    size_t n = len < kstream_space(self) ? len : kstream_space(self);
    memcpy(self->buf + self->len, data, n);
    self->len += n;
    return n;
}

size_t kstream_len(const kstream_t *self) {
    return self->len;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if s starts an invalid one; *ret_max
 * gets the length of the maximal subpart (how many bytes a truncated-but-valid-so-far
 * sequence spans), which is what one U+FFFD replaces. */
static size_t utf8_seq(const uint8_t *s, size_t avail, size_t *ret_max) {
    uint8_t c = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c < 0x80) {
        *ret_max = 1;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c == 0xE0) {
        need = 3;
        lo = 0xA0;
    } else if (c == 0xED) {
        need = 3;
        hi = 0x9F; /* no surrogates */
    } else if (c >= 0xE1 && c <= 0xEF) {
        need = 3;
    } else if (c == 0xF0) {
        need = 4;
        lo = 0x90;
    } else if (c == 0xF4) {
        need = 4;
        hi = 0x8F; /* nothing above U+10FFFF */
    } else if (c >= 0xF1 && c <= 0xF3) {
        need = 4;
    } else {
        *ret_max = 1; /* 0x80..0xC1, 0xF5..0xFF: never valid */
        return 0;
    }
    size_t i = 1;
    for (; i < need && i < avail; i++) {
        uint8_t b = s[i];
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h)
            break;
    }
    *ret_max = i;
    return i == need ? need : 0;
}

size_t kutf8_complete_prefix(const uint8_t *buf, size_t len) {
    /* Only the last 3 bytes can start a sequence that more input would complete. */
    size_t start = len > 3 ? len - 3 : 0;
    for (size_t i = len; i > start; i--) {
        const uint8_t *s = buf + i - 1;
        if ((*s & 0xC0) == 0x80)
            continue; /* a continuation byte: look further back for the start */
        size_t max;
        if (*s >= 0xC2 && *s <= 0xF4 && utf8_seq(s, len - (i - 1), &max) == 0 && i - 1 + max == len)
            return i - 1; /* valid so far and cut by the end: hold it back */
        return len;
    }
    return len;
}

char *kutf8_sanitize(const uint8_t *buf, size_t len, size_t *ret_len) {
    /* Worst case: every byte becomes a 3-byte U+FFFD. */
    if (len > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(len * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t max;
        size_t n = utf8_seq(buf + i, len - i, &max);
        if (n) {
            memcpy(out + o, buf + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += max;
        }
    }
    out[o] = '\0';
    if (ret_len)
        *ret_len = o;
    return out;
}

int kstream_take(kstream_t *self, bool force, char **ret, size_t *ret_len) {
    size_t n = force ? self->len : kutf8_complete_prefix(self->buf, self->len);
    if (n == 0) {
        *ret = NULL;
        *ret_len = 0;
        return 0;
    }
    size_t olen;
    char *text = kutf8_sanitize(self->buf, n, &olen);
    if (!text)
        return -ENOMEM;
    memmove(self->buf, self->buf + n, self->len - n);
    self->len -= n;
    *ret = text;
    *ret_len = olen;
    return 0;
}
