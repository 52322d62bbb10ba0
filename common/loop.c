/* epoll event loop with ZeroMQ, timer, signal, deferred-call and thread-pool support.
 *
 * ZeroMQ's ZMQ_FD is edge-like: it signals when the socket's event state may have changed and
 * stays quiet until the next change. So a zmq watch is called repeatedly while ZMQ_EVENTS has
 * ZMQ_POLLIN, and a send (which can swallow the edge) must kick a re-check. Watches removed
 * inside a callback are only marked dead and freed after the current batch, so a pointer in
 * the epoll batch is never dangling.
 *
 * Timers are a binary min-heap of deadlines that sets epoll_wait's timeout, not a timerfd
 * each: the gateway arms and drops a few timers per request (an execution's timeout, a late
 * idle's probe), and a timerfd costs five system calls over its life (create, settime,
 * epoll add and delete, close) where the heap costs none. */
#include "loop.h"
#include "util.h"

#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <czmq.h>
#include <zmq.h>

enum watch_kind { W_IO, W_ZMQ, W_TIMER, W_SIGNAL, W_INTERNAL };

struct loop_watch {
    enum watch_kind kind;
    int fd;
    bool owns_fd;
    bool dead;
    bool kicked;
    int signo;
    void *sock; /* as given by the caller */
    void *raw;  /* libzmq handle */
    union {
        loop_io_fn io;
        loop_zmq_fn zmq;
        loop_timer_fn timer;
        loop_signal_fn sig;
    } fn;
    void *arg;
    loop_watch_t *next_dead;
    loop_watch_t *next_kick;
    /* W_TIMER: period (0: one-shot), place in the heap (-1: not in it) */
    uint64_t period_us;
    ssize_t heap_at;
};

/* A heap entry keeps its deadline next to the watch: sifting compares without a pointer
 * chase. */
typedef struct {
    uint64_t due_us;
    loop_watch_t *w;
} timer_slot_t;

struct defer {
    loop_defer_fn fn;
    void *arg;
    struct defer *next;
};

struct job {
    loop_work_fn work;
    loop_done_fn done;
    void *arg;
    struct job *next;
};

struct loop {
    int epfd;
    bool stop;
    loop_watch_t *dead;
    loop_watch_t *kicks;
    struct defer *defer_head, *defer_tail;
    timer_slot_t *timers; /* min-heap on due_us */
    size_t ntimers, timers_cap;

    /* thread pool */
    unsigned nthreads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool pool_stop;
    struct job *queue_head, *queue_tail;
    struct job *done_head, *done_tail;
    int efd;
    loop_watch_t *efd_watch;
};

static uint32_t to_epoll(unsigned ev) {
    uint32_t e = 0;
    if (ev & LOOP_READ)
        e |= EPOLLIN;
    if (ev & LOOP_WRITE)
        e |= EPOLLOUT;
    return e;
}

static loop_watch_t *watch_new(loop_t *loop, enum watch_kind kind, int fd, uint32_t ev) {
    loop_watch_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->kind = kind;
    w->fd = fd;
    struct epoll_event e = {.events = ev, .data.ptr = w};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
        int saved = errno;
        free(w);
        errno = saved;
        return NULL;
    }
    return w;
}

loop_watch_t *loop_io_add(loop_t *loop, int fd, unsigned events, loop_io_fn fn, void *arg) {
    loop_watch_t *w = watch_new(loop, W_IO, fd, to_epoll(events));
    if (!w)
        return NULL;
    w->fn.io = fn;
    w->arg = arg;
    return w;
}

int loop_io_mod(loop_t *loop, loop_watch_t *w, unsigned events) {
    struct epoll_event e = {.events = to_epoll(events), .data.ptr = w};
    return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, w->fd, &e) < 0 ? -errno : 0;
}

loop_watch_t *loop_zmq_add(loop_t *loop, void *sock, loop_zmq_fn fn, void *arg) {
    void *raw = zsock_resolve(sock);
    int fd;
    size_t len = sizeof fd;
    if (!raw || zmq_getsockopt(raw, ZMQ_FD, &fd, &len) < 0)
        return NULL;
    loop_watch_t *w = watch_new(loop, W_ZMQ, fd, EPOLLIN | EPOLLET);
    if (!w)
        return NULL;
    w->sock = sock;
    w->raw = raw;
    w->fn.zmq = fn;
    w->arg = arg;
    /* Messages may already be queued: the edge for them happened before we watched. */
    loop_zmq_kick(loop, w);
    return w;
}

void loop_zmq_kick(loop_t *loop, loop_watch_t *w) {
    if (!w || w->dead || w->kicked)
        return;
    w->kicked = true;
    w->next_kick = loop->kicks;
    loop->kicks = w;
}

