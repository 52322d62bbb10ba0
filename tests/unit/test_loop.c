/* Unit tests for the event loop's timers (common/loop.h): deadline order whatever the order
 * of arming, one-shot and periodic timers, re-arming (sooner, later, from inside the
 * callback), deletion of a timer by itself or by another timer's callback, a timer among
 * I/O events, and that no timer fires early. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "loop.h"
#include "util.h"

#include <stdint.h>
#include <unistd.h>

typedef struct {
    loop_t *loop;
    int order[64];
    int n;
    uint64_t armed_us[64];
    uint64_t armed_end_us[64]; /* after loop_timer_add returned: its clock read is in between */
    uint64_t after_ms[64];
    uint64_t fired_us[64];
    loop_watch_t *w[64];
    int stop_after;
    int fires[64];
    int del_target;   /* the callback of timer 0 deletes this one (-1: none) */
    int rearm_target; /* timer 0 re-arms this one for 5 ms (-1: none) */
    int stop_on;      /* the loop stops when this timer fires (-1: by count only) */
    int self_del;     /* this periodic timer deletes itself at its third firing (-1: none) */
} harness_t;

static harness_t H;
static int ids[64]; /* ids[i] == i: the callback argument of timer i */

static int index_of(loop_watch_t *w) {
    for (int i = 0; i < 64; i++)
        if (H.w[i] == w)
            return i;
    return -1;
}

static void on_timer(loop_t *loop, loop_watch_t *w, void *arg) {
    int i = *(const int *)arg;
    assert_int_equal(index_of(w), i);
    H.fired_us[i] = now_mono_us();
    H.fires[i]++;
    if (H.n < 64)
        H.order[H.n++] = i;
    if (i == 0 && H.del_target >= 0)
        loop_watch_del(loop, &H.w[H.del_target]);
    if (i == 0 && H.rearm_target >= 0)
        assert_int_equal(loop_timer_rearm(loop, H.w[H.rearm_target], 5, 0), 0);
    if (i == H.self_del && H.fires[i] == 3)
        loop_watch_del(loop, &H.w[i]);
    if (H.n >= H.stop_after || i == H.stop_on)
        loop_stop(loop);
}

static void arm(int i, uint64_t after_ms, uint64_t repeat_ms) {
    H.armed_us[i] = now_mono_us();
    H.w[i] = loop_timer_add(H.loop, after_ms, repeat_ms, on_timer, &ids[i]);
    H.armed_end_us[i] = now_mono_us();
    H.after_ms[i] = after_ms;
    assert_non_null(H.w[i]);
}

static void guard(loop_t *loop, loop_watch_t *w, void *arg) {
    fail_msg("timers did not fire in time");
}

static int setup(void **state) {
    memset(&H, 0, sizeof H);
    H.del_target = H.rearm_target = H.stop_on = H.self_del = -1;
    for (int i = 0; i < 64; i++)
        ids[i] = i;
    H.stop_after = 64;
    H.loop = loop_new(0);
    assert_non_null(H.loop);
    return 0;
}

static int teardown(void **state) {
    for (int i = 0; i < 64; i++)
        loop_watch_del(H.loop, &H.w[i]);
    loop_destroy(&H.loop);
    return 0;
}

static void run_with_guard(void) {
    loop_watch_t *g = loop_timer_add(H.loop, 5000, 0, guard, NULL);
    assert_int_equal(loop_run(H.loop), 0);
    loop_watch_del(H.loop, &g);
}

static void test_deadline_order_and_never_early(void **state) {
    static const int after[] = {40, 10, 30, 3, 20, 0, 25, 15};
    for (int i = 0; i < 8; i++)
        arm(i, (uint64_t)after[i], 0);
    H.stop_after = 8;
    run_with_guard();
    static const int expect[] = {5, 3, 1, 7, 4, 6, 2, 0};
    for (int i = 0; i < 8; i++)
        assert_int_equal(H.order[i], expect[i]);
    for (int i = 0; i < 8; i++) {
        uint64_t want = (uint64_t)(after[i] ? after[i] : 1) * 1000u;
        assert_true(H.fired_us[i] - H.armed_us[i] >= want);
        assert_int_equal(H.fires[i], 1);
    }
}

