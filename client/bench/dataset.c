/* dataset.c -- pd-bench's prompts: random token prompts (with a shared
 * prefix), a file of one prompt per line, ShareGPT conversations. See
 * bench.h. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench.h"
#include "mooncake.h"
#include "base/grow.h"

void dataset_free(dataset_t *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->items[i].text);
        free(d->items[i].ids);
    }
    free(d->items);
    memset(d, 0, sizeof *d);
}

item_t *dataset_push(dataset_t *d)
{
    if (pd_grow((void **)&d->items, &d->cap, d->n + 1, sizeof *d->items, 64) != 0)
        return NULL;
    item_t *it = &d->items[d->n++];
    memset(it, 0, sizeof *it);
    return it;
}

/* Token ids a random prompt may use: ids with printable bytes, no control,
 * end-of-generation or raw byte tokens. */
typedef struct {
    int32_t *ids;
    size_t n;
} vocab_pick_t;

static int vocab_pick_init(vocab_pick_t *vp, const pd_tok_t *tok)
{
    uint32_t nv = pd_tok_n_vocab(tok);
    vp->ids = malloc((size_t)nv * sizeof *vp->ids);
    vp->n = 0;
    if (vp->ids == NULL)
        return -1;
    char buf[64];
    for (uint32_t id = 0; id < nv; id++) {
        size_t tl = 0;
        const char *t = pd_tok_text(tok, (int32_t)id, &tl);
        if (t && tl == 6 && !strncmp(t, "<0x", 3))
            continue;
        if ((int32_t)id == pd_tok_bos(tok) || pd_tok_is_eog(tok, (int32_t)id))
            continue;
        if (pd_tok_piece(tok, (int32_t)id, buf, sizeof buf) > 0)
            vp->ids[vp->n++] = (int32_t)id;
    }
    return vp->n ? 0 : -1;
}

/* Builds ids = [BOS] + prefix + body into it (takes ownership of nothing). */
static int item_set_ids(item_t *it, const pd_tok_t *tok, const int32_t *prefix, size_t n_prefix,
                        const int32_t *body, size_t n_body)
{
    bool bos = pd_tok_add_bos(tok) && pd_tok_bos(tok) >= 0;
    size_t n = (bos ? 1 : 0) + n_prefix + n_body;
    it->ids = malloc((n ? n : 1) * sizeof *it->ids);
    if (it->ids == NULL)
        return -1;
    size_t k = 0;
    if (bos)
        it->ids[k++] = pd_tok_bos(tok);
    if (n_prefix)
        memcpy(it->ids + k, prefix, n_prefix * sizeof *prefix);
    k += n_prefix;
    if (n_body)
        memcpy(it->ids + k, body, n_body * sizeof *body);
    it->n_ids = n;
    it->prompt_len = (uint32_t)n;
    return 0;
}

/* Len range of --range-ratio: [len * (1 - r), len * (1 + r)], at least 1. */
static void len_range(uint32_t len, double r, uint32_t *lo, uint32_t *hi)
{
    double l = floor(len * (1.0 - r)), h = floor(len * (1.0 + r));
    *lo = l < 1 ? 1 : (uint32_t)l;
    *hi = h < *lo ? *lo : (uint32_t)h;
}

