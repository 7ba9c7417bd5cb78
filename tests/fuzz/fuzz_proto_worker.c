/* fuzz_proto_worker.c -- libFuzzer target for a worker's message handlers
 * (scripts/fuzz.sh): every byte the router or a prefill worker can send to
 * a worker.
 *
 * fuzz-sources: prefill_worker/prefill.c prefill_worker/egress.c prefill_worker/stream_out.c decode_worker/decode.c decode_worker/ingress.c decode_worker/batch.c decode_worker/stream_in.c decode_worker/stream_early.c
 *
 * A colocated ("both") worker is built once, as worker/worker.c builds one,
 * but without an engine: a fake model identity and a small real KV pool;
 * its host's router link (the I/O thread, runtime/wklink.h) connects to an
 * inproc sink (drained after each operation) and forwards what the roles
 * send there, its decode role's KV ingress ROUTER binds an inproc
 * endpoint nobody connects to. Handlers are driven without compute (no
 * prefill pass, no decode step), which is every validation path. Each input
 * is a sequence of operations [op:1][len:2 LE][len bytes]:
 *   op % 8 == 0  raw router payload          -> pd_wkhost_on_router_payload
 *   op % 8 == 1  raw KV message: the bytes are the envelope, followed by
 *                (len % 4) block frames of the right size
 *                                            -> pd_decode_on_transfer
 *   op % 8 == 2  a DecodeTask built from the bytes (request 1..4, epoch,
 *                n_prompt, n_generated, max_tokens, history ids raw)
 *   op % 8 == 3  a KvTransfer built from the bytes with correct checksums
 *                unless a bit says otherwise (n_tokens, n_blocks,
 *                first_token, block size, identity perturbed);
 *                with op & 8: a KvLayer of a layer stream instead (layer,
 *                n_tokens, block range, checksums, sizes, layout, sender
 *                perturbed: kv_layer below); with op & 16: a stream's
 *                commit (KvTransfer streamed, no frames)
 *   op % 8 == 4  a PrefillTask built from the bytes
 *   op % 8 == 5  a Cancel (request, epoch) from the router
 *   op % 8 == 6  a KvAck (request, epoch, ok)  -> pd_prefill_on_ack
 *   op % 8 == 7  the link's "drop your work" (a router lost or restarted:
 *                forget everything) or a Drain from the router
 * Invariants (abort() when broken): pd_decode_check (orphans within their
 * cap, histories within capacity, a waiting sequence's frames exactly the
 * blocks its positions need, each of block_bytes); and after dropping
 * everything, nothing is held by either role and every KV block is free.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base/log.h"
#include "decode_worker/decode.h"
#include "prefill_worker/prefill.h"
#include "runtime/wkhost.h"

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz_proto_worker: %s (line %d)\n", #cond, __LINE__);    \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#define IDENTITY 0x5eed5eed12345678ull
#define VOCAB 300
#define MAX_SEQ 64
#define BLOCK 4

static pd_config_t g_cfg;
static pd_model_t g_model;
static pd_wkengine_t g_eng;
static pd_wkhost_t *g_host;
static pd_prefill_t *g_prefill;
static pd_decode_t *g_decode;
static pd_net_in_t *g_in;
static volatile sig_atomic_t g_stop;
static void *g_sink;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    pd_log_init("fuzz", PD_LOG_ERROR);
    pd_log_set_stderr(false);
    pd_config_default(&g_cfg);
    snprintf(g_cfg.worker.router, sizeof g_cfg.worker.router, "inproc://fuzz-router");
    snprintf(g_cfg.decode.kv_endpoint, sizeof g_cfg.decode.kv_endpoint, "inproc://fuzz-kv");
    snprintf(g_model.name, sizeof g_model.name, "fuzz");
    g_model.identity = IDENTITY;
    g_eng.model = &g_model;
    g_eng.identity = IDENTITY;
    g_eng.vocab = VOCAB;
    g_eng.max_seq_len = MAX_SEQ;
    pd_err_t err = { 0 };
    pd_kv_shape_t shape = { .n_layers = 1, .n_kv_heads = 1, .head_dim = 4, .block_size = BLOCK,
                            .n_blocks = 64 };
    g_eng.kv = pd_kv_new(&shape, &err);
    CHECK(g_eng.kv);
    g_eng.block_bytes = pd_kv_block_bytes(g_eng.kv);
    g_host = pd_wkhost_new(&g_cfg, "w1", &g_eng, &g_stop, &err);
    CHECK(g_host);
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, &g_cfg);
    g_sink = pd_net_socket(pd_wkhost_zctx(g_host), ZMQ_ROUTER, &o, &err);
    CHECK(g_sink);
    CHECK(pd_net_bind(g_sink, "inproc://fuzz-router", NULL, 0, &err) == 0);
    pd_wkrole_env_t env = { &g_eng, &g_cfg, "w1", pd_wkhost_port(g_host),
                            pd_wkhost_zctx(g_host) };
    g_decode = pd_decode_new(&env, &err);
    CHECK(g_decode);
    pd_kv_sink_t sink = pd_decode_sink(g_decode);
    g_prefill = pd_prefill_new(&env, &sink, &err);
    CHECK(g_prefill);
    pd_wkhost_set_roles(g_host, pd_prefill_role(g_prefill), pd_decode_role(g_decode));
    pd_wkhost_info_t info = { .role = PD__ROLE__ROLE_BOTH,
                              .kv_endpoint = pd_decode_kv_endpoint(g_decode),
                              .model_identity = IDENTITY,
                              .model_name = "fuzz",
                              .limits = { BLOCK, 64, 8, 256, MAX_SEQ } };
    CHECK(pd_wkhost_start(g_host, &info, &err) == 0);
    g_in = calloc(1, sizeof *g_in);
    CHECK(g_in);
    return 0;
}

static void drain_sink(void)
{
    char buf[256];
    while (zmq_recv(g_sink, buf, sizeof buf, ZMQ_DONTWAIT) >= 0) {
    }
}

static void router_msg(const Pd__Msg *m)
{
    size_t n = pd__msg__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    CHECK(buf);
    pd__msg__pack(m, buf);
    pd_wkhost_on_router_payload(g_host, buf, n);
    free(buf);
}

/* A KV message from sender, envelope env[0..env_len), nb frames of bb
 * bytes filled from seed. */
