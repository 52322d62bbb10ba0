/* Unit tests for the Jupyter wire protocol (common/jwire.c). The decoder is checked against
 * frames produced by Debian's jupyter_client (tests/vectors/jwire/, made by
 * gen_jwire_vectors.py), the signer against RFC 4231, the replay cache against a naive
 * reference model, and send/recv over real ZeroMQ sockets. The vector directory comes from
 * argv[1], else from the JWIRE_VECTOR_DIR compile definition. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <sys/stat.h>
#include <zmq.h>

#include "jwire.h"
#include "util.h"

#ifndef JWIRE_VECTOR_DIR
#define JWIRE_VECTOR_DIR "tests/vectors/jwire"
#endif

static const char *vector_dir = JWIRE_VECTOR_DIR;

static const char KEY64[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void signer_destroyp(jwire_signer_t **p) {
    jwire_signer_destroy(p);
}
static void replay_destroyp(jwire_replay_t **p) {
    jwire_replay_destroy(p);
}
static void msg_destroyp(jwire_msg_t **p) {
    jwire_msg_destroy(p);
}
static void zsock_destroyp(zsock_t **p) {
    zsock_destroy(p);
}
#define _cleanup_signer_ _cleanup_(signer_destroyp)
#define _cleanup_replay_ _cleanup_(replay_destroyp)
#define _cleanup_msg_    _cleanup_(msg_destroyp)
#define _cleanup_zsock_  _cleanup_(zsock_destroyp)
#define _cleanup_json_   _cleanup_(json_decrefp)

/* ---- helpers ---------------------------------------------------------------------------- */

static jwire_signer_t *signer_key(const char *key) {
    jwire_signer_t *s = jwire_signer_new("hmac-sha256", key, strlen(key));
    assert_non_null(s);
    return s;
}

/* Frames from NUL-terminated strings; n of them. */
static zmsg_t *zmsg_of(size_t n, const char *const *parts) {
    zmsg_t *z = zmsg_new();
    for (size_t i = 0; i < n; i++)
        assert_int_equal(zmsg_addstr(z, parts[i]), 0);
    return z;
}

/* [ids..., DELIM, sig, h, p, m, c, buffers...] with a correct signature for signer. */
static zmsg_t *zmsg_signed(const jwire_signer_t *signer, size_t nids, const char *const *ids,
                           const char *h, const char *p, const char *m, const char *c, size_t nbufs,
                           const char *const *bufs) {
    const void *const parts[4] = {h, p, m, c};
    const size_t lens[4] = {strlen(h), strlen(p), strlen(m), strlen(c)};
    char sig[65];
    assert_int_equal(jwire_signer_sign(signer, parts, lens, sig), 0);
    zmsg_t *z = zmsg_of(nids, ids);
    const char *const mid[6] = {JWIRE_DELIM, sig, h, p, m, c};
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(zmsg_addstr(z, mid[i]), 0);
    for (size_t i = 0; i < nbufs; i++)
        assert_int_equal(zmsg_addstr(z, bufs[i]), 0);
    return z;
}

static const char HDR[] = "{\"msg_id\":\"m1\",\"msg_type\":\"execute_request\",\"session\":\"s\","
                          "\"username\":\"u\",\"date\":\"2026-01-01T00:00:00.000000Z\","
                          "\"version\":\"5.3\"}";

static int decode_parts(const jwire_signer_t *signer, const char *h, const char *p, const char *m,
                        const char *c) {
    zmsg_t *z = zmsg_signed(signer, 0, NULL, h, p, m, c, 0, NULL);
    _cleanup_msg_ jwire_msg_t *msg = NULL;
    int r = jwire_msg_decode(&z, signer, NULL, NULL, &msg);
    assert_null(z);
    if (r < 0)
        assert_null(msg);
    return r;
}

static size_t b64_decode(const char *b64, unsigned char **ret) {
    size_t cap = strlen(b64) + 1, len = 0;
    unsigned char *buf = malloc(cap);
    assert_non_null(buf);
    assert_int_equal(sodium_base642bin(buf, cap, b64, strlen(b64), NULL, &len, NULL,
                                       sodium_base64_VARIANT_ORIGINAL),
                     0);
    *ret = buf;
    return len;
}

static json_t *load_vector(const char *name) {
    char path[4096];
    assert_true(xsnprintf(path, sizeof path, "%s/%s", vector_dir, name) > 0);
    json_error_t err;
    json_t *v = json_load_file(path, 0, &err);
    if (!v)
        fail_msg("cannot load %s: %s", path, err.text);
    return v;
}

static zmsg_t *zmsg_from_b64(const json_t *arr) {
    zmsg_t *z = zmsg_new();
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v) {
        _cleanup_free_ unsigned char *b = NULL;
        size_t n = b64_decode(json_string_value(v), &b);
        assert_int_equal(zmsg_addmem(z, b, n), 0);
    }
    return z;
}

static void assert_frames_b64(zmsg_t *z, const json_t *arr) {
    assert_int_equal(zmsg_size(z), json_array_size(arr));
    size_t i = 0;
    for (zframe_t *f = zmsg_first(z); f; f = zmsg_next(z), i++) {
        _cleanup_free_ unsigned char *b = NULL;
        size_t n = b64_decode(json_string_value(json_array_get(arr, i)), &b);
        assert_int_equal(zframe_size(f), n);
        assert_memory_equal(zframe_data(f), b, n);
    }
}

static jwire_signer_t *vector_signer(const json_t *v) {
    _cleanup_free_ unsigned char *key = NULL;
    size_t n = b64_decode(json_string_value(json_object_get(v, "key_b64")), &key);
    jwire_signer_t *s =
        jwire_signer_new(json_string_value(json_object_get(v, "signature_scheme")), key, n);
    assert_non_null(s);
    return s;
}

