/*
 * cuda_emu.cpp - the runtime behind cuda_emu.h: one fiber per CUDA thread
 * of the running block, a round-robin scheduler that switches fibers only
 * at barriers, the block barrier, the warp barriers that carry the warp
 * collectives' values, the built-in variables, the launch loop over blocks
 * and the last error.
 *
 * Scheduling: fibers take turns in thread order (or a seeded permutation
 * of it, new for every block: cuda_emu_set_schedule); one that reaches a
 * barrier before the rest of its block (or warp) switches to the next
 * live fiber, the last to arrive releases the barrier and runs on. In lockstep code
 * every switch therefore makes progress. A fiber that is resumed and
 * finds its barrier still closed switches on; when every live fiber has
 * done so in a row, nothing can ever release them and the launch fails
 * (a deadlock the hardware would hang on or silently miscompute).
 *
 * Also the warp-level instructions (mma.sync as a warp collective) and
 * the device math of CUDA_EMU_INEXACT_MATH (the host's result moved
 * within the device's error bound).
 *
 * Owns the process-wide emulator state (one launch at a time: a launch
 * from another host thread waits for the running one) and, for the
 * duration of a launch, the fibers' stacks (one mapping, a guard page
 * below each stack). Failures end the launch and are reported through
 * cudaGetLastError / cuda_emu_last_failure, per host thread; nothing here
 * prints or exits.
 */
#define CUDA_EMU_IMPLEMENTATION /* the host's math library, not poisoned */
#include "cuda_emu.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>
#include <new>

#if defined(__x86_64__) && !defined(CUDA_EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace cuda_emu
{

enum { MAIN = -1 };                           /* the launching context, as a fiber number */
enum { MAX_SHARED_VARS = 64 };                /* __shared__ declarations a block may pass */
static const size_t STACK_BYTES = 256 * 1024; /* per fiber, above its guard page */

struct fiber {
#ifdef EMU_ASM_SWITCH
    void *sp; /* saved stack pointer while switched out */
#else
    ucontext_t uc;
#endif
    char *stack; /* [STACK_BYTES], lowest address */
    uint3 idx;
    int warp;
    unsigned lane;
    int next, prev; /* ring of live fibers, in thread order */
    void *asan_fake_stack;
};

struct warp_state {
    int expected; /* live lanes */
    int arrived;  /* lanes at the collective in progress */
    unsigned live;
    unsigned gen; /* collectives completed */
    collective_kind kind;
    unsigned mask;
    site at;
    uint64_t slot[2][32][WARP_WORDS]; /* posted words, by gen parity (see warp_exchange) */
    unsigned live_at[2];              /* live lanes when the collective of that parity completed */
};

struct launch_state {
    bool active;
    void (*thread_main)(void *);
    void *ctx;
    int n_threads, n_warps;
    fiber *fibers;     /* [n_threads] */
    int *order;        /* [n_threads] the block's turn order (a permutation) */
    warp_state *warps; /* [n_warps] */
    char *stacks;      /* the mapping: [n_threads][page + STACK_BYTES] */
    size_t stacks_bytes;
    /* the block in progress */
    int cur; /* running fiber, MAIN between blocks */
    int n_alive;
    int bar_expected, bar_arrived;
    unsigned bar_gen;
    site bar_at;
    int stalled; /* resumptions in a row that found their barrier closed */
    bool failed;
    const void *touched[MAX_SHARED_VARS]; /* shared_first_touch: filled in this block */
    int n_touched;
#ifdef EMU_ASM_SWITCH
    void *main_sp;
#else
    ucontext_t main_uc;
#endif
    void *main_fake_stack;
    const void *main_stack_bottom;
    size_t main_stack_size;
};

static launch_state S;
static uint3 thread_idx, block_idx;
static dim3 block_dim, grid_dim;
/* Serialises launches from several host threads; in_launch catches a
 * launch from inside one (the same thread) before it would wait for itself. */
static std::mutex launch_lock;
static thread_local bool in_launch;
static thread_local cudaError_t last_error = cudaSuccess;
static unsigned schedule_seed; /* cuda_emu_set_schedule */
static thread_local char failure[512];

} // namespace cuda_emu

