/* test_gguf.c -- GGUF reader/writer: round trip, getters, writer errors and
 * a hostile corpus (every truncation, huge counts, bad types, bad layout),
 * each refused with the right code and a message naming the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/gguf.h"

/* ====== Helpers ====== */

static void tmp_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "/tmp/test_gguf.%d.%s", (int)getpid(), name);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void spill(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Deterministic tensor bytes: byte i of the tensor seeded s is s + 7 i. */
typedef struct {
    uint8_t seed;
    bool should_fail;
} fill_ctx_t;

static int fill_pattern(void *ctx, void *dst, uint64_t n_bytes)
{
    fill_ctx_t *c = ctx;
    if (c->should_fail)
        return PD_EIO;
    uint8_t *d = dst;
    for (uint64_t i = 0; i < n_bytes; i++)
        d[i] = (uint8_t)(c->seed + 7 * i);
    return 0;
}

static bool has_pattern(const void *p, uint64_t n, uint8_t seed)
{
    const uint8_t *d = p;
    for (uint64_t i = 0; i < n; i++)
        if (d[i] != (uint8_t)(seed + 7 * i))
            return false;
    return true;
}

/* ====== Byte builder (hand-made files) ====== */

typedef struct {
    uint8_t *p;
    size_t len;
    size_t cap;
} bb_t;

static void bb_put(bb_t *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void bb_u32(bb_t *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(bb_t *b, uint64_t v) { bb_put(b, &v, 8); }

static void bb_str(bb_t *b, const char *s)
{
    bb_u64(b, strlen(s));
    bb_put(b, s, strlen(s));
}

static void bb_zeros(bb_t *b, size_t n)
{
    static const uint8_t z[256];
    while (n > 0) {
        size_t k = n < sizeof z ? n : sizeof z;
        bb_put(b, z, k);
        n -= k;
    }
}

static void bb_pad(bb_t *b, size_t align)
{
    bb_zeros(b, (align - b->len % align) % align);
}

static void bb_header(bb_t *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    bb_put(b, "GGUF", 4);
    bb_u32(b, version);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}

static void bb_kv_u32(bb_t *b, const char *key, uint32_t v)
{
    bb_str(b, key);
    bb_u32(b, PD_GGUF_TYPE_UINT32);
    bb_u32(b, v);
}

typedef struct {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[6];
    uint32_t type;
    uint64_t offset;
} tinfo_t;

static void bb_tinfo(bb_t *b, const tinfo_t *t)
{
    bb_str(b, t->name);
    bb_u32(b, t->n_dims);
    for (uint32_t d = 0; d < t->n_dims && d < 6; d++)
        bb_u64(b, t->ne[d]);
    bb_u32(b, t->type);
    bb_u64(b, t->offset);
}

/* A file with one kv ("general.name") and the given tensor infos, padded
 * to 32, then data_bytes of zeros. */
static void bb_tensor_file(bb_t *b, const tinfo_t *ts, size_t n, size_t data_bytes)
{
    bb_header(b, 3, n, 1);
    bb_str(b, "general.name");
    bb_u32(b, PD_GGUF_TYPE_STRING);
    bb_str(b, "hostile");
    for (size_t i = 0; i < n; i++)
        bb_tinfo(b, &ts[i]);
    bb_pad(b, 32);
    bb_zeros(b, data_bytes);
}

/* Opens an exact-size copy (so ASan sees any overread) and checks it is
 * refused with code and a message containing every needle. */
static void expect_refused_buf(const void *buf, size_t len, int code, const char *needle1,
                               const char *needle2)
{
    void *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, buf, len);
    pd_err_t err = {0};
    pd_gguf_t *g = pd_gguf_open_mem(copy, len, &err);
    printf("#   %s\n", err.msg);
    assert_null(g);
    assert_int_equal(err.code, code);
    assert_non_null(strstr(err.msg, "gguf: "));
    if (needle1)
        assert_non_null(strstr(err.msg, needle1));
    if (needle2)
        assert_non_null(strstr(err.msg, needle2));
    free(copy);
}

static void expect_refused(bb_t *b, int code, const char *needle1, const char *needle2)
{
    expect_refused_buf(b->p, b->len, code, needle1, needle2);
    free(b->p);
    memset(b, 0, sizeof *b);
}

static pd_gguf_t *expect_ok(bb_t *b)
{
    pd_err_t err = {0};
    pd_gguf_t *g = pd_gguf_open_mem(b->p, b->len, &err);
    if (g == NULL)
        printf("# unexpected: %s\n", err.msg);
    assert_non_null(g);
    return g;
}

/* ====== Type helpers ====== */

static void test_type_helpers(void **state)
{
    (void)state;
    assert_int_equal(pd_ggml_block_elems(PD_GGML_TYPE_F32), 1);
    assert_int_equal(pd_ggml_block_elems(PD_GGML_TYPE_Q8_0), 32);
    assert_int_equal(pd_ggml_block_elems(PD_GGML_TYPE_Q4_0), 32);
    assert_int_equal(pd_ggml_block_bytes(PD_GGML_TYPE_F32), 4);
    assert_int_equal(pd_ggml_block_bytes(PD_GGML_TYPE_F16), 2);
    assert_int_equal(pd_ggml_block_bytes(PD_GGML_TYPE_BF16), 2);
    assert_int_equal(pd_ggml_block_bytes(PD_GGML_TYPE_Q8_0), 34);
    assert_int_equal(pd_ggml_block_bytes(PD_GGML_TYPE_Q4_0), 18);
    assert_int_equal(pd_ggml_row_bytes(PD_GGML_TYPE_Q8_0, 64), 68);
    assert_int_equal(pd_ggml_row_bytes(PD_GGML_TYPE_Q4_0, 96), 54);
    assert_int_equal(pd_ggml_row_bytes(PD_GGML_TYPE_BF16, 3), 6);
    assert_int_equal(pd_ggml_row_bytes(PD_GGML_TYPE_Q8_0, 33), 0);
    assert_int_equal(pd_ggml_row_bytes(PD_GGML_TYPE_F32, UINT64_MAX / 2), 0); /* overflow */
    assert_int_equal(pd_ggml_row_bytes((pd_ggml_type_t)6, 32), 0);
    assert_true(pd_ggml_type_supported(30));
    assert_false(pd_ggml_type_supported(6));
    assert_false(pd_ggml_type_supported(99));
    assert_string_equal(pd_ggml_type_name(PD_GGML_TYPE_Q8_0), "q8_0");
    assert_string_equal(pd_ggml_type_name(PD_GGML_TYPE_BF16), "bf16");
    assert_string_equal(pd_ggml_type_name((pd_ggml_type_t)6), "q5_0");
    assert_string_equal(pd_ggml_type_name((pd_ggml_type_t)99), "?");
    assert_string_equal(pd_gguf_type_name(PD_GGUF_TYPE_FLOAT64), "float64");
    assert_string_equal(pd_gguf_type_name((pd_gguf_type_t)13), "?");
}

/* ====== Round trip ====== */

static const uint8_t a_u8[] = {1, 2, 255};
static const int8_t a_i8[] = {-128, 0, 127};
static const uint16_t a_u16[] = {0, 65535};
static const int16_t a_i16[] = {-32768, 5, 32767};
static const uint32_t a_u32[] = {7, 4000000000u, 0, 9};
static const int32_t a_i32[] = {-2000000000, 2000000000};
static const float a_f32[] = {0.5f, -1e30f, 3.25f};
static const uint8_t a_bool[] = {1, 0, 1};
static const uint64_t a_u64[] = {UINT64_MAX, 1};
static const int64_t a_i64[] = {INT64_MIN, INT64_MAX, -1};
static const double a_f64[] = {1e300, -2.5};
static const char *const a_str[] = {"<s>", "", "h\xc3\xa9llo", "a\0b"};
static const size_t a_str_len[] = {3, 0, 6, 3};

typedef struct {
    const char *key;
    pd_gguf_type_t type;
    const void *data;
    uint64_t n;
} arr_case_t;

static const arr_case_t arr_cases[] = {
    {"a.u8", PD_GGUF_TYPE_UINT8, a_u8, 3},     {"a.i8", PD_GGUF_TYPE_INT8, a_i8, 3},
    {"a.u16", PD_GGUF_TYPE_UINT16, a_u16, 2},  {"a.i16", PD_GGUF_TYPE_INT16, a_i16, 3},
    {"a.u32", PD_GGUF_TYPE_UINT32, a_u32, 4},  {"a.i32", PD_GGUF_TYPE_INT32, a_i32, 2},
    {"a.f32", PD_GGUF_TYPE_FLOAT32, a_f32, 3}, {"a.bool", PD_GGUF_TYPE_BOOL, a_bool, 3},
    {"a.u64", PD_GGUF_TYPE_UINT64, a_u64, 2},  {"a.i64", PD_GGUF_TYPE_INT64, a_i64, 3},
    {"a.f64", PD_GGUF_TYPE_FLOAT64, a_f64, 2}, {"a.empty", PD_GGUF_TYPE_UINT32, a_u32, 0},
};
#define N_ARR_CASES (sizeof arr_cases / sizeof arr_cases[0])

typedef struct {
    const char *name;
    pd_ggml_type_t type;
    uint32_t n_dims;
    uint64_t ne[4];
    uint64_t n_bytes;
} tensor_case_t;

/* The last tensor is 32 bytes, so the file ends exactly where it ends and
 * every shorter prefix of the file is invalid. */
static const tensor_case_t tensor_cases[] = {
    {"f32.1d", PD_GGML_TYPE_F32, 1, {64, 1, 1, 1}, 256},
    {"f16.2d", PD_GGML_TYPE_F16, 2, {8, 3, 1, 1}, 48},
    {"bf16.3d", PD_GGML_TYPE_BF16, 3, {4, 2, 3, 1}, 48},
    {"q8_0.2d", PD_GGML_TYPE_Q8_0, 2, {64, 2, 1, 1}, 136},
    {"q4_0.4d", PD_GGML_TYPE_Q4_0, 4, {32, 1, 2, 2}, 72},
    {"tail", PD_GGML_TYPE_F32, 1, {8, 1, 1, 1}, 32},
};
#define N_TENSOR_CASES (sizeof tensor_cases / sizeof tensor_cases[0])
#define N_SCALARS 13

static fill_ctx_t fill_ctxs[N_TENSOR_CASES];

/* Writes the round-trip file: 13 scalars, every numeric array type, string
 * arrays, and one tensor of each supported type. */
static void write_full_file(const char *path, uint32_t version)
{
    pd_gguf_writer_t *w = pd_gguf_writer_new(version);
    assert_non_null(w);
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -((int64_t)1 << 40);
    double f64 = 2.25;
    assert_int_equal(pd_gguf_writer_add_val(w, "t.u8", PD_GGUF_TYPE_UINT8, &u8), 0);
    assert_int_equal(pd_gguf_writer_add_val(w, "t.i8", PD_GGUF_TYPE_INT8, &i8), 0);
    assert_int_equal(pd_gguf_writer_add_val(w, "t.u16", PD_GGUF_TYPE_UINT16, &u16), 0);
    assert_int_equal(pd_gguf_writer_add_val(w, "t.i16", PD_GGUF_TYPE_INT16, &i16), 0);
    assert_int_equal(pd_gguf_writer_add_u32(w, "t.u32", 4000000000u), 0);
    assert_int_equal(pd_gguf_writer_add_i32(w, "t.i32", -2000000000), 0);
    assert_int_equal(pd_gguf_writer_add_f32(w, "t.f32", 1.5f), 0);
    assert_int_equal(pd_gguf_writer_add_bool(w, "t.bool", true), 0);
    assert_int_equal(pd_gguf_writer_add_str(w, "t.str", "hello, gguf"), 0);
    assert_int_equal(pd_gguf_writer_add_u64(w, "t.u64", ((uint64_t)1 << 40) + 3), 0);
    assert_int_equal(pd_gguf_writer_add_val(w, "t.i64", PD_GGUF_TYPE_INT64, &i64), 0);
    assert_int_equal(pd_gguf_writer_add_val(w, "t.f64", PD_GGUF_TYPE_FLOAT64, &f64), 0);
    assert_int_equal(pd_gguf_writer_add_str(w, "t.empty_str", ""), 0);
    for (size_t i = 0; i < N_ARR_CASES; i++)
        assert_int_equal(pd_gguf_writer_add_arr(w, arr_cases[i].key, arr_cases[i].type,
                                                arr_cases[i].data, arr_cases[i].n), 0);
    assert_int_equal(pd_gguf_writer_add_arr_str(w, "a.str", a_str, a_str_len, 4), 0);
    assert_int_equal(pd_gguf_writer_add_arr_str(w, "a.str_nul", a_str, NULL, 3), 0);
    assert_int_equal(pd_gguf_writer_add_arr_str(w, "a.str_empty", NULL, NULL, 0), 0);
    for (size_t i = 0; i < N_TENSOR_CASES; i++) {
        const tensor_case_t *t = &tensor_cases[i];
        fill_ctxs[i] = (fill_ctx_t){.seed = (uint8_t)(11 * i + 1)};
        assert_int_equal(pd_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne,
                                                   fill_pattern, &fill_ctxs[i]), 0);
    }
    pd_err_t err = {0};
    int rc = pd_gguf_writer_write(w, path, &err);
    if (rc != 0)
        printf("# %s\n", err.msg);
    assert_int_equal(rc, 0);
    pd_gguf_writer_free(w);
}

static void check_scalars(const pd_gguf_t *g)
{
    pd_err_t err = {0};
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    bool b;
    pd_gguf_str_t s;
    assert_int_equal(pd_gguf_get_u32(g, "t.u8", &u32, &err), 0);
    assert_int_equal(u32, 200);
    assert_int_equal(pd_gguf_get_i64(g, "t.i8", &i64, &err), 0);
    assert_int_equal(i64, -100);
    assert_int_equal(pd_gguf_get_u64(g, "t.u16", &u64, &err), 0);
    assert_int_equal(u64, 60000);
    assert_int_equal(pd_gguf_get_i64(g, "t.i16", &i64, &err), 0);
    assert_int_equal(i64, -30000);
    assert_int_equal(pd_gguf_get_u32(g, "t.u32", &u32, &err), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(pd_gguf_get_i64(g, "t.i32", &i64, &err), 0);
    assert_int_equal(i64, -2000000000);
    assert_int_equal(pd_gguf_get_f32(g, "t.f32", &f, &err), 0);
    assert_true(f == 1.5f);
    assert_int_equal(pd_gguf_get_bool(g, "t.bool", &b, &err), 0);
    assert_true(b);
    assert_int_equal(pd_gguf_get_str(g, "t.str", &s, &err), 0);
    assert_int_equal(s.len, 11);
    assert_memory_equal(s.ptr, "hello, gguf", 11);
    assert_int_equal(pd_gguf_get_u64(g, "t.u64", &u64, &err), 0);
    assert_true(u64 == ((uint64_t)1 << 40) + 3);
    assert_int_equal(pd_gguf_get_i64(g, "t.i64", &i64, &err), 0);
    assert_true(i64 == -((int64_t)1 << 40));
    assert_int_equal(pd_gguf_get_f32(g, "t.f64", &f, &err), 0);
    assert_true(f == 2.25f);
    assert_int_equal(pd_gguf_get_str(g, "t.empty_str", &s, &err), 0);
    assert_int_equal(s.len, 0);
}

static void check_arrays(const pd_gguf_t *g)
{
    pd_err_t err = {0};
    pd_gguf_type_t et;
    uint64_t n;
    for (size_t i = 0; i < N_ARR_CASES; i++) {
        const arr_case_t *a = &arr_cases[i];
        assert_int_equal(pd_gguf_get_arr(g, a->key, &et, &n, &err), 0);
        assert_int_equal(et, a->type);
        assert_int_equal(n, a->n);
        const void *p = pd_gguf_arr_data(g, a->key);
        assert_non_null(p);
        if (n > 0) {
            size_t es = a->type == PD_GGUF_TYPE_UINT8 || a->type == PD_GGUF_TYPE_INT8 ||
                                a->type == PD_GGUF_TYPE_BOOL ? 1
                        : a->type == PD_GGUF_TYPE_UINT16 || a->type == PD_GGUF_TYPE_INT16 ? 2
                        : a->type == PD_GGUF_TYPE_UINT64 || a->type == PD_GGUF_TYPE_INT64 ||
                                a->type == PD_GGUF_TYPE_FLOAT64 ? 8 : 4;
            assert_memory_equal(p, a->data, n * es);
        }
        assert_null(pd_gguf_arr_str(g, a->key, 0).ptr);
    }
    assert_int_equal(pd_gguf_get_arr(g, "a.str", &et, &n, &err), 0);
    assert_int_equal(et, PD_GGUF_TYPE_STRING);
    assert_int_equal(n, 4);
    assert_null(pd_gguf_arr_data(g, "a.str"));
    for (uint64_t i = 0; i < 4; i++) {
        pd_gguf_str_t s = pd_gguf_arr_str(g, "a.str", i);
        assert_int_equal(s.len, a_str_len[i]);
        assert_memory_equal(s.ptr, a_str[i], s.len);
    }
    assert_null(pd_gguf_arr_str(g, "a.str", 4).ptr);
    assert_int_equal(pd_gguf_arr_str(g, "a.str_nul", 3).len, 0);
    assert_int_equal(pd_gguf_arr_str(g, "a.str_nul", 2).len, 6);
    assert_int_equal(pd_gguf_get_arr(g, "a.str_empty", &et, &n, &err), 0);
    assert_int_equal(n, 0);
}

static void check_tensors(const pd_gguf_t *g, const uint8_t *buf, size_t len)
{
    assert_int_equal(pd_gguf_n_tensors(g), N_TENSOR_CASES);
    const uint8_t *end = NULL;
    for (size_t i = 0; i < N_TENSOR_CASES; i++) {
        const tensor_case_t *c = &tensor_cases[i];
        const pd_gguf_tensor_t *t = pd_gguf_tensor(g, (int64_t)i);
        assert_non_null(t);
        assert_string_equal(t->name, c->name);
        assert_ptr_equal(pd_gguf_find_tensor(g, c->name), t);
        assert_int_equal(t->type, c->type);
        assert_int_equal(t->n_dims, c->n_dims);
        for (int d = 0; d < 4; d++)
            assert_int_equal(t->ne[d], c->ne[d]);
        assert_int_equal(t->n_bytes, c->n_bytes);
        assert_int_equal(t->offset % 32, 0);
        assert_true(has_pattern(t->data, t->n_bytes, (uint8_t)(11 * i + 1)));
        if (buf != NULL)
            assert_int_equal(((const uint8_t *)t->data - buf) % 32, 0);
        end = (const uint8_t *)t->data + t->n_bytes;
    }
    if (buf != NULL)
        assert_ptr_equal(end, buf + len);
    assert_null(pd_gguf_tensor(g, -1));
    assert_null(pd_gguf_tensor(g, (int64_t)N_TENSOR_CASES));
    assert_null(pd_gguf_find_tensor(g, "nope"));
}

static void check_full(const pd_gguf_t *g, uint32_t version, const uint8_t *buf, size_t len)
{
    assert_int_equal(pd_gguf_version(g), version);
    assert_int_equal(pd_gguf_alignment(g), 32);
    assert_int_equal(pd_gguf_n_kv(g), N_SCALARS + N_ARR_CASES + 3);
    assert_int_equal(pd_gguf_find_key(g, "t.u8"), 0);
    assert_int_equal(pd_gguf_find_key(g, "t.empty_str"), N_SCALARS - 1);
    assert_int_equal(pd_gguf_find_key(g, "a.u8"), N_SCALARS);
    assert_int_equal(pd_gguf_find_key(g, "t.u"), -1);
    assert_int_equal(pd_gguf_kv_type(g, 0), PD_GGUF_TYPE_UINT8);
    assert_int_equal(pd_gguf_kv_type(g, 8), PD_GGUF_TYPE_STRING);
    assert_int_equal(pd_gguf_kv_type(g, N_SCALARS), PD_GGUF_TYPE_ARRAY);
    assert_int_equal(pd_gguf_kv_type(g, -1), PD_GGUF_TYPE_COUNT);
    pd_gguf_str_t k = pd_gguf_key_name(g, 11);
    assert_int_equal(k.len, 5);
    assert_memory_equal(k.ptr, "t.f64", 5);
    assert_null(pd_gguf_key_name(g, 1000).ptr);
    check_scalars(g);
    check_arrays(g);
    check_tensors(g, buf, len);
}

/* pd_gguf_open_resident: the same file, byte for byte, in a copy that
 * starts on a 2 MB boundary (the last tensor ends the file, so the copy's
 * start is found from it). */
static void check_resident(const char *path, uint32_t version, const uint8_t *buf, size_t len)
{
    pd_err_t err = {0};
    pd_gguf_t *g = pd_gguf_open_resident(path, &err);
    if (g == NULL)
        printf("# %s\n", err.msg);
    assert_non_null(g);
    assert_int_equal(pd_gguf_file_size(g), len);
    check_full(g, version, NULL, 0);
    const pd_gguf_tensor_t *last = pd_gguf_tensor(g, pd_gguf_n_tensors(g) - 1);
    const uint8_t *base = (const uint8_t *)last->data + last->n_bytes - len;
    assert_int_equal((uintptr_t)base % ((uintptr_t)2 << 20), 0);
    assert_memory_equal(base, buf, len);
    pd_gguf_free(g);
}

static void roundtrip(uint32_t version)
{
    char path[256];
    tmp_path(path, sizeof path, version == 2 ? "rt2.gguf" : "rt3.gguf");
    write_full_file(path, version);
    pd_err_t err = {0};
    pd_gguf_t *g = pd_gguf_open(path, &err);
    if (g == NULL)
        printf("# %s\n", err.msg);
    assert_non_null(g);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    assert_int_equal(pd_gguf_file_size(g), len);
    check_full(g, version, NULL, 0);
    pd_gguf_free(g);
    check_resident(path, version, buf, len);
    g = pd_gguf_open_mem(buf, len, &err);
    assert_non_null(g);
    check_full(g, version, buf, len);
    pd_gguf_free(g);
    free(buf);
    unlink(path);
}

static void test_roundtrip_v3(void **state) { (void)state; roundtrip(3); }
static void test_roundtrip_v2(void **state) { (void)state; roundtrip(2); }

/* ====== Getter errors ====== */

static void test_getter_errors(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "getters.gguf");
    write_full_file(path, 3);
    pd_gguf_t *g = pd_gguf_open(path, NULL);
    assert_non_null(g);
    pd_err_t err = {0};
    uint32_t u32 = 77;
    uint64_t u64;
    int64_t i64;
    float f;
    bool b;
    pd_gguf_str_t s;
    assert_int_equal(pd_gguf_get_u32(g, "missing.key", &u32, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "missing.key"));
    assert_int_equal(u32, 77);
    assert_int_equal(pd_gguf_get_u32(g, "t.i8", &u32, &err), PD_EFORMAT); /* -100 */
    assert_non_null(strstr(err.msg, "t.i8"));
    assert_int_equal(pd_gguf_get_u32(g, "t.u64", &u32, &err), PD_EFORMAT); /* 2^40 + 3 */
    assert_non_null(strstr(err.msg, "uint32"));
    assert_int_equal(pd_gguf_get_u64(g, "t.i64", &u64, &err), PD_EFORMAT);
    assert_int_equal(pd_gguf_get_i64(g, "t.str", &i64, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "string"));
    assert_int_equal(pd_gguf_get_f32(g, "t.u32", &f, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "uint32"));
    assert_int_equal(pd_gguf_get_bool(g, "t.u8", &b, &err), PD_EFORMAT);
    assert_int_equal(pd_gguf_get_str(g, "a.str", &s, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "array"));
    assert_int_equal(pd_gguf_get_arr(g, "t.str", NULL, NULL, &err), PD_EFORMAT);
    assert_int_equal(pd_gguf_get_u32(g, "t.i8", &u32, NULL), PD_EFORMAT); /* NULL err is fine */
    assert_int_equal(pd_gguf_get_u32(g, "nope", &u32, NULL), PD_EINVAL);
    assert_int_equal(pd_gguf_get_i64(g, "t.u32", &i64, &err), 0);
    assert_int_equal(i64, 4000000000);
    assert_null(pd_gguf_arr_data(g, "t.u32"));
    assert_null(pd_gguf_arr_data(g, "missing"));
    pd_gguf_free(g);
    unlink(path);
}

/* ====== Writer ====== */

static void test_writer_errors(void **state)
{
    (void)state;
    char path[256], tmp[300];
    tmp_path(path, sizeof path, "werr.gguf");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_null(pd_gguf_writer_new(1));
    assert_null(pd_gguf_writer_new(4));
    pd_gguf_writer_free(NULL);

    pd_gguf_writer_t *w = pd_gguf_writer_new(3);
    uint64_t ne33[] = {33, 2}, ne32[] = {32};
    fill_ctx_t fc = {0};
    char long_name[PD_GGUF_MAX_NAME + 1];
    memset(long_name, 'x', PD_GGUF_MAX_NAME);
    long_name[PD_GGUF_MAX_NAME] = '\0';
    assert_int_equal(pd_gguf_writer_add_u32(w, "k", 1), 0);
    assert_int_equal(pd_gguf_writer_add_u32(w, "k", 2), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_add_u32(w, "", 2), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_add_tensor(w, "q", PD_GGML_TYPE_Q8_0, 2, ne33, fill_pattern,
                                               &fc), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_add_tensor(w, "q", (pd_ggml_type_t)6, 1, ne32, fill_pattern,
                                               &fc), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_add_tensor(w, long_name, PD_GGML_TYPE_F32, 1, ne32,
                                               fill_pattern, &fc), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_add_tensor(w, "t", PD_GGML_TYPE_F32, 1, ne32, fill_pattern,
                                               &fc), 0);
    assert_int_equal(pd_gguf_writer_add_tensor(w, "t", PD_GGML_TYPE_F32, 1, ne32, fill_pattern,
                                               &fc), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_add_u32(w, "general.alignment", 3), PD_EINVAL);
    pd_err_t err = {0};
    assert_int_equal(pd_gguf_writer_write(w, path, &err), PD_EINVAL); /* the first error */
    assert_non_null(strstr(err.msg, "duplicate key 'k'"));
    assert_false(file_exists(path));
    pd_gguf_writer_free(w);

    /* A failing fill callback leaves neither the file nor path.tmp. */
    w = pd_gguf_writer_new(3);
    fc.should_fail = true;
    assert_int_equal(pd_gguf_writer_add_tensor(w, "t", PD_GGML_TYPE_F32, 1, ne32, fill_pattern,
                                               &fc), 0);
    assert_int_equal(pd_gguf_writer_write(w, path, &err), PD_EIO);
    assert_non_null(strstr(err.msg, "'t'"));
    assert_false(file_exists(path));
    assert_false(file_exists(tmp));
    assert_int_equal(pd_gguf_writer_write(w, "/nonexistent-dir/x.gguf", &err), PD_EIO);
    pd_gguf_writer_free(w);
}

static void test_writer_alignment(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "align.gguf");
    pd_gguf_writer_t *w = pd_gguf_writer_new(3);
    uint64_t ne[] = {3};
    fill_ctx_t fc[2] = {{.seed = 5}, {.seed = 9}};
    assert_int_equal(pd_gguf_writer_add_u32(w, "general.alignment", 256), 0);
    assert_int_equal(pd_gguf_writer_add_tensor(w, "a", PD_GGML_TYPE_F32, 1, ne, fill_pattern,
                                               &fc[0]), 0);
    assert_int_equal(pd_gguf_writer_add_tensor(w, "b", PD_GGML_TYPE_F16, 1, ne, fill_pattern,
                                               &fc[1]), 0);
    assert_int_equal(pd_gguf_writer_write(w, path, NULL), 0);
    pd_gguf_writer_free(w);
    pd_gguf_t *g = pd_gguf_open(path, NULL);
    assert_non_null(g);
    assert_int_equal(pd_gguf_alignment(g), 256);
    const pd_gguf_tensor_t *b = pd_gguf_find_tensor(g, "b");
    assert_int_equal(b->offset, 256);
    assert_int_equal(b->n_bytes, 6);
    assert_true(has_pattern(b->data, 6, 9));
    assert_int_equal(((uintptr_t)b->data) % 256, 0); /* the mapping is page-aligned */
    pd_gguf_free(g);
    unlink(path);
}

