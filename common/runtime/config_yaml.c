/* config_yaml.c -- the cluster YAML (libyaml) into a pd_config_t, key by
 * key through the table in config.c (config_internal.h).
 *
 * The loader walks libyaml's event stream (no document tree is built), so
 * memory is bounded by the 1 MiB input cap; it refuses anchors, aliases and
 * tags outright (no billion-laughs), and anything but a mapping of sections,
 * each a mapping of keys, each a scalar or (for list keys) a flat sequence.
 * It parses into a copy and commits only on success.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "runtime/config.h"
#include "runtime/config_internal.h"

/* ====== The loader ====== */

typedef struct {
    yaml_parser_t parser;
    const char *name;          /* file name for messages */
    pd_config_t *cfg;          /* the working copy */
    pd_err_t *err;
    size_t key_line[PD_CFG__MAX_KEYS]; /* line where a key was set, 0 = not yet */
    size_t sec_line[PD_CFG__MAX_SECTIONS];
} loader_t;

static size_t line_of(const yaml_mark_t *m) { return m->line + 1; }

static int syntax_error(loader_t *L)
{
    yaml_parser_t *p = &L->parser;
    if (p->error == YAML_MEMORY_ERROR)
        return pd_err_set(L->err, PD_ENOMEM, "%s: out of memory while parsing YAML", L->name);
    if (p->error == YAML_READER_ERROR)
        return pd_err_set(L->err, PD_EINVAL, "%s: byte %zu: %s", L->name, p->problem_offset,
                          p->problem ? p->problem : "unreadable input");
    if (p->context)
        return pd_err_set(L->err, PD_EINVAL, "%s:%zu:%zu: YAML syntax error: %s (%s at line %zu)",
                          L->name, line_of(&p->problem_mark), p->problem_mark.column + 1,
                          p->problem ? p->problem : "?", p->context, line_of(&p->context_mark));
    return pd_err_set(L->err, PD_EINVAL, "%s:%zu:%zu: YAML syntax error: %s", L->name,
                      line_of(&p->problem_mark), p->problem_mark.column + 1,
                      p->problem ? p->problem : "?");
}

/* The next event, refusing aliases, anchors and tags. On failure the event
 * is already freed. */
static int next_event(loader_t *L, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&L->parser, ev))
        return syntax_error(L);
    const yaml_char_t *anchor = NULL, *tag = NULL;
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        anchor = ev->data.alias.anchor;
        break;
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        break;
    default:
        break;
    }
    if (ev->type == YAML_ALIAS_EVENT || anchor) {
        size_t line = line_of(&ev->start_mark);
        yaml_event_delete(ev);
        return pd_err_set(L->err, PD_EINVAL, "%s:%zu: YAML anchors and aliases are not allowed",
                          L->name, line);
    }
    if (tag) {
        size_t line = line_of(&ev->start_mark);
        yaml_event_delete(ev);
        return pd_err_set(L->err, PD_EINVAL, "%s:%zu: YAML tags are not allowed", L->name, line);
    }
    return 0;
}

/* A YAML null: empty plain scalar, ~ or null. */
static bool is_null_scalar(const yaml_event_t *ev)
{
    if (ev->type != YAML_SCALAR_EVENT || ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    return n == 0 || (n == 1 && s[0] == '~') || (n == 4 && (memcmp(s, "null", 4) == 0 ||
                                                            memcmp(s, "Null", 4) == 0 ||
                                                            memcmp(s, "NULL", 4) == 0));
}

static const char *what_event(const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_MAPPING_START_EVENT: return "a mapping";
    case YAML_SEQUENCE_START_EVENT: return "a list";
    case YAML_SCALAR_EVENT: return "a scalar";
    default: return "something else";
    }
}

/* The value of list key k: a flat sequence of scalars (or a null = empty).
 * ev is the value's first event, consumed here. */
static int load_list(loader_t *L, const cfg_key_t *k, yaml_event_t *ev)
{
    char why[PD_ERR_MSG_MAX / 2];
    size_t line = line_of(&ev->start_mark);
    pd_cfg__list_clear(k, L->cfg);
    if (is_null_scalar(ev)) {
        yaml_event_delete(ev);
        return 0;
    }
    if (ev->type != YAML_SEQUENCE_START_EVENT) {
        const char *what = what_event(ev);
        yaml_event_delete(ev);
        return pd_err_set(L->err, PD_EINVAL, "%s:%zu: %s.%s: expected a list like [a, b], got %s",
                          L->name, line, k->section, k->key, what);
    }
    yaml_event_delete(ev);
    uint32_t *count = pd_cfg__list_count(k, L->cfg);
    for (;;) {
        yaml_event_t item;
        int rc = next_event(L, &item);
        if (rc)
            return rc;
        line = line_of(&item.start_mark);
        if (item.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&item);
            return 0;
        }
        if (item.type != YAML_SCALAR_EVENT) {
            const char *what = what_event(&item);
            yaml_event_delete(&item);
            return pd_err_set(L->err, PD_EINVAL, "%s:%zu: %s.%s: list items must be scalars, got %s",
                              L->name, line, k->section, k->key, what);
        }
        if (*count >= PD_CFG_MAX_LIST) {
            yaml_event_delete(&item);
            return pd_err_set(L->err, PD_EINVAL, "%s:%zu: %s.%s: at most %d items allowed",
                              L->name, line, k->section, k->key, PD_CFG_MAX_LIST);
        }
        bool ok = pd_cfg__parse_value(k, L->cfg, *count, (const char *)item.data.scalar.value,
                              item.data.scalar.length, is_null_scalar(&item), why, sizeof why);
        yaml_event_delete(&item);
        if (!ok)
            return pd_err_set(L->err, PD_EINVAL, "%s:%zu: %s.%s: %s", L->name, line, k->section,
                              k->key, why);
        (*count)++;
    }
}

