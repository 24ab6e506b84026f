/* wsgi.c - WSGI bridge: environ, start_response, wsgi.input, file_wrapper.
 *
 * Hot-path choices: the constant part of the environ is a template dict per
 * listener copied with PyDict_Copy; keys are interned once; common header
 * names map to cached HTTP_* keys; the app is called with vectorcall; a list
 * or tuple body goes out in one writev with a Content-Length we compute. */
#include "wsgi.h"
#include "log.h"
#include "pyerr.h"
#include "resp.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TEMPLATES 16
#define BATCH 64            /* body items per writev */
#define INPUT_CHUNK 65536

/* Interned environ keys and constant values. */
enum {
    K_REQUEST_METHOD, K_SCRIPT_NAME, K_PATH_INFO, K_QUERY_STRING, K_CONTENT_TYPE, K_CONTENT_LENGTH,
    K_SERVER_NAME, K_SERVER_PORT, K_SERVER_PROTOCOL, K_REMOTE_ADDR, K_REMOTE_PORT, K_RAW_URI,
    K_SERVER_SOFTWARE, K_WSGI_VERSION, K_WSGI_URL_SCHEME, K_WSGI_INPUT, K_WSGI_ERRORS, K_WSGI_MULTITHREAD,
    K_WSGI_MULTIPROCESS, K_WSGI_RUN_ONCE, K_WSGI_FILE_WRAPPER, K_WSGI_INPUT_TERMINATED, NKEYS
};
static const char *const key_names[NKEYS] = {
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
    "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "RAW_URI",
    "SERVER_SOFTWARE", "wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors", "wsgi.multithread",
    "wsgi.multiprocess", "wsgi.run_once", "wsgi.file_wrapper", "wsgi.input_terminated"};

/* Request fields whose environ keys are built once. */
static const char *const common_headers[] = {
    "host", "user-agent", "accept", "accept-encoding", "accept-language", "connection", "cookie",
    "referer", "cache-control", "origin", "pragma", "authorization", "if-none-match",
    "if-modified-since", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
    "x-real-ip", "x-requested-with", "x-request-id", "upgrade-insecure-requests", "sec-fetch-site",
    "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-user", "sec-ch-ua", "sec-ch-ua-mobile",
    "sec-ch-ua-platform", "dnt", "te", "range", "if-range", "expect", "upgrade", "content-encoding",
    "accept-charset", "forwarded", "keep-alive", NULL};
#define NCOMMON (sizeof(common_headers) / sizeof(common_headers[0]) - 1)

static const char *const methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", NULL};
#define NMETHODS 7

struct cs_wsgi {
    PyObject *app;
    PyObject *keys[NKEYS];
    PyObject *hkeys[NCOMMON];
    size_t hkey_len[NCOMMON];
    PyObject *methods[NMETHODS];
    PyObject *proto10, *proto11, *proto2, *empty, *http, *https, *on;
    PyObject *root_path;            /* str */
    const char *root;               /* UTF-8 of root_path */
    size_t root_len;
    PyObject *errors;               /* sys.stderr */
    PyObject *empty_input;          /* shared wsgi.input for requests without a body */
    int multithread;
    int multiprocess;
    struct {
        const char *server_name;    /* identifies the listener */
        PyObject *dict;
    } templates[MAX_TEMPLATES];
    int ntemplates;
};

/* ---- small helpers -------------------------------------------------------- */

static PyObject *latin1(const char *s, size_t n) { return PyUnicode_DecodeLatin1(s, (Py_ssize_t)n, NULL); }

/* Log the current exception with its traceback, under `what`. */
static void log_exception(cs_wsgi *w, const char *what, PyObject *environ)
{
    PyObject *exc = cs_take_exception();
    const char *method = "?", *uri = "?";
    if (environ) {
        PyObject *m = PyDict_GetItemWithError(environ, w->keys[K_REQUEST_METHOD]);
        PyObject *u = PyDict_GetItemWithError(environ, w->keys[K_RAW_URI]);
        if (m && PyUnicode_Check(m))
            method = PyUnicode_AsUTF8(m);
        if (u && PyUnicode_Check(u))
            uri = PyUnicode_AsUTF8(u);
        PyErr_Clear();
    }
    char line[1200];
    snprintf(line, sizeof(line), "%s %s %s", what, method ? method : "?", uri ? uri : "?");
    cs_log_exception(CS_LOG_ERROR, exc, line);
}

/* ---- wsgi.input ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    cs_req *req;            /* NULL once the request is over, or for no body */
    char *buf;
    size_t pos, len;
    int eof;
} Input;

static int input_error(Input *self)
{
    int st = self->req ? self->req->body_error : 0;
    const char *why = st == 413   ? "request body too large"
                      : st == 408 ? "timed out reading the request body"
                      : st == 400 ? "malformed request body"
                                  : "client disconnected while sending the request body";
    PyErr_SetString(PyExc_OSError, why);
    return -1;
}

/* Refill the internal buffer.  1 data, 0 end, -1 error (raised). */
static int input_fill(Input *self)
{
    if (self->eof || !self->req)
        return 0;
    if (!self->buf && !(self->buf = PyMem_Malloc(INPUT_CHUNK))) {
        PyErr_NoMemory();
        return -1;
    }
    if (self->pos == self->len)
        self->pos = self->len = 0;
    ssize_t n = self->req->ops->read(self->req, self->buf + self->len, INPUT_CHUNK - self->len);
    if (n < 0)
        return input_error(self);
    if (n == 0) {
        self->eof = 1;
        return 0;
    }
    self->len += (size_t)n;
    return 1;
}

