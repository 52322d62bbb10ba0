/* libFuzzer target: the ZMTP stream check must never crash, and must give the same verdict
 * however the stream is cut into reads (the relay feeds it whatever each read returns). */
#include "zguard.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3)
        return 0;
    /* Small limits from the input, so that they are reached. */
    uint64_t max_bytes = data[0] * 16u;
    uint32_t max_frames = data[1] % 8u + 1;
    unsigned step = data[2] % 13u + 1;
    data += 3;
    size -= 3;
    zguard_t whole, cut;
    zguard_init(&whole, max_bytes, max_frames);
    zguard_init(&cut, max_bytes, max_frames);
    int a = zguard_feed(&whole, data, size);
    int b = 0;
    for (size_t i = 0; i < size && b == 0; i += step)
        b = zguard_feed(&cut, data + i, size - i < step ? size - i : step);
    if (a != b)
        abort();
    return 0;
}
