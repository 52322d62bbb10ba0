/* Unit tests for the HTTP server (gateway/http.c): a real server on 127.0.0.1, port 0, runs in
 * the loop on the test's main thread while a client thread drives it with plain blocking
 * sockets and records what it saw; the main thread asserts afterwards (cmocka assertions are
 * not thread-safe). The loop runs until the client is done and a per-test condition on the
 * server side holds, with a guard timeout so a bug fails the test instead of hanging it. */
#include "http.h"
#include "loop.h"
#include "util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_RESP 8

struct resp {
    int status;
    char head[8192];
    char *body;
    size_t body_len;
};

struct client {
    int fd;
    char *buf;
    size_t len, cap;
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

    /* server side (loop thread) */
    int requests, closes, twice_rc, stream_step;
    bool enobufs_seen;
    size_t enobufs_outbuf, max_seen_conns;
    loop_watch_t *timer;
    http_conn_t *pending;

    /* client side (client thread; read after join) */
    struct resp r[MAX_RESP];
    int nresp;
    int ints[8];
    char text[8][256];
    int held_fd;
};

/* ---- client helpers (client thread) -------------------------------------------------------- */

static int cl_open(struct client *c, uint16_t port, int rcvbuf) {
    c->len = 0;
    c->cap = 1 << 16;
    c->buf = malloc(c->cap);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || !c->buf)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
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

static int cl_send(struct client *c, const char *s) {
    return write_all(c->fd, s, strlen(s));
}

/* Reads more into the buffer: > 0 bytes, 0 EOF, < 0 error. */
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

static char *cl_find(struct client *c, const char *needle) {
    return memmem(c->buf, c->len, needle, strlen(needle));
}

/* Waits for EOF (or reset): 1 if the server closed, 0 if data came, -1 on timeout. */
static int cl_wait_eof(struct client *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->buf, c->cap, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0)
            return -1;
        if (n > 0)
            return 0;
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

/* The decimal number s starts with, or -1 when it starts with none or overflows. */
static long parse_dec(const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return end == s || errno ? -1 : v;
}

/* One response; head_only for HEAD. 0 or -1. */
static int cl_read_response(struct client *c, struct resp *r, bool head_only) {
    char *end;
    while (!(end = cl_find(c, "\r\n\r\n")))
        if (cl_fill(c) <= 0)
            return -1;
    size_t hl = (size_t)(end - c->buf) + 4;
    snprintf(r->head, sizeof r->head, "%.*s", (int)hl, c->buf);
    cl_consume(c, hl);
    r->status = (int)parse_dec(r->head + 9);
    r->body = NULL;
    r->body_len = 0;
    if (head_only || r->status < 200 || r->status == 204 || r->status == 304)
        return 0;
    const char *te = head_value(r->head, "Transfer-Encoding");
    bool chunked = te && strcasecmp(te, "chunked") == 0;
    const char *cls = head_value(r->head, "Content-Length");
    long cl = cls ? parse_dec(cls) : -1;
    if (chunked) {
        size_t cap = 1024;
        r->body = malloc(cap);
        for (;;) {
            char *le;
            while (!(le = cl_find(c, "\r\n")))
                if (cl_fill(c) <= 0)
                    return -1;
            size_t sz = strtoul(c->buf, NULL, 16);
            size_t ll = (size_t)(le - c->buf) + 2;
            while (c->len < ll + sz + 2)
                if (cl_fill(c) <= 0)
                    return -1;
            if (r->body_len + sz + 1 > cap) {
                cap = (r->body_len + sz + 1) * 2;
                r->body = realloc(r->body, cap);
            }
            memcpy(r->body + r->body_len, c->buf + ll, sz);
            r->body_len += sz;
            cl_consume(c, ll + sz + 2);
            if (sz == 0)
                break;
        }
        r->body[r->body_len] = '\0';
        return 0;
    }
    if (cl >= 0) {
        while (c->len < (size_t)cl)
            if (cl_fill(c) <= 0)
                return -1;
    } else {
        for (;;) { /* close-delimited */
            ssize_t n = cl_fill(c);
            if (n == 0)
                break;
            if (n < 0)
                return -1;
        }
        cl = (long)c->len;
    }
    r->body = malloc((size_t)cl + 1);
    memcpy(r->body, c->buf, (size_t)cl);
    r->body[cl] = '\0';
    r->body_len = (size_t)cl;
    cl_consume(c, (size_t)cl);
    return 0;
}

