/* kernels.c -- plain C references and dispatch (pd_matmul is in kernels_matmul.c).
 *
 * The AVX2/FMA/F16C versions live in kernels_avx2.c (compiled with those
 * flags); everything here is compiled for baseline x86-64 and picks the
 * AVX2 version at run time when the CPU has it.
 *
 * Block layouts (ggml's, little-endian):
 *   Q8_0: 34 bytes per 32 elements: fp16 d, then int8 q[32]; x[i] = q[i] * d.
 *   Q4_0: 18 bytes per 32 elements: fp16 d, then 16 bytes; byte j holds
 *         element j in its low nibble and element j + 16 in its high
 *         nibble; x = (nibble - 8) * d.
 */
#include "engine/kernels.h"

#include <cpuid.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels_gemm.h"
#include "engine/quants_k.h"

#define Q8_0_BYTES 34 /* bytes per Q8_0 block */
#define Q4_0_BYTES 18 /* bytes per Q4_0 block */
#define QK 32         /* elements per Q block */

/* Row bytes, computed here so that this module does not depend on the GGUF
 * reader (same definition as pd_ggml_row_bytes). 0 for a bad n or type. */
static uint64_t kern_row_bytes(pd_ggml_type_t t, uint64_t n)
{
    switch (t) {
    case PD_GGML_TYPE_F32: return n * 4;
    case PD_GGML_TYPE_F16:
    case PD_GGML_TYPE_BF16: return n * 2;
    case PD_GGML_TYPE_Q8_0: return n % QK ? 0 : n / QK * Q8_0_BYTES;
    case PD_GGML_TYPE_Q4_0: /* 18 bytes per 32, as IQ4_NL */
    case PD_GGML_TYPE_IQ4_NL: return n % QK ? 0 : n / QK * Q4_0_BYTES;
    case PD_GGML_TYPE_Q2_K: return n % PD_QK_K ? 0 : n / PD_QK_K * PD_Q2_K_BYTES;
    case PD_GGML_TYPE_Q3_K: return n % PD_QK_K ? 0 : n / PD_QK_K * PD_Q3_K_BYTES;
    case PD_GGML_TYPE_Q4_K: return n % PD_QK_K ? 0 : n / PD_QK_K * PD_Q4_K_BYTES;
    case PD_GGML_TYPE_Q5_K: return n % PD_QK_K ? 0 : n / PD_QK_K * PD_Q5_K_BYTES;
    case PD_GGML_TYPE_Q6_K: return n % PD_QK_K ? 0 : n / PD_QK_K * PD_Q6_K_BYTES;
    case PD_GGML_TYPE_Q8_K: return n % PD_QK_K ? 0 : n / PD_QK_K * PD_Q8_K_BYTES;
    }
    return 0;
}

bool pd_kern_is_quant(pd_ggml_type_t t)
{
    return t == PD_GGML_TYPE_Q8_0 || t == PD_GGML_TYPE_Q4_0 || t == PD_GGML_TYPE_IQ4_NL ||
           pd_quant_is_k(t);
}

static bool is_quant(pd_ggml_type_t t)
{
    return pd_kern_is_quant(t);
}

pd_ggml_type_t pd_kern_act_type(pd_ggml_type_t wtype)
{
    if (pd_quant_is_k(wtype))
        return PD_GGML_TYPE_Q8_K;
    return is_quant(wtype) ? PD_GGML_TYPE_Q8_0 : PD_GGML_TYPE_F32;
}

/* AVX2 + FMA + F16C, and the OS saves YMM state. cpuid is slow (a VM exit
 * under a hypervisor), so the answer is cached: a hardware fact that
 * never changes, the one static state in this module. */
static bool detect_avx2(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return false;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
               f16c = c & (1u << 29);
    if (!(fma && osxsave && avx && f16c))
        return false;
    unsigned xcr0_lo, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 6) != 6) /* XMM and YMM state enabled */
        return false;
    if (__get_cpuid_max(0, NULL) < 7)
        return false;
    __cpuid_count(7, 0, a, b, c, d);
    return b & (1u << 5); /* AVX2 */
}

