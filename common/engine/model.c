/* model.c -- weight views from a GGUF file (the hyperparameters are read
 * by model_hparams.c).
 *
 * Tensor names follow llama.cpp's convention:
 *   token_embd.weight (dim x vocab), output_norm.weight, output.weight
 *     (optional: tied; gemma2 always ties)
 *   rope_freqs.weight (llama, optional), rope_factors_{long,short}.weight
 *     (phi3, optional)
 *   blk.N.attn_norm.weight, blk.N.attn_{q,k,v}.weight (+ .bias for qwen2;
 *     phi3: one blk.N.attn_qkv.weight), blk.N.attn_{q,k}_norm.weight
 *     (qwen3, gemma3), blk.N.attn_output.weight,
 *     blk.N.post_attention_norm.weight (gemma), blk.N.ffn_norm.weight,
 *     blk.N.ffn_{gate,up,down}.weight (phi3: ffn_up holds gate and up),
 *     blk.N.post_ffw_norm.weight (gemma)
 */
#include "engine/model.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/model_check.h"
#include "engine/model_internal.h"
#include "engine/quants_k.h"

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
        return pd_err_set(err, PD_EUNSUPPORTED, "model: tensor '%s' has unsupported type %s "
                          "(supported: " PD_GGML_SUPPORTED_TYPES ")", name,
                          pd_ggml_type_name(t->type));
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

/* A view of rows [row0, row0 + n_out) of w: fused tensors (phi3's attn_qkv
 * and ffn_up) are read as several matrices, row by row as llama.cpp's
 * views of one product. */
static pd_mat_t row_view(const pd_mat_t *w, uint32_t row0, uint32_t n_out)
{
    pd_mat_t v = *w;
    v.data = (const uint8_t *)w->data + (size_t)row0 * w->row_bytes;
    v.n_out = n_out;
    return v;
}

/* A vector of rope frequency factors (head_dim / 2), each finite and > 0
 * (a zero factor would divide the angle by zero). NULL when absent. */
static int get_factors(load_t *ld, const char *name, uint32_t n, float **v, const float **out,
                       pd_err_t *err)
{
    bool found = false;
    *out = NULL;
    if (get_vec(ld, name, n, *v, false, &found, err) != 0)
        return PD_EFORMAT;
    if (!found)
        return 0;
    for (uint32_t i = 0; i < n; i++)
        if (!((*v)[i] > 0.0f))
            return pd_err_set(err, PD_EFORMAT, "model: tensor '%s' element %u is %g (rope "
                              "frequency factors must be > 0)", name, i, (*v)[i]);
    *out = *v;
    *v += n;
    return 0;
}

/* Attention projections: attn_q, attn_k, attn_v, or phi3's fused attn_qkv
 * (rows q | k | v). */
static int load_qkv(load_t *ld, const pd_model_config_t *c, pd_layer_t *L, uint32_t l,
                    pd_err_t *err)
{
    uint32_t q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    char name[96];
#define LNAME(fmt) (snprintf(name, sizeof name, "blk.%u." fmt, l), name)
    if (c->arch == PD_ARCH_PHI3 && pd_gguf_find_tensor(ld->g, LNAME("attn_qkv.weight"))) {
        pd_mat_t qkv;
        if (get_mat(ld, name, c->dim, q_dim + 2 * kv_dim, &qkv, true, err) != 0)
            return PD_EFORMAT;
        L->wq = row_view(&qkv, 0, q_dim);
        L->wk = row_view(&qkv, q_dim, kv_dim);
        L->wv = row_view(&qkv, q_dim + kv_dim, kv_dim);
        return 0;
    }
    int rc = 0;
    rc = rc ? rc : get_mat(ld, LNAME("attn_q.weight"), c->dim, q_dim, &L->wq, true, err);
    rc = rc ? rc : get_mat(ld, LNAME("attn_k.weight"), c->dim, kv_dim, &L->wk, true, err);
    rc = rc ? rc : get_mat(ld, LNAME("attn_v.weight"), c->dim, kv_dim, &L->wv, true, err);
    return rc;
#undef LNAME
}

/* Feed-forward projections: ffn_gate, ffn_up, ffn_down, or phi3's ffn_up
 * holding gate then up (rows gate | up, as ggml_swiglu splits them). */
static int load_ffn(load_t *ld, const pd_model_config_t *c, pd_layer_t *L, uint32_t l,
                    pd_err_t *err)
{
    char name[96];
    int rc = 0;
#define LNAME(fmt) (snprintf(name, sizeof name, "blk.%u." fmt, l), name)
    if (c->arch == PD_ARCH_PHI3) {
        pd_mat_t up;
        rc = rc ? rc : get_mat(ld, LNAME("ffn_up.weight"), c->dim, 2 * c->ffn_dim, &up, true, err);
        L->w_gate = row_view(&up, 0, c->ffn_dim);
        L->w_up = row_view(&up, c->ffn_dim, c->ffn_dim);
    } else {
        rc = rc ? rc : get_mat(ld, LNAME("ffn_gate.weight"), c->dim, c->ffn_dim, &L->w_gate, true, err);
        rc = rc ? rc : get_mat(ld, LNAME("ffn_up.weight"), c->dim, c->ffn_dim, &L->w_up, true, err);
    }
    rc = rc ? rc : get_mat(ld, LNAME("ffn_down.weight"), c->ffn_dim, c->dim, &L->w_down, true, err);
    return rc;
#undef LNAME
}

