"""The BPF side: capture.bpf.c and capture.h (kernel), and their user side: abi.py
(capture.h as ctypes), records.py (records to frames and steps), capture.py (load,
probes, maps) with program.py (compile), config.py (a layout as settings),
probed.py (verified, held files) and maps.py (batched reads)."""
