"""Debugging and observability: layer breakpoints, saved intermediates, bisection, timelines, waves.

References are independent of the code under test:

* onnxruntime on the float model with every intermediate as an extra output: each saved /
  break-point tensor (dequantized) within quantization tolerance of it;
* the golden model run through a *different path* (the full program in the concurrent model vs a
  program prefix stopped at a breakpoint in program order, or vs the Verilator RTL): bit exact;
* the counters of the same run for the timeline (sums of intervals), the injected fault's node
  for bisection.

Seeded: SPARROW_SEED.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from sparrow import debug, isa
from sparrow.cli import main
from sparrow.compiler import compile as sp_compile
from sparrow.compiler.program import GoldenDevice
from sparrow.config import preset
from sparrow.runtime import Device
from sparrow.runtime.device import CutError, closed_cut
from sparrow.sim.cocotb_run import default_seed

PRESET = "small"


def _seed(label):
    s = default_seed(f"test_debug:{label}")
    print(f"SPARROW_SEED={s} ({label})")
    return s


def small_cnn(seed):
    """conv+relu -> maxpool -> conv+relu -> add (residual) -> conv 1x1 -> global avg pool ->
    flatten -> gemm -> softmax (host)."""
    r = np.random.default_rng(seed)
    inits = {
        "w1": r.standard_normal((8, 3, 3, 3)) * 0.3, "b1": r.standard_normal(8) * 0.1,
        "w2": r.standard_normal((8, 8, 3, 3)) * 0.2, "b2": r.standard_normal(8) * 0.1,
        "w3": r.standard_normal((8, 8, 1, 1)) * 0.3, "b3": r.standard_normal(8) * 0.1,
        "w4": r.standard_normal((8, 10)) * 0.3, "b4": r.standard_normal(10) * 0.1,
    }
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        h.make_node("Add", ["r2", "p1"], ["a"], name="add"),
        h.make_node("Conv", ["a", "w3", "b3"], ["c3"], name="conv3"),
        h.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        h.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        h.make_node("Flatten", ["g"], ["f"], name="flat"),
        h.make_node("Gemm", ["f", "w4", "b4"], ["y"], name="fc"),
        h.make_node("Softmax", ["y"], ["prob"], name="softmax", axis=1),
    ]
    g = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("prob", T.FLOAT, [1, 10])],
                     [nh.from_array(np.asarray(a, np.float32), k) for k, a in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def cnn():
    seed = _seed("cnn")
    r = np.random.default_rng(seed)
    model = small_cnn(seed)
    cal = r.standard_normal((8, 3, 8, 8)).astype(np.float32)
    prog = debug.compile_debug(model, preset=PRESET, calibration={"x": cal}, accuracy_batches=0)
    prog.test_calibration = {"x": cal}
    x = r.standard_normal((1, 3, 8, 8)).astype(np.float32)
    return model, prog, {"x": x}


def ort_values(model, names, inputs):
    """onnxruntime float value of every name (extra graph outputs)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in names:
        if v not in {o.name for o in m.graph.output}:
            m.graph.output.append(h.make_empty_tensor_value_info(v))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, inputs)
    return {o.name: a.astype(np.float64) for o, a in zip(sess.get_outputs(), outs, strict=True)}


def assert_close_to_float(name, q, scale, ref):
    """int8 ``q`` (scale) vs float ``ref``: within 4 quantization steps + 3% of the range (the
    quantization error accumulated over a few layers)."""
    err = np.max(np.abs(q.astype(np.float64) * scale - ref))
    tol = 4 * scale + 0.03 * np.max(np.abs(ref))
    assert err <= tol, f"{name}: |int8 - float| = {err:.4g} > {tol:.4g}"


