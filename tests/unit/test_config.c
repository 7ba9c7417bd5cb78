/* test_config.c -- the YAML config: defaults, a full file, every error class
 * (with its exact line), flags, lists, dump round trip, shipped configs.
 * Runs from the repo root (configs/ is read relative to it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "runtime/config.h"

/* A valid Z85 key (40 chars from the Z85 alphabet). */
#define KEY_A "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
#define KEY_B "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"

static int load(pd_config_t *c, const char *yaml, pd_err_t *err)
{
    memset(err, 0, sizeof *err);
    return pd_config_load_string(c, yaml, strlen(yaml), "t.yaml", err);
}

/* Loads yaml over defaults, expects failure with exactly msg. */
static void expect_error(const char *yaml, const char *msg)
{
    pd_config_t c;
    pd_err_t err;
    pd_config_default(&c);
    int rc = load(&c, yaml, &err);
    if (rc == 0)
        fail_msg("expected error '%s', but the load succeeded", msg);
    assert_int_equal(rc, PD_EINVAL);
    assert_string_equal(err.msg, msg);
}

static void expect_ok(pd_config_t *c, const char *yaml)
{
    pd_err_t err;
    pd_config_default(c);
    int rc = load(c, yaml, &err);
    if (rc != 0)
        fail_msg("unexpected error: %s", err.msg);
}

/* ====== Defaults ====== */

static void test_defaults(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    assert_string_equal(c.model.path, "");
    assert_int_equal(c.model.max_seq_len, 0);
    assert_int_equal(c.model.threads, 1);
    assert_int_equal(c.model.n_end_tokens, 0);
    assert_string_equal(c.router.client_endpoint, "tcp://127.0.0.1:5555");
    assert_string_equal(c.router.worker_endpoint, "tcp://127.0.0.1:5556");
    assert_int_equal(c.router.max_queue, 1024);
    assert_int_equal(c.router.max_inflight, 256);
    assert_int_equal(c.router.request_timeout_ms, 600000);
    assert_int_equal(c.router.max_tokens_limit, 4096);
    assert_int_equal(c.router.heartbeat_ms, 500);
    assert_int_equal(c.router.liveness, 4);
    assert_int_equal(c.router.stream_stall_ms, 30000);
    assert_int_equal(c.router.client_heartbeat_ms, 1000);
    assert_int_equal(c.router.client_liveness, 5);
    assert_int_equal(c.prefill.max_batch_tokens, 2048);
    assert_int_equal(c.prefill.max_batch_size, 16);
    assert_int_equal(c.prefill.wait_ms, 2);
    assert_int_equal(c.prefill.max_inflight_kv, 64);
    assert_int_equal(c.decode.max_batch_size, 32);
    assert_int_equal(c.decode.wait_ms, 1);
    assert_string_equal(c.decode.kv_endpoint, "tcp://127.0.0.1:0");
    assert_string_equal(c.worker.router, "tcp://127.0.0.1:5556");
    assert_int_equal(c.worker.heartbeat_ms, 500);
    assert_int_equal(c.worker.liveness, 4);
    assert_int_equal(c.worker.drain_timeout_ms, 30000);
    assert_int_equal(c.worker.lease_ms, 10000);
    assert_int_equal(c.worker.compute_timeout_ms, 60000);
    assert_int_equal(c.prefill.chunk_tokens, 32);
    assert_int_equal(c.kv.block_size, 16);
    assert_int_equal(c.kv.num_blocks, 0);
    assert_int_equal(c.kv.memory_mb, 512);
    assert_string_equal(c.kv.dtype, "f32");
    assert_int_equal(c.kv.load_failure, PD_KV_LOAD_RECOMPUTE);
    assert_int_equal(c.net.hwm, 10000);
    assert_int_equal(c.net.max_msg_bytes, 16u << 20);
    assert_int_equal(c.net.linger_ms, 100);
    assert_int_equal(c.net.handshake_ms, 5000);
    assert_false(c.security.curve);
    assert_string_equal(c.security.server_public_key, "");
    assert_int_equal(c.security.n_allowed_keys, 0);
    assert_string_equal(c.http.listen, "");
    assert_int_equal(c.http.n_api_keys, 0);
    assert_int_equal(c.http.max_connections, 256);
    assert_int_equal(c.http.max_body_bytes, 1u << 20);
    assert_int_equal(c.http.idle_timeout_s, 30);
    assert_string_equal(c.http.chat_template, "auto");
    assert_string_equal(c.log.level, "info");
    assert_string_equal(c.log.dir, "run");
    assert_int_equal(pd_config_validate(&c, &err), 0);
}

/* Empty text, comments only, an empty document, empty sections: defaults. */
static void test_empty_is_defaults(void **state)
{
    (void)state;
    const char *texts[] = { "", "# nothing here\n\n", "---\n", "---\n...\n", "model:\nkv: ~\n" };
    pd_config_t def, c;
    pd_config_default(&def);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        expect_ok(&c, texts[i]);
        assert_memory_equal(&c, &def, sizeof c);
    }
}

/* ====== A full valid file ====== */

