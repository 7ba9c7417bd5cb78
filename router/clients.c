/* clients.c -- the router's client front: the table of clients with
 * requests in flight (liveness, heartbeats, their end) and the output
 * streams (chunks, final chunks and Errors, back-pressure, held output).
 * See router.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/grow.h"
#include "base/log.h"
#include "router.h"

/* ====== Clients: the table and liveness ======
 *
 * Paranoid Pirate toward clients: any message from a client counts as a
 * beat; a client that declared heartbeats and has requests in flight gets a
 * Heartbeat (carrying the interval and liveness it should use) whenever the
 * router has sent it nothing for router.client_heartbeat_ms, and loses all
 * its requests once silent for router.client_liveness intervals. The table
 * is searched linearly: it holds only clients with requests in flight. */

static int client_find(const rt_t *rt, const uint8_t *cid, size_t len)
{
    for (size_t i = 0; i < rt->n_clients; i++) {
        const rt_client_t *c = &rt->clients[i];
        if (c->used && c->cid_len == len && memcmp(c->cid, cid, len) == 0)
            return (int)i;
    }
    return -1;
}

int rt_client_attach(rt_t *rt, rt_req_t *r, bool beats)
{
    uint64_t now = pd_now_ms();
    int ci = client_find(rt, r->cid, r->cid_len);
    if (ci < 0) {
        size_t i = 0;
        while (i < rt->n_clients && rt->clients[i].used)
            i++;
        if (i == rt->n_clients) {
            if (pd_grow((void **)&rt->clients, &rt->cap_clients, i + 1, sizeof *rt->clients,
                        16) != 0)
                return PD_ENOMEM;
            rt->n_clients++;
        }
        rt_client_t *c = &rt->clients[i];
        memset(c, 0, sizeof *c);
        c->used = true;
        memcpy(c->cid, r->cid, r->cid_len);
        c->cid_len = r->cid_len;
        ci = (int)i;
    }
    rt_client_t *c = &rt->clients[ci];
    c->n_reqs++;
    c->last_rx_ms = now;
    if (beats && !c->beats) {
        c->beats = true;
        c->last_tx_ms = 0; /* tell it our interval and liveness at the next sweep */
    }
    r->client = (uint32_t)ci;
    return 0;
}

rt_client_t *rt_client_of(rt_t *rt, const rt_req_t *r)
{
    if (r->client >= rt->n_clients)
        return NULL;
    rt_client_t *c = &rt->clients[r->client];
    if (!c->used || c->cid_len != r->cid_len || memcmp(c->cid, r->cid, r->cid_len) != 0)
        return NULL; /* never attached (a refused request) */
    return c;
}

void rt_client_detach(rt_t *rt, rt_req_t *r)
{
    rt_client_t *c = rt_client_of(rt, r);
    if (c == NULL)
        return;
    if (c->n_reqs > 0)
        c->n_reqs--;
    if (c->n_reqs == 0) {
        c->used = false;
        while (rt->n_clients > 0 && !rt->clients[rt->n_clients - 1].used)
            rt->n_clients--;
    }
}

/* A message just went to r's client (no heartbeat needed for a while). */
static void client_sent(rt_t *rt, const rt_req_t *r)
{
    rt_client_t *c = rt_client_of(rt, r);
    if (c) {
        c->last_tx_ms = pd_now_ms();
        c->stuck_since_us = 0; /* the connection took a message: it is moving */
    }
}

/* A send to r's client was refused (back-pressure, or no memory for the
 * message): starts the connection's stall clock. */
static void client_refused(rt_t *rt, const rt_req_t *r, uint64_t now_us)
{
    rt_client_t *c = rt_client_of(rt, r);
    if (c && c->stuck_since_us == 0)
        c->stuck_since_us = now_us;
}

/* Clients without requests have no entry and are not tracked. */
void rt_client_heard(rt_t *rt, const uint8_t *cid, size_t len, bool heartbeat)
{
    int ci = client_find(rt, cid, len);
    if (ci < 0)
        return;
    rt->clients[ci].last_rx_ms = pd_now_ms();
    if (heartbeat && !rt->clients[ci].beats) {
        rt->clients[ci].beats = true;
        rt->clients[ci].last_tx_ms = 0;
    }
}

