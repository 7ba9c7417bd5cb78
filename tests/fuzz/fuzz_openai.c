/* fuzz_openai.c -- libFuzzer target for the OpenAI request parser
 * (router/openai.c): every byte an HTTP client can put in a body of
 * /v1/completions or /v1/chat/completions.
 *
 * fuzz-sources: router/openai.c router/chat_template.c router/metrics.c
 *
 * Input: [endpoint:1][body...]; endpoint & 1 = chat. The tokenizer is a
 * small byte-level BPE vocabulary (256 bytes, 3 merges, <|endoftext|>),
 * the template chatml, the context 128 tokens. An accepted body must map
 * to a GenerateRequest whose prompt ids are inside the vocabulary and the
 * context and whose max_tokens is within 1..the limit; a refused one must
 * say why with a status of 400 or 404.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "base/log.h"
#include "openai.h"
#include "tests/unit/tiny_bpe.h"

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "fuzz_openai: %s (line %d)\n", #cond, __LINE__);       \
            abort();                                                               \
        }                                                                          \
    } while (0)

#define CTX 128
#define LIMIT 64

static pd_tok_t *g_tok;
static pd_chat_t g_chat;
static pd_oai_t g_oai;

static pd_tok_t *make_tok(void)
{
    static const char *const merges[] = { "h e", "l l", "he ll" };
    pd_tok_t *t = tiny_bpe(merges, sizeof merges / sizeof merges[0], false);
    CHECK(t);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    pd_log_init("fuzz", PD_LOG_ERROR);
    pd_log_set_stderr(false);
    g_tok = make_tok();
    pd_chat_init(&g_chat, PD_CHAT_CHATML, g_tok);
    g_oai = (pd_oai_t){ .tok = g_tok, .chat = &g_chat, .model = "tiny", .max_seq_len = CTX,
                        .max_tokens_limit = LIMIT };
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool chat = data[0] & 1;
    pd_oai_req_t q;
    pd_oai_bad_t b = { 0 };
    bool ok = pd_oai_parse(&g_oai, (const char *)data + 1, size - 1, chat, &q, &b);
    if (ok) {
        Pd__GenerateRequest g;
        Pd__Sampling s;
        pd_oai_generate(&q, &g, &s);
        CHECK(g.max_tokens >= 1 && g.max_tokens <= LIMIT);
        CHECK((g.prompt != NULL) != (g.n_prompt_tokens > 0));
        CHECK(g.n_prompt_tokens <= CTX);
        for (size_t i = 0; i < g.n_prompt_tokens; i++)
            CHECK(g.prompt_tokens[i] >= 0 && (uint32_t)g.prompt_tokens[i] < pd_tok_n_vocab(g_tok));
        CHECK(g.n_stop <= PD_OAI_MAX_STOP && g.n_stop_ids <= PD_OAI_MAX_STOP_IDS);
        /* What the router gets must pack. */
        size_t n = pd__generate_request__get_packed_size(&g);
        uint8_t *buf = malloc(n ? n : 1);
        CHECK(buf);
        CHECK(pd__generate_request__pack(&g, buf) == n);
        free(buf);
    } else {
        CHECK(b.status == 400 || b.status == 404);
        CHECK(b.msg[0] != '\0');
    }
    pd_oai_req_clear(&q);
    return 0;
}
