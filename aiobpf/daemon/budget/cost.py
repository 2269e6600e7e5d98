"""What capture costs a traced process: per captured step, and in all.

A captured step costs the trap of its uprobe hit (twice that where the probe site's
instruction is single-stepped out of line rather than emulated), the programs' own
time (which they add up, ``prog_ns_sum``), the syscall hooks' toll on the step's
system calls, and, per task created where Task.__init__ is probed, an entry and a
return probe.  The machine's trap and syscall costs are timed at the daemon's start
(aiobpf.collector.probe_cost); the rest is measured per window.  Over a window with the
probes attached, a process's step rate and CPU rate then give the overhead full
capture would impose::

    overhead = steps/s * cost / (CPU s/s - steps/s * cost)

(the probes' cost is charged to the process's own CPU time, so it is taken out of
the denominator).

Continuous profiles (``profile_rate``) cost each sampled thread a perf interrupt and
the sampling program's walk of its frames per sample, and a thread is sampled
``profile_rate`` times per second of its own CPU time: their overhead is
``profile_rate * PROFILE_SAMPLE_S`` whatever the process does.  It is taken from the
budget first; the probes are planned within what is left (``capture_budget``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiobpf.collector.probe_cost import ProbeCosts
from aiobpf.collector.probes import STEP_WRAPPER_CALL, TASK_WAKEUP

SYSCALLS_PER_STEP = 4  # assumed: 1 for a queue ping-pong, 4 for an HTTP server (README)
MIN_CPU_RATE = 1e-3    # a process that sleeps: its few steps decide nothing
MIN_OWN_SHARE = 0.1    # when the model charges the probes nearly all CPU, it is off
# One CPU sample's whole cost to the sampled thread: the perf interrupt (9-12 us) and
# the program (9-19 us by depth, up to the 96 frames it walks), measured side by side
# with bench/profile_sample_cost.py (28-33 us in two runs at 30 and 120 frames deep;
# the program's time counted by the kernel, kernel.bpf_stats_enabled), rounded up.
PROFILE_SAMPLE_S = 35e-6


def step_cost(costs: ProbeCosts, program_s: float, stepped_share: float = 0.0,
              created_per_step: float = 0.0) -> float:
    """Estimated cost of one captured step, given the programs' time per step, the
    share of steps whose probe site's instruction is single-stepped, and the tasks
    created per step (where Task.__init__ is probed)."""
    stepped = max(costs.stepped_trap_s, costs.trap_s)
    trap = stepped_share * stepped + (1.0 - stepped_share) * costs.trap_s
    return (trap + program_s + SYSCALLS_PER_STEP * costs.syscall_s
            + created_per_step * costs.created_s)


def full_overhead(step_rate: float, cpu_rate: float, cost: float) -> float:
    """The overhead ratio full capture imposes, from rates measured with probes on."""
    tracer = step_rate * cost
    own = max(cpu_rate - tracer, MIN_OWN_SHARE * cpu_rate, MIN_CPU_RATE)
    return tracer / own


@dataclass(frozen=True)
class CostModel:
    """How one process's captured steps are costed.

    ``costs``: the machine's timings (None: not measured, ``fixed`` or nothing);
    ``fixed``: a cost per step the configuration sets instead; ``wrapper_stepped`` and
    ``wakeup_stepped``: whether the probe sites that start steps (TaskStepMethWrapper's
    call, task_wakeup) are instructions the kernel single-steps (any but a ``push``)."""

    costs: ProbeCosts | None = None
    fixed: float | None = None
    wrapper_stepped: bool = False
    wakeup_stepped: bool = False

    def stepped_share(self, wrapped: float) -> float:
        """The share of steps whose probe hit was single-stepped, given the share
        ``wrapped`` that TaskStepMethWrapper's probe started (the rest: task_wakeup's)."""
        wrapped = min(max(wrapped, 0.0), 1.0)
        return ((wrapped if self.wrapper_stepped else 0.0)
                + (1.0 - wrapped if self.wakeup_stepped else 0.0))

    def per_step(self, program_s: float, wrapped: float, created_per_step: float
                 ) -> float | None:
        """One captured step's cost as measured (None: the machine's timings are
        unknown); ``fixed`` is not consulted here."""
        if self.costs is None:
            return None
        return step_cost(self.costs, program_s, self.stepped_share(wrapped),
                         created_per_step)

    @classmethod
    def for_sites(cls, costs: ProbeCosts | None, fixed: float | None,
                  instructions: Mapping[str, str]) -> CostModel:
        """The model for a process whose step probes sit on ``instructions`` (function
        name -> the probed instruction's mnemonic): a ``push`` is emulated, any other
        instruction is single-stepped out of line (a second trap)."""
        def stepped(function: str) -> bool:
            return instructions.get(function, "push") != "push"
        return cls(costs, fixed, stepped(STEP_WRAPPER_CALL), stepped(TASK_WAKEUP))


def profile_overhead(rate_hz: float, sample_s: float = PROFILE_SAMPLE_S) -> float:
    """What continuous profiles at ``rate_hz`` cost a process, as a ratio of its own
    CPU time (each thread is sampled ``rate_hz`` times a second of its CPU time)."""
    return max(rate_hz, 0.0) * sample_s


def capture_budget(budget: float, profile_rate_hz: float) -> float:
    """The share of ``budget`` left for the probes once continuous profiles at
    ``profile_rate_hz`` (0: off) took theirs; a budget of 1 (no limit) stays 1."""
    if budget >= 1.0:
        return budget
    return max(budget - profile_overhead(profile_rate_hz), 0.0)
