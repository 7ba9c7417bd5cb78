/* requests.c -- a request's life in the router: admission (validation,
 * tokenization), output (incremental detokenization, stop strings,
 * streaming with back-pressure), termination. See router.h. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fault.h"
#include "base/log.h"
#include "router.h"

/* Room kept in the output text beyond a token's bytes (detok may hold up
 * to 8 pending bytes and emits U+FFFD replacements). */
#define RT_TEXT_SLACK 64

/* ====== Requests: termination ====== */

void rt_req_clear(rt_req_t *r)
{
    free(r->tokens);
    free(r->text);
    free(r->err_msg);
    for (uint32_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* Takes back what the request charged to its workers and forgets them
 * (telling them to drop it first when notify). */
void rt_req_unassign(rt_t *rt, rt_req_t *r, bool notify)
{
    if (!r->assigned)
        return;
    r->assigned = false;
    rt_worker_t *p = rt_worker_of(rt, r->p_worker, r->p_gen);
    rt_worker_t *d = rt_worker_of(rt, r->d_worker, r->d_gen);
    if (p) {
        p->prefill_tokens -= r->prefill_charged < p->prefill_tokens ? r->prefill_charged
                                                                     : p->prefill_tokens;
        if (notify && r->state == RQ_PREFILL)
            rt_send_cancel(rt, p, r->id, r->epoch);
    }
    if (d) {
        d->blocks_est -= r->blocks_charged < d->blocks_est ? r->blocks_charged : d->blocks_est;
        if (d->n_decoding)
            d->n_decoding--;
        if (notify && (d != p || r->state == RQ_DECODE))
            rt_send_cancel(rt, d, r->id, r->epoch);
    }
    r->prefill_charged = r->blocks_charged = 0;
    r->p_worker = r->d_worker = -1;
    rt->n_dispatched--;
}

static void queue_remove(rt_t *rt, uint32_t slot)
{
    uint32_t out = 0;
    for (uint32_t i = 0; i < rt->q_len; i++) {
        uint32_t s = rt->queue[(rt->q_head + i) % rt->n_slots];
        if (s != slot)
            rt->queue[(rt->q_head + out++) % rt->n_slots] = s;
    }
    rt->q_len = out;
}

/* ====== Requests: held output ======
 *
 * ZeroMQ's back-pressure (EAGAIN at the router's net.hwm) belongs to a
 * client's connection, not to one of its streams: with many streams on one
 * connection some sends are refused even while the client reads promptly.
 * So a refused request is held with a FIFO ticket, every later flush of that
 * client's requests queues behind it, and the timer's pass (rt_req_retry)
 * sends them oldest first. A stream is cut only when its connection took
 * nothing for router.stream_stall_ms (rt_client_t.stuck_since_us). */

static void req_hold(rt_t *rt, rt_req_t *r, uint64_t now)
{
    if (r->block_ticket)
        return; /* keeps its place in the line */
    r->block_ticket = ++rt->next_ticket;
    r->t_blocked_us = now;
    rt->n_blocked++;
    rt_client_t *c = rt_client_of(rt, r);
    if (c)
        c->n_blocked++;
}

static void req_unhold(rt_t *rt, rt_req_t *r)
{
    if (r->block_ticket == 0)
        return;
    r->block_ticket = r->t_blocked_us = 0;
    if (rt->n_blocked)
        rt->n_blocked--;
    rt_client_t *c = rt_client_of(rt, r);
    if (c && c->n_blocked)
        c->n_blocked--;
}

/* r must not send now: it is held, or its client has held requests that
 * are older (sending first would overtake them). */
static bool req_must_wait(rt_t *rt, const rt_req_t *r)
{
    if (r->block_ticket)
        return true;
    const rt_client_t *c = rt_client_of(rt, r);
    return c && c->n_blocked > 0;
}

void rt_req_release(rt_t *rt, rt_req_t *r, bool notify)
{
    req_unhold(rt, r);
    if (r->state == RQ_QUEUED)
        queue_remove(rt, (uint32_t)(r - rt->reqs));
    else
        rt_req_unassign(rt, r, notify);
    rt->n_active--;
    rt_client_detach(rt, r);
    rt_req_clear(r);
}

/* A finished request leaves the queue and its workers (told to drop it)
 * and only waits for its final chunk to go out. */
void rt_req_settle(rt_t *rt, rt_req_t *r)
{
    if (r->state == RQ_QUEUED)
        queue_remove(rt, (uint32_t)(r - rt->reqs));
    else
        rt_req_unassign(rt, r, true);
    r->state = RQ_DONE;
}

/* Ends a request with an Error to its client (its terminal message; kept
 * and retried like any chunk if the client is not keeping up). */
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
    r->err_msg = pd_strdup(msg); /* NULL: flush_error sends "error" */
    r->err_code = code ? code : PD__ERROR_CODE__INTERNAL;
    r->finished = true;
    r->finish = PD__FINISH_REASON__FINISH_ERROR;
    rt_req_settle(rt, r);
    rt_req_flush(rt, r);
}

/* Sends a failed request's Error (retry: in rt_req_retry's order); releases
 * it unless back-pressure holds it. */
static void flush_error(rt_t *rt, rt_req_t *r, bool retry)
{
    uint64_t now = pd_net_now_us();
    if (!retry && req_must_wait(rt, r)) {
        req_hold(rt, r, now);
        return;
    }
    int rc = pd_net_send_error(rt->front, r->cid, r->cid_len, r->client_req, r->err_code, "%s",
                               r->err_msg ? r->err_msg : "error");
    if (rc == PD_EFULL || rc == PD_ENOMEM) { /* no room now: the timer retries */
        req_hold(rt, r, now);
        rt_client_refused(rt, r, now);
        return;
    }
    if (rc == 0)
        rt_client_sent(rt, r);
    pd_metrics_request_failed(rt->metrics, r->err_code);
    rt_req_release(rt, r, true);
}

/* ====== Requests: output ====== */

static int text_reserve(rt_req_t *r, size_t extra)
{
    if (r->text_len + extra <= r->text_cap)
        return 0;
    size_t cap = r->text_cap ? r->text_cap * 2 : 256;
    while (cap < r->text_len + extra)
        cap *= 2;
    char *t = pd_realloc(r->text, cap);
    if (t == NULL)
        return PD_ENOMEM;
    r->text = t;
    r->text_cap = cap;
    return 0;
}

/* Applies stop strings to text[text_ok..text_len): on a match, cuts the text
 * there and finishes the request; otherwise holds back the longest suffix
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
        r->finished = true;
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

/* Sends what the client has not seen yet (and the final chunk once
 * finished); retry: rt_req_retry's turn for a held request. Releases the
 * request after its final chunk. Back-pressure (EAGAIN) holds everything
 * for a later try (the next chunk carries all of it); a vanished client
 * ends it. */
static void req_flush(rt_t *rt, rt_req_t *r, bool retry)
{
    if (r->err_code) {
        flush_error(rt, r, retry);
        return;
    }
    uint32_t n_new = r->n_gen - r->tok_sent;
    size_t t_new = r->text_ok - r->text_sent;
    if (!r->finished && (!r->stream || (n_new == 0 && t_new == 0))) {
        req_unhold(rt, r); /* nothing to send: must not hold up its client */
        return;
    }
    if (!retry && req_must_wait(rt, r)) {
        req_hold(rt, r, pd_net_now_us());
        return;
    }
    Pd__StreamChunk c = PD__STREAM_CHUNK__INIT;
    c.has_request_id = true;
    c.request_id = r->client_req;
    c.n_tokens = n_new;
    c.tokens = r->tokens + r->n_prompt + r->tok_sent;
    c.has_text = true;
    c.text.len = t_new;
    c.text.data = (uint8_t *)(r->text ? r->text + r->text_sent : NULL);
    c.has_index = true;
    c.index = r->tok_sent;
    Pd__Usage u = PD__USAGE__INIT;
    Pd__Timings tm = PD__TIMINGS__INIT;
    uint64_t now = pd_net_now_us();
    if (r->finished) {
        c.has_finish_reason = true;
        c.finish_reason = r->finish;
        u.has_prompt_tokens = u.has_completion_tokens = true;
        u.prompt_tokens = r->n_prompt;
        u.completion_tokens = r->n_gen;
        c.usage = &u;
        tm.has_queue_us = tm.has_ttft_us = tm.has_e2e_us = tm.has_n_preemptions = true;
        tm.queue_us = r->t_dispatch_us ? r->t_dispatch_us - r->t_accept_us : 0;
        tm.ttft_us = r->t_first_us ? r->t_first_us - r->t_accept_us : 0;
        tm.e2e_us = now - r->t_accept_us;
        tm.n_preemptions = r->n_preempt;
        c.timings = &tm;
    }
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_CHUNK;
    m.chunk = &c;
    pd_err_t err = { 0 };
    int rc = pd_net_send(rt->front, r->cid, r->cid_len, &m, false, &err);
    /* No buffer for the message (out of memory) is not a vanished client:
     * retried like back-pressure, cut after router.stream_stall_ms. */
    if (rc == PD_EFULL || rc == PD_ENOMEM) {
        req_hold(rt, r, now);
        rt_client_refused(rt, r, now);
        return; /* the timer retries; a stalled stream is cut there */
    }
    if (rc) {
        PD_WARN("event=client_gone req=%llu msg=\"%s\"", (unsigned long long)r->id, err.msg);
        rt->requests_failed++;
        rt_req_release(rt, r, true);
        return;
    }
    req_unhold(rt, r);
    rt_client_sent(rt, r);
    if (r->t_first_us == 0 && n_new > 0)
        r->t_first_us = now;
    r->tok_sent = r->n_gen;
    r->text_sent = r->text_ok;
    if (r->finished) {
        pd_metrics_request_done(rt->metrics, r->finish, r->n_prompt, r->n_gen, tm.queue_us,
                                r->t_first_us ? r->t_first_us - r->t_accept_us : 0, tm.e2e_us);
        PD_INFO("event=request_done req=%llu client_req=%llu prompt=%u out=%u finish=%d "
                "preempted=%u e2e_ms=%.1f",
                (unsigned long long)r->id, (unsigned long long)r->client_req, r->n_prompt,
                r->n_gen, (int)r->finish, r->n_preempt, (double)(now - r->t_accept_us) / 1000.0);
        rt_req_release(rt, r, true);
    }
}

void rt_req_flush(rt_t *rt, rt_req_t *r)
{
    req_flush(rt, r, false);
}

static int held_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct rt_held *)a)->ticket, y = ((const struct rt_held *)b)->ticket;
    return x < y ? -1 : x > y;
}

