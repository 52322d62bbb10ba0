/* Command line of kbox-diskmgr, parsed without touching the system so the unit tests cover
 * it. Options may come before or after the command; both "--opt VALUE" and "--opt=VALUE". */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DISK_CLI_KEEP_MAX 1024

typedef enum {
    DISK_CMD_NONE = 0,
    DISK_CMD_CREATE,
    DISK_CMD_ATTACH,
    DISK_CMD_DETACH,
    DISK_CMD_DESTROY,
    DISK_CMD_LIST,
    DISK_CMD_GC,
} disk_cmd_t;

/* Exit codes, so scripts can tell the failures an operator acts on apart. */
enum {
    DISK_EXIT_OK = 0,
    DISK_EXIT_FAIL = 1,
    DISK_EXIT_USAGE = 2,
    DISK_EXIT_NOSPC = 3,   /* the host lacks room for the disk */
    DISK_EXIT_NOENT = 4,   /* no such disk */
    DISK_EXIT_BUSY = 5,    /* exists already, mounted already, or still in use */
    DISK_EXIT_REFUSED = 6, /* the image is not an ext4 disk made by kbox */
};

typedef struct {
    disk_cmd_t cmd;
    bool help;
    const char *images_dir;
    const char *mounts_dir;
    const char *mkfs_path; /* NULL: the library default */
    bool reserve_set;
    uint64_t reserve_mb;
    bool no_direct_io;
    const char *name; /* create, attach, detach, destroy */
    uint64_t size_mb; /* create */
    bool owner_set;   /* --uid and --gid given (create, attach) */
    uid_t uid;
    gid_t gid;
    size_t nkeep; /* gc --keep NAME, repeatable */
    const char *keep[DISK_CLI_KEEP_MAX];
} disk_cli_t;

extern const char disk_cli_usage[];

/* Parses argv (argv[0] is the program). Strings in ret point into argv. On failure returns
 * -EINVAL and writes a one-line reason to err; ret is written only on success. With --help
 * anywhere, succeeds with help set and nothing else checked. */
int disk_cli_parse(int argc, char *const *argv, disk_cli_t *ret, char *err, size_t errlen);

/* The exit code for a library result (>= 0 is success). */
int disk_cli_exit_code(int r);
