/* app.h - finding the application: "module:attr" import, --app-dir,
 * --factory, and WSGI/ASGI detection.  Start-up only, never per request. */
#ifndef CORSAC_APP_H
#define CORSAC_APP_H

#include <Python.h>

#include "config.h"

/* Import and return the app (new reference).  On failure returns NULL with a
 * one-line reason in err and no Python error left set.  *interface receives
 * CS_IFACE_WSGI or CS_IFACE_ASGI. */
PyObject *cs_app_load(const cs_config *cfg, int *interface, char *err, size_t errlen);

/* Import a "module:func" hook (same rules as the app).  NULL with err set. */
PyObject *cs_import_callable(const char *spec, const char *app_dir, char *err, size_t errlen);

#endif
