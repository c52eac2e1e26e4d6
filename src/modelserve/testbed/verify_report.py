"""The verify tests that failed, read from the JUnit XML a Molecule scenario's verify wrote.

After a failed `molecule test`, Molecule's destroy and its recap fill the last screen, and
a CI log that keeps only its end loses pytest's own summary. `make molecule` prints this
report last instead: one line per failed or erroring test, with the first line of its
message and the statement pytest marked as failing (a message that is a playbook's whole
output says nothing in its first line), or one line saying why there is no report (verify
did not run, or was killed while pytest wrote it).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

MESSAGE_CHARS = 200


def failures(report: Path) -> Iterator[str]:
    """One line per test case of `report` that failed or erred."""
    for case in ET.parse(report).getroot().iter("testcase"):
        for outcome in ("failure", "error"):
            problem = case.find(outcome)
            if problem is None:
                continue
            test = f"{case.get('classname', '')}::{case.get('name', '')}"
            message = (problem.get("message") or problem.text or "").strip()
            first_line = message.splitlines()[0][:MESSAGE_CHARS] if message else ""
            where = failing_statement(problem.text or "")
            at = f" (at: {where[:MESSAGE_CHARS]})" if where else ""
            yield f"{outcome.upper()} {test}: {first_line}{at}"


def failing_statement(traceback: str) -> str:
    """The last source line pytest's traceback marks with '>': where the test failed."""
    marked = [line[1:].strip() for line in traceback.splitlines() if line.startswith(">")]
    return marked[-1] if marked else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="JUnit XML files")
    args = parser.parse_args(argv)
    for report in args.reports:
        if not report.is_file():
            print(f"{report}: no report (verify did not run or did not finish)")
            continue
        try:
            lines = list(failures(report))
        except ET.ParseError as error:
            print(f"{report}: unreadable report ({error})")
            continue
        print(f"{report}: {len(lines)} failed verify test(s)")
        for line in lines:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
