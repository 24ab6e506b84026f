/* conn.c - HTTP/1.1 connections (RFC 9112) on the event loop.
 *
 * Owns: the read buffer and request framing, the response head and body
 * framing (Content-Length, chunked, close-delimited), the output queue with
 * backpressure, keep-alive and pipelining, the header/body/idle timeouts and
 * lingering close.  Produces cs_req for the handler (request.h).  After a
 * WebSocket handshake the app accepts, the connection carries a WebSocket
 * session: frames are read and written here, framed and checked by ws.c.
 *
 * Read buffer layout while a request is in progress:
 *   [0, bpos)      consumed (head, body already handed to the app)
 *   [bpos, bend)   decoded body bytes not yet read by the app
 *   [raw, rlen)    bytes not yet framed (rest of the body, next request)
 * bend <= raw: chunked decoding moves payload left over its framing. */
#include "conn.h"
#include "log.h"
#include "resp.h"
#include "h2.h"
#include "tls.h"
#include "ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_INITIAL (16 * 1024)
#define BODY_BUF (64 * 1024)         /* async bodies stream through a buffer this big */
#define OUT_HIGH (256 * 1024)        /* app context blocks above this much queued output */
#define OUT_LOW (64 * 1024)
#define LINGER_MS 2000
#define MAX_IOV 72
#define WS_SCRATCH (64 * 1024)       /* WebSocket reads: one buffer per worker */
#define WS_CLOSE_WAIT_MS 5000        /* for the peer's answer to our close frame */

enum { S_IDLE, S_HEAD, S_BODY, S_APP, S_FLUSH, S_LINGER, S_WS, S_TLS, S_H2 };
enum { R_NONE, R_LENGTH, R_CHUNKED, R_CLOSE };
enum { NEXT_WAIT, NEXT_READY, NEXT_ERROR, NEXT_H2 };

typedef struct cs_out {
    struct cs_out *next;
    int fd;                 /* >= 0: a file segment, sent with sendfile */
    off_t off;
    size_t len, pos, cap;   /* cap: room in data[] (memory segments) */
    char data[];
} cs_out;

#define OUT_SEGMENT 4096    /* small writes share one segment */

/* A WebSocket session: prepared with the handshake, open once accepted
 * (the connection is then in S_WS until the session is over and freed). */
typedef struct {
    cs_ws_reader *rd;
    cs_ws_deflater *df;             /* NULL: no compression */
    cs_ws_deflate_params pmd;
    char accept[CS_WS_ACCEPT_LEN + 1];
    char ext[192];                  /* our Sec-WebSocket-Extensions answer, "" for none */
    int close_sent, close_rcvd;
    int over;                       /* handshake done or failed: the connection ends */
    int paused;                     /* the handler's queue is full: read nothing */
    int kick;                       /* work for the loop: leftover input, a finished app */
    int pending_in;                 /* bytes after the handshake request wait in rbuf */
    int code;                       /* close code the app hears */
    char reason[124];
    size_t reason_len;
    uint64_t next_ping, pong_due, close_due;
} cs_wsess;

struct cs_conn {
    cs_io io;                       /* first: the loop hands it back to us */
    cs_worker *w;
    cs_conn *prev, *next;           /* worker's list */
    cs_conn *qnext;                 /* pool job/done lists */
    int state;
    int in_pool;                    /* owned by a pool thread (loop thread's view) */
    int in_app;                     /* handler running: writes may block */
    int async_app;                  /* an ASGI app task runs on past its handler call */
    int want_body;                  /* ... and waits for request body bytes */
    int app_finished;               /* ... and has finished: pick up on the next wake */
    uint64_t app_since;             /* when the running request was dispatched */
    uint64_t deadline;
    const cs_listener *listener;
    char peer[INET6_ADDRSTRLEN];
    int peer_port;

    char *rbuf;
    size_t rcap, rlen, rpos;
    size_t bpos, bend, raw;
    int have_req;                   /* a parsed request awaits dispatch */
    int body_kind;
    uint64_t body_left, body_seen;
    int framed;                     /* the whole body has been framed */
    cs_chunked chunked;
    int continue_sent;
    int peer_eof;

    cs_request pr;
    cs_req req;
    int keep_alive;
    int resp_mode;
    uint64_t resp_left;
    int resp_done;
    int overflow_logged;
    int cork;                       /* more pipelined requests follow: batch the responses */
    int closing;                    /* close once the output is flushed */
    int broken;                     /* the socket failed: drop without flushing */
    int timed_out;                  /* --request-timeout fired (under the inflight lock) */
    cs_wsess *ws;                   /* a WebSocket handshake or session */
    cs_ssl *ssl;                    /* TLS session, or NULL for plaintext */
    cs_h2 *h2;                      /* an HTTP/2 session (state S_H2) */
    int nparsed;                    /* requests parsed so far: only the first may be h2c */

    cs_out *out_head, *out_tail;
    size_t out_bytes;
    cs_header headers[];            /* limits.max_fields entries */
};

static const cs_req_ops h1_ops;
static void conn_io(cs_loop *loop, cs_io *io, uint32_t events);
static void conn_settle(cs_conn *c);
static void async_watch(cs_conn *c);
static int ws_prepare(cs_conn *c);
static void ws_free(cs_conn *c);
static void ws_detach(cs_conn *c);
static void ws_settle(cs_conn *c);
static void ws_watch(cs_conn *c);
static void ws_io(cs_conn *c, uint32_t events);
static void ws_sweep(cs_conn *c, uint64_t now, int stopping);
static unsigned char *ws_scratch(cs_worker *w);
static void h2_begin(cs_conn *c, const char *in, size_t n);

cs_conn **cs_conn_qnext(cs_conn *c) { return &c->qnext; }

static cs_conn *from_req(cs_req *r) { return (cs_conn *)((char *)r - offsetof(cs_conn, req)); }

/* ---- transport: plaintext or TLS ------------------------------------------ */

static ssize_t conn_recv(cs_conn *c, void *buf, size_t n)
{
    return c->ssl ? cs_tls_read(c->ssl, buf, n) : read(c->io.fd, buf, n);
}

static ssize_t conn_sendv(cs_conn *c, const struct iovec *v, int n)
{
    return c->ssl ? cs_tls_writev(c->ssl, v, n) : writev(c->io.fd, v, n);
}

/* Watch the socket; TLS input already decrypted is invisible to epoll, so
 * a connection that wants to read with some waiting gets a kick instead. */
static int conn_watch(cs_conn *c, uint32_t ev)
{
    if (cs_loop_watch(c->w->loop, &c->io, ev) < 0)
        return -1;
    if ((ev & EPOLLIN) && c->ssl && cs_tls_pending(c->ssl))
        return cs_loop_kick(c->w->loop, &c->io);
    return 0;
}

/* ---- blocking waits in app context --------------------------------------- */

/* Wait for events on the socket, with the GIL released.  1 ready, 0 timeout, -1 error. */
static int wait_fd(cs_conn *c, short events, uint64_t ms)
{
    cs_worker *w = c->w;
    struct pollfd p = {.fd = c->io.fd, .events = events};
    void *tok = w->unlock ? w->unlock() : NULL;
    uint64_t end = cs_now_ms() + ms;
    int rc;
    for (;;) {
        uint64_t now = cs_now_ms();
        rc = now >= end ? 0 : poll(&p, 1, (int)(end - now));
        if (rc >= 0 || errno != EINTR)
            break;
    }
    if (w->relock)
        w->relock(tok);
    return rc < 0 ? -1 : rc;
}

/* ---- output queue --------------------------------------------------------- */

static int queue_mem(cs_conn *c, const char *p, size_t n)
{
    cs_out *t = c->out_tail;
    if (t && t->fd < 0 && t->cap - t->len >= n) {
        memcpy(t->data + t->len, p, n);
        t->len += n;
        c->out_bytes += n;
        return 0;
    }
    size_t cap = n < OUT_SEGMENT ? OUT_SEGMENT : n;
    cs_out *o = malloc(sizeof(*o) + cap);
    if (!o) {
        cs_log(CS_LOG_ERROR, "conn: out of memory queueing %zu bytes for %s", n, c->peer);
        c->broken = 1;
        return -1;
    }
    o->next = NULL;
    o->fd = -1;
    o->len = n;
    o->pos = 0;
    o->cap = cap;
    memcpy(o->data, p, n);
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    c->out_bytes += n;
    return 0;
}

static int queue_file(cs_conn *c, int fd, off_t off, size_t len)
{
    cs_out *o = malloc(sizeof(*o));
    if (!o) {
        cs_log(CS_LOG_ERROR, "conn: out of memory queueing a file for %s", c->peer);
        close(fd);
        c->broken = 1;
        return -1;
    }
    *o = (cs_out){.fd = fd, .off = off, .len = len, .cap = 0};
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    c->out_bytes += len;
    return 0;
}

static void out_pop(cs_conn *c)
{
    cs_out *o = c->out_head;
    c->out_head = o->next;
    if (!c->out_head)
        c->out_tail = NULL;
    if (o->fd >= 0)
        close(o->fd);
    free(o);
}

static int is_gone(int e) { return e == EPIPE || e == ECONNRESET || e == ENOTCONN || e == ETIMEDOUT; }

