/* httpc -- see httpc.h. */
#include "httpc.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/grow.h"

#define CHUNK_LINE_MAX 64

typedef enum { ST_CONNECT, ST_SEND, ST_HEADER, ST_BODY, ST_DONE } conn_state_t;
typedef enum { CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER } chunk_state_t;

struct pd_httpc_conn {
    int fd;
    conn_state_t state;
    char *req;                 /* (req_len) the request bytes */
    size_t req_len, req_sent;
    char hdr[PD_HTTPC_MAX_HEADER + 1];
    size_t hdr_len;
    int status;
    int chunked, sse;
    int64_t content_left;      /* -1: until EOF (or chunked) */
    chunk_state_t cst;
    char cline[CHUNK_LINE_MAX + 1];
    size_t cline_len;
    uint64_t chunk_left;
    char *line;                /* (line_len) the SSE line being assembled */
    size_t line_len, line_cap;
    char *body;                /* (body_len) kept non-SSE body */
    size_t body_len, body_cap;
    int stop;                  /* the callback asked to stop */
};

int pd_httpc_url_parse(const char *url, pd_httpc_url_t *u, pd_err_t *err)
{
    memset(u, 0, sizeof *u);
    if (url == NULL || strncasecmp(url, "http://", 7) != 0) {
        if (url && strncasecmp(url, "https://", 8) == 0)
            return pd_err_set(err, PD_EINVAL, "%s: https is not supported (use http://)", url);
        return pd_err_set(err, PD_EINVAL, "%s: not an http://HOST:PORT URL", url ? url : "(null)");
    }
    const char *p = url + 7, *host_end, *hp_end;
    const char *h0 = p;
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (host_end == NULL)
            return pd_err_set(err, PD_EINVAL, "%s: unterminated '[' in the IPv6 host", url);
        h0 = p + 1;
        p = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/?#");
        p = host_end;
    }
    size_t hlen = (size_t)(host_end - h0);
    if (hlen == 0 || hlen >= sizeof u->host)
        return pd_err_set(err, PD_EINVAL, "%s: %s host", url, hlen ? "too long a" : "no");
    memcpy(u->host, h0, hlen);
    for (size_t i = 0; i < hlen; i++)
        if ((unsigned char)u->host[i] <= ' ' || u->host[i] == '@')
            return pd_err_set(err, PD_EINVAL, "%s: bad character in the host", url);
    u->port = 80;
    if (*p == ':') {
        p++;
        char *end;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || errno || v == 0 || v > 65535 || (*end && *end != '/'))
            return pd_err_set(err, PD_EINVAL, "%s: the port is not an integer in [1, 65535]", url);
        u->port = (uint16_t)v;
        p = end;
    } else if (*p && *p != '/') {
        return pd_err_set(err, PD_EINVAL, "%s: unexpected '%c' after the host", url, *p);
    }
    hp_end = p;
    size_t plen = strlen(p);
    while (plen > 0 && p[plen - 1] == '/')
        plen--;
    if (plen >= sizeof u->path)
        return pd_err_set(err, PD_EINVAL, "%s: path too long", url);
    for (size_t i = 0; i < plen; i++)
        if ((unsigned char)p[i] <= ' ' || p[i] == '?' || p[i] == '#' || (unsigned char)p[i] >= 0x7f)
            return pd_err_set(err, PD_EINVAL, "%s: bad character in the path (no query or fragment)",
                              url);
    memcpy(u->path, p, plen);
    size_t hplen = (size_t)(hp_end - (url + 7));
    if (hplen >= sizeof u->hostport)
        return pd_err_set(err, PD_EINVAL, "%s: host too long", url);
    memcpy(u->hostport, url + 7, hplen);

    char port[8];
    snprintf(port, sizeof port, "%u", u->port);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
    int g = getaddrinfo(u->host, port, &hints, &res);
    if (g != 0 || res == NULL)
        return pd_err_set(err, PD_EIO, "%s: cannot resolve host '%s': %s", url, u->host,
                          gai_strerror(g));
    if (res->ai_addrlen > sizeof u->addr) {
        freeaddrinfo(res);
        return pd_err_set(err, PD_ERANGE, "%s: address too long", url);
    }
    memcpy(&u->addr, res->ai_addr, res->ai_addrlen);
    u->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

