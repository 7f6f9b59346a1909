"""The same seed gives the same layout and the same verdicts as the tool gave before its code moved into
packages by stage: the committed reference run (tests/data/make_reference.py, made at commit 97afa58)
against this version, through the public command.

On the machine that made the reference the two agree to the last bit; elsewhere the arithmetic of
another CPU may differ in the last bits (the JAX fallback of the pair terms moves final positions by
1e-6 here), hence the tolerances, far below anything a user could see or a verdict could turn on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.data import make_reference as reference

POSITION_TOLERANCE = 1e-3  # of a layout whose RMS radius is about 0.7
FIGURE_TOLERANCE = 1e-4
P_TOLERANCE = 0.03  # a null sample landing on the other side of the observed value moves p by 1/200


@pytest.fixture(scope="module")
def rerun(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    reference.run(["--network", str(reference.NETWORK), *reference.settings(*reference.LAYOUT)], str(shared_data),
                  folder / "run", cache=folder / "cache")
    return reference.reference_figures(folder / "run")


@pytest.fixture(scope="module")
def expected():
    return json.loads(reference.REFERENCE.read_text())


def test_the_same_layout(rerun, expected):
    assert rerun["layout_args"] == expected["layout_args"]
    assert rerun["steps"] == expected["steps"]
    np.testing.assert_allclose(rerun["final_positions"], expected["final_positions"], atol=POSITION_TOLERANCE)
    for name, value in expected["faithfulness"].items():
        assert rerun["faithfulness"][name] == pytest.approx(value, abs=FIGURE_TOLERANCE), name


def test_the_same_structure_tests_and_verdicts(rerun, expected):
    def key(t: dict) -> str:
        return t["statistic"] + t["space"] + t["labels"] + t["null"]

    known = {key(t) for t in expected["tests"]}
    same = [t for t in rerun["tests"] if key(t) in known]
    added = [t for t in rerun["tests"] if key(t) not in known]
    assert [key(t) for t in same] == [key(t) for t in expected["tests"]]
    assert {t["space"] for t in added} <= {"activations"}  # only the class-selectivity tests came since
    for new, old in zip(same, expected["tests"]):
        assert new["observed"] == pytest.approx(old["observed"], abs=FIGURE_TOLERANCE), old
        assert new["p"] == pytest.approx(old["p"], abs=P_TOLERANCE), old
    assert [v.rsplit(": ", 1)[1] for v in rerun["verdicts"]] == [v.rsplit(": ", 1)[1] for v in expected["verdicts"]]
