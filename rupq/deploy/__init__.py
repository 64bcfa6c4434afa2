"""Deploying a trained model: its integer parameters (``integers``), the ONNX Q/DQ graph
(``onnx_graph``) and the check in onnxruntime (``verify``). ``rupq/export.py`` is the command."""
