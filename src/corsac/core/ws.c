/* ws.c - WebSocket framing (RFC 6455) and permessage-deflate (RFC 7692).
 *
 * The reader takes bytes as they come off the socket, in any split: it keeps
 * at most a partial frame header and a partial control frame of its own, and
 * unmasks data payload in place as it arrives.  A whole unfragmented message
 * that arrives in one read goes to the caller straight from the read buffer
 * (the common case: no copy); fragmented, split or compressed messages are
 * assembled in a buffer that is released once it has grown past a page.
 * Text is validated as it arrives, so a bad byte fails the connection at
 * once rather than at the end of a long message. */
#include "ws.h"
#include "log.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define DEFLATE_BITS 13           /* our window: 8 KiB, plenty for messages, light per connection */
#define DEFLATE_MEMLEVEL 6
#define KEEP_BUF 4096             /* a message buffer bigger than this is freed after use */

/* ---- handshake ---------------------------------------------------------------- */

static int name_is(const cs_header *h, const char *lit)
{
    size_t n = strlen(lit);
    return h->name_len == n && strncasecmp(h->name, lit, n) == 0;
}

/* Does the comma-separated list contain the token (case-insensitive)? */
static int list_has(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok), pos = 0, len;
    const char *item;
    while (cs_list_next(v, n, &pos, &item, &len))
        if (len == tl && strncasecmp(item, tok, tl) == 0)
            return 1;
    return 0;
}

int cs_ws_is_upgrade(const cs_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (name_is(&h[i], "upgrade") && list_has(h[i].value, h[i].value_len, "websocket"))
            return 1;
    return 0;
}

static int b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

int cs_ws_check_handshake(const char *method, size_t method_len, int minor_version, const cs_header *h, size_t n,
                          const char **key, size_t *key_len, const char **why)
{
    const cs_header *k = NULL, *v = NULL;
    int keys = 0;
    if (method_len != 3 || memcmp(method, "GET", 3) != 0 || minor_version != 1) {
        *why = "a WebSocket handshake must be a GET over HTTP/1.1";
        return 400;
    }
    for (size_t i = 0; i < n; i++) {
        if (name_is(&h[i], "sec-websocket-key")) {
            k = &h[i];
            keys++;
        } else if (name_is(&h[i], "sec-websocket-version")) {
            if (v) {
                *why = "more than one Sec-WebSocket-Version";
                return 400;
            }
            v = &h[i];
        }
    }
    if (!v || v->value_len != 2 || memcmp(v->value, "13", 2) != 0) {
        *why = "unsupported Sec-WebSocket-Version";
        return 426;
    }
    /* the key is 16 bytes in base64: 22 characters and "==", and the last
     * character before the padding carries no stray bits */
    if (keys != 1 || k->value_len != 24 || k->value[22] != '=' || k->value[23] != '=' ||
        !strchr("AQgw", k->value[21])) {
        *why = "missing or malformed Sec-WebSocket-Key";
        return 400;
    }
    for (int i = 0; i < 22; i++)
        if (!b64_char((unsigned char)k->value[i])) {
            *why = "malformed Sec-WebSocket-Key";
            return 400;
        }
    *key = k->value;
    *key_len = k->value_len;
    return 0;
}

void cs_ws_accept_value(const char *key, size_t key_len, char out[CS_WS_ACCEPT_LEN + 1])
{
    unsigned char in[64], md[SHA_DIGEST_LENGTH];
    size_t gl = sizeof(WS_GUID) - 1;
    if (key_len > sizeof(in) - gl)
        key_len = sizeof(in) - gl;
    memcpy(in, key, key_len);
    memcpy(in + key_len, WS_GUID, gl);
    SHA1(in, key_len + gl, md);
    EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
    out[CS_WS_ACCEPT_LEN] = 0;
}

/* ---- permessage-deflate negotiation -------------------------------------------- */

typedef struct {
    const char *s;
    size_t n, i;
} scan;

