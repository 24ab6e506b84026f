/* test_parser.c - table-driven unit tests for the HTTP/1.1 request parser and
 * the chunked decoder declared in src/corsac/core/parser.h.
 *
 * Every input is copied into a heap block of exactly its own size before it is
 * parsed, so an AddressSanitizer build reports any read past the end.  Each
 * case counts once; a failed case prints one line "FAIL <case>: <reasons>".
 * The last line is "N passed, N failed"; the exit status is 1 on any failure. */
#include "parser.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Result bookkeeping                                                        */

static int n_passed, n_failed;
static char why[2048];  /* reasons collected for the current case */
static size_t why_len;

static void begin_case(void)
{
    why[0] = '\0';
    why_len = 0;
}

static void note(const char *fmt, ...)
{
    va_list ap;
    int n;
    if (why_len >= sizeof why - 1)
        return;
    if (why_len > 0) {
        n = snprintf(why + why_len, sizeof why - why_len, "; ");
        if (n > 0)
            why_len += (size_t)n;
        if (why_len >= sizeof why - 1) {
            why_len = sizeof why - 1;
            return;
        }
    }
    va_start(ap, fmt);
    n = vsnprintf(why + why_len, sizeof why - why_len, fmt, ap);
    va_end(ap);
    if (n > 0)
        why_len += (size_t)n;
    if (why_len > sizeof why - 1)
        why_len = sizeof why - 1;
}

static void end_case(const char *name)
{
    if (why_len == 0) {
        n_passed++;
    } else {
        n_failed++;
        printf("FAIL %s: %s\n", name, why);
    }
}

static char *dup_exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    if (n)
        memcpy(p, s, n);
    return p;
}

/* Printable rendering of a byte string for failure messages. */
static const char *show(const char *s, size_t n)
{
    static char bufs[4][160];
    static int which;
    char *out = bufs[which++ & 3];
    size_t o = 0, i;
    if (!s)
        return "(null)";
    for (i = 0; i < n && o < 150; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            snprintf(out + o, 8, "\\x%02x", c);
            o += 4;
        }
    }
    if (i < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------------------ */
/* Request parser cases                                                      */

enum { ANY = 0, NO = 1, YES = 2 };            /* tri-state expectations */
enum { V_ANY = 0, V10 = 1, V11 = 2 };
enum { B_ANY = 0, B_NONE = 1, B_LEN = 2, B_CHUNKED = 3 };
#define CNT(n) ((n) + 1)                      /* counts: 0 means unchecked */

typedef struct {
    const char *n, *v;
} hv;

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    int status;          /* 0: must succeed; otherwise the expected error status */
    size_t tail;         /* bytes after the head (success only) */
    const char *method, *target, *path, *query, *host;  /* NULL: unchecked */
    int minor;           /* V10 / V11 */
    int body;            /* B_NONE / B_LEN / B_CHUNKED */
    uint64_t cl;         /* checked when body == B_LEN */
    int ka, expect, upgrade, asterisk, absolute, authority;
    int nh;              /* CNT(num_headers) */
    int dropped;         /* CNT(dropped_headers) */
    hv hdr[8];           /* all stored headers, in order (if hdr[0].n) */
    const cs_limits *lim;
} req_case;

#define IN(s) .in = (s), .len = sizeof(s) - 1

static const cs_limits lim_default = {8190, 64, 8190};
static const cs_limits lim_fields3 = {8190, 3, 8190};

#define H11 "Host: example.com\r\n"