# -- saved intermediates --------------------------------------------------------------------------
def test_saved_intermediates_equal_golden_and_float(cnn):
    """compile(save='all') keeps every accelerator node's output; the run returns them; they are
    within quantization tolerance of onnxruntime's float intermediates, bit-equal to the golden
    model stopped at a breakpoint after that node (a program prefix, program order), and the
    program's outputs equal the program compiled without save."""
    model, prog, inputs = cnn
    outs_of = prog.manifest["node_outputs"]
    acc_nodes = [n for st in prog.manifest["steps"] if st["kind"] == "acc" for n in st["nodes"]]
    y = prog.run(inputs, device=GoldenDevice(prog.cfg, check_races=True))
    saved = prog.last_run["saved_int8"]
    # every accelerator node's output is available; the debug ones are exactly the saved ones
    assert all(outs_of[n][0] in prog.last_run["values"] for n in acc_nodes)
    assert set(saved) <= {outs_of[n][0] for n in acc_nodes}
    assert {"r1", "p1", "r2", "a", "r3"} <= set(saved)  # consumed only inside the program: kept for debug
    for v, a in prog.last_run["saved"].items():
        np.testing.assert_array_equal(a, (saved[v] * np.float64(prog.scales[v])).astype(np.float32))
    values = dict(prog.last_run["values"])
    fl = ort_values(model, [outs_of[n][0] for n in prog.nodes], inputs)
    for n in acc_nodes:
        v = outs_of[n][0]
        assert_close_to_float(v, values[v], prog.scales[v], fl[v])
        got = {}
        prog.run(inputs, break_at=n, on_break=lambda s, got=got: got.update(s.int8))
        np.testing.assert_array_equal(got[v], values[v], err_msg=f"node {n}: prefix vs full run")
    plain = sp_compile(model, preset=PRESET, calibration=prog.test_calibration, accuracy_batches=0)
    y0 = plain.run(inputs)
    np.testing.assert_array_equal(y0["prob"], y["prob"])
    assert all(not d.get("debug") for st in plain.manifest["steps"] if st["kind"] == "acc" for d in st["outputs"])


# -- breakpoints ----------------------------------------------------------------------------------
def _check_breaks(cnn, backend, nodes=None):
    model, prog, inputs = cnn
    outs_of = prog.manifest["node_outputs"]
    y_ref = prog.run(inputs, device=GoldenDevice(prog.cfg))["prob"]
    ref = dict(prog.last_run["values"])
    fl = ort_values(model, [outs_of[n][0] for n in prog.nodes], inputs)
    for n in nodes or prog.nodes:
        seen = {}

        def on_break(s, seen=seen):
            seen["state"] = s
            seen["tensor"] = s.tensor_int8.copy()
            seen["pcs"] = dict(s.pcs)
            if s.device is not None and s.stop == "breakpoint":
                seen["reread"] = s.read(s.outputs[0])
                seen["status"] = s.device.status()
        y = prog.run(inputs, backend=backend, break_at=n, on_break=on_break)
        st = seen["state"]
        v = outs_of[n][0]
        assert st.node == n and st.outputs[0] == v
        np.testing.assert_array_equal(seen["tensor"], ref[v], err_msg=f"break at {n} on {backend}")
        assert_close_to_float(v, seen["tensor"], prog.scales[v], fl[v])
        if "reread" in seen:  # halted: the engines stand at the cut, memory holds the tensor
            np.testing.assert_array_equal(seen["reread"], ref[v])
            assert seen["status"]["busy"] == 1 and seen["status"]["done"] == 0
            tags = prog.manifest["steps"][st.step]["tags"]
            later = {t for t in tags[st.cut:] if t}
            k = prog.nodes.index(n)
            assert not later & set(prog.nodes[: k + 1]), "an instruction of this or an earlier node after the cut"
            for e in ("load", "matmul", "vector", "store"):
                assert seen["pcs"][e] >= st.cut or all(
                    isa.engine_of(i) is None or isa.engine_of(i).name.lower() != e
                    for i in _decoded(prog, st.step)[seen["pcs"][e]:st.cut])
        np.testing.assert_array_equal(y["prob"], y_ref, err_msg=f"resumed after {n} on {backend}")
    return prog


def _decoded(prog, step):
    return isa.decode_image(prog.programs[prog.manifest["steps"][step]["program"]]["program"], prog.cfg)


def test_break_at_every_layer_golden(cnn):
    """Every node (accelerator and host): the break state holds that node's tensor equal to the
    golden full run and near the float model; resuming gives the same final output."""
    _check_breaks(cnn, "golden")


@pytest.mark.verilator
def test_break_at_every_layer_verilator(cnn):
    """The same on the RTL: CSR breakpoints per engine, the tensor read while halted equals the
    golden model's, resuming finishes with the golden output."""
    _check_breaks(cnn, "verilator")