static void skip_ows(scan *c)
{
    while (c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t'))
        c->i++;
}

static size_t token(scan *c, const char **t)
{
    skip_ows(c);
    size_t s = c->i;
    while (c->i < c->n && cs_is_tchar((unsigned char)c->s[c->i]))
        c->i++;
    *t = c->s + s;
    return c->i - s;
}

/* A window-bits value: "8".."15", possibly quoted. */
static int bits_value(const char *v, size_t n)
{
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"')
        v++, n -= 2;
    if (n == 1 && v[0] >= '8' && v[0] <= '9')
        return v[0] - '0';
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + v[1] - '0';
    return -1;
}

/* Parse one extension at c (up to the next top-level comma).  1 when it is
 * an acceptable permessage-deflate offer, 0 otherwise; the scan is left at
 * the comma or the end either way. */
static int parse_offer(scan *c, cs_ws_deflate_params *p, char *resp, size_t resp_len)
{
    const char *t;
    size_t tl = token(c, &t);
    int ok = tl == 18 && strncasecmp(t, "permessage-deflate", 18) == 0;
    int sctx = 0, cctx = 0, sbits = 0, cbits = -1;
    skip_ows(c);
    while (c->i < c->n && c->s[c->i] == ';') {
        c->i++;
        const char *pn, *pv = NULL;
        size_t pl = token(c, &pn), vl = 0;
        skip_ows(c);
        if (c->i < c->n && c->s[c->i] == '=') {
            c->i++;
            skip_ows(c);
            size_t s = c->i;
            if (c->i < c->n && c->s[c->i] == '"') {
                c->i++;
                while (c->i < c->n && c->s[c->i] != '"')
                    c->i++;
                if (c->i < c->n)
                    c->i++;
            } else {
                while (c->i < c->n && cs_is_tchar((unsigned char)c->s[c->i]))
                    c->i++;
            }
            pv = c->s + s;
            vl = c->i - s;
            skip_ows(c);
        }
        if (pl == 26 && strncasecmp(pn, "server_no_context_takeover", 26) == 0 && !pv && !sctx)
            sctx = 1;
        else if (pl == 26 && strncasecmp(pn, "client_no_context_takeover", 26) == 0 && !pv && !cctx)
            cctx = 1;
        else if (pl == 22 && strncasecmp(pn, "server_max_window_bits", 22) == 0 && pv && !sbits &&
                 bits_value(pv, vl) > 0)
            sbits = bits_value(pv, vl);
        else if (pl == 22 && strncasecmp(pn, "client_max_window_bits", 22) == 0 && cbits < 0 &&
                 (!pv || bits_value(pv, vl) > 0))
            cbits = pv ? bits_value(pv, vl) : 0;
        else
            ok = 0;             /* unknown, repeated or malformed: decline this offer */
    }
    /* anything else before the comma makes the offer unreadable */
    if (c->i < c->n && c->s[c->i] != ',') {
        ok = 0;
        while (c->i < c->n && c->s[c->i] != ',')
            c->i++;
    }
    if (!ok)
        return 0;
    memset(p, 0, sizeof(*p));
    p->enabled = 1;
    p->server_no_context = (unsigned)sctx;
    p->client_no_context = (unsigned)cctx;
    p->server_bits = sbits && sbits < DEFLATE_BITS ? sbits : DEFLATE_BITS;
    /* zlib cannot compress within a 256-byte window: such a client gets our
     * messages uncompressed, which RFC 7692 allows per message */
    p->no_compress = sbits == 8;
    if (p->server_bits < 9)
        p->server_bits = 9;
    int w = snprintf(resp, resp_len, "permessage-deflate%s%s", sctx ? "; server_no_context_takeover" : "",
                     cctx ? "; client_no_context_takeover" : "");
    if (sbits && w > 0 && (size_t)w < resp_len)
        w += snprintf(resp + w, resp_len - (size_t)w, "; server_max_window_bits=%d", sbits);
    if (cbits > 0 && w > 0 && (size_t)w < resp_len)
        w += snprintf(resp + w, resp_len - (size_t)w, "; client_max_window_bits=%d", cbits);
    return w > 0 && (size_t)w < resp_len;
}

int cs_ws_negotiate_deflate(const cs_header *h, size_t n, cs_ws_deflate_params *p, char *resp, size_t resp_len)
{
    for (size_t i = 0; i < n; i++) {
        if (!name_is(&h[i], "sec-websocket-extensions"))
            continue;
        scan c = {h[i].value, h[i].value_len, 0};
        while (c.i < c.n) {
            if (parse_offer(&c, p, resp, resp_len))
                return 0;
            if (c.i < c.n)
                c.i++;          /* the comma */
        }
    }
    memset(p, 0, sizeof(*p));
    return -1;
}

/* ---- UTF-8 ------------------------------------------------------------------------ */

int cs_utf8_feed(cs_utf8 *u, const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (u->need == 0) {
            /* ASCII runs, eight bytes at a time */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            while (i < n && p[i] < 0x80)
                i++;
            if (i == n)
                break;
            unsigned char c = p[i++];
            if (c >= 0xC2 && c <= 0xDF)
                u->need = 1, u->lo = 0x80, u->hi = 0xBF;
            else if (c == 0xE0)
                u->need = 2, u->lo = 0xA0, u->hi = 0xBF;          /* no overlongs */
            else if (c == 0xED)
                u->need = 2, u->lo = 0x80, u->hi = 0x9F;          /* no surrogates */
            else if (c >= 0xE1 && c <= 0xEF)
                u->need = 2, u->lo = 0x80, u->hi = 0xBF;
            else if (c == 0xF0)
                u->need = 3, u->lo = 0x90, u->hi = 0xBF;          /* no overlongs */
            else if (c >= 0xF1 && c <= 0xF3)
                u->need = 3, u->lo = 0x80, u->hi = 0xBF;
            else if (c == 0xF4)
                u->need = 3, u->lo = 0x80, u->hi = 0x8F;          /* up to U+10FFFF */
            else
                return -1;
            continue;
        }
        unsigned char c = p[i++];
        if (c < u->lo || c > u->hi)
            return -1;
        u->need--;
        u->lo = 0x80;
        u->hi = 0xBF;
    }
    return 0;
}

