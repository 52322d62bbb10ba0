/* libFuzzer target for the WebSocket layer: the input, after one mode byte, is what a client
 * sent after the handshake, handed to ws_open() as bytes already read (the path ws_accept
 * takes for data that arrived with the upgrade). The mode picks small or large message and
 * outbound limits and whether the client has half-closed. The handler echoes, closes or
 * destroys from inside on_message depending on the message, so re-entrancy is fuzzed too. */
#include "loop.h"
#include "util.h"
#include "ws.h"

#include <sys/socket.h>

static loop_t *loop;
static ws_conn_t *ws;

static void on_message(ws_conn_t *w, bool binary, const void *data, size_t len, void *arg) {
    const char *d = data;
    if (len > 0 && d[0] == 'C') {
        (void)ws_close(w, WS_CLOSE_NORMAL, d + 1 < d + len ? "fuzz" : NULL);
    } else if (len > 0 && d[0] == 'D') {
        ws_destroy(&ws);
    } else {
        (void)ws_send(w, binary, data, len);
        (void)ws_send(w, binary, data, len);
    }
}

static void on_close(ws_conn_t *w, uint16_t code, void *arg) {
    if (w != ws)
        __builtin_trap();
    ws = NULL;
}

static void stop(loop_t *l, void *arg) {
    loop_stop(l);
}

/* Deferring twice lets one epoll pass (socket events) run before the stop. */
static void stop_soon(loop_t *l, void *arg) {
    loop_defer(l, stop, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    if (!loop)
        loop = loop_new(0);
    uint8_t mode = data[0];
    data++;
    size--;
    ws_config_t cfg = {
        .max_message_bytes = (mode & 1) ? 64 : 1 << 16,
        .max_outbuf_bytes = (mode & 2) ? 128 : 1 << 20,
        .ping_interval_ms = 10000,
    };
    static const ws_handlers_t h = {.on_message = on_message, .on_close = on_close};
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        __builtin_trap();
    if (mode & 4)
        shutdown(sv[1], SHUT_WR);
    ws = ws_open(loop, sv[0], data, size, &cfg, &h, NULL);
    if (!ws)
        __builtin_trap();
    /* ws_open queued its processing of the bytes first; this runs right after it. */
    loop_defer(loop, stop_soon, NULL);
    loop_run(loop);
    if (mode & 8) {
        /* A second round after the peer goes away entirely. */
        close(sv[1]);
        sv[1] = -1;
        loop_defer(loop, stop_soon, NULL);
        loop_run(loop);
    }
    ws_destroy(&ws);
    if (sv[1] >= 0)
        close(sv[1]);
    return 0;
}
