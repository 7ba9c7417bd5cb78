/* gguf.c -- GGUF (v2, v3) reader and the ggml type helpers. See gguf.h.
 *
 * The whole file is parsed once at open time by a cursor (gguf_rd_t) that
 * owns every bounds check: nothing reads the buffer except through it.
 * Counts are checked against the bytes left before anything is allocated,
 * so a count of 2^63 costs nothing. Strings point into the buffer; only
 * tensor names are copied (NUL-terminated). The writer is in gguf_write.c.
 */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf_internal.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian integers with memcpy: port it before using a big-endian host"
#endif

#define GGUF_HEADER_BYTES 24       /* magic, version, n_tensors, n_kv */
#define GGUF_KV_MIN_BYTES 13       /* key length (8), type (4), smallest value (1) */
#define GGUF_TENSOR_MIN_BYTES 32   /* name length (8), n_dims (4), ne[0] (8), type (4), offset (8) */
#define GGUF_STR_MIN_BYTES 8       /* the length prefix of an empty string */
#define GGUF_SHOW_MAX 64           /* bytes of a key or name quoted in a message */

typedef struct {
    pd_gguf_str_t key;
    size_t at;                 /* byte offset of the key in the file */
    pd_gguf_type_t type;       /* value type (ARRAY for arrays) */
    pd_gguf_type_t elem_type;  /* arrays only */
    uint64_t n;                /* array elements; 1 for scalars */
    const uint8_t *data;       /* scalar bytes, or the first array element (raw LE) */
    pd_gguf_str_t str;         /* STRING values */
    pd_gguf_str_t *strs;       /* STRING arrays: (n), owned */
} gguf_kv_t;

struct pd_gguf {
    const uint8_t *base;       /* (size) the whole file, mapped or borrowed */
    size_t size;
    bool is_mapped;            /* base is ours: a mapping of map_len bytes */
    size_t map_len;
    uint32_t version;
    uint32_t alignment;
    int64_t n_kv;
    gguf_kv_t *kv;             /* (n_kv) in file order */
    gguf_kv_t **kv_by_key;     /* (n_kv) sorted by key, for bsearch */
    int64_t n_tensors;
    pd_gguf_tensor_t *tensors; /* (n_tensors) in file order */
    pd_gguf_tensor_t **t_by_name; /* (n_tensors) sorted by name */
    size_t *t_at;              /* (n_tensors) byte offset of each tensor info */
    size_t data_start;         /* aligned end of the header */
    size_t data_size;          /* bytes from data_start to the end of the file */
};

/* ====== Type helpers ====== */

static const char *const gguf_type_names[PD_GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};

const char *pd_gguf_type_name(pd_gguf_type_t t)
{
    return (unsigned)t < PD_GGUF_TYPE_COUNT ? gguf_type_names[t] : "?";
}

size_t pd_gguf__scalar_bytes(uint32_t t)
{
    switch (t) {
    case PD_GGUF_TYPE_UINT8: case PD_GGUF_TYPE_INT8: case PD_GGUF_TYPE_BOOL: return 1;
    case PD_GGUF_TYPE_UINT16: case PD_GGUF_TYPE_INT16: return 2;
    case PD_GGUF_TYPE_UINT32: case PD_GGUF_TYPE_INT32: case PD_GGUF_TYPE_FLOAT32: return 4;
    case PD_GGUF_TYPE_UINT64: case PD_GGUF_TYPE_INT64: case PD_GGUF_TYPE_FLOAT64: return 8;
    default: return 0; /* STRING, ARRAY, unknown */
    }
}

/* ggml's names, including types we refuse, so that messages can say "q5_0". */
const char *pd_ggml_type_name(pd_ggml_type_t t)
{
    static const char *const names[] = {
        [0] = "f32", [1] = "f16", [2] = "q4_0", [3] = "q4_1", [6] = "q5_0", [7] = "q5_1",
        [8] = "q8_0", [9] = "q8_1", [10] = "q2_K", [11] = "q3_K", [12] = "q4_K",
        [13] = "q5_K", [14] = "q6_K", [15] = "q8_K", [16] = "iq2_xxs", [17] = "iq2_xs",
        [18] = "iq3_xxs", [19] = "iq1_s", [20] = "iq4_nl", [21] = "iq3_s", [22] = "iq2_s",
        [23] = "iq4_xs", [24] = "i8", [25] = "i16", [26] = "i32", [27] = "i64",
        [28] = "f64", [29] = "iq1_m", [30] = "bf16", [34] = "tq1_0", [35] = "tq2_0",
        [39] = "mxfp4",
    };
    unsigned i = (unsigned)t;
    if (i >= sizeof names / sizeof names[0] || names[i] == NULL)
        return "?";
    return names[i];
}

bool pd_ggml_type_supported(uint32_t t)
{
    return t != PD_GGML_TYPE_Q8_K && pd_ggml_block_elems((pd_ggml_type_t)t) != 0;
}

uint32_t pd_ggml_block_elems(pd_ggml_type_t t)
{
    switch (t) {
    case PD_GGML_TYPE_F32: case PD_GGML_TYPE_F16: case PD_GGML_TYPE_BF16: return 1;
    /* Two constants that happen to be equal (32), kept apart on purpose. */
    case PD_GGML_TYPE_Q8_0: return PD_QK8_0; // NOLINT(bugprone-branch-clone)
    case PD_GGML_TYPE_Q4_0: return PD_QK4_0;
    case PD_GGML_TYPE_IQ4_NL: return PD_QK4_NL;
    case PD_GGML_TYPE_Q2_K: case PD_GGML_TYPE_Q3_K: case PD_GGML_TYPE_Q4_K:
    case PD_GGML_TYPE_Q5_K: case PD_GGML_TYPE_Q6_K: case PD_GGML_TYPE_Q8_K: return PD_QK_K;
    default: return 0;
    }
}

