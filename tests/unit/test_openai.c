/* test_openai.c -- the OpenAI mapping (router/openai.c): request bodies of
 * /v1/completions and /v1/chat/completions to the internal request and
 * its GenerateRequest, results to response JSON (whole answers and stream
 * events), and every class of refusal with its status, parameter and
 * message. The tokenizer is the router fixture's small BPE vocabulary;
 * the chat template is chatml. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "openai.h"
#include "rt_fixture.h"

#define LIMIT 1000 /* router.max_tokens_limit (over the context) */
#define CTX 256   /* context length */

typedef struct {
    pd_tok_t *tok;
    pd_chat_t chat, none;
    pd_oai_t o;      /* chatml */
    pd_oai_t plain;  /* no chat template */
} oai_fx_t;

static int setup(void **state)
{
    oai_fx_t *f = calloc(1, sizeof *f);
    f->tok = fx_make_tok();
    pd_chat_init(&f->chat, PD_CHAT_CHATML, f->tok);
    pd_chat_init(&f->none, PD_CHAT_NONE, f->tok);
    f->o = (pd_oai_t){ .tok = f->tok, .chat = &f->chat, .model = "tiny", .max_seq_len = CTX,
                       .max_tokens_limit = LIMIT };
    f->plain = f->o;
    f->plain.chat = &f->none;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    oai_fx_t *f = *state;
    pd_tok_free(f->tok);
    free(f);
    return 0;
}

static bool parse(const pd_oai_t *o, const char *body, bool chat, pd_oai_req_t *q, pd_oai_bad_t *b)
{
    memset(b, 0, sizeof *b);
    return pd_oai_parse(o, body, strlen(body), chat, q, b);
}

/* body must be refused with status, param and a message holding part. */
static void refused(const pd_oai_t *o, const char *body, bool chat, unsigned status,
                    const char *param, const char *part)
{
    pd_oai_req_t q;
    pd_oai_bad_t b;
    if (parse(o, body, chat, &q, &b))
        fail_msg("accepted: %s", body);
    pd_oai_req_clear(&q);
    if (b.status != status || strcmp(b.param, param) != 0 || strstr(b.msg, part) == NULL)
        fail_msg("%s\n  got %u param '%s' msg '%s'\n  want %u param '%s' msg with '%s'", body,
                 b.status, b.param, b.msg, status, param, part);
}

/* ====== Requests ====== */

static void test_completions_params(void **state)
{
    oai_fx_t *f = *state;
    pd_oai_req_t q;
    pd_oai_bad_t b;
    assert_true(parse(&f->o,
                      "{\"model\": \"tiny\", \"prompt\": \"hello\", \"max_tokens\": 5, "
                      "\"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": -1, \"min_p\": 0.1, "
                      "\"seed\": 7, \"presence_penalty\": 0.25, \"frequency_penalty\": -0.5, "
                      "\"repetition_penalty\": 1.5, \"stop\": [\"\\n\", \"END\"], "
                      "\"stop_token_ids\": [1, 2], \"stream\": true, "
                      "\"stream_options\": {\"include_usage\": true}, \"ignore_eos\": true, "
                      "\"deadline_ms\": 1000, \"user\": \"u\", \"n\": 1, \"logprobs\": null, "
                      "\"echo\": false}",
                      false, &q, &b));
    Pd__GenerateRequest g;
    Pd__Sampling s;
    pd_oai_generate(&q, &g, &s);
    assert_string_equal(g.prompt, "hello");
    assert_int_equal(g.n_prompt_tokens, 0);
    assert_true(g.has_max_tokens);
    assert_int_equal(g.max_tokens, 5);
    assert_true(g.sampling == &s);
    assert_true(s.has_temperature && s.temperature == 0.5f);
    assert_true(s.has_top_p && s.top_p == 0.9f);
    assert_true(s.has_top_k && s.top_k == 0); /* -1 = off */
    assert_true(s.has_min_p && s.min_p == 0.1f);
    assert_true(s.has_seed && s.seed == 7);
    assert_true(s.has_presence_penalty && s.presence_penalty == 0.25f);
    assert_true(s.has_frequency_penalty && s.frequency_penalty == -0.5f);
    assert_true(s.has_repetition_penalty && s.repetition_penalty == 1.5f);
    assert_int_equal(g.n_stop, 2);
    assert_string_equal(g.stop[0], "\n");
    assert_string_equal(g.stop[1], "END");
    assert_int_equal(g.n_stop_ids, 2);
    assert_int_equal(g.stop_ids[1], 2);
    assert_true(g.has_stream && g.stream);
    assert_true(g.ignore_eos);
    assert_true(g.has_deadline_ms && g.deadline_ms == 1000);
    assert_true(q.stream && q.include_usage);
    pd_oai_req_clear(&q);

    /* Nothing given: OpenAI's 16 tokens, the router's sampling defaults. */
    assert_true(parse(&f->o, "{\"prompt\": \"hi\", \"temperature\": null}", false, &q, &b));
    pd_oai_generate(&q, &g, &s);
    assert_int_equal(g.max_tokens, PD_OAI_COMPLETIONS_MAX_TOKENS);
    assert_false(s.has_temperature || s.has_top_p || s.has_seed);
    assert_false(g.has_deadline_ms);
    assert_true(g.stream); /* always streamed to the router */
    assert_false(q.stream);
    pd_oai_req_clear(&q);
}

