/* Root integration tests of the disk manager against real loop devices, real ext4 mounts and
 * small tmpfs filesystems the tests mount themselves. They must run as root and fail (never
 * skip) otherwise. Everything lives under a mkdtemp() directory in /tmp that the teardown
 * sweeps and removes, also after a failed test. What is left behind is checked through the
 * kernel's own reports (/proc/self/mountinfo, /sys/block/loop*), not through the library. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "diskmgr.h"
#include "util.h"

#define MiB (1024ull * 1024ull)

typedef struct {
    char base[64];
    char images[128];
    char mounts[128];
    char tmpfs[128]; /* a tmpfs a test mounted, "" if none */
    disk_mgr_t *mgr;
} fixture_t;

/* --- what the kernel reports --- */

/* Bound loop devices whose backing file lies under dir (dir == NULL: all bound devices). */
static int count_loops(const char *dir) {
    DIR *d = opendir("/sys/block");
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "loop", 4) != 0)
            continue;
        char path[300];
        snprintf(path, sizeof path, "/sys/block/%s/loop/backing_file", de->d_name);
        char *buf = NULL;
        if (read_file_bounded(path, 8192, &buf, NULL) < 0)
            continue;
        if (!dir || (startswith(buf, dir) && buf[strlen(dir)] == '/'))
            n++;
        free(buf);
    }
    closedir(d);
    return n;
}

/* An autoclear loop device unbinds once its last opener lets go, asynchronously in the
 * kernel: wait up to 2 s for none under dir to be left. */
static void wait_no_loops(const char *dir) {
    for (int i = 0; i < 200 && count_loops(dir) > 0; i++)
        usleep(10000);
    assert_int_equal(count_loops(dir), 0);
}

typedef struct {
    char target[512];
    char fstype[64];
    char source[256];
    char opts[512];  /* per-mount options */
    char super[512]; /* superblock options */
} mnt_entry_t;

/* Reads /proc/self/mountinfo; calls fn for each line. Our paths contain no blanks, so the
 * octal escapes never matter here. */
static int foreach_mount(int (*fn)(const mnt_entry_t *, void *), void *arg) {
    FILE *f = fopen("/proc/self/mountinfo", "re");
    assert_non_null(f);
    char line[4096];
    int ret = 0;
    while (fgets(line, sizeof line, f)) {
        mnt_entry_t e;
        memset(&e, 0, sizeof e);
        char *save = NULL, *tok;
        int field = 0;
        bool after_dash = false;
        int post = 0;
        for (tok = strtok_r(line, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
            if (!after_dash) {
                if (field == 4)
                    snprintf(e.target, sizeof e.target, "%s", tok);
                else if (field == 5)
                    snprintf(e.opts, sizeof e.opts, "%s", tok);
                else if (field > 5 && streq(tok, "-"))
                    after_dash = true;
                field++;
            } else {
                if (post == 0)
                    snprintf(e.fstype, sizeof e.fstype, "%s", tok);
                else if (post == 1)
                    snprintf(e.source, sizeof e.source, "%s", tok);
                else if (post == 2)
                    snprintf(e.super, sizeof e.super, "%s", tok);
                post++;
            }
        }
        ret = fn(&e, arg);
        if (ret)
            break;
    }
    fclose(f);
    return ret;
}

typedef struct {
    const char *path;
    mnt_entry_t found;
    int n;
} find_t;

static int find_cb(const mnt_entry_t *e, void *arg) {
    find_t *f = arg;
    if (streq(e->target, f->path)) {
        f->found = *e;
        f->n++;
    }
    return 0;
}

static int under_cb(const mnt_entry_t *e, void *arg) {
    find_t *f = arg;
    if (startswith(e->target, f->path) && e->target[strlen(f->path)] == '/')
        f->n++;
    return 0;
}

/* Mounts at exactly path; *ret gets the newest. */
static int mounts_at(const char *path, mnt_entry_t *ret) {
    find_t f = {.path = path};
    foreach_mount(find_cb, &f);
    if (ret)
        *ret = f.found;
    return f.n;
}

static int mounts_under(const char *dir) {
    find_t f = {.path = dir};
    foreach_mount(under_cb, &f);
    return f.n;
}

static bool has_opt(const char *opts, const char *opt) {
    size_t n = strlen(opt);
    for (const char *p = opts; (p = strstr(p, opt)); p += n)
        if ((p == opts || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static double ms_since(uint64_t t0) {
    return (double)(now_mono_us() - t0) / 1000.0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Runs argv (no shell) with stdout to out_path (or /dev/null); returns the exit status. */
static int run_cmd(char *const argv[], const char *out_path) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || dup2(fd, 1) < 0)
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        assert_int_equal(errno, EINTR);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void write_file(const char *path, const char *data) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, data, strlen(data)), 0);
    assert_int_equal(close(fd), 0);
}

/* --- fixture --- */

static int new_mgr(fixture_t *f, const char *images, const char *mounts, uint64_t reserve_mb,
                   disk_mgr_t **ret) {
    disk_mgr_config_t cfg;
    disk_mgr_config_init(&cfg);
    cfg.images_dir = images;
    cfg.mounts_dir = mounts;
    cfg.reserve_mb = reserve_mb;
    (void)f;
    return disk_mgr_new(&cfg, ret);
}

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->base, sizeof f->base, "/tmp/kbox-disk-test-XXXXXX");
    if (!mkdtemp(f->base)) {
        free(f);
        return -1;
    }
    snprintf(f->images, sizeof f->images, "%s/disks", f->base);
    snprintf(f->mounts, sizeof f->mounts, "%s/mnt", f->base);
    int r = new_mgr(f, f->images, f->mounts, 256, &f->mgr);
    if (r < 0) {
        fprintf(stderr, "disk_mgr_new: %s\n", strerror(-r));
        rmdir(f->base);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

typedef struct {
    const char *base;
    const char *skip;
    char target[512];
} newest_t;

static int newest_cb(const mnt_entry_t *e, void *arg) {
    newest_t *n = arg;
    if (startswith(e->target, n->base) && e->target[strlen(n->base)] == '/' &&
        !streq(e->target, n->skip))
        snprintf(n->target, sizeof n->target, "%s", e->target);
    return 0;
}

static int release_cb_dir(const char *dir) {
    DIR *d = opendir("/sys/block");
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char path[300], *buf = NULL;
        snprintf(path, sizeof path, "/sys/block/%s/loop/backing_file", de->d_name);
        if (strncmp(de->d_name, "loop", 4) != 0 || read_file_bounded(path, 8192, &buf, NULL) < 0)
            continue;
        if (startswith(buf, dir) && buf[strlen(dir)] == '/') {
            snprintf(path, sizeof path, "/dev/%s", de->d_name);
            int fd = open(path, O_RDWR | O_CLOEXEC);
            if (fd >= 0) {
                (void)ioctl(fd, LOOP_CLR_FD, 0);
                close(fd);
            }
            n++;
        }
        free(buf);
    }
    if (d)
        closedir(d);
    return n;
}