void rt_req_retry(rt_t *rt, uint64_t now)
{
    if (rt->n_blocked == 0 || rt->held == NULL)
        return;
    uint32_t n = 0;
    for (uint32_t i = 0; i < rt->n_slots; i++)
        if (rt->reqs[i].state != RQ_FREE && rt->reqs[i].block_ticket) {
            rt->held[n].ticket = rt->reqs[i].block_ticket;
            rt->held[n++].slot = i;
        }
    qsort(rt->held, n, sizeof *rt->held, held_cmp);
    uint64_t stall_us = (uint64_t)rt->cfg.router.stream_stall_ms * 1000u;
    uint64_t pass = ++rt->retry_pass;
    for (uint32_t k = 0; k < n; k++) {
        rt_req_t *r = &rt->reqs[rt->held[k].slot];
        if (r->state == RQ_FREE || r->block_ticket != rt->held[k].ticket)
            continue; /* ended meanwhile */
        rt_client_t *c = rt_client_of(rt, r);
        uint64_t since = c ? c->stuck_since_us : r->t_blocked_us;
        if (since && now > since && now - since > stall_us) {
            PD_WARN("event=stream_stalled req=%llu client_req=%llu stalled_ms=%llu "
                    "held_ms=%llu sent=%u out=%u",
                    (unsigned long long)r->id, (unsigned long long)r->client_req,
                    (unsigned long long)((now - since) / 1000u),
                    (unsigned long long)((now - r->t_blocked_us) / 1000u), r->tok_sent, r->n_gen);
            if (r->err_code == 0) /* rt_req_fail counted one whose Error was held */
                rt->requests_failed++;
            rt_req_release(rt, r, true);
            continue;
        }
        if (c && c->retry_pass == pass)
            continue; /* its connection refused an older one in this pass */
        req_flush(rt, r, true);
        if (c && r->state != RQ_FREE && r->block_ticket)
            c->retry_pass = pass;
    }
}

