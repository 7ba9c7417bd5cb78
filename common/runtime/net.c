/* net.c -- see net.h */
#include "runtime/net.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/fault.h"
#include "base/log.h"

/* ====== Socket options ====== */

void pd_net_opts_heartbeat(pd_net_opts_t *o, uint32_t heartbeat_ms, uint32_t liveness)
{
    o->heartbeat_ivl_ms = heartbeat_ms > 600000 ? 600000 : (int)heartbeat_ms;
    uint64_t to = (uint64_t)heartbeat_ms * (liveness ? liveness : 3);
    o->heartbeat_timeout_ms = to > 600000 ? 600000 : (int)to;
    /* TTL has 100 ms resolution in ZMTP; keep it a multiple. */
    o->heartbeat_ttl_ms = ((o->heartbeat_timeout_ms + 99) / 100) * 100;
}

void pd_net_opts_from_config(pd_net_opts_t *o, const pd_config_t *c)
{
    memset(o, 0, sizeof *o);
    o->sndhwm = (int)c->net.hwm;
    o->rcvhwm = (int)c->net.hwm;
    o->maxmsgsize = c->net.max_msg_bytes > INT64_MAX ? INT64_MAX : (int64_t)c->net.max_msg_bytes;
    o->linger_ms = (int)c->net.linger_ms;
    o->handshake_ms = (int)c->net.handshake_ms;
    pd_net_opts_heartbeat(o, c->worker.heartbeat_ms, c->worker.liveness);
    const pd_cfg_security_t *s = &c->security;
    o->curve.on = s->curve;
    snprintf(o->curve.server_public, sizeof o->curve.server_public, "%s", s->server_public_key);
    snprintf(o->curve.server_secret, sizeof o->curve.server_secret, "%s", s->server_secret_key);
    snprintf(o->curve.client_public, sizeof o->curve.client_public, "%s", s->client_public_key);
    snprintf(o->curve.client_secret, sizeof o->curve.client_secret, "%s", s->client_secret_key);
}

static int set_key(void *s, int opt, const char *z85, const char *name, pd_err_t *err)
{
    if (strlen(z85) != 40)
        return pd_err_set(err, PD_EINVAL, "%s: a 40-character Z85 key is required with CURVE",
                          name);
    if (zmq_setsockopt(s, opt, z85, 41) != 0)
        return pd_err_set(err, PD_EINVAL, "%s: %s", name, zmq_strerror(errno));
    return 0;
}

static int apply_curve(void *s, int type, const pd_net_curve_t *c, pd_err_t *err)
{
    if (!c->on)
        return 0;
    if (type == ZMQ_ROUTER) {
        int one = 1;
        if (zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
            zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, "pdserve", 7) != 0)
            return pd_err_set(err, PD_EIO, "CURVE server: %s", zmq_strerror(errno));
        return set_key(s, ZMQ_CURVE_SECRETKEY, c->server_secret, "security.server_secret_key",
                       err);
    }
    if (set_key(s, ZMQ_CURVE_SERVERKEY, c->server_public, "security.server_public_key", err) ||
        set_key(s, ZMQ_CURVE_PUBLICKEY, c->client_public, "security.client_public_key", err) ||
        set_key(s, ZMQ_CURVE_SECRETKEY, c->client_secret, "security.client_secret_key", err))
        return PD_EINVAL;
    return 0;
}

static int set_int(void *s, int opt, int v, const char *name, pd_err_t *err)
{
    if (zmq_setsockopt(s, opt, &v, sizeof v) != 0)
        return pd_err_set(err, PD_EIO, "zmq_setsockopt(%s=%d): %s", name, v, zmq_strerror(errno));
    return 0;
}

