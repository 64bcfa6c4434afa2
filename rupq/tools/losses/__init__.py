"""Loss tags of the project (standard losses come straight from ``torch.nn``)."""

__all__: list[str] = []
