/* module.c - the corsac._core extension: main(argv) runs the server.
 *
 * The Python shim hands sys.argv here; everything after is C.  Exit codes:
 * 0 clean stop, 1 the app or the sockets could not be set up, 2 usage. */
#include <Python.h>

#include "app.h"
#include "asgi.h"
#include "arbiter.h"
#include "config.h"
#include "log.h"
#include "loop.h"
#include "sock.h"
#include "tls.h"
#include "worker.h"
#include "wsgi.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int usage_error(const char *msg)
{
    fprintf(stderr, "corsac: error: %s\n", msg);
    return 2;
}

typedef struct {
    PyObject *on_starting, *post_fork, *worker_exit;
} hooks;

/* Call a hook with the worker described as an object (id, pid, arbiter_pid),
 * or with no arguments when id is 0.  0, or -1 with a reason in err. */
static int call_hook(PyObject *fn, const char *name, int id, char *err, size_t errlen)
{
    if (!fn)
        return 0;
    PyObject *r;
    if (id) {
        PyObject *types = PyImport_ImportModule("types");
        PyObject *ns_type = types ? PyObject_GetAttrString(types, "SimpleNamespace") : NULL;
        PyObject *kw = Py_BuildValue("{s:i,s:i,s:i}", "id", id, "pid", (int)getpid(), "arbiter_pid",
                                     (int)getppid());
        PyObject *args = PyTuple_New(0);
        PyObject *worker = ns_type && kw && args ? PyObject_Call(ns_type, args, kw) : NULL;
        r = worker ? PyObject_CallOneArg(fn, worker) : NULL;
        Py_XDECREF(worker);
        Py_XDECREF(args);
        Py_XDECREF(kw);
        Py_XDECREF(ns_type);
        Py_XDECREF(types);
    } else {
        r = PyObject_CallNoArgs(fn);
    }
    if (r) {
        Py_DECREF(r);
        return 0;
    }
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyObject *msg = v ? PyObject_Str(v) : NULL;
    snprintf(err, errlen, "the %s hook failed: %s: %s", name, t ? ((PyTypeObject *)t)->tp_name : "error",
             msg && PyUnicode_Check(msg) ? PyUnicode_AsUTF8(msg) : "?");
    PyErr_Clear();
    Py_XDECREF(msg);
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
    return -1;
}

static int load_hooks(const cs_config *cfg, hooks *h, char *err, size_t errlen)
{
    const char *specs[3] = {cfg->on_starting, cfg->post_fork, cfg->worker_exit};
    PyObject **slots[3] = {&h->on_starting, &h->post_fork, &h->worker_exit};
    static const char *const flags[3] = {"--on-starting", "--post-fork", "--worker-exit"};
    for (int i = 0; i < 3; i++) {
        if (!specs[i][0])
            continue;
        char why[1024];
        if (!(*slots[i] = cs_import_callable(specs[i], cfg->app_dir, why, sizeof(why)))) {
            snprintf(err, errlen, "%s: %.900s", flags[i], why);
            return -1;
        }
    }
    return 0;
}

static void drop_hooks(hooks *h)
{
    Py_CLEAR(h->on_starting);
    Py_CLEAR(h->post_fork);
    Py_CLEAR(h->worker_exit);
}

