/* test_mixed_step.c -- a colocated worker's mixed step (runtime/wkrole.h
 * pd_wkrole_run_mixed: SARATHI-style chunked prefill): a prefill role and a
 * decode role sharing one engine, driven by the fake host (fake_host.h)
 * as the worker host drives them. While sequences decode, a long prompt is
 * prefilled in chunks that ride in the same forward passes as the decode
 * tokens, every pass within its row budget; and every token of every
 * request -- the decoding ones, whose rows shared passes with the chunks,
 * and the long prompt's first token -- is the engine's own greedy token
 * computed alone (batch invariance: a row's result does not depend on what
 * else is in its pass). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "decode_worker/decode.h"
#include "fake_host.h"
#include "prefill_worker/prefill.h"

#define MODEL "tiny-llama-spm-f32.gguf"
#define N_SHORT 3       /* requests decoding while the long prompt comes */
#define SHORT_LEN 20
#define SHORT_GEN 40
#define LONG_LEN 300
#define LONG_GEN 4
#define BUDGET 16       /* rows of a mixed pass */

static void prompt_of(int32_t *t, uint32_t n, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)(3 + (i * 41 + salt * 89) % 3900);
}

static void send_task(pd_wkrole_t r, uint64_t req, const int32_t *tokens, uint32_t n,
                      uint32_t max_tokens)
{
    pd_gen_params_t p = fh_greedy(n, max_tokens, 0);
    Pd__GenParams gp;
    Pd__Sampling s;
    pd_codec_params_to_pb(&p, &gp, &s);
    gp.has_max_seq_len = false;
    Pd__PrefillTask t = PD__PREFILL_TASK__INIT;
    t.has_request_id = t.has_epoch = true;
    t.request_id = req;
    t.epoch = 1;
    t.n_tokens = n;
    t.tokens = (int32_t *)tokens;
    t.params = &gp;
    t.decode_worker_id = (char *)"w1"; /* this worker: colocated */
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_PREFILL;
    m.prefill = &t;
    fh_task(r, &m);
}

typedef struct {
    int alone_prefill, alone_decode, mixed;
    uint32_t max_rows;          /* the largest mixed pass */
    uint32_t max_allowed;       /* its bound: max(budget, decode rows + budget / 4) */
} turns_t;

/* One turn as the worker host runs it (wkhost.c run_roles). */
static void turn(fake_host_t *h, pd_wkrole_t pr, pd_wkrole_t dr, turns_t *t)
{
    pr.ops->poll(pr.self);
    dr.ops->poll(dr.self);
    bool p = pr.ops->ready(pr.self), d = dr.ops->ready(dr.self);
    if (p && d) {
        pd_decode_held_t held;
        pd_decode_held(dr.self, &held);
        uint32_t n_pre = 0;
        uint32_t rows = pd_wkrole_run_mixed(&h->eng, dr, pr, BUDGET, &n_pre);
        uint32_t n_dec = rows - n_pre;
        uint32_t allowed = BUDGET > n_dec + BUDGET / 4 ? BUDGET : n_dec + BUDGET / 4;
        t->mixed += n_pre > 0 && n_dec > 0;
        if (rows > t->max_rows) {
            t->max_rows = rows;
            t->max_allowed = allowed;
        }
        assert_true(rows <= allowed);
        assert_true(n_pre >= 1);
    } else if (p) {
        pd_wkrole_run(&h->eng, pr);
        t->alone_prefill++;
    } else if (d) {
        pd_wkrole_run(&h->eng, dr);
        t->alone_decode++;
    }
    pr.ops->timers(pr.self);
    dr.ops->timers(dr.self);
    h->now_ms += h->cfg.prefill.wait_ms; /* a lone prompt need not wait for company */
}

