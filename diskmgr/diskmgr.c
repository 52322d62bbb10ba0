/* The disk manager (see diskmgr.h): makes, mounts, unmounts and sweeps per-worker ext4 disks.
 *
 * Choices worth knowing:
 *  - The image is made as <name>.tmp and renamed to <name>.img (RENAME_NOREPLACE) only once
 *    mkfs has succeeded, so an .img is always a complete filesystem and an interrupted
 *    creation leaves only a .tmp that the sweep removes.
 *  - The room check (statvfs minus the reserve) and the fallocate run under one lock, so two
 *    concurrent creations cannot both pass the check and then eat into the reserve together.
 *  - ext4 keeps its journal. The disk outlives its worker and a gateway kill leaves mounts
 *    behind; the journal makes the filesystem consistent again on the next mount (replay) with
 *    no e2fsck pass, which would cost tens of milliseconds on every attach. mkfs does not zero
 *    the journal (the fallocated blocks already read as zeros), so it costs no start time.
 *  - No e2fsck on attach for the same reason; errors=remount-ro stops a damaged filesystem
 *    from being written further, and the operator can fsck an image that is detached.
 *  - Before mounting, the loop device (not the file: what gets mounted is what gets checked)
 *    is probed with libblkid: exactly one signature, ext4, with our label. Anything else is
 *    refused (-EMEDIUMTYPE), so a misplaced or damaged file never reaches the kernel's
 *    filesystem parsers through us.
 *  - Mounted through libmount with helpers, fstab and utab all disabled: the mount is exactly
 *    the one syscall we ask for, and nothing is written to /run/mount. */
#include "diskmgr.h"

#include <blkid/blkid.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libmount/libmount.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "disk-util.h"
#include "loopdev.h"
#include "util.h"

/* nosuid,nodev: the sandbox user must gain nothing from files on their own disk.
 * noinit_itable: mkfs marked the inode tables zeroed; never let the kernel zero them again
 * (on a loop device zeroing punches holes in the image). */
#define DISK_MOUNT_OPTS "nosuid,nodev,noatime,errors=remount-ro,noinit_itable"
#define DISK_FSTYPE     "ext4"
#define UMOUNT_TRIES    8
#define LOOP_SETTLE_MS  2000

struct disk_mgr {
    char images[PATH_MAX];
    char mounts[PATH_MAX];
    char mkfs[PATH_MAX];
    uint64_t reserve_bytes;
    bool direct_io;
    pthread_mutex_t room_lock;
};

static void nap_ms(long ms) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void mnt_free_contextp(struct libmnt_context **p) {
    mnt_free_context(*p);
}
static void mnt_unref_tablep(struct libmnt_table **p) {
    mnt_unref_table(*p);
}
static void mnt_free_iterp(struct libmnt_iter **p) {
    mnt_free_iter(*p);
}
static void blkid_free_probep(blkid_probe *p) {
    if (*p)
        blkid_free_probe(*p);
}
static void closedirp(DIR **d) {
    if (*d)
        closedir(*d);
}

void disk_mgr_config_init(disk_mgr_config_t *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->mkfs_path = DISK_MKFS_DEFAULT;
    cfg->reserve_mb = DISK_RESERVE_DEF_MB;
    cfg->direct_io = true;
}

/* Creates dir if missing, resolves it, and makes sure it is a directory of ours, mode 0700:
 * everything below it is trusted to be ours. */
