"""Export a trained run: diffusers pipeline directories, safetensors + JSON, ONNX + a numpy sampler.

Kept import-free so `difftrain.export.onnx_sampler` runs with onnxruntime and numpy alone.
Entry point: `difftrain.export.run_export.export_run`.
"""
