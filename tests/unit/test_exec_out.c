/* Unit tests for shaping one execution's output: order, text views, images, errors, caps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "exec_out.h"
#include "util.h"

static json_t *J(const char *text) {
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    return j;
}

static void feed(exec_out_t *o, const char *type, const char *content) {
    json_t *c = J(content);
    json_decref(exec_out_feed(o, type, c));
    json_decref(c);
}

static void test_order_and_views(void **state) {
    exec_out_t *o = exec_out_new(1 << 20);
    feed(o, "stream", "{\"name\":\"stdout\",\"text\":\"a\\n\"}");
    feed(o, "stream", "{\"name\":\"stdout\",\"text\":\"b\\n\"}");
    feed(o, "stream", "{\"name\":\"stderr\",\"text\":\"warn\\n\"}");
    feed(o, "display_data",
         "{\"data\":{\"image/png\":\"iVBOR\",\"text/plain\":\"<Figure>\"},\"metadata\":{}}");
    feed(o, "execute_result",
         "{\"execution_count\":3,\"data\":{\"text/plain\":\"42\"},\"metadata\":{}}");
    json_t *reply = J("{\"status\":\"ok\",\"execution_count\":3}");
    exec_out_set_reply(o, reply);
    json_decref(reply);
    json_t *s = exec_out_summary(o, true);
    assert_string_equal(json_string_value(json_object_get(s, "result_text")), "a\nb\nwarn\n42\n");
    assert_string_equal(json_string_value(json_object_get(s, "stdout")), "a\nb\n");
    assert_string_equal(json_string_value(json_object_get(s, "stderr")), "warn\n");
    assert_string_equal(json_string_value(json_object_get(s, "result_base64")), "iVBOR");
    assert_int_equal(json_integer_value(json_object_get(s, "execution_count")), 3);
    json_t *outs = json_object_get(s, "outputs");
    assert_int_equal(json_array_size(outs), 4); /* two stdout chunks merged */
    assert_string_equal(json_string_value(json_object_get(json_array_get(outs, 2), "type")),
                        "display");
    assert_true(json_is_null(json_object_get(s, "error")));
    assert_false(json_is_true(json_object_get(s, "truncated")));
    json_decref(s);
    exec_out_destroy(&o);
    assert_null(o);
    exec_out_destroy(&o);
}

static void test_error_strips_ansi(void **state) {
    exec_out_t *o = exec_out_new(1 << 20);
    json_t *c = J("{\"ename\":\"ValueError\",\"evalue\":\"bad\",\"traceback\":"
                  "[\"\\u001b[0;31mValueError\\u001b[0m: bad\"]}");
    json_t *ev = exec_out_feed(o, "error", c);
    assert_string_equal(json_string_value(json_object_get(ev, "type")), "error");
    json_decref(ev);
    json_decref(c);
    assert_true(exec_out_has_error(o));
    json_t *s = exec_out_summary(o, false);
    json_t *err = json_object_get(s, "error");
    assert_string_equal(json_string_value(json_object_get(err, "ename")), "ValueError");
    assert_string_equal(json_string_value(json_array_get(json_object_get(err, "traceback"), 0)),
                        "ValueError: bad");
    assert_null(json_object_get(s, "outputs"));
    assert_non_null(strstr(json_string_value(json_object_get(s, "result_text")), "ValueError"));
    json_decref(s);
    exec_out_destroy(&o);
}

static void test_text_cap(void **state) {
    exec_out_t *o = exec_out_new(1000);
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    json_t *c = json_pack("{s:s,s:s}", "name", "stdout", "text", big);
    json_decref(exec_out_feed(o, "stream", c));
    json_decref(exec_out_feed(o, "stream", c)); /* after the cut: discarded */
    json_decref(c);
    json_t *s = exec_out_summary(o, true);
    const char *out = json_string_value(json_object_get(s, "stdout"));
    assert_true(strlen(out) <= 500);
    assert_non_null(strstr(out, "[output truncated]"));
    assert_true(json_is_true(json_object_get(s, "truncated")));
    json_decref(s);
    exec_out_destroy(&o);
}

