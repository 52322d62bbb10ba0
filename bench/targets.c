/* The three things a virtual user can drive, behind one small vtable so the user's script
 * (main.c) is written once:
 *   execute: POST /execute {user_uuid, code} on a keep-alive connection (workload 1);
 *   kernels: POST /api/kernels, then execute_request over /api/kernels/{id}/channels, the
 *            Jupyter Server kernels API, against kbox or a stock Jupyter Server (workload 2);
 *   zmq:     a kernel of our own, straight over ZeroMQ, no gateway (workload 3). */
#include "bench.h"
#include "jwire.h"

#include <limits.h>

/* ---- collecting one execution's answer from Jupyter messages ----------------------------- */

static void col_add(bench_collect_t *c, const char *s, size_t n) {
    if (c->len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 256;
        while (cap < c->len + n + 1)
            cap *= 2;
        char *p = realloc(c->text, cap);
        if (!p)
            return;
        c->text = p;
        c->cap = cap;
    }
    memcpy(c->text + c->len, s, n);
    c->len += n;
    c->text[c->len] = '\0';
}

void bench_collect_feed(bench_collect_t *c, const char *channel, const char *msg_type,
                        const json_t *content) {
    if (streq(channel, "shell") && streq(msg_type, "execute_reply")) {
        c->got_reply = true;
        if (streq(json_string_value(json_object_get(content, "status")), "error"))
            c->error = true;
        return;
    }
    if (!streq(channel, "iopub"))
        return;
    if (streq(msg_type, "status")) {
        if (streq(json_string_value(json_object_get(content, "execution_state")), "idle"))
            c->got_idle = true;
    } else if (streq(msg_type, "stream")) {
        json_t *t = json_object_get(content, "text");
        if (json_is_string(t))
            col_add(c, json_string_value(t), json_string_length(t));
    } else if (streq(msg_type, "execute_result") || streq(msg_type, "display_data")) {
        json_t *t = json_object_get(json_object_get(content, "data"), "text/plain");
        if (json_is_string(t)) {
            col_add(c, json_string_value(t), json_string_length(t));
            if (c->len && c->text[c->len - 1] != '\n')
                col_add(c, "\n", 1);
        }
    } else if (streq(msg_type, "error")) {
        c->error = true;
        const char *en = json_string_value(json_object_get(content, "ename"));
        const char *ev = json_string_value(json_object_get(content, "evalue"));
        char line[512];
        int n = snprintf(line, sizeof line, "%s: %s\n", en ? en : "", ev ? ev : "");
        col_add(c, line, n > 0 && (size_t)n < sizeof line ? (size_t)n : strlen(line));
    }
}

void bench_collect_finish(bench_collect_t *c, bench_reply_t *r) {
    r->status = 200;
    r->text = c->text ? c->text : strdup("");
    r->error = c->error;
    c->text = NULL;
    c->len = c->cap = 0;
}

void bench_collect_free(bench_collect_t *c) {
    free(c->text);
    memset(c, 0, sizeof *c);
}

void bench_reply_clear(bench_reply_t *r) {
    free(r->text);
    memset(r, 0, sizeof *r);
}

json_t *bench_execute_content(const char *code) {
    return json_pack("{s:s,s:b,s:b,s:{},s:b,s:b}", "code", code, "silent", 0, "store_history", 1,
                     "user_expressions", "allow_stdin", 0, "stop_on_error", 1);
}

/* ---- workload 1: POST /execute ----------------------------------------------------------- */

typedef struct {
    httpc_t *http;
    char hdr[300];
} exec_conn_t;

static int exec_open(const bench_target_cfg_t *cfg, const char *user, void **ret, char *err,
                     size_t errlen) {
    char host[64];
    int port;
    if (bench_url_parse(cfg->url, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "bad url %s", cfg->url);
        return -EINVAL;
    }
    exec_conn_t *c = calloc(1, sizeof *c);
    if (!c || !(c->http = httpc_new(host, port, cfg->timeout_ms))) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    snprintf(c->hdr, sizeof c->hdr, "X-Auth-Token: %s\r\n", cfg->token);
    *ret = c;
    return 0;
}

static int exec_exec(void *conn, const char *user, const char *code, bench_reply_t *ret) {
    exec_conn_t *c = conn;
    memset(ret, 0, sizeof *ret);
    json_t *b = json_pack("{s:s,s:s}", "user_uuid", user, "code", code);
    _cleanup_free_ char *body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    if (!body)
        return -ENOMEM;
    _cleanup_free_ char *resp = NULL;
    int status = 0;
    int r = httpc_request(c->http, "POST", "/execute", c->hdr, body, strlen(body), &status, &resp);
    if (r < 0) {
        snprintf(ret->why, sizeof ret->why, "%s", strerror(-r));
        return r;
    }
    ret->status = status;
    json_t *j = json_loads(resp, 0, NULL);
    const char *text = json_string_value(json_object_get(j, "result_text"));
    ret->text = strdup(text ? text : "");
    json_t *e = json_object_get(j, "error");
    ret->error = e && !json_is_null(e);
    if (status != 200) {
        const char *ee = json_string_value(json_object_get(j, "error"));
        const char *d = json_string_value(json_object_get(j, "detail"));
        snprintf(ret->why, sizeof ret->why, "HTTP %d %s: %s", status, ee ? ee : "", d ? d : "");
    }
    json_decref(j);
    return 0;
}

