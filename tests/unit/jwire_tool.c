/* A test helper that exposes the jwire codec to scripts, so check_jwire_python.py can check
 * kbox against jupyter_client in both directions. It reads one JSON request on stdin and
 * writes one JSON answer on stdout; frames travel as base64 strings.
 *
 *   jwire_tool encode  {key_hex, msg_type, session, username, parent_header?, metadata?,
 *                       content?, ids_b64?, buffers_b64?}  ->  {frames_b64: [...]}
 *   jwire_tool decode  {key_hex, frames_b64}  ->  {error: 0 | -errno, header, parent_header,
 *                       metadata, content, ids_b64, buffers_b64}
 *
 * The key is hex so any bytes (and any length) can be passed. Test-only: it prints keys. */
#include "jwire.h"
#include "util.h"

#include <sodium.h>

#define _cleanup_json_ _cleanup_(json_decrefp)

static int die(const char *what) {
    fprintf(stderr, "jwire_tool: %s\n", what);
    return 2;
}

static jwire_signer_t *signer_from(const json_t *req) {
    const char *hex = json_string_value(json_object_get(req, "key_hex"));
    if (!hex)
        return NULL;
    size_t cap = strlen(hex) / 2 + 1, len = 0;
    _cleanup_free_ unsigned char *key = malloc(cap);
    if (!key || sodium_hex2bin(key, cap, hex, strlen(hex), NULL, &len, NULL) < 0)
        return NULL;
    return jwire_signer_new(len ? "hmac-sha256" : NULL, key, len);
}

static int frames_from_b64(const json_t *arr, zmsg_t *dst) {
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v) {
        const char *s = json_string_value(v);
        if (!s)
            return -EINVAL;
        size_t cap = strlen(s) + 1, len = 0;
        _cleanup_free_ unsigned char *buf = malloc(cap);
        if (!buf || sodium_base642bin(buf, cap, s, strlen(s), NULL, &len, NULL,
                                      sodium_base64_VARIANT_ORIGINAL) < 0)
            return -EINVAL;
        if (zmsg_addmem(dst, buf, len) < 0)
            return -ENOMEM;
    }
    return 0;
}

static json_t *frames_to_b64(zmsg_t *z) {
    json_t *arr = json_array();
    for (zframe_t *f = zmsg_first(z); f; f = zmsg_next(z)) {
        size_t n = sodium_base64_ENCODED_LEN(zframe_size(f), sodium_base64_VARIANT_ORIGINAL);
        _cleanup_free_ char *b = malloc(n);
        if (!b)
            return arr;
        sodium_bin2base64(b, n, zframe_data(f), zframe_size(f), sodium_base64_VARIANT_ORIGINAL);
        json_array_append_new(arr, json_string(b));
    }
    return arr;
}

static int do_encode(const json_t *req, jwire_signer_t *signer) {
    json_t *content = json_object_get(req, "content");
    jwire_msg_t *m =
        jwire_msg_new(json_string_value(json_object_get(req, "msg_type")),
                      json_string_value(json_object_get(req, "session")),
                      json_string_value(json_object_get(req, "username")),
                      json_object_get(req, "parent_header"), content ? json_incref(content) : NULL);
    if (!m)
        return die("jwire_msg_new failed");
    json_t *md = json_object_get(req, "metadata");
    if (md)
        json_object_update(m->metadata, md);
    zmsg_t *z = NULL;
    if (frames_from_b64(json_object_get(req, "ids_b64"), m->ids) < 0 ||
        frames_from_b64(json_object_get(req, "buffers_b64"), m->buffers) < 0 ||
        jwire_msg_encode(m, signer, &z) < 0) {
        jwire_msg_destroy(&m);
        return die("encode failed");
    }
    _cleanup_json_ json_t *out = json_pack("{s:o}", "frames_b64", frames_to_b64(z));
    zmsg_destroy(&z);
    jwire_msg_destroy(&m);
    json_dumpf(out, stdout, JSON_COMPACT);
    putchar('\n');
    return 0;
}

static int do_decode(const json_t *req, jwire_signer_t *signer) {
    zmsg_t *z = zmsg_new();
    if (frames_from_b64(json_object_get(req, "frames_b64"), z) < 0) {
        zmsg_destroy(&z);
        return die("bad frames_b64");
    }
    jwire_msg_t *m = NULL;
    int r = jwire_msg_decode(&z, signer, NULL, NULL, &m);
    _cleanup_json_ json_t *out = NULL;
    if (r < 0)
        out = json_pack("{s:i}", "error", r);
    else
        out = json_pack("{s:i, s:O, s:O, s:O, s:O, s:o, s:o}", "error", 0, "header", m->header,
                        "parent_header", m->parent_header, "metadata", m->metadata, "content",
                        m->content, "ids_b64", frames_to_b64(m->ids), "buffers_b64",
                        frames_to_b64(m->buffers));
    jwire_msg_destroy(&m);
    json_dumpf(out, stdout, JSON_COMPACT | JSON_ENSURE_ASCII);
    putchar('\n');
    return 0;
}

int main(int argc, char **argv) {
    zsys_handler_set(NULL);
    if (argc != 2 || (!streq(argv[1], "encode") && !streq(argv[1], "decode")))
        return die("usage: jwire_tool encode|decode < request.json");
    json_error_t err;
    _cleanup_json_ json_t *req = json_loadf(stdin, 0, &err);
    if (!json_is_object(req))
        return die("stdin is not a JSON object");
    jwire_signer_t *signer = signer_from(req);
    if (!signer)
        return die("bad key_hex");
    int r = streq(argv[1], "encode") ? do_encode(req, signer) : do_decode(req, signer);
    jwire_signer_destroy(&signer);
    return r;
}