static struct resp *next_resp(struct harness *h) {
    return h->nresp < MAX_RESP ? &h->r[h->nresp++] : &h->r[MAX_RESP - 1];
}

/* ---- server side (loop thread) ------------------------------------------------------------- */

static void respond_text(http_conn_t *conn, const char *s) {
    http_conn_respond(conn, 200, "text/plain", NULL, s, strlen(s));
}

static void on_async_timer(loop_t *loop, loop_watch_t *w, void *arg) {
    struct harness *h = arg;
    loop_watch_del(loop, &h->timer);
    respond_text(h->pending, "async");
    h->pending = NULL;
}

static void on_stream_timer(loop_t *loop, loop_watch_t *w, void *arg) {
    struct harness *h = arg;
    static const char *const parts[] = {"two\n", "three\n"};
    if (h->stream_step < 2) {
        http_conn_stream_write(h->pending, parts[h->stream_step], strlen(parts[h->stream_step]));
        h->stream_step++;
        return;
    }
    loop_watch_del(loop, &h->timer);
    http_conn_stream_end(h->pending);
    h->pending = NULL;
}

static void on_request(http_conn_t *conn, const http_request_t *req, void *arg) {
    struct harness *h = arg;
    h->requests++;
    size_t n = http_server_connection_count(h->srv);
    if (n > h->max_seen_conns)
        h->max_seen_conns = n;
    http_conn_set_user(conn, h);
    char buf[4096];
    if (startswith(req->path, "/echo")) {
        snprintf(buf, sizeof buf, "%s %s ?%s |%.*s", req->method, req->path, req->query,
                 (int)req->body_len, req->body);
        respond_text(conn, buf);
    } else if (startswith(req->path, "/dec")) {
        char x[64] = "", y[64] = "", w[64] = "";
        int rx = http_query_param(req->query, "x", x, sizeof x);
        int ry = http_query_param(req->query, "y", y, sizeof y);
        int rw = http_query_param(req->query, "w", w, sizeof w);
        snprintf(buf, sizeof buf, "path=%s|x=%s:%d|y=%s:%d|w=%d", req->path, x, rx, y, ry, rw);
        respond_text(conn, buf);
    } else if (streq(req->path, "/async")) {
        h->pending = conn;
        h->timer = loop_timer_add(h->loop, 20, 0, on_async_timer, h);
    } else if (streq(req->path, "/stream")) {
        h->pending = conn;
        h->stream_step = 0;
        http_conn_stream_begin(conn, 200, "application/x-ndjson", "X-Stream: yes\r\n");
        http_conn_stream_write(conn, "one\n", 4);
        h->timer = loop_timer_add(h->loop, 10, 10, on_stream_timer, h);
    } else if (streq(req->path, "/flood")) {
        static char chunk[16384];
        memset(chunk, 'x', sizeof chunk);
        http_conn_stream_begin(conn, 200, "text/plain", NULL);
        for (int i = 0; i < 8192; i++) {
            int r = http_conn_stream_write(conn, chunk, sizeof chunk);
            if (r == -ENOBUFS) {
                h->enobufs_seen = true;
                h->enobufs_outbuf = http_conn_outbuf_len(conn);
                break;
            }
        }
        http_conn_close(conn);
    } else if (streq(req->path, "/hold")) {
        h->pending = conn; /* never answered: the client goes away */
    } else if (streq(req->path, "/close")) {
        http_conn_close(conn);
    } else if (streq(req->path, "/twice")) {
        respond_text(conn, "first");
        h->twice_rc = http_conn_respond(conn, 200, "text/plain", NULL, "second", 6);
    } else if (streq(req->path, "/big")) {
        size_t len = 1 << 20;
        char *b = malloc(len);
        for (size_t i = 0; i < len; i++)
            b[i] = (char)('a' + i % 26);
        http_conn_respond(conn, 200, "application/octet-stream", NULL, b, len);
        free(b);
    } else {
        http_conn_respond_error(conn, 404, "not_found", req->path);
    }
}

