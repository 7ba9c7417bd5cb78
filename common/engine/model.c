/* model.c -- hyperparameters and weight views from a GGUF file.
 *
 * Tensor names follow llama.cpp's convention:
 *   token_embd.weight (dim x vocab), output_norm.weight, output.weight (optional: tied)
 *   blk.N.attn_norm.weight, blk.N.attn_{q,k,v}.weight (+ .bias for qwen2),
 *   blk.N.attn_output.weight, blk.N.ffn_norm.weight,
 *   blk.N.ffn_{gate,up,down}.weight
 */
#include "engine/model.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/model_check.h"
#include "engine/quants_k.h"

#define PD_MODEL_MAX_LAYERS 512
#define PD_MODEL_MAX_DIM 65536
#define PD_MODEL_MAX_VOCAB (1u << 22)

/* ====== Hyperparameters ====== */

static int get_arch_u32(const pd_gguf_t *g, const char *arch, const char *suffix, uint32_t *out,
                        bool required, uint32_t dflt, pd_err_t *err)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (pd_gguf_find_key(g, key) < 0) {
        if (required)
            return pd_err_set(err, PD_EFORMAT, "model: missing key '%s'", key);
        *out = dflt;
        return 0;
    }
    return pd_gguf_get_u32(g, key, out, err);
}

static int get_arch_f32(const pd_gguf_t *g, const char *arch, const char *suffix, float *out,
                        float dflt, pd_err_t *err)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (pd_gguf_find_key(g, key) < 0) {
        *out = dflt;
        return 0;
    }
    return pd_gguf_get_f32(g, key, out, err);
}

