// Every form of C++ operator new/delete under LD_PRELOAD: plain, array,
// nothrow, sized delete, aligned (std::align_val_t), aligned nothrow, and the
// new_handler / bad_alloc protocol. Each operator must resolve into
// libmagpie.so and each pointer must be one magpie owns (its own
// magpie_malloc_usable_size accepts it, and aborts on anything else).
#include "check.h"

#include <malloc.h>

#include <cstddef>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

static const char *const operators[] = {
    "_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t", "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t", "_ZnamSt11align_val_tRKSt9nothrow_t",
    "_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm", "_ZdlPvRKSt9nothrow_t", "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t", "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t", "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
};

static void owned(void *p, size_t n, size_t align, const char *what) {
    CHECKF(p != nullptr, "%s(%zu) returned NULL", what, n);
    if (!p)
        return;
    CHECKF(IS_ALIGNED(p, align), "%s(%zu, align %zu) = %p", what, n, align, p);
    size_t u = magpie_usable(p);
    CHECKF(u >= n, "%s(%zu): magpie usable size %zu", what, n, u);
    CHECKF(malloc_usable_size(p) == u, "%s: malloc_usable_size disagrees", what);
    fill_pat(p, n, n);
}

struct alignas(64) Line {
    char b[64];
};
struct alignas(4096) PageObj {
    char b[100];
};
struct alignas(256 * 1024) Huge {
    char b[16];
};

struct Counted {
    static int live;
    std::string name;
    Counted() : name("default") { live++; }
    explicit Counted(const char *n) : name(n) { live++; }
    ~Counted() { live--; }
};
int Counted::live = 0;

static int handler_calls;
static void give_up_on_third_call() {
    // Allocating inside a new_handler is allowed.
    std::string s(100, 'h');
    if (++handler_calls == 3)
        throw std::bad_alloc();
}

// Exceptions allocate (__cxa_allocate_exception) and the first throw in a
// thread makes the unwinder allocate; thread_local objects with destructors
// register them with __cxa_thread_atexit, which allocates too.
struct Tls {
    std::vector<std::string> v;
    ~Tls() {
        for (auto &s : v)
            if (s.size() != 40)
                std::abort();
    }
};
static thread_local Tls tls;

static int throw_and_catch(int id) {
    int caught = 0;
    for (int i = 0; i < 5000; i++) {
        try {
            if (i % 2)
                throw std::runtime_error(std::string(100 + i % 50, 'e') + std::to_string(id));
            throw std::vector<int>(static_cast<size_t>(i % 300), id);
        } catch (const std::runtime_error &e) {
            caught += e.what()[0] == 'e';
        } catch (const std::vector<int> &v) {
            caught += v.size() == static_cast<size_t>(i % 300);
        }
        tls.v.push_back(std::string(40, 't'));
    }
    return caught;
}

