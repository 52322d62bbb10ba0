/* HTTP routes. Authentication is checked in one place (route_authorized) for every route but
 * the health probe; every error is a JSON {error, detail} with a 4xx/5xx status. Handlers stay
 * thin: parse and validate, then hand over to sessions. */
#include "gw.h"
#include "log.h"
#include "util.h"

#include <ctype.h>
#include <sodium.h>

#define MAX_USER_UUID 128

/* ---- auth ------------------------------------------------------------------------------- */

/* Constant time in the token's content and length: compare fixed-size hashes. */
static bool token_equal(const char *given, size_t len, const char *token) {
    unsigned char a[32], b[32];
    crypto_generichash(a, sizeof a, (const unsigned char *)given, len, NULL, 0);
    crypto_generichash(b, sizeof b, (const unsigned char *)token, strlen(token), NULL, 0);
    return sodium_memcmp(a, b, sizeof a) == 0;
}

static bool route_authorized(gw_t *gw, const http_request_t *req) {
    const char *h = http_request_header(req, "x-auth-token");
    if (h && token_equal(h, strlen(h), gw->token))
        return true;
    h = http_request_header(req, "authorization");
    if (h) {
        const char *v = NULL;
        if (strncasecmp(h, "token ", 6) == 0)
            v = h + 6;
        else if (strncasecmp(h, "bearer ", 7) == 0)
            v = h + 7;
        while (v && *v == ' ')
            v++;
        if (v && token_equal(v, strlen(v), gw->token))
            return true;
    }
    char q[256];
    if (http_query_param(req->query, "token", q, sizeof q) >= 0 &&
        token_equal(q, strlen(q), gw->token))
        return true;
    return false;
}

/* ---- responses -------------------------------------------------------------------------- */

static void respond_json(http_conn_t *conn, int status, json_t *body, const char *extra) {
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!s) {
        http_conn_respond_error(conn, 500, "internal error", "cannot encode response");
        return;
    }
    http_conn_respond(conn, status, "application/json", extra, s, strlen(s));
    free(s);
}

static void respond_err(http_conn_t *conn, int status, const char *error, const char *detail) {
    http_conn_respond_error(conn, status, error, detail);
}

/* ---- /execute --------------------------------------------------------------------------- */

static bool valid_user_uuid(const char *u) {
    size_t n = strlen(u);
    if (n == 0 || n > MAX_USER_UUID)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)u[i]) && !strchr("-_.:@", u[i]))
            return false;
    return true;
}

/* The body's object and its user_uuid (the body's field, else the query parameter: the seed's
 * code sends one, its README the other). On failure answers 400 itself and returns NULL. The
 * user string lives in the body or in qbuf. */
static json_t *parse_user_body(http_conn_t *conn, const http_request_t *req, char *qbuf,
                               size_t qlen, const char **ret_user) {
    json_error_t jerr;
    /* Duplicate keys are refused: a proxy that reads the first "code" must not see other code
     * than the one we run (jansson keeps the last). */
    json_t *body = req->body_len
                       ? json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr)
                       : json_object();
    if (!json_is_object(body)) {
        char detail[256];
        snprintf(detail, sizeof detail, "body must be a JSON object: %s",
                 body ? "got another JSON type" : jerr.text);
        json_decref(body);
        respond_err(conn, 400, "invalid JSON", detail);
        return NULL;
    }
    json_t *ju = json_object_get(body, "user_uuid");
    const char *user = NULL;
    int qr = -ENOENT;
    if (json_is_string(ju))
        user = json_string_value(ju);
    else if (!ju && (qr = http_query_param(req->query, "user_uuid", qbuf, qlen)) >= 0)
        user = qbuf;
    const char *problem = NULL;
    if (ju && !json_is_string(ju))
        problem = "user_uuid must be a string";
    else if (!user && qr == -EINVAL)
        problem = "user_uuid: bad percent-escape in the query (or an encoded NUL)";
    else if (!user && qr != -ENAMETOOLONG)
        problem = "user_uuid is required (in the body or as a query parameter)";
    else if (!user || !valid_user_uuid(user)) /* too long for qbuf, or not one of ours */
        problem = "user_uuid must be 1-128 characters of letters, digits and -_.:@";
    if (problem) {
        json_decref(body);
        respond_err(conn, 400, "invalid request", problem);
        return NULL;
    }
    *ret_user = user;
    return body;
}

