/* model_check.h -- what a GGUF file asks for that the engine does not do.
 *
 * Deny by default: the loader accounts for every tensor (a tensor it did not
 * read stops the load) and every metadata key that can change the
 * computation (a key under the architecture's prefix must be one the engine
 * implements, or one known to change nothing; a namespace it does not know
 * is refused). Harmless namespaces pass: general.* (names, licences,
 * file type), tokenizer.* (the tokenizer reads what it uses), quantize.*
 * (importance-matrix provenance). A refusal names the tensor or key, says
 * what it would have changed when that is known, and lists what is
 * supported. Never silently wrong output.
 */
#ifndef PD_MODEL_CHECK_H
#define PD_MODEL_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/gguf.h"
#include "engine/model.h"

/* Checks every key of g against the policy above for architecture a
 * (named arch in the file's keys), with the vocabulary size that
 * <arch>.vocab_size must agree with. Returns 0, or PD_EUNSUPPORTED /
 * PD_EFORMAT with err naming the key. */
int pd_model_check_keys(const pd_gguf_t *g, pd_arch_t a, const char *arch, uint32_t vocab,
                        pd_err_t *err);

/* used[i] tells whether the loader read tensor i. Returns 0 when every
 * tensor was read, else PD_EUNSUPPORTED with err naming the first one that
 * was not (and what it is for, when known). reads: what the architecture's
 * loader reads, for the message. */
int pd_model_check_tensors(const pd_gguf_t *g, const bool *used, const char *reads,
                           pd_err_t *err);

/* A printable copy of a string from the file, for messages: '?' for
 * anything but printable ASCII (a newline or an escape sequence never
 * reaches a log line), "..." past PD_MODEL_SHOW_MAX bytes. Returns out. */
#define PD_MODEL_SHOW_MAX 96
#define PD_MODEL_SHOW_BUF (PD_MODEL_SHOW_MAX + 4)
const char *pd_model_show(pd_gguf_str_t s, char out[PD_MODEL_SHOW_BUF]);

#endif
