/* Guarded relay between a gateway ZeroMQ socket and a kernel channel (see relay.h).
 *
 * Each direction copies through a 64 KiB stack buffer straight into the other socket; only
 * what the destination does not take at once is kept (`pend`), and while anything is kept,
 * the source is not read: back-pressure reaches the kernel through its socket buffer, as
 * without the relay. A side that hangs up still has its last bytes delivered (a kernel's
 * shutdown_reply comes just before it exits): the rest of its socket buffer is read (bounded
 * by that buffer, as no more can arrive), and the relay ends once that is written.
 *
 * Cost: per batch of messages one read and one write more on the gateway's loop thread, which
 * wakes for them (it would wake for the messages anyway, one hop later). */
#include "relay.h"
#include "util.h"
#include "zguard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define RELAY_CHUNK ((size_t)64 * 1024)

typedef struct {
    uint8_t *data;
    size_t off, len, cap;
} pend_t;

/* One direction: from src to dst. */
typedef struct {
    int *src, *dst;
    pend_t pend;
    bool eof;     /* src hung up: end once pend is written */
    bool guarded; /* from the kernel: checked by zguard */
} dir_t;

struct gw_relay {
    loop_t *loop;
    int lfd, dfd, ufd; /* listener; the gateway socket's side (down); the kernel's (up) */
    loop_watch_t *lw, *dw, *uw;
    unsigned dev, uev; /* the events dw and uw are set to */
    bool connecting;   /* tcp: the connection to the kernel is not up yet */
    dir_t to_down, to_up;
    zguard_t guard;
    const char *why;
    bool ended;
};

static void pend_free(pend_t *p) {
    free(p->data);
    *p = (pend_t){0};
}

static int pend_add(pend_t *p, const uint8_t *b, size_t n) {
    if (p->off > 0 && p->off == p->len)
        p->off = p->len = 0;
    if (p->len + n > p->cap) {
        size_t cap = p->cap ? p->cap : RELAY_CHUNK;
        while (cap < p->len + n)
            cap *= 2;
        uint8_t *d = realloc(p->data, cap);
        if (!d)
            return -ENOMEM;
        p->data = d;
        p->cap = cap;
    }
    memcpy(p->data + p->len, b, n);
    p->len += n;
    return 0;
}

static bool pend_empty(const pend_t *p) {
    return p->off == p->len;
}

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void end(gw_relay_t *r, const char *why) {
    if (r->ended)
        return;
    r->ended = true;
    r->why = why;
    loop_watch_del(r->loop, &r->lw);
    loop_watch_del(r->loop, &r->dw);
    loop_watch_del(r->loop, &r->uw);
    close_fd(&r->lfd);
    close_fd(&r->dfd);
    close_fd(&r->ufd);
    pend_free(&r->to_down.pend);
    pend_free(&r->to_up.pend);
}

/* A direction reads while nothing of it waits to be written and its destination is there. */
static bool wants_read(const gw_relay_t *r, const dir_t *d) {
    return *d->src >= 0 && *d->dst >= 0 && !r->connecting && !d->eof && pend_empty(&d->pend);
}

static void update(gw_relay_t *r) {
    if (r->ended)
        return;
    unsigned uev = r->connecting ? LOOP_WRITE
                                 : (wants_read(r, &r->to_down) ? LOOP_READ : 0) |
                                       (pend_empty(&r->to_up.pend) ? 0 : LOOP_WRITE);
    unsigned dev = (wants_read(r, &r->to_up) ? LOOP_READ : 0) |
                   (pend_empty(&r->to_down.pend) ? 0 : LOOP_WRITE);
    /* Each change is a system call: only when the set really changes. */
    if (r->uw && uev != r->uev && loop_io_mod(r->loop, r->uw, uev) == 0)
        r->uev = uev;
    if (r->dw && dev != r->dev && loop_io_mod(r->loop, r->dw, dev) == 0)
        r->dev = dev;
}

