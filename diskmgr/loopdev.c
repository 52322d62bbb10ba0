/* Loop device plumbing for the disk manager (see loopdev.h). Devices are found through
 * /dev/loop-control and identified afterwards only through sysfs, which reports the backing
 * file's path without opening the device: opening and closing a bound autoclear device that
 * nobody else holds would unbind it. */
#include "loopdev.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define LOOP_ATTACH_TRIES 64
#define LOOP_BLOCK_SIZE   4096

static void fill_info(struct loop_info64 *info, const char *file_name, bool direct_io) {
    memset(info, 0, sizeof *info);
    /* No LO_FLAGS_PARTSCAN: the kernel must never parse a partition table a user could have
     * written to the raw image. */
    info->lo_flags = LO_FLAGS_AUTOCLEAR | (direct_io ? LO_FLAGS_DIRECT_IO : 0);
    if (file_name)
        snprintf((char *)info->lo_file_name, sizeof info->lo_file_name, "%s", file_name);
}

/* Pre-5.8 path: bind, then configure. Between the two the device is bound without autoclear,
 * so a failure must unbind it explicitly. */
static int loop_legacy_setup(int fd, int backing_fd, const char *file_name, bool direct_io) {
    if (ioctl(fd, LOOP_SET_FD, backing_fd) < 0)
        return -errno;
    struct loop_info64 info;
    fill_info(&info, file_name, false);
    if (ioctl(fd, LOOP_SET_STATUS64, &info) < 0) {
        int r = -errno;
        (void)ioctl(fd, LOOP_CLR_FD, 0);
        return r;
    }
    /* Both are optimisations; the device works without them. */
    if (ioctl(fd, LOOP_SET_BLOCK_SIZE, (unsigned long)LOOP_BLOCK_SIZE) == 0 && direct_io)
        (void)ioctl(fd, LOOP_SET_DIRECT_IO, 1UL);
    return 0;
}

static void nap_ms(long ms) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int disk_loop_attach(int backing_fd, bool direct_io, const char *file_name, int *ret_fd,
                     int *ret_nr) {
    _cleanup_close_ int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0)
        return -errno;
    bool legacy = false;
    int last = -EBUSY;
    for (int tries = 0; tries < LOOP_ATTACH_TRIES; tries++) {
        int nr = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (nr < 0)
            return -errno;
        char path[DISK_LOOPDEV_MAX];
        int r = xsnprintf(path, sizeof path, "/dev/loop%d", nr);
        if (r < 0)
            return r;
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            /* Without devtmpfs the node appears only when udev gets to it. */
            last = -errno;
            if (errno == ENOENT) {
                nap_ms(2);
                continue;
            }
            return last;
        }
        if (!legacy) {
            struct loop_config cfg;
            memset(&cfg, 0, sizeof cfg);
            cfg.fd = (uint32_t)backing_fd;
            cfg.block_size = LOOP_BLOCK_SIZE;
            fill_info(&cfg.info, file_name, direct_io);
            if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
                *ret_nr = nr;
                *ret_fd = TAKE_FD(fd);
                return 0;
            }
            r = -errno;
            if (r == -EBUSY) { /* another process bound this free device first */
                last = r;
                continue;
            }
            if (r == -EINVAL && direct_io) {
                /* The backing filesystem cannot do O_DIRECT at this block size (tmpfs on
                 * older kernels, for one): buffered I/O still works. */
                direct_io = false;
                tries--;
                continue;
            }
            if (r != -EINVAL && r != -ENOTTY)
                return r;
            legacy = true; /* a kernel without LOOP_CONFIGURE */
        }
        r = loop_legacy_setup(fd, backing_fd, file_name, direct_io);
        if (r == 0) {
            *ret_nr = nr;
            *ret_fd = TAKE_FD(fd);
            return 0;
        }
        if (r != -EBUSY)
            return r;
        last = r;
    }
    return last;
}

static int read_sysfs_line(const char *path, char *buf, size_t len) {
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, len - 1 - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        got += (size_t)n;
        if (got == len - 1)
            return -ENAMETOOLONG;
    }
    while (got > 0 && buf[got - 1] == '\n')
        got--;
    buf[got] = '\0';
    return 0;
}

static int parse_loop_name(const char *s) {
    if (!startswith(s, "loop"))
        return -1;
    s += 4;
    if (!*s)
        return -1;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 1000000)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return (int)v;
}

int disk_loop_foreach(disk_loop_fn fn, void *arg) {
    DIR *d = opendir("/sys/block");
    if (!d)
        return -errno;
    int ret = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int nr = parse_loop_name(de->d_name);
        if (nr < 0)
            continue;
        char path[128], backing[4096];
        if (xsnprintf(path, sizeof path, "/sys/block/%s/loop/backing_file", de->d_name) < 0)
            continue;
        /* No loop/ directory, or no backing_file in it: the device is not bound. */
        if (read_sysfs_line(path, backing, sizeof backing) < 0)
            continue;
        int r = fn(nr, backing, arg);
        if (r < 0) {
            ret = r;
            break;
        }
    }
    closedir(d);
    return ret;
}

int disk_loop_bound(int nr) {
    char path[128];
    int r = xsnprintf(path, sizeof path, "/sys/block/loop%d/loop/backing_file", nr);
    if (r < 0)
        return r;
    if (access(path, F_OK) == 0)
        return 1;
    return errno == ENOENT ? 0 : -errno;
}

int disk_loop_release(int nr) {
    char path[DISK_LOOPDEV_MAX];
    int r = xsnprintf(path, sizeof path, "/dev/loop%d", nr);
    if (r < 0)
        return r;
    _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENXIO ? 0 : -errno;
    /* LOOP_CLR_FD only marks a held device autoclear and returns; with our fd the only holder
     * the device unbinds when we close it. */
    if (ioctl(fd, LOOP_CLR_FD, 0) < 0 && errno != ENXIO)
        return -errno;
    return 0;
}
