"""Multi-level compile cache (sparrow.compiler.cache).

Every compile here uses a cache directory under tmp_path (an autouse fixture also points
SPARROW_CACHE_DIR there, so nothing reaches the user's ~/.cache). Programs are compared member by
member of their ``.spw`` archives (zip timestamps aside) with a compile that does not use the
cache at all, so a hit is checked against an independent build, not against itself.
Seeded: SPARROW_SEED.
"""

import io
import json
import shutil
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import sparrow
from sparrow.cli import main
from sparrow.compiler import CompileError, cache as cache_mod
from sparrow.compiler.cache import STAGES, CompileCache, code_version, default_cache_dir

PRESET = "small"


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARROW_CACHE_DIR", str(tmp_path / "env-cache"))


def conv_model(rng, C=3, M=6, H=6):
    """Conv + Relu -> MaxPool -> Flatten -> Gemm (one accelerator program)."""
    ini = {
        "w": rng.standard_normal((M, C, 3, 3)) * 0.3,
        "b": rng.standard_normal(M) * 0.1,
        "fw": rng.standard_normal((M * (H // 2) ** 2, 4)) * 0.2,
        "fb": rng.standard_normal(4) * 0.1,
    }
    nodes = [
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Flatten", ["p"], ["f"]),
        h.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
    ]
    g = h.make_graph(
        nodes,
        "cachetest",
        [h.make_tensor_value_info("x", T.FLOAT, [1, C, H, H])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 4])],
        [nh.from_array(np.asarray(a, np.float32), k) for k, a in ini.items()],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def members(prog) -> dict:
    """Every member of the program's .spw archive (bytes)."""
    buf = io.BytesIO()
    prog.save(buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return {n: z.read(n) for n in sorted(z.namelist())}


def compile_(model, d, **kw):
    kw.setdefault("preset", PRESET)
    kw.setdefault("accuracy_batches", 1)
    return sparrow.compile(model, cache_dir=d, **kw)


def status(prog) -> dict:
    return prog.cache_stats.status()


def entry(d, prog, stage):
    p = CompileCache(d).path(stage, prog.cache_stats.stages[stage].key)
    assert p.is_file(), p
    return p


def cal_data(rng, n=3):
    return {"x": rng.standard_normal((n, 3, 6, 6))}


def test_second_compile_hits_and_is_identical(rng, tmp_path):
    m, cal = conv_model(rng), cal_data(rng)
    d = tmp_path / "c"
    ref = members(sparrow.compile(m, calibration=cal, preset=PRESET, accuracy_batches=1, cache=False))
    cold = compile_(m, d, calibration=cal)
    assert status(cold) == {s: "miss" for s in STAGES}
    assert all(entry(d, cold, s).stat().st_size == cold.cache_stats.stages[s].bytes for s in STAGES)
    warm = compile_(m, d, calibration=cal)
    # the last stage hits, so nothing before it is read
    assert status(warm) == {**{s: "unused" for s in STAGES[:-1]}, "program": "hit"}
    assert warm.cache_stats.hits == 1 and warm.cache_stats.misses == 0
    assert members(cold) == ref
    assert members(warm) == ref
    assert warm.manifest["accuracy"] == cold.manifest["accuracy"]
    # a change of the last stage's own input (accuracy batches) reads every earlier stage
    acc2 = compile_(m, d, calibration=cal, accuracy_batches=2)
    assert status(acc2) == {**{s: "hit" for s in STAGES[:-2]}, "accuracy": "miss", "program": "miss"}
    assert acc2.manifest["accuracy"]["batches"] == 2
    assert members(compile_(m, d, calibration=cal, accuracy_batches=2)) == members(acc2)
    # the same keys from the model as a file and as bytes
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert status(compile_(str(path), d, calibration=cal))["program"] == "hit"
    assert status(compile_(path.read_bytes(), d, calibration=cal))["program"] == "hit"


def test_backend_option_reuses_front_end(rng, tmp_path):
    m, cal = conv_model(rng), cal_data(rng)
    d = tmp_path / "c"
    base = compile_(m, d, calibration=cal)
    opts = {"keep": ["p"]}  # a back-end option: materialise the pool output in DRAM
    changed = compile_(m, d, calibration=cal, options=opts)
    # the accuracy report is not re-run: back-end options keep outputs bit-identical
    assert status(changed) == {"frontend": "hit", "partition": "hit", "quantize": "hit",
                               "lower": "miss", "accuracy": "hit", "program": "miss"}
    ref = sparrow.compile(m, calibration=cal, preset=PRESET, accuracy_batches=1, options=opts, cache=False)
    assert members(changed) == members(ref)
    assert members(changed) != members(base)  # the option did change the program
    # save= is part of the lower key too (it adds to options["keep"])
    saved = compile_(m, d, calibration=cal, save=["p"])
    assert status(saved)["quantize"] == "hit" and status(saved)["lower"] == "miss"
    assert members(saved) == members(changed)
    # a preset change: partition and everything after it; frontend and quantize reused
    other = compile_(m, d, calibration=cal, preset="default")
    assert status(other) == {"frontend": "hit", "partition": "miss", "quantize": "hit",
                             "lower": "miss", "accuracy": "miss", "program": "miss"}
    assert members(other) == members(
        sparrow.compile(m, calibration=cal, preset="default", accuracy_batches=1, cache=False))


def test_calibration_change_invalidates_quantize(rng, tmp_path):
    m, cal = conv_model(rng), cal_data(rng)
    d = tmp_path / "c"
    a = compile_(m, d, calibration=cal)
    cal2 = {"x": cal["x"] * 3.0}
    b = compile_(m, d, calibration=cal2)
    assert status(b) == {"frontend": "hit", "partition": "hit", "quantize": "miss",
                         "lower": "miss", "accuracy": "miss", "program": "miss"}
    assert b.scales["x"] == pytest.approx(3 * a.scales["x"])
    ref = sparrow.compile(m, calibration=cal2, preset=PRESET, accuracy_batches=1, cache=False)
    assert members(b) == members(ref)
    # the same data as a bare array and as an .npz file: keys of their own, the same program
    arr = compile_(m, d, calibration=cal2["x"])
    assert status(arr)["quantize"] == "miss" and status(arr)["partition"] == "hit"
    assert members(arr) == members(ref)
    assert status(compile_(m, d, calibration=cal2["x"]))["program"] == "hit"
    npz = tmp_path / "cal.npz"
    np.savez(npz, **cal2)
    c = compile_(m, d, calibration=str(npz))
    assert status(c)["quantize"] == "miss"  # keyed by the file's bytes
    assert members(c) == members(ref)
    assert status(compile_(m, d, calibration=str(npz)))["program"] == "hit"
    # the default (noise) calibration is a key of its own
    assert status(compile_(m, d))["quantize"] == "miss"


def _corrupt(p, how):
    blob = bytearray(p.read_bytes())
    if how == "truncate":
        p.write_bytes(bytes(blob[: len(blob) // 2]))
    elif how == "bitflip":
        blob[-7] ^= 0x10  # inside the payload: only the checksum can tell
        p.write_bytes(bytes(blob))
    elif how == "header":
        p.write_bytes(b"garbage\n" + bytes(blob))
    elif how == "forged":  # valid header and checksum over a payload that is not a pickle
        payload = b"not a pickle"
        head = json.loads(blob[len(cache_mod.MAGIC) : blob.index(b"\n", len(cache_mod.MAGIC))])
        head.update(length=len(payload), sha256=__import__("hashlib").sha256(payload).hexdigest())
        p.write_bytes(cache_mod.MAGIC + json.dumps(head).encode() + b"\n" + payload)


@pytest.mark.parametrize("how", ["truncate", "bitflip", "header"])
def test_corrupt_program_entry_is_rebuilt(rng, tmp_path, how):
    m, cal = conv_model(rng), cal_data(rng)
    d = tmp_path / "c"
    ref = members(compile_(m, d, calibration=cal))
    p = entry(d, compile_(m, d, calibration=cal), "program")
    _corrupt(p, how)
    lines = []
    again = compile_(m, d, calibration=cal, log=lines.append)
    st = again.cache_stats.stages["program"]
    assert st.status == "miss" and st.corrupt
    assert any("corrupt" in s and str(p) in s for s in lines), lines
    assert status(again)["lower"] == "hit"  # rebuilt from the deepest valid stage
    assert members(again) == ref
    # the rewritten entry is valid again
    assert status(compile_(m, d, calibration=cal))["program"] == "hit"


def test_corrupt_entries_in_several_stages(rng, tmp_path):
    m, cal = conv_model(rng), cal_data(rng)
    d = tmp_path / "c"
    first = compile_(m, d, calibration=cal)
    ref = members(first)
    _corrupt(entry(d, first, "frontend"), "truncate")
    _corrupt(entry(d, first, "lower"), "bitflip")
    _corrupt(entry(d, first, "quantize"), "forged")
    entry(d, first, "program").unlink()
    again = compile_(m, d, calibration=cal)
    s = again.cache_stats.stages
    assert status(again) == {"frontend": "miss", "partition": "hit", "quantize": "miss",
                             "lower": "miss", "accuracy": "hit", "program": "miss"}
    assert "length" in s["frontend"].corrupt
    assert "checksum" in s["lower"].corrupt
    assert "decode" in s["quantize"].corrupt
    assert members(again) == ref
    assert status(compile_(m, d, calibration=cal, accuracy_batches=3)) == {
        **{k: "hit" for k in STAGES[:-2]}, "accuracy": "miss", "program": "miss"}


def test_edited_back_end_code_misses_back_end_stages(rng, tmp_path, monkeypatch):
    """Keys include the source of each stage's modules: a copy of the package whose lower.py
    differs (a comment) serves the front-end stages and rebuilds lower and program."""
    m, cal = conv_model(rng), cal_data(rng)
    d = tmp_path / "c"
    pkg = tmp_path / "pkg"
    shutil.copytree(cache_mod._PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache_mod, "_PKG", pkg)
    before = {s: code_version(s) for s in STAGES}
    compile_(m, d, calibration=cal)
    with open(pkg / "compiler" / "lower.py", "a") as f:
        f.write("\n# edited\n")
    after = {s: code_version(s) for s in STAGES}
    # program.py imports lower; the accuracy runs execute back-end code
    assert [s for s in STAGES if before[s] != after[s]] == ["lower", "accuracy", "program"]
    again = compile_(m, d, calibration=cal)
    assert status(again) == {"frontend": "hit", "partition": "hit", "quantize": "hit",
                             "lower": "miss", "accuracy": "miss", "program": "miss"}
    with open(pkg / "compiler" / "frontend.py", "a") as f:
        f.write("\n# edited\n")
    assert status(compile_(m, d, calibration=cal)) == {s: "miss" for s in STAGES}


def test_sub_cache_entries_by_content(rng, tmp_path):
    """Each node's kernel emission is cached by everything it reads, each program's schedule by
    the instructions its kernels emitted: a back-end change that leaves them unchanged reuses
    them, one that changes them does not; either way the program equals a compile without the
    cache."""
    m, cal = conv_model(rng), cal_data(rng)
    d = tmp_path / "c"

    def sub(prog):
        return {k: (u.hits, u.misses) for k, u in prog.cache_stats.sub.items()}

    def same_as_uncached(p, opts):
        assert members(p) == members(sparrow.compile(m, calibration=cal, preset=PRESET, accuracy_batches=1,
                                                     options=opts, cache=False))

    def check(opts, want):
        p = compile_(m, d, calibration=cal, options=opts)
        assert status(p)["lower"] == "miss"
        assert sub(p) == want, opts
        same_as_uncached(p, opts)
        return p

    # two emitting steps: the fused conv+relu+pool group and the gemm (flatten is a view)
    first = check(None, {"kernels": (0, 2), "schedule": (0, 1)})
    # "p" (the pool output) is in external memory anyway: the same kernels, the same program
    check({"keep": ["p"]}, {"kernels": (2, 0), "schedule": (1, 0)})
    # "r" exists only inside the fused kernel: keeping it splits the group (conv, pool: new
    # kernels) and moves the gemm's input and weights: its entry is relocated, not re-emitted
    check({"keep": ["r"]}, {"kernels": (1, 2), "schedule": (0, 1)})
    # scheduling off: the same kernels, another schedule key
    check({"schedule": False}, {"kernels": (2, 0), "schedule": (0, 1)})
    text = first.cache_stats.format()
    assert "kernels entries (per node): hits 0, misses 2" in text
    assert "schedule entries (per accelerator program): hits 0, misses 1" in text
    # corrupt entries are deleted and rebuilt, never used
    root = d / f"v{cache_mod.CACHE_VERSION}"
    assert len(list((root / "schedule").glob("*.entry"))) == 3
    for p in [*(root / "schedule").glob("*.entry"), *(root / "kernels").glob("*.entry")]:
        _corrupt(p, "bitflip")
    lines = []
    p = compile_(m, d, calibration=cal, options={"keep": ["y"]}, log=lines.append)
    assert sub(p) == {"kernels": (0, 2), "schedule": (0, 1)}
    assert all("checksum" in u.corrupt for u in p.cache_stats.sub.values())
    assert any("schedule entry" in s and "corrupt" in s for s in lines), lines
    same_as_uncached(p, {"keep": ["y"]})
    assert sub(compile_(m, d, calibration=cal, options={"keep": ["c"]})) == {"kernels": (2, 0), "schedule": (1, 0)}


def test_builder_state_is_known_to_the_kernel_memo():
    """The kernel memo replays a node's effect on the ProgramBuilder attribute by attribute
    (sparrow.compiler.lower.BUILDER_ATTRS); a builder attribute it does not know disables it."""
    from sparrow.compiler.lower import BUILDER_ATTRS
    from sparrow.config import preset
    from sparrow.kernels import ProgramBuilder

    b = ProgramBuilder(preset(PRESET))
    assert set(vars(b)) <= BUILDER_ATTRS
    b.emit("load", spad="act", spad_addr=0, dram_addr=b.tensor((4, 4)).addr, rows=1, row_lines=1)
    b.finish()
    assert set(vars(b)) <= BUILDER_ATTRS


def test_cache_off_location_and_errors(rng, tmp_path, monkeypatch):
    m = conv_model(rng)
    off = sparrow.compile(m, preset=PRESET, accuracy_batches=0, cache=False)
    assert status(off) == {s: "off" for s in STAGES}
    assert off.cache_stats.stages["lower"].seconds > 0
    assert not (tmp_path / "env-cache").exists()
    # SPARROW_CACHE_DIR is the default location, ~/.cache/sparrow without it
    p = sparrow.compile(m, preset=PRESET, accuracy_batches=0)
    assert p.cache_stats.directory == str(tmp_path / "env-cache")
    # every stage but accuracy (no accuracy runs), the kernel entries of the two emitting steps and
    # the schedule entry of the one program
    assert len(list((tmp_path / "env-cache").rglob("*.entry"))) == len(STAGES) - 1 + 2 + 1
    assert not list((tmp_path / "env-cache").rglob("*.tmp"))
    monkeypatch.delenv("SPARROW_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "sparrow"
    # an unwritable cache location: compile still works, entries are not written
    blocker = tmp_path / "file"
    blocker.write_text("x")
    lines = []
    q = sparrow.compile(m, preset=PRESET, accuracy_batches=0, cache_dir=blocker, log=lines.append)
    assert members(q) == members(off)
    assert any("cannot write" in s for s in lines)
    with pytest.raises(CompileError, match="options must be JSON-able"):
        sparrow.compile(m, preset=PRESET, options={"x": object()}, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="cache"):
        sparrow.compile(m, preset=PRESET, cache="yes")
    with pytest.raises(CompileError, match="not a readable ONNX model"):
        sparrow.compile(str(tmp_path / "missing.onnx"), cache_dir=tmp_path / "c")


def _stat_rows(out: str) -> dict:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in STAGES and len(parts) >= 4:
            rows[parts[0]] = parts[1]
    return rows


def test_cli_cache_stats(rng, tmp_path, capsys):
    m = conv_model(rng)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    d = tmp_path / "cli-cache"
    args = [str(path), "-o", str(tmp_path / "o.spw"), "--preset", PRESET, "--cache-dir", str(d), "-q",
            "--cache-stats"]
    assert main(["compile", *args]) == 0
    out = capsys.readouterr().out
    assert _stat_rows(out) == {s: "miss" for s in STAGES}
    assert f"compile cache: {d}" in out and "hits 0, misses 6" in out
    assert main(["compile", *args]) == 0
    assert _stat_rows(capsys.readouterr().out)["program"] == "hit"
    assert main(["compile", *args, "--option", 'keep=["p"]']) == 0
    assert _stat_rows(capsys.readouterr().out) == {"frontend": "hit", "partition": "hit", "quantize": "hit",
                                                   "lower": "miss", "accuracy": "hit", "program": "miss"}
    n = len(list(d.rglob("*.entry")))
    assert main(["compile", *args, "--no-cache", "--option", "keep=[\"r\"]"]) == 0
    out = capsys.readouterr().out
    assert "compile cache: off" in out and _stat_rows(out) == {s: "off" for s in STAGES}
    assert len(list(d.rglob("*.entry"))) == n
    assert main(["compile", *args, "--option", "bad"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
