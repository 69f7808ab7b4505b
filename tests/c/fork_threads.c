/* fork in a threaded program under LD_PRELOAD. Four threads allocate, free
 * and swap blocks across threads without pause while main forks repeatedly:
 *  - without exec: the child checks and frees blocks the parent allocated,
 *    allocates, starts threads of its own, forks a grandchild, and exits;
 *  - with exec: the child execs this program again ("exec-child"), which
 *    runs a threaded workload under the inherited LD_PRELOAD;
 *  - system()/popen(): libc's own fork+exec paths;
 *  - fork from a thread other than main.
 * Every child guards itself with alarm(): a deadlock after fork (a lock left
 * held by a thread that does not exist in the child) ends in SIGALRM and is
 * reported as a failure. Usage: fork_threads [exec-child] */
#include "check.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

enum { SLOTS = 1024, WORKERS = 4 };
static void *slots[SLOTS];
static size_t slot_size[SLOTS];
static volatile int stop;

static size_t pick(uint64_t *r) {
    uint64_t p = rng_next(r) % 100;
    if (p < 80)
        return 8 + rng_next(r) % 500;
    if (p < 98)
        return 512 + rng_next(r) % 30000;
    return 32768 + rng_next(r) % 600000;
}

/* A block whose bytes are all its own size's low byte: checkable anywhere. */
static void *mk(size_t n) {
    unsigned char *p = malloc(n);
    if (!p)
        abort();
    memset(p, (int)(n & 0xff), n);
    return p;
}
static int ok(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i += 61)
        if (p[i] != (unsigned char)(n & 0xff))
            return 0;
    return p[n - 1] == (unsigned char)(n & 0xff);
}

/* Stored as (pointer, size) pairs in two arrays: a worker publishes under a
 * per-slot lock so a forked child sees consistent pairs. */
static pthread_mutex_t slot_mu[SLOTS];

static void *worker(void *arg) {
    uint64_t r = 0x1234567ULL * ((uintptr_t)arg + 1);
    void *local[64] = {0};
    size_t local_n[64] = {0};
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        int j = (int)(rng_next(&r) % 64);
        if (local[j]) {
            if (!ok(local[j], local_n[j])) {
                fprintf(stderr, "worker: corrupted block\n");
                abort();
            }
            free(local[j]);
        }
        local_n[j] = pick(&r);
        local[j] = mk(local_n[j]);
        /* Cross-thread: swap with a shared slot. */
        size_t k = rng_next(&r) % SLOTS;
        size_t n = pick(&r);
        void *mine = mk(n);
        pthread_mutex_lock(&slot_mu[k]);
        void *old = slots[k];
        size_t old_n = slot_size[k];
        slots[k] = mine;
        slot_size[k] = n;
        pthread_mutex_unlock(&slot_mu[k]);
        if (old) {
            if (!ok(old, old_n)) {
                fprintf(stderr, "worker: corrupted shared block\n");
                abort();
            }
            free(old);
        }
    }
    for (int j = 0; j < 64; j++)
        free(local[j]);
    return NULL;
}

static void *child_thread(void *arg) {
    uint64_t r = (uintptr_t)arg;
    void *p[256];
    size_t n[256];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 256; i++) {
            n[i] = pick(&r);
            p[i] = mk(n[i]);
        }
        for (int i = 0; i < 256; i++) {
            if (!ok(p[i], n[i]))
                return (void *)1;
            free(p[i]);
        }
    }
    return NULL;
}

/* A short threaded workload: 0 when everything checked out. */
static int threaded_workload(uint64_t seed) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        if (pthread_create(&t[i], NULL, child_thread, (void *)(uintptr_t)(seed + (uint64_t)i)) != 0)
            return 10;
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        void *rv;
        pthread_join(t[i], &rv);
        bad |= rv != NULL;
    }
    return bad ? 11 : 0;
}

