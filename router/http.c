/* http.c -- see http.h. The HTTP server: connections (libmicrohttpd),
 * responses, auth, routing, the endpoints and their event streams, start
 * and stop. What a body means and what an answer says is openai.c's; the
 * way into the router is http_bridge.c's. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "chat_template.h"
#include "base/grow.h"
#include "http.h"
#include "http_bridge.h"
#include "base/log.h"
#include "openai.h"

#define WAIT_SLICE_MS 50          /* a waiting thread checks its client this often */

struct pd_http {
    pd_cfg_http_t cfg;
    pd_oai_t oai;                 /* what is served (points into the fields below) */
    pd_chat_t chat;
    char model[128];
    pd_metrics_t *metrics;
    time_t created;
    int port;
    char addr[PD_CFG_STR + 16];   /* HOST:PORT actually bound */
    struct MHD_Daemon *daemon;
    pd_bridge_t *bridge;          /* the way into the router */
};

/* ====== HTTP plumbing ====== */

typedef struct {
    pd_http_t *h;
    struct MHD_Connection *conn;
    char *body;                   /* (body_cap) request body */
    size_t body_len, body_cap;
    bool too_big;
    pd_hreq_t *req;               /* the generation in flight, or NULL */
    pd_oai_resp_t resp;           /* its response's identity */
    /* Streaming state. */
    pd_oai_stream_t stream;
    bool sent_done;
    size_t text_done;             /* bytes of req->text already sent */
    char *pend;                   /* (pend_cap) SSE bytes not yet handed to MHD */
    size_t pend_len, pend_off, pend_cap;
} conn_t;

/* True when the client closed its side (or the connection broke). */
static bool client_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL)
        return true;
    struct pollfd p = { .fd = ci->connect_fd, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
        return true;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0;
}

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned status, char *text,
                                    const char *type)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* Sends j (consumed) as the JSON body. */
static enum MHD_Result respond_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s == NULL)
        return MHD_NO;
    return respond_text(c, status, s, "application/json");
}

