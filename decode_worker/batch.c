/* batch.c -- the decode role's sequences and continuous batching: the one
 * entry of a request with its KV (pd_decode_take), admission within the
 * batch and block limits, one forward pass per step for every running
 * sequence, sampling, one TokenBatch per step, retirement at once, and
 * preemption of the youngest sequence when blocks run out. See decode.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/fault.h"
#include "base/grow.h"
#include "base/log.h"
#include "decode_internal.h"

/* ====== Sequence table ====== */

static void seq_free(pd_decode_t *d, dc_seq_t *s)
{
    if (s == NULL)
        return;
    pd_kv_seq_release(d->eng->kv, &s->seq);
    dc_close_frames(s->frames, s->n_frames);
    free(s->hist);
    free(s);
}

void dc_seq_remove(pd_decode_t *d, size_t i)
{
    if (d->seqs[i]->st == DS_RUNNING)
        d->n_running--;
    seq_free(d, d->seqs[i]);
    memmove(&d->seqs[i], &d->seqs[i + 1], (d->n_seqs - i - 1) * sizeof *d->seqs);
    d->n_seqs--;
}

int dc_seq_index(const pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    for (size_t i = 0; i < d->n_seqs; i++)
        if (d->seqs[i]->req == req && (epoch == 0 || d->seqs[i]->epoch == epoch))
            return (int)i;
    return -1;
}

uint32_t dc_n_waiting(const pd_decode_t *d)
{
    uint32_t n = 0;
    for (size_t i = 0; i < d->n_seqs; i++)
        n += d->seqs[i]->st == DS_WAITING;
    return n;
}

/* ====== The entry ====== */

static int refuse(pd_decode_t *d, const pd_kv_handoff_t *h, int rc, const char *why)
{
    pd_wkport_preempted(d->port, h->req, h->epoch, h->params.n_generated + 1, why);
    return rc;
}

int dc_take(pd_decode_t *d, pd_kv_handoff_t *h, uint64_t ticket)
{
    if (d->n_seqs + d->n_expects >= DC_MAX_SEQS ||
        pd_grow((void **)&d->seqs, &d->cap_seqs, d->n_seqs + 1, sizeof *d->seqs, 64) != 0)
        return refuse(d, h, PD_EFULL, "decode side full");
    /* Positions stay below max_seq_len, so the history never outgrows it
     * (whatever max_tokens says). */
    uint32_t cap = h->params.max_seq_len + 1;
    if (h->cap_hist < cap) {
        int32_t *nh = pd_realloc(h->hist, cap * sizeof *nh);
        if (nh == NULL)
            return refuse(d, h, PD_ENOMEM, "out of memory");
        h->hist = nh;
        h->cap_hist = cap;
    }
    if (h->n_hist + 1 > h->cap_hist)
        return refuse(d, h, PD_ERANGE, "history longer than the context");
    dc_seq_t *s = pd_calloc(1, sizeof *s);
    if (s == NULL)
        return refuse(d, h, PD_EFULL, "decode side full");
    s->req = h->req;
    s->epoch = h->epoch;
    s->params = h->params;
    s->hist = h->hist;
    s->cap_hist = h->cap_hist;
    s->n_hist = h->n_hist;
    s->n_past = h->n_hist;
    s->hist[s->n_hist++] = h->first_token;
    s->last_token = h->first_token;
    s->last_index = h->params.n_generated;
    s->echo_first = h->echo_first;
    s->seq = h->seq;
    s->frames = h->frames;
    s->n_frames = h->n_frames;
    s->has_blocks = h->frames == NULL;
    s->ticket = ticket;
    s->st = DS_WAITING;
    memset(h, 0, sizeof *h);
    /* In arrival order: a DecodeTask's place was taken when it came. */
    size_t at = d->n_seqs;
    while (at > 0 && d->seqs[at - 1]->ticket > ticket)
        at--;
    memmove(&d->seqs[at + 1], &d->seqs[at], (d->n_seqs - at) * sizeof *d->seqs);
    d->seqs[at] = s;
    d->n_seqs++;
    return 0;
}

int pd_decode_take(pd_decode_t *d, pd_kv_handoff_t *h) { return dc_take(d, h, ++d->tickets); }

/* ====== Admission and preemption ====== */

