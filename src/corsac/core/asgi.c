/* asgi.c - ASGI bridge: scope, receive/send, awaitables, app tasks, lifespan.
 *
 * One request is one Cycle.  The Cycle is also the coroutine its asyncio
 * Task runs: the handler creates the Task (so asyncio.current_task(),
 * contextvars and cancellation behave as under any asyncio server), then
 * steps the app coroutine itself at once, inside the Task's context.  An app
 * that never waits (the common case: send() completes in the socket buffer,
 * the body is already read) is done before the handler returns, and the
 * Task's own first step just finishes it.  An app that does wait hands the
 * future it yielded to the Task, which carries on from there.
 *
 * receive() and send() return Ready objects: already-done awaitables that
 * carry the message (no Future, no loop iteration), or a wrapper around a
 * Future when the body has not arrived or the client reads slowly. */
#include "asgi.h"
#include "tls.h"
#include "log.h"
#include "pyerr.h"
#include "resp.h"
#include "ws.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Interned keys and constant values. */
enum {
    K_TYPE, K_ASGI, K_HTTP_VERSION, K_METHOD, K_SCHEME, K_PATH, K_RAW_PATH, K_QUERY_STRING, K_ROOT_PATH,
    K_HEADERS, K_CLIENT, K_SERVER, K_EXTENSIONS, K_STATE, K_BODY, K_MORE_BODY, K_STATUS, K_TRAILERS,
    K_MESSAGE, K_FILE, K_OFFSET, K_COUNT, K_MORE_TRAILERS, K_VERSION, K_SPEC_VERSION,
    K_TEXT, K_BYTES, K_CODE, K_REASON, K_SUBPROTOCOLS, K_SUBPROTOCOL,
    V_HTTP, V_HTTP_REQUEST, V_HTTP_DISCONNECT, V_11, V_10, V_LIFESPAN, V_STARTUP, V_SHUTDOWN,
    V_WEBSOCKET, V_WS, V_WSS, V_WS_CONNECT, V_WS_RECEIVE, V_WS_DISCONNECT, V_2, V_HTTPS, K_TLS, NKEYS
};
static const char *const key_names[NKEYS] = {
    "type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path",
    "headers", "client", "server", "extensions", "state", "body", "more_body", "status", "trailers",
    "message", "file", "offset", "count", "more_trailers", "version", "spec_version",
    "text", "bytes", "code", "reason", "subprotocols", "subprotocol",
    "http", "http.request", "http.disconnect", "1.1", "1.0", "lifespan", "lifespan.startup", "lifespan.shutdown",
    "websocket", "ws", "wss", "websocket.connect", "websocket.receive", "websocket.disconnect", "2", "https",
    "tls"};

static const char *const methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", NULL};
#define NMETHODS 7
#define HCACHE 512              /* lowercased request field names, as bytes */
#define HCACHE_NAME 40
#define MAX_SERVERS 16

typedef struct Lifespan Lifespan;

struct cs_asgi {
    PyObject *app;
    PyObject *loop;
    const char *loop_name;
    PyObject *create_future;    /* bound loop.create_future */
    PyObject *task_type;        /* asyncio.Task */
    PyObject *task_kw;          /* ("loop", "context", "name") */
    PyObject *task_name;        /* one name for all: 3.11 formats "Task-N" per task otherwise */
    PyObject *enter_task, *leave_task;
    PyObject *keys[NKEYS];
    PyObject *methods[NMETHODS];
    PyObject *template;         /* constant part of every scope */
    PyObject *ext_trailers;     /* extensions dict with http.response.trailers */
    PyObject *ext_ws;           /* extensions dict of WebSocket scopes */
    PyObject *tls_server;       /* the server certificate as PEM text, made once */
    PyObject *tls_keys[6];      /* the tls extension's keys, interned */
    int ws;                     /* --ws */
    PyObject *asgi_info;
    PyObject *state;            /* lifespan state, NULL when lifespan did not run */
    PyObject *done_none;        /* a Ready that returns None */
    PyObject *cancelled_error;  /* asyncio.CancelledError */
    PyObject *poll_cb;          /* the loop's reader callback */
    PyObject *root_path;        /* str */
    const char *root;           /* its UTF-8 */
    size_t root_len;
    int lifespan_mode;
    double graceful;
    long limit;                 /* --limit-concurrency, 0: none */
    long running;               /* app tasks that outlived their handler call */
    Lifespan *ls;
    cs_worker *w;
    struct {
        const char *name;       /* identifies the listener */
        PyObject *tuple;
    } servers[MAX_SERVERS];
    int nservers;
    int hcount;
    struct {
        uint32_t hash;
        uint32_t len;
        char name[HCACHE_NAME];
        PyObject *bytes;
    } hcache[HCACHE];
};

/* Raised by send() once the client has gone (spec 2.4: an OSError). */
static PyObject *ClientDisconnected;

/* ---- small helpers -------------------------------------------------------- */

/* Is the str `t` equal to the ASCII literal? */
static int type_is(PyObject *t, const char *lit, size_t n)
{
    return PyUnicode_IS_COMPACT_ASCII(t) && (size_t)PyUnicode_GET_LENGTH(t) == n &&
           memcmp(PyUnicode_DATA(t), lit, n) == 0;
}
#define TYPE_IS(t, lit) type_is((t), (lit), sizeof(lit) - 1)

static int set_steal(PyObject *d, PyObject *k, PyObject *v)
{
    if (!v)
        return -1;
    int rc = PyDict_SetItem(d, k, v);
    Py_DECREF(v);
    return rc;
}

/* A fresh message dict {"type": type, ...pairs}. */
static PyObject *message(cs_asgi *a, int type)
{
    PyObject *d = PyDict_New();
    if (d && PyDict_SetItem(d, a->keys[K_TYPE], a->keys[type]) < 0)
        Py_CLEAR(d);
    return d;
}

static PyObject *disconnect_msg(cs_asgi *a) { return message(a, V_HTTP_DISCONNECT); }

static int future_done(PyObject *fut)
{
    PyObject *r = PyObject_CallMethod(fut, "done", NULL);
    int done = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (done < 0)
        PyErr_Clear();
    return done != 0;
}

/* Resolve a pending future (a stolen result); a cancelled one is left alone. */
static void resolve(PyObject **futp, PyObject *result, PyObject *exc)
{
    PyObject *fut = *futp;
    *futp = NULL;
    if (fut && !future_done(fut)) {
        PyObject *r = exc ? PyObject_CallMethod(fut, "set_exception", "O", exc)
                          : PyObject_CallMethod(fut, "set_result", "O", result ? result : Py_None);
        if (!r)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    Py_XDECREF(fut);
    Py_XDECREF(result);
}

/* ---- Ready: the awaitable receive() and send() return --------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *value;            /* the result, when no future */
    PyObject *fut;              /* else: wait for this */
    int yielded;
} Ready;

static PyTypeObject ReadyType;

static PyObject *ready_value(PyObject *value)   /* steals value */
{
    if (!value)
        return NULL;
    Ready *r = PyObject_GC_New(Ready, &ReadyType);
    if (!r) {
        Py_DECREF(value);
        return NULL;
    }
    r->value = value;
    r->fut = NULL;
    r->yielded = 0;
    PyObject_GC_Track(r);
    return (PyObject *)r;
}

static PyObject *ready_future(PyObject *fut)    /* new reference to fut kept */
{
    Ready *r = PyObject_GC_New(Ready, &ReadyType);
    if (!r)
        return NULL;
    r->value = NULL;
    r->fut = Py_NewRef(fut);
    r->yielded = 0;
    PyObject_GC_Track(r);
    return (PyObject *)r;
}

static PySendResult ready_send(PyObject *op, PyObject *arg, PyObject **res)
{
    Ready *r = (Ready *)op;
    (void)arg;
    if (!r->fut) {
        *res = Py_NewRef(r->value ? r->value : Py_None);
        return PYGEN_RETURN;
    }
    if (!r->yielded) {
        /* the Task protocol: a yielded future with this flag set is waited on */
        r->yielded = 1;
        if (PyObject_SetAttrString(r->fut, "_asyncio_future_blocking", Py_True) < 0) {
            *res = NULL;
            return PYGEN_ERROR;
        }
        *res = Py_NewRef(r->fut);
        return PYGEN_NEXT;
    }
    *res = PyObject_CallMethod(r->fut, "result", NULL);
    return *res ? PYGEN_RETURN : PYGEN_ERROR;
}

static PyObject *ready_iternext(PyObject *op)
{
    PyObject *res;
    PySendResult st = ready_send(op, Py_None, &res);
    if (st == PYGEN_NEXT)
        return res;
    if (st == PYGEN_RETURN) {
        if (res != Py_None) {
            PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, res);
            if (e) {
                PyErr_SetObject(PyExc_StopIteration, e);
                Py_DECREF(e);
            }
        }
        Py_DECREF(res);
    }
    return NULL;
}

static PyObject *ready_send_method(PyObject *op, PyObject *arg)
{
    (void)arg;
    return ready_iternext(op);
}

static PyObject *ready_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    (void)op;
    if (nargs < 1)
        return PyErr_Format(PyExc_TypeError, "throw() needs an exception");
    PyObject *e = args[0];
    if (PyExceptionInstance_Check(e))
        PyErr_SetObject((PyObject *)Py_TYPE(e), e);
    else
        PyErr_SetObject(e, nargs > 1 ? args[1] : NULL);
    return NULL;
}

static PyObject *ready_close(PyObject *op, PyObject *unused)
{
    (void)op;
    (void)unused;
    Py_RETURN_NONE;
}

static PyObject *self_await(PyObject *op) { return Py_NewRef(op); }

static int ready_traverse(Ready *r, visitproc visit, void *arg)
{
    Py_VISIT(r->value);
    Py_VISIT(r->fut);
    return 0;
}

static int ready_clear(Ready *r)
{
    Py_CLEAR(r->value);
    Py_CLEAR(r->fut);
    return 0;
}

static void ready_dealloc(Ready *r)
{
    PyObject_GC_UnTrack(r);
    ready_clear(r);
    PyObject_GC_Del(r);
}

static PyAsyncMethods ready_async = {.am_await = self_await, .am_send = ready_send};
static PyMethodDef ready_methods[] = {
    {"send", ready_send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))ready_throw, METH_FASTCALL, NULL},
    {"close", ready_close, METH_NOARGS, NULL},
    {0},
};
static PyTypeObject ReadyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "corsac.ASGIReady",
    .tp_basicsize = sizeof(Ready),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "awaitable returned by receive() and send()",
    .tp_as_async = &ready_async,
    .tp_iter = self_await,
    .tp_iternext = ready_iternext,
    .tp_methods = ready_methods,
    .tp_traverse = (traverseproc)ready_traverse,
    .tp_clear = (inquiry)ready_clear,
    .tp_dealloc = (destructor)ready_dealloc,
};

/* ---- Chan: receive and send callables ------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vc;
    PyObject *owner;            /* Cycle or Lifespan */
} Chan;

static PyTypeObject ChanType;

static PyObject *chan_new(PyObject *owner, vectorcallfunc vc)
{
    Chan *c = PyObject_GC_New(Chan, &ChanType);
    if (!c)
        return NULL;
    c->vc = vc;
    c->owner = Py_NewRef(owner);
    PyObject_GC_Track(c);
    return (PyObject *)c;
}

static int chan_traverse(Chan *c, visitproc visit, void *arg)
{
    Py_VISIT(c->owner);
    return 0;
}

static int chan_clear(Chan *c)
{
    Py_CLEAR(c->owner);
    return 0;
}

static void chan_dealloc(Chan *c)
{
    PyObject_GC_UnTrack(c);
    chan_clear(c);
    PyObject_GC_Del(c);
}

