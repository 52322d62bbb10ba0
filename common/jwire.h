/* The Jupyter wire protocol (messaging spec 5.3), written once for both the gateway (client
 * side) and the kernel host (kernel side).
 *
 * A message on the wire is the multipart
 *   [routing ids..., "<IDS|MSG>", hex HMAC, header, parent_header, metadata, content, buffers...]
 * The HMAC is HMAC-SHA256 (nettle's streaming API, so keys of any length work) over the
 * four JSON frames; an empty key disables signing. Verification is constant-time, a bounded
 * replay cache rejects a signature seen before, and every incoming message is bounded in size
 * and frame count before anything is parsed.
 *
 * Frames travel as czmq zmsg_t. Every function returns >= 0 on success or -errno:
 *   -EBADMSG  malformed (no delimiter, too few frames, invalid JSON, header not an object,...)
 *   -EACCES   bad or missing signature
 *   -EALREADY replayed signature
 *   -EMSGSIZE over a limit in jwire_limits_t */
#pragma once

#include <czmq.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JWIRE_DELIM            "<IDS|MSG>"
#define JWIRE_PROTOCOL_VERSION "5.3"

/* ---- signing ---------------------------------------------------------------------------- */

typedef struct jwire_signer jwire_signer_t;

/* scheme: "hmac-sha256" (the only one supported) or "" / NULL with an empty key (no signing).
 * The key bytes are copied. NULL on an unsupported scheme (errno EINVAL) or ENOMEM. */
jwire_signer_t *jwire_signer_new(const char *scheme, const void *key, size_t keylen);
void jwire_signer_destroy(jwire_signer_t **self_p);
/* true when the key is empty (messages carry an empty signature and none is checked). */
bool jwire_signer_is_null(const jwire_signer_t *self);
/* hex HMAC over the four JSON frames; ret_hex gets 64 hex chars + NUL ("" when null). */
int jwire_signer_sign(const jwire_signer_t *self, const void *const parts[4], const size_t lens[4],
                      char ret_hex[65]);
/* 0 if sig (length siglen) is the right signature, -EACCES otherwise (constant time). */
int jwire_signer_verify(const jwire_signer_t *self, const void *const parts[4],
                        const size_t lens[4], const void *sig, size_t siglen);

/* ---- replay cache ----------------------------------------------------------------------- */

typedef struct jwire_replay jwire_replay_t;
/* Remembers the last `capacity` signatures (FIFO eviction); lookups O(1). */
jwire_replay_t *jwire_replay_new(size_t capacity);
void jwire_replay_destroy(jwire_replay_t **self_p);
/* 0 and remembered if new, -EALREADY if seen; -EINVAL if sig_hex is empty or longer than 64
 * characters (an HMAC-SHA256 hex digest is exactly 64). */
int jwire_replay_check_add(jwire_replay_t *self, const char *sig_hex);

/* ---- messages --------------------------------------------------------------------------- */

typedef struct {
    size_t max_bytes;  /* total of all frames; 0 = default 64 MiB */
    size_t max_frames; /* ids + 6 + buffers; 0 = default 64 */
} jwire_limits_t;

typedef struct jwire_msg {
    zmsg_t *ids;    /* routing identities, never NULL (may be empty) */
    json_t *header; /* objects, never NULL after decode/new */
    json_t *parent_header;
    json_t *metadata;
    json_t *content;
    zmsg_t *buffers; /* raw buffers, never NULL (may be empty) */
} jwire_msg_t;

/* A new message with a fresh header {msg_id (uuid4), session, username, date (now, ISO 8601
 * with microseconds and "Z"), msg_type, version "5.3"}, parent_header copied from parent (or
 * {}), metadata {}, and content stolen (NULL = {}). */
jwire_msg_t *jwire_msg_new(const char *msg_type, const char *session, const char *username,
                           const json_t *parent_header, json_t *content);
void jwire_msg_destroy(jwire_msg_t **self_p);

/* Encode to wire frames (ids and buffers are copied, the message is untouched). */
int jwire_msg_encode(const jwire_msg_t *self, const jwire_signer_t *signer, zmsg_t **ret);
/* Takes ownership of *zmsg_p (always destroyed and nulled). replay may be NULL; limits may be
 * NULL (defaults). The signature is checked before any JSON is parsed. */
int jwire_msg_decode(zmsg_t **zmsg_p, const jwire_signer_t *signer, jwire_replay_t *replay,
                     const jwire_limits_t *limits, jwire_msg_t **ret);

/* Encode and send on a zsock (multipart); 0 or -errno. Does not consume the message. */
int jwire_msg_send(const jwire_msg_t *self, const jwire_signer_t *signer, zsock_t *sock);
/* Sign and send a message whose four JSON frames (header, parent_header, metadata, content)
 * the caller has already serialized, e.g. with an encoder whose output equals the compact
 * serialization jwire_msg_send() would produce. ids and buffers may be NULL (none); the
 * frames are copied; sends block or not as in jwire_msg_send(). 0 or -errno. */
int jwire_send_frames(zsock_t *sock, const jwire_signer_t *signer, zmsg_t *ids,
                      const void *const parts[4], const size_t lens[4], zmsg_t *buffers);
/* Receive one multipart message and decode it. Never blocks: -EAGAIN when no message is
 * waiting (call it until -EAGAIN from a loop_zmq_add() callback). Also enforces
 * limits->max_bytes/max_frames while reading: an oversized message is read to its end and
 * dropped (-EMSGSIZE), so the socket stays at a message boundary. sock may also be a raw
 * libzmq socket (anything zsock_resolve() accepts); so may jwire_msg_send()'s, whose sends
 * block or not per the socket's ZMQ_SNDTIMEO. */
int jwire_msg_recv(zsock_t *sock, const jwire_signer_t *signer, jwire_replay_t *replay,
                   const jwire_limits_t *limits, jwire_msg_t **ret);

/* Borrowed accessors; "" when absent. */
const char *jwire_msg_type(const jwire_msg_t *self);
const char *jwire_msg_id(const jwire_msg_t *self);
const char *jwire_msg_parent_id(const jwire_msg_t *self);
const char *jwire_msg_parent_type(const jwire_msg_t *self);

/* ISO 8601 UTC with microseconds and "Z": "2026-11-22T01:53:32.123456Z" (27 chars + NUL). */
void jwire_now_iso8601(char ret[32]);

/* ---- connection files ------------------------------------------------------------------- */

typedef enum {
    JWIRE_SHELL,
    JWIRE_IOPUB,
    JWIRE_STDIN,
    JWIRE_CONTROL,
    JWIRE_HB,
    JWIRE_NCHANNELS
} jwire_channel_t;

typedef struct {
    char transport[8]; /* "tcp" or "ipc" */
    char ip[256];      /* tcp: address; ipc: path prefix */
    int ports[JWIRE_NCHANNELS];
    char signature_scheme[32];
    char key[256]; /* as text, as the file holds it */
    char kernel_name[64];
} jwire_conn_t;

/* Parse a connection file; -EINVAL if a field is missing or of the wrong type / too long. */
int jwire_conn_parse(const char *json_text, jwire_conn_t *ret);
int jwire_conn_read(const char *path, jwire_conn_t *ret);
/* Write atomically with mode 0600. */
int jwire_conn_write(const char *path, const jwire_conn_t *conn);
/* "tcp://ip:port" or "ipc://ip-port" into buf. */
int jwire_conn_endpoint(const jwire_conn_t *conn, jwire_channel_t ch, char *buf, size_t len);
const char *jwire_channel_name(jwire_channel_t ch); /* "shell", "iopub", ... */
