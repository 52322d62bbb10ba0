/* The HTTP/1.1 server behind http.h: a non-blocking listener on the event loop, one state
 * machine per connection (reading a request, handing it to the handler, flushing a final
 * response, lingering after a close), nodejs http-parser for the wire format.
 *
 * Memory is per connection and reused across requests: a fixed 16 KiB read buffer inside the
 * connection, an "arena" that holds the current request's copied-out strings (URL, lowercased
 * header names, values, decoded path, query, body), the header arrays and an output buffer.
 * They only grow to the configured bounds and are released when a connection goes idle with
 * a large one, so a steady stream of requests costs no malloc. Because the parser's input is
 * copied out, the read buffer can be compacted at any time and pipelined bytes simply wait in
 * it. Re-entrancy is handled with a busy count: a connection closed from inside one of its own
 * callbacks is unlinked at once but freed only when the outermost frame unwinds, and response
 * calls never run user callbacks themselves (follow-up work goes through loop_defer()). */
#include "http.h"
#include "util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <http_parser.h>

/* The parser consumes everything it is fed except while a request is being handled, so the
 * read buffer only has to hold pipelined backlog; when it is full, reading pauses. */
#define RBUF_SIZE    (16u * 1024)
#define ACCEPT_BATCH 64 /* accepts per wake-up, so a connect storm cannot starve the rest */
#define READ_BATCH   4  /* reads per wake-up for the same reason */
#define LINGER_MS    2000u
#define KEEP_BYTES   (64u * 1024) /* bigger arenas/outbufs are freed when a connection idles */
#define ARENA_INIT   2048u
#define HDRS_INIT    16u

#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif

enum conn_state {
    C_READING,  /* parsing a request (or waiting for one) */
    C_HANDLING, /* request delivered, response not complete */
    C_CLOSING,  /* final response complete, flushing it */
    C_LINGER,   /* SHUT_WR done; reading and discarding until EOF so the peer gets no reset */
};

enum last_cb { CB_NONE, CB_URL, CB_FIELD, CB_VALUE };

struct hdr_off {
    size_t name, name_len, value, value_len; /* offsets into the arena */
};

struct http_server {
    loop_t *loop;
    http_server_config_t cfg;
    http_handlers_t h;
    void *arg;
    int lfd;
    uint16_t port;
    bool accept_paused;
    loop_watch_t *lwatch;
    loop_watch_t *sweep;
    http_conn_t *head;
    size_t nconns;
};

struct http_conn {
    http_server_t *server; /* NULL once closed */
    http_conn_t *prev, *next;
    int fd;
    loop_watch_t *watch;
    unsigned events;
    enum conn_state state;
    http_parser parser;

    /* the request being parsed or handled */
    char *arena;
    size_t alen, acap;
    struct hdr_off *hoff;
    http_header_t *hdrs;
    size_t nhdr, hcap;
    size_t url_len, hdr_bytes, body_off, body_len, body_seen;
    enum last_cb last;
    bool in_message, headers_done, too_large, is_head;
    int err_status;
    const char *err_detail;
    http_request_t req;

    /* the response */
    char *obuf;
    size_t opos, olen, ocap;
    bool resp_started, streaming, chunked_out, keep_alive;

    uint64_t deadline_ms;  /* READING: request must be complete; LINGER: give up */
    uint64_t wprogress_ms; /* last output progress, for the write-stall timeout */
    size_t lingered;
    void *user;
    unsigned busy;
    bool closed, defer_pending, peer_eof, broken, expired;
    bool has_peer_key;
    uint8_t peer_key[16]; /* whose connection it is, for max_connections_per_peer */
    char peer[64];

    size_t rpos, rlen;
    char rbuf[RBUF_SIZE];
};

static const http_server_config_t defaults = {
    .max_header_bytes = 16 * 1024,
    .max_headers = 64,
    .max_body_bytes = 2 * 1024 * 1024,
    .drain_bytes = 8 * 1024 * 1024,
    .max_connections = 1024,
    .max_connections_per_peer = SIZE_MAX,
    .max_outbuf_bytes = 8 * 1024 * 1024,
    .idle_timeout_ms = 60000,
};

static void conn_advance(http_conn_t *c);
static void conn_close_internal(http_conn_t *c);

/* ---- small helpers ----------------------------------------------------------------------- */

