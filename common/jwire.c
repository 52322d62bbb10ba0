/* The Jupyter wire protocol codec shared by the gateway and the kernel host. Everything that
 * arrives here may come from a hostile kernel that knows its own HMAC key, so the decoder
 * works in the cheapest-first order: size and frame-count limits (O(1) on a zmsg), delimiter
 * and frame layout, then the signature (constant time, over the frames as received), then the
 * replay cache, and only then the JSON parser. Frames are moved, not copied: routing ids and
 * buffers keep the zframes libzmq received into. The encoder signs the JSON exactly as
 * serialized and, on the send path, hands the serialized buffers to libzmq without a copy. */
#include "jwire.h"
#include "util.h"

#include <nettle/hmac.h>
#include <sodium.h>
#include <time.h>
#include <zmq.h>

#define JWIRE_DEFAULT_MAX_BYTES  ((size_t)64 * 1024 * 1024)
#define JWIRE_DEFAULT_MAX_FRAMES ((size_t)64)
#define JWIRE_MAC_LEN            SHA256_DIGEST_SIZE
#define JWIRE_HEX_LEN            (2 * JWIRE_MAC_LEN)
/* Cap so ring indices fit the uint32_t hash table and a typo cannot allocate gigabytes. */
#define JWIRE_REPLAY_MAX_CAP ((size_t)1 << 24)
/* A connection file is a few hundred bytes; anything much larger is not one. */
#define JWIRE_CONN_MAX_BYTES ((size_t)64 * 1024)

/* ---- signing ---------------------------------------------------------------------------- */

/* HMAC-SHA256 is nettle's, not libsodium's: every message a kernel sends or the gateway
 * receives is signed or verified, and nettle's SHA-256 uses the CPU's SHA extensions where
 * it has them (libsodium's is portable C): 0.5 against 2.9 us per 600-byte message here. */
struct jwire_signer {
    bool null;
    /* HMAC state right after the key was set: the key schedule (including hashing keys
     * longer than a block) is done once here, and each message starts from a copy of it. */
    struct hmac_sha256_ctx base;
};

jwire_signer_t *jwire_signer_new(const char *scheme, const void *key, size_t keylen) {
    if (keylen > 0 && !key) {
        errno = EINVAL;
        return NULL;
    }
    bool null = keylen == 0;
    /* An empty key means "no signing" whatever the scheme says, as in jupyter_client; a key
     * with no scheme is a configuration error, not an invitation to skip signing. */
    if (!null && !streq(scheme, "hmac-sha256")) {
        errno = EINVAL;
        return NULL;
    }
    if (null && scheme && scheme[0] && !streq(scheme, "hmac-sha256")) {
        errno = EINVAL;
        return NULL;
    }
    if (sodium_init() < 0) {
        errno = ENOMEM;
        return NULL;
    }
    jwire_signer_t *self = calloc(1, sizeof *self);
    if (!self) {
        errno = ENOMEM;
        return NULL;
    }
    self->null = null;
    if (!null)
        hmac_sha256_set_key(&self->base, keylen, key);
    return self;
}

void jwire_signer_destroy(jwire_signer_t **self_p) {
    if (!self_p || !*self_p)
        return;
    /* The state is key material (the padded, hashed key): do not leave it in freed memory. */
    sodium_memzero(*self_p, sizeof **self_p);
    free(*self_p);
    *self_p = NULL;
}

bool jwire_signer_is_null(const jwire_signer_t *self) {
    return !self || self->null;
}

/* Raw MAC of the four parts; the caller knows the signer is not null. */
static void signer_mac(const jwire_signer_t *self, const void *const parts[4], const size_t lens[4],
                       unsigned char mac[JWIRE_MAC_LEN]) {
    struct hmac_sha256_ctx st = self->base;
    for (size_t i = 0; i < 4; i++)
        hmac_sha256_update(&st, lens[i], parts[i]);
    hmac_sha256_digest(&st, JWIRE_MAC_LEN, mac);
    sodium_memzero(&st, sizeof st);
}

