/* fake_host.h -- a test double of the worker host (runtime/wkhost.h), for
 * the role tests (test_prefill_role.c, test_decode_role.c).
 *
 * The one test double in this project, and on purpose: what these tests
 * check is a role's contract with its host (runtime/wkrole.h), so the host
 * is what is replaced. Everything else is real: a real model from
 * $MODELS (scripts/models.sh), the real engine, KV cache and forward
 * passes, real ZeroMQ sockets for the roles' KV traffic, real protobuf-c
 * (every message a role sends is packed and unpacked, as the router would
 * read it).
 *
 * The fake host records what a role sends, keeps a clock the test moves
 * (leases, waits), and drives a role as the real loop would (fh_turn).
 */
#ifndef PD_FAKE_HOST_H
#define PD_FAKE_HOST_H

#include <stdlib.h>
#include <string.h>

#include "runtime/wkengine.h"
#include "runtime/wkrole.h"

#define FH_MAX_SENT 1024

typedef struct {
    pd_wkport_t port;
    uint64_t now_ms;       /* the role's clock: moved by the test */
    Pd__Msg *sent[FH_MAX_SENT]; /* what the role sent, as the router reads it */
    size_t n_sent;
    void *zctx;
    pd_config_t cfg;
    pd_wkengine_t eng;
} fake_host_t;

static inline void fh_send(void *host, const Pd__Msg *m)
{
    fake_host_t *h = host;
    size_t n = pd__msg__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    pd__msg__pack(m, buf);
    Pd__Msg *copy = pd__msg__unpack(NULL, n, buf);
    free(buf);
    assert_non_null(copy);
    assert_true(h->n_sent < FH_MAX_SENT);
    h->sent[h->n_sent++] = copy;
}

static inline uint64_t fh_now_ms(void *host) { return ((fake_host_t *)host)->now_ms; }

static inline const char *fh_model_path(const char *name, char *buf, size_t cap)
{
    const char *dir = getenv("MODELS");
    snprintf(buf, cap, "%s/%s", dir ? dir : "build/models", name);
    return buf;
}

/* A host with cfg defaults, model `name`, n_blocks KV blocks, and an engine
 * sized for the roles asked for. The test may change h->cfg before. */
static inline void fh_init(fake_host_t *h, const char *name, uint32_t n_blocks, bool prefill, bool decode)
{
    memset(h, 0, sizeof *h);
    h->port = (pd_wkport_t){ h, fh_send, fh_now_ms };
    h->now_ms = 1000000;
    pd_config_default(&h->cfg);
    fh_model_path(name, h->cfg.model.path, sizeof h->cfg.model.path);
    h->cfg.kv.num_blocks = n_blocks;
    h->cfg.model.threads = 1;
    h->cfg.prefill.max_batch_tokens = 256;
    h->cfg.prefill.max_batch_size = 8;
    h->cfg.prefill.wait_ms = 10;
    h->cfg.decode.max_batch_size = 8;
    h->cfg.worker.lease_ms = 2000;
    snprintf(h->cfg.decode.kv_endpoint, sizeof h->cfg.decode.kv_endpoint, "inproc://test-kv");
    pd_err_t err = { 0 };
    if (pd_wkengine_init(&h->eng, &h->cfg, prefill, decode, &err) != 0)
        fail_msg("engine for %s: %s", h->cfg.model.path, err.msg);
    h->zctx = zmq_ctx_new();
    assert_non_null(h->zctx);
}

static inline pd_wkrole_env_t fh_env(fake_host_t *h, const char *id)
{
    return (pd_wkrole_env_t){ &h->eng, &h->cfg, id, &h->port, h->zctx };
}

static inline void fh_clear(fake_host_t *h)
{
    for (size_t i = 0; i < h->n_sent; i++)
        pd__msg__free_unpacked(h->sent[i], NULL);
    h->n_sent = 0;
}

/* The role is freed by the test first (its sockets closed by close). */
static inline void fh_free(fake_host_t *h)
{
    fh_clear(h);
    zmq_ctx_term(h->zctx);
    pd_wkengine_free(&h->eng);
}

/* How many messages of body type c were sent; the last one (or NULL). */
static inline size_t fh_count(const fake_host_t *h, Pd__Msg__BodyCase c)
{
    size_t n = 0;
    for (size_t i = 0; i < h->n_sent; i++)
        n += h->sent[i]->body_case == c;
    return n;
}

static inline const Pd__Msg *fh_last(const fake_host_t *h, Pd__Msg__BodyCase c)
{
    for (size_t i = h->n_sent; i-- > 0;)
        if (h->sent[i]->body_case == c)
            return h->sent[i];
    return NULL;
}

