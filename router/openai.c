/* openai.c -- see openai.h. Sections: the request parser (body ->
 * pd_oai_req_t -> GenerateRequest); results (whole answers, stream
 * events); errors and /v1/models. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "metrics.h"
#include "openai.h"

/* ====== Requests: body -> pd_oai_req_t ====== */

static bool bad(pd_oai_bad_t *b, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool bad(pd_oai_bad_t *b, const char *param, const char *fmt, ...)
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

static bool get_num(json_t *v, const char *key, double lo, double hi, double *out, pd_oai_bad_t *b)
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
                    pd_oai_bad_t *b)
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

static bool get_bool(json_t *v, const char *key, bool *out, pd_oai_bad_t *b)
{
    if (!json_is_boolean(v)) {
        bad(b, key, "%s: expected true or false", key);
        return false;
    }
    *out = json_is_true(v);
    return true;
}

static bool get_ids(const pd_oai_t *o, json_t *arr, const char *key, int32_t **out, size_t *n,
                    pd_oai_bad_t *b)
{
    size_t k = json_array_size(arr);
    if (k == 0)
        return bad(b, key, "%s: empty", key);
    if (k > o->max_seq_len)
        return bad(b, key, "%s: %zu tokens, over the context of %u tokens", key, k,
                   o->max_seq_len);
    *out = malloc(k * sizeof **out);
    if (*out == NULL)
        return bad(b, key, "out of memory");
    uint32_t vocab = pd_tok_n_vocab(o->tok);
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
static bool parse_prompt(const pd_oai_t *o, json_t *v, pd_oai_req_t *g, pd_oai_bad_t *b)
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
        return get_ids(o, v, "prompt", &g->ids, &g->n_ids, b);
    if (n != 1)
        return bad(b, "prompt", "prompt: a batch of %zu prompts; only one prompt per request is "
                                "supported", n);
    if (json_is_string(e0)) {
        g->prompt = json_string_value(e0);
        return true;
    }
    if (json_is_array(e0))
        return get_ids(o, e0, "prompt", &g->ids, &g->n_ids, b);
    return bad(b, "prompt", "prompt[0]: expected a string or an array of token ids");
}

/* A message's content: a string, or text parts [{type: "text", text}]. */
static char *message_content(json_t *c, size_t i, pd_oai_bad_t *b)
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

