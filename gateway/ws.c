/* WebSocket connections behind ws.h: the RFC 6455 handshake (SHA-1 from nettle, base64 from
 * libsodium) and wslay's event API on a non-blocking socket driven by the loop.
 *
 * Input is read into a 64 KiB buffer that wslay's recv callback drains (wslay itself asks for
 * at most 4 KiB at a time, so reading straight from the socket would cost 16 syscalls per
 * 64 KiB); bytes the HTTP layer had already read past the upgrade request start that buffer.
 * Output goes straight from wslay's queue to the socket, the frame header with MSG_MORE so it
 * leaves with its payload. wslay must not be re-entered from its own callbacks, so ws_send and
 * ws_close only flush when no frame of ours is on the stack; closing waits for the peer's close
 * frame (or EOF) so that the socket is never closed with unread data that would reset the
 * connection before the peer reads our close frame. */
#include "ws.h"
#include "util.h"

#include <nettle/sha1.h>
#include <sodium.h>
#include <strings.h>
#include <sys/socket.h>
#include <wslay/wslay.h>

#define WS_GUID          "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define INBUF_SIZE       (64u * 1024)
#define READ_BATCH       8 /* reads per wake-up, so one busy peer cannot starve the rest */
#define CLOSE_TIMEOUT_MS 5000u

#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif

struct ws_conn {
    loop_t *loop;
    int fd;
    loop_watch_t *io, *timer;
    unsigned events;
    wslay_event_context_ptr ctx;
    ws_config_t cfg;
    ws_handlers_t h;
    void *arg, *user;
    uint8_t *in;
    size_t in_pos, in_len, in_cap;
    char *pre; /* the 101 response, when the socket did not take it at once */
    size_t pre_pos, pre_len;
    uint64_t last_rx_ms, close_deadline_ms;
    unsigned busy;
    bool closed, defer_pending, eof, broken, close_queued, shut_wr;
};

static const ws_config_t defaults = {
    .max_message_bytes = 16u * 1024 * 1024,
    .max_outbuf_bytes = 16u * 1024 * 1024,
    .ping_interval_ms = 30000,
};

/* ---- handshake helpers ------------------------------------------------------------------- */

int ws_accept_key(const char *key, char ret[WS_ACCEPT_KEY_LEN]) {
    if (!key || !ret)
        return -EINVAL;
    struct sha1_ctx s;
    uint8_t digest[SHA1_DIGEST_SIZE];
    sha1_init(&s);
    sha1_update(&s, strlen(key), (const uint8_t *)key);
    sha1_update(&s, sizeof WS_GUID - 1, (const uint8_t *)WS_GUID);
    sha1_digest(&s, sizeof digest, digest);
    sodium_bin2base64(ret, WS_ACCEPT_KEY_LEN, digest, sizeof digest,
                      sodium_base64_VARIANT_ORIGINAL);
    return 0;
}

/* Calls fn on each comma-separated, blank-trimmed item of every header named lname; stops
 * when fn returns true. */
static bool each_token(const http_request_t *req, const char *lname,
                       bool (*fn)(const char *tok, size_t len, const void *ctx), const void *ctx) {
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!streq(req->headers[i].name, lname))
            continue;
        const char *p = req->headers[i].value;
        while (p && *p) {
            const char *end = strchr(p, ',');
            if (!end)
                end = p + strlen(p);
            const char *s = p, *e = end;
            while (s < e && (*s == ' ' || *s == '\t'))
                s++;
            while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            if (e > s && fn(s, (size_t)(e - s), ctx))
                return true;
            p = *end ? end + 1 : end;
        }
    }
    return false;
}

static bool tok_ieq(const char *tok, size_t len, const void *ctx) {
    const char *want = ctx;
    return strlen(want) == len && strncasecmp(tok, want, len) == 0;
}

static bool tok_eq(const char *tok, size_t len, const void *ctx) {
    const char *want = ctx;
    return strlen(want) == len && memcmp(tok, want, len) == 0;
}