const uint3 &threadIdx = cuda_emu::thread_idx;
const uint3 &blockIdx = cuda_emu::block_idx;
const dim3 &blockDim = cuda_emu::block_dim;
const dim3 &gridDim = cuda_emu::grid_dim;

#ifdef EMU_ASM_SWITCH
/* Saves the callee-saved registers on the current stack, stores the stack
 * pointer in *save_sp, loads load_sp and restores what is saved there
 * (System V x86-64; the FP control state is shared by all fibers). */
__asm__(".text\n"
        ".globl cuda_emu_switch\n"
        ".hidden cuda_emu_switch\n"
        ".type cuda_emu_switch, @function\n"
        "cuda_emu_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size cuda_emu_switch, .-cuda_emu_switch\n");
extern "C" void cuda_emu_switch(void **save_sp, void *load_sp);
#endif

extern "C" {
/* The linker's bounds of the __shared__ variables' section (null without any). */
extern char __start_cuda_emu_shared[] __attribute__((weak));
extern char __stop_cuda_emu_shared[] __attribute__((weak));
}

namespace cuda_emu
{

static bool same_site(site a, site b)
{
    return a.line == b.line && (a.file == b.file || strcmp(a.file, b.file) == 0);
}

/* ---- switching ---- */

/* Switches from fiber `from` (MAIN: the launcher) to `to`; returns when
 * something switches back to `from`. from_ends: `from` never resumes. */
static void transfer(int from, int to, bool from_ends)
{
    S.cur = to;
    if (to != MAIN) thread_idx = S.fibers[to].idx;
#ifdef EMU_ASAN
    void **fake = from_ends      ? nullptr
                  : from == MAIN ? &S.main_fake_stack
                                 : &S.fibers[from].asan_fake_stack;
    if (to == MAIN)
        __sanitizer_start_switch_fiber(fake, S.main_stack_bottom, S.main_stack_size);
    else
        __sanitizer_start_switch_fiber(fake, S.fibers[to].stack, STACK_BYTES);
#else
    (void)from_ends;
#endif
#ifdef EMU_ASM_SWITCH
    void **save = from == MAIN ? &S.main_sp : &S.fibers[from].sp;
    void *load = to == MAIN ? S.main_sp : S.fibers[to].sp;
    cuda_emu_switch(save, load);
#else
    ucontext_t *save = from == MAIN ? &S.main_uc : &S.fibers[from].uc;
    ucontext_t *load = to == MAIN ? &S.main_uc : &S.fibers[to].uc;
    swapcontext(save, load);
#endif
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(
        from == MAIN ? S.main_fake_stack : S.fibers[from].asan_fake_stack, nullptr, nullptr);
#endif
}

/* Ends the block now: back to the launcher, the fibers abandoned. */
[[noreturn]] static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    const uint3 b = block_idx, t = thread_idx;
    int n = snprintf(failure, sizeof failure, "block (%u,%u,%u) thread (%u,%u,%u): ", b.x, b.y, b.z,
                     t.x, t.y, t.z);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(failure + n, sizeof failure - (size_t)n, fmt, ap);
    va_end(ap);
    S.failed = true;
    transfer(S.cur, MAIN, true);
    __builtin_unreachable();
}

/* Blocks the running fiber until *gen moves past g, running the others. */
static void wait_for(const unsigned *gen, unsigned g)
{
    while (*gen == g) {
        if (++S.stalled > S.n_alive)
            fail("deadlock: no thread can pass its barrier (%d of %d threads at the block "
                 "barrier, last at %s:%d)",
                 S.bar_arrived, S.bar_expected, S.bar_at.file ? S.bar_at.file : "-", S.bar_at.line);
        int me = S.cur, to = S.fibers[me].next;
        if (to != me) transfer(me, to, false);
    }
    S.stalled = 0;
}

static void release_block()
{
    S.bar_arrived = 0;
    S.bar_gen++;
    S.stalled = 0;
}

static void release_warp(warp_state *w)
{
    w->live_at[w->gen & 1] = w->live;
    w->arrived = 0;
    w->gen++;
    S.stalled = 0;
}

