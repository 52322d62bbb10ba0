/* Guarded relay between a gateway ZeroMQ socket and a kernel channel (see relay.h).
 *
 * Each direction copies through a 64 KiB stack buffer straight into the other socket; only
 * what the destination does not take at once is kept (`pend`), and while anything is kept,
 * the source is not read: back-pressure reaches the kernel through its socket buffer, as
 * without the relay. A side that hangs up still has its last bytes delivered (a kernel's
 * shutdown_reply comes just before it exits): the rest of its socket buffer is read (bounded
 * by that buffer, as no more can arrive; a reset tcp connection gives what came before the
 * reset), and the relay ends once that is written; what was on its way to the side that hung
 * up is dropped. The relay ends when both directions are done, each fd watched only while it
 * serves one (a hang-up is reported whether asked for or not).
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
/* After the kernel hung up and its last bytes are written to the gateway's socket, that
 * connection stays open this long: libzmq (reconnection off) drops the messages it has
 * received but not yet handed over when it closes, and a kernel's last ones (the reply to a
 * cell that called exit(), a shutdown_reply) come just before it hangs up. The worker reads
 * them meanwhile; it learns of the exit from the process, not from this connection. */
#define RELAY_HANGUP_LINGER_MS 250

typedef struct {
    uint8_t *data;
    size_t off, len, cap;
} pend_t;

/* One direction: from src to dst. */
typedef struct {
    int *src, *dst;
    pend_t pend;
    bool eof;     /* nothing more comes from src: done once pend is written */
    bool dead;    /* dst is gone: nothing more can be written (pend dropped) */
    bool guarded; /* from the kernel: checked by zguard */
} dir_t;