def test_break_requires_kept_output(cnn):
    model, prog, inputs = cnn
    plain = sp_compile(model, preset=PRESET, calibration=prog.test_calibration, accuracy_batches=0)
    placed = {d["name"] for st in plain.manifest["steps"] if st["kind"] == "acc" for d in st["outputs"]}
    assert "r1" not in placed  # consumed inside the program only
    with pytest.raises(ValueError, match="output of node 'conv1' is not kept"):
        plain.run(inputs, break_at="conv1")
    with pytest.raises(ValueError, match="not a node"):
        prog.run(inputs, break_at="nope")


def _nop(engine, **kw):
    return isa.make("nop", engine=engine, **kw)


def test_cut_closure_and_cut_error():
    """An instruction before the cut waiting on a signal after it: run_to refuses the cut,
    closed_cut extends it; a reachable cut halts each engine at its first instruction there."""
    cfg = preset(PRESET)
    E = isa.Engine
    prog = isa.Program([
        _nop(E.MATMUL, wait_sem=0, wait_count=1, wait_consume=1),   # 0: waits on 1's signal
        _nop(E.LOAD, signal_sem=0, signal_en=1),                     # 1
        _nop(E.VECTOR),                                              # 2
        _nop(E.LOAD),                                                # 3
        isa.make("halt"),
    ])
    assert closed_cut(list(prog), 1, cfg.n_semaphores) == 2
    assert closed_cut(list(prog), 3, cfg.n_semaphores) == 3
    assert closed_cut(list(prog), 0, cfg.n_semaphores) == 0
    dev = Device(cfg, backend="golden")
    dev.load_program(prog, 0x4000)
    with pytest.raises(CutError, match="instruction 0 .* waits on semaphore 0"):
        dev.run_to(1)
    info = dev.run_to(3)
    assert info.stop == "breakpoint" and set(info.halted) == {"load"}
    dev.clear_breakpoints()
    assert dev.resume().stop == "done"


# -- bisection ------------------------------------------------------------------------------------
def _bisect_names(cnn, backend, node):
    model, prog, inputs = cnn
    hook = debug.corrupt_constants(prog, node, nbytes=8, seed=_seed(f"fault-{node}"))
    rep = debug.bisect(model, inputs=inputs, backend=backend, prog=prog, before_step=hook)
    print(rep.format())
    assert not rep.ok and rep.first is not None
    assert rep.first.node == node, rep.format()
    # the corrupted bytes show up in the dump of that node's constants read back from the device
    assert any(s["n_diff"] > 0 for s in rep.dump["segments"])
    return rep


@pytest.mark.parametrize("node", ["conv1", "conv2", "conv3", "fc"])
def test_bisection_names_corrupted_node_golden(cnn, node):
    _bisect_names(cnn, "golden", node)


@pytest.mark.verilator
def test_bisection_names_corrupted_node_verilator(cnn):
    rep = _bisect_names(cnn, "verilator", "conv2")
    assert len(rep.probes) < len(rep.nodes)  # binary search, not every prefix


def test_bisection_clean_model_and_cli(cnn, tmp_path, capsys):
    model, prog, inputs = cnn
    rep = debug.bisect(model, inputs=inputs, backend="golden", prog=prog)
    assert rep.ok and rep.probes == [(len(prog.nodes) - 1, False)]
    assert rep.float_first is None and set(rep.float_errors) >= {"conv1", "fc"}
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", inputs["x"])
    rc = main(["debug", str(path), "--backend", "golden", "--preset", PRESET, "--input", str(tmp_path / "x.npy"),
               "--inject-fault", "conv3", "--dump-dir", str(tmp_path / "dump"), "-q"])
    out = capsys.readouterr().out
    assert rc == 1 and "first diverging node: conv3" in out
    got = np.load(tmp_path / "dump" / "conv3" / "got_r3.npy")
    exp = np.load(tmp_path / "dump" / "conv3" / "expected_r3.npy")
    assert got.shape == exp.shape and np.any(got != exp)
    assert main(["debug", str(path), "--backend", "golden", "--preset", PRESET, "-q"]) == 0


# -- timeline -------------------------------------------------------------------------------------
def _check_timeline(tl, counters, exact_cycles):
    tot = tl.totals()
    for e in ("load", "matmul", "vector", "store"):
        for k in ("busy", "wait", "stall"):
            assert tot[e][k] == counters[f"{e}_{k}"], (e, k, tot[e][k], counters[f"{e}_{k}"])
    ch = json.loads(json.dumps(tl.to_chrome()))
    xs = [ev for ev in ch["traceEvents"] if ev["ph"] == "X"]
    assert xs and all({"name", "ts", "dur", "pid", "tid"} <= set(ev) and ev["dur"] > 0 for ev in xs)
    for e_idx in range(4):  # busy intervals of one engine do not overlap (in program order)
        busy = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in xs if ev["tid"] == e_idx and ev["cat"] == "busy")
        assert all(a[1] <= b[0] for a, b in zip(busy, busy[1:], strict=False))
    if exact_cycles:
        assert max(ev["ts"] + ev["dur"] for ev in xs) <= tl.cycles
    return xs


