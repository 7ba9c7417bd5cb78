/* test_rt_requests.c -- the router's request state machine (router.h,
 * requests.c): every arrow of the diagram driven through the router's own
 * message handlers on real sockets (rt_fixture.h), and what each arrow
 * sends: tasks to workers, Cancels to the workers that hold a request,
 * chunks and Errors to the client. Charges are test_rt_sched.c's.
 *
 * Where each of the 21 arrows is driven:
 *   FREE->QUEUED, QUEUED->PREFILL, PREFILL->HANDOFF, HANDOFF->DECODE,
 *     DECODE->DONE, DONE->FREE                          test_life
 *   DECODE->QUEUED (preempted; decode worker lost)      test_preempted,
 *                   (first in line again)               test_requeue_first,
 *                                                       test_decode_worker_lost
 *   PREFILL->QUEUED, HANDOFF->QUEUED (worker lost)      test_prefill_worker_lost
 *   PREFILL->QUEUED (task not sent)                     test_task_not_sent
 *   QUEUED, PREFILL, HANDOFF, DECODE -> DONE (cancel)   test_cancel
 *   QUEUED->FAILED, DECODE->FAILED, FAILED->FREE        test_deadline
 *   PREFILL->FAILED, HANDOFF->FAILED                    test_worker_error
 *   QUEUED, PREFILL, HANDOFF, DECODE -> FREE            test_client_timeout
 *   DECODE->FAILED (a gap past the stash)               test_token_order */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "rt_fixture.h"

#define FIN_NONE PD__FINISH_REASON__FINISH_NONE

/* Every (from, to) pair: exactly the arrows of router.h's diagram. */
static void test_arrows(void **state)
{
    (void)state;
    static const struct {
        rt_state_t from, to;
    } arrows[] = {
        { RQ_FREE, RQ_QUEUED },    { RQ_QUEUED, RQ_PREFILL }, { RQ_QUEUED, RQ_DONE },
        { RQ_QUEUED, RQ_FAILED },  { RQ_QUEUED, RQ_FREE },    { RQ_PREFILL, RQ_HANDOFF },
        { RQ_PREFILL, RQ_QUEUED }, { RQ_PREFILL, RQ_DONE },   { RQ_PREFILL, RQ_FAILED },
        { RQ_PREFILL, RQ_FREE },   { RQ_HANDOFF, RQ_DECODE }, { RQ_HANDOFF, RQ_QUEUED },
        { RQ_HANDOFF, RQ_DONE },   { RQ_HANDOFF, RQ_FAILED }, { RQ_HANDOFF, RQ_FREE },
        { RQ_DECODE, RQ_QUEUED },  { RQ_DECODE, RQ_DONE },    { RQ_DECODE, RQ_FAILED },
        { RQ_DECODE, RQ_FREE },    { RQ_DONE, RQ_FREE },      { RQ_FAILED, RQ_FREE },
    };
    int n_allowed = 0;
    for (int a = 0; a < RQ_N_STATES; a++)
        for (int b = 0; b < RQ_N_STATES; b++) {
            bool want = false;
            for (size_t k = 0; k < sizeof arrows / sizeof arrows[0]; k++)
                want |= arrows[k].from == (rt_state_t)a && arrows[k].to == (rt_state_t)b;
            if (rt_req_can((rt_state_t)a, (rt_state_t)b) != want)
                fail_msg("rt_req_can(%s, %s) should be %d", rt_state_name((rt_state_t)a),
                         rt_state_name((rt_state_t)b), want);
            n_allowed += want;
        }
    assert_int_equal(n_allowed, 21);
    assert_false(rt_req_can(RQ_N_STATES, RQ_FREE));
    assert_string_equal(rt_state_name(RQ_HANDOFF), "handoff");
}

/* The chunk the client got next: its index, tokens and finish reason. */
static void expect_chunk(fx_t *f, uint32_t index, uint32_t n_tokens, Pd__FinishReason fin)
{
    Pd__Msg *m = fx_expect(f, "C", PD__MSG__BODY_CHUNK);
    assert_int_equal(m->chunk->index, index);
    assert_int_equal(m->chunk->n_tokens, n_tokens);
    assert_int_equal(m->chunk->has_finish_reason ? m->chunk->finish_reason : FIN_NONE, fin);
    pd__msg__free_unpacked(m, NULL);
}

