"""The ``sparrow`` command line.

Subcommands::

    sparrow asm FILE.s [-o OUT.bin] [--preset NAME]     assemble and validate -> binary image
    sparrow disasm FILE.bin [--preset NAME] [--numbered] binary image -> assembly (re-assembles)
    sparrow presets [--json]                            the hardware presets and their fields
    sparrow compile MODEL.onnx -o OUT.spw [--calibration CALIB.npz] [--preset NAME]
                    [--option KEY=VALUE ...] [--cache-stats] [--no-cache] [--cache-dir DIR]
    sparrow run OUT.spw --backend golden|verilator --input NAME=FILE.npy ... --output-dir DIR
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
                        options=options, cache=not args.no_cache, cache_dir=args.cache_dir)
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


def _cmd_run(args) -> int:
    import numpy as np

    from .compiler import CompileError, InputError, load
    try:
        prog = load(args.program)
    except CompileError as e:
        raise CliError(str(e)) from None
    inputs = {}
    for item in args.input or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise CliError(f"--input {item!r}: expected NAME=FILE.npy")
        try:
            inputs[name] = np.load(path)
        except (OSError, ValueError) as e:
            raise CliError(f"--input {name}: cannot read {path}: {e}") from None
    try:
        outs = prog.run(inputs, backend=args.backend, progress=not args.quiet and sys.stderr.isatty())
    except (InputError, CompileError) as e:
        raise CliError(str(e)) from None
    out_dir = Path(args.output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, a in outs.items():
            np.save(out_dir / f"{name}.npy", a)
    except OSError as e:
        raise CliError(f"{out_dir}: cannot write: {e.strerror or e}") from None
    lr = prog.last_run
    print(f"cycles: {lr['cycles']}")
    for k in sorted(set(lr["counters"]) - {"cycles"}):
        print(f"  {k}: {lr['counters'][k]}")
    for name in outs:
        print(f"wrote {out_dir / (name + '.npy')}")
    return 0


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
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run", help="run a compiled .spw program")
    p.add_argument("program", metavar="OUT.spw")
    p.add_argument("--backend", default="golden", choices=["golden", "verilator"])
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

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
