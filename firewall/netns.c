/* The system half of kbox_firewall: making, firewalling, pinning, checking and removing worker
 * network namespaces, and the crash sweep. The namespace is built on a helper thread that
 * unshare()s its own network namespace, so the caller's thread never changes namespace (a
 * gateway work thread that got stuck in a worker's namespace would be a disaster) and the
 * iptables children simply inherit the helper's. The helper opens its host-side netlink socket
 * before unsharing, which is how it reaches both sides. The order is fixed for fail-closed:
 * rules first, then the veth, then the pin; a namespace that is not pinned dies when the
 * helper exits, so nothing half-made is ever visible at the path runc joins. */
#include "firewall.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <net/if.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "rtnl.h"
#include "spawn.h"
#include "util.h"

#define SAVE_MAX        (256 * 1024) /* iptables-save output we accept */
#define SWEEP_LINKS_MAX 65536
#define HELPER_STACK    (256 * 1024)

struct fw_netns {
    char worker_id[40];
    char name[FW_NETNS_NAME_MAX];
    char path[PATH_MAX];
    char dir[PATH_MAX];
    char host_if[FW_IFNAME_MAX]; /* "" in ipc mode */
    fw_rules_params_t params;
    fw_backend_t backend;
    uint32_t exec_timeout_ms;
    int diag_fd;
    bool removed;
};

static void rtnl_closep(fw_rtnl_t *nl) {
    fw_rtnl_close(nl);
}
#define _cleanup_rtnl_ _cleanup_(rtnl_closep)

/* Fixed binaries per backend rather than the /usr/sbin/iptables-restore alternative: what we
 * apply and what we read back must come from the same backend whatever the host's
 * update-alternatives says. */
static const char *tool_path(fw_backend_t backend, fw_family_t family, bool save) {
    static const char *const tools[2][2][2] = {
        {{"/usr/sbin/iptables-nft-restore", "/usr/sbin/iptables-nft-save"},
         {"/usr/sbin/ip6tables-nft-restore", "/usr/sbin/ip6tables-nft-save"}},
        {{"/usr/sbin/iptables-legacy-restore", "/usr/sbin/iptables-legacy-save"},
         {"/usr/sbin/ip6tables-legacy-restore", "/usr/sbin/ip6tables-legacy-save"}},
    };
    return tools[backend == FW_BACKEND_LEGACY][family == FW_FAMILY_V6][save];
}

static const fw_family_t families[2] = {FW_FAMILY_V4, FW_FAMILY_V6};

/* The rendered rules in an unlinked memory file, positioned at 0: a child's stdin that cannot
 * deadlock on a full pipe and leaves nothing on disk. */