static void kv_msg_from(const char *sender, const void *env, size_t env_len, uint32_t nb,
                        size_t bb, uint8_t seed)
{
    pd_net_in_t *in = g_in;
    in->n_frames = 0;
    in->truncated = false;
    CHECK(zmq_msg_init_size(&in->frames[in->n_frames++], 1) == 0);
    memcpy(zmq_msg_data(&in->frames[0]), sender, 1);
    CHECK(zmq_msg_init_size(&in->frames[in->n_frames], env_len) == 0);
    if (env_len)
        memcpy(zmq_msg_data(&in->frames[in->n_frames]), env, env_len);
    in->n_frames++;
    for (uint32_t i = 0; i < nb; i++) {
        CHECK(zmq_msg_init_size(&in->frames[in->n_frames], bb) == 0);
        memset(zmq_msg_data(&in->frames[in->n_frames]), seed + (int)i, bb);
        in->n_frames++;
    }
    pd_decode_on_transfer(g_decode, in);
    pd_net_in_close(in);
}

/* A KV message: sender "P", nb frames of block_bytes. */
static void kv_msg(const void *env, size_t env_len, uint32_t nb, uint8_t seed)
{
    kv_msg_from("P", env, env_len, nb, g_eng.block_bytes, seed);
}

static void send_env(const char *sender, const Pd__Msg *m, uint32_t nb, size_t bb, uint8_t seed)
{
    size_t len = pd__msg__get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    CHECK(buf);
    pd__msg__pack(m, buf);
    kv_msg_from(sender, buf, len, nb, bb, seed);
    free(buf);
}

static uint32_t byte(const uint8_t *p, size_t n, size_t at) { return at < n ? p[at] : 0; }

