/* test_codec.c -- proto/codec.c: every structure goes to the wire and back
 * unchanged (through real protobuf-c packing), and every field a decoder
 * checks is refused, alone, with its name in the message. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/codec.h"

/* Packs msg with its descriptor and unpacks it again: what a peer reads. */
static void *wire(const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    assert_int_equal(protobuf_c_message_pack(msg, buf), n);
    ProtobufCMessage *out = protobuf_c_message_unpack(msg->descriptor, NULL, n, buf);
    free(buf);
    assert_non_null(out);
    return out;
}

static void assert_refused(int rc, const pd_err_t *err, const char *field)
{
    assert_int_equal(rc, PD_EINVAL);
    if (strstr(err->msg, field) == NULL)
        fail_msg("refusal \"%s\" does not name %s", err->msg, field);
}

/* ====== Sampling ====== */

static pd_sampling_t some_sampling(void)
{
    pd_sampling_t s;
    pd_sampling_default(&s);
    s.temperature = 0.7f;
    s.top_k = 40;
    s.top_p = 0.9f;
    s.min_p = 0.05f;
    s.repetition_penalty = 1.1f;
    s.presence_penalty = 0.5f;
    s.frequency_penalty = -0.25f;
    s.seed = 0x123456789abcdef0ull;
    return s;
}

static void test_sampling_round_trip(void **state)
{
    (void)state;
    pd_sampling_t in = some_sampling(), out;
    Pd__Sampling m;
    pd_codec_sampling_to_pb(&in, &m);
    Pd__Sampling *r = wire(&m.base);
    pd_err_t err = { 0 };
    assert_int_equal(pd_codec_sampling_from_pb(r, &out, &err), 0);
    assert_memory_equal(&in, &out, sizeof in);
    pd__sampling__free_unpacked(r, NULL);
}

static void test_sampling_defaults(void **state)
{
    (void)state;
    pd_sampling_t def, out;
    pd_sampling_default(&def);
    pd_err_t err = { 0 };
    assert_int_equal(pd_codec_sampling_from_pb(NULL, &out, &err), 0);
    assert_memory_equal(&def, &out, sizeof def);
    Pd__Sampling empty = PD__SAMPLING__INIT;
    assert_int_equal(pd_codec_sampling_from_pb(&empty, &out, &err), 0);
    assert_memory_equal(&def, &out, sizeof def);
}

/* Spoils field k of m; returns the name the refusal must carry, or NULL
 * past the last case. */
static const char *spoil_sampling(Pd__Sampling *m, int k)
{
    switch (k) {
    case 0: m->temperature = -1; return "sampling.temperature";
    case 1: m->temperature = NAN; return "sampling.temperature";
    case 2: m->temperature = 1e9f; return "temperature";
    case 3: m->top_p = 0; return "sampling.top_p";
    case 4: m->top_p = 1.5f; return "sampling.top_p";
    case 5: m->min_p = 1; return "sampling.min_p";
    case 6: m->top_k = -3; return "sampling.top_k";
    case 7: m->repetition_penalty = 0; return "repetition_penalty";
    case 8: m->presence_penalty = 3; return "presence_penalty";
    case 9: m->frequency_penalty = -3; return "frequency_penalty";
    default: return NULL;
    }
}

static void test_sampling_refusals(void **state)
{
    (void)state;
    for (int k = 0;; k++) {
        pd_sampling_t s = some_sampling(), out;
        Pd__Sampling m;
        pd_codec_sampling_to_pb(&s, &m);
        const char *field = spoil_sampling(&m, k);
        if (field == NULL)
            break;
        pd_err_t err = { 0 };
        assert_refused(pd_codec_sampling_from_pb(&m, &out, &err), &err, field);
    }
}

/* ====== Generation parameters ====== */

static const pd_gen_limits_t LIM = { .vocab = 1000, .max_seq_len = 256 };

static pd_gen_params_t some_params(void)
{
    pd_gen_params_t p;
    memset(&p, 0, sizeof p);
    p.s = some_sampling();
    p.max_tokens = 64;
    p.n_stop_ids = 3;
    p.stop_ids[0] = 2;
    p.stop_ids[1] = 999;
    p.stop_ids[2] = 0;
    p.ignore_eos = true;
    p.n_prompt = 100;
    p.n_generated = 5;
    p.max_seq_len = 200;
    return p;
}

static void test_params_round_trip(void **state)
{
    (void)state;
    pd_gen_params_t in = some_params(), out;
    Pd__GenParams m;
    Pd__Sampling s;
    pd_codec_params_to_pb(&in, &m, &s);
    Pd__GenParams *r = wire(&m.base);
    pd_err_t err = { 0 };
    assert_int_equal(pd_codec_params_from_pb(r, &LIM, &out, &err), 0);
    assert_memory_equal(&in, &out, sizeof in);
    pd__gen_params__free_unpacked(r, NULL);
}

