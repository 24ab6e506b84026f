/* tls.c - OpenSSL server context and non-blocking TLS connections.
 *
 * Owns: loading and checking the certificate and key, the client
 * certificate policy, protocol floor (TLS 1.2) and ciphers, ALPN (h2 and
 * http/1.1 per --http), shared session ticket keys, and the handshake, read
 * and gathered write of one connection.  No Python, no event loop: conn.c
 * calls these when the socket is ready. */
#include "tls.h"
#include "log.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

#define RECORD (16 * 1024)
#define CS_H2_READY 0                /* TEMP: h2.c lands next */           /* one TLS record of plaintext */

struct cs_tls {
    SSL_CTX *ctx;
    int http;                        /* CS_HTTP_* */
    char *server_pem;
    char password[1024];
};

int cs_tls_make_keys(unsigned char keys[CS_TLS_KEYS])
{
    return RAND_bytes(keys, CS_TLS_KEYS) == 1 ? 0 : -1;
}

static const char *ossl_reason(void)
{
    static _Thread_local char buf[256];
    unsigned long e = ERR_peek_last_error();
    if (!e)
        return "unknown error";
    const char *r = ERR_reason_error_string(e);
    snprintf(buf, sizeof(buf), "%s", r ? r : "unknown error");
    ERR_clear_error();
    return buf;
}

static int password_cb(char *buf, int size, int rwflag, void *ud)
{
    (void)rwflag;
    const char *pw = ud;
    int n = (int)strlen(pw);
    if (n > size)
        n = size;
    memcpy(buf, pw, (size_t)n);
    return n;
}

/* Pick h2 when the client offers it and --http allows; else http/1.1. */
static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *ud)
{
    (void)s;
    const cs_tls *t = ud;
    const unsigned char *h11 = NULL;
    for (unsigned i = 0; i < inlen;) {
        unsigned len = in[i];
        const unsigned char *p = in + i + 1;
        if (i + 1 + len > inlen)
            break;
        if (len == 2 && memcmp(p, "h2", 2) == 0 && t->http != CS_HTTP_1) {
            *out = p;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        if (len == 8 && memcmp(p, "http/1.1", 8) == 0)
            h11 = p;
        i += 1 + len;
    }
    if (h11 && t->http != CS_HTTP_2) {
        *out = h11;
        *outlen = 8;
        return SSL_TLSEXT_ERR_OK;
    }
    /* nothing we speak: with --http 2 that is fatal, otherwise go on as HTTP/1.1 */
    return t->http == CS_HTTP_2 ? SSL_TLSEXT_ERR_ALERT_FATAL : SSL_TLSEXT_ERR_NOACK;
}

static char *x509_pem(X509 *x, size_t *n)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b && PEM_write_bio_X509(b, x)) {
        char *p;
        long len = BIO_get_mem_data(b, &p);
        if (len > 0 && (out = malloc((size_t)len + 1))) {
            memcpy(out, p, (size_t)len);
            out[len] = 0;
            if (n)
                *n = (size_t)len;
        }
    }
    BIO_free(b);
    return out;
}

