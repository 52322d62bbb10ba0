/* Unit tests for the pure half of kbox_firewall: the rule text for every mode and family
 * (pinned line by line), parameter validation that keeps anything from being injected into
 * iptables-restore's input, the read-back comparison, the TCP address pool arithmetic, worker
 * id and interface naming, and that the operator script renders exactly what the library
 * renders from the same rule files. No privileges needed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "firewall.h"
#include "util.h"

static fw_rules_params_t tcp_params(bool v6) {
    fw_rules_params_t p = {.mode = FW_MODE_TCP, .port_min = 50000, .port_max = 50004};
    strcpy(p.ns_ifname, "eth0");
    inet_pton(AF_INET, "10.255.0.5", &p.addrs.gw4);
    inet_pton(AF_INET, "10.255.0.6", &p.addrs.worker4);
    if (v6) {
        p.addrs.has_v6 = true;
        inet_pton(AF_INET6, "fd00:6b62::5", &p.addrs.gw6);
        inet_pton(AF_INET6, "fd00:6b62::6", &p.addrs.worker6);
    }
    return p;
}

/* The rule lines of a text: comments and blank lines dropped. */
static char *rule_lines(const char *text) {
    char *out = calloc(1, strlen(text) + 1);
    assert_non_null(out);
    for (const char *s = text; *s;) {
        const char *eol = strchr(s, '\n');
        size_t n = eol ? (size_t)(eol - s) + 1 : strlen(s);
        if (s[0] != '#' && s[0] != '\n')
            strncat(out, s, n);
        s += n;
    }
    return out;
}

static char *render(const fw_rules_params_t *p, fw_family_t f) {
    char *buf = malloc(FW_RULES_MAX);
    assert_non_null(buf);
    int n = fw_rules_render(p, f, buf, FW_RULES_MAX);
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(buf));
    assert_null(strchr(buf, '@')); /* every placeholder substituted, comments included */
    assert_null(strchr(buf, '\r'));
    return buf;
}

static char *slurp(const char *path) {
    char *text = NULL;
    assert_int_equal(read_file_bounded(path, 65536, &text, NULL), 0);
    return text;
}

static void test_config_defaults(void **state) {
    fw_config_t c;
    memset(&c, 0xa5, sizeof c);
    fw_config_init(&c);
    assert_string_equal(c.netns_dir, "/run/netns");
    assert_int_equal(c.backend, FW_BACKEND_NFT);
    assert_int_equal(c.verify, FW_VERIFY_POLICY);
    assert_int_equal(c.mode, FW_MODE_IPC);
    assert_int_equal(c.diag_fd, -1);
    assert_true(c.exec_timeout_ms > 0);
    assert_int_equal(c.port_min, 50000);
    assert_int_equal(c.port_max, 50004);
    assert_int_equal(fw_pool_size(&c.pool), 16384);
    assert_false(c.pool.has_v6);
    fw_config_init(NULL); /* NULL-safe */
}

static void test_render_ipc_is_the_rule_files(void **state) {
    fw_rules_params_t p = {.mode = FW_MODE_IPC}; /* ipc ignores ifname, addresses and ports */
    _cleanup_free_ char *v4 = render(&p, FW_FAMILY_V4);
    _cleanup_free_ char *v6 = render(&p, FW_FAMILY_V6);
    _cleanup_free_ char *f4 = slurp(FW_RULES_DIR "/ipc.v4.rules");
    _cleanup_free_ char *f6 = slurp(FW_RULES_DIR "/ipc.v6.rules");
    assert_string_equal(v4, f4);
    assert_string_equal(v6, f6);
    _cleanup_free_ char *lines = rule_lines(v4);
    assert_string_equal(lines, "*filter\n"
                               ":INPUT DROP [0:0]\n"
                               ":FORWARD DROP [0:0]\n"
                               ":OUTPUT DROP [0:0]\n"
                               "-A INPUT -i lo -j ACCEPT\n"
                               "-A OUTPUT -o lo -j ACCEPT\n"
                               "COMMIT\n");
    _cleanup_free_ char *lines6 = rule_lines(v6);
    assert_string_equal(lines6, lines);
}

