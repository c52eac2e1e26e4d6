"""The benchmark (`make bench`): candidates, runner, report; its data stays in benchmarks/."""

from pathlib import Path

# The checkout the package is installed from (editable): the benchmark reads the roles'
# defaults there, and its data (post.lua, images/, latest.json, README.md, results/).
REPO = Path(__file__).resolve().parents[3]
DATA_DIR = REPO / "benchmarks"
