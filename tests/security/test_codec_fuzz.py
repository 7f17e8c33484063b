"""A CI-sized sample of the codec fuzzing in benchmarks/fuzz_codecs.py: the same generators
(``gridpilot.protocols.fuzzing``), 2,000 inputs per codec with a fixed seed. Every input is
accepted or refused with the codec's documented errors, accepted ones re-encode to a fixed
point, and none takes long. The long run (a million per codec) is the benchmark's."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from gridpilot.protocols.fuzzing import Finding, Target, describe, input_size, targets

pytestmark = pytest.mark.security

INPUTS = 2_000
SEED = 12
# Generous: the benchmark's limit is 10 ms (per started 4 KiB of input); CI machines are shared.
# An input over it is timed three more times and only the fastest counts.
LIMIT_S = 0.1
SIZE_UNIT = 4096

TARGETS = {t.name: t for t in targets()}


def _slowest_rerun(target: Target, data: Any) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        target.check(data)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("name", TARGETS)
def test_codec_keeps_its_contract_on_random_and_mutated_input(name: str) -> None:
    target = TARGETS[name]
    rng = random.Random(f"{SEED}:{name}")
    findings: list[str] = []
    accepted = rejected = 0
    for _ in range(INPUTS):
        data = target.make(rng)
        t0 = time.perf_counter()
        outcome = target.check(data)
        elapsed = time.perf_counter() - t0
        limit = LIMIT_S * max(1, -(-input_size(data) // SIZE_UNIT))
        if elapsed > limit and (best := _slowest_rerun(target, data)) > limit:
            findings.append(f"slow ({best * 1e3:.0f} ms): {describe(data)[:300]}")
        if outcome.finding:
            findings.append(f"{outcome.finding}: {describe(data)[:300]}")
        accepted += outcome.accepted
        rejected += not outcome.accepted
    assert not findings, "\n".join(findings[:10])
    # the generators reach both sides of the decoder, else the sample proves little
    assert accepted >= INPUTS // 50, f"only {accepted} of {INPUTS} inputs were accepted"
    if target.errors:
        assert rejected >= INPUTS // 10, f"only {rejected} of {INPUTS} inputs were refused"


def test_the_generators_are_deterministic_for_a_seed() -> None:
    for target in targets():
        a, b = random.Random(3), random.Random(3)
        assert [describe(target.make(a)) for _ in range(20)] == [
            describe(target.make(b)) for _ in range(20)
        ], target.name


def _target(run: Any, roundtrip: Any = None) -> Target:
    return Target(
        name="probe", errors=(ValueError,), make=lambda r: b"", run=run, roundtrip=roundtrip
    )


def test_the_contract_check_reports_an_undocumented_exception() -> None:
    def crash(data: bytes) -> None:
        raise KeyError("missing")

    outcome = _target(crash).check(b"")
    assert not outcome.accepted and outcome.finding.startswith("undocumented KeyError")


def test_the_contract_check_accepts_a_documented_error() -> None:
    def refuse(data: bytes) -> None:
        raise ValueError("bad")

    outcome = _target(refuse).check(b"")
    assert outcome.error == "ValueError" and not outcome.finding and not outcome.accepted


def test_the_contract_check_reports_a_broken_round_trip() -> None:
    def roundtrip(data: bytes, decoded: object) -> None:
        raise Finding("does not re-encode")

    outcome = _target(lambda data: 1, roundtrip).check(b"")
    assert outcome.accepted and outcome.finding == "does not re-encode"


def test_mutations_of_valid_frames_cover_each_kind() -> None:
    """Each mutation kind appears: lying lengths, SYNC runs, truncation and extension."""
    c37 = TARGETS["C37.118 CFG-1/CFG-2 decode"]
    rng = random.Random(1)
    inputs = [c37.make(rng) for _ in range(500)]
    seeds = c37.make.seeds  # type: ignore[attr-defined]
    longest = max(map(len, seeds))
    assert any(x.startswith(b"\xaa\xaa\xaa") for x in inputs)  # a run of SYNC bytes
    assert any(len(x) < 16 for x in inputs)  # cut short
    assert any(len(x) > longest for x in inputs)  # extended
    assert any(len(x) >= 4 and (x[2] << 8 | x[3]) not in (len(x),) for x in inputs)  # lies