static inline char lower(char ch) {
    return ch >= 'A' && ch <= 'Z' ? (char)(ch + ('a' - 'A')) : ch;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Decodes src into dst (room for len bytes). %00 is refused because every consumer treats the
 * result as a C string, and a hidden NUL is the classic way to make two checks disagree. */
static ssize_t pct_decode(const char *src, size_t len, char *dst, bool plus_space) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = src[i];
        if (ch == '%') {
            if (i + 2 >= len)
                return -EINVAL;
            int hi = hexval(src[i + 1]), lo = hexval(src[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -EINVAL;
            dst[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (ch == '+' && plus_space) {
            dst[o++] = ' ';
        } else {
            dst[o++] = ch;
        }
    }
    return (ssize_t)o;
}

static uint64_t sat_add(uint64_t a, uint64_t b) {
    return a + b < a ? UINT64_MAX : a + b;
}

/* ---- arena and output buffer ------------------------------------------------------------- */

static int grow(char **buf, size_t *cap, size_t need, size_t init) {
    if (*cap >= need)
        return 0;
    size_t ncap = *cap ? *cap : init;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return -ENOMEM;
        ncap *= 2;
    }
    char *p = realloc(*buf, ncap);
    if (!p)
        return -ENOMEM;
    *buf = p;
    *cap = ncap;
    return 0;
}

static int arena_reserve(http_conn_t *c, size_t n) {
    if (n > SIZE_MAX - c->alen)
        return -ENOMEM;
    return grow(&c->arena, &c->acap, c->alen + n, ARENA_INIT);
}

static int arena_append(http_conn_t *c, const char *data, size_t len) {
    int r = arena_reserve(c, len);
    if (r < 0)
        return r;
    if (len)
        memcpy(c->arena + c->alen, data, len);
    c->alen += len;
    return 0;
}

/* Ends the current token; tokens are C strings for the handler. */
static int arena_nul(http_conn_t *c) {
    int r = arena_reserve(c, 1);
    if (r < 0)
        return r;
    c->arena[c->alen++] = '\0';
    return 0;
}

static int hdrs_reserve(http_conn_t *c) {
    if (c->nhdr < c->hcap)
        return 0;
    size_t ncap = c->hcap ? c->hcap * 2 : HDRS_INIT;
    struct hdr_off *ho = realloc(c->hoff, ncap * sizeof *ho);
    if (!ho)
        return -ENOMEM;
    c->hoff = ho;
    http_header_t *h = realloc(c->hdrs, ncap * sizeof *h);
    if (!h)
        return -ENOMEM;
    c->hdrs = h;
    c->hcap = ncap;
    return 0;
}

/* Makes room for n more output bytes; pending bytes move to the front first so the buffer only
 * grows when the pending amount itself does. */
static int ob_reserve(http_conn_t *c, size_t n) {
    if (c->ocap - c->olen >= n)
        return 0;
    if (c->opos > 0) {
        memmove(c->obuf, c->obuf + c->opos, c->olen - c->opos);
        c->olen -= c->opos;
        c->opos = 0;
        if (c->ocap - c->olen >= n)
            return 0;
    }
    if (n > SIZE_MAX - c->olen)
        return -ENOMEM;
    return grow(&c->obuf, &c->ocap, c->olen + n, 4096);
}

static int ob_append(http_conn_t *c, const void *data, size_t len) {
    if (len == 0)
        return 0;
    int r = ob_reserve(c, len);
    if (r < 0)
        return r;
    if (c->opos == c->olen)
        c->wprogress_ms = now_mono_ms();
    memcpy(c->obuf + c->olen, data, len);
    c->olen += len;
    return 0;
}

static int ob_str(http_conn_t *c, const char *s) {
    return ob_append(c, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static int ob_printf(http_conn_t *c, const char *fmt, ...) {
    for (int attempt = 0; attempt < 2; attempt++) {
        size_t room = c->ocap - c->olen;
        va_list ap;
        va_start(ap, fmt);
        /* No room means possibly no buffer yet, and NULL + 0 is not valid C. */
        int n = vsnprintf(room ? c->obuf + c->olen : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return -EINVAL;
        if ((size_t)n < room) {
            if (c->opos == c->olen)
                c->wprogress_ms = now_mono_ms();
            c->olen += (size_t)n;
            return 0;
        }
        int r = ob_reserve(c, (size_t)n + 1);
        if (r < 0)
            return r;
    }
    return -EINVAL;
}

/* ---- output ------------------------------------------------------------------------------ */

static void conn_mark_progress(http_conn_t *c) {
    c->wprogress_ms = now_mono_ms();
    if (c->opos == c->olen) {
        c->opos = c->olen = 0;
        /* A keep-alive connection becomes idle only once its last response has left. */
        if (c->state == C_READING && !c->in_message && c->server)
            c->deadline_ms = c->wprogress_ms + c->server->cfg.idle_timeout_ms;
    }
}

/* Sends what is pending; never calls back. A hard error marks the connection broken and the
 * next entry point closes it. */
static void conn_flush(http_conn_t *c) {
    while (c->opos < c->olen && !c->broken) {
        size_t want = c->olen - c->opos;
        ssize_t n = send(c->fd, c->obuf + c->opos, want, MSG_NOSIGNAL);
        if (n > 0) {
            c->opos += (size_t)n;
            conn_mark_progress(c);
            if ((size_t)n < want)
                break; /* the socket is full; EPOLLOUT will tell */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        c->broken = true;
        c->opos = c->olen = 0;
    }
}

/* Queues the pending output plus iov (at most 3 parts). When the socket is not known to be
 * full, everything goes out in one sendmsg (no copy of large bodies); only what the kernel
 * refuses is copied into the output buffer. */
static int conn_queue(http_conn_t *c, const struct iovec *iov, int n) {
    size_t sent_of[3] = {0};
    if (c->broken)
        return -EPIPE;
    if (n > 3)
        return -EINVAL;
    if (!(c->events & LOOP_WRITE)) {
        struct iovec v[4];
        int cnt = 0;
        size_t pend = c->olen - c->opos;
        if (pend)
            v[cnt++] = (struct iovec){c->obuf + c->opos, pend};
        for (int i = 0; i < n; i++)
            if (iov[i].iov_len)
                v[cnt++] = iov[i];
        if (cnt > 0) {
            struct msghdr msg = {.msg_iov = v, .msg_iovlen = (size_t)cnt};
            ssize_t sent;
            do
                sent = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
            while (sent < 0 && errno == EINTR);
            if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                c->broken = true;
                c->opos = c->olen = 0;
                return -EPIPE;
            }
            size_t done = sent > 0 ? (size_t)sent : 0;
            size_t take = MIN(done, pend);
            c->opos += take;
            done -= take;
            for (int i = 0; i < n; i++) {
                sent_of[i] = MIN(done, iov[i].iov_len);
                done -= sent_of[i];
            }
            if (sent > 0)
                conn_mark_progress(c);
        }
    }
    for (int i = 0; i < n; i++) {
        if (iov[i].iov_len > sent_of[i]) {
            int r = ob_append(c, (const char *)iov[i].iov_base + sent_of[i],
                              iov[i].iov_len - sent_of[i]);
            if (r < 0) {
                /* A response with a hole in it cannot be repaired: give up the connection. */
                c->broken = true;
                return r;
            }
        }
    }
    return 0;
}

/* ---- connection lifecycle ---------------------------------------------------------------- */

static void conn_update_events(http_conn_t *c) {
    if (c->closed)
        return;
    unsigned want = 0;
    if (!c->peer_eof) {
        bool discard = c->state == C_CLOSING || c->state == C_LINGER;
        if (discard || c->rlen < RBUF_SIZE || c->rpos > 0)
            want |= LOOP_READ;
    }
    if (c->opos < c->olen)
        want |= LOOP_WRITE;
    if (want != c->events && loop_io_mod(c->server->loop, c->watch, want) == 0)
        c->events = want;
}

static void conn_free(http_conn_t *c) {
    free(c->arena);
    free(c->hoff);
    free(c->hdrs);
    free(c->obuf);
    free(c);
}

/* Frees a closed connection once no frame of ours is using it and no deferred call is queued. */
static void conn_release(http_conn_t *c) {
    if (c->closed && c->busy == 0 && !c->defer_pending)
        conn_free(c);
}

static void conn_unlink(http_conn_t *c) {
    http_server_t *s = c->server;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->nconns--;
}

static void conn_close_internal(http_conn_t *c) {
    if (c->closed)
        return;
    http_server_t *s = c->server;
    /* The watch goes through a local so that no pointer into c escapes: c->closed and the
     * other fields are then provably untouched by loop_watch_del(). */
    loop_watch_t *w = c->watch;
    c->watch = NULL;
    c->closed = true;
    loop_watch_del(s->loop, &w);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    conn_unlink(c);
    c->server = NULL;
    void *user = c->user;
    if (user && s->h.on_close)
        s->h.on_close(c, user, s->arg);
    c->user = NULL;
}

static void conn_deferred(loop_t *loop, void *arg) {
    http_conn_t *c = arg;
    c->defer_pending = false;
    if (!c->closed) {
        c->busy++;
        conn_advance(c);
        c->busy--;
    }
    conn_release(c);
}

static void conn_schedule(http_conn_t *c) {
    /* On ENOMEM the next socket event or the sweep picks the work up instead. */
    if (!c->defer_pending && loop_defer(c->server->loop, conn_deferred, c) == 0)
        c->defer_pending = true;
}

/* Called by the response functions, which must not call back into the handler: work that
 * may (closing, parsing the next pipelined request) is deferred unless an entry point of this
 * connection is on the stack and will do it on the way out. */
static void conn_poke(http_conn_t *c) {
    if (c->busy)
        return;
    bool flushed = c->opos == c->olen;
    if (c->broken || (flushed && (c->state == C_CLOSING ||
                                  (c->state == C_READING && (c->rpos < c->rlen || c->peer_eof)))))
        conn_schedule(c);
    conn_update_events(c);
}

static void conn_response_done(http_conn_t *c) {
    c->streaming = false;
    if (c->keep_alive) {
        c->state = C_READING;
        c->deadline_ms = now_mono_ms() + c->server->cfg.idle_timeout_ms;
    } else {
        c->state = C_CLOSING;
    }
    conn_poke(c);
}

/* ---- responses --------------------------------------------------------------------------- */

static bool status_has_body(int status) {
    return status >= 200 && status != 204 && status != 304;
}

static int conn_head(http_conn_t *c, int status, const char *ctype, const char *extra, bool stream,
                     size_t len) {
    int r = ob_printf(c, "HTTP/1.1 %d %s\r\n", status, http_status_text(status));
    if (r >= 0 && ctype && *ctype)
        r = ob_printf(c, "Content-Type: %s\r\n", ctype);
    if (r >= 0 && stream && c->chunked_out)
        r = ob_str(c, "Transfer-Encoding: chunked\r\n");
    else if (r >= 0 && !stream && status_has_body(status))
        r = ob_printf(c, "Content-Length: %zu\r\n", len);
    if (r >= 0)
        r = ob_str(c, c->keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    if (r >= 0 && extra && *extra) {
        size_t el = strlen(extra);
        r = ob_append(c, extra, el);
        if (r >= 0 && (el < 2 || extra[el - 2] != '\r' || extra[el - 1] != '\n'))
            r = ob_str(c, "\r\n");
    }
    if (r >= 0)
        r = ob_str(c, "\r\n");
    return r;
}

static int conn_check_respond(const http_conn_t *c) {
    if (!c)
        return -EINVAL;
    if (c->closed)
        return -ENOTCONN;
    if (c->state != C_HANDLING || c->resp_started)
        return -EINVAL;
    if (c->broken)
        return -EPIPE;
    return 0;
}

int http_conn_respond(http_conn_t *c, int status, const char *content_type,
                      const char *extra_headers, const char *body, size_t len) {
    int r = conn_check_respond(c);
    if (r < 0)
        return r;
    if ((len && !body) || status < 100 || status > 999)
        return -EINVAL;
    size_t pending = c->olen - c->opos;
    r = conn_head(c, status, content_type, extra_headers, false, len);
    if (r < 0) {
        c->olen = c->opos + pending; /* drop the partial head; ob_reserve keeps pending in front */
        return r;
    }
    c->resp_started = true;
    struct iovec iov = {(void *)body, (c->is_head || !status_has_body(status)) ? 0 : len};
    r = conn_queue(c, &iov, 1);
    conn_response_done(c);
    return r;
}

static size_t json_escape(char *dst, const char *s) {
    size_t o = 0;
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)sprintf(dst + o, "\\u%04x", ch);
        } else {
            dst[o++] = (char)ch;
        }
    }
    return o;
}

int http_conn_respond_error(http_conn_t *c, int status, const char *error, const char *detail) {
    int r = conn_check_respond(c);
    if (r < 0)
        return r;
    error = error ? error : "error";
    detail = detail ? detail : "";
    size_t el = strlen(error), dl = strlen(detail);
    if (el > 4096 || dl > 65536)
        return -EINVAL;
    size_t need = 32 + 6 * (el + dl); /* 27 bytes of framing, the NUL, escapes up to 6x */
    char stackbuf[1024];
    _cleanup_free_ char *heap = NULL;
    char *b = stackbuf;
    if (need > sizeof stackbuf) {
        heap = malloc(need);
        if (!heap)
            return -ENOMEM;
        b = heap;
    }
    /* stpcpy keeps b a terminated string at every step. */
    char *p = stpcpy(b, "{\"error\": \"");
    p += json_escape(p, error);
    p = stpcpy(p, "\", \"detail\": \"");
    p += json_escape(p, detail);
    p = stpcpy(p, "\"}");
    return http_conn_respond(c, status, "application/json", NULL, b, (size_t)(p - b));
}

int http_conn_stream_begin(http_conn_t *c, int status, const char *content_type,
                           const char *extra_headers) {
    int r = conn_check_respond(c);
    if (r < 0)
        return r;
    if (status < 200 || status > 999)
        return -EINVAL;
    /* HTTP/1.0 has no chunked coding: the body then ends with the connection. */
    c->chunked_out =
        c->parser.http_major > 1 || (c->parser.http_major == 1 && c->parser.http_minor >= 1);
    bool saved_ka = c->keep_alive;
    if (!c->chunked_out)
        c->keep_alive = false;
    size_t pending = c->olen - c->opos;
    r = conn_head(c, status, content_type, extra_headers, true, 0);
    if (r < 0) {
        c->olen = c->opos + pending;
        c->keep_alive = saved_ka;
        return r;
    }
    c->resp_started = true;
    c->streaming = true;
    r = conn_queue(c, NULL, 0);
    conn_poke(c);
    return r;
}

int http_conn_stream_write(http_conn_t *c, const void *data, size_t len) {
    if (!c || (len && !data))
        return -EINVAL;
    if (c->closed)
        return -ENOTCONN;
    if (!c->streaming)
        return -EINVAL;
    if (c->broken)
        return -EPIPE;
    if (len == 0 || c->is_head)
        return 0; /* an empty chunk would end the body */
    /* A single write larger than the limit is let through on an empty buffer so a producer
     * can never be stuck; otherwise the limit is strict. */
    size_t pending = c->olen - c->opos;
    if (pending > 0 && (pending > c->server->cfg.max_outbuf_bytes ||
                        len > c->server->cfg.max_outbuf_bytes - pending))
        return -ENOBUFS;
    int r;
    if (c->chunked_out) {
        char hdr[24];
        int hl = snprintf(hdr, sizeof hdr, "%zx\r\n", len);
        r = ob_append(c, hdr, (size_t)hl);
        if (r < 0)
            return r;
        /* The CRLF goes out with the data: a client reading chunk by chunk blocks on it. */
        struct iovec iov[2] = {{(void *)data, len}, {(void *)"\r\n", 2}};
        r = conn_queue(c, iov, 2);
    } else {
        struct iovec iov = {(void *)data, len};
        r = conn_queue(c, &iov, 1);
    }
    conn_poke(c);
    return r;
}

int http_conn_stream_end(http_conn_t *c) {
    if (!c)
        return -EINVAL;
    if (c->closed)
        return -ENOTCONN;
    if (!c->streaming)
        return -EINVAL;
    int r = 0;
    if (c->chunked_out && !c->is_head && !c->broken) {
        struct iovec iov = {(void *)"0\r\n\r\n", 5};
        r = conn_queue(c, &iov, 1);
    }
    conn_response_done(c);
    return r;
}

size_t http_conn_outbuf_len(const http_conn_t *c) {
    return c ? c->olen - c->opos : 0;
}

/* A server-generated error (400/413/431/500): always the last response on the connection. */
static void conn_fail(http_conn_t *c, int status, const char *detail) {
    const char *error = status == 413   ? "payload_too_large"
                        : status == 431 ? "headers_too_large"
                        : status == 501 ? "not_implemented"
                        : status >= 500 ? "internal_error"
                                        : "bad_request";
    c->in_message = false;
    c->keep_alive = false;
    c->is_head = false;
    c->state = C_HANDLING;
    c->resp_started = false;
    c->streaming = false;
    c->rpos = c->rlen = 0;
    if (http_conn_respond_error(c, status, error, detail) < 0) {
        c->broken = true;
        c->state = C_CLOSING;
    }
}

/* ---- parser callbacks -------------------------------------------------------------------- */

static int cb_fail(http_conn_t *c, int status, const char *detail) {
    c->err_status = status;
    c->err_detail = detail;
    return -1;
}

static int hdr_account(http_conn_t *c, size_t len) {
    c->hdr_bytes += len;
    if (c->hdr_bytes > c->server->cfg.max_header_bytes)
        return cb_fail(c, 431, "request headers too large");
    return 0;
}

static int on_message_begin(http_parser *p) {
    http_conn_t *c = p->data;
    c->in_message = true;
    c->alen = c->nhdr = c->hdr_bytes = c->url_len = 0;
    c->body_off = c->body_len = c->body_seen = 0;
    c->last = CB_URL;
    c->headers_done = c->too_large = false;
    c->err_status = 0;
    c->err_detail = NULL;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
    http_conn_t *c = p->data;
    if (hdr_account(c, len))
        return -1;
    if (arena_append(c, at, len) < 0)
        return cb_fail(c, 500, "out of memory");
    c->url_len += len;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
    http_conn_t *c = p->data;
    if (hdr_account(c, len))
        return -1;
    if (c->headers_done)
        return 0; /* chunked trailers: counted against the limit, not kept */
    if (c->last != CB_FIELD) {
        if (c->nhdr >= c->server->cfg.max_headers)
            return cb_fail(c, 431, "too many request headers");
        if (hdr_account(c, 4))
            return -1;
        /* The NUL ends the previous token (the URL or the last value). */
        if (hdrs_reserve(c) < 0 || arena_nul(c) < 0)
            return cb_fail(c, 500, "out of memory");
        c->hoff[c->nhdr++] = (struct hdr_off){.name = c->alen};
        c->last = CB_FIELD;
    }
    /* http-parser (built lenient) lets whitespace into a name: "Content-Length : 5" would
     * frame the body one way here and another way in a proxy in front (RFC 9112 5.1). */
    if (memchr(at, ' ', len) || memchr(at, '\t', len))
        return cb_fail(c, 400, "whitespace in a header name");
    size_t off = c->alen;
    if (arena_append(c, at, len) < 0)
        return cb_fail(c, 500, "out of memory");
    for (size_t i = off; i < c->alen; i++)
        c->arena[i] = lower(c->arena[i]);
    c->hoff[c->nhdr - 1].name_len += len;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    http_conn_t *c = p->data;
    if (hdr_account(c, len))
        return -1;
    if (c->headers_done)
        return 0;
    if (c->nhdr == 0)
        return cb_fail(c, 400, "header value without a name");
    struct hdr_off *h = &c->hoff[c->nhdr - 1];
    if (c->last != CB_VALUE) {
        if (arena_nul(c) < 0)
            return cb_fail(c, 500, "out of memory");
        h->value = c->alen;
        h->value_len = 0;
        c->last = CB_VALUE;
    }
    if (arena_append(c, at, len) < 0)
        return cb_fail(c, 500, "out of memory");
    h->value_len += len;
    return 0;
}

static int on_headers_complete(http_parser *p) {
    http_conn_t *c = p->data;
    const http_server_config_t *cfg = &c->server->cfg;
    if (arena_nul(c) < 0)
        return cb_fail(c, 500, "out of memory");
    c->headers_done = true;
    c->last = CB_NONE;

    bool expect = false;
    for (size_t i = 0; i < c->nhdr; i++) {
        struct hdr_off *h = &c->hoff[i];
        if (h->value == 0) /* no value callback ever came: use the NUL after the name */
            h->value = h->name + h->name_len;
        while (h->value_len && (c->arena[h->value + h->value_len - 1] == ' ' ||
                                c->arena[h->value + h->value_len - 1] == '\t'))
            h->value_len--;
        c->arena[h->value + h->value_len] = '\0';
        if (h->name_len == 6 && memcmp(c->arena + h->name, "expect", 6) == 0 &&
            strcasecmp(c->arena + h->value, "100-continue") == 0)
            expect = true;
        /* chunked is the only transfer coding we decode (http-parser takes any list that
         * ends with it, and would hand us, say, gzip bytes as the body). */
        if (h->name_len == 17 && memcmp(c->arena + h->name, "transfer-encoding", 17) == 0 &&
            strcasecmp(c->arena + h->value, "chunked") != 0)
            return cb_fail(c, 501, "unsupported transfer coding (only chunked is)");
    }

    bool chunked = p->flags & F_CHUNKED;
    uint64_t cl = p->content_length;
    bool has_len = !chunked && cl != ULLONG_MAX && cl > 0;
    c->body_off = c->alen;
    if (has_len && cl > cfg->max_body_bytes)
        c->too_large = true;
    if (expect && p->http_major == 1 && p->http_minor >= 1) {
        /* The client waits for our word before sending the body: refusing now saves it. */
        if (c->too_large)
            return cb_fail(c, 413, "request body too large");
        if ((chunked || has_len) && ob_str(c, "HTTP/1.1 100 Continue\r\n\r\n") < 0)
            return cb_fail(c, 500, "out of memory");
    }
    if (has_len && !c->too_large && arena_reserve(c, (size_t)cl + 1) < 0)
        return cb_fail(c, 500, "out of memory");
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    http_conn_t *c = p->data;
    const http_server_config_t *cfg = &c->server->cfg;
    c->body_seen += len;
    if (!c->too_large && c->body_seen > cfg->max_body_bytes)
        c->too_large = true;
    if (c->too_large) {
        /* Keep reading (and dropping) so the client, still sending, can read the 413. */
        if (c->body_seen > sat_add(cfg->max_body_bytes, cfg->drain_bytes))
            return cb_fail(c, 413, "request body too large");
        return 0;
    }
    if (arena_append(c, at, len) < 0)
        return cb_fail(c, 500, "out of memory");
    c->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p) {
    http_conn_t *c = p->data;
    c->in_message = false;
    if (c->too_large)
        return cb_fail(c, 413, "request body too large");
    /* One request in flight: the rest of the buffer waits until the response is complete. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- request delivery -------------------------------------------------------------------- */

/* Splits the request target into path and query. Origin-form ("/p?q"), absolute-form
 * ("http://h/p?q", which HTTP/1.1 servers must accept) and "*" are taken; the fragment, which
 * clients should not send, is dropped. */
static int split_target(const char *u, size_t len, const char **ret_path, size_t *ret_plen,
                        size_t *ret_qs, size_t *ret_qlen) {
    size_t start;
    if (len == 1 && u[0] == '*') {
        *ret_path = u;
        *ret_plen = 1;
        *ret_qs = *ret_qlen = 0;
        return 0;
    }
    if (len > 0 && u[0] == '/') {
        start = 0;
    } else if (len > 7 &&
               (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0)) {
        start = u[4] == ':' ? 7 : 8;
        while (start < len && u[start] != '/' && u[start] != '?' && u[start] != '#')
            start++;
    } else {
        return -EINVAL;
    }
    size_t pe = start;
    while (pe < len && u[pe] != '?' && u[pe] != '#')
        pe++;
    if (pe == start) {
        *ret_path = "/";
        *ret_plen = 1;
    } else {
        *ret_path = u + start;
        *ret_plen = pe - start;
    }
    *ret_qs = *ret_qlen = 0;
    if (pe < len && u[pe] == '?') {
        size_t qe = pe + 1;
        while (qe < len && u[qe] != '#')
            qe++;
        *ret_qs = pe + 1;
        *ret_qlen = qe - pe - 1;
    }
    return 0;
}

static void conn_deliver(http_conn_t *c) {
    http_server_t *s = c->server;
    http_parser *p = &c->parser;
    size_t url_len = c->url_len;
    /* Every append first, pointers last: an append may move the arena. */
    if (arena_reserve(c, 2 * url_len + 4) < 0) {
        conn_fail(c, 500, "out of memory");
        return;
    }
    c->arena[c->alen++] = '\0'; /* ends the body */
    const char *path;
    size_t plen, qs, qlen;
    if (split_target(c->arena, url_len, &path, &plen, &qs, &qlen) < 0) {
        conn_fail(c, 400, "unsupported request target");
        return;
    }
    size_t path_off = c->alen;
    ssize_t dl = pct_decode(path, plen, c->arena + c->alen, false);
    if (dl < 0) {
        conn_fail(c, 400, "invalid percent-encoding in path");
        return;
    }
    c->alen += (size_t)dl;
    c->arena[c->alen++] = '\0';
    size_t query_off = c->alen;
    memcpy(c->arena + c->alen, c->arena + qs, qlen);
    c->alen += qlen;
    c->arena[c->alen++] = '\0';

    for (size_t i = 0; i < c->nhdr; i++)
        c->hdrs[i] = (http_header_t){c->arena + c->hoff[i].name, c->arena + c->hoff[i].value};
    bool upgrade = p->upgrade;
    c->req = (http_request_t){
        .method = http_method_str((enum http_method)p->method),
        .path = c->arena + path_off,
        .query = c->arena + query_off,
        .raw_target = c->arena,
        .headers = c->hdrs,
        .nheaders = c->nhdr,
        .body = c->arena + c->body_off,
        .body_len = c->body_len,
        .keep_alive = http_should_keep_alive(p) && !upgrade,
        .upgrade = upgrade,
    };
    c->keep_alive = c->req.keep_alive;
    c->is_head = p->method == HTTP_HEAD;
    c->state = C_HANDLING;
    c->resp_started = c->streaming = false;
    s->h.on_request(c, &c->req, s->arg);
}

/* Parses buffered bytes while the connection is ready for a request. Only called from an
 * entry point (busy > 0), since it calls the handler. */
static void conn_process(http_conn_t *c) {
    while (!c->closed && !c->broken && c->state == C_READING && c->rpos < c->rlen) {
        if (!c->in_message && c->opos < c->olen)
            break; /* the previous response is still leaving: backpressure for pipelining */
        size_t avail = c->rlen - c->rpos;
        size_t n = http_parser_execute(&c->parser, &parser_settings, c->rbuf + c->rpos, avail);
        c->rpos += n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (c->opos < c->olen)
            conn_flush(c); /* "100 Continue" */
        if (c->err_status) {
            conn_fail(c, c->err_status, c->err_detail);
            break;
        }
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            if (c->rpos == c->rlen)
                c->rpos = c->rlen = 0;
            conn_deliver(c);
            continue;
        }
        if (e != HPE_OK || n != avail) {
            conn_fail(c, e == HPE_HEADER_OVERFLOW ? 431 : 400,
                      e != HPE_OK ? http_errno_description(e) : "malformed request");
            break;
        }
        c->rpos = c->rlen = 0;
    }
    if (c->closed || c->state != C_READING)
        return;
    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
        if (c->peer_eof) {
            /* Nothing more can arrive: finish the last response, if any, then close. */
            if (c->opos < c->olen)
                c->state = C_CLOSING;
            else
                conn_close_internal(c);
        }
    }
}

static void conn_shrink(http_conn_t *c) {
    if (c->acap > KEEP_BYTES) {
        free(c->arena);
        c->arena = NULL;
        c->acap = c->alen = 0;
    }
    if (c->ocap > KEEP_BYTES && c->olen == 0) {
        free(c->obuf);
        c->obuf = NULL;
        c->ocap = c->opos = c->olen = 0;
    }
}

/* Moves the connection forward after I/O or a handler's response. Entry points only. */
static void conn_advance(http_conn_t *c) {
    for (int guard = 0; guard < 64 && !c->closed; guard++) {
        if (c->opos < c->olen)
            conn_flush(c);
        if (c->broken) {
            conn_close_internal(c);
            return;
        }
        if (c->opos < c->olen)
            break;
        if (c->state == C_CLOSING) {
            if (c->peer_eof) {
                conn_close_internal(c);
                return;
            }
            /* Half-close and keep reading: closing with unread input would send a reset that
             * can destroy the response before the peer reads it. */
            shutdown(c->fd, SHUT_WR);
            c->state = C_LINGER;
            c->deadline_ms =
                now_mono_ms() + MIN((uint64_t)LINGER_MS, c->server->cfg.idle_timeout_ms);
            c->rpos = c->rlen = 0;
            c->lingered = 0;
            break;
        }
        if (c->state == C_READING && !c->in_message)
            conn_shrink(c);
        if (c->state == C_READING && (c->rpos < c->rlen || c->peer_eof)) {
            conn_process(c);
            continue;
        }
        break;
    }
    conn_update_events(c);
}

static void conn_on_eof(http_conn_t *c) {
    c->peer_eof = true;
    switch (c->state) {
    case C_READING:
        if (c->rpos < c->rlen)
            return; /* pipelined requests before the EOF are still answered */
        if (c->opos < c->olen && !c->in_message) {
            c->state = C_CLOSING;
            return;
        }
        conn_close_internal(c);
        return;
    case C_HANDLING:
        /* The client is gone while its request is being worked on: tell the handler now (the
         * gateway interrupts the kernel). A client that half-closes and waits is treated as
         * gone too, as most servers do. */
        conn_close_internal(c);
        return;
    case C_CLOSING:
        if (c->opos == c->olen)
            conn_close_internal(c);
        return;
    case C_LINGER:
        conn_close_internal(c);
        return;
    }
}

static void conn_read(http_conn_t *c) {
    for (int i = 0; i < READ_BATCH && !c->closed && !c->peer_eof; i++) {
        bool discard = c->state == C_CLOSING || c->state == C_LINGER;
        if (discard) {
            c->rpos = c->rlen = 0;
        } else if (c->rlen == RBUF_SIZE && c->rpos > 0) {
            memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
            c->rlen -= c->rpos;
            c->rpos = 0;
        }
        size_t space = RBUF_SIZE - c->rlen;
        if (space == 0)
            return;
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, space, 0);
        if (n > 0) {
            if (discard) {
                c->lingered += (size_t)n;
                if (c->lingered > c->server->cfg.drain_bytes) {
                    conn_close_internal(c);
                    return;
                }
                c->rpos = c->rlen = 0;
            } else {
                c->rlen += (size_t)n;
                if (c->state == C_READING)
                    conn_process(c);
            }
            if ((size_t)n < space)
                return;
            continue;
        }
        if (n == 0) {
            conn_on_eof(c);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        conn_close_internal(c);
        return;
    }
}

static void conn_on_io(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    http_conn_t *c = arg;
    c->busy++;
    if (events & LOOP_WRITE)
        conn_flush(c);
    if (!c->closed && (events & (LOOP_READ | LOOP_HUP | LOOP_ERR))) {
        if (c->events & LOOP_READ)
            conn_read(c);
        else if (events & (LOOP_HUP | LOOP_ERR))
            conn_close_internal(c); /* not reading (buffer full or peer done) and the socket died */
    }
    if (!c->closed)
        conn_advance(c);
    c->busy--;
    conn_release(c);
}

/* The peer a connection counts against: an IPv4 address (as ::ffff:a.b.c.d), or an IPv6
 * address's /64, the least a host is given (one host can pick any address in it). False for
 * other families (a Unix socket handed to http_server_adopt), which have no limit. */
static bool peer_key(const struct sockaddr *sa, uint8_t key[16]) {
    memset(key, 0, 16);
    if (sa && sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa && sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        memcpy(key, a, IN6_IS_ADDR_V4MAPPED(a) ? 16 : 8);
        return true;
    }
    return false;
}

/* Whether the peer of sa already holds max_connections_per_peer connections. A scan of at
 * most max_connections entries per accept, only when the limit is set. */
static bool peer_over_limit(const http_server_t *s, const struct sockaddr *sa) {
    uint8_t key[16];
    if (s->cfg.max_connections_per_peer >= s->cfg.max_connections || !peer_key(sa, key))
        return false;
    size_t n = 0;
    for (const http_conn_t *c = s->head; c; c = c->next)
        if (c->has_peer_key && memcmp(c->peer_key, key, sizeof key) == 0 &&
            ++n >= s->cfg.max_connections_per_peer)
            return true;
    return false;
}

static int conn_add(http_server_t *s, int fd, const struct sockaddr *sa) {
    _cleanup_close_ int cfd = fd;
    http_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->fd = -1;
    c->server = s;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->has_peer_key = peer_key(sa, c->peer_key);
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        char a[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &in->sin_addr, a, sizeof a);
        snprintf(c->peer, sizeof c->peer, "%s:%u", a, ntohs(in->sin_port));
    } else if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        char a[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof a);
        snprintf(c->peer, sizeof c->peer, "[%s]:%u", a, ntohs(in6->sin6_port));
    } else {
        snprintf(c->peer, sizeof c->peer, "local");
    }
    c->watch = loop_io_add(s->loop, cfd, LOOP_READ, conn_on_io, c);
    if (!c->watch) {
        int r = errno ? -errno : -ENOMEM;
        free(c);
        return r;
    }
    c->events = LOOP_READ;
    c->fd = TAKE_FD(cfd);
    c->state = C_READING;
    c->deadline_ms = now_mono_ms() + s->cfg.idle_timeout_ms;
    c->next = s->head;
    if (s->head)
        s->head->prev = c;
    s->head = c;
    s->nconns++;
    return 0;
}

