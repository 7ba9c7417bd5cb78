/* http.c -- see http.h. Sections: requests in flight and the bridge thread
 * (the only owner of the ZeroMQ socket); HTTP plumbing (responses, errors,
 * auth); the OpenAI request parser; the endpoints; start and stop. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "chat_template.h"
#include "http.h"
#include "base/log.h"
#include "runtime/net.h"
#include "base/grow.h"

#define WAIT_SLICE_MS 50          /* a waiting thread checks its client this often */
#define STATUS_TIMEOUT_MS 3000    /* the router answers StatusRequest within this */
#define MAX_MESSAGES 4096         /* chat messages per request */
#define MAX_STOP 16               /* stop strings (= the router's RT_MAX_STOP) */
#define MAX_STOP_IDS 64           /* stop token ids (= RT_MAX_STOP_IDS) */
#define COMPLETIONS_DEFAULT_MAX_TOKENS 16 /* OpenAI's default for /v1/completions */

/* ====== Requests in flight ======
 *
 * One hreq_t per generation. The connection thread creates it and waits on
 * its condition variable; the bridge thread fills it from StreamChunks.
 * Both hold h->mu while touching it. It is freed by whichever side is last:
 * the connection when the final chunk has arrived, else the bridge when it
 * does (the connection then marked it abandoned and queued a Cancel). */
typedef struct hreq {
    uint64_t id;                  /* request id on our DEALER */
    pthread_cond_t cv;
    char *text;                   /* (text_cap) output text so far */
    size_t text_len, text_cap;
    uint32_t n_chunks;
    bool is_final, abandoned;
    int finish;                   /* Pd__FinishReason, on the final chunk */
    int code;                     /* Pd__ErrorCode, != 0: ended by an error */
    char err[512];
    uint32_t prompt_tokens, completion_tokens;
    struct hreq *next;
} hreq_t;

typedef struct out_msg {
    uint8_t *data;                /* (len) packed Pd__Msg */
    size_t len;
    struct out_msg *next;
} out_msg_t;

struct pd_http {
    pd_cfg_http_t cfg;
    uint32_t max_tokens_limit, max_seq_len;
    const pd_tok_t *tok;
    pd_chat_t chat;
    char model[128];
    pd_metrics_t *metrics;
    time_t created;
    int port;
    char addr[PD_CFG_STR + 16];   /* HOST:PORT actually bound */
    struct MHD_Daemon *daemon;
    /* Bridge. */
    void *zctx;
    bool own_ctx;
    void *dealer;
    int wake_fd;                  /* eventfd: the outbox has something */
    pthread_t bridge;
    bool bridge_started;
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
    /* Shared with the connection threads, under mu. */
    pthread_mutex_t mu;
    bool stopping;
    hreq_t *reqs;
    out_msg_t *out_head, *out_tail;
    uint64_t next_id;
    bool status_want;
    uint64_t status_sent, status_recv;
    pthread_cond_t status_cv;
    uint8_t *status_buf;          /* (status_len) the latest ClusterStatus envelope */
    size_t status_len;
};

static void wake(pd_http_t *h)
{
    uint64_t one = 1;
    ssize_t rc = write(h->wake_fd, &one, sizeof one);
    (void)rc; /* a full counter still wakes the bridge */
}

/* Queues m for the bridge to send (under h->mu). Returns 0 or PD_ENOMEM. */
static int outbox_push_locked(pd_http_t *h, const Pd__Msg *m)
{
    out_msg_t *o = calloc(1, sizeof *o);
    size_t len = pd__msg__get_packed_size(m);
    if (o == NULL || (o->data = malloc(len ? len : 1)) == NULL) {
        free(o);
        return PD_ENOMEM;
    }
    o->len = pd__msg__pack(m, o->data);
    if (h->out_tail)
        h->out_tail->next = o;
    else
        h->out_head = o;
    h->out_tail = o;
    return 0;
}

static void hreq_free(hreq_t *r)
{
    if (r == NULL)
        return;
    pthread_cond_destroy(&r->cv);
    free(r->text);
    free(r);
}

static void unlink_locked(pd_http_t *h, hreq_t *r)
{
    for (hreq_t **p = &h->reqs; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            return;
        }
}

/* The connection is done with r: free it, or, while the router still
 * works on it, cancel it and let the bridge free it at its final chunk. */
static void hreq_release(pd_http_t *h, hreq_t *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&h->mu);
    if (r->is_final || h->stopping) {
        unlink_locked(h, r);
        pthread_mutex_unlock(&h->mu);
        hreq_free(r);
        return;
    }
    r->abandoned = true;
    Pd__Cancel c = PD__CANCEL__INIT;
    c.has_request_id = true;
    c.request_id = r->id;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_CANCEL;
    m.cancel = &c;
    if (outbox_push_locked(h, &m) != 0)
        PD_WARN("event=http_cancel_lost req=%" PRIu64, r->id);
    pthread_mutex_unlock(&h->mu);
    PD_INFO("event=http_client_gone req=%" PRIu64 " action=cancel", r->id);
    wake(h);
}

/* ====== Bridge thread ====== */

