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

#endif
