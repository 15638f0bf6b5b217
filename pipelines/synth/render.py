"""Procedural frames in numpy: a dim room, a lamp in the corner, a big coloured ball doing one thing.

Everything a model must tell apart is big (the ball's diameter is 26-60% of the frame, i.e. several
16 px patches at 64x64), saturated, or scene-wide (the lamp lights the whole room). The grey square
and pixel noise are distractors that vary between clips but never carry the event. All randomness
comes from the `np.random.Generator` handed in, so a clip is a pure function of (seed, id).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .events import COLOURS, EventClass

DARK = 0.22  # scene light level with the lamp off (1.0 = on)
LAMP_ON_RGB = np.array([255, 245, 200], np.float32)  # warm white, low saturation
LAMP_OFF_RGB = np.array([45, 45, 42], np.float32)


@dataclass(frozen=True)
class Scene:
    """What stays fixed for a clip (or a whole stream): the room and the distractor."""

    size: int
    background: np.ndarray  # (H, W, 3) float32, lit
    glow: np.ndarray  # (H, W) float32, extra light near the lamp
    lamp_xy: tuple[float, float]
    lamp_r: float
    square: tuple[float, float, float, float, float]  # x, y, side, grey, drift px/frame
    has_square: bool
    noise: float


def make_scene(rng: np.random.Generator, size: int) -> Scene:
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.array([62, 64, 74], np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
    shade = 1.0 + 0.15 * (yy / s - 0.5)  # floor slightly brighter than ceiling
    background = base[None, None, :] * shade[..., None]
    lamp_xy = (0.11 * s, 0.11 * s) if rng.random() < 0.5 else (0.89 * s, 0.11 * s)
    d2 = (xx - lamp_xy[0]) ** 2 + (yy - lamp_xy[1]) ** 2
    glow = (45.0 * np.exp(-d2 / (2 * (0.35 * s) ** 2))).astype(np.float32)
    side = rng.uniform(0.06, 0.10) * s
    square = (
        float(rng.uniform(0.15, 0.85) * s),
        float(rng.uniform(0.6, 0.9) * s),
        float(side),
        float(rng.uniform(110, 160)),
        float(rng.uniform(-0.4, 0.4)),
    )
    return Scene(
        size=size,
        background=background.astype(np.float32),
        glow=glow,
        lamp_xy=lamp_xy,
        lamp_r=0.07 * s,
        square=square,
        has_square=bool(rng.random() < 0.8),
        noise=float(rng.uniform(1.5, 4.0)),
    )


@dataclass(frozen=True)
class Track:
    """Per-frame state of the event: ball position/radius/colour/visibility and the light level."""

    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    rgb: np.ndarray  # (T, 3)
    alpha: np.ndarray
    light: np.ndarray


def _step(frames: int, t0: int, rising: bool) -> np.ndarray:
    """0 -> 1 over two frames starting at t0 (or 1 -> 0 when not rising)."""
    t = np.arange(frames, dtype=np.float32)
    ramp = np.clip((t - t0 + 1) / 2.0, 0.0, 1.0)
    return ramp if rising else 1.0 - ramp


def event_params(cls: EventClass, rng: np.random.Generator, size: int) -> dict:
    """Fixed per event (kept across the repeats of one stream segment): where and how big."""
    s = float(size)
    jitter = rng.uniform(-0.04, 0.04, 8) * s
    rgb = np.array(COLOURS[cls.colour], np.float32) if cls.colour else np.zeros(3, np.float32)
    rgb_to = np.array(COLOURS[cls.colour_to], np.float32) if cls.colour_to else rgb
    tint = rng.uniform(-12, 12, 3).astype(np.float32)
    return {
        "y": float(rng.uniform(0.38, 0.66) * s),
        "x": float(rng.uniform(0.3, 0.7) * s),
        "r": float(rng.uniform(0.14, 0.19) * s),
        "jitter": jitter,
        "rgb": np.clip(rgb + tint, 0, 255),
        "rgb_to": np.clip(rgb_to + tint, 0, 255),
    }


def event_track(
    cls: EventClass, params: dict, rng: np.random.Generator, size: int, frames: int
) -> Track:
    s = float(size)
    p = np.linspace(0.0, 1.0, frames, dtype=np.float32)
    ones = np.ones(frames, np.float32)
    j = params["jitter"]
    x = ones * params["x"]
    y = ones * params["y"]
    r = ones * params["r"]
    rgb = np.repeat(params["rgb"][None, :], frames, axis=0)
    alpha = ones.copy()
    light = ones.copy()
    t0 = int(rng.integers(int(0.3 * frames), int(0.6 * frames) + 1))  # when abrupt events happen
    kind = cls.kind
    if kind in ("moves_left", "moves_right"):
        a, b = 0.74 * s + j[0], 0.26 * s + j[1]
        if kind == "moves_right":
            a, b = s - a, s - b
        x = a + (b - a) * p
    elif kind == "grows":
        r0, r1 = 0.13 * s + 0.3 * j[2], 0.30 * s + 0.3 * j[3]
        r = r0 + (r1 - r0) * p
        x = ones * (0.5 * s + j[4])
        y = ones * (0.52 * s + 0.5 * j[5])
    elif kind == "vanishes":
        alpha = _step(frames, t0, rising=False)
    elif kind == "appears":
        alpha = _step(frames, t0, rising=True)
    elif kind == "colour_change":
        w = _step(frames, t0, rising=True)[:, None]
        rgb = params["rgb"][None, :] * (1 - w) + params["rgb_to"][None, :] * w
    elif kind in ("lamp_off", "lamp_on"):
        alpha = np.zeros(frames, np.float32)  # no ball: the event is the room's light
        on = _step(frames, t0, rising=kind == "lamp_on")
        light = DARK + (1.0 - DARK) * on
    else:  # pragma: no cover - the vocabulary and the renderer are kept in step
        raise ValueError(f"unknown event kind {kind!r}")
    return Track(x=x, y=y, r=r, rgb=rgb.astype(np.float32), alpha=alpha, light=light)


def stream_track(
    cls: EventClass, params: dict, rng: np.random.Generator, size: int, frames: int
) -> Track:
    """One stream event: its action happens ONCE, spread over the event's own `frames` (any
    length), with no periodic structure inside. Motion and growth cover the same distance as in a
    training clip, only slower on a longer event; vanishing/appearing is a fade, the colour change
    a blend and the lamp a dimmer, each running from the event's first frame to its last. So the
    first and last frames of an event show the same change a training clip shows, and windows in
    between show a part of it (the paper's streams: annotated actions of varied length)."""
    track = event_track(cls, params, rng, size, frames)
    ramp = np.linspace(0.0, 1.0, frames, dtype=np.float32)
    kind = cls.kind
    if kind == "vanishes":
        return replace(track, alpha=1.0 - ramp)
    if kind == "appears":
        return replace(track, alpha=ramp)
    if kind == "colour_change":
        w = ramp[:, None]
        rgb = params["rgb"][None, :] * (1 - w) + params["rgb_to"][None, :] * w
        return replace(track, rgb=rgb.astype(np.float32))
    if kind in ("lamp_off", "lamp_on"):
        on = ramp if kind == "lamp_on" else 1.0 - ramp
        return replace(track, light=(DARK + (1.0 - DARK) * on).astype(np.float32))
    return track  # moves_*, grows: event_track already spreads them over `frames`


def still_track(last: Track, frames: int) -> Track:
    """A pause: the scene frozen in the state `last` ended in (nothing moves but the distractor
    square and the sensor noise)."""

    def hold(a: np.ndarray) -> np.ndarray:
        return np.repeat(a[-1:], frames, axis=0)

    return Track(
        x=hold(last.x),
        y=hold(last.y),
        r=hold(last.r),
        rgb=hold(last.rgb),
        alpha=hold(last.alpha),
        light=hold(last.light),
    )


def _box(cx: float, cy: float, r: float, size: int) -> tuple[slice, slice]:
    """The pixel window that a disc of radius r touches (drawing only there keeps rendering cheap)."""
    x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), size)
    y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), size)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _disc_alpha(cx: float, cy: float, r: float, ys: slice, xs: slice) -> np.ndarray:
    yy = np.arange(ys.start, ys.stop, dtype=np.float32)[:, None]
    xx = np.arange(xs.start, xs.stop, dtype=np.float32)[None, :]
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    return np.clip(r - d + 0.5, 0.0, 1.0)[..., None]