static void test_prompt_forms(void **state)
{
    oai_fx_t *f = *state;
    pd_oai_req_t q;
    pd_oai_bad_t b;
    assert_true(parse(&f->o, "{\"prompt\": [104, 105]}", false, &q, &b));
    Pd__GenerateRequest g;
    Pd__Sampling s;
    pd_oai_generate(&q, &g, &s);
    assert_null(g.prompt);
    assert_int_equal(g.n_prompt_tokens, 2);
    assert_int_equal(g.prompt_tokens[1], 105);
    pd_oai_req_clear(&q);
    assert_true(parse(&f->o, "{\"prompt\": [[7, 8, 9]]}", false, &q, &b));
    assert_int_equal(q.n_ids, 3);
    pd_oai_req_clear(&q);
    assert_true(parse(&f->o, "{\"prompt\": [\"one\"]}", false, &q, &b));
    assert_string_equal(q.prompt, "one");
    pd_oai_req_clear(&q);
    refused(&f->o, "{\"prompt\": [\"a\", \"b\"]}", false, 400, "prompt",
            "a batch of 2 prompts; only one prompt per request is supported");
    refused(&f->o, "{\"prompt\": [1, 999]}", false, 400, "prompt",
            "prompt[1]: expected a token id in [0, 260)");
    refused(&f->o, "{\"prompt\": []}", false, 400, "prompt", "a batch of 0 prompts");
    refused(&f->o, "{\"prompt\": \"\"}", false, 400, "prompt", "prompt: empty");
    refused(&f->o, "{\"prompt\": 3}", false, 400, "prompt", "expected a string or an array");
    refused(&f->o, "{\"max_tokens\": 3}", false, 400, "prompt", "prompt: required");
}

static void test_chat(void **state)
{
    oai_fx_t *f = *state;
    pd_oai_req_t q;
    pd_oai_bad_t b;
    assert_true(parse(&f->o,
                      "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, "
                      "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"he\"}, "
                      "{\"type\": \"text\", \"text\": \"llo\"}], \"name\": \"x\"}]}",
                      true, &q, &b));
    /* The ids are the chatml rendering of the same messages, tokenized. */
    pd_chat_msg_t msgs[] = { { "system", "be brief" }, { "user", "hello" } };
    char *text = NULL;
    pd_err_t err = { 0 };
    assert_int_equal(pd_chat_render(PD_CHAT_CHATML, msgs, 2, &text, &err), 0);
    int32_t ids[CTX + 1];
    size_t n = 0;
    assert_int_equal(pd_chat_tokenize(&f->chat, text, ids, CTX + 1, &n, &err), 0);
    free(text);
    assert_int_equal(q.n_ids, n);
    assert_memory_equal(q.ids, ids, n * sizeof *ids);
    assert_null(q.prompt);
    /* No max_tokens: the rest of the context, within the limit. */
    assert_int_equal(q.max_tokens, CTX - n);
    pd_oai_req_clear(&q);

    refused(&f->plain, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", true, 400,
            "messages", "model has no chat template; set http.chat_template");
    refused(&f->o, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\", \"tool\": 1}]}",
            true, 400, "messages[0]", "messages[0].tool: not supported");
    refused(&f->o, "{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}", true, 400,
            "messages", "messages[0]");
    refused(&f->o, "{\"messages\": [{\"content\": \"hi\"}]}", true, 400, "messages[0]",
            "messages[0].role: expected a string");
    refused(&f->o,
            "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
            true, 400, "messages[0].content", "only {\"type\": \"text\"");
    refused(&f->o, "{\"messages\": []}", true, 400, "messages", "expected a non-empty array");
    refused(&f->o, "{\"prompt\": \"hi\"}", true, 400, "prompt", "not a parameter of chat");
    refused(&f->o, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", false, 400,
            "messages", "not a parameter of completions");
    /* Over the context once rendered. */
    char big[400];
    snprintf(big, sizeof big, "{\"messages\": [{\"role\": \"user\", \"content\": \"%0*d\"}]}",
             CTX + 10, 0);
    refused(&f->o, big, true, 400, "messages", "over the context of 256 tokens");
}