static bool zmq_readable(loop_watch_t *w) {
    int ev = 0;
    size_t len = sizeof ev;
    if (zmq_getsockopt(w->raw, ZMQ_EVENTS, &ev, &len) < 0)
        return false;
    return (ev & ZMQ_POLLIN) != 0;
}

static void zmq_dispatch(loop_t *loop, loop_watch_t *w) {
    /* Bounded so one busy socket cannot starve the rest; a leftover gets a kick. */
    for (int i = 0; i < 64 && !w->dead && zmq_readable(w); i++)
        w->fn.zmq(loop, w, w->sock, w->arg);
    if (!w->dead && zmq_readable(w))
        loop_zmq_kick(loop, w);
}

/* ---- timers (the heap) ---- */

static void heap_set(loop_t *loop, size_t i, timer_slot_t slot) {
    loop->timers[i] = slot;
    slot.w->heap_at = (ssize_t)i;
}

static void heap_up(loop_t *loop, size_t i) {
    timer_slot_t t = loop->timers[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (loop->timers[parent].due_us <= t.due_us)
            break;
        heap_set(loop, i, loop->timers[parent]);
        i = parent;
    }
    heap_set(loop, i, t);
}

static void heap_down(loop_t *loop, size_t i) {
    timer_slot_t t = loop->timers[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= loop->ntimers)
            break;
        if (c + 1 < loop->ntimers && loop->timers[c + 1].due_us < loop->timers[c].due_us)
            c++;
        if (t.due_us <= loop->timers[c].due_us)
            break;
        heap_set(loop, i, loop->timers[c]);
        i = c;
    }
    heap_set(loop, i, t);
}

/* Puts w in the heap at due_us, or moves it there. */
static int heap_schedule(loop_t *loop, loop_watch_t *w, uint64_t due_us) {
    if (w->heap_at < 0) {
        if (loop->ntimers == loop->timers_cap) {
            size_t ncap = loop->timers_cap ? loop->timers_cap * 2 : 16;
            timer_slot_t *n = realloc(loop->timers, ncap * sizeof *n);
            if (!n)
                return -ENOMEM;
            loop->timers = n;
            loop->timers_cap = ncap;
        }
        w->heap_at = (ssize_t)loop->ntimers++;
    }
    size_t i = (size_t)w->heap_at;
    loop->timers[i] = (timer_slot_t){.due_us = due_us, .w = w};
    heap_up(loop, i);
    heap_down(loop, (size_t)w->heap_at);
    return 0;
}

static void heap_remove(loop_t *loop, loop_watch_t *w) {
    if (w->heap_at < 0)
        return;
    size_t i = (size_t)w->heap_at;
    w->heap_at = -1;
    timer_slot_t last = loop->timers[--loop->ntimers];
    if (last.w == w)
        return;
    heap_set(loop, i, last);
    heap_up(loop, i);
    heap_down(loop, (size_t)last.w->heap_at);
}

loop_watch_t *loop_timer_add(loop_t *loop, uint64_t after_ms, uint64_t repeat_ms, loop_timer_fn fn,
                             void *arg) {
    loop_watch_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    *w = (loop_watch_t){.kind = W_TIMER, .fd = -1, .heap_at = -1, .arg = arg};
    w->fn.timer = fn;
    if (loop_timer_rearm(loop, w, after_ms, repeat_ms) < 0) {
        free(w);
        errno = ENOMEM;
        return NULL;
    }
    return w;
}

int loop_timer_rearm(loop_t *loop, loop_watch_t *w, uint64_t after_ms, uint64_t repeat_ms) {
    if (!w || w->kind != W_TIMER || w->dead)
        return -EINVAL;
    if (after_ms == 0)
        after_ms = 1; /* as a timerfd: never "now" */
    w->period_us = repeat_ms * 1000u;
    return heap_schedule(loop, w, now_mono_us() + after_ms * 1000u);
}

/* epoll_wait's timeout for the earliest timer: -1 without one; rounded up, so a timer is
 * never woken for before its deadline. */
