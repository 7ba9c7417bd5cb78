/* kvprefix.c -- the prefix cache of the paged KV pool (see kvcache.h).
 *
 * A cached block is found by its chain hash through a chained hash table
 * (buckets -> chain_next), and is accepted only when its stored tokens and
 * its parent's serial match what the lookup has walked so far. The LRU list
 * holds the cached blocks no sequence uses (refcount 0); pd_kv_alloc takes
 * its head when the free stack is empty.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "base/fault.h"
#include "engine/kvcache.h"
#include "engine/kvcache_internal.h"

#define PD_KVP_ROOT_TAG "pdserve-kv-prefix-v1" /* versions the chain's definition */
#define PD_KVP_MAX_BLOCK 1024                  /* tokens; kv.block_size's upper bound */

/* ====== Hashing ====== */

uint64_t pd_kv_hash_root(uint64_t model_identity, uint32_t block_size)
{
    unsigned char buf[sizeof PD_KVP_ROOT_TAG + 12];
    memcpy(buf, PD_KVP_ROOT_TAG, sizeof PD_KVP_ROOT_TAG);
    for (int i = 0; i < 8; i++)
        buf[sizeof PD_KVP_ROOT_TAG + i] = (unsigned char)(model_identity >> (8 * i));
    for (int i = 0; i < 4; i++)
        buf[sizeof PD_KVP_ROOT_TAG + 8 + i] = (unsigned char)(block_size >> (8 * i));
    return XXH3_64bits(buf, sizeof buf);
}

uint64_t pd_kv_hash_block(uint64_t parent, const int32_t *tokens, uint32_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return XXH3_64bits_withSeed(tokens, (size_t)n * sizeof *tokens, parent);
#else
    XXH3_state_t st;
    XXH3_64bits_reset_withSeed(&st, parent);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)tokens[i];
        unsigned char b[4] = { v, v >> 8, v >> 16, v >> 24 };
        XXH3_64bits_update(&st, b, 4);
    }
    return XXH3_64bits_digest(&st);
#endif
}

uint32_t pd_kv_hash_chain(uint64_t root, uint32_t block_size, const int32_t *tokens,
                          uint32_t n_tokens, uint64_t *hashes, uint32_t max_hashes)
{
    if (block_size == 0)
        return 0;
    uint32_t n = n_tokens / block_size;
    if (n > max_hashes)
        n = max_hashes;
    uint64_t h = root;
    for (uint32_t i = 0; i < n; i++)
        hashes[i] = h = pd_kv_hash_block(h, tokens + (size_t)i * block_size, block_size);
    return n;
}

/* ====== Setup ====== */

void pd_kvp_free(pd_kv_prefix_t *px)
{
    if (px == NULL)
        return;
    free(px->hash);
    free(px->serial);
    free(px->parent_serial);
    free(px->tokens);
    free(px->lru_prev);
    free(px->lru_next);
    free(px->chain_next);
    free(px->buckets);
    free(px->events);
    free(px);
}