/* The small fp32 vectors of layer l (norms, biases), converted into *v. */
static int load_layer_vecs(load_t *ld, const pd_model_config_t *c, pd_layer_t *L, uint32_t l,
                           float **v, pd_err_t *err)
{
    uint32_t q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    char name[96];
    int rc = 0;
#define LNAME(fmt) (snprintf(name, sizeof name, "blk.%u." fmt, l), name)
#define VEC(field, fmt, n) \
    (rc = rc ? rc : get_vec(ld, LNAME(fmt), (n), *v, true, NULL, err), L->field = *v, *v += (n))
    VEC(attn_norm, "attn_norm.weight", c->dim);
    VEC(ffn_norm, "ffn_norm.weight", c->dim);
    if (c->has_qkv_bias) {
        VEC(bq, "attn_q.bias", q_dim);
        VEC(bk, "attn_k.bias", kv_dim);
        VEC(bv, "attn_v.bias", kv_dim);
    }
    if (c->has_qk_norm) {
        VEC(q_norm, "attn_q_norm.weight", c->head_dim);
        VEC(k_norm, "attn_k_norm.weight", c->head_dim);
    }
    if (c->has_post_norms) {
        VEC(post_attn_norm, "post_attention_norm.weight", c->dim);
        VEC(post_ffn_norm, "post_ffw_norm.weight", c->dim);
    }
#undef VEC
#undef LNAME
    return rc;
}

static int load_layers(pd_model_t *m, load_t *ld, pd_err_t *err)
{
    const pd_model_config_t *c = &m->cfg;
    uint32_t q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    /* Owned fp32 vectors: per layer 2 norms (+3 biases, +2 head norms, +2
     * post norms), plus the output norm and 3 sets of rope factors. */
    size_t per_layer = 2 * (size_t)c->dim + (c->has_qkv_bias ? q_dim + 2 * (size_t)kv_dim : 0) +
                       (c->has_qk_norm ? 2 * (size_t)c->head_dim : 0) +
                       (c->has_post_norms ? 2 * (size_t)c->dim : 0);
    /* Those vectors come from the file (2 bytes per element at least): a
     * shape asking for more than the file holds is refused before the
     * allocation (a few header bytes must not cost gigabytes). */
    const size_t n_vec = per_layer * c->n_layers + c->dim + 3 * (size_t)c->head_dim;
    if (n_vec > pd_gguf_file_size(ld->g) / 2)
        return pd_err_set(err, PD_EFORMAT, "model: %u layers of dim %u need %zu norm and bias "
                          "elements, more than the file's %zu bytes hold", c->n_layers, c->dim,
                          n_vec, pd_gguf_file_size(ld->g));
    m->owned_f32 = malloc(sizeof(float) * n_vec);
    m->layers = calloc(c->n_layers, sizeof *m->layers);
    bool *is_swa = calloc(c->n_layers, sizeof *is_swa);
    if (m->owned_f32 == NULL || m->layers == NULL || is_swa == NULL) {
        free(is_swa);
        return pd_err_set(err, PD_ENOMEM, "model: out of memory for layer vectors");
    }
    int rc = pd_model_read_swa_pattern(ld->g, c, m->arch_name, is_swa, err);
    float *v = m->owned_f32;
    for (uint32_t l = 0; l < c->n_layers && rc == 0; l++) {
        pd_layer_t *L = &m->layers[l];
        char name[96];
        L->is_swa = is_swa[l];
        rc = rc ? rc : load_layer_vecs(ld, c, L, l, &v, err);
        rc = rc ? rc : load_qkv(ld, c, L, l, err);
        snprintf(name, sizeof name, "blk.%u.attn_output.weight", l);
        rc = rc ? rc : get_mat(ld, name, q_dim, c->dim, &L->wo, true, err);
        rc = rc ? rc : load_ffn(ld, c, L, l, err);
        if (rc != 0)
            break;
        const pd_mat_t *mats[] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down };
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
            m->weight_bytes += mats[i]->row_bytes * mats[i]->n_out;
            m->n_params += (uint64_t)mats[i]->n_in * mats[i]->n_out;
        }
    }
    free(is_swa);
    if (rc != 0)
        return rc;
    if (get_vec(ld, "output_norm.weight", c->dim, v, true, NULL, err) != 0)
        return PD_EFORMAT;
    m->out_norm = v;
    v += c->dim;
    /* Rope frequency factors: llama's rope_freqs (Llama 3.1+), phi3's
     * LongRoPE pair; other architectures read none (a file that has them
     * is refused as holding an unread tensor). */
    const uint32_t nf = c->head_dim / 2;
    if (c->arch == PD_ARCH_LLAMA && get_factors(ld, "rope_freqs.weight", nf, &v, &m->rope_freqs, err))
        return PD_EFORMAT;
    if (c->arch == PD_ARCH_PHI3 &&
        (get_factors(ld, "rope_factors_long.weight", nf, &v, &m->rope_long, err) != 0 ||
         get_factors(ld, "rope_factors_short.weight", nf, &v, &m->rope_short, err) != 0))
        return PD_EFORMAT;
    return 0;
}

