/* fuzz_proto_router.c -- libFuzzer target for the router's message handlers
 * (scripts/fuzz.sh): every byte a client or a worker can send.
 *
 * fuzz-sources: router/router.c router/requests.c router/clients.c router/sched.c router/workers.c router/metrics.c router/prefix.c router/kvindex.c
 *
 * A router state is built once (a small byte-level BPE tokenizer, a fake
 * model identity, ROUTER sockets bound to inproc endpoints, with DEALER
 * peers "C" (client), "P" and "D" (workers) connected and drained after
 * each operation; replies to any other peer fail with EHOSTUNREACH). Each
 * input starts from a clean state with a prefill worker "P" and a decode
 * worker "D" registered and one request from client "C" dispatched to
 * them, then runs
 * a sequence of operations, each [op:1][len:2 LE][len bytes]:
 *   op % 8 == 0..1  raw payload from client "C" / "K" -> rt_on_client_payload
 *   op % 8 == 2..4  raw payload from worker "P" / "D" / "X" (unregistered)
 *                   -> rt_on_worker_payload
 *   op % 8 == 5     a TokenBatch for the live request built from the bytes:
 *                   token, index, epoch delta and finish reason taken raw
 *                   (out-of-range ids, gaps, duplicates, stale epochs)
 *   op % 8 == 6     a Preempted for the live request (raw n_generated)
 *   op % 8 == 7     a Cancel from client "C" for its request
 * Invariants (abort() when broken): the number of live request slots
 * equals n_active, the queue holds exactly the QUEUED requests, exactly
 * the requests on workers (PREFILL, HANDOFF, DECODE) are dispatched and
 * name their workers, every token a request holds is inside the
 * vocabulary, and releasing every request returns every worker's charges
 * (prefill tokens, decoding count, blocks) to zero.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "base/log.h"
#include "router.h"
#include "tests/unit/tiny_bpe.h"

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_proto_router: %s (line %d)\n", #cond, __LINE__); \
            abort();                                                        \
        }                                                                   \
    } while (0)

#define IDENTITY 0x1234abcd5678ef00ull

/* The fuzzer's own state: built once, reset per input. */
static rt_t g_rt;
static pd_model_t g_model;
static void *g_peer[3]; /* DEALERs: client "C", workers "P" and "D" */

static pd_tok_t *make_tok(void)
{
    static const char *const merges[] = { "h e", "l l", "he ll", "o \xc4\xa0" };
    pd_tok_t *t = tiny_bpe(merges, sizeof merges / sizeof merges[0], true);
    CHECK(t);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    pd_log_init("fuzz", PD_LOG_ERROR);
    pd_log_set_stderr(false);
    rt_t *rt = &g_rt;
    memset(rt, 0, sizeof *rt);
    pd_config_default(&rt->cfg);
    rt->cfg.router.max_inflight = 4;
    rt->cfg.router.max_queue = 4;
    snprintf(g_model.name, sizeof g_model.name, "fuzz");
    g_model.identity = IDENTITY;
    g_model.cfg.ctx_len = 64;
    rt->model = &g_model;
    rt->identity = IDENTITY;
    rt->tok = make_tok();
    pd_err_t merr = { 0 };
    rt->metrics = pd_metrics_new("fuzz", &merr); /* counts every hostile outcome too */
    CHECK(rt->metrics);
    rt->max_seq_len = 64;
    CHECK(rt_prefix_init(rt, &merr) == 0); /* KvEvents from "P" reach the prefix index */
    rt->n_slots = rt->cfg.router.max_inflight + rt->cfg.router.max_queue;
    rt->reqs = calloc(rt->n_slots, sizeof *rt->reqs);
    rt->queue = calloc(rt->n_slots, sizeof *rt->queue);
    rt->tok_buf = malloc(((size_t)rt->max_seq_len + 1) * sizeof *rt->tok_buf);
    rt->in = calloc(1, sizeof *rt->in);
    CHECK(rt->reqs && rt->queue && rt->tok_buf && rt->in);
    pd_pb_alloc_init(&rt->alloc, (size_t)rt->cfg.net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                                     PD_PB_BASE_BUDGET);
    rt->zctx = zmq_ctx_new();
    CHECK(rt->zctx);
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, &rt->cfg);
    pd_err_t err = { 0 };
    rt->front = pd_net_socket(rt->zctx, ZMQ_ROUTER, &o, &err);
    rt->back = pd_net_socket(rt->zctx, ZMQ_ROUTER, &o, &err);
    CHECK(rt->front && rt->back);
    CHECK(pd_net_bind(rt->front, "inproc://fuzz-front", NULL, 0, &err) == 0);
    CHECK(pd_net_bind(rt->back, "inproc://fuzz-back", NULL, 0, &err) == 0);
    /* Real peers, so the router's sends succeed and requests go deep. */
    static const char *const names[3] = { "C", "P", "D" };
    for (int i = 0; i < 3; i++) {
        g_peer[i] = zmq_socket(rt->zctx, ZMQ_DEALER);
        CHECK(g_peer[i]);
        CHECK(zmq_setsockopt(g_peer[i], ZMQ_ROUTING_ID, names[i], 1) == 0);
        CHECK(zmq_connect(g_peer[i], i == 0 ? "inproc://fuzz-front" : "inproc://fuzz-back") == 0);
    }
    /* Let the ROUTERs take in the new pipes (and their routing ids). */
    size_t ev_len = sizeof(int);
    int ev = 0;
    zmq_getsockopt(rt->front, ZMQ_EVENTS, &ev, &ev_len);
    zmq_getsockopt(rt->back, ZMQ_EVENTS, &ev, &ev_len);
    return 0;
}

