/* kvindex.c -- see kvindex.h.
 *
 * An open-addressing table (linear probing, deletion by backward shift) of
 * (hash, worker mask) entries; an entry whose mask becomes 0 is removed.
 */
#include "kvindex.h"

#include <stdlib.h>
#include <string.h>

#include "base/fault.h"

#define RT_KVI_MIN_CAP 1024 /* entries of a new table (a power of two) */

typedef struct {
    uint64_t hash;
    uint64_t mask; /* bit w: worker slot w holds it; 0 = empty slot */
} kvi_entry_t;

typedef struct {
    bool tracked;      /* registered, with an index of its own */
    bool synced;       /* its deltas apply (its last snapshot and every delta since arrived) */
    uint64_t next_seq; /* the delta number expected next */
    uint32_t n;        /* entries holding its bit */
    uint32_t max;      /* most it may hold (its pool's blocks) */
} kvi_worker_t;

struct rt_kvi {
    kvi_entry_t *tab;  /* (cap) */
    size_t cap, n;     /* cap a power of two; n entries used */
    kvi_worker_t w[RT_KVI_MAX_WORKERS];
    uint64_t refused;
};

/* ====== Table ====== */

static size_t slot_of(const rt_kvi_t *x, uint64_t h)
{
    h ^= h >> 33; /* the hashes are XXH3, but tests force small ones */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (size_t)h & (x->cap - 1);
}

static kvi_entry_t *lookup(const rt_kvi_t *x, uint64_t h)
{
    for (size_t i = slot_of(x, h);; i = (i + 1) & (x->cap - 1)) {
        if (x->tab[i].mask == 0)
            return NULL;
        if (x->tab[i].hash == h)
            return &x->tab[i];
    }
}

static void put(rt_kvi_t *x, uint64_t h, uint64_t mask)
{
    size_t i = slot_of(x, h);
    while (x->tab[i].mask != 0)
        i = (i + 1) & (x->cap - 1);
    x->tab[i] = (kvi_entry_t){ h, mask };
    x->n++;
}

/* Moves the table to cap entries. */
static int rebuild(rt_kvi_t *x, size_t cap)
{
    kvi_entry_t *old = x->tab;
    size_t old_cap = x->cap;
    kvi_entry_t *t = pd_calloc(cap, sizeof *t);
    if (t == NULL)
        return -1;
    x->tab = t;
    x->cap = cap;
    x->n = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].mask != 0)
            put(x, old[i].hash, old[i].mask);
    free(old);
    return 0;
}

/* Removes the entry at e, shifting back the ones its slot displaced. */
static void erase(rt_kvi_t *x, kvi_entry_t *e)
{
    size_t i = (size_t)(e - x->tab), j = i;
    x->tab[i].mask = 0;
    x->n--;
    for (;;) {
        j = (j + 1) & (x->cap - 1);
        if (x->tab[j].mask == 0)
            return;
        size_t k = slot_of(x, x->tab[j].hash);
        /* Entry j may move to hole i when its home k is not in (i, j]. */
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        x->tab[i] = x->tab[j];
        x->tab[j].mask = 0;
        i = j;
    }
}

/* ====== Workers ====== */

rt_kvi_t *rt_kvi_new(void)
{
    rt_kvi_t *x = pd_calloc(1, sizeof *x);
    if (x == NULL)
        return NULL;
    x->tab = pd_calloc(RT_KVI_MIN_CAP, sizeof *x->tab);
    if (x->tab == NULL) {
        free(x);
        return NULL;
    }
    x->cap = RT_KVI_MIN_CAP;
    return x;
}

void rt_kvi_free(rt_kvi_t *x)
{
    if (x == NULL)
        return;
    free(x->tab);
    free(x);
}

static bool valid(const rt_kvi_t *x, int w) { return x != NULL && w >= 0 && w < RT_KVI_MAX_WORKERS; }

/* Clears w's bit everywhere, in place (no allocation). An entry left with
 * no bit is erased, which may shift a later entry into slot i: look at
 * slot i again. Entries shifted from the table's start to its end were
 * visited already. */
static void clear_worker(rt_kvi_t *x, int w)
{
    uint64_t bit = 1ull << w;
    for (size_t i = 0; i < x->cap && x->w[w].n > 0;) {
        kvi_entry_t *e = &x->tab[i];
        if (e->mask == 0 || !(e->mask & bit)) {
            i++;
            continue;
        }
        x->w[w].n--;
        if (e->mask != bit) {
            e->mask &= ~bit;
            i++;
            continue;
        }
        erase(x, e);
    }
    x->w[w].n = 0;
}

void rt_kvi_reset_worker(rt_kvi_t *x, int w, uint32_t max_hashes)
{
    if (!valid(x, w))
        return;
    clear_worker(x, w);
    x->w[w] = (kvi_worker_t){ .tracked = true, .synced = false, .next_seq = 1, .max = max_hashes };
}

