/* Host-wide claims of uid ranges and link addresses (see hostclaims.h). */
#include "hostclaims.h"
#include "util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>

#define U128_MAX     (~(gw_u128)0)
#define V4_MAPPED(a) (((gw_u128)0xffff << 32) | (gw_u128)(a))

/* The first span of live[0..n) that overlaps [first, last], or NULL. */
static const gw_claim_t *find(const gw_claim_t *live, size_t n, gw_u128 first, gw_u128 last) {
    for (size_t i = 0; live && i < n; i++)
        if (first <= live[i].last && live[i].first <= last)
            return &live[i];
    return NULL;
}

int gw_claim_overlap(const gw_claim_t *live, size_t n, gw_u128 first, gw_u128 last) {
    const gw_claim_t *c = find(live, n, first, last);
    return c ? (int)(c - live) : -1;
}

bool gw_claim_pick(const gw_claim_t *live, size_t n, gw_u128 lo, gw_u128 hi, gw_u128 len,
                   gw_u128 align, gw_u128 *ret) {
    if (len == 0 || align == 0 || hi < lo)
        return false;
    /* Each step moves past the span in the way, so this ends within n + 1 steps. */
    for (gw_u128 s = lo;;) {
        if (hi - s < len - 1)
            return false;
        const gw_claim_t *c = find(live, n, s, s + len - 1);
        if (!c) {
            *ret = s;
            return true;
        }
        if (c->last >= hi)
            return false;
        gw_u128 past = c->last + 1 - lo; /* > s - lo */
        gw_u128 steps = past / align + (past % align != 0);
        if (steps > (hi - lo) / align)
            return false;
        s = lo + steps * align;
    }
}

static gw_u128 in6_to_u128(const struct in6_addr *a) {
    gw_u128 v = 0;
    for (int i = 0; i < 16; i++)
        v = (v << 8) | a->s6_addr[i];
    return v;
}

static void u128_to_in6(gw_u128 v, struct in6_addr *a) {
    for (int i = 15; i >= 0; i--, v >>= 8)
        a->s6_addr[i] = (uint8_t)v;
}

int gw_link_spans(const fw_pool_t *pool, uint32_t slots, gw_claim_t *v4, gw_claim_t *v6) {
    if (!pool || slots == 0 || pool->prefix4 > 30 || (pool->has_v6 && pool->prefix6 > 126))
        return -EINVAL;
    gw_u128 len = (gw_u128)slots * 4;
    if (len > ((gw_u128)1 << (32 - pool->prefix4)) ||
        (pool->has_v6 && pool->prefix6 > 0 && len > ((gw_u128)1 << (128 - pool->prefix6))))
        return -ERANGE;
    gw_u128 b4 = V4_MAPPED(ntohl(pool->base4.s_addr));
    *v4 = (gw_claim_t){.first = b4, .last = b4 + len - 1};
    *v6 = (gw_claim_t){0};
    if (pool->has_v6) {
        gw_u128 b6 = in6_to_u128(&pool->base6);
        *v6 = (gw_claim_t){.first = b6, .last = b6 + len - 1};
    }
    return 0;
}

/* [first, last] of a prefix of the 128-bit space. */
static void prefix_span(gw_u128 base, unsigned bits_host, gw_u128 *first, gw_u128 *last) {
    gw_u128 size_m1 = bits_host >= 128 ? ~(gw_u128)0 : ((gw_u128)1 << bits_host) - 1;
    *first = base & ~size_m1;
    *last = *first | size_m1;
}

