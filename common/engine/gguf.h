/* gguf.h -- GGUF (v2, v3) reader and writer.
 *
 * The file format, as this reader checks it (all integers little-endian):
 *
 *   1. magic      "GGUF" (4 bytes)
 *   2. version    uint32, 2 or 3
 *   3. n_tensors  uint64
 *   4. n_kv       uint64
 *   5. n_kv key/value pairs:
 *        key   : string  (uint64 length, then that many bytes, no NUL)
 *        type  : uint32  (pd_gguf_type_t)
 *        value : scalar of that type, a string, or an array
 *                (uint32 element type, uint64 count, then the elements;
 *                 arrays of arrays are refused)
 *   6. n_tensors tensor infos:
 *        name   : string
 *        n_dims : uint32 (1..4)
 *        ne     : n_dims x uint64 (ne[0] is the contiguous dimension)
 *        type   : uint32 (pd_ggml_type_t)
 *        offset : uint64, relative to the data section, multiple of alignment
 *   7. padding to `general.alignment` (uint32 key, default 32, power of two)
 *   8. the data section: tensor bytes at their offsets.
 *
 * The file is hostile input. Every count, length, offset, dimension and
 * product is checked before use (overflow included); a bad file is refused
 * with a message naming the field and its byte offset. Nothing asserts.
 */
#ifndef PD_GGUF_H
#define PD_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef enum {
    PD_GGUF_TYPE_UINT8 = 0,
    PD_GGUF_TYPE_INT8 = 1,
    PD_GGUF_TYPE_UINT16 = 2,
    PD_GGUF_TYPE_INT16 = 3,
    PD_GGUF_TYPE_UINT32 = 4,
    PD_GGUF_TYPE_INT32 = 5,
    PD_GGUF_TYPE_FLOAT32 = 6,
    PD_GGUF_TYPE_BOOL = 7,
    PD_GGUF_TYPE_STRING = 8,
    PD_GGUF_TYPE_ARRAY = 9,
    PD_GGUF_TYPE_UINT64 = 10,
    PD_GGUF_TYPE_INT64 = 11,
    PD_GGUF_TYPE_FLOAT64 = 12,
    PD_GGUF_TYPE_COUNT
} pd_gguf_type_t;

/* Tensor element types (ggml's numbering). Types not listed here are
 * refused by the loader as unsupported. */
typedef enum {
    PD_GGML_TYPE_F32 = 0,
    PD_GGML_TYPE_F16 = 1,
    PD_GGML_TYPE_Q4_0 = 2,
    PD_GGML_TYPE_Q8_0 = 8,
    PD_GGML_TYPE_Q2_K = 10,   /* K-quants: super-blocks of 256 (quants_k.h) */
    PD_GGML_TYPE_Q3_K = 11,
    PD_GGML_TYPE_Q4_K = 12,
    PD_GGML_TYPE_Q5_K = 13,
    PD_GGML_TYPE_Q6_K = 14,
    PD_GGML_TYPE_Q8_K = 15,   /* activations only (the K-quants' dot products); refused in files */
    PD_GGML_TYPE_IQ4_NL = 20, /* blocks of 32, 4-bit indices into a fixed table */
    PD_GGML_TYPE_BF16 = 30,
} pd_ggml_type_t;

#define PD_GGUF_MAX_DIMS 4
#define PD_GGUF_DEFAULT_ALIGNMENT 32
#define PD_GGUF_MAX_ALIGNMENT (1u << 20) /* bytes; a larger general.alignment is refused */
#define PD_GGUF_MAX_NAME 64 /* tensor names are 1..63 bytes (ggml's GGML_MAX_NAME) */
#define PD_QK8_0 32 /* elements per Q8_0 block: fp16 scale + 32 int8 = 34 bytes */
#define PD_QK4_0 32 /* elements per Q4_0 block: fp16 scale + 16 bytes = 18 bytes */
#define PD_QK_K 256 /* elements per K-quant super-block (Q2_K..Q6_K, Q8_K) */
#define PD_QK4_NL 32 /* elements per IQ4_NL block: fp16 scale + 16 bytes = 18 bytes */

/* A counted string pointing into the mapped file (not NUL-terminated). */
typedef struct {
    const char *ptr;
    uint64_t len;
} pd_gguf_str_t;

