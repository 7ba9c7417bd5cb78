/* test_chat_template.c -- router/chat_template.c: family detection from
 * real GGUF templates, renderings equal to llama.cpp's (its
 * tests/test-chat-template.cpp conversation and expected outputs), refusals.
 *
 * The router's modules are not in a library: the module is compiled into
 * this test directly. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "engine/gguf.h"
#include "../../router/chat_template.c"

/* llama.cpp's test conversation. */
static const pd_chat_msg_t g_conv[] = {
    { "system", "You are a helpful assistant" }, { "user", "Hello" },
    { "assistant", "Hi there" },                 { "user", "Who are you" },
    { "assistant", "   I am an assistant   " },   { "user", "Another question" },
};
#define N_CONV (sizeof g_conv / sizeof g_conv[0])

static void expect_render(pd_chat_kind_t k, const char *want)
{
    char *out = NULL;
    pd_err_t err = { 0 };
    assert_int_equal(pd_chat_render(k, g_conv, N_CONV, &out, &err), 0);
    assert_string_equal(out, want);
    free(out);
}

static void test_render_chatml(void **state)
{
    (void)state;
    expect_render(PD_CHAT_CHATML,
                  "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n"
                  "Hello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\n"
                  "Who are you<|im_end|>\n<|im_start|>assistant\n   I am an assistant   <|im_end|>\n"
                  "<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n");
}

static void test_render_llama3(void **state)
{
    (void)state;
    expect_render(PD_CHAT_LLAMA3,
                  "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void test_render_llama2_and_mistral(void **state)
{
    (void)state;
    /* llama.cpp LLAMA_2_SYS_STRIP (meta-llama/Llama-2-7b-chat-hf). */
    expect_render(PD_CHAT_LLAMA2,
                  "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>"
                  "<s>[INST] Who are you [/INST]I am an assistant</s><s>[INST] Another question "
                  "[/INST]");
    /* llama.cpp LLAMA_2 (mistralai/Mistral-7B-Instruct-v0.2). */
    expect_render(PD_CHAT_MISTRAL,
                  "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you "
                  "[/INST]   I am an assistant   </s>[INST] Another question [/INST]");
}

static void test_render_zephyr(void **state)
{
    (void)state;
    expect_render(PD_CHAT_ZEPHYR,
                  "<|system|>\nYou are a helpful assistant</s>\n<|user|>\nHello</s>\n<|assistant|>\n"
                  "Hi there</s>\n<|user|>\nWho are you</s>\n<|assistant|>\n   I am an assistant   "
                  "</s>\n<|user|>\nAnother question</s>\n<|assistant|>\n");
}

/* llama.cpp's expected outputs (tests/test-chat-template.cpp, the C
 * renderer's, for google/gemma-7b-it and Phi-3-mini). */
static void test_render_gemma_phi3(void **state)
{
    (void)state;
    expect_render(PD_CHAT_GEMMA,
                  "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n"
                  "<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you"
                  "<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n"
                  "<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n");
    expect_render(PD_CHAT_PHI3,
                  "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n"
                  "<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n"
                  "   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n"
                  "<|assistant|>\n");
}

static void test_detect(void **state)
{
    (void)state;
    pd_chat_kind_t k;
    pd_err_t err = { 0 };
    /* Qwen2-Instruct's template (start). */
    assert_int_equal(pd_chat_detect("{% for message in messages %}{% if loop.first and messages[0]"
                                     "['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a "
                                     "helpful assistant.<|im_end|>\\n' }}{% endif %}",
                                     &k, &err),
                     0);
    assert_int_equal(k, PD_CHAT_CHATML);
    assert_int_equal(pd_chat_detect("{% set content = '<|start_header_id|>' + message['role'] + "
                                     "'<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                                     "'<|eot_id|>' %}",
                                     &k, &err),
                     0);
    assert_int_equal(k, PD_CHAT_LLAMA3);
    assert_int_equal(pd_chat_detect("{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
                                    "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' }}",
                                    &k, &err),
                     0);
    assert_int_equal(k, PD_CHAT_LLAMA2);
    assert_int_equal(pd_chat_detect("{{ bos_token }}{% for message in messages %}{{ '[INST] ' + "
                                    "message['content'] + ' [/INST]' }}{% endfor %}",
                                    &k, &err),
                     0);
    assert_int_equal(k, PD_CHAT_MISTRAL);
    assert_int_equal(pd_chat_detect("{% if message['role'] == 'user' %}{{ '<|user|>\\n' + "
                                    "message['content'] + eos_token }}",
                                    &k, &err),
                     0);
    assert_int_equal(k, PD_CHAT_ZEPHYR);
    /* Gemma 2/3 (google/gemma-7b-it's, as llama.cpp's test has it) */
    assert_int_equal(pd_chat_detect("{% if (message['role'] == 'assistant') %}{% set role = "
                                    "'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
                                    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | "
                                    "trim + '<end_of_turn>\\n' }}", &k, &err), 0);
    assert_int_equal(k, PD_CHAT_GEMMA);
    /* Phi-3-mini's: <|user|> as zephyr's, told apart by <|end|> */
    assert_int_equal(pd_chat_detect("{{ bos_token }}{% for message in messages %}{% if (message["
                                    "'role'] == 'user') %}{{'<|user|>' + '\\n' + message['content']"
                                    " + '<|end|>' + '\\n' + '<|assistant|>' + '\\n'}}{% elif ("
                                    "message['role'] == 'assistant') %}{{message['content'] + "
                                    "'<|end|>' + '\\n'}}{% endif %}{% endfor %}", &k, &err), 0);
    assert_int_equal(k, PD_CHAT_PHI3);
    /* Command R's turns are in no family we render: refused, with the reason. */
    assert_int_equal(pd_chat_detect("{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content }}", &k,
                                    &err), PD_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "tokenizer.chat_template: not a known family"));
    assert_non_null(strstr(err.msg, "gemma, phi3"));
    assert_non_null(strstr(err.msg, "<|START_OF_TURN_TOKEN|>"));
}

