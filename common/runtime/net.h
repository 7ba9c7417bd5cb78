/* net.h -- ZeroMQ sockets and protobuf framing shared by every process.
 *
 * Socket discipline (DESIGN.md "Wire protocol"):
 *   - every socket: ZMQ_MAXMSGSIZE, finite ZMQ_LINGER, ZMQ_HANDSHAKE_IVL,
 *     send/receive HWMs, ZMTP heartbeats (ZMQ_HEARTBEAT_IVL/TIMEOUT/TTL),
 *     all from the config, never literals;
 *   - ROUTER sockets: ZMQ_ROUTER_MANDATORY, so a message to a vanished peer
 *     fails with EHOSTUNREACH instead of disappearing;
 *   - DEALER sockets: ZMQ_IMMEDIATE, so nothing queues for a peer that is
 *     not connected.
 * Sends never block: they report PD_EFULL (EAGAIN, back-pressure: retry
 * later) or PD_NET_EGONE (EHOSTUNREACH: the peer is gone) and never drop.
 *
 * Every message's payload frame is one serialized Pd__Msg envelope (see
 * proto/pd.proto). Unpacking goes through pd_pb_alloc_t, a
 * ProtobufCAllocator with a byte budget: protobuf-c 1.4.1 allocates what
 * the bytes announce, so the budget bounds what a hostile peer can make us
 * allocate, and every decoded value is validated by the handler after.
 */
#ifndef PD_NET_H
#define PD_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>
#include <zmq.h>

#include "runtime/config.h"
#include "base/clock.h"
#include "base/err.h"
#include "proto/pd.pb-c.h"

/* Incompatible wire changes bump this; a peer with another one is refused. */
#define PD_PROTOCOL_VERSION 1

/* Send result: the peer is gone (EHOSTUNREACH on a ROUTER socket). */
#define PD_NET_EGONE PD_EIO

/* Longest ZMQ routing id we keep (ZMQ allows 255 bytes). */
#define PD_NET_ID_MAX 255

/* Largest number of frames of one message we keep; further frames of the
 * same message are received and dropped (a million tiny frames cost only
 * time). Sized for a KV transfer: header + blocks of a max-length prompt. */
#define PD_NET_MAX_FRAMES 4100

/* CURVE keys, Z85 (40 chars + NUL). A ROUTER socket (always a server here)
 * uses server_secret; a DEALER (always a client) authenticates with
 * client_public/client_secret and checks the server against server_public. */
typedef struct {
    bool on;
    char server_public[64], server_secret[64]; /* as in pd_cfg_security_t */
    char client_public[64], client_secret[64];
} pd_net_curve_t;

typedef struct {
    int sndhwm;            /* messages */
    int rcvhwm;            /* messages */
    int64_t maxmsgsize;    /* bytes, per frame */
    int linger_ms;
    int handshake_ms;
    int heartbeat_ivl_ms;  /* ZMTP PING interval, 0 = off */
    int heartbeat_timeout_ms;
    int heartbeat_ttl_ms;
    pd_net_curve_t curve;
} pd_net_opts_t;

/* Options for control sockets from c->net, c->worker (heartbeat_ms,
 * liveness) and c->security (CURVE). */
void pd_net_opts_from_config(pd_net_opts_t *o, const pd_config_t *c);

/* Sets o's ZMTP heartbeat: a PING every heartbeat_ms; a peer that sends
 * nothing for heartbeat_ms * liveness after a PING (3 if liveness is 0) is
 * disconnected. pd_net_opts_from_config uses worker.heartbeat_ms and
 * worker.liveness; the router's sockets use the router.* pair. */
void pd_net_opts_heartbeat(pd_net_opts_t *o, uint32_t heartbeat_ms, uint32_t liveness);

/* A socket of type (ZMQ_ROUTER or ZMQ_DEALER) with every option of o and
 * of its type applied, CURVE included when o->curve.on (a ROUTER without a
 * server secret key, or a DEALER without client keys, is refused). NULL and
 * err on failure. Close with pd_net_close. */
void *pd_net_socket(void *zctx, int type, const pd_net_opts_t *o, pd_err_t *err);
void pd_net_close(void *sock); /* accepts NULL */

/* Binds sock to endpoint ("tcp://127.0.0.1:0" or ":*" picks a free port)
 * and writes the endpoint actually bound (with the port) into bound. A
 * plain-text (non-CURVE) socket bound beyond loopback logs a warning. */
int pd_net_bind(void *sock, const char *endpoint, char *bound, size_t cap, pd_err_t *err);
int pd_net_connect(void *sock, const char *endpoint, pd_err_t *err);

/* ====== ZAP: who may connect ======
 *
 * With CURVE, a server accepts any client that knows its public key unless
 * a ZAP handler says otherwise. pd_zap_t is that handler: it answers the ZMQ
 * context's authentication requests from an allow-list of client public
 * keys. Poll pd_zap_socket() with the process's other sockets and call
 * pd_zap_handle() when it is readable (handshakes wait for it). */
