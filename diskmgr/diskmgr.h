/* Per-worker virtual disks. A disk is an ext4 filesystem in a fully allocated image file
 * (<images>/<name>.img), attached to a loop device (autoclear) and mounted nosuid,nodev at
 * <mounts>/<name>; the gateway bind-mounts that directory into the worker's container at
 * /sandbox. Blocks are allocated when the disk is made, so a user who fills their disk never
 * moves the host's free space, and a disk the host cannot hold is refused (-ENOSPC, which the
 * gateway turns into a 503). The image outlives its mount: a replacement worker re-attaches
 * the session's disk, and only removal deletes it. After a crash, disk_mgr_gc() removes every
 * mount, loop device and image the manager's directories account for.
 *
 * Threads: every call blocks (mkfs, mount, unmount) and belongs on a work-pool thread. Calls
 * on different names may run concurrently; calls on the same name must not, and disk_mgr_gc()
 * must not run concurrently with anything else on the same directories (it is the start-up
 * sweep). mkfs runs through posix_spawn() and is reaped with waitpid(pid): a caller that reaps
 * with waitpid(-1) must not run at the same time.
 *
 * Errors: every int-returning call returns >= 0 on success and -errno on failure. Notable
 * codes: -EINVAL bad name, size or configuration; -ENOSPC the host lacks room for the disk;
 * -EEXIST the image already exists; -ENOENT no such image; -EMEDIUMTYPE the image is not the
 * ext4 filesystem this manager makes (refused before mounting); -EALREADY the disk is already
 * mounted at its mount path; -EBUSY a loop device still holds the image or the mount path is
 * occupied. Nothing here logs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DISK_NAME_MAX       64  /* longest disk name, without the NUL */
#define DISK_DIR_MAX        200 /* longest images or mounts directory (after realpath) */
#define DISK_PATH_MAX       288 /* holds any path the manager builds, with the NUL */
#define DISK_LOOPDEV_MAX    32  /* holds "/dev/loopN" with the NUL */
#define DISK_SIZE_MIN_MB    16  /* ext4 with a journal needs room for its metadata */
#define DISK_SIZE_MAX_MB    (1024u * 1024u) /* 1 TiB */
#define DISK_RESERVE_DEF_MB 1024            /* host room kept free by default */
#define DISK_MKFS_DEFAULT   "/sbin/mkfs.ext4"
/* The filesystem label every disk gets; the blkid check refuses images without it. */
#define DISK_LABEL "kbox-disk"
/* Pass as uid/gid to disk_mgr_attach() to keep the disk's current owner. */
#define DISK_KEEP_OWNER ((uid_t)-1)

typedef struct disk_mgr disk_mgr_t;

typedef struct {
    const char *images_dir; /* absolute; created 0700 if missing; holds <name>.img */
    const char *mounts_dir; /* absolute; created 0700 if missing; holds <name>/ mount points */
    const char *mkfs_path;  /* absolute path of mkfs.ext4; NULL means DISK_MKFS_DEFAULT */
    uint64_t reserve_mb;    /* free room on the images filesystem that disks never take */
    bool direct_io;         /* ask for LO_FLAGS_DIRECT_IO (no double page cache); the manager
                               falls back to buffered I/O where the kernel refuses it */
} disk_mgr_config_t;

/* What the manager knows about one disk. */
typedef struct {
    char name[DISK_NAME_MAX + 1];
    uint64_t size_bytes;             /* size of the image file */
    uint64_t alloc_bytes;            /* host blocks the image holds (st_blocks * 512) */
    bool mounted;                    /* something is mounted at mount_path */
    char loop_dev[DISK_LOOPDEV_MAX]; /* loop device bound to the image, "" if none */
    char mount_path[DISK_PATH_MAX];  /* <mounts>/<name>, whether mounted or not */
} disk_info_t;

/* What disk_mgr_gc() removed, and how many removals failed. */
typedef struct {
    unsigned mounts;
    unsigned loops;
    unsigned images; /* images and leftovers of interrupted creations */
    unsigned dirs;
    unsigned failed;
} disk_gc_stats_t;

/* Fills cfg with the defaults (no directories, default mkfs, DISK_RESERVE_DEF_MB, direct I/O). */
void disk_mgr_config_init(disk_mgr_config_t *cfg);