/* ---- server ------------------------------------------------------------------------------ */

/* Over the limit: answer without reading the request, half-close, and drop what already
 * arrived so the close is less likely to turn into a reset that hides the 503. */
static void reject_busy(int fd, const char *detail) {
    char body[128], resp[384], sink[1024];
    int blen = snprintf(body, sizeof body,
                        "{\"error\": \"too_many_connections\", \"detail\": \"%s\"}", detail);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                     blen, body);
    (void)!send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(fd, SHUT_WR);
    (void)!recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    close(fd);
}

static void on_accept(loop_t *loop, loop_watch_t *w, int lfd, unsigned events, void *arg) {
    http_server_t *s = arg;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss = {0}; /* sa_family stays AF_UNSPEC if accept4 fills less */
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* The pending connection keeps the listener readable: stop watching it until
                 * the next sweep instead of spinning. */
                if (loop_io_mod(loop, s->lwatch, 0) == 0)
                    s->accept_paused = true;
            }
            return;
        }
        if (s->nconns >= s->cfg.max_connections) {
            reject_busy(fd, "connection limit reached");
            continue;
        }
        if (peer_over_limit(s, (struct sockaddr *)&ss)) {
            reject_busy(fd, "connection limit per client address reached");
            continue;
        }
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        (void)conn_add(s, fd, (struct sockaddr *)&ss);
    }
}

