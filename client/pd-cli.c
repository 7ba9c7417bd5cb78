/* pd-cli -- talk to a pdserve cluster from the shell.
 *
 *   pd-cli generate "prompt" | -p "prompt" [-n N] [--temp T] [--top-k K] [--top-p P]
 *          [--min-p P] [--seed S] [--stop STR]... [--stop-id ID]...
 *          [--ignore-eos] [--tokens ID,ID,...] [--no-stream] [--json]
 *          [--timeout MS]
 *   pd-cli status [--json]
 *   pd-cli drain WORKER          the worker finishes what it holds and leaves
 *   pd-cli drain WORKER --keep   ... and stays registered, idle (cordoned)
 *   pd-cli undrain WORKER        a cordoned worker takes new work again
 *   pd-cli keygen                a CURVE key pair (Z85), for security.* and
 *                                $PD_CURVE_PUBLIC_KEY / $PD_CURVE_SECRET_KEY
 *   pd-cli bench-zmq [--block-bytes B] [--blocks N] [--messages M]
 *                                raw ZeroMQ loopback throughput (GB/s) for
 *                                KV-transfer-shaped messages, the yardstick
 *                                for the cluster's KV shipping
 *   pd-cli debug-send HEX        send raw bytes as one message, print the reply
 *   pd-cli debug-kv ENDPOINT --req ID [--epoch E] --tokens N --identity HEX
 *          --block-size S --block-bytes B [--corrupt]
 *                                send a synthetic KV transfer (zero blocks) to a
 *                                decode worker's KV endpoint, print its KvAck
 *
 * Every command takes --router ADDR (default $PD_ROUTER, else
 * tcp://127.0.0.1:5555). generate streams text to stdout (or one JSON
 * object per chunk with --json); Ctrl-C cancels the request (a second
 * Ctrl-C quits at once). Exit status: 0 done, 1 the request failed,
 * 2 usage, 130 cancelled.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <xxhash.h>

#include "runtime/net.h"
#include "interrupt.h"
#include "pdclient.h"

#define CLI_MAX_STOP 16
#define CLI_MAX_TOKENS 65536

static void usage(void)
{
    fprintf(stderr,
            "usage: pd-cli [--router ADDR] generate PROMPT|-p PROMPT [-n N] [--temp T]\n"
            "              [--top-k K] [--top-p P] [--min-p P] [--seed S] [--stop STR]...\n"
            "              [--stop-id ID]...\n"
            "              [--ignore-eos] [--tokens ID,ID,...] [--no-stream] [--json]\n"
            "              [--timeout MS]\n"
            "       pd-cli [--router ADDR] status [--json]\n"
            "       pd-cli [--router ADDR] drain WORKER [--keep]\n"
            "       pd-cli [--router ADDR] undrain WORKER\n"
            "       pd-cli keygen\n"
            "       pd-cli bench-zmq [--block-bytes B] [--blocks N] [--messages M]\n"
            "       pd-cli [--router ADDR] debug-send HEX\n"
            "       pd-cli debug-kv ENDPOINT --req ID [--epoch E] --tokens N --identity HEX\n"
            "              --block-size S --block-bytes B [--corrupt]\n"
            "The router defaults to $PD_ROUTER, else tcp://127.0.0.1:5555.\n");
}

/* ====== generate ====== */

typedef struct {
    bool json;
    bool done;
    bool ok;
    bool ended_newline;
    uint32_t next_index;
    bool index_error;
} gen_state_t;

