/* Sessions and their executions. A session runs its executions one at a time in arrival order
 * (a bounded queue), on whatever worker currently backs it. The end of an execution is the
 * execute_reply on shell AND the idle status on iopub, both parented to the request.
 *
 * Timeouts interrupt first and replace the worker only if the kernel does not go idle within
 * the grace period, so a `time.sleep` keeps the session and a loop that swallows
 * KeyboardInterrupt does not spin on. Exactly one answer goes to each HTTP client. */
#include "gw.h"
#include "log.h"
#include "util.h"

#include <time.h>

#define EXPIRED_MAX  10000
#define IDLE_LATE_MS 1000 /* after the reply, how long the idle may lag before we probe */

gw_session_t *gw_session_find_user(gw_t *gw, const char *user_uuid) {
    return user_uuid ? zhashx_lookup(gw->by_user, user_uuid) : NULL;
}

gw_session_t *gw_session_find_kernel(gw_t *gw, const char *kernel_id) {
    return kernel_id ? zhashx_lookup(gw->by_kernel, kernel_id) : NULL;
}

int gw_session_new(gw_t *gw, const char *user_uuid, const char *kernel_name, gw_session_t **ret) {
    gw_session_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->gw = gw;
    TAILQ_INIT(&s->queue);
    TAILQ_INIT(&s->pending);
    TAILQ_INIT(&s->clients);
    snprintf(s->execution_state, sizeof s->execution_state, "starting");
    s->routes = zhashx_new();
    if (!s->routes) {
        free(s);
        return -ENOMEM;
    }
    uuid4(s->kernel_id);
    snprintf(s->kernel_name, sizeof s->kernel_name, "%s", kernel_name ? kernel_name : "python3");
    s->last_activity_us = now_wall_us();
    s->last_activity_mono_ms = now_mono_ms();
    if (user_uuid) {
        s->user_uuid = strdup(user_uuid);
        if (!s->user_uuid) {
            zhashx_destroy(&s->routes);
            free(s);
            return -ENOMEM;
        }
        /* A session released for idleness comes back reset: tell the caller. */
        if (zhashx_lookup(gw->expired, user_uuid)) {
            s->reset_pending = true;
            zhashx_delete(gw->expired, user_uuid);
        }
        zhashx_insert(gw->by_user, user_uuid, s);
    }
    zhashx_insert(gw->by_kernel, s->kernel_id, s);
    TAILQ_INSERT_TAIL(&gw->sessions, s, link);
    log_info("session", "session created", "{s:s,s:b}", "kernel_id", s->kernel_id, "user",
             user_uuid != NULL);
    *ret = s;
    return 0;
}

void gw_exec_free(gw_exec_t **exec_p) {
    gw_exec_t *e = exec_p ? *exec_p : NULL;
    if (!e)
        return;
    *exec_p = NULL;
    if (e->session) {
        loop_watch_del(e->session->gw->loop, &e->timeout_timer);
        loop_watch_del(e->session->gw->loop, &e->grace_timer);
        loop_watch_del(e->session->gw->loop, &e->idle_timer);
    }
    exec_out_destroy(&e->out);
    free(e->code);
    free(e);
}

static void record_outcome(gw_t *gw, gw_exec_t *e, enum gw_outcome o) {
    gw->metrics.executions[o]++;
    if (e->started_us)
        gw_hist_observe(&gw->metrics.exec_seconds, (double)(now_mono_us() - e->started_us) / 1e6);
}

/* Answer and free the running execution. */
static void finish_running(gw_session_t *s, int status, const char *error, const char *detail,
                           enum gw_outcome outcome) {
    gw_exec_t *e = s->running;
    if (!e)
        return;
    s->running = NULL;
    record_outcome(s->gw, e, outcome);
    gw_api_exec_done(e, status, error, detail);
    gw_exec_free(&e);
    s->last_activity_us = now_wall_us();
    s->last_activity_mono_ms = now_mono_ms();
}

static void fail_queued(gw_session_t *s, int status, const char *error, const char *detail) {
    gw_exec_t *e;
    while ((e = TAILQ_FIRST(&s->queue))) {
        TAILQ_REMOVE(&s->queue, e, link);
        s->nqueued--;
        record_outcome(s->gw, e, OUTCOME_REJECTED);
        gw_api_exec_done(e, status, error, detail);
        gw_exec_free(&e);
    }
}

