/* model_check.c -- refusing what the engine would silently ignore. See
 * model_check.h.
 *
 * The key table lists, for the architectures the engine runs, every key
 * under "<arch>." that it implements or that is known to change nothing,
 * and for which architectures; anything else under that prefix is refused.
 * The hint tables only make messages clearer: a key or tensor missing from
 * them is refused all the same.
 */
#include "engine/model_check.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ====== Keys ====== */

typedef enum {
    KEY_READ,          /* read by the model loader (model_hparams.c) */
    KEY_INFO,          /* changes nothing the engine computes */
    KEY_VOCAB,         /* must equal the token_embd rows */
    KEY_ZERO,          /* only 0 is harmless (experts) */
} key_kind_t;

/* Architectures as bits of a mask (pd_arch_t numbering). */
#define A(arch) (1u << (arch))
#define A_ALL (A(PD_ARCH_LLAMA) | A(PD_ARCH_QWEN2) | A(PD_ARCH_QWEN3) | A(PD_ARCH_GEMMA2) | \
               A(PD_ARCH_GEMMA3) | A(PD_ARCH_PHI3))
#define A_GEMMA (A(PD_ARCH_GEMMA2) | A(PD_ARCH_GEMMA3))

/* A sliding window on an architecture llama.cpp runs without one: it
 * reads no such key for llama, qwen2 or qwen3 (Mistral 7B's GGUFs carry
 * none and run with full attention), so a file that asks for one gets
 * neither llama.cpp's full attention nor a window pdserve would be alone
 * in applying. */
#define NO_WINDOW "a sliding window (llama.cpp applies none to this architecture; Mistral's " \
                  "GGUFs carry no such key)"

static const struct {
    const char *suffix; /* after "<arch>." */
    key_kind_t kind;
    unsigned archs;     /* where the key is known (else refused like any other) */
    const char *hint;   /* KEY_ZERO: what a nonzero value asks for */
} ARCH_KEYS[] = {
    {"context_length", KEY_READ, A_ALL, NULL},
    {"embedding_length", KEY_READ, A_ALL, NULL},
    {"block_count", KEY_READ, A_ALL, NULL},
    {"feed_forward_length", KEY_READ, A_ALL, NULL},
    {"attention.head_count", KEY_READ, A_ALL, NULL},
    {"attention.head_count_kv", KEY_READ, A_ALL, NULL},
    {"attention.layer_norm_rms_epsilon", KEY_READ, A_ALL, NULL},
    {"attention.key_length", KEY_READ, A_ALL, NULL},
    {"attention.value_length", KEY_READ, A_ALL, NULL},
    {"rope.freq_base", KEY_READ, A_ALL, NULL},
    {"rope.dimension_count", KEY_READ, A_ALL, NULL},
    {"rope.scaling.type", KEY_READ, A_ALL, NULL},
    {"rope.scaling.factor", KEY_READ, A_ALL, NULL},
    {"rope.scale_linear", KEY_READ, A_ALL, NULL},
    /* used by YaRN (refused apart) and by phi3's choice of rope factors */
    {"rope.scaling.original_context_length", KEY_READ, A_ALL, NULL},
    {"rope.scaling.finetuned", KEY_INFO, A_ALL, NULL},
    {"vocab_size", KEY_VOCAB, A_ALL, NULL},
    {"expert_count", KEY_ZERO, A_ALL, "a mixture of experts"},
    {"expert_used_count", KEY_ZERO, A_ALL, "a mixture of experts"},
    {"attention.sliding_window", KEY_ZERO, A(PD_ARCH_LLAMA) | A(PD_ARCH_QWEN2) | A(PD_ARCH_QWEN3),
     NO_WINDOW},
    /* gemma: sliding windows, soft-capping, the local layers' rope base */
    {"attention.sliding_window", KEY_READ, A_GEMMA, NULL},
    {"attention.sliding_window_pattern", KEY_READ, A_GEMMA, NULL},
    {"rope.freq_base_swa", KEY_READ, A_GEMMA, NULL},
    {"final_logit_softcapping", KEY_READ, A_GEMMA, NULL},
    {"attn_logit_softcapping", KEY_READ, A(PD_ARCH_GEMMA2), NULL},
    /* phi3: LongRoPE's attention factor; its sliding window, which
     * llama.cpp reads and disables ("Phi SWA is currently disabled") */
    {"rope.scaling.attn_factor", KEY_READ, A(PD_ARCH_PHI3), NULL},
    {"attention.sliding_window", KEY_INFO, A(PD_ARCH_PHI3), NULL},
};