int pd_kv_prefix_enable(pd_kv_t *kv, uint64_t root, pd_kv_hash_fn hash, uint32_t max_events,
                        pd_err_t *err)
{
    const uint32_t nb = kv->shape.n_blocks, bs = kv->shape.block_size;
    if (kv->px != NULL || pd_kv_n_used(kv) != 0)
        return pd_err_set(err, PD_ESTATE, "kv prefix cache: %s",
                          kv->px ? "already enabled" : "pool has blocks in use");
    if (bs > PD_KVP_MAX_BLOCK)
        return pd_err_set(err, PD_EINVAL, "kv prefix cache: block_size=%u over %d", bs,
                          PD_KVP_MAX_BLOCK);
    uint32_t n_buckets = 16;
    while (n_buckets < nb && n_buckets < (1u << 30))
        n_buckets <<= 1;
    pd_kv_prefix_t *px = calloc(1, sizeof *px);
    if (px == NULL)
        goto nomem;
    px->root = root;
    px->hash_fn = hash != NULL ? hash : pd_kv_hash_block;
    px->hash = calloc(nb, sizeof *px->hash);
    px->serial = calloc(nb, sizeof *px->serial);
    px->parent_serial = calloc(nb, sizeof *px->parent_serial);
    px->tokens = calloc((size_t)nb * bs, sizeof *px->tokens);
    px->lru_prev = malloc((size_t)nb * sizeof *px->lru_prev);
    px->lru_next = malloc((size_t)nb * sizeof *px->lru_next);
    px->chain_next = malloc((size_t)nb * sizeof *px->chain_next);
    px->buckets = malloc((size_t)n_buckets * sizeof *px->buckets);
    px->events = max_events ? calloc(max_events, sizeof *px->events) : NULL;
    if (!px->hash || !px->serial || !px->parent_serial || !px->tokens || !px->lru_prev ||
        !px->lru_next || !px->chain_next || !px->buckets || (max_events && !px->events))
        goto nomem;
    for (uint32_t i = 0; i < nb; i++)
        px->lru_prev[i] = px->lru_next[i] = px->chain_next[i] = -1;
    for (uint32_t i = 0; i < n_buckets; i++)
        px->buckets[i] = -1;
    px->bucket_mask = n_buckets - 1;
    px->lru_head = px->lru_tail = -1;
    px->next_serial = 1;
    px->max_events = max_events;
    kv->px = px;
    return PD_OK;
nomem:
    pd_kvp_free(px);
    return pd_err_set(err, PD_ENOMEM, "kv prefix cache: cannot allocate its tables for %u blocks",
                      nb);
}

bool pd_kv_prefix_on(const pd_kv_t *kv) { return kv->px != NULL; }

/* ====== LRU list (evictable blocks) ====== */

static void lru_unlink(pd_kv_prefix_t *px, int32_t id)
{
    int32_t p = px->lru_prev[id], n = px->lru_next[id];
    if (p >= 0)
        px->lru_next[p] = n;
    else
        px->lru_head = n;
    if (n >= 0)
        px->lru_prev[n] = p;
    else
        px->lru_tail = p;
    px->lru_prev[id] = px->lru_next[id] = -1;
    px->n_evictable--;
}

void pd_kvp_released(pd_kv_t *kv, int32_t id)
{
    pd_kv_prefix_t *px = kv->px;
    px->lru_prev[id] = px->lru_tail;
    px->lru_next[id] = -1;
    if (px->lru_tail >= 0)
        px->lru_next[px->lru_tail] = id;
    else
        px->lru_head = id;
    px->lru_tail = id;
    px->n_evictable++;
}

void pd_kvp_revived(pd_kv_t *kv, int32_t id) { lru_unlink(kv->px, id); }

/* ====== Index and events ====== */

static void push_event(pd_kv_prefix_t *px, pd_kv_ev_kind_t kind, uint64_t hash)
{
    if (px->max_events == 0)
        return;
    if (px->n_events == px->max_events) {
        px->ev_lost = true; /* the consumer resends the whole set */
        return;
    }
    px->events[(px->ev_head + px->n_events++) % px->max_events] = (pd_kv_event_t){ kind, hash };
}

/* Does any cached block other than skip carry hash h? */
static bool hash_cached(const pd_kv_prefix_t *px, uint64_t h, int32_t skip)
{
    for (int32_t b = px->buckets[h & px->bucket_mask]; b >= 0; b = px->chain_next[b])
        if (b != skip && px->hash[b] == h)
            return true;
    return false;
}

/* The cached block that stands for tokens (block_size of them) after the
 * block with serial parent, with hash h; -1 when none. */
static int32_t find(const pd_kv_t *kv, uint64_t h, uint64_t parent, const int32_t *tokens)
{
    const pd_kv_prefix_t *px = kv->px;
    const uint32_t bs = kv->shape.block_size;
    for (int32_t b = px->buckets[h & px->bucket_mask]; b >= 0; b = px->chain_next[b])
        if (px->hash[b] == h && px->parent_serial[b] == parent &&
            memcmp(px->tokens + (size_t)b * bs, tokens, bs * sizeof *tokens) == 0)
            return b;
    return -1;
}

