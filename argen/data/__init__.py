"""Training data: any image folder, and the synthetic shapes set."""
from argen.data.folder import ImageFolderDataset, resize_crop
from argen.data.shapes import SHAPE_NAMES, ShapesDataset, image_to_tensor, render_shape

__all__ = ["ImageFolderDataset", "SHAPE_NAMES", "ShapesDataset", "image_to_tensor", "render_shape", "resize_crop"]
