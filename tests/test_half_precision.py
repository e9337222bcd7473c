"""--precision fp16: open_clip towers in half precision as OpenAI CLIP's reference code runs them (SCLIP, ClearCLIP
and NACLIP load the model that way on a GPU), checked against that code's own conversion rule, written out here."""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_fails_cleanly
from silc_eval.cli import main
from silc_eval.core.errors import UserError
from silc_eval.features import cache as feature_cache
from silc_eval.features import encode_images, precision_label
from silc_eval.models import dense, load_model
from silc_eval.models.dense import VARIANTS
from silc_eval.models.loading import check_precision, load_open_clip

BENCHMARKS = ["synthscenes-zeroshot", "synthscenes-zeroshot-seg-sclip"]


def openai_half(model: torch.nn.Module) -> torch.nn.Module:
    """Return model converted by OpenAI CLIP's rule (its model.py convert_weights and LayerNorm subclass): the weights
    and biases of convolutions and linear layers, attention's projection tensors and the `proj`/`text_projection`
    matrices in float16; every LayerNorm keeps float32 weights and normalises in float32, its output cast back to
    the input's dtype; embeddings stay float32."""
    for module in model.modules():
        tensors = []
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            tensors = [module.weight, module.bias]
        if isinstance(module, torch.nn.MultiheadAttention):
            tensors = [getattr(module, n) for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                                                     "v_proj_weight", "in_proj_bias", "bias_k", "bias_v")]
        tensors += [getattr(module, n, None) for n in ("text_projection", "proj")]
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                tensor.data = tensor.data.half()
        if isinstance(module, torch.nn.LayerNorm):
            def forward(self, x):
                return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)
            module.forward = types.MethodType(forward, module)
    return model


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    spec = f"local-dir:{tiny_model_dir}"
    reference = openai_half(load_open_clip(spec).model)
    return load_model(spec, precision="fp16"), load_model(spec), reference


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_weights_are_half_and_every_layer_norm_is_float32(models):
    half, _, _ = models
    norms = [m for m in half.model.modules() if isinstance(m, torch.nn.LayerNorm)]
    linears = [m for m in half.model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert norms and linears
    assert all(m.weight.dtype == torch.float32 for m in norms)
    assert all(m.weight.dtype == torch.float16 for m in linears)
    seen = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype))) for m in norms]
    half.model.encode_image(torch.zeros(1, 3, 32, 32, dtype=torch.float16))
    for hook in hooks:
        hook.remove()
    assert seen and all(dtypes == (torch.float16, torch.float16) for dtypes in seen)  # fp32 inside, fp16 out


def test_image_and_text_features_equal_openai_clips_half_precision_rule(models, images):
    half, full, reference = models
    with torch.no_grad():
        expected_images = reference.encode_image(images.half())
        tokens = half.tokenize(["a photo of a red star", "the circle"])
        expected_texts = reference.encode_text(tokens)
    assert expected_images.dtype == torch.float16
    got_images, got_texts = half.encode_image(images), half.encode_text(tokens)
    assert got_images.dtype == torch.float32 and got_texts.dtype == torch.float32
    assert torch.equal(got_images, expected_images.float())
    assert torch.equal(got_texts, expected_texts.float())
    single = full.encode_image(images)  # it really ran in half: close to float32, not equal
    assert not torch.equal(got_images, single)
    assert F.cosine_similarity(got_images, single).min() > 0.999


@pytest.mark.parametrize("variant", VARIANTS)
def test_dense_features_run_in_half_and_stay_close_to_float32(models, images, variant):
    half, full, reference = models
    larger = F.interpolate(images, size=(48, 40), mode="bilinear")  # off the training grid: positions interpolated
    with torch.inference_mode():  # as the tasks call it
        got = half.dense_features(larger, variant)
        expected = dense.dense_features(reference.visual, larger.half(), variant)[0]
        single = full.dense_features(larger, variant)
        tokens, single_tokens = half.patch_tokens(larger), full.patch_tokens(larger)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert torch.equal(got, expected.float())
    assert not torch.equal(got, single)
    assert F.cosine_similarity(got.flatten(0, 2), single.flatten(0, 2)).min() > 0.99
    assert tokens.dtype == torch.float32
    assert F.cosine_similarity(tokens.flatten(0, 2), single_tokens.flatten(0, 2)).min() > 0.99