/* AVX-512 F, DQ, BW, VL and VNNI, and the OS saves the ZMM state (XCR0
 * opmask, ZMM_Hi256, Hi16_ZMM). Called only after detect_avx2(). */
static bool detect_avx512(void)
{
    unsigned a, b, c, d;
    unsigned xcr0_lo, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0xe6) != 0xe6)
        return false;
    __cpuid_count(7, 0, a, b, c, d);
    const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30),
               vl = b & (1u << 31), vnni = c & (1u << 11);
    return f && dq && bw && vl && vnni;
}

/* The best kernel set of this CPU, capped by the environment variable
 * PD_ISA (ref, avx2 or avx512): a cluster of mixed machines sets the same
 * cap everywhere so that every worker computes the same bits. */
static pd_isa_t detect_isa(void)
{
    pd_isa_t isa = PD_ISA_REF;
    if (detect_avx2())
        isa = detect_avx512() ? PD_ISA_AVX512 : PD_ISA_AVX2;
    const char *cap = getenv("PD_ISA");
    if (cap != NULL) {
        pd_isa_t want = strcmp(cap, "ref") == 0 ? PD_ISA_REF
                      : strcmp(cap, "avx2") == 0 ? PD_ISA_AVX2 : PD_ISA_AVX512;
        isa = want < isa ? want : isa;
    }
    return isa;
}

pd_isa_t pd_kern_isa(void)
{
    static atomic_int cached; /* 0 unknown, else isa + 1 */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v == 0) {
        v = (int)detect_isa() + 1;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return (pd_isa_t)(v - 1);
}

const char *pd_kern_isa_name(void)
{
    switch (pd_kern_isa()) {
    case PD_ISA_AVX512: return "avx512";
    case PD_ISA_AVX2: return "avx2";
    default: return "ref";
    }
}

bool pd_kern_has_avx2(void)
{
    return pd_kern_isa() >= PD_ISA_AVX2;
}

/* ====== Scalar conversions ====== */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float pd_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in fp32 */
        float v = (float)mant * 0x1p-24f;
        return bits_f32(f32_bits(v) | sign);
    }
    if (exp == 31) /* inf, or NaN (made quiet, payload kept, as F16C does) */
        return bits_f32(sign | 0x7f800000u | (mant ? 0x400000u : 0) | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t pd_fp32_to_fp16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN: quiet, top payload bits kept (as F16C does) */
        return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff));
    if (a >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) {
        /* below the smallest normal half (2^-14): the result is subnormal
         * or zero. Adding 0.5 puts the half's mantissa in the low bits of
         * the float, rounded to nearest even by the FP adder itself. */
        float v = bits_f32(a) + 0.5f;
        return (uint16_t)(sign | (f32_bits(v) - 0x3f000000u));
    }
    uint32_t odd = (a >> 13) & 1;
    a += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
    return (uint16_t)(sign | (a >> 13));
}

float pd_bf16_to_fp32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t pd_fp32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: force quiet, as ggml does */
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static float load_fp16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return pd_fp16_to_fp32(h);
}

static void store_fp16(uint8_t *p, float f)
{
    uint16_t h = pd_fp32_to_fp16(f);
    memcpy(p, &h, 2);
}

/* ====== Quantize / dequantize ====== */

void pd_dequant_row_ref(pd_ggml_type_t type, const void *src, float *dst, uint32_t n)
{
    const uint8_t *s = src;
    switch (type) {
    case PD_GGML_TYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case PD_GGML_TYPE_F16:
        for (uint32_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * (size_t)i, 2);
            dst[i] = pd_fp16_to_fp32(h);
        }
        break;
    case PD_GGML_TYPE_BF16:
        for (uint32_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * (size_t)i, 2);
            dst[i] = pd_bf16_to_fp32(h);
        }
        break;
    case PD_GGML_TYPE_Q8_0:
        for (uint32_t b = 0; b < n / QK; b++) {
            const uint8_t *blk = s + (size_t)b * Q8_0_BYTES;
            float d = load_fp16(blk);
            for (int j = 0; j < QK; j++)
                dst[b * QK + j] = (float)(int8_t)blk[2 + j] * d;
        }
        break;
    case PD_GGML_TYPE_Q4_0:
        for (uint32_t b = 0; b < n / QK; b++) {
            const uint8_t *blk = s + (size_t)b * Q4_0_BYTES;
            float d = load_fp16(blk);
            for (int j = 0; j < QK / 2; j++) {
                dst[b * QK + j] = (float)((blk[2 + j] & 0x0f) - 8) * d;
                dst[b * QK + j + QK / 2] = (float)((blk[2 + j] >> 4) - 8) * d;
            }
        }
        break;
    case PD_GGML_TYPE_IQ4_NL: case PD_GGML_TYPE_Q2_K: case PD_GGML_TYPE_Q3_K:
    case PD_GGML_TYPE_Q4_K: case PD_GGML_TYPE_Q5_K: case PD_GGML_TYPE_Q6_K:
        pd_dequant_row_k_ref(type, src, dst, n);
        break;
    case PD_GGML_TYPE_Q8_K:
        pd_dequant_row_q8_k(src, dst, n);
        break;
    }
}

