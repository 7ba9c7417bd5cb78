/* quant_mix.c -- llama.cpp's per-tensor type choice. See quant_mix.h.
 *
 * The rules, from llama_tensor_get_type (llama.cpp src/llama-quant.cpp),
 * for a model without experts, not Falcon, not 70B, no importance matrix:
 *
 *   output.weight (and token_embd.weight when tied): Q6_K, or Q8_0 when the
 *     row is not a multiple of the base type's block.
 *   attn_v (and a fused attn_qkv), layer i of n:  Q2_K: Q4_K if n_heads / n_kv_heads >= 4 else Q3_K;
 *     Q3_K_M: Q5_K for i < 2, else Q4_K; Q3_K_L: Q5_K; IQ4_NL: Q5_K if the
 *     GQA ratio >= 4; Q4_K_M, Q5_K_M: Q6_K when use_more_bits(i, n);
 *     Q4_K_S: Q5_K for i < 4.
 *   ffn_down, layer i of n: Q2_K: Q3_K; Q3_K_M: Q5_K for i < n/16, else Q4_K;
 *     Q3_K_L: Q5_K; Q4_K_M, Q5_K_M: Q6_K when use_more_bits(i, n);
 *     IQ4_NL, Q4_K_S: Q5_K for i < n/8.
 *   attn_output: Q2_K: Q3_K; Q3_K_M: Q4_K; Q3_K_L: Q5_K.
 *   everything else: the base type.
 *   use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2.
 *
 * Then, as for --pure files, a row that is not a multiple of the type's
 * block falls back: Q2_K, Q3_K -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1;
 * Q6_K -> Q8_0 (F16 if even that does not divide).
 */
#include "engine/quant_mix.h"

#include <stdlib.h>
#include <string.h>

typedef enum {
    CAT_TOKEN_EMBD, CAT_OUTPUT, CAT_ATTN_V, CAT_ATTN_OUTPUT, CAT_FFN_DOWN, CAT_OTHER
} category_t;

static const struct {
    const char *name;
    pd_quant_mix_t mix;
    pd_ggml_type_t base;
} MIXES[] = {
    {"q2_k", PD_MIX_Q2_K, PD_GGML_TYPE_Q2_K},     {"q3_k_s", PD_MIX_Q3_K_S, PD_GGML_TYPE_Q3_K},
    {"q3_k_m", PD_MIX_Q3_K_M, PD_GGML_TYPE_Q3_K}, {"q3_k_l", PD_MIX_Q3_K_L, PD_GGML_TYPE_Q3_K},
    {"q4_k_s", PD_MIX_Q4_K_S, PD_GGML_TYPE_Q4_K}, {"q4_k_m", PD_MIX_Q4_K_M, PD_GGML_TYPE_Q4_K},
    {"q5_k_s", PD_MIX_Q5_K_S, PD_GGML_TYPE_Q5_K}, {"q5_k_m", PD_MIX_Q5_K_M, PD_GGML_TYPE_Q5_K},
    {"q6_k", PD_MIX_Q6_K, PD_GGML_TYPE_Q6_K},     {"iq4_nl", PD_MIX_IQ4_NL, PD_GGML_TYPE_IQ4_NL},
};
#define N_MIXES (sizeof MIXES / sizeof MIXES[0])

int pd_quant_mix_parse(const char *name, pd_quant_mix_t *out)
{
    for (size_t i = 0; i < N_MIXES; i++)
        if (strcmp(name, MIXES[i].name) == 0) {
            *out = MIXES[i].mix;
            return 0;
        }
    return PD_EINVAL;
}

pd_ggml_type_t pd_quant_mix_base(pd_quant_mix_t mix)
{
    for (size_t i = 0; i < N_MIXES; i++)
        if (MIXES[i].mix == mix)
            return MIXES[i].base;
    return PD_GGML_TYPE_F32;
}

static category_t category(const char *name)
{
    if (strcmp(name, "output.weight") == 0)
        return CAT_OUTPUT;
    if (strcmp(name, "token_embd.weight") == 0)
        return CAT_TOKEN_EMBD;
    /* llama.cpp's category_is_attn_v: a fused QKV (phi3) is quantized as attn_v */
    if (strstr(name, "attn_v.weight") != NULL || strstr(name, "attn_qkv.weight") != NULL)
        return CAT_ATTN_V;
    if (strstr(name, "attn_output.weight") != NULL)
        return CAT_ATTN_OUTPUT;
    if (strstr(name, "ffn_down") != NULL)
        return CAT_FFN_DOWN;
    return CAT_OTHER;
}

/* N of "blk.N.", or 0 for a tensor outside the layers. */
static int layer_of(const char *name)
{
    if (strncmp(name, "blk.", 4) != 0)
        return 0;
    char *end = NULL;
    unsigned long l = strtoul(name + 4, &end, 10);
    return end != name + 4 && *end == '.' && l < 1u << 20 ? (int)l : 0;
}

