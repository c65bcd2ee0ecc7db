"""Model files and the loader: safetensors/checkpoint reading and writing, the shipped models, blends
(`--denoise`), ONNX files as runnable models, and `load_model` (every form from one reference).
"""
