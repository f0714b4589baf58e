"""Images as a request carries them (PIL images, numpy arrays, tensors): what they are and their size,
read without decoding anything more."""

from __future__ import annotations


def is_image(value) -> bool:
    """PIL images, numpy arrays and tensors are images when a request carries them."""
    kind = type(value).__module__.split(".")[0]
    return kind in ("PIL", "numpy", "torch") and hasattr(value, "shape" if kind != "PIL" else "size")


def image_size(value, grayscale: bool = False) -> tuple[int, int]:
    """(width, height) of an image a request carries, read as diffusers' image processors read it:
    a PIL image, an (H, W[, C]) or (B, H, W, C) array, a ([B,] C, H, W) tensor; with ``grayscale``
    (a mask) a three-dimensional array is (B, H, W) unless its last dimension is 1."""
    if not hasattr(value, "shape"):  # PIL
        return tuple(value.size)
    shape = tuple(value.shape)
    if type(value).__module__.split(".")[0] == "torch" or len(shape) == 2:
        h, w = shape[-2], shape[-1]
    elif len(shape) == 3 and grayscale and shape[-1] != 1:
        h, w = shape[1], shape[2]
    else:
        h, w = (shape[0], shape[1]) if len(shape) == 3 else (shape[1], shape[2])
    return w, h


def mask_mismatch(image, mask) -> str | None:
    """Why ``mask`` cannot go with ``image`` (their sizes differ), or None: a mask marks pixels of
    its image, so a resized one would mark other pixels than its author drew."""
    if image is None or mask is None or not (is_image(image) and is_image(mask)):
        return None
    (iw, ih), (mw, mh) = image_size(image), image_size(mask, grayscale=True)
    if (iw, ih) != (mw, mh):
        return f"mask is {mw}x{mh} but image is {iw}x{ih}: a mask must be its image's size"
    return None