/* Decode a vector and check every field against what jupyter_client put in. */
static void check_vector(const char *name, int expect_err) {
    _cleanup_json_ json_t *v = load_vector(name);
    _cleanup_signer_ jwire_signer_t *signer = vector_signer(v);
    zmsg_t *z = zmsg_from_b64(json_object_get(v, "frames_b64"));
    _cleanup_msg_ jwire_msg_t *m = NULL;
    int r = jwire_msg_decode(&z, signer, NULL, NULL, &m);
    assert_null(z);
    const json_t *expect = json_object_get(v, "expect");
    if (expect_err) {
        assert_true(json_is_string(json_object_get(expect, "error")));
        assert_int_equal(r, expect_err);
        assert_null(m);
        return;
    }
    assert_true(json_is_null(json_object_get(expect, "error")));
    assert_int_equal(r, 0);
    assert_non_null(m);
    assert_true(json_equal(m->header, json_object_get(expect, "header")));
    assert_true(json_equal(m->parent_header, json_object_get(expect, "parent_header")));
    assert_true(json_equal(m->metadata, json_object_get(expect, "metadata")));
    assert_true(json_equal(m->content, json_object_get(expect, "content")));
    assert_frames_b64(m->ids, json_object_get(expect, "ids_b64"));
    assert_frames_b64(m->buffers, json_object_get(expect, "buffers_b64"));
    assert_string_equal(jwire_msg_type(m), json_string_value(json_object_get(
                                               json_object_get(expect, "header"), "msg_type")));
    assert_string_equal(jwire_msg_id(m), json_string_value(json_object_get(
                                             json_object_get(expect, "header"), "msg_id")));
}

/* ---- signing ---------------------------------------------------------------------------- */

static void sign_split(const jwire_signer_t *s, const char *data, char hex[65]) {
    /* Four uneven parts: the HMAC must be over their concatenation. */
    size_t n = strlen(data), a = n / 5, b = n / 3, c = n / 2;
    const void *const parts[4] = {data, data + a, data + b, data + c};
    const size_t lens[4] = {a, b - a, c - b, n - c};
    assert_int_equal(jwire_signer_sign(s, parts, lens, hex), 0);
}

