/* kvcache.c -- see kvcache.h */
#include "engine/kvcache.h"
#include "engine/kvcache_internal.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "base/fault.h"
#include "base/grow.h"
#include "base/log.h"

#define PD_KV_ALIGN 64                          /* bytes; one cache line, enough for AVX-512 loads */
#define PD_KV_MAX_POOL_BYTES (64ull << 30)      /* bytes; refuse pools above 64 GiB */
#define PD_KV_SEQ_MIN_CAP 8                     /* block-table entries on first growth */


/* ====== Sizes ====== */

size_t pd_kv_dtype_size(pd_kv_dtype_t t)
{
    switch (t) {
    case PD_KV_F32:
        return 4;
    case PD_KV_F16:
        return 2;
    }
    return 0;
}

const char *pd_kv_dtype_name(pd_kv_dtype_t t)
{
    switch (t) {
    case PD_KV_F32:
        return "f32";
    case PD_KV_F16:
        return "f16";
    }
    return "?";
}

static bool mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a)
        return false;
    *out = a * b;
    return true;
}

int pd_kv_dtype_parse(const char *name, pd_kv_dtype_t *out)
{
    if (name != NULL && strcmp(name, "f32") == 0)
        *out = PD_KV_F32;
    else if (name != NULL && strcmp(name, "f16") == 0)
        *out = PD_KV_F16;
    else
        return PD_EINVAL;
    return PD_OK;
}

/* Bytes of one block for shape, or 0 when a dimension is zero, the dtype
 * unknown or the product overflows (also refuses anything that does not fit
 * size_t). Writes the elements per K/V region into *region_elems and the
 * aligned distance between blocks into *stride when not NULL. */
static uint64_t block_bytes_of(const pd_kv_shape_t *s, uint64_t *region_elems, uint64_t *stride)
{
    size_t elem = pd_kv_dtype_size(s->dtype);
    if (s->n_layers == 0 || s->n_kv_heads == 0 || s->head_dim == 0 || s->block_size == 0 ||
        elem == 0)
        return 0;
    uint64_t region, bytes;
    if (!mul_ok(s->block_size, s->n_kv_heads, &region) || !mul_ok(region, s->head_dim, &region))
        return 0;
    if (!mul_ok(region, (uint64_t)s->n_layers * 2u, &bytes) || !mul_ok(bytes, elem, &bytes))
        return 0;
    if (bytes > SIZE_MAX - PD_KV_ALIGN)
        return 0;
    if (region_elems != NULL)
        *region_elems = region;
    if (stride != NULL)
        *stride = (bytes + PD_KV_ALIGN - 1) / PD_KV_ALIGN * PD_KV_ALIGN;
    return bytes;
}

uint32_t pd_kv_blocks_for_budget(const pd_kv_shape_t *shape, uint64_t budget_bytes)
{
    uint64_t stride = 0;
    if (block_bytes_of(shape, NULL, &stride) == 0)
        return 0;
    if (budget_bytes > PD_KV_MAX_POOL_BYTES)
        budget_bytes = PD_KV_MAX_POOL_BYTES;
    uint64_t n = budget_bytes / stride;
    return n > INT32_MAX ? (uint32_t)INT32_MAX : (uint32_t)n;
}

/* ====== Pool ====== */