/* In a forked worker: load the app (unless preloaded) and serve. */
static int worker_main(cs_config *cfg, cs_listener *listeners, int nl, PyObject *app, int iface, int nworkers,
                       cs_slot *slot, int id, hooks *hk, const unsigned char *tls_keys)
{
    char title[320], err[1024];
    srandom((unsigned)getpid() ^ (unsigned)cs_now_ms());   /* each worker its own jitter */
    snprintf(title, sizeof(title), "%s: worker %d", cfg->process_name, id);
    cs_set_process_title(title);
    if (call_hook(hk->post_fork, "--post-fork", id, err, sizeof(err)) < 0) {
        fprintf(stderr, "corsac: error: %s\n", err);
        return CS_EXIT_BOOT;
    }
    /* the certificate files are read here, in each new worker: a HUP re-reads them */
    cs_tls *tls = cs_tls_new(cfg, tls_keys, err, sizeof(err));
    if (!tls && cfg->ssl_certfile[0]) {
        fprintf(stderr, "corsac: error: %s\n", err);
        return CS_EXIT_BOOT;
    }
    if (app) {
        Py_INCREF(app);
    } else if (!(app = cs_app_load(cfg, &iface, err, sizeof(err)))) {
        fprintf(stderr, "corsac: error: %s\n", err);
        cs_tls_free(tls);
        return CS_EXIT_BOOT;
    }
    cs_wsgi *wsgi = NULL;
    cs_asgi *asgi = NULL;
    if (iface == CS_IFACE_ASGI) {
        if (!(asgi = cs_asgi_new(app, cfg, err, sizeof(err)))) {
            fprintf(stderr, "corsac: error: %s\n", err);
            Py_DECREF(app);
            return CS_EXIT_BOOT;
        }
        /* lifespan startup: before this worker takes any connection */
        if (cs_asgi_startup(asgi) < 0) {
            cs_asgi_shutdown(asgi);
            cs_asgi_free(asgi);
            Py_DECREF(app);
            return CS_EXIT_APP;
        }
    } else if (!(wsgi = cs_wsgi_new(app, cfg, nworkers > 1))) {
        PyErr_Print();
        Py_DECREF(app);
        return CS_EXIT_BOOT;
    }
    /* --reuse-port: a socket of our own per TCP address, next to the shared
     * one (still accepted here, so nothing queued there is ever stranded) */
    cs_listen_io lio[2 * CS_MAX_BINDS];
    memset(lio, 0, sizeof(lio));
    cs_listener own[CS_MAX_BINDS];
    int nown = 0, nlio = 0;
    for (int i = 0; i < nl; i++) {
        lio[nlio++].l = &listeners[i];
        if (cfg->reuse_port && listeners[i].family != AF_UNIX && listeners[i].server_port[0]) {
            if (cs_listen_again(&listeners[i], (int)cfg->backlog, &own[nown], err, sizeof(err)) < 0)
                cs_log(CS_LOG_WARNING, "%s; this worker uses the shared socket only", err);
            else {
                lio[nlio].own = 1;
                lio[nlio++].l = &own[nown++];
            }
        }
    }

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
    w.ws_deflate = cfg->ws_deflate;
    w.ws_max_size = (uint64_t)cfg->ws_max_size;
    w.ws_ping_ms = (uint64_t)(cfg->ws_ping_interval * 1000);
    w.ws_pong_ms = (uint64_t)(cfg->ws_ping_timeout * 1000);
    w.timeout_ms = (uint64_t)(cfg->timeout * 1000);
    w.request_ms = (uint64_t)(cfg->request_timeout * 1000);
    if (cfg->max_requests) {
        uint64_t jitter = cfg->max_requests_jitter ? (uint64_t)random() % ((uint64_t)cfg->max_requests_jitter + 1) : 0;
        w.max_requests = (uint64_t)cfg->max_requests + jitter;
    }
    w.slot = slot;
    w.lio = lio;
    w.nlisteners = nlio;
    w.threads = (int)cfg->threads;
    w.tls = tls;
    if (asgi) {
        if (cfg->threads > 1 && id == 1)
            cs_log(CS_LOG_WARNING, "--threads does not apply to ASGI apps: they run on the event loop");
        cs_asgi_attach(asgi, &w);
        if (slot)
            snprintf(slot->kind, sizeof(slot->kind), "asgi, %s event loop", cs_asgi_loop_name(asgi));
    } else {
        w.handler = cs_wsgi_handle;
        w.resume = cs_wsgi_resume;
        w.cancel = cs_wsgi_cancel;
        w.handler_data = wsgi;
        if (slot)
            snprintf(slot->kind, sizeof(slot->kind), "wsgi, %ld thread%s", cfg->threads,
                     cfg->threads > 1 ? "s" : " (app runs on the I/O thread)");
    }
    int rc = cs_worker_run(&w);
    if (asgi)
        cs_asgi_shutdown(asgi);
    if (call_hook(hk->worker_exit, "--worker-exit", id, err, sizeof(err)) < 0)
        cs_log(CS_LOG_ERROR, "%s", err);
    cs_log(CS_LOG_INFO, "Worker exiting (pid: %d)", (int)getpid());
    for (int i = 0; i < nown; i++)
        cs_listener_close(&own[i]);
    cs_wsgi_free(wsgi);
    cs_asgi_free(asgi);
    cs_tls_free(tls);
    Py_DECREF(app);
    return rc;
}

