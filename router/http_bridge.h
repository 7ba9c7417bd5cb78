/* http_bridge.h -- the HTTP front's way into the router: one thread that
 * owns a DEALER connected to the router's client socket and speaks to it
 * as any client does (GenerateRequest, Cancel, StatusRequest out;
 * StreamChunk, Error, ClusterStatus in), on behalf of the HTTP connection
 * threads (http.c).
 *
 *   connection threads --(outbox + eventfd, one mutex)--> bridge thread
 *   bridge thread --DEALER--> router client socket
 *   bridge thread --(per-request condition variable)--> connection thread
 *
 * One pd_hreq_t per generation. The connection thread submits it and
 * waits on it; the bridge fills it from StreamChunks. Both hold the
 * bridge's lock while touching it. It is freed by whichever side is last:
 * the connection when the final chunk has arrived, else the bridge when it
 * does (the connection then marked it abandoned and queued a Cancel).
 */
#ifndef PD_HTTP_BRIDGE_H
#define PD_HTTP_BRIDGE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "runtime/config.h"
#include "base/err.h"
#include "runtime/net.h"

typedef struct pd_bridge pd_bridge_t;

/* A generation in flight. Read its fields under pd_bridge_lock. */
typedef struct pd_hreq {
    uint64_t id;                  /* request id on the bridge's DEALER */
    pthread_cond_t cv;            /* signalled at every chunk and at the end */
    char *text;                   /* (text_cap) output text so far, NUL-terminated */
    size_t text_len, text_cap;
    uint32_t n_chunks;
    bool is_final, abandoned;
    int finish;                   /* Pd__FinishReason, on the final chunk */
    int code;                     /* Pd__ErrorCode, != 0: ended by an error */
    char err[512];
    uint32_t prompt_tokens, completion_tokens;
    struct pd_hreq *next;
} pd_hreq_t;

/* Connects to the router's client endpoint as bound (a wildcard bind is
 * reached on loopback) in zctx (NULL: a context of its own) and starts the
 * thread. NULL and err on failure. */
pd_bridge_t *pd_bridge_start(const pd_config_t *cfg, void *zctx, const char *client_endpoint,
                             pd_err_t *err);
/* Wakes every waiter and refuses new work (first step of stopping). */
void pd_bridge_stopping(pd_bridge_t *b);
/* Joins the thread and frees b and every request left. Accepts NULL.
 * Call after the connection threads are gone and before the ZeroMQ
 * context is terminated. */
void pd_bridge_free(pd_bridge_t *b);
const char *pd_bridge_endpoint(const pd_bridge_t *b); /* the endpoint connected to */

/* Sends g as a new request (g->request_id is set here). NULL with *rc
 * PD_ESTATE (stopping) or PD_ENOMEM. */
pd_hreq_t *pd_bridge_submit(pd_bridge_t *b, Pd__GenerateRequest *g, int *rc);
/* The connection is done with r (NULL is fine): frees it, or, while the
 * router still works on it, cancels it and lets the bridge free it at its
 * final chunk. */
void pd_bridge_release(pd_bridge_t *b, pd_hreq_t *r);
/* A fresh ClusterStatus from the router; *out is the unpacked message
 * (caller frees with pd__msg__free_unpacked(*out, NULL)). PD_EIO when the
 * router does not answer in time. */
int pd_bridge_status(pd_bridge_t *b, Pd__Msg **out);

void pd_bridge_lock(pd_bridge_t *b);
void pd_bridge_unlock(pd_bridge_t *b);
bool pd_bridge_is_stopping_locked(pd_bridge_t *b);
/* Waits (locked) for news of r until `until` (CLOCK_REALTIME). */
void pd_bridge_wait_locked(pd_bridge_t *b, pd_hreq_t *r, const struct timespec *until);

#endif