pd_kv_t *pd_kv_new(const pd_kv_shape_t *shape, pd_err_t *err)
{
    pd_kv_t *kv = NULL;
    if (shape == NULL) {
        pd_err_set(err, PD_EINVAL, "kv: shape is NULL");
        return NULL;
    }
    uint64_t region = 0, stride = 0;
    uint64_t bb = block_bytes_of(shape, &region, &stride);
    if (bb == 0) {
        pd_err_set(err, PD_EINVAL,
                   "kv: bad shape n_layers=%u n_kv_heads=%u head_dim=%u block_size=%u dtype=%d "
                   "(zero dimension, unknown dtype or block size overflows)",
                   shape->n_layers, shape->n_kv_heads, shape->head_dim, shape->block_size,
                   (int)shape->dtype);
        return NULL;
    }
    if (shape->n_blocks == 0 || shape->n_blocks > INT32_MAX) {
        pd_err_set(err, PD_EINVAL, "kv: n_blocks=%u must be in [1, %d]", shape->n_blocks, INT32_MAX);
        return NULL;
    }
    uint64_t pool_bytes;
    if (!mul_ok(stride, shape->n_blocks, &pool_bytes) || pool_bytes > PD_KV_MAX_POOL_BYTES) {
        pd_err_set(err, PD_ERANGE,
                   "kv: pool of n_blocks=%u x block_stride=%llu bytes exceeds the limit of %llu bytes (64 GiB)",
                   shape->n_blocks, (unsigned long long)stride, (unsigned long long)PD_KV_MAX_POOL_BYTES);
        return NULL;
    }
    kv = calloc(1, sizeof *kv);
    if (kv == NULL)
        goto nomem;
    kv->shape = *shape;
    kv->block_bytes = (size_t)bb;
    kv->stride_bytes = (size_t)stride;
    kv->region_elems = (size_t)region;
    kv->region_bytes = (size_t)region * pd_kv_dtype_size(shape->dtype);
    void *p = NULL;
    if (posix_memalign(&p, PD_KV_ALIGN, (size_t)pool_bytes) != 0)
        goto nomem;
    kv->pool = p;
    kv->refcount = calloc(shape->n_blocks, sizeof *kv->refcount);
    kv->free_stack = malloc((size_t)shape->n_blocks * sizeof *kv->free_stack);
    if (kv->refcount == NULL || kv->free_stack == NULL)
        goto nomem;
    /* Top of the stack is block 0, so a fresh pool hands out 0, 1, 2, ... */
    for (uint32_t i = 0; i < shape->n_blocks; i++)
        kv->free_stack[i] = (int32_t)(shape->n_blocks - 1 - i);
    kv->n_stack = shape->n_blocks;
    return kv;
nomem:
    pd_err_set(err, PD_ENOMEM, "kv: cannot allocate pool of n_blocks=%u x block_bytes=%llu",
               shape->n_blocks, (unsigned long long)bb);
    pd_kv_free(kv);
    return NULL;
}

void pd_kv_free(pd_kv_t *kv)
{
    if (kv == NULL)
        return;
    free(kv->pool);
    free(kv->refcount);
    free(kv->free_stack);
    pd_kvp_free(kv->px);
    free(kv);
}

const pd_kv_shape_t *pd_kv_shape(const pd_kv_t *kv) { return &kv->shape; }
size_t pd_kv_block_bytes(const pd_kv_t *kv) { return kv->block_bytes; }
uint32_t pd_kv_n_free(const pd_kv_t *kv)
{
    return kv->n_stack + (kv->px != NULL ? kv->px->n_evictable : 0);
}
uint32_t pd_kv_n_used(const pd_kv_t *kv) { return kv->shape.n_blocks - pd_kv_n_free(kv); }

bool pd_kv_valid_id(const pd_kv_t *kv, int32_t id)
{
    return kv != NULL && id >= 0 && (uint32_t)id < kv->shape.n_blocks;
}

/* ====== Blocks ====== */

int32_t pd_kv_alloc(pd_kv_t *kv)
{
    int32_t id;
    if (kv->n_stack > 0)
        id = kv->free_stack[--kv->n_stack];
    else if (kv->px == NULL || (id = pd_kvp_evict_lru(kv)) < 0)
        return -1;
    assert(kv->refcount[id] == 0);
    kv->refcount[id] = 1;
    return id;
}

void pd_kv_ref(pd_kv_t *kv, int32_t id)
{
    bool ok = pd_kv_valid_id(kv, id) && kv->refcount[id] != 0 && kv->refcount[id] != UINT32_MAX;
    assert(ok && "pd_kv_ref: invalid id, free block or refcount overflow");
    if (!ok) {
        PD_ERROR("kv ref ignored: block=%d refcount=%u (invalid id, free block or overflow)", id,
                 pd_kv_refcount(kv, id));
        return;
    }
    kv->refcount[id]++;
}

void pd_kv_unref(pd_kv_t *kv, int32_t id)
{
    bool ok = pd_kv_valid_id(kv, id) && kv->refcount[id] != 0;
    assert(ok && "pd_kv_unref: invalid id or double free");
    if (!ok) {
        PD_ERROR("kv unref ignored: block=%d (invalid id or double free)", id);
        return;
    }
    if (--kv->refcount[id] != 0)
        return;
    if (kv->px != NULL && kv->px->serial[id] != 0) {
        pd_kvp_released(kv, id); /* stays findable until evicted */
        return;
    }
    assert(kv->n_stack < kv->shape.n_blocks);
    kv->free_stack[kv->n_stack++] = id;
}