static PyTypeObject ChanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "corsac.ASGIChannel",
    .tp_basicsize = sizeof(Chan),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "an ASGI receive or send callable",
    .tp_vectorcall_offset = offsetof(Chan, vc),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)chan_traverse,
    .tp_clear = (inquiry)chan_clear,
    .tp_dealloc = (destructor)chan_dealloc,
};

/* ---- Cycle: one HTTP request ---------------------------------------------- */

enum { RESP_NONE, RESP_STARTED, RESP_BODY, RESP_TRAILERS, RESP_DONE };
/* A WebSocket before and after its handshake: connect not yet received,
 * received (accept, close or a denial response may follow), accepted,
 * closed by the app, refused with an HTTP response. */
enum { WS_CONNECTING, WS_HANDSHAKE, WS_OPEN, WS_CLOSED, WS_REFUSED };
#define WS_QUEUE_HIGH 16            /* messages held for the app before the connection stops reading, */
#define WS_QUEUE_LOW 4
#define WS_QUEUE_HIGH_BYTES (1 << 20)  /* ... or this much of them */
#define WS_QUEUE_LOW_BYTES (256 << 10)

typedef struct {
    PyObject_HEAD
    cs_asgi *a;
    cs_req *req;                /* NULL once finished or the client is gone */
    PyObject *iter;             /* the app's awaitable, as an iterator */
    PyObject *first;            /* what the eager step yielded, for the Task */
    PyObject *recv_fut, *send_fut;
    PyObject *trailer_list;     /* trailers collected until more_trailers is false */
    PyObject *task;             /* while suspended: to cancel it on --request-timeout */
    int resp;
    int trailers;               /* start asked for trailers */
    int body_done;              /* the last http.request event went out */
    int body_error;             /* the request body failed: answer this */
    int gone;                   /* the client disconnected */
    int finished;
    int suspended;              /* outlived its handler call (counted in running) */
    int failed;                 /* the app raised */
    int ws;                     /* a WebSocket session rather than an HTTP request */
    int ws_state;               /* WS_* */
    int ws_paused;              /* asked the connection to stop reading */
    int ws_code;                /* close code, once the session is over */
    PyObject *ws_reason;        /* ... and reason (str) */
    PyObject *ws_queue;         /* messages the app has not received yet */
    Py_ssize_t ws_head;         /* the next one in ws_queue */
    Py_ssize_t ws_bytes;        /* their payload size */
    cs_resp_head head;
    char *store;                /* the head's bytes */
    cs_header *hdrs;
} Cycle;

static PyTypeObject CycleType;

static void cycle_release_head(Cycle *cy)
{
    PyMem_Free(cy->store);
    PyMem_Free(cy->hdrs);
    cy->store = NULL;
    cy->hdrs = NULL;
}

/* A plain response of ours (an app failure before anything was sent). */
static void send_plain(cs_req *r, int status, const char *reason, int close)
{
    static const char ctype[] = "text/plain; charset=utf-8";
    char body[64];
    int n = snprintf(body, sizeof(body), "%s\n", reason);
    cs_header h = {.name = "Content-Type", .name_len = 12, .value = ctype, .value_len = sizeof(ctype) - 1};
    cs_resp_head head = {.status = status, .reason = reason, .reason_len = strlen(reason), .headers = &h,
                         .num_headers = 1, .content_length = n, .app_close = close};
    struct iovec v = {body, (size_t)n};
    r->ops->send(r, &head, &v, 1, CS_SEND_FIN);
}

/* The app is done (ok, failed or cancelled): complete or abort the response
 * and, for a task that outlived its handler call, hand the connection back. */
static void cycle_finish(Cycle *cy)
{
    cs_asgi *a = cy->a;
    cs_req *r = cy->req;
    cy->finished = 1;
    Py_CLEAR(cy->iter);
    Py_CLEAR(cy->first);
    Py_CLEAR(cy->task);
    resolve(&cy->recv_fut, disconnect_msg(a), NULL);
    resolve(&cy->send_fut, NULL, NULL);
    PyErr_Clear();
    if (!r)
        return;
    if (cy->ws && cy->ws_state == WS_OPEN) {
        /* returned (or raised) with the WebSocket open: close it for the app */
        cy->ws_state = WS_CLOSED;
        r->ops->ws_close(r, cy->failed ? 1011 : 1000, "", 0);
    }
    if (cy->resp != RESP_DONE) {
        if (!r->started) {
            if (cy->body_error && cy->body_error != CS_BODY_GONE)
                send_plain(r, cy->body_error, cy->body_error == 413   ? "Content Too Large"
                                              : cy->body_error == 408 ? "Request Timeout"
                                                                      : "Bad Request",
                           1);
            else
                send_plain(r, 500, "Internal Server Error", 0);
        } else {
            r->ops->abort(r);
        }
    }
    cycle_release_head(cy);
    cy->req = NULL;
    r->bridge = NULL;
    if (cy->suspended) {
        cy->suspended = 0;
        a->running--;
        r->ops->done(r);
    }
    Py_DECREF(cy);              /* the request's reference */
}

/* After the app coroutine moved: finish on return or error.  A cancellation
 * propagates (the Task ends cancelled); other errors are logged here and the
 * Task ends normally, so asyncio does not report them a second time. */
static PySendResult cycle_after(Cycle *cy, PySendResult st, PyObject **res)
{
    if (st == PYGEN_NEXT)
        return st;
    if (st == PYGEN_RETURN) {
        if (*res != Py_None && cy->req && cy->resp == RESP_NONE)
            cs_log(CS_LOG_WARNING, "ASGI app returned a value (%s); ignored", Py_TYPE(*res)->tp_name);
        Py_DECREF(*res);
        if (cy->req && cy->resp == RESP_NONE && !cy->gone)
            cs_log(CS_LOG_ERROR, cy->ws ? "ASGI app returned without accepting or refusing the WebSocket"
                                        : "ASGI app returned without starting a response");
        else if (cy->req && cy->resp != RESP_DONE && !cy->gone)
            cs_log(CS_LOG_ERROR, "ASGI app returned without completing the response");
        Py_INCREF(cy);
        cycle_finish(cy);
        Py_DECREF(cy);
        *res = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    PyObject *exc = cs_take_exception();
    int cancelled = exc && PyObject_IsInstance(exc, cy->a->cancelled_error) > 0;
    cy->failed = 1;
    if (cancelled) {
        Py_INCREF(cy);
        cycle_finish(cy);
        Py_DECREF(cy);
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        *res = NULL;
        return PYGEN_ERROR;
    }
    if (cy->gone && exc) {
        /* the client left, and the app learnt it from send() (directly or
         * re-raised by its framework): one line, not a traceback */
        if (PyObject_IsInstance(exc, ClientDisconnected) <= 0)
            cs_log(CS_LOG_INFO, "ASGI app raised %s after its client disconnected", Py_TYPE(exc)->tp_name);
        Py_DECREF(exc);
        PyErr_Clear();
    } else {
        cs_log_exception(CS_LOG_ERROR, exc, "Exception in ASGI application");
    }
    Py_INCREF(cy);
    cycle_finish(cy);
    Py_DECREF(cy);
    *res = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static PySendResult cycle_send(PyObject *op, PyObject *arg, PyObject **res)
{
    Cycle *cy = (Cycle *)op;
    if (cy->first) {            /* the Task's first step: wait on what the eager step met */
        *res = cy->first;
        cy->first = NULL;
        return PYGEN_NEXT;
    }
    if (cy->finished || !cy->iter) {
        *res = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    return cycle_after(cy, PyIter_Send(cy->iter, arg, res), res);
}

static PyObject *cycle_iternext(PyObject *op)
{
    PyObject *res;
    PySendResult st = cycle_send(op, Py_None, &res);
    if (st == PYGEN_NEXT)
        return res;
    if (st == PYGEN_RETURN)
        Py_DECREF(res);
    return NULL;
}

static PyObject *cycle_send_method(PyObject *op, PyObject *arg)
{
    PyObject *res;
    PySendResult st = cycle_send(op, arg, &res);
    if (st == PYGEN_NEXT)
        return res;
    if (st == PYGEN_RETURN) {
        Py_DECREF(res);
        PyErr_SetNone(PyExc_StopIteration);
    }
    return NULL;
}

/* The Task throws in (cancellation): the coroutine gets it where it waits. */
static PyObject *cycle_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    Cycle *cy = (Cycle *)op;
    if (nargs < 1)
        return PyErr_Format(PyExc_TypeError, "throw() needs an exception");
    if (cy->first) {
        /* cancelled before the Task took over the eager step's future */
        PyObject *r = PyObject_CallMethod(cy->first, "cancel", NULL);
        if (!r)
            PyErr_Clear();
        Py_XDECREF(r);
        Py_CLEAR(cy->first);
    }
    if (cy->finished || !cy->iter)
        return ready_throw(op, args, nargs);
    PyObject *res = PyObject_CallMethod(cy->iter, "throw", "O", args[0]);
    PySendResult st;
    if (res)
        st = PYGEN_NEXT;
    else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        res = v ? PyObject_GetAttrString(v, "value") : Py_NewRef(Py_None);
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        st = res ? PYGEN_RETURN : PYGEN_ERROR;
    } else
        st = PYGEN_ERROR;
    st = cycle_after(cy, st, &res);
    if (st == PYGEN_NEXT)
        return res;
    if (st == PYGEN_RETURN) {
        Py_DECREF(res);
        PyErr_SetNone(PyExc_StopIteration);
    }
    return NULL;
}

static PyObject *cycle_close(PyObject *op, PyObject *unused)
{
    Cycle *cy = (Cycle *)op;
    (void)unused;
    if (cy->iter && !cy->finished) {
        PyObject *r = PyObject_CallMethod(cy->iter, "close", NULL);
        if (!r)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    Py_RETURN_NONE;
}

static int cycle_traverse(Cycle *cy, visitproc visit, void *arg)
{
    Py_VISIT(cy->ws_reason);
    Py_VISIT(cy->ws_queue);
    Py_VISIT(cy->iter);
    Py_VISIT(cy->first);
    Py_VISIT(cy->recv_fut);
    Py_VISIT(cy->send_fut);
    Py_VISIT(cy->trailer_list);
    Py_VISIT(cy->task);
    return 0;
}

static int cycle_clear(Cycle *cy)
{
    Py_CLEAR(cy->ws_reason);
    Py_CLEAR(cy->ws_queue);
    Py_CLEAR(cy->iter);
    Py_CLEAR(cy->first);
    Py_CLEAR(cy->recv_fut);
    Py_CLEAR(cy->send_fut);
    Py_CLEAR(cy->trailer_list);
    Py_CLEAR(cy->task);
    return 0;
}

static void cycle_dealloc(Cycle *cy)
{
    PyObject_GC_UnTrack(cy);
    cycle_clear(cy);
    cycle_release_head(cy);
    PyObject_GC_Del(cy);
}

static PyObject *cycle_name(PyObject *op, void *closure)
{
    (void)op;
    (void)closure;
    return PyUnicode_FromString("asgi_request");
}

static PyGetSetDef cycle_getset[] = {
    {"__name__", cycle_name, NULL, NULL, NULL},
    {"__qualname__", cycle_name, NULL, NULL, NULL},
    {0},
};

static PyAsyncMethods cycle_async = {.am_await = self_await, .am_send = cycle_send};
static PyMethodDef cycle_methods[] = {
    {"send", cycle_send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))cycle_throw, METH_FASTCALL, NULL},
    {"close", cycle_close, METH_NOARGS, NULL},
    {0},
};
static PyTypeObject CycleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "corsac.ASGIRequest",
    .tp_basicsize = sizeof(Cycle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "one ASGI HTTP request: the coroutine its Task runs",
    .tp_as_async = &cycle_async,
    .tp_iter = self_await,
    .tp_iternext = cycle_iternext,
    .tp_methods = cycle_methods,
    .tp_getset = cycle_getset,
    .tp_traverse = (traverseproc)cycle_traverse,
    .tp_clear = (inquiry)cycle_clear,
    .tp_dealloc = (destructor)cycle_dealloc,
};

