/* run_chat.c -- pd-bench --dataset multi-turn: each conversation sends its
 * next turn only after its previous answer has completed (and --think-time
 * has passed); the answer the server returned becomes part of the next
 * prompt. Conversations start by the arrival process and run concurrently.
 * See bench.h and client/chatconv.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* The answer of finished request r as token ids: the router's ids, or with
 * --target the text re-encoded by the tokenizer (cut to max_answer, since a
 * text need not encode back to as many tokens as were generated). *fresh
 * says *ids must be freed. 0, or -1 with err set. */
static int answer_ids(const bench_t *b, const req_t *r, const pd_tok_t *tok, uint32_t max_answer,
                      const int32_t **ids, size_t *n, bool *fresh, pd_err_t *err)
{
    *fresh = false;
    if (!b->http) {
        *ids = r->out_ids;
        *n = r->n_out;
        return 0;
    }
    *ids = NULL;
    *n = 0;
    if (r->n_text == 0)
        return 0;
    size_t cap = r->n_text + 8, got = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (v == NULL)
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    int rc = pd_tok_encode(tok, r->out_text, r->n_text, false, v, cap, &got, err);
    if (rc != 0) {
        free(v);
        return rc;
    }
    *ids = v;
    *n = got > max_answer ? max_answer : got;
    *fresh = true;
    return 0;
}

/* Takes in the finished turn of conversation k: its answer extends the
 * conversation, the next turn is due after --think-time. A failed turn (or
 * an answer the conversation refuses) ends the conversation. */
static void take_answer(bench_t *b, chat_t *ch, size_t k, const pd_tok_t *tok)
{
    req_t *r = &b->reqs[ch->req[k] - 1];
    ch->req[k] = 0;
    pd_chatconv_t *cv = &ch->conv[k];
    if (!r->ok) {
        fprintf(stderr, "pd-bench: conversation %zu stops at turn %u: %s\n", k + 1, r->turn,
                r->error ? r->error : "failed");
        ch->stopped[k] = true;
        return;
    }
    const int32_t *ids;
    size_t n;
    bool fresh;
    pd_err_t err = { 0 };
    int rc = answer_ids(b, r, tok, cv->max_answer, &ids, &n, &fresh, &err);
    if (rc == 0)
        rc = pd_chatconv_answer(cv, ids, n, &err);
    if (fresh)
        free((void *)ids);
    if (rc != 0) {
        fprintf(stderr, "pd-bench: conversation %zu stops at turn %u: %s\n", k + 1, r->turn,
                err.msg);
        ch->stopped[k] = true;
        return;
    }
    ch->ready_ns[k] = pd_now_ns() + (uint64_t)b->o->think_time_ms * 1000000ull;
}

/* Sends the next turn of conversation k: 0 sent (or failed at once), 1 not
 * now (retry later), -1 out of memory. */
static int send_turn(bench_t *b, pd_client_t *c, chat_t *ch, size_t k)
{
    if (chat_push_turn(ch, k) != 0)
        return -1;
    size_t i = ch->items.n - 1; /* request number i sends item i */
    int rc = b->http ? run_http_submit(b, &ch->items, i) : run_zmq_submit(b, c, &ch->items, i);
    if (rc != 0) { /* not sent: the item goes; the next try builds it again */
        free(ch->items.items[i].ids);
        ch->items.n--;
        return rc;
    }
    ch->req[k] = b->n_reqs; /* index + 1 of the request just counted */
    return 0;
}

int bench_run_chat(bench_t *b, pd_client_t *c, chat_t *ch, const pd_tok_t *tok, rng_t *rng)
{
    const opts_t *o = b->o;
    b->keep_output = true;
    b->ds = &ch->items;
    double theta = isinf(o->rate) ? 0 : 1.0 / (o->rate * o->burstiness);
    b->start_ns = pd_now_ns();
    uint64_t at = b->start_ns, drain_until = 0, last_bar = 0;
    for (size_t k = 0; k < ch->n; k++) { /* conversation starts: the arrival process */
        ch->ready_ns[k] = at;
        if (theta > 0)
            at += (uint64_t)(rng_gamma(rng, o->burstiness, theta) * 1e9);
    }
    size_t total = ch->n * ch->turns;
    for (;;) {
        uint64_t t = pd_now_ns();
        uint64_t next = UINT64_MAX;
        size_t live = 0;
        for (size_t k = 0; k < ch->n; k++) {
            if (ch->req[k] && b->reqs[ch->req[k] - 1].state == REQ_DONE)
                take_answer(b, ch, k, tok);
            if (ch->stopped[k] || pd_chatconv_done(&ch->conv[k]))
                continue;
            live++;
            if (ch->req[k] || b->interrupted)
                continue;
            if (ch->ready_ns[k] > t || (o->max_concurrency && b->inflight >= o->max_concurrency)) {
                next = ch->ready_ns[k] < next ? ch->ready_ns[k] : next;
                continue;
            }
            int rc = send_turn(b, c, ch, k);
            if (rc < 0) {
                fprintf(stderr, "pd-bench: out of memory\n");
                return -1;
            }
            if (rc > 0) /* no socket free now: try again in 1 ms */
                next = t + 1000000ull;
        }
        if (b->inflight == 0 && (live == 0 || b->interrupted))
            break;
        if (b->interrupted && t >= drain_until)
            break;
        int wait_ms = BENCH_POLL_MS;
        if (next != UINT64_MAX && !(o->max_concurrency && b->inflight >= o->max_concurrency))
            wait_ms = next <= t ? 0 : (next - t) / 1000000ull < BENCH_POLL_MS
                                          ? (int)((next - t) / 1000000ull) : BENCH_POLL_MS;
        if (bench_step(b, c, wait_ms, &drain_until) != 0)
            return -1;
        if (o->progress && pd_now_ns() - last_bar > BENCH_PROGRESS_NS) {
            last_bar = pd_now_ns();
            fprintf(stderr, "\r%zu/%zu turns done, %zu in flight, %.1f s ", b->done, total,
                    b->inflight, (double)(pd_now_ns() - b->start_ns) / 1e9);
        }
    }
    b->end_ns = 0; /* the last final chunk */
    for (size_t i = 0; i < b->n_reqs; i++)
        if (b->reqs[i].state == REQ_DONE && b->reqs[i].end_ns > b->end_ns)
            b->end_ns = b->reqs[i].end_ns;
    if (b->end_ns == 0 || b->interrupted || b->done != b->n_reqs)
        b->end_ns = pd_now_ns();
    if (o->progress)
        fprintf(stderr, "\r%zu/%zu turns done, %.1f s\n", b->done, total,
                (double)(b->end_ns - b->start_ns) / 1e9);
    return 0;
}
