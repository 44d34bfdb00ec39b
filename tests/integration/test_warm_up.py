"""The frontend warms every model on every instance before it says SERVING (real tritonservers as
processes): a freshly loaded model's first inference takes about 50 ms on a CPU Triton, and without the
warm-up that made each route's first group a straggler (its first query was reconstructed in full runs)."""

from __future__ import annotations

import time

import pytest

from bench.stack import FrontendSpec, Stack
from tests.integration import linear_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PARM = f"{linear_models.DEPLOYED}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}"


@pytest.mark.parametrize(("flags", "warmed"), [((), True), (("--no-warm-up",), False)])
def test_a_serving_frontend_has_run_every_model_once_on_every_instance(tmp_path, flags, warmed):
    repo = tmp_path / "repo"
    models = linear_models.write_repository(repo)
    frontend = FrontendSpec(flags=["--route", PARM, *flags], tritons=(0, 1), parity_tritons=(1,))
    deployed, parity = linear_models.DEPLOYED, linear_models.parity_name(2)
    if warmed:  # the deployed model on both instances, the parity model on Triton 1, once each
        expected = [{deployed: 1, parity: 0}, {deployed: 1, parity: 1}]
    else:
        expected = [{deployed: 0, parity: 0}, {deployed: 0, parity: 0}]
    with Stack(models, {"f": frontend}, model_repository=repo, log_dir=tmp_path / "logs", triton_count=2) as stack:
        # SERVING, and no query sent yet: the warm-up's answers have come back, but Triton counts a call only
        # once it has sent the answer, so the counts may trail them briefly. Read until they agree, bounded.
        rows = _counts_until(stack, expected, bound_s=5.0)
    assert rows == expected


def _counts_until(stack: Stack, expected: list[dict[str, int]], bound_s: float) -> list[dict[str, int]]:
    """Every Triton's inference counts, read again every 50 ms until they are ``expected`` or ``bound_s`` passed."""
    give_up = time.monotonic() + bound_s
    while (rows := [t.inference_counts() for t in stack.tritons]) != expected and time.monotonic() < give_up:
        time.sleep(0.05)
    return rows
