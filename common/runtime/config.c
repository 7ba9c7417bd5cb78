/* config.c -- see config.h
 *
 * Every key lives in one table (pd_cfg__keys below): section, key, kind,
 * where its field is in pd_config_t, and its range. The YAML loader
 * (config_yaml.c), pd_config_set and pd_config_write all work from that
 * table, so adding a key is one line here (plus its default in
 * pd_config_default and its row in docs/config.md). This file: the table,
 * defaults, value parsing, flags, cross-field checks and the dump.
 */
#include "runtime/config.h"

#include "runtime/addr.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/config_internal.h"

/* ====== The key table ====== */

/* sec.fld is a member designator: it cannot take parentheses. */
// NOLINTNEXTLINE(bugprone-macro-parentheses)
#define FLD(sec, fld) offsetof(pd_config_t, sec.fld), sizeof(((pd_config_t *)0)->sec.fld)
// NOLINTNEXTLINE(bugprone-macro-parentheses)
#define ITEM(sec, fld) offsetof(pd_config_t, sec.fld[0]), sizeof(((pd_config_t *)0)->sec.fld[0])

#define U32(sec, fld, lo, hi) { #sec, #fld, K_U32, FLD(sec, fld), 0, (lo), (hi), NULL, false }
#define U64(sec, fld, lo, hi) { #sec, #fld, K_U64, FLD(sec, fld), 0, (lo), (hi), NULL, false }
#define BOOL(sec, fld) { #sec, #fld, K_BOOL, FLD(sec, fld), 0, 0, 0, NULL, false }
#define STRK(sec, fld, kind, secret) { #sec, #fld, kind, FLD(sec, fld), 0, 0, 0, NULL, secret }
#define CHOICE(sec, fld, kind, list) { #sec, #fld, kind, FLD(sec, fld), 0, 0, 0, list, false }
// NOLINTBEGIN(bugprone-macro-parentheses): sec.n_##fld is a member designator
#define LIST(sec, fld, kind, lo, hi, secret) \
    { #sec, #fld, kind, ITEM(sec, fld), offsetof(pd_config_t, sec.n_##fld), (lo), (hi), NULL, \
      secret }
// NOLINTEND(bugprone-macro-parentheses)

#define MS_DAY 86400000u /* one day in ms: the cap of every timeout */
#define MIB (1024u * 1024u)

static const char *const g_log_levels[] = { "debug", "info", "warn", "error", NULL };
static const char *const g_kv_dtypes[] = { "f32", "f16", NULL };
/* Index = pd_kv_load_failure_t value. */
static const char *const g_load_failures[] = { "recompute", "fail", NULL };
static const char *const g_routings[] = { "kv_aware", "round_robin", "least_loaded", NULL };
/* Index = pd_kv_transfer_t value. */
static const char *const g_kv_transfers[] = { "whole", "layer", NULL };
/* router/chat_template.h's families; "auto" = the GGUF's tokenizer.chat_template. */
static const char *const g_chat_templates[] = { "auto",    "chatml", "llama2", "llama3",
                                                "mistral", "zephyr", "gemma",  "phi3", NULL };