static void write_failed(cs_conn *c, const char *what, int e)
{
    if (!is_gone(e))
        cs_log(CS_LOG_WARNING, "conn: %s to %s: %s", what, c->peer, strerror(e));
    c->broken = 1;
}

/* Write queued output without blocking.  1 drained, 0 would block, -1 failed. */
static int flush_out(cs_conn *c)
{
    while (c->out_head) {
        cs_out *o = c->out_head;
        ssize_t n;
        if (o->fd >= 0) {
            size_t chunk = o->len - o->pos > (1u << 30) ? (1u << 30) : o->len - o->pos;
            off_t off = o->off + (off_t)o->pos;
            if (c->ssl) {
                /* no sendfile through TLS: one record at a time through memory */
                char fb[16 * 1024];
                ssize_t got = chunk ? pread(o->fd, fb, chunk < sizeof(fb) ? chunk : sizeof(fb), off) : 0;
                struct iovec fv = {fb, got > 0 ? (size_t)got : 0};
                n = got > 0 ? conn_sendv(c, &fv, 1) : got;
            } else {
                n = chunk ? sendfile(c->io.fd, o->fd, &off, chunk) : 0;
            }
            if (n == 0 && chunk) {          /* file shrank under us */
                cs_log(CS_LOG_ERROR, "conn: file truncated while sending to %s", c->peer);
                c->broken = 1;
                return -1;
            }
        } else {
            /* gather consecutive memory segments into one writev */
            struct iovec v[64];
            int k = 0;
            for (cs_out *m = o; m && m->fd < 0 && k < 64; m = m->next) {
                v[k].iov_base = m->data + m->pos;
                v[k++].iov_len = m->len - m->pos;
            }
            n = conn_sendv(c, v, k);
            if (n > 0) {
                size_t left = (size_t)n;
                c->out_bytes -= left;
                while (left) {
                    cs_out *m = c->out_head;
                    size_t rem = m->len - m->pos;
                    if (left < rem) {
                        m->pos += left;
                        break;
                    }
                    left -= rem;
                    out_pop(c);
                }
                continue;
            }
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return 0;
            write_failed(c, o->fd >= 0 ? "sendfile" : "write", errno);
            return -1;
        }
        o->pos += (size_t)n;
        c->out_bytes -= (size_t)n;
        if (o->pos == o->len)
            out_pop(c);
    }
    return 1;
}

/* In app context: wait until the queue is below `low` (backpressure). */
static int drain_to(cs_conn *c, size_t low)
{
    while (c->out_bytes > low) {
        int r = flush_out(c);
        if (r < 0)
            return -1;
        if (r == 0 && c->out_bytes > low) {
            int ready = wait_fd(c, POLLOUT, c->w->body_ms);
            if (ready <= 0) {
                cs_log(CS_LOG_INFO, "conn: %s stopped reading; dropping the connection", c->peer);
                c->broken = 1;
                return -1;
            }
        }
    }
    return 0;
}

/* Write iov fully or queue what the socket does not take now.  With
 * may_block (app context, more body to come) and more than OUT_HIGH queued,
 * apply backpressure: a pool thread waits for the queue to drain below
 * OUT_LOW; on the loop thread (--threads 1) a handler that can yield
 * (may_block == 2) gets 1 back and is resumed later, so one slow reader never
 * freezes the worker.  A final piece is queued whole and drained by the loop. */
static int conn_write(cs_conn *c, struct iovec *iov, int n, int may_block)
{
    if (c->broken)
        return -1;
    int i = 0;
    if (!c->out_head) {
        while (i < n) {
            ssize_t w = conn_sendv(c, iov + i, n - i > 1024 ? 1024 : n - i);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    break;
                write_failed(c, "writev", errno);
                return -1;
            }
            size_t left = (size_t)w;
            while (i < n && left >= iov[i].iov_len)
                left -= iov[i++].iov_len;
            if (i < n && left) {
                iov[i].iov_base = (char *)iov[i].iov_base + left;
                iov[i].iov_len -= left;
            }
        }
    }
    for (; i < n; i++)
        if (iov[i].iov_len && queue_mem(c, iov[i].iov_base, iov[i].iov_len))
            return -1;
    if (may_block && c->in_app && c->out_bytes > OUT_HIGH) {
        if ((may_block == 2 || c->w->async) && c->w->threads == 1)
            return 1;            /* inline: yield instead of freezing the loop */
        return drain_to(c, OUT_LOW);
    }
    return 0;
}

/* ---- server-made responses ------------------------------------------------ */

/* A whole server-made response that closes the connection; its length.
 * extra: more header lines ("Name: value\r\n"), or "". */
