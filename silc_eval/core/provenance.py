"""What every result records about where it came from: versions, commit, machine."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from typing import Sequence

from silc_eval.core.paths import PROJECT_ROOT

TRACKED_PACKAGES = ("silc-eval", "torch", "torchvision", "open_clip_torch", "clip-benchmark", "numpy", "pandas",
                    "pillow", "transformers", "tokenizers")


def package_versions(names: Sequence[str] = TRACKED_PACKAGES) -> dict[str, str]:
    """Return {distribution: version} for names (default: the packages that can change a number)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Return the project's git commit (with '+dirty' if the tree has changes), or 'unknown'."""
    try:
        commit = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine_description(device: str) -> dict[str, str]:
    """Return the device, CPU/GPU name, Python version and OS of this run."""
    import torch

    info = {"device": device, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "torch_threads": str(torch.get_num_threads())}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