static const char *g_full =
    "model:\n"
    "  path: /models/tiny.gguf\n"
    "  name: tiny\n"
    "  max_seq_len: 2048\n"
    "  end_tokens: [2, 32000]\n"
    "  threads: 2\n"
    "router:\n"
    "  client_endpoint: tcp://0.0.0.0:6000\n"
    "  worker_endpoint: ipc:///tmp/pd-workers\n"
    "  max_queue: 10\n"
    "  max_inflight: 5\n"
    "  request_timeout_ms: 1000\n"
    "  max_tokens_limit: 128\n"
    "  heartbeat_ms: 100\n"
    "  liveness: 3\n"
    "  stream_stall_ms: 2000\n"
    "  client_heartbeat_ms: 300\n"
    "  client_liveness: 7\n"
    "prefill:\n"
    "  max_batch_tokens: 512\n"
    "  max_batch_size: 4\n"
    "  wait_ms: 0\n"
    "  max_inflight_kv: 8\n"
    "decode:\n"
    "  max_batch_size: 8\n"
    "  wait_ms: 3\n"
    "  kv_endpoint: tcp://10.0.0.2:7000\n"
    "worker:\n"
    "  router: tcp://router.local:6001\n"
    "  heartbeat_ms: 250\n"
    "  liveness: 5\n"
    "  drain_timeout_ms: 0\n"
    "  lease_ms: 500\n"
    "kv:\n"
    "  block_size: 32\n"
    "  num_blocks: 100\n"
    "  memory_mb: 64\n"
    "  dtype: f32\n"
    "  load_failure: fail\n"
    "net:\n"
    "  hwm: 50\n"
    "  max_msg_bytes: 1048576\n"
    "  linger_ms: 0\n"
    "  handshake_ms: 700\n"
    "security:\n"
    "  curve: yes\n"
    "  server_public_key: '" KEY_A "'\n"
    "  server_secret_key: '" KEY_B "'\n"
    "  client_public_key: '" KEY_B "'\n"
    "  client_secret_key: '" KEY_A "'\n"
    "  allowed_keys:\n"
    "    - '" KEY_A "'\n"
    "    - '" KEY_B "'\n"
    "http:\n"
    "  listen: \"[::1]:8080\"\n"
    "  api_keys: [sk-one, sk-two]\n"
    "  max_connections: 9\n"
    "  max_body_bytes: 4096\n"
    "  idle_timeout_s: 7\n"
    "  chat_template: llama3\n"
    "log:\n"
    "  level: debug\n"
    "  dir: /var/log/pd\n";

static void test_full_file(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    expect_ok(&c, g_full);
    assert_string_equal(c.model.path, "/models/tiny.gguf");
    assert_string_equal(c.model.name, "tiny");
    assert_int_equal(c.model.max_seq_len, 2048);
    assert_int_equal(c.model.n_end_tokens, 2);
    assert_int_equal(c.model.end_tokens[0], 2);
    assert_int_equal(c.model.end_tokens[1], 32000);
    assert_int_equal(c.model.threads, 2);
    assert_string_equal(c.router.client_endpoint, "tcp://0.0.0.0:6000");
    assert_string_equal(c.router.worker_endpoint, "ipc:///tmp/pd-workers");
    assert_int_equal(c.router.max_queue, 10);
    assert_int_equal(c.router.max_inflight, 5);
    assert_int_equal(c.router.request_timeout_ms, 1000);
    assert_int_equal(c.router.max_tokens_limit, 128);
    assert_int_equal(c.router.heartbeat_ms, 100);
    assert_int_equal(c.router.liveness, 3);
    assert_int_equal(c.router.stream_stall_ms, 2000);
    assert_int_equal(c.router.client_heartbeat_ms, 300);
    assert_int_equal(c.router.client_liveness, 7);
    assert_int_equal(c.prefill.max_batch_tokens, 512);
    assert_int_equal(c.prefill.max_batch_size, 4);
    assert_int_equal(c.prefill.wait_ms, 0);
    assert_int_equal(c.prefill.max_inflight_kv, 8);
    assert_int_equal(c.decode.max_batch_size, 8);
    assert_int_equal(c.decode.wait_ms, 3);
    assert_string_equal(c.decode.kv_endpoint, "tcp://10.0.0.2:7000");
    assert_string_equal(c.worker.router, "tcp://router.local:6001");
    assert_int_equal(c.worker.heartbeat_ms, 250);
    assert_int_equal(c.worker.liveness, 5);
    assert_int_equal(c.worker.drain_timeout_ms, 0);
    assert_int_equal(c.worker.lease_ms, 500);
    assert_int_equal(c.kv.block_size, 32);
    assert_int_equal(c.kv.num_blocks, 100);
    assert_int_equal(c.kv.memory_mb, 64);
    assert_string_equal(c.kv.dtype, "f32");
    assert_int_equal(c.kv.load_failure, PD_KV_LOAD_FAIL);
    assert_int_equal(c.net.hwm, 50);
    assert_int_equal(c.net.max_msg_bytes, 1048576);
    assert_int_equal(c.net.linger_ms, 0);
    assert_int_equal(c.net.handshake_ms, 700);
    assert_true(c.security.curve);
    assert_string_equal(c.security.server_public_key, KEY_A);
    assert_string_equal(c.security.server_secret_key, KEY_B);
    assert_string_equal(c.security.client_public_key, KEY_B);
    assert_string_equal(c.security.client_secret_key, KEY_A);
    assert_int_equal(c.security.n_allowed_keys, 2);
    assert_string_equal(c.security.allowed_keys[0], KEY_A);
    assert_string_equal(c.security.allowed_keys[1], KEY_B);
    assert_string_equal(c.http.listen, "[::1]:8080");
    assert_int_equal(c.http.n_api_keys, 2);
    assert_string_equal(c.http.api_keys[0], "sk-one");
    assert_string_equal(c.http.api_keys[1], "sk-two");
    assert_int_equal(c.http.max_connections, 9);
    assert_int_equal(c.http.max_body_bytes, 4096);
    assert_int_equal(c.http.idle_timeout_s, 7);
    assert_string_equal(c.http.chat_template, "llama3");
    assert_string_equal(c.log.level, "debug");
    assert_string_equal(c.log.dir, "/var/log/pd");
    assert_int_equal(pd_config_validate(&c, &err), 0);
}

