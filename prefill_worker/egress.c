/* egress.c -- the prefill role's KV egress: one DEALER per decode worker's
 * KV endpoint, a request's KV shipped as one multipart message (KvTransfer
 * header + one zero-copy frame per block, checksummed), its blocks held
 * under a lease until the decode worker's KvAck, the lease's expiry, and
 * ZeroMQ letting go of every frame. See prefill.h. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <xxhash.h>

#include "base/clock.h"
#include "base/log.h"
#include "prefill_internal.h"
#include "runtime/addr.h"

/* ====== Sockets ====== */

pf_egress_t *pf_egress_get(pd_prefill_t *p, const char *endpoint)
{
    pf_egress_t *eg = NULL;
    for (uint32_t i = 0; i < p->n_egress; i++)
        if (strcmp(p->egress[i].endpoint, endpoint) == 0)
            eg = &p->egress[i];
    if (eg == NULL) {
        if (p->n_egress == PF_MAX_EGRESS) {
            /* Reuse an idle slot's place: the first one without a socket. */
            for (uint32_t i = 0; i < p->n_egress && eg == NULL; i++)
                if (p->egress[i].sock == NULL)
                    eg = &p->egress[i];
            if (eg == NULL)
                return NULL;
        } else {
            eg = &p->egress[p->n_egress++];
        }
        snprintf(eg->endpoint, sizeof eg->endpoint, "%s", endpoint);
        eg->sock = NULL;
        eg->peer = false;
    }
    if (eg->sock == NULL) {
        pd_net_opts_t o;
        pd_net_opts_from_config(&o, p->cfg);
        if (o.maxmsgsize > 0 && (uint64_t)o.maxmsgsize < p->eng->block_bytes + 4096)
            o.maxmsgsize = (int64_t)p->eng->block_bytes + 4096;
        pd_err_t err = { 0 };
        eg->sock = pd_net_socket(p->env.zctx, ZMQ_DEALER, &o, &err);
        if (eg->sock == NULL || pd_net_connect(eg->sock, endpoint, &err) != 0) {
            PD_WARN("event=kv_connect_failed endpoint=%s msg=\"%s\"", endpoint, err.msg);
            pd_net_close(eg->sock);
            eg->sock = NULL;
            return NULL;
        }
    }
    eg->last_used_ms = pf_now_ms(p);
    return eg;
}

bool pf_egress_ready(pd_prefill_t *p, const char *endpoint)
{
    pf_egress_t *eg = pf_egress_get(p, endpoint);
    int events = 0;
    size_t len = sizeof events;
    if (eg == NULL || zmq_getsockopt(eg->sock, ZMQ_EVENTS, &events, &len) != 0)
        return false;
    return (events & ZMQ_POLLOUT) != 0;
}

void pf_on_peers(pd_prefill_t *p, const Pd__KvPeers *k)
{
    for (uint32_t i = 0; i < p->n_egress; i++)
        p->egress[i].peer = false;
    size_t n = k->n_kv_endpoints, n_ok = 0;
    if (n > PF_MAX_EGRESS) {
        PD_WARN("event=kv_peers_truncated n=%zu kept=%d", n, PF_MAX_EGRESS);
        n = PF_MAX_EGRESS;
    }
    for (size_t i = 0; i < n; i++) {
        const char *ep = k->kv_endpoints[i];
        char why[128] = "too long";
        if (ep == NULL || strlen(ep) >= PD_CFG_STR ||
            !pd_addr_check_announced(ep, why, sizeof why)) {
            PD_WARN("event=bad_kv_peer index=%zu msg=\"%s\"", i, why); /* not echoed */
            continue;
        }
        pf_egress_t *eg = pf_egress_get(p, ep);
        if (eg == NULL)
            continue; /* logged; a task naming it connects again */
        eg->peer = true;
        n_ok++;
        PD_DEBUG("event=kv_peer endpoint=%s", ep);
    }
    PD_INFO("event=kv_peers n=%zu connecting=%zu", k->n_kv_endpoints, n_ok);
}

/* Drops the socket and everything queued in it (a lost decode worker):
 * ZeroMQ then releases the zero-copy frames it held. */
void pf_egress_reset(pd_prefill_t *p, const char *endpoint)
{
    for (uint32_t i = 0; i < p->n_egress; i++)
        if (strcmp(p->egress[i].endpoint, endpoint) == 0 && p->egress[i].sock) {
            int zero = 0;
            zmq_setsockopt(p->egress[i].sock, ZMQ_LINGER, &zero, sizeof zero);
            pd_net_close(p->egress[i].sock);
            p->egress[i].sock = NULL;
        }
}