/* The stream sent for req equals the engine's greedy continuation ref. */
static void assert_stream(const fake_host_t *h, uint64_t req, const int32_t *ref, uint32_t n)
{
    pd_token_entry_t t[SHORT_GEN + 4];
    size_t got = fh_tokens(h, req, t, SHORT_GEN + 4);
    assert_int_equal(got, n);
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(t[i].index, i);
        if (t[i].token != ref[i])
            fail_msg("req %llu index %u: token %d, the engine alone says %d",
                     (unsigned long long)req, i, t[i].token, ref[i]);
    }
}

static void test_chunks_ride_with_decode_tokens(void **state)
{
    (void)state;
    fake_host_t h;
    fh_init(&h, MODEL, 256, true, true);
    pd_err_t err = { 0 };
    pd_wkrole_env_t env = fh_env(&h, "w1");
    pd_decode_t *d = pd_decode_new(&env, &err);
    assert_non_null(d);
    pd_kv_sink_t sink = pd_decode_sink(d);
    pd_prefill_t *p = pd_prefill_new(&env, &sink, &err);
    assert_non_null(p);
    pd_wkrole_t pr = pd_prefill_role(p), dr = pd_decode_role(d);

    int32_t shorts[N_SHORT][SHORT_LEN], ref_short[N_SHORT][SHORT_GEN];
    int32_t longp[LONG_LEN], ref_long[LONG_GEN];
    for (int i = 0; i < N_SHORT; i++) {
        prompt_of(shorts[i], SHORT_LEN, (uint32_t)i + 1);
        fh_reference(&h, shorts[i], SHORT_LEN, SHORT_GEN, ref_short[i]);
    }
    prompt_of(longp, LONG_LEN, 9);
    fh_reference(&h, longp, LONG_LEN, LONG_GEN, ref_long);

    /* The short prompts: one prefill pass alone (nothing decodes yet). */
    turns_t t = { 0 };
    for (int i = 0; i < N_SHORT; i++)
        send_task(pr, 10 + (uint64_t)i, shorts[i], SHORT_LEN, SHORT_GEN);
    for (int i = 0; i < 4 && t.alone_prefill == 0; i++)
        turn(&h, pr, dr, &t);
    assert_int_equal(t.alone_prefill, 1);
    /* A few steps of decoding, then the long prompt. */
    for (int i = 0; i < 3; i++)
        turn(&h, pr, dr, &t);
    send_task(pr, 20, longp, LONG_LEN, LONG_GEN);
    for (int i = 0; i < 400 && (pr.ops->busy(pr.self) || dr.ops->busy(dr.self)); i++)
        turn(&h, pr, dr, &t);
    assert_false(pr.ops->busy(pr.self));
    assert_false(dr.ops->busy(dr.self));

    /* The long prompt went in chunks beside the decode tokens... */
    assert_true(t.mixed >= LONG_LEN / BUDGET);
    print_message("# mixed passes %d (largest %u rows, bound %u), prefill alone %d, decode alone %d\n",
                  t.mixed, t.max_rows, t.max_allowed, t.alone_prefill, t.alone_decode);
    pd_worker_load_t lp, ld;
    fh_load(pr, &lp);
    fh_load(dr, &ld);
    assert_int_equal(lp.counters.prefill_tokens, N_SHORT * SHORT_LEN + LONG_LEN);
    assert_int_equal(ld.counters.decode_tokens, N_SHORT * (SHORT_GEN - 1) + LONG_GEN - 1);
    /* ...and every token is the engine's own, alone. */
    for (int i = 0; i < N_SHORT; i++)
        assert_stream(&h, 10 + (uint64_t)i, ref_short[i], SHORT_GEN);
    assert_stream(&h, 20, ref_long, LONG_GEN);
    assert_int_equal(pd_kv_n_used(h.eng.kv), 0);

    pr.ops->close(pr.self);
    dr.ops->close(dr.self);
    fh_clear(&h);
    zmq_ctx_term(h.zctx);
    pd_prefill_free(p);
    pd_decode_free(d);
    pd_wkengine_free(&h.eng);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunks_ride_with_decode_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
