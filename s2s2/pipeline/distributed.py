"""What every process of a distributed job (torchrun, `accelerate launch`) must agree on, via accelerate.

Shared by fine-tuning and segmenter training; in a single process each function is a no-op.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on any (all ranks must stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def processes_in_sync(accelerator: Accelerator, model: torch.nn.Module) -> bool:
    """True when every process holds the same weights (per-tensor sums compared exactly across processes)."""
    if accelerator.num_processes == 1:
        return True
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(accelerator.device)
    gathered = accelerator.gather(sums).view(accelerator.num_processes, -1)
    return bool((gathered == gathered[0]).all().item())
