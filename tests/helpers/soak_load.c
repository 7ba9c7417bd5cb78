/* soak_load -- the soak test's load client: a seeded, open-loop mix of
 * requests through libpdclient, every client-visible event logged as one
 * JSON line (tests/soak/check.mjs reads them).
 *
 *   soak_load --list-specs
 *   soak_load --router ADDR --seed S --seconds T --out FILE
 *             [--rate R] [--max-inflight M] [--cancel-frac F] [--drain-s D]
 *
 * --list-specs prints the fixed table of request specs, one per line:
 * "K<TAB>PROMPT<TAB>PD-RUN FLAGS" (so the caller can compute pd-run
 * references once and cache them). The table does not depend on the seed;
 * the seed chooses which spec each request uses, arrival times, deadlines
 * and which requests are cancelled (and when), so a seed reproduces the
 * workload (not its timing under faults).
 *
 * Events (one JSON object per line, "t" = CLOCK_REALTIME seconds):
 *   {"ev":"spec","k","prompt","max_tokens","temp","top_p","seed","ignore_eos"}
 *   {"ev":"start","t","seed","rate","seconds"}
 *   {"ev":"submit","t","id","spec","max_tokens","temp","top_p","seed",
 *    "ignore_eos","deadline_ms","cancel_after_ms","cancel_after_tokens"}
 *   {"ev":"submit_failed","t","code","msg"}     never reached the router
 *   {"ev":"chunk","t","id","i","toks":[...],"text"} tokens i, i+1, ...
 *   {"ev":"end","t","id","finish","code","msg","completion_tokens","preemptions"}
 *   {"ev":"cancel","t","id","n_tokens"}          the client asked to cancel
 *   {"ev":"load_end","t","submitted"}            no more submits
 *   {"ev":"drained","t","inflight"}              the client stopped waiting
 * Submitting stops after --seconds; the client then waits for every request
 * in flight to end (bounded by the longest deadline + 15 s) and exits 0 if
 * none is left, 1 otherwise (the checker reports it as a P1 violation).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "base/args.h"
#include "pdclient.h"

#define N_SPECS 32
#define MAX_FLIGHT 1024
#define DEADLINE_MIN_MS 10000
#define DEADLINE_SPAN_MS 10000

static const char *WORDS[] = {
    "the",     "quick",  "brown",  "fox",    "jumps",  "over",   "lazy",    "dog",
    "while",   "seven",  "wizards", "quietly", "hex",  "jovial", "sphinx",  "pack",
    "my",      "box",    "with",   "five",   "dozen",  "liquor", "jugs",    "how",
    "vexingly", "daft",  "zebras", "jump",   "river",  "mountain", "cloud", "signal",
    "garden",  "silver", "window", "thunder", "paper", "engine", "orange",
};
#define N_WORDS (sizeof WORDS / sizeof WORDS[0])

typedef struct {
    char prompt[2048];
    uint32_t max_tokens;
    float temp, top_p;
    uint64_t seed;
    bool ignore_eos;
} spec_t;

typedef struct {
    uint64_t id;
    int spec;
    double t_submit;
    double cancel_at;        /* realtime s; 0 = none */
    int32_t cancel_tokens;   /* cancel once this many tokens arrived; -1 = none */
    uint32_t n_tokens;
    bool cancel_sent;
} flight_t;

static spec_t specs[N_SPECS];
static flight_t fl[MAX_FLIGHT];
static size_t n_fl;
static FILE *out;
static pd_client_t *cli;
static volatile sig_atomic_t stop_now;
static double g_cancel_frac = 0.1; /* requests the client cancels */

