"""Profiles of asyncio processes: async stacks counted over samples, and the formats
they are written in (collapsed stacks, speedscope, a self-contained HTML flame graph,
pprof).  Pure: the samples come from the command line's sampler."""