uint32_t pd_ggml_block_bytes(pd_ggml_type_t t)
{
    switch (t) {
    case PD_GGML_TYPE_F32: return 4;
    case PD_GGML_TYPE_F16: case PD_GGML_TYPE_BF16: return 2;
    case PD_GGML_TYPE_Q8_0: return 2 + PD_QK8_0;     /* fp16 scale + 32 int8 */
    case PD_GGML_TYPE_Q4_0: return 2 + PD_QK4_0 / 2; /* fp16 scale + 32 nibbles */
    /* ggml-common.h's block_q2_K..block_q8_K and block_iq4_nl; quants_k.h
     * has their layouts (and the same sizes as named constants). */
    case PD_GGML_TYPE_Q2_K: return 84;      /* 2.625 bits per weight */
    case PD_GGML_TYPE_Q3_K: return 110;     /* 3.4375 */
    case PD_GGML_TYPE_Q4_K: return 144;     /* 4.5 */
    case PD_GGML_TYPE_Q5_K: return 176;     /* 5.5 */
    case PD_GGML_TYPE_Q6_K: return 210;     /* 6.5625 */
    case PD_GGML_TYPE_Q8_K: return 292;     /* float d, 256 int8, 16 int16 sums */
    case PD_GGML_TYPE_IQ4_NL: return 2 + PD_QK4_NL / 2; /* 4.5 */
    default: return 0;
    }
}

uint64_t pd_ggml_row_bytes(pd_ggml_type_t t, uint64_t n)
{
    uint32_t be = pd_ggml_block_elems(t);
    if (be == 0 || n % be != 0)
        return 0;
    uint64_t bytes;
    if (__builtin_mul_overflow(n / be, (uint64_t)pd_ggml_block_bytes(t), &bytes))
        return 0;
    return bytes;
}

int pd_gguf__tensor_bytes(pd_ggml_type_t type, uint32_t n_dims, const uint64_t *ne,
                          uint64_t *n_bytes)
{
    uint64_t n_elems = 1, n_rows = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (__builtin_mul_overflow(n_elems, ne[d], &n_elems) || n_elems > INT64_MAX)
            return PD_ERANGE;
        if (d > 0 && __builtin_mul_overflow(n_rows, ne[d], &n_rows))
            return PD_ERANGE;
    }
    uint64_t row = pd_ggml_row_bytes(type, ne[0]);
    if (row == 0 || __builtin_mul_overflow(row, n_rows, n_bytes))
        return PD_ERANGE;
    return 0;
}

/* Copies up to GGUF_SHOW_MAX bytes of s into out, '?' for unprintables, so
 * a hostile key cannot put a newline or escape sequence into a message. */
