// The launcher of the host shim: a grid of blocks, each block's CUDA threads as fibers (see cuda_host.h).
//
// Blocks run one after another on the calling OS thread. Inside a block a fiber runs until it reaches
// __syncthreads, a warp shuffle or its end; a barrier opens when every live thread of the block (a shuffle:
// every lane of the warp) has arrived, and even the last one in then yields. The scheduler resumes the
// runnable fibers in the launch's order
// (ascending, descending or a seeded shuffle of thread indices): code that reads what another thread writes
// without a barrier in between gets different answers in different orders, which is how a missing
// __syncthreads shows. A barrier that can never open (threads diverging at __syncthreads, a shuffle whose
// mask names an exited lane, a barrier some threads exit without reaching) stops the launch with an error
// instead of hanging or passing by luck.
//
// Context switches: a few lines of assembly on x86-64 (callee-saved registers, MXCSR and the x87 control word),
// ucontext elsewhere; AddressSanitizer is told about every stack switch (its fiber API).

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_host.h"

#if defined(__SANITIZE_ADDRESS__)
#define RTMW_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RTMW_ASAN 1
#endif
#endif
#ifdef RTMW_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#define RTMW_UCONTEXT 1
#endif

// the kernels' __shared__ variables (cuda_host.h puts them in this section; the linker defines its bounds)
extern "C" char __start_rtmw_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_rtmw_shared[] __attribute__((weak, visibility("hidden")));

namespace rtmw_host {

thread_local const CudaThread* current = nullptr;
thread_local uint3 block_idx;
thread_local dim3 block_dim;
thread_local dim3 grid_dim;

// ------------------------------------------------------------------------------------------ registry
struct KernelEntry {
    Thunk thunk;
    int count;
    const int* sizes;
};

static std::unordered_map<std::string, KernelEntry>& registry() {
    static std::unordered_map<std::string, KernelEntry> kernels;
    return kernels;
}

void register_kernel(const char* name, Thunk thunk, int count, const int* sizes) {
    registry()[name] = KernelEntry{thunk, count, sizes};
}

// ------------------------------------------------------------------------------------------ contexts
#ifndef RTMW_UCONTEXT
extern "C" void rtmw_host_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl rtmw_host_switch
    .hidden rtmw_host_switch
    .type rtmw_host_switch,@function
rtmw_host_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rtmw_host_switch,.-rtmw_host_switch
)");
#endif

enum State { READY, AT_BARRIER, AT_WARP, DONE };

struct Fiber : CudaThread {
    int index = 0;   // linear thread index in the block
    int warp = 0, lane = 0;
    State state = READY;
    unsigned long wait_gen = 0;
    char* stack = nullptr;
    size_t stack_size = 0;
#ifdef RTMW_UCONTEXT
    ucontext_t ctx;
#else
    void* sp = nullptr;
#endif
};

struct Warp {
    int live = 0;               // lanes that have not exited
    int arrived = 0;
    unsigned mask = 0;          // the mask the lanes at the pending exchange named
    unsigned long gen = 0;
    uint64_t slots[2][32];      // double-buffered by the parity of gen: one barrier per exchange
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    int live = 0;
    int arrived = 0;
    unsigned long gen = 0;
    Thunk thunk = nullptr;
    void** params = nullptr;
    Fiber* running = nullptr;
    bool failed = false;
    std::string error;
#ifdef RTMW_UCONTEXT
    ucontext_t sched;
#else
    void* sched_sp = nullptr;
#endif
#ifdef RTMW_ASAN
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
#endif
};

static thread_local Block* g_block = nullptr;

static void fail(Block* b, const char* fmt, ...) {
    if (b->failed) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    b->failed = true;
    b->error = buf;
}

// switch from the running fiber back to the scheduler (`exiting`: for the last time)
static void to_scheduler(Block* b, Fiber* f, bool exiting) {
#ifdef RTMW_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, b->sched_bottom, b->sched_size);
#endif
#ifdef RTMW_UCONTEXT
    swapcontext(&f->ctx, &b->sched);
#else
    rtmw_host_switch(&f->sp, b->sched_sp);
#endif
#ifdef RTMW_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    (void)exiting;
}