void *pd_net_socket(void *zctx, int type, const pd_net_opts_t *o, pd_err_t *err)
{
    void *s = zmq_socket(zctx, type);
    if (s == NULL) {
        pd_err_set(err, PD_EIO, "zmq_socket: %s", zmq_strerror(errno));
        return NULL;
    }
    if (set_int(s, ZMQ_SNDHWM, o->sndhwm, "ZMQ_SNDHWM", err) ||
        set_int(s, ZMQ_RCVHWM, o->rcvhwm, "ZMQ_RCVHWM", err) ||
        set_int(s, ZMQ_LINGER, o->linger_ms, "ZMQ_LINGER", err) ||
        set_int(s, ZMQ_HANDSHAKE_IVL, o->handshake_ms, "ZMQ_HANDSHAKE_IVL", err))
        goto fail;
    if (o->maxmsgsize > 0 &&
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &o->maxmsgsize, sizeof o->maxmsgsize) != 0) {
        pd_err_set(err, PD_EIO, "zmq_setsockopt(ZMQ_MAXMSGSIZE): %s", zmq_strerror(errno));
        goto fail;
    }
    if (o->heartbeat_ivl_ms > 0) {
        if (set_int(s, ZMQ_HEARTBEAT_IVL, o->heartbeat_ivl_ms, "ZMQ_HEARTBEAT_IVL", err) ||
            set_int(s, ZMQ_HEARTBEAT_TIMEOUT, o->heartbeat_timeout_ms, "ZMQ_HEARTBEAT_TIMEOUT",
                    err) ||
            set_int(s, ZMQ_HEARTBEAT_TTL, o->heartbeat_ttl_ms, "ZMQ_HEARTBEAT_TTL", err))
            goto fail;
    }
    if (type == ZMQ_ROUTER && set_int(s, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY", err))
        goto fail;
    if (type == ZMQ_DEALER && set_int(s, ZMQ_IMMEDIATE, 1, "ZMQ_IMMEDIATE", err))
        goto fail;
    if (apply_curve(s, type, &o->curve, err))
        goto fail;
    return s;
fail:
    zmq_close(s);
    return NULL;
}

void pd_net_close(void *sock)
{
    if (sock)
        zmq_close(sock);
}

int pd_net_bind(void *sock, const char *endpoint, char *bound, size_t cap, pd_err_t *err)
{
    char ep[PD_CFG_STR + 8];
    size_t n = strlen(endpoint);
    if (n + 1 > sizeof ep)
        return pd_err_set(err, PD_EINVAL, "endpoint too long: %s", endpoint);
    memcpy(ep, endpoint, n + 1);
    /* ":0" means any free port, as ":*" does for ZeroMQ. */
    if (strncmp(ep, "tcp://", 6) == 0 && n >= 2 && strcmp(ep + n - 2, ":0") == 0)
        ep[n - 1] = '*';
    if (zmq_bind(sock, ep) != 0)
        return pd_err_set(err, PD_EIO, "bind %s: %s", endpoint, zmq_strerror(errno));
    int mech = 0;
    size_t mlen = sizeof mech;
    zmq_getsockopt(sock, ZMQ_MECHANISM, &mech, &mlen);
    if (mech != ZMQ_CURVE && strncmp(ep, "tcp://", 6) == 0) {
        const char *h = ep + 6;
        bool loop = strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost:", 10) == 0 ||
                    strncmp(h, "[::1]:", 6) == 0;
        if (!loop)
            PD_WARN("event=plaintext_endpoint endpoint=%s msg=\"not loopback and CURVE is off: "
                    "traffic is neither authenticated nor encrypted (security.curve)\"",
                    endpoint);
    }
    if (bound && cap) {
        size_t len = cap;
        if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, bound, &len) != 0)
            return pd_err_set(err, PD_EIO, "ZMQ_LAST_ENDPOINT: %s", zmq_strerror(errno));
        bound[cap - 1] = '\0';
    }
    return 0;
}

int pd_net_connect(void *sock, const char *endpoint, pd_err_t *err)
{
    if (zmq_connect(sock, endpoint) != 0)
        return pd_err_set(err, PD_EIO, "connect %s: %s", endpoint, zmq_strerror(errno));
    return 0;
}

/* ====== ZAP ====== */

#define PD_ZAP_MAX_KEYS 64

struct pd_zap {
    void *sock; /* REP, inproc://zeromq.zap.01 */
    uint8_t keys[PD_ZAP_MAX_KEYS][32];
    uint32_t n_keys;
};

pd_zap_t *pd_zap_new(void *zctx, const char (*allowed)[64], uint32_t n, pd_err_t *err)
{
    if (n > PD_ZAP_MAX_KEYS) {
        pd_err_set(err, PD_EINVAL, "security.allowed_keys: at most %d", PD_ZAP_MAX_KEYS);
        return NULL;
    }
    pd_zap_t *z = calloc(1, sizeof *z);
    if (z == NULL) {
        pd_err_set(err, PD_ENOMEM, "zap");
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (strlen(allowed[i]) != 40 || zmq_z85_decode(z->keys[i], allowed[i]) == NULL) {
            pd_err_set(err, PD_EINVAL, "security.allowed_keys[%u]: not a Z85 key", i);
            free(z);
            return NULL;
        }
    }
    z->n_keys = n;
    z->sock = zmq_socket(zctx, ZMQ_REP);
    int linger = 0;
    if (z->sock == NULL || zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(z->sock, "inproc://zeromq.zap.01") != 0) {
        pd_err_set(err, PD_EIO, "ZAP handler: %s", zmq_strerror(errno));
        pd_zap_free(z);
        return NULL;
    }
    if (n == 0)
        PD_WARN("event=curve_open msg=\"security.allowed_keys is empty: any client that knows "
                "the server key is accepted\"");
    return z;
}