uint32_t pd_kv_refcount(const pd_kv_t *kv, int32_t id)
{
    return pd_kv_valid_id(kv, id) ? kv->refcount[id] : 0;
}

void *pd_kv_block(pd_kv_t *kv, int32_t id)
{
    assert(pd_kv_valid_id(kv, id));
    if (!pd_kv_valid_id(kv, id))
        return NULL;
    return kv->pool + (size_t)id * kv->stride_bytes;
}

static void *region(pd_kv_t *kv, int32_t id, uint32_t layer, uint32_t is_v)
{
    assert(pd_kv_valid_id(kv, id) && layer < kv->shape.n_layers);
    if (!pd_kv_valid_id(kv, id) || layer >= kv->shape.n_layers)
        return NULL;
    unsigned char *b = kv->pool + (size_t)id * kv->stride_bytes;
    return b + ((size_t)layer * 2u + is_v) * kv->region_bytes;
}

void *pd_kv_k(pd_kv_t *kv, int32_t id, uint32_t layer) { return region(kv, id, layer, 0); }
void *pd_kv_v(pd_kv_t *kv, int32_t id, uint32_t layer) { return region(kv, id, layer, 1); }
pd_kv_dtype_t pd_kv_dtype(const pd_kv_t *kv) { return kv->shape.dtype; }
size_t pd_kv_layer_bytes(const pd_kv_t *kv) { return 2u * kv->region_bytes; }

void *pd_kv_block_layer(pd_kv_t *kv, int32_t id, uint32_t layer)
{
    assert(pd_kv_valid_id(kv, id) && layer <= kv->shape.n_layers);
    if (!pd_kv_valid_id(kv, id) || layer > kv->shape.n_layers)
        return NULL;
    return kv->pool + (size_t)id * kv->stride_bytes + (size_t)layer * 2u * kv->region_bytes;
}

/* ====== Sequences ====== */

static uint64_t blocks_for_tokens(const pd_kv_t *kv, uint64_t n_tokens)
{
    return (n_tokens + kv->shape.block_size - 1) / kv->shape.block_size;
}

uint32_t pd_kv_blocks_needed(const pd_kv_t *kv, uint32_t have_tokens, uint32_t n_tokens)
{
    uint64_t have = blocks_for_tokens(kv, have_tokens);
    uint64_t want = blocks_for_tokens(kv, (uint64_t)have_tokens + n_tokens);
    return (uint32_t)(want - have); /* <= n_tokens, so it fits */
}

int pd_kv_seq_reserve(pd_kv_t *kv, pd_kv_seq_t *seq, uint32_t n_tokens)
{
    uint64_t want = blocks_for_tokens(kv, n_tokens);
    if (want <= seq->n_blocks)
        return PD_OK;
    uint64_t need = want - seq->n_blocks;
    if (need > pd_kv_n_free(kv))
        return PD_EFULL; /* checked up front: nothing was allocated */
    if (want > seq->cap) {
        if (want > UINT32_MAX)
            return PD_ERANGE;
        size_t cap = seq->cap;
        if (pd_grow((void **)&seq->blocks, &cap, (size_t)want, sizeof *seq->blocks,
                    PD_KV_SEQ_MIN_CAP) != 0)
            return PD_ENOMEM;
        seq->cap = cap > UINT32_MAX ? UINT32_MAX : (uint32_t)cap;
    }
    while (seq->n_blocks < want) {
        int32_t id = pd_kv_alloc(kv);
        assert(id >= 0); /* n_free was checked above */
        seq->blocks[seq->n_blocks++] = id;
    }
    return PD_OK;
}

void pd_kv_seq_release(pd_kv_t *kv, pd_kv_seq_t *seq)
{
    if (seq == NULL)
        return;
    for (uint32_t i = seq->n_blocks; i-- > 0;)
        pd_kv_unref(kv, seq->blocks[i]);
    free(seq->blocks);
    seq->blocks = NULL;
    seq->n_blocks = 0;
    seq->cap = 0;
}
