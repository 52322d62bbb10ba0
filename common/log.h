/* JSON-lines logging to stderr: one object per line with ts, level, module, msg and an
 * optional context object built with jansson's json_pack format. Only boundary layers
 * (handlers, main loops, launchers) log; libraries return -errno and let the caller decide.
 * Never pass keys, tokens or user code as context. */
#pragma once

#include <stdarg.h>

enum { LOG_LVL_DEBUG = 0, LOG_LVL_INFO = 1, LOG_LVL_WARN = 2, LOG_LVL_ERROR = 3 };

/* Minimum level printed; default INFO, or env KBOX_LOG_LEVEL=debug|info|warn|error. */
void log_set_level(int level);
int log_get_level(void);

/* ctx_fmt is a json_pack format producing an object ("{s:s, s:i}"), or NULL for none. */
void log_emit(int level, const char *module, const char *msg, const char *ctx_fmt, ...);

#define log_debug(mod, msg, ...) log_emit(LOG_LVL_DEBUG, mod, msg, __VA_ARGS__)
#define log_info(mod, msg, ...)  log_emit(LOG_LVL_INFO, mod, msg, __VA_ARGS__)
#define log_warn(mod, msg, ...)  log_emit(LOG_LVL_WARN, mod, msg, __VA_ARGS__)
#define log_error(mod, msg, ...) log_emit(LOG_LVL_ERROR, mod, msg, __VA_ARGS__)