static int parse_size(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t *size)
{
    *size = -1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "expected at most one argument");
        return -1;
    }
    if (nargs == 1 && args[0] != Py_None) {
        *size = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
        if (*size == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static PyObject *input_read(Input *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size;
    if (parse_size(args, nargs, &size) < 0)
        return NULL;
    if (size < 0) {
        /* everything: grow a bytes object */
        Py_ssize_t cap = 65536, used = 0;
        if (self->req && self->req->content_length > 0 && self->req->content_length < (1 << 30))
            cap = (Py_ssize_t)self->req->content_length + 1;
        PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
        if (!out)
            return NULL;
        for (;;) {
            if (self->pos < self->len) {
                size_t n = self->len - self->pos;
                if ((Py_ssize_t)n > cap - used) {
                    cap = (used + (Py_ssize_t)n) * 2;
                    if (_PyBytes_Resize(&out, cap) < 0)
                        return NULL;
                }
                memcpy(PyBytes_AS_STRING(out) + used, self->buf + self->pos, n);
                used += (Py_ssize_t)n;
                self->pos = self->len;
            }
            int r = input_fill(self);
            if (r < 0) {
                Py_DECREF(out);
                return NULL;
            }
            if (r == 0)
                break;
        }
        if (_PyBytes_Resize(&out, used) < 0)
            return NULL;
        return out;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (!out)
        return NULL;
    char *dst = PyBytes_AS_STRING(out);
    Py_ssize_t got = 0;
    while (got < size) {
        if (self->pos < self->len) {
            size_t n = self->len - self->pos;
            if ((Py_ssize_t)n > size - got)
                n = (size_t)(size - got);
            memcpy(dst + got, self->buf + self->pos, n);
            self->pos += n;
            got += (Py_ssize_t)n;
            continue;
        }
        if (self->eof || !self->req)
            break;
        if (size - got >= INPUT_CHUNK) {
            /* large reads go straight into the result */
            ssize_t n = self->req->ops->read(self->req, dst + got, (size_t)(size - got));
            if (n < 0) {
                Py_DECREF(out);
                input_error(self);
                return NULL;
            }
            if (n == 0)
                self->eof = 1;
            got += n;
            continue;
        }
        int r = input_fill(self);
        if (r < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    if (got != size && _PyBytes_Resize(&out, got) < 0)
        return NULL;
    return out;
}

static PyObject *readline_impl(Input *self, Py_ssize_t limit)
{
    char *acc = NULL;          /* only for lines that span refills */
    size_t used = 0;
    PyObject *out = NULL;
    for (;;) {
        if (self->pos < self->len) {
            size_t avail = self->len - self->pos;
            if (limit >= 0 && avail > (size_t)limit - used)
                avail = (size_t)limit - used;
            const char *start = self->buf + self->pos;
            const char *nl = memchr(start, '\n', avail);
            size_t take = nl ? (size_t)(nl - start) + 1 : avail;
            int done = nl || (limit >= 0 && used + take >= (size_t)limit);
            if (done && !acc) {
                self->pos += take;
                return PyBytes_FromStringAndSize(start, (Py_ssize_t)take);
            }
            char *grown = PyMem_Realloc(acc, used + take ? used + take : 1);
            if (!grown) {
                PyMem_Free(acc);
                return PyErr_NoMemory();
            }
            acc = grown;
            memcpy(acc + used, start, take);
            used += take;
            self->pos += take;
            if (done)
                break;
        }
        int r = input_fill(self);
        if (r < 0) {
            PyMem_Free(acc);
            return NULL;
        }
        if (r == 0)
            break;
    }
    out = PyBytes_FromStringAndSize(acc ? acc : "", (Py_ssize_t)used);
    PyMem_Free(acc);
    return out;
}

static PyObject *input_readline(Input *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t limit;
    if (parse_size(args, nargs, &limit) < 0)
        return NULL;
    return readline_impl(self, limit);
}

static PyObject *input_readlines(Input *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t hint, total = 0;
    if (parse_size(args, nargs, &hint) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    for (;;) {
        PyObject *line = readline_impl(self, -1);
        if (!line) {
            Py_DECREF(list);
            return NULL;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(line);
        if (n == 0) {
            Py_DECREF(line);
            break;
        }
        int rc = PyList_Append(list, line);
        Py_DECREF(line);
        if (rc < 0) {
            Py_DECREF(list);
            return NULL;
        }
        total += n;
        if (hint > 0 && total >= hint)
            break;
    }
    return list;
}

static PyObject *input_iternext(Input *self)
{
    PyObject *line = readline_impl(self, -1);
    if (line && PyBytes_GET_SIZE(line) == 0) {
        Py_DECREF(line);
        return NULL;   /* StopIteration */
    }
    return line;
}

static void input_dealloc(Input *self)
{
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef input_methods[] = {
    {"read", (PyCFunction)(void (*)(void))input_read, METH_FASTCALL, "read([size]) -> bytes"},
    {"readline", (PyCFunction)(void (*)(void))input_readline, METH_FASTCALL, "readline([size]) -> bytes"},
    {"readlines", (PyCFunction)(void (*)(void))input_readlines, METH_FASTCALL, "readlines([hint]) -> list"},
    {0},
};

static PyTypeObject InputType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "corsac._core.Input",
    .tp_doc = "wsgi.input: the request body as a stream",
    .tp_basicsize = sizeof(Input),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)input_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)input_iternext,
    .tp_methods = input_methods,
};

/* ---- wsgi.file_wrapper ---------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *filelike;
    Py_ssize_t blksize;
} FileWrapper;

static int fw_init(FileWrapper *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"filelike", "blksize", NULL};
    PyObject *f;
    Py_ssize_t blk = 8192;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|n", kwlist, &f, &blk))
        return -1;
    Py_INCREF(f);
    Py_XSETREF(self->filelike, f);
    self->blksize = blk > 0 ? blk : 8192;
    return 0;
}

static PyObject *fw_iternext(FileWrapper *self)
{
    PyObject *data = PyObject_CallMethod(self->filelike, "read", "n", self->blksize);
    if (data && PyBytes_Check(data) && PyBytes_GET_SIZE(data) == 0) {
        Py_DECREF(data);
        return NULL;
    }
    return data;
}

static PyObject *fw_close(FileWrapper *self, PyObject *unused)
{
    (void)unused;
    PyObject *close = PyObject_GetAttrString(self->filelike, "close");
    if (!close) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *r = PyObject_CallNoArgs(close);
    Py_DECREF(close);
    return r;
}

static void fw_dealloc(FileWrapper *self)
{
    Py_XDECREF(self->filelike);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef fw_methods[] = {
    {"close", (PyCFunction)fw_close, METH_NOARGS, "close the wrapped file"},
    {0},
};

static PyTypeObject FileWrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "corsac._core.FileWrapper",
    .tp_doc = "wsgi.file_wrapper: served with sendfile when it wraps a regular file",
    .tp_basicsize = sizeof(FileWrapper),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fw_init,
    .tp_dealloc = (destructor)fw_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)fw_iternext,
    .tp_methods = fw_methods,
};

/* ---- start_response ------------------------------------------------------- */

#define INLINE_STORE 1024
#define INLINE_HDRS 24

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    cs_req *req;                /* NULL once the request is over */
    int called, sent, gone;
    cs_resp_head head;
    char *store;                /* reason and header text, owned */
    cs_header *hdrs;
    PyObject *writer;
    /* the request in flight, kept here so a suspended response can resume */
    PyObject *environ;
    PyObject *input;            /* our Input, or NULL for the shared empty one */
    PyObject *result;
    PyObject *it;
    char inline_store[INLINE_STORE];
    cs_header inline_hdrs[INLINE_HDRS];
} StartResponse;

/* Latin-1 bytes of a str, or NULL (ValueError set) when it holds other characters. */
static const char *latin1_view(PyObject *s, Py_ssize_t *n, const char *what)
{
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "invalid response %s: expected str, got %.100s", what, Py_TYPE(s)->tp_name);
        return NULL;
    }
    if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND) {
        PyErr_Format(PyExc_ValueError, "invalid response %s: not latin-1: %R", what, s);
        return NULL;
    }
    *n = PyUnicode_GET_LENGTH(s);
    return (const char *)PyUnicode_1BYTE_DATA(s);
}

static void sr_reset_store(StartResponse *self)
{
    if (self->store != self->inline_store)
        PyMem_Free(self->store);
    if (self->hdrs != self->inline_hdrs)
        PyMem_Free(self->hdrs);
    self->store = self->inline_store;
    self->hdrs = self->inline_hdrs;
}

/* Validate status and headers and copy them into self (two passes: size, copy). */
static int sr_set(StartResponse *self, PyObject *status, PyObject *headers)
{
    Py_ssize_t slen;
    const char *s = latin1_view(status, &slen, "status");
    if (!s)
        return -1;
    if (slen < 4 || s[3] != ' ' || s[0] < '2' || s[0] > '9' || s[1] < '0' || s[1] > '9' || s[2] < '0' ||
        s[2] > '9') {
        PyErr_Format(PyExc_ValueError, "invalid response status %R: expected 'NNN reason' with NNN >= 200",
                     status);
        return -1;
    }
    for (Py_ssize_t i = 4; i < slen; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            PyErr_Format(PyExc_ValueError, "invalid response status %R: control character", status);
            return -1;
        }
    }
    PyObject *seq = PySequence_Fast(headers, "invalid response headers: expected a list of (name, value) tuples");
    if (!seq)
        return -1;
    Py_ssize_t nh = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    size_t need = (size_t)slen;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *t = items[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2) {
            PyErr_Format(PyExc_TypeError, "invalid response header %R: expected a (name, value) tuple", t);
            goto fail;
        }
        Py_ssize_t nl = 0, vl = 0;
        const char *n = latin1_view(PyTuple_GET_ITEM(t, 0), &nl, "header name");
        const char *v = n ? latin1_view(PyTuple_GET_ITEM(t, 1), &vl, "header value") : NULL;
        if (!v)
            goto fail;
        if (!cs_field_name_ok(n, (size_t)nl)) {
            PyErr_Format(PyExc_ValueError, "invalid response header name %R", PyTuple_GET_ITEM(t, 0));
            goto fail;
        }
        if (!cs_field_value_ok(v, (size_t)vl)) {
            PyErr_Format(PyExc_ValueError, "invalid response header value %R for %R: control character",
                         PyTuple_GET_ITEM(t, 1), PyTuple_GET_ITEM(t, 0));
            goto fail;
        }
        need += (size_t)(nl + vl);
    }

    sr_reset_store(self);
    if (need > INLINE_STORE && !(self->store = PyMem_Malloc(need))) {
        self->store = self->inline_store;
        PyErr_NoMemory();
        goto fail;
    }
    if (nh > INLINE_HDRS && !(self->hdrs = PyMem_Malloc(sizeof(cs_header) * (size_t)nh))) {
        self->hdrs = self->inline_hdrs;
        PyErr_NoMemory();
        goto fail;
    }
    cs_resp_head *h = &self->head;
    memset(h, 0, sizeof(*h));
    h->status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    h->content_length = -1;
    char *p = self->store;
    memcpy(p, s + 4, (size_t)slen - 4);
    h->reason = p;
    h->reason_len = (size_t)slen - 4;
    p += slen - 4;
    size_t k = 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        Py_ssize_t nl = 0, svl = 0;   /* validated in the first pass */
        const char *n = latin1_view(PyTuple_GET_ITEM(items[i], 0), &nl, "header name");
        const char *v = latin1_view(PyTuple_GET_ITEM(items[i], 1), &svl, "header value");
        size_t vl = (size_t)svl;
        int kind = cs_resp_field(h, n, (size_t)nl, &v, &vl);
        if (kind == CS_FIELD_BAD_LENGTH)
            goto bad_cl;
        if (kind == CS_FIELD_DROP)
            continue;
        memcpy(p, n, (size_t)nl);
        self->hdrs[k].name = p;
        self->hdrs[k].name_len = (size_t)nl;
        p += nl;
        memcpy(p, v, (size_t)vl);
        self->hdrs[k].value = p;
        self->hdrs[k].value_len = (size_t)vl;
        p += vl;
        k++;
    }
    h->headers = self->hdrs;
    h->num_headers = k;
    Py_DECREF(seq);
    return 0;
