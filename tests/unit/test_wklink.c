/* test_wklink.c -- the worker's router link (common/runtime/wklink.c) as the
 * router sees it, through a real ROUTER socket (loopback TCP, as a router in
 * another process: the frames cross ZeroMQ's I/O threads) and the link's real
 * I/O thread:
 *  - Register carries prefix_caching as the worker announced it;
 *  - a heartbeat's kv_events_seq is never ahead of the KvEvents that came
 *    before it, while the compute side sends KvEvents and publishes their
 *    seq as fast as it can (the link reads the published load on its own
 *    thread: taken as published, it runs ahead and the router would see a
 *    gap and resync needlessly), and equals it exactly;
 *  - a KvEvents that never reached the link (lost before it) still shows:
 *    the heartbeat then names the published seq, and the router sees the gap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/clock.h"
#include "runtime/net.h"
#include "runtime/wklink.h"


typedef struct {
    pd_config_t cfg;
    void *zctx, *rsock;
    pd_wklink_t *link;
    uint8_t zid[256];
    size_t zid_len;
    bool prefix_caching; /* as the Register said */
    uint64_t last_kv;    /* seq of the last KvEvents received */
    uint32_t n_kv, n_hb, n_hb_seq, n_ahead, n_behind;
    uint64_t last_hb_seq;
} fx_t;

static void reply(fx_t *f, Pd__Msg *m)
{
    pd_err_t err = { 0 };
    assert_int_equal(pd_net_send(f->rsock, f->zid, f->zid_len, m, false, &err), 0);
}

static void beat_back(fx_t *f)
{
    Pd__Heartbeat hb = PD__HEARTBEAT__INIT;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    reply(f, &m);
}

/* Reads what the link sent; answers a Register; checks every heartbeat's
 * kv_events_seq against the KvEvents before it. */
static void drain(fx_t *f)
{
    pd_net_in_t in;
    pd_err_t err = { 0 };
    while (pd_net_recv(f->rsock, &in, &err) == 1) {
        assert_int_equal(in.n_frames, 2);
        f->zid_len = zmq_msg_size(&in.frames[0]);
        assert_true(f->zid_len <= sizeof f->zid);
        memcpy(f->zid, zmq_msg_data(&in.frames[0]), f->zid_len);
        Pd__Msg *m = pd__msg__unpack(NULL, zmq_msg_size(&in.frames[1]),
                                     zmq_msg_data(&in.frames[1]));
        assert_non_null(m);
        if (m->body_case == PD__MSG__BODY_REGISTER) {
            f->prefix_caching = m->register_->has_prefix_caching && m->register_->prefix_caching;
            Pd__RegisterReply r = PD__REGISTER_REPLY__INIT;
            r.has_accepted = r.has_heartbeat_ms = r.has_liveness = true;
            r.accepted = true;
            r.heartbeat_ms = 10;
            r.liveness = 100;
            Pd__Msg o = PD__MSG__INIT;
            o.body_case = PD__MSG__BODY_REGISTER_REPLY;
            o.register_reply = &r;
            reply(f, &o);
        } else if (m->body_case == PD__MSG__BODY_KV_EVENTS) {
            if (m->kv_events->seq != f->last_kv + 1)
                print_error("KvEvents %llu after %llu\n", (unsigned long long)m->kv_events->seq,
                            (unsigned long long)f->last_kv);
            assert_int_equal(m->kv_events->seq, f->last_kv + 1); /* none lost, in order */
            f->last_kv = m->kv_events->seq;
            f->n_kv++;
        } else if (m->body_case == PD__MSG__BODY_HEARTBEAT) {
            uint64_t s = m->heartbeat->has_kv_events_seq ? m->heartbeat->kv_events_seq : 0;
            f->n_hb++;
            f->n_hb_seq += s != 0;
            f->n_ahead += s > f->last_kv;
            f->n_behind += s < f->last_kv;
            f->last_hb_seq = s;
        }
        pd__msg__free_unpacked(m, NULL);
        pd_net_in_close(&in);
    }
    if (f->zid_len)
        beat_back(f);
}

