/* chat_template.c -- see chat_template.h. Families and their renderings
 * follow llama.cpp's src/llama-chat.cpp. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "base/grow.h"

static const char *const g_names[] = { "none", "chatml", "llama2", "llama3", "mistral", "zephyr",
                                       "gemma", "phi3" };
#define N_KINDS (sizeof g_names / sizeof g_names[0])

const char *pd_chat_name(pd_chat_kind_t k)
{
    return (size_t)k < N_KINDS ? g_names[k] : "none";
}

int pd_chat_from_name(const char *name, pd_chat_kind_t *out, pd_err_t *err)
{
    for (size_t i = 1; i < N_KINDS; i++)
        if (strcmp(name, g_names[i]) == 0) {
            *out = (pd_chat_kind_t)i;
            return 0;
        }
    return pd_err_set(err, PD_EINVAL,
                      "chat template '%.64s': expected chatml, llama2, llama3, mistral, zephyr, "
                      "gemma or phi3",
                      name);
}

int pd_chat_detect(const char *tmpl, pd_chat_kind_t *out, pd_err_t *err)
{
    if (strstr(tmpl, "<|im_start|>"))
        *out = PD_CHAT_CHATML;
    else if (strstr(tmpl, "<|start_header_id|>") && strstr(tmpl, "<|eot_id|>"))
        *out = PD_CHAT_LLAMA3;
    else if (strstr(tmpl, "<|assistant|>") && strstr(tmpl, "<|end|>")) /* before zephyr's */
        *out = PD_CHAT_PHI3;
    else if (strstr(tmpl, "<|user|>"))
        *out = PD_CHAT_ZEPHYR;
    else if (strstr(tmpl, "<start_of_turn>"))
        *out = PD_CHAT_GEMMA;
    else if (strstr(tmpl, "[INST]") && strstr(tmpl, "<<SYS>>"))
        *out = PD_CHAT_LLAMA2;
    else if (strstr(tmpl, "[INST]"))
        *out = PD_CHAT_MISTRAL;
    else
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "tokenizer.chat_template: not a known family (chatml, llama2, llama3, "
                          "mistral, zephyr, gemma, phi3): \"%.80s...\"; set http.chat_template",
                          tmpl);
    return 0;
}

/* ====== Rendering ====== */

typedef struct {
    char *p;
    size_t n, cap;
    bool failed;
} str_t;

static void put(str_t *s, const char *text)
{
    size_t k = strlen(text);
    if (s->failed)
        return;
    if (k >= SIZE_MAX - s->n || pd_grow((void **)&s->p, &s->cap, s->n + k + 1, 1, 256) != 0) {
        s->failed = true;
        return;
    }
    memcpy(s->p + s->n, text, k + 1);
    s->n += k;
}

/* A message's content, without leading and trailing whitespace when trim
 * (llama.cpp's trim: space, tab, newline, carriage return). */
static void put_content(str_t *s, const char *c, bool trim)
{
    if (!trim) {
        put(s, c);
        return;
    }
    while (*c == ' ' || *c == '\n' || *c == '\t' || *c == '\r')
        c++;
    size_t k = strlen(c);
    while (k > 0 && (c[k - 1] == ' ' || c[k - 1] == '\n' || c[k - 1] == '\t' || c[k - 1] == '\r'))
        k--;
    char *t = strndup(c, k);
    if (t == NULL) {
        s->failed = true;
        return;
    }
    put(s, t);
    free(t);
}

/* Llama 2 and Mistral: [INST] turns, as llama.cpp renders them. Llama 2
 * (llama.cpp's LLAMA_2_SYS_STRIP, the official template) wraps the system
 * message in <<SYS>>, strips every message and opens each later turn with
 * <s>; Mistral (llama.cpp's LLAMA_2) puts the system message in the first
 * turn followed by a newline and keeps messages as they are. */
