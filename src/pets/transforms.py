"""The lesson's transforms, applied to whole batches on the training device.

Training (`get_transforms()`): a random square crop, flip, rotate, zoom, perspective warp with
reflection padding, then brightness and contrast; validation: the centre square, resized. Every
photo draws its own parameters from a seeded generator, and all geometry is one `grid_sample`
per batch from the pixel cache's canvases."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pets.config import AugmentParams

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EPS = 1e-4  # keeps black and white pixels finite in logit space


@dataclass(frozen=True)
class Draw:
    """One batch's random parameters, a (batch,) tensor each, on the CPU."""

    crop_x: torch.Tensor  # where the square crop sits along the long side, 0..1
    crop_y: torch.Tensor
    dihedral: torch.Tensor  # 0..7: bit 0 flips x, bit 1 flips y, bit 2 swaps the axes
    angle: torch.Tensor  # radians
    zoom: torch.Tensor  # >= 1
    zoom_x: torch.Tensor  # zoom centre, -1..1
    zoom_y: torch.Tensor
    warp_x: torch.Tensor  # perspective tilt magnitudes
    warp_y: torch.Tensor
    brightness: torch.Tensor  # added in logit space: logit(b), b around 0.5
    contrast: torch.Tensor  # multiplies in logit space

    def to(self, device: torch.device) -> Draw:
        """Every field on `device` in one copy (pinned and non-blocking on CUDA): a copy per
        field would make the host wait for the GPU at every batch."""
        values = [getattr(self, field.name) for field in dataclasses.fields(self)]
        if values[0].device == device:
            return self
        packed = torch.stack([value.float() for value in values], dim=1)
        if device.type == "cuda":
            packed = packed.pin_memory()
        moved = packed.to(device, non_blocking=True)
        columns = [moved[:, index] for index in range(len(values))]
        columns[2] = columns[2].long()  # dihedral
        return Draw(*columns)

    def lit(self) -> bool:
        """Whether any photo gets a lighting change (decide before moving to a GPU: asking the
        device would wait for it)."""
        return bool((self.brightness != 0).any() or (self.contrast != 1).any())


def centre_draw(batch: int) -> Draw:
    """The validation 'draw': centre crop, nothing else."""
    zeros, ones = torch.zeros(batch), torch.ones(batch)
    return Draw(
        zeros + 0.5, zeros + 0.5, zeros.long(), zeros, ones, zeros, zeros, zeros, zeros, zeros, ones
    )


def draw(aug: AugmentParams, batch: int, generator: torch.Generator) -> Draw:
    """Per-photo parameters of the lesson's `get_transforms()`. The generator advances by the
    same amount whatever the probabilities, so one seed gives one stream of batches."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    def chance(p: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator) < p

    crop_x, crop_y = uniform(0, 1), uniform(0, 1)
    flip_x = chance(0.5 if aug.do_flip else 0.0)
    flip_y = chance(0.5 if aug.flip_vert else 0.0)
    swap = chance(0.5 if aug.flip_vert else 0.0)
    dihedral = flip_x.long() + 2 * flip_y.long() + 4 * swap.long()
    angle = uniform(-aug.max_rotate, aug.max_rotate) * math.pi / 180 * chance(aug.p_affine)
    zoom_on = chance(aug.p_affine)
    zoom = torch.where(zoom_on, uniform(1.0, aug.max_zoom), torch.ones(batch))
    zoom_x, zoom_y = uniform(-1, 1), uniform(-1, 1)
    warp_on = chance(aug.p_affine)
    warp_x = uniform(-aug.max_warp, aug.max_warp) * warp_on
    warp_y = uniform(-aug.max_warp, aug.max_warp) * warp_on
    low, high = 0.5 * (1 - aug.max_lighting), 0.5 * (1 + aug.max_lighting)
    change = uniform(low, high)
    brightness = torch.log(change / (1 - change)) * chance(aug.p_lighting)
    log_low = math.log(1 - aug.max_lighting)
    contrast = torch.exp(uniform(log_low, -log_low))
    contrast = torch.where(chance(aug.p_lighting), contrast, torch.ones(batch))
    return Draw(
        crop_x, crop_y, dihedral, angle, zoom, zoom_x, zoom_y, warp_x, warp_y, brightness, contrast
    )


def _warp_homographies(warp_x: torch.Tensor, warp_y: torch.Tensor) -> torch.Tensor:
    """(batch, 3, 3) perspective maps taking the output square's corners to corners tilted by
    the warp magnitudes (fastai's symmetric warp), solved from four point pairs."""
    device, batch = warp_x.device, warp_x.shape[0]
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=device)
    x, y = corners[:, 0], corners[:, 1]
    u = x[None] * (1 + warp_y[:, None] * y[None])
    v = y[None] * (1 + warp_x[:, None] * x[None])
    one = torch.ones(batch, 4, device=device)
    zero = torch.zeros(batch, 4, device=device)
    xs, ys = x.expand(batch, 4), y.expand(batch, 4)
    rows_u = torch.stack([xs, ys, one, zero, zero, zero, -u * xs, -u * ys], dim=-1)
    rows_v = torch.stack([zero, zero, zero, xs, ys, one, -v * xs, -v * ys], dim=-1)
    system = torch.cat([rows_u, rows_v], dim=1).double()
    target = torch.cat([u, v], dim=1).double()
    # solve_ex: no singularity check, which on a GPU would wait for the result.
    solution = torch.linalg.solve_ex(system, target)[0].float()
    return torch.cat([solution, one[:, :1]], dim=1).view(batch, 3, 3)


