"""From p-values to words: which nulls have enough samples to decide, the verdict ("real structure",
"weak evidence", "consistent with chance"), and the one-line headlines a run ends with."""

from __future__ import annotations

import numpy as np

from layout.insight.stability import Retrained
from layout.insight.structure import LayerStructure, NullTest

REAL_P, CHANCE_P = 0.01, 0.05
NULL_SETTING = {"relayout_shuffled_columns": "layout_nulls", "relayout_untrained": "layout_nulls",
                "shuffled_labels": "shuffled_label_runs"}  # the structure key that sets each null's count


def decisive(tests: list[NullTest]) -> list[NullTest]:
    """The tests with enough null samples to decide at all: at least 19, so that p can reach 0.05 (a
    null of 3 networks trained on shuffled labels gives p >= 0.25 however extreme the observation)."""
    return [t for t in tests if t.n and 1 / (t.n + 1) <= CHANCE_P]


def verdict(tests: list[NullTest]) -> str:
    """'real structure' when every null is beaten at p <= 0.01, 'consistent with chance' when any null
    gives p > 0.05, 'weak evidence' otherwise; the weakest null with enough samples decides."""
    return p_verdict([t.p for t in decisive(tests)])


def p_verdict(ps: list[float]) -> str:
    """verdict's rule for bare p-values (NaN ones left out)."""
    ps = [p for p in ps if np.isfinite(p)]
    if not ps:
        return "undetermined"
    worst = max(ps)
    return "real structure" if worst <= REAL_P else "consistent with chance" if worst > CHANCE_P else "weak evidence"


def p_text(p: float, n: int) -> str:
    """'p < 0.001' style at the test's resolution (the smallest p n samples can give is 1 / (n + 1))."""
    floor = 1 / (n + 1)
    if p <= floor:
        return f"p <= {floor:.2g}"
    return f"p = {p:.3g}"


def headline(layer: LayerStructure, space: str) -> str:
    """One sentence on dominance clustering in one space, e.g. 'dominance clustering in 3D: silhouette
    0.31, null 0.02 +/- 0.03 (untrained), p <= 0.001: real structure'; when the weakest null beat by
    every sample has too few samples to reach p <= 0.01, it says which setting to raise."""
    tests = decisive(layer.find("silhouette", space))
    where = "3D" if space == "layout" else "output-vector space"
    if not tests:
        why = (space == "layout" and layer.untested_3d) or untested_reason(layer.find("silhouette", space), space)
        return f"dominance clustering in {where}: not tested ({why})"
    weakest = max(tests, key=lambda t: (t.p if np.isfinite(t.p) else 2))
    text = (f"dominance clustering in {where}: silhouette {weakest.observed:.3f}, null {weakest.null_mean:.3f} "
            f"+/- {weakest.null_sd:.3f} ({weakest.null}, the weakest of {len(tests)} nulls), "
            f"{p_text(weakest.p, weakest.n)}: {verdict(tests)}")
    if weakest.p <= 1 / (weakest.n + 1) and weakest.p > REAL_P:
        text += (f" (every one of its {weakest.n} samples is beaten, the most they can show: raise "
                 f"structure.{NULL_SETTING.get(weakest.null, 'permutations')} for a firmer verdict)")
    return text


def untested_reason(tests: list[NullTest], space: str) -> str:
    """Why a space has no verdict: no null was made for it, or its nulls have too few samples."""
    if not tests and space == "layout":
        return ("no null layouts were made: they are laid out for render.timeline = simulation, with "
                "structure.layout_nulls of at least 19")
    if not tests:
        return "no null was made: set structure.permutations to at least 19"
    counts = ", ".join(f"{t.null} {t.n}" for t in tests)
    settings = " and ".join(sorted({f"structure.{NULL_SETTING.get(t.null, 'permutations')}" for t in tests}))
    return f"too few null samples to reach p <= 0.05 ({counts}): raise {settings} to at least 19"


def verdicts(layers: tuple[LayerStructure, ...], retrained: Retrained | None = None) -> list[str]:
    """The closing summary's lines: dominance clustering per layer, in 3D and in output-vector space,
    and whether the class arrangement survives retraining."""
    lines = []
    for layer in layers:
        if not layer.tests:
            lines.append(f"{layer.title}: {layer.n_neurons} neurons, too few to test")
            continue
        for space in ("layout", "output"):
            lines.append(f"{layer.title}{layer.sampled}, {headline(layer, space)}")
    if retrained is not None:
        lines.append(retrained_headline(retrained))
    return lines


def retrained_headline(r: Retrained) -> str:
    """'class arrangement across 3 retrainings: disparity 0.41 (median), p 0.02, 0.3, 0.004: ...'."""
    ps = r.class_p[np.isfinite(r.class_p)]
    if not len(ps):
        return "class arrangement in 3D across retraining: not tested (fewer than 3 classes shared, or layouts failed)"
    words = {"real structure": "reproducible", "weak evidence": "weakly reproducible",
             "consistent with chance": "not reproducible"}
    many = "s" if len(r.train_seeds) > 1 else ""
    return (f"class arrangement in 3D across {len(r.train_seeds)} retraining{many} (train seed{many} "
            f"{', '.join(map(str, r.train_seeds))}): Procrustes disparity {np.nanmedian(r.class_disparity):.3f} "
            f"(median), p {', '.join(f'{p:.3g}' for p in ps)} against relabelled classes: {words[p_verdict(list(ps))]}")
