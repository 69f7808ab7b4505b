/* A shared object for the tests of src/leak/symbolize.rs, which dlopen it and
 * symbolize addresses in it. The tests find lines by the @markers below. */

__attribute__((noinline)) void *symfix_inner(void) {
    void *ra = __builtin_return_address(0);
    __asm__ volatile("" ::: "memory");
    return ra;
}

static inline __attribute__((always_inline)) void *symfix_inlined(void) {
    return symfix_inner(); /* @inlined-call */
}

/* Returns the return address of a call made from code inlined into it. */
__attribute__((noinline)) void *symfix_outer(void) {
    void *p = symfix_inlined(); /* @outer-call */
    __asm__ volatile("" ::: "memory");
    return p;
}

__attribute__((noinline)) int symfix_leaf(int x) { /* @leaf */
#ifdef SYMFIX_VARIANT
    x += SYMFIX_VARIANT;
#endif
    return x * 3 + 1;
}
