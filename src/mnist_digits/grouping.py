"""Ink blobs, and how they are grouped into digits, left to right, for reading a number."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Blob:
    """A connected component of ink in the working image."""

    label: int  # its value in InkMap.labels
    top: int  # bounding box in working-image pixels; bottom and right exclusive
    left: int
    bottom: int
    right: int
    area: int  # pixels

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def group_blobs(blobs: list[Blob]) -> list[list[Blob]]:
    """Blobs grouped into digits, left to right.

    Pieces of one digit stacked above each other (the two loops of a broken 8) overlap
    horizontally but not vertically; digits side by side overlap vertically. Then whatever is
    short or small for a digit (the detached bar of a 5, a hook, dots) joins the group it
    overlaps or nearly touches, smallest first, until none can; tiny ones left alone are dirt.
    """
    if len(blobs) < 2:
        return [list(blobs)] if blobs else []  # one blob is one digit, whatever its size
    groups = [[b] for b in blobs]
    for _ in range(2):  # the digits' height, measured again once broken digits are joined
        digit_height = _digit_height(groups)
        while pair := next(
            (
                (i, j)
                for i in range(len(groups))
                for j in range(i + 1, len(groups))
                if _stacked(union(groups[i]), union(groups[j]), digit_height)
            ),
            None,
        ):
            groups[pair[0]] += groups.pop(pair[1])
    full = [union(g).area for g in groups if union(g).height >= 0.75 * digit_height]
    typical_area = float(np.median(full)) if full else max(union(g).area for g in groups)

    def is_dirt(group: list[Blob]) -> bool:  # too small to be a digit on its own
        u = union(group)
        return u.height < 0.4 * digit_height or u.area < 0.15 * typical_area

    def is_piece(group: list[Blob]) -> bool:  # joins a neighbour that nearly touches it
        u = union(group)
        return is_dirt(group) or (u.area < 0.4 * typical_area and u.height < 0.75 * digit_height)

    while len(groups) > 1:
        pieces = sorted((g for g in groups if is_piece(g)), key=lambda g: union(g).area)
        joined = False
        for piece in pieces:
            others = [g for g in groups if g is not piece]
            own = union(piece)
            nearest = min(others, key=lambda g: _distance(own, union(g)))
            if _distance(own, union(nearest))[0] <= 0.1 * digit_height:
                nearest += piece
                groups.remove(piece)
                joined = True
                break
        if not joined:
            break
    digits = [g for g in groups if not is_dirt(g)] or groups
    return sorted(digits, key=lambda g: _center(union(g)))


def _digit_height(groups: list[list[Blob]]) -> float:
    """The typical height of a digit: the median of the groups at least half as tall as the tallest."""
    heights = [union(g).height for g in groups]
    return float(np.median([h for h in heights if h >= 0.5 * max(heights)]))


def _distance(a: Blob, b: Blob) -> tuple[int, float]:
    """Horizontal gap between two boxes (0 if they overlap), then the distance of their centres."""
    return max(a.left - b.right, b.left - a.right, 0), abs(_center(a) - _center(b))


def _center(blob: Blob) -> float:
    return blob.left + blob.width / 2


def union(group: list[Blob]) -> Blob:
    """One blob covering a group's bounding box (label 0)."""
    return Blob(
        0,
        min(b.top for b in group),
        min(b.left for b in group),
        max(b.bottom for b in group),
        max(b.right for b in group),
        sum(b.area for b in group),
    )


def _stacked(a: Blob, b: Blob, digit_height: float) -> bool:
    """Pieces of one digit: overlapping horizontally by half the narrower's width, and one above
    the other, or one short, or together no wider than a digit (two digits side by side are
    wider, unless one is a slanted 1 tucked against the other: a thin stroke stays a digit)."""
    horizontal = min(a.right, b.right) - max(a.left, b.left)
    if horizontal < 0.5 * min(a.width, b.width):
        return False
    vertical = min(a.bottom, b.bottom) - max(a.top, b.top)
    above = vertical < 0.5 * min(a.height, b.height)
    short = min(a.height, b.height) < 0.5 * digit_height
    thin = min(a.width / a.height, b.width / b.height) < 0.3
    narrow = max(a.right, b.right) - min(a.left, b.left) <= 0.9 * digit_height and not thin
    return above or short or narrow
