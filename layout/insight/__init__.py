"""Is the structure real? Class-structure statistics against null models (`structure`) and their
verdicts (`verdicts`), ablation (`ablation`), stability from random starts and across retraining
(`stability`), class selectivity against untrained networks (`selectivity`), all of them for one
network at once (`suite`), their cache (`cache`), the report
(`report`), and a sweep's figures and tables (`sweep_figures`, `sweep_report`).

May import the engine, models and layout.core; never the pipeline, the commands or render.
"""