static uint32_t blocks_to_admit(const pd_decode_t *d, const dc_seq_t *s)
{
    uint32_t bs = pd_kv_shape(d->eng->kv)->block_size;
    uint32_t have = s->seq.n_blocks * bs;
    return pd_kv_blocks_needed(d->eng->kv, have < s->n_past + 1 ? have : s->n_past + 1,
                               s->n_past + 1 > have ? s->n_past + 1 - have : 0);
}

bool dc_ready(const pd_decode_t *d)
{
    if (d->n_running > 0)
        return true;
    for (size_t i = 0; i < d->n_seqs; i++)
        if (d->seqs[i]->st == DS_WAITING)
            return blocks_to_admit(d, d->seqs[i]) <= pd_kv_n_free(d->eng->kv);
    return false;
}

static void preempt(pd_decode_t *d, size_t i, const char *why)
{
    dc_seq_t *s = d->seqs[i];
    PD_INFO("event=preempt req=%llu epoch=%u generated=%u free_blocks=%u",
            (unsigned long long)s->req, s->epoch, s->last_index + 1, pd_kv_n_free(d->eng->kv));
    pd_wkport_preempted(d->port, s->req, s->epoch, s->last_index + 1, why);
    d->c.preemptions++;
    dc_seq_remove(d, i);
}

static void admit(pd_decode_t *d)
{
    pd_kv_t *kv = d->eng->kv;
    uint32_t max_run = d->cfg->decode.max_batch_size;
    if (max_run > d->eng->max_fwd_seqs)
        max_run = d->eng->max_fwd_seqs;
    for (size_t i = 0; i < d->n_seqs && d->n_running < max_run; i++) {
        dc_seq_t *s = d->seqs[i];
        if (s->st != DS_WAITING)
            continue;
        pd_fault_enter(PD_FAULT_DECODE_ADMIT, s->req); /* fault.h test hook */
        int rc = pd_kv_seq_reserve(kv, &s->seq, s->n_past + 1);
        pd_fault_leave();
        if (rc == PD_ENOMEM || rc == PD_ERANGE) {
            /* No memory for the block table: waiting would spin on it;
             * the router re-prefills the request (here or elsewhere). */
            preempt(d, i, "out of memory for the block table");
            i--;
            continue;
        }
        if (rc != 0) {
            if (blocks_to_admit(d, s) > pd_kv_shape(kv)->n_blocks) {
                preempt(d, i, "sequence needs more KV blocks than this worker has");
                i--;
                continue;
            }
            break; /* first come, first served: wait for blocks */
        }
        if (!s->has_blocks) {
            for (uint32_t b = 0; b < s->n_frames; b++)
                memcpy(pd_kv_block(kv, s->seq.blocks[b]), zmq_msg_data(&s->frames[b]),
                       d->eng->block_bytes);
            dc_close_frames(s->frames, s->n_frames);
            s->frames = NULL;
            s->n_frames = 0;
            s->has_blocks = true;
        }
        if (d->n_running > 0)
            d->c.joins_while_running++;
        s->st = DS_RUNNING;
        s->admit_order = ++d->admit_counter;
        d->n_running++;
        pd_fault_complete(PD_FAULT_DECODE_ADMIT, s->req);
    }
}

/* Every running sequence gets room for the position it feeds next; when
 * blocks run out the youngest running sequence goes back to the router. */
static void reserve_or_preempt(pd_decode_t *d)
{
    for (size_t i = 0; i < d->n_seqs; i++) {
        dc_seq_t *s = d->seqs[i];
        if (s->st != DS_RUNNING)
            continue;
        while (pd_kv_seq_reserve(d->eng->kv, &s->seq, s->n_past + 1) != 0) {
            size_t victim = i;
            for (size_t j = 0; j < d->n_seqs; j++)
                if (d->seqs[j]->st == DS_RUNNING &&
                    d->seqs[j]->admit_order > d->seqs[victim]->admit_order)
                    victim = j;
            preempt(d, victim, "KV blocks exhausted");
            if (victim == i) {
                i--; /* the array moved down over it */
                break;
            }
            if (victim < i)
                i--;
            s = d->seqs[i];
        }
    }
}

/* ====== One step ====== */

