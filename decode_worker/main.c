/* main.c -- pd-decode: a decode worker, or with --role both a colocated one
 * (the role is decode.h; the process is worker/worker.h). */
#include "worker/worker.h"

int main(int argc, char **argv) { return pd_worker_main(argc, argv, PD__ROLE__ROLE_DECODE); }
