/*
 * wsload - a small WebSocket (RFC 6455) echo load generator.
 *
 * Opens N connections to HOST:PORT, performs the opening handshake on each
 * (random Sec-WebSocket-Key; the answer must be "101" with a
 * Sec-WebSocket-Accept header - its value is not verified), then every
 * connection sends a fixed message (masked client frames) and waits for the
 * server to echo it back, as fast as it can, with P messages in flight per
 * connection. Single thread, non-blocking sockets, epoll.
 *
 * After an optional warm-up, round-trips completed during the measured
 * window are counted and their latency (send of the frame -> whole echo
 * read) goes into a log-linear histogram. At the end every connection is
 * closed with a close frame (1000) and the server's answer is awaited for a
 * short while.
 *
 * Output: a human-readable summary, then one machine-readable line starting
 * with "RESULT " (key=value pairs) for bench/ws_run.py.
 * Exit status: 0 measured, 1 usage error, 2 no connection could be opened.
 *
 * Build: gcc -O2 -o wsload bench/wsload.c
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ options */

static int opt_conns = 64;
static double opt_duration = 10.0;
static double opt_warmup = 0.0;
static size_t opt_size = 32;
static int opt_depth = 1;
static int opt_binary = 0;
static double opt_connect_timeout = 10.0;
static double opt_close_timeout = 2.0;
static const char *opt_path = "/";
static char host[256];
static char port[16];

/* ------------------------------------------------------------- clock */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --------------------------------------------------------- histogram */
/*
 * Log-linear: values below 128 ns have a bucket each; above, every power of
 * two is split into 64 buckets (relative error below 1.6%).
 */
#define SUB 64
#define NBUCKETS (2 * SUB + 57 * SUB)
static uint64_t hist[NBUCKETS];
static uint64_t hist_n, hist_max, hist_min = UINT64_MAX;
static long double hist_sum;

static int bucket_of(uint64_t v)
{
    if (v < 2 * SUB)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 6;                     /* v >> shift is in [64, 127] */
    return 2 * SUB + (msb - 7) * SUB + (int)((v >> shift) - SUB);
}

static uint64_t bucket_mid(int i)
{
    if (i < 2 * SUB)
        return (uint64_t)i;
    int shift = (i - 2 * SUB) / SUB + 1;
    uint64_t lo = (uint64_t)((i - 2 * SUB) % SUB + SUB) << shift;
    return lo + (((uint64_t)1 << shift) >> 1);
}

static void hist_add(uint64_t v)
{
    hist[bucket_of(v)]++;
    hist_n++;
    hist_sum += v;
    if (v > hist_max)
        hist_max = v;
    if (v < hist_min)
        hist_min = v;
}

static double hist_pct(double p)
{
    if (!hist_n)
        return 0;
    uint64_t want = (uint64_t)(p / 100.0 * (double)hist_n + 0.999999);
    if (want < 1)
        want = 1;
    uint64_t acc = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        acc += hist[i];
        if (acc >= want) {
            uint64_t m = bucket_mid(i);
            if (m > hist_max)
                m = hist_max;
            if (m < hist_min)
                m = hist_min;
            return (double)m;
        }
    }
    return (double)hist_max;
}

/* ------------------------------------------------------------ random */

static uint64_t rng_state;

static uint64_t rng(void)
{   /* xorshift64*: mask keys only need to be unpredictable-ish */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static void random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            /* Fall back on the PRNG; never fatal for a load generator. */
            for (; n; n--)
                *p++ = (unsigned char)rng();
            return;
        }
        p += r;
        n -= (size_t)r;
    }
}

static void base64(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *out++ = tab[v >> 18];
        *out++ = tab[(v >> 12) & 63];
        *out++ = tab[(v >> 6) & 63];
        *out++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        *out++ = tab[v >> 18];
        *out++ = tab[(v >> 12) & 63];
        *out++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *out++ = '=';
    }
    *out = 0;
}

