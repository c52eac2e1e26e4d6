"""Write the delivered weights of LinearRegressor to ``model.pth`` (a state_dict).

Usage: ``python files/model/make_weights.py [--output PATH]``. The file name is part of
the bytes torch.save writes (it names the archive's top folder), so compare outputs that
share the name ``model.pth``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# Run as a script, this folder is on sys.path already; imported from elsewhere (tests),
# the caller puts it there.
from model import LinearRegressor

HERE = Path(__file__).resolve().parent
WEIGHT = [[0.890637, 1.052189]]
BIAS = [-0.159788]


def build_model() -> LinearRegressor:
    """LinearRegressor holding the delivered float32 weight and bias."""
    model = LinearRegressor()
    state = {
        "linear.weight": torch.tensor(WEIGHT, dtype=torch.float32),
        "linear.bias": torch.tensor(BIAS, dtype=torch.float32),
    }
    # strict=True: a renamed layer in model.py fails here, not at serving time.
    model.load_state_dict(state, strict=True)
    return model


def write_weights(output: Path) -> Path:
    """Save the state_dict to ``output`` and return the path."""
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_model().state_dict(), output)
    return output


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "model.pth",
        help="where to write the state_dict (default: model.pth next to this script)",
    )
    args = parser.parse_args(argv)
    print(write_weights(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
