"""Shared helpers of the Python binding tests: the repository root, the CLI binary (the oracle
every test compares with) and a runner for it. Run by `.ci/run` in its virtual environment:
    .venv/bin/python -m pytest tests/python
The CLI is target/release/zhinao (or $ZHINAO_BIN); the tests need a GPU adapter (lavapipe in CI)."""

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("ZHINAO_BIN", os.path.join(ROOT, "target", "release", "zhinao"))


def asset(name):
    return os.path.join(ROOT, "assets", name)


def cli(*args, json_out=False):
    """Run the CLI; its stdout (parsed as JSON when asked). A failure shows its stderr."""
    p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"zhinao {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return json.loads(p.stdout) if json_out else p.stdout


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session", autouse=True)
def _cli_built():
    if not os.path.exists(BIN):
        pytest.fail(f"{BIN} is missing: build the CLI first (cargo build --release)")
