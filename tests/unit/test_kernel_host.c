/* Unit tests for the pure parts of the worker's init (kernel-host/init.h): argv parsing and
 * the wait-status to exit-code mapping. The process behaviour is in test_kernel_host_init.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "init.h"
#include "util.h"

#include <signal.h>
#include <sys/wait.h>

#define ARGV(...)       ((char *const[]){__VA_ARGS__, NULL})
#define ARGC(...)       ((int)(sizeof((char *[]){__VA_ARGS__}) / sizeof(char *)))
#define PARSE(ret, ...) khost_args_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), ret)

static void test_parse_exec(void **state) {
    khost_args_t a;
    char *const *argv = ARGV("kh", "--", "/usr/bin/python3", "-m", "ipykernel_launcher");
    assert_int_equal(khost_args_parse(5, argv, &a), 0);
    assert_int_equal(a.kernel, KHOST_KERNEL_EXEC);
    assert_ptr_equal(a.argv, argv + 2);

    /* Options after "--" belong to the kernel. */
    argv = ARGV("kh", "--kernel", "exec", "--", "/bin/sh", "--kernel", "-c");
    assert_int_equal(khost_args_parse(7, argv, &a), 0);
    assert_ptr_equal(a.argv, argv + 4);

    /* No "--": the first non-option is the command. */
    argv = ARGV("kh", "--kernel=ipykernel", "/bin/true");
    assert_int_equal(khost_args_parse(3, argv, &a), 0);
    assert_int_equal(a.kernel, KHOST_KERNEL_EXEC);
    assert_string_equal(a.argv[0], "/bin/true");
    assert_null(a.argv[1]);
}

static void test_parse_native(void **state) {
    khost_args_t a = {.kernel = KHOST_KERNEL_EXEC};
    assert_int_equal(PARSE(&a, "kh", "--kernel", "native", "-f", "/run/kbox/kernel.json"), 0);
    assert_int_equal(a.kernel, KHOST_KERNEL_NATIVE);
    assert_null(a.argv);
    assert_string_equal(a.conn_file, "/run/kbox/kernel.json");
    assert_false(a.no_init);

    assert_int_equal(PARSE(&a, "kh", "-f", "k.json", "--no-init", "--kernel=native"), 0);
    assert_true(a.no_init);
    assert_string_equal(a.conn_file, "k.json");
    /* The init does not run the kernel in its own process. */
    assert_int_equal(khost_init_run(&a), -EINVAL);

    /* The native kernel takes no command and needs a connection file. */
    assert_int_equal(PARSE(&a, "kh", "--kernel=native", "--", "/bin/true"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--kernel=native", "-f", "k", "--", "/bin/true"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--kernel", "native"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--kernel", "native", "-f"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--kernel", "native", "-f", ""), -EINVAL);
    /* ... and the exec kernel takes neither. */
    assert_int_equal(PARSE(&a, "kh", "-f", "k.json", "/bin/true"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--no-init", "/bin/true"), -EINVAL);
}

static void test_parse_errors(void **state) {
    khost_args_t a = {.kernel = KHOST_KERNEL_NATIVE, .argv = (char *const *)0x1};
    assert_int_equal(PARSE(&a, "kh"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--", ""), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--kernel"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--kernel", "java", "/bin/true"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--kernel="), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "-x", "/bin/true"), -EINVAL);
    assert_int_equal(PARSE(&a, "kh", "--verbose", "--", "/bin/true"), -EINVAL);
    assert_int_equal(khost_args_parse(0, ARGV("kh"), &a), -EINVAL);
    assert_int_equal(khost_args_parse(2, NULL, &a), -EINVAL);
    assert_int_equal(PARSE(NULL, "kh", "/bin/true"), -EINVAL);
    /* Untouched on failure. */
    assert_int_equal(a.kernel, KHOST_KERNEL_NATIVE);
    assert_ptr_equal(a.argv, (char *const *)0x1);
    assert_int_equal(khost_init_run(NULL), -EINVAL);
}

static void test_exit_code(void **state) {
    /* Build real wait statuses rather than assuming the encoding. */
    int st;
    pid_t p = fork();
    if (p == 0)
        _exit(7);
    assert_int_equal(waitpid(p, &st, 0), p);
    assert_int_equal(khost_exit_code(st), 7);

    p = fork();
    if (p == 0) {
        raise(SIGKILL);
        _exit(0);
    }
    assert_int_equal(waitpid(p, &st, 0), p);
    assert_int_equal(khost_exit_code(st), 128 + SIGKILL);

    p = fork();
    if (p == 0) {
        signal(SIGINT, SIG_DFL);
        raise(SIGINT);
        _exit(0);
    }
    assert_int_equal(waitpid(p, &st, 0), p);
    assert_int_equal(khost_exit_code(st), 130);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_exec),
        cmocka_unit_test(test_parse_native),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_exit_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