static hreq_t *find_locked(pd_http_t *h, uint64_t id)
{
    for (hreq_t *r = h->reqs; r; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}

/* Marks r final; frees it if its connection has gone (under h->mu). */
static void finish_locked(pd_http_t *h, hreq_t *r)
{
    r->is_final = true;
    if (r->abandoned) {
        unlink_locked(h, r);
        hreq_free(r);
        return;
    }
    pthread_cond_broadcast(&r->cv);
}

static void on_chunk_locked(pd_http_t *h, const Pd__StreamChunk *c)
{
    hreq_t *r = find_locked(h, c->request_id);
    if (r == NULL || r->is_final)
        return;
    if (c->has_text && c->text.len > 0) {
        size_t need = r->text_len + c->text.len + 1;
        if (pd_grow((void **)&r->text, &r->text_cap, need, 1, 256) != 0) {
            r->code = PD__ERROR_CODE__INTERNAL;
            snprintf(r->err, sizeof r->err, "out of memory for the output text");
            finish_locked(h, r);
            return;
        }
        memcpy(r->text + r->text_len, c->text.data, c->text.len);
        r->text_len += c->text.len;
        r->text[r->text_len] = '\0';
    }
    r->n_chunks++;
    if (c->has_finish_reason && c->finish_reason != PD__FINISH_REASON__FINISH_NONE) {
        r->finish = c->finish_reason;
        if (c->usage) {
            r->prompt_tokens = c->usage->prompt_tokens;
            r->completion_tokens = c->usage->completion_tokens;
        }
        finish_locked(h, r);
        return;
    }
    pthread_cond_broadcast(&r->cv);
}

static void on_error_locked(pd_http_t *h, const Pd__Error *e)
{
    hreq_t *r = e->request_id ? find_locked(h, e->request_id) : NULL;
    if (r == NULL || r->is_final) {
        PD_WARN("event=http_router_error req=%" PRIu64 " code=%d msg=\"%s\"", e->request_id,
                (int)e->code, e->message ? e->message : "");
        return;
    }
    r->code = e->code ? (int)e->code : PD__ERROR_CODE__INTERNAL;
    snprintf(r->err, sizeof r->err, "%s", e->message ? e->message : "error");
    finish_locked(h, r);
}

static void on_status_locked(pd_http_t *h, const void *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (copy) {
        memcpy(copy, data, len);
        free(h->status_buf);
        h->status_buf = copy;
        h->status_len = len;
    }
    h->status_recv++;
    pthread_cond_broadcast(&h->status_cv);
}

static void bridge_recv(pd_http_t *h)
{
    pd_err_t err = { 0 };
    for (int budget = 0; budget < 1024; budget++) {
        if (pd_net_recv(h->dealer, h->in, &err) <= 0)
            return;
        if (h->in->n_frames != 1) {
            pd_net_in_close(h->in);
            continue;
        }
        const void *data = zmq_msg_data(&h->in->frames[0]);
        size_t len = zmq_msg_size(&h->in->frames[0]);
        Pd__Msg *m = pd_net_unpack(&h->alloc, data, len, &err);
        if (m == NULL) {
            PD_WARN("event=http_bad_message msg=\"%s\"", err.msg);
            pd_net_in_close(h->in);
            continue;
        }
        pthread_mutex_lock(&h->mu);
        switch (m->body_case) {
        case PD__MSG__BODY_CHUNK: on_chunk_locked(h, m->chunk); break;
        case PD__MSG__BODY_ERROR: on_error_locked(h, m->error); break;
        case PD__MSG__BODY_STATUS: on_status_locked(h, data, len); break;
        default: break;
        }
        pthread_mutex_unlock(&h->mu);
        pd_net_msg_free(&h->alloc, m);
        pd_net_in_close(h->in);
    }
}

/* Sends what the connections queued; keeps what ZeroMQ refuses (EAGAIN)
 * for the next round. Returns true while something is left. */
static bool bridge_send(pd_http_t *h)
{
    pthread_mutex_lock(&h->mu);
    if (h->status_want) {
        h->status_want = false;
        Pd__StatusRequest sr = PD__STATUS_REQUEST__INIT;
        Pd__Msg m = PD__MSG__INIT;
        m.body_case = PD__MSG__BODY_STATUS_REQUEST;
        m.status_request = &sr;
        if (outbox_push_locked(h, &m) == 0)
            h->status_sent++;
    }
    out_msg_t *list = h->out_head;
    h->out_head = h->out_tail = NULL;
    pthread_mutex_unlock(&h->mu);
    while (list) {
        if (zmq_send(h->dealer, list->data, list->len, ZMQ_DONTWAIT) < 0) {
            if (errno != EAGAIN)
                PD_WARN("event=http_send_failed msg=\"%s\"", zmq_strerror(errno));
            if (errno == EAGAIN || errno == EINTR)
                break;
        }
        out_msg_t *next = list->next;
        free(list->data);
        free(list);
        list = next;
    }
    if (list == NULL)
        return false;
    /* Put the rest back in front of anything queued meanwhile. */
    pthread_mutex_lock(&h->mu);
    out_msg_t *tail = list;
    while (tail->next)
        tail = tail->next;
    tail->next = h->out_head;
    if (h->out_head == NULL)
        h->out_tail = tail;
    h->out_head = list;
    pthread_mutex_unlock(&h->mu);
    return true;
}

static void *bridge_main(void *arg)
{
    pd_http_t *h = arg;
    bool pending = false;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        bool stop = h->stopping;
        pthread_mutex_unlock(&h->mu);
        if (stop)
            break;
        zmq_pollitem_t items[2] = {
            { h->dealer, 0, ZMQ_POLLIN, 0 },
            { NULL, h->wake_fd, ZMQ_POLLIN, 0 },
        };
        int rc = zmq_poll(items, 2, pending ? 5 : 200);
        if (rc < 0 && errno != EINTR) {
            PD_ERROR("event=http_poll_failed msg=\"%s\"", zmq_strerror(errno));
            break;
        }
        if (rc > 0 && (items[1].revents & ZMQ_POLLIN)) {
            uint64_t v;
            ssize_t n = read(h->wake_fd, &v, sizeof v);
            (void)n;
        }
        pending = bridge_send(h);
        bridge_recv(h);
    }
    return NULL;
}

