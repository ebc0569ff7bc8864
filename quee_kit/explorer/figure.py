"""The explorer's figure: accuracy-cost curves + operating point | exit x level counts | example digits.

One matplotlib figure on an Agg canvas (no pyplot, no ipympl), drawn at the size the page shows it:
``DPI`` × ``FIGSIZE`` CSS pixels, rendered at ``SCALE`` times as many image pixels for HiDPI screens (the
widget sets the image's CSS width to ``DPI`` × the figure width, so nothing is stretched). The static
part (curves, axes, labels) is rendered once per (method, level set) and kept as a pixel background; a
slider step restores it, draws only the moving artists (operating point, budget line, exit x level
counts, example digits) and encodes a PNG. Colours and markers: :data:`quee_kit.plots.METHOD_STYLES`.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..styles import ACCURACY_LABEL, EXIT_LABEL, cost_label, method_style

__all__ = ["ExplorerFigure", "digit_mosaic", "encode_png", "CORRECT_COLOR", "WRONG_COLOR", "FIGSIZE", "DPI", "SCALE"]

CORRECT_COLOR, WRONG_COLOR = "#1b7837", "#c51b7d"
# 1280 x 460 CSS px: inside a 1366 px wide screen's page (Voilà's margins and a scrollbar leave ~1330 px);
# the live image has SCALE image pixels per CSS pixel, so a HiDPI screen (2 device px per CSS px) shows it sharp
FIGSIZE, DPI, SCALE = (12.8, 4.6), 100, 2


def digit_mosaic(images: np.ndarray, rows: dict[int, np.ndarray], k: int, pad: int = 2,
                 caption: float = 0.5) -> tuple[np.ndarray, tuple[int, int]]:
    """Tile ``images[rows[t]]`` (N, C, H, W in [0, 1]) into one array, one row per exit with a
    blank caption strip under every image. Returns the mosaic ((R, Cw) or (R, Cw, 3)) and the
    cell size (cell_h, cell_w) in pixels."""
    _, C, H, W = images.shape
    cap = int(np.ceil(caption * H))
    ch, cw = H + cap + pad, W + pad
    shape = (len(rows) * ch, k * cw) + ((3,) if C == 3 else ())
    mosaic = np.full(shape, 1.0 if C == 3 else 0.0, dtype=np.float32)
    for r, t in enumerate(sorted(rows)):
        for c, i in enumerate(rows[t][:k]):
            img = images[i].transpose(1, 2, 0) if C == 3 else images[i, 0]
            mosaic[r * ch:r * ch + H, c * cw:c * cw + W] = img
    return mosaic, (ch, cw)


def _caption(correct: bool, err_hat: float) -> str:
    """``✓.03``: correct or not, and the predicted error with two decimals."""
    mark = "✓" if correct else "✗"
    return f"{mark}1.00" if err_hat >= 0.995 else f"{mark}{err_hat:.2f}".replace("0.", ".", 1)


class _TextSprites:
    """Labels rendered once per (text, colour, font, alignment) into RGBA sprites, then pasted as
    pixels: ~50 labels change with every knob and matplotlib lays out and rasterizes each one
    anew (~0.5 ms apiece, most of an update). Used by the live widget only; saved figures keep
    real text."""

    def __init__(self, dpi: int, max_items: int = 5000):
        self.max_items, self.cache = max_items, {}
        self._fig = Figure(figsize=(6, 2), dpi=dpi)     # one scratch canvas, reused for every sprite
        self._canvas = FigureCanvasAgg(self._fig)
        self._text = self._fig.text(0.02, 0.5, "", ha="left", va="center")

    def sprite(self, t) -> np.ndarray:
        """(h, w, 4) float RGBA in [0, 1] of ``t``'s text, cropped to its extent."""
        key = (t.get_text(), str(t.get_color()), t.get_fontsize(), t.get_ha(), t.get_va(), t.get_fontweight())
        if key not in self.cache:
            if len(self.cache) >= self.max_items:
                self.cache.clear()
            tt = self._text
            tt.set_text(t.get_text())
            tt.set_color(t.get_color())
            tt.set_fontproperties(t.get_fontproperties())
            tt.set_multialignment(t.get_ha())
            renderer = self._canvas.get_renderer()
            renderer.clear()    # transparent
            tt.draw(renderer)
            bb = tt.get_window_extent(renderer)
            buf = np.asarray(self._canvas.buffer_rgba())
            H = buf.shape[0]
            r0, r1 = max(int(np.floor(H - bb.y1)), 0), min(int(np.ceil(H - bb.y0)), H)
            c0, c1 = max(int(np.floor(bb.x0)), 0), int(np.ceil(bb.x1))
            self.cache[key] = buf[r0:r1, c0:c1].astype(np.float32) / 255.0
        return self.cache[key]

    def paste(self, buf: np.ndarray, t) -> None:
        """Alpha-blend ``t``'s sprite into ``buf`` (H, W, 4 uint8, straight alpha) at ``t``'s anchor."""
        if not t.get_visible() or not t.get_text():
            return
        sp = self.sprite(t)
        h, w = sp.shape[:2]
        x, y = t.get_transform().transform(t.get_position())
        c0 = x - {"left": 0, "center": w / 2, "right": w}[t.get_ha()]
        r0 = buf.shape[0] - y - {"top": 0, "center": h / 2, "center_baseline": h / 2, "bottom": h,
                                 "baseline": h}[t.get_va()]
        r0, c0 = int(round(r0)), int(round(c0))
        rs, cs = max(r0, 0), max(c0, 0)
        re, ce = min(r0 + h, buf.shape[0]), min(c0 + w, buf.shape[1])
        if rs >= re or cs >= ce:
            return
        src = sp[rs - r0:re - r0, cs - c0:ce - c0]
        dst = buf[rs:re, cs:ce, :3]
        a = src[..., 3:4]
        dst[...] = (src[..., :3] * 255.0 * a + dst * (1.0 - a) + 0.5).astype(np.uint8)


