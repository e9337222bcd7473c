"""Turn a model spec (zoo name, ARCH:CHECKPOINT, local-dir:FOLDER, hf:FOLDER, big_vision:ARCH:FILE.npz) into a
VLModel, offline."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import remembered_sha256
from silc_eval.core.offline import enforce_offline
from silc_eval.core.quiet import quiet_root_logger
from silc_eval.models.hf_model import HFModel, hf_folder, inspect_hf_folder, load_hf_model
from silc_eval.models.open_clip_model import OpenClipModel
from silc_eval.models.zoo import get_zoo_entry, list_zoo

LOCAL_DIR_PREFIX = "local-dir:"
BIG_VISION_PREFIX = "big_vision:"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model")
# fp16: the towers as OpenAI CLIP's reference code (and SCLIP, ClearCLIP, NACLIP after it) runs them on a GPU:
# convolution, linear and attention weights in float16, every LayerNorm computing in float32 (open_clip's
# precision="fp16", its LayerNormFp32 and convert_weights_to_lp).
PRECISIONS = ("fp32", "fp16")
WEIGHT_FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
                     "pytorch_model.bin", "model.pth")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed --model value: kind is 'zoo', 'local-dir', 'checkpoint', 'big_vision' or 'hf'."""

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
    if spec.startswith(BIG_VISION_PREFIX):
        return parse_big_vision_spec(spec)
    folder = hf_folder(spec)
    if folder is not None:
        inspect_hf_folder(folder)
        return ModelSpec("hf", folder.resolve().name or str(folder), path=folder)
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
    raise UserError(f"unknown model '{spec}'; expected a zoo name ({zoo}), ARCH:CHECKPOINT_FILE, "
                    f"local-dir:FOLDER, hf:FOLDER or big_vision:ARCH:FILE.npz")