/* The running fiber's kernel returned: it stops counting at barriers. */
[[noreturn]] static void fiber_exit()
{
    int me = S.cur;
    fiber *f = &S.fibers[me];
    warp_state *w = &S.warps[f->warp];
    S.n_alive--;
    S.stalled = 0;
    S.bar_expected--;
    if (S.bar_arrived > 0 && S.bar_arrived == S.bar_expected) release_block();
    w->expected--;
    w->live &= ~(1u << f->lane);
    if (w->arrived > 0 && w->arrived == w->expected) release_warp(w);
    S.fibers[f->prev].next = f->next;
    S.fibers[f->next].prev = f->prev;
    transfer(me, S.n_alive ? f->next : MAIN, true);
    __builtin_unreachable();
}

[[noreturn]] static void fiber_entry()
{
#ifdef EMU_ASAN
    /* the first switch into a fiber comes from the launcher: learn its stack */
    __sanitizer_finish_switch_fiber(nullptr, &S.main_stack_bottom, &S.main_stack_size);
#endif
    S.thread_main(S.ctx);
    fiber_exit();
}

/* A fresh context for fiber t that starts in fiber_entry. */
static void prepare_fiber(fiber *f)
{
#ifdef EMU_ASM_SWITCH
    uintptr_t top = ((uintptr_t)f->stack + STACK_BYTES) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = nullptr;              /* fiber_entry's return address: never used */
    *--sp = (void *)&fiber_entry; /* where cuda_emu_switch's ret goes */
    for (int r = 0; r < 6; r++)
        *--sp = nullptr; /* rbp rbx r12 r13 r14 r15 */
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = STACK_BYTES;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())fiber_entry, 0);
#endif
}

/* ---- barriers ---- */

void syncthreads(site at)
{
    if (S.bar_arrived == 0)
        S.bar_at = at;
    else if (!same_site(S.bar_at, at))
        fail("__syncthreads at %s:%d while other threads wait at %s:%d", at.file, at.line,
             S.bar_at.file, S.bar_at.line);
    unsigned g = S.bar_gen;
    if (++S.bar_arrived == S.bar_expected) {
        release_block();
        return;
    }
    wait_for(&S.bar_gen, g);
}

static const char *kind_name(collective_kind k)
{
    switch (k) {
    case COLL_SYNCWARP:
        return "__syncwarp";
    case COLL_SHFL:
        return "a shuffle";
    case COLL_VOTE:
        return "a vote";
    case COLL_MATCH:
        return "a match";
    case COLL_ACTIVEMASK:
        return "__activemask";
    case COLL_MMA:
        return "mma.sync";
    }
    return "?";
}

/* Posting into slot[gen & 1] is safe with one barrier per collective: a
 * lane can reach collective gen + 2 (the next user of that parity) only
 * once every lane has arrived at gen + 1, i.e. has finished reading gen.
 * live_at likewise: lanes may exit between the release and the reads. */
warp_values warp_exchange(unsigned mask, const uint64_t *words, int n_words, collective_kind kind,
                          site at)
{
    fiber *f = &S.fibers[S.cur];
    warp_state *w = &S.warps[f->warp];
    if ((mask & w->live) != w->live)
        fail("%s at %s:%d with mask %#x leaves out live lanes of %#x (partial-warp "
             "collectives are not modeled)",
             kind_name(kind), at.file, at.line, mask, w->live);
    if (w->arrived == 0) {
        w->kind = kind;
        w->mask = mask;
        w->at = at;
    } else if (w->kind != kind || w->mask != mask || !same_site(w->at, at)) {
        fail("lane %u at %s (%s:%d, mask %#x) while its warp waits at %s (%s:%d, mask %#x)",
             f->lane, kind_name(kind), at.file, at.line, mask, kind_name(w->kind), w->at.file,
             w->at.line, w->mask);
    }
    if (n_words < 1 || n_words > WARP_WORDS)
        fail("%s at %s:%d posts %d words (1..%d)", kind_name(kind), at.file, at.line, n_words,
             (int)WARP_WORDS);
    unsigned g = w->gen;
    uint64_t(*slots)[WARP_WORDS] = w->slot[g & 1];
    memcpy(slots[f->lane], words, sizeof(uint64_t) * (size_t)n_words);
    if (++w->arrived == w->expected)
        release_warp(w);
    else
        wait_for(&w->gen, g);
    return {slots, w->live_at[g & 1]};
}

unsigned lane_id()
{
    return S.fibers[S.cur].lane;
}

