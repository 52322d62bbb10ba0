/* Unit tests of the disk manager's pure parts: disk names, configured directories, size and
 * room arithmetic, the mkfs command line, the parsing of sysfs backing files and mount
 * targets, and the kbox-diskmgr command line. No root, no devices. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cli.h"
#include "disk-util.h"
#include "diskmgr.h"
#include "util.h"

static void test_name_valid(void **state) {
    (void)state;
    assert_true(disk_name_valid("a"));
    assert_true(disk_name_valid("w0123456789abcdef"));
    assert_true(disk_name_valid("User_1-x"));
    assert_true(disk_name_valid("9"));
    char longest[DISK_NAME_MAX + 1];
    memset(longest, 'a', DISK_NAME_MAX);
    longest[DISK_NAME_MAX] = '\0';
    assert_true(disk_name_valid(longest));

    char too_long[DISK_NAME_MAX + 2];
    memset(too_long, 'a', DISK_NAME_MAX + 1);
    too_long[DISK_NAME_MAX + 1] = '\0';
    assert_false(disk_name_valid(too_long));
    assert_false(disk_name_valid(NULL));
    assert_false(disk_name_valid(""));
    assert_false(disk_name_valid("."));
    assert_false(disk_name_valid(".."));
    assert_false(disk_name_valid("-F")); /* would read as an option */
    assert_false(disk_name_valid("_x"));
    assert_false(disk_name_valid("a/b")); /* path traversal */
    assert_false(disk_name_valid("../x"));
    assert_false(disk_name_valid("a b")); /* would be ambiguous in " (deleted)" */
    assert_false(disk_name_valid("a.img"));
    assert_false(disk_name_valid("a\n"));
    assert_false(disk_name_valid("\xc3\xa9"));
}

static void test_size_bytes(void **state) {
    (void)state;
    uint64_t b = 7;
    assert_int_equal(disk_size_bytes(500, &b), 0);
    assert_true(b == 500ull * 1024 * 1024);
    assert_int_equal(disk_size_bytes(DISK_SIZE_MIN_MB, &b), 0);
    assert_int_equal(disk_size_bytes(DISK_SIZE_MAX_MB, &b), 0);
    assert_true(b == (uint64_t)DISK_SIZE_MAX_MB << 20);
    b = 7;
    assert_int_equal(disk_size_bytes(0, &b), -EINVAL);
    assert_int_equal(disk_size_bytes(DISK_SIZE_MIN_MB - 1, &b), -EINVAL);
    assert_int_equal(disk_size_bytes(DISK_SIZE_MAX_MB + 1ull, &b), -EINVAL);
    assert_int_equal(disk_size_bytes(UINT64_MAX, &b), -EINVAL);
    assert_true(b == 7); /* untouched on failure */
}

static void test_room_check(void **state) {
    (void)state;
    const uint64_t MB = 1 << 20;
    /* 1000 MiB free in 4 KiB blocks */
    uint64_t blocks = 1000 * MB / 4096;
    assert_int_equal(disk_room_check(blocks, 4096, 500 * MB, 500 * MB), 0);
    assert_int_equal(disk_room_check(blocks, 4096, 500 * MB, 500 * MB + 1), -ENOSPC);
    assert_int_equal(disk_room_check(blocks, 4096, 1000 * MB, 0), 0);
    assert_int_equal(disk_room_check(blocks, 4096, 1000 * MB + 1, 0), -ENOSPC);
    assert_int_equal(disk_room_check(0, 4096, 16 * MB, 0), -ENOSPC);
    /* no overflow: huge free space, huge requests */
    assert_int_equal(disk_room_check(UINT64_MAX, UINT64_MAX, 500 * MB, 1024 * MB), 0);
    assert_int_equal(disk_room_check(UINT64_MAX, 1, UINT64_MAX, 1), -ENOSPC);
    assert_int_equal(disk_room_check(blocks, 4096, UINT64_MAX, UINT64_MAX), -ENOSPC);
}

