/* fuzz_tokenizer.c -- libFuzzer target for the tokenizers (scripts/fuzz.sh).
 *
 * Input byte 0 picks a mode; the rest is the payload.
 *   0..5  encode the payload with a small tokenizer (SPM, or byte-level BPE
 *         with pre gpt-2 / llama-bpe / qwen2 / smollm / default), then
 *         decode it whole and incrementally. Invariants (abort() if broken):
 *         encoding succeeds exactly when the payload is valid UTF-8, and a
 *         refusal is PD_EINVAL; every id is in range; every detokenizer
 *         chunk is valid UTF-8; the chunks add up to pd_tok_decode's
 *         output, which is the payload (BPE) or " " + payload (SPM, when
 *         the payload has no literal U+2581).
 *   6     the payload is a GGUF image: pd_tok_load must refuse it cleanly
 *         or give a tokenizer that encodes and decodes a fixed text.
 * The small vocabularies cover every byte, so round trips are exact.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/unicode.h"

#define CHECK(cond)       \
    do {                  \
        if (!(cond))      \
            abort();      \
    } while (0)

#define N_TOKS 6
/* The fuzzer's own state: built once, read-only afterwards. */
static pd_tok_t *g_tok[N_TOKS];

static void add_common(pd_gguf_writer_t *w, const char *model, const char *pre)
{
    CHECK(pd_gguf_writer_add_str(w, "tokenizer.ggml.model", model) == 0);
    if (pre)
        CHECK(pd_gguf_writer_add_str(w, "tokenizer.ggml.pre", pre) == 0);
}

static pd_tok_t *load_written(pd_gguf_writer_t *w)
{
    char path[] = "/tmp/pd-fuzz-tok-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    pd_err_t err = {0};
    CHECK(pd_gguf_writer_write(w, path, &err) == 0);
    pd_gguf_writer_free(w);
    pd_gguf_t *g = pd_gguf_open(path, &err);
    CHECK(g);
    pd_tok_t *t = pd_tok_load(g, &err);
    pd_gguf_free(g);
    unlink(path);
    if (!t) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        abort();
    }
    return t;
}

/* SPM: <unk> <s> </s>, 256 byte tokens, a few pieces. */
static pd_tok_t *make_spm(void)
{
    static const char *const pieces[] = {
        "\xe2\x96\x81", "e", "t", "h", "a", "\xe2\x96\x81t", "he", "\xe2\x96\x81the", "\xe2\x96\x81" "a",
        "an", "\xe2\x96\x81" "an", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\n"};
    enum { NP = sizeof pieces / sizeof pieces[0], N = 3 + 256 + NP };
    static char bytes[256][8];
    const char *toks[N];
    float scores[N];
    int32_t types[N];
    toks[0] = "<unk>", toks[1] = "<s>", toks[2] = "</s>";
    types[0] = 2, types[1] = 3, types[2] = 3;
    scores[0] = scores[1] = scores[2] = 0;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        toks[3 + b] = bytes[b];
        types[3 + b] = 6;
        scores[3 + b] = 0;
    }
    for (int i = 0; i < NP; i++) {
        toks[259 + i] = pieces[i];
        types[259 + i] = 1;
        scores[259 + i] = -(float)(i % 5); /* with ties */
    }
    pd_gguf_writer_t *w = pd_gguf_writer_new(3);
    add_common(w, "llama", NULL);
    CHECK(pd_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, N) == 0);
    CHECK(pd_gguf_writer_add_arr(w, "tokenizer.ggml.scores", PD_GGUF_TYPE_FLOAT32, scores, N) == 0);
    CHECK(pd_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", PD_GGUF_TYPE_INT32, types, N) == 0);
    return load_written(w);
}