static bool parse_messages(const pd_oai_t *o, json_t *v, pd_oai_req_t *g, pd_oai_bad_t *b)
{
    if (o->chat->kind == PD_CHAT_NONE) {
        bad(b, "messages", "model has no chat template; set http.chat_template");
        return false;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(b, "messages", "messages: expected a non-empty array");
    size_t n = json_array_size(v);
    if (n > PD_OAI_MAX_MESSAGES)
        return bad(b, "messages", "messages: %zu messages, at most %d", n, PD_OAI_MAX_MESSAGES);
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
    if (pd_chat_render(o->chat->kind, msgs, n, &text, &err) != 0) {
        bad(b, "messages", "%s", err.msg);
        goto done;
    }
    size_t cap = (size_t)o->max_seq_len + 1;
    g->ids = malloc(cap * sizeof *g->ids);
    if (g->ids == NULL) {
        bad(b, "messages", "out of memory");
        goto done;
    }
    int rc = pd_chat_tokenize(o->chat, text, g->ids, cap, &g->n_ids, &err);
    if (rc == PD_ERANGE || g->n_ids >= o->max_seq_len) {
        bad(b, "messages", "messages: the prompt is over the context of %u tokens",
            o->max_seq_len);
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

static bool parse_stop(json_t *v, pd_oai_req_t *g, pd_oai_bad_t *b)
{
    if (json_is_string(v)) {
        g->stop[0] = json_string_value(v);
        g->n_stop = json_string_length(v) ? 1 : 0;
        return true;
    }
    if (!json_is_array(v))
        return bad(b, "stop", "stop: expected a string or an array of strings");
    if (json_array_size(v) > PD_OAI_MAX_STOP)
        return bad(b, "stop", "stop: at most %d strings", PD_OAI_MAX_STOP);
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
static bool parse_param(const pd_oai_t *o, const char *k, json_t *v, pd_oai_req_t *g, pd_oai_bad_t *b)
{
    double d;
    long long i;
    if (json_is_null(v) && strcmp(k, "prompt") != 0 && strcmp(k, "messages") != 0)
        return true; /* null = not given (clients send explicit nulls) */
    if (strcmp(k, "model") == 0) {
        if (!json_is_string(v))
            return bad(b, k, "model: expected a string");
        if (strcmp(json_string_value(v), o->model) != 0) {
            b->status = 404;
            return bad(b, k, "The model `%.128s` does not exist (this server serves `%s`).",
                       json_string_value(v), o->model);
        }
        return true;
    }
    if (strcmp(k, "prompt") == 0)
        return g->chat ? bad(b, k, "prompt: not a parameter of chat completions (use messages)")
                       : parse_prompt(o, v, g, b);
    if (strcmp(k, "messages") == 0)
        return g->chat ? parse_messages(o, v, g, b)
                       : bad(b, k, "messages: not a parameter of completions (use prompt)");
    if (strcmp(k, "max_tokens") == 0 || strcmp(k, "max_completion_tokens") == 0) {
        if (!get_int(v, k, 1, o->max_tokens_limit, &i, b))
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
        if (!json_is_array(v) || json_array_size(v) > PD_OAI_MAX_STOP_IDS)
            return bad(b, k, "stop_token_ids: expected an array of at most %d ids",
                       PD_OAI_MAX_STOP_IDS);
        size_t j;
        json_t *e;
        json_array_foreach(v, j, e) {
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) >= pd_tok_n_vocab(o->tok))
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

void pd_oai_req_clear(pd_oai_req_t *g)
{
    free(g->ids);
    json_decref(g->root);
    memset(g, 0, sizeof *g);
}

bool pd_oai_parse(const pd_oai_t *o, const char *body, size_t len, bool chat, pd_oai_req_t *g,
                  pd_oai_bad_t *b)
{
    memset(g, 0, sizeof *g);
    pd__sampling__init(&g->s);
    /* pd_oai_req_clear frees what follows whatever the outcome. */
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
            if (!parse_param(o, k, v, g, b)) {
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
        uint32_t m = PD_OAI_COMPLETIONS_MAX_TOKENS;
        if (chat)
            m = o->max_seq_len > g->n_ids ? o->max_seq_len - (uint32_t)g->n_ids : 1;
        g->max_tokens = m < o->max_tokens_limit ? m : o->max_tokens_limit;
    }
    g->root = j; /* prompt and stop strings point into it */
    return ok;
}

void pd_oai_generate(const pd_oai_req_t *q, Pd__GenerateRequest *g, Pd__Sampling *s)
{
    *s = q->s;
    pd__generate_request__init(g);
    g->prompt = (char *)(q->ids ? NULL : q->prompt);
    g->n_prompt_tokens = q->ids ? q->n_ids : 0;
    g->prompt_tokens = q->ids;
    g->sampling = s;
    g->has_max_tokens = true;
    g->max_tokens = q->max_tokens;
    g->n_stop = q->n_stop;
    g->stop = (char **)q->stop;
    g->n_stop_ids = q->n_stop_ids;
    g->stop_ids = (int32_t *)q->stop_ids;
    g->has_ignore_eos = true;
    g->ignore_eos = q->ignore_eos;
    g->has_stream = true;
    g->stream = true; /* chunks as they come: a gone client is noticed mid-generation */
    g->has_deadline_ms = q->deadline_ms > 0;
    g->deadline_ms = q->deadline_ms;
}

/* ====== Results ====== */

void pd_oai_resp_init(pd_oai_resp_t *r, bool chat, uint64_t n, bool include_usage, time_t created)
{
    snprintf(r->id, sizeof r->id, "%s-%" PRIu64, chat ? "chatcmpl" : "cmpl", n);
    r->created = created;
    r->chat = chat;
    r->include_usage = include_usage;
}

const char *pd_oai_finish_text(int finish)
{
    const char *n = pd_metrics_finish_name(finish);
    return strcmp(n, "none") == 0 ? "stop" : n;
}

static json_t *usage_json(const pd_oai_result_t *res)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", (json_int_t)res->prompt_tokens,
                     "completion_tokens", (json_int_t)res->completion_tokens, "total_tokens",
                     (json_int_t)res->prompt_tokens + (json_int_t)res->completion_tokens);
}

json_t *pd_oai_result_json(const pd_oai_t *o, const pd_oai_resp_t *r, const pd_oai_result_t *res)
{
    json_t *choice;
    const char *text = res->text ? res->text : "";
    if (r->chat)
        choice = json_pack("{s:i, s:{s:s, s:s%}, s:n, s:s}", "index", 0, "message", "role",
                           "assistant", "content", text, res->len, "logprobs", "finish_reason",
                           pd_oai_finish_text(res->finish));
    else
        choice = json_pack("{s:i, s:s%, s:n, s:s}", "index", 0, "text", text, res->len,
                           "logprobs", "finish_reason", pd_oai_finish_text(res->finish));
    return json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", r->id, "object",
                     r->chat ? "chat.completion" : "text_completion", "created",
                     (json_int_t)r->created, "model", o->model, "choices", choice, "usage",
                     usage_json(res));
}

/* One streamed chunk: text (or a chat delta, consumed), finish reason or
 * NULL. */
static json_t *chunk_json(const pd_oai_t *o, const pd_oai_resp_t *r, json_t *delta_or_text,
                          const char *finish)
{
    json_t *choice = r->chat ? json_pack("{s:i, s:o, s:n}", "index", 0, "delta", delta_or_text,
                                         "logprobs")
                             : json_pack("{s:i, s:o, s:n}", "index", 0, "text", delta_or_text,
                                         "logprobs");
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", r->id, "object",
                          r->chat ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)r->created, "model", o->model, "choices", choice);
    if (c && r->include_usage)
        json_object_set_new(c, "usage", json_null());
    return c;
}