static void insert(pd_kv_t *kv, int32_t id, uint64_t h, uint64_t parent, const int32_t *tokens)
{
    pd_kv_prefix_t *px = kv->px;
    const uint32_t bs = kv->shape.block_size;
    if (!hash_cached(px, h, -1))
        push_event(px, PD_KV_EV_STORED, h);
    px->hash[id] = h;
    px->serial[id] = px->next_serial++;
    px->parent_serial[id] = parent;
    memcpy(px->tokens + (size_t)id * bs, tokens, bs * sizeof *tokens);
    uint32_t k = (uint32_t)(h & px->bucket_mask);
    px->chain_next[id] = px->buckets[k];
    px->buckets[k] = id;
    px->n_cached++;
    px->st.stored_blocks++;
}

/* Takes id out of the index (it is no longer cached). */
static void uncache(pd_kv_t *kv, int32_t id)
{
    pd_kv_prefix_t *px = kv->px;
    uint64_t h = px->hash[id];
    int32_t *link = &px->buckets[h & px->bucket_mask];
    while (*link != id) {
        assert(*link >= 0);
        link = &px->chain_next[*link];
    }
    *link = px->chain_next[id];
    px->chain_next[id] = -1;
    px->serial[id] = 0;
    px->n_cached--;
    if (!hash_cached(px, h, -1))
        push_event(px, PD_KV_EV_REMOVED, h);
}

int32_t pd_kvp_evict_lru(pd_kv_t *kv)
{
    pd_kv_prefix_t *px = kv->px;
    int32_t id = px->lru_head;
    if (id < 0)
        return -1;
    assert(kv->refcount[id] == 0 && px->serial[id] != 0);
    lru_unlink(px, id);
    uncache(kv, id);
    px->st.evicted_blocks++;
    return id;
}

/* ====== Lookup and commit ====== */

static int seq_grow(pd_kv_seq_t *seq, uint32_t want)
{
    if (want <= seq->cap)
        return PD_OK;
    uint32_t cap = want < 8 ? 8 : want;
    int32_t *t = pd_realloc(seq->blocks, (size_t)cap * sizeof *t);
    if (t == NULL)
        return PD_ENOMEM;
    seq->blocks = t;
    seq->cap = cap;
    return PD_OK;
}

uint32_t pd_kv_prefix_match(pd_kv_t *kv, pd_kv_seq_t *seq, const int32_t *tokens,
                            uint32_t n_tokens)
{
    pd_kv_prefix_t *px = kv->px;
    const uint32_t bs = kv->shape.block_size;
    if (px == NULL || n_tokens == 0)
        return 0;
    assert(seq->n_blocks == 0);
    px->st.queries++;
    px->st.query_tokens += n_tokens;
    uint32_t max_blocks = (n_tokens - 1) / bs;
    if (max_blocks == 0 || seq->n_blocks != 0 || seq_grow(seq, max_blocks) != 0)
        return 0;
    uint64_t h = px->root, parent = 0;
    for (uint32_t i = 0; i < max_blocks; i++) {
        const int32_t *blk = tokens + (size_t)i * bs;
        h = px->hash_fn(h, blk, bs);
        int32_t id = find(kv, h, parent, blk);
        if (id < 0)
            break;
        if (kv->refcount[id]++ == 0)
            pd_kvp_revived(kv, id);
        seq->blocks[seq->n_blocks++] = id;
        parent = px->serial[id];
    }
    px->st.hit_blocks += seq->n_blocks;
    px->st.hit_tokens += (uint64_t)seq->n_blocks * bs;
    return seq->n_blocks * bs;
}

