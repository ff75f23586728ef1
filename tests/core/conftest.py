import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from .convert_fixtures import lyco_cases, peft_cases  # noqa: E402,F401  (session fixtures of the conversion tests)
