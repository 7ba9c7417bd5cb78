/* gguf_internal.h -- helpers shared by the GGUF reader (gguf.c) and writer
 * (gguf_write.c). Not part of the public API. */
#ifndef PD_GGUF_INTERNAL_H
#define PD_GGUF_INTERNAL_H

#include "engine/gguf.h"

#define PD_GGUF_SHOW_BUF 72 /* 64 shown bytes + "..." + NUL */

/* Bytes of one value of a scalar GGUF type; 0 for STRING, ARRAY, unknown. */
size_t pd_gguf__scalar_bytes(uint32_t t);

/* Byte size of a tensor of type with ne[0..n_dims). Returns 0, or PD_ERANGE
 * when ne[0] is not a multiple of the block, the element count exceeds
 * INT64_MAX or the byte size overflows. */
int pd_gguf__tensor_bytes(pd_ggml_type_t type, uint32_t n_dims, const uint64_t *ne,
                          uint64_t *n_bytes);

/* Printable copy of up to 64 bytes of p (others as '?') in out; returns out. */
const char *pd_gguf__show(const char *p, uint64_t len, char out[PD_GGUF_SHOW_BUF]);

/* The bytes of the file at path in memory (gguf_map.c): mapped read-only,
 * or, resident, copied into private read-only memory in 2 MB pages (the
 * mapping when such a copy cannot be made). On success *base, *size: the
 * file's bytes (NULL, 0 for an empty file), *map_len: what to munmap.
 * On error returns PD_EIO and fills err. */
int pd_gguf__map_file(const char *path, bool resident, const uint8_t **base, size_t *size,
                      size_t *map_len, pd_err_t *err);

#endif
