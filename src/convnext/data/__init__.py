"""Images in: ``images`` (image folders, the built-in digits, evaluation preprocessing, the samplers training
uses), ``augment`` (the training augmentation of the official recipe) and ``photos`` (real photos to try the
tools on); ``assets/`` holds the data files shipped with the package."""
