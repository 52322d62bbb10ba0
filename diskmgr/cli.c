/* Parsing of the kbox-diskmgr command line (see cli.h). Hand-written rather than getopt:
 * getopt keeps global state (optind), which a unit test calling the parser many times would
 * have to reset, and options here may follow the command. */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "disk-util.h"
#include "util.h"

const char disk_cli_usage[] =
    "usage: kbox-diskmgr --images DIR --mounts DIR [--mkfs PATH] [--reserve-mb N]\n"
    "                    [--no-direct-io] COMMAND\n"
    "commands:\n"
    "  create NAME SIZE_MB [--uid N --gid N]  make, format and mount a disk (owner 0:0 by "
    "default)\n"
    "  attach NAME [--uid N --gid N]          mount an existing disk (re-own it to N:N if given)\n"
    "  detach NAME                            unmount a disk, keep its image\n"
    "  destroy NAME                           unmount a disk and delete its image\n"
    "  list                                   show every disk and its state\n"
    "  gc [--keep NAME]...                    remove every disk, mount and loop device not kept\n"
    "exit codes: 0 ok, 1 failed, 2 usage, 3 no room on the host, 4 no such disk,\n"
    "            5 exists or busy, 6 image refused (not a kbox ext4 disk)\n";

/* Writes the reason for a usage error to err (if given) and returns -EINVAL. */
__attribute__((format(printf, 3, 4))) static int usage_error(char *err, size_t errlen,
                                                             const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen)
        vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static const struct {
    const char *word;
    disk_cmd_t cmd;
    int npos; /* positional arguments after the command word */
} commands[] = {
    {"create", DISK_CMD_CREATE, 2}, {"attach", DISK_CMD_ATTACH, 1},
    {"detach", DISK_CMD_DETACH, 1}, {"destroy", DISK_CMD_DESTROY, 1},
    {"list", DISK_CMD_LIST, 0},     {"gc", DISK_CMD_GC, 0},
};

/* Matches "--opt VALUE" and "--opt=VALUE"; advances *i past a separate value. 1 if matched,
 * 0 if not this option, -EINVAL (with err) if the value is missing. */
