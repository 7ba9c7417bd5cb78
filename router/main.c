/* main.c -- pd-router: the only address clients know. See router.h. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "proc.h"
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
    if (args.ready_file[0]) {
        char text[2 * PD_CFG_STR + 64];
        snprintf(text, sizeof text, "client=%s\nworker=%s\n", rt.front_ep, rt.back_ep);
        if (pd_proc_write_file(args.ready_file, text, &err) != 0)
            PD_WARN("event=ready_file_failed msg=\"%s\"", err.msg);
    }
    int rc = rt_run(&rt);
    rt_destroy(&rt);
    PD_INFO("event=stopped");
    return rc ? 1 : 0;
}
