/* A leak hunt to time: a request loop in the style of a server (sessions
 * with buffers, strings and small records, most freed when the request ends)
 * that leaks at three sites, for magpie's leakcheck vs valgrind's memcheck
 * (benches/leak/run.sh). Prints the bytes it leaked so the tools' totals
 * can be checked against it.  Usage: leaky_server [requests] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct record { struct record *next; uint64_t key; char name[24]; };
struct session { struct record *records; char *buf; size_t buflen; };

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static size_t leaked_bytes, leaked_objects;
static uint64_t checksum;

__attribute__((noinline)) static char *copy_name(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    memcpy(p, s, n);
    return p;
}

__attribute__((noinline)) static struct record *add_record(struct session *s, uint64_t key) {
    struct record *r = malloc(sizeof *r);
    r->key = key;
    snprintf(r->name, sizeof r->name, "r%llu", (unsigned long long)(key % 100000));
    r->next = s->records;
    s->records = r;
    return r;
}

__attribute__((noinline)) static void handle_request(uint64_t i) {
    struct session *s = calloc(1, sizeof *s);
    s->buflen = 64 + next_rand() % 4000;
    s->buf = malloc(s->buflen);
    memset(s->buf, (int)i, s->buflen);
    int n = 1 + next_rand() % 16;
    for (int k = 0; k < n; k++)
        add_record(s, next_rand());
    char *name = copy_name(s->records->name);
    checksum += s->buf[s->buflen / 2] + strlen(name);
    /* Leak 1: the name copy, every 97th request. */
    if (i % 97 == 0) {
        leaked_bytes += strlen(name) + 1;
        leaked_objects++;
    } else {
        free(name);
    }
    /* Leak 2: a whole session's record list, every 1009th request. */
    if (i % 1009 == 0) {
        for (struct record *r = s->records; r; r = r->next) {
            leaked_bytes += sizeof *r;
            leaked_objects++;
        }
    } else {
        while (s->records) {
            struct record *r = s->records;
            s->records = r->next;
            checksum += r->key & 0xff;
            free(r);
        }
    }
    /* Leak 3: the buffer grows by realloc and is dropped, every 4001st. */
    if (i % 4001 == 0) {
        s->buf = realloc(s->buf, s->buflen * 2);
        leaked_bytes += s->buflen * 2;
        leaked_objects++;
    } else {
        free(s->buf);
    }
    free(s);
}

int main(int argc, char **argv) {
    uint64_t requests = argc > 1 ? strtoull(argv[1], 0, 10) : 400000;
    for (uint64_t i = 1; i <= requests; i++)
        handle_request(i);
    printf("checksum: %llu\n", (unsigned long long)checksum);
    printf("leaked: %zu bytes in %zu objects\n", leaked_bytes, leaked_objects);
    return 0;
}