/* What some refused keys would have changed (suffix prefix -> meaning). */
static const struct {
    const char *prefix;
    const char *meaning;
} KEY_HINTS[] = {
    {"attention.sliding_window", "sliding-window attention (Mistral, Gemma 2/3)"},
    {"attn_logit_softcapping", "attention logit soft-capping (Gemma 2)"},
    {"final_logit_softcapping", "final logit soft-capping (Gemma 2)"},
    {"expert_", "a mixture of experts"},
    {"rope.scaling.yarn", "YaRN rope scaling"},
    {"rope.scaling.attn_factor", "YaRN rope scaling"},
    {"rope.scaling.", "a rope scaling the engine does not implement"},
    {"rope.dimension_sections", "multimodal rope sections"},
    {"attention.layer_norm_epsilon", "LayerNorm (the engine implements RMSNorm)"},
    {"attention.causal", "non-causal attention"},
    {"attention.scale", "a scaled attention"},
    {"attention.clamp_kqv", "clamped Q/K/V"},
    {"attention.q_lora_rank", "multi-head latent attention"},
    {"attention.kv_lora_rank", "multi-head latent attention"},
    {"logit_scale", "scaled logits"},
    {"embedding_scale", "scaled embeddings"},
    {"residual_scale", "scaled residuals"},
    {"pooling_type", "an embedding model's pooling"},
    {"use_parallel_residual", "parallel residual blocks"},
};

/* Namespaces that never change the computation. */
static const char *const FREE_NAMESPACES[] = {"general.", "tokenizer.", "quantize."};

#define SHOW_BUF PD_MODEL_SHOW_BUF