bad_cl:
    PyErr_SetString(PyExc_ValueError, "invalid response header: bad Content-Length");
fail:
    Py_DECREF(seq);
    return -1;
}

static PyObject *sr_write(PyObject *self, PyObject *data);
static int sr_clear(StartResponse *self);
static PyMethodDef write_def = {"write", (PyCFunction)sr_write, METH_O, "write(data): send body bytes now"};

/* start_response(status, headers, exc_info=None), called through vectorcall:
 * no argument tuple is built on the hot path. */
static PyObject *sr_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    StartResponse *self = (StartResponse *)op;
    static const char *const names[3] = {"status", "headers", "exc_info"};
    PyObject *a[3] = {NULL, NULL, Py_None};
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "start_response() takes at most 3 arguments (%zd given)", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        a[i] = args[i];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        int slot = -1;
        for (int j = 0; j < 3; j++)
            if (PyUnicode_CompareWithASCIIString(k, names[j]) == 0)
                slot = j;
        if (slot < 0 || (slot < nargs)) {
            PyErr_Format(PyExc_TypeError, "start_response() got an unexpected or repeated argument %R", k);
            return NULL;
        }
        a[slot] = args[nargs + i];
    }
    if (!a[0] || !a[1]) {
        PyErr_SetString(PyExc_TypeError, "start_response() needs status and headers");
        return NULL;
    }
    PyObject *status = a[0], *headers = a[1], *exc_info = a[2];
    if (exc_info != Py_None) {
        if (self->sent) {
            /* PEP 3333: too late to change the status; re-raise the app's error */
            if (!PyTuple_Check(exc_info) || PyTuple_GET_SIZE(exc_info) != 3) {
                PyErr_SetString(PyExc_TypeError, "exc_info must be a (type, value, traceback) tuple");
                return NULL;
            }
            PyObject *t = PyTuple_GET_ITEM(exc_info, 0), *v = PyTuple_GET_ITEM(exc_info, 1),
                     *tb = PyTuple_GET_ITEM(exc_info, 2);
            Py_INCREF(t);
            Py_INCREF(v);
            Py_INCREF(tb);
            PyErr_Restore(t, v, tb == Py_None ? NULL : tb);
            if (tb == Py_None)
                Py_DECREF(tb);
            return NULL;
        }
    } else if (self->called) {
        PyErr_SetString(PyExc_RuntimeError, "start_response called a second time without exc_info");
        return NULL;
    }
    if (sr_set(self, status, headers) < 0)
        return NULL;
    self->called = 1;
    if (!self->writer && !(self->writer = PyCFunction_New(&write_def, (PyObject *)self)))
        return NULL;
    Py_INCREF(self->writer);
    return self->writer;
}