static void render_inst(str_t *s, const pd_chat_msg_t *m, size_t n, bool llama2)
{
    bool inside = true; /* the first [INST] follows BOS, added by the tokenizer */
    put(s, "[INST] ");
    for (size_t i = 0; i < n; i++) {
        if (!inside) {
            inside = true;
            put(s, llama2 ? "<s>[INST] " : "[INST] ");
        }
        if (strcmp(m[i].role, "system") == 0) {
            put(s, llama2 ? "<<SYS>>\n" : "");
            put_content(s, m[i].content, llama2);
            put(s, llama2 ? "\n<</SYS>>\n\n" : "\n");
        } else if (strcmp(m[i].role, "user") == 0) {
            put_content(s, m[i].content, llama2);
            put(s, " [/INST]");
        } else {
            put_content(s, m[i].content, llama2);
            put(s, "</s>");
            inside = false;
        }
    }
}

/* Gemma (llama.cpp's LLM_CHAT_TEMPLATE_GEMMA): no system turn, the system
 * message goes before the first user message; "assistant" is "model";
 * every message stripped. */
static void render_gemma(str_t *s, const pd_chat_msg_t *m, size_t n)
{
    const char *sys = NULL;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(m[i].role, "system") == 0) {
            sys = m[i].content;
            continue;
        }
        bool model = strcmp(m[i].role, "assistant") == 0;
        put(s, "<start_of_turn>");
        put(s, model ? "model" : m[i].role);
        put(s, "\n");
        if (sys != NULL && !model) {
            put_content(s, sys, true);
            put(s, "\n\n");
            sys = NULL;
        }
        put_content(s, m[i].content, true);
        put(s, "<end_of_turn>\n");
    }
    put(s, "<start_of_turn>model\n");
}

