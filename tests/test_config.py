"""HwConfig: presets, validation naming the field, JSON round trip, derived properties."""

import dataclasses
import json

import pytest

from sparrow.config import PRESETS, HwConfig, preset
from sparrow.isa import Spad


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_valid_and_named(name):
    cfg = preset(name)
    assert cfg.name == name
    # re-validating through the constructor must not raise
    assert HwConfig(**cfg.to_dict()) == cfg
    assert cfg.rows * cfg.cols == cfg.peak_macs_per_cycle


def test_unknown_preset_names_choices():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*small"):
        preset("nope")


# every numeric field with values that must be rejected
BAD = [
    ("rows", [0, 1, 65, -3, 2.0, True, "8"]),
    ("cols", [0, 1, 3, 6, 128, 8.0]),
    ("act_depth", [0, 8, 100, 1 << 15]),
    ("wgt_depth", [0, 8, 48, 1 << 15]),
    ("acc_depth", [0, 15, 1 << 15]),
    ("act_banks", [0, 3, 8192]),
    ("acc_banks", [0, 3, 4096]),
    ("mem_bytes", [0, 3, 128]),
    ("max_burst", [0, 257]),
    ("n_semaphores", [0, 17]),
    ("sem_bits", [0, 1, 9]),
    ("queue_depth", [0, 65]),
    ("delay_slots", [0, 17]),
    ("dram_bytes", [0, 1000, 1 << 29]),
    ("number_format", ["fp8", "", None]),
]


@pytest.mark.parametrize("fld,value", [(f, v) for f, vs in BAD for v in vs])
def test_validation_names_field(fld, value):
    with pytest.raises(ValueError) as ei:
        HwConfig(**{fld: value})
    assert f"HwConfig.{fld}" in str(ei.value)


def test_banks_bounded_by_depth():
    # a bank count legal on its own but above the (smaller) depth
    with pytest.raises(ValueError, match="HwConfig.act_banks"):
        HwConfig(act_depth=16, act_banks=32)
    HwConfig(act_depth=16, act_banks=16)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = preset(name)
    s = cfg.to_json()
    assert json.loads(s)["cols"] == cfg.cols
    back = HwConfig.from_json(s)
    assert back == cfg and back.name == cfg.name
    assert HwConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_rejects_unknown_field():
    d = preset("small").to_dict()
    d["colz"] = 4
    with pytest.raises(ValueError, match="colz"):
        HwConfig.from_dict(d)


def test_derived_properties():
    cfg = HwConfig(rows=4, cols=16, act_depth=1024, wgt_depth=256, acc_depth=512, sem_bits=6,
                   dram_bytes=1 << 20)
    assert cfg.line_bytes == 16
    assert cfg.acc_line_bytes == 64
    assert cfg.mask_bytes == 2
    assert HwConfig(cols=4).mask_bytes == 1
    assert cfg.peak_macs_per_cycle == 64
    assert (cfg.act_addr_bits, cfg.wgt_addr_bits, cfg.acc_addr_bits) == (10, 8, 9)
    assert cfg.dram_addr_bits == 20
    assert cfg.sem_max == 63
    assert [cfg.spad_depth(s) for s in Spad] == [1024, 256, 512]
    assert cfg.spad_depth("act") == 1024
    assert [cfg.spad_line_bytes(s) for s in Spad] == [16, 16, 64]


def test_frozen_and_replace():
    cfg = preset("small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cols = 8
    big = cfg.replace(cols=8)
    assert big.cols == 8 and cfg.cols == 4
    with pytest.raises(ValueError, match="HwConfig.cols"):
        cfg.replace(cols=5)


def test_key_ignores_name_only():
    a = preset("small")
    b = a.replace(name="other")
    assert a == b and a.key() == b.key()
    assert a.key() != a.replace(queue_depth=2).key()
    assert len({p.key() for p in PRESETS.values()}) == len(PRESETS)
