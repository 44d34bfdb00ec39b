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
    with Stack(models, {"f": frontend}, model_repository=repo, log_dir=tmp_path / "logs", triton_count=2) as stack:
        # SERVING, and no query sent yet. Triton counts a call once it has sent the answer: allow it a moment.
        time.sleep(0.5)
        rows = [t.inference_counts() for t in stack.tritons]
    deployed, parity = linear_models.DEPLOYED, linear_models.parity_name(2)
    if warmed:  # the deployed model on both instances, the parity model on Triton 1, once each
        assert rows == [{deployed: 1, parity: 0}, {deployed: 1, parity: 1}]
    else:
        assert rows == [{deployed: 0, parity: 0}, {deployed: 0, parity: 0}]
