/* resp.c - validating and classifying the response fields apps hand over. */
#include "resp.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include "parser.h"

int cs_field_name_ok(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!cs_is_tchar((unsigned char)s[i]))
            return 0;
    return 1;
}

int cs_field_value_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

static int ieq(const char *a, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(a, lit, n) == 0;
}

int cs_resp_field(cs_resp_head *h, const char *n, size_t nl, const char **vp, size_t *vlp)
{
    const char *v = *vp;
    size_t vl = *vlp;
    while (vl && (v[0] == ' ' || v[0] == '\t'))
        v++, vl--;
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    *vp = v;
    *vlp = vl;
    if (ieq(n, nl, "content-length")) {
        int64_t cl = 0;
        if (vl == 0 || vl > 18)
            return CS_FIELD_BAD_LENGTH;
        for (size_t j = 0; j < vl; j++) {
            if (v[j] < '0' || v[j] > '9')
                return CS_FIELD_BAD_LENGTH;
            cl = cl * 10 + (v[j] - '0');
        }
        if (h->content_length >= 0 && h->content_length != cl)
            return CS_FIELD_BAD_LENGTH;
        h->content_length = cl;
        return CS_FIELD_DROP;
    }
    if (ieq(n, nl, "connection")) {
        for (size_t j = 0; j + 5 <= vl; j++)
            if (strncasecmp(v + j, "close", 5) == 0)
                h->app_close = 1;
        return CS_FIELD_DROP;
    }
    /* hop-by-hop framing is the protocol's to decide */
    if (ieq(n, nl, "transfer-encoding") || ieq(n, nl, "keep-alive"))
        return CS_FIELD_DROP;
    if (ieq(n, nl, "server"))
        h->has_server = 1;
    else if (ieq(n, nl, "date"))
        h->has_date = 1;
    return CS_FIELD_KEEP;
}

const char *cs_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    case 511: return "Network Authentication Required";
    default: return "Unknown";
    }
}

/* Formatted at most once a second per thread. */
const char *cs_http_date(void)
{
    static _Thread_local time_t cached_sec;
    static _Thread_local char line[64];
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    if (now != cached_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(line, sizeof(line), "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n", days[tm.tm_wday],
                 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        cached_sec = now;
    }
    return line;
}
