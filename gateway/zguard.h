/* A streaming check of the ZMTP 3 byte stream a kernel sends the gateway (the pure core of
 * relay.c; no I/O).
 *
 * Why: libzmq bounds each frame (ZMQ_MAXMSGSIZE) and the number of complete messages queued
 * (ZMQ_RCVHWM), but not a multipart message as a whole: it keeps every frame of a message in
 * memory until the last one arrives, and a peer that never sends the last one makes the
 * receiving process grow without bound (measured: 6000 frames of 64 KiB from a raw socket
 * grew a SUB socket's process by 376 MiB). Every kernel runs user code that can write raw
 * bytes on its own connections, so without this check one sandbox can exhaust the gateway's
 * memory. The guard reads the frame headers as the bytes go by, never the bodies, and fails
 * the stream as soon as a message outgrows the limits, before libzmq has seen those bytes. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#define ZGUARD_GREETING 64 /* ZMTP 3.x: signature 10, version 2, mechanism 20, server 1, 31 */

typedef struct {
    uint64_t max_bytes;  /* bytes of one message, all its frames together */
    uint32_t max_frames; /* frames of one message */
    /* State: where in the stream we are. */
    enum { ZG_GREETING, ZG_FLAGS, ZG_SIZE, ZG_BODY, ZG_FAILED } state;
    uint8_t greeting[ZGUARD_GREETING];
    size_t got;         /* bytes of the greeting, or of the size field, read so far */
    uint8_t flags;      /* of the frame being read */
    uint8_t size_len;   /* 1 or 8 */
    uint64_t size;      /* of the frame being read (while its size field is read: so far) */
    uint64_t left;      /* body bytes of the current frame still to come */
    uint64_t msg_bytes; /* of the message being read, this frame included */
    uint32_t msg_frames;
    int err;         /* once failed: the -errno every call returns */
    const char *why; /* once failed: what was wrong, for the log and the client */
} zguard_t;

void zguard_init(zguard_t *g, uint64_t max_bytes, uint32_t max_frames);
/* Checks the next n bytes of the stream. 0 while it is well formed and within the limits;
 * -EMSGSIZE once a message is over a limit, -EPROTO once the stream is not ZMTP 3 with the
 * NULL mechanism; after a failure every call fails the same way (g->why says why). */
int zguard_feed(zguard_t *g, const uint8_t *p, size_t n);