static size_t format_error_with(char buf[512], int status, const char *extra)
{
    const char *reason = cs_status_reason(status);
    int n = snprintf(buf, 512,
                     "HTTP/1.1 %d %s\r\nServer: corsac\r\n%s%sContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                     status, reason, cs_http_date(), extra, strlen(reason) + 1, reason);
    return (size_t)n;
}

static size_t format_error(char buf[512], int status) { return format_error_with(buf, status, ""); }

/* A complete error response, then close.  The app never sees the request. */
static void send_error_with(cs_conn *c, int status, const char *extra)
{
    char buf[512];
    struct iovec v = {buf, format_error_with(buf, status, extra)};
    conn_write(c, &v, 1, 0);
    c->closing = 1;
    c->have_req = 0;
}

static void send_error(cs_conn *c, int status) { send_error_with(c, status, ""); }

/* ---- request framing ------------------------------------------------------ */

/* Frame buffered raw bytes into the decoded body region.  -1 on a framing
 * error or an over-limit body (status in req.body_error). */
static int frame_body(cs_conn *c)
{
    cs_worker *w = c->w;
    if (c->framed || c->raw >= c->rlen)
        return 0;
    if (c->body_kind == CS_BODY_LENGTH) {
        size_t avail = c->rlen - c->raw;
        size_t take = avail < c->body_left ? avail : (size_t)c->body_left;
        if (c->bend != c->raw)
            memmove(c->rbuf + c->bend, c->rbuf + c->raw, take);
        c->bend += take;
        c->raw += take;
        c->body_left -= take;
        c->framed = c->body_left == 0;
        return 0;
    }
    while (c->raw < c->rlen && !c->framed) {
        const char *data;
        size_t dlen;
        ssize_t used = cs_chunked_decode(&c->chunked, c->rbuf + c->raw, c->rlen - c->raw, &data, &dlen);
        if (used < 0) {
            cs_log(CS_LOG_DEBUG, "conn: bad chunked body from %s: %s", c->peer, c->chunked.error);
            c->req.body_error = 400;
            return -1;
        }
        if (dlen) {
            c->body_seen += dlen;
            if (w->body_limit && c->body_seen > w->body_limit) {
                c->req.body_error = 413;
                return -1;
            }
            memmove(c->rbuf + c->bend, data, dlen);
            c->bend += dlen;
        }
        c->raw += (size_t)used;
        c->framed = cs_chunked_done(&c->chunked);
    }
    return 0;
}

static int grow_rbuf(cs_conn *c, size_t want)
{
    size_t cap = c->rcap ? c->rcap : RBUF_INITIAL;
    while (cap < want)
        cap *= 2;
    if (cap == c->rcap)
        return 0;
    char *nb = realloc(c->rbuf, cap);
    if (!nb) {
        cs_log(CS_LOG_ERROR, "conn: out of memory growing the buffer of %s to %zu", c->peer, cap);
        return -1;
    }
    c->rbuf = nb;
    c->rcap = cap;
    return 0;
}

static void set_state(cs_conn *c, int state, uint64_t ms)
{
    if (c->state != state || state == S_IDLE)
        c->deadline = cs_now_ms() + ms;
    c->state = state;
}

/* What a request takes from its connection, whatever the protocol. */
void cs_conn_fill_req(cs_conn *c, cs_req *r)
{
    r->scheme = c->ssl ? "https" : "http";
    r->tls = c->ssl;
    r->server_name = c->listener->server_name;
    r->server_port = c->listener->server_port;
    r->peer_addr = c->peer;
    r->peer_port = c->peer_port;
    r->is_unix = c->listener->family == AF_UNIX;
}

/* Fill c->req from the parsed head. */
static void setup_req(cs_conn *c)
{
    cs_request *p = &c->pr;
    cs_req *r = &c->req;
    memset(r, 0, sizeof(*r));
    r->ops = &h1_ops;
    r->method = p->method;
    r->method_len = p->method_len;
    r->target = p->target;
    r->target_len = p->target_len;
    r->path = p->path;
    r->path_len = p->path_len;
    r->query = p->query;
    r->query_len = p->query_len;
    r->headers = c->headers;
    r->num_headers = p->num_headers;
    r->protocol = p->minor_version ? "HTTP/1.1" : "HTTP/1.0";
    cs_conn_fill_req(c, r);
    r->content_length = p->body == CS_BODY_LENGTH ? (int64_t)p->content_length
                        : p->body == CS_BODY_CHUNKED ? -1 : 0;
    r->has_body = p->body != CS_BODY_NONE && !(p->body == CS_BODY_LENGTH && p->content_length == 0);
    r->head_only = p->method_len == 4 && memcmp(p->method, "HEAD", 4) == 0;
    for (size_t i = 0; i < p->num_headers && p->minor_version; i++) {
        const cs_header *x = &c->headers[i];
        if (x->name_len == 2 && strncasecmp(x->name, "te", 2) == 0 && memmem(x->value, x->value_len, "trailers", 8))
            r->te_trailers = 1;
    }
    c->keep_alive = p->keep_alive;
    c->resp_mode = R_NONE;
    c->resp_done = 0;
    c->overflow_logged = 0;
    c->continue_sent = 0;
}

/* Parse and frame the next request from the buffer.  NEXT_READY: dispatch;
 * NEXT_WAIT: need more bytes (state set); NEXT_ERROR: error response queued. */
static int conn_next(cs_conn *c)
{
    cs_worker *w = c->w;
    if (!c->have_req) {
        if (c->rpos == c->rlen) {
            c->rpos = c->rlen = 0;
            set_state(c, S_IDLE, w->keepalive_ms);
            return NEXT_WAIT;
        }
        if (!c->nparsed && !c->ssl && w->cfg->http != CS_HTTP_1) {
            /* h2c with prior knowledge: the connection opens with the preface */
            int pre = cs_h2_is_preface(c->rbuf + c->rpos, c->rlen - c->rpos);
            if (pre == 1)
                return NEXT_H2;
            if (pre == 0) {
                set_state(c, S_HEAD, w->header_ms);
                return NEXT_WAIT;
            }
            if (w->cfg->http == CS_HTTP_2) {
                cs_log(CS_LOG_DEBUG, "conn: %s spoke HTTP/1 to an --http 2 port", c->peer);
                send_error(c, 505);
                return NEXT_ERROR;
            }
        }
        int n = cs_parse_request(c->rbuf + c->rpos, c->rlen - c->rpos, &c->pr, c->headers, &w->limits);
        if (n == CS_PARSE_AGAIN) {
            if (c->rpos && c->rcap - c->rlen < 2048) {
                memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
                c->rlen -= c->rpos;
                c->rpos = 0;
            }
            if (c->rlen == c->rcap && (c->rcap >= w->max_head || grow_rbuf(c, c->rcap * 2))) {
                send_error(c, 431);
                return NEXT_ERROR;
            }
            set_state(c, S_HEAD, w->header_ms);
            return NEXT_WAIT;
        }
        if (n < 0) {
            cs_log(CS_LOG_DEBUG, "conn: %d from %s: %s", c->pr.status, c->peer, c->pr.error);
            send_error(c, c->pr.status);
            return NEXT_ERROR;
        }
        setup_req(c);
        c->nparsed++;
        c->have_req = 1;
        c->rpos += (size_t)n;
        c->bpos = c->bend = c->raw = c->rpos;
        c->body_kind = c->pr.body;
        c->body_seen = 0;
        c->framed = 1;
        if (c->pr.body == CS_BODY_LENGTH) {
            if (w->body_limit && c->pr.content_length > w->body_limit) {
                send_error(c, 413);
                return NEXT_ERROR;
            }
            c->body_left = c->pr.content_length;
            c->framed = c->body_left == 0;
        } else if (c->pr.body == CS_BODY_CHUNKED) {
            cs_chunked_init(&c->chunked);
            c->framed = 0;
        }
        if (c->pr.upgrade && w->ws && cs_ws_is_upgrade(c->headers, c->pr.num_headers)) {
            const char *key, *why = "a WebSocket handshake has no body";
            size_t key_len;
            int st = c->pr.body != CS_BODY_NONE ? 400
                     : cs_ws_check_handshake(c->pr.method, c->pr.method_len, c->pr.minor_version, c->headers,
                                             c->pr.num_headers, &key, &key_len, &why);
            if (st) {
                cs_log(CS_LOG_DEBUG, "conn: %d from %s: %s", st, c->peer, why);
                send_error_with(c, st, st == 426 ? "Sec-WebSocket-Version: 13\r\n" : "");
                return NEXT_ERROR;
            }
            if (ws_prepare(c) < 0) {
                send_error(c, 503);
                return NEXT_ERROR;
            }
            cs_ws_accept_value(key, key_len, c->ws->accept);
            c->req.websocket = 1;
        }
    }
    if (frame_body(c) < 0) {
        send_error(c, c->req.body_error);
        return NEXT_ERROR;
    }
    /* Dispatch once the body is here, or the buffer is full (the app streams
     * the rest), or the client waits for 100 Continue. */
    if (c->framed || c->pr.expect_continue || c->rlen == c->rcap) {
        c->state = S_APP;
        return NEXT_READY;
    }
    set_state(c, S_BODY, w->body_ms);
    return NEXT_WAIT;
}

/* ---- request body for the app -------------------------------------------- */

/* The first read of a body the client holds back for "100 Continue". */
static int send_continue(cs_conn *c)
{
    if (c->pr.expect_continue && !c->continue_sent && !c->framed && !c->req.started) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        struct iovec v = {(void *)cont, sizeof(cont) - 1};
        c->continue_sent = 1;
        if (conn_write(c, &v, 1, 0) < 0) {
            c->req.body_error = CS_BODY_GONE;
            return -1;
        }
    }
    return 0;
}

static ssize_t h1_read(cs_req *r, char *buf, size_t n)
{
    cs_conn *c = from_req(r);
    if (n == 0)
        return 0;
    if (send_continue(c) < 0)
        return -1;
    for (;;) {
        if (c->bpos < c->bend) {
            size_t take = c->bend - c->bpos < n ? c->bend - c->bpos : n;
            memcpy(buf, c->rbuf + c->bpos, take);
            c->bpos += take;
            return (ssize_t)take;
        }
        if (c->framed)
            return 0;
        if (r->body_error)
            return -1;
        if (c->raw < c->rlen) {
            if (frame_body(c) < 0)
                return -1;
            continue;
        }
        /* Everything buffered is consumed: reuse the buffer from the start.
         * (The head is gone from here on: see request.h.) */
        c->rpos = c->rlen = c->bpos = c->bend = c->raw = 0;
        ssize_t got = conn_recv(c, c->rbuf, c->rcap);
        if (got > 0) {
            c->rlen = (size_t)got;
            continue;
        }
        if (got == 0) {
            c->peer_eof = 1;
            r->body_error = CS_BODY_GONE;
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            r->body_error = CS_BODY_GONE;
            return -1;
        }
        int ready = wait_fd(c, POLLIN, c->w->body_ms);
        if (ready == 0) {
            r->body_error = 408;
            return -1;
        }
        if (ready < 0) {
            r->body_error = CS_BODY_GONE;
            return -1;
        }
    }
}

/* Async handlers: hand over what is decoded, never wait. */
static int h1_body(cs_req *r, const char **p, size_t *n, int *more)
{
    cs_conn *c = from_req(r);
    if (send_continue(c) < 0)
        return -1;
    for (;;) {
        if (!r->body_error && frame_body(c) < 0)
            return -1;
        if (c->bpos < c->bend) {
            *p = c->rbuf + c->bpos;
            *n = c->bend - c->bpos;
            c->bpos = c->bend;
            *more = !c->framed;
            return 1;
        }
        if (c->framed)
            return 0;
        if (r->body_error)
            return -1;
        /* everything buffered is consumed: reuse the buffer from the start,
         * grown for a body that is still coming (bigger reads, fewer events) */
        c->rpos = c->rlen = c->bpos = c->bend = c->raw = 0;
        if (c->rcap < BODY_BUF && (c->body_kind == CS_BODY_CHUNKED || c->body_left > c->rcap))
            grow_rbuf(c, BODY_BUF);
        ssize_t got = conn_recv(c, c->rbuf, c->rcap);
        if (got > 0) {
            c->rlen = (size_t)got;
            continue;
        }
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && errno == EAGAIN) {
            if (!c->want_body)
                c->deadline = cs_now_ms() + c->w->body_ms;
            c->want_body = 1;
            if (c->async_app)
                async_watch(c);
            return CS_AGAIN;
        }
        c->peer_eof = got == 0;
        r->body_error = CS_BODY_GONE;
        return -1;
    }
}

/* ---- response ------------------------------------------------------------- */

static size_t put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return n;
}
#define PUTLIT(p, lit) put((p), (lit), sizeof(lit) - 1)

/* Bytes "name: value\r\n" lines take for these fields. */
static size_t fields_size(const cs_header *f, size_t n)
{
    size_t need = 0;
    for (size_t i = 0; i < n; i++)
        need += f[i].name_len + f[i].value_len + 4;
    return need;
}

/* Write the fields as "name: value\r\n" lines; the bytes written. */
static size_t put_fields(char *p, const cs_header *f, size_t n)
{
    char *start = p;
    for (size_t i = 0; i < n; i++) {
        p += put(p, f[i].name, f[i].name_len);
        p += PUTLIT(p, ": ");
        p += put(p, f[i].value, f[i].value_len);
        p += PUTLIT(p, "\r\n");
    }
    return (size_t)(p - start);
}

/* Serialize the head into buf (sized by the caller via head_size). */
static size_t head_size(const cs_resp_head *h)
{
    return 256 + h->reason_len + fields_size(h->headers, h->num_headers);
}

