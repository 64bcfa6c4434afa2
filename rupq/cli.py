"""The ``rupq`` command: ``rupq train …`` (the same arguments as ``python rupq/main.py …``) and
``rupq export …`` (``python rupq/export.py …``).

Installed by ``pip install .`` as a console script. ``python -m rupq …`` runs it too, and, as
before there were sub-commands, ``python -m rupq --config …`` still means ``train``.
"""

import importlib
import sys

# Sub-command → module whose ``main(argv)`` runs it (imported only when asked for: torch is slow to import).
COMMANDS = {
    "train": ("rupq.main", "train or quantize a model from a YAML config"),
    "export": ("rupq.export", "write a trained model.ckpt as an ONNX integer model, checked in onnxruntime"),
}


def usage() -> str:
    lines = ["usage: rupq COMMAND [ARGS …]", "", "commands:"]
    lines += [f"  {name:<8} {description}" for name, (_, description) in COMMANDS.items()]
    lines += ["", "`rupq COMMAND --help` lists a command's arguments."]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; expected one of: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module_name, _ = COMMANDS[command]
    importlib.import_module(module_name).main(rest)
