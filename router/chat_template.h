/* chat_template.h -- chat messages to a prompt, for /v1/chat/completions.
 *
 * GGUF files carry a Jinja template (tokenizer.chat_template). We do not
 * run Jinja: we recognise the common families by signature substrings and
 * render each with a fixed C function, as llama.cpp's
 * llm_chat_detect_template does:
 *
 *   chatml   "<|im_start|>"                       (Qwen2/2.5/3, SmolLM, Hermes...)
 *   llama3   "<|start_header_id|>" + "<|eot_id|>" (Llama 3.x)
 *   phi3     "<|assistant|>" + "<|end|>"          (Phi-3, Phi-3.5)
 *   zephyr   "<|user|>"                           (Zephyr, TinyLlama-chat)
 *   gemma    "<start_of_turn>"                    (Gemma 2, Gemma 3)
 *   llama2   "[INST]" + "<<SYS>>"
 *   mistral  "[INST]" without "<<SYS>>"
 *
 * A template in no family is refused at start-up (PD_EUNSUPPORTED), never
 * rendered as garbage. http.chat_template names a family and overrides the
 * file ("auto": use the file's template; a model without one serves no
 * chat endpoint, and /v1/chat/completions says so).
 *
 * Rendered prompts hold the family's marker texts ("<|im_start|>"...);
 * pd_chat_tokenize turns the ones that are single tokens of the vocabulary
 * into those ids (special tokens) and encodes the text between them. BOS
 * is never rendered: it is added as the model's metadata says.
 */
#ifndef PD_CHAT_TEMPLATE_H
#define PD_CHAT_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/tokenizer.h"

typedef enum {
    PD_CHAT_NONE = 0, /* no template: chat is refused */
    PD_CHAT_CHATML,
    PD_CHAT_LLAMA2,
    PD_CHAT_LLAMA3,
    PD_CHAT_MISTRAL,
    PD_CHAT_ZEPHYR,
    PD_CHAT_GEMMA,
    PD_CHAT_PHI3,
} pd_chat_kind_t;

typedef struct {
    const char *role;    /* "system", "user", "assistant" */
    const char *content; /* UTF-8 */
} pd_chat_msg_t;

/* The family of a Jinja template text; PD_EUNSUPPORTED (err quotes its
 * start) when it is in none. */
int pd_chat_detect(const char *tmpl, pd_chat_kind_t *out, pd_err_t *err);
/* "chatml", "llama2", "llama3", "mistral", "zephyr", "gemma", "phi3"; "none" for
 * PD_CHAT_NONE. pd_chat_from_name is its inverse (PD_EINVAL if unknown). */
const char *pd_chat_name(pd_chat_kind_t k);
int pd_chat_from_name(const char *name, pd_chat_kind_t *out, pd_err_t *err);

/* Renders msgs[0..n) followed by the assistant's generation prompt.
 * Roles other than system/user/assistant, a system message that is not
 * first, or no message at all are PD_EINVAL (err names msgs[i]). Returns a
 * malloc'd string in *out (caller frees). */
int pd_chat_render(pd_chat_kind_t k, const pd_chat_msg_t *msgs, size_t n, char **out,
                   pd_err_t *err);

#define PD_CHAT_MAX_MARKERS 8

/* A family bound to a vocabulary: which of its marker texts are single
 * tokens (special tokens) of t. Plain value; borrows t. */
typedef struct {
    pd_chat_kind_t kind;
    const pd_tok_t *tok;
    size_t n_markers;
    const char *marker[PD_CHAT_MAX_MARKERS]; /* (n_markers) marker texts */
    int32_t id[PD_CHAT_MAX_MARKERS];         /* (n_markers) token id, -1 = plain text */
} pd_chat_t;

/* Looks up k's markers in t's vocabulary (one scan of the vocabulary). */
void pd_chat_init(pd_chat_t *c, pd_chat_kind_t k, const pd_tok_t *t);

/* Tokenizes a rendered prompt: markers that are single tokens become those
 * ids; the text between is encoded without specials; BOS first when the
 * model adds it. Writes up to cap ids and the count to *n_out; PD_ERANGE
 * when cap is too small, PD_EINVAL on bad UTF-8. Thread-safe (only reads
 * c and its tokenizer). */
int pd_chat_tokenize(const pd_chat_t *c, const char *text, int32_t *out, size_t cap,
                     size_t *n_out, pd_err_t *err);

#endif