void unsupported(const char *what, site at)
{
    fail("%s at %s:%d is not modeled", what, at.file, at.line);
}

/* ---- blocks and launches ---- */

/* Uninitialised shared memory: every byte 0xff (NaN floats, -1 ints).
 * Byte stores past ASan: the section may hold its redzones. */
__attribute__((no_sanitize("address"))) static void poison_bytes(void *begin, void *end)
{
    for (volatile unsigned char *p = (volatile unsigned char *)begin; p && p < end; p++)
        *p = 0xff;
}

static void poison_shared()
{
    poison_bytes(__start_cuda_emu_shared, __stop_cuda_emu_shared);
    S.n_touched = 0;
}

void shared_first_touch(void *p, size_t bytes)
{
    if (!S.active || S.cur == MAIN) return;
    for (int i = 0; i < S.n_touched; i++)
        if (S.touched[i] == p) return;
    if (S.n_touched == MAX_SHARED_VARS)
        fail("more than %d __shared__ variables in one block", MAX_SHARED_VARS);
    S.touched[S.n_touched++] = p;
    poison_bytes(p, (char *)p + bytes);
}

/* The order the block's fibers take turns in: thread order, or a
 * permutation drawn from the schedule seed and the block. */
static void order_block(int n)
{
    for (int t = 0; t < n; t++)
        S.order[t] = t;
    if (!schedule_seed) return;
    uint64_t x = schedule_seed * 0x9e3779b97f4a7c15ull +
                 (block_idx.x + 65536ull * (block_idx.y + 65536ull * block_idx.z)) + 1;
    for (int t = n - 1; t > 0; t--) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int u = (int)(x % (uint64_t)(t + 1)), keep = S.order[t];
        S.order[t] = S.order[u];
        S.order[u] = keep;
    }
}

static void start_block()
{
    int n = S.n_threads;
    order_block(n);
    for (int i = 0; i < n; i++) {
        S.fibers[S.order[i]].next = S.order[(i + 1) % n];
        S.fibers[S.order[i]].prev = S.order[(i + n - 1) % n];
    }
    for (int t = 0; t < n; t++) {
        fiber *f = &S.fibers[t];
        f->idx = {t % block_dim.x, t / block_dim.x % block_dim.y, t / (block_dim.x * block_dim.y)};
        f->warp = t / 32;
        f->lane = (unsigned)t % 32;
        f->asan_fake_stack = nullptr;
#ifdef EMU_ASAN
        /* what an abandoned or finished fiber left poisoned */
        ASAN_UNPOISON_MEMORY_REGION(f->stack, STACK_BYTES);
#endif
        prepare_fiber(f);
    }
    for (int w = 0; w < S.n_warps; w++) {
        warp_state *ws = &S.warps[w];
        int lanes = n - 32 * w < 32 ? n - 32 * w : 32;
        memset(ws, 0, sizeof *ws);
        ws->expected = lanes;
        ws->live = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    }
    S.n_alive = n;
    S.bar_expected = n;
    S.bar_arrived = 0;
    S.bar_at = {nullptr, 0};
    S.stalled = 0;
    S.failed = false;
    poison_shared();
}

static bool run_block()
{
    start_block();
    transfer(MAIN, S.order[0], false);
    S.cur = MAIN;
    return !S.failed;
}

static cudaError_t set_error(cudaError_t e)
{
    if (e != cudaSuccess) last_error = e;
    return e;
}

static cudaError_t refuse(cudaError_t e, const char *why)
{
    snprintf(failure, sizeof failure, "%s", why);
    return set_error(e);
}

cudaError_t refuse_launch(cudaError_t e, const char *why)
{
    return refuse(e, why);
}

static bool alloc_launch(int n_threads)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), per = page + STACK_BYTES;
    S.n_threads = n_threads;
    S.n_warps = (n_threads + 31) / 32;
    S.fibers = new (std::nothrow) fiber[(size_t)n_threads];
    S.order = new (std::nothrow) int[(size_t)n_threads];
    S.warps = new (std::nothrow) warp_state[(size_t)S.n_warps];
    S.stacks_bytes = per * (size_t)n_threads;
    void *m = mmap(nullptr, S.stacks_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    S.stacks = m == MAP_FAILED ? nullptr : (char *)m;
    if (!S.fibers || !S.order || !S.warps || !S.stacks) return false;
    for (int t = 0; t < n_threads; t++) {
        char *guard = S.stacks + per * (size_t)t;
        if (mprotect(guard, page, PROT_NONE) != 0) return false;
        S.fibers[t].stack = guard + page;
    }
    return true;
}

