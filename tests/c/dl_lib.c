/* A library dlopen'ed and dlclose'd repeatedly by dl_main.c. It allocates in
 * its constructor and frees in its destructor, hands blocks to the program
 * and frees blocks the program made, and has dynamic TLS (ld.so allocates a
 * thread's block of it with malloc on first use). */
#include <stdlib.h>
#include <string.h>

static char *table[256];
static __thread char tls_buf[4096];
static __thread int tls_calls;
static char *ctor_block;

__attribute__((constructor)) static void lib_init(void) {
    ctor_block = malloc(10000);
    memset(ctor_block, 0x7e, 10000);
    for (int i = 0; i < 256; i++) {
        table[i] = malloc((size_t)i * 13 + 1);
        memset(table[i], i, (size_t)i * 13 + 1);
    }
}

__attribute__((destructor)) static void lib_fini(void) {
    for (int i = 0; i < 256; i++) {
        for (size_t k = 0; k < (size_t)i * 13 + 1; k++)
            if ((unsigned char)table[i][k] != (unsigned char)i)
                abort();
        free(table[i]);
    }
    for (int k = 0; k < 10000; k++)
        if ((unsigned char)ctor_block[k] != 0x7e)
            abort();
    free(ctor_block);
}

/* A copy of s the caller frees. */
char *lib_dup(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    memcpy(d, s, n + 1);
    return d;
}

/* Takes ownership of p (from the program) and frees it; grows q first. */
int lib_take(void *p, size_t n) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(i * 7))
            return 0;
    b = realloc(b, n * 3 + 1);
    if (!b)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(i * 7))
            return 0;
    free(b);
    return 1;
}

/* Uses this thread's dynamic TLS block. */
int lib_tls(int v) {
    memset(tls_buf, v, sizeof tls_buf);
    tls_calls++;
    int s = 0;
    for (int i = 0; i < 4096; i += 512)
        s += tls_buf[i];
    return s + tls_calls;
}