static size_t build_head(cs_conn *c, const cs_resp_head *h, const struct iovec *iov, int iovcnt, int flags,
                         char *buf)
{
    cs_req *r = &c->req;
    int st = h->status, fin = flags & CS_SEND_FIN;
    int64_t cl = h->content_length;
    int no_body = r->head_only || st == 204 || st == 304 || st < 200;
    if ((flags & CS_SEND_TRAILERS) && r->te_trailers && !no_body)
        cl = -1, fin = 0;           /* trailers need the chunked framing */

    if (cl < 0 && fin) {            /* the whole body is in hand: frame it exactly */
        uint64_t total = 0;
        for (int i = 0; i < iovcnt; i++)
            total += iov[i].iov_len;
        cl = (int64_t)total;
    }
    int write_cl = cl >= 0 && st != 204 && st >= 200 && !(st == 304 && h->content_length < 0);
    if (no_body) {
        c->resp_mode = R_NONE;
    } else if (cl >= 0) {
        c->resp_mode = R_LENGTH;
        c->resp_left = (uint64_t)cl;
    } else if (c->pr.minor_version == 1) {
        c->resp_mode = R_CHUNKED;
    } else {
        c->resp_mode = R_CLOSE;
    }
    int keep = c->keep_alive && !h->app_close && !atomic_load(&c->w->stopping) &&
               c->resp_mode != R_CLOSE && c->framed && !c->closing;
    if (!keep)
        c->closing = 1;

    char *p = buf;
    p += PUTLIT(p, "HTTP/1.1 ");
    *p++ = (char)('0' + st / 100);
    *p++ = (char)('0' + st / 10 % 10);
    *p++ = (char)('0' + st % 10);
    *p++ = ' ';
    p += put(p, h->reason, h->reason_len);
    p += PUTLIT(p, "\r\n");
    if (!h->has_server)
        p += PUTLIT(p, "Server: corsac\r\n");
    if (!h->has_date)
        p += put(p, cs_http_date(), 37);
    p += put_fields(p, h->headers, h->num_headers);
    if (write_cl) {
        char digits[24], *d = digits + sizeof(digits);
        uint64_t v = (uint64_t)cl;
        do {
            *--d = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        p += PUTLIT(p, "Content-Length: ");
        p += put(p, d, (size_t)(digits + sizeof(digits) - d));
        p += PUTLIT(p, "\r\n");
    }
    else if (c->resp_mode == R_CHUNKED)
        p += PUTLIT(p, "Transfer-Encoding: chunked\r\n");
    if (!keep)
        p += PUTLIT(p, "Connection: close\r\n");
    else if (c->pr.minor_version == 0)
        p += PUTLIT(p, "Connection: keep-alive\r\n");
    p += PUTLIT(p, "\r\n");
    return (size_t)(p - buf);
}

static int h1_send(cs_req *r, const cs_resp_head *h, const struct iovec *iov, int iovcnt, int flags)
{
    int fin = flags & CS_SEND_FIN;
    cs_conn *c = from_req(r);
    struct iovec v[MAX_IOV + 4];
    char stackhead[4096], sizeline[24];
    char *heap = NULL;
    int k = 0;
    if (c->broken || c->resp_done)
        return -1;
    if (c->w->request_ms && h && !c->w->async) {
        /* commit to sending a head unless the watchdog answered 504 first */
        cs_inflight *f = cs_worker_inflight(c->w);
        pthread_mutex_lock(&f->mu);
        int late = c->timed_out;
        if (!late)
            r->started = 1;
        pthread_mutex_unlock(&f->mu);
        if (late) {
            c->broken = 1;
            return -1;
        }
    }
    if (iovcnt > MAX_IOV) {
        /* split: the bridge never hands over more than MAX_IOV, but stay safe */
        int rc = h1_send(r, h, iov, MAX_IOV, (flags & CS_SEND_TRAILERS) | (fin ? CS_SEND_MAY_SUSPEND : 0));
        if (rc < 0)
            return -1;
        return h1_send(r, NULL, iov + MAX_IOV, iovcnt - MAX_IOV, flags);
    }
    if (h) {
        size_t need = head_size(h);
        char *hb = stackhead;
        if (need > sizeof(stackhead) && !(hb = heap = malloc(need))) {
            cs_log(CS_LOG_ERROR, "conn: out of memory for a %zu-byte response head", need);
            c->broken = 1;
            return -1;
        }
        v[k].iov_base = hb;
        v[k++].iov_len = build_head(c, h, iov, iovcnt, flags, hb);
        r->started = 1;
    }
    uint64_t total = 0;
    switch (c->resp_mode) {
    case R_NONE:
        break;
    case R_LENGTH: {
        uint64_t dropped = 0;
        for (int i = 0; i < iovcnt; i++) {
            size_t n = iov[i].iov_len < c->resp_left ? iov[i].iov_len : (size_t)c->resp_left;
            if (n) {
                v[k].iov_base = iov[i].iov_base;
                v[k++].iov_len = n;
                c->resp_left -= n;
            }
            dropped += iov[i].iov_len - n;
        }
        if (dropped && !c->overflow_logged) {
            /* never let surplus bytes pose as the start of a next response */
            cs_log(CS_LOG_WARNING, "conn: response to %s exceeds its Content-Length; %llu bytes dropped",
                   c->peer, (unsigned long long)dropped);
            c->overflow_logged = 1;
        }
        break;
    }
    case R_CHUNKED:
        for (int i = 0; i < iovcnt; i++)
            total += iov[i].iov_len;
        if (total) {
            v[k].iov_base = sizeline;
            v[k++].iov_len = (size_t)snprintf(sizeline, sizeof(sizeline), "%llx\r\n", (unsigned long long)total);
            for (int i = 0; i < iovcnt; i++)
                if (iov[i].iov_len)
                    v[k++] = iov[i];
            v[k].iov_base = (void *)"\r\n";
            v[k++].iov_len = 2;
        }
        if (fin) {
            v[k].iov_base = (void *)"0\r\n\r\n";
            v[k++].iov_len = 5;
        }
        break;
    case R_CLOSE:
        for (int i = 0; i < iovcnt; i++)
            if (iov[i].iov_len)
                v[k++] = iov[i];
        break;
    }
    if (fin) {
        c->resp_done = 1;
        if (c->resp_mode == R_LENGTH && c->resp_left) {
            cs_log(CS_LOG_WARNING, "conn: response to %s ended %llu bytes short of its Content-Length; closing",
                   c->peer, (unsigned long long)c->resp_left);
            c->closing = 1;
        }
    }
    int rc = 0;
    if (c->cork && fin && c->out_bytes < OUT_LOW) {
        /* answers to a pipelined batch leave in one write after the batch */
        for (int i = 0; i < k && rc == 0; i++)
            rc = queue_mem(c, v[i].iov_base, v[i].iov_len);
    } else if (k) {
        rc = conn_write(c, v, k, fin ? 0 : (flags & CS_SEND_MAY_SUSPEND) ? 2 : 1);
    }
    free(heap);
    if (rc == 1 && !r->blocked) {
        r->blocked = 1;
        c->deadline = cs_now_ms() + c->w->body_ms;
    }
    if (c->async_app && c->out_head)
        async_watch(c);
    return rc;
}

static int h1_sendfile(cs_req *r, const cs_resp_head *h, int fd, off_t off, uint64_t len, int flags)
{
    cs_conn *c = from_req(r);
    int fin = flags & CS_SEND_FIN;
    if (h1_send(r, h, NULL, 0, flags & CS_SEND_TRAILERS) < 0) {
        close(fd);
        return -1;
    }
    if (c->resp_mode == R_LENGTH && len > c->resp_left)
        len = c->resp_left;
    if (c->resp_mode == R_NONE || len == 0) {
        close(fd);
        return fin ? h1_send(r, NULL, NULL, 0, CS_SEND_FIN) : 0;
    }
    if (c->resp_mode == R_CHUNKED) {
        char sizeline[24];
        struct iovec v = {sizeline, (size_t)snprintf(sizeline, sizeof(sizeline), "%llx\r\n",
                                                     (unsigned long long)len)};
        if (conn_write(c, &v, 1, 0) < 0) {
            close(fd);
            return -1;
        }
    }
    if (c->resp_mode == R_LENGTH) {
        c->resp_left -= len;
        if (c->resp_left && fin) {
            /* the file is shorter than the app's Content-Length: the client
             * waits for bytes that never come, so the connection cannot go on */
            cs_log(CS_LOG_WARNING, "conn: file for %s is %llu bytes short of its Content-Length; closing",
                   c->peer, (unsigned long long)c->resp_left);
            c->closing = 1;
        }
    }
    /* The loop drains file segments with sendfile once the handler returns,
     * so a slow client never holds an app thread. */
    if (queue_file(c, fd, off, (size_t)len) < 0)
        return -1;
    if (flush_out(c) < 0)
        return -1;
    if (c->resp_mode == R_CHUNKED) {
        struct iovec v = {(void *)"\r\n0\r\n\r\n", fin ? 7 : 2};
        if (conn_write(c, &v, 1, fin ? 0 : 2) < 0)
            return -1;
    }
    if (fin)
        c->resp_done = 1;
    if (c->async_app && c->out_head)
        async_watch(c);
    return 0;
}

static void h1_abort(cs_req *r)
{
    cs_conn *c = from_req(r);
    c->closing = 1;
    c->resp_done = 1;
}

static int h1_trailers(cs_req *r, const cs_header *f, size_t n)
{
    cs_conn *c = from_req(r);
    if (c->broken || c->resp_done)
        return -1;
    if (c->resp_mode != R_CHUNKED)
        return h1_send(r, NULL, NULL, 0, CS_SEND_FIN);
    if (!r->te_trailers)
        n = 0;                  /* the client did not ask for them: the last chunk alone */
    size_t need = 8 + fields_size(f, n);
    char stack[2048], *buf = need <= sizeof(stack) ? stack : malloc(need), *p = buf;
    if (!buf) {
        cs_log(CS_LOG_ERROR, "conn: out of memory for %zu bytes of trailers", need);
        c->broken = 1;
        return -1;
    }
    p += PUTLIT(p, "0\r\n");
    p += put_fields(p, f, n);
    p += PUTLIT(p, "\r\n");
    struct iovec v = {buf, (size_t)(p - buf)};
    c->resp_done = 1;
    int rc = conn_write(c, &v, 1, 0);
    if (buf != stack)
        free(buf);
    if (c->async_app && c->out_head)
        async_watch(c);
    return rc;
}

/* The app task of a suspended async request finished.  We are inside that
 * task's step: the next request must not start here (a task cannot begin
 * inside another), so the connection goes back to the loop's done list. */
static void h1_done(cs_req *r)
{
    cs_conn *c = from_req(r);
    r->suspended = 0;
    r->blocked = 0;
    c->async_app = 0;
    c->in_app = 0;
    if (c->state == S_WS) {
        /* the session outlives the app until the closing handshake ends;
         * the loop looks at it next (not from inside the app's task) */
        cs_worker_request_done(c->w);
        c->ws->kick = 1;
        ws_watch(c);
        return;
    }
    c->want_body = 0;
    c->app_finished = 1;
    conn_watch(c, 0);
    cs_worker_hand_back(c->w, c);
}

static int ws_accept(cs_req *r, const char *sp, size_t sp_len, const cs_header *extra, size_t n);
static int ws_send(cs_req *r, int opcode, const char *p, size_t n);
static int ws_close(cs_req *r, int code, const char *reason, size_t n);
static void ws_pause(cs_req *r, int paused);

static const cs_req_ops h1_ops = {h1_read,     h1_send, h1_sendfile, h1_abort, h1_body, h1_trailers,
                                  h1_done,     ws_accept, ws_send,   ws_close, ws_pause};

/* ---- running requests ----------------------------------------------------- */

/* After the handler: make sure the response is complete and the connection
 * positioned at the next request. */
static void finish_request(cs_conn *c)
{
    cs_req *r = &c->req;
    if (!c->resp_done) {
        if (!r->started && !c->broken) {
            cs_log(CS_LOG_ERROR, "conn: handler returned without a response for %s", c->peer);
            send_error(c, 500);
        }
        c->closing = 1;
    }
    /* discard any unread body that is already buffered; more than that: close */
    if (!c->framed && !r->body_error)
        frame_body(c);
    if (!c->framed)
        c->closing = 1;
    if (c->ws && c->state != S_WS) {
        c->closing = 1;         /* refused or failed handshake: no second request */
        ws_free(c);
    }
    c->bpos = c->bend;
    c->rpos = c->raw;
    c->have_req = 0;
    cs_worker_request_done(c->w);
}

/* After the handler (or a resume) returned.  1 if another buffered request
 * is ready to run. */
static int after_handler(cs_conn *c)
{
    if (c->req.suspended) {
        if (c->w->async) {
            /* the app task goes on by itself; the loop watches for it */
            c->async_app = 1;
            c->in_app = 1;
            c->deadline = cs_now_ms() + c->w->body_ms;
        }
        return 0;
    }
    finish_request(c);
    if (c->closing || c->broken || c->out_bytes > OUT_LOW || c->state == S_WS)
        return 0;
    return conn_next(c) == NEXT_READY;
}

static void set_inflight(cs_inflight *f, cs_conn *c)
{
    pthread_mutex_lock(&f->mu);
    f->conn = c;
    f->started = cs_now_ms();
    pthread_mutex_unlock(&f->mu);
}

static void run_handlers(cs_conn *c, int resume)
{
    cs_worker *w = c->w;
    cs_inflight *f = w->request_ms && !w->async ? cs_worker_inflight(w) : NULL;
again:
    do {
        c->cork = c->framed && c->rlen > c->raw;   /* another request is already here */
        c->app_since = cs_now_ms();
        c->in_app = 1;
        if (f)
            set_inflight(f, c);
        if (resume)
            w->resume(&c->req, w->handler_data);
        else
            w->handler(&c->req, w->handler_data);
        if (f) {
            set_inflight(f, NULL);
            if (c->timed_out)
                c->broken = 1;
        }
        c->in_app = 0;
        resume = 0;
    } while (after_handler(c));
    if (c->async_app) {
        c->cork = 0;
        /* a send that blocked behind corked answers may find the queue
         * drained right here: nothing would wake it later */
        if (c->out_head && flush_out(c) > 0 && c->req.blocked && c->out_bytes <= OUT_LOW) {
            c->req.blocked = 0;
            w->resume(&c->req, w->handler_data);
        }
        return;
    }
    c->cork = 0;
    /* Stopped for queued output.  If the socket takes it now, carry on: resume
     * a suspended response, or go on to the next buffered request.  Never
     * leave the connection parked in S_APP with nothing to wake it. */
    if (c->out_head && !c->broken) {
        int drained = flush_out(c) > 0;
        if (c->broken || c->closing)
            return;
        if (c->req.suspended) {
            if (!c->w->async && c->out_bytes <= OUT_LOW) {
                resume = 1;
                goto again;
            }
        } else if (drained && c->state == S_APP && conn_next(c) == NEXT_READY) {
            goto again;
        }
    }
}

void cs_conn_run(cs_conn *c) { run_handlers(c, 0); }

/* Loop thread, inline mode: the client caught up with a suspended handler. */
static void conn_resume_app(cs_conn *c)
{
    run_handlers(c, 1);
    conn_settle(c);
}

/* Loop thread: parse what is buffered and dispatch or wait. */
static void conn_advance(cs_conn *c)
{
    int r = conn_next(c);
    if (r == NEXT_H2) {
        h2_begin(c, c->rbuf + c->rpos, c->rlen - c->rpos);
        return;
    }
    if (r == NEXT_READY) {
        if (c->w->threads > 1) {
            conn_watch(c, 0);
            c->in_pool = 1;
            cs_worker_submit(c->w, c);
            return;
        }
        cs_conn_run(c);
    }
    conn_settle(c);
}

static void conn_free(cs_conn *c)
{
    cs_worker *w = c->w;
    if (c->h2) {
        cs_h2_free(c->h2);
        c->h2 = NULL;
    }
    if (c->ws) {
        if (!c->ws->over)
            c->ws->code = CS_WS_ABNORMAL;
        ws_detach(c);
        ws_free(c);
    }
    if (c->req.suspended) {
        c->req.suspended = 0;
        w->cancel(&c->req, w->handler_data);
        if (w->async)
            cs_worker_request_done(w);
    }
    conn_watch(c, 0);
    cs_tls_close(c->ssl, 0);
    close(c->io.fd);
    while (c->out_head)
        out_pop(c);
    free(c->rbuf);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    free(c);
}

/* Close without resetting: stop sending, read and discard until the peer
 * closes (or LINGER_MS), so a response is not destroyed by an RST. */
static void start_linger(cs_conn *c)
{
    if (c->ssl) {
        /* close_notify, then the socket lingers like a plaintext one */
        cs_tls_close(c->ssl, !c->peer_eof);
        c->ssl = NULL;
    }
    if (c->peer_eof || shutdown(c->io.fd, SHUT_WR) < 0) {
        conn_free(c);
        return;
    }
    c->state = S_LINGER;
    c->deadline = cs_now_ms() + LINGER_MS;
    if (conn_watch(c, EPOLLIN) < 0)
        conn_free(c);
}

/* Loop thread: arrange the next event for a connection after any work. */
static void conn_settle(cs_conn *c)
{
    cs_worker *w = c->w;
    if (c->broken) {
        conn_free(c);
        return;
    }
    if (c->state == S_WS) {
        ws_settle(c);
        return;
    }
    if (c->async_app) {
        async_watch(c);
        return;
    }
    if (c->out_head) {
        c->state = S_FLUSH;
        c->deadline = cs_now_ms() + w->body_ms;
        if (conn_watch(c, EPOLLOUT) < 0)
            conn_free(c);
        return;
    }
    if (c->closing) {
        start_linger(c);
        return;
    }
    if (atomic_load(&w->stopping) && c->state == S_IDLE) {
        conn_free(c);
        return;
    }
    if (conn_watch(c, EPOLLIN) < 0)
        conn_free(c);
}

void cs_conn_resume(cs_conn *c)
{
    c->in_pool = 0;
    if (c->app_finished) {
        c->app_finished = 0;
        if (after_handler(c))
            cs_conn_run(c);
    }
    conn_settle(c);
}

/* ---- async app tasks ------------------------------------------------------ */

/* While an app task runs on: read body bytes it may ask for (while there is
 * room), write queued output, and notice the client leaving (RDHUP). */
static void async_watch(cs_conn *c)
{
    uint32_t ev = EPOLLRDHUP;
    if (!c->framed && !c->req.body_error && c->rlen < c->rcap)
        ev |= EPOLLIN;
    if (c->out_head) {
        ev |= EPOLLOUT;
        if (!(c->io.events & EPOLLOUT))     /* output starts waiting: its stall clock starts */
            c->deadline = cs_now_ms() + c->w->body_ms;
    }
    if (conn_watch(c, ev) < 0)
        c->broken = 1;
}

/* Write what the socket takes for a running app task: a stall clock that
 * restarts on progress, and 1 when a send that blocked may go on (below the
 * low mark).  -1 if the socket failed. */
static int drain_for_app(cs_conn *c)
{
    size_t before = c->out_bytes;
    if (flush_out(c) < 0)
        return -1;
    if (c->out_bytes < before)
        c->deadline = cs_now_ms() + c->w->body_ms;
    if (c->req.blocked && c->out_bytes <= OUT_LOW) {
        c->req.blocked = 0;
        return 1;
    }
    return 0;
}

static void async_io(cs_conn *c, uint32_t events)
{
    cs_worker *w = c->w;
    int notify = 0;
    if ((events & EPOLLOUT) && c->out_head && (notify = drain_for_app(c)) < 0) {
        conn_free(c);
        return;
    }
    if (c->io.events & EPOLLIN) {
        if (c->raw == c->rlen && c->bpos == c->bend)
            c->rpos = c->rlen = c->bpos = c->bend = c->raw = 0;
        ssize_t n = c->rlen < c->rcap ? conn_recv(c, c->rbuf + c->rlen, c->rcap - c->rlen) : -1;
        if (n > 0) {
            c->rlen += (size_t)n;
            c->deadline = cs_now_ms() + w->body_ms;
            if (frame_body(c) < 0)
                notify = 1;        /* body_error set: the app hears of it */
            if (c->want_body && (c->bpos < c->bend || c->framed || c->req.body_error)) {
                c->want_body = 0;
                notify = 1;
            }
        } else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR && c->rlen < c->rcap)) {
            c->peer_eof = n == 0;
            conn_free(c);
            return;
        }
    } else if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        c->peer_eof = 1;
        conn_free(c);
        return;
    }
    if (notify)
        w->resume(&c->req, w->handler_data);
    if (c->async_app)
        async_watch(c);
}