/* ------------------------------------------------------- connections */

enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSING, ST_DONE };

struct conn {
    int fd;
    int state;
    int want_out;           /* EPOLLOUT registered */
    unsigned char *rbuf;
    size_t rlen, rcap;
    unsigned char *wbuf;
    size_t woff, wlen, wcap;
    uint64_t *sent;         /* ring of send times, opt_depth entries */
    int head, inflight;
    int in_msg;             /* inside a fragmented echo */
    int bad;                /* the current echo differs from the message */
    size_t msg_off;         /* bytes of the current echo seen so far */
    uint64_t rt;            /* round-trips in the measured window */
    int close_answered;
};

static struct conn *conns;
static int epfd;
static unsigned char *message;   /* the payload every frame carries */

enum { PH_CONNECT, PH_WARMUP, PH_MEASURE, PH_CLOSE };
static int phase = PH_CONNECT;

static struct {
    uint64_t connect, handshake, read, write, eof, closed, protocol, mismatch;
} err;
static char hs_reason[160];     /* first handshake failure */
static int n_open, n_pending;   /* open connections; not yet open nor failed */
static uint64_t total_rt;
static uint64_t last_done, max_gap;   /* longest time without any echo */
static int close_ok, close_missing;
static int n_stalled;           /* oldest message in flight > 1 s at the end */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("wsload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p)
        die("out of memory");
    return p;
}

static void set_events(struct conn *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - conns)};
    if (c->want_out != out) {
        c->want_out = out;
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void finish(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == ST_OPEN || c->state == ST_CLOSING)
        n_open--;
    if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE)
        n_pending--;
    c->state = ST_DONE;
    c->inflight = 0;
}

/* A connection that never got to open: a failed connect or handshake. */
static void open_fail(struct conn *c, uint64_t *counter, const char *why)
{
    (*counter)++;
    if (!hs_reason[0])
        snprintf(hs_reason, sizeof hs_reason, "%s", why);
    finish(c);
}

static void hs_fail(struct conn *c, const char *why)
{
    open_fail(c, &err.handshake, why);
}

static void wreserve(struct conn *c, size_t n)
{
    if (c->woff && c->woff == c->wlen)
        c->woff = c->wlen = 0;
    if (c->wlen + n > c->wcap) {
        if (c->woff) {
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        if (c->wlen + n > c->wcap) {
            c->wcap = (c->wlen + n) * 2;
            c->wbuf = xrealloc(c->wbuf, c->wcap);
        }
    }
}

/* Append one masked frame (FIN set). */
static void put_frame(struct conn *c, int opcode, const unsigned char *payload, size_t n)
{
    wreserve(c, n + 14);
    unsigned char *p = c->wbuf + c->wlen;
    *p++ = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        *p++ = (unsigned char)(0x80 | n);
    } else if (n <= 0xffff) {
        *p++ = 0x80 | 126;
        *p++ = (unsigned char)(n >> 8);
        *p++ = (unsigned char)n;
    } else {
        *p++ = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            *p++ = (unsigned char)((uint64_t)n >> (8 * i));
    }
    uint32_t m32 = (uint32_t)rng();
    unsigned char mask[4];
    memcpy(mask, &m32, 4);
    memcpy(p, mask, 4);
    p += 4;
    for (size_t i = 0; i < n; i++)
        p[i] = payload[i] ^ mask[i & 3];
    c->wlen = (size_t)(p + n - c->wbuf);
}

/* Write what is pending; returns -1 if the connection was dropped. */
static int flush(struct conn *c)
{
    while (c->woff < c->wlen) {
        ssize_t w = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(c, 1);
                return 0;
            }
            if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE) {
                char why[100];
                snprintf(why, sizeof why, "write: %s", strerror(errno));
                hs_fail(c, why);
            } else {
                if (c->state == ST_OPEN)
                    err.write++;
                finish(c);
            }
            return -1;
        }
        c->woff += (size_t)w;
    }
    c->woff = c->wlen = 0;
    set_events(c, 0);
    return 0;
}

