/* worker.h - one worker process: the I/O loop, its listeners, its
 * connections and (with --threads > 1) the app thread pool.
 *
 * The worker state is the one place besides the arbiter that holds
 * process-wide state.  conn.c reads the settings and the hooks from here. */
#ifndef CORSAC_WORKER_H
#define CORSAC_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "arbiter.h"
#include "config.h"
#include "loop.h"
#include "parser.h"
#include "request.h"
#include "sock.h"
#include "tls.h"

typedef struct cs_conn cs_conn;
typedef struct cs_worker cs_worker;

/* Handler called in app context for every complete request. */
typedef void cs_handler_fn(cs_req *req, void *data);

typedef struct {
    cs_io io;
    cs_listener *l;
    cs_worker *w;
    int own;                        /* this worker's own SO_REUSEPORT socket */
} cs_listen_io;

/* The request a handler thread is running, for --request-timeout.  The lock
 * orders the watchdog's 504 against the handler's first byte of response. */
typedef struct {
    pthread_mutex_t mu;
    cs_conn *conn;                  /* NULL when idle */
    uint64_t started;
} cs_inflight;

struct cs_worker {
    cs_loop *loop;
    const cs_config *cfg;
    cs_limits limits;
    size_t max_head;                /* largest head the limits allow */
    uint64_t keepalive_ms, header_ms, body_ms, graceful_ms;
    uint64_t body_limit;            /* 0: none */
    int ws;                         /* WebSocket upgrades go to the handler */
    int ws_deflate;
    uint64_t ws_max_size, ws_ping_ms, ws_pong_ms;
    unsigned char *scratch;         /* WebSocket reads land here (loop thread) */
    cs_listen_io *lio;
    int nlisteners;
    int threads;                    /* 1: handlers run inline on the loop thread */
    cs_tls *tls;                    /* TLS on every listener, or NULL */
    int async;                      /* ASGI: handlers never block; app tasks outlive them */

    cs_conn *conns;                 /* every open connection (loop thread only) */
    size_t nconns;
    uint64_t accept_paused_until;   /* after EMFILE: resume accepting then */

    cs_slot *slot;                  /* heartbeat and state, read by the arbiter */
    uint64_t timeout_ms;            /* heartbeat stops when a handler runs longer */
    uint64_t max_requests;          /* 0: no limit (jitter applied already) */
    atomic_uint_fast64_t served;
    _Atomic uint64_t *busy_since;   /* per pool thread: when its handler started, 0 idle */
    atomic_int next_thread;

    uint64_t request_ms;            /* --request-timeout, 0: off */
    cs_inflight *inflight;          /* one per handler thread when request_ms */
    int ninflight;
    pthread_t watchdog;
    atomic_int watchdog_exit;
    atomic_int retiring;            /* asked the arbiter for a replacement: stop accepting */

    atomic_int stopping;            /* graceful stop requested */
    int quitting;                   /* fast stop */
    uint64_t stop_deadline;

    cs_handler_fn *handler;
    /* continue a suspended handler (inline WSGI); for async handlers: the
     * body, the output queue or the client changed, look again */
    cs_handler_fn *resume;
    cs_handler_fn *cancel;          /* drop a suspended handler: its client is gone */
    /* a WebSocket message for an accepted session (loop thread) */
    void (*ws_message)(cs_req *r, void *data, int opcode, const char *p, size_t n);
    void *handler_data;
    /* async: run the host event loop until the worker loop stops (instead of
     * cs_loop_run); the worker's epoll fd is to be watched through it */
    int (*drive)(cs_worker *w);
    /* Take and drop the GIL around a handler the loop thread runs itself
     * while a pool serves HTTP/1.1 (HTTP/2 streams run inline); NULL when
     * the loop thread already holds it. */
    void *(*app_enter)(void);
    void (*app_leave)(void *token);
    /* Release and retake the GIL around blocking waits in app context. */
    void *(*unlock)(void);
    void (*relock)(void *token);

    /* thread pool (threads > 1) */
    pthread_t *pool;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cs_conn *jobs_head, *jobs_tail; /* ready requests waiting for a thread */
    cs_conn *done;                  /* handed back to the loop */
    int pool_exit;
    int busy;                       /* pool threads inside a handler */
    cs_io wake;                     /* eventfd: pool -> loop */
    cs_io sig;                      /* self-pipe: signal handler -> loop */
};

/* Serve until stopped by SIGTERM/SIGINT (graceful) or SIGQUIT.  Returns the
 * process exit code.  Called with the GIL held; returns with it held. */
int cs_worker_run(cs_worker *w);

/* Count a finished request; past --max-requests ask the arbiter for a
 * replacement (any thread). */
void cs_worker_request_done(cs_worker *w);

/* The in-flight record of the calling handler thread (request_ms set). */
cs_inflight *cs_worker_inflight(cs_worker *w);

/* Ask the arbiter for a replacement and stop taking new connections. */
void cs_worker_retire(cs_worker *w, const char *why);

/* Queue a ready connection for the pool (loop thread). */
void cs_worker_submit(cs_worker *w, cs_conn *c);

/* Hand a connection back to the loop through the done list, from a pool
 * thread or (async) from an app task, which must not run the next request
 * itself. */
void cs_worker_hand_back(cs_worker *w, cs_conn *c);

#endif
