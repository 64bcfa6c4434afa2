"""Small shared tools: schedules, checkpoint files, seeding."""

from rupq.tools.utils.schedules import CosineDecay

__all__ = ["CosineDecay"]