/* Send body bytes (head first if not yet sent).  0 ok, 1 sent but the client
 * is behind (only with CS_SEND_MAY_SUSPEND), -1 with an exception set for
 * app errors, -2 when the client is gone (no exception). */
static int emit(StartResponse *self, const struct iovec *iov, int n, int flags)
{
    if (!self->req) {
        PyErr_SetString(PyExc_RuntimeError, "the response has already ended");
        return -1;
    }
    if (!self->called) {
        PyErr_SetString(PyExc_RuntimeError, "response body produced before start_response was called");
        return -1;
    }
    const cs_resp_head *h = self->sent ? NULL : &self->head;
    self->sent = 1;
    int rc = self->req->ops->send(self->req, h, iov, n, flags);
    if (rc < 0) {
        self->gone = 1;
        return -2;
    }
    return rc;
}

static PyObject *sr_write(PyObject *op, PyObject *data)
{
    StartResponse *self = (StartResponse *)op;
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "write() expects bytes, got %.100s", Py_TYPE(data)->tp_name);
        return NULL;
    }
    if (PyBytes_GET_SIZE(data) == 0 && self->sent)
        Py_RETURN_NONE;
    struct iovec v = {PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data)};
    int rc = emit(self, &v, 1, 0);
    if (rc == -1)
        return NULL;
    if (rc == -2) {
        PyErr_SetString(PyExc_OSError, "client disconnected");
        return NULL;
    }
    Py_RETURN_NONE;
}