static void on_close(http_conn_t *conn, void *user, void *arg) {
    struct harness *h = arg;
    assert_ptr_equal(user, h);
    h->closes++;
    if (conn == h->pending) {
        h->pending = NULL;
        loop_watch_del(h->loop, &h->timer);
    }
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

static struct harness *h_new(const http_server_config_t *cfg) {
    struct harness *h = calloc(1, sizeof *h);
    assert_non_null(h);
    h->held_fd = -1;
    h->loop = loop_new(0);
    assert_non_null(h->loop);
    static const http_handlers_t handlers = {.on_request = on_request, .on_close = on_close};
    h->srv = http_server_new(h->loop, cfg, &handlers, h);
    assert_non_null(h->srv);
    assert_int_equal(http_server_listen(h->srv, "127.0.0.1", 0), 0);
    h->port = http_server_port(h->srv);
    assert_true(h->port > 0);
    assert_int_equal(pipe2(h->pipe, O_CLOEXEC), 0);
    h->pipe_w = loop_io_add(h->loop, h->pipe[0], LOOP_READ, on_pipe, h);
    h->check_w = loop_timer_add(h->loop, 2, 2, on_check, h);
    assert_non_null(h->pipe_w);
    assert_non_null(h->check_w);
    return h;
}

/* Runs the client to completion and the loop until pred holds. */
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
    http_server_destroy(&h->srv);
    assert_null(h->srv);
    loop_watch_del(h->loop, &h->timer);
    loop_watch_del(h->loop, &h->pipe_w);
    loop_watch_del(h->loop, &h->check_w);
    loop_destroy(&h->loop);
    close(h->pipe[0]);
    close(h->pipe[1]);
    if (h->held_fd >= 0)
        close(h->held_fd);
    for (int i = 0; i < MAX_RESP; i++)
        free(h->r[i].body);
    free(h);
}

static bool no_conns(struct harness *h) {
    return http_server_connection_count(h->srv) == 0;
}

static bool one_close(struct harness *h) {
    return h->closes >= 1 && no_conns(h);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void c_get_post(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /echo?a=1&b=%20 HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_send(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
}

static void test_get_post_keepalive(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_get_post, no_conns);
    assert_int_equal(h->nresp, 2);
    assert_int_equal(h->r[0].status, 200);
    assert_string_equal(h->r[0].body, "GET /echo ?a=1&b=%20 |");
    assert_string_equal(head_value(h->r[0].head, "Connection"), "keep-alive");
    assert_string_equal(head_value(h->r[0].head, "Content-Type"), "text/plain");
    assert_int_equal(h->r[1].status, 200);
    assert_string_equal(h->r[1].body, "POST /echo ? |hello");
    /* both requests came over one connection */
    assert_int_equal(h->max_seen_conns, 1);
    assert_int_equal(h->requests, 2);
    assert_int_equal(h->closes, 1);
    h_free(h);
}

static void c_pipelined(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /echo/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "POST /echo/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                "GET /echo/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    for (int i = 0; i < 3; i++)
        if (cl_read_response(&c, next_resp(h), false) < 0)
            break;
    h->ints[0] = cl_wait_eof(&c);
    cl_close(&c);
}

static void test_pipelined(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_pipelined, no_conns);
    assert_int_equal(h->nresp, 3);
    assert_string_equal(h->r[0].body, "GET /echo/1 ? |");
    assert_string_equal(h->r[1].body, "POST /echo/2 ? |abc");
    assert_string_equal(h->r[2].body, "GET /echo/3 ? |");
    assert_string_equal(head_value(h->r[2].head, "Connection"), "close");
    assert_int_equal(h->ints[0], 1); /* closed after the Connection: close request */
    h_free(h);
}

static void c_chunked_body(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                "3\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: t\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
}

static void test_chunked_request(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_chunked_body, no_conns);
    assert_int_equal(h->r[0].status, 200);
    assert_string_equal(h->r[0].body, "POST /echo ? |hello");
    h_free(h);
}