static void test_sign_rfc4231(void **state) {
    /* RFC 4231 test case 2: a short key. */
    _cleanup_signer_ jwire_signer_t *s = signer_key("Jefe");
    char hex[65];
    sign_split(s, "what do ya want for nothing?", hex);
    assert_string_equal(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    assert_false(jwire_signer_is_null(s));

    /* Test case 6: a 131-byte key, longer than the block, so HMAC hashes it first. */
    unsigned char key[131];
    memset(key, 0xaa, sizeof key);
    _cleanup_signer_ jwire_signer_t *l = jwire_signer_new("hmac-sha256", key, sizeof key);
    assert_non_null(l);
    sign_split(l, "Test Using Larger Than Block-Size Key - Hash Key First", hex);
    assert_string_equal(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    /* Same again: the precomputed state must not be consumed by a signature. */
    sign_split(l, "Test Using Larger Than Block-Size Key - Hash Key First", hex);
    assert_string_equal(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

static void test_sign_verify(void **state) {
    _cleanup_signer_ jwire_signer_t *s = signer_key(KEY64);
    const void *const parts[4] = {"{}", "{}", "{}", "{\"a\":1}"};
    const size_t lens[4] = {2, 2, 2, 7};
    char hex[65];
    assert_int_equal(jwire_signer_sign(s, parts, lens, hex), 0);
    assert_int_equal(strlen(hex), 64);
    for (size_t i = 0; i < 64; i++)
        assert_true((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f'));
    assert_int_equal(jwire_signer_verify(s, parts, lens, hex, 64), 0);

    char bad[65];
    memcpy(bad, hex, sizeof bad);
    bad[63] = bad[63] == '0' ? '1' : '0';
    assert_int_equal(jwire_signer_verify(s, parts, lens, bad, 64), -EACCES);
    memcpy(bad, hex, sizeof bad);
    bad[0] = bad[0] == 'f' ? 'e' : 'f';
    assert_int_equal(jwire_signer_verify(s, parts, lens, bad, 64), -EACCES);
    assert_int_equal(jwire_signer_verify(s, parts, lens, hex, 63), -EACCES);
    assert_int_equal(jwire_signer_verify(s, parts, lens, "", 0), -EACCES);
    assert_int_equal(jwire_signer_verify(s, parts, lens, NULL, 0), -EACCES);
    /* Uppercase is the same MAC but a different text: refused (see the replay cache). */
    for (size_t i = 0; i < 64; i++)
        bad[i] = (char)(hex[i] >= 'a' ? hex[i] - 'a' + 'A' : hex[i]);
    bad[64] = '\0';
    if (strcmp(bad, hex) != 0)
        assert_int_equal(jwire_signer_verify(s, parts, lens, bad, 64), -EACCES);

    /* A different key gives a different MAC. */
    _cleanup_signer_ jwire_signer_t *o = signer_key("0123456789abcdef0123456789abcdef");
    char other[65];
    assert_int_equal(jwire_signer_sign(o, parts, lens, other), 0);
    assert_string_not_equal(other, hex);
    assert_int_equal(jwire_signer_verify(o, parts, lens, hex, 64), -EACCES);
}

static void test_sign_empty_key(void **state) {
    const void *const parts[4] = {"{}", "{}", "{}", "{}"};
    const size_t lens[4] = {2, 2, 2, 2};
    const char *schemes[] = {NULL, "", "hmac-sha256"};
    for (size_t i = 0; i < ARRAY_SIZE(schemes); i++) {
        _cleanup_signer_ jwire_signer_t *s = jwire_signer_new(schemes[i], NULL, 0);
        assert_non_null(s);
        assert_true(jwire_signer_is_null(s));
        char hex[65] = "garbage";
        assert_int_equal(jwire_signer_sign(s, parts, lens, hex), 0);
        assert_string_equal(hex, "");
        assert_int_equal(jwire_signer_verify(s, parts, lens, "", 0), 0);
    }
    errno = 0;
    assert_null(jwire_signer_new("hmac-md5", "k", 1));
    assert_int_equal(errno, EINVAL);
    assert_null(jwire_signer_new(NULL, "k", 1));
    assert_null(jwire_signer_new("", "k", 1));
    assert_null(jwire_signer_new("hmac-sha256", NULL, 3));
    assert_null(jwire_signer_new("rot13", NULL, 0));

    jwire_signer_t *s = jwire_signer_new("hmac-sha256", "k", 1);
    jwire_signer_destroy(&s);
    assert_null(s);
    jwire_signer_destroy(&s);
    jwire_signer_destroy(NULL);
}

/* ---- vectors from jupyter_client -------------------------------------------------------- */

static void test_vectors_good(void **state) {
    check_vector("normal.json", 0);
    check_vector("buffers.json", 0);
    check_vector("routing_ids.json", 0);
    check_vector("long_key.json", 0);
    check_vector("empty_key.json", 0);
}

static void test_vectors_bad(void **state) {
    check_vector("bad_signature.json", -EACCES);
    check_vector("tampered_content.json", -EACCES);
    check_vector("unsigned.json", -EACCES);
    check_vector("uppercase_signature.json", -EACCES);
}

static void test_vector_wrong_key(void **state) {
    _cleanup_json_ json_t *v = load_vector("normal.json");
    _cleanup_signer_ jwire_signer_t *s = signer_key(KEY64);
    zmsg_t *z = zmsg_from_b64(json_object_get(v, "frames_b64"));
    _cleanup_msg_ jwire_msg_t *m = NULL;
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &m), -EACCES);
    assert_null(m);
    /* And a signed message read without a key is accepted: signing is the sender's choice
     * only when the receiver has no key, as in jupyter_client. */
    z = zmsg_from_b64(json_object_get(v, "frames_b64"));
    _cleanup_signer_ jwire_signer_t *n = jwire_signer_new(NULL, NULL, 0);
    assert_int_equal(jwire_msg_decode(&z, n, NULL, NULL, &m), 0);
    assert_string_equal(jwire_msg_type(m), "execute_request");
}

static void test_vector_replay(void **state) {
    _cleanup_json_ json_t *v = load_vector("normal.json");
    _cleanup_signer_ jwire_signer_t *s = vector_signer(v);
    _cleanup_replay_ jwire_replay_t *rp = jwire_replay_new(16);
    assert_non_null(rp);
    for (int round = 0; round < 2; round++) {
        zmsg_t *z = zmsg_from_b64(json_object_get(v, "frames_b64"));
        _cleanup_msg_ jwire_msg_t *m = NULL;
        int r = jwire_msg_decode(&z, s, rp, NULL, &m);
        assert_int_equal(r, round == 0 ? 0 : -EALREADY);
        assert_true(round == 0 ? m != NULL : m == NULL);
    }
    /* A forged copy must not poison the cache for the genuine message. */
    _cleanup_json_ json_t *bad = load_vector("bad_signature.json");
    _cleanup_replay_ jwire_replay_t *rp2 = jwire_replay_new(16);
    zmsg_t *z = zmsg_from_b64(json_object_get(bad, "frames_b64"));
    _cleanup_msg_ jwire_msg_t *m = NULL;
    assert_int_equal(jwire_msg_decode(&z, s, rp2, NULL, &m), -EACCES);
    z = zmsg_from_b64(json_object_get(v, "frames_b64"));
    assert_int_equal(jwire_msg_decode(&z, s, rp2, NULL, &m), 0);
    jwire_msg_destroy(&m);

    /* Without a key there is no signature to remember: the same message passes twice. */
    _cleanup_json_ json_t *e = load_vector("empty_key.json");
    _cleanup_signer_ jwire_signer_t *n = vector_signer(e);
    for (int round = 0; round < 2; round++) {
        z = zmsg_from_b64(json_object_get(e, "frames_b64"));
        assert_int_equal(jwire_msg_decode(&z, n, rp, NULL, &m), 0);
        jwire_msg_destroy(&m);
    }
}

/* ---- malformed messages ----------------------------------------------------------------- */

static void test_decode_malformed(void **state) {
    _cleanup_signer_ jwire_signer_t *s = signer_key(KEY64);
    _cleanup_msg_ jwire_msg_t *m = NULL;

    /* No delimiter. */
    const char *nodelim[] = {"id", "sig", HDR, "{}", "{}", "{}"};
    zmsg_t *z = zmsg_of(ARRAY_SIZE(nodelim), nodelim);
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &m), -EBADMSG);
    assert_null(z);
    /* Delimiter, signature and only three JSON frames. */
    const char *few[] = {JWIRE_DELIM, "sig", HDR, "{}", "{}"};
    z = zmsg_of(ARRAY_SIZE(few), few);
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &m), -EBADMSG);
    /* Delimiter last. */
    const char *last[] = {"a", JWIRE_DELIM};
    z = zmsg_of(ARRAY_SIZE(last), last);
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &m), -EBADMSG);
    /* Empty message. */
    z = zmsg_new();
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &m), -EBADMSG);
    /* NULL arguments. */
    z = NULL;
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &m), -EINVAL);
    assert_int_equal(jwire_msg_decode(NULL, s, NULL, NULL, &m), -EINVAL);
    z = zmsg_of(ARRAY_SIZE(few), few);
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, NULL), -EINVAL);
    assert_null(z);
    assert_null(m);

    /* Correctly signed but bad JSON: the parser runs only after the signature. */
    assert_int_equal(decode_parts(s, HDR, "{}", "{}", "{}"), 0);
    assert_int_equal(decode_parts(s, "{", "{}", "{}", "{}"), -EBADMSG);
    assert_int_equal(decode_parts(s, HDR, "{}", "{}", "{\"a\":1}x"), -EBADMSG);
    assert_int_equal(decode_parts(s, HDR, "", "{}", "{}"), -EBADMSG);
    assert_int_equal(decode_parts(s, "[]", "{}", "{}", "{}"), -EBADMSG);
    assert_int_equal(decode_parts(s, HDR, "null", "{}", "{}"), -EBADMSG);
    assert_int_equal(decode_parts(s, HDR, "{}", "[1]", "{}"), -EBADMSG);
    assert_int_equal(decode_parts(s, HDR, "{}", "{}", "1"), -EBADMSG);
    assert_int_equal(decode_parts(s, HDR, "{}", "{}", "\"s\""), -EBADMSG);
    assert_int_equal(decode_parts(s, HDR, "{}", "{}", "{\"bad\":\"\xff\"}"), -EBADMSG);
    /* Header needs string msg_id and msg_type, without embedded NULs. */
    assert_int_equal(decode_parts(s, "{\"msg_type\":\"x\"}", "{}", "{}", "{}"), -EBADMSG);
    assert_int_equal(decode_parts(s, "{\"msg_id\":\"x\"}", "{}", "{}", "{}"), -EBADMSG);
    assert_int_equal(decode_parts(s, "{\"msg_id\":1,\"msg_type\":\"t\"}", "{}", "{}", "{}"),
                     -EBADMSG);
    assert_int_equal(decode_parts(s, "{\"msg_id\":\"i\",\"msg_type\":null}", "{}", "{}", "{}"),
                     -EBADMSG);
    assert_int_equal(
        decode_parts(s, "{\"msg_id\":\"i\",\"msg_type\":\"a\\u0000b\"}", "{}", "{}", "{}"),
        -EBADMSG);
    assert_int_equal(decode_parts(s, "{\"msg_id\":\"i\",\"msg_type\":\"\"}", "{}", "{}", "{}"), 0);
    /* NULs elsewhere (stream output may carry them) survive. */
    assert_int_equal(decode_parts(s, HDR, "{}", "{}", "{\"text\":\"a\\u0000b\"}"), 0);

    /* Routing ids before the delimiter, buffers after. */
    const char *ids[] = {"r1", "", "r3"};
    const char *bufs[] = {"b1", ""};
    z = zmsg_signed(s, 3, ids, HDR, "{}", "{}", "{}", 2, bufs);
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &m), 0);
    assert_int_equal(zmsg_size(m->ids), 3);
    assert_int_equal(zmsg_size(m->buffers), 2);
    assert_int_equal(zframe_size(zmsg_first(m->ids)), 2);
    assert_memory_equal(zframe_data(zmsg_first(m->ids)), "r1", 2);
    assert_int_equal(zframe_size(zmsg_last(m->buffers)), 0);
    assert_string_equal(jwire_msg_parent_id(m), "");
    assert_string_equal(jwire_msg_parent_type(m), "");
}