static void on_grace(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_session_t *s = arg;
    gw_exec_t *e = s->running;
    if (!e)
        return;
    loop_watch_del(loop, &e->grace_timer);
    /* The kernel ignored the interrupt: it is replaced, and the user is told so. */
    gw_worker_t *w = s->worker;
    s->worker = NULL;
    if (w)
        w->session = NULL;
    e->session_reset = true;
    s->reset_pending = true;
    exec_out_set_error(e->out, "TimeoutError", "execution timed out and did not stop");
    log_warn("session", "kernel ignored interrupt; replacing worker", "{s:s}", "kernel_id",
             s->kernel_id);
    finish_running(s, 504, "execution timed out",
                   "the kernel did not stop when interrupted; the session was reset",
                   OUTCOME_RESET);
    gw_worker_destroy(w, "timeout");
    gw_exec_t *next = TAILQ_FIRST(&s->queue);
    if (next)
        gw_pool_request(s->gw, s);
}

static void maybe_finish(gw_session_t *s);
static void pump(gw_session_t *s);

static void on_timeout(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_session_t *s = arg;
    gw_exec_t *e = s->running;
    if (!e)
        return;
    loop_watch_del(loop, &e->timeout_timer);
    if (e->got_reply) {
        /* Our code has finished; only its idle went missing (and the probes' too). */
        e->got_idle = true;
        maybe_finish(s);
        return;
    }
    if (!e->got_busy) {
        /* The kernel has not started our code: it is running someone else's (a Jupyter
         * client's cell that slipped in before ours). Never interrupt their work: wait as
         * long as for a worker, then give up on ours. */
        if (!e->waited_for_start) {
            e->waited_for_start = true;
            e->timeout_timer =
                loop_timer_add(loop, s->gw->cfg.acquire_timeout_ms, 0, on_timeout, s);
            return;
        }
        /* If it ever starts, nobody is waiting for it: stop it then. */
        snprintf(s->abandoned_msg_id, sizeof s->abandoned_msg_id, "%s", e->msg_id);
        finish_running(s, 503, "kernel busy",
                       "another client's execution kept the kernel busy; the code was not run "
                       "in time and will be interrupted if it starts",
                       OUTCOME_REJECTED);
        return;
    }
    e->timed_out = true;
    gw_worker_interrupt(s->worker);
    e->grace_timer = loop_timer_add(loop, s->gw->cfg.interrupt_grace_ms, 0, on_grace, s);
}

/* A kernel_info_request queued on shell behind everything sent so far: the kernel publishes
 * its busy and idle after those of every earlier request, so its idle proves theirs are
 * past, even if they were lost on the way. */
static void send_probe(gw_session_t *s, char *probe_id, size_t len) {
    jwire_msg_t *m = s->worker ? gw_worker_msg(s->worker, "kernel_info_request", NULL) : NULL;
    if (!m)
        return;
    snprintf(probe_id, len, "%s", jwire_msg_id(m));
    gw_worker_send(s->worker, JWIRE_SHELL, m);
    jwire_msg_destroy(&m);
}

static void on_wait_timeout(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_exec_t *e = arg;
    gw_session_t *s = e->session;
    loop_watch_del(loop, &e->timeout_timer);
    TAILQ_REMOVE(&s->queue, e, link);
    s->nqueued--;
    record_outcome(s->gw, e, OUTCOME_REJECTED);
    gw_api_exec_done(e, 503, "kernel busy",
                     "another client's execution kept the kernel busy for --acquire-timeout-ms; "
                     "the code was not run");
    gw_exec_free(&e);
    pump(s); /* the next one waits with a bound of its own */
}

