/* addr.c -- see addr.h */
#include "runtime/addr.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ADDR_V6_MAX 45 /* longest textual IPv6 address (INET6_ADDRSTRLEN - 1) */
#define ADDR_LABEL_MAX 63

static void say(char *why, size_t cap, const char *msg)
{
    if (why && cap)
        snprintf(why, cap, "%s", msg);
}

static bool is_ldh(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

/* A bracketed IPv6 address: "[" 2..45 chars of hex, ':' and '.' "]". */
static bool is_v6(const char *s, size_t len, char *why, size_t cap)
{
    char buf[ADDR_V6_MAX + 1];
    struct in6_addr a;
    if (len < 4 || s[len - 1] != ']' || len - 2 > ADDR_V6_MAX) {
        say(why, cap, "an IPv6 host is written [ADDRESS]");
        return false;
    }
    for (size_t i = 1; i + 1 < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
              c == ':' || c == '.')) {
            say(why, cap, "invalid character in an IPv6 address");
            return false;
        }
    }
    memcpy(buf, s + 1, len - 2);
    buf[len - 2] = '\0';
    if (inet_pton(AF_INET6, buf, &a) != 1) {
        say(why, cap, "not an IPv6 address");
        return false;
    }
    return true;
}

bool pd_addr_is_host(const char *s, size_t len, char *why, size_t cap)
{
    if (len == 0) {
        say(why, cap, "empty host");
        return false;
    }
    if (s[0] == '[')
        return is_v6(s, len, why, cap);
    if (len > PD_ADDR_HOST_MAX) {
        say(why, cap, "host longer than 253 characters");
        return false;
    }
    bool numeric = true;
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            if (label == 0 || label > ADDR_LABEL_MAX || s[i - 1] == '-' || s[i - label] == '-') {
                say(why, cap, "a host name is dot-separated labels of 1..63 letters, digits "
                              "or '-' (not at either end)");
                return false;
            }
            label = 0;
            continue;
        }
        if (!is_ldh(s[i])) {
            say(why, cap, "a host has only letters, digits, '-' and '.' (IPv6: [ADDRESS])");
            return false;
        }
        numeric &= s[i] >= '0' && s[i] <= '9';
        label++;
    }
    if (numeric) { /* all digits and dots: it must be a real IPv4 address */
        char buf[16];
        struct in_addr a;
        if (len >= sizeof buf) {
            say(why, cap, "not an IPv4 address");
            return false;
        }
        memcpy(buf, s, len);
        buf[len] = '\0';
        if (inet_pton(AF_INET, buf, &a) != 1) {
            say(why, cap, "not an IPv4 address");
            return false;
        }
    }
    return true;
}

bool pd_addr_is_wildcard(const char *s, size_t len)
{
    char buf[ADDR_V6_MAX + 1];
    if (len == 1 && s[0] == '*')
        return true;
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        s++;
        len -= 2;
    }
    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, buf, &a4) == 1)
        return a4.s_addr == 0;
    if (inet_pton(AF_INET6, buf, &a6) == 1)
        return memcmp(&a6, &in6addr_any, sizeof a6) == 0;
    return false;
}

/* Splits "HOST[:PORT]" (HOST may be "[v6]"): *hlen = host length, *port =
 * the port or 0 when absent. False when the port is not 1..65535 digits. */
static bool split(const char *s, size_t len, size_t *hlen, unsigned *port)
{
    const char *colon = NULL;
    if (len && s[0] == '[') {
        const char *end = memchr(s, ']', len);
        if (end && (size_t)(end - s) + 1 < len && end[1] == ':')
            colon = end + 1;
    } else {
        colon = memchr(s, ':', len);
    }
    *port = 0;
    *hlen = colon ? (size_t)(colon - s) : len;
    if (colon == NULL)
        return true;
    size_t plen = len - *hlen - 1;
    if (plen == 0 || plen > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < plen; i++) {
        if (colon[1 + i] < '0' || colon[1 + i] > '9')
            return false;
        v = v * 10 + (unsigned)(colon[1 + i] - '0');
    }
    if (v == 0 || v > 65535)
        return false;
    *port = v;
    return true;
}

bool pd_addr_check_advertise(const char *s, size_t len, char *why, size_t cap)
{
    size_t hlen;
    unsigned port;
    if (len == 0)
        return true;
    if (!split(s, len, &hlen, &port)) {
        say(why, cap, "expected HOST or HOST:PORT with a port in 1..65535");
        return false;
    }
    if (!pd_addr_is_host(s, hlen, why, cap))
        return false;
    if (pd_addr_is_wildcard(s, hlen)) {
        say(why, cap, "a wildcard address cannot be reached; give this host's name or address");
        return false;
    }
    return true;
}

bool pd_addr_check_announced(const char *ep, char *why, size_t cap)
{
    size_t len = strlen(ep), hlen;
    unsigned port;
    if ((strncmp(ep, "ipc://", 6) == 0 && len > 6) || (strncmp(ep, "inproc://", 9) == 0 && len > 9))
        return true;
    if (strncmp(ep, "tcp://", 6) != 0) {
        say(why, cap, "expected tcp://HOST:PORT, ipc://PATH or inproc://NAME");
        return false;
    }
    if (!split(ep + 6, len - 6, &hlen, &port) || port == 0) {
        say(why, cap, "expected tcp://HOST:PORT with a port in 1..65535");
        return false;
    }
    if (!pd_addr_is_host(ep + 6, hlen, why, cap))
        return false;
    if (pd_addr_is_wildcard(ep + 6, hlen)) {
        say(why, cap, "a wildcard address cannot be reached (decode.kv_advertise)");
        return false;
    }
    return true;
}