/* ---- frames ------------------------------------------------------------------------- */

int cs_ws_close_code_ok(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

size_t cs_ws_frame_header(unsigned char out[CS_WS_MAX_HEADER], int opcode, int fin, int rsv1, uint64_t len)
{
    out[0] = (unsigned char)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0F));
    if (len < 126) {
        out[1] = (unsigned char)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (unsigned char)(len >> 8);
        out[3] = (unsigned char)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (unsigned char)(len >> (56 - 8 * i));
    return 10;
}

void cs_ws_unmask(unsigned char *p, size_t n, const uint8_t mask[4], uint64_t offset)
{
    uint8_t m[8];
    for (int i = 0; i < 8; i++)
        m[i] = mask[(offset + (uint64_t)i) & 3];
    size_t i = 0;
    if (n >= 8) {
        uint64_t w8;
        memcpy(&w8, m, 8);
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            w ^= w8;
            memcpy(p + i, &w, 8);
        }
    }
    for (; i < n; i++)
        p[i] ^= m[i & 7];
}

/* ---- the reader ------------------------------------------------------------------------ */

struct cs_ws_reader {
    uint64_t max_size;
    cs_ws_deflate_params pmd;
    z_stream zs;
    int zs_ready;

    unsigned char hdr[14];          /* a header split across reads */
    size_t hdr_len;

    int in_frame;                   /* a header was read: payload follows */
    int fin, rsv1, opcode;
    uint64_t len, pos;
    uint8_t mask[4];
    unsigned char ctl[125];         /* control payload being collected */

    int msg_opcode;                 /* data message in progress (0: none) */
    int msg_deflated;
    cs_utf8 utf8;
    unsigned char *buf;             /* the message being assembled */
    size_t buf_len, buf_cap;
    uint64_t raw_len;               /* payload bytes of the message, before inflating */
    int closed;                     /* the peer's close frame was read */
};

cs_ws_reader *cs_ws_reader_new(uint64_t max_size, const cs_ws_deflate_params *deflate)
{
    cs_ws_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->max_size = max_size;
    if (deflate && deflate->enabled)
        r->pmd = *deflate;
    return r;
}

void cs_ws_reader_free(cs_ws_reader *r)
{
    if (!r)
        return;
    if (r->zs_ready)
        inflateEnd(&r->zs);
    free(r->buf);
    free(r);
}

size_t cs_ws_reader_buffered(const cs_ws_reader *r) { return r->buf_cap; }

#define FAIL(c, w)                                                                                             \
    do {                                                                                                       \
        *code = (c);                                                                                           \
        *why = (w);                                                                                            \
        return -1;                                                                                             \
    } while (0)

static int reserve(cs_ws_reader *r, size_t want)
{
    if (r->buf_cap - r->buf_len >= want)
        return 0;
    size_t cap = r->buf_cap ? r->buf_cap : 1024;
    while (cap - r->buf_len < want)
        cap *= 2;
    unsigned char *nb = realloc(r->buf, cap);
    if (!nb) {
        cs_log(CS_LOG_ERROR, "ws: out of memory growing a message buffer to %zu bytes", cap);
        return -1;
    }
    r->buf = nb;
    r->buf_cap = cap;
    return 0;
}