int dataset_random(const opts_t *o, const pd_tok_t *tok, rng_t *rng, int32_t *prefix,
                        uint32_t max_seq, dataset_t *d)
{
    vocab_pick_t vp;
    if (vocab_pick_init(&vp, tok) != 0) {
        free(vp.ids);
        fprintf(stderr, "pd-bench: the model's vocabulary has no plain tokens\n");
        return -1;
    }
    uint32_t ilo, ihi, olo, ohi;
    len_range(o->input_len, o->range_ratio, &ilo, &ihi);
    len_range(o->output_len, o->range_ratio, &olo, &ohi);
    uint64_t worst = 1ull + o->prefix_len + ihi + ohi;
    if (max_seq && worst > max_seq) {
        fprintf(stderr,
                "pd-bench: BOS + --prefix-len %u + input up to %u + output up to %u tokens exceed "
                "the router's max_seq_len %u\n",
                o->prefix_len, ihi, ohi, max_seq);
        free(vp.ids);
        return -1;
    }
    int32_t *body = malloc((size_t)ihi * sizeof *body);
    /* --num-prefixes K: K prefixes, each prompt takes one at random (the
     * first is `prefix`, drawn as with one, so K = 1 changes nothing). */
    uint32_t n_pre = o->num_prefixes > 1 && o->prefix_len > 0 ? o->num_prefixes : 1;
    int32_t *more = n_pre > 1 ? malloc((size_t)(n_pre - 1) * o->prefix_len * sizeof *more) : NULL;
    int rc = body && (n_pre == 1 || more) ? 0 : -1;
    for (uint32_t p = 0; p < o->prefix_len; p++)
        prefix[p] = vp.ids[rng_next(rng) % vp.n];
    for (uint64_t p = 0; rc == 0 && p < (uint64_t)(n_pre - 1) * o->prefix_len; p++)
        more[p] = vp.ids[rng_next(rng) % vp.n];
    for (uint32_t i = 0; rc == 0 && i < o->num_prompts; i++) {
        uint32_t which = n_pre > 1 ? (uint32_t)(rng_next(rng) % n_pre) : 0;
        const int32_t *pre = which == 0 ? prefix : more + (size_t)(which - 1) * o->prefix_len;
        uint32_t in = rng_range(rng, ilo, ihi);
        for (uint32_t k = 0; k < in; k++)
            body[k] = vp.ids[rng_next(rng) % vp.n];
        item_t *it = dataset_push(d);
        if (it == NULL || item_set_ids(it, tok, pre, o->prefix_len, body, in) != 0)
            rc = -1;
        else
            it->output_len = rng_range(rng, olo, ohi);
    }
    if (rc != 0)
        fprintf(stderr, "pd-bench: out of memory building the random dataset\n");
    free(body);
    free(more);
    free(vp.ids);
    return rc;
}

/* Encodes text (no specials) into a fresh array; NULL and message on failure. */
static int32_t *encode(const pd_tok_t *tok, const char *text, size_t len, bool add_special,
                       size_t *n_out, pd_err_t *err)
{
    size_t cap = len + 8;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (ids == NULL)
        return NULL;
    int rc = pd_tok_encode(tok, text, len, add_special, ids, cap, n_out, err);
    if (rc == PD_ERANGE) {
        cap = *n_out;
        int32_t *p = realloc(ids, cap * sizeof *ids);
        if (p == NULL) {
            free(ids);
            return NULL;
        }
        ids = p;
        rc = pd_tok_encode(tok, text, len, add_special, ids, cap, n_out, err);
    }
    if (rc != 0) {
        free(ids);
        return NULL;
    }
    return ids;
}

/* Fills it from prompt text: with a tokenizer the prompt is sent as ids
 * ([BOS] + prefix + text), without one as text. */
static int item_from_text(item_t *it, const char *text, size_t len, const pd_tok_t *tok,
                          const int32_t *prefix, size_t n_prefix, const char *where)
{
    it->text = strndup(text, len);
    if (it->text == NULL)
        return -1;
    if (tok == NULL)
        return 0;
    pd_err_t err = { 0 };
    size_t n = 0;
    int32_t *ids = encode(tok, text, len, n_prefix == 0, &n, &err);
    if (ids == NULL) {
        fprintf(stderr, "pd-bench: %s: %s\n", where, err.code ? err.msg : "out of memory");
        return -1;
    }
    int rc = 0;
    if (n_prefix == 0) {
        it->ids = ids;
        it->n_ids = n;
        it->prompt_len = (uint32_t)n;
    } else {
        rc = item_set_ids(it, tok, prefix, n_prefix, ids, n);
        free(ids);
    }
    return rc;
}

