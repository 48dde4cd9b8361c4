"""Peak memory per piecewise step and block (issue 17): the RSS sampler, the report rows, the summary."""

from __future__ import annotations

import json
import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import lazyreg
from lazyreg.registration.block_report import block_summary, summary_lines
from lazyreg.registration.step_memory import SAMPLER, RssSampler, measure_peak, rss_bytes

MIB = 2**20


def _hog(fixed, moving, *, initial, mib=200):
    """A step that allocates and writes ``mib`` MiB, holds it a moment, frees it: the identity."""
    a = np.ones(mib * MIB // 8)
    time.sleep(0.2)
    del a
    return lazyreg.Affine(initial.matrix, report={"mib": mib})


def _wait(predicate, timeout=2.0):
    end = time.perf_counter() + timeout
    while not predicate() and time.perf_counter() < end:
        time.sleep(0.005)
    return predicate()


def test_sampler_catches_a_known_allocation_and_the_baseline_returns():
    with measure_peak() as peak:
        a = np.ones(200 * MIB // 8)  # written: resident
        time.sleep(0.2)
        del a
    fig = peak.figures()
    assert fig["peak_mib"] >= 150, fig
    assert fig["peak_rss_mib"] >= fig["peak_mib"] + peak.start / MIB - 0.1
    assert (rss_bytes() - peak.start) / MIB < 50  # freed: the process is back near where it began
    with measure_peak() as quiet:  # the next step starts from its own level
        time.sleep(0.03)
    assert 0 <= quiet.figures()["peak_mib"] < 30, quiet.figures()


def test_a_sample_read_before_a_measurement_opened_is_not_counted_in_it():
    """The sampler read the RSS while the previous step still held its memory, and the next step's
    measurement opened before that sample was recorded: the sample is the previous step's."""
    low, high = 100 * MIB, 300 * MIB
    in_read, proceed = threading.Event(), threading.Event()
    main = threading.current_thread()
    sampler_reads = []

    def read():
        if threading.current_thread() is main:
            return low
        sampler_reads.append(1)
        if len(sampler_reads) > 1:
            return low  # the memory was freed
        in_read.set()
        proceed.wait(5)
        return high  # read while the first step held its memory

    s = RssSampler(interval=0.001, read=read)
    try:
        first = s.start()
        assert in_read.wait(5)  # the sampler is reading while the first step still holds memory
        s.stop(first)
        second = s.start()  # the next step opens before that sample is recorded
        proceed.set()
        assert _wait(lambda: s.samples >= 3)  # the stale sample recorded, then fresh ones
        s.stop(second)
    finally:
        proceed.set()
        s.close()
    assert first.figures()["peak_mib"] == 0.0  # closed before the sample was recorded
    assert second.figures() == {"peak_mib": 0.0, "peak_rss_mib": 100.0}  # not the stale 300 MiB


def test_block_and_step_rows_record_the_peak_of_a_step_that_allocates():
    lazyreg.register_step("test_hog_memory", _hog, replace=True)
    fixed, moving, _, _ = lazyreg.data.warped_pair((32, 32, 32), seed=3)
    steps = [("test_hog_memory", {"mib": 200}), ("test_hog_memory", {"mib": 0})]
    f = lazyreg.align_piecewise(fixed, moving, steps, blocksize=32, foreground_fraction=0.0).compute(scheduler="synchronous")
    (row,) = f.report
    big, small = row["steps"]
    assert big["peak_mib"] >= 150 and 0 <= small["peak_mib"] < 50, row["steps"]
    assert row["peak_mib"] >= big["peak_mib"] - 1 and row["peak_rss_mib"] >= big["peak_rss_mib"] - 1


def test_every_row_of_a_real_piecewise_run_has_peak_memory_and_the_summary_tells_it():
    fixed, moving, _, _ = lazyreg.data.warped_pair((32, 32, 64), seed=2)
    f = lazyreg.align_piecewise(fixed, moving, blocksize=32, quality="fast", foreground_fraction=0.05).compute(scheduler="threads")
    report = json.loads(json.dumps(f.report))  # JSON-serialisable as it is
    assert any(r["steps"] for r in report), report
    for r in report:
        assert isinstance(r["peak_mib"], float) and 0 <= r["peak_mib"] <= r["peak_rss_mib"], r
        for st in r["steps"] or ():
            assert isinstance(st["peak_mib"], float) and 0 <= st["peak_mib"] <= st["peak_rss_mib"], st
    summary = block_summary(report)
    demons = summary["steps"]["demons"]
    assert demons["seconds_max"] >= demons["seconds_median"] > 0 and demons["peak_mib"] >= 0
    assert summary["cost"]["blocks"] == sum(bool(r["steps"]) for r in report)
    text = "\n".join(summary_lines(summary))
    assert re.search(r"^step demons: [\d.]+ s median, [\d.]+ s max, \d+ MiB peak$", text, re.M), text
    assert re.search(r"^cost of the \d+ blocks? that ran steps: .* MiB peak \(reading inputs: [\d.]+ s median\)$", text, re.M), text


def test_the_command_line_summary_prints_the_cost_per_step():
    from lazyreg.cli.align_commands import _say_piecewise

    steps = [{"step": "demons", "kept": True, "reason": None, "seconds": s, "peak_mib": p} for s, p in ((1.0, 90.0), (3.0, 180.4), (2.0, 60.0))]
    blocks = [{"index": (0, 0, i), "status": "ok", "reason": None, "metric_before": 0.5, "metric_after": 0.6,
               "steps": [st], "seconds": st["seconds"] + 0.5, "seconds_inputs": 0.1, "peak_mib": st["peak_mib"] + 20} for i, st in enumerate(steps)]
    said = []
    session = SimpleNamespace(say=said.append, info=said.append)
    _say_piecewise(session, blocks, 5.0, {"before": 0.5, "after": 0.6, "jacobian": {"folded_fraction": 0.0}})
    assert "  step demons: 2.0 s median, 3.0 s max, 180 MiB peak" in said, said
    assert "  cost of the 3 blocks that ran steps: 2.5 s median, 3.5 s max, 200 MiB peak (reading inputs: 0.10 s median)" in said


def test_old_reports_without_cost_figures_print_no_cost_line():
    rows = [{"index": (0, 0, 0), "status": "ok", "reason": None, "metric_before": 0.5, "metric_after": 0.6,
             "steps": [{"step": "demons", "kept": True, "reason": None}]}]
    s = block_summary(rows)
    assert s["steps"]["demons"]["seconds_median"] is None and s["cost"]["peak_mib"] is None
    assert not [line for line in summary_lines(s) if "median" in line]


def test_the_sampler_thread_waits_when_no_step_is_measured():
    s = RssSampler(interval=0.002)
    try:
        assert s.thread is None and not s.sampling  # nothing started before the first measurement
        with s.measure():
            assert s.sampling and _wait(lambda: s.samples >= 3)
        assert not s.sampling and _wait(lambda: s.waiting)
        time.sleep(0.05)
        n = s.samples
        time.sleep(0.2)
        assert s.samples == n and s.waiting and s.thread.is_alive()  # alive, blocked on its event: no sample taken
        with pytest.raises(ZeroDivisionError), s.measure():  # closed on errors too
            1 / 0
        assert not s.sampling
    finally:
        s.close()
    assert not s.thread.is_alive()


def test_one_shared_thread_serves_concurrent_steps():
    with measure_peak():
        pass
    first = SAMPLER.thread
    peaks = []
    started, held = threading.Barrier(4), threading.Barrier(4)

    def step(mib):
        with measure_peak() as p:
            started.wait()  # every measurement open before any allocation
            a = np.ones(mib * MIB // 8)
            held.wait()  # all four held at once
            time.sleep(0.05)
            del a
        peaks.append(p.figures()["peak_mib"])

    threads = [threading.Thread(target=step, args=(40,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert SAMPLER.thread is first and first.is_alive() and not SAMPLER.sampling
    # RSS is process-wide (as documented): each step's peak counts the others' allocations too
    assert len(peaks) == 4 and min(peaks) >= 120, peaks
    assert sum(t.name == "lazyreg-step-memory" and t is not first for t in threading.enumerate()) == 0
