"""`python -m jobbert_onnx.serve ARTIFACT ...`, the same as `jobbert-onnx serve ARTIFACT ...`."""

import sys

from .cli import main

sys.exit(main())
