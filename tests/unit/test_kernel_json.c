/* Unit tests for the native kernel's JSON encoder (kernel-host/kjson.h): its output must be
 * byte for byte json_dumps(v, JSON_COMPACT), which the messages were signed over before. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kjson.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void assert_same(const json_t *j) {
    char *want = json_dumps(j, JSON_COMPACT);
    assert_non_null(want);
    kjbuf_t b = {0};
    assert_int_equal(kjbuf_append(&b, "x", 1), 0); /* appends after what is there */
    assert_int_equal(kjson_append_object(&b, j), 0);
    assert_int_equal(b.len, strlen(want) + 1);
    assert_memory_equal(b.data + 1, want, strlen(want));
    free(want);
    kjbuf_free(&b);
}

static void test_shapes(void **state) {
    json_t *j = json_object();
    assert_same(j);
    json_object_set_new(j, "status", json_string("ok"));
    json_object_set_new(j, "execution_count", json_integer(42));
    json_object_set_new(j, "neg", json_integer(INT64_MIN));
    json_object_set_new(j, "max", json_integer(INT64_MAX));
    json_object_set_new(j, "user_expressions", json_object());
    json_object_set_new(j, "payload", json_array());
    json_object_set_new(j, "t", json_true());
    json_object_set_new(j, "f", json_false());
    json_object_set_new(j, "n", json_null());
    json_object_set_new(j, "reals", json_pack("[f, f, f, f, f]", 0.1, 1.0, -2.5e300, 1e-7, 3.0));
    json_object_set_new(j, "nested", json_pack("{s:[i, {s:[]}, [[]]], s:{}}", "a", 1, "b", "c"));
    assert_same(j);
    /* Insertion order survives deletions and re-insertions, as jansson dumps it. */
    json_object_del(j, "t");
    json_object_set_new(j, "t", json_string("again"));
    json_object_set_new(j, "status", json_string("replaced"));
    assert_same(j);
    json_decref(j);
}

static void test_strings(void **state) {
    /* Every ASCII byte (NUL included), alone and in text. */
    for (int c = 0; c < 0x80; c++) {
        char s[3] = {'a', (char)c, 'b'};
        json_t *j = json_object();
        json_object_set_new(j, "v", json_stringn(s, 3));
        json_object_set_new(j, "w", json_stringn(s + 1, 1));
        char key[2] = {(char)c, 0};
        json_object_setn_new(j, key, 1, json_integer(c));
        assert_same(j);
        json_decref(j);
    }
    const char *utf8[] = {"é",
                          "日本語",
                          "😀 emoji",
                          "\xc2\x80",
                          "\xef\xbf\xbf",
                          "a\"b\\c/d\x7f",
                          "line\nnext\r\n\ttab\x1b[31mred\x1b[0m",
                          ""};
    for (size_t i = 0; i < sizeof utf8 / sizeof utf8[0]; i++) {
        json_t *j = json_pack("{s:s, s:[s]}", utf8[i], utf8[i], "a", utf8[i]);
        assert_non_null(j);
        assert_same(j);
        json_decref(j);
    }
}

static void test_random(void **state) {
    srand(12345);
    static const char alphabet[] = "ab \"\\/\n\t\x01\x1f\x7f\xc3\xa9";
    for (int round = 0; round < 2000; round++) {
        json_t *j = json_object();
        int n = rand() % 8;
        for (int k = 0; k < n; k++) {
            char s[64];
            size_t len = 0;
            int m = rand() % 20;
            for (int i = 0; i < m; i++) {
                int c = rand() % 13;
                if (c == 12) { /* é: two bytes, kept together */
                    s[len++] = '\xc3';
                    s[len++] = '\xa9';
                } else if (c == 11) {
                    s[len++] = '\0';
                } else {
                    s[len++] = alphabet[c];
                }
            }
            json_t *v;
            switch (rand() % 5) {
            case 0:
                v = json_stringn(s, len);
                break;
            case 1:
                v = json_integer((json_int_t)rand() - RAND_MAX / 2);
                break;
            case 2:
                v = json_real((double)rand() / 7.0);
                break;
            case 3:
                v = json_pack("[s%, b, n]", s, len, rand() % 2);
                break;
            default:
                v = json_pack("{s:s%}", "k", s, len);
                break;
            }
            assert_non_null(v);
            json_object_setn_new(j, s, len, v);
        }
        assert_same(j);
        json_decref(j);
    }
}

static void test_deep_and_errors(void **state) {
    json_t *j = json_object(), *cur = j;
    for (int i = 0; i < 1000; i++) { /* beyond the encoder's own depth: jansson's text */
        json_t *a = json_array();
        json_object_set_new(cur, "a", a);
        cur = json_object();
        json_array_append_new(a, cur);
    }
    assert_same(j);
    json_decref(j);

    kjbuf_t b = {0};
    json_t *arr = json_array();
    assert_int_equal(kjson_append_object(&b, arr), -EINVAL);
    assert_int_equal(kjson_append_object(&b, NULL), -EINVAL);
    assert_int_equal(b.len, 0);
    json_decref(arr);
    kjbuf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_deep_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
