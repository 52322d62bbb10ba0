/* The pure parts of the disk manager: name and path rules, size arithmetic, the mkfs command
 * line, and the parsing of what the kernel reports (sysfs backing files, mount targets).
 * Nothing here touches the system, so the unit tests cover it without root. Internal to
 * diskmgr/ and its tests. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "diskmgr.h"

#define DISK_IMG_SUFFIX    ".img"
#define DISK_TMP_SUFFIX    ".tmp" /* an image being made; renamed to .img once mkfs succeeded */
#define DISK_MKFS_ARGV_MAX 20

/* What a file in the images directory is. */
typedef enum {
    DISK_FILE_OTHER = 0, /* not ours: left alone */
    DISK_FILE_IMAGE = 1, /* <name>.img */
    DISK_FILE_TMP = 2,   /* <name>.tmp, left by an interrupted creation */
} disk_file_kind_t;

/* 1..DISK_NAME_MAX of [A-Za-z0-9_-], starting with a letter or digit (so a name never reads
 * as an option and never as "." or ".."). */
bool disk_name_valid(const char *name);

/* size_mb MiB in bytes; -EINVAL outside [DISK_SIZE_MIN_MB, DISK_SIZE_MAX_MB]. */
int disk_size_bytes(uint64_t size_mb, uint64_t *ret_bytes);

/* 0 if a filesystem with bavail free blocks of frsize bytes can take size bytes and still
 * keep reserve bytes free, else -ENOSPC. Never overflows. */
int disk_room_check(uint64_t bavail, uint64_t frsize, uint64_t size, uint64_t reserve);

/* A configured directory: absolute, at most DISK_DIR_MAX chars, no "." or ".." component,
 * not "/" itself. 0, -EINVAL or -ENAMETOOLONG. */
int disk_dir_valid(const char *dir);

/* buf = dir + "/" + name + suffix (suffix may be NULL); -EINVAL for a bad name,
 * -ENAMETOOLONG if it does not fit. */
int disk_path_join(char *buf, size_t len, const char *dir, const char *name, const char *suffix);

/* Classifies a file name of the images directory; ret_name (DISK_NAME_MAX + 1 bytes, may be
 * NULL) gets the disk name for IMAGE and TMP. */
disk_file_kind_t disk_file_classify(const char *file, char *ret_name);

/* A loop device's sysfs backing_file content (trailing newline tolerated): if the file lies
 * directly in dir, copies its base name to ret_file, sets *ret_deleted (may be NULL) to
 * whether the kernel marked it " (deleted)" (unlinked while attached: not the file now at
 * that path) and returns 0; -ENOENT if it lies elsewhere, -ENAMETOOLONG if ret_file is too
 * small. */
int disk_backing_in_dir(const char *backing, const char *dir, char *ret_file, size_t len,
                        bool *ret_deleted);

/* A mount target: if it lies under mounts_dir, copies the first path component below it to
 * ret_name (DISK_NAME_MAX + 1 bytes; it may not be a valid disk name, which gc treats as
 * stray) and sets *ret_exact to whether target is exactly mounts_dir/<component>. -ENOENT if
 * target is not under mounts_dir. */
int disk_mount_name(const char *target, const char *mounts_dir, char *ret_name, bool *ret_exact);

/* true if name is one of keep[0..nkeep). */
bool disk_name_kept(const char *name, const char *const *keep, size_t nkeep);

/* The fixed mkfs.ext4 command line for an image at path whose root belongs to uid:gid.
 * opts (at least 128 bytes) holds the -E argument the argv points into; argv gets at most
 * DISK_MKFS_ARGV_MAX entries including the NULL. Returns the argument count. */
int disk_mkfs_argv(const char *mkfs, const char *path, uid_t uid, gid_t gid, char *opts,
                   size_t optslen, const char **argv);

/* Strict decimal parse: digits only, no sign, no blanks, value <= max. 0, -EINVAL or -ERANGE. */
int disk_parse_u64(const char *s, uint64_t max, uint64_t *ret);