static int timers_timeout_ms(loop_t *loop) {
    if (loop->ntimers == 0)
        return -1;
    uint64_t now = now_mono_us(), due = loop->timers[0].due_us;
    if (due <= now)
        return 0;
    uint64_t ms = (due - now + 999) / 1000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* Runs the timers that are due, each at most once per pass (a periodic one that fell behind
 * fires once, as a timerfd read reports its overruns in one wakeup). */
static void timers_run(loop_t *loop) {
    uint64_t now = now_mono_us();
    size_t budget = loop->ntimers;
    while (budget-- > 0 && loop->ntimers > 0 && !loop->stop) {
        timer_slot_t t = loop->timers[0];
        loop_watch_t *w = t.w;
        if (t.due_us > now)
            break;
        if (w->period_us) {
            uint64_t next = t.due_us + w->period_us;
            /* Already in the heap: moving it allocates nothing, so it cannot fail. */
            (void)heap_schedule(loop, w, next > now ? next : now + w->period_us);
        } else {
            heap_remove(loop, w);
        }
        w->fn.timer(loop, w, w->arg);
    }
}

loop_watch_t *loop_signal_add(loop_t *loop, int signo, loop_signal_fn fn, void *arg) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return NULL;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    loop_watch_t *w = watch_new(loop, W_SIGNAL, fd, EPOLLIN);
    if (!w) {
        close(fd);
        return NULL;
    }
    w->owns_fd = true;
    w->signo = signo;
    w->fn.sig = fn;
    w->arg = arg;
    return w;
}

void loop_watch_del(loop_t *loop, loop_watch_t **w_p) {
    loop_watch_t *w = w_p ? *w_p : NULL;
    if (!w)
        return;
    *w_p = NULL;
    if (w->dead)
        return;
    w->dead = true;
    if (w->kind == W_TIMER)
        heap_remove(loop, w);
    else
        epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    if (w->owns_fd) {
        close(w->fd);
        w->fd = -1;
    }
    w->next_dead = loop->dead;
    loop->dead = w;
}

static void reap_dead(loop_t *loop) {
    /* Kicks may point at dead watches: drop those first. */
    loop_watch_t **pp = &loop->kicks;
    while (*pp) {
        if ((*pp)->dead)
            *pp = (*pp)->next_kick;
        else
            pp = &(*pp)->next_kick;
    }
    while (loop->dead) {
        loop_watch_t *w = loop->dead;
        loop->dead = w->next_dead;
        free(w);
    }
}

int loop_defer(loop_t *loop, loop_defer_fn fn, void *arg) {
    struct defer *d = malloc(sizeof *d);
    if (!d)
        return -ENOMEM;
    *d = (struct defer){.fn = fn, .arg = arg};
    if (loop->defer_tail)
        loop->defer_tail->next = d;
    else
        loop->defer_head = d;
    loop->defer_tail = d;
    return 0;
}

static void run_defers(loop_t *loop) {
    /* Only the ones queued before this pass: a defer that defers again runs next pass. */
    struct defer *d = loop->defer_head;
    loop->defer_head = loop->defer_tail = NULL;
    while (d) {
        struct defer *next = d->next;
        d->fn(loop, d->arg);
        free(d);
        d = next;
    }
}

static void *pool_main(void *p) {
    loop_t *loop = p;
    /* Signals belong to the loop thread (signalfd): a pool thread must never take one, or a
     * SIGTERM would hit its default action there. Children forked from here must reset
     * their mask before exec. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&loop->mu);
    for (;;) {
        while (!loop->queue_head && !loop->pool_stop)
            pthread_cond_wait(&loop->cv, &loop->mu);
        struct job *j = loop->queue_head;
        if (!j)
            break; /* stopping and the queue is drained */
        loop->queue_head = j->next;
        if (!loop->queue_head)
            loop->queue_tail = NULL;
        pthread_mutex_unlock(&loop->mu);
        j->work(j->arg);
        pthread_mutex_lock(&loop->mu);
        j->next = NULL;
        if (loop->done_tail)
            loop->done_tail->next = j;
        else
            loop->done_head = j;
        loop->done_tail = j;
        uint64_t one = 1;
        (void)!write(loop->efd, &one, sizeof one);
    }
    pthread_mutex_unlock(&loop->mu);
    return NULL;
}

static void run_done(loop_t *loop) {
    pthread_mutex_lock(&loop->mu);
    struct job *j = loop->done_head;
    loop->done_head = loop->done_tail = NULL;
    pthread_mutex_unlock(&loop->mu);
    while (j) {
        struct job *next = j->next;
        if (j->done)
            j->done(loop, j->arg);
        free(j);
        j = next;
    }
}

static void on_efd(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    uint64_t v;
    (void)!read(fd, &v, sizeof v);
    run_done(loop);
}

int loop_work_submit(loop_t *loop, loop_work_fn work, loop_done_fn done, void *arg) {
    if (loop->nthreads == 0)
        return -ENOTSUP;
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    *j = (struct job){.work = work, .done = done, .arg = arg};
    pthread_mutex_lock(&loop->mu);
    if (loop->queue_tail)
        loop->queue_tail->next = j;
    else
        loop->queue_head = j;
    loop->queue_tail = j;
    pthread_cond_signal(&loop->cv);
    pthread_mutex_unlock(&loop->mu);
    return 0;
}

