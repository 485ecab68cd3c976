"""catface: cat faces, their 9 landmarks and breeds, as an ONNX inference service."""

__version__ = "1.0.0"  # kept equal to pyproject.toml (tests/test_openapi.py checks)
