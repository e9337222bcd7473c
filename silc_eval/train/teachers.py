"""Frozen unimodal teachers for SF-CLIP-style masked knowledge distillation (benchmarks/PROTOCOLS.md section 8).

A vision teacher gives per-patch features, a text teacher per-word features; the student
regresses them at masked positions (heads and masking live elsewhere). Teachers are read
from local files only and never reach a hub.

Vision teacher specs (`load_vision_teacher`):
  local-dir:FOLDER          an open_clip local-dir (open_clip_config.json + weights); uses model.visual
  ARCH:CHECKPOINT           an open_clip architecture name and a local weights file
  timm:MODEL[?k=v&...]:FILE a timm ViT, created with pretrained=False, num_classes=0 and the integer
                            keyword arguments of the optional query (e.g. ?img_size=64&patch_size=8),
                            its state dict read from FILE (.safetensors, or .pth/.bin via torch.load)

Text teacher (`load_text_teacher`): a local Hugging Face folder (config.json, weights, a fast
tokenizer), e.g. sentence-transformers all-MiniLM-L6-v2.

Design choices:
  * Input images arrive normalised with the STUDENT's mean/std (default 0.5 per channel); the
    vision teacher undoes that and applies its own mean/std before its forward pass.
  * Teachers stay in eval mode even when a parent module calls .train(), and all their
    parameters have requires_grad False; every forward runs under torch.no_grad.
  * A word's feature is the mean of its sub-word pieces' final hidden states; the token
    embedding inheritance uses the mean of the pieces' INPUT embedding rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import remembered_sha256
from silc_eval.core.offline import enforce_offline
from silc_eval.train.tokenizer import SPECIALS

STUDENT_MEAN = (0.5, 0.5, 0.5)
STUDENT_STD = (0.5, 0.5, 0.5)
TIMM_PREFIX = "timm:"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SPECIAL_TOKENS = SPECIALS  # the word tokenizer's special tokens, never inherited
SPEC_FORMS = "local-dir:FOLDER, ARCH:CHECKPOINT or timm:MODEL_NAME[?key=int&...]:FILE"


# ----------------------------------------------------------------------------- shared helpers

def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Return module in eval mode with requires_grad False on every parameter."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


def _first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message (or its type name), at most 300 characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _triple(values, what: str) -> tuple[float, float, float]:
    """Return values as a 3-tuple of floats (one value is repeated for the three channels)."""
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise UserError(f"teacher {what} must have 1 or 3 values, got {values}")
    return tuple(values)


def _side(size) -> int:
    """Return the first side of an int or (H, W) image size."""
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# ----------------------------------------------------------------------------- vision teacher

class VisionTeacher(torch.nn.Module):
    """Frozen (eval, requires_grad False) image encoder that returns per-patch features.

    backbone_kind is "open_clip" (an open_clip VisionTransformer, run through
    silc_eval.models.vit.forward_any_size at any input size) or "timm" (a timm ViT whose
    forward_features output minus its num_prefix_tokens gives the patch tokens).
    """

    def __init__(self, backbone: torch.nn.Module, backbone_kind: str, dim: int, spec: str, sha256: str,
                 mean, std, image_size: int, patch_size: tuple[int, int],
                 student_mean=STUDENT_MEAN, student_std=STUDENT_STD):
        super().__init__()
        if backbone_kind not in ("open_clip", "timm"):
            raise ValueError(f"backbone_kind must be 'open_clip' or 'timm', got {backbone_kind!r}")
        self.backbone = _freeze(backbone)
        self.backbone_kind = backbone_kind
        self.dim, self.spec, self.sha256 = int(dim), spec, sha256
        self.mean, self.std = _triple(mean, "mean"), _triple(std, "std")
        self.student_mean, self.student_std = _triple(student_mean, "student mean"), _triple(student_std, "student std")
        self.image_size, self.patch_size = int(image_size), tuple(int(p) for p in patch_size)
        # x_teacher = x_student * scale + shift (per channel), derived from pixels = x_student * s_std + s_mean.
        scale = torch.tensor(self.student_std) / torch.tensor(self.std)
        shift = (torch.tensor(self.student_mean) - torch.tensor(self.mean)) / torch.tensor(self.std)
        self.register_buffer("_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "VisionTeacher":
        """Return self; the teacher stays in eval mode whatever mode a parent module asks for."""
        super().train(False)
        return self

    def renormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Return images normalised with the student's mean/std re-normalised to the teacher's mean/std."""
        scale = self._scale.to(images.device, images.dtype)
        shift = self._shift.to(images.device, images.dtype)
        return images * scale + shift

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Return the teacher's patch grid (gh, gw) for an input of height x width."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Return the final-layer patch tokens (B, gh*gw, D) of already re-normalised images."""
        if self.backbone_kind == "open_clip":
            from silc_eval.models.vit import forward_any_size

            return forward_any_size(self.backbone, images)[1]
        tokens = self.backbone.forward_features(images)
        return tokens[:, int(getattr(self.backbone, "num_prefix_tokens", 0)):]

    def patch_features(self, images: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Return (B, gh*gw, D) float32 patch features of images normalised with the student's mean/std.

        The images are re-normalised to the teacher's mean/std, the teacher runs without
        gradients, and its final-layer patch tokens (after the final norm, prefix tokens
        dropped) are returned row-major over the grid. If grid is given and differs from the
        teacher's own grid the feature map is resized bilinearly (align_corners=False) to it.
        The result is on the images' device.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        own_grid = self.grid_for(images.shape[-2], images.shape[-1])
        param = next(self.backbone.parameters())
        with torch.no_grad():
            x = self.renormalise(images.to(param.device, torch.float32)).to(param.dtype)
            tokens = self._tokens(x).float()
            if tokens.shape[1] != own_grid[0] * own_grid[1]:
                raise RuntimeError(f"teacher gave {tokens.shape[1]} patch tokens, expected {own_grid[0]}x{own_grid[1]}")
            if grid is not None and tuple(grid) != own_grid:
                tokens = _resize_tokens(tokens, own_grid, tuple(grid))
        return tokens.to(images.device)

    def forward(self, images: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Return patch_features(images, grid)."""
        return self.patch_features(images, grid)


def _resize_tokens(tokens: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Return (B, N', D) tokens bilinearly resized (align_corners=False) from grid to new_grid."""
    batch, _, dim = tokens.shape
    fmap = tokens.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])
    fmap = F.interpolate(fmap, size=tuple(int(g) for g in new_grid), mode="bilinear", align_corners=False)
    return fmap.flatten(2).transpose(1, 2).contiguous()