static bool conn_expired(const http_conn_t *c, uint64_t now, uint64_t idle) {
    bool pending = c->opos < c->olen;
    bool stalled = pending && now - c->wprogress_ms >= idle;
    switch (c->state) {
    case C_READING:
        return pending ? stalled : now >= c->deadline_ms;
    case C_HANDLING:
    case C_CLOSING:
        return stalled;
    case C_LINGER:
        return now >= c->deadline_ms;
    }
    return false;
}

/* Timeouts use one coarse periodic sweep rather than a timer per connection: a per-connection
 * timerfd would cost an fd and a timerfd_settime() per request, while a scan of at most
 * max_connections deadlines a few times per timeout is a few microseconds. Deadlines are
 * therefore honoured within a quarter of the timeout (at most one second). A handler working
 * on a request has no deadline; a response the client does not read has one (write stall). */
static void on_sweep(loop_t *loop, loop_watch_t *w, void *arg) {
    http_server_t *s = arg;
    if (s->accept_paused && s->lwatch && loop_io_mod(loop, s->lwatch, LOOP_READ) == 0)
        s->accept_paused = false;
    uint64_t now = now_mono_ms();
    bool any = false;
    for (http_conn_t *c = s->head; c; c = c->next) {
        c->expired = conn_expired(c, now, s->cfg.idle_timeout_ms);
        any |= c->expired;
    }
    /* on_close may close other connections, so restart from the head after each close. */
    while (any) {
        any = false;
        for (http_conn_t *c = s->head; c; c = c->next) {
            if (!c->expired)
                continue;
            c->expired = false;
            c->busy++;
            conn_close_internal(c);
            c->busy--;
            conn_release(c);
            any = true;
            break;
        }
    }
}

