/* aiobpf profile: what a Python thread executes, sampled on its CPU clock.
 *
 * A perf event per thread of the profiled process (software CPU clock, at the rate
 * asked) runs this program when the thread has spent a period on a CPU.  It finds
 * the thread's PyThreadState (user space keeps `thread_states` up to date), follows
 * the chain of interpreter frames from the innermost outwards, and sends the frames
 * (address, code object, instruction) to user space, which names them and finds the
 * task whose coroutine they run in.  Nothing is written to the process; a frame that
 * cannot be read ends the stack there (counted in the sample).
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include "profile.h"

/* The user side passes the sizes of its ctypes mirrors: a mismatch does not compile. */
#ifdef SAMPLE_SIZE
_Static_assert(sizeof(struct profile_sample) == SAMPLE_SIZE,
               "struct profile_sample: profile.h and aiobpf/bpf/profile.py disagree");
_Static_assert(sizeof(struct profile_config) == CONFIG_SIZE,
               "struct profile_config: profile.h and aiobpf/bpf/profile.py disagree");
#endif

#ifndef RING_PAGES
#define RING_PAGES 64
#endif
#ifndef MAX_THREADS
#define MAX_THREADS 4096
#endif

BPF_HASH(configs, u32, struct profile_config, 64);          /* pid -> offsets */
BPF_HASH(thread_states, u32, u64, MAX_THREADS);             /* tid -> PyThreadState */
BPF_ARRAY(lost, u64, 1);                                    /* samples the ring refused */
BPF_RINGBUF_OUTPUT(samples, RING_PAGES);

struct frame_bytes {
    char b[2 * AIOBPF_PROFILE_SPAN];   /* room for the masked read size */
};
BPF_PERCPU_ARRAY(scratch, struct frame_bytes, 1);

static __always_inline u64 at(char *buf, u32 off)
{
    if (off > AIOBPF_PROFILE_SPAN - 8)
        return 0;
    return *(u64 *)(buf + off);
}

int on_cpu_clock(struct bpf_perf_event_data *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    struct profile_config *cfg = configs.lookup(&pid);
    u64 *tstate = thread_states.lookup(&tid);
    if (!cfg || !tstate)
        return 0;
    u32 zero = 0;
    struct frame_bytes *fb = scratch.lookup(&zero);
    if (!fb)
        return 0;
    struct profile_sample *s = samples.ringbuf_reserve(sizeof(struct profile_sample));
    if (!s) {
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
        return 0;
    }
    s->pid = pid;
    s->tid = tid;
    s->time_ns = bpf_ktime_get_ns();
    s->depth = 0;
    s->truncated = 0;
    s->unreadable = 0;
    u64 frame = 0;
    if (bpf_probe_read_user(&frame, sizeof(frame), (void *)(*tstate + cfg->tstate_frame)))
        s->unreadable = 1;
    if (frame && cfg->cframe_frame != AIOBPF_NO_CFRAME) {
        u64 cframe = frame;
        frame = 0;
        if (bpf_probe_read_user(&frame, sizeof(frame), (void *)(cframe + cfg->cframe_frame)))
            s->unreadable = 1;
    }
    u32 span = cfg->frame_span;
    if (span < 8 || span > AIOBPF_PROFILE_SPAN)
        span = AIOBPF_PROFILE_SPAN;
    u32 depth = 0;
    for (int i = 0; i < AIOBPF_PROFILE_FRAMES; i++) {
        if (!frame)
            break;
        if (bpf_probe_read_user(fb->b, span & (2 * AIOBPF_PROFILE_SPAN - 1), (void *)frame)) {
            s->unreadable = 1;
            break;
        }
        s->frames[i].frame = frame;
        s->frames[i].code = at(fb->b, cfg->frame_code) & cfg->ref_clear;
        s->frames[i].instr = at(fb->b, cfg->frame_instr);
        u32 owner = cfg->frame_owner;
        s->owners[i] = owner < AIOBPF_PROFILE_SPAN ? fb->b[owner & (AIOBPF_PROFILE_SPAN - 1)] : 0;
        depth = i + 1;
        frame = at(fb->b, cfg->frame_previous);
    }
    if (frame && depth == AIOBPF_PROFILE_FRAMES)
        s->truncated = 1;
    s->depth = depth;
    samples.ringbuf_submit(s, 0);
    return 0;
}
