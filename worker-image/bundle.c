/* The OCI config.json generator for a worker (see bundle.h for what it guarantees). Every
 * choice that is a security property is made here, in one pure function, so the unit test can
 * assert it; the launcher only supplies paths and sizes. Inputs are validated defensively:
 * they come from the gateway's own configuration, but a wrong one here (uid 0, a relative
 * bind source, a zero limit) would silently weaken the sandbox, so it is refused instead. */
#include "bundle.h"

#include "util.h"

#include <inttypes.h>
#include <math.h>

#define MIB              (1024ull * 1024ull)
#define MAX_MB           (1ull << 30) /* 1 PiB: anything above is a unit mistake */
#define DEFAULT_NOFILE   1024u
#define DEFAULT_TMP_MB   256u
#define DEFAULT_SHM_MB   64u
#define DEFAULT_SBOX_MB  256u
#define DEFAULT_CGPARENT "kbox"
#define CPU_QUOTA_MIN    1000 /* µs; the kernel refuses smaller CFS quotas */

static bool id_char_ok(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

static bool worker_id_ok(const char *id) {
    if (!id || !*id || strlen(id) > 64)
        return false;
    for (const char *p = id; *p; p++)
        if (!id_char_ok(*p))
            return false;
    return true;
}

static bool hostname_ok(const char *h) {
    if (!h || !*h || strlen(h) > 63 || h[0] == '-')
        return false;
    for (const char *p = h; *p; p++)
        if (!id_char_ok(*p) || *p == '_')
            return false;
    return true;
}

/* Relative cgroup path components of [A-Za-z0-9_-], separated by single slashes. */
static bool cgroup_parent_ok(const char *s) {
    if (!s || !*s || strlen(s) > 128 || s[0] == '/')
        return false;
    for (const char *p = s; *p; p++) {
        if (*p == '/') {
            if (p[1] == '/' || p[1] == '\0')
                return false;
            continue;
        }
        if (!id_char_ok(*p))
            return false;
    }
    return true;
}

/* Absolute, no "." or ".." components, no commas (runc splits some fields on them). */
static bool abs_path_ok(const char *p) {
    if (!p || p[0] != '/' || strlen(p) >= 4096 || strchr(p, ','))
        return false;
    for (const char *c = p; *c;) {
        while (*c == '/')
            c++;
        const char *end = strchrnul(c, '/');
        size_t n = (size_t)(end - c);
        if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        c = end;
    }
    return true;
}

static bool mb_ok(uint64_t mb) {
    return mb > 0 && mb <= MAX_MB;
}

static int spec_check(const wimg_bundle_spec_t *s) {
    if (!s || !worker_id_ok(s->worker_id) || !abs_path_ok(s->rootfs) || !abs_path_ok(s->run_dir))
        return -EINVAL;
    if (s->init_path && !abs_path_ok(s->init_path))
        return -EINVAL;
    if (s->disk_mount && !abs_path_ok(s->disk_mount))
        return -EINVAL;
    if (s->netns_path && !abs_path_ok(s->netns_path))
        return -EINVAL;
    if (s->cgroup_parent && !cgroup_parent_ok(s->cgroup_parent))
        return -EINVAL;
    if (s->hostname && !hostname_ok(s->hostname))
        return -EINVAL;
    if (!s->kernel_argv || !s->kernel_argv[0] || s->kernel_argv[0][0] != '/')
        return -EINVAL;
    if (!json_is_object(s->seccomp))
        return -EINVAL;
    /* uid 0 would be root in the host's user namespace; small uids are host users. */
    if (s->uid < 1000 || s->uid > INT32_MAX)
        return -EINVAL;
    if (!(s->cpu > 0.0) || s->cpu > 1024.0 || !mb_ok(s->ram_mb) || s->pids_max == 0 ||
        s->pids_max > 4194304)
        return -EINVAL;
    if (s->nofile > 1048576 || s->tmp_mb > MAX_MB || s->shm_mb > MAX_MB || s->sandbox_mb > MAX_MB)
        return -EINVAL;
    return 0;
}

static json_t *string_array(const char *const *v) {
    json_t *a = json_array();
    if (!a)
        return NULL;
    for (; v && *v; v++)
        if (json_array_append_new(a, json_string(*v)) < 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static json_t *process_new(const wimg_bundle_spec_t *s) {
    json_t *args = json_pack("[ss]", s->init_path ? s->init_path : WIMG_INIT_PATH, "--");
    if (!args)
        return NULL;
    for (const char *const *a = s->kernel_argv; *a; a++)
        if (json_array_append_new(args, json_string(*a)) < 0) {
            json_decref(args);
            return NULL;
        }

    /* BLAS/OpenMP pools sized to the quota, not to the host's cores: more threads than the
     * quota only adds throttling. */
    char threads[32];
    snprintf(threads, sizeof threads, "%u", (unsigned)fmax(1.0, ceil(s->cpu)));
    char omp[64], blas[64];
    snprintf(omp, sizeof omp, "OMP_NUM_THREADS=%s", threads);
    snprintf(blas, sizeof blas, "OPENBLAS_NUM_THREADS=%s", threads);
    /* HOME is the user's disk. MPLCONFIGDIR and IPYTHONDIR live on /tmp because the root is
     * read-only and the kernel's own caches must keep working when the user fills /sandbox. */
    const char *env[] = {
        "PATH=/usr/bin:/bin",
        ("HOME=" WIMG_SANDBOX_DIR), /* parenthesized: concatenated on purpose */
        "USER=sandbox",
        "LOGNAME=sandbox",
        "SHELL=/bin/sh",
        "LANG=C.UTF-8",
        "TMPDIR=/tmp",
        "MPLBACKEND=module://matplotlib_inline.backend_inline",
        "MPLCONFIGDIR=/tmp/matplotlib",
        "IPYTHONDIR=/tmp/ipython",
        "PYTHONDONTWRITEBYTECODE=1",
        omp,
        blas,
        NULL,
    };

    uint64_t nofile = s->nofile ? s->nofile : DEFAULT_NOFILE;
    // clang-format off: one key (and its value) per line reads as the JSON it builds.
    return json_pack("{s:b, s:{s:I, s:I, s:[]}, s:o, s:o, s:s,"
                     " s:{s:[], s:[], s:[], s:[], s:[]},"
                     " s:[{s:s, s:I, s:I}, {s:s, s:I, s:I}],"
                     " s:b, s:i}",
                     "terminal", 0, "user", "uid", (json_int_t)s->uid, "gid", (json_int_t)s->uid,
                     "additionalGids", "args", args, "env", string_array(env), "cwd",
                     WIMG_SANDBOX_DIR, "capabilities", "bounding", "effective", "inheritable",
                     "permitted", "ambient", "rlimits", "type", "RLIMIT_CORE", "hard",
                     (json_int_t)0, "soft", (json_int_t)0, "type", "RLIMIT_NOFILE", "hard",
                     (json_int_t)nofile, "soft", (json_int_t)nofile, "noNewPrivileges", 1,
                     /* The host's OOM killer takes a worker before the gateway. */
                     "oomScoreAdj", 1000);
    // clang-format on
}

static int mount_add(json_t *mounts, const char *dest, const char *type, const char *source,
                     const char *const *options) {
    json_t *m = json_pack("{s:s, s:s, s:s, s:o}", "destination", dest, "type", type, "source",
                          source, "options", string_array(options));
    if (!m)
        return -ENOMEM;
    return json_array_append_new(mounts, m) < 0 ? -ENOMEM : 0;
}

static json_t *mounts_new(const wimg_bundle_spec_t *s) {
    char tmp_size[32], shm_size[32], sbox_size[32], uid_opt[32], gid_opt[32];
    snprintf(tmp_size, sizeof tmp_size, "size=%" PRIu64 "m",
             s->tmp_mb ? s->tmp_mb : DEFAULT_TMP_MB);
    snprintf(shm_size, sizeof shm_size, "size=%" PRIu64 "m",
             s->shm_mb ? s->shm_mb : DEFAULT_SHM_MB);
    snprintf(sbox_size, sizeof sbox_size, "size=%" PRIu64 "m",
             s->sandbox_mb ? s->sandbox_mb : DEFAULT_SBOX_MB);
    snprintf(uid_opt, sizeof uid_opt, "uid=%" PRIu32, s->uid);
    snprintf(gid_opt, sizeof gid_opt, "gid=%" PRIu32, s->uid);

    json_t *mounts = json_array();
    if (!mounts)
        return NULL;
    int r = 0;
    r = r
            ?: mount_add(mounts, "/proc", "proc", "proc",
                         (const char *[]){"nosuid", "noexec", "nodev", NULL});
    /* runc fills this tmpfs with its default device nodes only. */
    r = r
            ?: mount_add(mounts, "/dev", "tmpfs", "tmpfs",
                         (const char *[]){"nosuid", "noexec", "strictatime", "mode=755", "size=64k",
                                          NULL});
    /* newinstance: the worker's ptys are its own, not the host's /dev/pts. */
    r = r
            ?: mount_add(mounts, "/dev/pts", "devpts", "devpts",
                         (const char *[]){"nosuid", "noexec", "newinstance", "ptmxmode=0666",
                                          "mode=0620", NULL});
    r = r
            ?: mount_add(
                   mounts, "/dev/shm", "tmpfs", "shm",
                   (const char *[]){"nosuid", "noexec", "nodev", "mode=1777", shm_size, NULL});
    r = r
            ?: mount_add(mounts, "/sys", "sysfs", "sysfs",
                         (const char *[]){"nosuid", "noexec", "nodev", "ro", NULL});
    r = r
            ?: mount_add(mounts, "/tmp", "tmpfs", "tmpfs",
                         (const char *[]){"nosuid", "nodev", "mode=1777", tmp_size, NULL});
    if (s->disk_mount)
        r = r
                ?: mount_add(mounts, WIMG_SANDBOX_DIR, "bind", s->disk_mount,
                             (const char *[]){"rbind", "nosuid", "nodev", NULL});
    else
        r = r
                ?: mount_add(mounts, WIMG_SANDBOX_DIR, "tmpfs", "tmpfs",
                             (const char *[]){"nosuid", "nodev", "mode=0700", sbox_size, uid_opt,
                                              gid_opt, NULL});
    /* The connection file and the ipc sockets; nothing there is meant to be executed. */
    r = r
            ?: mount_add(mounts, WIMG_RUN_DIR, "bind", s->run_dir,
                         (const char *[]){"rbind", "nosuid", "nodev", "noexec", NULL});
    if (r < 0) {
        json_decref(mounts);
        return NULL;
    }
    return mounts;
}

static json_t *linux_new(const wimg_bundle_spec_t *s) {
    json_t *ns = json_pack("[{s:s}, {s:s}, {s:s}, {s:s}, {s:s}]", "type", "pid", "type", "mount",
                           "type", "ipc", "type", "uts", "type", "cgroup");
    if (!ns)
        return NULL;
    json_t *net = s->netns_path ? json_pack("{s:s, s:s}", "type", "network", "path", s->netns_path)
                                : json_pack("{s:s}", "type", "network");
    if (json_array_append_new(ns, net) < 0) {
        json_decref(ns);
        return NULL;
    }

    /* Host information and attack surface in /proc and /sys: masked ones read as empty
     * (/dev/null or an empty read-only tmpfs), read-only ones cannot be written. Block devices
     * are the host's: a loop device's backing_file names every worker's disk image (and the
     * gateway's state dir), diskstats shows their activity. */
    static const char *const masked[] = {
        "/proc/acpi",
        "/proc/asound",
        "/proc/diskstats",
        "/proc/partitions",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/block",
        "/sys/devices/virtual/powercap",
        "/sys/kernel/debug",
        "/sys/kernel/security",
        NULL,
    };
    static const char *const readonly[] = {
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", NULL,
    };

    uint64_t mem = s->ram_mb * MIB;
    json_int_t quota = (json_int_t)llround(s->cpu * WIMG_CPU_PERIOD);
    if (quota < CPU_QUOTA_MIN)
        quota = CPU_QUOTA_MIN;
    char cgpath[256];
    snprintf(cgpath, sizeof cgpath, "/%s/%s",
             s->cgroup_parent ? s->cgroup_parent : DEFAULT_CGPARENT, s->worker_id);

    json_t *seccomp = json_deep_copy(s->seccomp);
    // clang-format off
    return json_pack("{s:o, s:o, s:o,"
                     " s:{s:[{s:b, s:s}], s:{s:I, s:I}, s:{s:I, s:I}, s:{s:I}},"
                     " s:s, s:o, s:s}",
                     "namespaces", ns,
                     "maskedPaths", string_array(masked),
                     "readonlyPaths", string_array(readonly),
                     "resources",
                         "devices", "allow", 0, "access", "rwm",
                         /* swap == limit: cgroup v1 memsw (and v2 after runc's conversion)
                          * then allows no swap at all. */
                         "memory", "limit", (json_int_t)mem, "swap", (json_int_t)mem,
                         "cpu", "quota", quota, "period", (json_int_t)WIMG_CPU_PERIOD,
                         "pids", "limit", (json_int_t)s->pids_max,
                     "cgroupsPath", cgpath,
                     "seccomp", seccomp,
                     /* Nothing mounted on the host later (other workers' disks) propagates
                      * into this worker's mount namespace. */
                     "rootfsPropagation", "rprivate");
    // clang-format on
}

int wimg_bundle_build(const wimg_bundle_spec_t *spec, json_t **ret_config) {
    int r = spec_check(spec);
    if (r < 0)
        return r;
    if (!ret_config)
        return -EINVAL;

    /* json_pack "o" steals references, including on failure, so the parts need no cleanup. */
    // clang-format off
    json_t *config = json_pack("{s:s, s:o, s:{s:s, s:b}, s:s, s:o, s:o}",
                               "ociVersion", "1.0.2",
                               "process", process_new(spec),
                               "root", "path", spec->rootfs, "readonly", 1,
                               "hostname", spec->hostname ? spec->hostname : WIMG_HOSTNAME,
                               "mounts", mounts_new(spec),
                               "linux", linux_new(spec));
    // clang-format on
    if (!config)
        return -ENOMEM;
    *ret_config = config;
    return 0;
}

/* Removes every "comment" member, recursively: they document seccomp.json for reviewers and
 * are not part of the OCI schema. */
static void comments_strip(json_t *j) {
    if (json_is_object(j)) {
        json_object_del(j, "comment");
        const char *key;
        json_t *v;
        json_object_foreach(j, key, v) comments_strip(v);
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) comments_strip(v);
    }
}

int wimg_seccomp_load(const char *path, json_t **ret_seccomp) {
    if (!path || !ret_seccomp)
        return -EINVAL;
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = read_file_bounded(path, 1024 * 1024, &text, &len);
    if (r < 0)
        return r;
    json_error_t err;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        return -EINVAL;
    comments_strip(j);
    const char *def = json_string_value(json_object_get(j, "defaultAction"));
    json_t *syscalls = json_object_get(j, "syscalls");
    if (!def || streq(def, "SCMP_ACT_ALLOW") || !json_is_array(syscalls) ||
        !json_is_array(json_object_get(j, "architectures"))) {
        json_decref(j);
        return -EINVAL;
    }
    *ret_seccomp = j;
    return 0;
}

int wimg_bundle_write(const char *bundle_dir, const json_t *config) {
    if (!bundle_dir || !config)
        return -EINVAL;
    char path[4096];
    int r = xsnprintf(path, sizeof path, "%s/config.json", bundle_dir);
    if (r < 0)
        return r;
    _cleanup_free_ char *text = json_dumps(config, JSON_COMPACT);
    if (!text)
        return -ENOMEM;
    return write_file_atomic(path, text, strlen(text), 0600);
}