const cfg_key_t pd_cfg__keys[] = {
    STRK(model, path, K_STR, false),
    STRK(model, name, K_STR, false),
    U32(model, max_seq_len, 0, 1048576),
    LIST(model, end_tokens, K_I32_LIST, 0, INT32_MAX, false),
    U32(model, threads, 1, 1024),
    BOOL(model, batch_invariant),
    BOOL(model, batch_invariant_quant),
    BOOL(model, resident),

    STRK(router, client_endpoint, K_ENDPOINT, false),
    STRK(router, worker_endpoint, K_ENDPOINT, false),
    U32(router, max_queue, 1, 1000000),
    U32(router, max_inflight, 1, 1000000),
    U32(router, request_timeout_ms, 1, MS_DAY),
    U32(router, max_tokens_limit, 1, 1048576),
    U32(router, heartbeat_ms, 10, 60000),
    U32(router, liveness, 1, 100),
    U32(router, stream_stall_ms, 1, MS_DAY),
    U32(router, client_heartbeat_ms, 10, 60000),
    U32(router, client_liveness, 1, 100),
    CHOICE(router, routing, K_CHOICE_ENUM, g_routings),

    U32(prefill, max_batch_tokens, 1, 1048576),
    U32(prefill, max_batch_size, 1, 4096),
    U32(prefill, wait_ms, 0, 10000),
    U32(prefill, max_inflight_kv, 1, 100000),
    U32(prefill, chunk_tokens, 0, 1048576),

    U32(decode, max_batch_size, 1, 4096),
    U32(decode, wait_ms, 0, 10000),
    STRK(decode, kv_endpoint, K_ENDPOINT, false),
    STRK(decode, kv_advertise, K_ADVERTISE, false),

    STRK(worker, router, K_ENDPOINT, false),
    U32(worker, heartbeat_ms, 10, 60000),
    U32(worker, liveness, 1, 100),
    U32(worker, drain_timeout_ms, 0, MS_DAY),
    U32(worker, lease_ms, 1, MS_DAY),
    U32(worker, compute_timeout_ms, 10, MS_DAY),

    U32(kv, block_size, 1, 1024),
    U32(kv, num_blocks, 0, 16777216),
    U32(kv, memory_mb, 0, 1048576),
    CHOICE(kv, dtype, K_CHOICE_STR, g_kv_dtypes),
    CHOICE(kv, load_failure, K_CHOICE_ENUM, g_load_failures),
    BOOL(kv, prefix_caching),
    CHOICE(kv, transfer, K_CHOICE_ENUM, g_kv_transfers),

    U32(net, hwm, 1, 10000000),
    U64(net, max_msg_bytes, 1024, 4096ull * MIB),
    U32(net, linger_ms, 0, 60000),
    U32(net, handshake_ms, 1, 600000),

    BOOL(security, curve),
    STRK(security, server_public_key, K_Z85, false),
    STRK(security, server_secret_key, K_Z85, true),
    STRK(security, client_public_key, K_Z85, false),
    STRK(security, client_secret_key, K_Z85, true),
    LIST(security, allowed_keys, K_Z85_LIST, 0, 0, false),

    STRK(http, listen, K_HOSTPORT, false),
    LIST(http, api_keys, K_TOKEN_LIST, 0, 0, true),
    U32(http, max_connections, 1, 65536),
    U64(http, max_body_bytes, 1024, 1024ull * MIB),
    U32(http, idle_timeout_s, 1, 86400),
    CHOICE(http, chat_template, K_CHOICE_STR, g_chat_templates),

    CHOICE(log, level, K_CHOICE_STR, g_log_levels),
    STRK(log, dir, K_STR, false),
};

#define N_KEYS (sizeof pd_cfg__keys / sizeof pd_cfg__keys[0])
_Static_assert(N_KEYS <= PD_CFG__MAX_KEYS, "raise PD_CFG__MAX_KEYS (config_internal.h)");
#define Z85_KEY_CHARS 40

static const char g_z85_chars[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

bool pd_cfg__is_list(const cfg_key_t *k)
{
    return k->kind == K_I32_LIST || k->kind == K_TOKEN_LIST || k->kind == K_Z85_LIST;
}

/* Distinct section names in table order; returns their count. */
size_t pd_cfg__sections(const char *out[PD_CFG__MAX_SECTIONS])
{
    size_t n = 0;
    for (size_t i = 0; i < N_KEYS; i++)
        if (i == 0 || strcmp(pd_cfg__keys[i - 1].section, pd_cfg__keys[i].section) != 0) {
            assert(n < PD_CFG__MAX_SECTIONS); /* raise PD_CFG__MAX_SECTIONS with a new section */
            out[n++] = pd_cfg__keys[i].section; /* the table groups keys by section */
        }
    return n;
}

int pd_cfg__find_section(const char *name, size_t len)
{
    const char *names[PD_CFG__MAX_SECTIONS];
    size_t n = pd_cfg__sections(names);
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
            return (int)i;
    return -1;
}

int pd_cfg__find_key(const char *section, const char *key, size_t len)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(pd_cfg__keys[i].section, section) == 0 && strlen(pd_cfg__keys[i].key) == len &&
            memcmp(pd_cfg__keys[i].key, key, len) == 0)
            return (int)i;
    return -1;
}

