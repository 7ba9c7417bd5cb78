/* model.h -- model hyperparameters and weights, read from a GGUF file.
 *
 * Architectures: "llama" (Llama 2/3, TinyLlama, SmolLM, Mistral: GQA,
 * rope freq base, linear rope scaling, tied or separate output) and
 * "qwen2" (QKV bias, NeoX-style rope). Weights are pointers into the
 * mapped file (zero copies); only the small fp32 vectors (norm weights,
 * biases) are converted and owned.
 */
#ifndef PD_MODEL_H
#define PD_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/gguf.h"
#include "engine/kernels.h"

typedef enum { PD_ARCH_LLAMA = 1, PD_ARCH_QWEN2 = 2 } pd_arch_t;

typedef struct {
    pd_arch_t arch;
    uint32_t dim;          /* embedding length */
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;   /* GQA: n_heads % n_kv_heads == 0 */
    uint32_t head_dim;     /* dim / n_heads */
    uint32_t ffn_dim;
    uint32_t vocab_size;
    uint32_t ctx_len;      /* trained context length */
    float rope_base;       /* rope freq base, 10000 by default */
    float rope_scale;      /* linear scaling factor (positions are divided by it) */
    float norm_eps;        /* rms norm epsilon */
    bool rope_neox;        /* NeoX (split halves) rotation, qwen2 */
    bool has_qkv_bias;
} pd_model_config_t;

typedef struct {
    const float *attn_norm;  /* (dim) */
    pd_mat_t wq;             /* (n_heads * head_dim, dim) */
    pd_mat_t wk;             /* (n_kv_heads * head_dim, dim) */
    pd_mat_t wv;             /* (n_kv_heads * head_dim, dim) */
    const float *bq;         /* (n_heads * head_dim) or NULL */
    const float *bk;         /* (n_kv_heads * head_dim) or NULL */
    const float *bv;         /* (n_kv_heads * head_dim) or NULL */
    pd_mat_t wo;             /* (dim, n_heads * head_dim) */
    const float *ffn_norm;   /* (dim) */
    pd_mat_t w_gate;         /* (ffn_dim, dim) */
    pd_mat_t w_up;           /* (ffn_dim, dim) */
    pd_mat_t w_down;         /* (dim, ffn_dim) */
} pd_layer_t;

typedef struct {
    pd_model_config_t cfg;
    pd_gguf_t *gguf;        /* owned; the weights point into its mapping */
    pd_mat_t tok_embd;      /* (vocab_size, dim) */
    const float *out_norm;  /* (dim) */
    pd_mat_t output;        /* (vocab_size, dim); tok_embd when tied */
    pd_layer_t *layers;     /* (n_layers) */
    float *owned_f32;       /* backing store of the converted vectors */
    char arch_name[16];
    char name[128];         /* general.name or the file's base name */
    uint64_t identity;      /* hash of shape + tensor table: peers must agree */
    uint64_t n_params;      /* parameters multiplied per token (layers + output;
                               the embedding lookup is not a product) */
    uint64_t weight_bytes;  /* bytes of those matrices: read once per decode step */
} pd_model_t;

/* Opens path, checks every tensor's presence, type and shape, and returns
 * the model. NULL and err (naming the tensor or key) on failure. Caller
 * frees with pd_model_free. */
pd_model_t *pd_model_load(const char *path, pd_err_t *err);
pd_model_t *pd_model_from_gguf(pd_gguf_t *g, pd_err_t *err); /* takes g */
void pd_model_free(pd_model_t *m); /* accepts NULL */

#endif
