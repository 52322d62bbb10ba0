/* Unit tests for the OCI bundle generator (worker-image/bundle.h): every sandbox property the
 * config is supposed to carry is read back from the generated JSON, unsafe specs are refused,
 * and the repository's seccomp.json is checked for the traps listed in security.md. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "bundle.h"
#include "util.h"

#include <math.h>
#include <sys/stat.h>

#ifndef KBOX_SECCOMP_PROFILE
#error "KBOX_SECCOMP_PROFILE must point at worker-image/seccomp.json"
#endif

static const char *const kernel_argv[] = {"/usr/bin/python3",      "-m", "ipykernel_launcher", "-f",
                                          "/run/kbox/kernel.json", NULL};

static json_t *seccomp_stub(void) {
    return json_pack("{s:s, s:[s], s:[{s:[s], s:s}]}", "defaultAction", "SCMP_ACT_ERRNO",
                     "architectures", "SCMP_ARCH_X86_64", "syscalls", "names", "read", "action",
                     "SCMP_ACT_ALLOW");
}

static wimg_bundle_spec_t spec_valid(const json_t *seccomp) {
    return (wimg_bundle_spec_t){
        .worker_id = "w0123456789abcdef",
        .rootfs = "/var/lib/kbox/rootfs",
        .kernel_argv = kernel_argv,
        .run_dir = "/var/lib/kbox/run/w0123456789abcdef",
        .disk_mount = "/var/lib/kbox/disks/w0123456789abcdef",
        .netns_path = "/run/netns/kbox-w0123456789abcdef",
        .seccomp = seccomp,
        .uid = 100007,
        .cpu = 1.5,
        .ram_mb = 1024,
        .pids_max = 128,
    };
}

static json_t *build_ok(const wimg_bundle_spec_t *spec) {
    json_t *config = NULL;
    assert_int_equal(wimg_bundle_build(spec, &config), 0);
    assert_non_null(config);
    return config;
}

static json_t *path_get(json_t *root, const char *dotted) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", dotted);
    json_t *j = root;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && j;
         tok = strtok_r(NULL, ".", &save))
        j = json_object_get(j, tok);
    return j;
}

static bool string_array_has(json_t *arr, const char *s) {
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (streq(json_string_value(v), s)) return true;
    return false;
}

static json_t *mount_find(json_t *config, const char *dest) {
    size_t i;
    json_t *m;
    json_array_foreach(
        json_object_get(config, "mounts"), i,
        m) if (streq(json_string_value(json_object_get(m, "destination")), dest)) return m;
    return NULL;
}

static void test_process(void **state) {
    json_t *sc = seccomp_stub();
    wimg_bundle_spec_t spec = spec_valid(sc);
    json_t *c = build_ok(&spec);

    assert_int_equal(json_integer_value(path_get(c, "process.user.uid")), 100007);
    assert_int_equal(json_integer_value(path_get(c, "process.user.gid")), 100007);
    assert_int_equal(json_array_size(path_get(c, "process.user.additionalGids")), 0);
    assert_true(json_is_true(path_get(c, "process.noNewPrivileges")));
    assert_false(json_is_true(path_get(c, "process.terminal")));
    assert_string_equal(json_string_value(path_get(c, "process.cwd")), "/sandbox");

    const char *sets[] = {"bounding", "effective", "inheritable", "permitted", "ambient"};
    json_t *caps = path_get(c, "process.capabilities");
    assert_non_null(caps);
    for (size_t i = 0; i < ARRAY_SIZE(sets); i++) {
        json_t *set = json_object_get(caps, sets[i]);
        assert_true(json_is_array(set));
        assert_int_equal(json_array_size(set), 0);
    }

    json_t *args = path_get(c, "process.args");
    assert_int_equal(json_array_size(args), 2 + 5);
    assert_string_equal(json_string_value(json_array_get(args, 0)), WIMG_INIT_PATH);
    assert_string_equal(json_string_value(json_array_get(args, 1)), "--");
    for (size_t i = 0; kernel_argv[i]; i++)
        assert_string_equal(json_string_value(json_array_get(args, 2 + i)), kernel_argv[i]);

    json_t *env = path_get(c, "process.env");
    assert_true(string_array_has(env, "HOME=/sandbox"));
    assert_true(string_array_has(env, "LANG=C.UTF-8"));
    assert_true(string_array_has(env, "PATH=/usr/bin:/bin"));
    assert_true(string_array_has(env, "MPLBACKEND=module://matplotlib_inline.backend_inline"));
    assert_true(string_array_has(env, "MPLCONFIGDIR=/tmp/matplotlib"));
    assert_true(string_array_has(env, "OPENBLAS_NUM_THREADS=2")); /* ceil(1.5) */

    bool core = false, nofile = false;
    size_t i;
    json_t *rl;
    json_array_foreach(path_get(c, "process.rlimits"), i, rl) {
        const char *type = json_string_value(json_object_get(rl, "type"));
        json_int_t hard = json_integer_value(json_object_get(rl, "hard"));
        json_int_t soft = json_integer_value(json_object_get(rl, "soft"));
        if (streq(type, "RLIMIT_CORE")) {
            core = true;
            assert_int_equal(hard, 0);
            assert_int_equal(soft, 0);
        } else if (streq(type, "RLIMIT_NOFILE")) {
            nofile = true;
            assert_int_equal(hard, 1024);
            assert_int_equal(soft, 1024);
        }
    }
    assert_true(core && nofile);
    json_decref(c);
    json_decref(sc);
}

