/* proc.c -- see proc.h */
#include "runtime/proc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fault.h"
#include "base/log.h"

static int set_kv(pd_config_t *c, const char *kv, pd_err_t *err)
{
    const char *eq = strchr(kv, '=');
    if (eq == NULL || eq == kv)
        return pd_err_set(err, PD_EINVAL, "--set %s: expected KEY=VALUE", kv);
    char key[128];
    size_t n = (size_t)(eq - kv);
    if (n >= sizeof key)
        return pd_err_set(err, PD_EINVAL, "--set: key too long");
    memcpy(key, kv, n);
    key[n] = '\0';
    return pd_config_set(c, key, eq + 1, err);
}

int pd_proc_parse(pd_proc_args_t *a, int argc, char **argv, pd_err_t *err)
{
    memset(a, 0, sizeof *a);
    pd_config_default(&a->cfg);
    /* The config file first, so flags override it whatever their order. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc)
                return pd_err_set(err, PD_EINVAL, "--config: missing FILE");
            int rc = pd_config_load_file(&a->cfg, argv[++i], err);
            if (rc)
                return rc;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (strcmp(f, "-h") == 0 || strcmp(f, "--help") == 0) {
            a->help = true;
            continue;
        }
        if (v == NULL)
            return pd_err_set(err, PD_EINVAL, "%s: unknown flag or missing value", f);
        if (strcmp(f, "--config") == 0)
            ; /* done above */
        else if (strcmp(f, "--set") == 0)
            rc = set_kv(&a->cfg, v, err);
        else if (strcmp(f, "--model") == 0)
            rc = pd_config_set(&a->cfg, "model.path", v, err);
        else if (strcmp(f, "--router") == 0)
            rc = pd_config_set(&a->cfg, "worker.router", v, err);
        else if (strcmp(f, "--advertise") == 0)
            rc = pd_config_set(&a->cfg, "decode.kv_advertise", v, err);
        else if (strcmp(f, "--id") == 0) {
            if (strlen(v) == 0 || strlen(v) >= sizeof a->id)
                return pd_err_set(err, PD_EINVAL, "--id: 1..%zu characters", sizeof a->id - 1);
            snprintf(a->id, sizeof a->id, "%s", v);
        } else if (strcmp(f, "--role") == 0) {
            if (strcmp(v, "prefill") != 0 && strcmp(v, "decode") != 0 && strcmp(v, "both") != 0)
                return pd_err_set(err, PD_EINVAL, "--role: expected prefill|decode|both, got '%s'",
                                  v);
            snprintf(a->role, sizeof a->role, "%s", v);
        } else if (strcmp(f, "--log-file") == 0) {
            if (strlen(v) >= sizeof a->log_file)
                return pd_err_set(err, PD_EINVAL, "--log-file: path too long");
            snprintf(a->log_file, sizeof a->log_file, "%s", v);
        } else if (strcmp(f, "--log-level") == 0) {
            if (pd_log_level_parse(v) < 0)
                return pd_err_set(err, PD_EINVAL, "--log-level: expected debug|info|warn|error");
            rc = pd_config_set(&a->cfg, "log.level", v, err);
        } else if (strcmp(f, "--ready-file") == 0) {
            if (strlen(v) >= sizeof a->ready_file)
                return pd_err_set(err, PD_EINVAL, "--ready-file: path too long");
            snprintf(a->ready_file, sizeof a->ready_file, "%s", v);
        } else if (strcmp(f, "--health-file") == 0) {
            if (strlen(v) >= sizeof a->health.path)
                return pd_err_set(err, PD_EINVAL, "--health-file: path too long");
            snprintf(a->health.path, sizeof a->health.path, "%s", v);
        } else
            return pd_err_set(err, PD_EINVAL, "%s: unknown flag", f);
        if (rc)
            return rc;
        i++;
    }
    return pd_config_validate(&a->cfg, err);
}

void pd_proc_usage(const char *prog, const char *extra)
{
    fprintf(stderr,
            "usage: %s [--config FILE] [--set KEY=VALUE]... [--model PATH] [--id NAME]\n"
            "          [--router ADDR] [--role prefill|decode|both] [--log-file PATH]\n"
            "          [--log-level debug|info|warn|error] [--ready-file PATH]\n"
            "          [--advertise HOST[:PORT]] [--health-file PATH]\n%s",
            prog, extra ? extra : "");
}

int pd_proc_log_start(const pd_proc_args_t *a, const char *role, pd_err_t *err)
{
    int lvl = a->cfg.log.level[0] ? pd_log_level_parse(a->cfg.log.level) : PD_LOG_INFO;
    pd_log_init(role, lvl < 0 ? PD_LOG_INFO : (pd_log_level_t)lvl);
    if (a->log_file[0] && pd_log_open_file(a->log_file) != 0)
        return pd_err_set(err, PD_EIO, "--log-file %s: cannot open", a->log_file);
    /* The allocation-failure test hook (fault.h), off unless PD_FAULT_ALLOC is set. */
    return pd_fault_configure_env(err);
}

static volatile sig_atomic_t *g_stop_flag; /* see pd_proc_signals */

static void on_signal(int sig)
{
    (void)sig;
    if (g_stop_flag)
        *g_stop_flag = 1;
}

void pd_proc_signals(volatile sig_atomic_t *flag)
{
    g_stop_flag = flag;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int pd_proc_write_file(const char *path, const char *text, pd_err_t *err)
{
    char tmp[PD_CFG_STR + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return pd_err_set(err, PD_EIO, "%s: cannot write", tmp);
    fputs(text, f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        remove(tmp);
        return pd_err_set(err, PD_EIO, "%s: cannot write", path);
    }
    return 0;
}

void pd_proc_health(pd_proc_health_t *h, const char *state, uint64_t now_ms, uint32_t every_ms)
{
    if (h->path[0] == '\0')
        return;
    if (strcmp(h->state, state) == 0 && now_ms - h->written_ms < every_ms)
        return;
    char text[96];
    snprintf(text, sizeof text, "state=%s\npid=%d\n", state, (int)getpid());
    pd_err_t err = { 0 };
    if (pd_proc_write_file(h->path, text, &err) != 0 && h->state[0] == '\0')
        PD_WARN("event=health_file_failed msg=\"%s\"", err.msg); /* said once */
    snprintf(h->state, sizeof h->state, "%s", state);
    h->written_ms = now_ms;
}
