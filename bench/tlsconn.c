/* tlsconn: TLS connection-rate load generator for the Corsac benchmarks.
 *
 * K threads, each in a loop: TCP connect, TLS handshake, one
 * `GET PATH HTTP/1.1` with `Connection: close`, read the whole response
 * (Content-Length or chunked is not parsed: the response is read until the
 * server closes), close.  Blocking sockets, one connection at a time per
 * thread.  By default every handshake is a full one (no session is offered);
 * with -r each thread keeps the session (TLS 1.3 ticket / TLS 1.2 ticket or
 * id) of its previous connection and offers it on the next one, so every
 * connection after a thread's first tries to resume.
 *
 * Build: cc -O2 -o tlsconn bench/tlsconn.c -lssl -lcrypto -lpthread
 * Usage: tlsconn [-c THREADS] [-d SECONDS] [-w WARMUP] [-r] [-u PATH]
 *                [-v 1.2|1.3] [-a ALPN] [-t TIMEOUT_MS] HOST:PORT
 *
 * The certificate is not verified (the server's signature in the handshake
 * still is, as part of TLS).  Connections that start during the warm-up are
 * not counted; a connection is counted in the measured window when it ends
 * before the deadline.  The last line (`RESULT key=value ...`) is what
 * bench/tls_run.py parses:
 *   conns      connections completed (200 answered, closed) in the window
 *   rate       conns / measured seconds
 *   resumed    how many of them resumed a session (SSL_session_reused)
 *   hs_avg_us / hs_p50_us / hs_p99_us   TCP connect + TLS handshake time
 *   avg_us / p50_us / p99_us / max_us   connect to close (whole connection)
 *   err_connect / err_handshake / err_write / err_read / err_status
 *   cpu        CPU time used by this process / measured wall time (1.0 = one
 *              CPU busy: the load generator itself may be the limit)
 *   version    the TLS version of the last handshake (e.g. TLSv1.3)
 * Exit status: 0, or 2 when no connection succeeded at all.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static const char *g_host = "127.0.0.1";
static int g_port;
static const char *g_path = "/";
static int g_threads = 4, g_duration = 10, g_warmup = 2, g_resume = 0;
static int g_timeout_ms = 5000;
static int g_tls_max = TLS1_3_VERSION;
static unsigned char g_alpn[64];
static unsigned int g_alpn_len;
static struct sockaddr_in g_addr;
static SSL_CTX *g_ctx;
static double g_t_measure, g_t_end;
static char g_request[512];
static int g_request_len;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_first_error[256];

enum { E_CONNECT, E_HANDSHAKE, E_WRITE, E_READ, E_STATUS, E_N };
static const char *E_NAMES[E_N] = {"err_connect", "err_handshake", "err_write",
                                   "err_read", "err_status"};

struct samples {
    uint32_t *v;
    size_t n, cap;
};

struct worker {
    pthread_t tid;
    struct samples hs, total;
    unsigned long conns, resumed;
    unsigned long errors[E_N];
    const char *version; /* of this thread's last good connection */
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void push(struct samples *s, double us) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v) {
            perror("realloc");
            exit(1);
        }
    }
    s->v[s->n++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static void note_error(const char *what, SSL *ssl) {
    pthread_mutex_lock(&g_lock);
    if (!g_first_error[0]) {
        unsigned long e = ERR_peek_error();
        char buf[160] = "";
        if (e)
            ERR_error_string_n(e, buf, sizeof buf);
        snprintf(g_first_error, sizeof g_first_error, "%s%s%s%s", what,
                 buf[0] ? ": " : "", buf,
                 (!buf[0] && errno) ? strerror(errno) : "");
    }
    pthread_mutex_unlock(&g_lock);
    (void)ssl;
    ERR_clear_error();
}

/* Wait until fd is readable/writable as OpenSSL asks; 0 on timeout. */
static int wait_fd(int fd, int want_write, double deadline) {
    for (;;) {
        int ms = (int)((deadline - now()) * 1000);
        if (ms <= 0)
            return 0;
        struct pollfd p = {fd, want_write ? POLLOUT : POLLIN, 0};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return 0;
    }
}

/* Run an SSL op on a non-blocking socket until it completes; returns its
 * result (> 0 done, 0 EOF/closed, < 0 error). */
#define SSL_RETRY(call, ssl, fd, deadline, out)                              \
    do {                                                                     \
        for (;;) {                                                           \
            int _r = (call);                                                 \
            if (_r > 0) {                                                    \
                out = _r;                                                    \
                break;                                                       \
            }                                                                \
            int _e = SSL_get_error(ssl, _r);                                 \
            if (_e == SSL_ERROR_WANT_READ || _e == SSL_ERROR_WANT_WRITE) {   \
                if (!wait_fd(fd, _e == SSL_ERROR_WANT_WRITE, deadline)) {    \
                    out = -2;                                                \
                    break;                                                   \
                }                                                            \
                continue;                                                    \
            }                                                                \
            out = (_e == SSL_ERROR_ZERO_RETURN ||                            \
                   (_e == SSL_ERROR_SYSCALL && _r == 0))                     \
                      ? 0                                                    \
                      : -1;                                                  \
            break;                                                           \
        }                                                                    \
    } while (0)

static int tcp_connect(double deadline) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&g_addr, sizeof g_addr) < 0) {
        if (errno != EINPROGRESS || !wait_fd(fd, 1, deadline)) {
            close(fd);
            return -1;
        }
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            errno = err;
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* One connection. Returns 1 when a 200 was read and the connection closed
 * properly, 0 otherwise (error counted). *session is updated (-r). */
static int one_conn(struct worker *w, SSL_SESSION **session, int measured) {
    double t0 = now(), deadline = t0 + g_timeout_ms / 1000.0;
    int fd = tcp_connect(deadline), ok = 0, r;
    if (fd < 0) {
        if (measured)
            w->errors[E_CONNECT]++;
        note_error("connect", NULL);
        usleep(1000);
        return 0;
    }
    SSL *ssl = SSL_new(g_ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    if (*session)
        SSL_set_session(ssl, *session);
    SSL_RETRY(SSL_connect(ssl), ssl, fd, deadline, r);
    if (r <= 0) {
        if (measured)
            w->errors[E_HANDSHAKE]++;
        note_error(r == -2 ? "handshake timeout" : "handshake", ssl);
        goto out;
    }
    double t_hs = now();
    SSL_RETRY(SSL_write(ssl, g_request, g_request_len), ssl, fd, deadline, r);
    if (r != g_request_len) {
        if (measured)
            w->errors[E_WRITE]++;
        note_error("write", ssl);
        goto out;
    }
    char buf[16384];
    size_t got = 0;
    char head[16];
    for (;;) {
        SSL_RETRY(SSL_read(ssl, buf, sizeof buf), ssl, fd, deadline, r);
        if (r > 0) {
            if (g_resume && got == 0) {
                /* Keep the session now: the ticket(s) came before the
                 * response, and a connection that ends without a
                 * close_notify may leave the session marked unresumable. */
                SSL_SESSION *s = SSL_get1_session(ssl);
                if (s && SSL_SESSION_is_resumable(s)) {
                    if (*session)
                        SSL_SESSION_free(*session);
                    *session = s;
                } else if (s) {
                    SSL_SESSION_free(s);
                }
            }
            if (got < sizeof head) {
                size_t k = sizeof head - got < (size_t)r ? sizeof head - got : (size_t)r;
                memcpy(head + got, buf, k);
            }
            got += r;
            continue;
        }
        if (r == 0 && got)
            break; /* server closed after the response (close_notify or EOF) */
        if (r == -1 && got >= 12) {
            /* a TCP reset or an EOF without close_notify after a whole
             * response counts as a close, as browsers see it */
            break;
        }
        if (measured)
            w->errors[E_READ]++;
        note_error(r == -2 ? "read timeout" : "read", ssl);
        goto out;
    }
    if (got < 12 || memcmp(head, "HTTP/1.1 200", 12) != 0) {
        if (measured)
            w->errors[E_STATUS]++;
        pthread_mutex_lock(&g_lock);
        if (!g_first_error[0])
            snprintf(g_first_error, sizeof g_first_error, "status: %.12s",
                     got >= 12 ? head : "(short)");
        pthread_mutex_unlock(&g_lock);
        goto out;
    }
    double t1 = now();
    ok = 1;
    if (measured && t1 <= g_t_end) {
        w->conns++;
        if (SSL_session_reused(ssl))
            w->resumed++;
        push(&w->hs, (t_hs - t0) * 1e6);
        push(&w->total, (t1 - t0) * 1e6);
    }
    w->version = SSL_get_version(ssl);
    /* The server closed first: no close_notify of our own, but mark the
     * connection as shut down cleanly, or SSL_free would flag the session
     * (which *session shares) as not resumable. */
    SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
out:
    SSL_free(ssl);
    close(fd);
    return ok;
}

static void *run(void *arg) {
    struct worker *w = arg;
    SSL_SESSION *session = NULL;
    for (;;) {
        double t = now();
        if (t >= g_t_end)
            break;
        one_conn(w, &session, t >= g_t_measure);
    }
    if (session)
        SSL_SESSION_free(session);
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void merge(struct samples *all, struct samples *s) {
    for (size_t i = 0; i < s->n; i++)
        push(all, s->v[i]);
}

static double pct(struct samples *s, double p) {
    if (!s->n)
        return 0;
    size_t i = (size_t)(p / 100.0 * (s->n - 1) + 0.5);
    return s->v[i];
}

static double avg(struct samples *s) {
    double sum = 0;
    for (size_t i = 0; i < s->n; i++)
        sum += s->v[i];
    return s->n ? sum / s->n : 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: tlsconn [-c THREADS] [-d SECONDS] [-w WARMUP] [-r] [-u PATH]\n"
            "               [-v 1.2|1.3] [-a ALPN] [-t TIMEOUT_MS] HOST:PORT\n"
            "  -c  threads, one connection at a time each (4)\n"
            "  -d  measured seconds (10)     -w  warm-up seconds (2)\n"
            "  -r  resume: offer each thread's previous session\n"
            "  -u  request path (/)          -v  highest TLS version (1.3)\n"
            "  -a  ALPN protocol to offer (none)\n"
            "  -t  timeout per connection in ms (5000)\n");
    exit(1);
}

int main(int argc, char **argv) {
    int opt;
    const char *alpn = NULL;
    while ((opt = getopt(argc, argv, "c:d:w:ru:v:a:t:h")) != -1) {
        switch (opt) {
        case 'c': g_threads = atoi(optarg); break;
        case 'd': g_duration = atoi(optarg); break;
        case 'w': g_warmup = atoi(optarg); break;
        case 'r': g_resume = 1; break;
        case 'u': g_path = optarg; break;
        case 'v':
            if (!strcmp(optarg, "1.2"))
                g_tls_max = TLS1_2_VERSION;
            else if (!strcmp(optarg, "1.3"))
                g_tls_max = TLS1_3_VERSION;
            else
                usage();
            break;
        case 'a': alpn = optarg; break;
        case 't': g_timeout_ms = atoi(optarg); break;
        default: usage();
        }
    }
    if (optind != argc - 1 || g_threads < 1 || g_duration < 1 || g_warmup < 0)
        usage();
    char *target = strdup(argv[optind]);
    char *colon = strrchr(target, ':');
    if (!colon)
        usage();
    *colon = 0;
    g_host = target;
    g_port = atoi(colon + 1);
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons(g_port);
    if (inet_pton(AF_INET, g_host, &g_addr.sin_addr) != 1) {
        fprintf(stderr, "tlsconn: HOST must be an IPv4 address\n");
        return 1;
    }
    g_request_len = snprintf(g_request, sizeof g_request,
                             "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: tlsconn\r\n"
                             "Connection: close\r\n\r\n",
                             g_path, g_host, g_port);

    signal(SIGPIPE, SIG_IGN);
    g_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(g_ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(g_ctx, g_tls_max);
    SSL_CTX_set_verify(g_ctx, SSL_VERIFY_NONE, NULL);
    /* Sessions are kept by hand (SSL_get1_session), not in a client cache. */
    SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(g_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (!g_resume)
        SSL_CTX_set_options(g_ctx, SSL_OP_NO_TICKET);
    if (alpn) {
        size_t n = strlen(alpn);
        if (n == 0 || n > sizeof g_alpn - 1)
            usage();
        g_alpn[0] = (unsigned char)n;
        memcpy(g_alpn + 1, alpn, n);
        g_alpn_len = n + 1;
        SSL_CTX_set_alpn_protos(g_ctx, g_alpn, g_alpn_len);
    }

    struct worker *ws = calloc(g_threads, sizeof *ws);
    double t_start = now();
    g_t_measure = t_start + g_warmup;
    g_t_end = g_t_measure + g_duration;
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    for (int i = 0; i < g_threads; i++)
        if (pthread_create(&ws[i].tid, NULL, run, &ws[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    for (int i = 0; i < g_threads; i++)
        pthread_join(ws[i].tid, NULL);
    getrusage(RUSAGE_SELF, &ru1);
    double wall = now() - t_start;
    double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                 (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;

    struct samples hs = {0}, total = {0};
    unsigned long conns = 0, resumed = 0, errors[E_N] = {0}, nerr = 0;
    const char *version = "-";
    for (int i = 0; i < g_threads; i++) {
        if (ws[i].version)
            version = ws[i].version;
        conns += ws[i].conns;
        resumed += ws[i].resumed;
        for (int e = 0; e < E_N; e++)
            errors[e] += ws[i].errors[e];
        merge(&hs, &ws[i].hs);
        merge(&total, &ws[i].total);
    }
    for (int e = 0; e < E_N; e++)
        nerr += errors[e];
    qsort(hs.v, hs.n, sizeof *hs.v, cmp_u32);
    qsort(total.v, total.n, sizeof *total.v, cmp_u32);
    double rate = conns / (double)g_duration;
    printf("%d threads, %ds (+%ds warm-up), %s handshakes%s\n", g_threads, g_duration,
           g_warmup, g_resume ? "resumed" : "full", alpn ? ", ALPN offered" : "");
    printf("connections: %lu (%.1f/s), resumed %lu, errors %lu\n", conns, rate,
           resumed, nerr);
    printf("handshake (connect+TLS): avg %.0fus p50 %.0fus p99 %.0fus\n", avg(&hs),
           pct(&hs, 50), pct(&hs, 99));
    printf("whole connection:        avg %.0fus p50 %.0fus p99 %.0fus max %.0fus\n",
           avg(&total), pct(&total, 50), pct(&total, 99), pct(&total, 100));
    printf("load generator CPU: %.2f of one CPU\n", cpu / wall);
    if (g_first_error[0])
        printf("first error: %s\n", g_first_error);
    printf("RESULT conns=%lu rate=%.1f resumed=%lu hs_avg_us=%.0f hs_p50_us=%.0f "
           "hs_p99_us=%.0f avg_us=%.0f p50_us=%.0f p99_us=%.0f max_us=%.0f",
           conns, rate, resumed, avg(&hs), pct(&hs, 50), pct(&hs, 99), avg(&total),
           pct(&total, 50), pct(&total, 99), pct(&total, 100));
    for (int e = 0; e < E_N; e++)
        printf(" %s=%lu", E_NAMES[e], errors[e]);
    printf(" errors=%lu cpu=%.3f version=%s\n", nerr, cpu / wall, version);
    fflush(stdout);
    return conns ? 0 : 2;
}