static int print_chunk(const pd_chunk_t *ch, void *user)
{
    gen_state_t *st = user;
    if (ch->index != st->next_index && ch->n_tokens > 0)
        st->index_error = true;
    st->next_index = ch->index + (uint32_t)ch->n_tokens;
    if (st->json) {
        json_t *o = json_object();
        json_object_set_new(o, "request_id", json_integer((json_int_t)ch->request_id));
        json_object_set_new(o, "index", json_integer(ch->index));
        json_t *toks = json_array();
        for (size_t i = 0; i < ch->n_tokens; i++)
            json_array_append_new(toks, json_integer(ch->tokens[i]));
        json_object_set_new(o, "tokens", toks);
        json_object_set_new(o, "text", json_stringn(ch->text, ch->text_len));
        json_object_set_new(o, "final", json_boolean(ch->is_final));
        if (ch->is_final) {
            json_object_set_new(o, "finish_reason", json_string(pd_finish_name(ch->finish)));
            if (ch->status != PD_STATUS_OK) {
                json_t *e = json_object();
                json_object_set_new(e, "code", json_string(pd_status_name(ch->status)));
                json_object_set_new(e, "message", json_string(ch->error ? ch->error : ""));
                json_object_set_new(o, "error", e);
            } else {
                json_t *u = json_object();
                json_object_set_new(u, "prompt_tokens", json_integer(ch->prompt_tokens));
                json_object_set_new(u, "completion_tokens", json_integer(ch->completion_tokens));
                json_object_set_new(o, "usage", u);
                json_t *t = json_object();
                json_object_set_new(t, "queue_us", json_integer((json_int_t)ch->queue_us));
                json_object_set_new(t, "ttft_us", json_integer((json_int_t)ch->ttft_us));
                json_object_set_new(t, "e2e_us", json_integer((json_int_t)ch->e2e_us));
                json_object_set_new(t, "preemptions", json_integer(ch->n_preemptions));
                json_object_set_new(o, "timings", t);
            }
        }
        char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (s) {
            puts(s);
            free(s);
        }
        json_decref(o);
    } else if (ch->text_len > 0) {
        fwrite(ch->text, 1, ch->text_len, stdout);
        st->ended_newline = ch->text[ch->text_len - 1] == '\n';
    }
    fflush(stdout);
    if (ch->is_final) {
        st->done = true;
        st->ok = ch->status == PD_STATUS_OK;
        if (!st->ok)
            fprintf(stderr, "pd-cli: %s: %s\n", pd_status_name(ch->status),
                    ch->error ? ch->error : "");
    }
    return 0;
}

static int parse_tokens(const char *s, int32_t *out, size_t cap, size_t *n)
{
    *n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX || *n == cap)
            return -1;
        out[(*n)++] = (int32_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return 0;
}

static bool num_arg(const char *flag, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || !(d >= lo && d <= hi)) {
        fprintf(stderr, "pd-cli: %s: expected a number in [%g, %g], got '%s'\n", flag, lo, hi, v);
        return false;
    }
    *out = d;
    return true;
}

