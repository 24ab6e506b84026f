/* module.c - the corsac._core extension: main(argv) runs the server.
 *
 * The Python shim hands sys.argv here; everything after is C.  Exit codes:
 * 0 clean stop, 1 the app or the sockets could not be set up, 2 usage. */
#include <Python.h>

#include "app.h"
#include "config.h"
#include "log.h"
#include "sock.h"
#include "worker.h"
#include "wsgi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int usage_error(const char *msg)
{
    fprintf(stderr, "corsac: error: %s\n", msg);
    return 2;
}

static int run(cs_config *cfg)
{
    char err[1024];
    int iface;
    cs_log_set_level(cfg->log_level);
    PyObject *app = cs_app_load(cfg, &iface, err, sizeof(err));
    if (!app) {
        fprintf(stderr, "corsac: error: %s\n", err);
        return 1;
    }
    if (iface == CS_IFACE_ASGI) {
        fprintf(stderr, "corsac: error: '%s' is an ASGI application; the ASGI worker is not available yet\n",
                cfg->app);
        Py_DECREF(app);
        return 1;
    }
    int rc = 1;
    cs_listener listeners[CS_MAX_BINDS];
    cs_listen_io lio[CS_MAX_BINDS];
    int nl = 0;
    cs_wsgi *wsgi = NULL;
    for (; nl < cfg->nbinds; nl++)
        if (cs_listen(cfg->binds[nl], (int)cfg->backlog, &listeners[nl], err, sizeof(err)) < 0) {
            fprintf(stderr, "corsac: error: %s\n", err);
            goto out;
        }
    if (!(wsgi = cs_wsgi_new(app, cfg))) {
        PyErr_Print();
        goto out;
    }
    cs_log(CS_LOG_INFO, "Starting corsac %s", CORSAC_VERSION);
    for (int i = 0; i < nl; i++) {
        lio[i].l = &listeners[i];
        cs_log(CS_LOG_INFO, "Listening at: %s (%d)", listeners[i].display, (int)getpid());
    }
    cs_log(CS_LOG_INFO, "Using worker: wsgi, %ld thread%s%s", cfg->threads, cfg->threads > 1 ? "s" : "",
           cfg->threads > 1 ? "" : " (app runs on the I/O thread)");

    cs_worker w;
    memset(&w, 0, sizeof(w));
    w.cfg = cfg;
    w.limits.max_request_line = (size_t)cfg->limit_request_line;
    w.limits.max_fields = (size_t)cfg->limit_request_fields;
    w.limits.max_field_size = (size_t)cfg->limit_request_field_size;
    w.max_head = w.limits.max_request_line + w.limits.max_fields * (w.limits.max_field_size + 2) + 16;
    w.keepalive_ms = (uint64_t)(cfg->timeout_keep_alive * 1000);
    w.header_ms = (uint64_t)(cfg->header_read_timeout * 1000);
    w.body_ms = (uint64_t)(cfg->body_read_timeout * 1000);
    w.graceful_ms = (uint64_t)(cfg->graceful_timeout * 1000);
    w.body_limit = (uint64_t)cfg->limit_request_body;
    w.lio = lio;
    w.nlisteners = nl;
    w.threads = (int)cfg->threads;
    w.handler = cs_wsgi_handle;
    w.resume = cs_wsgi_resume;
    w.cancel = cs_wsgi_cancel;
    w.handler_data = wsgi;
    rc = cs_worker_run(&w);
    cs_log(CS_LOG_INFO, "Shutting down: %s", rc == 0 ? "done" : "error");
out:
    for (int i = 0; i < nl; i++)
        cs_listener_close(&listeners[i]);
    cs_wsgi_free(wsgi);
    Py_DECREF(app);
    return rc;
}

static PyObject *core_main(PyObject *self, PyObject *args)
{
    PyObject *argv = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "|O:main", &argv))
        return NULL;
    if (!argv || argv == Py_None)
        argv = PySys_GetObject("argv");
    PyObject *seq = argv ? PySequence_Fast(argv, "argv must be a sequence of str") : NULL;
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    char **cargv = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!cargv) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *s = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        if (!s) {
            PyMem_Free(cargv);
            Py_DECREF(seq);
            return NULL;
        }
        cargv[i] = (char *)s;
    }
    cs_config cfg;
    char err[1024];
    int rc;
    int st = cs_config_load(&cfg, (int)n, cargv, err, sizeof(err));
    if (st == CS_CONFIG_EXIT)
        rc = 0;
    else if (st == CS_CONFIG_ERROR)
        rc = usage_error(err);
    else
        rc = run(&cfg);
    fflush(stdout);
    fflush(stderr);
    cs_config_free(&cfg);
    PyMem_Free(cargv);
    Py_DECREF(seq);
    return PyLong_FromLong(rc);
}

static PyMethodDef core_methods[] = {
    {"main", core_main, METH_VARARGS, "main(argv=None) -> exit code: run the Corsac server"},
    {0},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, .m_name = "corsac._core", .m_doc = "Corsac's C core", .m_size = -1,
    .m_methods = core_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    if (PyModule_AddStringConstant(m, "__version__", CORSAC_VERSION) < 0 || cs_wsgi_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