def _reflect(coord: torch.Tensor, length: torch.Tensor, mode: str) -> torch.Tensor:
    """Bring pixel coordinates into [0.5, length - 0.5]: mirrored ('reflection') or clamped."""
    if mode == "reflection":
        period = coord.remainder(2 * length)
        coord = torch.where(period > length, 2 * length - period, period)
    return torch.maximum(torch.minimum(coord, length - 0.5), torch.full_like(coord, 0.5))


def sampling_grid(
    sizes: torch.Tensor, canvas: int, out: int, params: Draw, pad_mode: str = "reflection"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`grid_sample` coordinates (batch, out, out, 2) into the canvases for photos of `sizes`
    (batch, 2: height, width), and a mask of output pixels that fell inside the photo."""
    device = sizes.device
    batch = sizes.shape[0]
    steps = (torch.arange(out, device=device, dtype=torch.float32) * 2 + 1) / out - 1
    gy, gx = torch.meshgrid(steps, steps, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, -1, 3)
    params = params.to(device)
    homography = _warp_homographies(params.warp_x, params.warp_y)
    warped = points @ homography.transpose(1, 2)
    x = warped[..., 0] / warped[..., 2]
    y = warped[..., 1] / warped[..., 2]
    dihedral = params.dihedral[:, None]
    x = torch.where(dihedral % 2 == 1, -x, x)
    y = torch.where((dihedral // 2) % 2 == 1, -y, y)
    x, y = torch.where(dihedral >= 4, y, x), torch.where(dihedral >= 4, x, y)
    angle = params.angle[:, None]
    cos, sin = torch.cos(angle), torch.sin(angle)
    x, y = cos * x - sin * y, sin * x + cos * y
    zoom = params.zoom[:, None]
    x = x / zoom + (1 - 1 / zoom) * params.zoom_x[:, None]
    y = y / zoom + (1 - 1 / zoom) * params.zoom_y[:, None]
    height, width = sizes[:, 0:1], sizes[:, 1:2]
    side = torch.minimum(height, width)
    centre_x = side / 2 + params.crop_x[:, None] * (width - side)
    centre_y = side / 2 + params.crop_y[:, None] * (height - side)
    px, py = centre_x + x * side / 2, centre_y + y * side / 2
    inside = (px >= 0) & (px <= width) & (py >= 0) & (py <= height)
    px, py = _reflect(px, width, pad_mode), _reflect(py, height, pad_mode)
    grid = torch.stack([px, py], dim=-1) * (2 / canvas) - 1
    return grid.view(batch, out, out, 2), inside.view(batch, 1, out, out)


def augment(
    canvases: torch.Tensor,
    sizes: torch.Tensor,
    out: int,
    params: Draw,
    pad_mode: str = "reflection",
) -> torch.Tensor:
    """Crop, transform and resize a batch of uint8 canvases (batch, S, S, 3) to float images
    (batch, 3, out, out) in [0, 1], lighting included."""
    lit = params.lit()  # on the draw's own (CPU) copy
    params = params.to(canvases.device)
    pixels = canvases.permute(0, 3, 1, 2).float()
    grid, inside = sampling_grid(sizes, canvases.shape[1], out, params, pad_mode)
    images = (
        F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
        / 255.0
    )
    if pad_mode == "zeros":
        images = images * inside
    if lit:
        brightness = params.brightness.view(-1, 1, 1, 1)
        contrast = params.contrast.view(-1, 1, 1, 1)
        logits = torch.logit(images.clamp(_EPS, 1 - _EPS))
        images = torch.sigmoid((logits + brightness) * contrast)
    return images


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Per-channel `(x - mean) / std` (the lesson's `normalize(imagenet_stats)`)."""
    shape = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(shape)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(shape)
    return (images - mean_t) / std_t
