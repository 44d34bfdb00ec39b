"""What the frontend needs to know about a code, without its math."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupLayout:
    """The shape of one coding group.

    k           queries per group;
    parities    coded queries per group (ParM: 1; ApproxIFER: N, or N - K when systematic);
    systematic  the k originals also go to the deployed model, and only missing ones are decoded;
    parity_model  the coded queries run on a separate parity model (ParM), not the deployed one;
    needed      outputs (originals' and coded ones together) that one decode needs.
    """

    k: int
    parities: int
    systematic: bool
    parity_model: bool
    needed: int
