/* aiobpf: asyncio task steps, captured in kernel space.
 *
 * Uprobes on the two functions that start a task step in CPython's _asyncio
 * module (task_wakeup, and TaskStepMethWrapper's call function) and raw
 * tracepoints on syscall entry/exit (the event loop waiting for I/O) tell, per
 * thread, when a step starts and ends.  When a step ends -- the next step starts
 * on the thread, or the loop goes back to waiting -- the task that ran has just
 * suspended (or finished), and since the thread holds the GIL nothing else can
 * change its objects: its coroutine chain is read here, consistently, and kept as
 * the task's latest record.  On 3.12+ an entry and a return probe on Task.__init__
 * count the tasks created and bracket eager first steps, which run inside it (inside
 * the creating task's step): such a step is captured as its own, and its time is
 * taken out of the step it ran in.  Offsets come per process from `targets`, so one
 * program serves every supported Python and every traced process.
 *
 * Every event costs the traced program time, so the hot path does one lookup of
 * the process (settings and counters share a map value), one of the thread, and
 * rewrites a task's record only when its stack changed.
 */
#include <uapi/linux/ptrace.h>
#include "capture.h"

/* Map sizes; user space sets them (-D, program.py: MapLimits). */
#ifndef MAX_TARGETS
#define MAX_TARGETS 1024
#endif
#ifndef MAX_THREADS
#define MAX_THREADS 16384
#endif
#ifndef MAX_RECORDS
#define MAX_RECORDS 16384
#endif
#ifndef RING_PAGES
#define RING_PAGES 1024
#endif
#define GEN_BUF 512
#define MAX_EAGER_THREADS 1024

struct gen_buf {
    char bytes[GEN_BUF];
};

/* Kernel memory follows what is traced: `targets` and `records` allocate an entry when
 * it is stored (BPF_F_NO_PREALLOC), and a full `records` map refuses new tasks -- each
 * refusal is counted (records_dropped) and the task is read from memory instead.  A
 * record goes when its task finishes, and user space removes a process's records when
 * it stops tracing it.  `threads` is an LRU map (always preallocated, so kept small):
 * a thread that exited is never looked up again and is the first to make room, so
 * capture never stops for want of thread slots, however many threads come and go. */
BPF_F_TABLE("hash", u32, struct target, targets, MAX_TARGETS, BPF_F_NO_PREALLOC);
BPF_TABLE("lru_hash", u32, struct thread_state, threads, MAX_THREADS);
/* What user space changes while a process is traced (capture.h: target_settings). */
BPF_ARRAY(settings, struct target_settings, MAX_TARGETS);
BPF_F_TABLE("hash", struct task_key, struct task_record, records, MAX_RECORDS,
            BPF_F_NO_PREALLOC);
/* Threads inside Task.__init__ (event loops, mostly): LRU, allocated whole, so small. */
BPF_TABLE("lru_hash", u32, struct eager_stack, eager, MAX_EAGER_THREADS);
BPF_PERCPU_ARRAY(scratch, struct task_record, 1);
BPF_PERCPU_ARRAY(genbuf, struct gen_buf, 1);
BPF_RINGBUF_OUTPUT(events, RING_PAGES);

static __always_inline u32 log2l(u64 v)
{
    u32 r = 0;
#pragma unroll
    for (int i = 32; i > 0; i >>= 1) {
        if (v >= (1ULL << i)) {
            v >>= i;
            r += i;
        }
    }
    return r;
}

/* When the process's probes were last (re)attached: thread states and Task.__init__
 * calls from before describe steps whose ends nobody saw.  No settings: all stale. */
static __always_inline u64 epoch_of(struct target *t)
{
    u32 slot = t->cfg.slot;
    struct target_settings *s = settings.lookup(&slot);
    return s ? s->epoch_ns : ~0ULL;
}

static __always_inline int tracing(struct target *t)
{
    u32 slot = t->cfg.slot;
    struct target_settings *s = settings.lookup(&slot);
    return s && s->trace;
}

static __always_inline u64 field(char *buf, u32 off)
{
    /* An 8-byte field of a generator read into buf; offsets come from the config. */
    if (off > GEN_BUF - 8)
        return 0;
    return *(u64 *)(buf + off);
}