static void send_message(struct conn *c, uint64_t t)
{
    int slot = (c->head + c->inflight) % opt_depth;
    c->sent[slot] = t;
    c->inflight++;
    put_frame(c, opt_binary ? 2 : 1, message, opt_size);
}

static void start_load(struct conn *c)
{
    uint64_t t = now_ns();
    for (int i = 0; i < opt_depth; i++)
        send_message(c, t);
    flush(c);
}

static void send_close(struct conn *c, unsigned code)
{
    unsigned char b[2] = {(unsigned char)(code >> 8), (unsigned char)code};
    put_frame(c, 8, b, 2);
}

/* One complete echo arrived. */
static void on_echo(struct conn *c)
{
    if (c->state != ST_OPEN || c->inflight == 0)
        return;          /* while closing, late echoes are dropped */
    uint64_t t = now_ns();
    uint64_t sent = c->sent[c->head];
    c->head = (c->head + 1) % opt_depth;
    c->inflight--;
    if (phase == PH_MEASURE) {
        hist_add(t - sent);
        c->rt++;
        total_rt++;
        if (t > last_done && t - last_done > max_gap)
            max_gap = t - last_done;
        last_done = t;
    }
    if (phase == PH_WARMUP || phase == PH_MEASURE)
        send_message(c, t);
}

/* Parse the frames in rbuf. Returns -1 if the connection was dropped. */
static int parse_frames(struct conn *c)
{
    size_t pos = 0;
    while (c->rlen - pos >= 2) {
        unsigned char *f = c->rbuf + pos;
        int fin = f[0] & 0x80, rsv = f[0] & 0x70, op = f[0] & 0x0f;
        int masked = f[1] & 0x80;
        uint64_t len = f[1] & 0x7f;
        size_t hdr = 2;
        if (len == 126) {
            if (c->rlen - pos < 4)
                break;
            len = (uint64_t)f[2] << 8 | f[3];
            hdr = 4;
        } else if (len == 127) {
            if (c->rlen - pos < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | f[2 + i];
            hdr = 10;
        }
        if (masked || rsv || (op > 2 && op < 8) || op > 10 ||
            (op >= 8 && (len > 125 || !fin)) || len > ((uint64_t)1 << 40)) {
            if (c->state == ST_OPEN)
                err.protocol++;
            finish(c);
            return -1;
        }
        if (c->rlen - pos < hdr + len) {
            if (hdr + len > c->rcap) {      /* make room for the whole frame */
                if (pos) {
                    memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
                    c->rlen -= pos;
                    pos = 0;
                }
                c->rcap = hdr + len + 4096;
                c->rbuf = xrealloc(c->rbuf, c->rcap);
            }
            break;
        }
        unsigned char *pl = f + hdr;
        pos += hdr + len;
        switch (op) {
        case 8: /* close */
            if (c->state == ST_OPEN) {
                unsigned code = len >= 2 ? (unsigned)pl[0] << 8 | pl[1] : 1000;
                if (err.closed++ < 3)
                    fprintf(stderr, "wsload: the server closed a connection (code %u%s%.*s)\n",
                            len >= 2 ? code : 1005, len > 2 ? ": " : "",
                            (int)(len > 2 ? len - 2 : 0), (const char *)pl + 2);
                send_close(c, len >= 2 ? code : 1000);
                flush(c);
            } else if (c->state == ST_CLOSING) {
                c->close_answered = 1;
                close_ok++;
            }
            finish(c);
            return -1;
        case 9: /* ping */
            put_frame(c, 10, pl, (size_t)len);
            break;
        case 10: /* pong */
            break;
        default: /* data: 0 continuation, 1 text, 2 binary */
            if (op) {
                if (c->in_msg) {
                    err.protocol++;
                    finish(c);
                    return -1;
                }
                c->in_msg = 1;
                c->msg_off = 0;
                c->bad = op != (opt_binary ? 2 : 1);
            } else if (!c->in_msg) {
                err.protocol++;
                finish(c);
                return -1;
            }
            if (!c->bad && (c->msg_off + len > opt_size ||
                            memcmp(pl, message + c->msg_off, (size_t)len) != 0))
                c->bad = 1;
            c->msg_off += (size_t)len;
            if (fin) {
                if ((c->bad || c->msg_off != opt_size) && c->state == ST_OPEN)
                    err.mismatch++;
                c->in_msg = 0;
                on_echo(c);
            }
        }
    }
    if (pos) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
    return 0;
}

static void build_request(struct conn *c)
{
    unsigned char raw[16];
    char key[32];
    random_bytes(raw, sizeof raw);
    base64(raw, sizeof raw, key);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s:%s\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "User-Agent: wsload\r\n"
                     "\r\n", opt_path, host, port, key);
    wreserve(c, (size_t)n);
    memcpy(c->wbuf + c->wlen, req, (size_t)n);
    c->wlen += (size_t)n;
}