/* The value of key k; ev is its first event, consumed here. */
static int load_value(loader_t *L, const cfg_key_t *k, yaml_event_t *ev)
{
    if (pd_cfg__is_list(k))
        return load_list(L, k, ev);
    size_t line = line_of(&ev->start_mark);
    if (ev->type != YAML_SCALAR_EVENT) {
        const char *what = what_event(ev);
        yaml_event_delete(ev);
        return pd_err_set(L->err, PD_EINVAL, "%s:%zu: %s.%s: expected a single value, got %s",
                          L->name, line, k->section, k->key, what);
    }
    char why[PD_ERR_MSG_MAX / 2];
    bool ok = pd_cfg__parse_value(k, L->cfg, 0, (const char *)ev->data.scalar.value,
                          ev->data.scalar.length, is_null_scalar(ev), why, sizeof why);
    yaml_event_delete(ev);
    if (!ok)
        return pd_err_set(L->err, PD_EINVAL, "%s:%zu: %s.%s: %s", L->name, line, k->section,
                          k->key, why);
    return 0;
}

/* The keys of one section, after its MAPPING_START. */
static int load_section(loader_t *L, const char *section)
{
    char known[PD_ERR_MSG_MAX / 2];
    for (;;) {
        yaml_event_t kev, vev;
        int rc = next_event(L, &kev);
        if (rc)
            return rc;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return 0;
        }
        size_t line = line_of(&kev.start_mark);
        if (kev.type != YAML_SCALAR_EVENT) {
            const char *what = what_event(&kev);
            yaml_event_delete(&kev);
            return pd_err_set(L->err, PD_EINVAL, "%s:%zu: %s: expected a key name, got %s",
                              L->name, line, section, what);
        }
        char ex[64];
        int ki = pd_cfg__find_key(section, (const char *)kev.data.scalar.value, kev.data.scalar.length);
        if (ki < 0) {
            pd_cfg__known_keys(section, known, sizeof known);
            pd_err_set(L->err, PD_EINVAL, "%s:%zu: unknown key '%s.%s' (known: %s)", L->name, line,
                       section,
                       pd_cfg__excerpt((const char *)kev.data.scalar.value, kev.data.scalar.length, ex),
                       known);
            yaml_event_delete(&kev);
            return PD_EINVAL;
        }
        yaml_event_delete(&kev);
        const cfg_key_t *k = &pd_cfg__keys[ki];
        if (L->key_line[ki])
            return pd_err_set(L->err, PD_EINVAL, "%s:%zu: duplicate key '%s.%s' (first at line %zu)",
                              L->name, line, k->section, k->key, L->key_line[ki]);
        L->key_line[ki] = line;
        rc = next_event(L, &vev);
        if (rc)
            return rc;
        rc = load_value(L, k, &vev);
        if (rc)
            return rc;
    }
}

/* The top-level mapping of sections, after its MAPPING_START. */
static int load_sections(loader_t *L)
{
    const char *names[PD_CFG__MAX_SECTIONS];
    pd_cfg__sections(names);
    char known[PD_ERR_MSG_MAX / 2];
    for (;;) {
        yaml_event_t kev, vev;
        int rc = next_event(L, &kev);
        if (rc)
            return rc;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return 0;
        }
        size_t line = line_of(&kev.start_mark);
        if (kev.type != YAML_SCALAR_EVENT) {
            const char *what = what_event(&kev);
            yaml_event_delete(&kev);
            return pd_err_set(L->err, PD_EINVAL, "%s:%zu: expected a section name, got %s",
                              L->name, line, what);
        }
        char ex[64];
        int si = pd_cfg__find_section((const char *)kev.data.scalar.value, kev.data.scalar.length);
        if (si < 0) {
            pd_cfg__known_sections(known, sizeof known);
            pd_err_set(L->err, PD_EINVAL, "%s:%zu: unknown section '%s' (known: %s)", L->name, line,
                       pd_cfg__excerpt((const char *)kev.data.scalar.value, kev.data.scalar.length, ex),
                       known);
            yaml_event_delete(&kev);
            return PD_EINVAL;
        }
        yaml_event_delete(&kev);
        const char *section = names[si];
        if (L->sec_line[si])
            return pd_err_set(L->err, PD_EINVAL,
                              "%s:%zu: duplicate section '%s' (first at line %zu)", L->name, line,
                              section, L->sec_line[si]);
        L->sec_line[si] = line;
        rc = next_event(L, &vev);
        if (rc)
            return rc;
        if (vev.type == YAML_MAPPING_START_EVENT) {
            yaml_event_delete(&vev);
            rc = load_section(L, section);
            if (rc)
                return rc;
        } else if (is_null_scalar(&vev)) {
            yaml_event_delete(&vev); /* "section:" with nothing under it */
        } else {
            const char *what = what_event(&vev);
            size_t vline = line_of(&vev.start_mark);
            yaml_event_delete(&vev);
            return pd_err_set(L->err, PD_EINVAL, "%s:%zu: section '%s' must be a mapping of keys, got %s",
                              L->name, vline, section, what);
        }
    }
}