static void expect_error(fx_t *f, uint64_t id, Pd__ErrorCode code, const char *part)
{
    Pd__Msg *m = fx_expect(f, "C", PD__MSG__BODY_ERROR);
    assert_int_equal(m->error->request_id, id);
    assert_int_equal(m->error->code, code);
    if (strstr(m->error->message, part) == NULL)
        fail_msg("error \"%s\" does not say \"%s\"", m->error->message, part);
    pd__msg__free_unpacked(m, NULL);
}

/* A Cancel for r's epoch `epoch` reached `name`. */
static void expect_cancel(fx_t *f, const char *name, uint64_t rid, uint32_t epoch)
{
    Pd__Msg *m = fx_expect(f, name, PD__MSG__BODY_CANCEL);
    assert_int_equal(m->cancel->request_id, rid);
    assert_int_equal(m->cancel->epoch, epoch);
    pd__msg__free_unpacked(m, NULL);
}

/* Both tasks of a dispatch: the DecodeTask to d, the PrefillTask to p,
 * for n_tokens of history at epoch. */
static void expect_tasks(fx_t *f, const char *p, const char *d, uint32_t epoch, uint32_t n_tokens)
{
    Pd__Msg *m = fx_expect(f, d, PD__MSG__BODY_DECODE);
    assert_int_equal(m->decode->epoch, epoch);
    assert_int_equal(m->decode->n_history, n_tokens);
    assert_string_equal(m->decode->prefill_worker_id, p);
    pd__msg__free_unpacked(m, NULL);
    m = fx_expect(f, p, PD__MSG__BODY_PREFILL);
    assert_int_equal(m->prefill->epoch, epoch);
    assert_int_equal(m->prefill->n_tokens, n_tokens);
    assert_string_equal(m->prefill->decode_worker_id, d);
    assert_int_equal(m->prefill->params->n_generated, n_tokens - 5);
    pd__msg__free_unpacked(m, NULL);
}

static void expect_quiet(fx_t *f, const char *name)
{
    Pd__Msg *m = fx_recv(f, name, 20);
    if (m)
        fail_msg("%s: unexpected %s", name, pd_net_body_name(m->body_case));
}

/* FREE -> QUEUED -> PREFILL -> HANDOFF -> DECODE -> DONE -> FREE. */
static void test_life(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 3);
    rt_req_t *r = fx_req(&f, 1);
    uint64_t rid = r->id;
    assert_int_equal(r->state, RQ_PREFILL); /* QUEUED, then dispatched at once */
    assert_int_equal(r->epoch, 1);
    assert_int_equal(f.rt.n_active, 1);
    assert_int_equal(f.rt.n_dispatched, 1);
    assert_int_equal(f.rt.q_len, 0);
    expect_tasks(&f, "P", "D", 1, 5);

    fx_token(&f, "P", r, 0, 'x', FIN_NONE);
    assert_int_equal(r->state, RQ_HANDOFF);
    expect_chunk(&f, 0, 1, FIN_NONE);
    fx_token(&f, "D", r, 1, 'y', FIN_NONE);
    assert_int_equal(r->state, RQ_DECODE);
    expect_chunk(&f, 1, 1, FIN_NONE);
    fx_token(&f, "D", r, 2, 'z', FIN_NONE); /* max_tokens: the output is complete */
    assert_true(fx_gone(&f, 1));         /* DONE, final chunk sent, FREE */
    Pd__Msg *m = fx_expect(&f, "C", PD__MSG__BODY_CHUNK);
    assert_int_equal(m->chunk->finish_reason, PD__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(m->chunk->usage->completion_tokens, 3);
    assert_int_equal(m->chunk->timings->n_preemptions, 0);
    assert_int_equal(m->chunk->text.len, 1);
    pd__msg__free_unpacked(m, NULL);
    expect_cancel(&f, "D", rid, 1); /* the decode worker lets go */
    expect_quiet(&f, "P");          /* the prefill worker was done with it */
    assert_int_equal(f.rt.n_active, 0);
    assert_int_equal(f.rt.n_dispatched, 0);
    assert_int_equal(f.rt.n_clients, 0);
    fx_free(&f);
}

/* DECODE -> QUEUED (preempted) -> PREFILL at epoch 2 with the output so
 * far as history; the old epoch's tokens no longer count. */
