/* Small helpers shared by every component: cleanup attributes (the house ownership tool),
 * TAKE_PTR/TAKE_FD to hand ownership out of a scope, and a few bounded string helpers.
 * Header-only so the fuzz targets and unit tests get them without extra linking. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* czmq's prelude defines streq/strneq as macros that are not NULL-safe; include it first so
 * ours always win, whatever a file includes after util.h. */
#include <czmq.h>
#undef streq
#undef strneq

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline void freep(void *p) {
    free(*(void **)p);
}
/* Closes *fd if open and marks it closed: usable by hand on a struct's fd as well as for
 * _cleanup_close_. errno is kept for the caller's error path. */
static inline void closep(int *fd) {
    if (*fd >= 0) {
        int saved = errno;
        close(*fd);
        errno = saved;
        *fd = -1;
    }
}
static inline void fclosep(FILE **f) {
    if (*f)
        fclose(*f);
}

#define _cleanup_(f)     __attribute__((cleanup(f)))
#define _cleanup_free_   _cleanup_(freep)
#define _cleanup_close_  _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Move ownership out of a cleanup-scoped variable. */
#define TAKE_PTR(p)                                                                                \
    ({                                                                                             \
        __typeof__(p) _tp = (p);                                                                   \
        (p) = NULL;                                                                                \
        _tp;                                                                                       \
    })
#define TAKE_FD(fd)                                                                                \
    ({                                                                                             \
        int _tf = (fd);                                                                            \
        (fd) = -1;                                                                                 \
        _tf;                                                                                       \
    })

static inline bool kbox_streq(const char *a, const char *b) {
    return a && b && strcmp(a, b) == 0;
}
#define streq(a, b) kbox_streq((a), (b))
static inline bool startswith(const char *s, const char *prefix) {
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Monotonic and wall clocks in the units the code actually compares. */
uint64_t now_mono_us(void);
uint64_t now_mono_ms(void);
uint64_t now_wall_us(void);

/* snprintf that returns -ENAMETOOLONG instead of silently truncating. */
int xsnprintf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Write the whole buffer to fd (retrying EINTR/short writes); -errno on failure. */
int write_all(int fd, const void *buf, size_t len);

/* Read a whole small regular file (at most max bytes) into a NUL-terminated buffer; anything
 * else (a FIFO, a device, a directory, a symlink) is -EINVAL or -ELOOP, without blocking. */
int read_file_bounded(const char *path, size_t max, char **ret, size_t *ret_len);

/* Write a file atomically (tmp + fsync + rename) with the given mode. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* mkdir -p with mode for every component created. */
int mkdir_p(const char *path, mode_t mode);

/* rm -rf that never crosses a mount point (so a bind-mounted disk is never wiped). */
int rm_rf(const char *path);

/* A random RFC 4122 version-4 UUID string (36 chars + NUL) from libsodium's CSPRNG. */
void uuid4(char ret[37]);

/* Lowercase hex of n random bytes into ret (2n+1 bytes). */
void random_hex(char *ret, size_t nbytes);