static int prepare_dir(const char *dir, char *ret_real) {
    int r = disk_dir_valid(dir);
    if (r < 0)
        return r;
    r = mkdir_p(dir, 0700);
    if (r < 0)
        return r;
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return -errno;
    r = disk_dir_valid(real);
    if (r < 0)
        return r;
    _cleanup_close_ int fd = open(real, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (st.st_uid != geteuid())
        return -EPERM;
    if ((st.st_mode & 07777) != 0700 && fchmod(fd, 0700) < 0)
        return -errno;
    memcpy(ret_real, real, strlen(real) + 1);
    return 0;
}

static bool path_within(const char *a, const char *b) {
    size_t n = strlen(b);
    return strncmp(a, b, n) == 0 && (a[n] == '\0' || a[n] == '/');
}

int disk_mgr_new(const disk_mgr_config_t *cfg, disk_mgr_t **ret_mgr) {
    if (!cfg || !cfg->images_dir || !cfg->mounts_dir || !ret_mgr)
        return -EINVAL;
    const char *mkfs = cfg->mkfs_path ? cfg->mkfs_path : DISK_MKFS_DEFAULT;
    if (mkfs[0] != '/' || strlen(mkfs) >= PATH_MAX)
        return -EINVAL;
    if (access(mkfs, X_OK) < 0)
        return -errno;
    uint64_t reserve;
    if (__builtin_mul_overflow(cfg->reserve_mb, (uint64_t)1 << 20, &reserve))
        return -EINVAL;

    _cleanup_free_ disk_mgr_t *mgr = calloc(1, sizeof *mgr);
    if (!mgr)
        return -ENOMEM;
    int r = prepare_dir(cfg->images_dir, mgr->images);
    if (r < 0)
        return r;
    r = prepare_dir(cfg->mounts_dir, mgr->mounts);
    if (r < 0)
        return r;
    /* The sweep tells images from mounts by directory: they must not overlap. */
    if (path_within(mgr->images, mgr->mounts) || path_within(mgr->mounts, mgr->images))
        return -EINVAL;
    memcpy(mgr->mkfs, mkfs, strlen(mkfs) + 1);
    mgr->reserve_bytes = reserve;
    mgr->direct_io = cfg->direct_io;
    r = pthread_mutex_init(&mgr->room_lock, NULL);
    if (r != 0)
        return -r;
    *ret_mgr = TAKE_PTR(mgr);
    return 0;
}

void disk_mgr_destroy(disk_mgr_t **mgr_p) {
    if (!mgr_p || !*mgr_p)
        return;
    pthread_mutex_destroy(&(*mgr_p)->room_lock);
    free(*mgr_p);
    *mgr_p = NULL;
}

int disk_mgr_mount_path(const disk_mgr_t *mgr, const char *name, char *buf, size_t len) {
    if (!mgr || !buf)
        return -EINVAL;
    return disk_path_join(buf, len, mgr->mounts, name, NULL);
}

int disk_mgr_image_path(const disk_mgr_t *mgr, const char *name, char *buf, size_t len) {
    if (!mgr || !buf)
        return -EINVAL;
    return disk_path_join(buf, len, mgr->images, name, DISK_IMG_SUFFIX);
}

/* 1 if path is the root of a mount, 0 if not (or missing), -errno otherwise. */
static int is_mount_root(const char *path) {
    struct statx stx;
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE, &stx) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)
        return (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) ? 1 : 0;
    /* Kernels before 5.8 do not report it: a different device than the parent's is a mount
     * (a bind mount of the same filesystem would be missed, which we never make). */
    char parent[PATH_MAX];
    int r = xsnprintf(parent, sizeof parent, "%s/..", path);
    if (r < 0)
        return r;
    struct stat a, b;
    if (lstat(path, &a) < 0 || stat(parent, &b) < 0)
        return -errno;
    return a.st_dev != b.st_dev;
}

/* The source of the newest mount at target, or -ENOENT. */
static int mount_source(const char *target, char *buf, size_t len) {
    _cleanup_(mnt_unref_tablep) struct libmnt_table *tb =
        mnt_new_table_from_file("/proc/self/mountinfo");
    if (!tb)
        return errno ? -errno : -EIO;
    struct libmnt_fs *fs = mnt_table_find_target(tb, target, MNT_ITER_BACKWARD);
    if (!fs)
        return -ENOENT;
    const char *src = mnt_fs_get_srcpath(fs);
    if (!src)
        src = mnt_fs_get_source(fs);
    int r = xsnprintf(buf, len, "%s", src ? src : "");
    return r < 0 ? r : 0;
}

/* Loop devices bound to one image of the images directory. */
typedef struct {
    const disk_mgr_t *mgr;
    const char *name;
    bool include_deleted;
    int found[8];
    size_t n;
} loop_match_t;

static int loop_match_cb(int nr, const char *backing, void *arg) {
    loop_match_t *m = arg;
    char file[NAME_MAX + 1], name[DISK_NAME_MAX + 1];
    bool deleted;
    if (disk_backing_in_dir(backing, m->mgr->images, file, sizeof file, &deleted) < 0)
        return 0;
    if (deleted && !m->include_deleted)
        return 0;
    if (disk_file_classify(file, name) != DISK_FILE_IMAGE || !streq(name, m->name))
        return 0;
    if (m->n < ARRAY_SIZE(m->found))
        m->found[m->n++] = nr;
    return 0;
}

static int loops_of(const disk_mgr_t *mgr, const char *name, bool include_deleted,
                    loop_match_t *ret) {
    loop_match_t m = {.mgr = mgr, .name = name, .include_deleted = include_deleted};
    int r = disk_loop_foreach(loop_match_cb, &m);
    if (r < 0)
        return r;
    *ret = m;
    return 0;
}

static int fill_info(const disk_mgr_t *mgr, const char *name, const struct stat *st, int loop_nr,
                     bool mounted, disk_info_t *ret) {
    disk_info_t info;
    memset(&info, 0, sizeof info);
    int r = xsnprintf(info.name, sizeof info.name, "%s", name);
    if (r < 0)
        return r;
    r = disk_mgr_mount_path(mgr, name, info.mount_path, sizeof info.mount_path);
    if (r < 0)
        return r;
    info.size_bytes = (uint64_t)st->st_size;
    info.alloc_bytes = (uint64_t)st->st_blocks * 512u;
    info.mounted = mounted;
    if (loop_nr >= 0) {
        r = xsnprintf(info.loop_dev, sizeof info.loop_dev, "/dev/loop%d", loop_nr);
        if (r < 0)
            return r;
    }
    *ret = info;
    return 0;
}

