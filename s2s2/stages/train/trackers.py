"""What a run logs, through accelerate's trackers: log.csv (one row per logged or validated step) by
`CSVTracker`, and progress.png drawn from the same rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from s2s2.pipeline.atomic import atomic_path

LOSS_NAMES = ("loss", "seg", "seg_gen", "enc", "dec")


def log_columns(class_names: list[str]) -> list[str]:
    """The columns of log.csv: step, epoch, lr, the losses, seconds, then validation Dice per class
    (real val, then stack-val: the stack images of the val masks)."""
    return ["step", "epoch", "lr", *LOSS_NAMES, "seconds", "val_dice_mean", *(f"val_{n}" for n in class_names),
            "stack_val_dice_mean", *(f"stack_val_{n}" for n in class_names)]


class CSVTracker(GeneralTracker):
    """log.csv of a run: `begin` writes the header and the rows carried over by a resume (atomic),
    `log` appends one row per step (missing columns empty, others ignored)."""

    name = "csv"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.columns = Path(path), log_columns([])

    @property
    def tracker(self) -> Path:
        return self.path

    def begin(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """Start the file over with `columns` and `rows` (the history up to the step a run resumes from)."""
        self.columns = columns
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(values)


def write_progress_png(history: list[dict[str, float]], class_names: list[str], path: Path) -> None:
    """Losses (left) and validation Dice per class (right) against steps, from the logged rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    logged = [h for h in history if "loss" in h]
    for name in LOSS_NAMES:
        if logged and any(h[name] for h in logged):
            left.plot([h["step"] for h in logged], [h[name] for h in logged], label=name)
    left.set_xlabel("step"), left.set_title("training losses"), left.legend(fontsize=7)
    validated = [h for h in history if "val_dice_mean" in h]
    for name in class_names:
        right.plot([h["step"] for h in validated], [h[f"val_{name}"] for h in validated], marker=".", label=name)
    stacked = [h for h in validated if "stack_val_dice_mean" in h]
    if stacked:
        right.plot([h["step"] for h in stacked], [h["stack_val_dice_mean"] for h in stacked], "k--", label="stack-val mean")
    right.set_xlabel("step"), right.set_ylim(0, 1), right.set_title("validation Dice"), right.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
