"""The layout engine: what each neuron does as numbers (`features`), neurons and anchors as particles
(`particles`), forces as energies (`energies`; all-pairs terms in `pairs`, with the native kernel in
`native` and `pair_forces.cc`), the simulation (`simulate`), the layout across training snapshots
(`timeline`), how faithful a layout is (`metrics`), and trajectory.npz files (`trajectory_file`).

May import models and layout.core; never the structure tests, the pipeline, the commands or render.
"""