static void test_params_context(void **state)
{
    (void)state;
    pd_gen_params_t in = some_params(), out;
    Pd__GenParams m;
    Pd__Sampling s;
    pd_err_t err = { 0 };
    /* Absent, 0 or above the receiver's: the receiver's context. */
    for (int k = 0; k < 3; k++) {
        pd_codec_params_to_pb(&in, &m, &s);
        if (k == 0)
            m.has_max_seq_len = false;
        else
            m.max_seq_len = k == 1 ? 0 : 100000;
        assert_int_equal(pd_codec_params_from_pb(&m, &LIM, &out, &err), 0);
        assert_int_equal(out.max_seq_len, LIM.max_seq_len);
    }
}

static int32_t g_many[PD_MAX_STOP_IDS + 1];

static const char *spoil_params(Pd__GenParams *m, int k)
{
    switch (k) {
    case 0: m->sampling->top_p = 2; return "sampling.top_p";
    case 1: m->has_max_tokens = false; return "params.max_tokens";
    case 2: m->max_tokens = 0; return "params.max_tokens";
    case 3: m->n_stop_ids = PD_MAX_STOP_IDS + 1; m->stop_ids = g_many; return "params.stop_ids";
    case 4: m->stop_ids[1] = 1000; return "params.stop_ids[1]";
    case 5: m->stop_ids[2] = -1; return "params.stop_ids[2]";
    case 6: m->n_prompt = 0; return "params.n_prompt";
    case 7: m->n_prompt = 256; return "params.n_prompt";
    case 8: m->n_generated = 64; return "params.n_generated";
    case 9: m->n_prompt = 190; m->n_generated = 10; return "fill the context";
    default: return NULL;
    }
}

static void test_params_refusals(void **state)
{
    (void)state;
    for (int k = 0;; k++) {
        pd_gen_params_t p = some_params(), out;
        int32_t stops[PD_MAX_STOP_IDS];
        memcpy(stops, p.stop_ids, sizeof stops);
        Pd__GenParams m;
        Pd__Sampling s;
        pd_codec_params_to_pb(&p, &m, &s);
        m.stop_ids = stops; /* a writable copy for the spoiler */
        const char *field = spoil_params(&m, k);
        if (field == NULL)
            break;
        pd_err_t err = { 0 };
        assert_refused(pd_codec_params_from_pb(&m, &LIM, &out, &err), &err, field);
    }
    pd_gen_params_t out;
    pd_err_t err = { 0 };
    assert_refused(pd_codec_params_from_pb(NULL, &LIM, &out, &err), &err, "params");
}

/* ====== Limits, load, counters ====== */

static void test_limits_round_trip(void **state)
{
    (void)state;
    pd_worker_limits_t in = { 16, 512, 8, 2048, 4096, "f16" }, out;
    Pd__Register m = PD__REGISTER__INIT;
    pd_codec_limits_to_pb(&in, &m);
    Pd__Register *r = wire(&m.base);
    pd_err_t err = { 0 };
    assert_int_equal(pd_codec_limits_from_pb(r, &out, &err), 0);
    assert_memory_equal(&in, &out, sizeof in);
    char *dt = r->kv_dtype;
    r->kv_dtype = NULL; /* a worker from before F16 KV: f32 */
    assert_int_equal(pd_codec_limits_from_pb(r, &out, &err), 0);
    assert_string_equal(out.kv_dtype, "f32");
    r->kv_dtype = (char *)"q4_0";
    assert_refused(pd_codec_limits_from_pb(r, &out, &err), &err, "register.kv_dtype");
    r->kv_dtype = dt;
    r->block_size = 0;
    assert_refused(pd_codec_limits_from_pb(r, &out, &err), &err, "register.block_size");
    r->has_block_size = false;
    r->block_size = 16;
    assert_refused(pd_codec_limits_from_pb(r, &out, &err), &err, "register.block_size");
    pd__register__free_unpacked(r, NULL);
}

static void test_load_round_trip(void **state)
{
    (void)state;
    pd_worker_load_t in, out;
    memset(&in, 0, sizeof in);
    in.queued_prefill_tokens = 300;
    in.running_seqs = 7;
    in.waiting_seqs = 2;
    in.free_blocks = 100;
    in.total_blocks = 512;
    in.draining = true;
    in.kv_events_seq = 0x1234567890ull;
    /* Every counter distinct, so a swapped pair shows. */
    uint64_t *c = &in.counters.steps;
    for (size_t i = 0; i < offsetof(pd_worker_counters_t, prefill_pass_tokens) / sizeof *c; i++)
        c[i] = 1000 + i * 7919;
    in.counters.prefill_pass_tokens = 333;
    c = &in.counters.prefix_queries;
    for (size_t i = 0; i < 5; i++)
        c[i] = 5000 + i * 104729;
    Pd__Heartbeat m;
    Pd__WorkerCounters wc;
    pd_codec_load_to_pb(&in, &m, &wc);
    Pd__Heartbeat *r = wire(&m.base);
    pd_err_t err = { 0 };
    assert_int_equal(pd_codec_load_from_pb(r, &out, &err), 0);
    assert_memory_equal(&in, &out, sizeof in);
    r->free_blocks = 513;
    assert_refused(pd_codec_load_from_pb(r, &out, &err), &err, "heartbeat.free_blocks");
    /* No counters: zeros. */
    r->free_blocks = 1;
    Pd__WorkerCounters *own = r->counters;
    r->counters = NULL;
    assert_int_equal(pd_codec_load_from_pb(r, &out, &err), 0);
    assert_int_equal(out.counters.steps, 0);
    r->counters = own;
    pd__heartbeat__free_unpacked(r, NULL);
}