/* The whole stream: at most one document whose root is a mapping (or null). */
static int load_stream(loader_t *L)
{
    yaml_event_t ev;
    int rc = next_event(L, &ev); /* STREAM_START */
    if (rc)
        return rc;
    yaml_event_delete(&ev);
    rc = next_event(L, &ev);
    if (rc)
        return rc;
    if (ev.type == YAML_STREAM_END_EVENT) { /* empty file: all defaults */
        yaml_event_delete(&ev);
        return 0;
    }
    yaml_event_delete(&ev); /* DOCUMENT_START */
    rc = next_event(L, &ev);
    if (rc)
        return rc;
    if (ev.type == YAML_MAPPING_START_EVENT) {
        yaml_event_delete(&ev);
        rc = load_sections(L);
        if (rc)
            return rc;
    } else if (is_null_scalar(&ev)) {
        yaml_event_delete(&ev);
    } else {
        size_t line = line_of(&ev.start_mark);
        const char *what = what_event(&ev);
        yaml_event_delete(&ev);
        return pd_err_set(L->err, PD_EINVAL,
                          "%s:%zu: the top level must be a mapping of sections, got %s", L->name,
                          line, what);
    }
    rc = next_event(L, &ev); /* DOCUMENT_END */
    if (rc)
        return rc;
    yaml_event_delete(&ev);
    rc = next_event(L, &ev);
    if (rc)
        return rc;
    if (ev.type != YAML_STREAM_END_EVENT) {
        size_t line = line_of(&ev.start_mark);
        yaml_event_delete(&ev);
        return pd_err_set(L->err, PD_EINVAL, "%s:%zu: only one YAML document is allowed", L->name,
                          line);
    }
    yaml_event_delete(&ev);
    return 0;
}

int pd_config_load_string(pd_config_t *c, const char *yaml, size_t len, const char *name,
                          pd_err_t *err)
{
    if (name == NULL)
        name = "<config>";
    if (len > PD_CFG_MAX_FILE_BYTES)
        return pd_err_set(err, PD_EINVAL, "%s: config is %zu bytes, more than the %u allowed", name,
                          len, PD_CFG_MAX_FILE_BYTES);
    if (yaml == NULL && len > 0)
        return pd_err_set(err, PD_EINVAL, "%s: no text", name);
    loader_t *L = calloc(1, sizeof *L);
    pd_config_t *work = malloc(sizeof *work);
    int rc = PD_ENOMEM;
    if (L == NULL || work == NULL) {
        pd_err_set(err, PD_ENOMEM, "%s: out of memory", name);
        goto fail;
    }
    memcpy(work, c, sizeof *work);
    L->name = name;
    L->cfg = work;
    L->err = err;
    if (!yaml_parser_initialize(&L->parser)) {
        pd_err_set(err, PD_ENOMEM, "%s: cannot initialize the YAML parser", name);
        goto fail;
    }
    yaml_parser_set_input_string(&L->parser, (const unsigned char *)(yaml ? yaml : ""), len);
    rc = load_stream(L);
    yaml_parser_delete(&L->parser);
    if (rc)
        goto fail;
    memcpy(c, work, sizeof *c);
    free(work);
    free(L);
    return 0;
fail:
    free(work);
    free(L);
    return rc;
}

int pd_config_load_file(pd_config_t *c, const char *path, pd_err_t *err)
{
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc = PD_EIO;
    if (fd < 0) {
        pd_err_set(err, PD_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        pd_err_set(err, PD_EIO, "%s: not a regular file", path);
        goto fail;
    }
    /* Read at most one byte more than the cap, whatever st_size claims. */
    size_t cap = (size_t)PD_CFG_MAX_FILE_BYTES + 1, len = 0;
    buf = malloc(cap);
    if (buf == NULL) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            pd_err_set(err, PD_EIO, "%s: read failed: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len > PD_CFG_MAX_FILE_BYTES) {
        rc = pd_err_set(err, PD_EINVAL, "%s: file is larger than %u bytes", path,
                        PD_CFG_MAX_FILE_BYTES);
        goto fail;
    }
    close(fd);
    rc = pd_config_load_string(c, buf, len, path, err);
    free(buf);
    return rc;
fail:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}
