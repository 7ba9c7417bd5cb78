/* config_internal.h -- what the config's two files share: the key table
 * (config.c) that the YAML loader (config_yaml.c) reads keys from, and the
 * table's lookups and value parser. Not part of the public API (config.h). */
#ifndef PD_CONFIG_INTERNAL_H
#define PD_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/config.h"

#define PD_CFG__MAX_KEYS 128    /* keys in the table (config.c checks at compile time) */
#define PD_CFG__MAX_SECTIONS 16 /* sections in the table */

typedef enum {
    K_U32,          /* uint32_t, decimal, [min, max] */
    K_U64,          /* uint64_t, decimal, [min, max] */
    K_BOOL,         /* bool: true/false/yes/no */
    K_STR,          /* char[size]: any printable UTF-8, no control chars */
    K_ENDPOINT,     /* char[size]: tcp://HOST:PORT, ipc://PATH, inproc://NAME */
    K_HOSTPORT,     /* char[size]: HOST:PORT or "" (off) */
    K_ADVERTISE,    /* char[size]: "" (auto), HOST or HOST:PORT; a real host (addr.h) */
    K_Z85,          /* char[size]: "" or a 40-char Z85 CURVE key */
    K_CHOICE_STR,   /* char[size]: one of choices */
    K_CHOICE_ENUM,  /* int-sized enum: index into choices */
    K_I32_LIST,     /* int32_t[PD_CFG_MAX_LIST] + uint32_t count, items in [min, max] */
    K_TOKEN_LIST,   /* char[PD_CFG_MAX_LIST][size] + count: printable, no spaces */
    K_Z85_LIST,     /* char[PD_CFG_MAX_LIST][size] + count: Z85 keys */
} cfg_kind_t;

typedef struct {
    const char *section;
    const char *key;
    cfg_kind_t kind;
    size_t off;               /* offset of the field (lists: of item 0) in pd_config_t */
    size_t size;              /* field bytes (strings: incl. NUL; lists: one item) */
    size_t count_off;         /* lists: offset of the uint32_t item count */
    uint64_t min, max;        /* integers and integer list items: inclusive range */
    const char *const *choices; /* K_CHOICE_*: NULL-terminated */
    bool is_secret;           /* written as "<redacted>" by a redacting dump */
} cfg_key_t;

extern const cfg_key_t pd_cfg__keys[]; /* grouped by section; index with pd_cfg__find_key */

bool pd_cfg__is_list(const cfg_key_t *k);
/* Distinct section names in table order; returns their count. */
size_t pd_cfg__sections(const char *out[PD_CFG__MAX_SECTIONS]);
int pd_cfg__find_section(const char *name, size_t len); /* index, or -1 */
int pd_cfg__find_key(const char *section, const char *key, size_t len); /* index, or -1 */
/* "max_batch_tokens, max_batch_size, ..." for section into buf. */
void pd_cfg__known_keys(const char *section, char *buf, size_t cap);
void pd_cfg__known_sections(char *buf, size_t cap);
/* A printable excerpt of an offending value for messages: at most 40 bytes,
 * control bytes shown as '?', "..." when cut. */
const char *pd_cfg__excerpt(const char *s, size_t len, char out[64]);
/* Parses one scalar for key k into c. For list keys, stores item `index`
 * (the caller updates the count). is_null marks a YAML null (empty plain
 * scalar, ~, null), which only strings accept (as ""). On failure writes the
 * reason into why ("expected ..., got '...'") and returns false. */
bool pd_cfg__parse_value(const cfg_key_t *k, pd_config_t *c, uint32_t index, const char *s,
                         size_t len, bool is_null, char *why, size_t why_cap);
uint32_t *pd_cfg__list_count(const cfg_key_t *k, pd_config_t *c);
void pd_cfg__list_clear(const cfg_key_t *k, pd_config_t *c); /* items zeroed, count 0 */

#endif