const char *pd_model_show(pd_gguf_str_t s, char out[PD_MODEL_SHOW_BUF])
{
    size_t n = s.len < PD_MODEL_SHOW_MAX ? (size_t)s.len : PD_MODEL_SHOW_MAX;
    for (size_t i = 0; i < n; i++)
        out[i] = (s.ptr[i] >= 0x20 && s.ptr[i] < 0x7f) ? s.ptr[i] : '?';
    if (s.len > PD_MODEL_SHOW_MAX) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

static bool has_prefix(const pd_gguf_str_t *k, const char *p)
{
    size_t n = strlen(p);
    return k->len >= n && memcmp(k->ptr, p, n) == 0;
}

static const char *key_hint(const char *suffix)
{
    for (size_t i = 0; i < sizeof KEY_HINTS / sizeof KEY_HINTS[0]; i++)
        if (strncmp(suffix, KEY_HINTS[i].prefix, strlen(KEY_HINTS[i].prefix)) == 0)
            return KEY_HINTS[i].meaning;
    return NULL;
}

/* The keys the engine implements under arch a, for messages: the shape,
 * rope and norm keys every architecture reads, then a's own. */
static void list_keys(pd_arch_t a, char *out, size_t n)
{
    size_t at = (size_t)snprintf(out, n, "the shape, rope and norm keys (context_length, "
                                 "embedding_length, ..., rope.freq_base, rope.scaling.type, ...)");
    for (size_t i = 0; i < sizeof ARCH_KEYS / sizeof ARCH_KEYS[0] && at < n; i++)
        if (ARCH_KEYS[i].kind == KEY_READ && ARCH_KEYS[i].archs != A_ALL &&
            (ARCH_KEYS[i].archs & A(a)))
            at += (size_t)snprintf(out + at, n - at, ", %s", ARCH_KEYS[i].suffix);
}

/* A key under "<arch>.": known and harmless, or refused. */
static int check_arch_key(const pd_gguf_t *g, pd_arch_t a, const char *arch, const char *key,
                          uint32_t vocab, pd_err_t *err)
{
    const char *suffix = key + strlen(arch) + 1;
    for (size_t i = 0; i < sizeof ARCH_KEYS / sizeof ARCH_KEYS[0]; i++) {
        if (strcmp(suffix, ARCH_KEYS[i].suffix) != 0 || !(ARCH_KEYS[i].archs & A(a)))
            continue;
        uint64_t v = 0;
        switch (ARCH_KEYS[i].kind) {
        case KEY_READ: case KEY_INFO:
            return 0;
        case KEY_VOCAB: case KEY_ZERO: {
            const uint64_t want = ARCH_KEYS[i].kind == KEY_VOCAB ? vocab : 0;
            if (pd_gguf_get_u64(g, key, &v, err) != 0)
                return PD_EFORMAT;
            if (v == want)
                return 0;
            const char *hint = ARCH_KEYS[i].kind == KEY_ZERO
                                   ? ARCH_KEYS[i].hint
                                   : "a vocabulary that does not match token_embd.weight";
            return pd_err_set(err, PD_EUNSUPPORTED, "model: key '%s' = %" PRIu64 " asks for %s, "
                              "which the engine does not run for %s (it runs with %" PRIu64 ")",
                              key, v, hint, arch, want);
        }
        }
    }
    char list[PD_ERR_MSG_MAX / 2];
    list_keys(a, list, sizeof list);
    const char *hint = key_hint(suffix);
    char shown[SHOW_BUF];
    pd_model_show((pd_gguf_str_t){key, strlen(key)}, shown);
    if (hint != NULL)
        return pd_err_set(err, PD_EUNSUPPORTED, "model: key '%s' asks for %s, which the engine "
                          "does not implement for %s (under '%s.' it reads %s)", shown, hint, arch,
                          arch, list);
    return pd_err_set(err, PD_EUNSUPPORTED, "model: key '%s' is not one the engine knows and may "
                      "change the computation (under '%s.' it reads %s)", shown, arch, list);
}

int pd_model_check_keys(const pd_gguf_t *g, pd_arch_t a, const char *arch, uint32_t vocab,
                        pd_err_t *err)
{
    char key[256], arch_ns[64];
    snprintf(arch_ns, sizeof arch_ns, "%s.", arch);
    for (int64_t i = 0; i < pd_gguf_n_kv(g); i++) {
        pd_gguf_str_t k = pd_gguf_key_name(g, i);
        bool is_free = false;
        for (size_t j = 0; j < sizeof FREE_NAMESPACES / sizeof FREE_NAMESPACES[0]; j++)
            is_free = is_free || has_prefix(&k, FREE_NAMESPACES[j]);
        if (is_free)
            continue;
        char shown[SHOW_BUF];
        if (k.len >= sizeof key || memchr(k.ptr, '\0', k.len) != NULL)
            return pd_err_set(err, PD_EUNSUPPORTED, "model: key '%s' is not one the engine "
                              "knows", pd_model_show(k, shown));
        memcpy(key, k.ptr, k.len);
        key[k.len] = '\0';
        if (has_prefix(&k, arch_ns)) {
            int rc = check_arch_key(g, a, arch, key, vocab, err);
            if (rc != 0)
                return rc;
            continue;
        }
        if (has_prefix(&k, "split.")) {
            uint64_t n = 1;
            if (strcmp(key, "split.count") == 0 && pd_gguf_get_u64(g, key, &n, NULL) == 0 &&
                n <= 1)
                continue;
            if (strcmp(key, "split.count") != 0)
                continue;
            return pd_err_set(err, PD_EUNSUPPORTED, "model: key 'split.count' = %" PRIu64 ": a "
                              "file split in parts is not supported (merge it with "
                              "llama-gguf-split --merge)", n);
        }
        return pd_err_set(err, PD_EUNSUPPORTED, "model: key '%s' is not one the engine knows "
                          "(it reads general.*, tokenizer.*, quantize.* and %s*; an adapter or "
                          "a projector file is not a model)", pd_model_show(k, shown), arch_ns);
    }
    return 0;
}

/* ====== Tensors ====== */

/* What some tensors the engine does not read are for (name suffix ->
 * meaning), checked in order. */
static const struct {
    const char *needle;
    const char *meaning;
} TENSOR_HINTS[] = {
    {"rope_freqs", "rope frequency factors (Llama 3.1+ rope scaling)"},
    {"attn_rot_embd", "a precomputed rotary table"},
    {"attn_q_norm", "per-head RMSNorm on Q (Qwen3, Gemma 3)"},
    {"attn_k_norm", "per-head RMSNorm on K (Qwen3, Gemma 3)"},
    {"attn_qkv", "a fused QKV projection (Phi-3)"},
    {"_exps", "a mixture of experts"},
    {"ffn_gate_inp", "a mixture of experts' router"},
    {"post_attention_norm", "a post-attention norm (Gemma 2/3)"},
    {"post_ffw_norm", "a post-feed-forward norm (Gemma 2/3)"},
    {"attn_post_norm", "a post-attention norm"},
    {"ffn_post_norm", "a post-feed-forward norm"},
    {"rope_factors", "LongRoPE frequency factors (Phi-3)"},
    {".bias", "a projection bias (only qwen2's attn_{q,k,v} have one)"},
};

int pd_model_check_tensors(const pd_gguf_t *g, const bool *used, const char *reads,
                           pd_err_t *err)
{
    for (int64_t i = 0; i < pd_gguf_n_tensors(g); i++) {
        if (used[i])
            continue;
        const char *name = pd_gguf_tensor(g, i)->name;
        const char *hint = NULL;
        for (size_t j = 0; j < sizeof TENSOR_HINTS / sizeof TENSOR_HINTS[0] && !hint; j++)
            if (strstr(name, TENSOR_HINTS[j].needle) != NULL)
                hint = TENSOR_HINTS[j].meaning;
        char shown[SHOW_BUF];
        pd_model_show((pd_gguf_str_t){name, strlen(name)}, shown);
        if (hint != NULL)
            return pd_err_set(err, PD_EUNSUPPORTED, "model: tensor '%s' holds %s, which the "
                              "engine does not implement for this architecture (it reads %s)",
                              shown, hint, reads);
        return pd_err_set(err, PD_EUNSUPPORTED, "model: tensor '%s' is not one the engine reads, "
                          "and ignoring it would compute something else (it reads %s)", shown,
                          reads);
    }
    return 0;
}
