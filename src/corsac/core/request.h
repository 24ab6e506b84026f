/* request.h - the protocol-independent request.
 *
 * Every protocol (HTTP/1.1 in conn.c, HTTP/2 in h2.c) produces a cs_req and
 * every handler (the WSGI and ASGI bridges; static files later) consumes it
 * through cs_req_ops, never knowing which protocol is underneath (H2O's
 * h2o_req_t idea).  WSGI handlers run in "app context": on the I/O thread
 * with --threads 1, or on a pool thread; read and send may block there (they
 * release the GIL through the worker's hooks while they wait).  The ASGI
 * handler never blocks: it uses body() and the MAY_SUSPEND protocol, and a
 * request whose app task outlives the handler call ends with done(). */
#ifndef CORSAC_REQUEST_H
#define CORSAC_REQUEST_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "parser.h"

typedef struct cs_req cs_req;

/* A response head as the handler hands it over: already validated (names are
 * tokens, values field text, no CR/LF/NUL).  Framing fields are not in
 * `headers`: the protocol writes them from content_length. */
typedef struct {
    int status;
    const char *reason;
    size_t reason_len;
    const cs_header *headers;
    size_t num_headers;
    int64_t content_length;     /* -1: unknown, the protocol picks the framing */
    unsigned app_close : 1;     /* the app asked for Connection: close */
    unsigned has_server : 1;    /* the app set Server: do not add ours */
    unsigned has_date : 1;      /* the app set Date: do not add ours */
} cs_resp_head;

typedef struct {
    /* Read up to n body bytes (blocking).  >0 bytes, 0 at the end of the body,
     * -1 on failure with req->body_error set. */
    ssize_t (*read)(cs_req *r, char *buf, size_t n);
    /* Send body bytes, preceded by `head` on the first call (NULL after).
     * flags: CS_SEND_FIN ends the response; CS_SEND_MAY_SUSPEND says the
     * handler can stop producing and be resumed.  Returns 0; -1 if the client
     * is gone; 1 (only with MAY_SUSPEND) when the bytes were queued but the
     * client is behind: the handler should set r->suspended and return, and
     * the protocol calls the worker's resume hook once the queue drains. */
    int (*send)(cs_req *r, const cs_resp_head *head, const struct iovec *iov, int iovcnt, int flags);
    /* Like send, for len bytes of fd from off (flags: CS_SEND_FIN ends the
     * response).  Takes ownership of fd. */
    int (*sendfile)(cs_req *r, const cs_resp_head *head, int fd, off_t off, uint64_t len, int flags);
    /* The response cannot be completed: drop the connection. */
    void (*abort)(cs_req *r);
    /* Non-blocking body access: 1 with the next decoded bytes in *p, *n
     * (valid until the next call; *more says whether the body goes on), 0 at
     * the end of the body, -1 on failure (body_error set), CS_AGAIN when
     * nothing is buffered: the protocol calls the worker's resume hook when
     * that changes. */
    int (*body)(cs_req *r, const char **p, size_t *n, int *more);
    /* End a response whose head asked for trailers: the last chunk carries
     * these fields when the client accepts trailers (te_trailers), otherwise
     * they are dropped. */
    int (*trailers)(cs_req *r, const cs_header *fields, size_t n);
    /* A handler that returned with `suspended` set has finished (response
     * complete, failed or aborted): the protocol moves on to the next request. */
    void (*done)(cs_req *r);

    /* WebSocket sessions (requests with `websocket` set; async handlers).
     * Accept: answer 101 with the app's subprotocol (NULL: none) and extra
     * fields; the connection speaks WebSocket from then on, and incoming
     * messages reach the worker's ws_message hook.  0, or -1 if the client
     * is gone. */
    int (*ws_accept)(cs_req *r, const char *subprotocol, size_t sp_len, const cs_header *extra, size_t n);
    /* One message (CS_WS_TEXT or CS_WS_BINARY): 0 sent or queued, 1 queued
     * but the client is behind (as send: set blocked, the resume hook comes
     * once it drains), -1 the session is closed. */
    int (*ws_send)(cs_req *r, int opcode, const char *p, size_t n);
    /* Start the closing handshake with this code and reason. */
    int (*ws_close)(cs_req *r, int code, const char *reason, size_t n);
    /* Stop (1) or resume (0) reading messages: the handler's queue is full. */
    void (*ws_pause)(cs_req *r, int paused);
} cs_req_ops;

enum { CS_SEND_FIN = 1, CS_SEND_MAY_SUSPEND = 2, CS_SEND_TRAILERS = 4 /* head: end with trailers */ };
enum { CS_AGAIN = 2 };

/* Why reading the body failed: the status a response should carry. */
enum { CS_BODY_OK = 0, CS_BODY_GONE = 499 /* client disconnected */ };

/* method, target, path, query and headers point into the protocol's input
 * buffer: they are valid until the handler's first ops->read. */
struct cs_req {
    const cs_req_ops *ops;
    const char *method;   size_t method_len;
    const char *target;   size_t target_len;
    const char *path;     size_t path_len;     /* percent-encoded; empty means "/" */
    const char *query;    size_t query_len;
    const cs_header *headers;
    size_t num_headers;
    const char *protocol;                      /* "HTTP/1.1", "HTTP/1.0", "HTTP/2" */
    const char *scheme;                        /* "http" or "https" */
    const char *server_name, *server_port;
    const char *peer_addr;                     /* "" for unix sockets */
    int peer_port;
    int64_t content_length;                    /* -1 chunked; 0 when no body */
    int has_body;
    int body_error;                            /* 400, 408, 413 or CS_BODY_GONE */
    unsigned head_only : 1;                    /* HEAD: no body bytes go out */
    unsigned started : 1;                      /* head sent: status can no longer change */
    unsigned suspended : 1;                    /* handler yielded; resume when the client catches up */
    unsigned blocked : 1;                      /* send returned 1: output above the high mark */
    unsigned te_trailers : 1;                  /* the client sent "TE: trailers" */
    unsigned is_unix : 1;                      /* over a unix socket: no peer address */
    unsigned expired : 1;                      /* dropped for --request-timeout (async handlers) */
    unsigned websocket : 1;                    /* a valid WebSocket handshake (ASGI, --ws) */
    int ws_code;                               /* when the cancel hook runs: the close code, */
    const char *ws_reason;                     /* ... and reason (valid during the hook) */
    size_t ws_reason_len;
    void *bridge;                              /* handler state for this request */
    struct ssl_st *tls;                        /* the TLS session (tls.h), NULL on plaintext */
};

#endif
