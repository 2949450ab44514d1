import sys
from pathlib import Path

# tiny.py (the lottery tests' recipe) and readback.py are imported by name
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lottery"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