/* Appends the token at output index r->n_gen. Returns 0 or PD_ENOMEM. */
static int req_append(rt_t *rt, rt_req_t *r, int32_t token, Pd__FinishReason fin)
{
    if (r->n_prompt + r->n_gen >= r->cap_tokens)
        return PD_ERANGE;
    r->tokens[r->n_prompt + r->n_gen++] = token;
    int piece = pd_tok_piece(rt->tok, token, NULL, 0);
    if (text_reserve(r, (size_t)(piece > 0 ? piece : 0) + RT_TEXT_SLACK))
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
    if (!r->finished && ends) {
        r->finished = true;
        r->finish = fin != PD__FINISH_REASON__FINISH_NONE ? fin : PD__FINISH_REASON__FINISH_LENGTH;
    }
    return 0;
}

/* ====== Requests: admission ====== */

static bool sampling_from_pb(const Pd__Sampling *s, pd_sampling_t *out, char *why, size_t cap)
{
    pd_sampling_default(out);
    if (s == NULL)
        return true;
    if (s->has_temperature)
        out->temperature = s->temperature;
    if (s->has_top_k)
        out->top_k = s->top_k;
    if (s->has_top_p)
        out->top_p = s->top_p;
    if (s->has_min_p)
        out->min_p = s->min_p;
    if (s->has_repetition_penalty)
        out->repetition_penalty = s->repetition_penalty;
    if (s->has_presence_penalty)
        out->presence_penalty = s->presence_penalty;
    if (s->has_frequency_penalty)
        out->frequency_penalty = s->frequency_penalty;
    if (s->has_seed)
        out->seed = s->seed;
    /* The checks a client most often gets wrong, named plainly; the
     * sampler's own validation covers every field after. */
    if (!(out->temperature >= 0.0f) || !isfinite(out->temperature)) {
        snprintf(why, cap, "sampling.temperature: must be >= 0, got %g", (double)out->temperature);
        return false;
    }
    if (!(out->top_p > 0.0f && out->top_p <= 1.0f)) {
        snprintf(why, cap, "sampling.top_p: must be in (0, 1], got %g", (double)out->top_p);
        return false;
    }
    if (!(out->min_p >= 0.0f && out->min_p < 1.0f)) {
        snprintf(why, cap, "sampling.min_p: must be in [0, 1), got %g", (double)out->min_p);
        return false;
    }
    if (out->top_k < 0) {
        snprintf(why, cap, "sampling.top_k: must be >= 0, got %d", out->top_k);
        return false;
    }
    pd_err_t err = { 0 };
    if (pd_sampling_validate(out, &err) != 0) {
        snprintf(why, cap, "sampling: %.400s", err.msg);
        return false;
    }
    return true;
}

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
    if (!sampling_from_pb(g->sampling, &r->sampling, why, cap))
        return PD__ERROR_CODE__INVALID_ARGUMENT;
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