static void sr_dealloc(StartResponse *self)
{
    PyObject_GC_UnTrack(self);
    sr_reset_store(self);
    sr_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int sr_traverse(StartResponse *self, visitproc visit, void *arg)
{
    Py_VISIT(self->writer);
    Py_VISIT(self->environ);
    Py_VISIT(self->input);
    Py_VISIT(self->result);
    Py_VISIT(self->it);
    return 0;
}

static int sr_clear(StartResponse *self)
{
    Py_CLEAR(self->writer);
    Py_CLEAR(self->environ);
    Py_CLEAR(self->input);
    Py_CLEAR(self->result);
    Py_CLEAR(self->it);
    return 0;
}

static PyTypeObject StartResponseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "corsac._core.StartResponse",
    .tp_doc = "start_response(status, headers, exc_info=None) -> write",
    .tp_basicsize = sizeof(StartResponse),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(StartResponse, vectorcall),
    .tp_dealloc = (destructor)sr_dealloc,
    .tp_traverse = (traverseproc)sr_traverse,
    .tp_clear = (inquiry)sr_clear,
    .tp_call = PyVectorcall_Call,
};

/* ---- environ -------------------------------------------------------------- */

static PyObject *template_for(cs_wsgi *w, const cs_req *r)
{
    for (int i = 0; i < w->ntemplates; i++)
        if (w->templates[i].server_name == r->server_name)
            return w->templates[i].dict;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    PyObject *version = Py_BuildValue("(ii)", 1, 0);
    PyObject *sname = PyUnicode_FromString(r->server_name);
    PyObject *sport = PyUnicode_FromString(r->server_port);
    PyObject *soft = PyUnicode_FromString("corsac/" CORSAC_VERSION);
    int bad = !version || !sname || !sport || !soft ||
              PyDict_SetItem(d, w->keys[K_WSGI_VERSION], version) ||
              PyDict_SetItem(d, w->keys[K_WSGI_URL_SCHEME], w->http) ||
              PyDict_SetItem(d, w->keys[K_WSGI_ERRORS], w->errors) ||
              PyDict_SetItem(d, w->keys[K_WSGI_MULTITHREAD], w->multithread ? Py_True : Py_False) ||
              PyDict_SetItem(d, w->keys[K_WSGI_MULTIPROCESS], w->multiprocess ? Py_True : Py_False) ||
              PyDict_SetItem(d, w->keys[K_WSGI_RUN_ONCE], Py_False) ||
              PyDict_SetItem(d, w->keys[K_WSGI_FILE_WRAPPER], (PyObject *)&FileWrapperType) ||
              PyDict_SetItem(d, w->keys[K_WSGI_INPUT_TERMINATED], Py_True) ||
              PyDict_SetItem(d, w->keys[K_SERVER_SOFTWARE], soft) ||
              PyDict_SetItem(d, w->keys[K_SCRIPT_NAME], w->root_path) ||
              PyDict_SetItem(d, w->keys[K_SERVER_NAME], sname) ||
              PyDict_SetItem(d, w->keys[K_SERVER_PORT], sport);
    Py_XDECREF(version);
    Py_XDECREF(sname);
    Py_XDECREF(sport);
    Py_XDECREF(soft);
    if (bad || w->ntemplates == MAX_TEMPLATES) {
        if (!bad)
            PyErr_SetString(PyExc_RuntimeError, "too many listeners");
        Py_DECREF(d);
        return NULL;
    }
    w->templates[w->ntemplates].server_name = r->server_name;
    w->templates[w->ntemplates++].dict = d;
    return d;
}

/* PATH_INFO: percent-decoded bytes as latin-1, SCRIPT_NAME prefix removed. */
static PyObject *path_info(cs_wsgi *w, const cs_req *r)
{
    char stack[2048];
    const char *src = r->path;
    size_t n = r->path_len;
    if (n == 0) {
        src = "/";
        n = 1;
    }
    char *buf = n <= sizeof(stack) ? stack : PyMem_Malloc(n);
    if (!buf)
        return PyErr_NoMemory();
    size_t o = 0;
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
    const char *p = buf;
    if (w->root_len && o >= w->root_len && memcmp(buf, w->root, w->root_len) == 0 &&
        (o == w->root_len || buf[w->root_len] == '/')) {
        p += w->root_len;
        o -= w->root_len;
    }
    PyObject *s = latin1(p, o);
    if (buf != stack)
        PyMem_Free(buf);
    return s;
}

/* Environ key for a request field name: cached for common names. */
static PyObject *header_key(cs_wsgi *w, const char *name, size_t n, int *is_cookie)
{
    *is_cookie = n == 6 && strncasecmp(name, "cookie", 6) == 0;
    for (size_t i = 0; i < NCOMMON; i++)
        if (w->hkey_len[i] == n && strncasecmp(common_headers[i], name, n) == 0) {
            Py_INCREF(w->hkeys[i]);
            return w->hkeys[i];
        }
    char stack[256];
    char *buf = n + 5 <= sizeof(stack) ? stack : PyMem_Malloc(n + 5);
    if (!buf)
        return PyErr_NoMemory();
    memcpy(buf, "HTTP_", 5);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        buf[5 + i] = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? (char)(c - 32) : c;
    }
    PyObject *k = PyUnicode_FromStringAndSize(buf, (Py_ssize_t)(n + 5));
    if (buf != stack)
        PyMem_Free(buf);
    return k;
}