static void test_refusals(void **state)
{
    oai_fx_t *f = *state;
    refused(&f->o, "{\"prompt\": \"hi\"", false, 400, "", "invalid JSON body");
    refused(&f->o, "[1]", false, 400, "", "the body must be a JSON object");
    refused(&f->o, "{\"prompt\": \"a\", \"prompt\": \"b\"}", false, 400, "", "invalid JSON");
    refused(&f->o, "{\"prompt\": \"hi\", \"frobnicate\": 1}", false, 400, "frobnicate",
            "Unrecognized request argument supplied: frobnicate");
    refused(&f->o, "{\"model\": \"other\", \"prompt\": \"hi\"}", false, 404, "model",
            "The model `other` does not exist (this server serves `tiny`).");
    refused(&f->o, "{\"prompt\": \"hi\", \"max_tokens\": 0}", false, 400, "max_tokens",
            "max_tokens: must be in [1, 1000], got 0");
    refused(&f->o, "{\"prompt\": \"hi\", \"max_tokens\": 1001}", false, 400, "max_tokens",
            "got 1001");
    refused(&f->o, "{\"prompt\": \"hi\", \"max_tokens\": 1.5}", false, 400, "max_tokens",
            "expected an integer");
    refused(&f->o, "{\"prompt\": \"hi\", \"temperature\": 3}", false, 400, "temperature",
            "temperature: must be in [0, 2], got 3");
    refused(&f->o, "{\"prompt\": \"hi\", \"temperature\": \"hot\"}", false, 400, "temperature",
            "expected a number");
    refused(&f->o, "{\"prompt\": \"hi\", \"top_p\": 0}", false, 400, "top_p",
            "top_p: must be in (0, 1]");
    refused(&f->o, "{\"prompt\": \"hi\", \"min_p\": 1}", false, 400, "min_p", "[0, 1)");
    refused(&f->o, "{\"prompt\": \"hi\", \"repetition_penalty\": 0}", false, 400,
            "repetition_penalty", "must be > 0");
    refused(&f->o, "{\"prompt\": \"hi\", \"n\": 2}", false, 400, "n", "only 1 is supported");
    refused(&f->o, "{\"prompt\": \"hi\", \"logprobs\": 3}", false, 400, "logprobs",
            "carries no log-probabilities");
    refused(&f->o, "{\"prompt\": \"hi\", \"stop\": [\"\"]}", false, 400, "stop",
            "stop[0]: expected a non-empty string");
    refused(&f->o,
            "{\"prompt\": \"hi\", \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\","
            "\"9\",\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
            false, 400, "stop", "stop: at most 16 strings");
    refused(&f->o, "{\"prompt\": \"hi\", \"stop_token_ids\": [260]}", false, 400,
            "stop_token_ids", "stop_token_ids[0]: expected a token id");
    refused(&f->o, "{\"prompt\": \"hi\", \"stream\": 1}", false, 400, "stream",
            "expected true or false");
    refused(&f->o, "{\"prompt\": \"hi\", \"stream_options\": {\"include_usage\": true}}", false,
            400, "stream_options", "only allowed with stream: true");
    refused(&f->o, "{\"prompt\": \"hi\", \"stream\": true, \"stream_options\": {\"x\": 1}}",
            false, 400, "stream_options", "stream_options.x: not supported");
    refused(&f->o, "{\"prompt\": \"hi\", \"deadline_ms\": 0}", false, 400, "deadline_ms",
            "deadline_ms: must be in [1, 86400000]");
    refused(&f->o, "{\"prompt\": \"hi\", \"user\": 5}", false, 400, "user", "expected a string");
}