static bool wants_ndjson(const http_request_t *req) {
    const char *a = http_request_header(req, "accept");
    return a && strstr(a, "application/x-ndjson");
}

static void handle_execute(gw_t *gw, http_conn_t *conn, const http_request_t *req) {
    char qu[MAX_USER_UUID + 2];
    const char *user = NULL;
    json_t *body = parse_user_body(conn, req, qu, sizeof qu, &user);
    if (!body)
        return;
    json_t *jc = json_object_get(body, "code");
    json_t *jt = json_object_get(body, "timeout_ms");
    const char *problem = NULL;
    int status = 400;
    if (!jc)
        problem = "code is required";
    else if (!json_is_string(jc))
        problem = "code must be a string";
    else if (json_string_length(jc) > gw->cfg.max_code_bytes) {
        problem = "code is larger than max-code-bytes";
        status = 413;
    } else if (jt && !json_is_null(jt) && (!json_is_integer(jt) || json_integer_value(jt) <= 0))
        problem = "timeout_ms must be a positive integer";
    if (problem) {
        json_decref(body); /* jc and jt with it */
        respond_err(conn, status, "invalid request", problem);
        return;
    }
    if (gw->shutting_down) {
        json_decref(body);
        respond_err(conn, 503, "shutting down", "the gateway is stopping");
        return;
    }
    uint64_t timeout = gw->cfg.exec_timeout_ms;
    if (json_is_integer(jt) && (uint64_t)json_integer_value(jt) < timeout)
        timeout = (uint64_t)json_integer_value(jt);

    gw_exec_t *e = calloc(1, sizeof *e);
    if (e)
        e->kind = GW_CONN_EXEC;
    char *code = strndup(json_string_value(jc), json_string_length(jc));
    if (!e || !code) {
        free(e);
        free(code);
        json_decref(body);
        respond_err(conn, 500, "internal error", "out of memory");
        return;
    }
    e->code = code;
    e->timeout_ms = timeout;
    e->conn = conn;
    e->stream = wants_ndjson(req);

    gw_session_t *s = gw_session_find_user(gw, user);
    bool created = false;
    if (!s) {
        int r = gw_session_new(gw, user, "python3", &s);
        if (r < 0) {
            gw_exec_free(&e);
            json_decref(body);
            respond_err(conn, 500, "internal error", strerror(-r));
            return;
        }
        created = true;
    }
    json_decref(body);
    /* Admitted before a streamed response begins: its 200 cannot become a 429 afterwards. */
    int r = gw_session_admit(s, e);
    if (r < 0) {
        gw_exec_free(&e);
        gw->metrics.executions[OUTCOME_REJECTED]++;
        if (r == -EAGAIN)
            respond_err(conn, 429, "too many queued requests",
                        "this session's queue is full; retry later");
        else
            respond_err(conn, 500, "internal error", strerror(-r));
        if (created)
            gw_session_release(s, 503, "internal error", NULL);
        return;
    }
    if (e->stream)
        http_conn_stream_begin(conn, 200, "application/x-ndjson", NULL);
    http_conn_set_user(conn, e);
    gw_session_submit(s, e);
}

void gw_api_exec_event(gw_exec_t *e, json_t *event) {
    if (!e->conn || e->stream_broken)
        return;
    char *line = json_dumps(event, JSON_COMPACT);
    if (!line)
        return;
    size_t n = strlen(line);
    line[n] = '\n'; /* replaces the NUL; length passed explicitly */
    if (http_conn_stream_write(e->conn, line, n + 1) == -ENOBUFS)
        e->stream_broken = true; /* slow reader: later events are dropped, the end still goes */
    free(line);
}