static __always_inline u64 ref_to_object(struct target_config *cfg, u64 bits)
{
    if (cfg->int_tag && (bits & 3) == cfg->int_tag)
        return 0;
    return bits & cfg->ref_clear;
}

/* Read the coroutine chain of `task`, whose step just ended, into its record. */
static __always_inline void capture(struct target *t, u32 pid, u32 tid, u64 task,
                                    u64 start, u64 delay, u64 now, u64 nested, u8 eager)
{
    struct target_config *cfg = &t->cfg;
    u32 zero = 0;
    struct task_record *r = scratch.lookup(&zero);
    struct gen_buf *gb = genbuf.lookup(&zero);
    if (!r || !gb)
        return;
    char *buf = gb->bytes;
    r->task = task;
    r->pid = pid;
    r->tid = tid;
    r->taken_ns = now;
    r->step_start_ns = start;
    r->wake_delay_ns = delay;
    r->truncated = 0;
    r->eager = eager;
    r->awaited = 0;
    r->state = CAPTURE_FINISHED;
    /* Every user-memory read costs ~100 ns: the task's fields come in one read. */
    u32 tspan = cfg->task_span & (GEN_BUF - 1);
    if (tspan < 16 || bpf_probe_read_user(buf, tspan, (void *)task)) {
        __sync_fetch_and_add(&t->stats.read_errors, 1);
        return;
    }
    r->coro = field(buf, cfg->task_coro);
    r->name = field(buf, cfg->task_name);
    r->fut_waiter = field(buf, cfg->task_fut_waiter);
    u64 state = field(buf, cfg->task_state) & 0xffffffff;
    r->awaited_by = cfg->task_awaited_by ? field(buf, cfg->task_awaited_by) : 0;
    r->awaited_by_is_set = cfg->task_awaited_by ? field(buf, cfg->task_awaited_by_is_set) & 1 : 0;
    u64 obj = state == cfg->pending_state ? r->coro : 0;
    u32 span = cfg->gen_span & (GEN_BUF - 1);
    u32 depth = 0;
    u64 signature = r->awaited_by ^ r->fut_waiter;
    for (int i = 0; i < AIOBPF_MAX_DEPTH; i++) {
        if (!obj || span < 16)
            break;
        u32 got = span;
        if (bpf_probe_read_user(buf, span, (void *)obj)) {
            /* The slack read past a small object may reach an unmapped page: read the
             * header alone, then as much as a generator needs. */
            u32 need = cfg->gen_min_span & (GEN_BUF - 1);
            if (bpf_probe_read_user(buf, 16, (void *)obj)) {
                __sync_fetch_and_add(&t->stats.read_errors, 1);
                break;
            }
            u64 head_type = field(buf, cfg->ob_type);
            if (head_type == cfg->coro_type || head_type == cfg->gen_type ||
                head_type == cfg->asyncgen_type) {
                if (need < 16 || bpf_probe_read_user(buf, need, (void *)obj)) {
                    __sync_fetch_and_add(&t->stats.read_errors, 1);
                    break;
                }
                got = need;
            } else {
                got = 16;
            }
        }
        u64 type = field(buf, cfg->ob_type);
        if (type != cfg->coro_type && type != cfg->gen_type && type != cfg->asyncgen_type) {
            r->awaited = obj;              /* a future or another awaitable: user space names it */
            break;
        }
        u32 soff = cfg->gen_frame_state;
        if (soff > GEN_BUF - 1)
            break;
        s8 fstate = *(s8 *)(buf + soff);
        if (fstate >= cfg->st_cleared ||
            (fstate > cfg->st_executing && fstate != cfg->st_suspended && fstate != cfg->st_yf &&
             fstate != cfg->st_yf_locked)) {
            r->state = CAPTURE_FINISHED;
            break;
        }
        u64 frame = obj + cfg->gen_iframe;
        u64 code = ref_to_object(cfg, field(buf, cfg->gen_iframe + cfg->frame_code));
        u64 instr = field(buf, cfg->gen_iframe + cfg->frame_instr);
        u32 slot = depth & (AIOBPF_MAX_DEPTH - 1);
        r->frames[slot].code = code;
        r->frames[slot].instr = instr;
        r->kinds[slot] = type == cfg->coro_type ? KIND_COROUTINE
                         : type == cfg->gen_type ? KIND_GENERATOR : KIND_ASYNC_GENERATOR;
        signature = signature * 1000003 ^ code ^ (instr << 1);
        depth++;
        if (fstate == cfg->st_executing) {
            r->state = CAPTURE_RUNNING;
            break;
        }
        if (fstate == cfg->st_created) {
            r->state = CAPTURE_CREATED;
            break;
        }
        r->state = CAPTURE_SUSPENDED;
        /* Does the frame await the object on its stack? */
        int awaits;
        if (cfg->yf_by_oparg) {
            u8 resume[2] = {};
            bpf_probe_read_user(resume, 2, (void *)(instr + cfg->resume_offset));
            awaits = (resume[0] == cfg->resume_ops[0] || resume[0] == cfg->resume_ops[1] ||
                      resume[0] == cfg->resume_ops[2] || resume[0] == cfg->resume_ops[3]) &&
                     (resume[1] & 3) >= 2;
        } else {
            awaits = fstate == cfg->st_yf || fstate == cfg->st_yf_locked;
        }
        if (!awaits)
            break;
        u64 top;
        if (cfg->stack_is_pointer) {
            top = field(buf, cfg->gen_iframe + cfg->frame_stack) - 8 * cfg->yf_depth;
        } else {
            s32 index = (s32)field(buf, cfg->gen_iframe + cfg->frame_stack);
            top = frame + cfg->frame_localsplus + 8 * (s64)(index - cfg->yf_depth);
        }
        u64 bits = 0;
        if (top >= obj && top + 8 <= obj + got) {
            bits = field(buf, (u32)(top - obj));   /* the slot came with the generator */
        } else if (bpf_probe_read_user(&bits, 8, (void *)top)) {
            __sync_fetch_and_add(&t->stats.read_errors, 1);
            break;
        }
        obj = ref_to_object(cfg, bits);
    }
    if (depth == AIOBPF_MAX_DEPTH && obj)
        r->truncated = 1;
    r->depth = depth;
    signature ^= r->awaited ^ ((u64)r->state << 56) ^ depth;
    r->signature = signature;

    /* Eager first steps of other tasks ran inside this one: their time is theirs. */
    r->nested_ns = nested;
    u64 duration = now - start > nested ? now - start - nested : 0;
    struct task_key key = {.pid = pid, .task = task};
    struct task_record *old = records.lookup(&key);
    if (r->state == CAPTURE_FINISHED) {
        /* Nobody reads the record of a finished task: its room goes to others. */
        if (old)
            records.delete(&key);
    } else if (old && old->signature == signature && old->coro == r->coro) {
        /* Suspended where it was last time: update the counts in place. */
        old->steps += 1;
        old->step_ns += duration;
        if (duration > old->max_step_ns)
            old->max_step_ns = duration;   /* (one thread steps a task at a time) */
        old->taken_ns = now;
        old->step_start_ns = start;
        old->wake_delay_ns = delay;
        old->nested_ns = nested;
        old->eager = eager;
        old->tid = tid;
    } else {
        r->steps = (old ? old->steps : 0) + 1;
        r->step_ns = (old ? old->step_ns : 0) + duration;
        r->max_step_ns = old && old->max_step_ns > duration ? old->max_step_ns : duration;
        if (records.update(&key, r))
            __sync_fetch_and_add(&t->stats.records_dropped, 1);   /* full: counted */
    }
    __sync_fetch_and_add(&t->stats.captures, 1);
    __sync_fetch_and_add(&t->stats.step_ns_sum, duration);
    if (r->state == CAPTURE_FINISHED)
        __sync_fetch_and_add(&t->stats.finished, 1);
    __sync_fetch_and_add(&t->stats.step_hist[log2l(duration) & (AIOBPF_HIST_SLOTS - 1)], 1);
    if (r->state == CAPTURE_SUSPENDED && depth <= AIOBPF_MAX_DEPTH)
        __sync_fetch_and_add(&t->stats.depth_hist[depth], 1);
    if (tracing(t)) {
        /* Waking the reader at every event would cost the traced thread more than the
         * event itself: the reader is never woken, it reads the ring every few ms. */
        if (events.ringbuf_output(r, sizeof(*r), BPF_RB_NO_WAKEUP))
            __sync_fetch_and_add(&t->stats.events_lost, 1);
    }
}