/* ====== Results ====== */

static const char *str_at(json_t *j, const char *path)
{
    json_t *v = j;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *save = NULL, *k = strtok_r(buf, ".", &save); k && v;
         k = strtok_r(NULL, ".", &save))
        v = json_is_array(v) ? json_array_get(v, (size_t)atoi(k)) : json_object_get(v, k);
    return json_is_string(v) ? json_string_value(v) : json_is_null(v) ? "(null)" : NULL;
}

static long long int_at(json_t *j, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(j, a), b);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static void test_result_json(void **state)
{
    oai_fx_t *f = *state;
    pd_oai_resp_t r;
    pd_oai_resp_init(&r, false, 42, false, 1700000000);
    assert_string_equal(r.id, "cmpl-42");
    pd_oai_result_t res = { .text = "abc", .len = 3, .finish = PD__FINISH_REASON__FINISH_LENGTH,
                            .prompt_tokens = 4, .completion_tokens = 3 };
    json_t *j = pd_oai_result_json(&f->o, &r, &res);
    assert_non_null(j);
    assert_string_equal(str_at(j, "id"), "cmpl-42");
    assert_string_equal(str_at(j, "object"), "text_completion");
    assert_string_equal(str_at(j, "model"), "tiny");
    assert_string_equal(str_at(j, "choices.0.text"), "abc");
    assert_string_equal(str_at(j, "choices.0.finish_reason"), "length");
    assert_string_equal(str_at(j, "choices.0.logprobs"), "(null)");
    assert_int_equal(json_integer_value(json_object_get(j, "created")), 1700000000);
    assert_int_equal(int_at(j, "usage", "total_tokens"), 7);
    json_decref(j);

    pd_oai_resp_init(&r, true, 43, false, 1700000000);
    assert_string_equal(r.id, "chatcmpl-43");
    res.finish = PD__FINISH_REASON__FINISH_EOS;
    res.text = "a\0b";
    j = pd_oai_result_json(&f->o, &r, &res);
    assert_string_equal(str_at(j, "object"), "chat.completion");
    assert_string_equal(str_at(j, "choices.0.message.role"), "assistant");
    json_t *c = json_object_get(json_object_get(json_array_get(json_object_get(j, "choices"), 0),
                                                "message"),
                                "content");
    assert_int_equal(json_string_length(c), 3); /* the length, not the NUL, ends it */
    assert_string_equal(str_at(j, "choices.0.finish_reason"), "stop");
    json_decref(j);

    assert_string_equal(pd_oai_finish_text(PD__FINISH_REASON__FINISH_NONE), "stop");
    assert_string_equal(pd_oai_finish_text(PD__FINISH_REASON__FINISH_STOP), "stop");
    assert_string_equal(pd_oai_finish_text(PD__FINISH_REASON__FINISH_CONTEXT), "length");
    assert_string_equal(pd_oai_finish_text(PD__FINISH_REASON__FINISH_CANCELLED), "abort");
}