/* Runs mkfs.ext4 on the image: a fixed argv, a fixed environment, no shell, stdio on
 * /dev/null, every inherited fd above 2 closed, default signal state (the gateway may block
 * or ignore signals mkfs relies on). posix_spawn uses vfork semantics, so a large gateway
 * process does not copy its page tables for it. */
static int run_mkfs(const disk_mgr_t *mgr, const char *path, uid_t uid, gid_t gid) {
    char opts[128];
    const char *argv[DISK_MKFS_ARGV_MAX];
    int r = disk_mkfs_argv(mgr->mkfs, path, uid, gid, opts, sizeof opts, argv);
    if (r < 0)
        return r;
    static char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    r = posix_spawn_file_actions_init(&fa);
    if (r != 0)
        return -r;
    r = posix_spawnattr_init(&attr);
    if (r != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return -r;
    }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if ((r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)) == 0 &&
        (r = posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0)) == 0 &&
        (r = posix_spawn_file_actions_adddup2(&fa, 1, 2)) == 0 &&
        (r = posix_spawn_file_actions_addclosefrom_np(&fa, 3)) == 0 &&
        (r = posix_spawnattr_setsigmask(&attr, &none)) == 0 &&
        (r = posix_spawnattr_setsigdefault(&attr, &all)) == 0 &&
        (r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) ==
            0) {
        pid_t pid;
        r = posix_spawn(&pid, mgr->mkfs, &fa, &attr, (char *const *)argv, envp);
        if (r == 0) {
            int status;
            while (waitpid(pid, &status, 0) < 0) {
                if (errno != EINTR) {
                    r = errno;
                    break;
                }
            }
            /* mke2fs reports every failure as exit status 1; its words go to /dev/null. */
            if (r == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                r = EIO;
        }
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return -r;
}

/* Under room_lock: check the room, create the .tmp file and allocate all its blocks. */
static int make_image_locked(const disk_mgr_t *mgr, const char *tmp, uint64_t size, int *ret_fd) {
    struct statvfs sv;
    if (statvfs(mgr->images, &sv) < 0)
        return -errno;
    int r = disk_room_check(sv.f_bavail, sv.f_frsize, size, mgr->reserve_bytes);
    if (r < 0)
        return r;
    _cleanup_close_ int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    /* Mode 0 allocates real blocks (not a sparse file) and sets the size: the user can never
     * make the host run out of space by filling their disk. No posix_fallocate fallback: it
     * would write every block, far too slow for a worker start. */
    if (fallocate(fd, 0, 0, (off_t)size) < 0) {
        r = -errno;
        unlink(tmp);
        return r;
    }
    *ret_fd = TAKE_FD(fd);
    return 0;
}

/* Allocates whatever the image lacks. mke2fs zeroes a few ranges even when told the storage
 * is zeroed, and where the filesystem has no FALLOC_FL_ZERO_RANGE (tmpfs) it does so by
 * punching holes. A fallocate over the whole file fills them and leaves data alone; on a fully
 * allocated image it only walks the extent map. */
static int fill_holes(int fd, uint64_t size) {
    if (fallocate(fd, 0, 0, (off_t)size) < 0)
        return -errno;
    return 0;
}

/* Probes the loop device: exactly one signature, ext4, with our label. */
static int probe_ours(int loop_fd) {
    _cleanup_(blkid_free_probep) blkid_probe pr = blkid_new_probe();
    if (!pr)
        return -ENOMEM;
    if (blkid_probe_set_device(pr, loop_fd, 0, 0) < 0)
        return -EIO;
    if (blkid_probe_enable_superblocks(pr, 1) < 0 ||
        blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL) < 0)
        return -EIO;
    /* safeprobe: 1 means no signature, -2 more than one (a file that is ext4 and something
     * else at once is not one we made). */
    int rc = blkid_do_safeprobe(pr);
    if (rc == 1 || rc == -2)
        return -EMEDIUMTYPE;
    if (rc < 0)
        return -EIO;
    const char *type = NULL, *label = NULL;
    if (blkid_probe_lookup_value(pr, "TYPE", &type, NULL) < 0 || !streq(type, DISK_FSTYPE))
        return -EMEDIUMTYPE;
    if (blkid_probe_lookup_value(pr, "LABEL", &label, NULL) < 0 || !streq(label, DISK_LABEL))
        return -EMEDIUMTYPE;
    return 0;
}