void pd_dequant_row(pd_ggml_type_t type, const void *src, float *dst, uint32_t n)
{
    if (pd_kern_has_avx2())
        pd_dequant_row_avx2(type, src, dst, n);
    else
        pd_dequant_row_ref(type, src, dst, n);
}

/* (int8_t)v for v in range (truncating, as C's conversion does); values
 * out of range or NaN (only from non-finite input) saturate instead of
 * being undefined behaviour. */
static int8_t clamp_i8(float v)
{
    if (v > -129.0f && v < 128.0f)
        return (int8_t)v;
    return v > 0.0f ? 127 : -128;
}

/* ggml's quantize_row_q8_0_ref: d = amax / 127, q = roundf(x * (1 / d)). */
void pd_quant_row_q8_0(const float *src, void *dst, uint32_t n)
{
    uint8_t *out = dst;
    for (uint32_t b = 0; b < n / QK; b++) {
        const float *x = src + (size_t)b * QK;
        uint8_t *blk = out + (size_t)b * Q8_0_BYTES;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++)
            amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_fp16(blk, d);
        for (int j = 0; j < QK; j++)
            blk[2 + j] = (uint8_t)clamp_i8(roundf(x[j] * id));
    }
}

/* ggml's quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8,
 * q = min(15, (int8_t)(x / d + 8.5)). */