/* ====== Prefix cache events ====== */

static void test_kv_events(void **state)
{
    (void)state;
    uint64_t hashes[3] = { 1, 0xffffffffffffffffull, 0x123456789abcdef0ull };
    protobuf_c_boolean removed[3] = { 0, 1, 0 };
    pd_kv_events_t in = { 9, true, 3, hashes, removed }, out;
    Pd__KvEvents m;
    pd_codec_kv_events_to_pb(&in, &m);
    Pd__KvEvents *r = wire(&m.base);
    pd_err_t err = { 0 };
    assert_int_equal(pd_codec_kv_events_from_pb(r, &out, &err), 0);
    assert_int_equal(out.seq, 9);
    assert_true(out.snapshot);
    assert_int_equal(out.n, 3);
    assert_memory_equal(out.hashes, hashes, sizeof hashes);
    for (int i = 0; i < 3; i++)
        assert_int_equal(out.removed[i] != 0, removed[i] != 0);
    r->n_removed = 2;
    assert_refused(pd_codec_kv_events_from_pb(r, &out, &err), &err, "kv_events.removed");
    r->n_removed = 3;
    r->seq = 0;
    assert_refused(pd_codec_kv_events_from_pb(r, &out, &err), &err, "kv_events.seq");
    r->has_seq = false;
    r->seq = 4;
    assert_refused(pd_codec_kv_events_from_pb(r, &out, &err), &err, "kv_events.seq");
    r->has_seq = true;
    size_t n = r->n_hashes;
    r->n_hashes = r->n_removed = PD_KV_EVENTS_MAX + 1; /* the count alone is judged */
    assert_refused(pd_codec_kv_events_from_pb(r, &out, &err), &err, "kv_events.hashes");
    r->n_hashes = r->n_removed = n;
    pd__kv_events__free_unpacked(r, NULL);
}

/* ====== Token entries ====== */

static void test_token_round_trip(void **state)
{
    (void)state;
    pd_token_entry_t in[2] = {
        { 42, 3, 17, 0, PD__FINISH_REASON__FINISH_NONE },
        { 1ull << 40, 1, 999, 63, PD__FINISH_REASON__FINISH_LENGTH },
    };
    for (int i = 0; i < 2; i++) {
        Pd__TokenEntry m;
        pd_codec_token_to_pb(&in[i], &m);
        /* FINISH_NONE is the default: not put on the wire. */
        assert_int_equal(m.has_finish_reason, i == 1);
        Pd__TokenEntry *r = wire(&m.base);
        pd_token_entry_t out;
        pd_err_t err = { 0 };
        assert_int_equal(pd_codec_token_from_pb(r, 1000, &out, &err), 0);
        assert_memory_equal(&in[i], &out, sizeof out);
        pd__token_entry__free_unpacked(r, NULL);
    }
}

static const char *spoil_token(Pd__TokenEntry *m, int k)
{
    switch (k) {
    case 0: m->has_request_id = false; return "token.request_id";
    case 1: m->request_id = 0; return "token.request_id";
    case 2: m->has_epoch = false; return "token.epoch";
    case 3: m->has_index = false; return "token.index";
    case 4: m->has_token = false; return "token.token";
    case 5: m->token = -1; return "token.token";
    case 6: m->token = 1000; return "token.token";
    case 7: m->finish_reason = (Pd__FinishReason)99; return "token.finish_reason";
    default: return NULL;
    }
}

static void test_token_refusals(void **state)
{
    (void)state;
    for (int k = 0;; k++) {
        pd_token_entry_t t = { 42, 3, 17, 0, PD__FINISH_REASON__FINISH_EOS }, out;
        Pd__TokenEntry m;
        pd_codec_token_to_pb(&t, &m);
        const char *field = spoil_token(&m, k);
        if (field == NULL)
            break;
        pd_err_t err = { 0 };
        assert_refused(pd_codec_token_from_pb(&m, 1000, &out, &err), &err, field);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sampling_round_trip), cmocka_unit_test(test_sampling_defaults),
        cmocka_unit_test(test_sampling_refusals),   cmocka_unit_test(test_params_round_trip),
        cmocka_unit_test(test_params_context),      cmocka_unit_test(test_params_refusals),
        cmocka_unit_test(test_limits_round_trip),   cmocka_unit_test(test_load_round_trip),
        cmocka_unit_test(test_token_round_trip),    cmocka_unit_test(test_token_refusals),
        cmocka_unit_test(test_kv_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