static void c_too_large(struct harness *h) {
    struct client c;
    /* Content-Length over the limit, the whole body sent anyway: it is drained, then 413. */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    size_t blen = 300000;
    char *body = malloc(blen);
    memset(body, 'b', blen);
    cl_send(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n");
    h->ints[0] = write_all(c.fd, body, blen);
    cl_read_response(&c, next_resp(h), false);
    h->ints[1] = cl_wait_eof(&c);
    cl_close(&c);
    /* Chunked body over the limit. */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 8; i++) {
        cl_send(&c, "100\r\n");
        write_all(c.fd, body, 256);
        cl_send(&c, "\r\n");
    }
    cl_send(&c, "0\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
    /* Expect: 100-continue with a body over the limit: refused before it is sent. */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                "Expect: 100-continue\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
    /* A body within the limit after 100 Continue. */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_send(&c, "hello");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
    free(body);
}

static void test_body_limits(void **state) {
    http_server_config_t cfg = {.max_body_bytes = 1024, .drain_bytes = 1 << 20};
    struct harness *h = h_new(&cfg);
    h_run(h, c_too_large, no_conns);
    assert_int_equal(h->ints[0], 0); /* the client could send its whole body */
    assert_int_equal(h->nresp, 5);
    assert_int_equal(h->r[0].status, 413);
    assert_non_null(strstr(h->r[0].body, "\"error\": \"payload_too_large\""));
    assert_string_equal(head_value(h->r[0].head, "Content-Type"), "application/json");
    assert_string_equal(head_value(h->r[0].head, "Connection"), "close");
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->r[1].status, 413);
    assert_int_equal(h->r[2].status, 413);
    assert_int_equal(h->r[3].status, 100);
    assert_int_equal(h->r[4].status, 200);
    assert_string_equal(h->r[4].body, "POST /echo ? |hello");
    assert_int_equal(h->requests, 1); /* the handler never saw the oversized ones */
    h_free(h);
}

static void c_headers(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    char req[8192] = "GET /echo HTTP/1.1\r\n";
    for (int i = 0; i < 100; i++)
        snprintf(req + strlen(req), sizeof req - strlen(req), "X-H%d: v\r\n", i);
    snprintf(req + strlen(req), sizeof req - strlen(req), "\r\n");
    cl_send(&c, req);
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);

    if (cl_open(&c, h->port, 0) < 0)
        return;
    size_t big = 20000, cap = big + 100;
    char *r2 = malloc(cap);
    if (!r2) {
        cl_close(&c);
        return;
    }
    size_t l = (size_t)snprintf(r2, cap, "GET /echo HTTP/1.1\r\nX-Big: ");
    memset(r2 + l, 'v', big);
    snprintf(r2 + l + big, cap - l - big, "\r\n\r\n");
    cl_send(&c, r2);
    free(r2);
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
}

static void test_header_limits(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_headers, no_conns);
    assert_int_equal(h->nresp, 2);
    assert_int_equal(h->r[0].status, 431);
    assert_non_null(strstr(h->r[0].body, "too many request headers"));
    assert_int_equal(h->r[1].status, 431);
    assert_non_null(strstr(h->r[1].body, "headers_too_large"));
    assert_int_equal(h->requests, 0);
    h_free(h);
}

static void c_garbage(struct harness *h) {
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /echo HTTP/1.1\r\nBad Header\r\n\r\n",
        /* A coding we would not undo: 501, not gzip bytes as the body. */
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        /* A proxy in front could frame this body by its Content-Length; we would not. */
        "POST /echo HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct client c;
        if (cl_open(&c, h->port, 0) < 0)
            return;
        cl_send(&c, bad[i]);
        cl_read_response(&c, next_resp(h), false);
        h->ints[i] = cl_wait_eof(&c);
        cl_close(&c);
    }
}

static void test_bad_requests(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_garbage, no_conns);
    assert_int_equal(h->nresp, 7);
    for (int i = 0; i < 7; i++) {
        assert_int_equal(h->r[i].status, i == 5 ? 501 : 400);
        assert_non_null(strstr(h->r[i].body, i == 5 ? "\"error\": \"not_implemented\""
                                                    : "\"error\": \"bad_request\""));
        assert_int_equal(h->ints[i], 1);
    }
    assert_non_null(strstr(h->r[1].body, "percent"));
    assert_non_null(strstr(h->r[6].body, "whitespace in a header name"));
    assert_int_equal(h->requests, 0);
    h_free(h);
}