static void exec_close(void *conn, const char *user) {
    exec_conn_t *c = conn;
    json_t *b = json_pack("{s:s}", "user_uuid", user);
    char *body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    int status;
    if (body)
        httpc_request(c->http, "POST", "/release", c->hdr, body, strlen(body), &status, NULL);
    free(body);
    httpc_destroy(&c->http);
    free(c);
}

const bench_target_t bench_target_execute = {"execute", exec_open, exec_exec, exec_close};

/* ---- workload 2: the Jupyter kernels API ------------------------------------------------- */

typedef struct {
    httpc_t *http;
    wsc_t *ws;
    char hdr[300];
    char kernel_id[64];
    char session[40];
    int timeout_ms;
} kern_conn_t;

static char *ws_message(kern_conn_t *c, const char *channel, const char *type, json_t *content,
                        char ret_id[40]) {
    char id[37], date[32];
    uuid4(id);
    jwire_now_iso8601(date);
    json_t *m =
        json_pack("{s:{s:s,s:s,s:s,s:s,s:s,s:s},s:{},s:{},s:o,s:s,s:[]}", "header", "msg_id", id,
                  "session", c->session, "username", "bench", "date", date, "msg_type", type,
                  "version", "5.3", "parent_header", "metadata", "content",
                  content ? content : json_object(), "channel", channel, "buffers");
    char *s = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    snprintf(ret_id, 40, "%s", id);
    return s;
}

/* Waits for the messages answering parent_id; with col == NULL only for its reply on shell. */
static int ws_collect(kern_conn_t *c, const char *parent_id, bench_collect_t *col, int timeout_ms,
                      char *why, size_t whylen) {
    double deadline = bench_now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(deadline - bench_now_ms());
        char *data = NULL;
        size_t len = 0;
        int r = left > 0 ? wsc_recv(c->ws, left, &data, &len) : -ETIMEDOUT;
        if (r < 0) {
            snprintf(why, whylen, "websocket: %s", strerror(-r));
            return r;
        }
        json_t *m = json_loadb(data, len, 0, NULL);
        free(data);
        if (!m)
            continue; /* a binary-framed message: never parented to ours here */
        const char *pid =
            json_string_value(json_object_get(json_object_get(m, "parent_header"), "msg_id"));
        const char *ch = json_string_value(json_object_get(m, "channel"));
        const char *type = json_string_value(json_object_get(m, "msg_type"));
        if (!type)
            type = json_string_value(json_object_get(json_object_get(m, "header"), "msg_type"));
        bool done = false;
        if (streq(pid, parent_id)) {
            if (!col) {
                done = streq(ch, "shell") && type && strstr(type, "_reply");
            } else {
                bench_collect_feed(col, ch ? ch : "", type ? type : "",
                                   json_object_get(m, "content"));
                done = col->got_reply && col->got_idle;
            }
        }
        json_decref(m);
        if (done)
            return 0;
    }
}

static void kern_free(kern_conn_t *c) {
    wsc_destroy(&c->ws);
    httpc_destroy(&c->http);
    free(c);
}

