"""The training loop under torchrun: two CPU processes with gloo, data sharded by rank, rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from lienzo.training.checkpoint import CHECKPOINT_NAME, load_training_state
from lienzo.training.logging import CSV_NAME, read_loss_csv

TESTS = Path(__file__).resolve().parent
SOURCE = TESTS.parent / "src"

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from test_training import SquaresDataset, quick_config, tiny_objective
    from lienzo.training import train

    torch.set_num_threads(1)
    objective = tiny_objective(train_text_encoder=True)
    result = train(quick_config(3, checkpoint_every=2), objective, SquaresDataset(), Path(sys.argv[1]))
    rank = dist.get_rank()
    torch.save(objective.unet.state_dict(), Path(sys.argv[1]) / f"weights-rank{rank}.pt")
    dist.destroy_process_group()
    """
)


def test_two_process_torchrun_trains_and_rank_zero_writes_one_checkpoint(tmp_path: Path):
    script = tmp_path / "train_two.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SOURCE), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    finished = subprocess.run(
        [*command, str(script), str(out)], env=environment, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]

    state = load_training_state(out / CHECKPOINT_NAME)
    assert state["step"] == 3
    assert state["description"]["world_size"] == 2
    assert state["data_position"] == 3 * 4 * 2
    first, second = state["rng"]["rank_generators"]
    assert not torch.equal(first, second)
    assert [int(row["step"]) for row in read_loss_csv(out / CSV_NAME)] == [1, 2, 3]
    rank0 = torch.load(out / "weights-rank0.pt", weights_only=True)
    rank1 = torch.load(out / "weights-rank1.pt", weights_only=True)
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
        assert torch.equal(value, state["modules"]["unet"][key]), key
