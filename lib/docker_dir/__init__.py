"""docker-dir: Docker images as plain directories that build systems can track."""
from .format.consistent import image_id

__version__ = "0.3.0"
__all__ = ["image_id", "__version__"]
