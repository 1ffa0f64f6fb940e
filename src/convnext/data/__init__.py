"""Images in: image folders, the built-in digits, evaluation preprocessing, the samplers training uses, and
the training augmentation (``augment``)."""

from .images import (
    DIGITS_FILE,
    IMAGE_EXTENSIONS,
    Digits,
    EpochSampler,
    EvalImages,
    ImageFolder,
    TrainImages,
    digits_split,
    eval_transform,
    export_digits,
    first_readable,
    image_files,
    image_folders,
    load_image,
    to_tensor,
)

__all__ = ["DIGITS_FILE", "IMAGE_EXTENSIONS", "Digits", "EpochSampler", "EvalImages", "ImageFolder", "TrainImages",
           "digits_split", "eval_transform", "export_digits", "first_readable", "image_files", "image_folders",
           "load_image", "to_tensor"]
