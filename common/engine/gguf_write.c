/* gguf_write.c -- GGUF writer (pd-mkmodel, tests). See gguf.h.
 *
 * Metadata is serialized into a byte buffer as it is added. At write time
 * the tensor offsets are laid out (each aligned), the output file path.tmp
 * is sized and mapped, the header is copied in and each tensor's fill
 * callback writes straight into the mapping, so a 1 GB model never sits in
 * memory twice. Then path.tmp is renamed over path.
 */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/gguf_internal.h"
#include "base/grow.h"

/* ====== Byte buffer ====== */

typedef struct {
    uint8_t *p;   /* (cap) */
    size_t len;
    size_t cap;
} wbuf_t;

static int wbuf_put(wbuf_t *b, const void *src, size_t n)
{
    if (n > SIZE_MAX - b->len)
        return PD_ENOMEM;
    if (pd_grow((void **)&b->p, &b->cap, b->len + n, 1, 256) != 0)
        return PD_ENOMEM;
    if (n)
        memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static int wbuf_u32(wbuf_t *b, uint32_t v) { return wbuf_put(b, &v, sizeof v); }
static int wbuf_u64(wbuf_t *b, uint64_t v) { return wbuf_put(b, &v, sizeof v); }

static int wbuf_str(wbuf_t *b, const char *s, size_t len)
{
    int rc = wbuf_u64(b, len);
    return rc ? rc : wbuf_put(b, s, len);
}

/* ====== Writer object ====== */

typedef struct {
    char *name;
    pd_ggml_type_t type;
    uint32_t n_dims;
    uint64_t ne[PD_GGUF_MAX_DIMS];
    uint64_t n_bytes;
    uint64_t offset;     /* in the data section, set at write time */
    pd_gguf_fill_fn fill;
    void *ctx;
} wtensor_t;

struct pd_gguf_writer {
    uint32_t version;
    uint32_t alignment;
    wbuf_t kv;            /* serialized key/value pairs */
    int64_t n_kv;
    char **keys;          /* (n_kv) copies, for the duplicate check */
    size_t keys_cap;
    wtensor_t *tensors;   /* (n_tensors) */
    size_t tensors_cap;
    int64_t n_tensors;
    pd_err_t first_err;   /* first add_* failure, reported again by write */
};

pd_gguf_writer_t *pd_gguf_writer_new(uint32_t version)
{
    if (version == 0)
        version = 3;
    if (version != 2 && version != 3)
        return NULL;
    pd_gguf_writer_t *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->version = version;
    w->alignment = PD_GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void pd_gguf_writer_free(pd_gguf_writer_t *w)
{
    if (w == NULL)
        return;
    for (int64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    for (int64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->keys);
    free(w->tensors);
    free(w->kv.p);
    free(w);
}

/* Records the first error (for pd_gguf_writer_write) and returns code. */
__attribute__((format(printf, 3, 4)))
static int w_fail(pd_gguf_writer_t *w, int code, const char *fmt, ...)
{
    if (w->first_err.code != 0)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->first_err.msg, sizeof w->first_err.msg, fmt, ap);
    va_end(ap);
    w->first_err.code = code;
    return code;
}

/* ====== Metadata ====== */

/* Checks key, remembers it and serializes key + type. */
static int kv_begin(pd_gguf_writer_t *w, const char *key, pd_gguf_type_t type)
{
    if (key == NULL || key[0] == '\0')
        return w_fail(w, PD_EINVAL, "gguf writer: empty key");
    for (int64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return w_fail(w, PD_EINVAL, "gguf writer: duplicate key '%s'", key);
    if (pd_grow((void **)&w->keys, &w->keys_cap, (size_t)w->n_kv + 1, sizeof *w->keys, 16) != 0)
        return w_fail(w, PD_ENOMEM, "gguf writer: out of memory for key '%s'", key);
    if ((w->keys[w->n_kv] = strdup(key)) == NULL)
        return w_fail(w, PD_ENOMEM, "gguf writer: out of memory for key '%s'", key);
    w->n_kv++;
    if (wbuf_str(&w->kv, key, strlen(key)) != 0 || wbuf_u32(&w->kv, type) != 0)
        return w_fail(w, PD_ENOMEM, "gguf writer: out of memory for key '%s'", key);
    return 0;
}

static int set_alignment(pd_gguf_writer_t *w, pd_gguf_type_t type, const void *v)
{
    uint32_t a = 0;
    if (type == PD_GGUF_TYPE_UINT32)
        memcpy(&a, v, sizeof a);
    if (type != PD_GGUF_TYPE_UINT32 || a == 0 || (a & (a - 1)) != 0 ||
        a > PD_GGUF_MAX_ALIGNMENT)
        return w_fail(w, PD_EINVAL, "gguf writer: general.alignment must be a uint32 power of "
                      "two in 1..%u", PD_GGUF_MAX_ALIGNMENT);
    w->alignment = a;
    return 0;
}

int pd_gguf_writer_add_val(pd_gguf_writer_t *w, const char *key, pd_gguf_type_t type,
                           const void *v)
{
    size_t n = pd_gguf__scalar_bytes(type);
    if (n == 0 || v == NULL)
        return w_fail(w, PD_EINVAL, "gguf writer: key '%s': type %u is not a scalar type",
                      key ? key : "(null)", (unsigned)type);
    int rc = kv_begin(w, key, type);
    if (rc != 0)
        return rc;
    if (wbuf_put(&w->kv, v, n) != 0)
        return w_fail(w, PD_ENOMEM, "gguf writer: out of memory for key '%s'", key);
    if (strcmp(key, "general.alignment") == 0)
        return set_alignment(w, type, v);
    return 0;
}

int pd_gguf_writer_add_u32(pd_gguf_writer_t *w, const char *key, uint32_t v)
{
    return pd_gguf_writer_add_val(w, key, PD_GGUF_TYPE_UINT32, &v);
}

int pd_gguf_writer_add_i32(pd_gguf_writer_t *w, const char *key, int32_t v)
{
    return pd_gguf_writer_add_val(w, key, PD_GGUF_TYPE_INT32, &v);
}

int pd_gguf_writer_add_u64(pd_gguf_writer_t *w, const char *key, uint64_t v)
{
    return pd_gguf_writer_add_val(w, key, PD_GGUF_TYPE_UINT64, &v);
}

int pd_gguf_writer_add_f32(pd_gguf_writer_t *w, const char *key, float v)
{
    return pd_gguf_writer_add_val(w, key, PD_GGUF_TYPE_FLOAT32, &v);
}

int pd_gguf_writer_add_bool(pd_gguf_writer_t *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return pd_gguf_writer_add_val(w, key, PD_GGUF_TYPE_BOOL, &b);
}

int pd_gguf_writer_add_str(pd_gguf_writer_t *w, const char *key, const char *v)
{
    if (v == NULL)
        return w_fail(w, PD_EINVAL, "gguf writer: key '%s': NULL string", key ? key : "(null)");
    int rc = kv_begin(w, key, PD_GGUF_TYPE_STRING);
    if (rc != 0)
        return rc;
    if (wbuf_str(&w->kv, v, strlen(v)) != 0)
        return w_fail(w, PD_ENOMEM, "gguf writer: out of memory for key '%s'", key);
    return 0;
}

int pd_gguf_writer_add_arr_str(pd_gguf_writer_t *w, const char *key, const char *const *strs,
                               const size_t *lens, uint64_t n)
{
    if (n > 0 && strs == NULL)
        return w_fail(w, PD_EINVAL, "gguf writer: key '%s': NULL strings", key ? key : "(null)");
    int rc = kv_begin(w, key, PD_GGUF_TYPE_ARRAY);
    if (rc != 0)
        return rc;
    rc = wbuf_u32(&w->kv, PD_GGUF_TYPE_STRING);
    if (rc == 0)
        rc = wbuf_u64(&w->kv, n);
    for (uint64_t i = 0; rc == 0 && i < n; i++)
        rc = wbuf_str(&w->kv, strs[i], lens ? lens[i] : strlen(strs[i]));
    if (rc != 0)
        return w_fail(w, PD_ENOMEM, "gguf writer: out of memory for key '%s'", key);
    return 0;
}

int pd_gguf_writer_add_arr(pd_gguf_writer_t *w, const char *key, pd_gguf_type_t elem_type,
                           const void *data, uint64_t n)
{
    size_t es = pd_gguf__scalar_bytes(elem_type);
    if (es == 0 || (n > 0 && data == NULL) || n > SIZE_MAX / es)
        return w_fail(w, PD_EINVAL, "gguf writer: key '%s': bad array (type %u, %" PRIu64
                      " elements)", key ? key : "(null)", (unsigned)elem_type, n);
    int rc = kv_begin(w, key, PD_GGUF_TYPE_ARRAY);
    if (rc != 0)
        return rc;
    rc = wbuf_u32(&w->kv, elem_type);
    if (rc == 0)
        rc = wbuf_u64(&w->kv, n);
    if (rc == 0)
        rc = wbuf_put(&w->kv, data, (size_t)n * es);
    if (rc != 0)
        return w_fail(w, PD_ENOMEM, "gguf writer: out of memory for key '%s'", key);
    return 0;
}

/* ====== Tensors ====== */

static int check_tensor(pd_gguf_writer_t *w, const char *name, pd_ggml_type_t type,
                        uint32_t n_dims, const uint64_t *ne, pd_gguf_fill_fn fill)
{
    if (name == NULL || name[0] == '\0' || strlen(name) >= PD_GGUF_MAX_NAME)
        return w_fail(w, PD_EINVAL, "gguf writer: tensor name '%s' is not 1..%d bytes",
                      name ? name : "(null)", PD_GGUF_MAX_NAME - 1);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return w_fail(w, PD_EINVAL, "gguf writer: duplicate tensor '%s'", name);
    if (!pd_ggml_type_supported(type))
        return w_fail(w, PD_EINVAL, "gguf writer: tensor '%s': unsupported type %u", name,
                      (unsigned)type);
    if (n_dims < 1 || n_dims > PD_GGUF_MAX_DIMS || ne == NULL || fill == NULL)
        return w_fail(w, PD_EINVAL, "gguf writer: tensor '%s': bad n_dims %" PRIu32
                      " or NULL ne/fill", name, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] == 0 || ne[d] > INT64_MAX)
            return w_fail(w, PD_EINVAL, "gguf writer: tensor '%s': ne[%" PRIu32 "] = %" PRIu64
                          " is out of range", name, d, ne[d]);
    return 0;
}

int pd_gguf_writer_add_tensor(pd_gguf_writer_t *w, const char *name, pd_ggml_type_t type,
                              uint32_t n_dims, const uint64_t *ne, pd_gguf_fill_fn fill,
                              void *ctx)
{
    int rc = check_tensor(w, name, type, n_dims, ne, fill);
    if (rc != 0)
        return rc;
    wtensor_t t = {.type = type, .n_dims = n_dims, .fill = fill, .ctx = ctx};
    for (uint32_t d = 0; d < PD_GGUF_MAX_DIMS; d++)
        t.ne[d] = d < n_dims ? ne[d] : 1;
    if (pd_gguf__tensor_bytes(type, n_dims, t.ne, &t.n_bytes) != 0)
        return w_fail(w, PD_EINVAL, "gguf writer: tensor '%s': ne[0] = %" PRIu64 " is not a "
                      "multiple of the %s block, or the size overflows", name, t.ne[0],
                      pd_ggml_type_name(type));
    if (pd_grow((void **)&w->tensors, &w->tensors_cap, (size_t)w->n_tensors + 1,
                sizeof *w->tensors, 16) != 0 ||
        (t.name = strdup(name)) == NULL)
        return w_fail(w, PD_ENOMEM, "gguf writer: out of memory for tensor '%s'", name);
    w->tensors[w->n_tensors++] = t;
    return 0;
}

/* ====== Writing ====== */

static int align_up(uint64_t x, uint32_t a, uint64_t *out)
{
    if (x > UINT64_MAX - (a - 1))
        return PD_ERANGE;
    *out = (x + a - 1) / a * a;
    return 0;
}

/* Lays out tensor offsets; *data_bytes is the padded size of the data section. */
static int layout_tensors(pd_gguf_writer_t *w, uint64_t *data_bytes, pd_err_t *err)
{
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        w->tensors[i].offset = off;
        if (off > UINT64_MAX - w->tensors[i].n_bytes ||
            align_up(off + w->tensors[i].n_bytes, w->alignment, &off) != 0)
            return pd_err_set(err, PD_ERANGE, "gguf writer: data section overflows at tensor "
                              "'%s'", w->tensors[i].name);
    }
    *data_bytes = off;
    return 0;
}

/* Serializes magic .. tensor infos (everything before the padding). */
static int build_header(const pd_gguf_writer_t *w, wbuf_t *h)
{
    int rc = wbuf_put(h, "GGUF", 4);
    if (rc == 0) rc = wbuf_u32(h, w->version);
    if (rc == 0) rc = wbuf_u64(h, (uint64_t)w->n_tensors);
    if (rc == 0) rc = wbuf_u64(h, (uint64_t)w->n_kv);
    if (rc == 0) rc = wbuf_put(h, w->kv.p, w->kv.len);
    for (int64_t i = 0; rc == 0 && i < w->n_tensors; i++) {
        const wtensor_t *t = &w->tensors[i];
        rc = wbuf_str(h, t->name, strlen(t->name));
        if (rc == 0) rc = wbuf_u32(h, t->n_dims);
        for (uint32_t d = 0; rc == 0 && d < t->n_dims; d++)
            rc = wbuf_u64(h, t->ne[d]);
        if (rc == 0) rc = wbuf_u32(h, (uint32_t)t->type);
        if (rc == 0) rc = wbuf_u64(h, t->offset);
    }
    return rc;
}

/* Copies the header and fills every tensor into map (total bytes, zeroed). */
static int fill_map(pd_gguf_writer_t *w, uint8_t *map, const wbuf_t *h, uint64_t data_start,
                    pd_err_t *err)
{
    memcpy(map, h->p, h->len);
    for (int64_t i = 0; i < w->n_tensors; i++) {
        wtensor_t *t = &w->tensors[i];
        int rc = t->fill(t->ctx, map + data_start + t->offset, t->n_bytes);
        if (rc != 0)
            return pd_err_set(err, rc < 0 ? rc : PD_EIO, "gguf writer: tensor '%s': fill "
                              "callback failed (%s)", t->name, pd_err_name(rc));
    }
    return 0;
}

/* Creates tmp with total bytes, maps it and fills it. */
static int write_tmp(pd_gguf_writer_t *w, const char *tmp, const wbuf_t *h, uint64_t data_start,
                     uint64_t total, pd_err_t *err)
{
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return pd_err_set(err, PD_EIO, "gguf writer: cannot create %s: %s", tmp, strerror(errno));
    int rc = 0;
    /* posix_fallocate reserves the blocks, so a full disk fails here rather
     * than as SIGBUS while the callbacks write into the mapping. */
    int e = posix_fallocate(fd, 0, (off_t)total);
    uint8_t *map = MAP_FAILED;
    if (e != 0) {
        rc = pd_err_set(err, PD_EIO, "gguf writer: cannot size %s to %" PRIu64 " bytes: %s",
                        tmp, total, strerror(e));
    } else {
        map = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED)
            rc = pd_err_set(err, PD_EIO, "gguf writer: cannot mmap %s: %s", tmp,
                            strerror(errno));
    }
    if (rc == 0)
        rc = fill_map(w, map, h, data_start, err);
    if (map != MAP_FAILED)
        munmap(map, (size_t)total);
    if (close(fd) != 0 && rc == 0)
        rc = pd_err_set(err, PD_EIO, "gguf writer: cannot close %s: %s", tmp, strerror(errno));
    return rc;
}

