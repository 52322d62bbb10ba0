/* Unit tests for the WebSocket layer (gateway/ws.c): the HTTP server upgrades /ws with
 * ws_accept() and echoes messages back; a client thread speaks raw RFC 6455 frames (masked,
 * hand-built) over a blocking socket and records what it received, and the main thread, which
 * runs the loop, asserts afterwards. Handshake values come from RFC 6455 section 1.3. */
#include "http.h"
#include "loop.h"
#include "util.h"
#include "ws.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#define SAMPLE_KEY "dGhlIHNhbXBsZSBub25jZQ=="
/* RFC 6455 section 1.3 (the value is also what Python's hashlib/base64 give) */
#define SAMPLE_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define JUPYTER_PROTO "v1.kernel.websocket.jupyter.org"

enum { OP_CONT = 0, OP_TEXT = 1, OP_BIN = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };

struct client {
    int fd;
    uint8_t *buf;
    size_t len, cap;
};

struct frame {
    int fin, opcode, masked;
    uint8_t *data;
    size_t len;
};

struct harness;
typedef void (*client_fn)(struct harness *h);

struct harness {
    loop_t *loop;
    http_server_t *srv;
    uint16_t port;
    int pipe[2];
    loop_watch_t *pipe_w, *check_w, *guard_w;
    bool client_done, timed_out;
    bool (*pred)(struct harness *h);
    pthread_t th;
    client_fn client;
    ws_config_t wscfg;

    /* server side */
    ws_conn_t *ws;
    int accepted, accept_failed, accept_errno, closes, messages;
    uint16_t close_code;
    bool enobufs_seen;
    size_t enobufs_outbuf;

    /* client side */
    int ints[16];
    char text[8][512];
    struct frame f[16];
    int nf;
};

/* ---- client helpers ------------------------------------------------------------------------ */

static int cl_open(struct client *c, uint16_t port, int rcvbuf) {
    c->len = 0;
    c->cap = 1 << 18;
    c->buf = malloc(c->cap);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || !c->buf)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (rcvbuf)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return connect(c->fd, (struct sockaddr *)&a, sizeof a);
}

static void cl_close(struct client *c) {
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
}

static ssize_t cl_fill(struct client *c) {
    if (c->cap - c->len < 4096) {
        c->cap *= 2;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n > 0)
        c->len += (size_t)n;
    return n;
}

static void cl_consume(struct client *c, size_t n) {
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static int cl_wait_eof(struct client *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->buf, c->cap, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0)
            return -1;
    }
}

