/* plan_sim.c -- pd-plan's simulation (see plan_sim.h; the rules are at the
 * top of client/pd-plan.c). */
#include "plan_sim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ====== Costs ====== */

/* One prefill pass of `tokens` tokens whose attention work is `att`: a
 * chunk of c tokens at offset o in its prompt counts c * (2o + c), so a
 * whole prompt of T tokens counts T^2 and a prompt's chunks add up to T^2
 * however it is cut. For n whole prompts of T tokens this is the fitted
 * a + b*n*T + c*n*T^2. */
double plan_prefill_ms(const plan_model_t *m, double tokens, double att)
{
    double v = m->pre[0] + m->pre[1] * tokens + m->pre[2] * att;
    return v > m->min_pre_ms * 0.5 ? v : m->min_pre_ms * 0.5;
}

double plan_decode_ms(const plan_model_t *m, double batch, double ctx)
{
    double v = m->dec[0] + m->dec[1] * batch + m->dec[2] * batch * ctx;
    return v > m->min_dec_ms * 0.5 ? v : m->min_dec_ms * 0.5;
}

double plan_kv_ms(const plan_model_t *m, double tokens)
{
    double v = m->kv[0] + m->kv[1] * tokens;
    return v > 0 ? v : 0;
}

/* ====== Simulation ====== */

enum { EV_ARRIVAL, EV_PREFILL_DONE, EV_KV_DONE, EV_STEP_DONE };

typedef struct {
    double t;
    uint64_t seq; /* ties: first scheduled first */
    int type;
    uint32_t a;
} event_t;

typedef struct {
    event_t *v;
    size_t n, cap;
    uint64_t seq;
} heap_t;

static bool ev_less(const event_t *x, const event_t *y)
{
    return x->t < y->t || (x->t == y->t && x->seq < y->seq);
}