/* ====== Hostile: header and counts ====== */

/* Every prefix of a valid file is refused (and never read past its end). */
static void test_hostile_truncations(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "trunc.gguf");
    write_full_file(path, 3);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    unlink(path);
    for (size_t n = 0; n < len; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, buf, n);
        pd_err_t err = {0};
        pd_gguf_t *g = pd_gguf_open_mem(copy, n, &err);
        if (g != NULL)
            printf("# prefix of %zu bytes was accepted\n", n);
        assert_null(g);
        assert_int_equal(err.code, PD_EFORMAT);
        assert_true(strncmp(err.msg, "gguf: ", 6) == 0);
        free(copy);
    }
    pd_gguf_t *g = pd_gguf_open_mem(buf, len, NULL);
    assert_non_null(g);
    pd_gguf_free(g);
    free(buf);
}

static void test_hostile_magic_version(void **state)
{
    (void)state;
    bb_t b = {0};
    expect_refused_buf("", 0, PD_EFORMAT, "magic", "truncated");
    bb_header(&b, 3, 0, 0);
    memcpy(b.p, "GGUX", 4);
    expect_refused(&b, PD_EFORMAT, "magic", "not \"GGUF\"");
    const uint32_t bad_versions[] = {0, 1, 4, 0xFFFFFFFFu, 0x03000000u};
    for (size_t i = 0; i < sizeof bad_versions / sizeof bad_versions[0]; i++) {
        bb_header(&b, bad_versions[i], 0, 0);
        expect_refused(&b, PD_EUNSUPPORTED, "version", NULL);
    }
    bb_header(&b, 3, 0, 0); /* positive control: an empty but valid file */
    pd_gguf_t *g = expect_ok(&b);
    assert_int_equal(pd_gguf_n_kv(g), 0);
    assert_int_equal(pd_gguf_find_key(g, "x"), -1);
    pd_gguf_free(g);
    free(b.p);
}