/* Writes what waits for d's destination. 0, or -errno when the destination is gone. */
static int flush(dir_t *d) {
    pend_t *p = &d->pend;
    while (!pend_empty(p)) {
        ssize_t n = send(*d->dst, p->data + p->off, p->len - p->off, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -errno;
        p->off += (size_t)n;
    }
    if (p->cap > RELAY_CHUNK) /* a burst's buffer is not kept */
        pend_free(p);
    return 0;
}

/* Moves bytes from d's source to its destination: one read, or while the source hangs up,
 * everything it still holds. */
static void pump(gw_relay_t *r, dir_t *d, bool drain) {
    uint8_t buf[RELAY_CHUNK];
    do {
        ssize_t n = read(*d->src, buf, sizeof buf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            /* That side is gone both ways (libzmq never half-closes): nothing more is read
             * from it or can be written to it, and its hang-up must stop firing. */
            d->eof = true;
            if (d->src == &r->ufd)
                loop_watch_del(r->loop, &r->uw);
            else
                loop_watch_del(r->loop, &r->dw);
            break;
        }
        if (d->guarded && zguard_feed(&r->guard, buf, (size_t)n) < 0) {
            end(r, r->guard.why);
            return;
        }
        size_t sent = 0;
        if (pend_empty(&d->pend)) {
            ssize_t w = send(*d->dst, buf, (size_t)n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                end(r, NULL);
                return;
            }
            sent = w > 0 ? (size_t)w : 0;
        }
        if (sent < (size_t)n && pend_add(&d->pend, buf + sent, (size_t)n - sent) < 0) {
            end(r, NULL);
            return;
        }
    } while (drain);
    if (d->eof && pend_empty(&d->pend)) {
        end(r, NULL);
        return;
    }
    update(r);
}

/* Events on one side: fd is the source of `from` and the destination of `to`. */
static void on_side(gw_relay_t *r, dir_t *from, dir_t *to, unsigned events) {
    if (events & LOOP_ERR) {
        end(r, NULL);
        return;
    }
    if ((events & LOOP_WRITE) && !pend_empty(&to->pend)) {
        if (flush(to) < 0) {
            end(r, NULL);
            return;
        }
        if (to->eof && pend_empty(&to->pend)) {
            end(r, NULL);
            return;
        }
    }
    /* A hang-up is reported whatever we asked for: read what is left now, or this would
     * fire again and again while the other side is slow to take what we hold. */
    if (events & LOOP_HUP)
        pump(r, from, true);
    else if ((events & LOOP_READ) && wants_read(r, from))
        pump(r, from, false);
    else
        update(r);
}

static void on_up(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    gw_relay_t *r = arg;
    if (r->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            end(r, NULL);
            return;
        }
        r->connecting = false;
        update(r);
        return;
    }
    on_side(r, &r->to_down, &r->to_up, events);
}

static void on_down(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    on_side(arg, &((gw_relay_t *)arg)->to_up, &((gw_relay_t *)arg)->to_down, events);
}

static void on_listen(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    gw_relay_t *r = arg;
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0)
        return;
    /* Only our own socket: the address is abstract, so any process of the host's network
     * namespace could try it first (no sandbox can: each has a namespace of its own). */
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid != getpid()) {
        close(c);
        return;
    }
    r->dfd = c;
    loop_watch_del(loop, &r->lw);
    close_fd(&r->lfd);
    r->dw = loop_io_add(loop, r->dfd, 0, on_down, r);
    if (!r->dw) {
        end(r, NULL);
        return;
    }
    update(r);
}

/* The kernel's endpoint as a socket address. ipc: the socket file itself, never what a
 * symlink in its place points to (the kernel's uid owns the directory): opened without
 * following (*pathfd, the caller closes it), checked to be a socket, and reached through its
 * /proc/self/fd link, so nothing can be swapped between the check and the connect. */
