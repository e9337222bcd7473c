"""What the text-feature cache and the remembered checkpoint digest save on a ViT-B/16-sized model.

A VOC21 zero-shot segmentation run of ViT-B/16 on this CPU spent almost all its time encoding its
prompts (56 queries x 80 templates = 4,480) and hashing the 599 MB checkpoint. This script builds
a randomly initialised open_clip model of --arch (no download), saves its weights to a temporary
file, and times in one process, as medians over --repeats:

  (a) sha256 of the checkpoint file, plain, against the remembered digest (silc_eval.core.fingerprint);
  (b) encoding --prompts prompts with the cache off, cold (first time, stored), and warm (served).

Nothing here is a test; it prints the times and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from silc_eval.core.fingerprint import file_sha256, remembered_sha256  # noqa: E402
from silc_eval.features import cache as feature_cache  # noqa: E402
from silc_eval.features import encode_texts  # noqa: E402


def median_time(fn, repeats: int) -> float:
    """Return the median wall time of fn() over repeats calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--prompts", type=int, default=4480, help="number of prompts (VOC21 x 80 templates: 4480)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip

    from silc_eval.models.open_clip_model import OpenClipModel

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SILC_EVAL_CACHE"] = str(Path(tmp) / "cache")
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=None)
        weights = Path(tmp) / f"{args.arch}.pt"
        torch.save(model.state_dict(), weights)
        size_mb = weights.stat().st_size / 2 ** 20

        plain = median_time(lambda: file_sha256(weights), args.repeats)
        remembered_sha256(weights)  # first call hashes and remembers
        memo = median_time(lambda: remembered_sha256(weights), args.repeats)
        print(f"(a) sha256 of a {size_mb:.0f} MB checkpoint: plain {plain:.2f} s, remembered {memo * 1e3:.2f} ms "
              f"-> {plain / memo:.0f}x")

        wrapped = OpenClipModel(model, open_clip.get_tokenizer(args.arch), preprocess, args.arch,
                                remembered_sha256(weights), str(weights), args.arch)
        prompts = [f"a photo of a class{i % 56} seen in template {i // 56}." for i in range(args.prompts)]
        with feature_cache.switched_off():
            off = median_time(lambda: encode_texts(wrapped, prompts), args.repeats)
        started = time.perf_counter()
        first = encode_texts(wrapped, prompts)
        cold = time.perf_counter() - started
        warm = median_time(lambda: encode_texts(wrapped, prompts), args.repeats)
        assert torch.equal(encode_texts(wrapped, prompts), first)
        print(f"(b) {args.prompts} prompts through the {args.arch} text tower: cache off {off:.2f} s, cold "
              f"{cold:.2f} s (computed and stored), warm {warm:.3f} s (tokenize + served) -> {off / warm:.0f}x")
        print(f"    torch threads {torch.get_num_threads()}, medians of {args.repeats}")


if __name__ == "__main__":
    main()