def _check_open_clip_vit(visual: torch.nn.Module, spec: str) -> None:
    """Raise UserError unless visual is an open_clip VisionTransformer that forward_any_size can run."""
    needed = ("conv1", "class_embedding", "positional_embedding", "transformer", "ln_pre", "_pool")
    if not all(hasattr(visual, name) for name in needed):
        raise UserError(f"vision teacher {spec}: expected an open_clip VisionTransformer tower, "
                        f"got {type(visual).__name__}")


def _open_clip_teacher(model: torch.nn.Module, spec: str, weights: Path, device, student_mean,
                       student_std) -> VisionTeacher:
    """Return a VisionTeacher over the visual tower of an open_clip model built from weights."""
    visual = model.visual
    _check_open_clip_vit(visual, spec)
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean", getattr(visual, "image_mean", None))
    std = cfg.get("std", getattr(visual, "image_std", None))
    if mean is None or std is None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean, std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    teacher = VisionTeacher(visual, "open_clip", dim=visual.conv1.out_channels, spec=spec,
                            sha256=remembered_sha256(weights), mean=mean, std=std, image_size=_side(visual.image_size),
                            patch_size=visual.conv1.kernel_size, student_mean=student_mean, student_std=student_std)
    return teacher.to(device)


def _open_clip_vision_teacher(spec: str, device, student_mean, student_std) -> VisionTeacher:
    """Return the VisionTeacher of a local-dir:FOLDER or ARCH:CHECKPOINT spec (parsed and loaded as
    `silc-eval run --model` parses and loads it, by silc_eval.models.loading)."""
    from silc_eval.models.loading import load_open_clip, local_dir_folder, parse_model_spec

    is_local_dir = local_dir_folder(spec) is not None
    try:
        parsed = parse_model_spec(spec)
    except UserError as exc:
        expected = "" if is_local_dir else f"; expected a spec of the form {SPEC_FORMS}"
        raise UserError(f"vision teacher {spec}: {exc}{expected}") from None
    if parsed.kind not in ("local-dir", "checkpoint"):
        raise UserError(f"vision teacher {spec}: expected a spec of the form {SPEC_FORMS}")
    try:
        parts = load_open_clip(parsed, device="cpu", with_tokenizer=False)
    except UserError as exc:
        raise UserError(f"vision teacher {spec}: {exc}") from None
    return _open_clip_teacher(parts.model, spec, parts.weights, device, student_mean, student_std)