static void step_failed(pd_decode_t *d, dc_seq_t **run, uint32_t n, const char *msg)
{
    PD_ERROR("event=decode_forward_failed seqs=%u msg=\"%s\"", n, msg);
    for (uint32_t k = 0; k < n; k++) {
        pd_wkport_error(d->port, run[k]->req, PD__ERROR_CODE__INTERNAL, "decode failed: %s", msg);
        int i = dc_seq_index(d, run[k]->req, run[k]->epoch);
        if (i >= 0)
            dc_seq_remove(d, (size_t)i);
    }
}

/* Samples each running sequence's next token from the pass's logits and
 * writes the step's entries (the echoed first token where due). Returns
 * the entries; done[k]: run[k] finished. */
static uint32_t sample_step(pd_decode_t *d, dc_seq_t **run, uint32_t n, pd_token_entry_t *ents,
                            bool *done)
{
    pd_wkengine_t *e = d->eng;
    uint32_t ne = 0;
    for (uint32_t k = 0; k < n; k++) {
        dc_seq_t *s = run[k];
        if (s->echo_first) {
            ents[ne++] = (pd_token_entry_t){ s->req, s->epoch, s->last_token, s->last_index,
                                             PD__FINISH_REASON__FINISH_NONE };
            s->echo_first = false;
        }
        uint32_t pos = s->n_past + 1;
        float *lg = e->logits + (size_t)(d->step_logit0 + k) * e->vocab;
        int32_t tok = pd_sample(&s->params.s, lg, e->vocab, pos, s->hist, s->n_hist, e->scratch);
        uint32_t index = s->last_index + 1;
        Pd__FinishReason fin = pd_wkengine_finish(e, &s->params, tok, index, pos);
        s->n_past++;
        s->last_token = tok;
        s->last_index = index;
        if (s->n_hist < s->cap_hist)
            s->hist[s->n_hist++] = tok;
        done[k] = fin != PD__FINISH_REASON__FINISH_NONE;
        ents[ne++] = (pd_token_entry_t){ s->req, s->epoch, tok, index, fin };
    }
    return ne;
}

uint32_t dc_fill(pd_decode_t *d, pd_wkstep_t *st)
{
    d->n_step = 0;
    admit(d);
    reserve_or_preempt(d);
    if (d->n_running == 0)
        return 0;
    pd_wkengine_t *e = d->eng;
    uint32_t max = e->max_fwd_seqs - st->n_seqs;
    if (max > st->max_rows - st->n_rows)
        max = st->max_rows - st->n_rows;
    d->step_logit0 = st->n_logits;
    for (size_t i = 0; i < d->n_seqs && d->n_step < max; i++) {
        dc_seq_t *s = d->seqs[i];
        if (s->st != DS_RUNNING)
            continue;
        uint32_t row = st->n_rows + d->n_step, seq = st->n_seqs + d->n_step;
        e->b_tokens[row] = s->last_token;
        e->b_pos[row] = (int32_t)s->n_past;
        e->b_seq[row] = (int32_t)seq;
        e->b_want[row] = true;
        e->b_tables[seq] = s->seq.blocks;
        e->b_ntable[seq] = s->seq.n_blocks;
        d->step[d->n_step++] = s;
    }
    st->n_rows += d->n_step;
    st->n_seqs += d->n_step;
    st->n_logits += d->n_step;
    return d->n_step;
}

void dc_done(pd_decode_t *d, const char *fail, uint64_t us)
{
    dc_seq_t **run = d->step;
    uint32_t n = d->n_step;
    d->n_step = 0;
    d->c.decode_us += us;
    if (fail) {
        step_failed(d, run, n, fail);
        return;
    }
    if (n == 0)
        return; /* fill put nothing in the pass: never 0-sized arrays below */
    d->c.steps++;
    if (n > 1)
        d->c.multi_seq_steps++;
    if (n > d->c.max_running)
        d->c.max_running = n;
    d->c.decode_tokens += n;
    pd_token_entry_t ents[2 * n];
    bool done[n];
    uint32_t ne = sample_step(d, run, n, ents, done);
    pd_wkport_tokens(d->port, ents, ne);
    /* Retire at once: their blocks serve the next step's admissions. */
    for (uint32_t k = 0; k < n; k++) {
        if (!done[k])
            continue;
        int i = dc_seq_index(d, run[k]->req, run[k]->epoch);
        if (i >= 0) {
            dc_seq_remove(d, (size_t)i);
            d->c.retirements++;
        }
    }
}