static int read_config(const pd_gguf_t *g, pd_model_config_t *c, char *arch_name, pd_err_t *err)
{
    pd_gguf_str_t a;
    if (pd_gguf_get_str(g, "general.architecture", &a, err) != 0)
        return PD_EFORMAT;
    if (a.len == 5 && memcmp(a.ptr, "llama", 5) == 0) {
        c->arch = PD_ARCH_LLAMA;
    } else if (a.len == 5 && memcmp(a.ptr, "qwen2", 5) == 0) {
        c->arch = PD_ARCH_QWEN2;
    } else {
        char shown[PD_MODEL_SHOW_BUF];
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "model: unsupported architecture '%s' (supported: llama, qwen2)",
                          pd_model_show(a, shown));
    }
    memcpy(arch_name, a.ptr, a.len);
    arch_name[a.len] = '\0';
    const char *ar = arch_name;
    int rc = 0;
    rc = rc ? rc : get_arch_u32(g, ar, "embedding_length", &c->dim, true, 0, err);
    rc = rc ? rc : get_arch_u32(g, ar, "block_count", &c->n_layers, true, 0, err);
    rc = rc ? rc : get_arch_u32(g, ar, "feed_forward_length", &c->ffn_dim, true, 0, err);
    rc = rc ? rc : get_arch_u32(g, ar, "attention.head_count", &c->n_heads, true, 0, err);
    rc = rc ? rc : get_arch_u32(g, ar, "attention.head_count_kv", &c->n_kv_heads, false,
                                c->n_heads, err);
    rc = rc ? rc : get_arch_u32(g, ar, "context_length", &c->ctx_len, true, 0, err);
    rc = rc ? rc : get_arch_f32(g, ar, "rope.freq_base", &c->rope_base, 10000.0f, err);
    rc = rc ? rc : get_arch_f32(g, ar, "attention.layer_norm_rms_epsilon", &c->norm_eps, 1e-5f, err);
    if (rc != 0)
        return rc;
    c->rope_scale = 1.0f;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", ar);
    pd_gguf_str_t st = { 0 };
    if (pd_gguf_find_key(g, key) >= 0 && pd_gguf_get_str(g, key, &st, err) == 0 && st.len > 0) {
        if (st.len == 6 && memcmp(st.ptr, "linear", 6) == 0) {
            if (get_arch_f32(g, ar, "rope.scaling.factor", &c->rope_scale, 1.0f, err) != 0)
                return PD_EFORMAT;
        } else if (!(st.len == 4 && memcmp(st.ptr, "none", 4) == 0)) {
            char shown[PD_MODEL_SHOW_BUF];
            return pd_err_set(err, PD_EUNSUPPORTED, "model: rope scaling '%s' not supported "
                              "(supported: none, linear)", pd_model_show(st, shown));
        }
    } else {
        /* Older files: rope.scale_linear */
        if (get_arch_f32(g, ar, "rope.scale_linear", &c->rope_scale, 1.0f, err) != 0)
            return PD_EFORMAT;
    }
    if (!(c->rope_scale > 0.0f) || !isfinite(c->rope_scale))
        return pd_err_set(err, PD_EFORMAT, "model: rope scaling factor %g must be > 0", c->rope_scale);
    if (!(c->rope_base > 0.0f) || !isfinite(c->rope_base))
        return pd_err_set(err, PD_EFORMAT, "model: rope.freq_base %g must be > 0", c->rope_base);
    if (!(c->norm_eps > 0.0f) || !isfinite(c->norm_eps))
        return pd_err_set(err, PD_EFORMAT, "model: rms epsilon %g must be > 0", c->norm_eps);
    if (c->dim == 0 || c->dim > PD_MODEL_MAX_DIM || c->n_layers == 0 ||
        c->n_layers > PD_MODEL_MAX_LAYERS || c->n_heads == 0 || c->n_kv_heads == 0 ||
        c->ffn_dim == 0 || c->ffn_dim > 4 * PD_MODEL_MAX_DIM || c->ctx_len == 0)
        return pd_err_set(err, PD_EFORMAT, "model: bad shape dim=%u layers=%u heads=%u "
                          "kv_heads=%u ffn=%u ctx=%u", c->dim, c->n_layers, c->n_heads,
                          c->n_kv_heads, c->ffn_dim, c->ctx_len);
    if (c->dim % c->n_heads != 0 || c->n_heads % c->n_kv_heads != 0)
        return pd_err_set(err, PD_EFORMAT, "model: dim %u must divide by heads %u, and heads by "
                          "kv_heads %u", c->dim, c->n_heads, c->n_kv_heads);
    c->head_dim = c->dim / c->n_heads;
    uint32_t rope_dims = c->head_dim;
    if (get_arch_u32(g, ar, "rope.dimension_count", &rope_dims, false, c->head_dim, err) != 0)
        return PD_EFORMAT;
    if (rope_dims != c->head_dim || c->head_dim % 2 != 0)
        return pd_err_set(err, PD_EUNSUPPORTED, "model: partial rope (%u of %u dims) not supported",
                          rope_dims, c->head_dim);
    c->rope_neox = (c->arch == PD_ARCH_QWEN2);
    c->has_qkv_bias = (c->arch == PD_ARCH_QWEN2);
    return 0;
}

/* ====== Tensors ====== */

/* The file being loaded and which of its tensors the loader has read (a
 * tensor nobody read stops the load: model_check.h). */
typedef struct {
    const pd_gguf_t *g;
    bool *used; /* (n_tensors) */
} load_t;

static const pd_gguf_tensor_t *find_tensor(load_t *ld, const char *name)
{
    const pd_gguf_tensor_t *t = pd_gguf_find_tensor(ld->g, name);
    int64_t i = pd_gguf_tensor_index(ld->g, t);
    if (i >= 0)
        ld->used[i] = true;
    return t;
}

/* A quantized block whose fp16 scale is NaN or infinite makes its whole
 * block NaN/inf, and llama.cpp would run it (its --check-tensors refuses
 * it): refused here, at load. */