static void on_signal(int sig) { (void)sig; stop_now = 1; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* splitmix64: the workload's only source of randomness. */
static uint64_t rng_state;
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_unit(void) { return (double)(rng_next() >> 11) / 9007199254740992.0; }

static void specs_init(void)
{
    for (int k = 0; k < N_SPECS; k++) {
        spec_t *s = &specs[k];
        int nw = 1 + (k * 53) % 110;
        size_t len = 0;
        for (int i = 0; i < nw; i++) {
            const char *w = WORDS[(k * 31 + i * 7 + i / 5) % N_WORDS];
            len += (size_t)snprintf(s->prompt + len, sizeof s->prompt - len, "%s%s",
                                    i ? " " : "", w);
        }
        s->max_tokens = 1 + (uint32_t)((k * 37) % 180);
        if (k % 2) {
            s->temp = 0.8f;
            s->top_p = 0.9f;
            s->seed = 1000 + (uint64_t)k;
        } else {
            s->temp = 0.0f;
            s->top_p = 1.0f;
            s->seed = 0;
        }
        s->ignore_eos = k % 4 < 2;
    }
}

static void emit(json_t *o)
{
    if (o == NULL) {
        fputs("{\"ev\":\"log_error\"}\n", out); /* the checker flags it */
        return;
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (s) {
        fputs(s, out);
        fputc('\n', out);
        free(s);
    }
    json_decref(o);
}

/* Ids as strings: they exceed a JSON reader's exact integers (2^53). */
static const char *id_str(uint64_t id)
{
    static char buf[4][24];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%llu", (unsigned long long)id);
    return buf[k];
}

static int flight_find(uint64_t id)
{
    for (size_t i = 0; i < n_fl; i++)
        if (fl[i].id == id)
            return (int)i;
    return -1;
}

static void send_cancel(flight_t *f)
{
    f->cancel_sent = true;
    pd_err_t err = { 0 };
    int rc = pd_client_cancel(cli, f->id, &err);
    emit(json_pack("{s:s, s:f, s:s, s:i, s:i}", "ev", "cancel", "t", now_s(), "id",
                   id_str(f->id), "n_tokens", (int)f->n_tokens, "rc", rc));
}

static int on_chunk(const pd_chunk_t *ch, void *user)
{
    (void)user;
    double t = now_s();
    int i = flight_find(ch->request_id);
    if (ch->n_tokens > 0 || ch->text_len > 0) {
        json_t *toks = json_array();
        for (size_t k = 0; k < ch->n_tokens; k++)
            json_array_append_new(toks, json_integer(ch->tokens[k]));
        json_t *o = json_pack("{s:s, s:f, s:s, s:i, s:o}", "ev", "chunk", "t", t, "id",
                              id_str(ch->request_id), "i", (int)ch->index, "toks", toks);
        /* (An empty text may come as NULL: the router holds back pending bytes.) */
        json_t *text = ch->text_len ? json_stringn(ch->text, ch->text_len) : json_string("");
        /* The library promises complete UTF-8; say so when it is not. */
        json_object_set_new(o, "text", text ? text : json_string("<invalid UTF-8>"));
        if (text == NULL) {
            char hex[2 * 256 + 1];
            size_t n = ch->text_len < 256 ? ch->text_len : 256;
            for (size_t k = 0; k < n; k++)
                snprintf(hex + 2 * k, 3, "%02x", (unsigned char)ch->text[k]);
            hex[2 * n] = '\0';
            json_object_set_new(o, "bad_text", json_string(hex));
        }
        emit(o);
    }
    if (ch->is_final) {
        /* preemptions: how often the router re-dispatched it (worker lost,
         * KV pressure): the checker counts requests that survived a fault. */
        emit(json_pack("{s:s, s:f, s:s, s:s, s:s, s:s, s:i, s:i}", "ev", "end", "t", t, "id",
                       id_str(ch->request_id), "finish", pd_finish_name(ch->finish), "code",
                       pd_status_name(ch->status), "msg", ch->error ? ch->error : "",
                       "completion_tokens", (int)ch->completion_tokens, "preemptions",
                       (int)ch->n_preemptions));
        if (i >= 0)
            fl[i] = fl[--n_fl];
        return 0;
    }
    if (i >= 0) {
        fl[i].n_tokens += (uint32_t)ch->n_tokens;
        if (!fl[i].cancel_sent && fl[i].cancel_tokens >= 0 &&
            fl[i].n_tokens >= (uint32_t)fl[i].cancel_tokens)
            send_cancel(&fl[i]);
    }
    return 0;
}

/* Returns false when the submit failed (router unreachable). */
static bool submit_one(void)
{
    int k = (int)(rng_next() % N_SPECS);
    const spec_t *s = &specs[k];
    uint32_t deadline = DEADLINE_MIN_MS + (uint32_t)(rng_next() % DEADLINE_SPAN_MS);
    double cancel_after = 0;
    int32_t cancel_tokens = -1;
    double u = rng_unit();
    if (u < g_cancel_frac / 2)
        cancel_after = 0.001 * (double)(rng_next() % 1500); /* by time: maybe still queued */
    else if (u < g_cancel_frac)
        cancel_tokens = (int32_t)(rng_next() % (s->max_tokens + 1)); /* after some tokens */
    pd_gen_request_t r;
    pd_gen_request_default(&r);
    r.prompt = s->prompt;
    r.max_tokens = s->max_tokens;
    r.temperature = s->temp;
    r.top_p = s->top_p;
    r.seed = s->seed;
    r.ignore_eos = s->ignore_eos;
    r.deadline_ms = deadline;
    uint64_t id = 0;
    pd_err_t err = { 0 };
    double t = now_s();
    int rc = pd_client_submit(cli, &r, &id, &err);
    if (rc) {
        emit(json_pack("{s:s, s:f, s:s, s:s, s:i}", "ev", "submit_failed", "t", t, "code",
                       pd_err_name(rc), "msg", err.msg, "spec", k));
        return false;
    }
    emit(json_pack("{s:s, s:f, s:s, s:i, s:i, s:f, s:f, s:I, s:b, s:i, s:f, s:i}", "ev", "submit",
                   "t", t, "id", id_str(id), "spec", k, "max_tokens", (int)s->max_tokens,
                   "temp", (double)s->temp, "top_p", (double)s->top_p, "seed",
                   (json_int_t)s->seed, "ignore_eos", s->ignore_eos, "deadline_ms", (int)deadline,
                   "cancel_after_ms", cancel_after * 1000.0, "cancel_after_tokens",
                   (int)cancel_tokens));
    flight_t *f = &fl[n_fl++];
    memset(f, 0, sizeof *f);
    f->id = id;
    f->spec = k;
    f->t_submit = t;
    f->cancel_at = cancel_after > 0 ? t + cancel_after : 0;
    f->cancel_tokens = cancel_tokens;
    if (cancel_tokens == 0)
        send_cancel(f);
    return true;
}

static void usage(void)
{
    fprintf(stderr, "usage: soak_load --list-specs\n"
                    "       soak_load --router ADDR --seed S --seconds T --out FILE [--rate R]\n"
                    "                 [--max-inflight M] [--cancel-frac F]\n");
}

int main(int argc, char **argv)
{
    const char *router = NULL, *path = NULL;
    uint64_t seed = 1;
    double seconds = 10, rate = 10;
    uint32_t max_inflight = 128;
    bool list = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (strcmp(a, "--list-specs") == 0) {
            list = true;
            continue;
        }
        if (v == NULL) {
            usage();
            return 2;
        }
        if (strcmp(a, "--router") == 0)
            router = v;
        else if (strcmp(a, "--out") == 0)
            path = v;
        else if (strcmp(a, "--seed") == 0)
            rc = pd_arg_u64("soak_load", a, v, &seed);
        else if (strcmp(a, "--seconds") == 0)
            rc = pd_arg_double("soak_load", a, v, 0, 1e6, &seconds);
        else if (strcmp(a, "--rate") == 0)
            rc = pd_arg_double("soak_load", a, v, 0.01, 10000, &rate);
        else if (strcmp(a, "--cancel-frac") == 0)
            rc = pd_arg_double("soak_load", a, v, 0, 1, &g_cancel_frac);
        else if (strcmp(a, "--max-inflight") == 0)
            rc = pd_arg_u32("soak_load", a, v, 1, MAX_FLIGHT, &max_inflight);
        else {
            usage();
            return 2;
        }
        if (rc)
            return 2;
        i++;
    }
    specs_init();
    if (list) {
        for (int k = 0; k < N_SPECS; k++) {
            const spec_t *s = &specs[k];
            printf("%d\t%s\t-n %u", k, s->prompt, s->max_tokens);
            if (s->temp > 0)
                printf(" --temp %.1f --top-p %.1f --seed %llu", (double)s->temp, (double)s->top_p,
                       (unsigned long long)s->seed);
            printf("%s\n", s->ignore_eos ? " --ignore-eos" : "");
        }
        return 0;
    }
    if (router == NULL || path == NULL) {
        usage();
        return 2;
    }
    out = fopen(path, "w");
    if (out == NULL) {
        fprintf(stderr, "soak_load: %s: %s\n", path, strerror(errno));
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    pd_err_t err = { 0 };
    cli = pd_client_new(router, &err);
    if (cli == NULL) {
        fprintf(stderr, "soak_load: %s\n", err.msg);
        return 2;
    }
    /* How long a submit waits for a (restarting) router before it counts
     * as submit_failed: short, so that a dead router does not hold up the
     * loop (the silence timeout of a request is its deadline + the
     * library's grace anyway, deadlines being over 250 ms). */
    pd_client_set_timeout(cli, 250);
    rng_state = seed * 0x2545f4914f6cdd1dull + 1;
    for (int k = 0; k < N_SPECS; k++) {
        const spec_t *s = &specs[k];
        emit(json_pack("{s:s, s:i, s:s, s:i, s:f, s:f, s:I, s:b}", "ev", "spec", "k", k, "prompt",
                       s->prompt, "max_tokens", (int)s->max_tokens, "temp", (double)s->temp,
                       "top_p", (double)s->top_p, "seed", (json_int_t)s->seed, "ignore_eos",
                       s->ignore_eos));
    }
    double t0 = now_s();
    emit(json_pack("{s:s, s:f, s:I, s:f, s:f}", "ev", "start", "t", t0, "seed", (json_int_t)seed,
                   "rate", rate, "seconds", seconds));
    double next = t0;
    uint64_t submitted = 0;
    bool loading = true;
    double give_up = 0;
    while (!stop_now) {
        double t = now_s();
        if (loading && t - t0 >= seconds) {
            loading = false;
            give_up = t + (DEADLINE_MIN_MS + DEADLINE_SPAN_MS) / 1000.0 + 15;
            emit(json_pack("{s:s, s:f, s:I}", "ev", "load_end", "t", t, "submitted",
                           (json_int_t)submitted));
        }
        if (!loading && (n_fl == 0 || t > give_up))
            break;
        /* At most a few submits per turn, none more after one failed (a
         * failed submit waited 250 ms for a dead router): the library only
         * ends timed-out requests inside pd_client_poll. */
        for (int k = 0; loading && t >= next && n_fl < max_inflight && k < 4; k++) {
            if (!submit_one())
                k = 4;
            submitted++;
            next += -log(1.0 - rng_unit()) / rate; /* Poisson arrivals */
            t = now_s();
        }
        if (loading && n_fl >= max_inflight && t >= next)
            next = t; /* throttled: arrivals resume when there is room */
        for (size_t i = 0; i < n_fl; i++)
            if (!fl[i].cancel_sent && fl[i].cancel_at > 0 && t >= fl[i].cancel_at)
                send_cancel(&fl[i]);
        int wait_ms = loading ? (int)((next - t) * 1000) : 20;
        if (wait_ms < 0)
            wait_ms = 0;
        if (wait_ms > 20)
            wait_ms = 20;
        int rc = pd_client_poll(cli, wait_ms, on_chunk, NULL, &err);
        if (rc < 0) {
            fprintf(stderr, "soak_load: poll: %s\n", err.msg);
            break;
        }
        if (pd_client_inflight(cli) != n_fl)
            fprintf(stderr, "soak_load: library has %zu in flight, we have %zu\n",
                    pd_client_inflight(cli), n_fl);
    }
    emit(json_pack("{s:s, s:f, s:i}", "ev", "drained", "t", now_s(), "inflight", (int)n_fl));
    size_t left = n_fl;
    pd_client_free(cli);
    fclose(out);
    return left ? 1 : 0;
}
