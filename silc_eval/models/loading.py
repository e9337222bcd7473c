"""Turn a model spec (zoo name, ARCH:CHECKPOINT, local-dir:FOLDER) into a VLModel, offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from silc_eval.core.fingerprint import file_sha256
from silc_eval.core.errors import UserError
from silc_eval.models.open_clip_model import OpenClipModel
from silc_eval.models.zoo import get_zoo_entry, list_zoo
from silc_eval.core.offline import enforce_offline
from silc_eval.core.quiet import quiet_root_logger

LOCAL_DIR_PREFIX = "local-dir:"
WEIGHT_FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
                     "pytorch_model.bin", "model.pth")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed --model value: kind is 'zoo', 'local-dir' or 'checkpoint'."""

    kind: str
    name: str
    architecture: str | None = None
    path: Path | None = None


class OpenClipParts(NamedTuple):
    """What load_open_clip returns: the open_clip model (eval mode), its eval transform, its tokenizer
    (None when not asked for), the weights file it was read from, and the architecture label records carry."""

    model: Any
    preprocess: Callable
    tokenizer: Callable | None
    weights: Path
    architecture: str


def local_dir_folder(spec: str) -> Path | None:
    """Return the folder of a `local-dir:FOLDER` spec (not checked), or None for any other spec."""
    return Path(spec[len(LOCAL_DIR_PREFIX):]).expanduser() if spec.startswith(LOCAL_DIR_PREFIX) else None


def local_dir_spec(folder: Path | str) -> str:
    """Return the `local-dir:FOLDER` spec of a folder (the inverse of local_dir_folder)."""
    return f"{LOCAL_DIR_PREFIX}{folder}"


def parse_model_spec(spec: str) -> ModelSpec:
    """Return the ModelSpec for a --model value; unknown names are a UserError listing valid ones."""
    folder = local_dir_folder(spec)
    if folder is not None:
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"{folder} is not an open_clip local-dir: expected {folder / 'open_clip_config.json'} "
                            f"and a weights file")
        return ModelSpec("local-dir", folder.resolve().name or str(folder), path=folder)
    entry = get_zoo_entry(spec)
    if entry is not None:
        return ModelSpec("zoo", entry.name, path=entry.folder)
    if ":" in spec:
        arch, _, path = spec.partition(":")
        import open_clip

        if arch not in open_clip.list_models():
            raise UserError(f"unknown open_clip architecture '{arch}' in --model {spec}; "
                            f"expected one of open_clip.list_models(), e.g. ViT-B-32, ViT-B-16")
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"checkpoint file not found: {path} (expected ARCH:PATH_TO_WEIGHTS)")
        return ModelSpec("checkpoint", f"{arch}:{path.name}", architecture=arch, path=path)
    zoo = ", ".join(e.name for e in list_zoo()) or "(zoo is empty)"
    raise UserError(f"unknown model '{spec}'; expected a zoo name ({zoo}), ARCH:CHECKPOINT_FILE "
                    f"or local-dir:FOLDER")


def find_weights_file(folder: Path) -> Path:
    """Return the weights file of an open_clip local-dir folder, or raise UserError."""
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"no weights in {folder}: expected open_clip_config.json beside one of "
                    f"{', '.join(WEIGHT_FILE_NAMES)}")


def load_open_clip(spec: str | ModelSpec, device: str = "cpu", with_tokenizer: bool = True) -> OpenClipParts:
    """Return the OpenClipParts of a model spec (a --model value or a parsed ModelSpec), on device, offline.

    The one place where open_clip models are created from files: zoo folders and local-dirs
    through open_clip's `local-dir:` loader, ARCH:CHECKPOINT through the architecture and the
    weights file. with_tokenizer=False skips the tokenizer (vision-only users). A file open_clip
    cannot read is a one-line UserError: 'checkpoint WEIGHTS could not be loaded as ARCH: ...'.
    """
    enforce_offline()
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    import open_clip

    if parsed.kind in ("zoo", "local-dir"):
        folder = parsed.path
        weights = find_weights_file(folder)
        model_name = tokenizer_name = local_dir_spec(folder)
        pretrained = None
        architecture = local_dir_spec(folder.name)
    else:
        weights = parsed.path
        model_name, pretrained, tokenizer_name = parsed.architecture, str(weights), parsed.architecture
        architecture = parsed.architecture
    try:
        with quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                         device=device)
            tokenizer = open_clip.get_tokenizer(tokenizer_name) if with_tokenizer else None
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/SafetensorError/... on bad files
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"checkpoint {weights} could not be loaded as {architecture}: {first_line}") from None
    return OpenClipParts(model.eval(), preprocess, tokenizer, weights, architecture)


def load_model(spec: str, device: str = "cpu") -> OpenClipModel:
    """Return the model named by spec, in eval mode on device, never touching the network."""
    enforce_offline()
    parsed = parse_model_spec(spec)
    parts = load_open_clip(parsed, device)
    return OpenClipModel(parts.model, parts.tokenizer, parts.preprocess, name=parsed.name,
                         sha256=file_sha256(parts.weights), source=spec, architecture=parts.architecture)