static int kern_open(const bench_target_cfg_t *cfg, const char *user, void **ret, char *err,
                     size_t errlen) {
    char host[64];
    int port;
    if (bench_url_parse(cfg->url, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "bad url %s", cfg->url);
        return -EINVAL;
    }
    kern_conn_t *c = calloc(1, sizeof *c);
    if (!c || !(c->http = httpc_new(host, port, 120000))) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    c->timeout_ms = cfg->timeout_ms;
    uuid4(c->session);
    snprintf(c->hdr, sizeof c->hdr, "Authorization: token %s\r\n", cfg->token);
    const char *body = "{\"name\":\"python3\"}";
    _cleanup_free_ char *resp = NULL;
    int status = 0;
    int r =
        httpc_request(c->http, "POST", "/api/kernels", c->hdr, body, strlen(body), &status, &resp);
    json_t *j = r >= 0 ? json_loads(resp, 0, NULL) : NULL;
    const char *id = json_string_value(json_object_get(j, "id"));
    if (r < 0 || (status != 201 && status != 200) || !id) {
        snprintf(err, errlen, "POST /api/kernels: %s (HTTP %d) %.80s",
                 r < 0 ? strerror(-r) : "no id", status, resp ? resp : "");
        json_decref(j);
        kern_free(c);
        return r < 0 ? r : -EPROTO;
    }
    snprintf(c->kernel_id, sizeof c->kernel_id, "%s", id);
    json_decref(j);
    char path[256];
    snprintf(path, sizeof path, "/api/kernels/%s/channels?session_id=%s", c->kernel_id, c->session);
    c->ws = wsc_connect(host, port, path, c->hdr, 120000, err, errlen);
    if (!c->ws) {
        *ret = NULL;
        char dpath[128];
        snprintf(dpath, sizeof dpath, "/api/kernels/%s", c->kernel_id);
        httpc_request(c->http, "DELETE", dpath, c->hdr, NULL, 0, &status, NULL);
        kern_free(c);
        return -ECONNREFUSED;
    }
    /* As every Jupyter client does: wait until the kernel answers kernel_info. */
    char kid[40];
    _cleanup_free_ char *msg = ws_message(c, "shell", "kernel_info_request", NULL, kid);
    if (!msg || wsc_send_text(c->ws, msg, strlen(msg)) < 0 ||
        ws_collect(c, kid, NULL, 120000, err, errlen) < 0) {
        if (!err[0])
            snprintf(err, errlen, "no kernel_info_reply");
        char dpath[128];
        snprintf(dpath, sizeof dpath, "/api/kernels/%s", c->kernel_id);
        wsc_destroy(&c->ws);
        httpc_request(c->http, "DELETE", dpath, c->hdr, NULL, 0, &status, NULL);
        kern_free(c);
        return -ETIMEDOUT;
    }
    *ret = c;
    return 0;
}

static int kern_exec(void *conn, const char *user, const char *code, bench_reply_t *ret) {
    kern_conn_t *c = conn;
    memset(ret, 0, sizeof *ret);
    char id[40];
    _cleanup_free_ char *msg =
        ws_message(c, "shell", "execute_request", bench_execute_content(code), id);
    if (!msg)
        return -ENOMEM;
    int r = wsc_send_text(c->ws, msg, strlen(msg));
    if (r < 0) {
        snprintf(ret->why, sizeof ret->why, "websocket send: %s", strerror(-r));
        return r;
    }
    bench_collect_t col = {0};
    r = ws_collect(c, id, &col, c->timeout_ms, ret->why, sizeof ret->why);
    if (r < 0) {
        bench_collect_free(&col);
        return r;
    }
    bench_collect_finish(&col, ret);
    return 0;
}

static void kern_close(void *conn, const char *user) {
    kern_conn_t *c = conn;
    wsc_destroy(&c->ws);
    char path[128];
    snprintf(path, sizeof path, "/api/kernels/%s", c->kernel_id);
    int status;
    httpc_request(c->http, "DELETE", path, c->hdr, NULL, 0, &status, NULL);
    kern_free(c);
}

const bench_target_t bench_target_kernels = {"kernels", kern_open, kern_exec, kern_close};

/* ---- workload 3: ZeroMQ straight to our own kernels ------------------------------------- */

typedef struct {
    kclient_t *k;
    int timeout_ms;
} zt_conn_t;

static int zt_open(const bench_target_cfg_t *cfg, const char *user, void **ret, char *err,
                   size_t errlen) {
    zt_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s", cfg->workdir, user);
    c->timeout_ms = cfg->timeout_ms;
    c->k = kclient_start(cfg->python, cfg->kernel_host, dir, 120000, 200, NULL, err, errlen);
    if (!c->k) {
        free(c);
        return -ECHILD;
    }
    /* The native kernel answers kernel_info from C while its Python still starts; an empty
     * cell is answered once Python runs, so its start stays out of the measured window (the
     * gateway's runs wait for a quiet machine instead). */
    bench_reply_t warm = {0};
    int r = cfg->kernel_host ? kclient_execute(c->k, "", 120000, &warm) : 0;
    bool ok = r >= 0 && warm.status == 200 && !warm.error;
    if (cfg->kernel_host && !ok)
        snprintf(err, errlen, "the native kernel did not run its first cell: %s",
                 r < 0         ? strerror(-r)
                 : warm.why[0] ? warm.why
                               : "it reported an error");
    bench_reply_clear(&warm);
    if (cfg->kernel_host && !ok) {
        kclient_destroy(&c->k);
        free(c);
        return -ECHILD;
    }
    *ret = c;
    return 0;
}

static int zt_exec(void *conn, const char *user, const char *code, bench_reply_t *ret) {
    zt_conn_t *c = conn;
    return kclient_execute(c->k, code, c->timeout_ms, ret);
}

static void zt_close(void *conn, const char *user) {
    zt_conn_t *c = conn;
    kclient_destroy(&c->k);
    free(c);
}

const bench_target_t bench_target_zmq = {"zmq", zt_open, zt_exec, zt_close};