static enum MHD_Result respond_error(struct MHD_Connection *c, unsigned status, const char *param,
                                     const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result respond_error(struct MHD_Connection *c, unsigned status, const char *param,
                                     const char *code, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    PD_DEBUG("event=http_error status=%u msg=\"%s\"", status, msg);
    return respond_json(c, status, pd_oai_error_json(status, msg, param, code));
}

static bool authorized(pd_http_t *h, struct MHD_Connection *c)
{
    if (h->cfg.n_api_keys == 0)
        return true;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (a == NULL || strncmp(a, "Bearer ", 7) != 0)
        return false;
    a += 7;
    size_t al = strlen(a);
    bool ok = false;
    for (uint32_t i = 0; i < h->cfg.n_api_keys; i++) {
        const char *k = h->cfg.api_keys[i];
        size_t kl = strlen(k);
        /* Constant time over the key's length: no early exit on a mismatch. */
        unsigned diff = (unsigned)(al != kl);
        for (size_t j = 0; j < kl; j++)
            diff |= (unsigned)(uint8_t)k[j] ^ (unsigned)(uint8_t)(j < al ? a[j] : 0);
        ok |= diff == 0;
    }
    return ok;
}

/* ====== Endpoints ====== */

typedef enum { WAIT_FIRST, WAIT_TEXT, WAIT_FINAL } wait_t;

/* Waits for the request's first chunk, new text, or its end (each also
 * ends at the final chunk). Returns 0, or -1 when the client went away or
 * the server is stopping. The client is checked every WAIT_SLICE_MS even
 * while chunks keep arriving (a non-streamed request is woken by each). */
static int wait_for(conn_t *x, wait_t what)
{
    pd_bridge_t *b = x->h->bridge;
    pd_hreq_t *r = x->req;
    struct timespec next;
    clock_gettime(CLOCK_REALTIME, &next);
    pd_bridge_lock(b);
    for (;;) {
        if (r->is_final || (what == WAIT_FIRST && r->n_chunks > 0) ||
            (what == WAIT_TEXT && r->text_len > x->text_done))
            break;
        if (pd_bridge_is_stopping_locked(b)) {
            pd_bridge_unlock(b);
            return -1;
        }
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        bool due = now.tv_sec > next.tv_sec ||
                   (now.tv_sec == next.tv_sec && now.tv_nsec >= next.tv_nsec);
        if (due) {
            pd_bridge_unlock(b);
            bool gone = client_gone(x->conn);
            pd_bridge_lock(b);
            if (gone && !r->is_final) {
                pd_bridge_unlock(b);
                return -1;
            }
            next = now;
            next.tv_nsec += WAIT_SLICE_MS * 1000000L;
            if (next.tv_nsec >= 1000000000L) {
                next.tv_sec++;
                next.tv_nsec -= 1000000000L;
            }
            continue;
        }
        pd_bridge_wait_locked(b, r, &next);
    }
    pd_bridge_unlock(b);
    return 0;
}

/* Appends "data: <s>\n\n". */
static int sse_put(conn_t *x, const char *s)
{
    if (s == NULL)
        return PD_ENOMEM;
    size_t need = x->pend_len + strlen(s) + 9;
    if (pd_grow((void **)&x->pend, &x->pend_cap, need, 1, 1024) != 0)
        return PD_ENOMEM;
    x->pend_len += (size_t)sprintf(x->pend + x->pend_len, "data: %s\n\n", s);
    return 0;
}

/* Turns what arrived since the last call into SSE events (openai.c says
 * which), ending with "data: [DONE]" after the last. */
static int sse_step(conn_t *x)
{
    pd_http_t *h = x->h;
    pd_hreq_t *r = x->req;
    pd_bridge_lock(h->bridge);
    size_t n = r->text_len - x->text_done;
    char *text = malloc(n + 1);
    if (text) {
        memcpy(text, r->text ? r->text + x->text_done : "", n);
        text[n] = '\0';
        x->text_done = r->text_len;
    }
    bool final = r->is_final;
    char err[sizeof r->err];
    memcpy(err, r->err, sizeof err);
    pd_oai_result_t end = { .finish = r->finish, .prompt_tokens = r->prompt_tokens,
                            .completion_tokens = r->completion_tokens, .code = r->code,
                            .err = err };
    pd_bridge_unlock(h->bridge);
    json_t *events = json_array();
    int rc = text && events ? 0 : PD_ENOMEM;
    if (rc == 0)
        rc = pd_oai_stream_step(&h->oai, &x->resp, &x->stream, text, n, final ? &end : NULL,
                                events);
    free(text);
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        char *s = json_dumps(e, JSON_COMPACT);
        rc |= sse_put(x, s);
        free(s);
    }
    json_decref(events);
    if (final) {
        rc |= sse_put(x, "[DONE]");
        x->sent_done = true;
    }
    return rc ? PD_ENOMEM : 0;
}

/* MHD asks for more of the event stream; blocks (this connection's own
 * thread) until there is some. */