int main() {
    require_magpie();
    for (const char *op : operators)
        CHECKF(from_magpie(op), "%s resolves to '%s'", op, defining_object(op));

    const size_t sizes[] = {0, 1, 8, 15, 16, 24, 100, 1000, 8192, 40000, 1 << 20};
    for (size_t n : sizes) {
        // plain / array, with plain and sized delete
        void *p = ::operator new(n);
        owned(p, n, n >= 16 ? 16 : 8, "new");
        ::operator delete(p);
        p = ::operator new(n);
        owned(p, n, n >= 16 ? 16 : 8, "new");
        ::operator delete(p, n);
        p = ::operator new[](n);
        owned(p, n, n >= 16 ? 16 : 8, "new[]");
        ::operator delete[](p);
        p = ::operator new[](n);
        owned(p, n, n >= 16 ? 16 : 8, "new[]");
        ::operator delete[](p, n);
        // nothrow, with nothrow delete
        p = ::operator new(n, std::nothrow);
        owned(p, n, n >= 16 ? 16 : 8, "new(nothrow)");
        ::operator delete(p, std::nothrow);
        p = ::operator new[](n, std::nothrow);
        owned(p, n, n >= 16 ? 16 : 8, "new[](nothrow)");
        ::operator delete[](p, std::nothrow);
        // aligned: every alignment, every delete form
        for (size_t al = 1; al <= (1u << 20); al <<= 1) {
            std::align_val_t a{al};
            p = ::operator new(n, a);
            owned(p, n, al, "new(align)");
            ::operator delete(p, a);
            p = ::operator new(n, a);
            owned(p, n, al, "new(align)");
            ::operator delete(p, n, a);
            p = ::operator new[](n, a);
            owned(p, n, al, "new[](align)");
            ::operator delete[](p, a);
            p = ::operator new[](n, a);
            owned(p, n, al, "new[](align)");
            ::operator delete[](p, n, a);
            p = ::operator new(n, a, std::nothrow);
            owned(p, n, al, "new(align, nothrow)");
            ::operator delete(p, a, std::nothrow);
            p = ::operator new[](n, a, std::nothrow);
            owned(p, n, al, "new[](align, nothrow)");
            ::operator delete[](p, a, std::nothrow);
        }
    }

    // new-expressions (the compiler picks the operator).
    {
        int *i = new int(42);
        owned(i, sizeof(int), 4, "new int");
        delete i;
        double *d = new double[1000];
        owned(d, 8000, 16, "new double[]");
        delete[] d;
        Line *l = new Line;
        owned(l, sizeof(Line), 64, "new Line");
        delete l;
        Line *ls = new Line[33];
        CHECK(IS_ALIGNED(ls, 64));
        magpie_usable(ls);
        delete[] ls;
        PageObj *po = new PageObj[3];
        CHECK(IS_ALIGNED(po, 4096));
        magpie_usable(po);
        delete[] po;
        Huge *h = new Huge;
        owned(h, sizeof(Huge), 256 * 1024, "new Huge");
        delete h;
        Huge *hn = new (std::nothrow) Huge;
        owned(hn, sizeof(Huge), 256 * 1024, "new(nothrow) Huge");
        delete hn;
        Counted *cs = new Counted[10]{Counted("a"), Counted("b")};
        magpie_usable(reinterpret_cast<char *>(cs) - sizeof(size_t)); // the array cookie
        CHECK(Counted::live == 10);
        delete[] cs;
        CHECK(Counted::live == 0);
    }

    // Containers: strings, vectors, maps, shared_ptr, all freed.
    {
        std::map<std::string, std::vector<int>> m;
        std::unordered_map<int, std::string> u;
        for (int i = 0; i < 20000; i++) {
            m["key" + std::to_string(i % 997)].push_back(i);
            u[i] = std::string(static_cast<size_t>(i % 50), 'x');
        }
        size_t total = 0;
        for (auto &kv : m)
            total += kv.second.size();
        CHECK(total == 20000);
        CHECK(u[49].size() == 49);
        auto sp = std::make_shared<std::vector<Line>>(100);
        CHECK(IS_ALIGNED(sp->data(), 64));
        magpie_usable(sp->data());
        std::unique_ptr<Line[]> up(new Line[7]);
        CHECK(IS_ALIGNED(up.get(), 64));
    }

    // nothrow new of an impossible size returns NULL.
    {
        volatile size_t huge = SIZE_MAX / 2;
        CHECK(::operator new(huge, std::nothrow) == nullptr);
        CHECK(::operator new[](huge, std::nothrow) == nullptr);
        CHECK(::operator new(huge, std::align_val_t{64}, std::nothrow) == nullptr);
        CHECK(::operator new[](huge, std::align_val_t{64}, std::nothrow) == nullptr);
    }
    // Throwing new calls the installed new_handler until it gives up (here
    // by throwing bad_alloc itself on its third call).
    {
        std::set_new_handler(give_up_on_third_call);
        int caught = 0;
        for (int form = 0; form < 4; form++) {
            handler_calls = 0;
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
            CHECKF(handler_calls == 3, "form %d: new_handler called %d times", form, handler_calls);
        }
        CHECK(caught == 4);
        std::set_new_handler(nullptr);
    }

    // Exceptions and thread_local destructors in several threads at once.
    {
        int results[4] = {0, 0, 0, 0};
        std::vector<std::thread> ts;
        for (int t = 0; t < 4; t++)
            ts.emplace_back([t, &results] { results[t] = throw_and_catch(t); });
        for (auto &t : ts)
            t.join();
        for (int t = 0; t < 4; t++)
            CHECKF(results[t] == 5000, "thread %d caught %d exceptions", t, results[t]);
        CHECK(throw_and_catch(9) == 5000);
    }

    DONE("cxx_new");
    return 0;
}