/* ---- receive ---------------------------------------------------------------- */

/* The next event if there is one now; NULL with *again set when the app must
 * wait, NULL with an error set on failure. */
static PyObject *ws_try_receive(Cycle *cy, int *again);

static PyObject *try_receive(Cycle *cy, int *again)
{
    cs_asgi *a = cy->a;
    cs_req *r = cy->req;
    if (cy->ws)
        return ws_try_receive(cy, again);
    *again = 0;
    if (cy->gone || !r)
        return disconnect_msg(a);
    if (cy->body_done) {
        if (cy->resp == RESP_DONE)
            return disconnect_msg(a);
        *again = 1;             /* wait for the client to leave (or the response to end) */
        return NULL;
    }
    const char *p;
    size_t n;
    int more = 0;
    int rc = r->ops->body(r, &p, &n, &more);
    if (rc == CS_AGAIN) {
        *again = 1;
        return NULL;
    }
    if (rc < 0) {
        cy->body_done = 1;
        cy->body_error = r->body_error;
        if (r->body_error == CS_BODY_GONE)
            cy->gone = 1;
        return disconnect_msg(a);
    }
    PyObject *m = message(a, V_HTTP_REQUEST);
    if (!m)
        return NULL;
    if (set_steal(m, a->keys[K_BODY], PyBytes_FromStringAndSize(rc ? p : "", rc ? (Py_ssize_t)n : 0)) < 0 ||
        PyDict_SetItem(m, a->keys[K_MORE_BODY], rc && more ? Py_True : Py_False) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (!(rc && more))
        cy->body_done = 1;
    return m;
}

static PyObject *receive_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    Cycle *cy = (Cycle *)((Chan *)self)->owner;
    (void)args;
    if (PyVectorcall_NARGS(nargsf) || kw)
        return PyErr_Format(PyExc_TypeError, "receive() takes no arguments");
    if (cy->recv_fut) {
        if (!future_done(cy->recv_fut))
            return ready_future(cy->recv_fut);     /* a second waiter on the same event */
        Py_CLEAR(cy->recv_fut);                     /* cancelled by its waiter */
    }
    int again;
    PyObject *m = try_receive(cy, &again);
    if (m)
        return ready_value(m);
    if (!again)
        return NULL;
    PyObject *fut = PyObject_CallNoArgs(cy->a->create_future);
    if (!fut)
        return NULL;
    cy->recv_fut = fut;
    return ready_future(fut);
}

/* ---- send ------------------------------------------------------------------- */

static PyObject *bad_message(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *text = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (text) {
        cs_log(CS_LOG_WARNING, "ASGI app sent an invalid message: %s", PyUnicode_AsUTF8(text));
        PyErr_SetObject(PyExc_RuntimeError, text);
        Py_DECREF(text);
    }
    return NULL;
}

/* Bytes view of a header name or value (bytes or bytearray only). */
static int header_bytes(PyObject *o, const char **p, Py_ssize_t *n)
{
    if (PyBytes_Check(o)) {
        *p = PyBytes_AS_STRING(o);
        *n = PyBytes_GET_SIZE(o);
        return 0;
    }
    if (PyByteArray_Check(o)) {
        *p = PyByteArray_AS_STRING(o);
        *n = PyByteArray_GET_SIZE(o);
        return 0;
    }
    bad_message("header names and values must be bytes, got %R", o);
    return -1;
}

/* Validate a headers iterable into (name, value) pointer pairs held by the
 * returned list of 2-tuples-or-sequences (kept alive by the caller). */
static PyObject *header_items(PyObject *headers, Py_ssize_t *count, size_t *bytes)
{
    PyObject *seq = PySequence_Fast(headers, "headers must be an iterable of [name, value] pairs");
    if (!seq) {
        PyErr_Clear();
        return bad_message("headers must be an iterable of [name, value] pairs, got %R", headers);
    }
    Py_ssize_t nh = PySequence_Fast_GET_SIZE(seq);
    size_t need = 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PySequence_Check(pair) || PySequence_Size(pair) != 2) {
            PyErr_Clear();
            Py_DECREF(seq);
            return bad_message("a header must be a [name, value] pair, got %R", pair);
        }
        PyObject *nm = PySequence_GetItem(pair, 0), *vl = PySequence_GetItem(pair, 1);
        const char *np = NULL, *vp = NULL;
        Py_ssize_t nn = 0, vn = 0;
        int bad = !nm || !vl || header_bytes(nm, &np, &nn) < 0 || header_bytes(vl, &vp, &vn) < 0;
        if (!bad && !cs_field_name_ok(np, (size_t)nn)) {
            bad_message("invalid header name %R", nm);
            bad = 1;
        } else if (!bad && !cs_field_value_ok(vp, (size_t)vn)) {
            bad_message("invalid header value %R: control character", vl);
            bad = 1;
        }
        Py_XDECREF(nm);
        Py_XDECREF(vl);
        if (bad) {
            Py_DECREF(seq);
            return NULL;
        }
        need += (size_t)(nn + vn);
    }
    *count = nh;
    *bytes = need;
    return seq;
}

/* Pointers of a validated pair (the sequence items keep them alive). */
static void pair_view(PyObject *pair, const char **np, Py_ssize_t *nn, const char **vp, Py_ssize_t *vn)
{
    PyObject *nm = PySequence_GetItem(pair, 0), *vl = PySequence_GetItem(pair, 1);
    header_bytes(nm, np, nn);
    header_bytes(vl, vp, vn);
    /* items of a list/tuple pair are owned by it: borrowed views stay valid */
    Py_DECREF(nm);
    Py_DECREF(vl);
}

static PyObject *msg_get(PyObject *msg, int key, cs_asgi *a)
{
    PyObject *v = PyDict_GetItemWithError(msg, a->keys[key]);
    return v;                   /* borrowed; NULL without error when missing */
}

static PyObject *on_start(Cycle *cy, PyObject *msg)
{
    cs_asgi *a = cy->a;
    if (cy->resp != RESP_NONE)
        return bad_message("unexpected %R: the response has already started", a->keys[K_TYPE]);
    PyObject *st = msg_get(msg, K_STATUS, a);
    if (!st) {
        if (PyErr_Occurred())
            return NULL;
        return bad_message("http.response.start needs a status");
    }
    long status = PyLong_Check(st) ? PyLong_AsLong(st) : -1;
    if (status < 100 || status > 599) {
        PyErr_Clear();
        return bad_message("invalid status %R: expected an int from 100 to 599", st);
    }
    PyObject *headers = msg_get(msg, K_HEADERS, a);
    if (!headers && PyErr_Occurred())
        return NULL;
    Py_ssize_t nh = 0;
    size_t need = 0;
    PyObject *seq = NULL;
    if (headers && !(seq = header_items(headers, &nh, &need)))
        return NULL;
    PyObject *tr = msg_get(msg, K_TRAILERS, a);
    int trailers = tr ? PyObject_IsTrue(tr) : 0;
    if (trailers < 0) {
        Py_XDECREF(seq);
        return NULL;
    }
    cycle_release_head(cy);
    cy->store = PyMem_Malloc(need + 1);
    cy->hdrs = PyMem_Malloc(sizeof(cs_header) * (size_t)(nh + 1));
    if (!cy->store || !cy->hdrs) {
        Py_XDECREF(seq);
        return PyErr_NoMemory();
    }
    cs_resp_head *h = &cy->head;
    memset(h, 0, sizeof(*h));
    h->status = (int)status;
    h->content_length = -1;
    char *p = cy->store;
    size_t k = 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        const char *np = "", *vp = "";
        Py_ssize_t nn = 0, vn = 0;
        pair_view(PySequence_Fast_GET_ITEM(seq, i), &np, &nn, &vp, &vn);
        size_t vl = (size_t)vn;
        int kind = cs_resp_field(h, np, (size_t)nn, &vp, &vl);
        if (kind == CS_FIELD_BAD_LENGTH) {
            Py_DECREF(seq);
            return bad_message("invalid content-length header in %R", headers);
        }
        if (kind == CS_FIELD_DROP)
            continue;
        memcpy(p, np, (size_t)nn);
        cy->hdrs[k].name = p;
        cy->hdrs[k].name_len = (size_t)nn;
        p += nn;
        memcpy(p, vp, vl);
        cy->hdrs[k].value = p;
        cy->hdrs[k].value_len = vl;
        p += vl;
        k++;
    }
    Py_XDECREF(seq);
    h->headers = cy->hdrs;
    h->num_headers = k;
    h->reason = cs_status_reason(h->status);
    h->reason_len = strlen(h->reason);
    cy->trailers = trailers;
    cy->resp = RESP_STARTED;
    return Py_NewRef(a->done_none);
}

/* The response is complete: a receive() waiting for the end of the request
 * hears "disconnect" now (as the spec has it). */
static void response_done(Cycle *cy)
{
    cy->resp = RESP_DONE;
    if (cy->recv_fut && cy->body_done)
        resolve(&cy->recv_fut, disconnect_msg(cy->a), NULL);
}

/* After ops->send/sendfile: 0 done, 1 wait for the client, -1 gone. */
static PyObject *sent(Cycle *cy, int rc)
{
    if (rc < 0) {
        cy->gone = 1;
        PyErr_SetString(ClientDisconnected, "the client disconnected");
        return NULL;
    }
    if (rc == 1) {
        PyObject *fut = PyObject_CallNoArgs(cy->a->create_future);
        if (!fut)
            return NULL;
        Py_XSETREF(cy->send_fut, fut);
        return ready_future(fut);
    }
    return Py_NewRef(cy->a->done_none);
}

static PyObject *on_body(Cycle *cy, PyObject *msg)
{
    cs_asgi *a = cy->a;
    cs_req *r = cy->req;
    if (cy->resp == RESP_NONE)
        return bad_message("expected http.response.start before %R", a->keys[K_BODY]);
    if (cy->resp >= RESP_TRAILERS)
        return bad_message("unexpected http.response.body: the response %s",
                           cy->resp == RESP_DONE ? "is complete" : "waits for trailers");
    PyObject *body = msg_get(msg, K_BODY, a), *mb = msg_get(msg, K_MORE_BODY, a);
    if (PyErr_Occurred())
        return NULL;
    int more = mb ? PyObject_IsTrue(mb) : 0;
    if (more < 0)
        return NULL;
    Py_buffer view = {0};
    if (body && body != Py_None) {
        if (PyUnicode_Check(body) || PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            return bad_message("http.response.body needs bytes, got %R", (PyObject *)Py_TYPE(body));
        }
    }
    if (cy->gone || !r) {
        PyBuffer_Release(&view);
        return sent(cy, -1);
    }
    struct iovec v = {view.buf, (size_t)view.len};
    int flags = CS_SEND_MAY_SUSPEND | (more || cy->trailers ? 0 : CS_SEND_FIN);
    const cs_resp_head *h = NULL;
    if (cy->resp == RESP_STARTED) {
        h = &cy->head;
        if (cy->trailers)
            flags |= CS_SEND_TRAILERS;
    }
    int rc = r->ops->send(r, h, &v, view.len ? 1 : 0, flags);
    PyBuffer_Release(&view);
    cy->resp = RESP_BODY;
    if (!more) {
        if (cy->trailers)
            cy->resp = RESP_TRAILERS;
        else
            response_done(cy);
    }
    return sent(cy, rc);
}