static void test_preempted(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 8);
    rt_req_t *r = fx_req(&f, 1);
    fx_token(&f, "P", r, 0, 'x', FIN_NONE);
    fx_token(&f, "D", r, 1, 'y', FIN_NONE);
    assert_int_equal(r->state, RQ_DECODE);
    fx_token(&f, "D", r, 3, 'q', FIN_NONE); /* early: waits in the stash */
    assert_int_equal(r->n_stash, 1);
    fx_drain(&f);
    rt_req_t old = *r;
    fx_preempted(&f, "D", r);
    assert_int_equal(r->state, RQ_PREFILL); /* requeued at the head, dispatched again */
    assert_int_equal(r->epoch, 2);
    assert_int_equal(r->n_preempt, 1);
    assert_int_equal(r->n_gen, 2);
    expect_cancel(&f, "D", r->id, 1);
    expect_tasks(&f, "P", "D", 2, 7);
    expect_quiet(&f, "P");
    fx_token(&f, "D", &old, 2, 'q', FIN_NONE); /* epoch 1: stale */
    assert_int_equal(r->n_gen, 2);
    expect_quiet(&f, "C");
    fx_token(&f, "P", r, 2, 'x', FIN_NONE);
    assert_int_equal(r->state, RQ_HANDOFF);
    assert_int_equal(r->n_gen, 3); /* the old epoch's stashed token is gone */
    fx_token(&f, "D", r, 3, 'y', PD__FINISH_REASON__FINISH_EOS);
    assert_true(fx_gone(&f, 1));
    expect_chunk(&f, 2, 1, FIN_NONE);
    Pd__Msg *m = fx_expect(&f, "C", PD__MSG__BODY_CHUNK);
    assert_int_equal(m->chunk->finish_reason, PD__FINISH_REASON__FINISH_EOS);
    assert_int_equal(m->chunk->timings->n_preemptions, 1);
    pd__msg__free_unpacked(m, NULL);
    fx_free(&f);
}

/* What the cluster status says worker `name` holds (`assigned`). */
static uint32_t status_assigned(fx_t *f, const char *name)
{
    Pd__StatusRequest q = PD__STATUS_REQUEST__INIT;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_STATUS_REQUEST;
    m.status_request = &q;
    fx_send(f, "C", false, &m);
    Pd__Msg *st = fx_expect(f, "C", PD__MSG__BODY_STATUS);
    int64_t n = -1;
    for (size_t i = 0; i < st->status->n_workers; i++)
        if (strcmp(st->status->workers[i]->worker_id, name) == 0)
            n = st->status->workers[i]->assigned;
    pd__msg__free_unpacked(st, NULL);
    if (n < 0)
        fail_msg("status: no worker %s", name);
    return (uint32_t)n;
}

/* A re-dispatched request goes first in line: before one that waited
 * QUEUED all along (max_inflight 1, so only one can go). */
static void test_requeue_first(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 1, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 8);
    fx_generate(&f, 2, 5, 8);
    fx_generate(&f, 3, 5, 8);
    rt_req_t *a = fx_req(&f, 1), *b = fx_req(&f, 2), *c = fx_req(&f, 3);
    fx_token(&f, "P", a, 0, 'x', FIN_NONE);
    fx_token(&f, "D", a, 1, 'y', FIN_NONE);
    assert_int_equal(b->state, RQ_QUEUED);
    fx_drain(&f);
    fx_preempted(&f, "D", a);
    assert_int_equal(a->state, RQ_PREFILL);
    assert_int_equal(a->epoch, 2);
    assert_int_equal(b->state, RQ_QUEUED);
    assert_int_equal(c->state, RQ_QUEUED);
    assert_int_equal(f.rt.q_len, 2);
    expect_cancel(&f, "D", a->id, 1);
    expect_tasks(&f, "P", "D", 2, 7);
    /* Its end lets the next in line go at the reactor's next pass: the
     * one that came first. */
    fx_cancel(&f, 1);
    rt_dispatch(&f.rt);
    assert_int_equal(b->state, RQ_PREFILL);
    assert_int_equal(c->state, RQ_QUEUED);
    fx_free(&f);
}

/* A prefill worker answers for a request until the decode worker's first
 * token: its loss re-queues PREFILL and HANDOFF requests, not DECODE ones. */