static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    conn_t *x = cls;
    (void)pos;
    for (;;) {
        if (x->pend_off < x->pend_len) {
            size_t n = x->pend_len - x->pend_off;
            n = n < max ? n : max;
            memcpy(buf, x->pend + x->pend_off, n);
            x->pend_off += n;
            return (ssize_t)n;
        }
        x->pend_off = x->pend_len = 0;
        if (x->sent_done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (wait_for(x, WAIT_TEXT) != 0 || sse_step(x) != 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static enum MHD_Result handle_generate(conn_t *x, bool chat)
{
    pd_http_t *h = x->h;
    pd_oai_req_t q;
    pd_oai_bad_t b = { 0 };
    if (!pd_oai_parse(&h->oai, x->body, x->body_len, chat, &q, &b)) {
        pd_oai_req_clear(&q);
        return respond_error(x->conn, b.status, b.param[0] ? b.param : NULL,
                             b.status == 404 ? "model_not_found" : NULL, "%s", b.msg);
    }
    bool stream = q.stream;
    Pd__GenerateRequest g;
    Pd__Sampling s;
    pd_oai_generate(&q, &g, &s);
    int rc = 0;
    x->req = pd_bridge_submit(h->bridge, &g, &rc);
    pd_oai_resp_init(&x->resp, chat, g.request_id, q.include_usage, time(NULL));
    pd_oai_req_clear(&q);
    if (x->req == NULL)
        return respond_error(x->conn, 503, NULL, "unavailable", "%s",
                             rc == PD_ESTATE ? "server shutting down" : "out of memory");
    if (wait_for(x, stream ? WAIT_FIRST : WAIT_FINAL) != 0)
        return MHD_NO; /* the client left: on_completed cancels */
    pd_bridge_lock(h->bridge);
    bool failed = x->req->is_final && x->req->code != 0;
    pd_bridge_unlock(h->bridge);
    if (failed) {
        const char *ecode;
        unsigned st = pd_oai_status_of(x->req->code, &ecode);
        return respond_error(x->conn, st, NULL, ecode, "%s", x->req->err);
    }
    if (!stream) {
        pd_oai_result_t res = { .text = x->req->text, .len = x->req->text_len,
                                .finish = x->req->finish, .prompt_tokens = x->req->prompt_tokens,
                                .completion_tokens = x->req->completion_tokens };
        return respond_json(x->conn, 200, pd_oai_result_json(&h->oai, &x->resp, &res));
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, x, NULL);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result mrc = MHD_queue_response(x->conn, 200, r);
    MHD_destroy_response(r);
    return mrc;
}

static bool cluster_ready(const Pd__ClusterStatus *cs, char *why, size_t cap)
{
    bool p = false, d = false, both = false;
    for (size_t i = 0; i < cs->n_workers; i++) {
        const Pd__WorkerStatus *w = cs->workers[i];
        if (w == NULL || w->state == NULL || strcmp(w->state, "ready") != 0)
            continue;
        p |= w->role == PD__ROLE__ROLE_PREFILL;
        d |= w->role == PD__ROLE__ROLE_DECODE;
        both |= w->role == PD__ROLE__ROLE_BOTH;
    }
    snprintf(why, cap, "not ready: %s prefill worker, %s decode worker, %s colocated worker",
             p ? "a" : "no", d ? "a" : "no", both ? "a" : "no");
    return (p && d) || both;
}

static enum MHD_Result handle_health(conn_t *x)
{
    Pd__Msg *m;
    if (pd_bridge_status(x->h->bridge, &m) != 0) {
        pd__msg__free_unpacked(m, NULL);
        return respond_error(x->conn, 503, NULL, "unavailable", "the router does not answer");
    }
    char why[160];
    bool ok = cluster_ready(m->status, why, sizeof why);
    size_t n = m->status->n_workers;
    pd__msg__free_unpacked(m, NULL);
    if (!ok)
        return respond_error(x->conn, 503, NULL, "unavailable", "%s", why);
    return respond_json(x->conn, 200, json_pack("{s:s, s:i}", "status", "ok", "workers", (int)n));
}

static enum MHD_Result handle_metrics(conn_t *x)
{
    Pd__Msg *m;
    int rc = pd_bridge_status(x->h->bridge, &m);
    char *text = pd_metrics_render(x->h->metrics, rc == 0 ? m->status : NULL);
    pd__msg__free_unpacked(m, NULL);
    if (text == NULL)
        return respond_error(x->conn, 500, NULL, "internal", "metrics unavailable");
    return respond_text(x->conn, 200, text, "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result handle_models(conn_t *x)
{
    return respond_json(x->conn, 200, pd_oai_models_json(&x->h->oai, x->h->created));
}

static enum MHD_Result route(conn_t *x, const char *url, const char *method)
{
    pd_http_t *h = x->h;
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    static const struct {
        const char *path;
        bool is_post;
    } routes[] = { { "/health", false }, { "/metrics", false }, { "/v1/models", false },
                   { "/v1/completions", true }, { "/v1/chat/completions", true } };
    int found = -1;
    for (int i = 0; i < (int)(sizeof routes / sizeof routes[0]); i++)
        if (strcmp(url, routes[i].path) == 0)
            found = i;
    if (found < 0)
        return respond_error(x->conn, 404, NULL, "not_found", "no such endpoint: %.128s %.256s",
                             method, url);
    if ((routes[found].is_post && !post) || (!routes[found].is_post && !get))
        return respond_error(x->conn, 405, NULL, "method_not_allowed", "%s takes %s, not %.16s",
                             url, routes[found].is_post ? "POST" : "GET", method);
    if (strncmp(url, "/v1/", 4) == 0 && !authorized(h, x->conn))
        return respond_error(x->conn, 401, NULL, "invalid_api_key",
                             "Incorrect or missing API key (Authorization: Bearer KEY).");
    switch (found) {
    case 0: return handle_health(x);
    case 1: return handle_metrics(x);
    case 2: return handle_models(x);
    case 3: return handle_generate(x, false);
    default: return handle_generate(x, true);
    }
}

/* MHD's access handler: first call (headers), body pieces, last call. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    pd_http_t *h = cls;
    conn_t *x = *con_cls;
    (void)version;
    if (x == NULL) {
        x = calloc(1, sizeof *x);
        if (x == NULL)
            return MHD_NO;
        x->h = h;
        x->conn = c;
        *con_cls = x;
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > h->cfg.max_body_bytes) {
            x->too_big = true;
            return respond_error(c, 413, NULL, "request_too_large",
                                 "body of %.20s bytes is over http.max_body_bytes (%" PRIu64 ")",
                                 cl, h->cfg.max_body_bytes);
        }
        return MHD_YES;
    }
    if (*upload_size > 0) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (x->too_big || x->body_len + n > h->cfg.max_body_bytes) {
            x->too_big = true;
            return MHD_YES;
        }
        if (pd_grow((void **)&x->body, &x->body_cap, x->body_len + n + 1, 1, 4096) != 0)
            return MHD_NO;
        memcpy(x->body + x->body_len, upload, n);
        x->body_len += n;
        return MHD_YES;
    }
    if (x->too_big)
        return respond_error(c, 413, NULL, "request_too_large",
                             "body over http.max_body_bytes (%" PRIu64 ")", h->cfg.max_body_bytes);
    return route(x, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    pd_http_t *h = cls;
    conn_t *x = *con_cls;
    (void)c;
    (void)toe;
    if (x == NULL)
        return;
    pd_bridge_release(h->bridge, x->req);
    free(x->body);
    free(x->pend);
    free(x);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    PD_WARN("event=http_server msg=\"%s\"", msg);
}

/* ====== Start and stop ====== */

/* "HOST:PORT" / "[V6]:PORT" -> a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *sa, bool *is_v6, pd_err_t *err)
{
    char host[PD_CFG_STR];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL)
        return pd_err_set(err, PD_EINVAL, "http.listen: '%s' is not HOST:PORT", listen);
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof host)
        return pd_err_set(err, PD_EINVAL, "http.listen: host too long");
    memcpy(host, listen, hl);
    host[hl] = '\0';
    char *hp = host;
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        hp = host + 1;
    }
    struct addrinfo hints = { .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
                              .ai_socktype = SOCK_STREAM };
    struct addrinfo *ai = NULL;
    bool any = hp[0] == '\0' || strcmp(hp, "*") == 0;
    int rc = getaddrinfo(any ? "0.0.0.0" : hp, colon + 1, &hints, &ai);
    if (rc != 0 || ai == NULL)
        return pd_err_set(err, PD_EINVAL, "http.listen: '%s': %s", listen, gai_strerror(rc));
    memcpy(sa, ai->ai_addr, ai->ai_addrlen);
    *is_v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    return 0;
}

static int chat_setup(pd_http_t *h, const pd_http_opts_t *o, pd_err_t *err)
{
    pd_chat_kind_t k = PD_CHAT_NONE;
    const char *name = o->cfg->http.chat_template;
    if (name[0] && strcmp(name, "auto") != 0) {
        if (pd_chat_from_name(name, &k, err) != 0)
            return pd_err_wrap(err, PD_EINVAL, "http.chat_template");
    } else if (o->chat_template && o->chat_template[0]) {
        if (pd_chat_detect(o->chat_template, &k, err) != 0)
            return PD_EUNSUPPORTED;
    }
    pd_chat_init(&h->chat, k, o->tok);
    PD_INFO("event=chat_template family=%s source=%s", pd_chat_name(k),
            name[0] && strcmp(name, "auto") != 0 ? "config" : (o->chat_template ? "gguf" : "none"));
    return 0;
}

pd_http_t *pd_http_start(const pd_http_opts_t *o, pd_err_t *err)
{
    pd_http_t *h = calloc(1, sizeof *h);
    if (h == NULL) {
        pd_err_set(err, PD_ENOMEM, "http server");
        return NULL;
    }
    h->cfg = o->cfg->http;
    h->metrics = o->metrics;
    h->created = time(NULL);
    snprintf(h->model, sizeof h->model, "%s", o->model_name ? o->model_name : "model");
    h->oai = (pd_oai_t){ .tok = o->tok, .chat = &h->chat, .model = h->model,
                         .max_seq_len = o->max_seq_len,
                         .max_tokens_limit = o->cfg->router.max_tokens_limit };
    if (chat_setup(h, o, err) != 0)
        goto fail;
    h->bridge = pd_bridge_start(o->cfg, o->zctx, o->client_endpoint, err);
    if (h->bridge == NULL)
        goto fail;
    struct sockaddr_storage sa;
    bool v6 = false;
    if (parse_listen(h->cfg.listen, &sa, &v6, err) != 0)
        goto fail;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->cfg.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)h->cfg.idle_timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_END);
    if (h->daemon == NULL) {
        pd_err_set(err, PD_EIO, "http.listen: cannot listen on %s", h->cfg.listen);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_LISTEN_FD);
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
        struct sockaddr_storage ss;
    } bound;
    memset(&bound, 0, sizeof bound);
    socklen_t bl = sizeof bound;
    if (di && getsockname(di->listen_fd, &bound.sa, &bl) == 0) {
        if (bound.sa.sa_family == AF_INET6)
            h->port = ntohs(bound.in6.sin6_port);
        else if (bound.sa.sa_family == AF_INET)
            h->port = ntohs(bound.in.sin_port);
    }
    const char *colon = strrchr(h->cfg.listen, ':');
    int hl = (int)(colon - h->cfg.listen);
    bool wild = hl == 0 || strncmp(h->cfg.listen, "0.0.0.0:", 8) == 0 ||
                strncmp(h->cfg.listen, "*:", 2) == 0;
    snprintf(h->addr, sizeof h->addr, "%.*s:%d", wild ? 9 : hl,
             wild ? "127.0.0.1" : h->cfg.listen, h->port);
    PD_INFO("event=http_listening addr=%s listen=%s router=%s max_connections=%u "
            "idle_timeout_s=%u api_keys=%u",
            h->addr, h->cfg.listen, pd_bridge_endpoint(h->bridge), h->cfg.max_connections,
            h->cfg.idle_timeout_s, h->cfg.n_api_keys);
    return h;
fail:
    pd_http_stop(h);
    return NULL;
}

int pd_http_port(const pd_http_t *h)
{
    return h ? h->port : 0;
}

const char *pd_http_addr(const pd_http_t *h)
{
    return h ? h->addr : "";
}

void pd_http_stop(pd_http_t *h)
{
    if (h == NULL)
        return;
    pd_bridge_stopping(h->bridge); /* waiting connections give up */
    if (h->daemon)
        MHD_stop_daemon(h->daemon); /* joins the connection threads */
    pd_bridge_free(h->bridge);
    free(h);
}