/* Asks the router for a fresh ClusterStatus; *out is the unpacked copy
 * (caller frees with pd__msg__free_unpacked(*out, NULL)). PD_EIO when the
 * router does not answer in time. */
static int fetch_status(pd_http_t *h, Pd__Msg **out)
{
    *out = NULL;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += STATUS_TIMEOUT_MS / 1000;
    pthread_mutex_lock(&h->mu);
    uint64_t target = h->status_sent + 1;
    h->status_want = true;
    pthread_mutex_unlock(&h->mu);
    wake(h);
    pthread_mutex_lock(&h->mu);
    int rc = 0;
    while (h->status_recv < target && !h->stopping && rc == 0)
        rc = pthread_cond_timedwait(&h->status_cv, &h->mu, &until);
    if (h->status_recv >= target && h->status_buf)
        /* The bytes passed the bridge's bounded unpack already. */
        *out = pd__msg__unpack(NULL, h->status_len, h->status_buf);
    pthread_mutex_unlock(&h->mu);
    return *out && (*out)->body_case == PD__MSG__BODY_STATUS ? 0 : PD_EIO;
}

/* ====== HTTP plumbing ====== */

typedef struct {
    pd_http_t *h;
    struct MHD_Connection *conn;
    char *body;                   /* (body_cap) request body */
    size_t body_len, body_cap;
    bool too_big;
    hreq_t *req;                  /* the generation in flight, or NULL */
    /* Streaming state. */
    bool chat, include_usage, sent_role, sent_done;
    size_t text_done;             /* bytes of req->text already sent */
    char *pend;                   /* (pend_cap) SSE bytes not yet handed to MHD */
    size_t pend_len, pend_off, pend_cap;
    char id[48];
    time_t created;
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

static json_t *error_json(const char *type, const char *msg, const char *param, const char *code)
{
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", msg, "type", type, "param",
                     param ? json_string(param) : json_null(), "code",
                     code ? json_string(code) : json_null());
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
    const char *type = status >= 500 ? "server_error" : "invalid_request_error";
    PD_DEBUG("event=http_error status=%u msg=\"%s\"", status, msg);
    return respond_json(c, status, error_json(type, msg, param, code));
}

/* The HTTP status and OpenAI error code of a router ErrorCode. */
static unsigned status_of(int code, const char **ecode)
{
    switch (code) {
    case PD__ERROR_CODE__INVALID_ARGUMENT: *ecode = "invalid_argument"; return 400;
    case PD__ERROR_CODE__RESOURCE_EXHAUSTED: *ecode = "resource_exhausted"; return 429;
    case PD__ERROR_CODE__UNAVAILABLE: *ecode = "unavailable"; return 503;
    case PD__ERROR_CODE__DEADLINE_EXCEEDED: *ecode = "deadline_exceeded"; return 504;
    case PD__ERROR_CODE__CANCELLED: *ecode = "cancelled"; return 499;
    default: *ecode = "internal"; return 500;
    }
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

/* ====== OpenAI request -> GenerateRequest ====== */

typedef struct {
    json_t *root;                 /* the parsed body; owns the borrowed strings */
    bool chat, stream, include_usage;
    const char *prompt;           /* borrowed from root */
    int32_t *ids;                 /* (n_ids) prompt token ids (list prompt, or chat) */
    size_t n_ids;
    Pd__Sampling s;
    bool has_max_tokens;
    uint32_t max_tokens;
    const char *stop[MAX_STOP];
    size_t n_stop;
    int32_t stop_ids[MAX_STOP_IDS];
    size_t n_stop_ids;
    bool ignore_eos;
    uint32_t deadline_ms;
} gen_t;

typedef struct {
    unsigned status;
    char param[64];
    char msg[512];
} bad_t;

static bool bad(bad_t *b, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool bad(bad_t *b, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->msg, sizeof b->msg, fmt, ap);
    va_end(ap);
    snprintf(b->param, sizeof b->param, "%s", param ? param : "");
    if (b->status == 0)
        b->status = 400;
    return false;
}

static bool get_num(json_t *v, const char *key, double lo, double hi, double *out, bad_t *b)
{
    if (!json_is_number(v)) {
        bad(b, key, "%s: expected a number", key);
        return false;
    }
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi) {
        bad(b, key, "%s: must be in [%g, %g], got %g", key, lo, hi, x);
        return false;
    }
    *out = x;
    return true;
}

static bool get_int(json_t *v, const char *key, long long lo, long long hi, long long *out,
                    bad_t *b)
{
    if (!json_is_integer(v)) {
        bad(b, key, "%s: expected an integer", key);
        return false;
    }
    long long x = json_integer_value(v);
    if (x < lo || x > hi) {
        bad(b, key, "%s: must be in [%lld, %lld], got %lld", key, lo, hi, x);
        return false;
    }
    *out = x;
    return true;
}

static bool get_bool(json_t *v, const char *key, bool *out, bad_t *b)
{
    if (!json_is_boolean(v)) {
        bad(b, key, "%s: expected true or false", key);
        return false;
    }
    *out = json_is_true(v);
    return true;
}