static void on_readable(cs_conn *c)
{
    if (c->rlen == c->rcap) {
        /* only reachable in S_BODY with a full buffer, which dispatches */
        conn_advance(c);
        return;
    }
    ssize_t n = conn_recv(c, c->rbuf + c->rlen, c->rcap - c->rlen);
    if (n > 0) {
        c->rlen += (size_t)n;
        if (c->state == S_BODY)        /* a stall timeout while the body trickles in */
            c->deadline = cs_now_ms() + c->w->body_ms;
        conn_advance(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    /* EOF or reset: nothing to answer (a partial request is abandoned) */
    c->peer_eof = 1;
    conn_free(c);
}

/* ---- HTTP/2: h2.c runs the session, the connection carries its bytes ------ */

/* The session is over: its last frames (GOAWAY) leave, then a lingering close. */
static void h2_end(cs_conn *c)
{
    cs_h2_free(c->h2);
    c->h2 = NULL;
    c->state = S_IDLE;
    c->closing = 1;
    conn_settle(c);
}

static void h2_io(cs_conn *c, uint32_t events)
{
    if (cs_h2_io(c->h2, events) < 0)
        h2_end(c);
}

/* Switch to HTTP/2: `in` holds bytes already read (the preface, for h2c). */
static void h2_begin(cs_conn *c, const char *in, size_t n)
{
    c->h2 = cs_h2_new(c, in, n);
    if (!c->h2) {
        conn_free(c);
        return;
    }
    free(c->rbuf);              /* h2 reads through the worker's scratch buffer */
    c->rbuf = NULL;
    c->rcap = c->rlen = c->rpos = c->bpos = c->bend = c->raw = 0;
    c->state = S_H2;
    c->deadline = cs_now_ms() + c->w->body_ms;
    h2_io(c, EPOLLIN);
}

static void h2_start(cs_conn *c) { h2_begin(c, NULL, 0); }

ssize_t cs_conn_recv(cs_conn *c, void *buf, size_t n) { return conn_recv(c, buf, n); }

int cs_conn_send(cs_conn *c, const void *p, size_t n)
{
    struct iovec v = {(void *)p, n};
    return conn_write(c, &v, 1, 0) < 0 ? -1 : 0;
}

int cs_conn_flush(cs_conn *c)
{
    size_t before = c->out_bytes;
    int r = flush_out(c);
    if (c->out_bytes < before)          /* a stall clock, restarted by progress */
        c->deadline = cs_now_ms() + c->w->body_ms;
    return r;
}

size_t cs_conn_queued(const cs_conn *c) { return c->out_bytes; }

int cs_conn_events(cs_conn *c, uint32_t ev)
{
    if ((ev & EPOLLOUT) && !(c->io.events & EPOLLOUT))
        c->deadline = cs_now_ms() + c->w->body_ms;
    return conn_watch(c, ev);
}

void cs_conn_kick(cs_conn *c)
{
    if (!(c->io.events & EPOLLIN))
        conn_watch(c, c->io.events | EPOLLIN);
    cs_loop_kick(c->w->loop, &c->io);
}

int cs_conn_wait(cs_conn *c, short events, uint64_t ms)
{
    if ((events & POLLIN) && c->ssl && cs_tls_pending(c->ssl))
        return 1;
    return wait_fd(c, events, ms);
}


cs_worker *cs_conn_worker(cs_conn *c) { return c->w; }

const char *cs_conn_peer(const cs_conn *c) { return c->peer; }

unsigned char *cs_conn_scratch(cs_conn *c, size_t *n)
{
    *n = WS_SCRATCH;
    return ws_scratch(c->w);
}

/* The TLS handshake, then the protocol ALPN chose. */
static void tls_step(cs_conn *c)
{
    int rc = cs_tls_handshake(c->ssl, c->peer);
    switch (rc) {
    case CS_TLS_DONE:
        c->state = S_IDLE;
        c->deadline = cs_now_ms() + c->w->header_ms;
        if (cs_tls_h2(c->ssl)) {
            h2_start(c);
            return;
        }
        /* watched first: the handshake may have finished right at accept,
         * before the socket was ever in epoll, and the request may not be here yet */
        if (conn_watch(c, EPOLLIN) < 0) {
            conn_free(c);
            return;
        }
        on_readable(c);
        return;
    case CS_TLS_WANT_READ:
    case CS_TLS_WANT_WRITE:
        if (conn_watch(c, rc == CS_TLS_WANT_READ ? EPOLLIN : EPOLLOUT) < 0)
            conn_free(c);
        return;
    case CS_TLS_PLAINTEXT: {
        /* answer in plain text, like nginx, so a human sees what went wrong */
        static const char msg[] = "The plain HTTP request was sent to HTTPS port.\n";
        char buf[512];
        int n = snprintf(buf, sizeof(buf),
                         "HTTP/1.1 400 Bad Request\r\nServer: corsac\r\nContent-Type: text/plain; charset=utf-8\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                         sizeof(msg) - 1, msg);
        if (write(c->io.fd, buf, (size_t)n) < 0)
            cs_log(CS_LOG_DEBUG, "conn: 400 to %s: %s", c->peer, strerror(errno));
        cs_tls_close(c->ssl, 0);
        c->ssl = NULL;
        start_linger(c);
        return;
    }
    default:
        conn_free(c);
        return;
    }
}

static void conn_io(cs_loop *loop, cs_io *io, uint32_t events)
{
    cs_conn *c = (cs_conn *)io;
    (void)loop;
    switch (c->state) {
    case S_IDLE:
    case S_HEAD:
    case S_BODY:
        on_readable(c);
        break;
    case S_FLUSH: {
        if (events & (EPOLLERR | EPOLLHUP)) {
            conn_free(c);
            break;
        }
        size_t before = c->out_bytes;
        int r = flush_out(c);
        if (c->out_bytes < before)     /* a stall timeout, not a deadline for the whole body */
            c->deadline = cs_now_ms() + c->w->body_ms;
        if (r < 0)
            conn_free(c);
        else if (c->req.suspended) {
            if (c->out_bytes <= OUT_LOW)
                conn_resume_app(c);
        } else if (r > 0) {
            if (c->closing)
                start_linger(c);
            else
                conn_advance(c);
        }
        break;
    }
    case S_WS:
        ws_io(c, events);
        break;
    case S_TLS:
        tls_step(c);
        break;
    case S_H2:
        h2_io(c, events);
        break;
    case S_APP:
        if (c->async_app) {
            async_io(c, events);
            break;
        }
        if (!c->in_pool && !c->in_app && !c->req.suspended) {
            /* nothing should leave a connection here between requests; if a
             * path ever does, pick the connection up rather than spin on it */
            cs_log(CS_LOG_ERROR, "conn: event for %s in the app state; resuming it", c->peer);
            c->state = S_IDLE;
            conn_advance(c);
        }
        break;
    case S_LINGER: {
        char scratch[4096];
        for (;;) {
            ssize_t n = read(c->io.fd, scratch, sizeof(scratch));
            if (n > 0)
                continue;
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                return;
            conn_free(c);
            return;
        }
    }
    break;
    default:
        break;
    }
}

/* ---- accept and sweep ----------------------------------------------------- */

void cs_conn_accept(cs_worker *w, cs_listen_io *lio)
{
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lio->l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                cs_log(CS_LOG_ERROR, "accept on %s: %s; pausing accepts for 100 ms", lio->l->display,
                       strerror(errno));
                w->accept_paused_until = cs_now_ms() + 100;
                for (int k = 0; k < w->nlisteners; k++)
                    cs_loop_watch(w->loop, &w->lio[k].io, 0);
            } else if (errno != EAGAIN) {
                cs_log(CS_LOG_ERROR, "accept on %s: %s", lio->l->display, strerror(errno));
            }
            return;
        }
        cs_conn *c = calloc(1, sizeof(*c) + sizeof(cs_header) * w->limits.max_fields);
        char *rbuf = malloc(RBUF_INITIAL);
        if (!c || !rbuf) {
            cs_log(CS_LOG_ERROR, "accept: out of memory for a new connection");
            free(c);
            free(rbuf);
            close(fd);
            continue;
        }
        c->io.fd = fd;
        c->io.fn = conn_io;
        c->w = w;
        c->listener = lio->l;
        c->rbuf = rbuf;
        c->rcap = RBUF_INITIAL;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, c->peer, sizeof(c->peer));
            c->peer_port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, c->peer, sizeof(c->peer));
            c->peer_port = ntohs(a->sin6_port);
        }
        if (ss.ss_family != AF_UNIX) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        w->nconns++;
        /* a fresh connection must send its first request within the header timeout */
        c->state = S_IDLE;
        c->deadline = cs_now_ms() + w->header_ms;
        if (w->tls) {
            if (!(c->ssl = cs_tls_accept(w->tls, fd))) {
                conn_free(c);
                continue;
            }
            c->state = S_TLS;
            tls_step(c);        /* the ClientHello is often here already */
            continue;
        }
        if (conn_watch(c, EPOLLIN) < 0)
            conn_free(c);
    }
}

