/* atexit handlers that allocate, under LD_PRELOAD: 100 atexit handlers (libc
 * allocates its handler list in blocks of 32 with calloc), __cxa_atexit and
 * on_exit handlers, a handler that registers another, a destructor function,
 * a pthread key destructor, and exit() called while other threads are still
 * allocating. The output (printed by the handlers, LIFO) is compared with
 * the same program run on glibc's malloc. Usage: atexit [--any-malloc] */
#include "check.h"

#include <pthread.h>
#include <unistd.h>

extern int __cxa_atexit(void (*f)(void *), void *arg, void *dso);
extern void *__dso_handle;

static char *kept[100];

static void handler(int i) {
    /* Allocate, use, free; also free a block main allocated. */
    size_t n = 16 + (size_t)i * 311;
    char *p = malloc(n);
    memset(p, 'a' + i % 26, n);
    char *line = NULL;
    if (asprintf(&line, "handler %d: %c %zu %s\n", i, p[n - 1], n, kept[i]) < 0)
        abort();
    fputs(line, stdout);
    free(line);
    free(p);
    free(kept[i]);
    kept[i] = NULL;
}

#define H(i) static void h##i(void) { handler(i); }
#define H10(t) H(t##0) H(t##1) H(t##2) H(t##3) H(t##4) H(t##5) H(t##6) H(t##7) H(t##8) H(t##9)
H(0) H(1) H(2) H(3) H(4) H(5) H(6) H(7) H(8) H(9)
H10(1) H10(2) H10(3) H10(4) H10(5) H10(6) H10(7) H10(8) H10(9)
#define R(i) h##i,
#define R10(t) R(t##0) R(t##1) R(t##2) R(t##3) R(t##4) R(t##5) R(t##6) R(t##7) R(t##8) R(t##9)
static void (*const handlers[100])(void) = {R(0) R(1) R(2) R(3) R(4) R(5) R(6) R(7) R(8) R(9)
                                            R10(1) R10(2) R10(3) R10(4) R10(5) R10(6) R10(7)
                                            R10(8) R10(9)};

static void late(void) {
    char *s = strdup("late handler (registered by a handler) ran");
    puts(s);
    free(s);
}
static void registers_another(void) {
    void *p = calloc(100, 100);
    puts("handler registering another");
    atexit(late);
    free(p);
}

static void cxa_handler(void *arg) {
    char *s = arg;
    printf("__cxa_atexit handler: %s\n", s);
    free(s);
    s = malloc(1 << 20); /* a large block at exit */
    memset(s, 1, 1 << 20);
    free(s);
}

static void on_exit_handler(int status, void *arg) {
    int *v = arg;
    printf("on_exit handler: status %d, value %d\n", status, *v);
    free(v);
}

__attribute__((destructor)) static void dtor(void) {
    char *s = NULL;
    if (asprintf(&s, "destructor function: %d\n", 12345) < 0)
        abort();
    fputs(s, stdout);
    free(s);
}

static pthread_key_t key;
static void key_dtor(void *v) {
    /* Runs at thread exit: frees the value and allocates. */
    free(v);
    void *q = malloc(777);
    free(q);
}

static void *key_thread(void *arg) {
    (void)arg;
    pthread_setspecific(key, malloc(100));
    return NULL;
}

static volatile int spinning;
static void *spinner(void *arg) {
    (void)arg;
    void *local[32] = {0};
    __atomic_add_fetch(&spinning, 1, __ATOMIC_RELAXED);
    for (unsigned i = 0;; i++) {
        free(local[i % 32]);
        local[i % 32] = malloc(16 + (i * 37) % 5000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (!(argc > 1 && strcmp(argv[1], "--any-malloc") == 0))
        require_magpie();
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    for (int i = 0; i < 100; i++) {
        if (asprintf(&kept[i], "kept-%d", i * i) < 0)
            abort();
        if (atexit(handlers[i]) != 0)
            abort();
    }
    atexit(registers_another);
    for (int i = 0; i < 40; i++) {
        char *s = NULL;
        if (asprintf(&s, "cxa-%d", i) < 0)
            abort();
        __cxa_atexit(cxa_handler, s, __dso_handle);
    }
    int *v = malloc(sizeof *v);
    *v = 99;
    on_exit(on_exit_handler, v);

    /* A thread whose key destructor frees and allocates at thread exit. */
    pthread_key_create(&key, key_dtor);
    pthread_t t;
    pthread_create(&t, NULL, key_thread, NULL);
    pthread_join(t, NULL);
    puts("main: key thread joined");

    /* exit() runs the handlers while these threads keep allocating. */
    for (int i = 0; i < 4; i++) {
        pthread_create(&t, NULL, spinner, NULL);
        pthread_detach(t);
    }
    while (__atomic_load_n(&spinning, __ATOMIC_RELAXED) < 4)
        usleep(1000);
    usleep(20000);
    puts("main: calling exit");
    exit(0);
}
