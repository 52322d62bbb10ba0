/* WebSocket (RFC 6455) server connections on the event loop, for the Jupyter kernel channels.
 * ws_accept() checks the upgrade request, answers 101, takes the socket from the HTTP server
 * and runs wslay on it: messages arrive whole (fragments reassembled, bounded), pings are
 * answered, the peer is pinged and dropped when silent, and outgoing data is bounded so a
 * client that does not read cannot grow the gateway's memory.
 *
 * Lifetime: a ws_conn_t lives until on_close, which is called exactly once when the connection
 * ends for any reason other than ws_destroy(); the object is freed when on_close returns. The
 * callbacks run on the loop thread; ws_send/ws_close never call them re-entrantly. */
#pragma once

#include "http.h"
#include "loop.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ws_conn ws_conn_t;

enum {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL_ERROR = 1002,
    WS_CLOSE_NO_STATUS = 1005, /* the peer's close frame carried no code */
    WS_CLOSE_ABNORMAL = 1006,  /* no close frame: the connection dropped or timed out */
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL_ERROR = 1011,
};

/* Length of a Sec-WebSocket-Accept value plus its NUL. */
#define WS_ACCEPT_KEY_LEN 29

typedef struct {
    size_t max_message_bytes;  /* default 16 MiB; a bigger incoming message -> close 1009 */
    size_t max_outbuf_bytes;   /* default 16 MiB; ws_send() -> -ENOBUFS beyond it */
    uint64_t ping_interval_ms; /* default 30000; nothing received for two intervals -> 1006 */
} ws_config_t;

typedef struct {
    /* A complete message; data is valid only during the call. */
    void (*on_message)(ws_conn_t *ws, bool binary, const void *data, size_t len, void *arg);
    /* The close code the peer sent (WS_CLOSE_NO_STATUS without one), else the one we sent,
     * else WS_CLOSE_ABNORMAL. ws is freed when this returns. */
    void (*on_close)(ws_conn_t *ws, uint16_t code, void *arg);
} ws_handlers_t;

/* Upgrades the request on conn (call it from on_request or later, before any response).
 * subprotocol: NULL, or the one the server picked from the client's offer (see
 * ws_subprotocol_select); it is echoed in Sec-WebSocket-Protocol. cfg may be NULL (zero
 * fields take the defaults); cfg and h are copied. Whatever the result, conn and req must not
 * be used after this returns. On success conn was detached and freed without on_close (drop
 * any per-conn state first) and the 101 is on its way. On failure NULL is returned with errno
 * set (EINVAL for a bad handshake) and the request has been answered: 400 JSON for a bad
 * handshake, 426 with Sec-WebSocket-Version: 13 for another protocol version, 500 otherwise;
 * the connection closes after that answer (its on_close still follows if a user pointer is
 * set). */
ws_conn_t *ws_accept(http_conn_t *conn, const http_request_t *req, const char *subprotocol,
                     const ws_config_t *cfg, const ws_handlers_t *h, void *arg);

/* Runs the WebSocket protocol on an fd whose handshake is already done (tests, fuzzing).
 * extra: bytes already read from it, processed on the next loop iteration. Takes fd (closed
 * on failure). NULL on failure (errno). */
ws_conn_t *ws_open(loop_t *loop, int fd, const void *extra, size_t extra_len,
                   const ws_config_t *cfg, const ws_handlers_t *h, void *arg);

/* The first entry of `supported` (NULL-terminated, server preference order) that the client
 * offered in Sec-WebSocket-Protocol (comma lists, repeated headers); NULL if none. Returns the
 * pointer from `supported`. */
const char *ws_subprotocol_select(const http_request_t *req, const char *const *supported);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + RFC 6455 GUID)). -EINVAL
 * on NULL arguments. */
int ws_accept_key(const char *key, char ret[WS_ACCEPT_KEY_LEN]);

/* Queues one message (copied). Text must be UTF-8 (browsers drop the connection otherwise).
 * -ENOBUFS (nothing queued) when the queued outbound bytes plus len would exceed
 * max_outbuf_bytes (a message on an empty queue is always taken): the caller decides whether
 * to drop it or close the slow client. -EPIPE once closing or broken. */
int ws_send(ws_conn_t *ws, bool binary, const void *data, size_t len);
/* Starts the closing handshake (reason is cut at 123 bytes). Incoming messages are no longer
 * delivered; on_close follows when the peer answers, or after a 5 s timeout. 0 if already
 * closing. */
int ws_close(ws_conn_t *ws, uint16_t code, const char *reason);
/* Drops the connection now, without a close frame and without on_close (shutdown paths).
 * NULL-safe; nulls *ws_p. Inside on_close it does nothing (the object is freed after it). */
void ws_destroy(ws_conn_t **ws_p);

void ws_set_user(ws_conn_t *ws, void *user);
void *ws_user(const ws_conn_t *ws);
/* Outbound bytes not yet handed to the kernel. */
size_t ws_outbuf_len(const ws_conn_t *ws);