static void test_dir_valid(void **state) {
    (void)state;
    assert_int_equal(disk_dir_valid("/var/lib/kbox/disks"), 0);
    assert_int_equal(disk_dir_valid("/tmp/x"), 0);
    assert_int_equal(disk_dir_valid("/a//b/"), 0);
    assert_int_equal(disk_dir_valid("/a/.b/c.d"), 0);
    assert_int_equal(disk_dir_valid(NULL), -EINVAL);
    assert_int_equal(disk_dir_valid(""), -EINVAL);
    assert_int_equal(disk_dir_valid("/"), -EINVAL);
    assert_int_equal(disk_dir_valid("relative/dir"), -EINVAL);
    assert_int_equal(disk_dir_valid("/a/../b"), -EINVAL);
    assert_int_equal(disk_dir_valid("/a/./b"), -EINVAL);
    assert_int_equal(disk_dir_valid("/a/.."), -EINVAL);
    char longdir[DISK_DIR_MAX + 2];
    longdir[0] = '/';
    memset(longdir + 1, 'd', DISK_DIR_MAX);
    longdir[DISK_DIR_MAX + 1] = '\0';
    assert_int_equal(disk_dir_valid(longdir), -ENAMETOOLONG);
    longdir[DISK_DIR_MAX] = '\0';
    assert_int_equal(disk_dir_valid(longdir), 0);
}

static void test_path_join(void **state) {
    (void)state;
    char buf[DISK_PATH_MAX];
    assert_int_equal(disk_path_join(buf, sizeof buf, "/s/disks", "w1", ".img"), 0);
    assert_string_equal(buf, "/s/disks/w1.img");
    assert_int_equal(disk_path_join(buf, sizeof buf, "/s/mnt", "w1", NULL), 0);
    assert_string_equal(buf, "/s/mnt/w1");
    assert_int_equal(disk_path_join(buf, sizeof buf, "/s", "../etc", NULL), -EINVAL);
    assert_int_equal(disk_path_join(buf, sizeof buf, "/s", "", NULL), -EINVAL);
    char small[8];
    assert_int_equal(disk_path_join(small, sizeof small, "/s/disks", "w1", ".img"), -ENAMETOOLONG);
    /* The largest directory and name always fit DISK_PATH_MAX. */
    char dir[DISK_DIR_MAX + 1], name[DISK_NAME_MAX + 1];
    dir[0] = '/';
    memset(dir + 1, 'd', DISK_DIR_MAX - 1);
    dir[DISK_DIR_MAX] = '\0';
    memset(name, 'n', DISK_NAME_MAX);
    name[DISK_NAME_MAX] = '\0';
    assert_int_equal(disk_path_join(buf, sizeof buf, dir, name, ".tmp"), 0);
}

static void test_file_classify(void **state) {
    (void)state;
    char name[DISK_NAME_MAX + 1];
    assert_int_equal(disk_file_classify("w1.img", name), DISK_FILE_IMAGE);
    assert_string_equal(name, "w1");
    assert_int_equal(disk_file_classify("w-2.tmp", name), DISK_FILE_TMP);
    assert_string_equal(name, "w-2");
    assert_int_equal(disk_file_classify(".img", name), DISK_FILE_OTHER);
    assert_int_equal(disk_file_classify("a.b.img", name), DISK_FILE_OTHER);
    assert_int_equal(disk_file_classify("notes.txt", name), DISK_FILE_OTHER);
    assert_int_equal(disk_file_classify("w1.img.bak", name), DISK_FILE_OTHER);
    assert_int_equal(disk_file_classify("-x.img", name), DISK_FILE_OTHER);
    assert_int_equal(disk_file_classify(NULL, name), DISK_FILE_OTHER);
    assert_int_equal(disk_file_classify("w1.img", NULL), DISK_FILE_IMAGE);
}

static void test_backing_in_dir(void **state) {
    (void)state;
    char file[256];
    bool deleted = true;
    assert_int_equal(
        disk_backing_in_dir("/s/disks/w1.img\n", "/s/disks", file, sizeof file, &deleted), 0);
    assert_string_equal(file, "w1.img");
    assert_false(deleted);
    assert_int_equal(
        disk_backing_in_dir("/s/disks/w1.img (deleted)", "/s/disks", file, sizeof file, &deleted),
        0);
    assert_string_equal(file, "w1.img");
    assert_true(deleted);
    assert_int_equal(disk_backing_in_dir("/s/disks/w1.img", "/s/disks", file, sizeof file, NULL),
                     0);
    /* elsewhere: a sibling directory sharing the prefix, a subdirectory, the dir itself */
    assert_int_equal(disk_backing_in_dir("/s/disks2/w1.img", "/s/disks", file, sizeof file, NULL),
                     -ENOENT);
    assert_int_equal(
        disk_backing_in_dir("/s/disks/sub/w1.img", "/s/disks", file, sizeof file, NULL), -ENOENT);
    assert_int_equal(disk_backing_in_dir("/s/disks/", "/s/disks", file, sizeof file, NULL),
                     -ENOENT);
    assert_int_equal(disk_backing_in_dir("/s/disks", "/s/disks", file, sizeof file, NULL), -ENOENT);
    assert_int_equal(disk_backing_in_dir("/other/w1.img", "/s/disks", file, sizeof file, NULL),
                     -ENOENT);
    char small[4];
    assert_int_equal(disk_backing_in_dir("/s/disks/w1.img", "/s/disks", small, sizeof small, NULL),
                     -ENAMETOOLONG);
}

