/* A small blocking HTTP/1.1 client: one keep-alive connection per virtual user, responses
 * parsed by nodejs http-parser (the parser the gateway itself uses, so no new dependency).
 * Blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO bound every request. libcurl would do the
 * same job but is not installed on the target machines (only its runtime is) and Debian's
 * build has no WebSocket support, so workload 2 would need a second client anyway. */
#include "bench.h"

#include <arpa/inet.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

struct httpc {
    char host[64];
    int port;
    int timeout_ms;
    int fd;
};

int bench_tcp_connect(const char *host, int port, int timeout_ms) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    const char *h = streq(host, "localhost") ? "127.0.0.1" : host;
    if (inet_pton(AF_INET, h, &sa.sin_addr) != 1)
        return -EINVAL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

int bench_url_parse(const char *url, char *host, size_t hostlen, int *ret_port) {
    if (!startswith(url, "http://"))
        return -EINVAL;
    const char *h = url + 7, *colon = strchr(h, ':');
    if (!colon || (size_t)(colon - h) >= hostlen)
        return -EINVAL;
    memcpy(host, h, (size_t)(colon - h));
    host[colon - h] = '\0';
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535)
        return -EINVAL;
    *ret_port = port;
    return 0;
}

httpc_t *httpc_new(const char *host, int port, int timeout_ms) {
    httpc_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    snprintf(c->host, sizeof c->host, "%s", host);
    c->port = port;
    c->timeout_ms = timeout_ms;
    c->fd = -1;
    return c;
}

void httpc_destroy(httpc_t **self_p) {
    httpc_t *c = self_p ? *self_p : NULL;
    if (!c)
        return;
    *self_p = NULL;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

typedef struct {
    char *body;
    size_t len, cap;
    bool done;
    bool oom;
} resp_t;

static int on_body(http_parser *p, const char *at, size_t n) {
    resp_t *r = p->data;
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b) {
            r->oom = true;
            return 1;
        }
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, at, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

static int on_complete(http_parser *p) {
    ((resp_t *)p->data)->done = true;
    return 0;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One attempt on the current connection. *ret_fresh_fail: nothing came back on a reused
 * connection (the server had closed it), so a retry on a new one is safe. */
static int attempt(httpc_t *c, const char *req, size_t reqlen, int *ret_status, char **ret_body,
                   bool *ret_stale) {
    *ret_stale = false;
    bool reused = c->fd >= 0;
    if (c->fd < 0) {
        int fd = bench_tcp_connect(c->host, c->port, c->timeout_ms);
        if (fd < 0)
            return fd;
        c->fd = fd;
    }
    int r = send_all(c->fd, req, reqlen);
    if (r < 0) {
        *ret_stale = reused && r == -EPIPE;
        return r;
    }
    http_parser_settings s = {.on_body = on_body, .on_message_complete = on_complete};
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    resp_t resp = {0};
    p.data = &resp;
    char buf[65536];
    size_t total = 0;
    while (!resp.done) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = errno == EAGAIN ? -ETIMEDOUT : -errno;
            *ret_stale = reused && total == 0 && r == -ECONNRESET;
            free(resp.body);
            return r;
        }
        if (n == 0) {
            /* EOF: completes a response without Content-Length, else it is a reset. */
            http_parser_execute(&p, &s, buf, 0);
            if (resp.done)
                break;
            *ret_stale = reused && total == 0;
            free(resp.body);
            return -ECONNRESET;
        }
        total += (size_t)n;
        size_t used = http_parser_execute(&p, &s, buf, (size_t)n);
        if (resp.oom) {
            free(resp.body);
            return -ENOMEM;
        }
        if (used != (size_t)n && !resp.done) {
            free(resp.body);
            return -EPROTO;
        }
    }
    *ret_status = p.status_code;
    if (!http_should_keep_alive(&p)) {
        close(c->fd);
        c->fd = -1;
    }
    if (ret_body) {
        if (!resp.body)
            resp.body = strdup("");
        *ret_body = resp.body;
    } else {
        free(resp.body);
    }
    return 0;
}

int httpc_request(httpc_t *c, const char *method, const char *path, const char *extra_headers,
                  const char *body, size_t body_len, int *ret_status, char **ret_body) {
    char head[2048];
    int hn = snprintf(
        head, sizeof head, "%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %zu\r\n%s%s\r\n",
        method, path, c->host, c->port, body_len,
        body_len ? "Content-Type: application/json\r\n" : "", extra_headers ? extra_headers : "");
    if (hn < 0 || (size_t)hn >= sizeof head)
        return -ENAMETOOLONG;
    size_t reqlen = (size_t)hn + body_len;
    _cleanup_free_ char *req = malloc(reqlen);
    if (!req)
        return -ENOMEM;
    memcpy(req, head, (size_t)hn);
    if (body_len)
        memcpy(req + hn, body, body_len);
    for (int tries = 0;; tries++) {
        bool stale = false;
        int r = attempt(c, req, reqlen, ret_status, ret_body, &stale);
        if (r >= 0)
            return 0;
        if (c->fd >= 0) {
            close(c->fd);
            c->fd = -1;
        }
        if (!stale || tries > 0)
            return r;
    }
}

int bench_http_json(const char *url, const char *token, const char *method, const char *path,
                    json_t *body, int timeout_ms, int *ret_status, json_t **ret_json) {
    char host[64];
    int port, r;
    if ((r = bench_url_parse(url, host, sizeof host, &port)) < 0)
        return r;
    httpc_t *c = httpc_new(host, port, timeout_ms);
    if (!c)
        return -ENOMEM;
    char hdr[512];
    snprintf(hdr, sizeof hdr, "Authorization: token %s\r\nX-Auth-Token: %s\r\n", token ? token : "",
             token ? token : "");
    _cleanup_free_ char *b = body ? json_dumps(body, JSON_COMPACT) : NULL;
    _cleanup_free_ char *resp = NULL;
    int status = 0;
    r = httpc_request(c, method, path, hdr, b, b ? strlen(b) : 0, &status, &resp);
    httpc_destroy(&c);
    if (r < 0)
        return r;
    *ret_status = status;
    if (ret_json)
        *ret_json = resp && *resp ? json_loads(resp, 0, NULL) : NULL;
    return 0;
}
