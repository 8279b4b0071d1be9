"""results.md: the best value of each column is bold, and only that one."""

from __future__ import annotations

from s2s2.stages.report import results_markdown


def row(name: str, dice: float, hd95: float, ood_dice: float | None) -> dict:
    def scores(mean: float) -> dict:
        return {"dice_mean": mean, "dice": {"a": mean, "b": mean}, "hd95_mean": hd95, "hd95_unit": "mm",
                "n_cases": 3, "volume": None}

    metrics = {"in_domain": scores(dice)}
    if ood_dice is not None:
        metrics["spm_t2"] = scores(ood_dice)
    return {"name": name, "model": "unet", "method": "m", "seed": 0, "steps": 3, "metrics": metrics}


def test_only_the_best_value_per_column_is_bold():
    table = results_markdown([row("baseline", 0.80, 4.0, 0.30), row("s2s2", 0.78, 3.5, 0.45),
                              row("other", 0.80, 5.0, None)])
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "**0.800**" in lines["baseline"] and "**0.800**" in lines["other"]  # a tie: both best
    assert "**0.780**" not in lines["s2s2"] and "**0.450**" in lines["s2s2"] and "**0.300**" not in lines["baseline"]
    assert "**3.50 mm**" in lines["s2s2"] and "**4.00 mm**" not in lines["baseline"]
    assert table.count("**") == 2 * 5  # in-domain Dice twice, HD95 twice (one per set), out-of-domain Dice once
