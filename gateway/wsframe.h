/* Jupyter's WebSocket message formats, to and from jwire messages. Pure code; fuzzed.
 *
 * legacy (what jupyter_server's gateway client speaks, so mandatory):
 *   text frame   = one JSON object {channel, header, parent_header, metadata, content, buffers}
 *   binary frame = BE uint32 n (= nbufs + 1), n BE uint32 offsets, the JSON message, buffers
 * v1.kernel.websocket.jupyter.org (when the client offers it):
 *   binary frame = LE uint64 n, n LE uint64 offsets, then channel, header, parent_header,
 *                  metadata, content, buffers... each part from its offset to the next. */
#pragma once

#include "jwire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WSFRAME_V1_SUBPROTOCOL "v1.kernel.websocket.jupyter.org"

typedef enum { WSFRAME_LEGACY = 0, WSFRAME_V1 = 1 } wsframe_proto_t;

/* Clients' ids are UUIDs, some with a session and a counter appended (~80 bytes). */
#define WSFRAME_MAX_MSG_ID 1024

/* Decode a client frame. ret_ch is shell, control or stdin (anything else: -EBADMSG); the
 * message has header, parent_header, metadata, content objects and its buffers; ids empty.
 * Header must carry string msg_id (at most WSFRAME_MAX_MSG_ID bytes: the gateway keeps it
 * until the reply comes) and msg_type. -EBADMSG on any malformation. Legacy: a text
 * frame that starts with a NUL byte is read as the binary form (jupyter_server 1.23's gateway
 * proxy sends binary messages upstream as text frames). */
int wsframe_decode(wsframe_proto_t proto, bool binary, const void *data, size_t len,
                   jwire_channel_t *ret_ch, jwire_msg_t **ret_msg);

/* Encode a kernel message for a client. ret_data is malloc'd. Legacy messages without
 * buffers are text frames, everything else binary. */
int wsframe_encode(wsframe_proto_t proto, jwire_channel_t ch, const jwire_msg_t *msg,
                   bool *ret_binary, char **ret_data, size_t *ret_len);
