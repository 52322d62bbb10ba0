/* The WebSocket bridge between Jupyter clients and a session's kernel. The gateway holds the
 * kernel's key: clients send unsigned messages, we sign them onto the kernel's channels and
 * verify everything that comes back. Several clients may share a kernel: iopub goes to all of
 * them, a shell/control/stdin message goes to the client whose request it answers (routed by
 * the parent msg_id).
 *
 * Memory per client is bounded in two steps. Past OUT_SOFT_BYTES of unsent data, output
 * messages (stream, display data, results) are dropped for that client only, and it is told so
 * once per episode by a stderr stream message, as Jupyter Notebook's IOPub rate limit does;
 * status, replies, errors and comms still flow, so its frontend never waits forever for an
 * idle that was dropped. Past the hard limit the client is disconnected (1008). A burst of
 * output that a healthy client reads a little late thus costs it some output, not its
 * connection, and a client that reads nothing costs at most the hard limit.
 *
 * A msg_id routes a request's answers, so one in flight for one client cannot be taken by
 * another (whose requests would steal the first's replies): that client is disconnected.
 * An input_request only its asker can answer (no other client sees it): if the asker goes
 * away without answering, the kernel is interrupted, or it would wait in input() for good,
 * and /execute would find the session busy until released. */
#include "gw.h"
#include "log.h"
#include "util.h"
#include "ws.h"
#include "wsframe.h"

#define MAX_CLIENTS_PER_KERNEL 64
#define MAX_ROUTES             8192
#define MAX_HELD               256
#define OUT_SOFT_BYTES         (8u << 20)  /* start dropping output for this client */
#define OUT_RESUME_BYTES       (2u << 20)  /* stop dropping once drained below this */
#define OUT_HARD_MIN_BYTES     (32u << 20) /* disconnect beyond max(this, 4 * max-output + 16M) */

struct gw_wsclient {
    TAILQ_ENTRY(gw_wsclient) link;
    gw_session_t *session; /* NULL once the session is gone (then in gw->closing) */
    gw_t *gw;
    ws_conn_t *ws;
    wsframe_proto_t proto;
    bool dropping;    /* over OUT_SOFT_BYTES, not yet back under OUT_RESUME_BYTES */
    uint64_t dropped; /* output messages not sent to this client, in total */
    char *asked;      /* the request whose input_request this client has not answered */
    char asked_worker[sizeof(((gw_worker_t *)0)->id)]; /* the worker whose kernel asked */
};

static void client_free(gw_wsclient_t *c) {
    if (c) {
        free(c->asked);
        free(c);
    }
}

static void client_answered(gw_wsclient_t *c) {
    free(c->asked);
    c->asked = NULL;
}

/* The kernel waits in input() for an answer that cannot come: stop the cell. */
static void interrupt_unanswerable(gw_session_t *s, const char *why) {
    log_info("channels", "interrupting a kernel waiting for input nobody can give", "{s:s,s:s}",
             "kernel_id", s->kernel_id, "why", why);
    (void)gw_worker_interrupt(s->worker);
}

/* Messages from clients that arrive while the kernel is (re)starting wait here, bounded. */
typedef struct {
    jwire_channel_t ch;
    jwire_msg_t *msg;
} held_t;

/* Output a frontend can lose without losing track of the kernel (unlike status, replies,
 * errors, comms and input requests). */
static bool is_droppable_output(const char *type) {
    return streq(type, "stream") || streq(type, "display_data") ||
           streq(type, "update_display_data") || streq(type, "execute_result") ||
           streq(type, "execute_input");
}

/* One message encoded for one WebSocket format; a dispatch to many clients encodes once per
 * format (encoding a large output costs more than sending it). */
typedef struct {
    bool done;
    int r;
    bool binary;
    char *data;
    size_t len;
} encoded_t;

