/* h2.c - HTTP/2 sessions on top of conn.c, with libnghttp2.
 *
 * Owns: the nghttp2 session of one connection, its streams as cs_req (the
 * request head, the body buffered within the flow-control window, the
 * response queued until the peer's window takes it), dispatch to the
 * worker's handler, resets and GOAWAY, and the flood limits nghttp2 does
 * not apply by itself.
 *
 * Rules that keep this simple:
 *   - handlers, resume and cancel hooks run only from cs_h2_io (never from
 *     inside an nghttp2 callback, never from inside another app's send):
 *     callbacks put streams on the ready, wake and closed lists instead;
 *   - request body window is given back (nghttp2_session_consume) only as
 *     the app takes the bytes, so an upload never outruns its app;
 *   - an app's response waits in the stream's queue; past OUT_HIGH its send
 *     suspends until the peer's window drains it below OUT_LOW. */
#include "h2.h"
#include "conn.h"
#include "log.h"
#include "resp.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define OUT_HIGH (256 * 1024)
#define OUT_LOW (64 * 1024)
#define SEG_MIN 4096
#define OBUF (32 * 1024)              /* frames gather here before one write */
#define MAX_CONTINUATIONS 16
/* per connection and second: more than this is a flood (ENHANCE_YOUR_CALM) */
#define LIMIT_PING_SETTINGS 64
#define LIMIT_EMPTY_DATA 128
#define LIMIT_PRIORITY 1024
#define LIMIT_SMALL_WINDOW_UPDATE 256
#define LIMIT_RESETS 128

typedef struct h2_seg {
    struct h2_seg *next;
    int fd;                           /* >= 0: file bytes from off */
    off_t off;
    size_t len, pos, cap;
    char data[];
} h2_seg;

typedef struct {
    char *p;
    size_t len, cap;
} h2_buf;

typedef struct h2_stream h2_stream;
struct h2_stream {
    cs_req req;                       /* first: ops get it back */
    cs_h2 *h;
    int32_t id;
    h2_stream *prev, *next;           /* the session's streams */
    h2_stream *rnext, *wnext, *cnext; /* ready, wake and closed lists */
    int on_ready, on_wake, on_closed;

    /* request head: text lives in `head` (offsets until dispatch) */
    h2_buf head;
    size_t method_off, method_len, path_off, path_len, auth_off, auth_len;
    int have_method, have_path, have_auth;
    size_t *fields;                   /* per field: name off, name len, value off, value len */
    size_t nfields, fields_cap;
    size_t cookie_total;
    size_t list_size;                 /* decoded header list size so far */
    int too_big;                      /* header list over the limit: 431 */
    int continuations;
    cs_header *hdrs;
    int64_t content_length;           /* -1 unknown */

    /* request body */
    h2_buf in, given;                 /* arriving; handed to the app (valid until the next call) */
    uint64_t body_seen;
    int in_end;                       /* END_STREAM from the client */
    int want_body;                    /* async app waits for body bytes */
    int discard;                      /* answered without the app: drop the body */
    int held;                         /* WSGI: waits for its body before dispatch */

    /* response */
    h2_seg *ohead, *otail;
    size_t obytes;
    int submitted;                    /* HEADERS submitted */
    int out_fin;                      /* the app gave its last byte */
    int deferred;                     /* the data source said DEFERRED */
    int no_body;                      /* HEAD, 204, 304: nothing after the head */
    nghttp2_nv *trailers;
    size_t ntrailers;
    char *trailer_text;
    int64_t resp_left;                /* Content-Length we sent, -1 none */

    /* lifetime */
    int dispatched, in_app, app_done, closed;
    uint32_t close_code;
    uint64_t created;                 /* its head must be complete within --header-read-timeout */
    uint64_t since;                   /* dispatched at */
    uint64_t body_due;                /* an app waiting for body bytes gives up then */
    uint64_t send_due;                /* ... and one waiting for the client's window */
};

struct cs_h2 {
    cs_conn *c;
    cs_worker *w;
    nghttp2_session *ss;
    h2_stream *streams;
    size_t nstreams;                  /* open at the nghttp2 level or still with an app */
    h2_stream *ready, *ready_tail, *wake, *closed;
    int in_io;                        /* inside cs_h2_io: no kick needed */
    int dead;                         /* fatal error: close once flushed */
    int broken;                       /* the socket failed: nothing more can be written */
    int goaway;                       /* GOAWAY sent for a graceful stop */
    int flush_pending;                /* an app wrote outside cs_h2_io: the loop flushes */
    uint64_t idle_since;
    uint64_t win_start;               /* flood counters for the current second */
    unsigned n_ping_settings, n_empty_data, n_priority, n_small_wu, n_resets;
    char obuf[OBUF];
    size_t olen;
};

static const cs_req_ops h2_ops;

static h2_stream *from_req(cs_req *r) { return (h2_stream *)r; }

int cs_h2_is_preface(const char *buf, size_t n)
{
    size_t k = n < 24 ? n : 24;
    if (memcmp(buf, CS_H2_PREFACE, k) != 0)
        return -1;
    return n >= 24 ? 1 : 0;
}

/* ---- small helpers ---------------------------------------------------------- */