void pd_kv_prefix_commit(pd_kv_t *kv, const pd_kv_seq_t *seq, const int32_t *tokens,
                         uint32_t n_tokens)
{
    pd_kv_prefix_t *px = kv->px;
    const uint32_t bs = kv->shape.block_size;
    if (px == NULL)
        return;
    uint32_t n = n_tokens / bs;
    if (n > seq->n_blocks)
        n = seq->n_blocks;
    uint64_t h = px->root, parent = 0;
    for (uint32_t i = 0; i < n; i++) {
        const int32_t *blk = tokens + (size_t)i * bs;
        int32_t id = seq->blocks[i];
        h = px->hash_fn(h, blk, bs);
        if (px->serial[id] != 0) {
            /* Cached already (a hit, or committed before): it must be this
             * very prefix, or the caller wrote into a shared block. */
            assert(px->hash[id] == h && px->parent_serial[id] == parent);
            parent = px->serial[id];
            continue;
        }
        int32_t same = find(kv, h, parent, blk);
        if (same >= 0) {
            /* Another sequence cached this prefix first: ours stays private
             * and the chain goes on from theirs (same tokens, same KV). */
            parent = px->serial[same];
            continue;
        }
        insert(kv, id, h, parent, blk);
        parent = px->serial[id];
    }
}

uint32_t pd_kv_prefix_evict_all(pd_kv_t *kv)
{
    uint32_t n = 0;
    if (kv->px == NULL)
        return 0;
    for (int32_t id; (id = pd_kvp_evict_lru(kv)) >= 0; n++)
        kv->free_stack[kv->n_stack++] = id;
    return n;
}

/* ====== Introspection ====== */

void pd_kv_prefix_stats(const pd_kv_t *kv, pd_kv_prefix_stats_t *out)
{
    if (kv->px == NULL)
        memset(out, 0, sizeof *out);
    else
        *out = kv->px->st;
}

uint32_t pd_kv_prefix_n_cached(const pd_kv_t *kv) { return kv->px ? kv->px->n_cached : 0; }
uint32_t pd_kv_prefix_n_evictable(const pd_kv_t *kv) { return kv->px ? kv->px->n_evictable : 0; }

bool pd_kv_prefix_is_cached(const pd_kv_t *kv, int32_t id)
{
    return kv->px != NULL && pd_kv_valid_id(kv, id) && kv->px->serial[id] != 0;
}

uint32_t pd_kv_prefix_take_events(pd_kv_t *kv, pd_kv_event_t *out, uint32_t cap, bool *lost)
{
    pd_kv_prefix_t *px = kv->px;
    if (lost != NULL)
        *lost = px != NULL && px->ev_lost;
    if (px == NULL)
        return 0;
    if (px->ev_lost) {
        /* What is queued is older than the gap: the caller's snapshot
         * replaces all of it. */
        px->ev_lost = false;
        px->ev_head = px->n_events = 0;
        return 0;
    }
    uint32_t n = px->n_events < cap ? px->n_events : cap;
    for (uint32_t i = 0; i < n; i++)
        out[i] = px->events[(px->ev_head + i) % px->max_events];
    if (n > 0) {
        px->ev_head = (px->ev_head + n) % px->max_events;
        px->n_events -= n;
    }
    return n;
}

uint32_t pd_kv_prefix_hashes(const pd_kv_t *kv, uint64_t *out, uint32_t cap)
{
    const pd_kv_prefix_t *px = kv->px;
    uint32_t n = 0;
    if (px == NULL)
        return 0;
    for (uint32_t k = 0; k <= px->bucket_mask; k++)
        for (int32_t b = px->buckets[k]; b >= 0; b = px->chain_next[b]) {
            bool dup = false; /* count a hash once: its first block in the bucket */
            for (int32_t c = px->buckets[k]; c != b && !dup; c = px->chain_next[c])
                dup = px->hash[c] == px->hash[b];
            if (dup)
                continue;
            if (n < cap)
                out[n] = px->hash[b];
            n++;
        }
    return n;
}
