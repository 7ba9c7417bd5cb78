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
uint32_t pd_kv_n_free(const pd_kv_t *kv);
uint32_t pd_kv_n_used(const pd_kv_t *kv);

/* Takes a free block (refcount 1). Returns its id, or -1 when none is free. */
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
/* Unrefs every block and frees the table. */
void pd_kv_seq_release(pd_kv_t *kv, pd_kv_seq_t *seq);

#endif
