/* main.c -- pd-prefill: a prefill worker (the role is prefill.h; the
 * process, with --role decode|both as well, is worker/worker.h). */
#include "worker/worker.h"

int main(int argc, char **argv) { return pd_worker_main(argc, argv, PD__ROLE__ROLE_PREFILL); }