void pd_zap_free(pd_zap_t *z)
{
    if (z == NULL)
        return;
    if (z->sock)
        zmq_close(z->sock);
    free(z);
}

void *pd_zap_socket(pd_zap_t *z) { return z->sock; }

/* One ZAP request (RFC 27): version, request id, domain, address, identity,
 * mechanism, credentials (CURVE: the client's 32-byte public key). */
static int zap_one(pd_zap_t *z)
{
    zmq_msg_t f[8];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t *m = &f[n < 8 ? n : 7];
        if (n >= 8)
            zmq_msg_close(m);
        zmq_msg_init(m);
        if (zmq_msg_recv(m, z->sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(m);
            for (int i = 0; i < n && &f[i] != m; i++)
                zmq_msg_close(&f[i]);
            return -1;
        }
        more = zmq_msg_more(m);
        if (n < 8)
            n++;
    }
    bool ok = false;
    char who[41] = "?";
    if (n >= 7 && zmq_msg_size(&f[5]) == 5 && memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0 &&
        zmq_msg_size(&f[6]) == 32) {
        const uint8_t *key = zmq_msg_data(&f[6]);
        zmq_z85_encode(who, key, 32);
        ok = z->n_keys == 0;
        for (uint32_t i = 0; i < z->n_keys && !ok; i++)
            ok = memcmp(z->keys[i], key, 32) == 0;
    }
    const char *status = ok ? "200" : "400";
    const char *text = ok ? "OK" : "client key not allowed";
    zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(z->sock, n >= 2 ? zmq_msg_data(&f[1]) : "", n >= 2 ? zmq_msg_size(&f[1]) : 0,
             ZMQ_SNDMORE);
    zmq_send(z->sock, status, 3, ZMQ_SNDMORE);
    zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(z->sock, ok ? who : "", ok ? strlen(who) : 0, ZMQ_SNDMORE);
    zmq_send(z->sock, "", 0, 0);
    if (!ok)
        PD_WARN("event=peer_refused mechanism=CURVE key=%s", who);
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
    return ok ? 0 : 1;
}

int pd_zap_handle(pd_zap_t *z)
{
    int refused = 0;
    for (int budget = 0; budget < 64; budget++) {
        int rc = zap_one(z);
        if (rc < 0)
            break;
        refused += rc;
    }
    return refused;
}

/* ====== Bounded allocator ====== */

/* Each block carries its size in front so free can give the budget back. */
typedef struct {
    size_t size;
    size_t pad; /* keeps the payload 16-byte aligned */
} alloc_hdr_t;

static void *pb_alloc(void *data, size_t size)
{
    pd_pb_alloc_t *a = data;
    if (size > a->budget || a->used > a->budget - size) {
        a->exceeded = true;
        return NULL;
    }
    alloc_hdr_t *h = pd_malloc(sizeof *h + size);
    if (h == NULL) {
        a->out_of_memory = true;
        return NULL;
    }
    h->size = size;
    a->used += size;
    return h + 1;
}

static void pb_free(void *data, void *ptr)
{
    pd_pb_alloc_t *a = data;
    if (ptr == NULL)
        return;
    alloc_hdr_t *h = (alloc_hdr_t *)ptr - 1;
    a->used -= h->size < a->used ? h->size : a->used;
    free(h);
}

void pd_pb_alloc_init(pd_pb_alloc_t *a, size_t cap_bytes)
{
    memset(a, 0, sizeof *a);
    a->base.alloc = pb_alloc;
    a->base.free = pb_free;
    a->base.allocator_data = a;
    a->cap = cap_bytes;
    a->budget = cap_bytes;
}

