/* app.c - import the application named on the command line. */
#include "app.h"
#include "log.h"

#include <stdarg.h>
#include <string.h>

static PyObject *fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static PyObject *fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return NULL;
}

/* "Type: message (file:line)" for the pending exception; logs the full
 * traceback at debug level; clears the error. */
static void describe_exception(char *out, size_t outlen)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    const char *tname = t ? ((PyTypeObject *)t)->tp_name : "error";
    PyObject *msg = v ? PyObject_Str(v) : NULL;
    const char *m = msg ? PyUnicode_AsUTF8(msg) : NULL;
    char where[512] = "";
    if (tb) {
        PyTracebackObject *last = (PyTracebackObject *)tb;
        while (last->tb_next)
            last = last->tb_next;
        PyCodeObject *code = PyFrame_GetCode(last->tb_frame);
        const char *fname = code ? PyUnicode_AsUTF8(code->co_filename) : NULL;
        if (fname)
            snprintf(where, sizeof(where), " (%s, line %d)", fname, PyFrame_GetLineNumber(last->tb_frame));
        Py_XDECREF(code);
    }
    snprintf(out, outlen, "%s: %s%s", tname, m ? m : "?", where);
    if (cs_log_enabled(CS_LOG_DEBUG) && t) {
        Py_XINCREF(t);
        Py_XINCREF(v);
        Py_XINCREF(tb);
        PyErr_Restore(t, v, tb);
        PyErr_Print();
    }
    PyErr_Clear();
    Py_XDECREF(msg);
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
}

static int prepend_sys_path(const char *dir)
{
    PyObject *os_path = PyImport_ImportModule("os.path");
    if (!os_path)
        return -1;
    PyObject *abs = PyObject_CallMethod(os_path, "abspath", "s", dir);
    Py_DECREF(os_path);
    if (!abs)
        return -1;
    PyObject *path = PySys_GetObject("path");   /* borrowed */
    int rc = -1;
    if (path && PyList_Check(path)) {
        int has = PySequence_Contains(path, abs);
        rc = has < 0 ? -1 : has ? 0 : PyList_Insert(path, 0, abs);
    }
    Py_DECREF(abs);
    return rc;
}

/* ASGI when the callable (or its __call__) is a coroutine function. */
static int is_asgi(PyObject *app)
{
    PyObject *inspect = PyImport_ImportModule("inspect");
    if (!inspect)
        return -1;
    int asgi = 0;
    PyObject *r = PyObject_CallMethod(inspect, "iscoroutinefunction", "O", app);
    if (r) {
        asgi = PyObject_IsTrue(r);
        Py_DECREF(r);
    }
    if (asgi == 0 && !PyFunction_Check(app) && !PyMethod_Check(app)) {
        PyObject *call = PyObject_GetAttrString(app, "__call__");
        if (call) {
            r = PyObject_CallMethod(inspect, "iscoroutinefunction", "O", call);
            if (r) {
                asgi = PyObject_IsTrue(r);
                Py_DECREF(r);
            }
            Py_DECREF(call);
        }
    }
    PyErr_Clear();
    Py_DECREF(inspect);
    return asgi > 0;
}

/* Import "module:attr.path" (or just "module", trying `defaults`).  New
 * reference, or NULL with a one-line reason in err. */
