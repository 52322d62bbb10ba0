/* Unit tests for the native kernel's cross-thread queue (kernel-host/kq.h): FIFO order,
 * bounds by count and bytes, the eventfd protocol (ack before drain loses no wakeup), and a
 * producer blocked on a full queue released by the consumer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kq.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

static bool readable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

static void test_fifo_and_fd(void **state) {
    kq_t *q = kq_new(4, 0);
    assert_non_null(q);
    assert_false(readable(kq_fd(q)));
    assert_null(kq_pop(q));
    int a, b, c;
    assert_int_equal(kq_push(q, &a, 1, false), 0);
    assert_true(readable(kq_fd(q)));
    assert_int_equal(kq_push(q, &b, 1, false), 0);
    kq_ack(q);
    assert_false(readable(kq_fd(q)));
    assert_ptr_equal(kq_pop(q), &a);
    /* Pushed after the ack onto a non-empty queue: no new signal needed, the drain sees it. */
    assert_int_equal(kq_push(q, &c, 1, false), 0);
    assert_ptr_equal(kq_pop(q), &b);
    assert_ptr_equal(kq_pop(q), &c);
    assert_null(kq_pop(q));
    /* Empty again: the next push signals. */
    assert_int_equal(kq_push(q, &a, 1, false), 0);
    assert_true(readable(kq_fd(q)));
    kq_ack(q);
    kq_unpop(q, kq_pop(q), 1);
    assert_true(readable(kq_fd(q)));
    assert_int_equal(kq_len(q), 1);
    kq_destroy(&q, NULL);
    assert_null(q);
    kq_destroy(&q, NULL);
}

static void test_bounds(void **state) {
    assert_null(kq_new(0, 0));
    kq_t *q = kq_new(2, 100);
    int x;
    assert_int_equal(kq_push(q, &x, 10, false), 0);
    assert_int_equal(kq_push(q, &x, 10, false), 0);
    assert_int_equal(kq_push(q, &x, 10, false), -EAGAIN); /* count */
    kq_pop(q);
    assert_int_equal(kq_push(q, &x, 95, false), -EAGAIN); /* bytes */
    kq_pop(q);
    /* An oversized item still fits an empty queue: nothing waits forever. */
    assert_int_equal(kq_push(q, &x, 1000, false), 0);
    assert_int_equal(kq_push(q, &x, 1, false), -EAGAIN);
    kq_destroy(&q, NULL);
}

static kq_t *shared;
static int produced;
static int items[1000];

static void *producer(void *arg) {
    for (int i = 0; i < 1000; i++) {
        items[i] = i + 1;
        kq_push(shared, &items[i], 1, true);
        produced = i + 1;
    }
    return NULL;
}

static void test_blocking(void **state) {
    shared = kq_new(3, 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, producer, NULL), 0);
    int want = 1;
    while (want <= 1000) {
        struct pollfd p = {.fd = kq_fd(shared), .events = POLLIN};
        assert_int_equal(poll(&p, 1, 5000), 1);
        kq_ack(shared);
        void *it;
        while ((it = kq_pop(shared))) {
            assert_int_equal(*(int *)it, want);
            want++;
        }
    }
    pthread_join(t, NULL);
    assert_int_equal(produced, 1000);
    kq_destroy(&shared, NULL);
}

/* A bounded wait for room: times out on a full queue, returns at once with room. */
static void test_wait_room_ms(void **state) {
    kq_t *q = kq_new(1, 0);
    int a;
    assert_true(kq_wait_room_ms(q, 1, 0));
    assert_int_equal(kq_push(q, &a, 1, false), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_false(kq_wait_room_ms(q, 1, 30));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 25 && ms < 2000);
    assert_ptr_equal(kq_pop(q), &a);
    assert_true(kq_wait_room_ms(q, 1, 1000));
    kq_destroy(&q, NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_and_fd),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_blocking),
        cmocka_unit_test(test_wait_room_ms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
