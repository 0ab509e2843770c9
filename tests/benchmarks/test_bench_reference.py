"""The pure-Python parts of the reference benchmark: agreement metrics, argument defaults, the tables.

Nothing here installs or runs the reference package (its venv takes a minute to build).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from bench_scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_reference")


def test_average_ranks_share_ties(bench: ModuleType) -> None:
    assert bench.average_ranks([10.0, 30.0, 20.0, 20.0]).tolist() == [0.0, 3.0, 1.5, 1.5]


def test_spearman_matches_the_textbook_formula(bench: ModuleType) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)  # no ties: ρ = 1 − 6 Σ d² / (n (n² − 1))
    d = bench.average_ranks(a) - bench.average_ranks(b)
    expected = 1 - 6 * (d * d).sum() / (200 * (200**2 - 1))
    assert bench.spearman(a, b) == pytest.approx(expected, abs=1e-12)


def test_spearman_is_invariant_to_monotone_maps_and_flips_sign(bench: ModuleType) -> None:
    a = np.random.default_rng(1).random(50)
    assert bench.spearman(a, np.exp(3 * a)) == pytest.approx(1.0)
    assert bench.spearman(a, -a) == pytest.approx(-1.0)


def test_spearman_with_ties_is_pearson_of_average_ranks(bench: ModuleType) -> None:
    a = np.array([0.0, 0.0, 1.0, 2.0, 2.0, 3.0])
    b = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0])
    ra, rb = bench.average_ranks(a), bench.average_ranks(b)
    assert bench.spearman(a, b) == pytest.approx(float(np.corrcoef(ra, rb)[0, 1]))


def test_spearman_undefined_cases(bench: ModuleType) -> None:
    assert bench.spearman([1.0], [2.0]) is None
    assert bench.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    with pytest.raises(ValueError):
        bench.spearman([1.0, 2.0], [1.0, 2.0, 3.0])


def test_agreement_of_identical_and_perturbed_scores(bench: ModuleType) -> None:
    ours = np.linspace(0.0, 0.5, 100)
    same = bench.agreement(ours, ours.copy())
    assert same["spearman"] == pytest.approx(1.0)
    assert same["max_abs_diff"] == 0.0
    assert same["top10_overlap"] == 1.0
    assert same["n"] == 100 and same["max_abs_ours"] == pytest.approx(0.5)

    ref = ours.copy()
    ref[7] += 2e-3  # a small bump that keeps the order
    close = bench.agreement(ours, ref)
    assert close["max_abs_diff"] == pytest.approx(2e-3)
    assert close["rel_max_abs_diff"] == pytest.approx(4e-3)
    assert close["spearman"] == pytest.approx(1.0)

    reversed_ = bench.agreement(ours, ours[::-1].copy())
    assert reversed_["spearman"] == pytest.approx(-1.0)
    assert reversed_["top10_overlap"] == 0.0


def test_agreement_rejects_bad_input(bench: ModuleType) -> None:
    with pytest.raises(ValueError):
        bench.agreement([0.0, 1.0], [0.0])
    with pytest.raises(ValueError):
        bench.agreement([0.0, np.nan], [0.0, 1.0])


def test_compare_covers_final_hops_and_rho(bench: ModuleType) -> None:
    rng = np.random.default_rng(2)
    hops = [rng.random(12).tolist(), rng.random(12).tolist()]
    ours = {"final": hops[0][:8] + [0.0] * 4, "hops": hops, "rho": [0.6, 0.3]}
    ref = {"final_prompt": hops[0][:8], "hops": [h.copy() for h in hops], "rho": [0.6, 0.3001]}
    ref["hops"][1][10] += 0.5  # outside the prompt: only the all-positions comparison sees it
    out = bench.compare(ours, ref, prompt_length=8)
    assert set(out) == {"final", "hop0", "hop0_all_positions", "hop1", "hop1_all_positions", "rho"}
    assert out["final"]["n"] == 8 and out["final"]["max_abs_diff"] == 0.0
    assert out["hop1"]["max_abs_diff"] == 0.0
    assert out["hop1_all_positions"]["max_abs_diff"] == pytest.approx(0.5)
    assert out["rho"]["max_abs_diff"] == pytest.approx(1e-4)
    only_final = bench.compare({"final": ours["final"]}, {"final": ours["final"]}, prompt_length=8)
    assert set(only_final) == {"final"}


def test_defaults_and_table(bench: ModuleType) -> None:
    args = bench.parse_args([])
    assert args.lengths == [1000, 2000, 4000] and args.ifr_lengths == [1000]
    assert args.mem_cap_gb == 20.0 and args.hops == 1 and args.span_tokens == 32
    assert bench.parse_args(["--lengths", "512", "256"]).ifr_lengths == [256]
    with pytest.raises(SystemExit):
        bench.parse_args(["--lengths", "64"])  # shorter than 4 spans
    assert set(bench.OUR_MATCH) == set(bench.REF_METHODS)

    agreement = bench.compare({"final": [0.1, 0.2, 0.3], "rho": [0.5]}, {"final": [0.1, 0.2, 0.31], "rho": [0.5]}, 3)
    rows = [
        {"tokens": 1000, "implementation": "spantrace", "method": "flashtrace", "seconds": 2.5, "peak_rss_gib": 1.1},
        {
            "tokens": 1000,
            "implementation": "flashtrace 0.1.1",
            "method": "flashtrace-answer",
            "compared_with": "flashtrace",
            "seconds": 5.4,
            "x_forward": 2.9,
            "peak_rss_gib": 2.4,
            "agreement": agreement,
        },
        {"tokens": 4000, "implementation": "flashtrace 0.1.1", "method": "flashtrace", "status": "oom", "error": "x"},
    ]
    table = bench.format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "Spearman" in lines[0] and "peak RSS GiB" in lines[0]
    assert "1.00000" in lines[3] and "1.00e-02" in lines[3]
    assert lines[4].rstrip().endswith("oom: x")
    details = bench.format_details(rows)
    assert "ref flashtrace-answer vs ours flashtrace" in details and "rho" in details
