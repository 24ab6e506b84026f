/* tls.h - TLS on our own sockets with OpenSSL: the server context (cert,
 * key, client-certificate policy, ciphers, ALPN, session tickets) and the
 * non-blocking handshake, read and write of one connection.
 *
 * The context is built in each worker from the files (so the arbiter's HUP,
 * which starts new workers, re-reads them); the ticket keys come from the
 * arbiter, so a session resumes on whichever worker accepts it. */
#ifndef CORSAC_TLS_H
#define CORSAC_TLS_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "config.h"

typedef struct cs_tls cs_tls;
typedef struct ssl_st cs_ssl;      /* OpenSSL's SSL */

#define CS_TLS_KEYS 80             /* session ticket key material */

enum { CS_TLS_DONE = 1, CS_TLS_WANT_READ = 2, CS_TLS_WANT_WRITE = 3, CS_TLS_FAILED = -1, CS_TLS_PLAINTEXT = -2 };

/* Random ticket keys, made once in the arbiter.  0, or -1. */
int cs_tls_make_keys(unsigned char keys[CS_TLS_KEYS]);

/* Build the server context from cfg (NULL when TLS is off: no certfile).
 * On failure NULL with a one-line reason naming the file in err. */
cs_tls *cs_tls_new(const cs_config *cfg, const unsigned char keys[CS_TLS_KEYS], char *err, size_t errlen);
void cs_tls_free(cs_tls *t);

/* A server-side session on an accepted socket, or NULL (logged). */
cs_ssl *cs_tls_accept(cs_tls *t, int fd);

/* Advance the handshake: CS_TLS_DONE, CS_TLS_WANT_*, CS_TLS_FAILED (logged
 * at debug), CS_TLS_PLAINTEXT (the client spoke plain HTTP). */
int cs_tls_handshake(cs_ssl *s, const char *peer);

/* 1 when ALPN chose h2, or --http 2 and the client sent no ALPN. */
int cs_tls_h2(cs_ssl *s);

/* Read until buf is full or the socket has nothing more: >0 bytes, 0 at
 * EOF, -1 with errno (EAGAIN: try when the socket is readable). */
ssize_t cs_tls_read(cs_ssl *s, void *buf, size_t n);

/* Bytes that wait inside OpenSSL, decrypted or read ahead (epoll cannot see them). */
int cs_tls_pending(cs_ssl *s);

/* Write up to one record gathered from iov: bytes taken, or -1 with errno.
 * A retry after EAGAIN must offer the same bytes first (the output queue
 * keeps them in order, so it does). */
ssize_t cs_tls_writev(cs_ssl *s, const struct iovec *iov, int n);

/* Send close_notify (best effort, never blocks) and free. */
void cs_tls_close(cs_ssl *s, int notify);

/* Facts for the ASGI tls extension and the WSGI environ. */
int cs_tls_version(cs_ssl *s);             /* 0x0303, 0x0304 */
int cs_tls_cipher(cs_ssl *s);              /* IANA id */
const char *cs_tls_server_pem(cs_ssl *s);  /* NULL if unknown */
/* The peer's chain, leaf first: the i-th certificate as PEM (malloc'd, *n
 * its length), NULL past the end. */
char *cs_tls_peer_pem(cs_ssl *s, int i, size_t *n);
/* The client certificate's subject as RFC 4514 text (malloc'd), or NULL. */
char *cs_tls_peer_name(cs_ssl *s);

#endif
