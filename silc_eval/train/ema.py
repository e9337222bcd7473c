"""An exponential-moving-average teacher of some student modules, with a fixed momentum."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EmaTeacher(nn.Module):
    """Frozen copies of student modules, moved towards the student after every optimiser step.

    The momentum is fixed: SILC found that a schedule converging to 1 stops the teacher
    from taking up the image-text signal (benchmarks/PROTOCOLS.md section 7).
    """

    def __init__(self, modules: dict[str, nn.Module], momentum: float):
        super().__init__()
        self.momentum = momentum
        self.copies = nn.ModuleDict({name: copy.deepcopy(module) for name, module in modules.items()})
        self.copies.eval()
        for param in self.copies.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        """Move every teacher parameter to momentum * teacher + (1 - momentum) * student; copy buffers."""
        for name, module in modules.items():
            teacher = self.copies[name]
            for t, s in zip(teacher.parameters(), module.parameters()):
                t.mul_(self.momentum).add_(s.detach(), alpha=1.0 - self.momentum)
            for t, s in zip(teacher.buffers(), module.buffers()):
                t.copy_(s)

    @torch.no_grad()
    def reset(self, modules: dict[str, nn.Module]) -> None:
        """Set every teacher parameter and buffer to the student's (the teacher restarts from the student)."""
        for name, module in modules.items():
            for t, s in zip(self.copies[name].state_dict().values(), module.state_dict().values()):
                t.copy_(s)

    def train(self, mode: bool = True):
        """Keep the teacher in eval mode whatever the caller asks."""
        return super().train(False)
