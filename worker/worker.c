/* worker.c -- the worker process: flags, engine, roles, host. See worker.h. */
#include "worker/worker.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "decode_worker/decode.h"
#include "prefill_worker/prefill.h"
#include "runtime/proc.h"
#include "runtime/wkengine.h"
#include "runtime/wkhost.h"

static volatile sig_atomic_t g_stop; /* set by SIGINT/SIGTERM (proc.h) */

typedef struct {
    pd_config_t cfg;
    Pd__Role role;
    char id[64];
    pd_proc_health_t *health; /* --health-file (proc.h) */
    pd_wkengine_t eng;
    pd_wkhost_t *host;
    pd_prefill_t *prefill;
    pd_decode_t *decode;
} worker_t;

static const char *role_name(Pd__Role r)
{
    return r == PD__ROLE__ROLE_PREFILL ? "prefill" : r == PD__ROLE__ROLE_DECODE ? "decode" : "both";
}

static int setup(worker_t *w, pd_err_t *err)
{
    bool has_prefill = w->role != PD__ROLE__ROLE_DECODE;
    bool has_decode = w->role != PD__ROLE__ROLE_PREFILL;
    if (w->cfg.model.path[0] == '\0')
        return pd_err_set(err, PD_EINVAL, "model.path: not set (use --model PATH)");
    if (w->cfg.worker.router[0] == '\0')
        return pd_err_set(err, PD_EINVAL, "worker.router: not set (use --router ADDR)");
    int rc = pd_wkengine_init(&w->eng, &w->cfg, has_prefill, has_decode, err);
    if (rc)
        return rc;
    w->host = pd_wkhost_new(&w->cfg, w->id, &w->eng, &g_stop, err);
    if (w->host == NULL)
        return PD_ENOMEM;
    pd_wkhost_set_health(w->host, w->health);
    pd_wkrole_env_t env = { &w->eng, &w->cfg, w->id, pd_wkhost_port(w->host),
                            pd_wkhost_zctx(w->host) };
    pd_wkrole_t pr = { 0 }, dr = { 0 };
    if (has_decode) {
        w->decode = pd_decode_new(&env, err);
        if (w->decode == NULL)
            return PD_EIO;
        dr = pd_decode_role(w->decode);
    }
    if (has_prefill) {
        pd_kv_sink_t sink = has_decode ? pd_decode_sink(w->decode) : (pd_kv_sink_t){ 0 };
        w->prefill = pd_prefill_new(&env, has_decode ? &sink : NULL, err);
        if (w->prefill == NULL)
            return PD_ENOMEM;
        pr = pd_prefill_role(w->prefill);
    }
    pd_wkhost_set_roles(w->host, pr, dr);
    const char *kv_endpoint = w->decode ? pd_decode_kv_endpoint(w->decode) : "";
    PD_INFO("event=loaded model=\"%s\" role=%d blocks=%u block_bytes=%zu max_seq_len=%u "
            "threads=%d kv=%s",
            w->eng.model->name, (int)w->role, pd_kv_shape(w->eng.kv)->n_blocks,
            w->eng.block_bytes, w->eng.max_seq_len, w->eng.threads,
            kv_endpoint[0] ? kv_endpoint : "-");
    pd_wkhost_info_t info = {
        .role = w->role,
        .kv_endpoint = kv_endpoint,
        .model_identity = w->eng.identity,
        .model_name = w->eng.model->name,
        .limits = {
            .block_size = pd_kv_shape(w->eng.kv)->block_size,
            .total_blocks = pd_kv_shape(w->eng.kv)->n_blocks,
            .max_batch_size = w->role == PD__ROLE__ROLE_PREFILL ? w->cfg.prefill.max_batch_size
                                                                : w->cfg.decode.max_batch_size,
            .max_batch_tokens = w->cfg.prefill.max_batch_tokens,
            .max_seq_len = w->eng.max_seq_len,
            .kv_dtype = { 0 },
        },
        .prefix_caching = w->prefill != NULL && pd_kv_prefix_on(w->eng.kv),
    };
    snprintf(info.limits.kv_dtype, sizeof info.limits.kv_dtype, "%s",
             pd_kv_dtype_name(pd_kv_dtype(w->eng.kv)));
    return pd_wkhost_start(w->host, &info, err);
}

/* Every socket first (the roles' here, whether or not the host got them;
 * the host's in pd_wkhost_free, which then ends the ZeroMQ context: no
 * zero-copy frame still reads a block), then the roles, then the engine. */
static void teardown(worker_t *w)
{
    pd_wkrole_t roles[2] = { { 0 }, { 0 } };
    if (w->prefill)
        roles[0] = pd_prefill_role(w->prefill);
    if (w->decode)
        roles[1] = pd_decode_role(w->decode);
    for (int i = 0; i < 2; i++)
        if (roles[i].ops)
            roles[i].ops->close(roles[i].self);
    pd_wkhost_free(w->host);
    pd_prefill_free(w->prefill);
    pd_decode_free(w->decode);
    pd_wkengine_free(&w->eng);
}

static void write_ready_file(const worker_t *w, const char *path)
{
    char text[PD_CFG_STR + 128];
    pd_err_t err = { 0 };
    snprintf(text, sizeof text, "kv=%s\nid=%s\n",
             w->decode ? pd_decode_kv_endpoint(w->decode) : "", w->id);
    if (pd_proc_write_file(path, text, &err) != 0)
        PD_WARN("event=ready_file_failed msg=\"%s\"", err.msg);
}

int pd_worker_main(int argc, char **argv, Pd__Role default_role)
{
    static pd_proc_args_t args; /* large: keep them off the stack */
    static worker_t w;
    const char *prog = default_role == PD__ROLE__ROLE_PREFILL ? "pd-prefill" : "pd-decode";
    pd_err_t err = { 0 };
    if (pd_proc_parse(&args, argc, argv, &err) != 0) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        pd_proc_usage(prog, NULL);
        return 2;
    }
    if (args.help) {
        pd_proc_usage(prog, "A worker: registers with the router at worker.router.\n");
        return 0;
    }
    w.cfg = args.cfg;
    w.role = default_role;
    if (strcmp(args.role, "prefill") == 0)
        w.role = PD__ROLE__ROLE_PREFILL;
    else if (strcmp(args.role, "decode") == 0)
        w.role = PD__ROLE__ROLE_DECODE;
    else if (strcmp(args.role, "both") == 0)
        w.role = PD__ROLE__ROLE_BOTH;
    if (args.id[0])
        snprintf(w.id, sizeof w.id, "%s", args.id);
    else
        snprintf(w.id, sizeof w.id, "%s-%d", role_name(w.role), (int)getpid());
    char logrole[80];
    snprintf(logrole, sizeof logrole, "%s", args.id[0] ? args.id : prog + 3);
    if (pd_proc_log_start(&args, logrole, &err) != 0) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        return 2;
    }
    pd_proc_signals(&g_stop);
    w.health = &args.health;
    if (setup(&w, &err) != 0) {
        PD_ERROR("event=start_failed msg=\"%s\"", err.msg);
        teardown(&w);
        return 1;
    }
    if (args.ready_file[0])
        write_ready_file(&w, args.ready_file);
    int rc = pd_wkhost_run(w.host);
    teardown(&w);
    return rc;
}