class ExplorerFigure:
    """The three panels. ``animated=True``: the moving artists are left out of full draws and drawn
    over a cached background by :meth:`render_png` (the live widget). ``animated=False``: a plain
    figure for :func:`quee_kit.plots.save_figure`."""

    def __init__(self, level_names, L: int, images: np.ndarray, k: int, animated: bool = True, dpi: int = DPI):
        self.images, self.k, self.animated, self.L = images, k, animated, L
        nq = len(level_names)
        self.fig = Figure(figsize=FIGSIZE, dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        gs = self.fig.add_gridspec(1, 3, width_ratios=[1.45, 0.95, 1.0], left=0.06, right=0.99, bottom=0.15,
                                   top=0.8, wspace=0.28)
        self.ax_curve, self.ax_hist, self.ax_ex = (self.fig.add_subplot(gs[0, i]) for i in range(3))
        a = self.ax_curve
        a.set_xscale("log")
        a.set(xlabel=cost_label(level_names[0]), ylabel=ACCURACY_LABEL + ", test")
        self._curve_artists = []
        self.op_point, = a.plot([], [], marker="*", ms=18, mew=1.0, mec="k", ls="none", zorder=6)
        self.budget_line = a.axvline(0.05, color="0.25", lw=1.0, ls="--", zorder=4)

        h = self.ax_hist
        h.grid(False)
        self.hist_img = h.imshow(np.zeros((L, nq)), cmap="Blues", vmin=0, vmax=1, aspect="auto",
                                 interpolation="nearest")
        h.set_xticks(range(nq), list(level_names), rotation=30, fontsize=9)
        h.set_yticks(range(L), [str(t) for t in range(1, L + 1)])
        h.set(xlabel="precision level of the last block", ylabel=EXIT_LABEL)
        h.set_title("test samples by exit and level", fontsize=10)
        self.hist_text = [[h.text(q, t, "", ha="center", va="center", fontsize=9) for q in range(nq)]
                          for t in range(L)]

        e = self.ax_ex
        e.grid(False)
        e.set_axis_off()
        empty = {t: np.zeros(0, int) for t in range(1, L + 1)}
        mosaic, (self.cell_h, self.cell_w) = digit_mosaic(images, empty, k)
        H, W = images.shape[2], images.shape[3]
        self.ex_img = e.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        e.set_title("examples per exit (✓/✗ correct, ê)", fontsize=10)
        self.ex_text = [[e.text(c * self.cell_w + W / 2, r * self.cell_h + H + 0.3, "", ha="center", va="top",
                                fontsize=8) for c in range(k)] for r in range(L)]
        self.row_text = [e.text(-2.0, r * self.cell_h + H / 2, "", ha="right", va="center", fontsize=9)
                         for r in range(L)]
        self.title = self.fig.text(0.01, 0.985, "", ha="left", va="top", fontsize=10.5)
        self.state_title = None if animated else self.fig.text(0.01, 0.93, "", ha="left", va="top", fontsize=10)
        self.pointer = [self.budget_line, self.op_point]           # move with every slider step (star on top)
        self.state_artists = [self.hist_img, *sum(self.hist_text, []), self.ex_img, *sum(self.ex_text, []),
                              *self.row_text]                      # change only when the outcome does
        for art in self.pointer + self.state_artists:
            art.set_animated(animated)
        self.texts = set(sum(self.hist_text, []) + sum(self.ex_text, []) + self.row_text)
        self.sprites = _TextSprites(dpi)
        if animated:   # every possible caption once (~0.1 s), so a new knob never rasterizes them
            probe = self.ex_text[0][0]
            for ok in (True, False):
                probe.set_color(CORRECT_COLOR if ok else WRONG_COLOR)
                for v in range(101):
                    probe.set_text(_caption(ok, v / 100))
                    self.sprites.sprite(probe)
            probe.set_text("")

    def set_curves(self, curves: list[tuple[str, pd.DataFrame]], ref: tuple[str, float], c_min: float,
                   c_sat: float, xlim: tuple[float, float], ylim: tuple[float, float], title: str) -> None:
        """Replace the static curves: (method name, DataFrame with cost/accuracy) each."""
        for art in self._curve_artists:
            art.remove()
        a = self.ax_curve
        arts = [a.axhline(ref[1], color="0.5", lw=0.8, ls=":", label=f"{ref[0]} full model")]
        for x, name in ((c_min, "c_min"), (c_sat, "c_sat")):
            if xlim[0] <= x <= xlim[1]:
                arts.append(a.axvline(x, color="0.6", lw=0.8))
                arts.append(a.text(x, 0.98, f"{name} ", transform=a.get_xaxis_transform(), fontsize=8,
                                   color="0.35", rotation=90, ha="right", va="top"))
        for j, (name, df) in enumerate(curves):   # the first curve is the method shown: drawn thicker
            arts += a.plot(df["cost"], df["accuracy"], label=name, ms=4, lw=2.0 if j == 0 else 1.3,
                           **method_style(name))
        self._curve_artists = arts
        a.set_xlim(*xlim)
        a.set_ylim(*ylim)
        ticks = [t for t in (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0) if xlim[0] <= t <= xlim[1]]
        a.set_xticks(ticks, [f"{t:g}" for t in ticks])
        a.xaxis.set_minor_formatter(NullFormatter())
        leg = a.get_legend()
        if leg is not None:
            leg.remove()
        # above the panel, off the data
        a.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
        self.title.set_text(title)

    def set_pointer(self, view: dict) -> None:
        """The star at (test cost, test accuracy) in the method's colour; hollow when the budget is infeasible."""
        color = method_style(view["method"])["color"]
        self.op_point.set_data([view["cost"]], [view["accuracy"]])
        self.op_point.set_markerfacecolor("white" if view["feasible"] is False else color)
        self.op_point.set_markeredgecolor(color if view["feasible"] is False else "k")
        self.op_point.set_markeredgewidth(2.0 if view["feasible"] is False else 1.0)
        b = view["budget"]
        self.budget_line.set_xdata([b, b])
        self.budget_line.set_visible(view["mode"] == "budget")

    def star_pixel(self) -> tuple[float, float]:
        """The star's centre in image pixels (x from the left, y from the top)."""
        x, y = self.ax_curve.transData.transform(np.column_stack(self.op_point.get_data())[0])
        return float(x), float(self.canvas.get_width_height()[1] - y)

    def set_state(self, view: dict, correct: np.ndarray, err_hat: np.ndarray, counts: pd.DataFrame,
                  examples: dict[int, np.ndarray], depth_of_node: np.ndarray, mode_note: str) -> None:
        self.set_pointer(view)
        c = counts.to_numpy()
        self.hist_img.set_data(c)
        top = max(int(c.max()), 1)
        self.hist_img.set_clim(0, top)
        for t, row in enumerate(c):
            for q, v in enumerate(row):
                txt = self.hist_text[t][q]
                txt.set_text(str(v) if v else "")
                txt.set_color("white" if v > 0.55 * top else "black")
        mosaic, _ = digit_mosaic(self.images, examples, self.k)
        self.ex_img.set_data(mosaic)
        for r, t in enumerate(sorted(examples)):
            idx = examples[t]
            self.row_text[r].set_text(f"exit {t}\n{int((depth_of_node == t).sum())}")
            for cidx, txt in enumerate(self.ex_text[r]):
                if cidx < len(idx):
                    i = idx[cidx]
                    txt.set_text(_caption(correct[i], err_hat[i]))
                    txt.set_color(CORRECT_COLOR if correct[i] else WRONG_COLOR)
                else:
                    txt.set_text("")
        if self.state_title is not None:
            self.state_title.set_text(f"{view['method']}, {mode_note}: accuracy {view['accuracy']:.4f}, "
                                      f"cost {view['cost']:.4f} (test)")

    def background(self):
        """Full draw without the moving artists; the pixels to restore before each update."""
        self.canvas.draw()
        return self.canvas.copy_from_bbox(self.fig.bbox)

    def render_state(self, background):
        """Draw the per-outcome artists over ``background``; returns the pixels as a new layer."""
        self.canvas.restore_region(background)
        for art in self.state_artists:
            if art not in self.texts:
                self.fig.draw_artist(art)
        buf = np.asarray(self.canvas.buffer_rgba())
        for t in self.texts:
            self.sprites.paste(buf, t)
        return self.canvas.copy_from_bbox(self.fig.bbox)

    def render_png(self, layer) -> bytes:
        """Restore a state layer, draw the operating point and budget line, encode as PNG."""
        self.canvas.restore_region(layer)
        for art in self.pointer:
            self.fig.draw_artist(art)
        return encode_png(np.asarray(self.canvas.buffer_rgba()))


def encode_png(rgba: np.ndarray) -> bytes:
    """(H, W, 4) uint8 pixels -> PNG bytes of their RGB, every row unfiltered, deflate level 1.

    Pillow chooses a filter per row, which at the 2x figure (2560 x 920 px) costs ~3x the time of the
    whole slider step; on a figure of flat colours the unfiltered rows compress as well (~200 kB)."""
    h, w = rgba.shape[:2]
    raw = np.zeros((h, 1 + 3 * w), np.uint8)            # a leading 0 per row: filter type "none"
    raw[:, 1:].reshape(h, w, 3)[...] = rgba[..., :3]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + chunk(b"IEND", b""))