void pd_httpc_conn_free(pd_httpc_conn_t *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c->req);
    free(c->line);
    free(c->body);
    free(c);
}

pd_httpc_conn_t *pd_httpc_conn_new(const pd_httpc_url_t *u, const char *method, const char *path,
                                 const char *body, size_t body_len, const char *api_key,
                                 pd_err_t *err)
{
    if (api_key) {
        for (const char *k = api_key; *k; k++)
            if ((unsigned char)*k < 0x20 || *k == 0x7f) {
                pd_err_set(err, PD_EINVAL, "API key: control character at offset %zu",
                           (size_t)(k - api_key));
                return NULL;
            }
    }
    pd_httpc_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        pd_err_set(err, PD_ENOMEM, "out of memory");
        return NULL;
    }
    c->fd = -1;
    c->content_left = -1;
    const char *auth1 = api_key ? "Authorization: Bearer " : "", *auth2 = api_key ? "\r\n" : "";
    const char *key = api_key ? api_key : "";
    int n = snprintf(NULL, 0,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: pd-bench\r\nAccept: */*\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n%s%s%s"
                     "Connection: close\r\n\r\n",
                     method, path, u->hostport, body_len, auth1, key, auth2);
    if (n < 0 || body_len > SIZE_MAX - (size_t)n - 1)
        goto nomem;
    c->req = malloc((size_t)n + body_len + 1);
    if (c->req == NULL)
        goto nomem;
    snprintf(c->req, (size_t)n + 1,
             "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: pd-bench\r\nAccept: */*\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n%s%s%s"
             "Connection: close\r\n\r\n",
             method, path, u->hostport, body_len, auth1, key, auth2);
    if (body_len)
        memcpy(c->req + n, body, body_len);
    c->req_len = (size_t)n + body_len;
    c->fd = socket(u->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        pd_err_set(err, errno == EMFILE || errno == ENFILE ? PD_EFULL : PD_EIO, "socket: %s",
                   strerror(errno));
        goto fail;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (const struct sockaddr *)&u->addr, u->addr_len) == 0) {
        c->state = ST_SEND;
    } else if (errno == EINPROGRESS) {
        c->state = ST_CONNECT;
    } else {
        pd_err_set(err, PD_EIO, "connect to %s: %s", u->hostport, strerror(errno));
        goto fail;
    }
    return c;
nomem:
    pd_err_set(err, PD_ENOMEM, "out of memory");
fail:
    pd_httpc_conn_free(c);
    return NULL;
}

int pd_httpc_conn_fd(const pd_httpc_conn_t *c) { return c->fd; }

short pd_httpc_conn_events(const pd_httpc_conn_t *c)
{
    return c->state == ST_CONNECT || c->state == ST_SEND ? POLLOUT : POLLIN;
}

int pd_httpc_conn_connected(const pd_httpc_conn_t *c) { return c->state != ST_CONNECT; }

int pd_httpc_conn_status(const pd_httpc_conn_t *c) { return c->status; }

int pd_httpc_conn_is_sse(const pd_httpc_conn_t *c) { return c->sse; }

const char *pd_httpc_conn_body(const pd_httpc_conn_t *c, size_t *len)
{
    *len = c->body_len;
    return c->body ? c->body : "";
}

/* Appends n bytes to *buf (len, cap), at most max bytes in all; keeps a NUL. */
static int append(char **buf, size_t *len, size_t *cap, const char *p, size_t n, size_t max)
{
    if (n > max - *len)
        return PD_ERANGE;
    if (pd_grow((void **)buf, cap, *len + n + 1, 1, 256) != 0)
        return PD_ENOMEM;
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

/* Body bytes (de-chunked) go to the SSE splitter or the kept body. */
static int body_bytes(pd_httpc_conn_t *c, const char *p, size_t n, pd_httpc_data_fn fn, void *user,
                      pd_err_t *err)
{
    if (!c->sse) {
        int rc = append(&c->body, &c->body_len, &c->body_cap, p, n, PD_HTTPC_MAX_BODY);
        if (rc != 0)
            return pd_err_set(err, rc, "response body over %u bytes", PD_HTTPC_MAX_BODY);
        return 0;
    }
    while (n > 0 && !c->stop) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        int rc = append(&c->line, &c->line_len, &c->line_cap, p, take, PD_HTTPC_MAX_LINE);
        if (rc != 0)
            return pd_err_set(err, rc, "event-stream line over %u bytes", PD_HTTPC_MAX_LINE);
        if (nl == NULL)
            return 0;
        p += take + 1;
        n -= take + 1;
        size_t len = c->line_len;
        if (len > 0 && c->line[len - 1] == '\r')
            c->line[--len] = 0;
        if (len >= 5 && memcmp(c->line, "data:", 5) == 0) {
            const char *d = c->line + 5;
            size_t dl = len - 5;
            if (dl > 0 && *d == ' ')
                d++, dl--;
            if (fn(user, d, dl) != 0)
                c->stop = 1;
        }
        c->line_len = 0;
        if (c->line)
            c->line[0] = 0;
    }
    return 0;
}

