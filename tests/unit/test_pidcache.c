/* common/pidcache.c: getpid() from memory must still be the process's pid everywhere it can
 * be asked: in threads, in children of fork() (and their children), and for callers in
 * shared libraries, which bind to the executable's definition (libzmq's fork checks are why
 * the cache exists). */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

static pid_t real_pid(void) {
    return (pid_t)syscall(SYS_getpid);
}

static void test_matches_the_kernel(void **state) {
    (void)state;
    assert_int_equal(getpid(), real_pid());
}

static void *thread_pid(void *arg) {
    *(pid_t *)arg = getpid();
    return NULL;
}

static void test_threads_share_the_pid(void **state) {
    (void)state;
    pid_t seen = 0;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, thread_pid, &seen), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(seen, real_pid());
}

/* The child reports by exit status: 0 when its getpid() was its own pid at every step. */
static void test_fork_children_see_their_own_pid(void **state) {
    (void)state;
    pid_t parent = getpid();
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        if (getpid() != real_pid() || getpid() == parent)
            _exit(1);
        pid_t grandchild = fork();
        if (grandchild < 0)
            _exit(2);
        if (grandchild == 0)
            _exit(getpid() == real_pid() && getppid() != real_pid() ? 0 : 3);
        int st = 0;
        if (waitpid(grandchild, &st, 0) != grandchild || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            _exit(4);
        _exit(getpid() == real_pid() ? 0 : 5);
    }
    int st = 0;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* The parent's cache is untouched by its children. */
    assert_int_equal(getpid(), parent);
    assert_int_equal(getpid(), real_pid());
}

/* What libzmq's calls bind to: the first definition in the global scope, which is ours only
 * if the executable exports it. */
static void test_shared_libraries_bind_to_the_cache(void **state) {
    (void)state;
    int major = 0, minor = 0, patch = 0;
    zmq_version(&major, &minor, &patch); /* libzmq is linked here as in the gateway */
    assert_true(major >= 4);
    pid_t (*bound)(void) = (pid_t(*)(void))dlsym(RTLD_DEFAULT, "getpid");
    assert_non_null(bound);
    assert_ptr_equal(bound, &getpid);
    pid_t (*libc_own)(void) = (pid_t(*)(void))dlsym(RTLD_NEXT, "getpid");
    assert_non_null(libc_own);
    assert_ptr_not_equal(libc_own, &getpid);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_the_kernel),
        cmocka_unit_test(test_threads_share_the_pid),
        cmocka_unit_test(test_fork_children_see_their_own_pid),
        cmocka_unit_test(test_shared_libraries_bind_to_the_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
