"""Hugging Face `transformers` dual encoders (CLIPModel, SiglipModel, Siglip2Model) as VLModels, with each family's
own preprocessing read from the folder's processor configuration.

A `hf:FOLDER` spec names a local `save_pretrained` folder: config.json, the weights (*.safetensors or
pytorch_model.bin, sharded or not) and the processor's files (image processor and tokenizer). Nothing
touches the network (local_files_only, the offline switches).

What each family does, as its authors do it (and as it is recorded with every result):
- images: the folder's own image processor (resize, interpolation, crop, rescale, normalisation);
- text, CLIP: the tokenizer padded to the text model's context length with its attention mask (CLIP's
  causal text tower pools at the end-of-text token, so padding never reaches it);
- text, SigLIP and SigLIP 2 (fixed resolution, `siglip` model type): ids padded to `max_length` (64) and
  no attention mask, as big_vision trains them (the text tower attends to the padding and pools the last
  position); the tokenizer's own normalisation applies (SigLIP's lower-casing and punctuation stripping,
  SigLIP 2's lower-casing in its Gemma tokenizer);
- SigLIP 2 NaFlex (`siglip2` model type): its image processor resizes each image, aspect kept, to at most
  max_num_patches patches and cuts it into patches, with the settings of the folder's preprocessor_config.json
  (Siglip2Processor's call would impose its own defaults, 256 patches of 16 px, which the published checkpoints
  share); the patches, the image's patch grid and its padding mask
  travel packed in one tensor per image (NaFlexTransform) and go to get_image_features as the processor would
  hand them; text as SigLIP;
- logit scale (and SigLIP's bias) as trained, recorded for the record.

Dense features (models/dense.py's five variants) go through the same last-block variants, with
positions interpolated as models/vit.py does off the training grid: CLIP's patch
tokens through post_layernorm and visual_projection; SigLIP has no projection but an attention-pooling
head (MAP), so each patch token goes through the head's value and output projections and its residual
MLP, MaskCLIP's reading of an attention pool (the head's query then only weighs tokens). NaFlex towers read
each window as one image of its own patch grid: the window is cut into patches as the processor cuts them,
and the tower resizes its positional embeddings to that grid itself (bilinear, its own rule).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import remembered_sha256
from silc_eval.core.offline import enforce_offline
from silc_eval.core.quiet import quiet_root_logger
from silc_eval.models import dense
from silc_eval.models.vit import interpolate_pos_embed

HF_PREFIX = "hf:"
FAMILIES = {"clip": "hf-clip", "siglip": "hf-siglip", "siglip2": "hf-siglip2"}  # config.json model_type -> family
NOT_DUAL_ENCODERS_HINT = "a CLIP-style dual encoder (model_type clip, siglip or siglip2)"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def hf_folder(spec: str) -> Path | None:
    """Return the folder of a `hf:FOLDER` spec (not checked), or None for any other spec."""
    return Path(spec[len(HF_PREFIX):]).expanduser() if spec.startswith(HF_PREFIX) else None


@dataclass(frozen=True)
class HFFolder:
    """A checked Hugging Face folder: where it is, its config's model_type, its family and its weight files."""

    path: Path
    model_type: str
    family: str
    weights: tuple[Path, ...]


def inspect_hf_folder(folder: Path) -> HFFolder:
    """Return the HFFolder of folder, or raise a one-line UserError saying what is missing or unsupported."""
    layout = (f"expected a transformers save_pretrained folder: config.json, model.safetensors (or "
              f"pytorch_model.bin) and the processor's files ({' or '.join(PROCESSOR_FILES)}, tokenizer)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{folder} has no config.json; {layout}")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{config_path} could not be read as JSON ({exc}); {layout}") from None
    if model_type not in FAMILIES:
        raise UserError(f"{folder} holds a {model_type or 'model without model_type'}, not a dual encoder; "
                        f"expected {NOT_DUAL_ENCODERS_HINT}")
    weights = tuple(sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)}))
    if not weights:
        raise UserError(f"{folder} has no weights; {layout}")
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        raise UserError(f"{folder} has no processor configuration; {layout}")
    return HFFolder(folder, model_type, FAMILIES[model_type], weights)