static void decode_task(const uint8_t *p, size_t n)
{
    Pd__Sampling s = PD__SAMPLING__INIT;
    Pd__GenParams gp = PD__GEN_PARAMS__INIT;
    gp.sampling = &s;
    gp.has_max_tokens = gp.has_n_prompt = gp.has_n_generated = true;
    gp.n_prompt = byte(p, n, 2) % 80;
    gp.n_generated = byte(p, n, 3) % 8;
    gp.max_tokens = byte(p, n, 4) % 32;
    int32_t hist[128];
    size_t nh = (size_t)gp.n_prompt + gp.n_generated;
    if (byte(p, n, 5) & 1)
        nh = byte(p, n, 5) % 128;
    for (size_t i = 0; i < nh; i++)
        hist[i] = (byte(p, n, 6) & 1) ? (int32_t)(byte(p, n, 7 + i) * 2 - 40) : (int32_t)i;
    Pd__DecodeTask t = PD__DECODE_TASK__INIT;
    t.has_request_id = t.has_epoch = true;
    t.request_id = 1 + byte(p, n, 0) % 4;
    t.epoch = byte(p, n, 1) % 4;
    t.params = &gp;
    t.n_history = nh;
    t.history = hist;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_DECODE;
    m.decode = &t;
    router_msg(&m);
}

static void kv_transfer(const uint8_t *p, size_t n)
{
    uint32_t flags = byte(p, n, 4);
    Pd__KvTransfer k = PD__KV_TRANSFER__INIT;
    k.has_request_id = k.has_epoch = k.has_n_blocks = k.has_n_tokens = true;
    k.has_block_bytes = k.has_first_token = k.has_model_identity = k.has_block_size = true;
    k.request_id = 1 + byte(p, n, 0) % 4;
    k.epoch = byte(p, n, 1) % 4;
    k.n_tokens = byte(p, n, 2) % 80;
    uint32_t nb = (k.n_tokens + BLOCK - 1) / BLOCK;
    if (flags & 1)
        nb = byte(p, n, 3) % 24;
    k.n_blocks = (flags & 2) ? byte(p, n, 5) : nb;
    k.block_bytes = (flags & 4) ? byte(p, n, 6) : g_eng.block_bytes;
    k.block_size = (flags & 8) ? byte(p, n, 7) : BLOCK;
    k.model_identity = (flags & 16) ? 1 : IDENTITY;
    k.first_token = (flags & 32) ? (int32_t)(byte(p, n, 8) * 4 - 100) : (int32_t)byte(p, n, 8);
    uint8_t seed = (uint8_t)byte(p, n, 9);
    uint64_t sums[24];
    uint8_t *blk = malloc(g_eng.block_bytes);
    CHECK(blk);
    for (uint32_t i = 0; i < nb; i++) {
        memset(blk, seed + (int)i, g_eng.block_bytes);
        sums[i] = XXH3_64bits(blk, g_eng.block_bytes) ^ ((flags & 64) && i == 0 ? 1 : 0);
    }
    free(blk);
    k.n_checksums = (flags & 128) ? nb / 2 : nb;
    k.checksums = sums;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_TRANSFER;
    m.kv_transfer = &k;
    size_t len = pd__msg__get_packed_size(&m);
    uint8_t *buf = malloc(len ? len : 1);
    CHECK(buf);
    pd__msg__pack(&m, buf);
    kv_msg(buf, len, nb, seed);
    free(buf);
}

/* A KvLayer: p[0] request, [1] epoch, [2] n_tokens, [3] layer (% 3: the
 * model has 1), [4] first_block, [5] frames, [6] flags (1: frames = the
 * rest of the request; 2: identity; 4: layer_bytes in the header; 8: frame
 * size; 16: a bad checksum; 32: sender Q; 64: half the checksums; 128:
 * n_layers), [7] seed. */