static void test_mount_name(void **state) {
    (void)state;
    char name[DISK_NAME_MAX + 1];
    bool exact = false;
    assert_int_equal(disk_mount_name("/s/mnt/w1", "/s/mnt", name, &exact), 0);
    assert_string_equal(name, "w1");
    assert_true(exact);
    assert_int_equal(disk_mount_name("/s/mnt/w1/sub/deeper", "/s/mnt", name, &exact), 0);
    assert_string_equal(name, "w1");
    assert_false(exact);
    assert_int_equal(disk_mount_name("/s/mnt", "/s/mnt", name, &exact), -ENOENT);
    assert_int_equal(disk_mount_name("/s/mnt/", "/s/mnt", name, &exact), -ENOENT);
    assert_int_equal(disk_mount_name("/s/mnt2/w1", "/s/mnt", name, &exact), -ENOENT);
    assert_int_equal(disk_mount_name("/", "/s/mnt", name, &exact), -ENOENT);
    char target[300] = "/s/mnt/";
    memset(target + 7, 'x', 100);
    target[107] = '\0';
    assert_int_equal(disk_mount_name(target, "/s/mnt", name, &exact), 0);
    assert_int_equal(strlen(name), DISK_NAME_MAX);
    assert_false(exact); /* too long to be one of ours: stray */
}

static void test_name_kept(void **state) {
    (void)state;
    const char *keep[] = {"a", "b-2"};
    assert_true(disk_name_kept("a", keep, 2));
    assert_true(disk_name_kept("b-2", keep, 2));
    assert_false(disk_name_kept("b", keep, 2));
    assert_false(disk_name_kept("a", NULL, 0));
}

static int argv_index(const char **argv, const char *s) {
    for (int i = 0; argv[i]; i++)
        if (strcmp(argv[i], s) == 0)
            return i;
    return -1;
}

static void test_mkfs_argv(void **state) {
    (void)state;
    char opts[128];
    const char *argv[DISK_MKFS_ARGV_MAX];
    int n =
        disk_mkfs_argv("/sbin/mkfs.ext4", "/s/disks/w1.tmp", 1234, 5678, opts, sizeof opts, argv);
    assert_true(n > 0 && n < DISK_MKFS_ARGV_MAX);
    assert_null(argv[n]);
    assert_string_equal(argv[0], "/sbin/mkfs.ext4");
    assert_string_equal(argv[n - 1], "/s/disks/w1.tmp");
    assert_string_equal(argv[n - 2], "--");
    assert_true(argv_index(argv, "-F") > 0);
    int l = argv_index(argv, "-L");
    assert_true(l > 0);
    assert_string_equal(argv[l + 1], DISK_LABEL);
    assert_true(strlen(DISK_LABEL) <= 16); /* the ext4 label limit */
    int b = argv_index(argv, "-b");
    assert_true(b > 0);
    assert_string_equal(argv[b + 1], "4096");
    int e = argv_index(argv, "-E");
    assert_true(e > 0);
    /* Without nodiscard mke2fs punches the fallocated blocks back out of the image. */
    assert_non_null(strstr(argv[e + 1], "nodiscard"));
    assert_non_null(strstr(argv[e + 1], "assume_storage_prezeroed=1"));
    assert_non_null(strstr(argv[e + 1], "root_owner=1234:5678"));
    char tiny[16];
    assert_true(disk_mkfs_argv("/sbin/mkfs.ext4", "/x", 1, 1, tiny, sizeof tiny, argv) < 0);
}

