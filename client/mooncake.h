/* mooncake.h -- a trace in the Mooncake trace format, for pd-bench
 * --dataset mooncake (docs/benchmarks.md): one JSON object per line,
 *
 *   {"timestamp": 934, "input_length": 289, "output_length": 47,
 *    "hash_ids": [0, 1, 2, 3, 20]}
 *
 * timestamp: arrival in ms from the trace's start (non-decreasing);
 * hash_ids: the prompt's blocks of block_size tokens in order, the last one
 * maybe partial; requests that share a hash id share that block of prompt
 * (so they share a prefix as far as their ids agree). The file is hostile:
 * every field is checked, and a bad line is refused with its number. */
#ifndef PD_MOONCAKE_H
#define PD_MOONCAKE_H

#include <stddef.h>
#include <stdint.h>

#define PD_MOONCAKE_MAX_IDS 4096    /* hash ids per request */
#define PD_MOONCAKE_MAX_LEN 1048576 /* input or output tokens per request */

typedef struct {
    uint64_t at_ms;
    uint32_t input_length, output_length;
    uint64_t *hash_ids; /* (n_ids) */
    uint32_t n_ids;
} pd_mooncake_req_t;

/* Reads at most max_reqs requests of path. input_length must fit its hash
 * ids: (n_ids - 1) * block_size < input_length <= n_ids * block_size.
 * Returns 0 and *out (free with pd_mooncake_free), or -1 with msg set. */
int pd_mooncake_load(const char *path, uint32_t block_size, size_t max_reqs,
                     pd_mooncake_req_t **out, size_t *n_out, char *msg, size_t msg_len);
/* The same from one line of text (tests, fuzzing): 0 or -1 with msg. */
int pd_mooncake_parse_line(const char *line, size_t len, uint32_t block_size,
                           pd_mooncake_req_t *out, char *msg, size_t msg_len);
void pd_mooncake_free(pd_mooncake_req_t *reqs, size_t n);

#endif
