/* run_http.c -- pd-bench --target: an OpenAI-compatible HTTP server,
 * streamed POST /v1/completions on non-blocking sockets (httpc.h), one
 * connection per request in flight. See bench.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench.h"
#include "base/grow.h"

/* One SSE data payload of request r (user). Returns 1 at "[DONE]". */
static int on_sse(void *user, const char *data, size_t len)
{
    req_t *r = user;
    uint64_t t = pd_now_ns();
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->http_done = true;
        r->end_ns = t;
        return 1;
    }
    json_error_t je = { 0 };
    json_t *j = json_loadb(data, len, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        bench_req_fail(r, "malformed event (%s): %.80s", je.text, data);
        return 1;
    }
    json_t *e = json_object_get(j, "error");
    if (e && !json_is_null(e)) {
        const char *msg = json_string_value(json_object_get(e, "message"));
        bench_req_fail(r, "%s%s", "error event: ", msg ? msg : "(no message)");
    }
    json_t *ch = json_object_get(j, "choices");
    json_t *c0 = json_is_array(ch) && json_array_size(ch) > 0 ? json_array_get(ch, 0) : NULL;
    if (c0) {
        const char *text = json_string_value(json_object_get(c0, "text"));
        if (text && *text && bench_push_ns(&r->chunk_ns, &r->n_chunks, &r->cap_chunks, t) != 0)
            bench_req_fail(r, "%s%s", "out of memory", "");
        size_t tl = text ? strlen(text) : 0;
        if (tl && r->keep) {
            if (pd_grow((void **)&r->out_text, &r->cap_text, r->n_text + tl + 1, 1, 256) != 0) {
                bench_req_fail(r, "%s%s", "out of memory", "");
            } else {
                memcpy(r->out_text + r->n_text, text, tl + 1);
                r->n_text += tl;
            }
        }
        const char *fr = json_string_value(json_object_get(c0, "finish_reason"));
        if (fr)
            r->finish = !strcmp(fr, "length")  ? PD_FINISH_LENGTH
                        : !strcmp(fr, "stop")  ? PD_FINISH_STOP
                        : !strcmp(fr, "abort") ? PD_FINISH_CANCELLED
                                               : PD_FINISH_NONE;
    }
    json_t *u = json_object_get(j, "usage");
    if (json_is_object(u)) {
        json_int_t pt = json_integer_value(json_object_get(u, "prompt_tokens"));
        json_int_t ct = json_integer_value(json_object_get(u, "completion_tokens"));
        if (pt >= 0 && pt <= BENCH_MAX_LEN * 16ll && ct >= 0 && ct <= BENCH_MAX_LEN * 16ll) {
            r->usage_prompt = (uint32_t)pt;
            r->usage_completion = (uint32_t)ct;
            r->http_usage = json_is_integer(json_object_get(u, "completion_tokens"));
        }
    }
    json_decref(j);
    return 0;
}

/* Ends request idx (in flight) at time t: success when the stream ended with
 * [DONE] and no error was seen, else fails it with why (may be NULL). */
static void http_finish(bench_t *b, size_t idx, uint64_t t, const char *why)
{
    req_t *r = &b->reqs[idx];
    if (why)
        bench_req_fail(r, "%s%s", why, "");
    if (r->conn && r->error == NULL && pd_httpc_conn_status(r->conn) != 200) {
        size_t len;
        const char *body = pd_httpc_conn_body(r->conn, &len);
        json_t *j = json_loadb(body, len, 0, NULL);
        const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        if (msg == NULL) /* llama.cpp nests it the same way; else show the start of the body */
            msg = json_string_value(json_object_get(j, "message"));
        char st[32];
        snprintf(st, sizeof st, "HTTP %d: ", pd_httpc_conn_status(r->conn));
        char brief[201];
        snprintf(brief, sizeof brief, "%s", msg ? msg : body);
        bench_req_fail(r, "%s%s", st, brief);
        json_decref(j);
    }
    if (r->error == NULL && !r->http_done)
        bench_req_fail(r, "%s%s",
                 r->conn && !pd_httpc_conn_is_sse(r->conn)
                     ? "HTTP 200 but not an event stream (Content-Type text/event-stream)"
                     : "the stream ended without data: [DONE]",
                 "");
    pd_httpc_conn_free(r->conn);
    r->conn = NULL;
    if (!r->http_done)
        r->end_ns = t;
    r->state = REQ_DONE;
    if (r->error == NULL) {
        r->ok = true;
        /* Output tokens: usage.completion_tokens, else one per text event.
         * Tokens past the events' count arrived with the last text event. */
        size_t n = r->http_usage ? r->usage_completion : r->n_chunks;
        r->tok_ns = n ? malloc(n * sizeof *r->tok_ns) : NULL;
        if (n && r->tok_ns == NULL) {
            bench_req_fail(r, "%s%s", "out of memory", "");
        } else {
            for (size_t k = 0; k < n; k++)
                r->tok_ns[k] = r->n_chunks == 0        ? r->end_ns
                               : k < r->n_chunks       ? r->chunk_ns[k]
                                                       : r->chunk_ns[r->n_chunks - 1];
            r->n_tok = r->cap_tok = n;
        }
        if (r->prompt_len == 0)
            r->prompt_len = r->usage_prompt;
    }
    b->inflight--;
    b->done++;
    if (b->done == b->n_reqs)
        b->end_ns = t;
}