/* Drops whatever the router sent its peers. */
static void drain_peers(void)
{
    char buf[512];
    for (int i = 0; i < 3; i++)
        while (zmq_recv(g_peer[i], buf, sizeof buf, ZMQ_DONTWAIT) >= 0) {
        }
}

static void send_msg(bool worker, const char *peer, const Pd__Msg *m)
{
    size_t n = pd__msg__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    CHECK(buf);
    pd__msg__pack(m, buf);
    if (worker)
        rt_on_worker_payload(&g_rt, (const uint8_t *)peer, strlen(peer), buf, n);
    else
        rt_on_client_payload(&g_rt, (const uint8_t *)peer, strlen(peer), buf, n);
    free(buf);
}

static void register_worker(const char *zid, Pd__Role role)
{
    Pd__Register r = PD__REGISTER__INIT;
    r.has_protocol_version = r.has_role = r.has_model_identity = r.has_block_size = true;
    r.has_total_blocks = r.has_max_batch_size = r.has_max_batch_tokens = r.has_max_seq_len = true;
    r.protocol_version = PD_PROTOCOL_VERSION;
    r.worker_id = (char *)zid;
    r.role = role;
    r.kv_endpoint = role == PD__ROLE__ROLE_PREFILL ? (char *)"" : (char *)"inproc://fuzz-kv";
    r.model_identity = IDENTITY;
    r.model_name = (char *)"fuzz";
    r.block_size = 16;
    r.total_blocks = 32;
    r.max_batch_size = 4;
    r.max_batch_tokens = 256;
    r.max_seq_len = 64;
    r.has_prefix_caching = true;
    r.prefix_caching = role == PD__ROLE__ROLE_PREFILL; /* "P" may send KvEvents */
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_REGISTER;
    m.register_ = &r;
    send_msg(true, zid, &m);
}

static void reset(void)
{
    rt_t *rt = &g_rt;
    for (uint32_t i = 0; i < rt->n_slots; i++)
        rt_req_clear(&rt->reqs[i]);
    memset(rt->queue, 0, rt->n_slots * sizeof *rt->queue);
    memset(rt->workers, 0, sizeof rt->workers);
    for (int i = 0; i < RT_MAX_WORKERS; i++)
        rt->workers[i].gen = 1;
    rt->q_head = rt->q_len = rt->n_active = rt->n_dispatched = 0;
    rt->n_clients = 0; /* entries of requests cleared above */
    rt->next_seq = 0;
    rt->requests_total = rt->requests_failed = 0;
    register_worker("P", PD__ROLE__ROLE_PREFILL);
    register_worker("D", PD__ROLE__ROLE_DECODE);
    int32_t prompt[] = { 104, 101, 108, 108, 111 };
    Pd__GenerateRequest g = PD__GENERATE_REQUEST__INIT;
    g.has_request_id = g.has_max_tokens = true;
    g.request_id = 7;
    g.max_tokens = 8;
    g.n_prompt_tokens = 5;
    g.prompt_tokens = prompt;
    char *stop[] = { (char *)"ll" };
    g.n_stop = 1;
    g.stop = stop;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_GENERATE;
    m.generate = &g;
    send_msg(false, "C", &m);
    /* The preamble must reach a dispatched request, or the fuzzer would
     * only ever see the refusals. */
    CHECK(rt->n_active == 1 && rt->reqs[0].state == RQ_PREFILL);
}

static rt_req_t *live_request(void)
{
    for (uint32_t i = 0; i < g_rt.n_slots; i++)
        if (g_rt.reqs[i].state != RQ_FREE)
            return &g_rt.reqs[i];
    return NULL;
}

static uint32_t rd32(const uint8_t *p, size_t n, size_t at)
{
    uint32_t v = 0;
    for (size_t i = 0; i < 4; i++)
        v |= (uint32_t)(at + i < n ? p[at + i] : 0) << (8 * i);
    return v;
}