static void test_names_and_refusals(void **state)
{
    (void)state;
    pd_chat_kind_t k = PD_CHAT_NONE;
    pd_err_t err = { 0 };
    for (int i = PD_CHAT_CHATML; i <= PD_CHAT_PHI3; i++) {
        assert_int_equal(pd_chat_from_name(pd_chat_name((pd_chat_kind_t)i), &k, &err), 0);
        assert_int_equal(k, i);
    }
    assert_int_equal(pd_chat_from_name("jinja", &k, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "'jinja'"));
    char *out = (char *)1;
    assert_int_equal(pd_chat_render(PD_CHAT_NONE, g_conv, 1, &out, &err), PD_EINVAL);
    assert_null(out);
    assert_string_equal(err.msg, "model has no chat template; set http.chat_template");
    pd_chat_msg_t robot[] = { { "robot", "beep" } };
    assert_int_equal(pd_chat_render(PD_CHAT_CHATML, robot, 1, &out, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "messages[0].role: 'robot'"));
    pd_chat_msg_t late[] = { { "user", "a" }, { "system", "b" } };
    assert_int_equal(pd_chat_render(PD_CHAT_CHATML, late, 2, &out, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "messages[1]: a system message must come first"));
    assert_int_equal(pd_chat_render(PD_CHAT_CHATML, g_conv, 0, &out, &err), PD_EINVAL);
}

/* ====== Tokenizing: markers that are tokens become their ids ====== */

