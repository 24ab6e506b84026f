/* pyerr.c - taking and logging Python exceptions for the bridges. */
#include "pyerr.h"
#include "log.h"

PyObject *cs_take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (!t)
        return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb && v)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
#endif
}

void cs_log_exception(int level, PyObject *exc, const char *what)
{
    if (!exc) {
        cs_log(level, "%s", what);
        return;
    }
    /* the reason on the line itself, the traceback after it */
    PyObject *msg = PyObject_Str(exc);
    const char *m = msg ? PyUnicode_AsUTF8(msg) : NULL;
    cs_log(level, "%s: %s: %.500s", what, Py_TYPE(exc)->tp_name, m ? m : "?");
    Py_XDECREF(msg);
    PyErr_Clear();
    if (cs_log_enabled(level)) {
        PyObject *tb = PyImport_ImportModule("traceback");
        PyObject *lines = tb ? PyObject_CallMethod(tb, "format_exception", "O", exc) : NULL;
        PyObject *sep = lines ? PyUnicode_FromString("") : NULL;
        PyObject *text = sep ? PyUnicode_Join(sep, lines) : NULL;
        Py_ssize_t n;
        const char *s = text ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
        if (s)
            cs_log_raw(s, (size_t)n);
        Py_XDECREF(text);
        Py_XDECREF(sep);
        Py_XDECREF(lines);
        Py_XDECREF(tb);
    }
    PyErr_Clear();
    Py_DECREF(exc);
}
