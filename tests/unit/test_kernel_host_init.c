/* Behaviour of the real kbox-kernel-host binary, run unprivileged as a child subreaper (what
 * it does when it is not PID 1): it reaps an orphaned grandchild of the kernel, forwards
 * SIGINT and SIGTERM to the kernel's process group, and exits with the kernel's status (its
 * code, or 128 + the signal that killed it). The "kernel" here is /bin/sh running a script. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "util.h"

#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#ifndef KBOX_KERNEL_HOST_BIN
#error "KBOX_KERNEL_HOST_BIN must name the kbox-kernel-host binary"
#endif

extern char **environ;

static char tmpdir[64];

static int setup(void **state) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_kh_init.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    return rm_rf(tmpdir) < 0 ? -1 : 0;
}

static pid_t init_spawn(const char *script) {
    char *argv[] = {KBOX_KERNEL_HOST_BIN, "--", "/bin/sh", "-c", (char *)script, NULL};
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, argv[0], NULL, NULL, argv, environ), 0);
    return pid;
}

/* The init's exit code, or a test failure if it does not exit within ms. */
static int init_wait(pid_t pid, unsigned ms) {
    for (unsigned waited = 0; waited < ms; waited += 10) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        assert_true(r >= 0);
        if (r == pid) {
            assert_true(WIFEXITED(st));
            return WEXITSTATUS(st);
        }
        usleep(10 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("kbox-kernel-host did not exit within %u ms", ms);
    return -1;
}

static bool file_wait(const char *path, unsigned ms) {
    for (unsigned waited = 0; waited < ms; waited += 10) {
        struct stat st;
        if (stat(path, &st) == 0 && st.st_size > 0)
            return true;
        usleep(10 * 1000);
    }
    return false;
}

/* The pid s starts with (after blanks); fails the test when there is none. */
static pid_t parse_pid(const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    assert_true(end != s && errno == 0 && v >= 0 && v <= INT_MAX);
    return (pid_t)v;
}

/* "R", "S", "Z", ... from /proc/<pid>/status, and the parent pid; false if pid is gone. */
static bool proc_status(pid_t pid, char *ret_state, pid_t *ret_ppid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    _cleanup_free_ char *text = NULL;
    if (read_file_bounded(path, 65536, &text, NULL) < 0)
        return false;
    const char *s = strstr(text, "\nState:\t");
    const char *pp = strstr(text, "\nPPid:\t");
    assert_non_null(s);
    assert_non_null(pp);
    *ret_state = s[strlen("\nState:\t")];
    *ret_ppid = parse_pid(pp + strlen("\nPPid:\t"));
    return true;
}

static void test_reaps_orphan(void **state) {
    char pidfile[128], script[512];
    snprintf(pidfile, sizeof pidfile, "%s/grandchild.pid", tmpdir);
    /* The inner shell starts a sleeper and exits at once: the sleeper is orphaned while the
     * kernel (outer shell) is still alive, so it must be re-parented to the init and, when it
     * exits, reaped by it (not left a zombie). */
    snprintf(script, sizeof script,
             "/bin/sh -c 'sleep 0.3 & echo $! > %s.tmp; mv %s.tmp %s'; sleep 2.5; exit 5", pidfile,
             pidfile, pidfile);
    pid_t init = init_spawn(script);
    assert_true(file_wait(pidfile, 3000));
    _cleanup_free_ char *text = NULL;
    assert_int_equal(read_file_bounded(pidfile, 64, &text, NULL), 0);
    pid_t gc = parse_pid(text);
    assert_true(gc > 1);

    char st;
    pid_t ppid = 0;
    bool adopted = false;
    for (int i = 0; i < 100 && !adopted; i++) {
        assert_true(proc_status(gc, &st, &ppid));
        adopted = ppid == init;
        usleep(2000);
    }
    assert_true(adopted);

    /* After the sleeper exits it must disappear entirely while the init still runs: a zombie
     * means the init did not reap it (once the init exits, the host's init would). */
    bool gone = false;
    for (int i = 0; i < 100 && !gone; i++) {
        gone = !proc_status(gc, &st, &ppid);
        if (!gone)
            assert_int_equal(ppid, init);
        usleep(10 * 1000);
    }
    assert_true(gone);
    assert_int_equal(waitpid(init, NULL, WNOHANG), 0);
    assert_int_equal(init_wait(init, 5000), 5);
}

static void signal_case(int signo, int code) {
    char ready[128], script[512];
    snprintf(ready, sizeof ready, "%s/ready.%d", tmpdir, signo);
    /* The foreground sleep gets the signal too (same process group) and the trap then runs. */
    snprintf(script, sizeof script,
             "trap 'exit %d' %d; echo up > %s; i=0; while [ $i -lt 200 ]; do sleep 0.05; "
             "i=$((i+1)); done; exit 99",
             code, signo, ready);
    pid_t init = init_spawn(script);
    assert_true(file_wait(ready, 3000));
    assert_int_equal(kill(init, signo), 0);
    assert_int_equal(init_wait(init, 5000), code);
}

static void test_forwards_sigint(void **state) {
    signal_case(SIGINT, 42);
}

static void test_forwards_sigterm(void **state) {
    signal_case(SIGTERM, 43);
}

static void test_status_of_killed_kernel(void **state) {
    assert_int_equal(init_wait(init_spawn("kill -KILL $$"), 5000), 128 + SIGKILL);
}

static void test_status_of_missing_kernel(void **state) {
    char *argv[] = {KBOX_KERNEL_HOST_BIN, "--", "/nonexistent/kernel", NULL};
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, argv[0], NULL, NULL, argv, environ), 0);
    assert_int_equal(init_wait(pid, 5000), 127);
}

static void test_usage_error(void **state) {
    char *argv[] = {KBOX_KERNEL_HOST_BIN, "--bogus", NULL};
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, argv[0], NULL, NULL, argv, environ), 0);
    assert_int_equal(init_wait(pid, 5000), 125);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reaps_orphan),
        cmocka_unit_test(test_forwards_sigint),
        cmocka_unit_test(test_forwards_sigterm),
        cmocka_unit_test(test_status_of_killed_kernel),
        cmocka_unit_test(test_status_of_missing_kernel),
        cmocka_unit_test(test_usage_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
