/* model_internal.h -- what model.c and model_hparams.c share (not a public
 * contract: the engine's modules use model.h). */
#ifndef PD_MODEL_INTERNAL_H
#define PD_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/gguf.h"
#include "engine/model.h"

#define PD_MODEL_MAX_LAYERS 512
#define PD_MODEL_MAX_DIM 65536
#define PD_MODEL_MAX_VOCAB (1u << 22)

/* Reads general.architecture and the hyperparameters of that architecture
 * into c, as llama.cpp reads them (defaults included), and its name into
 * arch_name (16 bytes). Refuses an architecture, a rope scaling or a
 * shape the engine does not implement, naming it. */
int pd_model_read_config(const pd_gguf_t *g, pd_model_config_t *c, char arch_name[16],
                         pd_err_t *err);

/* Which layers use sliding-window attention (c->swa_window != 0): the
 * "<arch>.attention.sliding_window_pattern" key (a bool per layer, or a
 * period n: layer l slides unless l % n == n - 1), or the architecture's
 * default period. Writes is_swa[0..n_layers). */
int pd_model_read_swa_pattern(const pd_gguf_t *g, const pd_model_config_t *c,
                              const char *arch_name, bool *is_swa, pd_err_t *err);

#endif