int pd_chat_render(pd_chat_kind_t k, const pd_chat_msg_t *m, size_t n, char **out, pd_err_t *err)
{
    *out = NULL;
    if (k == PD_CHAT_NONE)
        return pd_err_set(err, PD_EINVAL, "model has no chat template; set http.chat_template");
    if (n == 0)
        return pd_err_set(err, PD_EINVAL, "messages: empty");
    for (size_t i = 0; i < n; i++) {
        const char *r = m[i].role;
        if (strcmp(r, "system") != 0 && strcmp(r, "user") != 0 && strcmp(r, "assistant") != 0)
            return pd_err_set(err, PD_EINVAL,
                              "messages[%zu].role: '%.32s' (expected system, user or assistant)",
                              i, r);
        if (strcmp(r, "system") == 0 && i > 0)
            return pd_err_set(err, PD_EINVAL, "messages[%zu]: a system message must come first",
                              i);
    }
    str_t s = { 0 };
    put(&s, "");
    switch (k) {
    case PD_CHAT_CHATML:
        for (size_t i = 0; i < n; i++) {
            put(&s, "<|im_start|>");
            put(&s, m[i].role);
            put(&s, "\n");
            put(&s, m[i].content);
            put(&s, "<|im_end|>\n");
        }
        put(&s, "<|im_start|>assistant\n");
        break;
    case PD_CHAT_LLAMA3:
        for (size_t i = 0; i < n; i++) {
            put(&s, "<|start_header_id|>");
            put(&s, m[i].role);
            put(&s, "<|end_header_id|>\n\n");
            put_content(&s, m[i].content, true);
            put(&s, "<|eot_id|>");
        }
        put(&s, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case PD_CHAT_ZEPHYR:
        for (size_t i = 0; i < n; i++) {
            put(&s, "<|");
            put(&s, m[i].role);
            put(&s, "|>\n");
            put(&s, m[i].content);
            put(&s, "</s>\n");
        }
        put(&s, "<|assistant|>\n");
        break;
    case PD_CHAT_PHI3:
        for (size_t i = 0; i < n; i++) {
            put(&s, "<|");
            put(&s, m[i].role);
            put(&s, "|>\n");
            put(&s, m[i].content);
            put(&s, "<|end|>\n");
        }
        put(&s, "<|assistant|>\n");
        break;
    case PD_CHAT_GEMMA: render_gemma(&s, m, n); break;
    case PD_CHAT_LLAMA2: render_inst(&s, m, n, true); break;
    case PD_CHAT_MISTRAL: render_inst(&s, m, n, false); break;
    default: break;
    }
    if (s.failed) {
        free(s.p);
        return pd_err_set(err, PD_ENOMEM, "chat prompt");
    }
    *out = s.p;
    return 0;
}

/* ====== Tokenizing ====== */

static const char *const g_markers[N_KINDS][PD_CHAT_MAX_MARKERS] = {
    [PD_CHAT_CHATML] = { "<|im_start|>", "<|im_end|>" },
    [PD_CHAT_LLAMA3] = { "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>" },
    [PD_CHAT_LLAMA2] = { "<s>", "</s>", "[INST]", "[/INST]" },
    [PD_CHAT_MISTRAL] = { "<s>", "</s>", "[INST]", "[/INST]" },
    [PD_CHAT_ZEPHYR] = { "</s>", "<|system|>", "<|user|>", "<|assistant|>" },
    [PD_CHAT_GEMMA] = { "<start_of_turn>", "<end_of_turn>" },
    [PD_CHAT_PHI3] = { "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>" },
};

void pd_chat_init(pd_chat_t *c, pd_chat_kind_t k, const pd_tok_t *t)
{
    memset(c, 0, sizeof *c);
    c->kind = k;
    c->tok = t;
    if ((size_t)k >= N_KINDS)
        return;
    for (size_t i = 0; i < PD_CHAT_MAX_MARKERS && g_markers[k][i]; i++) {
        c->marker[i] = g_markers[k][i];
        c->id[i] = -1;
        c->n_markers = i + 1;
    }
    uint32_t nv = pd_tok_n_vocab(t);
    for (uint32_t id = 0; id < nv; id++) {
        size_t len = 0;
        const char *txt = pd_tok_text(t, (int32_t)id, &len);
        if (txt == NULL)
            continue;
        for (size_t i = 0; i < c->n_markers; i++)
            if (c->id[i] < 0 && len == strlen(c->marker[i]) && memcmp(txt, c->marker[i], len) == 0)
                c->id[i] = (int32_t)id;
    }
}

/* Encodes text[0..len) (no specials) after out[*n]. */
static int encode_plain(const pd_tok_t *t, const char *text, size_t len, int32_t *out, size_t cap,
                        size_t *n, pd_err_t *err)
{
    if (len == 0)
        return 0;
    size_t got = 0;
    int rc = pd_tok_encode(t, text, len, false, out + *n, cap - *n, &got, err);
    if (rc)
        return rc;
    *n += got;
    return 0;
}

int pd_chat_tokenize(const pd_chat_t *c, const char *text, int32_t *out, size_t cap,
                     size_t *n_out, pd_err_t *err)
{
    size_t n = 0;
    *n_out = 0;
    if (pd_tok_add_bos(c->tok) && pd_tok_bos(c->tok) >= 0) {
        if (cap == 0)
            return pd_err_set(err, PD_ERANGE, "prompt: too many tokens");
        out[n++] = pd_tok_bos(c->tok);
    }
    const char *p = text, *start = text;
    while (*p) {
        size_t hit = SIZE_MAX, hit_len = 0;
        for (size_t i = 0; i < c->n_markers; i++) {
            size_t ml = strlen(c->marker[i]);
            if (c->id[i] >= 0 && strncmp(p, c->marker[i], ml) == 0 && ml > hit_len) {
                hit = i;
                hit_len = ml;
            }
        }
        if (hit == SIZE_MAX) {
            p++;
            continue;
        }
        int rc = encode_plain(c->tok, start, (size_t)(p - start), out, cap, &n, err);
        if (rc)
            return rc;
        if (n >= cap)
            return pd_err_set(err, PD_ERANGE, "prompt: too many tokens");
        out[n++] = c->id[hit];
        p += hit_len;
        start = p;
    }
    int rc = encode_plain(c->tok, start, (size_t)(p - start), out, cap, &n, err);
    if (rc)
        return rc;
    *n_out = n;
    return 0;
}
