"""Hugging Face dual encoders (hf:FOLDER): features against transformers' own get_*_features fed by the folder's
own processor, each family's text rules, dense features against the open_clip path on the same weights, the
record's preprocessing, and bad folders. Tiny random models built from configs, nothing downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CLASSNAMES, TINY_TEMPLATES, assert_fails_cleanly, evaluate_task
from silc_eval.models import dense
from silc_eval.models.hf_model import inspect_hf_folder, load_hf_model, weights_digest
from silc_eval.models.loading import load_model, parse_model_spec

transformers = pytest.importorskip("transformers")
WORDS = sorted({w.strip(".,").lower() for text in TINY_CLASSNAMES + TINY_TEMPLATES for w in text.split()} |
               {"a", "photo", "of", "the", "red", "star"})
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def build_clip_folder(folder: Path) -> Path:
    """Save a tiny random CLIPModel with a word-level BPE tokenizer and CLIP's image processor (32 px)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz{}.,'-":
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(TEXT, vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1),
                        vision_config=VISION, projection_dim=16)
    CLIPModel(config).eval().save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def build_siglip_folder(folder: Path) -> Path:
    """Save a tiny random SiglipModel with a sentencepiece tokenizer trained here and SigLIP's image processor."""
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6)) for i in range(300)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=48,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    tokenizer = SiglipTokenizer(vocab_file=str(folder / "sp.model"))
    torch.manual_seed(1)
    config = SiglipConfig(text_config=dict(TEXT, vocab_size=48, max_position_embeddings=64),
                          vision_config=VISION)
    SiglipModel(config).eval().save_pretrained(folder)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                    tokenizer=tokenizer).save_pretrained(folder)
    for leftover in ("corpus.txt", "sp.model", "sp.vocab"):
        (folder / leftover).unlink()
    return folder


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {"clip": build_clip_folder(root / "clip"), "siglip": build_siglip_folder(root / "siglip")}


def reference(folder: Path):
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(str(folder), local_files_only=True).eval(), \
        AutoProcessor.from_pretrained(str(folder), local_files_only=True)


def pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def images(count: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 6 * i, 50, 3), dtype=np.uint8)) for i in range(count)]


TEXTS = ["A photo of a Red Star.", "the circle, small", "a photo of the square"]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_image_and_text_features_equal_transformers_fed_by_the_folders_processor(hf_folders, family):
    model = load_model(f"hf:{hf_folders[family]}")
    ref, processor = reference(hf_folders[family])
    pictures = images()
    inputs = processor(images=pictures, return_tensors="pt")
    pixels = torch.stack([model.preprocess(p) for p in pictures])
    assert torch.equal(pixels, inputs["pixel_values"])
    with torch.no_grad():
        expected_images = pooled(ref.get_image_features(pixel_values=inputs["pixel_values"]))
        text = processor(text=TEXTS, padding="max_length", max_length=model.context_length, return_tensors="pt")
        if family == "clip":  # CLIP takes its attention mask; SigLIP is trained without one (big_vision)
            expected_texts = pooled(ref.get_text_features(input_ids=text["input_ids"],
                                                          attention_mask=text["attention_mask"]))
        else:
            expected_texts = pooled(ref.get_text_features(input_ids=text["input_ids"]))
    assert torch.allclose(model.encode_image(pixels), expected_images, atol=1e-6)
    assert torch.allclose(model.encode_text(model.tokenize(TEXTS)), expected_texts, atol=1e-6)
    assert model.family == f"hf-{family}"


def test_siglip_ids_are_the_processors_padded_to_max_length_and_canonicalised(hf_folders):
    model = load_model(f"hf:{hf_folders['siglip']}")
    _, processor = reference(hf_folders["siglip"])
    ids = model.tokenize(TEXTS)
    expected = processor(text=TEXTS, padding="max_length", return_tensors="pt")["input_ids"]
    assert ids.shape == (3, 64) and torch.equal(ids, expected)
    # padding="longest" (the processor's default) would leave short rows: the pitfall the family is known for
    assert max(len(row) for row in processor(text=TEXTS)["input_ids"]) < 64
    # SigLIP's tokenizer lower-cases and strips punctuation, and silc-eval leaves that to it
    assert torch.equal(model.tokenize(["A PHOTO, of the STAR!"]), model.tokenize(["a photo of the star"]))
    assert model.preprocessing["text"] == {**model.preprocessing["text"], "attention_mask": False, "max_length": 64,
                                           "padding": "max_length", "do_lower_case": True}


