/* What a sandboxed worker needs besides its container: a uid of its own, a virtual disk, and
 * a firewalled network namespace. Prepared on the work pool before the launcher runs and
 * released after the container is gone.
 *
 * Ownership: a pre-warmed worker makes a fresh disk and takes a fresh uid slot; when a
 * session adopts the worker it adopts both, and they follow the session to any replacement
 * worker (files survive a crash; the uid stays the same so no chown is needed). The worker's
 * network namespace is always its own. */
#include "gw.h"
#include "log.h"
#include "util.h"

#include "diskmgr.h"
#include "firewall.h"
#include "launcher_runc.h"
#include "hostclaims.h"

#include <arpa/inet.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#ifndef KBOX_SOURCE_DIR
#define KBOX_SOURCE_DIR "."
#endif

/* ---- uid slots ------------------------------------------------------------------------- */

int gw_uid_slot_alloc(gw_t *gw, uint32_t *ret) {
    for (uint32_t i = 0; i < gw->uid_count; i++) {
        uint32_t s = (gw->uid_next + i) % gw->uid_count;
        if (!(gw->uid_used[s / 64] & (1ull << (s % 64)))) {
            gw->uid_used[s / 64] |= 1ull << (s % 64);
            gw->uid_next = s + 1;
            *ret = s;
            return 0;
        }
    }
    return -EAGAIN;
}

int gw_uid_slot_take(gw_t *gw, uint32_t slot) {
    if (slot >= gw->uid_count)
        return -ERANGE;
    if (gw->uid_used[slot / 64] & (1ull << (slot % 64)))
        return -EEXIST;
    gw->uid_used[slot / 64] |= 1ull << (slot % 64);
    return 0;
}

void gw_uid_slot_free(gw_t *gw, uint32_t slot) {
    if (slot < gw->uid_count)
        gw->uid_used[slot / 64] &= ~(1ull << (slot % 64));
}

/* ---- set-up at gateway start ----------------------------------------------------------- */

