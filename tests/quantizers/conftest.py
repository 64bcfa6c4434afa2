"""Makes the chain-of-ops oracle (``quantizer_reference``) importable from these tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
