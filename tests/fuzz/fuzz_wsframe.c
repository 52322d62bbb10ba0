/* libFuzzer target: client WebSocket frames in every format must decode or be rejected,
 * never crash or leak; whatever decodes must re-encode. */
#include "wsframe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    wsframe_proto_t proto = (data[0] & 1) ? WSFRAME_V1 : WSFRAME_LEGACY;
    bool binary = (data[0] & 2) != 0;
    jwire_channel_t ch;
    jwire_msg_t *m = NULL;
    if (wsframe_decode(proto, binary, data + 1, size - 1, &ch, &m) == 0) {
        bool b;
        char *out = NULL;
        size_t len;
        if (wsframe_encode(proto, ch, m, &b, &out, &len) == 0)
            free(out);
        jwire_msg_destroy(&m);
    }
    return 0;
}