def test_clip_patch_tokens_and_vanilla_dense_features_are_the_final_norm_and_projection(hf_folders):
    model = load_model(f"hf:{hf_folders['clip']}")
    ref, _ = reference(hf_folders["clip"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = ref.vision_model(pixel_values=x).last_hidden_state
        normed = ref.vision_model.post_layernorm(hidden[:, 1:])
        projected = ref.visual_projection(normed)
    assert torch.allclose(model.patch_tokens(x).reshape(2, 16, -1), normed, atol=1e-5)
    assert torch.allclose(model.dense_features(x, "vanilla").reshape(2, 16, -1), projected, atol=1e-5)


def test_siglip_patch_tokens_are_the_normed_last_hidden_state_and_dense_pass_the_pooling_head(hf_folders):
    model = load_model(f"hf:{hf_folders['siglip']}")
    ref, _ = reference(hf_folders["siglip"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = ref.vision_model(pixel_values=x).last_hidden_state  # post_layernorm already applied
        head = ref.vision_model.head
        # The head attending to one token only: its output is that token's value, projected, plus the MLP.
        token = hidden[:, 5:6]
        alone = head.attention(token, token, token)[0]
        expected = alone + head.mlp(head.layernorm(alone))
    assert torch.allclose(model.patch_tokens(x).reshape(2, 16, -1), hidden, atol=1e-5)
    assert torch.allclose(model.dense_features(x, "vanilla").reshape(2, 16, -1)[:, 5:6], expected, atol=1e-5)


def open_clip_blocks(layers) -> dict[str, torch.Tensor]:
    """Return open_clip's resblock entries (transformer.resblocks.i.*) holding transformers encoder layers' weights."""
    state = {}
    for i, layer in enumerate(layers):
        prefix, attn = f"transformer.resblocks.{i}.", layer.self_attn
        state.update({
            prefix + "ln_1.weight": layer.layer_norm1.weight, prefix + "ln_1.bias": layer.layer_norm1.bias,
            prefix + "ln_2.weight": layer.layer_norm2.weight, prefix + "ln_2.bias": layer.layer_norm2.bias,
            prefix + "attn.in_proj_weight": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
            prefix + "attn.in_proj_bias": torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
            prefix + "attn.out_proj.weight": attn.out_proj.weight, prefix + "attn.out_proj.bias": attn.out_proj.bias,
            prefix + "mlp.c_fc.weight": layer.mlp.fc1.weight, prefix + "mlp.c_fc.bias": layer.mlp.fc1.bias,
            prefix + "mlp.c_proj.weight": layer.mlp.fc2.weight, prefix + "mlp.c_proj.bias": layer.mlp.fc2.bias})
    return state


def open_clip_visual_from_hf(ref) -> torch.nn.Module:
    """Return an open_clip VisionTransformer holding the HF CLIP vision tower's weights."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    vision, config = ref.vision_model, ref.config.vision_config
    visual = VisionTransformer(image_size=config.image_size, patch_size=config.patch_size, width=config.hidden_size,
                               layers=config.num_hidden_layers, heads=config.num_attention_heads,
                               mlp_ratio=config.intermediate_size / config.hidden_size,
                               output_dim=ref.config.projection_dim, act_layer=QuickGELU).eval()
    state = {"conv1.weight": vision.embeddings.patch_embedding.weight,
             "class_embedding": vision.embeddings.class_embedding,
             "positional_embedding": vision.embeddings.position_embedding.weight,
             "ln_pre.weight": vision.pre_layrnorm.weight, "ln_pre.bias": vision.pre_layrnorm.bias,
             "ln_post.weight": vision.post_layernorm.weight, "ln_post.bias": vision.post_layernorm.bias,
             "proj": ref.visual_projection.weight.T}
    state.update(open_clip_blocks(vision.encoder.layers))
    missing, unexpected = visual.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    assert not unexpected and not [k for k in missing if "attn_mask" not in k]
    return visual


@pytest.mark.parametrize("variant", dense.VARIANTS)
def test_every_dense_variant_equals_the_open_clip_path_on_the_same_weights(hf_folders, variant):
    # Off the training grid (48x64 windows: positional embeddings interpolated) and on it.
    model = load_model(f"hf:{hf_folders['clip']}")
    visual = open_clip_visual_from_hf(reference(hf_folders["clip"])[0])
    for size in ((48, 64), (32, 32)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, _ = dense.dense_features(visual, x, variant)
            got = model.dense_features(x, variant)
        assert torch.allclose(got, expected, atol=1e-5), (variant, size, float((got - expected).abs().max()))
    with torch.no_grad():
        assert torch.allclose(model.patch_tokens(x), dense.patch_tokens(visual, x)[0], atol=1e-5)
        assert torch.allclose(model.encode_image(x), visual(x), atol=1e-5)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_every_siglip_and_clip_variant_runs_off_the_training_grid(hf_folders, family):
    model = load_model(f"hf:{hf_folders[family]}")
    x = torch.randn(1, 3, 40, 56)
    for variant in dense.VARIANTS:
        features = model.dense_features(x, variant)
        assert features.shape[:3] == (1, 5, 7) and torch.isfinite(features).all()


def test_zero_shot_classification_runs_and_the_record_names_family_and_preprocessing(hf_folders,
                                                                                      tiny_classification_dir):
    from silc_eval.evaluate.records import model_entry

    model = load_model(f"hf:{hf_folders['siglip']}")
    from silc_eval.tasks import TASKS

    metrics = evaluate_task(TASKS["zeroshot_classification"], model, tiny_classification_dir.dataset(model.preprocess))
    assert 0.0 <= metrics["acc1"] <= 1.0
    entry = model_entry(model)
    assert entry["family"] == "hf-siglip" and entry["sha256"] == weights_digest(
        inspect_hf_folder(hf_folders["siglip"]).weights)
    assert entry["preprocessing"]["image"]["image_mean"] == [0.5, 0.5, 0.5]
    assert entry["preprocessing"]["image"]["resample"] == "BICUBIC"
    assert set(entry["logit_scale"]) == {"scale", "bias"}
    json.dumps(entry)


def test_a_processor_change_makes_resume_recompute(hf_folders, tmp_path):
    from silc_eval.evaluate.resume import spec_preprocessing

    folder = tmp_path / "siglip"
    shutil.copytree(hf_folders["siglip"], folder)
    before = spec_preprocessing(f"hf:{folder}")
    config_file = next(folder / name for name in ("preprocessor_config.json", "processor_config.json")
                       if (folder / name).is_file())
    config = json.loads(config_file.read_text())
    image_config = config.get("image_processor", config)
    image_config["image_mean"] = [0.48, 0.46, 0.41]
    config_file.write_text(json.dumps(config))
    after = spec_preprocessing(f"hf:{folder}")
    assert before != after and after["image"]["image_mean"] == [0.48, 0.46, 0.41]


def test_sharded_weights_have_one_digest_that_changes_with_any_shard(tmp_path):
    first, second = tmp_path / "model-00001-of-00002.safetensors", tmp_path / "model-00002-of-00002.safetensors"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    digest = weights_digest([second, first])
    assert digest == weights_digest([first, second]) and len(digest) == 64
    second.write_bytes(b"TWO")
    assert weights_digest([first, second]) != digest


@pytest.mark.parametrize("breakage, expected", [
    ("no weights", r"has no weights; expected a transformers save_pretrained folder"),
    ("no processor", r"has no processor configuration; expected a transformers save_pretrained folder"),
    ("bert", r"holds a bert, not a dual encoder; expected a CLIP-style dual encoder"),
    ("no config", r"has no config.json"),
])
def test_bad_folders_get_one_line_and_exit_code_2(hf_folders, tmp_path, capsys, breakage, expected):
    folder = tmp_path / "model"
    shutil.copytree(hf_folders["clip"], folder)
    if breakage == "no weights":
        (folder / "model.safetensors").unlink()
    elif breakage == "no processor":
        for name in ("preprocessor_config.json", "processor_config.json"):
            (folder / name).unlink(missing_ok=True)
    elif breakage == "no config":
        (folder / "config.json").unlink()
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": breakage}))
    assert_fails_cleanly(capsys, ["run", "--model", f"hf:{folder}", "--benchmark", "synthscenes-zeroshot",
                                  "--output", str(tmp_path / "out"), "--no-progress"], expected, watch=[tmp_path])
    with pytest.raises(Exception):
        parse_model_spec(f"hf:{folder}")


def test_half_precision_is_refused_for_hf_folders_in_one_line(hf_folders, tmp_path, capsys):
    assert_fails_cleanly(capsys, ["run", "--model", f"hf:{hf_folders['clip']}", "--precision", "fp16",
                                  "--benchmark", "synthscenes-zeroshot", "--output", str(tmp_path / "out"),
                                  "--no-progress"], r"--precision fp16 runs open_clip towers .* hf: folders run in fp32",
                         watch=[tmp_path])


def test_loaded_in_eval_mode_on_the_cpu_with_a_name_from_the_folder(hf_folders):
    model = load_hf_model(hf_folders["clip"])
    assert not model.model.training and model.device.type == "cpu" and model.name == "clip"
    assert model.normalization == ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


# ----------------------------------------------------------------------------- the same weights through open_clip

def clip_bpe_tokenizer():
    """Return a transformers CLIPTokenizer over open_clip's own CLIP BPE vocabulary (49,408 tokens): the same ids
    open_clip's SimpleTokenizer gives."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=merges,
                         model_max_length=77)


def open_clip_state_from_hf(ref) -> dict[str, torch.Tensor]:
    """Return the open_clip CLIP state dict holding a transformers CLIPModel's weights."""
    state = {f"visual.{k}": v for k, v in open_clip_visual_from_hf(ref).state_dict().items()}
    text = ref.text_model
    state.update({"token_embedding.weight": text.embeddings.token_embedding.weight,
                  "positional_embedding": text.embeddings.position_embedding.weight,
                  "ln_final.weight": text.final_layer_norm.weight, "ln_final.bias": text.final_layer_norm.bias,
                  "text_projection": ref.text_projection.weight.T, "logit_scale": ref.logit_scale.reshape(())})
    state.update(open_clip_blocks(text.encoder.layers))
    return {k: v.detach().contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def twin_clip_folders(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random CLIP at 64 px (SynthScenes' size: no resize on either path) saved twice: as a transformers
    folder with the CLIP BPE tokenizer, and converted into an open_clip local-dir."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    root = tmp_path_factory.mktemp("twins")
    torch.manual_seed(3)
    config = CLIPConfig(text_config=dict(TEXT, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                                         eos_token_id=49407, pad_token_id=49407),
                        vision_config=dict(VISION, image_size=64), projection_dim=16)
    ref = CLIPModel(config).eval()
    ref.save_pretrained(root / "hf")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
                  tokenizer=clip_bpe_tokenizer()).save_pretrained(root / "hf")
    model_cfg = {"embed_dim": 16, "quick_gelu": True,
                 "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16,
                                "mlp_ratio": 2.0},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                              "mlp_ratio": 2.0}}
    open_clip_model = CLIP(**model_cfg)
    missing, unexpected = open_clip_model.load_state_dict(open_clip_state_from_hf(ref), strict=False)
    assert not unexpected and not [k for k in missing if "attn_mask" not in k]
    (root / "oc").mkdir()
    (root / "oc" / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                           "interpolation": "bicubic", "resize_mode": "shortest", "size": 64}}))
    save_file({k: v.contiguous() for k, v in open_clip_model.state_dict().items()},
              str(root / "oc" / "open_clip_model.safetensors"))
    return root / "hf", root / "oc"


