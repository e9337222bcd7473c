"""Zero-shot segmentation throughput: batched windows vs a per-window loop, and the metric vs mmseg's.

In one process, on the same model, images and parameters, measures images/s of
  (a) silc_eval's zero-shot segmentation (windows of the same shape batched, across images),
  (b) the SCLIP-style structure: image by image, window by window, one forward per window,
  (c) the bare dense forward: every window of every image already cut and stacked in memory,
      one batched `dense_features` call per chunk (the upper limit for (a)),
then prints medians over --repeats and the ratios (a)/(b) and (a)/(c), and checks that (a) and
(b) predict the same class maps. (d) times the five dense variants of a zero-shot suite over the same
windows: each variant's bare forward alone, against one shared trunk (all blocks but the last) and
five last blocks, as silc_eval runs them (machinery/shared_trunk.py), and checks they are equal. Then it times the metric: silc_eval's SegmentationMeter versus
mmseg's IoUMetric (process + compute_metrics) on the same predictions and labels.

Run from the repository root:  .venv/bin/python benchmarks/perf/segmentation_throughput.py
    --arch ViT-B-16 --synthetic 375x500 --n-images 8     # a randomly initialised ViT-B/16 on VOC-sized images
See benchmarks/perf/README.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from silc_eval.machinery import dense_segmentation as ds  # noqa: E402
from silc_eval.machinery.prompts import query_embeddings  # noqa: E402
from silc_eval.machinery.segmentation_metrics import SegmentationMeter  # noqa: E402
from silc_eval.machinery.windows import normalization_tensors, prepare_image, window_boxes  # noqa: E402
from silc_eval.models.open_clip_model import OpenClipModel  # noqa: E402


def random_arch_model(arch: str, seed: int = 0) -> OpenClipModel:
    """Return a randomly initialised open_clip architecture wrapped as an OpenClipModel (no weights downloaded).

    Its sha256 is not a digest, so the feature cache never serves or stores its features.
    """
    import open_clip

    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    return OpenClipModel(model, open_clip.get_tokenizer(arch), preprocess, f"{arch} (random init)", "-",
                         "random-init", arch)


def load_inputs(args):
    """Return (model, images, labels, class names per class, templates, params)."""
    from silc_eval.registry import resolve_benchmarks

    benchmark = resolve_benchmarks([args.benchmark])[0]
    params = benchmark.protocol()
    for key in ("variant", "short_side", "window", "stride", "batch_size"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.arch:
        model = random_arch_model(args.arch)
    else:
        from silc_eval.models import load_model

        model = load_model(args.model)
    model.to(args.device)
    if args.synthetic:
        height, width = (int(v) for v in args.synthetic.split("x"))
        generator = torch.Generator().manual_seed(0)
        images = [torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
                  for _ in range(args.n_images)]
        num_classes = args.synthetic_classes
        labels = [torch.randint(0, num_classes, (height, width), generator=generator) for _ in images]
        classes = [[f"class {i}"] for i in range(num_classes)]
        templates = ["a photo of a {c}."]
    else:
        from silc_eval.evaluate.api import build_splits, dataset_root

        dataset = build_splits(benchmark, dataset_root(benchmark.dataset, None, None), None)["eval"]
        items = [dataset[i] for i in range(min(args.n_images, len(dataset)))]
        images, labels = [i[0] for i in items], [i[1] for i in items]
        classes, templates = dataset.classes, dataset.templates
    return model, images, labels, classes, templates, params


def per_window_loop(model, images, text, query_class, num_classes, params):
    """SCLIP's structure: one image at a time, one window at a time. Returns the class maps."""
    mean, std = normalization_tensors(model)
    window, stride = params["window"], params["stride"]
    predictions = []
    with torch.inference_mode():
        for image in images:
            x = prepare_image(image.to(model.device), params["short_side"], mean, std)
            total = None
            count = torch.zeros(x.shape[-2:], device=x.device)
            for top, bottom, left, right in window_boxes(x.shape[-2], x.shape[-1], window, stride):
                features = model.dense_features(x[None, :, top:bottom, left:right], params["variant"]).float()
                logits = torch.einsum("bhwe,qe->bqhw", F.normalize(features, dim=-1), text)
                logits = F.interpolate(logits, size=(bottom - top, right - left), mode="bilinear", align_corners=False)
                if total is None:
                    total = logits.new_zeros((logits.shape[1], *x.shape[-2:]))
                total[:, top:bottom, left:right] += logits[0]
                count[top:bottom, left:right] += 1
            averaged = F.interpolate((total / count)[None], size=tuple(image.shape[-2:]), mode="bilinear",
                                     align_corners=False)[0]
            probs = ds.class_probabilities(averaged, query_class, num_classes, params["logit_scale"])
            predictions.append(ds.predict_classes(probs, params["prob_thd"], params["area_thd"]))
    return predictions