int dataset_file(const opts_t *o, const pd_tok_t *tok, const int32_t *prefix, dataset_t *d)
{
    FILE *f = fopen(o->dataset_path, "r");
    if (f == NULL) {
        fprintf(stderr, "pd-bench: --dataset-path %s: %s\n", o->dataset_path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && d->n < o->num_prompts && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n == 0)
            continue;
        char where[600];
        snprintf(where, sizeof where, "%s line %zu", o->dataset_path, lineno);
        item_t *it = dataset_push(d);
        if (it == NULL || item_from_text(it, line, (size_t)n, tok, prefix, o->prefix_len, where))
            rc = -1;
        else
            it->output_len = o->output_len;
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "pd-bench: --dataset-path %s: read error\n", o->dataset_path);
        rc = -1;
    }
    if (rc == 0 && d->n == 0) {
        fprintf(stderr, "pd-bench: --dataset-path %s: no prompts (one per line)\n", o->dataset_path);
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}

/* The ShareGPT layout: [{"conversations": [{"from": "human", "value": ...},
 * {"from": "gpt", "value": ...}, ...]}, ...]. The first human turn is the
 * prompt, the turn after it the reply whose token length is the output
 * length. Entries are shuffled by --seed and pruned as vLLM does (under 4
 * tokens, prompt over 1024, prompt + reply over 2048 or the router's limit). */
int dataset_sharegpt(const opts_t *o, const pd_tok_t *tok, const int32_t *prefix,
                         uint32_t max_seq, rng_t *rng, dataset_t *d)
{
    json_error_t je = { 0 };
    json_t *root = json_load_file(o->dataset_path, 0, &je);
    if (root == NULL) {
        fprintf(stderr, "pd-bench: --dataset-path %s: line %d column %d: %s\n", o->dataset_path,
                je.line, je.column, je.text);
        return -1;
    }
    if (!json_is_array(root)) {
        fprintf(stderr, "pd-bench: %s: not a ShareGPT file (the top level must be an array)\n",
                o->dataset_path);
        json_decref(root);
        return -1;
    }
    size_t n = json_array_size(root), malformed = 0, pruned = 0;
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    int rc = order ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++)
        order[i] = i;
    for (size_t i = n; rc == 0 && i > 1; i--) {
        size_t j = rng_next(rng) % i, t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    for (size_t k = 0; rc == 0 && k < n && d->n < o->num_prompts; k++) {
        json_t *conv = json_object_get(json_array_get(root, order[k]), "conversations");
        const char *prompt = NULL, *reply = NULL;
        size_t nt = json_array_size(conv);
        for (size_t t = 0; t + 1 < nt && prompt == NULL; t++) {
            json_t *turn = json_array_get(conv, t);
            const char *from = json_string_value(json_object_get(turn, "from"));
            if (from && !strcmp(from, "human")) {
                prompt = json_string_value(json_object_get(turn, "value"));
                reply = json_string_value(json_object_get(json_array_get(conv, t + 1), "value"));
            }
        }
        if (prompt == NULL || reply == NULL) {
            malformed++;
            continue;
        }
        pd_err_t err = { 0 };
        size_t n_reply = 0;
        int32_t *rids = encode(tok, reply, strlen(reply), false, &n_reply, &err);
        free(rids);
        if (rids == NULL) {
            malformed++;
            continue;
        }
        item_t *it = dataset_push(d);
        if (it == NULL) {
            rc = -1;
            break;
        }
        char where[600];
        snprintf(where, sizeof where, "%s entry %zu", o->dataset_path, order[k]);
        if (item_from_text(it, prompt, strlen(prompt), tok, prefix, o->prefix_len, where) != 0) {
            free(it->text);
            free(it->ids);
            d->n--;
            malformed++;
            continue;
        }
        it->output_len = o->has_output_len ? o->output_len : (uint32_t)n_reply;
        uint64_t total = (uint64_t)it->prompt_len + it->output_len;
        if (it->prompt_len < SHAREGPT_MIN_LEN || it->output_len < SHAREGPT_MIN_LEN ||
            it->prompt_len > SHAREGPT_MAX_PROMPT + o->prefix_len || total > SHAREGPT_MAX_TOTAL + o->prefix_len ||
            (max_seq && total > max_seq)) {
            free(it->text);
            free(it->ids);
            d->n--;
            pruned++;
        }
    }
    if (rc == 0 && d->n == 0) {
        fprintf(stderr,
                "pd-bench: %s: no usable conversations (%zu entries, %zu malformed, %zu pruned "
                "by length)\n",
                o->dataset_path, n, malformed, pruned);
        rc = -1;
    } else if (rc != 0) {
        fprintf(stderr, "pd-bench: out of memory loading %s\n", o->dataset_path);
    } else if (malformed) {
        fprintf(stderr, "pd-bench: %s: skipped %zu malformed entries\n", o->dataset_path,
                malformed);
    }
    free(order);
    json_decref(root);
    return rc;
}