static void test_prefill_worker_lost(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    int p = fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 8); /* PREFILL */
    fx_generate(&f, 2, 5, 8); /* HANDOFF */
    fx_generate(&f, 3, 5, 8); /* DECODE */
    rt_req_t *a = fx_req(&f, 1), *b = fx_req(&f, 2), *c = fx_req(&f, 3);
    fx_token(&f, "P", b, 0, 'x', FIN_NONE);
    fx_token(&f, "P", c, 0, 'x', FIN_NONE);
    fx_token(&f, "D", c, 1, 'y', FIN_NONE);
    assert_int_equal(a->state, RQ_PREFILL);
    assert_int_equal(b->state, RQ_HANDOFF);
    assert_int_equal(c->state, RQ_DECODE);
    fx_drain(&f);
    /* What the status counts is what a loss re-queues (rt_req_held_by). */
    assert_true(rt_req_held_by(&f.rt, a, p) && rt_req_held_by(&f.rt, b, p));
    assert_false(rt_req_held_by(&f.rt, c, p));
    assert_int_equal(status_assigned(&f, "P"), 2);
    assert_int_equal(status_assigned(&f, "D"), 3);
    rt_worker_drop(&f.rt, p, "test");
    /* No prefill worker left, and D is no colocated worker: they wait. */
    assert_int_equal(a->state, RQ_QUEUED);
    assert_int_equal(b->state, RQ_QUEUED);
    assert_int_equal(c->state, RQ_DECODE);
    assert_int_equal(f.rt.q_len, 2);
    assert_int_equal(a->n_preempt + b->n_preempt, 2);
    assert_int_equal(fx_count(&f, "D", PD__MSG__BODY_CANCEL), 2);
    fx_worker(&f, "P2", PD__ROLE__ROLE_PREFILL, 0);
    assert_int_equal(a->state, RQ_PREFILL);
    assert_int_equal(b->state, RQ_PREFILL);
    assert_int_equal(a->epoch, 2);
    assert_int_equal(b->epoch, 2);
    assert_int_equal(fx_count(&f, "P2", PD__MSG__BODY_PREFILL), 2);
    fx_free(&f);
}

/* The decode worker's loss re-queues everything it holds. */
static void test_decode_worker_lost(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    int d = fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 8);
    rt_req_t *r = fx_req(&f, 1);
    fx_token(&f, "P", r, 0, 'x', FIN_NONE);
    fx_token(&f, "D", r, 1, 'y', FIN_NONE);
    fx_drain(&f);
    rt_worker_drop(&f.rt, d, "test");
    assert_int_equal(r->state, RQ_QUEUED);
    assert_int_equal(r->p_worker, -1);
    assert_int_equal(f.rt.n_dispatched, 0);
    fx_worker(&f, "D2", PD__ROLE__ROLE_DECODE, 64);
    assert_int_equal(r->state, RQ_PREFILL);
    expect_tasks(&f, "P", "D2", 2, 7);
    fx_free(&f);
}

/* A task that cannot be sent (the worker's connection is gone) puts the
 * request back in line without counting a preemption. */
static void test_task_not_sent(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    /* Registered, but nothing is connected under this routing id. */
    Pd__Register g = PD__REGISTER__INIT;
    g.has_protocol_version = g.has_role = g.has_model_identity = g.has_block_size = true;
    g.protocol_version = PD_PROTOCOL_VERSION;
    g.worker_id = (char *)"Z";
    g.role = PD__ROLE__ROLE_PREFILL;
    g.model_identity = FX_IDENTITY;
    g.block_size = 16;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_REGISTER;
    m.register_ = &g;
    fx_send(&f, "Z", true, &m);
    assert_true(rt_worker_by_zid(&f.rt, "Z", 1) >= 0);
    fx_generate(&f, 1, 5, 8);
    rt_req_t *r = fx_req(&f, 1);
    assert_int_equal(r->state, RQ_QUEUED);
    assert_int_equal(r->epoch, 1);
    assert_int_equal(r->n_preempt, 0);
    assert_int_equal(f.rt.q_len, 1);
    assert_int_equal(f.rt.n_dispatched, 0);
    /* The decode task had left: the decode worker is told to drop it. */
    Pd__Msg *t = fx_expect(&f, "D", PD__MSG__BODY_DECODE);
    pd__msg__free_unpacked(t, NULL);
    expect_cancel(&f, "D", r->id, 1);
    fx_free(&f);
}