static int check_scales(const pd_gguf_tensor_t *t, const char *name, uint64_t row_bytes,
                        pd_err_t *err)
{
    const uint32_t bb = pd_ggml_block_bytes(t->type), be = pd_ggml_block_elems(t->type);
    uint16_t bits = 0;
    const char *field = "";
    int64_t bad = bb ? pd_quant_find_bad_scale(t->type, t->data, t->n_bytes / bb, &bits, &field)
                     : -1;
    if (bad < 0)
        return 0;
    const uint64_t per_row = row_bytes / bb;
    return pd_err_set(err, PD_EFORMAT, "model: tensor '%s' (%s) row %" PRIu64 " block %" PRIu64
                      " (elements %" PRIu64 "..) has a non-finite scale %s (fp16 0x%04x): the "
                      "file is corrupt", name, pd_ggml_type_name(t->type),
                      (uint64_t)bad / per_row, (uint64_t)bad % per_row,
                      (uint64_t)bad % per_row * be, field, bits);
}

/* Finds a 2-D weight (ne0 = n_in, ne1 = n_out) and checks its shape and type. */
static int get_mat(load_t *ld, const char *name, uint32_t n_in, uint32_t n_out,
                   pd_mat_t *out, bool required, pd_err_t *err)
{
    const pd_gguf_tensor_t *t = find_tensor(ld, name);
    if (t == NULL) {
        if (required)
            return pd_err_set(err, PD_EFORMAT, "model: missing tensor '%s'", name);
        memset(out, 0, sizeof *out);
        return 0;
    }
    if (t->n_dims != 2 || t->ne[0] != n_in || t->ne[1] != n_out)
        return pd_err_set(err, PD_EFORMAT, "model: tensor '%s' has shape [%" PRIu64 ", %" PRIu64
                          "] (n_dims %u), expected [%u, %u]", name, t->ne[0], t->ne[1],
                          t->n_dims, n_in, n_out);
    switch (t->type) {
    case PD_GGML_TYPE_F32: case PD_GGML_TYPE_F16: case PD_GGML_TYPE_BF16:
    case PD_GGML_TYPE_Q8_0: case PD_GGML_TYPE_Q4_0: case PD_GGML_TYPE_IQ4_NL:
    case PD_GGML_TYPE_Q2_K: case PD_GGML_TYPE_Q3_K: case PD_GGML_TYPE_Q4_K:
    case PD_GGML_TYPE_Q5_K: case PD_GGML_TYPE_Q6_K:
        break;
    default:
        return pd_err_set(err, PD_EUNSUPPORTED, "model: tensor '%s' has unsupported type %s",
                          name, pd_ggml_type_name(t->type));
    }
    out->data = t->data;
    out->type = t->type;
    out->n_in = n_in;
    out->n_out = n_out;
    out->row_bytes = pd_ggml_row_bytes(t->type, n_in);
    if (out->row_bytes == 0 || out->row_bytes * (uint64_t)n_out != t->n_bytes)
        return pd_err_set(err, PD_EFORMAT, "model: tensor '%s' byte size %" PRIu64
                          " does not match its shape", name, t->n_bytes);
    return check_scales(t, name, out->row_bytes, err);
}