static const char *head_value(const char *head, const char *name) {
    static __thread char v[256];
    char pat[64];
    snprintf(pat, sizeof pat, "\r\n%s:", name);
    const char *p = strcasestr(head, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    size_t n = strcspn(p, "\r");
    snprintf(v, sizeof v, "%.*s", (int)n, p);
    return v;
}

/* Reads a response head into out (status at out+9); leaves what follows in the buffer. */
static int cl_read_head(struct client *c, char *out, size_t outlen) {
    uint8_t *end;
    while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (cl_fill(c) <= 0)
            return -1;
    size_t hl = (size_t)(end - c->buf) + 4;
    snprintf(out, outlen, "%.*s", (int)hl, (char *)c->buf);
    cl_consume(c, hl);
    if (strlen(out) < 12)
        return -1;
    char *num_end;
    long status = strtol(out + 9, &num_end, 10);
    return num_end == out + 9 || status < 0 || status > 999 ? -1 : (int)status;
}

static const char *handshake(const char *extra) {
    static __thread char req[1024];
    snprintf(
        req, sizeof req,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        "Sec-WebSocket-Key: " SAMPLE_KEY "\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
        extra ? extra : "");
    return req;
}

static size_t frame_build(uint8_t *out, int fin, int opcode, const void *data, size_t len,
                          bool mask) {
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t hl = 0;
    out[hl++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    uint8_t m = mask ? 0x80 : 0;
    if (len < 126) {
        out[hl++] = (uint8_t)(m | len);
    } else if (len < 65536) {
        out[hl++] = m | 126;
        out[hl++] = (uint8_t)(len >> 8);
        out[hl++] = (uint8_t)len;
    } else {
        out[hl++] = m | 127;
        for (int i = 7; i >= 0; i--)
            out[hl++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    if (mask) {
        memcpy(out + hl, key, 4);
        hl += 4;
    }
    for (size_t i = 0; i < len; i++)
        out[hl + i] = ((const uint8_t *)data)[i] ^ (mask ? key[i % 4] : 0);
    return hl + len;
}

static int frame_send(struct client *c, int fin, int opcode, const void *data, size_t len) {
    uint8_t *b = malloc(len + 14);
    size_t n = frame_build(b, fin, opcode, data, len, true);
    int r = write_all(c->fd, b, n);
    free(b);
    return r;
}

static int close_send(struct client *c, uint16_t code) {
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    return frame_send(c, 1, OP_CLOSE, p, 2);
}

static int frame_read(struct client *c, struct frame *f) {
    while (c->len < 2)
        if (cl_fill(c) <= 0)
            return -1;
    f->fin = c->buf[0] >> 7;
    f->opcode = c->buf[0] & 0xf;
    f->masked = c->buf[1] >> 7;
    size_t len = c->buf[1] & 0x7f, hl = 2;
    size_t ext = len == 126 ? 2 : len == 127 ? 8 : 0;
    while (c->len < hl + ext)
        if (cl_fill(c) <= 0)
            return -1;
    if (ext) {
        len = 0;
        for (size_t i = 0; i < ext; i++)
            len = len << 8 | c->buf[hl + i];
        hl += ext;
    }
    if (f->masked)
        hl += 4;
    while (c->len < hl + len)
        if (cl_fill(c) <= 0)
            return -1;
    f->data = malloc(len + 1);
    memcpy(f->data, c->buf + hl, len);
    f->data[len] = 0;
    f->len = len;
    cl_consume(c, hl + len);
    return 0;
}

static struct frame *next_frame(struct harness *h) {
    return h->nf < 16 ? &h->f[h->nf++] : &h->f[15];
}

static uint16_t close_code(const struct frame *f) {
    return f->opcode == OP_CLOSE && f->len >= 2 ? (uint16_t)(f->data[0] << 8 | f->data[1]) : 0;
}

/* ---- server side --------------------------------------------------------------------------- */

static void on_message(ws_conn_t *ws, bool binary, const void *data, size_t len, void *arg) {
    struct harness *h = arg;
    h->messages++;
    assert_ptr_equal(ws_user(ws), h);
    if (!binary && len == 8 && memcmp(data, "close-me", 8) == 0) {
        assert_int_equal(ws_close(ws, WS_CLOSE_NORMAL, "bye"), 0);
        assert_int_equal(ws_send(ws, false, "late", 4), -EPIPE);
        return;
    }
    if (!binary && len == 5 && memcmp(data, "flood", 5) == 0) {
        static char chunk[16384];
        for (int i = 0; i < 8192; i++) {
            if (ws_send(ws, true, chunk, sizeof chunk) == -ENOBUFS) {
                h->enobufs_seen = true;
                h->enobufs_outbuf = ws_outbuf_len(ws);
                break;
            }
        }
        /* a slow client is dropped from inside the callback: no on_close for it */
        ws_destroy(&h->ws);
        return;
    }
    assert_int_equal(ws_send(ws, binary, data, len), 0);
}

static void on_ws_close(ws_conn_t *ws, uint16_t code, void *arg) {
    struct harness *h = arg;
    assert_ptr_equal(ws, h->ws);
    h->closes++;
    h->close_code = code;
    assert_int_equal(ws_send(ws, false, "x", 1), -EPIPE);
    ws_destroy(&h->ws); /* a no-op inside on_close, but nulls the pointer */
}

static void on_request(http_conn_t *conn, const http_request_t *req, void *arg) {
    struct harness *h = arg;
    static const ws_handlers_t wsh = {.on_message = on_message, .on_close = on_ws_close};
    static const char *const protos[] = {JUPYTER_PROTO, NULL};
    if (!streq(req->path, "/ws")) {
        http_conn_respond_error(conn, 404, "not_found", req->path);
        return;
    }
    const char *proto = ws_subprotocol_select(req, protos);
    ws_conn_t *ws = ws_accept(conn, req, proto, &h->wscfg, &wsh, h);
    if (!ws) {
        h->accept_failed++;
        h->accept_errno = errno;
        return;
    }
    h->accepted++;
    ws_set_user(ws, h);
    h->ws = ws;
}

static void on_pipe(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    struct harness *h = arg;
    char b;
    (void)!read(fd, &b, 1);
    h->client_done = true;
}

static void on_check(loop_t *loop, loop_watch_t *w, void *arg) {
    struct harness *h = arg;
    if (h->client_done && (!h->pred || h->pred(h)))
        loop_stop(loop);
}

static void on_guard(loop_t *loop, loop_watch_t *w, void *arg) {
    struct harness *h = arg;
    h->timed_out = true;
    loop_stop(loop);
}

static void *client_main(void *p) {
    struct harness *h = p;
    h->client(h);
    char b = 1;
    (void)!write(h->pipe[1], &b, 1);
    return NULL;
}

static struct harness *h_new(const ws_config_t *wscfg) {
    struct harness *h = calloc(1, sizeof *h);
    assert_non_null(h);
    if (wscfg)
        h->wscfg = *wscfg;
    h->loop = loop_new(0);
    assert_non_null(h->loop);
    static const http_handlers_t handlers = {.on_request = on_request};
    h->srv = http_server_new(h->loop, NULL, &handlers, h);
    assert_non_null(h->srv);
    assert_int_equal(http_server_listen(h->srv, "localhost", 0), 0);
    h->port = http_server_port(h->srv);
    assert_int_equal(pipe2(h->pipe, O_CLOEXEC), 0);
    h->pipe_w = loop_io_add(h->loop, h->pipe[0], LOOP_READ, on_pipe, h);
    h->check_w = loop_timer_add(h->loop, 2, 2, on_check, h);
    return h;
}

static void h_run(struct harness *h, client_fn fn, bool (*pred)(struct harness *h)) {
    h->client = fn;
    h->pred = pred;
    h->client_done = false;
    h->guard_w = loop_timer_add(h->loop, 20000, 0, on_guard, h);
    assert_int_equal(pthread_create(&h->th, NULL, client_main, h), 0);
    loop_run(h->loop);
    pthread_join(h->th, NULL);
    loop_watch_del(h->loop, &h->guard_w);
    assert_false(h->timed_out);
}

static void h_free(struct harness *h) {
    ws_destroy(&h->ws);
    http_server_destroy(&h->srv);
    loop_watch_del(h->loop, &h->pipe_w);
    loop_watch_del(h->loop, &h->check_w);
    loop_destroy(&h->loop);
    close(h->pipe[0]);
    close(h->pipe[1]);
    for (int i = 0; i < 16; i++)
        free(h->f[i].data);
    free(h);
}

static bool closed_once(struct harness *h) {
    return h->closes == 1 && !h->ws;
}

static bool ws_gone(struct harness *h) {
    return !h->ws && http_server_connection_count(h->srv) == 0;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_accept_key(void **state) {
    char out[WS_ACCEPT_KEY_LEN];
    assert_int_equal(ws_accept_key(SAMPLE_KEY, out), 0);
    assert_string_equal(out, SAMPLE_ACCEPT);
    assert_int_equal(ws_accept_key(NULL, out), -EINVAL);
}

static void test_subprotocol_select(void **state) {
    http_header_t hdrs[] = {
        {"host", "x"},
        {"sec-websocket-protocol", "a, b ,c"},
        {"sec-websocket-protocol", "d"},
    };
    http_request_t req = {.method = "GET", .headers = hdrs, .nheaders = 3};
    const char *const want1[] = {"z", "c", "a", NULL};
    assert_ptr_equal(ws_subprotocol_select(&req, want1), want1[1]);
    const char *const want2[] = {"d", NULL};
    assert_ptr_equal(ws_subprotocol_select(&req, want2), want2[0]);
    const char *const want3[] = {"A", "b c", NULL};
    assert_null(ws_subprotocol_select(&req, want3));
    req.nheaders = 1;
    assert_null(ws_subprotocol_select(&req, want1));
}

static void c_echo(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    write_all(c.fd, handshake(NULL), strlen(handshake(NULL)));
    h->ints[0] = cl_read_head(&c, h->text[0], sizeof h->text[0]);
    frame_send(&c, 1, OP_TEXT, "hello", 5);
    frame_read(&c, next_frame(h));
    uint8_t bin[300];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (uint8_t)i;
    frame_send(&c, 1, OP_BIN, bin, sizeof bin);
    frame_read(&c, next_frame(h));
    h->ints[1] = memcmp(h->f[1].data, bin, sizeof bin) == 0;
    size_t big = 70000;
    uint8_t *b = malloc(big);
    for (size_t i = 0; i < big; i++)
        b[i] = (uint8_t)(i * 7);
    frame_send(&c, 1, OP_BIN, b, big);
    frame_read(&c, next_frame(h));
    h->ints[2] = h->f[2].len == big && memcmp(h->f[2].data, b, big) == 0;
    free(b);
    frame_send(&c, 1, OP_TEXT, "", 0);
    frame_read(&c, next_frame(h));
    close_send(&c, 1000);
    frame_read(&c, next_frame(h));
    h->ints[3] = cl_wait_eof(&c);
    cl_close(&c);
}

static void test_echo(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_echo, closed_once);
    assert_int_equal(h->ints[0], 101);
    assert_string_equal(head_value(h->text[0], "Sec-WebSocket-Accept"), SAMPLE_ACCEPT);
    assert_string_equal(head_value(h->text[0], "Upgrade"), "websocket");
    assert_null(head_value(h->text[0], "Sec-WebSocket-Protocol"));
    assert_int_equal(h->f[0].opcode, OP_TEXT);
    assert_int_equal(h->f[0].fin, 1);
    assert_int_equal(h->f[0].masked, 0);
    assert_string_equal((char *)h->f[0].data, "hello");
    assert_int_equal(h->f[1].opcode, OP_BIN);
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->ints[2], 1);
    assert_int_equal(h->f[3].opcode, OP_TEXT);
    assert_int_equal(h->f[3].len, 0);
    assert_int_equal(h->f[4].opcode, OP_CLOSE);
    assert_int_equal(close_code(&h->f[4]), 1000);
    assert_int_equal(h->ints[3], 1);
    assert_int_equal(h->accepted, 1);
    assert_int_equal(h->messages, 4);
    assert_int_equal(h->close_code, 1000);
    assert_int_equal(http_server_connection_count(h->srv), 0);
    h_free(h);
}

static void c_fragmented(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    /* The first frame rides in the same segment as the handshake: bytes the HTTP layer read
     * past the request must reach the WebSocket. */
    uint8_t buf[2048];
    size_t n = strlen(handshake(NULL));
    memcpy(buf, handshake(NULL), n);
    n += frame_build(buf + n, 0, OP_TEXT, "Hel", 3, true);
    write_all(c.fd, buf, n);
    h->ints[0] = cl_read_head(&c, h->text[0], sizeof h->text[0]);
    frame_send(&c, 1, OP_PING, "p", 1); /* control frames may come between fragments */
    frame_send(&c, 0, OP_CONT, "lo ", 3);
    frame_send(&c, 1, OP_CONT, "world", 5);
    frame_read(&c, next_frame(h));
    frame_read(&c, next_frame(h));
    close_send(&c, 1001);
    frame_read(&c, next_frame(h));
    h->ints[1] = cl_wait_eof(&c);
    cl_close(&c);
}

static void test_fragmented(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_fragmented, closed_once);
    assert_int_equal(h->ints[0], 101);
    assert_int_equal(h->f[0].opcode, OP_PONG);
    assert_string_equal((char *)h->f[0].data, "p");
    assert_int_equal(h->f[1].opcode, OP_TEXT);
    assert_string_equal((char *)h->f[1].data, "Hello world");
    assert_int_equal(close_code(&h->f[2]), 1001);
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->messages, 1);
    assert_int_equal(h->close_code, 1001);
    h_free(h);
}

static void c_too_big(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    write_all(c.fd, handshake(NULL), strlen(handshake(NULL)));
    h->ints[0] = cl_read_head(&c, h->text[0], sizeof h->text[0]);
    uint8_t big[2000] = {0};
    /* Fragments that add up past the limit are refused too. */
    frame_send(&c, 0, OP_BIN, big, 800);
    frame_send(&c, 1, OP_CONT, big, 800);
    frame_read(&c, next_frame(h));
    h->ints[1] = cl_wait_eof(&c); /* the server half-closes after its close frame */
    cl_close(&c);
}

static void test_too_big(void **state) {
    ws_config_t cfg = {.max_message_bytes = 1024};
    struct harness *h = h_new(&cfg);
    h_run(h, c_too_big, closed_once);
    assert_int_equal(h->f[0].opcode, OP_CLOSE);
    assert_int_equal(close_code(&h->f[0]), WS_CLOSE_TOO_BIG);
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->messages, 0);
    assert_int_equal(h->close_code, WS_CLOSE_TOO_BIG);
    h_free(h);
}

