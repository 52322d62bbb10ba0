/* The Jupyter Server kernels REST API (what `jupyter server --gateway-url` and
 * @jupyterlab/services call), over the same sessions as POST /execute: a kernel created here
 * is a session without a user_uuid, and an /execute session is listed here too.
 * Status codes and shapes follow jupyter_server 1.23's handlers: 201 + Location on create,
 * 204 on delete and interrupt, 200 + model on restart, 404 for unknown ids. Unknown query
 * parameters are ignored everywhere. */
#include "gw.h"
#include "log.h"
#include "util.h"

#define MAX_ENV_KEYS 128

static void send_json(http_conn_t *conn, int status, json_t *j, const char *extra) {
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body) {
        http_conn_respond_error(conn, 500, "internal error", "cannot encode response");
        return;
    }
    http_conn_respond(conn, status, "application/json", extra, body, strlen(body));
    free(body);
}

static json_t *kernelspec(const gw_t *gw) {
    const char *display = streq(gw->cfg.kernel, "native") ? "Python 3 (kbox native, sandboxed)"
                                                          : "Python 3 (ipykernel, sandboxed)";
    return json_pack("{s:s,s:{s:[s,s,s,s,s],s:s,s:s,s:s,s:{},s:{s:s}},s:{}}", "name", "python3",
                     "spec", "argv", "python3", "-m", "ipykernel_launcher", "-f",
                     "{connection_file}", "display_name", display, "language", "python",
                     "interrupt_mode", "signal", "env", "metadata", "sandbox", "kbox", "resources");
}

static bool method_is(const http_request_t *req, const char *m) {
    return streq(req->method, m);
}

static void not_allowed(http_conn_t *conn, const char *allowed) {
    char detail[64];
    snprintf(detail, sizeof detail, "use %s", allowed);
    http_conn_respond_error(conn, 405, "method not allowed", detail);
}

static void create_kernel(gw_t *gw, http_conn_t *conn, const http_request_t *req) {
    json_error_t jerr;
    json_t *body = req->body_len
                       ? json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr)
                       : json_object();
    if (!json_is_object(body)) {
        char detail[256];
        snprintf(detail, sizeof detail, "body must be a JSON object: %s",
                 body ? "got another JSON type" : jerr.text);
        json_decref(body);
        http_conn_respond_error(conn, 400, "invalid JSON", detail);
        return;
    }
    json_t *jname = json_object_get(body, "name");
    const char *name = json_is_string(jname) ? json_string_value(jname) : "python3";
    json_t *env = json_object_get(body, "env");
    const char *problem = NULL;
    if (jname && !json_is_string(jname) && !json_is_null(jname))
        problem = "name must be a string";
    else if (env && !json_is_object(env) && !json_is_null(env))
        problem = "env must be an object";
    else if (json_is_object(env) && json_object_size(env) > MAX_ENV_KEYS)
        problem = "env has too many keys";
    if (problem) {
        json_decref(body);
        http_conn_respond_error(conn, 400, "invalid request", problem);
        return;
    }
    /* env (KERNEL_USERNAME, KERNEL_WORKING_DIR, ...) is validated and ignored: the working
     * directory is always /sandbox and nothing of the caller's host leaks in. */
    if (!streq(name, "python3")) {
        json_decref(body);
        http_conn_respond_error(conn, 404, "no such kernel", "the only kernel spec is python3");
        return;
    }
    json_decref(body);
    if (gw->shutting_down) {
        http_conn_respond_error(conn, 503, "shutting down", "the gateway is stopping");
        return;
    }
    gw_session_t *s = NULL;
    int r = gw_session_new(gw, NULL, "python3", &s);
    if (r < 0) {
        http_conn_respond_error(conn, 500, "internal error", strerror(-r));
        return;
    }
    if ((r = gw_session_add_pending(s, conn, 201)) < 0) {
        gw_session_release(s, 500, "internal error", NULL);
        http_conn_respond_error(conn, 500, "internal error", strerror(-r));
        return;
    }
    gw_pool_request(gw, s);
}

static void list_kernels(gw_t *gw, http_conn_t *conn) {
    json_t *arr = json_array();
    gw_session_t *s;
    TAILQ_FOREACH(s, &gw->sessions, link)
    json_array_append_new(arr, gw_session_model(s));
    send_json(conn, 200, arr, NULL);
}