void cs_conn_timed_out(cs_conn *c, uint64_t ran_ms)
{
    if (c->timed_out)
        return;
    c->timed_out = 1;
    int answered = 0;
    if (!c->req.started && !c->ssl) {   /* a TLS session is not ours to use from this thread */
        char buf[512];
        size_t n = format_error(buf, 504);
        answered = write(c->io.fd, buf, n) == (ssize_t)n;
    }
    shutdown(c->io.fd, SHUT_RDWR);
    cs_log(CS_LOG_ERROR, "Request from %s:%d ran for %.1f s, over --request-timeout; %s", c->peer, c->peer_port,
           ran_ms / 1000.0, answered ? "answered 504" : "connection closed");
}

void cs_conn_close_all(cs_worker *w)
{
    while (w->conns)
        conn_free(w->conns);
    free(w->scratch);
    w->scratch = NULL;
}

void cs_conn_sweep(cs_worker *w)
{
    uint64_t now = cs_now_ms();
    int stopping = atomic_load(&w->stopping);
    cs_conn *next;
    for (cs_conn *c = w->conns; c; c = next) {
        next = c->next;
        if (c->in_pool)
            continue;
        if (c->state == S_WS) {
            ws_sweep(c, now, stopping);
            continue;
        }
        if (c->state == S_H2) {
            if (c->out_head && now >= c->deadline) {
                cs_log(CS_LOG_INFO, "h2: %s stopped reading; dropping the connection", c->peer);
                conn_free(c);
            } else if (cs_h2_sweep(c->h2, now, stopping) < 0) {
                h2_end(c);
            }
            continue;
        }
        if (c->state == S_APP) {
            if (c->async_app && w->request_ms && now - c->app_since > w->request_ms) {
                /* an ASGI app awaiting past --request-timeout: answer for it
                 * and cancel its task (the bridge does, seeing `expired`) */
                int answered = 0;
                if (!c->req.started) {
                    char buf[512];
                    struct iovec v = {buf, format_error(buf, 504)};
                    answered = conn_sendv(c, &v, 1) == (ssize_t)v.iov_len;
                }
                cs_log(CS_LOG_ERROR, "Request from %s:%d ran for %.1f s, over --request-timeout; %s", c->peer,
                       c->peer_port, (now - c->app_since) / 1000.0, answered ? "answered 504" : "connection closed");
                c->req.expired = 1;
                conn_free(c);
            } else if (c->async_app && (c->want_body || c->out_head) && now >= c->deadline) {
                cs_log(CS_LOG_INFO, "conn: %s stalled %s; dropping the connection", c->peer,
                       c->want_body ? "sending its request body" : "reading the response");
                conn_free(c);
            }
            continue;
        }
        if (stopping && c->state == S_IDLE) {
            conn_free(c);
            continue;
        }
        if (now < c->deadline)
            continue;
        switch (c->state) {
        case S_HEAD:
        case S_BODY:
            cs_log(CS_LOG_DEBUG, "conn: %s too slow sending its request; 408", c->peer);
            send_error(c, 408);
            conn_settle(c);
            break;
        default:
            conn_free(c);
            break;
        }
    }
    if (w->accept_paused_until && now >= w->accept_paused_until && !stopping) {
        w->accept_paused_until = 0;
        for (int k = 0; k < w->nlisteners; k++)
            cs_loop_watch(w->loop, &w->lio[k].io, EPOLLIN);
    }
}