/* The mount point: a real directory (not a symlink), not already a mount, mode 0700 root's
 * (the mounted filesystem's root, owned by the user, hides it while mounted). */
static int prepare_mount_dir(const char *path) {
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return -errno;
    struct stat st;
    if (lstat(path, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    int r = is_mount_root(path);
    if (r < 0)
        return r;
    if (r > 0)
        return -EBUSY;
    return 0;
}

static int do_mount(const char *dev, const char *target) {
    _cleanup_(mnt_free_contextp) struct libmnt_context *cxt = mnt_new_context();
    if (!cxt)
        return -ENOMEM;
    int r;
    if ((r = mnt_context_set_source(cxt, dev)) < 0 ||
        (r = mnt_context_set_target(cxt, target)) < 0 ||
        (r = mnt_context_set_fstype(cxt, DISK_FSTYPE)) < 0 ||
        (r = mnt_context_set_options(cxt, DISK_MOUNT_OPTS)) < 0 ||
        (r = mnt_context_set_optsmode(cxt, MNT_OMODE_NOTAB)) < 0 ||
        (r = mnt_context_disable_helpers(cxt, 1)) < 0 ||
        (r = mnt_context_disable_mtab(cxt, 1)) < 0 ||
        (r = mnt_context_disable_canonicalize(cxt, 1)) < 0)
        return r;
    r = mnt_context_mount(cxt);
    if (r == 0)
        return 0;
    if (r > 0 || mnt_context_syscall_called(cxt)) {
        int e = mnt_context_get_syscall_errno(cxt);
        return e > 0 ? -e : -EIO;
    }
    /* libmount returns -errno for most early failures, its own small codes otherwise. */
    return r > -4096 ? r : -EIO;
}

/* Unmounts everything stacked at path; lazily when a process still uses it. Returns 0, 1 if
 * an unmount had to be lazy, or -errno. */
static int unmount_all(const char *path) {
    int lazy = 0;
    for (int i = 0; i < UMOUNT_TRIES; i++) {
        int r = is_mount_root(path);
        if (r <= 0)
            return r < 0 ? r : lazy;
        if (umount2(path, UMOUNT_NOFOLLOW) == 0)
            continue;
        if (errno == EINVAL) /* raced with someone else's unmount */
            continue;
        if (errno != EBUSY)
            return -errno;
        /* Busy: detach it from the tree now; the filesystem (and with it the loop device,
         * through autoclear) goes when its last user lets go. */
        if (umount2(path, UMOUNT_NOFOLLOW | MNT_DETACH) < 0 && errno != EINVAL)
            return -errno;
        lazy = 1;
    }
    return -EBUSY;
}

/* Gives files of the old owner of the tree's root to uid:gid. One directory is open at a
 * time (the walk climbs back through ".."), so a deep tree costs no file descriptors; every
 * step checks it is still on the disk's filesystem, so nothing the user arranges (renames,
 * symlinks, mounts) leads the walk outside it. */
static int reown_tree(const char *root, uid_t uid, gid_t gid) {
    _cleanup_close_ int rfd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (rfd < 0)
        return -errno;
    struct stat rst;
    if (fstat(rfd, &rst) < 0)
        return -errno;
    const uid_t ou = rst.st_uid, nu = uid == (uid_t)-1 ? ou : uid;
    const gid_t og = rst.st_gid, ng = gid == (gid_t)-1 ? og : gid;
    const dev_t dev = rst.st_dev;
    if (ou == nu && og == ng)
        return 0;

    int dfd = fcntl(rfd, F_DUPFD_CLOEXEC, 3);
    if (dfd < 0)
        return -errno;
    _cleanup_(closedirp) DIR *d = fdopendir(dfd);
    if (!d) {
        int r = -errno;
        close(dfd);
        return r;
    }
    _cleanup_free_ long *pos = NULL;
    size_t depth = 0, cap = 0;
    int ret = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) {
                ret = -errno;
                break;
            }
            if (depth == 0)
                break;
            int up = openat(dirfd(d), "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (up < 0) {
                ret = -errno;
                break;
            }
            struct stat ust;
            if (fstat(up, &ust) < 0 || ust.st_dev != dev) {
                ret = -EXDEV;
                close(up);
                break;
            }
            DIR *nd = fdopendir(up);
            if (!nd) {
                ret = -errno;
                close(up);
                break;
            }
            closedir(d);
            d = nd;
            depth--;
            /* ext4 directory offsets are hash cookies that stay valid across opens. */
            seekdir(d, pos[depth]);
            continue;
        }
        if (streq(de->d_name, ".") || streq(de->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT)
                continue;
            ret = -errno;
            break;
        }
        if (st.st_dev != dev)
            continue;
        if ((st.st_uid == ou && ou != nu) || (st.st_gid == og && og != ng)) {
            if (fchownat(dirfd(d), de->d_name, st.st_uid == ou ? nu : (uid_t)-1,
                         st.st_gid == og ? ng : (gid_t)-1, AT_SYMLINK_NOFOLLOW) < 0 &&
                errno != ENOENT) {
                ret = -errno;
                break;
            }
        }
        if (!S_ISDIR(st.st_mode))
            continue;
        long here = telldir(d);
        int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) {
            if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
                continue;
            ret = -errno;
            break;
        }
        if (depth == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            long *np = realloc(pos, ncap * sizeof *np);
            if (!np) {
                close(sub);
                ret = -ENOMEM;
                break;
            }
            pos = np;
            cap = ncap;
        }
        DIR *nd = fdopendir(sub);
        if (!nd) {
            ret = -errno;
            close(sub);
            break;
        }
        pos[depth++] = here;
        closedir(d);
        d = nd;
    }
    if (ret < 0)
        return ret;
    /* The root last: a walk that failed half-way can be run again, because the root still
     * names the owner whose files are left. */
    if (fchown(rfd, nu, ng) < 0)
        return -errno;
    return 0;
}

