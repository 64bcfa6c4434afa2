"""Several devices: mode selection, DataParallel wrapping (on the CPU) and real DDP runs over gloo.

The distributed tests start ``torchrun --standalone --nproc_per_node 2`` on ``callback_main.py``
(``rupq/main.py``, one run per launch, with a callback that dumps every process's model) and
compare with one-process runs of the same config and global batch, run by the command line's
``main`` in this process.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tiny_models  # noqa: F401  (registers tiny_convnet)
from conftest import CLASSIFICATION_LOOP_AND_TASK, REPO, run_main, write_config, write_tiny_fashion_mnist
from rupq.config import load_config
from rupq.errors import ConfigError
from rupq.tools.training.parallel import Parallelism, choose_mode, setup_parallelism, torchrun_ranks
from rupq.tools.training.task import RunContext
from rupq.tools.utils.checkpoint import TRAINING_FORMAT, load_checkpoint
from training_state import assert_identical, results, tensorboard_scalars

# One pytest-xdist worker runs this module: its tests share a trained model (a module fixture).
pytestmark = pytest.mark.xdist_group(__name__)

WORKER = Path(__file__).with_name("callback_main.py")

RUPQ_CONFIG = """
model_parser: &model_parser !ModelParser
  wrappers:
    Conv2d: !QuantConv2d
      quantizer: !ModuleQuantizer
        input_quantizer: !StepOffsetQuantizer
          initializer: !MinErrorInitializer {{n_iters: 40}}
          transformation: !Standardization {{momentum: 0.9, std_init: 1.0}}
        weight_quantizer: !StepQuantizer
          initializer: !MinErrorInitializer {{n_iters: 40}}
          transformation: !Standardization {{dim: [1, 2, 3]}}
          per_channel: true
    Linear: !QuantLinear
      quantizer: !ModuleQuantizer
        input_quantizer: !StepOffsetQuantizer
          initializer: !MinErrorInitializer {{n_iters: 40}}
          transformation: !Standardization {{momentum: 0.9, std_init: 1.0}}
        weight_quantizer: !StepQuantizer
          initializer: !MinErrorInitializer {{n_iters: 40}}
          transformation: !Standardization {{dim: [1]}}
          per_channel: true
  input_bit_width: {{default: 4, exceptions: {{{first}: 8}}}}
  weight_bit_width: {{default: 4, exceptions: {{{first}: 8}}}}
  half_wave: {{default: true, exceptions: {{{first}: false}}}}
dataset: &dataset !FashionMNISTDataloader
  batch_size: 16
  num_workers: 0
  augment: {augment}
  root: {root}
schedule: &schedule {{name: CosineAnnealingLR, params: {{T_max: 8}}}}
optimizers: &optimizers
  weight_optimizer:
    name: SGD
    model_params_type: weight
    params: {{lr: 0.05, momentum: 0.9}}
    scheduler: *schedule
  quant_weight_optimizer:
    name: Adam
    model_params_type: quant_weight
    params: {{lr: 0.001}}
    scheduler: *schedule
  quant_input_optimizer:
    name: Adam
    model_params_type: quant_input
    params: {{lr: 0.01}}
    scheduler: *schedule
