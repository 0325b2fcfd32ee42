from .augment import Augment, prepare
from .datasets import ImageSet, load_digits, load_folder, load_splits

__all__ = ["Augment", "ImageSet", "load_digits", "load_folder", "load_splits", "prepare"]
