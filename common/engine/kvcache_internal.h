/* kvcache_internal.h -- the pool's state, shared by kvcache.c (blocks,
 * refcounts, sequences) and kvprefix.c (the prefix cache). Not for other
 * modules: they use kvcache.h. */
#ifndef PD_KVCACHE_INTERNAL_H
#define PD_KVCACHE_INTERNAL_H

#include "engine/kvcache.h"

/* The prefix cache's state; every array is (n_blocks) unless said. */
typedef struct {
    uint64_t root;            /* chain root (pd_kv_hash_root) */
    pd_kv_hash_fn hash_fn;
    uint64_t *hash;           /* chain hash of a cached block */
    uint64_t *serial;         /* 0 = not cached; else unique per insertion */
    uint64_t *parent_serial;  /* serial of the cached block before it (0: first block) */
    int32_t *tokens;          /* (n_blocks, block_size) a cached block's tokens */
    int32_t *lru_prev, *lru_next; /* evictable list, -1 ends; head = least recent */
    int32_t lru_head, lru_tail;
    int32_t *chain_next;      /* next block in the same hash bucket, -1 ends */
    int32_t *buckets;         /* (n_buckets) first block of each bucket, -1 = empty */
    uint32_t bucket_mask;     /* n_buckets - 1 (a power of two) */
    uint64_t next_serial;
    uint32_t n_cached, n_evictable;
    pd_kv_event_t *events;    /* (max_events) ring, oldest at ev_head */
    uint32_t max_events, ev_head, n_events;
    bool ev_lost;             /* events dropped since the last take */
    pd_kv_prefix_stats_t st;
} pd_kv_prefix_t;

struct pd_kv {
    pd_kv_shape_t shape;
    size_t block_bytes;     /* n_layers * 2 * region_elems * elem_bytes */
    size_t stride_bytes;    /* block_bytes rounded up to PD_KV_ALIGN: block b starts at b * stride */
    size_t region_elems;    /* block_size * n_kv_heads * head_dim: one K or V region */
    size_t region_bytes;    /* region_elems * elem_bytes */
    unsigned char *pool;    /* (n_blocks, stride_bytes), PD_KV_ALIGN-aligned */
    uint32_t *refcount;     /* (n_blocks); 0 = free or evictable */
    int32_t *free_stack;    /* (n_blocks); free ids, top at free_stack[n_stack - 1] */
    uint32_t n_stack;       /* free (uncached) blocks */
    pd_kv_prefix_t *px;     /* NULL = prefix caching off */
};

/* kvprefix.c, for kvcache.c: */
/* Block id's refcount just fell to 0 and it is cached: onto the LRU tail. */
void pd_kvp_released(pd_kv_t *kv, int32_t id);
/* Block id (refcount 0, evictable) is being taken back in use by a hit. */
void pd_kvp_revived(pd_kv_t *kv, int32_t id);
/* Evicts the least recently released cached block and returns its id
 * (refcount 0, uncached, on no list), or -1 when none is evictable. */
int32_t pd_kvp_evict_lru(pd_kv_t *kv);
void pd_kvp_free(pd_kv_prefix_t *px);

#endif
