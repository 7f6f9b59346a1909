"""`python -m layout.sweep SWEEP.yaml`: the whole pipeline over a grid of configs, compared in one table
and a contact sheet (see layout/pipeline/sweep.py and the README's "Sweeps")."""

from layout.run import sweep_main

if __name__ == "__main__":
    raise SystemExit(sweep_main())