/* A second file loads over the first: keys it sets win, the rest stay. */
static void test_layered_loads(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err;
    expect_ok(&c, "prefill:\n  wait_ms: 7\nmodel:\n  end_tokens: [1, 2, 3]\n");
    assert_int_equal(load(&c, "prefill:\n  max_batch_size: 3\nmodel:\n  end_tokens: [9]\n", &err),
                     0);
    assert_int_equal(c.prefill.wait_ms, 7);
    assert_int_equal(c.prefill.max_batch_size, 3);
    assert_int_equal(c.model.n_end_tokens, 1); /* a list is replaced, not appended to */
    assert_int_equal(c.model.end_tokens[0], 9);
    assert_int_equal(c.model.end_tokens[1], 0);
}

/* ====== Error classes, each with its exact line ====== */

static void test_unknown_key(void **state)
{
    (void)state;
    expect_error("# comment\nprefill:\n  max_batch_tokns: 5\n",
                 "t.yaml:3: unknown key 'prefill.max_batch_tokns' (known: max_batch_tokens, "
                 "max_batch_size, wait_ms, max_inflight_kv, chunk_tokens)");
    expect_error("log:\n  level: info\n\n  colour: red\n",
                 "t.yaml:4: unknown key 'log.colour' (known: level, dir)");
}

static void test_unknown_section(void **state)
{
    (void)state;
    expect_error("kv:\n  block_size: 16\nprefil:\n  wait_ms: 1\n",
                 "t.yaml:3: unknown section 'prefil' (known: model, router, prefill, decode, "
                 "worker, kv, net, security, http, log)");
}

static void test_bad_integers(void **state)
{
    (void)state;
    expect_error("prefill:\n  wait_ms: 1\n  max_batch_tokens: abc\n",
                 "t.yaml:3: prefill.max_batch_tokens: expected an integer in [1, 1048576], got 'abc'");
    expect_error("router:\n  client_heartbeat_ms: 5\n",
                 "t.yaml:2: router.client_heartbeat_ms: expected an integer in [10, 60000], got '5'");
    expect_error("router:\n  client_liveness: 0\n",
                 "t.yaml:2: router.client_liveness: expected an integer in [1, 100], got '0'");
    const char *bad[] = { "-1", "0", "1048577", "99999999999999999999999", "18446744073709551616",
                          "0x10", "1.5", "1e3", "010", "+5", "5 ", "\"\"", "''", "~", "1_000" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char yaml[128], msg[256];
        const char *shown = bad[i];
        if (strcmp(bad[i], "\"\"") == 0 || strcmp(bad[i], "''") == 0 || strcmp(bad[i], "~") == 0)
            shown = "";
        else if (strcmp(bad[i], "5 ") == 0)
            shown = "5"; /* YAML strips trailing spaces of plain scalars: then it is valid */
        snprintf(yaml, sizeof yaml, "\n\nprefill:\n  max_batch_tokens: %s\n", bad[i]);
        snprintf(msg, sizeof msg,
                 "t.yaml:4: prefill.max_batch_tokens: expected an integer in [1, 1048576], got '%s'",
                 shown);
        if (strcmp(bad[i], "5 ") == 0) {
            pd_config_t c;
            expect_ok(&c, yaml);
            assert_int_equal(c.prefill.max_batch_tokens, 5);
            continue;
        }
        expect_error(yaml, msg);
    }
    /* Range edges and a 64-bit key. */
    pd_config_t c;
    expect_ok(&c, "prefill:\n  max_batch_tokens: 1048576\nnet:\n  max_msg_bytes: 4294967296\n");
    assert_int_equal(c.prefill.max_batch_tokens, 1048576);
    assert_true(c.net.max_msg_bytes == 4294967296ull);
    expect_error("net:\n  max_msg_bytes: 4294967297\n",
                 "t.yaml:2: net.max_msg_bytes: expected an integer in [1024, 4294967296], got "
                 "'4294967297'");
    /* A quoted number is still a number (the key decides the type). */
    expect_ok(&c, "prefill:\n  wait_ms: \"9\"\n");
    assert_int_equal(c.prefill.wait_ms, 9);
}

