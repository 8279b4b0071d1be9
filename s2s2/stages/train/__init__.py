"""Stage two, training: the datasets (S2S2 pairs from the store, baseline samples), the pair
augmentation and the training loop, in one place (`s2s2 train`)."""

from s2s2.stages.run_folder import run_folder
from s2s2.stages.train.loop import run_train

__all__ = ["run_folder", "run_train"]
