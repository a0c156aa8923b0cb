"""docker-dir: Docker images as plain directories that build systems can track."""
from .format.imagedir import image_id

__all__ = ["image_id"]