static bool get_ids(pd_http_t *h, json_t *arr, const char *key, int32_t **out, size_t *n,
                    bad_t *b)
{
    size_t k = json_array_size(arr);
    if (k == 0)
        return bad(b, key, "%s: empty", key);
    if (k > h->max_seq_len)
        return bad(b, key, "%s: %zu tokens, over the context of %u tokens", key, k,
                   h->max_seq_len);
    *out = malloc(k * sizeof **out);
    if (*out == NULL)
        return bad(b, key, "out of memory");
    uint32_t vocab = pd_tok_n_vocab(h->tok);
    for (size_t i = 0; i < k; i++) {
        json_t *e = json_array_get(arr, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= vocab)
            return bad(b, key, "%s[%zu]: expected a token id in [0, %u)", key, i, vocab);
        (*out)[i] = (int32_t)json_integer_value(e);
    }
    *n = k;
    return true;
}

/* prompt: a string, [string], [int...] or [[int...]] (one prompt only). */
static bool parse_prompt(pd_http_t *h, json_t *v, gen_t *g, bad_t *b)
{
    if (json_is_string(v)) {
        g->prompt = json_string_value(v);
        return true;
    }
    if (!json_is_array(v))
        return bad(b, "prompt", "prompt: expected a string or an array");
    size_t n = json_array_size(v);
    json_t *e0 = json_array_get(v, 0);
    if (n >= 1 && json_is_integer(e0))
        return get_ids(h, v, "prompt", &g->ids, &g->n_ids, b);
    if (n != 1)
        return bad(b, "prompt", "prompt: a batch of %zu prompts; only one prompt per request is "
                                "supported", n);
    if (json_is_string(e0)) {
        g->prompt = json_string_value(e0);
        return true;
    }
    if (json_is_array(e0))
        return get_ids(h, e0, "prompt", &g->ids, &g->n_ids, b);
    return bad(b, "prompt", "prompt[0]: expected a string or an array of token ids");
}

/* A message's content: a string, or text parts [{type: "text", text}]. */
static char *message_content(json_t *c, size_t i, bad_t *b)
{
    char key[48];
    snprintf(key, sizeof key, "messages[%zu].content", i);
    if (json_is_string(c))
        return strdup(json_string_value(c));
    if (json_is_null(c))
        return strdup("");
    if (!json_is_array(c)) {
        bad(b, key, "%s: expected a string or an array of text parts", key);
        return NULL;
    }
    size_t total = 1, k;
    json_t *part;
    json_array_foreach(c, k, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            bad(b, key, "%s[%zu]: only {\"type\": \"text\", \"text\": ...} parts are supported",
                key, k);
            return NULL;
        }
        total += json_string_length(text);
    }
    char *s = malloc(total);
    if (s == NULL) {
        bad(b, key, "out of memory");
        return NULL;
    }
    size_t off = 0;
    json_array_foreach(c, k, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(s + off, json_string_value(text), json_string_length(text));
        off += json_string_length(text);
    }
    s[off] = '\0';
    return s;
}

static bool parse_messages(pd_http_t *h, json_t *v, gen_t *g, bad_t *b)
{
    if (h->chat.kind == PD_CHAT_NONE) {
        bad(b, "messages", "model has no chat template; set http.chat_template");
        return false;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(b, "messages", "messages: expected a non-empty array");
    size_t n = json_array_size(v);
    if (n > MAX_MESSAGES)
        return bad(b, "messages", "messages: %zu messages, at most %d", n, MAX_MESSAGES);
    pd_chat_msg_t *msgs = calloc(n, sizeof *msgs);
    char **contents = calloc(n, sizeof *contents);
    char *text = NULL;
    bool ok = false;
    if (msgs == NULL || contents == NULL) {
        bad(b, "messages", "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(v, i);
        char key[48];
        snprintf(key, sizeof key, "messages[%zu]", i);
        if (!json_is_object(m)) {
            bad(b, key, "%s: expected an object", key);
            goto done;
        }
        const char *k;
        json_t *x;
        json_object_foreach(m, k, x) {
            if (strcmp(k, "role") != 0 && strcmp(k, "content") != 0 && strcmp(k, "name") != 0) {
                bad(b, key, "%s.%s: not supported", key, k);
                goto done;
            }
        }
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            bad(b, key, "%s.role: expected a string", key);
            goto done;
        }
        msgs[i].role = json_string_value(role);
        if ((contents[i] = message_content(json_object_get(m, "content"), i, b)) == NULL)
            goto done;
        msgs[i].content = contents[i];
    }
    pd_err_t err = { 0 };
    if (pd_chat_render(h->chat.kind, msgs, n, &text, &err) != 0) {
        bad(b, "messages", "%s", err.msg);
        goto done;
    }
    size_t cap = (size_t)h->max_seq_len + 1;
    g->ids = malloc(cap * sizeof *g->ids);
    if (g->ids == NULL) {
        bad(b, "messages", "out of memory");
        goto done;
    }
    int rc = pd_chat_tokenize(&h->chat, text, g->ids, cap, &g->n_ids, &err);
    if (rc == PD_ERANGE || g->n_ids >= h->max_seq_len) {
        bad(b, "messages", "messages: the prompt is over the context of %u tokens",
            h->max_seq_len);
        goto done;
    }
    if (rc) {
        bad(b, "messages", "messages: %s", err.msg);
        goto done;
    }
    ok = true;
done:
    for (size_t i = 0; contents && i < n; i++)
        free(contents[i]);
    free(contents);
    free(msgs);
    free(text);
    return ok;
}

static bool parse_stop(json_t *v, gen_t *g, bad_t *b)
{
    if (json_is_string(v)) {
        g->stop[0] = json_string_value(v);
        g->n_stop = json_string_length(v) ? 1 : 0;
        return true;
    }
    if (!json_is_array(v))
        return bad(b, "stop", "stop: expected a string or an array of strings");
    if (json_array_size(v) > MAX_STOP)
        return bad(b, "stop", "stop: at most %d strings", MAX_STOP);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e) || json_string_length(e) == 0)
            return bad(b, "stop", "stop[%zu]: expected a non-empty string", i);
        g->stop[g->n_stop++] = json_string_value(e);
    }
    return true;
}

