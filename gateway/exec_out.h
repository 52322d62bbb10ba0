/* What one execution produced, shaped for POST /execute: the iopub messages of one
 * execute_request go in, the response fields (and NDJSON stream events) come out.
 *
 * Memory is bounded by max_bytes: text is cut with a marker, a rich output that does not fit
 * is dropped whole (a base64 image is never cut), and `truncated` is set. Stream text appears
 * in the response up to three times (outputs, stdout/stderr, result_text), so it counts twice
 * against the budget; that keeps the whole response body within about twice max_bytes.
 * Pure code: no sockets, no clocks; unit-tested. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct exec_out exec_out_t;

exec_out_t *exec_out_new(size_t max_bytes);
void exec_out_destroy(exec_out_t **self_p);

/* Feed one iopub message (msg_type and content as received). Returns a new reference to the
 * stream event to send to an NDJSON client ({"type": "stream"|"display"|"result"|"error",
 * ...}), or NULL when the message is not an output or was dropped by the budget. */
json_t *exec_out_feed(exec_out_t *self, const char *msg_type, const json_t *content);

/* The execute_reply content (execution_count, status). */
void exec_out_set_reply(exec_out_t *self, const json_t *reply_content);

/* Record an error the gateway itself determined (e.g. a timeout with no kernel error). */
void exec_out_set_error(exec_out_t *self, const char *ename, const char *evalue);

/* Some of the output never reached us (the kernel's iopub connection was dropped): mark the
 * result truncated and say so on stderr. Returns the stream event for an NDJSON client. */
json_t *exec_out_note_lost(exec_out_t *self, const char *why);

bool exec_out_has_error(const exec_out_t *self);
bool exec_out_truncated(const exec_out_t *self);

/* New object: result_text, result_base64, stdout, stderr, error, execution_count, truncated,
 * and outputs when with_outputs. */
json_t *exec_out_summary(const exec_out_t *self, bool with_outputs);

/* Remove ANSI escape sequences (SGR colours) in place; returns s. */
char *exec_strip_ansi(char *s);