const char *pd_gguf__show(const char *p, uint64_t len, char out[PD_GGUF_SHOW_BUF])
{
    size_t n = len < GGUF_SHOW_MAX ? (size_t)len : GGUF_SHOW_MAX;
    for (size_t i = 0; i < n; i++)
        out[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? p[i] : '?';
    if (len > GGUF_SHOW_MAX) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

/* ====== Reader cursor ====== */

typedef struct {
    const uint8_t *buf;  /* (len) */
    size_t len;
    size_t pos;          /* next byte to read */
    pd_err_t *err;
    char what[160];      /* what is being read, for messages: "kv 3 ('general.name')" */
} gguf_rd_t;

static size_t rd_left(const gguf_rd_t *r)
{
    return r->len - r->pos;
}

/* Sets "gguf: <what>: <message>" with code; returns code. */
__attribute__((format(printf, 3, 4)))
static int rd_fail(gguf_rd_t *r, int code, const char *fmt, ...)
{
    char msg[PD_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return pd_err_set(r->err, code, "gguf: %s: %s", r->what, msg);
}

/* Returns a pointer to the next n bytes and advances, or NULL (err set,
 * naming field) when fewer than n bytes are left. */
static const uint8_t *rd_take(gguf_rd_t *r, uint64_t n, const char *field)
{
    if (n > rd_left(r)) {
        rd_fail(r, PD_EFORMAT, "%s at byte %zu: file truncated (needs %" PRIu64
                " bytes, %zu left)", field, r->pos, n, rd_left(r));
        return NULL;
    }
    const uint8_t *p = r->buf + r->pos;
    r->pos += (size_t)n;
    return p;
}

static int rd_u32(gguf_rd_t *r, uint32_t *out, const char *field)
{
    const uint8_t *p = rd_take(r, sizeof *out, field);
    if (p == NULL)
        return PD_EFORMAT;
    memcpy(out, p, sizeof *out);
    return 0;
}

static int rd_u64(gguf_rd_t *r, uint64_t *out, const char *field)
{
    const uint8_t *p = rd_take(r, sizeof *out, field);
    if (p == NULL)
        return PD_EFORMAT;
    memcpy(out, p, sizeof *out);
    return 0;
}

/* Reads a string (uint64 length + bytes) as a view into the buffer. elem is
 * the array index for messages, or -1. The message is only formatted on
 * failure: a vocabulary has 150k of these. */
static int rd_str(gguf_rd_t *r, pd_gguf_str_t *out, const char *field, int64_t elem)
{
    size_t at = r->pos;
    uint64_t len = 0;
    bool has_len = rd_left(r) >= sizeof len;
    if (has_len)
        memcpy(&len, r->buf + at, sizeof len);
    if (has_len && len <= rd_left(r) - sizeof len) {
        out->ptr = (const char *)r->buf + at + sizeof len;
        out->len = len;
        r->pos += sizeof len + (size_t)len;
        return 0;
    }
    char name[64];
    if (elem >= 0)
        snprintf(name, sizeof name, "%s[%" PRId64 "]", field, elem);
    else
        snprintf(name, sizeof name, "%s", field);
    /* rd_fail returns its code; the explicit PD_EFORMAT lets the analyzer
     * (which does not inline variadic functions) see that *out is only
     * read after a 0. */
    if (!has_len)
        rd_fail(r, PD_EFORMAT, "%s length at byte %zu: file truncated (needs 8 bytes, "
                "%zu left)", name, at, rd_left(r));
    else
        rd_fail(r, PD_EFORMAT, "%s length %" PRIu64 " at byte %zu is longer than the %zu "
                "bytes left in the file", name, len, at, rd_left(r) - sizeof len);
    return PD_EFORMAT;
}

/* ====== Header ====== */

static int parse_header(pd_gguf_t *g, gguf_rd_t *r, uint64_t *n_tensors, uint64_t *n_kv)
{
    snprintf(r->what, sizeof r->what, "header");
    const uint8_t *magic = rd_take(r, 4, "magic");
    if (magic == NULL)
        return PD_EFORMAT;
    if (memcmp(magic, "GGUF", 4) != 0)
        return rd_fail(r, PD_EFORMAT, "magic at byte 0 is %02x %02x %02x %02x, not \"GGUF\"",
                       magic[0], magic[1], magic[2], magic[3]);
    if (rd_u32(r, &g->version, "version") != 0)
        return PD_EFORMAT;
    if (g->version == 1)
        return rd_fail(r, PD_EUNSUPPORTED, "version 1 at byte 4 is not supported (GGUF v1 "
                       "used 32-bit counts; convert the file with a current llama.cpp)");
    if ((g->version & 0xffff) == 0 && g->version != 0)
        return rd_fail(r, PD_EUNSUPPORTED, "version 0x%08x at byte 4 is not supported (a "
                       "big-endian file?)", g->version);
    if (g->version != 2 && g->version != 3)
        return rd_fail(r, PD_EUNSUPPORTED, "version %" PRIu32 " at byte 4 is not supported "
                       "(only 2 and 3)", g->version);
    if (rd_u64(r, n_tensors, "n_tensors") != 0 || rd_u64(r, n_kv, "n_kv") != 0)
        return PD_EFORMAT;

    /* Bound both counts by the bytes left before allocating anything. */
    uint64_t left = rd_left(r);
    if (*n_tensors > left / GGUF_TENSOR_MIN_BYTES)
        return rd_fail(r, PD_EFORMAT, "n_tensors %" PRIu64 " at byte 8 cannot fit in the %"
                       PRIu64 " bytes left (a tensor info takes at least %d bytes)",
                       *n_tensors, left, GGUF_TENSOR_MIN_BYTES);
    left -= *n_tensors * GGUF_TENSOR_MIN_BYTES;
    if (*n_kv > left / GGUF_KV_MIN_BYTES)
        return rd_fail(r, PD_EFORMAT, "n_kv %" PRIu64 " at byte 16 cannot fit in the %" PRIu64
                       " bytes left after the tensor infos (a key/value takes at least %d "
                       "bytes)", *n_kv, left, GGUF_KV_MIN_BYTES);
    return 0;
}

/* ====== Key/value pairs ====== */

static int parse_array(gguf_rd_t *r, gguf_kv_t *kv)
{
    uint32_t et;
    size_t at = r->pos;
    if (rd_u32(r, &et, "array element type") != 0 || rd_u64(r, &kv->n, "array length") != 0)
        return PD_EFORMAT;
    if (et == PD_GGUF_TYPE_ARRAY)
        return rd_fail(r, PD_EFORMAT, "array element type at byte %zu is array (arrays of "
                       "arrays are not supported)", at);
    if (et >= PD_GGUF_TYPE_COUNT)
        return rd_fail(r, PD_EFORMAT, "array element type %" PRIu32 " at byte %zu is not a "
                       "GGUF type", et, at);
    kv->elem_type = (pd_gguf_type_t)et;
    size_t elem_bytes = et == PD_GGUF_TYPE_STRING ? GGUF_STR_MIN_BYTES : pd_gguf__scalar_bytes(et);
    if (kv->n > rd_left(r) / elem_bytes)
        return rd_fail(r, PD_EFORMAT, "array length %" PRIu64 " at byte %zu cannot fit in the "
                       "%zu bytes left (%s elements take at least %zu bytes)", kv->n, at + 4,
                       rd_left(r), pd_gguf_type_name(kv->elem_type), elem_bytes);
    if (et != PD_GGUF_TYPE_STRING) {
        kv->data = rd_take(r, kv->n * elem_bytes, "array data");
        return 0;
    }
    kv->strs = malloc((kv->n ? kv->n : 1) * sizeof *kv->strs);
    if (kv->strs == NULL)
        return rd_fail(r, PD_ENOMEM, "out of memory for %" PRIu64 " strings", kv->n);
    for (uint64_t i = 0; i < kv->n; i++)
        if (rd_str(r, &kv->strs[i], "array element", (int64_t)i) != 0)
            return PD_EFORMAT;
    return 0;
}

static int parse_kv(gguf_rd_t *r, gguf_kv_t *kv, int64_t i)
{
    char show[PD_GGUF_SHOW_BUF];
    kv->at = r->pos;
    snprintf(r->what, sizeof r->what, "kv %" PRId64 " at byte %zu", i, kv->at);
    if (rd_str(r, &kv->key, "key", -1) != 0)
        return PD_EFORMAT;
    if (kv->key.len == 0)
        return rd_fail(r, PD_EFORMAT, "key is empty");
    snprintf(r->what, sizeof r->what, "kv %" PRId64 " ('%s')", i,
             pd_gguf__show(kv->key.ptr, kv->key.len, show));
    uint32_t type;
    size_t at = r->pos;
    if (rd_u32(r, &type, "value type") != 0)
        return PD_EFORMAT;
    if (type >= PD_GGUF_TYPE_COUNT)
        return rd_fail(r, PD_EFORMAT, "value type %" PRIu32 " at byte %zu is not a GGUF type",
                       type, at);
    kv->type = (pd_gguf_type_t)type;
    kv->n = 1;
    if (type == PD_GGUF_TYPE_ARRAY)
        return parse_array(r, kv);
    if (type == PD_GGUF_TYPE_STRING)
        return rd_str(r, &kv->str, "string value", -1);
    kv->data = rd_take(r, pd_gguf__scalar_bytes(type), "value");
    return kv->data ? 0 : PD_EFORMAT;
}

static int str_cmp(pd_gguf_str_t a, pd_gguf_str_t b)
{
    size_t n = a.len < b.len ? (size_t)a.len : (size_t)b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c != 0)
        return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int kv_ptr_cmp(const void *a, const void *b)
{
    const gguf_kv_t *x = *(const gguf_kv_t *const *)a;
    const gguf_kv_t *y = *(const gguf_kv_t *const *)b;
    return str_cmp(x->key, y->key);
}

/* Sorts the key index and refuses duplicate keys. */
static int index_kvs(pd_gguf_t *g, pd_err_t *err)
{
    char show[PD_GGUF_SHOW_BUF];
    g->kv_by_key = malloc((g->n_kv ? (size_t)g->n_kv : 1) * sizeof *g->kv_by_key);
    if (g->kv_by_key == NULL)
        return pd_err_set(err, PD_ENOMEM, "gguf: out of memory for the key index");
    for (int64_t i = 0; i < g->n_kv; i++)
        g->kv_by_key[i] = &g->kv[i];
    qsort(g->kv_by_key, (size_t)g->n_kv, sizeof *g->kv_by_key, kv_ptr_cmp);
    for (int64_t i = 1; i < g->n_kv; i++) {
        const gguf_kv_t *a = g->kv_by_key[i - 1], *b = g->kv_by_key[i];
        if (str_cmp(a->key, b->key) == 0) {
            const gguf_kv_t *first = a->at < b->at ? a : b, *second = a->at < b->at ? b : a;
            return pd_err_set(err, PD_EFORMAT, "gguf: duplicate key '%s' at byte %zu (first "
                              "seen at byte %zu)",
                              pd_gguf__show(a->key.ptr, a->key.len, show), second->at, first->at);
        }
    }
    return 0;
}

static const gguf_kv_t *kv_find(const pd_gguf_t *g, const char *key)
{
    if (g == NULL || key == NULL || g->n_kv == 0)
        return NULL;
    gguf_kv_t probe = {.key = {key, strlen(key)}};
    const gguf_kv_t *pp = &probe;
    gguf_kv_t **hit = bsearch(&pp, g->kv_by_key, (size_t)g->n_kv, sizeof *g->kv_by_key,
                              kv_ptr_cmp);
    return hit ? *hit : NULL;
}

/* general.alignment: optional uint32, a power of two in 1..PD_GGUF_MAX_ALIGNMENT. */
static int read_alignment(pd_gguf_t *g, pd_err_t *err)
{
    g->alignment = PD_GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv_t *kv = kv_find(g, "general.alignment");
    if (kv == NULL)
        return 0;
    if (kv->type != PD_GGUF_TYPE_UINT32)
        return pd_err_set(err, PD_EFORMAT, "gguf: general.alignment at byte %zu has type %s, "
                          "expected uint32", kv->at, pd_gguf_type_name(kv->type));
    uint32_t a;
    memcpy(&a, kv->data, sizeof a);
    if (a == 0 || (a & (a - 1)) != 0 || a > PD_GGUF_MAX_ALIGNMENT)
        return pd_err_set(err, PD_EFORMAT, "gguf: general.alignment %" PRIu32 " at byte %zu is "
                          "not a power of two in 1..%u", a, kv->at, PD_GGUF_MAX_ALIGNMENT);
    g->alignment = a;
    return 0;
}

static int parse_kvs(pd_gguf_t *g, gguf_rd_t *r, uint64_t n_kv)
{
    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    if (g->kv == NULL)
        return pd_err_set(r->err, PD_ENOMEM, "gguf: out of memory for %" PRIu64 " kvs", n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = (int64_t)i + 1; /* so that pd_gguf_free frees kv[i].strs */
        int rc = parse_kv(r, &g->kv[i], (int64_t)i);
        if (rc != 0)
            return rc;
    }
    int rc = index_kvs(g, r->err);
    return rc ? rc : read_alignment(g, r->err);
}

/* ====== Tensor infos ====== */

static int parse_tensor_dims(gguf_rd_t *r, pd_gguf_tensor_t *t)
{
    size_t at = r->pos;
    if (rd_u32(r, &t->n_dims, "n_dims") != 0)
        return PD_EFORMAT;
    if (t->n_dims < 1 || t->n_dims > PD_GGUF_MAX_DIMS)
        return rd_fail(r, PD_EFORMAT, "n_dims %" PRIu32 " at byte %zu is not in 1..%d",
                       t->n_dims, at, PD_GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < PD_GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        char field[16];
        snprintf(field, sizeof field, "ne[%" PRIu32 "]", d);
        at = r->pos;
        if (rd_u64(r, &t->ne[d], field) != 0)
            return PD_EFORMAT;
        if (t->ne[d] == 0)
            return rd_fail(r, PD_EFORMAT, "%s at byte %zu is 0 (empty tensors are not "
                           "supported)", field, at);
        if (t->ne[d] > INT64_MAX)
            return rd_fail(r, PD_EFORMAT, "%s %" PRIu64 " at byte %zu is larger than INT64_MAX",
                           field, t->ne[d], at);
    }
    return 0;
}

/* Type, block divisibility and byte size, once the dims are known. */
static int parse_tensor_type(gguf_rd_t *r, pd_gguf_tensor_t *t)
{
    uint32_t type;
    size_t at = r->pos;
    if (rd_u32(r, &type, "type") != 0)
        return PD_EFORMAT;
    if (!pd_ggml_type_supported(type))
        return rd_fail(r, PD_EUNSUPPORTED, "type %" PRIu32 " (%s) at byte %zu is not supported "
                       "(supported: %s)", type,
                       pd_ggml_type_name((pd_ggml_type_t)type), at, PD_GGML_SUPPORTED_TYPES);
    t->type = (pd_ggml_type_t)type;
    uint32_t be = pd_ggml_block_elems(t->type);
    if (t->ne[0] % be != 0)
        return rd_fail(r, PD_EFORMAT, "ne[0] = %" PRIu64 " is not a multiple of the %s block "
                       "size %" PRIu32, t->ne[0], pd_ggml_type_name(t->type), be);
    if (pd_gguf__tensor_bytes(t->type, t->n_dims, t->ne, &t->n_bytes) != 0)
        return rd_fail(r, PD_EFORMAT, "ne [%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64
                       "]: element count or byte size overflows", t->ne[0], t->ne[1], t->ne[2],
                       t->ne[3]);
    return 0;
}

static int parse_tensor_info(pd_gguf_t *g, gguf_rd_t *r, int64_t i)
{
    char show[PD_GGUF_SHOW_BUF];
    pd_gguf_tensor_t *t = &g->tensors[i];
    pd_gguf_str_t name;
    g->t_at[i] = r->pos;
    snprintf(r->what, sizeof r->what, "tensor %" PRId64 " at byte %zu", i, r->pos);
    if (rd_str(r, &name, "name", -1) != 0)
        return PD_EFORMAT;
    if (name.len == 0 || name.len >= PD_GGUF_MAX_NAME)
        return rd_fail(r, PD_EFORMAT, "name length %" PRIu64 " is not in 1..%d", name.len,
                       PD_GGUF_MAX_NAME - 1);
    if (memchr(name.ptr, '\0', name.len) != NULL)
        return rd_fail(r, PD_EFORMAT, "name contains a NUL byte");
    t->name = malloc(name.len + 1);
    if (t->name == NULL)
        return rd_fail(r, PD_ENOMEM, "out of memory");
    memcpy(t->name, name.ptr, name.len);
    t->name[name.len] = '\0';
    snprintf(r->what, sizeof r->what, "tensor %" PRId64 " ('%s') at byte %zu", i,
             pd_gguf__show(name.ptr, name.len, show), g->t_at[i]);
    int rc = parse_tensor_dims(r, t);
    if (rc == 0)
        rc = parse_tensor_type(r, t);
    if (rc != 0)
        return rc;
    size_t at = r->pos;
    if (rd_u64(r, &t->offset, "offset") != 0)
        return PD_EFORMAT;
    if (t->offset % g->alignment != 0)
        return rd_fail(r, PD_EFORMAT, "offset %" PRIu64 " at byte %zu is not a multiple of the "
                       "alignment %" PRIu32, t->offset, at, g->alignment);
    return 0;
}

static int parse_tensor_infos(pd_gguf_t *g, gguf_rd_t *r, uint64_t n_tensors)
{
    size_t n = n_tensors ? (size_t)n_tensors : 1;
    g->tensors = calloc(n, sizeof *g->tensors);
    g->t_at = calloc(n, sizeof *g->t_at);
    if (g->tensors == NULL || g->t_at == NULL)
        return pd_err_set(r->err, PD_ENOMEM, "gguf: out of memory for %" PRIu64 " tensors",
                          n_tensors);
    for (uint64_t i = 0; i < n_tensors; i++) {
        g->n_tensors = (int64_t)i + 1; /* so that pd_gguf_free frees the name */
        int rc = parse_tensor_info(g, r, (int64_t)i);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ====== Tensor layout checks ====== */

/* Tensor names may hold any byte but NUL: quote them through pd_gguf__show. */
#define SHOW(name) pd_gguf__show((name), strlen(name), show)
#define SHOW2(name) pd_gguf__show((name), strlen(name), show2)

static int t_name_cmp(const void *a, const void *b)
{
    return strcmp((*(const pd_gguf_tensor_t *const *)a)->name,
                  (*(const pd_gguf_tensor_t *const *)b)->name);
}

static int t_offset_cmp(const void *a, const void *b)
{
    uint64_t x = (*(const pd_gguf_tensor_t *const *)a)->offset;
    uint64_t y = (*(const pd_gguf_tensor_t *const *)b)->offset;
    return x < y ? -1 : x > y;
}

static int check_tensor_bounds(pd_gguf_t *g, pd_err_t *err)
{
    char show[PD_GGUF_SHOW_BUF];
    for (int64_t i = 0; i < g->n_tensors; i++) {
        pd_gguf_tensor_t *t = &g->tensors[i];
        if (t->offset > g->data_size || t->n_bytes > g->data_size - t->offset)
            return pd_err_set(err, PD_EFORMAT, "gguf: tensor %" PRId64 " ('%s') offset %"
                              PRIu64 " + %" PRIu64 " bytes (info at byte %zu) is past the end of "
                              "the data section (size %zu, starting at byte %zu)", i, SHOW(t->name),
                              t->offset, t->n_bytes, g->t_at[i], g->data_size, g->data_start);
        t->data = g->base + g->data_start + t->offset;
    }
    return 0;
}

/* Sorts tensors by name (refusing duplicates, keeping the index for lookups)
 * then by offset (refusing overlaps). */
static int check_tensor_layout(pd_gguf_t *g, pd_err_t *err)
{
    char show[PD_GGUF_SHOW_BUF], show2[PD_GGUF_SHOW_BUF];
    size_t n = (size_t)g->n_tensors;
    pd_gguf_tensor_t **by_off = malloc((n ? n : 1) * sizeof *by_off);
    g->t_by_name = malloc((n ? n : 1) * sizeof *g->t_by_name);
    if (by_off == NULL || g->t_by_name == NULL) {
        free(by_off);
        return pd_err_set(err, PD_ENOMEM, "gguf: out of memory for the tensor index");
    }
    for (size_t i = 0; i < n; i++)
        g->t_by_name[i] = by_off[i] = &g->tensors[i];
    qsort(g->t_by_name, n, sizeof *g->t_by_name, t_name_cmp);
    qsort(by_off, n, sizeof *by_off, t_offset_cmp);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++) {
        const pd_gguf_tensor_t *a = g->t_by_name[i - 1], *b = g->t_by_name[i];
        if (strcmp(a->name, b->name) == 0)
            rc = pd_err_set(err, PD_EFORMAT, "gguf: duplicate tensor name '%s' (tensor infos at "
                            "bytes %zu and %zu)", SHOW(a->name), g->t_at[a - g->tensors],
                            g->t_at[b - g->tensors]);
    }
    for (size_t i = 1; i < n && rc == 0; i++) {
        const pd_gguf_tensor_t *a = by_off[i - 1], *b = by_off[i];
        if (b->offset - a->offset < a->n_bytes)
            rc = pd_err_set(err, PD_EFORMAT, "gguf: tensor '%s' (offset %" PRIu64 ", %" PRIu64
                            " bytes) overlaps tensor '%s' (offset %" PRIu64 ", info at byte %zu)",
                            SHOW(a->name), a->offset, a->n_bytes, SHOW2(b->name), b->offset,
                            g->t_at[b - g->tensors]);
    }
    free(by_off);
    return rc;
}

/* ====== Open / free ====== */

static int gguf_parse(pd_gguf_t *g, pd_err_t *err)
{
    gguf_rd_t r = {.buf = g->base, .len = g->size, .err = err};
    uint64_t n_tensors = 0, n_kv = 0;
    int rc = parse_header(g, &r, &n_tensors, &n_kv);
    if (rc == 0)
        rc = parse_kvs(g, &r, n_kv);
    if (rc == 0)
        rc = parse_tensor_infos(g, &r, n_tensors);
    if (rc != 0)
        return rc;
    /* r.pos <= size < SIZE_MAX - alignment for any real buffer; check anyway. */
    if (r.pos > SIZE_MAX - g->alignment)
        return pd_err_set(err, PD_EFORMAT, "gguf: header end %zu overflows", r.pos);
    g->data_start = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
    g->data_size = g->data_start < g->size ? g->size - g->data_start : 0;
    rc = check_tensor_bounds(g, err);
    return rc ? rc : check_tensor_layout(g, err);
}

pd_gguf_t *pd_gguf_open_mem(const void *buf, size_t len, pd_err_t *err)
{
    pd_err_t local;
    if (err == NULL)
        err = &local;
    pd_gguf_t *g = calloc(1, sizeof *g);
    if (g == NULL) {
        pd_err_set(err, PD_ENOMEM, "gguf: out of memory");
        return NULL;
    }
    g->base = buf;
    g->size = len;
    if (buf == NULL && len > 0) {
        pd_err_set(err, PD_EINVAL, "gguf: NULL buffer of %zu bytes", len);
        goto fail;
    }
    if (gguf_parse(g, err) != 0)
        goto fail;
    return g;
fail:
    pd_gguf_free(g);
    return NULL;
}

static pd_gguf_t *open_file(const char *path, bool resident, pd_err_t *err)
{
    pd_err_t local;
    if (err == NULL)
        err = &local;
    const uint8_t *base = NULL;
    size_t size = 0, map_len = 0;
    if (pd_gguf__map_file(path, resident, &base, &size, &map_len, err) != 0)
        return NULL;
    pd_gguf_t *g = calloc(1, sizeof *g);
    if (g == NULL) {
        pd_err_set(err, PD_ENOMEM, "gguf: out of memory");
        if (base)
            munmap((void *)base, map_len);
        return NULL;
    }
    g->base = base;
    g->size = size;
    g->map_len = map_len;
    g->is_mapped = base != NULL;
    if (gguf_parse(g, err) != 0) {
        pd_err_wrap(err, err->code, "%s", path);
        pd_gguf_free(g);
        return NULL;
    }
    return g;
}

pd_gguf_t *pd_gguf_open(const char *path, pd_err_t *err)
{
    return open_file(path, false, err);
}

pd_gguf_t *pd_gguf_open_resident(const char *path, pd_err_t *err)
{
    return open_file(path, true, err);
}

void pd_gguf_free(pd_gguf_t *g)
{
    if (g == NULL)
        return;
    for (int64_t i = 0; g->kv && i < g->n_kv; i++)
        free(g->kv[i].strs);
    for (int64_t i = 0; g->tensors && i < g->n_tensors; i++)
        free(g->tensors[i].name);
    free(g->kv);
    free(g->kv_by_key);
    free(g->tensors);
    free(g->t_by_name);
    free(g->t_at);
    if (g->is_mapped)
        munmap((void *)g->base, g->map_len);
    free(g);
}

/* ====== Accessors ====== */

uint32_t pd_gguf_version(const pd_gguf_t *g) { return g->version; }
uint32_t pd_gguf_alignment(const pd_gguf_t *g) { return g->alignment; }
size_t pd_gguf_file_size(const pd_gguf_t *g) { return g->size; }
int64_t pd_gguf_n_kv(const pd_gguf_t *g) { return g->n_kv; }
int64_t pd_gguf_n_tensors(const pd_gguf_t *g) { return g->n_tensors; }

int64_t pd_gguf_find_key(const pd_gguf_t *g, const char *key)
{
    const gguf_kv_t *kv = kv_find(g, key);
    return kv ? kv - g->kv : -1;
}

pd_gguf_str_t pd_gguf_key_name(const pd_gguf_t *g, int64_t idx)
{
    if (idx < 0 || idx >= g->n_kv)
        return (pd_gguf_str_t){NULL, 0};
    return g->kv[idx].key;
}

pd_gguf_type_t pd_gguf_kv_type(const pd_gguf_t *g, int64_t idx)
{
    if (idx < 0 || idx >= g->n_kv)
        return PD_GGUF_TYPE_COUNT;
    return g->kv[idx].type;
}

const pd_gguf_tensor_t *pd_gguf_tensor(const pd_gguf_t *g, int64_t i)
{
    return (i >= 0 && i < g->n_tensors) ? &g->tensors[i] : NULL;
}

int64_t pd_gguf_tensor_index(const pd_gguf_t *g, const pd_gguf_tensor_t *t)
{
    /* integer addresses: t need not point into the array at all */
    const uintptr_t base = (uintptr_t)g->tensors, at = (uintptr_t)t;
    if (t == NULL || at < base || (at - base) % sizeof *t != 0)
        return -1;
    const uint64_t i = (at - base) / sizeof *t;
    return i < (uint64_t)g->n_tensors ? (int64_t)i : -1;
}

const pd_gguf_tensor_t *pd_gguf_find_tensor(const pd_gguf_t *g, const char *name)
{
    if (name == NULL || g->n_tensors == 0)
        return NULL;
    pd_gguf_tensor_t probe = {.name = (char *)name};
    const pd_gguf_tensor_t *pp = &probe;
    pd_gguf_tensor_t **hit = bsearch(&pp, g->t_by_name, (size_t)g->n_tensors,
                                     sizeof *g->t_by_name, t_name_cmp);
    return hit ? *hit : NULL;
}

/* ====== Typed getters ====== */

/* Finds key with one of the wanted types (a bitmask of 1 << type). Returns
 * 0, PD_EINVAL (absent) or PD_EFORMAT (other type), err naming the key. */
static int kv_get(const pd_gguf_t *g, const char *key, unsigned wanted, const char *want_name,
                  const gguf_kv_t **out, pd_err_t *err)
{
    const gguf_kv_t *kv = kv_find(g, key);
    if (kv == NULL)
        return pd_err_set(err, PD_EINVAL, "gguf: key '%s' not found", key ? key : "(null)");
    if ((wanted & (1u << kv->type)) == 0)
        return pd_err_set(err, PD_EFORMAT, "gguf: key '%s' at byte %zu has type %s, expected %s",
                          key, kv->at, pd_gguf_type_name(kv->type), want_name);
    *out = kv;
    return 0;
}

#define INT_TYPES                                                                      \
    ((1u << PD_GGUF_TYPE_UINT8) | (1u << PD_GGUF_TYPE_INT8) | (1u << PD_GGUF_TYPE_UINT16) | \
     (1u << PD_GGUF_TYPE_INT16) | (1u << PD_GGUF_TYPE_UINT32) | (1u << PD_GGUF_TYPE_INT32) | \
     (1u << PD_GGUF_TYPE_UINT64) | (1u << PD_GGUF_TYPE_INT64))

/* Reads an integer value widened: *is_neg and the magnitude as int64 or
 * uint64 (exactly one of *s / *u is meaningful: *u when !*is_signed). */
static void kv_int(const gguf_kv_t *kv, bool *is_signed, int64_t *s, uint64_t *u)
{
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            uint64_t u64; int64_t i64; } v;
    memset(&v, 0, sizeof v); /* defined even for a type narrower than the one read */
    memcpy(&v, kv->data, pd_gguf__scalar_bytes(kv->type));
    *is_signed = true;
    switch (kv->type) {
    case PD_GGUF_TYPE_UINT8: *is_signed = false; *u = v.u8; break;
    case PD_GGUF_TYPE_UINT16: *is_signed = false; *u = v.u16; break;
    case PD_GGUF_TYPE_UINT32: *is_signed = false; *u = v.u32; break;
    case PD_GGUF_TYPE_UINT64: *is_signed = false; *u = v.u64; break;
    /* int8_t widened with its sign, which is what a GGUF INT8 means. */
    case PD_GGUF_TYPE_INT8: *s = v.i8; break; // NOLINT(bugprone-signed-char-misuse,cert-str34-c)
    case PD_GGUF_TYPE_INT16: *s = v.i16; break;
    case PD_GGUF_TYPE_INT32: *s = v.i32; break;
    default: *s = v.i64; break;
    }
}

/* Gets an integer key checked against [lo, hi] (lo <= 0 <= hi). */
static int get_int(const pd_gguf_t *g, const char *key, int64_t lo, uint64_t hi,
                   const char *target, bool *is_signed, int64_t *s, uint64_t *u, pd_err_t *err)
{
    const gguf_kv_t *kv = NULL;
    int rc = kv_get(g, key, INT_TYPES, "an integer", &kv, err);
    if (rc != 0)
        return rc;
    kv_int(kv, is_signed, s, u);
    bool fits = *is_signed ? (*s >= lo && (*s < 0 || (uint64_t)*s <= hi)) : *u <= hi;
    if (fits)
        return 0;
    if (*is_signed)
        return pd_err_set(err, PD_EFORMAT, "gguf: key '%s' value %" PRId64 " does not fit in %s",
                          key, *s, target);
    return pd_err_set(err, PD_EFORMAT, "gguf: key '%s' value %" PRIu64 " does not fit in %s",
                      key, *u, target);
}

int pd_gguf_get_u32(const pd_gguf_t *g, const char *key, uint32_t *out, pd_err_t *err)
{
    bool is_signed;
    int64_t s = 0;
    uint64_t u = 0;
    int rc = get_int(g, key, 0, UINT32_MAX, "uint32", &is_signed, &s, &u, err);
    if (rc == 0)
        *out = is_signed ? (uint32_t)s : (uint32_t)u;
    return rc;
}

int pd_gguf_get_u64(const pd_gguf_t *g, const char *key, uint64_t *out, pd_err_t *err)
{
    bool is_signed;
    int64_t s = 0;
    uint64_t u = 0;
    int rc = get_int(g, key, 0, UINT64_MAX, "uint64", &is_signed, &s, &u, err);
    if (rc == 0)
        *out = is_signed ? (uint64_t)s : u;
    return rc;
}

int pd_gguf_get_i64(const pd_gguf_t *g, const char *key, int64_t *out, pd_err_t *err)
{
    bool is_signed;
    int64_t s = 0;
    uint64_t u = 0;
    int rc = get_int(g, key, INT64_MIN, INT64_MAX, "int64", &is_signed, &s, &u, err);
    if (rc == 0)
        *out = is_signed ? s : (int64_t)u;
    return rc;
}

int pd_gguf_get_f32(const pd_gguf_t *g, const char *key, float *out, pd_err_t *err)
{
    const gguf_kv_t *kv = NULL;
    int rc = kv_get(g, key, (1u << PD_GGUF_TYPE_FLOAT32) | (1u << PD_GGUF_TYPE_FLOAT64),
                    "float32 or float64", &kv, err);
    if (rc != 0)
        return rc;
    if (kv->type == PD_GGUF_TYPE_FLOAT32) {
        memcpy(out, kv->data, sizeof *out);
        return 0;
    }
    double d;
    memcpy(&d, kv->data, sizeof d);
    if (isfinite(d) && fabs(d) > 3.4028234663852886e38)
        return pd_err_set(err, PD_EFORMAT, "gguf: key '%s' value %g does not fit in float32",
                          key, d);
    *out = (float)d;
    return 0;
}

int pd_gguf_get_bool(const pd_gguf_t *g, const char *key, bool *out, pd_err_t *err)
{
    const gguf_kv_t *kv = NULL;
    int rc = kv_get(g, key, 1u << PD_GGUF_TYPE_BOOL, "bool", &kv, err);
    if (rc != 0)
        return rc;
    *out = kv->data[0] != 0;
    return 0;
}

int pd_gguf_get_str(const pd_gguf_t *g, const char *key, pd_gguf_str_t *out, pd_err_t *err)
{
    const gguf_kv_t *kv = NULL;
    int rc = kv_get(g, key, 1u << PD_GGUF_TYPE_STRING, "string", &kv, err);
    if (rc != 0)
        return rc;
    *out = kv->str;
    return 0;
}

int pd_gguf_get_arr(const pd_gguf_t *g, const char *key, pd_gguf_type_t *elem_type,
                    uint64_t *n, pd_err_t *err)
{
    const gguf_kv_t *kv = NULL;
    int rc = kv_get(g, key, 1u << PD_GGUF_TYPE_ARRAY, "array", &kv, err);
    if (rc != 0)
        return rc;
    if (elem_type)
        *elem_type = kv->elem_type;
    if (n)
        *n = kv->n;
    return 0;
}

pd_gguf_str_t pd_gguf_arr_str(const pd_gguf_t *g, const char *key, uint64_t i)
{
    const gguf_kv_t *kv = kv_find(g, key);
    if (kv == NULL || kv->type != PD_GGUF_TYPE_ARRAY || kv->elem_type != PD_GGUF_TYPE_STRING ||
        i >= kv->n)
        return (pd_gguf_str_t){NULL, 0};
    return kv->strs[i];
}

const void *pd_gguf_arr_data(const pd_gguf_t *g, const char *key)
{
    const gguf_kv_t *kv = kv_find(g, key);
    if (kv == NULL || kv->type != PD_GGUF_TYPE_ARRAY || kv->elem_type == PD_GGUF_TYPE_STRING)
        return NULL;
    return kv->data;
}
