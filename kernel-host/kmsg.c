/* Message contents of the native kernel (see kmsg.h). */
#include "kmsg.h"

#include "jwire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int get_bool(const json_t *content, const char *key, bool dflt, bool *ret) {
    const json_t *v = json_object_get(content, key);
    if (!v || json_is_null(v)) {
        *ret = dflt;
        return 0;
    }
    if (!json_is_boolean(v))
        return -EINVAL;
    *ret = json_is_true(v);
    return 0;
}

int kmsg_execute_parse(const json_t *content, kmsg_execute_t *ret) {
    if (!json_is_object(content) || !ret)
        return -EINVAL;
    const json_t *code = json_object_get(content, "code");
    if (!json_is_string(code))
        return -EINVAL;
    kmsg_execute_t e = {.code = json_string_value(code), .code_len = json_string_length(code)};
    int r;
    if ((r = get_bool(content, "silent", false, &e.silent)) < 0 ||
        (r = get_bool(content, "store_history", !e.silent, &e.store_history)) < 0 ||
        (r = get_bool(content, "allow_stdin", false, &e.allow_stdin)) < 0 ||
        (r = get_bool(content, "stop_on_error", true, &e.stop_on_error)) < 0)
        return r;
    const json_t *ue = json_object_get(content, "user_expressions");
    if (ue && !json_is_null(ue) && !json_is_object(ue))
        return -EINVAL;
    e.user_expressions = json_is_object(ue) && json_object_size(ue) ? ue : NULL;
    *ret = e;
    return 0;
}

json_t *kmsg_kernel_info(const char *py_version, const char *impl_version) {
    char version[32] = "3";
    if (py_version) {
        size_t n = strcspn(py_version, " ");
        if (n > 0 && n < sizeof version) {
            memcpy(version, py_version, n);
            version[n] = '\0';
        }
    }
    char major[8];
    snprintf(major, sizeof major, "%.*s", (int)strcspn(version, "."), version);
    char minor_url[64];
    /* "3.11.2" -> https://docs.python.org/3.11 */
    const char *dot2 = strchr(version, '.');
    dot2 = dot2 ? strchr(dot2 + 1, '.') : NULL;
    snprintf(minor_url, sizeof minor_url, "https://docs.python.org/%.*s",
             dot2 ? (int)(dot2 - version) : (int)strlen(version), version);
    char banner[512];
    snprintf(banner, sizeof banner,
             "Python %s\nType 'copyright', 'credits' or 'license' for more information\n"
             "IPython shell in the kbox native kernel -- An enhanced Interactive Python. "
             "Type '?' for help.\n",
             py_version ? py_version : version);
    return json_pack(
        "{s:s, s:s, s:s, s:s,"
        " s:{s:s, s:s, s:s, s:{s:s, s:i}, s:s, s:s, s:s},"
        " s:s, s:b, s:[{s:s, s:s}, {s:s, s:s}, {s:s, s:s}, {s:s, s:s}, {s:s, s:s}, {s:s, s:s},"
        " {s:s, s:s}]}",
        "status", "ok", "protocol_version", JWIRE_PROTOCOL_VERSION, "implementation",
        KMSG_IMPLEMENTATION, "implementation_version", impl_version ? impl_version : "",
        "language_info", "name", "python", "version", version, "mimetype", "text/x-python",
        "codemirror_mode", "name", "ipython", "version", (int)strtol(major, NULL, 10),
        "pygments_lexer", "ipython3", "nbconvert_exporter", "python", "file_extension", ".py",
        "banner", banner, "debugger", 0, "help_links", "text", "Python Reference", "url", minor_url,
        "text", "IPython Reference", "url", "https://ipython.readthedocs.io/en/stable/", "text",
        /* JupyterLab's Help menu lists these; ipykernel offers the same libraries. */
        "NumPy Reference", "url", "https://numpy.org/doc/stable/reference/", "text",
        "SciPy Reference", "url", "https://docs.scipy.org/doc/scipy/reference/", "text",
        "Matplotlib Reference", "url", "https://matplotlib.org/stable/", "text", "SymPy Reference",
        "url", "https://docs.sympy.org/latest/index.html", "text", "pandas Reference", "url",
        "https://pandas.pydata.org/docs/");
}

json_t *kmsg_status(const char *state) {
    return json_pack("{s:s}", "execution_state", state);
}

json_t *kmsg_execute_input(const char *code, size_t code_len, long count) {
    return json_pack("{s:s%, s:I}", "code", code, code_len, "execution_count", (json_int_t)count);
}

json_t *kmsg_stream(const char *name, const char *text, size_t len) {
    return json_pack("{s:s, s:s%}", "name", name, "text", text, len);
}

json_t *kmsg_execute_ok(long count, json_t *user_expressions, json_t *payload) {
    return json_pack("{s:s, s:I, s:o, s:o}", "status", "ok", "execution_count", (json_int_t)count,
                     "user_expressions", user_expressions ? user_expressions : json_object(),
                     "payload", payload ? payload : json_array());
}

json_t *kmsg_execute_error(long count, const char *ename, const char *evalue, json_t *traceback,
                           json_t *payload) {
    return json_pack("{s:s, s:I, s:s, s:s, s:o, s:{}, s:o}", "status", "error", "execution_count",
                     (json_int_t)count, "ename", ename ? ename : "", "evalue", evalue ? evalue : "",
                     "traceback", traceback ? traceback : json_array(), "user_expressions",
                     "payload", payload ? payload : json_array());
}

json_t *kmsg_aborted(void) {
    return json_pack("{s:s}", "status", "aborted");
}

json_t *kmsg_execute_metadata(const char *started, const char *engine, const char *status) {
    return json_pack("{s:s, s:b, s:s, s:s}", "started", started, "dependencies_met", 1, "engine",
                     engine, "status", status);
}

json_t *kmsg_shutdown_reply(bool restart) {
    return json_pack("{s:s, s:b}", "status", "ok", "restart", restart);
}

json_t *kmsg_ok(void) {
    return json_pack("{s:s}", "status", "ok");
}

json_t *kmsg_error_reply(const char *ename, const char *evalue) {
    return json_pack("{s:s, s:s, s:s, s:[]}", "status", "error", "ename", ename, "evalue", evalue,
                     "traceback");
}

int kmsg_reply_type(const char *request_type, char *buf, size_t len) {
    static const char suffix[] = "_request";
    size_t n = request_type ? strlen(request_type) : 0;
    if (n <= strlen(suffix) || strcmp(request_type + n - strlen(suffix), suffix) != 0)
        return -EINVAL;
    int w = snprintf(buf, len, "%.*s_reply", (int)(n - strlen(suffix)), request_type);
    return w < 0 || (size_t)w >= len ? -ENAMETOOLONG : 0;
}
