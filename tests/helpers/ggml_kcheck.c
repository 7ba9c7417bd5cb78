/* ggml_kcheck -- our K-quant and IQ4_NL code against llama.cpp's own, bit for
 * bit: the referee's ggml libraries (tests/oracle's npm package, the
 * haswell/AVX2 CPU variant) are loaded with dlopen and called on the same
 * inputs as ours.
 *
 *   ggml_kcheck DIR          DIR holds libggml-base.so and libggml-cpu-haswell.so
 *   ggml_kcheck --time DIR   also times both products (comment lines; see below)
 *
 * For each of Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_NL it checks, printing one
 * TAP line per check:
 *   quantize    pd_quant_row_k == ggml_quantize_chunk (no importance matrix:
 *               what llama-quantize writes), byte for byte
 *   dequantize  pd_dequant_row_k_ref and _avx2 == ggml's dequantize_row_*,
 *               float for float (also on blocks of random bytes)
 *   activations pd_kern_prepare_x (ref and AVX2) == ggml's x86
 *               quantize_row_q8_K / quantize_row_q8_0, byte for byte
 *   dot         pd_kern_skinny_avx2 == ggml_vec_dot_*_q8_K / _iq4_nl_q8_0
 *               (what llama.cpp runs per row), bit for bit, for rows alone
 *               and inside a batch
 * Exit status 0 when every check passed. Nothing here is a speed test;
 * --time only prints, as "#" lines, the cost of our skinny kernel and of
 * ggml's vec_dot on the same in-cache matrix (128 x 4096, one thread, the
 * minimum over 200 calls), for 1, 4 and 8 activation rows: a ratio taken in
 * one run, for docs/benchmarks.md.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/kernels.h"
#include "engine/quants_k.h"

typedef size_t (*quantize_chunk_fn)(int type, const float *src, void *dst, int64_t start,
                                    int64_t nrows, int64_t n_per_row, const float *imatrix);
typedef void (*dequant_fn)(const void *x, float *y, int64_t k);
typedef void (*quant_act_fn)(const float *x, void *y, int64_t k);
typedef void (*vec_dot_fn)(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy,
                           size_t by, int nrc);
typedef void (*cpu_init_fn)(void);

typedef struct {
    pd_ggml_type_t type;
    const char *name;      /* ggml's */
    const char *dequant;   /* symbol names */
    const char *vec_dot;
} type_case_t;

static const type_case_t CASES[] = {
    {PD_GGML_TYPE_Q2_K, "q2_K", "dequantize_row_q2_K", "ggml_vec_dot_q2_K_q8_K"},
    {PD_GGML_TYPE_Q3_K, "q3_K", "dequantize_row_q3_K", "ggml_vec_dot_q3_K_q8_K"},
    {PD_GGML_TYPE_Q4_K, "q4_K", "dequantize_row_q4_K", "ggml_vec_dot_q4_K_q8_K"},
    {PD_GGML_TYPE_Q5_K, "q5_K", "dequantize_row_q5_K", "ggml_vec_dot_q5_K_q8_K"},
    {PD_GGML_TYPE_Q6_K, "q6_K", "dequantize_row_q6_K", "ggml_vec_dot_q6_K_q8_K"},
    {PD_GGML_TYPE_IQ4_NL, "iq4_nl", "dequantize_row_iq4_nl", "ggml_vec_dot_iq4_nl_q8_0"},
};

static int n_fail;