static void test_decode_limits(void **state) {
    _cleanup_signer_ jwire_signer_t *s = signer_key(KEY64);
    _cleanup_msg_ jwire_msg_t *m = NULL;
    const char *bufs[] = {"0123456789", "0123456789", "0123456789"};
    zmsg_t *z = zmsg_signed(s, 0, NULL, HDR, "{}", "{}", "{}", 3, bufs);
    size_t total = zmsg_content_size(z), frames = zmsg_size(z);
    assert_int_equal(frames, 9);
    zmsg_t *copy = zmsg_dup(z);

    jwire_limits_t exact = {.max_bytes = total, .max_frames = frames};
    assert_int_equal(jwire_msg_decode(&z, s, NULL, &exact, &m), 0);
    jwire_msg_destroy(&m);

    z = zmsg_dup(copy);
    jwire_limits_t bytes = {.max_bytes = total - 1};
    assert_int_equal(jwire_msg_decode(&z, s, NULL, &bytes, &m), -EMSGSIZE);
    z = zmsg_dup(copy);
    jwire_limits_t nframes = {.max_frames = frames - 1};
    assert_int_equal(jwire_msg_decode(&z, s, NULL, &nframes, &m), -EMSGSIZE);
    assert_null(m);

    /* Limits come before everything else: an oversized garbage message is EMSGSIZE, not
     * EBADMSG or EACCES. */
    zmsg_t *junk = zmsg_new();
    for (int i = 0; i < 65; i++)
        zmsg_addstr(junk, "x");
    assert_int_equal(jwire_msg_decode(&junk, s, NULL, NULL, &m), -EMSGSIZE);
    junk = zmsg_new();
    for (int i = 0; i < 64; i++)
        zmsg_addstr(junk, "x");
    assert_int_equal(jwire_msg_decode(&junk, s, NULL, NULL, &m), -EBADMSG);
    zmsg_destroy(&copy);
}

/* ---- replay cache ----------------------------------------------------------------------- */

static void key_of(unsigned v, char ret[65]) {
    snprintf(ret, 65, "%064x", v);
}

static void test_replay_basic(void **state) {
    assert_null(jwire_replay_new(0));
    _cleanup_replay_ jwire_replay_t *rp = jwire_replay_new(4);
    assert_non_null(rp);
    char k[8][65];
    for (unsigned i = 0; i < 8; i++)
        key_of(i, k[i]);
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(jwire_replay_check_add(rp, k[i]), 0);
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(jwire_replay_check_add(rp, k[i]), -EALREADY);
    /* The 5th distinct entry evicts the oldest (k0) and nothing else. */
    assert_int_equal(jwire_replay_check_add(rp, k[4]), 0);
    assert_int_equal(jwire_replay_check_add(rp, k[1]), -EALREADY);
    assert_int_equal(jwire_replay_check_add(rp, k[2]), -EALREADY);
    assert_int_equal(jwire_replay_check_add(rp, k[3]), -EALREADY);
    assert_int_equal(jwire_replay_check_add(rp, k[4]), -EALREADY);
    assert_int_equal(jwire_replay_check_add(rp, k[0]), 0); /* forgotten; now evicts k1 */
    assert_int_equal(jwire_replay_check_add(rp, k[1]), 0);
    assert_int_equal(jwire_replay_check_add(rp, k[4]), -EALREADY);

    assert_int_equal(jwire_replay_check_add(rp, ""), -EINVAL);
    assert_int_equal(jwire_replay_check_add(rp, NULL), -EINVAL);
    char longk[70];
    memset(longk, 'a', sizeof longk - 1);
    longk[69] = '\0';
    assert_int_equal(jwire_replay_check_add(rp, longk), -EINVAL);
    /* Shorter keys are distinct from their prefixes' neighbours. */
    assert_int_equal(jwire_replay_check_add(rp, "abc"), 0);
    assert_int_equal(jwire_replay_check_add(rp, "ab"), 0);
    assert_int_equal(jwire_replay_check_add(rp, "abc"), -EALREADY);

    jwire_replay_t *one = jwire_replay_new(1);
    assert_int_equal(jwire_replay_check_add(one, k[0]), 0);
    assert_int_equal(jwire_replay_check_add(one, k[0]), -EALREADY);
    assert_int_equal(jwire_replay_check_add(one, k[1]), 0);
    assert_int_equal(jwire_replay_check_add(one, k[0]), 0);
    jwire_replay_destroy(&one);
    assert_null(one);
    jwire_replay_destroy(&one);
}

/* The cache against the obvious model (a FIFO array scanned linearly), over enough random
 * operations to exercise every backward-shift case of the table. */