bool rt_have_workers(rt_t *rt)
{
    bool p = false, d = false, b = false;
    for (int i = 0; i < RT_MAX_WORKERS; i++) {
        rt_worker_t *w = &rt->workers[i];
        if (!w->used || w->state != RT_W_READY)
            continue;
        p |= w->role == PD__ROLE__ROLE_PREFILL;
        d |= w->role == PD__ROLE__ROLE_DECODE;
        b |= w->role == PD__ROLE__ROLE_BOTH;
    }
    return (p && d) || b;
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
    r->t_accept_us = pd_net_now_us();
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
    r->state = RQ_QUEUED;
    rt->queue[(rt->q_head + rt->q_len++) % rt->n_slots] = slot;
    rt->n_active++;
    rt->requests_total++;
    PD_DEBUG("event=accepted req=%llu client_req=%llu prompt=%u max_tokens=%u",
             (unsigned long long)r->id, (unsigned long long)r->client_req, r->n_prompt,
             r->max_tokens);
    rt_dispatch(rt);
}

/* ====== Worker socket: work results ====== */

/* Appends one token of output index r->n_gen, with the bookkeeping that
 * goes with it (end of prefill, blocks charged to the decode worker). */
static int accept_token(rt_t *rt, rt_req_t *r, int32_t token, Pd__FinishReason fin)
{
    if (r->state == RQ_PREFILL && r->n_gen == r->gen_at_dispatch) {
        /* The first token of this epoch: prefill is done. */
        rt_worker_t *p = rt_worker_of(rt, r->p_worker, r->p_gen);
        if (p)
            p->prefill_tokens -= r->prefill_charged < p->prefill_tokens ? r->prefill_charged
                                                                         : p->prefill_tokens;
        r->prefill_charged = 0;
        r->state = RQ_DECODE;
    }
    int rc = req_append(rt, r, token, fin);
    if (rc)
        return rc;
    rt_worker_t *d = rt_worker_of(rt, r->d_worker, r->d_gen);
    if (d) {
        uint64_t b = rt_blocks_for(d->block_size, (uint64_t)r->n_prompt + r->n_gen + 1);
        if (b > r->blocks_charged) {
            d->blocks_est += b - r->blocks_charged;
            r->blocks_charged = b;
        }
    }
    return 0;
}

