/* pyerr.h - Python errors as the bridges report them: take the current
 * exception as one object, and log its traceback after a summary line.
 * Error paths only; GIL held. */
#ifndef CORSAC_PYERR_H
#define CORSAC_PYERR_H

#include <Python.h>

/* The current exception, normalized, with its traceback (NULL if none). */
PyObject *cs_take_exception(void);

/* Log "<what>: <type>: <message>" at level, then exc's traceback; steals
 * exc (NULL: just the line).  Leaves no Python error set. */
void cs_log_exception(int level, PyObject *exc, const char *what);

#endif
