/* fuzz_chunked.c - libFuzzer target for the chunked decoder.
 *
 * Input layout: two bytes that seed the split sizes, then the chunked body.
 * The body is decoded once in a single piece and once split into pieces of
 * pseudo-random sizes (each piece in its own exact-size heap block); both runs
 * must agree on error/done, the bytes consumed and the decoded payload, and
 * every payload pointer must lie inside the bytes the call consumed. */
#include "parser.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz_chunked: invariant failed: %s (line %d)\n", #cond, \
                    __LINE__);                                                        \
            abort();                                                                  \
        }                                                                             \
    } while (0)

typedef struct {
    int err, done;
    size_t consumed;
    unsigned char *out;
    size_t out_len;
} result;

/* Decode body[0..len) in pieces; max_piece 0 means one piece. */
static void decode(const unsigned char *body, size_t len, uint32_t seed, size_t max_piece,
                   result *res)
{
    cs_chunked d;
    size_t pos = 0;
    uint32_t x = seed | 1u;

    memset(res, 0, sizeof *res);
    res->out = malloc(len ? len : 1);
    CHECK(res->out != NULL);
    memset(&d, 0x5A, sizeof d);
    cs_chunked_init(&d);
    CHECK(!cs_chunked_done(&d));

    while (pos < len) {
        size_t n = len - pos, off = 0;
        char *piece;
        if (max_piece) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if (n > (size_t)(x % max_piece) + 1)
                n = (size_t)(x % max_piece) + 1;
        }
        piece = malloc(n);
        CHECK(piece != NULL);
        memcpy(piece, body + pos, n);
        while (off < n) {
            const char *data = (const char *)&d;   /* not inside piece */
            size_t dl = (size_t)-1;
            ssize_t r = cs_chunked_decode(&d, piece + off, n - off, &data, &dl);
            if (r < 0) {
                CHECK(r == -1);
                CHECK(d.error != NULL && d.error[0] != '\0');
                res->err = 1;
                break;
            }
            CHECK((size_t)r <= n - off);
            if (dl) {
                CHECK(data >= piece + off && dl <= (size_t)r &&
                      (size_t)(data - (piece + off)) <= (size_t)r - dl);
                CHECK(data + dl == piece + off + r);   /* returns right after the payload */
                CHECK(res->out_len + dl <= len);
                memcpy(res->out + res->out_len, data, dl);
                res->out_len += dl;
            }
            off += (size_t)r;
            if (cs_chunked_done(&d)) {
                res->done = 1;
                break;
            }
            CHECK(r > 0);   /* non-empty input and not done: progress */
        }
        free(piece);
        pos += off;
        if (res->err || res->done)
            break;
    }
    res->consumed = pos;
    if (res->done) {
        const char *data = NULL;
        size_t dl = 1;
        CHECK(cs_chunked_decode(&d, "0\r\n\r\n", 5, &data, &dl) == 0 && dl == 0);
        CHECK(cs_chunked_done(&d));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    result whole, split, bytes;
    const unsigned char *body;
    size_t len, max_piece;
    uint32_t seed;

    if (size < 2)
        return 0;
    seed = (uint32_t)data[0] << 8 | data[1];
    max_piece = (size_t)(data[0] & 31) + 1;
    body = data + 2;
    len = size - 2;

    decode(body, len, 0, 0, &whole);
    decode(body, len, seed, max_piece, &split);
    decode(body, len, 0, 1, &bytes);   /* max_piece 1: byte at a time */

    CHECK(whole.err == split.err && whole.err == bytes.err);
    CHECK(whole.done == split.done && whole.done == bytes.done);
    CHECK(whole.out_len == split.out_len && whole.out_len == bytes.out_len);
    CHECK(memcmp(whole.out, split.out, whole.out_len) == 0);
    CHECK(memcmp(whole.out, bytes.out, whole.out_len) == 0);
    if (!whole.err) {
        CHECK(whole.consumed == split.consumed && whole.consumed == bytes.consumed);
        CHECK(whole.done || whole.consumed == len);
    }
    free(whole.out);
    free(split.out);
    free(bytes.out);
    return 0;
}
