/* h2.h - HTTP/2 connections (RFC 9113) with libnghttp2.
 *
 * A connection that negotiated h2 (ALPN over TLS) or opened with the
 * client preface (h2c with prior knowledge) hands its bytes to an h2
 * session here.  Every stream becomes a cs_req dispatched to the worker's
 * handler exactly like an HTTP/1.1 request (request.h); conn.c keeps the
 * socket, TLS and the output queue. */
#ifndef CORSAC_H2_H
#define CORSAC_H2_H

#include <stddef.h>
#include <stdint.h>

#include "worker.h"

typedef struct cs_h2 cs_h2;

/* The client preface, and whether buf (n bytes) starts with it (1), could
 * still (0 while n < 24), or cannot (-1). */
#define CS_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
int cs_h2_is_preface(const char *buf, size_t n);

/* Start a session on c, feeding `in` (bytes already read, preface first).
 * NULL on failure (logged). */
cs_h2 *cs_h2_new(cs_conn *c, const char *in, size_t n);

/* Socket events (loop thread): read, feed, run streams, write.  0 to go on,
 * -1 when the connection should be closed now. */
int cs_h2_io(cs_h2 *h, uint32_t events);

/* Timeouts and graceful stop (GOAWAY), from the worker's sweep.  -1: close. */
int cs_h2_sweep(cs_h2 *h, uint64_t now, int stopping);

/* The connection is going away: cancel the streams whose apps still run. */
void cs_h2_free(cs_h2 *h);

#endif