/* Reads one parameter into g; false and b on a bad value or an unknown or
 * unsupported key. */
static bool parse_param(pd_http_t *h, const char *k, json_t *v, gen_t *g, bad_t *b)
{
    double d;
    long long i;
    if (json_is_null(v) && strcmp(k, "prompt") != 0 && strcmp(k, "messages") != 0)
        return true; /* null = not given (clients send explicit nulls) */
    if (strcmp(k, "model") == 0) {
        if (!json_is_string(v))
            return bad(b, k, "model: expected a string");
        if (strcmp(json_string_value(v), h->model) != 0) {
            b->status = 404;
            return bad(b, k, "The model `%.128s` does not exist (this server serves `%s`).",
                       json_string_value(v), h->model);
        }
        return true;
    }
    if (strcmp(k, "prompt") == 0)
        return g->chat ? bad(b, k, "prompt: not a parameter of chat completions (use messages)")
                       : parse_prompt(h, v, g, b);
    if (strcmp(k, "messages") == 0)
        return g->chat ? parse_messages(h, v, g, b)
                       : bad(b, k, "messages: not a parameter of completions (use prompt)");
    if (strcmp(k, "max_tokens") == 0 || strcmp(k, "max_completion_tokens") == 0) {
        if (!get_int(v, k, 1, h->max_tokens_limit, &i, b))
            return false;
        g->has_max_tokens = true;
        g->max_tokens = (uint32_t)i;
        return true;
    }
    if (strcmp(k, "temperature") == 0) {
        if (!get_num(v, k, 0, 2, &d, b))
            return false;
        g->s.has_temperature = true;
        g->s.temperature = (float)d;
        return true;
    }
    if (strcmp(k, "top_p") == 0) {
        if (!get_num(v, k, 0, 1, &d, b))
            return false;
        if (d == 0)
            return bad(b, k, "top_p: must be in (0, 1]");
        g->s.has_top_p = true;
        g->s.top_p = (float)d;
        return true;
    }
    if (strcmp(k, "top_k") == 0) {
        if (!get_int(v, k, -1, INT32_MAX, &i, b))
            return false;
        g->s.has_top_k = true;
        g->s.top_k = i < 0 ? 0 : (int32_t)i; /* -1 = off (vLLM) */
        return true;
    }
    if (strcmp(k, "min_p") == 0) {
        if (!get_num(v, k, 0, 1, &d, b))
            return false;
        if (d >= 1)
            return bad(b, k, "min_p: must be in [0, 1)");
        g->s.has_min_p = true;
        g->s.min_p = (float)d;
        return true;
    }
    if (strcmp(k, "presence_penalty") == 0 || strcmp(k, "frequency_penalty") == 0) {
        if (!get_num(v, k, -2, 2, &d, b))
            return false;
        if (k[0] == 'p') {
            g->s.has_presence_penalty = true;
            g->s.presence_penalty = (float)d;
        } else {
            g->s.has_frequency_penalty = true;
            g->s.frequency_penalty = (float)d;
        }
        return true;
    }
    if (strcmp(k, "repetition_penalty") == 0) {
        if (!get_num(v, k, 0, 10, &d, b))
            return false;
        if (d == 0)
            return bad(b, k, "repetition_penalty: must be > 0");
        g->s.has_repetition_penalty = true;
        g->s.repetition_penalty = (float)d;
        return true;
    }
    if (strcmp(k, "seed") == 0) {
        if (!json_is_integer(v))
            return bad(b, k, "seed: expected an integer");
        g->s.has_seed = true;
        g->s.seed = (uint64_t)json_integer_value(v);
        return true;
    }
    if (strcmp(k, "stop") == 0)
        return parse_stop(v, g, b);
    if (strcmp(k, "stop_token_ids") == 0) {
        if (!json_is_array(v) || json_array_size(v) > MAX_STOP_IDS)
            return bad(b, k, "stop_token_ids: expected an array of at most %d ids", MAX_STOP_IDS);
        size_t j;
        json_t *e;
        json_array_foreach(v, j, e) {
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) >= pd_tok_n_vocab(h->tok))
                return bad(b, k, "stop_token_ids[%zu]: expected a token id", j);
            g->stop_ids[g->n_stop_ids++] = (int32_t)json_integer_value(e);
        }
        return true;
    }
    if (strcmp(k, "n") == 0 || strcmp(k, "best_of") == 0) {
        if (!get_int(v, k, 1, INT32_MAX, &i, b))
            return false;
        return i == 1 ? true : bad(b, k, "%s: only 1 is supported, got %lld", k, i);
    }
    if (strcmp(k, "stream") == 0)
        return get_bool(v, k, &g->stream, b);
    if (strcmp(k, "stream_options") == 0) {
        if (!json_is_object(v))
            return bad(b, k, "stream_options: expected an object");
        const char *sk;
        json_t *sv;
        json_object_foreach(v, sk, sv) {
            if (strcmp(sk, "include_usage") != 0)
                return bad(b, "stream_options", "stream_options.%s: not supported", sk);
            if (!json_is_null(sv) && !get_bool(sv, "stream_options.include_usage",
                                               &g->include_usage, b))
                return false;
        }
        return true;
    }
    if (strcmp(k, "ignore_eos") == 0)
        return get_bool(v, k, &g->ignore_eos, b);
    if (strcmp(k, "user") == 0)
        return json_is_string(v) ? true : bad(b, k, "user: expected a string");
    if (strcmp(k, "deadline_ms") == 0) {
        if (!get_int(v, k, 1, 24LL * 3600 * 1000, &i, b))
            return false;
        g->deadline_ms = (uint32_t)i;
        return true;
    }
    if (strcmp(k, "logprobs") == 0 || strcmp(k, "top_logprobs") == 0 || strcmp(k, "echo") == 0) {
        /* Off is accepted; on is not: the wire protocol carries no
         * log-probabilities. */
        if (json_is_false(v) || (json_is_integer(v) && json_integer_value(v) == 0))
            return true;
        return bad(b, k, "%s: not supported (the router's protocol carries no log-probabilities)",
                   k);
    }
    return bad(b, k, "Unrecognized request argument supplied: %s", k);
}

