/* test_ws.c - unit tests for the WebSocket module declared in
 * src/corsac/core/ws.h: handshake checks, the Sec-WebSocket-Accept value,
 * permessage-deflate negotiation, the UTF-8 validator, frame headers,
 * unmasking, the incremental reader and the writer's compressor.
 *
 * Every byte stream given to the reader is copied piece by piece into heap
 * blocks of exactly the piece's size, so an AddressSanitizer build reports
 * any read past the end.  Each case counts once; a failed case prints one
 * line "FAIL <case>: <reasons>".  The last line is "N passed, N failed";
 * the exit status is 1 on any failure. */
#include "ws.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ------------------------------------------------------------------------ */
/* Result bookkeeping                                                        */

static int n_passed, n_failed;
static char why[4096];  /* reasons collected for the current case */
static size_t why_len;

static void begin_case(void)
{
    why[0] = '\0';
    why_len = 0;
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

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

/* For a case whose checks run in check_stream: count a failure of the
 * setup (notes since begin_case) on its own, count nothing otherwise. */
static int setup_failed(const char *name)
{
    if (why_len == 0)
        return 0;
    end_case(name);
    return 1;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Printable rendering of a byte string for failure messages. */
static const char *show(const void *sv, size_t n)
{
    static char bufs[4][200];
    static int which;
    const unsigned char *s = sv;
    char *out = bufs[which++ & 3];
    size_t o = 0, i;
    if (!s)
        return "(null)";
    for (i = 0; i < n && o < 150; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            snprintf(out + o, 8, "\\x%02x", c);
            o += 4;
        }
    }
    if (i < n) {
        snprintf(out + o, 32, "...(%zu bytes)", n);
        return out;
    }
    out[o] = '\0';
    return out;
}

/* xorshift32: deterministic splits and payloads */
static uint32_t rng_state = 0x9E3779B9u;

static uint32_t rnd(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

/* ------------------------------------------------------------------------ */
/* Growable byte buffer and client frame builder                             */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf;

static void b_add(buf *b, const void *s, size_t n)
{
    if (b->cap - b->n < n) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->n < n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void b_byte(buf *b, unsigned c)
{
    unsigned char ch = (unsigned char)c;
    b_add(b, &ch, 1);
}

static void b_free(buf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static unsigned mask_seq;

/* A frame header: first byte b0 as given, the payload length in the shortest
 * form (or the 64-bit form when long64), then the mask key when masked. */
static void put_hdr(buf *b, unsigned b0, uint64_t len, int masked, int long64, uint8_t mask[4])
{
    unsigned mbit = masked ? 0x80 : 0;
    b_byte(b, b0);
    if (len < 126 && !long64) {
        b_byte(b, mbit | (unsigned)len);
    } else if (len <= 0xFFFF && !long64) {
        b_byte(b, mbit | 126);
        b_byte(b, (unsigned)(len >> 8) & 0xFF);
        b_byte(b, (unsigned)len & 0xFF);
    } else {
        int i;
        b_byte(b, mbit | 127);
        for (i = 0; i < 8; i++)
            b_byte(b, (unsigned)(len >> (56 - 8 * i)) & 0xFF);
    }
    if (masked) {
        mask_seq++;
        mask[0] = (uint8_t)(0x37 + mask_seq * 13);
        mask[1] = (uint8_t)(0xFA ^ mask_seq);
        mask[2] = (uint8_t)(0x21 + mask_seq * 7);
        mask[3] = (uint8_t)(0x3D ^ (mask_seq * 29));
        b_add(b, mask, 4);
    }
}

/* A whole frame with an arbitrary first byte; masked as a client does. */
static void put_raw(buf *b, unsigned b0, const void *pl, size_t n, int masked)
{
    uint8_t mask[4];
    size_t i, at;
    put_hdr(b, b0, n, masked, 0, mask);
    at = b->n;
    b_add(b, pl, n);
    if (masked)
        for (i = 0; i < n; i++)
            b->p[at + i] ^= mask[i & 3];
}

static void put_frame(buf *b, int fin, int rsv1, int op, const void *pl, size_t n)
{
    put_raw(b, (fin ? 0x80u : 0) | (rsv1 ? 0x40u : 0) | (unsigned)op, pl, n, 1);
}

#define PUT_STR(b, fin, op, s) put_frame((b), (fin), 0, (op), (s), strlen(s))

static void put_close(buf *b, int code, const char *reason, size_t rlen)
{
    unsigned char pl[125];
    pl[0] = (unsigned char)(code >> 8);
    pl[1] = (unsigned char)code;
    memcpy(pl + 2, reason, rlen);
    put_frame(b, 1, 0, CS_WS_CLOSE, pl, rlen + 2);
}

/* ------------------------------------------------------------------------ */
/* Event recorder and feeding                                                */

typedef struct {
    char kind;          /* 'M' message, 'C' control, 'X' close */
    int op;             /* opcode, or the close code */
    unsigned char *p;
    size_t n;
} event;

#define MAX_EVENTS 64

typedef struct {
    event ev[MAX_EVENTS];
    int n;
    int bad;            /* a callback got a NULL pointer or too many events */
} recorder;

static void rec_add(recorder *r, char kind, int op, const char *p, size_t n)
{
    if (!p || r->n >= MAX_EVENTS) {
        r->bad = 1;
        return;
    }
    event *e = &r->ev[r->n++];
    e->kind = kind;
    e->op = op;
    e->p = xmalloc(n);
    memcpy(e->p, p, n);
    e->n = n;
}

static void rec_clear(recorder *r)
{
    int i;
    for (i = 0; i < r->n; i++)
        free(r->ev[i].p);
    r->n = 0;
    r->bad = 0;
}

static void on_message(void *ud, int op, const char *p, size_t n) { rec_add(ud, 'M', op, p, n); }
static void on_control(void *ud, int op, const char *p, size_t n) { rec_add(ud, 'C', op, p, n); }
static void on_close(void *ud, int code, const char *p, size_t n) { rec_add(ud, 'X', code, p, n); }

static const cs_ws_events EVENTS = {on_message, on_control, on_close};

typedef struct {
    char kind;
    int op;
    const char *p;
    size_t n;
} exp_ev;

#define EV(k, op, s) {(k), (op), (s), sizeof(s) - 1}

typedef struct {
    int rc, code;
    const char *why;
    size_t fail_piece;  /* index of the piece whose feed returned -1 */
    size_t buffered;    /* cs_ws_reader_buffered() at the end */
} outcome;

/* Feed in[0..len) to a fresh reader, in pieces ending at the ascending cut
 * offsets, each piece in its own exact-size heap block. */
static outcome feed_cuts(uint64_t max_size, const cs_ws_deflate_params *pmd, const unsigned char *in, size_t len,
                         const size_t *cuts, size_t ncuts, recorder *rec)
{
    outcome o = {0, 0, NULL, 0, 0};
    cs_ws_reader *r = cs_ws_reader_new(max_size, pmd);
    size_t start = 0, k;
    if (!r) {
        fprintf(stderr, "cs_ws_reader_new failed\n");
        exit(2);
    }
    for (k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        unsigned char *piece;
        int code = -1;
        const char *w = NULL;
        if (end < start)
            end = start;
        piece = xmalloc(end - start);
        memcpy(piece, in + start, end - start);
        o.rc = cs_ws_reader_feed(r, piece, end - start, &EVENTS, rec, &code, &w);
        free(piece);
        start = end;
        if (o.rc != 0) {
            o.code = code;
            o.why = w;
            o.fail_piece = k;
            break;
        }
    }
    o.buffered = cs_ws_reader_buffered(r);
    cs_ws_reader_free(r);
    return o;
}

static void check_events(const char *ctx, const recorder *rec, const exp_ev *exp, size_t nexp)
{
    size_t i;
    if (rec->bad)
        note("%s: a callback got NULL or too many events", ctx);
    if ((size_t)rec->n != nexp) {
        note("%s: %d events, want %zu", ctx, rec->n, nexp);
        for (i = 0; i < (size_t)rec->n && i < 4; i++)
            note("%s: got %c %d [%s]", ctx, rec->ev[i].kind, rec->ev[i].op, show(rec->ev[i].p, rec->ev[i].n));
        return;
    }
    for (i = 0; i < nexp; i++) {
        const event *e = &rec->ev[i];
        if (e->kind != exp[i].kind || e->op != exp[i].op || e->n != exp[i].n ||
            (e->n && memcmp(e->p, exp[i].p, e->n) != 0))
            note("%s: event %zu is %c %d [%s], want %c %d [%s]", ctx, i, e->kind, e->op, show(e->p, e->n),
                 exp[i].kind, exp[i].op, show(exp[i].p, exp[i].n));
    }
}

static void check_outcome(const char *ctx, const outcome *o, int want_code)
{
    if (want_code == 0 && o->rc != 0)
        note("%s: feed failed with %d (%s)", ctx, o->code, o->why ? o->why : "no reason");
    if (want_code != 0) {
        if (o->rc != -1)
            note("%s: feed returned %d, want -1 with code %d", ctx, o->rc, want_code);
        else if (o->code != want_code)
            note("%s: code %d (%s), want %d", ctx, o->code, o->why ? o->why : "no reason", want_code);
        else if (!o->why || !o->why[0])
            note("%s: no reason given", ctx);
    }
}

/* Run a stream whole, split in two at every offset (small inputs) or at
 * random offsets (large ones), byte by byte (small inputs), and in random
 * pieces; every run must give the same events and outcome. */
static void check_stream(const char *name, uint64_t max_size, const cs_ws_deflate_params *pmd, const unsigned char *in,
                         size_t len, const exp_ev *exp, size_t nexp, int want_code)
{
    recorder rec = {0};
    outcome o;
    char ctx[64];
    size_t k, cut[3];

    begin_case();
    o = feed_cuts(max_size, pmd, in, len, NULL, 0, &rec);
    check_outcome("whole", &o, want_code);
    check_events("whole", &rec, exp, nexp);
    rec_clear(&rec);

    for (k = 0; k <= len && why_len == 0; k += (len <= 3000 ? 1 : 1 + rnd() % (len / 40))) {
        cut[0] = k;
        o = feed_cuts(max_size, pmd, in, len, cut, 1, &rec);
        snprintf(ctx, sizeof ctx, "split at %zu", k);
        check_outcome(ctx, &o, want_code);
        check_events(ctx, &rec, exp, nexp);
        rec_clear(&rec);
    }
    if (len <= 3000 && why_len == 0) {
        size_t *all = xmalloc(len * sizeof *all);
        for (k = 0; k < len; k++)
            all[k] = k + 1;
        o = feed_cuts(max_size, pmd, in, len, all, len, &rec);
        check_outcome("byte by byte", &o, want_code);
        check_events("byte by byte", &rec, exp, nexp);
        rec_clear(&rec);
        free(all);
    }
    for (k = 0; k < 40 && why_len == 0 && len > 0; k++) {
        size_t a = rnd() % (len + 1), b = rnd() % (len + 1), c = rnd() % (len + 1), t;
        if (a > b)
            t = a, a = b, b = t;
        if (b > c)
            t = b, b = c, c = t;
        if (a > b)
            t = a, a = b, b = t;
        cut[0] = a, cut[1] = b, cut[2] = c;
        o = feed_cuts(max_size, pmd, in, len, cut, 3, &rec);
        snprintf(ctx, sizeof ctx, "split at %zu,%zu,%zu", a, b, c);
        check_outcome(ctx, &o, want_code);
        check_events(ctx, &rec, exp, nexp);
        rec_clear(&rec);
    }
    end_case(name);
}

/* ------------------------------------------------------------------------ */
/* Handshake                                                                 */

static void test_accept(void)
{
    static const struct {
        const char *key, *want;
    } cases[] = {
        {"dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="},
        {"x3JJHMbDL1EzLkh9GBhXDw==", "HSmrc0sMlYUkAGmm5OPpG2HaGWk="},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[CS_WS_ACCEPT_LEN + 8];
        char name[80];
        memset(out, 'Z', sizeof out);
        begin_case();
        cs_ws_accept_value(cases[i].key, strlen(cases[i].key), out);
        if (memcmp(out, cases[i].want, CS_WS_ACCEPT_LEN) != 0 || out[CS_WS_ACCEPT_LEN] != '\0')
            note("got [%s], want [%s]", show(out, CS_WS_ACCEPT_LEN + 1), cases[i].want);
        if (out[CS_WS_ACCEPT_LEN + 1] != 'Z')
            note("wrote past the NUL");
        snprintf(name, sizeof name, "accept value for %s", cases[i].key);
        end_case(name);
    }
}

/* Headers from "Name: value" strings (up to 8). */
typedef struct {
    cs_header h[8];
    size_t n;
} hdrs;

static void make_hdrs(hdrs *hs, const char *const *lines)
{
    hs->n = 0;
    for (; *lines && hs->n < 8; lines++) {
        const char *colon = strchr(*lines, ':');
        cs_header *h = &hs->h[hs->n++];
        const char *v = colon + 1;
        h->name = *lines;
        h->name_len = (size_t)(colon - *lines);
        while (*v == ' ')
            v++;
        h->value = v;
        h->value_len = strlen(v);
    }
}

#define GOOD_KEY "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
#define V13 "Sec-WebSocket-Version: 13"
#define COMMON "Host: example.com", "Upgrade: websocket", "Connection: Upgrade"

typedef struct {
    const char *name;
    const char *method;
    int minor;
    const char *lines[9];
    int want;
} hs_case;

static const hs_case hs_cases[] = {
    {"handshake valid", "GET", 1, {COMMON, GOOD_KEY, V13}, 0},
    {"handshake valid, other key and case", "GET", 1,
     {COMMON, "sec-websocket-key: x3JJHMbDL1EzLkh9GBhXDw==", "SEC-WEBSOCKET-VERSION: 13"}, 0},
    {"handshake key ending in A==", "GET", 1, {COMMON, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==", V13}, 0},
    {"handshake key ending in w== with + and /", "GET", 1,
     {COMMON, "Sec-WebSocket-Key: +/+/+/+/+/+/+/+/+/+/+w==", V13}, 0},
    {"handshake version 8", "GET", 1, {COMMON, GOOD_KEY, "Sec-WebSocket-Version: 8"}, 426},
    {"handshake version 14", "GET", 1, {COMMON, GOOD_KEY, "Sec-WebSocket-Version: 14"}, 426},
    {"handshake version 130", "GET", 1, {COMMON, GOOD_KEY, "Sec-WebSocket-Version: 130"}, 426},
    {"handshake version list", "GET", 1, {COMMON, GOOD_KEY, "Sec-WebSocket-Version: 13, 8"}, 426},
    {"handshake missing version", "GET", 1, {COMMON, GOOD_KEY}, 426},
    {"handshake two versions", "GET", 1, {COMMON, GOOD_KEY, V13, V13}, 400},
    {"handshake missing key", "GET", 1, {COMMON, V13}, 400},
    {"handshake key too short", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ==", V13}, 400},
    {"handshake key too long", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQQ==", V13}, 400},
    {"handshake key empty", "GET", 1, {COMMON, "Sec-WebSocket-Key: ", V13}, 400},
    {"handshake key no padding", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQAA", V13}, 400},
    {"handshake key one pad", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQA=", V13}, 400},
    {"handshake key bad char", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBs*SBub25jZQ==", V13}, 400},
    {"handshake key bad char first", "GET", 1, {COMMON, "Sec-WebSocket-Key: -GhlIHNhbXBsZSBub25jZQ==", V13}, 400},
    {"handshake key space inside", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBs ZSBub25jZQ==", V13}, 400},
    {"handshake key stray bits before ==", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==", V13},
     400},
    {"handshake key stray bits B==", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZB==", V13}, 400},
    {"handshake key = before ==", "GET", 1, {COMMON, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ===", V13}, 400},
    {"handshake two keys", "GET", 1, {COMMON, GOOD_KEY, GOOD_KEY, V13}, 400},
    {"handshake two different keys", "GET", 1,
     {COMMON, GOOD_KEY, "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==", V13}, 400},
    {"handshake POST", "POST", 1, {COMMON, GOOD_KEY, V13}, 400},
    {"handshake lowercase get", "get", 1, {COMMON, GOOD_KEY, V13}, 400},
    {"handshake GETX", "GETX", 1, {COMMON, GOOD_KEY, V13}, 400},
    {"handshake HTTP/1.0", "GET", 0, {COMMON, GOOD_KEY, V13}, 400},
};

static void test_handshake(void)
{
    size_t i;
    for (i = 0; i < sizeof hs_cases / sizeof hs_cases[0]; i++) {
        const hs_case *c = &hs_cases[i];
        hdrs hs;
        const char *key = NULL, *w = NULL;
        size_t key_len = 12345;
        int rc;
        make_hdrs(&hs, c->lines);
        begin_case();
        rc = cs_ws_check_handshake(c->method, strlen(c->method), c->minor, hs.h, hs.n, &key, &key_len, &w);
        if (rc != c->want)
            note("returned %d, want %d (%s)", rc, c->want, w ? w : "no reason");
        if (c->want == 0 && rc == 0) {
            size_t j;
            const cs_header *kh = NULL;
            for (j = 0; j < hs.n; j++)
                if (hs.h[j].name_len == 17 && (hs.h[j].name[14] | 0x20) == 'k')
                    kh = &hs.h[j];
            if (!kh || key != kh->value || key_len != 24)
                note("key [%s] (%zu), want the field's value", key ? show(key, key_len) : "(null)", key_len);
        }
        if (c->want != 0 && rc != 0 && (!w || !*w))
            note("no reason given");
        end_case(c->name);
    }
}

static void test_is_upgrade(void)
{
    static const struct {
        const char *name;
        const char *lines[4];
        int want;
    } cases[] = {
        {"upgrade websocket", {"Upgrade: websocket"}, 1},
        {"upgrade WebSocket case", {"UPGRADE: WebSocket"}, 1},
        {"upgrade list", {"Upgrade: h2c, websocket"}, 1},
        {"upgrade list tabs and spaces", {"Upgrade: foo ,\t WEBSOCKET \t, bar"}, 1},
        {"upgrade second field", {"Upgrade: h2c", "Upgrade: websocket"}, 1},
        {"upgrade other fields", {"Host: h", "Connection: upgrade"}, 0},
        {"upgrade h2c only", {"Upgrade: h2c"}, 0},
        {"upgrade websocketx", {"Upgrade: websocketx"}, 0},
        {"upgrade xwebsocket", {"Upgrade: xwebsocket"}, 0},
        {"upgrade websocket/13", {"Upgrade: websocket/13"}, 0},
        {"upgrade web socket", {"Upgrade: web socket"}, 0},
        {"upgrade empty", {"Upgrade: "}, 0},
        {"upgrade in another field", {"X-Upgrade: websocket", "Connection: websocket"}, 0},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hdrs hs;
        int rc;
        make_hdrs(&hs, cases[i].lines);
        begin_case();
        rc = cs_ws_is_upgrade(hs.h, hs.n);
        if (rc != cases[i].want)
            note("returned %d, want %d", rc, cases[i].want);
        end_case(cases[i].name);
    }
    begin_case();
    if (cs_ws_is_upgrade(NULL, 0) != 0)
        note("no headers: not an upgrade");
    end_case("upgrade no headers");
}

/* ------------------------------------------------------------------------ */
/* permessage-deflate negotiation                                            */

#define PMD "permessage-deflate"

typedef struct {
    const char *name;
    const char *v1, *v2;     /* Sec-WebSocket-Extensions values (NULL: absent) */
    int rc;
    const char *resp;        /* when accepted */
    int sctx, cctx, nocomp, bits;
} neg_case;

static const neg_case neg_cases[] = {
    {"pmd plain offer", PMD, NULL, 0, PMD, 0, 0, 0, 13},
    {"pmd offer case-insensitive", "PerMessage-Deflate", NULL, 0, PMD, 0, 0, 0, 13},
    {"pmd server_no_context_takeover", PMD "; server_no_context_takeover", NULL, 0,
     PMD "; server_no_context_takeover", 1, 0, 0, 13},
    {"pmd client_no_context_takeover", PMD "; client_no_context_takeover", NULL, 0,
     PMD "; client_no_context_takeover", 0, 1, 0, 13},
    {"pmd both no_context", PMD "; client_no_context_takeover; server_no_context_takeover", NULL, 0,
     PMD "; server_no_context_takeover; client_no_context_takeover", 1, 1, 0, 13},
    {"pmd client_max_window_bits bare", PMD "; client_max_window_bits", NULL, 0, PMD, 0, 0, 0, 13},
    {"pmd client_max_window_bits=10", PMD "; client_max_window_bits=10", NULL, 0,
     PMD "; client_max_window_bits=10", 0, 0, 0, 13},
    {"pmd client_max_window_bits=15", PMD "; client_max_window_bits=15", NULL, 0,
     PMD "; client_max_window_bits=15", 0, 0, 0, 13},
    {"pmd server_max_window_bits=10", PMD "; server_max_window_bits=10", NULL, 0,
     PMD "; server_max_window_bits=10", 0, 0, 0, 10},
    {"pmd server_max_window_bits=9", PMD "; server_max_window_bits=9", NULL, 0, PMD "; server_max_window_bits=9", 0,
     0, 0, 9},
    {"pmd server_max_window_bits=15", PMD "; server_max_window_bits=15", NULL, 0,
     PMD "; server_max_window_bits=15", 0, 0, 0, 13},
    {"pmd server_max_window_bits=8", PMD "; server_max_window_bits=8", NULL, 0, PMD "; server_max_window_bits=8", 0,
     0, 1, 9},
    {"pmd server_max_window_bits bare", PMD "; server_max_window_bits", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd quoted value", PMD "; server_max_window_bits=\"10\"", NULL, 0, PMD "; server_max_window_bits=10", 0, 0, 0,
     10},
    {"pmd quoted client value", PMD "; client_max_window_bits=\"12\"", NULL, 0, PMD "; client_max_window_bits=12", 0,
     0, 0, 13},
    {"pmd spaces around =", PMD " ; server_max_window_bits = 11 ;client_no_context_takeover", NULL, 0,
     PMD "; client_no_context_takeover; server_max_window_bits=11", 0, 1, 0, 11},
    {"pmd all params", PMD "; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; "
                           "client_max_window_bits=9",
     NULL, 0,
     PMD "; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; "
         "client_max_window_bits=9",
     1, 1, 0, 12},
    {"pmd unknown param declined, next taken", PMD "; foo, " PMD "; client_no_context_takeover", NULL, 0,
     PMD "; client_no_context_takeover", 0, 1, 0, 13},
    {"pmd unknown param only", PMD "; mystery=1", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd other extension first", "x-webkit-deflate-frame, " PMD, NULL, 0, PMD, 0, 0, 0, 13},
    {"pmd other extension with params first", "foo; a=\"x,y\"; b, " PMD "; server_no_context_takeover", NULL, 0,
     PMD "; server_no_context_takeover", 1, 0, 0, 13},
    {"pmd only others", "foo, bar; baz=1", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd duplicate server_no_context_takeover", PMD "; server_no_context_takeover; server_no_context_takeover",
     NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd duplicate client_no_context_takeover", PMD "; client_no_context_takeover; client_no_context_takeover",
     NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd duplicate server_max_window_bits", PMD "; server_max_window_bits=10; server_max_window_bits=10", NULL, -1,
     NULL, 0, 0, 0, 0},
    {"pmd duplicate client_max_window_bits", PMD "; client_max_window_bits; client_max_window_bits=10", NULL, -1,
     NULL, 0, 0, 0, 0},
    {"pmd duplicate declined, next taken", PMD "; server_max_window_bits=10; server_max_window_bits=11, " PMD, NULL,
     0, PMD, 0, 0, 0, 13},
    {"pmd no_context with a value", PMD "; server_no_context_takeover=1", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd server bits 7", PMD "; server_max_window_bits=7", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd server bits 16", PMD "; server_max_window_bits=16", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd server bits 08", PMD "; server_max_window_bits=08", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd client bits 7", PMD "; client_max_window_bits=7", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd client bits 16", PMD "; client_max_window_bits=16", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd client bits 08", PMD "; client_max_window_bits=08", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd server bits empty quotes", PMD "; server_max_window_bits=\"\"", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd server bits unterminated quote", PMD "; server_max_window_bits=\"10", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd bad bits then good offer", PMD "; server_max_window_bits=16, " PMD "; server_max_window_bits=15", NULL, 0,
     PMD "; server_max_window_bits=15", 0, 0, 0, 13},
    {"pmd garbage after name", PMD " x", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd prefix only", "permessage-deflat", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd longer name", "permessage-deflatex", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd empty value", "", NULL, -1, NULL, 0, 0, 0, 0},
    {"pmd second field", "foo", PMD "; server_no_context_takeover", 0, PMD "; server_no_context_takeover", 1, 0, 0,
     13},
    {"pmd first field wins", PMD "; client_no_context_takeover", PMD "; server_no_context_takeover", 0,
     PMD "; client_no_context_takeover", 0, 1, 0, 13},
    {"pmd bad first field, good second", PMD "; bogus", PMD, 0, PMD, 0, 0, 0, 13},
    {"pmd two bad fields", PMD "; bogus", PMD "; server_max_window_bits=7", -1, NULL, 0, 0, 0, 0},
};

static int negotiate(const char *v1, const char *v2, cs_ws_deflate_params *p, char *resp, size_t resp_len)
{
    const char *lines[5] = {"Host: h", NULL, NULL, NULL, NULL};
    char l1[300], l2[300];
    hdrs hs;
    int i = 1;
    if (v1) {
        snprintf(l1, sizeof l1, "Sec-WebSocket-Extensions: %s", v1);
        lines[i++] = l1;
    }
    lines[i++] = "Sec-WebSocket-Protocol: chat";
    if (v2) {
        snprintf(l2, sizeof l2, "sec-websocket-extensions: %s", v2);
        lines[i++] = l2;
    }
    make_hdrs(&hs, lines);
    /* the value ends where the header says, not at a NUL */
    return cs_ws_negotiate_deflate(hs.h, hs.n, p, resp, resp_len);
}

static void test_negotiate(void)
{
    size_t i;
    for (i = 0; i < sizeof neg_cases / sizeof neg_cases[0]; i++) {
        const neg_case *c = &neg_cases[i];
        cs_ws_deflate_params p;
        char resp[256];
        int rc;
        memset(&p, 0xA5, sizeof p);
        strcpy(resp, "untouched");
        begin_case();
        rc = negotiate(c->v1, c->v2, &p, resp, sizeof resp);
        if (rc != c->rc)
            note("returned %d, want %d (resp [%s])", rc, c->rc, resp);
        if (rc == 0 && c->rc == 0) {
            if (strcmp(resp, c->resp) != 0)
                note("response [%s], want [%s]", resp, c->resp);
            if (!p.enabled)
                note("enabled not set");
            if ((int)p.server_no_context != c->sctx || (int)p.client_no_context != c->cctx ||
                (int)p.no_compress != c->nocomp)
                note("flags sctx=%d cctx=%d nocomp=%d, want %d %d %d", (int)p.server_no_context,
                     (int)p.client_no_context, (int)p.no_compress, c->sctx, c->cctx, c->nocomp);
            if (p.server_bits != c->bits)
                note("server_bits %d, want %d", p.server_bits, c->bits);
        }
        if (rc != 0 && (p.enabled || p.server_no_context || p.client_no_context || p.no_compress))
            note("declined but params not cleared");
        end_case(c->name);
    }

    /* the value is bounded by value_len, not by a NUL */
    {
        cs_header h = {"Sec-WebSocket-Extensions", 24, PMD "; server_no_context_takeover", 18};
        cs_ws_deflate_params p;
        char resp[128];
        begin_case();
        if (cs_ws_negotiate_deflate(&h, 1, &p, resp, sizeof resp) != 0 || strcmp(resp, PMD) != 0 ||
            p.server_no_context)
            note("a value cut at its length: want plain " PMD ", got [%s]", resp);
        end_case("pmd value bounded by its length");
    }
    /* a response buffer too small declines rather than truncating */
    {
        cs_ws_deflate_params p;
        char resp[64];
        int rc;
        memset(resp, 'Q', sizeof resp);
        begin_case();
        rc = negotiate(PMD "; server_no_context_takeover; client_no_context_takeover", NULL, &p, resp, 30);
        if (rc != -1)
            note("returned %d with a 30-byte response buffer [%s]", rc, show(resp, 30));
        if (resp[30] != 'Q')
            note("wrote past resp_len");
        end_case("pmd response buffer too small");
    }
}

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                     */

/* Feed s whole, then byte by byte, then in two pieces at every offset; all
 * must agree with want (1 valid and complete, 0 invalid). */
static void utf8_case(const char *name, const char *s, size_t n, int want)
{
    cs_utf8 u;
    size_t i, k;
    int ok;
    unsigned char *p = xmalloc(n);
    memcpy(p, s, n);
    begin_case();
    memset(&u, 0, sizeof u);
    ok = cs_utf8_feed(&u, p, n) == 0 && cs_utf8_complete(&u);
    if (ok != want)
        note("whole: %s, want %s [%s]", ok ? "valid" : "invalid", want ? "valid" : "invalid", show(s, n));
    memset(&u, 0, sizeof u);
    ok = 1;
    for (i = 0; i < n && ok; i++)
        if (cs_utf8_feed(&u, p + i, 1) < 0)
            ok = 0;
    ok = ok && cs_utf8_complete(&u);
    if (ok != want)
        note("byte by byte: %s, want %s", ok ? "valid" : "invalid", want ? "valid" : "invalid");
    for (k = 0; k <= n; k++) {
        memset(&u, 0, sizeof u);
        ok = cs_utf8_feed(&u, p, k) == 0 && cs_utf8_feed(&u, p + k, n - k) == 0 && cs_utf8_complete(&u);
        if (ok != want) {
            note("split at %zu: %s", k, ok ? "valid" : "invalid");
            break;
        }
    }
    free(p);
    end_case(name);
}

#define U8(name, s, want) utf8_case(name, s, sizeof(s) - 1, want)

static void test_utf8(void)
{
    char name[96];
    size_t off;

    U8("utf8 empty", "", 1);
    U8("utf8 ascii", "hello, world", 1);
    U8("utf8 NUL and DEL", "\x00\x7f", 1);
    U8("utf8 2-byte min U+0080", "\xC2\x80", 1);
    U8("utf8 2-byte max U+07FF", "\xDF\xBF", 1);
    U8("utf8 3-byte min U+0800", "\xE0\xA0\x80", 1);
    U8("utf8 euro sign", "\xE2\x82\xAC", 1);
    U8("utf8 U+D7FF", "\xED\x9F\xBF", 1);
    U8("utf8 U+E000", "\xEE\x80\x80", 1);
    U8("utf8 U+FFFF", "\xEF\xBF\xBF", 1);
    U8("utf8 4-byte min U+10000", "\xF0\x90\x80\x80", 1);
    U8("utf8 U+1F600", "\xF0\x9F\x98\x80", 1);
    U8("utf8 U+FFFFF", "\xF3\xBF\xBF\xBF", 1);
    U8("utf8 max U+10FFFF", "\xF4\x8F\xBF\xBF", 1);
    U8("utf8 mixed", "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80z", 1);
    U8("utf8 greek and latin-1 sample",
       "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\x48\x65\x6c\x6c\x6f\x2d\xc2\xb5\x40\xc3\x9f\xc3\xb6\xc3\xa4\xc3"
       "\xbc\xc3\xa0\xc3\xa1\x2d\x55\x54\x46\x2d\x38\x21\x21",
       1);
    U8("utf8 overlong C0 80", "\xC0\x80", 0);
    U8("utf8 overlong C1 BF", "\xC1\xBF", 0);
    U8("utf8 overlong E0 80 80", "\xE0\x80\x80", 0);
    U8("utf8 overlong E0 9F BF", "\xE0\x9F\xBF", 0);
    U8("utf8 overlong F0 80 80 80", "\xF0\x80\x80\x80", 0);
    U8("utf8 overlong F0 8F BF BF", "\xF0\x8F\xBF\xBF", 0);
    U8("utf8 surrogate ED A0 80", "\xED\xA0\x80", 0);
    U8("utf8 surrogate ED BF BF", "\xED\xBF\xBF", 0);
    U8("utf8 surrogate pair", "\xED\xA0\x80\xED\xB0\x80", 0);
    U8("utf8 past U+10FFFF F4 90 80 80", "\xF4\x90\x80\x80", 0);
    U8("utf8 F5", "\xF5\x80\x80\x80", 0);
    U8("utf8 F8", "\xF8\x88\x80\x80\x80", 0);
    U8("utf8 FE", "\xFE", 0);
    U8("utf8 FF", "\xFF", 0);
    U8("utf8 lone continuation 80", "\x80", 0);
    U8("utf8 lone continuation BF after ascii", "abc\xBF", 0);
    U8("utf8 2-byte then ascii", "\xC3" "a", 0);
    U8("utf8 3-byte then ascii", "\xE2\x82" "a", 0);
    U8("utf8 continuation out of range C2 C0", "\xC2\xC0", 0);
    U8("utf8 truncated 2-byte", "\xC3", 0);
    U8("utf8 truncated 3-byte", "\xE2\x82", 0);
    U8("utf8 truncated 4-byte", "\xF0\x9F\x98", 0);
    U8("utf8 extra continuation", "\xC3\xA9\xA9", 0);

    /* a truncated sequence split across calls byte by byte keeps its state */
    {
        static const unsigned char seq[] = {0xF0, 0x9F, 0x98, 0x80};
        cs_utf8 u = {0};
        int i;
        begin_case();
        for (i = 0; i < 4; i++) {
            if (cs_utf8_feed(&u, seq + i, 1) != 0)
                note("byte %d rejected", i);
            if (cs_utf8_complete(&u) != (i == 3))
                note("complete=%d after byte %d", cs_utf8_complete(&u), i);
        }
        end_case("utf8 state across calls");
    }
    /* zero-length feeds change nothing */
    {
        cs_utf8 u = {0};
        begin_case();
        if (cs_utf8_feed(&u, (const unsigned char *)"\xE2", 1) != 0 || cs_utf8_feed(&u, NULL, 0) != 0 ||
            cs_utf8_complete(&u) || cs_utf8_feed(&u, (const unsigned char *)"\x82\xAC", 2) != 0 ||
            !cs_utf8_complete(&u))
            note("empty feed broke the state");
        end_case("utf8 empty feed mid-sequence");
    }

    /* long ASCII runs (the 8-byte fast path) with one bad byte at every
     * offset; also a valid multibyte character at every offset */
    for (off = 0; off <= 20; off++) {
        char s[64];
        size_t len = 40;
        memset(s, 'a', sizeof s);
        s[off] = (char)0xFF;
        snprintf(name, sizeof name, "utf8 ascii run, 0xFF at %zu", off);
        utf8_case(name, s, len, 0);
        memset(s, 'a', sizeof s);
        s[off] = (char)0x80;
        snprintf(name, sizeof name, "utf8 ascii run, 0x80 at %zu", off);
        utf8_case(name, s, len, 0);
        memset(s, 'a', sizeof s);
        memcpy(s + off, "\xE2\x82\xAC", 3);
        snprintf(name, sizeof name, "utf8 ascii run, euro at %zu", off);
        utf8_case(name, s, len, 1);
        memset(s, 'a', sizeof s);
        s[off] = (char)0xC3;
        snprintf(name, sizeof name, "utf8 ascii run, C3 + ascii at %zu", off);
        utf8_case(name, s, len, 0);
    }
    {
        char s[64];
        memset(s, 'b', sizeof s);
        s[39] = (char)0xC3;
        utf8_case("utf8 ascii run ending in a lead byte", s, 40, 0);
    }
}

/* ------------------------------------------------------------------------ */
/* Close codes, frame headers, unmasking                                     */

static void test_close_codes(void)
{
    static const int good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
                               4000, 4999};
    static const int bad[] = {-1,   0,    1,    999,  1004, 1005, 1006, 1015, 1016, 1100,
                              2000, 2999, 5000, 6000, 65535, 1 << 16, 1000 + 65536};
    size_t i;
    begin_case();
    for (i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!cs_ws_close_code_ok(good[i]))
            note("%d refused", good[i]);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (cs_ws_close_code_ok(bad[i]))
            note("%d accepted", bad[i]);
    end_case("close codes");
}

static void test_frame_header(void)
{
    static const struct {
        uint64_t len;
        int op, fin, rsv1;
        size_t hlen;
        unsigned char want[10];
    } cases[] = {
        {0, CS_WS_TEXT, 1, 0, 2, {0x81, 0x00}},
        {5, CS_WS_BINARY, 1, 1, 2, {0xC2, 0x05}},
        {125, CS_WS_TEXT, 0, 0, 2, {0x01, 0x7D}},
        {126, CS_WS_CONT, 1, 0, 4, {0x80, 0x7E, 0x00, 0x7E}},
        {65535, CS_WS_BINARY, 1, 0, 4, {0x82, 0x7E, 0xFF, 0xFF}},
        {65536, CS_WS_TEXT, 1, 1, 10, {0xC1, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0}},
        {(uint64_t)1 << 32, CS_WS_BINARY, 1, 0, 10, {0x82, 0x7F, 0, 0, 0, 1, 0, 0, 0, 0}},
        {0x0102030405060708ull, CS_WS_BINARY, 0, 0, 10, {0x02, 0x7F, 1, 2, 3, 4, 5, 6, 7, 8}},
        {2, CS_WS_CLOSE, 1, 0, 2, {0x88, 0x02}},
        {0, CS_WS_PING, 1, 0, 2, {0x89, 0x00}},
        {125, CS_WS_PONG, 1, 0, 2, {0x8A, 0x7D}},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char out[CS_WS_MAX_HEADER + 4];
        size_t n;
        char name[80];
        memset(out, 0xEE, sizeof out);
        begin_case();
        n = cs_ws_frame_header(out, cases[i].op, cases[i].fin, cases[i].rsv1, cases[i].len);
        if (n != cases[i].hlen)
            note("length %zu, want %zu", n, cases[i].hlen);
        else if (memcmp(out, cases[i].want, n) != 0)
            note("header [%s], want [%s]", show(out, n), show(cases[i].want, n));
        if (out[CS_WS_MAX_HEADER] != 0xEE)
            note("wrote past CS_WS_MAX_HEADER");
        snprintf(name, sizeof name, "frame header op %d len %llu", cases[i].op, (unsigned long long)cases[i].len);
        end_case(name);
    }
}

static void test_unmask(void)
{
    static const uint8_t masks[3][4] = {{0x12, 0x34, 0x56, 0x78}, {0xFF, 0x00, 0xA5, 0x5A}, {0, 0, 0, 0}};
    uint64_t offset;
    size_t n, start, m;
    for (m = 0; m < 3; m++) {
        for (offset = 0; offset < 8; offset++) {
            char name[64];
            begin_case();
            for (n = 0; n <= 41 && why_len == 0; n++) {
                for (start = 0; start < 3 && why_len == 0; start++) {
                    /* unaligned starts too */
                    unsigned char *blk = xmalloc(n + start), *got = blk + start, want[64];
                    size_t i;
                    for (i = 0; i < n; i++)
                        got[i] = want[i] = (unsigned char)(rnd() & 0xFF);
                    for (i = 0; i < n; i++)
                        want[i] ^= masks[m][(offset + i) % 4];
                    cs_ws_unmask(got, n, masks[m], offset);
                    if (n && memcmp(got, want, n) != 0)
                        note("n=%zu start=%zu: [%s], want [%s]", n, start, show(got, n), show(want, n));
                    free(blk);
                }
            }
            snprintf(name, sizeof name, "unmask mask %zu offset %llu", m, (unsigned long long)offset);
            end_case(name);
        }
    }
    /* a large offset: only offset mod 4 matters */
    {
        unsigned char a[19], b[19];
        size_t i;
        begin_case();
        for (i = 0; i < sizeof a; i++)
            a[i] = b[i] = (unsigned char)i;
        cs_ws_unmask(a, sizeof a, masks[0], ((uint64_t)1 << 40) + 7);
        cs_ws_unmask(b, sizeof b, masks[0], 3);
        if (memcmp(a, b, sizeof a) != 0)
            note("offset 2^40+7 differs from offset 3");
        cs_ws_unmask(a, sizeof a, masks[0], 3);
        for (i = 0; i < sizeof a; i++)
            if (a[i] != (unsigned char)i)
                note("unmasking twice is not the identity at %zu", i);
        end_case("unmask large offset");
    }
}

/* ------------------------------------------------------------------------ */
/* The reader: plain frames                                                  */

static void test_reader_basic(void)
{
    buf b = {0};

    PUT_STR(&b, 1, CS_WS_TEXT, "Hello");
    {
        exp_ev e[] = {EV('M', CS_WS_TEXT, "Hello")};
        check_stream("reader text message", 0, NULL, b.p, b.n, e, 1, 0);
    }
    b.n = 0;
    put_frame(&b, 1, 0, CS_WS_BINARY, "\x00\xFF\x80\xC0\x01", 5);
    {
        exp_ev e[] = {EV('M', CS_WS_BINARY, "\x00\xFF\x80\xC0\x01")};
        check_stream("reader binary message (not UTF-8)", 0, NULL, b.p, b.n, e, 1, 0);
    }
    b.n = 0;
    PUT_STR(&b, 1, CS_WS_TEXT, "");
    put_frame(&b, 1, 0, CS_WS_BINARY, "", 0);
    PUT_STR(&b, 0, CS_WS_TEXT, "");
    PUT_STR(&b, 1, CS_WS_CONT, "");
    {
        exp_ev e[] = {EV('M', CS_WS_TEXT, ""), EV('M', CS_WS_BINARY, ""), EV('M', CS_WS_TEXT, "")};
        check_stream("reader empty messages", 0, NULL, b.p, b.n, e, 3, 0);
    }
    b.n = 0;
    PUT_STR(&b, 1, CS_WS_TEXT, "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    {
        exp_ev e[] = {EV('M', CS_WS_TEXT, "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80")};
        check_stream("reader multibyte text", 0, NULL, b.p, b.n, e, 1, 0);
    }
    /* 126..65535 and 64-bit lengths */
    {
        static char big[70000];
        size_t i;
        for (i = 0; i < sizeof big; i++)
            big[i] = (char)('a' + i % 26);
        b.n = 0;
        put_frame(&b, 1, 0, CS_WS_TEXT, big, 126);
        put_frame(&b, 1, 0, CS_WS_BINARY, big, 300);
        {
            exp_ev e[] = {{'M', CS_WS_TEXT, big, 126}, {'M', CS_WS_BINARY, big, 300}};
            check_stream("reader 16-bit lengths", 0, NULL, b.p, b.n, e, 2, 0);
        }
        b.n = 0;
        put_frame(&b, 1, 0, CS_WS_TEXT, big, 65535);
        put_frame(&b, 1, 0, CS_WS_BINARY, big, sizeof big);
        {
            exp_ev e[] = {{'M', CS_WS_TEXT, big, 65535}, {'M', CS_WS_BINARY, big, sizeof big}};
            check_stream("reader 65535 and 64-bit lengths", 0, NULL, b.p, b.n, e, 2, 0);
        }
        /* a short payload with the 64-bit length form is still accepted */
        b.n = 0;
        {
            uint8_t mask[4];
            unsigned char pl[3] = {'a', 'b', 'c'};
            put_hdr(&b, 0x81, 3, 1, 1, mask);
            for (i = 0; i < 3; i++)
                pl[i] ^= mask[i];
            b_add(&b, pl, 3);
        }
        {
            exp_ev e[] = {EV('M', CS_WS_TEXT, "abc")};
            check_stream("reader non-minimal 64-bit length", 0, NULL, b.p, b.n, e, 1, 0);
        }
        /* many messages in a row; a large fragmented one leaves little buffered */
        b.n = 0;
        put_frame(&b, 0, 0, CS_WS_BINARY, big, 30000);
        put_frame(&b, 0, 0, CS_WS_CONT, big + 30000, 30000);
        put_frame(&b, 1, 0, CS_WS_CONT, big + 60000, 10000);
        PUT_STR(&b, 1, CS_WS_TEXT, "after");
        {
            exp_ev e[] = {{'M', CS_WS_BINARY, big, sizeof big}, EV('M', CS_WS_TEXT, "after")};
            recorder rec = {0};
            outcome o;
            check_stream("reader large fragmented message", 0, NULL, b.p, b.n, e, 2, 0);
            begin_case();
            o = feed_cuts(0, NULL, b.p, b.n, NULL, 0, &rec);
            check_outcome("whole", &o, 0);
            if (o.buffered > 4096)
                note("%zu bytes buffered after the messages", o.buffered);
            rec_clear(&rec);
            end_case("reader releases a large message buffer");
        }
    }

    /* fragmented messages with control frames in between */
    b.n = 0;
    PUT_STR(&b, 0, CS_WS_TEXT, "Hel");
    PUT_STR(&b, 1, CS_WS_PING, "are you there?");
    PUT_STR(&b, 0, CS_WS_CONT, "lo, ");
    PUT_STR(&b, 1, CS_WS_PONG, "");
    PUT_STR(&b, 1, CS_WS_CONT, "world");
    PUT_STR(&b, 1, CS_WS_PING, "");
    put_frame(&b, 0, 0, CS_WS_BINARY, "\x01", 1);
    put_frame(&b, 0, 0, CS_WS_CONT, "", 0);
    put_frame(&b, 1, 0, CS_WS_CONT, "\x02\x03", 2);
    {
        exp_ev e[] = {EV('C', CS_WS_PING, "are you there?"), EV('C', CS_WS_PONG, ""),
                      EV('M', CS_WS_TEXT, "Hello, world"), EV('C', CS_WS_PING, ""),
                      EV('M', CS_WS_BINARY, "\x01\x02\x03")};
        check_stream("reader fragments with control frames between", 0, NULL, b.p, b.n, e, 5, 0);
    }
    /* a UTF-8 character split across fragments */
    b.n = 0;
    PUT_STR(&b, 0, CS_WS_TEXT, "\xF0");
    PUT_STR(&b, 0, CS_WS_CONT, "\x9F");
    PUT_STR(&b, 1, CS_WS_PING, "x");
    PUT_STR(&b, 0, CS_WS_CONT, "\x98");
    PUT_STR(&b, 1, CS_WS_CONT, "\x80!");
    {
        exp_ev e[] = {EV('C', CS_WS_PING, "x"), EV('M', CS_WS_TEXT, "\xF0\x9F\x98\x80!")};
        check_stream("reader character split across fragments", 0, NULL, b.p, b.n, e, 2, 0);
    }
    /* control payload of exactly 125 bytes */
    {
        char pl[125];
        memset(pl, 'p', sizeof pl);
        b.n = 0;
        put_frame(&b, 1, 0, CS_WS_PING, pl, 125);
        put_frame(&b, 1, 0, CS_WS_PONG, pl, 125);
        {
            exp_ev e[] = {{'C', CS_WS_PING, pl, 125}, {'C', CS_WS_PONG, pl, 125}};
            check_stream("reader 125-byte control frames", 0, NULL, b.p, b.n, e, 2, 0);
        }
    }
    b_free(&b);
}

static void test_reader_close(void)
{
    buf b = {0};
    static const int bad_codes[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535};
    static const int good_codes[] = {1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 4000, 4999};
    size_t i;

    put_frame(&b, 1, 0, CS_WS_CLOSE, "", 0);
    {
        exp_ev e[] = {EV('X', CS_WS_NO_STATUS, "")};
        check_stream("reader close without payload -> 1005", 0, NULL, b.p, b.n, e, 1, 0);
    }
    b.n = 0;
    put_close(&b, 1000, "bye", 3);
    {
        exp_ev e[] = {EV('X', 1000, "bye")};
        check_stream("reader close with code and reason", 0, NULL, b.p, b.n, e, 1, 0);
    }
    b.n = 0;
    put_close(&b, 1001, "", 0);
    {
        exp_ev e[] = {EV('X', 1001, "")};
        check_stream("reader close with code only", 0, NULL, b.p, b.n, e, 1, 0);
    }
    b.n = 0;
    {
        char reason[123];
        memset(reason, 'r', sizeof reason);
        memcpy(reason + 100, "\xE2\x82\xAC", 3);
        put_close(&b, 4000, reason, sizeof reason);
        {
            exp_ev e[] = {{'X', 4000, reason, sizeof reason}};
            check_stream("reader close with a 123-byte reason", 0, NULL, b.p, b.n, e, 1, 0);
        }
    }
    for (i = 0; i < sizeof good_codes / sizeof good_codes[0]; i++) {
        char name[64];
        exp_ev e[] = {{'X', good_codes[i], "x", 1}};
        b.n = 0;
        put_close(&b, good_codes[i], "x", 1);
        snprintf(name, sizeof name, "reader close code %d accepted", good_codes[i]);
        check_stream(name, 0, NULL, b.p, b.n, e, 1, 0);
    }
    b.n = 0;
    put_frame(&b, 1, 0, CS_WS_CLOSE, "\x03", 1);
    check_stream("reader close with a 1-byte payload -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    for (i = 0; i < sizeof bad_codes / sizeof bad_codes[0]; i++) {
        char name[64];
        b.n = 0;
        put_close(&b, bad_codes[i], "", 0);
        snprintf(name, sizeof name, "reader close code %d -> 1002", bad_codes[i]);
        check_stream(name, 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    }
    b.n = 0;
    put_close(&b, 1000, "ok\xFF", 3);
    check_stream("reader close reason invalid UTF-8 -> 1007", 0, NULL, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
    b.n = 0;
    put_close(&b, 1000, "ok\xE2\x82", 4);
    check_stream("reader close reason truncated UTF-8 -> 1007", 0, NULL, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);

    /* everything after the close frame is ignored, even garbage */
    b.n = 0;
    PUT_STR(&b, 1, CS_WS_TEXT, "before");
    put_close(&b, 1000, "", 0);
    PUT_STR(&b, 1, CS_WS_TEXT, "after");
    put_raw(&b, 0xF3, "zz", 2, 0);
    b_add(&b, "\xFF\xFF\xFF\xFF", 4);
    {
        exp_ev e[] = {EV('M', CS_WS_TEXT, "before"), EV('X', 1000, "")};
        check_stream("reader ignores bytes after close", 0, NULL, b.p, b.n, e, 2, 0);
    }
    /* a close in the middle of a fragmented message */
    b.n = 0;
    PUT_STR(&b, 0, CS_WS_TEXT, "par");
    put_close(&b, 1001, "going", 5);
    PUT_STR(&b, 1, CS_WS_CONT, "tial");
    {
        exp_ev e[] = {EV('X', 1001, "going")};
        check_stream("reader close inside a fragmented message", 0, NULL, b.p, b.n, e, 1, 0);
    }
    /* feeding again after the close takes nothing and reports nothing */
    {
        recorder rec = {0};
        cs_ws_reader *r = cs_ws_reader_new(0, NULL);
        unsigned char *more = xmalloc(8);
        int code = 0, rc1, rc2;
        const char *w = NULL;
        begin_case();
        b.n = 0;
        put_close(&b, 1000, "", 0);
        rc1 = cs_ws_reader_feed(r, b.p, b.n, &EVENTS, &rec, &code, &w);
        memcpy(more, "\x81\x80\x00\x00\x00\x00\x00\x00", 8);
        rc2 = cs_ws_reader_feed(r, more, 8, &EVENTS, &rec, &code, &w);
        if (rc1 != 0 || rc2 != 0 || rec.n != 1)
            note("rc %d %d, %d events", rc1, rc2, rec.n);
        free(more);
        rec_clear(&rec);
        cs_ws_reader_free(r);
        end_case("reader feed after close");
    }
    b_free(&b);
}

static void test_reader_errors(void)
{
    buf b = {0};
    unsigned op;
    char big[200];
    memset(big, 'x', sizeof big);

    put_raw(&b, 0x81, "hi", 2, 0);
    check_stream("reader unmasked frame -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_raw(&b, 0x89, "", 0, 0);
    check_stream("reader unmasked ping -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_raw(&b, 0x80 | 0x20 | CS_WS_TEXT, "hi", 2, 1);
    check_stream("reader RSV2 -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_raw(&b, 0x80 | 0x10 | CS_WS_BINARY, "hi", 2, 1);
    check_stream("reader RSV3 -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_raw(&b, 0x80 | 0x40 | CS_WS_TEXT, "hi", 2, 1);
    check_stream("reader RSV1 without deflate -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_raw(&b, 0x80 | 0x40 | CS_WS_PING, "", 0, 1);
    check_stream("reader RSV1 on a ping -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    for (op = 3; op <= 15; op++) {
        char name[64];
        if (op >= 8 && op <= 10)
            continue;
        b.n = 0;
        put_raw(&b, 0x80 | op, "hi", 2, 1);
        snprintf(name, sizeof name, "reader reserved opcode %u -> 1002", op);
        check_stream(name, 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
        /* also inside a fragmented message, after a good message */
        b.n = 0;
        PUT_STR(&b, 1, CS_WS_TEXT, "ok");
        PUT_STR(&b, 0, CS_WS_TEXT, "frag");
        put_raw(&b, 0x80 | op, "", 0, 1);
        snprintf(name, sizeof name, "reader reserved opcode %u mid-message -> 1002", op);
        {
            exp_ev e[] = {EV('M', CS_WS_TEXT, "ok")};
            check_stream(name, 0, NULL, b.p, b.n, e, 1, CS_WS_PROTOCOL_ERROR);
        }
    }
    b.n = 0;
    put_frame(&b, 1, 0, CS_WS_PING, big, 126);
    check_stream("reader ping with 126-byte payload -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_frame(&b, 1, 0, CS_WS_CLOSE, big, 126);
    check_stream("reader close with 126-byte payload -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    {
        uint8_t mask[4];
        put_hdr(&b, 0x8A, 5, 1, 1, mask);   /* pong, 64-bit length form */
        b_add(&b, "hello", 5);
    }
    check_stream("reader pong with 64-bit length form -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_frame(&b, 0, 0, CS_WS_PING, "x", 1);
    check_stream("reader ping with FIN=0 -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_frame(&b, 0, 0, CS_WS_CLOSE, "", 0);
    check_stream("reader close with FIN=0 -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    PUT_STR(&b, 1, CS_WS_CONT, "orphan");
    check_stream("reader continuation without start -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    PUT_STR(&b, 0, CS_WS_TEXT, "a");
    PUT_STR(&b, 1, CS_WS_CONT, "b");
    PUT_STR(&b, 0, CS_WS_CONT, "c");
    {
        exp_ev e[] = {EV('M', CS_WS_TEXT, "ab")};
        check_stream("reader continuation after a finished message -> 1002", 0, NULL, b.p, b.n, e, 1,
                     CS_WS_PROTOCOL_ERROR);
    }
    b.n = 0;
    PUT_STR(&b, 0, CS_WS_TEXT, "a");
    PUT_STR(&b, 1, CS_WS_TEXT, "b");
    check_stream("reader text inside a fragmented message -> 1002", 0, NULL, b.p, b.n, NULL, 0,
                 CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    put_frame(&b, 0, 0, CS_WS_BINARY, "a", 1);
    put_frame(&b, 0, 0, CS_WS_BINARY, "b", 1);
    check_stream("reader binary inside a fragmented message -> 1002", 0, NULL, b.p, b.n, NULL, 0,
                 CS_WS_PROTOCOL_ERROR);
    b.n = 0;
    {
        static const unsigned char hdr[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4};
        b_add(&b, hdr, sizeof hdr);
    }
    check_stream("reader 64-bit length with the top bit -> 1002", 0, NULL, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
    /* errors after good events keep those events */
    b.n = 0;
    PUT_STR(&b, 1, CS_WS_TEXT, "one");
    PUT_STR(&b, 1, CS_WS_PING, "p");
    put_raw(&b, 0x81, "two", 3, 0);
    {
        exp_ev e[] = {EV('M', CS_WS_TEXT, "one"), EV('C', CS_WS_PING, "p")};
        check_stream("reader unmasked frame after good ones", 0, NULL, b.p, b.n, e, 2, CS_WS_PROTOCOL_ERROR);
    }
    b_free(&b);
}

static void test_reader_utf8(void)
{
    buf b = {0};
    PUT_STR(&b, 1, CS_WS_TEXT, "a\xFF" "b");
    check_stream("reader text with 0xFF -> 1007", 0, NULL, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
    b.n = 0;
    PUT_STR(&b, 1, CS_WS_TEXT, "abc\xE2\x82");
    check_stream("reader text ending mid-character -> 1007", 0, NULL, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
    b.n = 0;
    PUT_STR(&b, 1, CS_WS_TEXT, "\xED\xA0\x80");
    check_stream("reader text with a surrogate -> 1007", 0, NULL, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
    b.n = 0;
    PUT_STR(&b, 0, CS_WS_TEXT, "ab");
    PUT_STR(&b, 0, CS_WS_CONT, "\xC0\x80");
    PUT_STR(&b, 1, CS_WS_CONT, "cd");
    check_stream("reader bad UTF-8 in a middle fragment -> 1007", 0, NULL, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
    b.n = 0;
    PUT_STR(&b, 0, CS_WS_TEXT, "ab\xE2\x82");
    PUT_STR(&b, 1, CS_WS_CONT, "(");
    check_stream("reader character broken across fragments -> 1007", 0, NULL, b.p, b.n, NULL, 0,
                 CS_WS_INVALID_DATA);
    b.n = 0;
    PUT_STR(&b, 0, CS_WS_TEXT, "ab\xE2\x82");
    PUT_STR(&b, 1, CS_WS_CONT, "");
    check_stream("reader message ending mid-character in an empty last fragment -> 1007", 0, NULL, b.p, b.n, NULL, 0,
                 CS_WS_INVALID_DATA);

    /* fail fast: the error comes with the fragment that holds the bad byte */
    {
        static const struct {
            const char *name;
            const char *frag2;
            size_t len;
        } cases[] = {
            {"reader fails fast on a bad byte", "cd\xFF" "ef", 5},
            {"reader fails fast on a bad continuation", "\xE2(", 2},
            {"reader fails fast on an overlong", "\xC1\xBF", 2},
        };
        size_t i;
        for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            recorder rec = {0};
            outcome o;
            size_t cuts[2];
            begin_case();
            b.n = 0;
            PUT_STR(&b, 0, CS_WS_TEXT, "ab");
            cuts[0] = b.n;
            put_frame(&b, 0, 0, CS_WS_CONT, cases[i].frag2, cases[i].len);
            cuts[1] = b.n;
            PUT_STR(&b, 1, CS_WS_CONT, "the end");
            o = feed_cuts(0, NULL, b.p, b.n, cuts, 2, &rec);
            check_outcome("frames fed one by one", &o, CS_WS_INVALID_DATA);
            if (o.rc == -1 && o.fail_piece != 1)
                note("failed with piece %zu, want 1 (the fragment with the bad byte)", o.fail_piece);
            if (rec.n)
                note("%d events", rec.n);
            rec_clear(&rec);
            end_case(cases[i].name);
        }
    }
    /* ... even within a frame whose payload is still arriving */
    {
        recorder rec = {0};
        outcome o;
        size_t cuts[1];
        char pl[100];
        memset(pl, 'a', sizeof pl);
        pl[10] = (char)0xFF;
        begin_case();
        b.n = 0;
        put_frame(&b, 1, 0, CS_WS_TEXT, pl, sizeof pl);
        cuts[0] = b.n - 50;
        o = feed_cuts(0, NULL, b.p, b.n, cuts, 1, &rec);
        check_outcome("half a frame", &o, CS_WS_INVALID_DATA);
        if (o.rc == -1 && o.fail_piece != 0)
            note("failed with piece %zu, want 0", o.fail_piece);
        rec_clear(&rec);
        end_case("reader fails fast within a partial frame");
    }
    b_free(&b);
}

static void test_reader_max_size(void)
{
    buf b = {0};
    char pl[64];
    memset(pl, 'm', sizeof pl);

    put_frame(&b, 1, 0, CS_WS_TEXT, pl, 10);
    put_frame(&b, 1, 0, CS_WS_BINARY, pl, 10);
    {
        exp_ev e[] = {{'M', CS_WS_TEXT, pl, 10}, {'M', CS_WS_BINARY, pl, 10}};
        check_stream("reader max_size exactly reached", 10, NULL, b.p, b.n, e, 2, 0);
    }
    b.n = 0;
    put_frame(&b, 1, 0, CS_WS_TEXT, pl, 11);
    check_stream("reader max_size single frame -> 1009", 10, NULL, b.p, b.n, NULL, 0, CS_WS_TOO_BIG);
    b.n = 0;
    put_frame(&b, 0, 0, CS_WS_BINARY, pl, 6);
    put_frame(&b, 0, 0, CS_WS_CONT, pl, 4);
    put_frame(&b, 1, 0, CS_WS_CONT, pl, 0);
    {
        exp_ev e[] = {{'M', CS_WS_BINARY, pl, 10}};
        check_stream("reader max_size fragments up to the limit", 10, NULL, b.p, b.n, e, 1, 0);
    }
    b.n = 0;
    put_frame(&b, 0, 0, CS_WS_BINARY, pl, 6);
    put_frame(&b, 1, 0, CS_WS_CONT, pl, 5);
    check_stream("reader max_size fragments past the limit -> 1009", 10, NULL, b.p, b.n, NULL, 0, CS_WS_TOO_BIG);
    /* control frames do not count toward the limit */
    b.n = 0;
    put_frame(&b, 0, 0, CS_WS_TEXT, pl, 5);
    put_frame(&b, 1, 0, CS_WS_PING, pl, 50);
    put_frame(&b, 1, 0, CS_WS_CONT, pl, 5);
    {
        exp_ev e[] = {{'C', CS_WS_PING, pl, 50}, {'M', CS_WS_TEXT, pl, 10}};
        check_stream("reader max_size ignores control frames", 10, NULL, b.p, b.n, e, 2, 0);
    }
    /* the size counts per message */
    b.n = 0;
    put_frame(&b, 1, 0, CS_WS_TEXT, pl, 8);
    put_frame(&b, 0, 0, CS_WS_TEXT, pl, 8);
    put_frame(&b, 1, 0, CS_WS_CONT, pl, 2);
    {
        exp_ev e[] = {{'M', CS_WS_TEXT, pl, 8}, {'M', CS_WS_TEXT, pl, 10}};
        check_stream("reader max_size per message", 10, NULL, b.p, b.n, e, 2, 0);
    }

    /* the header alone is enough to refuse: no payload needed */
    {
        recorder rec = {0};
        outcome o;
        uint8_t mask[4];
        begin_case();
        b.n = 0;
        put_hdr(&b, 0x82, (uint64_t)1 << 40, 1, 0, mask);
        o = feed_cuts(1 << 20, NULL, b.p, b.n, NULL, 0, &rec);
        check_outcome("header announcing 2^40 bytes", &o, CS_WS_TOO_BIG);
        rec_clear(&rec);
        b.n = 0;
        put_frame(&b, 0, 0, CS_WS_TEXT, pl, 6);
        put_hdr(&b, 0x80, 5, 1, 0, mask);   /* the continuation's header, payload not sent */
        o = feed_cuts(10, NULL, b.p, b.n, NULL, 0, &rec);
        check_outcome("continuation header past the limit", &o, CS_WS_TOO_BIG);
        rec_clear(&rec);
        end_case("reader max_size from the header alone");
    }
    /* no limit: a frame announcing a lot just waits for it */
    {
        recorder rec = {0};
        outcome o;
        uint8_t mask[4];
        begin_case();
        b.n = 0;
        put_hdr(&b, 0x82, (uint64_t)1 << 40, 1, 0, mask);
        b_add(&b, pl, sizeof pl);
        o = feed_cuts(0, NULL, b.p, b.n, NULL, 0, &rec);
        check_outcome("no limit", &o, 0);
        if (rec.n)
            note("%d events", rec.n);
        rec_clear(&rec);
        end_case("reader no max_size waits for a huge frame");
    }
    b_free(&b);
}

/* ------------------------------------------------------------------------ */
/* permessage-deflate: the writer's compressor and the reader's inflater     */

static cs_ws_deflate_params params_for(const char *offer)
{
    cs_ws_deflate_params p;
    char resp[256];
    if (negotiate(offer, NULL, &p, resp, sizeof resp) != 0) {
        fprintf(stderr, "offer [%s] declined\n", offer);
        exit(2);
    }
    return p;
}

/* Compress a message with d and frame it as a client would: RSV1 on the
 * first frame, fragments of frag bytes of compressed data (0: one frame).
 * Returns the compressed length. */
static size_t put_deflated(buf *b, cs_ws_deflater *d, int op, const void *msg, size_t n, size_t frag)
{
    unsigned char *out = NULL;
    size_t out_len = 0, at = 0;
    int rc = cs_ws_deflate(d, msg, n, &out, &out_len);
    if (rc != 1) {
        note("cs_ws_deflate returned %d", rc);
        return 0;
    }
    if (!frag || frag >= out_len) {
        put_frame(b, 1, 1, op, out, out_len);
    } else {
        int first = 1;
        while (at < out_len) {
            size_t k = out_len - at < frag ? out_len - at : frag;
            put_frame(b, at + k == out_len, first, first ? op : CS_WS_CONT, out + at, k);
            first = 0;
            at += k;
        }
    }
    free(out);
    return out_len;
}

typedef struct {
    int op;
    const char *p;
    size_t n;
    size_t frag;
} msg_spec;

/* Compress the messages in a row with one deflater and check the reader
 * (same params) returns them. */
static void deflate_round_trip(const char *name, const char *offer, const msg_spec *msgs, size_t nmsg)
{
    cs_ws_deflate_params p = params_for(offer);
    cs_ws_deflater *d = cs_ws_deflater_new(&p);
    buf b = {0};
    exp_ev e[16];
    size_t i;
    begin_case();
    for (i = 0; i < nmsg; i++) {
        put_deflated(&b, d, msgs[i].op, msgs[i].p, msgs[i].n, msgs[i].frag);
        e[i].kind = 'M';
        e[i].op = msgs[i].op;
        e[i].p = msgs[i].p;
        e[i].n = msgs[i].n;
    }
    cs_ws_deflater_free(d);
    if (!setup_failed(name))
        check_stream(name, 0, &p, b.p, b.n, e, nmsg, 0);
    b_free(&b);
}

static void test_deflate(void)
{
    static char text[20000], bin[5000];
    size_t i;
    for (i = 0; i < sizeof text; i++)
        text[i] = "the quick brown fox jumps over the lazy dog "[i % 44];
    memcpy(text + 1000, "\xE2\x82\xAC\xF0\x9F\x98\x80", 7);
    for (i = 0; i < sizeof bin; i++)
        bin[i] = (char)(rnd() >> 7);

    {
        msg_spec m[] = {{CS_WS_TEXT, "", 0, 0},
                        {CS_WS_TEXT, "Hello", 5, 0},
                        {CS_WS_TEXT, "Hello", 5, 0},
                        {CS_WS_BINARY, bin, 300, 0},
                        {CS_WS_TEXT, text, 2000, 0},
                        {CS_WS_TEXT, text, 2000, 0},
                        {CS_WS_TEXT, "Hello, Hello, Hello", 19, 0}};
        deflate_round_trip("deflate round trip, context takeover", PMD, m, sizeof m / sizeof m[0]);
        deflate_round_trip("deflate round trip, no context",
                           PMD "; server_no_context_takeover; client_no_context_takeover", m, sizeof m / sizeof m[0]);
        deflate_round_trip("deflate round trip, window 9", PMD "; server_max_window_bits=9", m,
                           sizeof m / sizeof m[0]);
        deflate_round_trip("deflate round trip, server no context only", PMD "; server_no_context_takeover", m,
                           sizeof m / sizeof m[0]);
    }
    /* RFC 7692 7.2.3.6: an empty message still needs a payload (0x00) once
     * the compressor has been flushed before */
    {
        msg_spec m[] = {{CS_WS_TEXT, "Hello", 5, 0},
                        {CS_WS_TEXT, "", 0, 0},
                        {CS_WS_BINARY, "", 0, 0},
                        {CS_WS_TEXT, "Hello", 5, 0}};
        deflate_round_trip("deflate round trip, empty message after another", PMD, m, sizeof m / sizeof m[0]);
    }
    {
        msg_spec m[] = {{CS_WS_TEXT, text, sizeof text, 7},
                        {CS_WS_BINARY, bin, sizeof bin, 1000},
                        {CS_WS_TEXT, text, sizeof text, 1},
                        {CS_WS_TEXT, "x", 1, 1}};
        deflate_round_trip("deflate round trip, fragmented", PMD, m, sizeof m / sizeof m[0]);
    }

    /* context takeover really is used: a repeated message shrinks, and
     * without it the output repeats */
    {
        cs_ws_deflate_params p = params_for(PMD);
        cs_ws_deflate_params q = params_for(PMD "; server_no_context_takeover");
        cs_ws_deflater *d = cs_ws_deflater_new(&p), *dq = cs_ws_deflater_new(&q);
        unsigned char *o1 = NULL, *o2 = NULL, *q1 = NULL, *q2 = NULL;
        size_t l1 = 0, l2 = 0, m1 = 0, m2 = 0;
        begin_case();
        if (cs_ws_deflate(d, bin, 400, &o1, &l1) != 1 || cs_ws_deflate(d, bin, 400, &o2, &l2) != 1 ||
            cs_ws_deflate(dq, bin, 400, &q1, &m1) != 1 || cs_ws_deflate(dq, bin, 400, &q2, &m2) != 1) {
            note("cs_ws_deflate failed");
        } else {
            if (!(l2 < l1 / 4))
                note("context takeover: second copy %zu bytes, first %zu", l2, l1);
            if (m1 != m2 || memcmp(q1, q2, m1) != 0)
                note("no context: the two outputs differ (%zu, %zu bytes)", m1, m2);
            if (l1 >= 4 && memcmp(o1 + l1 - 4, "\x00\x00\xff\xff", 4) == 0)
                note("the 00 00 ff ff tail was not removed");
        }
        free(o1);
        free(o2);
        free(q1);
        free(q2);
        cs_ws_deflater_free(d);
        cs_ws_deflater_free(dq);
        end_case("deflate context takeover");
    }
    /* the writer's output, inflated by zlib directly as RFC 7692 7.2.2
     * says (append 00 00 ff ff to each message), gives the messages back */
    {
        static const char *const offers[] = {PMD, PMD "; server_no_context_takeover",
                                             PMD "; server_max_window_bits=9", PMD};
        static const size_t lens_a[] = {0, 5, 5, 300, 2000, 1, 4000}, lens_b[] = {5, 0, 0, 300};
        size_t oi;
        for (oi = 0; oi < 4; oi++) {
            cs_ws_deflate_params p = params_for(offers[oi]);
            cs_ws_deflater *d = cs_ws_deflater_new(&p);
            const size_t *lens = oi < 3 ? lens_a : lens_b;
            size_t nlens = oi < 3 ? sizeof lens_a / sizeof lens_a[0] : sizeof lens_b / sizeof lens_b[0];
            z_stream zs;
            char name[128];
            size_t mi;
            memset(&zs, 0, sizeof zs);
            begin_case();
            if (inflateInit2(&zs, -15) != Z_OK) {
                note("inflateInit2 failed");
            }
            for (mi = 0; mi < nlens && why_len == 0; mi++) {
                const char *msg = mi % 2 ? text : bin;
                unsigned char *o = NULL, *in, got[5000];
                size_t l = 0;
                int rc = cs_ws_deflate(d, msg, lens[mi], &o, &l);
                if (rc != 1) {
                    note("message %zu: cs_ws_deflate returned %d", mi, rc);
                    break;
                }
                in = xmalloc(l + 4);
                if (l)
                    memcpy(in, o, l);
                memcpy(in + l, "\x00\x00\xff\xff", 4);
                zs.next_in = in;
                zs.avail_in = (unsigned)(l + 4);
                zs.next_out = got;
                zs.avail_out = sizeof got;
                rc = inflate(&zs, Z_SYNC_FLUSH);
                if ((rc != Z_OK && rc != Z_BUF_ERROR) || zs.avail_in != 0)
                    note("message %zu (%zu bytes, %zu compressed): inflate %d, %u bytes left (%s)", mi, lens[mi], l,
                         rc, zs.avail_in, zs.msg ? zs.msg : "");
                else if (sizeof got - zs.avail_out != lens[mi] || memcmp(got, msg, lens[mi]) != 0)
                    note("message %zu: inflated to %zu bytes, want %zu", mi, sizeof got - zs.avail_out, lens[mi]);
                if (p.server_no_context)
                    inflateReset(&zs);
                free(in);
                free(o);
            }
            inflateEnd(&zs);
            cs_ws_deflater_free(d);
            snprintf(name, sizeof name, "deflate writer output inflates with zlib (%s%s)", offers[oi],
                     oi < 3 ? "" : ", empty messages after another");
            end_case(name);
        }
    }
    /* a 256-byte window: the writer sends plain */
    {
        cs_ws_deflate_params p = params_for(PMD "; server_max_window_bits=8");
        cs_ws_deflater *d = cs_ws_deflater_new(&p);
        unsigned char *o = NULL;
        size_t l = 0;
        begin_case();
        if (cs_ws_deflate(d, "hello", 5, &o, &l) != 0)
            note("server_max_window_bits=8 still compresses");
        free(o);
        cs_ws_deflater_free(d);
        end_case("deflate window 8 sends plain");
    }
    /* uncompressed messages are allowed between compressed ones */
    {
        cs_ws_deflate_params p = params_for(PMD);
        cs_ws_deflater *d = cs_ws_deflater_new(&p);
        buf b = {0};
        begin_case();
        put_deflated(&b, d, CS_WS_TEXT, text, 500, 0);
        PUT_STR(&b, 1, CS_WS_TEXT, "plain");
        PUT_STR(&b, 1, CS_WS_PING, "ping");
        put_deflated(&b, d, CS_WS_TEXT, text, 600, 0);
        put_frame(&b, 0, 0, CS_WS_BINARY, "\x01", 1);
        put_frame(&b, 1, 0, CS_WS_CONT, "\x02", 1);
        put_deflated(&b, d, CS_WS_BINARY, bin, 100, 0);
        cs_ws_deflater_free(d);
        setup_failed("deflate mixed setup");
        {
            exp_ev e[] = {{'M', CS_WS_TEXT, text, 500}, EV('M', CS_WS_TEXT, "plain"), EV('C', CS_WS_PING, "ping"),
                          {'M', CS_WS_TEXT, text, 600}, EV('M', CS_WS_BINARY, "\x01\x02"),
                          {'M', CS_WS_BINARY, bin, 100}};
            check_stream("deflate mixed with plain messages and control frames", 0, &p, b.p, b.n, e, 6, 0);
        }
        /* a ping in the middle of a compressed fragmented message */
        b.n = 0;
        d = cs_ws_deflater_new(&p);
        {
            unsigned char *o = NULL;
            size_t l = 0;
            if (cs_ws_deflate(d, text, 3000, &o, &l) != 1) {
                note("cs_ws_deflate failed");
            } else {
                put_frame(&b, 0, 1, CS_WS_TEXT, o, l / 2);
                PUT_STR(&b, 1, CS_WS_PING, "mid");
                put_frame(&b, 1, 0, CS_WS_CONT, o + l / 2, l - l / 2);
            }
            free(o);
        }
        cs_ws_deflater_free(d);
        {
            exp_ev e[] = {EV('C', CS_WS_PING, "mid"), {'M', CS_WS_TEXT, text, 3000}};
            check_stream("deflate ping inside a compressed message", 0, &p, b.p, b.n, e, 2, 0);
        }
        /* RSV1 on a continuation frame is an error */
        b.n = 0;
        put_frame(&b, 0, 1, CS_WS_TEXT, "", 0);
        put_frame(&b, 1, 1, CS_WS_CONT, "\x00", 1);
        check_stream("deflate RSV1 on a continuation -> 1002", 0, &p, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
        b.n = 0;
        put_frame(&b, 1, 1, CS_WS_PING, "", 0);
        check_stream("deflate RSV1 on a ping -> 1002", 0, &p, b.p, b.n, NULL, 0, CS_WS_PROTOCOL_ERROR);
        /* RFC 7692 7.2.3.6: an empty message as a single 0x00 byte */
        b.n = 0;
        put_frame(&b, 1, 1, CS_WS_TEXT, "\x00", 1);
        put_frame(&b, 1, 1, CS_WS_BINARY, "", 0);
        {
            exp_ev e[] = {EV('M', CS_WS_TEXT, ""), EV('M', CS_WS_BINARY, "")};
            check_stream("deflate empty messages", 0, &p, b.p, b.n, e, 2, 0);
        }
        /* RFC 7692 7.2.3 examples: "Hello" in one frame, in two fragments,
         * as a stored block, with BFINAL set, as two blocks */
        b.n = 0;
        put_frame(&b, 1, 1, CS_WS_TEXT, "\xf2\x48\xcd\xc9\xc9\x07\x00", 7);
        put_frame(&b, 0, 1, CS_WS_TEXT, "\xf2\x48\xcd", 3);
        put_frame(&b, 1, 0, CS_WS_CONT, "\xc9\xc9\x07\x00", 4);
        put_frame(&b, 1, 1, CS_WS_TEXT, "\x00\x05\x00\xfa\xff\x48\x65\x6c\x6c\x6f\x00", 11);
        put_frame(&b, 1, 1, CS_WS_TEXT, "\xf3\x48\xcd\xc9\xc9\x07\x00\x00", 8);
        put_frame(&b, 1, 1, CS_WS_TEXT, "\xf2\x48\x05\x00\x00\x00\xff\xff\xca\xc9\xc9\x07\x00", 13);
        {
            exp_ev e[] = {EV('M', CS_WS_TEXT, "Hello"), EV('M', CS_WS_TEXT, "Hello"), EV('M', CS_WS_TEXT, "Hello"),
                          EV('M', CS_WS_TEXT, "Hello"), EV('M', CS_WS_TEXT, "Hello")};
            check_stream("deflate RFC 7692 examples", 0, &p, b.p, b.n, e, 5, 0);
        }
        /* a sender that ends each message with a final block (BFINAL) */
        b.n = 0;
        {
            const char *msgs[3] = {"first message", "second message", "third"};
            for (i = 0; i < 3; i++) {
                z_stream zs;
                unsigned char out[256];
                memset(&zs, 0, sizeof zs);
                if (deflateInit2(&zs, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
                    note("deflateInit2 failed");
                    break;
                }
                zs.next_in = (unsigned char *)(uintptr_t)msgs[i];
                zs.avail_in = (unsigned)strlen(msgs[i]);
                zs.next_out = out;
                zs.avail_out = sizeof out;
                if (deflate(&zs, Z_FINISH) != Z_STREAM_END)
                    note("deflate did not finish");
                /* RFC 7692 7.2.1: append an empty stored block, drop its
                 * last 4 bytes: one 0x00 after the final block */
                out[sizeof out - zs.avail_out] = 0x00;
                put_frame(&b, 1, 1, CS_WS_TEXT, out, sizeof out - zs.avail_out + 1);
                deflateEnd(&zs);
            }
        }
        {
            exp_ev e[] = {EV('M', CS_WS_TEXT, "first message"), EV('M', CS_WS_TEXT, "second message"),
                          EV('M', CS_WS_TEXT, "third")};
            check_stream("deflate messages with BFINAL", 0, &p, b.p, b.n, e, 3, 0);
        }
        b_free(&b);
    }

    /* size limit applies to the inflated size */
    {
        cs_ws_deflate_params p = params_for(PMD);
        cs_ws_deflater *d = cs_ws_deflater_new(&p);
        static char as[100000];
        buf b = {0};
        size_t clen;
        begin_case();
        memset(as, 'a', sizeof as);
        put_deflated(&b, d, CS_WS_TEXT, as, 1000, 0);
        clen = put_deflated(&b, d, CS_WS_TEXT, as, sizeof as, 0);
        if (clen > 1000)
            note("100000 'a' compressed to %zu bytes", clen);
        cs_ws_deflater_free(d);
        setup_failed("deflate max_size setup");
        {
            exp_ev e[] = {{'M', CS_WS_TEXT, as, 1000}};
            check_stream("deflate inflating past max_size -> 1009", 1000, &p, b.p, b.n, e, 1, CS_WS_TOO_BIG);
        }
        /* the limit is on the inflated size, not the compressed one: a
         * message exactly at the limit passes */
        b.n = 0;
        d = cs_ws_deflater_new(&p);
        put_deflated(&b, d, CS_WS_BINARY, as, 5000, 0);
        put_deflated(&b, d, CS_WS_BINARY, bin, 5000, 0);
        cs_ws_deflater_free(d);
        {
            exp_ev e[] = {{'M', CS_WS_BINARY, as, 5000}, {'M', CS_WS_BINARY, bin, 5000}};
            check_stream("deflate max_size exactly reached", 5000, &p, b.p, b.n, e, 2, 0);
        }
        b.n = 0;
        d = cs_ws_deflater_new(&p);
        put_deflated(&b, d, CS_WS_BINARY, bin, 4000, 100);
        cs_ws_deflater_free(d);
        check_stream("deflate fragmented past max_size -> 1009", 3999, &p, b.p, b.n, NULL, 0, CS_WS_TOO_BIG);
        b_free(&b);
    }

    /* corrupt data and bad text */
    {
        cs_ws_deflate_params p = params_for(PMD);
        cs_ws_deflater *d;
        buf b = {0};
        put_frame(&b, 1, 1, CS_WS_TEXT, "\xFF\xFF\xFF\xFF", 4);
        check_stream("deflate corrupt data (block type 3) -> 1007", 0, &p, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
        b.n = 0;
        put_frame(&b, 1, 1, CS_WS_BINARY, "\x06\x00", 2);
        check_stream("deflate corrupt binary -> 1007", 0, &p, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
        b.n = 0;
        put_frame(&b, 1, 1, CS_WS_BINARY, "\x00\x05\x00\x00\x00", 5);
        check_stream("deflate stored block with a bad NLEN -> 1007", 0, &p, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
        b.n = 0;
        put_frame(&b, 1, 1, CS_WS_TEXT, "\xf2\x48\xcd\xc9\xc9\x07\x00", 7);
        put_frame(&b, 1, 1, CS_WS_TEXT, "\xff\xff\xff", 3);
        {
            exp_ev e[] = {EV('M', CS_WS_TEXT, "Hello")};
            recorder rec = {0};
            outcome o;
            begin_case();
            o = feed_cuts(0, &p, b.p, b.n, NULL, 0, &rec);
            check_outcome("whole", &o, CS_WS_INVALID_DATA);
            check_events("whole", &rec, e, 1);
            rec_clear(&rec);
            end_case("deflate garbage after a good message -> 1007");
        }
        /* a back-reference to before the start of the stream: the second
         * of two messages compressed with context, sent alone */
        b.n = 0;
        d = cs_ws_deflater_new(&p);
        {
            buf first = {0};
            begin_case();
            put_deflated(&first, d, CS_WS_BINARY, bin, 400, 0);
            put_deflated(&b, d, CS_WS_BINARY, bin, 400, 0);
            b_free(&first);
        }
        cs_ws_deflater_free(d);
        if (!setup_failed("deflate distance too far back setup")) {
            recorder rec = {0};
            outcome o;
            begin_case();
            o = feed_cuts(0, &p, b.p, b.n, NULL, 0, &rec);
            check_outcome("whole", &o, CS_WS_INVALID_DATA);
            rec_clear(&rec);
            end_case("deflate distance too far back -> 1007");
        }
        /* compressed text with invalid UTF-8 */
        b.n = 0;
        d = cs_ws_deflater_new(&p);
        put_deflated(&b, d, CS_WS_TEXT, "valid \xC0\x80 invalid", 17, 0);
        cs_ws_deflater_free(d);
        check_stream("deflate invalid UTF-8 -> 1007", 0, &p, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
        b.n = 0;
        d = cs_ws_deflater_new(&p);
        put_deflated(&b, d, CS_WS_TEXT, "ends mid-character \xE2\x82", 21, 0);
        cs_ws_deflater_free(d);
        check_stream("deflate text ending mid-character -> 1007", 0, &p, b.p, b.n, NULL, 0, CS_WS_INVALID_DATA);
        /* fail fast in a compressed fragmented message */
        {
            static char t[6000];
            recorder rec = {0};
            outcome o;
            unsigned char *out = NULL;
            size_t out_len = 0, cuts[2];
            memset(t, 'k', sizeof t);
            t[100] = (char)0xFF;
            begin_case();
            b.n = 0;
            d = cs_ws_deflater_new(&p);
            if (cs_ws_deflate(d, t, sizeof t, &out, &out_len) != 1 || out_len < 10) {
                note("cs_ws_deflate failed");
            } else {
                put_frame(&b, 0, 1, CS_WS_TEXT, out, out_len - 2);
                cuts[0] = b.n;
                put_frame(&b, 1, 0, CS_WS_CONT, out + out_len - 2, 2);
                cuts[1] = b.n;
                o = feed_cuts(0, &p, b.p, b.n, cuts, 2, &rec);
                check_outcome("frames one by one", &o, CS_WS_INVALID_DATA);
                if (o.rc == -1 && o.fail_piece != 0)
                    note("failed with piece %zu, want 0", o.fail_piece);
            }
            free(out);
            cs_ws_deflater_free(d);
            rec_clear(&rec);
            end_case("deflate fails fast on bad UTF-8");
        }
        b_free(&b);
    }
}

int main(void)
{
    test_accept();
    test_handshake();
    test_is_upgrade();
    test_negotiate();
    test_utf8();
    test_close_codes();
    test_frame_header();
    test_unmask();
    test_reader_basic();
    test_reader_close();
    test_reader_errors();
    test_reader_utf8();
    test_reader_max_size();
    test_deflate();

    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