Pd__Msg *pd_net_unpack(pd_pb_alloc_t *a, const void *data, size_t len, pd_err_t *err)
{
    a->exceeded = a->out_of_memory = false;
    size_t per = len > (SIZE_MAX - PD_PB_BASE_BUDGET) / PD_PB_BYTES_PER_WIRE_BYTE
                     ? SIZE_MAX
                     : len * PD_PB_BYTES_PER_WIRE_BYTE + PD_PB_BASE_BUDGET;
    /* Messages still held count against the budget too. */
    a->budget = a->used + (per < a->cap ? per : a->cap);
    Pd__Msg *m = pd__msg__unpack(&a->base, len, data);
    if (m == NULL) {
        if (a->out_of_memory)
            pd_err_set(err, PD_ENOMEM, "out of memory decoding a message of %zu bytes", len);
        else if (a->exceeded)
            pd_err_set(err, PD_ERANGE, "message of %zu bytes needs more than %zu bytes to decode",
                       len, a->budget - a->used);
        else
            pd_err_set(err, PD_EFORMAT, "malformed protobuf message (%zu bytes)", len);
        return NULL;
    }
    if (m->body_case == PD__MSG__BODY__NOT_SET || m->generate == NULL) {
        pd__msg__free_unpacked(m, &a->base);
        pd_err_set(err, PD_EFORMAT, "message (%zu bytes) has no known body type", len);
        return NULL;
    }
    return m;
}

void pd_net_msg_free(pd_pb_alloc_t *a, Pd__Msg *msg)
{
    if (msg)
        pd__msg__free_unpacked(msg, &a->base);
}

/* ====== Peeking at the wire ====== */

/* Reads a varint at *p (< end); false if truncated or longer than 10 bytes. */
static bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 70 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

/* Skips one field's value of wire type wt; false if it does not fit. */
static bool wire_skip(const uint8_t **p, const uint8_t *end, unsigned wt)
{
    uint64_t n;
    switch (wt) {
    case 0: return wire_varint(p, end, &n);
    case 1: n = 8; break;
    case 2:
        if (!wire_varint(p, end, &n))
            return false;
        break;
    case 5: n = 4; break;
    default: return false; /* groups are not used by pd.proto */
    }
    if (n > (uint64_t)(end - *p))
        return false;
    *p += n;
    return true;
}

void pd_net_peek(const void *data, size_t len, pd_net_peek_t *out)
{
    memset(out, 0, sizeof *out);
    const uint8_t *p = data, *end = p + len, *body = NULL, *body_end = NULL;
    while (p < end) {
        uint64_t tag;
        if (!wire_varint(&p, end, &tag))
            return;
        uint64_t field = tag >> 3;
        unsigned wt = (unsigned)(tag & 7);
        const uint8_t *start = p;
        if (!wire_skip(&p, end, wt))
            return;
        if (wt == 2 && field >= 1 && field <= 64 &&
            strcmp(pd_net_body_name((int)field), "unknown") != 0) {
            out->body_case = (int)field;
            uint64_t n;
            wire_varint(&start, end, &n); /* cannot fail: wire_skip read it */
            body = start;
            body_end = p;
        }
    }
    for (p = body; p && p < body_end;) {
        uint64_t tag, v;
        if (!wire_varint(&p, body_end, &tag))
            return;
        if ((tag & 7) != 0) {
            if (!wire_skip(&p, body_end, (unsigned)(tag & 7)))
                return;
            continue;
        }
        if (!wire_varint(&p, body_end, &v))
            return;
        if (tag >> 3 == 1) {
            out->has_request_id = true;
            out->request_id = v;
        } else if (tag >> 3 == 2) {
            out->has_epoch = true;
            out->epoch = (uint32_t)v;
        }
    }
}

const char *pd_net_body_name(int body_case)
{
    switch (body_case) {
    case PD__MSG__BODY_GENERATE: return "generate";
    case PD__MSG__BODY_CHUNK: return "chunk";
    case PD__MSG__BODY_CANCEL: return "cancel";
    case PD__MSG__BODY_ERROR: return "error";
    case PD__MSG__BODY_STATUS_REQUEST: return "status_request";
    case PD__MSG__BODY_STATUS: return "status";
    case PD__MSG__BODY_REGISTER: return "register";
    case PD__MSG__BODY_REGISTER_REPLY: return "register_reply";
    case PD__MSG__BODY_HEARTBEAT: return "heartbeat";
    case PD__MSG__BODY_DRAIN: return "drain";
    case PD__MSG__BODY_PREFILL: return "prefill";
    case PD__MSG__BODY_DECODE: return "decode";
    case PD__MSG__BODY_KV_TRANSFER: return "kv_transfer";
    case PD__MSG__BODY_KV_ACK: return "kv_ack";
    case PD__MSG__BODY_KV_LAYER: return "kv_layer";
    case PD__MSG__BODY_TOKENS: return "tokens";
    case PD__MSG__BODY_PREEMPTED: return "preempted";
    case PD__MSG__BODY_KV_EVENTS: return "kv_events";
    case PD__MSG__BODY_KV_RESYNC: return "kv_resync";
    case PD__MSG__BODY_KV_PEERS: return "kv_peers";
    default: return "unknown";
    }
}