/* The handshake answer is complete in rbuf[0..end). */
static void check_handshake(struct conn *c, size_t end)
{
    char *h = (char *)c->rbuf;
    char *eol = memchr(h, '\r', end);
    size_t l1 = eol ? (size_t)(eol - h) : end;
    int ok101 = l1 >= 12 && memcmp(h, "HTTP/1.1 101", 12) == 0 &&
                (l1 == 12 || h[12] == ' ');
    int has_accept = 0;
    for (size_t i = l1; i + 2 < end; i++) {
        static const char name[] = "\nsec-websocket-accept:";
        size_t nl = sizeof name - 1;
        if (h[i] == '\n' && i + nl <= end && strncasecmp(h + i, name, nl) == 0) {
            has_accept = 1;
            break;
        }
    }
    if (!ok101 || !has_accept) {
        char why[140];
        snprintf(why, sizeof why, "%s: %.*s", ok101 ? "no Sec-WebSocket-Accept" :
                 "not 101", (int)(l1 > 100 ? 100 : l1), h);
        hs_fail(c, why);
        return;
    }
    memmove(c->rbuf, c->rbuf + end, c->rlen - end);
    c->rlen -= end;
    c->state = ST_OPEN;
    n_pending--;
    n_open++;
    if (phase == PH_WARMUP || phase == PH_MEASURE)
        start_load(c);       /* (not reached: the load starts once all are up) */
}

static void on_readable(struct conn *c)
{
    if (c->rlen == c->rcap) {
        c->rcap *= 2;
        c->rbuf = xrealloc(c->rbuf, c->rcap);
    }
    ssize_t r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        if (c->state == ST_HANDSHAKE || c->state == ST_CONNECTING) {
            char why[100];
            snprintf(why, sizeof why, "read: %s", strerror(errno));
            hs_fail(c, why);
        } else {
            if (c->state == ST_OPEN)
                err.read++;
            else if (c->state == ST_CLOSING)
                close_missing++;
            finish(c);
        }
        return;
    }
    if (r == 0) {
        if (c->state == ST_HANDSHAKE) {
            if (c->rlen) {   /* report what the server did answer */
                char *h = (char *)c->rbuf;
                char *eol = memchr(h, '\r', c->rlen);
                char why[140];
                snprintf(why, sizeof why, "closed: %.*s",
                         (int)(eol ? (eol - h > 100 ? 100 : eol - h) : 0), h);
                hs_fail(c, why);
            } else {
                hs_fail(c, "connection closed before an answer");
            }
        } else {
            if (c->state == ST_OPEN)
                err.eof++;
            else if (c->state == ST_CLOSING)
                close_missing++;
            finish(c);
        }
        return;
    }
    c->rlen += (size_t)r;
    if (c->state == ST_HANDSHAKE) {
        unsigned char *e = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (!e) {
            if (c->rlen > 16384)
                hs_fail(c, "answer head larger than 16 KiB");
            return;
        }
        check_handshake(c, (size_t)(e + 4 - c->rbuf));
        if (c->state != ST_OPEN)
            return;
    }
    if (c->state == ST_OPEN || c->state == ST_CLOSING) {
        if (parse_frames(c) < 0)
            return;
        flush(c);
    }
}

