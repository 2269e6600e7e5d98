/* aiobpf: asyncio task steps, captured in kernel space.
 *
 * Uprobes on the two functions that start a task step in CPython's _asyncio
 * module (task_wakeup, and TaskStepMethWrapper's call function) and raw
 * tracepoints on syscall entry/exit (the event loop waiting for I/O) tell, per
 * thread, when a step starts and ends.  When a step ends -- the next step starts
 * on the thread, or the loop goes back to waiting -- the task that ran has just
 * suspended (or finished), and since the thread holds the GIL nothing else can
 * change its objects: its coroutine chain is read here, consistently, and kept as
 * the task's latest record.  Offsets come per process from `targets`, so one
 * program serves every supported Python and every traced process.
 *
 * Settings are map values, not text pasted into this source.
 */
#include <uapi/linux/ptrace.h>
#include "capture.h"

#define MAX_TARGETS 1024
#define MAX_THREADS 65536
#define MAX_RECORDS 262144
#define GEN_BUF 512

BPF_HASH(targets, u32, struct target_config, MAX_TARGETS);
BPF_HASH(threads, u32, struct thread_state, MAX_THREADS);
BPF_TABLE("lru_hash", struct task_key, struct task_record, records, MAX_RECORDS);
BPF_PERCPU_ARRAY(scratch, struct task_record, 1);
struct gen_buf {
    char bytes[GEN_BUF];
};
BPF_PERCPU_ARRAY(genbuf, struct gen_buf, 1);
BPF_HASH(counters, struct counter_key, u64, MAX_TARGETS * COUNT_MAX);
BPF_HASH(step_hist, struct hist_key, u64, MAX_TARGETS * AIOBPF_HIST_SLOTS);
BPF_HASH(delay_hist, struct hist_key, u64, MAX_TARGETS * AIOBPF_HIST_SLOTS);
BPF_HASH(depth_hist, struct hist_key, u64, MAX_TARGETS * AIOBPF_HIST_SLOTS);
BPF_RINGBUF_OUTPUT(events, 1024);

static __always_inline void count(u32 pid, u32 which, u64 n)
{
    struct counter_key key = {.pid = pid, .counter = which};
    u64 zero = 0;
    u64 *v = counters.lookup_or_try_init(&key, &zero);
    if (v)
        __sync_fetch_and_add(v, n);
}

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

static __always_inline struct hist_key hist_key(u32 pid, u32 slot)
{
    struct hist_key key = {.pid = pid, .slot = slot < AIOBPF_HIST_SLOTS ? slot : AIOBPF_HIST_SLOTS - 1};
    return key;
}

/* bcc rewrites map method calls in place: one small function per histogram. */
static __always_inline void step_hist_add(u32 pid, u32 slot)
{
    struct hist_key key = hist_key(pid, slot);
    step_hist.increment(key);
}

static __always_inline void delay_hist_add(u32 pid, u32 slot)
{
    struct hist_key key = hist_key(pid, slot);
    delay_hist.increment(key);
}