/* Cancel in QUEUED, PREFILL, HANDOFF and DECODE: DONE with
 * FINISH_CANCELLED, then FREE; only the workers that hold the request are
 * told. */
static void test_cancel(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 1, 4); /* one dispatched at a time: the next waits QUEUED */
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 8);
    fx_generate(&f, 2, 5, 8);
    rt_req_t *a = fx_req(&f, 1), *b = fx_req(&f, 2);
    uint64_t aid = a->id;
    assert_int_equal(a->state, RQ_PREFILL);
    assert_int_equal(b->state, RQ_QUEUED);
    fx_drain(&f);

    fx_cancel(&f, 2); /* QUEUED */
    assert_true(fx_gone(&f, 2));
    assert_int_equal(f.rt.q_len, 0);
    expect_chunk(&f, 0, 0, PD__FINISH_REASON__FINISH_CANCELLED);
    expect_quiet(&f, "P");
    expect_quiet(&f, "D");

    fx_cancel(&f, 1); /* PREFILL: both workers have it */
    assert_true(fx_gone(&f, 1));
    expect_chunk(&f, 0, 0, PD__FINISH_REASON__FINISH_CANCELLED);
    expect_cancel(&f, "P", aid, 1);
    expect_cancel(&f, "D", aid, 1);
    assert_int_equal(f.rt.n_dispatched, 0);

    fx_generate(&f, 4, 5, 8); /* HANDOFF: the KV is on its way to D */
    rt_req_t *h = fx_req(&f, 4);
    fx_token(&f, "P", h, 0, 'x', FIN_NONE);
    assert_int_equal(h->state, RQ_HANDOFF);
    uint64_t hid = h->id;
    fx_drain(&f);
    fx_cancel(&f, 4);
    assert_true(fx_gone(&f, 4));
    expect_chunk(&f, 1, 0, PD__FINISH_REASON__FINISH_CANCELLED);
    expect_cancel(&f, "D", hid, 1);
    expect_quiet(&f, "P"); /* its computing is over; D drops the incoming KV */
    assert_int_equal(f.rt.n_dispatched, 0);

    fx_generate(&f, 3, 5, 8); /* DECODE: the prefill worker is done with it */
    rt_req_t *c = fx_req(&f, 3);
    fx_token(&f, "P", c, 0, 'x', FIN_NONE);
    fx_token(&f, "D", c, 1, 'y', FIN_NONE);
    assert_int_equal(c->state, RQ_DECODE);
    uint64_t cid = c->id;
    fx_drain(&f);
    fx_cancel(&f, 3);
    assert_true(fx_gone(&f, 3));
    expect_chunk(&f, 2, 0, PD__FINISH_REASON__FINISH_CANCELLED);
    expect_cancel(&f, "D", cid, 1);
    expect_quiet(&f, "P");
    fx_cancel(&f, 3); /* finished: nothing happens */
    expect_quiet(&f, "C");
    fx_free(&f);
}

/* Past its deadline a request FAILS (QUEUED or DECODE) with an Error. */
static void test_deadline(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 1, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 8);
    fx_generate(&f, 2, 5, 8);
    rt_req_t *a = fx_req(&f, 1), *b = fx_req(&f, 2);
    fx_token(&f, "P", a, 0, 'x', FIN_NONE);
    fx_token(&f, "D", a, 1, 'y', FIN_NONE);
    assert_int_equal(a->state, RQ_DECODE);
    assert_int_equal(b->state, RQ_QUEUED);
    uint64_t aid = a->id;
    fx_drain(&f);
    rt_req_sweep(&f.rt, a->deadline_us); /* not past it yet */
    assert_int_equal(a->state, RQ_DECODE);
    uint64_t late = b->deadline_us > a->deadline_us ? b->deadline_us : a->deadline_us;
    rt_req_sweep(&f.rt, late + 1);
    assert_true(fx_gone(&f, 1));
    assert_true(fx_gone(&f, 2));
    assert_int_equal(f.rt.requests_failed, 2);
    expect_error(&f, 1, PD__ERROR_CODE__DEADLINE_EXCEEDED, "after 2 tokens");
    expect_error(&f, 2, PD__ERROR_CODE__DEADLINE_EXCEEDED, "after 0 tokens");
    expect_cancel(&f, "D", aid, 1);
    assert_int_equal(f.rt.q_len, 0);
    assert_int_equal(f.rt.n_active, 0);
    fx_free(&f);
}

