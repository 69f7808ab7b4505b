/* Shared helpers for the C/C++ programs that tests/preload.rs compiles and
 * runs under LD_PRELOAD=libmagpie.so. A failed CHECK prints the line and the
 * condition and counts; DONE() prints the verdict and exits 1 on any failure. */
#ifndef MAGPIE_TEST_CHECK_H
#define MAGPIE_TEST_CHECK_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((unused)) static int check_failures;

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            check_failures++;                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                           \
    } while (0)

#define CHECKF(cond, ...)                                                           \
    do {                                                                            \
        if (!(cond)) {                                                              \
            check_failures++;                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                           \
            fputc('\n', stderr);                                                    \
        }                                                                           \
    } while (0)

#define DONE(name)                                                                  \
    do {                                                                            \
        if (check_failures) {                                                       \
            fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);     \
            exit(1);                                                                \
        }                                                                           \
        printf("%s: all checks passed\n", name);                                    \
        fflush(stdout);                                                             \
    } while (0)

#define IS_ALIGNED(p, a) ((((uintptr_t)(p)) & ((uintptr_t)(a) - 1)) == 0)

/* The shared object that defines the symbol `name` as seen from the program
 * (RTLD_DEFAULT lookup), or "" when it is not found. */
__attribute__((unused)) static const char *defining_object(const char *name) {
    void *f = dlsym(RTLD_DEFAULT, name);
    Dl_info info;
    if (f == NULL || dladdr(f, &info) == 0 || info.dli_fname == NULL)
        return "";
    return info.dli_fname;
}

/* 1 when the symbol resolves into libmagpie.so. */
__attribute__((unused)) static int from_magpie(const char *name) {
    return strstr(defining_object(name), "libmagpie") != NULL;
}

/* Aborts the test unless libmagpie.so is loaded and owns malloc. */
__attribute__((unused)) static void require_magpie(void) {
    if (dlsym(RTLD_DEFAULT, "magpie_malloc") == NULL || !from_magpie("malloc")) {
        fprintf(stderr, "libmagpie.so is not loaded (malloc comes from '%s'); run under LD_PRELOAD\n",
                defining_object("malloc"));
        exit(2);
    }
}

/* magpie's own malloc_usable_size, found by name: it aborts on a pointer magpie
 * never returned, so a sane answer proves the pointer is magpie's. */
__attribute__((unused)) static size_t magpie_usable(void *p) {
    size_t (*f)(void *) = (size_t(*)(void *))dlsym(RTLD_DEFAULT, "magpie_malloc_usable_size");
    if (f == NULL) {
        fprintf(stderr, "magpie_malloc_usable_size not found\n");
        exit(2);
    }
    return f(p);
}

/* Byte pattern helpers: fill/verify n bytes with a pattern derived from seed. */
static inline unsigned char pat(uintptr_t seed, size_t i) {
    return (unsigned char)((seed * 131u + i * 7u + (i >> 8)) ^ 0x5a);
}
static inline void fill_pat(void *p, size_t n, uintptr_t seed) {
    unsigned char *b = (unsigned char *)p;
    for (size_t i = 0; i < n; i++)
        b[i] = pat(seed, i);
}
static inline int check_pat(const void *p, size_t n, uintptr_t seed) {
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != pat(seed, i))
            return 0;
    return 1;
}

#endif