void gw_api_exec_done(gw_exec_t *e, int status, const char *error, const char *detail) {
    http_conn_t *conn = e->conn;
    if (!conn)
        return;
    http_conn_set_user(conn, NULL);
    e->conn = NULL;
    gw_session_t *s = e->session;
    json_t *res = exec_out_summary(e->out, !e->stream);
    if (!res) {
        if (e->stream)
            http_conn_close(conn);
        else
            respond_err(conn, 500, "internal error", "cannot build the response");
        return;
    }
    uint64_t dur = e->started_us ? (now_mono_us() - e->started_us) / 1000 : 0;
    json_object_set_new(res, "duration_ms", json_integer((json_int_t)dur));
    json_object_set_new(res, "timed_out", json_boolean(e->timed_out));
    json_object_set_new(res, "session_reset", json_boolean(e->session_reset));
    json_object_set_new(res, "kernel_id", s ? json_string(s->kernel_id) : json_null());
    if (error) {
        json_object_set_new(res, "error_message", json_string(error));
        json_object_set_new(res, "detail", json_string(detail ? detail : ""));
        json_object_set_new(res, "status", json_integer(status));
        /* Keep the Jupyter-shaped `error` object; a gateway error without a kernel error
         * still gets {error, detail} at the top level as every error response does. */
        if (json_is_null(json_object_get(res, "error")))
            json_object_set_new(res, "error", json_string(error));
    }
    if (e->stream) {
        json_object_set_new(res, "type", json_string("end"));
        char *line = json_dumps(res, JSON_COMPACT);
        json_decref(res);
        if (line) {
            size_t n = strlen(line);
            line[n] = '\n';
            http_conn_stream_write(conn, line, n + 1);
            free(line);
        }
        http_conn_stream_end(conn);
        return;
    }
    const char *extra = status == 503 ? "Retry-After: 1\r\n" : NULL;
    respond_json(conn, status, res, extra);
}

void gw_api_on_close(http_conn_t *conn, void *conn_user, void *arg) {
    if (!conn_user)
        return;
    if (*(gw_conn_kind_t *)conn_user == GW_CONN_EXEC)
        gw_exec_client_gone(conn_user);
    else
        gw_pending_client_gone(conn_user);
}

/* ---- /release, /status, /metrics -------------------------------------------------------- */

static void handle_release(gw_t *gw, http_conn_t *conn, const http_request_t *req) {
    char qu[MAX_USER_UUID + 2];
    const char *user = NULL;
    json_t *body = parse_user_body(conn, req, qu, sizeof qu, &user);
    if (!body)
        return;
    gw_session_t *s = gw_session_find_user(gw, user);
    if (!s) {
        json_decref(body);
        respond_err(conn, 404, "unknown session", "no session for this user_uuid");
        return;
    }
    json_t *res = json_pack("{s:s,s:s,s:s}", "status", "released", "user_uuid", user, "kernel_id",
                            s->kernel_id);
    json_decref(body);
    gw_session_release(s, 409, "session released", "the session was released by a client");
    respond_json(conn, 200, res, NULL);
}