def run_cli(output, model_dir, *extra):
    argv = ["run", "--model", f"local-dir:{model_dir}", "--output", str(output), "--no-progress", *extra]
    for benchmark in BENCHMARKS:
        argv += ["--benchmark", benchmark]
    return main(argv)


def test_the_record_says_fp16_and_a_precision_change_recomputes_without_cached_features(tmp_path, tiny_model_dir,
                                                                                          capsys):
    output = tmp_path / "out"
    assert run_cli(output, tiny_model_dir, "--precision", "fp16") == 0
    folder = output / "records" / tiny_model_dir.name
    records = {b: json.loads((folder / f"{b}.json").read_text()) for b in BENCHMARKS}
    assert all(r["model"]["precision"] == "fp16" for r in records.values())
    capsys.readouterr()
    assert run_cli(output, tiny_model_dir, "--precision", "fp16") == 0
    assert "keeping 2 of 2 records" in capsys.readouterr().err
    assert run_cli(output, tiny_model_dir) == 0
    err = capsys.readouterr().err
    assert err.count("model precision fp16 -> fp32") == 2
    full = {b: json.loads((folder / f"{b}.json").read_text()) for b in BENCHMARKS}
    assert all(r["model"]["precision"] == "fp32" for r in full.values())
    for benchmark, record in records.items():  # the same model: half precision moves scores a little
        main_metric = record["benchmark"]["main_metric"]
        assert abs(record["metrics"][main_metric] - full[benchmark]["metrics"][main_metric]) < 0.05


def test_cached_features_are_keyed_by_precision(models, tiny_classification_dir):
    half, full, _ = models
    assert (precision_label(half, amp=False), precision_label(full, amp=False)) == ("fp16-weights", "fp32")
    dataset = tiny_classification_dir.dataset(transform=half.preprocess)
    keys = [feature_cache.key_parts(m, dataset, "eval", True, precision_label(m, False)) for m in (half, full)]
    assert keys[0] is not None and keys[0] != keys[1]  # fp16 features are never served to an fp32 run
    feature_cache.reset_stats()
    served = [encode_images(m, dataset, progress=False) for m in (half, full, half)]
    assert feature_cache.STATS["hits"] + feature_cache.STATS["misses"] == 3
    assert torch.equal(served[0], served[2]) and not torch.equal(served[0], served[1])


def test_a_record_without_precision_ran_in_fp32(tmp_path, tiny_model_dir, capsys):
    output = tmp_path / "out"
    argv = ["run", "--model", f"local-dir:{tiny_model_dir}", "--output", str(output), "--no-progress",
            "--benchmark", "synthscenes-zeroshot"]
    assert main(argv) == 0
    path = output / "records" / tiny_model_dir.name / "synthscenes-zeroshot.json"
    record = json.loads(path.read_text())
    del record["model"]["precision"]  # as written before precision was recorded
    path.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(argv) == 0
    assert "keeping 1 of 1 records" in capsys.readouterr().err


def test_precision_mistakes_are_one_line(tmp_path, tiny_model_dir, capsys):
    with pytest.raises(UserError, match="hf: folders run in fp32"):
        check_precision("fp16", "hf")
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        check_precision("fp8")
    assert_fails_cleanly(capsys, ["run", "--model", f"local-dir:{tiny_model_dir}", "--precision", "bf16",
                                  "--output", str(tmp_path / "o")], r"--precision: invalid choice: 'bf16'",
                         watch=[tmp_path])
