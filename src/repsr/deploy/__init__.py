"""Making deployable files: a checkpoint to a verified plain model, ONNX (fp32, int8) and ncnn exports,
each verified against PyTorch before it is written.
"""