const char *ws_subprotocol_select(const http_request_t *req, const char *const *supported) {
    if (!req || !supported)
        return NULL;
    for (size_t i = 0; supported[i]; i++)
        if (each_token(req, "sec-websocket-protocol", tok_eq, supported[i]))
            return supported[i];
    return NULL;
}

/* RFC 7230 token characters: anything else could split the 101 header. */
static bool is_token(const char *s) {
    if (!s || !*s || strlen(s) > 200)
        return false;
    for (; *s; s++)
        if (!strchr("!#$%&'*+-.^_`|~", *s) && !(*s >= '0' && *s <= '9') &&
            !(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z'))
            return false;
    return true;
}

/* NULL if the request is a valid version-13 upgrade, else what is wrong with it. */
static const char *handshake_problem(const http_request_t *req, bool *ret_bad_version) {
    *ret_bad_version = false;
    if (!streq(req->method, "GET"))
        return "websocket upgrade must use GET";
    if (!each_token(req, "upgrade", tok_ieq, "websocket"))
        return "missing Upgrade: websocket";
    if (!each_token(req, "connection", tok_ieq, "upgrade"))
        return "missing Connection: upgrade";
    const char *version = http_request_header(req, "sec-websocket-version");
    if (!version)
        return "missing Sec-WebSocket-Version";
    if (!streq(version, "13")) {
        *ret_bad_version = true;
        return "unsupported Sec-WebSocket-Version (13 only)";
    }
    const char *key = http_request_header(req, "sec-websocket-key");
    unsigned char bin[32];
    size_t blen = 0;
    const char *end = NULL;
    if (!key ||
        sodium_base642bin(bin, sizeof bin, key, strlen(key), NULL, &blen, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        *end != '\0' || blen != 16)
        return "Sec-WebSocket-Key must be 16 bytes in base64";
    return NULL;
}

/* ---- connection machinery ---------------------------------------------------------------- */

static void ws_free(ws_conn_t *ws) {
    if (!ws)
        return;
    if (ws->ctx)
        wslay_event_context_free(ws->ctx);
    free(ws->in);
    free(ws->pre);
    free(ws);
}

static void ws_release(ws_conn_t *ws) {
    if (ws->closed && ws->busy == 0 && !ws->defer_pending)
        ws_free(ws);
}

static uint16_t ws_code(ws_conn_t *ws) {
    if (wslay_event_get_close_received(ws->ctx))
        return wslay_event_get_status_code_received(ws->ctx);
    if (wslay_event_get_close_sent(ws->ctx))
        return wslay_event_get_status_code_sent(ws->ctx);
    return WS_CLOSE_ABNORMAL;
}

static void ws_finish(ws_conn_t *ws, uint16_t code, bool notify) {
    if (ws->closed)
        return;
    ws->closed = true;
    loop_watch_del(ws->loop, &ws->io);
    loop_watch_del(ws->loop, &ws->timer);
    if (ws->fd >= 0)
        close(ws->fd);
    ws->fd = -1;
    /* Stops wslay if we are inside wslay_event_recv (user closed from on_message). */
    wslay_event_shutdown_read(ws->ctx);
    wslay_event_shutdown_write(ws->ctx);
    if (notify && ws->h.on_close)
        ws->h.on_close(ws, code, ws->arg);
}

static ssize_t cb_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user_data) {
    ws_conn_t *ws = user_data;
    size_t avail = ws->in_len - ws->in_pos;
    if (avail == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = MIN(avail, len);
    memcpy(buf, ws->in + ws->in_pos, n);
    ws->in_pos += n;
    return (ssize_t)n;
}

/* Sends the rest of the 101 response; true once it is all out. */
static bool ws_flush_pre(ws_conn_t *ws) {
    while (ws->pre_pos < ws->pre_len && !ws->broken) {
        ssize_t n = send(ws->fd, ws->pre + ws->pre_pos, ws->pre_len - ws->pre_pos, MSG_NOSIGNAL);
        if (n > 0) {
            ws->pre_pos += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return false;
        } else {
            ws->broken = true;
        }
    }
    if (ws->pre && ws->pre_pos >= ws->pre_len) {
        free(ws->pre);
        ws->pre = NULL;
        ws->pre_pos = ws->pre_len = 0;
    }
    return !ws->pre && !ws->broken;
}

static ssize_t cb_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user_data) {
    ws_conn_t *ws = user_data;
    if (!ws_flush_pre(ws)) {
        wslay_event_set_error(ctx, ws->broken ? WSLAY_ERR_CALLBACK_FAILURE : WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    int f = MSG_NOSIGNAL | ((flags & WSLAY_MSG_MORE) ? MSG_MORE : 0);
    for (;;) {
        ssize_t n = send(ws->fd, data, len, f);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        } else {
            ws->broken = true;
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        }
        return -1;
    }
}

static void cb_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user_data) {
    ws_conn_t *ws = user_data;
    if (ws->closed || ws->close_queued)
        return;
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
        return; /* ping/pong/close are handled by wslay */
    if (ws->h.on_message)
        ws->h.on_message(ws, arg->opcode == WSLAY_BINARY_FRAME,
                         arg->msg ? arg->msg : (const void *)"", arg->msg_length, ws->arg);
}

static void ws_update_events(ws_conn_t *ws) {
    if (ws->closed)
        return;
    unsigned want = ws->eof ? 0 : LOOP_READ;
    if (ws->pre || wslay_event_want_write(ws->ctx))
        want |= LOOP_WRITE;
    if (want != ws->events && loop_io_mod(ws->loop, ws->io, want) == 0)
        ws->events = want;
}

static void ws_flush(ws_conn_t *ws) {
    if (ws->closed || !ws_flush_pre(ws))
        return;
    if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) != 0)
        ws->broken = true;
}

