/* prefill_internal.h -- what prefill.c (tasks, passes, the role) and
 * egress.c (KV shipping, leases) share. Not for outside prefill_worker/. */
#ifndef PD_PREFILL_INTERNAL_H
#define PD_PREFILL_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "prefill.h"
#include "runtime/kvevents.h"
#include "runtime/net.h"

#define PF_MAX_EGRESS 64       /* decode endpoints shipped to at once */
#define PF_EGRESS_IDLE_MS 5000 /* an egress socket unused this long is closed (not a peer's) */
#define PF_EGRESS_RETRY_MS 100 /* a listed peer's socket, reset, is made again after this */
/* A streaming prompt whose socket is not connected yet waits this long at
 * most before its first pass: a fallback, since the router's KvPeers have
 * the socket connected before any task names it (egress.c pf_on_peers). */
#define PF_CONNECT_WAIT_MS 200

/* QUEUED: waiting for (more of) its pass. SHIP: prefilled, its KV not yet
 * sent (the decode worker was unreachable: retried by the timers). LEASED:
 * sent; its blocks stay ours until the KvAck (or the lease's end) and until
 * ZeroMQ has let go of every frame. */
typedef enum { PT_QUEUED = 0, PT_SHIP, PT_LEASED } pf_state_t;

typedef struct {
    pf_state_t st;
    uint64_t req;
    uint32_t epoch;
    int32_t *tokens;           /* (n_tokens) prompt + re-prefilled output */
    uint32_t n_tokens, n_done; /* positions computed so far */
    pd_gen_params_t params;
    char decode_id[64];
    char kv_endpoint[PD_CFG_STR];
    pd_kv_seq_t seq;           /* its blocks in our cache */
    bool cancelled;
    int32_t first_token;
    uint64_t t_arrive_ms, t_ship_ms, lease_deadline_ms; /* host clock */
    uint64_t t_sent_us;        /* when the transfer went out */
    atomic_int frames_out;     /* block frames ZeroMQ still holds (zero-copy) */
    bool acked;
    /* kv.transfer: layer (stream_out.c) */
    uint32_t streamed_blocks;  /* blocks [0, this) have every layer sent */
    bool streaming;            /* a KvLayer went out: a commit or a whole transfer follows */
    bool stream_broken;        /* a layer could not be sent: ship whole instead */
    uint64_t t_last_layer_us;  /* when its last pass had computed every layer (pd_now_us) */
    uint64_t stream_us;        /* time the passes' hooks spent sending its layers (checksums, sends) */
} pf_task_t;

typedef struct {
    char endpoint[PD_CFG_STR];
    void *sock;                /* DEALER to a decode worker's KV ingress */
    uint64_t last_used_ms;     /* last shipment (closed after PF_EGRESS_IDLE_MS idle) */
    bool peer;                 /* in the router's last KvPeers: kept connected, never idle-closed */
} pf_egress_t;

/* The pass being run: what fill put in it, for done. */
typedef struct {
    pf_task_t **picked;        /* (max_fwd_seqs) tasks in the pass, n of them */
    uint32_t *chunk;           /* (max_fwd_seqs) tokens of each in the pass */
    uint32_t *upto;            /* (max_fwd_seqs) blocks of each complete after the pass */
    bool *live;                /* (max_fwd_seqs) each streams its layers in this pass */
    uint32_t n, n_tok;
    uint32_t logit0;           /* the pass's logits row of the first finished prompt */
} pf_step_t;

struct pd_prefill {
    pd_wkrole_env_t env;
    pd_wkengine_t *eng;        /* env.eng */
    const pd_config_t *cfg;    /* env.cfg */
    const pd_wkport_t *port;   /* env.port */
    char id[64];
    pd_kv_sink_t colocated;    /* take NULL: not colocated */
    pf_task_t **tasks;         /* (n_tasks) queued, shipping and leased, in arrival order */
    size_t n_tasks, cap_tasks;
    pf_egress_t egress[PF_MAX_EGRESS];
    uint32_t n_egress;
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
    pd_kvev_t *kvev;           /* prefix cache events (NULL: kv.prefix_caching off) */
    pd_worker_counters_t c;
    pf_step_t step;
    uint32_t layer_delay_ms;   /* PD_TEST_LAYER_DELAY_MS (docs/config.md); 0: off */
};

static inline uint64_t pf_now_ms(const pd_prefill_t *p) { return p->port->now_ms(p->port->host); }

/* prefill.c */
int pf_task_index(const pd_prefill_t *p, uint64_t req, uint32_t epoch);
void pf_task_remove(pd_prefill_t *p, size_t i);
/* Removes task i now, or, while ZeroMQ still holds frames over its blocks,
 * marks it to be freed by the timers once it lets go (within a lease).
 * Returns true when it was removed (the table moved down). */
bool pf_task_drop(pd_prefill_t *p, size_t i);

/* egress.c */
/* t's KV goes to its decode worker now, or (unreachable) by the timers
 * until the lease's length has passed, then the request goes back. */
void pf_ship(pd_prefill_t *p, pf_task_t *t);
void pf_poll_egress(pd_prefill_t *p);
/* Shipping retries, lease expiry, freeing acknowledged tasks, idle sockets. */
void pf_egress_timers(pd_prefill_t *p);
void pf_egress_close(pd_prefill_t *p);
/* The DEALER to endpoint (connected now if need be), or NULL. */
pf_egress_t *pf_egress_get(pd_prefill_t *p, const char *endpoint);
/* Drops endpoint's socket and what is queued in it. */
void pf_egress_reset(pd_prefill_t *p, const char *endpoint);
/* Whether endpoint's DEALER (connected now if need be) has its connection
 * up: our DEALERs queue nothing for a peer not connected yet. */
bool pf_egress_ready(pd_prefill_t *p, const char *endpoint);
/* The router's KvPeers: connects to each listed KV endpoint now and keeps
 * those sockets (reconnected after a reset) until a later list drops them;
 * the others close when idle. */
void pf_on_peers(pd_prefill_t *p, const Pd__KvPeers *k);
/* ZeroMQ's free callback of a zero-copy frame over task hint's blocks. */
void pf_frame_done(void *data, void *hint);

/* stream_out.c (kv.transfer: layer) */
/* The pass's hook: layer `layer` of every task in it is computed; each
 * task that streams sends that layer of its newly complete blocks. */
void pf_stream_layer(pd_prefill_t *p, uint32_t layer);
/* Whether t ships its KV layer by layer. */
bool pf_streams(const pd_prefill_t *p, const pf_task_t *t);
/* Whether t should wait before its first pass: it streams, and its socket
 * is not connected yet (for PF_CONNECT_WAIT_MS at most after its arrival;
 * then it goes on and ships whole if need be). */
bool pf_stream_wait(pd_prefill_t *p, const pf_task_t *t);
/* The commit of t's stream (KvTransfer, streamed): 0 when sent, PD_EFULL
 * to try again, another code when the stream is lost (ship whole). */
int pf_stream_commit(pd_prefill_t *p, pf_task_t *t);

#endif
