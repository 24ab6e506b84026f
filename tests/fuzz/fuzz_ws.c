/* fuzz_ws.c - libFuzzer target for the WebSocket module (ws.h).
 *
 * Input layout: one option byte, then the bytes a client sends.
 *   bit 0     max_size small (256) or large (1 MiB)
 *   bit 1     permessage-deflate on, with parameters negotiated once from a
 *             fixed offer (bit 2: the offer adds client_no_context_takeover)
 *   bits 3-7  the largest piece when the stream is fed split (1..32)
 *
 * The stream is read three times by fresh readers: whole, in pseudo-random
 * pieces and byte by byte, each piece in its own exact-size heap block.  The
 * events callbacks check the contract of ws.h as they go:
 *   - messages are text or binary and at most max_size bytes; text is valid
 *     UTF-8 by an independent decoder;
 *   - pings and pongs carry at most 125 bytes;
 *   - a close comes at most once, last, with 1005 and no reason or a code a
 *     peer may send, and a valid UTF-8 reason of at most 123 bytes;
 *   - a failure gives -1 with 1002, 1007, 1009 or 1011 and a reason.
 * All three runs must deliver the same events and agree on failure (and on
 * the close code, except 1007/1009 for compressed data, which can trip in
 * either order depending on how the inflater's output is cut).
 *
 * With deflate on, the stream is also cut into up to 8 messages that the
 * writer compresses (cs_ws_deflate) and a reader must give back unchanged.
 *
 * The same input also drives the header functions: split at the first
 * newline, it is offered as two Sec-WebSocket-Extensions values to
 * cs_ws_negotiate_deflate (with an exact-size response buffer), as the key
 * and version of a handshake, and as an Upgrade value. */
#include "ws.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                        \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "fuzz_ws: invariant failed: %s (line %d)\n", #cond, __LINE__);                \
            abort();                                                                                       \
        }                                                                                                  \
    } while (0)