cs_tls *cs_tls_new(const cs_config *cfg, const unsigned char keys[CS_TLS_KEYS], char *err, size_t errlen)
{
    if (!cfg->ssl_certfile || !cfg->ssl_certfile[0]) {
        const char *orphan = cfg->ssl_keyfile && cfg->ssl_keyfile[0]       ? "--ssl-keyfile"
                             : cfg->ssl_ca_certs && cfg->ssl_ca_certs[0]   ? "--ssl-ca-certs"
                             : cfg->ssl_cert_reqs != CS_CERT_NONE          ? "--ssl-cert-reqs"
                                                                           : NULL;
        if (orphan)
            snprintf(err, errlen, "TLS: %s needs --ssl-certfile", orphan);
        return NULL;
    }
    const char *cert = cfg->ssl_certfile;
    const char *key = cfg->ssl_keyfile && cfg->ssl_keyfile[0] ? cfg->ssl_keyfile : cert;
    const char *ca = cfg->ssl_ca_certs && cfg->ssl_ca_certs[0] ? cfg->ssl_ca_certs : NULL;
    cs_tls *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "TLS: out of memory");
        return NULL;
    }
    t->http = cfg->http;
    ERR_clear_error();
    SSL_CTX *ctx = t->ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create a context: %s", ossl_reason());
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_SINGLE_ECDH_USE | SSL_OP_PRIORITIZE_CHACHA);
    /* TLS 1.3: AES-128-GCM first (OpenSSL's default puts AES-256 first, which
     * costs more per byte for no practical gain); ChaCha20 still wins for a
     * client that lists it first, one without AES instructions */
    if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256") != 1) {
        snprintf(err, errlen, "TLS: cannot set the TLS 1.3 cipher suites: %s", ossl_reason());
        goto fail;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* one read(2) takes whole records (and what follows) instead of a
     * 5-byte header, then the body, then an EAGAIN */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_app_data(ctx, t);
    if (cfg->ssl_keyfile_password && cfg->ssl_keyfile_password[0]) {
        snprintf(t->password, sizeof(t->password), "%s", cfg->ssl_keyfile_password);
    }
    /* no password given: an encrypted key fails rather than prompting on a tty */
    SSL_CTX_set_default_passwd_cb(ctx, password_cb);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, t->password);

    FILE *f = fopen(cert, "r");
    if (!f) {
        snprintf(err, errlen, "TLS: cannot read --ssl-certfile %s: %s", cert, strerror(errno));
        goto fail;
    }
    fclose(f);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errlen, "TLS: --ssl-certfile %s holds no usable certificate: %s", cert, ossl_reason());
        goto fail;
    }
    if (!(f = fopen(key, "r"))) {
        snprintf(err, errlen, "TLS: cannot read --ssl-keyfile %s: %s", key, strerror(errno));
        goto fail;
    }
    fclose(f);
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        unsigned long code = ERR_peek_last_error();
        if (ERR_GET_LIB(code) == ERR_LIB_X509 && ERR_GET_REASON(code) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            snprintf(err, errlen, "TLS: the key in %s does not match the certificate in %s", key, cert);
            goto fail;
        }
        const char *why = ossl_reason();
        snprintf(err, errlen, "TLS: cannot load the private key from %s: %s%s", key, why,
                 t->password[0] ? " (is --ssl-keyfile-password right?)"
                                : " (an encrypted key needs --ssl-keyfile-password)");
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "TLS: the key in %s does not match the certificate in %s: %s", key, cert,
                 ossl_reason());
        goto fail;
    }
    if (cfg->ssl_ciphers && cfg->ssl_ciphers[0] && SSL_CTX_set_cipher_list(ctx, cfg->ssl_ciphers) != 1) {
        snprintf(err, errlen, "TLS: --ssl-ciphers '%s' selects no cipher: %s", cfg->ssl_ciphers, ossl_reason());
        goto fail;
    }
    if (cfg->ssl_cert_reqs != CS_CERT_NONE && !ca) {
        snprintf(err, errlen, "TLS: --ssl-cert-reqs %s needs --ssl-ca-certs to verify client certificates",
                 cfg->ssl_cert_reqs == CS_CERT_REQUIRED ? "required" : "optional");
        goto fail;
    }
    if (ca) {
        if (!(f = fopen(ca, "r"))) {
            snprintf(err, errlen, "TLS: cannot read --ssl-ca-certs %s: %s", ca, strerror(errno));
            goto fail;
        }
        fclose(f);
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
            snprintf(err, errlen, "TLS: cannot load --ssl-ca-certs %s: %s", ca, ossl_reason());
            goto fail;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
        if (names)
            SSL_CTX_set_client_CA_list(ctx, names);
        ERR_clear_error();
    }
    if (cfg->ssl_cert_reqs == CS_CERT_REQUIRED)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    else if (cfg->ssl_cert_reqs == CS_CERT_OPTIONAL)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* resumption: tickets every worker can open */
    static const unsigned char sid_ctx[] = "corsac";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    /* tickets only: a per-worker id cache would not resume across workers,
     * and OpenSSL sweeps it every 255 handshakes */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    if (keys && SSL_CTX_set_tlsext_ticket_keys(ctx, (void *)keys, CS_TLS_KEYS) != 1) {
        snprintf(err, errlen, "TLS: cannot set the session ticket keys: %s", ossl_reason());
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, t);
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    if (leaf)
        t->server_pem = x509_pem(leaf, NULL);
    return t;
fail:
    cs_tls_free(t);
    return NULL;
}

void cs_tls_free(cs_tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t->server_pem);
    OPENSSL_cleanse(t->password, sizeof(t->password));
    free(t);
}

cs_ssl *cs_tls_accept(cs_tls *t, int fd)
{
    SSL *s = SSL_new(t->ctx);
    if (!s || SSL_set_fd(s, fd) != 1) {
        cs_log(CS_LOG_ERROR, "tls: cannot start a session: %s", ossl_reason());
        SSL_free(s);
        return NULL;
    }
    SSL_set_accept_state(s);
    return s;
}

int cs_tls_handshake(cs_ssl *s, const char *peer)
{
    int rc = SSL_do_handshake(s);
    if (rc == 1)
        return CS_TLS_DONE;
    int e = SSL_get_error(s, rc);
    if (e == SSL_ERROR_WANT_READ)
        return CS_TLS_WANT_READ;
    if (e == SSL_ERROR_WANT_WRITE)
        return CS_TLS_WANT_WRITE;
    unsigned long code = ERR_peek_error();
    if (e == SSL_ERROR_SSL && ERR_GET_LIB(code) == ERR_LIB_SSL &&
        (ERR_GET_REASON(code) == SSL_R_HTTP_REQUEST || ERR_GET_REASON(code) == SSL_R_HTTPS_PROXY_REQUEST)) {
        ERR_clear_error();
        cs_log(CS_LOG_DEBUG, "tls: %s sent plain HTTP to a TLS port", peer);
        return CS_TLS_PLAINTEXT;
    }
    if (e == SSL_ERROR_SYSCALL && !code)
        cs_log(CS_LOG_DEBUG, "tls: handshake with %s: %s", peer, errno ? strerror(errno) : "connection closed");
    else
        cs_log(CS_LOG_DEBUG, "tls: handshake with %s failed: %s", peer, ossl_reason());
    ERR_clear_error();
    return CS_TLS_FAILED;
}