def test_the_same_weights_score_identically_through_transformers_and_open_clip_on_the_quick_suite(
        twin_clip_folders, tmp_path):
    from silc_eval.cli import main

    hf, oc = twin_clip_folders
    hf_model, oc_model = load_model(f"hf:{hf}"), load_model(f"local-dir:{oc}")
    prompts = ["a photo of a red circle.", "a small blue star on a green background"]
    assert torch.equal(hf_model.tokenize(prompts)[:, 0], oc_model.tokenize(prompts).to(torch.int64)
                       .masked_fill(oc_model.tokenize(prompts) == 0, 49407))  # open_clip pads with 0, CLIP's with EOT
    assert torch.allclose(hf_model.encode_text(hf_model.tokenize(prompts)), oc_model.encode_text(
        oc_model.tokenize(prompts)), atol=1e-5)
    output = tmp_path / "run"
    assert main(["run", "--suite", "quick", "--model", f"hf:{hf}", "--model", f"local-dir:{oc}",
                 "--output", str(output), "--no-progress"]) == 0
    for benchmark in ("synthscenes-zeroshot", "synthscenes-retrieval"):
        through_hf = json.loads((output / "records" / "hf" / f"{benchmark}.json").read_text())
        through_oc = json.loads((output / "records" / "oc" / f"{benchmark}.json").read_text())
        assert through_hf["model"]["family"] == "hf-clip" and through_oc["model"]["family"] == "open_clip"
        assert through_hf["metrics"] == pytest.approx(through_oc["metrics"], abs=1e-12), benchmark