def render(
    scene: Scene, track: Track, rng: np.random.Generator, frame_offset: int = 0
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames. `frame_offset` keeps the distractor moving across stream clips."""
    size = scene.size
    frames = len(track.x)
    img = np.empty((frames, size, size, 3), np.float32)
    img[:] = scene.background
    sq_x, sq_y, side, grey, drift = scene.square
    for t in range(frames):
        f = img[t]
        if scene.has_square:
            cx = (sq_x + drift * (t + frame_offset)) % size
            x0, y0 = int(cx - side / 2), int(sq_y - side / 2)
            x1, y1 = int(cx + side / 2), int(sq_y + side / 2)
            f[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = grey
        if track.alpha[t] > 0:
            ys, xs = _box(track.x[t], track.y[t], track.r[t], size)
            a = _disc_alpha(track.x[t], track.y[t], track.r[t], ys, xs) * track.alpha[t]
            f[ys, xs] = f[ys, xs] * (1 - a) + track.rgb[t] * a
        on = (track.light[t] - DARK) / (1.0 - DARK)
        if track.light[t] != 1.0:
            f *= track.light[t]
        if on > 0:
            f += (on * scene.glow)[..., None]
    lx, ly = scene.lamp_xy
    ys, xs = _box(lx, ly, scene.lamp_r, size)
    lamp_a = _disc_alpha(lx, ly, scene.lamp_r, ys, xs)[None]
    on = ((track.light - DARK) / (1.0 - DARK))[:, None, None, None]
    bulb = LAMP_OFF_RGB + (LAMP_ON_RGB - LAMP_OFF_RGB) * on
    img[:, ys, xs] = img[:, ys, xs] * (1 - lamp_a) + bulb * lamp_a
    # Grey (luminance) uniform noise with the scene's std: a quarter of the cost of Gaussian RGB.
    noise = rng.random((frames, size, size, 1), dtype=np.float32)
    noise -= 0.5
    noise *= scene.noise * 3.464
    img += noise
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)