static void test_parse_u64(void **state) {
    (void)state;
    uint64_t v = 99;
    assert_int_equal(disk_parse_u64("0", 10, &v), 0);
    assert_true(v == 0);
    assert_int_equal(disk_parse_u64("18446744073709551615", UINT64_MAX, &v), 0);
    assert_true(v == UINT64_MAX);
    v = 99;
    assert_int_equal(disk_parse_u64("18446744073709551616", UINT64_MAX, &v), -ERANGE);
    assert_int_equal(disk_parse_u64("11", 10, &v), -ERANGE);
    assert_int_equal(disk_parse_u64("", 10, &v), -EINVAL);
    assert_int_equal(disk_parse_u64(NULL, 10, &v), -EINVAL);
    assert_int_equal(disk_parse_u64("-1", 10, &v), -EINVAL);
    assert_int_equal(disk_parse_u64("+1", 10, &v), -EINVAL);
    assert_int_equal(disk_parse_u64(" 1", 10, &v), -EINVAL);
    assert_int_equal(disk_parse_u64("1k", 10, &v), -EINVAL);
    assert_int_equal(disk_parse_u64("0x1", 10, &v), -EINVAL);
    assert_true(v == 99);
}

/* --- the command line --- */

static disk_cli_t cli; /* large (the keep list): not on the stack */
static char err[256];

#define PARSE(...)                                                                                 \
    ({                                                                                             \
        char *const _argv[] = {"kbox-diskmgr", __VA_ARGS__, NULL};                                 \
        memset(&cli, 0x5a, sizeof cli);                                                            \
        err[0] = '\0';                                                                             \
        disk_cli_parse((int)ARRAY_SIZE(_argv) - 1, _argv, &cli, err, sizeof err);                  \
    })

static void test_cli_create(void **state) {
    (void)state;
    assert_int_equal(PARSE("--images", "/s/d", "--mounts=/s/m", "create", "w1", "500", "--uid",
                           "1000", "--gid=1001"),
                     0);
    assert_int_equal(cli.cmd, DISK_CMD_CREATE);
    assert_string_equal(cli.images_dir, "/s/d");
    assert_string_equal(cli.mounts_dir, "/s/m");
    assert_string_equal(cli.name, "w1");
    assert_true(cli.size_mb == 500);
    assert_true(cli.owner_set);
    assert_int_equal(cli.uid, 1000);
    assert_int_equal(cli.gid, 1001);
    assert_null(cli.mkfs_path);
    assert_false(cli.reserve_set);
    assert_false(cli.no_direct_io);

    /* options after the command, and the global tuning options */
    assert_int_equal(PARSE("create", "w2", "16", "--images", "/d", "--mounts", "/m", "--mkfs",
                           "/usr/sbin/mkfs.ext4", "--reserve-mb", "0", "--no-direct-io"),
                     0);
    assert_false(cli.owner_set);
    assert_true(cli.reserve_set);
    assert_true(cli.reserve_mb == 0);
    assert_true(cli.no_direct_io);
    assert_string_equal(cli.mkfs_path, "/usr/sbin/mkfs.ext4");
}

static void test_cli_commands(void **state) {
    (void)state;
    assert_int_equal(PARSE("--images", "/d", "--mounts", "/m", "attach", "w1"), 0);
    assert_int_equal(cli.cmd, DISK_CMD_ATTACH);
    assert_false(cli.owner_set);
    assert_int_equal(
        PARSE("--images", "/d", "--mounts", "/m", "attach", "w1", "--uid", "7", "--gid", "8"), 0);
    assert_true(cli.owner_set);
    assert_int_equal(PARSE("--images", "/d", "--mounts", "/m", "detach", "w1"), 0);
    assert_int_equal(cli.cmd, DISK_CMD_DETACH);
    assert_int_equal(PARSE("--images", "/d", "--mounts", "/m", "destroy", "w1"), 0);
    assert_int_equal(cli.cmd, DISK_CMD_DESTROY);
    assert_int_equal(PARSE("--images", "/d", "--mounts", "/m", "list"), 0);
    assert_int_equal(cli.cmd, DISK_CMD_LIST);
    assert_int_equal(PARSE("--images", "/d", "--mounts", "/m", "gc"), 0);
    assert_int_equal(cli.cmd, DISK_CMD_GC);
    assert_int_equal(cli.nkeep, 0);
    assert_int_equal(PARSE("--images", "/d", "--mounts", "/m", "gc", "--keep", "a", "--keep=b"), 0);
    assert_int_equal(cli.nkeep, 2);
    assert_string_equal(cli.keep[0], "a");
    assert_string_equal(cli.keep[1], "b");
    assert_int_equal(PARSE("list", "--help"), 0);
    assert_true(cli.help);
    assert_int_equal(PARSE("-h"), 0);
    assert_true(cli.help);
}