size_t gw_routes_taken(const fw_route_t *routes, size_t n, const fw_pool_t *pool,
                       const char *own_dev_prefix, gw_claim_t *ret) {
    size_t k = 0;
    for (size_t i = 0; routes && pool && i < n; i++) {
        const fw_route_t *rt = &routes[i];
        if (rt->dst_len == 0 || (own_dev_prefix && startswith(rt->dev, own_dev_prefix)))
            continue;
        gw_u128 first, last, blk_first, blk_last;
        unsigned blk_len;
        if (rt->family == AF_INET && rt->dst_len <= 32) {
            uint32_t a;
            memcpy(&a, rt->dst, 4);
            prefix_span(V4_MAPPED(ntohl(a)), 32u - rt->dst_len, &first, &last);
            prefix_span(V4_MAPPED(ntohl(pool->base4.s_addr)), 32u - pool->prefix4, &blk_first,
                        &blk_last);
            blk_len = pool->prefix4;
        } else if (rt->family == AF_INET6 && rt->dst_len <= 128 && pool->has_v6) {
            struct in6_addr a;
            memcpy(&a, rt->dst, 16);
            prefix_span(in6_to_u128(&a), 128u - rt->dst_len, &first, &last);
            prefix_span(in6_to_u128(&pool->base6), 128u - pool->prefix6, &blk_first, &blk_last);
            blk_len = pool->prefix6;
        } else {
            continue;
        }
        if (first > blk_last || last < blk_first || (rt->via_gateway && rt->dst_len <= blk_len))
            continue;
        /* Only what it takes of the block: a broader route never meets another family's. */
        ret[k] = (gw_claim_t){.first = first < blk_first ? blk_first : first,
                              .last = last > blk_last ? blk_last : last};
        snprintf(ret[k].dev, sizeof ret[k].dev, "%s", rt->dev);
        k++;
    }
    return k;
}

const char *gw_claim_addr_str(gw_u128 a, char *buf, size_t len) {
    if (a >> 32 == 0xffff) {
        struct in_addr v4 = {.s_addr = htonl((uint32_t)a)};
        return inet_ntop(AF_INET, &v4, buf, (socklen_t)len) ? buf : "?";
    }
    struct in6_addr v6;
    u128_to_in6(a, &v6);
    return inet_ntop(AF_INET6, &v6, buf, (socklen_t)len) ? buf : "?";
}

/* ---- the registry: one file per span, "<first>-<last>" in 32 hex digits each ---- */

#define HEX_LEN 32

static void hex128(gw_u128 v, char buf[HEX_LEN + 1]) {
    snprintf(buf, HEX_LEN + 1, "%016llx%016llx", (unsigned long long)(v >> 64),
             (unsigned long long)v);
}

/* Exactly HEX_LEN lowercase hex digits; *end past them. */
static bool parse_hex128(const char *s, gw_u128 *ret, const char **end) {
    gw_u128 v = 0;
    for (int i = 0; i < HEX_LEN; i++) {
        char c = s[i];
        unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                                            : 16;
        if (d == 16)
            return false;
        v = (v << 4) | d;
    }
    *ret = v;
    *end = s + HEX_LEN;
    return true;
}

static bool parse_name(const char *name, gw_claim_t *c) {
    const char *p;
    if (!parse_hex128(name, &c->first, &p) || *p != '-' || !parse_hex128(p + 1, &c->last, &p) || *p)
        return false;
    return c->first <= c->last;
}

static pid_t read_pid(int fd) {
    char buf[16] = "";
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    return (pid_t)strtol(buf, NULL, 10);
}

typedef struct {
    int dfd; /* the directory, flock'd: scan-then-claim is atomic between gateways */
    gw_claim_t *live;
    size_t n;
} registry_t;

static void registry_close(registry_t *reg) {
    closep(&reg->dfd); /* and with it the directory's lock */
    free(reg->live);
    reg->live = NULL;
    reg->n = 0;
}

