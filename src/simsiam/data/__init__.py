from .augment import Augment, prepare
from .datasets import FileSet, ImageSet, labeled_splits, load_digits, load_folder, load_splits

__all__ = ["Augment", "FileSet", "ImageSet", "load_digits", "labeled_splits", "load_folder", "load_splits", "prepare"]