static int rules_memfd(const fw_rules_params_t *p, fw_family_t family) {
    char text[FW_RULES_MAX];
    int r = fw_rules_render(p, family, text, sizeof text);
    if (r < 0)
        return r;
    _cleanup_close_ int fd = memfd_create("kbox-fw-rules", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    r = write_all(fd, text, (size_t)r);
    if (r < 0)
        return r;
    if (lseek(fd, 0, SEEK_SET) < 0)
        return -errno;
    return TAKE_FD(fd);
}

/* Run restore (rules != NULL) or save for both families at once inside nsfd (or, if nsfd < 0,
 * the calling thread's namespace), then wait for both. With save, ret_out[i] gets the output.
 * Returns the first error. */
static int tools_run_both(const fw_netns_t *ns, int nsfd, bool save, char *ret_out[2]) {
    fw_child_t kids[2] = {FW_CHILD_INIT, FW_CHILD_INIT};
    char wait_s[16];
    uint32_t secs = ns->exec_timeout_ms / 1000;
    int r = xsnprintf(wait_s, sizeof wait_s, "%u", secs ? secs : 1);
    if (r < 0)
        return r;
    uint64_t deadline = now_mono_us() + (uint64_t)ns->exec_timeout_ms * 1000;
    for (size_t i = 0; i < 2 && r >= 0; i++) {
        const char *argv_restore[] = {tool_path(ns->backend, families[i], false), "-w", wait_s,
                                      NULL};
        const char *argv_save[] = {tool_path(ns->backend, families[i], true), NULL};
        _cleanup_close_ int in = save ? -1 : rules_memfd(&ns->params, families[i]);
        if (!save && in < 0) {
            r = in;
            break;
        }
        r = fw_child_spawn(save ? argv_save : argv_restore, nsfd, in, ns->diag_fd, &kids[i]);
    }
    for (size_t i = 0; i < 2; i++) {
        if (kids[i].pid <= 0)
            continue;
        if (r < 0) {
            fw_child_abort(&kids[i]);
            continue;
        }
        r = fw_child_wait(&kids[i], deadline, SAVE_MAX, save ? &ret_out[i] : NULL);
    }
    return r;
}

static int rules_verify(const fw_netns_t *ns, int nsfd, fw_verify_t level) {
    if (level == FW_VERIFY_NONE)
        return 0;
    char *saved[2] = {NULL, NULL};
    int r = tools_run_both(ns, nsfd, true, saved);
    for (size_t i = 0; i < 2 && r >= 0; i++) {
        char expected[FW_RULES_MAX];
        r = fw_rules_render(&ns->params, families[i], expected, sizeof expected);
        if (r >= 0)
            r = fw_rules_compare(expected, saved[i], level);
    }
    free(saved[0]);
    free(saved[1]);
    return r < 0 ? r : 0;
}

/* iproute2's layout, so `ip netns` sees our namespaces and we see its: the directory is a
 * mount point of its own with shared propagation. Shared matters for removal: a mount
 * namespace copied while a pin existed (a later systemd service with PrivateTmp, `ip netns
 * exec`) holds a copy of the pin, and only propagation makes our umount reach that copy instead
 * of keeping the namespace alive for that service's lifetime. The lock keeps two threads from
 * both stacking a bind mount on a fresh directory. */
static pthread_mutex_t dir_lock = PTHREAD_MUTEX_INITIALIZER;

static int netns_dir_prepare(const char *dir) {
    pthread_mutex_lock(&dir_lock);
    int r = mkdir_p(dir, 0755);
    if (r >= 0 && mount("", dir, "none", MS_SHARED | MS_REC, NULL) < 0) {
        r = -errno;
        if (r == -EINVAL) /* not a mount point yet */
            r = mount(dir, dir, "none", MS_BIND | MS_REC, NULL) < 0 ||
                        mount("", dir, "none", MS_SHARED | MS_REC, NULL) < 0
                    ? -errno
                    : 0;
    }
    pthread_mutex_unlock(&dir_lock);
    return r;
}

/* Pin the calling thread's network namespace at path, which must not exist yet. */
static int netns_pin(const char *dir, const char *path) {
    int r = netns_dir_prepare(dir);
    if (r < 0)
        return r;
    int fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0)
        return -errno;
    close(fd);
    if (mount("/proc/thread-self/ns/net", path, "none", MS_BIND, NULL) < 0) {
        r = -errno;
        unlink(path);
        return r;
    }
    return 0;
}

/* Undo netns_pin; a missing pin or a plain file left by a crash (or a reboot: /run need not be
 * a tmpfs) is fine. Loops in case something stacked a second mount on the pin. */
static int netns_unpin(const char *path) {
    for (int i = 0; i < 8; i++)
        if (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) < 0) {
            if (errno == EINVAL || errno == ENOENT)
                break;
            return -errno;
        }
    return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

/* Address, no IPv6 link-local, up: one end of the veth in nl's namespace. */
static int link_configure(fw_rtnl_t *nl, const char *ifname, const struct in_addr *a4,
                          const struct in6_addr *a6) {
    int index = fw_rtnl_link_index(nl, ifname);
    if (index < 0)
        return index;
    int r = fw_rtnl_link_addrgen_none(nl, index);
    if (r < 0 && r != -EAFNOSUPPORT)
        return r;
    r = fw_rtnl_addr_add(nl, index, AF_INET, a4, 30);
    if (r >= 0 && a6)
        r = fw_rtnl_addr_add(nl, index, AF_INET6, a6, 126);
    if (r >= 0)
        r = fw_rtnl_link_set_up(nl, index, true);
    return r;
}

typedef struct {
    const fw_config_t *cfg;
    const fw_netns_t *ns;
    int result;
} build_job_t;

