"""Landmark-aligned face crops: the similarity transform to a five-point template, the warp, the paste back.

A face with five landmarks (eye, eye, nose, mouth corner, mouth corner, left to right as seen in the image)
is cut out by the similarity transform (rotation, uniform scale, translation; Umeyama's least squares, as
``skimage.transform.SimilarityTransform.estimate`` and insightface's ``face_align.estimate_norm``) that
maps its landmarks onto a template's, then warped into a square crop (bilinear; the image is mirrored
beyond its edges). After the crop is processed it goes back through the inverse transform and is blended
by a feathered alpha that is zero at the crop's border: pixels the alpha does not reach are returned byte
for byte.

Templates, in crop pixels:

- ArcFace (insightface's ``arcface_dst``, 112x112): the crops of the ArcFace embedder and inswapper (128:
  the 112 template shifted right by 8 pixels, insightface's rule for sizes that are multiples of 128);
- FFHQ (facexlib's 512x512 template): the crops of GFPGAN, RestoreFormer and CodeFormer;
- ArcFace with context (:func:`context_points`): the 112 template shrunk by ``context`` around the crop's
  centre, so that the crop holds ``context`` times the face's side (the inpainting crops of the faces pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from multipass_diffusion.imaging.crop_inpaint import Box

#: insightface's ``arcface_dst``: the five landmarks in a 112x112 ArcFace crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_SIZE = 112
#: facexlib's FFHQ template (``FaceRestoreHelper``, face size 512): the crops of GFPGAN and CodeFormer.
FFHQ_TEMPLATE = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
FFHQ_SIZE = 512
LANDMARK_COUNT = 5


def arcface_points(size: int) -> np.ndarray:
    """The ArcFace template in a ``size`` crop, by insightface's ``estimate_norm`` rule.

    Multiples of 112 scale it by ``size / 112``; multiples of 128 (inswapper's 128) scale it by
    ``size / 128`` and shift it right by ``8 * size / 128``; other sizes scale it by ``size / 112``.
    """
    if size % ARCFACE_SIZE != 0 and size % 128 == 0:
        ratio = size / 128.0
        return ARCFACE_TEMPLATE * ratio + np.array([8.0 * ratio, 0.0])
    return ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)


def ffhq_points(size: int) -> np.ndarray:
    """The FFHQ template in a ``size`` crop."""
    return FFHQ_TEMPLATE * (size / FFHQ_SIZE)


def context_points(size: int, context: float) -> np.ndarray:
    """The 112 ArcFace template scaled so its 112 square is ``size / context`` wide, centred in the crop."""
    return (ARCFACE_TEMPLATE / ARCFACE_SIZE - 0.5) * (size / context) + size / 2.0


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity that maps ``source`` points onto ``target`` points in the least-squares sense.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point patterns",
    with scaling: the algorithm of ``skimage.transform.SimilarityTransform.estimate``.
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    count, dims = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    covariance = dst_centred.T @ src_centred / count
    reflection = np.ones(dims)
    if np.linalg.det(covariance) < 0:
        reflection[dims - 1] = -1
    u, singular, vt = np.linalg.svd(covariance)
    rotation = u @ np.diag(reflection) @ vt
    variance = src_centred.var(axis=0).sum()
    if variance <= 0:
        raise ValueError("the landmarks coincide; no similarity transform maps them")
    scale = float((singular * reflection).sum() / variance)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


@dataclass(frozen=True)
class Alignment:
    """An image-to-crop similarity (2x3 ``matrix``) and the crop's side in pixels."""

    matrix: np.ndarray
    size: int

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return float(math.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def inverse(self) -> np.ndarray:
        linear = self.matrix[:, :2]
        inverse_linear = np.linalg.inv(linear)
        result = np.zeros((2, 3))
        result[:, :2] = inverse_linear
        result[:, 2] = -inverse_linear @ self.matrix[:, 2]
        return result

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_image(self, points: np.ndarray) -> np.ndarray:
        inverse = self.inverse
        points = np.asarray(points, dtype=np.float64)
        return points @ inverse[:, :2].T + inverse[:, 2]

    def footprint(self, width: int, height: int) -> Box | None:
        """The pixels of the image the crop covers (its corners' bounding box), clipped; None when outside."""
        side = float(self.size)
        corners = self.to_image(np.array([[0.0, 0.0], [side, 0.0], [0.0, side], [side, side]]))
        x0 = max(0, math.floor(corners[:, 0].min()))
        y0 = max(0, math.floor(corners[:, 1].min()))
        x1 = min(width, math.ceil(corners[:, 0].max()) + 1)
        y1 = min(height, math.ceil(corners[:, 1].max()) + 1)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(x0, y0, x1, y1)


def align(landmarks: np.ndarray, size: int, template: np.ndarray) -> Alignment:
    """The alignment that puts ``landmarks`` (5, 2) on ``template`` (5, 2) in a ``size`` square crop."""
    return Alignment(similarity_transform(landmarks, template), int(size))


def face_side(landmarks: np.ndarray) -> float:
    """The side, in image pixels, of the face's 112 ArcFace square (the face's size for crop geometry)."""
    return ARCFACE_SIZE / align(landmarks, ARCFACE_SIZE, ARCFACE_TEMPLATE).scale


def warp(image: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The aligned crop of an RGB ``uint8`` image (size x size x 3), mirrored beyond the image's edges."""
    import cv2

    return cv2.warpAffine(
        image,
        alignment.matrix,
        (alignment.size, alignment.size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def border_alpha(size: int, sigma: float) -> np.ndarray:
    """A crop's paste alpha (float32 0..1): the square inset by ``ceil(3 sigma)``, Gaussian-feathered by
    ``sigma`` crop pixels, so it is zero at the crop's border; ``sigma`` 0 is the whole crop, hard."""
    import cv2

    inset = math.ceil(3.0 * sigma) if sigma > 0 else 0
    alpha = np.zeros((size, size), dtype=np.float32)
    if 2 * inset >= size:
        return alpha
    alpha[inset : size - inset, inset : size - inset] = 1.0
    if sigma > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    return alpha


def square_alpha(size: int, side: float, sigma: float) -> np.ndarray:
    """A crop's alpha (float32 0..1): the centred square of ``side`` crop pixels, feathered by ``sigma``."""
    import cv2

    lo, hi = (size - side) / 2.0, (size + side) / 2.0
    centres = np.arange(size, dtype=np.float32) + 0.5
    inside = (centres >= lo) & (centres <= hi)
    alpha = (inside[:, None] & inside[None, :]).astype(np.float32)
    if sigma > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    return alpha


def paste_back(image: np.ndarray, patch: np.ndarray, alpha: np.ndarray, alignment: Alignment) -> np.ndarray:
    """``image`` with the aligned ``patch`` (size x size RGB) blended back through the inverse transform.

    ``alpha`` (size x size, 0..1 float or 0..255 ``uint8``) weighs the patch in crop pixels; it is warped
    with the patch (bilinear, zero outside the crop). Where the warped alpha is zero the image's pixels are
    kept byte for byte. Only the crop's footprint is computed, so large images cost no more than small ones.
    """
    import cv2

    size = alignment.size
    if patch.shape[:2] != (size, size) or alpha.shape[:2] != (size, size):
        raise ValueError(f"patch {patch.shape[:2]} and alpha {alpha.shape[:2]} must be {size}x{size}")
    height, width = image.shape[:2]
    region = alignment.footprint(width, height)
    if region is None:
        return image.copy()
    inverse = alignment.inverse
    inverse[:, 2] -= (region.x0, region.y0)
    weight = alpha.astype(np.float32) / (255.0 if alpha.dtype == np.uint8 else 1.0)
    dsize = (region.width, region.height)
    warped = cv2.warpAffine(
        patch.astype(np.float32), inverse, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    weight = cv2.warpAffine(weight, inverse, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    weight = np.clip(weight, 0.0, 1.0)
    result = image.copy()
    original = result[region.y0 : region.y1, region.x0 : region.x1]
    blended = original.astype(np.float32) * (1.0 - weight[..., None]) + warped * weight[..., None]
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    inside = weight > 0
    original[inside] = blended[inside]
    return result
