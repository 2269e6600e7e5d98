/* Structures shared by profile.bpf.c and its user side (aiobpf/bpf/profile.py, which
 * mirrors them with ctypes and checks the sizes bcc reports for the maps). */
#ifndef AIOBPF_PROFILE_H
#define AIOBPF_PROFILE_H

#define AIOBPF_PROFILE_FRAMES 96   /* interpreter frames read per sample */
#define AIOBPF_PROFILE_SPAN 128    /* at most this many bytes read per frame */
#define AIOBPF_NO_CFRAME 0xffffffff

/* Where a thread's frames are, for one traced process's Python. */
struct profile_config {
    __u32 tstate_frame;   /* offset of current_frame in PyThreadState, or of cframe */
    __u32 cframe_frame;   /* 3.11/3.12: offset of current_frame in _PyCFrame;
                             AIOBPF_NO_CFRAME: tstate_frame is the frame itself */
    __u32 frame_previous, frame_code, frame_instr, frame_owner;
    __u32 frame_span;     /* bytes read per frame: up to the last field it needs */
    __u32 pad;
    __u64 ref_clear;      /* mask clearing _PyStackRef tag bits of the code pointer */
};

struct profile_frame {
    __u64 frame;          /* address of the interpreter frame */
    __u64 code;           /* its code object */
    __u64 instr;          /* its instruction pointer */
};

/* One sample: what the thread was executing when its CPU clock ticked. */
struct profile_sample {
    __u32 pid, tid;
    __u64 time_ns;
    __u32 depth;          /* frames[] in use, innermost first */
    __u8 truncated;       /* deeper than AIOBPF_PROFILE_FRAMES */
    __u8 unreadable;      /* a read of user memory failed: the stack is cut there */
    __u8 pad[2];
    struct profile_frame frames[AIOBPF_PROFILE_FRAMES];
    __u8 owners[AIOBPF_PROFILE_FRAMES];
};

#endif