int jwire_signer_sign(const jwire_signer_t *self, const void *const parts[4], const size_t lens[4],
                      char ret_hex[65]) {
    if (!parts || !lens || !ret_hex)
        return -EINVAL;
    if (jwire_signer_is_null(self)) {
        ret_hex[0] = '\0';
        return 0;
    }
    unsigned char mac[JWIRE_MAC_LEN];
    signer_mac(self, parts, lens, mac);
    sodium_bin2hex(ret_hex, JWIRE_HEX_LEN + 1, mac, sizeof mac);
    return 0;
}

int jwire_signer_verify(const jwire_signer_t *self, const void *const parts[4],
                        const size_t lens[4], const void *sig, size_t siglen) {
    if (!parts || !lens)
        return -EINVAL;
    if (jwire_signer_is_null(self))
        return 0;
    char hex[JWIRE_HEX_LEN + 1];
    int r = jwire_signer_sign(self, parts, lens, hex);
    if (r < 0)
        return r;
    /* The length is public (always 64); only the content comparison must be constant time.
     * Comparing the hex text (not decoded bytes) keeps uppercase or otherwise re-spelled
     * copies of a signature from slipping past the replay cache, which is keyed by text. */
    if (!sig || siglen != JWIRE_HEX_LEN)
        return -EACCES;
    return sodium_memcmp(hex, sig, JWIRE_HEX_LEN) == 0 ? 0 : -EACCES;
}

/* ---- replay cache ----------------------------------------------------------------------- */

/* A FIFO ring of the remembered signatures plus a linear-probing hash table of ring indices
 * (load factor <= 1/2). The hash is SipHash with a random per-cache key: a kernel holds the
 * HMAC key and could grind signatures that collide under a fixed hash, turning every lookup
 * into a scan. Deletion (FIFO eviction) uses backward shifting, so there are no tombstones
 * and probe lengths never degrade over time. */

typedef struct {
    uint64_t hash;
    uint8_t len;
    char key[JWIRE_HEX_LEN];
} replay_entry_t;

struct jwire_replay {
    size_t capacity;
    size_t count;
    size_t head;     /* next ring slot to fill; the oldest entry once the ring is full */
    size_t mask;     /* table size - 1 */
    uint32_t *table; /* ring index + 1; 0 = empty */
    replay_entry_t *ring;
    unsigned char sipkey[crypto_shorthash_KEYBYTES];
};

jwire_replay_t *jwire_replay_new(size_t capacity) {
    if (capacity == 0 || capacity > JWIRE_REPLAY_MAX_CAP) {
        errno = EINVAL;
        return NULL;
    }
    if (sodium_init() < 0) {
        errno = ENOMEM;
        return NULL;
    }
    size_t tsize = 2;
    while (tsize < 2 * capacity)
        tsize <<= 1;
    jwire_replay_t *self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    self->table = calloc(tsize, sizeof *self->table);
    self->ring = calloc(capacity, sizeof *self->ring);
    if (!self->table || !self->ring)
        goto oom;
    self->capacity = capacity;
    self->mask = tsize - 1;
    randombytes_buf(self->sipkey, sizeof self->sipkey);
    return self;
oom:
    jwire_replay_destroy(&self);
    errno = ENOMEM;
    return NULL;
}

void jwire_replay_destroy(jwire_replay_t **self_p) {
    if (!self_p || !*self_p)
        return;
    free((*self_p)->table);
    free((*self_p)->ring);
    free(*self_p);
    *self_p = NULL;
}

static uint64_t replay_hash(const jwire_replay_t *self, const char *key, size_t len) {
    unsigned char out[crypto_shorthash_BYTES];
    uint64_t h;
    crypto_shorthash(out, (const unsigned char *)key, len, self->sipkey);
    memcpy(&h, out, sizeof h);
    return h;
}