static void test_root_and_mounts(void **state) {
    json_t *sc = seccomp_stub();
    wimg_bundle_spec_t spec = spec_valid(sc);
    spec.tmp_mb = 100;
    json_t *c = build_ok(&spec);

    assert_string_equal(json_string_value(path_get(c, "root.path")), "/var/lib/kbox/rootfs");
    assert_true(json_is_true(path_get(c, "root.readonly")));
    assert_string_equal(json_string_value(path_get(c, "hostname")), "kbox");

    json_t *tmp = mount_find(c, "/tmp");
    assert_non_null(tmp);
    assert_string_equal(json_string_value(json_object_get(tmp, "type")), "tmpfs");
    json_t *opts = json_object_get(tmp, "options");
    assert_true(string_array_has(opts, "size=100m"));
    assert_true(string_array_has(opts, "nosuid"));
    assert_true(string_array_has(opts, "nodev"));
    assert_true(string_array_has(opts, "mode=1777"));

    json_t *shm = mount_find(c, "/dev/shm");
    assert_non_null(shm);
    assert_true(string_array_has(json_object_get(shm, "options"), "size=64m"));

    json_t *pts = mount_find(c, "/dev/pts");
    assert_non_null(pts);
    assert_true(string_array_has(json_object_get(pts, "options"), "newinstance"));

    json_t *sys = mount_find(c, "/sys");
    assert_non_null(sys);
    assert_true(string_array_has(json_object_get(sys, "options"), "ro"));

    json_t *sbox = mount_find(c, "/sandbox");
    assert_non_null(sbox);
    assert_string_equal(json_string_value(json_object_get(sbox, "type")), "bind");
    assert_string_equal(json_string_value(json_object_get(sbox, "source")), spec.disk_mount);
    assert_true(string_array_has(json_object_get(sbox, "options"), "rbind"));
    assert_true(string_array_has(json_object_get(sbox, "options"), "nosuid"));
    assert_true(string_array_has(json_object_get(sbox, "options"), "nodev"));

    json_t *run = mount_find(c, "/run/kbox");
    assert_non_null(run);
    assert_string_equal(json_string_value(json_object_get(run, "source")), spec.run_dir);

    assert_non_null(mount_find(c, "/proc"));
    assert_non_null(mount_find(c, "/dev"));
    /* No cgroupfs, no host /dev, no mqueue: nothing the kernel does not need. */
    assert_null(mount_find(c, "/sys/fs/cgroup"));
    assert_int_equal(json_array_size(json_object_get(c, "mounts")), 8);
    json_decref(c);

    /* Without a disk, /sandbox is a tmpfs owned by the worker. */
    spec.disk_mount = NULL;
    c = build_ok(&spec);
    sbox = mount_find(c, "/sandbox");
    assert_string_equal(json_string_value(json_object_get(sbox, "type")), "tmpfs");
    assert_true(string_array_has(json_object_get(sbox, "options"), "uid=100007"));
    assert_true(string_array_has(json_object_get(sbox, "options"), "size=256m"));
    json_decref(c);
    json_decref(sc);
}

