"""SigLIP 2 NaFlex folders (Siglip2Model, model_type siglip2): images of any aspect ratio go through the folder's own
processor (variable patch grids, padding masks) and give get_image_features' embeddings; text as SigLIP; dense
features cut each window into patches as the processor does and read the tower's own tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from silc_eval.models.hf_model import patchify, unpack_naflex
from silc_eval.models.loading import load_model

transformers = pytest.importorskip("transformers")
VOCAB = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5,
         **{ch: 6 + i for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz.,!")}}


def build_naflex_folder(folder: Path) -> Path:
    """Save a tiny random Siglip2Model (patch 8, at most 16 patches) with SigLIP 2's processor and a Gemma-style
    tokenizer that lower-cases."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor, Siglip2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    config = Siglip2Config(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=len(VOCAB), max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=8, num_patches=16))
    Siglip2Model(config).eval().save_pretrained(folder)
    tokenizer = Siglip2Tokenizer(vocab=VOCAB, merges=[], model_max_length=64)
    Siglip2Processor(image_processor=Siglip2ImageProcessor(max_num_patches=16, patch_size=8),
                     tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def naflex(tmp_path_factory) -> Path:
    return build_naflex_folder(tmp_path_factory.mktemp("naflex") / "siglip2")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 24), (32, 32),
                                                                                           (20, 50))]


def _reference(folder: Path):
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(str(folder), local_files_only=True).eval(), \
        AutoProcessor.from_pretrained(str(folder), local_files_only=True)


def _pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_image_features_equal_the_processor_and_get_image_features(naflex):
    model = load_model(f"hf:{naflex}")
    assert model.family == "hf-siglip2" and model.preprocessing["image"]["max_num_patches"] == 16
    reference, processor = _reference(naflex)
    images = _images()
    packed = torch.stack([model.preprocess(image) for image in images])
    # the image processor's own settings (preprocessor_config.json); Siglip2Processor's call would override them with
    # its defaults (256 patches of 16 px), which the published NaFlex checkpoints also have
    inputs = processor.image_processor(images=images, return_tensors="pt")
    via_processor = processor(images=images, max_num_patches=16, patch_size=8, return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], via_processor["pixel_values"])
    patches, mask, shapes = unpack_naflex(packed)
    assert torch.equal(shapes, inputs["spatial_shapes"]) and torch.equal(mask, inputs["pixel_attention_mask"].long())
    assert len({tuple(s) for s in shapes.tolist()}) == 3  # three aspect ratios, three patch grids
    with torch.no_grad():
        expected = _pooled(reference.get_image_features(**inputs))
        assert torch.allclose(model.encode_image(packed), expected, atol=1e-5)


def test_text_is_padded_to_64_without_a_mask_and_lower_cased(naflex):
    model = load_model(f"hf:{naflex}")
    reference, processor = _reference(naflex)
    ids = model.tokenize(["A PHOTO of the Star"])
    expected = processor(text=["A PHOTO of the Star"], padding="max_length", max_length=64, return_tensors="pt")
    assert ids.shape == (1, 64) and torch.equal(ids, expected["input_ids"])
    assert torch.equal(ids, model.tokenize(["a photo of the star"]))
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), _pooled(reference.get_text_features(input_ids=ids)), atol=1e-5)


def test_windows_are_cut_into_patches_as_the_processor_cuts_them(naflex):
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    window = torch.randn(2, 3, 24, 40)
    ours = patchify(window, 8)
    assert torch.equal(ours[1], convert_image_to_patches(window[1], 8))
    model = load_model(f"hf:{naflex}")
    vision = model.model.vision_model
    with torch.no_grad():
        tokens = model.patch_tokens(window)
        own = vision(pixel_values=ours, pixel_attention_mask=torch.ones(2, 15, dtype=torch.long),
                     spatial_shapes=torch.tensor([[3, 5], [3, 5]])).last_hidden_state
        assert tokens.shape == (2, 3, 5, 32) and torch.allclose(tokens.reshape(2, 15, -1), own, atol=1e-5)
        for variant in ("vanilla", "maskclip", "sclip", "clearclip", "naclip"):
            assert model.dense_features(window, variant).shape == (2, 3, 5, 32)


def test_global_and_dense_benchmarks_run_on_a_naflex_folder(naflex, tmp_path):
    from silc_eval.cli import main

    out = tmp_path / "out"
    assert main(["run", "--model", f"hf:{naflex}", "--benchmark", "synthscenes-zeroshot", "--benchmark",
                 "synthscenes-zeroshot-seg-sclip", "--limit", "12", "--output", str(out), "--no-progress"]) == 0
    records = {p.stem: json.loads(p.read_text()) for p in (out / "records").rglob("*.json")}
    assert set(records) == {"synthscenes-zeroshot", "synthscenes-zeroshot-seg-sclip"}
    assert records["synthscenes-zeroshot"]["model"]["family"] == "hf-siglip2"


def test_list_models_names_each_specs_family(naflex, capsys):
    from silc_eval.cli import main

    assert main(["list", "models", "--model", f"hf:{naflex}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("siglip2 ") and "family=hf-siglip2" in out[0] and "architecture=Siglip2Model:siglip2" in \
        out[0]
    assert out[1].startswith("  preprocessing ") and '"max_num_patches": 16' in out[1]