static int opt_value(int argc, char *const *argv, int *i, const char *opt, const char **ret,
                     char *err, size_t errlen) {
    const char *a = argv[*i];
    size_t n = strlen(opt);
    if (strncmp(a, opt, n) != 0)
        return 0;
    if (a[n] == '=') {
        *ret = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return usage_error(err, errlen, "%s needs a value", opt);
    *ret = argv[++*i];
    return 1;
}

static int parse_id(const char *s, const char *what, uint32_t *ret, char *err, size_t errlen) {
    uint64_t v;
    /* (uid_t)-1 means "no change" to chown and to the library. */
    if (disk_parse_u64(s, UINT32_MAX - 1, &v) < 0)
        return usage_error(err, errlen, "%s must be a number below 4294967295, not '%s'", what, s);
    *ret = (uint32_t)v;
    return 0;
}

int disk_cli_parse(int argc, char *const *argv, disk_cli_t *ret, char *err, size_t errlen) {
    disk_cli_t c;
    memset(&c, 0, sizeof c);
    const char *pos[3];
    int npos = 0;
    bool uid_set = false, gid_set = false;
    uint32_t uid = 0, gid = 0;
    int r;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (streq(a, "-h") || streq(a, "--help")) {
            memset(ret, 0, sizeof *ret);
            ret->help = true;
            return 0;
        }
        if ((r = opt_value(argc, argv, &i, "--images", &v, err, errlen)) != 0) {
            if (r < 0)
                return r;
            c.images_dir = v;
        } else if ((r = opt_value(argc, argv, &i, "--mounts", &v, err, errlen)) != 0) {
            if (r < 0)
                return r;
            c.mounts_dir = v;
        } else if ((r = opt_value(argc, argv, &i, "--mkfs", &v, err, errlen)) != 0) {
            if (r < 0)
                return r;
            c.mkfs_path = v;
        } else if ((r = opt_value(argc, argv, &i, "--reserve-mb", &v, err, errlen)) != 0) {
            if (r < 0)
                return r;
            if (disk_parse_u64(v, UINT64_MAX >> 20, &c.reserve_mb) < 0)
                return usage_error(err, errlen, "--reserve-mb must be a number of MiB, not '%s'",
                                   v);
            c.reserve_set = true;
        } else if ((r = opt_value(argc, argv, &i, "--uid", &v, err, errlen)) != 0) {
            if (r < 0 || (r = parse_id(v, "--uid", &uid, err, errlen)) < 0)
                return r;
            uid_set = true;
        } else if ((r = opt_value(argc, argv, &i, "--gid", &v, err, errlen)) != 0) {
            if (r < 0 || (r = parse_id(v, "--gid", &gid, err, errlen)) < 0)
                return r;
            gid_set = true;
        } else if ((r = opt_value(argc, argv, &i, "--keep", &v, err, errlen)) != 0) {
            if (r < 0)
                return r;
            if (!disk_name_valid(v))
                return usage_error(err, errlen, "--keep: invalid disk name '%s'", v);
            if (c.nkeep >= DISK_CLI_KEEP_MAX)
                return usage_error(err, errlen, "--keep given more than %d times",
                                   DISK_CLI_KEEP_MAX);
            c.keep[c.nkeep++] = v;
        } else if (streq(a, "--no-direct-io")) {
            c.no_direct_io = true;
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error(err, errlen, "unknown option '%s'", a);
        } else if (c.cmd == DISK_CMD_NONE) {
            for (size_t k = 0; k < ARRAY_SIZE(commands); k++)
                if (streq(a, commands[k].word))
                    c.cmd = commands[k].cmd;
            if (c.cmd == DISK_CMD_NONE)
                return usage_error(err, errlen, "unknown command '%s'", a);
        } else {
            if (npos >= (int)ARRAY_SIZE(pos))
                return usage_error(err, errlen, "too many arguments ('%s')", a);
            pos[npos++] = a;
        }
    }

    if (c.cmd == DISK_CMD_NONE)
        return usage_error(err, errlen, "no command given");
    int want = 0;
    const char *word = "";
    for (size_t k = 0; k < ARRAY_SIZE(commands); k++)
        if (commands[k].cmd == c.cmd) {
            want = commands[k].npos;
            word = commands[k].word;
        }
    if (npos != want)
        return usage_error(err, errlen, "%s takes %d argument%s, got %d", word, want,
                           want == 1 ? "" : "s", npos);
    if (!c.images_dir || !c.mounts_dir)
        return usage_error(err, errlen, "--images and --mounts are required");
    if (want >= 1) {
        if (!disk_name_valid(pos[0]))
            return usage_error(
                err, errlen,
                "invalid disk name '%s' (1-%d of A-Z a-z 0-9 _ -, not starting with _ or -)",
                pos[0], DISK_NAME_MAX);
        c.name = pos[0];
    }
    if (c.cmd == DISK_CMD_CREATE) {
        uint64_t bytes;
        if (disk_parse_u64(pos[1], UINT64_MAX, &c.size_mb) < 0 ||
            disk_size_bytes(c.size_mb, &bytes) < 0)
            return usage_error(err, errlen, "SIZE_MB must be a number from %d to %u, not '%s'",
                               DISK_SIZE_MIN_MB, DISK_SIZE_MAX_MB, pos[1]);
    }
    if ((uid_set || gid_set) && c.cmd != DISK_CMD_CREATE && c.cmd != DISK_CMD_ATTACH)
        return usage_error(err, errlen, "--uid and --gid apply to create and attach only");
    if (uid_set != gid_set)
        return usage_error(err, errlen, "--uid and --gid go together");
    if (c.nkeep > 0 && c.cmd != DISK_CMD_GC)
        return usage_error(err, errlen, "--keep applies to gc only");
    c.owner_set = uid_set;
    c.uid = (uid_t)uid;
    c.gid = (gid_t)gid;
    *ret = c;
    return 0;
}

int disk_cli_exit_code(int r) {
    if (r >= 0)
        return DISK_EXIT_OK;
    switch (-r) {
    case ENOSPC:
        return DISK_EXIT_NOSPC;
    case ENOENT:
        return DISK_EXIT_NOENT;
    case EEXIST:
    case EALREADY:
    case EBUSY:
        return DISK_EXIT_BUSY;
    case EMEDIUMTYPE:
        return DISK_EXIT_REFUSED;
    case EINVAL:
        return DISK_EXIT_USAGE;
    default:
        return DISK_EXIT_FAIL;
    }
}