static int write_pid_file(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0 || rename(tmp, path) < 0) {
        cs_log(CS_LOG_ERROR, "cannot write the pid file %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

typedef struct {
    const cs_config *cfg;
    const cs_listener *listeners;
    int nl, nworkers;
} banner_args;

/* Start-up lines, printed once the first worker is ready to serve. */
static void print_banner(void *data, const char *kind)
{
    const banner_args *b = data;
    const cs_config *cfg = b->cfg;
    cs_log(CS_LOG_INFO, "Starting corsac %s", CORSAC_VERSION);
    for (int i = 0; i < b->nl; i++)
        cs_log(CS_LOG_INFO, "Listening at: %s (%d)", b->listeners[i].display, (int)getpid());
    cs_log(CS_LOG_INFO, "Using worker: %s", kind[0] ? kind : "?");
    cs_log(CS_LOG_INFO, "Using %d worker%s%s", b->nworkers, b->nworkers > 1 ? "s" : "",
           cfg->workers ? "" : " (one per CPU this process may use)");
}

static int run(cs_config *cfg)
{
    char err[1024];
    int rc = 1, nl = 0, iface = CS_IFACE_AUTO;
    PyObject *app = NULL;
    cs_listener listeners[CS_MAX_BINDS];
    hooks hk = {0};
    cs_log_set_level(cfg->log_level);
    int nworkers = cfg->workers ? (int)cfg->workers : cs_cpu_count();
    if (cfg->log_file[0] && cs_log_open(cfg->log_file) < 0) {
        fprintf(stderr, "corsac: error: cannot open --log-file %s: %s\n", cfg->log_file, strerror(errno));
        return 1;
    }
    if (load_hooks(cfg, &hk, err, sizeof(err)) < 0) {
        fprintf(stderr, "corsac: error: %s\n", err);
        return 1;
    }

    if (cfg->preload) {
        if (!(app = cs_app_load(cfg, &iface, err, sizeof(err)))) {
            fprintf(stderr, "corsac: error: %s\n", err);
            return 1;
        }
    }
    cs_listen_opts lo = {.backlog = (int)cfg->backlog, .reuse_port = cfg->reuse_port, .umask = -1};
    if (cfg->umask[0]) {
        char *end;
        long m = strtol(cfg->umask, &end, 8);
        if (*end || m < 0 || m > 0777) {
            fprintf(stderr, "corsac: error: --umask: expected an octal mode like 007, got '%s'\n", cfg->umask);
            rc = 2;
            goto out;
        }
        lo.umask = (int)m;
    }
    /* TLS: check the files now for a clear start-up error (each worker
     * loads them again); ticket keys made here are shared by every worker */
    unsigned char tls_keys[CS_TLS_KEYS];
    err[0] = 0;
    cs_tls *probe = cs_tls_new(cfg, NULL, err, sizeof(err));
    if (!probe && err[0]) {
        fprintf(stderr, "corsac: error: %s\n", err);
        goto out;
    }
    if (probe) {
        cs_tls_free(probe);
        if (cs_tls_make_keys(tls_keys) < 0) {
            fprintf(stderr, "corsac: error: TLS: no random bytes for the session ticket keys\n");
            goto out;
        }
    }
    for (; nl < cfg->nbinds; nl++) {
        if (cs_listen(cfg->binds[nl], &lo, &listeners[nl], err, sizeof(err)) < 0) {
            fprintf(stderr, "corsac: error: %s\n", err);
            goto out;
        }
        if (cfg->ssl_certfile[0] && strncmp(listeners[nl].display, "http://", 7) == 0) {
            char d[sizeof(listeners[nl].display)];
            snprintf(d, sizeof(d), "https://%s", listeners[nl].display + 7);
            memcpy(listeners[nl].display, d, sizeof(d));
        }
    }
    char title[320];
    snprintf(title, sizeof(title), "%s: arbiter", cfg->process_name);
    cs_set_process_title(title);
    banner_args banner = {cfg, listeners, nl, nworkers};
    int pid_written = cfg->pid_file[0] && write_pid_file(cfg->pid_file) == 0;

    if (call_hook(hk.on_starting, "--on-starting", 0, err, sizeof(err)) < 0) {
        fprintf(stderr, "corsac: error: %s\n", err);
        rc = 1;
        goto out;
    }
    cs_slot *slot = NULL;
    int id = 0;
    rc = cs_arbiter_run(cfg, nworkers, print_banner, &banner, &slot, &id);
    if (rc == CS_IN_WORKER) {
        rc = worker_main(cfg, listeners, nl, app, iface, nworkers, slot, id, &hk, tls_keys);
        /* the socket files and the pid file belong to the arbiter */
        for (int i = 0; i < nl; i++) {
            free(listeners[i].unix_path);
            listeners[i].unix_path = NULL;
        }
        pid_written = 0;
    }
    if (pid_written)
        unlink(cfg->pid_file);
out:
    for (int i = 0; i < nl; i++)
        cs_listener_close(&listeners[i]);
    Py_XDECREF(app);
    drop_hooks(&hk);
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
    if (PyModule_AddStringConstant(m, "__version__", CORSAC_VERSION) < 0 || cs_wsgi_add_types(m) < 0 ||
        cs_asgi_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
