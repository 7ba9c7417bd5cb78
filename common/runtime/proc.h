/* proc.h -- what every cluster process (pd-router, pd-prefill, pd-decode)
 * does the same way at start-up: command-line flags over the YAML config,
 * logging to stderr and a file, and SIGINT/SIGTERM as a stop request.
 *
 * Flags (every process):
 *   --config FILE       YAML config (configs/local.yaml style)
 *   --set KEY=VALUE     override one config key (repeatable), e.g.
 *                       --set kv.num_blocks=256
 *   --model PATH        same as --set model.path=PATH
 *   --id NAME           worker id (default: role-pid)
 *   --router ADDR       same as --set worker.router=ADDR
 *   --role ROLE         prefill | decode | both
 *   --log-file PATH     append logs to PATH too
 *   --log-level LEVEL   debug | info | warn | error
 *   --ready-file PATH   write "key=value" lines (bound endpoints) once ready
 *   --advertise H[:P]   same as --set decode.kv_advertise=H[:P] (decode workers)
 *   --health-file PATH  rewrite PATH ("state=...") every heartbeat (pd_proc_health)
 *   -h, --help
 */
#ifndef PD_PROC_H
#define PD_PROC_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/config.h"
#include "base/err.h"

/* A health file: rewritten (atomically) at least every heartbeat while the
 * process's event loop runs, and at once when its state changes, with
 * "state=STATE" and "pid=PID" lines. A probe (deploy/entrypoint.sh `health`)
 * reads liveness from its mtime and readiness from the state. */
typedef struct {
    char path[PD_CFG_STR];  /* "" = off */
    char state[16];         /* last written */
    uint64_t written_ms;    /* when, pd_net_now_ms() clock */
} pd_proc_health_t;

typedef struct {
    pd_config_t cfg;
    char id[64];
    char role[16];
    char log_file[PD_CFG_STR];
    char ready_file[PD_CFG_STR];
    pd_proc_health_t health;
    bool help;
} pd_proc_args_t;

/* Parses argv into a (default config, then --config file, then --set and
 * the shortcut flags in order). Returns 0, or PD_EINVAL with err naming the
 * flag or config key. */
int pd_proc_parse(pd_proc_args_t *a, int argc, char **argv, pd_err_t *err);

/* Prints the flag list above to stderr, headed by the program's name. */
void pd_proc_usage(const char *prog, const char *extra);

/* Starts logging as role (level from --log-level / log.level, file from
 * --log-file). Returns 0 or PD_EIO naming the file. */
int pd_proc_log_start(const pd_proc_args_t *a, const char *role, pd_err_t *err);

/* Installs SIGINT/SIGTERM handlers that set *flag (the only global a process
 * needs besides the logger: a signal handler cannot reach anything else),
 * and ignores SIGPIPE. */
void pd_proc_signals(volatile sig_atomic_t *flag);

/* Writes text to path atomically (temp file + rename). */
int pd_proc_write_file(const char *path, const char *text, pd_err_t *err);

/* Writes h's file when state differs from the last one written or every_ms
 * have passed since (now_ms on any monotonic ms clock). Does nothing when h
 * has no path; a failed write is logged once and retried next time. */
void pd_proc_health(pd_proc_health_t *h, const char *state, uint64_t now_ms, uint32_t every_ms);

#endif
