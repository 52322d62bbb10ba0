/* Unit tests for the native kernel's message contents (kernel-host/kmsg.h): execute_request
 * parsing with ipykernel's defaults, and the shape of every reply the kernel builds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kmsg.h"

#include <errno.h>
#include <string.h>

static json_t *parse(const char *text) {
    json_error_t err;
    json_t *j = json_loads(text, JSON_ALLOW_NUL, &err);
    assert_non_null(j);
    return j;
}

static void test_execute_parse(void **state) {
    kmsg_execute_t e;
    json_t *c = parse("{\"code\": \"1+1\"}");
    assert_int_equal(kmsg_execute_parse(c, &e), 0);
    assert_string_equal(e.code, "1+1");
    assert_int_equal(e.code_len, 3);
    assert_false(e.silent);
    assert_true(e.store_history);
    assert_false(e.allow_stdin);
    assert_true(e.stop_on_error);
    assert_null(e.user_expressions);
    json_decref(c);

    c = parse("{\"code\": \"x\", \"silent\": true, \"allow_stdin\": true, \"stop_on_error\": false,"
              " \"user_expressions\": {\"a\": \"1\"}}");
    assert_int_equal(kmsg_execute_parse(c, &e), 0);
    assert_true(e.silent);
    assert_false(e.store_history); /* defaults to !silent */
    assert_true(e.allow_stdin);
    assert_false(e.stop_on_error);
    assert_non_null(e.user_expressions);
    json_decref(c);

    c = parse("{\"code\": \"x\", \"user_expressions\": {}, \"store_history\": null}");
    assert_int_equal(kmsg_execute_parse(c, &e), 0);
    assert_null(e.user_expressions);
    assert_true(e.store_history);
    json_decref(c);

    /* Code with an embedded NUL keeps its length. */
    c = parse("{\"code\": \"a\\u0000b\"}");
    assert_int_equal(kmsg_execute_parse(c, &e), 0);
    assert_int_equal(e.code_len, 3);
    json_decref(c);

    const char *bad[] = {"{}", "{\"code\": 1}", "{\"code\": \"x\", \"silent\": 1}",
                         "{\"code\": \"x\", \"user_expressions\": []}", "[]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = parse(bad[i]);
        assert_int_equal(kmsg_execute_parse(c, &e), -EINVAL);
        json_decref(c);
    }
    assert_int_equal(kmsg_execute_parse(NULL, &e), -EINVAL);
}

static void test_kernel_info(void **state) {
    json_t *k = kmsg_kernel_info("3.11.2 (main, Mar 13 2023, 12:18:29) [GCC 12.2.0]", "0.1.0");
    assert_non_null(k);
    assert_string_equal(json_string_value(json_object_get(k, "status")), "ok");
    assert_string_equal(json_string_value(json_object_get(k, "protocol_version")), "5.3");
    assert_string_equal(json_string_value(json_object_get(k, "implementation")), "kbox");
    json_t *li = json_object_get(k, "language_info");
    assert_string_equal(json_string_value(json_object_get(li, "name")), "python");
    assert_string_equal(json_string_value(json_object_get(li, "version")), "3.11.2");
    assert_string_equal(json_string_value(json_object_get(li, "file_extension")), ".py");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(li, "codemirror_mode"), "version")), 3);
    const char *banner = json_string_value(json_object_get(k, "banner"));
    assert_non_null(strstr(banner, "Python 3.11.2 (main"));
    json_t *links = json_object_get(k, "help_links");
    assert_int_equal(json_array_size(links), 7);
    assert_string_equal(json_string_value(json_object_get(json_array_get(links, 6), "text")),
                        "pandas Reference");
    assert_string_equal(json_string_value(json_object_get(json_array_get(links, 0), "url")),
                        "https://docs.python.org/3.11");
    assert_true(json_is_false(json_object_get(k, "debugger")));
    json_decref(k);
    k = kmsg_kernel_info(NULL, NULL);
    assert_non_null(k);
    json_decref(k);
}

static void test_replies(void **state) {
    json_t *j = kmsg_execute_ok(7, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    assert_int_equal(json_integer_value(json_object_get(j, "execution_count")), 7);
    assert_true(json_is_object(json_object_get(j, "user_expressions")));
    assert_true(json_is_array(json_object_get(j, "payload")));
    json_decref(j);

    json_t *tb = json_pack("[s]", "line");
    json_t *payload = json_pack("[{s:s}]", "source", "page");
    j = kmsg_execute_error(3, "NameError", "name 'x' is not defined", tb, payload);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "error");
    assert_string_equal(json_string_value(json_object_get(j, "ename")), "NameError");
    assert_int_equal(json_array_size(json_object_get(j, "traceback")), 1);
    assert_int_equal(json_array_size(json_object_get(j, "payload")), 1);
    json_decref(j);
    j = kmsg_execute_error(3, NULL, NULL, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "ename")), "");
    json_decref(j);

    j = kmsg_aborted();
    assert_string_equal(json_string_value(json_object_get(j, "status")), "aborted");
    json_decref(j);
    j = kmsg_execute_metadata("2026-01-01T00:00:00.000000Z", "sess", "ok");
    assert_true(json_is_true(json_object_get(j, "dependencies_met")));
    assert_string_equal(json_string_value(json_object_get(j, "engine")), "sess");
    json_decref(j);

    j = kmsg_stream("stdout", "a\0b", 3);
    assert_int_equal(json_string_length(json_object_get(j, "text")), 3);
    json_decref(j);
    assert_null(kmsg_stream("stdout", "\xFF", 1)); /* invalid UTF-8 never becomes JSON */

    j = kmsg_execute_input("x = 1", 5, 4);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "x = 1");
    assert_int_equal(json_integer_value(json_object_get(j, "execution_count")), 4);
    json_decref(j);

    j = kmsg_status("busy");
    assert_string_equal(json_string_value(json_object_get(j, "execution_state")), "busy");
    json_decref(j);
    j = kmsg_shutdown_reply(true);
    assert_true(json_is_true(json_object_get(j, "restart")));
    json_decref(j);
    j = kmsg_error_reply("ValueError", "bad");
    assert_int_equal(json_array_size(json_object_get(j, "traceback")), 0);
    json_decref(j);
    j = kmsg_ok();
    assert_int_equal(json_object_size(j), 1);
    json_decref(j);
}

static void test_reply_type(void **state) {
    char buf[64];
    assert_int_equal(kmsg_reply_type("execute_request", buf, sizeof buf), 0);
    assert_string_equal(buf, "execute_reply");
    assert_int_equal(kmsg_reply_type("execute_reply", buf, sizeof buf), -EINVAL);
    assert_int_equal(kmsg_reply_type("_request", buf, sizeof buf), -EINVAL);
    assert_int_equal(kmsg_reply_type(NULL, buf, sizeof buf), -EINVAL);
    assert_int_equal(kmsg_reply_type("execute_request", buf, 5), -ENAMETOOLONG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_execute_parse),
        cmocka_unit_test(test_kernel_info),
        cmocka_unit_test(test_replies),
        cmocka_unit_test(test_reply_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