/* Every TokenEntry sent for request req, in order, into out (up to cap). */
static inline size_t fh_tokens(const fake_host_t *h, uint64_t req, pd_token_entry_t *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < h->n_sent; i++) {
        if (h->sent[i]->body_case != PD__MSG__BODY_TOKENS)
            continue;
        const Pd__TokenBatch *b = h->sent[i]->tokens;
        for (size_t k = 0; k < b->n_entries; k++) {
            pd_token_entry_t t;
            pd_err_t err = { 0 };
            assert_int_equal(pd_codec_token_from_pb(b->entries[k], h->eng.vocab, &t, &err), 0);
            if (t.req == req && n < cap)
                out[n++] = t;
        }
    }
    return n;
}

/* One turn of the host's loop for role r: its sockets, a pass if ready
 * (the real pd_wkrole_run), its timers. Returns whether it ran. */
static inline bool fh_turn(fake_host_t *h, pd_wkrole_t r)
{
    r.ops->poll(r.self);
    bool ran = r.ops->ready(r.self);
    if (ran)
        pd_wkrole_run(&h->eng, r);
    r.ops->timers(r.self);
    return ran;
}

static inline void fh_load(pd_wkrole_t r, pd_worker_load_t *l)
{
    memset(l, 0, sizeof *l);
    r.ops->load(r.self, l);
}

/* A router message to the role, through real protobuf-c bytes. */
static inline void fh_task(pd_wkrole_t r, const Pd__Msg *m)
{
    size_t n = pd__msg__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    pd__msg__pack(m, buf);
    Pd__Msg *copy = pd__msg__unpack(NULL, n, buf);
    free(buf);
    assert_non_null(copy);
    r.ops->on_task(r.self, copy);
    pd__msg__free_unpacked(copy, NULL);
}

/* Greedy parameters for a request of n_prompt tokens and max_tokens. */
static inline pd_gen_params_t fh_greedy(uint32_t n_prompt, uint32_t max_tokens, uint32_t max_seq_len)
{
    pd_gen_params_t p;
    memset(&p, 0, sizeof p);
    pd_sampling_default(&p.s);
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.n_prompt = n_prompt;
    p.max_seq_len = max_seq_len;
    return p;
}

/* Runs the engine alone over tokens[0..n) in chunks, into sequence seq
 * (blocks reserved here); logits of the last position in h->eng.logits. */
static inline void fh_forward(fake_host_t *h, pd_kv_seq_t *seq, const int32_t *tokens, uint32_t from,
                       uint32_t n)
{
    pd_wkengine_t *e = &h->eng;
    assert_int_equal(pd_kv_seq_reserve(e->kv, seq, n), 0);
    for (uint32_t at = from; at < n;) {
        uint32_t take = n - at < e->max_fwd_tokens ? n - at : e->max_fwd_tokens;
        for (uint32_t j = 0; j < take; j++) {
            e->b_tokens[j] = tokens[at + j];
            e->b_pos[j] = (int32_t)(at + j);
            e->b_seq[j] = 0;
            e->b_want[j] = at + j + 1 == n;
        }
        e->b_tables[0] = seq->blocks;
        e->b_ntable[0] = seq->n_blocks;
        pd_batch_t b = { take, e->b_tokens, e->b_pos, e->b_seq, e->b_want, 1, e->b_tables,
                         e->b_ntable };
        pd_err_t err = { 0 };
        if (pd_forward(e->engine, &b, e->logits, &err) != 0)
            fail_msg("forward: %s", err.msg);
        at += take;
    }
}

/* The greedy continuation of prompt[0..n_prompt) by the engine alone, one
 * token at a time, into out[0..n_gen): what a role must reproduce. */
static inline void fh_reference(fake_host_t *h, const int32_t *prompt, uint32_t n_prompt,
                         uint32_t n_gen, int32_t *out)
{
    pd_wkengine_t *e = &h->eng;
    int32_t *all = malloc((n_prompt + n_gen) * sizeof *all);
    assert_non_null(all);
    memcpy(all, prompt, n_prompt * sizeof *all);
    pd_kv_seq_t seq = { 0 };
    pd_sampling_t greedy;
    pd_sampling_default(&greedy);
    fh_forward(h, &seq, all, 0, n_prompt);
    for (uint32_t i = 0; i < n_gen; i++) {
        uint32_t n = n_prompt + i;
        out[i] = pd_sample(&greedy, e->logits, e->vocab, n, all, n, e->scratch);
        all[n] = out[i];
        if (i + 1 < n_gen)
            fh_forward(h, &seq, all, n, n + 1);
    }
    pd_kv_seq_release(e->kv, &seq);
    free(all);
}

#endif
