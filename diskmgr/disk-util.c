/* The pure parts of the disk manager (see disk-util.h). The mkfs command line lives here, with
 * the reasons for each option, so a unit test pins the options that keep the blocks
 * allocated. */
#include "disk-util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

static bool name_char_ok(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

bool disk_name_valid(const char *name) {
    if (!name || !name[0])
        return false;
    if (name[0] == '-' || name[0] == '_')
        return false;
    size_t i = 0;
    for (; name[i]; i++) {
        if (i >= DISK_NAME_MAX || !name_char_ok(name[i]))
            return false;
    }
    return true;
}

int disk_size_bytes(uint64_t size_mb, uint64_t *ret_bytes) {
    if (size_mb < DISK_SIZE_MIN_MB || size_mb > DISK_SIZE_MAX_MB)
        return -EINVAL;
    *ret_bytes = size_mb << 20;
    return 0;
}

int disk_room_check(uint64_t bavail, uint64_t frsize, uint64_t size, uint64_t reserve) {
    uint64_t avail;
    if (__builtin_mul_overflow(bavail, frsize, &avail))
        avail = UINT64_MAX;
    uint64_t need;
    if (__builtin_add_overflow(size, reserve, &need))
        return -ENOSPC;
    return avail >= need ? 0 : -ENOSPC;
}

int disk_dir_valid(const char *dir) {
    if (!dir || dir[0] != '/' || dir[1] == '\0')
        return -EINVAL;
    if (strlen(dir) > DISK_DIR_MAX)
        return -ENAMETOOLONG;
    /* Walk the components: "." and ".." would make prefix comparisons against what the kernel
     * reports meaningless. Empty components ("//") are harmless and realpath removes them. */
    const char *p = dir;
    while (*p) {
        while (*p == '/')
            p++;
        const char *end = strchrnul(p, '/');
        size_t n = (size_t)(end - p);
        if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return -EINVAL;
        p = end;
    }
    return 0;
}

int disk_path_join(char *buf, size_t len, const char *dir, const char *name, const char *suffix) {
    if (!disk_name_valid(name))
        return -EINVAL;
    int r = xsnprintf(buf, len, "%s/%s%s", dir, name, suffix ? suffix : "");
    return r < 0 ? r : 0;
}

static bool strip_suffix(const char *file, const char *suffix, char *ret_name) {
    size_t n = strlen(file), s = strlen(suffix);
    if (n <= s || n - s > DISK_NAME_MAX || strcmp(file + n - s, suffix) != 0)
        return false;
    char name[DISK_NAME_MAX + 1];
    memcpy(name, file, n - s);
    name[n - s] = '\0';
    if (!disk_name_valid(name))
        return false;
    if (ret_name)
        memcpy(ret_name, name, n - s + 1);
    return true;
}

disk_file_kind_t disk_file_classify(const char *file, char *ret_name) {
    if (!file)
        return DISK_FILE_OTHER;
    if (strip_suffix(file, DISK_IMG_SUFFIX, ret_name))
        return DISK_FILE_IMAGE;
    if (strip_suffix(file, DISK_TMP_SUFFIX, ret_name))
        return DISK_FILE_TMP;
    return DISK_FILE_OTHER;
}

int disk_backing_in_dir(const char *backing, const char *dir, char *ret_file, size_t len,
                        bool *ret_deleted) {
    static const char deleted[] = " (deleted)";
    size_t n = strlen(backing);
    while (n > 0 && backing[n - 1] == '\n')
        n--;
    /* The kernel appends " (deleted)" once the image is unlinked while still attached; our
     * names cannot contain a blank, so the suffix is never part of a real name. */
    bool is_deleted = n >= sizeof deleted - 1 &&
                      memcmp(backing + n - (sizeof deleted - 1), deleted, sizeof deleted - 1) == 0;
    if (is_deleted)
        n -= sizeof deleted - 1;
    size_t d = strlen(dir);
    if (n <= d + 1 || memcmp(backing, dir, d) != 0 || backing[d] != '/')
        return -ENOENT;
    const char *file = backing + d + 1;
    size_t flen = n - d - 1;
    if (memchr(file, '/', flen))
        return -ENOENT;
    if (flen + 1 > len)
        return -ENAMETOOLONG;
    memcpy(ret_file, file, flen);
    ret_file[flen] = '\0';
    if (ret_deleted)
        *ret_deleted = is_deleted;
    return 0;
}

int disk_mount_name(const char *target, const char *mounts_dir, char *ret_name, bool *ret_exact) {
    size_t d = strlen(mounts_dir);
    if (strncmp(target, mounts_dir, d) != 0 || target[d] != '/' || target[d + 1] == '\0')
        return -ENOENT;
    const char *comp = target + d + 1;
    const char *end = strchrnul(comp, '/');
    size_t n = (size_t)(end - comp);
    /* An over-long component cannot be a disk of ours; truncating keeps it reported (and
     * swept) as stray rather than failing the whole sweep. */
    if (n > DISK_NAME_MAX)
        n = DISK_NAME_MAX;
    memcpy(ret_name, comp, n);
    ret_name[n] = '\0';
    *ret_exact = *end == '\0' && (size_t)(end - comp) <= DISK_NAME_MAX;
    return 0;
}

bool disk_name_kept(const char *name, const char *const *keep, size_t nkeep) {
    for (size_t i = 0; i < nkeep; i++)
        if (streq(name, keep[i]))
            return true;
    return false;
}

int disk_mkfs_argv(const char *mkfs, const char *path, uid_t uid, gid_t gid, char *opts,
                   size_t optslen, const char **argv) {
    /* -E options:
     *  nodiscard: mke2fs "discards" a regular file by punching holes in it, which would undo
     *    the fallocate and let a user's writes take host space later.
     *  assume_storage_prezeroed: fallocated blocks read as zeros, so mke2fs skips zeroing the
     *    inode tables and journal (this is what makes mkfs take milliseconds) and marks the
     *    inode tables zeroed, so the kernel's lazy-init thread never zeroes them either (on a
     *    loop device that zeroing becomes hole punching too).
     *  root_owner: the filesystem root belongs to the sandbox user from the first moment. */
    int r = xsnprintf(opts, optslen, "nodiscard,assume_storage_prezeroed=1,root_owner=%u:%u",
                      (unsigned)uid, (unsigned)gid);
    if (r < 0)
        return r;
    size_t n = 0;
    argv[n++] = mkfs;
    argv[n++] = "-F"; /* the target is a regular file, not a block device */
    argv[n++] = "-q";
    /* The usage type for a disk under 512 MiB would be "small": 1 KiB blocks and four times
     * the inodes. 4 KiB blocks match the loop device's block size and the host's pages. */
    argv[n++] = "-T";
    argv[n++] = "default";
    argv[n++] = "-b";
    argv[n++] = "4096";
    /* No root-reserved blocks: only the sandbox user writes here, and root's 5 % would just
     * be a quota the user paid for and cannot use. */
    argv[n++] = "-m";
    argv[n++] = "0";
    argv[n++] = "-L";
    argv[n++] = DISK_LABEL;
    argv[n++] = "-E";
    argv[n++] = opts;
    argv[n++] = "--";
    argv[n++] = path;
    argv[n] = NULL;
    return (int)n;
}

int disk_parse_u64(const char *s, uint64_t max, uint64_t *ret) {
    if (!s || !*s)
        return -EINVAL;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        if (__builtin_mul_overflow(v, 10u, &v) ||
            __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v))
            return -ERANGE;
    }
    if (v > max)
        return -ERANGE;
    *ret = v;
    return 0;
}
