/* Unit tests for the native kernel's output stream buffer (kernel-host/kstream.h): bounded
 * buffering, UTF-8 sanitizing (JSON strings must be valid UTF-8) and holding back a
 * character cut at the end of a read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kstream.h"

#include <stdlib.h>
#include <string.h>

static void check_sanitize_n(const char *in, size_t len, const char *want, size_t want_len) {
    size_t olen = 0;
    char *out = kutf8_sanitize((const uint8_t *)in, len, &olen);
    assert_non_null(out);
    assert_int_equal(olen, want_len);
    assert_memory_equal(out, want, olen);
    assert_int_equal(out[olen], '\0');
    free(out);
}

static void check_sanitize(const char *in, size_t len, const char *want) {
    check_sanitize_n(in, len, want, strlen(want));
}

#define FFFD "\xEF\xBF\xBD"

static void test_sanitize(void **state) {
    check_sanitize("hello", 5, "hello");
    check_sanitize("", 0, "");
    check_sanitize("caf\xC3\xA9", 5, "caf\xC3\xA9");
    check_sanitize("\xE2\x82\xAC \xF0\x9F\x98\x80", 8, "\xE2\x82\xAC \xF0\x9F\x98\x80");
    /* Stray continuation byte, invalid lead bytes. */
    check_sanitize("a\x80z", 3, "a" FFFD "z");
    check_sanitize("\xC0\xAF", 2, FFFD FFFD);
    check_sanitize("\xFF\xFE", 2, FFFD FFFD);
    /* Surrogate U+D800 encoded (ED A0 80): ED is a maximal subpart of 1, then two strays. */
    check_sanitize("\xED\xA0\x80", 3, FFFD FFFD FFFD);
    /* Beyond U+10FFFF. */
    check_sanitize("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD);
    /* Overlong 3-byte. */
    check_sanitize("\xE0\x80\xAF", 3, FFFD FFFD FFFD);
    /* A truncated sequence followed by ASCII: one replacement for the maximal subpart. */
    check_sanitize("\xE2\x82z", 3, FFFD "z");
    /* NUL is valid UTF-8 and kept. */
    check_sanitize_n("a\0b", 3, "a\0b", 3);
}

static void test_complete_prefix(void **state) {
    const uint8_t euro[] = {'a', 0xE2, 0x82, 0xAC};
    assert_int_equal(kutf8_complete_prefix(euro, 4), 4);
    assert_int_equal(kutf8_complete_prefix(euro, 3), 1); /* E2 82 cut: held back */
    assert_int_equal(kutf8_complete_prefix(euro, 2), 1);
    assert_int_equal(kutf8_complete_prefix(euro, 1), 1);
    const uint8_t emoji[] = {0xF0, 0x9F, 0x98, 0x80};
    assert_int_equal(kutf8_complete_prefix(emoji, 3), 0);
    assert_int_equal(kutf8_complete_prefix(emoji, 4), 4);
    /* Invalid at the end is not "incomplete": it goes out (replaced). */
    const uint8_t bad[] = {'x', 0xE2, 'y'};
    assert_int_equal(kutf8_complete_prefix(bad, 3), 3);
    const uint8_t stray[] = {'x', 0x80};
    assert_int_equal(kutf8_complete_prefix(stray, 2), 2);
    const uint8_t ff[] = {'x', 0xFF};
    assert_int_equal(kutf8_complete_prefix(ff, 2), 2);
    /* E0 followed by a byte below A0 can never complete. */
    const uint8_t overlong[] = {0xE0, 0x80};
    assert_int_equal(kutf8_complete_prefix(overlong, 2), 2);
    assert_int_equal(kutf8_complete_prefix(NULL, 0), 0);
}

static void test_buffer(void **state) {
    assert_null(kstream_new(3));
    kstream_t *s = kstream_new(8);
    assert_non_null(s);
    char *text;
    size_t len;
    assert_int_equal(kstream_take(s, false, &text, &len), 0);
    assert_null(text);

    /* Bounded: only cap bytes are taken. */
    assert_int_equal(kstream_append(s, "0123456789", 10), 8);
    assert_int_equal(kstream_space(s), 0);
    assert_int_equal(kstream_take(s, false, &text, &len), 0);
    assert_string_equal(text, "01234567");
    assert_int_equal(len, 8);
    free(text);
    assert_int_equal(kstream_len(s), 0);

    /* A character split across two reads is published whole. */
    assert_int_equal(kstream_append(s, "ab\xE2\x82", 4), 4);
    assert_int_equal(kstream_take(s, false, &text, &len), 0);
    assert_string_equal(text, "ab");
    free(text);
    assert_int_equal(kstream_len(s), 2);
    memcpy(kstream_tail(s), "\xAC!", 2);
    kstream_commit(s, 2);
    assert_int_equal(kstream_take(s, false, &text, &len), 0);
    assert_string_equal(text, "\xE2\x82\xAC!");
    free(text);

    /* Forced: the partial sequence goes out as a replacement character. */
    kstream_append(s, "\xF0\x9F", 2);
    assert_int_equal(kstream_take(s, false, &text, &len), 0);
    assert_null(text);
    assert_int_equal(kstream_take(s, true, &text, &len), 0);
    assert_string_equal(text, FFFD);
    free(text);
    assert_int_equal(kstream_len(s), 0);

    kstream_destroy(&s);
    assert_null(s);
    kstream_destroy(&s);
    kstream_destroy(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_complete_prefix),
        cmocka_unit_test(test_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
