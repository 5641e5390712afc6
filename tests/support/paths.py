"""Where things are: the repository root, whatever tier folder a test sits in."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