/* Finds a 1-D vector of n elements and converts it to fp32 into dst. */
static int get_vec(load_t *ld, const char *name, uint32_t n, float *dst, bool required,
                   bool *found, pd_err_t *err)
{
    const pd_gguf_tensor_t *t = find_tensor(ld, name);
    if (found)
        *found = (t != NULL);
    if (t == NULL)
        return required ? pd_err_set(err, PD_EFORMAT, "model: missing tensor '%s'", name) : 0;
    if (t->n_dims != 1 || t->ne[0] != n)
        return pd_err_set(err, PD_EFORMAT, "model: tensor '%s' has %" PRIu64 " elements "
                          "(n_dims %u), expected a vector of %u", name, t->ne[0], t->n_dims, n);
    if (t->type != PD_GGML_TYPE_F32 && t->type != PD_GGML_TYPE_F16 && t->type != PD_GGML_TYPE_BF16)
        return pd_err_set(err, PD_EUNSUPPORTED, "model: vector '%s' must be f32/f16/bf16, is %s",
                          name, pd_ggml_type_name(t->type));
    pd_dequant_row(t->type, t->data, dst, n);
    for (uint32_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return pd_err_set(err, PD_EFORMAT, "model: tensor '%s' element %u is not finite",
                              name, i);
    return 0;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int load_layers(pd_model_t *m, load_t *ld, pd_err_t *err)
{
    const pd_model_config_t *c = &m->cfg;
    uint32_t q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    /* Owned fp32 vectors: per layer 2 norms (+3 biases), plus the output norm. */
    size_t per_layer = 2 * (size_t)c->dim + (c->has_qkv_bias ? q_dim + 2 * (size_t)kv_dim : 0);
    /* Those vectors come from the file (2 bytes per element at least): a
     * shape asking for more than the file holds is refused before the
     * allocation (a few header bytes must not cost gigabytes). */
    const size_t n_vec = per_layer * c->n_layers + c->dim;
    if (n_vec > pd_gguf_file_size(ld->g) / 2)
        return pd_err_set(err, PD_EFORMAT, "model: %u layers of dim %u need %zu norm and bias "
                          "elements, more than the file's %zu bytes hold", c->n_layers, c->dim,
                          n_vec, pd_gguf_file_size(ld->g));
    m->owned_f32 = malloc(sizeof(float) * n_vec);
    m->layers = calloc(c->n_layers, sizeof *m->layers);
    if (m->owned_f32 == NULL || m->layers == NULL)
        return pd_err_set(err, PD_ENOMEM, "model: out of memory for layer vectors");
    float *v = m->owned_f32;
    char name[96];
#define LNAME(fmt) (snprintf(name, sizeof name, "blk.%u." fmt, l), name)
    for (uint32_t l = 0; l < c->n_layers; l++) {
        pd_layer_t *L = &m->layers[l];
        int rc = 0;
        rc = rc ? rc : get_vec(ld, LNAME("attn_norm.weight"), c->dim, v, true, NULL, err);
        L->attn_norm = v; v += c->dim;
        rc = rc ? rc : get_vec(ld, LNAME("ffn_norm.weight"), c->dim, v, true, NULL, err);
        L->ffn_norm = v; v += c->dim;
        rc = rc ? rc : get_mat(ld, LNAME("attn_q.weight"), c->dim, q_dim, &L->wq, true, err);
        rc = rc ? rc : get_mat(ld, LNAME("attn_k.weight"), c->dim, kv_dim, &L->wk, true, err);
        rc = rc ? rc : get_mat(ld, LNAME("attn_v.weight"), c->dim, kv_dim, &L->wv, true, err);
        rc = rc ? rc : get_mat(ld, LNAME("attn_output.weight"), q_dim, c->dim, &L->wo, true, err);
        rc = rc ? rc : get_mat(ld, LNAME("ffn_gate.weight"), c->dim, c->ffn_dim, &L->w_gate, true, err);
        rc = rc ? rc : get_mat(ld, LNAME("ffn_up.weight"), c->dim, c->ffn_dim, &L->w_up, true, err);
        rc = rc ? rc : get_mat(ld, LNAME("ffn_down.weight"), c->ffn_dim, c->dim, &L->w_down, true, err);
        if (rc == 0 && c->has_qkv_bias) {
            rc = rc ? rc : get_vec(ld, LNAME("attn_q.bias"), q_dim, v, true, NULL, err);
            L->bq = v; v += q_dim;
            rc = rc ? rc : get_vec(ld, LNAME("attn_k.bias"), kv_dim, v, true, NULL, err);
            L->bk = v; v += kv_dim;
            rc = rc ? rc : get_vec(ld, LNAME("attn_v.bias"), kv_dim, v, true, NULL, err);
            L->bv = v; v += kv_dim;
        }
        if (rc != 0)
            return rc;
        const pd_mat_t *mats[] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down };
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
            m->weight_bytes += mats[i]->row_bytes * mats[i]->n_out;
            m->n_params += (uint64_t)mats[i]->n_in * mats[i]->n_out;
        }
    }
#undef LNAME
    if (get_vec(ld, "output_norm.weight", c->dim, v, true, NULL, err) != 0)
        return PD_EFORMAT;
    m->out_norm = v;
    return 0;
}

