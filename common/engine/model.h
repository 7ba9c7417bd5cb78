/* model.h -- model hyperparameters and weights, read from a GGUF file.
 *
 * Architectures (general.architecture), each as llama.cpp computes it:
 *   llama   Llama 2/3.x, TinyLlama, SmolLM, Mistral: GQA, rope freq base,
 *           linear rope scaling, Llama 3.1+ rope frequency factors
 *           (rope_freqs), tied or separate output.
 *   qwen2   QKV bias, NeoX rope.
 *   qwen3   per-head RMSNorm on Q and K before rope, NeoX rope.
 *   gemma2  embeddings * sqrt(dim), GeGLU, RMSNorm after attention and
 *           after the FFN, Q scaled before attention, attention and final
 *           logit soft-capping, sliding-window attention on even layers.
 *   gemma3  gemma2 without attention soft-capping, plus per-head Q/K
 *           norms; 5 sliding-window layers to 1 global, with their own
 *           rope base.
 *   phi3    fused QKV and gate/up tensors (read as row views), NeoX rope,
 *           LongRoPE frequency factors and attention factor.
 * docs/models.md says what each changes in the forward pass. Weights are
 * pointers into the mapped file (zero copies); only the small fp32
 * vectors (norm weights, biases, rope factors) are converted and owned.
 */
#ifndef PD_MODEL_H
#define PD_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/gguf.h"
#include "engine/kernels.h"

typedef enum {
    PD_ARCH_LLAMA = 1,
    PD_ARCH_QWEN2 = 2,
    PD_ARCH_QWEN3 = 3,
    PD_ARCH_GEMMA2 = 4,
    PD_ARCH_GEMMA3 = 5,
    PD_ARCH_PHI3 = 6,
} pd_arch_t;

/* The architectures pd_model_load accepts, for messages. */
#define PD_MODEL_ARCH_NAMES "llama, qwen2, qwen3, gemma2, gemma3, phi3"

typedef enum {
    PD_FFN_SWIGLU = 0, /* silu(gate) * up */
    PD_FFN_GEGLU = 1,  /* gelu(gate) * up, gelu's tanh approximation as ggml */
} pd_ffn_act_t;

typedef struct {
    pd_arch_t arch;
    uint32_t dim;          /* embedding length */
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;   /* GQA: n_heads % n_kv_heads == 0 */
    uint32_t head_dim;     /* attention.key_length, by default dim / n_heads */
    uint32_t ffn_dim;
    uint32_t vocab_size;
    uint32_t ctx_len;      /* trained context length */
    float rope_base;       /* rope freq base, 10000 by default */
    float rope_scale;      /* linear scaling factor (positions are divided by it) */
    float rope_base_swa;   /* the same two for sliding-window layers (gemma) */
    float rope_scale_swa;
    float rope_mscale;     /* cos and sin are multiplied by this (phi3's
                              rope.scaling.attn_factor); 1 otherwise */
    uint32_t rope_ctx_orig;/* phi3: long rope factors when the engine's
                              context exceeds this, else short */
    float norm_eps;        /* rms norm epsilon */
    bool rope_neox;        /* NeoX (split halves) rotation */
    bool has_qkv_bias;     /* qwen2 */
    bool has_qk_norm;      /* per-head RMSNorm of Q and K before rope (qwen3, gemma3) */
    bool has_post_norms;   /* RMSNorm of the attention and FFN outputs before
                              their residual add (gemma) */
    pd_ffn_act_t ffn_act;
    float q_scale;         /* != 0: Q is multiplied by this after rope and the
                              scores are not scaled (gemma, phi3); 0: scores
                              are multiplied by 1/sqrt(head_dim) */
    float attn_softcap;    /* != 0: score = c * tanh(score / c) (gemma2) */
    float final_softcap;   /* != 0: logit = c * tanh(logit / c) (gemma) */
    float embd_scale;      /* embeddings are multiplied by this (gemma:
                              sqrt(dim)); 1 otherwise */
    uint32_t swa_window;   /* sliding-window layers see the positions
                              pos - swa_window + 1 .. pos; 0: no such layers */
} pd_model_config_t;

typedef struct {
    bool is_swa;             /* a sliding-window layer (cfg.swa_window) */
    const float *attn_norm;  /* (dim) */
    pd_mat_t wq;             /* (n_heads * head_dim, dim) */
    pd_mat_t wk;             /* (n_kv_heads * head_dim, dim) */
    pd_mat_t wv;             /* (n_kv_heads * head_dim, dim) */
    const float *bq;         /* (n_heads * head_dim) or NULL */
    const float *bk;         /* (n_kv_heads * head_dim) or NULL */
    const float *bv;         /* (n_kv_heads * head_dim) or NULL */
    const float *q_norm;     /* (head_dim) per-head RMSNorm weight, or NULL */
    const float *k_norm;     /* (head_dim) or NULL */
    pd_mat_t wo;             /* (dim, n_heads * head_dim) */
    const float *post_attn_norm; /* (dim) or NULL */
    const float *ffn_norm;   /* (dim) */
    pd_mat_t w_gate;         /* (ffn_dim, dim) */
    pd_mat_t w_up;           /* (ffn_dim, dim) */
    pd_mat_t w_down;         /* (dim, ffn_dim) */
    const float *post_ffn_norm;  /* (dim) or NULL */
} pd_layer_t;
/* phi3's fused attn_qkv (rows q | k | v) and ffn_up (rows gate | up) are
 * read as row views: wq, wk, wv (resp. w_gate, w_up) point into one tensor. */

typedef struct {
    pd_model_config_t cfg;
    pd_gguf_t *gguf;        /* owned; the weights point into its mapping */
    pd_mat_t tok_embd;      /* (vocab_size, dim) */
    const float *out_norm;  /* (dim) */
    pd_mat_t output;        /* (vocab_size, dim); tok_embd when tied */
    pd_layer_t *layers;     /* (n_layers) */
    const float *rope_freqs;/* (head_dim / 2) each rope frequency is divided by
                               its factor (Llama 3.1+ rope_freqs), or NULL */
    const float *rope_long; /* (head_dim / 2) phi3 LongRoPE factors, or NULL */
    const float *rope_short;/* (head_dim / 2) or NULL */
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
 * frees with pd_model_free. The file is mapped (pd_gguf_open): what reads
 * only the metadata and the tokenizer (the router, tools) wants. */
pd_model_t *pd_model_load(const char *path, pd_err_t *err);
/* The same with the file copied into private 2 MB pages
 * (pd_gguf_open_resident) when resident is true: what streams the weights
 * (workers, pd-run; config model.resident). */
pd_model_t *pd_model_load_weights(const char *path, bool resident, pd_err_t *err);
pd_model_t *pd_model_from_gguf(pd_gguf_t *g, pd_err_t *err); /* takes g */
void pd_model_free(pd_model_t *m); /* accepts NULL */

/* The rope frequency factors a context of max_ctx positions runs with:
 * rope_freqs, or phi3's long factors when max_ctx exceeds rope_ctx_orig
 * and its short ones otherwise (llama.cpp's choice), or NULL. */
const float *pd_model_rope_factors(const pd_model_t *m, uint32_t max_ctx);

/* The identity of the KV a context of max_ctx positions computes: the
 * model's identity, changed when the rope factors depend on max_ctx
 * (phi3 LongRoPE), so that workers that would write different K never
 * exchange KV. */
uint64_t pd_model_kv_identity(const pd_model_t *m, uint32_t max_ctx);

#endif