static void release_buf(cs_ws_reader *r)
{
    r->buf_len = 0;
    if (r->buf_cap > KEEP_BUF) {
        free(r->buf);
        r->buf = NULL;
        r->buf_cap = 0;
    }
}

/* Inflate payload bytes into the message buffer, validating and bounding
 * what comes out. */
static int inflate_into(cs_ws_reader *r, const unsigned char *in, size_t n, int *code, const char **why)
{
    if (!r->zs_ready) {
        memset(&r->zs, 0, sizeof(r->zs));
        if (inflateInit2(&r->zs, -15) != Z_OK)
            FAIL(CS_WS_INTERNAL_ERROR, "cannot start a decompressor");
        r->zs_ready = 1;
    }
    r->zs.next_in = (unsigned char *)in;
    r->zs.avail_in = (unsigned)n;
    for (;;) {
        size_t room = r->buf_cap - r->buf_len;
        if (room < 1024) {
            if (reserve(r, r->buf_cap > 16384 ? r->buf_cap : 16384) < 0)
                FAIL(CS_WS_INTERNAL_ERROR, "out of memory");
            room = r->buf_cap - r->buf_len;
        }
        r->zs.next_out = r->buf + r->buf_len;
        r->zs.avail_out = (unsigned)room;
        int rc = inflate(&r->zs, Z_SYNC_FLUSH);
        size_t got = room - r->zs.avail_out;
        if (got && r->msg_opcode == CS_WS_TEXT && cs_utf8_feed(&r->utf8, r->buf + r->buf_len, got) < 0)
            FAIL(CS_WS_INVALID_DATA, "invalid UTF-8 in a text message");
        r->buf_len += got;
        if (r->max_size && r->buf_len > r->max_size)
            FAIL(CS_WS_TOO_BIG, "message over --ws-max-size");
        if (rc == Z_STREAM_END) {
            /* the peer ended its deflate stream (BFINAL): the next message starts a new one */
            inflateReset(&r->zs);
            if (r->zs.avail_in == 0)
                return 0;
            continue;
        }
        if (rc == Z_BUF_ERROR || (rc == Z_OK && r->zs.avail_in == 0 && r->zs.avail_out != 0))
            return 0;
        if (rc != Z_OK)
            FAIL(CS_WS_INVALID_DATA, "invalid compressed data");
    }
}

/* Payload bytes of the current data frame (already unmasked). */
static int data_chunk(cs_ws_reader *r, const unsigned char *p, size_t n, int *code, const char **why)
{
    if (r->msg_deflated)
        return inflate_into(r, p, n, code, why);
    if (r->msg_opcode == CS_WS_TEXT && cs_utf8_feed(&r->utf8, p, n) < 0)
        FAIL(CS_WS_INVALID_DATA, "invalid UTF-8 in a text message");
    if (reserve(r, n) < 0)
        FAIL(CS_WS_INTERNAL_ERROR, "out of memory");
    memcpy(r->buf + r->buf_len, p, n);
    r->buf_len += n;
    return 0;
}

static int end_message(cs_ws_reader *r, const cs_ws_events *ev, void *ud, int *code, const char **why)
{
    if (r->msg_deflated) {
        static const unsigned char tail[4] = {0x00, 0x00, 0xFF, 0xFF};
        if (inflate_into(r, tail, 4, code, why) < 0)
            return -1;
        if (r->pmd.client_no_context)
            inflateReset(&r->zs);
    }
    if (r->msg_opcode == CS_WS_TEXT && !cs_utf8_complete(&r->utf8))
        FAIL(CS_WS_INVALID_DATA, "text message ends inside a UTF-8 sequence");
    int op = r->msg_opcode;
    r->msg_opcode = 0;
    r->msg_deflated = 0;
    r->raw_len = 0;
    ev->message(ud, op, (const char *)(r->buf ? r->buf : (unsigned char *)""), r->buf_len);
    release_buf(r);
    return 0;
}

static int end_control(cs_ws_reader *r, const cs_ws_events *ev, void *ud, int *code, const char **why)
{
    size_t n = (size_t)r->len;
    if (r->opcode != CS_WS_CLOSE) {
        ev->control(ud, r->opcode, (const char *)r->ctl, n);
        return 0;
    }
    int cc = CS_WS_NO_STATUS;
    if (n == 1)
        FAIL(CS_WS_PROTOCOL_ERROR, "close frame with a 1-byte payload");
    if (n >= 2) {
        cc = r->ctl[0] << 8 | r->ctl[1];
        if (!cs_ws_close_code_ok(cc))
            FAIL(CS_WS_PROTOCOL_ERROR, "invalid close code");
        cs_utf8 u = {0};
        if (cs_utf8_feed(&u, r->ctl + 2, n - 2) < 0 || !cs_utf8_complete(&u))
            FAIL(CS_WS_INVALID_DATA, "invalid UTF-8 in a close reason");
    }
    r->closed = 1;
    ev->close(ud, cc, n > 2 ? (const char *)r->ctl + 2 : "", n > 2 ? n - 2 : 0);
    return 0;
}