static void test_long_string(void **state)
{
    (void)state;
    char yaml[600], msg[256];
    char s[300];
    memset(s, 'a', 299);
    s[299] = '\0';
    snprintf(yaml, sizeof yaml, "model:\n  threads: 1\n  path: %s\n", s);
    snprintf(msg, sizeof msg,
             "t.yaml:3: model.path: expected a string of at most 255 bytes, got 299 bytes");
    expect_error(yaml, msg);
    /* 255 bytes fit exactly. */
    pd_config_t c;
    s[255] = '\0';
    snprintf(yaml, sizeof yaml, "model:\n  path: %s\n", s);
    expect_ok(&c, yaml);
    assert_int_equal(strlen(c.model.path), 255);
    /* kv.dtype and log.level are short enums: a long value is just unknown. */
    expect_error("log:\n  level: verbose\n",
                 "t.yaml:2: log.level: expected one of debug, info, warn, error, got 'verbose'");
}

static void test_duplicates(void **state)
{
    (void)state;
    expect_error("kv:\n  block_size: 16\n  memory_mb: 1\n  block_size: 32\n",
                 "t.yaml:4: duplicate key 'kv.block_size' (first at line 2)");
    expect_error("kv:\n  block_size: 16\nlog:\n  dir: x\nkv:\n  memory_mb: 1\n",
                 "t.yaml:5: duplicate section 'kv' (first at line 1)");
}

static void test_anchors_aliases_tags(void **state)
{
    (void)state;
    expect_error("kv:\n  block_size: &b 16\n", "t.yaml:2: YAML anchors and aliases are not allowed");
    expect_error("kv: &k\n  block_size: 16\n", "t.yaml:1: YAML anchors and aliases are not allowed");
    expect_error("prefill:\n  max_batch_size: 1\ndecode:\n  max_batch_size: *x\n",
                 "t.yaml:4: YAML anchors and aliases are not allowed");
    /* The classic billion laughs: refused at its first anchor. */
    expect_error("model:\n  name: x\n  end_tokens: &a [1, 1]\n"
                 "  path: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n",
                 "t.yaml:3: YAML anchors and aliases are not allowed");
    expect_error("\nkv:\n  block_size: !!int 16\n", "t.yaml:3: YAML tags are not allowed");
}

static void test_booleans(void **state)
{
    (void)state;
    const char *yes[] = { "true", "yes", "True", "YES" };
    const char *no[] = { "false", "no", "False", "NO" };
    pd_config_t c;
    for (int i = 0; i < 4; i++) {
        char yaml[64];
        snprintf(yaml, sizeof yaml, "security:\n  curve: %s\n", yes[i]);
        expect_ok(&c, yaml);
        assert_true(c.security.curve);
        snprintf(yaml, sizeof yaml, "security:\n  curve: %s\n", no[i]);
        expect_ok(&c, yaml);
        assert_false(c.security.curve);
    }
    expect_error("security:\n  curve: 1\n",
                 "t.yaml:2: security.curve: expected true or false (or yes/no), got '1'");
    expect_error("security:\n  curve: on\n",
                 "t.yaml:2: security.curve: expected true or false (or yes/no), got 'on'");
}

static void test_enums(void **state)
{
    (void)state;
    pd_config_t c;
    expect_ok(&c, "kv:\n  load_failure: fail\nlog:\n  level: error\n");
    assert_int_equal(c.kv.load_failure, PD_KV_LOAD_FAIL);
    assert_string_equal(c.log.level, "error");
    expect_ok(&c, "kv:\n  load_failure: recompute\n");
    assert_int_equal(c.kv.load_failure, PD_KV_LOAD_RECOMPUTE);
    expect_error("kv:\n  load_failure: retry\n",
                 "t.yaml:2: kv.load_failure: expected one of recompute, fail, got 'retry'");
    /* Prefix caching and routing (router/prefix.c): on and kv_aware by default. */
    pd_config_default(&c);
    assert_true(c.kv.prefix_caching);
    assert_int_equal(c.router.routing, PD_ROUTING_KV_AWARE);
    expect_ok(&c, "kv:\n  prefix_caching: false\nrouter:\n  routing: round_robin\n");
    assert_false(c.kv.prefix_caching);
    assert_int_equal(c.router.routing, PD_ROUTING_ROUND_ROBIN);
    expect_ok(&c, "router:\n  routing: least_loaded\n");
    assert_int_equal(c.router.routing, PD_ROUTING_LEAST_LOADED);
    expect_error("router:\n  routing: random\n",
                 "t.yaml:2: router.routing: expected one of kv_aware, round_robin, least_loaded, "
                 "got 'random'");
    expect_ok(&c, "kv:\n  block_size: 16\n  dtype: f16\n");
    assert_string_equal(c.kv.dtype, "f16");
    expect_error("kv:\n  block_size: 16\n  dtype: bf16\n",
                 "t.yaml:3: kv.dtype: expected one of f32, f16, got 'bf16'");
    expect_error("log:\n  level: INFO\n",
                 "t.yaml:2: log.level: expected one of debug, info, warn, error, got 'INFO'");
    expect_ok(&c, "http:\n  chat_template: chatml\n");
    assert_string_equal(c.http.chat_template, "chatml");
    expect_error("http:\n  chat_template: jinja\n",
                 "t.yaml:2: http.chat_template: expected one of auto, chatml, llama2, llama3, "
                 "mistral, zephyr, gemma, phi3, got 'jinja'");
}

