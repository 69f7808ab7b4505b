/* The pacer's first trigger, in a process that has made no small allocation
 * of the size pthread_create's TLS vector needs: the 8 MiB block that
 * crosses the collector's first goal starts the collector thread, and the
 * calloc inside pthread_create then takes an allocation slow path that
 * reaches the pacer again. It must not wait for the thread being created
 * (it once spun for ever). Prints "OK pacer_start". */
#include <stdio.h>
#include <stdlib.h>

static void *volatile sink;

int main(void) {
    for (int i = 0; i < 8; i++) {
        char *p = malloc(8 << 20);
        p[0] = (char)i;
        sink = p;
    }
    puts("OK pacer_start");
    return 0;
}
