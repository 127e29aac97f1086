"""Damaged, forged and unsafe weights files: one WeightsError line naming the file, never code.

Every bad file is derived from one good tiny model file (a time-series-only U-TAE of 8k
parameters), written once per module as ``.safetensors`` (``save_model``) and as a ``.ckpt`` of
the layout ``flairkit fit`` writes. Each is loaded through ``load_model`` (what ``flairkit test
--weights`` and ``flairkit map model=`` use), and a few through the CLI in-process.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from flairkit.checkpoint import METADATA_KEY, load_model, read_recipe, save_model
from flairkit.cli import main
from flairkit.config import ModelConfig, UTAEConfig, preprocess_config_for, to_dict
from flairkit.modalities import Modality, Task
from flairkit.models.build import build_model
from flairkit.models.official import WeightsError, load_published_weights, read_weights_file

S2 = Modality.SENTINEL2_TS
FIRST = "temporal.SENTINEL2_TS.in_conv.0.conv.weight"  # (8, 10, 3, 3)
UNSAFE_ADVICE = "weights_only=False"


def tiny_config() -> ModelConfig:
    utae = UTAEConfig(
        encoder_widths=(8, 8), decoder_widths=(8, 8), out_conv=(8, 19), n_head=2, d_model=8, d_k=2
    )
    return ModelConfig(
        inputs={S2: 10}, img_sizes={S2: 5}, tasks={Task.COSIA: 19}, arch="resnet18-unet",
        utae=utae, out_px=10,
    )  # fmt: skip


class Good:
    """The good files and what they hold."""

    def __init__(self, root: Path) -> None:
        torch.manual_seed(0)
        cfg = tiny_config()
        model = build_model(cfg).eval()
        preprocess = preprocess_config_for([S2])
        self.root = root
        self.safetensors = save_model(root / "good.safetensors", model, cfg, preprocess)
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.recipe = {"model": to_dict(cfg), "preprocess": to_dict(preprocess)}
        self.ckpt = root / "good.ckpt"
        torch.save(self.checkpoint(), self.ckpt)

    def checkpoint(self, state: dict | None = None) -> dict:
        """A dict in the layout of the Lightning checkpoints of ``flairkit fit``."""
        state = self.state if state is None else state
        return {
            "epoch": 0,
            "state_dict": {
                **{f"model.{k}": v for k, v in state.items()},
                "matrices.val.COSIA.matrix": torch.zeros(19, 19),  # not the model's: skipped
            },
            "hyper_parameters": dict(self.recipe),
        }

    def safetensors_with(self, path: Path, state: dict, recipe: object = None) -> Path:
        """A .safetensors of ``state`` with the good recipe (or ``recipe`` as the metadata)."""
        text = json.dumps(self.recipe) if recipe is None else recipe
        metadata = None if text is False else {METADATA_KEY: text}
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
        return path


@pytest.fixture(scope="module")
def good(module_tmp: Path) -> Good:
    return Good(module_tmp)


# -- how each bad file is made from the good ones ---------------------------------------------


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _header(good: Good) -> tuple[dict, bytes]:
    data = good.safetensors.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _with_header(path: Path, header: dict | bytes, body: bytes) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return _bytes(path, len(text).to_bytes(8, "little") + text + body)


def _offsets_past_end(good: Good, path: Path) -> Path:
    header, body = _header(good)
    header[FIRST]["data_offsets"] = [len(body) - 8, len(body) + 2872]  # same size, past the end
    return _with_header(path, header, body)


def _shape_not_its_bytes(good: Good, path: Path) -> Path:
    header, body = _header(good)
    header[FIRST]["shape"] = [8, 10, 3, 4]
    return _with_header(path, header, body)


def _bad_recipe(good: Good, path: Path, edit: Callable[[dict], None]) -> Path:
    recipe = json.loads(json.dumps(good.recipe))
    edit(recipe)
    return good.safetensors_with(path, good.state, json.dumps(recipe))


def _renamed(good: Good, path: Path, suffix: str) -> Path:
    state = dict(good.state)
    for key in list(state)[:3]:
        state[f"{key}_renamed"] = state.pop(key)
    if suffix == ".ckpt":
        torch.save(good.checkpoint(state), path)
        return path
    return good.safetensors_with(path, state)


def _reshaped(good: Good, path: Path, suffix: str) -> Path:
    state = {**good.state, FIRST: torch.zeros(8, 11, 3, 3)}
    if suffix == ".ckpt":
        torch.save(good.checkpoint(state), path)
        return path
    return good.safetensors_with(path, state)


def _non_finite(good: Good, path: Path, suffix: str) -> Path:
    """NaN in one tensor and inf in a later one (in the file's order)."""
    keys = [k for k, v in good.state.items() if v.is_floating_point()]
    state = dict(good.state)
    state[keys[3]] = state[keys[3]].clone().fill_(float("nan"))
    state[keys[5]] = state[keys[5]].clone().fill_(float("inf"))
    if suffix == ".ckpt":
        torch.save(good.checkpoint(state), path)
        return path
    return good.safetensors_with(path, state)


class Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(good: Good, path: Path, legacy: bool) -> Path:
    evil = Evil(path.with_suffix(".marker"))
    if legacy:  # a plain pickle, not torch's zip layout (torch.load reads both)
        path.write_bytes(pickle.dumps({"evil": evil}, protocol=2))
        return path
    checkpoint = good.checkpoint()
    checkpoint["hyper_parameters"]["evil"] = evil
    torch.save(checkpoint, path)
    return path


def _without(good: Good, path: Path, key: str) -> Path:
    checkpoint = good.checkpoint()
    del checkpoint[key]
    torch.save(checkpoint, path)
    return path


def _ckpt_with(path: Path, content: object) -> Path:
    torch.save(content, path)
    return path


def _non_tensor_entry(good: Good, path: Path) -> Path:
    checkpoint = good.checkpoint()
    checkpoint["state_dict"][f"model.{FIRST}"] = [1.0, 2.0]
    torch.save(checkpoint, path)
    return path


def _nan_key() -> str:
    return "temporal.SENTINEL2_TS.in_conv.0.norm.bias"  # keys[3]: filled by _non_finite


RANDOM = random.Random(0).randbytes(4096)

#: name -> (suffix, how to make it from the good files, a regex the message must match after
#: "<path>: ").
BAD: dict[str, tuple[str, Callable[[Good, Path], Path], str]] = {
    # safetensors: damaged or forged containers
    "truncated": (
        ".safetensors",
        lambda g, p: _bytes(p, g.safetensors.read_bytes()[:-1000]),
        r"tensor '.+': ends at byte \d+ of the data, which has \d+ \(truncated file\?\)",
    ),
    "truncated_in_header": (
        ".safetensors",
        lambda g, p: _bytes(p, g.safetensors.read_bytes()[:200]),
        r"not a safetensors file, or a truncated one: its header length says \d+ bytes, "
        r"the file has 192 after it",
    ),
    "header_length_2_40": (
        ".safetensors",
        lambda g, p: _bytes(p, (2**40).to_bytes(8, "little") + g.safetensors.read_bytes()[8:]),
        r"header length says 1099511627776 bytes",
    ),
    "header_a_list": (
        ".safetensors",
        lambda g, p: _with_header(p, b"[1, 2, 3]", b""),
        r"its header is a JSON list, not an object",
    ),
    "header_not_json": (
        ".safetensors",
        lambda g, p: _with_header(p, b"{'dtype': F32", b"\0" * 64),
        r"its header is not JSON",
    ),
    "offsets_past_end": (".safetensors", _offsets_past_end, rf"tensor '{FIRST}': ends at byte"),
    "shape_not_its_bytes": (
        ".safetensors",
        _shape_not_its_bytes,
        rf"tensor '{FIRST}': F32 \(8, 10, 3, 4\) needs 3840 bytes, its offsets give 2880",
    ),
    "random_bytes": (".safetensors", lambda g, p: _bytes(p, RANDOM), r"not a safetensors file"),
    "empty": (".safetensors", lambda g, p: _bytes(p, b""), r"not a safetensors file \(empty"),
    # safetensors: the recipe
    "no_recipe": (
        ".safetensors",
        lambda g, p: g.safetensors_with(p, g.state, False),
        r"no flairkit recipe in the file's metadata",
    ),
    "recipe_not_json": (
        ".safetensors",
        lambda g, p: g.safetensors_with(p, g.state, '{"model": {'),
        r"the flairkit recipe in its metadata is not JSON",
    ),
    "recipe_a_list": (
        ".safetensors",
        lambda g, p: g.safetensors_with(p, g.state, "[1]"),
        r"the flairkit recipe is a list, not a dict",
    ),
    "recipe_without_preprocess": (
        ".safetensors",
        lambda g, p: _bad_recipe(g, p, lambda r: r.pop("preprocess")),
        r"the flairkit recipe has no preprocess section",
    ),
    "recipe_bad_type": (
        ".safetensors",
        lambda g, p: _bad_recipe(g, p, lambda r: r["model"]["utae"].update(n_head="two")),
        r"bad recipe: model\.utae\.n_head: expected int",
    ),
    "recipe_unknown_key": (
        ".safetensors",
        lambda g, p: _bad_recipe(g, p, lambda r: r["model"].update(widht=3)),
        r"bad recipe: model\.widht: unknown key",
    ),
    "recipe_not_buildable": (
        ".safetensors",
        lambda g, p: _bad_recipe(g, p, lambda r: r["model"]["utae"].update(n_head=3)),
        r"bad recipe: its model cannot be built",
    ),
    # safetensors: tensors that do not fit
    "renamed_tensors": (
        ".safetensors",
        lambda g, p: _renamed(g, p, ".safetensors"),
        rf"^3 tensors missing \(e\.g\. {FIRST}, .*\), 3 unexpected \(e\.g\. .*_renamed, .*\); "
        "the tensors do not fit the model its recipe describes$",
    ),
    "reshaped_tensor": (
        ".safetensors",
        lambda g, p: _reshaped(g, p, ".safetensors"),
        rf"^1 of wrong shape \({FIRST}: file \(8, 11, 3, 3\), model \(8, 10, 3, 3\)\); ",
    ),
    "non_finite": (
        ".safetensors",
        lambda g, p: _non_finite(g, p, ".safetensors"),
        rf"tensor {_nan_key()} holds 8 NaN and 0 infinite values \(of 8\); "
        "flairkit does not use non-finite weights",
    ),
    # checkpoints (torch pickles)
    "unsafe_pickle": (
        ".ckpt",
        lambda g, p: _evil(g, p, legacy=False),
        r"refused: unpickling it would call or build posix\.system",
    ),
    "unsafe_legacy_pickle": (
        ".ckpt",
        lambda g, p: _evil(g, p, legacy=True),
        r"cannot read weights: refused: unpickling it would call or build posix\.system",
    ),
    "ckpt_random_bytes": (".ckpt", lambda g, p: _bytes(p, RANDOM), r"cannot read weights"),
    "ckpt_empty": (".ckpt", lambda g, p: _bytes(p, b""), r"cannot read weights: empty"),
    "ckpt_truncated": (
        ".ckpt",
        lambda g, p: _bytes(p, g.ckpt.read_bytes()[:-300]),
        r"cannot read weights: (damaged, truncated|not a readable PyTorch checkpoint)",
    ),
    "ckpt_without_state_dict": (
        ".ckpt",
        lambda g, p: _without(g, p, "state_dict"),
        r"not a checkpoint written by flairkit fit \(no state_dict\)",
    ),
    "ckpt_without_hyper_parameters": (
        ".ckpt",
        lambda g, p: _without(g, p, "hyper_parameters"),
        r"not a checkpoint written by flairkit fit \(no hyper_parameters\)",
    ),
    "ckpt_a_list": (
        ".ckpt",
        lambda g, p: _ckpt_with(p, [1, 2]),
        r"not a checkpoint written by flairkit fit \(it holds a list, not a dict\)",
    ),
    "ckpt_non_tensor_entry": (
        ".ckpt",
        _non_tensor_entry,
        rf"state_dict entry model\.{FIRST} is a list",
    ),
    "ckpt_renamed_tensors": (
        ".ckpt",
        lambda g, p: _renamed(g, p, ".ckpt"),
        r"^3 tensors missing \(e\.g\. .*\), 3 unexpected \(e\.g\. .*_renamed",
    ),
    "ckpt_reshaped_tensor": (
        ".ckpt",
        lambda g, p: _reshaped(g, p, ".ckpt"),
        rf"^1 of wrong shape \({FIRST}: file \(8, 11, 3, 3\), model \(8, 10, 3, 3\)\)",
    ),
    "ckpt_non_finite": (
        ".ckpt",
        lambda g, p: _non_finite(g, p, ".ckpt"),
        rf"tensor {_nan_key()} holds 8 NaN",
    ),
}


def make_bad(good: Good, name: str, folder: Path) -> tuple[Path, str]:
    suffix, make, pattern = BAD[name]
    return make(good, folder / f"{name}{suffix}"), pattern


def assert_one_line_about(message: str, path: Path, pattern: str) -> None:
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message, message
    assert UNSAFE_ADVICE not in message and "weights_only" not in message, message
    assert re.search(pattern, message.removeprefix(f"{path}: ")), message


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_is_refused_with_one_line_naming_it(good: Good, name: str, tmp_path: Path) -> None:
    path, pattern = make_bad(good, name, tmp_path)
    with pytest.raises(WeightsError) as info:
        load_model(path)
    assert_one_line_about(str(info.value), path, pattern)
    assert not list(tmp_path.glob("*.marker"))  # no code from the file ran


def test_the_unsafe_pickle_would_run_code(good: Good, tmp_path: Path) -> None:
    """The control: an unrestricted unpickler does create the marker."""
    path, _ = make_bad(good, "unsafe_legacy_pickle", tmp_path)
    pickle.loads(path.read_bytes())
    assert path.with_suffix(".marker").is_file()


def test_good_files_load_the_same_weights(good: Good) -> None:
    for path in (good.safetensors, good.ckpt):
        model, preprocess = load_model(path)
        assert preprocess == preprocess_config_for([S2]) and model.config == tiny_config()
        for key, value in good.state.items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
        assert read_recipe(path)["model"] == good.recipe["model"]


def test_the_first_non_finite_tensor_of_the_file_is_named(good: Good, tmp_path: Path) -> None:
    path = _non_finite(good, tmp_path / "nan.safetensors", ".safetensors")
    stored = load_file(str(path))  # the file's order
    first = next(k for k, v in stored.items() if not bool(torch.isfinite(v).all()))
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(path))}: tensor {first} holds"):
        load_model(path)


