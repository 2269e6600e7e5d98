"""How the daemon keeps its overhead budget, and what it exports while it does.

The budget is a share of each traced process's own CPU time that capture may cost
it (``budget`` in the configuration).  Keeping it takes four steps, one module each,
all pure (the daemon's loop, aiobpf.daemon.service, reads the counters and CPU times
and attaches or detaches the probes; nothing here touches a process or the kernel):

- ``cost``: what one captured step costs (the machine's uprobe trap and syscall hook
  timings, aiobpf.collector.probe_cost, with the programs' own time), and what full
  capture would cost a process at its measured step and CPU rates;
- ``account``: one process's account: the rates measured while its probes are
  attached, the time traced and attached, the counts the metrics export;
- ``windows``: each probed file's schedule: attached all the time when full capture
  fits the budget, else in windows whose duty is what the budget allows;
- ``estimate``: between windows the counters see nothing; counts are estimated
  from the process's CPU time at the steps per CPU second the windows measured.

A second budget is the daemon's own: ``reads`` paces its memory reads of all the
traced processes to ``read_budget`` of one CPU.
"""