static void c_decode(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /dec/a%20b%2Fc?x=%41+b%2B&y=&z HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_send(&c, "GET http://example.org/dec/abs?x=1#frag HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
}

static void test_decoding(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_decode, no_conns);
    assert_int_equal(h->r[0].status, 200);
    assert_string_equal(h->r[0].body, "path=/dec/a b/c|x=A b+:4|y=:0|w=-2");
    assert_string_equal(h->r[1].body, "path=/dec/abs|x=1:1|y=:-2|w=-2");
    h_free(h);
}

static void test_query_param(void **state) {
    char buf[8];
    assert_int_equal(http_query_param("a=1&b=two&a=3", "a", buf, sizeof buf), 1);
    assert_string_equal(buf, "1");
    assert_int_equal(http_query_param("a=1&b=two", "b", buf, sizeof buf), 3);
    assert_string_equal(buf, "two");
    assert_int_equal(http_query_param("a%20b=x+y", "a b", buf, sizeof buf), 3);
    assert_string_equal(buf, "x y");
    assert_int_equal(http_query_param("flag&z=1", "flag", buf, sizeof buf), 0);
    assert_string_equal(buf, "");
    assert_int_equal(http_query_param("", "a", buf, sizeof buf), -ENOENT);
    assert_int_equal(http_query_param("ab=1", "a", buf, sizeof buf), -ENOENT);
    assert_int_equal(http_query_param("a=12345678", "a", buf, sizeof buf), -ENAMETOOLONG);
    assert_int_equal(http_query_param("a=%41%41%41%41%41%41%41", "a", buf, sizeof buf), 7);
    assert_string_equal(buf, "AAAAAAA");
    assert_int_equal(http_query_param("a=%zz", "a", buf, sizeof buf), -EINVAL);
    assert_int_equal(http_query_param("a=%00", "a", buf, sizeof buf), -EINVAL);
    assert_int_equal(http_query_param("a=%4", "a", buf, sizeof buf), -EINVAL);
    assert_int_equal(http_query_param("a=1", "a", buf, 0), -EINVAL);
}