static void fx_open(fx_t *f)
{
    memset(f, 0, sizeof *f);
    pd_config_default(&f->cfg);
    pd_err_t err = { 0 };
    f->zctx = zmq_ctx_new();
    assert_non_null(f->zctx);
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, &f->cfg);
    f->rsock = pd_net_socket(f->zctx, ZMQ_ROUTER, &o, &err);
    assert_non_null(f->rsock);
    assert_int_equal(pd_net_bind(f->rsock, "tcp://127.0.0.1:*", f->cfg.worker.router,
                                 sizeof f->cfg.worker.router, &err), 0);
    pd_wklink_info_t info = { .role = PD__ROLE__ROLE_PREFILL, .kv_endpoint = "",
                              .model_identity = 1, .model_name = "m", .prefix_caching = true };
    pd_worker_load_t ld;
    memset(&ld, 0, sizeof ld);
    f->link = pd_wklink_start(&f->cfg, "w1", f->zctx, &info, NULL, &ld, &err);
    assert_non_null(f->link);
    uint64_t t0 = pd_now_ms();
    while (!pd_wklink_registered(f->link) && pd_now_ms() - t0 < 5000) {
        drain(f);
        usleep(1000);
    }
    assert_true(pd_wklink_registered(f->link));
    assert_true(f->prefix_caching);
}

static void fx_close(fx_t *f)
{
    pd_wklink_stop(f->link);
    pd_net_close(f->rsock);
    zmq_ctx_term(f->zctx);
}

static void send_kv(fx_t *f, uint64_t seq)
{
    Pd__KvEvents k = PD__KV_EVENTS__INIT;
    k.has_seq = true;
    k.seq = seq;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_EVENTS;
    m.kv_events = &k;
    pd_err_t err = { 0 };
    assert_int_equal(pd_wklink_send(f->link, 0, &m, &err), 0);
}

static void publish(fx_t *f, uint64_t seq)
{
    pd_worker_load_t ld;
    memset(&ld, 0, sizeof ld);
    ld.kv_events_seq = seq;
    pd_wklink_publish(f->link, &ld);
}

static void test_kv_events_seq(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f);
    /* As the compute thread does it: a KvEvents, then its seq published
     * with the load, as fast as it goes; the router reads meanwhile. */
    uint64_t seq = 0;
    uint64_t t0 = pd_now_ms();
    while (pd_now_ms() - t0 < 1500) {
        for (int i = 0; i < 8; i++) {
            send_kv(&f, ++seq);
            publish(&f, seq);
        }
        drain(&f);
        usleep(100); /* within the outbox: a loss here would be a real gap */
    }
    /* Quiet: everything arrives; the last beats name the last KvEvents. */
    t0 = pd_now_ms();
    while (pd_now_ms() - t0 < 200) {
        drain(&f);
        usleep(1000);
    }
    print_message("wklink: %llu KvEvents sent, %u received; %u heartbeats (%u with a seq), "
                  "%u ahead of the KvEvents before them, %u behind\n",
                  (unsigned long long)seq, f.n_kv, f.n_hb, f.n_hb_seq, f.n_ahead, f.n_behind);
    assert_int_equal(f.last_kv, seq);
    assert_true(f.n_hb_seq >= 20);
    assert_int_equal(f.n_ahead, 0);
    assert_int_equal(f.n_behind, 0);
    assert_int_equal(f.last_hb_seq, seq);
    /* One lost before the link (never handed over), at the stream's end:
     * the heartbeat still names it, so the router sees the gap. */
    publish(&f, seq + 1);
    t0 = pd_now_ms();
    while (f.last_hb_seq != seq + 1 && pd_now_ms() - t0 < 2000) {
        drain(&f);
        usleep(1000);
    }
    assert_int_equal(f.last_hb_seq, seq + 1);
    fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_events_seq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
