/* Unit tests for the host-wide claims of uid ranges and link addresses (gateway/hostclaims.h):
 * the pure choice of a free span, and claims in a temporary registry (flock belongs to the open
 * file, so two claims in this one process contend as two gateways would). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "hostclaims.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#define SPAN(f, l, p)                                                                              \
    { .first = (f), .last = (l), .pid = (p) }
#define MAPPED(a, b, c, d) (((gw_u128)0xffff << 32) | ((a) << 24 | (b) << 16 | (c) << 8 | (d)))

static void test_pick_and_overlap(void **state) {
    (void)state;
    gw_u128 at = 0;
    assert_true(gw_claim_pick(NULL, 0, 100000, INT32_MAX, 4096, 1, &at));
    assert_true(at == 100000);
    assert_false(gw_claim_pick(NULL, 0, 100000, INT32_MAX, 0, 1, &at));
    gw_claim_t live[] = {SPAN(100000, 104095, 1), SPAN(104096, 104105, 2), SPAN(200000, 200099, 3)};
    /* Past the first two (adjacent), then the gap before the third is large enough. */
    assert_true(gw_claim_pick(live, 3, 100000, INT32_MAX, 4096, 1, &at));
    assert_true(at == 104106);
    /* A gap too small for the length is skipped. */
    assert_true(gw_claim_pick(live, 3, 100000, INT32_MAX, 100000, 1, &at));
    assert_true(at == 200100);
    assert_int_equal(gw_claim_overlap(live, 3, 104095, 104095), 0);
    assert_int_equal(gw_claim_overlap(live, 3, 104096, 104096), 1);
    /* Ends where the third starts. */
    assert_int_equal(gw_claim_overlap(live, 3, 104106, 199999), -1);
    assert_int_equal(gw_claim_overlap(live, 3, 104106, 200000), 2);
    assert_int_equal(gw_claim_overlap(live, 3, 1000, 99999), -1);
    /* Nothing fits below the top. */
    gw_claim_t top[] = {SPAN(100000, INT32_MAX - 1, 1)};
    assert_false(gw_claim_pick(top, 1, 100000, INT32_MAX, 2, 1, &at));
    assert_false(gw_claim_pick(NULL, 0, INT32_MAX - 1, INT32_MAX, 3, 1, &at));
    /* Aligned: spans of 1024 from a /16's start; a claim anywhere in one skips the whole span. */
    gw_u128 lo = MAPPED(10u, 255u, 0u, 0u), hi = MAPPED(10u, 255u, 255u, 255u);
    gw_claim_t nets[] = {SPAN(lo, lo + 1023, 1), SPAN(lo + 1500, lo + 1500, 2)};
    assert_true(gw_claim_pick(nets, 2, lo, hi, 1024, 1024, &at));
    assert_true(at == lo + 2048);
    /* The last span of the block, and then none. */
    gw_claim_t most[] = {SPAN(lo, hi - 1024, 1)};
    assert_true(gw_claim_pick(most, 1, lo, hi, 1024, 1024, &at));
    assert_true(at == hi - 1023);
    gw_claim_t all[] = {SPAN(lo - 5, hi + 5, 1)};
    assert_false(gw_claim_pick(all, 1, lo, hi, 1024, 1024, &at));
    /* The very top of the space. */
    gw_u128 max = ~(gw_u128)0;
    gw_claim_t high[] = {SPAN(max - 3, max, 1)};
    assert_false(gw_claim_pick(high, 1, max - 7, max, 8, 8, &at));
    assert_true(gw_claim_pick(high, 1, max - 7, max, 4, 4, &at));
    assert_true(at == max - 7);
}

static void test_link_spans(void **state) {
    (void)state;
    fw_pool_t pool;
    assert_int_equal(fw_pool_parse("10.255.0.0/16", "fd00:6b62::/112", &pool), 0);
    gw_claim_t v4, v6;
    assert_int_equal(gw_link_spans(&pool, 256, &v4, &v6), 0);
    assert_true(v4.first == MAPPED(10u, 255u, 0u, 0u));
    assert_true(v4.last == MAPPED(10u, 255u, 3u, 255u));
    char buf[INET6_ADDRSTRLEN];
    assert_string_equal(gw_claim_addr_str(v4.last, buf, sizeof buf), "10.255.3.255");
    assert_string_equal(gw_claim_addr_str(v6.first, buf, sizeof buf), "fd00:6b62::");
    assert_string_equal(gw_claim_addr_str(v6.last, buf, sizeof buf), "fd00:6b62::3ff");
    /* More links than the block holds. */
    assert_int_equal(gw_link_spans(&pool, 16385, &v4, &v6), -ERANGE);
    assert_int_equal(fw_pool_parse("10.255.0.0/24", NULL, &pool), 0);
    assert_int_equal(gw_link_spans(&pool, 64, &v4, &v6), 0);
    assert_int_equal(gw_link_spans(&pool, 65, &v4, &v6), -ERANGE);
}

