"""Formal property checks (sparrow.sim.formal) at CI-affordable depths, and their mutants.

Every registered check runs on the real design at its ``ci_depth`` (or its depth) and must pass
(``xfail`` where a real bug was found and reported). Every mutant (the same wrapper with a
deliberately injected bug) must produce a counterexample, so none of the properties is one that
cannot fail. The full depths run under ``-m slow`` and in ``make formal``.
"""

import pytest
from amaranth.hdl import Assert, Cover, Signal
from amaranth.hdl._ast import AnySeq

from sparrow.sim import formal
from sparrow.sim.formal import FormalCheck, FormalWrapper, run_check

ALL = formal.checks(include_slow=True)
#: Checks run only under -m slow (minutes each); their mutants still run in the default set.
SLOW_IN_TESTS = {"dma.load_region_cover"}


def _params(items, slow_if):
    return [pytest.param(*it, id=ident, marks=[pytest.mark.slow] if slow_if(it) else [])
            for ident, it in items]


def _check_cases():
    for c in ALL:
        yield c.name, (c, c.ci_depth or c.depth)


def _deep_cases():
    for c in ALL:
        if c.ci_depth and c.ci_depth < c.depth:
            yield c.name + "@full", (c, c.depth)


def _mutant_cases():
    for c in ALL:
        for mu in c.mutants:
            yield f"{c.name}~{mu}", (c, mu)


@pytest.mark.parametrize("check, depth", _params(_check_cases(), lambda it: it[0].slow or it[0].name in SLOW_IN_TESTS))
def test_property_holds(check, depth, tmp_path):
    res = run_check(check, depth=depth, workdir=tmp_path)
    if check.xfail and res.status == "fail":
        pytest.xfail(f"{check.xfail}: {res.detail} at step {res.step}")
    assert res.status == "pass", (f"{check.name} ({check.mode}, depth {depth}): {res.status} {res.detail}\n"
                                  f"{res.log[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("check, depth", _params(_deep_cases(), lambda it: False))
def test_property_holds_full_depth(check, depth, tmp_path):
    res = run_check(check, depth=depth, workdir=tmp_path)
    if check.xfail and res.status == "fail":
        pytest.xfail(f"{check.xfail}: {res.detail} at step {res.step}")
    assert res.status == "pass", f"{check.name} ({check.mode}, depth {depth}): {res.status} {res.detail}"


@pytest.mark.parametrize("check, mutant", _params(_mutant_cases(), lambda it: it[0].slow))
def test_mutant_is_caught(check, mutant, tmp_path):
    res = run_check(check, mutant=mutant, workdir=tmp_path)
    assert res.status == "fail", (f"mutant {mutant} of {check.name} ({check.mutants[mutant]}) not caught: "
                                  f"{res.status}\n{res.log[-2000:]}")
    if check.mode != "cover":
        assert (tmp_path / "trace.vcd").exists(), "no counterexample trace written"


def test_every_check_has_mutants_or_is_a_cover():
    for c in ALL:
        assert c.mutants or c.mode == "cover" or c.xfail, c.name


# -- the runner itself ---------------------------------------------------------------------------

class _Counter(FormalWrapper):
    """A counter that may step by one up to ``limit``; asserts it stays below ``bound``."""

    def __init__(self, bound, limit=9, cover=None):
        super().__init__()
        self.bound, self.limit, self.cover = bound, limit, cover

    def build(self, m):
        c = Signal(4)
        with m.If(AnySeq(1) & (c < self.limit)):
            m.d.sync += c.eq(c + 1)
        m.d.comb += Assert(c < self.bound, "counter reached its bound")
        if self.cover is not None:
            m.d.comb += Cover(c == self.cover)


def _adhoc(bound, mode, depth, **kw):
    return FormalCheck("adhoc.counter", lambda mutant: _Counter(bound, **kw), mode, depth, "test")


def test_runner_pass_fail_and_step(tmp_path):
    assert run_check(_adhoc(10, "prove", 2)).status == "pass"
    res = run_check(_adhoc(3, "bmc", 10), workdir=tmp_path)
    assert res.status == "fail" and res.step == 3
    assert "counter reached its bound" in res.detail
    assert res.trace and (tmp_path / "trace.vcd").exists()
    # not reachable within the depth: BMC passes, so depth matters
    assert run_check(_adhoc(3, "bmc", 3)).status == "pass"


def test_runner_induction_and_cover():
    # c < 12 holds from reset (limit 9) but is not 1-inductive? it is: c < 12 and c+1 only below 9
    assert run_check(_adhoc(12, "prove", 1)).status == "pass"
    assert run_check(_adhoc(10, "cover", 8, cover=5)).status == "pass"
    res = run_check(_adhoc(10, "cover", 4, cover=5))
    assert res.status == "fail" and "Unreached cover" in res.detail


def test_runner_rejects_bad_arguments():
    chk = ALL[0]
    with pytest.raises(ValueError, match="depth"):
        run_check(chk, depth=0)
    with pytest.raises(ValueError, match="mutant"):
        run_check(chk, mutant="no-such-mutant")
    with pytest.raises(ValueError, match="mode"):
        FormalCheck("x", lambda m: None, "sim", 1, "")
    with pytest.raises(ValueError, match="no formal check"):
        formal.checks(["no.such.check"])


def test_cli_list_and_run(capsys):
    assert formal.main(["--list", "--all"]) == 0
    out = capsys.readouterr().out
    assert all(c.name in out for c in ALL)
    assert formal.main(["codec.roundtrip_4"]) == 0
    out = capsys.readouterr().out
    assert "codec.roundtrip_4" in out and "no cex" in out and "0 failing" in out
    assert formal.main(["no.such"]) == 2