static int cmd_generate(const char *router, int argc, char **argv)
{
    pd_gen_request_t req;
    pd_gen_request_default(&req);
    const char *stops[CLI_MAX_STOP];
    static int32_t stop_ids[CLI_MAX_STOP];
    static int32_t toks[CLI_MAX_TOKENS];
    size_t n_stop = 0, n_stop_ids = 0, n_toks = 0;
    const char *prompt = NULL;
    bool json = false;
    uint32_t timeout_ms = 0;
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d;
        if (strcmp(f, "--json") == 0) {
            json = true;
            continue;
        }
        if (strcmp(f, "--ignore-eos") == 0) {
            req.ignore_eos = true;
            continue;
        }
        if (strcmp(f, "--no-stream") == 0) {
            req.stream = false;
            continue;
        }
        if (f[0] != '-' || strcmp(f, "-") == 0) {
            if (prompt) {
                fprintf(stderr, "pd-cli: one prompt only (quote it)\n");
                return 2;
            }
            prompt = f;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "pd-cli: %s: missing value or unknown flag\n", f);
            return 2;
        }
        i++;
        if (strcmp(f, "-p") == 0 || strcmp(f, "--prompt") == 0) {
            if (prompt) {
                fprintf(stderr, "pd-cli: one prompt only\n");
                return 2;
            }
            prompt = v; /* may start with '-' */
        } else if (strcmp(f, "-n") == 0 || strcmp(f, "--max-tokens") == 0) {
            if (!num_arg(f, v, 0, 1e9, &d))
                return 2;
            req.max_tokens = (uint32_t)d;
        } else if (strcmp(f, "--temp") == 0) {
            /* Range checks are the router's: it names the field. */
            if (!num_arg(f, v, -1e9, 1e9, &d))
                return 2;
            req.temperature = (float)d;
        } else if (strcmp(f, "--top-k") == 0) {
            if (!num_arg(f, v, -1e9, 1e9, &d))
                return 2;
            req.top_k = (int32_t)d;
        } else if (strcmp(f, "--top-p") == 0) {
            if (!num_arg(f, v, -1e9, 1e9, &d))
                return 2;
            req.top_p = (float)d;
        } else if (strcmp(f, "--min-p") == 0) {
            if (!num_arg(f, v, -1e9, 1e9, &d))
                return 2;
            req.min_p = (float)d;
        } else if (strcmp(f, "--seed") == 0) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (end == v || *end || errno) {
                fprintf(stderr, "pd-cli: --seed: expected an unsigned integer\n");
                return 2;
            }
            req.seed = s;
        } else if (strcmp(f, "--stop") == 0) {
            if (n_stop == CLI_MAX_STOP) {
                fprintf(stderr, "pd-cli: at most %d --stop\n", CLI_MAX_STOP);
                return 2;
            }
            stops[n_stop++] = v;
        } else if (strcmp(f, "--stop-id") == 0) {
            if (n_stop_ids == CLI_MAX_STOP || !num_arg(f, v, -1e9, 1e9, &d))
                return 2;
            stop_ids[n_stop_ids++] = (int32_t)d;
        } else if (strcmp(f, "--tokens") == 0) {
            if (parse_tokens(v, toks, CLI_MAX_TOKENS, &n_toks) != 0) {
                fprintf(stderr, "pd-cli: --tokens: expected ID,ID,...\n");
                return 2;
            }
        } else if (strcmp(f, "--timeout") == 0) {
            if (!num_arg(f, v, 0, 86400000, &d))
                return 2;
            timeout_ms = (uint32_t)d;
        } else {
            fprintf(stderr, "pd-cli: %s: unknown flag\n", f);
            return 2;
        }
    }
    if (prompt == NULL && n_toks == 0) {
        fprintf(stderr, "pd-cli: generate: missing PROMPT\n");
        usage();
        return 2;
    }
    req.prompt = prompt;
    req.prompt_tokens = toks;
    req.n_prompt_tokens = n_toks;
    req.stop = stops;
    req.n_stop = n_stop;
    req.stop_ids = stop_ids;
    req.n_stop_ids = n_stop_ids;
    req.deadline_ms = timeout_ms;
    pd_err_t err = { 0 };
    pd_client_t *c = pd_client_new(router, &err);
    if (c == NULL) {
        fprintf(stderr, "pd-cli: %s\n", err.msg);
        return 1;
    }
    if (timeout_ms)
        pd_client_set_timeout(c, timeout_ms);
    pd_interrupt_install();
    gen_state_t st = { .json = json };
    uint64_t id = 0;
    int rc = pd_client_submit(c, &req, &id, &err);
    if (rc) {
        fprintf(stderr, "pd-cli: %s\n", err.msg);
        pd_client_free(c);
        return 1;
    }
    bool cancel_sent = false;
    while (!st.done) {
        if (pd_interrupted && !cancel_sent) {
            pd_client_cancel(c, id, NULL);
            cancel_sent = true;
        }
        rc = pd_client_poll(c, 100, print_chunk, &st, &err);
        if (rc < 0) {
            fprintf(stderr, "pd-cli: %s\n", err.msg);
            break;
        }
    }
    if (!json && st.done && !st.ended_newline)
        putchar('\n');
    fflush(stdout);
    pd_client_free(c);
    if (st.index_error)
        fprintf(stderr, "pd-cli: chunk indexes were not contiguous\n");
    if (cancel_sent)
        return 130;
    return st.done && st.ok && !st.index_error ? 0 : 1;
}

