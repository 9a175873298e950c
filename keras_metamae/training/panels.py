"""The labelled original | masked | reconstruction panels TensorBoard shows for image-like
datasets (`callbacks.ReconstructionImages`), as pure functions of arrays (NumPy and Pillow;
TensorFlow only to un-patchify tokens in `reconstruction_grid`).
"""

from __future__ import annotations

import numpy as np

PANEL_CAPTIONS = ("original", "masked", "reconstruction")
# Each panel is upscaled (nearest neighbour, by a whole factor) to at least this many pixels
# high: an 8x8 digit becomes 128x128.
MIN_PANEL_HEIGHT = 128
CAPTION_HEIGHT = 16
PANEL_GAP = 4
# Masked patches in the "masked" panel: a colour no grey-scale image has.
MASK_COLOR = (0.25, 0.35, 0.65)
BACKGROUND = 1.0  # white, as TensorBoard's page


def panel_scale(height: int, min_height: int = MIN_PANEL_HEIGHT) -> int:
    """The whole upscaling factor that makes `height` at least `min_height` (1 if it is)."""
    return max(1, -(-min_height // max(1, height)))


def _display_channels(images: np.ndarray) -> np.ndarray:
    """[N, H, W, C] -> [N, H, W, 3]: grey-scale repeated, more than 3 bands cut to the first 3."""
    if images.shape[-1] >= 3:
        return images[..., :3]
    return np.repeat(images[..., :1], 3, axis=-1)


def _draw_caption(canvas: np.ndarray, text: str, top: int, left: int, width: int) -> None:
    """Writes `text` (black) into the CAPTION_HEIGHT-high strip of `canvas` at (top, left)."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("L", (width, CAPTION_HEIGHT), 255)
    try:
        font = ImageFont.load_default(size=CAPTION_HEIGHT - 4)
    except (TypeError, OSError):  # no FreeType: Pillow's fixed bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(strip).text((2, 1), text, fill=0, font=font)
    canvas[top:top + CAPTION_HEIGHT, left:left + width] = (
        np.asarray(strip, np.float32)[..., None] / 255.0)


def reconstruction_panels(original: np.ndarray, predicted: np.ndarray, pixel_mask: np.ndarray,
                          min_panel_height: int = MIN_PANEL_HEIGHT,
                          captions: tuple[str, str, str] | None = None) -> np.ndarray:
    """One image, a row per example: original | masked | reconstruction, each panel captioned.

    Args:
        original: `[N, H, W, C]` de-normalized inputs.
        predicted: `[N, H, W, C]` the model's prediction of every pixel.
        pixel_mask: `[N, H, W]` True where the pixel belongs to a masked token.
        captions: the three captions; default "original", "masked k/T" is filled in by the
            caller (`reconstruction_grid`), else the plain PANEL_CAPTIONS.

    Returns float32 `[rows, width, 3]` in [0, 1]: panels upscaled by `panel_scale` (nearest
    neighbour), each row scaled to its original's min..max (so the three panels of a row share
    one scale), masked patches shown in MASK_COLOR, the reconstruction showing predictions on
    masked patches and the original elsewhere (as the MAE paper's figures).
    """
    original = _display_channels(np.asarray(original, np.float32))
    predicted = _display_channels(np.asarray(predicted, np.float32))
    mask = np.asarray(pixel_mask, bool)[..., None]
    count, height, width = original.shape[:3]
    low = original.min(axis=(1, 2, 3), keepdims=True)
    high = original.max(axis=(1, 2, 3), keepdims=True)
    scale_to_unit = lambda x: np.clip((x - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)  # noqa: E731
    shown = scale_to_unit(original)
    panels = (shown,
              np.where(mask, np.asarray(MASK_COLOR, np.float32), shown),
              np.where(mask, scale_to_unit(predicted), shown))
    factor = panel_scale(height, min_panel_height)
    cell_h, cell_w = CAPTION_HEIGHT + height * factor, width * factor
    canvas = np.full((count * cell_h + (count - 1) * PANEL_GAP,
                      3 * cell_w + 2 * PANEL_GAP, 3), BACKGROUND, np.float32)
    for row in range(count):
        top = row * (cell_h + PANEL_GAP)
        for column, panel in enumerate(panels):
            left = column * (cell_w + PANEL_GAP)
            caption = (captions or PANEL_CAPTIONS)[column]
            _draw_caption(canvas, caption if isinstance(caption, str) else caption[row],
                          top, left, cell_w)
            image = panel[row].repeat(factor, axis=0).repeat(factor, axis=1)
            canvas[top + CAPTION_HEIGHT:top + cell_h, left:left + cell_w] = image
    return canvas


def reconstruction_grid(spec, tokens, token_mask, predicted_tokens,
                        min_panel_height: int = MIN_PANEL_HEIGHT) -> np.ndarray:
    """`reconstruction_panels` from tokens: `[N, T, D]` inputs and predictions, `[N, T]` mask
    (1 = masked), un-patchified and de-normalized with the pipeline's own tokenizer and the
    dataset's statistics, so the panels show the data."""
    from preprocessing import tokenize

    tokens = np.asarray(tokens, np.float32)
    token_mask = np.asarray(token_mask, np.float32)
    original = tokenize.tokens_to_raw(tokens, spec).numpy()
    predicted = tokenize.tokens_to_raw(np.asarray(predicted_tokens, np.float32), spec).numpy()
    mask_tokens = np.broadcast_to(token_mask[..., None], tokens.shape)
    pixel_mask = tokenize.unpatchify_2d(mask_tokens, spec.patch_shape,
                                        spec.input_shape).numpy().max(axis=-1) > 0
    masked = [f"masked {int(m.sum())}/{m.size} patches" for m in token_mask]
    captions = (PANEL_CAPTIONS[0], masked, PANEL_CAPTIONS[2])
    return reconstruction_panels(original, predicted, pixel_mask, min_panel_height, captions)


def reconstruction_description(spec, split: str, count: int, model_name: str) -> str:
    latent = "the inner-step adapted latent Z*" if model_name == "metamae" else "the latent Z"
    bands = ("" if spec.input_shape[-1] in (1, 3) else
             f" The data has {spec.input_shape[-1]} channels: the panels show the first three.")
    return (f"Rows: {count} fixed examples of the `{split}` split, with the same mask at every "
            f"step, so images at different steps compare. Columns: **original** input; "
            f"**masked**: the patches the encoder does not see, in blue; **reconstruction**: "
            f"the decoder's prediction from {latent} on the masked patches, the original on "
            f"the visible ones. De-normalized with the dataset's statistics; each row scaled "
            f"to its original's range; upscaled {panel_scale(spec.input_shape[0])}x (nearest "
            f"neighbour).{bands}")