static void encoded_clear(encoded_t enc[2]) {
    for (int i = 0; i < 2; i++) {
        free(enc[i].data);
        enc[i] = (encoded_t){0};
    }
}

static int client_send_raw(gw_wsclient_t *c, jwire_channel_t ch, const jwire_msg_t *msg,
                           encoded_t enc[2]) {
    encoded_t *e = &enc[c->proto == WSFRAME_V1];
    if (!e->done) {
        e->done = true;
        e->r = wsframe_encode(c->proto, ch, msg, &e->binary, &e->data, &e->len);
    }
    return e->r < 0 ? e->r : ws_send(c->ws, e->binary, e->data, e->len);
}

/* The notice that starts a dropping episode, parented like the output it replaces so that a
 * frontend shows it in the right cell. */
static void client_send_drop_notice(gw_wsclient_t *c, const jwire_msg_t *dropped) {
    const char *session = json_string_value(json_object_get(dropped->header, "session"));
    jwire_msg_t *m = jwire_msg_new(
        "stream", session ? session : "", "kbox", dropped->parent_header,
        json_pack("{s:s,s:s}", "name", "stderr", "text",
                  "[kbox] output is being dropped for this connection: it is not reading fast "
                  "enough. Status and results of executions still arrive.\n"));
    if (m) {
        encoded_t enc[2] = {0};
        (void)client_send_raw(c, JWIRE_IOPUB, m, enc);
        encoded_clear(enc);
        jwire_msg_destroy(&m);
    }
}

static void client_send(gw_wsclient_t *c, jwire_channel_t ch, const jwire_msg_t *msg,
                        encoded_t enc[2]) {
    if (ch == JWIRE_IOPUB) {
        size_t queued = ws_outbuf_len(c->ws);
        if (c->dropping && queued < OUT_RESUME_BYTES)
            c->dropping = false;
        if (is_droppable_output(jwire_msg_type(msg)) && (c->dropping || queued >= OUT_SOFT_BYTES)) {
            if (!c->dropping) {
                c->dropping = true;
                log_warn("channels", "slow WebSocket client: dropping its output", "{s:s}",
                         "kernel_id", c->session ? c->session->kernel_id : "");
                client_send_drop_notice(c, msg);
            }
            c->dropped++;
            return;
        }
    }
    if (client_send_raw(c, ch, msg, enc) == -ENOBUFS) {
        log_warn("channels", "slow WebSocket client disconnected", "{s:s,s:I}", "kernel_id",
                 c->session ? c->session->kernel_id : "", "dropped", (json_int_t)c->dropped);
        ws_close(c->ws, 1008, "client too slow");
    }
}

void gw_channels_dispatch(gw_session_t *s, jwire_channel_t ch, const jwire_msg_t *msg) {
    encoded_t enc[2] = {0};
    if (ch == JWIRE_IOPUB) {
        gw_wsclient_t *c, *next;
        for (c = TAILQ_FIRST(&s->clients); c; c = next) {
            next = TAILQ_NEXT(c, link);
            client_send(c, ch, msg, enc);
        }
        encoded_clear(enc);
        return;
    }
    const char *parent = jwire_msg_parent_id(msg);
    const char *type = jwire_msg_type(msg);
    bool ask = ch == JWIRE_STDIN && streq(type, "input_request");
    gw_wsclient_t *c = zhashx_lookup(s->routes, parent);
    if (!c) {
        /* An answer to /execute (which never allows stdin), or to a client that has gone. */
        if (ask)
            interrupt_unanswerable(s, "asked after its client disconnected");
        return;
    }
    if (ask && s->worker) {
        client_answered(c);
        c->asked = strdup(parent);
        snprintf(c->asked_worker, sizeof c->asked_worker, "%s", s->worker->id);
    }
    client_send(c, ch, msg, enc);
    encoded_clear(enc);
    /* A reply ends the request's routing; stdin requests come before the reply. */
    if (ch != JWIRE_STDIN && strstr(type, "_reply")) {
        if (c->asked && streq(c->asked, parent))
            client_answered(c); /* interrupted meanwhile: nothing waits any more */
        zhashx_delete(s->routes, parent);
    }
}