static __always_inline void depth_hist_add(u32 pid, u32 slot)
{
    struct hist_key key = hist_key(pid, slot);
    depth_hist.increment(key);
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

/* Read task `task`'s coroutine chain into its record: the step it ran has ended. */
static __always_inline void capture(struct target_config *cfg, u32 pid, u32 tid, u64 task,
                                    u64 start, u64 now)
{
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
    r->depth = 0;
    r->truncated = 0;
    r->awaited = 0;
    r->state = CAPTURE_FINISHED;
    u64 state = 0;
    u8 is_set = 0;
    int err = bpf_probe_read_user(&r->coro, 8, (void *)(task + cfg->task_coro));
    err |= bpf_probe_read_user(&r->name, 8, (void *)(task + cfg->task_name));
    err |= bpf_probe_read_user(&r->fut_waiter, 8, (void *)(task + cfg->task_fut_waiter));
    err |= bpf_probe_read_user(&state, 4, (void *)(task + cfg->task_state));
    r->awaited_by = 0;
    if (cfg->task_awaited_by) {
        err |= bpf_probe_read_user(&r->awaited_by, 8, (void *)(task + cfg->task_awaited_by));
        err |= bpf_probe_read_user(&is_set, 1, (void *)(task + cfg->task_awaited_by_is_set));
    }
    r->awaited_by_is_set = is_set;
    if (err) {
        count(pid, COUNT_READ_ERRORS, 1);
        return;
    }
    u64 obj = state == cfg->pending_state ? r->coro : 0;
    u32 span = cfg->gen_span & (GEN_BUF - 1);
    u32 depth = 0;
    for (int i = 0; i < AIOBPF_MAX_DEPTH; i++) {
        if (!obj || span < 16)
            break;
        if (bpf_probe_read_user(buf, span, (void *)obj)) {
            count(pid, COUNT_READ_ERRORS, 1);
            break;
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
        if (bpf_probe_read_user(&bits, 8, (void *)top)) {
            count(pid, COUNT_READ_ERRORS, 1);
            break;
        }
        obj = ref_to_object(cfg, bits);
    }
    if (depth == AIOBPF_MAX_DEPTH && obj)
        r->truncated = 1;
    r->depth = depth;

    struct task_key key = {.pid = pid, .task = task};
    struct task_record *old = records.lookup(&key);
    u64 duration = now - start;
    r->steps = (old ? old->steps : 0) + 1;
    r->step_ns = (old ? old->step_ns : 0) + duration;
    records.update(&key, r);
    count(pid, COUNT_CAPTURES, 1);
    step_hist_add(pid, log2l(duration));
    if (r->state == CAPTURE_SUSPENDED)
        depth_hist_add(pid, depth);
    if (cfg->trace) {
        if (events.ringbuf_output(r, sizeof(*r), 0))
            count(pid, COUNT_EVENTS_LOST, 1);
    }
}

static __always_inline void end_step(struct target_config *cfg, u32 pid, u32 tid,
                                     struct thread_state *ts, u64 now)
{
    u64 task = ts->task;
    ts->task = 0;
    capture(cfg, pid, tid, task, ts->start_ns, now);
}

static __always_inline int step_start(u64 task)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    struct target_config *cfg = targets.lookup(&pid);
    if (!cfg || !task)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct thread_state fresh = {};
    struct thread_state *ts = threads.lookup(&tid);
    if (!ts) {
        threads.update(&tid, &fresh);
        ts = threads.lookup(&tid);
        if (!ts)
            return 0;
    }
    if (ts->task)
        end_step(cfg, pid, tid, ts, now);
    if (ts->woke_ns)
        delay_hist_add(pid, log2l(now - ts->woke_ns));
    ts->task = task;
    ts->start_ns = now;
    count(pid, COUNT_STEPS, 1);
    return 0;
}

/* task_wakeup(task, future): the task's awaited future is done. */
int on_task_wakeup(struct pt_regs *ctx)
{
    return step_start(PT_REGS_PARM1(ctx));
}

/* TaskStepMethWrapper.__call__(wrapper, ...): a step scheduled with call_soon. */
int on_step_wrapper(struct pt_regs *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct target_config *cfg = targets.lookup(&pid);
    if (!cfg)
        return 0;
    u64 task = 0;
    bpf_probe_read_user(&task, 8, (void *)(PT_REGS_PARM1(ctx) + cfg->wrapper_task));
    return step_start(task);
}

/* The event loop waits for I/O: the step running on this thread, if any, is over. */
static __always_inline int is_wait(long nr)
{
    /* x86-64: select, poll, epoll_wait, pselect6, ppoll, epoll_pwait, epoll_pwait2 */
    return nr == 23 || nr == 7 || nr == 232 || nr == 270 || nr == 271 || nr == 281 || nr == 441;
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    struct target_config *cfg = targets.lookup(&pid);
    if (!cfg || !is_wait(ctx->args[1]))
        return 0;
    struct thread_state *ts = threads.lookup(&tid);
    if (ts && ts->task)
        end_step(cfg, pid, tid, ts, bpf_ktime_get_ns());
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    if (!targets.lookup(&pid))
        return 0;
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = 0;
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    if (!is_wait(nr))
        return 0;
    struct thread_state *ts = threads.lookup(&tid);
    if (ts)
        ts->woke_ns = bpf_ktime_get_ns();
    return 0;
}
