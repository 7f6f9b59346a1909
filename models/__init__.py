"""Datasets and networks, the first stages of the flow: `models.data` finds and reads the images,
`models.network` builds, trains, saves and reloads the networks that are laid out.

May import layout.core only (config sections, errors, files, Ctrl-C); nothing of the engine, the
structure tests, the pipeline, the commands or the renderer.
"""