static void pump(gw_session_t *s) {
    gw_t *gw = s->gw;
    if (s->running || TAILQ_EMPTY(&s->queue) || s->released)
        return;
    gw_exec_t *e = TAILQ_FIRST(&s->queue);
    if (!s->worker) {
        loop_watch_del(gw->loop, &e->timeout_timer); /* waiting for a worker, not a cell */
        gw_pool_request(gw, s);
        return;
    }
    if (streq(s->execution_state, "busy")) {
        /* A Jupyter client's cell is running: ours waits here, as long as for a worker, not
         * in the kernel's queue, so its timeout never interrupts their work. The probe's
         * idle wakes us even if the idle that ends their cell goes missing. */
        if (!e->timeout_timer) {
            e->timeout_timer =
                loop_timer_add(gw->loop, gw->cfg.acquire_timeout_ms, 0, on_wait_timeout, e);
            send_probe(s, s->wait_probe_id, sizeof s->wait_probe_id);
        }
        return;
    }
    loop_watch_del(gw->loop, &e->timeout_timer);
    TAILQ_REMOVE(&s->queue, e, link);
    s->nqueued--;
    s->running = e;
    e->started = true;
    e->started_us = now_mono_us();
    if (s->reset_pending) {
        e->session_reset = true;
        s->reset_pending = false;
    }
    /* stop_on_error off: each /execute stands alone and we send the next only after this
     * one's idle, so there is never a queue to abort; with it on, ipykernel keeps aborting
     * for a moment after its idle, and the next request could come back "aborted", unrun
     * (its CI failed so: an interrupted cell, then `print(state)` answered empty). */
    json_t *content =
        json_pack("{s:s,s:b,s:b,s:{},s:b,s:b}", "code", e->code, "silent", 0, "store_history", 1,
                  "user_expressions", "allow_stdin", 0, "stop_on_error", 0);
    jwire_msg_t *m = content ? gw_worker_msg(s->worker, "execute_request", content) : NULL;
    int r = m ? gw_worker_send(s->worker, JWIRE_SHELL, m) : -ENOMEM;
    if (m)
        snprintf(e->msg_id, sizeof e->msg_id, "%s", jwire_msg_id(m));
    jwire_msg_destroy(&m);
    if (r < 0) {
        finish_running(s, 503, "kernel unavailable", strerror(-r), OUTCOME_DIED);
        return;
    }
    e->timeout_timer = loop_timer_add(gw->loop, e->timeout_ms, 0, on_timeout, s);
}

int gw_session_admit(gw_session_t *s, gw_exec_t *e) {
    if (s->nqueued >= s->gw->cfg.max_queue)
        return -EAGAIN;
    if (!e->out && !(e->out = exec_out_new(s->gw->cfg.max_output_bytes)))
        return -ENOMEM;
    return 0;
}

void gw_session_submit(gw_session_t *s, gw_exec_t *e) {
    e->session = s;
    e->queued_us = now_mono_us();
    TAILQ_INSERT_TAIL(&s->queue, e, link);
    s->nqueued++;
    s->last_activity_us = now_wall_us();
    s->last_activity_mono_ms = now_mono_ms();
    pump(s);
}

void gw_exec_client_gone(gw_exec_t *e) {
    gw_session_t *s = e->session;
    e->conn = NULL;
    if (!s)
        return;
    if (s->running == e) {
        /* Nobody will read the rest: stop the work rather than let it run to the timeout,
         * but only ours: until its busy, the kernel may be running someone else's cell. */
        if (e->got_busy)
            gw_worker_interrupt(s->worker);
        else
            e->interrupt_on_busy = true;
        return;
    }
    TAILQ_REMOVE(&s->queue, e, link);
    s->nqueued--;
    record_outcome(s->gw, e, OUTCOME_CANCELLED);
    gw_exec_free(&e);
    pump(s);
}

/* exit() in the code: the kernel ends on its own just after its reply (ipykernel 0.1 s later).
 * Its worker goes now, so the next request waits for a fresh kernel (session_reset) rather
 * than reach the dying one and fail. */
static void retire_exiting_kernel(gw_session_t *s) {
    gw_worker_t *w = s->worker;
    if (!w)
        return;
    s->worker = NULL;
    w->session = NULL;
    log_info("session", "the code called exit(); replacing the kernel", "{s:s}", "kernel_id",
             s->kernel_id);
    gw_worker_destroy(w, "exit");
    /* As a kernel death: reset, and Jupyter clients see it restart. w is only a flag there. */
    gw_session_on_worker_lost(s, w, "the code called exit()");
}

/* The reply asks the frontend to end the kernel (IPython's exit() and quit()). */
static bool asks_exit(const json_t *reply) {
    size_t i;
    const json_t *p;
    json_array_foreach(json_object_get(reply, "payload"), i, p) {
        if (streq(json_string_value(json_object_get(p, "source")), "ask_exit") &&
            !json_is_true(json_object_get(p, "keepkernel")))
            return true;
    }
    return false;
}

