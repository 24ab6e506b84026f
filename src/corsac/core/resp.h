/* resp.h - response head fields as the bridges receive them from apps.
 *
 * Both bridges (WSGI and ASGI) validate the app's status line and fields the
 * same way and leave framing to the protocol: Content-Length is parsed into
 * the head, Connection: close noted, Transfer-Encoding and Keep-Alive
 * dropped, Server and Date noted so the protocol does not add its own. */
#ifndef CORSAC_RESP_H
#define CORSAC_RESP_H

#include <stddef.h>

#include "request.h"

/* A field name is a non-empty token; a value has no control characters
 * other than tab (so no CR, LF or NUL).  1 valid, 0 not. */
int cs_field_name_ok(const char *s, size_t n);
int cs_field_value_ok(const char *s, size_t n);

enum { CS_FIELD_KEEP = 1, CS_FIELD_DROP = 0, CS_FIELD_BAD_LENGTH = -1 };

/* Classify a validated field for head h (whose content_length starts at -1)
 * and trim the value's surrounding whitespace in place (*v, *vl).  KEEP: copy
 * it into the head; DROP: the protocol writes it, or it is hop-by-hop. */
int cs_resp_field(cs_resp_head *h, const char *n, size_t nl, const char **v, size_t *vl);

/* The standard reason phrase of a status code ("Unknown" if none). */
const char *cs_status_reason(int status);

/* The "Date: <IMF-fixdate>\r\n" line (37 bytes) for now; the date alone is
 * the 29 bytes from offset 6. */
const char *cs_http_date(void);

#endif