static void test_render_tcp_v4(void **state) {
    fw_rules_params_t p = tcp_params(false);
    _cleanup_free_ char *v4 = render(&p, FW_FAMILY_V4);
    _cleanup_free_ char *lines = rule_lines(v4);
    assert_string_equal(lines, "*filter\n"
                               ":INPUT DROP [0:0]\n"
                               ":FORWARD DROP [0:0]\n"
                               ":OUTPUT DROP [0:0]\n"
                               "-A INPUT -i lo -j ACCEPT\n"
                               "-A INPUT -s 10.255.0.5/32 -d 10.255.0.6/32 -i eth0 -p tcp -m tcp "
                               "--dport 50000:50004 -j ACCEPT\n"
                               "-A OUTPUT -o lo -j ACCEPT\n"
                               "-A OUTPUT -s 10.255.0.6/32 -d 10.255.0.5/32 -o eth0 -p tcp -m tcp "
                               "--sport 50000:50004 -m conntrack --ctstate ESTABLISHED -j ACCEPT\n"
                               "COMMIT\n");
    /* Without an IPv6 pair, IPv6 is exactly the ipc (lo only) rule set. */
    _cleanup_free_ char *v6 = render(&p, FW_FAMILY_V6);
    _cleanup_free_ char *f6 = slurp(FW_RULES_DIR "/ipc.v6.rules");
    assert_string_equal(v6, f6);
}

static void test_render_tcp_v6(void **state) {
    fw_rules_params_t p = tcp_params(true);
    _cleanup_free_ char *v6 = render(&p, FW_FAMILY_V6);
    _cleanup_free_ char *lines = rule_lines(v6);
    assert_string_equal(
        lines, "*filter\n"
               ":INPUT DROP [0:0]\n"
               ":FORWARD DROP [0:0]\n"
               ":OUTPUT DROP [0:0]\n"
               "-A INPUT -i lo -j ACCEPT\n"
               "-A INPUT -s fd00:6b62::5/128 -d fd00:6b62::6/128 -i eth0 -p tcp -m tcp "
               "--dport 50000:50004 -j ACCEPT\n"
               "-A INPUT -i eth0 -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j "
               "ACCEPT\n"
               "-A INPUT -i eth0 -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j "
               "ACCEPT\n"
               "-A OUTPUT -o lo -j ACCEPT\n"
               "-A OUTPUT -s fd00:6b62::6/128 -d fd00:6b62::5/128 -o eth0 -p tcp -m tcp "
               "--sport 50000:50004 -m conntrack --ctstate ESTABLISHED -j ACCEPT\n"
               "-A OUTPUT -o eth0 -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j "
               "ACCEPT\n"
               "-A OUTPUT -o eth0 -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j "
               "ACCEPT\n"
               "COMMIT\n");
    /* The IPv4 text does not change with IPv6 on. */
    fw_rules_params_t p4 = tcp_params(false);
    _cleanup_free_ char *a = render(&p, FW_FAMILY_V4);
    _cleanup_free_ char *b = render(&p4, FW_FAMILY_V4);
    assert_string_equal(a, b);
}

static void test_render_single_port_and_ifname(void **state) {
    fw_rules_params_t p = tcp_params(false);
    p.port_min = p.port_max = 5555;
    strcpy(p.ns_ifname, "kbox-c0123456.7");
    _cleanup_free_ char *v4 = render(&p, FW_FAMILY_V4);
    /* iptables-save prints a one-port range as the port alone. */
    assert_non_null(strstr(v4, " -i kbox-c0123456.7 -p tcp -m tcp --dport 5555 -j ACCEPT\n"));
    assert_non_null(strstr(v4, "--sport 5555 -m conntrack"));
    assert_null(strstr(v4, "5555:5555"));
}

