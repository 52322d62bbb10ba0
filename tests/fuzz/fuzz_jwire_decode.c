/* libFuzzer target for the kernel-facing decoder (jwire_msg_decode), the code a hostile
 * kernel talks to. The input is one flags byte and then frames, each a little-endian u16
 * length and that many bytes (a short last frame takes what is left). Flags: bit 0 decode
 * with FUZZ_KEY, bit 1 re-sign the four JSON frames first so the fuzzer gets past the HMAC
 * to the JSON parser, bit 2 use a replay cache, bit 3 tight limits.
 *
 * Besides "no crash, no leak", it checks properties: a decoded message has a string msg_id
 * and msg_type; encoding it and decoding the result gives the same message; with a replay
 * cache the same frames are refused the second time. */
#include "jwire.h"
#include "util.h"

#include <stdint.h>

/* Must match FUZZ_KEY in tests/vectors/gen_jwire_vectors.py (the seed corpus). */
#define FUZZ_KEY "kbox-fuzz-key-kbox-fuzz-key-kbox-fuzz-key"

enum { F_KEY = 1, F_FIXSIG = 2, F_REPLAY = 4, F_TIGHT = 8 };
#define MAX_FRAMES 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static jwire_signer_t *keyed, *unkeyed;

static void check(bool cond) {
    if (!cond)
        abort();
}

static int find_delim(const uint8_t *const *fp, const size_t *fl, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (fl[i] == strlen(JWIRE_DELIM) && memcmp(fp[i], JWIRE_DELIM, fl[i]) == 0)
            return (int)i;
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!keyed) {
        zsys_handler_set(NULL);
        keyed = jwire_signer_new("hmac-sha256", FUZZ_KEY, strlen(FUZZ_KEY));
        unkeyed = jwire_signer_new(NULL, NULL, 0);
    }
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    const uint8_t *fp[MAX_FRAMES];
    size_t fl[MAX_FRAMES], n = 0, off = 1;
    while (off + 2 <= size && n < MAX_FRAMES) {
        size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        if (len > size - off)
            len = size - off;
        fp[n] = data + off;
        fl[n++] = len;
        off += len;
    }
    const jwire_signer_t *signer = flags & F_KEY ? keyed : unkeyed;

    char sig[65];
    int d = find_delim(fp, fl, n);
    if ((flags & F_KEY) && (flags & F_FIXSIG) && d >= 0 && (size_t)d + 6 <= n) {
        const void *const parts[4] = {fp[d + 2], fp[d + 3], fp[d + 4], fp[d + 5]};
        const size_t lens[4] = {fl[d + 2], fl[d + 3], fl[d + 4], fl[d + 5]};
        check(jwire_signer_sign(keyed, parts, lens, sig) == 0);
        check(jwire_signer_verify(keyed, parts, lens, sig, 64) == 0);
        fp[d + 1] = (const uint8_t *)sig;
        fl[d + 1] = 64;
    }

    zmsg_t *z = zmsg_new();
    for (size_t i = 0; i < n; i++)
        zmsg_addmem(z, fp[i], fl[i]);
    zmsg_t *again = (flags & F_REPLAY) ? zmsg_dup(z) : NULL;

    jwire_replay_t *replay = (flags & F_REPLAY) ? jwire_replay_new(8) : NULL;
    jwire_limits_t tight = {.max_bytes = 512, .max_frames = 10};
    jwire_msg_t *m = NULL;
    int r = jwire_msg_decode(&z, signer, replay, (flags & F_TIGHT) ? &tight : NULL, &m);
    check(z == NULL);
    check(r == 0 || r == -EBADMSG || r == -EACCES || r == -EMSGSIZE);
    check((r == 0) == (m != NULL));

    if (m) {
        check(json_is_object(m->header) && json_is_object(m->parent_header) &&
              json_is_object(m->metadata) && json_is_object(m->content));
        check(json_is_string(json_object_get(m->header, "msg_id")));
        check(json_is_string(json_object_get(m->header, "msg_type")));
        (void)jwire_msg_parent_id(m);
        (void)jwire_msg_parent_type(m);

        zmsg_t *enc = NULL;
        check(jwire_msg_encode(m, signer, &enc) == 0);
        jwire_msg_t *m2 = NULL;
        check(jwire_msg_decode(&enc, signer, NULL, NULL, &m2) == 0);
        check(json_equal(m->header, m2->header) &&
              json_equal(m->parent_header, m2->parent_header) &&
              json_equal(m->metadata, m2->metadata) && json_equal(m->content, m2->content));
        check(zmsg_eq(m->ids, m2->ids) && zmsg_eq(m->buffers, m2->buffers));
        jwire_msg_destroy(&m2);

        if (again) {
            jwire_msg_t *m3 = NULL;
            int r3 =
                jwire_msg_decode(&again, signer, replay, (flags & F_TIGHT) ? &tight : NULL, &m3);
            check(r3 == (jwire_signer_is_null(signer) ? 0 : -EALREADY));
            jwire_msg_destroy(&m3);
        }
    }
    zmsg_destroy(&again);
    jwire_msg_destroy(&m);
    jwire_replay_destroy(&replay);
    return 0;
}