def test_missing_file_and_directory(good: Good, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path / 'no.ckpt'))}: "):
        load_model(tmp_path / "no.ckpt")
    with pytest.raises(WeightsError) as info:
        load_model(tmp_path)
    assert_one_line_about(str(info.value), tmp_path, r"is a directory, not a model file")
    with pytest.raises(WeightsError, match="is a directory"):
        read_recipe(tmp_path)


def test_the_recipe_alone_is_read_safely(good: Good, tmp_path: Path) -> None:
    """``map --merge`` reads only the recipe: the same checks, the same one line."""
    for name in ("header_length_2_40", "offsets_past_end", "unsafe_pickle", "recipe_not_json"):
        path, pattern = make_bad(good, name, tmp_path)
        with pytest.raises(WeightsError) as info:
            read_recipe(path)
        assert_one_line_about(str(info.value), path, pattern)
    assert not list(tmp_path.glob("*.marker"))


@pytest.mark.parametrize(
    "name",
    ["truncated", "header_length_2_40", "header_a_list", "offsets_past_end", "random_bytes",
     "empty", "unsafe_pickle", "unsafe_legacy_pickle", "ckpt_truncated", "non_finite",
     "ckpt_non_finite"],
)  # fmt: skip
def test_published_weights_reader_refuses_the_same_files(
    good: Good, name: str, tmp_path: Path
) -> None:
    path, pattern = make_bad(good, name, tmp_path)
    with pytest.raises(WeightsError) as info:
        read_weights_file(path)
    assert_one_line_about(str(info.value), path, pattern)
    assert not list(tmp_path.glob("*.marker"))


