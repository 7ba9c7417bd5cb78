/* run_zmq.c -- pd-bench against a pdserve router: requests through
 * libpdclient (ZeroMQ), timed from its chunks. See bench.h. */
#include <string.h>

#include "bench.h"
#include "base/grow.h"

static int on_chunk(const pd_chunk_t *ch, void *user)
{
    bench_t *b = user;
    uint64_t t = pd_now_ns();
    req_t *r = bench_map_get(b, ch->request_id);
    if (r == NULL || r->state != REQ_INFLIGHT)
        return 0;
    if (ch->n_tokens > 0) {
        if (ch->index != r->n_tok)
            bench_req_fail(r, "%s%s", "chunk index gap: tokens lost or duplicated", "");
        if (bench_push_ns(&r->chunk_ns, &r->n_chunks, &r->cap_chunks, t) != 0)
            bench_req_fail(r, "%s%s", "out of memory", "");
        for (size_t k = 0; k < ch->n_tokens; k++)
            if (bench_push_ns(&r->tok_ns, &r->n_tok, &r->cap_tok, t) != 0)
                bench_req_fail(r, "%s%s", "out of memory", "");
        if (r->keep && pd_grow((void **)&r->out_ids, &r->cap_out, r->n_out + ch->n_tokens,
                               sizeof *r->out_ids, 64) != 0)
            bench_req_fail(r, "%s%s", "out of memory", "");
        else if (r->keep) {
            memcpy(r->out_ids + r->n_out, ch->tokens, ch->n_tokens * sizeof *ch->tokens);
            r->n_out += ch->n_tokens;
        }
    }
    if (!ch->is_final)
        return 0;
    r->end_ns = t;
    r->state = REQ_DONE;
    r->finish = ch->finish;
    r->usage_prompt = ch->prompt_tokens;
    r->usage_completion = ch->completion_tokens;
    r->queue_us = ch->queue_us;
    r->router_ttft_us = ch->ttft_us;
    r->router_e2e_us = ch->e2e_us;
    r->n_preemptions = ch->n_preemptions;
    if (ch->status != PD_STATUS_OK)
        bench_req_fail(r, "%s: %s", pd_status_name(ch->status), ch->error ? ch->error : "");
    else if (r->error == NULL)
        r->ok = true;
    if (r->prompt_len == 0)
        r->prompt_len = ch->prompt_tokens;
    b->inflight--;
    b->done++;
    if (b->done == b->n_reqs)
        b->end_ns = t;
    return 0;
}

int run_zmq_submit(bench_t *b, pd_client_t *c, const dataset_t *d, size_t i)
{
    req_t *r = bench_new_req(b);
    if (r == NULL)
        return -1;
    r->item = i % d->n;
    const item_t *it = &d->items[r->item];
    r->prompt_len = it->prompt_len;
    r->expected_len = it->output_len;
    r->conv = it->conv;
    r->turn = it->turn;
    r->keep = b->keep_output;
    pd_gen_request_t g;
    pd_gen_request_default(&g);
    if (it->ids) {
        g.prompt_tokens = it->ids;
        g.n_prompt_tokens = it->n_ids;
    } else {
        g.prompt = it->text;
    }
    g.max_tokens = it->output_len;
    g.ignore_eos = b->o->ignore_eos;
    g.temperature = b->o->temperature;
    g.seed = b->o->seed + i;
    g.stream = true;
    pd_err_t err = { 0 };
    r->send_ns = pd_now_ns();
    int rc = pd_client_submit(c, &g, &r->id, &err);
    if (rc == PD_EFULL)
        return 1; /* retry later */
    b->n_reqs++;
    if (rc != 0) {
        r->state = REQ_DONE;
        r->end_ns = pd_now_ns();
        bench_req_fail(r, "submit: %s%s", err.msg, "");
        b->done++;
        return 0;
    }
    if (bench_map_put(b, r->id, b->n_reqs - 1) != 0)
        return -1;
    r->state = REQ_INFLIGHT;
    b->inflight++;
    if (b->inflight > b->max_inflight)
        b->max_inflight = b->inflight;
    return 0;
}

int run_zmq_poll(bench_t *b, pd_client_t *c, int wait_ms, pd_err_t *err)
{
    return pd_client_poll(c, wait_ms, on_chunk, b, err);
}

void run_zmq_cancel(bench_t *b, pd_client_t *c)
{
    for (size_t i = 0; i < b->n_reqs; i++)
        if (b->reqs[i].state == REQ_INFLIGHT)
            pd_client_cancel(c, b->reqs[i].id, NULL);
}