static void gen_clear(gen_t *g)
{
    free(g->ids);
    json_decref(g->root);
    memset(g, 0, sizeof *g);
}

/* Parses body into g. False and b (status 400 or 404) on any problem. */
static bool parse_body(pd_http_t *h, const char *body, size_t len, bool chat, gen_t *g, bad_t *b)
{
    memset(g, 0, sizeof *g);
    pd__sampling__init(&g->s);
    /* gen_clear frees what follows whatever the outcome. */
    g->chat = chat;
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (j == NULL)
        return bad(b, NULL, "invalid JSON body: %s (line %d, column %d)", je.text, je.line,
                   je.column);
    bool ok = json_is_object(j) ? true : bad(b, NULL, "the body must be a JSON object");
    const char *k;
    json_t *v;
    if (ok)
        json_object_foreach(j, k, v) {
            if (!parse_param(h, k, v, g, b)) {
                ok = false;
                break;
            }
        }
    if (ok && chat && g->ids == NULL)
        ok = bad(b, "messages", "messages: required");
    if (ok && !chat && g->prompt == NULL && g->ids == NULL)
        ok = bad(b, "prompt", "prompt: required");
    if (ok && !chat && g->prompt && g->prompt[0] == '\0')
        ok = bad(b, "prompt", "prompt: empty");
    if (ok && g->include_usage && !g->stream)
        ok = bad(b, "stream_options", "stream_options: only allowed with stream: true");
    if (ok && !g->has_max_tokens) {
        /* Completions: OpenAI's 16. Chat: the rest of the context. */
        uint32_t m = COMPLETIONS_DEFAULT_MAX_TOKENS;
        if (chat)
            m = h->max_seq_len > g->n_ids ? h->max_seq_len - (uint32_t)g->n_ids : 1;
        g->max_tokens = m < h->max_tokens_limit ? m : h->max_tokens_limit;
    }
    g->root = j; /* prompt and stop strings point into it */
    return ok;
}

/* ====== Endpoints ====== */

/* Sends g to the router as a new request. NULL and b (503) when stopping
 * or out of memory. */
static hreq_t *submit(pd_http_t *h, const gen_t *g, bad_t *b)
{
    hreq_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        bad(b, NULL, "out of memory");
        b->status = 503;
        return NULL;
    }
    pthread_cond_init(&r->cv, NULL);
    Pd__Sampling s = g->s;
    Pd__GenerateRequest q = PD__GENERATE_REQUEST__INIT;
    q.has_request_id = true;
    q.prompt = (char *)(g->ids ? NULL : g->prompt);
    q.n_prompt_tokens = g->ids ? g->n_ids : 0;
    q.prompt_tokens = g->ids;
    q.sampling = &s;
    q.has_max_tokens = true;
    q.max_tokens = g->max_tokens;
    q.n_stop = g->n_stop;
    q.stop = (char **)g->stop;
    q.n_stop_ids = g->n_stop_ids;
    q.stop_ids = (int32_t *)g->stop_ids;
    q.has_ignore_eos = true;
    q.ignore_eos = g->ignore_eos;
    q.has_stream = true;
    q.stream = true; /* chunks as they come: a gone client is noticed mid-generation */
    q.has_deadline_ms = g->deadline_ms > 0;
    q.deadline_ms = g->deadline_ms;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_GENERATE;
    m.generate = &q;
    pthread_mutex_lock(&h->mu);
    r->id = q.request_id = ++h->next_id;
    int rc = h->stopping ? PD_ESTATE : outbox_push_locked(h, &m);
    if (rc == 0) {
        r->next = h->reqs;
        h->reqs = r;
    }
    pthread_mutex_unlock(&h->mu);
    if (rc) {
        hreq_free(r);
        bad(b, NULL, rc == PD_ESTATE ? "server shutting down" : "out of memory");
        b->status = 503;
        return NULL;
    }
    wake(h);
    return r;
}

typedef enum { WAIT_FIRST, WAIT_TEXT, WAIT_FINAL } wait_t;

/* Waits for the request's first chunk, new text, or its end (each also
 * ends at the final chunk). Returns 0, or -1 when the client went away or
 * the server is stopping. The client is checked every WAIT_SLICE_MS even
 * while chunks keep arriving (a non-streamed request is woken by each). */