static void test_render_rejects(void **state) {
    char buf[FW_RULES_MAX];
    const char *bad_ifnames[] = {"",    "eth0+", "eth\n0", "-eth0", ".x", "a b",    "eth0!",
                                 "e\"", "eth0/", "e;x",    "e\\x",  "é",  "eth0\t", "@GW@"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_ifnames); i++) {
        fw_rules_params_t p = tcp_params(true);
        memset(p.ns_ifname, 0, sizeof p.ns_ifname);
        memcpy(p.ns_ifname, bad_ifnames[i], strlen(bad_ifnames[i]) + 1);
        assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, buf, sizeof buf), -EINVAL);
        assert_int_equal(fw_rules_render(&p, FW_FAMILY_V6, buf, sizeof buf), -EINVAL);
    }
    fw_rules_params_t p = tcp_params(true);
    memset(p.ns_ifname, 'a', sizeof p.ns_ifname); /* 16 characters: unterminated */
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, buf, sizeof buf), -EINVAL);

    p = tcp_params(true);
    p.port_min = 0;
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, buf, sizeof buf), -EINVAL);
    p = tcp_params(true);
    p.port_min = 6000, p.port_max = 5999;
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, buf, sizeof buf), -EINVAL);
    p = tcp_params(true);
    p.addrs.worker4 = p.addrs.gw4;
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, buf, sizeof buf), -EINVAL);
    p = tcp_params(true);
    p.addrs.gw4.s_addr = 0;
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, buf, sizeof buf), -EINVAL);
    p = tcp_params(true);
    p.addrs.worker6 = p.addrs.gw6;
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V6, buf, sizeof buf), -EINVAL);
    assert_true(fw_rules_render(&p, FW_FAMILY_V4, buf, sizeof buf) > 0);
    p = tcp_params(true);
    memset(&p.addrs.gw6, 0, sizeof p.addrs.gw6);
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V6, buf, sizeof buf), -EINVAL);

    p = tcp_params(true);
    p.mode = (fw_mode_t)7;
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, buf, sizeof buf), -EINVAL);
    p = tcp_params(true);
    assert_int_equal(fw_rules_render(&p, (fw_family_t)5, buf, sizeof buf), -EINVAL);
    assert_int_equal(fw_rules_render(NULL, FW_FAMILY_V4, buf, sizeof buf), -EINVAL);
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, NULL, 10), -EINVAL);
    assert_int_equal(fw_rules_render(&p, FW_FAMILY_V4, buf, 0), -EINVAL);
}

/* Every buffer size either fits the whole text or is -ENOBUFS, never a byte past len. */
static void test_render_buffer_bounds(void **state) {
    fw_rules_params_t params[] = {tcp_params(true), {.mode = FW_MODE_IPC}};
    for (size_t k = 0; k < ARRAY_SIZE(params); k++)
        for (int fam = 4; fam <= 6; fam += 2) {
            char full[FW_RULES_MAX];
            int n = fw_rules_render(&params[k], (fw_family_t)fam, full, sizeof full);
            assert_true(n > 0);
            for (size_t len = 1; len <= (size_t)n + 1; len++) {
                char buf[FW_RULES_MAX + 16];
                memset(buf, 'Z', sizeof buf);
                int r = fw_rules_render(&params[k], (fw_family_t)fam, buf, len);
                if (len <= (size_t)n)
                    assert_int_equal(r, -ENOBUFS);
                else
                    assert_int_equal(r, n), assert_string_equal(buf, full);
                for (size_t i = len; i < sizeof buf; i++)
                    assert_int_equal(buf[i], 'Z');
            }
        }
}

static const char saved_ok[] = "# Generated by iptables-save v1.8.9 on Sun Nov 22 02:00:20 2026\n"
                               "*filter\n"
                               ":INPUT DROP [12:3456]\n"
                               ":FORWARD DROP [0:0]\n"
                               ":OUTPUT DROP [7:89]\n"
                               "-A INPUT -i lo -j ACCEPT\n"
                               "-A OUTPUT -o lo -j ACCEPT\n"
                               "COMMIT\n"
                               "# Completed on Sun Nov 22 02:00:20 2026\n";