/* ---- WebSocket sessions ------------------------------------------------------ */

static int ws_prepare(cs_conn *c)
{
    cs_wsess *s = calloc(1, sizeof(*s));
    if (!s) {
        cs_log(CS_LOG_ERROR, "conn: out of memory for a WebSocket session from %s", c->peer);
        return -1;
    }
    if (c->w->ws_deflate &&
        cs_ws_negotiate_deflate(c->headers, c->pr.num_headers, &s->pmd, s->ext, sizeof(s->ext)) < 0)
        s->ext[0] = 0;
    c->ws = s;
    return 0;
}

static void ws_free(cs_conn *c)
{
    if (!c->ws)
        return;
    cs_ws_reader_free(c->ws->rd);
    cs_ws_deflater_free(c->ws->df);
    free(c->ws);
    c->ws = NULL;
}

/* The app hears that the session is over (its receive() gets the close
 * code), unless it has finished already. */
static void ws_detach(cs_conn *c)
{
    cs_req *r = &c->req;
    cs_worker *w = c->w;
    if (!r->suspended)
        return;
    r->ws_code = c->ws->code;
    r->ws_reason = c->ws->reason;
    r->ws_reason_len = c->ws->reason_len;
    r->suspended = 0;
    r->blocked = 0;
    c->async_app = 0;
    c->in_app = 0;
    w->cancel(r, w->handler_data);
    cs_worker_request_done(w);
}

/* Queue one frame of ours (never blocks: control frames are small). */
static int ws_frame(cs_conn *c, int opcode, const void *p, size_t n)
{
    unsigned char h[CS_WS_MAX_HEADER];
    struct iovec v[2] = {{h, cs_ws_frame_header(h, opcode, 1, 0, n)}, {(void *)p, n}};
    return conn_write(c, v, n ? 2 : 1, 0);
}

static void ws_send_close(cs_conn *c, int code, const char *reason, size_t n)
{
    cs_wsess *s = c->ws;
    unsigned char buf[125];
    size_t len = 0;
    if (s->close_sent)
        return;
    if (code != CS_WS_NO_STATUS) {
        if (n > sizeof(buf) - 2)
            n = sizeof(buf) - 2;
        buf[0] = (unsigned char)(code >> 8);
        buf[1] = (unsigned char)code;
        memcpy(buf + 2, reason, n);
        len = n + 2;
    }
    s->close_sent = 1;
    s->close_due = cs_now_ms() + WS_CLOSE_WAIT_MS;
    s->paused = 0;              /* the answer must be read, whatever the app's queue */
    ws_frame(c, CS_WS_CLOSE, buf, len);
}

/* The peer broke the protocol: close with the code, and end the session. */
static void ws_fail(cs_conn *c, int code, const char *why)
{
    cs_wsess *s = c->ws;
    cs_log(CS_LOG_DEBUG, "ws: %s from %s; closing with %d", why, c->peer, code);
    ws_send_close(c, code, "", 0);
    s->code = code;
    s->reason_len = 0;
    s->over = 1;
}

static void ev_message(void *ud, int opcode, const char *p, size_t n)
{
    cs_conn *c = ud;
    if (c->async_app && !c->ws->close_sent)
        c->w->ws_message(&c->req, c->w->handler_data, opcode, p, n);
}

static void ev_control(void *ud, int opcode, const char *p, size_t n)
{
    cs_conn *c = ud;
    if (opcode == CS_WS_PING && !c->ws->close_sent)
        ws_frame(c, CS_WS_PONG, p, n);
    else if (opcode == CS_WS_PONG)
        c->ws->pong_due = 0;
}

static void ev_close(void *ud, int code, const char *reason, size_t n)
{
    cs_conn *c = ud;
    cs_wsess *s = c->ws;
    s->close_rcvd = 1;
    s->code = code;
    s->reason_len = n < sizeof(s->reason) ? n : sizeof(s->reason) - 1;
    memcpy(s->reason, reason, s->reason_len);
    s->reason[s->reason_len] = 0;
    ws_send_close(c, code, "", 0);         /* echo the code (none if it had none) */
    s->over = 1;
}

static const cs_ws_events ws_events = {ev_message, ev_control, ev_close};