/* "max_batch_tokens, max_batch_size, ..." for section into buf. */
void pd_cfg__known_keys(const char *section, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_KEYS; i++) {
        if (strcmp(pd_cfg__keys[i].section, section) != 0)
            continue;
        int n = snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", pd_cfg__keys[i].key);
        if (n < 0 || (size_t)n >= cap - used)
            return;
        used += (size_t)n;
    }
}

void pd_cfg__known_sections(char *buf, size_t cap)
{
    const char *names[PD_CFG__MAX_SECTIONS];
    size_t n = pd_cfg__sections(names), used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", names[i]);
        if (w < 0 || (size_t)w >= cap - used)
            return;
        used += (size_t)w;
    }
}

/* ====== Defaults ====== */

static void copy_str(char *dst, size_t cap, const char *src)
{
    memset(dst, 0, cap);
    snprintf(dst, cap, "%s", src);
}

void pd_config_default(pd_config_t *c)
{
    /* Zero everything first (padding included) so two configs holding the
     * same values compare equal with memcmp. */
    memset(c, 0, sizeof *c);

    c->model.max_seq_len = 0;
    c->model.threads = 1;
    c->model.batch_invariant = true;
    c->model.resident = true;

    copy_str(c->router.client_endpoint, sizeof c->router.client_endpoint, "tcp://127.0.0.1:5555");
    copy_str(c->router.worker_endpoint, sizeof c->router.worker_endpoint, "tcp://127.0.0.1:5556");
    c->router.max_queue = 1024;
    c->router.max_inflight = 256;
    c->router.request_timeout_ms = 600000;
    c->router.max_tokens_limit = 4096;
    c->router.heartbeat_ms = 500;
    c->router.liveness = 4;
    c->router.stream_stall_ms = 30000;
    c->router.client_heartbeat_ms = 1000;
    c->router.client_liveness = 5;
    c->router.routing = PD_ROUTING_KV_AWARE;

    c->prefill.max_batch_tokens = 2048;
    c->prefill.max_batch_size = 16;
    c->prefill.wait_ms = 2;
    c->prefill.max_inflight_kv = 64;
    c->prefill.chunk_tokens = 32;

    c->decode.max_batch_size = 32;
    c->decode.wait_ms = 1;
    copy_str(c->decode.kv_endpoint, sizeof c->decode.kv_endpoint, "tcp://127.0.0.1:0");

    copy_str(c->worker.router, sizeof c->worker.router, "tcp://127.0.0.1:5556");
    c->worker.heartbeat_ms = 500;
    c->worker.liveness = 4;
    c->worker.drain_timeout_ms = 30000;
    c->worker.lease_ms = 10000;
    c->worker.compute_timeout_ms = 60000;

    c->kv.block_size = 16;
    c->kv.num_blocks = 0;
    c->kv.memory_mb = 512;
    copy_str(c->kv.dtype, sizeof c->kv.dtype, "f32");
    c->kv.load_failure = PD_KV_LOAD_RECOMPUTE;
    c->kv.prefix_caching = true;
    c->kv.transfer = PD_KV_TRANSFER_WHOLE;

    c->net.hwm = 10000;
    c->net.max_msg_bytes = 16ull * MIB;
    c->net.linger_ms = 100;
    c->net.handshake_ms = 5000;

    c->security.curve = false;

    c->http.max_connections = 256;
    c->http.max_body_bytes = MIB;
    c->http.idle_timeout_s = 30;
    copy_str(c->http.chat_template, sizeof c->http.chat_template, "auto");

    copy_str(c->log.level, sizeof c->log.level, "info");
    copy_str(c->log.dir, sizeof c->log.dir, "run");
}

/* ====== Value parsing (shared by the file and pd_config_set) ====== */

/* A printable excerpt of an offending value for messages: at most 40 bytes,
 * control bytes shown as '?', "..." when cut. */