void pd_quant_row_q4_0(const float *src, void *dst, uint32_t n)
{
    uint8_t *out = dst;
    for (uint32_t b = 0; b < n / QK; b++) {
        const float *x = src + (size_t)b * QK;
        uint8_t *blk = out + (size_t)b * Q4_0_BYTES;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_fp16(blk, d);
        for (int j = 0; j < QK / 2; j++) {
            int8_t v0 = clamp_i8(x[j] * id + 8.5f);
            int8_t v1 = clamp_i8(x[j + QK / 2] * id + 8.5f);
            uint8_t q0 = (uint8_t)(v0 < 15 ? v0 : 15);
            uint8_t q1 = (uint8_t)(v1 < 15 ? v1 : 15);
            blk[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* ====== Activations for quantized weights ====== */

size_t pd_kern_xq_bytes(pd_ggml_type_t wtype, uint32_t n_in, uint32_t n_rows)
{
    if (!is_quant(wtype))
        return 0;
    return (size_t)kern_row_bytes(pd_kern_act_type(wtype), n_in) * n_rows;
}

/* Activations are quantized the way ggml's CPU backend does it on AVX2
 * machines (quantize_row_q8_0 in arch/x86/quants.c), which is what the
 * llama.cpp referee runs: d = amax / 127 stored as fp16, and
 * q = round-half-even(x * (127 / amax)) -- not the _ref rounding used for
 * model files. Out-of-range values (NaN, inf) saturate like the SIMD packs. */
static int8_t q8_act(float v)
{
    float r = nearbyintf(v);
    if (r >= -128.0f && r <= 127.0f)
        return (int8_t)r;
    return -128; /* cvtps_epi32 gives INT_MIN, which the packs saturate */
}

void pd_kern_prepare_x_ref(pd_ggml_type_t wtype, const float *x, uint32_t x_stride, uint32_t n_in,
                           uint32_t n_rows, void *xq)
{
    if (!is_quant(wtype))
        return;
    if (pd_kern_act_type(wtype) == PD_GGML_TYPE_Q8_K) {
        const size_t rbk = kern_row_bytes(PD_GGML_TYPE_Q8_K, n_in);
        for (uint32_t r = 0; r < n_rows; r++)
            pd_quant_row_q8_k_ref(x + (size_t)r * x_stride, (uint8_t *)xq + r * rbk, n_in);
        return;
    }
    const size_t rb = kern_row_bytes(PD_GGML_TYPE_Q8_0, n_in);
    for (uint32_t r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * x_stride;
        uint8_t *out = (uint8_t *)xq + r * rb;
        for (uint32_t b = 0; b < n_in / QK; b++) {
            const float *v = xr + (size_t)b * QK;
            uint8_t *blk = out + (size_t)b * Q8_0_BYTES;
            float amax = 0.0f;
            for (int j = 0; j < QK; j++) {
                float a = fabsf(v[j]);
                amax = a > amax ? a : amax; /* maxps keeps the first on NaN */
            }
            store_fp16(blk, amax / 127.0f);
            const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            for (int j = 0; j < QK; j++)
                blk[2 + j] = (uint8_t)q8_act(v[j] * id);
        }
    }
}

void pd_kern_prepare_x(pd_ggml_type_t wtype, const float *x, uint32_t x_stride, uint32_t n_in,
                       uint32_t n_rows, void *xq)
{
    if (pd_kern_has_avx2())
        pd_kern_prepare_x_avx2(wtype, x, x_stride, n_in, n_rows, xq);
    else
        pd_kern_prepare_x_ref(wtype, x, x_stride, n_in, n_rows, xq);
}

void pd_kern_round_x(pd_ggml_type_t wtype, const float *x, uint32_t n_in, uint32_t n_rows,
                     void *xq, float *out)
{
    const pd_ggml_type_t at = pd_kern_act_type(wtype);
    const size_t rb = kern_row_bytes(at, n_in);
    pd_kern_prepare_x(wtype, x, n_in, n_in, n_rows, xq);
    for (uint32_t r = 0; r < n_rows; r++)
        pd_dequant_row(at, (const uint8_t *)xq + r * rb, out + (size_t)r * n_in, n_in);
}

/* ====== Skinny matmul: reference ====== */

/* Weight element k of row `row` as fp32 (float types only). */
static float w_elem(pd_ggml_type_t t, const uint8_t *row, uint32_t k)
{
    uint16_t h;
    switch (t) {
    case PD_GGML_TYPE_F32: {
        float f;
        memcpy(&f, row + 4 * (size_t)k, 4);
        return f;
    }
    case PD_GGML_TYPE_F16:
        memcpy(&h, row + 2 * (size_t)k, 2);
        return pd_fp16_to_fp32(h);
    case PD_GGML_TYPE_BF16:
        memcpy(&h, row + 2 * (size_t)k, 2);
        return pd_bf16_to_fp32(h);
    default: return 0.0f;
    }
}

/* Signed 4/8-bit weight value j of a Q block. */
static int q_elem(pd_ggml_type_t t, const uint8_t *blk, int j)
{
    if (t == PD_GGML_TYPE_Q8_0)
        return (int8_t)blk[2 + j];
    uint8_t b = blk[2 + (j & 15)];
    return (j < 16 ? (b & 0x0f) : (b >> 4)) - 8;
}

void pd_kern_skinny_ref(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                        uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                        uint32_t y_stride)
{
    const uint8_t *wd = w->data;
    const uint32_t n_in = w->n_in;
    if (w->type == PD_GGML_TYPE_IQ4_NL || pd_quant_is_k(w->type)) {
        pd_kern_skinny_k_ref(w->type, wd, w->row_bytes, n_in, o_begin, o_end, xq, n_rows, y,
                             y_stride);
        return;
    }
    const size_t xq_rb = kern_row_bytes(PD_GGML_TYPE_Q8_0, n_in);
    const size_t wblk = w->type == PD_GGML_TYPE_Q8_0 ? Q8_0_BYTES : Q4_0_BYTES;
    for (uint32_t o = o_begin; o < o_end; o++) {
        const uint8_t *row = wd + (size_t)o * w->row_bytes;
        for (uint32_t r = 0; r < n_rows; r++) {
            double acc = 0.0;
            if (is_quant(w->type)) {
                const uint8_t *xr = (const uint8_t *)xq + r * xq_rb;
                for (uint32_t b = 0; b < n_in / QK; b++) {
                    const uint8_t *wb = row + b * wblk;
                    const uint8_t *xb = xr + (size_t)b * Q8_0_BYTES;
                    int sumi = 0;
                    for (int j = 0; j < QK; j++)
                        sumi += q_elem(w->type, wb, j) * (int8_t)xb[2 + j];
                    acc += (double)sumi * ((double)load_fp16(wb) * (double)load_fp16(xb));
                }
            } else {
                const float *xr = x + (size_t)r * x_stride;
                for (uint32_t k = 0; k < n_in; k++)
                    acc += (double)w_elem(w->type, row, k) * (double)xr[k];
            }
            y[(size_t)r * y_stride + o] = (float)acc;
        }
    }
}

void pd_kern_skinny_qlanes_ref(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                               const void *xq, uint32_t n_rows, float *y, uint32_t y_stride)
{
    const uint8_t *wd = w->data;
    const uint32_t nb = w->n_in / QK;
    const size_t xq_rb = (size_t)nb * Q8_0_BYTES;
    const size_t wblk = w->type == PD_GGML_TYPE_Q8_0 ? Q8_0_BYTES : Q4_0_BYTES;
    for (uint32_t o = o_begin; o < o_end; o++) {
        const uint8_t *row = wd + (size_t)o * w->row_bytes;
        for (uint32_t r = 0; r < n_rows; r++) {
            const uint8_t *xr = (const uint8_t *)xq + r * xq_rb;
            float acc[8] = {0};
            for (uint32_t b = 0; b < nb; b++) {
                const uint8_t *wb = row + b * wblk, *xb = xr + (size_t)b * Q8_0_BYTES;
                const float s = load_fp16(wb) * load_fp16(xb);
                for (int i = 0; i < 8; i++) {
                    int p = 0;
                    for (int j = 4 * i; j < 4 * i + 4; j++)
                        p += q_elem(w->type, wb, j) * (int8_t)xb[2 + j];
                    acc[i] = fmaf((float)p, s, acc[i]);
                }
            }
            const float r0 = acc[4] + acc[0], r1 = acc[5] + acc[1];
            const float r2 = acc[6] + acc[2], r3 = acc[7] + acc[3];
            y[(size_t)r * y_stride + o] = (r0 + r2) + (r1 + r3);
        }
    }
}

/* The integer prefill kernel's definition (kernels.h, pd_kern_qg_*): one
 * float chain per (o, r), one fmaf per block in order from +0, with the
 * block's whole 32-element integer dot (exact in an int) and the one
 * rounded product of the two fp16 scales. */
void pd_kern_qg_ref(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                    uint32_t n_rows, float *y, uint32_t y_stride)
{
    const uint8_t *wd = w->data;
    const uint32_t nb = w->n_in / QK;
    const size_t xq_rb = (size_t)nb * Q8_0_BYTES;
    const size_t wblk = w->type == PD_GGML_TYPE_Q8_0 ? Q8_0_BYTES : Q4_0_BYTES;
    for (uint32_t o = o_begin; o < o_end; o++) {
        const uint8_t *row = wd + (size_t)o * w->row_bytes;
        for (uint32_t r = 0; r < n_rows; r++) {
            const uint8_t *xr = (const uint8_t *)xq + r * xq_rb;
            float acc = 0.0f;
            for (uint32_t b = 0; b < nb; b++) {
                const uint8_t *wb = row + b * wblk, *xb = xr + (size_t)b * Q8_0_BYTES;
                int dot = 0;
                for (int j = 0; j < QK; j++)
                    dot += q_elem(w->type, wb, j) * (int8_t)xb[2 + j];
                acc = fmaf((float)dot, load_fp16(wb) * load_fp16(xb), acc);
            }
            y[(size_t)r * y_stride + o] = acc;
        }
    }
}

void pd_kern_skinny(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                    uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                    uint32_t y_stride)
{
    /* The K-quants and IQ4_NL: kernels bit-identical to ggml's AVX2
     * products (Q4_K and Q6_K with VNNI on AVX-512 machines). */
    const bool k_type = pd_quant_is_k(w->type) || w->type == PD_GGML_TYPE_IQ4_NL;
    switch (pd_kern_isa()) {
    case PD_ISA_AVX512:
        if (k_type) {
            pd_kern_skinny_k_avx512(w, o_begin, o_end, xq, n_rows, y, y_stride);
            break;
        }
        if (w->type == PD_GGML_TYPE_F32 && n_rows >= 2)
            pd_kern_skinny_f32_avx512(w, o_begin, o_end, x, x_stride, n_rows, y, y_stride);
        else
            pd_kern_skinny_avx512(w, o_begin, o_end, x, x_stride, xq, n_rows, y, y_stride);
        break;
    case PD_ISA_AVX2:
        pd_kern_skinny_avx2(w, o_begin, o_end, x, x_stride, xq, n_rows, y, y_stride);
        break;
    default:
        pd_kern_skinny_ref(w, o_begin, o_end, x, x_stride, xq, n_rows, y, y_stride);
        break;
    }
}

/* As ggml's rms_norm: squares in float, summed in double; then
 * y = x * (1 / sqrtf(mean + eps)), then y * g (ggml_mul). */
void pd_kern_rmsnorm_ref(float *out, const float *x, const float *g, uint32_t n, float eps)
{
    double sum = 0.0;
    for (uint32_t i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = n ? (float)(sum / n) : 0.0f;
    const float scale = 1.0f / sqrtf(mean + eps);
    for (uint32_t i = 0; i < n; i++)
        out[i] = (x[i] * scale) * g[i];
}

/* As ggml's soft_max: subtract the max, expf, sum in double, scale by
 * 1/sum. */
void pd_kern_softmax_ref(float *x, uint32_t n)
{
    if (n == 0)
        return;
    float max = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (uint32_t i = 0; i < n; i++)
        x[i] *= inv;
}

void pd_kern_swiglu_ref(float *gate, const float *up, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

float pd_kern_dot_f32_ref(const float *a, const float *b, uint32_t n)
{
    double s = 0.0;
    for (uint32_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return (float)s;
}

void pd_kern_axpy_f32_ref(float *y, float a, const float *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

void pd_kern_fp32_to_fp16_ref(uint16_t *dst, const float *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        dst[i] = pd_fp32_to_fp16(x[i]);
}

void pd_kern_rmsnorm(float *out, const float *x, const float *g, uint32_t n, float eps)
{
    if (pd_kern_has_avx2())
        pd_kern_rmsnorm_avx2(out, x, g, n, eps);
    else
        pd_kern_rmsnorm_ref(out, x, g, n, eps);
}

void pd_kern_softmax(float *x, uint32_t n)
{
    if (pd_kern_has_avx2())
        pd_kern_softmax_avx2(x, n);
    else
        pd_kern_softmax_ref(x, n);
}

void pd_kern_swiglu(float *gate, const float *up, uint32_t n)
{
    if (pd_kern_has_avx2())
        pd_kern_swiglu_avx2(gate, up, n);
    else
        pd_kern_swiglu_ref(gate, up, n);
}

float pd_kern_dot_f32(const float *a, const float *b, uint32_t n)
{
    return pd_kern_has_avx2() ? pd_kern_dot_f32_avx2(a, b, n) : pd_kern_dot_f32_ref(a, b, n);
}

void pd_kern_axpy_f32(float *y, float a, const float *x, uint32_t n)
{
    if (pd_kern_has_avx2())
        pd_kern_axpy_f32_avx2(y, a, x, n);
    else
        pd_kern_axpy_f32_ref(y, a, x, n);
}

void pd_kern_fp32_to_fp16(uint16_t *dst, const float *x, uint32_t n)
{
    if (pd_kern_has_avx2())
        pd_kern_fp32_to_fp16_avx2(dst, x, n);
    else
        pd_kern_fp32_to_fp16_ref(dst, x, n);
}
