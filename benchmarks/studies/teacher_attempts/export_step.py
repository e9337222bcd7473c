"""Export the student of an unfinished training run's last proven checkpoint as an open_clip local-dir.

Usage: export_step.py WORK OUT, WORK being the run's hidden `.<output>.training` folder. For mid-run checks
(`silc-eval run --suite vision-features --synthscenes-seed 1 --model local-dir:OUT`); see README.md.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from silc_eval.train.model_config import create_model, save_local_dir


def main() -> None:
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads((work / "open_clip_config.json").read_text())
    saved = torch.load(work / "train_state" / "last.pt", map_location="cpu", weights_only=False)
    clip = create_model(config)
    clip.load_state_dict({k[len("clip."):]: v for k, v in saved["student"].items() if k.startswith("clip.")})
    save_local_dir(clip.eval(), config, out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(work / name, out / name)
    print(f"exported step {saved['run']['step']} to {out}")


if __name__ == "__main__":
    main()