static void c_ping(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    write_all(c.fd, handshake(NULL), strlen(handshake(NULL)));
    h->ints[0] = cl_read_head(&c, h->text[0], sizeof h->text[0]);
    /* answer two pings, then go silent */
    for (int i = 0; i < 2; i++) {
        struct frame *f = next_frame(h);
        frame_read(&c, f);
        frame_send(&c, 1, OP_PONG, f->data, f->len);
    }
    uint64_t t0 = now_mono_ms();
    h->ints[1] = cl_wait_eof(&c);
    h->ints[2] = (int)(now_mono_ms() - t0);
    cl_close(&c);
}

static void test_ping(void **state) {
    ws_config_t cfg = {.ping_interval_ms = 100};
    struct harness *h = h_new(&cfg);
    h_run(h, c_ping, closed_once);
    assert_int_equal(h->f[0].opcode, OP_PING);
    assert_int_equal(h->f[1].opcode, OP_PING);
    assert_int_equal(h->ints[1], 1);
    assert_true(h->ints[2] >= 100);
    assert_true(h->ints[2] < 2000);
    assert_int_equal(h->close_code, WS_CLOSE_ABNORMAL);
    h_free(h);
}

static void c_bad(struct harness *h) {
    static const char *const reqs[] = {
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: " SAMPLE_KEY "\r\nSec-WebSocket-Version: 8\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: " SAMPLE_KEY "\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n",
        "POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: " SAMPLE_KEY
        "\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(reqs); i++) {
        struct client c;
        if (cl_open(&c, h->port, 0) < 0)
            return;
        write_all(c.fd, reqs[i], strlen(reqs[i]));
        char head[512];
        h->ints[i] = cl_read_head(&c, head, sizeof head);
        if (i == 2)
            memcpy(h->text[0], head, sizeof head);
        cl_close(&c);
    }
}

