"""Student and teacher segmentation networks, their training data, training and checkpoints."""
