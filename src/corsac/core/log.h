/* log.h - the error log: leveled, timestamped lines in gunicorn's format.
 *
 * Each line goes out with a single write(2), so lines from threads and from
 * processes sharing the file never interleave. */
#ifndef CORSAC_LOG_H
#define CORSAC_LOG_H

#include <stddef.h>

enum { CS_LOG_DEBUG, CS_LOG_INFO, CS_LOG_WARNING, CS_LOG_ERROR, CS_LOG_CRITICAL };

extern const char *const cs_log_level_names[];   /* "debug" ... "critical", NULL */

void cs_log_set_level(int level);

/* Send the log (and the process's stderr, so the app's own errors land in
 * the same place) to a file, opened for appending.  0, or -1 with errno. */
int cs_log_open(const char *path);
/* Reopen the log file after rotation (USR1); no-op when logging to stderr. */
void cs_log_reopen(void);
int cs_log_enabled(int level);
void cs_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Write text as-is (already formatted, e.g. a traceback). */
void cs_log_raw(const char *text, size_t len);

#endif