/* ====== Sending ====== */

static int send_result(pd_err_t *err, const char *what)
{
    int e = errno;
    if (e == EAGAIN)
        return pd_err_set(err, PD_EFULL, "%s: peer not keeping up (EAGAIN)", what);
    if (e == EHOSTUNREACH)
        return pd_err_set(err, PD_NET_EGONE, "%s: peer gone (EHOSTUNREACH)", what);
    return pd_err_set(err, PD_EIO, "%s: %s", what, zmq_strerror(e));
}

int pd_net_send(void *sock, const void *id, size_t id_len, const Pd__Msg *m, bool more,
                pd_err_t *err)
{
    size_t len = pd__msg__get_packed_size(m);
    zmq_msg_t payload;
    /* The payload buffer is the one allocation we ask libzmq for: the fault
     * hook (fault.h) may fail it as if libzmq's malloc had. */
    if (pd_fault_alloc_fails() || zmq_msg_init_size(&payload, len) != 0)
        return pd_err_set(err, PD_ENOMEM, "zmq_msg_init_size(%zu)", len);
    pd__msg__pack(m, zmq_msg_data(&payload));
    if (id) {
        /* With ROUTER_MANDATORY an unroutable id fails here, before any
         * frame is queued, so nothing half-sent remains. */
        if (zmq_send(sock, id, id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&payload);
            return send_result(err, "send id");
        }
    }
    if (zmq_msg_send(&payload, sock, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)) < 0) {
        zmq_msg_close(&payload);
        return send_result(err, "send");
    }
    return 0;
}

int pd_net_send_error(void *sock, const void *id, size_t id_len, uint64_t request_id,
                      Pd__ErrorCode code, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    Pd__Error e = PD__ERROR__INIT;
    e.has_request_id = request_id != 0;
    e.request_id = request_id;
    e.has_code = true;
    e.code = code;
    e.message = text;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_ERROR;
    m.error = &e;
    return pd_net_send(sock, id, id_len, &m, false, NULL);
}

/* ====== Receiving ====== */

int pd_net_recv(void *sock, pd_net_in_t *in, pd_err_t *err)
{
    in->n_frames = 0;
    in->truncated = false;
    zmq_msg_t scratch;
    int more = 1;
    bool first = true;
    while (more) {
        zmq_msg_t *f = in->n_frames < PD_NET_MAX_FRAMES ? &in->frames[in->n_frames] : &scratch;
        zmq_msg_init(f);
        /* The first frame decides whether a message is waiting; the rest
         * of a multipart message is always there once the first is. */
        if (zmq_msg_recv(f, sock, first ? ZMQ_DONTWAIT : 0) < 0) {
            int e = errno;
            zmq_msg_close(f);
            if (first && e == EAGAIN)
                return 0;
            pd_net_in_close(in);
            return pd_err_set(err, PD_EIO, "recv: %s", zmq_strerror(e));
        }
        first = false;
        more = zmq_msg_more(f);
        if (f == &scratch) {
            in->truncated = true;
            zmq_msg_close(f);
        } else {
            in->n_frames++;
        }
    }
    return 1;
}

void pd_net_in_close(pd_net_in_t *in)
{
    for (int i = 0; i < in->n_frames; i++)
        zmq_msg_close(&in->frames[i]);
    in->n_frames = 0;
}

int pd_net_copy_str(char *dst, size_t cap, const char *src)
{
    if (cap == 0)
        return PD_ERANGE;
    if (src == NULL) {
        dst[0] = '\0';
        return 0;
    }
    size_t n = strlen(src);
    if (n >= cap) {
        memcpy(dst, src, cap - 1);
        dst[cap - 1] = '\0';
        return PD_ERANGE;
    }
    memcpy(dst, src, n + 1);
    return 0;
}