/* Attaches the open image to a loop device, checks it, mounts it. On failure nothing stays
 * attached or mounted. */
static int mount_image(disk_mgr_t *mgr, int img_fd, const char *img, const char *mnt, bool reown,
                       uid_t uid, gid_t gid, int *ret_nr) {
    int nr, lfd_raw;
    int r = disk_loop_attach(img_fd, mgr->direct_io, img, &lfd_raw, &nr);
    if (r < 0)
        return r;
    /* Held until the filesystem is mounted: the device is autoclear, so closing the last fd
     * of an unmounted device unbinds it - which is also the cleanup on every failure. */
    _cleanup_close_ int lfd = lfd_raw;
    r = probe_ours(lfd);
    if (r < 0)
        return r;
    r = prepare_mount_dir(mnt);
    if (r < 0)
        return r;
    char dev[DISK_LOOPDEV_MAX];
    r = xsnprintf(dev, sizeof dev, "/dev/loop%d", nr);
    if (r < 0)
        return r;
    r = do_mount(dev, mnt);
    if (r < 0)
        return r;
    if (reown) {
        r = reown_tree(mnt, uid, gid);
        if (r < 0) {
            (void)unmount_all(mnt);
            return r;
        }
    }
    *ret_nr = nr;
    return 0;
}

int disk_mgr_create(disk_mgr_t *mgr, const char *name, uint64_t size_mb, uid_t uid, gid_t gid,
                    disk_info_t *ret_info) {
    if (!mgr || !disk_name_valid(name) || uid == (uid_t)-1 || gid == (gid_t)-1)
        return -EINVAL;
    uint64_t size;
    int r = disk_size_bytes(size_mb, &size);
    if (r < 0)
        return r;
    char img[DISK_PATH_MAX], tmp[DISK_PATH_MAX], mnt[DISK_PATH_MAX];
    if ((r = disk_path_join(img, sizeof img, mgr->images, name, DISK_IMG_SUFFIX)) < 0 ||
        (r = disk_path_join(tmp, sizeof tmp, mgr->images, name, DISK_TMP_SUFFIX)) < 0 ||
        (r = disk_path_join(mnt, sizeof mnt, mgr->mounts, name, NULL)) < 0)
        return r;
    struct stat st;
    if (lstat(img, &st) == 0)
        return -EEXIST;
    if (errno != ENOENT)
        return -errno;

    _cleanup_close_ int fd = -1;
    pthread_mutex_lock(&mgr->room_lock);
    r = make_image_locked(mgr, tmp, size, &fd);
    pthread_mutex_unlock(&mgr->room_lock);
    if (r < 0)
        return r;
    r = run_mkfs(mgr, tmp, uid, gid);
    if (r >= 0)
        r = fill_holes(fd, size);
    if (r < 0) {
        unlink(tmp);
        return r;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, img, RENAME_NOREPLACE) < 0) {
        r = -errno;
        unlink(tmp);
        return r;
    }
    int nr;
    /* root_owner already made the root the user's: nothing to re-own. */
    r = mount_image(mgr, fd, img, mnt, false, uid, gid, &nr);
    if (r < 0) {
        unlink(img);
        (void)rmdir(mnt); /* fails harmlessly if it is not ours (busy, not empty) */
        return r;
    }
    if (ret_info) {
        if (fstat(fd, &st) < 0 || fill_info(mgr, name, &st, nr, true, ret_info) < 0)
            memset(ret_info, 0, sizeof *ret_info); /* unreachable in practice: paths fit */
    }
    return 0;
}