/* ====== status ====== */

static int cmd_status(const char *router, int argc, char **argv)
{
    bool json = argc > 0 && strcmp(argv[0], "--json") == 0;
    pd_err_t err = { 0 };
    pd_client_t *c = pd_client_new(router, &err);
    if (c == NULL) {
        fprintf(stderr, "pd-cli: %s\n", err.msg);
        return 1;
    }
    pd_client_set_timeout(c, 3000);
    pd_cluster_status_t *s = NULL;
    int rc = pd_client_status(c, &s, &err);
    pd_client_free(c);
    if (rc) {
        fprintf(stderr, "pd-cli: %s\n", err.msg);
        return 1;
    }
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "model", json_string(s->model_name));
        char ident[32];
        snprintf(ident, sizeof ident, "%016llx", (unsigned long long)s->model_identity);
        json_object_set_new(o, "model_identity", json_string(ident));
        json_object_set_new(o, "active_requests", json_integer(s->active_requests));
        json_object_set_new(o, "queued_requests", json_integer(s->queued_requests));
        json_object_set_new(o, "requests_total", json_integer((json_int_t)s->requests_total));
        json_object_set_new(o, "requests_failed", json_integer((json_int_t)s->requests_failed));
        json_object_set_new(o, "block_size", json_integer(s->block_size));
        json_object_set_new(o, "max_seq_len", json_integer(s->max_seq_len));
        json_object_set_new(o, "max_tokens_limit", json_integer(s->max_tokens_limit));
        json_object_set_new(o, "prefix_index_hashes", json_integer(s->prefix_index_hashes));
        json_t *ws = json_array();
        for (size_t i = 0; i < s->n_workers; i++) {
            const pd_worker_status_t *w = &s->workers[i];
            json_t *j = json_object();
            json_object_set_new(j, "id", json_string(w->id));
            json_object_set_new(j, "role", json_string(w->role));
            json_object_set_new(j, "state", json_string(w->state));
            json_object_set_new(j, "kv_endpoint", json_string(w->kv_endpoint));
            json_object_set_new(j, "queued_prefill_tokens", json_integer(w->queued_prefill_tokens));
            json_object_set_new(j, "running_seqs", json_integer(w->running_seqs));
            json_object_set_new(j, "free_blocks", json_integer(w->free_blocks));
            json_object_set_new(j, "total_blocks", json_integer(w->total_blocks));
            json_object_set_new(j, "assigned", json_integer(w->assigned));
            json_object_set_new(j, "last_seen_ms", json_integer((json_int_t)w->last_seen_ms));
            json_object_set_new(j, "prefix_caching", json_boolean(w->prefix_caching));
            json_object_set_new(j, "prefix_index_blocks", json_integer(w->prefix_index_blocks));
            json_object_set_new(j, "routed_cached_requests",
                                json_integer((json_int_t)w->routed_cached_requests));
            json_object_set_new(j, "routed_cached_tokens",
                                json_integer((json_int_t)w->routed_cached_tokens));
            json_object_set_new(j, "kv_resyncs", json_integer((json_int_t)w->kv_resyncs));
            json_t *k = json_object();
#define C(f) json_object_set_new(k, #f, json_integer((json_int_t)w->f))
            C(steps);
            C(multi_seq_steps);
            C(joins_while_running);
            C(retirements);
            C(preemptions);
            C(prefill_batches);
            C(prefill_multi);
            C(prefill_tokens);
            C(kv_sent_bytes);
            C(kv_recv_bytes);
            C(kv_rejected);
            C(decode_tokens);
            C(max_running);
            C(kv_transfers);
            C(kv_transfer_us);
            C(prefill_us);
            C(decode_us);
            C(prefill_pass_tokens);
            C(compute_turns);
            C(compute_busy_ms);
            C(mixed_steps);
            C(prefix_queries);
            C(prefix_hits);
            C(prefix_requests);
            C(prefix_evictions);
            C(prefix_cached_blocks);
            C(kv_streams_dropped);
            C(kv_layers);
#undef C
            json_object_set_new(j, "counters", k);
            json_array_append_new(ws, j);
        }
        json_object_set_new(o, "workers", ws);
        char *txt = json_dumps(o, JSON_INDENT(2));
        if (txt) {
            puts(txt);
            free(txt);
        }
        json_decref(o);
    } else {
        printf("model %s  requests: active %u queued %u total %llu failed %llu\n", s->model_name,
               s->active_requests, s->queued_requests, (unsigned long long)s->requests_total,
               (unsigned long long)s->requests_failed);
        printf("%-20s %-8s %-9s %8s %8s %15s %10s  %s\n", "WORKER", "ROLE", "STATE", "QUEUED",
               "RUNNING", "KV USED/TOTAL", "LAST SEEN", "KV ENDPOINT");
        for (size_t i = 0; i < s->n_workers; i++) {
            const pd_worker_status_t *w = &s->workers[i];
            char kv[40];
            snprintf(kv, sizeof kv, "%u/%u", w->total_blocks - w->free_blocks, w->total_blocks);
            char seen[24];
            snprintf(seen, sizeof seen, "%llums", (unsigned long long)w->last_seen_ms);
            printf("%-20s %-8s %-9s %8u %8u %15s %10s  %s\n", w->id, w->role, w->state,
                   w->queued_prefill_tokens, w->running_seqs, kv, seen,
                   w->kv_endpoint[0] ? w->kv_endpoint : "-");
        }
        for (size_t i = 0; i < s->n_workers; i++) {
            const pd_worker_status_t *w = &s->workers[i];
            if (!w->prefix_caching)
                continue;
            printf("%-20s prefix cache: hits %llu/%llu tokens (%.1f%%), %llu blocks cached, "
                   "%llu evicted; routed onto it: %llu requests\n",
                   w->id, (unsigned long long)w->prefix_hits,
                   (unsigned long long)w->prefix_queries,
                   w->prefix_queries ? 100.0 * (double)w->prefix_hits / (double)w->prefix_queries
                                     : 0.0,
                   (unsigned long long)w->prefix_cached_blocks,
                   (unsigned long long)w->prefix_evictions,
                   (unsigned long long)w->routed_cached_requests);
        }
        if (s->n_workers == 0)
            printf("(no workers registered)\n");
    }
    pd_cluster_status_free(s);
    return 0;
}

