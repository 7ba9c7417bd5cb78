/* model_hparams.c -- each architecture's hyperparameters, read from the
 * GGUF metadata with llama.cpp's defaults (src/llama-model.cpp and
 * src/models/<arch>.cpp of the llama.cpp the referee bundles). Keys a file
 * may hold beyond these are checked by model_check.c. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/model_check.h"
#include "engine/model_internal.h"

static const struct {
    const char *name;
    pd_arch_t arch;
} ARCHS[] = {
    {"llama", PD_ARCH_LLAMA},   {"qwen2", PD_ARCH_QWEN2},   {"qwen3", PD_ARCH_QWEN3},
    {"gemma2", PD_ARCH_GEMMA2}, {"gemma3", PD_ARCH_GEMMA3}, {"phi3", PD_ARCH_PHI3},
};

/* gemma2's default window (llama.cpp: "default value of gemma 2") */
#define GEMMA2_SWA_DEFAULT 4096
/* llama.cpp's default rope base of sliding-window layers (llama-hparams.h) */
#define ROPE_BASE_SWA_DEFAULT 10000.0f

static bool has_key(const pd_gguf_t *g, const char *arch, const char *suffix, char *key, size_t n)
{
    snprintf(key, n, "%s.%s", arch, suffix);
    return pd_gguf_find_key(g, key) >= 0;
}

static int get_u32(const pd_gguf_t *g, const char *arch, const char *suffix, uint32_t *out,
                   bool required, uint32_t dflt, pd_err_t *err)
{
    char key[128];
    if (!has_key(g, arch, suffix, key, sizeof key)) {
        if (required)
            return pd_err_set(err, PD_EFORMAT, "model: missing key '%s'", key);
        *out = dflt;
        return 0;
    }
    return pd_gguf_get_u32(g, key, out, err);
}

static int get_f32(const pd_gguf_t *g, const char *arch, const char *suffix, float *out,
                   float dflt, pd_err_t *err)
{
    char key[128];
    if (!has_key(g, arch, suffix, key, sizeof key)) {
        *out = dflt;
        return 0;
    }
    return pd_gguf_get_f32(g, key, out, err);
}

