"""Coverage-guided fuzzing (atheris, libFuzzer) of every repository parser and the stream.

    .venv/bin/python -m tests.fuzz.atheris_main -atheris_runs=20000 [CORPUS_DIR]

A crash (an exception other than ebk's own error) makes libFuzzer exit non-zero
and write the input as crash-<hash> in the working directory.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tests.fuzz import targets


def one_input(data: bytes) -> None:
    targets.all_targets(data)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
