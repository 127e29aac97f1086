"""Mixed precision: the precision setting reaches the model's forward (autocast) and the
exported weights stay float32. bf16-mixed runs on CPU, so the wiring is tested everywhere;
16-mixed (fp16 with a gradient scaler) needs a GPU."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from test_fit import write_config  # tests/training is on sys.path

from flairkit.config import load_run_config
from flairkit.training.run import fit


class ConvOutputDtype(L.Callback):
    """Records the dtype of the first convolution's output during training steps."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: D102
        conv = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda mod, inp, out: self.dtypes.add(out.dtype))


def _fit(root: Path, out: Path, precision: str, accelerator: str = "cpu"):
    path = write_config(
        out.parent / f"{out.name}.yaml", root, out, limit_train_batches=2,
        limit_val_batches=1, precision=precision, accelerator=accelerator,
    )  # fmt: skip
    probe = ConvOutputDtype()
    result = fit(load_run_config(path), callbacks=[probe])
    return result, probe


def _assert_float32_weights(path: Path) -> None:
    floats = {k: w for k, w in load_file(path).items() if w.is_floating_point()}
    assert floats and all(w.dtype == torch.float32 for w in floats.values())
    assert all(torch.isfinite(w).all() for w in floats.values())


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)]
)
def test_precision_reaches_the_forward_on_cpu(synthetic_root, tmp_path, precision, dtype) -> None:
    result, probe = _fit(synthetic_root, tmp_path / "run", precision)
    assert probe.dtypes == {dtype}
    _assert_float32_weights(result.model_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("precision", "dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)]
)
def test_mixed_precision_on_gpu(synthetic_root, tmp_path, precision, dtype) -> None:
    result, probe = _fit(synthetic_root, tmp_path / "run", precision, accelerator="gpu")
    assert probe.dtypes == {dtype}
    _assert_float32_weights(result.model_path)