int disk_mgr_attach(disk_mgr_t *mgr, const char *name, uid_t uid, gid_t gid,
                    disk_info_t *ret_info) {
    if (!mgr || !disk_name_valid(name))
        return -EINVAL;
    char img[DISK_PATH_MAX], mnt[DISK_PATH_MAX];
    int r;
    if ((r = disk_path_join(img, sizeof img, mgr->images, name, DISK_IMG_SUFFIX)) < 0 ||
        (r = disk_path_join(mnt, sizeof mnt, mgr->mounts, name, NULL)) < 0)
        return r;
    _cleanup_close_ int fd = open(img, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_size % 4096 != 0 ||
        (uint64_t)st.st_size < ((uint64_t)DISK_SIZE_MIN_MB << 20))
        return -EMEDIUMTYPE;

    loop_match_t loops;
    r = loops_of(mgr, name, false, &loops);
    if (r < 0)
        return r;
    r = is_mount_root(mnt);
    if (r < 0)
        return r;
    if (r > 0) {
        char src[PATH_MAX], dev[DISK_LOOPDEV_MAX];
        if (loops.n == 1 && mount_source(mnt, src, sizeof src) == 0 &&
            xsnprintf(dev, sizeof dev, "/dev/loop%d", loops.found[0]) > 0 && streq(src, dev))
            return -EALREADY;
        return -EBUSY;
    }
    /* A loop device still on the image means a lazily unmounted filesystem is still in use:
     * a second mount of the same ext4 would corrupt it. */
    if (loops.n > 0)
        return -EBUSY;

    /* An image copied in sparsely, or made before this check existed, gets its blocks now:
     * a mounted disk never takes host space as the user writes. */
    r = fill_holes(fd, (uint64_t)st.st_size);
    if (r < 0)
        return r;
    int nr;
    r = mount_image(mgr, fd, img, mnt, uid != DISK_KEEP_OWNER, uid, gid, &nr);
    if (r < 0)
        return r;
    if (ret_info) {
        if (fstat(fd, &st) < 0 || fill_info(mgr, name, &st, nr, true, ret_info) < 0)
            memset(ret_info, 0, sizeof *ret_info);
    }
    return 0;
}

/* Unmounts and releases the loop devices of an image, whether or not the image exists. */
static int detach_paths(disk_mgr_t *mgr, const char *name, const char *mnt) {
    int lazy = unmount_all(mnt);
    if (lazy < 0)
        return lazy;
    loop_match_t loops;
    int r = loops_of(mgr, name, true, &loops);
    if (r < 0)
        return r;
    /* Normally none: autoclear unbound the device with the unmount. Left over are devices a
     * crash caught between attach and mount, and those a lazy unmount keeps busy. */
    for (size_t i = 0; i < loops.n; i++) {
        r = disk_loop_release(loops.found[i]);
        if (r < 0)
            return r;
        /* After a clean unmount a device still bound is held only for a moment: another
         * thread or process that opened it while racing for a free device, or a udev probe.
         * Give it that moment rather than report the disk as still in use: 200 ms once fell
         * short in CI (8 threads creating and removing at once on a busy VM), and only a
         * device really held costs the whole wait. */
        uint64_t deadline = now_mono_ms() + LOOP_SETTLE_MS;
        while (lazy == 0 && disk_loop_bound(loops.found[i]) > 0 && now_mono_ms() < deadline)
            nap_ms(2);
        if (disk_loop_bound(loops.found[i]) > 0)
            lazy = 1;
    }
    return lazy;
}

int disk_mgr_detach(disk_mgr_t *mgr, const char *name) {
    if (!mgr || !disk_name_valid(name))
        return -EINVAL;
    char img[DISK_PATH_MAX], mnt[DISK_PATH_MAX];
    int r;
    if ((r = disk_path_join(img, sizeof img, mgr->images, name, DISK_IMG_SUFFIX)) < 0 ||
        (r = disk_path_join(mnt, sizeof mnt, mgr->mounts, name, NULL)) < 0)
        return r;
    struct stat st;
    if (lstat(img, &st) < 0)
        return -errno;
    return detach_paths(mgr, name, mnt);
}

int disk_mgr_remove(disk_mgr_t *mgr, const char *name) {
    if (!mgr || !disk_name_valid(name))
        return -EINVAL;
    char img[DISK_PATH_MAX], mnt[DISK_PATH_MAX];
    int r;
    if ((r = disk_path_join(img, sizeof img, mgr->images, name, DISK_IMG_SUFFIX)) < 0 ||
        (r = disk_path_join(mnt, sizeof mnt, mgr->mounts, name, NULL)) < 0)
        return r;
    int lazy = detach_paths(mgr, name, mnt);
    if (lazy < 0)
        return lazy;
    if (unlink(img) < 0 && errno != ENOENT)
        return -errno;
    if (rmdir(mnt) < 0 && errno != ENOENT)
        return -errno;
    return lazy;
}

