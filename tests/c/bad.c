/* Bad input under LD_PRELOAD: each scenario prints "ADDR=<pointer at fault>"
 * (with %p) and then makes one invalid call, which must kill the process with
 * SIGABRT after a "magpie: ..." message naming that address. Reaching the end
 * of a scenario exits with status 3 ("survived"). Usage: bad SCENARIO */
#include "check.h"

#include <unistd.h>

static char global_buf[256];

/* Keeps the compiler from reasoning about the pointers it passes. */
static void *opaque(void *p) {
    __asm__ volatile("" : "+r"(p));
    return p;
}

static void announce(void *p) {
    printf("ADDR=%p\n", p);
    fflush(stdout);
}

int main(int argc, char **argv) {
    require_magpie();
    if (argc < 2)
        return 2;
    const char *s = argv[1];
    /* stdout's buffer is static: printing between two frees must not
     * allocate (it would legitimately reuse the freed block). */
    static char outbuf[4096];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    /* Some live blocks around, so spans stay in use. */
    void *keep[8];
    for (int i = 0; i < 8; i++)
        keep[i] = malloc(64);

    if (!strcmp(s, "double_free")) {
        char *p = malloc(64);
        free(p);
        announce(p);
        free(opaque(p));
    } else if (!strcmp(s, "double_free_sizes")) {
        /* A run of sizes freed once, then the last one again. */
        char *p = NULL;
        for (size_t n = 1; n <= 2048; n = n * 2 + 1) {
            p = malloc(n);
            free(p);
        }
        announce(p);
        free(opaque(p));
    } else if (!strcmp(s, "double_free_large")) {
        char *p = malloc(1 << 20);
        free(p);
        announce(p);
        free(opaque(p));
    } else if (!strcmp(s, "double_free_aligned")) {
        void *p = NULL;
        if (posix_memalign(&p, 4096, 100) != 0)
            return 4;
        free(p);
        announce(p);
        free(opaque(p));
    } else if (!strcmp(s, "free_stack")) {
        char buf[64];
        memset(buf, 1, sizeof buf);
        announce(buf);
        free(opaque(buf));
    } else if (!strcmp(s, "free_global")) {
        announce(global_buf + 16);
        free(opaque(global_buf + 16));
    } else if (!strcmp(s, "free_interior")) {
        char *p = malloc(100);
        announce(p + 16);
        free(opaque(p + 16));
    } else if (!strcmp(s, "free_interior_large")) {
        char *p = malloc(1 << 20);
        announce(p + 8192);
        free(opaque(p + 8192));
    } else if (!strcmp(s, "realloc_freed")) {
        char *p = malloc(64);
        free(p);
        announce(p);
        void *q = realloc(opaque(p), 128);
        printf("realloc returned %p\n", q);
    } else if (!strcmp(s, "realloc_freed_large")) {
        char *p = malloc(1 << 20);
        free(p);
        announce(p);
        void *q = realloc(opaque(p), 2 << 20);
        printf("realloc returned %p\n", q);
    } else if (!strcmp(s, "realloc_stack")) {
        char buf[64];
        announce(buf);
        void *q = realloc(opaque(buf), 128);
        printf("realloc returned %p\n", q);
    } else if (!strcmp(s, "realloc_interior")) {
        char *p = malloc(256);
        announce(p + 32);
        void *q = realloc(opaque(p + 32), 1000);
        printf("realloc returned %p\n", q);
    } else if (!strcmp(s, "cxx_delete_twice")) {
        /* operator delete is magpie's too (_ZdlPv). */
        void (*del)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "_ZdlPv");
        void *(*nw)(size_t) = (void *(*)(size_t))dlsym(RTLD_DEFAULT, "_Znwm");
        if (!del || !nw)
            return 5;
        void *p = nw(48);
        del(p);
        announce(p);
        del(opaque(p));
    } else {
        fprintf(stderr, "unknown scenario %s\n", s);
        return 2;
    }
    for (int i = 0; i < 8; i++)
        free(keep[i]);
    printf("survived\n");
    return 3;
}
