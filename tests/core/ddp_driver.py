"""``ptrain run`` under torchrun, with an in-process method that records what each rank trained on.

Launched by ``test_distributed.py`` as ``torchrun --nproc_per_node 2 ddp_driver.py RECORD_DIR ptrain-args...``.
Each rank appends a hash of every training example its data loader fed it to
``RECORD_DIR/seen-rank{RANK}.txt`` and, at the end of training, a checksum of its parameters to
``RECORD_DIR/checksum-rank{RANK}.txt``, how many parameter values it holds (its shard under FSDP) to
``RECORD_DIR/held-rank{RANK}.txt``, and its process id to ``RECORD_DIR/pid-rank{RANK}.txt`` (for a
test that kills one rank). The run directory itself stays as ptrain writes it.
"""

import hashlib
import os
import sys
from pathlib import Path

from ptrain import hookimpl
from ptrain._registry import PluginRegistry


def parameter_checksum(model) -> float:
    """Position-weighted sum of every parameter: equal models give equal sums."""
    import torch

    total = torch.zeros((), dtype=torch.float64)
    for i, (_, p) in enumerate(sorted(model.named_parameters())):
        whole = p.full_tensor() if hasattr(p, "full_tensor") else p  # an FSDP shard: gathered (every rank calls this)
        total += (whole.detach().double() * (i + 1)).sum()
    return float(total)


def local_numel(model) -> int:
    """Parameter values this process holds: all of them under DDP, its shard under FSDP."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())


class Recorder:
    """Records the examples each rank sees and its final parameters."""

    def __init__(self, folder: Path):
        self.folder = folder

    @hookimpl(wrapper=True)
    def build_trainer(self, run):
        from transformers import TrainerCallback

        trainer = yield
        rank = os.environ.get("RANK", "0")
        (self.folder / f"pid-rank{rank}.txt").write_text(str(os.getpid()))
        collate = trainer.data_collator
        seen = self.folder / f"seen-rank{rank}.txt"

        def recording(features):
            with seen.open("a") as handle:
                for feature in features:
                    handle.write(hashlib.sha1(str(list(feature["input_ids"])).encode()).hexdigest() + "\n")
            return collate(features)

        trainer.data_collator = recording
        folder = self.folder

        class Checksum(TrainerCallback):
            def on_train_end(self, args, state, control, model=None, **kwargs):
                (folder / f"held-rank{rank}.txt").write_text(str(local_numel(model)))
                (folder / f"checksum-rank{rank}.txt").write_text(repr(parameter_checksum(model)))

        trainer.add_callback(Checksum())
        return trainer


if __name__ == "__main__":
    record = Path(sys.argv[1])
    discover = PluginRegistry.discover
    PluginRegistry.discover = classmethod(lambda cls, extra=None: discover({**(extra or {}), "recorder": Recorder(record)}))
    from ptrain._cli import main

    sys.argv = ["ptrain", *sys.argv[2:]]
    main()