static void test_linux(void **state) {
    json_t *sc = seccomp_stub();
    wimg_bundle_spec_t spec = spec_valid(sc);
    json_t *c = build_ok(&spec);

    const char *want[] = {"pid", "mount", "ipc", "uts", "cgroup", "network"};
    json_t *ns = path_get(c, "linux.namespaces");
    assert_int_equal(json_array_size(ns), ARRAY_SIZE(want));
    for (size_t w = 0; w < ARRAY_SIZE(want); w++) {
        bool found = false;
        size_t i;
        json_t *n;
        json_array_foreach(ns, i, n) {
            if (!streq(json_string_value(json_object_get(n, "type")), want[w]))
                continue;
            found = true;
            json_t *path = json_object_get(n, "path");
            if (streq(want[w], "network"))
                assert_string_equal(json_string_value(path), spec.netns_path);
            else
                assert_null(path);
        }
        assert_true(found);
    }

    json_t *masked = path_get(c, "linux.maskedPaths");
    const char *must_mask[] = {
        "/proc/kcore",       "/proc/keys",      "/proc/timer_list",
        "/proc/sched_debug", "/proc/acpi",      "/proc/scsi",
        "/sys/firmware",     "/proc/diskstats", "/sys/devices/virtual/block"};
    for (size_t i = 0; i < ARRAY_SIZE(must_mask); i++)
        assert_true(string_array_has(masked, must_mask[i]));
    json_t *ro = path_get(c, "linux.readonlyPaths");
    const char *must_ro[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                             "/proc/sysrq-trigger"};
    for (size_t i = 0; i < ARRAY_SIZE(must_ro); i++)
        assert_true(string_array_has(ro, must_ro[i]));

    json_t *res = path_get(c, "linux.resources");
    assert_int_equal(json_integer_value(path_get(res, "memory.limit")), 1024ll << 20);
    assert_int_equal(json_integer_value(path_get(res, "memory.swap")), 1024ll << 20);
    assert_int_equal(json_integer_value(path_get(res, "cpu.quota")), 150000);
    assert_int_equal(json_integer_value(path_get(res, "cpu.period")), 100000);
    assert_int_equal(json_integer_value(path_get(res, "pids.limit")), 128);
    json_t *dev0 = json_array_get(json_object_get(res, "devices"), 0);
    assert_false(json_is_true(json_object_get(dev0, "allow")));
    assert_string_equal(json_string_value(json_object_get(dev0, "access")), "rwm");

    assert_string_equal(json_string_value(path_get(c, "linux.cgroupsPath")),
                        "/kbox/w0123456789abcdef");
    assert_true(json_equal(path_get(c, "linux.seccomp"), sc));
    assert_true(path_get(c, "linux.seccomp") != sc); /* a copy, not a shared reference */
    json_decref(c);

    /* No prepared netns: a new, empty one. Custom parent and hostname. Tiny CPU quota. */
    spec.netns_path = NULL;
    spec.cgroup_parent = "kbox-test/a1";
    spec.hostname = "box1";
    spec.cpu = 0.001;
    c = build_ok(&spec);
    size_t i;
    json_t *n;
    json_array_foreach(path_get(c, "linux.namespaces"), i, n) {
        if (streq(json_string_value(json_object_get(n, "type")), "network"))
            assert_null(json_object_get(n, "path"));
    }
    assert_string_equal(json_string_value(path_get(c, "linux.cgroupsPath")),
                        "/kbox-test/a1/w0123456789abcdef");
    assert_string_equal(json_string_value(path_get(c, "hostname")), "box1");
    assert_int_equal(json_integer_value(path_get(c, "linux.resources.cpu.quota")), 1000);
    json_decref(c);
    json_decref(sc);
}

static void expect_invalid(const wimg_bundle_spec_t *spec) {
    json_t *c = (json_t *)0x1;
    assert_int_equal(wimg_bundle_build(spec, &c), -EINVAL);
    assert_ptr_equal(c, (json_t *)0x1); /* untouched on failure */
}

