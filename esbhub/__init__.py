"""esbhub — integration hub and master-data core for a telecom operator's key-account business."""

__version__ = "0.1.0"