typedef struct pd_zap pd_zap_t;

/* Binds the context's ZAP endpoint. allowed: n Z85 keys (n == 0: every
 * client that completes the CURVE handshake, logged as a warning). */
pd_zap_t *pd_zap_new(void *zctx, const char (*allowed)[64], uint32_t n, pd_err_t *err);
void pd_zap_free(pd_zap_t *z); /* accepts NULL */
void *pd_zap_socket(pd_zap_t *z);
/* Answers every pending request. Returns how many were refused. */
int pd_zap_handle(pd_zap_t *z);

/* ====== Bounded protobuf allocator ====== */

typedef struct {
    ProtobufCAllocator base;  /* pass &a->base to protobuf-c */
    size_t cap;               /* most bytes one unpack may ever allocate */
    size_t budget;            /* bytes the current unpack may allocate */
    size_t used;
    bool exceeded;            /* an allocation was refused */
    bool out_of_memory;       /* malloc failed (or the fault hook failed it) */
} pd_pb_alloc_t;

/* Decoded size allowed per wire byte: packed int32 take 4 bytes per 1-byte
 * varint, a repeated submessage ~64 bytes of struct per 2 wire bytes. */
#define PD_PB_BYTES_PER_WIRE_BYTE 32
#define PD_PB_BASE_BUDGET 65536

void pd_pb_alloc_init(pd_pb_alloc_t *a, size_t cap_bytes);

/* Unpacks one envelope from data[0..len), allowing it at most
 * min(cap, len * PD_PB_BYTES_PER_WIRE_BYTE + PD_PB_BASE_BUDGET) bytes of
 * decoded memory. NULL and err naming the problem (PD_EFORMAT malformed or
 * no body set, PD_ERANGE over budget, PD_ENOMEM out of memory) on failure. Free with pd_net_msg_free(msg, a). */
Pd__Msg *pd_net_unpack(pd_pb_alloc_t *a, const void *data, size_t len, pd_err_t *err);
void pd_net_msg_free(pd_pb_alloc_t *a, Pd__Msg *msg); /* accepts NULL */

/* What a payload is about, read from its wire bytes without allocating
 * (so it can answer a message that could not be unpacked): the envelope's
 * body (the last body field on the wire, as protobuf's "last one wins"), and
 * that body's field 1 and field 2 when they are varints -- request_id and
 * epoch in every request-carrying body (GenerateRequest has no epoch: its
 * field 2 is the prompt). Unknown or malformed bytes give body_case 0 or
 * has_request_id false; nothing here is validated beyond the bounds. */
typedef struct {
    int body_case;          /* PD__MSG__BODY_*, 0 = none found */
    bool has_request_id, has_epoch;
    uint64_t request_id;
    uint32_t epoch;
} pd_net_peek_t;
void pd_net_peek(const void *data, size_t len, pd_net_peek_t *out);

/* Name of an envelope's body type ("generate", "kv_transfer"...). */
const char *pd_net_body_name(int body_case);

/* ====== Sending ====== */

/* Packs m and sends it without blocking: [id][payload] when id != NULL
 * (ROUTER sockets), [payload] otherwise; more = ZMQ_SNDMORE follows the
 * payload with further frames (the caller sends them). Returns 0,
 * PD_EFULL (EAGAIN: back-pressure, nothing sent), PD_NET_EGONE
 * (EHOSTUNREACH: peer gone, nothing sent), PD_ENOMEM or PD_EIO. */
int pd_net_send(void *sock, const void *id, size_t id_len, const Pd__Msg *m, bool more,
                pd_err_t *err);

/* Sends an Error envelope (request_id may be 0). Same results as pd_net_send. */
int pd_net_send_error(void *sock, const void *id, size_t id_len, uint64_t request_id,
                      Pd__ErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* ====== Receiving ====== */

typedef struct {
    zmq_msg_t frames[PD_NET_MAX_FRAMES];
    int n_frames;          /* frames kept (all initialized; close with pd_net_in_close) */
    bool truncated;        /* the message had more than PD_NET_MAX_FRAMES frames */
} pd_net_in_t;

/* Receives one whole multipart message without blocking. Returns 1 when a
 * message was received, 0 when none was waiting (EAGAIN), or a negative
 * code. Always consumes every frame of the message. */
int pd_net_recv(void *sock, pd_net_in_t *in, pd_err_t *err);
void pd_net_in_close(pd_net_in_t *in);

/* ====== Clocks ======
 * Names kept for the worker code that still uses them: base/clock.h is the
 * clock (new code calls pd_now_us / pd_now_ms). */

static inline uint64_t pd_net_now_us(void) { return pd_now_us(); }
static inline uint64_t pd_net_now_ms(void) { return pd_now_ms(); }

/* Copies a protobuf string (which may be NULL) into dst[cap], NUL-terminated,
 * and returns PD_ERANGE if it did not fit (dst is then truncated). */
int pd_net_copy_str(char *dst, size_t cap, const char *src);

#endif