/* A worker's Error about a request FAILS it; a foreign worker's is ignored. */
static void test_worker_error(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_worker(&f, "D2", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 8);
    rt_req_t *r = fx_req(&f, 1);
    const char *holder = f.rt.workers[r->d_worker].id;
    const char *other = strcmp(holder, "D") == 0 ? "D2" : "D";
    fx_drain(&f);
    Pd__Error e = PD__ERROR__INIT;
    e.has_request_id = e.has_code = true;
    e.request_id = r->id;
    e.code = PD__ERROR_CODE__INTERNAL;
    e.message = (char *)"kv checksum";
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_ERROR;
    m.error = &e;
    fx_send(&f, other, true, &m);
    assert_int_equal(r->state, RQ_PREFILL);
    fx_send(&f, holder, true, &m);
    assert_true(fx_gone(&f, 1));
    expect_error(&f, 1, PD__ERROR_CODE__INTERNAL, "kv checksum");
    expect_cancel(&f, holder, e.request_id, 1);

    /* HANDOFF -> FAILED: the prefill worker could not ship the KV. */
    fx_generate(&f, 2, 5, 8);
    r = fx_req(&f, 2);
    holder = f.rt.workers[r->d_worker].id;
    fx_token(&f, "P", r, 0, 'x', FIN_NONE);
    assert_int_equal(r->state, RQ_HANDOFF);
    fx_drain(&f);
    e.request_id = r->id;
    e.code = PD__ERROR_CODE__UNAVAILABLE;
    e.message = (char *)"kv transfer failed";
    fx_send(&f, "P", true, &m);
    assert_true(fx_gone(&f, 2));
    expect_error(&f, 2, PD__ERROR_CODE__UNAVAILABLE, "worker P: kv transfer failed");
    expect_cancel(&f, holder, e.request_id, 1);
    expect_quiet(&f, "P");
    assert_int_equal(f.rt.n_dispatched, 0);
    assert_int_equal(f.rt.requests_failed, 2);
    fx_free(&f);
}

/* A client that declared heartbeats and falls silent loses every request
 * it has, in whatever state (QUEUED, PREFILL, HANDOFF, DECODE -> FREE):
 * a best-effort Error each, and the workers holding them are told. */
static void test_client_timeout(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 3, 4);
    f.rt.cfg.router.client_heartbeat_ms = 100;
    f.rt.cfg.router.client_liveness = 3; /* silent > 300 ms: gone */
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    for (uint64_t id = 1; id <= 4; id++)
        fx_generate(&f, id, 5, 8);
    rt_req_t *r[5];
    for (uint64_t id = 1; id <= 4; id++)
        r[id] = fx_req(&f, id);
    fx_token(&f, "P", r[2], 0, 'x', FIN_NONE);
    fx_token(&f, "P", r[3], 0, 'x', FIN_NONE);
    fx_token(&f, "D", r[3], 1, 'y', FIN_NONE);
    assert_int_equal(r[1]->state, RQ_PREFILL);
    assert_int_equal(r[2]->state, RQ_HANDOFF);
    assert_int_equal(r[3]->state, RQ_DECODE);
    assert_int_equal(r[4]->state, RQ_QUEUED);
    uint64_t rid[5];
    for (int i = 1; i <= 4; i++)
        rid[i] = r[i]->id;
    rt_client_heard(&f.rt, (const uint8_t *)"C", 1, true); /* it heartbeats */
    fx_drain(&f);
    uint64_t t0 = rt_client_of(&f.rt, r[1])->last_rx_ms; /* when it was last heard */
    /* Checked every 150 ms (a slower reactor would forgive the silence);
     * 300 ms of silence is still within liveness. */
    for (uint64_t t = t0; t <= t0 + 300; t += 150) {
        rt_clients_check(&f.rt, t);
        assert_int_equal(f.rt.n_active, 4);
    }
    Pd__Msg *hb = fx_expect(&f, "C", PD__MSG__BODY_HEARTBEAT); /* told our interval */
    assert_int_equal(hb->heartbeat->interval_ms, 100);
    assert_int_equal(hb->heartbeat->liveness, 3);
    pd__msg__free_unpacked(hb, NULL);
    fx_drain(&f);
    rt_clients_check(&f.rt, t0 + 450);
    for (uint64_t id = 1; id <= 4; id++)
        assert_true(fx_gone(&f, id));
    assert_int_equal(f.rt.n_active, 0);
    assert_int_equal(f.rt.n_dispatched, 0);
    assert_int_equal(f.rt.q_len, 0);
    assert_int_equal(f.rt.n_clients, 0);
    assert_int_equal(f.rt.requests_failed, 4);
    for (uint64_t id = 1; id <= 4; id++)
        expect_error(&f, id, PD__ERROR_CODE__CANCELLED, "client silent for");
    expect_cancel(&f, "P", rid[1], 1); /* PREFILL: P still computes it */
    expect_quiet(&f, "P");
    /* D held the three dispatched ones, in slot order. */
    assert_int_equal(fx_count(&f, "D", PD__MSG__BODY_CANCEL), 3);
    fx_free(&f);
}

