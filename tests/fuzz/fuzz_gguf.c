/* fuzz_gguf.c -- libFuzzer target for the GGUF reader and the model loader
 * (scripts/fuzz.sh).
 *
 * Parses the input with pd_gguf_open_mem and, when it is accepted, reads
 * every key through every getter and touches every byte that the parsed
 * object points at (string views, array data, tensor data), so ASan sees
 * any view that escapes the buffer; dequantizes the first row of every
 * tensor (all types: K-quant and IQ4_NL codes and scales included) and
 * checks its block scales; then loads the file as a model (the
 * deny-by-default key and tensor checks, shapes, scales). Invariants that
 * must hold are checked with abort(): a refusal always has a negative code
 * and a "gguf: " (or, from the model loader, "model: ") one-line message;
 * an accepted tensor always lies inside the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/kernels.h"
#include "engine/model.h"
#include "engine/quants_k.h"

#define MAX_ROW 65536 /* elements of a first row dequantized (larger rows are skipped) */

#define CHECK(cond)       \
    do {                  \
        if (!(cond))      \
            abort();      \
    } while (0)

static size_t elem_bytes(pd_gguf_type_t t)
{
    switch (t) {
    case PD_GGUF_TYPE_UINT8: case PD_GGUF_TYPE_INT8: case PD_GGUF_TYPE_BOOL: return 1;
    case PD_GGUF_TYPE_UINT16: case PD_GGUF_TYPE_INT16: return 2;
    case PD_GGUF_TYPE_UINT32: case PD_GGUF_TYPE_INT32: case PD_GGUF_TYPE_FLOAT32: return 4;
    case PD_GGUF_TYPE_UINT64: case PD_GGUF_TYPE_INT64: case PD_GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

static unsigned touch(const void *p, uint64_t n)
{
    const volatile uint8_t *b = p;
    unsigned x = 0;
    for (uint64_t i = 0; i < n; i++)
        x += b[i];
    return x;
}

static unsigned exercise_key(const pd_gguf_t *g, const char *key)
{
    pd_err_t err;
    uint32_t u32;
    uint64_t u64, n;
    int64_t i64;
    float f;
    bool b;
    pd_gguf_str_t s;
    pd_gguf_type_t et;
    unsigned x = 0;
    x += pd_gguf_get_u32(g, key, &u32, &err) == 0;
    x += pd_gguf_get_u64(g, key, &u64, &err) == 0;
    x += pd_gguf_get_i64(g, key, &i64, &err) == 0;
    x += pd_gguf_get_f32(g, key, &f, &err) == 0;
    x += pd_gguf_get_bool(g, key, &b, &err) == 0;
    if (pd_gguf_get_str(g, key, &s, &err) == 0)
        x += touch(s.ptr, s.len);
    if (pd_gguf_get_arr(g, key, &et, &n, &err) != 0)
        return x;
    if (et == PD_GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            s = pd_gguf_arr_str(g, key, i);
            CHECK(s.ptr != NULL || s.len == 0);
            x += touch(s.ptr, s.len);
        }
        CHECK(pd_gguf_arr_str(g, key, n).ptr == NULL);
    } else {
        const void *p = pd_gguf_arr_data(g, key);
        CHECK(p != NULL);
        x += touch(p, n * elem_bytes(et));
    }
    return x;
}

static unsigned exercise(const pd_gguf_t *g, const uint8_t *data, size_t size)
{
    unsigned x = 0;
    char key[256];
    for (int64_t i = 0; i < pd_gguf_n_kv(g); i++) {
        pd_gguf_str_t k = pd_gguf_key_name(g, i);
        if (k.len >= sizeof key || memchr(k.ptr, '\0', k.len) != NULL)
            continue;
        memcpy(key, k.ptr, k.len);
        key[k.len] = '\0';
        CHECK(pd_gguf_find_key(g, key) == i);
        x += exercise_key(g, key);
    }
    uint32_t align = pd_gguf_alignment(g);
    for (int64_t i = 0; i < pd_gguf_n_tensors(g); i++) {
        const pd_gguf_tensor_t *t = pd_gguf_tensor(g, i);
        const uint8_t *p = t->data;
        CHECK(pd_gguf_find_tensor(g, t->name) == t);
        CHECK(p >= data && t->n_bytes <= size && (size_t)(p - data) <= size - t->n_bytes);
        CHECK(t->offset % align == 0 && t->n_bytes > 0);
        x += touch(p, t->n_bytes);
    }
    return x;
}

/* The first row of every tensor through its dequantizer, and every block
 * scale through the check the loader runs. */
static unsigned exercise_rows(const pd_gguf_t *g)
{
    static float row[MAX_ROW];
    unsigned x = 0;
    for (int64_t i = 0; i < pd_gguf_n_tensors(g); i++) {
        const pd_gguf_tensor_t *t = pd_gguf_tensor(g, i);
        const uint64_t rb = pd_ggml_row_bytes(t->type, t->ne[0]);
        CHECK(rb > 0 && rb <= t->n_bytes);
        if (t->ne[0] <= MAX_ROW) {
            pd_dequant_row(t->type, t->data, row, (uint32_t)t->ne[0]);
            x += (unsigned)(row[0] == row[0]);
        }
        uint16_t bits = 0;
        const char *field = NULL;
        const uint32_t bb = pd_ggml_block_bytes(t->type);
        int64_t bad = pd_quant_find_bad_scale(t->type, t->data, t->n_bytes / bb, &bits, &field);
        CHECK(bad < 0 || (field != NULL && (uint64_t)bad < t->n_bytes / bb));
    }
    return x;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pd_err_t err = {0};
    pd_gguf_t *g = pd_gguf_open_mem(data, size, &err);
    if (g == NULL) {
        CHECK(err.code < 0 && strncmp(err.msg, "gguf: ", 6) == 0);
        CHECK(strchr(err.msg, '\n') == NULL);
        return 0;
    }
    static volatile unsigned sink;
    sink += exercise(g, data, size);
    sink += exercise_rows(g);
    pd_model_t *m = pd_model_from_gguf(g, &err); /* takes g */
    if (m == NULL) {
        CHECK(err.code < 0 && (strncmp(err.msg, "model: ", 7) == 0 ||
                               strncmp(err.msg, "gguf: ", 6) == 0));
        CHECK(strchr(err.msg, '\n') == NULL);
        return 0;
    }
    sink += m->cfg.n_layers;
    pd_model_free(m);
    return 0;
}