static void test_replay_model(void **state) {
    const size_t caps[] = {1, 2, 3, 7, 8, 33};
    uint32_t rng = 12345;
    for (size_t ci = 0; ci < ARRAY_SIZE(caps); ci++) {
        size_t cap = caps[ci];
        _cleanup_replay_ jwire_replay_t *rp = jwire_replay_new(cap);
        assert_non_null(rp);
        unsigned model[64];
        size_t n = 0, head = 0;
        for (int op = 0; op < 50000; op++) {
            rng = rng * 1103515245u + 12345u;
            unsigned v = (rng >> 8) % (unsigned)(3 * cap + 1);
            bool seen = false;
            for (size_t i = 0; i < n; i++)
                seen |= model[i] == v;
            char k[65];
            key_of(v, k);
            int r = jwire_replay_check_add(rp, k);
            if (r != (seen ? -EALREADY : 0))
                fail_msg("cap %zu op %d key %u: got %d, model says seen=%d", cap, op, v, r, seen);
            if (!seen) {
                if (n < cap)
                    model[n++] = v;
                else {
                    model[head] = v;
                    head = (head + 1) % cap;
                }
            }
        }
    }
}

/* ---- building and encoding -------------------------------------------------------------- */

static void test_now_iso8601(void **state) {
    char d[32];
    jwire_now_iso8601(d);
    assert_int_equal(strlen(d), 27);
    const char *pat = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    for (size_t i = 0; i < 27; i++) {
        if (pat[i] == 'd')
            assert_true(d[i] >= '0' && d[i] <= '9');
        else
            assert_int_equal(d[i], pat[i]);
    }
    assert_true(strncmp(d, "2020", 4) > 0);
}

static void test_msg_new(void **state) {
    _cleanup_json_ json_t *parent = json_pack("{s:s, s:s, s:{s:i}}", "msg_id", "p-1", "msg_type",
                                              "execute_request", "nested", "n", 1);
    _cleanup_msg_ jwire_msg_t *m =
        jwire_msg_new("execute_reply", "sess", "bob", parent, json_pack("{s:s}", "status", "ok"));
    assert_non_null(m);
    assert_string_equal(jwire_msg_type(m), "execute_reply");
    assert_string_equal(jwire_msg_parent_id(m), "p-1");
    assert_string_equal(jwire_msg_parent_type(m), "execute_request");
    const char *id = jwire_msg_id(m);
    assert_int_equal(strlen(id), 36);
    assert_int_equal(id[14], '4');
    assert_int_equal(id[8], '-');
    assert_string_equal(json_string_value(json_object_get(m->header, "session")), "sess");
    assert_string_equal(json_string_value(json_object_get(m->header, "username")), "bob");
    assert_string_equal(json_string_value(json_object_get(m->header, "version")), "5.3");
    const char *date = json_string_value(json_object_get(m->header, "date"));
    assert_non_null(date);
    assert_int_equal(strlen(date), 27);
    assert_int_equal(date[26], 'Z');
    assert_int_equal(json_object_size(m->header), 6);
    assert_int_equal(json_object_size(m->metadata), 0);
    assert_int_equal(zmsg_size(m->ids), 0);
    assert_int_equal(zmsg_size(m->buffers), 0);
    /* parent_header is a deep copy. */
    json_object_set_new(json_object_get(parent, "nested"), "n", json_integer(2));
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(m->parent_header, "nested"), "n")), 1);

    _cleanup_msg_ jwire_msg_t *m2 = jwire_msg_new("status", NULL, NULL, NULL, NULL);
    assert_non_null(m2);
    assert_true(json_is_object(m2->content) && json_object_size(m2->content) == 0);
    assert_true(json_is_object(m2->parent_header) && json_object_size(m2->parent_header) == 0);
    assert_string_equal(json_string_value(json_object_get(m2->header, "session")), "");
    assert_string_not_equal(jwire_msg_id(m2), jwire_msg_id(m));

    /* Content is stolen even on failure (ASan/valgrind would see a leak otherwise). */
    errno = 0;
    assert_null(jwire_msg_new("x", "s", "u", NULL, json_array()));
    assert_int_equal(errno, EINVAL);
    assert_null(jwire_msg_new(NULL, "s", "u", NULL, json_object()));
    _cleanup_json_ json_t *arr = json_array();
    assert_null(jwire_msg_new("x", "s", "u", arr, NULL));

    jwire_msg_destroy(&m2);
    assert_null(m2);
    jwire_msg_destroy(&m2);
    jwire_msg_destroy(NULL);
    assert_string_equal(jwire_msg_type(NULL), "");
}