int cs_tls_h2(cs_ssl *s)
{
    const unsigned char *p;
    unsigned int n;
    SSL_get0_alpn_selected(s, &p, &n);
    if (n)
        return n == 2 && memcmp(p, "h2", 2) == 0;
    const cs_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    return t->http == CS_HTTP_2;
}

/* Map an SSL result to errno; 0 for a clean or abrupt end of stream. */
static ssize_t fail_io(SSL *s, int rc)
{
    int e = SSL_get_error(s, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (!ERR_peek_error()) {
            if (errno == 0 || errno == EAGAIN)     /* EOF without close_notify */
                return 0;
            return -1;
        }
        break;
    default:
        break;
    }
    cs_log(CS_LOG_DEBUG, "tls: %s", ossl_reason());
    ERR_clear_error();
    errno = ECONNRESET;
    return -1;
}

ssize_t cs_tls_read(cs_ssl *s, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        size_t k = 0;
        errno = 0;
        int rc = SSL_read_ex(s, (char *)buf + got, n - got, &k);
        if (rc == 1) {
            got += k;
            /* nothing left in OpenSSL's buffer: the socket is likely empty
             * too (read-ahead took what was there); epoll says if not */
            if (!SSL_has_pending(s))
                break;
            continue;
        }
        if (got) {
            ERR_clear_error();
            return (ssize_t)got;    /* the end or error shows again on the next call */
        }
        return fail_io(s, 0);
    }
    return (ssize_t)got;
}

int cs_tls_pending(cs_ssl *s) { return SSL_has_pending(s); }

ssize_t cs_tls_writev(cs_ssl *s, const struct iovec *iov, int n)
{
    char buf[RECORD];
    size_t g = 0;
    const void *p = NULL;
    /* one iovec that fills a record goes as is; else gather into one record */
    if (n >= 1 && iov[0].iov_len >= RECORD) {
        p = iov[0].iov_base;
        g = RECORD;
    } else {
        for (int i = 0; i < n && g < RECORD; i++) {
            size_t take = iov[i].iov_len < RECORD - g ? iov[i].iov_len : RECORD - g;
            memcpy(buf + g, iov[i].iov_base, take);
            g += take;
        }
        p = buf;
    }
    if (!g)
        return 0;
    size_t done = 0;
    errno = 0;
    int rc = SSL_write_ex(s, p, g, &done);
    if (rc == 1)
        return (ssize_t)done;
    ssize_t r = fail_io(s, 0);
    if (r == 0) {
        errno = EPIPE;
        r = -1;
    }
    return r;
}

void cs_tls_close(cs_ssl *s, int notify)
{
    if (!s)
        return;
    if (notify) {
        SSL_shutdown(s);            /* non-blocking socket: sends what it can */
    }
    ERR_clear_error();
    SSL_free(s);
}

int cs_tls_version(cs_ssl *s) { return SSL_version(s); }

int cs_tls_cipher(cs_ssl *s)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(s);
    return c ? (int)SSL_CIPHER_get_protocol_id(c) : 0;
}

const char *cs_tls_server_pem(cs_ssl *s)
{
    const cs_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    return t->server_pem;
}

char *cs_tls_peer_pem(cs_ssl *s, int i, size_t *n)
{
    /* on the server side the chain omits the leaf: take it separately */
    if (i == 0) {
        X509 *leaf = SSL_get0_peer_certificate(s);
        return leaf ? x509_pem(leaf, n) : NULL;
    }
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(s);
    if (!chain)
        return NULL;
    /* skip the leaf if the stack repeats it */
    X509 *leaf = SSL_get0_peer_certificate(s);
    int off = sk_X509_num(chain) > 0 && leaf && X509_cmp(sk_X509_value(chain, 0), leaf) == 0 ? 0 : -1;
    int k = i + off;
    if (k < 0 || k >= sk_X509_num(chain))
        return NULL;
    return x509_pem(sk_X509_value(chain, k), n);
}

char *cs_tls_peer_name(cs_ssl *s)
{
    X509 *leaf = SSL_get0_peer_certificate(s);
    if (!leaf)
        return NULL;
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b && X509_NAME_print_ex(b, X509_get_subject_name(leaf), 0, XN_FLAG_RFC2253) >= 0) {
        char *p;
        long len = BIO_get_mem_data(b, &p);
        if (len >= 0 && (out = malloc((size_t)len + 1))) {
            memcpy(out, p, (size_t)len);
            out[len] = 0;
        }
    }
    BIO_free(b);
    return out;
}