def bare_windows(model, images, params):
    """Return every window of every prepared image, stacked per shape (no model work)."""
    mean, std = normalization_tensors(model)
    stacks: dict[tuple[int, int], list[torch.Tensor]] = {}
    for image in images:
        x = prepare_image(image.to(model.device), params["short_side"], mean, std)
        for top, bottom, left, right in window_boxes(x.shape[-2], x.shape[-1], params["window"], params["stride"]):
            stacks.setdefault((bottom - top, right - left), []).append(x[:, top:bottom, left:right])
    return [torch.stack(v) for v in stacks.values()]


def bare_forward(model, stacks, params):
    with torch.inference_mode():
        for stack in stacks:
            for start in range(0, len(stack), params["batch_size"]):
                model.dense_features(stack[start:start + params["batch_size"]], params["variant"])


def five_variants(model, stacks, params, shared: bool) -> list[torch.Tensor]:
    """Return the dense features of every variant over the stacked windows, each variant computed alone or all five
    from one trunk per batch."""
    from silc_eval.models.dense import VARIANTS

    out = []
    with torch.inference_mode():
        for stack in stacks:
            for start in range(0, len(stack), params["batch_size"]):
                windows = stack[start:start + params["batch_size"]]
                if shared:
                    trunk = model.dense_trunk(windows)
                    out += [model.dense_from_trunk(trunk, variant) for variant in VARIANTS]
                else:
                    out += [model.dense_features(windows, variant) for variant in VARIANTS]
    return out


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    synchronise(device)
    started = time.perf_counter()
    fn()
    synchronise(device)
    return time.perf_counter() - started