static __always_inline int step_start(struct target *t, u64 task)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    if (!task)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct thread_state *ts = threads.lookup(&tid);
    if (!ts || ts->pid != pid) {
        /* New, or a thread id reused by another process: start afresh. */
        struct thread_state fresh = {.pid = pid};
        threads.update(&tid, &fresh);
        ts = threads.lookup(&tid);
        if (!ts)
            return 0;
    }
    /* Thread states from before the probes were last attached describe steps whose
     * end nobody saw: they are dropped, not measured. */
    u64 epoch = epoch_of(t);
    if (ts->task && ts->start_ns >= epoch) {
        u64 prev = ts->task;
        ts->task = 0;
        capture(t, pid, tid, prev, ts->start_ns, ts->delay_ns, now, ts->nested_ns, 0);
    }
    ts->delay_ns = 0;
    ts->nested_ns = 0;
    if (ts->woke_ns && ts->woke_ns >= epoch) {
        ts->delay_ns = now - ts->woke_ns;
        __sync_fetch_and_add(&t->stats.delay_hist[log2l(ts->delay_ns) & (AIOBPF_HIST_SLOTS - 1)], 1);
        __sync_fetch_and_add(&t->stats.delay_ns_sum, ts->delay_ns);
    }
    ts->task = task;
    ts->start_ns = now;
    __sync_fetch_and_add(&t->stats.steps, 1);
    __sync_fetch_and_add(&t->stats.prog_ns_sum, bpf_ktime_get_ns() - now);
    return 0;
}