static bool str_is(pd_gguf_str_t s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

/* rope.scaling.type and its factor. "longrope" (phi3) changes nothing here:
 * its factors are tensors, its attention factor a key. */
static int read_rope_scaling(const pd_gguf_t *g, pd_model_config_t *c, const char *ar,
                             pd_err_t *err)
{
    char key[128];
    c->rope_scale = 1.0f;
    pd_gguf_str_t st = {0};
    if (has_key(g, ar, "rope.scaling.type", key, sizeof key)) {
        if (pd_gguf_get_str(g, key, &st, err) != 0)
            return PD_EFORMAT;
        bool longrope = c->arch == PD_ARCH_PHI3 && str_is(st, "longrope");
        char shown[PD_MODEL_SHOW_BUF];
        if (!str_is(st, "none") && !str_is(st, "linear") && !longrope && st.len > 0)
            return pd_err_set(err, PD_EUNSUPPORTED, "model: rope scaling '%s' not supported "
                              "(supported: none, linear%s)", pd_model_show(st, shown),
                              c->arch == PD_ARCH_PHI3 ? ", longrope" : "");
        if (str_is(st, "none"))
            return 0;
    }
    /* llama.cpp reads the factor whatever the type but "none", with the
     * older rope.scale_linear as fallback */
    float f = 0.0f;
    if (has_key(g, ar, "rope.scaling.factor", key, sizeof key)) {
        if (pd_gguf_get_f32(g, key, &f, err) != 0)
            return PD_EFORMAT;
    } else if (get_f32(g, ar, "rope.scale_linear", &f, 0.0f, err) != 0) {
        return PD_EFORMAT;
    }
    c->rope_scale = f == 0.0f ? 1.0f : f;
    if (!(c->rope_scale > 0.0f) || !isfinite(c->rope_scale))
        return pd_err_set(err, PD_EFORMAT, "model: rope scaling factor %g must be > 0", c->rope_scale);
    return 0;
}

/* The keys every architecture reads. */
static int read_common(const pd_gguf_t *g, pd_model_config_t *c, const char *ar, pd_err_t *err)
{
    int rc = 0;
    rc = rc ? rc : get_u32(g, ar, "embedding_length", &c->dim, true, 0, err);
    rc = rc ? rc : get_u32(g, ar, "block_count", &c->n_layers, true, 0, err);
    rc = rc ? rc : get_u32(g, ar, "feed_forward_length", &c->ffn_dim, true, 0, err);
    rc = rc ? rc : get_u32(g, ar, "attention.head_count", &c->n_heads, true, 0, err);
    rc = rc ? rc : get_u32(g, ar, "attention.head_count_kv", &c->n_kv_heads, false,
                           c->n_heads, err);
    rc = rc ? rc : get_u32(g, ar, "context_length", &c->ctx_len, true, 0, err);
    rc = rc ? rc : get_f32(g, ar, "rope.freq_base", &c->rope_base, 10000.0f, err);
    rc = rc ? rc : get_f32(g, ar, "attention.layer_norm_rms_epsilon", &c->norm_eps, 1e-5f, err);
    rc = rc ? rc : read_rope_scaling(g, c, ar, err);
    if (rc != 0)
        return rc;
    if (!(c->rope_base > 0.0f) || !isfinite(c->rope_base))
        return pd_err_set(err, PD_EFORMAT, "model: rope.freq_base %g must be > 0", c->rope_base);
    if (!(c->norm_eps > 0.0f) || !isfinite(c->norm_eps))
        return pd_err_set(err, PD_EFORMAT, "model: rms epsilon %g must be > 0", c->norm_eps);
    if (c->dim == 0 || c->dim > PD_MODEL_MAX_DIM || c->n_layers == 0 ||
        c->n_layers > PD_MODEL_MAX_LAYERS || c->n_heads == 0 || c->n_kv_heads == 0 ||
        c->n_heads > PD_MODEL_MAX_DIM || c->ffn_dim == 0 || c->ffn_dim > 4 * PD_MODEL_MAX_DIM ||
        c->ctx_len == 0)
        return pd_err_set(err, PD_EFORMAT, "model: bad shape dim=%u layers=%u heads=%u "
                          "kv_heads=%u ffn=%u ctx=%u", c->dim, c->n_layers, c->n_heads,
                          c->n_kv_heads, c->ffn_dim, c->ctx_len);
    if (c->n_heads % c->n_kv_heads != 0)
        return pd_err_set(err, PD_EFORMAT, "model: heads %u must divide by kv_heads %u",
                          c->n_heads, c->n_kv_heads);
    /* head size: attention.key_length (Gemma, Qwen3, Mistral Nemo), else
     * dim / heads; values the same size (the engine's KV layout) */
    uint32_t def = c->dim % c->n_heads == 0 ? c->dim / c->n_heads : 0, vlen = 0;
    if (get_u32(g, ar, "attention.key_length", &c->head_dim, false, def, err) != 0 ||
        get_u32(g, ar, "attention.value_length", &vlen, false, c->head_dim, err) != 0)
        return PD_EFORMAT;
    if (c->head_dim == 0 || c->head_dim % 2 != 0 || c->head_dim > PD_MODEL_MAX_DIM ||
        (uint64_t)c->head_dim * c->n_heads > 4 * (uint64_t)PD_MODEL_MAX_DIM)
        return pd_err_set(err, PD_EFORMAT, "model: head size %u (dim %u, heads %u) must be even "
                          "and nonzero; set attention.key_length when dim does not divide by "
                          "heads", c->head_dim, c->dim, c->n_heads);
    if (vlen != c->head_dim)
        return pd_err_set(err, PD_EUNSUPPORTED, "model: attention.value_length %u differs from "
                          "key_length %u, which the engine does not implement", vlen, c->head_dim);
    uint32_t rope_dims = c->head_dim;
    if (get_u32(g, ar, "rope.dimension_count", &rope_dims, false, c->head_dim, err) != 0)
        return PD_EFORMAT;
    if (rope_dims != c->head_dim)
        return pd_err_set(err, PD_EUNSUPPORTED, "model: partial rope (%u of %u dims) not supported",
                          rope_dims, c->head_dim);
    c->rope_base_swa = c->rope_base;
    c->rope_scale_swa = c->rope_scale;
    c->rope_mscale = 1.0f;
    c->rope_ctx_orig = c->ctx_len;
    c->embd_scale = 1.0f;
    c->ffn_act = PD_FFN_SWIGLU;
    return 0;
}

/* Gemma's query_pre_attn_scalar: llama.cpp takes 1/sqrt(dim / heads) for
 * the 27B models (recognised by their layer count) and 1/sqrt(head_dim)
 * for the others. */
static float gemma_q_scale(const pd_model_config_t *c, uint32_t n_layers_27b)
{
    return c->n_layers == n_layers_27b ? 1.0f / sqrtf((float)(c->dim / c->n_heads))
                                       : 1.0f / sqrtf((float)c->head_dim);
}

static int read_gemma(const pd_gguf_t *g, pd_model_config_t *c, const char *ar, pd_err_t *err)
{
    c->rope_neox = true;
    c->embd_scale = sqrtf((float)c->dim);
    c->ffn_act = PD_FFN_GEGLU;
    c->has_post_norms = true;
    int rc = 0;
    if (c->arch == PD_ARCH_GEMMA2) {
        c->q_scale = gemma_q_scale(c, 46);
        rc = rc ? rc : get_u32(g, ar, "attention.sliding_window", &c->swa_window, false,
                               GEMMA2_SWA_DEFAULT, err);
        rc = rc ? rc : get_f32(g, ar, "attn_logit_softcapping", &c->attn_softcap, 50.0f, err);
        rc = rc ? rc : get_f32(g, ar, "final_logit_softcapping", &c->final_softcap, 30.0f, err);
        rc = rc ? rc : get_f32(g, ar, "rope.freq_base_swa", &c->rope_base_swa, c->rope_base, err);
        if (rc == 0 && c->swa_window == 0)
            return pd_err_set(err, PD_EFORMAT, "model: '%s.attention.sliding_window' is 0 (gemma2 "
                              "slides every other layer; llama.cpp would mask everything)", ar);
    } else {
        c->q_scale = gemma_q_scale(c, 62);
        c->has_qk_norm = true;
        /* gemma3: no window key or 0 means every layer is global */
        rc = rc ? rc : get_u32(g, ar, "attention.sliding_window", &c->swa_window, false, 0, err);
        rc = rc ? rc : get_f32(g, ar, "final_logit_softcapping", &c->final_softcap, 0.0f, err);
        rc = rc ? rc : get_f32(g, ar, "rope.freq_base_swa", &c->rope_base_swa,
                               ROPE_BASE_SWA_DEFAULT, err);
        c->rope_scale_swa = 1.0f; /* local layers are never scaled */
    }
    if (rc != 0)
        return rc;
    if (!(c->rope_base_swa > 0.0f) || !isfinite(c->rope_base_swa))
        return pd_err_set(err, PD_EFORMAT, "model: rope.freq_base_swa %g must be > 0",
                          c->rope_base_swa);
    if (!(c->attn_softcap >= 0.0f) || !isfinite(c->attn_softcap) ||
        !(c->final_softcap >= 0.0f) || !isfinite(c->final_softcap))
        return pd_err_set(err, PD_EFORMAT, "model: soft-capping %g / %g must be finite and >= 0",
                          c->attn_softcap, c->final_softcap);
    return 0;
}

/* phi3: LongRoPE's attention factor and original context (its factors are
 * tensors). llama.cpp disables phi3's sliding window (the key is read and
 * ignored: "Phi SWA is currently disabled"), and so does the engine. */
static int read_phi3(const pd_gguf_t *g, pd_model_config_t *c, const char *ar, pd_err_t *err)
{
    c->rope_neox = true;
    c->q_scale = 1.0f / sqrtf((float)c->head_dim);
    if (get_f32(g, ar, "rope.scaling.attn_factor", &c->rope_mscale, 1.0f, err) != 0 ||
        get_u32(g, ar, "rope.scaling.original_context_length", &c->rope_ctx_orig, false,
                c->ctx_len, err) != 0)
        return PD_EFORMAT;
    if (!(c->rope_mscale > 0.0f) || !isfinite(c->rope_mscale))
        return pd_err_set(err, PD_EFORMAT, "model: rope.scaling.attn_factor %g must be > 0",
                          c->rope_mscale);
    if (c->head_dim * c->n_heads != c->dim)
        return pd_err_set(err, PD_EFORMAT, "model: phi3 needs heads * head size = dim (%u * %u "
                          "!= %u)", c->n_heads, c->head_dim, c->dim);
    return 0;
}

int pd_model_read_config(const pd_gguf_t *g, pd_model_config_t *c, char arch_name[16],
                         pd_err_t *err)
{
    pd_gguf_str_t a;
    if (pd_gguf_get_str(g, "general.architecture", &a, err) != 0)
        return PD_EFORMAT;
    size_t i = 0;
    while (i < sizeof ARCHS / sizeof ARCHS[0] && !str_is(a, ARCHS[i].name))
        i++;
    if (i == sizeof ARCHS / sizeof ARCHS[0]) {
        char shown[PD_MODEL_SHOW_BUF];
        return pd_err_set(err, PD_EUNSUPPORTED, "model: unsupported architecture '%s' "
                          "(supported: " PD_MODEL_ARCH_NAMES ")", pd_model_show(a, shown));
    }
    c->arch = ARCHS[i].arch;
    snprintf(arch_name, 16, "%s", ARCHS[i].name);
    int rc = read_common(g, c, arch_name, err);
    if (rc != 0)
        return rc;
    switch (c->arch) {
    case PD_ARCH_LLAMA:
        return 0;
    case PD_ARCH_QWEN2:
        c->rope_neox = c->has_qkv_bias = true;
        return 0;
    case PD_ARCH_QWEN3:
        c->rope_neox = c->has_qk_norm = true;
        return 0;
    case PD_ARCH_GEMMA2: case PD_ARCH_GEMMA3:
        return read_gemma(g, c, arch_name, err);
    case PD_ARCH_PHI3:
        return read_phi3(g, c, arch_name, err);
    }
    return pd_err_set(err, PD_EUNSUPPORTED, "model: architecture %d", (int)c->arch);
}

int pd_model_read_swa_pattern(const pd_gguf_t *g, const pd_model_config_t *c,
                              const char *arch_name, bool *is_swa, pd_err_t *err)
{
    const uint32_t n = c->n_layers;
    memset(is_swa, 0, n * sizeof *is_swa);
    if (c->swa_window == 0)
        return 0;
    char key[128];
    uint32_t period = c->arch == PD_ARCH_GEMMA2 ? 2 : 6;
    int64_t k = (snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", arch_name),
                 pd_gguf_find_key(g, key));
    if (k >= 0 && pd_gguf_kv_type(g, k) == PD_GGUF_TYPE_ARRAY) {
        pd_gguf_type_t et;
        uint64_t len = 0;
        if (pd_gguf_get_arr(g, key, &et, &len, err) != 0)
            return PD_EFORMAT;
        const uint8_t *d = pd_gguf_arr_data(g, key);
        size_t es = et == PD_GGUF_TYPE_BOOL ? 1 : 4;
        if (d == NULL || len != n ||
            (et != PD_GGUF_TYPE_BOOL && et != PD_GGUF_TYPE_UINT32 && et != PD_GGUF_TYPE_INT32))
            return pd_err_set(err, PD_EFORMAT, "model: '%s' must be %u bools or 32-bit integers "
                              "(one per layer), has %llu of %s", key, n, (unsigned long long)len,
                              pd_gguf_type_name(et));
        for (uint32_t l = 0; l < n; l++) {
            uint32_t v = 0;
            memcpy(&v, d + (size_t)l * es, es);
            is_swa[l] = v != 0;
        }
        return 0;
    }
    if (k >= 0 && pd_gguf_get_u32(g, key, &period, err) != 0)
        return PD_EFORMAT;
    for (uint32_t l = 0; l < n; l++)
        is_swa[l] = period == 0 || l % period < period - 1;
    return 0;
}
