/* pd-kbench -- microbenchmark of the matmul kernels against the machine's
 * limits (memory read bandwidth, sgemm peak) and OpenBLAS.
 *
 *   pd-kbench [--threads N] [--json] [--quick] [--types f32,f16,bf16,q8_0,q4_0,
 *             q2_k,q3_k,q4_k,q5_k,q6_k,iq4_nl]
 *             [--rows 1,2,4,...] [--shape OUTxIN]... [--skinny-max N] [--stream-mb N]
 *   pd-kbench --limits [--threads N] [--json]
 *
 * --stream-mb N: copies of each weight matrix fill N MB and successive calls
 * use successive copies, so that with N above the last-level cache every
 * call reads its weights from DRAM (this machine's L3 holds 480 MiB: without
 * it, every default shape is cache-resident and "GB/s" exceeds the memory
 * read limit).
 *
 * --limits prints only the machine's limits, with --json as one object:
 *   {"mem_read_gb_s": X, "sgemm_gflops": Y, "threads": N}
 * (memory read: N threads summing a 512 MB buffer, 8 sequential streams
 * each; sgemm: cblas_sgemm 1536^3 with N OpenBLAS threads).
 *
 * Without --limits, for every shape (default 32000x768, 768x768, 2048x768),
 * type (default f32, f16, q8_0), row count (default 1..128) and thread
 * count (1 and N) it prints:
 *   matmul    pd_matmul as the engine calls it (skinny_max --skinny-max,
 *             default PD_SKINNY_DEFAULT_MAX)
 *   via-gemm  the same product forced through the sgemm path (rows <=
 *             skinny_max only), to find the crossover
 *   sgemm     cblas_sgemm on the fp32 weights (F32 only), sgemv for 1 row
 *   summary   rows-1 GB/s vs the memory limit, rows-8 / rows-1 time,
 *             rows-32 GFLOPS vs the sgemm limit, and the largest row count
 *             where the skinny kernel beat sgemm
 * GB/s counts the weight bytes, GFLOPS 2 * n_out * n_in * rows. Times are
 * the minimum over >= 0.25 s of calls (0.05 s with --quick): on a shared
 * machine other processes only ever add time. --json prints one JSON
 * object per line. --quick skips via-gemm and sgemm.
 *
 * Measured on the 2-core AMD EPYC (Zen 3, AVX2/FMA/F16C) this was tuned on,
 * idle machine, 2 threads (the kernel tunables in kernels_avx2.c come from
 * such runs):
 *   limits: memory read 37 GB/s (1 thread: 23), sgemm 183-190 GFLOPS
 *           (1 thread: 94)
 *   32000x768 F32  rows 1: 2.7 ms, 37 GB/s (99% of read); cblas_sgemv 3.4 ms
 *                  rows 8: 3.9 ms (1.5x rows 1); cblas_sgemm, 8 rows: 18 ms (1 thr)
 *                  rows 32: 11.1 ms, 141 GFLOPS (76% of the sgemm peak)
 *   32000x768 F16  rows 1: 1.3 ms (37 GB/s), rows 8: 2.8 ms, rows 32: 156 GFLOPS
 *   32000x768 Q8_0 rows 1: 0.69 ms (38 GB/s), rows 8: 3.5 ms, rows 32: 115 GFLOPS
 *   4096x4096 F32  rows 32: 131 GFLOPS; skinny vs sgemm crossover ~48-64 rows
 *   (F32), > 64 (F16), ~32 (Q8_0: PD_SKINNY_QUANT_MAX).
 */
#include <cblas.h>
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/args.h"
#include "engine/gguf.h"
#include "engine/kernels.h"
#include "engine/pool.h"
#include "engine/quants_k.h"

#define MAX_SHAPES 8
#define MAX_ROWS_LIST 16
#define MAX_TYPES 11
#define MIN_BENCH_S 0.25    /* time spent per measurement, seconds */
#define MIN_REPS 5
#define READ_BUF_BYTES (512u << 20) /* > L3, so the read test hits DRAM */

typedef struct {
    int threads;
    int json;
    int limits;
    int quick;
    unsigned skinny_max;
    int n_shapes;
    unsigned shape_out[MAX_SHAPES], shape_in[MAX_SHAPES];
    int n_rows_list;
    unsigned rows_list[MAX_ROWS_LIST];
    int n_types;
    pd_ggml_type_t types[MAX_TYPES];
    unsigned stream_mb; /* > 0: copies of the weights filling this many MB */
} opts_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Best (minimum) seconds per call of fn(ctx), over at least MIN_REPS calls
 * and min_s seconds, after one warm-up call. The minimum, not the median:
 * on a shared machine other processes only ever add time. */
