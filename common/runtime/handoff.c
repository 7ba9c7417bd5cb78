/* handoff.c -- see handoff.h. */
#include "runtime/handoff.h"

#include <stdlib.h>
#include <string.h>

void pd_kv_handoff_release(pd_kv_handoff_t *h, pd_kv_t *kv)
{
    for (uint32_t i = 0; i < h->n_frames; i++)
        zmq_msg_close(&h->frames[i]);
    free(h->frames);
    free(h->hist);
    pd_kv_seq_release(kv, &h->seq);
    h->frames = NULL;
    h->n_frames = 0;
    h->hist = NULL;
    h->n_hist = h->cap_hist = 0;
}
