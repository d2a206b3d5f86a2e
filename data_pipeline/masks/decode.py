"""Image decoding and validation, and when the original encoded bytes are kept.

The rules are in data_pipeline/precompute_masks.py's docstring ("Decoding
(PIL), and when the original bytes are kept"): PIL decodes; the original bytes
are kept when TensorFlow, as the reader (data_pipeline/input_pipeline.py)
calls it, decodes them to the pixels the masks are computed on; anything else
is stored as a lossless PNG of PIL's RGB decode.
"""

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from data_pipeline.masks.errors import ImageFailure

# PIL format -> record format, for files whose bytes may be kept.
_KEEPABLE = {'JPEG': 'jpeg', 'MPO': 'jpeg', 'PNG': 'png', 'BMP': 'bmp', 'GIF': 'gif'}
_JPEG_MAX_MEAN_DIFF = 4.0
_PNG_LEVEL = 6
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'RGBa', 'La', 'RGBX')
# PIL modes of 16-bit greys (also read by label_maps.label_map_from_pil).
MODES_16BIT = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


@dataclasses.dataclass
class Decoded:
  """An input ready to be stored: `rgb` is what the masks are computed on."""
  rgb: np.ndarray          # uint8 [H, W, 3]
  encoded: bytes           # image/encoded
  image_format: str        # image/format
  original_format: str
  transcoded: bool


def check_size(height, width, max_pixels, min_image_size):
  """Raises ImageFailure for images too large to process or too small to crop."""
  if height * width > max_pixels:
    raise ImageFailure(f'too large: {width}x{height} = {height * width:,} pixels >'
                       f' --max_pixels={int(max_pixels):,}')
  if min(height, width) < min_image_size:
    raise ImageFailure(f'too small for a crop: {width}x{height}, smaller side'
                       f' {min(height, width)} < --min_image_size={min_image_size}')


def rgb_from_pil(img):
  """PIL image (loaded) -> uint8 [H, W, 3] following the module docstring's rules."""
  mode = img.mode
  if mode == 'RGB':
    rgb = np.asarray(img)
  elif mode in MODES_16BIT:
    # 'I' is how PIL may hold 16-bit greys; anything wider is clipped first.
    grey = np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8
    rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
  elif mode in _ALPHA_MODES:
    rgb = np.asarray(img.convert('RGBA'))[..., :3]
  elif mode in ('L', 'P', '1', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # Palette-with-transparency chatter.
      rgb = np.asarray(img.convert('RGB'))
  else:
    raise ImageFailure(f'unsupported pixel mode {mode!r}')
  return np.ascontiguousarray(rgb, dtype=np.uint8)


def _bit_depth(data, pil_format):
  # PIL reports 16-bit RGB PNGs as mode 'RGB'; the IHDR chunk says 16.
  if pil_format == 'PNG' and data[12:16] == b'IHDR':
    return data[24]
  return 8


def _tf_decode(data):
  """The reader's decode (input_pipeline: tf.io.decode_image), or None if it fails."""
  from data_pipeline import tf_setup
  tf = tf_setup.hide_accelerators()
  try:
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
  except (tf.errors.OpError, ValueError):
    return None


def png_bytes(rgb):
  """uint8 [H, W, 3] -> the bytes of a lossless PNG (fixed compression level)."""
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format='PNG', compress_level=_PNG_LEVEL)
  return buf.getvalue()


def decode_image(data, *, max_pixels, min_image_size):
  """Encoded bytes -> Decoded, or raises ImageFailure (see the module docstring)."""
  if not data:
    raise ImageFailure('empty file (0 bytes)')
  try:
    img = Image.open(io.BytesIO(data))
  except UnidentifiedImageError:
    raise ImageFailure('not an image: PIL cannot identify the file format') from None
  except Image.DecompressionBombError as e:
    raise ImageFailure(f'too large: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    raise ImageFailure(f'cannot open image: {type(e).__name__}: {e}') from None
  fmt = img.format or 'unknown'
  width, height = img.size
  check_size(height, width, max_pixels, min_image_size)  # Before decoding pixels.
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      img.load()
  except Exception as e:  # pylint: disable=broad-except
    raise ImageFailure(f'corrupt or truncated {fmt} file: {type(e).__name__}: {e}') from None
  mode = img.mode
  rgb = rgb_from_pil(img)
  original_format = _KEEPABLE.get(fmt, fmt.lower())
  if (fmt in _KEEPABLE and mode in ('RGB', 'L', 'P', '1')
      and _bit_depth(data, fmt) <= 8):
    tf_rgb = _tf_decode(data)
    if tf_rgb is not None and tf_rgb.shape == rgb.shape:
      if original_format == 'jpeg':
        diff = np.abs(tf_rgb.astype(np.int16) - rgb.astype(np.int16)).mean()
        if diff <= _JPEG_MAX_MEAN_DIFF:
          return Decoded(tf_rgb, data, 'jpeg', 'jpeg', False)
      elif np.array_equal(tf_rgb, rgb):
        return Decoded(rgb, data, original_format, original_format, False)
  return Decoded(rgb, png_bytes(rgb), 'png', original_format, True)


def decoded_from_pixels(rgb, *, max_pixels, min_image_size):
  """An in-memory uint8 [H, W, 3] image (demo scenes) -> Decoded (PNG)."""
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ImageFailure(f'expected a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}')
  check_size(rgb.shape[0], rgb.shape[1], max_pixels, min_image_size)
  rgb = np.ascontiguousarray(rgb)
  return Decoded(rgb, png_bytes(rgb), 'png', 'raw', True)