/* A tiny SPM vocabulary, with or without the ChatML markers. */
static pd_tok_t *tiny_tok(bool with_markers)
{
    const char *toks[] = { "<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b",
                           "<|im_start|>", "<|im_end|>" };
    const float scores[] = { 0, 0, 0, -1, -1, -1, 0, 0 };
    const int32_t types[] = { 2, 3, 3, 1, 1, 1, 3, 3 };
    uint64_t n = with_markers ? 8 : 6;
    pd_gguf_writer_t *w = pd_gguf_writer_new(3);
    assert_non_null(w);
    assert_int_equal(pd_gguf_writer_add_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(pd_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama"), 0);
    assert_int_equal(pd_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, n), 0);
    assert_int_equal(pd_gguf_writer_add_arr(w, "tokenizer.ggml.scores", PD_GGUF_TYPE_FLOAT32,
                                            scores, n), 0);
    assert_int_equal(pd_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", PD_GGUF_TYPE_INT32,
                                            types, n), 0);
    assert_int_equal(pd_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1), 0);
    assert_int_equal(pd_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2), 0);
    assert_int_equal(pd_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0), 0);
    assert_int_equal(pd_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true), 0);
    char path[64];
    snprintf(path, sizeof path, "/tmp/pd-test-chat-%d.gguf", (int)getpid());
    pd_err_t err = { 0 };
    assert_int_equal(pd_gguf_writer_write(w, path, &err), 0);
    pd_gguf_writer_free(w);
    pd_gguf_t *g = pd_gguf_open(path, &err);
    assert_non_null(g);
    pd_tok_t *t = pd_tok_load(g, &err);
    pd_gguf_free(g);
    unlink(path);
    if (t == NULL)
        fail_msg("tiny vocabulary: %s", err.msg);
    return t;
}

static void test_tokenize_markers(void **state)
{
    (void)state;
    pd_tok_t *t = tiny_tok(true);
    pd_chat_t c;
    pd_chat_init(&c, PD_CHAT_CHATML, t);
    assert_int_equal(c.n_markers, 2);
    assert_int_equal(c.id[0], 6);
    assert_int_equal(c.id[1], 7);
    int32_t out[16];
    size_t n = 0;
    pd_err_t err = { 0 };
    /* BOS, marker, "ab" with its SPM space prefix (each text piece gets one,
     * as llama.cpp does after a special token), marker, "a". */
    assert_int_equal(pd_chat_tokenize(&c, "<|im_start|>ab<|im_end|>a", out, 16, &n, &err), 0);
    const int32_t want[] = { 1, 6, 3, 4, 5, 7, 3, 4 };
    assert_int_equal(n, 8);
    assert_memory_equal(out, want, sizeof want);
    /* Too small a buffer is PD_ERANGE, never an overflow. */
    assert_int_equal(pd_chat_tokenize(&c, "<|im_start|>ab<|im_end|>a", out, 4, &n, &err),
                     PD_ERANGE);
    pd_tok_free(t);
}

static void test_tokenize_plain_without_markers(void **state)
{
    (void)state;
    pd_tok_t *t = tiny_tok(false);
    pd_chat_t c;
    pd_chat_init(&c, PD_CHAT_CHATML, t);
    assert_int_equal(c.id[0], -1);
    assert_int_equal(c.id[1], -1);
    /* Markers that are not tokens are text: the same ids as the router's
     * own tokenization of the prompt (what pd-cli sends). */
    const char *text = "<|im_start|>ab<|im_end|>a";
    int32_t got[64], want[64];
    size_t n = 0, nw = 0;
    pd_err_t err = { 0 };
    assert_int_equal(pd_chat_tokenize(&c, text, got, 64, &n, &err), 0);
    assert_int_equal(pd_tok_encode(t, text, strlen(text), true, want, 64, &nw, &err), 0);
    assert_int_equal(n, nw);
    assert_memory_equal(got, want, n * sizeof *got);
    pd_tok_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_chatml),
        cmocka_unit_test(test_render_llama3),
        cmocka_unit_test(test_render_llama2_and_mistral),
        cmocka_unit_test(test_render_zephyr),
        cmocka_unit_test(test_render_gemma_phi3),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_names_and_refusals),
        cmocka_unit_test(test_tokenize_markers),
        cmocka_unit_test(test_tokenize_plain_without_markers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
