/* kernels_act.c -- GeGLU and soft-capping, the element-wise pieces Gemma
 * adds, computed as ggml's CPU backend computes them (ggml-cpu/vec.h):
 *
 *   gelu(x): the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) x (1 +
 *     0.044715 x^2))), looked up in a table indexed by x rounded to fp16
 *     (GGML_GELU_FP16) whose entries are fp16 too; 0 below -10, x above 10.
 *   softcap(x, c) = tanh(x * (1/c)) * c (three ggml ops: scale, tanh, scale).
 *
 * pd_kern_geglu_ref computes each gelu value directly; pd_kern_geglu reads
 * the same values from a table built once (65536 fp16 entries), so the two
 * agree bit for bit (test_kernels checks every fp16 input).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#include "engine/kernels.h"

#define GELU_COEF_A 0.044715f
#define SQRT_2_OVER_PI 0.79788456080286535587989211986876f
#define GELU_TABLE_RANGE 10.0f /* |x| beyond this: gelu(x) is 0 or x exactly */

static float gelu_tanh(float x)
{
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * x * (1.0f + GELU_COEF_A * x * x)));
}

/* gelu(x) as ggml's table gives it: x rounded to fp16, the result too. */
static float gelu_fp16(float x)
{
    const float xh = pd_fp16_to_fp32(pd_fp32_to_fp16(x));
    return pd_fp16_to_fp32(pd_fp32_to_fp16(gelu_tanh(xh)));
}

void pd_kern_geglu_ref(float *gate, const float *up, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        const float x = gate[i];
        if (x <= -GELU_TABLE_RANGE)
            gate[i] = 0.0f;
        else if (x >= GELU_TABLE_RANGE)
            gate[i] = x * up[i];
        else
            gate[i] = gelu_fp16(x) * up[i];
    }
}

static uint16_t g_gelu_table[1 << 16]; /* fp16 gelu of every fp16 input */
static pthread_once_t g_gelu_once = PTHREAD_ONCE_INIT;

static void gelu_table_init(void)
{
    for (uint32_t h = 0; h < (1u << 16); h++)
        g_gelu_table[h] = pd_fp32_to_fp16(gelu_tanh(pd_fp16_to_fp32((uint16_t)h)));
}

void pd_kern_geglu(float *gate, const float *up, uint32_t n)
{
    pthread_once(&g_gelu_once, gelu_table_init);
    for (uint32_t i = 0; i < n; i++) {
        const float x = gate[i];
        if (x <= -GELU_TABLE_RANGE)
            gate[i] = 0.0f;
        else if (x >= GELU_TABLE_RANGE)
            gate[i] = x * up[i];
        else
            gate[i] = pd_fp16_to_fp32(g_gelu_table[pd_fp32_to_fp16(x)]) * up[i];
    }
}

void pd_kern_softcap(float *x, uint32_t n, float cap)
{
    const float inv = 1.0f / cap;
    for (uint32_t i = 0; i < n; i++)
        x[i] = tanhf(x[i] * inv) * cap;
}
