"""The testbed's profiles lay the papers' clusters out as stated (bench.testbed.profiles), its faults are
configured as asked (stalls, ParM's shuffles, both), and its stall schedule gives every instance the same
stalls whichever scheme runs (bench.faults.worker_stalls)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.faults import InstanceStallProfile, ShuffleProfile, stall_schedule, worker_stalls
from bench.testbed import profiles
from bench.testbed.__main__ import _parser, configure, main
from bench.testbed.measure import CpuReading, CpuShare, share_over
from bench.testbed.report import SchemeResult, versus

MORE = {3: "mnist_parm_add_k3", 4: "mnist_parm_add_k4"}


def _bed(profile: str, scale: str = "paper", deployed: int | None = None) -> profiles.Testbed:
    return profiles.testbed(profile, scale, "mnist_cnn", "mnist_parm_concat_k2", more_parities=MORE, deployed=deployed)


def _by_name(bed: profiles.Testbed) -> dict[str, profiles.Scheme]:
    return {s.name: s for s in bed.schemes}


def test_parm_paper_layout_is_12_deployed_6_parity_and_its_baselines():
    bed = _bed("parm")
    s = _by_name(bed)
    assert s["parm"].data == tuple(range(12)) and s["parm"].coded == tuple(range(12, 18))
    assert [len(s[n].instances) for n in ("none", "equal", "hedge", "replicate")] == [12, 18, 12, 24]
    models = bed.instance_models()
    assert models[11] == ["mnist_cnn"]  # a deployed instance
    assert models[12][:2] == ["mnist_cnn", "mnist_parm_concat_k2"]  # parity for ParM, a replica for equal
    assert models[23] == ["mnist_cnn"]  # replication's second half


def test_parm_paper_sets_hedging_swept_eager_decoding_and_more_k_beside_parm():
    bed = _bed("parm")
    s = _by_name(bed)
    assert s["hedge_q50"].route == "mnist_cnn=hedge:delay_q=0.5"
    assert s["hedge_q50_b05"].route == "mnist_cnn=hedge:delay_q=0.5,budget=0.05"
    assert {s[n].data for n in s if n.startswith("hedge")} == {tuple(range(12))}  # every hedge over the 12
    assert s["parm_eager"].route == s["parm"].route + ",decode=eager"
    assert s["parm_eager"].coded == s["parm"].coded
    assert s["parm_k3"].coded == tuple(range(12, 16)) and s["parm_k4"].coded == tuple(range(12, 15))  # m/k
    assert "k=3,encoder=add,parity_model=mnist_parm_add_k3" in s["parm_k3"].route
    assert bed.instance_count == 24  # the other k's parity models load on k = 2's parity instances
    assert bed.instance_models()[14] == ["mnist_cnn", "mnist_parm_concat_k2", "mnist_parm_add_k3", "mnist_parm_add_k4"]
    assert bed.instance_models()[15] == ["mnist_cnn", "mnist_parm_concat_k2", "mnist_parm_add_k3"]


def test_tiny_parm_keeps_its_subset_and_no_other_k():
    assert [s.name for s in _bed("parm", "tiny").schemes] == [
        n for n in _by_name(_bed("parm")) if n in profiles.TINY_PARM
    ]
    assert set(profiles.TINY_PARM) <= set(_by_name(_bed("parm")))


def test_deployed_scales_the_layout_and_the_rate_at_the_same_utilisation():
    bed, wide = _bed("collage"), _bed("collage", deployed=28)
    s = _by_name(wide)
    assert len(s["collage2"].coded) == 7 and len(s["collage3"].coded) == 4  # ceil(28 / s^2)
    assert len(s["replicate"].instances) == 56
    assert wide.rate == pytest.approx(bed.rate * 28 / 12)


def test_paper_rate_is_the_papers_divided_by_the_time_scale():
    """Same utilisation as ParM's 270 q/s on 12 instances: the emulated law is 4x slower, so 4x fewer q/s."""
    bed = _bed("parm")
    assert bed.time_scale == 4.0
    assert bed.law == "lognormal:median=80,p99=160,batch=linear:per_row=1"
    assert bed.rate == pytest.approx(profiles.PARM_PAPER_RATE / bed.time_scale, rel=0.01)
    assert bed.stalls == profiles.PAPER_STALLS.scaled(4.0)
    assert profiles.paper_utilisation(390.0) == pytest.approx(0.68, abs=0.01)  # the top of fig9a's range