typedef void (*bench_fn)(void *ctx);
static double bench(bench_fn fn, void *ctx, double min_s)
{
    double times[4096];
    int n = 0;
    fn(ctx);
    double t_start = pd_now_s();
    while (n < 4096 && (n < MIN_REPS || pd_now_s() - t_start < min_s)) {
        double t0 = pd_now_s();
        fn(ctx);
        times[n++] = pd_now_s() - t0;
    }
    qsort(times, (size_t)n, sizeof(double), cmp_double);
    return times[0];
}

/* ====== Memory read bandwidth ====== */

typedef struct {
    const float *buf;
    size_t n;       /* floats */
    float sink[64]; /* one per task, so the reads are not optimized away */
} read_ctx_t;

/* Sums n floats read as READ_STREAMS interleaved sequential streams (one
 * per contiguous part): a core's hardware prefetchers reach a higher
 * bandwidth on several streams than on one, as the skinny kernel sees when
 * it reads 8 weight rows at once. */
#define READ_STREAMS 8
__attribute__((target("avx2"))) static float sum_floats(const float *p, size_t n)
{
    const size_t part = n / READ_STREAMS / 16 * 16;
    __m256 s[READ_STREAMS];
    for (int j = 0; j < READ_STREAMS; j++)
        s[j] = _mm256_setzero_ps();
    for (size_t i = 0; i < part; i += 16)
        for (int j = 0; j < READ_STREAMS; j++) {
            const float *q = p + (size_t)j * part + i;
            s[j] = _mm256_add_ps(s[j], _mm256_add_ps(_mm256_load_ps(q), _mm256_load_ps(q + 8)));
        }
    __m256 t = s[0];
    for (int j = 1; j < READ_STREAMS; j++)
        t = _mm256_add_ps(t, s[j]);
    float out[8];
    _mm256_storeu_ps(out, t);
    return out[0] + out[7];
}

static void read_task(void *arg, int i, int n)
{
    read_ctx_t *c = arg;
    size_t per = c->n / (size_t)n / 32 * 32;
    c->sink[i % 64] += sum_floats(c->buf + per * (size_t)i, per);
}

typedef struct {
    pd_pool_t *pool;
    read_ctx_t rc;
    int n_tasks;
} read_bench_t;

static void read_run(void *arg)
{
    read_bench_t *b = arg;
    pd_pool_run(b->pool, read_task, &b->rc, b->n_tasks);
}

static double mem_read_gb_s(pd_pool_t *pool)
{
    float *buf = aligned_alloc(64, READ_BUF_BYTES);
    if (!buf)
        return 0.0;
    for (size_t i = 0; i < READ_BUF_BYTES / 4; i++)
        buf[i] = (float)(i & 1023);
    read_bench_t b = {.pool = pool, .rc = {.buf = buf, .n = READ_BUF_BYTES / 4},
                      .n_tasks = pd_pool_n_threads(pool)};
    double t = bench(read_run, &b, 1.0);
    free(buf);
    return (double)READ_BUF_BYTES / t * 1e-9;
}

/* ====== sgemm peak ====== */

typedef struct {
    int m, n, k;
    const float *a, *b;
    float *c;
} gemm_ctx_t;

static void gemm_run(void *arg)
{
    gemm_ctx_t *g = arg;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->m, g->n, g->k, 1.0f, g->a, g->k,
                g->b, g->k, 0.0f, g->c, g->n);
}

static void gemv_run(void *arg)
{
    gemm_ctx_t *g = arg;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, g->n, g->k, 1.0f, g->b, g->k, g->a, 1, 0.0f,
                g->c, 1);
}

static float *rand_floats(size_t n, unsigned seed)
{
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    return p;
}

static double sgemm_gflops(void)
{
    const int s = 1536;
    float *a = rand_floats((size_t)s * s, 1), *b = rand_floats((size_t)s * s, 2);
    float *c = rand_floats((size_t)s * s, 3);
    double gf = 0.0;
    if (a && b && c) {
        gemm_ctx_t g = {s, s, s, a, b, c};
        double t = bench(gemm_run, &g, 1.0);
        gf = 2.0 * s * s * (double)s / t * 1e-9;
    }
    free(a);
    free(b);
    free(c);
    return gf;
}