static int buf_add(h2_buf *b, const void *p, size_t n)
{
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static void seg_free_all(h2_stream *s)
{
    while (s->ohead) {
        h2_seg *g = s->ohead;
        s->ohead = g->next;
        if (g->fd >= 0)
            close(g->fd);
        free(g);
    }
    s->otail = NULL;
    s->obytes = 0;
}

static void make_ready(cs_h2 *h, h2_stream *s)
{
    s->on_ready = 1;
    s->rnext = NULL;
    if (h->ready_tail)
        h->ready_tail->rnext = s;
    else
        h->ready = s;
    h->ready_tail = s;
}

/* A held (WSGI) stream whose body is in, or fills the window, goes on. */
static void release_held(cs_h2 *h, h2_stream *s)
{
    if (s->held && (s->in_end || s->in.len >= (size_t)h->w->cfg->h2_window || s->req.body_error)) {
        s->held = 0;
        make_ready(h, s);
    }
}

static void wake(h2_stream *s)
{
    cs_h2 *h = s->h;
    if (s->on_wake)
        return;
    s->on_wake = 1;
    s->wnext = h->wake;
    h->wake = s;
    if (!h->in_io)
        cs_conn_kick(h->c);
}

/* Frames an app queued from its task go out in one write per loop
 * iteration, not one per send: cs_h2_io flushes at its end anyway, and
 * outside it a kick brings the loop back. */
static void schedule_flush(cs_h2 *h)
{
    if (h->in_io || h->flush_pending)
        return;
    h->flush_pending = 1;
    cs_conn_kick(h->c);
}

static void flood(cs_h2 *h, const char *what)
{
    cs_log(CS_LOG_INFO, "h2: %s from %s; closing the connection (ENHANCE_YOUR_CALM)", what, cs_conn_peer(h->c));
    nghttp2_session_terminate_session(h->ss, NGHTTP2_ENHANCE_YOUR_CALM);
    h->dead = 1;
}

/* Count one frame of a kind in the current second; 1 past the limit. */
static int over(cs_h2 *h, unsigned *counter, unsigned limit)
{
    uint64_t now = cs_now_ms();
    if (now - h->win_start >= 1000) {
        h->win_start = now;
        h->n_ping_settings = h->n_empty_data = h->n_priority = h->n_small_wu = h->n_resets = 0;
    }
    return ++*counter > limit;
}

/* ---- output: frames gather in obuf, then go to the connection --------------- */

static int obuf_flush(cs_h2 *h)
{
    if (h->olen && cs_conn_send(h->c, h->obuf, h->olen) < 0)
        h->dead = h->broken = 1;
    h->olen = 0;
    return h->dead ? -1 : 0;
}

static ssize_t on_send(nghttp2_session *ss, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)ss;
    (void)flags;
    cs_h2 *h = ud;
    if (h->broken)      /* after a protocol error the GOAWAY still goes out */
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    /* the socket is behind: keep the rest in nghttp2 (and in stream queues) */
    if (cs_conn_queued(h->c) > OUT_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    if (len > OBUF - h->olen) {
        if (obuf_flush(h) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        if (len >= OBUF) {
            if (cs_conn_send(h->c, data, len) < 0) {
                h->dead = h->broken = 1;
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
            return (ssize_t)len;
        }
    }
    memcpy(h->obuf + h->olen, data, len);
    h->olen += len;
    return (ssize_t)len;
}

/* nghttp2_session_mem_recv failed: some fatal errors (a bad preface, too
 * many CONTINUATION frames, outbound floods) queue no GOAWAY by themselves. */
static void recv_failed(cs_h2 *h, ssize_t rv)
{
    if (!h->dead)
        cs_log(CS_LOG_DEBUG, "h2: from %s: %s", cs_conn_peer(h->c), nghttp2_strerror((int)rv));
    uint32_t code = rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS || rv == NGHTTP2_ERR_FLOODED ? NGHTTP2_ENHANCE_YOUR_CALM
                                                                                         : NGHTTP2_PROTOCOL_ERROR;
    nghttp2_session_terminate_session(h->ss, code);
    h->dead = 1;
}

/* Let nghttp2 write what it can.  Never called from inside its callbacks. */
static int h2_flush(cs_h2 *h)
{
    if (h->dead && !nghttp2_session_want_write(h->ss))
        return -1;
    int rv = nghttp2_session_send(h->ss);
    obuf_flush(h);
    if (rv != 0) {
        if (!h->dead)
            cs_log(CS_LOG_DEBUG, "h2: send to %s: %s", cs_conn_peer(h->c), nghttp2_strerror(rv));
        h->dead = 1;
        return -1;
    }
    if (cs_conn_flush(h->c) < 0)
        h->dead = h->broken = 1;
    return h->dead ? -1 : 0;
}

/* ---- streams ------------------------------------------------------------------ */

static h2_stream *stream_new(cs_h2 *h, int32_t id)
{
    h2_stream *s = calloc(1, sizeof(*s));
    if (!s) {
        cs_log(CS_LOG_ERROR, "h2: out of memory for a stream from %s", cs_conn_peer(h->c));
        return NULL;
    }
    s->h = h;
    s->id = id;
    s->content_length = -1;
    s->resp_left = -1;
    s->created = cs_now_ms();
    s->next = h->streams;
    if (h->streams)
        h->streams->prev = s;
    h->streams = s;
    h->nstreams++;
    return s;
}

static void unlink_list(h2_stream **head, h2_stream *s, size_t off)
{
    for (h2_stream **p = head; *p; p = (h2_stream **)((char *)*p + off))
        if (*p == s) {
            *p = *(h2_stream **)((char *)s + off);
            return;
        }
}

static void stream_free(h2_stream *s)
{
    cs_h2 *h = s->h;
    if (s->on_ready) {
        unlink_list(&h->ready, s, offsetof(h2_stream, rnext));
        h->ready_tail = NULL;
        for (h2_stream *t = h->ready; t; t = t->rnext)
            h->ready_tail = t;
    }
    if (s->on_wake)
        unlink_list(&h->wake, s, offsetof(h2_stream, wnext));
    if (s->on_closed)
        unlink_list(&h->closed, s, offsetof(h2_stream, cnext));
    /* body bytes the app never took: give the connection window back */
    if (s->in.len && !s->closed)
        nghttp2_session_consume(h->ss, s->id, s->in.len);
    else if (s->in.len)
        nghttp2_session_consume_connection(h->ss, s->in.len);
    if (!s->closed)
        nghttp2_session_set_stream_user_data(h->ss, s->id, NULL);
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    h->nstreams--;
    if (!h->nstreams)
        h->idle_since = cs_now_ms();
    seg_free_all(s);
    free(s->head.p);
    free(s->fields);
    free(s->hdrs);
    free(s->in.p);
    free(s->given.p);
    free(s->trailers);
    free(s->trailer_text);
    free(s);
}

/* Free once both sides are through: nghttp2 closed it and no app holds it. */
static void stream_maybe_free(h2_stream *s)
{
    if (s->closed && !s->in_app && !s->req.suspended && (s->app_done || !s->dispatched))
        stream_free(s);
}

/* ---- responses ---------------------------------------------------------------- */

static ssize_t data_source(nghttp2_session *ss, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                           nghttp2_data_source *src, void *ud)
{
    (void)ss;
    (void)id;
    (void)ud;
    h2_stream *s = src->ptr;
    size_t got = 0;
    while (got < length && s->ohead) {
        h2_seg *g = s->ohead;
        size_t take = g->len - g->pos < length - got ? g->len - g->pos : length - got;
        if (g->fd >= 0) {
            ssize_t r = pread(g->fd, buf + got, take, g->off + (off_t)g->pos);
            if (r <= 0) {
                cs_log(CS_LOG_ERROR, "h2: file for stream %d of %s: %s", s->id, cs_conn_peer(s->h->c),
                       r == 0 ? "truncated while sending" : strerror(errno));
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
            take = (size_t)r;
        } else {
            memcpy(buf + got, g->data + g->pos, take);
        }
        g->pos += take;
        got += take;
        s->obytes -= take;
        s->send_due = cs_now_ms() + s->h->w->body_ms;    /* progress restarts the stall clock */
        if (g->pos == g->len) {
            s->ohead = g->next;
            if (!s->ohead)
                s->otail = NULL;
            if (g->fd >= 0)
                close(g->fd);
            free(g);
        }
    }
    if (s->req.blocked && s->obytes <= OUT_LOW)
        wake(s);
    if (!s->ohead && s->out_fin) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->ntrailers) {
            if (nghttp2_submit_trailer(s->h->ss, s->id, s->trailers, s->ntrailers) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        return (ssize_t)got;
    }
    if (!got) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)got;
}

static void append_seg(h2_stream *s, h2_seg *g)
{
    if (s->otail)
        s->otail->next = g;
    else
        s->ohead = g;
    s->otail = g;
    s->obytes += g->len;
}

static int queue_mem(h2_stream *s, const char *p, size_t n)
{
    h2_seg *t = s->otail;
    if (t && t->fd < 0 && t->cap - t->len >= n) {
        memcpy(t->data + t->len, p, n);
        t->len += n;
        s->obytes += n;
        return 0;
    }
    size_t cap = n < SEG_MIN ? SEG_MIN : n;
    h2_seg *g = malloc(sizeof(*g) + cap);
    if (!g) {
        cs_log(CS_LOG_ERROR, "h2: out of memory queueing %zu bytes for %s", n, cs_conn_peer(s->h->c));
        return -1;
    }
    *g = (h2_seg){.fd = -1, .len = n, .cap = cap};
    memcpy(g->data, p, n);
    append_seg(s, g);
    return 0;
}

static int queue_file(h2_stream *s, int fd, off_t off, size_t len)
{
    h2_seg *g = malloc(sizeof(*g));
    if (!g) {
        cs_log(CS_LOG_ERROR, "h2: out of memory queueing a file for %s", cs_conn_peer(s->h->c));
        close(fd);
        return -1;
    }
    *g = (h2_seg){.fd = fd, .off = off, .len = len};
    append_seg(s, g);
    return 0;
}

static int is_hop_field(const char *n, size_t l)
{
    return (l == 10 && strncasecmp(n, "connection", 10) == 0) || (l == 10 && strncasecmp(n, "keep-alive", 10) == 0) ||
           (l == 16 && strncasecmp(n, "proxy-connection", 16) == 0) ||
           (l == 17 && strncasecmp(n, "transfer-encoding", 17) == 0) || (l == 7 && strncasecmp(n, "upgrade", 7) == 0);
}


/* Submit the response HEADERS (names lowercased, hop-by-hop fields dropped). */
static int submit_head(h2_stream *s, const cs_resp_head *hd, const struct iovec *iov, int iovcnt, int flags)
{
    cs_req *r = &s->req;
    int st = hd->status, fin = flags & CS_SEND_FIN;
    int64_t cl = hd->content_length;
    s->no_body = r->head_only || st == 204 || st == 304 || st < 200;
    if (flags & CS_SEND_TRAILERS)
        cl = -1, fin = 0;
    if (cl < 0 && fin) {
        uint64_t total = 0;
        for (int i = 0; i < iovcnt; i++)
            total += iov[i].iov_len;
        cl = (int64_t)total;
    }
    int write_cl = cl >= 0 && st != 204 && st >= 200 && !(st == 304 && hd->content_length < 0);
    size_t names = 0;
    for (size_t i = 0; i < hd->num_headers; i++)
        names += hd->headers[i].name_len;
    nghttp2_nv stack[32], *nv = hd->num_headers + 4 <= 32 ? stack : malloc(sizeof(*nv) * (hd->num_headers + 4));
    char lstack[1024], *lower = names <= sizeof(lstack) ? lstack : malloc(names);
    if (!nv || !lower) {
        cs_log(CS_LOG_ERROR, "h2: out of memory for a response head");
        if (nv != stack)
            free(nv);
        if (lower != lstack)
            free(lower);
        return -1;
    }
    char status[4] = {(char)('0' + st / 100), (char)('0' + st / 10 % 10), (char)('0' + st % 10), 0};
    char digits[24];
    size_t k = 0, lp = 0;
    nv[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
    if (!hd->has_server)
        nv[k++] = (nghttp2_nv){(uint8_t *)"server", (uint8_t *)"corsac", 6, 6, NGHTTP2_NV_FLAG_NONE};
    if (!hd->has_date)
        nv[k++] = (nghttp2_nv){(uint8_t *)"date", (uint8_t *)cs_http_date() + 6, 4, 29, NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < hd->num_headers; i++) {
        const cs_header *f = &hd->headers[i];
        if (is_hop_field(f->name, f->name_len))
            continue;
        char *ln = lower + lp;
        for (size_t j = 0; j < f->name_len; j++) {
            char ch = f->name[j];
            ln[j] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        lp += f->name_len;
        nv[k++] = (nghttp2_nv){(uint8_t *)ln, (uint8_t *)f->value, f->name_len, f->value_len, NGHTTP2_NV_FLAG_NONE};
    }
    if (write_cl) {
        int n = snprintf(digits, sizeof(digits), "%lld", (long long)cl);
        nv[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)digits, 14, (size_t)n, NGHTTP2_NV_FLAG_NONE};
        if (!s->no_body)
            s->resp_left = cl;
    }
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_source};
    int rv = nghttp2_submit_response(s->h->ss, s->id, nv, k, s->no_body ? NULL : &prd);
    if (nv != stack)
        free(nv);
    if (lower != lstack)
        free(lower);
    if (rv != 0) {
        cs_log(CS_LOG_DEBUG, "h2: response on stream %d of %s: %s", s->id, cs_conn_peer(s->h->c),
               nghttp2_strerror(rv));
        return -1;
    }
    s->submitted = 1;
    r->started = 1;
    return 0;
}

static void data_ready(h2_stream *s)
{
    if (s->deferred && !s->closed) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->h->ss, s->id);
    }
}

/* Inline (WSGI) handler waiting on this stream: move the connection along
 * until `until` holds, the stream dies or the body timeout passes. */
static int pump(h2_stream *s, int (*until)(h2_stream *))
{
    cs_h2 *h = s->h;
    while (!until(s)) {
        if (h->dead || s->closed || h2_flush(h) < 0)
            return -1;
        if (until(s))
            break;
        short ev = POLLIN | (cs_conn_queued(h->c) ? POLLOUT : 0);
        int ready = cs_conn_wait(h->c, ev, h->w->body_ms);
        if (ready <= 0) {
            if (ready == 0)
                s->req.body_error = 408;
            return -1;
        }
        if (cs_conn_flush(h->c) < 0) {
            h->dead = 1;
            return -1;
        }
        size_t cap;
        unsigned char *buf = cs_conn_scratch(h->c, &cap);
        ssize_t n = buf ? cs_conn_recv(h->c, buf, cap) : -1;
        if (n > 0) {
            ssize_t rv = nghttp2_session_mem_recv(h->ss, buf, (size_t)n);
            if (rv < 0)
                recv_failed(h, rv);
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            h->dead = 1;
        }
    }
    return 0;
}

static int drained(h2_stream *s) { return s->obytes <= OUT_LOW; }

static int h2_send(cs_req *r, const cs_resp_head *hd, const struct iovec *iov, int iovcnt, int flags)
{
    h2_stream *s = from_req(r);
    cs_h2 *h = s->h;
    if (s->closed || h->dead || s->out_fin)
        return -1;
    if (hd && submit_head(s, hd, iov, iovcnt, flags) < 0)
        return -1;
    if (!s->no_body) {
        for (int i = 0; i < iovcnt; i++) {
            size_t n = iov[i].iov_len;
            if (s->resp_left >= 0 && (int64_t)n > s->resp_left)
                n = (size_t)s->resp_left;      /* never past the Content-Length we sent */
            if (n && queue_mem(s, iov[i].iov_base, n) < 0)
                return -1;
            if (s->resp_left >= 0)
                s->resp_left -= (int64_t)n;
        }
    }
    if (flags & CS_SEND_FIN) {
        if (s->resp_left > 0) {
            cs_log(CS_LOG_WARNING, "h2: response on stream %d of %s ended %lld bytes short of its Content-Length",
                   s->id, cs_conn_peer(h->c), (long long)s->resp_left);
            nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        }
        s->out_fin = 1;
    }
    data_ready(s);
    if (s->obytes > OUT_HIGH && !(flags & CS_SEND_FIN)) {
        if (h2_flush(h) < 0)
            return -1;
        if (s->obytes > OUT_HIGH) {
            if (flags & CS_SEND_MAY_SUSPEND) {
                r->blocked = 1;
                s->send_due = cs_now_ms() + h->w->body_ms;
                schedule_flush(h);
                return 1;
            }
            if (pump(s, drained) < 0)
                return -1;
        }
    }
    schedule_flush(h);
    return 0;
}

static int h2_sendfile(cs_req *r, const cs_resp_head *hd, int fd, off_t off, uint64_t len, int flags)
{
    h2_stream *s = from_req(r);
    if (h2_send(r, hd, NULL, 0, flags & CS_SEND_TRAILERS) < 0) {
        close(fd);
        return -1;
    }
    if (s->no_body || len == 0) {
        close(fd);
    } else {
        if (s->resp_left >= 0 && (int64_t)len > s->resp_left)
            len = (uint64_t)s->resp_left;
        if (s->resp_left >= 0)
            s->resp_left -= (int64_t)len;
        if (queue_file(s, fd, off, (size_t)len) < 0)
            return -1;
    }
    return h2_send(r, NULL, NULL, 0, flags & CS_SEND_FIN);
}

static void h2_abort(cs_req *r)
{
    h2_stream *s = from_req(r);
    if (!s->closed && !s->h->dead) {
        nghttp2_submit_rst_stream(s->h->ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        schedule_flush(s->h);
    }
    s->out_fin = 1;
}

static int h2_trailers(cs_req *r, const cs_header *f, size_t n)
{
    h2_stream *s = from_req(r);
    if (s->closed || s->h->dead || s->out_fin)
        return -1;
    size_t text = 0;
    for (size_t i = 0; i < n; i++)
        text += f[i].name_len + f[i].value_len;
    if (n && (!(s->trailers = calloc(n, sizeof(nghttp2_nv))) || !(s->trailer_text = malloc(text ? text : 1)))) {
        cs_log(CS_LOG_ERROR, "h2: out of memory for trailers");
        return -1;
    }
    char *p = s->trailer_text;
    for (size_t i = 0; i < n; i++) {
        nghttp2_nv *v = &s->trailers[s->ntrailers++];
        for (size_t j = 0; j < f[i].name_len; j++) {
            char ch = f[i].name[j];
            p[j] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        v->name = (uint8_t *)p;
        v->namelen = f[i].name_len;
        p += f[i].name_len;
        memcpy(p, f[i].value, f[i].value_len);
        v->value = (uint8_t *)p;
        v->valuelen = f[i].value_len;
        p += f[i].value_len;
    }
    return h2_send(r, NULL, NULL, 0, CS_SEND_FIN);
}

/* ---- request bodies -------------------------------------------------------- */

static void give_back(h2_stream *s, size_t n)
{
    if (n && !s->closed && !s->h->dead) {
        nghttp2_session_consume(s->h->ss, s->id, n);
        schedule_flush(s->h);
    }
}

/* The app is through with the body: what it left gives the window back now
 * (later DATA is dropped as it comes; see on_frame_send for the reset). */
static void unread(h2_stream *s)
{
    if (s->in.len && !s->closed && !s->h->dead)
        nghttp2_session_consume(s->h->ss, s->id, s->in.len);
    s->in.len = 0;
    s->discard = 1;
}

static int has_input(h2_stream *s) { return s->in.len > 0 || s->in_end || s->req.body_error; }

static ssize_t h2_read(cs_req *r, char *buf, size_t n)
{
    h2_stream *s = from_req(r);
    if (n == 0)
        return 0;
    if (!has_input(s) && !s->closed && pump(s, has_input) < 0 && !has_input(s)) {
        if (!r->body_error)
            r->body_error = CS_BODY_GONE;
        return -1;
    }
    if (s->in.len) {
        size_t take = s->in.len < n ? s->in.len : n;
        memcpy(buf, s->in.p, take);
        memmove(s->in.p, s->in.p + take, s->in.len - take);
        s->in.len -= take;
        give_back(s, take);
        return (ssize_t)take;
    }
    if (r->body_error)
        return -1;
    if (s->in_end)
        return 0;
    r->body_error = CS_BODY_GONE;
    return -1;
}

static int h2_body(cs_req *r, const char **p, size_t *n, int *more)
{
    h2_stream *s = from_req(r);
    s->given.len = 0;
    if (s->in.len) {
        h2_buf t = s->given;
        s->given = s->in;
        s->in = t;
        *p = s->given.p;
        *n = s->given.len;
        *more = !s->in_end;
        give_back(s, s->given.len);
        return 1;
    }
    if (r->body_error)
        return -1;
    if (s->in_end)
        return 0;
    if (s->closed) {
        r->body_error = CS_BODY_GONE;
        return -1;
    }
    if (!s->want_body)
        s->body_due = cs_now_ms() + s->h->w->body_ms;
    s->want_body = 1;
    return CS_AGAIN;
}

static void h2_done(cs_req *r)
{
    h2_stream *s = from_req(r);
    cs_h2 *h = s->h;
    r->suspended = 0;
    r->blocked = 0;
    s->app_done = 1;
    cs_worker_request_done(h->w);
    if (!s->out_fin && !s->closed)
        nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    unread(s);
    schedule_flush(h);
    stream_maybe_free(s);
}

static int no_ws_accept(cs_req *r, const char *sp, size_t n, const cs_header *x, size_t k)
{
    (void)r, (void)sp, (void)n, (void)x, (void)k;
    return -1;
}
static int no_ws_send(cs_req *r, int op, const char *p, size_t n)
{
    (void)r, (void)op, (void)p, (void)n;
    return -1;
}
static int no_ws_close(cs_req *r, int code, const char *p, size_t n)
{
    (void)r, (void)code, (void)p, (void)n;
    return -1;
}
static void no_ws_pause(cs_req *r, int paused) { (void)r, (void)paused; }

static const cs_req_ops h2_ops = {h2_read, h2_send, h2_sendfile, h2_abort,  h2_body,    h2_trailers,
                                  h2_done, no_ws_accept, no_ws_send, no_ws_close, no_ws_pause};

/* ---- dispatch ---------------------------------------------------------------- */

/* A server-made answer for a stream the app never sees. */
static void answer(h2_stream *s, int status)
{
    const char *reason = cs_status_reason(status);
    char body[64];
    int n = snprintf(body, sizeof(body), "%s\n", reason);
    static const cs_header ct = {"content-type", 12, "text/plain; charset=utf-8", 25};
    cs_resp_head hd = {.status = status, .reason = reason, .reason_len = strlen(reason), .headers = &ct,
                       .num_headers = 1, .content_length = n};
    struct iovec v = {body, (size_t)n};
    s->discard = 1;
    h2_send(&s->req, &hd, &v, 1, CS_SEND_FIN);
}

/* Turn the collected head into the cs_req.  -1: answered with an error. */
static int build_req(h2_stream *s)
{
    cs_h2 *h = s->h;
    cs_req *r = &s->req;
    size_t nf = s->nfields + (s->have_auth ? 1 : 0) + 1;
    if (s->too_big || s->nfields > h->w->limits.max_fields) {
        answer(s, 431);
        return -1;
    }
    if (!(s->hdrs = calloc(nf, sizeof(cs_header)))) {
        answer(s, 503);
        return -1;
    }
    /* cookies: one field joined with "; " (RFC 9113 8.2.3) */
    char *cookie = NULL;
    size_t cookie_len = 0;
    if (s->cookie_total) {
        size_t at = s->head.len;
        if (s->head.cap - s->head.len < s->cookie_total) {
            /* room first: the joined value is copied from the same buffer */
            char *np = realloc(s->head.p, s->head.len + s->cookie_total);
            if (!np)
                goto oom;
            s->head.p = np;
            s->head.cap = s->head.len + s->cookie_total;
        }
        for (size_t i = 0; i < s->nfields; i++) {
            size_t *f = s->fields + 4 * i;
            if (f[1] == 6 && memcmp(s->head.p + f[0], "cookie", 6) == 0) {
                if (cookie_len && buf_add(&s->head, "; ", 2) < 0)
                    goto oom;
                if (buf_add(&s->head, s->head.p + f[2], f[3]) < 0)
                    goto oom;
                cookie_len = s->head.len - at;
            }
        }
        cookie = (char *)(uintptr_t)at;    /* an offset until the arena stops moving */
    }
    const char *base = s->head.p;
    size_t k = 0;
    int have_host = 0, cookie_done = 0;
    for (size_t i = 0; i < s->nfields; i++) {
        size_t *f = s->fields + 4 * i;
        const char *name = base + f[0];
        if (f[1] == 6 && memcmp(name, "cookie", 6) == 0) {
            if (cookie_done)
                continue;
            cookie_done = 1;
            s->hdrs[k++] = (cs_header){name, 6, base + (uintptr_t)cookie, cookie_len};
            continue;
        }
        if (f[1] == 4 && memcmp(name, "host", 4) == 0)
            have_host = 1;
        s->hdrs[k++] = (cs_header){name, f[1], base + f[2], f[3]};
        if (f[1] == 2 && memcmp(name, "te", 2) == 0 && memmem(base + f[2], f[3], "trailers", 8))
            r->te_trailers = 1;
    }
    if (!have_host && s->have_auth)
        s->hdrs[k++] = (cs_header){"host", 4, base + s->auth_off, s->auth_len};
    r->ops = &h2_ops;
    r->method = base + s->method_off;
    r->method_len = s->method_len;
    r->target = base + s->path_off;
    r->target_len = s->path_len;
    const char *q = memchr(r->target, '?', s->path_len);
    r->path = r->target;
    r->path_len = q ? (size_t)(q - r->target) : s->path_len;
    r->query = q ? q + 1 : r->target + s->path_len;
    r->query_len = q ? s->path_len - r->path_len - 1 : 0;
    r->headers = s->hdrs;
    r->num_headers = k;
    r->protocol = "HTTP/2";
    cs_conn_fill_req(h->c, r);
    r->head_only = s->method_len == 4 && memcmp(r->method, "HEAD", 4) == 0;
    if (s->in_end && !s->in.len && !s->body_seen) {
        r->content_length = 0;
        r->has_body = 0;
    } else {
        r->content_length = s->content_length;
        r->has_body = s->content_length != 0;
    }
    if (h->w->body_limit && s->content_length > 0 && (uint64_t)s->content_length > h->w->body_limit) {
        answer(s, 413);
        return -1;
    }
    return 0;
oom:
    cs_log(CS_LOG_ERROR, "h2: out of memory for a request head from %s", cs_conn_peer(h->c));
    answer(s, 503);
    return -1;
}

/* After the handler (or a resume) returned. */
static void after_handler(h2_stream *s)
{
    cs_worker *w = s->h->w;
    s->in_app = 0;
    if (s->req.suspended)
        return;                     /* the app task (or a yielded WSGI response) goes on */
    if (!s->out_fin) {
        if (!s->req.started && !s->closed && !s->h->dead) {
            cs_log(CS_LOG_ERROR, "h2: handler returned without a response for %s", cs_conn_peer(s->h->c));
            answer(s, 500);
        } else if (!s->closed) {
            h2_abort(&s->req);
        }
    }
    s->app_done = 1;
    unread(s);
    cs_worker_request_done(w);
    stream_maybe_free(s);
}

static void run_stream(h2_stream *s, int resume)
{
    cs_worker *w = s->h->w;
    void *tok = w->app_enter ? w->app_enter() : NULL;
    s->in_app = 1;
    if (resume)
        w->resume(&s->req, w->handler_data);
    else
        w->handler(&s->req, w->handler_data);
    after_handler(s);
    if (w->app_leave)
        w->app_leave(tok);
}

/* The cancel hook, with the GIL when the loop thread does not hold it. */
static void cancel(cs_worker *w, h2_stream *s)
{
    void *tok = w->app_enter ? w->app_enter() : NULL;
    w->cancel(&s->req, w->handler_data);
    if (w->app_leave)
        w->app_leave(tok);
}

/* Loop-side work the callbacks left: dispatch, resume, cancel. */
static void run_lists(cs_h2 *h)
{
    cs_worker *w = h->w;
    for (int rounds = 0; rounds < 64 && (h->ready || h->wake || h->closed); rounds++) {
        while (h->ready) {
            h2_stream *s = h->ready;
            h->ready = s->rnext;
            if (!h->ready)
                h->ready_tail = NULL;
            s->on_ready = 0;
            if (s->closed) {
                stream_maybe_free(s);
                continue;
            }
            if (!w->async && !s->in_end && s->in.len < (size_t)w->cfg->h2_window && !s->req.body_error) {
                /* a blocking app reads its body without stalling the worker:
                 * dispatch once the body is in, or a window's worth of it */
                s->held = 1;
                s->body_due = cs_now_ms() + w->body_ms;
                continue;
            }
            if (build_req(s) < 0)
                continue;           /* answered for the app */
            s->dispatched = 1;
            s->since = cs_now_ms();
            run_stream(s, 0);
        }
        while (h->wake) {
            h2_stream *s = h->wake;
            h->wake = s->wnext;
            s->on_wake = 0;
            if (!s->req.suspended)
                continue;
            if (s->req.blocked && s->obytes > OUT_LOW && !s->closed)
                continue;
            s->req.blocked = 0;
            s->want_body = 0;
            if (w->async) {
                w->resume(&s->req, w->handler_data);
            } else {
                run_stream(s, 1);
            }
        }
        while (h->closed) {
            h2_stream *s = h->closed;
            h->closed = s->cnext;
            s->on_closed = 0;
            if (s->req.suspended && !s->close_code && s->out_fin) {
                /* a normal end while the app runs on: it finishes by itself;
                 * one waiting on the body or the window hears the end now */
                if (s->want_body || s->req.blocked) {
                    s->want_body = 0;
                    s->req.blocked = 0;
                    if (w->async)
                        w->resume(&s->req, w->handler_data);
                    else
                        run_stream(s, 1);
                }
            } else if (s->req.suspended) {
                /* reset by the client while its app runs: the app hears a disconnect */
                s->req.suspended = 0;
                s->req.blocked = 0;
                cancel(w, s);
                s->app_done = 1;
                if (w->async)
                    cs_worker_request_done(w);
            }
            stream_maybe_free(s);
        }
    }
}

/* ---- nghttp2 callbacks --------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *ss, const nghttp2_frame *fr, void *ud)
{
    cs_h2 *h = ud;
    if (fr->hd.type != NGHTTP2_HEADERS || fr->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_stream *s = stream_new(h, fr->hd.stream_id);
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    h->idle_since = 0;
    nghttp2_session_set_stream_user_data(ss, fr->hd.stream_id, s);
    return 0;
}

static int on_header(nghttp2_session *ss, const nghttp2_frame *fr, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    cs_h2 *h = ud;
    if (fr->hd.type != NGHTTP2_HEADERS || fr->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;                   /* trailers: not passed on */
    h2_stream *s = nghttp2_session_get_stream_user_data(ss, fr->hd.stream_id);
    if (!s || s->too_big)
        return 0;
    s->list_size += namelen + valuelen + 32;
    if (s->list_size > (size_t)h->w->cfg->h2_max_header_list) {
        s->too_big = 1;
        return 0;
    }
    size_t at = s->head.len;
    if (namelen && name[0] == ':') {
        /* nghttp2 has checked the pseudo-fields (RFC 9113 8.3) */
        if (buf_add(&s->head, value, valuelen) < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (namelen == 7 && memcmp(name, ":method", 7) == 0)
            s->method_off = at, s->method_len = valuelen, s->have_method = 1;
        else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
            s->path_off = at, s->path_len = valuelen, s->have_path = 1;
        else if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
            s->auth_off = at, s->auth_len = valuelen, s->have_auth = 1;
        return 0;
    }
    if (s->nfields == s->fields_cap) {
        size_t cap = s->fields_cap ? s->fields_cap * 2 : 16;
        size_t *f = realloc(s->fields, cap * 4 * sizeof(size_t));
        if (!f)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        s->fields = f;
        s->fields_cap = cap;
    }
    if (buf_add(&s->head, name, namelen) < 0 || buf_add(&s->head, value, valuelen) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t *f = s->fields + 4 * s->nfields++;
    f[0] = at;
    f[1] = namelen;
    f[2] = at + namelen;
    f[3] = valuelen;
    if (namelen == 6 && memcmp(name, "cookie", 6) == 0)
        s->cookie_total += valuelen + 2;
    if (namelen == 14 && memcmp(name, "content-length", 14) == 0) {
        int64_t v = 0;
        for (size_t i = 0; i < valuelen && v < ((int64_t)1 << 60); i++)
            v = v * 10 + (value[i] - '0');    /* digits only: nghttp2 checked */
        s->content_length = v;
    }
    return 0;
}

static int on_begin_frame(nghttp2_session *ss, const nghttp2_frame_hd *hd, void *ud)
{
    (void)ss;
    cs_h2 *h = ud;
    switch (hd->type) {
    case NGHTTP2_CONTINUATION: {
        h2_stream *s = nghttp2_session_get_stream_user_data(h->ss, hd->stream_id);
        if (s && ++s->continuations > MAX_CONTINUATIONS) {
            flood(h, "a CONTINUATION flood");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    }
    case NGHTTP2_PING:
    case NGHTTP2_SETTINGS:
        if (!(hd->flags & NGHTTP2_FLAG_ACK) && over(h, &h->n_ping_settings, LIMIT_PING_SETTINGS)) {
            flood(h, hd->type == NGHTTP2_PING ? "a PING flood" : "a SETTINGS flood");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    case NGHTTP2_DATA:
        if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM) && over(h, &h->n_empty_data, LIMIT_EMPTY_DATA)) {
            flood(h, "a flood of empty DATA frames");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    case NGHTTP2_PRIORITY:
        if (over(h, &h->n_priority, LIMIT_PRIORITY)) {
            flood(h, "a PRIORITY flood");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *ss, const nghttp2_frame *fr, void *ud)
{
    cs_h2 *h = ud;
    h2_stream *s = fr->hd.stream_id ? nghttp2_session_get_stream_user_data(ss, fr->hd.stream_id) : NULL;
    switch (fr->hd.type) {
    case NGHTTP2_HEADERS:
        if (!s)
            break;
        if (fr->hd.flags & NGHTTP2_FLAG_END_STREAM)
            s->in_end = 1;
        if (fr->headers.cat == NGHTTP2_HCAT_REQUEST) {
            make_ready(h, s);
        } else {
            release_held(h, s);
            if (s->want_body)
                wake(s);            /* trailers end the body */
        }
        break;
    case NGHTTP2_DATA:
        if (s && (fr->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            s->in_end = 1;
            release_held(h, s);
            if (s->want_body)
                wake(s);
        }
        break;
    case NGHTTP2_RST_STREAM:
        /* only resets of live streams count: a client answers DATA that was
         * already on its way to a stream it cancelled with more RST_STREAMs */
        if (s && !s->closed && over(h, &h->n_resets, LIMIT_RESETS)) {
            flood(h, "a rapid-reset flood");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    case NGHTTP2_WINDOW_UPDATE:
        if (fr->window_update.window_size_increment < 1024 && over(h, &h->n_small_wu, LIMIT_SMALL_WINDOW_UPDATE)) {
            flood(h, "a flood of tiny WINDOW_UPDATE frames");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ss, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud)
{
    (void)flags;
    cs_h2 *h = ud;
    h2_stream *s = nghttp2_session_get_stream_user_data(ss, id);
    if (!s || s->discard || s->app_done) {
        nghttp2_session_consume(ss, id, len);   /* nobody reads it: window back at once */
        return 0;
    }
    s->body_seen += len;
    s->body_due = cs_now_ms() + h->w->body_ms;   /* a stall clock: progress restarts it */
    if (h->w->body_limit && s->body_seen > h->w->body_limit && !s->req.body_error) {
        s->req.body_error = 413;
        nghttp2_session_consume(ss, id, len);
        release_held(h, s);
        if (s->want_body)
            wake(s);
        return 0;
    }
    if (buf_add(&s->in, data, len) < 0) {
        cs_log(CS_LOG_ERROR, "h2: out of memory buffering a request body from %s", cs_conn_peer(h->c));
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    release_held(h, s);
    if (s->want_body)
        wake(s);
    return 0;
}

static int on_stream_close(nghttp2_session *ss, int32_t id, uint32_t code, void *ud)
{
    cs_h2 *h = ud;
    h2_stream *s = nghttp2_session_get_stream_user_data(ss, id);
    if (!s)
        return 0;
    s->closed = 1;
    s->close_code = code;
    if (s->in.len) {
        nghttp2_session_consume_connection(ss, s->in.len);
        s->in.len = 0;
    }
    if (!s->in_end && !s->req.body_error)
        s->req.body_error = CS_BODY_GONE;
    if (!s->on_closed) {
        s->on_closed = 1;
        s->cnext = h->closed;
        h->closed = s;
    }
    if (!h->in_io)
        cs_conn_kick(h->c);
    return 0;
}

/* Our response is complete while the client still uploads: ask it to stop,
 * without error (RFC 9113 8.1).  Not earlier: nghttp2 sends RST_STREAM
 * ahead of queued DATA, which would cut the response off. */
static int on_frame_send(nghttp2_session *ss, const nghttp2_frame *fr, void *ud)
{
    (void)ud;
    if ((fr->hd.type == NGHTTP2_HEADERS || fr->hd.type == NGHTTP2_DATA) && (fr->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        h2_stream *s = nghttp2_session_get_stream_user_data(ss, fr->hd.stream_id);
        if (s && !s->in_end && !s->closed && s->discard)
            nghttp2_submit_rst_stream(ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int on_invalid_frame(nghttp2_session *ss, const nghttp2_frame *fr, int err, void *ud)
{
    (void)ss;
    cs_h2 *h = ud;
    cs_log(CS_LOG_DEBUG, "h2: invalid frame (type %d) from %s: %s", fr->hd.type, cs_conn_peer(h->c),
           nghttp2_strerror(err));
    return 0;
}

/* ---- the session ----------------------------------------------------------------- */

cs_h2 *cs_h2_new(cs_conn *c, const char *in, size_t n)
{
    cs_worker *w = cs_conn_worker(c);
    const cs_config *cfg = w->cfg;
    cs_h2 *h = calloc(1, sizeof(*h));
    nghttp2_session_callbacks *cb = NULL;
    nghttp2_option *opt = NULL;
    if (!h || nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&opt) != 0) {
        cs_log(CS_LOG_ERROR, "h2: out of memory for a session");
        goto fail;
    }
    h->c = c;
    h->w = w;
    h->idle_since = cs_now_ms();
    h->win_start = h->idle_since;
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_continuations(opt, MAX_CONTINUATIONS);
    /* nghttp2's own reset limit (bursts of 1000, 33/s by default) counts
     * resets of closed streams too, and a client answers every DATA frame
     * already in flight to a download it cancelled with one: a wide receive
     * window makes that a thousand.  Ours (on_frame_recv) counts resets of
     * live streams, the ones that cost work; a reset of a closed stream costs
     * no more than any other ignored frame. */
    nghttp2_option_set_stream_reset_rate_limit(opt, UINT32_MAX, UINT32_MAX);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_outbound_ack(opt, 256);
    if (nghttp2_session_server_new2(&h->ss, cb, h, opt) != 0) {
        cs_log(CS_LOG_ERROR, "h2: cannot create a session");
        goto fail;
    }
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    cb = NULL;
    opt = NULL;
    int32_t window = (int32_t)cfg->h2_window;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)cfg->h2_max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)cfg->h2_max_header_list},
    };
    /* the connection window covers a few streams' worth of unread body */
    int64_t conn_window = (int64_t)window * 4;
    if (conn_window > 0x7fffffff)
        conn_window = 0x7fffffff;
    if (nghttp2_submit_settings(h->ss, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(h->ss, NGHTTP2_FLAG_NONE, 0, (int32_t)conn_window) != 0) {
        cs_log(CS_LOG_ERROR, "h2: cannot submit the server SETTINGS");
        goto fail;
    }
    h->in_io = 1;
    if (n) {
        ssize_t rv = nghttp2_session_mem_recv(h->ss, (const uint8_t *)in, n);
        if (rv < 0)
            recv_failed(h, rv);
    }
    h->in_io = 0;
    return h;
fail:
    if (cb)
        nghttp2_session_callbacks_del(cb);
    if (opt)
        nghttp2_option_del(opt);
    if (h && h->ss)
        nghttp2_session_del(h->ss);
    free(h);
    return NULL;
}

/* What to watch next; -1 when the connection is over. */
static int settle(cs_h2 *h)
{
    if (h->dead) {
        /* the error's GOAWAY goes out if it can, then the connection ends */
        return -1;
    }
    int want_read = nghttp2_session_want_read(h->ss);
    int want_write = nghttp2_session_want_write(h->ss);
    size_t queued = cs_conn_queued(h->c);
    /* nghttp2 wants nothing more (a connection error's GOAWAY went out, or
     * both sides are done): over, even if apps still hold streams (cs_h2_free
     * tells them) */
    if (!want_read && !want_write && !queued)
        return -1;
    uint32_t ev = (want_read ? EPOLLIN : 0) | (queued ? EPOLLOUT : 0);
    if (!ev)
        ev = EPOLLRDHUP;
    return cs_conn_events(h->c, ev);
}

int cs_h2_io(cs_h2 *h, uint32_t events)
{
    h->in_io = 1;
    if (events & (EPOLLERR | EPOLLHUP))
        h->dead = h->broken = 1;
    if (!h->dead && (events & EPOLLOUT) && cs_conn_flush(h->c) < 0)
        h->dead = h->broken = 1;
    if (!h->dead && (events & EPOLLIN)) {
        /* a bounded number of reads per event: other connections get their turn */
        for (int i = 0; i < 4 && !h->dead; i++) {
            size_t cap;
            unsigned char *buf = cs_conn_scratch(h->c, &cap);
            ssize_t n = buf ? cs_conn_recv(h->c, buf, cap) : -1;
            if (n > 0) {
                ssize_t rv = nghttp2_session_mem_recv(h->ss, buf, (size_t)n);
                if (rv < 0)
                    recv_failed(h, rv);
                run_lists(h);
                if ((size_t)n < cap)
                    break;
                continue;
            }
            if (n == 0 || (errno != EAGAIN && errno != EINTR))
                h->dead = h->broken = 1;
            break;
        }
    }
    run_lists(h);
    if (h->dead) {
        /* queue the GOAWAY nghttp2 made for the error: conn.c flushes it
         * and closes gently, so a reset does not destroy it on the way */
        if (!h->broken) {
            nghttp2_session_send(h->ss);
            obuf_flush(h);
        }
        h->in_io = 0;
        return -1;
    }
    /* writing may wake streams (drained below OUT_LOW) that write again */
    for (int i = 0; i < 4 && !h->dead; i++) {
        h->flush_pending = 0;
        h2_flush(h);
        if (!h->ready && !h->wake && !h->closed)
            break;
        run_lists(h);
    }
    h->in_io = 0;
    if (h->wake || h->closed || h->ready)
        cs_conn_kick(h->c);
    return settle(h);
}

int cs_h2_sweep(cs_h2 *h, uint64_t now, int stopping)
{
    cs_worker *w = h->w;
    if (h->dead)
        return -1;
    if (!h->goaway && (stopping || (!h->streams && h->idle_since && now - h->idle_since >= w->keepalive_ms))) {
        /* graceful: streams already started finish; no new ones */
        nghttp2_submit_goaway(h->ss, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ss),
                              NGHTTP2_NO_ERROR, NULL, 0);
        h->goaway = 1;
        h->in_io = 1;
        h2_flush(h);
        h->in_io = 0;
        if (!h->streams)
            return -1;
    }
    if (h->goaway && !h->streams && !cs_conn_queued(h->c))
        return -1;
    /* ASGI apps past --request-timeout: the same as for HTTP/1.1 */
    for (h2_stream *s = h->streams, *next; s; s = next) {
        next = s->next;
        if (!s->closed && s->held && now >= s->body_due) {
            cs_log(CS_LOG_INFO, "h2: %s stalled sending the body of stream %d; reset", cs_conn_peer(h->c), s->id);
            nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            continue;
        }
        if (!s->closed && !s->dispatched && !s->on_ready && !s->held && now - s->created >= w->header_ms) {
            /* a header block that never ends (slowloris over h2) */
            cs_log(CS_LOG_DEBUG, "h2: %s too slow sending the head of stream %d; reset", cs_conn_peer(h->c), s->id);
            nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            continue;
        }
        if (!s->closed && s->req.blocked && s->req.suspended && now >= s->send_due) {
            cs_log(CS_LOG_INFO, "h2: %s stopped reading stream %d (no window); reset", cs_conn_peer(h->c), s->id);
            nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            continue;
        }
        if (!s->closed && s->want_body && s->req.suspended && now >= s->body_due) {
            cs_log(CS_LOG_INFO, "h2: %s stalled sending the body of stream %d; reset", cs_conn_peer(h->c), s->id);
            s->req.body_error = 408;
            nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            continue;
        }
        if (w->async && w->request_ms && s->req.suspended && s->dispatched && now - s->since > w->request_ms) {
            cs_log(CS_LOG_ERROR, "Request from %s (h2 stream %d) ran for %.1f s, over --request-timeout; %s",
                   cs_conn_peer(h->c), s->id, (now - s->since) / 1000.0,
                   s->req.started ? "stream reset" : "answered 504");
            s->req.expired = 1;
            s->req.suspended = 0;
            w->cancel(&s->req, w->handler_data);
            cs_worker_request_done(w);
            s->app_done = 1;
            s->in_app = 0;
            if (!s->req.started)
                answer(s, 504);
            else
                h2_abort(&s->req);
            stream_maybe_free(s);
        }
    }
    if (nghttp2_session_want_write(h->ss) || cs_conn_queued(h->c)) {
        h->in_io = 1;
        h2_flush(h);
        run_lists(h);           /* streams the resets closed: their apps hear it */
        h->in_io = 0;
        if (h->dead)
            return -1;
    }
    return settle(h);
}

void cs_h2_free(cs_h2 *h)
{
    if (!h)
        return;
    cs_worker *w = h->w;
    while (h->streams) {
        h2_stream *s = h->streams;
        if (s->req.suspended) {
            s->req.suspended = 0;
            s->req.blocked = 0;
            if (!s->req.body_error)
                s->req.body_error = CS_BODY_GONE;
            cancel(w, s);
            if (w->async)
                cs_worker_request_done(w);
        }
        s->closed = 1;
        s->in.len = 0;
        stream_free(s);
    }
    nghttp2_session_del(h->ss);
    free(h);
}