static void cid_hex(const uint8_t *cid, size_t len, char *out, size_t cap)
{
    size_t n = len > 16 ? 16 : len, o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o + 3 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%02x", cid[i]);
    if (n < len && o + 4 < cap)
        snprintf(out + o, cap - o, "...");
}

/* Ends every request of client ci (the entry goes with the last one). With
 * why (a timeout) each request gets a best-effort Error(CANCELLED) in case
 * the client comes back; without (the client is gone) nothing is sent. The
 * workers are told to drop them at once, as for a Cancel. */
static void client_end(rt_t *rt, size_t ci, const char *event, const char *why)
{
    char hex[64];
    cid_hex(rt->clients[ci].cid, rt->clients[ci].cid_len, hex, sizeof hex);
    uint64_t silent = pd_now_ms() - rt->clients[ci].last_rx_ms;
    uint32_t n = 0;
    for (uint32_t i = 0; i < rt->n_slots && ci < rt->n_clients && rt->clients[ci].used; i++) {
        rt_req_t *r = &rt->reqs[i];
        if (r->state == RQ_FREE || r->client != ci)
            continue;
        PD_DEBUG("event=request_cancelled req=%llu client_req=%llu reason=%s",
                 (unsigned long long)r->id, (unsigned long long)r->client_req, event);
        if (why)
            pd_net_send_error(rt->front, r->cid, r->cid_len, r->client_req,
                              PD__ERROR_CODE__CANCELLED, "%s", why);
        /* One whose Error was still held was counted by rt_req_fail. */
        bool failed = r->state == RQ_FAILED;
        pd_metrics_request_failed(rt->metrics, failed ? r->err_code : PD__ERROR_CODE__CANCELLED);
        if (!failed)
            rt->requests_failed++;
        rt_req_to(rt, r, RQ_FREE);
        n++;
    }
    PD_WARN("event=%s client=%s requests=%u silent_ms=%llu", event, hex, n,
            (unsigned long long)silent);
}

void rt_clients_check(rt_t *rt, uint64_t now)
{
    uint64_t ivl = rt->cfg.router.client_heartbeat_ms;
    uint64_t dead_after = ivl * rt->cfg.router.client_liveness;
    /* A reactor that did not run for a while (stopped, starved) heard
     * nothing meanwhile: give every client a fresh window, not the blame. */
    uint64_t stalled = dead_after / 2 > 50 ? dead_after / 2 : 50;
    if (rt->last_client_check_ms && now - rt->last_client_check_ms > stalled)
        for (size_t i = 0; i < rt->n_clients; i++)
            rt->clients[i].last_rx_ms = now;
    rt->last_client_check_ms = now;
    Pd__Heartbeat hb = PD__HEARTBEAT__INIT;
    hb.has_interval_ms = hb.has_liveness = true;
    hb.interval_ms = rt->cfg.router.client_heartbeat_ms;
    hb.liveness = rt->cfg.router.client_liveness;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    for (size_t i = 0; i < rt->n_clients; i++) {
        rt_client_t *c = &rt->clients[i];
        if (!c->used || !c->beats)
            continue;
        if (now - c->last_rx_ms > dead_after) {
            char why[200];
            snprintf(why, sizeof why,
                     "client silent for %llu ms (router.client_liveness %u x "
                     "router.client_heartbeat_ms %u): request cancelled",
                     (unsigned long long)(now - c->last_rx_ms), rt->cfg.router.client_liveness,
                     rt->cfg.router.client_heartbeat_ms);
            client_end(rt, i, "client_timeout", why);
            continue;
        }
        if (now - c->last_tx_ms < ivl)
            continue;
        int rc = pd_net_send(rt->front, c->cid, c->cid_len, &m, false, NULL);
        if (rc == 0) {
            c->last_tx_ms = now;
            c->stuck_since_us = 0;
        }
        else if (rc == PD_NET_EGONE)
            client_end(rt, i, "client_gone", NULL);
        /* PD_EFULL: it is not reading; its silence will tell. */
    }
}

