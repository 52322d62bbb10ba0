/* HTTP/1.1 server on the event loop: connection handling, request parsing (nodejs
 * http-parser), bounded everything, keep-alive, fixed and chunked (streamed) responses, and
 * the hand-off of a connection to the WebSocket layer (ws.h).
 *
 * One request per connection is in flight at a time: while the handler has not finished its
 * response, further pipelined bytes stay buffered and are parsed afterwards. The handler may
 * answer synchronously inside on_request or later from any loop callback.
 *
 * Limits are enforced here, before the handler sees anything: header bytes and count (431),
 * body size (413, sent after draining up to drain_bytes so that a client still sending reads
 * the answer rather than a reset), malformed requests (400), idle and slow clients (closed),
 * connection count (new ones closed), outbound buffer per connection. Errors the server
 * generates itself are JSON: {"error": "...", "detail": "..."}. */
#pragma once

#include "loop.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct http_server http_server_t;
typedef struct http_conn http_conn_t;

typedef struct {
    const char *name;  /* lowercased */
    const char *value; /* as received (leading/trailing blanks trimmed) */
} http_header_t;

typedef struct {
    const char *method;     /* "GET", "POST", ... */
    const char *path;       /* percent-decoded path without the query ("/api/kernels/x") */
    const char *query;      /* raw query string without '?', "" when none */
    const char *raw_target; /* request target as received */
    const http_header_t *headers;
    size_t nheaders;
    const char *body; /* NUL-terminated for convenience; body_len excludes the NUL */
    size_t body_len;
    bool keep_alive;
    bool upgrade; /* "Connection: upgrade" with an Upgrade header */
} http_request_t;

typedef struct {
    /* A complete request. The request (and every string in it) stays valid until the
     * response is complete or the connection closes, whichever comes first. */
    void (*on_request)(http_conn_t *conn, const http_request_t *req, void *server_arg);
    /* The connection is going away (peer closed, error, timeout, server shutdown). Called once
     * per connection that has a user pointer set; after it returns, conn is freed, so no
     * response can follow it. A peer that closes (or half-closes) while its request is being
     * handled is reported here at once, without waiting for the response. */
    void (*on_close)(http_conn_t *conn, void *conn_user, void *server_arg);
} http_handlers_t;

typedef struct {
    size_t max_header_bytes; /* default 16 KiB -> 431 */
    size_t max_headers;      /* default 64 -> 431 */
    size_t max_body_bytes;   /* default 2 MiB -> 413 */
    size_t drain_bytes;      /* read and discard up to this much of an oversized body: 8 MiB */
    size_t max_connections;  /* default 1024 */
    /* From one client address (an IPv6 /64), so one client cannot take every connection
     * (holding them open with slow requests): default no limit but max_connections. */
    size_t max_connections_per_peer;
    size_t max_outbuf_bytes;  /* per connection, for streamed responses; default 8 MiB */
    uint64_t idle_timeout_ms; /* keep-alive idle / slow request; default 60000 */
} http_server_config_t;

/* NULL on failure (errno). The config is copied; zero fields take the defaults. */
http_server_t *http_server_new(loop_t *loop, const http_server_config_t *cfg,
                               const http_handlers_t *handlers, void *server_arg);
/* Closes every connection (on_close is called for each) and the listener. NULL-safe. */
void http_server_destroy(http_server_t **self_p);
/* Bind and listen (SO_REUSEADDR); host is an IPv4/IPv6 literal or "localhost". -errno. */
int http_server_listen(http_server_t *self, const char *host, uint16_t port);
/* Serve an already connected stream socket as if accepted (tests, fuzzing, socket
 * activation). Takes ownership of fd (closed on failure); -EBUSY at max_connections. */
int http_server_adopt(http_server_t *self, int fd);
/* The bound port (useful with port 0 in tests). */
uint16_t http_server_port(const http_server_t *self);
size_t http_server_connection_count(const http_server_t *self);

/* ---- per request ------------------------------------------------------------------------ */

const char *http_request_header(const http_request_t *req, const char *lname);
/* Percent-decoded value of query parameter `name` ("" if present without value); '+' decodes
 * to a space. Returns the decoded length (>= 0); -ENOENT if absent, -ENAMETOOLONG if it does
 * not fit, -EINVAL for a bad escape or %00 in the value. The first occurrence wins. */
int http_query_param(const char *query, const char *name, char *buf, size_t len);

void http_conn_set_user(http_conn_t *conn, void *user);
void *http_conn_user(const http_conn_t *conn);
/* Peer address as text, for logs. */
const char *http_conn_peer(const http_conn_t *conn);
/* The loop the connection runs on (the WebSocket layer needs it). */
loop_t *http_conn_loop(const http_conn_t *conn);

/* A complete response. extra_headers: NULL or "Name: value\r\n" lines. Adds Content-Length,
 * Content-Type, Date-free minimal headers, Connection per keep-alive. -EINVAL if a response
 * was already started. */
int http_conn_respond(http_conn_t *conn, int status, const char *content_type,
                      const char *extra_headers, const char *body, size_t len);
/* {"error": error, "detail": detail} with the given status. */
int http_conn_respond_error(http_conn_t *conn, int status, const char *error, const char *detail);

/* Chunked streaming response. write: -ENOBUFS when the outbound buffer is over its limit (the
 * caller decides whether to drop or to stop producing); end: the terminating chunk.
 * -ENOBUFS means nothing was queued: pending + len would exceed max_outbuf_bytes (a write to
 * an empty buffer is always taken). An HTTP/1.0 client gets the body unchunked, then a close.
 * These calls, like http_conn_respond, never call on_request/on_close themselves; -EPIPE
 * once the socket failed (on_close follows from the loop). */
int http_conn_stream_begin(http_conn_t *conn, int status, const char *content_type,
                           const char *extra_headers);
int http_conn_stream_write(http_conn_t *conn, const void *data, size_t len);
int http_conn_stream_end(http_conn_t *conn);
size_t http_conn_outbuf_len(const http_conn_t *conn);

/* Close now (no further callbacks except on_close, which runs before this returns when a
 * user pointer is set: clear it first with http_conn_set_user(conn, NULL) if the caller has
 * already released it). conn is invalid afterwards. */
void http_conn_close(http_conn_t *conn);

/* For the WebSocket layer: take the socket away from HTTP after the 101 response is queued.
 * Returns the fd (now owned by the caller, still non-blocking) plus any bytes already read
 * past the request (copied into *ret_extra, malloc'd, may be NULL/0). The conn is freed
 * without on_close. Output still queued is sent first; -EAGAIN (nothing changed) if the
 * socket cannot take it now. ws_accept() writes its 101 itself, after the detach. */
int http_conn_detach(http_conn_t *conn, int *ret_fd, char **ret_extra, size_t *ret_extra_len);

/* Reason phrase for a status code ("Not Found"). */
const char *http_status_text(int status);