static int run_script(char *const argv[]) {
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

static int self_dir(char *buf, size_t len) {
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = '\0';
    return 0;
}

static bool is_mountpoint(const char *path) {
    struct stat a, b;
    char parent[PATH_MAX];
    if (stat(path, &a) < 0 || xsnprintf(parent, sizeof parent, "%s/..", path) < 0 ||
        stat(parent, &b) < 0)
        return false;
    return a.st_dev != b.st_dev;
}

typedef struct {
    const fw_pool_t *pool;
    const char *own;
} route_filter_t;

/* Only routes that take addresses of our blocks are kept (a host may carry a million). */
static bool in_our_blocks(const fw_route_t *route, void *ctx) {
    const route_filter_t *f = ctx;
    gw_claim_t taken;
    return gw_routes_taken(route, 1, f->pool, f->own, &taken) == 1;
}

/* TCP mode: the link addresses of our uid_count workers, claimed host-wide inside the
 * configured blocks: a second gateway given the same blocks takes the next free span, and
 * addresses the host's own networks use (a LAN on the same block, a crashed gateway's veths)
 * are avoided; a gateway that finds no room refuses to start, naming what is in its way. */
static int claim_links(gw_t *gw) {
    char keep[PATH_MAX], own[FW_IFNAME_MAX];
    int r = xsnprintf(keep, sizeof keep, "%s/worker-links", gw->cfg.state_dir);
    if (r < 0 || (r = xsnprintf(own, sizeof own, "%s%s", FW_HOST_IF_PREFIX, gw->id_prefix + 1)) < 0)
        return r;
    _cleanup_free_ fw_route_t *routes = NULL;
    size_t n = 0;
    route_filter_t f = {.pool = &gw->fw.pool, .own = own};
    if ((r = fw_host_routes(in_our_blocks, &f, &routes, &n)) < 0) {
        /* Best effort: the registry still keeps running gateways apart. */
        log_warn("sandbox",
                 "cannot read the host's routes; worker links checked against other "
                 "gateways only",
                 "{s:s}", "error", strerror(-r));
        n = 0; /* routes stays NULL: nothing is returned on failure */
    }
    _cleanup_free_ gw_claim_t *taken = calloc(n ? n : 1, sizeof *taken);
    if (!taken)
        return -ENOMEM;
    size_t n_taken = gw_routes_taken(routes, n, &gw->fw.pool, own, taken);
    gw_claim_t other;
    r = gw_link_claim(GW_LINK_REGISTRY, keep, &gw->fw.pool, gw->cfg.uid_count, taken, n_taken,
                      gw->link_lock_fds, &other);
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    if (r == -EBUSY) {
        log_error("sandbox",
                  other.pid ? "no free worker link addresses: another running gateway holds them"
                            : "no free worker link addresses: the host's own routes take them",
                  "{s:s,s:s,s:I,s:s,s:s,s:i,s:s}", "worker_net4", gw->cfg.worker_net4,
                  "worker_net6", gw->cfg.worker_net6, "links", (json_int_t)gw->cfg.uid_count,
                  "other_first", gw_claim_addr_str(other.first, a, sizeof a), "other_last",
                  gw_claim_addr_str(other.last, b, sizeof b), "other_pid", (int)other.pid,
                  "other_dev", other.dev);
        return r;
    }
    if (r < 0)
        return r;
    struct in_addr v4 = gw->fw.pool.base4;
    log_info("sandbox", "worker links", "{s:s,s:s,s:I,s:I}", "first4",
             inet_ntop(AF_INET, &v4, a, sizeof a) ? a : "?", "first6",
             gw->fw.pool.has_v6 && inet_ntop(AF_INET6, &gw->fw.pool.base6, b, sizeof b) ? b : "",
             "links", (json_int_t)gw->cfg.uid_count, "routes_avoided", (json_int_t)n_taken);
    return 0;
}

int gw_sandbox_init(gw_t *gw) {
    const gw_config_t *c = &gw->cfg;
    int r;
    char path[PATH_MAX], images[PATH_MAX], mounts[PATH_MAX];
    /* Our workers' uids, claimed host-wide before anything is built with them. */
    char keep[PATH_MAX];
    if ((r = xsnprintf(keep, sizeof keep, "%s/uid-base", c->state_dir)) < 0)
        return r;
    uint32_t base = 0;
    gw_claim_t other;
    r = gw_uid_claim(GW_UID_REGISTRY, keep, c->uid_base, c->uid_count, &base, &gw->uid_lock_fd,
                     &other);
    if (r == -EBUSY) {
        log_error("sandbox",
                  other.last ? "worker uids overlap those of another running gateway"
                             : "no free range of worker uids",
                  "{s:I,s:I,s:I,s:I,s:i}", "uid_base", (json_int_t)base, "uid_count",
                  (json_int_t)c->uid_count, "other_uid_base", (json_int_t)other.first,
                  "other_uid_count", (json_int_t)(other.last - other.first + 1), "other_pid",
                  (int)other.pid);
        return r;
    }
    if (r < 0)
        return r;
    gw->cfg.uid_base = base; /* c is &gw->cfg: everything below sees it */
    log_info("sandbox", "worker uids", "{s:I,s:I}", "uid_base", (json_int_t)base, "uid_count",
             (json_int_t)c->uid_count);
    gw->uid_count = c->uid_count;
    gw->uid_used = calloc((gw->uid_count + 63) / 64, sizeof *gw->uid_used);
    if (!gw->uid_used)
        return -ENOMEM;

    /* Network namespaces; in TCP mode our links' addresses, claimed host-wide like the uids. */
    fw_config_init(&gw->fw);
    if (streq(c->worker_transport, "tcp")) {
        gw->fw.mode = FW_MODE_TCP;
        if ((r = gw_config_worker_pool(c, &gw->fw.pool)) < 0)
            return r; /* validated with the options already */
        if ((r = claim_links(gw)) < 0)
            return r;
    }

    /* Run dirs live on a tmpfs of their own: a bind of one shows "/w..." in the worker's
     * mountinfo, never the gateway's state path. */
    if (!is_mountpoint(gw->run_root) &&
        mount("kbox-run", gw->run_root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=0711,size=64m") < 0)
        return -errno;

    /* The rootfs: built (or found up to date) by the worker-image script. */
    char bindir[PATH_MAX], init[PATH_MAX], script[PATH_MAX], uidb[16], uidc[16];
    if ((r = self_dir(bindir, sizeof bindir)) < 0)
        return r;
    if ((r = xsnprintf(init, sizeof init, "%s/../kernel-host/kbox-kernel-host", bindir)) < 0 ||
        (r = xsnprintf(script, sizeof script, "%s/worker-image/build-rootfs.sh", KBOX_SOURCE_DIR)) <
            0 ||
        (r = xsnprintf(gw->rootfs, sizeof gw->rootfs, "%s/rootfs", c->state_dir)) < 0)
        return r;
    snprintf(uidb, sizeof uidb, "%u", c->uid_base);
    snprintf(uidc, sizeof uidc, "%u", c->uid_count);
    char *argv[] = {"/bin/sh", script,        "--init", init,       "--uid-base",
                    uidb,      "--uid-count", uidc,     gw->rootfs, NULL};
    if ((r = run_script(argv)) < 0) {
        log_error("sandbox", "building the worker rootfs failed", "{s:s}", "script", script);
        return r;
    }

    /* Disks. */
    if ((r = xsnprintf(images, sizeof images, "%s/disks", c->state_dir)) < 0 ||
        (r = xsnprintf(mounts, sizeof mounts, "%s/mnt", c->state_dir)) < 0)
        return r;
    disk_mgr_config_t dc;
    disk_mgr_config_init(&dc);
    dc.images_dir = images;
    dc.mounts_dir = mounts;
    dc.reserve_mb = c->disk_reserve_mb;
    if ((r = disk_mgr_new(&dc, &gw->disks)) < 0)
        return r;

    /* The launcher. */
    char runc_root[PATH_MAX], bundles[PATH_MAX], seccomp[PATH_MAX];
    if ((r = xsnprintf(runc_root, sizeof runc_root, "%s/runc", c->state_dir)) < 0 ||
        (r = xsnprintf(bundles, sizeof bundles, "%s/bundles", c->state_dir)) < 0 ||
        (r = xsnprintf(seccomp, sizeof seccomp, "%s/worker-image/seccomp.json", KBOX_SOURCE_DIR)) <
            0)
        return r;
    (void)path;
    /* Our own cgroup parent, like our own runc root: a sweep can never touch the containers
     * of another gateway on the same host. */
    snprintf(gw->cgroup_parent, sizeof gw->cgroup_parent, "kbox-%s", gw->id_prefix);
    launcher_runc_config_t lc = {
        .cgroup_parent = gw->cgroup_parent,
        .runc_root = runc_root,
        .bundle_root = bundles,
        .rootfs = gw->rootfs,
        .seccomp_profile = seccomp,
        .uid_base = c->uid_base,
        .uid_count = c->uid_count,
    };
    gw->launcher = launcher_runc_new(&lc);
    if (!gw->launcher)
        return -errno ? -errno : -EINVAL;
    gw->owns_launcher = true;
    return 0;
}

/* Removes what a previous run left: containers, namespaces, disks. Runs before any worker of
 * ours exists, so nothing is kept. */
int gw_sandbox_sweep(gw_t *gw, zlistx_t *keep_workers, zlistx_t *keep_disks) {
    size_t nw = zlistx_size(keep_workers), nd = zlistx_size(keep_disks);
    const char **kw = calloc(nw + 1, sizeof *kw), **kd = calloc(nd + 1, sizeof *kd);
    if (!kw || !kd) {
        free(kw);
        free(kd);
        return -ENOMEM;
    }
    size_t i = 0;
    for (const char *k = zlistx_first(keep_workers); k; k = zlistx_next(keep_workers))
        kw[i++] = k;
    i = 0;
    for (const char *k = zlistx_first(keep_disks); k; k = zlistx_next(keep_disks))
        kd[i++] = k;
    unsigned containers = 0;
    int r = launcher_runc_sweep(gw->launcher, kw, &containers);
    if (r < 0)
        log_warn("sandbox", "container sweep incomplete", "{s:s}", "error", strerror(-r));
    unsigned netns = 0;
    r = fw_sweep(&gw->fw, gw->id_prefix, kw, nw, &netns);
    if (r < 0)
        log_warn("sandbox", "namespace sweep incomplete", "{s:s}", "error", strerror(-r));
    disk_gc_stats_t ds = {0};
    r = disk_mgr_gc(gw->disks, kd, nd, &ds);
    free(kw);
    free(kd);
    if (r < 0)
        log_warn("sandbox", "disk sweep incomplete", "{s:s}", "error", strerror(-r));
    if (containers || netns || ds.mounts || ds.loops || ds.images)
        log_info("sandbox", "removed leftovers of a previous run", "{s:i,s:i,s:i,s:i,s:i}",
                 "containers", (int)containers, "netns", (int)netns, "mounts", (int)ds.mounts,
                 "loops", (int)ds.loops, "images", (int)ds.images);
    return 0;
}

void gw_sandbox_fini(gw_t *gw) {
    if (gw->disks && gw->launcher) {
        /* Whatever the orderly shutdown could not stop (deadline hit) goes now. */
        launcher_runc_sweep(gw->launcher, NULL, NULL);
        fw_sweep(&gw->fw, gw->id_prefix, NULL, 0, NULL);
        disk_mgr_gc(gw->disks, NULL, 0, NULL);
    }
    if (gw->rootfs[0]) {
        char script[PATH_MAX];
        if (xsnprintf(script, sizeof script, "%s/worker-image/build-rootfs.sh", KBOX_SOURCE_DIR) >=
            0) {
            char *argv[] = {"/bin/sh", script, "--remove", gw->rootfs, NULL};
            run_script(argv);
        }
    }
    disk_mgr_destroy(&gw->disks);
    free(gw->uid_used);
    gw->uid_used = NULL;
    if (gw->run_root[0] && is_mountpoint(gw->run_root))
        umount2(gw->run_root, MNT_DETACH);
}

/* ---- per worker (work pool) ------------------------------------------------------------ */

/* The run dir holds the connection file and five sockets, and its kernel (as the sandbox
 * uid) must be able to create those: writable, so bounded on its own. On the tmpfs all run
 * dirs share, one kernel could fill it and no worker could start for anyone, or build a tree
 * too deep to remove. A fixed size: nothing else belongs there. */
#define RUN_DIR_TMPFS_OPTS "size=256k,nr_inodes=32,mode=0700"

int gw_sandbox_run_dir_make(gw_t *gw, const char *path) {
    if (mkdir(path, 0700) < 0)
        return -errno;
    if (gw->disks && mount("kbox-wrun", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           RUN_DIR_TMPFS_OPTS) < 0) {
        int r = -errno;
        rmdir(path);
        return r;
    }
    return 0;
}

void gw_sandbox_run_dir_remove(const char *path) {
    /* Detached: a reference left somewhere cannot keep the directory from going. Whatever the
     * kernel wrote goes with the tmpfs, however deep; rm_rf never crosses a mount point. */
    while (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0)
        ;
    rm_rf(path);
}

int gw_sandbox_prepare(gw_worker_t *w) {
    gw_t *gw = w->gw;
    if (!gw->disks)
        return 0; /* unsandboxed launcher */
    uid_t uid = gw->cfg.uid_base + w->uid_slot;
    disk_info_t info;
    int r;
    uint64_t t0 = now_mono_us();
    if (w->disk_attach)
        r = disk_mgr_attach(gw->disks, w->disk_name, uid, uid, &info);
    else
        r = disk_mgr_create(gw->disks, w->disk_name, gw->cfg.worker_disk_mb, uid, uid, &info);
    if (r < 0)
        return r;
    w->disk_ready = true;
    snprintf(w->disk_mount, sizeof w->disk_mount, "%s", info.mount_path);
    uint64_t t1 = now_mono_us();
    /* The TCP link's addresses follow the uid slot, which no two live workers share (a
     * replacement takes its session's slot only after its predecessor's namespace is gone). */
    r = fw_netns_create(&gw->fw, w->id, w->uid_slot, &w->netns);
    if (r < 0)
        return r;
    uint64_t t2 = now_mono_us();
    snprintf(w->netns_path, sizeof w->netns_path, "%s", fw_netns_path(w->netns));
    w->spec.disk_mount = w->disk_mount;
    w->spec.netns_path = w->netns_path;
    w->spec.uid = uid;
    w->t_disk_us = t1 - t0;
    w->t_netns_us = t2 - t1;
    /* The kernel (the sandbox uid) creates its ipc sockets in the run dir. */
    if (chown(w->run_dir, uid, uid) < 0)
        return -errno;
    return 0;
}

void gw_sandbox_release(gw_worker_t *w) {
    gw_t *gw = w->gw;
    if (w->netns) {
        int r = fw_netns_remove(w->netns);
        if (r < 0)
            log_warn("sandbox", "namespace removal failed", "{s:s,s:s}", "worker", w->id, "error",
                     strerror(-r));
        fw_netns_destroy(&w->netns);
    } else if (w->netns_adopted) {
        fw_netns_delete(&gw->fw, w->id); /* reattached after a gateway restart: by name */
    }
    if (gw->disks && w->disk_name[0] && (w->disk_ready || !w->disk_keep)) {
        int r = w->disk_keep ? disk_mgr_detach(gw->disks, w->disk_name)
                             : disk_mgr_remove(gw->disks, w->disk_name);
        if (r < 0)
            log_warn("sandbox", "disk teardown failed", "{s:s,s:s,s:s}", "worker", w->id, "disk",
                     w->disk_name, "error", strerror(-r));
    }
}

/* A session's disk when it has no worker to take it along (release after a crash). */
static void remove_disk_work(void *arg) {
    char **p = arg;
    gw_t *gw = (gw_t *)p[0];
    disk_mgr_remove(gw->disks, p[1]);
}

static void remove_disk_done(loop_t *loop, void *arg) {
    char **p = arg;
    free(p[1]);
    free(p);
}

void gw_sandbox_detach_disk(gw_t *gw, const char *name) {
    if (!gw->disks || !name || !name[0])
        return;
    int r = disk_mgr_detach(gw->disks, name);
    if (r != 0 && r != -ENOENT)
        log_warn("sandbox", "disk detach incomplete", "{s:s,s:s}", "disk", name, "error",
                 r > 0 ? "still in use (lazy unmount)" : strerror(-r));
}

void gw_sandbox_remove_disk(gw_t *gw, const char *name) {
    if (!gw->disks || !name || !name[0])
        return;
    char **p = calloc(2, sizeof *p);
    if (!p)
        return;
    p[0] = (char *)gw;
    p[1] = strdup(name);
    if (!p[1] || loop_work_submit(gw->loop, remove_disk_work, remove_disk_done, p) < 0) {
        free(p[1]);
        free(p);
    }
}
