/* Unit tests for gateway option parsing: defaults, env, argv precedence and errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "config.h"
#include "util.h"

static const char *fake_env_value;
static const char *fake_env_name;
static const char *fake_getenv(const char *name) {
    return streq(name, fake_env_name) ? fake_env_value : NULL;
}
static const char *no_env(const char *name) {
    return NULL;
}

static void test_defaults(void **state) {
    gw_config_t c;
    char err[256];
    char *argv[] = {"gw", NULL};
    assert_int_equal(gw_config_load(&c, 1, argv, no_env, err, sizeof err), 0);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 3874);
    assert_int_equal(c.min_idle_workers, 5);
    assert_int_equal(c.max_total_workers, 50);
    assert_true(c.worker_cpu == 1.0);
    assert_int_equal(c.worker_ram_mb, 1024);
    assert_int_equal(c.worker_disk_mb, 500);
    assert_int_equal(c.exec_timeout_ms, 120000);
    assert_int_equal(c.idle_timeout_s, 3600);
    assert_int_equal(c.max_output_bytes, 1048576);
    assert_int_equal(c.max_queue, 32);
    assert_int_equal(c.max_connections, 1024);
    assert_int_equal(c.max_connections_per_address, 256);
    assert_int_equal(c.client_timeout_s, 60);
}

static void test_env_then_argv(void **state) {
    gw_config_t c;
    char err[256];
    fake_env_name = "MIN_IDLE_WORKERS";
    fake_env_value = "7";
    char *argv1[] = {"gw", NULL};
    assert_int_equal(gw_config_load(&c, 1, argv1, fake_getenv, err, sizeof err), 0);
    assert_int_equal(c.min_idle_workers, 7);
    char *argv2[] = {"gw", "--min-idle-workers", "3", "--worker-cpu=0.5", NULL};
    assert_int_equal(gw_config_load(&c, 4, argv2, fake_getenv, err, sizeof err), 0);
    assert_int_equal(c.min_idle_workers, 3);
    assert_true(c.worker_cpu == 0.5);
}

static void test_errors(void **state) {
    gw_config_t c;
    char err[256];
    char *bad_num[] = {"gw", "--port", "70000", NULL};
    assert_int_equal(gw_config_load(&c, 3, bad_num, no_env, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "port"));
    char *frac[] = {"gw", "--max-queue", "1.5", NULL};
    assert_int_equal(gw_config_load(&c, 3, frac, no_env, err, sizeof err), -EINVAL);
    char *unknown[] = {"gw", "--bogus", "1", NULL};
    assert_int_equal(gw_config_load(&c, 3, unknown, no_env, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "bogus"));
    char *missing[] = {"gw", "--port", NULL};
    assert_int_equal(gw_config_load(&c, 2, missing, no_env, err, sizeof err), -EINVAL);
    char *minmax[] = {"gw", "--min-idle-workers", "9", "--max-total-workers", "3", NULL};
    assert_int_equal(gw_config_load(&c, 5, minmax, no_env, err, sizeof err), -EINVAL);
    char *kernel[] = {"gw", "--kernel", "ruby", NULL};
    assert_int_equal(gw_config_load(&c, 3, kernel, no_env, err, sizeof err), -EINVAL);
    char *rel[] = {"gw", "--state-dir", "relative", NULL};
    assert_int_equal(gw_config_load(&c, 3, rel, no_env, err, sizeof err), -EINVAL);
    fake_env_name = "WORKER_RAM_MB";
    fake_env_value = "lots";
    char *none[] = {"gw", NULL};
    assert_int_equal(gw_config_load(&c, 1, none, fake_getenv, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "WORKER_RAM_MB"));
    char *per_addr[] = {"gw", "--max-connections-per-address", "0", "--client-timeout-s", "0",
                        NULL};
    assert_int_equal(gw_config_load(&c, 5, per_addr, no_env, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "client-timeout-s")); /* 0 = no limit is for the per-address one */
    char *help[] = {"gw", "--help", NULL};
    assert_int_equal(gw_config_load(&c, 2, help, no_env, err, sizeof err), 1);
    assert_non_null(strstr(gw_config_usage(), "--idle-timeout-s"));
}

static void test_worker_transport(void **state) {
    gw_config_t c;
    char err[256];
    char *def[] = {"gw", NULL};
    assert_int_equal(gw_config_load(&c, 1, def, no_env, err, sizeof err), 0);
    assert_string_equal(c.worker_transport, "ipc");
    assert_string_equal(c.worker_net4, "10.255.0.0/16");
    assert_string_equal(c.worker_net6, "");
    char *tcp[] = {"gw",           "--worker-transport",
                   "tcp",          "--worker-net4",
                   "10.9.0.0/24",  "--worker-net6",
                   "fd00:1::/112", "--uid-count",
                   "64",           NULL};
    assert_int_equal(gw_config_load(&c, 9, tcp, no_env, err, sizeof err), 0);
    assert_string_equal(c.worker_transport, "tcp");
    assert_string_equal(c.worker_net6, "fd00:1::/112");
    char *bad[] = {"gw", "--worker-transport", "udp", NULL};
    assert_int_equal(gw_config_load(&c, 3, bad, no_env, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "worker-transport"));
    /* tcp needs the runc launcher's own network namespaces */
    char *proc[] = {"gw", "--worker-transport", "tcp", "--launcher", "process", NULL};
    assert_int_equal(gw_config_load(&c, 5, proc, no_env, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "runc"));
    /* host bits set, and a /24 (64 links) for 4096 uids */
    char *host_bits[] = {"gw", "--worker-transport", "tcp", "--worker-net4", "10.9.0.1/24", NULL};
    assert_int_equal(gw_config_load(&c, 5, host_bits, no_env, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "10.9.0.1/24"));
    char *small[] = {"gw", "--worker-transport", "tcp", "--worker-net4", "10.9.0.0/24", NULL};
    assert_int_equal(gw_config_load(&c, 5, small, no_env, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "uid-count"));
    char *v6small[] = {"gw",           "--worker-transport", "tcp", "--worker-net6",
                       "fd00:1::/122", "--uid-count",        "64",  NULL};
    assert_int_equal(gw_config_load(&c, 7, v6small, no_env, err, sizeof err), -EINVAL);
    /* an ipc gateway ignores the tcp blocks */
    char *ipc[] = {"gw", "--worker-net4", "nonsense", NULL};
    assert_int_equal(gw_config_load(&c, 3, ipc, no_env, err, sizeof err), 0);
}

static void test_uid_base(void **state) {
    (void)state;
    gw_config_t c;
    char err[256];
    char *def[] = {"gw", NULL};
    assert_int_equal(gw_config_load(&c, 1, def, no_env, err, sizeof err), 0);
    assert_int_equal(c.uid_base, 0); /* automatic: a free range, kept in the state dir */
    char *low[] = {"gw", "--uid-base", "500", NULL};
    assert_int_equal(gw_config_load(&c, 3, low, no_env, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "uid-base"));
    char *high[] = {"gw", "--uid-base", "2147480000", "--uid-count", "4096", NULL};
    assert_int_equal(gw_config_load(&c, 5, high, no_env, err, sizeof err), -EINVAL);
    char *ok[] = {"gw", "--uid-base", "1000", NULL};
    assert_int_equal(gw_config_load(&c, 3, ok, no_env, err, sizeof err), 0);
    assert_int_equal(c.uid_base, 1000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uid_base),         cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_env_then_argv),    cmocka_unit_test(test_errors),
        cmocka_unit_test(test_worker_transport),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
