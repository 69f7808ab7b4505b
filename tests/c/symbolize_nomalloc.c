/* Preloaded by a test of src/leak/symbolize.rs into a re-run of the test
 * binary: counts the malloc-family calls one thread makes between
 * symfix_count_start() and symfix_count_stop(), to show that symbolizing
 * allocates nothing. Everything is passed on to glibc's allocator. */
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static __thread int counting;
static __thread long count;

void symfix_count_start(void) { count = 0; counting = 1; }
long symfix_count_stop(void) { counting = 0; return count; }

void *malloc(size_t n) { count += counting; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count += counting; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count += counting; return __libc_realloc(p, n); }
void free(void *p) { count += counting && p; __libc_free(p); }
void *memalign(size_t al, size_t n) { count += counting; return __libc_memalign(al, n); }
void *aligned_alloc(size_t al, size_t n) { count += counting; return __libc_memalign(al, n); }
int posix_memalign(void **r, size_t al, size_t n) {
    count += counting;
    *r = __libc_memalign(al, n);
    return *r ? 0 : 12;
}