/* Byte-level BPE: the 256 bytes in GPT-2's alphabet plus a few merges. */
static pd_tok_t *make_bpe(const char *pre)
{
    static const char *const merges[] = {
        "\xc4\xa0 t", "h e", "\xc4\xa0t he", "i n", "e r", "\xc4\xa0 a", "a n", "o n",
        "\xc4\xa0 \xc4\xa0", "1 2", "12 3", "\xc4\x8a \xc4\x8a", "\xe4 \xb8"};
    enum { NM = sizeof merges / sizeof merges[0], N = 256 + NM + 1 };
    static char single[256][4];
    static char joined[NM][16];
    const char *toks[N];
    int32_t types[N];
    for (int b = 0; b < 256; b++) {
        size_t k = pd_utf8_encode(pd_gpt2_byte_to_cpt((uint8_t)b), single[b]);
        single[b][k] = 0;
        toks[b] = single[b];
        types[b] = 1;
    }
    for (int i = 0; i < NM; i++) {
        const char *sp = strchr(merges[i], ' ');
        size_t a = (size_t)(sp - merges[i]);
        memcpy(joined[i], merges[i], a);
        strcpy(joined[i] + a, sp + 1);
        toks[256 + i] = joined[i];
        types[256 + i] = 1;
    }
    toks[N - 1] = "<|endoftext|>";
    types[N - 1] = 3;
    pd_gguf_writer_t *w = pd_gguf_writer_new(3);
    add_common(w, "gpt2", pre);
    CHECK(pd_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, N) == 0);
    CHECK(pd_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", PD_GGUF_TYPE_INT32, types, N) == 0);
    CHECK(pd_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, NULL, NM) == 0);
    CHECK(pd_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", N - 1) == 0);
    CHECK(pd_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", N - 1) == 0);
    return load_written(w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    g_tok[0] = make_spm();
    g_tok[1] = make_bpe("gpt-2");
    g_tok[2] = make_bpe("llama-bpe");
    g_tok[3] = make_bpe("qwen2");
    g_tok[4] = make_bpe("smollm");
    g_tok[5] = make_bpe(NULL);
    return 0;
}

static void round_trip(const pd_tok_t *t, const char *text, size_t len)
{
    size_t cap = 2 * len + 8, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    pd_err_t err = {0};
    CHECK(ids);
    int rc = pd_tok_encode(t, text, len, true, ids, cap, &n, &err);
    bool valid = pd_utf8_valid(text, len, NULL);
    if (!valid) {
        CHECK(rc == PD_EINVAL);
        free(ids);
        return;
    }
    CHECK(rc == 0 && n <= cap);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] >= 0 && (uint32_t)ids[i] < pd_tok_n_vocab(t));
    /* whole decode */
    int need = pd_tok_decode(t, ids, n, NULL, 0);
    CHECK(need >= 0);
    char *whole = malloc((size_t)need + 1);
    CHECK(whole);
    CHECK(pd_tok_decode(t, ids, n, whole, (size_t)need + 1) == need);
    bool spm = pd_tok_kind(t) == PD_TOK_SPM;
    if (spm) {
        if (!memmem(text, len, "\xe2\x96\x81", 3) && len > 0) {
            CHECK((size_t)need == len + 1 && whole[0] == ' ');
            CHECK(memcmp(whole + 1, text, len) == 0);
        }
    } else {
        CHECK((size_t)need == len && memcmp(whole, text, len) == 0);
    }
    /* incremental decode */
    pd_detok_t d;
    pd_detok_init(&d, false);
    char *acc = malloc((size_t)need + 16);
    char chunk[64];
    size_t o = 0;
    CHECK(acc);
    for (size_t i = 0; i < n; i++) {
        int k = pd_detok_push(t, &d, ids[i], chunk, sizeof chunk);
        CHECK(k >= 0);
        CHECK(pd_utf8_valid(chunk, (size_t)k, NULL));
        CHECK(o + (size_t)k <= (size_t)need);
        memcpy(acc + o, chunk, (size_t)k);
        o += (size_t)k;
    }
    CHECK(pd_detok_flush(&d, chunk, sizeof chunk) == 0); /* input was valid */
    CHECK(o == (size_t)need && memcmp(acc, whole, o) == 0);
    free(acc);
    free(whole);
    free(ids);
}

static void load_hostile(const uint8_t *data, size_t size)
{
    pd_err_t err = {0};
    pd_gguf_t *g = pd_gguf_open_mem(data, size, &err);
    if (!g)
        return;
    pd_tok_t *t = pd_tok_load(g, &err);
    pd_gguf_free(g); /* the tokenizer must not point into the file */
    if (!t) {
        CHECK(err.code < 0 && err.msg[0]);
        return;
    }
    static const char text[] = "Hello \xe4\xb8\xad 123 <s> x";
    int32_t ids[256];
    size_t n = 0;
    int rc = pd_tok_encode(t, text, sizeof text - 1, true, ids, 256, &n, &err);
    CHECK(rc == 0 || rc == PD_ERANGE || rc == PD_EUNSUPPORTED);
    char out[4096];
    pd_detok_t d;
    pd_detok_init(&d, true);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        CHECK(ids[i] >= 0 && (uint32_t)ids[i] < pd_tok_n_vocab(t));
        int k = pd_detok_push(t, &d, ids[i], out, sizeof out);
        CHECK(k >= 0 || k == PD_ERANGE);
        if (k > 0)
            CHECK(pd_utf8_valid(out, (size_t)k, NULL));
    }
    for (int32_t id = 0; id < 64 && (uint32_t)id < pd_tok_n_vocab(t); id++)
        (void)pd_tok_piece(t, id, out, sizeof out);
    pd_tok_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned mode = data[0] % (N_TOKS + 1);
    if (mode == N_TOKS) {
        load_hostile(data + 1, size - 1);
        return 0;
    }
    if (size - 1 > 4096)
        return 0; /* keep each run fast */
    round_trip(g_tok[mode], (const char *)data + 1, size - 1);
    return 0;
}
