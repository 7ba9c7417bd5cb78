/* mooncake.c -- see mooncake.h. */
#include "mooncake.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A non-negative integer field of o, at most max. */
static int get_uint(json_t *o, const char *key, uint64_t max, uint64_t *v, char *msg, size_t ml)
{
    json_t *x = json_object_get(o, key);
    if (!json_is_integer(x) || json_integer_value(x) < 0 ||
        (uint64_t)json_integer_value(x) > max) {
        snprintf(msg, ml, "%s: expected an integer in [0, %llu]", key, (unsigned long long)max);
        return -1;
    }
    *v = (uint64_t)json_integer_value(x);
    return 0;
}

int pd_mooncake_parse_line(const char *line, size_t len, uint32_t block_size,
                           pd_mooncake_req_t *out, char *msg, size_t ml)
{
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(o)) {
        snprintf(msg, ml, "not a JSON object (%s)", o ? "other JSON" : je.text);
        json_decref(o);
        return -1;
    }
    uint64_t at, in, outl;
    int rc = -1;
    if (get_uint(o, "timestamp", UINT64_C(1) << 50, &at, msg, ml) ||
        get_uint(o, "input_length", PD_MOONCAKE_MAX_LEN, &in, msg, ml) ||
        get_uint(o, "output_length", PD_MOONCAKE_MAX_LEN, &outl, msg, ml))
        goto done;
    json_t *ids = json_object_get(o, "hash_ids");
    size_t n = json_is_array(ids) ? json_array_size(ids) : 0;
    if (n == 0 || n > PD_MOONCAKE_MAX_IDS) {
        snprintf(msg, ml, "hash_ids: expected an array of 1..%d ids", PD_MOONCAKE_MAX_IDS);
        goto done;
    }
    if (in == 0 || outl == 0 || in <= (uint64_t)(n - 1) * block_size ||
        in > (uint64_t)n * block_size) {
        snprintf(msg, ml, "input_length %llu and output_length %llu: need input in "
                 "(%llu, %llu] for %zu hash ids of %u tokens, output >= 1",
                 (unsigned long long)in, (unsigned long long)outl,
                 (unsigned long long)(n - 1) * block_size, (unsigned long long)n * block_size, n,
                 block_size);
        goto done;
    }
    out->hash_ids = malloc(n * sizeof *out->hash_ids);
    if (out->hash_ids == NULL) {
        snprintf(msg, ml, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(ids, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0) {
            snprintf(msg, ml, "hash_ids[%zu]: expected a non-negative integer", i);
            free(out->hash_ids);
            out->hash_ids = NULL;
            goto done;
        }
        out->hash_ids[i] = (uint64_t)json_integer_value(x);
    }
    out->n_ids = (uint32_t)n;
    out->at_ms = at;
    out->input_length = (uint32_t)in;
    out->output_length = (uint32_t)outl;
    rc = 0;
done:
    json_decref(o);
    return rc;
}

void pd_mooncake_free(pd_mooncake_req_t *reqs, size_t n)
{
    for (size_t i = 0; reqs && i < n; i++)
        free(reqs[i].hash_ids);
    free(reqs);
}

int pd_mooncake_load(const char *path, uint32_t block_size, size_t max_reqs,
                     pd_mooncake_req_t **out, size_t *n_out, char *msg, size_t ml)
{
    *out = NULL;
    *n_out = 0;
    if (block_size == 0) {
        snprintf(msg, ml, "block size 0");
        return -1;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(msg, ml, "%s: %s", path, strerror(errno));
        return -1;
    }
    pd_mooncake_req_t *r = NULL;
    size_t n = 0, cap = 0, lineno = 0, lcap = 0;
    char *line = NULL, why[256];
    ssize_t len;
    int rc = 0;
    while (rc == 0 && n < max_reqs && (len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len == 0)
            continue;
        if (n == cap) {
            size_t c2 = cap ? cap * 2 : 256;
            pd_mooncake_req_t *p = realloc(r, c2 * sizeof *p);
            if (p == NULL) {
                snprintf(msg, ml, "%s: out of memory", path);
                rc = -1;
                break;
            }
            r = p;
            cap = c2;
        }
        if (pd_mooncake_parse_line(line, (size_t)len, block_size, &r[n], why, sizeof why) != 0) {
            snprintf(msg, ml, "%s line %zu: %s", path, lineno, why);
            rc = -1;
        } else if (n > 0 && r[n].at_ms < r[n - 1].at_ms) {
            snprintf(msg, ml, "%s line %zu: timestamp %llu before the previous line's %llu", path,
                     lineno, (unsigned long long)r[n].at_ms, (unsigned long long)r[n - 1].at_ms);
            free(r[n].hash_ids);
            rc = -1;
        } else {
            n++;
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(msg, ml, "%s: read error", path);
        rc = -1;
    }
    if (rc == 0 && n == 0) {
        snprintf(msg, ml, "%s: no requests", path);
        rc = -1;
    }
    free(line);
    fclose(f);
    if (rc != 0) {
        pd_mooncake_free(r, n);
        return -1;
    }
    *out = r;
    *n_out = n;
    return 0;
}