static void test_hostile_counts(void **state)
{
    (void)state;
    const uint64_t huge[] = {(uint64_t)1 << 63, UINT64_MAX, UINT64_MAX / 13 + 1,
                             UINT64_MAX / 32 + 1, ((uint64_t)1 << 60) + 1, 2};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        bb_t b = {0};
        bb_header(&b, 3, 0, huge[i]);
        bb_kv_u32(&b, "a", 1);
        expect_refused(&b, PD_EFORMAT, "n_kv", NULL);
        bb_header(&b, 3, huge[i], 1);
        bb_kv_u32(&b, "a", 1);
        expect_refused(&b, PD_EFORMAT, "n_tensors", NULL);
    }
}

static void test_hostile_string_lengths(void **state)
{
    (void)state;
    const uint64_t huge[] = {(uint64_t)1 << 63, UINT64_MAX, UINT64_MAX - 7, 100};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        bb_t b = {0};
        bb_header(&b, 3, 0, 1); /* key length */
        bb_u64(&b, huge[i]);
        bb_put(&b, "abcdefgh", 8);
        bb_u32(&b, PD_GGUF_TYPE_UINT32);
        bb_u32(&b, 0);
        expect_refused(&b, PD_EFORMAT, "key length", "kv 0");
        bb_header(&b, 3, 0, 1); /* string value length */
        bb_str(&b, "general.name");
        bb_u32(&b, PD_GGUF_TYPE_STRING);
        bb_u64(&b, huge[i]);
        bb_put(&b, "abcdefgh", 8);
        expect_refused(&b, PD_EFORMAT, "string value length", "general.name");
        bb_header(&b, 3, 0, 1); /* string array element length */
        bb_str(&b, "tokens");
        bb_u32(&b, PD_GGUF_TYPE_ARRAY);
        bb_u32(&b, PD_GGUF_TYPE_STRING);
        bb_u64(&b, 2);
        bb_str(&b, "ok");
        bb_u64(&b, huge[i]);
        bb_put(&b, "abcdefgh", 8);
        expect_refused(&b, PD_EFORMAT, "array element[1] length", "tokens");
    }
    bb_t b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "");
    bb_u32(&b, PD_GGUF_TYPE_UINT32);
    bb_u32(&b, 0);
    expect_refused(&b, PD_EFORMAT, "key is empty", NULL);
}

