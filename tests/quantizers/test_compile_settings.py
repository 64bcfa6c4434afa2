"""The compiled quantizers leave torch's configuration alone and compile the same in every thread.

torch keeps dynamo's settings per thread (2.14: ``recompile_limit`` set in one thread reads 8 in
another), and ``nn.DataParallel`` runs each replica in a thread of its own: settings made once
for the process would not reach the replicas, which then compile more graphs (duck sizing) and
hit the recompile limit.
"""

import copy
import logging
import os
import subprocess
import sys
import threading
from collections import OrderedDict

import torch
import torch._dynamo.utils
from torch import nn

from conftest import REPO
from rupq.quantizers.compiled import quantize
from test_compile import compiled_graphs, rupq_model, tiny_net

# Square and non-square images, batch equal to channels: sizes that duck sizing would tie together.
SIZES = [(2, 16, 16), (3, 16, 24), (8, 8, 8), (5, 20, 12)]


def wider_net() -> nn.Module:
    """``tiny_net`` with other widths and kernel sizes."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 12, 5, padding=2)), ("bn1", nn.BatchNorm2d(12)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(12, 6, 3, stride=2, padding=1)), ("bn2", nn.BatchNorm2d(6)), ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(6, 7)),
    ]))


def training_steps(replica) -> None:
    for batch, height, width in SIZES:
        replica(torch.randn(batch, 3, height, width)).sum().backward()


def in_thread(replica) -> None:
    failures = []

    def run():
        try:
            training_steps(replica)
        except BaseException as error:  # reported in the test's thread
            failures.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


class DynamoWarnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_replicas_in_threads_compile_what_one_thread_compiles(monkeypatch):
    monkeypatch.setattr(quantize, "enabled", True)
    torch.manual_seed(0)
    model = rupq_model(tiny_net(), torch.randn(4, 3, 16, 16))
    warnings_seen = DynamoWarnings()
    logging.getLogger("torch._dynamo").addHandler(warnings_seen)
    try:
        torch._dynamo.reset()
        start = compiled_graphs()
        training_steps(copy.deepcopy(model))
        in_main_thread = compiled_graphs() - start
        # Other layer widths (weights and steps of other shapes) use the same graphs.
        training_steps(rupq_model(wider_net(), torch.randn(4, 3, 16, 16)))
        assert compiled_graphs() - start == in_main_thread

        # A replica's first step in a fresh thread compiles what the main thread compiled.
        torch._dynamo.reset()
        start = compiled_graphs()
        in_thread(copy.deepcopy(model))
        assert compiled_graphs() - start == in_main_thread
        # Two replicas at once, in threads of their own, reuse those graphs. Dynamo is not thread-safe
        # (pytorch#118260, #111569: guards on thread-local state are checked against process-wide
        # copies), so two threads racing through a guard can, rarely, compile one graph again (seen
        # once in CI: 36 against 35); replicas that compiled graphs of their own would add dozens.
        start = compiled_graphs()
        replicas = [threading.Thread(target=training_steps, args=(copy.deepcopy(model),)) for _ in range(2)]
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.join()
        assert compiled_graphs() - start <= 1
    finally:
        logging.getLogger("torch._dynamo").removeHandler(warnings_seen)
    assert not [message for message in warnings_seen.messages if "recompile_limit" in message]


def test_importing_and_calling_leave_torch_configuration_as_it_was():
    script = """
import torch, torch._dynamo.utils, torch._dynamo.config as dynamo, torch.fx.experimental._config as fx
def settings():
    return dynamo.recompile_limit, dynamo.force_parameter_static_shapes, fx.use_duck_shape
before = settings()
import rupq
from rupq.quantizers.compiled import quantize
quantize(torch.randn(2, 3, 5, 7), torch.tensor(0.1, requires_grad=True), -8, 7, 0.1)[0].sum().backward()
compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
print(before == settings(), before, settings(), compiled)
"""
    env = {**os.environ, "RUPQ_COMPILE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    same, *_, compiled = result.stdout.replace(", ", ",").split()
    assert same == "True" and int(compiled) > 0, result.stdout
