"""The soak run: minutes of load through the real stack, a fault every 30 s, and the resident memory and
open file descriptors of every process and the entries of /dev/shm sampled every 2 s, to show they stay
flat (bench.chaos with longer defaults; every flag of bench.chaos applies).

    python -m bench.soak                    # 10 minutes at 100 q/s
    python -m bench.soak --duration 180     # shorter
"""

from __future__ import annotations

from bench import chaos_run

DEFAULTS: dict[str, object] = {
    "duration": 600.0,
    "every_s": 30.0,
    "sample_s": 2.0,
    "tag": "soak-mnist",
    "phases": "chaos",  # the short-deadline phase measures recovery, not resources: bench.chaos runs it
}


def main(argv: list[str] | None = None) -> dict[str, object]:
    return chaos_run.main(argv, prog="python -m bench.soak", doc=__doc__, defaults=DEFAULTS)


if __name__ == "__main__":
    main()