static void to_fiber(Block* b, Fiber* f) {
    b->running = f;
    current = f;
#ifdef RTMW_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack, f->stack_size);
#endif
#ifdef RTMW_UCONTEXT
    swapcontext(&b->sched, &f->ctx);
#else
    rtmw_host_switch(&b->sched_sp, f->sp);
#endif
#ifdef RTMW_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    current = nullptr;
    b->running = nullptr;
}

static void fiber_main() {
    Block* b = g_block;
#ifdef RTMW_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &b->sched_bottom, &b->sched_size);
#endif
    Fiber* f = b->running;
    b->thunk(b->params);
    f->state = DONE;
    --b->live;
    if (b->arrived > 0)  // CUDA: a barrier in code not every thread of the block reaches is undefined
        fail(b, "divergent __syncthreads: thread %d exited while %d threads wait at a barrier", f->index, b->arrived);
    Warp& w = b->warps[f->warp];
    --w.live;
    if (w.arrived > 0 && (w.mask >> f->lane) & 1u)
        fail(b, "thread %d exited while lanes of its warp wait for it at a shuffle", f->index);
    to_scheduler(b, f, true);
    abort();  // never resumed
}

#ifndef RTMW_UCONTEXT
extern "C" void rtmw_host_fiber_entry() { fiber_main(); }

static void prepare_stack(Fiber* f) {
    // the frame rtmw_host_switch pops: MXCSR/x87 word, r15..rbp, then `ret` into the entry
    uintptr_t top = ((uintptr_t)(f->stack + f->stack_size)) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;                              // a null "return address" above the entry (for unwinders)
    *--sp = (void*)&rtmw_host_fiber_entry;        // ret target; after ret rsp = top - 8 (as after a call)
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    uint32_t csr[2];
    __asm__ volatile("stmxcsr %0" : "=m"(csr[0]));
    __asm__ volatile("fnstcw %0" : "=m"(*(uint16_t*)&csr[1]));
    csr[1] &= 0xffff;
    --sp;
    memcpy(sp, csr, 8);
    f->sp = sp;
}
#else
static void ucontext_entry() { fiber_main(); }
#endif

// ------------------------------------------------------------------------------------------ device side
void syncthreads() {
    Block* b = g_block;
    Fiber* f = b->running;
    if (b->live != (int)b->fibers.size())
        fail(b, "divergent __syncthreads: thread %d waits at a barrier %d exited threads never reach", f->index,
             (int)b->fibers.size() - b->live);
    ++b->arrived;
    f->state = AT_BARRIER;
    f->wait_gen = b->gen;
    if (b->arrived == b->live) {  // the last one in opens the barrier, then waits its turn like the others:
        b->arrived = 0;           // after a barrier the threads resume in the launch's order, not last-in first
        ++b->gen;
    }
    to_scheduler(b, f, false);
}

int lane_id() { return g_block->running->lane; }

void warp_exchange(unsigned mask, const void* value, void* out, int size, int src) {
    Block* b = g_block;
    Fiber* f = b->running;
    Warp& w = b->warps[f->warp];
    const int warp_base = f->warp * 32;
    const int lanes = (int)b->fibers.size() - warp_base < 32 ? (int)b->fibers.size() - warp_base : 32;
    if (!((mask >> f->lane) & 1u)) fail(b, "thread %d calls a shuffle whose mask 0x%08x excludes it", f->index, mask);
    for (int l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        if (l >= lanes || b->fibers[warp_base + l].state == DONE) {
            fail(b, "thread %d: shuffle mask 0x%08x names lane %d, which %s", f->index, mask, l,
                 l >= lanes ? "does not exist" : "has exited");
            break;
        }
    }
    if (w.arrived == 0) w.mask = mask;
    else if (w.mask != mask) fail(b, "warp %d: lanes call a shuffle with different masks", f->warp);
    const int buf = (int)(w.gen & 1);
    uint64_t v = 0;
    memcpy(&v, value, size);
    w.slots[buf][f->lane] = v;
    ++w.arrived;
    f->state = AT_WARP;
    f->wait_gen = w.gen;
    if (w.arrived == __builtin_popcount(mask)) {  // every lane the mask names is in: open, then wait one's turn
        w.arrived = 0;
        ++w.gen;
    }
    to_scheduler(b, f, false);
    const int src_lane = src & 31;
    memcpy(out, &w.slots[buf][src_lane], size);
}