/* Remove ring entry `idx` from the table, shifting later members of its probe run back. */
static void replay_table_remove(jwire_replay_t *self, size_t idx) {
    size_t j = self->ring[idx].hash & self->mask;
    while (self->table[j] != idx + 1)
        j = (j + 1) & self->mask;
    for (;;) {
        self->table[j] = 0;
        size_t k = j;
        for (;;) {
            k = (k + 1) & self->mask;
            if (self->table[k] == 0)
                return;
            size_t home = self->ring[self->table[k] - 1].hash & self->mask;
            /* The entry at k may fill the hole at j unless its home lies cyclically in
             * (j, k]: then moving it before its home would make it unreachable. */
            bool stays = j < k ? (home > j && home <= k) : (home > j || home <= k);
            if (!stays) {
                self->table[j] = self->table[k];
                j = k;
                break;
            }
        }
    }
}

int jwire_replay_check_add(jwire_replay_t *self, const char *sig_hex) {
    if (!self || !sig_hex)
        return -EINVAL;
    size_t len = strnlen(sig_hex, JWIRE_HEX_LEN + 1);
    if (len == 0 || len > JWIRE_HEX_LEN)
        return -EINVAL;
    uint64_t h = replay_hash(self, sig_hex, len);
    size_t i = h & self->mask;
    while (self->table[i]) {
        const replay_entry_t *e = &self->ring[self->table[i] - 1];
        if (e->hash == h && e->len == len && memcmp(e->key, sig_hex, len) == 0)
            return -EALREADY;
        i = (i + 1) & self->mask;
    }
    size_t slot = self->head;
    if (self->count == self->capacity) {
        replay_table_remove(self, slot);
        /* The shift may have moved entries into or out of our probe run: look again. */
        i = h & self->mask;
        while (self->table[i])
            i = (i + 1) & self->mask;
    } else {
        self->count++;
    }
    replay_entry_t *e = &self->ring[slot];
    e->hash = h;
    e->len = (uint8_t)len;
    memcpy(e->key, sig_hex, len);
    self->table[i] = (uint32_t)(slot + 1);
    self->head = (slot + 1) % self->capacity;
    return 0;
}

/* ---- messages --------------------------------------------------------------------------- */

void jwire_now_iso8601(char ret[32]) {
    uint64_t us = now_wall_us();
    time_t secs = (time_t)(us / 1000000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(ret, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ret + n, 32 - n, ".%06uZ", (unsigned)(us % 1000000u));
}

void jwire_msg_destroy(jwire_msg_t **self_p) {
    if (!self_p || !*self_p)
        return;
    jwire_msg_t *self = *self_p;
    zmsg_destroy(&self->ids);
    json_decref(self->header);
    json_decref(self->parent_header);
    json_decref(self->metadata);
    json_decref(self->content);
    zmsg_destroy(&self->buffers);
    free(self);
    *self_p = NULL;
}

static void jwire_msg_destroyp(jwire_msg_t **p) {
    jwire_msg_destroy(p);
}
static void zmsg_destroyp(zmsg_t **p) {
    zmsg_destroy(p);
}
static void zframe_destroyp(zframe_t **p) {
    zframe_destroy(p);
}
#define _cleanup_jwire_msg_ _cleanup_(jwire_msg_destroyp)
#define _cleanup_zmsg_      _cleanup_(zmsg_destroyp)
#define _cleanup_zframe_    _cleanup_(zframe_destroyp)
#define _cleanup_json_      _cleanup_(json_decrefp)

jwire_msg_t *jwire_msg_new(const char *msg_type, const char *session, const char *username,
                           const json_t *parent_header, json_t *content) {
    /* content is stolen on every path, success or not, so callers never need to guess. */
    _cleanup_json_ json_t *c = content;
    if (!msg_type || (c && !json_is_object(c)) ||
        (parent_header && !json_is_object(parent_header))) {
        errno = EINVAL;
        return NULL;
    }
    _cleanup_jwire_msg_ jwire_msg_t *m = calloc(1, sizeof *m);
    if (!m) {
        errno = ENOMEM;
        return NULL;
    }
    char id[37], date[32];
    uuid4(id);
    jwire_now_iso8601(date);
    m->ids = zmsg_new();
    m->buffers = zmsg_new();
    m->header = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "msg_id", id, "session",
                          session ? session : "", "username", username ? username : "", "date",
                          date, "msg_type", msg_type, "version", JWIRE_PROTOCOL_VERSION);
    m->parent_header = parent_header ? json_deep_copy(parent_header) : json_object();
    m->metadata = json_object();
    m->content = c ? TAKE_PTR(c) : json_object();
    if (!m->ids || !m->buffers || !m->header || !m->parent_header || !m->metadata || !m->content) {
        errno = ENOMEM;
        return NULL;
    }
    return TAKE_PTR(m);
}

