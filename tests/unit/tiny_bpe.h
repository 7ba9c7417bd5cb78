/* tiny_bpe.h -- a byte-level BPE tokenizer for unit tests and fuzz targets,
 * written to a temporary GGUF and loaded as any model's would be: the 256
 * bytes in GPT-2's alphabet (ids 0..255, so byte b and token b print as the
 * same text), then one token per merge ("a b" -> "ab", ids 256..), then
 * <|endoftext|> (the last id) as EOS, and as BOS when `bos`.
 * NULL when anything fails (the caller asserts in its own way). */
#ifndef PD_TESTS_TINY_BPE_H
#define PD_TESTS_TINY_BPE_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/unicode.h"

#define TINY_BPE_MAX_MERGES 16

static __attribute__((unused)) pd_tok_t *tiny_bpe(const char *const *merges, int n_merges,
                                                  bool bos)
{
    if (n_merges < 0 || n_merges > TINY_BPE_MAX_MERGES)
        return NULL;
    enum { N_MAX = 256 + TINY_BPE_MAX_MERGES + 1 };
    char single[256][4], joined[TINY_BPE_MAX_MERGES][16];
    const char *toks[N_MAX];
    int32_t types[N_MAX];
    const uint32_t n = 256 + (uint32_t)n_merges + 1;
    for (int b = 0; b < 256; b++) {
        size_t k = pd_utf8_encode(pd_gpt2_byte_to_cpt((uint8_t)b), single[b]);
        single[b][k] = 0;
        toks[b] = single[b];
        types[b] = 1;
    }
    for (int i = 0; i < n_merges; i++) {
        const char *sp = strchr(merges[i], ' ');
        size_t a = sp ? (size_t)(sp - merges[i]) : 0;
        if (sp == NULL || strlen(merges[i]) >= sizeof joined[i])
            return NULL;
        memcpy(joined[i], merges[i], a);
        strcpy(joined[i] + a, sp + 1);
        toks[256 + i] = joined[i];
        types[256 + i] = 1;
    }
    toks[n - 1] = "<|endoftext|>";
    types[n - 1] = 3;

    pd_tok_t *t = NULL;
    pd_err_t err = { 0 };
    char path[] = "/tmp/pd-tiny-bpe-XXXXXX";
    pd_gguf_writer_t *w = pd_gguf_writer_new(3);
    int fd = mkstemp(path);
    if (fd >= 0)
        close(fd);
    if (w == NULL || fd < 0 || pd_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2") != 0 ||
        pd_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, n) != 0 ||
        pd_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", PD_GGUF_TYPE_INT32, types, n) != 0 ||
        pd_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, NULL, (uint32_t)n_merges) != 0 ||
        (bos && pd_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", n - 1) != 0) ||
        pd_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", n - 1) != 0 ||
        pd_gguf_writer_write(w, path, &err) != 0)
        goto out;
    pd_gguf_t *g = pd_gguf_open(path, &err);
    if (g) {
        t = pd_tok_load(g, &err);
        pd_gguf_free(g);
    }
out:
    pd_gguf_writer_free(w);
    if (fd >= 0)
        unlink(path);
    return t;
}

#endif
