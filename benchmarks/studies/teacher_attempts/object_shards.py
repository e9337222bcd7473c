"""Pilot data (not part of the package): object-centric crops of SynthScenes-like scenes as webdataset shards.

Usage: object_shards.py OUT N SEED. Each scene (its own stream, item_rng(SEED, "objects", "train", i), never the
benchmarks' scenes) is rendered at 128 px; every object gives one square crop centred on it, side 2.5-4x its
radius (from its visible area), resized to 64 px, with the object's class as text. See README.md.
"""

from __future__ import annotations

import io
import math
import sys
import tarfile
from pathlib import Path

from PIL import Image

from silc_eval.producers.synthscenes import item_rng
from silc_eval.producers.synthscenes_render import render_scene

SCENE_SIZE, CROP_SIZE, PER_SHARD = 128, 64, 2000


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def object_crops(seed: int, n_images: int):
    """Yield (PNG bytes, class name) of n_images object-centric crops."""
    made, index = 0, 0
    while made < n_images:
        rng = item_rng(seed, "objects", "train", index)
        scene = render_scene(rng, SCENE_SIZE)
        for obj in scene.objects[:n_images - made]:
            radius = max(4.0, math.sqrt(obj.area / math.pi) * 1.15)
            side = min(float(SCENE_SIZE), max(24.0, radius * rng.uniform(2.5, 4.0)))
            left = min(max(obj.centre[0] - side / 2, 0.0), SCENE_SIZE - side)
            top = min(max(obj.centre[1] - side / 2, 0.0), SCENE_SIZE - side)
            crop = scene.image.resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC, box=(left, top, left + side, top + side))
            buffer = io.BytesIO()
            crop.save(buffer, format="PNG")
            yield buffer.getvalue(), obj.cls
            made += 1
        index += 1


def main() -> None:
    out, n_images, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    tar = None
    for count, (png, name) in enumerate(object_crops(seed, n_images)):
        if count % PER_SHARD == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(out / f"objects-{count // PER_SHARD:06d}.tar", "w")
        add_member(tar, f"{count:08d}.png", png)
        add_member(tar, f"{count:08d}.txt", name.encode())
    if tar is not None:
        tar.close()
    print(f"wrote {n_images} crops into {out}")


if __name__ == "__main__":
    main()