// ------------------------------------------------------------------------------------------ the launch
static bool resumable(const Block* b, const Fiber& f) {
    switch (f.state) {
        case READY: return true;
        case AT_BARRIER: return b->gen != f.wait_gen;
        case AT_WARP: return b->warps[f.warp].gen != f.wait_gen;
        default: return false;
    }
}

static uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void make_order(std::vector<int>& order, int n, int mode, uint64_t& rng) {
    order.resize(n);
    for (int i = 0; i < n; ++i) order[i] = mode == 1 ? n - 1 - i : i;
    if (mode == 2)
        for (int i = n - 1; i > 0; --i) {
            int j = (int)(splitmix(rng) % (uint64_t)(i + 1));
            int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
}

static const char* state_name(State s) {
    switch (s) {
        case READY: return "running";
        case AT_BARRIER: return "__syncthreads";
        case AT_WARP: return "a warp shuffle";
        default: return "exited";
    }
}

// a block starts with uninitialised shared memory: fresh pseudo-random bytes (never the previous block's data)
static void poison_shared(uint64_t& rng) {
    if (__start_rtmw_shared == nullptr || __stop_rtmw_shared == nullptr) return;
    for (char* p = __start_rtmw_shared; p < __stop_rtmw_shared; p += 8) {
        const uint64_t v = splitmix(rng);
        const size_t left = (size_t)(__stop_rtmw_shared - p);
        memcpy(p, &v, left < 8 ? left : 8);
    }
}

static int run_block(Block* b, const std::vector<int>& order) {
    const int n = (int)b->fibers.size();
    b->live = n;
    b->arrived = 0;
    b->gen = 0;
    for (size_t i = 0; i < b->warps.size(); ++i) {
        Warp& w = b->warps[i];
        w.live = n - (int)i * 32 < 32 ? n - (int)i * 32 : 32;
        w.arrived = 0;
        w.gen = 0;
        w.mask = 0;
    }
    for (Fiber& f : b->fibers) {
        f.state = READY;
#ifdef RTMW_UCONTEXT
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = f.stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, ucontext_entry, 0);
#else
        prepare_stack(&f);
#endif
    }
    int done = 0;
    while (done < n && !b->failed) {
        bool progress = false;
        for (int k = 0; k < n && !b->failed; ++k) {
            Fiber& f = b->fibers[order[k]];
            if (!resumable(b, f)) continue;
            f.state = READY;
            to_fiber(b, &f);
            progress = true;
            if (f.state == DONE) ++done;
        }
        if (!progress && done < n) {
            int at_bar = 0, at_warp = 0, exited = 0;
            const Fiber* example = nullptr;
            for (const Fiber& f : b->fibers) {
                at_bar += f.state == AT_BARRIER;
                at_warp += f.state == AT_WARP;
                exited += f.state == DONE;
                if (!example && f.state != DONE) example = &f;
            }
            fail(b, "deadlock in block (%u,%u,%u): %d threads wait at __syncthreads, %d at a warp shuffle, %d exited "
                 "(thread %d waits at %s): divergent barrier",
                 block_idx.x, block_idx.y, block_idx.z, at_bar, at_warp, exited, example ? example->index : -1,
                 example ? state_name(example->state) : "?");
        }
    }
    return b->failed ? 1 : 0;
}

}  // namespace rtmw_host

using namespace rtmw_host;

