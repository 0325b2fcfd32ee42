from .augment import Augment, prepare
from .datasets import FileSet, ImageSet, load_digits, load_folder, load_splits

__all__ = ["Augment", "FileSet", "ImageSet", "load_digits", "load_folder", "load_splits", "prepare"]