static void test_compare(void **state) {
    fw_rules_params_t p = {.mode = FW_MODE_IPC};
    _cleanup_free_ char *exp = render(&p, FW_FAMILY_V4);
    assert_int_equal(fw_rules_compare(exp, saved_ok, FW_VERIFY_FULL), 0);
    assert_int_equal(fw_rules_compare(exp, saved_ok, FW_VERIFY_POLICY), 0);
    assert_int_equal(fw_rules_compare(exp, "", FW_VERIFY_NONE), 0);
    /* A warning line from a mixed backend is a comment, ignored. */
    char *with_warning = NULL;
    assert_true(asprintf(&with_warning, "%s# Warning: iptables-legacy tables present\n", saved_ok) >
                0);
    assert_int_equal(fw_rules_compare(exp, with_warning, FW_VERIFY_FULL), 0);
    free(with_warning);

    /* Policies: one ACCEPT anywhere fails both levels; nothing loaded fails too. */
    const char accept[] = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT "
                          "[0:0]\n-A INPUT -i lo -j ACCEPT\n-A OUTPUT -o lo -j ACCEPT\nCOMMIT\n";
    assert_int_equal(fw_rules_compare(exp, accept, FW_VERIFY_POLICY), -EBADMSG);
    assert_int_equal(fw_rules_compare(exp, accept, FW_VERIFY_FULL), -EBADMSG);
    assert_int_equal(fw_rules_compare(exp, "", FW_VERIFY_POLICY), -EBADMSG);
    assert_int_equal(fw_rules_compare(exp, "", FW_VERIFY_FULL), -EBADMSG);
    /* A DROP policy in another table does not stand in for the filter table's. */
    const char wrong_table[] = "*mangle\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP "
                               "[0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
    assert_int_equal(fw_rules_compare(exp, wrong_table, FW_VERIFY_POLICY), -EBADMSG);

    /* Rules: extra, missing or reordered rules fail FULL but not POLICY. */
    const char extra[] = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\n"
                         "-A INPUT -i lo -j ACCEPT\n-A INPUT -j ACCEPT\n-A OUTPUT -o lo -j "
                         "ACCEPT\nCOMMIT\n";
    const char missing[] = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP "
                           "[0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n";
    const char reordered[] = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP "
                             "[0:0]\n-A OUTPUT -o lo -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n"
                             "COMMIT\n";
    const char other_table[] = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP "
                               "[0:0]\n-A INPUT -i lo -j ACCEPT\n-A OUTPUT -o lo -j ACCEPT\n"
                               "COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
    const char *bad[] = {extra, missing, reordered, other_table};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        assert_int_equal(fw_rules_compare(exp, bad[i], FW_VERIFY_FULL), -EBADMSG);
        assert_int_equal(fw_rules_compare(exp, bad[i], FW_VERIFY_POLICY), 0);
    }
    /* Trailing whitespace and CRLF-free blank lines do not matter. */
    const char spaced[] = "\n*filter  \n:INPUT DROP\n:FORWARD DROP [1:1]\n:OUTPUT DROP [0:0]\n\n"
                          "-A INPUT -i lo -j ACCEPT \n-A OUTPUT -o lo -j ACCEPT\nCOMMIT";
    assert_int_equal(fw_rules_compare(exp, spaced, FW_VERIFY_FULL), 0);

    assert_int_equal(fw_rules_compare(NULL, saved_ok, FW_VERIFY_FULL), -EINVAL);
    assert_int_equal(fw_rules_compare(exp, NULL, FW_VERIFY_FULL), -EINVAL);
    assert_int_equal(fw_rules_compare(exp, saved_ok, (fw_verify_t)9), -EINVAL);
    /* An expected text without policies proves nothing: refuse it. */
    assert_int_equal(fw_rules_compare("COMMIT\n", saved_ok, FW_VERIFY_POLICY), -EINVAL);
}

static void test_pool_parse(void **state) {
    fw_pool_t pool;
    assert_int_equal(fw_pool_parse("10.255.0.0/16", NULL, &pool), 0);
    assert_int_equal(pool.prefix4, 16);
    assert_false(pool.has_v6);
    assert_int_equal(fw_pool_parse("10.255.0.0/16", "fd00:6b62::/64", &pool), 0);
    assert_true(pool.has_v6);
    assert_int_equal(pool.prefix6, 64);
    assert_int_equal(fw_pool_parse("10.255.7.4/30", "fd00::/126", &pool), 0);
    assert_int_equal(fw_pool_size(&pool), 1);

    fw_pool_t untouched = {.prefix4 = 99};
    const char *bad4[] = {"10.255.0.1/16", "10.255.0.0/31",   "10.255.0.0/32", "10.255.0.0",
                          "10.255.0.0/",   "10.255.0.0/16x",  "10.255.0/16",   "/16",
                          "10.255.0.0/-1", "10.255.0.0/0016", "fd00::/64",     "",
                          "10.255.0.0/ 16"};
    for (size_t i = 0; i < ARRAY_SIZE(bad4); i++) {
        fw_pool_t p = untouched;
        assert_int_equal(fw_pool_parse(bad4[i], NULL, &p), -EINVAL);
        assert_int_equal(p.prefix4, 99); /* ret written only on success */
    }
    /* ... and nothing of ::ffff:0:0/96 (IPv4-mapped), whether inside it or around it. */
    const char *bad6[] = {"fd00::1/64",  "fd00::/127",          "fd00::", "10.0.0.0/8",
                          "fd00::/64/1", "::ffff:10.0.0.0/120", "::/64",  "::ffff:0:0/96"};
    for (size_t i = 0; i < ARRAY_SIZE(bad6); i++)
        assert_int_equal(fw_pool_parse("10.255.0.0/16", bad6[i], &pool), -EINVAL);
    assert_int_equal(fw_pool_parse("10.255.0.0/16", "::1:0:0:0/112", &pool), 0); /* beside it */
    assert_int_equal(fw_pool_parse(NULL, NULL, &pool), -EINVAL);
    assert_int_equal(fw_pool_parse("10.255.0.0/16", NULL, NULL), -EINVAL);
}