static PyObject *port_str(int port)
{
    char buf[8], *p = buf + sizeof(buf);
    unsigned v = (unsigned)port;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v && p > buf);
    return PyUnicode_FromStringAndSize(p, buf + sizeof(buf) - p);
}

static int set_steal(PyObject *d, PyObject *k, PyObject *v)
{
    if (!v)
        return -1;
    int rc = PyDict_SetItem(d, k, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *build_environ(cs_wsgi *w, cs_req *r, Input **input_out)
{
    PyObject *tmpl = template_for(w, r);
    if (!tmpl)
        return NULL;
    PyObject *env = PyDict_Copy(tmpl);
    if (!env)
        return NULL;

    PyObject *method = NULL;
    for (int i = 0; i < NMETHODS; i++)
        if (strlen(methods[i]) == r->method_len && memcmp(methods[i], r->method, r->method_len) == 0) {
            method = w->methods[i];
            Py_INCREF(method);
            break;
        }
    if (!method)
        method = latin1(r->method, r->method_len);
    if (set_steal(env, w->keys[K_REQUEST_METHOD], method) ||
        set_steal(env, w->keys[K_PATH_INFO], path_info(w, r)) ||
        PyDict_SetItem(env, w->keys[K_SERVER_PROTOCOL],
                       r->protocol[5] == '2' ? w->proto2 : r->protocol[7] == '1' ? w->proto11 : w->proto10) ||
        set_steal(env, w->keys[K_RAW_URI], latin1(r->target, r->target_len)) ||
        set_steal(env, w->keys[K_REMOTE_ADDR], PyUnicode_FromString(r->peer_addr)) ||
        set_steal(env, w->keys[K_REMOTE_PORT], port_str(r->peer_port)))
        goto fail;
    if (r->tls && (PyDict_SetItem(env, w->keys[K_WSGI_URL_SCHEME], w->https) ||
                   PyDict_SetItemString(env, "HTTPS", w->on)))
        goto fail;
    if (r->query_len) {
        if (set_steal(env, w->keys[K_QUERY_STRING], latin1(r->query, r->query_len)))
            goto fail;
    } else if (PyDict_SetItem(env, w->keys[K_QUERY_STRING], w->empty)) {
        goto fail;
    }

    for (size_t i = 0; i < r->num_headers; i++) {
        const cs_header *h = &r->headers[i];
        PyObject *key;
        int cookie = 0;
        if (h->name_len == 12 && strncasecmp(h->name, "content-type", 12) == 0) {
            key = w->keys[K_CONTENT_TYPE];
            Py_INCREF(key);
        } else if (h->name_len == 14 && strncasecmp(h->name, "content-length", 14) == 0) {
            key = w->keys[K_CONTENT_LENGTH];
            Py_INCREF(key);
        } else if (!(key = header_key(w, h->name, h->name_len, &cookie))) {
            goto fail;
        }
        PyObject *val = latin1(h->value, h->value_len);
        if (!val) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *cur = PyDict_SetDefault(env, key, val);
        if (cur && cur != val) {
            /* repeated field: one comma-joined value (cookies join with "; ") */
            PyObject *joined = PyUnicode_FromFormat(cookie ? "%U; %U" : "%U, %U", cur, val);
            cur = joined && PyDict_SetItem(env, key, joined) == 0 ? joined : NULL;
            Py_XDECREF(joined);
        }
        Py_DECREF(key);
        Py_DECREF(val);
        if (!cur)
            goto fail;
    }

    Input *in;
    if (r->has_body) {
        in = PyObject_New(Input, &InputType);
        if (!in)
            goto fail;
        in->req = r;
        in->buf = NULL;
        in->pos = in->len = 0;
        in->eof = 0;
        *input_out = in;
    } else {
        in = (Input *)w->empty_input;
        *input_out = NULL;
    }
    if (PyDict_SetItem(env, w->keys[K_WSGI_INPUT], (PyObject *)in)) {
        if (*input_out)
            Py_DECREF(in);
        *input_out = NULL;
        goto fail;
    }
    return env;
fail:
    Py_DECREF(env);
    return NULL;
}

/* ---- running the app ------------------------------------------------------ */

/* A response of our own for an app failure before anything was sent. */
static void send_plain(cs_req *r, int status, const char *reason)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "%s\n", reason);
    static const cs_header ct = {"Content-Type", 12, "text/plain; charset=utf-8", 25};
    cs_resp_head h = {.status = status, .reason = reason, .reason_len = strlen(reason), .headers = &ct,
                      .num_headers = 1, .content_length = n};
    struct iovec v = {body, (size_t)n};
    r->ops->send(r, &h, &v, 1, CS_SEND_FIN);
}

static void fail_request(cs_wsgi *w, cs_req *r, StartResponse *sr, PyObject *environ, const char *what)
{
    if (sr->gone || r->body_error == CS_BODY_GONE) {
        PyErr_Clear();               /* the client left: nobody to answer */
        r->ops->abort(r);
        return;
    }
    log_exception(w, what, environ);
    if (sr->sent) {
        r->ops->abort(r);            /* too late for a status: cut the response */
        return;
    }
    switch (r->body_error) {
    case 413: send_plain(r, 413, "Content Too Large"); break;
    case 408: send_plain(r, 408, "Request Timeout"); break;
    case 400: send_plain(r, 400, "Bad Request"); break;
    default: send_plain(r, 500, "Internal Server Error"); break;
    }
}

