"""A sweep's contact sheet: every point's snapshot in one captioned grid (matplotlib, offscreen)."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import matplotlib

from layout.core.files import atomic_path

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def contact_sheet(path: Path, snapshots: list[Path | None], titles: list[str], columns: int) -> Path:
    """Every point's snapshot in a grid, captioned, as one PNG (matplotlib, offscreen)."""
    n = len(snapshots)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, snapshot, title in zip(axes.ravel(), snapshots, titles):
        if snapshot is not None:
            ax.imshow(iio.imread(snapshot))
        ax.set_title(title, fontsize=7, wrap=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
