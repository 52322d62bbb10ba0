/* JSON-lines logger. One write(2) per line so concurrent writers never interleave. */
#include "log.h"
#include "util.h"

#include <jansson.h>
#include <time.h>

static int min_level = -1;

static int level_from_env(void) {
    const char *e = getenv("KBOX_LOG_LEVEL");
    if (streq(e, "debug"))
        return LOG_LVL_DEBUG;
    if (streq(e, "warn"))
        return LOG_LVL_WARN;
    if (streq(e, "error"))
        return LOG_LVL_ERROR;
    return LOG_LVL_INFO;
}

void log_set_level(int level) {
    min_level = level;
}

int log_get_level(void) {
    if (min_level < 0)
        min_level = level_from_env();
    return min_level;
}

void log_emit(int level, const char *module, const char *msg, const char *ctx_fmt, ...) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (level < log_get_level())
        return;
    if (level < 0 || level > LOG_LVL_ERROR)
        level = LOG_LVL_ERROR;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tsbuf[64];
    snprintf(tsbuf, sizeof tsbuf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

    json_t *obj = json_pack("{s:s,s:s,s:s,s:s}", "ts", tsbuf, "level", names[level], "module",
                            module ? module : "?", "msg", msg ? msg : "");
    if (!obj)
        return;
    if (ctx_fmt) {
        va_list ap;
        va_start(ap, ctx_fmt);
        json_error_t err;
        json_t *ctx = json_vpack_ex(&err, 0, ctx_fmt, ap);
        va_end(ap);
        if (json_is_object(ctx))
            json_object_update(obj, ctx);
        json_decref(ctx);
    }
    char *line = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!line)
        return;
    size_t n = strlen(line);
    char *out = realloc(line, n + 2);
    if (!out) {
        free(line);
        return;
    }
    out[n] = '\n';
    out[n + 1] = '\0';
    (void)write_all(STDERR_FILENO, out, n + 1);
    free(out);
}
