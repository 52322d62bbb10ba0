/* ZMTP 3 stream check (see zguard.h). The frame format (RFC 23/ZMTP and 37/ZMTP): a greeting
 * of 64 bytes, then frames of a flags byte (bit 0 MORE, bit 1 LONG, bit 2 COMMAND, the rest
 * zero), a size of 1 byte, or 8 bytes in network order when LONG, and the body. */
#include "zguard.h"

#include <errno.h>
#include <string.h>

#define F_MORE     0x01u
#define F_LONG     0x02u
#define F_COMMAND  0x04u
#define F_RESERVED 0xf8u

void zguard_init(zguard_t *g, uint64_t max_bytes, uint32_t max_frames) {
    memset(g, 0, sizeof *g);
    g->max_bytes = max_bytes;
    g->max_frames = max_frames;
    g->state = ZG_GREETING;
}

static int fail(zguard_t *g, int err, const char *why) {
    g->state = ZG_FAILED;
    g->err = err;
    g->why = why;
    return err;
}

/* Our kernels are libzmq 4 (ours and ipykernel's): ZMTP 3.0 or 3.1, mechanism NULL (the
 * messages are signed instead). libzmq would downgrade to ZMTP 1 or 2 for an old peer,
 * whose framing differs: a kernel that asks for that is not one of ours. */
static int check_greeting(zguard_t *g) {
    static const char null_mech[20] = "NULL";
    const uint8_t *b = g->greeting;
    if (b[0] != 0xff || b[9] != 0x7f)
        return fail(g, -EPROTO, "not a ZMTP 3 greeting");
    if (b[10] < 3)
        return fail(g, -EPROTO, "a ZMTP version before 3");
    if (memcmp(b + 12, null_mech, sizeof null_mech) != 0)
        return fail(g, -EPROTO, "a security mechanism other than NULL");
    return 0;
}

/* A frame's header is complete: count it against its message. */
static int frame_start(zguard_t *g) {
    if (g->flags & F_COMMAND) {
        /* Commands (READY, PING, SUBSCRIBE, ...) are single frames, handled by libzmq as they
         * come, never held: each is only bounded. libzmq may send its heartbeat PING between
         * the frames of a message, so they do not touch the message's count. */
        if (g->flags & F_MORE)
            return fail(g, -EPROTO, "a command frame with MORE set");
        if (g->size > g->max_bytes)
            return fail(g, -EMSGSIZE, "a command over the message size limit");
    } else {
        if (++g->msg_frames > g->max_frames)
            return fail(g, -EMSGSIZE, "a message with too many frames");
        /* The frame's own size first: a 64-bit size must not wrap the sum. */
        if (g->size > g->max_bytes || g->size > g->max_bytes - g->msg_bytes)
            return fail(g, -EMSGSIZE, "a message over the size limit");
        g->msg_bytes += g->size;
    }
    g->left = g->size;
    return 0;
}

/* The last frame of a message ends it; a command is not part of any. */
static void frame_end(zguard_t *g) {
    if (!(g->flags & (F_MORE | F_COMMAND))) {
        g->msg_frames = 0;
        g->msg_bytes = 0;
    }
    g->state = ZG_FLAGS;
}

int zguard_feed(zguard_t *g, const uint8_t *p, size_t n) {
    if (g->state == ZG_FAILED)
        return g->err;
    size_t i = 0;
    while (i < n) {
        switch (g->state) {
        case ZG_GREETING: {
            size_t take = ZGUARD_GREETING - g->got;
            if (take > n - i)
                take = n - i;
            memcpy(g->greeting + g->got, p + i, take);
            g->got += take;
            i += take;
            /* The signature alone already tells a stranger; check it as soon as it is in. */
            if (g->got >= 10 && (g->greeting[0] != 0xff || g->greeting[9] != 0x7f))
                return fail(g, -EPROTO, "not a ZMTP 3 greeting");
            if (g->got == ZGUARD_GREETING) {
                int r = check_greeting(g);
                if (r < 0)
                    return r;
                g->state = ZG_FLAGS;
            }
            break;
        }
        case ZG_FLAGS:
            g->flags = p[i++];
            if (g->flags & F_RESERVED)
                return fail(g, -EPROTO, "reserved frame flags set");
            g->size_len = (g->flags & F_LONG) ? 8 : 1;
            g->size = 0;
            g->got = 0;
            g->state = ZG_SIZE;
            break;
        case ZG_SIZE:
            g->size = (g->size << 8) | p[i++];
            if (++g->got == g->size_len) {
                int r = frame_start(g);
                if (r < 0)
                    return r;
                if (g->left == 0)
                    frame_end(g);
                else
                    g->state = ZG_BODY;
            }
            break;
        case ZG_BODY: {
            size_t take = n - i;
            if ((uint64_t)take > g->left)
                take = (size_t)g->left;
            g->left -= take;
            i += take;
            if (g->left == 0)
                frame_end(g);
            break;
        }
        case ZG_FAILED:
            return g->err;
        }
    }
    return 0;
}