def parse_timm_spec(spec: str) -> tuple[str, dict[str, int], Path]:
    """Return (model name, create_model kwargs, weights path) of a 'timm:MODEL[?k=v&...]:FILE' spec."""
    body = spec[len(TIMM_PREFIX):] if spec.startswith(TIMM_PREFIX) else spec
    name_part, sep, path = body.partition(":")
    if not sep or not name_part or not path:
        raise UserError(f"vision teacher {spec}: expected timm:MODEL_NAME[?key=int&...]:FILE")
    name, _, query = name_part.partition("?")
    kwargs: dict[str, int] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        try:
            kwargs[key] = int(value)
        except ValueError:
            raise UserError(f"vision teacher {spec}: bad option '{item}'; expected key=integer pairs joined by &") from None
        if not eq or not key:
            raise UserError(f"vision teacher {spec}: bad option '{item}'; expected key=integer pairs joined by &")
    return name, kwargs, Path(path).expanduser()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Return the tensor state dict stored in a .safetensors file or a torch .pth/.bin/.pt file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict, got {type(state).__name__}")
    return state


def _load_timm_weights(model: torch.nn.Module, weights: Path, spec: str) -> None:
    """Load weights into model strictly (ignoring classifier-head keys the headless model lacks)."""
    try:
        state = read_state_dict(weights)
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own or not k.startswith("head.")}
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise UserError(f"vision teacher {spec}: weights {weights} do not fit the timm model: {_first_line(exc)}") from None


def _timm_teacher(spec: str, device, student_mean, student_std) -> VisionTeacher:
    """Return the VisionTeacher of a timm:MODEL[?k=v]:FILE spec."""
    import timm

    name, kwargs, weights = parse_timm_spec(spec)
    if not timm.is_model(name):
        raise UserError(f"vision teacher {spec}: unknown timm model '{name}'; expected a name in timm.list_models()")
    if not weights.is_file():
        raise UserError(f"vision teacher {spec}: weights file not found: {weights} (expected timm:MODEL_NAME:FILE)")
    kwargs.setdefault("dynamic_img_size", True)  # any input size; identical output at the native size
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception as exc:
        raise UserError(f"vision teacher {spec}: timm.create_model('{name}', {kwargs}) failed: {_first_line(exc)}") from None
    if not hasattr(model, "patch_embed") or not hasattr(model, "forward_features"):
        raise UserError(f"vision teacher {spec}: expected a timm ViT (with patch_embed), got {type(model).__name__}")
    _load_timm_weights(model, weights, spec)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    teacher = VisionTeacher(model, "timm", dim=model.num_features, spec=spec, sha256=remembered_sha256(weights),
                            mean=cfg.get("mean", (0.485, 0.456, 0.406)), std=cfg.get("std", (0.229, 0.224, 0.225)),
                            image_size=_side(model.patch_embed.img_size), patch_size=model.patch_embed.patch_size,
                            student_mean=student_mean, student_std=student_std)
    return teacher.to(device)