/* Aborted unrun: the kernel was stopping on another client's error (stop_on_error) when our
 * request reached it; ipykernel keeps aborting for a moment after such a cell, the native
 * kernel aborts what was queued behind it. Each /execute stands alone (it asks with
 * stop_on_error off), so it goes to the front of the queue to be sent again, once. */
static bool requeue_aborted(gw_session_t *s, gw_exec_t *e) {
    if (!e->aborted || e->resent || e->timed_out || !s->worker)
        return false;
    exec_out_t *out = exec_out_new(s->gw->cfg.max_output_bytes);
    if (!out)
        return false;
    loop_watch_del(s->gw->loop, &e->timeout_timer);
    loop_watch_del(s->gw->loop, &e->grace_timer);
    loop_watch_del(s->gw->loop, &e->idle_timer);
    exec_out_destroy(&e->out);
    e->out = out;
    e->resent = true;
    e->aborted = e->got_reply = e->got_idle = e->got_busy = e->waited_for_start = false;
    e->kernel_exits = false;
    e->probe_id[0] = e->msg_id[0] = '\0';
    s->running = NULL;
    TAILQ_INSERT_HEAD(&s->queue, e, link);
    s->nqueued++;
    log_info("session", "the kernel aborted a request unrun; sending it again", "{s:s}",
             "kernel_id", s->kernel_id);
    return true;
}

static void maybe_finish(gw_session_t *s) {
    gw_exec_t *e = s->running;
    if (!e || !e->got_reply || !e->got_idle)
        return;
    if (requeue_aborted(s, e)) {
        /* Not at once: ipykernel stops aborting at its loop's next turn, which a request
         * sent straight back can beat. Held as behind a busy kernel, the request goes at the
         * idle of a probe queued behind that turn. */
        snprintf(s->execution_state, sizeof s->execution_state, "busy");
        pump(s);
        return;
    }
    bool exits = e->kernel_exits;
    enum gw_outcome o = OUTCOME_OK;
    if (e->timed_out) {
        if (!exec_out_has_error(e->out))
            exec_out_set_error(e->out, "TimeoutError", "execution timed out");
        o = OUTCOME_TIMEOUT;
    } else if (exec_out_has_error(e->out)) {
        o = OUTCOME_ERROR;
    }
    finish_running(s, 200, NULL, NULL, o);
    if (exits)
        retire_exiting_kernel(s);
    pump(s);
}

static void on_idle_late(loop_t *loop, loop_watch_t *t, void *arg);

void gw_session_on_output_lost(gw_session_t *s, const char *why) {
    gw_exec_t *e = s->running;
    if (!e || !s->worker)
        return;
    json_t *ev = exec_out_note_lost(e->out, why);
    if (ev && e->stream && e->conn)
        gw_api_exec_event(e, ev);
    json_decref(ev);
    /* Our idle may be among the lost: probe now and every period until an idle comes. */
    send_probe(s, e->probe_id, sizeof e->probe_id);
    if (!e->idle_timer)
        e->idle_timer = loop_timer_add(s->gw->loop, IDLE_LATE_MS, IDLE_LATE_MS, on_idle_late, s);
}

/* The reply is in but the idle that should follow at once is not: under an output flood the
 * kernel's iopub can drop it. Ask for a later idle rather than wait for the timeout, and ask
 * again each period: a probe's own idle can be lost too (a just-reopened iopub may not be
 * subscribed yet when the kernel answers). Only the newest probe counts; it is answered last. */
static void on_idle_late(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_session_t *s = arg;
    gw_exec_t *e = s->running;
    if (!e || e->got_idle)
        return;
    send_probe(s, e->probe_id, sizeof e->probe_id);
}

