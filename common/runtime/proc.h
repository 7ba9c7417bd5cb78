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
 *   -h, --help
 */
#ifndef PD_PROC_H
#define PD_PROC_H

#include <signal.h>
#include <stdbool.h>

#include "runtime/config.h"
#include "base/err.h"

typedef struct {
    pd_config_t cfg;
    char id[64];
    char role[16];
    char log_file[PD_CFG_STR];
    char ready_file[PD_CFG_STR];
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

#endif