static void expect_usage_error(int r, const char *fragment) {
    assert_int_equal(r, -EINVAL);
    if (!strstr(err, fragment))
        fail_msg("error '%s' does not mention '%s'", err, fragment);
}

static void test_cli_errors(void **state) {
    (void)state;
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m"), "no command");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "format", "w1"),
                       "unknown command");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "list", "--force"),
                       "unknown option");
    expect_usage_error(PARSE("--mounts", "/m", "list"), "required");
    expect_usage_error(PARSE("--images", "/d", "list"), "required");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "create", "w1"), "2 arguments");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "detach"), "1 argument");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "list", "extra"), "0 arguments");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "create", "../x", "64"),
                       "invalid disk name");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "destroy", "a/b"),
                       "invalid disk name");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "create", "w1", "15"), "SIZE_MB");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "create", "w1", "1048577"),
                       "SIZE_MB");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "create", "w1", "5e2"), "SIZE_MB");
    expect_usage_error(
        PARSE("--images", "/d", "--mounts", "/m", "create", "w1", "64", "--uid", "5"),
        "go together");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "create", "w1", "64", "--uid",
                             "4294967295", "--gid", "1"),
                       "--uid");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "create", "w1", "64", "--uid",
                             "-1", "--gid", "1"),
                       "--uid");
    expect_usage_error(
        PARSE("--images", "/d", "--mounts", "/m", "detach", "w1", "--uid", "1", "--gid", "1"),
        "create and attach only");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "list", "--keep", "a"), "gc only");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "gc", "--keep", "../a"),
                       "invalid disk name");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "gc", "--keep"), "needs a value");
    expect_usage_error(PARSE("--images", "/d", "--mounts", "/m", "--reserve-mb", "x", "gc"),
                       "--reserve-mb");
    /* ret untouched on failure */
    memset(&cli, 0x5a, sizeof cli);
    char *const argv[] = {"kbox-diskmgr", "bogus", NULL};
    assert_int_equal(disk_cli_parse(2, argv, &cli, err, sizeof err), -EINVAL);
    assert_int_equal(((unsigned char *)&cli)[0], 0x5a);
}

static void test_cli_exit_codes(void **state) {
    (void)state;
    assert_int_equal(disk_cli_exit_code(0), DISK_EXIT_OK);
    assert_int_equal(disk_cli_exit_code(1), DISK_EXIT_OK);
    assert_int_equal(disk_cli_exit_code(-ENOSPC), DISK_EXIT_NOSPC);
    assert_int_equal(disk_cli_exit_code(-ENOENT), DISK_EXIT_NOENT);
    assert_int_equal(disk_cli_exit_code(-EEXIST), DISK_EXIT_BUSY);
    assert_int_equal(disk_cli_exit_code(-EBUSY), DISK_EXIT_BUSY);
    assert_int_equal(disk_cli_exit_code(-EALREADY), DISK_EXIT_BUSY);
    assert_int_equal(disk_cli_exit_code(-EMEDIUMTYPE), DISK_EXIT_REFUSED);
    assert_int_equal(disk_cli_exit_code(-EIO), DISK_EXIT_FAIL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_valid),     cmocka_unit_test(test_size_bytes),
        cmocka_unit_test(test_room_check),     cmocka_unit_test(test_dir_valid),
        cmocka_unit_test(test_path_join),      cmocka_unit_test(test_file_classify),
        cmocka_unit_test(test_backing_in_dir), cmocka_unit_test(test_mount_name),
        cmocka_unit_test(test_name_kept),      cmocka_unit_test(test_mkfs_argv),
        cmocka_unit_test(test_parse_u64),      cmocka_unit_test(test_cli_create),
        cmocka_unit_test(test_cli_commands),   cmocka_unit_test(test_cli_errors),
        cmocka_unit_test(test_cli_exit_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