static void ws_arm_close_timer(ws_conn_t *ws) {
    if (ws->close_deadline_ms || ws->closed)
        return;
    ws->close_deadline_ms = now_mono_ms() + CLOSE_TIMEOUT_MS;
    (void)loop_timer_rearm(ws->loop, ws->timer, CLOSE_TIMEOUT_MS, 0);
}

/* Ends the connection when the protocol says it is over. Entry points only (calls on_close). */
static void ws_check(ws_conn_t *ws) {
    if (ws->closed)
        return;
    bool crecv = wslay_event_get_close_received(ws->ctx);
    bool csent = wslay_event_get_close_sent(ws->ctx);
    if (ws->broken) {
        ws_finish(ws, crecv ? ws_code(ws) : WS_CLOSE_ABNORMAL, true);
        return;
    }
    /* Both close frames exchanged: the peer sends nothing more, so closing cannot reset. */
    if ((crecv && csent) || ws->eof) {
        ws_finish(ws, ws_code(ws), true);
        return;
    }
    if (csent && !ws->shut_wr) {
        /* Nothing follows our close frame; the FIN lets a peer that waits for us to close the
         * TCP connection (browsers do) answer with its own, even when we no longer read. */
        shutdown(ws->fd, SHUT_WR);
        ws->shut_wr = true;
    }
    if (csent || ws->close_queued || !wslay_event_want_read(ws->ctx))
        ws_arm_close_timer(ws);
}