static void test_hostile_array_lengths(void **state)
{
    (void)state;
    /* 2^61 and 2^61 + 1 wrap to 0 and 8 when multiplied by 8. */
    const uint64_t huge[] = {(uint64_t)1 << 63, UINT64_MAX, (uint64_t)1 << 61,
                             ((uint64_t)1 << 61) + 1, 5};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        for (int as_str = 0; as_str < 2; as_str++) {
            bb_t b = {0};
            bb_header(&b, 3, 0, 1);
            bb_str(&b, "arr");
            bb_u32(&b, PD_GGUF_TYPE_ARRAY);
            bb_u32(&b, as_str ? PD_GGUF_TYPE_STRING : PD_GGUF_TYPE_UINT64);
            bb_u64(&b, huge[i]);
            bb_zeros(&b, 32);
            expect_refused(&b, PD_EFORMAT, "array length", "'arr'");
        }
    }
}

static void test_hostile_types(void **state)
{
    (void)state;
    bb_t b = {0};
    bb_header(&b, 3, 0, 1); /* array of arrays */
    bb_str(&b, "nested");
    bb_u32(&b, PD_GGUF_TYPE_ARRAY);
    bb_u32(&b, PD_GGUF_TYPE_ARRAY);
    bb_u64(&b, 1);
    bb_u32(&b, PD_GGUF_TYPE_UINT8);
    bb_u64(&b, 1);
    bb_zeros(&b, 8);
    expect_refused(&b, PD_EFORMAT, "arrays of arrays", "nested");
    const uint32_t bad[] = {PD_GGUF_TYPE_COUNT, 0xFFFFFFFFu, 99};
    for (size_t i = 0; i < 3; i++) {
        bb_header(&b, 3, 0, 1);
        bb_str(&b, "odd");
        bb_u32(&b, bad[i]);
        bb_zeros(&b, 16);
        expect_refused(&b, PD_EFORMAT, "value type", "'odd'");
        bb_header(&b, 3, 0, 1);
        bb_str(&b, "odd");
        bb_u32(&b, PD_GGUF_TYPE_ARRAY);
        bb_u32(&b, bad[i]);
        bb_u64(&b, 1);
        bb_zeros(&b, 16);
        expect_refused(&b, PD_EFORMAT, "array element type", "'odd'");
    }
}

