/* test_addr.c -- host validation and the advertised KV endpoint (addr.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "runtime/addr.h"

static bool host(const char *s) { return pd_addr_is_host(s, strlen(s), NULL, 0); }

static void test_hosts(void **state)
{
    (void)state;
    const char *good[] = { "decode-1", "router", "10.0.0.7", "a.b.c", "pd-decode-3.pd.svc",
                           "[::1]", "[fe80::1]", "[2001:db8::7]", "127.0.0.1", "0.0.0.0",
                           "x1", "A-Z" };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!host(good[i]))
            fail_msg("refused %s", good[i]);
    char label64[80], long254[300];
    memset(label64, 'a', 64);
    label64[64] = '\0';
    for (int i = 0; i < 254; i++)
        long254[i] = i % 2 ? '.' : 'a';
    long254[253] = 'a';
    long254[254] = '\0';
    const char *bad[] = { "", "-a", "a-", "a..b", ".a", "a.", "a b", "a:b", "a/b", "a\n",
                          "10.0.0.256", "1.2.3", "999.1.1.1", "::1", "[::1", "[zz::1]",
                          "[1:2:3:4:5:6:7:8:9]", "a_b", "a;rm", "é", label64, long254, "[]" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (host(bad[i]))
            fail_msg("accepted '%s'", bad[i]);
    char why[160];
    assert_false(pd_addr_is_host("a\0b", 3, why, sizeof why)); /* an embedded NUL */
    assert_non_null(strstr(why, "letters, digits"));
}

static void test_wildcards(void **state)
{
    (void)state;
    assert_true(pd_addr_is_wildcard("*", 1));
    assert_true(pd_addr_is_wildcard("0.0.0.0", 7));
    assert_true(pd_addr_is_wildcard("[::]", 4));
    assert_true(pd_addr_is_wildcard("::", 2));
    assert_false(pd_addr_is_wildcard("127.0.0.1", 9));
    assert_false(pd_addr_is_wildcard("[::1]", 5));
    assert_false(pd_addr_is_wildcard("decode", 6));
}

static bool adv_ok(const char *s) { return pd_addr_check_advertise(s, strlen(s), NULL, 0); }
static bool ann_ok(const char *s) { return pd_addr_check_announced(s, NULL, 0); }

static void test_advertise_values(void **state)
{
    (void)state;
    assert_true(adv_ok(""));
    assert_true(adv_ok("decode-1"));
    assert_true(adv_ok("decode-1:7001"));
    assert_true(adv_ok("10.0.0.7:65535"));
    assert_true(adv_ok("[2001:db8::7]:7000"));
    assert_true(adv_ok("[2001:db8::7]"));
    assert_false(adv_ok("0.0.0.0"));
    assert_false(adv_ok("*"));
    assert_false(adv_ok("[::]:7000"));
    assert_false(adv_ok("decode:0"));
    assert_false(adv_ok("decode:65536"));
    assert_false(adv_ok("decode:"));
    assert_false(adv_ok("decode:7a"));
    assert_false(adv_ok("decode:123456"));
    assert_false(adv_ok("tcp://decode:7000"));
    assert_false(adv_ok("a:1:2"));
    assert_false(adv_ok("[::1]x"));

    assert_true(ann_ok("tcp://10.0.0.7:7000"));
    assert_true(ann_ok("tcp://decode-2.pd:7000"));
    assert_true(ann_ok("tcp://[::1]:7000"));
    assert_true(ann_ok("ipc:///tmp/kv"));
    assert_true(ann_ok("inproc://kv"));
    assert_false(ann_ok("tcp://0.0.0.0:7000"));
    assert_false(ann_ok("tcp://*:7000"));
    assert_false(ann_ok("tcp://10.0.0.7"));
    assert_false(ann_ok("tcp://10.0.0.7:0"));
    assert_false(ann_ok("tcp://a b:7000"));
    assert_false(ann_ok("udp://10.0.0.7:7000"));
    assert_false(ann_ok("ipc://"));
    assert_false(ann_ok(""));
}

static void test_advertise(void **state)
{
    (void)state;
    char out[PD_ADDR_EP_MAX];
    const char *how;
    pd_err_t err = { 0 };
    /* A concrete bind is announced as it is. */
    assert_int_equal(pd_addr_advertise("tcp://10.1.2.3:7000", "", "tcp://10.1.2.1:5556", out,
                                       sizeof out, &how, &err), 0);
    assert_string_equal(out, "tcp://10.1.2.3:7000");
    assert_string_equal(how, "bound");
    /* The configured host, with the bound port or its own. */
    assert_int_equal(pd_addr_advertise("tcp://0.0.0.0:7000", "decode-3", "tcp://router:5556", out,
                                       sizeof out, &how, &err), 0);
    assert_string_equal(out, "tcp://decode-3:7000");
    assert_string_equal(how, "config");
    assert_int_equal(pd_addr_advertise("tcp://0.0.0.0:7000", "[2001:db8::7]:17000",
                                       "tcp://router:5556", out, sizeof out, &how, &err), 0);
    assert_string_equal(out, "tcp://[2001:db8::7]:17000");
    /* A wildcard bind with a router on loopback: the route to it starts
     * at 127.0.0.1, which is what a prefill worker on this host reaches. */
    assert_int_equal(pd_addr_advertise("tcp://0.0.0.0:41234", "", "tcp://127.0.0.1:5556", out,
                                       sizeof out, &how, &err), 0);
    assert_string_equal(out, "tcp://127.0.0.1:41234");
    assert_string_equal(how, "route");
    /* An unresolvable router: an interface's address or the host name,
     * never the wildcard. */
    assert_int_equal(pd_addr_advertise("tcp://0.0.0.0:7000", "", "tcp://no-such-host.invalid:5556",
                                       out, sizeof out, &how, &err), 0);
    assert_null(strstr(out, "0.0.0.0"));
    assert_true(strcmp(how, "interface") == 0 || strcmp(how, "hostname") == 0);
    assert_true(ann_ok(out));
    /* Non-tcp endpoints pass through; an advertise for them is an error. */
    assert_int_equal(pd_addr_advertise("ipc:///tmp/kv", "", "tcp://127.0.0.1:5556", out,
                                       sizeof out, &how, &err), 0);
    assert_string_equal(out, "ipc:///tmp/kv");
    assert_int_equal(pd_addr_advertise("ipc:///tmp/kv", "decode", "tcp://127.0.0.1:5556", out,
                                       sizeof out, &how, &err), PD_EINVAL);
    /* A bad value is refused with the key named (config.c checks it first;
     * this is the second line of defence). */
    assert_int_equal(pd_addr_advertise("tcp://0.0.0.0:7000", "0.0.0.0", "tcp://r:1", out,
                                       sizeof out, &how, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "decode.kv_advertise"));
    /* Too small an output buffer is an error, never a truncated endpoint. */
    char tiny[12];
    assert_int_equal(pd_addr_advertise("tcp://0.0.0.0:7000", "decode-3", "tcp://r:1", tiny,
                                       sizeof tiny, &how, &err), PD_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hosts),
        cmocka_unit_test(test_wildcards),
        cmocka_unit_test(test_advertise_values),
        cmocka_unit_test(test_advertise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
