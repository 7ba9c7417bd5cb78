/* main.c -- pd-decode: a decode worker, or with --role both a colocated one
 * (see common/worker.h; the decode logic is common/worker_decode.c). */
#include "worker.h"

int main(int argc, char **argv) { return pd_worker_main(argc, argv, WK_ROLE_DECODE); }
