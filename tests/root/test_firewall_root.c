/* Root integration tests for kbox_firewall against the real kernel: namespaces, veth pairs,
 * iptables (nft and legacy backends). Checked from inside the worker's namespace: in ipc mode
 * only lo exists and the host's loopback (the gateway's HTTP port) is out of reach; in TCP mode
 * the gateway address reaches the kernel's ports and nothing else gets in or out, IPv4 and
 * IPv6, and a positive control (rules flushed by hand) proves each refusal was the firewall's.
 * The read-back with iptables-save equals the rendered rules. Leaks are checked after 200
 * create/destroy cycles, concurrent creates and a simulated gateway crash plus sweep.
 *
 * Traffic stays on loopback and inside namespaces this test creates: every TCP-mode test runs
 * with a test-made namespace standing in for the host ("H"), so the veths' host ends and their
 * 10.255.x.x / fd00:6b62:: addresses never touch the real host. Without root every test FAILS
 * (CI runs as root); nothing is skipped. Worker ids carry a random per-run tag so sweeps here
 * never touch another run's (or a live gateway's) namespaces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "firewall.h"
#include "util.h"

#define KPORT_LO   50000 /* kernel port range in these tests: 50000..50004 */
#define KPORT_HI   50004
#define OTHER_PORT 8080 /* stands in for the gateway's HTTP port, or any other service */
#define BLOCKED_MS 300  /* a dropped SYN: how long we wait before calling it refused */
#define REACH_MS   5000 /* an allowed connection, on a loaded CI machine */

static char tag[5];     /* 4 random hex digits, per run */
static char prefix[6];  /* "w" + tag: the sweep prefix of this run */
static unsigned id_seq; /* makes the 9 characters in host interface names unique */
static int real_ns = -1;

static void new_id(char id[18]) {
    char rnd[8];
    random_hex(rnd, 4);
    snprintf(id, 18, "w%s%05x%.7s", tag, id_seq++ & 0xfffff, rnd);
    assert_true(fw_worker_id_valid(id));
}

static int ns_self(void) {
    int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    return fd;
}

static void enter(int nsfd) {
    assert_int_equal(setns(nsfd, CLONE_NEWNET), 0);
}

static int ns_open(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "/run/netns/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail_msg("open %s: %s", path, strerror(errno));
    return fd;
}

/* Shell commands (test plumbing only: ip, sysctl). sh() returns the exit status, sh_out() the
 * output (caller frees). Macros rather than varargs functions: the format is still checked. */
#define sh(...)                                                                                    \
    ({                                                                                             \
        char _cmd[2048];                                                                           \
        assert_true(snprintf(_cmd, sizeof _cmd, __VA_ARGS__) < (int)sizeof _cmd);                  \
        sh_run(_cmd);                                                                              \
    })
#define sh_out(...)                                                                                \
    ({                                                                                             \
        char _cmd[2048];                                                                           \
        assert_true(snprintf(_cmd, sizeof _cmd, __VA_ARGS__) < (int)sizeof _cmd);                  \
        sh_out_run(_cmd);                                                                          \
    })

static int sh_run(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *sh_out_run(const char *cmd) {
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t cap = 262144, len = 0, n;
    char *out = calloc(1, cap);
    assert_non_null(out);
    while ((n = fread(out + len, 1, cap - 1 - len, f)) > 0)
        len += n;
    pclose(f);
    return out;
}

/* A socket created inside nsfd (< 0: the current namespace); it stays there. */
static int socket_in(int nsfd, int domain, int type) {
    int cur = ns_self();
    if (nsfd >= 0)
        enter(nsfd);
    int fd = socket(domain, type | SOCK_CLOEXEC, 0);
    int e = errno;
    enter(cur);
    close(cur);
    if (fd < 0)
        fail_msg("socket: %s", strerror(e));
    return fd;
}

static socklen_t sockaddr_of(int af, const char *addr, uint16_t port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    if (af == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)ss;
        s->sin_family = AF_INET;
        s->sin_port = htons(port);
        assert_int_equal(inet_pton(AF_INET, addr, &s->sin_addr), 1);
        return sizeof *s;
    }
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(port);
    assert_int_equal(inet_pton(AF_INET6, addr, &s->sin6_addr), 1);
    return sizeof *s;
}