/* ====== pd_matmul ====== */

typedef struct {
    pd_pool_t *pool;
    const pd_mat_t *w;   /* (n_w) copies of the same weights, used in turn */
    unsigned n_w, next;
    const float *x;
    unsigned n_rows;
    float *y;
    void *scratch;
    unsigned skinny_max;
} mm_ctx_t;

static void mm_run(void *arg)
{
    mm_ctx_t *m = arg;
    const pd_mat_t *w = &m->w[m->next++ % m->n_w];
    pd_matmul(m->pool, w, m->x, m->n_rows, m->y, m->scratch, m->skinny_max);
}

/* Weights of the given type from fp32 values (n_out rows of n_in). */
static void *make_weights(pd_ggml_type_t t, const float *wf, unsigned n_out, unsigned n_in,
                          size_t *row_bytes)
{
    size_t rb = (size_t)pd_ggml_row_bytes(t, n_in);
    uint8_t *w = aligned_alloc(64, (rb * n_out + 63) / 64 * 64);
    if (!w)
        return NULL;
    for (unsigned o = 0; o < n_out; o++) {
        const float *src = wf + (size_t)o * n_in;
        uint8_t *dst = w + (size_t)o * rb;
        switch (t) {
        case PD_GGML_TYPE_F32: memcpy(dst, src, rb); break;
        case PD_GGML_TYPE_F16:
        case PD_GGML_TYPE_BF16:
            for (unsigned i = 0; i < n_in; i++) {
                uint16_t h = t == PD_GGML_TYPE_F16 ? pd_fp32_to_fp16(src[i]) : pd_fp32_to_bf16(src[i]);
                memcpy(dst + 2 * i, &h, 2);
            }
            break;
        case PD_GGML_TYPE_Q8_0: pd_quant_row_q8_0(src, dst, n_in); break;
        case PD_GGML_TYPE_Q4_0: pd_quant_row_q4_0(src, dst, n_in); break;
        case PD_GGML_TYPE_Q2_K: case PD_GGML_TYPE_Q3_K: case PD_GGML_TYPE_Q4_K:
        case PD_GGML_TYPE_Q5_K: case PD_GGML_TYPE_Q6_K: case PD_GGML_TYPE_IQ4_NL:
            pd_quant_row_k(t, src, dst, n_in);
            break;
        case PD_GGML_TYPE_Q8_K: break; /* not a weight type */
        }
    }
    *row_bytes = rb;
    return w;
}

static void print_row(const opts_t *o, const char *what, const char *type, unsigned n_out,
                      unsigned n_in, unsigned rows, int threads, double t, double bytes)
{
    double gb = bytes / t * 1e-9;
    double gf = 2.0 * n_out * (double)n_in * rows / t * 1e-9;
    if (o->json)
        printf("{\"bench\":\"%s\",\"type\":\"%s\",\"n_out\":%u,\"n_in\":%u,\"rows\":%u,"
               "\"threads\":%d,\"ms\":%.4f,\"gb_s\":%.2f,\"gflops\":%.2f}\n",
               what, type, n_out, n_in, rows, threads, t * 1e3, gb, gf);
    else
        printf("%-8s %-5s %6ux%-5u rows %3u thr %d  %9.3f ms  %7.2f GB/s  %7.2f GFLOPS\n", what,
               type, n_out, n_in, rows, threads, t * 1e3, gb, gf);
    fflush(stdout);
}

/* The machine's limits, measured first; the summaries compare against them. */
typedef struct {
    double mem_gb_s;
    double sgemm_gflops;
} limits_t;

/* One line per type and thread count: the ratios the design asks for
 * (batch 8 vs batch 1, batch 32 vs the sgemm peak, batch 1 vs the memory
 * bandwidth) and the largest row count for which the skinny kernel beat
 * sgemm (the skinny_max to use). t_mm / t_gemm: seconds per row count,
 * 0 when not measured. */