static void handle_status(gw_t *gw, http_conn_t *conn) {
    gw_counts_t c;
    gw_counts(gw, &c);
    json_t *res = json_pack(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:b,s:s,s:s,s:I}", "total_workers",
        (int)(c.starting + c.idle + c.busy), "idle_workers", (int)c.idle, "busy_workers",
        (int)c.busy, "starting_workers", (int)c.starting, "stopping_workers", (int)c.stopping,
        "executing_workers", (int)c.executing, "sessions", (int)c.sessions, "queued_requests",
        (int)c.queued, "min_idle_workers", (int)gw->cfg.min_idle_workers, "max_total_workers",
        (int)gw->cfg.max_total_workers, "is_initializing", gw->initializing, "kernel",
        gw->cfg.kernel, "launcher", gw->launcher->name, "uptime_s",
        (json_int_t)((now_mono_ms() - gw->started_mono_ms) / 1000));
    json_object_set_new(res, "waiting_sessions", json_integer(c.waiting));
    json_object_set_new(res, "worker_transport", json_string(gw->cfg.worker_transport));
    /* The limits in force, so an operator can see what the options and environment gave. */
    const gw_config_t *cfg = &gw->cfg;
    json_object_set_new(
        res, "limits",
        json_pack("{s:f,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "worker_cpu", cfg->worker_cpu,
                  "worker_ram_mb", (json_int_t)cfg->worker_ram_mb, "worker_disk_mb",
                  (json_int_t)cfg->worker_disk_mb, "worker_pids", (json_int_t)cfg->worker_pids,
                  "exec_timeout_ms", (json_int_t)cfg->exec_timeout_ms, "idle_timeout_s",
                  (json_int_t)cfg->idle_timeout_s, "max_output_bytes",
                  (json_int_t)cfg->max_output_bytes, "max_queue", (json_int_t)cfg->max_queue,
                  "kernel_max_message_mb", (json_int_t)cfg->kernel_max_message_mb,
                  "kernel_queue_msgs", (json_int_t)cfg->kernel_queue_msgs));
    respond_json(conn, 200, res, NULL);
}

static void handle_metrics(gw_t *gw, http_conn_t *conn) {
    char *text = gw_metrics_render(gw);
    if (!text) {
        respond_err(conn, 500, "internal error", "cannot render metrics");
        return;
    }
    http_conn_respond(conn, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text,
                      strlen(text));
    free(text);
}

/* ---- routing ---------------------------------------------------------------------------- */

static const char *strip_api_prefix(const char *path) {
    /* The seed's clients use the base URL .../api/v1. */
    if (startswith(path, "/api/v1/"))
        return path + 7;
    return path;
}

void gw_api_on_request(http_conn_t *conn, const http_request_t *req, void *arg) {
    gw_t *gw = arg;
    gw->metrics.http_requests++;
    const char *path = strip_api_prefix(req->path);
    bool get = streq(req->method, "GET") || streq(req->method, "HEAD");
    bool post = streq(req->method, "POST");

    if (streq(path, "/healthz")) {
        if (!get) {
            respond_err(conn, 405, "method not allowed", "use GET");
            return;
        }
        bool up = !gw->initializing && !gw->shutting_down;
        respond_json(conn, up ? 200 : 503, json_pack("{s:s}", "status", up ? "ok" : "starting"),
                     NULL);
        return;
    }

    if (streq(path, "/api") || (startswith(path, "/api/") && path == req->path)) {
        if (!route_authorized(gw, req)) {
            respond_err(conn, 401, "unauthorized",
                        "missing or wrong token (Authorization: token|Bearer, ?token=)");
            return;
        }
        gw_kernels_api(gw, conn, req);
        return;
    }

    static const struct {
        const char *path;
        const char *method;
    } routes[] = {
        {"/execute", "POST"}, {"/release", "POST"}, {"/status", "GET"}, {"/metrics", "GET"}};
    const char *allowed = NULL;
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++)
        if (streq(path, routes[i].path))
            allowed = routes[i].method;
    if (!allowed) {
        respond_err(conn, 404, "not found", "no such route");
        return;
    }
    if (!route_authorized(gw, req)) {
        respond_err(conn, 401, "unauthorized",
                    "missing or wrong token (X-Auth-Token, Authorization: token|Bearer, ?token=)");
        return;
    }
    if ((streq(allowed, "POST") && !post) || (streq(allowed, "GET") && !get)) {
        char detail[32];
        snprintf(detail, sizeof detail, "use %s", allowed);
        respond_err(conn, 405, "method not allowed", detail);
        return;
    }
    if (streq(path, "/execute"))
        handle_execute(gw, conn, req);
    else if (streq(path, "/release"))
        handle_release(gw, conn, req);
    else if (streq(path, "/status"))
        handle_status(gw, conn);
    else if (streq(path, "/metrics"))
        handle_metrics(gw, conn);
}