static void send_to_kernel(gw_session_t *s, jwire_channel_t ch, jwire_msg_t *msg) {
    int r = gw_worker_send(s->worker, ch, msg);
    if (r < 0)
        log_warn("channels", "cannot forward to kernel", "{s:s,s:s}", "kernel_id", s->kernel_id,
                 "error", strerror(-r));
}

static zlistx_t *held_list(gw_session_t *s, bool create);
static void held_free(void **item);

void gw_channels_flush(gw_session_t *s) {
    zlistx_t *held = held_list(s, false);
    if (!held || !s->worker)
        return;
    held_t *h;
    while ((h = zlistx_detach(held, NULL))) {
        send_to_kernel(s, h->ch, h->msg);
        jwire_msg_destroy(&h->msg);
        free(h);
    }
}

static void held_free(void **item) {
    held_t *h = *item;
    if (h) {
        jwire_msg_destroy(&h->msg);
        free(h);
        *item = NULL;
    }
}

static zlistx_t *held_list(gw_session_t *s, bool create) {
    if (!s->held && create) {
        s->held = zlistx_new();
        if (s->held)
            zlistx_set_destructor(s->held, held_free);
    }
    return s->held;
}

static void on_ws_message(ws_conn_t *ws, bool binary, const void *data, size_t len, void *arg) {
    gw_wsclient_t *c = arg;
    gw_session_t *s = c->session;
    if (!s)
        return;
    jwire_channel_t ch;
    jwire_msg_t *msg = NULL;
    if (wsframe_decode(c->proto, binary, data, len, &ch, &msg) < 0) {
        /* The client hears about it (1007, as for any payload it should not have sent) and
         * nothing reaches the kernel; Jupyter Server drops such a connection too. */
        log_warn("channels", "malformed WebSocket message; closing the connection", "{s:s,s:i,s:b}",
                 "kernel_id", s->kernel_id, "bytes", (int)len, "binary", binary);
        ws_close(ws, 1007,
                 c->proto == WSFRAME_V1 ? "malformed message for v1.kernel.websocket.jupyter.org"
                                        : "malformed Jupyter message");
        return;
    }
    const char *id = jwire_msg_id(msg);
    gw_wsclient_t *owner = zhashx_lookup(s->routes, id);
    if ((owner && owner != c) || (s->running && streq(id, s->running->msg_id))) {
        log_warn("channels", "msg_id in flight for another client; closing the connection", "{s:s}",
                 "kernel_id", s->kernel_id);
        ws_close(ws, 1008, "msg_id is in use by another request in flight");
        jwire_msg_destroy(&msg);
        return;
    }
    s->last_activity_us = now_wall_us();
    s->last_activity_mono_ms = now_mono_ms();
    if (zhashx_size(s->routes) >= MAX_ROUTES)
        zhashx_purge(s->routes); /* requests that never got replies: forget, don't grow */
    zhashx_update(s->routes, id, c);
    if (ch == JWIRE_STDIN)
        client_answered(c); /* its input_reply */
    if (!s->worker) {
        zlistx_t *held = held_list(s, true);
        if (held && zlistx_size(held) < MAX_HELD) {
            held_t *h = calloc(1, sizeof *h);
            if (h) {
                h->ch = ch;
                h->msg = msg;
                zlistx_add_end(held, h);
                msg = NULL;
            }
        }
        jwire_msg_destroy(&msg);
        if (!s->waiting)
            gw_pool_request(s->gw, s);
        return;
    }
    send_to_kernel(s, ch, msg);
    jwire_msg_destroy(&msg);
}