static void print_summary(const opts_t *o, const limits_t *lim, const char *type, unsigned n_out,
                          unsigned n_in, int threads, size_t wbytes, const double *t_mm,
                          const double *t_gemm)
{
    double t1 = 0, t8 = 0, t32 = 0;
    unsigned skinny_wins_to = 0;
    for (int i = 0; i < o->n_rows_list; i++) {
        unsigned r = o->rows_list[i];
        if (r == 1)
            t1 = t_mm[i];
        if (r == 8)
            t8 = t_mm[i];
        if (r == 32)
            t32 = t_mm[i];
        if (t_gemm[i] > 0 && t_mm[i] > 0 && t_mm[i] <= t_gemm[i])
            skinny_wins_to = r;
    }
    /* each figure as text, "-" (JSON null) when its row count was not run */
    char f_gb1[32] = "-", f_pm[32] = "-", f_r8[32] = "-", f_gf[32] = "-", f_ps[32] = "-";
    if (t1 > 0) {
        double gb1 = (double)wbytes / t1 * 1e-9;
        snprintf(f_gb1, sizeof(f_gb1), "%.2f", gb1);
        if (lim->mem_gb_s > 0)
            snprintf(f_pm, sizeof(f_pm), "%.1f", 100 * gb1 / lim->mem_gb_s);
    }
    if (t1 > 0 && t8 > 0)
        snprintf(f_r8, sizeof(f_r8), "%.2f", t8 / t1);
    if (t32 > 0) {
        double gf32 = 2.0 * n_out * (double)n_in * 32 / t32 * 1e-9;
        snprintf(f_gf, sizeof(f_gf), "%.2f", gf32);
        if (lim->sgemm_gflops > 0)
            snprintf(f_ps, sizeof(f_ps), "%.1f", 100 * gf32 / lim->sgemm_gflops);
    }
    if (o->json) {
#define JV(f) (strcmp((f), "-") == 0 ? "null" : (f))
        printf("{\"summary\":\"%s\",\"n_out\":%u,\"n_in\":%u,\"threads\":%d,"
               "\"rows1_gb_s\":%s,\"rows1_pct_mem\":%s,\"rows8_over_rows1\":%s,"
               "\"rows32_gflops\":%s,\"rows32_pct_sgemm\":%s,\"skinny_beats_sgemm_to\":%u}\n",
               type, n_out, n_in, threads, JV(f_gb1), JV(f_pm), JV(f_r8), JV(f_gf), JV(f_ps),
               skinny_wins_to);
#undef JV
    } else {
        printf("summary  %-5s %6ux%-5u thr %d  rows1 %s GB/s (%s%% of mem read)  rows8/rows1 "
               "%sx  rows32 %s GFLOPS (%s%% of sgemm peak)  skinny beats sgemm up to %u rows\n",
               type, n_out, n_in, threads, f_gb1, f_pm, f_r8, f_gf, f_ps, skinny_wins_to);
    }
    fflush(stdout);
}

