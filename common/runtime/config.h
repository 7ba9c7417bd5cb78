/* config.h -- the cluster's YAML configuration (libyaml).
 *
 * One file describes the whole cluster; each process reads the sections it
 * needs. Unknown keys and bad values are errors naming the key path and the
 * line ("config.yaml:12: prefill.max_batch_tokens: expected an integer in
 * [1, 1048576], got 'abc'"). Command-line flags override file values through
 * pd_config_set("section.key", "value").
 *
 *   model:    path, max_seq_len, end_tokens (list of ids), threads, name
 *   router:   client_endpoint, worker_endpoint, max_queue, max_inflight,
 *             request_timeout_ms, max_tokens_limit, heartbeat_ms, liveness,
 *             stream_stall_ms, client_heartbeat_ms, client_liveness,
 *             routing (kv_aware|round_robin|least_loaded)
 *             (the HTTP front's address is http.listen)
 *   prefill:  max_batch_tokens, max_batch_size, wait_ms, max_inflight_kv,
 *             chunk_tokens (colocated: the budget of a mixed step)
 *   decode:   max_batch_size, wait_ms, kv_endpoint (bind address for KV ingress),
 *             kv_advertise (the KV address announced to peers, addr.h)
 *   worker:   router (address of the router's worker socket), heartbeat_ms,
 *             liveness, drain_timeout_ms, lease_ms, compute_timeout_ms
 *   kv:       block_size, num_blocks, memory_mb, dtype (f32, f16), load_failure
 *             (recompute|fail), prefix_caching, transfer (whole, layer)
 *   net:      hwm, max_msg_bytes, linger_ms, handshake_ms
 *   security: curve (bool), server_public_key, server_secret_key,
 *             client_public_key, client_secret_key, allowed_keys (list)
 *   http:     listen, api_keys (list), max_connections, max_body_bytes,
 *             idle_timeout_s, chat_template
 *   log:      level, dir
 *
 * docs/config.md lists every key with its type, range, default and reader.
 * Order of precedence: defaults < file < flags (pd_config_set), then
 * pd_config_validate. A failed load or set leaves the config unchanged.
 */
#ifndef PD_CONFIG_H
#define PD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "base/err.h"

#define PD_CFG_STR 256
#define PD_CFG_MAX_LIST 16
#define PD_CFG_MAX_FILE_BYTES (1u << 20) /* bigger config files are refused */

typedef struct {
    char path[PD_CFG_STR];
    char name[PD_CFG_STR];
    uint32_t max_seq_len;         /* 0 = model's ctx_len */
    int32_t end_tokens[PD_CFG_MAX_LIST];
    uint32_t n_end_tokens;
    uint32_t threads;             /* compute threads per worker */
    bool batch_invariant;         /* bit-identical rows in any batch (forward.h) */
    bool batch_invariant_quant;   /* the same for quantized weights */
    bool resident;                /* weights copied into 2 MB pages, not mapped */
} pd_cfg_model_t;

typedef struct {
    char client_endpoint[PD_CFG_STR];  /* e.g. tcp://127.0.0.1:5555 */
    char worker_endpoint[PD_CFG_STR];  /* e.g. tcp://127.0.0.1:5556 */
    uint32_t max_queue;
    uint32_t max_inflight;
    uint32_t request_timeout_ms;
    uint32_t max_tokens_limit;
    uint32_t heartbeat_ms;
    uint32_t liveness;                 /* missed beats before a peer is dead */
    uint32_t stream_stall_ms;
    uint32_t client_heartbeat_ms;      /* client <-> router application heartbeats */
    uint32_t client_liveness;          /* silent client intervals before its requests end */
    int routing;                       /* pd_routing_t: how a prefill worker is picked */
} pd_cfg_router_t;

/* router.routing (router/prefix.c says what each weighs) */
typedef enum { PD_ROUTING_KV_AWARE = 0, PD_ROUTING_ROUND_ROBIN = 1, PD_ROUTING_LEAST_LOADED = 2 } pd_routing_t;

typedef struct {
    uint32_t max_batch_tokens;
    uint32_t max_batch_size;
    uint32_t wait_ms;
    uint32_t max_inflight_kv;
    uint32_t chunk_tokens;             /* colocated: rows of a step mixing decode tokens
                                        * and a prefill chunk; 0 = no mixing */
} pd_cfg_prefill_t;