static void test_bad_handshake(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_bad, ws_gone);
    assert_int_equal(h->ints[0], 400);
    assert_int_equal(h->ints[1], 400);
    assert_int_equal(h->ints[2], 426);
    assert_string_equal(head_value(h->text[0], "Sec-WebSocket-Version"), "13");
    assert_int_equal(h->ints[3], 400);
    assert_int_equal(h->ints[4], 400);
    assert_int_equal(h->accepted, 0);
    assert_int_equal(h->accept_failed, 5);
    assert_int_equal(h->accept_errno, EINVAL);
    h_free(h);
}

static void c_subprotocol(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    const char *r = handshake("Sec-WebSocket-Protocol: foo, " JUPYTER_PROTO "\r\n");
    write_all(c.fd, r, strlen(r));
    h->ints[0] = cl_read_head(&c, h->text[0], sizeof h->text[0]);
    frame_send(&c, 1, OP_TEXT, "close-me", 8);
    frame_read(&c, next_frame(h));
    close_send(&c, 1000);
    h->ints[1] = cl_wait_eof(&c);
    cl_close(&c);
}

static void test_subprotocol_and_server_close(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_subprotocol, closed_once);
    assert_int_equal(h->ints[0], 101);
    assert_string_equal(head_value(h->text[0], "Sec-WebSocket-Protocol"), JUPYTER_PROTO);
    assert_int_equal(h->f[0].opcode, OP_CLOSE);
    assert_int_equal(close_code(&h->f[0]), 1000);
    assert_memory_equal(h->f[0].data + 2, "bye", 3);
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->close_code, 1000);
    h_free(h);
}