/* pathsend and zerocopysend: the body is a file, sent with sendfile(2). */
static PyObject *on_file(Cycle *cy, PyObject *msg, int by_path)
{
    cs_asgi *a = cy->a;
    cs_req *r = cy->req;
    if (cy->resp == RESP_NONE || cy->resp >= RESP_TRAILERS || (by_path && cy->resp != RESP_STARTED))
        return bad_message("unexpected %R at this point of the response", a->keys[K_FILE]);
    int fd = -1, more = 0;
    off_t off = 0;
    uint64_t len = 0;
    struct stat st;
    if (by_path) {
        PyObject *path = msg_get(msg, K_PATH, a);
        if (!path || !PyUnicode_Check(path)) {
            if (PyErr_Occurred())
                return NULL;
            return bad_message("http.response.pathsend needs a str path, got %R", path ? path : Py_None);
        }
        PyObject *fs = PyUnicode_EncodeFSDefault(path);
        if (!fs)
            return NULL;
        fd = open(PyBytes_AS_STRING(fs), O_RDONLY | O_CLOEXEC);
        Py_DECREF(fs);
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            int e = fd < 0 ? errno : EISDIR;
            if (fd >= 0)
                close(fd);
            errno = e;
            return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        }
        len = (uint64_t)st.st_size;
    } else {
        PyObject *file = msg_get(msg, K_FILE, a), *o = msg_get(msg, K_OFFSET, a), *c = msg_get(msg, K_COUNT, a),
                 *mb = msg_get(msg, K_MORE_BODY, a);
        if (PyErr_Occurred())
            return NULL;
        int src = file ? PyObject_AsFileDescriptor(file) : -1;
        if (src < 0) {
            PyErr_Clear();
            return bad_message("http.response.zerocopysend needs a file with fileno(), got %R",
                               file ? file : Py_None);
        }
        more = mb ? PyObject_IsTrue(mb) : 0;
        if (fstat(src, &st) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        off = o && o != Py_None ? (off_t)PyLong_AsLongLong(o) : lseek(src, 0, SEEK_CUR);
        if (off < 0)
            off = 0;
        long long cnt = c && c != Py_None ? PyLong_AsLongLong(c) : -1;
        if (PyErr_Occurred() || more < 0)
            return NULL;
        uint64_t avail = (uint64_t)st.st_size > (uint64_t)off ? (uint64_t)st.st_size - (uint64_t)off : 0;
        len = cnt >= 0 && (uint64_t)cnt < avail ? (uint64_t)cnt : avail;
        if ((fd = fcntl(src, F_DUPFD_CLOEXEC, 0)) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (cy->gone || !r) {
        close(fd);
        return sent(cy, -1);
    }
    const cs_resp_head *h = NULL;
    int flags = more || cy->trailers ? 0 : CS_SEND_FIN;
    if (cy->resp == RESP_STARTED) {
        h = &cy->head;
        if (cy->head.content_length < 0 && !more && !cy->trailers)
            cy->head.content_length = (int64_t)len;
        if (cy->trailers)
            flags |= CS_SEND_TRAILERS;
    }
    int rc = r->ops->sendfile(r, h, fd, off, len, flags);
    cy->resp = RESP_BODY;
    if (!more) {
        if (cy->trailers)
            cy->resp = RESP_TRAILERS;
        else
            response_done(cy);
    }
    return sent(cy, rc);
}

static PyObject *on_trailers(Cycle *cy, PyObject *msg)
{
    cs_asgi *a = cy->a;
    if (!cy->trailers || cy->resp != RESP_TRAILERS)
        return bad_message("unexpected %R: trailers need \"trailers\": True in the start and come after the body",
                           a->keys[K_TRAILERS]);
    PyObject *headers = msg_get(msg, K_HEADERS, a), *mt = msg_get(msg, K_MORE_TRAILERS, a);
    if (PyErr_Occurred())
        return NULL;
    int more = mt ? PyObject_IsTrue(mt) : 0;
    if (more < 0)
        return NULL;
    if (!cy->trailer_list && !(cy->trailer_list = PyList_New(0)))
        return NULL;
    if (headers) {
        Py_ssize_t nh;
        size_t need;
        PyObject *seq = header_items(headers, &nh, &need);
        if (!seq)
            return NULL;
        for (Py_ssize_t i = 0; i < nh; i++)
            if (PyList_Append(cy->trailer_list, PySequence_Fast_GET_ITEM(seq, i)) < 0) {
                Py_DECREF(seq);
                return NULL;
            }
        Py_DECREF(seq);
    }
    if (more)
        return Py_NewRef(a->done_none);
    Py_ssize_t n = PyList_GET_SIZE(cy->trailer_list);
    cs_header *f = PyMem_Malloc(sizeof(cs_header) * (size_t)(n + 1));
    if (!f)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t nn = 0, vn = 0;
        pair_view(PyList_GET_ITEM(cy->trailer_list, i), &f[i].name, &nn, &f[i].value, &vn);
        f[i].name_len = (size_t)nn;
        f[i].value_len = (size_t)vn;
    }
    int rc = cy->gone || !cy->req ? -1 : cy->req->ops->trailers(cy->req, f, (size_t)n);
    PyMem_Free(f);
    response_done(cy);
    return sent(cy, rc);
}

static PyObject *ws_send_message(Cycle *cy, PyObject *t, PyObject *msg);

static PyObject *send_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    Cycle *cy = (Cycle *)((Chan *)self)->owner;
    cs_asgi *a = cy->a;
    if (PyVectorcall_NARGS(nargsf) != 1 || kw)
        return PyErr_Format(PyExc_TypeError, "send() takes one message");
    PyObject *msg = args[0], *owned = NULL;
    if (!PyDict_Check(msg)) {
        if (!PyMapping_Check(msg))
            return bad_message("an ASGI message must be a dict, got %R", (PyObject *)Py_TYPE(msg));
        if (!(owned = PyDict_New()) || PyDict_Merge(owned, msg, 1) < 0) {
            Py_XDECREF(owned);
            return NULL;
        }
        msg = owned;
    }
    PyObject *t = msg_get(msg, K_TYPE, a), *res;
    if (!t || !PyUnicode_Check(t))
        res = PyErr_Occurred() ? NULL : bad_message("an ASGI message needs a str \"type\", got %R", msg);
    else if (cy->finished && !cy->gone)
        res = bad_message("unexpected %R: the app has already finished this request", t);
    else if (cy->ws)
        res = ws_send_message(cy, t, msg);
    else if (TYPE_IS(t, "http.response.body"))
        res = on_body(cy, msg);
    else if (TYPE_IS(t, "http.response.start"))
        res = on_start(cy, msg);
    else if (TYPE_IS(t, "http.response.pathsend"))
        res = on_file(cy, msg, 1);
    else if (TYPE_IS(t, "http.response.zerocopysend"))
        res = on_file(cy, msg, 0);
    else if (TYPE_IS(t, "http.response.trailers"))
        res = on_trailers(cy, msg);
    else
        res = bad_message("unexpected ASGI message type %R", t);
    Py_XDECREF(owned);
    return res;
}

/* ---- scope ---------------------------------------------------------------- */

/* Lowercased field name as bytes, from a small cache. */
static PyObject *header_name(cs_asgi *a, const char *name, size_t n)
{
    char low[HCACHE_NAME];
    if (n >= HCACHE_NAME) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (b)
            for (size_t i = 0; i < n; i++)
                PyBytes_AS_STRING(b)[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
        return b;
    }
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        char c = (name[i] >= 'A' && name[i] <= 'Z') ? (char)(name[i] + 32) : name[i];
        low[i] = c;
        h = (h ^ (unsigned char)c) * 16777619u;
    }
    for (uint32_t k = 0; k < 8; k++) {
        uint32_t slot = (h + k) & (HCACHE - 1);
        if (!a->hcache[slot].bytes) {
            PyObject *b = PyBytes_FromStringAndSize(low, (Py_ssize_t)n);
            if (b && a->hcount < HCACHE * 3 / 4) {
                a->hcache[slot].hash = h;
                a->hcache[slot].len = (uint32_t)n;
                memcpy(a->hcache[slot].name, low, n);
                a->hcache[slot].bytes = Py_NewRef(b);
                a->hcount++;
            }
            return b;
        }
        if (a->hcache[slot].hash == h && a->hcache[slot].len == n && memcmp(a->hcache[slot].name, low, n) == 0)
            return Py_NewRef(a->hcache[slot].bytes);
    }
    return PyBytes_FromStringAndSize(low, (Py_ssize_t)n);
}

static PyObject *server_tuple(cs_asgi *a, const cs_req *r)
{
    for (int i = 0; i < a->nservers; i++)
        if (a->servers[i].name == r->server_name)
            return Py_NewRef(a->servers[i].tuple);
    PyObject *t = r->is_unix ? Py_BuildValue("(sO)", r->server_name, Py_None)
                             : Py_BuildValue("(si)", r->server_name, atoi(r->server_port));
    if (t && a->nservers < MAX_SERVERS) {
        a->servers[a->nservers].name = r->server_name;
        a->servers[a->nservers++].tuple = Py_NewRef(t);
    }
    return t;
}

/* path (percent-decoded UTF-8) and raw_path, both after root_path. */
static int set_paths(cs_asgi *a, PyObject *scope, const cs_req *r)
{
    char stack[2048];
    const char *src = r->path_len ? r->path : "/";
    size_t n = r->path_len ? r->path_len : 1, rl = a->root_len;
    char *buf = rl + n <= sizeof(stack) ? stack : PyMem_Malloc(rl + n);
    if (!buf) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(buf, a->root, rl);
    PyObject *raw = NULL;
    if (rl) {
        memcpy(buf + rl, src, n);
        raw = PyBytes_FromStringAndSize(buf, (Py_ssize_t)(rl + n));
    } else {
        raw = PyBytes_FromStringAndSize(src, (Py_ssize_t)n);
    }
    size_t o = rl;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (src[i] == '%' && i + 2 < n && (hi = cs_hexval((unsigned char)src[i + 1])) >= 0 &&
            (lo = cs_hexval((unsigned char)src[i + 2])) >= 0) {
            buf[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            buf[o++] = src[i];
        }
    }
    PyObject *path = PyUnicode_DecodeUTF8(buf, (Py_ssize_t)o, "replace");
    if (buf != stack)
        PyMem_Free(buf);
    return set_steal(scope, a->keys[K_RAW_PATH], raw) < 0 || set_steal(scope, a->keys[K_PATH], path) < 0 ? -1 : 0;
}

/* The ASGI TLS extension: a fresh extensions dict (the template's is
 * shared) with "tls" describing the connection. */