static void test_z85_keys(void **state)
{
    (void)state;
    expect_error("security:\n  server_public_key: 'abc'\n",
                 "t.yaml:2: security.server_public_key: expected a 40-character Z85 key, got 3 "
                 "characters");
    /* 40 chars, but '~' is not in the Z85 alphabet. */
    expect_error("security:\n  client_secret_key: 'Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hI~'\n",
                 "t.yaml:2: security.client_secret_key: invalid Z85 character '~' at position 39");
    expect_error("security:\n  allowed_keys:\n    - '" KEY_A "'\n    - 'short'\n",
                 "t.yaml:4: security.allowed_keys: item 1: expected a 40-character Z85 key, got 5 "
                 "characters");
    expect_error("security:\n  allowed_keys: ['']\n",
                 "t.yaml:2: security.allowed_keys: item 0: expected a 40-character Z85 key, got ''");
    pd_config_t c;
    expect_ok(&c, "security:\n  server_public_key: ''\n");
    assert_string_equal(c.security.server_public_key, "");
}

static void test_strings_checked(void **state)
{
    (void)state;
    expect_error("router:\n  client_endpoint: 127.0.0.1:5555\n",
                 "t.yaml:2: router.client_endpoint: expected a ZeroMQ endpoint (tcp://HOST:PORT, "
                 "ipc://PATH or inproc://NAME), got '127.0.0.1:5555'");
    expect_error("worker:\n  router: tcp://host:99999\n",
                 "t.yaml:2: worker.router: expected a ZeroMQ endpoint (tcp://HOST:PORT, "
                 "ipc://PATH or inproc://NAME), got 'tcp://host:99999'");
    expect_error("http:\n  listen: '8000'\n",
                 "t.yaml:2: http.listen: expected HOST:PORT (or \"\" for off), got '8000'");
    /* decode.kv_advertise: a real host (addr.h), never a wildcard. */
    expect_error("decode:\n  kv_advertise: 0.0.0.0\n",
                 "t.yaml:2: decode.kv_advertise: a wildcard address cannot be reached; give this "
                 "host's name or address, got '0.0.0.0'");
    expect_error("decode:\n  kv_advertise: tcp://10.0.0.7:7000\n",
                 "t.yaml:2: decode.kv_advertise: expected HOST or HOST:PORT with a port in "
                 "1..65535, got 'tcp://10.0.0.7:7000'");
    expect_error("decode:\n  kv_advertise: 'decode-1:0'\n",
                 "t.yaml:2: decode.kv_advertise: expected HOST or HOST:PORT with a port in "
                 "1..65535, got 'decode-1:0'");
    expect_error("decode:\n  kv_advertise: 'a b'\n",
                 "t.yaml:2: decode.kv_advertise: a host has only letters, digits, '-' and '.' "
                 "(IPv6: [ADDRESS]), got 'a b'");
    expect_error("decode:\n  kv_advertise: 10.0.0.256\n",
                 "t.yaml:2: decode.kv_advertise: not an IPv4 address, got '10.0.0.256'");
    /* A control character smuggled through a double-quoted escape. */
    expect_error("model:\n  name: \"a\\tb\"\n",
                 "t.yaml:2: model.name: expected UTF-8 text without control characters, got 'a?b'");
    expect_error("model:\n  name: \"a\\0b\"\n",
                 "t.yaml:2: model.name: expected UTF-8 text without control characters, got 'a?b'");
    expect_error("http:\n  api_keys: ['sk one']\n",
                 "t.yaml:2: http.api_keys: item 0: expected a non-empty key of printable "
                 "characters without spaces or commas");
    pd_config_t c;
    expect_ok(&c, "model:\n  name: \"caf\\u00e9 \\\"x\\\"\"\n");
    assert_string_equal(c.model.name, "caf\xc3\xa9 \"x\"");
}

/* Strings must be valid UTF-8 (checked for flags too: the YAML reader
 * checks the file), and a long bad value is shown cut with "...". */
static void test_utf8_and_excerpt(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    const char *good[] = { "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "" };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(pd_config_set(&c, "model.name", good[i], &err), 0);
        assert_string_equal(c.model.name, good[i]);
    }
    const char *bad[] = {
        "\xc3",             /* truncated 2-byte sequence */
        "\xc0\xaf",         /* overlong '/' */
        "\xe0\x80\xaf",     /* overlong 3-byte */
        "\xed\xa0\x80",     /* UTF-16 surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xf8\x88\x80\x80", /* 5-byte lead */
        "\xe2\x28\xa1",     /* bad continuation */
        "a\x7f",            /* DEL */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(pd_config_set(&c, "model.name", bad[i], &err), PD_EINVAL);
        assert_non_null(strstr(err.msg, "model.name: expected UTF-8 text without control characters"));
    }
    assert_string_equal(c.model.name, "");

    expect_error("log:\n  level: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                 "t.yaml:2: log.level: expected one of debug, info, warn, error, got "
                 "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'");
}