/* Parses the status line and headers in c->hdr (hdr_len bytes, ends with CRLFCRLF). */
static int parse_header(pd_httpc_conn_t *c, pd_err_t *err)
{
    c->hdr[c->hdr_len] = 0;
    /* "HTTP/D.D NNN": digits checked one by one (sscanf's %d has undefined
     * behaviour on a number that does not fit, and the peer is hostile). */
    const char *h = c->hdr;
    if (strncmp(h, "HTTP/", 5) != 0 || !isdigit((unsigned char)h[5]) || h[6] != '.' ||
        !isdigit((unsigned char)h[7]) || h[8] != ' ' || !isdigit((unsigned char)h[9]) ||
        !isdigit((unsigned char)h[10]) || !isdigit((unsigned char)h[11]) || h[9] == '0' ||
        (h[12] != ' ' && h[12] != '\r'))
        return pd_err_set(err, PD_EFORMAT, "malformed HTTP status line: %.60s", c->hdr);
    c->status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    char *save = NULL;
    (void)strtok_r(c->hdr, "\r\n", &save); /* skips the status line */
    char *line;
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
        char *colon = strchr(line, ':');
        if (colon == NULL)
            continue;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (!strcasecmp(line, "transfer-encoding")) {
            if (strcasestr(v, "chunked"))
                c->chunked = 1;
        } else if (!strcasecmp(line, "content-length")) {
            char *end;
            errno = 0;
            long long l = strtoll(v, &end, 10);
            if (errno || end == v || l < 0)
                return pd_err_set(err, PD_EFORMAT, "bad Content-Length '%.30s'", v);
            c->content_left = l;
        } else if (!strcasecmp(line, "content-type")) {
            if (strncasecmp(v, "text/event-stream", 17) == 0)
                c->sse = 1;
        }
    }
    if (c->chunked)
        c->content_left = -1;
    if (c->status != 200)
        c->sse = 0;
    return 0;
}

/* Feeds n body bytes as they came off the socket. Returns 0, 1 (complete) or < 0. */
static int feed_body(pd_httpc_conn_t *c, const char *p, size_t n, pd_httpc_data_fn fn, void *user,
                     pd_err_t *err)
{
    if (!c->chunked) {
        if (c->content_left >= 0 && (uint64_t)n > (uint64_t)c->content_left)
            n = (size_t)c->content_left; /* ignore bytes past Content-Length */
        int rc = body_bytes(c, p, n, fn, user, err);
        if (rc < 0)
            return rc;
        if (c->content_left >= 0) {
            c->content_left -= (int64_t)n;
            if (c->content_left == 0)
                return 1;
        }
        return c->stop ? 1 : 0;
    }
    while (n > 0) {
        if (c->stop)
            return 1;
        switch (c->cst) {
        case CH_SIZE:
        case CH_TRAILER: {
            char ch = *p++;
            n--;
            if (ch != '\n') {
                if (c->cline_len == CHUNK_LINE_MAX)
                    return pd_err_set(err, PD_EFORMAT, "chunk-size line over %d bytes",
                                      CHUNK_LINE_MAX);
                c->cline[c->cline_len++] = ch;
                continue;
            }
            if (c->cline_len > 0 && c->cline[c->cline_len - 1] == '\r')
                c->cline_len--;
            c->cline[c->cline_len] = 0;
            size_t ll = c->cline_len;
            c->cline_len = 0;
            if (c->cst == CH_TRAILER) {
                if (ll == 0)
                    return 1; /* end of the chunked body */
                continue;
            }
            char *end;
            errno = 0;
            unsigned long long sz = strtoull(c->cline, &end, 16);
            if (errno || end == c->cline || (*end && *end != ';' && *end != ' '))
                return pd_err_set(err, PD_EFORMAT, "malformed chunk size '%.20s'", c->cline);
            if (sz == 0) {
                c->cst = CH_TRAILER;
            } else {
                c->chunk_left = sz;
                c->cst = CH_DATA;
            }
            break;
        }
        case CH_DATA: {
            size_t take = (uint64_t)n < c->chunk_left ? n : (size_t)c->chunk_left;
            int rc = body_bytes(c, p, take, fn, user, err);
            if (rc < 0)
                return rc;
            p += take;
            n -= take;
            c->chunk_left -= take;
            if (c->chunk_left == 0)
                c->cst = CH_DATA_END;
            break;
        }
        case CH_DATA_END: {
            char ch = *p++;
            n--;
            if (ch == '\n')
                c->cst = CH_SIZE;
            else if (ch != '\r')
                return pd_err_set(err, PD_EFORMAT, "chunk data not followed by CRLF");
            break;
        }
        }
    }
    return c->stop ? 1 : 0;
}

