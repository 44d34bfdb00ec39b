"""The schemes bench.compare runs, as frontends of one stack of three Tritons (t0, t1, t2): each scheme's
name, its route and flags, and which Tritons serve its deployed and its parity models. bench.compare's
docstring says what each scheme is; bench.cpu_breakdown loads the same frontends.
"""

from __future__ import annotations

from bench.stack import FrontendSpec
from coding import coin, collage

DEFAULT_SCHEMES = ("direct", "none", "equal", "hedge2", "hedge3", "replicate", "parm", "approxifer", "parm_local")
# Collage-CNN s = 2, 3 (collage model on t2): on request, as they need the trained collage models.
COLLAGE_SCHEMES = {"collage2": 2, "collage3": 3, "collage2_resend": 2}
# COIN's set of two members (and its coded model on t2), against the same set served uncoded.
COIN_SCHEMES = ("coin", "coin_none", "coin_hedge2", "coin_hedge3", "coin_replicate")
SCHEMES = (*DEFAULT_SCHEMES, *COLLAGE_SCHEMES, *COIN_SCHEMES)
CODED = ("parm", "approxifer", "parm_local", *COLLAGE_SCHEMES, "coin")


STRAGGLER_TIMEOUT_MS = 8.0
FILL_TIMEOUT_MS = 5.0
# Collage's fallback deadline: just above the top of its published service time's main mode (275 ms),
# so a resend goes out only for a query whose own call and collage are both in the straggler mode.
RESEND_AFTER_MS = 300.0


def frontend_specs(
    model: str,
    parity: str,
    *,
    k: int = 2,
    encoder: str = "concat",
    straggler_timeout_ms: float = STRAGGLER_TIMEOUT_MS,
    fill_timeout_ms: float = FILL_TIMEOUT_MS,
    straggler_quantile: float | None = None,
    adaptive_fill: bool = False,
    coding: str = "services",
    batch_inflight: int = 1,
    resend_after_ms: float = RESEND_AFTER_MS,
) -> dict[str, FrontendSpec]:
    """One frontend per scheme, as the comparison runs them. Batching applies to every scheme alike;
    deadlines and the coding location to the coded ones."""
    common = ["--max-inflight", "100000", "--max-inflight-per-client", "100000", "--no-refuse-by-wait"]
    common += ["--default-deadline-s", "10"]  # latency, not admission, is measured
    common += ["--batch-inflight", str(batch_inflight)]
    timeouts = ["--straggler-timeout-ms", str(straggler_timeout_ms), "--fill-timeout-ms", str(fill_timeout_ms)]
    if straggler_quantile is not None:
        timeouts += ["--straggler-quantile", str(straggler_quantile)]
    if adaptive_fill:
        timeouts += ["--adaptive-fill"]
    coded = [f"{model}=parm:k={k},encoder={encoder},parity_model={parity}", *timeouts, "--coding", coding]
    berrut = [f"{model}=approxifer:k={k},s=1", *timeouts, "--coding", coding]
    return {
        "none": FrontendSpec(["--route", f"{model}=none", *common], tritons=(0, 1)),
        "equal": FrontendSpec(["--route", f"{model}=none", *common], tritons=(0, 1, 2)),
        "hedge2": FrontendSpec(["--route", f"{model}=hedge", *common], tritons=(0, 1)),
        "hedge3": FrontendSpec(["--route", f"{model}=hedge", *common], tritons=(0, 1, 2)),
        "replicate": FrontendSpec(["--route", f"{model}=replicate", *common], tritons=(0, 1)),
        "parm": FrontendSpec(["--route", *coded, *common], tritons=(0, 1), parity_tritons=(2,)),
        "approxifer": FrontendSpec(["--route", *berrut, *common], tritons=(0, 1, 2)),
        **{
            name: FrontendSpec(
                ["--route", f"{model}=collage:s={side}", *timeouts, "--coding", coding, *common]
                + (["--resend-after-ms", str(resend_after_ms)] if name.endswith("_resend") else []),
                tritons=(0, 1),
                parity_tritons=(2,),
            )
            for name, side in COLLAGE_SCHEMES.items()
        },
        "parm_local": FrontendSpec(
            ["--route", *coded, "--coding", "local", *common], tritons=(0, 1), parity_tritons=(2,)
        ),
        **coin_specs(coin_set(model), timeouts, common, coding),
    }


def coin_set(model: str) -> str:
    """The COIN set served beside ``model`` (``mnist_cnn`` -> ``mnist_coin``)."""
    return model.removesuffix("_cnn") + "_coin"


def coin_models(set_name: str, k: int = 2) -> list[str]:
    return [coin.member_model_name(set_name, i) for i in range(k)] + [coin.coded_model_name(set_name, k)]


def coin_specs(set_name: str, timeouts: list[str], common: list[str], coding: str) -> dict[str, FrontendSpec]:
    members = "+".join(coin_models(set_name)[:-1])
    return {
        "coin": FrontendSpec(
            ["--route", f"{set_name}=coin:k=2", *timeouts, "--coding", coding, *common],
            tritons=(0, 1),
            parity_tritons=(2,),
        ),
        "coin_none": FrontendSpec(["--route", f"{set_name}=none:members={members}", *common], tritons=(0, 1)),
        "coin_hedge2": FrontendSpec(["--route", f"{set_name}=hedge:members={members}", *common], tritons=(0, 1)),
        "coin_hedge3": FrontendSpec(["--route", f"{set_name}=hedge:members={members}", *common], tritons=(0, 1, 2)),
        "coin_replicate": FrontendSpec(["--route", f"{set_name}=replicate:members={members}", *common], tritons=(0, 1)),
    }


def collage_models(dataset: str, schemes: list[str]) -> list[str]:
    wanted = {side for name, side in COLLAGE_SCHEMES.items() if name in schemes}
    return [collage.collage_model_name(dataset, side) for side in sorted(wanted)]