static void test_stream_events(void **state)
{
    oai_fx_t *f = *state;
    pd_oai_resp_t r;
    pd_oai_resp_init(&r, true, 5, true, 1700000000);
    pd_oai_stream_t st = { 0 };
    json_t *ev = json_array();
    assert_int_equal(pd_oai_stream_step(&f->o, &r, &st, "He", 2, NULL, ev), 0);
    assert_int_equal(json_array_size(ev), 2); /* the role, then the text */
    json_t *e0 = json_array_get(ev, 0), *e1 = json_array_get(ev, 1);
    assert_string_equal(str_at(e0, "object"), "chat.completion.chunk");
    assert_string_equal(str_at(e0, "choices.0.delta.role"), "assistant");
    assert_string_equal(str_at(e0, "choices.0.finish_reason"), "(null)");
    assert_string_equal(str_at(e0, "usage"), "(null)"); /* include_usage: null until the end */
    assert_string_equal(str_at(e1, "choices.0.delta.content"), "He");
    json_array_clear(ev);
    assert_int_equal(pd_oai_stream_step(&f->o, &r, &st, "", 0, NULL, ev), 0);
    assert_int_equal(json_array_size(ev), 0);
    pd_oai_result_t end = { .finish = PD__FINISH_REASON__FINISH_STOP, .prompt_tokens = 3,
                            .completion_tokens = 2 };
    assert_int_equal(pd_oai_stream_step(&f->o, &r, &st, "y", 1, &end, ev), 0);
    assert_int_equal(json_array_size(ev), 3); /* text, final chunk, usage */
    assert_string_equal(str_at(json_array_get(ev, 0), "choices.0.delta.content"), "y");
    assert_string_equal(str_at(json_array_get(ev, 1), "choices.0.finish_reason"), "stop");
    json_t *u = json_array_get(ev, 2);
    assert_int_equal(json_array_size(json_object_get(u, "choices")), 0);
    assert_int_equal(int_at(u, "usage", "total_tokens"), 5);
    json_array_clear(ev);

    /* Completions, ended by a router error: the error object alone. */
    pd_oai_resp_init(&r, false, 6, false, 1700000000);
    st = (pd_oai_stream_t){ 0 };
    end = (pd_oai_result_t){ .code = PD__ERROR_CODE__DEADLINE_EXCEEDED, .err = "too slow" };
    assert_int_equal(pd_oai_stream_step(&f->o, &r, &st, "ab", 2, &end, ev), 0);
    assert_int_equal(json_array_size(ev), 2);
    assert_string_equal(str_at(json_array_get(ev, 0), "choices.0.text"), "ab");
    assert_null(json_object_get(json_array_get(ev, 0), "usage"));
    json_t *e = json_array_get(ev, 1);
    assert_string_equal(str_at(e, "error.message"), "too slow");
    assert_string_equal(str_at(e, "error.type"), "server_error");
    assert_string_equal(str_at(e, "error.code"), "deadline_exceeded");
    json_decref(ev);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        int code;
        unsigned status;
        const char *ecode;
    } map[] = {
        { PD__ERROR_CODE__INVALID_ARGUMENT, 400, "invalid_argument" },
        { PD__ERROR_CODE__RESOURCE_EXHAUSTED, 429, "resource_exhausted" },
        { PD__ERROR_CODE__UNAVAILABLE, 503, "unavailable" },
        { PD__ERROR_CODE__DEADLINE_EXCEEDED, 504, "deadline_exceeded" },
        { PD__ERROR_CODE__CANCELLED, 499, "cancelled" },
        { PD__ERROR_CODE__INTERNAL, 500, "internal" },
        { 12345, 500, "internal" },
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        const char *ecode = NULL;
        assert_int_equal(pd_oai_status_of(map[i].code, &ecode), map[i].status);
        assert_string_equal(ecode, map[i].ecode);
    }
    json_t *j = pd_oai_error_json(400, "bad", "top_p", NULL);
    assert_string_equal(str_at(j, "error.type"), "invalid_request_error");
    assert_string_equal(str_at(j, "error.param"), "top_p");
    assert_string_equal(str_at(j, "error.code"), "(null)");
    json_decref(j);
    unsigned st = 0;
    j = pd_oai_router_error_json(PD__ERROR_CODE__RESOURCE_EXHAUSTED, NULL, &st);
    assert_int_equal(st, 429);
    assert_string_equal(str_at(j, "error.message"), "error");
    assert_string_equal(str_at(j, "error.type"), "invalid_request_error");
    json_decref(j);
}

static void test_models(void **state)
{
    oai_fx_t *f = *state;
    json_t *j = pd_oai_models_json(&f->o, 1700000000);
    assert_string_equal(str_at(j, "object"), "list");
    assert_string_equal(str_at(j, "data.0.id"), "tiny");
    assert_string_equal(str_at(j, "data.0.owned_by"), "pdserve");
    json_t *d = json_array_get(json_object_get(j, "data"), 0);
    assert_int_equal(json_integer_value(json_object_get(d, "max_model_len")), CTX);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completions_params),
        cmocka_unit_test(test_prompt_forms),
        cmocka_unit_test(test_chat),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_result_json),
        cmocka_unit_test(test_stream_events),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_models),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