/* A Mooncake trace (mooncake.h): each hash id becomes block_size tokens
 * drawn from the id alone (so requests sharing an id share those tokens),
 * the prompt is its ids' blocks cut to input_length, after BOS; arrivals
 * are the trace's timestamps. */
int dataset_mooncake(const opts_t *o, const pd_tok_t *tok, uint32_t max_seq, dataset_t *d)
{
    uint32_t bs = o->mooncake_block_size ? o->mooncake_block_size : 512;
    pd_mooncake_req_t *r = NULL;
    size_t n = 0;
    char msg[700];
    if (pd_mooncake_load(o->dataset_path, bs, o->has_num_prompts ? o->num_prompts : SIZE_MAX, &r,
                         &n, msg, sizeof msg) != 0) {
        fprintf(stderr, "pd-bench: --dataset mooncake: %s\n", msg);
        return -1;
    }
    vocab_pick_t vp;
    int rc = vocab_pick_init(&vp, tok);
    int32_t *body = NULL;
    if (rc != 0)
        fprintf(stderr, "pd-bench: the model's vocabulary has no plain tokens\n");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (max_seq && 1ull + r[i].input_length + r[i].output_length > max_seq) {
            fprintf(stderr, "pd-bench: --dataset mooncake: request %zu: %u + %u tokens exceed the "
                    "router's max_seq_len %u\n", i + 1, r[i].input_length, r[i].output_length,
                    max_seq);
            rc = -1;
            break;
        }
        int32_t *nb = realloc(body, (size_t)r[i].input_length * sizeof *body);
        if (nb == NULL) {
            rc = -1;
            break;
        }
        body = nb;
        for (uint32_t k = 0; k < r[i].input_length; k++) {
            if (k % bs == 0) {
                rng_t g;
                rng_seed(&g, o->seed ^ (r[i].hash_ids[k / bs] * 0x9e3779b97f4a7c15ull + 1));
                for (uint32_t j = 0; j < bs && k + j < r[i].input_length; j++)
                    body[k + j] = vp.ids[rng_next(&g) % vp.n];
            }
        }
        item_t *it = dataset_push(d);
        if (it == NULL || item_set_ids(it, tok, NULL, 0, body, r[i].input_length) != 0) {
            rc = -1;
            break;
        }
        it->output_len = r[i].output_length;
        it->at_ms = r[i].at_ms;
    }
    if (rc != 0 && vp.ids)
        fprintf(stderr, "pd-bench: --dataset mooncake: could not build the prompts\n");
    d->timed = true;
    free(body);
    free(vp.ids);
    pd_mooncake_free(r, n);
    return rc;
}

void chat_free(chat_t *ch)
{
    for (size_t k = 0; ch->conv && k < ch->n; k++)
        pd_chatconv_free(&ch->conv[k]);
    free(ch->conv);
    free(ch->out_len);
    free(ch->req);
    free(ch->ready_ns);
    free(ch->stopped);
    dataset_free(&ch->items);
    memset(ch, 0, sizeof *ch);
}