int pd_gguf_writer_write(pd_gguf_writer_t *w, const char *path, pd_err_t *err)
{
    if (w->first_err.code != 0)
        return pd_err_set(err, w->first_err.code, "%s", w->first_err.msg);
    wbuf_t h = {0};
    char *tmp = NULL;
    uint64_t data_bytes = 0, data_start = 0, total = 0;
    int rc = layout_tensors(w, &data_bytes, err);
    if (rc != 0)
        goto fail;
    if (build_header(w, &h) != 0) {
        rc = pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory for the header");
        goto fail;
    }
    if (align_up(h.len, w->alignment, &data_start) != 0 || data_start > UINT64_MAX - data_bytes ||
        (total = data_start + data_bytes) > SIZE_MAX || total > INT64_MAX) {
        rc = pd_err_set(err, PD_ERANGE, "gguf writer: file size overflows");
        goto fail;
    }
    size_t plen = strlen(path);
    if ((tmp = malloc(plen + 5)) == NULL) {
        rc = pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory");
        goto fail;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    rc = write_tmp(w, tmp, &h, data_start, total, err);
    /* No fsync: the files we write are rebuilt on demand, and fsync of a 1 GB
     * model costs seconds. The rename still makes the file appear whole. */
    if (rc == 0 && rename(tmp, path) != 0)
        rc = pd_err_set(err, PD_EIO, "gguf writer: cannot rename %s to %s: %s", tmp, path,
                        strerror(errno));
    if (rc != 0)
        unlink(tmp);
fail:
    free(tmp);
    free(h.p);
    return rc;
}