static void ws_pump(ws_conn_t *ws) {
    for (int i = 0; i < READ_BATCH && !ws->closed; i++) {
        bool again = false;
        if (ws->in_pos == ws->in_len)
            ws->in_pos = ws->in_len = 0;
        if (!ws->eof && ws->in_len < ws->in_cap) {
            size_t space = ws->in_cap - ws->in_len;
            ssize_t n = recv(ws->fd, ws->in + ws->in_len, space, 0);
            if (n > 0) {
                ws->in_len += (size_t)n;
                ws->last_rx_ms = now_mono_ms();
                again = (size_t)n == space;
            } else if (n == 0) {
                ws->eof = true;
            } else if (errno == EINTR) {
                again = true;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                ws->eof = ws->broken = true;
            }
        }
        if (ws->in_pos < ws->in_len) {
            if (wslay_event_want_read(ws->ctx) && wslay_event_recv(ws->ctx) != 0)
                ws->broken = true;
            /* Reading is over (close received, or a protocol error answered with a close):
             * what follows is drained and dropped while our close frame goes out. */
            if (ws->closed || !wslay_event_want_read(ws->ctx))
                ws->in_pos = ws->in_len = 0;
        }
        if (!again)
            break;
    }
    ws_flush(ws);
    ws_check(ws);
    ws_update_events(ws);
}

static void ws_on_io(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    ws_conn_t *ws = arg;
    ws->busy++;
    if (events & LOOP_WRITE)
        ws_flush(ws);
    if (!ws->closed && (events & (LOOP_READ | LOOP_HUP | LOOP_ERR)))
        ws_pump(ws);
    else if (!ws->closed) {
        ws_check(ws);
        ws_update_events(ws);
    }
    ws->busy--;
    ws_release(ws);
}

static void ws_on_timer(loop_t *loop, loop_watch_t *w, void *arg) {
    ws_conn_t *ws = arg;
    ws->busy++;
    uint64_t now = now_mono_ms();
    if (ws->close_deadline_ms) {
        if (now >= ws->close_deadline_ms)
            ws_finish(ws, ws_code(ws), true);
    } else if (now - ws->last_rx_ms >= 2 * ws->cfg.ping_interval_ms) {
        ws_finish(ws, WS_CLOSE_ABNORMAL, true);
    } else {
        struct wslay_event_msg ping = {.opcode = WSLAY_PING, .msg = NULL, .msg_length = 0};
        (void)wslay_event_queue_msg(ws->ctx, &ping);
        ws_flush(ws);
        ws_check(ws);
        ws_update_events(ws);
    }
    ws->busy--;
    ws_release(ws);
}

static void ws_deferred(loop_t *loop, void *arg) {
    ws_conn_t *ws = arg;
    ws->defer_pending = false;
    if (!ws->closed) {
        ws->busy++;
        ws_pump(ws);
        ws->busy--;
    }
    ws_release(ws);
}

static void ws_schedule(ws_conn_t *ws) {
    if (!ws->defer_pending && loop_defer(ws->loop, ws_deferred, ws) == 0)
        ws->defer_pending = true;
}

/* After ws_send/ws_close from outside our frames: push the bytes now; a failure is acted on
 * from the loop so that on_close never runs inside the caller. */
static void ws_kick(ws_conn_t *ws) {
    if (ws->busy)
        return; /* the entry point on the stack flushes on its way out */
    ws_flush(ws);
    if (ws->broken)
        ws_schedule(ws);
    ws_update_events(ws);
}

/* Everything that can fail before the socket is taken over, so that a failure there still
 * lets ws_accept answer over HTTP. */
static ws_conn_t *ws_new(loop_t *loop, const ws_config_t *cfg, const ws_handlers_t *h, void *arg,
                         size_t extra_len) {
    static const struct wslay_event_callbacks callbacks = {
        .recv_callback = cb_recv,
        .send_callback = cb_send,
        .on_msg_recv_callback = cb_msg,
    };
    ws_conn_t *ws = calloc(1, sizeof *ws);
    if (!ws)
        return NULL;
    ws->loop = loop;
    ws->fd = -1;
    ws->cfg = cfg ? *cfg : defaults;
    if (!ws->cfg.max_message_bytes)
        ws->cfg.max_message_bytes = defaults.max_message_bytes;
    if (!ws->cfg.max_outbuf_bytes)
        ws->cfg.max_outbuf_bytes = defaults.max_outbuf_bytes;
    if (!ws->cfg.ping_interval_ms)
        ws->cfg.ping_interval_ms = defaults.ping_interval_ms;
    ws->h = *h;
    ws->arg = arg;
    ws->in_cap = extra_len > INBUF_SIZE ? extra_len : INBUF_SIZE;
    ws->in = malloc(ws->in_cap);
    if (!ws->in || wslay_event_context_server_init(&ws->ctx, &callbacks, ws) != 0) {
        ws_free(ws);
        errno = ENOMEM;
        return NULL;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, ws->cfg.max_message_bytes);
    return ws;
}