/* --dataset multi-turn: --num-conversations conversations of --num-turns
 * turns; every conversation starts with [BOS] + the shared --prefix-len
 * tokens; user messages of --user-tokens and answers of --output-len (both
 * within --range-ratio) are drawn now. The last turn's prompt and output
 * (head + every user message + every answer) must fit max_seq. */
int dataset_multiturn(const opts_t *o, const pd_tok_t *tok, rng_t *rng, uint32_t max_seq,
                      chat_t *ch)
{
    memset(ch, 0, sizeof *ch);
    vocab_pick_t vp;
    if (vocab_pick_init(&vp, tok) != 0) {
        free(vp.ids);
        fprintf(stderr, "pd-bench: the model's vocabulary has no plain tokens\n");
        return -1;
    }
    uint32_t ulo, uhi, olo, ohi, T = o->num_turns;
    len_range(o->user_tokens, o->range_ratio, &ulo, &uhi);
    len_range(o->output_len, o->range_ratio, &olo, &ohi);
    uint64_t worst = 1ull + o->prefix_len + (uint64_t)T * (uhi + ohi);
    if (max_seq && worst > max_seq) {
        fprintf(stderr,
                "pd-bench: --dataset multi-turn: BOS + --prefix-len %u + %u turns of up to %u user "
                "and %u answer tokens = %llu tokens exceed the server's context of %u\n",
                o->prefix_len, T, uhi, ohi, (unsigned long long)worst, max_seq);
        free(vp.ids);
        return -1;
    }
    size_t n = o->num_conversations;
    bool bos = pd_tok_add_bos(tok) && pd_tok_bos(tok) >= 0;
    size_t n_head = (bos ? 1 : 0) + o->prefix_len;
    int32_t *head = malloc((n_head + 1) * sizeof *head), *msg = malloc((size_t)uhi * sizeof *msg);
    ch->conv = calloc(n, sizeof *ch->conv);
    ch->out_len = calloc(n * T, sizeof *ch->out_len);
    ch->req = calloc(n, sizeof *ch->req);
    ch->ready_ns = calloc(n, sizeof *ch->ready_ns);
    ch->stopped = calloc(n, sizeof *ch->stopped);
    ch->n = n;
    ch->turns = T;
    int rc = head && msg && ch->conv && ch->out_len && ch->req && ch->ready_ns && ch->stopped ? 0 : -1;
    pd_err_t err = { 0 };
    size_t h = 0;
    if (rc == 0 && bos)
        head[h++] = pd_tok_bos(tok);
    for (; rc == 0 && h < n_head; h++)
        head[h] = vp.ids[rng_next(rng) % vp.n];
    for (size_t k = 0; rc == 0 && k < n; k++) {
        rc = pd_chatconv_init(&ch->conv[k], head, n_head, T, ohi, &err);
        for (uint32_t t = 0; rc == 0 && t < T; t++) {
            uint32_t len = rng_range(rng, ulo, uhi);
            for (uint32_t j = 0; j < len; j++)
                msg[j] = vp.ids[rng_next(rng) % vp.n];
            rc = pd_chatconv_add_user(&ch->conv[k], msg, len, &err);
            ch->out_len[k * T + t] = rng_range(rng, olo, ohi);
        }
    }
    if (rc != 0) {
        fprintf(stderr, "pd-bench: --dataset multi-turn: %s\n", err.code ? err.msg : "out of memory");
        chat_free(ch);
    }
    free(head);
    free(msg);
    free(vp.ids);
    return rc ? -1 : 0;
}

int chat_push_turn(chat_t *ch, size_t k)
{
    pd_chatconv_t *cv = &ch->conv[k];
    item_t *it = dataset_push(&ch->items);
    if (it == NULL)
        return -1;
    pd_err_t err = { 0 };
    if (pd_chatconv_prompt(cv, &it->ids, &it->n_ids, &err) != 0) {
        ch->items.n--;
        return -1;
    }
    it->prompt_len = (uint32_t)it->n_ids;
    it->output_len = ch->out_len[k * ch->turns + cv->turn];
    it->conv = (uint32_t)k;
    it->turn = cv->turn + 1;
    return 0;
}