int disk_mgr_reown(disk_mgr_t *mgr, const char *name, uid_t uid, gid_t gid) {
    if (!mgr || !disk_name_valid(name))
        return -EINVAL;
    char mnt[DISK_PATH_MAX];
    int r = disk_path_join(mnt, sizeof mnt, mgr->mounts, name, NULL);
    if (r < 0)
        return r;
    r = is_mount_root(mnt);
    if (r < 0)
        return r;
    if (r == 0)
        return -ENOTCONN;
    return reown_tree(mnt, uid, gid);
}

int disk_mgr_stat(disk_mgr_t *mgr, const char *name, disk_info_t *ret_info) {
    if (!mgr || !disk_name_valid(name) || !ret_info)
        return -EINVAL;
    char img[DISK_PATH_MAX], mnt[DISK_PATH_MAX];
    int r;
    if ((r = disk_path_join(img, sizeof img, mgr->images, name, DISK_IMG_SUFFIX)) < 0 ||
        (r = disk_path_join(mnt, sizeof mnt, mgr->mounts, name, NULL)) < 0)
        return r;
    struct stat st;
    if (lstat(img, &st) < 0)
        return -errno;
    loop_match_t loops;
    r = loops_of(mgr, name, false, &loops);
    if (r < 0)
        return r;
    int mounted = is_mount_root(mnt);
    if (mounted < 0)
        return mounted;
    return fill_info(mgr, name, &st, loops.n > 0 ? loops.found[0] : -1, mounted > 0, ret_info);
}

/* Loop numbers of all images, for list: one sysfs walk instead of one per disk. */
typedef struct {
    const disk_mgr_t *mgr;
    disk_info_t *list;
    size_t n;
} list_loops_t;

static int list_loops_cb(int nr, const char *backing, void *arg) {
    list_loops_t *l = arg;
    char file[NAME_MAX + 1], name[DISK_NAME_MAX + 1];
    bool deleted;
    if (disk_backing_in_dir(backing, l->mgr->images, file, sizeof file, &deleted) < 0 || deleted ||
        disk_file_classify(file, name) != DISK_FILE_IMAGE)
        return 0;
    for (size_t i = 0; i < l->n; i++)
        if (streq(l->list[i].name, name) && !l->list[i].loop_dev[0])
            (void)xsnprintf(l->list[i].loop_dev, sizeof l->list[i].loop_dev, "/dev/loop%d", nr);
    return 0;
}

static int info_cmp(const void *a, const void *b) {
    return strcmp(((const disk_info_t *)a)->name, ((const disk_info_t *)b)->name);
}

int disk_mgr_list(disk_mgr_t *mgr, disk_info_t **ret_list, size_t *ret_n) {
    if (!mgr || !ret_list || !ret_n)
        return -EINVAL;
    _cleanup_(closedirp) DIR *d = opendir(mgr->images);
    if (!d)
        return -errno;
    _cleanup_free_ disk_info_t *list = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    int r;
    while ((errno = 0, de = readdir(d))) {
        char name[DISK_NAME_MAX + 1];
        if (disk_file_classify(de->d_name, name) != DISK_FILE_IMAGE)
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            disk_info_t *nl = realloc(list, ncap * sizeof *nl);
            if (!nl)
                return -ENOMEM;
            list = nl;
            cap = ncap;
        }
        char mnt[DISK_PATH_MAX];
        if ((r = disk_path_join(mnt, sizeof mnt, mgr->mounts, name, NULL)) < 0)
            return r;
        int mounted = is_mount_root(mnt);
        if (mounted < 0)
            return mounted;
        if ((r = fill_info(mgr, name, &st, -1, mounted > 0, &list[n])) < 0)
            return r;
        n++;
    }
    if (errno)
        return -errno;
    list_loops_t l = {.mgr = mgr, .list = list, .n = n};
    r = disk_loop_foreach(list_loops_cb, &l);
    if (r < 0)
        return r;
    if (n > 1)
        qsort(list, n, sizeof *list, info_cmp);
    *ret_n = n;
    *ret_list = TAKE_PTR(list);
    return 0;
}

/* --- the start-up sweep --- */

typedef struct {
    const disk_mgr_t *mgr;
    const char *const *keep;
    size_t nkeep;
    disk_gc_stats_t *st;
    int first_err;
} gc_t;

static void gc_fail(gc_t *gc, int r) {
    gc->st->failed++;
    if (gc->first_err == 0)
        gc->first_err = r;
}