static int bench_shape(const opts_t *o, const limits_t *lim, pd_pool_t *pools[2],
                       const int thr[2], unsigned n_out, unsigned n_in)
{
    unsigned max_rows = 1;
    for (int i = 0; i < o->n_rows_list; i++)
        max_rows = o->rows_list[i] > max_rows ? o->rows_list[i] : max_rows;
    float *wf = rand_floats((size_t)n_out * n_in, 7);
    float *x = rand_floats((size_t)max_rows * n_in, 8);
    float *y = aligned_alloc(64, ((size_t)max_rows * n_out * 4 + 63) / 64 * 64);
    if (!wf || !x || !y)
        goto fail;
    double min_s = o->quick ? 0.05 : MIN_BENCH_S;
    for (int ti = 0; ti < o->n_types; ti++) {
        pd_ggml_type_t t = o->types[ti];
        size_t rb;
        void *w = make_weights(t, wf, n_out, n_in, &rb);
        if (!w)
            goto fail;
        /* --stream-mb: the weights copied until they fill that many MB (more
         * than the last-level cache), each call using the next copy, so that
         * every call streams its weights from DRAM */
        const size_t wb = (rb * n_out + 63) / 64 * 64;
        unsigned n_w = o->stream_mb ? (unsigned)(((size_t)o->stream_mb << 20) / wb) : 1;
        n_w = n_w ? n_w : 1;
        uint8_t *copies = n_w > 1 ? aligned_alloc(64, wb * n_w) : NULL;
        pd_mat_t *mats = calloc(n_w, sizeof *mats);
        size_t sb = pd_matmul_scratch_bytes(&(pd_mat_t){w, t, n_out, n_in, rb}, max_rows);
        void *scratch = aligned_alloc(64, sb ? sb : 64);
        if (!scratch || !mats || (n_w > 1 && !copies)) {
            free(scratch);
            free(mats);
            free(copies);
            free(w);
            goto fail;
        }
        for (unsigned k = 0; k < n_w; k++) {
            if (copies)
                memcpy(copies + k * wb, w, rb * n_out);
            mats[k] = (pd_mat_t){copies ? copies + k * wb : w, t, n_out, n_in, rb};
        }
        const char *tn = pd_ggml_type_name(t);
        double wbytes = (double)rb * n_out;
        for (int pi = 0; pi < 2; pi++) {
            if (pi == 1 && thr[1] == thr[0])
                break;
            openblas_set_num_threads(thr[pi]);
            double t_mm[MAX_ROWS_LIST] = {0}, t_gemm[MAX_ROWS_LIST] = {0};
            for (int ri = 0; ri < o->n_rows_list; ri++) {
                unsigned rows = o->rows_list[ri];
                mm_ctx_t mc = {pools[pi], mats, n_w, 0, x, rows, y, scratch, o->skinny_max};
                t_mm[ri] = bench(mm_run, &mc, min_s);
                print_row(o, "matmul", tn, n_out, n_in, rows, thr[pi], t_mm[ri], wbytes);
                if (rows <= o->skinny_max && !o->quick) {
                    mc.skinny_max = 0; /* the same product through sgemm */
                    t_gemm[ri] = bench(mm_run, &mc, min_s);
                    print_row(o, "via-gemm", tn, n_out, n_in, rows, thr[pi], t_gemm[ri], wbytes);
                }
                if (t == PD_GGML_TYPE_F32 && !o->quick) {
                    gemm_ctx_t g = {(int)rows, (int)n_out, (int)n_in, x, wf, y};
                    print_row(o, "sgemm", tn, n_out, n_in, rows, thr[pi],
                              bench(gemm_run, &g, min_s), wbytes);
                    if (rows == 1)
                        print_row(o, "sgemv", tn, n_out, n_in, rows, thr[pi],
                                  bench(gemv_run, &g, min_s), wbytes);
                }
            }
            print_summary(o, lim, tn, n_out, n_in, thr[pi], (size_t)wbytes, t_mm, t_gemm);
        }
        free(scratch);
        free(mats);
        free(copies);
        free(w);
    }
    free(wf);
    free(x);
    free(y);
    return 0;
fail:
    fprintf(stderr, "pd-kbench: out of memory for %ux%u\n", n_out, n_in);
    free(wf);
    free(x);
    free(y);
    return 1;
}

/* ====== Options ====== */

static int parse_list(const char *s, unsigned *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v == 0 || v > 100000)
            return -1;
        out[n++] = (unsigned)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static int parse_types(const char *s, opts_t *o)
{
    static const struct {
        const char *name;
        pd_ggml_type_t t;
    } names[] = {{"f32", PD_GGML_TYPE_F32}, {"f16", PD_GGML_TYPE_F16},
                 {"bf16", PD_GGML_TYPE_BF16}, {"q8_0", PD_GGML_TYPE_Q8_0},
                 {"q4_0", PD_GGML_TYPE_Q4_0}, {"q2_k", PD_GGML_TYPE_Q2_K},
                 {"q3_k", PD_GGML_TYPE_Q3_K}, {"q4_k", PD_GGML_TYPE_Q4_K},
                 {"q5_k", PD_GGML_TYPE_Q5_K}, {"q6_k", PD_GGML_TYPE_Q6_K},
                 {"iq4_nl", PD_GGML_TYPE_IQ4_NL}};
    o->n_types = 0;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int found = 0;
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            if (strcmp(tok, names[i].name) == 0 && o->n_types < MAX_TYPES) {
                o->types[o->n_types++] = names[i].t;
                found = 1;
            }
        }
        if (!found)
            return -1;
    }
    return o->n_types > 0 ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: pd-kbench [--threads N] [--json] [--quick]\n"
            "                 [--types f32,f16,bf16,q8_0,q4_0,q2_k,q3_k,q4_k,q5_k,q6_k,iq4_nl]\n"
            "                 [--rows 1,2,4,...] [--shape OUTxIN]... [--skinny-max N]\n"
            "                 [--stream-mb N]\n"
            "       pd-kbench --limits [--threads N] [--json]\n");
}

