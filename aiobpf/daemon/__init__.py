"""The continuous side of aiobpf: find asyncio processes, keep tracing them within an
overhead budget, serve Prometheus metrics and answer dump requests."""
