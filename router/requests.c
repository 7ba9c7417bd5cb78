/* requests.c -- a request's life in the router: admission (validation,
 * tokenization), the one transition function that moves it between
 * states, its output (tokens from the workers, incremental detokenization,
 * stop strings) and its end (finish, cancel, failure, deadline). The
 * diagram is in router.h; clients.c sends the output, sched.c chooses
 * workers and keeps their charges. */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fault.h"
#include "base/grow.h"
#include "base/log.h"
#include "router.h"

/* Room kept in the output text beyond a token's bytes (detok may hold up
 * to 8 pending bytes and emits U+FFFD replacements). */
#define RT_TEXT_SLACK 64

/* ====== States ====== */

static const char *const state_names[RQ_N_STATES] = {
    [RQ_FREE] = "free",       [RQ_QUEUED] = "queued", [RQ_PREFILL] = "prefill",
    [RQ_HANDOFF] = "handoff", [RQ_DECODE] = "decode", [RQ_DONE] = "done",
    [RQ_FAILED] = "failed",
};

const char *rt_state_name(rt_state_t s)
{
    return (unsigned)s < RQ_N_STATES ? state_names[s] : "?";
}

bool rt_req_on_workers(const rt_req_t *r)
{
    return r->state == RQ_PREFILL || r->state == RQ_HANDOFF || r->state == RQ_DECODE;
}

bool rt_req_is_live(const rt_req_t *r)
{
    return r->state == RQ_QUEUED || rt_req_on_workers(r);
}

bool rt_req_can(rt_state_t from, rt_state_t to)
{
    if ((unsigned)from >= RQ_N_STATES || (unsigned)to >= RQ_N_STATES || from == to)
        return false;
    switch (from) {
    case RQ_FREE: return to == RQ_QUEUED;
    case RQ_QUEUED: return to == RQ_PREFILL || to == RQ_DONE || to == RQ_FAILED || to == RQ_FREE;
    case RQ_PREFILL: return to != RQ_DECODE;
    case RQ_HANDOFF: return to != RQ_PREFILL;
    case RQ_DECODE: return to != RQ_PREFILL && to != RQ_HANDOFF;
    case RQ_DONE:
    case RQ_FAILED: return to == RQ_FREE;
    default: return false;
    }
}

/* ====== The queue (exactly the QUEUED requests, in dispatch order) ====== */

static uint32_t slot_of(const rt_t *rt, const rt_req_t *r)
{
    return (uint32_t)(r - rt->reqs);
}

static void queue_push_tail(rt_t *rt, uint32_t slot)
{
    rt->queue[(rt->q_head + rt->q_len++) % rt->n_slots] = slot;
}

static void queue_push_head(rt_t *rt, uint32_t slot)
{
    rt->q_head = (rt->q_head + rt->n_slots - 1) % rt->n_slots;
    rt->queue[rt->q_head] = slot;
    rt->q_len++;
}

static void queue_remove(rt_t *rt, uint32_t slot)
{
    if (rt->q_len > 0 && rt->queue[rt->q_head] == slot) { /* rt_dispatch's usual case */
        rt->q_head = (rt->q_head + 1) % rt->n_slots;
        rt->q_len--;
        return;
    }
    uint32_t out = 0;
    for (uint32_t i = 0; i < rt->q_len; i++) {
        uint32_t s = rt->queue[(rt->q_head + i) % rt->n_slots];
        if (s != slot)
            rt->queue[(rt->q_head + out++) % rt->n_slots] = s;
    }
    rt->q_len = out;
}

/* ====== The transition function ====== */