/* Appends j (consumed) to events; false when j is NULL (out of memory). */
static bool push(json_t *events, json_t *j)
{
    return j != NULL && json_array_append_new(events, j) == 0;
}

int pd_oai_stream_step(const pd_oai_t *o, const pd_oai_resp_t *r, pd_oai_stream_t *st,
                       const char *text, size_t n, const pd_oai_result_t *end, json_t *events)
{
    bool ok = true;
    if (r->chat && !st->sent_role) {
        st->sent_role = true;
        ok &= push(events, chunk_json(o, r, json_pack("{s:s, s:s}", "role", "assistant",
                                                      "content", ""), NULL));
    }
    if (n > 0)
        ok &= push(events, chunk_json(o, r, r->chat ? json_pack("{s:s%}", "content", text, n)
                                                    : json_stringn(text, n), NULL));
    if (end == NULL)
        return ok ? 0 : PD_ENOMEM;
    if (end->code) {
        ok &= push(events, pd_oai_router_error_json(end->code, end->err, NULL));
        return ok ? 0 : PD_ENOMEM;
    }
    ok &= push(events, chunk_json(o, r, r->chat ? json_object() : json_string(""),
                                  pd_oai_finish_text(end->finish)));
    if (r->include_usage)
        ok &= push(events, json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", r->id, "object",
                                     r->chat ? "chat.completion.chunk" : "text_completion",
                                     "created", (json_int_t)r->created, "model", o->model,
                                     "choices", "usage", usage_json(end)));
    return ok ? 0 : PD_ENOMEM;
}

/* ====== Errors and /v1/models ====== */

unsigned pd_oai_status_of(int code, const char **ecode)
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

json_t *pd_oai_error_json(unsigned status, const char *msg, const char *param, const char *code)
{
    const char *type = status >= 500 ? "server_error" : "invalid_request_error";
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", msg, "type", type, "param",
                     param ? json_string(param) : json_null(), "code",
                     code ? json_string(code) : json_null());
}

json_t *pd_oai_router_error_json(int code, const char *msg, unsigned *status)
{
    const char *ecode;
    unsigned st = pd_oai_status_of(code, &ecode);
    if (status)
        *status = st;
    return pd_oai_error_json(st, msg ? msg : "error", NULL, ecode);
}

json_t *pd_oai_models_json(const pd_oai_t *o, time_t created)
{
    return json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:s, s:i}]}", "object", "list", "data", "id",
                     o->model, "object", "model", "created", (json_int_t)created, "owned_by",
                     "pdserve", "root", o->model, "max_model_len", (int)o->max_seq_len);
}