static void gc_mounts(gc_t *gc) {
    /* Targets are collected first, newest first (so submounts go before their parents), and
     * unmounted after the table is freed. */
    char **targets = NULL;
    size_t n = 0;
    {
        _cleanup_(mnt_unref_tablep) struct libmnt_table *tb =
            mnt_new_table_from_file("/proc/self/mountinfo");
        _cleanup_(mnt_free_iterp) struct libmnt_iter *it = mnt_new_iter(MNT_ITER_BACKWARD);
        if (!tb || !it) {
            gc_fail(gc, -ENOMEM);
            return;
        }
        struct libmnt_fs *fs;
        while (mnt_table_next_fs(tb, it, &fs) == 0) {
            const char *t = mnt_fs_get_target(fs);
            char name[DISK_NAME_MAX + 1];
            bool exact;
            if (!t || disk_mount_name(t, gc->mgr->mounts, name, &exact) < 0)
                continue;
            if (disk_name_valid(name) && disk_name_kept(name, gc->keep, gc->nkeep))
                continue;
            char **nt = realloc(targets, (n + 1) * sizeof *nt);
            char *dup = strdup(t);
            if (!nt || !dup) {
                free(dup);
                if (nt)
                    targets = nt;
                gc_fail(gc, -ENOMEM);
                break;
            }
            targets = nt;
            targets[n++] = dup;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (umount2(targets[i], UMOUNT_NOFOLLOW) == 0 ||
            (errno == EBUSY && umount2(targets[i], UMOUNT_NOFOLLOW | MNT_DETACH) == 0))
            gc->st->mounts++;
        else if (errno != EINVAL && errno != ENOENT) /* gone with a parent: fine */
            gc_fail(gc, -errno);
        free(targets[i]);
    }
    free(targets);
}

static int gc_loops_cb(int nr, const char *backing, void *arg) {
    gc_t *gc = arg;
    char file[NAME_MAX + 1], name[DISK_NAME_MAX + 1];
    bool deleted;
    if (disk_backing_in_dir(backing, gc->mgr->images, file, sizeof file, &deleted) < 0)
        return 0;
    if (!deleted && disk_file_classify(file, name) == DISK_FILE_IMAGE &&
        disk_name_kept(name, gc->keep, gc->nkeep)) {
        /* A kept disk keeps the device its mount uses. A device bound to it but not mounted
         * there is a crash's leftover that would make the next attach fail with -EBUSY. */
        char mnt[DISK_PATH_MAX], src[PATH_MAX], dev[DISK_LOOPDEV_MAX];
        if (disk_path_join(mnt, sizeof mnt, gc->mgr->mounts, name, NULL) < 0 ||
            xsnprintf(dev, sizeof dev, "/dev/loop%d", nr) < 0 ||
            (mount_source(mnt, src, sizeof src) == 0 && streq(src, dev)))
            return 0;
    }
    int r = disk_loop_release(nr);
    if (r < 0)
        gc_fail(gc, r);
    else
        gc->st->loops++;
    return 0;
}

static void gc_images(gc_t *gc) {
    _cleanup_(closedirp) DIR *d = opendir(gc->mgr->images);
    if (!d) {
        gc_fail(gc, -errno);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        char name[DISK_NAME_MAX + 1];
        disk_file_kind_t kind = disk_file_classify(de->d_name, name);
        if (kind == DISK_FILE_OTHER)
            continue; /* not ours: an operator's file is never deleted by a sweep */
        if (kind == DISK_FILE_IMAGE && disk_name_kept(name, gc->keep, gc->nkeep))
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) == 0)
            gc->st->images++;
        else if (errno != ENOENT)
            gc_fail(gc, -errno);
    }
}

static void gc_dirs(gc_t *gc) {
    _cleanup_(closedirp) DIR *d = opendir(gc->mgr->mounts);
    if (!d) {
        gc_fail(gc, -errno);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (streq(de->d_name, ".") || streq(de->d_name, ".."))
            continue;
        if (disk_name_valid(de->d_name) && disk_name_kept(de->d_name, gc->keep, gc->nkeep))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
            continue;
        char path[PATH_MAX];
        int r = xsnprintf(path, sizeof path, "%s/%s", gc->mgr->mounts, de->d_name);
        if (r < 0) {
            gc_fail(gc, r);
            continue;
        }
        /* rm_rf never crosses a mount point: a mount the sweep could not remove stays. */
        r = rm_rf(path);
        if (r < 0)
            gc_fail(gc, r);
        else
            gc->st->dirs++;
    }
}

int disk_mgr_gc(disk_mgr_t *mgr, const char *const *keep, size_t nkeep, disk_gc_stats_t *stats) {
    disk_gc_stats_t local;
    if (!stats)
        stats = &local;
    memset(stats, 0, sizeof *stats);
    if (!mgr || (nkeep > 0 && !keep))
        return -EINVAL;
    gc_t gc = {.mgr = mgr, .keep = keep, .nkeep = nkeep, .st = stats};
    /* Order matters: unmounting lets autoclear unbind most loop devices; then whatever a
     * crash left bound (attached, never mounted) is released; then the files go. */
    gc_mounts(&gc);
    int r = disk_loop_foreach(gc_loops_cb, &gc);
    if (r < 0)
        gc_fail(&gc, r);
    gc_images(&gc);
    gc_dirs(&gc);
    return gc.first_err;
}