def test_published_weights_that_do_not_fit_are_one_line_naming_the_file(
    good: Good, tmp_path: Path
) -> None:
    path = tmp_path / "official.pth"
    torch.save({"encoders.SENTINEL2_TS.bogus.weight": torch.zeros(2)}, path)
    with pytest.raises(WeightsError) as info:
        load_published_weights(build_model(tiny_config()), path)
    assert_one_line_about(
        str(info.value), path, r"weights do not fit the model: 1 unknown keys \(.*\); \d+ missing"
    )


# -- through the command line -----------------------------------------------------------------


def run_config(folder: Path) -> Path:
    """A run of the tiny model; ``test`` loads the weights before it reads any data."""
    path = folder / "run.yaml"
    config = {
        "data": {"root": str(folder / "no_dataset"), "batch_size": 2},
        "model": to_dict(tiny_config()),
        "train": {"max_epochs": 1, "progress_bar": False, "output_dir": str(folder / "run")},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def zone_config(folder: Path, model: Path) -> Path:
    """A map config; ``map`` loads the model before it opens any input."""
    path = folder / "zone.yaml"
    config = {
        "model": str(model),
        "inputs": {
            "SENTINEL2_TS": {"path": str(folder / "s2.tif"), "dates": str(folder / "d.txt")}
        },
        "output": {"path": str(folder / "out" / "map.tif")},
    }
    path.write_text(yaml.safe_dump(config))
    return path


CLI_CASES = ["unsafe_pickle", "truncated", "header_length_2_40", "reshaped_tensor",
             "ckpt_renamed_tensors", "recipe_bad_type", "non_finite", "ckpt_empty"]  # fmt: skip


@pytest.mark.parametrize("name", CLI_CASES)
@pytest.mark.parametrize("command", ["test", "map"])
def test_cli_exits_2_with_one_line(
    good: Good, name: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, pattern = make_bad(good, name, tmp_path)
    if command == "test":
        argv = ["test", "-c", str(run_config(tmp_path)), "--weights", str(path)]
    else:
        argv = ["map", "-c", str(zone_config(tmp_path, good.safetensors)), f"model={path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    message = err.strip().removeprefix(f"flairkit {command}: error: ")
    assert_one_line_about(message, path, pattern)
    assert not list(tmp_path.glob("*.marker"))
    assert not (tmp_path / "out").exists()  # nothing written by a map that cannot start


@pytest.mark.parametrize("command", ["test", "map"])
def test_cli_good_model_gets_past_loading(
    good: Good, command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The control: with the good file, the same commands fail later, on their missing data."""
    if command == "test":
        argv = ["test", "-c", str(run_config(tmp_path)), "--weights", str(good.safetensors)]
    else:
        argv = ["map", "-c", str(zone_config(tmp_path, good.safetensors))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(good.safetensors) not in err, err
    assert ("no_dataset" if command == "test" else "s2.tif") in err, err