""" + CLASSIFICATION_LOOP_AND_TASK + """  epochs: {epochs}
  model_parser: *model_parser
  optimizers: *optimizers
  model_saver: {{monitor: val_accuracy, mode: max}}
  model_arch: {model}
{model_kwargs}{callbacks}"""
TINY = {"model": "tiny_convnet", "first": "'0'", "model_kwargs": ""}  # tiny_models.py
SMALL_RESNET = {"model": "small_resnet", "first": "conv1", "model_kwargs": "  model_kwargs: {widths: [4, 8], blocks: [1, 1]}\n"}


DUMP = "!DumpProcessState {}"  # callback_main.py's callback tags: only runs under the worker name them
STOP_AT_EPOCH_2 = "!SigtermAtEpochStart {epoch: 2}"


def rupq_config(path: Path, root: Path, epochs: int, model: dict, callbacks=(), augment: bool = False) -> Path:
    listed = "  callbacks:\n" + "".join(f"    - {tag}\n" for tag in callbacks) if callbacks else ""
    return write_config(path, RUPQ_CONFIG.format(root=root, epochs=epochs, callbacks=listed,
                                                 augment=str(augment).lower(), **model))


def launch(*arguments, processes: int = 2, status: int = 0) -> subprocess.CompletedProcess:
    """One run of ``callback_main.py`` (``rupq/main.py ARGUMENTS``) under torchrun over gloo."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU even where there is a GPU
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run(
        [*launcher, str(WORKER), *map(str, arguments)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if status == 0:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    else:  # torchrun reports a failed process and exits with its own non-zero status
        assert result.returncode != 0 and f"exitcode  : {status}" in result.stderr, result.stderr[-3000:]
    return result


def states(logdir: Path, processes: int) -> list[dict]:
    """Every process's model after its last step (``!DumpProcessState`` writes them into LOGDIR)."""
    return [torch.load(logdir / f"state_rank{rank}.pt") for rank in range(processes)]


def checkpoint_model(version_dir: Path) -> dict:
    return load_checkpoint(version_dir / "checkpoints/last.ckpt")["model"]["state_dict"]


def assert_same_states(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if tolerance:
            torch.testing.assert_close(a[name], b[name], msg=name, **tolerance)
        else:
            assert torch.equal(a[name], b[name]), name


# ---- mode selection (no processes) ----------------------------------------------------------


def test_torchrun_variables_choose_the_mode():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert torchrun_ranks(torchrun) == (3, 4, 1)
    assert choose_mode(None, 0, torchrun) == "distributed"
    assert choose_mode("0,1", 2, torchrun) == "distributed"  # under torchrun --gpu only picks devices
    single_process_torchrun = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    assert torchrun_ranks(single_process_torchrun) is None
    assert choose_mode("0,1", 2, {}) == "data_parallel"
    assert choose_mode("0", 1, {}) == "single"
    assert choose_mode("0,1", 0, {}) == "single"  # no CUDA: the CPU
    assert choose_mode(None, 4, {}) == "single"  # all GPUs visible but no --gpu: one GPU
    with pytest.raises(ConfigError, match="WORLD_SIZE is set but RANK, LOCAL_RANK is not"):
        torchrun_ranks({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="must be integers"):
        torchrun_ranks({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="RANK 2 / LOCAL_RANK 0 do not fit WORLD_SIZE 2"):
        torchrun_ranks({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")
def test_sync_bn_is_refused_without_torchrun_or_gpus():
    with pytest.raises(ConfigError, match="--sync_bn synchronizes BatchNorm between the processes of a torchrun"):
        setup_parallelism(None, sync_bn=True, environ={})
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    with pytest.raises(ConfigError, match="--sync_bn needs GPUs"):
        setup_parallelism(None, sync_bn=True, environ=torchrun)
    assert not torch.distributed.is_initialized()
    plain = setup_parallelism("0,1", environ={})
    assert plain.mode == "single" and plain.device == torch.device("cpu") and plain.wrap_model(model := nn.Linear(1, 1)) is model


# ---- DataParallel code path (runs on the CPU: DataParallel without GPUs calls the model) ------


def quantized_tiny_convnet(input_standardization: bool) -> nn.Module:
    """``tiny_convnet`` (no BatchNorm, whose statistics are per shard) with LSQ+ quantizers, and
    RUPQ's input Standardization if asked, initialised on a first batch."""
    from rupq.models import create_model
    from rupq.quantizers import (MeanStdInitializer, ModelParser, ModuleQuantizer, QuantConv2d, QuantLinear,
                                 Standardization, StepOffsetQuantizer, StepQuantizer, initialize_quantizers)

    def quantizer():
        standardization = Standardization(momentum=0.9, std_init=1.0) if input_standardization else None
        # bound_gradient 0.5: ReLU zeros on the lower bound then give every offset a gradient to
        # compare (with the default 1.0 a post-ReLU layer's offset gets none).
        return ModuleQuantizer(StepOffsetQuantizer(MeanStdInitializer(), standardization, bound_gradient=0.5),
                               StepQuantizer(MeanStdInitializer(), per_channel=True))

    torch.manual_seed(0)
    parser = ModelParser({"Conv2d": QuantConv2d(quantizer()), "Linear": QuantLinear(quantizer())},
                         {"default": 4, "exceptions": {"0": 8}}, {"default": 4, "exceptions": {"0": 8}},
                         {"default": True, "exceptions": {"0": False}})
    model = parser.parse(create_model("tiny_convnet"))
    initialize_quantizers(model, torch.randn(16, 1, 12, 12))
    return model


def data_parallel_step(data_parallel: nn.DataParallel, inputs, targets, gpus: int):
    """One training step as ``torch.nn.DataParallel`` takes it on ``gpus`` GPUs, on the CPU: at the
    start of the forward pass the module is replicated, each replica runs on its slice of the
    batch, the outputs are gathered and the loss is taken over the whole batch; each parameter's
    gradient is the sum of the replicas' gradients, and what replica 0 writes into its buffers in
    place stays in the module."""
    model = data_parallel.module
    # New module objects; the first shares the module's parameters and buffers (they are on its
    # device already), the others hold copies.
    on_first_device = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}
    replicas = [copy.deepcopy(model, memo=on_first_device)] + [copy.deepcopy(model) for _ in range(gpus - 1)]
    outputs = torch.cat([replica(part) for replica, part in zip(replicas, inputs.chunk(gpus))])
    nn.functional.cross_entropy(outputs, targets).backward()
    for replica in replicas[1:]:
        for parameter, replica_parameter in zip(model.parameters(), replica.parameters()):
            parameter.grad += replica_parameter.grad


def test_data_parallel_gradients_are_those_of_one_device_on_the_whole_batch():
    """What DataParallel's numbers depend on, checked on the CPU (the real multi-GPU run is in
    scripts/gpu_check.sh): the model as ``Parallelism.wrap_model`` hands it to DataParallel on 2
    GPUs gets, from 2 replicas on half batches, the gradients one device gets on the whole batch
    — weights, steps and offsets (LSQ's step-gradient scale counts the global batch)."""
    one_device = quantized_tiny_convnet(input_standardization=False)
    wrapped = Parallelism("data_parallel", torch.device("cpu"), gpus=2).wrap_model(copy.deepcopy(one_device))
    assert isinstance(wrapped, nn.DataParallel)
    inputs, targets = torch.randn(16, 1, 12, 12), torch.arange(16) % 10
    nn.functional.cross_entropy(one_device(inputs), targets).backward()
    data_parallel_step(wrapped, inputs, targets, gpus=2)
    expected = dict(one_device.named_parameters())
    for name, parameter in wrapped.module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        torch.testing.assert_close(parameter.grad, expected[name].grad, rtol=1e-5, atol=1e-7, msg=name)


def test_data_parallel_keeps_the_first_replicas_sigma_ema():
    """DataParallel cannot share σ between replicas inside a forward pass: RUPQ's activation EMA
    after a step is the one replica 0 computed from its half of the batch."""
    one_device = quantized_tiny_convnet(input_standardization=True)
    wrapped = Parallelism("data_parallel", torch.device("cpu"), gpus=2).wrap_model(copy.deepcopy(one_device))
    inputs, targets = torch.randn(16, 1, 12, 12) * 3, torch.arange(16) % 10
    data_parallel_step(wrapped, inputs, targets, gpus=2)
    one_device(inputs[:8])  # the first replica's shard, on one device
    emas = {name: value for name, value in one_device.state_dict().items() if name.endswith("ema_std")}
    assert emas and all(value != 1.0 for value in emas.values())  # std_init 1.0, then updated
    for name, value in wrapped.module.state_dict().items():
        if name in emas:
            torch.testing.assert_close(value, emas[name], rtol=1e-6, atol=0, msg=name)


def test_data_parallel_run_writes_unwrapped_checkpoints(tmp_path, tiny_fashion_mnist):
    """The model trained through DataParallel is saved without its ``module.`` prefix and loads
    into a plain model; input quantizers count the elements of the global batch."""
    config = rupq_config(tmp_path / "tiny.yaml", tiny_fashion_mnist, 1, TINY)
    parallel = Parallelism("data_parallel", torch.device("cpu"), gpus=2)
    wrapped = []

    def wrap_model(model):
        wrapped.append(parallel.wrap_model(model))
        return wrapped[-1]

    load_config(config)["task"].run(RunContext(version_dir=tmp_path, device=parallel.device, wrap_model=wrap_model))
    (data_parallel,) = wrapped
    assert isinstance(data_parallel, nn.DataParallel)
    layers = [layer for layer in data_parallel.module.modules() if hasattr(layer, "quantizer")]
    assert layers and all(layer.quantizer.input_quantizer.batch_shards == 2 for layer in layers)
    assert all(layer.quantizer.weight_quantizer.batch_shards == 1 for layer in layers)
    last = tmp_path / "checkpoints/last.ckpt"
    for checkpoint in (load_checkpoint(tmp_path / "model.ckpt"), load_checkpoint(last)["model"]):
        assert checkpoint["quantized"] and not any(key.startswith("module.") for key in checkpoint["state_dict"])
    # What --checkpoint_path does in any mode: a plain model, then the saved state.
    cpu = RunContext(version_dir=None, device=torch.device("cpu"), checkpoint_path=str(last))
    rebuilt = load_config(config)["task"].build_model(cpu, load_checkpoint(last))
    assert_same_states(rebuilt.state_dict(), data_parallel.module.state_dict())
    # ... and training goes on without a wrapper.
    two_epochs = rupq_config(tmp_path / "two.yaml", tiny_fashion_mnist, 2, TINY)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    load_config(two_epochs)["task"].run(RunContext(version_dir=resumed, device=torch.device("cpu"), checkpoint_path=str(last)))
    assert load_checkpoint(resumed / "checkpoints/last.ckpt")["epoch"] == 2


# ---- DistributedDataParallel over gloo, two processes ------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs the tests below share (starting torch is most of a launch's time); each DDP run
    is one torchrun launch of 2 processes, each one-process run a ``main`` call in this process:

    - ``ddp``: ``tiny_convnet`` (no BatchNorm) for 1 epoch, and ``single``, the same in one
      process; ``single_after_ddp`` / ``single_after_single``: epoch 2 in one process, resumed
      from the checkpoint of each;
    - ``ddp_resnet``: ``small_resnet`` (BatchNorm), augmented data, 2 epochs uninterrupted;
      ``ddp_resnet_stopped``: the same, stopped by SIGTERM after the first iteration of epoch
      2; ``ddp_resnet_resumed``: resumed from that checkpoint under torchrun.
    """
    root = tmp_path_factory.mktemp("parallel")
    data = write_tiny_fashion_mnist(root / "fashion")
    resnet = rupq_config(root / "resnet.yaml", data, 2, SMALL_RESNET, [DUMP], augment=True)
    resnet_stopped = rupq_config(root / "resnet_stopped.yaml", data, 2, SMALL_RESNET, [DUMP, STOP_AT_EPOCH_2],
                                 augment=True)
    stdout = {
        "ddp": launch("--config", rupq_config(root / "one.yaml", data, 1, TINY, [DUMP]), "--logdir", root / "ddp"),
        "ddp_resnet": launch("--config", resnet, "--logdir", root / "ddp_resnet"),
        "ddp_resnet_stopped": launch("--config", resnet_stopped, "--logdir", root / "ddp_resnet_stopped", status=130),
    }
    stdout["ddp_resnet_resumed"] = launch(
        "--config", resnet, "--logdir", root / "ddp_resnet_resumed",
        "--checkpoint_path", root / "ddp_resnet_stopped/version_0/checkpoints/last.ckpt")
    one_epoch, two_epochs = rupq_config(root / "single_one.yaml", data, 1, TINY), rupq_config(root / "two.yaml", data, 2, TINY)
    single = {
        "single": run_main("--config", one_epoch, "--logdir", root / "single"),
        "single_after_ddp": run_main("--config", two_epochs, "--logdir", root / "single_after_ddp",
                                     "--checkpoint_path", root / "ddp/version_0/checkpoints/last.ckpt"),
        "single_after_single": run_main("--config", two_epochs, "--logdir", root / "single_after_single",
                                        "--checkpoint_path", root / "single/version_0/checkpoints/last.ckpt"),
    }
    for name, result in single.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    return root, {name: result.stdout for name, result in {**stdout, **single}.items()}


def test_distributed_rupq_equals_one_process(runs):
    """Two processes on halves of each global batch of 16 train exactly as one process on the
    whole batch: every process ends with the same weights, steps, offsets and σ EMAs, equal to
    the one-process run (a model without BatchNorm, whose statistics are per shard)."""
    root, _ = runs
    rank0, rank1 = states(root / "ddp", 2)
    assert_same_states(rank0, rank1)
    emas = [name for name in rank0 if name.endswith("input_quantizer.transformation.ema_std")]
    assert emas and all(rank0[name] != 1.0 for name in emas)  # std_init 1.0, then trained
    reference = checkpoint_model(root / "single/version_0")
    assert_same_states(rank0, reference, rtol=1e-5, atol=1e-5)
    for name, value in rank0.items():  # the run did train its quantization parameters
        if name.endswith("input_quantizer.step"):
            assert not torch.equal(value, rank0[name.replace(".step", ".initial_step")]), name
    single_logged = json.loads((root / "single/version_0/results.json").read_text())
    ddp_logged = json.loads((root / "ddp/version_0/results.json").read_text())
    for name in ("train_target_loss", "train_accuracy", "val_target_loss", "val_accuracy"):
        assert ddp_logged[name] == pytest.approx(single_logged[name], rel=1e-5, abs=1e-6), name


def test_only_the_main_process_writes(runs):
    root, stdout = runs
    for run in ("ddp", "ddp_resnet"):
        version_dir = root / run / "version_0"
        assert [p.name for p in version_dir.parent.iterdir() if p.is_dir()] == ["version_0"], run
        assert len(list(version_dir.glob("events.out.tfevents.*"))) == 1, run
        for name in ("config.yaml", "model.ckpt", "checkpoints/last.ckpt", "results.json"):
            assert (version_dir / name).is_file(), (run, name)
        assert stdout[run].count("writing to") == 1, run  # rank 0 only
        assert stdout[run].count("initial step") == 1, run  # the calibration report, once


def test_ddp_checkpoint_resumes_in_one_process(runs):
    """Epoch 2 in one process, resumed from the DDP run's checkpoint, gives the model that
    resuming the one-process run's checkpoint gives."""
    root, stdout = runs
    for run in ("single_after_ddp", "single_after_single"):
        assert "resuming at epoch 2, iteration 1" in stdout[run], run
    after_ddp = load_checkpoint(root / "single_after_ddp/version_0/checkpoints/last.ckpt")
    after_single = load_checkpoint(root / "single_after_single/version_0/checkpoints/last.ckpt")
    assert after_ddp["epoch"] == after_single["epoch"] == 2
    assert_same_states(after_ddp["model"]["state_dict"], after_single["model"]["state_dict"], rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_end_identical_on_every_process(runs):
    """With BatchNorm each process normalizes its own shard, but after the epoch every process
    holds rank 0's statistics (what validation, callbacks and the checkpoint see)."""
    root, _ = runs
    rank0, rank1 = states(root / "ddp_resnet", 2)
    assert any(name.endswith("running_var") for name in rank0)
    assert_same_states(rank0, rank1)
    assert_same_states(checkpoint_model(root / "ddp_resnet/version_0"), rank0)


def test_distributed_run_resumed_mid_epoch_equals_the_uninterrupted_run(runs):
    """Under torchrun too, a RUPQ run (BatchNorm, augmented data, Adam for the quantizers)
    stopped by SIGTERM in the middle of an epoch and resumed with --checkpoint_path ends as the
    uninterrupted run, bit for bit: every process's model, the checkpoint (every optimizer and
    scheduler, counters, logged values), model.ckpt, results.json and the TensorBoard scalars."""
    root, stdout = runs
    stopped = load_checkpoint(root / "ddp_resnet_stopped/version_0/checkpoints/last.ckpt", TRAINING_FORMAT)
    assert (stopped["epoch"], stopped["batch"]) == (1, 1)  # after the first of 4 iterations of epoch 2
    assert "resuming at epoch 2, iteration 2" in stdout["ddp_resnet_resumed"]
    expected_dir, actual_dir = root / "ddp_resnet/version_0", root / "ddp_resnet_resumed/version_0"
    for expected, actual in zip(states(root / "ddp_resnet", 2), states(root / "ddp_resnet_resumed", 2)):
        assert_identical(expected, actual)
    assert_identical(load_checkpoint(expected_dir / "checkpoints/last.ckpt"),
                     load_checkpoint(actual_dir / "checkpoints/last.ckpt"))
    assert_identical(load_checkpoint(expected_dir / "model.ckpt"), load_checkpoint(actual_dir / "model.ckpt"))
    assert_identical(results(expected_dir), results(actual_dir))
    assert_identical(tensorboard_scalars(expected_dir),
                     tensorboard_scalars(root / "ddp_resnet_stopped/version_0", actual_dir))
