"""`make verilog` output: Verilog that lints clean with only the listed waivers, plus its JSON."""

import json

import pytest

from sparrow import regmap
from sparrow.config import preset
from sparrow.hdl.export import export, lint


@pytest.mark.verilator
def test_small_preset_exports_and_lints(tmp_path):
    v = export("small", tmp_path)
    r = lint(v, "sparrow_small")
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "sparrow_small.json").read_text())
    assert meta["config"] == preset("small").to_dict()
    assert {r["name"] for r in meta["registers"]} == set(regmap.BY_NAME)
    text = v.read_text()
    for port in ("m_axi_awaddr", "m_axi_rdata", "csr__addr", "irq"):
        assert port in text