/* Tokens out of place: a foreign worker's and duplicates are dropped, an
 * early one waits in the stash, a gap past the stash FAILS the request. */
static void test_token_order(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_worker(&f, "D2", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 40);
    rt_req_t *r = fx_req(&f, 1);
    const char *holder = f.rt.workers[r->d_worker].id;
    const char *other = strcmp(holder, "D") == 0 ? "D2" : "D";
    fx_token(&f, other, r, 0, 'x', FIN_NONE);
    assert_int_equal(r->n_gen, 0);
    assert_int_equal(r->state, RQ_PREFILL);
    fx_token(&f, holder, r, 1, 'y', FIN_NONE); /* early: stashed */
    assert_int_equal(r->n_gen, 0);
    fx_token(&f, "P", r, 0, 'x', FIN_NONE); /* fills the gap: both go out */
    assert_int_equal(r->n_gen, 2);
    assert_int_equal(r->state, RQ_DECODE);
    fx_token(&f, holder, r, 1, 'y', FIN_NONE); /* duplicate */
    assert_int_equal(r->n_gen, 2);
    fx_token(&f, holder, r, 30, 'y', FIN_NONE);
    assert_int_equal(r->n_stash, 1);
    for (uint32_t i = 0; i < RT_STASH; i++)
        fx_token(&f, holder, r, 10 + i, 'y', FIN_NONE);
    assert_true(fx_gone(&f, 1));
    fx_drain(&f);
    fx_free(&f);
}

/* A malformed entry from one of the request's workers (the codec refuses
 * it: a token outside the vocabulary, an unknown finish reason) fails the
 * request; the same from a stale epoch is only dropped. */
static void test_bad_token(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 5, 8);
    fx_generate(&f, 2, 5, 8);
    rt_req_t *a = fx_req(&f, 1), *b = fx_req(&f, 2);
    fx_drain(&f);
    rt_req_t stale = *a;
    stale.epoch = a->epoch + 1;
    fx_token(&f, "P", &stale, 0, FX_EOS + 1, FIN_NONE);
    assert_int_equal(a->state, RQ_PREFILL);
    fx_token(&f, "P", a, 0, FX_EOS + 1, FIN_NONE);
    assert_true(fx_gone(&f, 1));
    expect_error(&f, 1, PD__ERROR_CODE__INTERNAL, "worker P: token.token: 261 outside the vocabulary");
    fx_token(&f, "P", b, 0, 'x', (Pd__FinishReason)42);
    assert_true(fx_gone(&f, 2));
    expect_error(&f, 2, PD__ERROR_CODE__INTERNAL, "token.finish_reason: 42 unknown");
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arrows),
        cmocka_unit_test(test_life),
        cmocka_unit_test(test_preempted),
        cmocka_unit_test(test_requeue_first),
        cmocka_unit_test(test_prefill_worker_lost),
        cmocka_unit_test(test_decode_worker_lost),
        cmocka_unit_test(test_task_not_sent),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_worker_error),
        cmocka_unit_test(test_client_timeout),
        cmocka_unit_test(test_token_order),
        cmocka_unit_test(test_bad_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
