"""`visualrwkv ablate`: the paper's ablations (prompt position, scanning, decay, loss reduction, stages)
reproduced at small scale on the harder shapes data, over seeds, resumably (docs/ablations.md).

studies.py: the arms and the paper's claims; recipe.py: run sizes and each arm's TrainConfigs;
runner.py: shared data/encoder, the runs, results on disk; report.py: tables, plots, verdicts.
"""