static const char *obj_str(const json_t *obj, const char *key) {
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

const char *jwire_msg_type(const jwire_msg_t *self) {
    return self ? obj_str(self->header, "msg_type") : "";
}
const char *jwire_msg_id(const jwire_msg_t *self) {
    return self ? obj_str(self->header, "msg_id") : "";
}
const char *jwire_msg_parent_id(const jwire_msg_t *self) {
    return self ? obj_str(self->parent_header, "msg_id") : "";
}
const char *jwire_msg_parent_type(const jwire_msg_t *self) {
    return self ? obj_str(self->parent_header, "msg_type") : "";
}

/* The four JSON frames as serialized (malloc'd by jansson). */
typedef struct {
    char *data[4];
    size_t len[4];
} jwire_parts_t;

static void parts_free(jwire_parts_t *p) {
    for (size_t i = 0; i < 4; i++)
        free(p->data[i]);
}

static int parts_serialize(const jwire_msg_t *self, jwire_parts_t *ret) {
    const json_t *objs[4] = {self->header, self->parent_header, self->metadata, self->content};
    for (size_t i = 0; i < 4; i++) {
        if (!json_is_object(objs[i])) {
            parts_free(ret);
            return -EINVAL;
        }
        /* Compact and in insertion order: deterministic, and the signature is computed over
         * exactly these bytes, so the peer never needs to re-serialize anything. */
        ret->data[i] = json_dumps(objs[i], JSON_COMPACT);
        if (!ret->data[i]) {
            parts_free(ret);
            return -ENOMEM;
        }
        ret->len[i] = strlen(ret->data[i]);
    }
    return 0;
}

static int parts_sign(const jwire_parts_t *p, const jwire_signer_t *signer, char sig[65]) {
    const void *const data[4] = {p->data[0], p->data[1], p->data[2], p->data[3]};
    return jwire_signer_sign(signer, data, p->len, sig);
}

static int zmsg_append_copies(zmsg_t *dst, zmsg_t *src) {
    if (!src)
        return 0;
    for (zframe_t *f = zmsg_first(src); f; f = zmsg_next(src))
        if (zmsg_addmem(dst, zframe_data(f), zframe_size(f)) < 0)
            return -ENOMEM;
    return 0;
}

int jwire_msg_encode(const jwire_msg_t *self, const jwire_signer_t *signer, zmsg_t **ret) {
    if (!self || !ret)
        return -EINVAL;
    jwire_parts_t p = {0};
    int r = parts_serialize(self, &p);
    if (r < 0)
        return r;
    char sig[65];
    r = parts_sign(&p, signer, sig);
    _cleanup_zmsg_ zmsg_t *z = r < 0 ? NULL : zmsg_new();
    if (r >= 0 && !z)
        r = -ENOMEM;
    /* zmsg iteration moves a cursor inside the zmsg, hence the casts: the frames and their
     * order are left as they were. */
    if (r >= 0)
        r = zmsg_append_copies(z, (zmsg_t *)self->ids);
    if (r >= 0 && (zmsg_addstr(z, JWIRE_DELIM) < 0 || zmsg_addstr(z, sig) < 0))
        r = -ENOMEM;
    for (size_t i = 0; r >= 0 && i < 4; i++)
        if (zmsg_addmem(z, p.data[i], p.len[i]) < 0)
            r = -ENOMEM;
    if (r >= 0)
        r = zmsg_append_copies(z, (zmsg_t *)self->buffers);
    parts_free(&p);
    if (r < 0)
        return r;
    *ret = TAKE_PTR(z);
    return 0;
}

static void limits_resolve(const jwire_limits_t *limits, size_t *max_bytes, size_t *max_frames) {
    *max_bytes = limits && limits->max_bytes ? limits->max_bytes : JWIRE_DEFAULT_MAX_BYTES;
    *max_frames = limits && limits->max_frames ? limits->max_frames : JWIRE_DEFAULT_MAX_FRAMES;
}

static bool frame_is_delim(zframe_t *f) {
    return zframe_size(f) == strlen(JWIRE_DELIM) &&
           memcmp(zframe_data(f), JWIRE_DELIM, strlen(JWIRE_DELIM)) == 0;
}

/* Parse one JSON frame that must be an object. NUL escapes are allowed because a kernel may
 * legitimately print them (stream output); the header fields we act on are checked for them
 * separately. */
static json_t *frame_load_object(zframe_t *f) {
    json_error_t err;
    json_t *j = json_loadb((const char *)zframe_data(f), zframe_size(f), JSON_ALLOW_NUL, &err);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* A string header field that is a plain C string (no embedded NUL that would make the
 * gateway and the kernel read different values). */
static bool header_has_cstr(const json_t *header, const char *key) {
    const json_t *v = json_object_get(header, key);
    return json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v);
}

int jwire_msg_decode(zmsg_t **zmsg_p, const jwire_signer_t *signer, jwire_replay_t *replay,
                     const jwire_limits_t *limits, jwire_msg_t **ret) {
    if (!zmsg_p || !*zmsg_p) {
        return -EINVAL;
    }
    _cleanup_zmsg_ zmsg_t *z = TAKE_PTR(*zmsg_p);
    if (!ret)
        return -EINVAL;

    size_t max_bytes, max_frames;
    limits_resolve(limits, &max_bytes, &max_frames);
    size_t nframes = zmsg_size(z);
    if (nframes > max_frames || zmsg_content_size(z) > max_bytes)
        return -EMSGSIZE;

    size_t nids = 0;
    zframe_t *f = zmsg_first(z);
    while (f && !frame_is_delim(f)) {
        nids++;
        f = zmsg_next(z);
    }
    if (!f || nframes - nids - 1 < 5)
        return -EBADMSG;

    _cleanup_jwire_msg_ jwire_msg_t *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->ids = zmsg_new();
    if (!m->ids)
        return -ENOMEM;
    for (size_t i = 0; i < nids; i++) {
        zframe_t *id = zmsg_pop(z);
        if (zmsg_append(m->ids, &id) < 0) {
            zframe_destroy(&id);
            return -ENOMEM;
        }
    }
    zframe_t *delim = zmsg_pop(z);
    zframe_destroy(&delim);
    _cleanup_zframe_ zframe_t *sig = zmsg_pop(z);
    _cleanup_zframe_ zframe_t *header = zmsg_pop(z);
    _cleanup_zframe_ zframe_t *parent = zmsg_pop(z);
    _cleanup_zframe_ zframe_t *metadata = zmsg_pop(z);
    _cleanup_zframe_ zframe_t *content = zmsg_pop(z);
    zframe_t *const jf[4] = {header, parent, metadata, content};

    if (!jwire_signer_is_null(signer)) {
        const void *const data[4] = {zframe_data(jf[0]), zframe_data(jf[1]), zframe_data(jf[2]),
                                     zframe_data(jf[3])};
        const size_t lens[4] = {zframe_size(jf[0]), zframe_size(jf[1]), zframe_size(jf[2]),
                                zframe_size(jf[3])};
        int r = jwire_signer_verify(signer, data, lens, zframe_data(sig), zframe_size(sig));
        if (r < 0)
            return r;
        if (replay) {
            /* Verified, so the frame is exactly 64 lowercase hex chars. */
            char hex[JWIRE_HEX_LEN + 1];
            memcpy(hex, zframe_data(sig), JWIRE_HEX_LEN);
            hex[JWIRE_HEX_LEN] = '\0';
            r = jwire_replay_check_add(replay, hex);
            if (r < 0)
                return r;
        }
    }

    m->header = frame_load_object(jf[0]);
    if (!m->header || !header_has_cstr(m->header, "msg_id") ||
        !header_has_cstr(m->header, "msg_type"))
        return -EBADMSG;
    m->parent_header = frame_load_object(jf[1]);
    m->metadata = frame_load_object(jf[2]);
    m->content = frame_load_object(jf[3]);
    if (!m->parent_header || !m->metadata || !m->content)
        return -EBADMSG;

    /* Whatever is left are the buffers, in order: keep the zmsg itself. */
    m->buffers = TAKE_PTR(z);
    *ret = TAKE_PTR(m);
    return 0;
}

/* ---- sockets ---------------------------------------------------------------------------- */

static void free_cb(void *data, void *hint) {
    free(data);
}

/* Send one part, retrying EINTR once the multipart has started (stopping halfway would
 * glue the next message onto this one). */
static int send_part(void *h, zmq_msg_t *part, int flags, bool first) {
    for (;;) {
        if (zmq_msg_send(part, h, flags) >= 0)
            return 0;
        int r = -errno;
        if (r != -EINTR || first) {
            zmq_msg_close(part);
            return r;
        }
    }
}

static int send_mem(void *h, const void *data, size_t len, int flags, bool first) {
    zmq_msg_t part;
    if (zmq_msg_init_size(&part, len) < 0)
        return -errno;
    if (len)
        memcpy(zmq_msg_data(&part), data, len);
    return send_part(h, &part, flags, first);
}

/* Routing ids, the delimiter and the signature: the frames before the four JSON parts. */
static int send_envelope(void *h, zmsg_t *ids, const char *sig) {
    int r = 0;
    bool first = true;
    for (zframe_t *f = ids ? zmsg_first(ids) : NULL; f && r >= 0; f = zmsg_next(ids)) {
        r = send_mem(h, zframe_data(f), zframe_size(f), ZMQ_SNDMORE, first);
        first = false;
    }
    if (r >= 0)
        r = send_mem(h, JWIRE_DELIM, strlen(JWIRE_DELIM), ZMQ_SNDMORE, first);
    if (r >= 0)
        r = send_mem(h, sig, strlen(sig), ZMQ_SNDMORE, false);
    return r;
}

/* The binary buffers after the JSON parts; the last frame ends the message. */
static int send_buffers(void *h, zmsg_t *bufs) {
    size_t nbufs = bufs ? zmsg_size(bufs) : 0, i = 0;
    int r = 0;
    for (zframe_t *f = nbufs ? zmsg_first(bufs) : NULL; f && r >= 0; f = zmsg_next(bufs), i++)
        r = send_mem(h, zframe_data(f), zframe_size(f), i + 1 < nbufs ? ZMQ_SNDMORE : 0, false);
    return r;
}

int jwire_msg_send(const jwire_msg_t *self, const jwire_signer_t *signer, zsock_t *sock) {
    if (!self || !sock)
        return -EINVAL;
    void *h = zsock_resolve(sock);
    if (!h)
        return -EINVAL;
    jwire_parts_t p = {0};
    int r = parts_serialize(self, &p);
    if (r < 0)
        return r;
    char sig[65];
    r = parts_sign(&p, signer, sig);
    if (r < 0) {
        parts_free(&p);
        return r;
    }

    zmsg_t *bufs = (zmsg_t *)self->buffers;
    size_t nbufs = bufs ? zmsg_size(bufs) : 0;
    r = send_envelope(h, (zmsg_t *)self->ids, sig);
    for (size_t i = 0; i < 4; i++) {
        if (r < 0) {
            free(p.data[i]);
            continue;
        }
        /* Zero copy: libzmq frees the serialized JSON once it is on the wire. */
        zmq_msg_t part;
        int flags = i < 3 || nbufs ? ZMQ_SNDMORE : 0;
        if (zmq_msg_init_data(&part, p.data[i], p.len[i], free_cb, NULL) < 0) {
            r = -errno;
            free(p.data[i]);
            continue;
        }
        r = send_part(h, &part, flags, false);
    }
    if (r >= 0)
        r = send_buffers(h, bufs);
    return r < 0 ? r : 0;
}

int jwire_send_frames(zsock_t *sock, const jwire_signer_t *signer, zmsg_t *ids,
                      const void *const parts[4], const size_t lens[4], zmsg_t *buffers) {
    if (!sock || !parts || !lens)
        return -EINVAL;
    void *h = zsock_resolve(sock);
    if (!h)
        return -EINVAL;
    char sig[65];
    int r = jwire_signer_sign(signer, parts, lens, sig);
    if (r < 0)
        return r;
    size_t nbufs = buffers ? zmsg_size(buffers) : 0;
    r = send_envelope(h, ids, sig);
    for (size_t i = 0; i < 4 && r >= 0; i++)
        r = send_mem(h, parts[i], lens[i], i < 3 || nbufs ? ZMQ_SNDMORE : 0, false);
    if (r >= 0)
        r = send_buffers(h, buffers);
    return r < 0 ? r : 0;
}

int jwire_msg_recv(zsock_t *sock, const jwire_signer_t *signer, jwire_replay_t *replay,
                   const jwire_limits_t *limits, jwire_msg_t **ret) {
    if (!sock || !ret)
        return -EINVAL;
    void *h = zsock_resolve(sock);
    if (!h)
        return -EINVAL;
    /* A non-blocking receive of the first frame rather than a look at ZMQ_EVENTS first:
     * when a message is waiting, libzmq hands it over without a system call, where
     * ZMQ_EVENTS always polls the socket's mailbox (one or two system calls, ~1 us each on
     * a paravirtualised VM, per message). When none is waiting, the receive processes the
     * mailbox just as ZMQ_EVENTS does, which re-arms ZMQ_FD's edge. libzmq delivers
     * multipart messages atomically, so no later frame's receive can block. */
    size_t max_bytes, max_frames;
    limits_resolve(limits, &max_bytes, &max_frames);
    _cleanup_zmsg_ zmsg_t *z = zmsg_new();
    if (!z)
        return -ENOMEM;
    zframe_t *first = zframe_recv_nowait(h);
    if (!first)
        return errno > 0 ? -errno : -EIO;
    size_t bytes = 0, frames = 0;
    int err = 0;
    for (;;) {
        zframe_t *f = first ? first : zframe_recv(h);
        first = NULL;
        if (!f)
            return errno > 0 ? -errno : -EIO;
        bool more = zframe_more(f);
        frames++;
        bytes += zframe_size(f);
        if (err == 0 && (frames > max_frames || bytes > max_bytes)) {
            err = -EMSGSIZE;
            zmsg_destroy(&z);
        }
        /* After an error, keep draining the rest of this multipart so the next receive
         * starts at a message boundary, but hold on to nothing more. */
        if (err == 0 && zmsg_append(z, &f) < 0) {
            err = -ENOMEM;
            zmsg_destroy(&z);
        }
        zframe_destroy(&f);
        if (!more)
            break;
    }
    if (err < 0)
        return err;
    return jwire_msg_decode(&z, signer, replay, limits, ret);
}

/* ---- connection files ------------------------------------------------------------------- */

static const char *const channel_names[JWIRE_NCHANNELS] = {
    [JWIRE_SHELL] = "shell",     [JWIRE_IOPUB] = "iopub", [JWIRE_STDIN] = "stdin",
    [JWIRE_CONTROL] = "control", [JWIRE_HB] = "hb",
};

const char *jwire_channel_name(jwire_channel_t ch) {
    return (unsigned)ch < JWIRE_NCHANNELS ? channel_names[ch] : "";
}

/* Copy a required (or optional, with default "") string field into a fixed buffer. */
static int conn_str(const json_t *root, const char *key, bool required, char *buf, size_t len) {
    const json_t *v = json_object_get(root, key);
    if (!v) {
        if (required)
            return -EINVAL;
        buf[0] = '\0';
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) >= len)
        return -EINVAL;
    memcpy(buf, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

int jwire_conn_parse(const char *json_text, jwire_conn_t *ret) {
    if (!json_text || !ret)
        return -EINVAL;
    json_error_t err;
    _cleanup_json_ json_t *root = json_loads(json_text, 0, &err);
    if (!json_is_object(root))
        return -EINVAL;
    jwire_conn_t c = {0};
    int r;
    if ((r = conn_str(root, "transport", true, c.transport, sizeof c.transport)) < 0 ||
        (r = conn_str(root, "ip", true, c.ip, sizeof c.ip)) < 0 ||
        (r = conn_str(root, "signature_scheme", true, c.signature_scheme,
                      sizeof c.signature_scheme)) < 0 ||
        (r = conn_str(root, "key", true, c.key, sizeof c.key)) < 0 ||
        (r = conn_str(root, "kernel_name", false, c.kernel_name, sizeof c.kernel_name)) < 0)
        goto out;
    r = -EINVAL;
    if (!streq(c.transport, "tcp") && !streq(c.transport, "ipc"))
        goto out;
    if (!c.ip[0])
        goto out;
    for (int ch = 0; ch < JWIRE_NCHANNELS; ch++) {
        char key[32];
        snprintf(key, sizeof key, "%s_port", channel_names[ch]);
        const json_t *v = json_object_get(root, key);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 65535)
            goto out;
        c.ports[ch] = (int)json_integer_value(v);
    }
    *ret = c;
    r = 0;
out:
    sodium_memzero(&c, sizeof c);
    return r;
}

int jwire_conn_read(const char *path, jwire_conn_t *ret) {
    if (!path || !ret)
        return -EINVAL;
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = read_file_bounded(path, JWIRE_CONN_MAX_BYTES, &text, &len);
    if (r < 0)
        return r;
    r = jwire_conn_parse(text, ret);
    sodium_memzero(text, len);
    return r;
}

int jwire_conn_write(const char *path, const jwire_conn_t *conn) {
    if (!path || !conn)
        return -EINVAL;
    /* Same key order as jupyter_client writes, so files diff cleanly against its output. */
    _cleanup_json_ json_t *root = json_pack(
        "{s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:s, s:s, s:s}", "shell_port",
        conn->ports[JWIRE_SHELL], "iopub_port", conn->ports[JWIRE_IOPUB], "stdin_port",
        conn->ports[JWIRE_STDIN], "control_port", conn->ports[JWIRE_CONTROL], "hb_port",
        conn->ports[JWIRE_HB], "ip", conn->ip, "key", conn->key, "transport", conn->transport,
        "signature_scheme", conn->signature_scheme, "kernel_name", conn->kernel_name);
    if (!root)
        return -EINVAL; /* a field that is not valid UTF-8 */
    _cleanup_free_ char *text = json_dumps(root, JSON_INDENT(2));
    if (!text)
        return -ENOMEM;
    size_t len = strlen(text);
    int r = write_file_atomic(path, text, len, 0600);
    sodium_memzero(text, len);
    return r;
}

int jwire_conn_endpoint(const jwire_conn_t *conn, jwire_channel_t ch, char *buf, size_t len) {
    if (!conn || !buf || (unsigned)ch >= JWIRE_NCHANNELS)
        return -EINVAL;
    int r;
    if (streq(conn->transport, "tcp"))
        r = xsnprintf(buf, len, "tcp://%s:%d", conn->ip, conn->ports[ch]);
    else if (streq(conn->transport, "ipc"))
        r = xsnprintf(buf, len, "ipc://%s-%d", conn->ip, conn->ports[ch]);
    else
        return -EINVAL;
    return r < 0 ? r : 0;
}