static int add_tls(cs_asgi *a, PyObject *scope, const cs_req *r)
{
    static const char *const names[6] = {"server_cert",      "client_cert_chain", "client_cert_name",
                                         "client_cert_error", "tls_version",       "cipher_suite"};
    if (!a->tls_keys[0])
        for (int i = 0; i < 6; i++)
            if (!(a->tls_keys[i] = PyUnicode_InternFromString(names[i])))
                return -1;
    if (!a->tls_server) {
        const char *pem = cs_tls_server_pem(r->tls);
        if (!(a->tls_server = pem ? PyUnicode_FromString(pem) : Py_NewRef(Py_None)))
            return -1;
    }
    PyObject *cur = PyDict_GetItemWithError(scope, a->keys[K_EXTENSIONS]);
    PyObject *ext = cur ? PyDict_Copy(cur) : PyDict_New();
    PyObject *chain = PyList_New(0), *tls = PyDict_New(), *name = NULL, *v = NULL, *c = NULL;
    if (!ext || !chain || !tls)
        goto fail;
    for (int i = 0;; i++) {
        size_t n = 0;
        char *pem = cs_tls_peer_pem(r->tls, i, &n);
        if (!pem)
            break;
        PyObject *s = PyUnicode_DecodeASCII(pem, (Py_ssize_t)n, "replace");
        free(pem);
        if (!s || PyList_Append(chain, s) < 0) {
            Py_XDECREF(s);
            goto fail;
        }
        Py_DECREF(s);
    }
    char *cn = cs_tls_peer_name(r->tls);
    name = cn ? PyUnicode_DecodeUTF8(cn, (Py_ssize_t)strlen(cn), "replace") : Py_NewRef(Py_None);
    free(cn);
    v = PyLong_FromLong(cs_tls_version(r->tls));
    c = PyLong_FromLong(cs_tls_cipher(r->tls));
    if (!name || !v || !c || PyDict_SetItem(tls, a->tls_keys[0], a->tls_server) < 0 ||
        PyDict_SetItem(tls, a->tls_keys[1], chain) < 0 || PyDict_SetItem(tls, a->tls_keys[2], name) < 0 ||
        PyDict_SetItem(tls, a->tls_keys[3], Py_None) < 0 || PyDict_SetItem(tls, a->tls_keys[4], v) < 0 ||
        PyDict_SetItem(tls, a->tls_keys[5], c) < 0 || PyDict_SetItem(ext, a->keys[K_TLS], tls) < 0 ||
        PyDict_SetItem(scope, a->keys[K_EXTENSIONS], ext) < 0)
        goto fail;
    Py_DECREF(name);
    Py_DECREF(v);
    Py_DECREF(c);
    Py_DECREF(tls);
    Py_DECREF(chain);
    Py_DECREF(ext);
    return 0;
fail:
    Py_XDECREF(name);
    Py_XDECREF(v);
    Py_XDECREF(c);
    Py_XDECREF(tls);
    Py_XDECREF(chain);
    Py_XDECREF(ext);
    return -1;
}

static PyObject *build_scope(cs_asgi *a, const cs_req *r)
{
    PyObject *scope = PyDict_Copy(a->template);
    if (!scope)
        return NULL;
    PyObject *method = NULL;
    for (int i = 0; i < NMETHODS; i++)
        if (strlen(methods[i]) == r->method_len && memcmp(methods[i], r->method, r->method_len) == 0) {
            method = Py_NewRef(a->methods[i]);
            break;
        }
    if (!method)
        method = PyUnicode_DecodeLatin1(r->method, (Py_ssize_t)r->method_len, NULL);
    PyObject *headers = PyList_New((Py_ssize_t)r->num_headers);
    if (set_steal(scope, a->keys[K_METHOD], method) < 0 || !headers ||
        PyDict_SetItem(scope, a->keys[K_HTTP_VERSION],
                       r->protocol[5] == '2' ? a->keys[V_2] : r->protocol[7] == '1' ? a->keys[V_11] : a->keys[V_10]) < 0 ||
        set_paths(a, scope, r) < 0 ||
        set_steal(scope, a->keys[K_QUERY_STRING], PyBytes_FromStringAndSize(r->query, (Py_ssize_t)r->query_len)) < 0 ||
        set_steal(scope, a->keys[K_SERVER], server_tuple(a, r)) < 0)
        goto fail;
    for (size_t i = 0; i < r->num_headers; i++) {
        const cs_header *h = &r->headers[i];
        PyObject *pair = PyTuple_New(2);
        if (!pair)
            goto fail;
        PyList_SET_ITEM(headers, (Py_ssize_t)i, pair);
        PyObject *nm = header_name(a, h->name, h->name_len);
        PyObject *vl = nm ? PyBytes_FromStringAndSize(h->value, (Py_ssize_t)h->value_len) : NULL;
        if (!vl) {
            Py_XDECREF(nm);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, nm);
        PyTuple_SET_ITEM(pair, 1, vl);
    }
    if (PyDict_SetItem(scope, a->keys[K_HEADERS], headers) < 0)
        goto fail;
    Py_CLEAR(headers);
    PyObject *client = r->is_unix ? Py_NewRef(Py_None) : Py_BuildValue("(si)", r->peer_addr, r->peer_port);
    if (set_steal(scope, a->keys[K_CLIENT], client) < 0)
        goto fail;
    if (r->te_trailers && PyDict_SetItem(scope, a->keys[K_EXTENSIONS], a->ext_trailers) < 0)
        goto fail;
    if (a->state && set_steal(scope, a->keys[K_STATE], PyDict_Copy(a->state)) < 0)
        goto fail;
    if (r->tls && (PyDict_SetItem(scope, a->keys[K_SCHEME], a->keys[V_HTTPS]) < 0 || add_tls(a, scope, r) < 0))
        goto fail;
    return scope;
fail:
    Py_XDECREF(headers);
    Py_DECREF(scope);
    return NULL;
}

/* ---- WebSocket sessions ------------------------------------------------------ */

/* The WebSocket scope: the HTTP one with its type, scheme, subprotocols and
 * extensions changed, and no method. */
static PyObject *build_ws_scope(cs_asgi *a, const cs_req *r)
{
    PyObject *scope = build_scope(a, r), *subs = PyList_New(0);
    if (!scope || !subs)
        goto fail;
    for (size_t i = 0; i < r->num_headers; i++) {
        const cs_header *h = &r->headers[i];
        if (h->name_len != 22 || strncasecmp(h->name, "sec-websocket-protocol", 22) != 0)
            continue;
        size_t pos = 0, len;
        const char *item;
        while (cs_list_next(h->value, h->value_len, &pos, &item, &len)) {
            PyObject *sp = PyUnicode_DecodeLatin1(item, (Py_ssize_t)len, NULL);
            if (!sp || PyList_Append(subs, sp) < 0) {
                Py_XDECREF(sp);
                goto fail;
            }
            Py_DECREF(sp);
        }
    }
    if (PyDict_SetItem(scope, a->keys[K_TYPE], a->keys[V_WEBSOCKET]) < 0 ||
        PyDict_SetItem(scope, a->keys[K_SCHEME], a->keys[strcmp(r->scheme, "https") ? V_WS : V_WSS]) < 0 ||
        PyDict_DelItem(scope, a->keys[K_METHOD]) < 0 || PyDict_SetItem(scope, a->keys[K_SUBPROTOCOLS], subs) < 0 ||
        PyDict_SetItem(scope, a->keys[K_EXTENSIONS], a->ext_ws) < 0 || (r->tls && add_tls(a, scope, r) < 0))
        goto fail;
    Py_DECREF(subs);
    return scope;
fail:
    Py_XDECREF(subs);
    Py_XDECREF(scope);
    return NULL;
}

static PyObject *ws_disconnect_msg(Cycle *cy)
{
    PyObject *m = message(cy->a, V_WS_DISCONNECT);
    PyObject *reason = cy->ws_reason ? Py_NewRef(cy->ws_reason) : PyUnicode_FromStringAndSize("", 0);
    if (m && (set_steal(m, cy->a->keys[K_CODE], PyLong_FromLong(cy->ws_code ? cy->ws_code : 1006)) < 0 ||
              set_steal(m, cy->a->keys[K_REASON], reason) < 0)) {
        Py_CLEAR(m);
        return NULL;
    }
    if (!m)
        Py_XDECREF(reason);
    return m;
}

static Py_ssize_t ws_queued(Cycle *cy) { return cy->ws_queue ? PyList_GET_SIZE(cy->ws_queue) - cy->ws_head : 0; }

/* The payload size of a queued websocket.receive message (characters for text). */
static Py_ssize_t ws_weight(cs_asgi *a, PyObject *m)
{
    PyObject *v = PyDict_GetItemWithError(m, a->keys[K_BYTES]);
    if (v && PyBytes_Check(v))
        return PyBytes_GET_SIZE(v);
    v = v ? NULL : PyDict_GetItemWithError(m, a->keys[K_TEXT]);
    PyErr_Clear();
    return v && PyUnicode_Check(v) ? PyUnicode_GET_LENGTH(v) : 0;
}

static PyObject *ws_try_receive(Cycle *cy, int *again)
{
    cs_req *r = cy->req;
    *again = 0;
    if (cy->ws_state == WS_CONNECTING) {
        cy->ws_state = WS_HANDSHAKE;
        return message(cy->a, V_WS_CONNECT);
    }
    if (ws_queued(cy)) {
        PyObject *m = Py_NewRef(PyList_GET_ITEM(cy->ws_queue, cy->ws_head));
        cy->ws_head++;
        cy->ws_bytes -= ws_weight(cy->a, m);
        if (cy->ws_head == PyList_GET_SIZE(cy->ws_queue)) {
            if (PyList_SetSlice(cy->ws_queue, 0, cy->ws_head, NULL) < 0)
                PyErr_Clear();
            cy->ws_head = 0;
        }
        if (cy->ws_paused && ws_queued(cy) <= WS_QUEUE_LOW && cy->ws_bytes <= WS_QUEUE_LOW_BYTES && r) {
            cy->ws_paused = 0;
            r->ops->ws_pause(r, 0);
        }
        return m;
    }
    if (cy->gone || !r || cy->ws_state == WS_REFUSED)
        return ws_disconnect_msg(cy);
    *again = 1;
    return NULL;
}

/* A message from the peer (the connection validated it). */
static void cs_asgi_ws_message(cs_req *r, void *data, int opcode, const char *p, size_t n)
{
    cs_asgi *a = data;
    Cycle *cy = r->bridge;
    if (!cy)
        return;
    PyObject *m = message(a, V_WS_RECEIVE);
    int text = opcode == CS_WS_TEXT;
    if (!m || set_steal(m, a->keys[text ? K_TEXT : K_BYTES],
                        text ? PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, NULL)
                             : PyBytes_FromStringAndSize(p, (Py_ssize_t)n)) < 0) {
        Py_XDECREF(m);
        cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "ASGI: cannot deliver a WebSocket message");
        return;
    }
    if (cy->recv_fut && !ws_queued(cy) && !future_done(cy->recv_fut)) {
        resolve(&cy->recv_fut, m, NULL);
        return;
    }
    if (!cy->ws_queue && !(cy->ws_queue = PyList_New(0))) {
        Py_DECREF(m);
        cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "ASGI: cannot queue a WebSocket message");
        return;
    }
    if (PyList_Append(cy->ws_queue, m) < 0)
        cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "ASGI: cannot queue a WebSocket message");
    else
        cy->ws_bytes += ws_weight(a, m);
    Py_DECREF(m);
    if (!cy->ws_paused && (ws_queued(cy) >= WS_QUEUE_HIGH || cy->ws_bytes >= WS_QUEUE_HIGH_BYTES)) {
        /* the app is behind: let TCP push back on the peer */
        cy->ws_paused = 1;
        r->ops->ws_pause(r, 1);
    }
}

