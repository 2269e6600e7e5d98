/* Structures shared by capture.bpf.c and its user side (capture.py), mirrored with
 * ctypes in abi.py.  Keep both in step: tests/unit/test_abi.py compares this file with
 * abi.py, and every load compares the maps as compiled with abi.py's types. */
#ifndef AIOBPF_CAPTURE_H
#define AIOBPF_CAPTURE_H

#define AIOBPF_MAX_DEPTH 32      /* coroutine frames captured per task */
#define AIOBPF_MAX_RESUME_OPS 4  /* RESUME opcode variants (3.11/3.12 chain test) */
#define AIOBPF_HIST_SLOTS 64
#define AIOBPF_EAGER_DEPTH 4     /* eager starts nested in one another, bracketed per thread */

/* Everything version-specific the programs need, per traced process. */
struct target_config {
    /* objects */
    __u32 ob_type;
    /* task objects */
    __u32 task_coro, task_name, task_fut_waiter, task_awaited_by, task_awaited_by_is_set;
    __u32 task_state;
    __u32 wrapper_task;            /* TaskStepMethWrapper.sw_task */
    /* generators and their embedded interpreter frame */
    __u32 gen_frame_state, gen_iframe;
    __u32 frame_code, frame_instr, frame_stack;  /* stack: stackpointer (3.14+) or stacktop */
    __u32 frame_localsplus;
    __u32 gen_span;                /* bytes read at once from a generator (< 512) */
    __u32 task_span;               /* bytes read at once from a task (< 512) */
    __u32 gen_min_span;            /* bytes a generator's header and frame need */
    __s8 st_created, st_executing, st_suspended, st_yf, st_yf_locked, st_cleared;
    __u8 stack_is_pointer;         /* 1: frame_stack is a pointer, 0: an int index */
    __u8 yf_by_oparg;              /* 3.11/3.12: test the RESUME after the frame's instr */
    __u8 yf_depth;                 /* stack slot (from the top) of the awaited object */
    __u8 resume_offset;            /* RESUME is at instr + resume_offset */
    __u8 pad0[2];
    __u8 resume_ops[AIOBPF_MAX_RESUME_OPS];
    __u64 ref_clear;               /* mask clearing _PyStackRef tag bits */
    __u64 int_tag;                 /* tagged-int marker (low two bits), 0: none */
    __u64 coro_type, gen_type, asyncgen_type;  /* run-time type object addresses */
    __u64 pending_state;           /* value of STATE_PENDING */
    __u32 slot;                    /* the process's entry in `settings` */
    __u32 pad1;
};

/* What user space changes while a process is traced, in a map of its own (`settings`,
 * an array indexed by target_config.slot): a write of a `targets` value would replace
 * the counters the programs add to in place, and lose what they add meanwhile. */
struct target_settings {
    __u64 epoch_ns;                /* probes (re)attached then: older thread states are stale */
    __u8 trace;                    /* emit one event per step */
    __u8 pad[7];
};

struct frame_ref {
    __u64 code;                    /* code object */
    __u64 instr;                   /* instruction pointer (prev_instr on 3.11/3.12) */
};

enum capture_state {
    CAPTURE_SUSPENDED = 1,         /* innermost frame awaits `awaited` */
    CAPTURE_FINISHED = 2,          /* the task's coroutine is done */
    CAPTURE_RUNNING = 3,           /* a frame was still executing (nested loop, eager) */
    CAPTURE_CREATED = 4,           /* not started yet */
};

enum frame_kind {
    KIND_COROUTINE = 0,
    KIND_GENERATOR = 1,
    KIND_ASYNC_GENERATOR = 2,
};

/* The state of one task as the step that just ended left it. */
struct task_record {
    __u64 task, coro, name, fut_waiter, awaited_by, awaited;
    __u64 taken_ns;                /* when the step ended and this was read */
    __u64 step_start_ns;           /* when that step started */
    __u64 wake_delay_ns;           /* from its loop waking to that step's start (0: unknown) */
    __u64 steps;                   /* steps seen since tracing began */
    __u64 step_ns;                 /* their total duration */
    __u64 nested_ns;               /* eager first steps of other tasks that ran inside
                                      this step: not part of its duration */
    __u64 max_step_ns;             /* the longest of the steps seen (its own time) */
    __u32 pid, tid;
    __u32 depth;                   /* frames[] in use, outermost first */
    __u8 state;                    /* enum capture_state */
    __u8 awaited_by_is_set;
    __u8 truncated;                /* the chain was deeper than AIOBPF_MAX_DEPTH */
    __u8 eager;                    /* an eager first step (run inside Task.__init__) */
    __u64 signature;               /* hash of frames[]: an unchanged stack is not copied */
    struct frame_ref frames[AIOBPF_MAX_DEPTH];
    __u8 kinds[AIOBPF_MAX_DEPTH];  /* enum frame_kind of each frame */
};

struct task_key {
    __u32 pid;
    __u32 pad;
    __u64 task;
};

/* What a thread is doing: the task stepping on it, and when its loop last woke. */
struct thread_state {
    __u64 task;
    __u64 start_ns;
    __u64 woke_ns;
    __u64 delay_ns;                /* wake-to-start delay of the step now running */
    __u64 nested_ns;               /* eager first steps run inside it so far */
    __u32 pid;                     /* its process: user space removes a process's threads */
    __u32 pad;
};

/* Task.__init__ calls in progress on a thread, innermost last: an eager task's first
 * step runs inside one, and may create (and start) further eager tasks. */
struct eager_frame {
    __u64 task;
    __u64 start_ns;                /* when Task.__init__ was entered */
    __u64 nested_ns;               /* eager first steps of other tasks inside this one */
};

struct eager_stack {
    __u32 pid;
    __u32 depth;                   /* calls in progress (beyond AIOBPF_EAGER_DEPTH: counted only) */
    struct eager_frame frames[AIOBPF_EAGER_DEPTH];
};

/* What the programs count for one process; updated in place with atomic adds. */
struct target_stats {
    __u64 steps;                   /* step starts seen */
    __u64 captures;                /* records taken */
    __u64 read_errors;             /* user memory that could not be read */
    __u64 events_lost;             /* trace events the ring buffer had no room for */
    __u64 finished;                /* steps that ended with the task's coroutine done */
    __u64 step_ns_sum;             /* total duration of the captured steps */
    __u64 delay_ns_sum;            /* total wake-to-step delay of the steps that have one */
    __u64 prog_ns_sum;             /* time the programs spent on this process's steps */
    __u64 records_dropped;         /* records not stored: the records map was full */
    __u64 created;                 /* tasks created (Task.__init__ returned 0; 3.12+) */
    __u64 eager_steps;             /* of the steps, eager first steps */
    __u64 step_hist[AIOBPF_HIST_SLOTS];   /* log2(step duration in ns) */
    __u64 delay_hist[AIOBPF_HIST_SLOTS];  /* log2(ns from the loop waking to the step) */
    __u64 depth_hist[AIOBPF_MAX_DEPTH + 1]; /* frames of the suspended stack */
    __u64 wrapper_steps;           /* of the steps, those TaskStepMethWrapper started
                                      (their probe site may cost more: probe_cost.py) */
};

/* The value of the `targets` map: settings written by user space, counts by BPF. */
struct target {
    struct target_config cfg;
    struct target_stats stats;
};

#endif
