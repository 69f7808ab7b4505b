/* dlopen/dlclose of a library that allocates and frees (dl_lib.c), under
 * LD_PRELOAD: memory crosses between the program and the library both ways,
 * threads touch the library's dynamic TLS, and the cycle repeats so the
 * loader's own allocations (link maps, scopes, TLS blocks) come and go.
 * Usage: dl_main /abs/path/libdl_lib.so */
#include "check.h"

#include <pthread.h>

typedef char *(*dup_fn)(const char *);
typedef int (*take_fn)(void *, size_t);
typedef int (*tls_fn)(int);

static tls_fn tls_entry;

static void *tls_thread(void *arg) {
    int v = (int)(uintptr_t)arg;
    long bad = 0;
    for (int i = 1; i <= 50; i++)
        if (tls_entry(v) != 8 * v + i)
            bad++;
    return (void *)bad;
}

int main(int argc, char **argv) {
    require_magpie();
    if (argc < 2) {
        fprintf(stderr, "usage: dl_main LIB\n");
        return 2;
    }
    for (int round = 0; round < 100; round++) {
        void *h = dlopen(argv[1], RTLD_NOW | (round % 2 ? RTLD_GLOBAL : RTLD_LOCAL));
        if (!h) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
        dup_fn dup = (dup_fn)dlsym(h, "lib_dup");
        take_fn take = (take_fn)dlsym(h, "lib_take");
        tls_entry = (tls_fn)dlsym(h, "lib_tls");
        CHECK(dup && take && tls_entry);
        if (!dup || !take || !tls_entry)
            return 1;

        char msg[64];
        snprintf(msg, sizeof msg, "round %d of dlopen", round);
        char *d = dup(msg);
        CHECK(strcmp(d, msg) == 0);
        CHECK(magpie_usable(d) > strlen(msg));
        free(d); /* the library allocated, the program frees */

        size_t n = 100 + (size_t)round * 97;
        unsigned char *b = malloc(n);
        for (size_t i = 0; i < n; i++)
            b[i] = (unsigned char)(i * 7);
        CHECK(take(b, n) == 1); /* the program allocated, the library frees */

        if (round % 10 == 0) {
            pthread_t t[4];
            for (int i = 0; i < 4; i++)
                pthread_create(&t[i], NULL, tls_thread, (void *)(uintptr_t)(i + 1));
            for (int i = 0; i < 4; i++) {
                void *bad;
                pthread_join(t[i], &bad);
                CHECKF(bad == NULL, "round %d thread %d: bad TLS values", round, i);
            }
        }
        CHECK(dlclose(h) == 0);
    }
    /* A library the program never linked, which allocates in its own init. */
    void *z = dlopen("libz.so.1", RTLD_NOW);
    if (z)
        dlclose(z);
    DONE("dl_main");
    return 0;
}