const char *pd_cfg__excerpt(const char *s, size_t len, char out[64])
{
    size_t n = len < 40 ? len : 40, j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[j++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (n < len) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = '\0';
    return out;
}

/* Decimal digits only (no sign, no spaces, no leading zeros but "0"),
 * overflow-checked. */
static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20 || (len > 1 && s[0] == '0'))
        return false;
    char buf[21];
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        buf[i] = s[i];
    }
    buf[len] = '\0';
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno == ERANGE || end != buf + len)
        return false;
    *out = (uint64_t)v;
    return true;
}

static bool ieq(const char *s, size_t len, const char *word)
{
    if (strlen(word) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char a = s[i];
        if (a >= 'A' && a <= 'Z')
            a = (char)(a - 'A' + 'a');
        if (a != word[i])
            return false;
    }
    return true;
}

/* Valid UTF-8 with no control characters (C0, DEL). NUL is a control char. */
static bool is_clean_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x20 || c == 0x7f)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i - 1 < n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

static bool has_prefix(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(s, prefix, n) == 0;
}

/* "HOST:PORT" with a non-empty host and a decimal port in [0, 65535]. */
static bool is_host_port(const char *s, size_t len)
{
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ':')
            colon = s + i;
    if (colon == NULL || colon == s)
        return false;
    size_t plen = len - (size_t)(colon + 1 - s);
    uint64_t port;
    return parse_u64(colon + 1, plen, &port) && port <= 65535;
}

static bool is_endpoint(const char *s, size_t len)
{
    if (has_prefix(s, len, "tcp://"))
        return is_host_port(s + 6, len - 6);
    if (has_prefix(s, len, "ipc://"))
        return len > 6;
    if (has_prefix(s, len, "inproc://"))
        return len > 9;
    return false;
}

/* Checks a Z85 key; writes the problem into why. Empty = unset = fine. */
static bool check_z85(const char *s, size_t len, char *why, size_t why_cap)
{
    if (len == 0)
        return true;
    if (len != Z85_KEY_CHARS) {
        snprintf(why, why_cap, "expected a %d-character Z85 key, got %zu characters",
                 Z85_KEY_CHARS, len);
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\0' || strchr(g_z85_chars, s[i]) == NULL) {
            char ex[64];
            snprintf(why, why_cap, "invalid Z85 character '%s' at position %zu",
                     pd_cfg__excerpt(s + i, 1, ex), i);
            return false;
        }
    }
    return true;
}

/* An API key: non-empty, printable ASCII, no spaces or commas. */
static bool is_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == ',')
            return false;
    return true;
}

static void choices_text(const char *const *choices, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; choices[i]; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", choices[i]);
        if (n < 0 || (size_t)n >= cap - used)
            return;
        used += (size_t)n;
    }
}

/* Stores s (len bytes, not NUL-terminated) into a char[cap] field. */
static bool store_str(char *dst, size_t cap, const char *s, size_t len, char *why, size_t why_cap)
{
    if (len >= cap) {
        snprintf(why, why_cap, "expected a string of at most %zu bytes, got %zu bytes", cap - 1,
                 len);
        return false;
    }
    memset(dst, 0, cap);
    memcpy(dst, s, len);
    return true;
}

/* Parses one scalar for key k into c. For list keys, stores item `index`
 * (the caller updates the count). is_null marks a YAML null (empty plain
 * scalar, ~, null), which only strings accept (as ""). On failure writes the
 * reason into why ("expected ..., got '...'") and returns false. */