def test_siglip2_fixed_resolution_folders_get_their_gemma_tokenizers_lower_casing(hf_folders, tmp_path):
    # SigLIP 2's fixed-resolution checkpoints are SiglipModel folders with a Gemma tokenizer that lower-cases
    # (Siglip2Tokenizer): without it SigLIP 2 loses about 12 points (RADIO PR #142).
    from transformers import Siglip2Tokenizer, SiglipImageProcessor, SiglipProcessor

    folder = tmp_path / "siglip2"
    shutil.copytree(hf_folders["siglip"], folder)
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                 "processor_config.json", "preprocessor_config.json"):
        (folder / name).unlink(missing_ok=True)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for ch in "abcdefghijklmnopqrstuvwxyz.,!":
        vocab[ch] = len(vocab)
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=64)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                    tokenizer=tokenizer).save_pretrained(folder)
    model = load_model(f"hf:{folder}")
    _, processor = reference(folder)
    ids = model.tokenize(["A PHOTO of the Star"])
    assert torch.equal(ids, processor(text=["A PHOTO of the Star"], padding="max_length", max_length=64,
                                      return_tensors="pt")["input_ids"])
    assert torch.equal(ids, model.tokenize(["a photo of the star"]))
    assert not (ids == vocab["<unk>"]).any()
    assert "Lowercase" in model.preprocessing["text"]["normalizer"]
