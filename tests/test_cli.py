from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilenet", *args], capture_output=True, text=True, timeout=300)


def test_summary_table() -> None:
    result = run_cli("summary")
    assert result.returncode == 0
    assert "3,217,226" in result.stdout and "45,164,106" in result.stdout


def test_summary_json() -> None:
    result = run_cli("summary", "--alpha", "0.5", "--resolution", "160", "--stem", "imagenet", "--num-classes", "1000",
                     "--json")
    out = json.loads(result.stdout)
    assert out["input_size"] == [3, 160, 160]
    assert out["params"] == sum(row["params"] for row in out["layers"])
    assert out["mult_adds"] == sum(row["mult_adds"] for row in out["layers"])
    columns = {"name", "type", "kernel", "stride", "groups", "input_shape", "output_shape", "params", "mult_adds"}
    assert columns <= set(out["layers"][0])


@pytest.mark.parametrize("args,message", [(["--alpha", "0"], "alpha"),
                                          (["--resolution", "2"], "smallest that works is 3"),
                                          (["--beta", "-1"], "beta")])
def test_summary_bad_values_are_messages_not_tracebacks(args, message) -> None:
    result = run_cli("summary", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_beta_and_resolution_are_exclusive() -> None:
    result = run_cli("summary", "--beta", "1", "--resolution", "32")
    assert result.returncode == 2 and "not allowed with" in result.stderr
