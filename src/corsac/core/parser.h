/* parser.h - HTTP/1.1 request-head parser and chunked-body decoder (RFC 9112).
 *
 * Pure functions over caller-owned buffers: no I/O, no allocation, no Python.
 * Everything returned points into the caller's buffer (zero copy), so the
 * buffer must stay put while the results are in use.  Strict by default:
 * every request-smuggling form is a named error, never a guess. */
#ifndef CORSAC_PARSER_H
#define CORSAC_PARSER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Return codes of cs_parse_request (a positive value is the head length). */
#define CS_PARSE_ERROR (-1)  /* malformed: see req->status and req->error */
#define CS_PARSE_AGAIN (-2)  /* incomplete: call again with more bytes */

typedef struct {
    const char *name;
    size_t name_len;
    const char *value;   /* leading and trailing whitespace stripped */
    size_t value_len;
} cs_header;

typedef struct {
    size_t max_request_line;   /* bytes in the request line, CRLF excluded: 414 */
    size_t max_fields;         /* header fields: 431 */
    size_t max_field_size;     /* bytes of one "name: value" line: 431 */
} cs_limits;

enum cs_body_kind { CS_BODY_NONE = 0, CS_BODY_LENGTH, CS_BODY_CHUNKED };

typedef struct {
    const char *method;  size_t method_len;
    const char *target;  size_t target_len;   /* raw request-target as sent */
    const char *path;    size_t path_len;     /* still percent-encoded */
    const char *query;   size_t query_len;    /* after '?', without it */
    const char *host;    size_t host_len;     /* Host field, or authority of an absolute-form target */
    int minor_version;                        /* HTTP/1.<minor>: 0 or 1 */
    enum cs_body_kind body;
    uint64_t content_length;                  /* valid when body == CS_BODY_LENGTH */
    unsigned keep_alive : 1;                  /* version default adjusted by Connection */
    unsigned expect_continue : 1;             /* Expect: 100-continue */
    unsigned upgrade : 1;                     /* Connection: upgrade with an Upgrade field */
    unsigned asterisk : 1;                    /* target is "*" (OPTIONS only) */
    unsigned absolute : 1;                    /* target was absolute-form */
    unsigned authority : 1;                   /* target was authority-form (CONNECT only) */
    size_t num_headers;                       /* fields stored in the caller's array */
    size_t dropped_headers;                   /* fields dropped for an '_' in the name */
    int status;                               /* on CS_PARSE_ERROR: 400, 414, 431 or 505 */
    const char *error;                        /* on CS_PARSE_ERROR: short static reason */
} cs_request;

/* Parse one request head from buf[0..len).  Returns the head length (request
 * line through the blank line) when complete, CS_PARSE_AGAIN when more bytes
 * are needed, or CS_PARSE_ERROR.  Fields whose name contains '_' are dropped
 * (counted in dropped_headers) so they can never pose as dashed names in a
 * CGI-style environ.  Empty lines (CRLF) before the request line are skipped.
 * Limits are checked as bytes arrive, so an oversized line fails before it
 * completes.  headers must hold at least lim->max_fields entries. */
int cs_parse_request(const char *buf, size_t len, cs_request *req,
                     cs_header *headers, const cs_limits *lim);

/* RFC 9110 token character (header names, methods); for the response side too. */
int cs_is_tchar(unsigned char c);
/* Value of a hex digit, or -1. */
int cs_hexval(unsigned char c);

/* The next element of a comma-separated field value (RFC 9110 5.6.1),
 * whitespace around it trimmed, empty elements skipped: 1 with it in *item
 * and *len (and *pos moved past it), 0 at the end.  Start with *pos = 0. */
int cs_list_next(const char *v, size_t n, size_t *pos, const char **item, size_t *len);

/* Chunked transfer-coding decoder: a resumable state machine, fed any split of
 * the input.  Trailer fields are validated and discarded; framing, routing and
 * authentication fields in trailers are an error. */
typedef struct {
    int state;
    uint64_t remaining;      /* payload bytes left in the current chunk */
    size_t line_len;         /* bytes seen on the current size or trailer line */
    unsigned trailers;       /* trailer fields seen */
    char name[32];           /* start of the current trailer name, lowercased */
    size_t name_len;
    const char *error;       /* set when cs_chunked_decode returns -1 */
} cs_chunked;

void cs_chunked_init(cs_chunked *d);

/* Decode from in[0..len).  Returns the number of input bytes consumed (which
 * may be less than len), or -1 on malformed input (d->error says why).  When
 * payload bytes are found, *data and *data_len point at them inside `in` and the
 * call returns right after them, so a caller loops until all input is consumed
 * or cs_chunked_done(); otherwise *data_len is 0. */
ssize_t cs_chunked_decode(cs_chunked *d, const char *in, size_t len,
                          const char **data, size_t *data_len);

/* True once the last chunk and the trailer section have been consumed. */
int cs_chunked_done(const cs_chunked *d);

/* Limits on chunked framing itself (not configurable: no real client nears them). */
#define CS_CHUNK_LINE_MAX 4096     /* size line with extensions */
#define CS_TRAILER_MAX_FIELDS 64

#endif