static void test_hostile_duplicate_keys(void **state)
{
    (void)state;
    bb_t b = {0};
    bb_header(&b, 3, 0, 3);
    bb_kv_u32(&b, "a.b", 1);
    bb_kv_u32(&b, "c", 2);
    bb_kv_u32(&b, "a.b", 3);
    expect_refused(&b, PD_EFORMAT, "duplicate key 'a.b'", NULL);
}

static void test_hostile_alignment(void **state)
{
    (void)state;
    const uint32_t bad[] = {0, 3, 48, (uint32_t)1 << 31, PD_GGUF_MAX_ALIGNMENT * 2};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bb_t b = {0};
        bb_header(&b, 3, 0, 1);
        bb_kv_u32(&b, "general.alignment", bad[i]);
        expect_refused(&b, PD_EFORMAT, "general.alignment", "power of two");
    }
    bb_t b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, PD_GGUF_TYPE_UINT64);
    bb_u64(&b, 32);
    expect_refused(&b, PD_EFORMAT, "general.alignment", "uint32");
    bb_header(&b, 3, 0, 1); /* positive control */
    bb_kv_u32(&b, "general.alignment", 64);
    pd_gguf_t *g = expect_ok(&b);
    assert_int_equal(pd_gguf_alignment(g), 64);
    pd_gguf_free(g);
    free(b.p);
}