static const req_case req_cases[] = {
    /* ---- valid requests ---- */
    {"simple GET", IN("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
     .method = "GET", .target = "/", .path = "/", .query = "", .host = "example.com",
     .minor = V11, .body = B_NONE, .ka = YES, .expect = NO, .upgrade = NO,
     .asterisk = NO, .absolute = NO, .authority = NO, .nh = CNT(1), .dropped = CNT(0),
     .hdr = {{"Host", "example.com"}}},
    {"HTTP/1.0 without Host", IN("GET /index.html HTTP/1.0\r\n\r\n"),
     .method = "GET", .path = "/index.html", .host = "", .minor = V10, .body = B_NONE,
     .ka = NO, .nh = CNT(0)},
    {"HTTP/1.0 with Host", IN("GET / HTTP/1.0\r\nHost: h\r\n\r\n"),
     .minor = V10, .host = "h", .ka = NO, .nh = CNT(1)},
    {"custom method token", IN("PURGE /x HTTP/1.1\r\n" H11 "\r\n"), .method = "PURGE"},
    {"method with tchars", IN("M-1.X!#$%&'*+^_`|~ /x HTTP/1.1\r\n" H11 "\r\n"),
     .method = "M-1.X!#$%&'*+^_`|~"},
    {"lowercase method is a token", IN("get / HTTP/1.1\r\n" H11 "\r\n"), .method = "get"},
    {"header OWS stripped", IN("GET / HTTP/1.1\r\nHost: h\r\nX-A: \t  va l\t \r\nX-B:vb\r\n\r\n"),
     .hdr = {{"Host", "h"}, {"X-A", "va l"}, {"X-B", "vb"}}},
    {"empty header value", IN("GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Blank:  \t \r\n\r\n"),
     .hdr = {{"Host", "h"}, {"X-Empty", ""}, {"X-Blank", ""}}},
    {"obs-text in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX-L: caf\303\251 \200\377\r\n\r\n"),
     .hdr = {{"Host", "h"}, {"X-L", "caf\303\251 \200\377"}}},
    {"all VCHARs in value",
     IN("GET / HTTP/1.1\r\nHost: h\r\nX-V: !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~\r\n\r\n"),
     .hdr = {{"Host", "h"}, {"X-V", "!\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~"}}},
    {"Host with port", IN("GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"),
     .host = "127.0.0.1:8000"},
    {"Host IPv6 literal", IN("GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n"), .host = "[::1]:8000"},
    {"Host empty value", IN("GET / HTTP/1.1\r\nHost:\r\n\r\n"), .host = ""},
    {"absolute-form https", IN("GET https://s.example/x HTTP/1.1\r\nHost: s.example\r\n\r\n"),
     .host = "s.example", .path = "/x", .absolute = YES},
    {"header name case preserved", IN("GET / HTTP/1.1\r\nhOsT: h\r\nX-MiXeD: v\r\n\r\n"),
     .host = "h", .hdr = {{"hOsT", "h"}, {"X-MiXeD", "v"}}},
    {"duplicate ordinary fields kept", IN("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nA: 2\r\n\r\n"),
     .hdr = {{"Host", "h"}, {"A", "1"}, {"A", "2"}}},
    {"query split", IN("GET /a/b?x=1&y=2 HTTP/1.1\r\n" H11 "\r\n"),
     .target = "/a/b?x=1&y=2", .path = "/a/b", .query = "x=1&y=2"},
    {"query keeps later '?'", IN("GET /a?b?c HTTP/1.1\r\n" H11 "\r\n"),
     .path = "/a", .query = "b?c"},
    {"empty query", IN("GET /p? HTTP/1.1\r\n" H11 "\r\n"), .target = "/p?", .path = "/p",
     .query = ""},
    {"path stays percent-encoded", IN("GET /a%20b%2F?q=%41 HTTP/1.1\r\n" H11 "\r\n"),
     .path = "/a%20b%2F", .query = "q=%41"},
    {"absolute-form", IN("GET http://a.example:8080/p/q?x=1 HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"),
     .target = "http://a.example:8080/p/q?x=1", .host = "a.example:8080", .path = "/p/q",
     .query = "x=1", .absolute = YES, .asterisk = NO, .authority = NO},
    {"absolute-form authority overrides Host",
     IN("GET http://a.example/p HTTP/1.1\r\nHost: b.example\r\n\r\n"),
     .host = "a.example", .path = "/p", .query = "", .absolute = YES},
    {"absolute-form HTTP/1.0 no Host", IN("GET http://h/x?y HTTP/1.0\r\n\r\n"),
     .host = "h", .path = "/x", .query = "y", .absolute = YES, .minor = V10},
    {"OPTIONS *", IN("OPTIONS * HTTP/1.1\r\n" H11 "\r\n"),
     .method = "OPTIONS", .target = "*", .asterisk = YES, .absolute = NO, .authority = NO},
    {"CONNECT authority-form", IN("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
     .method = "CONNECT", .target = "example.com:443", .host = "example.com:443",
     .authority = YES, .asterisk = NO, .absolute = NO},
    {"leading CRLF skipped", IN("\r\n\r\nGET /x HTTP/1.1\r\n" H11 "\r\n"),
     .method = "GET", .path = "/x"},
    {"Content-Length body", IN("POST /u HTTP/1.1\r\n" H11 "Content-Length: 5\r\n\r\nhello"),
     .tail = 5, .method = "POST", .body = B_LEN, .cl = 5},
    {"Content-Length lowercase name", IN("POST / HTTP/1.1\r\n" H11 "content-length: 12\r\n\r\n"),
     .body = B_LEN, .cl = 12},
    {"Content-Length leading zeros", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 007\r\n\r\n"),
     .body = B_LEN, .cl = 7},
    {"Content-Length with OWS", IN("POST / HTTP/1.1\r\n" H11 "Content-Length:  42 \t\r\n\r\n"),
     .body = B_LEN, .cl = 42},
    {"Content-Length large", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 123456789012\r\n\r\n"),
     .body = B_LEN, .cl = 123456789012ULL},
    {"chunked body", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
     .tail = 15, .body = B_CHUNKED},
    {"chunked case-insensitive", IN("POST / HTTP/1.1\r\n" H11 "transfer-encoding: Chunked\r\n\r\n"),
     .body = B_CHUNKED},
    {"chunked with OWS", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding:  chunked \r\n\r\n"),
     .body = B_CHUNKED},
    {"no body on GET", IN("GET / HTTP/1.1\r\n" H11 "\r\n"), .body = B_NONE},
    {"keep-alive default 1.1", IN("GET / HTTP/1.1\r\n" H11 "\r\n"), .ka = YES},
    {"keep-alive default 1.0", IN("GET / HTTP/1.0\r\n\r\n"), .ka = NO},
    {"Connection: close", IN("GET / HTTP/1.1\r\n" H11 "Connection: close\r\n\r\n"), .ka = NO},
    {"Connection: CLOSE", IN("GET / HTTP/1.1\r\n" H11 "Connection: CLOSE\r\n\r\n"), .ka = NO},
    {"Connection list with close", IN("GET / HTTP/1.1\r\n" H11 "Connection: foo, close\r\n\r\n"),
     .ka = NO},
    {"1.0 Connection: keep-alive", IN("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
     .ka = YES},
    {"1.0 Connection: Keep-Alive", IN("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
     .ka = YES},
    {"1.1 Connection: keep-alive", IN("GET / HTTP/1.1\r\n" H11 "Connection: keep-alive\r\n\r\n"),
     .ka = YES},
    {"expect 100-continue", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 3\r\nExpect: 100-continue\r\n\r\n"),
     .expect = YES, .body = B_LEN, .cl = 3},
    {"expect case-insensitive", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 3\r\nexpect: 100-Continue\r\n\r\n"),
     .expect = YES},
    {"expect ignored in HTTP/1.0 (RFC 9110 10.1.1)",
     IN("POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"), .expect = NO},
    {"no expect", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 3\r\n\r\n"), .expect = NO},
    {"upgrade", IN("GET /ws HTTP/1.1\r\n" H11 "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
     .upgrade = YES},
    {"upgrade in Connection list", IN("GET /ws HTTP/1.1\r\n" H11 "Upgrade: websocket\r\nConnection: keep-alive, upgrade\r\n\r\n"),
     .upgrade = YES, .ka = YES},
    {"Upgrade field without Connection", IN("GET / HTTP/1.1\r\n" H11 "Upgrade: websocket\r\n\r\n"),
     .upgrade = NO},
    {"Connection upgrade without Upgrade", IN("GET / HTTP/1.1\r\n" H11 "Connection: upgrade\r\n\r\n"),
     .upgrade = NO},
    {"pipelined second request is tail",
     IN("GET /1 HTTP/1.1\r\n" H11 "\r\nGET /2 HTTP/1.1\r\n" H11 "\r\n"),
     .tail = 38, .path = "/1"},
    {"underscore header dropped", IN("GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 1\r\nX-Real: 2\r\n\r\n"),
     .nh = CNT(2), .dropped = CNT(1), .hdr = {{"Host", "h"}, {"X-Real", "2"}}},
    {"two underscore headers dropped", IN("GET / HTTP/1.1\r\n_a: 1\r\nHost: h\r\nb_: 2\r\n\r\n"),
     .nh = CNT(1), .dropped = CNT(2), .hdr = {{"Host", "h"}}},
    {"Content_Length sets no body", IN("POST / HTTP/1.1\r\n" H11 "Content_Length: 5\r\n\r\nhello"),
     .tail = 5, .body = B_NONE, .dropped = CNT(1), .nh = CNT(1)},
    {"Transfer_Encoding sets no body", IN("POST / HTTP/1.1\r\n" H11 "Transfer_Encoding: chunked\r\n\r\n"),
     .body = B_NONE, .dropped = CNT(1)},
    {"Host_ is not Host", IN("GET / HTTP/1.0\r\nHost_: evil\r\n\r\n"), .host = "", .dropped = CNT(1)},
    {"fields up to max_fields", IN("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n"),
     .lim = &lim_fields3, .nh = CNT(3)},

    /* ---- errors: framing ---- */
    {"bare LF ends request line", IN("GET / HTTP/1.1\nHost: h\r\n\r\n"), .status = 400},
    {"bare LF ends header", IN("GET / HTTP/1.1\r\nHost: h\n\r\n"), .status = 400},
    {"bare LF blank line", IN("GET / HTTP/1.1\r\nHost: h\r\n\n"), .status = 400},
    {"bare LF only", IN("GET / HTTP/1.1\nHost: h\n\n"), .status = 400},
    {"bare LF leading line", IN("\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), .status = 400},
    {"bare LF inside value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\nb\r\n\r\n"), .status = 400},
    {"bare CR in request line", IN("GET / HTTP/1.1\rHost: h\r\n\r\n"), .status = 400},
    {"bare CR in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"), .status = 400},
    {"bare CR blank line", IN("GET / HTTP/1.1\r\nHost: h\r\n\rX\r\n\r\n"), .status = 400},
    {"CR CR LF", IN("GET / HTTP/1.1\r\r\nHost: h\r\n\r\n"), .status = 400},
    {"space before colon", IN("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), .status = 400},
    {"tab before colon", IN("GET / HTTP/1.1\r\nHost: h\r\nX\t: 1\r\n\r\n"), .status = 400},
    {"obs-fold SP", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"), .status = 400},
    {"obs-fold HTAB", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n"), .status = 400},
    {"whitespace line after request line", IN("GET / HTTP/1.1\r\n Host: h\r\n\r\n"), .status = 400},
    {"header without colon", IN("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"), .status = 400},
    {"empty header name", IN("GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n"), .status = 400},
    {"bad tchar in name '('", IN("GET / HTTP/1.1\r\nHost: h\r\nX(y: 1\r\n\r\n"), .status = 400},
    {"bad tchar in name '@'", IN("GET / HTTP/1.1\r\nHost: h\r\nX@y: 1\r\n\r\n"), .status = 400},
    {"bad tchar in name '/'", IN("GET / HTTP/1.1\r\nHost: h\r\nX/y: 1\r\n\r\n"), .status = 400},
    {"obs-text in name", IN("GET / HTTP/1.1\r\nHost: h\r\nX\200: 1\r\n\r\n"), .status = 400},
    {"NUL in name", IN("GET / HTTP/1.1\r\nHost: h\r\nX\000Y: 1\r\n\r\n"), .status = 400},
    {"NUL in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\000b\r\n\r\n"), .status = 400},
    {"SOH in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\001b\r\n\r\n"), .status = 400},
    {"ESC in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\033b\r\n\r\n"), .status = 400},
    {"US in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\037b\r\n\r\n"), .status = 400},
    {"DEL in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\177b\r\n\r\n"), .status = 400},
    {"VT in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: a\013b\r\n\r\n"), .status = 400},
    {"trailing NUL in value", IN("GET / HTTP/1.1\r\nHost: h\r\nX: ab\000\r\n\r\n"), .status = 400},

    /* ---- errors: request line ---- */
    {"bad tchar in method", IN("GE(T / HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"CTL in method", IN("GE\001T / HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"empty method", IN(" / HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"double space after method", IN("GET  / HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"double space before version", IN("GET /  HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"tab separator", IN("GET\t/ HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"trailing space after version", IN("GET / HTTP/1.1 \r\n" H11 "\r\n"), .status = 400},
    {"missing version (0.9 style)", IN("GET /\r\n\r\n"), .status = 400},
    {"empty version", IN("GET / \r\n" H11 "\r\n"), .status = 400},
    {"lowercase http/1.1", IN("GET / http/1.1\r\n" H11 "\r\n"), .status = 400},
    {"HTTP/1.x", IN("GET / HTTP/1.x\r\n" H11 "\r\n"), .status = 400},
    {"HTTP/1", IN("GET / HTTP/1\r\n" H11 "\r\n"), .status = 400},
    {"HTTP/1.", IN("GET / HTTP/1.\r\n" H11 "\r\n"), .status = 400},
    {"HTTP/1.10", IN("GET / HTTP/1.10\r\n" H11 "\r\n"), .status = 400},
    {"HTTPS/1.1", IN("GET / HTTPS/1.1\r\n" H11 "\r\n"), .status = 400},
    {"HTTP/2.0 is 505", IN("GET / HTTP/2.0\r\n" H11 "\r\n"), .status = 505},
    {"HTTP/1.2 is 505", IN("GET / HTTP/1.2\r\n" H11 "\r\n"), .status = 505},
    {"HTTP/3.0 is 505", IN("GET / HTTP/3.0\r\n" H11 "\r\n"), .status = 505},
    {"HTTP/1.9 is 505", IN("GET / HTTP/1.9\r\n" H11 "\r\n"), .status = 505},
    {"target not starting with /", IN("GET foo HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"target with dot", IN("GET ./x HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"asterisk with GET", IN("GET * HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"asterisk with POST", IN("POST * HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"authority-form with GET", IN("GET example.com:443 HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"authority-form with OPTIONS", IN("OPTIONS example.com:443 HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"control byte in target", IN("GET /a\001b HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"HTAB in target", IN("GET /a\tb HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"DEL in target", IN("GET /a\177b HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"0x80 in target", IN("GET /a\200b HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"0xFF in target", IN("GET /\377 HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"UTF-8 in target", IN("GET /caf\303\251 HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"NUL in target", IN("GET /a\000b HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"control byte in query", IN("GET /a?x=\001 HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"0x80 in query", IN("GET /a?x=\200 HTTP/1.1\r\n" H11 "\r\n"), .status = 400},
    {"0x80 in absolute-form", IN("GET http://h/\200 HTTP/1.1\r\nHost: h\r\n\r\n"), .status = 400},

    /* ---- errors: body framing / smuggling ---- */
    {"CL and TE", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
     .status = 400},
    {"TE and CL", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
     .status = 400},
    {"duplicate CL equal", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"),
     .status = 400},
    {"duplicate CL different", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n"),
     .status = 400},
    {"duplicate CL mixed case", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\ncontent-length: 5\r\n\r\n"),
     .status = 400},
    {"CL list", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 5, 5\r\n\r\n"), .status = 400},
    {"CL non-numeric", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: abc\r\n\r\n"), .status = 400},
    {"CL trailing junk", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 5a\r\n\r\n"), .status = 400},
    {"CL inner space", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 1 2\r\n\r\n"), .status = 400},
    {"CL plus sign", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: +5\r\n\r\n"), .status = 400},
    {"CL minus sign", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: -5\r\n\r\n"), .status = 400},
    {"CL hex", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 0x5\r\n\r\n"), .status = 400},
    {"CL empty", IN("POST / HTTP/1.1\r\n" H11 "Content-Length:\r\n\r\n"), .status = 400},
    {"CL blank", IN("POST / HTTP/1.1\r\n" H11 "Content-Length:   \r\n\r\n"), .status = 400},
    {"CL overflow 2^64", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 18446744073709551616\r\n\r\n"),
     .status = 400},
    {"CL overflow huge", IN("POST / HTTP/1.1\r\n" H11 "Content-Length: 99999999999999999999999999\r\n\r\n"),
     .status = 400},
    {"TE gzip", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip\r\n\r\n"), .status = 400},
    {"TE chunked, gzip", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked, gzip\r\n\r\n"),
     .status = 400},
    {"TE gzip, chunked", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip, chunked\r\n\r\n"),
     .status = 400},
    {"TE chunked, chunked", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked, chunked\r\n\r\n"),
     .status = 400},
    {"TE xchunked", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: xchunked\r\n\r\n"), .status = 400},
    {"TE chunkedx", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunkedx\r\n\r\n"), .status = 400},
    {"TE chunke", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunke\r\n\r\n"), .status = 400},
    {"TE empty", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding:\r\n\r\n"), .status = 400},
    {"TE identity", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: identity\r\n\r\n"), .status = 400},
    {"TE chunked with param", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked;q=1\r\n\r\n"),
     .status = 400},
    {"TE chunked trailing comma", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked,\r\n\r\n"),
     .status = 400},
    {"TE two fields chunked", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
     .status = 400},
    {"TE two fields gzip then chunked", IN("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
     .status = 400},
    {"TE in HTTP/1.0", IN("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), .status = 400},
    {"missing Host in 1.1", IN("GET / HTTP/1.1\r\n\r\n"), .status = 400},
    {"missing Host in 1.1 with fields", IN("GET / HTTP/1.1\r\nX: 1\r\n\r\n"), .status = 400},
    {"two Host fields", IN("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), .status = 400},
    {"two Host fields mixed case", IN("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), .status = 400},
    {"two Host fields in 1.0", IN("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), .status = 400},

    /* ---- errors: limits (table part; more in run_limit_cases) ---- */
    {"more fields than max_fields", IN("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
     .lim = &lim_fields3, .status = 431},
};

static int in_buf(const char *base, size_t n, const char *p, size_t plen)
{
    if (plen == 0)
        return 1;
    if (!p || p < base)
        return 0;
    return (size_t)(p - base) <= n && plen <= n - (size_t)(p - base);
}

static void check_str(const char *what, const char *want, const char *got, size_t got_len)
{
    size_t wl;
    if (!want)
        return;
    wl = strlen(want);
    if (got_len != wl || (wl && (!got || memcmp(got, want, wl) != 0)))
        note("%s: want \"%s\" got \"%s\" (len %zu)", what, show(want, wl),
             show(got, got ? got_len : 0), got_len);
}

static void check_tri(const char *what, int want, unsigned got)
{
    if (want != ANY && (want == YES) != (got != 0))
        note("%s: want %d got %u", what, want == YES, got);
}

static int parse_copy(const char *in, size_t len, cs_request *req, const cs_limits *lim,
                      cs_header **hdrs_out, char **buf_out, int garbage)
{
    char *buf = dup_exact(in, len);
    cs_header *hdrs = malloc(lim->max_fields * sizeof *hdrs + 1);
    int r;
    if (!hdrs) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memset(req, garbage ? 0xA5 : 0, sizeof *req);
    memset(hdrs, garbage ? 0xA5 : 0, lim->max_fields * sizeof *hdrs);
    r = cs_parse_request(buf, len, req, hdrs, lim);
    if (hdrs_out)
        *hdrs_out = hdrs;
    else
        free(hdrs);
    if (buf_out)
        *buf_out = buf;
    else
        free(buf);
    return r;
}

static void run_req_case(const req_case *c)
{
    const cs_limits *lim = c->lim ? c->lim : &lim_default;
    cs_request req, req2;
    cs_header *hdrs = NULL;
    char *buf = NULL;
    size_t i, hl;
    int r;

    begin_case();
    r = parse_copy(c->in, c->len, &req, lim, &hdrs, &buf, 0);

    if (c->status) {
        if (r != CS_PARSE_ERROR)
            note("want CS_PARSE_ERROR/%d got %d", c->status, r);
        else if (req.status != c->status)
            note("want status %d got %d (%s)", c->status, req.status,
                 req.error ? req.error : "no error text");
        else if (!req.error)
            note("error text not set");
        goto out;
    }

    hl = c->len - c->tail;
    if (r != (int)hl) {
        note("want head length %zu got %d", hl, r);
        if (r == CS_PARSE_ERROR)
            note("status %d (%s)", req.status, req.error ? req.error : "-");
        goto out;
    }

    check_str("method", c->method, req.method, req.method_len);
    check_str("target", c->target, req.target, req.target_len);
    check_str("path", c->path, req.path, req.path_len);
    check_str("query", c->query, req.query, req.query_len);
    check_str("host", c->host, req.host, req.host_len);
    if (c->minor && req.minor_version != (c->minor == V11 ? 1 : 0))
        note("minor_version: want %d got %d", c->minor == V11, req.minor_version);
    if (c->body) {
        int want = c->body == B_NONE ? CS_BODY_NONE : c->body == B_LEN ? CS_BODY_LENGTH
                                                                        : CS_BODY_CHUNKED;
        if ((int)req.body != want)
            note("body kind: want %d got %d", want, (int)req.body);
        else if (want == CS_BODY_LENGTH && req.content_length != c->cl)
            note("content_length: want %llu got %llu", (unsigned long long)c->cl,
                 (unsigned long long)req.content_length);
    }
    check_tri("keep_alive", c->ka, req.keep_alive);
    check_tri("expect_continue", c->expect, req.expect_continue);
    check_tri("upgrade", c->upgrade, req.upgrade);
    check_tri("asterisk", c->asterisk, req.asterisk);
    check_tri("absolute", c->absolute, req.absolute);
    check_tri("authority", c->authority, req.authority);
    if (c->nh && req.num_headers != (size_t)(c->nh - 1))
        note("num_headers: want %d got %zu", c->nh - 1, req.num_headers);
    if (c->dropped && req.dropped_headers != (size_t)(c->dropped - 1))
        note("dropped_headers: want %d got %zu", c->dropped - 1, req.dropped_headers);
    if (c->hdr[0].n) {
        size_t want_n = 0;
        while (want_n < 8 && c->hdr[want_n].n)
            want_n++;
        if (req.num_headers != want_n) {
            note("num_headers: want %zu got %zu", want_n, req.num_headers);
        } else {
            for (i = 0; i < want_n; i++) {
                char what[48];
                snprintf(what, sizeof what, "header[%zu] name", i);
                check_str(what, c->hdr[i].n, hdrs[i].name, hdrs[i].name_len);
                snprintf(what, sizeof what, "header[%zu] value", i);
                check_str(what, c->hdr[i].v, hdrs[i].value, hdrs[i].value_len);
            }
        }
    }

    /* Every pointer handed back lies inside the head. */
    if (req.num_headers > lim->max_fields)
        note("num_headers %zu > max_fields %zu", req.num_headers, lim->max_fields);
    if (!req.method_len || !in_buf(buf, hl, req.method, req.method_len))
        note("method pointer outside the head");
    if (!req.target_len || !in_buf(buf, hl, req.target, req.target_len))
        note("target pointer outside the head");
    if (!in_buf(buf, hl, req.path, req.path_len))
        note("path pointer outside the head");
    if (!in_buf(buf, hl, req.query, req.query_len))
        note("query pointer outside the head");
    if (!in_buf(buf, hl, req.host, req.host_len))
        note("host pointer outside the head");
    for (i = 0; i < req.num_headers && i < lim->max_fields; i++) {
        if (!hdrs[i].name_len || !in_buf(buf, hl, hdrs[i].name, hdrs[i].name_len))
            note("header[%zu] name pointer outside the head", i);
        if (!in_buf(buf, hl, hdrs[i].value, hdrs[i].value_len))
            note("header[%zu] value pointer outside the head", i);
    }

    /* A request struct left over from an earlier parse must not leak into
     * this one: parse again into a garbage-filled struct and compare. */
    r = parse_copy(c->in, c->len, &req2, lim, NULL, NULL, 1);
    if (r != (int)hl || req2.method_len != req.method_len || req2.target_len != req.target_len ||
        req2.path_len != req.path_len || req2.query_len != req.query_len ||
        req2.host_len != req.host_len || req2.minor_version != req.minor_version ||
        req2.body != req.body ||
        (req.body == CS_BODY_LENGTH && req2.content_length != req.content_length) ||
        req2.keep_alive != req.keep_alive || req2.expect_continue != req.expect_continue ||
        req2.upgrade != req.upgrade || req2.asterisk != req.asterisk ||
        req2.absolute != req.absolute || req2.authority != req.authority ||
        req2.num_headers != req.num_headers || req2.dropped_headers != req.dropped_headers)
        note("result depends on the prior contents of *req (fields not all initialised)");

    /* The head alone parses to the same length, and every strict prefix of
     * the head is incomplete. */
    if (c->tail && parse_copy(c->in, hl, &req2, lim, NULL, NULL, 0) != (int)hl)
        note("head without its tail does not parse to the same length");
    for (i = 0; i < hl; i++) {
        r = parse_copy(c->in, i, &req2, lim, NULL, NULL, 0);
        if (r != CS_PARSE_AGAIN) {
            note("prefix of %zu bytes: want CS_PARSE_AGAIN got %d (status %d %s)", i, r,
                 req2.status, r == CS_PARSE_ERROR && req2.error ? req2.error : "");
            break;
        }
    }
out:
    free(hdrs);
    free(buf);
    end_case(c->name);
}

/* ------------------------------------------------------------------------ */
/* Limit cases built at run time                                             */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 256) + n;
        char *p = realloc(b->p, cap);
        if (!p) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_rep(sbuf *b, char c, size_t n)
{
    while (n--)
        sb_add(b, &c, 1);
}

/* One case: parse s[0..len) with lim; want = head length, CS_PARSE_AGAIN, or
 * CS_PARSE_ERROR with status. */
static void expect_parse(const char *name, const char *s, size_t len, const cs_limits *lim,
                         int want, int status)
{
    cs_request req;
    int r;
    begin_case();
    r = parse_copy(s, len, &req, lim, NULL, NULL, 0);
    if (r != want)
        note("want %d got %d (status %d %s)", want, r, r == CS_PARSE_ERROR ? req.status : 0,
             r == CS_PARSE_ERROR && req.error ? req.error : "");
    else if (want == CS_PARSE_ERROR && req.status != status)
        note("want status %d got %d (%s)", status, req.status, req.error ? req.error : "-");
    end_case(name);
}

static void run_limit_cases(void)
{
    sbuf b = {0};
    cs_limits lim;
    size_t line;

    /* request line "GET /aaaa...a HTTP/1.1" of exactly 40 bytes */
    sb_str(&b, "GET /");
    sb_rep(&b, 'a', 40 - 5 - 9);
    sb_str(&b, " HTTP/1.1");
    line = b.n;
    sb_str(&b, "\r\nHost: h\r\n\r\n");
    lim = lim_default;
    lim.max_request_line = line;
    expect_parse("request line at max_request_line", b.p, b.n, &lim, (int)b.n, 0);
    lim.max_request_line = line - 1;
    expect_parse("request line over max_request_line", b.p, b.n, &lim, CS_PARSE_ERROR, 414);
    expect_parse("request line over max_request_line, head incomplete", b.p, line + 2, &lim,
                 CS_PARSE_ERROR, 414);
    /* one byte over: must fail once the CR arrives, before the line completes */
    expect_parse("request line one over max_request_line, LF missing", b.p, line + 1, &lim,
                 CS_PARSE_ERROR, 414);
    lim.max_request_line = line;
    expect_parse("incomplete request line at max_request_line", b.p, line, &lim, CS_PARSE_AGAIN, 0);
    expect_parse("incomplete request line at max_request_line + CR", b.p, line + 1, &lim,
                 CS_PARSE_AGAIN, 0);

    b.n = 0;
    sb_str(&b, "GET /");
    sb_rep(&b, 'a', 100);
    lim.max_request_line = 50;
    expect_parse("incomplete request line already too long", b.p, b.n, &lim, CS_PARSE_ERROR, 414);
    lim.max_request_line = 8190;
    b.n = 0;
    sb_str(&b, "GET /");
    sb_rep(&b, 'a', 9000);
    expect_parse("incomplete 9000-byte target, default limit", b.p, b.n, &lim, CS_PARSE_ERROR, 414);

    /* field line "X-Long: vvvv...v" of exactly 60 bytes */
    b.n = 0;
    sb_str(&b, "GET / HTTP/1.1\r\nHost: h\r\n");
    {
        size_t start = b.n;
        sb_str(&b, "X-Long: ");
        sb_rep(&b, 'v', 60 - 8);
        line = b.n - start;
        sb_str(&b, "\r\n\r\n");
        lim = lim_default;
        lim.max_field_size = line;
        expect_parse("field line at max_field_size", b.p, b.n, &lim, (int)b.n, 0);
        lim.max_field_size = line - 1;
        expect_parse("field line over max_field_size", b.p, b.n, &lim, CS_PARSE_ERROR, 431);
        expect_parse("field line over max_field_size, incomplete", b.p, start + line + 1, &lim,
                     CS_PARSE_ERROR, 431);
        lim.max_field_size = line - 2;
        expect_parse("field line two over max_field_size, CR missing", b.p, start + line, &lim,
                     CS_PARSE_ERROR, 431);
        lim.max_field_size = line - 1;
        lim.max_field_size = line;
        expect_parse("incomplete field line at max_field_size", b.p, start + line, &lim,
                     CS_PARSE_AGAIN, 0);
        expect_parse("incomplete field line at max_field_size + CR", b.p, start + line + 1, &lim,
                     CS_PARSE_AGAIN, 0);
    }
    b.n = 0;
    sb_str(&b, "GET / HTTP/1.1\r\nHost: h\r\nX: ");
    sb_rep(&b, 'v', 10000);
    lim = lim_default;
    expect_parse("incomplete 10000-byte field, default limit", b.p, b.n, &lim, CS_PARSE_ERROR, 431);
    b.n = 0;
    sb_str(&b, "GET / HTTP/1.1\r\nHost: h\r\nX: ");
    sb_rep(&b, 'v', 8000);
    sb_str(&b, "\r\n\r\n");
    expect_parse("8000-byte field under default limit", b.p, b.n, &lim, (int)b.n, 0);

    /* max_fields: exactly at the limit passes, one more fails */
    {
        int k;
        b.n = 0;
        sb_str(&b, "GET / HTTP/1.1\r\nHost: h\r\n");
        for (k = 1; k < 64; k++)
            sb_str(&b, "X-F: 1\r\n");
        sb_str(&b, "\r\n");
        lim = lim_default; /* 64 fields */
        expect_parse("64 fields with max_fields 64", b.p, b.n, &lim, (int)b.n, 0);
        b.n -= 2;
        sb_str(&b, "X-F: 1\r\n\r\n");
        expect_parse("65 fields with max_fields 64", b.p, b.n, &lim, CS_PARSE_ERROR, 431);
        b.n = 0;
        sb_str(&b, "GET / HTTP/1.1\r\nHost: h\r\n");
        for (k = 0; k < 200; k++)
            sb_str(&b, "X-F: 1\r\n");
        expect_parse("200 fields, head incomplete", b.p, b.n, &lim, CS_PARSE_ERROR, 431);
    }

    /* SIZE_MAX line limits must behave as "no limit", not wrap around */
    lim.max_request_line = (size_t)-1;
    lim.max_fields = 8;
    lim.max_field_size = (size_t)-1;
    b.n = 0;
    sb_str(&b, "GET /unlimited HTTP/1.1\r\nHost: h\r\nX: 1\r\n\r\n");
    expect_parse("SIZE_MAX line limits", b.p, b.n, &lim, (int)b.n, 0);
    expect_parse("SIZE_MAX line limits, incomplete", b.p, 20, &lim, CS_PARSE_AGAIN, 0);
    lim.max_request_line = (size_t)-2;
    lim.max_field_size = (size_t)-2;
    expect_parse("SIZE_MAX-1 line limits", b.p, b.n, &lim, (int)b.n, 0);
    free(b.p);
}

/* Every prefix of a long request with many kinds of lines is incomplete; and
 * feeding it byte by byte never reports an error. */
static void run_incremental_cases(void)
{
    static const char req[] =
        "\r\nPOST http://example.com:8080/a/b%20c?x=1&y=%32 HTTP/1.1\r\n"
        "Host: example.com:8080\r\n"
        "User-Agent: test/1.0\r\n"
        "Accept: */*\r\n"
        "X_Dropped: yes\r\n"
        "X-Empty:\r\n"
        "X-Obs: \200\377\r\n"
        "Content-Length: 11\r\n"
        "Expect: 100-continue\r\n"
        "Connection: keep-alive\r\n"
        "\r\n"
        "hello world";
    size_t len = sizeof req - 1, head = len - 11, i;
    cs_request r;
    int ret;

    begin_case();
    for (i = 0; i <= len; i++) {
        ret = parse_copy(req, i, &r, &lim_default, NULL, NULL, 0);
        if (i < head && ret != CS_PARSE_AGAIN) {
            note("prefix %zu: want CS_PARSE_AGAIN got %d", i, ret);
            break;
        }
        if (i >= head && ret != (int)head) {
            note("prefix %zu: want %zu got %d", i, head, ret);
            break;
        }
    }
    if (!why_len) {
        parse_copy(req, len, &r, &lim_default, NULL, NULL, 0);
        if (r.body != CS_BODY_LENGTH || r.content_length != 11 || !r.expect_continue ||
            !r.keep_alive || !r.absolute || r.dropped_headers != 1 || r.num_headers != 8)
            note("fields wrong after full parse (body %d cl %llu expect %u ka %u abs %u "
                 "dropped %zu nh %zu)",
                 (int)r.body, (unsigned long long)r.content_length, r.expect_continue,
                 r.keep_alive, r.absolute, r.dropped_headers, r.num_headers);
    }
    end_case("incremental: every prefix of a full request");
}

/* ------------------------------------------------------------------------ */
/* Chunked decoder                                                           */

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    int err;             /* 1: must fail */
    const char *data;    /* expected payload (success only) */
    size_t data_len;
    int done;            /* 1: cs_chunked_done() afterwards */
    size_t tail;         /* bytes left unconsumed after done */
} ck_case;

#define DATA(s) .data = (s), .data_len = sizeof(s) - 1

static const ck_case ck_cases[] = {
    {"chunk simple", IN("5\r\nhello\r\n0\r\n\r\n"), DATA("hello"), .done = 1},
    {"chunk two", IN("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), DATA("hello world"), .done = 1},
    {"chunk only last", IN("0\r\n\r\n"), DATA(""), .done = 1},
    {"chunk hex lowercase", IN("a\r\n0123456789\r\n0\r\n\r\n"), DATA("0123456789"), .done = 1},
    {"chunk hex uppercase", IN("A\r\n0123456789\r\n0\r\n\r\n"), DATA("0123456789"), .done = 1},
    {"chunk hex two digits lower",
     IN("1f\r\n0123456789abcdef0123456789abcde\r\n0\r\n\r\n"),
     DATA("0123456789abcdef0123456789abcde"), .done = 1},
    {"chunk hex two digits upper",
     IN("1F\r\n0123456789abcdef0123456789abcde\r\n0\r\n\r\n"),
     DATA("0123456789abcdef0123456789abcde"), .done = 1},
    {"chunk leading zeros", IN("005\r\nhello\r\n000\r\n\r\n"), DATA("hello"), .done = 1},
    {"chunk 16 hex digits", IN("000000000000000a\r\n0123456789\r\n0\r\n\r\n"), DATA("0123456789"),
     .done = 1},
    {"chunk binary payload", IN("6\r\n\r\n\000\377\r\n\r\n0\r\n\r\n"), DATA("\r\n\000\377\r\n"),
     .done = 1},
    {"chunk ext token", IN("5;a=b\r\nhello\r\n0\r\n\r\n"), DATA("hello"), .done = 1},
    {"chunk ext quoted", IN("5;a=\"q s\"\r\nhello\r\n0\r\n\r\n"), DATA("hello"), .done = 1},
    {"chunk ext name only", IN("5;foo\r\nhello\r\n0;bar\r\n\r\n"), DATA("hello"), .done = 1},
    {"chunk ext several", IN("5;a=b;c;d=\"x;y\"\r\nhello\r\n0;e=f\r\n\r\n"), DATA("hello"),
     .done = 1},
    {"chunk trailers", IN("5\r\nhello\r\n0\r\nFoo: bar\r\nX-Checksum: abc\r\n\r\n"),
     DATA("hello"), .done = 1},
    {"chunk trailer empty value", IN("0\r\nFoo:\r\n\r\n"), DATA(""), .done = 1},
    {"chunk trailer OWS", IN("0\r\nFoo: \t bar \t\r\n\r\n"), DATA(""), .done = 1},
    {"chunk trailer obs-text", IN("0\r\nFoo: \200\377\r\n\r\n"), DATA(""), .done = 1},
    {"chunk trailer long name",
     IN("0\r\nX-A-Really-Long-Trailer-Name-Longer-Than-32-Bytes: v\r\n\r\n"), DATA(""),
     .done = 1},
    {"chunk trailer Content-Lengthx allowed", IN("0\r\nContent-Lengthx: 5\r\n\r\n"), DATA(""),
     .done = 1},
    {"chunk trailer Hostx allowed", IN("0\r\nHostx: a\r\n\r\n"), DATA(""), .done = 1},
    {"chunk trailer X-Host allowed", IN("0\r\nX-Host: a\r\n\r\n"), DATA(""), .done = 1},
    {"chunk trailer long name with forbidden prefix",
     IN("0\r\nContent-Length-And-Then-Some-More-Bytes-Here: 5\r\n\r\n"), DATA(""), .done = 1},
    {"chunk stops after last chunk", IN("5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n"),
     DATA("hello"), .done = 1, .tail = 16},
    {"chunk stops after trailers", IN("0\r\nA: b\r\n\r\nXYZ"), DATA(""), .done = 1, .tail = 3},
    {"chunk incomplete data", IN("5\r\nhel"), DATA("hel"), .done = 0},
    {"chunk incomplete size line", IN("5;a=b"), DATA(""), .done = 0},
    {"chunk incomplete after data", IN("5\r\nhello\r\n"), DATA("hello"), .done = 0},
    {"chunk incomplete last chunk", IN("5\r\nhello\r\n0\r\n"), DATA("hello"), .done = 0},
    {"chunk incomplete final CR", IN("0\r\n\r"), DATA(""), .done = 0},
    {"chunk incomplete trailer", IN("0\r\nFoo: b"), DATA(""), .done = 0},
    {"chunk max size", IN("FFFFFFFFFFFFFFFF\r\nabc"), DATA("abc"), .done = 0},

    {"chunk err non-hex size", IN("g\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err non-hex after digit", IN("5g\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err empty size", IN("\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err empty size with ext", IN(";a=b\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err space before size", IN(" 5\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err plus sign", IN("+5\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err minus sign", IN("-5\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err 0x prefix", IN("0x5\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err size overflow 17 digits", IN("10000000000000000\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err size overflow 20 digits", IN("FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err data too long", IN("5\r\nhelloX\r\n0\r\n\r\n"), .err = 1},
    {"chunk err data too short", IN("5\r\nhell\r\n0\r\n\r\n"), .err = 1},
    {"chunk err LF after data", IN("5\r\nhello\n0\r\n\r\n"), .err = 1},
    {"chunk err CR junk after data", IN("5\r\nhello\rX\n0\r\n\r\n"), .err = 1},
    {"chunk err bare LF size line", IN("5\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err bare LF in ext", IN("5;a\nhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err bare CR size line", IN("5\rhello\r\n0\r\n\r\n"), .err = 1},
    {"chunk err bare LF last chunk", IN("5\r\nhello\r\n0\n\r\n"), .err = 1},
    {"chunk err bare LF final line", IN("5\r\nhello\r\n0\r\n\n"), .err = 1},
    {"chunk err bare CR final line", IN("0\r\n\rX"), .err = 1},
    {"chunk err forbidden trailer Content-Length", IN("0\r\nContent-Length: 5\r\n\r\n"), .err = 1},
    {"chunk err forbidden trailer content-length lower", IN("0\r\ncontent-length: 5\r\n\r\n"),
     .err = 1},
    {"chunk err forbidden trailer Transfer-Encoding",
     IN("0\r\nTransfer-Encoding: chunked\r\n\r\n"), .err = 1},
    {"chunk err forbidden trailer Host", IN("0\r\nHost: evil\r\n\r\n"), .err = 1},
    {"chunk err forbidden trailer HOST", IN("0\r\nHOST: evil\r\n\r\n"), .err = 1},
    {"chunk err forbidden trailer after another", IN("0\r\nA: 1\r\nHost: evil\r\n\r\n"), .err = 1},
    {"chunk err trailer no colon", IN("0\r\nFoo\r\n\r\n"), .err = 1},
    {"chunk err trailer space before colon", IN("0\r\nFoo : x\r\n\r\n"), .err = 1},
    {"chunk err trailer empty name", IN("0\r\n: x\r\n\r\n"), .err = 1},
    {"chunk err trailer obs-fold", IN("0\r\nFoo: x\r\n y\r\n\r\n"), .err = 1},
    {"chunk err trailer leading space", IN("0\r\n Foo: x\r\n\r\n"), .err = 1},
    {"chunk err trailer bad name char", IN("0\r\nF(o: x\r\n\r\n"), .err = 1},
    {"chunk err trailer CTL in value", IN("0\r\nFoo: a\001b\r\n\r\n"), .err = 1},
    {"chunk err trailer NUL in value", IN("0\r\nFoo: a\000b\r\n\r\n"), .err = 1},
    {"chunk err trailer DEL in value", IN("0\r\nFoo: a\177b\r\n\r\n"), .err = 1},
    {"chunk err trailer bare LF", IN("0\r\nFoo: x\n\r\n"), .err = 1},
    {"chunk err trailer bare CR", IN("0\r\nFoo: x\ry\r\n\r\n"), .err = 1},
};

typedef struct {
    int err;
    const char *error;
    int done;
    size_t consumed;
    char *out;
    size_t out_len;
    const char *bad;     /* contract violation seen while feeding */
} ck_result;

/* Feed in[0..len) as consecutive pieces of the given sizes (cycled; 0 = all at
 * once).  Each piece is copied to an exact-size heap block. */
static void ck_feed(const char *in, size_t len, const size_t *sizes, size_t nsizes,
                    ck_result *res)
{
    cs_chunked d;
    size_t pos = 0, k = 0;

    memset(res, 0, sizeof *res);
    res->out = malloc(len + 1);
    if (!res->out) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memset(&d, 0xA5, sizeof d);
    cs_chunked_init(&d);
    if (cs_chunked_done(&d))
        res->bad = "done right after init";

    while (pos < len && !res->err && !res->done && !res->bad) {
        size_t n = nsizes ? sizes[k++ % nsizes] : len;
        size_t off = 0;
        char *piece;
        if (n == 0 || n > len - pos)
            n = len - pos;
        piece = dup_exact(in + pos, n);
        while (off < n) {
            const char *data = (const char *)&d;   /* sentinel: not inside piece */
            size_t dl = 12345;
            ssize_t r = cs_chunked_decode(&d, piece + off, n - off, &data, &dl);
            if (r < 0) {
                res->err = 1;
                res->error = d.error;
                if (r != -1)
                    res->bad = "negative return other than -1";
                else if (!d.error)
                    res->bad = "error text not set";
                break;
            }
            if ((size_t)r > n - off) {
                res->bad = "consumed more than given";
                break;
            }
            if (dl) {
                if (!in_buf(piece + off, (size_t)r, data, dl)) {
                    res->bad = "data pointer outside the consumed input";
                    break;
                }
                if (data + dl != piece + off + r) {
                    res->bad = "call did not return right after the payload";
                    break;
                }
                memcpy(res->out + res->out_len, data, dl);
                res->out_len += dl;
            }
            off += (size_t)r;
            if (cs_chunked_done(&d)) {
                res->done = 1;
                break;
            }
            if (r == 0) {
                res->bad = "no progress on non-empty input";
                break;
            }
        }
        free(piece);
        pos += off;
    }
    res->consumed = pos;
    if (!res->err && !res->done && !res->bad) {
        /* empty input is accepted and consumes nothing */
        const char *data = NULL;
        size_t dl = 777;
        if (cs_chunked_decode(&d, in, 0, &data, &dl) != 0 || dl != 0)
            res->bad = "empty input not a no-op";
    }
    if (res->done) {
        /* after done, more input is not consumed */
        const char *data = NULL;
        size_t dl = 777;
        ssize_t r = cs_chunked_decode(&d, "X", 1, &data, &dl);
        if (r != 0 || dl != 0 || !cs_chunked_done(&d))
            res->bad = "input consumed after done";
    }
}

static void ck_compare(const char *label, const ck_result *a, const ck_result *b)
{
    if (b->bad)
        note("%s: %s", label, b->bad);
    else if (a->err != b->err)
        note("%s: error %d vs whole-input %d", label, b->err, a->err);
    else if (a->out_len != b->out_len || memcmp(a->out, b->out, a->out_len) != 0)
        note("%s: payload \"%s\" vs whole-input \"%s\"", label, show(b->out, b->out_len),
             show(a->out, a->out_len));
    else if (!a->err && (a->done != b->done || a->consumed != b->consumed))
        note("%s: done %d consumed %zu vs whole-input done %d consumed %zu", label, b->done,
             b->consumed, a->done, a->consumed);
}

static void run_ck(const char *name, const char *in, size_t len, int err, const char *data,
                   size_t data_len, int done, size_t tail)
{
    static const size_t one[] = {1}, mix1[] = {3, 1, 7, 2}, mix2[] = {2, 5, 1, 1, 11},
                        big[] = {64, 1, 4095};
    ck_result whole, part;

    begin_case();
    ck_feed(in, len, NULL, 0, &whole);
    if (whole.bad) {
        note("%s", whole.bad);
    } else if (err) {
        if (!whole.err)
            note("want error, got payload \"%s\" done %d", show(whole.out, whole.out_len),
                 whole.done);
    } else if (whole.err) {
        note("unexpected error: %s", whole.error ? whole.error : "-");
    } else {
        if (whole.out_len != data_len || memcmp(whole.out, data, data_len) != 0)
            note("payload: want \"%s\" got \"%s\"", show(data, data_len),
                 show(whole.out, whole.out_len));
        if (whole.done != done)
            note("done: want %d got %d", done, whole.done);
        else if (whole.consumed != len - (done ? tail : 0))
            note("consumed: want %zu got %zu", len - (done ? tail : 0), whole.consumed);
    }
    if (!why_len) {
        ck_feed(in, len, one, 1, &part);
        ck_compare("byte-at-a-time", &whole, &part);
        free(part.out);
        ck_feed(in, len, mix1, 4, &part);
        ck_compare("split 3,1,7,2", &whole, &part);
        free(part.out);
        ck_feed(in, len, mix2, 5, &part);
        ck_compare("split 2,5,1,1,11", &whole, &part);
        free(part.out);
        ck_feed(in, len, big, 3, &part);
        ck_compare("split 64,1,4095", &whole, &part);
        free(part.out);
    }
    free(whole.out);
    end_case(name);
}

static void run_chunk_built_cases(void)
{
    sbuf b = {0};
    int k;

    /* size line limit */
    sb_str(&b, "5;x=");
    sb_rep(&b, 'a', 100);
    sb_str(&b, "\r\nhello\r\n0\r\n\r\n");
    run_ck("chunk ext 100 bytes", b.p, b.n, 0, "hello", 5, 1, 0);
    b.n = 0;
    sb_str(&b, "5;x=");
    sb_rep(&b, 'a', CS_CHUNK_LINE_MAX + 10);
    sb_str(&b, "\r\nhello\r\n0\r\n\r\n");
    run_ck("chunk err size line over CS_CHUNK_LINE_MAX", b.p, b.n, 1, NULL, 0, 0, 0);
    b.n = 0;
    sb_str(&b, "5;x=");
    sb_rep(&b, 'a', CS_CHUNK_LINE_MAX + 10);
    run_ck("chunk err incomplete size line over CS_CHUNK_LINE_MAX", b.p, b.n, 1, NULL, 0, 0, 0);
    b.n = 0;
    sb_rep(&b, '0', CS_CHUNK_LINE_MAX + 10);
    sb_str(&b, "5\r\nhello\r\n0\r\n\r\n");
    run_ck("chunk err endless leading zeros", b.p, b.n, 1, NULL, 0, 0, 0);

    /* trailer count limit */
    b.n = 0;
    sb_str(&b, "3\r\nabc\r\n0\r\n");
    for (k = 0; k < CS_TRAILER_MAX_FIELDS; k++)
        sb_str(&b, "T: v\r\n");
    sb_str(&b, "\r\n");
    run_ck("chunk CS_TRAILER_MAX_FIELDS trailers", b.p, b.n, 0, "abc", 3, 1, 0);
    b.n -= 2;
    sb_str(&b, "T: v\r\n\r\n");
    run_ck("chunk err too many trailers", b.p, b.n, 1, NULL, 0, 0, 0);

    /* a larger body in many chunks */
    {
        sbuf want = {0};
        char hdr[32];
        b.n = 0;
        for (k = 1; k <= 40; k++) {
            int j;
            snprintf(hdr, sizeof hdr, "%x%s\r\n", k * 7, k % 3 ? "" : ";n=v");
            sb_str(&b, hdr);
            for (j = 0; j < k * 7; j++) {
                char c = (char)('A' + (j + k) % 26);
                sb_add(&b, &c, 1);
                sb_add(&want, &c, 1);
            }
            sb_str(&b, "\r\n");
        }
        sb_str(&b, "0\r\nX: y\r\n\r\n");
        run_ck("chunk 40 chunks", b.p, b.n, 0, want.p, want.n, 1, 0);
        free(want.p);
    }
    free(b.p);
}

int main(void)
{
    size_t i;

    for (i = 0; i < sizeof req_cases / sizeof req_cases[0]; i++)
        run_req_case(&req_cases[i]);
    run_limit_cases();
    run_incremental_cases();
    for (i = 0; i < sizeof ck_cases / sizeof ck_cases[0]; i++) {
        const ck_case *c = &ck_cases[i];
        run_ck(c->name, c->in, c->len, c->err, c->data, c->data_len, c->done, c->tail);
    }
    run_chunk_built_cases();

    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