static fw_route_t route(int family, const char *dst, uint8_t len, bool via, const char *dev) {
    fw_route_t r = {.family = family, .dst_len = len, .via_gateway = via};
    assert_int_equal(inet_pton(family, dst, r.dst), 1);
    snprintf(r.dev, sizeof r.dev, "%s", dev);
    return r;
}

static void test_routes_taken(void **state) {
    (void)state;
    fw_pool_t pool;
    assert_int_equal(fw_pool_parse("10.255.0.0/16", "fd00:6b62::/112", &pool), 0);
    fw_route_t routes[] = {
        route(AF_INET, "0.0.0.0", 0, true, "eth0"),      /* default: never */
        route(AF_INET, "192.0.2.0", 24, false, "eth0"),  /* elsewhere */
        route(AF_INET, "10.0.0.0", 8, true, "tun0"),     /* a VPN's, broader: shadowed only */
        route(AF_INET, "10.255.4.0", 24, false, "eth1"), /* a LAN in the block: taken */
        route(AF_INET, "10.255.8.0", 24, true, "eth0"),  /* routed, narrower: taken */
        route(AF_INET, "10.255.0.0", 30, false, "kbox-h1a2b0c0d0"), /* our own veth */
        route(AF_INET, "10.255.0.4", 30, false, "kbox-h9f9f0c0d0"), /* another gateway's */
        route(AF_INET, "10.255.0.9", 32, false, "lo"),              /* a local address: taken */
        route(AF_INET, "10.0.0.0", 8, false, "eth2"), /* on-link, broader: all taken */
        route(AF_INET6, "fd00:6b62::100", 120, false, "eth0"),
        route(AF_INET6, "fd00::", 64, true, "eth0"), /* routed, broader */
        route(AF_INET6, "8000::", 1, false, "eth3"), /* on-link, broader: clipped to the block */
    };
    gw_claim_t taken[16];
    size_t n = gw_routes_taken(routes, sizeof routes / sizeof *routes, &pool, "kbox-h1a2b", taken);
    assert_int_equal(n, 7);
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    const char *want[][3] = {
        {"10.255.4.0", "10.255.4.255", "eth1"},
        {"10.255.8.0", "10.255.8.255", "eth0"},
        {"10.255.0.4", "10.255.0.7", "kbox-h9f9f0c0d0"},
        {"10.255.0.9", "10.255.0.9", "lo"},
        {"10.255.0.0", "10.255.255.255", "eth2"},
        {"fd00:6b62::100", "fd00:6b62::1ff", "eth0"},
        {"fd00:6b62::", "fd00:6b62::ffff", "eth3"},
    };
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(gw_claim_addr_str(taken[i].first, a, sizeof a), want[i][0]);
        assert_string_equal(gw_claim_addr_str(taken[i].last, b, sizeof b), want[i][1]);
        assert_string_equal(taken[i].dev, want[i][2]);
        assert_int_equal(taken[i].pid, 0);
    }
    /* Without an IPv6 block, IPv6 routes take nothing. */
    assert_int_equal(fw_pool_parse("10.255.0.0/16", NULL, &pool), 0);
    assert_int_equal(
        gw_routes_taken(routes, sizeof routes / sizeof *routes, &pool, "kbox-h1a2b", taken), 5);
}

typedef struct {
    char dir[64];
    char reg[96];
    char keep_a[96], keep_b[96];
} fixture_t;

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/kbox-hostclaims-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->reg, sizeof f->reg, "%s/registry", f->dir);
    snprintf(f->keep_a, sizeof f->keep_a, "%s/a-uid-base", f->dir);
    snprintf(f->keep_b, sizeof f->keep_b, "%s/b-uid-base", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    rm_rf(f->dir);
    free(f);
    return 0;
}

