"""Pictures drawn flat on the screen at exact pixels (the probed image, the thumbnails, the panel's field
and digits): 2D image actors whose vtkImageData can be refilled."""

from __future__ import annotations

import numpy as np
import pyvista as pv
from vtkmodules.vtkRenderingCore import vtkActor2D, vtkImageMapper


def image_actor(rgb: np.ndarray, x: int, y: int) -> tuple[vtkActor2D, pv.ImageData]:
    """A 2D actor showing rgb [h, w, 3] uint8 (row 0 at the top) at exact pixels, its bottom left at
    viewport pixel (x, y); and its image data, for set_rgb."""
    data = pv.ImageData(dimensions=(rgb.shape[1], rgb.shape[0], 1))
    set_rgb(data, rgb)
    mapper = vtkImageMapper()
    mapper.SetInputData(data)
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    actor = vtkActor2D()
    actor.SetMapper(mapper)
    actor.SetPosition(x, y)
    return actor, data


def set_rgb(data: pv.ImageData, rgb: np.ndarray) -> None:
    """Show rgb [h, w, 3] (row 0 at the top; VTK's images start at the bottom row) in `data`."""
    data.point_data["rgb"] = np.ascontiguousarray(np.flipud(rgb)).reshape(-1, 3)
    data.Modified()
