/* conn.h - an HTTP/1.1 connection: read, parse, frame bodies, dispatch to
 * the handler, write responses, keep-alive, timeouts and lingering close.
 *
 * Ownership: the loop thread owns a connection except while a pool thread
 * runs its handler (c->in_pool); only the loop thread frees connections. */
#ifndef CORSAC_CONN_H
#define CORSAC_CONN_H

#include "worker.h"

/* Accept every pending connection on a listener (loop thread). */
void cs_conn_accept(cs_worker *w, cs_listen_io *lio);

/* Run the handler for the ready request, and for any further pipelined
 * requests already buffered (app context: loop thread or a pool thread). */
void cs_conn_run(cs_conn *c);

/* Take a connection back from the pool and wait for its next event (loop). */
void cs_conn_resume(cs_conn *c);

/* Timeouts and graceful stop, called periodically by the loop. */
void cs_conn_sweep(cs_worker *w);

/* --request-timeout hit (watchdog thread, inflight lock held): answer 504
 * if nothing was sent yet, then cut the connection off from the handler. */
void cs_conn_timed_out(cs_conn *c, uint64_t ran_ms);

/* Close every connection at once (the worker is exiting). */
void cs_conn_close_all(cs_worker *w);

/* Pool queue link, used by the worker's job and done lists. */
cs_conn **cs_conn_qnext(cs_conn *c);

/* ---- for h2.c: the connection as a byte transport (loop thread, or an
 * inline handler on it) ---- */
ssize_t cs_conn_recv(cs_conn *c, void *buf, size_t n);     /* plaintext or TLS; -1 EAGAIN */
int cs_conn_send(cs_conn *c, const void *p, size_t n);     /* write now or queue; -1 broken */
int cs_conn_flush(cs_conn *c);                             /* 1 drained, 0 would block, -1 failed */
size_t cs_conn_queued(const cs_conn *c);
int cs_conn_events(cs_conn *c, uint32_t ev);               /* watch the socket for ev */
void cs_conn_kick(cs_conn *c);                             /* come back to cs_h2_io soon */
/* Wait for the socket with the GIL released: 1 ready, 0 timeout, -1 error. */
int cs_conn_wait(cs_conn *c, short events, uint64_t ms);
void cs_conn_fill_req(cs_conn *c, cs_req *r);              /* scheme, server, peer, TLS */
cs_worker *cs_conn_worker(cs_conn *c);
const char *cs_conn_peer(const cs_conn *c);
unsigned char *cs_conn_scratch(cs_conn *c, size_t *n);     /* the worker's 64 KiB read buffer */

#endif