static void free_launch()
{
    if (S.stacks) {
#ifdef EMU_ASAN
        ASAN_UNPOISON_MEMORY_REGION(S.stacks, S.stacks_bytes);
#endif
        munmap(S.stacks, S.stacks_bytes);
    }
    delete[] S.fibers;
    delete[] S.order;
    delete[] S.warps;
    S = launch_state();
}

cudaError_t run_grid(dim3 grid, dim3 block, size_t dynamic_shared, void (*thread_main)(void *),
                     void *ctx)
{
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (in_launch) return refuse(cudaErrorLaunchFailure, "a launch from inside a launch");
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        return refuse(cudaErrorInvalidConfiguration, "launch configuration out of range");
    if (dynamic_shared > 0)
        return refuse(cudaErrorInvalidValue, "dynamic shared memory is not modeled");
    std::lock_guard<std::mutex> one_at_a_time(launch_lock);
    in_launch = true;
    S.active = true;
    S.thread_main = thread_main;
    S.ctx = ctx;
    S.cur = MAIN;
    cudaError_t e = cudaSuccess;
    if (!alloc_launch((int)threads)) {
        snprintf(failure, sizeof failure, "cannot map %d fiber stacks", (int)threads);
        e = cudaErrorMemoryAllocation;
    }
    block_dim = block;
    grid_dim = grid;
    for (unsigned z = 0; e == cudaSuccess && z < grid.z; z++)
        for (unsigned y = 0; e == cudaSuccess && y < grid.y; y++)
            for (unsigned x = 0; e == cudaSuccess && x < grid.x; x++) {
                block_idx = {x, y, z};
                if (!run_block()) e = cudaErrorLaunchFailure;
            }
    free_launch();
    in_launch = false;
    return set_error(e);
}

/* ---- warp-level instructions ---- */

/* Half k & 1 of a posted word of bf16 pairs, as a float. */
static float bf16_half(uint64_t word, int k)
{
    uint32_t w = (uint32_t)word, h = k & 1 ? w >> 16 : w & 0xffffu;
    return from_bits<float>(h << 16);
}

namespace ptx
{

void mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(float &d0, float &d1, float &d2, float &d3,
                                                         uint32_t a0, uint32_t a1, uint32_t a2,
                                                         uint32_t a3, uint32_t b0, uint32_t b1,
                                                         float c0, float c1, float c2, float c3,
                                                         const char *file, int line)
{
    enum { A0 = 0, B0 = 4 }; /* the posted words: a0..a3, b0, b1 */
    const uint64_t mine[6] = {a0, a1, a2, a3, b0, b1};
    warp_values all = warp_exchange(0xffffffffu, mine, 6, COLL_MMA, {file, line});
    if (all.live != 0xffffffffu)
        fail("mma.sync at %s:%d in a warp whose lanes are not all live (%#x)", file, line,
             all.live);
    const int g = (int)lane_id() / 4, t = (int)lane_id() % 4;
    const float c[4] = {c0, c1, c2, c3};
    float *d[4] = {&d0, &d1, &d2, &d3};
    for (int i = 0; i < 4; i++) {
        int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        double sum = c[i];
        for (int k = 0; k < 16; k++) {
            /* A (row, k): lane (row % 8, k % 8 / 2), word a0 + (row >= 8) + 2 (k >= 8);
             * B (k, col): lane (col, k % 8 / 2), word b0 + (k >= 8) */
            int a_lane = row % 8 * 4 + k % 8 / 2, b_lane = col * 4 + k % 8 / 2;
            float a = bf16_half(all.lane[a_lane][A0 + (row >= 8) + 2 * (k >= 8)], k);
            float b = bf16_half(all.lane[b_lane][B0 + (k >= 8)], k);
            sum += (double)(a * b); /* exact in fp32 */
        }
        *d[i] = (float)sum;
    }
}

} // namespace ptx

/* ---- device math: the host's result within the device's error bound ---- */

