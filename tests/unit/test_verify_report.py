"""The failed-test report `make molecule` prints last, read from a JUnit XML pytest wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelserve.testbed import verify_report

SUITE = """
import pytest

def test_passes():
    assert True

def test_fails():
    assert 1 + 1 == 3, "the sum is off\\nsecond line"

def test_fails_with_a_whole_output():
    output = "\\nPLAY [site] ****\\nok: [vm]"
    assert "production: blue" in output, output

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_errors(broken):
    pass

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
"""


@pytest.fixture(scope="module")
def junit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JUnit XML of a real pytest run: one pass, one failure, one error, one skip."""
    directory = tmp_path_factory.mktemp("suite")
    (directory / "test_sample.py").write_text(SUITE)
    report = directory / "out" / "verify.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", str(directory / "test_sample.py")],
        cwd=directory, capture_output=True, check=False,
    )  # fmt: skip
    return report


def test_names_each_failed_and_erring_test_with_its_first_line_and_statement(junit: Path) -> None:
    lines = list(verify_report.failures(junit))
    assert len(lines) == 3
    assert (
        "FAILURE test_sample::test_fails: AssertionError: the sum is off"
        ' (at: assert 1 + 1 == 3, "the sum is off\\nsecond line")'
    ) in lines
    # A message that is a playbook's output: the failing statement says what was checked.
    whole = next(line for line in lines if "test_fails_with_a_whole_output" in line)
    assert whole.endswith('(at: assert "production: blue" in output, output)'), whole
    assert "PLAY" not in whole
    erred = next(line for line in lines if line.startswith("ERROR"))
    assert "test_sample::test_errors" in erred
    assert "fixture" in erred


def test_prints_count_and_lines_and_says_why_a_report_is_missing_or_unreadable(
    junit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "never-written.xml"
    cut = tmp_path / "cut.xml"  # as left by a verify killed while pytest wrote it
    cut.write_bytes(junit.read_bytes()[: junit.stat().st_size // 2])
    assert verify_report.main([str(missing), str(cut), str(junit)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{missing}: no report (verify did not run or did not finish)"
    assert out[1].startswith(f"{cut}: unreadable report (")
    assert out[2] == f"{junit}: 3 failed verify test(s)"
    assert len(out) == 6
    assert all(line.startswith("  ") for line in out[3:])


def test_a_passing_run_reports_none(tmp_path: Path) -> None:
    report = tmp_path / "ok.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest"><testcase classname="a" name="t"/>'
        "</testsuite></testsuites>"
    )
    assert list(verify_report.failures(report)) == []