/* task_wakeup(task, future): the task's awaited future is done. */
int on_task_wakeup(struct pt_regs *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct target *t = targets.lookup(&pid);
    if (!t)
        return 0;
    return step_start(t, PT_REGS_PARM1(ctx));
}

/* TaskStepMethWrapper.__call__(wrapper, ...): a step scheduled with call_soon. */
int on_step_wrapper(struct pt_regs *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct target *t = targets.lookup(&pid);
    if (!t)
        return 0;
    u64 task = 0;
    bpf_probe_read_user(&task, 8, (void *)(PT_REGS_PARM1(ctx) + t->cfg.wrapper_task));
    if (task)
        __sync_fetch_and_add(&t->stats.wrapper_steps, 1);
    return step_start(t, task);
}

/* Task.__init__(task, args, kwargs) is entered: note when, for its return. */
int on_task_init(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    struct target *t = targets.lookup(&pid);
    if (!t)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct eager_stack *es = eager.lookup(&tid);
    if (!es || es->pid != pid) {
        struct eager_stack fresh = {.pid = pid};
        eager.update(&tid, &fresh);
        es = eager.lookup(&tid);
        if (!es)
            return 0;
    }
    /* Calls whose return nobody saw (the probes were detached meanwhile) are stale. */
    if (es->depth && es->frames[0].start_ns < epoch_of(t))
        es->depth = 0;
    u32 d = es->depth;
    if (d < AIOBPF_EAGER_DEPTH) {
        struct eager_frame *f = &es->frames[d & (AIOBPF_EAGER_DEPTH - 1)];
        f->task = PT_REGS_PARM1(ctx);
        f->start_ns = now;
        f->nested_ns = 0;
    }
    es->depth = d + 1;
    __sync_fetch_and_add(&t->stats.prog_ns_sum, bpf_ktime_get_ns() - now);
    return 0;
}

/* Did Task.__init__ run the task's first step (eagerly), rather than schedule it? */
static __always_inline int started_eagerly(struct target *t, u64 task)
{
    u64 state = 0, coro = 0;
    if (bpf_probe_read_user(&state, 4, (void *)(task + t->cfg.task_state)) ||
        bpf_probe_read_user(&coro, 8, (void *)(task + t->cfg.task_coro)))
        return 0;
    if (state != t->cfg.pending_state)
        return 1;                      /* done already: it finished in its first step */
    s8 fstate = 0;
    if (!coro || bpf_probe_read_user(&fstate, 1, (void *)(coro + t->cfg.gen_frame_state)))
        return 0;
    return fstate != t->cfg.st_created;
}