/* The test's own safety net, independent of the library: after a failed test, take down
 * every mount under base (newest first, sparing a test tmpfs that backs images until its
 * loop devices are gone) and every loop device backed by a file under base. Returns how many
 * it found. */
static int force_cleanup(fixture_t *f) {
    int found = 0;
    for (int i = 0; i < 64; i++) {
        newest_t n = {.base = f->base, .skip = f->tmpfs};
        foreach_mount(newest_cb, &n);
        if (!n.target[0])
            break;
        (void)umount2(n.target, MNT_DETACH);
        found++;
    }
    found += release_cb_dir(f->base);
    return found;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    int bad = 0;
    disk_gc_stats_t st;
    if (f->mgr && disk_mgr_gc(f->mgr, NULL, 0, &st) < 0)
        bad = 1;
    disk_mgr_destroy(&f->mgr);
    /* Whatever a test left, the sweep must have taken it; then nothing may remain. */
    if (force_cleanup(f) > 0)
        bad = 1;
    if (f->tmpfs[0] && umount2(f->tmpfs, MNT_DETACH) < 0)
        bad = 1;
    if (count_loops(f->base) != 0 || mounts_under(f->base) != 0)
        bad = 1;
    if (rm_rf(f->base) < 0)
        bad = 1;
    free(f);
    if (bad)
        fprintf(stderr, "teardown: leftovers after the test\n");
    return bad ? -1 : 0;
}

static int group_setup(void **state) {
    (void)state;
    if (geteuid() != 0) {
        fprintf(stderr, "test_diskmgr_root must run as root (loop devices, mounts)\n");
        return -1;
    }
    return 0;
}

/* --- tests --- */