def test_a_measured_law_replaces_the_profiles_and_the_rate_follows_its_mean(tmp_path):
    samples = tmp_path / "law.txt"
    samples.write_text("# measured\n10\n30\n")  # mean 20 ms, 160 ms at scale 8
    law = f"samples:path={samples},scale=8,batch=linear:per_row=1"
    bed = configure(_parser().parse_args(["--profile", "parm", "--scale", "paper", "--law", law]))
    assert (bed.law, bed.law_source) == (law, "set by --law")
    assert bed.figures.mean_ms == pytest.approx(160.0, rel=0.01)
    assert bed.rate == pytest.approx(_bed("parm").utilisation * 12 / 0.160, rel=0.01)
    with pytest.raises(SystemExit, match="--law: 'samples:path=/no/such': samples file /no/such"):
        configure(_parser().parse_args(["--profile", "parm", "--law", "samples:path=/no/such"]))


def _configured(*flags: str) -> profiles.Testbed:
    return configure(_parser().parse_args(["--profile", "parm", *flags]))


def test_faults_are_stalls_by_default_and_shuffles_or_both_on_request():
    stalls = _configured("--scale", "paper")
    shuffles = _configured("--scale", "paper", "--faults", "shuffles")
    both = _configured("--scale", "paper", "--faults", "both")
    assert (stalls.faults, shuffles.faults, both.faults) == (("stalls",), ("shuffles",), ("stalls", "shuffles"))
    assert stalls.stalls == both.stalls == profiles.PAPER_STALLS.scaled(4.0) and shuffles.stalls is None
    assert stalls.shuffles is None and shuffles.shuffles == both.shuffles == ShuffleProfile(megabytes=(128, 256))
    assert _configured("--scale", "paper", "--faults", "both", "--no-stalls").faults == ("shuffles",)
    assert _configured("--scale", "paper", "--no-stalls").faults == ()


def test_shuffles_keep_parms_concurrency_per_deployed_instance_on_links_at_the_time_scale():
    bed = _configured("--scale", "paper", "--faults", "shuffles")
    assert bed.link.rate == "250mbit"  # ParM's 1 Gbit/s at time scale 4: a transfer takes 4x its 1-2 s
    assert (bed.instance_count, bed.shuffle_loops) == (24, 4)  # ParM's 4 over its 12, whatever the redundancy adds
    assert _configured("--scale", "paper", "--faults", "shuffles", "--deployed", "24").shuffle_loops == 8
    tiny = _configured("--scale", "tiny", "--faults", "shuffles")
    assert (tiny.link.rate, tiny.shuffle_loops, tiny.shuffles) == ("1000mbit", 1, profiles.TINY_SHUFFLES)
    collage = configure(_parser().parse_args(["--profile", "collage", "--scale", "paper", "--faults", "both"]))
    assert (collage.link.rate, collage.faults) == ("1000mbit", ("shuffles",))  # its own time; no stalls, its law's
    assert ShuffleProfile().loops(2) == 1


def test_shuffles_exit_at_once_naming_why_namespaces_cannot_be_made(monkeypatch):
    monkeypatch.setattr("bench.testbed.__main__.unavailable", lambda: "network namespaces need root (CAP_NET_ADMIN)")
    with pytest.raises(SystemExit, match=r"--faults both: .* cannot be made here: network namespaces need root"):
        main(["--profile", "parm", "--faults", "both"])


def test_collage_and_approxifer_paper_layouts():
    collage = _by_name(_bed("collage"))
    assert len(collage["collage2"].coded) == 3 and len(collage["collage3"].coded) == 2  # ceil(12 / s^2)
    assert len(collage["equal"].instances) == 15
    resend = _bed("collage").frontend_flags(collage["collage2_resend"])
    assert resend[-2:] == ["--resend-after-ms", "300"]
    assert "--resend-after-ms" not in _bed("collage").frontend_flags(collage["collage2"])
    approx = _by_name(_bed("approxifer"))
    counts = {n: len(approx[n].instances) for n in approx if n.startswith("approxifer")}
    assert counts == {"approxifer_k8_s1": 14, "approxifer_k8_s2": 15, "approxifer_k12_s1": 13, "approxifer_k12_s2": 14}
    assert len(approx["equal"].instances) == 15  # as many as the largest