static int wait_for(conn_t *x, wait_t what)
{
    pd_http_t *h = x->h;
    hreq_t *r = x->req;
    struct timespec next;
    clock_gettime(CLOCK_REALTIME, &next);
    pthread_mutex_lock(&h->mu);
    for (;;) {
        if (r->is_final || (what == WAIT_FIRST && r->n_chunks > 0) ||
            (what == WAIT_TEXT && r->text_len > x->text_done))
            break;
        if (h->stopping) {
            pthread_mutex_unlock(&h->mu);
            return -1;
        }
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        bool due = now.tv_sec > next.tv_sec ||
                   (now.tv_sec == next.tv_sec && now.tv_nsec >= next.tv_nsec);
        if (due) {
            pthread_mutex_unlock(&h->mu);
            bool gone = client_gone(x->conn);
            pthread_mutex_lock(&h->mu);
            if (gone && !r->is_final) {
                pthread_mutex_unlock(&h->mu);
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
        pthread_cond_timedwait(&r->cv, &h->mu, &next);
    }
    pthread_mutex_unlock(&h->mu);
    return 0;
}

static const char *finish_text(int finish)
{
    const char *n = pd_metrics_finish_name(finish);
    return strcmp(n, "none") == 0 ? "stop" : n;
}

static json_t *usage_json(const hreq_t *r)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", (json_int_t)r->prompt_tokens,
                     "completion_tokens", (json_int_t)r->completion_tokens, "total_tokens",
                     (json_int_t)r->prompt_tokens + (json_int_t)r->completion_tokens);
}

/* The whole answer of a finished request (non-streaming). */
static json_t *result_json(conn_t *x, const hreq_t *r)
{
    json_t *choice;
    const char *text = r->text ? r->text : "";
    if (x->chat)
        choice = json_pack("{s:i, s:{s:s, s:s%}, s:n, s:s}", "index", 0, "message", "role",
                           "assistant", "content", text, r->text_len, "logprobs", "finish_reason",
                           finish_text(r->finish));
    else
        choice = json_pack("{s:i, s:s%, s:n, s:s}", "index", 0, "text", text, r->text_len,
                           "logprobs", "finish_reason", finish_text(r->finish));
    return json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", x->id, "object",
                     x->chat ? "chat.completion" : "text_completion", "created",
                     (json_int_t)x->created, "model", x->h->model, "choices", choice, "usage",
                     usage_json(r));
}

/* One streamed chunk: text (or a chat delta), finish reason or NULL. */
static json_t *chunk_json(conn_t *x, json_t *delta_or_text, const char *finish)
{
    json_t *choice = x->chat ? json_pack("{s:i, s:o, s:n}", "index", 0, "delta", delta_or_text,
                                         "logprobs")
                             : json_pack("{s:i, s:o, s:n}", "index", 0, "text", delta_or_text,
                                         "logprobs");
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", x->id, "object",
                          x->chat ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)x->created, "model", x->h->model, "choices", choice);
    if (c && x->include_usage)
        json_object_set_new(c, "usage", json_null());
    return c;
}

/* Appends "data: <j>\n\n" (j consumed; NULL = "[DONE]"). */
static int sse_put(conn_t *x, json_t *j, bool done)
{
    char *s = done ? strdup("[DONE]") : (j ? json_dumps(j, JSON_COMPACT) : NULL);
    json_decref(j);
    if (s == NULL)
        return PD_ENOMEM;
    size_t need = x->pend_len + strlen(s) + 9;
    if (pd_grow((void **)&x->pend, &x->pend_cap, need, 1, 1024) != 0) {
        free(s);
        return PD_ENOMEM;
    }
    x->pend_len += (size_t)sprintf(x->pend + x->pend_len, "data: %s\n\n", s);
    free(s);
    return 0;
}

/* Turns what arrived since the last call into SSE events. */
static int sse_step(conn_t *x)
{
    pd_http_t *h = x->h;
    hreq_t *r = x->req;
    pthread_mutex_lock(&h->mu);
    size_t n = r->text_len - x->text_done;
    char *text = malloc(n + 1);
    if (text) {
        memcpy(text, r->text ? r->text + x->text_done : "", n);
        text[n] = '\0';
        x->text_done = r->text_len;
    }
    bool final = r->is_final;
    int code = r->code, finish = r->finish;
    char err[sizeof r->err];
    memcpy(err, r->err, sizeof err);
    pthread_mutex_unlock(&h->mu);
    if (text == NULL)
        return PD_ENOMEM;
    int rc = 0;
    if (x->chat && !x->sent_role) {
        x->sent_role = true;
        rc |= sse_put(x, chunk_json(x, json_pack("{s:s, s:s}", "role", "assistant", "content", ""),
                                    NULL), false);
    }
    if (n > 0)
        rc |= sse_put(x, chunk_json(x, x->chat ? json_pack("{s:s%}", "content", text, n)
                                               : json_stringn(text, n), NULL), false);
    free(text);
    if (!final)
        return rc;
    if (code) {
        const char *ecode;
        unsigned st = status_of(code, &ecode);
        rc |= sse_put(x, error_json(st >= 500 ? "server_error" : "invalid_request_error", err, NULL,
                                    ecode), false);
    } else {
        rc |= sse_put(x, chunk_json(x, x->chat ? json_object() : json_string(""),
                                    finish_text(finish)), false);
        if (x->include_usage) {
            json_t *u = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", x->id, "object",
                                  x->chat ? "chat.completion.chunk" : "text_completion", "created",
                                  (json_int_t)x->created, "model", h->model, "choices", "usage",
                                  usage_json(r));
            rc |= sse_put(x, u, false);
        }
    }
    rc |= sse_put(x, NULL, true);
    x->sent_done = true;
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

static enum MHD_Result respond_req_error(conn_t *x)
{
    const char *ecode;
    unsigned st = status_of(x->req->code, &ecode);
    return respond_error(x->conn, st, NULL, ecode, "%s", x->req->err);
}