static void on_writable(struct conn *c)
{
    if (c->state == ST_CONNECTING) {
        int e = 0;
        socklen_t el = sizeof e;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el);
        if (e) {
            char why[100];
            snprintf(why, sizeof why, "connect: %s", strerror(e));
            open_fail(c, &err.connect, why);
            return;
        }
        c->state = ST_HANDSHAKE;
    }
    flush(c);
}

static struct addrinfo *resolve(void)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int e = getaddrinfo(host, port, &hints, &ai);
    if (e)
        die("cannot resolve %s:%s: %s", host, port, gai_strerror(e));
    return ai;
}

static void open_conn(struct conn *c, struct addrinfo *ai)
{
    memset(c, 0, sizeof *c);
    c->rcap = 16384;
    c->rbuf = xrealloc(NULL, c->rcap);
    c->sent = xrealloc(NULL, sizeof(uint64_t) * (size_t)opt_depth);
    n_pending++;
    c->state = ST_CONNECTING;
    c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        char why[100];
        snprintf(why, sizeof why, "socket: %s", strerror(errno));
        open_fail(c, &err.connect, why);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    build_request(c);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(c - conns)};
    c->want_out = 1;
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        char why[100];
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        open_fail(c, &err.connect, why);
    }
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: wsload [options] HOST:PORT | ws://HOST:PORT/PATH\n"
        "  -c N     connections (default 64)\n"
        "  -d SEC   measured seconds (default 10)\n"
        "  -w SEC   warm-up seconds before measuring, same connections (default 0)\n"
        "  -s BYTES message size (default 32)\n"
        "  -p N     messages in flight per connection (default 1)\n"
        "  -b       binary messages (default: text)\n"
        "  -u PATH  request path (default /)\n"
        "  -T SEC   time allowed for all handshakes (default 10)\n"
        "  -C SEC   time allowed for the server to answer the close frames (default 2)\n");
}

static void parse_target(const char *t)
{
    if (strncmp(t, "ws://", 5) == 0)
        t += 5;
    const char *slash = strchr(t, '/');
    size_t hl = slash ? (size_t)(slash - t) : strlen(t);
    char hp[sizeof host];
    if (hl >= sizeof hp)
        die("target too long");
    memcpy(hp, t, hl);
    hp[hl] = 0;
    if (slash)
        opt_path = strdup(slash);
    char *colon = strrchr(hp, ':');
    if (!colon || colon == hp)
        die("target must be HOST:PORT, got %s", t);
    *colon = 0;
    char *h = hp;
    if (*h == '[' && colon[-1] == ']') {   /* [::1]:8000 */
        h++;
        colon[-1] = 0;
    }
    snprintf(host, sizeof host, "%s", h);
    snprintf(port, sizeof port, "%s", colon + 1);
}

static double us(double ns) { return ns / 1000.0; }