/* ====== drain ====== */

static int cmd_drain(const char *router, int argc, char **argv, bool undrain)
{
    bool keep = argc == 2 && strcmp(argv[1], "--keep") == 0;
    if (argc != 1 + (keep && !undrain)) {
        usage();
        return 2;
    }
    pd_drain_mode_t mode = undrain ? PD_DRAIN_RESUME : keep ? PD_DRAIN_KEEP : PD_DRAIN_LEAVE;
    pd_err_t err = { 0 };
    pd_client_t *c = pd_client_new(router, &err);
    if (c == NULL) {
        fprintf(stderr, "pd-cli: %s\n", err.msg);
        return 1;
    }
    pd_client_set_timeout(c, 3000);
    int rc = pd_client_drain_mode(c, argv[0], mode, &err);
    pd_client_free(c);
    if (rc) {
        fprintf(stderr, "pd-cli: %s\n", err.msg);
        return 1;
    }
    if (mode == PD_DRAIN_LEAVE)
        printf("draining %s: it finishes what it holds, then leaves\n", argv[0]);
    else if (mode == PD_DRAIN_KEEP)
        printf("cordoned %s: it gets no new work, finishes what it holds and stays "
               "(pd-cli undrain %s)\n", argv[0], argv[0]);
    else
        printf("resumed %s: it takes new work again\n", argv[0]);
    return 0;
}