http_server_t *http_server_new(loop_t *loop, const http_server_config_t *cfg,
                               const http_handlers_t *handlers, void *server_arg) {
    if (!loop || !handlers || !handlers->on_request) {
        errno = EINVAL;
        return NULL;
    }
    http_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->loop = loop;
    s->cfg = cfg ? *cfg : defaults;
#define DEF(f)                                                                                     \
    if (!s->cfg.f)                                                                                 \
    s->cfg.f = defaults.f
    DEF(max_header_bytes);
    DEF(max_headers);
    DEF(max_body_bytes);
    DEF(drain_bytes);
    DEF(max_connections);
    DEF(max_connections_per_peer);
    DEF(max_outbuf_bytes);
    DEF(idle_timeout_ms);
#undef DEF
    s->h = *handlers;
    s->arg = server_arg;
    s->lfd = -1;
    uint64_t period = s->cfg.idle_timeout_ms / 4;
    period = period < 10 ? 10 : period > 1000 ? 1000 : period;
    s->sweep = loop_timer_add(loop, period, period, on_sweep, s);
    if (!s->sweep) {
        int saved = errno;
        free(s);
        errno = saved ? saved : ENOMEM;
        return NULL;
    }
    return s;
}

void http_server_destroy(http_server_t **self_p) {
    http_server_t *s = self_p ? *self_p : NULL;
    if (!s)
        return;
    *self_p = NULL;
    while (s->head) {
        http_conn_t *c = s->head;
        c->busy++;
        conn_close_internal(c);
        c->busy--;
        conn_release(c);
    }
    loop_watch_del(s->loop, &s->lwatch);
    loop_watch_del(s->loop, &s->sweep);
    if (s->lfd >= 0)
        close(s->lfd);
    free(s);
}

