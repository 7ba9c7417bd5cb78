/* http.h -- the OpenAI-compatible HTTP front, /health and /metrics.
 *
 * Served from the router process without touching its reactor: the HTTP
 * server (libmicrohttpd, one thread per connection, at most
 * http.max_connections) and one bridge thread (http_bridge.h) talk to the
 * router the way any client does, over ZeroMQ -- a DEALER connected to the
 * router's client endpoint, carrying the same GenerateRequest / StreamChunk
 * / Cancel / StatusRequest messages as libpdclient. The reactor stays
 * single-threaded and sees HTTP as one more client; a slow HTTP client only
 * slows its own connection thread (and, through ZeroMQ back-pressure, its
 * own stream). What a request body means and what an answer looks like is
 * openai.h's.
 *
 * Endpoints: POST /v1/completions, POST /v1/chat/completions (stream: true
 * as Server-Sent Events ending with "data: [DONE]"), GET /v1/models,
 * GET /health, GET /metrics. docs/api.md describes every parameter.
 */
#ifndef PD_HTTP_H
#define PD_HTTP_H

#include <stdint.h>

#include "runtime/config.h"
#include "base/err.h"
#include "metrics.h"
#include "engine/tokenizer.h"

typedef struct pd_http pd_http_t;

typedef struct {
    const pd_config_t *cfg;        /* http.*, router.max_tokens_limit, net.*, security.* */
    void *zctx;                    /* ZeroMQ context to use (the router's), NULL = own */
    const char *client_endpoint;   /* the router's client socket, as bound */
    const pd_tok_t *tok;           /* borrowed; must outlive the server */
    const char *chat_template;     /* the GGUF's tokenizer.chat_template, NULL if none */
    const char *model_name;        /* served name (/v1/models, "model") */
    uint32_t max_seq_len;          /* context length, tokens */
    pd_metrics_t *metrics;         /* borrowed, may be NULL */
} pd_http_opts_t;

/* Starts listening on cfg->http.listen. Fails (NULL, err) when the address
 * cannot be bound, or the chat template is in no known family (a bad
 * http.chat_template name, or an unknown GGUF template with
 * http.chat_template auto). */
pd_http_t *pd_http_start(const pd_http_opts_t *o, pd_err_t *err);
/* The TCP port actually bound (listen ":0" picks one), and HOST:PORT with
 * that port ("127.0.0.1:8000"; a wildcard host reads as 127.0.0.1). */
int pd_http_port(const pd_http_t *h);
const char *pd_http_addr(const pd_http_t *h);
/* Closes every connection (cancelling their requests), joins the threads
 * and frees h. Accepts NULL. Call before the ZeroMQ context is terminated. */
void pd_http_stop(pd_http_t *h);

#endif