/* Parse a header from h (n bytes available).  Header length, 0 if more
 * bytes are needed, -1 on a protocol error. */
static int parse_header(cs_ws_reader *r, const unsigned char *h, size_t n, int *code, const char **why)
{
    if (n < 2)
        return 0;
    int b1 = h[1] & 0x7F;
    size_t need = 2 + (b1 == 126 ? 2 : b1 == 127 ? 8 : 0) + ((h[1] & 0x80) ? 4 : 0);
    int fin = h[0] >> 7, rsv1 = (h[0] >> 6) & 1, op = h[0] & 0x0F;
    /* check what the first two bytes tell before waiting for the rest */
    if (h[0] & 0x30)
        FAIL(CS_WS_PROTOCOL_ERROR, "reserved bits set");
    if (!(h[1] & 0x80))
        FAIL(CS_WS_PROTOCOL_ERROR, "unmasked client frame");
    if (op & 0x08) {
        if (op != CS_WS_CLOSE && op != CS_WS_PING && op != CS_WS_PONG)
            FAIL(CS_WS_PROTOCOL_ERROR, "reserved opcode");
        if (!fin || b1 > 125 || rsv1)
            FAIL(CS_WS_PROTOCOL_ERROR, "fragmented, compressed or oversized control frame");
    } else if (op == CS_WS_CONT) {
        if (!r->msg_opcode)
            FAIL(CS_WS_PROTOCOL_ERROR, "continuation frame without a message");
        if (rsv1)
            FAIL(CS_WS_PROTOCOL_ERROR, "RSV1 on a continuation frame");
    } else if (op == CS_WS_TEXT || op == CS_WS_BINARY) {
        if (r->msg_opcode)
            FAIL(CS_WS_PROTOCOL_ERROR, "new message inside a fragmented one");
        if (rsv1 && !r->pmd.enabled)
            FAIL(CS_WS_PROTOCOL_ERROR, "RSV1 without permessage-deflate");
    } else {
        FAIL(CS_WS_PROTOCOL_ERROR, "reserved opcode");
    }
    if (n < need)
        return 0;
    uint64_t len = (uint64_t)b1;
    const unsigned char *m = h + 2;
    if (b1 == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        m = h + 4;
    } else if (b1 == 127) {
        if (h[2] & 0x80)
            FAIL(CS_WS_PROTOCOL_ERROR, "frame length with the top bit set");
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        m = h + 10;
    }
    r->fin = fin;
    r->rsv1 = rsv1;
    r->opcode = op;
    r->len = len;
    r->pos = 0;
    memcpy(r->mask, m, 4);
    r->in_frame = 1;
    if (!(op & 0x08)) {
        if (op != CS_WS_CONT) {
            r->msg_opcode = op;
            r->msg_deflated = rsv1;
            memset(&r->utf8, 0, sizeof(r->utf8));
            r->raw_len = 0;
        }
        r->raw_len += len;
        /* fail early: uncompressed, the size is known now; compressed, no
         * sane sender needs more input than the limit allows output */
        if (r->max_size && r->raw_len > r->max_size && (!r->msg_deflated || r->raw_len > r->max_size * 2 + 1024))
            FAIL(CS_WS_TOO_BIG, "message over --ws-max-size");
    }
    return (int)need;
}