/* Listening socket in nsfd on addr:port (port 0: any; the real port is returned in *ret). */
static int listen_in(int nsfd, int af, const char *addr, uint16_t port, uint16_t *ret_port) {
    int fd = socket_in(nsfd, af, SOCK_STREAM);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (af == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_storage ss;
    socklen_t len = sockaddr_of(af, addr, port, &ss);
    if (bind(fd, (struct sockaddr *)&ss, len) < 0)
        fail_msg("bind %s:%u: %s", addr, port, strerror(errno));
    assert_int_equal(listen(fd, 64), 0);
    if (ret_port) {
        len = sizeof ss;
        assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
        *ret_port = ntohs(af == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                        : ((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return fd;
}

/* Connect from inside nsfd (optionally from source port sport). 0 on success, else -errno;
 * -ETIMEDOUT when the SYN was silently dropped. */
static int try_connect(int nsfd, int af, const char *addr, uint16_t port, uint16_t sport,
                       int timeout_ms) {
    _cleanup_close_ int fd = socket_in(nsfd, af, SOCK_STREAM | SOCK_NONBLOCK);
    if (sport) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_storage any;
        socklen_t len = sockaddr_of(af, af == AF_INET ? "0.0.0.0" : "::", sport, &any);
        assert_int_equal(bind(fd, (struct sockaddr *)&any, len), 0);
    }
    struct sockaddr_storage ss;
    socklen_t len = sockaddr_of(af, addr, port, &ss);
    if (connect(fd, (struct sockaddr *)&ss, len) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return -errno;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n = poll(&p, 1, timeout_ms);
    if (n == 0)
        return -ETIMEDOUT;
    int err = 0;
    socklen_t elen = sizeof err;
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen), 0);
    return -err;
}

#define assert_reaches(ns, af, addr, port)                                                         \
    do {                                                                                           \
        uint64_t _t0 = now_mono_us();                                                              \
        int _r = try_connect(ns, af, addr, port, 0, REACH_MS);                                     \
        if (now_mono_us() - _t0 > 100000)                                                          \
            printf("[slow] %s:%u took %.0f ms\n", addr, port, (now_mono_us() - _t0) / 1000.0);     \
        if (_r != 0)                                                                               \
            fail_msg("%s:%u should be reachable: %s", addr, port, strerror(-_r));                  \
    } while (0)
#define assert_blocked(ns, af, addr, port, sport)                                                  \
    do {                                                                                           \
        int _r = try_connect(ns, af, addr, port, sport, BLOCKED_MS);                               \
        if (_r == 0)                                                                               \
            fail_msg("%s:%u (from port %u) must be unreachable", addr, port, (unsigned)(sport));   \
    } while (0)

/* Tcp InSegs of nsfd's namespace (IPv4 and IPv6 share the TCP MIB): segments that made it
 * past netfilter's INPUT hook into TCP. */
static uint64_t tcp_in_segs(int nsfd) {
    int cur = ns_self();
    enter(nsfd);
    _cleanup_free_ char *snmp = NULL;
    int r = read_file_bounded("/proc/thread-self/net/snmp", 65536, &snmp, NULL);
    enter(cur);
    close(cur);
    assert_int_equal(r, 0);
    const char *hdr = strstr(snmp, "\nTcp: ");
    assert_non_null(hdr);
    const char *vals = strstr(hdr + 1, "\nTcp: ");
    assert_non_null(vals);
    /* The same field index in the header line and the value line. */
    const char *h = hdr + 6, *v = vals + 6;
    for (;;) {
        size_t hn = strcspn(h, " \n"), vn = strcspn(v, " \n");
        if (hn == strlen("InSegs") && !strncmp(h, "InSegs", hn))
            return strtoull(v, NULL, 10);
        assert_true(h[hn] == ' ' && v[vn] == ' ');
        h += hn + 1, v += vn + 1;
    }
}

#define assert_dropped_in(W, from, af, addr, port)                                                 \
    do {                                                                                           \
        uint64_t _before = tcp_in_segs(W);                                                         \
        assert_blocked(from, af, addr, port, 0);                                                   \
        uint64_t _after = tcp_in_segs(W);                                                          \
        if (_after != _before)                                                                     \
            fail_msg("%s:%u: %llu segment(s) got past the worker's INPUT", addr, port,             \
                     (unsigned long long)(_after - _before));                                      \
    } while (0)
/* W's SYN must never reach dest: the connect fails and dest's TCP saw nothing. (A TCP
 * connect does not report an OUTPUT drop as EPERM; it just retransmits.) */
#define assert_dropped_out(W, dest, af, addr, port, sport)                                         \
    do {                                                                                           \
        uint64_t _before = tcp_in_segs(dest);                                                      \
        assert_blocked(W, af, addr, port, sport);                                                  \
        uint64_t _after = tcp_in_segs(dest);                                                       \
        if (_after != _before)                                                                     \
            fail_msg("%s:%u (from port %u): %llu segment(s) left the worker", addr, port,          \
                     (unsigned)(sport), (unsigned long long)(_after - _before));                   \
    } while (0)

/* One UDP datagram from inside nsfd: 0 if sent, else -errno (EPERM: OUTPUT dropped it). */
static int udp_send(int nsfd, int af, const char *addr, uint16_t port) {
    _cleanup_close_ int fd = socket_in(nsfd, af, SOCK_DGRAM);
    struct sockaddr_storage ss;
    socklen_t len = sockaddr_of(af, addr, port, &ss);
    return sendto(fd, "x", 1, 0, (struct sockaddr *)&ss, len) == 1 ? 0 : -errno;
}

/* Interface names inside nsfd, space-separated, sorted as the kernel lists them. */
static void links_in(int nsfd, char *out, size_t len) {
    int cur = ns_self();
    enter(nsfd);
    struct if_nameindex *ifs = if_nameindex();
    enter(cur);
    close(cur);
    assert_non_null(ifs);
    out[0] = '\0';
    for (struct if_nameindex *i = ifs; i->if_index; i++) {
        strncat(out, out[0] ? " " : "", len - strlen(out) - 1);
        strncat(out, i->if_name, len - strlen(out) - 1);
    }
    if_freenameindex(ifs);
}

static bool link_up_in(int nsfd, const char *ifname) {
    _cleanup_close_ int fd = socket_in(nsfd, AF_INET, SOCK_DGRAM);
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    assert_int_equal(ioctl(fd, SIOCGIFFLAGS, &ifr), 0);
    return ifr.ifr_flags & IFF_UP;
}

static bool mounted(const char *path) {
    _cleanup_free_ char *mi = NULL;
    assert_int_equal(read_file_bounded("/proc/self/mountinfo", 1 << 22, &mi, NULL), 0);
    char needle[512];
    snprintf(needle, sizeof needle, " %s ", path);
    return strstr(mi, needle) != NULL;
}

/* Our leftovers of this run: pins in /run/netns and mounts naming them. */
static unsigned leftovers(void) {
    unsigned n = 0;
    DIR *d = opendir(FW_NETNS_DIR);
    if (d) {
        struct dirent *de;
        char want[32];
        snprintf(want, sizeof want, "kbox-%s", prefix);
        while ((de = readdir(d)))
            if (startswith(de->d_name, want))
                n++;
        closedir(d);
    }
    _cleanup_free_ char *mi = NULL;
    assert_int_equal(read_file_bounded("/proc/self/mountinfo", 1 << 22, &mi, NULL), 0);
    char needle[32];
    snprintf(needle, sizeof needle, "/kbox-%s", prefix);
    for (const char *s = mi; (s = strstr(s, needle)); s++)
        n++;
    return n;
}

/* Host veths of this run in the current namespace. */
static unsigned host_links(void) {
    struct if_nameindex *ifs = if_nameindex();
    assert_non_null(ifs);
    char want[16];
    snprintf(want, sizeof want, "kbox-h%s", tag);
    unsigned n = 0;
    for (struct if_nameindex *i = ifs; i->if_index; i++)
        n += startswith(i->if_name, want);
    if_freenameindex(ifs);
    return n;
}

static unsigned open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    unsigned n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void check_readback(fw_netns_t *ns) {
    const fw_rules_params_t *p = fw_netns_params(ns);
    fw_family_t fams[] = {FW_FAMILY_V4, FW_FAMILY_V6};
    const char *system_save[] = {"iptables-save", "ip6tables-save"};
    _cleanup_free_ char *alt = sh_out("readlink -f /usr/sbin/iptables-save");
    for (size_t i = 0; i < 2; i++) {
        char expected[FW_RULES_MAX];
        assert_true(fw_rules_render(p, fams[i], expected, sizeof expected) > 0);
        _cleanup_free_ char *saved = NULL;
        assert_int_equal(fw_netns_save(ns, fams[i], &saved), 0);
        if (fw_rules_compare(expected, saved, FW_VERIFY_FULL) != 0)
            fail_msg("read-back differs:\n%s\n--- expected ---\n%s", saved, expected);
        assert_non_null(strstr(saved, ":INPUT DROP"));
        assert_non_null(strstr(saved, ":FORWARD DROP"));
        assert_non_null(strstr(saved, ":OUTPUT DROP"));
        /* What an operator sees with the system's own tool through iproute2's `ip netns`. */
        _cleanup_free_ char *sys =
            sh_out("ip netns exec %s %s 2>&1", fw_netns_name(ns), system_save[i]);
        if (fw_rules_compare(expected, sys, FW_VERIFY_FULL) != 0)
            fail_msg("`ip netns exec %s %s` (-> %s) shows:\n%s", fw_netns_name(ns), system_save[i],
                     alt, sys);
    }
    assert_int_equal(fw_netns_verify(ns, FW_VERIFY_FULL), 0);
}

static void test_root_required(void **state) {
    if (geteuid() != 0)
        fail_msg("root_firewall needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); CI runs it as root");
    const char *tools[] = {"/usr/sbin/iptables-nft-restore",    "/usr/sbin/ip6tables-nft-restore",
                           "/usr/sbin/iptables-nft-save",       "/usr/sbin/ip6tables-nft-save",
                           "/usr/sbin/iptables-legacy-restore", "/usr/sbin/ip"};
    for (size_t i = 0; i < ARRAY_SIZE(tools); i++)
        if (access(tools[i], X_OK) != 0)
            fail_msg("missing %s", tools[i]);
}

static void ipc_mode_checks(fw_backend_t backend) {
    assert_int_equal(geteuid(), 0);
    fw_config_t cfg;
    fw_config_init(&cfg);
    cfg.backend = backend;
    cfg.verify = FW_VERIFY_FULL;
    cfg.diag_fd = 2;
    char id[18];
    new_id(id);
    fw_netns_t *ns = NULL;
    assert_int_equal(fw_netns_create(&cfg, id, 0, &ns), 0);
    char path[128];
    snprintf(path, sizeof path, "/run/netns/kbox-%s", id);
    assert_string_equal(fw_netns_path(ns), path);
    assert_string_equal(fw_netns_host_ifname(ns), "");
    assert_true(mounted(path));
    _cleanup_free_ char *list = sh_out("ip netns list");
    assert_non_null(strstr(list, fw_netns_name(ns)));
    /* A second worker of the same id is refused, and the first is untouched. */
    fw_netns_t *dup = NULL;
    assert_int_equal(fw_netns_create(&cfg, id, 0, &dup), -EEXIST);
    assert_null(dup);

    _cleanup_close_ int nsfd = ns_open(fw_netns_name(ns));
    char links[256];
    links_in(nsfd, links, sizeof links);
    assert_string_equal(links, "lo");
    assert_true(link_up_in(nsfd, "lo"));
    if (backend == FW_BACKEND_NFT)
        check_readback(ns);
    else
        assert_int_equal(fw_netns_verify(ns, FW_VERIFY_FULL), 0);

    /* Inside, loopback works, both families. */
    _cleanup_close_ int l4 = listen_in(nsfd, AF_INET, "127.0.0.1", KPORT_LO, NULL);
    _cleanup_close_ int l6 = listen_in(nsfd, AF_INET6, "::1", KPORT_LO, NULL);
    assert_reaches(nsfd, AF_INET, "127.0.0.1", KPORT_LO);
    assert_reaches(nsfd, AF_INET6, "::1", KPORT_LO);
    /* The host's loopback (the gateway's HTTP port) is another namespace: unreachable. */
    uint16_t hp4, hp6;
    _cleanup_close_ int h4 = listen_in(real_ns, AF_INET, "127.0.0.1", 0, &hp4);
    _cleanup_close_ int h6 = listen_in(real_ns, AF_INET6, "::1", 0, &hp6);
    assert_reaches(real_ns, AF_INET, "127.0.0.1", hp4); /* control */
    assert_reaches(real_ns, AF_INET6, "::1", hp6);
    assert_blocked(nsfd, AF_INET, "127.0.0.1", hp4, 0);
    assert_blocked(nsfd, AF_INET6, "::1", hp6, 0);

    fw_netns_destroy(&ns);
    assert_null(ns);
    fw_netns_destroy(&ns); /* NULL-safe */
    fw_netns_destroy(NULL);
    assert_false(mounted(path));
    assert_int_equal(access(path, F_OK), -1);
    _cleanup_free_ char *list2 = sh_out("ip netns list");
    assert_null(strstr(list2, id));
    assert_int_equal(fw_netns_delete(&cfg, id), 0); /* idempotent */
}

static void test_ipc_nft(void **state) {
    ipc_mode_checks(FW_BACKEND_NFT);
}

static void test_ipc_legacy(void **state) {
    ipc_mode_checks(FW_BACKEND_LEGACY);
}

/* A namespace named kbxt<tag><c>: a test-made "host" or "other host". */
static void test_ns_add(char *name, size_t len, char c) {
    snprintf(name, len, "kbxt%s%c", tag, c);
    assert_int_equal(sh("ip netns add %s && ip -n %s link set lo up", name, name), 0);
}

static void tcp_mode_checks(bool v6) {
    assert_int_equal(geteuid(), 0);
    char hname[16], oname[16];
    test_ns_add(hname, sizeof hname, v6 ? 'h' : 'i');
    test_ns_add(oname, sizeof oname, v6 ? 'o' : 'p');
    _cleanup_close_ int H = ns_open(hname);
    _cleanup_close_ int O = ns_open(oname);

    /* "Another host" O hangs off H on its own veth; H forwards, so only W's firewall can keep
     * O out. Both sides of that link are inside namespaces made here. */
    assert_int_equal(sh("ip -n %s link add kbxt-o type veth peer name eth0 netns %s && "
                        "ip -n %s addr add 10.255.200.1/30 dev kbxt-o && "
                        "ip -n %s addr add fd00:6b62:200::1/126 dev kbxt-o nodad && "
                        "ip -n %s link set kbxt-o up && "
                        "ip -n %s addr add 10.255.200.2/30 dev eth0 && "
                        "ip -n %s addr add fd00:6b62:200::2/126 dev eth0 nodad && "
                        "ip -n %s link set eth0 up && "
                        "ip -n %s route add default via 10.255.200.1 && "
                        "ip -n %s -6 route add default via fd00:6b62:200::1 && "
                        "ip netns exec %s sysctl -qw net.ipv4.ip_forward=1 "
                        "net.ipv6.conf.all.forwarding=1",
                        hname, oname, hname, hname, hname, oname, oname, oname, oname, oname,
                        hname),
                     0);

    fw_config_t cfg;
    fw_config_init(&cfg);
    cfg.mode = FW_MODE_TCP;
    cfg.verify = FW_VERIFY_FULL;
    cfg.diag_fd = 2;
    cfg.port_min = KPORT_LO;
    cfg.port_max = KPORT_HI;
    assert_int_equal(fw_pool_parse("10.255.0.0/16", v6 ? "fd00:6b62::/64" : NULL, &cfg.pool), 0);
    char id[18];
    new_id(id);

    enter(H); /* the library puts the veth's host end in the caller's namespace */
    fw_netns_t *ns = NULL;
    int r = fw_netns_create(&cfg, id, 7, &ns);
    enter(real_ns);
    assert_int_equal(r, 0);
    const fw_rules_params_t *p = fw_netns_params(ns);
    char gw4[16], wk4[16], gw6[64], wk6[64];
    inet_ntop(AF_INET, &p->addrs.gw4, gw4, sizeof gw4);
    inet_ntop(AF_INET, &p->addrs.worker4, wk4, sizeof wk4);
    assert_string_equal(gw4, "10.255.0.29");
    assert_string_equal(wk4, "10.255.0.30");
    assert_int_equal(p->addrs.has_v6, v6);
    if (v6) {
        inet_ntop(AF_INET6, &p->addrs.gw6, gw6, sizeof gw6);
        inet_ntop(AF_INET6, &p->addrs.worker6, wk6, sizeof wk6);
        assert_string_equal(gw6, "fd00:6b62::1d");
        assert_string_equal(wk6, "fd00:6b62::1e");
    } else {
        /* No IPv6 pool: give both ends addresses by hand, to show IPv6 is still shut. */
        snprintf(gw6, sizeof gw6, "fd00:6b62:300::1");
        snprintf(wk6, sizeof wk6, "fd00:6b62:300::2");
        assert_int_equal(sh("ip -n %s -6 addr show dev eth0 | grep -q inet6", fw_netns_name(ns)),
                         1); /* not even a link-local address */
        assert_int_equal(sh("ip -n %s addr add %s/126 dev %s nodad && "
                            "ip -n %s addr add %s/126 dev eth0 nodad",
                            hname, gw6, fw_netns_host_ifname(ns), fw_netns_name(ns), wk6),
                         0);
    }
    const char *hif = fw_netns_host_ifname(ns);
    assert_int_equal(strlen(hif), 15);
    assert_int_equal(sh("ip -n %s link show dev %s >/dev/null 2>&1", hname, hif), 0);
    assert_int_not_equal(sh("ip link show dev %s >/dev/null 2>&1", hif), 0); /* not the host */
    _cleanup_close_ int W = ns_open(fw_netns_name(ns));
    char links[256];
    links_in(W, links, sizeof links);
    assert_string_equal(links, "lo eth0");
    assert_true(link_up_in(W, "eth0"));
    check_readback(ns);

    /* Give W a default route, as if it had one: from here on only the firewall stops it. */
    assert_int_equal(sh("ip -n %s route add default via %s && ip -n %s -6 route add default "
                        "via %s",
                        fw_netns_name(ns), gw4, fw_netns_name(ns), gw6),
                     0);

    /* Kernel-side listeners in W: both ends of the range, and ports outside it. */
    int lw[8], nl = 0;
    const uint16_t wports[] = {KPORT_LO, KPORT_HI, KPORT_HI + 1, OTHER_PORT};
    for (size_t i = 0; i < ARRAY_SIZE(wports); i++) {
        lw[nl++] = listen_in(W, AF_INET, wk4, wports[i], NULL);
        lw[nl++] = listen_in(W, AF_INET6, wk6, wports[i], NULL);
    }
    /* The gateway reaches the kernel's ports, v4 (and v6 with a v6 pool); its SYNs show up in
     * W's TCP counter, which the checks below rely on. This also resolves W's neighbour entry
     * in H, so the forwarded IPv6 attempts from O below really arrive at W. */
    uint64_t segs = tcp_in_segs(W);
    assert_reaches(H, AF_INET, wk4, KPORT_LO);
    assert_true(tcp_in_segs(W) > segs);
    assert_reaches(H, AF_INET, wk4, KPORT_HI);
    if (v6) {
        assert_reaches(H, AF_INET6, wk6, KPORT_LO);
        assert_reaches(H, AF_INET6, wk6, KPORT_HI);
    }
    usleep(200 * 1000); /* let the closed connections' last segments settle */

    /* Nothing else gets past W's INPUT: each attempt must fail AND leave W's TCP segment
     * counter as it was (the connect alone would also fail if only W's OUTPUT dropped the
     * SYN-ACK). Another host gets nowhere, though its route to W works (control below). */
    assert_dropped_in(W, H, AF_INET, wk4, KPORT_HI + 1);
    assert_dropped_in(W, H, AF_INET, wk4, OTHER_PORT);
    assert_dropped_in(W, H, AF_INET6, wk6, v6 ? KPORT_HI + 1 : KPORT_LO);
    assert_dropped_in(W, O, AF_INET, wk4, KPORT_LO);
    assert_dropped_in(W, O, AF_INET6, wk6, KPORT_LO);
    assert_dropped_in(W, O, AF_INET, wk4, OTHER_PORT);

    /* W cannot open anything: not to the gateway's other ports (its HTTP port), not even to a
     * kernel port or from a kernel source port, not to the other host, not to H's loopback. */
    int lh[10], nh = 0;
    lh[nh++] = listen_in(H, AF_INET, gw4, OTHER_PORT, NULL);
    lh[nh++] = listen_in(H, AF_INET6, gw6, OTHER_PORT, NULL);
    lh[nh++] = listen_in(H, AF_INET, gw4, KPORT_LO, NULL);
    lh[nh++] = listen_in(H, AF_INET, "127.0.0.1", OTHER_PORT, NULL);
    lh[nh++] = listen_in(H, AF_INET, "10.255.200.1", OTHER_PORT, NULL);
    lh[nh++] = listen_in(O, AF_INET, "10.255.200.2", OTHER_PORT, NULL);
    lh[nh++] = listen_in(O, AF_INET6, "fd00:6b62:200::2", OTHER_PORT, NULL);
    assert_reaches(O, AF_INET, "10.255.200.1", OTHER_PORT); /* the O-H link itself works */
    usleep(200 * 1000);
    assert_dropped_out(W, H, AF_INET, gw4, OTHER_PORT, 0);
    assert_dropped_out(W, H, AF_INET6, gw6, OTHER_PORT, 0);
    assert_dropped_out(W, H, AF_INET, gw4, KPORT_LO, 0);
    assert_dropped_out(W, H, AF_INET, gw4, OTHER_PORT, KPORT_LO + 1);
    assert_dropped_out(W, O, AF_INET, "10.255.200.2", OTHER_PORT, 0);
    assert_dropped_out(W, O, AF_INET6, "fd00:6b62:200::2", OTHER_PORT, 0);
    /* No UDP either (DNS, anything): W's OUTPUT refuses it on the spot. */
    assert_int_equal(udp_send(W, AF_INET, gw4, 53), -EPERM);
    assert_int_equal(udp_send(W, AF_INET6, gw6, 53), -EPERM);
    assert_int_equal(udp_send(W, AF_INET, "10.255.200.2", 53), -EPERM);
    assert_int_equal(udp_send(W, AF_INET, gw4, KPORT_LO), -EPERM);
    assert_blocked(W, AF_INET, "127.0.0.1", OTHER_PORT, 0); /* W's own lo: nobody there */

    /* Positive control: with W's rules flushed by hand the same attempts succeed, so each
     * refusal above was the firewall's; and verification now notices the tampering. */
    assert_int_equal(sh("for t in iptables ip6tables; do printf '*filter\\n:INPUT ACCEPT "
                        "[0:0]\\n:FORWARD ACCEPT [0:0]\\n:OUTPUT ACCEPT [0:0]\\nCOMMIT\\n' | "
                        "ip netns exec %s /usr/sbin/$t-nft-restore || exit 1; done",
                        fw_netns_name(ns)),
                     0);
    assert_int_equal(fw_netns_verify(ns, FW_VERIFY_POLICY), -EBADMSG);
    /* The dropped neighbour solicitations above left FAILED entries; start afresh. H resolves
     * W first, from its own address: the host end has no link-local address, so H cannot
     * solicit for traffic it only forwards (one more thing keeping others out of W). */
    assert_int_equal(
        sh("ip -n %s neigh flush all && ip -n %s neigh flush all", hname, fw_netns_name(ns)), 0);
    assert_reaches(H, AF_INET, wk4, OTHER_PORT);
    assert_reaches(H, AF_INET6, wk6, KPORT_LO);
    assert_reaches(O, AF_INET, wk4, KPORT_LO);
    assert_reaches(O, AF_INET6, wk6, KPORT_LO);
    assert_reaches(W, AF_INET, gw4, OTHER_PORT);
    assert_reaches(W, AF_INET6, gw6, OTHER_PORT);
    assert_reaches(W, AF_INET, "10.255.200.2", OTHER_PORT);
    assert_reaches(W, AF_INET6, "fd00:6b62:200::2", OTHER_PORT);

    for (int i = 0; i < nl; i++)
        close(lw[i]);
    for (int i = 0; i < nh; i++)
        close(lh[i]);
    enter(H);
    fw_netns_destroy(&ns);
    enter(real_ns);
    assert_null(ns);
    /* The host end went at once, with the pin. */
    assert_int_not_equal(sh("ip -n %s link show dev kbox-h%.9s >/dev/null 2>&1", hname, id + 1), 0);
    assert_int_equal(leftovers(), 0);
    assert_int_equal(sh("ip netns del %s && ip netns del %s", hname, oname), 0);
}

static void test_tcp_v4_v6(void **state) {
    tcp_mode_checks(true);
}

static void test_tcp_v4_only(void **state) {
    tcp_mode_checks(false);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Create/destroy n times; print create timings; nothing may be left. */
static void cycles(const char *label, fw_config_t *cfg, unsigned n) {
    uint64_t *t = calloc(n, sizeof *t);
    assert_non_null(t);
    uint64_t destroy_total = 0;
    for (unsigned i = 0; i < n; i++) {
        char id[18];
        new_id(id);
        fw_netns_t *ns = NULL;
        uint64_t t0 = now_mono_us();
        int r = fw_netns_create(cfg, id, i % 64, &ns);
        t[i] = now_mono_us() - t0;
        if (r != 0)
            fail_msg("%s: create #%u: %s", label, i, strerror(-r));
        t0 = now_mono_us();
        assert_int_equal(fw_netns_remove(ns), 0);
        fw_netns_destroy(&ns);
        destroy_total += now_mono_us() - t0;
    }
    qsort(t, n, sizeof *t, cmp_u64);
    size_t median = n / 2, p90 = (size_t)n * 9 / 10;
    double median_ms = (double)t[median] / 1000.0, p90_ms = (double)t[p90] / 1000.0;
    double max_ms = (double)t[n - 1] / 1000.0, destroy_ms = (double)destroy_total / 1000.0 / n;
    printf("[timing] %-34s n=%-3u create median %6.1f ms  p90 %6.1f ms  max %6.1f ms  "
           "destroy mean %5.2f ms\n",
           label, n, median_ms, p90_ms, max_ms, destroy_ms);
    fflush(stdout);
    free(t);
}

static void test_cycles_200(void **state) {
    assert_int_equal(geteuid(), 0);
    unsigned fds = open_fds();
    fw_config_t cfg;
    fw_config_init(&cfg); /* the product's defaults: nft, policy read-back */
    cycles("ipc nft verify=policy (default)", &cfg, 200);
    assert_int_equal(leftovers(), 0);
    assert_int_equal(open_fds(), fds);

    cfg.verify = FW_VERIFY_NONE;
    cycles("ipc nft verify=none", &cfg, 50);
    cfg.verify = FW_VERIFY_FULL;
    cycles("ipc nft verify=full", &cfg, 50);
    cfg.backend = FW_BACKEND_LEGACY;
    cfg.verify = FW_VERIFY_POLICY;
    cycles("ipc legacy verify=policy", &cfg, 50);

    /* TCP mode, with a test "host" namespace. */
    char hname[16];
    test_ns_add(hname, sizeof hname, 't');
    _cleanup_close_ int H = ns_open(hname);
    fw_config_init(&cfg);
    cfg.mode = FW_MODE_TCP;
    assert_int_equal(fw_pool_parse("10.255.0.0/16", "fd00:6b62::/64", &cfg.pool), 0);
    enter(H);
    cycles("tcp v4+v6 nft verify=policy", &cfg, 50);
    assert_int_equal(host_links(), 0);
    enter(real_ns);
    closep(&H);
    assert_int_equal(sh("ip netns del %s", hname), 0);
    assert_int_equal(leftovers(), 0);
    assert_int_equal(open_fds(), fds);
}

typedef struct {
    unsigned n;
    int err;
} conc_job_t;

static void *conc_worker(void *arg) {
    conc_job_t *job = arg;
    fw_config_t cfg;
    fw_config_init(&cfg);
    for (unsigned i = 0; i < job->n && job->err == 0; i++) {
        char id[18], rnd[8];
        random_hex(rnd, 4);
        /* new_id() asserts, which is not for threads; same format. */
        snprintf(id, sizeof id, "w%s%05x%.7s", tag,
                 __atomic_fetch_add(&id_seq, 1, __ATOMIC_RELAXED) & 0xfffff, rnd);
        fw_netns_t *ns = NULL;
        job->err = fw_netns_create(&cfg, id, 0, &ns);
        if (job->err == 0)
            job->err = fw_netns_remove(ns);
        fw_netns_destroy(&ns);
    }
    return NULL;
}

/* The gateway calls in from several work threads at once. */
static void test_concurrent(void **state) {
    assert_int_equal(geteuid(), 0);
    unsigned fds = open_fds();
    pthread_t th[4];
    conc_job_t jobs[4];
    uint64_t t0 = now_mono_us();
    for (int i = 0; i < 4; i++) {
        jobs[i] = (conc_job_t){.n = 25};
        assert_int_equal(pthread_create(&th[i], NULL, conc_worker, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        if (jobs[i].err)
            fail_msg("thread %d: %s", i, strerror(-jobs[i].err));
    }
    printf("[timing] 4 threads x 25 ipc create+remove: %.1f ms total, %.1f ms per worker\n",
           (now_mono_us() - t0) / 1000.0, (now_mono_us() - t0) / 1000.0 / 100);
    assert_int_equal(leftovers(), 0);
    assert_int_equal(open_fds(), fds);
}

/* A gateway killed with -9 leaves pinned namespaces and veths; the next start sweeps them. */
static void test_sweep_after_crash(void **state) {
    assert_int_equal(geteuid(), 0);
    char hname[16];
    test_ns_add(hname, sizeof hname, 's');
    _cleanup_close_ int H = ns_open(hname);
    int pfd[2];
    assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
    char ids[4][18];
    for (int i = 0; i < 4; i++)
        new_id(ids[i]);
    enter(H);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        fw_config_t cfg;
        fw_config_init(&cfg);
        for (int i = 0; i < 4; i++) {
            cfg.mode = i < 2 ? FW_MODE_IPC : FW_MODE_TCP;
            fw_netns_t *ns = NULL;
            if (fw_netns_create(&cfg, ids[i], 10 + i, &ns) != 0)
                _exit(1);
        }
        (void)!write(pfd[1], "k", 1);
        raise(SIGKILL); /* no cleanup: the handles die with us */
        _exit(2);
    }
    close(pfd[1]);
    char c = 0;
    ssize_t got = read(pfd[0], &c, 1);
    close(pfd[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_int_equal(got, 1);
    assert_true(WIFSIGNALED(st));

    assert_int_equal(leftovers(), 4 * 2); /* 4 pins, each mounted */
    assert_int_equal(host_links(), 2);
    fw_config_t cfg;
    fw_config_init(&cfg);
    /* A sweep for another prefix touches nothing of ours. */
    unsigned removed = 99;
    assert_int_equal(fw_sweep(&cfg, "w0000000000", NULL, 0, &removed), 0);
    assert_int_equal(removed, 0);
    /* Keep one TCP worker (as if adopted); everything else goes. */
    const char *keep[] = {ids[3]};
    assert_int_equal(fw_sweep(&cfg, prefix, keep, 1, &removed), 0);
    assert_int_equal(removed, 3 + 1); /* three pins, one veth */
    assert_int_equal(leftovers(), 2);
    assert_int_equal(host_links(), 1);
    assert_int_equal(fw_sweep(&cfg, prefix, NULL, 0, &removed), 0);
    assert_int_equal(removed, 2);
    assert_int_equal(leftovers(), 0);
    assert_int_equal(host_links(), 0);
    assert_int_equal(fw_sweep(&cfg, prefix, NULL, 0, &removed), 0);
    assert_int_equal(removed, 0);
    assert_int_equal(fw_sweep(&cfg, "x", NULL, 0, &removed), -EINVAL);
    assert_int_equal(fw_sweep(&cfg, "w/..", NULL, 0, &removed), -EINVAL);
    enter(real_ns);
    assert_int_equal(sh("ip netns del %s", hname), 0);
}

/* The operator script: show, apply, sweep. */
static void test_script(void **state) {
    assert_int_equal(geteuid(), 0);
    char hname[16], aname[16];
    test_ns_add(hname, sizeof hname, 'x');
    _cleanup_close_ int H = ns_open(hname);
    fw_config_t cfg;
    fw_config_init(&cfg);
    char id1[18], id2[18];
    new_id(id1);
    new_id(id2);
    fw_netns_t *a = NULL, *b = NULL;
    assert_int_equal(fw_netns_create(&cfg, id1, 0, &a), 0);
    cfg.mode = FW_MODE_TCP;
    enter(H);
    int r = fw_netns_create(&cfg, id2, 1, &b);
    enter(real_ns);
    assert_int_equal(r, 0);

    _cleanup_free_ char *list = sh_out("sh %s show", FW_SCRIPT);
    assert_non_null(strstr(list, fw_netns_name(a)));
    assert_non_null(strstr(list, fw_netns_name(b)));
    _cleanup_free_ char *one = sh_out("sh %s show %s", FW_SCRIPT, fw_netns_name(b));
    assert_non_null(strstr(one, "eth0"));
    assert_non_null(strstr(one, "--dport 50000:50004"));
    assert_non_null(strstr(one, ":OUTPUT DROP"));

    /* apply: the script loads into a plain `ip netns add` namespace what the library renders. */
    test_ns_add(aname, sizeof aname, 'a');
    assert_int_equal(sh("sh %s apply %s tcp --gw4 10.255.0.5 --worker4 10.255.0.6 --gw6 "
                        "fd00:6b62::5 --worker6 fd00:6b62::6",
                        FW_SCRIPT, aname),
                     0);
    fw_rules_params_t p = {.mode = FW_MODE_TCP, .port_min = 50000, .port_max = 50004};
    strcpy(p.ns_ifname, "eth0");
    inet_pton(AF_INET, "10.255.0.5", &p.addrs.gw4);
    inet_pton(AF_INET, "10.255.0.6", &p.addrs.worker4);
    p.addrs.has_v6 = true;
    inet_pton(AF_INET6, "fd00:6b62::5", &p.addrs.gw6);
    inet_pton(AF_INET6, "fd00:6b62::6", &p.addrs.worker6);
    const char *save[] = {"iptables-nft-save", "ip6tables-nft-save"};
    for (int i = 0; i < 2; i++) {
        char expected[FW_RULES_MAX];
        assert_true(
            fw_rules_render(&p, i ? FW_FAMILY_V6 : FW_FAMILY_V4, expected, sizeof expected) > 0);
        _cleanup_free_ char *saved = sh_out("ip netns exec %s %s", aname, save[i]);
        assert_int_equal(fw_rules_compare(expected, saved, FW_VERIFY_FULL), 0);
    }
    assert_int_equal(sh("ip netns del %s", aname), 0);

    /* sweep, run in H so it also finds the host end there (nsenter: no new mount namespace). */
    assert_int_equal(sh("nsenter --net=/run/netns/%s sh %s sweep --prefix %s >/dev/null", hname,
                        FW_SCRIPT, prefix),
                     0);
    assert_int_equal(leftovers(), 0);
    enter(H);
    assert_int_equal(host_links(), 0);
    fw_netns_destroy(&b); /* already swept: removal of what is gone is fine */
    enter(real_ns);
    fw_netns_destroy(&a);
    assert_int_equal(sh("ip netns del %s", hname), 0);
}

static void test_nothing_left(void **state) {
    assert_int_equal(leftovers(), 0);
    assert_int_equal(host_links(), 0);
    _cleanup_free_ char *list = sh_out("ip netns list");
    char want[16];
    snprintf(want, sizeof want, "kbxt%s", tag);
    if (strstr(list, want))
        fail_msg("test namespaces left: %s", list);
}

static int group_setup(void **state) {
    char rnd[6];
    random_hex(rnd, 2);
    snprintf(tag, sizeof tag, "%.4s", rnd);
    snprintf(prefix, sizeof prefix, "w%s", tag);
    real_ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("[info] run tag %s\n", tag);
    return real_ns >= 0 ? 0 : -1;
}

/* After each test, failed or not: nothing of this run stays behind to skew the next test's
 * counts (test_nothing_left checks the passing path leaves nothing by itself). */
static int test_teardown(void **state) {
    if (geteuid() != 0)
        return 0;
    if (real_ns >= 0)
        setns(real_ns, CLONE_NEWNET);
    fw_config_t cfg;
    fw_config_init(&cfg);
    (void)fw_sweep(&cfg, prefix, NULL, 0, NULL);
    (void)sh("for n in $(ip netns list | grep -o '^kbxt%s[a-z]'); do ip netns del $n; done", tag);
    return 0;
}

int main(void) {
#define T(f) cmocka_unit_test_teardown(f, test_teardown)
    /* Each test checks its own leftovers on success; test_nothing_left, last, checks that the
     * teardowns left nothing either. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_root_required),
        T(test_ipc_nft),
        T(test_ipc_legacy),
        T(test_tcp_v4_v6),
        T(test_tcp_v4_only),
        T(test_cycles_200),
        T(test_concurrent),
        T(test_sweep_after_crash),
        T(test_script),
        cmocka_unit_test(test_nothing_left),
    };
    return cmocka_run_group_tests(tests, group_setup, test_teardown);
}