static void test_encode_decode(void **state) {
    _cleanup_signer_ jwire_signer_t *s = signer_key(KEY64);
    _cleanup_msg_ jwire_msg_t *m =
        jwire_msg_new("execute_request", "sess", "u", NULL,
                      json_pack("{s:s, s:b, s:[i,f,n]}", "code", "print('\xc3\xa9')", "silent", 0,
                                "list", 1, 2.5));
    assert_non_null(m);
    json_object_set_new(m->metadata, "cell", json_string("c1"));
    zmsg_addstr(m->ids, "id-a");
    zmsg_addmem(m->ids, "\0\1", 2);
    zmsg_addmem(m->buffers, "\0\xff", 2);
    zmsg_addmem(m->buffers, "", 0);

    zmsg_t *z = NULL;
    assert_int_equal(jwire_msg_encode(m, s, &z), 0);
    assert_int_equal(zmsg_size(z), 2 + 6 + 2);
    /* Layout and exact bytes: the signature is over the compact JSON as sent. */
    zframe_t *f = zmsg_first(z);
    assert_memory_equal(zframe_data(f), "id-a", 4);
    f = zmsg_next(z);
    assert_int_equal(zframe_size(f), 2);
    f = zmsg_next(z);
    assert_true(zframe_streq(f, JWIRE_DELIM));
    zframe_t *sig = zmsg_next(z);
    assert_int_equal(zframe_size(sig), 64);
    zframe_t *jf[4];
    for (int i = 0; i < 4; i++)
        jf[i] = zmsg_next(z);
    _cleanup_free_ char *content = json_dumps(m->content, JSON_COMPACT);
    assert_int_equal(zframe_size(jf[3]), strlen(content));
    assert_memory_equal(zframe_data(jf[3]), content, strlen(content));
    assert_null(memmem(zframe_data(jf[0]), zframe_size(jf[0]), "\": ", 3));
    /* Insertion order, not sorted: msg_id comes first in the header. */
    assert_memory_equal(zframe_data(jf[0]), "{\"msg_id\":", 10);
    const void *const parts[4] = {zframe_data(jf[0]), zframe_data(jf[1]), zframe_data(jf[2]),
                                  zframe_data(jf[3])};
    const size_t lens[4] = {zframe_size(jf[0]), zframe_size(jf[1]), zframe_size(jf[2]),
                            zframe_size(jf[3])};
    assert_int_equal(jwire_signer_verify(s, parts, lens, zframe_data(sig), 64), 0);
    f = zmsg_next(z);
    assert_int_equal(zframe_size(f), 2);
    assert_memory_equal(zframe_data(f), "\0\xff", 2);

    /* The message itself is untouched by encoding. */
    assert_int_equal(zmsg_size(m->ids), 2);
    assert_int_equal(zmsg_size(m->buffers), 2);

    _cleanup_msg_ jwire_msg_t *d = NULL;
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &d), 0);
    assert_true(json_equal(d->header, m->header));
    assert_true(json_equal(d->parent_header, m->parent_header));
    assert_true(json_equal(d->metadata, m->metadata));
    assert_true(json_equal(d->content, m->content));
    assert_true(zmsg_eq(d->ids, m->ids));
    assert_true(zmsg_eq(d->buffers, m->buffers));

    /* Unsigned encoding carries an empty signature. */
    _cleanup_signer_ jwire_signer_t *n = jwire_signer_new(NULL, NULL, 0);
    assert_int_equal(jwire_msg_encode(m, n, &z), 0);
    zmsg_first(z);
    zmsg_next(z);
    zmsg_next(z);
    assert_int_equal(zframe_size(zmsg_next(z)), 0);
    /* ... which a keyed receiver refuses. */
    assert_int_equal(jwire_msg_decode(&z, s, NULL, NULL, &d), -EACCES);
    assert_int_equal(jwire_msg_encode(m, NULL, &z), 0);
    zmsg_destroy(&z);

    /* Not-an-object fields cannot be encoded. */
    json_t *saved = m->metadata;
    m->metadata = json_array();
    assert_int_equal(jwire_msg_encode(m, s, &z), -EINVAL);
    assert_null(z);
    json_decref(m->metadata);
    m->metadata = saved;
    assert_int_equal(jwire_msg_encode(NULL, s, &z), -EINVAL);
}

/* ---- sockets ---------------------------------------------------------------------------- */

