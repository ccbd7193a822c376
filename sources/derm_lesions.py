"""Lesion morphology of the simulated dermatology photos: shape, border, pigment, blood, scale.

:func:`draw_lesion` draws the morphology of one lesion (kept for every photo of it);
:func:`lesion_layers` evaluates it on a photo's pixel grid as absorber maps in the lesion's own
frame (so a second photo at another angle shows the same lesion):

* ``pigment``: extra epidermal melanin (optical density units of the skin model);
* ``dermal``: melanin deep in the dermis (looks blue-grey);
* ``blood``: extra haemoglobin (erythema, vessels, crust);
* ``surface``: extra surface reflectance (white scale, cysts, regression);
* ``alpha`` (footprint) and ``depth`` (signed distance to the border, lesion radii).

Looks (:attr:`~clinaudit.sources.derm_sites.Category.look`):

* ``nevus``: small, round, symmetric, smooth border, uniform brown with a faint network;
* ``melanoma``: larger, asymmetric, irregular border that is sharp in places and fuzzy in
  others, variegated dark brown-black with blue-grey and white (regression) areas;
* ``seborrheic``: oval, sharp "stuck-on" border, light-to-dark brown with cerebriform ridges,
  bright milia-like cysts and dark comedo-like openings;
* ``pink_keratotic``: pink, ill-defined, scaly, sometimes a crust or fine vessels (shared by
  ACK, BCC and SCC, which the simulator makes distinguishable by history, not by look).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LOOKS", "Frame", "LesionDraw", "draw_lesion", "lesion_layers", "random_field"]

LOOKS: tuple[str, ...] = ("nevus", "melanoma", "seborrheic", "pink_keratotic")


@dataclass(frozen=True)
class LesionDraw:
    """The drawn morphology of one lesion (see :func:`draw_lesion`)."""

    look: str
    diameter_mm: float
    elongation: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows
    edge: float
    edge_var: float
    edge_phase: float
    pigment: float
    dermal: float
    blood: float
    scale: float
    asymmetry: tuple[float, float]
    waves: np.ndarray  # (4 fields, n waves, kx / ky / phase)
    dots: np.ndarray  # (u, v, radius, kind) rows; kind 1 = bright cyst, -1 = dark opening
    crust: tuple[float, float, float]  # (u, v, strength); strength 0 = none
    vessels: float
    regression: float
    network: float


#: Wavenumber range (per lesion radius) of the four pattern fields: pigment, dermal / ridges,
#: scale / regression (fine), vessels.
_FIELD_K: tuple[tuple[float, float], ...] = ((1.5, 5.0), (1.5, 5.0), (5.0, 11.0), (3.0, 7.0))


def _waves(rng: np.random.Generator, n: int) -> np.ndarray:
    lo = np.array([k[0] for k in _FIELD_K])[:, None]
    hi = np.array([k[1] for k in _FIELD_K])[:, None]
    k = lo + (hi - lo) * rng.random((len(_FIELD_K), n))
    theta = rng.uniform(0.0, 2.0 * np.pi, (len(_FIELD_K), n))
    phase = rng.uniform(0.0, 2.0 * np.pi, (len(_FIELD_K), n))
    return np.stack([k * np.cos(theta), k * np.sin(theta), phase], axis=-1)


@dataclass(frozen=True)
class Frame:
    """An affine map from pixel-grid coordinates to a pattern's frame.

    ``x`` (columns) and ``y`` (rows) are 1-D axes in [-1, 1]; the frame coordinates are
    ``(u, v) = matrix @ (x, y) + offset``. Random fields and blobs are evaluated separably
    (one outer product per wave), which keeps a photo at 128 px to a few milliseconds.
    """

    x: np.ndarray
    y: np.ndarray
    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def identity(cls, x: np.ndarray, y: np.ndarray) -> Frame:
        """The pixel grid itself."""
        return cls(x, y, np.eye(2), np.zeros(2))

    def uv(self) -> tuple[np.ndarray, np.ndarray]:
        """Frame coordinates of every pixel, ``(rows, cols)`` arrays."""
        (a, b), (c, d) = self.matrix.astype(np.float32)
        x, y = self.x.astype(np.float32)[None, :], self.y.astype(np.float32)[:, None]
        o = self.offset.astype(np.float32)
        return a * x + b * y + o[0], c * x + d * y + o[1]

    def field(self, waves: np.ndarray) -> np.ndarray:
        """Zero-mean, unit-variance smooth random field: a sum of plane waves in the frame.

        ``waves`` holds ``(kx, ky, phase)`` rows in frame coordinates.
        """
        k = waves[:, :2] @ self.matrix
        phase = waves[:, :2] @ self.offset + waves[:, 2]
        ax = np.outer(self.x, k[:, 0])
        ay = np.outer(self.y, k[:, 1]) + phase
        out = np.cos(ay) @ np.cos(ax).T - np.sin(ay) @ np.sin(ax).T
        return out * np.sqrt(2.0 / len(waves))

    def blob(self, cu: float, cv: float, radius: float) -> np.ndarray:
        """Isotropic Gaussian of ``radius`` at frame point ``(cu, cv)`` (a similarity map)."""
        inv = np.linalg.inv(self.matrix)
        x0, y0 = inv @ (np.array([cu, cv]) - self.offset)
        sigma = radius * float(np.sqrt(abs(np.linalg.det(inv))))
        gx = np.exp(-((self.x - x0) ** 2) / (2 * sigma * sigma))
        gy = np.exp(-((self.y - y0) ** 2) / (2 * sigma * sigma))
        return np.outer(gy, gx)


def random_field(waves: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The random field of :meth:`Frame.field` at arbitrary coordinates (slow reference)."""
    arg = u[..., None] * waves[:, 0] + v[..., None] * waves[:, 1] + waves[:, 2]
    return np.cos(arg).sum(axis=-1) * np.sqrt(2.0 / len(waves))