bool pd_cfg__parse_value(const cfg_key_t *k, pd_config_t *c, uint32_t index, const char *s,
                        size_t len, bool is_null, char *why, size_t why_cap)
{
    char *base = (char *)c;
    char ex[64], adv[160];
    if (is_null && !pd_cfg__is_list(k)) {
        s = "";
        len = 0;
    }
    switch (k->kind) {
    case K_U32:
    case K_U64: {
        uint64_t v;
        if (is_null || !parse_u64(s, len, &v) || v < k->min || v > k->max) {
            snprintf(why, why_cap, "expected an integer in [%llu, %llu], got '%s'",
                     (unsigned long long)k->min, (unsigned long long)k->max,
                     is_null ? "" : pd_cfg__excerpt(s, len, ex));
            return false;
        }
        if (k->kind == K_U32) {
            uint32_t v32 = (uint32_t)v; /* v <= max <= UINT32_MAX for K_U32 rows */
            memcpy(base + k->off, &v32, sizeof v32);
        } else {
            memcpy(base + k->off, &v, sizeof v);
        }
        return true;
    }
    case K_BOOL: {
        bool v;
        if (ieq(s, len, "true") || ieq(s, len, "yes"))
            v = true;
        else if (ieq(s, len, "false") || ieq(s, len, "no"))
            v = false;
        else {
            snprintf(why, why_cap, "expected true or false (or yes/no), got '%s'",
                     pd_cfg__excerpt(s, len, ex));
            return false;
        }
        memcpy(base + k->off, &v, sizeof v);
        return true;
    }
    case K_STR:
    case K_ENDPOINT:
    case K_HOSTPORT:
    case K_ADVERTISE:
    case K_Z85:
        if (!is_clean_utf8(s, len)) {
            snprintf(why, why_cap, "expected UTF-8 text without control characters, got '%s'",
                     pd_cfg__excerpt(s, len, ex));
            return false;
        }
        if (k->kind == K_ENDPOINT && !is_endpoint(s, len)) {
            snprintf(why, why_cap,
                     "expected a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH or "
                     "inproc://NAME), got '%s'",
                     pd_cfg__excerpt(s, len, ex));
            return false;
        }
        if (k->kind == K_HOSTPORT && len > 0 && !is_host_port(s, len)) {
            snprintf(why, why_cap, "expected HOST:PORT (or \"\" for off), got '%s'",
                     pd_cfg__excerpt(s, len, ex));
            return false;
        }
        if (k->kind == K_Z85 && !check_z85(s, len, why, why_cap))
            return false;
        if (k->kind == K_ADVERTISE && !pd_addr_check_advertise(s, len, adv, sizeof adv)) {
            snprintf(why, why_cap, "%s, got '%s'", adv, pd_cfg__excerpt(s, len, ex));
            return false;
        }
        return store_str(base + k->off, k->size, s, len, why, why_cap);
    case K_CHOICE_STR:
    case K_CHOICE_ENUM:
        for (int i = 0; k->choices[i]; i++) {
            if (strlen(k->choices[i]) != len || memcmp(k->choices[i], s, len) != 0)
                continue;
            if (k->kind == K_CHOICE_ENUM) {
                int v = i;
                memcpy(base + k->off, &v, sizeof v);
                return true;
            }
            return store_str(base + k->off, k->size, s, len, why, why_cap);
        }
        {
            char list[128];
            choices_text(k->choices, list, sizeof list);
            snprintf(why, why_cap, "expected one of %s, got '%s'", list, pd_cfg__excerpt(s, len, ex));
        }
        return false;
    case K_I32_LIST: {
        uint64_t v;
        if (is_null || !parse_u64(s, len, &v) || v < k->min || v > k->max) {
            snprintf(why, why_cap, "item %u: expected an integer in [%llu, %llu], got '%s'",
                     index, (unsigned long long)k->min, (unsigned long long)k->max,
                     is_null ? "" : pd_cfg__excerpt(s, len, ex));
            return false;
        }
        int32_t v32 = (int32_t)v; /* v <= INT32_MAX */
        memcpy(base + k->off + index * k->size, &v32, sizeof v32);
        return true;
    }
    case K_TOKEN_LIST:
        if (is_null || !is_token(s, len)) {
            snprintf(why, why_cap,
                     "item %u: expected a non-empty key of printable characters without "
                     "spaces or commas",
                     index);
            return false;
        }
        if (!store_str(base + k->off + index * k->size, k->size, s, len, why, why_cap))
            return false;
        return true;
    case K_Z85_LIST: {
        char inner[160];
        if (is_null || len == 0) {
            snprintf(why, why_cap, "item %u: expected a %d-character Z85 key, got ''", index,
                     Z85_KEY_CHARS);
            return false;
        }
        if (!check_z85(s, len, inner, sizeof inner)) {
            snprintf(why, why_cap, "item %u: %s", index, inner);
            return false;
        }
        return store_str(base + k->off + index * k->size, k->size, s, len, why, why_cap);
    }
    }
    snprintf(why, why_cap, "internal error: unknown key kind");
    return false;
}

