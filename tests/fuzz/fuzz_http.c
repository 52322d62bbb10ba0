/* libFuzzer target for the HTTP server: the input is a client's byte stream on one connection
 * (a socketpair adopted by a fresh server), followed by the client's half-close. The handler
 * touches every request string (so ASan sees a bad pointer), answers plainly, streams, errors,
 * closes inside the callback, or upgrades to a WebSocket, chosen by the path, so that every
 * response path and the detach run on fuzzed input. Small limits make the 413/431/ENOBUFS
 * paths reachable with small inputs. The loop runs until the peer sees the server's EOF. */
#include "http.h"
#include "loop.h"
#include "util.h"
#include "ws.h"

#include <sys/socket.h>

static loop_t *loop;
static ws_conn_t *ws;

static void on_ws_message(ws_conn_t *w, bool binary, const void *data, size_t len, void *arg) {
    (void)ws_send(w, binary, data, len);
}

static void on_ws_close(ws_conn_t *w, uint16_t code, void *arg) {
    ws = NULL;
}

static void on_request(http_conn_t *conn, const http_request_t *req, void *arg) {
    size_t sum = strlen(req->method) + strlen(req->path) + strlen(req->query) +
                 strlen(req->raw_target) + req->body_len + (req->body[req->body_len] == '\0');
    for (size_t i = 0; i < req->nheaders; i++)
        sum += strlen(req->headers[i].name) + strlen(req->headers[i].value);
    (void)sum;
    char buf[32];
    (void)http_query_param(req->query, "a", buf, sizeof buf);
    (void)http_request_header(req, "host");
    http_conn_set_user(conn, conn);
    switch (req->path[0] == '/' ? req->path[1] : 0) {
    case 's': {
        http_conn_stream_begin(conn, 200, "text/plain", "X-A: b");
        for (int i = 0; i < 4; i++)
            (void)http_conn_stream_write(conn, req->body, req->body_len);
        http_conn_stream_end(conn);
        break;
    }
    case 'c':
        http_conn_close(conn);
        break;
    case 'e':
        http_conn_respond_error(conn, 422, "bad \"thing\"", req->path);
        break;
    case 'w': {
        static const ws_handlers_t h = {.on_message = on_ws_message, .on_close = on_ws_close};
        static const char *const protos[] = {"p", NULL};
        ws_config_t cfg = {.max_message_bytes = 256, .max_outbuf_bytes = 1024};
        if (!ws) {
            http_conn_set_user(conn, NULL);
            ws = ws_accept(conn, req, ws_subprotocol_select(req, protos), &cfg, &h, NULL);
        } else {
            http_conn_respond(conn, 409, NULL, NULL, NULL, 0);
        }
        break;
    }
    default:
        http_conn_respond(conn, 200, "text/plain", NULL, req->body, req->body_len);
        if (http_conn_respond(conn, 200, "text/plain", NULL, "x", 1) == 0)
            __builtin_trap(); /* a second response must be refused */
        break;
    }
}

static void on_close(http_conn_t *conn, void *user, void *arg) {
    if (user != conn)
        __builtin_trap();
}

static void on_peer(loop_t *l, loop_watch_t *w, int fd, unsigned events, void *arg) {
    char sink[65536];
    for (;;) {
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n > 0)
            continue;
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            loop_stop(l);
        return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!loop)
        loop = loop_new(0);
    static const http_handlers_t handlers = {.on_request = on_request, .on_close = on_close};
    http_server_config_t cfg = {
        .max_header_bytes = 1024,
        .max_headers = 16,
        .max_body_bytes = 512,
        .drain_bytes = 2048,
        .max_outbuf_bytes = 4096,
        .idle_timeout_ms = 2000,
    };
    http_server_t *srv = http_server_new(loop, &cfg, &handlers, NULL);
    int sv[2];
    if (!srv || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        __builtin_trap();
    if (http_server_adopt(srv, sv[0]) < 0)
        __builtin_trap();
    size_t off = 0;
    while (off < size) {
        ssize_t n = send(sv[1], data + off, size - off, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the socket buffer is full: the rest is simply not sent */
        off += (size_t)n;
    }
    shutdown(sv[1], SHUT_WR);
    loop_watch_t *pw = loop_io_add(loop, sv[1], LOOP_READ, on_peer, NULL);
    loop_run(loop);
    loop_watch_del(loop, &pw);
    ws_destroy(&ws);
    http_server_destroy(&srv);
    close(sv[1]);
    return 0;
}