/* Runs on the helper thread; see the file comment for the order. */
static int netns_build(const fw_config_t *cfg, const fw_netns_t *ns) {
    const fw_rules_params_t *p = &ns->params;
    bool tcp = p->mode == FW_MODE_TCP;
    _cleanup_rtnl_ fw_rtnl_t host = {.fd = -1};
    int r = tcp ? fw_rtnl_open(&host) : 0;
    if (r < 0)
        return r;
    if (unshare(CLONE_NEWNET) < 0)
        return -errno;
    _cleanup_close_ int nsfd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (nsfd < 0)
        return -errno;
    _cleanup_rtnl_ fw_rtnl_t inner = {.fd = -1};
    r = fw_rtnl_open(&inner);
    if (r < 0)
        return r;
    int lo = fw_rtnl_link_index(&inner, "lo");
    if (lo < 0)
        return lo;
    r = fw_rtnl_link_set_up(&inner, lo, true);
    if (r < 0)
        return r;
    r = tools_run_both(ns, -1, false, NULL);
    if (r < 0)
        return r;
    if (tcp) {
        r = fw_rtnl_veth_add(&host, ns->host_if, p->ns_ifname, nsfd);
        if (r < 0)
            return r;
        r = link_configure(&inner, p->ns_ifname, &p->addrs.worker4,
                           p->addrs.has_v6 ? &p->addrs.worker6 : NULL);
        if (r >= 0)
            r = link_configure(&host, ns->host_if, &p->addrs.gw4,
                               p->addrs.has_v6 ? &p->addrs.gw6 : NULL);
    }
    if (r >= 0)
        r = rules_verify(ns, -1, cfg->verify);
    if (r >= 0)
        r = netns_pin(ns->dir, ns->path);
    if (r < 0 && tcp)
        (void)fw_rtnl_link_del(&host, ns->host_if);
    return r;
}

static void *build_thread(void *arg) {
    build_job_t *job = arg;
    job->result = netns_build(job->cfg, job->ns);
    return NULL;
}

static bool config_valid(const fw_config_t *cfg) {
    return cfg && cfg->netns_dir && cfg->netns_dir[0] == '/' &&
           (cfg->backend == FW_BACKEND_NFT || cfg->backend == FW_BACKEND_LEGACY) &&
           cfg->verify >= FW_VERIFY_NONE && cfg->verify <= FW_VERIFY_FULL &&
           cfg->exec_timeout_ms > 0 && (cfg->mode == FW_MODE_IPC || cfg->mode == FW_MODE_TCP);
}