static PyObject *on_ws_accept(Cycle *cy, PyObject *msg)
{
    cs_asgi *a = cy->a;
    cs_req *r = cy->req;
    if (cy->ws_state != WS_CONNECTING && cy->ws_state != WS_HANDSHAKE)
        return bad_message("unexpected websocket.accept: the handshake is over");
    PyObject *sp = msg_get(msg, K_SUBPROTOCOL, a), *headers = msg_get(msg, K_HEADERS, a);
    if (PyErr_Occurred())
        return NULL;
    const char *spp = NULL;
    Py_ssize_t spn = 0;
    if (sp && sp != Py_None) {
        if (!PyUnicode_Check(sp) || !(spp = PyUnicode_AsUTF8AndSize(sp, &spn)) || spn == 0) {
            PyErr_Clear();
            return bad_message("websocket.accept subprotocol must be a non-empty str, got %R", sp);
        }
        for (Py_ssize_t i = 0; i < spn; i++)
            if (!cs_is_tchar((unsigned char)spp[i]))
                return bad_message("invalid subprotocol %R", sp);
    }
    Py_ssize_t nh = 0;
    size_t need = 0;
    PyObject *seq = NULL;
    if (headers && headers != Py_None && !(seq = header_items(headers, &nh, &need)))
        return NULL;
    cs_header *hdrs = PyMem_Malloc(sizeof(cs_header) * (size_t)(nh + 1));
    if (!hdrs) {
        Py_XDECREF(seq);
        return PyErr_NoMemory();
    }
    size_t k = 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        const char *np = "", *vp = "";
        Py_ssize_t nn = 0, vn = 0;
        pair_view(PySequence_Fast_GET_ITEM(seq, i), &np, &nn, &vp, &vn);
        /* the handshake fields are ours to write */
        static const char *const ours[] = {"upgrade", "connection", "sec-websocket-accept",
                                           "sec-websocket-extensions", "content-length", "transfer-encoding", NULL};
        int skip = 0;
        for (int j = 0; ours[j] && !skip; j++)
            skip = (size_t)nn == strlen(ours[j]) && strncasecmp(np, ours[j], (size_t)nn) == 0;
        if (nn == 22 && strncasecmp(np, "sec-websocket-protocol", 22) == 0) {
            if (spp) {
                skip = 1;
            } else {            /* the app named its subprotocol as a header: take it */
                spp = vp;
                spn = vn;
                skip = 1;
            }
        }
        if (skip)
            continue;
        hdrs[k++] = (cs_header){.name = np, .name_len = (size_t)nn, .value = vp, .value_len = (size_t)vn};
    }
    int rc = cy->gone || !r ? -1 : r->ops->ws_accept(r, spp, (size_t)spn, hdrs, k);
    PyMem_Free(hdrs);
    Py_XDECREF(seq);
    cy->ws_state = WS_OPEN;
    cy->resp = RESP_DONE;
    return sent(cy, rc);
}

static PyObject *on_ws_send(Cycle *cy, PyObject *msg)
{
    cs_asgi *a = cy->a;
    cs_req *r = cy->req;
    if (cy->ws_state != WS_OPEN && !cy->gone) {
        if (cy->ws_state == WS_CLOSED)
            return sent(cy, -1);
        return bad_message("websocket.send before websocket.accept");
    }
    PyObject *text = msg_get(msg, K_TEXT, a), *bytes = msg_get(msg, K_BYTES, a);
    if (PyErr_Occurred())
        return NULL;
    if (text == Py_None)
        text = NULL;
    if (bytes == Py_None)
        bytes = NULL;
    if (!text == !bytes)
        return bad_message("websocket.send needs exactly one of bytes and text");
    const char *p;
    Py_ssize_t n;
    Py_buffer view = {0};
    if (text) {
        if (!PyUnicode_Check(text))
            return bad_message("websocket.send text must be a str, got %R", (PyObject *)Py_TYPE(text));
        if (!(p = PyUnicode_AsUTF8AndSize(text, &n)))
            return NULL;
    } else {
        if (PyUnicode_Check(bytes) || PyObject_GetBuffer(bytes, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            return bad_message("websocket.send bytes must be bytes, got %R", (PyObject *)Py_TYPE(bytes));
        }
        p = view.buf;
        n = view.len;
    }
    int rc = cy->gone || !r ? -1 : r->ops->ws_send(r, text ? CS_WS_TEXT : CS_WS_BINARY, p, (size_t)n);
    PyBuffer_Release(&view);
    return sent(cy, rc);
}

static PyObject *on_ws_close(Cycle *cy, PyObject *msg)
{
    cs_asgi *a = cy->a;
    cs_req *r = cy->req;
    PyObject *code = msg_get(msg, K_CODE, a), *reason = msg_get(msg, K_REASON, a);
    if (PyErr_Occurred())
        return NULL;
    long cc = 1000;
    if (code && code != Py_None) {
        cc = PyLong_Check(code) ? PyLong_AsLong(code) : -1;
        if (cc < 1000 || cc > 4999 || cc == 1004 || cc == 1005 || cc == 1006 || cc == 1015) {
            PyErr_Clear();
            return bad_message("invalid WebSocket close code %R", code);
        }
    }
    if (cy->gone || !r)
        return Py_NewRef(a->done_none);
    const char *rp = "";
    Py_ssize_t rn = 0;
    PyObject *text = NULL;
    if (reason && reason != Py_None && cy->ws_state == WS_OPEN) {
        /* (a refusal sends no reason: whatever the app gave is not looked at) */
        if (!PyUnicode_Check(reason)) {
            /* FastAPI passes its validation errors as a list: send their text,
             * cut to what fits at a character boundary */
            if (!(text = PyObject_Str(reason)) || !(rp = PyUnicode_AsUTF8AndSize(text, &rn))) {
                Py_XDECREF(text);
                return NULL;
            }
            if (rn > 123) {
                rn = 123;
                while (rn > 0 && ((unsigned char)rp[rn] & 0xC0) == 0x80)
                    rn--;
            }
        } else {
            if (!(rp = PyUnicode_AsUTF8AndSize(reason, &rn)))
                return NULL;
            if (rn > 123)
                return bad_message("websocket.close reason is %zd bytes in UTF-8; at most 123 fit", rn);
        }
    }
    if (cy->ws_state == WS_CONNECTING || cy->ws_state == WS_HANDSHAKE) {
        /* refused before the handshake: HTTP 403 (ASGI spec) */
        cy->ws_state = WS_REFUSED;
        send_plain(r, 403, "Forbidden", 1);
        cy->resp = RESP_DONE;
    } else if (cy->ws_state == WS_OPEN) {
        cy->ws_state = WS_CLOSED;
        r->ops->ws_close(r, (int)cc, rp, (size_t)rn);
    }
    Py_XDECREF(text);
    return Py_NewRef(a->done_none);
}

static PyObject *ws_send_message(Cycle *cy, PyObject *t, PyObject *msg)
{
    if (TYPE_IS(t, "websocket.send"))
        return on_ws_send(cy, msg);
    if (TYPE_IS(t, "websocket.accept"))
        return on_ws_accept(cy, msg);
    if (TYPE_IS(t, "websocket.close"))
        return on_ws_close(cy, msg);
    if (TYPE_IS(t, "websocket.http.response.start")) {
        if (cy->ws_state != WS_CONNECTING && cy->ws_state != WS_HANDSHAKE)
            return bad_message("unexpected websocket.http.response.start: the handshake is over");
        PyObject *res = on_start(cy, msg);
        if (res) {
            cy->ws_state = WS_REFUSED;
            cy->head.app_close = 1;     /* the client asked for a WebSocket: no second request */
        }
        return res;
    }
    if (TYPE_IS(t, "websocket.http.response.body")) {
        if (cy->ws_state != WS_REFUSED || cy->resp == RESP_NONE)
            return bad_message("expected websocket.http.response.start before websocket.http.response.body");
        return on_body(cy, msg);
    }
    return bad_message("unexpected ASGI message type %R on a WebSocket", t);
}

/* ---- the handler hooks ---------------------------------------------------- */

/* Run the app's awaitable one step in the Task's context, as the Task. */
static PySendResult eager_step(cs_asgi *a, Cycle *cy, PyObject *task, PyObject *ctx, PyObject **res)
{
    if (PyContext_Enter(ctx) < 0)
        return PYGEN_ERROR;
    PyObject *args[2] = {a->loop, task};
    PyObject *r = PyObject_Vectorcall(a->enter_task, args, 2, NULL);
    if (!r) {
        PyContext_Exit(ctx);
        return PYGEN_ERROR;
    }
    Py_DECREF(r);
    PySendResult st = PyIter_Send(cy->iter, Py_None, res);
    PyObject *saved = st == PYGEN_ERROR ? cs_take_exception() : NULL;
    r = PyObject_Vectorcall(a->leave_task, args, 2, NULL);
    if (!r)
        PyErr_WriteUnraisable(task);
    Py_XDECREF(r);
    PyContext_Exit(ctx);
    if (saved) {
        PyErr_SetObject((PyObject *)Py_TYPE(saved), saved);
        Py_DECREF(saved);
    }
    return st;
}

static void cs_asgi_handle(cs_req *r, void *data)
{
    cs_asgi *a = data;
    if (a->limit && a->running >= a->limit) {
        send_plain(r, 503, "Service Unavailable", 1);
        return;
    }
    Cycle *cy = PyObject_GC_New(Cycle, &CycleType);
    if (!cy) {
        cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "ASGI: cannot start a request");
        send_plain(r, 500, "Internal Server Error", 0);
        return;
    }
    memset((char *)cy + sizeof(PyObject), 0, sizeof(Cycle) - sizeof(PyObject));
    cy->a = a;
    cy->req = r;
    r->bridge = cy;             /* the request's reference: dropped in cycle_finish */
    PyObject_GC_Track(cy);

    cy->ws = r->websocket;
    PyObject *scope = r->websocket ? build_ws_scope(a, r) : build_scope(a, r), *recv = NULL, *send = NULL, *aw = NULL, *ctx = NULL, *task = NULL;
    if (!scope || !(recv = chan_new((PyObject *)cy, receive_call)) || !(send = chan_new((PyObject *)cy, send_call))) {
        cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "ASGI: cannot build the scope");
        goto failed;
    }
    PyObject *args[3] = {scope, recv, send};
    aw = PyObject_Vectorcall(a->app, args, 3, NULL);
    Py_CLEAR(scope);
    Py_CLEAR(recv);
    Py_CLEAR(send);
    if (!aw) {
        cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "Exception in ASGI application");
        goto failed;
    }
    if (PyCoro_CheckExact(aw)) {
        cy->iter = aw;
        aw = NULL;
    } else if (Py_TYPE(aw)->tp_as_async && Py_TYPE(aw)->tp_as_async->am_await) {
        cy->iter = Py_TYPE(aw)->tp_as_async->am_await(aw);
        Py_CLEAR(aw);
        if (!cy->iter) {
            cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "Exception in ASGI application");
            goto failed;
        }
    } else {
        cs_log(CS_LOG_ERROR, "ASGI app returned %s, not an awaitable", Py_TYPE(aw)->tp_name);
        Py_CLEAR(aw);
        goto failed;
    }
    if (!(ctx = PyContext_CopyCurrent()))
        goto failed_exc;
    PyObject *targs[4] = {(PyObject *)cy, a->loop, ctx, a->task_name};
    if (!(task = PyObject_Vectorcall(a->task_type, targs, 1, a->task_kw)))
        goto failed_exc;
    PyObject *res;
    PySendResult st = cycle_after(cy, eager_step(a, cy, task, ctx, &res), &res);
    Py_DECREF(ctx);
    if (st == PYGEN_NEXT) {
        cy->first = res;
        if (!cy->finished) {
            cy->task = Py_NewRef(task);
            cy->suspended = 1;
            a->running++;
            r->suspended = 1;
        }
    } else if (st == PYGEN_RETURN) {
        Py_DECREF(res);
    } else {
        PyErr_Clear();          /* cancelled before it began: finished already */
    }
    Py_DECREF(task);
    return;
failed_exc:
    cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "ASGI: cannot start the app task");
    Py_XDECREF(ctx);
failed:
    Py_XDECREF(scope);
    Py_XDECREF(recv);
    Py_XDECREF(send);
    cycle_finish(cy);
}

/* The connection changed under a suspended app: body bytes, room to write. */
static void cs_asgi_resume(cs_req *r, void *data)
{
    Cycle *cy = r->bridge;
    (void)data;
    if (!cy)
        return;
    Py_INCREF(cy);
    if (cy->recv_fut) {
        if (future_done(cy->recv_fut)) {
            Py_CLEAR(cy->recv_fut);
        } else {
            int again;
            PyObject *m = try_receive(cy, &again);
            if (m)
                resolve(&cy->recv_fut, m, NULL);
            else if (!again) {
                PyObject *exc = cs_take_exception();
                resolve(&cy->recv_fut, NULL, exc);
                Py_XDECREF(exc);
            }
        }
    }
    if (cy->send_fut && !r->blocked)
        resolve(&cy->send_fut, NULL, NULL);
    Py_DECREF(cy);
}