/* What the loader of c's architecture reads, for pd_model_check_tensors'
 * messages. */
static const char *tensors_read(const pd_model_config_t *c)
{
    switch (c->arch) {
    case PD_ARCH_QWEN2:
        return "token_embd, output_norm, output and blk.N.{attn_norm, attn_q, attn_k, attn_v, "
               "attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.weight and "
               "blk.N.attn_{q,k,v}.bias";
    case PD_ARCH_QWEN3:
        return "token_embd, output_norm, output and blk.N.{attn_norm, attn_q, attn_k, attn_v, "
               "attn_q_norm, attn_k_norm, attn_output, ffn_norm, ffn_gate, ffn_up, "
               "ffn_down}.weight";
    case PD_ARCH_GEMMA2:
        return "token_embd, output_norm and blk.N.{attn_norm, attn_q, attn_k, attn_v, "
               "attn_output, post_attention_norm, ffn_norm, ffn_gate, ffn_up, ffn_down, "
               "post_ffw_norm}.weight";
    case PD_ARCH_GEMMA3:
        return "token_embd, output_norm, output and blk.N.{attn_norm, attn_q, attn_k, attn_v, "
               "attn_q_norm, attn_k_norm, attn_output, post_attention_norm, ffn_norm, "
               "ffn_gate, ffn_up, ffn_down, post_ffw_norm}.weight";
    case PD_ARCH_PHI3:
        return "token_embd, output_norm, output, rope_factors_long, rope_factors_short and "
               "blk.N.{attn_norm, attn_qkv or attn_q + attn_k + attn_v, attn_output, ffn_norm, "
               "ffn_up (gate and up), ffn_down}.weight";
    case PD_ARCH_LLAMA:
        break;
    }
    return "token_embd, output_norm, output, rope_freqs and blk.N.{attn_norm, attn_q, attn_k, "
           "attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.weight";
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
    if (pd_model_read_config(g, &m->cfg, m->arch_name, err) != 0)
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
    if (pd_model_check_keys(g, c->arch, m->arch_name, c->vocab_size, err) != 0)
        goto fail;
    if (get_mat(&ld, "token_embd.weight", c->dim, c->vocab_size, &m->tok_embd, true, err) != 0)
        goto fail;
    /* gemma2 always ties (llama.cpp does not look for output.weight) */
    if (c->arch != PD_ARCH_GEMMA2 &&
        get_mat(&ld, "output.weight", c->dim, c->vocab_size, &m->output, false, err) != 0)
        goto fail;
    if (m->output.data == NULL)
        m->output = m->tok_embd; /* tied embeddings */
    if (load_layers(m, &ld, err) != 0)
        goto fail;
    if (pd_model_check_tensors(g, ld.used, tensors_read(c), err) != 0)
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
    for (uint32_t l = 0; l < c->n_layers; l++)
        h = fnv1a(h, &m->layers[l].is_swa, sizeof m->layers[l].is_swa);
    m->identity = h;
    return m;
fail:
    free(ld.used);
    pd_model_free(m);
    return NULL;
}

pd_model_t *pd_model_load(const char *path, pd_err_t *err)
{
    return pd_model_load_weights(path, false, err);
}

pd_model_t *pd_model_load_weights(const char *path, bool resident, pd_err_t *err)
{
    pd_gguf_t *g = resident ? pd_gguf_open_resident(path, err) : pd_gguf_open(path, err);
    if (g == NULL)
        return NULL;
    pd_model_t *m = pd_model_from_gguf(g, err);
    if (m == NULL)
        pd_err_wrap(err, PD_EFORMAT, "%s", path);
    return m;
}

const float *pd_model_rope_factors(const pd_model_t *m, uint32_t max_ctx)
{
    if (m->rope_freqs != NULL)
        return m->rope_freqs;
    return max_ctx > m->cfg.rope_ctx_orig ? m->rope_long : m->rope_short;
}

uint64_t pd_model_kv_identity(const pd_model_t *m, uint32_t max_ctx)
{
    if (m->rope_long == NULL && m->rope_short == NULL)
        return m->identity;
    const bool is_long = max_ctx > m->cfg.rope_ctx_orig;
    return fnv1a(m->identity, &is_long, sizeof is_long);
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