int fw_netns_create(const fw_config_t *cfg, const char *worker_id, uint32_t index,
                    fw_netns_t **ret) {
    if (!config_valid(cfg) || !ret)
        return -EINVAL;
    _cleanup_free_ fw_netns_t *ns = calloc(1, sizeof *ns);
    if (!ns)
        return -ENOMEM;
    char host_if[FW_IFNAME_MAX];
    int r = fw_names(worker_id, ns->name, host_if);
    if (r < 0)
        return r;
    if ((r = xsnprintf(ns->worker_id, sizeof ns->worker_id, "%s", worker_id)) < 0 ||
        (r = xsnprintf(ns->dir, sizeof ns->dir, "%s", cfg->netns_dir)) < 0 ||
        (r = xsnprintf(ns->path, sizeof ns->path, "%s/%s", cfg->netns_dir, ns->name)) < 0)
        return r;
    ns->backend = cfg->backend;
    ns->exec_timeout_ms = cfg->exec_timeout_ms;
    ns->diag_fd = cfg->diag_fd;
    ns->params.mode = cfg->mode;
    if (cfg->mode == FW_MODE_TCP) {
        memcpy(ns->host_if, host_if, sizeof host_if);
        memcpy(ns->params.ns_ifname, FW_NS_IFNAME, sizeof FW_NS_IFNAME);
        ns->params.port_min = cfg->port_min;
        ns->params.port_max = cfg->port_max;
        r = fw_pool_addrs(&cfg->pool, index, &ns->params.addrs);
        if (r < 0)
            return r;
    }
    /* Reject bad parameters here, before any namespace exists. */
    char scratch[FW_RULES_MAX];
    for (size_t i = 0; i < 2; i++)
        if ((r = fw_rules_render(&ns->params, families[i], scratch, sizeof scratch)) < 0)
            return r;
    struct stat st;
    if (lstat(ns->path, &st) == 0)
        return -EEXIST;

    build_job_t job = {.cfg = cfg, .ns = ns, .result = -EINTR};
    pthread_attr_t attr;
    if ((r = -pthread_attr_init(&attr)) < 0)
        return r;
    (void)pthread_attr_setstacksize(&attr, HELPER_STACK);
    /* The helper runs no signal handler: one would run inside the worker's namespace. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    r = -pthread_create(&t, &attr, build_thread, &job);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r < 0)
        return r;
    pthread_join(t, NULL);
    if (job.result < 0)
        return job.result;
    *ret = TAKE_PTR(ns);
    return 0;
}

const char *fw_netns_name(const fw_netns_t *ns) {
    return ns ? ns->name : NULL;
}

const char *fw_netns_path(const fw_netns_t *ns) {
    return ns ? ns->path : NULL;
}

const char *fw_netns_host_ifname(const fw_netns_t *ns) {
    return ns ? ns->host_if : NULL;
}

const fw_rules_params_t *fw_netns_params(const fw_netns_t *ns) {
    return ns ? &ns->params : NULL;
}

static int netns_open(const fw_netns_t *ns) {
    int fd = open(ns->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    return fd < 0 ? -errno : fd;
}

int fw_netns_save(const fw_netns_t *ns, fw_family_t family, char **ret_text) {
    if (!ns || !ret_text || (family != FW_FAMILY_V4 && family != FW_FAMILY_V6))
        return -EINVAL;
    _cleanup_close_ int nsfd = netns_open(ns);
    if (nsfd < 0)
        return nsfd;
    const char *argv[] = {tool_path(ns->backend, family, true), NULL};
    fw_child_t kid = FW_CHILD_INIT;
    int r = fw_child_spawn(argv, nsfd, -1, ns->diag_fd, &kid);
    if (r < 0)
        return r;
    return fw_child_wait(&kid, now_mono_us() + (uint64_t)ns->exec_timeout_ms * 1000, SAVE_MAX,
                         ret_text);
}

int fw_netns_verify(const fw_netns_t *ns, fw_verify_t level) {
    if (!ns || level < FW_VERIFY_NONE || level > FW_VERIFY_FULL)
        return -EINVAL;
    _cleanup_close_ int nsfd = netns_open(ns);
    if (nsfd < 0)
        return nsfd;
    return rules_verify(ns, nsfd, level);
}

/* Delete our host veth by name in the calling thread's namespace; absent is fine. */
static int host_link_delete(const char *host_if) {
    _cleanup_rtnl_ fw_rtnl_t nl = {.fd = -1};
    int r = fw_rtnl_open(&nl);
    if (r < 0)
        return r;
    r = fw_rtnl_link_del(&nl, host_if);
    return r == -ENODEV ? 0 : r;
}

int fw_netns_remove(fw_netns_t *ns) {
    if (!ns)
        return -EINVAL;
    if (ns->removed)
        return 0;
    int first = ns->host_if[0] ? host_link_delete(ns->host_if) : 0;
    int r = netns_unpin(ns->path);
    if (first == 0)
        first = r;
    if (first == 0)
        ns->removed = true;
    return first;
}

void fw_netns_destroy(fw_netns_t **ns_p) {
    if (!ns_p || !*ns_p)
        return;
    (void)fw_netns_remove(*ns_p);
    free(*ns_p);
    *ns_p = NULL;
}

int fw_netns_delete(const fw_config_t *cfg, const char *worker_id) {
    if (!config_valid(cfg))
        return -EINVAL;
    char name[FW_NETNS_NAME_MAX], host_if[FW_IFNAME_MAX], path[PATH_MAX];
    int r = fw_names(worker_id, name, host_if);
    if (r < 0)
        return r;
    r = xsnprintf(path, sizeof path, "%s/%s", cfg->netns_dir, name);
    if (r < 0)
        return r;
    int first = host_link_delete(host_if);
    r = netns_unpin(path);
    return first < 0 ? first : r;
}

static bool id_prefix_valid(const char *p) {
    if (!p || p[0] != 'w' || strlen(p) > 33)
        return false;
    for (const char *c = p + 1; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
            return false;
    return true;
}

static bool id_kept(const char *id, const char *const *keep, size_t n_keep) {
    for (size_t i = 0; i < n_keep; i++)
        if (streq(keep[i], id))
            return true;
    return false;
}

static bool host_if_kept(const char *host_if, const char *const *keep, size_t n_keep) {
    for (size_t i = 0; i < n_keep; i++) {
        char kept_if[FW_IFNAME_MAX];
        if (fw_names(keep[i], NULL, kept_if) == 0 && streq(kept_if, host_if))
            return true;
    }
    return false;
}

static void note_error(int *first, int r) {
    if (r < 0 && *first == 0)
        *first = r;
}

static int sweep_pins(const char *dir, const char *id_prefix, const char *const *keep,
                      size_t n_keep, unsigned *removed) {
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    int first = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *name = de->d_name;
        if (!startswith(name, FW_NETNS_PREFIX))
            continue;
        const char *id = name + strlen(FW_NETNS_PREFIX);
        if (!fw_worker_id_valid(id) || !startswith(id, id_prefix) || id_kept(id, keep, n_keep))
            continue;
        char path[PATH_MAX];
        int r = xsnprintf(path, sizeof path, "%s/%s", dir, name);
        if (r >= 0)
            r = netns_unpin(path);
        if (r >= 0)
            (*removed)++;
        note_error(&first, r);
    }
    closedir(d);
    return first;
}

static int sweep_links(const char *id_prefix, const char *const *keep, size_t n_keep,
                       unsigned *removed) {
    char prefix[FW_IFNAME_MAX];
    int r = xsnprintf(prefix, sizeof prefix, "%s%.9s", FW_HOST_IF_PREFIX, id_prefix + 1);
    if (r < 0)
        return r;
    _cleanup_rtnl_ fw_rtnl_t nl = {.fd = -1};
    r = fw_rtnl_open(&nl);
    if (r < 0)
        return r;
    _cleanup_free_ char *names = NULL;
    size_t count = 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        r = fw_rtnl_veth_list(&nl, prefix, SWEEP_LINKS_MAX, &names, &count);
        if (r != -EAGAIN)
            break;
    }
    if (r < 0)
        return r;
    int first = 0;
    for (const char *n = names; *n; n += strlen(n) + 1) {
        /* Ours are exactly prefix + 9 hex digits; leave anything else alone. */
        char id[12];
        if (strlen(n) != strlen(FW_HOST_IF_PREFIX) + 9 ||
            xsnprintf(id, sizeof id, "w%s", n + strlen(FW_HOST_IF_PREFIX)) < 0 ||
            !fw_worker_id_valid(id) || host_if_kept(n, keep, n_keep))
            continue;
        r = fw_rtnl_link_del(&nl, n);
        if (r >= 0)
            (*removed)++;
        note_error(&first, r == -ENODEV ? 0 : r);
    }
    return first;
}

