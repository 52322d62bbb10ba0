/* The worker pool: min_idle workers kept warm, max_total never exceeded (starting, ready and
 * stopping workers all count, since all hold resources), sessions waiting for a worker in
 * FIFO order with a bounded wait. A new session takes an idle worker at once; a session that
 * needs a worker while none is idle starts one (under max) and waits for the first to become
 * ready, whichever worker that is. */
#include "gw.h"
#include "log.h"
#include "util.h"

static uint32_t count_starting_unclaimed(const gw_t *gw) {
    uint32_t n = 0;
    const gw_worker_t *w;
    TAILQ_FOREACH(w, &gw->workers, link)
    if (w->state == WORKER_STARTING && !w->doomed && !w->reserved_for[0])
        n++;
    return n;
}

void gw_counts(const gw_t *gw, gw_counts_t *ret) {
    gw_counts_t c = {0};
    const gw_worker_t *w;
    TAILQ_FOREACH(w, &gw->workers, link) {
        switch (w->state) {
        case WORKER_STARTING:
            c.starting++;
            break;
        case WORKER_READY:
            if (w->session) {
                c.busy++;
                if (w->session->running)
                    c.executing++;
            } else {
                c.idle++;
            }
            break;
        case WORKER_STOPPING:
            c.stopping++;
            break;
        }
    }
    const gw_session_t *s;
    TAILQ_FOREACH(s, &gw->sessions, link) {
        c.sessions++;
        c.queued += s->nqueued;
    }
    TAILQ_FOREACH(s, &gw->waiting, wait_link)
    c.waiting++;
    *ret = c;
}

static void spawn_one(gw_t *gw) {
    int r = gw_worker_spawn(gw, NULL, NULL);
    if (r < 0)
        log_error("pool", "cannot start a worker", "{s:s}", "error", strerror(-r));
}

/* A session that owns a disk needs a worker started for it, with that disk and its uid. */
static bool needs_dedicated(const gw_t *gw, const gw_session_t *s) {
    return gw->disks && s->disk_name[0];
}

static uint32_t count_starting(const gw_t *gw) {
    uint32_t n = 0;
    const gw_worker_t *w;
    TAILQ_FOREACH(w, &gw->workers, link)
    if (w->state == WORKER_STARTING)
        n++;
    return n;
}

static bool can_start(const gw_t *gw) {
    return gw->nworkers_live < gw->cfg.max_total_workers && !gw->backoff_timer &&
           count_starting(gw) < gw->cfg.max_starting_workers;
}

static gw_session_t *first_generic_waiter(gw_t *gw) {
    gw_session_t *s;
    TAILQ_FOREACH(s, &gw->waiting, wait_link)
    if (!needs_dedicated(gw, s))
        return s;
    return NULL;
}

static void spawn_dedicated(gw_t *gw) {
    gw_session_t *s;
    TAILQ_FOREACH(s, &gw->waiting, wait_link) {
        if (!needs_dedicated(gw, s) || s->spawn_pending || s->disk_busy)
            continue;
        if (!can_start(gw))
            return;
        int r = gw_worker_spawn(gw, s, NULL);
        if (r < 0) {
            log_error("pool", "cannot start a worker", "{s:s}", "error", strerror(-r));
            return;
        }
        s->spawn_pending = true;
    }
}

void gw_pool_top_up(gw_t *gw) {
    if (gw->shutting_down)
        return;
    spawn_dedicated(gw);
    /* Waiting sessions first: each needs a worker that is starting or about to. */
    uint32_t waiting = 0;
    gw_session_t *s;
    TAILQ_FOREACH(s, &gw->waiting, wait_link)
    if (!needs_dedicated(gw, s))
        waiting++;
    uint32_t starting = count_starting_unclaimed(gw);
    uint32_t idle = 0;
    gw_worker_t *w;
    TAILQ_FOREACH(w, &gw->idle, idle_link)
    idle++;
    /* Hand idle workers to waiters (only possible if one became idle meanwhile). */
    while (waiting > 0 && !TAILQ_EMPTY(&gw->idle)) {
        gw_session_t *ws = first_generic_waiter(gw);
        gw_worker_t *iw = TAILQ_FIRST(&gw->idle);
        gw_pool_cancel_wait(gw, ws);
        TAILQ_REMOVE(&gw->idle, iw, idle_link);
        iw->in_idle = false;
        idle--;
        waiting--;
        gw_session_on_worker_ready(ws, iw);
    }
    if (gw->backoff_timer)
        return; /* recent start failures: do not spin on a broken launcher */
    uint32_t want = waiting + gw->cfg.min_idle_workers;
    uint32_t have = starting + idle;
    while (have < want && can_start(gw)) {
        uint32_t before = gw->nworkers_live;
        spawn_one(gw);
        if (gw->nworkers_live == before)
            break; /* spawn failed; the next top-up (a worker freed, a timer) tries again */
        have++;
    }
    if (gw->initializing && count_starting_unclaimed(gw) == 0)
        gw->initializing = false;
}