int http_server_listen(http_server_t *s, const char *host, uint16_t port) {
    if (!s || !host)
        return -EINVAL;
    if (s->lfd >= 0)
        return -EALREADY;
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    char buf[INET6_ADDRSTRLEN + 2];
    if (streq(host, "localhost"))
        host = "127.0.0.1";
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof buf) {
        memcpy(buf, host + 1, hl - 2);
        buf[hl - 2] = '\0';
        host = buf;
    }
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        sl = sizeof *in4;
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        sl = sizeof *in6;
    } else {
        return -EINVAL; /* no name resolution on purpose: the bind address is configuration */
    }
    _cleanup_close_ int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0)
        return -errno;
    if (listen(fd, 1024) < 0)
        return -errno;
    struct sockaddr_storage bound;
    /* memset rather than {0}: clang-analyzer then also sees the sockaddr_in6 view as zeroed. */
    memset(&bound, 0, sizeof bound);
    socklen_t bl = sizeof bound;
    if (getsockname(fd, (struct sockaddr *)&bound, &bl) < 0)
        return -errno;
    s->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    s->lwatch = loop_io_add(s->loop, fd, LOOP_READ, on_accept, s);
    if (!s->lwatch)
        return errno ? -errno : -ENOMEM;
    s->lfd = TAKE_FD(fd);
    return 0;
}

