/* Jupyter WebSocket message formats (see wsframe.h). Every offset is bounds-checked before
 * use; offsets must be non-decreasing and inside the frame. */
#include "wsframe.h"
#include "util.h"

#include <endian.h>

#define MAX_PARTS 1024

static int channel_from(const char *name, jwire_channel_t *ret) {
    if (streq(name, "shell"))
        *ret = JWIRE_SHELL;
    else if (streq(name, "control"))
        *ret = JWIRE_CONTROL;
    else if (streq(name, "stdin"))
        *ret = JWIRE_STDIN;
    else
        return -EBADMSG;
    return 0;
}

static json_t *load_obj(const void *data, size_t len) {
    json_t *j = json_loadb(data, len, 0, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static int finish(jwire_channel_t ch, json_t *header, json_t *parent, json_t *metadata,
                  json_t *content, zmsg_t **buffers, jwire_channel_t *ret_ch,
                  jwire_msg_t **ret_msg) {
    int r = -EBADMSG;
    const json_t *id = json_object_get(header, "msg_id");
    if (!header || !json_is_string(id) || json_string_length(id) > WSFRAME_MAX_MSG_ID ||
        !json_is_string(json_object_get(header, "msg_type")))
        goto out;
    jwire_msg_t *m = calloc(1, sizeof *m);
    if (!m) {
        r = -ENOMEM;
        goto out;
    }
    m->ids = zmsg_new();
    m->header = json_incref(header);
    m->parent_header = parent ? json_incref(parent) : json_object();
    m->metadata = metadata ? json_incref(metadata) : json_object();
    m->content = content ? json_incref(content) : json_object();
    m->buffers = *buffers ? *buffers : zmsg_new();
    *buffers = NULL;
    *ret_ch = ch;
    *ret_msg = m;
    r = 0;
out:
    json_decref(header);
    json_decref(parent);
    json_decref(metadata);
    json_decref(content);
    zmsg_destroy(buffers);
    return r;
}

static int decode_json_msg(json_t *obj, zmsg_t **buffers, jwire_channel_t *ret_ch,
                           jwire_msg_t **ret_msg) {
    jwire_channel_t ch;
    if (!json_is_object(obj) ||
        channel_from(json_string_value(json_object_get(obj, "channel")), &ch) < 0) {
        zmsg_destroy(buffers);
        return -EBADMSG;
    }
    json_t *h = json_object_get(obj, "header");
    json_t *p = json_object_get(obj, "parent_header");
    json_t *md = json_object_get(obj, "metadata");
    json_t *c = json_object_get(obj, "content");
    if (!json_is_object(h) || (p && !json_is_object(p)) || (md && !json_is_object(md)) ||
        (c && !json_is_object(c))) {
        zmsg_destroy(buffers);
        return -EBADMSG;
    }
    return finish(ch, json_incref(h), p ? json_incref(p) : NULL, md ? json_incref(md) : NULL,
                  c ? json_incref(c) : NULL, buffers, ret_ch, ret_msg);
}

static int decode_legacy_binary(const uint8_t *d, size_t len, jwire_channel_t *ret_ch,
                                jwire_msg_t **ret_msg) {
    if (len < 4)
        return -EBADMSG;
    uint32_t n;
    memcpy(&n, d, 4);
    n = be32toh(n);
    if (n == 0 || n > MAX_PARTS || 4 + (size_t)n * 4 > len)
        return -EBADMSG;
    size_t offs[MAX_PARTS + 1];
    for (uint32_t i = 0; i < n; i++) {
        uint32_t o;
        memcpy(&o, d + 4 + (size_t)i * 4, 4);
        offs[i] = be32toh(o);
        if (offs[i] > len || (i > 0 && offs[i] < offs[i - 1]) || offs[i] < 4 + (size_t)n * 4)
            return -EBADMSG;
    }
    offs[n] = len;
    zmsg_t *bufs = zmsg_new();
    for (uint32_t i = 1; i < n; i++)
        zmsg_addmem(bufs, d + offs[i], offs[i + 1] - offs[i]);
    json_t *obj = json_loadb((const char *)d + offs[0], offs[1] - offs[0], 0, NULL);
    int r = decode_json_msg(obj, &bufs, ret_ch, ret_msg);
    json_decref(obj);
    return r;
}

static int decode_v1(const uint8_t *d, size_t len, jwire_channel_t *ret_ch, jwire_msg_t **ret_msg) {
    /* n offsets: the start of every part, then the end of the last one. */
    if (len < 8)
        return -EBADMSG;
    uint64_t n;
    memcpy(&n, d, 8);
    n = le64toh(n);
    if (n < 6 || n > MAX_PARTS || 8 + n * 8 > len)
        return -EBADMSG;
    size_t offs[MAX_PARTS];
    for (uint64_t i = 0; i < n; i++) {
        uint64_t o;
        memcpy(&o, d + 8 + i * 8, 8);
        offs[i] = (size_t)le64toh(o);
        if (offs[i] > len || (i > 0 && offs[i] < offs[i - 1]) || offs[i] < 8 + n * 8)
            return -EBADMSG;
    }
    char chname[16];
    size_t chlen = offs[1] - offs[0];
    if (chlen == 0 || chlen >= sizeof chname)
        return -EBADMSG;
    memcpy(chname, d + offs[0], chlen);
    chname[chlen] = '\0';
    jwire_channel_t ch;
    if (channel_from(chname, &ch) < 0)
        return -EBADMSG;
    json_t *parts[4];
    for (int i = 0; i < 4; i++)
        parts[i] = load_obj(d + offs[i + 1], offs[i + 2] - offs[i + 1]);
    zmsg_t *bufs = zmsg_new();
    for (uint64_t i = 5; i + 1 < n; i++)
        zmsg_addmem(bufs, d + offs[i], offs[i + 1] - offs[i]);
    if (!parts[0] || !parts[1] || !parts[2] || !parts[3]) {
        for (int i = 0; i < 4; i++)
            json_decref(parts[i]);
        zmsg_destroy(&bufs);
        return -EBADMSG;
    }
    return finish(ch, parts[0], parts[1], parts[2], parts[3], &bufs, ret_ch, ret_msg);
}

int wsframe_decode(wsframe_proto_t proto, bool binary, const void *data, size_t len,
                   jwire_channel_t *ret_ch, jwire_msg_t **ret_msg) {
    if (!data && len)
        return -EINVAL;
    if (proto == WSFRAME_V1 && binary)
        return decode_v1(data, len, ret_ch, ret_msg);
    /* jupyter_server 1.23's gateway proxy forwards a browser's binary message upstream with
     * write_message(bytes), which tornado sends as a *text* frame: a legacy text frame that
     * starts with a NUL byte (never JSON; the be32 part count) is that binary form. */
    if (binary || (len > 0 && ((const uint8_t *)data)[0] == 0))
        return decode_legacy_binary(data, len, ret_ch, ret_msg);
    json_t *obj = json_loadb(data, len, 0, NULL);
    zmsg_t *none = NULL;
    int r = decode_json_msg(obj, &none, ret_ch, ret_msg);
    json_decref(obj);
    return r;
}

/* ---- encode ------------------------------------------------------------------------------ */

/* Legacy binary (be32): n = nparts, offsets of each part's start. v1 (le64): n = nparts + 1,
 * offsets of each part's start and the end of the last. */
static int assemble(bool v1, char **parts, size_t *lens, size_t nparts, char **ret_data,
                    size_t *ret_len) {
    size_t each = v1 ? 8 : 4;
    size_t noffs = v1 ? nparts + 1 : nparts;
    size_t total = (1 + noffs) * each;
    for (size_t i = 0; i < nparts; i++)
        total += lens[i];
    if (!v1 && total > UINT32_MAX)
        return -EMSGSIZE;
    char *out = malloc(total);
    if (!out)
        return -ENOMEM;
    size_t off = (1 + noffs) * each;
    if (v1) {
        uint64_t n = htole64(noffs);
        memcpy(out, &n, 8);
    } else {
        uint32_t n = htobe32((uint32_t)noffs);
        memcpy(out, &n, 4);
    }
    for (size_t i = 0; i <= nparts; i++) {
        if (i < noffs) {
            if (v1) {
                uint64_t o = htole64(off);
                memcpy(out + 8 + i * 8, &o, 8);
            } else {
                uint32_t o = htobe32((uint32_t)off);
                memcpy(out + 4 + i * 4, &o, 4);
            }
        }
        if (i < nparts) {
            memcpy(out + off, parts[i], lens[i]);
            off += lens[i];
        }
    }
    *ret_data = out;
    *ret_len = total;
    return 0;
}

int wsframe_encode(wsframe_proto_t proto, jwire_channel_t ch, const jwire_msg_t *msg,
                   bool *ret_binary, char **ret_data, size_t *ret_len) {
    size_t nbufs = msg->buffers ? zmsg_size(msg->buffers) : 0;
    const char *chname = jwire_channel_name(ch);
    if (proto == WSFRAME_LEGACY) {
        json_t *obj = json_pack("{s:s,s:O,s:O,s:O,s:O,s:[]}", "channel", chname, "header",
                                msg->header, "parent_header", msg->parent_header, "metadata",
                                msg->metadata, "content", msg->content, "buffers");
        char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
        json_decref(obj);
        if (!text)
            return -ENOMEM;
        if (nbufs == 0) {
            *ret_binary = false;
            *ret_data = text;
            *ret_len = strlen(text);
            return 0;
        }
        char **parts = calloc(1 + nbufs, sizeof *parts);
        size_t *lens = calloc(1 + nbufs, sizeof *lens);
        int r = -ENOMEM;
        if (parts && lens) {
            parts[0] = text;
            lens[0] = strlen(text);
            zframe_t *f = zmsg_first(msg->buffers);
            for (size_t i = 1; f; i++, f = zmsg_next(msg->buffers)) {
                parts[i] = (char *)zframe_data(f);
                lens[i] = zframe_size(f);
            }
            r = assemble(false, parts, lens, 1 + nbufs, ret_data, ret_len);
            *ret_binary = true;
        }
        free(parts);
        free(lens);
        free(text);
        return r;
    }
    char *js[4] = {json_dumps(msg->header, JSON_COMPACT),
                   json_dumps(msg->parent_header, JSON_COMPACT),
                   json_dumps(msg->metadata, JSON_COMPACT), json_dumps(msg->content, JSON_COMPACT)};
    size_t n = 5 + nbufs;
    char **parts = calloc(n, sizeof *parts);
    size_t *lens = calloc(n, sizeof *lens);
    int r = -ENOMEM;
    if (parts && lens && js[0] && js[1] && js[2] && js[3]) {
        parts[0] = (char *)chname;
        lens[0] = strlen(chname);
        for (int i = 0; i < 4; i++) {
            parts[i + 1] = js[i];
            lens[i + 1] = strlen(js[i]);
        }
        zframe_t *f = msg->buffers ? zmsg_first(msg->buffers) : NULL;
        for (size_t i = 5; f; i++, f = zmsg_next(msg->buffers)) {
            parts[i] = (char *)zframe_data(f);
            lens[i] = zframe_size(f);
        }
        r = assemble(true, parts, lens, n, ret_data, ret_len);
        *ret_binary = true;
    }
    for (int i = 0; i < 4; i++)
        free(js[i]);
    free(parts);
    free(lens);
    return r;
}