def parse_big_vision_spec(spec: str) -> ModelSpec:
    """Return the ModelSpec of `big_vision:ARCH:FILE.npz`: an open_clip SigLIP-family architecture (timm image
    tower, Hugging Face tokenizer) and a big_vision .npz whose folder also holds that tokenizer's files."""
    arch, _, path = spec[len(BIG_VISION_PREFIX):].partition(":")
    import open_clip

    config = open_clip.get_model_config(arch) if arch else None
    if not config or not config.get("vision_cfg", {}).get("timm_model_name") or \
            not config.get("text_cfg", {}).get("hf_tokenizer_name"):
        known = [m for m in open_clip.list_models() if "SigLIP" in m and "SigLIP2" not in m][:4]
        raise UserError(f"'{arch}' in --model {spec} is not an open_clip SigLIP-family architecture (timm image tower, "
                        f"Hugging Face tokenizer); expected big_vision:ARCH:FILE.npz with ARCH e.g. {', '.join(known)}")
    path = Path(path).expanduser()
    if path.suffix != ".npz" or not path.is_file():
        raise UserError(f"big_vision checkpoint not found: {path} (expected big_vision:ARCH:FILE.npz)")
    if not any((path.parent / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"no tokenizer beside {path}: a big_vision .npz holds no tokenizer, so silc-eval reads "
                        f"{arch}'s ({config['text_cfg']['hf_tokenizer_name']}) from the checkpoint's folder; expected "
                        f"its files there (tokenizer_config.json and {' or '.join(TOKENIZER_FILES)})")
    return ModelSpec("big_vision", f"{arch}:{path.name}", architecture=arch, path=path)


def big_vision_tokenizer(parsed: ModelSpec):
    """Return the open_clip HFTokenizer of a big_vision spec's architecture, read from the checkpoint's folder with
    the architecture's own context length and cleaning (e.g. SigLIP's canonicalisation)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text_cfg = open_clip.get_model_config(parsed.architecture)["text_cfg"]
    return HFTokenizer(str(parsed.path.parent), context_length=text_cfg.get("context_length", 64),
                       **text_cfg.get("tokenizer_kwargs", {}))


def find_weights_file(folder: Path) -> Path:
    """Return the weights file of an open_clip local-dir folder, or raise UserError."""
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"no weights in {folder}: expected open_clip_config.json beside one of "
                    f"{', '.join(WEIGHT_FILE_NAMES)}")


def check_precision(precision: str, kind: str | None = None) -> str:
    """Return precision if it is one of PRECISIONS and the model kind can run it; otherwise raise a UserError."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; expected one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and kind == "hf":
        raise UserError(f"--precision {precision} runs open_clip towers as OpenAI CLIP's reference code does (float16 "
                        f"weights, LayerNorm in float32); hf: folders run in fp32 (expected an open_clip model, "
                        f"or --precision fp32)")
    return precision


def load_open_clip(spec: str | ModelSpec, device: str = "cpu", with_tokenizer: bool = True,
                   precision: str = "fp32") -> OpenClipParts:
    """Return the OpenClipParts of a model spec (a --model value or a parsed ModelSpec), on device, offline.

    The one place where open_clip models are created from files: zoo folders and local-dirs
    through open_clip's `local-dir:` loader, ARCH:CHECKPOINT through the architecture and the
    weights file. with_tokenizer=False skips the tokenizer (vision-only users); precision "fp16" builds the model
    with open_clip's precision="fp16" (PRECISIONS). A file open_clip
    cannot read is a one-line UserError: 'checkpoint WEIGHTS could not be loaded as ARCH: ...'; a state
    dict with a non-finite or non-float tensor is one too (check_weights, before open_clip casts it).
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
    check_weights(weights, architecture)
    try:
        with quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                         device=device, precision=precision)
            if not with_tokenizer:
                tokenizer = None
            elif parsed.kind == "big_vision":
                tokenizer = big_vision_tokenizer(parsed)
            else:
                tokenizer = open_clip.get_tokenizer(tokenizer_name)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/SafetensorError/... on bad files
        raise UserError(f"checkpoint {weights} could not be loaded as {architecture}: {load_failure(exc)}") from None
    return OpenClipParts(model.eval(), preprocess, tokenizer, weights, architecture)


# Buffers that legitimately hold integers in open_clip / timm / Hugging Face state dicts.
INTEGER_BUFFERS = ("num_batches_tracked", "position_ids", "token_type_ids")


def check_weights(weights: Path, architecture: str) -> None:
    """Raise a one-line UserError unless the weights file reads as open_clip reads it (open_clip.factory.
    load_state_dict: safetensors or torch.load with weights_only=True) into a state dict whose every entry is
    a tensor, floating (but for integer buffers such as num_batches_tracked) and finite.

    Checked before open_clip copies the tensors into the model, where int32 weights would be cast to float
    in silence and NaN weights would score at chance. big_vision .npz/.npy files are left to open_clip.
    """
    if weights.suffix in (".npz", ".npy"):
        return
    from open_clip.factory import load_state_dict

    try:
        with quiet_root_logger(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note that a TorchScript archive goes to torch.jit.load
            state_dict = load_state_dict(str(weights), device="cpu", weights_only=True)
    except StopIteration:  # open_clip looks at the first entry
        state_dict = {}
    except Exception as exc:
        raise UserError(f"checkpoint {weights} could not be loaded as {architecture}: {load_failure(exc)}") from None
    problem = state_dict_problem(state_dict)
    if problem:
        raise UserError(f"checkpoint {weights}: {problem}; expected finite float weights") from None


def state_dict_problem(state_dict: Any) -> str | None:
    """Return what is wrong with a loaded state dict, about its first bad entry (None when nothing is)."""
    import torch

    if not isinstance(state_dict, dict):
        return f"holds a {type(state_dict).__name__}, not a state dict of tensors"
    if not state_dict:
        return "holds no tensors"
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            return f"entry {key} is a {type(value).__name__}, not a tensor"
        if not value.is_floating_point():
            if str(key).endswith(INTEGER_BUFFERS):
                continue
            return f"tensor {key} is {str(value.dtype).replace('torch.', '')}"
        if value.numel() and not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "an infinite value"
            return f"tensor {key} holds {kind}"
    return None


def load_failure(exc: BaseException) -> str:
    """Return one line saying why open_clip/torch/safetensors could not load a checkpoint.

    A state-dict mismatch names its first missing and unexpected key and its first size mismatch (torch's
    message starts with a bare 'Error(s) in loading state_dict for CLIP:'); a file that is not weights-only
    names what it pickles, without torch's advice to load it with weights_only=False.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if text.startswith("Error(s) in loading state_dict"):
        parts = []
        for line in text.splitlines()[1:]:
            line = line.strip().rstrip(".").strip()
            keys = re.findall(r'"([^"]+)"', line)
            if line.startswith(("Missing key(s)", "Unexpected key(s)")) and keys:
                kind = "missing" if line.startswith("Missing") else "unexpected"
                more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
                parts.append(f"{kind} key {keys[0]}{more}")
            elif line.startswith("size mismatch for") and not any(p.startswith("size mismatch") for p in parts):
                shapes = re.match(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) "
                                  r"from checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)", line)
                parts.append(f"size mismatch for {shapes.group(1)}: {shapes.group(2)} in the checkpoint, "
                             f"{shapes.group(3)} in the model" if shapes else line)
        if parts:
            return "; ".join(parts)[:400]
    if "TorchScript archives" in text:
        return ("it is a TorchScript archive (the format of OpenAI's original .pt files), not a state dict; expected "
                "tensors only, e.g. saved with torch.save(model.state_dict(), ...) or safetensors")
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f"a {found.group(1)} object" if found else "Python objects"
        return (f"it is not a plain state dict (it pickles {what}); expected tensors only, e.g. saved with "
                f"torch.save(model.state_dict(), ...) or safetensors")
    first_line = (text.splitlines() or [""])[0].strip()
    first_line = first_line.split(". This is an internal")[0]  # torch's zip reader appends generic advice
    if not first_line or isinstance(exc, KeyError):  # torch.load of a file that is no checkpoint: KeyError('101')
        return f"not a PyTorch or safetensors checkpoint ({type(exc).__name__}: {first_line})"[:300]
    return first_line[:300]


def load_model(spec: str, device: str = "cpu", precision: str = "fp32") -> OpenClipModel | HFModel:
    """Return the model named by spec, in eval mode on device, never touching the network; precision "fp16" runs an
    open_clip model's towers in half precision as OpenAI CLIP's reference code does (PRECISIONS)."""
    enforce_offline()
    parsed = parse_model_spec(spec)
    check_precision(precision, parsed.kind)
    if parsed.kind == "hf":
        return load_hf_model(parsed.path, device, name=parsed.name)
    parts = load_open_clip(parsed, device, precision=precision)
    return OpenClipModel(parts.model, parts.tokenizer, parts.preprocess, name=parsed.name,
                         sha256=remembered_sha256(parts.weights), source=spec, architecture=parts.architecture,
                         family="big_vision" if parsed.kind == "big_vision" else "open_clip", precision=precision)