def test_timeline_golden_matches_counters(cnn, tmp_path):
    model, prog, inputs = cnn
    prog.run(inputs, timeline=True)
    lr = prog.last_run
    tl = lr["timeline"]
    xs = _check_timeline(tl, lr["counters"], exact_cycles=True)
    busy = [ev for ev in xs if ev["cat"] == "busy"]
    assert len(busy) == lr["counters"]["instructions"] - sum(  # zero-length (NOP) intervals are not drawn
        1 for ev in tl.events if ev.kind == "busy" and ev.dur == 0)
    assert any(ev["cat"] == "wait" and "sem" in ev["args"] for ev in xs)
    util = tl.utilization()
    acc_nodes = {n for st in prog.manifest["steps"] if st["kind"] == "acc" for n in st["nodes"]}
    assert {"conv1", "conv2", "conv3", "fc"} <= set(util) <= acc_nodes
    assert all(0 <= u <= 1 for d in util.values() for u in d["util"].values())
    tl.save(tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.verilator
def test_timeline_verilator_and_cli(cnn, tmp_path, capsys):
    model, prog, inputs = cnn
    y0 = prog.run(inputs, device=GoldenDevice(prog.cfg))["prob"]
    y = prog.run(inputs, backend="verilator", timeline=True)["prob"]
    np.testing.assert_array_equal(y, y0)
    lr = prog.last_run
    _check_timeline(lr["timeline"], lr["counters"], exact_cycles=False)
    spw = tmp_path / "m.spw"
    prog.save(spw)
    np.save(tmp_path / "x.npy", inputs["x"])
    rc = main(["run", str(spw), "--backend", "verilator", "--input", f"x={tmp_path / 'x.npy'}",
               "--output-dir", str(tmp_path / "out"), "--timeline", str(tmp_path / "t.json"),
               "--timeline", str(tmp_path / "t.png"), "-q"])
    assert rc == 0
    ch = json.loads((tmp_path / "t.json").read_text())
    assert any(ev["ph"] == "X" for ev in ch["traceEvents"])
    assert "utilization per node" in capsys.readouterr().out


# -- CLI: break and save ----------------------------------------------------------------------------
def test_cli_run_break_and_save(cnn, tmp_path, capsys):
    model, prog, inputs = cnn
    spw = tmp_path / "m.spw"
    prog.save(spw)
    np.save(tmp_path / "x.npy", inputs["x"])
    prog.run(inputs, device=GoldenDevice(prog.cfg))
    ref = dict(prog.last_run["values"])
    rc = main(["run", str(spw), "--input", str(tmp_path / "x.npy"), "--output-dir", str(tmp_path / "o"),
               "--break-at", "conv2", "--save", "all", "--save-dir", str(tmp_path / "s"), "-q"])
    out = capsys.readouterr().out
    assert rc == 0 and "break after conv2" in out and "re-read from device memory: same" in out
    b = np.load(tmp_path / "o" / "break_conv2_r2.npy")
    np.testing.assert_array_equal(b, (ref["r2"] * np.float64(prog.scales["r2"])).astype(np.float32))
    for v in prog.last_run["saved"]:
        np.testing.assert_array_equal(np.load(tmp_path / "s" / f"{v}.npy"),
                                      (ref[v] * np.float64(prog.scales[v])).astype(np.float32))
    onnx_path = tmp_path / "m.onnx"
    onnx.save(model, onnx_path)
    rc = main(["run", str(onnx_path), "--input", str(tmp_path / "x.npy"), "--output-dir", str(tmp_path / "o2"),
               "--preset", PRESET, "--save", "pool1,add", "-q"])
    assert rc == 0 and {p.name for p in (tmp_path / "o2").iterdir()} >= {"p1.npy", "a.npy", "prob.npy"}
    assert main(["run", str(spw), "--output-dir", str(tmp_path / "o3"), "--input", str(tmp_path / "x.npy"),
                 "--waves", str(tmp_path / "w.fst")]) == 2
    assert "need --backend verilator" in capsys.readouterr().err


# -- waveforms ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.verilator
def test_cli_waves_window(cnn, tmp_path):
    """--waves with a window on the --trace-fst harness build (slow: one extra build)."""
    model, prog, inputs = cnn
    spw = tmp_path / "m.spw"
    prog.save(spw)
    np.save(tmp_path / "x.npy", inputs["x"])
    rc = main(["run", str(spw), "--backend", "verilator", "--input", str(tmp_path / "x.npy"),
               "--output-dir", str(tmp_path / "o"), "--waves", str(tmp_path / "w.fst"), "--window", "100:600", "-q"])
    assert rc == 0
    data = (tmp_path / "w.fst").read_bytes()
    assert len(data) > 1000
    prog.run(inputs, device=GoldenDevice(prog.cfg))
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "prob.npy"), prog.run(inputs)["prob"])