/* Independent UTF-8 check: decode each code point and test its range. */
static int utf8_ok(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i], need, k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0)
            need = 1, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0)
            need = 2, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0)
            need = 3, cp = c & 0x07;
        else
            return 0;
        if (n - i <= need)
            return 0;   /* truncated */
        for (k = 1; k <= need; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        if ((need == 1 && cp < 0x80) || (need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000))
            return 0;   /* overlong */
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

static int peer_close_code(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

typedef struct {
    uint64_t max_size;
    uint64_t hash;      /* FNV-1a over every event */
    unsigned events;
    int closed;
} run_state;

static void mix(run_state *s, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i;
    for (i = 0; i < n; i++) {
        s->hash ^= b[i];
        s->hash *= 0x100000001b3ull;
    }
}

static void mix_event(run_state *s, int kind, int op, const char *p, size_t n)
{
    uint64_t len = n;
    mix(s, &kind, sizeof kind);
    mix(s, &op, sizeof op);
    mix(s, &len, sizeof len);
    mix(s, p, n);
    s->events++;
}

static void on_message(void *ud, int op, const char *p, size_t n)
{
    run_state *s = ud;
    CHECK(!s->closed);
    CHECK(op == CS_WS_TEXT || op == CS_WS_BINARY);
    CHECK(p != NULL);
    CHECK(n <= s->max_size);
    if (op == CS_WS_TEXT)
        CHECK(utf8_ok((const unsigned char *)p, n));
    mix_event(s, 'M', op, p, n);
}

static void on_control(void *ud, int op, const char *p, size_t n)
{
    run_state *s = ud;
    CHECK(!s->closed);
    CHECK(op == CS_WS_PING || op == CS_WS_PONG);
    CHECK(p != NULL || n == 0);
    CHECK(n <= 125);
    mix_event(s, 'C', op, p, n);
}

static void on_close(void *ud, int code, const char *p, size_t n)
{
    run_state *s = ud;
    CHECK(!s->closed);
    CHECK(p != NULL || n == 0);
    CHECK(n <= 123);
    if (code == CS_WS_NO_STATUS)
        CHECK(n == 0);
    else
        CHECK(peer_close_code(code));
    CHECK(utf8_ok((const unsigned char *)p, n));
    s->closed = 1;
    mix_event(s, 'X', code, p, n);
}

static const cs_ws_events EVENTS = {on_message, on_control, on_close};

typedef struct {
    run_state s;
    int rc, code;
} result;

/* Read body[0..len) with a fresh reader; max_piece 0: one piece. */
static void read_stream(const unsigned char *body, size_t len, uint64_t max_size, const cs_ws_deflate_params *pmd,
                        uint32_t seed, size_t max_piece, result *res)
{
    cs_ws_reader *r = cs_ws_reader_new(max_size, pmd);
    size_t pos = 0;
    uint32_t x = seed | 1u;
    CHECK(r != NULL);
    memset(res, 0, sizeof *res);
    res->s.max_size = max_size;
    res->s.hash = 0xcbf29ce484222325ull;
    while (pos < len || pos == 0) {
        size_t n = len - pos;
        unsigned char *piece;
        int code = -1;
        const char *why = NULL;
        if (max_piece) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if (n > (size_t)(x % max_piece) + 1)
                n = (size_t)(x % max_piece) + 1;
        }
        piece = malloc(n ? n : 1);
        CHECK(piece != NULL);
        if (n)
            memcpy(piece, body + pos, n);
        res->rc = cs_ws_reader_feed(r, piece, n, &EVENTS, &res->s, &code, &why);
        free(piece);
        pos += n;
        if (res->rc != 0) {
            CHECK(res->rc == -1);
            CHECK(code == CS_WS_PROTOCOL_ERROR || code == CS_WS_INVALID_DATA || code == CS_WS_TOO_BIG ||
                  code == CS_WS_INTERNAL_ERROR);
            CHECK(why != NULL && why[0] != '\0');
            res->code = code;
            break;
        }
        if (len == 0)
            break;
    }
    cs_ws_reader_free(r);
}

static void same(const result *a, const result *b, int deflate)
{
    CHECK(a->rc == b->rc);
    CHECK(a->s.events == b->s.events);
    CHECK(a->s.hash == b->s.hash);
    CHECK(a->s.closed == b->s.closed);
    if (a->rc != 0 && a->code != b->code)
        CHECK(deflate && (a->code == CS_WS_INVALID_DATA || a->code == CS_WS_TOO_BIG) &&
              (b->code == CS_WS_INVALID_DATA || b->code == CS_WS_TOO_BIG));
}

/* ---- writer to reader ------------------------------------------------------- */

typedef struct {
    const unsigned char *want[8];
    size_t want_len[8];
    int want_op[8];
    unsigned got;
} rt_state;

static void rt_message(void *ud, int op, const char *p, size_t n)
{
    rt_state *s = ud;
    CHECK(s->got < 8);
    CHECK(op == s->want_op[s->got] && n == s->want_len[s->got]);
    CHECK(n == 0 || memcmp(p, s->want[s->got], n) == 0);
    s->got++;
}

static void rt_other(void *ud, int op, const char *p, size_t n)
{
    (void)ud, (void)op, (void)p, (void)n;
    CHECK(0);
}

static const cs_ws_events RT_EVENTS = {rt_message, rt_other, rt_other};

static void append(unsigned char **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (*cap - *len < n) {
        while (*cap - *len < n)
            *cap = *cap ? *cap * 2 : 256;
        *buf = realloc(*buf, *cap);
        CHECK(*buf != NULL);
    }
    if (n)
        memcpy(*buf + *len, p, n);
    *len += n;
}

/* Cut body into up to 8 messages, compress each with the writer, frame them
 * as a client would (RSV1 on the first fragment, masked, fragmented at
 * pseudo-random points) and check a reader with the same parameters gives
 * them back. */
static void round_trip(const unsigned char *body, size_t len, const cs_ws_deflate_params *pmd, uint32_t seed)
{
    cs_ws_deflater *d = cs_ws_deflater_new(pmd);
    cs_ws_reader *r = cs_ws_reader_new(0, pmd);
    unsigned char *wire = NULL;
    size_t wire_len = 0, wire_cap = 0, pos = 0;
    uint32_t x = seed | 1u;
    rt_state st;
    unsigned i, nmsg;
    int code = 0;
    const char *why = NULL;

    CHECK(d && r);
    memset(&st, 0, sizeof st);
    nmsg = 1 + seed % 8;
    for (i = 0; i < nmsg; i++) {
        size_t n = len - pos, off = 0;
        unsigned char *out = NULL;
        size_t out_len = 0;
        int rc;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (i + 1 < nmsg && n > x % 64)
            n = x % 64;
        st.want[i] = body + pos;
        st.want_len[i] = n;
        st.want_op[i] = utf8_ok(body + pos, n) ? CS_WS_TEXT : CS_WS_BINARY;
        rc = cs_ws_deflate(d, (const char *)body + pos, n, &out, &out_len);
        CHECK(rc == 1);
        do {
            /* fragments of 1..16 bytes when x says so, else one frame */
            size_t k = out_len - off;
            unsigned char hdr[14], mask[4] = {(unsigned char)x, (unsigned char)(x >> 8), 0x5A, 0xC3};
            size_t j, at;
            if ((x & 0x100) && k > (x >> 9) % 16 + 1)
                k = (x >> 9) % 16 + 1;
            hdr[0] = (unsigned char)((off + k == out_len ? 0x80 : 0) | (off == 0 ? 0x40 | st.want_op[i] : 0));
            CHECK(k < 65536);
            if (k < 126) {
                hdr[1] = (unsigned char)(0x80 | k);
                j = 2;
            } else {
                hdr[1] = 0x80 | 126;
                hdr[2] = (unsigned char)(k >> 8);
                hdr[3] = (unsigned char)k;
                j = 4;
            }
            memcpy(hdr + j, mask, 4);
            append(&wire, &wire_len, &wire_cap, hdr, j + 4);
            at = wire_len;
            append(&wire, &wire_len, &wire_cap, out + off, k);
            for (j = 0; j < k; j++)
                wire[at + j] ^= mask[j & 3];
            off += k;
        } while (off < out_len);
        free(out);
        pos += n;
    }
    CHECK(cs_ws_reader_feed(r, wire, wire_len, &RT_EVENTS, &st, &code, &why) == 0);
    CHECK(st.got == nmsg);
    free(wire);
    cs_ws_deflater_free(d);
    cs_ws_reader_free(r);
}

/* ---- header functions ------------------------------------------------------ */

static void fuzz_headers(const unsigned char *data, size_t size)
{
    const unsigned char *nl = memchr(data, '\n', size);
    size_t l1 = nl ? (size_t)(nl - data) : size;
    size_t l2 = nl ? size - l1 - 1 : 0;
    /* exact-size copies: the values are not NUL-terminated */
    char *v1 = malloc(l1 ? l1 : 1), *v2 = malloc(l2 ? l2 : 1);
    cs_header h[3];
    cs_ws_deflate_params p;
    size_t resp_len = size ? (size_t)(data[size - 1] % 160) + 1 : 1;
    char *resp = malloc(resp_len);
    int rc;

    CHECK(v1 && v2 && resp);
    if (l1)
        memcpy(v1, data, l1);
    if (l2)
        memcpy(v2, nl + 1, l2);

    h[0] = (cs_header){"Sec-WebSocket-Extensions", 24, v1, l1};
    h[1] = (cs_header){"Host", 4, "h", 1};
    h[2] = (cs_header){"sec-websocket-extensions", 24, v2, l2};
    memset(&p, 0x5A, sizeof p);
    rc = cs_ws_negotiate_deflate(h, 3, &p, resp, resp_len);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        const char *nul = memchr(resp, 0, resp_len);
        size_t rl;
        CHECK(nul != NULL);
        rl = (size_t)(nul - resp);
        CHECK(rl >= 18 && memcmp(resp, "permessage-deflate", 18) == 0);
        CHECK(p.enabled);
        CHECK(p.server_bits >= 9 && p.server_bits <= 15);
        if (p.no_compress)
            CHECK(strstr(resp, "server_max_window_bits=8") != NULL);
        if (p.server_no_context)
            CHECK(strstr(resp, "server_no_context_takeover") != NULL);
        if (p.client_no_context)
            CHECK(strstr(resp, "client_no_context_takeover") != NULL);
        /* the agreed parameters work for the writer and the reader */
        {
            cs_ws_deflater *d = cs_ws_deflater_new(&p);
            cs_ws_reader *r = cs_ws_reader_new(0, &p);
            unsigned char *out = NULL;
            size_t out_len = 0;
            int drc;
            CHECK(d && r);
            drc = cs_ws_deflate(d, (const char *)data, size, &out, &out_len);
            CHECK(drc == 1 || (drc == 0 && p.no_compress));
            free(out);
            cs_ws_deflater_free(d);
            cs_ws_reader_free(r);
        }
    } else {
        CHECK(!p.enabled && !p.server_no_context && !p.client_no_context && !p.no_compress);
    }

    /* handshake: the first value as the key, the second as the version */
    {
        cs_header hs[4];
        const char *key = NULL, *why = NULL;
        size_t key_len = 0;
        int minor = size && (data[0] & 1) ? 0 : 1;
        const char *method = size && (data[0] & 2) ? "POST" : "GET";
        hs[0] = (cs_header){"Upgrade", 7, v2, l2};
        hs[1] = (cs_header){"Sec-WebSocket-Key", 17, v1, l1};
        hs[2] = (cs_header){"Sec-WebSocket-Version", 21, l2 ? v2 : "13", l2 ? l2 : 2};
        hs[3] = (cs_header){"Connection", 10, v1, l1};
        rc = cs_ws_check_handshake(method, strlen(method), minor, hs, 4, &key, &key_len, &why);
        CHECK(rc == 0 || rc == 400 || rc == 426);
        if (rc == 0) {
            char acc[CS_WS_ACCEPT_LEN + 1];
            size_t i;
            CHECK(minor == 1 && method[0] == 'G');
            CHECK(key == v1 && key_len == 24 && l1 == 24);
            for (i = 0; i < 22; i++)
                CHECK(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", v1[i]) && v1[i]);
            CHECK(v1[22] == '=' && v1[23] == '=');
            cs_ws_accept_value(key, key_len, acc);
            CHECK(strlen(acc) == CS_WS_ACCEPT_LEN && acc[CS_WS_ACCEPT_LEN - 1] == '=');
        } else {
            CHECK(why != NULL && why[0] != '\0');
        }
        /* the accept value of any key is well-formed */
        {
            char acc[CS_WS_ACCEPT_LEN + 1];
            cs_ws_accept_value(v1, l1, acc);
            CHECK(strlen(acc) == CS_WS_ACCEPT_LEN);
        }
        rc = cs_ws_is_upgrade(hs, 1);
        CHECK(rc == 0 || rc == 1);
        if (rc)
            CHECK(l2 >= 9);
    }
    free(v1);
    free(v2);
    free(resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cs_ws_deflate_params pmd_ctx, pmd_noctx;
    static int init;
    const cs_ws_deflate_params *pmd = NULL;
    result whole, split, bytes;
    uint64_t max_size;
    size_t max_piece;
    uint32_t seed;
    int deflate;

    if (!init) {
        char resp[128];
        cs_header h = {"Sec-WebSocket-Extensions", 24, "permessage-deflate; client_max_window_bits", 42};
        CHECK(cs_ws_negotiate_deflate(&h, 1, &pmd_ctx, resp, sizeof resp) == 0);
        h.value = "permessage-deflate; client_no_context_takeover";
        h.value_len = strlen(h.value);
        CHECK(cs_ws_negotiate_deflate(&h, 1, &pmd_noctx, resp, sizeof resp) == 0);
        init = 1;
    }
    if (size < 1)
        return 0;

    fuzz_headers(data, size);

    max_size = (data[0] & 1) ? 256 : (uint64_t)1 << 20;
    deflate = (data[0] >> 1) & 1;
    if (deflate)
        pmd = (data[0] & 4) ? &pmd_noctx : &pmd_ctx;
    max_piece = (size_t)(data[0] >> 3) + 1;
    seed = (uint32_t)data[0] * 2654435761u ^ (uint32_t)size;

    read_stream(data + 1, size - 1, max_size, pmd, 0, 0, &whole);
    read_stream(data + 1, size - 1, max_size, pmd, seed, max_piece, &split);
    read_stream(data + 1, size - 1, max_size, pmd, 0, 1, &bytes);
    same(&whole, &split, deflate);
    same(&whole, &bytes, deflate);

    if (deflate) {
        /* the writer compresses as the reader's peer would: without context
         * when the reader drops its own */
        cs_ws_deflate_params rt = *pmd;
        rt.server_no_context = rt.client_no_context;
        round_trip(data + 1, size - 1, &rt, seed);
    }
    return 0;
}
