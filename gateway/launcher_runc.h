/* The sandboxed launcher: each worker is an OCI bundle (worker-image/bundle.h) run by runc
 * with a --root of our own, so `runc list` shows our containers and nobody else's. start()
 * writes the bundle, runs `runc create` (the init is then stopped before exec, so its pidfd
 * can be taken with no pid-reuse window), then `runc start`. The container's PID 1 is
 * kbox-kernel-host, installed in the rootfs by build-rootfs.sh --init; interrupts and kills
 * go to it by pidfd, and the gateway watches that pidfd for the worker's death.
 *
 * Threading: start, cleanup and launcher_runc_sweep block (they run runc) and belong on the
 * loop's work pool; interrupt and kill are a single signal each. Several starts may run
 * concurrently on different workers. runc children are waited for by pid: the gateway must
 * not reap with waitpid(-1). */
#pragma once

#include "launcher.h"

#include <stdint.h>

typedef struct {
    uint64_t bundle_us; /* checks, run dir ownership, config.json built and written */
    uint64_t create_us; /* runc create: namespaces, mounts, cgroups; the init waits to exec */
    uint64_t start_us;  /* pidfd_open + runc start: the init execs and starts the kernel */
} launcher_runc_timing_t;

/* Called at the end of each successful start, on the thread that ran it. */
typedef void (*launcher_runc_timing_fn)(const char *container_id, const launcher_runc_timing_t *t,
                                        void *arg);

typedef struct {
    const char *runc;            /* runc binary; NULL: /usr/sbin/runc */
    const char *runc_root;       /* runc --root, absolute; ours alone (e.g. <state>/runc) */
    const char *bundle_root;     /* per-worker bundle dirs, absolute (e.g. <state>/bundles) */
    const char *rootfs;          /* built by worker-image/build-rootfs.sh (e.g. <state>/rootfs) */
    const char *seccomp_profile; /* worker-image/seccomp.json */
    const char *init_path;       /* kbox-kernel-host inside the rootfs; NULL: WIMG_INIT_PATH */
    const char *cgroup_parent;   /* containers go to /<parent>/<worker_id>; NULL: "kbox" */
    const char *cgroup_root;     /* where cgroup hierarchies are mounted; NULL: /sys/fs/cgroup */
    uint32_t uid_base;           /* spec->uid must be in [uid_base, uid_base + uid_count) ... */
    uint32_t uid_count;          /* ... the range build-rootfs.sh wrote passwd entries for */
    uint64_t tmp_mb, shm_mb;     /* /tmp and /dev/shm sizes; 0: the bundle's defaults */
    uint64_t nofile;             /* RLIMIT_NOFILE; 0: the bundle's default */
    unsigned runc_timeout_ms;    /* bound on each runc invocation; 0: 30000 */
    launcher_runc_timing_fn timing_fn; /* optional */
    void *timing_arg;
} launcher_runc_config_t;

/* Checks the configuration (the rootfs holds an executable init, the seccomp profile loads),
 * creates runc_root and bundle_root (0700) and returns a launcher whose kernel_run_dir is
 * WIMG_RUN_DIR. NULL on failure with errno set. The config's strings are copied. Free with
 * launcher_destroy() (or self->destroy(self)). */
launcher_t *launcher_runc_new(const launcher_runc_config_t *cfg);

/* Crash safety, for gateway start-up: removes every container under our runc root, every
 * bundle dir and every cgroup under our cgroup parent whose id is not in keep (a
 * NULL-terminated list, or NULL for none), killing what still runs in them; removes the
 * cgroup parent itself when it is left empty. Blocking. Returns 0 and, if ret_removed, the
 * number of containers removed; -EINVAL if l is not a runc launcher; otherwise the first
 * error met (it still tries everything else). */
int launcher_runc_sweep(launcher_t *l, const char *const *keep, unsigned *ret_removed);
