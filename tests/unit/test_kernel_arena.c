/* Unit tests for the native kernel's arena allocator (kernel-host/karena.h): arenas are
 * contiguous in 2 MiB aligned chunks mapped as the heap grows (address space follows the
 * heap), writable, reused after a free with their memory released, refused when foreign, and
 * backed by huge pages from the first touch (the point of the allocator). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "karena.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MIB ((size_t)1 << 20)

static void test_bad_sizes(void **state) {
    (void)state;
    errno = 0;
    assert_null(karena_new(64 * MIB, 0, true));
    assert_int_equal(errno, EINVAL);
    assert_null(karena_new(64 * MIB, 4 * MIB, true)); /* larger than a huge page */
    assert_null(karena_new(64 * MIB, 1000, true));    /* not whole pages */
    assert_null(karena_new(0, MIB, true));
    karena_destroy(NULL);
}

/* VmSize of this process, in KiB. */
static long vm_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    assert_non_null(f);
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmSize:", 7) == 0)
            kb = strtol(line + 7, NULL, 10);
    fclose(f);
    return kb;
}

static void test_contiguous_writable_reused(void **state) {
    (void)state;
    long vm0 = vm_kb();
    karena_t *a = karena_new(3 * MIB, MIB, true); /* chunks rounded up to 4 MiB */
    assert_non_null(a);
    assert_int_equal(karena_chunks(a), 0); /* nothing mapped before the first arena */
    uint8_t *p[6];
    for (int i = 0; i < 6; i++) {
        p[i] = karena_alloc(a, MIB);
        assert_non_null(p[i]);
        memset(p[i], 0xa5, MIB); /* writable through its whole length */
    }
    /* Two chunks, each 2 MiB aligned, arenas contiguous within one. */
    assert_int_equal(karena_chunks(a), 2);
    assert_int_equal((uintptr_t)p[0] % (2 * MIB), 0);
    assert_int_equal((uintptr_t)p[4] % (2 * MIB), 0);
    for (int i = 1; i < 4; i++)
        assert_ptr_equal(p[i], p[i - 1] + MIB);
    assert_ptr_equal(p[5], p[4] + MIB);
    assert_int_equal(karena_in_use(a), 6);
    /* Address space grows with the heap, chunk by chunk (RLIMIT_AS counts it). */
    long grown = vm_kb() - vm0;
    assert_true(grown >= 8 * 1024 && grown < 16 * 1024);
    assert_null(karena_alloc(a, 2 * MIB)); /* not our arena size */

    int foreign;
    assert_false(karena_free(a, &foreign, MIB));
    assert_false(karena_free(a, NULL, MIB));
    assert_true(karena_free(a, p[1] + 4096, MIB)); /* inside a chunk: ours, but kept */
    assert_int_equal(karena_in_use(a), 6);

    assert_true(karena_free(a, p[1], MIB));
    assert_true(karena_free(a, p[5], MIB));
    assert_int_equal(karena_in_use(a), 4);
    /* Freed memory went back to the system: reused arenas read as zeros, last freed first. */
    uint8_t *q = karena_alloc(a, MIB);
    assert_ptr_equal(q, p[5]);
    assert_int_equal(q[0], 0);
    assert_int_equal(q[MIB - 1], 0);
    assert_ptr_equal(karena_alloc(a, MIB), p[1]);
    assert_int_equal(p[1][0], 0);
    assert_int_equal(p[0][MIB - 1], 0xa5); /* the others keep their contents */
    assert_int_equal(karena_chunks(a), 2);
    karena_destroy(&a);
    assert_null(a);
    karena_destroy(&a);
    assert_true(vm_kb() - vm0 < 1024);
}

/* AnonHugePages of the mapping that holds p, from /proc/self/smaps (-1 if not found). */
static long huge_kb_at(const void *p) {
    FILE *f = fopen("/proc/self/smaps", "r");
    assert_non_null(f);
    char line[512];
    bool in = false;
    long kb = -1;
    static const char field[] = "AnonHugePages:";
    while (fgets(line, sizeof line, f)) {
        char *end;
        unsigned long lo = strtoul(line, &end, 16);
        if (end != line && *end == '-') { /* a mapping's header: "lo-hi perms ..." */
            unsigned long hi = strtoul(end + 1, &end, 16);
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
            continue;
        }
        if (in && strncmp(line, field, sizeof field - 1) == 0) {
            kb = strtol(line + sizeof field - 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

static bool thp_enabled(void) {
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char buf[128] = "";
    if (f) {
        if (!fgets(buf, sizeof buf, f))
            buf[0] = 0;
        fclose(f);
    }
    return strstr(buf, "[always]") || strstr(buf, "[madvise]");
}

static void test_huge_pages(void **state) {
    (void)state;
    if (!thp_enabled()) {
        /* Said, not passed: this host has no transparent huge pages to give. */
        skip();
    }
    karena_t *a = karena_new(32 * MIB, MIB, true);
    assert_non_null(a);
    uint8_t *p = karena_alloc(a, MIB);
    assert_true(karena_huge(a));
    /* The first touch of the first arena maps the whole aligned 2 MiB (the second arena's
     * half too): the chunk is one aligned mapping. */
    p[0] = 1;
    long kb = huge_kb_at(p);
    assert_int_equal(kb, 2048);
    uint8_t *p2 = karena_alloc(a, MIB);
    assert_ptr_equal(p2, p + MIB);
    p2[0] = 1;
    assert_int_equal(huge_kb_at(p), 2048);
    karena_destroy(&a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_sizes),
        cmocka_unit_test(test_contiguous_writable_reused),
        cmocka_unit_test(test_huge_pages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