/* ====== bench-zmq ====== */

typedef struct {
    void *sock;
    uint64_t bytes;
    uint64_t messages;
    uint64_t want_messages;
} zb_recv_t;

static void *zb_receiver(void *arg)
{
    zb_recv_t *r = arg;
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (r->messages < r->want_messages) {
        if (zmq_msg_recv(&m, r->sock, 0) < 0)
            break;
        r->bytes += zmq_msg_size(&m);
        if (!zmq_msg_more(&m))
            r->messages++;
    }
    zmq_msg_close(&m);
    return NULL;
}

static void zb_free(void *data, void *hint)
{
    (void)data;
    (void)hint;
}

static int cmd_bench_zmq(int argc, char **argv)
{
    unsigned long long bb = 1u << 20, nb = 16, nm = 200;
    for (int i = 0; i + 1 < argc; i += 2) {
        unsigned long long v = strtoull(argv[i + 1], NULL, 10);
        if (strcmp(argv[i], "--block-bytes") == 0)
            bb = v;
        else if (strcmp(argv[i], "--blocks") == 0)
            nb = v;
        else if (strcmp(argv[i], "--messages") == 0)
            nm = v;
    }
    if (bb == 0 || bb > (1u << 28) || nb == 0 || nb > 4096 || nm == 0 || nm > 1000000) {
        fprintf(stderr, "pd-cli: bench-zmq: bad sizes\n");
        return 2;
    }
    void *ctx = zmq_ctx_new();
    void *rs = zmq_socket(ctx, ZMQ_ROUTER);
    void *ds = zmq_socket(ctx, ZMQ_DEALER);
    char ep[256];
    size_t len = sizeof ep;
    if (zmq_bind(rs, "tcp://127.0.0.1:*") != 0 ||
        zmq_getsockopt(rs, ZMQ_LAST_ENDPOINT, ep, &len) != 0 || zmq_connect(ds, ep) != 0) {
        fprintf(stderr, "pd-cli: bench-zmq: %s\n", zmq_strerror(errno));
        return 1;
    }
    void *block = calloc(1, bb);
    if (block == NULL)
        return 1;
    zb_recv_t r = { rs, 0, 0, nm };
    pthread_t th;
    pthread_create(&th, NULL, zb_receiver, &r);
    uint64_t t0 = pd_now_us();
    for (unsigned long long m = 0; m < nm; m++) {
        zmq_send(ds, "hdr", 3, ZMQ_SNDMORE);
        for (unsigned long long b = 0; b < nb; b++) {
            zmq_msg_t f;
            zmq_msg_init_data(&f, block, bb, zb_free, NULL); /* zero-copy, as the workers */
            zmq_msg_send(&f, ds, b + 1 < nb ? ZMQ_SNDMORE : 0);
        }
    }
    pthread_join(th, NULL);
    double s = (double)(pd_now_us() - t0) / 1e6;
    double payload = (double)nm * (double)nb * (double)bb;
    printf("{\"block_bytes\":%llu,\"blocks_per_message\":%llu,\"messages\":%llu,"
           "\"seconds\":%.4f,\"gb_per_s\":%.3f}\n",
           bb, nb, nm, s, payload / s / 1e9);
    int zero = 0;
    zmq_setsockopt(ds, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(rs, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(ds);
    zmq_close(rs);
    zmq_ctx_term(ctx);
    free(block);
    return 0;
}

/* ====== debug-send ====== */

/* The value of one hex digit, or -1. */
static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int cmd_debug_send(const char *router, int argc, char **argv)
{
    if (argc < 1) {
        usage();
        return 2;
    }
    const char *hex = argv[0];
    size_t n = strlen(hex);
    if (n % 2 || n / 2 > (1u << 20)) {
        fprintf(stderr, "pd-cli: debug-send: even number of hex digits, at most 1 MiB\n");
        return 2;
    }
    uint8_t *buf = malloc(n / 2 + 1);
    if (buf == NULL)
        return 1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        unsigned v = (unsigned)(hi * 16 + lo);
        if (hi < 0 || lo < 0) {
            free(buf);
            fprintf(stderr, "pd-cli: debug-send: bad hex\n");
            return 2;
        }
        buf[i] = (uint8_t)v;
    }
    if (router == NULL || !router[0])
        router = getenv("PD_ROUTER");
    if (router == NULL || !router[0])
        router = "tcp://127.0.0.1:5555";
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, to = 3000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &to, sizeof to);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &to, sizeof to);
    int rc = 1;
    if (zmq_connect(s, router) != 0 || zmq_send(s, buf, n / 2, 0) < 0) {
        fprintf(stderr, "pd-cli: debug-send: %s\n", zmq_strerror(errno));
        goto out;
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, s, 0) < 0) {
        fprintf(stderr, "pd-cli: debug-send: no reply: %s\n", zmq_strerror(errno));
        zmq_msg_close(&m);
        goto out;
    }
    pd_pb_alloc_t a;
    pd_pb_alloc_init(&a, 1u << 24);
    Pd__Msg *r = pd_net_unpack(&a, zmq_msg_data(&m), zmq_msg_size(&m), NULL);
    if (r && r->body_case == PD__MSG__BODY_ERROR)
        printf("error %s: %s\n", pd_status_name(r->error->code),
               r->error->message ? r->error->message : "");
    else
        printf("reply %s (%zu bytes)\n", r ? pd_net_body_name(r->body_case) : "malformed",
               zmq_msg_size(&m));
    pd_net_msg_free(&a, r);
    zmq_msg_close(&m);
    rc = 0;