/* JSON body of request number i (dataset item it); NULL when out of memory. */
static char *http_body(const bench_t *b, const item_t *it, size_t i, size_t *len)
{
    const opts_t *o = b->o;
    json_t *j = json_object(), *prompt;
    if (it->ids) {
        prompt = json_array();
        for (size_t k = 0; k < it->n_ids; k++)
            json_array_append_new(prompt, json_integer(it->ids[k]));
    } else {
        prompt = json_string(it->text);
    }
    if (b->http_model)
        json_object_set_new(j, "model", json_string(b->http_model));
    json_object_set_new(j, "prompt", prompt);
    json_object_set_new(j, "max_tokens", json_integer(it->output_len));
    json_object_set_new(j, "temperature", json_real(o->temperature));
    json_object_set_new(j, "seed", json_integer((json_int_t)((o->seed + i) & INT64_MAX)));
    json_object_set_new(j, "stream", json_true());
    json_t *so = json_object();
    json_object_set_new(so, "include_usage", json_true());
    json_object_set_new(j, "stream_options", so);
    if (o->ignore_eos)
        json_object_set_new(j, "ignore_eos", json_true());
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    *len = s ? strlen(s) : 0;
    return s;
}

/* Submits request number i over HTTP: 0, 1 to retry later (no file
 * descriptor free), or -1 when out of memory. */
int run_http_submit(bench_t *b, const dataset_t *d, size_t i)
{
    if (pd_grow((void **)&b->live, &b->cap_live, b->n_live + 1, sizeof *b->live, 64) != 0 ||
        pd_grow((void **)&b->pfd, &b->cap_pfd, b->n_live + 1, sizeof *b->pfd, 64) != 0)
        return -1;
    req_t *r = bench_new_req(b);
    if (r == NULL)
        return -1;
    r->item = i % d->n;
    r->id = b->n_reqs + 1;
    const item_t *it = &d->items[r->item];
    r->prompt_len = it->prompt_len;
    r->expected_len = it->output_len;
    r->conv = it->conv;
    r->turn = it->turn;
    r->keep = b->keep_output;
    size_t len;
    char *body = http_body(b, it, i, &len);
    if (body == NULL)
        return -1;
    pd_err_t err = { 0 };
    r->send_ns = pd_now_ns();
    r->conn = pd_httpc_conn_new(b->http, "POST", b->http_path, body, len, b->o->api_key, &err);
    free(body);
    if (r->conn == NULL && err.code == PD_EFULL && b->inflight > 0)
        return 1; /* out of file descriptors: retry when a request ends */
    b->n_reqs++;
    r->state = REQ_INFLIGHT;
    b->inflight++;
    if (b->inflight > b->max_inflight)
        b->max_inflight = b->inflight;
    if (r->conn == NULL) {
        char why[PD_ERR_MSG_MAX + 16];
        snprintf(why, sizeof why, "submit: %s", err.msg);
        http_finish(b, b->n_reqs - 1, pd_now_ns(), why);
        return 0;
    }
    b->live[b->n_live++] = b->n_reqs - 1;
    return 0;
}

/* Waits up to wait_ms for the HTTP requests in flight and advances them;
 * enforces --connect-timeout (until connected) and --request-timeout. */
