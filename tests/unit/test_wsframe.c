/* Unit tests for the Jupyter WebSocket formats: legacy text, legacy binary with buffers, the
 * v1 subprotocol, and rejection of malformed frames. Frames are built the way jupyter_server
 * 1.23 builds them (base/zmqhandlers.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "util.h"
#include "wsframe.h"

#include <endian.h>

static jwire_msg_t *sample(int nbufs) {
    jwire_msg_t *m =
        jwire_msg_new("execute_request", "sess", "user", NULL, json_pack("{s:s}", "code", "1+1"));
    assert_non_null(m);
    for (int i = 0; i < nbufs; i++) {
        char b[16];
        snprintf(b, sizeof b, "buf%d", i);
        zmsg_addmem(m->buffers, b, strlen(b));
    }
    return m;
}

static void check_same(const jwire_msg_t *a, const jwire_msg_t *b) {
    assert_true(json_equal(a->header, b->header));
    assert_true(json_equal(a->parent_header, b->parent_header));
    assert_true(json_equal(a->content, b->content));
    assert_int_equal(zmsg_size(a->buffers), zmsg_size(b->buffers));
    zframe_t *fa = zmsg_first(a->buffers), *fb = zmsg_first(b->buffers);
    while (fa && fb) {
        assert_true(zframe_eq(fa, fb));
        fa = zmsg_next(a->buffers);
        fb = zmsg_next(b->buffers);
    }
}

static void roundtrip(wsframe_proto_t proto, int nbufs, bool want_binary) {
    jwire_msg_t *m = sample(nbufs);
    bool binary;
    char *data;
    size_t len;
    assert_int_equal(wsframe_encode(proto, JWIRE_SHELL, m, &binary, &data, &len), 0);
    assert_int_equal(binary, want_binary);
    jwire_channel_t ch;
    jwire_msg_t *back = NULL;
    assert_int_equal(wsframe_decode(proto, binary, data, len, &ch, &back), 0);
    assert_int_equal(ch, JWIRE_SHELL);
    check_same(m, back);
    free(data);
    jwire_msg_destroy(&m);
    jwire_msg_destroy(&back);
}

static void test_roundtrips(void **state) {
    roundtrip(WSFRAME_LEGACY, 0, false);
    roundtrip(WSFRAME_LEGACY, 2, true);
    roundtrip(WSFRAME_V1, 0, true);
    roundtrip(WSFRAME_V1, 3, true);
}

static void test_legacy_layout(void **state) {
    /* nbufs + 1 parts, offsets of part starts, first offset 4 * (n + 1). */
    jwire_msg_t *m = sample(1);
    bool binary;
    char *d;
    size_t len;
    assert_int_equal(wsframe_encode(WSFRAME_LEGACY, JWIRE_IOPUB, m, &binary, &d, &len), 0);
    uint32_t n, o0, o1;
    memcpy(&n, d, 4);
    memcpy(&o0, d + 4, 4);
    memcpy(&o1, d + 8, 4);
    assert_int_equal(be32toh(n), 2);
    assert_int_equal(be32toh(o0), 12);
    assert_memory_equal(d + be32toh(o1), "buf0", 4);
    assert_int_equal(len, be32toh(o1) + 4);
    assert_int_equal(d[be32toh(o0)], '{');
    free(d);
    jwire_msg_destroy(&m);
}

static void test_v1_layout(void **state) {
    /* 5 parts (channel + 4 JSON) -> 6 offsets, the last one the end; first 8 * 7. */
    jwire_msg_t *m = sample(0);
    bool binary;
    char *d;
    size_t len;
    assert_int_equal(wsframe_encode(WSFRAME_V1, JWIRE_IOPUB, m, &binary, &d, &len), 0);
    uint64_t n, o0, o1, olast;
    memcpy(&n, d, 8);
    memcpy(&o0, d + 8, 8);
    memcpy(&o1, d + 16, 8);
    memcpy(&olast, d + 8 + 5 * 8, 8);
    assert_int_equal(le64toh(n), 6);
    assert_int_equal(le64toh(o0), 56);
    assert_memory_equal(d + 56, "iopub", 5);
    assert_int_equal(le64toh(o1), 61);
    assert_int_equal(le64toh(olast), len);
    free(d);
    jwire_msg_destroy(&m);
}

