/* addr.h -- host names and the address a decode worker advertises.
 *
 * A decode worker binds its KV ingress (decode.kv_endpoint) and announces
 * an endpoint at registration that prefill workers connect to. What it
 * bound is useless to a peer on another host when the host is a wildcard
 * (tcp://0.0.0.0:7000), so it announces the advertised endpoint instead:
 *
 *   1. decode.kv_advertise "HOST" or "HOST:PORT" (the port defaults to the
 *      bound one: set it when a NAT or a published port maps it);
 *   2. else, when the bound host is a wildcard (0.0.0.0, *, [::]): the local
 *      address the kernel would use to reach the router (the source address
 *      of the route to worker.router's host: on a multi-homed machine, the
 *      interface on the cluster's network), else the first non-loopback
 *      IPv4 address of an interface that is up, else the host name;
 *   3. else what was bound (tcp://10.0.0.7:7000, ipc://..., inproc://...).
 *
 * Hosts are hostile input (a config value, a Register message): a host is
 * an IPv4 dotted quad, a bracketed IPv6 address, or a DNS name (letters,
 * digits and '-' in dot-separated labels of 1..63 characters, 253 at most).
 * No other byte passes.
 */
#ifndef PD_ADDR_H
#define PD_ADDR_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"

/* Longest host name we accept (RFC 1035), and an endpoint we build. */
#define PD_ADDR_HOST_MAX 253
#define PD_ADDR_EP_MAX 280

/* True when s[0..len) is a host as above. why (may be NULL) says what is
 * wrong otherwise. */
bool pd_addr_is_host(const char *s, size_t len, char *why, size_t why_cap);

/* True for a wildcard bind host: "*", "0.0.0.0", "[::]", "::". */
bool pd_addr_is_wildcard(const char *s, size_t len);

/* Checks a decode.kv_advertise value: "" or HOST or HOST:PORT, port
 * 1..65535, HOST not a wildcard. why says what is wrong. */
bool pd_addr_check_advertise(const char *s, size_t len, char *why, size_t why_cap);

/* Checks an endpoint a worker announced (Register.kv_endpoint): tcp://HOST:PORT
 * with a host as above that is not a wildcard and a port in 1..65535, or
 * ipc://PATH / inproc://NAME (one machine). why says what is wrong. */
bool pd_addr_check_announced(const char *ep, char *why, size_t why_cap);

/* The endpoint to announce for the bound endpoint `bound` (rules 1-3 above),
 * into out[cap]. advertise is decode.kv_advertise, router worker.router.
 * how (may be NULL) is set to "config", "route", "interface", "hostname"
 * or "bound". Returns 0, or PD_EINVAL naming what could not be used. */
int pd_addr_advertise(const char *bound, const char *advertise, const char *router, char *out,
                      size_t cap, const char **how, pd_err_t *err);

#endif