/* Task.__init__ returns: count the task; if its first step ran in there, capture that
 * step and take its time out of the step (or eager step) it ran inside. */
int on_task_init_return(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    struct target *t = targets.lookup(&pid);
    if (!t)
        return 0;
    struct eager_stack *es = eager.lookup(&tid);
    if (!es || es->pid != pid || !es->depth)
        return 0;
    u32 d = --es->depth;
    if ((int)PT_REGS_RC(ctx) != 0)
        return 0;                      /* it raised: no task */
    __sync_fetch_and_add(&t->stats.created, 1);
    if (d >= AIOBPF_EAGER_DEPTH)
        return 0;
    struct eager_frame *f = &es->frames[d & (AIOBPF_EAGER_DEPTH - 1)];
    u64 task = f->task, start = f->start_ns, nested = f->nested_ns;
    u64 now = bpf_ktime_get_ns();
    if (start < epoch_of(t) || !started_eagerly(t, task)) {
        __sync_fetch_and_add(&t->stats.prog_ns_sum, bpf_ktime_get_ns() - now);
        return 0;
    }
    __sync_fetch_and_add(&t->stats.steps, 1);
    __sync_fetch_and_add(&t->stats.eager_steps, 1);
    capture(t, pid, tid, task, start, 0, now, nested, 1);
    if (d > 0) {
        es->frames[(d - 1) & (AIOBPF_EAGER_DEPTH - 1)].nested_ns += now - start;
    } else {
        struct thread_state *ts = threads.lookup(&tid);
        if (ts && ts->pid == pid && ts->task && ts->start_ns <= start)
            ts->nested_ns += now - start;
    }
    __sync_fetch_and_add(&t->stats.prog_ns_sum, bpf_ktime_get_ns() - now);
    return 0;
}

/* The event loop waits for I/O: the step running on this thread, if any, is over. */
static __always_inline int is_wait(long nr)
{
    /* x86-64: select, poll, epoll_wait, pselect6, ppoll, epoll_pwait, epoll_pwait2 */
    return nr == 23 || nr == 7 || nr == 232 || nr == 270 || nr == 271 || nr == 281 || nr == 441;
}

static __always_inline int wait_enter(void)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    struct target *t = targets.lookup(&pid);
    if (!t)
        return 0;
    struct thread_state *ts = threads.lookup(&tid);
    if (ts && ts->task && ts->pid == pid) {
        u64 prev = ts->task;
        ts->task = 0;
        if (ts->start_ns >= epoch_of(t)) {
            u64 now = bpf_ktime_get_ns();
            capture(t, pid, tid, prev, ts->start_ns, ts->delay_ns, now, ts->nested_ns, 0);
            __sync_fetch_and_add(&t->stats.prog_ns_sum, bpf_ktime_get_ns() - now);
        }
    }
    return 0;
}

static __always_inline int wait_exit(void)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    if (!targets.lookup(&pid))
        return 0;
    struct thread_state *ts = threads.lookup(&tid);
    if (ts && ts->pid == pid)
        ts->woke_ns = bpf_ktime_get_ns();
    return 0;
}

/* Raw syscall tracepoints: they run for every system call of the host and return at
 * once for the calls and processes that are not of interest.  (The per-syscall
 * tracepoints cost a traced loop more per call; measured, see bench/overhead.py.) */
int on_raw_enter(struct bpf_raw_tracepoint_args *ctx)
{
    if (!is_wait(ctx->args[1]))
        return 0;
    return wait_enter();
}

int on_raw_exit(struct bpf_raw_tracepoint_args *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = 0;
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    if (!is_wait(nr))
        return 0;
    return wait_exit();
}

/* Nothing: the probe aiobpf times to learn what one uprobe hit costs on this machine
 * (aiobpf/collector/probe_cost.py). */
int on_calibrate(struct pt_regs *ctx)
{
    return 0;
}