struct gw_relay {
    loop_t *loop;
    int lfd, dfd, ufd; /* listener; the gateway socket's side (down); the kernel's (up) */
    loop_watch_t *lw, *dw, *uw;
    loop_watch_t *linger; /* the kernel hung up: the gateway's side closes when it fires */
    unsigned dev, uev;    /* the events dw and uw are set to */
    bool connecting;      /* tcp: the connection to the kernel is not up yet */
    bool failed;          /* gone before the gateway's socket came: it is hung up on arrival */
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

static bool dir_done(const dir_t *d) {
    return d->dead || (d->eof && pend_empty(&d->pend));
}

/* Both connections closed now (the gateway's socket sees its peer hang up). */
static void end(gw_relay_t *r, const char *why) {
    if (r->ended)
        return;
    r->ended = true;
    r->why = why;
    loop_watch_del(r->loop, &r->linger);
    loop_watch_del(r->loop, &r->lw);
    loop_watch_del(r->loop, &r->dw);
    loop_watch_del(r->loop, &r->uw);
    closep(&r->lfd);
    closep(&r->dfd);
    closep(&r->ufd);
    pend_free(&r->to_down.pend);
    pend_free(&r->to_up.pend);
}

/* The kernel's side failed before the gateway's socket connected: closing the listener
 * would make that connect fail, which libzmq (reconnection off) never reports. So the
 * connection is taken and closed at once: a disconnect the worker's monitor sees. */
static void fail(gw_relay_t *r) {
    if (r->dfd >= 0 || r->lfd < 0) {
        end(r, NULL);
        return;
    }
    r->failed = true;
    loop_watch_del(r->loop, &r->uw);
    closep(&r->ufd);
}

/* The events one side's fd needs: reading for the direction it feeds while nothing of that
 * waits, writing while the direction into it holds bytes. */
static unsigned side_events(const gw_relay_t *r, const dir_t *from, const dir_t *to) {
    unsigned ev = 0;
    if (!r->connecting && *from->dst >= 0 && !from->eof && !from->dead && pend_empty(&from->pend))
        ev |= LOOP_READ;
    if (!to->dead && !pend_empty(&to->pend))
        ev |= LOOP_WRITE;
    return ev;
}

/* A side whose fd serves neither direction any more loses its watch: its hang-up would
 * otherwise fire on every turn of the loop. */
static bool side_needed(const dir_t *from, const dir_t *to) {
    return !(from->eof || from->dead) || !dir_done(to);
}

static void on_up(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg);

static void on_linger(loop_t *loop, loop_watch_t *t, void *arg) {
    end(arg, NULL);
}

/* Ends the relay once both directions are done (after RELAY_HANGUP_LINGER_MS when the
 * kernel hung up with everything delivered); else sets what each fd is watched for. */
static void settle(gw_relay_t *r) {
    if (r->ended || r->linger)
        return;
    if (dir_done(&r->to_down) && dir_done(&r->to_up)) {
        if (r->to_down.eof && !r->to_down.dead && r->dfd >= 0) {
            loop_watch_del(r->loop, &r->uw);
            loop_watch_del(r->loop, &r->dw);
            loop_watch_del(r->loop, &r->lw);
            r->linger = loop_timer_add(r->loop, RELAY_HANGUP_LINGER_MS, 0, on_linger, r);
            if (r->linger)
                return;
        }
        end(r, NULL);
        return;
    }
    /* The kernel's side is watched once the gateway's socket is there (or while its tcp
     * connect completes): a hang-up before that is seen, and delivered, after it came. */
    if (!r->uw && r->ufd >= 0 && (r->dfd >= 0 || r->connecting) &&
        side_needed(&r->to_down, &r->to_up)) {
        r->uev = 0;
        r->uw = loop_io_add(r->loop, r->ufd, 0, on_up, r);
        if (!r->uw) {
            end(r, NULL);
            return;
        }
    }
    if (r->uw && !side_needed(&r->to_down, &r->to_up))
        loop_watch_del(r->loop, &r->uw);
    if (r->dw && !side_needed(&r->to_up, &r->to_down))
        loop_watch_del(r->loop, &r->dw);
    unsigned uev = r->connecting ? LOOP_WRITE : side_events(r, &r->to_down, &r->to_up);
    unsigned dev = side_events(r, &r->to_up, &r->to_down);
    /* Each change is a system call: only when the set really changes. */
    if (r->uw && uev != r->uev && loop_io_mod(r->loop, r->uw, uev) == 0)
        r->uev = uev;
    if (r->dw && dev != r->dev && loop_io_mod(r->loop, r->dw, dev) == 0)
        r->dev = dev;
}

/* d's destination is gone: what it held is dropped. */
static void kill_dir(dir_t *d) {
    d->dead = true;
    pend_free(&d->pend);
}

/* Writes what waits for d's destination; a destination gone kills d. */
static void flush(dir_t *d) {
    pend_t *p = &d->pend;
    while (!pend_empty(p)) {
        ssize_t n = send(*d->dst, p->data + p->off, p->len - p->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                kill_dir(d);
            return;
        }
        p->off += (size_t)n;
    }
    pend_free(p); /* only back-pressure needs a buffer: none is kept */
}

/* Moves bytes from d's source to its destination: one read, or, when the source hangs up,
 * all it still holds (bounded by its socket buffer: nothing more can arrive). `other` is the
 * direction into d's source. 0, or -1 once the relay ended. */
static int pump(gw_relay_t *r, dir_t *d, dir_t *other, bool drain) {
    uint8_t buf[RELAY_CHUNK];
    do {
        ssize_t n = read(*d->src, buf, sizeof buf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            /* Hung up (or reset): libzmq never half-closes, so that side is gone both ways. */
            d->eof = true;
            kill_dir(other);
            break;
        }
        if (d->guarded && zguard_feed(&r->guard, buf, (size_t)n) < 0) {
            end(r, r->guard.why);
            return -1;
        }
        if (d->dead)
            continue; /* its destination is gone: read to the end, keep nothing */
        size_t sent = 0;
        if (pend_empty(&d->pend)) {
            ssize_t w = send(*d->dst, buf, (size_t)n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                kill_dir(d);
                continue;
            }
            sent = w > 0 ? (size_t)w : 0;
        }
        if (sent < (size_t)n && pend_add(&d->pend, buf + sent, (size_t)n - sent) < 0) {
            end(r, NULL);
            return -1;
        }
    } while (drain);
    return 0;
}

/* Events on one side: its fd is the source of `from` and the destination of `to`. */
static void on_side(gw_relay_t *r, dir_t *from, dir_t *to, unsigned events) {
    if ((events & LOOP_WRITE) && !to->dead && !pend_empty(&to->pend))
        flush(to);
    /* A hang-up or error is reported whatever we asked for: read what is left now (a reset
     * connection still gives what came before it), or it would fire again and again. */
    if ((events & (LOOP_HUP | LOOP_ERR)) && !from->eof) {
        if (pump(r, from, to, true) < 0)
            return;
    } else if ((events & LOOP_READ) && side_events(r, from, to) & LOOP_READ) {
        if (pump(r, from, to, false) < 0)
            return;
    }
    settle(r);
}

static void on_up(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    gw_relay_t *r = arg;
    if (r->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            fail(r);
            return;
        }
        r->connecting = false;
        if (r->dfd < 0)
            loop_watch_del(loop, &r->uw); /* back when the gateway's socket comes */
        settle(r);
        return;
    }
    on_side(r, &r->to_down, &r->to_up, events);
}

static void on_down(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    gw_relay_t *r = arg;
    on_side(r, &r->to_up, &r->to_down, events);
}

static void on_listen(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    gw_relay_t *r = arg;
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
        /* Out of descriptors or memory, the connection stays queued and this would fire
         * forever: closing the listener resets it, which the worker sees. */
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
            end(r, NULL);
        return;
    }
    /* Only our own socket: an abstract address is visible to every process of the host's
     * network namespace (no sandbox: each has a namespace of its own), which could try it. */
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid != getpid()) {
        close(c);
        return;
    }
    r->dfd = c;
    loop_watch_del(loop, &r->lw);
    closep(&r->lfd);
    if (r->failed) {
        end(r, NULL);
        return;
    }
    r->dev = 0;
    r->dw = loop_io_add(loop, r->dfd, 0, on_down, r);
    if (!r->dw) {
        end(r, NULL);
        return;
    }
    settle(r);
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

    /* The gateway's side: a random abstract address, taken once (see on_listen). */
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
    if (!rl->lw)
        goto fail_errno;
    if (rl->connecting) {
        rl->uev = LOOP_WRITE;
        rl->uw = loop_io_add(loop, rl->ufd, LOOP_WRITE, on_up, rl);
        if (!rl->uw)
            goto fail_errno;
    }
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
