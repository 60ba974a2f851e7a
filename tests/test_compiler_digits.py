"""Digits models (examples/train_digits.py): NumPy-trained MLP and CNN, compiled for the default
preset and run on the golden backend over the whole held-out set; int8 accuracy within 1
percentage point of the float model (onnxruntime). Training uses the fixed seed 0 (the bound is
a property of the trained models, not of random data)."""

import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import demo  # noqa: E402
import train_digits  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    train_digits.main(["--out-dir", str(out), "--seed", "0"])
    return out, dict(np.load(out / "digits_data.npz"))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_digits_int8_accuracy(models, name):
    out, data = models
    r = demo.evaluate(out / f"digits_{name}.onnx", data, "golden", "default", progress=False)
    print(name, r)
    assert r["n"] == 360
    assert r["float_acc"] > 0.9
    assert abs(r["int8_acc"] - r["float_acc"]) <= 0.01
    assert r["cycles_per_inference"] > 0


@pytest.mark.verilator
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_digits_rtl_identical_to_golden(models, name):
    """On the Verilator-simulated RTL (sparrow.runtime), every output equals the golden model's."""
    from sparrow import runtime

    if not hasattr(runtime, "Device"):
        pytest.skip("sparrow.runtime.Device is not available in this checkout")
    out, data = models
    r = demo.evaluate(out / f"digits_{name}.onnx", data, "verilator", "small", limit=40, progress=False)
    print(name, {k: v for k, v in r.items() if k != "partition"})
    assert r["identical"] == r["n"] == 40
    assert r["int8_acc"] == r["golden_acc"]