static void test_image_dropped_whole(void **state) {
    exec_out_t *o = exec_out_new(1000);
    char big[2000];
    memset(big, 'A', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    json_t *c = json_pack("{s:{s:s},s:{}}", "data", "image/png", big, "metadata");
    json_t *ev = exec_out_feed(o, "display_data", c);
    assert_null(ev);
    json_decref(c);
    feed(o, "stream", "{\"name\":\"stdout\",\"text\":\"after\\n\"}");
    json_t *s = exec_out_summary(o, true);
    assert_true(json_is_null(json_object_get(s, "result_base64")));
    assert_string_equal(json_string_value(json_object_get(s, "stdout")), "after\n");
    assert_true(json_is_true(json_object_get(s, "truncated")));
    json_decref(s);
    exec_out_destroy(&o);
}

static void test_clear_and_update(void **state) {
    exec_out_t *o = exec_out_new(1 << 20);
    feed(o, "stream", "{\"name\":\"stdout\",\"text\":\"old\\n\"}");
    feed(o, "clear_output", "{\"wait\":false}");
    feed(o, "display_data",
         "{\"data\":{\"text/plain\":\"v1\"},\"metadata\":{},"
         "\"transient\":{\"display_id\":\"d1\"}}");
    feed(o, "update_display_data",
         "{\"data\":{\"text/plain\":\"v2\"},\"metadata\":{},"
         "\"transient\":{\"display_id\":\"d1\"}}");
    json_t *s = exec_out_summary(o, true);
    assert_string_equal(json_string_value(json_object_get(s, "result_text")), "v2\n");
    assert_int_equal(json_array_size(json_object_get(s, "outputs")), 1);
    json_decref(s);
    exec_out_destroy(&o);
}

static void test_note_lost(void **state) {
    exec_out_t *o = exec_out_new(1 << 20);
    feed(o, "stream", "{\"name\":\"stdout\",\"text\":\"before\\n\"}");
    assert_false(exec_out_truncated(o));
    json_t *ev = exec_out_note_lost(o, "iopub closed");
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "type")), "stream");
    json_decref(ev);
    feed(o, "stream", "{\"name\":\"stdout\",\"text\":\"after\\n\"}");
    json_t *s = exec_out_summary(o, false);
    assert_true(json_is_true(json_object_get(s, "truncated")));
    assert_string_equal(json_string_value(json_object_get(s, "stdout")), "before\nafter\n");
    assert_string_equal(json_string_value(json_object_get(s, "stderr")),
                        "\n[output lost: iopub closed]\n");
    json_decref(s);
    exec_out_destroy(&o);
}

static void set_reply(exec_out_t *o, const char *json) {
    json_t *c = json_loads(json, 0, NULL);
    assert_non_null(c);
    exec_out_set_reply(o, c);
    json_decref(c);
}

/* The reply's status counts: an aborted request did not run, an error reply without its
 * iopub error (lost on the way) is still an error, and iopub's error wins when both come. */
static void test_reply_status(void **state) {
    exec_out_t *o = exec_out_new(1 << 20);
    set_reply(o, "{\"status\":\"aborted\"}");
    json_t *s = exec_out_summary(o, false);
    json_t *err = json_object_get(s, "error");
    assert_string_equal(json_string_value(json_object_get(err, "ename")), "ExecutionAborted");
    assert_true(exec_out_has_error(o));
    json_decref(s);
    exec_out_destroy(&o);

    o = exec_out_new(1 << 20);
    set_reply(o, "{\"status\":\"error\",\"execution_count\":3,\"ename\":\"ValueError\","
                 "\"evalue\":\"bad\",\"traceback\":[\"\\u001b[31mValueError\\u001b[0m: bad\"]}");
    s = exec_out_summary(o, false);
    err = json_object_get(s, "error");
    assert_string_equal(json_string_value(json_object_get(err, "ename")), "ValueError");
    assert_string_equal(json_string_value(json_array_get(json_object_get(err, "traceback"), 0)),
                        "ValueError: bad");
    assert_int_equal(json_integer_value(json_object_get(s, "execution_count")), 3);
    json_decref(s);
    feed(o, "error", "{\"ename\":\"KeyError\",\"evalue\":\"k\",\"traceback\":[]}");
    s = exec_out_summary(o, false);
    assert_string_equal(json_string_value(json_object_get(json_object_get(s, "error"), "ename")),
                        "KeyError");
    json_decref(s);
    exec_out_destroy(&o);

    o = exec_out_new(1 << 20);
    set_reply(o, "{\"status\":\"ok\",\"execution_count\":1}");
    assert_false(exec_out_has_error(o));
    exec_out_destroy(&o);
}

static void test_ignores_garbage(void **state) {
    exec_out_t *o = exec_out_new(1 << 20);
    feed(o, "stream", "{\"name\":\"bogus\",\"text\":\"x\"}");
    feed(o, "stream", "{\"name\":\"stdout\",\"text\":5}");
    feed(o, "display_data", "{\"data\":7}");
    feed(o, "comm_msg", "{}");
    assert_null(exec_out_feed(o, NULL, NULL));
    json_t *s = exec_out_summary(o, true);
    assert_int_equal(json_array_size(json_object_get(s, "outputs")), 0);
    json_decref(s);
    exec_out_destroy(&o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_views),  cmocka_unit_test(test_error_strips_ansi),
        cmocka_unit_test(test_text_cap),         cmocka_unit_test(test_image_dropped_whole),
        cmocka_unit_test(test_clear_and_update), cmocka_unit_test(test_ignores_garbage),
        cmocka_unit_test(test_note_lost),        cmocka_unit_test(test_reply_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
