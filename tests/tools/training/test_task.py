import torch

from rupq.tools.training.task import RunContext


def test_run_context_defaults_to_single_process():
    context = RunContext(version_dir=None, device=torch.device("cpu"))
    model = torch.nn.Linear(2, 2)
    assert context.is_main and context.wrap_model(model) is model


def test_resumed_run_starts_with_the_interrupted_runs_best_model(tmp_path):
    from rupq.tools.training.task import Task

    old = tmp_path / "version_0"
    (old / "checkpoints").mkdir(parents=True)
    (old / "model.ckpt").write_bytes(b"best so far")
    new = tmp_path / "version_1"
    new.mkdir()
    context = RunContext(version_dir=new, device=torch.device("cpu"),
                         checkpoint_path=str(old / "checkpoints" / "last.ckpt"))
    Task._carry_over_best_model(context)
    assert (new / "model.ckpt").read_bytes() == b"best so far"