/* ====== Hostile: tensors ====== */

static void refuse_tensor(const tinfo_t *ts, size_t n, size_t data_bytes, int code,
                          const char *needle1, const char *needle2)
{
    bb_t b = {0};
    bb_tensor_file(&b, ts, n, data_bytes);
    expect_refused(&b, code, needle1, needle2);
}

static void test_hostile_tensor_control(void **state)
{
    (void)state;
    const tinfo_t ts[] = {
        {"w", 2, {32, 2}, PD_GGML_TYPE_Q8_0, 0},       /* 68 bytes */
        {"v", 1, {16}, PD_GGML_TYPE_F32, 96},          /* 64 bytes */
    };
    bb_t b = {0};
    bb_tensor_file(&b, ts, 2, 160);
    pd_gguf_t *g = expect_ok(&b);
    assert_int_equal(pd_gguf_find_tensor(g, "w")->n_bytes, 68);
    assert_int_equal(pd_gguf_find_tensor(g, "v")->offset, 96);
    pd_gguf_free(g);
    free(b.p);
}

static void test_hostile_tensor_dims(void **state)
{
    (void)state;
    tinfo_t t = {"blk.0.w", 0, {32}, PD_GGML_TYPE_F32, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "n_dims 0", "'blk.0.w'");
    t = (tinfo_t){"blk.0.w", 5, {1, 1, 1, 1, 1}, PD_GGML_TYPE_F32, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "n_dims 5", "'blk.0.w'");
    t = (tinfo_t){"blk.0.w", 0xFFFFFFFFu, {1}, PD_GGML_TYPE_F32, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "n_dims", NULL);
    t = (tinfo_t){"w", 2, {4, 0}, PD_GGML_TYPE_F32, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "ne[1]", "is 0");
    t = (tinfo_t){"w", 1, {(uint64_t)1 << 63}, PD_GGML_TYPE_F32, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "ne[0]", "INT64_MAX");
    t = (tinfo_t){"w", 2, {(uint64_t)1 << 32, (uint64_t)1 << 32}, PD_GGML_TYPE_F32, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "overflows", "'w'");
    t = (tinfo_t){"w", 4, {1 << 16, 1 << 16, 1 << 16, 1 << 15}, PD_GGML_TYPE_F16, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "overflows", NULL); /* 2^63 elements */
    t = (tinfo_t){"w", 1, {(uint64_t)1 << 62}, PD_GGML_TYPE_F32, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "overflows", NULL); /* 2^64 bytes */
    t = (tinfo_t){"w", 2, {33, 2}, PD_GGML_TYPE_Q8_0, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "ne[0] = 33", "q8_0 block size 32");
    t = (tinfo_t){"w", 1, {48}, PD_GGML_TYPE_Q4_0, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "ne[0] = 48", "q4_0");
}

