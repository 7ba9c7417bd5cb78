/* openai.h -- the OpenAI API mapped onto the router's protocol, for the
 * HTTP front (http.h): a request body of /v1/completions or
 * /v1/chat/completions to a GenerateRequest; a finished or streamed result
 * to the response JSON; router error codes to HTTP statuses and OpenAI
 * error objects. Plain functions of JSON (jansson), the tokenizer and the
 * chat template: no sockets, no threads, no HTTP. docs/api.md lists every
 * parameter and how it maps.
 */
#ifndef PD_OPENAI_H
#define PD_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "chat_template.h"
#include "proto/pd.pb-c.h"
#include "engine/tokenizer.h"

#define PD_OAI_MAX_MESSAGES 4096 /* chat messages per request */
#define PD_OAI_MAX_STOP 16       /* stop strings (= the router's RT_MAX_STOP) */
#define PD_OAI_MAX_STOP_IDS 64   /* stop token ids (= RT_MAX_STOP_IDS) */
#define PD_OAI_COMPLETIONS_MAX_TOKENS 16 /* OpenAI's default for /v1/completions */

/* What the server serves: borrowed, constant while it runs. */
typedef struct {
    const pd_tok_t *tok;
    const pd_chat_t *chat;        /* kind PD_CHAT_NONE: no chat endpoint */
    const char *model;            /* the served name ("model") */
    uint32_t max_seq_len;         /* context length, tokens */
    uint32_t max_tokens_limit;    /* router.max_tokens_limit */
} pd_oai_t;

/* One parsed request. Strings point into root; free with pd_oai_req_clear. */
typedef struct {
    json_t *root;                 /* the parsed body */
    bool chat, stream, include_usage;
    const char *prompt;           /* borrowed from root; NULL when ids are given */
    int32_t *ids;                 /* (n_ids) prompt token ids (list prompt, or chat) */
    size_t n_ids;
    Pd__Sampling s;               /* has_* set for what the body gave */
    bool has_max_tokens;
    uint32_t max_tokens;          /* given, or the endpoint's default */
    const char *stop[PD_OAI_MAX_STOP];
    size_t n_stop;
    int32_t stop_ids[PD_OAI_MAX_STOP_IDS];
    size_t n_stop_ids;
    bool ignore_eos;
    uint32_t deadline_ms;         /* 0: the router's default */
} pd_oai_req_t;

/* Why a request is refused: the HTTP status (400, or 404 for an unknown
 * model), the parameter at fault ("" for the body as a whole) and a
 * message in OpenAI's words where it has them. */
typedef struct {
    unsigned status;
    char param[64];
    char msg[512];
} pd_oai_bad_t;

/* Parses body (len bytes) for the chat or the completions endpoint into q.
 * False and b on any problem: invalid JSON, an unknown or unsupported
 * parameter, a value out of range, a prompt over the context, a chat
 * without a template. Call pd_oai_req_clear(q) whatever the outcome. */
bool pd_oai_parse(const pd_oai_t *o, const char *body, size_t len, bool chat, pd_oai_req_t *q,
                  pd_oai_bad_t *b);
void pd_oai_req_clear(pd_oai_req_t *q);

/* The GenerateRequest for q (id left to the caller). g and s borrow from q:
 * send before clearing q. Always streamed, so a gone client is noticed
 * mid-generation. */
void pd_oai_generate(const pd_oai_req_t *q, Pd__GenerateRequest *g, Pd__Sampling *s);

/* ====== Results ====== */

/* The identity of one response: "cmpl-N" / "chatcmpl-N", its creation
 * time, its endpoint, whether streamed usage was asked for. */
typedef struct {
    char id[48];
    time_t created;
    bool chat, include_usage;
} pd_oai_resp_t;

void pd_oai_resp_init(pd_oai_resp_t *r, bool chat, uint64_t n, bool include_usage, time_t created);

/* How a generation ended: its text (len bytes), finish reason
 * (Pd__FinishReason), token counts; or, when code (a Pd__ErrorCode) is not
 * 0, the router's error and its message. */
typedef struct {
    const char *text;
    size_t len;
    int finish;
    uint32_t prompt_tokens, completion_tokens;
    int code;
    const char *err;
} pd_oai_result_t;

/* "stop", "length", ... for a Pd__FinishReason (FINISH_NONE reads "stop"). */
const char *pd_oai_finish_text(int finish);
/* The whole answer of a finished, non-streamed request. */
json_t *pd_oai_result_json(const pd_oai_t *o, const pd_oai_resp_t *r, const pd_oai_result_t *res);

/* A stream's progress: what has been said so far. */
typedef struct {
    bool sent_role;               /* chat: the assistant role chunk is out */
} pd_oai_stream_t;

/* Appends to events (a JSON array) the stream events for what arrived
 * since the last call: the role chunk first (chat), the new text (n bytes,
 * may be 0), and once end is not NULL the final chunk and the usage chunk
 * when asked for -- or, for an error, the error object in their place. The
 * caller writes each as "data: <json>" and, after the end, "data: [DONE]".
 * Returns 0 or PD_ENOMEM. */
int pd_oai_stream_step(const pd_oai_t *o, const pd_oai_resp_t *r, pd_oai_stream_t *st,
                       const char *text, size_t n, const pd_oai_result_t *end, json_t *events);

/* ====== Errors and the other endpoints ====== */

/* The HTTP status and OpenAI error code ("invalid_argument", ...) of a
 * router Pd__ErrorCode. */
unsigned pd_oai_status_of(int code, const char **ecode);
/* {"error": {"message", "type", "param", "code"}}; type from the status
 * (>= 500 "server_error", else "invalid_request_error"). */
json_t *pd_oai_error_json(unsigned status, const char *msg, const char *param, const char *code);
/* The error object for a router error (code, message) and its status. */
json_t *pd_oai_router_error_json(int code, const char *msg, unsigned *status);
/* GET /v1/models. */
json_t *pd_oai_models_json(const pd_oai_t *o, time_t created);

#endif
