/* The pure half of kbox_firewall: rule rendering from the embedded templates, read-back
 * comparison, the TCP address pool and the naming of namespaces and interfaces. Nothing here
 * touches the system, so the unit tests pin it byte for byte. Rendering is strict on purpose:
 * the output is fed to iptables-restore as root, so every value is validated and printed from
 * binary form, and a template naming an unknown variable is an error rather than a silent
 * blank. */
#include "firewall.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw_rules_tmpl.h"
#include "util.h"

void fw_config_init(fw_config_t *cfg) {
    if (!cfg)
        return;
    *cfg = (fw_config_t){
        .netns_dir = FW_NETNS_DIR,
        .backend = FW_BACKEND_NFT,
        .verify = FW_VERIFY_POLICY,
        .exec_timeout_ms = 5000,
        .diag_fd = -1,
        .mode = FW_MODE_IPC,
        .port_min = 50000,
        .port_max = 50004,
    };
    /* 10.255.0.0/16: 16384 workers; cannot fail. */
    (void)fw_pool_parse("10.255.0.0/16", NULL, &cfg->pool);
}

/* Interface names go into rules verbatim, so only characters iptables takes literally: no '+'
 * (a wildcard), no '!' , no whitespace or newlines. */
static bool ifname_valid(const char *s) {
    size_t n = strnlen(s, FW_IFNAME_MAX);
    if (n == 0 || n >= FW_IFNAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return false;
    return s[0] != '-' && s[0] != '.';
}

static bool in6_is_zero(const struct in6_addr *a) {
    static const struct in6_addr zero;
    return memcmp(a, &zero, sizeof zero) == 0;
}

static int params_check(const fw_rules_params_t *p, fw_family_t family) {
    if (!p || (family != FW_FAMILY_V4 && family != FW_FAMILY_V6))
        return -EINVAL;
    if (p->mode == FW_MODE_IPC)
        return 0;
    if (p->mode != FW_MODE_TCP)
        return -EINVAL;
    if (!ifname_valid(p->ns_ifname) || p->port_min == 0 || p->port_min > p->port_max)
        return -EINVAL;
    if (family == FW_FAMILY_V4)
        return p->addrs.gw4.s_addr != 0 && p->addrs.worker4.s_addr != 0 &&
                       p->addrs.gw4.s_addr != p->addrs.worker4.s_addr
                   ? 0
                   : -EINVAL;
    if (!p->addrs.has_v6)
        return 0;
    return !in6_is_zero(&p->addrs.gw6) && !in6_is_zero(&p->addrs.worker6) &&
                   memcmp(&p->addrs.gw6, &p->addrs.worker6, sizeof p->addrs.gw6) != 0
               ? 0
               : -EINVAL;
}

typedef struct {
    const char *name;
    const char *value;
} tmpl_var_t;

/* Expand @NAME@ from vars into buf. Unknown or unterminated names are -EINVAL so a typo in a
 * template fails the unit tests instead of reaching iptables. */
static int tmpl_expand(const char *tmpl, const tmpl_var_t *vars, size_t n_vars, char *buf,
                       size_t len) {
    size_t o = 0;
    for (const char *s = tmpl; *s;) {
        const char *chunk = s;
        size_t chunk_len;
        if (*s == '@') {
            const char *end = strchr(s + 1, '@');
            if (!end)
                return -EINVAL;
            size_t name_len = (size_t)(end - s - 1);
            chunk = NULL;
            for (size_t i = 0; i < n_vars; i++)
                if (strlen(vars[i].name) == name_len && !strncmp(vars[i].name, s + 1, name_len))
                    chunk = vars[i].value;
            if (!chunk)
                return -EINVAL;
            chunk_len = strlen(chunk);
            s = end + 1;
        } else {
            chunk_len = strcspn(s, "@");
            s += chunk_len;
        }
        if (chunk_len >= len - o)
            return -ENOBUFS;
        memcpy(buf + o, chunk, chunk_len);
        o += chunk_len;
    }
    buf[o] = '\0';
    return (int)o;
}

int fw_rules_render(const fw_rules_params_t *p, fw_family_t family, char *buf, size_t len) {
    if (!buf || len == 0)
        return -EINVAL;
    int r = params_check(p, family);
    if (r < 0)
        return r;
    bool v4 = family == FW_FAMILY_V4;
    if (p->mode == FW_MODE_IPC || (!v4 && !p->addrs.has_v6))
        return tmpl_expand(v4 ? fw_tmpl_ipc_v4 : fw_tmpl_ipc_v6, NULL, 0, buf, len);

    char gw[INET6_ADDRSTRLEN], worker[INET6_ADDRSTRLEN], ports[16];
    int af = v4 ? AF_INET : AF_INET6;
    const void *gw_bin = v4 ? (const void *)&p->addrs.gw4 : (const void *)&p->addrs.gw6;
    const void *wk_bin = v4 ? (const void *)&p->addrs.worker4 : (const void *)&p->addrs.worker6;
    if (!inet_ntop(af, gw_bin, gw, sizeof gw) || !inet_ntop(af, wk_bin, worker, sizeof worker))
        return -EINVAL;
    /* iptables-save prints a one-port range as the port alone; render what it will print. */
    if (p->port_min == p->port_max)
        r = xsnprintf(ports, sizeof ports, "%u", (unsigned)p->port_min);
    else
        r = xsnprintf(ports, sizeof ports, "%u:%u", (unsigned)p->port_min, (unsigned)p->port_max);
    if (r < 0)
        return r;
    const tmpl_var_t vars[] = {
        {"IFNAME", p->ns_ifname},
        {"GW", gw},
        {"WORKER", worker},
        {"PORTS", ports},
    };
    return tmpl_expand(v4 ? fw_tmpl_tcp_v4 : fw_tmpl_tcp_v6, vars, ARRAY_SIZE(vars), buf, len);
}

/* Next significant line of a rules text, normalized: no comments or blank lines, trailing
 * whitespace cut, and chain lines (":INPUT DROP [12:345]") cut after the policy because legacy
 * iptables-save prints live counters there. Returns false at the end. */
static bool next_line(const char **cursor, char *out, size_t out_len) {
    const char *s = *cursor;
    while (*s) {
        const char *eol = strchr(s, '\n');
        size_t n = eol ? (size_t)(eol - s) : strlen(s);
        const char *line = s;
        s = eol ? eol + 1 : s + n;
        while (n > 0 && isspace((unsigned char)line[n - 1]))
            n--;
        if (n == 0 || line[0] == '#')
            continue;
        if (line[0] == ':') {
            const char *sp = memchr(line, ' ', n);
            const char *sp2 = sp ? memchr(sp + 1, ' ', n - (size_t)(sp + 1 - line)) : NULL;
            if (sp2)
                n = (size_t)(sp2 - line);
        }
        if (n >= out_len)
            n = out_len - 1; /* over-long lines still compare, on their prefix and length */
        memcpy(out, line, n);
        out[n] = '\0';
        *cursor = s;
        return true;
    }
    *cursor = s;
    return false;
}

/* Is ":CHAIN POLICY" (normalized) inside the *filter table of text? */
static bool has_filter_policy(const char *text, const char *policy_line) {
    char line[512];
    bool in_filter = false;
    for (const char *c = text; next_line(&c, line, sizeof line);) {
        if (line[0] == '*')
            in_filter = streq(line, "*filter");
        else if (in_filter && streq(line, policy_line))
            return true;
    }
    return false;
}

int fw_rules_compare(const char *expected, const char *saved, fw_verify_t level) {
    if (!expected || !saved)
        return -EINVAL;
    char a[512], b[512];
    if (level == FW_VERIFY_NONE)
        return 0;
    if (level == FW_VERIFY_POLICY) {
        bool in_filter = false;
        unsigned policies = 0;
        for (const char *c = expected; next_line(&c, a, sizeof a);) {
            if (a[0] == '*')
                in_filter = streq(a, "*filter");
            else if (in_filter && a[0] == ':') {
                if (!has_filter_policy(saved, a))
                    return -EBADMSG;
                policies++;
            }
        }
        return policies > 0 ? 0 : -EINVAL;
    }
    if (level != FW_VERIFY_FULL)
        return -EINVAL;
    const char *ca = expected, *cb = saved;
    for (;;) {
        bool more_a = next_line(&ca, a, sizeof a);
        bool more_b = next_line(&cb, b, sizeof b);
        if (!more_a && !more_b)
            return 0;
        if (more_a != more_b || !streq(a, b))
            return -EBADMSG;
    }
}

/* "addr/len" into binary; host bits must be zero. */
static int cidr_parse(const char *cidr, int af, void *ret_addr, uint8_t *ret_len) {
    char addr[INET6_ADDRSTRLEN];
    const char *slash = strchr(cidr, '/');
    if (!slash || (size_t)(slash - cidr) >= sizeof addr)
        return -EINVAL;
    memcpy(addr, cidr, (size_t)(slash - cidr));
    addr[slash - cidr] = '\0';
    unsigned char bin[16];
    if (inet_pton(af, addr, bin) != 1)
        return -EINVAL;
    const char *digits = slash + 1;
    if (!isdigit((unsigned char)digits[0]) || strlen(digits) > 3)
        return -EINVAL;
    char *end;
    unsigned long len = strtoul(digits, &end, 10);
    unsigned bits = af == AF_INET ? 32 : 128;
    if (*end || len > bits)
        return -EINVAL;
    for (unsigned i = (unsigned)len; i < bits; i++)
        if (bin[i / 8] & (0x80 >> (i % 8)))
            return -EINVAL;
    memcpy(ret_addr, bin, bits / 8);
    *ret_len = (uint8_t)len;
    return 0;
}

/* Whether the block overlaps ::ffff:0:0/96: IPv4-mapped addresses are IPv4 on the wire, never
 * a link's IPv6 (and the gateway's registry keeps IPv4 claims there). */
static bool in6_block_overlaps_mapped(const struct in6_addr *base, uint8_t prefix) {
    static const struct in6_addr lo = {{{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0}}};
    static const struct in6_addr hi = {
        {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}};
    struct in6_addr last = *base;
    for (unsigned bit = prefix; bit < 128; bit++)
        last.s6_addr[bit / 8] |= (uint8_t)(0x80u >> (bit % 8));
    return memcmp(base, &hi, sizeof hi) <= 0 && memcmp(&lo, &last, sizeof lo) <= 0;
}

int fw_pool_parse(const char *cidr4, const char *cidr6, fw_pool_t *ret) {
    if (!cidr4 || !ret)
        return -EINVAL;
    fw_pool_t pool = {0};
    if (cidr_parse(cidr4, AF_INET, &pool.base4, &pool.prefix4) < 0 || pool.prefix4 > 30)
        return -EINVAL;
    if (cidr6) {
        if (cidr_parse(cidr6, AF_INET6, &pool.base6, &pool.prefix6) < 0 || pool.prefix6 > 126 ||
            in6_block_overlaps_mapped(&pool.base6, pool.prefix6))
            return -EINVAL;
        pool.has_v6 = true;
    }
    *ret = pool;
    return 0;
}

uint32_t fw_pool_size(const fw_pool_t *pool) {
    if (!pool || pool->prefix4 > 30 || (pool->has_v6 && pool->prefix6 > 126))
        return 0;
    uint64_t n = 1ull << (30 - pool->prefix4);
    if (pool->has_v6 && 126 - pool->prefix6 < 32)
        n = n < (1ull << (126 - pool->prefix6)) ? n : (1ull << (126 - pool->prefix6));
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

/* base + off for an IPv6 address, big-endian with carry. */
static void in6_add(struct in6_addr *a, uint64_t off) {
    for (int i = 15; i >= 0 && off; i--) {
        uint64_t sum = (uint64_t)a->s6_addr[i] + (off & 0xff);
        a->s6_addr[i] = (uint8_t)sum;
        off = (off >> 8) + (sum >> 8);
    }
}

int fw_pool_addrs(const fw_pool_t *pool, uint32_t index, fw_link_addrs_t *ret) {
    if (!pool || !ret)
        return -EINVAL;
    uint32_t size = fw_pool_size(pool);
    if (size == 0)
        return -EINVAL;
    if (index >= size)
        return -ERANGE;
    fw_link_addrs_t a = {0};
    uint32_t net = ntohl(pool->base4.s_addr) + index * 4u;
    a.gw4.s_addr = htonl(net + 1);
    a.worker4.s_addr = htonl(net + 2);
    if (pool->has_v6) {
        a.has_v6 = true;
        a.gw6 = a.worker6 = pool->base6;
        in6_add(&a.gw6, (uint64_t)index * 4 + 1);
        in6_add(&a.worker6, (uint64_t)index * 4 + 2);
    }
    *ret = a;
    return 0;
}

bool fw_worker_id_valid(const char *worker_id) {
    if (!worker_id || worker_id[0] != 'w')
        return false;
    size_t n = strnlen(worker_id + 1, 33);
    if (n < 9 || n > 32)
        return false;
    for (size_t i = 1; i <= n; i++)
        if (!isdigit((unsigned char)worker_id[i]) && !(worker_id[i] >= 'a' && worker_id[i] <= 'f'))
            return false;
    return true;
}

int fw_names(const char *worker_id, char ret_netns[FW_NETNS_NAME_MAX],
             char ret_host_if[FW_IFNAME_MAX]) {
    if (!fw_worker_id_valid(worker_id))
        return -EINVAL;
    char ns[FW_NETNS_NAME_MAX], hif[FW_IFNAME_MAX];
    int r = xsnprintf(ns, sizeof ns, "%s%s", FW_NETNS_PREFIX, worker_id);
    if (r < 0)
        return r;
    r = xsnprintf(hif, sizeof hif, "%s%.9s", FW_HOST_IF_PREFIX, worker_id + 1);
    if (r < 0)
        return r;
    if (ret_netns)
        memcpy(ret_netns, ns, sizeof ns);
    if (ret_host_if)
        memcpy(ret_host_if, hif, sizeof hif);
    return 0;
}
