/* test_net.c -- common/runtime/net.c: the bounded protobuf allocator, envelope
 * decoding, and the socket discipline (ROUTER_MANDATORY, IMMEDIATE,
 * non-blocking sends, frame limits). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "runtime/config.h"
#include "runtime/net.h"

static size_t pack_generate(size_t n_tokens, uint8_t **out)
{
    Pd__GenerateRequest g = PD__GENERATE_REQUEST__INIT;
    int32_t *toks = calloc(n_tokens ? n_tokens : 1, sizeof *toks);
    for (size_t i = 0; i < n_tokens; i++)
        toks[i] = (int32_t)(i % 1000);
    g.has_request_id = true;
    g.request_id = 7;
    g.n_prompt_tokens = n_tokens;
    g.prompt_tokens = toks;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_GENERATE;
    m.generate = &g;
    size_t len = pd__msg__get_packed_size(&m);
    *out = malloc(len);
    pd__msg__pack(&m, *out);
    free(toks);
    return len;
}

static void test_unpack_within_budget_frees_everything(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len = pack_generate(1000, &buf);
    pd_pb_alloc_t a;
    pd_pb_alloc_init(&a, 1u << 20);
    pd_err_t err = { 0 };
    Pd__Msg *m = pd_net_unpack(&a, buf, len, &err);
    assert_non_null(m);
    assert_int_equal(m->body_case, PD__MSG__BODY_GENERATE);
    assert_int_equal(m->generate->n_prompt_tokens, 1000);
    assert_int_equal(m->generate->prompt_tokens[999], 999);
    assert_true(a.used > 0);
    pd_net_msg_free(&a, m);
    assert_int_equal(a.used, 0);
    free(buf);
}

static void test_unpack_over_budget_is_refused(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len = pack_generate(100000, &buf); /* 400 KB of int32 once decoded */
    pd_pb_alloc_t a;
    pd_pb_alloc_init(&a, 64 * 1024);
    pd_err_t err = { 0 };
    Pd__Msg *m = pd_net_unpack(&a, buf, len, &err);
    assert_null(m);
    assert_int_equal(err.code, PD_ERANGE);
    assert_non_null(strstr(err.msg, "needs more than 65536 bytes"));
    assert_int_equal(a.used, 0);
    free(buf);
}

static void test_malformed_and_empty_envelopes(void **state)
{
    (void)state;
    pd_pb_alloc_t a;
    pd_pb_alloc_init(&a, 1u << 20);
    pd_err_t err = { 0 };
    const uint8_t garbage[] = { 0xff, 0xff, 0xff, 0xff, 0xff };
    assert_null(pd_net_unpack(&a, garbage, sizeof garbage, &err));
    assert_int_equal(err.code, PD_EFORMAT);
    assert_non_null(strstr(err.msg, "malformed"));
    /* A field number no version of the protocol uses: no body. */
    const uint8_t unknown[] = { 0x9a, 0x06, 0x00 };
    assert_null(pd_net_unpack(&a, unknown, sizeof unknown, &err));
    assert_non_null(strstr(err.msg, "no known body type"));
    assert_null(pd_net_unpack(&a, unknown, 0, &err));
    /* A length running past the end. */
    const uint8_t truncated[] = { 0x0a, 0x7f, 0x08 };
    assert_null(pd_net_unpack(&a, truncated, sizeof truncated, &err));
    assert_int_equal(a.used, 0);
}

static void test_body_names(void **state)
{
    (void)state;
    assert_string_equal(pd_net_body_name(PD__MSG__BODY_KV_TRANSFER), "kv_transfer");
    assert_string_equal(pd_net_body_name(PD__MSG__BODY_GENERATE), "generate");
    assert_string_equal(pd_net_body_name(999), "unknown");
}

/* The router's sockets take their ZMTP heartbeat from router.*, the other
 * processes' from worker.*: timeout = interval x liveness, TTL a multiple
 * of 100 ms. */
static void test_heartbeat_options_follow_their_keys(void **state)
{
    pd_config_t *c = malloc(sizeof *c);
    assert_non_null(c);
    pd_config_default(c);
    c->worker.heartbeat_ms = 200;
    c->worker.liveness = 10;
    c->router.heartbeat_ms = 500;
    c->router.liveness = 100;
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, c);
    assert_int_equal(o.heartbeat_ivl_ms, 200);
    assert_int_equal(o.heartbeat_timeout_ms, 2000);
    assert_int_equal(o.heartbeat_ttl_ms, 2000);
    pd_net_opts_heartbeat(&o, c->router.heartbeat_ms, c->router.liveness);
    assert_int_equal(o.heartbeat_ivl_ms, 500);
    assert_int_equal(o.heartbeat_timeout_ms, 50000);
    pd_net_opts_heartbeat(&o, 250, 3);
    assert_int_equal(o.heartbeat_timeout_ms, 750);
    assert_int_equal(o.heartbeat_ttl_ms, 800);
    pd_net_opts_heartbeat(&o, 60000, 100); /* capped at 10 minutes */
    assert_int_equal(o.heartbeat_timeout_ms, 600000);
    free(c);
}

typedef struct {
    void *ctx;
    pd_net_opts_t o;
} net_fixture_t;

static int setup_ctx(void **state)
{
    net_fixture_t *f = calloc(1, sizeof *f);
    pd_config_t *c = malloc(sizeof *c);
    pd_config_default(c);
    pd_net_opts_from_config(&f->o, c);
    free(c);
    f->ctx = zmq_ctx_new();
    *state = f;
    return 0;
}