void rt_req_clear(rt_req_t *r)
{
    free(r->tokens);
    free(r->text);
    free(r->err_msg);
    for (uint32_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

void rt_req_to(rt_t *rt, rt_req_t *r, rt_state_t to)
{
    rt_state_t from = r->state;
    assert(rt_req_can(from, to));
    PD_DEBUG("event=req_state req=%llu from=%s to=%s", (unsigned long long)r->id,
             rt_state_name(from), rt_state_name(to));
    /* Leave `from`. */
    if (from == RQ_QUEUED)
        queue_remove(rt, slot_of(rt, r));
    if (rt_req_on_workers(r) && to != RQ_HANDOFF && to != RQ_DECODE)
        rt_charge_return(rt, r, from);
    r->state = to;
    /* Enter `to`. */
    switch (to) {
    case RQ_QUEUED:
        if (from == RQ_FREE) { /* accepted */
            queue_push_tail(rt, slot_of(rt, r));
            rt->n_active++;
            rt->requests_total++;
        } else { /* back from the workers: first in line */
            queue_push_head(rt, slot_of(rt, r));
        }
        break;
    case RQ_PREFILL: /* r->p_worker, r->d_worker: the chosen workers */
        r->epoch++;
        r->n_stash = 0;
        rt_charge_take(rt, r);
        if (r->t_dispatch_us == 0)
            r->t_dispatch_us = pd_now_us();
        break;
    case RQ_HANDOFF: rt_charge_prefill_done(rt, r); break;
    case RQ_FREE:
        rt_stream_unhold(rt, r);
        rt->n_active--;
        rt_client_detach(rt, r);
        rt_req_clear(r);
        break;
    default: break; /* DECODE, DONE, FAILED: nothing more */
    }
}

rt_req_t *rt_req_by_id(rt_t *rt, uint64_t id)
{
    uint64_t slot = id & ((1u << RT_SLOT_BITS) - 1);
    if (slot >= rt->n_slots)
        return NULL;
    rt_req_t *r = &rt->reqs[slot];
    return r->state != RQ_FREE && r->id == id ? r : NULL;
}

/* ====== Admission ====== */

/* Fills r from g. Returns 0, or writes why it cannot and returns the code to
 * answer with: INVALID_ARGUMENT (the request is wrong) or RESOURCE_EXHAUSTED
 * (out of memory: the same request may succeed later). */
static Pd__ErrorCode req_fill(rt_t *rt, rt_req_t *r, const Pd__GenerateRequest *g, char *why, size_t cap)
{
    uint32_t vocab = pd_tok_n_vocab(rt->tok);
    size_t n = 0;
    if (g->n_prompt_tokens > 0) {
        if (g->n_prompt_tokens > rt->max_seq_len) {
            snprintf(why, cap, "prompt: %zu tokens, over the context of %u tokens",
                     g->n_prompt_tokens, rt->max_seq_len);
            return PD__ERROR_CODE__INVALID_ARGUMENT;
        }
        for (size_t i = 0; i < g->n_prompt_tokens; i++) {
            if (g->prompt_tokens[i] < 0 || (uint32_t)g->prompt_tokens[i] >= vocab) {
                snprintf(why, cap, "prompt_tokens[%zu]: id %d outside the vocabulary [0, %u)", i,
                         g->prompt_tokens[i], vocab);
                return PD__ERROR_CODE__INVALID_ARGUMENT;
            }
            rt->tok_buf[i] = g->prompt_tokens[i];
        }
        n = g->n_prompt_tokens;
    } else {
        if (g->prompt == NULL || g->prompt[0] == '\0') {
            snprintf(why, cap, "prompt: empty (give prompt text or prompt_tokens)");
            return PD__ERROR_CODE__INVALID_ARGUMENT;
        }
        pd_err_t err = { 0 };
        int rc = pd_tok_encode(rt->tok, g->prompt, strlen(g->prompt), true, rt->tok_buf,
                               rt->max_seq_len + 1, &n, &err);
        if (rc == PD_ERANGE || n > rt->max_seq_len) {
            snprintf(why, cap, "prompt: %zu tokens, over the context of %u tokens", n,
                     rt->max_seq_len);
            return PD__ERROR_CODE__INVALID_ARGUMENT;
        }
        if (rc) {
            snprintf(why, cap, "prompt: %.400s", err.msg);
            return rc == PD_ENOMEM ? PD__ERROR_CODE__RESOURCE_EXHAUSTED
                                   : PD__ERROR_CODE__INVALID_ARGUMENT;
        }
    }
    if (n == 0) {
        snprintf(why, cap, "prompt: empty after tokenization");
        return PD__ERROR_CODE__INVALID_ARGUMENT;
    }
    if (n >= rt->max_seq_len) {
        snprintf(why, cap, "prompt: %zu tokens leaves no room in the context of %u tokens", n,
                 rt->max_seq_len);
        return PD__ERROR_CODE__INVALID_ARGUMENT;
    }
    uint32_t max_tokens = g->has_max_tokens ? g->max_tokens : 16;
    if (max_tokens == 0) {
        snprintf(why, cap, "max_tokens: must be at least 1");
        return PD__ERROR_CODE__INVALID_ARGUMENT;
    }
    if (max_tokens > rt->cfg.router.max_tokens_limit) {
        snprintf(why, cap, "max_tokens: %u over the limit of %u (router.max_tokens_limit)",
                 max_tokens, rt->cfg.router.max_tokens_limit);
        return PD__ERROR_CODE__INVALID_ARGUMENT;
    }
    pd_err_t serr = { 0 };
    if (pd_codec_sampling_from_pb(g->sampling, &r->sampling, &serr) != 0) {
        snprintf(why, cap, "%.500s", serr.msg);
        return PD__ERROR_CODE__INVALID_ARGUMENT;
    }
    if (g->n_stop > RT_MAX_STOP) {
        snprintf(why, cap, "stop: %zu strings, at most %d", g->n_stop, RT_MAX_STOP);
        return PD__ERROR_CODE__INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < g->n_stop; i++) {
        size_t sl = g->stop[i] ? strlen(g->stop[i]) : 0;
        if (sl == 0 || sl > RT_MAX_STOP_LEN) {
            snprintf(why, cap, "stop[%zu]: length must be 1..%d bytes", i, RT_MAX_STOP_LEN);
            return PD__ERROR_CODE__INVALID_ARGUMENT;
        }
    }
    if (g->n_stop_ids > RT_MAX_STOP_IDS) {
        snprintf(why, cap, "stop_ids: %zu ids, at most %d", g->n_stop_ids, RT_MAX_STOP_IDS);
        return PD__ERROR_CODE__INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < g->n_stop_ids; i++) {
        if (g->stop_ids[i] < 0 || (uint32_t)g->stop_ids[i] >= vocab) {
            snprintf(why, cap, "stop_ids[%zu]: id %d outside the vocabulary [0, %u)", i,
                     g->stop_ids[i], vocab);
            return PD__ERROR_CODE__INVALID_ARGUMENT;
        }
        r->stop_ids[i] = g->stop_ids[i];
    }
    r->n_stop_ids = (uint32_t)g->n_stop_ids;
    if (g->has_deadline_ms && g->deadline_ms > 24u * 3600u * 1000u) {
        snprintf(why, cap, "deadline_ms: at most one day");
        return PD__ERROR_CODE__INVALID_ARGUMENT;
    }
    /* Everything checked: take memory. */
    r->cap_tokens = (uint32_t)n + max_tokens;
    r->tokens = pd_malloc((size_t)r->cap_tokens * sizeof *r->tokens);
    if (r->tokens == NULL) {
        snprintf(why, cap, "out of memory for %u tokens", r->cap_tokens);
        return PD__ERROR_CODE__RESOURCE_EXHAUSTED;
    }
    memcpy(r->tokens, rt->tok_buf, n * sizeof *r->tokens);
    r->n_prompt = (uint32_t)n;
    for (size_t i = 0; i < g->n_stop; i++) {
        r->stop[i] = pd_strdup(g->stop[i]);
        if (r->stop[i] == NULL) {
            snprintf(why, cap, "out of memory for stop[%zu]", i);
            return PD__ERROR_CODE__RESOURCE_EXHAUSTED;
        }
        r->n_stop++;
    }
    r->max_tokens = max_tokens;
    r->ignore_eos = g->has_ignore_eos && g->ignore_eos;
    r->stream = !g->has_stream || g->stream;
    uint64_t dl = g->has_deadline_ms && g->deadline_ms ? g->deadline_ms
                                                      : rt->cfg.router.request_timeout_ms;
    r->deadline_us = r->t_accept_us + dl * 1000u;
    pd_detok_init(&r->detok, false);
    return PD__ERROR_CODE__ERROR_NONE;
}

void rt_on_generate(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__GenerateRequest *g)
{
    if (!g->has_request_id || g->request_id == 0) {
        pd_net_send_error(rt->front, cid, cid_len, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "request_id: must be set and non-zero");
        return;
    }
    for (uint32_t i = 0; i < rt->n_slots; i++) {
        rt_req_t *o = &rt->reqs[i];
        if (o->state != RQ_FREE && o->client_req == g->request_id && o->cid_len == cid_len &&
            memcmp(o->cid, cid, cid_len) == 0) {
            pd_net_send_error(rt->front, cid, cid_len, g->request_id,
                              PD__ERROR_CODE__INVALID_ARGUMENT,
                              "request_id: %llu already in use by this client",
                              (unsigned long long)g->request_id);
            return;
        }
    }
    if (!rt_have_workers(rt)) {
        pd_net_send_error(rt->front, cid, cid_len, g->request_id, PD__ERROR_CODE__UNAVAILABLE,
                          "no workers registered (need a prefill and a decode worker, or a "
                          "colocated one)");
        return;
    }
    if (rt->n_active >= rt->n_slots || rt->q_len >= rt->cfg.router.max_queue) {
        pd_net_send_error(rt->front, cid, cid_len, g->request_id,
                          PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                          "router queue full: %u requests active, %u queued (router.max_queue)",
                          rt->n_active, rt->q_len);
        return;
    }
    uint32_t slot = 0;
    while (slot < rt->n_slots && rt->reqs[slot].state != RQ_FREE)
        slot++;
    if (slot == rt->n_slots) {
        pd_net_send_error(rt->front, cid, cid_len, g->request_id,
                          PD__ERROR_CODE__RESOURCE_EXHAUSTED, "router full");
        return;
    }
    rt_req_t *r = &rt->reqs[slot];
    memset(r, 0, sizeof *r);
    r->p_worker = r->d_worker = -1;
    r->t_accept_us = pd_now_us();
    char why[512] = "";
    Pd__ErrorCode code = req_fill(rt, r, g, why, sizeof why);
    if (code != PD__ERROR_CODE__ERROR_NONE) {
        rt_req_clear(r);
        PD_INFO("event=request_refused client_req=%llu code=%d msg=\"%s\"",
                (unsigned long long)g->request_id, (int)code, why);
        pd_net_send_error(rt->front, cid, cid_len, g->request_id, code, "%s", why);
        return;
    }
    r->id = (++rt->next_seq << RT_SLOT_BITS) | slot;
    memcpy(r->cid, cid, cid_len);
    r->cid_len = cid_len;
    r->client_req = g->request_id;
    if (rt_client_attach(rt, r, g->has_heartbeats && g->heartbeats) != 0) {
        rt_req_clear(r);
        pd_net_send_error(rt->front, cid, cid_len, g->request_id,
                          PD__ERROR_CODE__RESOURCE_EXHAUSTED, "router out of memory");
        return;
    }
    rt_req_to(rt, r, RQ_QUEUED);
    PD_DEBUG("event=accepted req=%llu client_req=%llu prompt=%u max_tokens=%u",
             (unsigned long long)r->id, (unsigned long long)r->client_req, r->n_prompt,
             r->max_tokens);
    rt_dispatch(rt);
}

/* ====== Output: tokens from the workers ====== */

/* Applies stop strings to text[text_ok..text_len): on a match, cuts the text
 * there and finishes the output (FINISH_STOP); otherwise holds back the longest suffix
 * that could still become a stop string. At the end of a stream (final)
 * nothing is held back. */
static void apply_stops(rt_req_t *r, bool final)
{
    if (r->n_stop == 0) {
        r->text_ok = r->text_len;
        return;
    }
    const char *base = r->text + r->text_ok;
    size_t n = r->text_len - r->text_ok;
    size_t best = SIZE_MAX;
    for (uint32_t i = 0; i < r->n_stop; i++) {
        const char *hit = memmem(base, n, r->stop[i], strlen(r->stop[i]));
        if (hit && (size_t)(hit - base) < best)
            best = (size_t)(hit - base);
    }
    if (best != SIZE_MAX) {
        r->text_len = r->text_ok + best;
        r->text_ok = r->text_len;
        r->finish = PD__FINISH_REASON__FINISH_STOP;
        return;
    }
    if (final) {
        r->text_ok = r->text_len;
        return;
    }
    size_t hold = 0;
    for (uint32_t i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        for (size_t k = (sl - 1 < n ? sl - 1 : n); k > hold; k--)
            if (memcmp(base + n - k, r->stop[i], k) == 0) {
                hold = k;
                break;
            }
    }
    r->text_ok = r->text_len - hold;
}

/* Appends the token at output index r->n_gen to the tokens and the text;
 * sets r->finish when the output is complete (a finish reason from the
 * worker, max_tokens, a stop string). Returns 0, PD_ERANGE or PD_ENOMEM. */
static int req_append(rt_t *rt, rt_req_t *r, int32_t token, Pd__FinishReason fin)
{
    if (r->n_prompt + r->n_gen >= r->cap_tokens)
        return PD_ERANGE;
    r->tokens[r->n_prompt + r->n_gen++] = token;
    int piece = pd_tok_piece(rt->tok, token, NULL, 0);
    if (pd_grow((void **)&r->text, &r->text_cap,
                r->text_len + (size_t)(piece > 0 ? piece : 0) + RT_TEXT_SLACK, 1, 256) != 0)
        return PD_ENOMEM;
    int n = pd_detok_push(rt->tok, &r->detok, token, r->text + r->text_len,
                          r->text_cap - r->text_len);
    if (n > 0)
        r->text_len += (size_t)n;
    bool ends = fin != PD__FINISH_REASON__FINISH_NONE || r->n_gen >= r->max_tokens;
    if (ends) {
        n = pd_detok_flush(&r->detok, r->text + r->text_len, r->text_cap - r->text_len);
        if (n > 0)
            r->text_len += (size_t)n;
    }
    apply_stops(r, ends);
    if (r->finish == PD__FINISH_REASON__FINISH_NONE && ends)
        r->finish = fin != PD__FINISH_REASON__FINISH_NONE ? fin : PD__FINISH_REASON__FINISH_LENGTH;
    return 0;
}

/* Takes one token of output index r->n_gen: the epoch's first token ends
 * prefill (HANDOFF), the decode worker's first one ends the hand-off
 * (DECODE); the decode worker's blocks grow with the output. */
static int accept_token(rt_t *rt, rt_req_t *r, int32_t token, Pd__FinishReason fin)
{
    if (r->state == RQ_PREFILL)
        rt_req_to(rt, r, RQ_HANDOFF);
    else if (r->state == RQ_HANDOFF)
        rt_req_to(rt, r, RQ_DECODE);
    int rc = req_append(rt, r, token, fin);
    if (rc)
        return rc;
    rt_charge_grow(rt, r);
    return 0;
}

/* One token entry of worker wi: for the live request and epoch it names,
 * from one of that request's workers (else dropped), checked by the codec
 * (a malformed entry fails the request: the worker is broken). */
static void on_token(rt_t *rt, int wi, const Pd__TokenEntry *m)
{
    rt_req_t *r = rt_req_by_id(rt, m->request_id);
    rt_worker_t *w = &rt->workers[wi];
    if (r == NULL || !rt_req_on_workers(r) || m->epoch != r->epoch) {
        PD_DEBUG("event=stale_token req=%llu epoch=%u worker=%s", (unsigned long long)m->request_id,
                 m->epoch, w->id);
        return;
    }
    bool from_p = r->p_worker == wi && r->p_gen == w->gen;
    bool from_d = r->d_worker == wi && r->d_gen == w->gen;
    if (!from_p && !from_d) {
        PD_WARN("event=foreign_token req=%llu worker=%s", (unsigned long long)r->id, w->id);
        return;
    }
    pd_token_entry_t e;
    pd_err_t err = { 0 };
    if (pd_codec_token_from_pb(m, pd_tok_n_vocab(rt->tok), &e, &err) != 0) {
        rt_req_fail(rt, r, PD__ERROR_CODE__INTERNAL, "worker %s: %s", w->id, err.msg);
        return;
    }
    Pd__FinishReason fin = e.finish;
    if (e.index < r->n_gen) {
        PD_DEBUG("event=duplicate_token req=%llu index=%u", (unsigned long long)r->id, e.index);
        return;
    }
    if (e.index > r->n_gen) {
        if (r->n_stash == RT_STASH || e.index >= r->max_tokens) {
            rt_req_fail(rt, r, PD__ERROR_CODE__INTERNAL, "token index %u but %u expected (gap)",
                        e.index, r->n_gen);
            return;
        }
        r->stash[r->n_stash].index = e.index;
        r->stash[r->n_stash].token = e.token;
        r->stash[r->n_stash].finish = fin;
        r->n_stash++;
        return;
    }
    int rc = accept_token(rt, r, e.token, fin);
    while (rc == 0 && r->finish == PD__FINISH_REASON__FINISH_NONE) {
        /* Tokens that arrived ahead of this one. */
        uint32_t k = 0;
        while (k < r->n_stash && r->stash[k].index != r->n_gen)
            k++;
        if (k == r->n_stash)
            break;
        int32_t tok = r->stash[k].token;
        fin = r->stash[k].finish;
        r->stash[k] = r->stash[--r->n_stash];
        rc = accept_token(rt, r, tok, fin);
    }
    if (rc) {
        rt_req_fail(rt, r, PD__ERROR_CODE__INTERNAL, "cannot store output token (%s)",
                    pd_err_name(rc));
        return;
    }
    if (r->finish != PD__FINISH_REASON__FINISH_NONE)
        rt_req_to(rt, r, RQ_DONE); /* workers still holding it let go now */
    rt_stream_flush(rt, r);
}

void rt_on_tokens(rt_t *rt, int wi, const Pd__TokenBatch *b)
{
    for (size_t i = 0; i < b->n_entries; i++)
        if (b->entries[i])
            on_token(rt, wi, b->entries[i]);
}

/* ====== Ends ====== */

void rt_req_fail(rt_t *rt, rt_req_t *r, Pd__ErrorCode code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    PD_WARN("event=request_failed req=%llu client_req=%llu code=%d msg=\"%s\"",
            (unsigned long long)r->id, (unsigned long long)r->client_req, (int)code, msg);
    rt->requests_failed++;
    free(r->err_msg);
    r->err_msg = pd_strdup(msg); /* NULL: the Error says "error" */
    r->err_code = code ? code : PD__ERROR_CODE__INTERNAL;
    r->finish = PD__FINISH_REASON__FINISH_ERROR;
    rt_req_to(rt, r, RQ_FAILED);
    rt_stream_flush(rt, r);
}

void rt_req_requeue(rt_t *rt, rt_req_t *r, const char *why, bool preempted)
{
    PD_INFO("event=requeue req=%llu epoch=%u generated=%u why=\"%s\"", (unsigned long long)r->id,
            r->epoch, r->n_gen, why);
    rt_req_to(rt, r, RQ_QUEUED);
    if (preempted)
        r->n_preempt++;
}

void rt_req_sweep(rt_t *rt, uint64_t now)
{
    for (uint32_t i = 0; i < rt->n_slots; i++) {
        rt_req_t *r = &rt->reqs[i];
        if (!rt_req_is_live(r) || now <= r->deadline_us)
            continue;
        if (!rt_have_workers(rt))
            rt_req_fail(rt, r, PD__ERROR_CODE__UNAVAILABLE,
                        "no workers available before the deadline");
        else
            rt_req_fail(rt, r, PD__ERROR_CODE__DEADLINE_EXCEEDED,
                        "deadline of %llu ms exceeded after %u tokens",
                        (unsigned long long)((r->deadline_us - r->t_accept_us) / 1000u), r->n_gen);
    }
}

void rt_on_cancel(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__Cancel *c)
{
    for (uint32_t i = 0; i < rt->n_slots; i++) {
        rt_req_t *r = &rt->reqs[i];
        if (rt_req_is_live(r) && r->client_req == c->request_id && r->cid_len == cid_len &&
            memcmp(r->cid, cid, cid_len) == 0) {
            PD_INFO("event=cancelled req=%llu client_req=%llu", (unsigned long long)r->id,
                    (unsigned long long)r->client_req);
            r->finish = PD__FINISH_REASON__FINISH_CANCELLED;
            r->text_ok = r->text_len; /* nothing more will come: release what was held */
            rt_req_to(rt, r, RQ_DONE);
            rt_stream_flush(rt, r);
            return;
        }
    }
    /* Unknown or finished: nothing to do (the final chunk is on its way). */
}