void gw_session_on_message(gw_session_t *s, jwire_channel_t ch, jwire_msg_t *msg) {
    bool now_idle = false;
    if (ch == JWIRE_IOPUB && streq(jwire_msg_type(msg), "status")) {
        const char *st = json_string_value(json_object_get(msg->content, "execution_state"));
        if (st && strlen(st) < sizeof s->execution_state)
            snprintf(s->execution_state, sizeof s->execution_state, "%s", st);
        /* After a wait probe's idle nothing sent before it is still running. */
        if (s->wait_probe_id[0] && streq(jwire_msg_parent_id(msg), s->wait_probe_id) &&
            streq(st, "idle")) {
            s->wait_probe_id[0] = '\0';
            snprintf(s->execution_state, sizeof s->execution_state, "idle");
        }
        now_idle = streq(s->execution_state, "idle");
        if (s->abandoned_msg_id[0] && streq(st, "busy") &&
            streq(jwire_msg_parent_id(msg), s->abandoned_msg_id)) {
            s->abandoned_msg_id[0] = '\0';
            gw_worker_interrupt(s->worker);
        }
        s->last_activity_us = now_wall_us();
    }
    /* Every iopub message goes to the session's WebSocket clients, /execute's own included:
     * a person can watch an agent's session live. An input request goes there even with no
     * client: its asker is gone, and the kernel must not wait for it. */
    if (s->nclients || ch == JWIRE_STDIN)
        gw_channels_dispatch(s, ch, msg);
    gw_exec_t *e = s->running;
    if (e && e->probe_id[0] && ch == JWIRE_IOPUB && streq(jwire_msg_parent_id(msg), e->probe_id) &&
        streq(jwire_msg_type(msg), "status") &&
        streq(json_string_value(json_object_get(msg->content, "execution_state")), "idle")) {
        e->got_idle = true;
        jwire_msg_destroy(&msg);
        maybe_finish(s);
        return;
    }
    if (e && streq(jwire_msg_parent_id(msg), e->msg_id)) {
        const char *type = jwire_msg_type(msg);
        if (ch == JWIRE_IOPUB) {
            if (streq(type, "status")) {
                const char *st =
                    json_string_value(json_object_get(msg->content, "execution_state"));
                if (streq(st, "idle")) {
                    e->got_idle = true;
                } else if (streq(st, "busy") && !e->got_busy) {
                    /* The run starts now, whatever waited ahead of it in the kernel. */
                    e->got_busy = true;
                    if (e->interrupt_on_busy)
                        gw_worker_interrupt(s->worker);
                    if (e->timeout_timer && !e->timed_out) {
                        loop_watch_del(s->gw->loop, &e->timeout_timer);
                        e->timeout_timer =
                            loop_timer_add(s->gw->loop, e->timeout_ms, 0, on_timeout, s);
                    }
                }
            } else {
                json_t *ev = exec_out_feed(e->out, type, msg->content);
                if (ev && e->stream && e->conn)
                    gw_api_exec_event(e, ev);
                json_decref(ev);
            }
        } else if (ch == JWIRE_SHELL && streq(type, "execute_reply")) {
            exec_out_set_reply(e->out, msg->content);
            e->got_reply = true;
            e->kernel_exits = asks_exit(msg->content);
            e->aborted =
                streq(json_string_value(json_object_get(msg->content, "status")), "aborted");
            if (!e->got_idle && !e->idle_timer)
                e->idle_timer =
                    loop_timer_add(s->gw->loop, IDLE_LATE_MS, IDLE_LATE_MS, on_idle_late, s);
        }
        jwire_msg_destroy(&msg);
        maybe_finish(s);
        return;
    }
    jwire_msg_destroy(&msg);
    if (now_idle && !s->running)
        pump(s); /* an /execute may be waiting for a Jupyter client's cell to end */
}

void gw_session_on_worker_ready(gw_session_t *s, gw_worker_t *w) {
    if (s->released) {
        gw_worker_destroy(w, "session released");
        return;
    }
    w->session = s;
    s->worker = w;
    s->had_worker = true;
    s->spawn_pending = false;
    if (!s->disk_name[0] && w->disk_name[0]) {
        /* The session adopts the pre-warmed worker's disk and uid: they are its from now on. */
        snprintf(s->disk_name, sizeof s->disk_name, "%s", w->disk_name);
        s->uid_slot = w->uid_slot;
        s->has_uid_slot = w->has_uid_slot;
        w->has_uid_slot = false;
        snprintf(w->owner_kernel_id, sizeof w->owner_kernel_id, "%s", s->kernel_id);
    }
    gw_journal_touch(s->gw);
    snprintf(s->execution_state, sizeof s->execution_state, "idle");
    gw_channels_flush(s);
    gw_pending_t *p;
    while ((p = TAILQ_FIRST(&s->pending))) {
        TAILQ_REMOVE(&s->pending, p, link);
        http_conn_t *conn = p->conn;
        int status = p->status;
        free(p);
        if (!conn)
            continue;
        http_conn_set_user(conn, NULL);
        json_t *model = gw_session_model(s);
        char *body = json_dumps(model, JSON_COMPACT);
        json_decref(model);
        char loc[128];
        snprintf(loc, sizeof loc, "Location: /api/kernels/%s\r\n", s->kernel_id);
        if (body)
            http_conn_respond(conn, status, "application/json", status == 201 ? loc : NULL, body,
                              strlen(body));
        else
            http_conn_respond_error(conn, 500, "internal error", "cannot encode the model");
        free(body);
    }
    log_debug("session", "worker assigned", "{s:s,s:s}", "kernel_id", s->kernel_id, "worker",
              w->id);
    pump(s);
}