/* Validates cfg, creates both directories (0700) if missing, resolves them with realpath(3)
 * (the kernel reports resolved paths in mountinfo and sysfs) and checks mkfs is executable.
 * The config strings are copied. *ret_mgr is set only on success; free with disk_mgr_destroy. */
int disk_mgr_new(const disk_mgr_config_t *cfg, disk_mgr_t **ret_mgr);

/* Frees the manager (not the disks: they stay as they are). NULL-safe; sets *mgr_p to NULL. */
void disk_mgr_destroy(disk_mgr_t **mgr_p);

/* Makes a new disk of size_mb MiB owned by uid:gid and mounts it. The image's blocks are
 * allocated up front; -ENOSPC if the images filesystem would keep less than the reserve.
 * On any failure nothing of the disk is left behind. ret_info (may be NULL) is filled only
 * on success. */
int disk_mgr_create(disk_mgr_t *mgr, const char *name, uint64_t size_mb, uid_t uid, gid_t gid,
                    disk_info_t *ret_info);

/* Mounts an existing disk (a replacement worker, a gateway restart). The loop device is
 * probed with libblkid first and anything but our ext4 is refused (-EMEDIUMTYPE). Unless
 * uid is DISK_KEEP_OWNER, files owned by the disk's previous owner are given to uid:gid (see
 * disk_mgr_reown). -EALREADY if the disk is already mounted at its path, -EBUSY if a loop
 * device still holds the image (a lazily unmounted disk still in use: mounting it twice would
 * corrupt it). ret_info (may be NULL) is filled only on success. */
int disk_mgr_attach(disk_mgr_t *mgr, const char *name, uid_t uid, gid_t gid, disk_info_t *ret_info);

/* Unmounts the disk and releases its loop device; keeps the image and the mount directory.
 * Returns 0 when nothing holds the image any more, 1 when the unmount had to be lazy (a
 * process still uses the filesystem; the loop device goes when it lets go), -ENOENT if
 * there is no such image. Idempotent for a disk that is not mounted. */
int disk_mgr_detach(disk_mgr_t *mgr, const char *name);

/* Detaches the disk and deletes its image and mount directory. Returns 0 or 1 as
 * disk_mgr_detach does (a lazily detached image is unlinked; its blocks return to the host
 * when the last user lets go). Idempotent: removing a disk that does not exist returns 0. */
int disk_mgr_remove(disk_mgr_t *mgr, const char *name);

/* Gives every file of the mounted disk that belongs to the owner of its root directory to
 * uid:gid (and likewise for the group), without following symlinks or leaving the disk's
 * filesystem. Meant for a disk no worker is using yet: a replacement worker may run under
 * another uid. -ENOTCONN if the disk is not mounted. */
int disk_mgr_reown(disk_mgr_t *mgr, const char *name, uid_t uid, gid_t gid);

/* State of one disk; -ENOENT if there is no image. ret_info is filled only on success. */
int disk_mgr_stat(disk_mgr_t *mgr, const char *name, disk_info_t *ret_info);

/* Every disk in the images directory, sorted by name. *ret_list is a malloc'ed array the
 * caller frees with free() (NULL when *ret_n is 0); both are set only on success. */
int disk_mgr_list(disk_mgr_t *mgr, disk_info_t **ret_list, size_t *ret_n);

/* The start-up sweep: unmounts every mount under the mounts directory, releases every loop
 * device whose backing file is in the images directory, deletes every image and leftover of
 * an interrupted creation, and removes stray mount directories, sparing the names in keep
 * (nkeep entries; keep may be NULL when nkeep is 0). It keeps going after a failure; stats
 * (may be NULL) is always filled and counts what was removed and what failed. Returns 0 if
 * everything went, else the first -errno met. */
int disk_mgr_gc(disk_mgr_t *mgr, const char *const *keep, size_t nkeep, disk_gc_stats_t *stats);

/* Host path where the disk is (or will be) mounted: the directory the gateway binds into the
 * container at /sandbox. -EINVAL for a bad name, -ENAMETOOLONG if buf is too small. */
int disk_mgr_mount_path(const disk_mgr_t *mgr, const char *name, char *buf, size_t len);

/* Host path of the disk's image file. Same contract as disk_mgr_mount_path. */
int disk_mgr_image_path(const disk_mgr_t *mgr, const char *name, char *buf, size_t len);