static void on_token(rt_t *rt, int wi, const Pd__TokenEntry *e)
{
    rt_req_t *r = rt_req_by_id(rt, e->request_id);
    rt_worker_t *w = &rt->workers[wi];
    if (r == NULL || r->finished || (r->state != RQ_PREFILL && r->state != RQ_DECODE) ||
        e->epoch != r->epoch) {
        PD_DEBUG("event=stale_token req=%llu epoch=%u worker=%s", (unsigned long long)e->request_id,
                 e->epoch, w->id);
        return;
    }
    bool from_p = r->p_worker == wi && r->p_gen == w->gen;
    bool from_d = r->d_worker == wi && r->d_gen == w->gen;
    if (!from_p && !from_d) {
        PD_WARN("event=foreign_token req=%llu worker=%s", (unsigned long long)r->id, w->id);
        return;
    }
    uint32_t vocab = pd_tok_n_vocab(rt->tok);
    if (e->token < 0 || (uint32_t)e->token >= vocab) {
        rt_req_fail(rt, r, PD__ERROR_CODE__INTERNAL,
                 "worker %s sent token id %d outside the vocabulary",
                 w->id, e->token);
        return;
    }
    Pd__FinishReason fin = e->has_finish_reason ? e->finish_reason : PD__FINISH_REASON__FINISH_NONE;
    if (e->index < r->n_gen) {
        PD_DEBUG("event=duplicate_token req=%llu index=%u", (unsigned long long)r->id, e->index);
        return;
    }
    if (e->index > r->n_gen) {
        if (r->n_stash == RT_STASH || e->index >= r->max_tokens) {
            rt_req_fail(rt, r, PD__ERROR_CODE__INTERNAL, "token index %u but %u expected (gap)",
                     e->index, r->n_gen);
            return;
        }
        r->stash[r->n_stash].index = e->index;
        r->stash[r->n_stash].token = e->token;
        r->stash[r->n_stash].finish = fin;
        r->n_stash++;
        return;
    }
    int rc = accept_token(rt, r, e->token, fin);
    while (rc == 0 && !r->finished) {
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
    if (r->finished)
        rt_req_settle(rt, r); /* workers still holding it let go now */
    rt_req_flush(rt, r);
}

void rt_on_tokens(rt_t *rt, int wi, const Pd__TokenBatch *b)
{
    for (size_t i = 0; i < b->n_entries; i++)
        if (b->entries[i])
            on_token(rt, wi, b->entries[i]);
}

/* ====== Client socket ====== */

void rt_on_cancel(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__Cancel *c)
{
    for (uint32_t i = 0; i < rt->n_slots; i++) {
        rt_req_t *r = &rt->reqs[i];
        if (r->state != RQ_FREE && r->client_req == c->request_id && r->cid_len == cid_len &&
            memcmp(r->cid, cid, cid_len) == 0 && !r->finished) {
            PD_INFO("event=cancelled req=%llu client_req=%llu", (unsigned long long)r->id,
                    (unsigned long long)r->client_req);
            r->finished = true;
            r->finish = PD__FINISH_REASON__FINISH_CANCELLED;
            r->text_ok = r->text_len; /* nothing more will come: release what was held */
            rt_req_settle(rt, r);
            rt_req_flush(rt, r);
            return;
        }
    }
    /* Unknown or finished: nothing to do (the final chunk is on its way). */
}

