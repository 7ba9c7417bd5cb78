/* chatconv.c -- one multi-turn chat conversation (chatconv.h). */
#include <stdlib.h>
#include <string.h>

#include "chatconv.h"
#include "base/grow.h"

int pd_chatconv_init(pd_chatconv_t *c, const int32_t *head, size_t n_head, uint32_t n_turns,
                     uint32_t max_answer, pd_err_t *err)
{
    memset(c, 0, sizeof *c);
    if (n_turns < 1 || n_turns > PD_CHATCONV_MAX_TURNS)
        return pd_err_set(err, PD_EINVAL, "a conversation has 1..%d turns, not %u",
                          PD_CHATCONV_MAX_TURNS, n_turns);
    c->user_off = calloc((size_t)n_turns + 1, sizeof *c->user_off);
    if (c->user_off == NULL ||
        pd_grow((void **)&c->hist, &c->cap_hist, n_head + 1, sizeof *c->hist, 64) != 0) {
        pd_chatconv_free(c);
        return pd_err_set(err, PD_ENOMEM, "out of memory for a conversation");
    }
    if (n_head)
        memcpy(c->hist, head, n_head * sizeof *head);
    c->n_hist = n_head;
    c->n_turns = n_turns;
    c->max_answer = max_answer;
    return 0;
}

int pd_chatconv_add_user(pd_chatconv_t *c, const int32_t *ids, size_t n, pd_err_t *err)
{
    if (c->n_added >= c->n_turns)
        return pd_err_set(err, PD_ESTATE, "all %u user messages are already in", c->n_turns);
    if (n == 0)
        return pd_err_set(err, PD_EINVAL, "a user message needs at least one token");
    size_t cap = c->n_user; /* user is allocated exactly: grow to the new size */
    int32_t *u = realloc(c->user, (cap + n) * sizeof *u);
    if (u == NULL)
        return pd_err_set(err, PD_ENOMEM, "out of memory for a user message");
    c->user = u;
    memcpy(c->user + c->n_user, ids, n * sizeof *ids);
    c->n_user += n;
    c->user_off[++c->n_added] = c->n_user;
    return 0;
}

bool pd_chatconv_done(const pd_chatconv_t *c)
{
    return c->turn >= c->n_turns;
}

size_t pd_chatconv_prompt_len(const pd_chatconv_t *c)
{
    if (pd_chatconv_done(c) || c->n_added < c->n_turns)
        return 0;
    return c->n_hist + (c->user_off[c->turn + 1] - c->user_off[c->turn]);
}

int pd_chatconv_prompt(const pd_chatconv_t *c, int32_t **out, size_t *n_out, pd_err_t *err)
{
    *out = NULL;
    *n_out = 0;
    if (pd_chatconv_done(c))
        return pd_err_set(err, PD_ESTATE, "the conversation is over (%u turns)", c->n_turns);
    if (c->n_added < c->n_turns)
        return pd_err_set(err, PD_ESTATE, "%u of %u user messages added", c->n_added,
                          c->n_turns);
    size_t nu = c->user_off[c->turn + 1] - c->user_off[c->turn];
    int32_t *p = malloc((c->n_hist + nu) * sizeof *p);
    if (p == NULL)
        return pd_err_set(err, PD_ENOMEM, "out of memory for a prompt");
    memcpy(p, c->hist, c->n_hist * sizeof *p);
    memcpy(p + c->n_hist, c->user + c->user_off[c->turn], nu * sizeof *p);
    *out = p;
    *n_out = c->n_hist + nu;
    return 0;
}

int pd_chatconv_answer(pd_chatconv_t *c, const int32_t *ans, size_t n, pd_err_t *err)
{
    if (pd_chatconv_done(c))
        return pd_err_set(err, PD_ESTATE, "the conversation is over (%u turns)", c->n_turns);
    if (c->n_added < c->n_turns)
        return pd_err_set(err, PD_ESTATE, "%u of %u user messages added", c->n_added,
                          c->n_turns);
    if (n > c->max_answer)
        return pd_err_set(err, PD_ERANGE, "turn %u: answer of %zu tokens, more than the %u asked",
                          c->turn + 1, n, c->max_answer);
    size_t nu = c->user_off[c->turn + 1] - c->user_off[c->turn];
    if (pd_grow((void **)&c->hist, &c->cap_hist, c->n_hist + nu + n, sizeof *c->hist, 64) != 0)
        return pd_err_set(err, PD_ENOMEM, "out of memory for the conversation");
    memcpy(c->hist + c->n_hist, c->user + c->user_off[c->turn], nu * sizeof *c->hist);
    if (n)
        memcpy(c->hist + c->n_hist + nu, ans, n * sizeof *ans);
    c->n_hist += nu + n;
    c->turn++;
    return 0;
}

void pd_chatconv_free(pd_chatconv_t *c)
{
    free(c->hist);
    free(c->user);
    free(c->user_off);
    memset(c, 0, sizeof *c);
}