/* wsgi.file_wrapper over a regular file: sendfile.  1 handled, 0 not applicable. */
static int try_sendfile(cs_req *r, StartResponse *sr, FileWrapper *fw)
{
    if (!sr->called)
        return 0;
    PyObject *fo = PyObject_CallMethod(fw->filelike, "fileno", NULL);
    if (!fo) {
        PyErr_Clear();
        return 0;
    }
    int fd = PyLong_AsLong(fo);
    Py_DECREF(fo);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        PyErr_Clear();
        return 0;
    }
    off_t pos;
    PyObject *t = PyObject_CallMethod(fw->filelike, "tell", NULL);   /* Python-level position */
    if (t) {
        pos = (off_t)PyLong_AsLongLong(t);
        Py_DECREF(t);
    } else {
        PyErr_Clear();
        pos = lseek(fd, 0, SEEK_CUR);
    }
    if (pos < 0 || pos > st.st_size) {
        PyErr_Clear();
        return 0;
    }
    uint64_t len = (uint64_t)(st.st_size - pos);
    if (sr->head.content_length >= 0 && (uint64_t)sr->head.content_length < len)
        len = (uint64_t)sr->head.content_length;
    if (sr->head.content_length < 0)
        sr->head.content_length = (int64_t)len;
    int dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dupfd < 0) {
        cs_log(CS_LOG_WARNING, "wsgi: dup of a file_wrapper fd failed (%s); iterating instead", strerror(errno));
        return 0;
    }
    sr->sent = 1;
    if (r->ops->sendfile(r, &sr->head, dupfd, pos, len, CS_SEND_FIN) < 0)
        sr->gone = 1;
    return 1;
}

/* Send a list or tuple body in one call that ends the response: the bytes
 * are all in memory already, so nothing is gained by pacing them. */
static int send_sequence(StartResponse *sr, PyObject *seq)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    struct iovec stack[BATCH], *v = stack;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyBytes_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "response body items must be bytes, got %.100s",
                         Py_TYPE(items[i])->tp_name);
            return -1;
        }
    if (n > BATCH && !(v = PyMem_Malloc(sizeof(*v) * (size_t)n))) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        v[i].iov_base = PyBytes_AS_STRING(items[i]);
        v[i].iov_len = (size_t)PyBytes_GET_SIZE(items[i]);
    }
    int rc = emit(sr, v, (int)n, CS_SEND_FIN);
    if (v != stack)
        PyMem_Free(v);
    return rc;
}

/* Pull from the response iterator until it ends or the client falls behind.
 * 0 done, 1 suspended (resume later), -1 app error (exception set), -2 gone. */
static int pump(StartResponse *sr)
{
    PyObject *item;
    while ((item = PyIter_Next(sr->it))) {
        int rc = 0;
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "response body items must be bytes, got %.100s", Py_TYPE(item)->tp_name);
            rc = -1;
        } else if (PyBytes_GET_SIZE(item)) {
            struct iovec v = {PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item)};
            rc = emit(sr, &v, 1, CS_SEND_MAY_SUSPEND);
        }
        Py_DECREF(item);
        if (rc)
            return rc;
    }
    if (PyErr_Occurred())
        return -1;
    return emit(sr, NULL, 0, CS_SEND_FIN);
}

static void call_close(cs_wsgi *w, PyObject *result, PyObject *environ)
{
    if (PyList_CheckExact(result) || PyTuple_CheckExact(result) || PyBytes_CheckExact(result))
        return;
    PyObject *close = PyObject_GetAttrString(result, "close");
    if (!close) {
        PyErr_Clear();
        return;
    }
    PyObject *r = PyObject_CallNoArgs(close);
    Py_DECREF(close);
    if (r)
        Py_DECREF(r);
    else
        log_exception(w, "Error closing the response of", environ);
}

/* The response is over (rc from pump/send): report, close, let go. */
static void complete(cs_wsgi *w, cs_req *req, StartResponse *sr, int rc)
{
    if (rc == -1)
        fail_request(w, req, sr, sr->environ, "Error handling request");
    else if (rc == -2)
        req->ops->abort(req);
    if (sr->result)
        call_close(w, sr->result, sr->environ);
    /* the app may keep these objects: they must no longer reach the request */
    sr->req = NULL;
    if (sr->input)
        ((Input *)sr->input)->req = NULL;
    sr_clear(sr);
    Py_DECREF(sr);
}