loop_t *loop_new(unsigned nthreads) {
    loop_t *loop = calloc(1, sizeof *loop);
    if (!loop)
        return NULL;
    loop->efd = -1;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0)
        goto fail;
    pthread_mutex_init(&loop->mu, NULL);
    pthread_cond_init(&loop->cv, NULL);
    if (nthreads > 0) {
        loop->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (loop->efd < 0)
            goto fail;
        loop->efd_watch = loop_io_add(loop, loop->efd, LOOP_READ, on_efd, NULL);
        if (!loop->efd_watch)
            goto fail;
        loop->threads = calloc(nthreads, sizeof *loop->threads);
        if (!loop->threads)
            goto fail;
        for (unsigned i = 0; i < nthreads; i++) {
            if (pthread_create(&loop->threads[i], NULL, pool_main, loop) != 0)
                goto fail;
            loop->nthreads++;
        }
    }
    return loop;
fail:
    loop_destroy(&loop);
    return NULL;
}

void loop_destroy(loop_t **loop_p) {
    loop_t *loop = loop_p ? *loop_p : NULL;
    if (!loop)
        return;
    pthread_mutex_lock(&loop->mu);
    loop->pool_stop = true;
    pthread_cond_broadcast(&loop->cv);
    pthread_mutex_unlock(&loop->mu);
    for (unsigned i = 0; i < loop->nthreads; i++)
        pthread_join(loop->threads[i], NULL);
    free(loop->threads);
    /* Done callbacks may still use the loop (to delete their watches): keep *loop_p valid
     * until they have run. */
    run_done(loop);
    run_defers(loop);
    *loop_p = NULL;
    loop_watch_del(loop, &loop->efd_watch);
    reap_dead(loop);
    while (loop->defer_head) {
        struct defer *d = loop->defer_head;
        loop->defer_head = d->next;
        free(d);
    }
    if (loop->efd >= 0)
        close(loop->efd);
    if (loop->epfd >= 0)
        close(loop->epfd);
    /* Timers still armed belong to callers that did not delete them: only the heap goes. */
    for (size_t i = 0; i < loop->ntimers; i++)
        loop->timers[i].w->heap_at = -1;
    free(loop->timers);
    pthread_mutex_destroy(&loop->mu);
    pthread_cond_destroy(&loop->cv);
    free(loop);
}

void loop_stop(loop_t *loop) {
    loop->stop = true;
}

static void dispatch(loop_t *loop, loop_watch_t *w, uint32_t ev) {
    if (w->dead)
        return;
    switch (w->kind) {
    case W_IO: {
        unsigned e = 0;
        if (ev & EPOLLIN)
            e |= LOOP_READ;
        if (ev & EPOLLOUT)
            e |= LOOP_WRITE;
        if (ev & (EPOLLHUP | EPOLLRDHUP))
            e |= LOOP_HUP;
        if (ev & EPOLLERR)
            e |= LOOP_ERR;
        w->fn.io(loop, w, w->fd, e, w->arg);
        break;
    }
    case W_ZMQ:
        zmq_dispatch(loop, w);
        break;
    case W_TIMER: /* never in epoll: timers_run */
        break;
    case W_SIGNAL: {
        struct signalfd_siginfo si;
        while (!w->dead && read(w->fd, &si, sizeof si) == (ssize_t)sizeof si)
            w->fn.sig(loop, (int)si.ssi_signo, w->arg);
        break;
    }
    case W_INTERNAL:
        break;
    }
}

int loop_run(loop_t *loop) {
    struct epoll_event evs[128];
    loop->stop = false;
    while (!loop->stop) {
        run_defers(loop);
        /* Re-check kicked zmq sockets until none is readable; each pass is bounded. */
        while (loop->kicks && !loop->stop) {
            loop_watch_t *k = loop->kicks;
            loop->kicks = NULL;
            while (k) {
                loop_watch_t *next = k->next_kick;
                k->kicked = false;
                if (!k->dead)
                    zmq_dispatch(loop, k);
                k = next;
            }
            reap_dead(loop);
            if (loop->defer_head)
                break;
        }
        if (loop->stop)
            break;
        int timeout = (loop->defer_head || loop->kicks) ? 0 : timers_timeout_ms(loop);
        int n = epoll_wait(loop->epfd, evs, (int)ARRAY_SIZE(evs), timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (int i = 0; i < n && !loop->stop; i++)
            dispatch(loop, evs[i].data.ptr, evs[i].events);
        timers_run(loop);
        reap_dead(loop);
    }
    return 0;
}
