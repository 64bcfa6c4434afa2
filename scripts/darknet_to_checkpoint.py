"""Turn a Darknet ``.weights`` file into a RUPQ ``model.ckpt`` that ``--load`` accepts.

    python scripts/darknet_to_checkpoint.py --weights yolov3.weights --out runs/darknet/model.ckpt \
        [--cfg yolov3] [--num_classes 80]

``--cfg`` is a cfg file or the name of one shipped in ``rupq/models/cfg`` (default: the standard
YOLO-v3); the checkpoint records it as the ``yolo_v3`` architecture's arguments, so a quantized
config can then start from it: ``python rupq/main.py --config CFG --logdir DIR --load model.ckpt``.
"""

import argparse
import sys
from pathlib import Path

from rupq.errors import RupqError
from rupq.models import create_model
from rupq.models.yolo import load_darknet_weights
from rupq.tools.training.task import model_checkpoint
from rupq.tools.utils.checkpoint import save_atomic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, type=Path, help="Darknet .weights file")
    parser.add_argument("--out", required=True, type=Path, help="model.ckpt to write")
    parser.add_argument("--cfg", default="yolov3", help="Darknet cfg file or shipped cfg name (default: yolov3)")
    parser.add_argument("--num_classes", type=int, help="override the cfg's classes")
    args = parser.parse_args(argv)
    kwargs = {"cfg": args.cfg} if args.num_classes is None else {"cfg": args.cfg, "num_classes": args.num_classes}
    try:
        model = create_model("yolo_v3", **kwargs)
        load_darknet_weights(model, args.weights)
    except RupqError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    save_atomic(model_checkpoint(model), args.out)
    print(f"wrote {args.out} (yolo_v3 {kwargs}, {sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
