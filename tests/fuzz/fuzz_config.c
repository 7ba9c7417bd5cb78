/* fuzz_config.c -- libFuzzer target over pd_config_load_string.
 *
 * Properties checked on every input:
 *   - loading never crashes, leaks or reads out of bounds (ASan/UBSan);
 *   - a failed load leaves the config exactly as it was and sets a message;
 *   - a successful load dumps (pd_config_write) to YAML that loads back to
 *     the very same config (the writer and the reader agree);
 *   - pd_config_set with the input split at its first '=' never crashes and,
 *     on failure, changes nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static pd_config_t c, before, back; /* static: keeps the fuzzer's stack small */
    pd_err_t err = { 0 };
    pd_config_default(&c);
    memcpy(&before, &c, sizeof c);
    int rc = pd_config_load_string(&c, (const char *)data, size, "fuzz", &err);
    if (rc != 0) {
        if (memcmp(&c, &before, sizeof c) != 0 || err.msg[0] == '\0')
            abort();
    } else {
        (void)pd_config_validate(&c, &err);
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        if (f == NULL)
            return 0;
        if (pd_config_write(&c, f, false, &err) != 0)
            abort();
        fclose(f);
        pd_config_default(&back);
        if (pd_config_load_string(&back, text, len, "dump", &err) != 0) {
            fprintf(stderr, "dump does not reload: %s\n%s\n", err.msg, text);
            abort();
        }
        if (memcmp(&c, &back, sizeof c) != 0)
            abort();
        free(text);
    }

    /* The same bytes as a --set KEY=VALUE (C strings: stop at a NUL). */
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    char *eq = strchr(s, '=');
    if (eq) {
        *eq = '\0';
        pd_config_default(&c);
        if (pd_config_set(&c, s, eq + 1, &err) != 0 && memcmp(&c, &before, sizeof c) != 0)
            abort();
    }
    free(s);
    return 0;
}
