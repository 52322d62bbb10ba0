/* The host-wide registry of worker uid ranges (see uidrange.h). */
#include "uidrange.h"
#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>

static bool overlaps(uint32_t a, uint32_t na, uint32_t b, uint32_t nb) {
    return (uint64_t)a < (uint64_t)b + nb && (uint64_t)b < (uint64_t)a + na;
}

int gw_uid_overlap(const gw_uid_range_t *live, size_t n, uint32_t base, uint32_t count) {
    for (size_t i = 0; i < n; i++)
        if (overlaps(base, count, live[i].base, live[i].count))
            return (int)i;
    return -1;
}

uint32_t gw_uid_pick(const gw_uid_range_t *live, size_t n, uint32_t count, uint32_t lo) {
    if (count == 0)
        return 0;
    /* Each step moves past the range in the way, so this ends within n + 1 steps. */
    for (uint64_t b = lo;;) {
        if (b + count > INT32_MAX)
            return 0;
        int i = gw_uid_overlap(live, n, (uint32_t)b, count);
        if (i < 0)
            return (uint32_t)b;
        b = (uint64_t)live[i].base + live[i].count;
    }
}

/* "<base>-<count>", nothing else. */
static bool parse_name(const char *name, uint32_t *base, uint32_t *count) {
    char *end;
    errno = 0;
    unsigned long b = strtoul(name, &end, 10);
    if (end == name || *end != '-' || errno || b > UINT32_MAX)
        return false;
    const char *c = end + 1;
    unsigned long k = strtoul(c, &end, 10);
    if (end == c || *end || errno || k == 0 || k > UINT32_MAX)
        return false;
    *base = (uint32_t)b;
    *count = (uint32_t)k;
    return true;
}

static pid_t read_pid(int fd) {
    char buf[16] = "";
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    return (pid_t)strtol(buf, NULL, 10);
}

/* The ranges running gateways hold; stale claims (their owner gone) are removed on the way. */
static int scan(int dfd, gw_uid_range_t **ret, size_t *ret_n) {
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return -e;
    }
    gw_uid_range_t *live = NULL;
    size_t n = 0, cap = 0;
    int r = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        gw_uid_range_t g = {0};
        if (!parse_name(de->d_name, &g.base, &g.count))
            continue;
        _cleanup_close_ int f = openat(dfd, de->d_name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (f < 0)
            continue;
        if (flock(f, LOCK_EX | LOCK_NB) == 0) {
            (void)unlinkat(dfd, de->d_name, 0); /* its gateway is gone */
            continue;
        }
        if (errno != EWOULDBLOCK)
            continue;
        g.pid = read_pid(f);
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            gw_uid_range_t *grown = realloc(live, cap * sizeof *live);
            if (!grown) {
                r = -ENOMEM;
                break;
            }
            live = grown;
        }
        live[n++] = g;
    }
    closedir(d);
    if (r < 0) {
        free(live);
        return r;
    }
    *ret = live;
    *ret_n = n;
    return 0;
}

static uint32_t read_kept(const char *keep_path) {
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    if (!keep_path || read_file_bounded(keep_path, 32, &text, &len) < 0)
        return 0;
    char *end;
    unsigned long b = strtoul(text, &end, 10);
    return end != text && b >= 1000 && b <= INT32_MAX ? (uint32_t)b : 0;
}

int gw_uid_claim(const char *dir, const char *keep_path, uint32_t base, uint32_t count,
                 uint32_t *ret_base, int *ret_fd, gw_uid_range_t *conflict) {
    *conflict = (gw_uid_range_t){0};
    int r = mkdir_p(dir, 0700);
    if (r < 0)
        return r;
    /* The directory's lock makes scan-then-claim atomic between gateways starting at once;
     * it goes with dfd. */
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    if (flock(dfd, LOCK_EX) < 0)
        return -errno;
    _cleanup_free_ gw_uid_range_t *live = NULL;
    size_t n = 0;
    if ((r = scan(dfd, &live, &n)) < 0)
        return r;
    bool first_start = false;
    if (base == 0 && (base = read_kept(keep_path)) == 0) {
        first_start = true;
        if ((base = gw_uid_pick(live, n, count, GW_UID_AUTO_LO)) == 0)
            return -EBUSY; /* conflict->count 0: no free range left */
    }
    *ret_base = base; /* also on a refusal: the range that was asked for */
    int i = gw_uid_overlap(live, n, base, count);
    if (i >= 0) {
        *conflict = live[i];
        return -EBUSY;
    }
    char name[32];
    snprintf(name, sizeof name, "%u-%u", base, count);
    _cleanup_close_ int fd = openat(dfd, name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    char pid[16];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (flock(fd, LOCK_EX | LOCK_NB) < 0 || ftruncate(fd, 0) < 0 ||
        pwrite(fd, pid, (size_t)len, 0) != len)
        return -errno;
    if (first_start && keep_path) {
        char kept[16];
        int klen = snprintf(kept, sizeof kept, "%u\n", base);
        if ((r = write_file_atomic(keep_path, kept, (size_t)klen, 0600)) < 0) {
            (void)unlinkat(dfd, name, 0);
            return r;
        }
    }
    *ret_fd = TAKE_FD(fd);
    return 0;
}