extern "C" {

// -> number of parameters of `name` (sizes in bytes written to `sizes`, up to `cap`), or -1 if unknown
int rtmw_host_kernel_params(const char* name, int* sizes, int cap) {
    auto it = registry().find(name);
    if (it == registry().end()) return -1;
    for (int i = 0; i < it->second.count && i < cap; ++i) sizes[i] = it->second.sizes[i];
    return it->second.count;
}

int rtmw_host_kernel_count() { return (int)registry().size(); }

// Launch `name` over grid × block with cuLaunchKernel's kernelParams. order: 0 ascending, 1 descending,
// 2 shuffled (seed). Returns 0, or 1 with a message in `error`.
int rtmw_host_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                     void** params, int order_mode, unsigned long long seed, char* error, int error_size) {
    auto it = registry().find(name);
    auto report = [&](const std::string& msg) {
        if (error && error_size > 0) snprintf(error, error_size, "%s", msg.c_str());
        return 1;
    };
    if (it == registry().end()) return report(std::string("no kernel named ") + name);
    const long long threads = (long long)bx * by * bz;
    if (threads < 1 || threads > 1024 || bx > 1024 || by > 1024 || bz > 64)
        return report("invalid block size (CUDA: at most 1024 threads, x,y <= 1024, z <= 64)");
    if (gx < 1 || gy < 1 || gz < 1 || gy > 65535 || gz > 65535 || gx > 2147483647u)
        return report("invalid grid size (CUDA: x <= 2^31-1, y, z <= 65535)");
    if (g_block != nullptr) return report("nested launch");
    static std::mutex launch_mutex;  // __shared__ storage is one per process: one launch at a time
    std::lock_guard<std::mutex> lock(launch_mutex);

    Block block;
    block.thunk = it->second.thunk;
    block.params = params;
    const int n = (int)threads;
    block.fibers.resize(n);
    block.warps.resize((n + 31) / 32);
#ifdef RTMW_ASAN
    const size_t stack_size = 256 * 1024;
#else
    const size_t stack_size = 64 * 1024;
#endif
    const size_t total = stack_size * (size_t)n;
    char* stacks = (char*)mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                               -1, 0);
    if (stacks == MAP_FAILED) return report(std::string("cannot allocate fiber stacks: ") + strerror(errno));
    for (int i = 0; i < n; ++i) {
        Fiber& f = block.fibers[i];
        f.index = i;
        f.thread_idx = uint3{(unsigned)(i % bx), (unsigned)((i / bx) % by), (unsigned)(i / (bx * by))};
        f.warp = i / 32;
        f.lane = i % 32;
        f.stack = stacks + (size_t)i * stack_size;
        f.stack_size = stack_size;
    }
    block_dim = dim3{bx, by, bz};
    grid_dim = dim3{gx, gy, gz};
    uint64_t rng = seed ^ 0x5bd1e995ull;
    std::vector<int> order;
    const long long blocks = (long long)gx * gy * gz;
    std::vector<long long> block_order(blocks < (1 << 22) ? blocks : 0);
    const bool permute = block_order.size() == (size_t)blocks;
    if (permute) {
        for (long long i = 0; i < blocks; ++i) block_order[i] = order_mode == 1 ? blocks - 1 - i : i;
        if (order_mode == 2)
            for (long long i = blocks - 1; i > 0; --i) {
                long long j = (long long)(splitmix(rng) % (uint64_t)(i + 1));
                long long t = block_order[i];
                block_order[i] = block_order[j];
                block_order[j] = t;
            }
    }
    g_block = &block;
    int rc = 0;
    for (long long k = 0; k < blocks && rc == 0; ++k) {
        const long long lin = permute ? block_order[k] : k;
        block_idx = uint3{(unsigned)(lin % gx), (unsigned)((lin / gx) % gy), (unsigned)(lin / ((long long)gx * gy))};
        make_order(order, n, order_mode, rng);
        poison_shared(rng);
        rc = run_block(&block, order);
    }
    g_block = nullptr;
    munmap(stacks, total);
    if (rc) return report(std::string(name) + ": " + block.error);
    return 0;
}

}  // extern "C"
