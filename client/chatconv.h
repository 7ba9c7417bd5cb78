/* chatconv.h -- one multi-turn chat conversation for pd-bench --dataset
 * multi-turn (docs/benchmarks.md): the prompt of each turn is the
 * conversation so far, answers included, plus a new user message,
 *
 *   turn 1: head + u1
 *   turn 2: head + u1 + a1 + u2
 *   turn t: head + u1 + a1 + ... + u(t-1) + a(t-1) + ut
 *
 * where head is [BOS] + an optional shared system prefix, uk the user
 * messages (drawn before the run) and ak the answers the server returned.
 * Token ids only; no tokenizer, no I/O. Answers come from outside: one
 * longer than max_answer tokens is refused, so every prompt's length is
 * bounded by head + the user messages + (turns - 1) * max_answer. */
#ifndef PD_CHATCONV_H
#define PD_CHATCONV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define PD_CHATCONV_MAX_TURNS 1000

typedef struct {
    int32_t *hist;       /* (n_hist, cap_hist) head + (uk + ak) of the answered turns */
    size_t n_hist, cap_hist;
    int32_t *user;       /* (n_user) every turn's user message, in order */
    size_t n_user;
    size_t *user_off;    /* (n_turns + 1) message k is user[user_off[k] .. user_off[k+1]) */
    uint32_t n_turns;    /* turns the conversation has */
    uint32_t n_added;    /* user messages added so far */
    uint32_t turn;       /* turns answered so far (the next prompt is turn + 1) */
    uint32_t max_answer; /* longest answer taken, tokens */
} pd_chatconv_t;

/* A conversation of n_turns (1..PD_CHATCONV_MAX_TURNS) that starts with
 * head (n_head ids, may be 0). 0, or PD_EINVAL / PD_ENOMEM with err set. */
int pd_chatconv_init(pd_chatconv_t *c, const int32_t *head, size_t n_head, uint32_t n_turns,
                     uint32_t max_answer, pd_err_t *err);
/* Adds the next user message (n >= 1 ids); all n_turns before the first
 * prompt. 0, or PD_ESTATE / PD_EINVAL / PD_ENOMEM with err set. */
int pd_chatconv_add_user(pd_chatconv_t *c, const int32_t *ids, size_t n, pd_err_t *err);
/* Length of the next turn's prompt (0 when the conversation is over or
 * not every user message is in). */
size_t pd_chatconv_prompt_len(const pd_chatconv_t *c);
/* The next turn's prompt, into a fresh array (*out, *n_out; free it).
 * PD_ESTATE when over or not all user messages are in, PD_ENOMEM. */
int pd_chatconv_prompt(const pd_chatconv_t *c, int32_t **out, size_t *n_out, pd_err_t *err);
/* The server's answer (n ids, 0 allowed) to the current turn: the history
 * takes the turn's user message and the answer. PD_ESTATE when over,
 * PD_ERANGE when n > max_answer, PD_ENOMEM; on error nothing changes. */
int pd_chatconv_answer(pd_chatconv_t *c, const int32_t *ans, size_t n, pd_err_t *err);
bool pd_chatconv_done(const pd_chatconv_t *c);
void pd_chatconv_free(pd_chatconv_t *c);

#endif