void gw_kernels_api(gw_t *gw, http_conn_t *conn, const http_request_t *req) {
    const char *p = req->path;
    if (streq(p, "/api") || streq(p, "/api/")) {
        if (!method_is(req, "GET")) {
            not_allowed(conn, "GET");
            return;
        }
        send_json(conn, 200, json_pack("{s:s}", "version", "1.23.4"), NULL);
        return;
    }
    if (streq(p, "/api/kernelspecs")) {
        if (!method_is(req, "GET")) {
            not_allowed(conn, "GET");
            return;
        }
        /* jupyter_server 1.23's gateway client, when KERNEL_USERNAME is set, asks for one spec
         * as /api/kernelspecs?user=<user>/<name> (url_path_join onto its ?user= URL) and
         * crashes (500) on the list: answer with that one spec. */
        char user[256];
        const char *slash;
        int qr = http_query_param(req->query, "user", user, sizeof user);
        if (qr == -ENAMETOOLONG || qr == -EINVAL) {
            /* Unreadable, it could have named a spec: never answer with the whole list. */
            http_conn_respond_error(conn, 400, "invalid request",
                                    qr == -EINVAL ? "user: bad percent-escape"
                                                  : "user: at most 255 bytes");
            return;
        }
        if (qr >= 0 && (slash = strrchr(user, '/'))) {
            if (!streq(slash + 1, "python3"))
                http_conn_respond_error(conn, 404, "no such kernel spec", slash + 1);
            else
                send_json(conn, 200, kernelspec(gw), NULL);
            return;
        }
        send_json(conn, 200,
                  json_pack("{s:s,s:{s:o}}", "default", "python3", "kernelspecs", "python3",
                            kernelspec(gw)),
                  NULL);
        return;
    }
    if (startswith(p, "/api/kernelspecs/")) {
        if (!method_is(req, "GET")) {
            not_allowed(conn, "GET");
            return;
        }
        if (!streq(p + strlen("/api/kernelspecs/"), "python3")) {
            http_conn_respond_error(conn, 404, "no such kernel spec", p + 17);
            return;
        }
        send_json(conn, 200, kernelspec(gw), NULL);
        return;
    }
    if (streq(p, "/api/kernels") || streq(p, "/api/kernels/")) {
        if (method_is(req, "GET")) {
            list_kernels(gw, conn);
            return;
        }
        if (method_is(req, "POST")) {
            create_kernel(gw, conn, req);
            return;
        }
        {
            not_allowed(conn, "GET, POST");
            return;
        }
    }
    if (!startswith(p, "/api/kernels/")) {
        http_conn_respond_error(conn, 404, "not found", "no such route");
        return;
    }
    /* /api/kernels/{id}[/action] */
    char id[64];
    const char *rest = p + strlen("/api/kernels/");
    size_t idlen = strcspn(rest, "/");
    if (idlen == 0 || idlen >= sizeof id) {
        http_conn_respond_error(conn, 404, "no such kernel", "malformed kernel id");
        return;
    }
    memcpy(id, rest, idlen);
    id[idlen] = '\0';
    const char *action = rest[idlen] == '/' ? rest + idlen + 1 : "";
    gw_session_t *s = gw_session_find_kernel(gw, id);
    if (!s) {
        http_conn_respond_error(conn, 404, "no such kernel", id);
        return;
    }
    if (streq(action, "")) {
        if (method_is(req, "GET")) {
            send_json(conn, 200, gw_session_model(s), NULL);
            return;
        }
        if (method_is(req, "DELETE")) {
            gw_session_release(s, 409, "kernel deleted", "the kernel was shut down");
            http_conn_respond(conn, 204, NULL, NULL, NULL, 0);
            return;
        }
        {
            not_allowed(conn, "GET, DELETE");
            return;
        }
    }
    if (streq(action, "interrupt")) {
        if (!method_is(req, "POST")) {
            not_allowed(conn, "POST");
            return;
        }
        gw_worker_interrupt(s->worker);
        http_conn_respond(conn, 204, NULL, NULL, NULL, 0);
        return;
    }
    if (streq(action, "restart")) {
        if (!method_is(req, "POST")) {
            not_allowed(conn, "POST");
            return;
        }
        int r = gw_session_restart(s, conn);
        if (r < 0)
            http_conn_respond_error(conn, 500, "internal error", strerror(-r));
        return;
    }
    if (streq(action, "channels")) {
        if (!method_is(req, "GET")) {
            not_allowed(conn, "GET");
            return;
        }
        gw_channels_open(gw, s, conn, req);
        return;
    }
    http_conn_respond_error(conn, 404, "not found", "no such kernel action");
}