def time_metrics(predictions, labels, num_classes, repeats):
    """Return (ours seconds, mmseg seconds or None, agree) medians for the whole dataset's metric."""
    def ours():
        meter = SegmentationMeter(num_classes)
        for p, l in zip(predictions, labels):
            meter.update(p, l)
        return meter.compute()

    try:
        from mmseg.evaluation import IoUMetric
    except ImportError:
        IoUMetric = None

    def theirs():
        metric = IoUMetric(iou_metrics=["mIoU"])
        metric.dataset_meta = {"classes": [str(i) for i in range(num_classes)]}
        samples = [{"pred_sem_seg": {"data": p[None]}, "gt_sem_seg": {"data": l[None]}}
                   for p, l in zip(predictions, labels)]
        metric.process({}, samples)
        return metric.compute_metrics(metric.results)

    if IoUMetric is not None:
        import logging

        from mmengine.logging import MMLogger

        MMLogger.get_current_instance().setLevel(logging.ERROR)  # its per-class table is printed at INFO
    ours_times, theirs_times = [], []
    agree = None
    for _ in range(repeats):
        ours_times.append(timed(ours, "cpu"))
        if IoUMetric is not None:
            theirs_times.append(timed(theirs, "cpu"))
    if IoUMetric is not None:
        agree = abs(100 * ours()["mIoU"] - theirs()["mIoU"]) < 0.01
    return statistics.median(ours_times), (statistics.median(theirs_times) if theirs_times else None), agree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clip-vit-tiny-synth", help="any silc-eval --model spec")
    parser.add_argument("--arch", default=None, help="a randomly initialised open_clip architecture instead")
    parser.add_argument("--benchmark", default="synthscenes-zeroshot-seg-sclip",
                        help="zero-shot segmentation benchmark whose data and protocol are used")
    parser.add_argument("--synthetic", default=None, metavar="HxW", help="random images of this size instead")
    parser.add_argument("--synthetic-classes", type=int, default=21)
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--short-side", dest="short_side", type=int, default=None)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model, images, labels, classes, templates, params = load_inputs(args)
    text, query_class = query_embeddings(model, classes, templates)
    text = text.to(args.device)
    num_classes = len(classes)
    stacks = bare_windows(model, images, params)
    n_windows = sum(len(s) for s in stacks)

    def batched():
        return ds.segment(model, images, text, query_class, num_classes, params)

    def looped():
        return per_window_loop(model, images, text, query_class, num_classes, params)

    same = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(batched(), looped()))
    bare_forward(model, stacks, params)
    variants_equal = all(torch.equal(a, b) for a, b in zip(five_variants(model, stacks, params, False),
                                                           five_variants(model, stacks, params, True)))
    one_per_call = {**params, "batch_size": 1}
    times = {"batched": [], "per-window": [], "bare": [], "bare 1": [], "five alone": [], "five shared": []}
    for repeat in range(args.repeats):
        order = [("batched", batched), ("per-window", looped), ("bare", lambda: bare_forward(model, stacks, params)),
                 ("bare 1", lambda: bare_forward(model, stacks, one_per_call)),
                 ("five alone", lambda: five_variants(model, stacks, params, False)),
                 ("five shared", lambda: five_variants(model, stacks, params, True))]
        for name, fn in (order if repeat % 2 == 0 else order[::-1]):
            times[name].append(timed(fn, args.device))

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}")
    print(f"model: {getattr(model, 'name', args.model)}; {len(images)} images of {tuple(images[0].shape[-2:])}, "
          f"{n_windows} windows of {params['window']} (stride {params['stride']}, short side {params['short_side']}), "
          f"variant {params['variant']}, batch {params['batch_size']} windows, {len(query_class)} text queries")
    print(f"{'path':<34}{'img/s median':>14}{'min':>10}{'max':>10}")
    medians = {}
    for name, label in [("batched", "(a) silc_eval batched windows"), ("per-window", "(b) per-window loop (SCLIP)"),
                        ("bare", "(c) bare dense forward"), ("bare 1", "(e) bare forward, 1 window a call")]:
        rates = [len(images) / t for t in times[name]]
        medians[name] = statistics.median(rates)
        print(f"{label:<34}{medians[name]:>14.2f}{min(rates):>10.2f}{max(rates):>10.2f}")
    print(f"(a)/(b) batched / per-window: {medians['batched'] / medians['per-window']:.2f}x")
    print(f"(a)/(c) batched / bare forward: {medians['batched'] / medians['bare']:.2f}")
    print(f"(a) and (b) predict identical class maps: {same}")
    print(f"(c)/(e) what batching buys the bare forward alone: {medians['bare'] / medians['bare 1']:.2f}x "
          f"(a compute-bound forward caps (a)/(b) near this; the rest is the loop's own per-window cost)")
    alone, shared = (statistics.median(times[name]) for name in ("five alone", "five shared"))
    print(f"(d) five dense variants, bare forward: each alone {alone:.2f} s, one shared trunk {shared:.2f} s "
          f"(medians), ratio {alone / shared:.2f}x; identical features: {variants_equal}")

    predictions = batched()
    ours, theirs, agree = time_metrics([p.cpu() for p in predictions], [l.long() for l in labels], num_classes,
                                       args.repeats)
    print(f"metric over {len(images)} images: silc_eval {ours * 1000:.1f} ms", end="")
    if theirs is None:
        print("; mmseg not installed (pip install -e '.[test]')")
    else:
        print(f", mmseg IoUMetric {theirs * 1000:.1f} ms, ratio mmseg/ours {theirs / ours:.2f}x, "
              f"mIoU agree: {agree}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