static void expect_bad(wsframe_proto_t proto, bool binary, const char *data, size_t len) {
    jwire_channel_t ch;
    jwire_msg_t *m = NULL;
    assert_int_equal(wsframe_decode(proto, binary, data, len, &ch, &m), -EBADMSG);
    assert_null(m);
}

static void test_rejects(void **state) {
    const char *t;
    t = "not json";
    expect_bad(WSFRAME_LEGACY, false, t, strlen(t));
    t = "[1]";
    expect_bad(WSFRAME_LEGACY, false, t, strlen(t));
    t = "{\"channel\":\"iopub\",\"header\":{\"msg_id\":\"a\",\"msg_type\":\"x\"}}";
    expect_bad(WSFRAME_LEGACY, false, t, strlen(t));
    t = "{\"channel\":\"shell\",\"header\":{\"msg_type\":\"x\"}}";
    expect_bad(WSFRAME_LEGACY, false, t, strlen(t));
    t = "{\"channel\":\"shell\",\"header\":{\"msg_id\":\"a\",\"msg_type\":\"x\"},\"content\":3}";
    expect_bad(WSFRAME_LEGACY, false, t, strlen(t));
    char b[64] = {0};
    expect_bad(WSFRAME_LEGACY, true, b, 3);
    uint32_t big = htobe32(100000);
    memcpy(b, &big, 4);
    expect_bad(WSFRAME_LEGACY, true, b, sizeof b);
    uint32_t one = htobe32(1), off = htobe32(60);
    memcpy(b, &one, 4);
    memcpy(b + 4, &off, 4);
    expect_bad(WSFRAME_LEGACY, true, b, 40); /* offset past the end */
    uint64_t six = htole64(6);
    memset(b, 0, sizeof b);
    memcpy(b, &six, 8);
    expect_bad(WSFRAME_V1, true, b, sizeof b); /* offsets inside the header */
    t = "{\"channel\":\"shell\",\"header\":{\"msg_id\":\"a\",\"msg_type\":\"x\"}}";
    jwire_channel_t ch;
    jwire_msg_t *m = NULL;
    assert_int_equal(wsframe_decode(WSFRAME_LEGACY, false, t, strlen(t), &ch, &m), 0);
    assert_true(json_is_object(m->content));
    jwire_msg_destroy(&m);
    /* msg_id: the gateway keeps it until the reply, so it is bounded (at the bound: fine). */
    for (size_t n = WSFRAME_MAX_MSG_ID; n <= WSFRAME_MAX_MSG_ID + 1; n++) {
        char *id = malloc(n + 1), *f = malloc(n + 64);
        assert_non_null(id);
        assert_non_null(f);
        memset(id, 'i', n);
        id[n] = '\0';
        int len = snprintf(f, n + 64,
                           "{\"channel\":\"shell\",\"header\":{\"msg_id\":\"%s\","
                           "\"msg_type\":\"x\"}}",
                           id);
        if (n > WSFRAME_MAX_MSG_ID) {
            expect_bad(WSFRAME_LEGACY, false, f, (size_t)len);
        } else {
            assert_int_equal(wsframe_decode(WSFRAME_LEGACY, false, f, (size_t)len, &ch, &m), 0);
            assert_int_equal(strlen(jwire_msg_id(m)), n);
            jwire_msg_destroy(&m);
        }
        free(id);
        free(f);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrips),
        cmocka_unit_test(test_legacy_layout),
        cmocka_unit_test(test_v1_layout),
        cmocka_unit_test(test_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