static void c_async_stream(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /async HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_send(&c, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    /* pipelined behind an async response */
    cl_send(&c,
            "GET /async HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_read_response(&c, next_resp(h), false);
    cl_send(&c, "HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), true);
    cl_send(&c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
    /* HTTP/1.0: close by default, and a streamed body without chunking */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /stream HTTP/1.0\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
}

static void test_async_and_stream(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_async_stream, no_conns);
    assert_int_equal(h->nresp, 7);
    assert_int_equal(h->r[0].status, 200);
    assert_string_equal(h->r[0].body, "async");
    assert_int_equal(h->r[1].status, 200);
    assert_string_equal(head_value(h->r[1].head, "Transfer-Encoding"), "chunked");
    assert_string_equal(head_value(h->r[1].head, "X-Stream"), "yes");
    assert_null(head_value(h->r[1].head, "Content-Length"));
    assert_string_equal(h->r[1].body, "one\ntwo\nthree\n");
    assert_string_equal(h->r[2].body, "async");
    assert_string_equal(h->r[3].body, "GET /echo/after ? |");
    assert_int_equal(h->r[4].status, 200);
    assert_string_equal(head_value(h->r[4].head, "Content-Length"), "14"); /* "HEAD /echo ? |" */
    assert_int_equal(h->r[5].body_len, 1 << 20);
    bool ok = true;
    for (size_t i = 0; i < h->r[5].body_len; i++)
        ok &= h->r[5].body[i] == (char)('a' + i % 26);
    assert_true(ok);
    assert_string_equal(head_value(h->r[6].head, "Connection"), "close");
    assert_null(head_value(h->r[6].head, "Transfer-Encoding"));
    assert_string_equal(h->r[6].body, "one\ntwo\nthree\n");
    assert_int_equal(h->max_seen_conns, 1);
    h_free(h);
}

static void c_flood(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 4096) < 0)
        return;
    cl_send(&c, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n");
    /* Do not read until the server has given up on us. */
    struct timespec ts = {.tv_nsec = 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    while (cl_fill(&c) > 0)
        c.len = 0;
    cl_close(&c);
}

static void test_outbuf_limit(void **state) {
    http_server_config_t cfg = {.max_outbuf_bytes = 64 * 1024};
    struct harness *h = h_new(&cfg);
    h_run(h, c_flood, one_close);
    assert_true(h->enobufs_seen);
    assert_true(h->enobufs_outbuf > 0);
    assert_true(h->enobufs_outbuf <= 64 * 1024);
    assert_int_equal(h->closes, 1);
    h_free(h);
}

static void c_hold_and_leave(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    struct timespec ts = {.tv_nsec = 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    cl_close(&c);
}

static void test_peer_gone_mid_request(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_hold_and_leave, one_close);
    assert_int_equal(h->requests, 1);
    assert_int_equal(h->closes, 1);
    assert_null(h->pending);
    h_free(h);
}

static void c_hold_and_stay(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    h->held_fd = TAKE_FD(c.fd);
    cl_close(&c);
}

static bool one_request(struct harness *h) {
    return h->requests == 1;
}

static void test_destroy_closes(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_hold_and_stay, one_request);
    assert_int_equal(http_server_connection_count(h->srv), 1);
    assert_int_equal(h->closes, 0);
    http_server_destroy(&h->srv);
    assert_int_equal(h->closes, 1);
    h_free(h);
}

/* Two connections, a request on each, then a third connection whose answer (a refusal)
 * goes to ints[0] (read result) and ints[1] (closed after it). False if a connect failed. */
static bool two_then_a_third(struct harness *h, struct client *a, struct client *b) {
    struct client c;
    if (cl_open(a, h->port, 0) < 0 || cl_open(b, h->port, 0) < 0)
        return false;
    cl_send(a, "GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(a, next_resp(h), false);
    cl_send(b, "GET /echo/b HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(b, next_resp(h), false);
    if (cl_open(&c, h->port, 0) < 0)
        return false;
    h->ints[0] = cl_read_response(&c, next_resp(h), false);
    h->ints[1] = cl_wait_eof(&c);
    cl_close(&c);
    return true;
}

static void c_max_conns(struct harness *h) {
    struct client a, b;
    if (!two_then_a_third(h, &a, &b))
        return;
    cl_close(&a);
    cl_close(&b);
}

static void test_max_connections(void **state) {
    http_server_config_t cfg = {.max_connections = 2};
    struct harness *h = h_new(&cfg);
    h_run(h, c_max_conns, no_conns);
    assert_int_equal(h->r[0].status, 200);
    assert_int_equal(h->r[1].status, 200);
    assert_int_equal(h->ints[0], 0);
    assert_int_equal(h->r[2].status, 503);
    assert_non_null(strstr(h->r[2].body, "too_many_connections"));
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->max_seen_conns, 2);
    assert_int_equal(h->requests, 2);
    h_free(h);
}

static void c_max_conns_per_peer(struct harness *h) {
    struct client a, b, d;
    if (!two_then_a_third(h, &a, &b))
        return;
    /* A closed connection gives its slot back (once the server has seen the close). */
    cl_close(&a);
    struct resp *r = next_resp(h);
    for (int i = 0; i < 100; i++) {
        if (cl_open(&d, h->port, 0) < 0)
            return;
        cl_send(&d, "GET /echo/d HTTP/1.1\r\nHost: x\r\n\r\n");
        int rc = cl_read_response(&d, r, false);
        cl_close(&d);
        if (rc != 0 || r->status != 503)
            break; /* retried only while the server has not yet seen a's close */
        free(r->body);
        r->body = NULL;
        struct timespec ts = {.tv_nsec = 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cl_close(&b);
}

static void test_max_connections_per_peer(void **state) {
    http_server_config_t cfg = {.max_connections = 10, .max_connections_per_peer = 2};
    struct harness *h = h_new(&cfg);
    h_run(h, c_max_conns_per_peer, no_conns);
    assert_int_equal(h->r[0].status, 200);
    assert_int_equal(h->r[1].status, 200);
    assert_int_equal(h->ints[0], 0);
    assert_int_equal(h->r[2].status, 503);
    assert_non_null(strstr(h->r[2].body, "too_many_connections"));
    assert_non_null(strstr(h->r[2].body, "per client address"));
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->r[3].status, 200);
    assert_int_equal(h->max_seen_conns, 2);
    h_free(h);
}

static void c_handler_misuse(struct harness *h) {
    struct client c;
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /close HTTP/1.1\r\nHost: x\r\n\r\n");
    h->ints[0] = cl_wait_eof(&c);
    cl_close(&c);
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /twice HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
}

static void test_handler_misuse(void **state) {
    struct harness *h = h_new(NULL);
    h_run(h, c_handler_misuse, no_conns);
    assert_int_equal(h->ints[0], 1);
    assert_int_equal(h->twice_rc, -EINVAL);
    assert_string_equal(h->r[0].body, "first");
    assert_string_equal(h->r[1].body, "GET /echo/next ? |");
    assert_int_equal(h->closes, 2);
    h_free(h);
}

static void c_idle(struct harness *h) {
    struct client c;
    uint64_t t0 = now_mono_ms();
    /* idle keep-alive connection */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    h->ints[0] = cl_wait_eof(&c);
    cl_close(&c);
    /* a request that never completes */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /echo HTTP/1.1\r\nHost:");
    h->ints[1] = cl_wait_eof(&c);
    cl_close(&c);
    /* a connection that never sends anything */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    h->ints[2] = cl_wait_eof(&c);
    cl_close(&c);
    h->ints[3] = (int)(now_mono_ms() - t0);
    /* HTTP/1.0 closes by default; keep-alive when asked */
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /echo HTTP/1.0\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    h->ints[4] = cl_wait_eof(&c);
    cl_close(&c);
    if (cl_open(&c, h->port, 0) < 0)
        return;
    cl_send(&c, "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_send(&c, "GET /echo/2 HTTP/1.0\r\n\r\n");
    cl_read_response(&c, next_resp(h), false);
    cl_close(&c);
}

static void test_idle_timeout(void **state) {
    http_server_config_t cfg = {.idle_timeout_ms = 200};
    struct harness *h = h_new(&cfg);
    h_run(h, c_idle, no_conns);
    assert_int_equal(h->ints[0], 1);
    assert_int_equal(h->ints[1], 1);
    assert_int_equal(h->ints[2], 1);
    assert_true(h->ints[3] >= 3 * 200);
    assert_true(h->ints[3] < 3 * 200 + 3000);
    assert_string_equal(head_value(h->r[1].head, "Connection"), "close");
    assert_int_equal(h->ints[4], 1);
    assert_string_equal(head_value(h->r[2].head, "Connection"), "keep-alive");
    assert_string_equal(h->r[3].body, "GET /echo/2 ? |");
    h_free(h);
}

static void test_status_text(void **state) {
    assert_string_equal(http_status_text(404), "Not Found");
    assert_string_equal(http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_text(799), "Unknown");
    loop_t *loop = loop_new(0);
    static const http_handlers_t handlers = {.on_request = on_request};
    http_server_t *s = http_server_new(loop, NULL, &handlers, NULL);
    assert_non_null(s);
    assert_int_equal(http_server_listen(s, "not-an-address", 0), -EINVAL);
    assert_int_equal(http_server_listen(s, "::1", 0), 0);
    assert_true(http_server_port(s) > 0);
    assert_int_equal(http_server_listen(s, "::1", 0), -EALREADY);
    http_server_destroy(&s);
    http_server_destroy(&s);
    loop_destroy(&loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_post_keepalive),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_chunked_request),
        cmocka_unit_test(test_body_limits),
        cmocka_unit_test(test_header_limits),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_decoding),
        cmocka_unit_test(test_query_param),
        cmocka_unit_test(test_async_and_stream),
        cmocka_unit_test(test_outbuf_limit),
        cmocka_unit_test(test_peer_gone_mid_request),
        cmocka_unit_test(test_destroy_closes),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_max_connections_per_peer),
        cmocka_unit_test(test_handler_misuse),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_status_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
