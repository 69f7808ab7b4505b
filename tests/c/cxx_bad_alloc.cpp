// With no new_handler installed, a throwing operator new that cannot
// allocate must throw std::bad_alloc ([new.delete.single]), which a program
// may catch and recover from; it must not abort the process.
#include <cstdint>
#include <cstdio>
#include <new>

int main() {
    int caught = 0;
    for (int form = 0; form < 4; form++) {
        volatile size_t huge = SIZE_MAX / 4;
        try {
            void *p = form == 0   ? ::operator new(huge)
                      : form == 1 ? ::operator new[](huge)
                      : form == 2 ? ::operator new(huge, std::align_val_t{128})
                                  : ::operator new[](huge, std::align_val_t{128});
            if (form == 0)
                ::operator delete(p);
            else if (form == 1)
                ::operator delete[](p);
            else if (form == 2)
                ::operator delete(p, std::align_val_t{128});
            else
                ::operator delete[](p, std::align_val_t{128});
        } catch (const std::bad_alloc &) {
            caught++;
        }
    }
    std::printf("caught %d bad_alloc\n", caught);
    return caught == 4 ? 0 : 1;
}
