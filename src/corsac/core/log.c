/* log.c - error log lines: "[date] [pid] [LEVEL] message". */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *const cs_log_level_names[] = {"debug", "info", "warning", "error", "critical", NULL};
static const char *const level_tags[] = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"};

/* Process-wide sink settings: set at start-up (the path again on reopen). */
static int log_level = CS_LOG_INFO;
static const int log_fd = 2;          /* always stderr; --log-file points stderr at the file */
static char log_path[4096];

void cs_log_set_level(int level) { log_level = level; }

int cs_log_open(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    if (dup2(fd, log_fd) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    close(fd);
    if (path != log_path)
        snprintf(log_path, sizeof(log_path), "%s", path);
    return 0;
}

void cs_log_reopen(void)
{
    if (!log_path[0])
        return;
    if (cs_log_open(log_path) < 0)
        cs_log(CS_LOG_ERROR, "cannot reopen the log file %s: %s", log_path, strerror(errno));
    else
        cs_log(CS_LOG_INFO, "Reopened the log file");
}

int cs_log_enabled(int level) { return level >= log_level; }

void cs_log_raw(const char *text, size_t len)
{
    while (len > 0) {
        ssize_t n = write(log_fd, text, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;   /* nowhere left to report a failing log */
        text += n;
        len -= (size_t)n;
    }
}

void cs_log(int level, const char *fmt, ...)
{
    if (level < log_level)
        return;
    char line[4096];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    size_t n = strftime(line, sizeof(line), "[%Y-%m-%d %H:%M:%S %z] ", &tm);
    n += (size_t)snprintf(line + n, sizeof(line) - n, "[%ld] [%s] ", (long)getpid(), level_tags[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n = n + (size_t)m > sizeof(line) - 2 ? sizeof(line) - 2 : n + (size_t)m;
    line[n++] = '\n';
    cs_log_raw(line, n);
}