/* In a forked child (no exec): the parent's blocks are intact and freeable. */
static int child_body(int round) {
    alarm(20);
    int freed = 0;
    for (int k = 0; k < SLOTS; k++) {
        /* Locks were taken by threads that are gone: the snapshot is read
         * without them (the parent's threads never hold one across fork,
         * since fork happened at a point the child cannot know; a slot may
         * be torn only if its lock was held, so skip those). */
        if (pthread_mutex_trylock(&slot_mu[k]) != 0)
            continue;
        if (slots[k]) {
            if (!ok(slots[k], slot_size[k]))
                return 20;
            free(slots[k]);
            slots[k] = NULL;
            freed++;
        }
        pthread_mutex_unlock(&slot_mu[k]);
    }
    if (freed == 0)
        return 21;
    uint64_t r = 99 + (uint64_t)round;
    void *p[1000];
    size_t n[1000];
    for (int i = 0; i < 1000; i++) {
        n[i] = pick(&r);
        p[i] = mk(n[i]);
    }
    for (int i = 0; i < 1000; i++) {
        if (!ok(p[i], n[i]))
            return 22;
        free(p[i]);
    }
    int w = threaded_workload((uint64_t)round * 7);
    if (w)
        return w;
    /* A grandchild, forked from a child that has threads again. */
    if (round % 4 == 0) {
        pid_t g = fork();
        if (g == 0) {
            alarm(20);
            void *q = mk(12345);
            _exit(ok(q, 12345) ? 0 : 1);
        }
        int st;
        if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return 23;
    }
    return 0;
}

static int wait_ok(pid_t pid, const char *what, int round) {
    int st;
    pid_t w;
    do
        w = waitpid(pid, &st, 0);
    while (w < 0 && errno == EINTR);
    if (w != pid) {
        fprintf(stderr, "%s round %d: waitpid failed\n", what, round);
        return 0;
    }
    if (WIFSIGNALED(st)) {
        fprintf(stderr, "%s round %d: child killed by signal %d%s\n", what, round, WTERMSIG(st),
                WTERMSIG(st) == SIGALRM ? " (deadlock after fork?)" : "");
        return 0;
    }
    if (WEXITSTATUS(st) != 0) {
        fprintf(stderr, "%s round %d: child exit status %d\n", what, round, WEXITSTATUS(st));
        return 0;
    }
    return 1;
}

/* fork from a thread other than main, while the workers run. */
static void *fork_from_thread(void *arg) {
    (void)arg;
    long ok_count = 0;
    for (int r = 0; r < 10; r++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            uint64_t rr = 555 + (uint64_t)r;
            void *p[500];
            size_t n[500];
            for (int i = 0; i < 500; i++) {
                n[i] = pick(&rr);
                p[i] = mk(n[i]);
            }
            for (int i = 0; i < 500; i++) {
                if (!ok(p[i], n[i]))
                    _exit(40);
                free(p[i]);
            }
            _exit(threaded_workload((uint64_t)r));
        }
        if (pid > 0 && wait_ok(pid, "fork from a thread", r))
            ok_count++;
    }
    return (void *)ok_count;
}

int main(int argc, char **argv) {
    require_magpie();
    if (argc > 1 && strcmp(argv[1], "exec-child") == 0) {
        alarm(20);
        int w = threaded_workload(4242);
        if (w == 0)
            printf("exec-child ok\n");
        return w;
    }
    alarm(200);
    for (int k = 0; k < SLOTS; k++)
        pthread_mutex_init(&slot_mu[k], NULL);
    pthread_t t[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
    usleep(20000);

    int forks = 0, execs = 0, shells = 0;
    for (int round = 0; round < 60; round++) {
        usleep(2000);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            if (round % 3 == 1) {
                char *args[] = {argv[0], (char *)"exec-child", NULL};
                execv("/proc/self/exe", args);
                _exit(30);
            }
            _exit(child_body(round));
        }
        if (wait_ok(pid, round % 3 == 1 ? "fork+exec" : "fork", round)) {
            if (round % 3 == 1)
                execs++;
            else
                forks++;
        } else {
            check_failures++;
        }
        if (round % 10 == 5) {
            /* libc's own fork/exec paths, with the workers still running. */
            int rc = system("exit 3");
            CHECKF(WIFEXITED(rc) && WEXITSTATUS(rc) == 3, "system() = %#x", rc);
            FILE *f = popen("echo popen-ok", "r");
            char line[64] = {0};
            CHECK(f != NULL && fgets(line, sizeof line, f) != NULL);
            CHECK(strcmp(line, "popen-ok\n") == 0);
            CHECK(f && pclose(f) == 0);
            shells++;
        }
    }
    pthread_t ft;
    void *from_thread = NULL;
    pthread_create(&ft, NULL, fork_from_thread, NULL);
    pthread_join(ft, &from_thread);
    CHECKF((long)from_thread == 10, "forks from a thread: %ld of 10 children ok", (long)from_thread);
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(t[i], NULL);
    for (int k = 0; k < SLOTS; k++) {
        if (slots[k] && !ok(slots[k], slot_size[k]))
            CHECKF(0, "slot %d corrupted in the parent", k);
        free(slots[k]);
    }
    printf("forks without exec: %d, with exec: %d, system/popen: %d, from a thread: %ld\n", forks, execs,
           shells, (long)from_thread);
    DONE("fork_threads");
    return 0;
}