/* Closes egress sockets that no task uses, that shipped nothing for
 * PF_EGRESS_IDLE_MS and that the router no longer lists as peers: a
 * decode worker that died or left (a restarted one has another endpoint)
 * must not keep a socket, its descriptors and ZeroMQ's reconnect attempts
 * here forever, nor its slot in egress[] (with all PF_MAX_EGRESS slots
 * holding sockets nothing could ship to a new endpoint). A listed peer's
 * socket stays (and is made again after a reset): the next stream to it
 * then finds it connected. */
static void egress_close_idle(pd_prefill_t *p, uint64_t now)
{
    for (uint32_t i = 0; i < p->n_egress; i++) {
        pf_egress_t *eg = &p->egress[i];
        if (eg->peer && eg->sock == NULL && now - eg->last_used_ms >= PF_EGRESS_RETRY_MS) {
            eg->last_used_ms = now; /* a failed connect is tried again, not every turn */
            pf_egress_get(p, eg->endpoint);
        }
        if (eg->peer || eg->sock == NULL || now - eg->last_used_ms < PF_EGRESS_IDLE_MS)
            continue;
        bool busy = false;
        for (size_t k = 0; k < p->n_tasks && !busy; k++)
            busy = (p->tasks[k]->st != PT_QUEUED || p->tasks[k]->streaming) &&
                   strcmp(p->tasks[k]->kv_endpoint, eg->endpoint) == 0;
        if (busy) {
            eg->last_used_ms = now; /* look again after another idle period */
            continue;
        }
        PD_DEBUG("event=kv_egress_closed endpoint=%s", eg->endpoint);
        pf_egress_reset(p, eg->endpoint);
    }
}

void pf_egress_close(pd_prefill_t *p)
{
    for (uint32_t i = 0; i < p->n_egress; i++) {
        pd_net_close(p->egress[i].sock);
        p->egress[i].sock = NULL;
    }
}

/* ====== Shipping ====== */

void pf_frame_done(void *data, void *hint)
{
    (void)data;
    pf_task_t *t = hint;
    atomic_fetch_sub(&t->frames_out, 1);
}

/* Sends t's KV (header + one frame per block). Returns 0 when sent,
 * PD_EFULL to try again later, another code on failure. */
static int ship(pd_prefill_t *p, pf_task_t *t)
{
    pf_egress_t *eg = pf_egress_get(p, t->kv_endpoint);
    if (eg == NULL)
        return PD_EIO;
    pd_kv_t *kv = p->eng->kv;
    size_t block_bytes = p->eng->block_bytes;
    uint32_t nb = t->seq.n_blocks;
    uint64_t sums[PD_NET_MAX_FRAMES];
    if (nb + 1 > PD_NET_MAX_FRAMES)
        return PD_ERANGE;
    for (uint32_t i = 0; i < nb; i++)
        sums[i] = XXH3_64bits(pd_kv_block(kv, t->seq.blocks[i]), block_bytes);
    Pd__KvTransfer k = PD__KV_TRANSFER__INIT;
    k.has_request_id = k.has_epoch = k.has_n_blocks = k.has_n_tokens = k.has_block_bytes = true;
    k.has_first_token = k.has_model_identity = k.has_block_size = true;
    k.request_id = t->req;
    k.epoch = t->epoch;
    k.n_blocks = nb;
    k.n_tokens = t->n_tokens;
    k.block_bytes = block_bytes;
    k.n_checksums = nb;
    k.checksums = sums;
    k.first_token = t->first_token;
    k.prefill_worker_id = p->id;
    k.model_identity = p->eng->identity;
    k.block_size = pd_kv_shape(kv)->block_size;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_TRANSFER;
    m.kv_transfer = &k;
    pd_err_t err = { 0 };
    int rc = pd_net_send(eg->sock, NULL, 0, &m, nb > 0, &err);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < nb; i++) {
        zmq_msg_t f;
        atomic_fetch_add(&t->frames_out, 1);
        if (zmq_msg_init_data(&f, pd_kv_block(kv, t->seq.blocks[i]), block_bytes, pf_frame_done,
                              t) != 0) {
            atomic_fetch_sub(&t->frames_out, 1);
            pf_egress_reset(p, t->kv_endpoint); /* drops the half-sent message */
            return PD_ENOMEM;
        }
        if (zmq_msg_send(&f, eg->sock, ZMQ_DONTWAIT | (i + 1 < nb ? ZMQ_SNDMORE : 0)) < 0) {
            PD_WARN("event=kv_frame_send_failed req=%llu msg=\"%s\"", (unsigned long long)t->req,
                    zmq_strerror(errno));
            zmq_msg_close(&f);
            pf_egress_reset(p, t->kv_endpoint);
            return PD_EIO;
        }
    }
    p->c.kv_sent_bytes += (uint64_t)nb * block_bytes;
    return 0;
}

