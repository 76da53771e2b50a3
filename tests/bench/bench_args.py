"""argparse types shared by the benchmark scripts (each run as a script: this folder is on sys.path)."""

import argparse


def at_least(n: int):
    """An int option that must be at least `n`: fewer rounds or steps leave nothing to take a median of."""

    def parse(text: str) -> int:
        value = int(text)
        if value < n:
            raise argparse.ArgumentTypeError(f"must be at least {n}, got {value}")
        return value

    return parse
