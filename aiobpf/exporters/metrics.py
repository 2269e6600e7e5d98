"""Every metric family aiobpf exports, in one table (``FAMILIES``).

``exporters.prometheus`` builds its families from it, the metrics endpoint names
aiobpf's own families from it, ``tools/gen_metrics_doc.py`` writes the README's
metrics table and series cap from it, and ``tests/unit/test_deploy.py`` checks the
Grafana dashboard against it.
"""

from __future__ import annotations

from dataclasses import dataclass

PROCESS_LABELS = ("pid", "process", "python", "container")
STACK_DEPTH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)
AWAIT_DEPTH_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16)
# Bucket edges of the time histograms as powers of two of nanoseconds, one per two of
# the BPF histograms' log2 slots (fewer series per process, cheaper scrapes).
TIME_EDGES = range(12, 37, 2)
TIME_BUCKETS = tuple(2.0 ** edge / 1e9 for edge in TIME_EDGES)   # seconds
SITE_LABEL = "site"      # its values are the top K await sites and (other)
# prometheus_client's process collector, for aiobpf's own CPU, memory and descriptors:
# unprefixed, as every exporter names them.
OWN_PROCESS_NAMESPACE = ""
OWN_PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes",
                       "process_virtual_memory_bytes", "process_open_fds",
                       "process_max_fds", "process_start_time_seconds")

# Where a family's values come from (the README's "from" column).
SOURCES = {
    "memory": "memory read (exact at its time)",
    "bpf": "BPF",
    "budget": "the daemon's budget",
    "aiobpf": "aiobpf itself",
}
# What the exposition adds to a family's name, by type.
SAMPLE_SUFFIXES = {
    "gauge": ("",),
    "counter": ("_total",),
    "info": ("_info",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


@dataclass(frozen=True)
class Family:
    """One metric family: what Prometheus shows of it and where its values come from."""

    key: str                       # how the exporter refers to it
    name: str                      # without the suffixes the exposition adds
    type: str                      # a key of SAMPLE_SUFFIXES
    help: str                      # its HELP text
    source: str                    # a key of SOURCES
    windowed: bool = False         # estimated between capture windows (capture="windowed")
    labels: tuple[str, ...] = ()   # besides PROCESS_LABELS (per-process families)
    buckets: tuple[float, ...] = ()
    note: str = ""                 # more for the README

    @property
    def documentation(self) -> str:
        """The HELP text: ``help`` and, for a traced process's values, where they come from."""
        source = {"memory": "memory read", "bpf": "BPF"}.get(self.source)
        if source is None:
            return self.help
        if self.windowed:
            source += "; estimated between capture windows"
        return f"{self.help.removesuffix('.')} ({source})."

    @property
    def per_process(self) -> bool:
        return self.source != "aiobpf"

    @property
    def all_labels(self) -> list[str]:
        return [*PROCESS_LABELS, *self.labels] if self.per_process else list(self.labels)

    @property
    def samples(self) -> tuple[str, ...]:
        """The sample names the exposition shows."""
        return tuple(self.name + suffix for suffix in SAMPLE_SUFFIXES[self.type])

    @property
    def series(self) -> int:
        """Series per set of label values: a histogram's buckets (+Inf too), sum, count."""
        return len(self.buckets) + 3 if "histogram" in self.type else 1


FAMILIES = (
    Family("info", "aiobpf_process_info", "gauge",
           "A traced process; capture is full, windowed or memory.", "budget",
           labels=("capture",), note="value 1, one series per traced process (`memory`: "
           "no probes)"),
    Family("pending", "aiobpf_tasks_pending", "gauge", "Pending asyncio tasks.", "memory"),
    Family("stack", "aiobpf_task_stack_depth", "gaugehistogram",
           "Coroutine frames of each suspended task's stack.", "memory",
           buckets=STACK_DEPTH_BUCKETS),
    Family("await_", "aiobpf_task_await_depth", "gaugehistogram",
           "Tasks between each pending task and the root of its await chain.", "memory",
           buckets=AWAIT_DEPTH_BUCKETS),
    Family("sites", "aiobpf_suspended_tasks", "gauge",
           "Suspended tasks by await site (innermost frame of the application, else of a "
           "library), top K per process.", "memory", labels=(SITE_LABEL,),
           note="a site is `qualname file:line` (see \"Await sites\"); top `top_sites` "
           "(10) per process, the rest summed in `site=\"(other)\"`"),
    Family("steps", "aiobpf_task_steps", "counter", "Task steps.", "bpf", windowed=True),
    Family("step_time", "aiobpf_task_step_duration_seconds", "histogram",
           "Duration of task steps: a long step is an event loop blocked.", "bpf",
           windowed=True, buckets=TIME_BUCKETS),
    Family("delay", "aiobpf_task_wakeup_delay_seconds", "histogram",
           "From the event loop waking to a task's step starting: loop lag.", "bpf",
           windowed=True, buckets=TIME_BUCKETS),
    Family("finished", "aiobpf_tasks_finished", "counter",
           "Tasks whose last step aiobpf saw end.", "bpf", windowed=True),
    Family("created", "aiobpf_tasks_created", "counter",
           "Tasks created since tracing began, eager ones included (counted at "
           "Task.__init__ on 3.12+; on 3.11 derived from finished tasks and the change in "
           "pending ones).", "bpf", windowed=True),
    Family("fraction", "aiobpf_capture_fraction", "gauge",
           "Fraction of the time since tracing began that the process's probes were "
           "attached (1: full capture).", "budget"),
    Family("attached", "aiobpf_probes_attached_seconds", "counter",
           "Seconds the process's probes were attached; its rate() is the attached "
           "fraction over any range.", "budget"),
    Family("overhead", "aiobpf_estimated_overhead_ratio", "gauge",
           "Estimated CPU aiobpf's probes (and continuous profiles) cost the process, "
           "as a fraction of its own.",
           "budget"),
    Family("step_cost", "aiobpf_step_cost_seconds", "gauge",
           "Estimated CPU time one captured step costs the process (uprobe trap, programs, "
           "syscall hooks).", "budget", note="see \"Overhead budget\""),
    Family("hits", "aiobpf_probe_hits", "counter",
           "Step starts seen by the probes (not scaled).", "bpf"),
    Family("read_time", "aiobpf_snapshot_read_seconds", "gauge",
           "Duration of the last memory read.", "memory"),
    Family("read_at", "aiobpf_snapshot_timestamp_seconds", "gauge",
           "Unix time the last memory read began: the gauges from memory are as of then.",
           "memory", note="reads come every `refresh_interval`, less often for processes "
           "whose reads would take the daemon over `read_budget` of a CPU"),
    Family("build", "aiobpf_build", "info", "aiobpf's version.", "aiobpf",
           labels=("version",)),
    Family("processes", "aiobpf_attached_processes", "gauge", "Processes traced now.",
           "aiobpf"),
    Family("errors", "aiobpf_errors", "counter", "Errors by kind.", "aiobpf",
           labels=("kind",), note="kinds: see \"Error kinds\" below"),
    Family("last_scan", "aiobpf_last_scan_timestamp_seconds", "gauge",
           "Unix time the daemon's last discovery scan ended: it advances every "
           "scan_interval while the daemon's loop is healthy.", "aiobpf",
           note="alert when `time() - aiobpf_last_scan_timestamp_seconds` grows (a stuck "
           "daemon serves stale metrics)"),
    Family("rejected", "aiobpf_http_rejected", "counter",
           "Connections and requests the metrics endpoint turned away: "
           "too_many_connections, too_many_from_peer, timeout, too_large, tls_handshake, "
           "unauthorized.", "aiobpf", labels=("reason",)),
)
BY_KEY = {family.key: family for family in FAMILIES}

# The kinds of aiobpf_errors_total and what each means, for the README; the daemon's
# limits in braces are filled in by tools/gen_metrics_doc.py.
ERROR_KINDS = {
    "attach": "probes not placed",
    "bpf_load": "the BPF programs did not load: memory reads only",
    "calibrate": "BPF refused the start-up timing of a probe: memory reads only",
    "profiles": "continuous profiles asked for (`profiles = true`) could not start: off, the "
                "log says why",
    "probe_file_changed": "a traced process mapped another file where its probed `_asyncio` "
                          "was: dropped and looked at afresh",
    "too_many_files": "no probes for a process whose `_asyncio` file would exceed the limits "
                      "on probed files, see \"Security model\": memory reads only",
    "read": "a memory read failed",
    "read_limit": "a memory read ran past its deadline: {read_deadline}, dumps {dump_deadline}",
    "tasks_left_out": "a process has more than {max_tasks} tasks: the rest are left out of "
                      "its gauges",
    "bpf_read": "kernel-space reads that faulted",
    "bpf_records_full": "task records the full `records` map refused: those tasks are read "
                        "from memory",
    "bpf_prune": "the maps could not be pruned",
    "scan": "listing `/proc` failed, or looking at a process found there did",
    "too_many_processes": "over `max_processes`",
    "malformed_file": "a file the process maps is not a sound ELF file, or one it names is "
                      "unsafe to open",
    "examine_timeout": "its files took longer than {examine_limit} to examine",
    "examine_busy": "examinations put off while earlier ones are still stuck",
    "examine_paced": "new processes of a user put off at a scan: that user's "
                     "examinations have taken their share of `read_budget`",
    "internal": "an unexpected fault while examining, accounting or reading one process: "
                "that process is not traced or is dropped, the daemon's log says which and "
                "why; a bug, please report it",
}


def series_fixed() -> int:
    """Series of one traced process besides its await sites (buckets included)."""
    return sum(f.series for f in FAMILIES if f.per_process and SITE_LABEL not in f.labels)


def series_cap(top_sites: int) -> int:
    """The most series one traced process can export: ``series_fixed()``, its top
    ``top_sites`` await sites and ``(other)``."""
    return series_fixed() + top_sites + 1