void pf_ship(pd_prefill_t *p, pf_task_t *t)
{
    /* kv_transfer_us counts from here, the send of the first block (the
     * I/O thread starts on it while the later ones are queued), to the ack */
    const uint64_t t_send_us = pd_now_us();
    int rc;
    if (t->streaming && !t->stream_broken) {
        rc = pf_stream_commit(p, t);
        if (rc != 0 && rc != PD_EFULL) {
            /* The layers may be lost with the socket: send them all again,
             * as a whole transfer (which replaces the stream there). */
            t->stream_broken = true;
            rc = ship(p, t);
        }
    } else {
        rc = ship(p, t);
    }
    uint64_t now = pf_now_ms(p);
    if (rc == 0) {
        t->st = PT_LEASED;
        t->t_sent_us = t_send_us;
        t->lease_deadline_ms = now + p->cfg->worker.lease_ms;
        PD_DEBUG("event=kv_shipped req=%llu epoch=%u blocks=%u to=%s", (unsigned long long)t->req,
                 t->epoch, t->seq.n_blocks, t->decode_id);
        return;
    }
    if (now - t->t_ship_ms > p->cfg->worker.lease_ms) {
        /* The decode worker cannot be reached: hand the request back. */
        PD_WARN("event=kv_ship_failed req=%llu decode=%s endpoint=%s rc=%s",
                (unsigned long long)t->req, t->decode_id, t->kv_endpoint, pd_err_name(rc));
        pd_wkport_preempted(p->port, t->req, t->epoch, t->params.n_generated + 1,
                            "KV transfer to the decode worker failed");
        t->cancelled = true;
        t->st = PT_LEASED;
        t->acked = true;
    }
}

/* ====== Acknowledgements ====== */

void pd_prefill_on_ack(pd_prefill_t *p, const Pd__KvAck *a)
{
    int i = pf_task_index(p, a->request_id, a->epoch);
    if (i < 0 || p->tasks[i]->st != PT_LEASED) {
        PD_DEBUG("event=stray_kv_ack req=%llu epoch=%u", (unsigned long long)a->request_id,
                 a->epoch);
        return;
    }
    pf_task_t *t = p->tasks[i];
    t->acked = true;
    if ((!a->has_ok || !a->ok) && !(a->reason && strcmp(a->reason, "cancelled") == 0))
        PD_WARN("event=kv_refused req=%llu epoch=%u decode=%s reason=\"%s\"",
                (unsigned long long)t->req, t->epoch, t->decode_id, a->reason ? a->reason : "?");
    else {
        uint64_t us = pd_now_us() - t->t_sent_us;
        p->c.kv_transfers++;
        p->c.kv_transfer_us += us;
        PD_DEBUG("event=kv_acked req=%llu epoch=%u blocks=%u us=%llu", (unsigned long long)t->req,
                 t->epoch, t->seq.n_blocks, (unsigned long long)us);
    }
}

void pf_poll_egress(pd_prefill_t *p)
{
    pd_err_t err = { 0 };
    for (uint32_t e = 0; e < p->n_egress; e++) {
        void *s = p->egress[e].sock;
        for (int budget = 0; s && budget < 256; budget++) {
            if (pd_net_recv(s, p->in, &err) <= 0)
                break;
            Pd__Msg *m = NULL;
            if (p->in->n_frames == 1 && !p->in->truncated)
                m = pd_net_unpack(&p->alloc, zmq_msg_data(&p->in->frames[0]),
                                  zmq_msg_size(&p->in->frames[0]), &err);
            if (m && m->body_case == PD__MSG__BODY_KV_ACK)
                pd_prefill_on_ack(p, m->kv_ack);
            else
                PD_WARN("event=bad_kv_reply endpoint=%s type=%s", p->egress[e].endpoint,
                        m ? pd_net_body_name(m->body_case) : "malformed");
            pd_net_msg_free(&p->alloc, m);
            pd_net_in_close(p->in);
        }
    }
}

/* ====== Timers ====== */

void pf_egress_timers(pd_prefill_t *p)
{
    uint64_t now = pf_now_ms(p);
    for (size_t i = 0; i < p->n_tasks;) {
        pf_task_t *t = p->tasks[i];
        if (t->st == PT_SHIP && t->cancelled) {
            if (pf_task_drop(p, i))
                continue;
        } else if (t->st == PT_SHIP) {
            pf_ship(p, t);
        }
        if (t->st == PT_LEASED) {
            if (!t->acked && now > t->lease_deadline_ms) {
                PD_WARN("event=kv_lease_expired req=%llu epoch=%u decode=%s",
                        (unsigned long long)t->req, t->epoch, t->decode_id);
                t->acked = true;
                if (atomic_load(&t->frames_out) > 0)
                    pf_egress_reset(p, t->kv_endpoint);
            }
            if (t->acked && atomic_load(&t->frames_out) == 0) {
                pf_task_remove(p, i);
                continue;
            }
        }
        i++;
    }
    egress_close_idle(p, now);
}