static void test_lists(void **state)
{
    (void)state;
    pd_config_t c;
    expect_ok(&c, "model:\n  end_tokens:\n    - 1\n    - 2\n    - 3\n");
    assert_int_equal(c.model.n_end_tokens, 3);
    assert_int_equal(c.model.end_tokens[2], 3);
    expect_ok(&c, "model:\n  end_tokens: []\n");
    assert_int_equal(c.model.n_end_tokens, 0);
    expect_ok(&c, "model:\n  end_tokens:\n");
    assert_int_equal(c.model.n_end_tokens, 0);
    /* 16 items fit, the 17th is refused on its own line. */
    char yaml[512] = "model:\n  end_tokens:\n";
    for (int i = 0; i < 17; i++) {
        char line[32];
        snprintf(line, sizeof line, "    - %d\n", i);
        strcat(yaml, line);
    }
    expect_error(yaml, "t.yaml:19: model.end_tokens: at most 16 items allowed");
    *strrchr(yaml, '-') = '#'; /* comment out the 17th */
    expect_ok(&c, yaml);
    assert_int_equal(c.model.n_end_tokens, 16);
    assert_int_equal(c.model.end_tokens[15], 15);

    expect_error("model:\n  end_tokens: [1, -2]\n",
                 "t.yaml:2: model.end_tokens: item 1: expected an integer in [0, 2147483647], got "
                 "'-2'");
    expect_error("model:\n  end_tokens: 2\n",
                 "t.yaml:2: model.end_tokens: expected a list like [a, b], got a scalar");
    expect_error("model:\n  end_tokens:\n    - [1, 2]\n",
                 "t.yaml:3: model.end_tokens: list items must be scalars, got a list");
    expect_error("model:\n  threads: [1]\n",
                 "t.yaml:2: model.threads: expected a single value, got a list");
    expect_error("model:\n  threads:\n    a: 1\n",
                 "t.yaml:3: model.threads: expected a single value, got a mapping");
}

static void test_structure_errors(void **state)
{
    (void)state;
    expect_error("- model\n- kv\n", "t.yaml:1: the top level must be a mapping of sections, got a list");
    expect_error("hello\n", "t.yaml:1: the top level must be a mapping of sections, got a scalar");
    expect_error("model: 3\n", "t.yaml:1: section 'model' must be a mapping of keys, got a scalar");
    expect_error("kv:\n  block_size: 16\n---\nkv:\n  block_size: 8\n",
                 "t.yaml:3: only one YAML document is allowed");
    expect_error("? [a]\n: 1\n", "t.yaml:1: expected a section name, got a list");
    expect_error("kv:\n  block_size: 16\n  ? {a: 1}\n  : 2\n",
                 "t.yaml:3: kv: expected a key name, got a mapping");
}

static void test_syntax_error(void **state)
{
    (void)state;
    expect_error("kv:\n  block_size: 16\n  memory_mb: 1: 2\n",
                 "t.yaml:3:15: YAML syntax error: mapping values are not allowed in this context");
    pd_config_t c;
    pd_err_t err;
    pd_config_default(&c);
    assert_int_equal(load(&c, "kv:\n  dtype: \"f32\n", &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "t.yaml:3:1: YAML syntax error: found unexpected end of stream"));
    /* Invalid UTF-8 is a reader error, reported by byte offset. */
    assert_int_equal(load(&c, "kv:\n  dtype: \xff\n", &err), PD_EINVAL);
    assert_string_equal(err.msg, "t.yaml: byte 13: invalid leading UTF-8 octet");
}

/* A failed load changes nothing, even keys set before the error. */
static void test_failed_load_changes_nothing(void **state)
{
    (void)state;
    pd_config_t c, before;
    pd_err_t err;
    pd_config_default(&c);
    memcpy(&before, &c, sizeof c);
    assert_int_equal(load(&c, "kv:\n  block_size: 64\n  memory_mb: x\n", &err), PD_EINVAL);
    assert_memory_equal(&c, &before, sizeof c);
}

static void test_size_limit(void **state)
{
    (void)state;
    size_t n = PD_CFG_MAX_FILE_BYTES;
    char *big = malloc(n + 2);
    assert_non_null(big);
    memset(big, '\n', n + 1);
    big[0] = '#';
    big[n + 1] = '\0';
    pd_config_t c;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    assert_int_equal(pd_config_load_string(&c, big, n, "big.yaml", &err), 0);
    assert_int_equal(pd_config_load_string(&c, big, n + 1, "big.yaml", &err), PD_EINVAL);
    assert_string_equal(err.msg, "big.yaml: config is 1048577 bytes, more than the 1048576 allowed");

    char path[] = "/tmp/test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, big, n + 1), (ssize_t)(n + 1));
    close(fd);
    assert_int_equal(pd_config_load_file(&c, path, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "file is larger than 1048576 bytes"));
    unlink(path);
    free(big);
}

static void test_load_file_errors(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    assert_int_equal(pd_config_load_file(&c, "/nonexistent/x.yaml", &err), PD_EIO);
    assert_string_equal(err.msg, "/nonexistent/x.yaml: cannot open: No such file or directory");
    assert_int_equal(pd_config_load_file(&c, "/tmp", &err), PD_EIO);
    assert_string_equal(err.msg, "/tmp: not a regular file");

    char path[] = "/tmp/test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "kv:\n  block_size: 8\n  bogus: 1\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(pd_config_load_file(&c, path, &err), PD_EINVAL);
    char want[256];
    snprintf(want, sizeof want,
             "%s:3: unknown key 'kv.bogus' (known: block_size, num_blocks, memory_mb, dtype, "
             "load_failure, prefix_caching)",
             path);
    assert_string_equal(err.msg, want);
    unlink(path);
}

/* ====== Flags ====== */