/* The connection is gone while the app runs on: it hears "disconnect". */
static void cs_asgi_cancel(cs_req *r, void *data)
{
    cs_asgi *a = data;
    Cycle *cy = r->bridge;
    if (!cy)
        return;
    r->bridge = NULL;
    cy->req = NULL;
    cy->gone = 1;
    if (cy->ws) {
        cy->ws_code = r->ws_code ? r->ws_code : 1006;
        Py_XSETREF(cy->ws_reason, PyUnicode_DecodeUTF8(r->ws_reason ? r->ws_reason : "",
                                                       (Py_ssize_t)r->ws_reason_len, "replace"));
        PyErr_Clear();
    }
    cycle_release_head(cy);
    if (cy->suspended) {
        cy->suspended = 0;
        a->running--;
    }
    if (r->expired && cy->task) {
        PyObject *res = PyObject_CallMethod(cy->task, "cancel", NULL);
        Py_XDECREF(res);
    }
    Py_CLEAR(cy->task);
    resolve(&cy->recv_fut, cy->ws ? ws_disconnect_msg(cy) : disconnect_msg(a), NULL);
    if (cy->send_fut) {
        PyObject *exc = PyObject_CallFunction(ClientDisconnected, "s", "the client disconnected");
        resolve(&cy->send_fut, NULL, exc);
        Py_XDECREF(exc);
    }
    PyErr_Clear();
    Py_DECREF(cy);              /* the request's reference */
}

/* ---- the loop --------------------------------------------------------------- */

static PyObject *poll_cb(PyObject *self, PyObject *unused)
{
    cs_asgi *a = PyCapsule_GetPointer(self, "corsac.asgi");
    (void)unused;
    if (!a)
        return NULL;
    if (cs_loop_poll(a->w->loop) != 0) {
        PyObject *r = PyObject_CallMethod(a->loop, "stop", NULL);
        Py_XDECREF(r);
    }
    if (PyErr_Occurred())
        cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "ASGI: error in the I/O callback");
    Py_RETURN_NONE;
}

static PyMethodDef poll_def = {"_corsac_io", poll_cb, METH_NOARGS, NULL};

static int drive(cs_worker *w)
{
    cs_asgi *a = w->handler_data;
    PyObject *fd = PyLong_FromLong(cs_loop_fd(w->loop));
    PyObject *r = fd ? PyObject_CallMethod(a->loop, "add_reader", "OO", fd, a->poll_cb) : NULL;
    if (r) {
        Py_DECREF(r);
        r = PyObject_CallMethod(a->loop, "run_forever", NULL);
    }
    int rc = r ? 0 : -1;
    if (!r)
        cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "ASGI: the event loop failed");
    Py_XDECREF(r);
    r = fd ? PyObject_CallMethod(a->loop, "remove_reader", "O", fd) : NULL;
    Py_XDECREF(r);
    PyErr_Clear();
    Py_XDECREF(fd);
    return rc;
}

void cs_asgi_attach(cs_asgi *a, cs_worker *w)
{
    a->w = w;
    w->async = 1;
    w->threads = 1;
    w->handler = cs_asgi_handle;
    w->resume = cs_asgi_resume;
    w->cancel = cs_asgi_cancel;
    w->ws_message = cs_asgi_ws_message;
    w->ws = a->ws;
    w->handler_data = a;
    w->drive = drive;
}

/* ---- lifespan --------------------------------------------------------------- */

struct Lifespan {
    PyObject_HEAD
    cs_asgi *a;
    PyObject *waiter;           /* resolved when startup or shutdown settles */
    PyObject *recv_fut;
    PyObject *task;
    PyObject *message;          /* the app's failure message */
    int sent;                   /* 0 nothing yet, 1 startup delivered, 2 shutdown delivered */
    int want_shutdown;
    int startup;                /* 1 complete, -1 failed */
    int shutdown;
};

static PyTypeObject LifespanType;

static int ls_traverse(Lifespan *l, visitproc visit, void *arg)
{
    Py_VISIT(l->waiter);
    Py_VISIT(l->recv_fut);
    Py_VISIT(l->task);
    Py_VISIT(l->message);
    return 0;
}

static int ls_clear(Lifespan *l)
{
    Py_CLEAR(l->waiter);
    Py_CLEAR(l->recv_fut);
    Py_CLEAR(l->task);
    Py_CLEAR(l->message);
    return 0;
}

static void ls_dealloc(Lifespan *l)
{
    PyObject_GC_UnTrack(l);
    ls_clear(l);
    PyObject_GC_Del(l);
}

static PyTypeObject LifespanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "corsac.ASGILifespan",
    .tp_basicsize = sizeof(Lifespan),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)ls_traverse,
    .tp_clear = (inquiry)ls_clear,
    .tp_dealloc = (destructor)ls_dealloc,
};

static PyObject *ls_event(Lifespan *l, int type)
{
    l->sent = type == V_STARTUP ? 1 : 2;
    return message(l->a, type);
}

static PyObject *ls_receive(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    Lifespan *l = (Lifespan *)((Chan *)self)->owner;
    (void)args;
    (void)nargsf;
    (void)kw;
    if (l->sent == 0)
        return ready_value(ls_event(l, V_STARTUP));
    if (l->want_shutdown && l->sent == 1)
        return ready_value(ls_event(l, V_SHUTDOWN));
    if (!l->recv_fut && !(l->recv_fut = PyObject_CallNoArgs(l->a->create_future)))
        return NULL;
    return ready_future(l->recv_fut);
}

static PyObject *ls_send(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    Lifespan *l = (Lifespan *)((Chan *)self)->owner;
    cs_asgi *a = l->a;
    if (PyVectorcall_NARGS(nargsf) != 1 || kw || !PyDict_Check(args[0]))
        return bad_message("lifespan send() takes one message dict, got %R", nargsf ? args[0] : Py_None);
    PyObject *msg = args[0], *t = msg_get(msg, K_TYPE, a), *m = msg_get(msg, K_MESSAGE, a);
    if (!t || !PyUnicode_Check(t))
        return PyErr_Occurred() ? NULL : bad_message("a lifespan message needs a str \"type\", got %R", msg);
    int *slot;
    if (TYPE_IS(t, "lifespan.startup.complete") || TYPE_IS(t, "lifespan.startup.failed"))
        slot = &l->startup;
    else if (TYPE_IS(t, "lifespan.shutdown.complete") || TYPE_IS(t, "lifespan.shutdown.failed"))
        slot = &l->shutdown;
    else
        return bad_message("unexpected lifespan message type %R", t);
    *slot = PyUnicode_GET_LENGTH(t) > 7 && memcmp((char *)PyUnicode_DATA(t) + PyUnicode_GET_LENGTH(t) - 7, ".failed", 7) == 0
                ? -1 : 1;
    if (*slot < 0 && m)
        Py_XSETREF(l->message, PyObject_Str(m));
    PyErr_Clear();
    resolve(&l->waiter, NULL, NULL);
    return Py_NewRef(a->done_none);
}