def draw_lesion(rng: np.random.Generator, look: str, diameter_mm: float) -> LesionDraw:
    """Draw the morphology of one lesion of ``look``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The lesion's own generator (every photo of the lesion reuses the draw).
    look : str
        One of :data:`LOOKS`.
    diameter_mm : float
        Clinical diameter (sets the size in the frame with the camera's field of view).

    Returns
    -------
    LesionDraw
    """
    if look not in LOOKS:
        raise ValueError(f"look={look!r} is not one of {list(LOOKS)}")
    u = rng.uniform
    kw: dict[str, object] = dict(
        dermal=0.0, scale=0.0, asymmetry=(0.0, 0.0), dots=np.zeros((0, 4)),
        crust=(0.0, 0.0, 0.0), vessels=0.0, regression=0.0, network=0.0, edge_var=0.0,
        blood=0.05,
    )  # fmt: skip
    if look == "nevus":
        ks, amp = np.arange(2, 6), u(0.0, 0.03, 4)
        kw.update(elongation=u(1.0, 1.2), edge=0.15, pigment=u(0.9, 1.4), network=u(0.08, 0.15))
    elif look == "melanoma":
        ks = np.arange(2, 9)
        amp = u(0.04, 0.1, 7) / np.sqrt(ks / 2.0)
        direction = u(0.0, 2.0 * np.pi)
        kw.update(
            elongation=u(1.0, 1.5), edge=0.05, edge_var=0.3, pigment=u(1.1, 2.0),
            asymmetry=(0.45 * np.cos(direction), 0.45 * np.sin(direction)),
            dermal=u(0.5, 1.1) if rng.random() < 0.7 else 0.0,
            regression=u(0.03, 0.06) if rng.random() < 0.4 else 0.0, blood=0.15,
        )  # fmt: skip
    elif look == "seborrheic":
        ks, amp = np.arange(2, 5), u(0.0, 0.05, 3)
        n_cyst, n_open = int(rng.integers(4, 9)), int(rng.integers(3, 7))
        r = np.sqrt(u(0.0, 0.6, n_cyst + n_open))
        a = u(0.0, 2.0 * np.pi, n_cyst + n_open)
        kind = np.r_[np.ones(n_cyst), -np.ones(n_open)]
        dots = np.stack([r * np.cos(a), r * np.sin(a), u(0.09, 0.15, len(r)), kind], axis=1)
        kw.update(elongation=u(1.2, 1.7), edge=0.06, pigment=u(0.5, 1.1), dots=dots)
    else:  # pink_keratotic
        ks, amp = np.arange(2, 7), u(0.02, 0.07, 5)
        crust = rng.random() < 0.35
        kw.update(
            elongation=u(1.0, 1.4), edge=0.3, pigment=0.08, blood=u(0.5, 1.1),
            scale=u(0.01, 0.06) if rng.random() < 0.8 else 0.0,
            crust=(u(-0.4, 0.4), u(-0.4, 0.4), u(1.0, 1.6)) if crust else (0.0, 0.0, 0.0),
            vessels=u(0.5, 0.9) if rng.random() < 0.35 else 0.0,
        )  # fmt: skip
    harmonics = np.stack([ks, amp, u(0.0, 2.0 * np.pi, len(ks))], axis=1)
    return LesionDraw(
        look=look,
        diameter_mm=float(diameter_mm),
        harmonics=harmonics,
        edge_phase=float(u(0.0, 2.0 * np.pi)),
        waves=_waves(rng, 10),
        **kw,  # type: ignore[arg-type]
    )