static void check_invariants(void)
{
    rt_t *rt = &g_rt;
    uint32_t live = 0, queued = 0, on_workers = 0;
    uint32_t vocab = pd_tok_n_vocab(rt->tok);
    for (uint32_t i = 0; i < rt->n_slots; i++) {
        const rt_req_t *r = &rt->reqs[i];
        CHECK((unsigned)r->state < RQ_N_STATES);
        if (r->state == RQ_FREE)
            continue;
        live++;
        queued += r->state == RQ_QUEUED;
        if (rt_req_on_workers(r)) {
            on_workers++;
            CHECK(r->p_worker >= 0 && r->d_worker >= 0);
        } else {
            CHECK(r->p_worker == -1 && r->d_worker == -1);
        }
        CHECK((uint64_t)r->n_prompt + r->n_gen <= r->cap_tokens);
        for (uint32_t k = 0; k < r->n_prompt + r->n_gen; k++)
            CHECK(r->tokens[k] >= 0 && (uint32_t)r->tokens[k] < vocab);
        CHECK(r->text_sent <= r->text_ok && r->text_ok <= r->text_len);
    }
    CHECK(live == rt->n_active);
    CHECK(rt->q_len <= rt->n_slots);
    CHECK(queued == rt->q_len && on_workers == rt->n_dispatched);
    for (uint32_t k = 0; k < rt->q_len; k++)
        CHECK(rt->reqs[rt->queue[(rt->q_head + k) % rt->n_slots]].state == RQ_QUEUED);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rt_t *rt = &g_rt;
    reset();
    size_t at = 0;
    while (at + 3 <= size) {
        uint8_t op = data[at];
        size_t len = (size_t)data[at + 1] | (size_t)data[at + 2] << 8;
        at += 3;
        if (len > size - at)
            len = size - at;
        const uint8_t *p = data + at;
        at += len;
        rt_req_t *r = live_request();
        switch (op % 8) {
        case 0: rt_on_client_payload(rt, (const uint8_t *)"C", 1, p, len); break;
        case 1: rt_on_client_payload(rt, (const uint8_t *)"K", 1, p, len); break;
        case 2: rt_on_worker_payload(rt, (const uint8_t *)"P", 1, p, len); break;
        case 3: rt_on_worker_payload(rt, (const uint8_t *)"D", 1, p, len); break;
        case 4: rt_on_worker_payload(rt, (const uint8_t *)"X", 1, p, len); break;
        case 5: {
            if (r == NULL)
                break;
            Pd__TokenEntry e = PD__TOKEN_ENTRY__INIT;
            Pd__TokenEntry *ep = &e;
            e.has_request_id = e.has_epoch = e.has_token = e.has_index = true;
            e.request_id = r->id;
            e.token = (int32_t)rd32(p, len, 0);
            e.index = rd32(p, len, 4) % 16 == 15 ? rd32(p, len, 4) : rd32(p, len, 4) % 16;
            e.epoch = r->epoch - (len > 8 ? p[8] % 2 : 0);
            if (len > 9) {
                e.has_finish_reason = true;
                e.finish_reason = (Pd__FinishReason)(p[9] % 6);
            }
            Pd__TokenBatch b = PD__TOKEN_BATCH__INIT;
            b.n_entries = 1;
            b.entries = &ep;
            Pd__Msg m = PD__MSG__INIT;
            m.body_case = PD__MSG__BODY_TOKENS;
            m.tokens = &b;
            send_msg(true, len > 10 && (p[10] & 1) ? "P" : "D", &m);
            break;
        }
        case 6: {
            if (r == NULL)
                break;
            Pd__Preempted pr = PD__PREEMPTED__INIT;
            pr.has_request_id = pr.has_epoch = pr.has_n_generated = true;
            pr.request_id = r->id;
            pr.epoch = r->epoch;
            pr.n_generated = rd32(p, len, 0);
            Pd__Msg m = PD__MSG__INIT;
            m.body_case = PD__MSG__BODY_PREEMPTED;
            m.preempted = &pr;
            send_msg(true, len > 4 && (p[4] & 1) ? "P" : "D", &m);
            break;
        }
        case 7: {
            Pd__Cancel c = PD__CANCEL__INIT;
            c.has_request_id = true;
            c.request_id = 7;
            Pd__Msg m = PD__MSG__INIT;
            m.body_case = PD__MSG__BODY_CANCEL;
            m.cancel = &c;
            send_msg(false, "C", &m);
            break;
        }
        }
        for (uint32_t i = 0; i < rt->n_slots; i++)
            if (rt->reqs[i].state != RQ_FREE)
                rt_stream_flush(rt, &rt->reqs[i]);
        check_invariants();
        drain_peers();
    }
    /* Everything released: no charge may be stranded on a worker. */
    for (uint32_t i = 0; i < rt->n_slots; i++)
        if (rt->reqs[i].state != RQ_FREE)
            rt_req_to(rt, &rt->reqs[i], RQ_FREE);
    CHECK(rt->n_active == 0 && rt->q_len == 0 && rt->n_dispatched == 0);
    CHECK(rt->n_clients == 0); /* client entries leave with their last request */
    drain_peers();
    for (int i = 0; i < RT_MAX_WORKERS; i++) {
        const rt_worker_t *w = &rt->workers[i];
        if (!w->used)
            continue;
        CHECK(w->prefill_tokens == 0);
        CHECK(w->n_decoding == 0);
        CHECK(w->blocks_est == 0);
    }
    return 0;
}