static void assert_addr(int af, const void *bin, const char *want) {
    char s[INET6_ADDRSTRLEN];
    assert_non_null(inet_ntop(af, bin, s, sizeof s));
    assert_string_equal(s, want);
}

static void test_pool_addrs(void **state) {
    fw_pool_t pool;
    assert_int_equal(fw_pool_parse("10.255.0.0/16", "fd00:6b62::/64", &pool), 0);
    assert_int_equal(fw_pool_size(&pool), 16384);
    fw_link_addrs_t a;
    assert_int_equal(fw_pool_addrs(&pool, 0, &a), 0);
    assert_addr(AF_INET, &a.gw4, "10.255.0.1");
    assert_addr(AF_INET, &a.worker4, "10.255.0.2");
    assert_true(a.has_v6);
    assert_addr(AF_INET6, &a.gw6, "fd00:6b62::1");
    assert_addr(AF_INET6, &a.worker6, "fd00:6b62::2");
    assert_int_equal(fw_pool_addrs(&pool, 1, &a), 0);
    assert_addr(AF_INET, &a.gw4, "10.255.0.5");
    assert_addr(AF_INET, &a.worker4, "10.255.0.6");
    assert_int_equal(fw_pool_addrs(&pool, 100, &a), 0); /* 401 = 0x191: carries across bytes */
    assert_addr(AF_INET, &a.gw4, "10.255.1.145");
    assert_addr(AF_INET6, &a.gw6, "fd00:6b62::191");
    assert_addr(AF_INET6, &a.worker6, "fd00:6b62::192");
    assert_int_equal(fw_pool_addrs(&pool, 16383, &a), 0);
    assert_addr(AF_INET, &a.gw4, "10.255.255.253");
    assert_addr(AF_INET, &a.worker4, "10.255.255.254");
    assert_addr(AF_INET6, &a.worker6, "fd00:6b62::fffe");
    fw_link_addrs_t untouched = {.has_v6 = false};
    assert_int_equal(fw_pool_addrs(&pool, 16384, &untouched), -ERANGE);
    assert_false(untouched.has_v6);

    /* The smaller block bounds the pool. */
    assert_int_equal(fw_pool_parse("10.255.0.0/16", "fd00:6b62::ff00/120", &pool), 0);
    assert_int_equal(fw_pool_size(&pool), 64);
    assert_int_equal(fw_pool_addrs(&pool, 63, &a), 0);
    assert_addr(AF_INET6, &a.worker6, "fd00:6b62::fffe");
    assert_int_equal(fw_pool_addrs(&pool, 64, &a), -ERANGE);
    assert_int_equal(fw_pool_parse("10.0.0.0/8", NULL, &pool), 0);
    assert_int_equal(fw_pool_size(&pool), 1u << 22);
    assert_int_equal(fw_pool_addrs(&pool, (1u << 22) - 1, &a), 0);
    assert_addr(AF_INET, &a.worker4, "10.255.255.254");
    assert_false(a.has_v6);

    fw_pool_t broken = {.prefix4 = 31};
    assert_int_equal(fw_pool_size(&broken), 0);
    assert_int_equal(fw_pool_addrs(&broken, 0, &a), -EINVAL);
    assert_int_equal(fw_pool_size(NULL), 0);
    assert_int_equal(fw_pool_addrs(NULL, 0, &a), -EINVAL);
}