int main(int argc, char **argv)
{
    opts_t o = {.threads = (int)sysconf(_SC_NPROCESSORS_ONLN), .skinny_max = PD_SKINNY_DEFAULT_MAX};
    static const unsigned def_rows[] = {1, 2, 4, 8, 16, 32, 64, 128};
    o.n_rows_list = (int)(sizeof(def_rows) / sizeof(def_rows[0]));
    memcpy(o.rows_list, def_rows, sizeof(def_rows));
    o.n_types = 3;
    o.types[0] = PD_GGML_TYPE_F32;
    o.types[1] = PD_GGML_TYPE_F16;
    o.types[2] = PD_GGML_TYPE_Q8_0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            o.json = 1;
        } else if (strcmp(a, "--limits") == 0) {
            o.limits = 1;
        } else if (strcmp(a, "--quick") == 0) {
            o.quick = 1;
        } else if (strcmp(a, "--stream-mb") == 0 && v) {
            uint32_t mb;
            if (pd_arg_u32("pd-kbench", "--stream-mb", v, 1, 1u << 16, &mb) != 0)
                return 2;
            o.stream_mb = mb;
            i++;
        } else if (strcmp(a, "--threads") == 0 && v) {
            uint32_t t;
            if (pd_arg_u32("pd-kbench", "--threads", v, 1, 1024, &t) != 0)
                return 2;
            o.threads = (int)t;
            i++;
        } else if (strcmp(a, "--skinny-max") == 0 && v) {
            uint32_t s;
            if (pd_arg_u32("pd-kbench", "--skinny-max", v, 0, 1u << 20, &s) != 0)
                return 2;
            o.skinny_max = s;
            i++;
        } else if (strcmp(a, "--rows") == 0 && v) {
            o.n_rows_list = parse_list(v, o.rows_list, MAX_ROWS_LIST);
            if (o.n_rows_list <= 0) {
                usage();
                return 2;
            }
            i++;
        } else if (strcmp(a, "--types") == 0 && v) {
            if (parse_types(v, &o) != 0) {
                usage();
                return 2;
            }
            i++;
        } else if (strcmp(a, "--shape") == 0 && v && o.n_shapes < MAX_SHAPES) {
            /* OUTxIN: two decimal numbers, nothing else (strtoul reports
             * overflow; sscanf would not). */
            char *x = NULL, *end = NULL;
            errno = 0;
            unsigned long so = v[0] >= '0' && v[0] <= '9' ? strtoul(v, &x, 10) : 0;
            unsigned long si =
                x && *x == 'x' && x[1] >= '0' && x[1] <= '9' ? strtoul(x + 1, &end, 10) : 0;
            if (errno || end == NULL || *end || so == 0 || si == 0 || so > (1ul << 24) ||
                si > (1ul << 24) || si % 32 != 0) {
                usage();
                return 2;
            }
            o.shape_out[o.n_shapes] = (unsigned)so;
            o.shape_in[o.n_shapes++] = (unsigned)si;
            i++;
        } else {
            usage();
            return 2;
        }
    }
    if (o.threads < 1 || o.threads > 256) {
        usage();
        return 2;
    }
    if (o.n_shapes == 0) {
        static const unsigned so[] = {32000, 768, 2048}, si[] = {768, 768, 768};
        o.n_shapes = 3;
        memcpy(o.shape_out, so, sizeof(so));
        memcpy(o.shape_in, si, sizeof(si));
    }
    const int thr[2] = {1, o.threads};
    pd_pool_t *pools[2] = {pd_pool_new(1), pd_pool_new(o.threads)};
    if (!pools[0] || !pools[1]) {
        fprintf(stderr, "pd-kbench: cannot start %d threads\n", o.threads);
        return 1;
    }
    int rc = 0;
    openblas_set_num_threads(o.threads);
    double gb = mem_read_gb_s(pools[1]);
    double gf = sgemm_gflops();
    if (o.json)
        printf("{\"mem_read_gb_s\": %.2f, \"sgemm_gflops\": %.2f, \"threads\": %d}\n", gb, gf,
               o.threads);
    else
        printf("limits: memory read %.2f GB/s, sgemm %.2f GFLOPS (%d threads, avx2=%d)\n", gb,
               gf, o.threads, pd_kern_has_avx2());
    fflush(stdout);
    const limits_t lim = {gb, gf};
    for (int s = 0; !o.limits && s < o.n_shapes && rc == 0; s++)
        rc = bench_shape(&o, &lim, pools, thr, o.shape_out[s], o.shape_in[s]);
    pd_pool_free(pools[0]);
    pd_pool_free(pools[1]);
    return rc;
}