static bool use_more_bits(int i, int n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* The rule table above, before the shape fallback. */
static pd_ggml_type_t mix_rule(pd_quant_mix_t mix, pd_ggml_type_t t, const pd_quant_mix_model_t *m,
                               category_t cat, int i, uint64_t ne0)
{
    const int n = (int)m->n_layers;
    const bool gqa4 = m->n_kv_heads > 0 && m->n_heads / m->n_kv_heads >= 4;
    if (cat == CAT_OUTPUT || (m->is_tied && cat == CAT_TOKEN_EMBD)) {
        if (ne0 % pd_ggml_block_elems(t) != 0)
            return PD_GGML_TYPE_Q8_0;
        return t != PD_GGML_TYPE_Q8_0 ? PD_GGML_TYPE_Q6_K : t;
    }
    switch (cat) {
    case CAT_ATTN_V:
        if (mix == PD_MIX_Q2_K) return gqa4 ? PD_GGML_TYPE_Q4_K : PD_GGML_TYPE_Q3_K;
        if (mix == PD_MIX_Q3_K_M) return i < 2 ? PD_GGML_TYPE_Q5_K : PD_GGML_TYPE_Q4_K;
        if (mix == PD_MIX_Q3_K_L) return PD_GGML_TYPE_Q5_K;
        if (mix == PD_MIX_IQ4_NL && gqa4) return PD_GGML_TYPE_Q5_K;
        if ((mix == PD_MIX_Q4_K_M || mix == PD_MIX_Q5_K_M) && use_more_bits(i, n))
            return PD_GGML_TYPE_Q6_K;
        if (mix == PD_MIX_Q4_K_S && i < 4) return PD_GGML_TYPE_Q5_K;
        return t;
    case CAT_FFN_DOWN:
        if (mix == PD_MIX_Q2_K) return PD_GGML_TYPE_Q3_K;
        if (mix == PD_MIX_Q3_K_M) return i < n / 16 ? PD_GGML_TYPE_Q5_K : PD_GGML_TYPE_Q4_K;
        if (mix == PD_MIX_Q3_K_L) return PD_GGML_TYPE_Q5_K;
        if (mix == PD_MIX_Q4_K_M) return use_more_bits(i, n) ? PD_GGML_TYPE_Q6_K : t;
        if (mix == PD_MIX_IQ4_NL && i < n / 8) return PD_GGML_TYPE_Q5_K;
        if (mix == PD_MIX_Q5_K_M && use_more_bits(i, n)) return PD_GGML_TYPE_Q6_K;
        if (mix == PD_MIX_Q4_K_S && i < n / 8) return PD_GGML_TYPE_Q5_K;
        return t;
    case CAT_ATTN_OUTPUT:
        if (mix == PD_MIX_Q2_K) return PD_GGML_TYPE_Q3_K;
        if (mix == PD_MIX_Q3_K_M) return PD_GGML_TYPE_Q4_K;
        if (mix == PD_MIX_Q3_K_L) return PD_GGML_TYPE_Q5_K;
        return t;
    default:
        return t;
    }
}

int pd_quant_mix_type(pd_quant_mix_t mix, pd_ggml_type_t pure, const pd_quant_mix_model_t *m,
                      const char *name, uint64_t ne0, pd_ggml_type_t *out, pd_err_t *err)
{
    pd_ggml_type_t t = mix == PD_MIX_PURE ? pure : pd_quant_mix_base(mix);
    if (mix != PD_MIX_PURE) {
        t = mix_rule(mix, t, m, category(name), layer_of(name), ne0);
    }
    const uint32_t be = pd_ggml_block_elems(t);
    if (be != 0 && ne0 % be == 0) {
        *out = t;
        return 0;
    }
    /* llama.cpp's fallback for rows the block does not divide */
    const char *unsupported = NULL;
    switch (t) {
    case PD_GGML_TYPE_Q2_K: case PD_GGML_TYPE_Q3_K: t = PD_GGML_TYPE_Q4_0; break;
    case PD_GGML_TYPE_Q4_K: unsupported = "q5_0"; break;
    case PD_GGML_TYPE_Q5_K: unsupported = "q5_1"; break;
    case PD_GGML_TYPE_Q6_K: t = PD_GGML_TYPE_Q8_0; break;
    default:
        return pd_err_set(err, PD_EUNSUPPORTED, "tensor '%s': rows of %llu are not a multiple "
                          "of the %s block (%u), and llama.cpp has no fallback for it", name,
                          (unsigned long long)ne0, pd_ggml_type_name(t), be);
    }
    if (unsupported != NULL)
        return pd_err_set(err, PD_EUNSUPPORTED, "tensor '%s': rows of %llu are not a multiple of "
                          "256, and llama.cpp's fallback type %s is not one pdserve reads",
                          name, (unsigned long long)ne0, unsupported);
    if (ne0 % pd_ggml_block_elems(t) != 0)
        t = PD_GGML_TYPE_F16;
    *out = t;
    return 0;
}