/* ====== Streams: held output ======
 *
 * ZeroMQ's back-pressure (EAGAIN at the router's net.hwm) belongs to a
 * client's connection, not to one of its streams: with many streams on one
 * connection some sends are refused even while the client reads promptly.
 * So a refused request is held with a FIFO ticket, every later flush of that
 * client's requests queues behind it, and the timer's pass (rt_stream_retry)
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

void rt_stream_unhold(rt_t *rt, rt_req_t *r)
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

/* ====== Streams: sending ====== */

/* Sends a failed request's Error (retry: in rt_stream_retry's order); releases
 * it unless back-pressure holds it. */
static void flush_error(rt_t *rt, rt_req_t *r, bool retry)
{
    uint64_t now = pd_now_us();
    if (!retry && req_must_wait(rt, r)) {
        req_hold(rt, r, now);
        return;
    }
    int rc = pd_net_send_error(rt->front, r->cid, r->cid_len, r->client_req, r->err_code, "%s",
                               r->err_msg ? r->err_msg : "error");
    if (rc == PD_EFULL || rc == PD_ENOMEM) { /* no room now: the timer retries */
        req_hold(rt, r, now);
        client_refused(rt, r, now);
        return;
    }
    if (rc == 0)
        client_sent(rt, r);
    pd_metrics_request_failed(rt->metrics, r->err_code);
    rt_req_to(rt, r, RQ_FREE);
}

/* Sends what the client has not seen yet (and the final chunk at DONE, the
 * Error at FAILED); retry: rt_stream_retry's turn for a held request. Frees
 * the request after its terminal message. Back-pressure (EAGAIN) holds everything
 * for a later try (the next chunk carries all of it); a vanished client
 * ends it. */
static void req_flush(rt_t *rt, rt_req_t *r, bool retry)
{
    if (r->state == RQ_FAILED) {
        flush_error(rt, r, retry);
        return;
    }
    bool is_final = r->state == RQ_DONE;
    uint32_t n_new = r->n_gen - r->tok_sent;
    size_t t_new = r->text_ok - r->text_sent;
    if (!is_final && (!r->stream || (n_new == 0 && t_new == 0))) {
        rt_stream_unhold(rt, r); /* nothing to send: must not hold up its client */
        return;
    }
    if (!retry && req_must_wait(rt, r)) {
        req_hold(rt, r, pd_now_us());
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
    uint64_t now = pd_now_us();
    if (is_final) {
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
        client_refused(rt, r, now);
        return; /* the timer retries; a stalled stream is cut there */
    }
    if (rc) {
        PD_WARN("event=client_gone req=%llu msg=\"%s\"", (unsigned long long)r->id, err.msg);
        rt->requests_failed++;
        rt_req_to(rt, r, RQ_FREE);
        return;
    }
    rt_stream_unhold(rt, r);
    client_sent(rt, r);
    if (r->t_first_us == 0 && n_new > 0)
        r->t_first_us = now;
    r->tok_sent = r->n_gen;
    r->text_sent = r->text_ok;
    if (is_final) {
        pd_metrics_request_done(rt->metrics, r->finish, r->n_prompt, r->n_gen, tm.queue_us,
                                r->t_first_us ? r->t_first_us - r->t_accept_us : 0, tm.e2e_us);
        PD_INFO("event=request_done req=%llu client_req=%llu prompt=%u out=%u finish=%d "
                "preempted=%u e2e_ms=%.1f",
                (unsigned long long)r->id, (unsigned long long)r->client_req, r->n_prompt,
                r->n_gen, (int)r->finish, r->n_preempt, (double)(now - r->t_accept_us) / 1000.0);
        rt_req_to(rt, r, RQ_FREE);
    }
}

void rt_stream_flush(rt_t *rt, rt_req_t *r)
{
    req_flush(rt, r, false);
}

static int held_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct rt_held *)a)->ticket, y = ((const struct rt_held *)b)->ticket;
    return x < y ? -1 : x > y;
}

void rt_stream_retry(rt_t *rt, uint64_t now)
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
            if (r->state != RQ_FAILED) /* rt_req_fail counted one whose Error was held */
                rt->requests_failed++;
            rt_req_to(rt, r, RQ_FREE);
            continue;
        }
        if (c && c->retry_pass == pass)
            continue; /* its connection refused an older one in this pass */
        req_flush(rt, r, true);
        if (c && r->state != RQ_FREE && r->block_ticket)
            c->retry_pass = pass;
    }
}
