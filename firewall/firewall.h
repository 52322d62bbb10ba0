/* kbox_firewall: the network namespace every worker runs in, prepared and firewalled before the
 * container process exists. A namespace is made on a short-lived helper thread (unshare), gets
 * lo up, its iptables and ip6tables rules (default DROP on INPUT, OUTPUT and FORWARD), in TCP
 * mode a veth pair to the gateway, and only then is pinned at <netns_dir>/kbox-<worker id> for
 * runc to join by path. A failure anywhere before the pin leaves nothing behind: the unpinned
 * namespace dies with the helper thread. The rule text comes from the templates in
 * firewall/rules/ (embedded at build time) through a pure renderer that the unit tests pin.
 *
 * Threading: every function is thread-safe and may run concurrently for different workers.
 * fw_netns_create(), _remove(), _save(), _verify(), fw_netns_delete() and fw_sweep() block
 * (tens of ms: they run iptables-restore/-save) and belong on a work thread, never the loop
 * thread. They fork children and reap them by pid: the caller must not set SIGCHLD to SIG_IGN
 * nor reap with waitpid(-1, ...) concurrently. The host end of a veth is made in, and removed
 * from, the network namespace of the calling thread (the gateway's). */
#pragma once

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FW_NETNS_DIR      "/run/netns" /* where `ip netns` pins namespaces too */
#define FW_NETNS_PREFIX   "kbox-"      /* namespace name = prefix + worker id */
#define FW_HOST_IF_PREFIX "kbox-h"     /* host end of a veth = prefix + 9 chars of the id */
#define FW_NS_IFNAME      "eth0"       /* the worker's end of the veth, inside its namespace */
#define FW_IFNAME_MAX     16           /* IFNAMSIZ, with the NUL */
#define FW_NETNS_NAME_MAX 48           /* "kbox-" + "w" + up to 32 hex + NUL */
#define FW_RULES_MAX      4096         /* a rendered rule set never exceeds this */

typedef enum {
    FW_MODE_IPC = 0, /* kernel sockets are ipc:// files: only lo, only loopback traffic */
    FW_MODE_TCP = 1, /* kernel sockets are tcp:// on a veth: only the gateway, only its ports */
} fw_mode_t;

typedef enum {
    FW_FAMILY_V4 = 4,
    FW_FAMILY_V6 = 6,
} fw_family_t;

typedef enum {
    FW_BACKEND_NFT = 0,    /* iptables-nft-*: Debian 12's default, what `iptables-save` shows */
    FW_BACKEND_LEGACY = 1, /* iptables-legacy-*: ~3x faster to apply, global xtables lock */
} fw_backend_t;

typedef enum {
    FW_VERIFY_NONE = 0,   /* trust iptables-restore's exit status */
    FW_VERIFY_POLICY = 1, /* read back; the filter table's chain policies must match */
    FW_VERIFY_FULL = 2,   /* read back; every table, chain and rule must match */
} fw_verify_t;

/* The two ends of a worker's veth (TCP transport): one /30 and optionally one /126 per worker;
 * the gateway (host end) gets the first usable address, the worker the second. */
typedef struct {
    struct in_addr gw4, worker4;
    bool has_v6;
    struct in6_addr gw6, worker6;
} fw_link_addrs_t;

/* Everything a rule set depends on. ns_ifname, addrs and the ports matter in TCP mode only. */
typedef struct {
    fw_mode_t mode;
    char ns_ifname[FW_IFNAME_MAX];
    fw_link_addrs_t addrs;
    uint16_t port_min, port_max; /* the kernel's ports, inclusive; the same in every worker */
} fw_rules_params_t;

/* Address pool for TCP-mode links: an IPv4 block cut into /30s and optionally an IPv6 block
 * cut into /126s, both indexed by the worker's slot. */
typedef struct {
    struct in_addr base4;
    uint8_t prefix4;
    bool has_v6;
    struct in6_addr base6;
    uint8_t prefix6;
} fw_pool_t;

typedef struct {
    const char *netns_dir; /* FW_NETNS_DIR unless a test points elsewhere; copied by create */
    fw_backend_t backend;
    fw_verify_t verify;       /* read-back check inside fw_netns_create() */
    uint32_t exec_timeout_ms; /* per iptables child; it is killed after this */
    int diag_fd;              /* children's stderr goes here; -1 = /dev/null (not closed) */
    fw_mode_t mode;
    fw_pool_t pool;              /* TCP mode */
    uint16_t port_min, port_max; /* TCP mode */
} fw_config_t;

/* A route of the host: destination, how it is reached, through which link. */
typedef struct {
    int family;              /* AF_INET or AF_INET6 */
    uint8_t dst[16];         /* network order; IPv4 in the first 4 bytes */
    uint8_t dst_len;         /* 0: a default route */
    bool via_gateway;        /* a next hop is a router (RTA_GATEWAY/RTA_VIA), not a link of ours */
    int oif;                 /* the (first) output link's index, 0 when none */
    char dev[FW_IFNAME_MAX]; /* its name, "" when none */
} fw_route_t;

typedef struct fw_netns fw_netns_t;

/* ---- pure part (no privileges, no I/O; unit-tested) ---- */

/* Defaults: FW_NETNS_DIR, nft backend, policy verification, 5 s timeout, /dev/null stderr, ipc
 * mode, pool 10.255.0.0/16 without IPv6, ports 50000-50004. */
void fw_config_init(fw_config_t *cfg);

/* Render the iptables-restore (v4) or ip6tables-restore (v6) input for p into buf (NUL-
 * terminated). Every value is validated and printed from binary form, so no parameter can
 * inject a line. TCP mode without addrs.has_v6 renders the ipc (lo only) IPv6 rules. Returns
 * the text length, -EINVAL for bad parameters, -ENOBUFS if len is too small. */
