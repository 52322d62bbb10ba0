/* The OCI bundle generator: turns a worker's sandbox plan (a spec struct) into the runc
 * config.json that enforces it. wimg_bundle_build() is a pure function of its inputs (no
 * file system, no clock, no environment), so every property the sandbox promises can be
 * checked in a unit test by reading the JSON. The seccomp allowlist is data (seccomp.json in
 * this folder), loaded once by wimg_seccomp_load() and passed in by reference.
 *
 * What the generated config guarantees (see ../shared/brief/security.md):
 *   - the process runs as spec->uid:spec->uid with no supplementary groups, no capabilities
 *     in any of the five sets, noNewPrivileges, RLIMIT_CORE 0 and a bounded RLIMIT_NOFILE;
 *   - read-only root (the shared rootfs), its own pid, mount, ipc, uts, cgroup namespaces and
 *     either the prepared network namespace at spec->netns_path or a fresh empty one;
 *   - /tmp and /dev/shm size-capped tmpfs, /sandbox the worker's disk, /run/kbox its run dir;
 *   - masked and read-only /proc and /sys paths;
 *   - memory limit == memory+swap limit (no swap), CPU quota, pids limit, all devices denied
 *     except runc's defaults (null zero full random urandom tty ptmx). */
#pragma once

#include <jansson.h>
#include <stdint.h>

/* Where things appear inside the container. */
#define WIMG_SANDBOX_DIR "/sandbox"
#define WIMG_RUN_DIR     "/run/kbox"
#define WIMG_INIT_PATH   "/kbox/kernel-host"
#define WIMG_HOSTNAME    "kbox"
#define WIMG_CPU_PERIOD  100000u /* µs; the CFS default */

typedef struct {
    const char *worker_id;          /* [A-Za-z0-9_-]{1,64}; used in cgroupsPath */
    const char *rootfs;             /* absolute host path of the (shared, read-only) rootfs */
    const char *init_path;          /* the init inside the container; NULL: WIMG_INIT_PATH */
    const char *const *kernel_argv; /* NULL-terminated argv the init starts, paths as seen inside */
    const char *run_dir;            /* absolute host path bound at WIMG_RUN_DIR (read-write) */
    const char *disk_mount;    /* absolute host path bound at WIMG_SANDBOX_DIR, or NULL: a tmpfs */
    const char *netns_path;    /* network namespace to join, or NULL: a new one (only lo) */
    const char *cgroup_parent; /* cgroupsPath is "/<cgroup_parent>/<worker_id>"; NULL: "kbox" */
    const char *hostname;      /* NULL: WIMG_HOSTNAME */
    const json_t *seccomp;     /* borrowed linux.seccomp object (from wimg_seccomp_load) */
    uint32_t uid;              /* the worker's own uid, also its gid; never 0 */
    double cpu;                /* CPU quota in cores, > 0 */
    uint64_t ram_mb;           /* memory limit, no swap, > 0 */
    uint64_t pids_max;         /* > 0 */
    uint64_t nofile;           /* RLIMIT_NOFILE soft = hard; 0: 1024 */
    uint64_t tmp_mb;           /* /tmp size; 0: 256 */
    uint64_t shm_mb;           /* /dev/shm size; 0: 64 */
    uint64_t sandbox_mb;       /* size of the /sandbox tmpfs when disk_mount is NULL; 0: 256 */
} wimg_bundle_spec_t;

/* Builds config.json for spec. Returns 0 and a new reference in *ret_config, -EINVAL if the
 * spec is incomplete or unsafe (relative paths, uid 0, zero limits, bad worker id, missing
 * seccomp), -ENOMEM. */
int wimg_bundle_build(const wimg_bundle_spec_t *spec, json_t **ret_config);

/* Loads a seccomp profile in OCI linux.seccomp form, drops the "comment" keys (documentation
 * only) and checks that it is an allowlist (a default action other than SCMP_ACT_ALLOW).
 * Returns 0 and a new reference in *ret_seccomp, -errno on I/O errors, -EINVAL if malformed. */
int wimg_seccomp_load(const char *path, json_t **ret_seccomp);

/* Writes config to <bundle_dir>/config.json atomically, mode 0600. 0 or -errno. */
int wimg_bundle_write(const char *bundle_dir, const json_t *config);