int http_server_adopt(http_server_t *s, int fd) {
    _cleanup_close_ int cfd = fd;
    if (!s || fd < 0)
        return -EINVAL;
    if (s->nconns >= s->cfg.max_connections)
        return -EBUSY;
    int fl = fcntl(cfd, F_GETFL);
    if (fl < 0 || fcntl(cfd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    struct sockaddr_storage ss = {0};
    socklen_t sl = sizeof ss;
    if (getpeername(cfd, (struct sockaddr *)&ss, &sl) < 0)
        ss.ss_family = AF_UNSPEC;
    if (peer_over_limit(s, (struct sockaddr *)&ss))
        return -EBUSY;
    int one = 1;
    (void)setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return conn_add(s, TAKE_FD(cfd), (struct sockaddr *)&ss);
}

uint16_t http_server_port(const http_server_t *s) {
    return s ? s->port : 0;
}

size_t http_server_connection_count(const http_server_t *s) {
    return s ? s->nconns : 0;
}

/* ---- per request ------------------------------------------------------------------------- */

const char *http_request_header(const http_request_t *req, const char *lname) {
    if (!req || !lname)
        return NULL;
    for (size_t i = 0; i < req->nheaders; i++)
        if (streq(req->headers[i].name, lname))
            return req->headers[i].value;
    return NULL;
}

/* Compares the percent-decoded key [k, k+klen) with name without a buffer. */
static bool key_matches(const char *k, size_t klen, const char *name) {
    size_t j = 0;
    for (size_t i = 0; i < klen; i++, j++) {
        char ch = k[i];
        if (ch == '%') {
            if (i + 2 >= klen)
                return false;
            int hi = hexval(k[i + 1]), lo = hexval(k[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            ch = (char)(hi << 4 | lo);
            i += 2;
        } else if (ch == '+') {
            ch = ' ';
        }
        if (name[j] == '\0' || name[j] != ch)
            return false;
    }
    return name[j] == '\0';
}

int http_query_param(const char *query, const char *name, char *buf, size_t len) {
    if (!query || !name || !buf || len == 0)
        return -EINVAL;
    const char *p = query;
    while (*p) {
        const char *end = strchr(p, '&');
        if (!end)
            end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *kend = eq ? eq : end;
        if (key_matches(p, (size_t)(kend - p), name)) {
            const char *v = eq ? eq + 1 : end;
            size_t vlen = (size_t)(end - v);
            /* Decoding never grows, so a raw value that fits always fits decoded; a longer raw
             * value may still fit once decoded, hence the scratch decode. */
            if (vlen < len) {
                ssize_t n = pct_decode(v, vlen, buf, true);
                if (n < 0)
                    return (int)n;
                buf[n] = '\0';
                return (int)n;
            }
            _cleanup_free_ char *tmp = malloc(vlen + 1);
            if (!tmp)
                return -ENOMEM;
            ssize_t n = pct_decode(v, vlen, tmp, true);
            if (n < 0)
                return (int)n;
            if ((size_t)n >= len)
                return -ENAMETOOLONG;
            memcpy(buf, tmp, (size_t)n);
            buf[n] = '\0';
            return (int)n;
        }
        p = *end ? end + 1 : end;
    }
    return -ENOENT;
}

void http_conn_set_user(http_conn_t *c, void *user) {
    if (c && !c->closed)
        c->user = user;
}

void *http_conn_user(const http_conn_t *c) {
    return c ? c->user : NULL;
}

const char *http_conn_peer(const http_conn_t *c) {
    return c ? c->peer : "";
}

loop_t *http_conn_loop(const http_conn_t *c) {
    return c && c->server ? c->server->loop : NULL;
}

void http_conn_close(http_conn_t *c) {
    if (!c || c->closed)
        return;
    c->busy++;
    conn_close_internal(c);
    c->busy--;
    conn_release(c);
}

int http_conn_detach(http_conn_t *c, int *ret_fd, char **ret_extra, size_t *ret_extra_len) {
    if (!c || !ret_fd || !ret_extra || !ret_extra_len)
        return -EINVAL;
    if (c->closed)
        return -ENOTCONN;
    if (c->opos < c->olen)
        conn_flush(c);
    if (c->broken)
        return -EPIPE;
    if (c->opos < c->olen)
        return -EAGAIN; /* the new owner would write before our bytes: refuse instead */
    size_t n = c->rlen - c->rpos;
    char *extra = NULL;
    if (n > 0) {
        extra = malloc(n);
        if (!extra)
            return -ENOMEM;
        memcpy(extra, c->rbuf + c->rpos, n);
    }
    http_server_t *s = c->server;
    loop_watch_del(s->loop, &c->watch);
    *ret_fd = TAKE_FD(c->fd);
    *ret_extra = extra;
    *ret_extra_len = n;
    c->closed = true;
    c->user = NULL;
    conn_unlink(c);
    c->server = NULL;
    conn_release(c);
    return 0;
}

const char *http_status_text(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}