/* ====== Finding this host's address ====== */

static int numeric_host(const struct sockaddr *sa, socklen_t sl, char *out, size_t cap)
{
    char h[NI_MAXHOST];
    if (getnameinfo(sa, sl, h, sizeof h, NULL, 0, NI_NUMERICHOST) != 0)
        return -1;
    int n = snprintf(out, cap, sa->sa_family == AF_INET6 ? "[%s]" : "%s", h);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* The source address the kernel picks to reach router's host (a UDP
 * connect sends nothing). 0 or -1. */
static int route_source(const char *router, char *out, size_t cap)
{
    size_t hlen;
    unsigned port;
    if (strncmp(router, "tcp://", 6) != 0)
        return -1;
    const char *h = router + 6;
    if (!split(h, strlen(h), &hlen, &port) || hlen == 0 || hlen > PD_ADDR_HOST_MAX)
        return -1;
    char host[PD_ADDR_HOST_MAX + 1];
    if (h[0] == '[') { /* getaddrinfo wants the address without brackets */
        memcpy(host, h + 1, hlen - 2);
        host[hlen - 2] = '\0';
    } else {
        memcpy(host, h, hlen);
        host[hlen] = '\0';
    }
    struct addrinfo hints = { .ai_socktype = SOCK_DGRAM }, *res = NULL;
    if (getaddrinfo(host, port ? NULL : "9", &hints, &res) != 0)
        return -1;
    int rc = -1;
    for (struct addrinfo *ai = res; ai && rc != 0; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_DGRAM, 0);
        if (fd < 0)
            continue;
        if (ai->ai_family == AF_INET)
            ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons(port ? port : 9);
        else if (ai->ai_family == AF_INET6)
            ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port = htons(port ? port : 9);
        struct sockaddr_storage me = { 0 };
        socklen_t ml = sizeof me;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
            getsockname(fd, (struct sockaddr *)&me, &ml) == 0)
            rc = numeric_host((struct sockaddr *)&me, ml, out, cap);
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

/* The first non-loopback IPv4 address of an interface that is up. */
static int first_interface(char *out, size_t cap)
{
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0)
        return -1;
    int rc = -1;
    for (struct ifaddrs *i = ifs; i && rc != 0; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP) &&
            !(i->ifa_flags & IFF_LOOPBACK))
            rc = numeric_host(i->ifa_addr, sizeof(struct sockaddr_in), out, cap);
    freeifaddrs(ifs);
    return rc;
}

static int copy_ep(char *out, size_t cap, const char *ep, pd_err_t *err)
{
    int n = snprintf(out, cap, "%s", ep);
    if (n < 0 || (size_t)n >= cap)
        return pd_err_set(err, PD_EINVAL, "endpoint too long: %s", ep);
    return 0;
}

int pd_addr_advertise(const char *bound, const char *advertise, const char *router, char *out,
                      size_t cap, const char **how, pd_err_t *err)
{
    const char *dummy = NULL;
    how = how ? how : &dummy;
    *how = "bound";
    size_t blen = strlen(bound), hlen, alen = strlen(advertise);
    unsigned port, aport;
    char why[160];
    if (strncmp(bound, "tcp://", 6) != 0) {
        if (alen)
            return pd_err_set(err, PD_EINVAL, "decode.kv_advertise: %s is not a tcp endpoint",
                              bound);
        return copy_ep(out, cap, bound, err);
    }
    if (!split(bound + 6, blen - 6, &hlen, &port) || port == 0)
        return pd_err_set(err, PD_EINVAL, "bound endpoint %s has no port", bound);
    char host[PD_ADDR_HOST_MAX + 3];
    if (alen) {
        if (!pd_addr_check_advertise(advertise, alen, why, sizeof why))
            return pd_err_set(err, PD_EINVAL, "decode.kv_advertise: %s, got '%s'", why, advertise);
        size_t ah;
        split(advertise, alen, &ah, &aport);
        snprintf(host, sizeof host, "%.*s", (int)ah, advertise);
        port = aport ? aport : port;
        *how = "config";
    } else if (pd_addr_is_wildcard(bound + 6, hlen)) {
        if (route_source(router, host, sizeof host) == 0)
            *how = "route";
        else if (first_interface(host, sizeof host) == 0)
            *how = "interface";
        else if (gethostname(host, sizeof host) == 0 &&
                 (host[sizeof host - 1] = '\0', pd_addr_is_host(host, strlen(host), NULL, 0)))
            *how = "hostname";
        else
            return pd_err_set(err, PD_EINVAL,
                              "decode.kv_endpoint %s binds a wildcard and this host's address "
                              "cannot be found: set decode.kv_advertise",
                              bound);
    } else {
        return copy_ep(out, cap, bound, err);
    }
    int n = snprintf(out, cap, "tcp://%s:%u", host, port);
    if (n < 0 || (size_t)n >= cap)
        return pd_err_set(err, PD_EINVAL, "advertised endpoint too long");
    return 0;
}