static void test_claims(void **state) {
    fixture_t *f = *state;
    gw_claim_t other;
    uint32_t a = 0, b = 0, c = 0;
    int fa = -1, fb = -1, fc = -1;
    /* Automatic: the lowest free range, kept for the next start. */
    assert_int_equal(gw_uid_claim(f->reg, f->keep_a, 0, 4096, &a, &fa, &other), 0);
    assert_int_equal(a, GW_UID_AUTO_LO);
    struct stat st;
    assert_int_equal(stat(f->reg, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* A second gateway, automatic too, gets the next one. */
    assert_int_equal(gw_uid_claim(f->reg, f->keep_b, 0, 4096, &b, &fb, &other), 0);
    assert_int_equal(b, GW_UID_AUTO_LO + 4096);
    /* An explicit range over a running gateway's is refused, naming it. */
    assert_int_equal(gw_uid_claim(f->reg, NULL, GW_UID_AUTO_LO + 100, 10, &c, &fc, &other), -EBUSY);
    assert_true(other.first == GW_UID_AUTO_LO);
    assert_true(other.last == GW_UID_AUTO_LO + 4095);
    assert_int_equal(other.pid, getpid());
    assert_int_equal(fc, -1);
    /* A disjoint explicit one is fine. */
    assert_int_equal(gw_uid_claim(f->reg, NULL, 300000, 2, &c, &fc, &other), 0);
    assert_int_equal(c, 300000);

    /* The first gateway stops (its claim goes with its fd) and starts again: same range,
     * from its state dir, even though a lower one may be free by then. */
    close(fa);
    assert_int_equal(gw_uid_claim(f->reg, f->keep_a, 0, 4096, &a, &fa, &other), 0);
    assert_int_equal(a, GW_UID_AUTO_LO);
    /* ... and its range is taken by nobody else while it runs. */
    assert_int_equal(gw_uid_claim(f->reg, NULL, GW_UID_AUTO_LO, 1, &c, &fc, &other), -EBUSY);

    /* A dead gateway's claim is stale: removed when the registry is next read. */
    close(fb);
    char stale[256];
    snprintf(stale, sizeof stale, "%s/%032x-%032x", f->reg, GW_UID_AUTO_LO + 4096,
             GW_UID_AUTO_LO + 8191);
    assert_int_equal(stat(stale, &st), 0);
    uint32_t d = 0;
    int fd = -1;
    assert_int_equal(gw_uid_claim(f->reg, NULL, GW_UID_AUTO_LO + 4096, 10, &d, &fd, &other), 0);
    assert_int_equal(stat(stale, &st), -1);
    close(fd);
    close(fa);
    close(fc);
}

static void test_link_claims(void **state) {
    fixture_t *f = *state;
    gw_claim_t other;
    fw_pool_t a, b, c;
    assert_int_equal(fw_pool_parse("10.255.0.0/22", "fd00:6b62::/118", &a), 0);
    b = c = a;
    int fa[2] = {-1, -1}, fb[2] = {-1, -1}, fc[2] = {-1, -1};
    /* 64 links: a /24 and a /120 each; the first gateway gets the blocks' first. */
    assert_int_equal(gw_link_claim(f->reg, f->keep_a, &a, 64, NULL, 0, fa, &other), 0);
    char buf[INET6_ADDRSTRLEN];
    assert_string_equal(inet_ntop(AF_INET, &a.base4, buf, sizeof buf), "10.255.0.0");
    assert_string_equal(inet_ntop(AF_INET6, &a.base6, buf, sizeof buf), "fd00:6b62::");
    assert_true(fa[0] >= 0 && fa[1] >= 0);
    /* A second with the same blocks gets the next spans, and its links follow them. */
    assert_int_equal(gw_link_claim(f->reg, f->keep_b, &b, 64, NULL, 0, fb, &other), 0);
    assert_string_equal(inet_ntop(AF_INET, &b.base4, buf, sizeof buf), "10.255.1.0");
    assert_string_equal(inet_ntop(AF_INET6, &b.base6, buf, sizeof buf), "fd00:6b62::100");
    fw_link_addrs_t link;
    assert_int_equal(fw_pool_addrs(&b, 63, &link), 0);
    assert_string_equal(inet_ntop(AF_INET, &link.worker4, buf, sizeof buf), "10.255.1.254");
    assert_string_equal(inet_ntop(AF_INET6, &link.gw6, buf, sizeof buf), "fd00:6b62::1fd");
    /* 256 links need the whole /22: taken in part, refused, naming the one in the way. */
    assert_int_equal(gw_link_claim(f->reg, NULL, &c, 256, NULL, 0, fc, &other), -EBUSY);
    assert_string_equal(gw_claim_addr_str(other.first, buf, sizeof buf), "10.255.0.0");
    assert_string_equal(gw_claim_addr_str(other.last, buf, sizeof buf), "10.255.0.255");
    assert_int_equal(other.pid, getpid());
    assert_int_equal(fc[0], -1);

    /* The first stops; the second restarts and keeps its spans though lower ones are free. */
    close(fa[0]);
    close(fa[1]);
    close(fb[0]);
    close(fb[1]);
    fw_pool_t b2;
    assert_int_equal(fw_pool_parse("10.255.0.0/22", "fd00:6b62::/118", &b2), 0);
    assert_int_equal(gw_link_claim(f->reg, f->keep_b, &b2, 64, NULL, 0, fb, &other), 0);
    assert_string_equal(inet_ntop(AF_INET, &b2.base4, buf, sizeof buf), "10.255.1.0");
    assert_string_equal(inet_ntop(AF_INET6, &b2.base6, buf, sizeof buf), "fd00:6b62::100");
    /* A kept span another gateway took meanwhile is given up for a free one. */
    fw_pool_t d;
    assert_int_equal(fw_pool_parse("10.255.1.0/24", NULL, &d), 0);
    close(fb[0]);
    close(fb[1]);
    int fd[2] = {-1, -1};
    assert_int_equal(gw_link_claim(f->reg, NULL, &d, 64, NULL, 0, fd, &other), 0);
    assert_int_equal(fd[1], -1); /* no IPv6 block, no claim */
    fw_pool_t b3;
    assert_int_equal(fw_pool_parse("10.255.0.0/22", "fd00:6b62::/118", &b3), 0);
    assert_int_equal(gw_link_claim(f->reg, f->keep_b, &b3, 64, NULL, 0, fb, &other), 0);
    assert_string_equal(inet_ntop(AF_INET, &b3.base4, buf, sizeof buf), "10.255.0.0");
    assert_string_equal(inet_ntop(AF_INET6, &b3.base6, buf, sizeof buf), "fd00:6b62::100");
    close(fb[0]);
    close(fb[1]);
    close(fd[0]);

    /* A kept offset off the span grid (hand-edited, or another --uid-count) is not used. */
    FILE *kf = fopen(f->keep_b, "w");
    assert_non_null(kf);
    fprintf(kf, "%032x %032x\n", 4, 0);
    fclose(kf);
    fw_pool_t g;
    assert_int_equal(fw_pool_parse("10.255.0.0/22", NULL, &g), 0);
    assert_int_equal(gw_link_claim(f->reg, f->keep_b, &g, 64, NULL, 0, fb, &other), 0);
    assert_string_equal(inet_ntop(AF_INET, &g.base4, buf, sizeof buf), "10.255.0.0");
    close(fb[0]);

    /* The host's routes are avoided like claims, and named when nothing is left. */
    fw_pool_t e;
    assert_int_equal(fw_pool_parse("10.255.0.0/22", NULL, &e), 0);
    fw_route_t lan[] = {route(AF_INET, "10.255.0.128", 25, false, "eth1")};
    gw_claim_t taken[1];
    assert_int_equal(gw_routes_taken(lan, 1, &e, "kbox-h1a2b", taken), 1);
    int fe[2] = {-1, -1};
    assert_int_equal(gw_link_claim(f->reg, NULL, &e, 64, taken, 1, fe, &other), 0);
    assert_string_equal(inet_ntop(AF_INET, &e.base4, buf, sizeof buf), "10.255.1.0");
    close(fe[0]);
    fw_route_t whole[] = {route(AF_INET, "10.255.0.0", 16, false, "eth1")};
    assert_int_equal(fw_pool_parse("10.255.0.0/22", NULL, &e), 0);
    assert_int_equal(gw_routes_taken(whole, 1, &e, "kbox-h1a2b", taken), 1);
    assert_int_equal(gw_link_claim(f->reg, NULL, &e, 64, taken, 1, fe, &other), -EBUSY);
    assert_int_equal(other.pid, 0);
    assert_string_equal(other.dev, "eth1");
    assert_string_equal(gw_claim_addr_str(other.first, buf, sizeof buf), "10.255.0.0");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_and_overlap),
        cmocka_unit_test(test_link_spans),
        cmocka_unit_test(test_routes_taken),
        cmocka_unit_test_setup_teardown(test_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_claims, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
