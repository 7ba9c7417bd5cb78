/* kvcache.h -- paged KV cache: a pool of fixed-size blocks.
 *
 * A block holds block_size token positions for every layer, K and V, in
 * one contiguous region, so it can be shipped as one frame:
 *
 *   block b: [layer 0 K][layer 0 V][layer 1 K][layer 1 V] ...
 *   each    : (block_size, n_kv_heads * head_dim) of the cache's dtype
 *             (fp32, or IEEE half: kv.dtype f16 halves the bytes)
 *
 * Layers [l0, l1) of one block are contiguous too (pd_kv_block_layer,
 * (l1 - l0) * pd_kv_layer_bytes), so a layer's KV can be shipped as soon as
 * it is computed, one frame per block, without a gather.
 *
 * pd_kv_block_bytes is exactly the data above. Every block starts on a
 * 64-byte boundary (blocks are padded when block_bytes is not a multiple of
 * 64, which never happens with block_size a multiple of 16), and so does
 * every K/V region when block_size * n_kv_heads * head_dim is a multiple of 16.
 *
 * A sequence owns a block table (pd_kv_seq_t): block_table[i] holds its
 * positions [i*block_size, (i+1)*block_size). Blocks are reference counted
 * so several sequences may share a prefix block.
 *
 * Prefix caching (optional, pd_kv_prefix_enable; kvprefix.c): a full block
 * whose KV is computed is named by a hash chain and kept after its last
 * sequence lets go of it, until the pool needs the space:
 *
 *   root    = XXH3-64 of ("pdserve-kv-prefix-v1", model identity, block_size)
 *   hash[i] = XXH3-64 of tokens[i*bs .. (i+1)*bs) as little-endian int32,
 *             seeded with hash[i-1] (root for block 0)
 *
 * so a block's hash names the whole prefix up to its end, and the router can
 * compute the same chain from the tokens alone. A block is reused only when
 * its stored tokens equal the request's and its parent is the block already
 * matched (a unique serial per cached block), so a hash collision can never
 * hand one request another's KV. Block states:
 *
 *   free       refcount 0, not cached: on the free stack
 *   in use     refcount > 0, cached or not
 *   evictable  refcount 0, cached: on the LRU list, still findable
 *
 * pd_kv_alloc takes a free block first, else evicts the least recently
 * released evictable one; a block in use is never evicted. pd_kv_n_free
 * counts free + evictable blocks (what an allocation can get).
 */
#ifndef PD_KVCACHE_H
#define PD_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* Element type of cached K/V. */
typedef enum {
    PD_KV_F32 = 0, /* default (a zeroed shape) */
    PD_KV_F16 = 1, /* IEEE binary16, rounded to nearest even (as ggml's F16 cache) */
} pd_kv_dtype_t;

/* Bytes of one element; 0 for an unknown dtype. */
size_t pd_kv_dtype_size(pd_kv_dtype_t t);
/* "f32", "f16" (the config's words), or "?" */
const char *pd_kv_dtype_name(pd_kv_dtype_t t);
/* The dtype named name ("f32", "f16"): 0, or PD_EINVAL. */
int pd_kv_dtype_parse(const char *name, pd_kv_dtype_t *out);

typedef struct {
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t block_size;  /* tokens per block, default 16 */
    uint32_t n_blocks;
    pd_kv_dtype_t dtype;  /* PD_KV_F32 unless set */
} pd_kv_shape_t;

typedef struct pd_kv pd_kv_t;

/* Allocates the pool (n_blocks * pd_kv_block_bytes, 64-byte aligned; block
 * contents start uninitialized). Refuses (PD_EINVAL) a zero dimension, a
 * block size that overflows, an unknown dtype, n_blocks == 0 or > INT32_MAX, and (PD_ERANGE) a
 * pool above 64 GiB. Caller frees with pd_kv_free. */
pd_kv_t *pd_kv_new(const pd_kv_shape_t *shape, pd_err_t *err);
void pd_kv_free(pd_kv_t *kv); /* accepts NULL */

/* Number of blocks that fit in budget_bytes for the given shape (n_blocks
 * ignored; the budget is capped at the 64 GiB pool limit). 0 for a bad shape. */