int main(int argc, char **argv)
{
    int o;
    while ((o = getopt(argc, argv, "c:d:w:s:p:bu:T:C:h")) != -1) {
        switch (o) {
        case 'c': opt_conns = atoi(optarg); break;
        case 'd': opt_duration = atof(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 's': opt_size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'p': opt_depth = atoi(optarg); break;
        case 'b': opt_binary = 1; break;
        case 'u': opt_path = optarg; break;
        case 'T': opt_connect_timeout = atof(optarg); break;
        case 'C': opt_close_timeout = atof(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 1;
    }
    parse_target(argv[optind]);
    if (opt_conns < 1 || opt_depth < 1 || opt_duration <= 0 || opt_warmup < 0)
        die("-c and -p must be >= 1, -d > 0, -w >= 0");
    if (opt_size > ((size_t)1 << 30))
        die("-s at most 1 GiB");

    random_bytes(&rng_state, sizeof rng_state);
    rng_state |= 1;

    /* The message: printable ASCII for text, random bytes for binary. */
    message = xrealloc(NULL, opt_size ? opt_size : 1);
    for (size_t i = 0; i < opt_size; i++)
        message[i] = opt_binary ? (unsigned char)rng()
                                : (unsigned char)('a' + (i * 7 + i / 26) % 26);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt_conns + 32) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    struct addrinfo *ai = resolve();
    conns = xrealloc(NULL, sizeof *conns * (size_t)opt_conns);
    for (int i = 0; i < opt_conns; i++)
        open_conn(&conns[i], ai);
    freeaddrinfo(ai);

    printf("wsload %s:%s%s: %d connections, %zu-byte %s messages, %d in flight each, "
           "%g s warm-up + %g s\n", host, port, opt_path, opt_conns, opt_size,
           opt_binary ? "binary" : "text", opt_depth, opt_warmup, opt_duration);
    fflush(stdout);

    uint64_t t_start = now_ns();
    uint64_t deadline = t_start + (uint64_t)(opt_connect_timeout * 1e9);
    uint64_t t_measure = 0, t_end = 0;
    int n_ok = 0;
    struct epoll_event evs[256];

    for (;;) {
        uint64_t t = now_ns();
        /* Phase changes. */
        if (phase == PH_CONNECT && (n_pending == 0 || t >= deadline)) {
            for (int i = 0; i < opt_conns; i++)
                if (conns[i].state == ST_CONNECTING || conns[i].state == ST_HANDSHAKE)
                    hs_fail(&conns[i], "no answer within the handshake timeout");
            n_ok = n_open;
            if (n_open == 0)
                break;
            phase = opt_warmup > 0 ? PH_WARMUP : PH_MEASURE;
            t_measure = now_ns() + (uint64_t)(opt_warmup * 1e9);
            last_done = t_measure;
            deadline = phase == PH_WARMUP ? t_measure
                                          : t_measure + (uint64_t)(opt_duration * 1e9);
            for (int i = 0; i < opt_conns; i++)
                if (conns[i].state == ST_OPEN)
                    start_load(&conns[i]);
            continue;
        }
        if (phase == PH_WARMUP && t >= deadline) {
            phase = PH_MEASURE;
            t_measure = last_done = t;
            deadline = t + (uint64_t)(opt_duration * 1e9);
        }
        if (phase == PH_MEASURE && t >= deadline) {
            t_end = t;
            if (t - last_done > max_gap)
                max_gap = t - last_done;
            phase = PH_CLOSE;
            for (int i = 0; i < opt_conns; i++) {
                struct conn *c = &conns[i];
                if (c->state == ST_OPEN && c->inflight && t - c->sent[c->head] > 1000000000u)
                    n_stalled++;
            }
            deadline = t + (uint64_t)(opt_close_timeout * 1e9);
            for (int i = 0; i < opt_conns; i++) {
                struct conn *c = &conns[i];
                if (c->state != ST_OPEN)
                    continue;
                c->state = ST_CLOSING;
                send_close(c, 1000);
                flush(c);
            }
        }
        if (phase == PH_CLOSE && (n_open == 0 || t >= deadline)) {
            for (int i = 0; i < opt_conns; i++)
                if (conns[i].state == ST_CLOSING) {
                    close_missing++;
                    finish(&conns[i]);
                }
            break;
        }
        int timeout_ms = (int)((deadline > t ? deadline - t : 0) / 1000000) + 1;
        int n = epoll_wait(epfd, evs, 256, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[evs[i].data.u32];
            if (c->state == ST_DONE)
                continue;
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP) &&
                c->state == ST_CONNECTING) {
                on_writable(c);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c);
            if (c->state != ST_DONE && evs[i].events & EPOLLOUT)
                on_writable(c);
        }
    }

    /* ------------------------------------------------------- report */
    double elapsed = t_end > t_measure ? (double)(t_end - t_measure) / 1e9 : 0;
    double rps = elapsed > 0 ? (double)total_rt / elapsed : 0;
    uint64_t rt_min = UINT64_MAX, rt_max = 0;
    for (int i = 0; i < opt_conns; i++) {
        if (conns[i].rt < rt_min) rt_min = conns[i].rt;
        if (conns[i].rt > rt_max) rt_max = conns[i].rt;
    }
    if (!n_ok)
        rt_min = 0;
    uint64_t errors = err.connect + err.handshake + err.read + err.write + err.eof +
                      err.closed + err.protocol + err.mismatch;
    double avg = hist_n ? (double)(hist_sum / hist_n) : 0;

    printf("handshakes: %d ok, %llu failed (connect %llu)\n", n_ok,
           (unsigned long long)(err.handshake + err.connect),
           (unsigned long long)err.connect);
    if (hs_reason[0])
        printf("first handshake failure: %s\n", hs_reason);
    printf("round-trips: %llu in %.3f s = %.1f/s\n", (unsigned long long)total_rt,
           elapsed, rps);
    printf("per connection: min %llu, max %llu round-trips; %d waiting > 1 s for an "
           "echo at the end\n", (unsigned long long)rt_min, (unsigned long long)rt_max,
           n_stalled);
    printf("latency (us): avg %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
           us(avg), us(hist_pct(50)), us(hist_pct(90)), us(hist_pct(99)),
           us(hist_pct(99.9)), us((double)hist_max));
    printf("longest time without any echo (all connections): %.1f us\n", us((double)max_gap));
    printf("errors: %llu (connect %llu, handshake %llu, read %llu, write %llu, eof %llu, "
           "server close %llu, protocol %llu, mismatch %llu)\n",
           (unsigned long long)errors, (unsigned long long)err.connect,
           (unsigned long long)err.handshake, (unsigned long long)err.read,
           (unsigned long long)err.write, (unsigned long long)err.eof,
           (unsigned long long)err.closed, (unsigned long long)err.protocol,
           (unsigned long long)err.mismatch);
    printf("close: %d answered with a close frame, %d not\n", close_ok, close_missing);
    printf("RESULT rps=%.1f round_trips=%llu elapsed=%.3f conns_ok=%d conns=%d "
           "avg_us=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f "
           "rt_min=%llu rt_max=%llu errors=%llu err_connect=%llu err_handshake=%llu "
           "err_read=%llu err_write=%llu err_eof=%llu err_closed=%llu err_protocol=%llu "
           "err_mismatch=%llu close_ok=%d close_missing=%d stalled=%d gap_us=%.1f\n",
           rps, (unsigned long long)total_rt, elapsed, n_ok, opt_conns, us(avg),
           us(hist_pct(50)), us(hist_pct(90)), us(hist_pct(99)), us(hist_pct(99.9)),
           us((double)hist_max), (unsigned long long)rt_min, (unsigned long long)rt_max,
           (unsigned long long)errors, (unsigned long long)err.connect,
           (unsigned long long)err.handshake, (unsigned long long)err.read,
           (unsigned long long)err.write, (unsigned long long)err.eof,
           (unsigned long long)err.closed, (unsigned long long)err.protocol,
           (unsigned long long)err.mismatch, close_ok, close_missing, n_stalled,
           us((double)max_gap));
    return n_ok ? 0 : 2;
}