typedef struct {
    char *name;               /* NUL-terminated copy, owned by the pd_gguf_t */
    uint32_t n_dims;          /* 1..4 */
    uint64_t ne[PD_GGUF_MAX_DIMS]; /* elements per dimension, unused dims = 1 */
    pd_ggml_type_t type;
    uint64_t offset;          /* byte offset inside the data section */
    uint64_t n_bytes;         /* bytes of the tensor's data */
    const void *data;         /* points into the mapping (or the resident
                                 copy); aligned to the file's alignment when
                                 opened with pd_gguf_open or _resident (both
                                 start page-aligned) */
} pd_gguf_tensor_t;

typedef struct pd_gguf pd_gguf_t;

/* ====== Reading ====== */

/* Maps and parses the file at path. On error returns NULL and fills err
 * (field name and byte offset for a malformed file). Caller frees with
 * pd_gguf_free. */
pd_gguf_t *pd_gguf_open(const char *path, pd_err_t *err);

/* As pd_gguf_open, but the file is copied into private memory in 2 MB
 * pages (transparent huge pages where the system allows them) instead of
 * mapped: what the engine streams its weights from (gguf_map.c says why
 * and what it costs). Falls back to the mapping when the file is larger
 * than half the machine's memory or no such memory can be had; a failed
 * read is an error. */
pd_gguf_t *pd_gguf_open_resident(const char *path, pd_err_t *err);

/* Parses a GGUF image already in memory (fuzzing, tests). buf is borrowed
 * and must outlive the returned object. */
pd_gguf_t *pd_gguf_open_mem(const void *buf, size_t len, pd_err_t *err);

/* Unmaps and frees. Accepts NULL. */
void pd_gguf_free(pd_gguf_t *g);

uint32_t pd_gguf_version(const pd_gguf_t *g);
uint32_t pd_gguf_alignment(const pd_gguf_t *g);
size_t pd_gguf_file_size(const pd_gguf_t *g);

/* Key/value access. Keys are looked up by exact name; a key that appears
 * twice makes the file malformed (refused at open). */
int64_t pd_gguf_n_kv(const pd_gguf_t *g);
int64_t pd_gguf_find_key(const pd_gguf_t *g, const char *key); /* -1 if absent */
pd_gguf_str_t pd_gguf_key_name(const pd_gguf_t *g, int64_t idx);
pd_gguf_type_t pd_gguf_kv_type(const pd_gguf_t *g, int64_t idx);

/* Typed getters by key name. Each returns 0, PD_EINVAL when the key is
 * absent (err names the key), or PD_EFORMAT when the key has a type that
 * cannot be converted (err names the key and both types). Integer getters
 * accept any integer type whose value fits; get_f32 accepts FLOAT32/FLOAT64. */
int pd_gguf_get_u32(const pd_gguf_t *g, const char *key, uint32_t *out, pd_err_t *err);
int pd_gguf_get_u64(const pd_gguf_t *g, const char *key, uint64_t *out, pd_err_t *err);
int pd_gguf_get_i64(const pd_gguf_t *g, const char *key, int64_t *out, pd_err_t *err);
int pd_gguf_get_f32(const pd_gguf_t *g, const char *key, float *out, pd_err_t *err);
int pd_gguf_get_bool(const pd_gguf_t *g, const char *key, bool *out, pd_err_t *err);
int pd_gguf_get_str(const pd_gguf_t *g, const char *key, pd_gguf_str_t *out, pd_err_t *err);

/* Arrays: element type and count of the array under key. */
int pd_gguf_get_arr(const pd_gguf_t *g, const char *key, pd_gguf_type_t *elem_type,
                    uint64_t *n, pd_err_t *err);
/* i-th string of a STRING array under key; {NULL,0} if out of range/wrong type. */
pd_gguf_str_t pd_gguf_arr_str(const pd_gguf_t *g, const char *key, uint64_t i);
/* Raw little-endian elements of a numeric array (borrowed, may be unaligned:
 * read with memcpy). NULL when not a numeric array. */
const void *pd_gguf_arr_data(const pd_gguf_t *g, const char *key);

