"""Turn a model spec (zoo name, ARCH:CHECKPOINT, local-dir:FOLDER) into a VLModel, offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def parse_model_spec(spec: str) -> ModelSpec:
    """Return the ModelSpec for a --model value; unknown names are a UserError listing valid ones."""
    if spec.startswith(LOCAL_DIR_PREFIX):
        folder = Path(spec[len(LOCAL_DIR_PREFIX):]).expanduser()
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


def load_model(spec: str, device: str = "cpu") -> OpenClipModel:
    """Return the model named by spec, in eval mode on device, never touching the network."""
    enforce_offline()
    parsed = parse_model_spec(spec)
    import open_clip

    if parsed.kind in ("zoo", "local-dir"):
        folder = parsed.path
        weights = find_weights_file(folder)
        model_name, pretrained, tokenizer_name = f"{LOCAL_DIR_PREFIX}{folder}", None, f"{LOCAL_DIR_PREFIX}{folder}"
        architecture = f"{LOCAL_DIR_PREFIX}{folder.name}"
    else:
        weights = parsed.path
        model_name, pretrained, tokenizer_name = parsed.architecture, str(weights), parsed.architecture
        architecture = parsed.architecture
    try:
        with quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                         device=device)
            tokenizer = open_clip.get_tokenizer(tokenizer_name)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/SafetensorError/... on bad files
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"checkpoint {weights} could not be loaded as {architecture}: {first_line}") from None
    return OpenClipModel(model, tokenizer, preprocess, name=parsed.name, sha256=file_sha256(weights),
                         source=spec, architecture=architecture)