static void test_hostile_tensor_types(void **state)
{
    (void)state;
    tinfo_t t = {"blk.3.ffn_up.weight", 1, {32}, 6, 0};
    refuse_tensor(&t, 1, 256, PD_EUNSUPPORTED, "type 6 (q5_0)", "'blk.3.ffn_up.weight'");
    t.type = 99;
    refuse_tensor(&t, 1, 256, PD_EUNSUPPORTED, "type 99", "'blk.3.ffn_up.weight'");
    t.type = 0xFFFFFFFFu;
    refuse_tensor(&t, 1, 256, PD_EUNSUPPORTED, "type 4294967295", NULL);
}

static void test_hostile_tensor_names(void **state)
{
    (void)state;
    char long_name[PD_GGUF_MAX_NAME + 1];
    memset(long_name, 'n', PD_GGUF_MAX_NAME);
    long_name[PD_GGUF_MAX_NAME] = '\0';
    tinfo_t t = {long_name, 1, {8}, PD_GGML_TYPE_F32, 0};
    refuse_tensor(&t, 1, 64, PD_EFORMAT, "name length 64", NULL);
    long_name[PD_GGUF_MAX_NAME - 1] = '\0'; /* 63 bytes is fine */
    bb_t b = {0};
    bb_tensor_file(&b, &t, 1, 64);
    pd_gguf_free(expect_ok(&b));
    free(b.p);
    t.name = "";
    refuse_tensor(&t, 1, 64, PD_EFORMAT, "name length 0", NULL);
    const tinfo_t dup[] = {
        {"w", 1, {8}, PD_GGML_TYPE_F32, 0},
        {"x", 1, {8}, PD_GGML_TYPE_F32, 32},
        {"w", 1, {8}, PD_GGML_TYPE_F32, 64},
    };
    refuse_tensor(dup, 3, 96, PD_EFORMAT, "duplicate tensor name 'w'", NULL);
    /* Names may hold control bytes; messages show them as '?' (one line). */
    const tinfo_t nl[] = {{"a\nb\x1b[2J", 1, {8}, PD_GGML_TYPE_F32, 64}};
    refuse_tensor(nl, 1, 32, PD_EFORMAT, "'a?b?[2J'", "past the end");

    memset(&b, 0, sizeof b); /* a name with a NUL inside */
    bb_header(&b, 3, 1, 0);
    bb_u64(&b, 3);
    bb_put(&b, "a\0b", 3);
    bb_u32(&b, 1);
    bb_u64(&b, 8);
    bb_u32(&b, PD_GGML_TYPE_F32);
    bb_u64(&b, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 32);
    expect_refused(&b, PD_EFORMAT, "NUL", "tensor 0");
    bb_header(&b, 3, 1, 0); /* a name length of 2^63 */
    bb_u64(&b, (uint64_t)1 << 63);
    bb_zeros(&b, 64);
    expect_refused(&b, PD_EFORMAT, "name length", "tensor 0");
}

static void test_hostile_tensor_offsets(void **state)
{
    (void)state;
    tinfo_t t = {"w", 1, {8}, PD_GGML_TYPE_F32, 4};
    refuse_tensor(&t, 1, 64, PD_EFORMAT, "offset 4", "not a multiple of the alignment 32");
    t.offset = 64;
    refuse_tensor(&t, 1, 64, PD_EFORMAT, "offset 64", "past the end of the data section");
    t.offset = 32;
    refuse_tensor(&t, 1, 63, PD_EFORMAT, "'w'", "past the end of the data section");
    t.offset = (uint64_t)1 << 63;
    refuse_tensor(&t, 1, 64, PD_EFORMAT, "'w'", "past the end");
    t.offset = UINT64_MAX - 31; /* aligned; offset + n_bytes wraps */
    refuse_tensor(&t, 1, 64, PD_EFORMAT, "'w'", "past the end");
    const tinfo_t overlap[] = {
        {"a", 1, {16}, PD_GGML_TYPE_F32, 64}, /* [64, 128) */
        {"b", 1, {16}, PD_GGML_TYPE_F32, 0},  /* [0, 64) */
        {"c", 1, {16}, PD_GGML_TYPE_F32, 96}, /* overlaps a */
    };
    refuse_tensor(overlap, 3, 256, PD_EFORMAT, "tensor 'a'", "overlaps tensor 'c'");
    const tinfo_t same[] = {
        {"a", 1, {8}, PD_GGML_TYPE_F32, 0},
        {"b", 1, {8}, PD_GGML_TYPE_F32, 0},
    };
    refuse_tensor(same, 2, 64, PD_EFORMAT, "overlaps", NULL);
}