static void session_free(gw_session_t *s) {
    gw_t *gw = s->gw;
    gw_journal_touch(gw);
    if (s->has_uid_slot) {
        /* A worker of ours may still be tearing down under this uid (and, with the TCP
         * transport, this slot's link addresses): it frees the slot when it is gone, so no new
         * worker gets either while the old one still holds them. */
        gw_worker_t *w, *holder = NULL;
        TAILQ_FOREACH(w, &gw->workers, link)
        if (streq(w->owner_kernel_id, s->kernel_id) && w->uid_slot == s->uid_slot &&
            !w->has_uid_slot)
            holder = w;
        if (holder)
            holder->has_uid_slot = true;
        else
            gw_uid_slot_free(gw, s->uid_slot);
    }
    /* A disk whose worker is gone (or still detaching: its cleanup removes it then). */
    if (s->disk_name[0] && !s->disk_busy)
        gw_sandbox_remove_disk(gw, s->disk_name);
    if (s->user_uuid)
        zhashx_delete(gw->by_user, s->user_uuid);
    zhashx_delete(gw->by_kernel, s->kernel_id);
    TAILQ_REMOVE(&gw->sessions, s, link);
    zhashx_destroy(&s->routes);
    free(s->user_uuid);
    free(s);
}

static void respond_error_retry(http_conn_t *conn, int status, const char *error,
                                const char *detail) {
    json_t *j = json_pack("{s:s,s:s}", "error", error, "detail", detail ? detail : "");
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body) {
        http_conn_respond_error(conn, 500, "internal error", "out of memory");
        return;
    }
    http_conn_respond(conn, status, "application/json", status == 503 ? "Retry-After: 1\r\n" : NULL,
                      body, strlen(body));
    free(body);
}

static void fail_pending(gw_session_t *s, int status, const char *error, const char *detail) {
    gw_pending_t *p;
    while ((p = TAILQ_FIRST(&s->pending))) {
        TAILQ_REMOVE(&s->pending, p, link);
        if (p->conn) {
            http_conn_set_user(p->conn, NULL);
            respond_error_retry(p->conn, status, error, detail);
        }
        free(p);
    }
}

void gw_pending_client_gone(gw_pending_t *p) {
    p->conn = NULL; /* the entry is freed when the worker arrives or the session goes */
}

int gw_session_add_pending(gw_session_t *s, http_conn_t *conn, int status) {
    gw_pending_t *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->kind = GW_CONN_PENDING;
    p->session = s;
    p->conn = conn;
    p->status = status;
    TAILQ_INSERT_TAIL(&s->pending, p, link);
    http_conn_set_user(conn, p);
    return 0;
}

void gw_session_on_worker_lost(gw_session_t *s, gw_worker_t *w, const char *why) {
    s->worker = NULL;
    if (!w) {
        /* No worker could be had in time. */
        const char *detail = why ? why : "all workers are busy; retry later";
        fail_pending(s, 503, "no worker available", detail);
        snprintf(s->execution_state, sizeof s->execution_state, "dead");
        if (s->nclients)
            gw_channels_status(s, "dead");
        fail_queued(s, 503, "no worker available", detail);
        if (!s->had_worker && !s->running)
            gw_session_release(s, 503, "no worker available", NULL);
        return;
    }
    s->reset_pending = true;
    if (s->running) {
        s->running->session_reset = true;
        s->reset_pending = true;
        exec_out_set_error(s->running->out, "KernelDied", why);
        char detail[256];
        snprintf(detail, sizeof detail,
                 "the kernel was lost during the execution (%s); the session was reset",
                 why ? why : "unknown");
        finish_running(s, 503, "kernel died", detail, OUTCOME_DIED);
    }
    if (s->nclients) {
        /* Jupyter clients expect the kernel to come back by itself, as with auto-restart. */
        snprintf(s->execution_state, sizeof s->execution_state, "restarting");
        gw_channels_status(s, "restarting");
        gw_pool_request(s->gw, s);
    }
    pump(s);
}