static void test_periodic_and_self_delete(void **state) {
    arm(1, 3, 3); /* periodic, until the stop */
    arm(3, 2, 2); /* periodic, deletes itself at its third firing */
    arm(2, 40, 0);
    H.self_del = 3;
    H.stop_on = 2;
    run_with_guard();
    /* 40 ms of a 3 ms period: about 13 firings; a loaded machine may merge some, never
     * fire one early. */
    assert_true(H.fires[1] >= 4);
    assert_true(H.fires[1] <= 14);
    assert_int_equal(H.fires[3], 3);
    assert_null(H.w[3]);
    assert_int_equal(H.fires[2], 1);
}

static void test_delete_from_another_callback(void **state) {
    H.del_target = 2;
    arm(0, 5, 0);
    arm(2, 10, 0); /* deleted by timer 0 before it is due */
    arm(3, 20, 0);
    H.stop_after = 2;
    run_with_guard();
    assert_int_equal(H.order[0], 0);
    assert_int_equal(H.order[1], 3);
    assert_int_equal(H.fires[2], 0);
    assert_null(H.w[2]);
}

static void test_rearm_sooner_and_later(void **state) {
    arm(1, 100, 0);
    arm(2, 10, 0);
    arm(3, 30, 0);
    assert_int_equal(loop_timer_rearm(H.loop, H.w[1], 5, 0), 0);  /* sooner: first */
    assert_int_equal(loop_timer_rearm(H.loop, H.w[2], 50, 0), 0); /* later: last */
    H.stop_after = 3;
    run_with_guard();
    assert_int_equal(H.order[0], 1);
    assert_int_equal(H.order[1], 3);
    assert_int_equal(H.order[2], 2);
}

static void test_rearm_fired_one_shot_from_callback(void **state) {
    H.rearm_target = 4;
    arm(4, 1, 0);
    arm(0, 10, 0); /* fires after 4, re-arms it */
    H.stop_after = 3;
    run_with_guard();
    assert_int_equal(H.order[0], 4);
    assert_int_equal(H.order[1], 0);
    assert_int_equal(H.order[2], 4);
    assert_int_equal(H.fires[4], 2);
}

static void on_pipe(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    char c;
    assert_int_equal(read(fd, &c, 1), 1);
    if (H.n < 64)
        H.order[H.n++] = 100;
}

static void test_timer_among_io(void **state) {
    int p[2];
    assert_int_equal(pipe(p), 0);
    loop_watch_t *io = loop_io_add(H.loop, p[0], LOOP_READ, on_pipe, NULL);
    assert_non_null(io);
    assert_int_equal(write(p[1], "x", 1), 1);
    arm(5, 15, 0);
    H.stop_after = 2;
    run_with_guard();
    assert_int_equal(H.order[0], 100);
    assert_int_equal(H.order[1], 5);
    loop_watch_del(H.loop, &io);
    close(p[0]);
    close(p[1]);
}

static void test_many_timers(void **state) {
    /* Enough to grow the heap several times; deadlines in reverse order of arming. */
    for (int i = 0; i < 60; i++)
        arm(i, (uint64_t)(60 - i), 0);
    for (int i = 0; i < 60; i += 3)
        loop_watch_del(H.loop, &H.w[i]);
    H.stop_after = 40;
    run_with_guard();
    /* Deadline order. The deadlines are 1 ms apart, and a stall between two arms (a loaded
     * machine, ASan) can really swap two of them, so each timer's deadline is bounded by the
     * clock before and after its arming: a timer must never fire after one whose deadline
     * was surely later than its own. */
    for (int k = 1; k < 40; k++) {
        int prev = H.order[k - 1], cur = H.order[k];
        assert_true(H.armed_us[prev] + H.after_ms[prev] * 1000u <=
                    H.armed_end_us[cur] + H.after_ms[cur] * 1000u);
    }
    for (int i = 0; i < 60; i++)
        assert_int_equal(H.fires[i], i % 3 == 0 ? 0 : 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_deadline_order_and_never_early, setup, teardown),
        cmocka_unit_test_setup_teardown(test_periodic_and_self_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_from_another_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rearm_sooner_and_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rearm_fired_one_shot_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_among_io, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_timers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