int fw_sweep(const fw_config_t *cfg, const char *id_prefix, const char *const *keep_ids,
             size_t n_keep, unsigned *ret_removed) {
    if (!config_valid(cfg) || !id_prefix_valid(id_prefix) || (n_keep && !keep_ids))
        return -EINVAL;
    unsigned removed = 0;
    int first = 0;
    /* Links first: unpinning ends the namespace, and with it the veth, only asynchronously. */
    note_error(&first, sweep_links(id_prefix, keep_ids, n_keep, &removed));
    note_error(&first, sweep_pins(cfg->netns_dir, id_prefix, keep_ids, n_keep, &removed));
    if (first == 0 && ret_removed)
        *ret_removed = removed;
    return first;
}

int fw_host_routes(fw_route_filter_t keep, void *ctx, fw_route_t **ret, size_t *ret_n) {
    if (!ret || !ret_n)
        return -EINVAL;
    _cleanup_rtnl_ fw_rtnl_t nl = {.fd = -1};
    int r = fw_rtnl_open(&nl);
    if (r < 0)
        return r;
    _cleanup_free_ fw_route_t *all = NULL;
    size_t n = 0;
    static const int fams[] = {AF_INET, AF_INET6, AF_INET, AF_INET6};
    typedef int (*dump_fn)(fw_rtnl_t *, int, fw_route_filter_t, void *, size_t, fw_route_t **,
                           size_t *);
    static const dump_fn dumps[] = {fw_rtnl_route_list, fw_rtnl_route_list, fw_rtnl_addr_routes,
                                    fw_rtnl_addr_routes};
    for (size_t f = 0; f < ARRAY_SIZE(fams); f++) {
        _cleanup_free_ fw_route_t *some = NULL;
        size_t k = 0;
        /* A dump the kernel interrupts (routes changed meanwhile) is asked again. */
        for (int attempt = 0; attempt < 5; attempt++) {
            free(some);
            some = NULL;
            r = dumps[f](&nl, fams[f], keep, ctx, FW_ROUTES_MAX - n, &some, &k);
            if (r != -EAGAIN)
                break;
        }
        if (r == -EAFNOSUPPORT && fams[f] == AF_INET6)
            continue; /* a kernel without IPv6 */
        if (r < 0)
            return r;
        if (k == 0)
            continue;
        fw_route_t *grown = realloc(all, (n + k) * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        all = grown;
        memcpy(all + n, some, k * sizeof *some);
        n += k;
    }
    for (size_t i = 0; i < n; i++)
        if (all[i].oif <= 0 || !if_indextoname((unsigned)all[i].oif, all[i].dev))
            all[i].dev[0] = '\0';
    *ret = TAKE_PTR(all);
    *ret_n = n;
    return 0;
}