int fw_rules_render(const fw_rules_params_t *p, fw_family_t family, char *buf, size_t len);

/* Compare a rendered rule set with iptables-save output after normalizing both (comment lines,
 * blank lines and chain counters dropped). FW_VERIFY_POLICY: each filter chain policy in
 * expected appears in saved. FW_VERIFY_FULL: the normalized texts are equal. Returns 0 if they
 * match, -EBADMSG if not, -EINVAL for bad arguments. */
int fw_rules_compare(const char *expected, const char *saved, fw_verify_t level);

/* Parse "a.b.c.d/len" (len <= 30) and optionally "v6prefix/len" (len <= 126, outside the
 * IPv4-mapped ::ffff:0:0/96; NULL for none); host bits must be zero. Returns 0 or -EINVAL; ret
 * written only on success. */
int fw_pool_parse(const char *cidr4, const char *cidr6, fw_pool_t *ret);

/* How many workers the pool can address (the smaller of the two blocks); 0 if invalid. */
uint32_t fw_pool_size(const fw_pool_t *pool);

/* The link addresses of slot index. Returns 0, -EINVAL for a bad pool, -ERANGE if index is
 * beyond fw_pool_size(). */
int fw_pool_addrs(const fw_pool_t *pool, uint32_t index, fw_link_addrs_t *ret);

/* A worker id this module accepts: "w" then 9 to 32 lowercase hex digits. */
bool fw_worker_id_valid(const char *worker_id);

/* The namespace name (FW_NETNS_PREFIX + id) and the host end's interface name
 * (FW_HOST_IF_PREFIX + the 9 characters after the "w"). Either output may be NULL. Returns 0 or
 * -EINVAL for an invalid id. */
int fw_names(const char *worker_id, char ret_netns[FW_NETNS_NAME_MAX],
             char ret_host_if[FW_IFNAME_MAX]);

/* ---- system part (root: CAP_SYS_ADMIN and CAP_NET_ADMIN) ---- */

/* Make, firewall and pin the namespace of worker_id (index picks the TCP pool slot; ignored in
 * ipc mode). Pinned only when complete, so its path never names an unfirewalled namespace.
 * Returns 0 and a new handle, or -errno: -EINVAL bad id/config, -EEXIST a namespace or host
 * interface of that name exists, -ERANGE index outside the pool, -ENOENT an iptables binary is
 * missing, -EPROTO it failed, -ETIMEDOUT it hung and was killed, -EBADMSG read-back mismatch. */
int fw_netns_create(const fw_config_t *cfg, const char *worker_id, uint32_t index,
                    fw_netns_t **ret);

/* Borrowed strings, valid until destroy. The path goes into the OCI config's network namespace;
 * the host interface name is "" in ipc mode. */
const char *fw_netns_name(const fw_netns_t *ns);
const char *fw_netns_path(const fw_netns_t *ns);
const char *fw_netns_host_ifname(const fw_netns_t *ns);

/* The rules the namespace was given (borrowed). In TCP mode params->addrs.worker4 (or worker6)
 * is where the gateway connects, on ports port_min..port_max. */
const fw_rules_params_t *fw_netns_params(const fw_netns_t *ns);

/* Run iptables-save (v4) or ip6tables-save (v6) of the configured backend inside the namespace.
 * Returns 0 and a malloc'd NUL-terminated text the caller frees, or -errno. */
int fw_netns_save(const fw_netns_t *ns, fw_family_t family, char **ret_text);

/* Read both families back and compare with the rendered rules. 0, -EBADMSG, or -errno. */
int fw_netns_verify(const fw_netns_t *ns, fw_verify_t level);

/* Delete the host end of the veth (which takes the worker's end with it) and unpin the
 * namespace; it is gone once no process is left in it. Idempotent; keeps going after an error
 * and returns the first one. */
int fw_netns_remove(fw_netns_t *ns);

/* NULL-safe: removes (if fw_netns_remove() has not succeeded yet), frees, sets *ns_p = NULL. */
void fw_netns_destroy(fw_netns_t **ns_p);

/* Remove by worker id what a lost handle would have removed (host veth, pin). Missing pieces
 * are not an error. Returns 0 or the first -errno. */
int fw_netns_delete(const fw_config_t *cfg, const char *worker_id);

/* Decides whether a route is kept (before its dev is filled in). */
typedef bool (*fw_route_filter_t)(const fw_route_t *route, void *ctx);

/* The routes of the calling thread's network namespace, every table, IPv4 and IPv6, that keep
 * (NULL: all) keeps, at most FW_ROUTES_MAX: a malloc'd array in *ret (NULL when there are
 * none), *ret_n of them. Local, broadcast and unreachable routes included: each takes the
 * addresses it names. So do the networks of the links' addresses, given as on-link routes:
 * an address on a link that is down has no route to its network yet. A dump the kernel keeps
 * interrupting (routes changing) is -EAGAIN. */
#define FW_ROUTES_MAX 65536
int fw_host_routes(fw_route_filter_t keep, void *ctx, fw_route_t **ret, size_t *ret_n);

/* Crash sweep for the gateway's start: remove every pinned kbox namespace and every host veth
 * of ours (in the calling thread's namespace) whose worker id starts with id_prefix ("w" for
 * all; veths match on its first 10 characters, all their name holds) and is not in keep_ids.
 * Run it before starting workers, never concurrently with fw_netns_create() for the prefix.
 * Returns 0 and ret_removed (objects removed; may be NULL), or the first -errno after trying
 * everything. */
int fw_sweep(const fw_config_t *cfg, const char *id_prefix, const char *const *keep_ids,
             size_t n_keep, unsigned *ret_removed);
