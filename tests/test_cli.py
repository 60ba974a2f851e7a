"""The `sparrow` command line: asm/disasm round trips, presets, one-line errors with exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparrow.cli import main
from sparrow.config import PRESETS
from sparrow.isa import Program, assemble, make

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_subcommands_subprocess():
    r = subprocess.run([sys.executable, "-m", "sparrow.cli", "--help"], capture_output=True, text=True,
                       check=True)
    for cmd in ("asm", "disasm", "presets"):
        assert cmd in r.stdout
    # no subcommand is a usage error
    r = subprocess.run([sys.executable, "-m", "sparrow.cli"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.s")), ids=lambda p: p.name)
def test_asm_disasm_round_trip_examples(tmp_path, capsys, example):
    out = tmp_path / "p.bin"
    rc, stdout, err = run(capsys, "asm", str(example), "-o", str(out), "--preset", "small")
    assert rc == 0 and err == ""
    blob = out.read_bytes()
    assert blob == bytes(assemble(example.read_text()))
    for extra in ([], ["--numbered"]):
        rc, text, err = run(capsys, "disasm", str(out), "--preset", "small", *extra)
        assert rc == 0 and err == ""
        assert bytes(assemble(text)) == blob
        if extra:
            assert text.splitlines()[0].rstrip().endswith("# 0")
        # the disassembly itself re-assembles through the CLI to identical bytes
        s2 = tmp_path / "again.s"
        s2.write_text(text)
        rc, _, _ = run(capsys, "asm", str(s2), "-o", str(tmp_path / "again.bin"), "-q")
        assert rc == 0 and (tmp_path / "again.bin").read_bytes() == blob


def test_asm_default_output_name(tmp_path, capsys):
    src = tmp_path / "prog.s"
    src.write_text("nop engine=vector signal=1\nhalt\n")
    rc, out, _ = run(capsys, "asm", str(src))
    assert rc == 0 and "2 instructions" in out
    assert Program.from_bytes((tmp_path / "prog.bin").read_bytes()) == Program(
        [make("nop", engine="vector", signal_sem=1, signal_en=1), make("halt")])


def test_asm_error_names_file_line_field(tmp_path, capsys):
    src = tmp_path / "bad.s"
    src.write_text("nop\n# comment\nload spad=act rows=2000\n")
    rc, out, err = run(capsys, "asm", str(src), "-o", str(tmp_path / "o.bin"))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert str(src) in err and "line 3" in err and "'rows'" in err
    assert not (tmp_path / "o.bin").exists()


def test_asm_validates_against_preset(tmp_path, capsys):
    src = tmp_path / "lb.s"
    src.write_text("load spad=act line_bytes=6\n")     # legal for cols=8, not for cols=4
    assert run(capsys, "asm", str(src), "-o", str(tmp_path / "a.bin"), "--preset", "default")[0] == 0
    rc, _, err = run(capsys, "asm", str(src), "-o", str(tmp_path / "b.bin"), "--preset", "small")
    assert rc == 2 and "'line_bytes'" in err and "line 1" in err
    blob = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "a2.bin").write_bytes(blob)
    rc, _, err = run(capsys, "disasm", str(tmp_path / "a2.bin"), "--preset", "small")
    assert rc == 2 and "instruction 0" in err and "'line_bytes'" in err


def test_disasm_bad_word_names_index_and_field(tmp_path, capsys):
    blob = bytes(Program([make("nop"), make("halt")])) + (13).to_bytes(16, "little")
    f = tmp_path / "bad.bin"
    f.write_bytes(blob)
    rc, out, err = run(capsys, "disasm", str(f))
    assert rc == 2 and out == ""
    assert str(f) in err and "instruction 2" in err and "'opcode'" in err
    assert len(err.strip().splitlines()) == 1
    f.write_bytes(blob[:20])
    rc, _, err = run(capsys, "disasm", str(f))
    assert rc == 2 and "multiple of 16" in err


def test_missing_file(tmp_path, capsys):
    for cmd in ("asm", "disasm"):
        rc, _, err = run(capsys, cmd, str(tmp_path / "nope"))
        assert rc == 2 and "nope" in err and "cannot read" in err
        assert "Traceback" not in err


def test_missing_file_subprocess_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sparrow.cli", "disasm", str(tmp_path / "x.bin")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "x.bin" in r.stderr


def test_presets_table_and_json(capsys):
    rc, out, _ = run(capsys, "presets")
    assert rc == 0
    header = out.splitlines()[0].split()
    assert header == ["field", *PRESETS]
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[2:]}
    assert rows["cols"] == [str(p.cols) for p in PRESETS.values()]
    assert rows["act_depth"] == [str(p.act_depth) for p in PRESETS.values()]
    rc, out, _ = run(capsys, "presets", "--json")
    assert rc == 0
    d = json.loads(out)
    assert set(d) == set(PRESETS)
    for name, p in PRESETS.items():
        assert d[name] == p.to_dict()


def test_unknown_preset_is_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["asm", "x.s", "--preset", "huge"])
    assert ei.value.code == 2


def test_console_script_installed(tmp_path):
    """The `sparrow` entry point (pyproject [project.scripts]) runs main()."""
    exe = Path(sys.executable).parent / "sparrow"
    assert exe.exists(), "console script missing: reinstall the package (make install)"
    r = subprocess.run([str(exe), "presets", "--json"], capture_output=True, text=True, check=True)
    assert set(json.loads(r.stdout)) == set(PRESETS)
