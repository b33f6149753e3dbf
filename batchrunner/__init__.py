"""batchrunner: run large batches of OpenAI-compatible chat completion requests."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