static void test_set(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    assert_int_equal(pd_config_set(&c, "kv.block_size", "32", &err), 0);
    assert_int_equal(c.kv.block_size, 32);
    assert_int_equal(pd_config_set(&c, "security.curve", "yes", &err), 0);
    assert_true(c.security.curve);
    assert_int_equal(pd_config_set(&c, "kv.load_failure", "fail", &err), 0);
    assert_int_equal(c.kv.load_failure, PD_KV_LOAD_FAIL);
    assert_int_equal(pd_config_set(&c, "http.listen", "", &err), 0);
    assert_string_equal(c.http.listen, "");

    assert_int_equal(pd_config_set(&c, "prefill.max_batch_tokens", "abc", &err), PD_EINVAL);
    assert_string_equal(err.msg,
                        "prefill.max_batch_tokens: expected an integer in [1, 1048576], got 'abc'");
    assert_int_equal(c.prefill.max_batch_tokens, 2048);
    assert_int_equal(pd_config_set(&c, "prefill.max_batch_tokns", "1", &err), PD_EINVAL);
    assert_string_equal(err.msg, "unknown key 'prefill.max_batch_tokns' (known: max_batch_tokens, "
                                 "max_batch_size, wait_ms, max_inflight_kv, chunk_tokens)");
    assert_int_equal(pd_config_set(&c, "blocks", "1", &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "unknown key 'blocks' (expected SECTION.KEY; sections: model,"));
    assert_int_equal(pd_config_set(&c, "kvv.block_size", "1", &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "unknown key 'kvv.block_size'"));
    char longv[400];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    assert_int_equal(pd_config_set(&c, "log.dir", longv, &err), PD_EINVAL);
    assert_string_equal(err.msg, "log.dir: expected a string of at most 255 bytes, got 399 bytes");
}

static void test_set_lists(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    assert_int_equal(pd_config_set(&c, "model.end_tokens", "1, 2,3", &err), 0);
    assert_int_equal(c.model.n_end_tokens, 3);
    assert_int_equal(c.model.end_tokens[0], 1);
    assert_int_equal(c.model.end_tokens[1], 2);
    assert_int_equal(c.model.end_tokens[2], 3);
    assert_int_equal(pd_config_set(&c, "model.end_tokens", "7", &err), 0);
    assert_int_equal(c.model.n_end_tokens, 1);
    assert_int_equal(c.model.end_tokens[1], 0);
    assert_int_equal(pd_config_set(&c, "model.end_tokens", "", &err), 0);
    assert_int_equal(c.model.n_end_tokens, 0);
    assert_int_equal(pd_config_set(&c, "model.end_tokens", "1,,2", &err), PD_EINVAL);
    assert_string_equal(err.msg,
                        "model.end_tokens: item 1: expected an integer in [0, 2147483647], got ''");
    assert_int_equal(pd_config_set(&c, "model.end_tokens",
                                   "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", &err),
                     PD_EINVAL);
    assert_string_equal(err.msg, "model.end_tokens: at most 16 items allowed");
    assert_int_equal(c.model.n_end_tokens, 0);
    assert_int_equal(pd_config_set(&c, "http.api_keys", "sk-a,sk-b", &err), 0);
    assert_int_equal(c.http.n_api_keys, 2);
    assert_string_equal(c.http.api_keys[1], "sk-b");
    assert_int_equal(pd_config_set(&c, "security.allowed_keys", KEY_A "," KEY_B, &err), 0);
    assert_int_equal(c.security.n_allowed_keys, 2);
    assert_string_equal(c.security.allowed_keys[1], KEY_B);
}

/* ====== Validation ====== */

static void test_validate(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    const uint32_t good[] = { 1, 2, 16, 1024 };
    for (int i = 0; i < 4; i++) {
        pd_config_default(&c);
        c.kv.block_size = good[i];
        assert_int_equal(pd_config_validate(&c, &err), 0);
    }
    pd_config_default(&c);
    c.kv.block_size = 24;
    assert_int_equal(pd_config_validate(&c, &err), PD_EINVAL);
    assert_string_equal(err.msg, "kv.block_size: must be a power of two in [1, 1024], got 24");
    pd_config_default(&c);
    c.kv.block_size = 0;
    assert_int_equal(pd_config_validate(&c, &err), PD_EINVAL);
    pd_config_default(&c);
    c.kv.memory_mb = 0;
    assert_int_equal(pd_config_validate(&c, &err), PD_EINVAL);
    assert_string_equal(err.msg, "kv: set kv.num_blocks or kv.memory_mb (both are 0, so no KV blocks)");
    c.kv.num_blocks = 10;
    assert_int_equal(pd_config_validate(&c, &err), 0);
    pd_config_default(&c);
    c.security.curve = true;
    assert_int_equal(pd_config_validate(&c, &err), PD_EINVAL);
    assert_string_equal(err.msg, "security.server_public_key: required when security.curve is true");
    snprintf(c.security.server_public_key, sizeof c.security.server_public_key, "%s", KEY_A);
    assert_int_equal(pd_config_validate(&c, &err), 0);
    snprintf(c.security.client_secret_key, sizeof c.security.client_secret_key, "%s", KEY_B);
    assert_int_equal(pd_config_validate(&c, &err), PD_EINVAL);
    assert_string_equal(err.msg,
                        "security.client_public_key: required with security.client_secret_key");
    c.security.client_secret_key[0] = '\0';
    c.security.server_public_key[0] = '\0';
    snprintf(c.security.server_secret_key, sizeof c.security.server_secret_key, "%s", KEY_B);
    assert_int_equal(pd_config_validate(&c, &err), PD_EINVAL);
    assert_string_equal(err.msg,
                        "security.server_public_key: required with security.server_secret_key");
    pd_config_default(&c);
    c.prefill.max_batch_tokens = 0;
    assert_int_equal(pd_config_validate(&c, &err), PD_EINVAL);
    assert_string_equal(err.msg, "prefill.max_batch_tokens: must be at least 1");
    pd_config_default(&c);
    c.decode.max_batch_size = 0;
    assert_int_equal(pd_config_validate(&c, &err), PD_EINVAL);
    assert_string_equal(err.msg, "decode.max_batch_size: must be at least 1");
}