def weights_digest(weights: Sequence[Path]) -> str:
    """Return the model's sha256: the weight file's own digest, or for shards the sha256 of their sorted
    'name digest' lines."""
    if len(weights) == 1:
        return remembered_sha256(weights[0])
    lines = "".join(f"{p.name} {remembered_sha256(p)}\n" for p in sorted(weights, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def load_processor(folder: Path):
    """Return the folder's AutoProcessor (image processor and tokenizer), offline; a UserError if it cannot."""
    enforce_offline()
    from transformers import AutoProcessor

    try:
        with quiet_root_logger():
            return AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/ImportError on a broken processor
        raise UserError(f"the processor of {folder} could not be loaded: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. transformers' SizeDict
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(getattr(value, "name", value))  # e.g. torchvision's InterpolationMode


def _resample_name(value: Any) -> Any:
    """Return PIL's name of a resample filter given as an int (3 -> BICUBIC), else value."""
    if isinstance(value, int) and not isinstance(value, bool):
        from PIL import Image

        try:
            return Image.Resampling(value).name
        except ValueError:
            return value
    return _jsonable(value)


IMAGE_SETTINGS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                  "do_normalize", "image_mean", "image_std", "do_convert_rgb", "max_num_patches", "patch_size")


def text_settings(family: str, tokenizer, context_length: int) -> dict[str, Any]:
    """Return how silc-eval tokenizes for family: padding, max length, attention mask, the tokenizer's normalisation."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    return {"tokenizer": type(tokenizer).__name__, "padding": "max_length", "max_length": context_length,
            "truncation": True, "attention_mask": family == "hf-clip",
            "do_lower_case": getattr(tokenizer, "do_lower_case", None),
            "normalizer": None if normalizer is None else repr(normalizer),
            "padding_side": getattr(tokenizer, "padding_side", None)}


def preprocessing_of(family: str, processor, context_length: int) -> dict[str, Any]:
    """Return the family's image and text preprocessing as recorded with every result (JSON-ready)."""
    image = processor.image_processor
    return {"image_processor": type(image).__name__,
            "image": {name: (_resample_name if name == "resample" else _jsonable)(getattr(image, name, None))
                      for name in IMAGE_SETTINGS},
            "text": text_settings(family, processor.tokenizer, context_length)}


def folder_preprocessing(folder: Path) -> dict[str, Any]:
    """Return the preprocessing a `hf:` folder's model would record, read from its configuration without its
    weights (what a resumed run compares)."""
    checked = inspect_hf_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    return preprocessing_of(checked.family, load_processor(folder), context_length_of(config))


def context_length_of(config: dict) -> int:
    """Return the text tower's context length (max_position_embeddings) from a config.json dict."""
    return int(config.get("text_config", {}).get("max_position_embeddings") or (77 if config.get("model_type") ==
                                                                                 "clip" else 64))


class ProcessorTransform:
    """PIL image -> CHW float tensor through the folder's image processor; its repr is the recorded settings
    (the feature cache keys on it)."""

    def __init__(self, image_processor, settings: dict[str, Any]):
        self.image_processor = image_processor
        self.settings = settings

    def __call__(self, image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFImageProcessor({json.dumps(self.settings, sort_keys=True)})"


class NaFlexTransform(ProcessorTransform):
    """PIL image -> one packed tensor (1 + P, C*p*p) through a NaFlex image processor: row 0 holds the image's patch
    grid (height, width), rows 1.. its P patches as the processor lays them out (padding after the image's own)."""

    def __call__(self, image) -> torch.Tensor:
        out = self.image_processor(images=image, return_tensors="pt")
        patches, grid = out["pixel_values"][0], out["spatial_shapes"][0]
        header = torch.zeros(1, patches.shape[1], dtype=patches.dtype)
        header[0, :2] = grid.to(patches.dtype)
        return torch.cat([header, patches])


def unpack_naflex(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (pixel_values (B, P, C*p*p), pixel_attention_mask (B, P), spatial_shapes (B, 2)) of packed images."""
    shapes = packed[:, 0, :2].round().long()
    patches = packed[:, 1:]
    mask = (torch.arange(patches.shape[1], device=packed.device)[None] < shapes.prod(dim=1)[:, None]).long()
    return patches, mask, shapes


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Return images (B, C, H, W) as NaFlex patches (B, gh*gw, p*p*C), row-major, channels last within a patch (the
    layout of Siglip2ImageProcessor); pixels past the last whole patch are dropped."""
    batch, channels, height, width = images.shape
    gh, gw = height // patch, width // patch
    x = images[:, :, :gh * patch, :gw * patch].reshape(batch, channels, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, gh * gw, patch * patch * channels)


def _output_tensor(output) -> torch.Tensor:
    """Return get_*_features' result as a tensor (transformers 5 returns an output whose pooler_output it is)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _hf_last_block(layer, class_token: bool) -> dense.LastBlock:
    attn = layer.self_attn
    return dense.LastBlock(
        run=lambda x: _run_layers([layer], x),
        norm=layer.layer_norm1,
        qkv=lambda y: (attn.q_proj(y), attn.k_proj(y), attn.v_proj(y)),
        out=attn.out_proj,
        residual=lambda x, out: (lambda h: h + layer.mlp(layer.layer_norm2(h)))(x + out),
        num_heads=attn.num_heads, class_token=class_token)


def _run_layers(layers, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        out = layer(x, attention_mask=None)
        x = out[0] if isinstance(out, tuple) else out
    return x


class HFModel:
    """Wraps a transformers CLIPModel or SiglipModel, its processor and its family's text rules."""

    def __init__(self, model: torch.nn.Module, processor, family: str, name: str, sha256: str, source: str,
                 context_length: int):
        self.model = model.eval()
        self.processor = processor
        self.family = family
        self.name = name
        self.sha256 = sha256
        self.source = source
        self.architecture = f"{type(model).__name__}:{Path(source[len(HF_PREFIX):]).name}"
        self.context_length = context_length
        self.preprocessing = preprocessing_of(family, processor, context_length)
        transform = NaFlexTransform if family == "hf-siglip2" else ProcessorTransform
        self.preprocess = transform(processor.image_processor, self.preprocessing["image"])
        self.class_token = family == "hf-clip"
        self.precision = "fp32"  # hf: folders always run in float32 (models/loading.py PRECISIONS)

    @property
    def device(self) -> torch.device:
        """Return the device of the model's first parameter."""
        return next(self.model.parameters()).device

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Return the image processor's (mean, std) per channel."""
        image = self.processor.image_processor
        return tuple(float(v) for v in image.image_mean), tuple(float(v) for v in image.image_std)

    @property
    def logit_scale(self) -> dict[str, float]:
        """Return the trained logit scale (exp of the stored log) and, for SigLIP, the bias."""
        scales = {"scale": float(self.model.logit_scale.detach().exp())}
        if hasattr(self.model, "logit_bias"):
            scales["bias"] = float(self.model.logit_bias.detach())
        return scales

    def to(self, device: str | torch.device) -> "HFModel":
        """Move the weights to device; returns self."""
        self.model.to(device)
        return self

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Return token ids (N, L) padded to the context length, or (N, 2, L) ids and attention mask for families
        whose text tower takes the mask (CLIP)."""
        encoded = self.processor.tokenizer(list(texts), padding="max_length", truncation=True,
                                           max_length=self.context_length, return_tensors="pt")
        ids = encoded["input_ids"]
        if self.preprocessing["text"]["attention_mask"]:
            return torch.stack([ids, encoded["attention_mask"].to(ids.dtype)], dim=1)
        return ids

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Return image embeddings (N, D) as get_image_features gives them, L2-normalised if asked (NaFlex: images
        packed by NaFlexTransform)."""
        if self.family == "hf-siglip2":
            patches, mask, shapes = unpack_naflex(images)
            output = self.model.get_image_features(pixel_values=patches, pixel_attention_mask=mask,
                                                   spatial_shapes=shapes)
        else:
            output = self.model.get_image_features(pixel_values=images)
        features = _output_tensor(output)
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Return text embeddings (N, D) as get_text_features gives them, L2-normalised if asked."""
        if tokens.dim() == 3:
            output = self.model.get_text_features(input_ids=tokens[:, 0], attention_mask=tokens[:, 1])
        else:
            output = self.model.get_text_features(input_ids=tokens)
        features = _output_tensor(output)
        return F.normalize(features, dim=-1) if normalize else features

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Return the tower's input tokens; off the training grid, positions interpolated as vit.py does (the SCLIP
        family's scale factor), not by transformers' own interpolate_pos_encoding (size=)."""
        embeddings = self.model.vision_model.embeddings
        if self.family == "hf-siglip2":  # the tower resizes its positions to the window's grid itself
            grid = self._grid(images)
            shapes = torch.tensor([grid] * images.shape[0], device=images.device)
            return embeddings(patchify(images, embeddings.patch_size), shapes)
        positions = embeddings.position_embedding.weight
        side = round((positions.shape[0] - self.class_token) ** 0.5)
        grid = self._grid(images)
        if grid == (side, side):
            return embeddings(images)
        patches = embeddings.patch_embedding(images.to(embeddings.patch_embedding.weight.dtype))
        tokens = patches.flatten(2).transpose(1, 2)
        if self.class_token:
            tokens = torch.cat([embeddings.class_embedding.expand(tokens.shape[0], 1, -1), tokens], dim=1)
        return tokens + interpolate_pos_embed(positions, (side, side), grid, self.class_token, sclip_scale=True)[None]

    def _tokens_before_last_block(self, images: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        x = self._embed(images)
        if hasattr(vision, "pre_layrnorm"):
            x = vision.pre_layrnorm(x)
        return _run_layers(vision.encoder.layers[:-1], x)

    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        patch = self.model.vision_model.embeddings.patch_size
        return images.shape[-2] // patch, images.shape[-1] // patch

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Return last-layer patch tokens (B, gh, gw, D) after the final LayerNorm, before any projection."""
        vision, grid = self.model.vision_model, self._grid(images)
        x = _run_layers(vision.encoder.layers[-1:], self._tokens_before_last_block(images))
        tokens = vision.post_layernorm(x[:, 1:] if self.class_token else x)
        return tokens.reshape(images.shape[0], grid[0], grid[1], -1)

    def dense_features(self, images: torch.Tensor, variant: str = "vanilla") -> torch.Tensor:
        """Return patch embeddings (B, gh, gw, E) in the joint space of a dense variant (models/dense.py)."""
        return self.dense_from_trunk(self.dense_trunk(images), dense.check_variant(variant))

    def dense_trunk(self, images: torch.Tensor) -> dense.Trunk:
        """Return what every dense variant shares for images: the tokens after all layers but the last."""
        return dense.Trunk(self._tokens_before_last_block(images), self._grid(images))

    def dense_from_trunk(self, shared: dense.Trunk, variant: str = "vanilla") -> torch.Tensor:
        """Return dense_features of the images whose dense_trunk is shared, (B, gh, gw, E)."""
        dense.check_variant(variant)
        vision, grid = self.model.vision_model, shared.grid
        block = _hf_last_block(vision.encoder.layers[-1], self.class_token)
        x = dense.variant_last_block(block, shared.tokens, variant, grid)
        tokens = vision.post_layernorm(x[:, 1:] if self.class_token else x)
        return self._project(tokens).reshape(x.shape[0], grid[0], grid[1], -1)

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.family == "hf-clip":
            return self.model.visual_projection(tokens)
        head = self.model.vision_model.head  # SigLIP's attention pool, read per token (module docstring)
        dim = tokens.shape[-1]
        attention = head.attention
        values = F.linear(tokens, attention.in_proj_weight[2 * dim:], attention.in_proj_bias[2 * dim:])
        pooled = attention.out_proj(values)
        return pooled + head.mlp(head.layernorm(pooled))


def load_hf_model(folder: Path, device: str = "cpu", name: str | None = None) -> HFModel:
    """Return the HFModel of a `hf:` folder in eval mode on device, offline; UserErrors name what is wrong."""
    enforce_offline()
    checked = inspect_hf_folder(folder)
    processor = load_processor(folder)
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with quiet_root_logger():
            model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except Exception as exc:
        raise UserError(f"the weights of {folder} could not be loaded: {_first_line(exc)}") from None
    if checked.family == "hf-siglip" and not getattr(model.config.vision_config, "vision_use_head", True):
        raise UserError(f"{folder}: a SigLIP vision tower without its pooling head has no image embedding; "
                        f"expected vision_use_head true")
    context_length = context_length_of(model.config.to_dict())
    return HFModel(model.to(device), processor, checked.family, name or folder.resolve().name,
                   weights_digest(checked.weights), f"{HF_PREFIX}{folder}", context_length)