static void tap(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tap(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf(ok ? "ok - " : "not ok - ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (!ok)
        n_fail++;
}

/* ====== Inputs ====== */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static float uniform(void)
{
    return (float)((next_u64() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

/* Row r of n values in one of several distributions: gaussian-like, with
 * outliers, all of one sign, with zero groups, tiny, exact ties. */
static void make_row(float *x, uint32_t n, uint32_t r)
{
    for (uint32_t i = 0; i < n; i++) {
        float g = uniform() + uniform() + uniform(); /* roughly normal */
        switch (r % 7) {
        case 0: x[i] = g; break;
        case 1: x[i] = (next_u64() % 97 == 0) ? g * 40.0f : g * 0.1f; break;
        case 2: x[i] = fabsf(g) + 0.01f; break;
        case 3: x[i] = (i / 16) % 3 == 0 ? 0.0f : g; break;
        case 4: x[i] = g * 1e-6f; break;
        case 5: x[i] = (float)((int)(next_u64() % 17) - 8) * 0.25f; break;
        default: x[i] = -fabsf(g) * 3.0f; break;
        }
    }
}

/* ====== Checks ====== */

static void check_quantize(const type_case_t *c, quantize_chunk_fn qc, uint32_t n, uint32_t rows)
{
    const size_t rb = pd_ggml_row_bytes(c->type, n);
    float *x = malloc(sizeof(float) * n * rows);
    uint8_t *a = calloc(rows, rb), *b = calloc(rows, rb);
    for (uint32_t r = 0; r < rows; r++)
        make_row(x + (size_t)r * n, n, r);
    qc((int)c->type, x, a, 0, rows, n, NULL);
    for (uint32_t r = 0; r < rows; r++)
        pd_quant_row_k(c->type, x + (size_t)r * n, b + r * rb, n);
    size_t diff = 0;
    for (size_t i = 0; i < rows * rb; i++)
        diff += a[i] != b[i];
    tap(diff == 0, "%s quantize: %u rows of %u byte-identical to ggml_quantize_chunk (%zu of "
        "%zu bytes differ)", c->name, rows, n, diff, rows * rb);
    free(x);
    free(a);
    free(b);
}

/* Random bytes with finite fp16 scales: every code and scale pattern. */
static void random_blocks(pd_ggml_type_t t, uint8_t *w, size_t n_blocks)
{
    const size_t bb = pd_ggml_block_bytes(t);
    for (size_t i = 0; i < n_blocks * bb; i++)
        w[i] = (uint8_t)next_u64();
    uint16_t bits;
    const char *field;
    int64_t bad;
    while ((bad = pd_quant_find_bad_scale(t, w, n_blocks, &bits, &field)) >= 0) {
        size_t at = 0;
        switch (t) {
        case PD_GGML_TYPE_Q2_K: at = strcmp(field, "d") == 0 ? 80 : 82; break;
        case PD_GGML_TYPE_Q3_K: at = 108; break;
        case PD_GGML_TYPE_Q4_K: case PD_GGML_TYPE_Q5_K: at = strcmp(field, "d") == 0 ? 0 : 2; break;
        case PD_GGML_TYPE_Q6_K: at = 208; break;
        default: at = 0; break;
        }
        w[(size_t)bad * bb + at + 1] &= 0xbf; /* exponent no longer all ones */
    }
}

static void check_dequantize(const type_case_t *c, dequant_fn deq, quantize_chunk_fn qc)
{
    const uint32_t n = 2048;
    const size_t rb = pd_ggml_row_bytes(c->type, n);
    uint8_t *w = malloc(rb);
    float *x = malloc(sizeof(float) * n), *a = malloc(sizeof(float) * n);
    float *b = malloc(sizeof(float) * n), *v = malloc(sizeof(float) * n);
    int ok = 1;
    for (int round = 0; round < 16 && ok; round++) {
        if (round % 2 == 0) {
            random_blocks(c->type, w, n / pd_ggml_block_elems(c->type));
        } else {
            make_row(x, n, (uint32_t)round);
            qc((int)c->type, x, w, 0, 1, n, NULL);
        }
        deq(w, a, n);
        pd_dequant_row_k_ref(c->type, w, b, n);
        pd_dequant_row_k_avx2(c->type, w, v, n);
        ok = memcmp(a, b, sizeof(float) * n) == 0 && memcmp(a, v, sizeof(float) * n) == 0;
    }
    tap(ok, "%s dequantize: ref and AVX2 float-identical to ggml's (random and quantized "
        "blocks)", c->name);
    free(w);
    free(x);
    free(a);
    free(b);
    free(v);
}

static void check_activations(quant_act_fn q8k, quant_act_fn q80)
{
    const uint32_t n = 4096, rows = 7;
    float *x = malloc(sizeof(float) * n * rows);
    for (uint32_t r = 0; r < rows; r++)
        make_row(x + (size_t)r * n, n, r);
    x[5] = NAN; /* one NaN lane in a block (the block is garbage either way) */
    for (int k = 0; k < 2; k++) {
        const pd_ggml_type_t wt = k == 0 ? PD_GGML_TYPE_Q4_K : PD_GGML_TYPE_IQ4_NL;
        const size_t bytes = pd_kern_xq_bytes(wt, n, rows), rb = bytes / rows;
        uint8_t *a = calloc(1, bytes), *b = calloc(1, bytes), *v = calloc(1, bytes);
        for (uint32_t r = 0; r < rows; r++)
            (k == 0 ? q8k : q80)(x + (size_t)r * n, a + r * rb, n);
        pd_kern_prepare_x_ref(wt, x, n, n, rows, b);
        pd_kern_prepare_x_avx2(wt, x, n, n, rows, v);
        tap(memcmp(a, b, bytes) == 0 && memcmp(a, v, bytes) == 0,
            "%s activations: ref and AVX2 byte-identical to ggml's x86 quantize_row_%s",
            k == 0 ? "q8_K" : "q8_0", k == 0 ? "q8_K" : "q8_0");
        free(a);
        free(b);
        free(v);
    }
    free(x);
}

static void check_dot(const type_case_t *c, vec_dot_fn dot, quantize_chunk_fn qc, uint32_t n)
{
    const uint32_t n_out = 9, n_rows = 6;
    const size_t rb = pd_ggml_row_bytes(c->type, n);
    uint8_t *w = malloc(rb * n_out);
    float *x = malloc(sizeof(float) * n * (n_out > n_rows ? n_out : n_rows));
    for (uint32_t o = 0; o < n_out; o++)
        make_row(x + (size_t)o * n, n, o);
    qc((int)c->type, x, w, 0, n_out, n, NULL);
    for (uint32_t r = 0; r < n_rows; r++)
        make_row(x + (size_t)r * n, n, r + 3);
    const size_t xqb = pd_kern_xq_bytes(c->type, n, n_rows), xrb = xqb / n_rows;
    uint8_t *xq = malloc(xqb);
    pd_kern_prepare_x(c->type, x, n, n, n_rows, xq);
    pd_mat_t m = {w, c->type, n_out, n, rb};
    float *yb = malloc(sizeof(float) * n_out * n_rows), y1[16];
    pd_kern_skinny_avx2(&m, 0, n_out, x, n, xq, n_rows, yb, n_out);
    int same = 1;
    double worst = 0;
    for (uint32_t r = 0; r < n_rows; r++) {
        pd_kern_skinny_avx2(&m, 0, n_out, x + (size_t)r * n, n, xq + r * xrb, 1, y1, n_out);
        for (uint32_t o = 0; o < n_out; o++) {
            float s = 0;
            dot((int)n, &s, 0, w + o * rb, 0, xq + r * xrb, 0, 1);
            if (memcmp(&s, &y1[o], 4) != 0 || memcmp(&s, &yb[r * n_out + o], 4) != 0) {
                same = 0;
                double d = fabs((double)s - y1[o]) / (fabs((double)s) + 1e-30);
                worst = d > worst ? d : worst;
            }
        }
    }
    tap(same, "%s dot, rows of %u: bit-identical to ggml's %s alone and in a batch of %u "
        "(worst relative difference %.3g)", c->name, n, c->vec_dot, n_rows, worst);
    free(w);
    free(x);
    free(xq);
    free(yb);
}

/* ====== Timing (--time) ====== */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void time_dot(const type_case_t *c, vec_dot_fn dot, quantize_chunk_fn qc, uint32_t n_rows)
{
    const uint32_t n_in = 4096, n_out = 128;
    const size_t rb = pd_ggml_row_bytes(c->type, n_in);
    uint8_t *w = malloc(rb * n_out);
    float *x = malloc(sizeof(float) * n_in * n_out), *y = malloc(sizeof(float) * n_out * 8);
    for (uint32_t o = 0; o < n_out; o++)
        make_row(x + (size_t)o * n_in, n_in, o);
    qc((int)c->type, x, w, 0, n_out, n_in, NULL);
    const size_t xqb = pd_kern_xq_bytes(c->type, n_in, n_rows), xrb = xqb / n_rows;
    uint8_t *xq = malloc(xqb);
    pd_kern_prepare_x(c->type, x, n_in, n_in, n_rows, xq);
    pd_mat_t m = {w, c->type, n_out, n_in, rb};
    double ours = 1e9, theirs = 1e9;
    for (int rep = 0; rep < 200; rep++) {
        double t0 = now_s();
        pd_kern_skinny_avx2(&m, 0, n_out, NULL, n_in, xq, n_rows, y, n_out);
        double t1 = now_s();
        for (uint32_t r = 0; r < n_rows; r++)
            for (uint32_t o = 0; o < n_out; o++)
                dot((int)n_in, &y[r * n_out + o], 0, w + o * rb, 0, xq + r * xrb, 0, 1);
        double t2 = now_s();
        ours = t1 - t0 < ours ? t1 - t0 : ours;
        theirs = t2 - t1 < theirs ? t2 - t1 : theirs;
    }
    const double per = 1e9 * 256.0 / ((double)n_in * n_out * n_rows); /* ns per 256 weights x row */
    printf("# time %-6s rows %u: ours %.2f ns, ggml %.2f ns per 256 weights and row "
           "(ours / ggml %.2f); ours reads %.1f GB/s of weights\n", c->name, n_rows, ours * per,
           theirs * per, ours / theirs, (double)rb * n_out / ours * 1e-9);
    free(w);
    free(x);
    free(y);
    free(xq);
}

int main(int argc, char **argv)
{
    const bool timing = argc == 3 && strcmp(argv[1], "--time") == 0;
    if (timing) {
        argv++;
        argc--;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: ggml_kcheck [--time] DIR (with libggml-base.so, "
                "libggml-cpu-haswell.so)\n");
        return 2;
    }
    if (!pd_kern_has_avx2()) {
        printf("1..0 # SKIP no AVX2 on this CPU: the bit-identity checks need it\n");
        return 0;
    }
    /* the plan: two activation checks, then per type quantize, dequantize
     * and three dot sizes */
    printf("1..%zu\n", 2 + 5 * (sizeof CASES / sizeof CASES[0]));
    char path[4096];
    snprintf(path, sizeof path, "%s/libggml-base.so", argv[1]);
    void *base = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    snprintf(path, sizeof path, "%s/libggml-cpu-haswell.so", argv[1]);
    void *cpu = base ? dlopen(path, RTLD_NOW | RTLD_GLOBAL) : NULL;
    if (cpu == NULL) {
        printf("not ok - load llama.cpp's ggml from %s: %s\n", argv[1], dlerror());
        return 1;
    }
    cpu_init_fn init = (cpu_init_fn)dlsym(cpu, "ggml_cpu_init");
    quantize_chunk_fn qc = (quantize_chunk_fn)dlsym(base, "ggml_quantize_chunk");
    quant_act_fn q8k = (quant_act_fn)dlsym(cpu, "quantize_row_q8_K");
    quant_act_fn q80 = (quant_act_fn)dlsym(cpu, "quantize_row_q8_0");
    if (!init || !qc || !q8k || !q80) {
        printf("not ok - llama.cpp's ggml lacks a symbol this check calls\n");
        return 1;
    }
    init();
    check_activations(q8k, q80);
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const type_case_t *c = &CASES[i];
        dequant_fn deq = (dequant_fn)dlsym(base, c->dequant);
        vec_dot_fn dot = (vec_dot_fn)dlsym(cpu, c->vec_dot);
        if (!deq || !dot) {
            tap(0, "%s: symbols %s / %s found", c->name, c->dequant, c->vec_dot);
            continue;
        }
        check_quantize(c, qc, 2048, 21);
        check_dequantize(c, deq, qc);
        const bool nl = c->type == PD_GGML_TYPE_IQ4_NL;
        check_dot(c, dot, qc, nl ? 32 * 7 : 256);
        check_dot(c, dot, qc, nl ? 32 * 96 : 256 * 9);
        check_dot(c, dot, qc, nl ? 32 * 129 : 256 * 18);
        for (uint32_t rows = 1; timing && rows <= 8; rows *= rows == 1 ? 4 : 2)
            time_dot(c, dot, qc, rows);
    }
    return n_fail ? 1 : 0;
}
