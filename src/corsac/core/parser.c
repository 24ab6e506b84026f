/* parser.c - strict HTTP/1.1 request-head parser and chunked decoder.
 *
 * Owns: the byte-level grammar of RFC 9112 requests.  Lines are located with
 * memchr (fast) and then every byte is checked against a class table, so a
 * rejection always has a name.  The head is re-parsed from the start when
 * more bytes arrive; heads are small and usually arrive in one read, so that
 * costs less than carrying resumable state through every field. */
#include "parser.h"

#include <string.h>

/* RFC 9110 token characters */
static const unsigned char tchar[256] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,1,0,1,1,1,1,1,0,0,1,1,0,1,1,0,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,
    0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,0,0,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,1,0,1,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
};
/* request-target: visible ASCII, no fragment */
static const unsigned char target_char[256] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,1,1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
};
/* field-value: HTAB, SP, VCHAR, obs-text */
static const unsigned char value_char[256] = {
    0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
};
/* uri-host and port characters (reg-name, IP-literal, port) */
static const unsigned char host_char[256] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,1,0,0,1,1,1,1,1,1,1,1,1,1,1,0,1,1,1,1,1,1,1,1,1,1,1,1,0,1,0,0,
    0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,1,0,1,
    0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,0,0,1,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
};
/* quoted-string text */
static const unsigned char qdtext[256] = {
    0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    1,1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
};

#define FAIL(st, why) do { req->status = (st); req->error = (why); return CS_PARSE_ERROR; } while (0)

static int lower_eq(const char *s, size_t n, const char *lit, size_t litn)
{
    if (n != litn)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z')
            c |= 0x20;
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}
#define LIT_EQ(s, n, lit) lower_eq((s), (n), lit, sizeof(lit) - 1)

static int is_ows(unsigned char c) { return c == ' ' || c == '\t'; }

/* Parse "HTTP/d.d" exactly.  0 ok, else the status to fail with. */
static int parse_version(const unsigned char *v, size_t n, int *minor)
{
    if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' ||
        v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9')
        return 400;
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return 505;
    *minor = v[7] - '0';
    return 0;
}

static int valid_host(const char *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!host_char[(unsigned char)h[i]])
            return 0;
    return 1;
}

/* Classify and split the request-target; 0 on success. */
static int parse_target(cs_request *req)
{
    const char *t = req->target;
    size_t n = req->target_len;
    int connect = req->method_len == 7 && memcmp(req->method, "CONNECT", 7) == 0;

    if (connect) {
        /* authority-form: host:port, nothing else */
        const char *colon = memchr(t, ':', n);
        if (t[0] == '/' || !colon || colon == t + n - 1 || !valid_host(t, n))
            return -1;
        req->authority = 1;
        req->host = t;
        req->host_len = n;
        req->path = t;
        req->path_len = 0;
        return 0;
    }
    if (t[0] == '*') {
        if (n != 1 || !(req->method_len == 7 && memcmp(req->method, "OPTIONS", 7) == 0))
            return -1;
        req->asterisk = 1;
        req->path = t;
        req->path_len = 1;
        return 0;
    }
    const char *p = t;
    if (t[0] != '/') {
        size_t skip;
        if (n > 7 && LIT_EQ(t, 7, "http://"))
            skip = 7;
        else if (n > 8 && LIT_EQ(t, 8, "https://"))
            skip = 8;
        else
            return -1;
        const char *auth = t + skip, *e = t + n;
        const char *q = auth;
        while (q < e && *q != '/' && *q != '?')
            q++;
        if (q == auth || memchr(auth, '@', (size_t)(q - auth)) || !valid_host(auth, (size_t)(q - auth)))
            return -1;
        req->absolute = 1;
        req->host = auth;
        req->host_len = (size_t)(q - auth);
        p = q;
    }
    const char *e = t + n;
    const char *qm = memchr(p, '?', (size_t)(e - p));
    req->path = p;
    req->path_len = (size_t)((qm ? qm : e) - p);
    if (qm) {
        req->query = qm + 1;
        req->query_len = (size_t)(e - qm - 1);
    }
    return 0;
}

