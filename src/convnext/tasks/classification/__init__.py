"""Image classification: the paper's ImageNet recipe, on the built-in digits or a user's image folders."""
