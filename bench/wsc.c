/* WebSocket client for the Jupyter channels endpoint: our own handshake (a GET with Upgrade on
 * a plain TCP socket), then wslay (RFC 6455 framing, client masking) over it. wslay does no
 * I/O of its own: its callbacks read and write the socket without blocking and we poll(). */
#include "bench.h"

#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <wslay/wslay.h>

typedef struct wmsg {
    struct wmsg *next;
    char *data;
    size_t len;
} wmsg_t;

struct wsc {
    int fd;
    wslay_event_context_ptr ctx;
    char *pre; /* bytes read past the handshake, fed to wslay first */
    size_t pre_len, pre_off;
    wmsg_t *head, *tail;
    bool closed;
    bool oom;
};

static ssize_t cb_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user) {
    wsc_t *w = user;
    if (w->pre_off < w->pre_len) {
        size_t n = w->pre_len - w->pre_off;
        if (n > len)
            n = len;
        memcpy(buf, w->pre + w->pre_off, n);
        w->pre_off += n;
        return (ssize_t)n;
    }
    for (;;) {
        ssize_t n = recv(w->fd, buf, len, MSG_DONTWAIT);
        if (n > 0)
            return n;
        if (n == 0) {
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
            return -1;
        }
        if (errno == EINTR)
            continue;
        wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                       ? WSLAY_ERR_WOULDBLOCK
                                       : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
}

static ssize_t cb_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user) {
    wsc_t *w = user;
    for (;;) {
        ssize_t n = send(w->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                       ? WSLAY_ERR_WOULDBLOCK
                                       : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
}

static int cb_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user) {
    randombytes_buf(buf, len);
    return 0;
}

static void cb_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user) {
    wsc_t *w = user;
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        w->closed = true;
        return;
    }
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
        return;
    wmsg_t *m = calloc(1, sizeof *m);
    char *d = m ? malloc(arg->msg_length + 1) : NULL;
    if (!m || !d) {
        free(m);
        w->oom = true;
        return;
    }
    memcpy(d, arg->msg, arg->msg_length);
    d[arg->msg_length] = '\0';
    m->data = d;
    m->len = arg->msg_length;
    if (w->tail)
        w->tail->next = m;
    else
        w->head = m;
    w->tail = m;
}

wsc_t *wsc_connect(const char *host, int port, const char *path, const char *extra_headers,
                   int timeout_ms, char *err, size_t errlen) {
    int fd = bench_tcp_connect(host, port, timeout_ms);
    if (fd < 0) {
        snprintf(err, errlen, "connect: %s", strerror(-fd));
        return NULL;
    }
    unsigned char nonce[16];
    char key[32];
    randombytes_buf(nonce, sizeof nonce);
    sodium_bin2base64(key, sizeof key, nonce, sizeof nonce, sodium_base64_VARIANT_ORIGINAL);
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s\r\n",
                     path, host, port, key, extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        snprintf(err, errlen, "cannot send the handshake");
        close(fd);
        return NULL;
    }
    /* Read the response head; whatever follows it already belongs to the WebSocket. */
    char buf[16384];
    size_t got = 0;
    char *end = NULL;
    while (!end) {
        if (got == sizeof buf - 1) {
            snprintf(err, errlen, "handshake response too large");
            close(fd);
            return NULL;
        }
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r <= 0) {
            snprintf(err, errlen, "handshake: %s", r == 0 ? "connection closed" : strerror(errno));
            close(fd);
            return NULL;
        }
        got += (size_t)r;
        buf[got] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (strncmp(buf, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(buf, "\r\n");
        if (eol)
            *eol = '\0';
        snprintf(err, errlen, "handshake refused: %.100s", buf);
        close(fd);
        return NULL;
    }
    wsc_t *w = calloc(1, sizeof *w);
    if (!w) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->fd = fd;
    size_t head = (size_t)(end + 4 - buf);
    if (got > head) {
        w->pre = malloc(got - head);
        if (w->pre) {
            memcpy(w->pre, buf + head, got - head);
            w->pre_len = got - head;
        }
    }
    struct wslay_event_callbacks cbs = {.recv_callback = cb_recv,
                                        .send_callback = cb_send,
                                        .genmask_callback = cb_genmask,
                                        .on_msg_recv_callback = cb_msg};
    if (wslay_event_context_client_init(&w->ctx, &cbs, w) != 0) {
        snprintf(err, errlen, "wslay init failed");
        close(fd);
        free(w->pre);
        free(w);
        return NULL;
    }
    wslay_event_config_set_max_recv_msg_length(w->ctx, 64u << 20);
    return w;
}

static int flush_out(wsc_t *w, int timeout_ms) {
    double deadline = bench_now_ms() + timeout_ms;
    while (wslay_event_want_write(w->ctx)) {
        if (wslay_event_send(w->ctx) != 0)
            return -ECONNRESET;
        if (!wslay_event_want_write(w->ctx))
            break;
        int left = (int)(deadline - bench_now_ms());
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = w->fd, .events = POLLOUT};
        poll(&p, 1, left);
    }
    return 0;
}

int wsc_send_text(wsc_t *w, const char *data, size_t len) {
    struct wslay_event_msg m = {
        .opcode = WSLAY_TEXT_FRAME, .msg = (const uint8_t *)data, .msg_length = len};
    if (wslay_event_queue_msg(w->ctx, &m) != 0)
        return -ENOMEM;
    return flush_out(w, 10000);
}

int wsc_recv(wsc_t *w, int timeout_ms, char **ret, size_t *ret_len) {
    double deadline = bench_now_ms() + timeout_ms;
    for (;;) {
        if (w->head) {
            wmsg_t *m = w->head;
            w->head = m->next;
            if (!w->head)
                w->tail = NULL;
            *ret = m->data;
            *ret_len = m->len;
            free(m);
            return 0;
        }
        if (w->oom)
            return -ENOMEM;
        if (w->closed)
            return -ECONNRESET;
        /* Pending bytes from the handshake are read without waiting for the socket. */
        if (w->pre_off >= w->pre_len) {
            int left = (int)(deadline - bench_now_ms());
            if (left <= 0)
                return -ETIMEDOUT;
            struct pollfd p = {.fd = w->fd, .events = POLLIN};
            int r = poll(&p, 1, left);
            if (r < 0 && errno != EINTR)
                return -errno;
            if (r <= 0)
                continue;
        }
        if (wslay_event_recv(w->ctx) != 0) {
            w->closed = true;
            if (!w->head)
                return -ECONNRESET;
        }
        /* Pongs and close replies wslay queued. */
        if (wslay_event_want_write(w->ctx) && flush_out(w, 1000) < 0)
            w->closed = true;
    }
}

void wsc_destroy(wsc_t **self_p) {
    wsc_t *w = self_p ? *self_p : NULL;
    if (!w)
        return;
    *self_p = NULL;
    if (!w->closed) {
        wslay_event_queue_close(w->ctx, 1000, NULL, 0);
        flush_out(w, 500);
    }
    wslay_event_context_free(w->ctx);
    while (w->head) {
        wmsg_t *m = w->head;
        w->head = m->next;
        free(m->data);
        free(m);
    }
    close(w->fd);
    free(w->pre);
    free(w);
}
