/* A program for the tests of src/leak/symbolize.rs, built as PIE and as
 * non-PIE; the tests symbolize addresses of its file as if it were loaded.
 * They find lines by the @markers below. */

__attribute__((noinline)) int symprog_work(int x) { /* @work */
    return x * 7 - 2;
}

int main(int argc, char **argv) {
    (void)argv;
    return symprog_work(argc) == 5;
}