/* ====== Public API ====== */

pd_model_t *pd_model_from_gguf(pd_gguf_t *g, pd_err_t *err)
{
    pd_model_t *m = calloc(1, sizeof *m);
    if (m == NULL) {
        pd_gguf_free(g);
        pd_err_set(err, PD_ENOMEM, "model: out of memory");
        return NULL;
    }
    m->gguf = g;
    load_t ld = {g, calloc((size_t)pd_gguf_n_tensors(g) + 1, sizeof(bool))};
    if (ld.used == NULL) {
        pd_err_set(err, PD_ENOMEM, "model: out of memory");
        goto fail;
    }
    if (read_config(g, &m->cfg, m->arch_name, err) != 0)
        goto fail;
    pd_model_config_t *c = &m->cfg;
    const pd_gguf_tensor_t *te = pd_gguf_find_tensor(g, "token_embd.weight");
    if (te == NULL || te->n_dims != 2 || te->ne[0] != c->dim || te->ne[1] == 0 ||
        te->ne[1] > PD_MODEL_MAX_VOCAB) {
        pd_err_set(err, PD_EFORMAT, "model: tensor 'token_embd.weight' missing or not [%u, vocab]",
                   c->dim);
        goto fail;
    }
    c->vocab_size = (uint32_t)te->ne[1];
    if (pd_model_check_keys(g, m->arch_name, c->head_dim, c->vocab_size, err) != 0)
        goto fail;
    if (get_mat(&ld, "token_embd.weight", c->dim, c->vocab_size, &m->tok_embd, true, err) != 0)
        goto fail;
    if (get_mat(&ld, "output.weight", c->dim, c->vocab_size, &m->output, false, err) != 0)
        goto fail;
    if (m->output.data == NULL)
        m->output = m->tok_embd; /* tied embeddings */
    if (load_layers(m, &ld, err) != 0)
        goto fail;
    if (pd_model_check_tensors(g, ld.used, c->has_qkv_bias, err) != 0)
        goto fail;
    free(ld.used);
    ld.used = NULL;
    m->weight_bytes += m->output.row_bytes * m->output.n_out;
    m->n_params += (uint64_t)c->vocab_size * c->dim; /* the output projection */

    pd_gguf_str_t nm = { 0 };
    if (pd_gguf_find_key(g, "general.name") >= 0 && pd_gguf_get_str(g, "general.name", &nm, NULL) == 0)
        snprintf(m->name, sizeof m->name, "%.*s", (int)(nm.len > 120 ? 120 : nm.len), nm.ptr);
    else
        snprintf(m->name, sizeof m->name, "%s", m->arch_name);
    /* Identity: shape plus every tensor's name, type and dims. Peers with
     * different identities refuse to exchange KV. */
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a(h, c, sizeof *c);
    for (int64_t i = 0; i < pd_gguf_n_tensors(g); i++) {
        const pd_gguf_tensor_t *t = pd_gguf_tensor(g, i);
        h = fnv1a(h, t->name, strlen(t->name));
        h = fnv1a(h, &t->type, sizeof t->type);
        h = fnv1a(h, t->ne, sizeof t->ne);
        h = fnv1a(h, &t->offset, sizeof t->offset);
    }
    m->identity = h;
    return m;
fail:
    free(ld.used);
    pd_model_free(m);
    return NULL;
}

pd_model_t *pd_model_load(const char *path, pd_err_t *err)
{
    pd_gguf_t *g = pd_gguf_open(path, err);
    if (g == NULL)
        return NULL;
    pd_model_t *m = pd_model_from_gguf(g, err);
    if (m == NULL)
        pd_err_wrap(err, PD_EFORMAT, "%s", path);
    return m;
}

void pd_model_free(pd_model_t *m)
{
    if (m == NULL)
        return;
    pd_gguf_free(m->gguf);
    free(m->layers);
    free(m->owned_f32);
    free(m);
}