static enum MHD_Result handle_generate(conn_t *x, bool chat)
{
    pd_http_t *h = x->h;
    gen_t g;
    bad_t b = { 0 };
    if (!parse_body(h, x->body, x->body_len, chat, &g, &b)) {
        gen_clear(&g);
        return respond_error(x->conn, b.status, b.param[0] ? b.param : NULL,
                             b.status == 404 ? "model_not_found" : NULL, "%s", b.msg);
    }
    x->chat = chat;
    x->include_usage = g.include_usage;
    bool stream = g.stream;
    x->req = submit(h, &g, &b);
    gen_clear(&g);
    if (x->req == NULL)
        return respond_error(x->conn, b.status, NULL, "unavailable", "%s", b.msg);
    snprintf(x->id, sizeof x->id, "%s-%" PRIu64, chat ? "chatcmpl" : "cmpl", x->req->id);
    x->created = time(NULL);
    if (wait_for(x, stream ? WAIT_FIRST : WAIT_FINAL) != 0)
        return MHD_NO; /* the client left: on_completed cancels */
    pthread_mutex_lock(&h->mu);
    bool failed = x->req->is_final && x->req->code != 0;
    pthread_mutex_unlock(&h->mu);
    if (failed)
        return respond_req_error(x);
    if (!stream)
        return respond_json(x->conn, 200, result_json(x, x->req));
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, x, NULL);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result rc = MHD_queue_response(x->conn, 200, r);
    MHD_destroy_response(r);
    return rc;
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
    if (fetch_status(x->h, &m) != 0) {
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
    int rc = fetch_status(x->h, &m);
    char *text = pd_metrics_render(x->h->metrics, rc == 0 ? m->status : NULL);
    pd__msg__free_unpacked(m, NULL);
    if (text == NULL)
        return respond_error(x->conn, 500, NULL, "internal", "metrics unavailable");
    return respond_text(x->conn, 200, text, "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result handle_models(conn_t *x)
{
    pd_http_t *h = x->h;
    return respond_json(
        x->conn, 200,
        json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:s, s:i}]}", "object", "list", "data", "id",
                  h->model, "object", "model", "created", (json_int_t)h->created, "owned_by",
                  "pdserve", "root", h->model, "max_model_len", (int)h->max_seq_len));
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
    hreq_release(h, x->req);
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

/* The router's endpoint as a client reaches it (a wildcard bind -> loopback). */
static void connect_endpoint(const char *bound, char *out, size_t cap)
{
    const char *p;
    if ((p = strstr(bound, "://0.0.0.0:")) != NULL || (p = strstr(bound, "://*:")) != NULL) {
        const char *port = strchr(p + 3, ':');
        snprintf(out, cap, "%.*s://127.0.0.1%s", (int)(p - bound), bound, port);
        return;
    }
    snprintf(out, cap, "%s", bound);
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
    h->max_tokens_limit = o->cfg->router.max_tokens_limit;
    h->max_seq_len = o->max_seq_len;
    h->tok = o->tok;
    h->metrics = o->metrics;
    h->created = time(NULL);
    h->wake_fd = -1;
    snprintf(h->model, sizeof h->model, "%s", o->model_name ? o->model_name : "model");
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->status_cv, NULL);
    if (chat_setup(h, o, err) != 0)
        goto fail;
    h->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    h->in = malloc(sizeof *h->in);
    if (h->wake_fd < 0 || h->in == NULL) {
        pd_err_set(err, PD_EIO, "http: eventfd or buffers: %s", strerror(errno));
        goto fail;
    }
    h->in->n_frames = 0;
    pd_pb_alloc_init(&h->alloc, (size_t)o->cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                                    PD_PB_BASE_BUDGET);
    h->zctx = o->zctx;
    if (h->zctx == NULL) {
        h->zctx = zmq_ctx_new();
        h->own_ctx = true;
        if (h->zctx == NULL) {
            pd_err_set(err, PD_EIO, "http: zmq_ctx_new failed");
            goto fail;
        }
    }
    pd_net_opts_t no;
    pd_net_opts_from_config(&no, o->cfg);
    h->dealer = pd_net_socket(h->zctx, ZMQ_DEALER, &no, err);
    if (h->dealer == NULL)
        goto fail;
    char ep[PD_CFG_STR + 16];
    connect_endpoint(o->client_endpoint, ep, sizeof ep);
    if (pd_net_connect(h->dealer, ep, err) != 0)
        goto fail;
    if (pthread_create(&h->bridge, NULL, bridge_main, h) != 0) {
        pd_err_set(err, PD_EIO, "http: cannot start the bridge thread");
        goto fail;
    }
    h->bridge_started = true;
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
            h->addr, h->cfg.listen, ep, h->cfg.max_connections, h->cfg.idle_timeout_s,
            h->cfg.n_api_keys);
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
    pthread_mutex_lock(&h->mu);
    h->stopping = true;
    for (hreq_t *r = h->reqs; r; r = r->next)
        pthread_cond_broadcast(&r->cv);
    pthread_cond_broadcast(&h->status_cv);
    pthread_mutex_unlock(&h->mu);
    if (h->daemon)
        MHD_stop_daemon(h->daemon); /* joins the connection threads */
    if (h->bridge_started) {
        wake(h);
        pthread_join(h->bridge, NULL);
    }
    pd_net_close(h->dealer);
    if (h->own_ctx && h->zctx)
        zmq_ctx_term(h->zctx);
    while (h->reqs) {
        hreq_t *r = h->reqs;
        h->reqs = r->next;
        hreq_free(r);
    }
    while (h->out_head) {
        out_msg_t *o = h->out_head;
        h->out_head = o->next;
        free(o->data);
        free(o);
    }
    free(h->status_buf);
    free(h->in);
    if (h->wake_fd >= 0)
        close(h->wake_fd);
    pthread_cond_destroy(&h->status_cv);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