out:
    free(buf);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return rc;
}

/* ====== debug-kv ====== */

static int cmd_debug_kv(int argc, char **argv)
{
    if (argc < 1) {
        usage();
        return 2;
    }
    const char *ep = argv[0];
    unsigned long long req = 0, epoch = 1, ntok = 0, ident = 0, bs = 0, bbytes = 0;
    bool corrupt = false;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (strcmp(f, "--corrupt") == 0) {
            corrupt = true;
            continue;
        }
        unsigned long long *dst = strcmp(f, "--req") == 0           ? &req
                                  : strcmp(f, "--epoch") == 0       ? &epoch
                                  : strcmp(f, "--tokens") == 0      ? &ntok
                                  : strcmp(f, "--identity") == 0    ? &ident
                                  : strcmp(f, "--block-size") == 0  ? &bs
                                  : strcmp(f, "--block-bytes") == 0 ? &bbytes
                                                                    : NULL;
        if (dst == NULL) {
            fprintf(stderr, "pd-cli: debug-kv: %s: unknown flag\n", f);
            return 2;
        }
        *dst = strtoull(v, NULL, dst == &ident ? 16 : 10);
        i++;
    }
    if (bs == 0 || bbytes == 0 || bbytes > (1u << 30) || ntok > 1000000) {
        fprintf(stderr, "pd-cli: debug-kv: --block-size and --block-bytes are required\n");
        return 2;
    }
    uint32_t nb = (uint32_t)((ntok + bs - 1) / bs);
    void *zeros = calloc(1, bbytes);
    uint64_t *sums = calloc(nb ? nb : 1, sizeof *sums);
    if (zeros == NULL || sums == NULL)
        return 1;
    uint64_t h = XXH3_64bits(zeros, bbytes);
    for (uint32_t i = 0; i < nb; i++)
        sums[i] = corrupt ? h ^ 1 : h;
    Pd__KvTransfer k = PD__KV_TRANSFER__INIT;
    k.has_request_id = k.has_epoch = k.has_n_blocks = k.has_n_tokens = k.has_block_bytes = true;
    k.has_first_token = k.has_model_identity = k.has_block_size = true;
    k.request_id = req;
    k.epoch = (uint32_t)epoch;
    k.n_blocks = nb;
    k.n_tokens = (uint32_t)ntok;
    k.block_bytes = bbytes;
    k.n_checksums = nb;
    k.checksums = sums;
    k.first_token = 1;
    k.prefill_worker_id = "pd-cli";
    k.model_identity = ident;
    k.block_size = (uint32_t)bs;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_TRANSFER;
    m.kv_transfer = &k;
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, to = 5000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &to, sizeof to);
    int rc = 1;
    if (zmq_connect(s, ep) != 0) {
        fprintf(stderr, "pd-cli: debug-kv: %s\n", zmq_strerror(errno));
        goto out;
    }
    size_t len = pd__msg__get_packed_size(&m);
    uint8_t *buf = malloc(len);
    if (buf == NULL)
        goto out;
    pd__msg__pack(&m, buf);
    zmq_send(s, buf, len, nb ? ZMQ_SNDMORE : 0);
    free(buf);
    for (uint32_t i = 0; i < nb; i++)
        zmq_send(s, zeros, bbytes, i + 1 < nb ? ZMQ_SNDMORE : 0);
    zmq_msg_t r;
    zmq_msg_init(&r);
    if (zmq_msg_recv(&r, s, 0) < 0) {
        printf("no reply\n");
        zmq_msg_close(&r);
        goto out;
    }
    pd_pb_alloc_t a;
    pd_pb_alloc_init(&a, 1u << 20);
    Pd__Msg *ack = pd_net_unpack(&a, zmq_msg_data(&r), zmq_msg_size(&r), NULL);
    if (ack && ack->body_case == PD__MSG__BODY_KV_ACK)
        printf("kv_ack ok=%d reason=%s\n", ack->kv_ack->ok,
               ack->kv_ack->reason ? ack->kv_ack->reason : "");
    else
        printf("reply %s\n", ack ? pd_net_body_name(ack->body_case) : "malformed");
    pd_net_msg_free(&a, ack);
    zmq_msg_close(&r);
    rc = 0;