static PyObject *import_object(const char *spec, const char *app_dir, const char *const *defaults, char *err,
                               size_t errlen)
{
    char why[1024];
    if (prepend_sys_path(app_dir) < 0) {
        describe_exception(why, sizeof(why));
        return fail(err, errlen, "cannot use --app-dir %s: %s", app_dir, why);
    }
    const char *colon = strchr(spec, ':');
    char modname[512];
    size_t ml = colon ? (size_t)(colon - spec) : strlen(spec);
    if (ml == 0 || ml >= sizeof(modname) || (colon && !colon[1]) || (!colon && !defaults))
        return fail(err, errlen, "invalid '%s': expected module:attribute", spec);
    memcpy(modname, spec, ml);
    modname[ml] = '\0';
    PyObject *mod = PyImport_ImportModule(modname);
    if (!mod) {
        if (PyErr_ExceptionMatches(PyExc_ModuleNotFoundError)) {
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            PyErr_NormalizeException(&t, &v, &tb);
            PyObject *name = v ? PyObject_GetAttrString(v, "name") : NULL;
            const char *missing = name && PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
            int ours = missing && (strcmp(missing, modname) == 0 ||
                                   (strncmp(modname, missing, strlen(missing)) == 0 &&
                                    modname[strlen(missing)] == '.'));
            if (ours) {
                fail(err, errlen, "cannot import module '%s': no module named '%s' (searched %s and sys.path)",
                     modname, missing, app_dir);
                PyErr_Clear();
                Py_XDECREF(name);
                Py_XDECREF(t);
                Py_XDECREF(v);
                Py_XDECREF(tb);
                return NULL;
            }
            Py_XDECREF(name);
            PyErr_Restore(t, v, tb);
        }
        describe_exception(why, sizeof(why));
        return fail(err, errlen, "error while importing '%s': %s", modname, why);
    }

    const char *attrs = colon ? colon + 1 : NULL;
    PyObject *obj = NULL;
    if (!attrs) {
        for (int i = 0; defaults[i] && !obj; i++) {
            obj = PyObject_GetAttrString(mod, defaults[i]);
            if (!obj)
                PyErr_Clear();
        }
        if (!obj) {
            Py_DECREF(mod);
            return fail(err, errlen, "module '%s' has no attribute '%s'%s; name it as %s:ATTR", modname,
                        defaults[0], defaults[1] ? " or the like" : "", modname);
        }
    } else {
        obj = mod;
        Py_INCREF(obj);
        const char *p = attrs;
        while (*p) {
            const char *dot = strchr(p, '.');
            size_t n = dot ? (size_t)(dot - p) : strlen(p);
            PyObject *name = PyUnicode_FromStringAndSize(p, (Py_ssize_t)n);
            PyObject *next = name ? PyObject_GetAttr(obj, name) : NULL;
            Py_XDECREF(name);
            if (!next) {
                int missing = PyErr_ExceptionMatches(PyExc_AttributeError);
                describe_exception(why, sizeof(why));
                Py_DECREF(obj);
                Py_DECREF(mod);
                if (missing)
                    return fail(err, errlen, "module '%s' has no attribute '%s'", modname, attrs);
                return fail(err, errlen, "error looking up '%s' in '%s': %s", attrs, modname, why);
            }
            Py_DECREF(obj);
            obj = next;
            p += n + (dot ? 1 : 0);
        }
    }
    Py_DECREF(mod);

    return obj;
}

PyObject *cs_import_callable(const char *spec, const char *app_dir, char *err, size_t errlen)
{
    PyObject *obj = import_object(spec, app_dir, NULL, err, errlen);
    if (obj && !PyCallable_Check(obj)) {
        Py_DECREF(obj);
        return fail(err, errlen, "'%s' is not callable", spec);
    }
    return obj;
}

PyObject *cs_app_load(const cs_config *cfg, int *interface, char *err, size_t errlen)
{
    static const char *const defaults[] = {"application", "app", NULL};
    char why[1024];
    const char *spec = cfg->app;
    PyObject *obj = import_object(spec, cfg->app_dir, defaults, err, errlen);
    if (!obj)
        return NULL;
    if (cfg->factory) {
        PyObject *made = PyObject_CallNoArgs(obj);
        Py_DECREF(obj);
        if (!made) {
            describe_exception(why, sizeof(why));
            return fail(err, errlen, "the app factory '%s' failed: %s", spec, why);
        }
        obj = made;
    }
    if (!PyCallable_Check(obj)) {
        Py_DECREF(obj);
        return fail(err, errlen, "'%s' is not callable%s", spec, cfg->factory ? "" : " (use --factory?)");
    }
    if (cfg->interface == CS_IFACE_AUTO) {
        int a = is_asgi(obj);
        *interface = a > 0 ? CS_IFACE_ASGI : CS_IFACE_WSGI;
    } else {
        *interface = cfg->interface;
    }
    return obj;
}