static uint64_t mix_bits(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The number of ulps to move a result by, in [-n, n], drawn from the
 * argument's bits and the function (salt). */
static int64_t ulp_offset(uint64_t arg_bits, uint64_t salt, int n)
{
    return (int64_t)(mix_bits(arg_bits ^ salt) % (uint64_t)(2 * n + 1)) - n;
}

/* r moved by up to n ulps (toward 0 at most down to 0, never past the
 * largest finite value); 0, inf and NaN stay. */
static float nudge(float r, uint64_t arg_bits, uint64_t salt, int n)
{
    if (n <= 0 || r == 0.0f || !isfinite(r)) return r;
    uint32_t b = to_bits(r) & 0xffffffffu, sign = b & 0x80000000u;
    int64_t mag = (int64_t)(b & 0x7fffffffu) + ulp_offset(arg_bits, salt, n);
    mag = mag < 0 ? 0 : mag > 0x7f7fffff ? 0x7f7fffff : mag;
    return from_bits<float>(sign | (uint32_t)mag);
}

static double nudge_d(double r, uint64_t arg_bits, uint64_t salt, int n)
{
    if (n <= 0 || r == 0.0 || !isfinite(r)) return r;
    uint64_t b = to_bits(r), sign = b & 0x8000000000000000ull;
    int64_t mag = (int64_t)(b & 0x7fffffffffffffffull) + ulp_offset(arg_bits, salt, n);
    mag = mag < 0 ? 0 : mag > 0x7fefffffffffffffll ? 0x7fefffffffffffffll : mag;
    return from_bits<double>(sign | (uint64_t)mag);
}

static float flush_subnormal(float x)
{
    return fabsf(x) < FLT_MIN ? copysignf(0.0f, x) : x;
}

/* The host's results are within half an ulp (a little more for 1 / sqrtf):
 * moving them by n ulps stays within the device's n + 1. */
float device_expf(float x)
{
    return x == 0.0f ? 1.0f : nudge(expf(x), to_bits(x), 1, 1);
}

float device_exp2f(float x)
{
    return x == 0.0f ? 1.0f : nudge(exp2f(x), to_bits(x), 2, 1);
}

float device_fast_expf(float x)
{
    if (x == 0.0f) return 1.0f;
    int n = fabsf(x) < 200.0f ? 1 + (int)floorf(fabsf(1.173f * x)) : 0; /* beyond: 0 or inf */
    return flush_subnormal(nudge(expf(x), to_bits(x), 3, n));
}

float device_rsqrtf(float x)
{
    return nudge(1.0f / sqrtf(x), to_bits(x), 4, 1);
}

double device_log(double x)
{
    return log(x); /* the device's bound is 1 ulp: the host's result is within it */
}

void device_sincos(double x, double *s, double *c)
{
    sincos(x, s, c);
    *s = nudge_d(*s, to_bits(x), 5, 1);
    *c = nudge_d(*c, to_bits(x), 6, 1);
}

void ptx::ex2_approx_ftz_f32(float &d, float a)
{
    a = flush_subnormal(a);
    d = a == 0.0f ? 1.0f : flush_subnormal(nudge(exp2f(a), to_bits(a), 7, 1));
}

} // namespace cuda_emu

extern "C" {

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = cuda_emu::last_error;
    cuda_emu::last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void)
{
    return cuda_emu::last_error;
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorInvalidPitchValue:
        return "invalid pitch argument";
    case cudaErrorInvalidDevice:
        return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
        return "invalid resource handle";
    case cudaErrorNotReady:
        return "device not ready";
    case cudaErrorIllegalAddress:
        return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    }
    return "unknown error";
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "cudaSuccess";
    case cudaErrorInvalidValue:
        return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
        return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
        return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidPitchValue:
        return "cudaErrorInvalidPitchValue";
    case cudaErrorInvalidDevice:
        return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
        return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
        return "cudaErrorNotReady";
    case cudaErrorIllegalAddress:
        return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure:
        return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported:
        return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
        return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit:
        return "cudaErrorStreamCaptureImplicit";
    }
    return "cudaErrorUnknown";
}

const char *cuda_emu_last_failure(void)
{
    return cuda_emu::failure;
}

void cuda_emu_set_schedule(unsigned seed)
{
    cuda_emu::schedule_seed = seed;
}
}