static PyObject *ls_task_done(PyObject *self, PyObject *task)
{
    Lifespan *l = PyCapsule_GetPointer(self, "corsac.lifespan");
    (void)task;
    if (l)
        resolve(&l->waiter, NULL, NULL);
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyMethodDef ls_done_def = {"_corsac_lifespan_done", ls_task_done, METH_O, NULL};

/* Run the loop until l->waiter settles (or `timeout` seconds pass, if > 0). */
static int ls_wait(Lifespan *l, double timeout)
{
    cs_asgi *a = l->a;
    if (!(l->waiter = PyObject_CallNoArgs(a->create_future)))
        return -1;
    PyObject *aw = Py_NewRef(l->waiter), *r = NULL;
    if (timeout > 0) {
        PyObject *asyncio = PyImport_ImportModule("asyncio");
        PyObject *wf = asyncio ? PyObject_CallMethod(asyncio, "wait_for", "Od", aw, timeout) : NULL;
        Py_XDECREF(asyncio);
        Py_DECREF(aw);
        if (!(aw = wf))
            return -1;
    }
    r = PyObject_CallMethod(a->loop, "run_until_complete", "O", aw);
    Py_DECREF(aw);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* The lifespan task's exception, if it ended with one (new reference). */
static PyObject *ls_task_exception(Lifespan *l)
{
    if (!l->task || !future_done(l->task))
        return NULL;
    PyObject *cancelled = PyObject_CallMethod(l->task, "cancelled", NULL);
    int c = cancelled ? PyObject_IsTrue(cancelled) : 1;
    Py_XDECREF(cancelled);
    if (c) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *e = PyObject_CallMethod(l->task, "exception", NULL);
    if (!e || e == Py_None) {
        Py_XDECREF(e);
        PyErr_Clear();
        return NULL;
    }
    return e;
}

int cs_asgi_startup(cs_asgi *a)
{
    if (a->lifespan_mode == CS_LIFESPAN_OFF)
        return 0;
    Lifespan *l = PyObject_GC_New(Lifespan, &LifespanType);
    if (!l)
        goto error;
    memset((char *)l + sizeof(PyObject), 0, sizeof(Lifespan) - sizeof(PyObject));
    l->a = a;
    PyObject_GC_Track(l);
    a->ls = l;
    PyObject *state = PyDict_New(), *scope = PyDict_New();
    PyObject *recv = chan_new((PyObject *)l, ls_receive), *send = chan_new((PyObject *)l, ls_send);
    PyObject *aw = NULL;
    if (state && scope && recv && send && PyDict_SetItem(scope, a->keys[K_TYPE], a->keys[V_LIFESPAN]) == 0 &&
        PyDict_SetItem(scope, a->keys[K_ASGI], a->asgi_info) == 0 &&
        PyDict_SetItem(scope, a->keys[K_STATE], state) == 0) {
        PyObject *args[3] = {scope, recv, send};
        aw = PyObject_Vectorcall(a->app, args, 3, NULL);
    }
    Py_XDECREF(scope);
    Py_XDECREF(recv);
    Py_XDECREF(send);
    PyObject *exc = NULL;
    if (aw) {
        PyObject *asyncio = PyImport_ImportModule("asyncio");
        PyObject *kw = Py_BuildValue("{sO}", "loop", a->loop), *args = Py_BuildValue("(O)", aw);
        PyObject *ef = asyncio ? PyObject_GetAttrString(asyncio, "ensure_future") : NULL;
        l->task = ef && kw && args ? PyObject_Call(ef, args, kw) : NULL;
        Py_XDECREF(ef);
        Py_XDECREF(kw);
        Py_XDECREF(args);
        Py_XDECREF(asyncio);
        Py_DECREF(aw);
        PyObject *cap = l->task ? PyCapsule_New(l, "corsac.lifespan", NULL) : NULL;
        PyObject *cb = cap ? PyCFunction_New(&ls_done_def, cap) : NULL;
        PyObject *r = cb ? PyObject_CallMethod(l->task, "add_done_callback", "O", cb) : NULL;
        Py_XDECREF(cap);
        Py_XDECREF(cb);
        Py_XDECREF(r);
        if (!r || ls_wait(l, 0) < 0) {
            Py_XDECREF(state);
            goto error;
        }
        exc = ls_task_exception(l);
    } else {
        exc = cs_take_exception();
    }
    if (l->startup > 0) {
        a->state = state;
        cs_log(CS_LOG_INFO, "Application startup complete");
        Py_XDECREF(exc);
        return 0;
    }
    Py_XDECREF(state);
    if (l->startup < 0) {
        const char *m = l->message ? PyUnicode_AsUTF8(l->message) : NULL;
        cs_log(CS_LOG_ERROR, "Application startup failed: %s", m && *m ? m : "(no message)");
        Py_XDECREF(exc);
        return -1;
    }
    if (a->lifespan_mode == CS_LIFESPAN_ON) {
        cs_log_exception(CS_LOG_ERROR, exc, "Exception in the lifespan protocol (--lifespan on)");
        if (!exc)
            cs_log(CS_LOG_ERROR, "The app ended its lifespan without completing startup (--lifespan on)");
        return -1;
    }
    if (exc)
        cs_log_exception(CS_LOG_DEBUG, exc, "The app raised on the lifespan scope");
    cs_log(CS_LOG_INFO, "ASGI 'lifespan' protocol appears unsupported; serving without it");
    Py_CLEAR(a->ls);
    return 0;
error:
    cs_log_exception(CS_LOG_ERROR, cs_take_exception(), "Lifespan startup failed");
    return -1;
}

static void cancel_leftovers(cs_asgi *a)
{
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    PyObject *tasks = asyncio ? PyObject_CallMethod(asyncio, "all_tasks", "O", a->loop) : NULL;
    PyObject *list = tasks ? PySequence_List(tasks) : NULL;
    if (list && PyList_GET_SIZE(list)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
            PyObject *r = PyObject_CallMethod(PyList_GET_ITEM(list, i), "cancel", NULL);
            Py_XDECREF(r);
        }
        PyObject *gather = PyObject_GetAttrString(asyncio, "gather");
        PyObject *args = PySequence_Tuple(list), *kw = Py_BuildValue("{sO}", "return_exceptions", Py_True);
        PyObject *g = gather && args && kw ? PyObject_Call(gather, args, kw) : NULL;
        PyObject *r = g ? PyObject_CallMethod(a->loop, "run_until_complete", "O", g) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(g);
        Py_XDECREF(gather);
        Py_XDECREF(args);
        Py_XDECREF(kw);
    }
    Py_XDECREF(list);
    Py_XDECREF(tasks);
    Py_XDECREF(asyncio);
    PyErr_Clear();
}

void cs_asgi_shutdown(cs_asgi *a)
{
    Lifespan *l = a->ls;
    if (l && l->startup > 0) {
        l->want_shutdown = 1;
        if (l->recv_fut && l->sent == 1)
            resolve(&l->recv_fut, ls_event(l, V_SHUTDOWN), NULL);
        if (!future_done(l->task) && ls_wait(l, a->graceful) < 0) {
            PyObject *exc = cs_take_exception();
            if (exc && PyErr_GivenExceptionMatches(exc, PyExc_TimeoutError))
                cs_log(CS_LOG_WARNING, "Lifespan shutdown did not finish within %.0f s", a->graceful);
            else
                cs_log_exception(CS_LOG_ERROR, Py_XNewRef(exc), "Lifespan shutdown failed");
            Py_XDECREF(exc);
        } else if (l->shutdown < 0) {
            const char *m = l->message ? PyUnicode_AsUTF8(l->message) : NULL;
            cs_log(CS_LOG_ERROR, "Application shutdown failed: %s", m && *m ? m : "(no message)");
        } else if (l->shutdown > 0) {
            cs_log(CS_LOG_INFO, "Application shutdown complete");
        } else {
            PyObject *exc = ls_task_exception(l);
            if (exc)
                cs_log_exception(CS_LOG_ERROR, exc, "Exception in the lifespan protocol during shutdown");
        }
    }
    PyErr_Clear();
    cancel_leftovers(a);
}

/* ---- setup ---------------------------------------------------------------- */

const char *cs_asgi_loop_name(const cs_asgi *a) { return a->loop_name; }

static PyObject *new_loop(int which, const char **name, char *err, size_t errlen)
{
    if (which != CS_LOOP_ASYNCIO) {
        PyObject *uv = PyImport_ImportModule("uvloop");
        if (uv) {
            PyObject *loop = PyObject_CallMethod(uv, "new_event_loop", NULL);
            Py_DECREF(uv);
            *name = "uvloop";
            return loop;
        }
        if (which == CS_LOOP_UVLOOP) {
            PyErr_Clear();
            snprintf(err, errlen, "--loop uvloop: uvloop is not installed (pip install uvloop)");
            return NULL;
        }
        PyErr_Clear();
    }
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    PyObject *loop = asyncio ? PyObject_CallMethod(asyncio, "new_event_loop", NULL) : NULL;
    Py_XDECREF(asyncio);
    *name = "asyncio";
    return loop;
}

cs_asgi *cs_asgi_new(PyObject *app, const cs_config *cfg, char *err, size_t errlen)
{
    cs_asgi *a = PyMem_Calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->app = Py_NewRef(app);
    a->lifespan_mode = cfg->lifespan;
    a->graceful = cfg->graceful_timeout;
    a->limit = cfg->limit_concurrency;
    a->ws = cfg->ws;
    for (int i = 0; i < NKEYS; i++)
        if (!(a->keys[i] = PyUnicode_InternFromString(key_names[i])))
            goto fail;
    for (int i = 0; i < NMETHODS; i++)
        if (!(a->methods[i] = PyUnicode_InternFromString(methods[i])))
            goto fail;
    err[0] = '\0';
    if (!(a->loop = new_loop(cfg->loop, &a->loop_name, err, errlen)))
        goto fail;
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
    if (!asyncio || !tasks) {
        Py_XDECREF(asyncio);
        Py_XDECREF(tasks);
        goto fail;
    }
    PyObject *r = PyObject_CallMethod(asyncio, "set_event_loop", "O", a->loop);
    Py_XDECREF(r);
    a->task_type = PyObject_GetAttrString(asyncio, "Task");
    a->cancelled_error = PyObject_GetAttrString(asyncio, "CancelledError");
    a->enter_task = PyObject_GetAttrString(tasks, "_enter_task");
    a->leave_task = PyObject_GetAttrString(tasks, "_leave_task");
    Py_DECREF(asyncio);
    Py_DECREF(tasks);
    if (!r || !a->task_type || !a->cancelled_error || !a->enter_task || !a->leave_task)
        goto fail;
    /* asyncio.Task accepts the Cycle as a coroutine once the ABC knows it */
    PyObject *abc = PyImport_ImportModule("collections.abc");
    PyObject *coro_abc = abc ? PyObject_GetAttrString(abc, "Coroutine") : NULL;
    r = coro_abc ? PyObject_CallMethod(coro_abc, "register", "O", (PyObject *)&CycleType) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(coro_abc);
    Py_XDECREF(abc);
    if (!r)
        goto fail;
    a->create_future = PyObject_GetAttrString(a->loop, "create_future");
    a->task_kw = Py_BuildValue("(sss)", "loop", "context", "name");
    a->task_name = PyUnicode_InternFromString("corsac-asgi-request");
    a->asgi_info = Py_BuildValue("{s:s,s:s}", "version", "3.0", "spec_version", "2.4");
    a->root_path = PyUnicode_FromString(cfg->root_path);
    a->done_none = ready_value(Py_NewRef(Py_None));
    PyObject *cap = PyCapsule_New(a, "corsac.asgi", NULL);
    a->poll_cb = cap ? PyCFunction_New(&poll_def, cap) : NULL;
    Py_XDECREF(cap);
    if (!a->create_future || !a->task_kw || !a->task_name || !a->asgi_info || !a->root_path || !a->done_none || !a->poll_cb)
        goto fail;
    Py_ssize_t rl;
    a->root = PyUnicode_AsUTF8AndSize(a->root_path, &rl);
    a->root_len = (size_t)rl;
    while (a->root_len && a->root[a->root_len - 1] == '/')
        a->root_len--;          /* "/mnt/" mounts like "/mnt" */
    if (a->root_len != (size_t)rl) {
        Py_SETREF(a->root_path, PyUnicode_FromStringAndSize(a->root, (Py_ssize_t)a->root_len));
        if (!a->root_path)
            goto fail;
        a->root = PyUnicode_AsUTF8(a->root_path);
    }
    PyObject *ext = Py_BuildValue("{s:{},s:{}}", "http.response.pathsend", "http.response.zerocopysend");
    a->ext_trailers = Py_BuildValue("{s:{},s:{},s:{}}", "http.response.pathsend", "http.response.zerocopysend",
                                    "http.response.trailers");
    a->ext_ws = Py_BuildValue("{s:{}}", "websocket.http.response");
    a->template = PyDict_New();
    if (!ext || !a->ext_trailers || !a->ext_ws || !a->template ||
        PyDict_SetItem(a->template, a->keys[K_TYPE], a->keys[V_HTTP]) < 0 ||
        PyDict_SetItem(a->template, a->keys[K_ASGI], a->asgi_info) < 0 ||
        PyDict_SetItem(a->template, a->keys[K_SCHEME], a->keys[V_HTTP]) < 0 ||
        PyDict_SetItem(a->template, a->keys[K_ROOT_PATH], a->root_path) < 0 ||
        PyDict_SetItem(a->template, a->keys[K_EXTENSIONS], ext) < 0) {
        Py_XDECREF(ext);
        goto fail;
    }
    Py_DECREF(ext);
    return a;
fail:
    if (!err[0]) {
        PyObject *exc = cs_take_exception();
        PyObject *msg = exc ? PyObject_Str(exc) : NULL;
        snprintf(err, errlen, "cannot set up the ASGI worker: %s", msg ? PyUnicode_AsUTF8(msg) : "?");
        Py_XDECREF(msg);
        Py_XDECREF(exc);
        PyErr_Clear();
    }
    cs_asgi_free(a);
    return NULL;
}

void cs_asgi_free(cs_asgi *a)
{
    if (!a)
        return;
    if (a->loop) {
        PyObject *r = PyObject_CallMethod(a->loop, "close", NULL);
        Py_XDECREF(r);
        PyErr_Clear();
    }
    for (int i = 0; i < NKEYS; i++)
        Py_XDECREF(a->keys[i]);
    for (int i = 0; i < NMETHODS; i++)
        Py_XDECREF(a->methods[i]);
    for (int i = 0; i < a->nservers; i++)
        Py_XDECREF(a->servers[i].tuple);
    for (int i = 0; i < HCACHE; i++)
        Py_XDECREF(a->hcache[i].bytes);
    Py_XDECREF((PyObject *)a->ls);
    Py_XDECREF(a->app);
    Py_XDECREF(a->loop);
    Py_XDECREF(a->create_future);
    Py_XDECREF(a->task_type);
    Py_XDECREF(a->task_kw);
    Py_XDECREF(a->task_name);
    Py_XDECREF(a->enter_task);
    Py_XDECREF(a->leave_task);
    Py_XDECREF(a->template);
    Py_XDECREF(a->ext_trailers);
    Py_XDECREF(a->ext_ws);
    Py_XDECREF(a->tls_server);
    for (int i = 0; i < 6; i++)
        Py_XDECREF(a->tls_keys[i]);
    Py_XDECREF(a->asgi_info);
    Py_XDECREF(a->state);
    Py_XDECREF(a->done_none);
    Py_XDECREF(a->cancelled_error);
    Py_XDECREF(a->poll_cb);
    Py_XDECREF(a->root_path);
    PyMem_Free(a);
}

int cs_asgi_add_types(PyObject *module)
{
    if (PyType_Ready(&ReadyType) < 0 || PyType_Ready(&ChanType) < 0 || PyType_Ready(&CycleType) < 0 ||
        PyType_Ready(&LifespanType) < 0)
        return -1;
    ClientDisconnected = PyErr_NewExceptionWithDoc("corsac.ClientDisconnected",
                                                   "send() was called after the client disconnected",
                                                   PyExc_OSError, NULL);
    if (!ClientDisconnected || PyModule_AddObjectRef(module, "ClientDisconnected", ClientDisconnected) < 0)
        return -1;
    return 0;
}