uint32_t *pd_cfg__list_count(const cfg_key_t *k, pd_config_t *c)
{
    return (uint32_t *)((char *)c + k->count_off);
}

/* Empties a list field (items zeroed so memcmp equality holds). */
void pd_cfg__list_clear(const cfg_key_t *k, pd_config_t *c)
{
    memset((char *)c + k->off, 0, k->size * PD_CFG_MAX_LIST);
    *pd_cfg__list_count(k, c) = 0;
}

/* ====== Flags ====== */

int pd_config_set(pd_config_t *c, const char *key, const char *value, pd_err_t *err)
{
    char known[PD_ERR_MSG_MAX / 2], ex[64];
    if (key == NULL || value == NULL)
        return pd_err_set(err, PD_EINVAL, "pd_config_set: NULL key or value");
    const char *dot = strchr(key, '.');
    size_t klen = strlen(key);
    if (dot == NULL || pd_cfg__find_section(key, (size_t)(dot - key)) < 0) {
        pd_cfg__known_sections(known, sizeof known);
        return pd_err_set(err, PD_EINVAL, "unknown key '%s' (expected SECTION.KEY; sections: %s)",
                          pd_cfg__excerpt(key, klen, ex), known);
    }
    char section[32];
    size_t slen = (size_t)(dot - key);
    if (slen >= sizeof section)
        return pd_err_set(err, PD_EINVAL, "unknown key '%s'", pd_cfg__excerpt(key, klen, ex));
    memcpy(section, key, slen);
    section[slen] = '\0';
    int ki = pd_cfg__find_key(section, dot + 1, strlen(dot + 1));
    if (ki < 0) {
        pd_cfg__known_keys(section, known, sizeof known);
        return pd_err_set(err, PD_EINVAL, "unknown key '%s' (known: %s)", pd_cfg__excerpt(key, klen, ex),
                          known);
    }
    const cfg_key_t *k = &pd_cfg__keys[ki];
    char why[PD_ERR_MSG_MAX / 2];
    pd_config_t *work = malloc(sizeof *work);
    if (work == NULL)
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory", key);
    memcpy(work, c, sizeof *work);
    if (!pd_cfg__is_list(k)) {
        if (!pd_cfg__parse_value(k, work, 0, value, strlen(value), false, why, sizeof why))
            goto fail;
    } else {
        /* Comma-separated items, spaces around each trimmed; "" = empty list. */
        pd_cfg__list_clear(k, work);
        uint32_t *count = pd_cfg__list_count(k, work);
        const char *p = value;
        while (*p) { /* the loop ends at the last item (break below) */
            const char *end = strchr(p, ',');
            if (end == NULL)
                end = p + strlen(p);
            const char *a = p, *b = end;
            while (a < b && *a == ' ')
                a++;
            while (b > a && b[-1] == ' ')
                b--;
            if (*count >= PD_CFG_MAX_LIST) {
                snprintf(why, sizeof why, "at most %d items allowed", PD_CFG_MAX_LIST);
                goto fail;
            }
            if (!pd_cfg__parse_value(k, work, *count, a, (size_t)(b - a), false, why, sizeof why))
                goto fail;
            (*count)++;
            if (*end == '\0')
                break;
            p = end + 1;
        }
    }
    memcpy(c, work, sizeof *c);
    free(work);
    return 0;
fail:
    free(work);
    return pd_err_set(err, PD_EINVAL, "%s.%s: %s", k->section, k->key, why);
}

/* ====== Cross-field checks ====== */