typedef struct {
    uint32_t max_batch_size;
    uint32_t wait_ms;
    char kv_endpoint[PD_CFG_STR];      /* KV ingress bind, tcp://127.0.0.1:0 = any port */
    char kv_advertise[PD_CFG_STR];     /* HOST[:PORT] announced to peers; "" = auto (addr.h) */
} pd_cfg_decode_t;

typedef struct {
    char router[PD_CFG_STR];           /* router's worker endpoint */
    uint32_t heartbeat_ms;
    uint32_t liveness;
    uint32_t drain_timeout_ms;
    uint32_t lease_ms;
    uint32_t compute_timeout_ms;       /* longest compute turn before the worker
                                        * declares itself stalled */
} pd_cfg_worker_t;

typedef enum { PD_KV_LOAD_RECOMPUTE = 0, PD_KV_LOAD_FAIL = 1 } pd_kv_load_failure_t;
/* How a prefill worker ships KV (docs/protocol.md): after the prefill, or
 * each layer as soon as it is computed. */
typedef enum { PD_KV_TRANSFER_WHOLE = 0, PD_KV_TRANSFER_LAYER = 1 } pd_kv_transfer_t;

typedef struct {
    uint32_t block_size;
    uint32_t num_blocks;               /* 0 = from memory_mb */
    uint32_t memory_mb;
    char dtype[16];                    /* "f32" or "f16" (engine/kvcache.h) */
    pd_kv_load_failure_t load_failure;
    bool prefix_caching;               /* keep and reuse prompt blocks (prefill, colocated) */
    pd_kv_transfer_t transfer;
} pd_cfg_kv_t;

typedef struct {
    uint32_t hwm;
    uint64_t max_msg_bytes;            /* control sockets */
    uint32_t linger_ms;
    uint32_t handshake_ms;
} pd_cfg_net_t;

typedef struct {
    bool curve;
    char server_public_key[64];        /* Z85, 40 chars */
    char server_secret_key[64];
    char client_public_key[64];
    char client_secret_key[64];
    char allowed_keys[PD_CFG_MAX_LIST][64];
    uint32_t n_allowed_keys;
} pd_cfg_security_t;

typedef struct {
    char listen[PD_CFG_STR];           /* "127.0.0.1:8000", "" = off */
    char api_keys[PD_CFG_MAX_LIST][128];
    uint32_t n_api_keys;
    uint32_t max_connections;
    uint64_t max_body_bytes;
    uint32_t idle_timeout_s;
    char chat_template[16];            /* auto (the GGUF's) | chatml | llama2 | llama3 |
                                          mistral | zephyr | gemma | phi3 */
} pd_cfg_http_t;

typedef struct {
    char level[16];
    char dir[PD_CFG_STR];
} pd_cfg_log_t;

typedef struct {
    pd_cfg_model_t model;
    pd_cfg_router_t router;
    pd_cfg_prefill_t prefill;
    pd_cfg_decode_t decode;
    pd_cfg_worker_t worker;
    pd_cfg_kv_t kv;
    pd_cfg_net_t net;
    pd_cfg_security_t security;
    pd_cfg_http_t http;
    pd_cfg_log_t log;
} pd_config_t;

/* Fills every field with its documented default. */
void pd_config_default(pd_config_t *c);
/* Reads path over the current values (call pd_config_default first).
 * Returns 0, or PD_EINVAL/PD_EIO with err = "path:line: key: problem". */
int pd_config_load_file(pd_config_t *c, const char *path, pd_err_t *err);
/* Same, from a YAML text in memory (tests, fuzzing); name is used in errors. */
int pd_config_load_string(pd_config_t *c, const char *yaml, size_t len, const char *name,
                          pd_err_t *err);
/* Sets one value by dotted key ("kv.block_size", "32") as a flag would.
 * Lists take comma-separated values. Same checks as the file. */
int pd_config_set(pd_config_t *c, const char *key, const char *value, pd_err_t *err);
/* Cross-field checks (block_size > 0, batch limits consistent...). */
int pd_config_validate(const pd_config_t *c, pd_err_t *err);

/* Writes c as YAML that pd_config_load_string reads back to the same values.
 * With redact_secrets, secret keys and API keys are written as "<redacted>"
 * (which does not load: a redacted dump cannot be reused by mistake).
 * Returns 0 or PD_EIO. */
int pd_config_write(const pd_config_t *c, FILE *f, bool redact_secrets, pd_err_t *err);

#endif