static int heap_push(heap_t *h, double t, int type, uint32_t a)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 1024;
        event_t *p = realloc(h->v, cap * sizeof *p);
        if (p == NULL)
            return -1;
        h->v = p;
        h->cap = cap;
    }
    size_t i = h->n++;
    h->v[i] = (event_t){ t, h->seq++, type, a };
    while (i > 0 && ev_less(&h->v[i], &h->v[(i - 1) / 2])) {
        event_t tmp = h->v[i];
        h->v[i] = h->v[(i - 1) / 2];
        h->v[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
    return 0;
}

static event_t heap_pop(heap_t *h)
{
    event_t top = h->v[0];
    h->v[0] = h->v[--h->n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        if (l < h->n && ev_less(&h->v[l], &h->v[s]))
            s = l;
        if (r < h->n && ev_less(&h->v[r], &h->v[s]))
            s = r;
        if (s == i)
            break;
        event_t tmp = h->v[i];
        h->v[i] = h->v[s];
        h->v[s] = tmp;
        i = s;
    }
    return top;
}

typedef struct {
    double arrive, prefill_end, first, finish;
    uint32_t pdone;  /* prompt tokens prefilled so far (chunked prefill) */
    uint32_t gen;    /* tokens made by decode steps */
    uint32_t dw;     /* decode worker */
    uint32_t prefix; /* its shared prefix (prefix_len > 0) */
    uint32_t cached; /* tokens found cached when its prefill started */
    uint32_t charged; /* tokens charged to its prefill worker's queue */
    bool started;    /* its prefill started (the cache was looked at) */
} sreq_t;

/* A FIFO of request indexes (capacity = all requests, so it never fills). */
typedef struct {
    uint32_t *v;
    size_t head, n, cap;
} fifo_t;

static void fifo_push(fifo_t *f, uint32_t x) { f->v[(f->head + f->n++) % f->cap] = x; }
static uint32_t fifo_pop(fifo_t *f)
{
    uint32_t x = f->v[f->head];
    f->head = (f->head + 1) % f->cap;
    f->n--;
    return x;
}

typedef struct {
    fifo_t q;
    uint32_t *batch; /* (n_batch) prompts in the running pass, head of q first */
    uint32_t *chunk; /* (n_batch) their tokens in this pass */
    size_t n_batch;
    uint64_t load_tokens; /* queued + running prompt tokens still to compute */
    bool busy;
    uint32_t *lru;   /* (n_lru) prefixes cached, most recent first */
    uint32_t n_lru, cap_lru;
} pworker_t;

typedef struct {
    fifo_t wait;
    uint32_t *run; /* (n_run) running sequences */
    size_t n_run;
    int64_t free_blocks, promised; /* promised: blocks of requests on their way */
    bool busy;
} dworker_t;

typedef struct {
    const plan_load_t *o;
    const plan_model_t *m;
    uint32_t P, D;
    sreq_t *r;
    pworker_t *pw;
    dworker_t *dw;
    heap_t h;
    uint32_t blocks_per_req;
    uint32_t busy_p, busy_d; /* workers in a pass / a step now */
    uint32_t prefix_hit;     /* tokens a cached prefix saves (whole blocks, < prompt) */
    uint32_t rr;             /* round_robin: the next worker */
    uint64_t hit_tokens, prompt_tokens;
} sim_t;

/* Prompt tokens of a request, BOS included. */
static double o_len(const sim_t *s) { return (double)s->o->input_len + 1; }

/* ====== Prefix cache (a prefill worker's LRU of prefixes) ====== */

static int lru_find(const pworker_t *p, uint32_t prefix)
{
    for (uint32_t i = 0; i < p->n_lru; i++)
        if (p->lru[i] == prefix)
            return (int)i;
    return -1;
}

/* prefix becomes the most recent; the least recent goes when full. */
static void lru_touch(pworker_t *p, uint32_t prefix)
{
    if (p->cap_lru == 0)
        return;
    int i = lru_find(p, prefix);
    uint32_t from = i >= 0 ? (uint32_t)i : p->n_lru < p->cap_lru ? p->n_lru++ : p->n_lru - 1;
    memmove(p->lru + 1, p->lru, from * sizeof *p->lru);
    p->lru[0] = prefix;
}

/* Tokens worker w would find cached for request r now. */
static uint32_t cached_on(const sim_t *s, uint32_t w, const sreq_t *r)
{
    return s->prefix_hit && lru_find(&s->pw[w], r->prefix) >= 0 ? s->prefix_hit : 0;
}

/* The router's choice (router.routing; router/prefix.c): kv_aware takes
 * the least (queued tokens + tokens this prompt would cost there), ties to
 * the fewest queued, then to the fewest cached prefixes, then the first. */
static uint32_t route(sim_t *s, const sreq_t *r)
{
    uint32_t len = (uint32_t)o_len(s), best = 0;
    if (s->o->routing == PLAN_ROUTE_ROUND_ROBIN)
        return s->rr++ % s->P;
    uint64_t best_cost = UINT64_MAX;
    for (uint32_t w = 0; w < s->P; w++) {
        uint64_t cost = s->pw[w].load_tokens;
        if (s->o->routing == PLAN_ROUTE_KV_AWARE)
            cost += len - cached_on(s, w, r);
        const pworker_t *a = &s->pw[w], *b = &s->pw[best];
        if (cost < best_cost ||
            (cost == best_cost && (a->load_tokens < b->load_tokens ||
                                   (a->load_tokens == b->load_tokens && a->n_lru < b->n_lru)))) {
            best = w;
            best_cost = cost;
        }
    }
    return best;
}

/* The prefill worker's rule (prefill_worker/prefill.c, fill): FIFO from the
 * head of the queue, up to prefill_batch_size prompts and a token budget of
 * prefill_batch_tokens; each prompt gives what is left of it or what is
 * left of the budget, so only the last one picked can be cut (it stays at
 * the head for the next pass). */
static int start_prefill(sim_t *s, uint32_t w, double now)
{
    pworker_t *p = &s->pw[w];
    if (p->busy || p->q.n == 0)
        return 0;
    uint32_t len = (uint32_t)o_len(s);
    uint64_t budget = s->o->prefill_batch_tokens;
    uint64_t tokens = 0;
    double att = 0;
    p->n_batch = 0;
    for (size_t i = 0; i < p->q.n && p->n_batch < s->o->prefill_batch_size && tokens < budget;
         i++) {
        uint32_t r = p->q.v[(p->q.head + i) % p->q.cap];
        sreq_t *q = &s->r[r];
        if (!q->started) {
            q->started = true;
            q->cached = q->pdone = cached_on(s, w, q);
            if (q->cached)
                lru_touch(p, q->prefix);
            s->hit_tokens += q->cached;
            s->prompt_tokens += len;
        }
        uint32_t off = q->pdone, take = len - off;
        if (take > budget - tokens)
            take = (uint32_t)(budget - tokens);
        p->batch[p->n_batch] = r;
        p->chunk[p->n_batch++] = take;
        tokens += take;
        att += (double)take * (2.0 * off + take);
    }
    p->busy = true;
    s->busy_p++;
    /* slowed by the decode workers stepping beside it (interference) */
    double f = 1 + (s->m->inf_pre - 1) * (double)s->busy_d / (double)s->D;
    return heap_push(&s->h, now + f * plan_prefill_ms(s->m, (double)tokens, att) / 1000.0,
                     EV_PREFILL_DONE, w);
}

static int start_step(sim_t *s, uint32_t w, double now)
{
    dworker_t *d = &s->dw[w];
    if (d->busy)
        return 0;
    while (d->wait.n && d->n_run < s->o->decode_batch_size && d->free_blocks >= s->blocks_per_req) {
        d->run[d->n_run++] = fifo_pop(&d->wait);
        d->free_blocks -= s->blocks_per_req;
        d->promised -= s->blocks_per_req;
    }
    if (d->n_run == 0)
        return 0;
    double ctx = 0;
    for (size_t i = 0; i < d->n_run; i++)
        ctx += s->o->input_len + 1 + s->r[d->run[i]].gen;
    ctx /= (double)d->n_run;
    d->busy = true;
    s->busy_d++;
    double f = 1 + (s->m->inf_dec - 1) * (double)s->busy_p / (double)s->P;
    return heap_push(&s->h, now + f * plan_decode_ms(s->m, (double)d->n_run, ctx) / 1000.0,
                     EV_STEP_DONE, w);
}

static int on_event(sim_t *s, event_t e)
{
    const plan_load_t *o = s->o;
    if (e.type == EV_ARRIVAL) {
        sreq_t *r = &s->r[e.a];
        uint32_t best = route(s, r);
        fifo_push(&s->pw[best].q, e.a);
        r->charged = (uint32_t)o_len(s) - cached_on(s, best, r);
        s->pw[best].load_tokens += r->charged;
        return start_prefill(s, best, e.t);
    }
    if (e.type == EV_PREFILL_DONE) {
        pworker_t *p = &s->pw[e.a];
        uint32_t len = (uint32_t)o_len(s);
        for (size_t i = 0; i < p->n_batch; i++) {
            sreq_t *r = &s->r[p->batch[i]];
            r->pdone += p->chunk[i];
            if (r->pdone < len)
                continue; /* cut: the rest goes in the next pass */
            fifo_pop(&p->q); /* whole prompts leave from the head, in order */
            r->prefill_end = e.t;
            r->first = e.t + s->m->overhead_ms / 1000.0;
            p->load_tokens -= r->charged < p->load_tokens ? r->charged : p->load_tokens;
            if (s->prefix_hit)
                lru_touch(p, r->prefix); /* its blocks are cached now */
            if (o->output_len == 1) {
                r->finish = r->first;
                continue;
            }
            uint32_t best = 0;
            for (uint32_t w = 1; w < s->D; w++)
                if (s->dw[w].free_blocks - s->dw[w].promised >
                    s->dw[best].free_blocks - s->dw[best].promised)
                    best = w;
            r->dw = best;
            s->dw[best].promised += s->blocks_per_req;
            if (heap_push(&s->h, e.t + plan_kv_ms(s->m, o->input_len + 1) / 1000.0, EV_KV_DONE,
                          p->batch[i]) != 0)
                return -1;
        }
        p->busy = false;
        s->busy_p--;
        p->n_batch = 0;
        return start_prefill(s, e.a, e.t);
    }
    if (e.type == EV_KV_DONE) {
        sreq_t *r = &s->r[e.a];
        fifo_push(&s->dw[r->dw].wait, e.a);
        return start_step(s, r->dw, e.t);
    }
    /* EV_STEP_DONE */
    dworker_t *d = &s->dw[e.a];
    size_t k = 0;
    for (size_t i = 0; i < d->n_run; i++) {
        sreq_t *r = &s->r[d->run[i]];
        if (++r->gen + 1 >= o->output_len) {
            r->finish = e.t + s->m->overhead_ms / 1000.0;
            d->free_blocks += s->blocks_per_req;
        } else {
            d->run[k++] = d->run[i];
        }
    }
    d->n_run = k;
    d->busy = false;
    s->busy_d--;
    return start_step(s, e.a, e.t);
}

static double p90(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    double pos = 0.9 * (double)(n - 1);
    size_t lo = (size_t)floor(pos), hi = (size_t)ceil(pos);
    return v[lo] + (v[hi] - v[lo]) * (pos - (double)lo);
}

static uint64_t mix(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The tokens a cached prefix saves and how many prefixes a prefill
 * worker's cache holds (0: no prefixes). */
static uint32_t prefix_setup(sim_t *s)
{
    const plan_load_t *o = s->o;
    uint32_t bs = s->m->block_size, len = o->input_len + 1;
    if (o->prefix_len == 0 || o->num_prefixes == 0 || bs == 0)
        return 0;
    uint32_t blocks = (1 + (o->prefix_len < o->input_len ? o->prefix_len : o->input_len)) / bs;
    if (blocks > (len - 1) / bs)
        blocks = (len - 1) / bs;
    s->prefix_hit = blocks * bs;
    if (blocks == 0)
        return 0;
    uint32_t room = o->prefix_cache_blocks ? o->prefix_cache_blocks : s->m->prefill_blocks;
    uint32_t cap = room ? room / blocks : o->num_prefixes;
    return cap < o->num_prefixes ? cap : o->num_prefixes;
}

/* Simulates P prefill + D decode workers; fills res. */
int plan_simulate(const plan_load_t *o, const plan_model_t *m, uint32_t P, uint32_t D, plan_result_t *res)
{
    sim_t s = { .o = o, .m = m, .P = P, .D = D };
    size_t n = o->num_requests;
    int rc = -1;
    double *ttft = NULL, *tpot = NULL;
    memset(res, 0, sizeof *res);
    s.blocks_per_req = (o->input_len + 1 + o->output_len + m->block_size - 1) / m->block_size;
    s.r = calloc(n, sizeof *s.r);
    s.pw = calloc(P, sizeof *s.pw);
    s.dw = calloc(D, sizeof *s.dw);
    ttft = malloc(n * sizeof *ttft);
    tpot = malloc(n * sizeof *tpot);
    if (!s.r || !s.pw || !s.dw || !ttft || !tpot)
        goto done;
    uint32_t cap_lru = prefix_setup(&s);
    for (uint32_t w = 0; w < P; w++) {
        s.pw[w].q = (fifo_t){ calloc(n, sizeof(uint32_t)), 0, 0, n };
        s.pw[w].batch = calloc(o->prefill_batch_size, sizeof(uint32_t));
        s.pw[w].chunk = calloc(o->prefill_batch_size, sizeof(uint32_t));
        s.pw[w].lru = calloc(cap_lru + 1, sizeof(uint32_t));
        s.pw[w].cap_lru = cap_lru;
        if (!s.pw[w].q.v || !s.pw[w].batch || !s.pw[w].chunk || !s.pw[w].lru)
            goto done;
    }
    for (uint32_t w = 0; w < D; w++) {
        s.dw[w].wait = (fifo_t){ calloc(n, sizeof(uint32_t)), 0, 0, n };
        s.dw[w].run = calloc(o->decode_batch_size, sizeof(uint32_t));
        s.dw[w].free_blocks = m->kv_blocks;
        if (!s.dw[w].wait.v || !s.dw[w].run)
            goto done;
    }
    uint64_t x = o->seed * 0x9e3779b97f4a7c15ull + 1; /* the same arrivals for every P:D */
    double t = 0;
    for (size_t i = 0; i < n; i++) {
        if (o->arrivals)
            t = o->arrivals[i];
        s.r[i].arrive = t;
        s.r[i].prefix = o->num_prefixes ? (uint32_t)(mix(o->seed ^ 0x5eedull, i) % o->num_prefixes) : 0;
        if (heap_push(&s.h, t, EV_ARRIVAL, (uint32_t)i) != 0)
            goto done;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double u = ((double)(x >> 11) + 0.5) * 0x1.0p-53;
        t += -log(u) / o->rate;
    }
    while (s.h.n)
        if (on_event(&s, heap_pop(&s.h)) != 0)
            goto done;
    double end = 0;
    size_t n_tpot = 0;
    bool fits = s.blocks_per_req <= m->kv_blocks;
    for (size_t i = 0; i < n; i++) {
        sreq_t *r = &s.r[i];
        if (!fits)
            break;
        if (r->finish > end)
            end = r->finish;
        double a = (r->first - r->arrive) * 1000.0;
        double b = o->output_len > 1 ? (r->finish - r->first) * 1000.0 / (o->output_len - 1) : 0;
        ttft[i] = a;
        if (o->output_len > 1)
            tpot[n_tpot++] = b;
        res->mean_ttft_ms += a / (double)n;
        res->mean_tpot_ms += b / (double)n;
        if (a <= o->ttft_slo_ms && b <= o->tpot_slo_ms)
            res->good++;
    }
    res->n = n;
    res->duration_s = end;
    res->goodput = end > 0 ? (double)res->good / end : 0;
    res->attainment = (double)res->good / (double)n;
    res->p90_ttft_ms = fits ? p90(ttft, n) : INFINITY;
    res->p90_tpot_ms = n_tpot ? p90(tpot, n_tpot) : 0;
    res->prefix_hit_rate = s.prompt_tokens ? (double)s.hit_tokens / (double)s.prompt_tokens : 0;
    rc = 0;
done:
    for (uint32_t w = 0; s.pw && w < P; w++)
        free(s.pw[w].q.v), free(s.pw[w].batch), free(s.pw[w].chunk), free(s.pw[w].lru);
    for (uint32_t w = 0; s.dw && w < D; w++)
        free(s.dw[w].wait.v), free(s.dw[w].run);
    free(s.pw), free(s.dw), free(s.r), free(s.h.v), free(ttft), free(tpot);
    return rc;
}


const char *plan_route_name(plan_route_t r)
{
    return r == PLAN_ROUTE_KV_AWARE ? "kv_aware" : r == PLAN_ROUTE_LEAST_LOADED ? "least_loaded"
                                                                              : "round_robin";
}

int plan_route_parse(const char *s, plan_route_t *out)
{
    for (int r = PLAN_ROUTE_KV_AWARE; r <= PLAN_ROUTE_ROUND_ROBIN; r++)
        if (strcmp(s, plan_route_name((plan_route_t)r)) == 0) {
            *out = (plan_route_t)r;
            return 0;
        }
    return -1;
}