static void forget_routes_of(gw_session_t *s, gw_wsclient_t *c) {
    zlistx_t *keys = zhashx_keys(s->routes);
    if (!keys)
        return;
    for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys))
        if (zhashx_lookup(s->routes, k) == c)
            zhashx_delete(s->routes, k);
    zlistx_destroy(&keys);
}

static void on_ws_close(ws_conn_t *ws, uint16_t code, void *arg) {
    gw_wsclient_t *c = arg;
    gw_session_t *s = c->session;
    if (s) {
        TAILQ_REMOVE(&s->clients, c, link);
        s->nclients--;
        forget_routes_of(s, c);
        if (c->asked && s->worker && streq(s->worker->id, c->asked_worker))
            interrupt_unanswerable(s, "the client it asked disconnected");
        s->last_activity_us = now_wall_us();
        s->last_activity_mono_ms = now_mono_ms();
    } else {
        TAILQ_REMOVE(&c->gw->closing, c, link);
    }
    client_free(c);
}

void gw_channels_open(gw_t *gw, gw_session_t *s, http_conn_t *conn, const http_request_t *req) {
    if (s->nclients >= MAX_CLIENTS_PER_KERNEL) {
        http_conn_respond_error(conn, 429, "too many connections",
                                "this kernel has too many WebSocket connections");
        return;
    }
    gw_wsclient_t *c = calloc(1, sizeof *c);
    if (!c) {
        http_conn_respond_error(conn, 500, "internal error", "out of memory");
        return;
    }
    c->session = s;
    c->gw = gw;
    static const char *const supported[] = {WSFRAME_V1_SUBPROTOCOL, NULL};
    const char *sub = ws_subprotocol_select(req, supported);
    if (sub)
        c->proto = WSFRAME_V1;
    size_t hard = 4 * gw->cfg.max_output_bytes + (16u << 20);
    ws_config_t cfg = {
        .max_message_bytes = gw->cfg.max_body_bytes,
        .max_outbuf_bytes = hard > OUT_HARD_MIN_BYTES ? hard : OUT_HARD_MIN_BYTES,
    };
    ws_handlers_t h = {.on_message = on_ws_message, .on_close = on_ws_close};
    c->ws = ws_accept(conn, req, sub, &cfg, &h, c);
    if (!c->ws) {
        free(c); /* ws_accept answered the bad handshake itself */
        return;
    }
    TAILQ_INSERT_TAIL(&s->clients, c, link);
    s->nclients++;
    s->last_activity_us = now_wall_us();
    if (!s->worker && !s->waiting)
        gw_pool_request(gw, s);
}

void gw_channels_status(gw_session_t *s, const char *state) {
    /* Clients told "dead" have given up on what they sent meanwhile: a worker found later must
     * not run those requests by surprise. */
    if (streq(state, "dead") && s->held)
        zlistx_purge(s->held);
    jwire_msg_t *m = jwire_msg_new("status", s->kernel_id, "kbox", NULL,
                                   json_pack("{s:s}", "execution_state", state));
    if (!m)
        return;
    gw_channels_dispatch(s, JWIRE_IOPUB, m);
    jwire_msg_destroy(&m);
}

void gw_channels_close_all(gw_session_t *s) {
    gw_wsclient_t *c;
    while ((c = TAILQ_FIRST(&s->clients))) {
        TAILQ_REMOVE(&s->clients, c, link);
        s->nclients--;
        c->session = NULL;
        /* Until the client answers the close (or the gateway stops): see gw_channels_fini. */
        TAILQ_INSERT_TAIL(&c->gw->closing, c, link);
        ws_close(c->ws, 1001, "kernel shut down");
    }
    zlistx_destroy(&s->held);
}

void gw_channels_fini(gw_t *gw) {
    gw_wsclient_t *c;
    while ((c = TAILQ_FIRST(&gw->closing))) {
        TAILQ_REMOVE(&gw->closing, c, link);
        ws_destroy(&c->ws); /* no on_close from here */
        client_free(c);
    }
}