def test_tiny_scale_is_small_and_fixed():
    bed = _bed("parm", "tiny")
    assert (bed.deployed, bed.instance_count, bed.law) == (4, 8, "fixed:ms=10,batch=linear:per_row=1")
    assert bed.rate == pytest.approx(60.0)


def test_scaled_law_multiplies_the_times_and_keeps_the_batch_growth():
    assert profiles.scaled_law("fixed:ms=5,batch=linear:per_row=0.5", 3) == "fixed:ms=15,batch=linear:per_row=0.5"
    with pytest.raises(ValueError, match="only fixed and lognormal"):
        profiles.scaled_law("collage", 2)


def test_an_instances_stalls_do_not_depend_on_how_many_instances_run():
    profile = InstanceStallProfile(stall_ms=(100, 500), every_s=(1, 3))
    three = stall_schedule(profile, 3, seed=5, horizon_s=60)
    eight = stall_schedule(profile, 8, seed=5, horizon_s=60)
    assert [s for s in eight if s[2] < 3] == three
    assert [s[0] for s in eight] == sorted(s[0] for s in eight)
    assert stall_schedule(profile, 3, seed=6, horizon_s=60) != three


def test_an_instance_stalls_for_its_stated_share_of_the_time_never_twice_at_once():
    profile = InstanceStallProfile(stall_ms=(100, 500), every_s=(1, 3))
    stalls = list(itertools.islice(worker_stalls(profile, 0, 0), 20_000))
    for (start, length, _), (following, _, _) in itertools.pairwise(stalls):
        assert following >= start + length + 1.0
    stalled = sum(length for _, length, _ in stalls)
    assert stalled / (stalls[-1][0] + stalls[-1][1]) == pytest.approx(profile.stalled_share, rel=0.02)
    assert profile.stalled_share == pytest.approx(0.3 / 2.3)


def test_cpu_share_over_windows_weights_each_by_its_length(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    windows = [
        (CpuReading(0, 0, 0, 0), CpuReading(1.8, 2, 0.5, 1)),  # 1 s, 90% busy, own 25% of 2 cores
        (CpuReading(10, 10, 5, 5), CpuReading(11.2, 16, 5.5, 8)),  # 3 s, 20% busy, own 8%
    ]
    share = share_over(windows)
    assert share.machine == pytest.approx(3.0 / 8.0) and not share.flagged
    assert share.own == pytest.approx(1.0 / 8.0)
    assert share_over(windows[:1]).flagged  # 90% > 70%
    # iowait that went backwards puts busy above total: the share stops at all cores
    assert share_over([(CpuReading(0, 0, 0, 0), CpuReading(2.0000001, 2, 0, 1))]).machine == 1.0


def _row(name: str, extra_load: float) -> SchemeResult:
    return SchemeResult(
        name=name, route="", instances=1, sent=1, answered=1, errors={}, reconstructed=0, figures={},
        calls_per_query=1 + extra_load, extra_load=extra_load, utilisation={0: 0.5}, cpu=CpuShare(0.5, 0.1),
        stall_events=0,
    )  # fmt: skip


def test_a_coded_scheme_is_set_against_equal_and_the_hedge_nearest_its_extra_load():
    rows = [_row(n, x) for n, x in (("none", 0), ("equal", 0), ("hedge", 0.05), ("hedge_q50", 0.45), ("parm", 0.52))]
    rng = np.random.default_rng(0)
    latencies = {r.name: rng.exponential(10.0, 5000) for r in rows}
    latencies["parm"] = latencies["parm"] / 2  # twice as fast everywhere
    compared = versus(rows, latencies)
    assert [(v.scheme, v.baseline) for v in compared] == [("parm", "equal"), ("parm", "hedge_q50")]
    assert compared[0].p99.value == pytest.approx(2.0, rel=0.2)  # equal's p99 over parm's