/* Takes fd; frees ws and closes fd on failure. */
static ws_conn_t *ws_start(ws_conn_t *ws, int fd, const void *extra, size_t extra_len,
                           const char *pre, size_t pre_len) {
    ws->fd = fd;
    if (extra_len)
        memcpy(ws->in, extra, extra_len);
    ws->in_len = extra_len;
    if (pre_len) {
        ssize_t n = send(fd, pre, pre_len, MSG_NOSIGNAL);
        size_t done = n > 0 ? (size_t)n : 0;
        if (done < pre_len) {
            ws->pre = malloc(pre_len - done);
            if (!ws->pre)
                goto fail;
            memcpy(ws->pre, pre + done, pre_len - done);
            ws->pre_len = pre_len - done;
        }
    }
    ws->events = LOOP_READ | (ws->pre ? LOOP_WRITE : 0);
    ws->io = loop_io_add(ws->loop, fd, ws->events, ws_on_io, ws);
    if (!ws->io)
        goto fail;
    ws->timer = loop_timer_add(ws->loop, ws->cfg.ping_interval_ms, ws->cfg.ping_interval_ms,
                               ws_on_timer, ws);
    if (!ws->timer)
        goto fail;
    ws->last_rx_ms = now_mono_ms();
    /* The caller does not have the pointer yet: deliver early frames from the loop. */
    if (extra_len)
        ws_schedule(ws);
    return ws;
fail:;
    int saved = errno ? errno : ENOMEM;
    loop_watch_del(ws->loop, &ws->io);
    loop_watch_del(ws->loop, &ws->timer);
    close(fd);
    ws_free(ws);
    errno = saved;
    return NULL;
}

ws_conn_t *ws_open(loop_t *loop, int fd, const void *extra, size_t extra_len,
                   const ws_config_t *cfg, const ws_handlers_t *h, void *arg) {
    if (!loop || fd < 0 || !h || (extra_len && !extra)) {
        if (fd >= 0)
            close(fd);
        errno = EINVAL;
        return NULL;
    }
    ws_conn_t *ws = ws_new(loop, cfg, h, arg, extra_len);
    if (!ws) {
        close(fd);
        return NULL;
    }
    return ws_start(ws, fd, extra, extra_len, NULL, 0);
}

