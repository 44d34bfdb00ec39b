"""A bounded chaos run: load through the real stack while its parts are killed, stalled and restarted.

Triton instances are SIGKILLed and restarted on the same ports, SIGSTOPped for a while (one at a time,
and all of them at once), and the encoder and decoder services are SIGKILLed and restarted, on a plan
drawn from a seed. Meanwhile unary calls and long-lived streams send queries on a fixed schedule and
every answer is entered in a ledger, which checks the exactly-once promise:

    accepted = answered + errored, duplicates = 0, lost = 0

A unary call sets no deadline of its own (the frontend's ``--default-deadline-s`` applies), so a query
the frontend never answers is seen as *lost* by the client's watchdog rather than hidden behind a
client-side DEADLINE_EXCEEDED. A stream answers each of its queries by id: an id answered twice is a
duplicate, one never answered is lost. The frontend's health is polled throughout, and its
transitions are reported beside the faults. With ``--sample-s``, the resident memory and open file
descriptors of every process, and the entries in /dev/shm, are sampled too (the soak run, bench.soak).

A second phase (``--phases deadlines``, on by default) sends unary calls whose gRPC deadline is a few
calls long (``--short-deadline-ms``, 50 ms) to an uncoded frontend while every Triton is SIGSTOPped for
``--short-stall-s`` every ``--short-every-s``, and reports, after each stall, how long the share of
queries answered OK takes to come back to its level before the stall ("never" if not within the run).

    python -m bench.chaos --duration 60 --rate 100            # the committed models, 2 Tritons
    python -m bench.chaos --phases deadlines --short-duration 30 --tag deadlines-mnist
    python -m bench.chaos --help
"""

from __future__ import annotations

from bench import chaos_run


def main(argv: list[str] | None = None) -> dict[str, object]:
    return chaos_run.main(argv, prog="python -m bench.chaos", doc=__doc__)


if __name__ == "__main__":
    main()