void rt_kvi_drop_worker(rt_kvi_t *x, int w)
{
    if (!valid(x, w))
        return;
    clear_worker(x, w);
    memset(&x->w[w], 0, sizeof x->w[w]);
}

/* ====== Events ====== */

static int store(rt_kvi_t *x, int w, uint64_t h)
{
    uint64_t bit = 1ull << w;
    kvi_entry_t *e = lookup(x, h);
    if (e != NULL && (e->mask & bit))
        return 0;
    if (x->w[w].n >= x->w[w].max) {
        x->refused++;
        return 0;
    }
    if (e != NULL) {
        e->mask |= bit;
    } else {
        if ((x->n + 1) * 2 > x->cap && rebuild(x, x->cap * 2) != 0)
            return -1;
        put(x, h, bit);
    }
    x->w[w].n++;
    return 0;
}

static void remove_hash(rt_kvi_t *x, int w, uint64_t h)
{
    uint64_t bit = 1ull << w;
    kvi_entry_t *e = lookup(x, h);
    if (e == NULL || !(e->mask & bit))
        return;
    e->mask &= ~bit;
    x->w[w].n--;
    if (e->mask == 0)
        erase(x, e);
}

rt_kvi_result_t rt_kvi_begin(rt_kvi_t *x, int w, uint64_t seq, bool snapshot)
{
    if (!valid(x, w) || !x->w[w].tracked)
        return RT_KVI_WAITING;
    kvi_worker_t *k = &x->w[w];
    if (snapshot) {
        clear_worker(x, w);
        k->synced = true;
    } else if (!k->synced) {
        return RT_KVI_WAITING;
    } else if (seq != k->next_seq) {
        k->synced = false;
        return RT_KVI_GAP;
    }
    k->next_seq = seq + 1;
    return RT_KVI_APPLIED;
}

rt_kvi_result_t rt_kvi_event(rt_kvi_t *x, int w, uint64_t hash, bool removed)
{
    if (!valid(x, w) || !x->w[w].synced)
        return RT_KVI_WAITING;
    if (removed) {
        remove_hash(x, w, hash);
    } else if (store(x, w, hash) != 0) {
        x->w[w].synced = false; /* lost an event: a snapshot repairs it */
        return RT_KVI_GAP;
    }
    return RT_KVI_APPLIED;
}

rt_kvi_result_t rt_kvi_apply(rt_kvi_t *x, int w, uint64_t seq, bool snapshot,
                             const uint64_t *hash, const bool *removed, size_t n)
{
    rt_kvi_result_t r = rt_kvi_begin(x, w, seq, snapshot);
    for (size_t i = 0; i < n && r == RT_KVI_APPLIED; i++)
        r = rt_kvi_event(x, w, hash[i], removed[i]);
    return r;
}

rt_kvi_result_t rt_kvi_check_seq(rt_kvi_t *x, int w, uint64_t last_seq)
{
    if (!valid(x, w) || !x->w[w].tracked || !x->w[w].synced)
        return RT_KVI_WAITING;
    if (last_seq + 1 == x->w[w].next_seq)
        return RT_KVI_APPLIED;
    x->w[w].synced = false;
    return RT_KVI_GAP;
}

/* ====== Queries ====== */

void rt_kvi_match(const rt_kvi_t *x, const uint64_t *chain, uint32_t n_chain, uint32_t *out)
{
    memset(out, 0, RT_KVI_MAX_WORKERS * sizeof *out);
    uint64_t alive = 0;
    for (int w = 0; w < RT_KVI_MAX_WORKERS; w++)
        if (x->w[w].tracked)
            alive |= 1ull << w;
    for (uint32_t i = 0; i < n_chain && alive != 0; i++) {
        const kvi_entry_t *e = lookup(x, chain[i]);
        alive &= e != NULL ? e->mask : 0;
        for (uint64_t m = alive; m != 0; m &= m - 1)
            out[__builtin_ctzll(m)] = i + 1;
    }
}

bool rt_kvi_synced(const rt_kvi_t *x, int w) { return valid(x, w) && x->w[w].synced; }
uint32_t rt_kvi_worker_hashes(const rt_kvi_t *x, int w) { return valid(x, w) ? x->w[w].n : 0; }
size_t rt_kvi_size(const rt_kvi_t *x) { return x->n; }
uint64_t rt_kvi_refused(const rt_kvi_t *x) { return x->refused; }

bool rt_kvi_holds(const rt_kvi_t *x, int w, uint64_t hash)
{
    if (!valid(x, w))
        return false;
    const kvi_entry_t *e = lookup(x, hash);
    return e != NULL && (e->mask & (1ull << w)) != 0;
}