void cs_wsgi_handle(cs_req *req, void *data)
{
    cs_wsgi *w = data;
    Input *input = NULL;
    PyObject *environ = build_environ(w, req, &input);
    if (!environ) {
        log_exception(w, "Error building the environ for", NULL);
        send_plain(req, 500, "Internal Server Error");
        return;
    }
    StartResponse *sr = PyObject_GC_New(StartResponse, &StartResponseType);
    if (!sr) {
        log_exception(w, "Error handling request", environ);
        send_plain(req, 500, "Internal Server Error");
        Py_DECREF(environ);
        Py_XDECREF(input);
        return;
    }
    sr->vectorcall = sr_vectorcall;
    sr->req = req;
    sr->called = sr->sent = sr->gone = 0;
    sr->store = sr->inline_store;
    sr->hdrs = sr->inline_hdrs;
    sr->writer = NULL;
    sr->environ = environ;
    sr->input = (PyObject *)input;
    sr->result = sr->it = NULL;
    PyObject_GC_Track(sr);

    PyObject *args[3] = {NULL, environ, (PyObject *)sr};
    PyObject *result = PyObject_Vectorcall(w->app, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    int rc;
    if (!result) {
        rc = -1;
    } else {
        sr->result = result;
        if (Py_IS_TYPE(result, &FileWrapperType) && try_sendfile(req, sr, (FileWrapper *)result))
            rc = sr->gone ? -2 : 0;
        else if (PyList_CheckExact(result) || PyTuple_CheckExact(result))
            rc = send_sequence(sr, result);
        else if (!(sr->it = PyObject_GetIter(result)))
            rc = -1;
        else
            rc = pump(sr);
    }
    if (rc == 1) {
        req->bridge = sr;
        req->suspended = 1;
        return;
    }
    complete(w, req, sr, rc);
}

void cs_wsgi_resume(cs_req *req, void *data)
{
    StartResponse *sr = req->bridge;
    int rc = pump(sr);
    if (rc == 1)
        return;
    req->suspended = 0;
    req->bridge = NULL;
    complete(data, req, sr, rc);
}

void cs_wsgi_cancel(cs_req *req, void *data)
{
    StartResponse *sr = req->bridge;
    req->bridge = NULL;
    sr->gone = 1;
    complete(data, req, sr, -2);
}

/* ---- setup ---------------------------------------------------------------- */

int cs_wsgi_add_types(PyObject *module)
{
    if (PyType_Ready(&InputType) < 0 || PyType_Ready(&FileWrapperType) < 0 ||
        PyType_Ready(&StartResponseType) < 0)
        return -1;
    Py_INCREF(&FileWrapperType);
    if (PyModule_AddObject(module, "FileWrapper", (PyObject *)&FileWrapperType) < 0) {
        Py_DECREF(&FileWrapperType);
        return -1;
    }
    return 0;
}

cs_wsgi *cs_wsgi_new(PyObject *app, const cs_config *cfg, int multiprocess)
{
    cs_wsgi *w = PyMem_Calloc(1, sizeof(*w));
    if (!w)
        return (cs_wsgi *)PyErr_NoMemory();
    Py_INCREF(app);
    w->app = app;
    w->multithread = cfg->threads > 1;
    w->multiprocess = multiprocess;
    for (int i = 0; i < NKEYS; i++)
        if (!(w->keys[i] = PyUnicode_InternFromString(key_names[i])))
            goto fail;
    for (size_t i = 0; i < NCOMMON; i++) {
        int cookie;
        w->hkey_len[i] = (size_t)-1;   /* no cache hit while building */
        if (!(w->hkeys[i] = header_key(w, common_headers[i], strlen(common_headers[i]), &cookie)))
            goto fail;
        PyUnicode_InternInPlace(&w->hkeys[i]);
        w->hkey_len[i] = strlen(common_headers[i]);
    }
    for (int i = 0; i < NMETHODS; i++)
        if (!(w->methods[i] = PyUnicode_InternFromString(methods[i])))
            goto fail;
    if (!(w->proto10 = PyUnicode_InternFromString("HTTP/1.0")) ||
        !(w->proto11 = PyUnicode_InternFromString("HTTP/1.1")) || !(w->empty = PyUnicode_FromString("")) ||
        !(w->http = PyUnicode_InternFromString("http")) || !(w->https = PyUnicode_InternFromString("https")) ||
        !(w->proto2 = PyUnicode_InternFromString("HTTP/2")) || !(w->on = PyUnicode_InternFromString("on")))
        goto fail;
    /* SCRIPT_NAME: without a trailing slash */
    size_t rl = strlen(cfg->root_path);
    while (rl && cfg->root_path[rl - 1] == '/')
        rl--;
    if (!(w->root_path = PyUnicode_DecodeUTF8(cfg->root_path, (Py_ssize_t)rl, NULL)))
        goto fail;
    w->root = PyUnicode_AsUTF8AndSize(w->root_path, (Py_ssize_t *)&w->root_len);
    if (!w->root)
        goto fail;
    w->errors = PySys_GetObject("stderr");
    if (!w->errors) {
        PyErr_SetString(PyExc_RuntimeError, "sys.stderr is missing");
        goto fail;
    }
    Py_INCREF(w->errors);
    Input *empty = PyObject_New(Input, &InputType);
    if (!empty)
        goto fail;
    empty->req = NULL;
    empty->buf = NULL;
    empty->pos = empty->len = 0;
    empty->eof = 1;
    w->empty_input = (PyObject *)empty;
    return w;
fail:
    cs_wsgi_free(w);
    return NULL;
}

void cs_wsgi_free(cs_wsgi *w)
{
    if (!w)
        return;
    Py_XDECREF(w->app);
    for (int i = 0; i < NKEYS; i++)
        Py_XDECREF(w->keys[i]);
    for (size_t i = 0; i < NCOMMON; i++)
        Py_XDECREF(w->hkeys[i]);
    for (int i = 0; i < NMETHODS; i++)
        Py_XDECREF(w->methods[i]);
    Py_XDECREF(w->proto10);
    Py_XDECREF(w->proto11);
    Py_XDECREF(w->empty);
    Py_XDECREF(w->http);
    Py_XDECREF(w->https);
    Py_XDECREF(w->proto2);
    Py_XDECREF(w->on);
    Py_XDECREF(w->root_path);
    Py_XDECREF(w->errors);
    Py_XDECREF(w->empty_input);
    for (int i = 0; i < w->ntemplates; i++)
        Py_XDECREF(w->templates[i].dict);
    PyMem_Free(w);
}