/* K-quant and IQ4_NL tensors: rows not a multiple of the block, super-blocks
 * cut short by the end of the file, huge and overflowing sizes, and Q8_K
 * (an activation format) as a tensor type. */
static void test_hostile_kquant_tensors(void **state)
{
    (void)state;
    static const struct {
        uint32_t type;
        const char *name;
        uint64_t block_bytes;
    } K[] = {
        {PD_GGML_TYPE_Q2_K, "q2_K", 84},   {PD_GGML_TYPE_Q3_K, "q3_K", 110},
        {PD_GGML_TYPE_Q4_K, "q4_K", 144},  {PD_GGML_TYPE_Q5_K, "q5_K", 176},
        {PD_GGML_TYPE_Q6_K, "q6_K", 210},
    };
    char msg[64];
    for (size_t i = 0; i < sizeof K / sizeof K[0]; i++) {
        /* two rows of 512: the control, exactly the bytes it needs */
        tinfo_t t = {"blk.0.ffn_down.weight", 2, {512, 2}, K[i].type, 0};
        bb_t b = {0};
        bb_tensor_file(&b, &t, 1, 4 * K[i].block_bytes);
        pd_gguf_t *g = expect_ok(&b);
        assert_int_equal(pd_gguf_find_tensor(g, t.name)->n_bytes, 4 * K[i].block_bytes);
        assert_int_equal(pd_ggml_row_bytes(K[i].type, 512), 2 * K[i].block_bytes);
        pd_gguf_free(g);
        free(b.p);
        /* the last super-block cut short (data one byte short) */
        refuse_tensor(&t, 1, 4 * K[i].block_bytes - 1, PD_EFORMAT, "'blk.0.ffn_down.weight'",
                      "past the end of the data section");
        /* rows that are not a multiple of 256 */
        t.ne[0] = 384;
        snprintf(msg, sizeof msg, "%s block size 256", K[i].name);
        refuse_tensor(&t, 1, 4096, PD_EFORMAT, "ne[0] = 384", msg);
        t.ne[0] = 255;
        refuse_tensor(&t, 1, 4096, PD_EFORMAT, "ne[0] = 255", msg);
        /* 2^62 elements: a byte size that fits 64 bits but not the file */
        t = (tinfo_t){"w", 2, {(uint64_t)1 << 40, (uint64_t)1 << 22}, K[i].type, 0};
        refuse_tensor(&t, 1, 256, PD_EFORMAT, "'w'", "past the end");
        /* 2^64 elements */
        t = (tinfo_t){"w", 2, {(uint64_t)1 << 40, (uint64_t)1 << 24}, K[i].type, 0};
        refuse_tensor(&t, 1, 256, PD_EFORMAT, "overflows", "'w'");
    }
    tinfo_t t = {"w", 2, {48, 2}, PD_GGML_TYPE_IQ4_NL, 0};
    refuse_tensor(&t, 1, 256, PD_EFORMAT, "ne[0] = 48", "iq4_nl block size 32");
    t = (tinfo_t){"w", 2, {64, 2}, PD_GGML_TYPE_IQ4_NL, 0}; /* 4 blocks of 18 = 72 bytes */
    refuse_tensor(&t, 1, 71, PD_EFORMAT, "'w'", "past the end");
    t = (tinfo_t){"w", 1, {256}, PD_GGML_TYPE_Q8_K, 0};
    refuse_tensor(&t, 1, 512, PD_EUNSUPPORTED, "type 15 (q8_K)", "supported: f32");
}

/* ====== Files on disk ====== */

static void test_open_errors(void **state)
{
    (void)state;
    pd_err_t err = {0};
    assert_null(pd_gguf_open("/nonexistent/model.gguf", &err));
    assert_int_equal(err.code, PD_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent/model.gguf"));
    assert_null(pd_gguf_open("/tmp", &err));
    assert_int_equal(err.code, PD_EIO);
    assert_null(pd_gguf_open_resident("/nonexistent/model.gguf", &err));
    assert_int_equal(err.code, PD_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent/model.gguf"));
    assert_null(pd_gguf_open_resident("/tmp", &err));
    assert_int_equal(err.code, PD_EIO);
    char path[256];
    tmp_path(path, sizeof path, "empty.gguf");
    spill(path, "", 0);
    assert_null(pd_gguf_open(path, &err));
    assert_int_equal(err.code, PD_EFORMAT);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "magic"));
    assert_null(pd_gguf_open_resident(path, &err));
    assert_int_equal(err.code, PD_EFORMAT);
    assert_non_null(strstr(err.msg, "magic"));
    bb_t b = {0};
    bb_header(&b, 1, 0, 0);
    spill(path, b.p, b.len);
    assert_null(pd_gguf_open(path, &err));
    assert_int_equal(err.code, PD_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "version 1"));
    free(b.p);
    unlink(path);
    assert_null(pd_gguf_open("/nonexistent", NULL)); /* NULL err is fine */
    pd_gguf_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_helpers),
        cmocka_unit_test(test_roundtrip_v3),
        cmocka_unit_test(test_roundtrip_v2),
        cmocka_unit_test(test_getter_errors),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_writer_alignment),
        cmocka_unit_test(test_hostile_truncations),
        cmocka_unit_test(test_hostile_magic_version),
        cmocka_unit_test(test_hostile_counts),
        cmocka_unit_test(test_hostile_string_lengths),
        cmocka_unit_test(test_hostile_array_lengths),
        cmocka_unit_test(test_hostile_types),
        cmocka_unit_test(test_hostile_duplicate_keys),
        cmocka_unit_test(test_hostile_alignment),
        cmocka_unit_test(test_hostile_tensor_control),
        cmocka_unit_test(test_hostile_tensor_dims),
        cmocka_unit_test(test_hostile_tensor_types),
        cmocka_unit_test(test_hostile_kquant_tensors),
        cmocka_unit_test(test_hostile_tensor_names),
        cmocka_unit_test(test_hostile_tensor_offsets),
        cmocka_unit_test(test_open_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
