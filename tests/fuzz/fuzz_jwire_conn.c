/* libFuzzer target for the connection-file parser (jwire_conn_parse). A kernel's connection
 * file lives in a directory the sandbox can reach, so its text is untrusted. Checks that a
 * parsed file has the invariants the rest of the code relies on (known transport, bounded and
 * terminated strings, ports in range) and that every endpoint can be formatted. */
#include "jwire.h"
#include "util.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool cond) {
    if (!cond)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    jwire_conn_t c;
    int r = jwire_conn_parse(text, &c);
    free(text);
    check(r == 0 || r == -EINVAL);
    if (r < 0)
        return 0;
    check(streq(c.transport, "tcp") || streq(c.transport, "ipc"));
    check(memchr(c.ip, '\0', sizeof c.ip) && c.ip[0]);
    check(memchr(c.key, '\0', sizeof c.key));
    check(memchr(c.signature_scheme, '\0', sizeof c.signature_scheme));
    check(memchr(c.kernel_name, '\0', sizeof c.kernel_name));
    for (int ch = 0; ch < JWIRE_NCHANNELS; ch++) {
        check(c.ports[ch] >= 0 && c.ports[ch] <= 65535);
        char ep[sizeof c.ip + 32];
        check(jwire_conn_endpoint(&c, (jwire_channel_t)ch, ep, sizeof ep) == 0);
        check(startswith(ep, streq(c.transport, "tcp") ? "tcp://" : "ipc://"));
    }
    return 0;
}