static void test_create_mounts_ext4(void **state) {
    fixture_t *f = *state;
    disk_info_t info;
    assert_int_equal(disk_mgr_create(f->mgr, "d1", 64, 12345, 12346, &info), 0);
    assert_string_equal(info.name, "d1");
    assert_true(info.mounted);
    assert_true(startswith(info.loop_dev, "/dev/loop"));
    assert_true(info.size_bytes == 64 * MiB);
    /* every block allocated up front */
    assert_true(info.alloc_bytes >= 64 * MiB);
    char mnt[DISK_PATH_MAX], img[DISK_PATH_MAX];
    assert_int_equal(disk_mgr_mount_path(f->mgr, "d1", mnt, sizeof mnt), 0);
    assert_int_equal(disk_mgr_image_path(f->mgr, "d1", img, sizeof img), 0);
    assert_string_equal(info.mount_path, mnt);

    mnt_entry_t e;
    assert_int_equal(mounts_at(mnt, &e), 1);
    assert_string_equal(e.fstype, "ext4");
    assert_string_equal(e.source, info.loop_dev);
    assert_true(has_opt(e.opts, "nosuid"));
    assert_true(has_opt(e.opts, "nodev"));
    assert_true(has_opt(e.opts, "noatime"));
    assert_true(has_opt(e.opts, "rw"));

    struct stat st;
    assert_int_equal(stat(mnt, &st), 0);
    assert_int_equal(st.st_uid, 12345);
    assert_int_equal(st.st_gid, 12346);
    assert_int_equal(lstat(img, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(f->images, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(stat(f->mounts, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    /* the loop device: autoclear, no partition scan, backed by our image */
    const char *dev = info.loop_dev + strlen("/dev/");
    char path[512], *buf = NULL;
    snprintf(path, sizeof path, "/sys/block/%s/loop/autoclear", dev);
    assert_int_equal(read_file_bounded(path, 64, &buf, NULL), 0);
    assert_int_equal(buf[0], '1');
    free(buf);
    snprintf(path, sizeof path, "/sys/block/%s/loop/partscan", dev);
    assert_int_equal(read_file_bounded(path, 64, &buf, NULL), 0);
    assert_int_equal(buf[0], '0');
    free(buf);
    snprintf(path, sizeof path, "/sys/block/%s/loop/backing_file", dev);
    assert_int_equal(read_file_bounded(path, 4096, &buf, NULL), 0);
    assert_true(startswith(buf, img));
    free(buf);
    assert_int_equal(count_loops(f->images), 1);

    /* the disk is usable */
    char file[DISK_PATH_MAX + 16];
    snprintf(file, sizeof file, "%s/hello.txt", mnt);
    write_file(file, "hello\n");

    disk_info_t again;
    assert_int_equal(disk_mgr_stat(f->mgr, "d1", &again), 0);
    assert_true(again.mounted);
    assert_string_equal(again.loop_dev, info.loop_dev);
    disk_info_t *list = NULL;
    size_t n = 0;
    assert_int_equal(disk_mgr_list(f->mgr, &list, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].name, "d1");
    assert_true(list[0].mounted);
    assert_string_equal(list[0].loop_dev, info.loop_dev);
    free(list);

    assert_int_equal(disk_mgr_create(f->mgr, "d1", 64, 1, 1, NULL), -EEXIST);
    assert_int_equal(disk_mgr_attach(f->mgr, "d1", 1, 1, NULL), -EALREADY);
    assert_int_equal(disk_mgr_remove(f->mgr, "d1"), 0);
}

/* Fills a disk to ENOSPC; returns the bytes written. */
static uint64_t fill_disk(const char *mnt, const char *fname) {
    char path[DISK_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", mnt, fname);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    static char chunk[1 << 20];
    memset(chunk, 'x', sizeof chunk);
    uint64_t total = 0;
    int err = 0;
    for (int i = 0; i < 4096 && !err; i++) {
        ssize_t w = write(fd, chunk, sizeof chunk);
        if (w < 0)
            err = errno;
        else
            total += (uint64_t)w;
    }
    if (!err && fsync(fd) < 0)
        err = errno;
    close(fd);
    assert_int_equal(err, ENOSPC);
    return total;
}

static void check_fill(fixture_t *f, disk_mgr_t *mgr, const char *fsdir, bool strict_host) {
    disk_info_t info;
    assert_int_equal(disk_mgr_create(mgr, "full", 64, 1000, 1000, &info), 0);
    char img[DISK_PATH_MAX];
    assert_int_equal(disk_mgr_image_path(mgr, "full", img, sizeof img), 0);
    struct stat before_img, after_img;
    struct statvfs before, after;
    assert_int_equal(stat(img, &before_img), 0);
    assert_true((uint64_t)before_img.st_blocks * 512 >= 64 * MiB);
    assert_int_equal(statvfs(fsdir, &before), 0);

    uint64_t written = fill_disk(info.mount_path, "big");
    /* the quota is the disk: close to 64 MiB minus ext4's metadata, never more */
    assert_true(written > 40 * MiB);
    assert_true(written < 64 * MiB);
    int mfd = open(info.mount_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(mfd >= 0);
    assert_int_equal(syncfs(mfd), 0);
    close(mfd);

    assert_int_equal(stat(img, &after_img), 0);
    assert_true(after_img.st_blocks == before_img.st_blocks);
    assert_int_equal(statvfs(fsdir, &after), 0);
    uint64_t fb = before.f_bfree * before.f_frsize, fa = after.f_bfree * after.f_frsize;
    printf("    fill: wrote %.1f MiB into a 64 MiB disk; host free %llu -> %llu bytes; image "
           "blocks %lld -> %lld\n",
           (double)written / MiB, (unsigned long long)fb, (unsigned long long)fa,
           (long long)before_img.st_blocks, (long long)after_img.st_blocks);
    if (strict_host) /* a filesystem of its own: nothing else moves its free space */
        assert_true(fb == fa);

    /* still usable after ENOSPC: deleting frees room inside the disk */
    char path[DISK_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/big", info.mount_path);
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof path, "%s/small", info.mount_path);
    write_file(path, "ok");
    assert_int_equal(disk_mgr_remove(mgr, "full"), 0);
    (void)f;
}

static void test_fill_host_unmoved_tmpfs(void **state) {
    fixture_t *f = *state;
    snprintf(f->tmpfs, sizeof f->tmpfs, "%s/hostfs", f->base);
    assert_int_equal(mkdir(f->tmpfs, 0700), 0);
    assert_int_equal(mount("tmpfs", f->tmpfs, "tmpfs", MS_NOSUID | MS_NODEV, "size=128m,mode=0700"),
                     0);
    char images[192], mounts[192];
    snprintf(images, sizeof images, "%s/disks", f->tmpfs);
    snprintf(mounts, sizeof mounts, "%s/mnt2", f->base);
    disk_mgr_t *mgr = NULL;
    assert_int_equal(new_mgr(f, images, mounts, 0, &mgr), 0);
    check_fill(f, mgr, f->tmpfs, true);
    disk_mgr_destroy(&mgr);
    assert_int_equal(umount2(f->tmpfs, 0), 0);
    f->tmpfs[0] = '\0';
}

static void test_fill_host_unmoved_ext4(void **state) {
    fixture_t *f = *state;
    /* /tmp is shared with everything else on the host, so only the image's own allocation is
     * asserted here; the tmpfs variant asserts the free space exactly. */
    check_fill(f, f->mgr, f->images, false);
}

static void mkdir_chain(int dirfd, int depth, uid_t uid, gid_t gid) {
    int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
    assert_true(fd >= 0);
    for (int i = 0; i < depth; i++) {
        assert_int_equal(mkdirat(fd, "dd", 0755), 0);
        assert_int_equal(fchownat(fd, "dd", uid, gid, AT_SYMLINK_NOFOLLOW), 0);
        int sub = openat(fd, "dd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(sub >= 0);
        close(fd);
        fd = sub;
    }
    int leaf = openat(fd, "leaf", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(leaf >= 0);
    assert_int_equal(fchown(leaf, uid, gid), 0);
    close(leaf);
    close(fd);
}

static void check_chain_owner(int dirfd, int depth, uid_t uid) {
    int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
    struct stat st;
    for (int i = 0; i < depth; i++) {
        int sub = openat(fd, "dd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(sub >= 0);
        assert_int_equal(fstat(sub, &st), 0);
        assert_int_equal(st.st_uid, uid);
        close(fd);
        fd = sub;
    }
    assert_int_equal(fstatat(fd, "leaf", &st, AT_SYMLINK_NOFOLLOW), 0);
    assert_int_equal(st.st_uid, uid);
    close(fd);
}

static void test_detach_attach_keeps_files(void **state) {
    fixture_t *f = *state;
    disk_info_t info;
    assert_int_equal(disk_mgr_create(f->mgr, "s1", 64, 1000, 1001, &info), 0);
    char path[DISK_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/notes.txt", info.mount_path);
    write_file(path, "kept across workers\n");
    assert_int_equal(chown(path, 1000, 1001), 0);
    snprintf(path, sizeof path, "%s/rootfile", info.mount_path);
    write_file(path, "root's");
    /* a symlink out of the disk: re-owning must change the link, never its target */
    snprintf(path, sizeof path, "%s/escape", info.mount_path);
    assert_int_equal(symlink("/etc/passwd", path), 0);
    assert_int_equal(lchown(path, 1000, 1001), 0);
    /* deeper than PATH_MAX, so only an fd-relative walk reaches the bottom */
    const int depth = 2500;
    int mfd = open(info.mount_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(mfd >= 0);
    mkdir_chain(mfd, depth, 1000, 1001);
    close(mfd);

    assert_int_equal(disk_mgr_detach(f->mgr, "s1"), 0);
    assert_int_equal(mounts_at(info.mount_path, NULL), 0);
    assert_int_equal(count_loops(f->images), 0);
    assert_int_equal(disk_mgr_detach(f->mgr, "s1"), 0); /* idempotent */
    disk_info_t st_info;
    assert_int_equal(disk_mgr_stat(f->mgr, "s1", &st_info), 0);
    assert_false(st_info.mounted);
    assert_string_equal(st_info.loop_dev, "");
    assert_true(st_info.alloc_bytes >= 64 * MiB);

    /* the replacement worker runs as another uid */
    uint64_t t0 = now_mono_us();
    assert_int_equal(disk_mgr_attach(f->mgr, "s1", 2000, 2001, &info), 0);
    printf("    attach + re-own of %d nested dirs: %.1f ms\n", depth, ms_since(t0));
    assert_true(info.mounted);
    assert_int_equal(mounts_at(info.mount_path, NULL), 1);
    char *buf = NULL;
    snprintf(path, sizeof path, "%s/notes.txt", info.mount_path);
    assert_int_equal(read_file_bounded(path, 4096, &buf, NULL), 0);
    assert_string_equal(buf, "kept across workers\n");
    free(buf);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, 2000);
    assert_int_equal(st.st_gid, 2001);
    assert_int_equal(stat(info.mount_path, &st), 0);
    assert_int_equal(st.st_uid, 2000);
    assert_int_equal(st.st_gid, 2001);
    snprintf(path, sizeof path, "%s/rootfile", info.mount_path);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, 0); /* not the old owner's: left alone */
    snprintf(path, sizeof path, "%s/escape", info.mount_path);
    assert_int_equal(lstat(path, &st), 0);
    assert_int_equal(st.st_uid, 2000);
    assert_int_equal(stat("/etc/passwd", &st), 0);
    assert_int_equal(st.st_uid, 0);
    assert_int_equal(st.st_gid, 0);
    mfd = open(info.mount_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(mfd >= 0);
    check_chain_owner(mfd, depth, 2000);
    close(mfd);

    assert_int_equal(disk_mgr_attach(f->mgr, "s1", 2000, 2001, NULL), -EALREADY);
    /* keep-owner attach leaves ownership alone */
    assert_int_equal(disk_mgr_detach(f->mgr, "s1"), 0);
    assert_int_equal(disk_mgr_attach(f->mgr, "s1", DISK_KEEP_OWNER, (gid_t)-1, &info), 0);
    assert_int_equal(stat(info.mount_path, &st), 0);
    assert_int_equal(st.st_uid, 2000);
    assert_int_equal(disk_mgr_remove(f->mgr, "s1"), 0);
    assert_int_equal(count_loops(f->images), 0);
}

static void test_remove_leaves_nothing(void **state) {
    fixture_t *f = *state;
    disk_info_t a, b;
    assert_int_equal(disk_mgr_create(f->mgr, "r1", 32, 1000, 1000, &a), 0);
    assert_int_equal(disk_mgr_create(f->mgr, "r2", 32, 1000, 1000, &b), 0);
    assert_int_equal(count_loops(f->images), 2);
    assert_int_equal(disk_mgr_remove(f->mgr, "r1"), 0);
    char img[DISK_PATH_MAX];
    assert_int_equal(disk_mgr_image_path(f->mgr, "r1", img, sizeof img), 0);
    assert_int_equal(access(img, F_OK), -1);
    assert_int_equal(access(a.mount_path, F_OK), -1);
    assert_int_equal(mounts_at(a.mount_path, NULL), 0);
    assert_int_equal(count_loops(f->images), 1);
    assert_int_equal(mounts_at(b.mount_path, NULL), 1); /* the other disk is untouched */
    assert_int_equal(disk_mgr_remove(f->mgr, "r1"), 0); /* idempotent */
    assert_int_equal(disk_mgr_remove(f->mgr, "never"), 0);
    assert_int_equal(disk_mgr_remove(f->mgr, "r2"), 0);
    assert_int_equal(count_loops(f->images), 0);
    assert_int_equal(mounts_under(f->mounts), 0);
    assert_int_equal(count_entries(f->images), 0);
    assert_int_equal(count_entries(f->mounts), 0);
}

static void test_detach_busy_is_lazy(void **state) {
    fixture_t *f = *state;
    disk_info_t info;
    assert_int_equal(disk_mgr_create(f->mgr, "busy", 32, 1000, 1000, &info), 0);
    char path[DISK_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/open", info.mount_path);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(disk_mgr_detach(f->mgr, "busy"), 1);
    assert_int_equal(mounts_at(info.mount_path, NULL), 0);
    assert_int_equal(count_loops(f->images), 1); /* still in use through fd */
    /* mounting the same ext4 twice would corrupt it */
    assert_int_equal(disk_mgr_attach(f->mgr, "busy", 1000, 1000, NULL), -EBUSY);
    close(fd);
    wait_no_loops(f->images);
    assert_int_equal(disk_mgr_attach(f->mgr, "busy", 1000, 1000, NULL), 0);
    assert_int_equal(disk_mgr_remove(f->mgr, "busy"), 0);
}

typedef struct {
    int fd;
    unsigned ms;
} holder_t;

static void *close_later(void *p) {
    holder_t *h = p;
    usleep(h->ms * 1000);
    close(h->fd);
    return NULL;
}

/* After a clean unmount something may hold the loop device for a moment (a process or
 * thread that opened it): removal waits for it to let go (a second here) rather than report
 * the disk as still in use; one that holds on past the wait gets 1 and the device unbinds
 * when it lets go. */
static void test_remove_waits_for_a_brief_holder(void **state) {
    fixture_t *f = *state;
    disk_info_t info;
    assert_int_equal(disk_mgr_create(f->mgr, "held", 32, 1000, 1000, &info), 0);
    holder_t h = {.fd = open(info.loop_dev, O_RDONLY | O_CLOEXEC), .ms = 1000};
    assert_true(h.fd >= 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, close_later, &h), 0);
    assert_int_equal(disk_mgr_remove(f->mgr, "held"), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(count_loops(f->images), 0);

    assert_int_equal(disk_mgr_create(f->mgr, "held", 32, 1000, 1000, &info), 0);
    int fd = open(info.loop_dev, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(disk_mgr_remove(f->mgr, "held"), 1);
    assert_int_equal(mounts_under(f->mounts), 0);
    assert_int_equal(count_entries(f->images), 0);
    close(fd);
    wait_no_loops(f->images);
}

/* A loop device bound without autoclear, as a crash between attach and mount can leave on a
 * kernel without LOOP_CONFIGURE, or an operator's losetup. */
static void bind_loop_plain(const char *img) {
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    assert_true(ctl >= 0);
    int backing = open(img, O_RDWR | O_CLOEXEC);
    assert_true(backing >= 0);
    for (int tries = 0; tries < 16; tries++) {
        int nr = ioctl(ctl, LOOP_CTL_GET_FREE);
        assert_true(nr >= 0);
        char dev[32];
        snprintf(dev, sizeof dev, "/dev/loop%d", nr);
        int fd = open(dev, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        int r = ioctl(fd, LOOP_SET_FD, backing);
        int e = errno;
        close(fd);
        if (r == 0)
            break;
        assert_int_equal(e, EBUSY);
    }
    close(backing);
    close(ctl);
}

static void test_gc_after_crash(void **state) {
    fixture_t *f = *state;
    disk_info_t k1, x1, x2;
    assert_int_equal(disk_mgr_create(f->mgr, "k1", 32, 1000, 1000, &k1), 0);
    assert_int_equal(disk_mgr_create(f->mgr, "x1", 32, 1000, 1000, &x1), 0);
    assert_int_equal(disk_mgr_create(f->mgr, "x2", 32, 1000, 1000, &x2), 0);
    assert_int_equal(disk_mgr_create(f->mgr, "x3", 32, 1000, 1000, NULL), 0);
    assert_int_equal(disk_mgr_detach(f->mgr, "x3"), 0);
    char img[DISK_PATH_MAX], path[DISK_PATH_MAX + 32];
    assert_int_equal(disk_mgr_image_path(f->mgr, "x3", img, sizeof img), 0);
    bind_loop_plain(img);
    /* a kept disk, detached, with a stale binding that would block its next attach */
    assert_int_equal(disk_mgr_create(f->mgr, "k2", 32, 1000, 1000, NULL), 0);
    assert_int_equal(disk_mgr_detach(f->mgr, "k2"), 0);
    assert_int_equal(disk_mgr_image_path(f->mgr, "k2", img, sizeof img), 0);
    bind_loop_plain(img);
    /* a mount on top of a disk's directory tree */
    snprintf(path, sizeof path, "%s/sub", x1.mount_path);
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m"), 0);
    /* an interrupted creation, a stray mount dir, and an operator's file that must survive */
    snprintf(path, sizeof path, "%s/x4.tmp", f->images);
    write_file(path, "half made");
    snprintf(path, sizeof path, "%s/stray", f->mounts);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/notes.txt", f->images);
    write_file(path, "operator's");
    snprintf(path, sizeof path, "%s/kept.txt", k1.mount_path);
    write_file(path, "still here");

    /* the gateway dies: a new manager knows nothing of these disks */
    disk_mgr_destroy(&f->mgr);
    assert_null(f->mgr);
    assert_int_equal(new_mgr(f, f->images, f->mounts, 256, &f->mgr), 0);
    assert_int_equal(count_loops(f->images), 5);
    assert_int_equal(disk_mgr_attach(f->mgr, "k2", 1000, 1000, NULL), -EBUSY);

    const char *keep[] = {"k1", "k2"};
    disk_gc_stats_t st;
    assert_int_equal(disk_mgr_gc(f->mgr, keep, 2, &st), 0);
    printf("    gc(keep k1 k2): mounts=%u loops=%u images=%u dirs=%u failed=%u\n", st.mounts,
           st.loops, st.images, st.dirs, st.failed);
    assert_int_equal(st.mounts, 3); /* x1/sub, x1, x2 */
    assert_int_equal(st.loops, 2);  /* the plain bindings of x3 and k2 */
    assert_int_equal(st.images, 4); /* x1, x2, x3, x4.tmp */
    assert_int_equal(st.dirs, 4);   /* x1, x2, x3, stray */
    assert_int_equal(st.failed, 0);
    assert_int_equal(count_loops(f->images), 1);
    assert_int_equal(mounts_under(f->mounts), 1);
    assert_int_equal(mounts_at(k1.mount_path, NULL), 1);
    char *buf = NULL;
    assert_int_equal(read_file_bounded(path, 64, &buf, NULL), 0);
    assert_string_equal(buf, "still here");
    free(buf);
    assert_int_equal(count_entries(f->images), 3); /* k1.img, k2.img, notes.txt */
    assert_int_equal(count_entries(f->mounts), 2);
    assert_int_equal(disk_mgr_attach(f->mgr, "k2", 1000, 1000, NULL), 0);

    assert_int_equal(disk_mgr_gc(f->mgr, NULL, 0, &st), 0);
    assert_int_equal(st.mounts, 2);
    assert_int_equal(st.images, 2);
    assert_int_equal(st.dirs, 2);
    assert_int_equal(count_loops(f->images), 0);
    assert_int_equal(mounts_under(f->mounts), 0);
    assert_int_equal(count_entries(f->mounts), 0);
    snprintf(path, sizeof path, "%s/notes.txt", f->images);
    assert_int_equal(access(path, F_OK), 0);
    assert_int_equal(count_entries(f->images), 1);
    /* a second sweep finds nothing */
    assert_int_equal(disk_mgr_gc(f->mgr, NULL, 0, &st), 0);
    assert_int_equal(st.mounts + st.loops + st.images + st.dirs + st.failed, 0);
}

static void mkfs_file(const char *img, const char *type, const char *label) {
    char mkfs[64];
    snprintf(mkfs, sizeof mkfs, "/sbin/mkfs.%s", type);
    char *const argv[] = {mkfs, "-q", "-F", "-L", (char *)label, (char *)img, NULL};
    assert_int_equal(run_cmd(argv, NULL), 0);
}

static void make_blank(const char *img, uint64_t size) {
    int fd = open(img, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(fallocate(fd, 0, 0, (off_t)size), 0);
    close(fd);
}

static void test_refuses_foreign_images(void **state) {
    fixture_t *f = *state;
    char img[DISK_PATH_MAX];
    /* no filesystem at all */
    assert_int_equal(disk_mgr_image_path(f->mgr, "zero", img, sizeof img), 0);
    make_blank(img, 32 * MiB);
    assert_int_equal(disk_mgr_attach(f->mgr, "zero", 1000, 1000, NULL), -EMEDIUMTYPE);
    /* ext4, but not ours (another label) */
    assert_int_equal(disk_mgr_image_path(f->mgr, "other", img, sizeof img), 0);
    make_blank(img, 32 * MiB);
    mkfs_file(img, "ext4", "somebody");
    assert_int_equal(disk_mgr_attach(f->mgr, "other", 1000, 1000, NULL), -EMEDIUMTYPE);
    /* our label, but not ext4 */
    assert_int_equal(disk_mgr_image_path(f->mgr, "ext2", img, sizeof img), 0);
    make_blank(img, 32 * MiB);
    mkfs_file(img, "ext2", DISK_LABEL);
    assert_int_equal(disk_mgr_attach(f->mgr, "ext2", 1000, 1000, NULL), -EMEDIUMTYPE);
    /* too small to be one of ours */
    assert_int_equal(disk_mgr_image_path(f->mgr, "tiny", img, sizeof img), 0);
    make_blank(img, 1 * MiB);
    assert_int_equal(disk_mgr_attach(f->mgr, "tiny", 1000, 1000, NULL), -EMEDIUMTYPE);
    /* a symlink in place of an image is never followed */
    char target[DISK_PATH_MAX];
    assert_int_equal(disk_mgr_create(f->mgr, "real", 32, 1000, 1000, NULL), 0);
    assert_int_equal(disk_mgr_detach(f->mgr, "real"), 0);
    assert_int_equal(disk_mgr_image_path(f->mgr, "real", target, sizeof target), 0);
    assert_int_equal(disk_mgr_image_path(f->mgr, "link", img, sizeof img), 0);
    assert_int_equal(symlink(target, img), 0);
    assert_int_equal(disk_mgr_attach(f->mgr, "link", 1000, 1000, NULL), -ELOOP);
    /* nothing stayed attached or mounted after the refusals */
    assert_int_equal(count_loops(f->images), 0);
    assert_int_equal(mounts_under(f->mounts), 0);
}

static void test_enospc_without_room(void **state) {
    fixture_t *f = *state;
    snprintf(f->tmpfs, sizeof f->tmpfs, "%s/small", f->base);
    assert_int_equal(mkdir(f->tmpfs, 0700), 0);
    assert_int_equal(mount("tmpfs", f->tmpfs, "tmpfs", MS_NOSUID | MS_NODEV, "size=96m,mode=0700"),
                     0);
    char images[192], mounts[192];
    snprintf(images, sizeof images, "%s/disks", f->tmpfs);
    snprintf(mounts, sizeof mounts, "%s/mnt-small", f->base);

    /* the reserve counts: 64 + 40 > 96 */
    disk_mgr_t *mgr = NULL;
    assert_int_equal(new_mgr(f, images, mounts, 40, &mgr), 0);
    assert_int_equal(disk_mgr_create(mgr, "big", 64, 1000, 1000, NULL), -ENOSPC);
    assert_int_equal(count_entries(images), 0);
    assert_int_equal(disk_mgr_create(mgr, "big", 200, 1000, 1000, NULL), -ENOSPC);
    disk_mgr_destroy(&mgr);

    /* without a reserve one fits, the second does not */
    assert_int_equal(new_mgr(f, images, mounts, 0, &mgr), 0);
    assert_int_equal(disk_mgr_create(mgr, "one", 64, 1000, 1000, NULL), 0);
    assert_int_equal(disk_mgr_create(mgr, "two", 64, 1000, 1000, NULL), -ENOSPC);
    assert_int_equal(count_entries(images), 1);
    assert_int_equal(count_loops(images), 1);
    assert_int_equal(disk_mgr_remove(mgr, "one"), 0);
    assert_int_equal(disk_mgr_create(mgr, "two", 64, 1000, 1000, NULL), 0);
    assert_int_equal(disk_mgr_remove(mgr, "two"), 0);
    disk_mgr_destroy(&mgr);
    assert_int_equal(rmdir(mounts), 0);
    assert_int_equal(umount2(f->tmpfs, 0), 0);
    f->tmpfs[0] = '\0';
}

static void test_200_cycles_leave_nothing(void **state) {
    fixture_t *f = *state;
    uint64_t t0 = now_mono_us();
    for (int i = 0; i < 200; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", i);
        int r = disk_mgr_create(f->mgr, name, 16, 1000 + (uid_t)i, 1000, NULL);
        if (r < 0)
            fail_msg("create %s: %s", name, strerror(-r));
        r = disk_mgr_remove(f->mgr, name);
        if (r != 0)
            fail_msg("remove %s: %d", name, r);
    }
    printf("    200 create+destroy cycles of 16 MiB disks: %.0f ms\n", ms_since(t0));
    /* Only our images count: other processes on the host may use loop devices meanwhile. */
    assert_int_equal(count_loops(f->images), 0);
    assert_int_equal(mounts_under(f->base), 0);
    assert_int_equal(count_entries(f->images), 0);
    assert_int_equal(count_entries(f->mounts), 0);
}

typedef struct {
    disk_mgr_t *mgr;
    int id;
    int err;
} worker_arg_t;

static void *worker(void *p) {
    worker_arg_t *a = p;
    for (int i = 0; i < 10 && !a->err; i++) {
        char name[32];
        snprintf(name, sizeof name, "t%d-%d", a->id, i);
        int r = disk_mgr_create(a->mgr, name, 16, 1000, 1000, NULL);
        if (r == 0)
            r = disk_mgr_remove(a->mgr, name);
        if (r != 0)
            a->err = r;
    }
    return NULL;
}

/* The gateway calls from several pool threads at once: concurrent creations race for the
 * same free loop device, which must be retried, not failed. */
static void test_concurrent_creates(void **state) {
    fixture_t *f = *state;
    pthread_t th[8];
    worker_arg_t args[8];
    for (int i = 0; i < 8; i++) {
        args[i] = (worker_arg_t){.mgr = f->mgr, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        if (args[i].err)
            fail_msg("thread %d: %d (%s)", i, args[i].err, strerror(-args[i].err));
    }
    assert_int_equal(count_loops(f->images), 0);
    assert_int_equal(mounts_under(f->mounts), 0);
    assert_int_equal(count_entries(f->images), 0);
}

static void time_cycles(disk_mgr_t *mgr, const char *label) {
    enum { RUNS = 11 };
    double c[RUNS], d[RUNS];
    for (int i = 0; i < RUNS; i++) {
        uint64_t t0 = now_mono_us();
        int r = disk_mgr_create(mgr, "timed", 500, 1000, 1000, NULL);
        c[i] = ms_since(t0);
        if (r < 0)
            fail_msg("create: %s", strerror(-r));
        t0 = now_mono_us();
        assert_int_equal(disk_mgr_remove(mgr, "timed"), 0);
        d[i] = ms_since(t0);
    }
    qsort(c, RUNS, sizeof c[0], cmp_double);
    qsort(d, RUNS, sizeof d[0], cmp_double);
    printf("    500 MiB disk, %s, %d runs: create median %.1f ms (min %.1f, max %.1f); destroy "
           "median %.1f ms (min %.1f, max %.1f)\n",
           label, RUNS, c[RUNS / 2], c[0], c[RUNS - 1], d[RUNS / 2], d[0], d[RUNS - 1]);
}

/* A printed figure, not an assertion: the budget for a whole worker start is 150 ms. */
static void test_timing_500mb(void **state) {
    fixture_t *f = *state;
    time_cycles(f->mgr, "default (direct I/O)");
    disk_mgr_config_t cfg;
    disk_mgr_config_init(&cfg);
    cfg.images_dir = f->images;
    cfg.mounts_dir = f->mounts;
    cfg.reserve_mb = 256;
    cfg.direct_io = false;
    disk_mgr_t *mgr = NULL;
    assert_int_equal(disk_mgr_new(&cfg, &mgr), 0);
    time_cycles(mgr, "buffered loop");
    disk_mgr_destroy(&mgr);
}

static void test_bad_arguments(void **state) {
    fixture_t *f = *state;
    assert_int_equal(disk_mgr_create(f->mgr, "../evil", 64, 1, 1, NULL), -EINVAL);
    assert_int_equal(disk_mgr_create(f->mgr, "", 64, 1, 1, NULL), -EINVAL);
    assert_int_equal(disk_mgr_create(f->mgr, "ok", 8, 1, 1, NULL), -EINVAL);
    assert_int_equal(disk_mgr_create(f->mgr, "ok", 64, (uid_t)-1, 1, NULL), -EINVAL);
    assert_int_equal(disk_mgr_create(NULL, "ok", 64, 1, 1, NULL), -EINVAL);
    assert_int_equal(disk_mgr_attach(f->mgr, "missing", 1, 1, NULL), -ENOENT);
    assert_int_equal(disk_mgr_detach(f->mgr, "missing"), -ENOENT);
    assert_int_equal(disk_mgr_reown(f->mgr, "missing", 1, 1), -ENOTCONN);
    disk_info_t info;
    assert_int_equal(disk_mgr_stat(f->mgr, "missing", &info), -ENOENT);
    assert_int_equal(disk_mgr_gc(f->mgr, NULL, 1, NULL), -EINVAL);
    char small[8];
    assert_int_equal(disk_mgr_mount_path(f->mgr, "abc", small, sizeof small), -ENAMETOOLONG);
    assert_int_equal(disk_mgr_mount_path(f->mgr, "a/b", small, sizeof small), -EINVAL);
    assert_int_equal(count_entries(f->images), 0);

    disk_mgr_t *mgr = NULL;
    disk_mgr_config_t cfg;
    disk_mgr_config_init(&cfg);
    cfg.images_dir = "relative";
    cfg.mounts_dir = f->mounts;
    assert_int_equal(disk_mgr_new(&cfg, &mgr), -EINVAL);
    cfg.images_dir = f->mounts; /* the same directory for both */
    assert_int_equal(disk_mgr_new(&cfg, &mgr), -EINVAL);
    char nested[192];
    snprintf(nested, sizeof nested, "%s/inner", f->images);
    cfg.images_dir = f->images;
    cfg.mounts_dir = nested;
    assert_int_equal(disk_mgr_new(&cfg, &mgr), -EINVAL);
    cfg.mounts_dir = f->mounts;
    cfg.mkfs_path = "/nonexistent/mkfs.ext4";
    assert_int_equal(disk_mgr_new(&cfg, &mgr), -ENOENT);
    assert_null(mgr);
    disk_mgr_destroy(&mgr); /* NULL-safe */
    disk_mgr_destroy(NULL);
    rmdir(nested);
}

static void test_cli(void **state) {
    fixture_t *f = *state;
    char out[192];
    snprintf(out, sizeof out, "%s/cli.out", f->base);
    char *bin = KBOX_DISKMGR_BIN;
    char *const create[] = {bin,  "--images", f->images, "--mounts", f->mounts, "create", "cli1",
                            "32", "--uid",    "1000",    "--gid",    "1000",    NULL};
    assert_int_equal(run_cmd(create, out), 0);
    char *buf = NULL;
    assert_int_equal(read_file_bounded(out, 4096, &buf, NULL), 0);
    char mnt[DISK_PATH_MAX];
    assert_int_equal(disk_mgr_mount_path(f->mgr, "cli1", mnt, sizeof mnt), 0);
    assert_true(startswith(buf, mnt));
    free(buf);
    assert_int_equal(mounts_at(mnt, NULL), 1);
    assert_int_equal(run_cmd(create, NULL), 5); /* exists */
    char *const list[] = {bin, "--images", f->images, "--mounts", f->mounts, "list", NULL};
    assert_int_equal(run_cmd(list, out), 0);
    assert_int_equal(read_file_bounded(out, 65536, &buf, NULL), 0);
    assert_non_null(strstr(buf, "cli1"));
    assert_non_null(strstr(buf, "mounted"));
    free(buf);
    char *const detach[] = {bin,       "--images", f->images, "--mounts",
                            f->mounts, "detach",   "cli1",    NULL};
    assert_int_equal(run_cmd(detach, NULL), 0);
    char *const attach_missing[] = {bin,       "--images", f->images, "--mounts",
                                    f->mounts, "attach",   "nope",    NULL};
    assert_int_equal(run_cmd(attach_missing, NULL), 4);
    char *const destroy[] = {bin,       "--images", f->images, "--mounts",
                             f->mounts, "destroy",  "cli1",    NULL};
    assert_int_equal(run_cmd(destroy, NULL), 0);
    assert_int_equal(count_loops(f->images), 0);
    char *const bad[] = {bin, "--images", f->images, "create", "x", NULL};
    assert_int_equal(run_cmd(bad, NULL), 2);
    char *const big[] = {bin,          "--images", f->images, "--mounts", f->mounts, "--reserve-mb",
                         "1000000000", "create",   "huge",    "64",       NULL};
    assert_int_equal(run_cmd(big, NULL), 3);
    char *const gc[] = {bin, "--images", f->images, "--mounts", f->mounts, "gc", NULL};
    assert_int_equal(run_cmd(gc, out), 0);
    assert_int_equal(unlink(out), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_mounts_ext4, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fill_host_unmoved_tmpfs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fill_host_unmoved_ext4, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_attach_keeps_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_busy_is_lazy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_waits_for_a_brief_holder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_after_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_foreign_images, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enospc_without_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_200_cycles_leave_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_creates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timing_500mb, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