static void test_names(void **state) {
    char ns[FW_NETNS_NAME_MAX], hif[FW_IFNAME_MAX];
    assert_int_equal(fw_names("w0123456789abcdef", ns, hif), 0);
    assert_string_equal(ns, "kbox-w0123456789abcdef");
    assert_string_equal(hif, "kbox-h012345678");
    assert_int_equal(strlen(hif), 15); /* IFNAMSIZ - 1 */
    assert_int_equal(fw_names("w012345678", NULL, hif), 0);
    assert_string_equal(hif, "kbox-h012345678");
    assert_int_equal(fw_names("w0123456789abcdef0123456789abcdef", ns, NULL), 0);
    assert_string_equal(ns, "kbox-w0123456789abcdef0123456789abcdef");

    assert_true(fw_worker_id_valid("w0123456789abcdef"));
    const char *bad[] = {NULL,
                         "",
                         "w",
                         "w01234567",
                         "W0123456789abcdef",
                         "x0123456789abcdef",
                         "w0123456789ABCDEF",
                         "w0123456789abcdeg",
                         "w0123456789abcdef0123456789abcdef0",
                         "w01234567/../../x",
                         "w0123456789 abcde",
                         "w0123456789abcde\n"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        assert_false(fw_worker_id_valid(bad[i]));
        assert_int_equal(fw_names(bad[i], ns, hif), -EINVAL);
    }
}

/* Run the operator script; returns its exit status, output in *ret_out. */
static int script(const char *args, char **ret_out) {
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "/bin/sh %s %s 2>/dev/null", FW_SCRIPT, args) > 0);
    FILE *f = popen(cmd, "r");
    free(cmd);
    assert_non_null(f);
    size_t cap = 65536, len = 0;
    char *out = calloc(1, cap);
    assert_non_null(out);
    size_t n;
    while ((n = fread(out + len, 1, cap - 1 - len, f)) > 0)
        len += n;
    int st = pclose(f);
    *ret_out = out;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_script_renders_like_library(void **state) {
    struct {
        const char *args;
        fw_rules_params_t p;
        fw_family_t f;
    } cases[] = {
        {"render ipc 4", {.mode = FW_MODE_IPC}, FW_FAMILY_V4},
        {"render ipc 6", {.mode = FW_MODE_IPC}, FW_FAMILY_V6},
        {"render tcp 4 --gw4 10.255.0.5 --worker4 10.255.0.6", tcp_params(false), FW_FAMILY_V4},
        {"render tcp 6 --gw4 10.255.0.5 --worker4 10.255.0.6", tcp_params(false), FW_FAMILY_V6},
        {"render tcp 6 --gw6 fd00:6b62::5 --worker6 fd00:6b62::6 --ports 50000:50004",
         tcp_params(true), FW_FAMILY_V6},
        {"render tcp 4 --gw4 10.255.0.5 --worker4 10.255.0.6 --ports 5555:5555 --ifname "
         "kbox-c0123",
         tcp_params(false), FW_FAMILY_V4},
    };
    cases[5].p.port_min = cases[5].p.port_max = 5555;
    strcpy(cases[5].p.ns_ifname, "kbox-c0123");
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        _cleanup_free_ char *lib = render(&cases[i].p, cases[i].f);
        _cleanup_free_ char *out = NULL;
        assert_int_equal(script(cases[i].args, &out), 0);
        if (strcmp(out, lib) != 0)
            fail_msg("script and library differ for '%s':\n%s\n---\n%s", cases[i].args, out, lib);
    }
    /* The script refuses what the library refuses. */
    const char *refused[] = {
        "render tcp 4 --gw4 10.255.0.5 --worker4 10.255.0.6 --ifname 'eth0+'",
        "render tcp 4 --gw4 10.255.0.5 --worker4 10.255.0.6 --ifname 'a/b'",
        "render tcp 4 --gw4 '10.255.0.5/0 -j ACCEPT' --worker4 10.255.0.6",
        "render tcp 4 --gw4 10.255.0.5 --worker4 10.255.0.5",
        "render tcp 4 --gw4 10.255.0.5 --worker4 10.255.0.6 --ports 0:4",
        "render tcp 4 --gw4 10.255.0.5 --worker4 10.255.0.6 --ports 9:8",
        "render tcp 4 --worker4 10.255.0.6",
        "render bogus 4",
        "render ipc 5",
    };
    for (size_t i = 0; i < ARRAY_SIZE(refused); i++) {
        _cleanup_free_ char *out = NULL;
        assert_int_not_equal(script(refused[i], &out), 0);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_render_ipc_is_the_rule_files),
        cmocka_unit_test(test_render_tcp_v4),
        cmocka_unit_test(test_render_tcp_v6),
        cmocka_unit_test(test_render_single_port_and_ifname),
        cmocka_unit_test(test_render_rejects),
        cmocka_unit_test(test_render_buffer_bounds),
        cmocka_unit_test(test_compare),
        cmocka_unit_test(test_pool_parse),
        cmocka_unit_test(test_pool_addrs),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_script_renders_like_library),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
