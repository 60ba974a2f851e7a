"""The ``sparrow`` command line.

Subcommands::

    sparrow asm FILE.s [-o OUT.bin] [--preset NAME]     assemble and validate -> binary image
    sparrow disasm FILE.bin [--preset NAME] [--numbered] binary image -> assembly (re-assembles)
    sparrow presets [--json]                            the hardware presets and their fields
    sparrow compile MODEL.onnx -o OUT.spw [--calibration CALIB.npz] [--preset NAME]
                    [--option KEY=VALUE ...] [--cache-stats] [--no-cache] [--cache-dir DIR]
    sparrow run OUT.spw --backend golden|verilator --input NAME=FILE.npy ... --output-dir DIR
                [--break-at LAYER] [--save all|NODE,... --save-dir DIR] [--timeline OUT.json|OUT.png]
                [--waves OUT.fst --window A:B]
    sparrow debug MODEL.onnx [--backend verilator] [--input X.npy] [--dump-dir DIR]  bisection
    sparrow inspect OUT.spw                              partition, steps and estimates

Errors (unreadable file, bad assembly, bad instruction word) print one line naming the file,
the line or instruction index and the field to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import PRESETS, HwConfig, preset
from .isa import IsaError, Program, assemble, disassemble

__all__ = ["main", "build_parser"]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _read(path: str, binary: bool):
    try:
        p = Path(path)
        return p.read_bytes() if binary else p.read_text()
    except UnicodeDecodeError:
        raise CliError(f"{path}: not a text file") from None
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror or e}") from None


def _write(path: str, data: bytes):
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise CliError(f"{path}: cannot write: {e.strerror or e}") from None


def _cmd_asm(args) -> int:
    cfg = preset(args.preset)
    text = _read(args.file, binary=False)
    try:
        prog = assemble(text, cfg=cfg)
    except IsaError as e:
        raise CliError(f"{args.file}: {e}") from None
    out = args.output or str(Path(args.file).with_suffix(".bin"))
    _write(out, bytes(prog))
    if not args.quiet:
        print(f"{out}: {len(prog)} instructions, {len(bytes(prog))} bytes ({cfg.name})")
    return 0


def _cmd_disasm(args) -> int:
    cfg = preset(args.preset)
    blob = _read(args.file, binary=True)
    try:
        prog = Program.from_bytes(blob, cfg=cfg)
    except IsaError as e:
        raise CliError(f"{args.file}: {e}") from None
    sys.stdout.write(disassemble(prog, numbered=args.numbered))
    return 0


def _preset_rows():
    names = list(PRESETS)
    fields = [f.name for f in dataclasses.fields(HwConfig) if f.name != "name"]
    return names, fields


def _cmd_presets(args) -> int:
    names, fields = _preset_rows()
    if args.json:
        print(json.dumps({n: PRESETS[n].to_dict() for n in names}, indent=2, sort_keys=True))
        return 0
    rows = [["field", *names]] + [[f, *(str(getattr(PRESETS[n], f)) for n in names)] for f in fields]
    rows.append(["key", *(PRESETS[n].key() for n in names)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        print("  ".join(cells).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _compile_options(items) -> dict:
    """``--option KEY=VALUE`` pairs -> back-end options (VALUE parsed as JSON, else a string)."""
    opts = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CliError(f"--option {item!r}: expected KEY=VALUE")
        try:
            opts[key] = json.loads(val)
        except ValueError:
            opts[key] = val
    return opts


def _cmd_compile(args) -> int:
    from .compiler import CompileError, compile as _compile
    options = _compile_options(args.option)
    try:
        prog = _compile(args.model, calibration=args.calibration, preset=args.preset,
                        log=None if args.quiet else (lambda s: print(s, file=sys.stderr)),
                        options=options, cache=not args.no_cache, cache_dir=args.cache_dir,
                        save=_save_arg(args.save))
        prog.save(args.output)
    except CompileError as e:
        raise CliError(f"{args.model}: {e}") from None
    except OSError as e:
        raise CliError(f"{args.output}: cannot write: {e.strerror or e}") from None
    if not args.quiet:
        print(prog.summary())
        print(f"wrote {args.output}")
    if args.cache_stats:
        print(prog.cache_stats.format())
    return 0


def _save_arg(text):
    """``--save all|NODE,...`` -> the ``save=`` argument of ``compile``."""
    if not text:
        return None
    return "all" if text == "all" else [t for t in text.split(",") if t]


def _read_inputs(items, prog_inputs) -> dict:
    import numpy as np

    inputs = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:  # a bare FILE.npy names the only input
            if len(prog_inputs) != 1:
                raise CliError(f"--input {item!r}: expected NAME=FILE.npy (inputs: {', '.join(prog_inputs)})")
            name, path = next(iter(prog_inputs)), item
        try:
            inputs[name] = np.load(path)
        except (OSError, ValueError) as e:
            raise CliError(f"--input {name}: cannot read {path}: {e}") from None
    return inputs


def _parse_window(text):
    if text is None:
        return None
    lo, sep, hi = text.partition(":")
    try:
        lo, hi = int(lo or 0), int(hi) if hi else (1 << 64) - 1
    except ValueError:
        raise CliError(f"--window {text!r}: expected START:END cycles") from None
    if not sep or lo < 0 or hi <= lo:
        raise CliError(f"--window {text!r}: expected START:END cycles with START < END")
    return lo, hi


def _load_program(args):
    """A .spw, or an .onnx compiled here (``--save`` then keeps those intermediates)."""
    from .compiler import CompileError, load
    try:
        if str(args.program).lower().endswith(".onnx"):
            from .debug import compile_debug

            save = _save_arg(args.save)
            if args.break_at and save != "all":
                save = sorted(set(save or []) | {args.break_at})
            return compile_debug(args.program, preset=args.preset, save=save)
        return load(args.program)
    except CompileError as e:
        raise CliError(str(e)) from None


def _cmd_run(args) -> int:
    import numpy as np

    from .compiler import CompileError, InputError
    from .errors import DeviceError
    prog = _load_program(args)
    inputs = _read_inputs(args.input, prog.inputs)
    window = _parse_window(args.window)
    if (args.waves or window) and args.backend != "verilator":
        raise CliError("--waves/--window: need --backend verilator")
    if window and not args.waves:
        raise CliError("--window: give --waves OUT.fst too")
    if args.timeline and args.break_at:
        raise CliError("--timeline and --break-at: use one at a time")
    device = None
    if args.waves:
        from .runtime import Device
        try:
            device = Device(prog.cfg, backend="verilator", waves=args.waves, wave_window=window)
        except (OSError, RuntimeError, ValueError) as e:
            raise CliError(f"--waves {args.waves}: {e}") from None
    out_dir = Path(args.output_dir)
    brk = {}

    def on_break(state):
        brk["state"] = state
        print(f"break after {state.node} (step {state.step}, {state.stop} at instruction {state.cut}): "
              f"engines halted {', '.join(state.halted) or '-'}, pcs {state.pcs}")
        for v in state.outputs:
            a = state.value(v)
            print(f"  {v}: shape {list(a.shape)}, min {a.min():.4g}, max {a.max():.4g}, "
                  f"nonzero {np.count_nonzero(a)}/{a.size}")
        if state.device is not None and state.stop == "breakpoint":
            for v in state.outputs:  # what the device memory holds right now
                if v in state.places:
                    same = np.array_equal(state.read(v), state.int8[v])
                    print(f"  {v} re-read from device memory: {'same' if same else 'DIFFERENT'}")
    try:
        outs = prog.run(inputs, backend=args.backend, device=device,
                        progress=not args.quiet and sys.stderr.isatty(),
                        break_at=args.break_at, on_break=on_break if args.break_at else None,
                        timeline=bool(args.timeline))
    except (InputError, CompileError, ValueError) as e:
        hint = " (or pass MODEL.onnx to `sparrow run`, which compiles it so)" if "not kept" in str(e) else ""
        raise CliError(f"{e}{hint}") from None
    except DeviceError as e:
        raise CliError(f"device error: {e}") from None
    finally:
        if device is not None:
            device.close()
    lr = prog.last_run
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, a in outs.items():
            np.save(out_dir / f"{name}.npy", a)
            written.append(out_dir / f"{name}.npy")
        if "state" in brk:
            st = brk["state"]
            for v in st.outputs:
                f = out_dir / f"break_{st.node}_{v}.npy"
                np.save(f, st.value(v))
                written.append(f)
        if args.save:
            save_dir = Path(args.save_dir or out_dir)
            save_dir.mkdir(parents=True, exist_ok=True)
            want = _save_arg(args.save)
            saved = dict(lr["saved"])
            if want != "all":
                names = {}
                for w in want:  # a node name or a value name
                    vals = (prog.node_outputs(w) if w in prog.nodes else []) or [w]
                    for v in vals:
                        names[v] = w
                missing = [v for v in names if v not in lr["values"]]
                if missing:
                    raise CliError(f"--save: {', '.join(missing)} not kept by this program; compile the model "
                                   f"with save (or pass the .onnx to run)")
                saved = {v: (lr["values"][v].astype(np.float64) * prog.scales[v]).astype(np.float32) for v in names}
            for v, a in saved.items():
                f = save_dir / f"{v}.npy"
                np.save(f, a)
                written.append(f)
        if args.timeline:
            tl = lr["timeline"]
            for path in args.timeline:
                tl.save(path)
                written.append(Path(path))
    except OSError as e:
        raise CliError(f"cannot write: {e.strerror or e} ({e.filename})") from None
    print(f"cycles: {lr['cycles']}")
    for k in sorted(set(lr["counters"]) - {"cycles"}):
        print(f"  {k}: {lr['counters'][k]}")
    if args.timeline:
        print("utilization per node (busy cycles / node span):")
        print(lr["timeline"].format_utilization())
    if args.waves:
        written.append(Path(args.waves))
    for f in written:
        print(f"wrote {f}")
    return 0


def _cmd_debug(args) -> int:
    from . import debug
    from .compiler import CompileError, InputError
    try:
        prog = debug.compile_debug(args.model, preset=args.preset, calibration=args.calibration)
        inputs = _read_inputs(args.input, prog.inputs) or None
        hook = debug.corrupt_constants(prog, args.inject_fault, seed=args.seed) if args.inject_fault else None
        rep = debug.bisect(args.model, inputs=inputs, backend=args.backend, prog=prog, before_step=hook,
                           dump_dir=args.dump_dir, seed=args.seed,
                           log=None if args.quiet else (lambda s: print(s, file=sys.stderr)))
    except (CompileError, InputError, ValueError) as e:
        raise CliError(str(e)) from None
    print(rep.format())
    return 0 if rep.ok else 1


def _cmd_inspect(args) -> int:
    from .compiler import CompileError, load
    try:
        print(load(args.program).summary())
    except CompileError as e:
        raise CliError(str(e)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparrow", description="Sparrow accelerator tools: assembler, disassembler, presets, compiler.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("asm", help="assemble a .s file into a binary program image",
                       description="Assemble FILE, validate it against the preset's configuration "
                                   "and write the 16-bytes-per-instruction little-endian image.")
    p.add_argument("file", metavar="FILE.s")
    p.add_argument("-o", "--output", metavar="OUT.bin", help="output image (default: FILE.bin)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="hardware preset to validate against (default: default)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_asm)

    p = sub.add_parser("disasm", help="disassemble a binary program image",
                       description="Decode FILE (validated against the preset) and print assembly that "
                                   "re-assembles to the same bytes.")
    p.add_argument("file", metavar="FILE.bin")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="hardware preset to validate against (default: default)")
    p.add_argument("--numbered", action="store_true", help="append '# index' to every instruction")
    p.set_defaults(func=_cmd_disasm)

    p = sub.add_parser("presets", help="list the hardware presets and their fields")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("compile", help="compile an ONNX model into a .spw program")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", metavar="OUT.spw", required=True)
    p.add_argument("--calibration", metavar="CALIB.npz", help="calibration inputs {input name: array}")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="back-end option (VALUE is JSON, else a string); repeatable")
    p.add_argument("--cache-stats", action="store_true",
                   help="print the compile cache's hits and misses per stage")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the compile cache")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="compile cache directory (default: $SPARROW_CACHE_DIR, else ~/.cache/sparrow)")
    p.add_argument("--save", metavar="all|NODE,...",
                   help="keep these intermediates in memory (for run --save / --break-at)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run", help="run a compiled .spw program (or compile and run an .onnx)")
    p.add_argument("program", metavar="OUT.spw", help="a .spw, or a MODEL.onnx compiled first (--preset, --save)")
    p.add_argument("--backend", default="golden", choices=["golden", "verilator"])
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="preset when compiling an .onnx")
    p.add_argument("--break-at", metavar="LAYER",
                   help="halt every engine after graph node LAYER, report and write its tensor, resume")
    p.add_argument("--save", metavar="all|NODE,...",
                   help="write saved intermediates (node or value names) as .npy")
    p.add_argument("--save-dir", metavar="DIR", help="directory for --save (default: --output-dir)")
    p.add_argument("--timeline", action="append", metavar="OUT.json|OUT.png",
                   help="engine activity: Chrome-trace JSON (Perfetto) or PNG; repeatable")
    p.add_argument("--waves", metavar="OUT.fst", help="FST waveform of the run (verilator)")
    p.add_argument("--window", metavar="A:B", help="harness cycles [A, B) dumped to --waves")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("debug", help="find the first node whose output differs on a backend (bisection)")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--backend", default="verilator", choices=["golden", "verilator"])
    p.add_argument("--input", action="append", metavar="[NAME=]FILE.npy", help="default: seeded noise")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--calibration", metavar="CALIB.npz")
    p.add_argument("--dump-dir", metavar="DIR", help="write the diverging node's tensors here")
    p.add_argument("--inject-fault", metavar="NODE",
                   help="corrupt NODE's weights in the device image first (to see bisection work)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_debug)

    p = sub.add_parser("inspect", help="show a .spw program's partition, steps and estimates")
    p.add_argument("program", metavar="OUT.spw")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``sparrow`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"sparrow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
