"""Multi-host: two processes (4 fake CPU devices each) joined by `jax.distributed` train like one 8-device process,
checkpoint through Orbax from both hosts, and resume after a restart."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longrope_jax.distributed import initialize_distributed
from longrope_jax.errors import ConfigError
from test_finetune import first_losses

HELPER = Path(__file__).parent / "helpers" / "multihost_finetune.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _two_hosts(workdir: Path, steps: int, stop_after: int) -> tuple[list[float], float]:
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(HELPER), address, str(pid), str(workdir), str(steps),
                               str(stop_after)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    lines = dict(line.split(" ", 1) for line in outs[0][0].splitlines() if line.startswith(("LOSSES", "PARAM_SUM")))
    return json.loads(lines["LOSSES"]), json.loads(lines["PARAM_SUM"])


def test_two_processes_train_like_one_and_resume_across_hosts(tmp_path):
    single, single_param_sum = first_losses((2, 4, 1, 1), steps=4, workdir=tmp_path / "single", param_sum=True)
    first, _ = _two_hosts(tmp_path / "pod", steps=4, stop_after=2)  # stops after the step-2 checkpoint
    assert len(first) == 2
    rest, param_sum = _two_hosts(tmp_path / "pod", steps=4, stop_after=0)  # both hosts restore step 2, go on
    assert len(rest) == 2
    np.testing.assert_allclose(first + rest, single, atol=1e-5, rtol=0)
    metrics = [json.loads(line) for line in (tmp_path / "pod" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # one writer: process 0
    # the weights the two hosts gather at the end are the one-process run's, not only its losses
    np.testing.assert_allclose(param_sum, single_param_sum, rtol=1e-6)


def test_distributed_settings_are_checked():
    assert initialize_distributed(dict(initialize="off")) is False
    assert initialize_distributed(None) is False  # a single-host launch: nothing to join
    with pytest.raises(ConfigError, match="use one of"):
        initialize_distributed(dict(initialize="yes"))
    with pytest.raises(ConfigError, match="num_processes"):
        initialize_distributed(dict(initialize="auto", coordinator_address="localhost:1234", num_processes=0))