static void c_protocol_error(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    const char *r = handshake("Sec-WebSocket-Protocol: foo\r\n");
    write_all(c.fd, r, strlen(r));
    h->ints[0] = cl_read_head(&c, h->text[0], sizeof h->text[0]);
    uint8_t f[64];
    size_t n = frame_build(f, 1, OP_TEXT, "nomask", 6, false); /* clients must mask */
    write_all(c.fd, f, n);
    frame_read(&c, next_frame(h));
    close_send(&c, 1002);
    h->ints[1] = cl_wait_eof(&c);
    cl_close(&c);
}

static void test_protocol_error(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_protocol_error, closed_once);
    assert_int_equal(h->ints[0], 101);
    assert_null(head_value(h->text[0], "Sec-WebSocket-Protocol"));
    assert_int_equal(close_code(&h->f[0]), WS_CLOSE_PROTOCOL_ERROR);
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->messages, 0);
    assert_int_equal(h->close_code, WS_CLOSE_PROTOCOL_ERROR);
    h_free(h);
}

static void c_flood(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 4096) < 0)
        return;
    write_all(c.fd, handshake(NULL), strlen(handshake(NULL)));
    h->ints[0] = cl_read_head(&c, h->text[0], sizeof h->text[0]);
    frame_send(&c, 1, OP_TEXT, "flood", 5);
    struct timespec ts = {.tv_nsec = 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    h->ints[1] = cl_wait_eof(&c);
    cl_close(&c);
}

