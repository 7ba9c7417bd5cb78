/* main.c -- pd-router: the only address clients know. See router.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "base/log.h"
#include "metrics.h"
#include "runtime/proc.h"
#include "router.h"

static volatile sig_atomic_t g_stop; /* set by SIGINT/SIGTERM (proc.h) */

int main(int argc, char **argv)
{
    static pd_proc_args_t args; /* large: keep it off the stack */
    static rt_t rt;
    pd_err_t err = { 0 };
    if (pd_proc_parse(&args, argc, argv, &err) != 0) {
        fprintf(stderr, "pd-router: %s\n", err.msg);
        pd_proc_usage("pd-router", NULL);
        return 2;
    }
    if (args.help) {
        pd_proc_usage("pd-router", "Serves router.client_endpoint (clients) and "
                                   "router.worker_endpoint (workers).\n");
        return 0;
    }
    if (pd_proc_log_start(&args, "router", &err) != 0) {
        fprintf(stderr, "pd-router: %s\n", err.msg);
        return 2;
    }
    pd_proc_signals(&g_stop);
    if (rt_init(&rt, &args.cfg, &g_stop, &err) != 0) {
        PD_ERROR("event=start_failed msg=\"%s\"", err.msg);
        rt_destroy(&rt);
        return 1;
    }
    /* The HTTP front (http.listen): a client of the reactor over ZeroMQ,
     * in threads of its own (router/http.h). */
    const char *served = args.cfg.model.name[0] ? args.cfg.model.name : rt.model->name;
    pd_metrics_t *metrics = pd_metrics_new(served, &err);
    pd_http_t *http = NULL;
    if (metrics && args.cfg.http.listen[0]) {
        pd_gguf_str_t t = { 0 };
        char *tmpl = NULL;
        if (pd_gguf_get_str(rt.model->gguf, "tokenizer.chat_template", &t, NULL) == 0)
            tmpl = strndup(t.ptr, t.len);
        pd_http_opts_t ho = { .cfg = &args.cfg, .zctx = rt.zctx, .client_endpoint = rt.front_ep,
                              .tok = rt.tok, .chat_template = tmpl, .model_name = served,
                              .max_seq_len = rt.max_seq_len, .metrics = metrics };
        http = pd_http_start(&ho, &err);
        free(tmpl);
    }
    if (metrics == NULL || (args.cfg.http.listen[0] && http == NULL)) {
        PD_ERROR("event=start_failed msg=\"%s\"", err.msg);
        pd_metrics_free(metrics);
        rt_destroy(&rt);
        return 1;
    }
    rt.metrics = metrics;
    rt.health = &args.health;
    if (args.ready_file[0]) {
        char text[3 * PD_CFG_STR + 64];
        int n = snprintf(text, sizeof text, "client=%s\nworker=%s\n", rt.front_ep, rt.back_ep);
        if (http && n > 0 && (size_t)n < sizeof text)
            snprintf(text + n, sizeof text - (size_t)n, "http=%s\n", pd_http_addr(http));
        if (pd_proc_write_file(args.ready_file, text, &err) != 0)
            PD_WARN("event=ready_file_failed msg=\"%s\"", err.msg);
    }
    int rc = rt_run(&rt);
    pd_http_stop(http); /* before rt_destroy terminates the ZeroMQ context */
    rt_destroy(&rt);
    pd_metrics_free(metrics);
    PD_INFO("event=stopped");
    return rc ? 1 : 0;
}