static void wait_readable(zsock_t *sock) {
    zmq_pollitem_t it = {.socket = zsock_resolve(sock), .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
}

static void test_socket_roundtrip(void **state) {
    zsys_handler_set(NULL);
    _cleanup_signer_ jwire_signer_t *s = signer_key(KEY64);
    _cleanup_replay_ jwire_replay_t *rp = jwire_replay_new(64);
    _cleanup_zsock_ zsock_t *router = zsock_new(ZMQ_ROUTER);
    _cleanup_zsock_ zsock_t *dealer = zsock_new(ZMQ_DEALER);
    assert_non_null(router);
    assert_non_null(dealer);
    zsock_set_linger(router, 0);
    zsock_set_linger(dealer, 0);
    zsock_set_identity(dealer, "dealer-1");
    assert_int_equal(zsock_bind(router, "inproc://jwire-test"), 0);
    assert_int_equal(zsock_connect(dealer, "inproc://jwire-test"), 0);

    _cleanup_msg_ jwire_msg_t *got = NULL;
    assert_int_equal(jwire_msg_recv(router, s, rp, NULL, &got), -EAGAIN);
    assert_null(got);

    _cleanup_msg_ jwire_msg_t *req =
        jwire_msg_new("execute_request", "sess", "u", NULL, json_pack("{s:s}", "code", "1+1"));
    zmsg_addmem(req->buffers, "\0buf\0", 5);
    assert_int_equal(jwire_msg_send(req, s, dealer), 0);
    wait_readable(router);
    assert_int_equal(jwire_msg_recv(router, s, rp, NULL, &got), 0);
    assert_int_equal(zmsg_size(got->ids), 1);
    assert_true(zframe_streq(zmsg_first(got->ids), "dealer-1"));
    assert_string_equal(jwire_msg_id(got), jwire_msg_id(req));
    assert_true(json_equal(got->content, req->content));
    assert_true(zmsg_eq(got->buffers, req->buffers));
    assert_int_equal(jwire_msg_recv(router, s, rp, NULL, &got), -EAGAIN);

    /* Reply through the routing id; a raw libzmq handle works as well as a zsock. */
    _cleanup_msg_ jwire_msg_t *rep = jwire_msg_new("execute_reply", "ksess", "k", got->header,
                                                   json_pack("{s:s}", "status", "ok"));
    zmsg_destroy(&rep->ids);
    rep->ids = zmsg_dup(got->ids);
    assert_int_equal(jwire_msg_send(rep, s, zsock_resolve(router)), 0);
    wait_readable(dealer);
    jwire_msg_destroy(&got);
    assert_int_equal(jwire_msg_recv(dealer, s, rp, NULL, &got), 0);
    assert_int_equal(zmsg_size(got->ids), 0);
    assert_string_equal(jwire_msg_parent_id(got), jwire_msg_id(req));
    assert_string_equal(jwire_msg_type(got), "execute_reply");
    jwire_msg_destroy(&got);

    /* The same bytes again are a replay. */
    assert_int_equal(jwire_msg_send(req, s, dealer), 0);
    wait_readable(router);
    assert_int_equal(jwire_msg_recv(router, s, rp, NULL, &got), -EALREADY);

    /* Too many frames, then too many bytes, then a good message: the oversized ones are
     * drained whole and the stream stays in step. */
    jwire_limits_t lim = {.max_bytes = 4096, .max_frames = 12};
    zmsg_t *big = zmsg_new();
    for (int i = 0; i < 40; i++)
        zmsg_addstr(big, "frame");
    assert_int_equal(zmsg_send(&big, dealer), 0);
    big = zmsg_new();
    char *blob = calloc(1, 10000);
    zmsg_addmem(big, blob, 10000);
    zmsg_addmem(big, blob, 10000);
    zmsg_addstr(big, "tail");
    free(blob);
    assert_int_equal(zmsg_send(&big, dealer), 0);
    _cleanup_msg_ jwire_msg_t *req2 = jwire_msg_new("kernel_info_request", "sess", "u", NULL, NULL);
    assert_int_equal(jwire_msg_send(req2, s, dealer), 0);
    wait_readable(router);
    assert_int_equal(jwire_msg_recv(router, s, rp, &lim, &got), -EMSGSIZE);
    wait_readable(router);
    assert_int_equal(jwire_msg_recv(router, s, rp, &lim, &got), -EMSGSIZE);
    wait_readable(router);
    assert_int_equal(jwire_msg_recv(router, s, rp, &lim, &got), 0);
    assert_string_equal(jwire_msg_type(got), "kernel_info_request");
    jwire_msg_destroy(&got);

    /* A forged message (wrong key) is refused and does not desync either. */
    _cleanup_signer_ jwire_signer_t *evil = signer_key("not the key");
    assert_int_equal(jwire_msg_send(req2, evil, dealer), 0);
    assert_int_equal(jwire_msg_send(req, s, dealer), 0); /* replay of req */
    _cleanup_msg_ jwire_msg_t *req3 = jwire_msg_new("comm_info_request", "sess", "u", NULL, NULL);
    assert_int_equal(jwire_msg_send(req3, s, dealer), 0);
    wait_readable(router);
    assert_int_equal(jwire_msg_recv(router, s, rp, NULL, &got), -EACCES);
    wait_readable(router);
    assert_int_equal(jwire_msg_recv(router, s, rp, NULL, &got), -EALREADY);
    wait_readable(router);
    assert_int_equal(jwire_msg_recv(router, s, rp, NULL, &got), 0);
    assert_string_equal(jwire_msg_type(got), "comm_info_request");
    jwire_msg_t *none = NULL;
    assert_int_equal(jwire_msg_recv(router, s, rp, NULL, &none), -EAGAIN);
    assert_null(none);
    assert_int_equal(jwire_msg_recv(NULL, s, rp, NULL, &none), -EINVAL);
}

static void test_socket_ipc(void **state) {
    zsys_handler_set(NULL);
    char dir[] = "/tmp/jwire-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char ep[128];
    assert_true(xsnprintf(ep, sizeof ep, "ipc://%s/shell", dir) > 0);
    _cleanup_signer_ jwire_signer_t *s = jwire_signer_new(NULL, NULL, 0);
    zsock_t *pub = zsock_new(ZMQ_PUB), *sub = zsock_new(ZMQ_SUB);
    zsock_set_linger(pub, 0);
    zsock_set_linger(sub, 0);
    zsock_set_subscribe(sub, "");
    assert_int_equal(zsock_bind(pub, "%s", ep), 0);
    assert_int_equal(zsock_connect(sub, "%s", ep), 0);
    /* PUB drops until the subscription arrives: send until one gets through. */
    _cleanup_msg_ jwire_msg_t *st =
        jwire_msg_new("status", "k", "u", NULL, json_pack("{s:s}", "execution_state", "idle"));
    _cleanup_msg_ jwire_msg_t *got = NULL;
    for (int i = 0; i < 500 && !got; i++) {
        assert_int_equal(jwire_msg_send(st, s, pub), 0);
        zmq_pollitem_t it = {.socket = zsock_resolve(sub), .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 10) == 1)
            assert_int_equal(jwire_msg_recv(sub, s, NULL, NULL, &got), 0);
    }
    assert_non_null(got);
    assert_string_equal(json_string_value(json_object_get(got->content, "execution_state")),
                        "idle");
    zsock_destroy(&sub);
    zsock_destroy(&pub);
    char path[160];
    assert_true(xsnprintf(path, sizeof path, "%s/shell", dir) > 0);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

/* ---- connection files ------------------------------------------------------------------- */

static char *read_vector_text(const char *name) {
    char path[4096];
    assert_true(xsnprintf(path, sizeof path, "%s/%s", vector_dir, name) > 0);
    char *text = NULL;
    assert_int_equal(read_file_bounded(path, 65536, &text, NULL), 0);
    return text;
}

static void test_conn_vectors(void **state) {
    jwire_conn_t c;
    _cleanup_free_ char *tcp = read_vector_text("conn_tcp.json");
    assert_int_equal(jwire_conn_parse(tcp, &c), 0);
    assert_string_equal(c.transport, "tcp");
    assert_string_equal(c.ip, "127.0.0.1");
    assert_string_equal(c.signature_scheme, "hmac-sha256");
    assert_string_equal(c.kernel_name, "python3");
    assert_int_equal(strlen(c.key), 64);
    assert_int_equal(c.ports[JWIRE_SHELL], 50001);
    assert_int_equal(c.ports[JWIRE_IOPUB], 50002);
    assert_int_equal(c.ports[JWIRE_STDIN], 50003);
    assert_int_equal(c.ports[JWIRE_CONTROL], 50004);
    assert_int_equal(c.ports[JWIRE_HB], 50005);
    char ep[300];
    assert_int_equal(jwire_conn_endpoint(&c, JWIRE_SHELL, ep, sizeof ep), 0);
    assert_string_equal(ep, "tcp://127.0.0.1:50001");
    assert_int_equal(jwire_conn_endpoint(&c, JWIRE_HB, ep, sizeof ep), 0);
    assert_string_equal(ep, "tcp://127.0.0.1:50005");

    _cleanup_free_ char *ipc = read_vector_text("conn_ipc.json");
    assert_int_equal(jwire_conn_parse(ipc, &c), 0);
    assert_string_equal(c.transport, "ipc");
    assert_int_equal(jwire_conn_endpoint(&c, JWIRE_IOPUB, ep, sizeof ep), 0);
    assert_string_equal(ep, "ipc:///run/kbox/w1/kernel-50002");
    assert_int_equal(jwire_conn_endpoint(&c, JWIRE_CONTROL, ep, sizeof ep), 0);
    assert_string_equal(ep, "ipc:///run/kbox/w1/kernel-50004");

    char small[10];
    assert_int_equal(jwire_conn_endpoint(&c, JWIRE_SHELL, small, sizeof small), -ENAMETOOLONG);
    assert_int_equal(jwire_conn_endpoint(&c, JWIRE_NCHANNELS, ep, sizeof ep), -EINVAL);
    assert_int_equal(jwire_conn_endpoint(&c, (jwire_channel_t)-1, ep, sizeof ep), -EINVAL);

    assert_string_equal(jwire_channel_name(JWIRE_SHELL), "shell");
    assert_string_equal(jwire_channel_name(JWIRE_IOPUB), "iopub");
    assert_string_equal(jwire_channel_name(JWIRE_STDIN), "stdin");
    assert_string_equal(jwire_channel_name(JWIRE_CONTROL), "control");
    assert_string_equal(jwire_channel_name(JWIRE_HB), "hb");
    assert_string_equal(jwire_channel_name(JWIRE_NCHANNELS), "");
}

#define CONN_OK                                                                                    \
    "\"transport\":\"tcp\",\"ip\":\"127.0.0.1\",\"shell_port\":1,\"iopub_port\":2,"                \
    "\"stdin_port\":3,\"control_port\":4,\"hb_port\":5,\"signature_scheme\":\"hmac-sha256\","      \
    "\"key\":\"k\""

static void test_conn_errors(void **state) {
    jwire_conn_t c;
    memset(&c, 0x5a, sizeof c);
    assert_int_equal(jwire_conn_parse("{" CONN_OK "}", &c), 0);
    assert_string_equal(c.kernel_name, ""); /* optional */
    assert_string_equal(c.key, "k");

    /* Each required field missing in turn. */
    const char *fields[] = {"transport",  "ip",      "shell_port",   "iopub_port",
                            "stdin_port", "hb_port", "control_port", "signature_scheme",
                            "key"};
    for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
        _cleanup_json_ json_t *o = json_loads("{" CONN_OK "}", 0, NULL);
        assert_int_equal(json_object_del(o, fields[i]), 0);
        _cleanup_free_ char *t = json_dumps(o, 0);
        memset(&c, 0x5a, sizeof c);
        assert_int_equal(jwire_conn_parse(t, &c), -EINVAL);
        assert_int_equal((unsigned char)c.transport[0], 0x5a); /* untouched on failure */
    }
    const char *bad[] = {
        "",
        "{",
        "[]",
        "null",
        "{" CONN_OK ",\"shell_port\":\"1\"}",
        "{" CONN_OK ",\"hb_port\":-1}",
        "{" CONN_OK ",\"hb_port\":65536}",
        "{" CONN_OK ",\"hb_port\":1.5}",
        "{" CONN_OK ",\"transport\":\"udp\"}",
        "{" CONN_OK ",\"transport\":\"tcpx\"}",
        "{" CONN_OK ",\"ip\":\"\"}",
        "{" CONN_OK ",\"ip\":5}",
        "{" CONN_OK ",\"key\":null}",
        "{" CONN_OK ",\"kernel_name\":7}",
        "{" CONN_OK ",\"signature_scheme\":\"0123456789012345678901234567890123\"}",
        "{" CONN_OK "} trailing",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        if (jwire_conn_parse(bad[i], &c) != -EINVAL)
            fail_msg("accepted: %s", bad[i]);
    assert_int_equal(jwire_conn_parse(NULL, &c), -EINVAL);

    /* Length limits: 255 chars fit a 256-byte field, 256 do not. */
    char text[1024], key[300];
    memset(key, 'k', 255);
    key[255] = '\0';
    snprintf(text, sizeof text, "{" CONN_OK ",\"key\":\"%s\"}", key);
    assert_int_equal(jwire_conn_parse(text, &c), 0);
    assert_int_equal(strlen(c.key), 255);
    key[255] = 'k';
    key[256] = '\0';
    snprintf(text, sizeof text, "{" CONN_OK ",\"key\":\"%s\"}", key);
    assert_int_equal(jwire_conn_parse(text, &c), -EINVAL);
    assert_int_equal(jwire_conn_parse("{" CONN_OK ",\"transport\":\"ipc\",\"hb_port\":0}", &c), 0);
}

static void test_conn_write_read(void **state) {
    char dir[] = "/tmp/jwire-conn-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    assert_true(xsnprintf(path, sizeof path, "%s/kernel.json", dir) > 0);
    jwire_conn_t c = {.transport = "ipc",
                      .ip = "/run/kbox/w2/k",
                      .ports = {11, 12, 13, 14, 15},
                      .signature_scheme = "hmac-sha256",
                      .key = "s3cr3t-\xc3\xa9",
                      .kernel_name = "python3"};
    assert_int_equal(jwire_conn_write(path, &c), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    jwire_conn_t r;
    assert_int_equal(jwire_conn_read(path, &r), 0);
    assert_memory_equal(&r, &c, sizeof c);
    /* Overwrite in place. */
    c.ports[JWIRE_HB] = 99;
    assert_int_equal(jwire_conn_write(path, &c), 0);
    assert_int_equal(jwire_conn_read(path, &r), 0);
    assert_int_equal(r.ports[JWIRE_HB], 99);
    unlink(path);
    assert_int_equal(jwire_conn_read(path, &r), -ENOENT);
    assert_int_equal(rmdir(dir), 0);
}

int main(int argc, char **argv) {
    if (argc > 1)
        vector_dir = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_rfc4231),     cmocka_unit_test(test_sign_verify),
        cmocka_unit_test(test_sign_empty_key),   cmocka_unit_test(test_vectors_good),
        cmocka_unit_test(test_vectors_bad),      cmocka_unit_test(test_vector_wrong_key),
        cmocka_unit_test(test_vector_replay),    cmocka_unit_test(test_decode_malformed),
        cmocka_unit_test(test_decode_limits),    cmocka_unit_test(test_replay_basic),
        cmocka_unit_test(test_replay_model),     cmocka_unit_test(test_now_iso8601),
        cmocka_unit_test(test_msg_new),          cmocka_unit_test(test_encode_decode),
        cmocka_unit_test(test_socket_roundtrip), cmocka_unit_test(test_socket_ipc),
        cmocka_unit_test(test_conn_vectors),     cmocka_unit_test(test_conn_errors),
        cmocka_unit_test(test_conn_write_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
