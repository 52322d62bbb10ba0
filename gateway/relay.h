/* A guarded relay between one of the gateway's ZeroMQ sockets and a kernel's channel.
 *
 * The gateway's socket connects to the relay (a one-time listener on an abstract unix
 * address; only a connection from this process is taken) and the relay to the kernel. Bytes
 * are copied both ways on the gateway's loop; those from the kernel pass zguard first, and the
 * moment a message is over the limits (or the stream is not ZMTP 3) both connections are
 * closed, before libzmq has buffered it. To libzmq that is the kernel hanging up, which the
 * worker already handles (its disconnect monitor); gw_relay_why() says what happened. When
 * the kernel itself hangs up, its last bytes are delivered and the gateway's side stays open
 * a moment longer (relay.c: libzmq drops what it has not handed over when that closes). */
#pragma once
#include "loop.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gw_relay gw_relay_t;

/* Connects to the kernel's endpoint ("ipc://PATH" or "tcp://IPV4:PORT") and listens for the
 * gateway's socket; *zmq_endpoint (an "ipc://@..." address) is what that socket connects to.
 * Messages from the kernel of over max_bytes or max_frames end the relay. 0 or -errno. */
int gw_relay_open(loop_t *loop, const char *kernel_endpoint, uint64_t max_bytes,
                  uint32_t max_frames, char *zmq_endpoint, size_t len, gw_relay_t **ret);
/* Why the relay ended itself (a limit, a protocol error), or NULL while it runs or when one
 * side simply hung up. */
const char *gw_relay_why(const gw_relay_t *r);
/* Closes both connections. NULL-safe; nulls the pointer. */
void gw_relay_close(gw_relay_t **r_p);