static int teardown_ctx(void **state)
{
    net_fixture_t *f = *state;
    zmq_ctx_term(f->ctx);
    free(f);
    return 0;
}

static void test_bind_any_port_reports_it(void **state)
{
    net_fixture_t *f = *state;
    pd_err_t err = { 0 };
    void *s = pd_net_socket(f->ctx, ZMQ_ROUTER, &f->o, &err);
    assert_non_null(s);
    char bound[256];
    assert_int_equal(pd_net_bind(s, "tcp://127.0.0.1:0", bound, sizeof bound, &err), 0);
    assert_true(strncmp(bound, "tcp://127.0.0.1:", 16) == 0);
    assert_true(atoi(bound + 16) > 0);
    pd_net_close(s);
}

static void test_router_send_to_unknown_peer_is_egone(void **state)
{
    net_fixture_t *f = *state;
    pd_err_t err = { 0 };
    void *s = pd_net_socket(f->ctx, ZMQ_ROUTER, &f->o, &err);
    char bound[256];
    pd_net_bind(s, "tcp://127.0.0.1:0", bound, sizeof bound, &err);
    Pd__Heartbeat hb = PD__HEARTBEAT__INIT;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    int rc = pd_net_send(s, "nobody", 6, &m, false, &err);
    assert_int_equal(rc, PD_NET_EGONE);
    assert_non_null(strstr(err.msg, "EHOSTUNREACH"));
    pd_net_close(s);
}

static void test_dealer_without_peer_is_backpressure(void **state)
{
    net_fixture_t *f = *state;
    pd_err_t err = { 0 };
    void *s = pd_net_socket(f->ctx, ZMQ_DEALER, &f->o, &err);
    /* Nothing listens there: with ZMQ_IMMEDIATE nothing may be queued. */
    assert_int_equal(pd_net_connect(s, "tcp://127.0.0.1:1", &err), 0);
    Pd__Drain d = PD__DRAIN__INIT;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_DRAIN;
    m.drain = &d;
    assert_int_equal(pd_net_send(s, NULL, 0, &m, false, &err), PD_EFULL);
    pd_net_close(s);
}

static void test_roundtrip_and_frame_limit(void **state)
{
    net_fixture_t *f = *state;
    pd_err_t err = { 0 };
    void *r = pd_net_socket(f->ctx, ZMQ_ROUTER, &f->o, &err);
    char ep[256];
    pd_net_bind(r, "tcp://127.0.0.1:0", ep, sizeof ep, &err);
    void *d = pd_net_socket(f->ctx, ZMQ_DEALER, &f->o, &err);
    pd_net_connect(d, ep, &err);
    Pd__Cancel c = PD__CANCEL__INIT;
    c.has_request_id = true;
    c.request_id = 42;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_CANCEL;
    m.cancel = &c;
    int rc;
    for (int i = 0; i < 200 && (rc = pd_net_send(d, NULL, 0, &m, false, &err)) == PD_EFULL; i++) {
        zmq_pollitem_t it = { d, 0, ZMQ_POLLOUT, 0 };
        zmq_poll(&it, 1, 10);
    }
    assert_int_equal(rc, 0);
    pd_net_in_t *in = malloc(sizeof *in);
    in->n_frames = 0;
    zmq_pollitem_t it = { r, 0, ZMQ_POLLIN, 0 };
    zmq_poll(&it, 1, 2000);
    assert_int_equal(pd_net_recv(r, in, &err), 1);
    assert_int_equal(in->n_frames, 2); /* routing id + envelope */
    pd_pb_alloc_t a;
    pd_pb_alloc_init(&a, 1u << 16);
    Pd__Msg *got = pd_net_unpack(&a, zmq_msg_data(&in->frames[1]), zmq_msg_size(&in->frames[1]),
                                 &err);
    assert_non_null(got);
    assert_int_equal(got->cancel->request_id, 42);
    pd_net_msg_free(&a, got);
    pd_net_in_close(in);
    /* More frames than PD_NET_MAX_FRAMES: kept up to the limit, the rest
     * drained, the message marked truncated. */
    int total = PD_NET_MAX_FRAMES + 50;
    for (int i = 0; i < total; i++)
        zmq_send(d, "x", 1, i + 1 < total ? ZMQ_SNDMORE : 0);
    zmq_poll(&it, 1, 2000);
    assert_int_equal(pd_net_recv(r, in, &err), 1);
    assert_true(in->truncated);
    assert_int_equal(in->n_frames, PD_NET_MAX_FRAMES);
    pd_net_in_close(in);
    assert_int_equal(pd_net_recv(r, in, &err), 0); /* nothing left over */
    free(in);
    pd_net_close(d);
    pd_net_close(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unpack_within_budget_frees_everything),
        cmocka_unit_test(test_unpack_over_budget_is_refused),
        cmocka_unit_test(test_malformed_and_empty_envelopes),
        cmocka_unit_test(test_body_names),
        cmocka_unit_test(test_heartbeat_options_follow_their_keys),
        cmocka_unit_test_setup_teardown(test_bind_any_port_reports_it, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_router_send_to_unknown_peer_is_egone, setup_ctx,
                                        teardown_ctx),
        cmocka_unit_test_setup_teardown(test_dealer_without_peer_is_backpressure, setup_ctx,
                                        teardown_ctx),
        cmocka_unit_test_setup_teardown(test_roundtrip_and_frame_limit, setup_ctx, teardown_ctx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
