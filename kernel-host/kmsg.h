/* Message contents of the native kernel, shaped in one place: parsing the requests it acts
 * on and building the replies it sends (messaging spec 5.3, with ipykernel 6.17's choices
 * where the spec leaves room). Pure functions of their arguments (no clock, no Python), unit
 * tested in tests/unit/test_kernel_msg.c.
 *
 * Builders return a new reference or NULL on ENOMEM; arguments documented as "stolen" are
 * consumed on every path. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define KMSG_IMPLEMENTATION "kbox"
#define KMSG_USERNAME       "kernel"

/* An execute_request's content, borrowed from the request. */
typedef struct {
    const char *code;
    size_t code_len;
    bool silent;
    bool store_history;             /* default: !silent */
    bool allow_stdin;               /* default: false */
    bool stop_on_error;             /* default: true */
    const json_t *user_expressions; /* an object, or NULL when absent/empty */
} kmsg_execute_t;

/* 0, or -EINVAL when code is missing or not a string, or a flag is not a boolean. */
int kmsg_execute_parse(const json_t *content, kmsg_execute_t *ret);

/* kernel_info_reply content. py_version is Py_GetVersion() ("3.11.2 (main, ...) [GCC ...]");
 * impl_version the kernel host's own version. */
json_t *kmsg_kernel_info(const char *py_version, const char *impl_version);

/* {"execution_state": state} */
json_t *kmsg_status(const char *state);
/* {"code": code, "execution_count": count} */
json_t *kmsg_execute_input(const char *code, size_t code_len, long count);
/* {"name": name, "text": text}; text must be valid UTF-8 (kstream guarantees it). */
json_t *kmsg_stream(const char *name, const char *text, size_t len);

/* execute_reply: ok carries user_expressions and payload (stolen; NULL = {} / []). */
json_t *kmsg_execute_ok(long count, json_t *user_expressions, json_t *payload);
/* execute_reply for an error: traceback (a list of strings) and payload are stolen. */
json_t *kmsg_execute_error(long count, const char *ename, const char *evalue, json_t *traceback,
                           json_t *payload);
/* {"status": "aborted"}: the reply to an execute_request skipped after an error. */
json_t *kmsg_aborted(void);
/* The execute_reply metadata ipykernel sends: {started, dependencies_met, engine, status}. */
json_t *kmsg_execute_metadata(const char *started, const char *engine, const char *status);

/* {"status": "ok", "restart": restart} */
json_t *kmsg_shutdown_reply(bool restart);
/* {"status": "ok"} */
json_t *kmsg_ok(void);
/* An error reply for a request the kernel could not handle: {status: error, ename, evalue,
 * traceback: []}. */
json_t *kmsg_error_reply(const char *ename, const char *evalue);

/* The reply type for a request type ("execute_request" -> "execute_reply") into buf; -EINVAL
 * when the type does not end in "_request", -ENAMETOOLONG. */
int kmsg_reply_type(const char *request_type, char *buf, size_t len);