static void kv_layer(const uint8_t *p, size_t n)
{
    uint32_t flags = byte(p, n, 6);
    size_t lb = pd_kv_layer_bytes(g_eng.kv);
    Pd__KvLayer k = PD__KV_LAYER__INIT;
    k.has_request_id = k.has_epoch = k.has_layer = k.has_n_layers = k.has_first_block = true;
    k.has_n_blocks = k.has_n_tokens = k.has_layer_bytes = k.has_model_identity = true;
    k.has_block_size = true;
    k.request_id = 1 + byte(p, n, 0) % 4;
    k.epoch = byte(p, n, 1) % 4;
    k.n_tokens = byte(p, n, 2) % 80;
    k.layer = byte(p, n, 3) % 3;
    k.n_layers = (flags & 128) ? 2 : 1;
    k.first_block = byte(p, n, 4) % 24;
    uint32_t total = (k.n_tokens + BLOCK - 1) / BLOCK;
    uint32_t nb = byte(p, n, 5) % 24;
    if (flags & 1)
        nb = total > k.first_block ? total - k.first_block : 0;
    k.n_blocks = nb;
    k.layer_bytes = (flags & 4) ? lb + 4 : lb;
    k.model_identity = (flags & 2) ? 1 : IDENTITY;
    k.block_size = BLOCK;
    size_t fb = (flags & 8) ? lb / 2 : lb;
    uint8_t seed = (uint8_t)byte(p, n, 7);
    uint64_t sums[24];
    uint8_t *f = malloc(fb ? fb : 1);
    CHECK(f);
    for (uint32_t i = 0; i < nb; i++) {
        memset(f, seed + (int)i, fb);
        sums[i] = XXH3_64bits(f, fb) ^ ((flags & 16) && i + 1 == nb ? 1 : 0);
    }
    free(f);
    k.n_checksums = (flags & 64) ? nb / 2 : nb;
    k.checksums = sums;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_LAYER;
    m.kv_layer = &k;
    send_env((flags & 32) ? "Q" : "P", &m, nb, fb, seed);
}

/* A stream's commit: p[0] request, [1] epoch, [2] n_tokens, [3] first
 * token, [4] flags (1: n_blocks off by one; 2: a frame attached; 4:
 * sender Q). */
static void kv_commit(const uint8_t *p, size_t n)
{
    uint32_t flags = byte(p, n, 4);
    Pd__KvTransfer k = PD__KV_TRANSFER__INIT;
    k.has_request_id = k.has_epoch = k.has_n_blocks = k.has_n_tokens = true;
    k.has_block_bytes = k.has_first_token = k.has_model_identity = k.has_block_size = true;
    k.has_streamed = true;
    k.streamed = true;
    k.request_id = 1 + byte(p, n, 0) % 4;
    k.epoch = byte(p, n, 1) % 4;
    k.n_tokens = byte(p, n, 2) % 80;
    k.n_blocks = (k.n_tokens + BLOCK - 1) / BLOCK + (flags & 1);
    k.block_bytes = g_eng.block_bytes;
    k.block_size = BLOCK;
    k.model_identity = IDENTITY;
    k.first_token = (int32_t)byte(p, n, 3);
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_TRANSFER;
    m.kv_transfer = &k;
    send_env((flags & 4) ? "Q" : "P", &m, (flags & 2) ? 1 : 0, g_eng.block_bytes, 0);
}

static void prefill_task(const uint8_t *p, size_t n)
{
    Pd__GenParams gp = PD__GEN_PARAMS__INIT;
    gp.has_max_tokens = gp.has_n_prompt = gp.has_n_generated = true;
    gp.n_prompt = byte(p, n, 2) % 80;
    gp.n_generated = byte(p, n, 3) % 8;
    gp.max_tokens = byte(p, n, 4) % 32;
    int32_t toks[128];
    size_t nt = (byte(p, n, 5) & 1) ? byte(p, n, 5) % 128 : (size_t)gp.n_prompt + gp.n_generated;
    for (size_t i = 0; i < nt; i++)
        toks[i] = (byte(p, n, 6) & 1) ? (int32_t)(byte(p, n, 7 + i) * 2 - 40) : (int32_t)i;
    Pd__PrefillTask t = PD__PREFILL_TASK__INIT;
    t.has_request_id = t.has_epoch = true;
    t.request_id = 1 + byte(p, n, 0) % 4;
    t.epoch = byte(p, n, 1) % 4;
    t.params = &gp;
    t.n_tokens = nt;
    t.tokens = toks;
    switch (byte(p, n, 6) >> 1 & 3) {
    case 0: t.decode_worker_id = (char *)"w1"; break; /* colocated */
    case 1:
        t.decode_worker_id = (char *)"d9";
        t.decode_kv_endpoint = (char *)"inproc://fuzz-nowhere";
        break;
    case 2: t.decode_worker_id = (char *)"d9"; break; /* no endpoint */
    default: break;
    }
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_PREFILL;
    m.prefill = &t;
    router_msg(&m);
}

