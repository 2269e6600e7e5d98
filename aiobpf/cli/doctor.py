"""aiobpf doctor (placeholder until written)."""

from __future__ import annotations

import argparse


class DoctorCommand:
    """Check this host for what aiobpf needs."""

    name = "doctor"
    help = "check this host for what aiobpf needs"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError
