/* Unit tests for the host-wide registry of worker uid ranges (gateway/uidrange.h): the pure
 * choice of a free range, and claims in a temporary registry (flock belongs to the open file,
 * so two claims in this one process contend as two gateways would). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "uidrange.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static void test_pick_and_overlap(void **state) {
    (void)state;
    assert_int_equal(gw_uid_pick(NULL, 0, 4096, 100000), 100000);
    assert_int_equal(gw_uid_pick(NULL, 0, 0, 100000), 0);
    gw_uid_range_t live[] = {{100000, 4096, 1}, {104096, 10, 2}, {200000, 100, 3}};
    /* Past the first two (adjacent), then the gap before the third is large enough. */
    assert_int_equal(gw_uid_pick(live, 3, 4096, 100000), 104106);
    /* A gap too small for the count is skipped. */
    assert_int_equal(gw_uid_pick(live, 3, 100000, 100000), 200100);
    assert_int_equal(gw_uid_overlap(live, 3, 104095, 1), 0);
    assert_int_equal(gw_uid_overlap(live, 3, 104096, 1), 1);
    assert_int_equal(gw_uid_overlap(live, 3, 104106, 95894), -1); /* ends where the third starts */
    assert_int_equal(gw_uid_overlap(live, 3, 104106, 95895), 2);
    assert_int_equal(gw_uid_overlap(live, 3, 1000, 99000), -1);
    /* Nothing fits below INT32_MAX. */
    gw_uid_range_t top[] = {{100000, INT32_MAX - 100000, 1}};
    assert_int_equal(gw_uid_pick(top, 1, 1, 100000), 0);
    assert_int_equal(gw_uid_pick(NULL, 0, 2, INT32_MAX - 1), 0);
}

typedef struct {
    char dir[64];
    char reg[96];
    char keep_a[96], keep_b[96];
} fixture_t;

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/kbox-uidrange-XXXXXX");
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
    gw_uid_range_t other;
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
    assert_int_equal(other.base, GW_UID_AUTO_LO);
    assert_int_equal(other.count, 4096);
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
    char stale[160];
    snprintf(stale, sizeof stale, "%s/%u-4096", f->reg, GW_UID_AUTO_LO + 4096);
    assert_int_equal(stat(stale, &st), 0);
    uint32_t d = 0;
    int fd = -1;
    assert_int_equal(gw_uid_claim(f->reg, NULL, GW_UID_AUTO_LO + 4096, 10, &d, &fd, &other), 0);
    assert_int_equal(stat(stale, &st), -1);
    close(fd);
    close(fa);
    close(fc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_and_overlap),
        cmocka_unit_test_setup_teardown(test_claims, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