static void ws_feed(cs_conn *c, unsigned char *p, size_t n)
{
    int code;
    const char *why;
    if (!c->ws->over && cs_ws_reader_feed(c->ws->rd, p, n, &ws_events, c, &code, &why) < 0)
        ws_fail(c, code, why);
}

static void ws_watch(cs_conn *c)
{
    cs_wsess *s = c->ws;
    uint32_t ev = EPOLLRDHUP;
    if (!s->paused && !s->close_rcvd && !s->over)
        ev |= EPOLLIN;
    if (c->out_head || s->kick) {
        ev |= EPOLLOUT;
        if (c->out_head && !(c->io.events & EPOLLOUT))     /* output starts waiting: stall clock */
            c->deadline = cs_now_ms() + c->w->body_ms;
    }
    if (conn_watch(c, ev) < 0)
        c->broken = 1;
}

/* After any work on a session: end it, or wait for its next event. */
static void ws_settle(cs_conn *c)
{
    cs_wsess *s = c->ws;
    if (c->broken) {
        conn_free(c);
        return;
    }
    if (s->over) {
        /* both close frames crossed, or ours ended a failed session: the
         * app hears the code, and we close TCP first, gently (RFC 6455 7.1.1) */
        ws_detach(c);
        ws_free(c);
        c->closing = 1;
        if (c->out_head) {
            c->state = S_FLUSH;
            c->deadline = cs_now_ms() + c->w->body_ms;
            if (conn_watch(c, EPOLLOUT) < 0)
                conn_free(c);
        } else {
            start_linger(c);
        }
        return;
    }
    ws_watch(c);
    if (c->broken)
        conn_free(c);
}

static unsigned char *ws_scratch(cs_worker *w)
{
    if (!w->scratch && !(w->scratch = malloc(WS_SCRATCH)))
        cs_log(CS_LOG_ERROR, "ws: out of memory for the read buffer");
    return w->scratch;
}

static void ws_io(cs_conn *c, uint32_t events)
{
    cs_wsess *s = c->ws;
    cs_worker *w = c->w;
    int notify = 0;
    s->kick = 0;
    if (c->out_head && (notify = drain_for_app(c)) < 0) {
        conn_free(c);
        return;
    }
    if (s->pending_in) {
        /* frames that came with the handshake request */
        s->pending_in = 0;
        ws_feed(c, (unsigned char *)c->rbuf + c->raw, c->rlen - c->raw);
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = c->rlen = c->rpos = c->raw = c->bpos = c->bend = 0;
    }
    if ((events & EPOLLIN) && (c->io.events & EPOLLIN) && !s->over && !s->paused) {
        unsigned char *buf = ws_scratch(w);
        ssize_t n = buf ? conn_recv(c, buf, WS_SCRATCH) : -1;
        if (n > 0) {
            ws_feed(c, buf, (size_t)n);
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            c->peer_eof = n == 0;
            c->broken = 1;      /* gone without a close frame: 1006 */
        }
    } else if ((events & (EPOLLHUP | EPOLLERR)) ||
               ((events & EPOLLRDHUP) && !(c->io.events & EPOLLIN) && !s->over)) {
        c->peer_eof = 1;
        c->broken = 1;
    }
    if (notify && c->async_app && !c->broken)
        w->resume(&c->req, w->handler_data);
    ws_settle(c);
}

static void ws_sweep(cs_conn *c, uint64_t now, int stopping)
{
    cs_wsess *s = c->ws;
    cs_worker *w = c->w;
    if (c->out_head && now >= c->deadline) {
        cs_log(CS_LOG_INFO, "ws: %s stopped reading; dropping the connection", c->peer);
        conn_free(c);
        return;
    }
    if (!s->close_sent) {
        if (stopping) {
            ws_send_close(c, CS_WS_GOING_AWAY, "", 0);
        } else if (s->pong_due && now >= s->pong_due) {
            cs_log(CS_LOG_INFO, "ws: no pong from %s within --ws-ping-timeout; closing", c->peer);
            ws_send_close(c, CS_WS_INTERNAL_ERROR, "", 0);
            s->code = CS_WS_ABNORMAL;
            s->over = 1;
        } else if (w->ws_ping_ms && !s->pong_due && now >= s->next_ping) {
            unsigned char stamp[8];
            for (int i = 0; i < 8; i++)
                stamp[i] = (unsigned char)(now >> (8 * i));
            ws_frame(c, CS_WS_PING, stamp, sizeof(stamp));
            s->pong_due = now + w->ws_pong_ms;
            s->next_ping = now + w->ws_ping_ms;
        }
    } else if (!s->close_rcvd && now >= s->close_due) {
        cs_log(CS_LOG_DEBUG, "ws: %s did not answer our close frame", c->peer);
        if (!s->over)
            s->code = CS_WS_ABNORMAL;
        conn_free(c);
        return;
    }
    ws_settle(c);
}

static int ws_accept(cs_req *r, const char *sp, size_t sp_len, const cs_header *extra, size_t n)
{
    cs_conn *c = from_req(r);
    cs_wsess *s = c->ws;
    cs_worker *w = c->w;
    if (!s || c->state == S_WS || c->broken || r->started)
        return -1;
    size_t need = 512 + sp_len + fields_size(extra, n);
    int has_server = 0;
    for (size_t i = 0; i < n; i++)
        if (extra[i].name_len == 6 && strncasecmp(extra[i].name, "server", 6) == 0)
            has_server = 1;
    char stack[2048], *buf = need <= sizeof(stack) ? stack : malloc(need), *p = buf;
    if (!buf) {
        cs_log(CS_LOG_ERROR, "conn: out of memory for a %zu-byte 101 head", need);
        c->broken = 1;
        return -1;
    }
    p += PUTLIT(p, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: ");
    p += put(p, s->accept, CS_WS_ACCEPT_LEN);
    p += PUTLIT(p, "\r\n");
    if (sp) {
        p += PUTLIT(p, "Sec-WebSocket-Protocol: ");
        p += put(p, sp, sp_len);
        p += PUTLIT(p, "\r\n");
    }
    if (s->ext[0]) {
        p += PUTLIT(p, "Sec-WebSocket-Extensions: ");
        p += put(p, s->ext, strlen(s->ext));
        p += PUTLIT(p, "\r\n");
    }
    if (!has_server)
        p += PUTLIT(p, "Server: corsac\r\n");
    p += put(p, cs_http_date(), 37);
    p += put_fields(p, extra, n);
    p += PUTLIT(p, "\r\n");
    s->rd = cs_ws_reader_new(w->ws_max_size, s->ext[0] ? &s->pmd : NULL);
    s->df = s->ext[0] ? cs_ws_deflater_new(&s->pmd) : NULL;
    int rc = -1;
    if (!s->rd || (s->ext[0] && !s->df)) {
        cs_log(CS_LOG_ERROR, "conn: out of memory for a WebSocket session from %s", c->peer);
        c->broken = 1;
    } else {
        struct iovec v = {buf, (size_t)(p - buf)};
        rc = conn_write(c, &v, 1, 0) < 0 ? -1 : 0;
    }
    if (buf != stack)
        free(buf);
    if (rc < 0)
        return -1;
    r->started = 1;
    c->resp_done = 1;
    c->keep_alive = 0;
    c->state = S_WS;
    s->next_ping = cs_now_ms() + w->ws_ping_ms;
    if (c->rlen > c->raw) {
        s->pending_in = 1;      /* the loop feeds them: not from inside the app's send() */
        s->kick = 1;
    } else {
        /* idle sessions keep no read buffer: reads go through the worker's */
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = c->rlen = c->rpos = c->raw = c->bpos = c->bend = 0;
    }
    if (c->async_app)
        ws_watch(c);
    return 0;
}

static int ws_send(cs_req *r, int opcode, const char *p, size_t n)
{
    cs_conn *c = from_req(r);
    cs_wsess *s = c->ws;
    if (!s || c->state != S_WS || s->close_sent || s->over || c->broken)
        return -1;
    unsigned char h[CS_WS_MAX_HEADER], *z = NULL;
    size_t zn = 0;
    int packed = s->df ? cs_ws_deflate(s->df, p, n, &z, &zn) : 0;
    if (packed < 0) {
        c->broken = 1;
        return -1;
    }
    struct iovec v[2] = {{h, cs_ws_frame_header(h, opcode, 1, packed, packed ? zn : n)},
                         {packed ? (void *)z : (void *)p, packed ? zn : n}};
    int rc = conn_write(c, v, 2, 2);
    free(z);
    if (rc == 1 && !r->blocked)
        r->blocked = 1;
    if (c->broken)
        s->kick = 1;            /* the loop frees it: not from inside the app's send() */
    if (c->out_head || c->broken)
        ws_watch(c);
    return rc;
}

static int ws_close(cs_req *r, int code, const char *reason, size_t n)
{
    cs_conn *c = from_req(r);
    cs_wsess *s = c->ws;
    if (!s || c->state != S_WS || c->broken)
        return -1;
    if (!s->close_sent) {
        ws_send_close(c, code, reason, n);
        s->code = code;
        ws_watch(c);
    }
    return 0;
}

static void ws_pause(cs_req *r, int paused)
{
    cs_conn *c = from_req(r);
    if (!c->ws || c->ws->paused == paused)
        return;
    c->ws->paused = paused;
    if (c->state == S_WS)
        ws_watch(c);
}