void run_http_poll(bench_t *b, int wait_ms)
{
    const opts_t *o = b->o;
    for (size_t k = 0; k < b->n_live; k++) {
        req_t *r = &b->reqs[b->live[k]];
        b->pfd[k].fd = pd_httpc_conn_fd(r->conn);
        b->pfd[k].events = pd_httpc_conn_events(r->conn);
        b->pfd[k].revents = 0;
    }
    int n = poll(b->pfd, b->n_live, wait_ms);
    if (n < 0 && errno != EINTR)
        n = 0;
    uint64_t t = pd_now_ns();
    size_t keep = 0;
    for (size_t k = 0; k < b->n_live; k++) {
        size_t idx = b->live[k];
        req_t *r = &b->reqs[idx];
        const char *why = NULL;
        char buf[PD_ERR_MSG_MAX + 64];
        int rc = 0;
        if (n > 0 && b->pfd[k].revents) {
            pd_err_t err = { 0 };
            rc = pd_httpc_conn_io(r->conn, b->pfd[k].revents, on_sse, r, &err);
            if (rc < 0) {
                snprintf(buf, sizeof buf, "http: %s", err.msg);
                why = buf;
            }
        }
        if (rc == 0 && !pd_httpc_conn_connected(r->conn) &&
            t - r->send_ns >= (uint64_t)o->connect_timeout_ms * 1000000ull) {
            snprintf(buf, sizeof buf, "http: connect timed out after %u ms", o->connect_timeout_ms);
            why = buf;
            rc = -1;
        } else if (rc == 0 && t - r->send_ns >= (uint64_t)o->request_timeout_ms * 1000000ull) {
            snprintf(buf, sizeof buf, "http: no complete response within %u ms (--request-timeout)",
                     o->request_timeout_ms);
            why = buf;
            rc = -1;
        }
        if (rc != 0)
            http_finish(b, idx, t, why);
        else
            b->live[keep++] = idx;
    }
    b->n_live = keep;
}

/* Ctrl-C with --target: closing a connection cancels its request. */
void run_http_cancel(bench_t *b)
{
    uint64_t t = pd_now_ns();
    for (size_t k = 0; k < b->n_live; k++)
        http_finish(b, b->live[k], t, "cancelled (interrupted)");
    b->n_live = 0;
}

/* GET /v1/models (blocking, within --connect-timeout): the served model's
 * id and max_model_len. 0, or -1 with a message printed. */
int run_http_models(const opts_t *o, const pd_httpc_url_t *u, const char *base, char *model,
                       size_t cap, uint32_t *max_len)
{
    char path[600];
    snprintf(path, sizeof path, "%s/models", base);
    pd_err_t err = { 0 };
    pd_httpc_conn_t *c = pd_httpc_conn_new(u, "GET", path, NULL, 0, o->api_key, &err);
    uint64_t until = pd_now_ns() + (uint64_t)o->connect_timeout_ms * 1000000ull;
    int rc = c ? 0 : -1;
    while (rc == 0) {
        uint64_t t = pd_now_ns();
        if (t >= until) {
            pd_err_set(&err, PD_EIO, "no answer to GET %s", path);
            rc = -1;
            break;
        }
        struct pollfd pf = { .fd = pd_httpc_conn_fd(c), .events = pd_httpc_conn_events(c) };
        int ms = (int)((until - t) / 1000000ull) + 1;
        if (poll(&pf, 1, ms > BENCH_POLL_MS ? BENCH_POLL_MS : ms) > 0)
            rc = pd_httpc_conn_io(c, pf.revents, NULL, NULL, &err);
        if (pd_interrupted)
            rc = pd_err_set(&err, PD_EIO, "interrupted");
    }
    if (rc < 0) {
        fprintf(stderr, "pd-bench: cannot reach the server at %s within %u ms: %s\n", o->target,
                o->connect_timeout_ms, err.msg);
        pd_httpc_conn_free(c);
        return -1;
    }
    size_t len;
    const char *body = pd_httpc_conn_body(c, &len);
    json_t *j = json_loadb(body, len, 0, NULL);
    json_t *m0 = json_array_get(json_object_get(j, "data"), 0);
    const char *id = json_string_value(json_object_get(m0, "id"));
    if (pd_httpc_conn_status(c) != 200 || id == NULL) {
        const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        fprintf(stderr, "pd-bench: GET http://%s%s: HTTP %d: %.200s\n", u->hostport, path,
                pd_httpc_conn_status(c), msg ? msg : pd_httpc_conn_status(c) == 200 ? "no model listed" : body);
        json_decref(j);
        pd_httpc_conn_free(c);
        return -1;
    }
    snprintf(model, cap, "%s", id);
    json_int_t ml = json_integer_value(json_object_get(m0, "max_model_len"));
    *max_len = ml > 0 && ml <= (json_int_t)UINT32_MAX ? (uint32_t)ml : 0;
    json_decref(j);
    pd_httpc_conn_free(c);
    return 0;
}