static int parse_endpoint(const char *ep, struct sockaddr_storage *ss, socklen_t *len,
                          int *pathfd) {
    memset(ss, 0, sizeof *ss);
    *pathfd = -1;
    if (strncmp(ep, "ipc://", 6) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        const char *path = ep + 6;
        if (!*path)
            return -EINVAL;
        int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
            close(fd);
            return -EPERM; /* a symlink or a file where the kernel's socket should be */
        }
        *pathfd = fd;
        un->sun_family = AF_UNIX;
        snprintf(un->sun_path, sizeof un->sun_path, "/proc/self/fd/%d", fd);
        *len = (socklen_t)sizeof *un;
        return 0;
    }
    if (strncmp(ep, "tcp://", 6) == 0) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        char host[INET_ADDRSTRLEN];
        const char *colon = strrchr(ep + 6, ':');
        size_t hl = colon ? (size_t)(colon - (ep + 6)) : 0;
        char *end_port = NULL;
        long port = colon ? strtol(colon + 1, &end_port, 10) : -1;
        if (!colon || hl == 0 || hl >= sizeof host || !end_port || *end_port || port <= 0 ||
            port > 65535)
            return -EINVAL;
        memcpy(host, ep + 6, hl);
        host[hl] = '\0';
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return -EINVAL;
        *len = (socklen_t)sizeof *in;
        return 0;
    }
    return -EINVAL;
}

int gw_relay_open(loop_t *loop, const char *kernel_endpoint, uint64_t max_bytes,
                  uint32_t max_frames, char *zmq_endpoint, size_t len, gw_relay_t **ret) {
    if (!loop || !kernel_endpoint || !zmq_endpoint || !ret)
        return -EINVAL;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    _cleanup_close_ int pathfd = -1;
    int r = parse_endpoint(kernel_endpoint, &ss, &sslen, &pathfd);
    if (r < 0)
        return r;
    gw_relay_t *rl = calloc(1, sizeof *rl);
    if (!rl)
        return -ENOMEM;
    rl->loop = loop;
    rl->lfd = rl->dfd = rl->ufd = -1;
    rl->to_down = (dir_t){.src = &rl->ufd, .dst = &rl->dfd, .guarded = true};
    rl->to_up = (dir_t){.src = &rl->dfd, .dst = &rl->ufd};
    zguard_init(&rl->guard, max_bytes, max_frames);

    rl->ufd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (rl->ufd < 0)
        goto fail_errno;
    if (connect(rl->ufd, (struct sockaddr *)&ss, sslen) < 0) {
        if (errno != EINPROGRESS)
            goto fail_errno;
        rl->connecting = true;
    }

    /* The gateway's side: an abstract address nobody can guess, taken once. */
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    char name[40] = "kbox-relay-";
    random_hex(name + strlen(name), 12);
    memcpy(un.sun_path + 1, name, strlen(name));
    socklen_t unlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    rl->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (rl->lfd < 0 || bind(rl->lfd, (struct sockaddr *)&un, unlen) < 0 || listen(rl->lfd, 4) < 0)
        goto fail_errno;
    if ((r = xsnprintf(zmq_endpoint, len, "ipc://@%s", name)) < 0)
        goto fail;
    rl->lw = loop_io_add(loop, rl->lfd, LOOP_READ, on_listen, rl);
    rl->uev = rl->connecting ? LOOP_WRITE : 0;
    rl->uw = loop_io_add(loop, rl->ufd, rl->uev, on_up, rl);
    if (!rl->lw || !rl->uw)
        goto fail_errno;
    *ret = rl;
    return 0;
fail_errno:
    r = errno ? -errno : -EIO;
fail:
    end(rl, NULL);
    free(rl);
    return r;
}

const char *gw_relay_why(const gw_relay_t *r) {
    return r ? r->why : NULL;
}

void gw_relay_close(gw_relay_t **r_p) {
    if (!r_p || !*r_p)
        return;
    end(*r_p, (*r_p)->why);
    free(*r_p);
    *r_p = NULL;
}