int cs_ws_reader_feed(cs_ws_reader *r, unsigned char *p, size_t n, const cs_ws_events *ev, void *ud, int *code,
                      const char **why)
{
    while (!r->closed) {
        if (!r->in_frame) {
            if (n == 0)
                return 0;
            int used;
            if (r->hdr_len == 0 && (used = parse_header(r, p, n, code, why)) != 0) {
                if (used < 0)
                    return -1;
                p += used;
                n -= (size_t)used;
            } else {
                /* a header split across reads: collect it byte by byte */
                while (n && r->hdr_len < sizeof(r->hdr)) {
                    r->hdr[r->hdr_len++] = *p++;
                    n--;
                    used = parse_header(r, r->hdr, r->hdr_len, code, why);
                    if (used < 0)
                        return -1;
                    if (used > 0)
                        break;
                }
                if (!r->in_frame)
                    return 0;   /* all consumed into hdr */
                r->hdr_len = 0;
            }
            /* whole unfragmented message in hand: straight from the buffer */
            if (!r->msg_deflated && r->fin && r->opcode != CS_WS_CONT && !(r->opcode & 0x08) && n >= r->len) {
                size_t len = (size_t)r->len;
                cs_ws_unmask(p, len, r->mask, 0);
                if (r->opcode == CS_WS_TEXT) {
                    cs_utf8 u = {0};
                    if (cs_utf8_feed(&u, p, len) < 0 || !cs_utf8_complete(&u))
                        FAIL(CS_WS_INVALID_DATA, "invalid UTF-8 in a text message");
                }
                r->in_frame = 0;
                r->msg_opcode = 0;
                r->raw_len = 0;
                ev->message(ud, r->opcode, (const char *)p, len);
                p += len;
                n -= len;
                continue;
            }
        }
        size_t take = r->len - r->pos < n ? (size_t)(r->len - r->pos) : n;
        if (take) {
            cs_ws_unmask(p, take, r->mask, r->pos);
            if (r->opcode & 0x08)
                memcpy(r->ctl + r->pos, p, take);
            else if (data_chunk(r, p, take, code, why) < 0)
                return -1;
            r->pos += take;
            p += take;
            n -= take;
        }
        if (r->pos < r->len)
            return 0;           /* the rest of this frame comes later */
        r->in_frame = 0;
        if (r->opcode & 0x08) {
            if (end_control(r, ev, ud, code, why) < 0)
                return -1;
        } else if (r->fin && end_message(r, ev, ud, code, why) < 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- the writer's compressor ---------------------------------------------------------- */

struct cs_ws_deflater {
    cs_ws_deflate_params p;
    z_stream zs;
    int ready;
};

cs_ws_deflater *cs_ws_deflater_new(const cs_ws_deflate_params *p)
{
    cs_ws_deflater *d = calloc(1, sizeof(*d));
    if (d)
        d->p = *p;
    return d;
}

void cs_ws_deflater_free(cs_ws_deflater *d)
{
    if (!d)
        return;
    if (d->ready)
        deflateEnd(&d->zs);
    free(d);
}

int cs_ws_deflate(cs_ws_deflater *d, const char *p, size_t n, unsigned char **out, size_t *out_len)
{
    if (d->p.no_compress)
        return 0;
    if (!d->ready) {
        /* the compressor's memory is taken at the first message worth compressing */
        memset(&d->zs, 0, sizeof(d->zs));
        if (deflateInit2(&d->zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -d->p.server_bits, DEFLATE_MEMLEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            cs_log(CS_LOG_ERROR, "ws: cannot start a compressor");
            return -1;
        }
        d->ready = 1;
    }
    size_t cap = deflateBound(&d->zs, (uLong)n) + 16;
    unsigned char *buf = malloc(cap);
    if (!buf) {
        cs_log(CS_LOG_ERROR, "ws: out of memory compressing %zu bytes", n);
        return -1;
    }
    d->zs.next_in = (unsigned char *)p;
    d->zs.avail_in = (unsigned)n;
    size_t len = 0;
    for (;;) {
        d->zs.next_out = buf + len;
        d->zs.avail_out = (unsigned)(cap - len);
        int rc = deflate(&d->zs, Z_SYNC_FLUSH);
        len = cap - d->zs.avail_out;
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            cs_log(CS_LOG_ERROR, "ws: deflate failed (%d)", rc);
            free(buf);
            return -1;
        }
        if (d->zs.avail_out != 0 && d->zs.avail_in == 0)
            break;
        unsigned char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            return -1;
        }
        buf = nb;
        cap *= 2;
    }
    /* a sync flush ends in an empty stored block, 00 00 FF FF: RFC 7692 drops it */
    if (len >= 4 && memcmp(buf + len - 4, "\x00\x00\xff\xff", 4) == 0)
        len -= 4;
    if (len == 0)
        buf[len++] = 0x00;      /* an empty message: one empty block (RFC 7692 7.2.3.6) */
    if (d->p.server_no_context)
        deflateReset(&d->zs);
    /* even a message that does not shrink goes out compressed: some peers
     * mishandle plain messages once compression is agreed */
    *out = buf;
    *out_len = len;
    return 1;
}