int pd_httpc_conn_io(pd_httpc_conn_t *c, short revents, pd_httpc_data_fn fn, void *user,
                    pd_err_t *err)
{
    if (c->state == ST_DONE)
        return 1;
    if (c->state == ST_CONNECT) {
        if (!(revents & (POLLOUT | POLLERR | POLLHUP)))
            return 0;
        int e = 0;
        socklen_t el = sizeof e;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
            e = errno;
        if (e != 0)
            return pd_err_set(err, PD_EIO, "connect: %s", strerror(e));
        c->state = ST_SEND;
    }
    if (c->state == ST_SEND) {
        if (!(revents & (POLLOUT | POLLERR | POLLHUP)))
            return 0;
        while (c->req_sent < c->req_len) {
            ssize_t w = send(c->fd, c->req + c->req_sent, c->req_len - c->req_sent, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return 0;
                if (errno == EINTR)
                    continue;
                return pd_err_set(err, PD_EIO, "send: %s", strerror(errno));
            }
            c->req_sent += (size_t)w;
        }
        c->state = ST_HEADER;
        return 0;
    }
    if (!(revents & (POLLIN | POLLERR | POLLHUP)))
        return 0;
    char buf[16384];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return pd_err_set(err, PD_EIO, "recv: %s", strerror(errno));
        }
        if (r == 0) {
            if (c->state == ST_HEADER)
                return pd_err_set(err, PD_EIO,
                                  "the server closed the connection before the response headers");
            if (c->chunked || c->content_left > 0)
                return pd_err_set(err, PD_EIO, "the server closed the connection mid-response");
            if (c->sse && c->line_len > 0) {
                int rc = body_bytes(c, "\n", 1, fn, user, err); /* last unterminated line */
                if (rc < 0)
                    return rc;
            }
            c->state = ST_DONE;
            return 1;
        }
        const char *p = buf;
        size_t n = (size_t)r;
        if (c->state == ST_HEADER) {
            /* Copy byte by byte up to the blank line (bounded). */
            while (n > 0 && c->state == ST_HEADER) {
                if (c->hdr_len == PD_HTTPC_MAX_HEADER)
                    return pd_err_set(err, PD_ERANGE, "response headers over %d bytes",
                                      PD_HTTPC_MAX_HEADER);
                c->hdr[c->hdr_len++] = *p++;
                n--;
                if (c->hdr_len >= 4 && memcmp(c->hdr + c->hdr_len - 4, "\r\n\r\n", 4) == 0) {
                    int rc = parse_header(c, err);
                    if (rc < 0)
                        return rc;
                    if (c->status >= 100 && c->status < 200) { /* 100 Continue: skip */
                        c->hdr_len = 0;
                        c->chunked = c->sse = 0;
                        c->content_left = -1;
                        continue;
                    }
                    c->state = ST_BODY;
                    if (!c->chunked && c->content_left == 0) {
                        c->state = ST_DONE;
                        return 1;
                    }
                }
            }
        }
        if (c->state == ST_BODY && n > 0) {
            int rc = feed_body(c, p, n, fn, user, err);
            if (rc != 0) {
                if (rc > 0)
                    c->state = ST_DONE;
                return rc;
            }
        }
    }
}