static int claim_cmp(const void *a, const void *b) {
    const gw_claim_t *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* Opens and locks dir (made 0700 if missing) and reads the spans running gateways hold;
 * stale claims (their owner gone) are removed on the way. */
static int registry_open(const char *dir, registry_t *reg) {
    *reg = (registry_t){.dfd = -1};
    int r = mkdir_p(dir, 0700);
    if (r < 0)
        return r;
    if ((reg->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        flock(reg->dfd, LOCK_EX) < 0) {
        r = -errno;
        registry_close(reg);
        return r;
    }
    int fd = openat(reg->dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        r = -errno;
        if (fd >= 0)
            close(fd);
        registry_close(reg);
        return r;
    }
    size_t cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        gw_claim_t c = {0};
        if (!parse_name(de->d_name, &c))
            continue;
        _cleanup_close_ int f = openat(reg->dfd, de->d_name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (f < 0)
            continue;
        if (flock(f, LOCK_EX | LOCK_NB) == 0) {
            (void)unlinkat(reg->dfd, de->d_name, 0); /* its gateway is gone */
            continue;
        }
        if (errno != EWOULDBLOCK)
            continue;
        c.pid = read_pid(f);
        if (reg->n == cap) {
            cap = cap ? 2 * cap : 8;
            gw_claim_t *grown = realloc(reg->live, cap * sizeof *grown);
            if (!grown) {
                closedir(d);
                registry_close(reg);
                return -ENOMEM;
            }
            reg->live = grown;
        }
        reg->live[reg->n++] = c;
    }
    closedir(d);
    /* In address order: the span reported as in the way is the lowest one, whatever order
     * the directory lists them in. */
    if (reg->n > 1)
        qsort(reg->live, reg->n, sizeof *reg->live, claim_cmp);
    return 0;
}

#define CLAIM_NAME_LEN (2 * HEX_LEN + 2)

static void claim_name(gw_u128 first, gw_u128 last, char name[CLAIM_NAME_LEN]) {
    char a[HEX_LEN + 1], b[HEX_LEN + 1];
    hex128(first, a);
    hex128(last, b);
    snprintf(name, CLAIM_NAME_LEN, "%s-%s", a, b);
}

/* The claim's file, flock'd, our pid in it: 0 with *ret_fd; the claim lasts while it is open. */
static int registry_claim(registry_t *reg, gw_u128 first, gw_u128 last, int *ret_fd) {
    char name[CLAIM_NAME_LEN];
    claim_name(first, last, name);
    _cleanup_close_ int fd =
        openat(reg->dfd, name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    char pid[16];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (flock(fd, LOCK_EX | LOCK_NB) < 0 || ftruncate(fd, 0) < 0 ||
        pwrite(fd, pid, (size_t)len, 0) != len) {
        int e = errno;
        (void)unlinkat(reg->dfd, name, 0);
        return -e;
    }
    *ret_fd = TAKE_FD(fd);
    return 0;
}

static void registry_unclaim(registry_t *reg, gw_u128 first, gw_u128 last, int *fd) {
    char name[CLAIM_NAME_LEN];
    claim_name(first, last, name);
    (void)unlinkat(reg->dfd, name, 0);
    closep(fd);
}

/* ---- uids ---- */

static uint32_t read_kept_uid(const char *keep_path) {
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    if (!keep_path || read_file_bounded(keep_path, 32, &text, &len) < 0)
        return 0;
    char *end;
    unsigned long b = strtoul(text, &end, 10);
    return end != text && b >= 1000 && b <= INT32_MAX ? (uint32_t)b : 0;
}

int gw_uid_claim(const char *dir, const char *keep_path, uint32_t base, uint32_t count,
                 uint32_t *ret_base, int *ret_fd, gw_claim_t *conflict) {
    *conflict = (gw_claim_t){0};
    if (count == 0)
        return -EINVAL;
    registry_t reg;
    int r = registry_open(dir, &reg);
    if (r < 0)
        return r;
    bool first_start = false;
    if (base == 0 && (base = read_kept_uid(keep_path)) == 0) {
        first_start = true;
        gw_u128 pick;
        /* base + count <= INT32_MAX: the last uid is at most INT32_MAX - 1. */
        if (!gw_claim_pick(reg.live, reg.n, GW_UID_AUTO_LO, INT32_MAX - 1, count, 1, &pick)) {
            registry_close(&reg);
            return -EBUSY; /* conflict->last 0: no free range left */
        }
        base = (uint32_t)pick;
    }
    *ret_base = base; /* also on a refusal: the range that was asked for */
    gw_u128 last = (gw_u128)base + count - 1;
    const gw_claim_t *c = find(reg.live, reg.n, base, last);
    if (c) {
        *conflict = *c;
        registry_close(&reg);
        return -EBUSY;
    }
    int fd = -1;
    if ((r = registry_claim(&reg, base, last, &fd)) == 0 && first_start && keep_path) {
        char kept[16];
        int klen = snprintf(kept, sizeof kept, "%u\n", base);
        if ((r = write_file_atomic(keep_path, kept, (size_t)klen, 0600)) < 0)
            registry_unclaim(&reg, base, last, &fd);
    }
    registry_close(&reg);
    if (r == 0)
        *ret_fd = fd;
    return r;
}

/* ---- worker links ---- */

/* "<offset4> <offset6>\n" in hex: where the spans start in their blocks. */
static bool read_kept_links(const char *keep_path, gw_u128 off[2]) {
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    const char *p;
    if (!keep_path || read_file_bounded(keep_path, 128, &text, &len) < 0 || len < 2 * HEX_LEN + 1 ||
        !parse_hex128(text, &off[0], &p) || *p != ' ' || !parse_hex128(p + 1, &off[1], &p))
        return false;
    return true;
}

/* In [blk_lo, blk_hi]: the kept span if it is aligned, fits and is free (a hand-edited or
 * stale offset, or another --uid-count, is not used), else the lowest free one aligned to its
 * own size. */
static int pick_link_span(const registry_t *reg, gw_u128 blk_lo, gw_u128 blk_hi, gw_u128 len,
                          bool has_kept, gw_u128 kept_off, gw_u128 *ret, gw_claim_t *conflict) {
    if (has_kept && kept_off % len == 0 && kept_off <= blk_hi - blk_lo &&
        blk_hi - blk_lo - kept_off >= len - 1 &&
        !find(reg->live, reg->n, blk_lo + kept_off, blk_lo + kept_off + len - 1)) {
        *ret = blk_lo + kept_off;
        return 0;
    }
    if (gw_claim_pick(reg->live, reg->n, blk_lo, blk_hi, len, len, ret))
        return 0;
    const gw_claim_t *c = find(reg->live, reg->n, blk_lo, blk_lo + len - 1);
    if (c)
        *conflict = *c;
    return -EBUSY;
}

/* The host's routes join the running gateways' claims, in address order. */
static int registry_add(registry_t *reg, const gw_claim_t *more, size_t n) {
    if (n == 0)
        return 0;
    gw_claim_t *grown = realloc(reg->live, (reg->n + n) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    memcpy(grown + reg->n, more, n * sizeof *more);
    reg->live = grown;
    reg->n += n;
    qsort(reg->live, reg->n, sizeof *reg->live, claim_cmp);
    return 0;
}

int gw_link_claim(const char *dir, const char *keep_path, fw_pool_t *pool, uint32_t slots,
                  const gw_claim_t *taken, size_t n_taken, int ret_fds[2], gw_claim_t *conflict) {
    *conflict = (gw_claim_t){0};
    gw_claim_t s4, s6;
    int r = gw_link_spans(pool, slots, &s4, &s6);
    if (r < 0)
        return r;
    gw_u128 len = s4.last - s4.first + 1;
    gw_u128 blk4_hi = s4.first + ((gw_u128)1 << (32 - pool->prefix4)) - 1;
    gw_u128 blk6_hi = 0;
    if (pool->has_v6)
        blk6_hi =
            pool->prefix6 == 0 ? U128_MAX : s6.first + ((gw_u128)1 << (128 - pool->prefix6)) - 1;
    gw_u128 kept[2] = {0, 0};
    bool has_kept = read_kept_links(keep_path, kept);
    registry_t reg;
    if ((r = registry_open(dir, &reg)) < 0)
        return r;
    if ((r = registry_add(&reg, taken, n_taken)) < 0) {
        registry_close(&reg);
        return r;
    }
    gw_u128 at4 = 0, at6 = 0;
    int fd4 = -1, fd6 = -1;
    r = pick_link_span(&reg, s4.first, blk4_hi, len, has_kept, kept[0], &at4, conflict);
    if (r == 0 && pool->has_v6)
        r = pick_link_span(&reg, s6.first, blk6_hi, len, has_kept, kept[1], &at6, conflict);
    if (r == 0)
        r = registry_claim(&reg, at4, at4 + len - 1, &fd4);
    if (r == 0 && pool->has_v6 && (r = registry_claim(&reg, at6, at6 + len - 1, &fd6)) < 0)
        registry_unclaim(&reg, at4, at4 + len - 1, &fd4);
    if (r == 0 && keep_path) {
        char a[HEX_LEN + 1], b[HEX_LEN + 1], line[2 * HEX_LEN + 3];
        hex128(at4 - s4.first, a);
        hex128(pool->has_v6 ? at6 - s6.first : 0, b);
        int n = snprintf(line, sizeof line, "%s %s\n", a, b);
        if ((r = write_file_atomic(keep_path, line, (size_t)n, 0600)) < 0) {
            registry_unclaim(&reg, at4, at4 + len - 1, &fd4);
            if (fd6 >= 0)
                registry_unclaim(&reg, at6, at6 + len - 1, &fd6);
        }
    }
    registry_close(&reg);
    if (r < 0)
        return r;
    pool->base4.s_addr = htonl((uint32_t)at4);
    if (pool->has_v6)
        u128_to_in6(at6, &pool->base6);
    ret_fds[0] = fd4;
    ret_fds[1] = fd6;
    return 0;
}