/* Tensors. */
int64_t pd_gguf_n_tensors(const pd_gguf_t *g);
const pd_gguf_tensor_t *pd_gguf_tensor(const pd_gguf_t *g, int64_t i);
const pd_gguf_tensor_t *pd_gguf_find_tensor(const pd_gguf_t *g, const char *name);
/* The index i of t (as pd_gguf_tensor(g, i) returns it), or -1 when t is not
 * one of g's tensors. */
int64_t pd_gguf_tensor_index(const pd_gguf_t *g, const pd_gguf_tensor_t *t);

/* Type helpers. */
const char *pd_ggml_type_name(pd_ggml_type_t t);          /* "q8_0"; "?" if unknown */
bool pd_ggml_type_supported(uint32_t t);
/* The tensor types a file may hold, as messages list them. */
#define PD_GGML_SUPPORTED_TYPES \
    "f32, f16, bf16, q8_0, q4_0, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl"
uint32_t pd_ggml_block_elems(pd_ggml_type_t t);           /* 1 for float types, 32 for q8_0,
                                                             256 for the K-quants */
uint32_t pd_ggml_block_bytes(pd_ggml_type_t t);           /* 4, 2, 2, 34, 18, 84 (q2_K)... */
/* Bytes of a row of n elements; 0 if n is not a multiple of the block. */
uint64_t pd_ggml_row_bytes(pd_ggml_type_t t, uint64_t n);
const char *pd_gguf_type_name(pd_gguf_type_t t);

/* ====== Writing (pd-mkmodel, tests that craft files) ====== */

typedef struct pd_gguf_writer pd_gguf_writer_t;

/* Fills dst (n_bytes) with the tensor's data; called once, while writing.
 * Returns 0 or a PD_E* code. */
typedef int (*pd_gguf_fill_fn)(void *ctx, void *dst, uint64_t n_bytes);

pd_gguf_writer_t *pd_gguf_writer_new(uint32_t version);
void pd_gguf_writer_free(pd_gguf_writer_t *w);

/* Metadata. Keys and values are copied. Each returns 0 or PD_EINVAL (empty
 * or duplicate key, bad type) / PD_ENOMEM; an error is also remembered and
 * returned again by pd_gguf_writer_write, with its message. Setting
 * "general.alignment" (u32, power of two) changes the file's alignment. */
int pd_gguf_writer_add_u32(pd_gguf_writer_t *w, const char *key, uint32_t v);
int pd_gguf_writer_add_i32(pd_gguf_writer_t *w, const char *key, int32_t v);
int pd_gguf_writer_add_u64(pd_gguf_writer_t *w, const char *key, uint64_t v);
int pd_gguf_writer_add_f32(pd_gguf_writer_t *w, const char *key, float v);
int pd_gguf_writer_add_bool(pd_gguf_writer_t *w, const char *key, bool v);
int pd_gguf_writer_add_str(pd_gguf_writer_t *w, const char *key, const char *v);
/* Any scalar type (not STRING/ARRAY): v points to one value of that type. */
int pd_gguf_writer_add_val(pd_gguf_writer_t *w, const char *key, pd_gguf_type_t type,
                           const void *v);
/* Array of n strings; lens may be NULL (then strs are NUL-terminated). */
int pd_gguf_writer_add_arr_str(pd_gguf_writer_t *w, const char *key, const char *const *strs,
                               const size_t *lens, uint64_t n);
/* Numeric array: elem_type one of the scalar types, data n elements of it. */
int pd_gguf_writer_add_arr(pd_gguf_writer_t *w, const char *key, pd_gguf_type_t elem_type,
                           const void *data, uint64_t n);

/* A tensor whose bytes come from fill(ctx, dst, n_bytes) at write time,
 * so that multi-GB models never sit in memory twice. ne[0] is the
 * contiguous dimension. */
int pd_gguf_writer_add_tensor(pd_gguf_writer_t *w, const char *name, pd_ggml_type_t type,
                              uint32_t n_dims, const uint64_t *ne, pd_gguf_fill_fn fill,
                              void *ctx);

/* Writes the whole file (to path.tmp, then renames). Returns 0 or PD_E*. */
int pd_gguf_writer_write(pd_gguf_writer_t *w, const char *path, pd_err_t *err);

#endif