int gw_session_restart(gw_session_t *s, http_conn_t *conn) {
    gw_t *gw = s->gw;
    int r = gw_session_add_pending(s, conn, 200);
    if (r < 0)
        return r;
    if (s->running) {
        s->running->session_reset = true;
        finish_running(s, 503, "kernel restarted",
                       "the kernel was restarted during the execution; the session was reset",
                       OUTCOME_RESET);
    }
    gw_worker_t *w = s->worker;
    s->worker = NULL;
    if (w) {
        w->session = NULL;
        gw_worker_destroy(w, "restart");
    }
    s->reset_pending = true;
    snprintf(s->execution_state, sizeof s->execution_state, "restarting");
    if (s->nclients)
        gw_channels_status(s, "restarting");
    gw_pool_request(gw, s);
    return 0;
}

static void format_iso(uint64_t wall_us, char ret[64]) {
    time_t sec = (time_t)(wall_us / 1000000u);
    struct tm tm;
    gmtime_r(&sec, &tm);
    /* Exactly %Y-%m-%dT%H:%M:%S.%fZ: Jupyter Server's gateway client parses it that way. */
    snprintf(ret, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%06uZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(wall_us % 1000000u));
}

json_t *gw_session_model(const gw_session_t *s) {
    char ts[64];
    format_iso(s->last_activity_us, ts);
    return json_pack("{s:s,s:s,s:s,s:s,s:i}", "id", s->kernel_id, "name", s->kernel_name,
                     "last_activity", ts, "execution_state", s->execution_state, "connections",
                     (int)s->nclients);
}

void gw_session_release(gw_session_t *s, int status, const char *error, const char *detail) {
    if (!s || s->released)
        return;
    gw_t *gw = s->gw;
    s->released = true;
    gw_pool_cancel_wait(gw, s);
    if (s->running) {
        s->running->session_reset = true;
        finish_running(s, status, error, detail ? detail : "the session was released",
                       OUTCOME_CANCELLED);
    }
    fail_queued(s, status, error, detail ? detail : "the session was released");
    fail_pending(s, status, error, "the kernel was shut down");
    gw_channels_close_all(s);
    gw_worker_t *w = s->worker;
    s->worker = NULL;
    if (w) {
        w->session = NULL;
        s->disk_name[0] = '\0'; /* the worker's cleanup removes it: the owner is gone */
        gw_worker_destroy(w, "released");
    }
    /* A replacement still starting with the session's disk (after a restart or a crash)
     * goes too, and removes the disk once its launcher is done with it. */
    gw_worker_t *next;
    for (w = TAILQ_FIRST(&gw->workers); w; w = next) {
        next = TAILQ_NEXT(w, link);
        if (w->state == WORKER_STARTING && streq(w->reserved_for, s->kernel_id)) {
            s->disk_name[0] = '\0';
            gw_worker_destroy(w, "released while starting");
        }
    }
    log_info("session", "session released", "{s:s}", "kernel_id", s->kernel_id);
    session_free(s);
}

/* Remember a user whose session expired, so their next call reports session_reset. */
void gw_session_expire(gw_session_t *s) {
    gw_t *gw = s->gw;
    if (s->user_uuid) {
        if (zhashx_size(gw->expired) >= EXPIRED_MAX) {
            char *oldest = zlistx_first(gw->expired_order);
            if (oldest) {
                zhashx_delete(gw->expired, oldest);
                zlistx_delete(gw->expired_order, zlistx_cursor(gw->expired_order));
            }
        }
        if (!zhashx_lookup(gw->expired, s->user_uuid)) {
            zhashx_insert(gw->expired, s->user_uuid, (void *)1);
            zlistx_add_end(gw->expired_order, strdup(s->user_uuid));
        }
    }
    gw_session_release(s, 503, "session expired", "the session was idle too long");
}