int pd_config_validate(const pd_config_t *c, pd_err_t *err)
{
    uint32_t bs = c->kv.block_size;
    if (bs == 0 || bs > 1024 || (bs & (bs - 1)) != 0)
        return pd_err_set(err, PD_EINVAL, "kv.block_size: must be a power of two in [1, 1024], got %u",
                          bs);
    if (c->kv.num_blocks == 0 && c->kv.memory_mb == 0)
        return pd_err_set(err, PD_EINVAL,
                          "kv: set kv.num_blocks or kv.memory_mb (both are 0, so no KV blocks)");
    if (c->prefill.max_batch_tokens < 1)
        return pd_err_set(err, PD_EINVAL, "prefill.max_batch_tokens: must be at least 1");
    if (c->prefill.max_batch_size < 1)
        return pd_err_set(err, PD_EINVAL, "prefill.max_batch_size: must be at least 1");
    if (c->decode.max_batch_size < 1)
        return pd_err_set(err, PD_EINVAL, "decode.max_batch_size: must be at least 1");
    if (c->model.n_end_tokens > PD_CFG_MAX_LIST || c->security.n_allowed_keys > PD_CFG_MAX_LIST ||
        c->http.n_api_keys > PD_CFG_MAX_LIST)
        return pd_err_set(err, PD_EINVAL, "a list holds more than %d items", PD_CFG_MAX_LIST);
    if (c->security.curve) {
        /* Each process needs its own subset of keys; what is set must pair. */
        const pd_cfg_security_t *s = &c->security;
        if (s->server_secret_key[0] && !s->server_public_key[0])
            return pd_err_set(err, PD_EINVAL,
                              "security.server_public_key: required with security.server_secret_key");
        if (s->client_secret_key[0] && !s->client_public_key[0])
            return pd_err_set(err, PD_EINVAL,
                              "security.client_public_key: required with security.client_secret_key");
        if (!s->server_public_key[0])
            return pd_err_set(err, PD_EINVAL,
                              "security.server_public_key: required when security.curve is true");
    }
    return 0;
}

/* ====== Dump ====== */

static void write_quoted(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void write_value(FILE *f, const cfg_key_t *k, const pd_config_t *c, bool redact)
{
    const char *base = (const char *)c;
    const char *p = base + k->off;
    switch (k->kind) {
    case K_U32: {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        fprintf(f, "%u", v);
        break;
    }
    case K_U64: {
        uint64_t v;
        memcpy(&v, p, sizeof v);
        fprintf(f, "%llu", (unsigned long long)v);
        break;
    }
    case K_BOOL: {
        bool v;
        memcpy(&v, p, sizeof v);
        fputs(v ? "true" : "false", f);
        break;
    }
    case K_STR:
    case K_ENDPOINT:
    case K_HOSTPORT:
    case K_ADVERTISE:
    case K_Z85:
    case K_CHOICE_STR:
        write_quoted(f, (redact && k->is_secret && p[0]) ? "<redacted>" : p);
        break;
    case K_CHOICE_ENUM: {
        int v;
        memcpy(&v, p, sizeof v);
        int n = 0;
        while (k->choices[n])
            n++;
        fputs(v >= 0 && v < n ? k->choices[v] : "?", f);
        break;
    }
    case K_I32_LIST:
    case K_TOKEN_LIST:
    case K_Z85_LIST: {
        uint32_t n;
        memcpy(&n, base + k->count_off, sizeof n);
        if (n > PD_CFG_MAX_LIST)
            n = PD_CFG_MAX_LIST;
        fputc('[', f);
        for (uint32_t i = 0; i < n; i++) {
            if (i)
                fputs(", ", f);
            const char *item = p + i * k->size;
            if (k->kind == K_I32_LIST) {
                int32_t v;
                memcpy(&v, item, sizeof v);
                fprintf(f, "%d", v);
            } else {
                write_quoted(f, (redact && k->is_secret) ? "<redacted>" : item);
            }
        }
        fputc(']', f);
        break;
    }
    }
}

int pd_config_write(const pd_config_t *c, FILE *f, bool redact_secrets, pd_err_t *err)
{
    const char *section = NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key_t *k = &pd_cfg__keys[i];
        if (section == NULL || strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(f, "%s:\n", section);
        }
        fprintf(f, "  %s: ", k->key);
        write_value(f, k, c, redact_secrets);
        fputc('\n', f);
    }
    if (fflush(f) != 0 || ferror(f))
        return pd_err_set(err, PD_EIO, "writing the config failed: %s", strerror(errno));
    return 0;
}