/* Connection: comma-separated tokens, case-insensitive. */
static void parse_connection(const char *v, size_t n, int *close, int *ka, int *upg)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ',' || is_ows((unsigned char)v[i])))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',' && !is_ows((unsigned char)v[i]))
            i++;
        size_t l = i - s;
        if (LIT_EQ(v + s, l, "close"))
            *close = 1;
        else if (LIT_EQ(v + s, l, "keep-alive"))
            *ka = 1;
        else if (LIT_EQ(v + s, l, "upgrade"))
            *upg = 1;
    }
}

int cs_parse_request(const char *buf, size_t len, cs_request *req,
                     cs_header *headers, const cs_limits *lim)
{
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;
    int cl_seen = 0, te_seen = 0, host_seen = 0, conn_close = 0, conn_ka = 0;
    int conn_upgrade = 0, upgrade_field = 0;

    memset(req, 0, sizeof(*req));

    /* RFC 9112 2.2: ignore empty lines before the request line */
    while (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
        p += 2;
    if (p == end || (end - p == 1 && p[0] == '\r'))
        return CS_PARSE_AGAIN;

    /* request line */
    /* limits may be huge: compare by subtraction so nothing wraps */
    size_t avail = (size_t)(end - p);
    size_t scan = avail >= 2 && avail - 2 > lim->max_request_line ? lim->max_request_line + 2 : avail;
    const unsigned char *lf = memchr(p, '\n', scan);
    if (!lf) {
        if (avail - 1 > lim->max_request_line)
            FAIL(414, "request line too long");
        /* fail early on garbage so a bare-LF-free stream cannot sit unparsed */
        for (const unsigned char *q = p; q < end; q++)
            if (*q == '\r' && q + 1 < end)
                FAIL(400, "bare CR in request line");
        return CS_PARSE_AGAIN;
    }
    if (lf == p || lf[-1] != '\r')
        FAIL(400, "bare LF in request line");
    const unsigned char *le = lf - 1;   /* end of line content */
    if ((size_t)(le - p) > lim->max_request_line)
        FAIL(414, "request line too long");

    const unsigned char *q = p;
    while (q < le && tchar[*q])
        q++;
    if (q == p || q == le || *q != ' ')
        FAIL(400, "invalid method");
    req->method = (const char *)p;
    req->method_len = (size_t)(q - p);
    const unsigned char *t = ++q;
    while (q < le && target_char[*q])
        q++;
    if (q == t)
        FAIL(400, "empty request target");
    if (q == le)
        FAIL(400, "missing HTTP version");
    if (*q != ' ')
        FAIL(400, "invalid byte in request target");
    req->target = (const char *)t;
    req->target_len = (size_t)(q - t);
    q++;
    int st = parse_version(q, (size_t)(le - q), &req->minor_version);
    if (st)
        FAIL(st, st == 505 ? "unsupported HTTP version" : "malformed HTTP version");
    if (parse_target(req) != 0)
        FAIL(400, "invalid request target");
    p = lf + 1;

    /* header fields */
    size_t count = 0;
    for (;;) {
        if (p == end)
            return CS_PARSE_AGAIN;
        if (*p == '\r') {
            if (end - p < 2)
                return CS_PARSE_AGAIN;
            if (p[1] != '\n')
                FAIL(400, "bare CR in header section");
            p += 2;
            break;
        }
        if (*p == '\n')
            FAIL(400, "bare LF in header section");
        if (is_ows(*p))
            FAIL(400, "obsolete line folding");

        avail = (size_t)(end - p);
        scan = avail >= 2 && avail - 2 > lim->max_field_size ? lim->max_field_size + 2 : avail;
        lf = memchr(p, '\n', scan);
        if (!lf) {
            if (avail - 1 > lim->max_field_size)
                FAIL(431, "header field too long");
            for (q = p; q + 1 < end; q++)
                if (*q == '\r')
                    FAIL(400, "bare CR in header field");
            return CS_PARSE_AGAIN;
        }
        if (lf[-1] != '\r')
            FAIL(400, "bare LF in header field");
        le = lf - 1;
        if ((size_t)(le - p) > lim->max_field_size)
            FAIL(431, "header field too long");

        int underscore = 0;
        q = p;
        while (q < le && tchar[*q]) {
            underscore |= *q == '_';
            q++;
        }
        if (q == p)
            FAIL(400, "empty header name");
        if (q == le || *q != ':')
            FAIL(400, is_ows(*q) ? "whitespace before colon" : "invalid header name");
        const char *name = (const char *)p;
        size_t name_len = (size_t)(q - p);
        q++;
        while (q < le && is_ows(*q))
            q++;
        const unsigned char *v = q;
        for (; q < le; q++)
            if (!value_char[*q])
                FAIL(400, "invalid byte in header value");
        const unsigned char *ve = le;
        while (ve > v && is_ows(ve[-1]))
            ve--;
        p = lf + 1;

        if (++count > lim->max_fields)
            FAIL(431, "too many header fields");
        if (underscore) {
            req->dropped_headers++;
            continue;
        }
        const char *val = (const char *)v;
        size_t vlen = (size_t)(ve - v);
        cs_header *h = &headers[req->num_headers++];
        h->name = name;
        h->name_len = name_len;
        h->value = val;
        h->value_len = vlen;

        switch (name_len) {
        case 4:
            if (LIT_EQ(name, 4, "host")) {
                if (host_seen)
                    FAIL(400, "repeated Host");
                if (!valid_host(val, vlen))
                    FAIL(400, "invalid Host");
                host_seen = 1;
                if (!req->absolute && !req->authority) {
                    req->host = val;
                    req->host_len = vlen;
                }
            }
            break;
        case 6:
            /* RFC 9110 10.1.1: ignored in HTTP/1.0 */
            if (LIT_EQ(name, 6, "expect") && LIT_EQ(val, vlen, "100-continue") && req->minor_version == 1)
                req->expect_continue = 1;
            break;
        case 7:
            if (LIT_EQ(name, 7, "upgrade"))
                upgrade_field = 1;
            break;
        case 10:
            if (LIT_EQ(name, 10, "connection"))
                parse_connection(val, vlen, &conn_close, &conn_ka, &conn_upgrade);
            break;
        case 14:
            if (LIT_EQ(name, 14, "content-length")) {
                if (cl_seen)
                    FAIL(400, "repeated Content-Length");
                cl_seen = 1;
                if (vlen == 0 || vlen > 18)
                    FAIL(400, "invalid Content-Length");
                uint64_t n = 0;
                for (size_t i = 0; i < vlen; i++) {
                    if (val[i] < '0' || val[i] > '9')
                        FAIL(400, "invalid Content-Length");
                    n = n * 10 + (uint64_t)(val[i] - '0');
                }
                req->content_length = n;
            }
            break;
        case 17:
            if (LIT_EQ(name, 17, "transfer-encoding")) {
                /* only a single, final "chunked" is framing we accept */
                if (te_seen)
                    FAIL(400, "repeated Transfer-Encoding");
                te_seen = 1;
                if (!LIT_EQ(val, vlen, "chunked"))
                    FAIL(400, "unsupported Transfer-Encoding");
            }
            break;
        default:
            break;
        }
    }

    if (req->minor_version == 1 && !host_seen)
        FAIL(400, "missing Host");
    if (te_seen) {
        if (req->minor_version == 0)
            FAIL(400, "Transfer-Encoding in HTTP/1.0");
        if (cl_seen)
            FAIL(400, "both Content-Length and Transfer-Encoding");
        req->body = CS_BODY_CHUNKED;
    } else if (cl_seen) {
        req->body = CS_BODY_LENGTH;
    }
    req->keep_alive = req->minor_version == 1 ? !conn_close : (conn_ka && !conn_close);
    req->upgrade = conn_upgrade && upgrade_field;
    return (int)((const char *)p - buf);
}

/* ---- chunked transfer coding -------------------------------------------- */

enum {
    C_SIZE_START, C_SIZE, C_SIZE_END, C_EXT_NAME_START, C_EXT_NAME, C_EXT_AFTER_NAME,
    C_EXT_VAL_START, C_EXT_TVAL, C_EXT_QVAL, C_EXT_QESC, C_SIZE_LF,
    C_DATA, C_DATA_CR, C_DATA_LF,
    C_TRAILER_START, C_TRAILER_NAME, C_TRAILER_VALUE, C_TRAILER_LF, C_END_LF, C_DONE
};

void cs_chunked_init(cs_chunked *d)
{
    memset(d, 0, sizeof(*d));
    d->state = C_SIZE_START;
}

int cs_chunked_done(const cs_chunked *d) { return d->state == C_DONE; }

int cs_is_tchar(unsigned char c) { return tchar[c]; }

int cs_list_next(const char *v, size_t n, size_t *pos, const char **item, size_t *len)
{
    size_t i = *pos;
    while (i < n && (v[i] == ',' || is_ows((unsigned char)v[i])))
        i++;
    *pos = i;
    if (i == n)
        return 0;
    size_t s = i;                   /* not OWS: the element is never empty */
    while (i < n && v[i] != ',')
        i++;
    size_t e = i;
    while (is_ows((unsigned char)v[e - 1]))
        e--;
    *pos = i;
    *item = v + s;
    *len = e - s;
    return 1;
}

int cs_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Fields that must never arrive in a trailer (RFC 9110 6.5.1): framing,
 * routing, request modifiers, authentication and content metadata. */
static int forbidden_trailer(const char *n, size_t l)
{
    static const char *const names[] = {
        "content-length", "transfer-encoding", "host", "content-type", "content-encoding",
        "content-range", "trailer", "te", "expect", "authorization", "proxy-authorization",
        "cookie", "set-cookie", "cache-control", "max-forwards", "pragma", "range",
        "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range",
        "connection", "keep-alive", "upgrade", NULL
    };
    for (const char *const *p = names; *p; p++)
        if (strlen(*p) == l && memcmp(*p, n, l) == 0)
            return 1;
    return 0;
}

#define CFAIL(why) do { d->error = (why); return -1; } while (0)

ssize_t cs_chunked_decode(cs_chunked *d, const char *in, size_t len,
                          const char **data, size_t *data_len)
{
    const unsigned char *p = (const unsigned char *)in, *end = p + len;
    *data = NULL;
    *data_len = 0;

    while (p < end) {
        if (d->state == C_DATA) {
            size_t n = (size_t)(end - p);
            if (n > d->remaining)
                n = (size_t)d->remaining;
            *data = (const char *)p;
            *data_len = n;
            d->remaining -= n;
            if (d->remaining == 0)
                d->state = C_DATA_CR;
            return (ssize_t)((const char *)p + n - in);
        }
        unsigned char c = *p++;
        if (d->state < C_DATA || (d->state >= C_TRAILER_START && d->state < C_END_LF)) {
            if (++d->line_len > CS_CHUNK_LINE_MAX)
                CFAIL(d->state < C_DATA ? "chunk size line too long" : "trailer field too long");
        }
        switch (d->state) {
        case C_SIZE_START:
            if (cs_hexval(c) < 0)
                CFAIL("invalid chunk size");
            d->remaining = (uint64_t)cs_hexval(c);
            d->name_len = 1;           /* digits seen */
            d->state = C_SIZE;
            break;
        case C_SIZE:
            if (cs_hexval(c) >= 0) {
                if (++d->name_len > 16)
                    CFAIL("chunk size too large");
                d->remaining = d->remaining << 4 | (uint64_t)cs_hexval(c);
                break;
            }
            d->state = C_SIZE_END;
            /* fall through */
        case C_SIZE_END:
            if (is_ows(c)) break;
            if (c == ';') { d->state = C_EXT_NAME_START; break; }
            if (c == '\r') { d->state = C_SIZE_LF; break; }
            CFAIL("invalid chunk size line");
        case C_EXT_NAME_START:
            if (is_ows(c)) break;
            if (tchar[c]) { d->state = C_EXT_NAME; break; }
            CFAIL("invalid chunk extension");
        case C_EXT_NAME:
            if (tchar[c]) break;
            if (is_ows(c)) { d->state = C_EXT_AFTER_NAME; break; }
            if (c == '=') { d->state = C_EXT_VAL_START; break; }
            if (c == ';') { d->state = C_EXT_NAME_START; break; }
            if (c == '\r') { d->state = C_SIZE_LF; break; }
            CFAIL("invalid chunk extension");
        case C_EXT_AFTER_NAME:
            if (is_ows(c)) break;
            if (c == '=') { d->state = C_EXT_VAL_START; break; }
            if (c == ';') { d->state = C_EXT_NAME_START; break; }
            if (c == '\r') { d->state = C_SIZE_LF; break; }
            CFAIL("invalid chunk extension");
        case C_EXT_VAL_START:
            if (is_ows(c)) break;
            if (c == '"') { d->state = C_EXT_QVAL; break; }
            if (tchar[c]) { d->state = C_EXT_TVAL; break; }
            CFAIL("invalid chunk extension value");
        case C_EXT_TVAL:
            if (tchar[c]) break;
            if (is_ows(c)) { d->state = C_SIZE_END; break; }
            if (c == ';') { d->state = C_EXT_NAME_START; break; }
            if (c == '\r') { d->state = C_SIZE_LF; break; }
            CFAIL("invalid chunk extension value");
        case C_EXT_QVAL:
            if (c == '"') { d->state = C_SIZE_END; break; }
            if (c == '\\') { d->state = C_EXT_QESC; break; }
            if (qdtext[c]) break;
            CFAIL("invalid chunk extension value");
        case C_EXT_QESC:
            if (c == '\t' || (c >= 0x20 && c != 0x7f)) { d->state = C_EXT_QVAL; break; }
            CFAIL("invalid chunk extension value");
        case C_SIZE_LF:
            if (c != '\n')
                CFAIL("bare CR in chunk size line");
            d->line_len = 0;
            d->state = d->remaining ? C_DATA : C_TRAILER_START;
            break;
        case C_DATA_CR:
            if (c != '\r')
                CFAIL("missing CRLF after chunk data");
            d->state = C_DATA_LF;
            break;
        case C_DATA_LF:
            if (c != '\n')
                CFAIL("missing CRLF after chunk data");
            d->line_len = 0;
            d->state = C_SIZE_START;
            break;
        case C_TRAILER_START:
            if (c == '\r') { d->state = C_END_LF; break; }
            if (!tchar[c])
                CFAIL("invalid trailer field");
            if (++d->trailers > CS_TRAILER_MAX_FIELDS)
                CFAIL("too many trailer fields");
            d->name[0] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
            d->name_len = 1;
            d->state = C_TRAILER_NAME;
            break;
        case C_TRAILER_NAME:
            if (tchar[c]) {
                if (d->name_len < sizeof(d->name))
                    d->name[d->name_len] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
                d->name_len++;
                break;
            }
            if (c != ':')
                CFAIL("invalid trailer field");
            if (d->name_len <= sizeof(d->name) && forbidden_trailer(d->name, d->name_len))
                CFAIL("forbidden trailer field");
            d->state = C_TRAILER_VALUE;
            break;
        case C_TRAILER_VALUE:
            if (value_char[c]) break;
            if (c == '\r') { d->state = C_TRAILER_LF; break; }
            CFAIL("invalid trailer value");
        case C_TRAILER_LF:
            if (c != '\n')
                CFAIL("bare CR in trailer");
            d->line_len = 0;
            d->state = C_TRAILER_START;
            break;
        case C_END_LF:
            if (c != '\n')
                CFAIL("bare CR after trailers");
            d->state = C_DONE;
            return (ssize_t)((const char *)p - in);
        default:
            return (ssize_t)((const char *)p - in - 1);   /* C_DONE: consume nothing more */
        }
    }
    return (ssize_t)len;
}