static void on_acquire_timeout(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_session_t *s = arg;
    gw_t *gw = s->gw;
    gw_pool_cancel_wait(gw, s);
    log_warn("pool", "no worker available in time", "{s:s}", "kernel_id", s->kernel_id);
    gw_session_on_worker_lost(s, NULL, NULL);
}

void gw_pool_request(gw_t *gw, gw_session_t *s) {
    if (s->worker || s->waiting)
        return;
    if (!needs_dedicated(gw, s) && !TAILQ_EMPTY(&gw->idle)) {
        gw_worker_t *w = TAILQ_FIRST(&gw->idle);
        TAILQ_REMOVE(&gw->idle, w, idle_link);
        w->in_idle = false;
        gw_session_on_worker_ready(s, w);
        gw_pool_top_up(gw);
        return;
    }
    s->waiting = true;
    TAILQ_INSERT_TAIL(&gw->waiting, s, wait_link);
    s->acquire_timer =
        loop_timer_add(gw->loop, gw->cfg.acquire_timeout_ms ? gw->cfg.acquire_timeout_ms : 1, 0,
                       on_acquire_timeout, s);
    gw_pool_top_up(gw);
}

void gw_pool_cancel_wait(gw_t *gw, gw_session_t *s) {
    if (!s->waiting)
        return;
    TAILQ_REMOVE(&gw->waiting, s, wait_link);
    s->waiting = false;
    loop_watch_del(gw->loop, &s->acquire_timer);
}

void gw_pool_on_worker_ready(gw_t *gw, gw_worker_t *w) {
    gw->spawn_failures = 0;
    if (gw->shutting_down) {
        gw_worker_destroy(w, "shutting down");
        return;
    }
    if (w->reserved_for[0]) {
        gw_session_t *s = gw_session_find_kernel(gw, w->reserved_for);
        if (!s || s->released || s->worker) {
            gw_worker_destroy(w, "its session is gone");
        } else {
            gw_pool_cancel_wait(gw, s);
            gw_session_on_worker_ready(s, w);
        }
        gw_pool_top_up(gw);
        return;
    }
    gw_session_t *waiter = first_generic_waiter(gw);
    if (waiter) {
        gw_pool_cancel_wait(gw, waiter);
        gw_session_on_worker_ready(waiter, w);
    } else {
        TAILQ_INSERT_TAIL(&gw->idle, w, idle_link);
        w->in_idle = true;
    }
    gw_pool_top_up(gw);
}

static void on_backoff(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_t *gw = arg;
    loop_watch_del(loop, &gw->backoff_timer);
    gw_pool_top_up(gw);
}

void gw_pool_on_worker_failed(gw_t *gw, gw_worker_t *w) {
    /* The failed worker still counts until its cleanup is done. Waiters keep waiting (bounded
     * by their acquire timer); new starts back off exponentially, 100 ms up to 10 s. */
    if (w->reserved_for[0]) {
        gw_session_t *s = gw_session_find_kernel(gw, w->reserved_for);
        if (s)
            s->spawn_pending = false;
    }
    gw->spawn_failures++;
    if (w->start_err == -ENOSPC) {
        /* The host cannot hold another disk: waiting will not help, say so now. */
        gw_session_t *ws;
        while ((ws = TAILQ_FIRST(&gw->waiting))) {
            gw_pool_cancel_wait(gw, ws);
            gw_session_on_worker_lost(ws, NULL, "the host has no room for another worker disk");
        }
    }
    if (gw->backoff_timer || gw->shutting_down)
        return;
    uint64_t ms = 100;
    for (uint32_t i = 1; i < gw->spawn_failures && ms < 10000; i++)
        ms *= 2;
    gw->backoff_timer = loop_timer_add(gw->loop, ms > 10000 ? 10000 : ms, 0, on_backoff, gw);
}
