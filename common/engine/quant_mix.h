/* quant_mix.h -- the per-tensor types of llama.cpp's quantization "file
 * types" (Q4_K_M, Q3_K_L, ...), for pd-mkmodel.
 *
 * llama-quantize does not put every tensor of a Q4_K_M file in Q4_K: it
 * keeps norms in F32, puts the output projection in Q6_K, and gives more
 * bits to some layers' attn_v and ffn_down (llama_tensor_get_type in
 * llama.cpp's src/llama-quant.cpp). This module states those rules for the
 * tensors pdserve's architectures have (no experts, no fused QKV), without
 * an importance matrix, and the fallback llama.cpp applies to a tensor whose
 * rows are not a multiple of the type's block.
 */
#ifndef PD_QUANT_MIX_H
#define PD_QUANT_MIX_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/gguf.h"

typedef enum {
    PD_MIX_PURE = 0, /* every 2-D weight in one type (llama-quantize --pure) */
    PD_MIX_Q2_K,
    PD_MIX_Q3_K_S,
    PD_MIX_Q3_K_M,
    PD_MIX_Q3_K_L,
    PD_MIX_Q4_K_S,
    PD_MIX_Q4_K_M,
    PD_MIX_Q5_K_S,
    PD_MIX_Q5_K_M,
    PD_MIX_Q6_K,
    PD_MIX_IQ4_NL,
} pd_quant_mix_t;

/* The shape facts the rules depend on. */
typedef struct {
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;
    bool is_tied;          /* no output.weight: token_embd is also the output */
} pd_quant_mix_model_t;

/* "q4_k_m", "q2_k", ... (llama-quantize's names, lower case) -> the mix.
 * Returns 0, or PD_EINVAL for a name that is not one. */
int pd_quant_mix_parse(const char *name, pd_quant_mix_t *out);
/* Names accepted by pd_quant_mix_parse, for messages. */
#define PD_QUANT_MIX_NAMES "q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq4_nl"

/* The file type's default tensor type (Q4_K for Q4_K_M...). */
pd_ggml_type_t pd_quant_mix_base(pd_quant_mix_t mix);

/* The type of the 2-D weight `name` (llama.cpp's tensor names; ne0 elements
 * per row) in a file of mix (or, for PD_MIX_PURE, of `pure`). Returns 0, or
 * PD_EUNSUPPORTED when llama.cpp would fall back to a type pdserve cannot
 * read (err names the tensor, its row length and that type). */
int pd_quant_mix_type(pd_quant_mix_t mix, pd_ggml_type_t pure, const pd_quant_mix_model_t *m,
                      const char *name, uint64_t ne0, pd_ggml_type_t *out, pd_err_t *err);

#endif
