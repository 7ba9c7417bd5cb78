/* httpc -- a minimal non-blocking HTTP/1.1 client for pd-bench --target.
 *
 * One pd_httpc_conn_t is one request on its own TCP connection
 * (`Connection: close`). The caller owns the event loop: it polls
 * pd_httpc_conn_fd() for pd_httpc_conn_events() and calls pd_httpc_conn_io()
 * with the returned revents. The response body is de-chunked
 * (Transfer-Encoding: chunked), bounded by Content-Length or read to EOF.
 * A 200 response with Content-Type text/event-stream is split into SSE
 * lines and every `data:` payload is handed to the callback; any other
 * response body is kept (at most PD_HTTPC_MAX_BODY bytes) for
 * pd_httpc_conn_body().
 *
 * Every length from the server is bounded: headers PD_HTTPC_MAX_HEADER,
 * an SSE line PD_HTTPC_MAX_LINE, a chunk-size line 64 bytes, a kept body
 * PD_HTTPC_MAX_BODY. Plain http only (no TLS).
 */
#ifndef PD_HTTPC_H
#define PD_HTTPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "base/err.h"

#define PD_HTTPC_MAX_HEADER 16384
#define PD_HTTPC_MAX_LINE (1u << 20)
#define PD_HTTPC_MAX_BODY (1u << 20)

/* A parsed and resolved "http://HOST[:PORT][/PATH]". */
typedef struct {
    char host[256];           /* without IPv6 brackets */
    char hostport[300];       /* the Host header value */
    uint16_t port;            /* default 80 */
    char path[512];           /* base path without a trailing '/', may be "" */
    struct sockaddr_storage addr;
    socklen_t addr_len;
} pd_httpc_url_t;

/* Parses and resolves url (getaddrinfo, blocking). PD_EINVAL with a message
 * naming what is wrong (scheme, host, port, path) or PD_EIO when the host
 * does not resolve. */
int pd_httpc_url_parse(const char *url, pd_httpc_url_t *u, pd_err_t *err);

typedef struct pd_httpc_conn pd_httpc_conn_t;

/* Called with each SSE `data:` payload (len bytes, NUL-terminated, without
 * the "data:" prefix, one leading space and the line end). Return non-zero
 * to stop the response (pd_httpc_conn_io then returns 1). */
typedef int (*pd_httpc_data_fn)(void *user, const char *data, size_t len);

/* Starts a non-blocking connect to u and queues `METHOD PATH` with body
 * (body_len bytes, may be 0; sent as application/json) and, when api_key is
 * not NULL, `Authorization: Bearer API_KEY` (api_key must hold no control
 * characters: PD_EINVAL otherwise). NULL on failure,
 * err says why: err->code PD_EFULL when out of file descriptors (retry once
 * a connection closed), else PD_EIO or PD_ENOMEM. */
pd_httpc_conn_t *pd_httpc_conn_new(const pd_httpc_url_t *u, const char *method, const char *path,
                                 const char *body, size_t body_len, const char *api_key,
                                 pd_err_t *err);
/* Whether a response was an event stream (Content-Type text/event-stream). */
int pd_httpc_conn_is_sse(const pd_httpc_conn_t *c);
void pd_httpc_conn_free(pd_httpc_conn_t *c); /* accepts NULL; closes the socket */

int pd_httpc_conn_fd(const pd_httpc_conn_t *c);
short pd_httpc_conn_events(const pd_httpc_conn_t *c); /* POLLOUT while connecting/sending, else POLLIN */
int pd_httpc_conn_connected(const pd_httpc_conn_t *c); /* 1 once the TCP connect completed */

/* Does the I/O that revents allows. Returns 0 (more to come), 1 (the
 * response is complete, or fn asked to stop), or a negative PD_E* with err
 * set (connect refused, reset, malformed response, a bound exceeded, the
 * server closed the connection mid-response). */
int pd_httpc_conn_io(pd_httpc_conn_t *c, short revents, pd_httpc_data_fn fn, void *user,
                    pd_err_t *err);

int pd_httpc_conn_status(const pd_httpc_conn_t *c); /* HTTP status, 0 before the headers */
/* The kept body (non-SSE responses), NUL-terminated; *len its length. */
const char *pd_httpc_conn_body(const pd_httpc_conn_t *c, size_t *len);

#endif
