"""The scene and its pictures, numpy in and pixels out: colours and sizes (`style`), the 3D scene built
once and moved frame by frame (`scene`), the neurons drawn as their receptive fields (`glyphs`), flat
images at exact pixels (`image2d`), offscreen mp4 / gif / png (`movie`), the atlas sheets (`atlas`),
the interactive window (`window`) and its details panel (`panel`), a sweep's contact sheet
(`contact_sheet`), and the self-contained interactive page, layout.html (`html`).

May import layout.core only (the render config, errors, atomic files, Ctrl-C); never jax, the engine,
the structure tests or the pipeline.
"""

from vtkmodules.vtkCommonCore import vtkLogger

# Without a display VTK first tries X, logs a warning, then renders offscreen with EGL or OSMesa; the
# warning would only worry users, so VTK's log shows errors only.
vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)
