"""The stages wired together, each taking what the one before produced and writing its own outputs:
checks before any work (`preflight`), training (`train_stage`), the layout (`layout_stage`), the
structure tests (`structure_stage`), the scene and its exports (`render_stage`), the per-neuron table
(`outputs`), and a grid of runs (`sweep`). Each stage returns a frozen result; nothing here prints.

May import everything below it (insight, render, engine, models, layout.core); never the commands.
"""