uint32_t pd_kv_blocks_for_budget(const pd_kv_shape_t *shape, uint64_t budget_bytes);

const pd_kv_shape_t *pd_kv_shape(const pd_kv_t *kv);
size_t pd_kv_block_bytes(const pd_kv_t *kv);
/* Blocks an allocation can get (free + evictable), and blocks in use. */
uint32_t pd_kv_n_free(const pd_kv_t *kv);
uint32_t pd_kv_n_used(const pd_kv_t *kv);

/* Takes a free block, else evicts the least recently released cached one
 * (refcount 1, no longer cached). Returns its id, or -1 when every block is
 * in use. */
int32_t pd_kv_alloc(pd_kv_t *kv);
/* refcount += 1. Ids from outside must be checked with pd_kv_valid_id
 * first: ref/unref of an invalid id or of a free block is a bug (assert in
 * debug builds; release builds log an error and ignore the call, so the pool
 * stays consistent). */
void pd_kv_ref(pd_kv_t *kv, int32_t id);
/* refcount -= 1; the block returns to the free list at 0. */
void pd_kv_unref(pd_kv_t *kv, int32_t id);
uint32_t pd_kv_refcount(const pd_kv_t *kv, int32_t id);
bool pd_kv_valid_id(const pd_kv_t *kv, int32_t id);

/* The block's whole region (pd_kv_block_bytes) */
void *pd_kv_block(pd_kv_t *kv, int32_t id);
/* K (resp. V) of layer in block id: (block_size, n_kv_heads * head_dim)
 * elements of the cache's dtype (float, or uint16_t halves). */
void *pd_kv_k(pd_kv_t *kv, int32_t id, uint32_t layer);
void *pd_kv_v(pd_kv_t *kv, int32_t id, uint32_t layer);
pd_kv_dtype_t pd_kv_dtype(const pd_kv_t *kv);
/* Bytes of one layer's K and V in a block: pd_kv_block_bytes / n_layers. */
size_t pd_kv_layer_bytes(const pd_kv_t *kv);
/* Where layer starts in block id (its K, then its V, then the next
 * layer's): layers [layer, l1) are the (l1 - layer) * pd_kv_layer_bytes
 * bytes from here. layer == n_layers is the block's end. */
void *pd_kv_block_layer(pd_kv_t *kv, int32_t id, uint32_t layer);

/* A sequence's block table. */
typedef struct {
    int32_t *blocks;     /* (n_blocks) block ids */
    uint32_t n_blocks;
    uint32_t cap;
} pd_kv_seq_t;

/* Makes seq cover n_tokens positions, allocating blocks as needed (never
 * shrinks; start from a zeroed pd_kv_seq_t). Returns 0, PD_EFULL when too few
 * blocks are free, PD_ENOMEM/PD_ERANGE when the table cannot grow; on any
 * error nothing is allocated (all or nothing). */
int pd_kv_seq_reserve(pd_kv_t *kv, pd_kv_seq_t *seq, uint32_t n_tokens);
/* Blocks needed to hold n_tokens more positions beyond have_tokens. */
uint32_t pd_kv_blocks_needed(const pd_kv_t *kv, uint32_t have_tokens, uint32_t n_tokens);
/* Unrefs every block, last first (so a released prefix is evicted from its
 * tail), and frees the table. */
void pd_kv_seq_release(pd_kv_t *kv, pd_kv_seq_t *seq);

/* ====== Prefix caching (kvprefix.c) ====== */

/* The hash of one block: tokens (n of them) chained on parent. */
typedef uint64_t (*pd_kv_hash_fn)(uint64_t parent, const int32_t *tokens, uint32_t n);

/* The chain's root for a model and block size (see the top of this file). */
uint64_t pd_kv_hash_root(uint64_t model_identity, uint32_t block_size);
/* The default block hash: XXH3-64 of the tokens (little-endian int32),
 * seeded with parent. */
uint64_t pd_kv_hash_block(uint64_t parent, const int32_t *tokens, uint32_t n);
/* hashes[i] for each full block of tokens[0..n_tokens), i < max_hashes, with
 * the default hash. Returns the number written (n_tokens / block_size,
 * capped). What the router computes to route by cache. */
