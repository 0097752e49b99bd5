"""runs: one network or an ensemble, as a user starts a training run."""

from dataclasses import replace

import pytest
from conftest import SMALL


def test_an_interrupted_ensemble_says_which_member_stopped(small_mnist, tmp_path, monkeypatch):
    from mnist_digits import runs
    from mnist_digits.errors import TrainingInterrupted

    seeds = []

    def fit_until_the_second(config, data, run_dir, **options):
        seeds.append(config.seed)
        if len(seeds) == 2:
            raise TrainingInterrupted("stopped by SIGTERM in epoch 1, batch 3; continue with --resume.")
        return None

    monkeypatch.setattr(runs, "fit", fit_until_the_second)
    with pytest.raises(TrainingInterrupted, match=r"^ensemble member 2 of 3 stopped by SIGTERM"):
        runs.fit_ensemble(replace(SMALL, seed=5), small_mnist, tmp_path, 3, log=lambda m: None)
    assert seeds == [5, 6]  # the third never started