def test_concurrent_events_recorder_is_passive(cnn):
    """run_concurrent(events=...) records idle intervals without changing the run: same cycles,
    counters, busy timeline and memory as without it; the recorded wait/stall sums equal the
    counters."""
    from sparrow.golden import Machine
    from sparrow.golden.concurrent import run_concurrent

    model, prog, inputs = cnn
    st = next(s for s in prog.manifest["steps"] if s["kind"] == "acc")
    p = prog.programs[st["program"]]
    results = []
    for events in (None, []):
        m = Machine(prog.cfg)
        for addr, data in p["segments"]:
            m.write_dram(addr, data)
        res = run_concurrent(m, m.decode_program(p["program"]), check_races=False, events=events)
        results.append((res, events, m.read_dram(0, prog.cfg.dram_bytes)))
    (r0, _, mem0), (r1, ev, mem1) = results
    assert r0.ok and (r0.cycles, r0.counters, r0.timeline) == (r1.cycles, r1.counters, r1.timeline)
    np.testing.assert_array_equal(mem0, mem1)
    for kind in ("wait", "stall"):
        for e in ("load", "matmul", "vector", "store"):
            total = sum(t1 - t0 for k, eng, _, _, t0, t1 in ev if k == kind and eng.name.lower() == e)
            assert total == r1.counters[f"{e}_{kind}"]
    assert all(sem is not None for k, _, _, sem, _, _ in ev if k == "wait")


def test_break_state_scratchpads(cnn):
    """While halted on the golden backend the scratchpads can be read; not on other devices."""
    model, prog, inputs = cnn
    got = {}

    def on_break(s):
        got["acc"] = s.spad("acc")
        got["act"] = s.spad("act")
        with pytest.raises(ValueError, match="'act', 'wgt' or 'acc'"):
            s.spad("dram")
    prog.run(inputs, break_at="conv1", on_break=on_break)
    assert got["acc"].shape == (prog.cfg.acc_depth, prog.cfg.cols) and got["acc"].dtype == np.int32
    assert np.any(got["acc"] != 0) and np.any(got["act"] != 0)  # conv1 accumulated and requantized


def test_cli_compile_save_then_break_on_spw(cnn, tmp_path, capsys):
    """`sparrow compile --save all` keeps every intermediate, so --break-at works on the .spw alone,
    and the manifest names each node's output value (no frontend re-import needed)."""
    model, prog, inputs = cnn
    onnx_path = tmp_path / "m.onnx"
    onnx.save(model, onnx_path)
    spw = tmp_path / "m.spw"
    assert main(["compile", str(onnx_path), "-o", str(spw), "--preset", PRESET, "--save", "all", "-q"]) == 0
    from sparrow.compiler import load

    saved = load(spw)
    assert saved.manifest["node_outputs"]["conv2"] == ["r2"]
    np.save(tmp_path / "x.npy", inputs["x"])
    saved.run(inputs, device=GoldenDevice(saved.cfg))  # uninterrupted run of the same program
    ref = dict(saved.last_run["values"])
    rc = main(["run", str(spw), "--input", str(tmp_path / "x.npy"), "--output-dir", str(tmp_path / "o"),
               "--break-at", "conv2", "-q"])
    assert rc == 0, capsys.readouterr().err
    b = np.load(tmp_path / "o" / "break_conv2_r2.npy")
    np.testing.assert_array_equal(b, (ref["r2"] * np.float64(saved.scales["r2"])).astype(np.float32))