uint32_t pd_kv_hash_chain(uint64_t root, uint32_t block_size, const int32_t *tokens,
                          uint32_t n_tokens, uint64_t *hashes, uint32_t max_hashes);

/* Counters since pd_kv_prefix_enable (vLLM's prefix_cache_queries and
 * prefix_cache_hits are query_tokens and hit_tokens). */
typedef struct {
    uint64_t queries;        /* pd_kv_prefix_match calls */
    uint64_t query_tokens;   /* tokens they asked about */
    uint64_t hit_tokens;     /* tokens served from cached blocks */
    uint64_t hit_blocks;
    uint64_t stored_blocks;  /* blocks that became cached */
    uint64_t evicted_blocks; /* cached blocks taken back for new data */
} pd_kv_prefix_stats_t;

/* What happened to the set of cached hashes, for a KV-aware router. STORED
 * when a hash becomes cached (no cached block had it), REMOVED when its last
 * cached block is evicted. */
typedef enum { PD_KV_EV_STORED = 1, PD_KV_EV_REMOVED = 2 } pd_kv_ev_kind_t;
typedef struct {
    pd_kv_ev_kind_t kind;
    uint64_t hash;
} pd_kv_event_t;

/* Turns prefix caching on (once, on an empty pool): root from
 * pd_kv_hash_root; hash NULL = pd_kv_hash_block (tests pass one that
 * collides); max_events bounds the event queue (0 = record no events).
 * Returns 0, PD_ESTATE (already on, or blocks in use), PD_ENOMEM. */
int pd_kv_prefix_enable(pd_kv_t *kv, uint64_t root, pd_kv_hash_fn hash, uint32_t max_events,
                        pd_err_t *err);
bool pd_kv_prefix_on(const pd_kv_t *kv);

/* Looks up the longest cached prefix of tokens[0..n_tokens) for a new
 * sequence seq (must hold no blocks): full blocks only, at most
 * (n_tokens - 1) / block_size of them, so the last token is always computed
 * (its logits are wanted) and every block the sequence writes is its own.
 * Refs the matched blocks into seq and returns the tokens they cover (0 when
 * caching is off, or on PD_ENOMEM growing the table: a miss). Counts a
 * query. */
uint32_t pd_kv_prefix_match(pd_kv_t *kv, pd_kv_seq_t *seq, const int32_t *tokens,
                            uint32_t n_tokens);

/* seq's first n_tokens positions now hold the KV of tokens: caches each
 * full block among them that no cached block already stands for (the same
 * tokens after the same parent). Nothing when caching is off. */
void pd_kv_prefix_commit(pd_kv_t *kv, const pd_kv_seq_t *seq, const int32_t *tokens,
                         uint32_t n_tokens);

/* Drops every evictable block from the cache (they become free); blocks in
 * use stay cached. Returns the number dropped. */
uint32_t pd_kv_prefix_evict_all(pd_kv_t *kv);

void pd_kv_prefix_stats(const pd_kv_t *kv, pd_kv_prefix_stats_t *out);
uint32_t pd_kv_prefix_n_cached(const pd_kv_t *kv);    /* blocks cached (in use or not) */
uint32_t pd_kv_prefix_n_evictable(const pd_kv_t *kv); /* cached and not in use */
bool pd_kv_prefix_is_cached(const pd_kv_t *kv, int32_t id);

/* Moves up to cap queued events (oldest first) into out; returns the number
 * moved. When the queue overflowed since the last call, *lost (may be NULL)
 * is set, the queue is emptied and 0 is returned: the caller must resend
 * the whole set (pd_kv_prefix_hashes) instead. */
uint32_t pd_kv_prefix_take_events(pd_kv_t *kv, pd_kv_event_t *out, uint32_t cap, bool *lost);
/* The distinct cached hashes (at most cap, in no particular order); returns
 * how many there are in all (may exceed cap). */
uint32_t pd_kv_prefix_hashes(const pd_kv_t *kv, uint64_t *out, uint32_t cap);

#endif