static void test_invalid(void **state) {
    json_t *sc = seccomp_stub();
    wimg_bundle_spec_t s;
    const char *const rel_argv[] = {"python3", NULL};
    const char *const empty_argv[] = {NULL};

    expect_invalid(NULL);
#define BAD(field, value)                                                                          \
    do {                                                                                           \
        s = spec_valid(sc);                                                                        \
        s.field = value;                                                                           \
        expect_invalid(&s);                                                                        \
    } while (0)
    BAD(uid, 0);
    BAD(uid, 999);
    BAD(worker_id, NULL);
    BAD(worker_id, "");
    BAD(worker_id, "../etc");
    BAD(worker_id, "w1/2");
    BAD(rootfs, NULL);
    BAD(rootfs, "rootfs");
    BAD(rootfs, "/var/lib/kbox/../../etc");
    BAD(run_dir, "/a/./b");
    BAD(run_dir, NULL);
    BAD(disk_mount, "disk");
    BAD(disk_mount, "/a,b");
    BAD(netns_path, "netns");
    BAD(init_path, "kernel-host");
    BAD(kernel_argv, NULL);
    BAD(kernel_argv, rel_argv);
    BAD(kernel_argv, empty_argv);
    BAD(seccomp, NULL);
    BAD(cpu, 0.0);
    BAD(cpu, -1.0);
    BAD(cpu, NAN);
    BAD(ram_mb, 0);
    BAD(ram_mb, UINT64_MAX / 2);
    BAD(pids_max, 0);
    BAD(cgroup_parent, "/kbox");
    BAD(cgroup_parent, "kbox/");
    BAD(cgroup_parent, "a//b");
    BAD(cgroup_parent, "a/../b");
    BAD(hostname, "bad host");
    BAD(hostname, "");
#undef BAD
    s = spec_valid(sc);
    assert_int_equal(wimg_bundle_build(&s, NULL), -EINVAL);
    json_decref(sc);
}

static bool has_comment(json_t *j) {
    if (json_is_object(j)) {
        if (json_object_get(j, "comment"))
            return true;
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) if (has_comment(v)) return true;
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) if (has_comment(v)) return true;
    }
    return false;
}

/* The rules that mention name, in order. */
static size_t rules_for(json_t *seccomp, const char *name, json_t **ret, size_t max) {
    size_t n = 0, i;
    json_t *rule;
    json_array_foreach(json_object_get(seccomp, "syscalls"), i, rule) {
        if (string_array_has(json_object_get(rule, "names"), name) && n < max)
            ret[n++] = rule;
    }
    return n;
}