/* ====== Dump ====== */

static void test_write_round_trip(void **state)
{
    (void)state;
    pd_config_t c, back;
    pd_err_t err = { 0 };
    expect_ok(&c, g_full);
    assert_int_equal(pd_config_set(&c, "log.dir", "C:\\logs \"x\" caf\xc3\xa9", &err), 0);
    assert_int_equal(pd_config_set(&c, "model.name", "#not a comment: [x]", &err), 0);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(pd_config_write(&c, f, false, &err), 0);
    fclose(f);
    pd_config_default(&back);
    int rc = pd_config_load_string(&back, text, len, "dump", &err);
    if (rc)
        fail_msg("%s\n%s", err.msg, text);
    assert_memory_equal(&c, &back, sizeof c);
    free(text);

    /* A redacted dump hides secrets and refuses to load. */
    f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(pd_config_write(&c, f, true, &err), 0);
    fclose(f);
    assert_null(strstr(text, KEY_B "\"\n  client_public_key"));
    assert_null(strstr(text, "sk-one"));
    assert_non_null(strstr(text, "server_secret_key: \"<redacted>\""));
    assert_non_null(strstr(text, "server_public_key: \"" KEY_A "\""));
    pd_config_default(&back);
    assert_int_equal(pd_config_load_string(&back, text, len, "dump", &err), PD_EINVAL);
    free(text);
}

/* ====== Shipped configs ====== */

static void test_shipped_local(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    int rc = pd_config_load_file(&c, "configs/local.yaml", &err);
    if (rc)
        fail_msg("%s", err.msg);
    assert_int_equal(pd_config_validate(&c, &err), 0);
    assert_string_equal(c.router.client_endpoint, "tcp://127.0.0.1:5555");
    assert_string_equal(c.router.worker_endpoint, "tcp://127.0.0.1:5556");
    assert_string_equal(c.worker.router, "tcp://127.0.0.1:5556");
    assert_string_equal(c.decode.kv_endpoint, "tcp://127.0.0.1:0");
    assert_int_equal(c.prefill.max_batch_tokens, 2048);
    assert_int_equal(c.prefill.max_batch_size, 16);
    assert_int_equal(c.prefill.wait_ms, 2);
    assert_int_equal(c.decode.max_batch_size, 32);
    assert_int_equal(c.kv.block_size, 16);
    assert_int_equal(c.kv.memory_mb, 512);
    assert_string_equal(c.http.listen, "127.0.0.1:8000");
    assert_string_equal(c.log.dir, "run");
}

/* example-full.yaml sets every key to its default, so apart from model.path
 * it must equal the built-in defaults: the file and the code agree. */
/* The image's config (deploy/config.yaml): wildcard binds, the router by
 * its service name, the make run model under /models. */
static void test_shipped_deploy(void **state)
{
    (void)state;
    pd_config_t c;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    int rc = pd_config_load_file(&c, "deploy/config.yaml", &err);
    if (rc)
        fail_msg("%s", err.msg);
    assert_int_equal(pd_config_validate(&c, &err), 0);
    assert_string_equal(c.model.path, "/models/llama-110M-f32.gguf");
    assert_string_equal(c.router.client_endpoint, "tcp://0.0.0.0:5555");
    assert_string_equal(c.worker.router, "tcp://router:5556");
    assert_string_equal(c.decode.kv_endpoint, "tcp://0.0.0.0:7000");
    assert_string_equal(c.decode.kv_advertise, "");
    assert_string_equal(c.http.listen, "0.0.0.0:8000");
}

static void test_shipped_example_full(void **state)
{
    (void)state;
    pd_config_t c, def;
    pd_err_t err = { 0 };
    pd_config_default(&c);
    int rc = pd_config_load_file(&c, "configs/example-full.yaml", &err);
    if (rc)
        fail_msg("%s", err.msg);
    assert_int_equal(pd_config_validate(&c, &err), 0);
    pd_config_default(&def);
    memcpy(def.model.path, c.model.path, sizeof def.model.path);
    assert_memory_equal(&c, &def, sizeof c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_empty_is_defaults),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_layered_loads),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_unknown_section),
        cmocka_unit_test(test_bad_integers),
        cmocka_unit_test(test_long_string),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_anchors_aliases_tags),
        cmocka_unit_test(test_booleans),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_z85_keys),
        cmocka_unit_test(test_strings_checked),
        cmocka_unit_test(test_utf8_and_excerpt),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_structure_errors),
        cmocka_unit_test(test_syntax_error),
        cmocka_unit_test(test_failed_load_changes_nothing),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_set_lists),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_write_round_trip),
        cmocka_unit_test(test_shipped_local),
        cmocka_unit_test(test_shipped_deploy),
        cmocka_unit_test(test_shipped_example_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
