"""What every package may use: the config schema and its loading (with model.layers, `layers`), records
as plain data and their digests (`plain`), the errors a user can fix, atomic
output files and the cache folder, one run per output folder (run_folder: a lock, a work folder, the
manifest), whether a display answers, Ctrl-C handling, and progress reports.

Imports nothing of the project's other packages, and no heavy library (no jax, no VTK): the commands
load it to parse arguments and check a config in well under a second.
"""
