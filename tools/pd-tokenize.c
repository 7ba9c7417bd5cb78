/* pd-tokenize -- the tokenizer from a GGUF file, on the command line.
 *
 *   pd-tokenize -m FILE [--no-special] --hex HEX
 *       prints the ids of the UTF-8 text given as hex, space-separated
 *   pd-tokenize -m FILE [--no-special]
 *       batch: one hex string per stdin line, one line of ids per line out
 *       ("ERR <message>" for a line that cannot be encoded)
 *   pd-tokenize -m FILE --pieces
 *       prints each id's piece (pd_tok_piece) in hex, one line per id
 *   pd-tokenize --mkvocab RANKS spm|bpe N PRE OUT
 *       writes a vocabulary-only GGUF (llama architecture, tiny hparams, no
 *       tensors) built by pd_vocab_build; PRE is the BPE pre-tokenizer name
 *       ("gpt-2", "llama-bpe", "qwen2", ...; "none" leaves it out, which
 *       llama.cpp reads as "default"; ignored for spm)
 *
 * --no-special: do not add BOS/EOS (the default adds them as the model says).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/vocab.h"

static int hexnib(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes hex[0..n) into out (n/2 bytes). Returns bytes or -1. */
static long unhex(const char *hex, size_t n, char *out)
{
    if (n % 2)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexnib((unsigned char)hex[2 * i]), lo = hexnib((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (char)(hi * 16 + lo);
    }
    return (long)(n / 2);
}

static int encode_line(const pd_tok_t *t, const char *hex, size_t n, bool special)
{
    char *text = malloc(n / 2 + 1);
    size_t cap = n + 16, n_ids = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    pd_err_t err = {0};
    int rc = 1;
    if (!text || !ids) {
        printf("ERR out of memory\n");
        goto done;
    }
    long len = unhex(hex, n, text);
    if (len < 0) {
        printf("ERR bad hex\n");
        goto done;
    }
    if (pd_tok_encode(t, text, (size_t)len, special, ids, cap, &n_ids, &err) != 0) {
        printf("ERR %s\n", err.msg);
        goto done;
    }
    for (size_t i = 0; i < n_ids; i++)
        printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    rc = 0;
done:
    free(text);
    free(ids);
    return rc;
}

static int mkvocab(char **argv)
{
    const char *ranks = argv[0], *kind_s = argv[1], *pre = argv[3], *out = argv[4];
    long n = strtol(argv[2], NULL, 10);
    pd_vocab_kind_t kind = strcmp(kind_s, "spm") == 0 ? PD_VOCAB_SPM : PD_VOCAB_BPE;
    pd_vocab_t v;
    pd_err_t err = {0};
    if (n <= 0 || n > 1000000 || (strcmp(kind_s, "spm") != 0 && strcmp(kind_s, "bpe") != 0)) {
        fprintf(stderr, "pd-tokenize: --mkvocab RANKS spm|bpe N PRE OUT\n");
        return 2;
    }
    if (pd_vocab_build(ranks, kind, (uint32_t)n, &v, &err) != 0) {
        fprintf(stderr, "pd-tokenize: %s\n", err.msg);
        return 1;
    }
    pd_gguf_writer_t *w = pd_gguf_writer_new(3);
    int rc = w ? 0 : -1;
    if (rc == 0) {
        rc |= pd_gguf_writer_add_str(w, "general.architecture", "llama");
        rc |= pd_gguf_writer_add_str(w, "general.name", "pd-tokenize vocab");
        rc |= pd_gguf_writer_add_u32(w, "llama.context_length", 256);
        rc |= pd_gguf_writer_add_u32(w, "llama.embedding_length", 64);
        rc |= pd_gguf_writer_add_u32(w, "llama.block_count", 1);
        rc |= pd_gguf_writer_add_u32(w, "llama.feed_forward_length", 128);
        rc |= pd_gguf_writer_add_u32(w, "llama.attention.head_count", 4);
        rc |= pd_gguf_writer_add_u32(w, "llama.attention.head_count_kv", 4);
        rc |= pd_gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
        rc |= pd_gguf_writer_add_u32(w, "llama.vocab_size", (uint32_t)n);
        if (rc == 0)
            rc = pd_vocab_write_gguf(&v, strcmp(pre, "none") == 0 ? "" : pre, w, &err);
        if (rc == 0)
            rc = pd_gguf_writer_write(w, out, &err);
    }
    if (rc != 0)
        fprintf(stderr, "pd-tokenize: cannot write %s: %s\n", out, err.msg);
    pd_gguf_writer_free(w);
    pd_vocab_free(&v);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *hex = NULL;
    bool special = true, pieces = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-m") == 0 && i + 1 < argc) {
            model = argv[++i];
        } else if (strcmp(argv[i], "--hex") == 0 && i + 1 < argc) {
            hex = argv[++i];
        } else if (strcmp(argv[i], "--no-special") == 0) {
            special = false;
        } else if (strcmp(argv[i], "--pieces") == 0) {
            pieces = true;
        } else if (strcmp(argv[i], "--mkvocab") == 0 && i + 5 < argc + 0 && argc - i == 6) {
            return mkvocab(argv + i + 1);
        } else {
            fprintf(stderr, "usage: pd-tokenize -m FILE [--no-special] [--hex HEX | --pieces]\n"
                            "       pd-tokenize --mkvocab RANKS spm|bpe N PRE OUT\n");
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "pd-tokenize: -m FILE is required\n");
        return 2;
    }
    pd_err_t err = {0};
    pd_gguf_t *g = pd_gguf_open(model, &err);
    if (!g) {
        fprintf(stderr, "pd-tokenize: %s: %s\n", model, err.msg);
        return 1;
    }
    pd_tok_t *t = pd_tok_load(g, &err);
    pd_gguf_free(g);
    if (!t) {
        fprintf(stderr, "pd-tokenize: %s: %s\n", model, err.msg);
        return 1;
    }
    int rc = 0;
    if (pieces) {
        char buf[1024];
        for (uint32_t id = 0; id < pd_tok_n_vocab(t); id++) {
            int n = pd_tok_piece(t, (int32_t)id, buf, sizeof buf);
            for (int k = 0; k < n && k < (int)sizeof buf; k++)
                printf("%02x", (unsigned char)buf[k]);
            printf("\n");
        }
    } else if (hex) {
        rc = encode_line(t, hex, strlen(hex), special);
    } else {
        char *line = NULL;
        size_t cap = 0;
        ssize_t got;
        while ((got = getline(&line, &cap, stdin)) >= 0) {
            size_t n = (size_t)got;
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                n--;
            encode_line(t, line, n, special);
            fflush(stdout);
        }
        free(line);
    }
    pd_tok_free(t);
    return rc;
}
