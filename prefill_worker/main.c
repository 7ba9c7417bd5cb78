/* main.c -- pd-prefill: a prefill worker (see common/worker.h; the prefill
 * logic is common/worker_prefill.c, shared with the colocated worker). */
#include "worker.h"

int main(int argc, char **argv) { return pd_worker_main(argc, argv, WK_ROLE_PREFILL); }