static void test_seccomp_profile(void **state) {
    json_t *sc = NULL;
    assert_int_equal(wimg_seccomp_load(KBOX_SECCOMP_PROFILE, &sc), 0);
    assert_false(has_comment(sc));
    assert_string_equal(json_string_value(json_object_get(sc, "defaultAction")), "SCMP_ACT_ERRNO");
    assert_int_equal(json_integer_value(json_object_get(sc, "defaultErrnoRet")), EPERM);

    json_t *rules[8] = {0}; /* cmocka asserts are not noreturn: no path may read garbage */
    /* clone3: ENOSYS, never allowed, or glibc 2.36 starts no thread. */
    assert_int_equal(rules_for(sc, "clone3", rules, 8), 1);
    assert_string_equal(json_string_value(json_object_get(rules[0], "action")), "SCMP_ACT_ERRNO");
    assert_int_equal(json_integer_value(json_object_get(rules[0], "errnoRet")), ENOSYS);

    /* clone: only with every CLONE_NEW* bit clear. */
    assert_int_equal(rules_for(sc, "clone", rules, 8), 1);
    json_t *arg = json_array_get(json_object_get(rules[0], "args"), 0);
    assert_non_null(arg);
    assert_int_equal(json_array_size(json_object_get(rules[0], "args")), 1);
    assert_string_equal(json_string_value(json_object_get(arg, "op")), "SCMP_CMP_MASKED_EQ");
    assert_int_equal(json_integer_value(json_object_get(arg, "index")), 0);
    assert_int_equal(json_integer_value(json_object_get(arg, "value")),
                     0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 |
                         0x40000000);
    assert_int_equal(json_integer_value(json_object_get(arg, "valueTwo")), 0);

    /* socket: families below AF_NETLINK, and netlink's NETLINK_ROUTE; never AF_VSOCK (a path
     * to the VM host no netns can close) nor the uevent protocol (the host's device events).
     * Only exact or less-than tests: a != test lets high bits through (the kernel reads int). */
    assert_int_equal(rules_for(sc, "socket", rules, 8), 2);
    arg = json_array_get(json_object_get(rules[0], "args"), 0);
    assert_int_equal(json_array_size(json_object_get(rules[0], "args")), 1);
    assert_string_equal(json_string_value(json_object_get(arg, "op")), "SCMP_CMP_LT");
    assert_int_equal(json_integer_value(json_object_get(arg, "value")), 16);
    json_t *args = json_object_get(rules[1], "args");
    assert_int_equal(json_array_size(args), 2);
    for (size_t i = 0; i < 2; i++) {
        arg = json_array_get(args, i);
        assert_string_equal(json_string_value(json_object_get(arg, "op")), "SCMP_CMP_EQ");
        assert_int_equal(json_integer_value(json_object_get(arg, "index")), i == 0 ? 0 : 2);
        assert_int_equal(json_integer_value(json_object_get(arg, "value")), i == 0 ? 16 : 0);
    }

    /* The syscalls security.md lists: mentioned only in an EPERM rule, never allowed. */
    const char *denied[] = {"mount",          "ptrace",          "bpf",
                            "keyctl",         "add_key",         "kexec_load",
                            "init_module",    "perf_event_open", "userfaultfd",
                            "unshare",        "setns",           "pivot_root",
                            "swapon",         "reboot",          "open_by_handle_at",
                            "io_uring_setup", "io_uring_enter",  "io_uring_register"};
    for (size_t i = 0; i < ARRAY_SIZE(denied); i++) {
        size_t n = rules_for(sc, denied[i], rules, 8);
        assert_int_equal(n, 1);
        assert_string_equal(json_string_value(json_object_get(rules[0], "action")),
                            "SCMP_ACT_ERRNO");
        assert_int_equal(json_integer_value(json_object_get(rules[0], "errnoRet")), EPERM);
    }
    /* And what CPython + ipykernel cannot live without is allowed unconditionally. */
    const char *needed[] = {"futex",           "mmap",  "execve", "epoll_wait", "getrandom", "rseq",
                            "set_robust_list", "wait4", "pipe2",  "connect"};
    for (size_t i = 0; i < ARRAY_SIZE(needed); i++) {
        assert_int_equal(rules_for(sc, needed[i], rules, 8), 1);
        assert_string_equal(json_string_value(json_object_get(rules[0], "action")),
                            "SCMP_ACT_ALLOW");
        assert_null(json_object_get(rules[0], "args"));
    }
    json_decref(sc);
}

static void test_seccomp_load_errors(void **state) {
    json_t *sc = (json_t *)0x1;
    assert_int_equal(wimg_seccomp_load("/nonexistent/seccomp.json", &sc), -ENOENT);
    assert_int_equal(wimg_seccomp_load(NULL, &sc), -EINVAL);

    char dir[] = "/tmp/test_bundle.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/p.json", dir);
    const char *bad[] = {
        "{not json",
        "{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"architectures\": [], \"syscalls\": []}",
        "{\"defaultAction\": \"SCMP_ACT_ERRNO\", \"architectures\": []}",
        "{\"defaultAction\": \"SCMP_ACT_ERRNO\", \"defaultAction\": \"SCMP_ACT_ALLOW\","
        " \"architectures\": [], \"syscalls\": []}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        assert_int_equal(write_file_atomic(path, bad[i], strlen(bad[i]), 0600), 0);
        assert_int_equal(wimg_seccomp_load(path, &sc), -EINVAL);
    }
    assert_ptr_equal(sc, (json_t *)0x1);
    unlink(path);
    rmdir(dir);
}

static void test_write(void **state) {
    json_t *sc = seccomp_stub();
    wimg_bundle_spec_t spec = spec_valid(sc);
    json_t *c = build_ok(&spec);

    char dir[] = "/tmp/test_bundle.XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(wimg_bundle_write(dir, c), 0);
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    json_error_t err;
    json_t *back = json_load_file(path, 0, &err);
    assert_non_null(back);
    assert_true(json_equal(back, c));
    assert_int_equal(wimg_bundle_write("/nonexistent-dir", c), -ENOENT);
    json_decref(back);
    unlink(path);
    rmdir(dir);
    json_decref(c);
    json_decref(sc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_process),         cmocka_unit_test(test_root_and_mounts),
        cmocka_unit_test(test_linux),           cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_seccomp_profile), cmocka_unit_test(test_seccomp_load_errors),
        cmocka_unit_test(test_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