def load_vision_teacher(spec: str, device: str | torch.device = "cpu", student_mean=STUDENT_MEAN,
                        student_std=STUDENT_STD) -> VisionTeacher:
    """Return the frozen VisionTeacher named by spec (local-dir:FOLDER, ARCH:CHECKPOINT or timm:MODEL:FILE) on device.

    student_mean/student_std are the normalisation of the images that patch_features will receive.
    Every problem with the spec or its files is a one-line UserError.
    """
    enforce_offline()
    if spec.startswith(TIMM_PREFIX):
        return _timm_teacher(spec, device, student_mean, student_std)
    if ":" in spec:  # local-dir:FOLDER or ARCH:CHECKPOINT, told apart by silc_eval.models.loading
        return _open_clip_vision_teacher(spec, device, student_mean, student_std)
    raise UserError(f"vision teacher '{spec}': expected {SPEC_FORMS}")


# ----------------------------------------------------------------------------- text teacher

def hf_weights_file(folder: Path) -> Path:
    """Return the weights file of a Hugging Face model folder, or raise UserError."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"text teacher {folder}: no weights; expected {' or '.join(HF_WEIGHT_FILES)} beside config.json")


class TextTeacher(torch.nn.Module):
    """Frozen Hugging Face encoder (e.g. all-MiniLM-L6-v2) giving per-word features."""

    def __init__(self, model: torch.nn.Module, tokenizer, spec: str, sha256: str):
        super().__init__()
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"text teacher {spec}: expected a fast tokenizer (tokenizer.json) for word_ids()")
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.dim = int(model.config.hidden_size)
        self.spec, self.sha256 = spec, sha256
        self.eval()

    def train(self, mode: bool = True) -> "TextTeacher":
        """Return self; the teacher stays in eval mode whatever mode a parent module asks for."""
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        """Return the device of the encoder's parameters."""
        return next(self.model.parameters()).device

    def _encode(self, word_lists: list[list[str]]):
        """Return (last_hidden_state (B, T, D) float32, the tokenizer's BatchEncoding) for pre-split words."""
        batch = self.tokenizer(word_lists, is_split_into_words=True, padding=True, truncation=True,
                               return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state.float()
        return hidden, batch

    def word_features(self, word_lists: Sequence[Sequence[str]], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (features (B, max_words, D) float32, valid (B, max_words) bool) for lists of words.

        A word's feature is the mean of its sub-word pieces' last hidden states, the words
        encoded together in context (is_split_into_words=True). Words beyond max_words are
        dropped before encoding; missing positions (and words with no pieces, or cut by the
        encoder's length limit) are zero with valid False. Outputs are on the teacher's device.
        """
        lists = [[str(w) for w in words][:max_words] for words in word_lists]
        if not lists or max_words <= 0:
            width = max(max_words, 0)
            return (torch.zeros(len(lists), width, self.dim, device=self.device),
                    torch.zeros(len(lists), width, dtype=torch.bool, device=self.device))
        hidden, batch = self._encode(lists)
        assign = _piece_assignment(batch, len(lists), max_words, hidden.shape[1]).to(hidden.device)
        counts = assign.sum(-1, keepdim=True)
        features = torch.bmm(assign, hidden) / counts.clamp(min=1)
        return features, counts.squeeze(-1) > 0

    def word_input_embeddings(self, words: Sequence[str]) -> torch.Tensor:
        """Return (len(words), D) float32: per word, the mean of the input-embedding rows of its pieces.

        Pieces come from tokenising the word alone without special tokens; a word with no
        pieces gets a zero row.
        """
        table = self.model.get_input_embeddings().weight.detach().float()
        ids = self.tokenizer([str(w) for w in words], add_special_tokens=False)["input_ids"]
        rows = [table[torch.tensor(p, device=table.device)].mean(0) if p else table.new_zeros(table.shape[1])
                for p in ids]
        return torch.stack(rows) if rows else table.new_zeros(0, table.shape[1])

    def forward(self, word_lists: Sequence[Sequence[str]], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return word_features(word_lists, max_words)."""
        return self.word_features(word_lists, max_words)


def _piece_assignment(batch, n_lists: int, max_words: int, length: int) -> torch.Tensor:
    """Return (B, max_words, T) float: 1 where token t is a piece of word w of list b (from word_ids())."""
    assign = torch.zeros(n_lists, max_words, length)
    for row in range(n_lists):
        for position, word in enumerate(batch.word_ids(row)):
            if word is not None and word < max_words:
                assign[row, word, position] = 1.0
    return assign


def load_text_teacher(folder: str | Path, device: str | torch.device = "cpu") -> TextTeacher:
    """Return the frozen TextTeacher of a local Hugging Face folder (AutoModel + fast AutoTokenizer) on device."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"text teacher {folder}: folder not found; expected a Hugging Face model folder with config.json")
    if not (folder / "config.json").is_file():
        raise UserError(f"text teacher {folder}: no config.json; expected a Hugging Face model folder "
                        f"(config.json, weights, tokenizer)")
    weights = hf_weights_file(folder)
    enforce_offline()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load in every training log otherwise
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"text teacher {folder}: could not be loaded with transformers: {_first_line(exc)}") from None
    return TextTeacher(model.to(device), tokenizer, spec=str(folder), sha256=remembered_sha256(weights))


# ----------------------------------------------------------------------------- embedding inheritance

def _pca_project(x: torch.Tensor, width: int) -> tuple[torch.Tensor, float, int]:
    """Return (x centred and projected on its top principal directions, zero-padded to (n, width),
    the fraction of variance those directions explain, the number of directions used)."""
    centred = x - x.mean(0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(width, vh.shape[0])
    projected = torch.zeros(x.shape[0], width, dtype=x.dtype)
    projected[:, :k] = centred @ vh[:k].T
    total = float((singular ** 2).sum())
    explained = float((singular[:k] ** 2).sum()) / total if total > 0 else 0.0
    return projected, explained, k


def inherit_token_embedding(embedding: torch.nn.Embedding, vocab: dict[str, int], teacher: TextTeacher,
                            specials: Sequence[str] = SPECIAL_TOKENS) -> dict:
    """Initialise the student's word rows from the teacher's word input embeddings; return a report dict.

    Every vocabulary token except the specials gets the teacher's word input embedding
    (TextTeacher.word_input_embeddings), centred over these words and projected on their
    top principal directions (SVD). When the student width exceeds the number of available
    directions (min(#words, teacher width)) the remaining columns are zero. All rows are then
    scaled by one factor so that their mean L2 norm equals the mean norm the same rows had
    before (so the init scale is kept; specials are untouched). Modifies embedding in place.
    Report keys: n_words, student_dim, teacher_dim, n_components, explained_variance, scale.
    """
    words = sorted((w for w in vocab if w not in set(specials)), key=vocab.__getitem__)
    ids = torch.tensor([vocab[w] for w in words], dtype=torch.long)
    weight = embedding.weight
    if len(ids) and int(ids.max()) >= weight.shape[0]:
        raise ValueError(f"vocabulary id {int(ids.max())} does not fit an embedding of {weight.shape[0]} rows")
    report = {"n_words": len(words), "student_dim": int(weight.shape[1]), "teacher_dim": teacher.dim,
              "n_components": 0, "explained_variance": 0.0, "scale": 0.0}
    if len(words) < 2:
        return report
    teacher_rows = teacher.word_input_embeddings(words).cpu()
    projected, explained, k = _pca_project(teacher_rows, weight.shape[1])
    with torch.no_grad():
        target = weight[ids.to(weight.device)].float().norm(dim=1).mean().cpu()
        current = projected.norm(dim=1).mean()
        scale = target / current if current > 0 else torch.tensor(0.0)
        weight[ids.to(weight.device)] = (projected * scale).to(weight.device, weight.dtype)
    report.update(n_components=k, explained_variance=explained, scale=float(scale))
    return report