static void test_outbuf_limit(void **state) {
    ws_config_t cfg = {.max_outbuf_bytes = 64 * 1024};
    struct harness *h = h_new(&cfg);
    h_run(h, c_flood, ws_gone);
    assert_true(h->enobufs_seen);
    assert_true(h->enobufs_outbuf > 0);
    assert_true(h->enobufs_outbuf <= 64 * 1024);
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->closes, 0); /* ws_destroy: no on_close */
    h_free(h);
}

static void c_peer_drops(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    write_all(c.fd, handshake(NULL), strlen(handshake(NULL)));
    h->ints[0] = cl_read_head(&c, h->text[0], sizeof h->text[0]);
    frame_send(&c, 1, OP_TEXT, "x", 1);
    frame_read(&c, next_frame(h));
    cl_close(&c); /* no close frame */
}

static void test_peer_drops(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_peer_drops, closed_once);
    assert_int_equal(h->close_code, WS_CLOSE_ABNORMAL);
    h_free(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key),     cmocka_unit_test(test_subprotocol_select),
        cmocka_unit_test(test_echo),           cmocka_unit_test(test_fragmented),
        cmocka_unit_test(test_too_big),        cmocka_unit_test(test_ping),
        cmocka_unit_test(test_bad_handshake),  cmocka_unit_test(test_subprotocol_and_server_close),
        cmocka_unit_test(test_protocol_error), cmocka_unit_test(test_outbuf_limit),
        cmocka_unit_test(test_peer_drops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
