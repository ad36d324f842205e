"""LaSER itself: the two views of one backbone, the losses, the training objective."""
