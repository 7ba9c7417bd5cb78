/* fuzz_mooncake.c -- libFuzzer target for the Mooncake trace line reader of
 * pd-bench --dataset mooncake (client/mooncake.h). A trace file is
 * untrusted: any bytes give a request or a refusal, never a crash; what
 * parses must hold what the reader promises (1..PD_MOONCAKE_MAX_IDS ids,
 * an input length that fits them, lengths in bounds).
 * fuzz-sources: client/mooncake.c
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "mooncake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t bs = 1u + data[0] % 128; /* the first byte picks the block size */
    pd_mooncake_req_t r;
    char msg[256];
    if (pd_mooncake_parse_line((const char *)data + 1, size - 1, bs, &r, msg, sizeof msg) != 0) {
        if (r.hash_ids != NULL)
            abort(); /* a refusal holds nothing */
        return 0;
    }
    if (r.n_ids < 1 || r.n_ids > PD_MOONCAKE_MAX_IDS || r.input_length == 0 ||
        r.input_length > PD_MOONCAKE_MAX_LEN || r.output_length == 0 ||
        r.output_length > PD_MOONCAKE_MAX_LEN ||
        (uint64_t)r.input_length <= (uint64_t)(r.n_ids - 1) * bs ||
        (uint64_t)r.input_length > (uint64_t)r.n_ids * bs)
        abort();
    free(r.hash_ids);
    return 0;
}