def lesion_layers(lesion: LesionDraw, frame: Frame) -> dict[str, np.ndarray]:
    """Absorber maps of ``lesion`` on a photo's pixel grid (``frame``: pixels -> lesion frame,
    lesion radius 1 = border).

    Returns
    -------
    dict of str to ndarray
        ``alpha``, ``depth``, ``pigment``, ``dermal``, ``blood``, ``surface`` (see module doc);
        every absorber is already multiplied by ``alpha``.
    """
    u, v = frame.uv()
    ue = u / lesion.elongation
    rho = np.hypot(ue, v)
    # cos(k phi + p) = Re(z**k e^{ip}) with z = e^{i phi}: powers instead of angles.
    zr, zi = ue / np.maximum(rho, 1e-6), v / np.maximum(rho, 1e-6)
    radius = np.ones_like(u)
    pr, pi = zr, zi
    wanted = {int(k): (a, p) for k, a, p in lesion.harmonics}
    for k in range(2, max(wanted) + 1):
        pr, pi = pr * zr - pi * zi, pr * zi + pi * zr
        if k in wanted:
            a, p = wanted[k]
            radius += np.float32(a) * (pr * np.float32(np.cos(p)) - pi * np.float32(np.sin(p)))
    depth = radius - rho
    cos_edge = zr * np.cos(lesion.edge_phase) - zi * np.sin(lesion.edge_phase)
    edge = lesion.edge + lesion.edge_var * (0.5 + 0.5 * cos_edge)
    alpha = np.clip(0.5 + depth / edge, 0.0, 1.0)
    f = [frame.field(lesion.waves[i]) for i in range(4)]
    pigment = np.full_like(u, lesion.pigment)
    dermal = np.zeros_like(u)
    blood = np.full_like(u, lesion.blood)
    surface = np.zeros_like(u)
    if lesion.look == "nevus":
        pigment = pigment * (0.9 + 0.1 * np.clip(1 - rho * rho, 0, 1)) * (1 + 0.06 * f[0])
        pigment = pigment * (1 + lesion.network * np.cos(9 * u) * np.cos(9 * v))
    elif lesion.look == "melanoma":
        ax, ay = lesion.asymmetry
        pigment = pigment * np.clip(0.6 + 0.45 * f[0] + ax * u + ay * v, 0.15, 2.0)
        dermal = lesion.dermal * np.clip((f[1] - 0.3) * 2.0, 0.0, 1.0)
        patch = np.clip((f[2] - 0.8) * 3.0, 0.0, 1.0)
        surface = lesion.regression * patch
        pigment = pigment * (1.0 - 0.7 * (lesion.regression > 0) * patch)
        blood = blood * (1.0 + 0.5 * f[3])
    elif lesion.look == "seborrheic":
        ridges = np.abs(np.cos(4.0 * u + 2.0 * f[0])) - 0.5
        pigment = pigment * (1.0 + 0.3 * ridges) * (1 + 0.05 * f[1])
        surface = surface + 0.005
        for du, dv, r, kind in lesion.dots:
            g = frame.blob(du, dv, r)
            if kind > 0:  # keratin cyst: whitish, little pigment
                pigment = pigment * (1.0 - 0.8 * g)
                surface = surface + 0.03 * g
            else:
                pigment = pigment + 1.2 * g
    else:  # pink_keratotic
        blood = blood * (0.75 + 0.25 * f[0])
        pigment = pigment * (1.0 + 0.5 * f[1]).clip(0.0)
        if lesion.scale > 0:
            surface = lesion.scale * np.clip((f[2] - 0.1) * 1.5, 0.0, 1.0)
        cu, cv, strength = lesion.crust
        if strength > 0:
            g = frame.blob(cu, cv, 0.22)
            blood = blood + strength * g
            pigment = pigment + 0.5 * strength * g
        if lesion.vessels > 0:
            blood = blood + lesion.vessels * (np.abs(f[3]) < 0.1)
    return {
        "alpha": alpha,
        "depth": depth,
        "pigment": np.clip(pigment, 0.0, None) * alpha,
        "dermal": dermal * alpha,
        "blood": np.clip(blood, 0.0, None) * alpha,
        "surface": surface * alpha,
    }
