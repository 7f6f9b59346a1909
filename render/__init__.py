"""Rendering of layouts with PyVista (numpy in, pictures out; never jax)."""

from vtkmodules.vtkCommonCore import vtkLogger

# Without a display VTK first tries X, logs a warning, then renders offscreen with EGL or OSMesa; the
# warning would only worry users, so VTK's log shows errors only.
vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)