out:
    free(zeros);
    free(sums);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return rc;
}

int main(int argc, char **argv)
{
    const char *router = NULL;
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "--router") == 0 && i + 1 < argc) {
            router = argv[i + 1];
            i += 2;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage();
            return 0;
        } else {
            break;
        }
    }
    if (i >= argc) {
        usage();
        return 2;
    }
    const char *cmd = argv[i++];
    /* --router may also come after the command. */
    int n = 0;
    char **rest = argv + i;
    for (int j = i; j < argc; j++) {
        if (strcmp(argv[j], "--router") == 0 && j + 1 < argc) {
            router = argv[++j];
            continue;
        }
        rest[n++] = argv[j];
    }
    if (strcmp(cmd, "generate") == 0)
        return cmd_generate(router, n, rest);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(router, n, rest);
    if (strcmp(cmd, "drain") == 0)
        return cmd_drain(router, n, rest, false);
    if (strcmp(cmd, "undrain") == 0)
        return cmd_drain(router, n, rest, true);
    if (strcmp(cmd, "bench-zmq") == 0)
        return cmd_bench_zmq(n, rest);
    if (strcmp(cmd, "keygen") == 0) {
        char pub[41], sec[41];
        if (zmq_curve_keypair(pub, sec) != 0) {
            fprintf(stderr, "pd-cli: keygen: %s\n", zmq_strerror(errno));
            return 1;
        }
        printf("public_key: \"%s\"\nsecret_key: \"%s\"\n", pub, sec);
        return 0;
    }
    if (strcmp(cmd, "debug-send") == 0)
        return cmd_debug_send(router, n, rest);
    if (strcmp(cmd, "debug-kv") == 0)
        return cmd_debug_kv(n, rest);
    fprintf(stderr, "pd-cli: unknown command '%s'\n", cmd);
    usage();
    return 2;
}