static void check_invariants(void)
{
    pd_err_t why = { 0 };
    if (pd_decode_check(g_decode, &why) != 0) {
        fprintf(stderr, "fuzz_proto_worker: %s\n", why.msg);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pd_wkhost_test_reset(g_host);
    g_stop = 0;
    size_t at = 0;
    while (at + 3 <= size) {
        uint8_t op = data[at];
        size_t len = (size_t)data[at + 1] | (size_t)data[at + 2] << 8;
        at += 3;
        if (len > size - at)
            len = size - at;
        const uint8_t *p = data + at;
        at += len;
        switch (op % 8) {
        case 0: pd_wkhost_on_router_payload(g_host, p, len); break;
        case 1: kv_msg(p, len, (uint32_t)(len % 4), 7); break;
        case 2: decode_task(p, len); break;
        case 3:
            if (op & 8)
                kv_layer(p, len);
            else if (op & 16)
                kv_commit(p, len);
            else
                kv_transfer(p, len);
            break;
        case 4: prefill_task(p, len); break;
        case 5: {
            Pd__Cancel c = PD__CANCEL__INIT;
            c.has_request_id = c.has_epoch = true;
            c.request_id = 1 + byte(p, len, 0) % 4;
            c.epoch = byte(p, len, 1) % 4;
            Pd__Msg m = PD__MSG__INIT;
            m.body_case = PD__MSG__BODY_CANCEL;
            m.cancel = &c;
            router_msg(&m);
            break;
        }
        case 6: {
            Pd__KvAck a = PD__KV_ACK__INIT;
            a.has_request_id = a.has_epoch = a.has_ok = true;
            a.request_id = 1 + byte(p, len, 0) % 4;
            a.epoch = byte(p, len, 1) % 4;
            a.ok = byte(p, len, 2) & 1;
            a.reason = (byte(p, len, 2) & 2) ? (char *)"cancelled" : NULL;
            pd_prefill_on_ack(g_prefill, &a);
            break;
        }
        case 7: {
            Pd__Drain d = PD__DRAIN__INIT;
            Pd__Msg m = PD__MSG__INIT;
            if (byte(p, len, 0) & 1) {
                pd_wkhost_drop_work(g_host, 0, "router_restarted");
            } else {
                m.body_case = PD__MSG__BODY_DRAIN;
                m.drain = &d;
                router_msg(&m);
            }
            pd_wkhost_test_reset(g_host);
            break;
        }
        }
        check_invariants();
        drain_sink();
    }
    pd_decode_held_t held;
#ifdef FUZZ_TRACE /* seeds' reach, when built by hand with -DFUZZ_TRACE */
    pd_decode_held(g_decode, &held);
    fprintf(stderr, "trace: expected=%u waiting=%u orphans=%u streams=%u early=%u tasks=%u\n",
            held.expected, held.waiting, held.orphans, held.streams, held.early,
            pd_prefill_n_tasks(g_prefill));
#endif
    char what[160];
    pd_wkrole_t pr = pd_prefill_role(g_prefill), dr = pd_decode_role(g_decode);
    pr.ops->drop_all(pr.self, what, sizeof what);
    dr.ops->drop_all(dr.self, what, sizeof what);
    drain_sink();
    pd_decode_held(g_decode, &held);
    CHECK(held.expected == 0 && held.waiting == 0 && held.running == 0 && held.orphans == 0 &&
          held.streams == 0 && held.early == 0);
    CHECK(pd_prefill_n_tasks(g_prefill) == 0);
    CHECK(pd_kv_n_used(g_eng.kv) == 0);
    /* Forget what is still queued for the router (back-pressure), and the
     * cancelled requests (a fresh worker). */
    pd_wkhost_test_reset(g_host);
    return 0;
}