ws_conn_t *ws_accept(http_conn_t *conn, const http_request_t *req, const char *subprotocol,
                     const ws_config_t *cfg, const ws_handlers_t *h, void *arg) {
    if (!conn || !req || !h) {
        errno = EINVAL;
        return NULL;
    }
    bool bad_version;
    const char *problem = handshake_problem(req, &bad_version);
    if (problem) {
        if (bad_version) {
            /* RFC 6455 4.2.2: name the version we speak so the client can retry with it. */
            static const char body[] = "{\"error\": \"bad_request\", \"detail\": "
                                       "\"unsupported Sec-WebSocket-Version (13 only)\"}";
            (void)http_conn_respond(conn, 426, "application/json", "Sec-WebSocket-Version: 13\r\n",
                                    body, sizeof body - 1);
        } else {
            (void)http_conn_respond_error(conn, 400, "bad_request", problem);
        }
        errno = EINVAL;
        return NULL;
    }
    if (subprotocol && !is_token(subprotocol)) {
        (void)http_conn_respond_error(conn, 500, "internal_error", "invalid subprotocol");
        errno = EINVAL;
        return NULL;
    }
    loop_t *loop = http_conn_loop(conn);
    char accept[WS_ACCEPT_KEY_LEN];
    ws_accept_key(http_request_header(req, "sec-websocket-key"), accept);
    char resp[512];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, subprotocol ? "Sec-WebSocket-Protocol: " : "",
                     subprotocol ? subprotocol : "", subprotocol ? "\r\n" : "");
    if (!loop || n < 0 || (size_t)n >= sizeof resp) {
        (void)http_conn_respond_error(conn, 500, "internal_error", "websocket setup failed");
        errno = EINVAL;
        return NULL;
    }
    /* The pending extra bytes are at most the HTTP read buffer; size the input for them. */
    ws_conn_t *ws = ws_new(loop, cfg, h, arg, 0);
    if (!ws) {
        (void)http_conn_respond_error(conn, 500, "internal_error", "out of memory");
        errno = ENOMEM;
        return NULL;
    }
    int fd = -1;
    _cleanup_free_ char *extra = NULL;
    size_t extra_len = 0;
    int r = http_conn_detach(conn, &fd, &extra, &extra_len);
    if (r < 0) {
        ws_free(ws);
        (void)http_conn_respond_error(conn, 500, "internal_error", "websocket setup failed");
        errno = -r;
        return NULL;
    }
    if (extra_len > ws->in_cap) {
        uint8_t *in = realloc(ws->in, extra_len);
        if (!in) {
            close(fd);
            ws_free(ws);
            errno = ENOMEM;
            return NULL;
        }
        ws->in = in;
        ws->in_cap = extra_len;
    }
    return ws_start(ws, fd, extra, extra_len, resp, (size_t)n);
}

int ws_send(ws_conn_t *ws, bool binary, const void *data, size_t len) {
    if (!ws || (len && !data))
        return -EINVAL;
    if (ws->closed || ws->broken || ws->close_queued || wslay_event_get_close_sent(ws->ctx) ||
        wslay_event_get_close_received(ws->ctx))
        return -EPIPE;
    size_t queued = ws_outbuf_len(ws);
    size_t max = ws->cfg.max_outbuf_bytes;
    if (queued > 0 && (queued > max || len > max - queued))
        return -ENOBUFS;
    struct wslay_event_msg m = {
        .opcode = binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME,
        .msg = data,
        .msg_length = len,
    };
    int r = wslay_event_queue_msg(ws->ctx, &m);
    if (r == WSLAY_ERR_NOMEM)
        return -ENOMEM;
    if (r != 0)
        return -EPIPE;
    ws_kick(ws);
    return ws->broken ? -EPIPE : 0;
}

int ws_close(ws_conn_t *ws, uint16_t code, const char *reason) {
    if (!ws)
        return -EINVAL;
    if (ws->closed)
        return -EPIPE;
    if (ws->close_queued || wslay_event_get_close_sent(ws->ctx))
        return 0;
    size_t rl = reason ? MIN(strlen(reason), (size_t)123) : 0;
    int r = wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason, rl);
    if (r == WSLAY_ERR_NOMEM)
        return -ENOMEM;
    if (r != 0 && r != WSLAY_ERR_NO_MORE_MSG)
        return -EINVAL;
    ws->close_queued = true;
    ws_arm_close_timer(ws);
    ws_kick(ws);
    return 0;
}

void ws_destroy(ws_conn_t **ws_p) {
    ws_conn_t *ws = ws_p ? *ws_p : NULL;
    if (!ws)
        return;
    *ws_p = NULL;
    if (ws->closed)
        return; /* inside on_close: freed when it returns */
    ws_finish(ws, WS_CLOSE_ABNORMAL, false);
    ws_release(ws);
}

void ws_set_user(ws_conn_t *ws, void *user) {
    if (ws)
        ws->user = user;
}

void *ws_user(const ws_conn_t *ws) {
    return ws ? ws->user : NULL;
}

size_t ws_outbuf_len(const ws_conn_t *ws) {
    if (!ws || ws->closed)
        return 0;
    return wslay_event_get_queued_msg_length(ws->ctx) + (ws->pre_len - ws->pre_pos);
}
