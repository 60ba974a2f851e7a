"""The shared Verilator/cocotb infrastructure itself: build caching, result checking, seeds."""

import pytest
from amaranth import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from sparrow.sim.cocotb_run import _results, run_cocotb


class Fifo(wiring.Component):
    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.submodules.f = f = fifo.SyncFIFOBuffered(width=8, depth=4)
        m.d.comb += [f.w_data.eq(self.i.payload), f.w_en.eq(self.i.valid), self.i.ready.eq(f.w_rdy),
                     self.o.payload.eq(f.r_data), self.o.valid.eq(f.r_rdy), f.r_en.eq(self.o.ready)]
        return m


@pytest.mark.verilator
def test_stream_helpers_on_verilator():
    run_cocotb(Fifo, name="smoke_fifo", test_module="tb_smoke_stream")


def test_results_parser_counts_failures(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure/></testcase>'
                   '</testsuite></testsuites>')
    assert _results(xml) == (2, 1, ["b"])
    xml.write_text("<testsuites><testsuite/></testsuites>")
    assert _results(xml)[0] == 0
